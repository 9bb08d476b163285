"""Conv1D, MaxPool1D, AvgPool1D and GlobalAvgPool; Dense on the last axis of 3-D inputs.

Against the direct loops of ``reference_spatial.py`` over a grid of sequence shapes, in
float32 and float64; against central differences; against PyTorch (``Conv1d``,
``max_pool1d``, ``avg_pool1d``, ``adaptive_avg_pool1d``, ``mean``, ``Linear``) in float64 with
bounds from ``tolerances.py``, and with weights moved over; the 1-D layers against the 2-D
ones whose kernels they share; bad input and configuration; the MNIST-1D network composed,
summarized and trained by the compiled step; and the kernels of GlobalAvgPool and Dense
compiled once per dtype for inputs of several ranks.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from numba import config as numba_config
from numba.core.errors import NumbaError

import jitnn as jn
import reference_spatial as ref
import tolerances
from jitnn import _blas
from jitnn.layers import dense as dense_module
from jitnn.layers import pooling

#: False under NUMBA_DISABLE_JIT=1 (CI's third pass): kernels run as Python functions
JIT = not numba_config.DISABLE_JIT

DTYPES = [np.float32, np.float64]


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> Any:
    return request.param


def distinct_values(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any = np.float64) -> np.ndarray:
    """A random permutation of evenly spaced values: no ties in any max-pooling window."""
    size = int(np.prod(shape))
    return ((rng.permutation(size) - size / 2) * (4.0 / size)).reshape(shape).astype(dtype)


def raises(exc: type[Exception] | tuple[type[Exception], ...], *fragments: str) -> Any:
    """``pytest.raises`` that also requires every literal ``fragment`` in the message."""
    pattern = "".join(f"(?=.*{re.escape(fragment)})" for fragment in fragments)
    return pytest.raises(exc, match=re.compile(pattern, re.DOTALL))


def call_and_check(fn: Any, exc: type[Exception], *fragments: str) -> None:
    with raises(exc, *fragments) as info:
        fn()
    assert not isinstance(info.value, NumbaError), f"a Numba error reached the user: {info.value}"


def assert_trees_equal(actual: Any, expected: Any, what: str) -> None:
    """Every leaf bitwise equal, dtype included."""
    jn.tree.check_same_structure(expected, actual)
    for (path, a), (_, b) in zip(jn.tree.leaves_with_paths(actual), jn.tree.leaves_with_paths(expected)):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), f"{what}: {path}"


def compiled_equals_generic(model: jn.Layer, loss: jn.Loss, optimizer: Any, batches: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """The compiled step and train_step (at the BLAS thread count the step picks) give the
    same bits after every step: models, optimizer states and loss values."""
    step = jn.compile_step(model, loss, optimizer)
    compiled = generic = model
    compiled_state = generic_state = optimizer.init(model)
    for i, (X, T) in enumerate(batches):
        compiled, compiled_state, value = step(compiled, compiled_state, X, T)
        with _blas.threads(_blas.auto_threads(len(X))):
            generic, generic_state, expected = jn.train_step(generic, generic_state, loss, optimizer, X, T)
        assert value == expected, f"loss at step {i}"
        assert_trees_equal(compiled, generic, f"model after step {i}")
        assert_trees_equal(compiled_state, generic_state, f"optimizer state after step {i}")


# --------------------------------------------------------------------------- Conv1D against the loops
#: (in_channels, out_channels, length, kernel_size, stride, padding, dilation)
CONV_CASES = [
    (1, 3, 9, 3, 1, 0, 1),  # one channel in
    (3, 4, 11, 3, 2, 1, 1),  # many channels, stride 2, padding 1
    (2, 2, 10, 4, 3, 2, 1),  # even kernel, stride 3, padding 2
    (2, 3, 12, 3, 1, 2, 3),  # dilation 3
    (3, 2, 7, 1, 1, 0, 1),  # kernel 1
    (2, 2, 6, 1, 2, 1, 1),  # kernel 1, stride 2, padding: a border of bias only
    (1, 1, 5, 5, 1, 0, 1),  # the kernel covers the sequence: one output position
    (3, 4, 1, 3, 1, 1, 1),  # a sequence of one step inside its padding
    (2, 3, 13, 2, 4, 1, 3),  # stride larger than the kernel, dilated
]
CONV_IDS = [f"{c}to{o}-L{n}-k{k}-s{s}-p{p}-d{d}" for c, o, n, k, s, p, d in CONV_CASES]


def conv_case(case: tuple, dtype: Any, seed: int = 0, n: int = 2) -> tuple[jn.Conv1D, np.ndarray, np.ndarray]:
    in_channels, out_channels, length, kernel_size, stride, padding, dilation = case
    rng = np.random.default_rng(seed)
    layer = jn.Conv1D.init(jn.random.key(seed), in_channels, out_channels, kernel_size, stride, padding, dilation, dtype=dtype)
    layer = jn.Conv1D(W=layer.W, b=rng.normal(size=out_channels).astype(dtype), stride=stride, padding=padding, dilation=dilation)
    X = rng.normal(size=(n, in_channels, length)).astype(dtype)
    dY = rng.normal(size=(n, *layer.output_shape(X.shape[1:]))).astype(dtype)
    return layer, X, dY


def conv_config(layer: jn.Conv1D) -> dict[str, Any]:
    return {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation}


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv1d_matches_the_loops(case: tuple, dtype: Any) -> None:
    layer, X, dY = conv_case(case, dtype)
    config = conv_config(layer)
    Y = layer.forward(X)
    assert Y.dtype == dtype and Y.flags.c_contiguous and Y.shape == (X.shape[0], layer.out_channels, Y.shape[2])
    eY, edX, (eW, eb) = tolerances.reference_bounds(layer, X, dY, dtype)
    tolerances.assert_within(Y, ref.Conv1D.forward(X, layer.W, layer.b, **config), eY, "forward")
    tolerances.assert_within(layer.grad_input(X, dY), ref.Conv1D.grad_input(X, dY, layer.W, layer.b, **config), edX, "grad_input")
    grads = layer.grad_params(X, dY)
    dW, db = ref.Conv1D.grad_params(X, dY, layer.W, layer.b, **config)
    tolerances.assert_within(grads.W, dW, eW, "dW")
    tolerances.assert_within(grads.b, db, eb, "db")
    assert (grads.stride, grads.padding, grads.dilation) == (layer.stride, layer.padding, layer.dilation)


@pytest.mark.parametrize("case", [CONV_CASES[i] for i in (1, 2, 3, 8)], ids=[CONV_IDS[i] for i in (1, 2, 3, 8)])
def test_conv1d_gradients_agree_with_central_differences(case: tuple) -> None:
    layer, X, _ = conv_case(case, np.float64, seed=1, n=2)
    jn.testing.check_grads(layer, X)


@pytest.mark.parametrize("case", [CONV_CASES[i] for i in (1, 3, 8)], ids=[CONV_IDS[i] for i in (1, 3, 8)])
def test_conv1d_is_conv2d_on_a_height_of_one(case: tuple, dtype: Any) -> None:
    """Conv1D's kernels are Conv2D's on (n, C, 1, L): the same bits, residual route included."""
    layer, X, dY = conv_case(case, dtype)
    wide = jn.Conv2D(W=layer.W[:, :, None, :], b=layer.b, stride=(1, layer.stride), padding=(0, layer.padding), dilation=(1, layer.dilation))
    X4, dY4 = X[:, :, None, :], dY[:, :, None, :]
    np.testing.assert_array_equal(layer.forward(X), wide.forward(X4)[:, :, 0, :])
    np.testing.assert_array_equal(layer.grad_input(X, dY), wide.grad_input(X4, dY4)[:, :, 0, :])
    grads, wide_grads = layer.grad_params(X, dY), wide.grad_params(X4, dY4)
    np.testing.assert_array_equal(grads.W, wide_grads.W[:, :, 0, :])
    np.testing.assert_array_equal(grads.b, wide_grads.b)
    (g1, dX1), (g2, dX2) = (jn.backward(m, jn.forward(m, x)[1], d) for m, x, d in ((layer, X, dY), (wide, X4, dY4)))
    np.testing.assert_array_equal(dX1, dX2[:, :, 0, :])
    np.testing.assert_array_equal(g1.W, g2.W[:, :, 0, :])


# --------------------------------------------------------------------------- pooling against the loops
#: (channels, length, kernel_size, stride, padding)
POOL_CASES = [
    (1, 9, 2, None, 0),  # odd length: the last step is left out
    (3, 11, 3, 2, 1),  # stride 2, padding 1
    (2, 10, 4, 3, 2),  # padding 2 (half the kernel)
    (2, 7, 1, 1, 0),  # windows of one: the identity
    (1, 5, 5, None, 0),  # one window covers the sequence
    (2, 12, 2, 3, 1),  # stride larger than the kernel
]
POOL_IDS = [f"c{c}-L{n}-k{k}-s{s}-p{p}" for c, n, k, s, p in POOL_CASES]
POOLS = [(jn.MaxPool1D, ref.MaxPool1D), (jn.AvgPool1D, ref.AvgPool1D)]


def pool_case(cls: type, case: tuple, dtype: Any, seed: int = 0, n: int = 2) -> tuple[jn.Layer, np.ndarray, np.ndarray]:
    channels, length, kernel_size, stride, padding = case
    rng = np.random.default_rng(seed)
    layer = cls(kernel_size, stride, padding)
    X = distinct_values(rng, (n, channels, length), dtype)
    dY = rng.normal(size=(n, *layer.output_shape(X.shape[1:]))).astype(dtype)
    return layer, X, dY


def pool_config(layer: jn.Layer) -> dict[str, Any]:
    return {"kernel_size": layer.kernel_size, "stride": layer.stride, "padding": layer.padding}


@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
@pytest.mark.parametrize("cls, reference", POOLS, ids=["MaxPool1D", "AvgPool1D"])
def test_pooling_matches_the_loops(cls: type, reference: Any, case: tuple, dtype: Any) -> None:
    layer, X, dY = pool_case(cls, case, dtype)
    Y = layer.forward(X)
    assert Y.dtype == dtype and Y.flags.c_contiguous
    eY, edX, _ = tolerances.reference_bounds(layer, X, dY, dtype)
    tolerances.assert_within(Y, reference.forward(X, **pool_config(layer)), eY, "forward")
    tolerances.assert_within(layer.grad_input(X, dY), reference.grad_input(X, dY, **pool_config(layer)), edX, "grad_input")
    assert layer.grad_params(X, dY) is layer


@pytest.mark.parametrize("case", [POOL_CASES[i] for i in (1, 2, 5)], ids=[POOL_IDS[i] for i in (1, 2, 5)])
@pytest.mark.parametrize("cls", [jn.MaxPool1D, jn.AvgPool1D])
def test_pooling_gradients_agree_with_central_differences(cls: type, case: tuple) -> None:
    layer, X, _ = pool_case(cls, case, np.float64, seed=2, n=1)
    jn.testing.check_grads(layer, X)


@pytest.mark.parametrize("cls, wide_cls", [(jn.MaxPool1D, jn.MaxPool2D), (jn.AvgPool1D, jn.AvgPool2D)], ids=["MaxPool1D", "AvgPool1D"])
def test_pooling_1d_is_pooling_2d_on_a_height_of_one(cls: type, wide_cls: type, dtype: Any) -> None:
    layer, X, dY = pool_case(cls, POOL_CASES[1], dtype)
    wide = wide_cls((1, layer.kernel_size), (1, layer.stride), (0, layer.padding))
    np.testing.assert_array_equal(layer.forward(X), wide.forward(X[:, :, None, :])[:, :, 0, :])
    if JIT:
        np.testing.assert_array_equal(layer.grad_input(X, dY), wide.grad_input(X[:, :, None, :], dY[:, :, None, :])[:, :, 0, :])
    else:  # the kernels as Python: AvgPool's divisor is an np.int64 of the 1-D pairs, a Python int of the 2-D ones,
        # and NumPy divides float32 by np.int64 in float64 (one rounding to float32 after), by an int in float32
        np.testing.assert_allclose(layer.grad_input(X, dY), wide.grad_input(X[:, :, None, :], dY[:, :, None, :])[:, :, 0, :],
                                   rtol=np.finfo(dtype).eps, atol=0)
    _, dX = jn.backward(layer, jn.forward(layer, X)[1], dY)  # the residual route (MaxPool1D: the maxima's places)
    np.testing.assert_array_equal(dX, layer.grad_input(X, dY))


def test_max_pooling_sends_the_gradient_to_the_first_maximum() -> None:
    X = np.array([[[1.0, 3.0, 3.0, 0.0, 5.0, 5.0]]])  # windows of 2 and 3 with ties
    np.testing.assert_array_equal(jn.MaxPool1D(2).forward(X), [[[3.0, 3.0, 5.0]]])
    np.testing.assert_array_equal(jn.MaxPool1D(2).grad_input(X, np.array([[[10.0, 20.0, 30.0]]])), [[[0.0, 10.0, 20.0, 0.0, 30.0, 0.0]]])
    np.testing.assert_array_equal(jn.MaxPool1D(3, stride=1).grad_input(X, np.ones((1, 1, 4))), [[[0.0, 2.0, 0.0, 0.0, 2.0, 0.0]]])


def test_max_pooling_padding_never_wins() -> None:
    X = np.full((1, 1, 3), -2.0)
    layer = jn.MaxPool1D(2, stride=1, padding=1)
    np.testing.assert_array_equal(layer.forward(X), np.full((1, 1, 4), -2.0))
    assert layer.grad_input(X, np.ones((1, 1, 4))).sum() == 4.0


def test_average_pooling_counts_padded_zeros() -> None:
    """As PyTorch's default ``count_include_pad=True``: every window is divided by k."""
    Y = jn.AvgPool1D(3, stride=1, padding=1).forward(np.ones((1, 1, 4)))
    np.testing.assert_array_equal(Y[0, 0], [2 / 3, 1.0, 1.0, 2 / 3])


def test_pooling_stride_defaults_to_the_kernel_size() -> None:
    assert jn.MaxPool1D(3).stride == 3 and jn.AvgPool1D(2).stride == 2
    assert jn.MaxPool1D(2) == jn.MaxPool1D(2, stride=2) == jn.MaxPool1D(np.int64(2), stride=None, padding=0)
    assert all(type(v) is int for v in (jn.MaxPool1D(np.int32(2)).kernel_size, jn.AvgPool1D(2, np.int64(1)).stride))
    assert jn.MaxPool1D(2).output_shape((3, 9)) == (3, 4)
    assert jn.AvgPool1D(4, 3, 2).label() == "AvgPool1D(kernel 4, stride 3, padding 2)"
    assert jn.MaxPool1D(2).label() == "MaxPool1D(kernel 2, stride 2)"


# --------------------------------------------------------------------------- GlobalAvgPool
@pytest.mark.parametrize("shape", [(3, 2, 7), (2, 3, 4, 5), (2, 2, 3, 2, 2), (2, 4, 1)], ids=["NCL", "NCHW", "NCDHW", "L1"])
def test_global_avg_pool_matches_the_loops(shape: tuple[int, ...], dtype: Any) -> None:
    rng = np.random.default_rng(3)
    layer, X = jn.GlobalAvgPool(), rng.normal(size=shape).astype(dtype)
    dY = rng.normal(size=shape[:2]).astype(dtype)
    Y = layer.forward(X)
    assert Y.shape == shape[:2] and Y.dtype == dtype and layer.output_shape(shape[1:]) == shape[1:2]
    eY, edX, _ = tolerances.reference_bounds(layer, X, dY, dtype)
    tolerances.assert_within(Y, ref.GlobalAvgPool.forward(X), eY, "forward")
    dX = layer.grad_input(X, dY)
    assert dX.shape == X.shape and dX.flags.c_contiguous
    tolerances.assert_within(dX, ref.GlobalAvgPool.grad_input(X, dY), edX, "grad_input")
    jn.testing.check_grads(layer, X.astype(np.float64))


def test_global_avg_pool_kernels_compile_once_per_dtype_whatever_the_rank() -> None:
    """The kernels see (n, C, m) views (kernel_rank = 3), in the passes and the compiled step."""
    rng = np.random.default_rng(4)
    kernels = (pooling._global_avg_pool_forward, pooling._global_avg_pool_grad_input)
    for dtype in DTYPES:
        for shape in [(4, 3, 6), (4, 3, 2, 3), (4, 3, 2, 1, 3)]:
            X = rng.normal(size=shape).astype(dtype)
            layer = jn.GlobalAvgPool()
            layer.forward(X)
            layer.grad_input(X, np.ones(shape[:2], dtype))
            model = jn.pipe(jn.Tanh(), layer, jn.Dense(W=rng.normal(size=(3, 2)).astype(dtype), b=np.zeros(2, dtype)))
            compiled_equals_generic(model, jn.SoftmaxCrossEntropy(), jn.optim.adam(0.01), [(X, rng.integers(0, 2, size=shape[0]))] * 2)
    if not JIT:
        pytest.skip("the kernels are Python functions with the JIT off: no signatures to count")
    for kernel in kernels:
        ranks = {(str(sig[0].dtype), sig[0].ndim) for sig in kernel.signatures}
        assert ranks == {("float32", 3), ("float64", 3)}, kernel.signatures
        assert len(kernel.signatures) == 2, kernel.signatures


def test_global_avg_pool_refuses_what_has_no_axis_after_the_channels() -> None:
    call_and_check(lambda: jn.GlobalAvgPool().forward(np.zeros((2, 3))), ValueError, "GlobalAvgPool", "(channels, ...)", "(3,)")
    call_and_check(lambda: jn.GlobalAvgPool().forward(np.zeros((2, 3, 0))), ValueError, "GlobalAvgPool", "positive", "(3, 0)")


# --------------------------------------------------------------------------- PyTorch
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv1d_agrees_with_pytorch_in_float64(case: tuple) -> None:
    torch = pytest.importorskip("torch")
    in_channels, out_channels, length, kernel_size, stride, padding, dilation = case
    torch.manual_seed(0)
    module = torch.nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation).double()
    layer = jn.Conv1D(W=module.weight.detach().numpy(), b=module.bias.detach().numpy(), stride=stride, padding=padding, dilation=dilation)
    assert layer.dtype == np.float64
    X = np.random.default_rng(0).normal(size=(3, in_channels, length))
    X_torch = torch.tensor(X, requires_grad=True)
    Y_torch = module(X_torch)
    dY = np.random.default_rng(1).normal(size=Y_torch.shape)
    Y_torch.backward(torch.tensor(dY))
    # each side within the float64 bound of the exact answer: the same products, in any order
    eY, edX, (eW, eb) = tolerances.reference_bounds(layer, X, dY, np.float64, np.float64)
    tolerances.assert_within(layer.forward(X), Y_torch.detach().numpy(), eY, "forward")
    tolerances.assert_within(layer.grad_input(X, dY), X_torch.grad.numpy(), edX, "grad_input")
    grads = layer.grad_params(X, dY)
    tolerances.assert_within(grads.W, module.weight.grad.numpy(), eW, "dW")
    tolerances.assert_within(grads.b, module.bias.grad.numpy(), eb, "db")
    # the trace route: the same answers
    trace_grads, dX = jn.backward(layer, jn.forward(layer, X)[1], dY)
    tolerances.assert_within(dX, X_torch.grad.numpy(), edX, "backward dX")
    tolerances.assert_within(trace_grads.W, module.weight.grad.numpy(), eW, "backward dW")


def test_conv1d_weights_copied_from_pytorch_give_its_output() -> None:
    """A float32 torch.nn.Conv1d with its default initialization, weights moved over unchanged."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(3)
    module = torch.nn.Conv1d(4, 6, 5, stride=2, padding=2, dilation=1)
    layer = jn.Conv1D(W=module.weight.detach().numpy(), b=module.bias.detach().numpy(), stride=2, padding=2)
    assert layer.dtype == np.float32 and layer.W.shape == (6, 4, 5) and layer.kernel_size == 5
    X = np.random.default_rng(5).normal(size=(8, 4, 33)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.tensor(X)).numpy()
    eY, _, _ = tolerances.reference_bounds(layer, X, np.zeros_like(expected), np.float32, np.float32)
    tolerances.assert_within(layer.forward(X), expected, eY, "forward")


@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
@pytest.mark.parametrize("cls, function", [(jn.MaxPool1D, "max_pool1d"), (jn.AvgPool1D, "avg_pool1d")], ids=["MaxPool1D", "AvgPool1D"])
def test_pooling_agrees_with_pytorch(cls: type, function: str, case: tuple) -> None:
    torch = pytest.importorskip("torch")
    channels, length, kernel_size, stride, padding = case
    layer = cls(kernel_size, stride, padding)
    rng = np.random.default_rng(3)
    X = np.round(rng.normal(size=(2, channels, length)), 0)  # ties, where the first maximum must get the gradient
    X_torch = torch.tensor(X, requires_grad=True)
    Y_torch = getattr(torch.nn.functional, function)(X_torch, kernel_size, stride, padding)
    dY = rng.normal(size=Y_torch.shape)
    Y_torch.backward(torch.tensor(dY))
    eY, edX, _ = tolerances.reference_bounds(layer, X, dY, np.float64)
    tolerances.assert_within(layer.forward(X), Y_torch.detach().numpy(), eY, "forward")
    tolerances.assert_within(layer.grad_input(X, dY), X_torch.grad.numpy(), edX, "grad_input")
    _, dX = jn.backward(layer, jn.forward(layer, X)[1], dY)
    tolerances.assert_within(dX, X_torch.grad.numpy(), edX, "backward dX")


@pytest.mark.parametrize("shape", [(3, 4, 7), (2, 3, 4, 5)], ids=["NCL", "NCHW"])
def test_global_avg_pool_agrees_with_pytorch(shape: tuple[int, ...]) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    X = rng.normal(size=shape)
    X_torch = torch.tensor(X, requires_grad=True)
    if len(shape) == 3:
        Y_torch = torch.nn.functional.adaptive_avg_pool1d(X_torch, 1).flatten(1)
    else:
        Y_torch = X_torch.mean(dim=(2, 3))
    dY = rng.normal(size=Y_torch.shape)
    Y_torch.backward(torch.tensor(dY))
    layer = jn.GlobalAvgPool()
    eY, edX, _ = tolerances.reference_bounds(layer, X, dY, np.float64)
    tolerances.assert_within(layer.forward(X), Y_torch.detach().numpy(), eY, "forward")
    tolerances.assert_within(layer.grad_input(X, dY), X_torch.grad.numpy(), edX, "grad_input")


# --------------------------------------------------------------------------- Conv1D records
def test_conv1d_init() -> None:
    key = jn.random.key(3)
    layer = jn.Conv1D.init(key, 3, 8, 5, stride=2, padding=1)
    assert layer.W.shape == (8, 3, 5) and layer.b.shape == (8,) and layer.dtype == np.float32
    assert (layer.in_channels, layer.out_channels, layer.kernel_size) == (3, 8, 5)
    assert (layer.stride, layer.padding, layer.dilation, layer.input_length) == (2, 1, 1, None)
    assert np.abs(layer.W).max() <= np.sqrt(6.0 / (3 * 5)) and not layer.b.any()  # He uniform, zero bias
    assert np.abs(layer.W).max() > 0.5 * np.sqrt(6.0 / (3 * 5))
    assert layer == jn.Conv1D.init(key, 3, 8, 5, stride=2, padding=1)
    assert jn.Conv1D.init(key, 1, 2, 3, dtype=np.float64).W.dtype == np.float64
    assert jn.Conv1D.init(key, 1, 2, 3, weight_init=jn.init.zeros).W.sum() == 0.0
    assert layer.label() == "Conv1D(3 -> 8, kernel 5, stride 2, padding 1)"
    assert jn.Conv1D.init(key, 1, 2, 3, dilation=2).label() == "Conv1D(1 -> 2, kernel 3, stride 1, padding 0, dilation 2)"


def test_conv1d_configuration_is_plain_python_ints() -> None:
    W, b = np.zeros((2, 1, 3)), np.zeros(2)
    layer = jn.Conv1D(W=W, b=b, stride=np.int64(2), padding=np.int32(1), dilation=np.uint8(2), input_length=np.int16(9))
    assert (layer.stride, layer.padding, layer.dilation, layer.input_length) == (2, 1, 2, 9)
    assert all(type(v) is int for v in (layer.stride, layer.padding, layer.dilation, layer.input_length))
    assert layer.config() == (2, 1, 2)
    doubled = jn.tree.map(lambda a: 2 * a, layer)
    assert type(doubled) is jn.Conv1D and doubled.config() == layer.config() and doubled.input_length == 9


def test_a_conv1d_with_an_input_length_states_its_input_shape() -> None:
    k1, k2 = jn.random.split(jn.random.key(4))
    layer = jn.Conv1D.init(k1, 2, 4, 3, input_length=10, dtype=np.float64)
    assert layer.input_shape == (2, 10) and layer.output_shape((2, 10)) == (4, 8)
    call_and_check(lambda: layer.forward(np.zeros((3, 2, 12))), ValueError, "Conv1D", "(2, 10)", "(2, 12)", "input_length")
    with raises(ValueError, "cannot compose", "layers[2] (Dense)", "(33,)", "(32,)"):
        jn.pipe(layer, jn.Flatten(), jn.Dense.init(k2, 33, 2, dtype=np.float64))
    assert jn.pipe(layer, jn.Flatten(), jn.Dense.init(k2, 32, 2, dtype=np.float64)).output_shape((2, 10)) == (2,)


# --------------------------------------------------------------------------- bad input
def conv(in_channels: int = 1, out_channels: int = 2, kernel_size: Any = 3, **config: Any) -> jn.Conv1D:
    return jn.Conv1D.init(jn.random.key(0), in_channels, out_channels, kernel_size, dtype=np.float64, **config)


def test_wrong_channel_count() -> None:
    call_and_check(lambda: conv(in_channels=3).forward(np.zeros((2, 1, 9))), ValueError, "Conv1D", "3 input channels", "(1, 9)")
    call_and_check(lambda: conv(in_channels=3).grad_input(np.zeros((2, 2, 9)), np.zeros((2, 2, 7))), ValueError, "Conv1D", "3 input channels")
    k1, k2 = jn.random.split(jn.random.key(1))
    with raises(ValueError, "cannot compose", "layers[1] (Conv1D)", "3 input channels", "(4, 8)"):
        jn.pipe(jn.Conv1D.init(k1, 1, 4, 3, input_length=10), jn.Conv1D.init(k2, 3, 2, 3))


def test_kernel_longer_than_the_padded_sequence() -> None:
    call_and_check(lambda: conv(kernel_size=5).forward(np.zeros((2, 1, 4))), ValueError, "Conv1D", "kernel 5", "padded sequence 4", "length 4, padding 0")
    call_and_check(lambda: conv(kernel_size=7, padding=1).forward(np.zeros((2, 1, 4))), ValueError, "Conv1D", "padded sequence 6", "padding 1")
    call_and_check(lambda: conv(dilation=3).forward(np.zeros((2, 1, 6))), ValueError, "Conv1D", "dilated kernel 7", "(kernel 3, dilation 3)", "sequence 6")
    call_and_check(lambda: jn.MaxPool1D(4).forward(np.zeros((2, 1, 3))), ValueError, "MaxPool1D", "kernel 4", "padded sequence 3")
    call_and_check(lambda: jn.AvgPool1D(6, padding=1).forward(np.zeros((2, 1, 3))), ValueError, "AvgPool1D", "kernel 6", "padded sequence 5")
    with raises(ValueError, "cannot compose", "layers[1] (MaxPool1D)", "kernel 9", "(4, 8)"):
        jn.pipe(jn.Conv1D.init(jn.random.key(2), 1, 4, 3, input_length=10), jn.MaxPool1D(9))


@pytest.mark.parametrize("layer", [conv(), jn.MaxPool1D(2), jn.AvgPool1D(2)], ids=["Conv1D", "MaxPool1D", "AvgPool1D"])
def test_a_zero_length_sequence(layer: jn.Layer) -> None:
    call_and_check(lambda: layer.forward(np.zeros((2, 1, 0))), ValueError, type(layer).__name__, "positive channels and length", "(1, 0)")


@pytest.mark.parametrize("layer", [conv(), jn.MaxPool1D(2), jn.AvgPool1D(2)], ids=["Conv1D", "MaxPool1D", "AvgPool1D"])
@pytest.mark.parametrize("shape", [(2, 9), (2, 1, 5, 9), (2, 1, 1, 1, 9)], ids=["2-D", "4-D", "5-D"])
def test_input_that_is_not_a_batch_of_sequences(layer: jn.Layer, shape: tuple[int, ...]) -> None:
    call_and_check(lambda: layer.forward(np.zeros(shape)), ValueError, type(layer).__name__, "(channels, length)", "(n, C, L)", str(shape[1:]))


def test_wrong_output_gradient_shape() -> None:
    call_and_check(lambda: conv().grad_params(np.zeros((2, 1, 9)), np.zeros((2, 2, 8))), ValueError, "Conv1D", "(2, 2, 7)", "(2, 2, 8)")
    call_and_check(lambda: jn.MaxPool1D(2).grad_input(np.zeros((2, 1, 9)), np.zeros((2, 1, 5))), ValueError, "MaxPool1D", "(2, 1, 4)")
    call_and_check(lambda: jn.GlobalAvgPool().grad_input(np.zeros((2, 3, 4)), np.zeros((2, 4))), ValueError, "GlobalAvgPool", "(2, 3)")


@pytest.mark.parametrize(
    "make, exc, fragments",
    [
        (lambda: conv(stride=0), ValueError, ("Conv1D", "stride", "positive integer", "got 0")),
        (lambda: conv(dilation=-1), ValueError, ("Conv1D", "dilation", "positive")),
        (lambda: conv(padding=-1), ValueError, ("Conv1D", "padding", "non-negative")),
        (lambda: conv(stride=(1, 2)), TypeError, ("Conv1D", "stride", "integer")),
        (lambda: conv(padding=1.0), TypeError, ("Conv1D", "padding", "integer")),
        (lambda: conv(stride=True), TypeError, ("Conv1D", "stride")),
        (lambda: conv(input_length=0), ValueError, ("Conv1D", "input_length", "None or a positive integer")),
        (lambda: conv(kernel_size=0), ValueError, ("Conv1D.init", "kernel_size", "positive")),
        (lambda: conv(kernel_size=(3,)), TypeError, ("Conv1D.init", "kernel_size")),
        (lambda: conv(kernel_size=2.5), TypeError, ("Conv1D.init", "kernel_size")),
        (lambda: conv(in_channels=0), ValueError, ("Conv1D.init", "in_channels")),
        (lambda: conv(out_channels=2.0), ValueError, ("Conv1D.init", "out_channels")),
        (lambda: jn.Conv1D.init(jn.random.key(0), 1, 2, 3, dtype=np.int32), TypeError, ("Conv1D.init", "dtype")),
        (lambda: jn.Conv1D(W=np.zeros((2, 1, 3, 3)), b=np.zeros(2)), ValueError, ("Conv1D", "(out_channels, in_channels, k)", "(2, 1, 3, 3)")),
        (lambda: jn.Conv1D(W=np.zeros((2, 1, 0)), b=np.zeros(2)), ValueError, ("Conv1D", "positive sizes")),
        (lambda: jn.Conv1D(W=np.zeros((2, 1, 3)), b=np.zeros(3)), ValueError, ("Conv1D", "b (3,)")),
        (lambda: jn.MaxPool1D(0), ValueError, ("MaxPool1D", "kernel_size", "positive")),
        (lambda: jn.AvgPool1D(-2), ValueError, ("AvgPool1D", "kernel_size", "positive")),
        (lambda: jn.MaxPool1D(2, stride=0), ValueError, ("MaxPool1D", "stride", "None or a positive integer")),
        (lambda: jn.AvgPool1D(2, padding=-1), ValueError, ("AvgPool1D", "padding", "non-negative")),
        (lambda: jn.MaxPool1D(3, padding=2), ValueError, ("MaxPool1D", "padding 2", "at most half", "kernel size 3")),
        (lambda: jn.AvgPool1D(2, padding=2), ValueError, ("AvgPool1D", "at most half")),
        (lambda: jn.MaxPool1D((2, 2)), TypeError, ("MaxPool1D", "kernel_size")),
        (lambda: jn.AvgPool1D("2"), TypeError, ("AvgPool1D", "kernel_size")),
    ],
)
def test_bad_configuration(make: Any, exc: type[Exception], fragments: tuple[str, ...]) -> None:
    call_and_check(make, exc, *fragments)


# --------------------------------------------------------------------------- the MNIST-1D network
def mnist1d_cnn(key: Any = None, dtype: Any = np.float32) -> jn.Chain:
    """The MNIST-1D CNN: (1, 40) -> (25, 19) -> (25, 10) -> (25, 5) -> 125 -> 10."""
    keys = jn.random.split(jn.random.key(0) if key is None else key, 4)
    return jn.pipe(
        jn.Conv1D.init(keys[0], 1, 25, 5, stride=2, padding=1, dtype=dtype),
        jn.ReLU(),
        jn.Conv1D.init(keys[1], 25, 25, 3, 2, 1, dtype=dtype),
        jn.ReLU(),
        jn.Conv1D.init(keys[2], 25, 25, 3, 2, 1, dtype=dtype),
        jn.ReLU(),
        jn.Flatten(),
        jn.Dense.init(keys[3], 125, 10, dtype=dtype),
    )


def test_the_mnist1d_network_composes_and_summary_shows_it() -> None:
    model = mnist1d_cnn()
    assert model.output_shape((1, 40)) == (10,)
    assert model.forward(np.zeros((3, 1, 40), np.float32)).shape == (3, 10)
    table = jn.summary(model, (1, 40))
    rows = table.rows
    assert [row.output_shape for row in rows] == [(25, 19), (25, 19), (25, 10), (25, 10), (25, 5), (25, 5), (125,), (10,)]
    assert [row.params for row in rows] == [25 * 5 + 25, 0, 25 * 25 * 3 + 25, 0, 25 * 25 * 3 + 25, 0, 0, 1260]
    assert table.params == 150 + 2 * 1900 + 1260
    text = str(table)
    for label in ("Conv1D(1 -> 25, kernel 5, stride 2, padding 1)", "Conv1D(25 -> 25, kernel 3, stride 2, padding 1)", "Dense(125 -> 10)"):
        assert label in text, text
    assert "(25, 19)" in text and "(125,)" in text
    with raises(ValueError, "Dense", "(125,)", "(150,)"):
        jn.summary(model, (1, 48))


def test_the_mnist1d_network_compiled_step_equals_train_step_bit_for_bit() -> None:
    rng = np.random.default_rng(7)
    model = mnist1d_cnn(jn.random.key(7))
    batches = [(rng.normal(size=(32, 1, 40)).astype(np.float32), rng.integers(0, 10, size=32)) for _ in range(3)]
    compiled_equals_generic(model, jn.SoftmaxCrossEntropy(), jn.optim.adam(1e-2), batches)


def test_the_mnist1d_network_gradients_agree_with_central_differences() -> None:
    keys = jn.random.split(jn.random.key(8), 3)
    model = jn.pipe(  # the MNIST-1D architecture, narrower and shorter, in float64; Tanh keeps the differences smooth
        jn.Conv1D.init(keys[0], 1, 3, 5, stride=2, padding=1, dtype=np.float64), jn.Tanh(),
        jn.Conv1D.init(keys[1], 3, 2, 3, 2, 1, dtype=np.float64), jn.Tanh(), jn.MaxPool1D(2, padding=1), jn.Flatten(),
        jn.Dense.init(keys[2], 2 * 3, 4, dtype=np.float64),
    )  # (1, 20) -> (3, 9) -> (2, 5) -> (2, 3) -> 6 -> 4
    jn.testing.check_grads(model, np.random.default_rng(8).normal(size=(2, 1, 20)))


def test_a_small_sequence_network_with_pooling_compiles_and_agrees() -> None:
    keys = jn.random.split(jn.random.key(9), 2)
    model = jn.pipe(
        jn.Conv1D.init(keys[0], 2, 4, 3, padding=1, dtype=np.float64), jn.ReLU(), jn.MaxPool1D(2), jn.AvgPool1D(3, 1, 1),
        jn.GlobalAvgPool(), jn.Dense.init(keys[1], 4, 3, dtype=np.float64),
    )
    rng = np.random.default_rng(9)
    batches = [(rng.normal(size=(6, 2, 11)), rng.integers(0, 3, size=6)) for _ in range(3)]
    compiled_equals_generic(model, jn.SoftmaxCrossEntropy(), jn.optim.momentum(0.1), batches)


# --------------------------------------------------------------------------- Dense on (n, T, n_in)
def dense_bounds(layer: jn.Dense, X: np.ndarray, dY: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Bounds for Dense on ``(n, T, n_in)`` in float64 against another float64 computation:
    the kernels compute on the ``(n T, n_in)`` view, so the 2-D rule on that view applies
    (the parameters' gradients sum over ``n T`` rows)."""
    n_in, n_out = layer.W.shape
    eY, edX, egrads = tolerances.reference_bounds(layer, X.reshape(-1, n_in), dY.reshape(-1, n_out), np.float64, np.float64)
    return eY.reshape(dY.shape), edX.reshape(X.shape), egrads


@pytest.mark.parametrize("shape", [(4, 7, 5), (1, 1, 5), (3, 12, 5)], ids=["n4-T7", "n1-T1", "n3-T12"])
def test_dense_on_sequences_agrees_with_torch_linear_in_float64(shape: tuple[int, ...]) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    module = torch.nn.Linear(5, 6).double()
    layer = jn.Dense(W=module.weight.detach().numpy().T, b=module.bias.detach().numpy())
    rng = np.random.default_rng(10)
    X = rng.normal(size=shape)
    X_torch = torch.tensor(X, requires_grad=True)
    Y_torch = module(X_torch)
    dY = rng.normal(size=Y_torch.shape)
    Y_torch.backward(torch.tensor(dY))
    eY, edX, (eW, eb) = dense_bounds(layer, X, dY)
    Y = layer.forward(X)
    assert Y.shape == shape[:2] + (6,) and layer.output_shape(shape[1:]) == (shape[1], 6)
    tolerances.assert_within(Y, Y_torch.detach().numpy(), eY, "forward")
    tolerances.assert_within(layer.grad_input(X, dY), X_torch.grad.numpy(), edX, "dX")
    grads = layer.grad_params(X, dY)
    tolerances.assert_within(grads.W, module.weight.grad.numpy().T, eW, "dW")
    tolerances.assert_within(grads.b, module.bias.grad.numpy(), eb, "db")
    trace_grads, dX = jn.backward(layer, jn.forward(layer, X)[1], dY)
    tolerances.assert_within(dX, X_torch.grad.numpy(), edX, "backward dX")
    tolerances.assert_within(trace_grads.W, module.weight.grad.numpy().T, eW, "backward dW")


def test_dense_on_sequences_passes_the_gradient_check_and_check_layer() -> None:
    rng = np.random.default_rng(11)
    layer = jn.Dense(W=rng.normal(size=(4, 3)), b=rng.normal(size=3))
    X = rng.normal(size=(3, 5, 4))
    jn.testing.check_grads(layer, X)
    report = jn.testing.check_layer(layer, X)
    assert not report.failed, report
    assert "gradients" in report.passed and "batch invariance" in report.passed


def test_a_sequence_mlp_compiled_step_equals_train_step_bit_for_bit(dtype: Any) -> None:
    keys = jn.random.split(jn.random.key(12), 2)
    d = 6
    model = jn.pipe(jn.Dense.init(keys[0], d, 8, dtype=dtype), jn.LayerNorm.init(None, 8, dtype=dtype), jn.GELU(), jn.Dense.init(keys[1], 8, 3, dtype=dtype))
    assert model.output_shape((7, d)) == (7, 3)
    rng = np.random.default_rng(12)
    batches = [(rng.normal(size=(5, 7, d)).astype(dtype), rng.normal(size=(5, 7, 3)).astype(dtype)) for _ in range(3)]
    compiled_equals_generic(model, jn.MeanSquaredError(), jn.optim.adam(0.01), batches)


def test_one_dense_kernel_signature_per_dtype_serves_both_ranks() -> None:
    """(n, d) batches and (n, T, d) sequences reach the same (rows, d) kernels."""
    rng = np.random.default_rng(13)
    kernels = (dense_module._dense_forward, dense_module._dense_grad_input, dense_module._dense_grad_params)
    for dtype in DTYPES:
        layer = jn.Dense(W=rng.normal(size=(4, 3)).astype(dtype), b=rng.normal(size=3).astype(dtype))
        model = jn.pipe(layer, jn.Tanh(), jn.Dense(W=rng.normal(size=(3, 2)).astype(dtype), b=np.zeros(2, dtype)))
        for shape in [(6, 4), (6, 5, 4), (2, 3, 2, 4)]:
            X = rng.normal(size=shape).astype(dtype)
            dY = np.ones(shape[:-1] + (3,), dtype)
            layer.forward(X)
            layer.grad_input(X, dY)
            layer.grad_params(X, dY)
            jn.backward(layer, jn.forward(layer, X)[1], dY)
            T = rng.normal(size=shape[:-1] + (2,)).astype(dtype)
            step = jn.compile_step(model, jn.MeanSquaredError(), jn.optim.sgd(0.1))
            step(model, jn.optim.sgd(0.1).init(model), X, T)
    if not JIT:
        pytest.skip("the kernels are Python functions with the JIT off: no signatures to count")
    for kernel in kernels:
        arrays = {(str(sig[0].dtype), sig[0].ndim) for sig in kernel.signatures}
        assert arrays == {("float32", 2), ("float64", 2)}, kernel.signatures
        assert len(kernel.signatures) == 2, kernel.signatures
