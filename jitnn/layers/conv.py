"""Convolution over NCHW (and NCL) batches, one example at a time, through columns and matrix products.

``Conv2D`` computes the cross-correlation PyTorch's ``Conv2d`` computes, with the same weight
layout ``W (out_channels, in_channels, kh, kw)``, so weights move between the two unchanged.

The kernels rewrite the convolution of each example as a matrix product (im2col). For an
example ``X[i] (C, H, W)``, the columns matrix has one row per weight position ``r = (c, a,
b)`` (``C kh kw`` rows, in the order of ``W.reshape(out, -1)``) and one column per output
position ``(y, x)`` (``Ho Wo`` columns, row-major)::

    columns_i[(c, a, b), (y, x)] = X[i, c, y sh + a dh - ph, x sw + b dw - pw]   (0 in the padding)

Then, with ``W_matrix = W.reshape(out, C kh kw)`` and ``dY_matrix_i = dY[i].reshape(out, Ho
Wo)`` (a view: the output gradient's own layout, no axes swapped),

- forward:     ``Y[i] = [W_matrix b] @ [columns_i; ones]`` (one GEMM per example, written
  straight into ``Y[i]``; the row of ones carries the bias);
- grad_params: ``[dW db] = sum_i dY_matrix_i @ [columns_i; ones].T`` (one GEMM per example;
  the last column is ``db``, the row sums of the ``dY_matrix_i``);
- grad_input:  ``dcolumns_i = W_matrix.T @ dY_matrix_i`` (one GEMM per example), then every
  entry of ``dcolumns_i`` is added back to the element of ``X[i]`` it was read from (col2im);
  entries read from the padding are dropped.

A kernel fills one columns buffer (``C kh kw + 1`` rows, ``Ho Wo`` columns) for every example in
turn, so no temporary grows with the batch and each product works in cache. Which part of the
image each row reads (its window) is the same for every example: a kernel finds the windows
once per call (:func:`_conv2d_windows`), since the integer divisions that find them cost more
than copying a short row (small images and sequences: the MNIST-1D CNN's step 2.65 -> 1.78 ms).

``Conv1D`` is the same layer on sequences ``(n, C, L)``, as PyTorch's ``Conv1d``: its kernels
are thin wrappers that view ``X (n, C, L)`` as ``(n, C, 1, L)`` and ``W (out, C, k)`` as
``(out, C, 1, k)`` and call ``Conv2D``'s kernels with the pairs ``(1, stride)``, ``(0,
padding)`` and ``(1, dilation)``; its shape rule is the same :func:`spatial_output_size`.

The helpers shared with the pooling layers also live here: the pair and integer fields of
the configuration and the spatial shape rule.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from jitnn import init as initializers
from jitnn import random, validate
from jitnn._blas import beside_bias, matmul_into
from jitnn._checks import check_float_dtype
from jitnn._jit import as_readonly, jit
from jitnn.protocol import Array, Kernels, Layer, Residuals, layer, param

__all__ = ["Conv1D", "Conv2D"]

Pair = tuple[int, int]


# --------------------------------------------------------------------------- kernels
@jit
def _conv2d_output_size(size, kernel, stride, padding, dilation):
    """Output length along one axis: (size + 2 padding - dilation (kernel - 1) - 1) // stride + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@jit
def _conv2d_valid_range(count, size, offset, stride):
    """(lo, hi): the positions j in [0, count) with 0 <= j stride + offset < size are lo <= j < hi."""
    lo = max(0, (stride - 1 - offset) // stride)
    hi = min(count, (size - offset + stride - 1) // stride)
    return lo, hi


@jit(inline="always")
def _conv2d_row_window(r, kernel, stride, padding, dilation, image_size, output_size):
    """(c, h_offset, w_offset, y_lo, y_hi, x_lo, x_hi): row (c, a, b) reads image[c, y sh + h_offset, x sw + w_offset], y_lo <= y < y_hi, x_lo <= x < x_hi."""
    kh, kw = kernel
    c, a, b = r // (kh * kw), r // kw % kh, r % kw
    h_offset, w_offset = a * dilation[0] - padding[0], b * dilation[1] - padding[1]
    y_lo, y_hi = _conv2d_valid_range(output_size[0], image_size[0], h_offset, stride[0])
    x_lo, x_hi = _conv2d_valid_range(output_size[1], image_size[1], w_offset, stride[1])
    return c, h_offset, w_offset, y_lo, y_hi, x_lo, x_hi


@jit(inline="always")
def _conv2d_windows(channels, kernel, stride, padding, dilation, image_size, output_size):
    """Every row's window, once per call (the same for every example; the integer divisions
    that find it cost more than copying a short row): ``windows[r] = (c, h_offset, w_offset,
    y_lo, y_hi, x_lo, x_hi)`` for the rows ``r = (c, a, b)`` of the columns, (C kh kw, 7) int64."""
    windows = np.empty((channels * kernel[0] * kernel[1], 7), np.int64)
    for r in range(windows.shape[0]):
        c, h_offset, w_offset, y_lo, y_hi, x_lo, x_hi = _conv2d_row_window(r, kernel, stride, padding, dilation, image_size, output_size)
        windows[r, 0], windows[r, 1], windows[r, 2], windows[r, 3] = c, h_offset, w_offset, y_lo
        windows[r, 4], windows[r, 5], windows[r, 6] = y_hi, x_lo, x_hi
    return windows


@jit(inline="always")
def _conv2d_example_columns(image, windows, stride, output_size, columns):
    """columns[(c, a, b), (y, x)] = image[c, y sh + a dh - ph, x sw + b dw - pw] (padding: as is);  image (C, H, W), columns (C kh kw, Ho Wo), windows from :func:`_conv2d_windows`."""
    C, H, W = image.shape
    Ho, Wo = output_size
    pixels, entries = image.reshape(C * H * W), columns.reshape(columns.size)
    for r in range(columns.shape[0]):
        c, h_offset, w_offset, y_lo, y_hi, x_lo, x_hi = windows[r, 0], windows[r, 1], windows[r, 2], windows[r, 3], windows[r, 4], windows[r, 5], windows[r, 6]
        for y in range(y_lo, y_hi):  # one output row: x_hi - x_lo entries, read stride[1] pixels apart
            row = entries[(r * Ho + y) * Wo + x_lo :]
            read = pixels[(c * H + y * stride[0] + h_offset) * W + x_lo * stride[1] + w_offset :]
            if stride[1] == 1:  # contiguous rows vectorize (3 to 5x faster)
                for x in range(x_hi - x_lo):
                    row[x] = read[x]
            else:
                for x in range(x_hi - x_lo):
                    row[x] = read[x * stride[1]]


@jit(inline="always")
def _conv2d_example_col2im(dcolumns, windows, stride, output_size, image_grad):
    """image_grad[c, y sh + a dh - ph, x sw + b dw - pw] += dcolumns[(c, a, b), (y, x)] (padding entries dropped);  dcolumns (C kh kw, Ho Wo), windows from :func:`_conv2d_windows`."""
    C, H, W = image_grad.shape
    Ho, Wo = output_size
    pixels, entries = image_grad.reshape(C * H * W), dcolumns.reshape(dcolumns.size)
    for r in range(dcolumns.shape[0]):
        c, h_offset, w_offset, y_lo, y_hi, x_lo, x_hi = windows[r, 0], windows[r, 1], windows[r, 2], windows[r, 3], windows[r, 4], windows[r, 5], windows[r, 6]
        for y in range(y_lo, y_hi):  # one output row: x_hi - x_lo entries, added stride[1] pixels apart
            row = entries[(r * Ho + y) * Wo + x_lo :]
            written = pixels[(c * H + y * stride[0] + h_offset) * W + x_lo * stride[1] + w_offset :]
            if stride[1] == 1:  # contiguous rows vectorize (3 to 5x faster)
                for x in range(x_hi - x_lo):
                    written[x] += row[x]
            else:
                for x in range(x_hi - x_lo):
                    written[x * stride[1]] += row[x]


@jit(inline="always")
def _conv2d_column_buffer(X, rows, count):
    """[zeros (rows, count); ones (1, count)], X's dtype: one example's columns (refilled per example; padding stays 0) over the bias's ones."""
    columns = np.zeros((rows + 1, count), X.dtype)
    columns[rows] = 1
    return columns


@jit(inline="always")
def _conv2d_weight_matrix(X, W, b):
    """[W_matrix b] (out, C kh kw + 1) in X's dtype: the weights beside the bias, for the product with [columns; ones]."""
    out = W.shape[0]
    return beside_bias(W.reshape((out, W.size // out)), b, X)


@jit
def _conv2d_forward(X, W, b, stride, padding, dilation):
    """Y[i] = [W_matrix b] @ [columns_i; ones] for each example;  X (n, C, H, W), W (out, C, kh, kw), b (out,) -> Y (n, out, Ho, Wo)."""
    n, out, kernel = X.shape[0], W.shape[0], (W.shape[2], W.shape[3])
    Ho = _conv2d_output_size(X.shape[2], kernel[0], stride[0], padding[0], dilation[0])
    Wo = _conv2d_output_size(X.shape[3], kernel[1], stride[1], padding[1], dilation[1])
    rows = W.size // out
    weights = _conv2d_weight_matrix(X, W, b)
    columns = _conv2d_column_buffer(X, rows, Ho * Wo)
    windows = _conv2d_windows(X.shape[1], kernel, stride, padding, dilation, (X.shape[2], X.shape[3]), (Ho, Wo))
    Y = np.empty((n, out, Ho * Wo), X.dtype)
    for i in range(n):
        _conv2d_example_columns(X[i], windows, stride, (Ho, Wo), columns[:rows])
        matmul_into(weights, columns, Y[i])
    return Y.reshape((n, out, Ho, Wo))


@jit
def _conv2d_grad_input(X, dY, W, b, stride, padding, dilation):
    """dX[i] = col2im(W_matrix.T @ dY_matrix_i), each entry added where it was read;  dY (n, out, Ho, Wo) -> dX (n, C, H, W)."""
    n, out, Ho, Wo = dY.shape
    W_matrix_T = W.reshape((out, W.size // out)).T
    gradient = dY.reshape((n, out, Ho * Wo))
    dcolumns = np.empty((W_matrix_T.shape[0], Ho * Wo), X.dtype)  # reused for every example
    dX = np.zeros(X.shape, X.dtype)
    windows = _conv2d_windows(X.shape[1], (W.shape[2], W.shape[3]), stride, padding, dilation, (X.shape[2], X.shape[3]), (Ho, Wo))
    for i in range(n):
        matmul_into(W_matrix_T, gradient[i], dcolumns)
        _conv2d_example_col2im(dcolumns, windows, stride, (Ho, Wo), dX[i])
    return dX


@jit
def _conv2d_grad_params(X, dY, W, b, stride, padding, dilation):
    """[dW db] = sum_i dY_matrix_i @ [columns_i; ones].T;  dY (n, out, Ho, Wo) -> dW (out, C, kh, kw), db (out,)."""
    n, out, Ho, Wo = dY.shape
    rows = W.size // out
    gradient = dY.reshape((n, out, Ho * Wo))
    columns = _conv2d_column_buffer(X, rows, Ho * Wo)
    sums = np.zeros((out, rows + 1), X.dtype)
    windows = _conv2d_windows(X.shape[1], (W.shape[2], W.shape[3]), stride, padding, dilation, (X.shape[2], X.shape[3]), (Ho, Wo))
    for i in range(n):
        _conv2d_example_columns(X[i], windows, stride, (Ho, Wo), columns[:rows])
        matmul_into(gradient[i], columns.T, sums, True)
    return sums[:, :rows].copy().reshape(W.shape), sums[:, rows].copy()


@jit
def _conv2d_forward_residuals(X, W, b, stride, padding, dilation):
    """Y as :func:`_conv2d_forward`, and R = (columns,): every example's ``[columns_i; ones]``
    (n, C kh kw + 1, Ho Wo), which grad_params multiplies instead of building them again."""
    n, out, kernel = X.shape[0], W.shape[0], (W.shape[2], W.shape[3])
    Ho = _conv2d_output_size(X.shape[2], kernel[0], stride[0], padding[0], dilation[0])
    Wo = _conv2d_output_size(X.shape[3], kernel[1], stride[1], padding[1], dilation[1])
    rows = W.size // out
    weights = _conv2d_weight_matrix(X, W, b)
    columns = np.zeros((n, rows + 1, Ho * Wo), X.dtype)
    Y = np.empty((n, out, Ho * Wo), X.dtype)
    windows = _conv2d_windows(X.shape[1], kernel, stride, padding, dilation, (X.shape[2], X.shape[3]), (Ho, Wo))
    for i in range(n):
        columns[i, rows] = 1
        _conv2d_example_columns(X[i], windows, stride, (Ho, Wo), columns[i, :rows])
        matmul_into(weights, columns[i], Y[i])
    return Y.reshape((n, out, Ho, Wo)), (as_readonly(columns),)


@jit
def _conv2d_grad_input_residuals(X, dY, R, W, b, stride, padding, dilation):
    """dX as :func:`_conv2d_grad_input` (it needs the weights, not the columns)."""
    return _conv2d_grad_input(X, dY, W, b, stride, padding, dilation)


@jit
def _conv2d_grad_params_residuals(X, dY, R, W, b, stride, padding, dilation):
    """[dW db] = sum_i dY_matrix_i @ [columns_i; ones].T, the columns from R;  -> dW (out, C, kh, kw), db (out,)."""
    n, out, Ho, Wo = dY.shape
    rows = W.size // out
    columns = R[0]
    gradient = dY.reshape((n, out, Ho * Wo))
    sums = np.zeros((out, rows + 1), X.dtype)
    for i in range(n):
        matmul_into(gradient[i], columns[i].T, sums, True)
    return sums[:, :rows].copy().reshape(W.shape), sums[:, rows].copy()


# One-dimensional convolution: Conv2D's kernels on a height of 1. The pairs are built from
# np.int64 values (a tuple holding the constant 1 would be typed with a literal and compile
# the 2-D kernels once more), so the 2-D kernels run with the signatures Conv2D gives them.
@jit
def _conv1d_forward(X, W, b, stride, padding, dilation):
    """Y = Conv2D's forward of X (n, C, 1, L) with W (out, C, 1, k);  -> Y (n, out, Lo)."""
    n, C, L = X.shape
    out, k = W.shape[0], W.shape[2]
    Y = _conv2d_forward(
        X.reshape((n, C, 1, L)), W.reshape((out, C, 1, k)), b, (np.int64(1), np.int64(stride)), (np.int64(0), np.int64(padding)),
        (np.int64(1), np.int64(dilation)),
    )
    return Y.reshape((n, out, Y.shape[3]))


@jit
def _conv1d_grad_input(X, dY, W, b, stride, padding, dilation):
    """dX = Conv2D's grad_input on a height of 1;  dY (n, out, Lo) -> dX (n, C, L)."""
    n, C, L = X.shape
    out, k = W.shape[0], W.shape[2]
    dX = _conv2d_grad_input(
        X.reshape((n, C, 1, L)), dY.reshape((n, out, 1, dY.shape[2])), W.reshape((out, C, 1, k)), b,
        (np.int64(1), np.int64(stride)), (np.int64(0), np.int64(padding)), (np.int64(1), np.int64(dilation)),
    )
    return dX.reshape((n, C, L))


@jit
def _conv1d_grad_params(X, dY, W, b, stride, padding, dilation):
    """[dW db] = Conv2D's grad_params on a height of 1;  -> dW (out, C, k), db (out,)."""
    n, C, L = X.shape
    out, k = W.shape[0], W.shape[2]
    dW, db = _conv2d_grad_params(
        X.reshape((n, C, 1, L)), dY.reshape((n, out, 1, dY.shape[2])), W.reshape((out, C, 1, k)), b,
        (np.int64(1), np.int64(stride)), (np.int64(0), np.int64(padding)), (np.int64(1), np.int64(dilation)),
    )
    return dW.reshape((out, C, k)), db


@jit
def _conv1d_forward_residuals(X, W, b, stride, padding, dilation):
    """Y as :func:`_conv1d_forward`, and Conv2D's residuals R = (columns,) (n, C k + 1, Lo)."""
    n, C, L = X.shape
    out, k = W.shape[0], W.shape[2]
    Y, R = _conv2d_forward_residuals(
        X.reshape((n, C, 1, L)), W.reshape((out, C, 1, k)), b, (np.int64(1), np.int64(stride)), (np.int64(0), np.int64(padding)),
        (np.int64(1), np.int64(dilation)),
    )
    return Y.reshape((n, out, Y.shape[3])), R


@jit
def _conv1d_grad_input_residuals(X, dY, R, W, b, stride, padding, dilation):
    """dX as :func:`_conv1d_grad_input`, through Conv2D's residual kernel."""
    n, C, L = X.shape
    out, k = W.shape[0], W.shape[2]
    dX = _conv2d_grad_input_residuals(
        X.reshape((n, C, 1, L)), dY.reshape((n, out, 1, dY.shape[2])), R, W.reshape((out, C, 1, k)), b,
        (np.int64(1), np.int64(stride)), (np.int64(0), np.int64(padding)), (np.int64(1), np.int64(dilation)),
    )
    return dX.reshape((n, C, L))


@jit
def _conv1d_grad_params_residuals(X, dY, R, W, b, stride, padding, dilation):
    """[dW db] from the columns in R, through Conv2D's residual kernel;  -> dW (out, C, k), db (out,)."""
    n, C, L = X.shape
    out, k = W.shape[0], W.shape[2]
    dW, db = _conv2d_grad_params_residuals(
        X.reshape((n, C, 1, L)), dY.reshape((n, out, 1, dY.shape[2])), R, W.reshape((out, C, 1, k)), b,
        (np.int64(1), np.int64(stride)), (np.int64(0), np.int64(padding)), (np.int64(1), np.int64(dilation)),
    )
    return dW.reshape((out, C, k)), db


# --------------------------------------------------------------------------- pair fields
def int_pair(value: Any) -> Any:
    """``(v, v)`` for an integer ``v``, a tuple of two Python ints for a pair of integers.

    Anything else is returned unchanged, for the field's validator to report with the
    layer's name.
    """
    if validate.is_integer(value):
        return (int(value), int(value))
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(validate.is_integer(v) for v in value):
        return (int(value[0]), int(value[1]))
    return value


def check_pair(value: Any, minimum: int, who: str, name: str) -> Pair:
    """Raise ``TypeError`` unless ``value`` is a pair of ints, ``ValueError`` if one is below
    ``minimum``; the message names ``who`` (the layer) and the field."""
    if not (isinstance(value, tuple) and len(value) == 2 and all(type(v) is int for v in value)):
        raise TypeError(f"{who}: {name} must be an integer or a pair of integers, got {value!r}")
    if min(value) < minimum:
        wanted = {0: "non-negative", 1: "positive"}.get(minimum, f"at least {minimum}")
        raise ValueError(f"{who}: {name} must be {wanted}, got {value}")
    return value


def pair_field(default: Any = attrs.NOTHING, *, minimum: int, optional: bool = False) -> Any:
    """A configuration field holding a pair of Python ints (an int ``v`` is stored as ``(v, v)``),
    each at least ``minimum``; ``optional`` also accepts ``None``."""

    def validate(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not (optional and value is None):
            check_pair(value, minimum, type(instance).__name__, attribute.name)

    return attrs.field(default=default, converter=int_pair, validator=validate)


def plain_int(value: Any) -> Any:
    """A Python int for an integer (NumPy's included); anything else unchanged, for the
    field's validator to report with the layer's name."""
    return int(value) if validate.is_integer(value) else value


def int_field(default: Any = attrs.NOTHING, *, minimum: int, optional: bool = False) -> Any:
    """A configuration field holding a Python int, at least ``minimum``; ``optional`` also
    accepts ``None``. A refused value raises ``ValueError`` (out of range) or ``TypeError``
    (not an integer: a float, a bool, a pair), naming the layer and the field."""

    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        who = type(instance).__name__
        if optional:
            validate.optional(value, who, attribute.name, check=validate.integer, low=minimum, wrong_type=TypeError)
        else:
            validate.integer(value, who, attribute.name, low=minimum, wrong_type=TypeError)

    return attrs.field(default=default, converter=plain_int, validator=check)


# --------------------------------------------------------------------------- the shape rule
def spatial_output_size(
    input_shape: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...] | None = None
) -> tuple[int, ...]:
    """``(Ho, Wo)`` for a per-example input ``(C, H, W)`` and pairs of configuration, or
    ``(Lo,)`` for a sequence ``(C, L)`` and one-element tuples (``kernel = (k,)``...); the
    dilation defaults to 1. ``ValueError`` unless the input has one axis more than the
    configuration, with positive sizes, and the (dilated) kernel fits the padded input."""
    input_shape = tuple(input_shape)
    axes = len(kernel)
    dilation = (1,) * axes if dilation is None else tuple(dilation)
    thing = "image" if axes == 2 else "sequence"
    if len(input_shape) != axes + 1:
        layout = "(channels, height, width), a batch (n, C, H, W)" if axes == 2 else "(channels, length), a batch (n, C, L)"
        raise ValueError(f"expects per-example input of shape {layout}, got per-example shape {input_shape}")
    if min(input_shape) < 1:
        sizes = "channels, height and width" if axes == 2 else "channels and length"
        raise ValueError(f"expects positive {sizes}, got per-example shape {input_shape}")
    show = (lambda v: tuple(v)) if axes == 2 else (lambda v: v[0])
    extent = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    padded = tuple(s + 2 * p for s, p in zip(input_shape[1:], padding))
    if any(e > p for e, p in zip(extent, padded)):
        dilated = any(d != 1 for d in dilation)
        what = f"dilated kernel {show(extent)} (kernel {show(kernel)}, dilation {show(dilation)})" if dilated else f"kernel {show(kernel)}"
        size = f"image {input_shape[1:]}" if axes == 2 else f"length {input_shape[1]}"
        raise ValueError(f"the {what} is larger than the padded {thing} {show(padded)} ({size}, padding {show(padding)})")
    return tuple((s - e) // t + 1 for s, e, t in zip(padded, extent, stride))


def pair_text(value: Pair) -> str:
    """A pair as a label shows it: ``"3"`` for ``(3, 3)``, ``"(2, 1)"`` otherwise."""
    return str(value[0]) if value[0] == value[1] else f"({value[0]}, {value[1]})"


# --------------------------------------------------------------------------- the layer
@layer
class Conv2D(Layer):
    """Two-dimensional convolution (cross-correlation, as in PyTorch) of NCHW batches.

    ``Y[i, o, y, x] = b[o] + sum_(c, a, b) W[o, c, a, b] X[i, c, y sh + a dh - ph, x sw + b dw - pw]``,
    with zeros outside the image (the padding).

    Parameters
    ----------
    W : array (out_channels, in_channels, kh, kw)
        PyTorch's layout: ``Conv2D(W=conv.weight.detach().numpy(), b=conv.bias.detach().numpy(), ...)``.
    b : array (out_channels,)
    stride, padding, dilation : int or pair of ints
        Stored as pairs ``(along height, along width)``; stride and dilation positive, padding
        non-negative.
    input_size : pair of ints or None
        Optionally, the image size ``(H, W)`` this layer is used on. When given, the layer
        states its whole per-example input shape ``(in_channels, H, W)``, so that a model that
        starts with it is checked when it is composed (for example a ``Dense`` width after
        ``Flatten``); when ``None``, any size the kernel fits is accepted.

    Input ``(n, in_channels, H, W)``, output ``(n, out_channels, Ho, Wo)`` with
    ``Ho = (H + 2 ph - dh (kh - 1) - 1) // sh + 1`` and the same along the width.
    """

    W: Array = param()
    b: Array = param()
    stride: Pair = pair_field(1, minimum=1)
    padding: Pair = pair_field(0, minimum=0)
    dilation: Pair = pair_field(1, minimum=1)
    input_size: Pair | None = pair_field(None, minimum=1, optional=True)

    kernels = Kernels(
        _conv2d_forward, _conv2d_grad_input, _conv2d_grad_params,
        residuals=Residuals(_conv2d_forward_residuals, _conv2d_grad_input_residuals, _conv2d_grad_params_residuals),
    )

    @classmethod
    def init(
        cls,
        key: random.Key,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Pair,
        stride: int | Pair = 1,
        padding: int | Pair = 0,
        dilation: int | Pair = 1,
        *,
        input_size: Pair | None = None,
        weight_init: initializers.Initializer = initializers.he_uniform,
        bias_init: initializers.Initializer = initializers.zeros,
        dtype: Any = np.float32,
    ) -> Conv2D:
        """A new layer with ``W (out_channels, in_channels, kh, kw)`` drawn by ``weight_init`` and
        ``b (out_channels,)`` by ``bias_init`` from ``key``.

        The default is He (Kaiming) uniform weights, ``U(-a, a)`` with ``a = sqrt(6 / fan_in)``
        and ``fan_in = in_channels kh kw``, suited to ReLU networks, and a zero bias, as for
        ``Dense``. (PyTorch's own default draws both from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.)
        """
        who = "Conv2D.init"
        in_channels, out_channels = validate.positive_int(in_channels, who, "in_channels"), validate.positive_int(out_channels, who, "out_channels")
        kh, kw = check_pair(int_pair(kernel_size), 1, who, "kernel_size")
        dtype = check_float_dtype(dtype, who)
        weight_key, bias_key = random.split(key)
        return cls(
            W=weight_init(weight_key, (out_channels, in_channels, kh, kw), dtype=dtype),
            b=bias_init(bias_key, (out_channels,), dtype=dtype),
            stride=stride,
            padding=padding,
            dilation=dilation,
            input_size=input_size,
        )

    @property
    def in_channels(self) -> int:
        return self.W.shape[1]

    @property
    def out_channels(self) -> int:
        return self.W.shape[0]

    @property
    def kernel_size(self) -> Pair:
        return (self.W.shape[2], self.W.shape[3])

    def check_params(self) -> None:
        if self.W.ndim != 4 or min(self.W.shape) < 1 or self.b.shape != (self.W.shape[0],):
            raise ValueError(
                f"Conv2D: W must have shape (out_channels, in_channels, kh, kw) with positive sizes and b "
                f"(out_channels,), got W {self.W.shape} and b {self.b.shape}"
            )

    def config(self) -> tuple[Any, ...]:
        return (self.stride, self.padding, self.dilation)

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return None if self.input_size is None else (self.in_channels, *self.input_size)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        input_shape = tuple(input_shape)
        if len(input_shape) == 3 and input_shape[0] != self.in_channels:
            raise ValueError(f"expects {self.in_channels} input channels, got per-example shape {input_shape} (channels first)")
        size = spatial_output_size(input_shape, self.kernel_size, self.stride, self.padding, self.dilation)
        if self.input_size is not None and input_shape[1:] != self.input_size:
            raise ValueError(f"expects per-example input shape {self.input_shape} (its input_size), got {input_shape}")
        return (self.out_channels, *size)

    def label(self) -> str:
        """The class name with the short configuration that :func:`jitnn.summary` shows."""
        kh, kw = self.kernel_size
        dilation = f", dilation {pair_text(self.dilation)}" if self.dilation != (1, 1) else ""
        return f"{type(self).__name__}({self.in_channels} -> {self.out_channels}, {kh}x{kw}, stride {pair_text(self.stride)}, padding {pair_text(self.padding)}{dilation})"


@layer
class Conv1D(Layer):
    """One-dimensional convolution (cross-correlation, as PyTorch's ``Conv1d``) of NCL batches.

    ``Y[i, o, t] = b[o] + sum_(c, a) W[o, c, a] X[i, c, t s + a d - p]``, with zeros outside
    the sequence (the padding).

    Parameters
    ----------
    W : array (out_channels, in_channels, k)
        PyTorch's layout: ``Conv1D(W=conv.weight.detach().numpy(), b=conv.bias.detach().numpy(), ...)``.
    b : array (out_channels,)
    stride, padding, dilation : int
        Stride and dilation positive, padding non-negative.
    input_length : int or None
        Optionally, the sequence length ``L`` this layer is used on. When given, the layer
        states its whole per-example input shape ``(in_channels, L)``, so that a model that
        starts with it is checked when it is composed (for example a ``Dense`` width after
        ``Flatten``); when ``None``, any length the kernel fits is accepted.

    Input ``(n, in_channels, L)``, output ``(n, out_channels, Lo)`` with
    ``Lo = (L + 2 p - d (k - 1) - 1) // s + 1``. The kernels are ``Conv2D``'s, on the input
    viewed as ``(n, C, 1, L)``.
    """

    W: Array = param()
    b: Array = param()
    stride: int = int_field(1, minimum=1)
    padding: int = int_field(0, minimum=0)
    dilation: int = int_field(1, minimum=1)
    input_length: int | None = int_field(None, minimum=1, optional=True)

    kernels = Kernels(
        _conv1d_forward, _conv1d_grad_input, _conv1d_grad_params,
        residuals=Residuals(_conv1d_forward_residuals, _conv1d_grad_input_residuals, _conv1d_grad_params_residuals),
    )

    @classmethod
    def init(
        cls,
        key: random.Key,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        *,
        input_length: int | None = None,
        weight_init: initializers.Initializer = initializers.he_uniform,
        bias_init: initializers.Initializer = initializers.zeros,
        dtype: Any = np.float32,
    ) -> Conv1D:
        """A new layer with ``W (out_channels, in_channels, k)`` drawn by ``weight_init`` and
        ``b (out_channels,)`` by ``bias_init`` from ``key``.

        The default is He (Kaiming) uniform weights, ``U(-a, a)`` with ``a = sqrt(6 / fan_in)``
        and ``fan_in = in_channels k``, suited to ReLU networks, and a zero bias, as for
        ``Conv2D``. (PyTorch's own default draws both from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.)
        """
        who = "Conv1D.init"
        in_channels = validate.positive_int(in_channels, who, "in_channels")
        out_channels = validate.positive_int(out_channels, who, "out_channels")
        k = validate.positive_int(kernel_size, who, "kernel_size", wrong_type=TypeError)
        dtype = check_float_dtype(dtype, who)
        weight_key, bias_key = random.split(key)
        return cls(
            W=weight_init(weight_key, (out_channels, in_channels, k), dtype=dtype),
            b=bias_init(bias_key, (out_channels,), dtype=dtype),
            stride=stride,
            padding=padding,
            dilation=dilation,
            input_length=input_length,
        )

    @property
    def in_channels(self) -> int:
        return self.W.shape[1]

    @property
    def out_channels(self) -> int:
        return self.W.shape[0]

    @property
    def kernel_size(self) -> int:
        return self.W.shape[2]

    def check_params(self) -> None:
        if self.W.ndim != 3 or min(self.W.shape) < 1 or self.b.shape != (self.W.shape[0],):
            raise ValueError(
                f"Conv1D: W must have shape (out_channels, in_channels, k) with positive sizes and b "
                f"(out_channels,), got W {self.W.shape} and b {self.b.shape}"
            )

    def config(self) -> tuple[Any, ...]:
        return (self.stride, self.padding, self.dilation)

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return None if self.input_length is None else (self.in_channels, self.input_length)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        input_shape = tuple(input_shape)
        if len(input_shape) == 2 and input_shape[0] != self.in_channels:
            raise ValueError(f"expects {self.in_channels} input channels, got per-example shape {input_shape} (channels first)")
        (length,) = spatial_output_size(input_shape, (self.kernel_size,), (self.stride,), (self.padding,), (self.dilation,))
        if self.input_length is not None and input_shape[1] != self.input_length:
            raise ValueError(f"expects per-example input shape {self.input_shape} (its input_length), got {input_shape}")
        return (self.out_channels, length)

    def label(self) -> str:
        """The class name with the short configuration that :func:`jitnn.summary` shows."""
        dilation = f", dilation {self.dilation}" if self.dilation != 1 else ""
        return (
            f"{type(self).__name__}({self.in_channels} -> {self.out_channels}, kernel {self.kernel_size}, "
            f"stride {self.stride}, padding {self.padding}{dilation})"
        )
