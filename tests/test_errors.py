"""Bad input gets a clear ValueError or TypeError, never a Numba typing error or a crash.

Every message must name the layer (with its position in the model when it sits inside a
chain, e.g. ``Dense at model.layers[1].layers[0]``) and the shapes or dtypes involved.
Input that is merely of another float dtype or memory layout is converted, not refused.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np
import pytest
from numba.core.errors import NumbaError

import jitnn as jn

N, N_IN, N_OUT = 5, 4, 3
INNER = "Dense at model.layers[1].layers[0]"


# --------------------------------------------------------------------------- helpers
def raises(exc: type[Exception] | tuple[type[Exception], ...], *fragments: str):
    """``pytest.raises`` that also requires every literal ``fragment`` in the message."""
    pattern = "".join(f"(?=.*{re.escape(fragment)})" for fragment in fragments)
    return pytest.raises(exc, match=re.compile(pattern, re.DOTALL))


def call_and_check(fn: Callable[[], Any], exc: type[Exception], *fragments: str) -> None:
    with raises(exc, *fragments) as info:
        fn()
    assert not isinstance(info.value, NumbaError), f"a Numba error reached the user: {info.value}"


@pytest.fixture(scope="module")
def dense() -> jn.Dense:
    return jn.Dense.init(jn.random.key(1), N_IN, N_OUT)


@pytest.fixture(scope="module")
def model(dense: jn.Dense) -> jn.Chain:
    """ReLU first, so the model states no input shape and a bad input reaches the nested Dense,
    which sits at ``model.layers[1].layers[0]``."""
    return jn.pipe(jn.ReLU(), jn.pipe(dense, jn.Tanh()))


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return jn.random.normal(jn.random.key(2), (N, N_IN))


@pytest.fixture(scope="module")
def dY() -> np.ndarray:
    return jn.random.normal(jn.random.key(3), (N, N_OUT))


MSE = jn.MeanSquaredError()
CE = jn.SoftmaxCrossEntropy()
BCE = jn.BinaryCrossEntropy()


def entry_points(dense: jn.Dense, model: jn.Chain) -> dict[str, tuple[Callable[[Any], Any], str]]:
    """Ways to hand an input to a layer, each with the name the error must give the layer."""

    def targets(X: Any) -> np.ndarray:
        n = np.shape(X)[0] if np.ndim(X) else 1
        return np.zeros((max(n, 1), N_OUT), np.float32)

    def dY_for(X: Any) -> np.ndarray:
        n = np.shape(X)[0] if np.ndim(X) else 1
        return np.ones((max(n, 1), N_OUT), np.float32)

    return {
        "layer.forward": (lambda X: dense.forward(X), "Dense"),
        "layer()": (lambda X: dense(X), "Dense"),
        "layer.grad_input": (lambda X: dense.grad_input(X, dY_for(X)), "Dense"),
        "layer.grad_params": (lambda X: dense.grad_params(X, dY_for(X)), "Dense"),
        "model.forward": (lambda X: model.forward(X), INNER),
        "model.grad_input": (lambda X: model.grad_input(X, dY_for(X)), INNER),
        "jn.forward": (lambda X: jn.forward(model, X), INNER),
        "jn.value_and_grad": (lambda X: jn.value_and_grad(model, MSE, X, targets(X)), INNER),
    }


ENTRY_POINTS = [
    "layer.forward", "layer()", "layer.grad_input", "layer.grad_params",
    "model.forward", "model.grad_input", "jn.forward", "jn.value_and_grad",
]


@pytest.fixture(params=ENTRY_POINTS)
def entry(request, dense, model) -> tuple[Callable[[Any], Any], str, bool]:
    fn, name = entry_points(dense, model)[request.param]
    return fn, name, request.param.startswith("layer")


# --------------------------------------------------------------------------- shapes
def test_wrong_width(entry, X):
    fn, name, _ = entry
    bad = np.ones((N, N_IN + 3), np.float32)
    call_and_check(lambda: fn(bad), ValueError, name, f"({N_IN},)", f"({N_IN + 3},)", f"({N}, {N_IN + 3})")


def test_one_dimensional_input(entry):
    fn, name, _ = entry
    bad = np.ones(N, np.float32)
    call_and_check(lambda: fn(bad), ValueError, name, f"({N_IN},)", f"({N},)")


def test_three_dimensional_input_of_the_wrong_width(entry):
    """Dense takes (n, ..., n_in); leading axes of the wrong width are named as the width is."""
    fn, name, _ = entry
    bad = np.ones((N, 2, N_IN + 3), np.float32)
    call_and_check(lambda: fn(bad), ValueError, name, f"({N_IN},)", f"(2, {N_IN + 3})", f"({N}, 2, {N_IN + 3})")


def test_direct_call_does_not_claim_a_position(dense):
    with raises(ValueError, "Dense") as info:
        dense.forward(np.ones((N, N_IN + 1), np.float32))
    assert "model." not in str(info.value)


def test_position_of_a_flat_chain_member(dense):
    model = jn.pipe(jn.Sigmoid(), jn.ReLU(), dense)
    call_and_check(lambda: model.forward(np.ones((N, 7), np.float32)), ValueError, "Dense at model.layers[2]", "(7,)")


def test_position_of_a_deeply_nested_member(dense):
    model = jn.pipe(jn.ReLU(), jn.pipe(jn.Tanh(), jn.pipe(jn.Sigmoid(), dense)))
    call_and_check(
        lambda: jn.forward(model, np.ones((N, 9), np.float32)),
        ValueError, "Dense at model.layers[1].layers[1].layers[1]", "(9,)", f"({N_IN},)",
    )


def test_softmax_refuses_a_scalar_per_example():
    model = jn.pipe(jn.ReLU(), jn.Softmax())
    call_and_check(lambda: model.forward(np.ones(N, np.float32)), ValueError, "Softmax at model.layers[1]")


def test_softmax_refuses_an_empty_class_axis():
    """A row of zero classes has no softmax: a clear error, not a failure inside the kernel."""
    call_and_check(lambda: jn.Softmax().forward(np.ones((N, 0), np.float32)), ValueError, "Softmax", "0")


# --------------------------------------------------------------------------- what the data holds
def test_empty_batch(entry):
    fn, _, _ = entry
    bad = np.ones((0, N_IN), np.float32)
    call_and_check(lambda: fn(bad), ValueError, "empty batch", f"(0, {N_IN})")


@pytest.mark.parametrize(
    "bad, dtype_name",
    [
        (np.ones((N, N_IN), np.int64), "int64"),
        (np.ones((N, N_IN), np.int32), "int32"),
        (np.ones((N, N_IN), np.uint8), "uint8"),
        (np.ones((N, N_IN), bool), "bool"),
        (np.ones((N, N_IN), np.complex128), "complex128"),
        (np.ones((N, N_IN), np.complex64), "complex64"),
        (np.ones((N, N_IN), object), "object"),
        ([[1, 2, 3, 4]] * N, "int"),
        (np.array([["a"] * N_IN] * N), "<U1"),
        (None, "object"),
    ],
    ids=["int64", "int32", "uint8", "bool", "complex128", "complex64", "object", "int-list", "str", "None"],
)
def test_non_float_data(entry, bad, dtype_name):
    fn, name, _ = entry
    expected_name = name.split(" ")[0] if name == "Dense" else "Chain"
    call_and_check(lambda: fn(bad), TypeError, expected_name, "floating-point", dtype_name)


def test_ragged_list_is_a_type_error(dense):
    call_and_check(lambda: dense.forward([[1.0, 2.0], [1.0]]), TypeError, "Dense")


@pytest.mark.parametrize("scalar", [3.0, np.float32(3.0), np.array(3.0)], ids=["float", "np.float32", "0-d"])
def test_scalar_input(entry, scalar):
    fn, _, _ = entry
    call_and_check(lambda: fn(scalar), ValueError, "scalar")


def test_integer_scalar_input(dense):
    with pytest.raises((TypeError, ValueError)) as info:
        dense.forward(3)
    assert "Dense" in str(info.value)
    assert not isinstance(info.value, NumbaError)


def test_jn_forward_refuses_a_non_layer(X):
    call_and_check(lambda: jn.forward(lambda x: x, X), TypeError, "forward", "model")
    call_and_check(lambda: jn.value_and_grad("model", MSE, X, np.zeros((N, N_OUT))), TypeError, "value_and_grad")


def test_value_and_grad_refuses_a_non_loss(model, X):
    """A string or the loss class (instead of an instance) is a user's mistake: a TypeError
    saying a loss was expected, not an AttributeError from deep inside."""
    T = np.zeros((N, N_OUT), np.float32)
    for bad in ("mse", jn.MeanSquaredError, None):
        with pytest.raises(TypeError, match="loss") as info:
            jn.value_and_grad(model, bad, X, T)
        assert not isinstance(info.value, NumbaError)


# --------------------------------------------------------------------------- output gradients
@pytest.mark.parametrize("shape", [(N, N_OUT + 1), (N - 1, N_OUT), (N, N_OUT, 1), (N * N_OUT,)])
def test_wrong_dY_shape_direct(dense, X, shape):
    bad = np.ones(shape, np.float32)
    for method in (dense.grad_input, dense.grad_params):
        call_and_check(lambda: method(X, bad), ValueError, "Dense", "dY", f"({N}, {N_OUT})", str(shape))


@pytest.mark.parametrize("shape", [(N, N_OUT + 1), (N - 1, N_OUT), (N * N_OUT,)])
def test_wrong_dY_shape_chain(model, X, shape):
    bad = np.ones(shape, np.float32)
    for method in (model.grad_input, model.grad_params):
        call_and_check(lambda: method(X, bad), ValueError, "Chain", "dY", f"({N}, {N_OUT})", str(shape))


@pytest.mark.parametrize("shape", [(N, N_OUT + 1), (N - 1, N_OUT), (N * N_OUT,)])
def test_wrong_dY_shape_backward(model, X, shape):
    _, trace = jn.forward(model, X)
    call_and_check(
        lambda: jn.backward(model, trace, np.ones(shape, np.float32)), ValueError, "dY", f"({N}, {N_OUT})", str(shape)
    )


@pytest.mark.parametrize("dtype", [np.int64, bool, np.complex128, object])
def test_non_float_dY(dense, model, X, dtype):
    bad = np.ones((N, N_OUT), dtype)
    name = np.dtype(dtype).name
    call_and_check(lambda: dense.grad_input(X, bad), TypeError, "Dense", "dY", name)
    call_and_check(lambda: dense.grad_params(X, bad), TypeError, "Dense", "dY", name)
    _, trace = jn.forward(model, X)
    call_and_check(lambda: jn.backward(model, trace, bad), TypeError, "dY", name)


def test_backward_refuses_a_bad_trace(model, X, dY):
    call_and_check(lambda: jn.backward(model, (X,), dY), TypeError, "Trace")


def test_backward_refuses_a_trace_of_another_model(model, dense, X, dY):
    """A trace kept by one model handed to another: a clear error, not an AttributeError."""
    _, trace = jn.forward(model, X)
    with pytest.raises((TypeError, ValueError)) as info:
        jn.backward(dense, trace, dY)
    assert not isinstance(info.value, NumbaError)


# --------------------------------------------------------------------------- labels and targets
@pytest.fixture(scope="module")
def classifier() -> jn.Chain:
    k1, k2 = jn.random.split(jn.random.key(4))
    return jn.pipe(jn.Dense.init(k1, N_IN, 6), jn.ReLU(), jn.Dense.init(k2, 6, N_OUT))


LABELS_OK = np.array([0, 1, 2, 1, 0])


@pytest.mark.parametrize("bad_label", [-1, -7, N_OUT, N_OUT + 10])
def test_labels_out_of_range(classifier, X, bad_label):
    T = LABELS_OK.copy()
    T[2] = bad_label
    Y = classifier.forward(X)
    for fn in (
        lambda: jn.value_and_grad(classifier, CE, X, T),
        lambda: CE.value(Y, T),
        lambda: CE.grad(Y, T),
        lambda: CE(Y, T),
    ):
        call_and_check(fn, ValueError, "SoftmaxCrossEntropy", str(bad_label), f"{N_OUT} classes")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, bool, np.complex64])
def test_labels_of_non_integer_dtype(classifier, X, dtype):
    T = LABELS_OK.astype(dtype)
    call_and_check(
        lambda: jn.value_and_grad(classifier, CE, X, T), TypeError, "SoftmaxCrossEntropy", "integers", np.dtype(dtype).name
    )


@pytest.mark.parametrize("shape", [(N - 1,), (N + 2,), (N, 1), (N, N_OUT)])
def test_labels_of_wrong_shape(classifier, X, shape):
    T = np.zeros(shape, np.int64)
    call_and_check(lambda: jn.value_and_grad(classifier, CE, X, T), ValueError, "SoftmaxCrossEntropy", f"({N},)", str(shape))


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.uint64])
def test_labels_of_any_integer_dtype_are_accepted(classifier, X, dtype):
    expected = jn.value_and_grad(classifier, CE, X, LABELS_OK.astype(np.int64))
    value, grads = jn.value_and_grad(classifier, CE, X, LABELS_OK.astype(dtype))
    assert value == expected[0]
    assert grads == expected[1]


def test_cross_entropy_refuses_one_dimensional_predictions():
    call_and_check(lambda: CE.value(np.ones(N, np.float32), np.zeros(N, np.int64)), ValueError, "SoftmaxCrossEntropy", f"({N},)")


@pytest.mark.parametrize("loss", [MSE, BCE], ids=["mse", "bce"])
@pytest.mark.parametrize("shape", [(N, N_OUT + 1), (N - 1, N_OUT), (N,), (N, N_OUT, 1), (N * N_OUT,)])
def test_targets_of_wrong_shape(classifier, X, loss, shape):
    T = np.zeros(shape, np.float32)
    name = type(loss).__name__
    call_and_check(lambda: jn.value_and_grad(classifier, loss, X, T), ValueError, name, f"({N}, {N_OUT})", str(shape))
    Y = classifier.forward(X)
    call_and_check(lambda: loss.value(Y, T), ValueError, name, str(shape))
    call_and_check(lambda: loss.grad(Y, T), ValueError, name, str(shape))


@pytest.mark.parametrize("loss", [MSE, BCE], ids=["mse", "bce"])
@pytest.mark.parametrize("dtype", [np.complex128, object])
def test_targets_of_non_real_dtype(classifier, X, loss, dtype):
    T = np.zeros((N, N_OUT), dtype)
    call_and_check(lambda: jn.value_and_grad(classifier, loss, X, T), TypeError, type(loss).__name__, np.dtype(dtype).name)


@pytest.mark.parametrize("bad_value", [-0.5, 1.5, np.nan, np.inf])
def test_bce_targets_outside_unit_interval(classifier, X, bad_value):
    T = np.full((N, N_OUT), 0.5, np.float32)
    T[1, 2] = bad_value
    Y = classifier.forward(X)
    for fn in (lambda: jn.value_and_grad(classifier, BCE, X, T), lambda: BCE.value(Y, T), lambda: BCE.grad(Y, T)):
        call_and_check(fn, ValueError, "BinaryCrossEntropy", "[0, 1]")


def test_bce_accepts_the_ends_of_the_unit_interval(classifier, X):
    T = np.zeros((N, N_OUT), np.float32)
    T[::2] = 1.0
    value, _ = jn.value_and_grad(classifier, BCE, X, T)
    assert np.isfinite(value)


@pytest.mark.parametrize("loss", [MSE, BCE, CE], ids=["mse", "bce", "ce"])
def test_losses_refuse_bad_predictions(loss):
    T = np.zeros((N, N_OUT), np.float32) if loss is not CE else LABELS_OK
    name = type(loss).__name__
    call_and_check(lambda: loss.value(np.ones((N, N_OUT), np.int64), T), TypeError, name, "int64")
    call_and_check(lambda: loss.value(np.ones((0, N_OUT), np.float32), T), ValueError, name, "empty batch")


# --------------------------------------------------------------------------- composition
def test_pipe_mismatch_names_both_layers_and_shapes():
    k1, k2 = jn.random.split(jn.random.key(5))
    with raises(ValueError, "layers[2] (Dense)", "(6,)", "(5,)", "layers[1] (ReLU)"):
        jn.pipe(jn.Dense.init(k1, 4, 5), jn.ReLU(), jn.Dense.init(k2, 6, 2))


def test_compose_mismatch_names_both_layers_and_shapes():
    k1, k2 = jn.random.split(jn.random.key(5))
    first, second = jn.Dense.init(k1, 4, 5), jn.Dense.init(k2, 6, 2)
    with raises(ValueError, "Dense", "(6,)", "(5,)") as info:
        jn.compose(second, first)
    assert str(info.value).count("Dense") >= 2


def test_pipe_mismatch_after_an_activation_prefix():
    k1, k2 = jn.random.split(jn.random.key(5))
    with raises(ValueError, "Dense", "(5,)", "(3,)"):
        jn.pipe(jn.ReLU(), jn.Dense.init(k1, 4, 3), jn.Dense.init(k2, 5, 2))


def test_pipe_mismatch_with_a_nested_chain_after():
    k1, k2, k3 = jn.random.split(jn.random.key(5), 3)
    inner = jn.pipe(jn.Dense.init(k2, 7, 2), jn.ReLU())
    with raises(ValueError, "Dense", "(7,)", "(3,)"):
        jn.pipe(jn.Dense.init(k1, 4, 3), inner)


def test_pipe_mismatch_with_a_nested_chain_before():
    """The nested chain starts with an activation, so it states no input shape; its output
    shape (3,) is still known, and the mismatch with the next Dense (5,) must be reported when
    composing, as it is for the same layers in one flat pipe."""
    k1, k2 = jn.random.split(jn.random.key(5))
    inner = jn.pipe(jn.ReLU(), jn.Dense.init(k1, 4, 3))
    with raises(ValueError, "Dense", "(5,)", "(3,)"):
        jn.pipe(inner, jn.Dense.init(k2, 5, 2))


@pytest.mark.parametrize(
    "bad",
    ["relu", np.zeros(3), jn.ReLU, lambda x: x, None, 3, jn.MeanSquaredError()],
    ids=["str", "array", "class", "lambda", "None", "int", "loss"],
)
def test_pipe_refuses_non_layers(bad):
    d = jn.Dense.init(jn.random.key(6), 3, 3)
    with raises(TypeError, "layers[1]", "not a jitnn layer"):
        jn.pipe(d, bad)
    with raises(TypeError, "not a jitnn layer"):
        jn.compose(bad, d)


def test_pipe_and_compose_need_a_layer():
    with pytest.raises(ValueError, match="at least one layer"):
        jn.pipe()
    with pytest.raises(ValueError, match="at least one layer"):
        jn.compose()


def test_mixing_float32_and_float64_layers():
    k1, k2 = jn.random.split(jn.random.key(7))
    d32 = jn.Dense.init(k1, 4, 4, dtype=np.float32)
    d64 = jn.Dense.init(k2, 4, 4, dtype=np.float64)
    with raises(TypeError, "float32", "float64"):
        jn.pipe(d32, jn.ReLU(), d64)
    with raises(TypeError, "float32", "float64"):
        jn.pipe(jn.pipe(d32, jn.ReLU()), jn.pipe(d64))
    with raises(TypeError, "float32", "float64"):
        jn.compose(d64, d32)


# --------------------------------------------------------------------------- Dense construction
@pytest.mark.parametrize(
    "W_shape, b_shape",
    [((4, 3), (4,)), ((4, 3), (3, 1)), ((4, 3), ()), ((12,), (3,)), ((2, 2, 3), (3,))],
)
def test_dense_from_inconsistent_shapes(W_shape, b_shape):
    W, b = np.zeros(W_shape, np.float32), np.zeros(b_shape, np.float32)
    with raises(ValueError, "Dense", str(W_shape), str(b_shape)):
        jn.Dense(W=W, b=b)


@pytest.mark.parametrize(
    "W_dtype, b_dtype, bad",
    [
        (np.int64, np.float32, "int64"),
        (np.float32, np.int32, "int32"),
        (np.float16, np.float16, "float16"),
        (bool, np.float32, "bool"),
        (np.complex128, np.complex128, "complex128"),
        (np.float32, np.float64, "float64"),
    ],
)
def test_dense_from_bad_dtypes(W_dtype, b_dtype, bad):
    W, b = np.zeros((4, 3), W_dtype), np.zeros(3, b_dtype)
    with raises(TypeError, "Dense", bad):
        jn.Dense(W=W, b=b)


@pytest.mark.parametrize("n_in, n_out", [(0, 3), (3, 0), (-1, 3), (3, -2), (2.5, 3), (True, 3), ("3", 3), (None, 3)])
def test_dense_init_bad_sizes(n_in, n_out):
    bad = n_in if not (isinstance(n_in, int) and not isinstance(n_in, bool) and n_in > 0) else n_out
    with raises(ValueError, "Dense.init", repr(bad)):
        jn.Dense.init(jn.random.key(0), n_in, n_out)


@pytest.mark.parametrize("dtype", [np.int32, np.float16, np.complex64, "banana", bool, np.longdouble if np.dtype(np.longdouble).itemsize > 8 else object])
def test_dense_init_bad_dtype(dtype):
    with raises(TypeError, "Dense.init", "float32 or float64"):
        jn.Dense.init(jn.random.key(0), 3, 2, dtype=dtype)


def test_dense_init_refuses_a_non_key():
    with pytest.raises(TypeError, match="Key"):
        jn.Dense.init(0, 3, 2)


# --------------------------------------------------------------------------- accepted and converted
def readonly_copy(X: np.ndarray) -> np.ndarray:
    copy = X.copy()
    copy.flags.writeable = False
    return copy


def layouts(X: np.ndarray) -> dict[str, np.ndarray]:
    """``X`` (float32, C order) in other layouts and dtypes that a float32 model accepts."""
    wide = np.zeros((X.shape[0], 2 * X.shape[1]), X.dtype)
    wide[:, ::2] = X
    return {
        "strided": wide[:, ::2],
        "fortran": np.asfortranarray(X),
        "reversed": X[::-1],
        "read-only": readonly_copy(X),
        "big-endian": X.astype(X.dtype.newbyteorder(">")),
        "float16": X.astype(np.float16),
        "float64": X.astype(np.float64),
        "list": X.tolist(),
    }


LAYOUTS = ["strided", "fortran", "reversed", "read-only", "big-endian", "float16", "float64", "list"]


def reference_input(converted: Any) -> np.ndarray:
    """The same numbers as ``converted``, as a float32 array in C order."""
    return np.ascontiguousarray(np.asarray(converted), dtype=np.float32)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_other_layouts_and_dtypes_are_converted(dense, model, X, dY, layout):
    other = layouts(X)[layout]
    clean = reference_input(other)
    assert clean.flags.c_contiguous and clean.dtype == np.float32

    for name, fn in [
        ("layer.forward", lambda A: dense.forward(A)),
        ("model.forward", lambda A: model.forward(A)),
        ("jn.forward", lambda A: jn.forward(model, A)[0]),
        ("layer.grad_input", lambda A: dense.grad_input(A, dY)),
        ("model.grad_input", lambda A: model.grad_input(A, dY)),
    ]:
        got, expected = fn(other), fn(clean)
        assert got.dtype == np.float32, name
        assert got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected, err_msg=name)

    got_grads = dense.grad_params(other, dY)
    assert got_grads == dense.grad_params(clean, dY)
    assert got_grads.W.dtype == np.float32

    T = np.zeros((N, N_OUT), np.float32)
    value, grads = jn.value_and_grad(model, MSE, other, T)
    expected_value, expected_grads = jn.value_and_grad(model, MSE, clean, T)
    assert value == expected_value
    assert grads == expected_grads
    assert all(leaf.dtype == np.float32 for leaf in jn.tree.leaves(grads))


@pytest.mark.parametrize("layout", ["strided", "fortran", "float16", "float64"])
def test_other_layouts_of_dY_are_converted(dense, model, X, dY, layout):
    other = layouts(dY)[layout]
    clean = reference_input(other)
    np.testing.assert_array_equal(dense.grad_input(X, other), dense.grad_input(X, clean))
    assert dense.grad_params(X, other) == dense.grad_params(X, clean)
    _, trace = jn.forward(model, X)
    got_grads, got_dX = jn.backward(model, trace, other)
    expected_grads, expected_dX = jn.backward(model, trace, clean)
    np.testing.assert_array_equal(got_dX, expected_dX)
    assert got_dX.dtype == np.float32
    assert got_grads == expected_grads


def test_float32_input_to_a_float64_model_gives_float64(X):
    d64 = jn.Dense.init(jn.random.key(8), N_IN, N_OUT, dtype=np.float64)
    model = jn.pipe(d64, jn.ReLU())
    Y = model.forward(X)
    assert Y.dtype == np.float64
    np.testing.assert_array_equal(Y, model.forward(X.astype(np.float64)))
    _, trace = jn.forward(model, X)
    grads, dX = jn.backward(model, trace, np.ones((N, N_OUT), np.float32))
    assert dX.dtype == np.float64
    assert all(leaf.dtype == np.float64 for leaf in jn.tree.leaves(grads))


def test_conversion_never_writes_into_the_callers_array(dense, model, X, dY):
    for A in layouts(X).values():
        if isinstance(A, np.ndarray):
            before = A.copy()
            model.forward(A)
            dense.grad_input(A, dY)
            jn.value_and_grad(model, MSE, A, np.zeros((N, N_OUT)))
            np.testing.assert_array_equal(A, before)


def test_parameterless_layer_converts_float16_to_a_supported_dtype():
    X16 = np.linspace(-2, 2, 12, dtype=np.float16).reshape(3, 4)
    Y = jn.ReLU().forward(X16)
    assert Y.dtype in (np.float32, np.float64)
    np.testing.assert_array_equal(Y, np.maximum(X16.astype(Y.dtype), 0))
