"""Conv2D, MaxPool2D, AvgPool2D, Flatten and Reshape.

Against the direct loops of ``reference_spatial.py`` over a grid of shapes (odd sizes,
strides, paddings, dilations, 1x1 and non-square kernels, one channel and many), in float64
and float32; against central differences; against PyTorch with weights moved over (when
PyTorch is installed); bad input; shape checks when composing a small network.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from numba.core.errors import NumbaError

import jitnn as jn
import reference_spatial as ref
import tolerances

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


# --------------------------------------------------------------------------- Conv2D against the loops
#: (in_channels, out_channels, (H, W), kernel_size, stride, padding, dilation)
CONV_CASES = [
    (1, 3, (7, 5), 3, 1, 0, 1),  # one channel in, odd sizes
    (3, 4, (7, 5), 3, 2, 1, 1),  # many channels, stride 2, padding 1
    (2, 2, (6, 7), (3, 2), (2, 1), 2, 1),  # non-square kernel, padding 2
    (2, 3, (7, 7), 3, 1, 1, 2),  # dilation 2
    (3, 2, (5, 4), 1, 1, 0, 1),  # 1x1 kernel
    (2, 2, (5, 5), 1, 2, 1, 1),  # 1x1 kernel, stride 2, padding: a border of bias only
    (1, 1, (5, 5), 5, 1, 0, 1),  # the kernel covers the image: one output position
    (2, 2, (4, 6), (2, 3), 2, (0, 1), (2, 1)),  # everything non-square
    (3, 4, (1, 1), 3, 1, 1, 1),  # a 1x1 image inside its padding
    (2, 3, (3, 8), (1, 3), (1, 3), (0, 2), (1, 2)),  # stride larger than the kernel
]
CONV_IDS = [f"{c}to{o}-{h}x{w}-k{k}-s{s}-p{p}-d{d}" for c, o, (h, w), k, s, p, d in CONV_CASES]


def conv_case(case: tuple, dtype: Any, seed: int = 0, n: int = 2) -> tuple[jn.Conv2D, np.ndarray, np.ndarray]:
    """The layer, a batch and an output gradient for one row of ``CONV_CASES``."""
    in_channels, out_channels, size, kernel_size, stride, padding, dilation = case
    rng = np.random.default_rng(seed)
    layer = jn.Conv2D.init(jn.random.key(seed), in_channels, out_channels, kernel_size, stride, padding, dilation, dtype=dtype)
    layer = jn.Conv2D(W=layer.W, b=rng.normal(size=out_channels).astype(dtype), stride=stride, padding=padding, dilation=dilation)
    X = rng.normal(size=(n, in_channels, *size)).astype(dtype)
    dY = rng.normal(size=(n, *layer.output_shape(X.shape[1:]))).astype(dtype)
    return layer, X, dY


def conv_config(layer: jn.Conv2D) -> dict[str, Any]:
    return {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation}


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv2d_matches_the_loops(case: tuple, dtype: Any) -> None:
    layer, X, dY = conv_case(case, dtype)
    config = conv_config(layer)
    Y = layer.forward(X)
    assert Y.dtype == dtype and Y.flags.c_contiguous
    # sums of products in any order, in dtype and in the loops' float64 (tolerances._Conv2D)
    eY, edX, (eW, eb) = tolerances.reference_bounds(layer, X, dY, dtype)
    tolerances.assert_within(Y, ref.Conv2D.forward(X, layer.W, layer.b, **config), eY, "forward")
    tolerances.assert_within(layer.grad_input(X, dY), ref.Conv2D.grad_input(X, dY, layer.W, layer.b, **config), edX, "grad_input")
    grads = layer.grad_params(X, dY)
    dW, db = ref.Conv2D.grad_params(X, dY, layer.W, layer.b, **config)
    tolerances.assert_within(grads.W, dW, eW, "dW")
    tolerances.assert_within(grads.b, db, eb, "db")
    assert grads.stride == layer.stride and grads.padding == layer.padding and grads.dilation == layer.dilation


@pytest.mark.parametrize("case", [CONV_CASES[i] for i in (1, 2, 3, 7)], ids=[CONV_IDS[i] for i in (1, 2, 3, 7)])
def test_conv2d_gradients_agree_with_central_differences(case: tuple) -> None:
    layer, X, _ = conv_case(case, np.float64, seed=1, n=1)
    jn.testing.check_grads(layer, X)


# --------------------------------------------------------------------------- pooling against the loops
#: (channels, (H, W), kernel_size, stride, padding)
POOL_CASES = [
    (1, (7, 5), 2, None, 0),  # odd sizes: the last row and column are left out
    (3, (7, 5), 3, 2, 1),  # stride 2, padding 1
    (2, (6, 7), (3, 2), (1, 2), 1),  # non-square kernel and stride
    (2, (4, 6), 4, 2, 2),  # padding 2 (half the kernel)
    (2, (5, 4), 1, 1, 0),  # 1x1 windows: the identity
    (1, (5, 5), 5, None, 0),  # one window covers the image
    (2, (3, 8), (1, 3), (2, 1), (0, 1)),  # thin windows
]
POOL_IDS = [f"c{c}-{h}x{w}-k{k}-s{s}-p{p}" for c, (h, w), k, s, p in POOL_CASES]
POOLS = [(jn.MaxPool2D, ref.MaxPool2D), (jn.AvgPool2D, ref.AvgPool2D)]


def pool_case(cls: type, case: tuple, dtype: Any, seed: int = 0, n: int = 2) -> tuple[jn.Layer, np.ndarray, np.ndarray]:
    channels, size, kernel_size, stride, padding = case
    rng = np.random.default_rng(seed)
    layer = cls(kernel_size, stride, padding)
    X = distinct_values(rng, (n, channels, *size), dtype)
    dY = rng.normal(size=(n, *layer.output_shape(X.shape[1:]))).astype(dtype)
    return layer, X, dY


def pool_config(layer: jn.Layer) -> dict[str, Any]:
    return {"kernel_size": layer.kernel_size, "stride": layer.stride, "padding": layer.padding}


@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
@pytest.mark.parametrize("cls, reference", POOLS, ids=["MaxPool2D", "AvgPool2D"])
def test_pooling_matches_the_loops(cls: type, reference: Any, case: tuple, dtype: Any) -> None:
    layer, X, dY = pool_case(cls, case, dtype)
    Y = layer.forward(X)
    assert Y.dtype == dtype and Y.flags.c_contiguous
    eY, edX, _ = tolerances.reference_bounds(layer, X, dY, dtype)  # a window's sum and division; the routed sums
    tolerances.assert_within(Y, reference.forward(X, **pool_config(layer)), eY, "forward")
    tolerances.assert_within(layer.grad_input(X, dY), reference.grad_input(X, dY, **pool_config(layer)), edX, "grad_input")
    assert layer.grad_params(X, dY) is layer


@pytest.mark.parametrize("case", [POOL_CASES[i] for i in (1, 2, 3)], ids=[POOL_IDS[i] for i in (1, 2, 3)])
@pytest.mark.parametrize("cls", [jn.MaxPool2D, jn.AvgPool2D])
def test_pooling_gradients_agree_with_central_differences(cls: type, case: tuple) -> None:
    layer, X, _ = pool_case(cls, case, np.float64, seed=2, n=1)
    jn.testing.check_grads(layer, X)


def test_max_pooling_sends_the_gradient_to_the_first_maximum() -> None:
    X = np.array([[[[1.0, 3.0, 3.0, 0.0], [3.0, 2.0, 5.0, 5.0]]]])  # windows 2x2: ties in both
    layer = jn.MaxPool2D(2)
    np.testing.assert_array_equal(layer.forward(X), [[[[3.0, 5.0]]]])
    dX = layer.grad_input(X, np.array([[[[10.0, 20.0]]]]))
    np.testing.assert_array_equal(dX, [[[[0.0, 10.0, 0.0, 0.0], [0.0, 0.0, 20.0, 0.0]]]])
    np.testing.assert_array_equal(dX, ref.MaxPool2D.grad_input(X, np.array([[[[10.0, 20.0]]]]), (2, 2), (2, 2)))


def test_max_pooling_of_a_constant_image_with_padding() -> None:
    """Padding is -inf: it never wins, even against negative values; ties go to the first."""
    X = np.full((1, 1, 3, 3), -2.0)
    layer = jn.MaxPool2D(2, stride=1, padding=1)
    np.testing.assert_array_equal(layer.forward(X), np.full((1, 1, 4, 4), -2.0))
    dX = layer.grad_input(X, np.ones((1, 1, 4, 4)))
    np.testing.assert_array_equal(dX, ref.MaxPool2D.grad_input(X, np.ones((1, 1, 4, 4)), (2, 2), (1, 1), (1, 1)))
    assert dX.sum() == 16.0


def test_max_pooling_propagates_nan() -> None:
    X = np.arange(16.0).reshape(1, 1, 4, 4)
    X[0, 0, 0, 1] = np.nan
    Y = jn.MaxPool2D(2).forward(X)
    assert np.isnan(Y[0, 0, 0, 0]) and np.isfinite(Y[0, 0, 1]).all() and Y[0, 0, 0, 1] == 7.0


def test_average_pooling_counts_padded_zeros() -> None:
    """As PyTorch's default ``count_include_pad=True``: every window is divided by kh kw."""
    Y = jn.AvgPool2D(3, stride=1, padding=1).forward(np.ones((1, 1, 3, 3)))
    # sums of ones are exact, then one division, as in the literals: the same numbers
    np.testing.assert_array_equal(Y[0, 0], [[4 / 9, 6 / 9, 4 / 9], [6 / 9, 1.0, 6 / 9], [4 / 9, 6 / 9, 4 / 9]])


def test_pooling_stride_defaults_to_the_kernel_size() -> None:
    assert jn.MaxPool2D(3).stride == (3, 3)
    assert jn.AvgPool2D((2, 3)).stride == (2, 3)
    assert jn.MaxPool2D(2) == jn.MaxPool2D(2, stride=2) == jn.MaxPool2D((2, 2), stride=None, padding=0)
    assert jn.MaxPool2D(2).output_shape((3, 7, 5)) == (3, 3, 2)


# --------------------------------------------------------------------------- Flatten and Reshape
def test_flatten_and_reshape_copy_into_c_order() -> None:
    X = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)
    for layer, shape in [(jn.Flatten(), (2, 60)), (jn.Reshape((4, -1)), (2, 4, 15)), (jn.Reshape([12, 5]), (2, 12, 5))]:
        Y = layer.forward(X)
        assert Y.shape == shape and Y.flags.c_contiguous and not np.shares_memory(Y, X)
        np.testing.assert_array_equal(Y.reshape(-1), X.reshape(-1))
        dX = layer.grad_input(X, Y)
        assert dX.shape == X.shape and dX.flags.c_contiguous and not np.shares_memory(dX, Y)
        np.testing.assert_array_equal(dX, X)


def test_reshape_shape_rule() -> None:
    assert jn.Reshape(12).shape == (12,)
    assert jn.Reshape((2, -1, 3)).output_shape((4, 3)) == (2, 2, 3)
    assert jn.Reshape((1, 28, 28)).output_shape((784,)) == (1, 28, 28)
    assert jn.Flatten().output_shape((3, 4, 5)) == (60,)
    assert jn.Flatten().output_shape((7,)) == (7,)
    assert jn.Reshape((0, -1)) is not None  # allowed; refused when -1 cannot be resolved
    with raises(ValueError, "Reshape", "(2, 5)", "(3, 3)"):
        jn.Reshape((3, 3)).forward(np.zeros((4, 2, 5)))
    with raises(ValueError, "Reshape", "(3, -1)"):
        jn.Reshape((3, -1)).forward(np.zeros((4, 10)))
    with raises(ValueError, "Reshape", "(0, -1)"):
        jn.Reshape((0, -1)).forward(np.zeros((4, 0)))


@pytest.mark.parametrize("shape, exc", [((-1, -1), ValueError), ((2, -3), ValueError), ("ab", TypeError), ((2.0, 3), TypeError), (None, TypeError)])
def test_reshape_refuses_a_bad_target(shape: Any, exc: type) -> None:
    with raises(exc, "Reshape", "shape"):
        jn.Reshape(shape)


# --------------------------------------------------------------------------- Conv2D records
def test_conv2d_init() -> None:
    key = jn.random.key(3)
    layer = jn.Conv2D.init(key, 3, 8, (3, 5), stride=2, padding=(1, 2))
    assert layer.W.shape == (8, 3, 3, 5) and layer.b.shape == (8,) and layer.dtype == np.float32
    assert (layer.in_channels, layer.out_channels, layer.kernel_size) == (3, 8, (3, 5))
    assert layer.stride == (2, 2) and layer.padding == (1, 2) and layer.dilation == (1, 1) and layer.input_size is None
    assert np.abs(layer.W).max() <= np.sqrt(6.0 / (3 * 3 * 5)) and not layer.b.any()  # He uniform, zero bias
    assert layer == jn.Conv2D.init(key, 3, 8, (3, 5), stride=2, padding=(1, 2))
    assert jn.Conv2D.init(key, 1, 2, 3, dtype=np.float64).W.dtype == np.float64
    assert jn.Conv2D.init(key, 1, 2, 3, weight_init=jn.init.zeros).W.sum() == 0.0


def test_conv2d_configuration_is_canonical_python_ints() -> None:
    W, b = np.zeros((2, 1, 3, 3)), np.zeros(2)
    layer = jn.Conv2D(W=W, b=b, stride=np.int64(2), padding=[1, np.int32(0)], dilation=(1, 2))
    assert layer.stride == (2, 2) and layer.padding == (1, 0) and layer.dilation == (1, 2)
    assert all(type(v) is int for v in layer.stride + layer.padding + layer.dilation)
    assert layer == jn.Conv2D(W=W, b=b, stride=(2, 2), padding=(1, 0), dilation=(1, 2))
    doubled = jn.tree.map(lambda a: 2 * a, layer)
    assert (doubled.stride, doubled.padding, doubled.dilation) == (layer.stride, layer.padding, layer.dilation)
    assert type(doubled) is jn.Conv2D and np.array_equal(doubled.W, 2 * W)


# --------------------------------------------------------------------------- bad input
def call_and_check(fn: Any, exc: type[Exception], *fragments: str) -> None:
    with raises(exc, *fragments) as info:
        fn()
    assert not isinstance(info.value, NumbaError), f"a Numba error reached the user: {info.value}"


def conv(in_channels: int = 1, out_channels: int = 2, kernel_size: Any = 3, **config: Any) -> jn.Conv2D:
    return jn.Conv2D.init(jn.random.key(0), in_channels, out_channels, kernel_size, dtype=np.float64, **config)


def test_kernel_larger_than_the_padded_image() -> None:
    call_and_check(lambda: conv(kernel_size=5).forward(np.zeros((2, 1, 3, 4))), ValueError, "Conv2D", "kernel (5, 5)", "padded image (3, 4)")
    call_and_check(lambda: conv(kernel_size=5, padding=1).forward(np.zeros((2, 1, 2, 9))), ValueError, "Conv2D", "padded image (4, 11)")
    call_and_check(lambda: conv(dilation=2).forward(np.zeros((2, 1, 4, 9))), ValueError, "Conv2D", "dilated kernel (5, 5)", "(4, 9)")
    call_and_check(lambda: jn.MaxPool2D(4).forward(np.zeros((2, 1, 3, 9))), ValueError, "MaxPool2D", "kernel (4, 4)", "(3, 9)")
    call_and_check(lambda: jn.AvgPool2D((2, 5)).forward(np.zeros((2, 1, 3, 3))), ValueError, "AvgPool2D", "kernel (2, 5)", "(3, 3)")


def test_wrong_channel_count() -> None:
    call_and_check(lambda: conv(in_channels=3).forward(np.zeros((2, 1, 5, 5))), ValueError, "Conv2D", "3 input channels", "(1, 5, 5)")
    call_and_check(lambda: conv(in_channels=3).grad_input(np.zeros((2, 2, 5, 5)), np.zeros((2, 2, 3, 3))), ValueError, "Conv2D", "3 input channels")


@pytest.mark.parametrize("layer", [conv(), jn.MaxPool2D(2), jn.AvgPool2D(2)], ids=["Conv2D", "MaxPool2D", "AvgPool2D"])
@pytest.mark.parametrize("shape", [(2, 784), (2, 28, 28), (2, 1, 1, 28, 28), (2, 1, 0, 5)])
def test_input_that_is_not_a_batch_of_images(layer: jn.Layer, shape: tuple[int, ...]) -> None:
    call_and_check(lambda: layer.forward(np.zeros(shape)), ValueError, type(layer).__name__, "(channels, height, width)" if len(shape) != 4 else "positive")


def test_wrong_output_gradient_shape() -> None:
    call_and_check(lambda: conv().grad_params(np.zeros((2, 1, 5, 5)), np.zeros((2, 2, 4, 4))), ValueError, "Conv2D", "(2, 2, 3, 3)", "(2, 2, 4, 4)")
    call_and_check(lambda: jn.MaxPool2D(2).grad_input(np.zeros((2, 1, 5, 5)), np.zeros((2, 1, 3, 3))), ValueError, "MaxPool2D", "(2, 1, 2, 2)")


@pytest.mark.parametrize(
    "make, exc, fragments",
    [
        (lambda: conv(stride=0), ValueError, ("Conv2D", "stride", "positive")),
        (lambda: conv(stride=(1, -1)), ValueError, ("Conv2D", "stride", "positive")),
        (lambda: conv(dilation=0), ValueError, ("Conv2D", "dilation", "positive")),
        (lambda: conv(padding=-1), ValueError, ("Conv2D", "padding", "non-negative")),
        (lambda: conv(padding=(1, 2, 3)), TypeError, ("Conv2D", "padding", "pair")),
        (lambda: conv(stride=1.5), TypeError, ("Conv2D", "stride", "integer")),
        (lambda: conv(stride=True), TypeError, ("Conv2D", "stride")),
        (lambda: conv(kernel_size=0), ValueError, ("Conv2D.init", "kernel_size", "positive")),
        (lambda: conv(kernel_size=(3, -2)), ValueError, ("Conv2D.init", "kernel_size")),
        (lambda: conv(in_channels=0), ValueError, ("Conv2D.init", "in_channels")),
        (lambda: conv(out_channels=2.0), ValueError, ("Conv2D.init", "out_channels")),
        (lambda: conv(input_size=(0, 5)), ValueError, ("Conv2D", "input_size")),
        (lambda: jn.Conv2D.init(jn.random.key(0), 1, 2, 3, dtype=np.int32), TypeError, ("Conv2D.init", "dtype")),
        (lambda: jn.Conv2D(W=np.zeros((2, 1, 3)), b=np.zeros(2)), ValueError, ("Conv2D", "(out_channels, in_channels, kh, kw)", "(2, 1, 3)")),
        (lambda: jn.Conv2D(W=np.zeros((2, 1, 3, 3)), b=np.zeros(3)), ValueError, ("Conv2D", "b (3,)")),
        (lambda: jn.MaxPool2D(0), ValueError, ("MaxPool2D", "kernel_size", "positive")),
        (lambda: jn.AvgPool2D(-2), ValueError, ("AvgPool2D", "kernel_size", "positive")),
        (lambda: jn.MaxPool2D(2, stride=0), ValueError, ("MaxPool2D", "stride", "positive")),
        (lambda: jn.AvgPool2D(2, padding=-1), ValueError, ("AvgPool2D", "padding", "non-negative")),
        (lambda: jn.MaxPool2D(3, padding=2), ValueError, ("MaxPool2D", "padding (2, 2)", "at most half", "(3, 3)")),
        (lambda: jn.AvgPool2D((4, 2), padding=(2, 2)), ValueError, ("AvgPool2D", "at most half")),
        (lambda: jn.MaxPool2D("2"), TypeError, ("MaxPool2D", "kernel_size")),
    ],
)
def test_bad_configuration(make: Any, exc: type[Exception], fragments: tuple[str, ...]) -> None:
    call_and_check(make, exc, *fragments)


# --------------------------------------------------------------------------- composition
def small_network(n_hidden: int, input_size: Any = (8, 8)) -> jn.Chain:
    """Conv 1 -> 4 (3x3): (4, 6, 6); max pool 2: (4, 3, 3); flatten: (36,); dense -> 5."""
    k1, k2 = jn.random.split(jn.random.key(5))
    first = jn.Conv2D.init(k1, 1, 4, 3, input_size=input_size, dtype=np.float64)
    return jn.pipe(first, jn.ReLU(), jn.MaxPool2D(2), jn.Flatten(), jn.Dense.init(k2, n_hidden, 5, dtype=np.float64))


def test_composition_checks_the_shapes_through_flatten() -> None:
    model = small_network(36)
    assert model.input_shape == (1, 8, 8) and model.output_shape((1, 8, 8)) == (5,)
    assert model.forward(np.zeros((3, 1, 8, 8))).shape == (3, 5)
    with raises(ValueError, "cannot compose", "layers[4] (Dense)", "(40,)", "(36,)", "layers[3] (Flatten)"):
        small_network(40)
    k1, k2 = jn.random.split(jn.random.key(6))
    with raises(ValueError, "cannot compose", "layers[1] (Conv2D)", "3 input channels", "(4, 6, 6)"):
        jn.pipe(jn.Conv2D.init(k1, 1, 4, 3, input_size=8), jn.Conv2D.init(k2, 3, 2, 3))
    with raises(ValueError, "cannot compose", "layers[1] (MaxPool2D)", "kernel (7, 7)", "(6, 6)"):
        jn.pipe(jn.Conv2D.init(k1, 1, 4, 3, input_size=8), jn.MaxPool2D(7))


def test_without_an_input_size_the_mismatch_is_found_before_any_kernel_runs() -> None:
    model = small_network(40, input_size=None)  # composes: the image size is not known yet
    assert model.input_shape is None
    call_and_check(lambda: model.forward(np.zeros((3, 1, 8, 8))), ValueError, "Dense at model.layers[4]", "(40,)", "(36,)")


def test_a_layer_with_an_input_size_refuses_other_sizes() -> None:
    layer = conv(input_size=(8, 6))
    assert layer.input_shape == (1, 8, 6)
    call_and_check(lambda: layer.forward(np.zeros((2, 1, 8, 8))), ValueError, "Conv2D", "(1, 8, 6)", "(1, 8, 8)")


def test_small_network_gradients_agree_with_central_differences() -> None:
    rng = np.random.default_rng(7)
    k1, k2 = jn.random.split(jn.random.key(7))
    model = jn.pipe(
        jn.Conv2D.init(k1, 2, 3, 3, padding=1, dtype=np.float64),
        jn.Tanh(),
        jn.MaxPool2D(2, padding=1),
        jn.AvgPool2D((2, 1)),
        jn.Flatten(),
        jn.Dense.init(k2, 3 * 1 * 4, 2, dtype=np.float64),  # (3, 5, 6) -> (3, 3, 4) -> (3, 1, 4)
    )
    jn.testing.check_grads(model, rng.normal(size=(2, 2, 5, 6)))


# --------------------------------------------------------------------------- PyTorch
@pytest.mark.parametrize("case", [CONV_CASES[i] for i in (0, 1, 2, 3, 7)], ids=[CONV_IDS[i] for i in (0, 1, 2, 3, 7)])
def test_conv2d_with_weights_moved_from_pytorch(case: tuple) -> None:
    torch = pytest.importorskip("torch")
    in_channels, out_channels, size, kernel_size, stride, padding, dilation = case
    torch.manual_seed(0)
    module = torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation)
    layer = jn.Conv2D(W=module.weight.detach().numpy(), b=module.bias.detach().numpy(), stride=stride, padding=padding, dilation=dilation)
    assert layer.dtype == np.float32
    X = np.random.default_rng(0).normal(size=(2, in_channels, *size)).astype(np.float32)
    X_torch = torch.tensor(X, requires_grad=True)
    Y_torch = module(X_torch)
    dY = np.random.default_rng(1).normal(size=Y_torch.shape).astype(np.float32)
    Y_torch.backward(torch.tensor(dY))
    # PyTorch's float32 convolution sums the same products in its own order: each side within
    # the float32 bound of the exact answer
    eY, edX, (eW, eb) = tolerances.reference_bounds(layer, X, dY, np.float32, np.float32)
    tolerances.assert_within(layer.forward(X), Y_torch.detach().numpy(), eY, "forward")
    tolerances.assert_within(layer.grad_input(X, dY), X_torch.grad.numpy(), edX, "grad_input")
    grads = layer.grad_params(X, dY)
    tolerances.assert_within(grads.W, module.weight.grad.numpy(), eW, "dW")
    tolerances.assert_within(grads.b, module.bias.grad.numpy(), eb, "db")


@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
@pytest.mark.parametrize("cls, function", [(jn.MaxPool2D, "max_pool2d"), (jn.AvgPool2D, "avg_pool2d")], ids=["MaxPool2D", "AvgPool2D"])
def test_pooling_agrees_with_pytorch(cls: type, function: str, case: tuple) -> None:
    torch = pytest.importorskip("torch")
    channels, size, kernel_size, stride, padding = case
    layer = cls(kernel_size, stride, padding)
    rng = np.random.default_rng(3)
    # rounded values: ties in the windows, where the first maximum must get the gradient
    X = np.round(rng.normal(size=(2, channels, *size)), 0).astype(np.float64)
    X_torch = torch.tensor(X, requires_grad=True)
    Y_torch = getattr(torch.nn.functional, function)(X_torch, kernel_size, stride, padding)
    dY = rng.normal(size=Y_torch.shape)
    Y_torch.backward(torch.tensor(dY))
    # each side within the float64 bound of the exact answer (a maximum is exact; sums and
    # divisions round)
    eY, edX, _ = tolerances.reference_bounds(layer, X, dY, np.float64)
    tolerances.assert_within(layer.forward(X), Y_torch.detach().numpy(), eY, "forward")
    tolerances.assert_within(layer.grad_input(X, dY), X_torch.grad.numpy(), edX, "grad_input")


def test_small_network_with_weights_moved_from_pytorch() -> None:
    """Conv2D, ReLU, MaxPool2D, Flatten (C order, as torch.flatten) and Dense (W = weight.T)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    conv_module, linear = torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Linear(4 * 3 * 4, 5)
    model = jn.pipe(
        jn.Conv2D(W=conv_module.weight.detach().numpy(), b=conv_module.bias.detach().numpy(), padding=1),
        jn.ReLU(),
        jn.MaxPool2D(2, padding=1),
        jn.Flatten(),
        jn.Dense(W=linear.weight.detach().numpy().T, b=linear.bias.detach().numpy()),
    )
    X = np.random.default_rng(4).normal(size=(3, 2, 5, 6)).astype(np.float32)
    X_torch = torch.tensor(X, requires_grad=True)
    hidden = torch.nn.functional.max_pool2d(torch.relu(conv_module(X_torch)), 2, 2, 1)
    Y_torch = linear(torch.flatten(hidden, 1))
    Y_torch.sum().backward()
    Y, trace = jn.forward(model, X)
    grads, dX = jn.backward(model, trace, np.ones_like(Y))
    # both in float32, each within the bounds carried through the network (a ReLU or a window's
    # maximum that the forward bounds put within reach of changing may do so)
    Y_exact, eY, saved = tolerances.forward_bound(model, X, np.float32)
    bound = tolerances.backward_bound(model, saved, np.ones_like(Y_exact), np.float32)
    tolerances.assert_within(Y, Y_torch.detach().numpy(), 2 * eY, "forward")
    tolerances.assert_within(dX, X_torch.grad.numpy(), 2 * bound.edX, "dX")
    tolerances.assert_within(grads.layers[0].W, conv_module.weight.grad.numpy(), 2 * bound.egrads[0], "conv dW")
    tolerances.assert_within(grads.layers[4].W, linear.weight.grad.numpy().T, 2 * bound.egrads[2], "dense dW")


# --------------------------------------------------------------------------- in a model
def test_a_model_that_starts_with_reshape_converts_its_input_to_the_parameters_dtype() -> None:
    """Rows of pixels, reshaped into images at the model's input: data of another float dtype
    is converted once, at the boundary, to the parameters' dtype (float64 here)."""
    model = jn.pipe(jn.Reshape((1, 5, 5)), jn.Conv2D.init(jn.random.key(8), 1, 2, 3, dtype=np.float64), jn.Flatten())
    for X in (np.ones((2, 25), np.float32), np.ones((2, 25), np.float16)):
        Y = model.forward(X)
        assert Y.dtype == np.float64 and Y.shape == (2, 18)
        value, grads = jn.value_and_grad(model, jn.MeanSquaredError(), X, np.zeros((2, 18)))
        assert grads.layers[1].W.dtype == np.float64


def test_a_small_convolutional_network_learns() -> None:
    """Which half of an 8x8 image holds a bright 2x2 square: a few Adam steps learn it."""
    rng = np.random.default_rng(9)
    n = 64
    T = rng.integers(0, 2, size=n)
    X = 0.1 * rng.normal(size=(n, 1, 8, 8))
    for i in range(n):
        row, col = rng.integers(0, 7), rng.integers(0, 3) + 4 * T[i]
        X[i, 0, row : row + 2, col : col + 2] += 1.0
    k1, k2 = jn.random.split(jn.random.key(9))
    model = jn.pipe(
        jn.Conv2D.init(k1, 1, 4, 3, padding=1, input_size=8),
        jn.ReLU(),
        jn.MaxPool2D(2),
        jn.AvgPool2D(2),
        jn.Flatten(),
        jn.Dense.init(k2, 4 * 2 * 2, 2),
    )
    opt, loss = jn.optim.adam(0.05), jn.SoftmaxCrossEntropy()
    state = opt.init(model)
    first, _ = jn.value_and_grad(model, loss, X, T)
    for _ in range(60):
        value, grads = jn.value_and_grad(model, loss, X, T)
        model, state = opt.update(model, grads, state)
    assert value < 0.25 * first
    assert np.mean(np.argmax(model.forward(X), axis=1) == T) >= 0.95
