"""One contract test over every registered layer and loss.

Every layer and named optimizer jitnn registers must have an entry in the shared table
``tests/layer_examples.py``, and every loss in ``LOSS_EXAMPLES`` below (a test checks
this). Every layer entry goes through :func:`jitnn.testing.check_layer`, the conformance
suite offered to users (gradients agree with central differences, dtypes and structures are
kept, nothing is written in place, every record returned is read-only, a batch is its rows
one at a time, the trace route gives the plain answers bit for bit, the compiled step agrees
with the generic one), and through what only jitnn's own layers can be held to: agreement
with the NumPy reference in ``reference.py``, tighter agreement between batch and rows, and
the generic passes against the per-layer answers chained by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pytest
import reference
from layer_examples import (
    LAYER_EXAMPLES,
    LAYER_IDS,
    OPTIMIZER_EXAMPLES,
    example,
    reference_for,
)

import jitnn as jn
import tolerances

DTYPES = [np.float32, np.float64]


def products_depend_on_the_batch(layer: jn.Layer) -> bool:
    """Whether the layer holds a Dense, an attention or a recurrent layer: a batch's product is
    one matrix product (gemm), a single row's a matrix-vector product (gemv), which may sum in
    another order (attention projects all n T positions in one product; a recurrent layer
    multiplies the whole batch's states at each step). Every other
    layer computes each example with the same code whatever the batch (Conv2D: one product of
    the same shape per example)."""
    if isinstance(layer, jn.Composite):
        return any(products_depend_on_the_batch(member) for member in layer.members)
    return isinstance(layer, (jn.Dense, jn.MultiHeadAttention, jn.RNN, jn.GRU, jn.LSTM))


# --------------------------------------------------------------------------- the layer table (tests/layer_examples.py)
@pytest.fixture(params=list(LAYER_EXAMPLES), ids=LAYER_IDS)
def layer_class(request: pytest.FixtureRequest) -> type:
    return request.param


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> Any:
    return request.param


def flatten(grads: Any) -> list[np.ndarray]:
    """Reference parameter gradients (nested tuples for a chain) in ``jn.tree.leaves`` order."""
    if isinstance(grads, np.ndarray):
        return [grads]
    return [leaf for item in grads for leaf in flatten(item)]


def reference_answers(layer: jn.Layer, X: np.ndarray, dY: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    ref, params, config = reference_for(layer)
    return (
        ref.forward(X, *params, **config),
        ref.grad_input(X, dY, *params, **config),
        flatten(ref.grad_params(X, dY, *params, **config)),
    )


# --------------------------------------------------------------------------- completeness
def test_every_builtin_layer_loss_and_optimizer_has_an_example() -> None:
    """The shared table (tests/layer_examples.py) and LOSS_EXAMPLES cover every layer class and
    loss that jitnn registers and every optimizer it names, without a list to keep up to date."""
    layers = [cls for cls in jn.registered_layers() if cls.__module__.startswith("jitnn.")]
    losses = [cls for cls in jn.registered_losses() if cls.__module__.startswith("jitnn.")]
    missing = [cls.__qualname__ for cls in layers if cls not in LAYER_EXAMPLES]
    missing += [cls.__qualname__ for cls in losses if cls not in LOSS_EXAMPLES]
    missing += [f"jn.optim.{name}" for name in jn.optim.OPTIMIZERS if name not in OPTIMIZER_EXAMPLES]
    assert not missing, f"add examples to tests/layer_examples.py (LOSS_EXAMPLES for a loss) for: {', '.join(missing)}"
    # the table covers what is registered, and what is registered includes the built-ins
    assert {jn.Dense, jn.ReLU, jn.Softmax, jn.Chain} <= set(layers)
    assert {jn.SoftmaxCrossEntropy, jn.MeanSquaredError, jn.BinaryCrossEntropy} <= set(losses)
    # every optimizer class jitnn exports is named, and each example makes the optimizer it is filed under
    exported = [getattr(jn.optim, name) for name in jn.optim.__all__]
    classes = {cls for cls in exported if isinstance(cls, type) and issubclass(cls, jn.optim.Optimizer)
               and cls is not jn.optim.Optimizer and not cls.wrapper}  # a wrapper (Masked) holds a named optimizer
    assert classes == {type(make()) for make in OPTIMIZER_EXAMPLES.values()}
    assert {name: make().name for name, make in OPTIMIZER_EXAMPLES.items()} == {name: name for name in jn.optim.OPTIMIZERS}
    assert all(jn.optim.OPTIMIZERS[name] is getattr(jn.optim, name) for name in jn.optim.OPTIMIZERS)
    assert {"sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad", "lion"} <= set(jn.optim.OPTIMIZERS)


# --------------------------------------------------------------------------- layers
CONTEXT_LAYERS = (jn.BatchNorm, jn.Dropout)  # the layers whose training mode differs from evaluation


def test_check_layer_passes(layer_class: type, dtype: Any) -> None:
    """The conformance suite offered to users, on every built-in layer: every check that
    applies runs (the compiled step included: every built-in layer has a compiled form)
    and passes. The finite differences run in float64 whatever the dtype: once, with the
    float64 example."""
    layer, X, dY = example(layer_class, dtype)
    assert layer.dtype in (None, np.dtype(dtype))
    finite_differences = ("gradients", "gradients in training mode")
    skip = () if dtype == np.float64 else finite_differences
    report = jn.testing.check_layer(layer, X, dY=dY, dtypes=(dtype,), skip=skip)
    expected = set(jn.testing.LAYER_CHECKS) - set(skip)
    if layer_class not in CONTEXT_LAYERS:
        expected -= {"gradients in training mode", "same key, same bits"}
    assert set(report.passed) == expected, report
    assert not report.failed
    assert {name for name, _ in report.skipped} == set(jn.testing.LAYER_CHECKS) - expected


def test_check_grads_catches_a_wrong_gradient() -> None:
    """The gradient check is not vacuous: a layer whose grad_input is twice too big fails it."""
    _, X, _ = example(jn.Tanh, np.float64)

    class WrongTanh(jn.Tanh):  # not registered: a plain subclass with a wrong kernel
        kernels = jn.Kernels(jn.Tanh.kernels.forward, lambda X, dY, code, slope: 2.0 * jn.Tanh.kernels.grad_input(X, dY, code, slope))

    with pytest.raises(AssertionError, match="grad_input"):
        jn.testing.check_grads(WrongTanh(), X)


def test_matches_reference(layer_class: type, dtype: Any) -> None:
    layer, X, dY = example(layer_class, dtype)
    X = X.copy()
    X[0, 0] = 0.0  # the reference fixes ReLU's derivative at 0 as 0
    Y_ref, dX_ref, grads_ref = reference_answers(layer, X, dY)
    eY, edX, egrads = tolerances.reference_bounds(layer, X, dY, dtype)
    tolerances.assert_within(layer.forward(X), Y_ref, eY, "forward")
    tolerances.assert_within(layer.grad_input(X, dY), dX_ref, edX, "grad_input")
    grads = jn.tree.leaves(layer.grad_params(X, dY), trainable=True)
    assert len(grads) == len(grads_ref) == len(egrads)
    for k, (grad, grad_ref, e) in enumerate(zip(grads, grads_ref, egrads)):
        tolerances.assert_within(grad, grad_ref, e, f"grad_params, leaf {k}")


def test_converts_other_float_input_to_layer_dtype(layer_class: type, dtype: Any) -> None:
    layer, X, dY = example(layer_class, dtype)
    if X.dtype.kind in "iu":  # a layer that takes indices refuses floating-point input
        with pytest.raises(TypeError, match=type(layer).__name__):
            layer.forward(X.astype(np.float64))
        return
    if layer.dtype is None:  # no parameters: float16 goes to float32, float32/64 stay
        assert layer.forward(X.astype(np.float16)).dtype == np.float32
        return
    other = np.float64 if dtype == np.float32 else np.float32
    Y = layer.forward(X.astype(other))
    assert Y.dtype == dtype
    np.testing.assert_array_equal(Y, layer.forward(X.astype(other).astype(dtype)))  # converted first: the same input
    assert layer.grad_input(X.astype(other), dY.astype(other)).dtype == dtype
    for leaf in jn.tree.leaves(layer.grad_params(X.astype(other), dY.astype(other))):
        assert leaf.dtype == dtype


def test_batch_equals_rows_one_at_a_time(layer_class: type, dtype: Any) -> None:
    layer, X, dY = example(layer_class, dtype)
    n = X.shape[0]
    rows_Y = np.concatenate([layer.forward(X[i : i + 1]) for i in range(n)])
    rows_dX = np.concatenate([layer.grad_input(X[i : i + 1], dY[i : i + 1]) for i in range(n)])
    _, eY, g = tolerances.layer_bounds(layer, X, dY, dtype)
    if products_depend_on_the_batch(layer):  # each within its bound of the exact answer
        tolerances.assert_within(layer.forward(X), rows_Y, 2 * eY, "forward")
        tolerances.assert_within(layer.grad_input(X, dY), rows_dX, 2 * g.edX, "grad_input")
    else:
        np.testing.assert_array_equal(layer.forward(X), rows_Y)
        np.testing.assert_array_equal(layer.grad_input(X, dY), rows_dX)

    # the batch's parameter gradients against the rows' summed in float64: the batch's error,
    # each row's, and the float64 sum's
    per_row = [jn.tree.leaves(layer.grad_params(X[i : i + 1], dY[i : i + 1]), trainable=True) for i in range(n)]
    rows_bounds = [tolerances.layer_bounds(layer, X[i : i + 1], dY[i : i + 1], dtype)[2].egrads for i in range(n)]
    batch = jn.tree.leaves(layer.grad_params(X, dY), trainable=True)
    for k, grad in enumerate(batch):
        rows = [row[k] for row in per_row]
        bound = g.egrads[k] + sum(b[k] for b in rows_bounds) + tolerances.gamma(n, np.float64) * np.sum(np.abs(rows, dtype=np.float64), axis=0)
        tolerances.assert_within(grad, np.sum(rows, axis=0, dtype=np.float64), bound, f"grad_params, leaf {k}")


def assert_read_only(array: np.ndarray, what: str) -> None:
    assert not array.flags.writeable, f"{what} is writable"
    with pytest.raises(ValueError):
        array[(0,) * array.ndim] = 1.0


def test_parameters_are_copied_from_writable_arrays() -> None:
    W, b = np.ones((3, 2)), np.zeros(2)
    layer = jn.Dense(W=W, b=b)
    W[0, 0] = 5.0
    b[1] = 7.0
    assert layer.W[0, 0] == 1.0 and layer.b[1] == 0.0
    assert_read_only(layer.W, "W")
    assert W.flags.writeable  # the caller's array is left alone


def leaf_layers(model: jn.Layer) -> list[jn.Layer]:
    if isinstance(model, jn.Chain):
        return [leaf for member in model.layers for leaf in leaf_layers(member)]
    return [model]


def by_hand(model: jn.Layer, X: np.ndarray, dY: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Forward and backward through the model's leaf layers, one public call at a time."""
    layers = leaf_layers(model)
    inputs = []
    for member in layers:
        inputs.append(X)
        X = member.forward(X)
    Y = X
    grads: list[list[np.ndarray]] = [[] for _ in layers]
    for i in range(len(layers) - 1, -1, -1):
        grads[i] = jn.tree.leaves(layers[i].grad_params(inputs[i], dY), trainable=True)
        dY = layers[i].grad_input(inputs[i], dY)
    return Y, [g for member in grads for g in member], dY


def test_generic_passes_agree_with_chaining_by_hand(layer_class: type, dtype: Any) -> None:
    layer, X, _ = example(layer_class, dtype)
    model = jn.pipe(layer, jn.Sigmoid(), jn.pipe(jn.Identity()))
    rng = np.random.default_rng(1)
    Y, trace = jn.forward(model, X)
    dY = rng.normal(size=Y.shape).astype(dtype)
    grads, dX = jn.backward(model, trace, dY)

    # the passes call the leaf layers' kernels on the same arrays: the same bits
    Y_hand, grads_hand, dX_hand = by_hand(model, X, dY)
    np.testing.assert_array_equal(Y, Y_hand)
    np.testing.assert_array_equal(dX, dX_hand)
    leaves = jn.tree.leaves(grads, trainable=True)
    assert len(leaves) == len(grads_hand)
    for got, expected in zip(leaves, grads_hand):
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
    # the model's own methods are the same passes
    np.testing.assert_array_equal(model.forward(X), Y)
    np.testing.assert_array_equal(model.grad_input(X, dY), dX)
    for got, expected in zip(jn.tree.leaves(model.grad_params(X, dY), trainable=True), leaves):
        np.testing.assert_array_equal(got, expected)


def test_value_and_grad_agrees_with_the_reference(dtype: Any) -> None:
    layer, X, _ = example(jn.Chain, dtype)
    T = np.array([0, 2, 1, 1, 0], dtype=np.int32)
    model = jn.pipe(layer.layers[0], layer.layers[1], layer.layers[2].layers[0])  # logits, no softmax
    value, grads = jn.value_and_grad(model, jn.SoftmaxCrossEntropy(), X, T)
    members = [reference_for(m) for m in model.layers]
    logits = reference.Chain.forward(X, members)
    ours, theirs = (tolerances.value_and_grad_bound(model, jn.SoftmaxCrossEntropy(), X, T, d) for d in (dtype, np.float64))
    tolerances.assert_within(value, reference.SoftmaxCrossEntropy.value(logits, T), ours.e_value + theirs.e_value, "value")
    dY = reference.SoftmaxCrossEntropy.grad(logits, T)
    expected = flatten(reference.Chain.grad_params(X, dY, members))
    got = jn.tree.leaves(grads, trainable=True)
    assert len(got) == len(expected)
    for k, (g, e) in enumerate(zip(got, expected)):
        assert g.dtype == dtype
        tolerances.assert_within(g, e, ours.egrads[k] + theirs.egrads[k], f"leaf {k}")


def test_softmax_is_finite_and_correct_for_large_inputs_in_float32() -> None:
    X = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [3e4, 3e4, -3e4]], dtype=np.float32)
    dY = np.array([[1.0, -2.0, 0.5], [0.25, 1.0, -1.0], [2.0, -1.0, 1.0]], dtype=np.float32)
    Y, dX = jn.Softmax().forward(X), jn.Softmax().grad_input(X, dY)
    assert np.all(np.isfinite(Y)) and np.all(np.isfinite(dX))
    eY, edX, _ = tolerances.reference_bounds(jn.Softmax(), X, dY, np.float32)
    tolerances.assert_within(Y, reference.Softmax.forward(X), eY, "forward")
    tolerances.assert_within(dX, reference.Softmax.grad_input(X, dY), edX, "grad_input")


# --------------------------------------------------------------------------- full Jacobians
def test_jacobian_of_dense_is_W_transposed(dtype: Any) -> None:
    layer, X, _ = example(jn.Dense, dtype)
    J = jn.testing.jacobian(layer, X[0])
    assert J.shape == (layer.n_out, layer.n_in)
    # each row is dY @ W.T for a one-hot dY: one product by 1, the rest by 0, all exact
    np.testing.assert_array_equal(J, reference.Dense.jacobian_input(X[0], layer.W, layer.b))


def test_jacobian_of_dense_with_respect_to_parameters() -> None:
    layer, X, _ = example(jn.Dense, np.float64)
    x = X[0]
    J = jn.testing.jacobian(layer, x, wrt="params")
    n_in, n_out = layer.W.shape
    # Y_k = sum_i x_i W[i, k] + b_k:  dY_k/dW[i, j] = x_i [j == k],  dY_k/db_j = [j == k]
    # (products of x with one-hot rows: exact)
    expected_W = np.einsum("i,jk->kij", x, np.eye(n_out))
    np.testing.assert_array_equal(J["W"], expected_W)
    np.testing.assert_array_equal(J["b"], np.eye(n_out))
    assert J["W"].shape == (n_out, n_in, n_out)


def test_jacobian_of_softmax(dtype: Any) -> None:
    layer, X, _ = example(jn.Softmax, dtype)
    J = jn.testing.jacobian(layer, X[0])
    expected = reference.Softmax.jacobian_input(X[0])
    assert J.shape == expected.shape == (X.shape[1], X.shape[1])
    # row k is grad_input for the one-hot dY = e_k, within the bound of that pass; the
    # reference's diag(y) - y y^T carries y's error twice and two roundings: within four
    # times the float64 pass's bound (whose magnitude, |e_k - y_k| + y_k, is at least half of
    # the reference's, y (1 + y_k) on the diagonal and y y_k off it)
    k = X.shape[1]
    saved = [tolerances.forward_bound(layer, X[:1], d)[2] for d in (dtype, np.float64)]
    rows = [[tolerances.backward_bound(layer, kept, np.eye(k)[j : j + 1], d).edX[0] for j in range(k)] for kept, d in zip(saved, (dtype, np.float64))]
    ours, theirs = np.array(rows[0]), np.array(rows[1])
    tolerances.assert_within(J, expected, ours + 4 * theirs, "Jacobian")
    # softmax sums to 1, so each column sums to 0: the entries' errors and the sum's
    tolerances.assert_within(J.sum(axis=0), np.zeros(k), ours.sum(axis=0) + tolerances.gamma(k, dtype) * np.abs(J).sum(axis=0), "column sums")


# --------------------------------------------------------------------------- the loss table
class LossExample(NamedTuple):
    #: ``make(dtype, rng) -> (loss, Y, T)``: an instance, predictions and valid targets
    make: Callable[[Any, np.random.Generator], tuple[jn.Loss, np.ndarray, np.ndarray]]
    reference: Any


LOSS_EXAMPLES: dict[type, LossExample] = {
    jn.SoftmaxCrossEntropy: LossExample(
        make=lambda dtype, rng: (jn.SoftmaxCrossEntropy(), rng.normal(size=(6, 4)).astype(dtype), rng.integers(0, 4, size=6)),
        reference=reference.SoftmaxCrossEntropy,
    ),
    jn.MeanSquaredError: LossExample(
        make=lambda dtype, rng: (jn.MeanSquaredError(), rng.normal(size=(6, 3)).astype(dtype), rng.normal(size=(6, 3)).astype(dtype)),
        reference=reference.MeanSquaredError,
    ),
    jn.BinaryCrossEntropy: LossExample(
        make=lambda dtype, rng: (jn.BinaryCrossEntropy(), rng.normal(size=(6, 3)).astype(dtype), rng.random((6, 3)).astype(dtype)),
        reference=reference.BinaryCrossEntropy,
    ),
    jn.Huber: LossExample(  # differences on both sides of delta = 1
        make=lambda dtype, rng: (jn.Huber(), rng.normal(size=(6, 3)).astype(dtype), rng.normal(scale=2.0, size=(6, 3)).astype(dtype)),
        reference=reference.Huber,
    ),
    jn.KLDivergence: LossExample(  # soft targets, one probability exactly 0
        make=lambda dtype, rng: (jn.KLDivergence(), rng.normal(size=(6, 4)).astype(dtype), soft_targets(rng, (6, 4), dtype)),
        reference=reference.KLDivergence,
    ),
}


def soft_targets(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Rows of probabilities (a Dirichlet draw per row) in ``dtype``, the first row with a 0."""
    T = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])
    T[(0,) * (len(shape) - 1) + (1,)] = 0.0
    return (T / T.sum(axis=-1, keepdims=True)).astype(dtype)


@pytest.fixture(params=list(LOSS_EXAMPLES), ids=[cls.__name__ for cls in LOSS_EXAMPLES])
def loss_class(request: pytest.FixtureRequest) -> type:
    return request.param


def loss_example(cls: type, dtype: Any, seed: int = 0) -> tuple[jn.Loss, np.ndarray, np.ndarray]:
    return LOSS_EXAMPLES[cls].make(dtype, np.random.default_rng(seed))


def test_check_loss_grad_passes(loss_class: type) -> None:
    loss, Y, T = loss_example(loss_class, np.float64)
    jn.testing.check_loss_grad(loss, Y, T)


def test_loss_matches_reference(loss_class: type, dtype: Any) -> None:
    loss, Y, T = loss_example(loss_class, dtype)
    ref = LOSS_EXAMPLES[loss_class].reference
    value, grad = loss.value(Y, T), loss.grad(Y, T)
    assert isinstance(value, float)
    e_value, e_grad = tolerances.loss_reference_bounds(loss, Y, T, dtype)
    tolerances.assert_within(value, ref.value(Y, T), e_value, "value")
    assert grad.dtype == dtype and grad.shape == Y.shape
    tolerances.assert_within(grad, ref.grad(Y, T), e_grad, "grad")
    both = loss.value_and_grad(Y, T)
    assert both[0] == value
    np.testing.assert_array_equal(both[1], grad)
    assert loss(Y, T) == value


def test_loss_leaves_its_inputs_unchanged(loss_class: type, dtype: Any) -> None:
    loss, Y, T = loss_example(loss_class, dtype)
    Y_before, T_before = Y.copy(), T.copy()
    loss.value(Y, T)
    loss.grad(Y, T)
    loss.value_and_grad(Y, T)
    np.testing.assert_array_equal(Y, Y_before)
    np.testing.assert_array_equal(T, T_before)
    assert Y.dtype == Y_before.dtype and T.dtype == T_before.dtype


LARGE_LOGITS = {
    jn.SoftmaxCrossEntropy: (
        np.array([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0], [1e4, -1e4, 0.0], [-1e4, 0.0, 1e4]], dtype=np.float32),
        np.array([0, 1, 2, 1]),
    ),
    jn.BinaryCrossEntropy: (
        np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype=np.float32),
        np.array([[1.0, 0.0, 0.5], [1.0, 0.25, 1.0]], dtype=np.float32),
    ),
    jn.KLDivergence: (
        np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype=np.float32),
        np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]], dtype=np.float32),
    ),
}


@pytest.mark.parametrize("loss_class", list(LARGE_LOGITS), ids=[c.__name__ for c in LARGE_LOGITS])
def test_large_logits_are_finite_and_correct_in_float32(loss_class: type) -> None:
    Y, T = LARGE_LOGITS[loss_class]
    loss, ref = loss_class(), LOSS_EXAMPLES[loss_class].reference
    value, grad = loss.value(Y, T), loss.grad(Y, T)
    assert np.isfinite(value)
    assert np.all(np.isfinite(grad))
    e_value, e_grad = tolerances.loss_reference_bounds(loss, Y, T, np.float32)
    tolerances.assert_within(value, ref.value(Y, T), e_value, "value")
    tolerances.assert_within(grad, ref.grad(Y, T), e_grad, "grad")


@pytest.mark.parametrize("label_dtype", [np.int8, np.int32, np.uint16, np.int64])
def test_softmax_cross_entropy_takes_any_integer_label_dtype(label_dtype: Any, dtype: Any) -> None:
    loss, Y, T = loss_example(jn.SoftmaxCrossEntropy, dtype)
    value, grad = loss.value(Y, T.astype(label_dtype)), loss.grad(Y, T.astype(label_dtype))
    assert value == loss.value(Y, T.astype(np.int64))
    np.testing.assert_array_equal(grad, loss.grad(Y, T.astype(np.int64)))
    e_value, e_grad = tolerances.loss_reference_bounds(loss, Y, T, dtype)
    tolerances.assert_within(value, reference.SoftmaxCrossEntropy.value(Y, T), e_value, "value")
    tolerances.assert_within(grad, reference.SoftmaxCrossEntropy.grad(Y, T), e_grad, "grad")


def test_mean_squared_error_is_a_mean_over_all_elements() -> None:
    Y = np.zeros((2, 5))
    T = np.ones((2, 5))
    assert jn.MeanSquaredError().value(Y, T) == 1.0  # ten exact squares of 1, divided by 10
    np.testing.assert_array_equal(jn.MeanSquaredError().grad(Y, T), np.full((2, 5), -2.0 / 10))  # one rounding each
