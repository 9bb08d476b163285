"""Max and average pooling over NCHW and NCL batches, as PyTorch's ``max_pool2d``,
``avg_pool2d``, ``max_pool1d`` and ``avg_pool1d`` with their defaults, and global average
pooling.

Each channel of each example (a plane) is pooled on its own. The window at output position
``(y, x)`` covers rows ``y sh - ph .. y sh - ph + kh - 1`` and columns likewise; the padding is
``-inf`` for max pooling and zeros for average pooling. Because the padding is at most half
the kernel (as PyTorch requires), every window holds at least one element of the image and
lies inside the padded image, so:

- max pooling never outputs ``-inf`` from the padding alone, and its gradient goes to the
  first maximal element of the window in row-major order (PyTorch's rule; a NaN in the window
  is the maximum, as in PyTorch);
- average pooling always divides by ``kh kw``: padded zeros count (PyTorch's default
  ``count_include_pad=True``).

``MaxPool1D`` and ``AvgPool1D`` pool sequences ``(n, C, L)`` the same way: their kernels view
the input as ``(n, C, 1, L)`` and call the two-dimensional kernels with windows ``(1, k)``.
``GlobalAvgPool`` takes the mean over every axis after the channels.
"""

from __future__ import annotations

import attrs
import numpy as np

from jitnn._jit import as_readonly, jit
from jitnn.layers.conv import Pair, int_field, pair_field, pair_text, spatial_output_size
from jitnn.protocol import Kernels, Layer, Residuals, layer

__all__ = ["MaxPool2D", "AvgPool2D", "MaxPool1D", "AvgPool1D", "GlobalAvgPool"]


# --------------------------------------------------------------------------- kernels
@jit
def _pool2d_output_size(size, kernel, stride, padding):
    """Output length along one axis: (size + 2 padding - kernel) // stride + 1."""
    return (size + 2 * padding - kernel) // stride + 1


@jit(inline="always")
def _pool2d_window(start, kernel, size):
    """(lo, hi): the part of the window start .. start + kernel - 1 inside 0 .. size - 1."""
    return max(start, 0), min(start + kernel, size)


@jit(inline="always")
def _max_pool2d_window_max(planes, p, h_lo, h_hi, w_lo, w_hi):
    """(value, h W + w) of the first maximum of planes[p, h_lo:h_hi, w_lo:w_hi]; a NaN wins."""
    width = planes.shape[2]
    if h_hi - h_lo == 2 and w_hi - w_lo == 2:  # the common 2x2 window, unrolled (2x faster)
        best, where = planes[p, h_lo, w_lo], h_lo * width + w_lo
        best, where = _max_pool2d_pick(best, where, planes[p, h_lo, w_lo + 1], h_lo * width + w_lo + 1)
        best, where = _max_pool2d_pick(best, where, planes[p, h_lo + 1, w_lo], (h_lo + 1) * width + w_lo)
        return _max_pool2d_pick(best, where, planes[p, h_lo + 1, w_lo + 1], (h_lo + 1) * width + w_lo + 1)
    best, where = planes[p, h_lo, w_lo], h_lo * width + w_lo
    for h in range(h_lo, h_hi):
        for w in range(w_lo, w_hi):
            best, where = _max_pool2d_pick(best, where, planes[p, h, w], h * width + w)
    return best, where


@jit(inline="always")
def _max_pool2d_pick(best, where, value, index):
    """(value, index) if value beats best (is larger, or the first NaN), else (best, where)."""
    better = (value > best) | ((value != value) & (best == best))
    return (value if better else best), (index if better else where)


@jit(inline="always")
def _max_pool2d_into(X, kernel, stride, padding, Y, where, keep):
    """Y[p, y, x] = max of plane p of X over the window at (y sh - ph, x sw - pw); with
    ``keep``, where[p, y, x] = that maximum's index h W + w in its plane;  Y, where (n C, Ho, Wo)."""
    n, C, H, W = X.shape
    planes = X.reshape((n * C, H, W))
    for p in range(n * C):
        for y in range(Y.shape[1]):
            h_lo, h_hi = _pool2d_window(y * stride[0] - padding[0], kernel[0], H)
            for x in range(Y.shape[2]):
                w_lo, w_hi = _pool2d_window(x * stride[1] - padding[1], kernel[1], W)
                best, index = _max_pool2d_window_max(planes, p, h_lo, h_hi, w_lo, w_hi)
                Y[p, y, x] = best
                if keep:
                    where[p, y, x] = index


@jit
def _max_pool2d_forward(X, kernel, stride, padding):
    """Y[i, c, y, x] = max of X[i, c] over the window at (y sh - ph, x sw - pw);  X (n, C, H, W) -> Y (n, C, Ho, Wo)."""
    n, C, H, W = X.shape
    Ho = _pool2d_output_size(H, kernel[0], stride[0], padding[0])
    Wo = _pool2d_output_size(W, kernel[1], stride[1], padding[1])
    Y = np.empty((n * C, Ho, Wo), X.dtype)
    _max_pool2d_into(X, kernel, stride, padding, Y, np.empty((1, 1, 1), np.int64), False)
    return Y.reshape((n, C, Ho, Wo))


@jit
def _max_pool2d_forward_residuals(X, kernel, stride, padding):
    """Y as :func:`_max_pool2d_forward`, and R = (where,): each maximum's index h W + w in its
    plane;  X (n, C, H, W) -> (Y (n, C, Ho, Wo), ((n C, Ho, Wo) int64,))."""
    n, C, H, W = X.shape
    Ho = _pool2d_output_size(H, kernel[0], stride[0], padding[0])
    Wo = _pool2d_output_size(W, kernel[1], stride[1], padding[1])
    Y = np.empty((n * C, Ho, Wo), X.dtype)
    where = np.empty((n * C, Ho, Wo), np.int64)
    _max_pool2d_into(X, kernel, stride, padding, Y, where, True)
    return Y.reshape((n, C, Ho, Wo)), (as_readonly(where),)


@jit
def _max_pool2d_grad_input(X, dY, kernel, stride, padding):
    """dX[i, c, first maximum of the window] += dY[i, c, y, x], each window searched (a plain
    call: no forward to take the places from);  dY (n, C, Ho, Wo) -> dX (n, C, H, W)."""
    n, C, H, W = X.shape
    Ho, Wo = dY.shape[2], dY.shape[3]
    planes = X.reshape((n * C, H, W))
    gradient = dY.reshape((n * C, Ho, Wo))
    dX = np.zeros((n * C, H * W), X.dtype)
    for p in range(n * C):
        for y in range(Ho):
            h_lo, h_hi = _pool2d_window(y * stride[0] - padding[0], kernel[0], H)
            for x in range(Wo):
                w_lo, w_hi = _pool2d_window(x * stride[1] - padding[1], kernel[1], W)
                dX[p, _max_pool2d_window_max(planes, p, h_lo, h_hi, w_lo, w_hi)[1]] += gradient[p, y, x]
    return dX.reshape(X.shape)


@jit
def _max_pool2d_grad_input_residuals(X, dY, R, kernel, stride, padding):
    """dX[i, c, first maximum of the window] += dY[i, c, y, x], the maxima's places from R;  dY (n, C, Ho, Wo) -> dX (n, C, H, W)."""
    n, C, H, W = X.shape
    where = R[0]
    gradient = dY.reshape(where.shape)
    dX = np.zeros((n * C, H * W), X.dtype)
    for p in range(n * C):
        for y in range(where.shape[1]):
            for x in range(where.shape[2]):
                dX[p, where[p, y, x]] += gradient[p, y, x]
    return dX.reshape(X.shape)


@jit
def _avg_pool2d_forward(X, kernel, stride, padding):
    """Y[i, c, y, x] = sum of X[i, c] over the window / (kh kw), padded zeros counted;  X (n, C, H, W) -> Y (n, C, Ho, Wo)."""
    n, C, H, W = X.shape
    Ho = _pool2d_output_size(H, kernel[0], stride[0], padding[0])
    Wo = _pool2d_output_size(W, kernel[1], stride[1], padding[1])
    planes = X.reshape((n * C, H, W))
    Y = np.empty((n * C, Ho, Wo), X.dtype)
    for p in range(n * C):
        for y in range(Ho):
            h_lo, h_hi = _pool2d_window(y * stride[0] - padding[0], kernel[0], H)
            for x in range(Wo):
                w_lo, w_hi = _pool2d_window(x * stride[1] - padding[1], kernel[1], W)
                total = 0.0
                for h in range(h_lo, h_hi):
                    for w in range(w_lo, w_hi):
                        total += planes[p, h, w]
                Y[p, y, x] = total / (kernel[0] * kernel[1])
    return Y.reshape((n, C, Ho, Wo))


@jit
def _avg_pool2d_grad_input(X, dY, kernel, stride, padding):
    """dX[i, c, window at (y, x)] += dY[i, c, y, x] / (kh kw);  dY (n, C, Ho, Wo) -> dX (n, C, H, W)."""
    n, C, H, W = X.shape
    Ho, Wo = dY.shape[2], dY.shape[3]
    gradient = dY.reshape((n * C, Ho, Wo))
    dX = np.zeros((n * C, H, W), X.dtype)
    for p in range(n * C):
        for y in range(Ho):
            h_lo, h_hi = _pool2d_window(y * stride[0] - padding[0], kernel[0], H)
            for x in range(Wo):
                w_lo, w_hi = _pool2d_window(x * stride[1] - padding[1], kernel[1], W)
                share = gradient[p, y, x] / (kernel[0] * kernel[1])
                for h in range(h_lo, h_hi):
                    for w in range(w_lo, w_hi):
                        dX[p, h, w] += share
    return dX.reshape(X.shape)


# One-dimensional pooling: the 2-D kernels on a height of 1, windows (1, k). The pairs are
# built from np.int64 values, so that the 2-D kernels keep the signatures the 2-D layers give them.
@jit
def _max_pool1d_forward(X, kernel, stride, padding):
    """Y[i, c, t] = max of X[i, c] over the window at t s - p;  X (n, C, L) -> Y (n, C, Lo)."""
    n, C, L = X.shape
    Y = _max_pool2d_forward(X.reshape((n, C, 1, L)), (np.int64(1), np.int64(kernel)), (np.int64(1), np.int64(stride)), (np.int64(0), np.int64(padding)))
    return Y.reshape((n, C, Y.shape[3]))


@jit
def _max_pool1d_forward_residuals(X, kernel, stride, padding):
    """Y as :func:`_max_pool1d_forward`, and R = (where,): each maximum's place in its sequence ((n C, 1, Lo) int64)."""
    n, C, L = X.shape
    Y, R = _max_pool2d_forward_residuals(
        X.reshape((n, C, 1, L)), (np.int64(1), np.int64(kernel)), (np.int64(1), np.int64(stride)), (np.int64(0), np.int64(padding))
    )
    return Y.reshape((n, C, Y.shape[3])), R


@jit
def _max_pool1d_grad_input(X, dY, kernel, stride, padding):
    """dX[i, c, first maximum of the window] += dY[i, c, t], each window searched;  -> dX (n, C, L)."""
    n, C, L = X.shape
    dX = _max_pool2d_grad_input(
        X.reshape((n, C, 1, L)), dY.reshape((n, C, 1, dY.shape[2])), (np.int64(1), np.int64(kernel)), (np.int64(1), np.int64(stride)),
        (np.int64(0), np.int64(padding)),
    )
    return dX.reshape((n, C, L))


@jit
def _max_pool1d_grad_input_residuals(X, dY, R, kernel, stride, padding):
    """dX[i, c, first maximum of the window] += dY[i, c, t], the places from R;  -> dX (n, C, L)."""
    n, C, L = X.shape
    dX = _max_pool2d_grad_input_residuals(
        X.reshape((n, C, 1, L)), dY.reshape((n, C, 1, dY.shape[2])), R, (np.int64(1), np.int64(kernel)), (np.int64(1), np.int64(stride)),
        (np.int64(0), np.int64(padding)),
    )
    return dX.reshape((n, C, L))


@jit
def _avg_pool1d_forward(X, kernel, stride, padding):
    """Y[i, c, t] = sum of X[i, c] over the window / k, padded zeros counted;  X (n, C, L) -> Y (n, C, Lo)."""
    n, C, L = X.shape
    Y = _avg_pool2d_forward(X.reshape((n, C, 1, L)), (np.int64(1), np.int64(kernel)), (np.int64(1), np.int64(stride)), (np.int64(0), np.int64(padding)))
    return Y.reshape((n, C, Y.shape[3]))


@jit
def _avg_pool1d_grad_input(X, dY, kernel, stride, padding):
    """dX[i, c, window at t] += dY[i, c, t] / k;  -> dX (n, C, L)."""
    n, C, L = X.shape
    dX = _avg_pool2d_grad_input(
        X.reshape((n, C, 1, L)), dY.reshape((n, C, 1, dY.shape[2])), (np.int64(1), np.int64(kernel)), (np.int64(1), np.int64(stride)),
        (np.int64(0), np.int64(padding)),
    )
    return dX.reshape((n, C, L))


@jit
def _global_avg_pool_forward(X):
    """Y[i, c] = the mean of X[i, c, :];  X (n, C, m), every axis after the channels merged into m -> Y (n, C)."""
    n, C, m = X.shape
    Y = np.empty((n, C), X.dtype)
    for i in range(n):
        for c in range(C):
            total = 0.0
            for j in range(m):
                total += X[i, c, j]
            Y[i, c] = total / m
    return Y


@jit
def _global_avg_pool_grad_input(X, dY):
    """dX[i, c, j] = dY[i, c] / m;  dY (n, C) -> dX (n, C, m)."""
    n, C, m = X.shape
    dX = np.empty((n, C, m), X.dtype)
    for i in range(n):
        for c in range(C):
            share = dY[i, c] / m
            for j in range(m):
                dX[i, c, j] = share
    return dX


# --------------------------------------------------------------------------- the layers
@attrs.frozen
class _Pool2D(Layer):
    """Configuration and shape rule shared by the pooling layers (no parameters).

    ``kernel_size``, ``stride`` and ``padding`` are ints or pairs, stored as pairs
    ``(along height, along width)``; ``stride`` defaults to ``kernel_size``.
    """

    kernel_size: Pair = pair_field(minimum=1)
    stride: Pair = pair_field(None, minimum=1, optional=True)
    padding: Pair = pair_field(0, minimum=0)

    def __attrs_post_init__(self) -> None:
        if self.stride is None:
            object.__setattr__(self, "stride", self.kernel_size)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(
                f"{type(self).__name__}: padding {self.padding} must be at most half the kernel size {self.kernel_size}"
            )
        Layer.__attrs_post_init__(self)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        size = spatial_output_size(input_shape, self.kernel_size, self.stride, self.padding)
        return (input_shape[0], *size)

    def label(self) -> str:
        """The class name with the short configuration that :func:`jitnn.summary` shows."""
        kh, kw = self.kernel_size
        padding = f", padding {pair_text(self.padding)}" if self.padding != (0, 0) else ""
        return f"{type(self).__name__}({kh}x{kw}, stride {pair_text(self.stride)}{padding})"


@layer
class MaxPool2D(_Pool2D):
    """Maximum over each ``kh x kw`` window of each channel; padding counts as ``-inf``.

    ``MaxPool2D(kernel_size, stride=None, padding=0)``; the gradient of each window goes to
    its first maximal element (row-major), as in PyTorch. Input ``(n, C, H, W)``, output
    ``(n, C, Ho, Wo)``, ``Ho = (H + 2 ph - kh) // sh + 1``.
    """

    kernels = Kernels(
        _max_pool2d_forward, _max_pool2d_grad_input, residuals=Residuals(_max_pool2d_forward_residuals, _max_pool2d_grad_input_residuals)
    )


@layer
class AvgPool2D(_Pool2D):
    """Mean over each ``kh x kw`` window of each channel, padded zeros included.

    ``AvgPool2D(kernel_size, stride=None, padding=0)``; every window is divided by ``kh kw``,
    as PyTorch's ``avg_pool2d`` with ``count_include_pad=True`` (its default). Input
    ``(n, C, H, W)``, output ``(n, C, Ho, Wo)``, ``Ho = (H + 2 ph - kh) // sh + 1``.
    """

    kernels = Kernels(_avg_pool2d_forward, _avg_pool2d_grad_input)


@attrs.frozen
class _Pool1D(Layer):
    """Configuration and shape rule shared by the one-dimensional pooling layers (no
    parameters): ``kernel_size``, ``stride`` and ``padding`` are Python ints; ``stride``
    defaults to ``kernel_size`` and the padding is at most half the kernel, as in PyTorch
    and the two-dimensional layers."""

    kernel_size: int = int_field(minimum=1)
    stride: int = int_field(None, minimum=1, optional=True)
    padding: int = int_field(0, minimum=0)

    def __attrs_post_init__(self) -> None:
        if self.stride is None:
            object.__setattr__(self, "stride", self.kernel_size)
        if 2 * self.padding > self.kernel_size:
            raise ValueError(f"{type(self).__name__}: padding {self.padding} must be at most half the kernel size {self.kernel_size}")
        Layer.__attrs_post_init__(self)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        (length,) = spatial_output_size(input_shape, (self.kernel_size,), (self.stride,), (self.padding,))
        return (input_shape[0], length)

    def label(self) -> str:
        """The class name with the short configuration that :func:`jitnn.summary` shows."""
        padding = f", padding {self.padding}" if self.padding else ""
        return f"{type(self).__name__}(kernel {self.kernel_size}, stride {self.stride}{padding})"


@layer
class MaxPool1D(_Pool1D):
    """Maximum over each window of ``kernel_size`` steps of each channel; padding counts as ``-inf``.

    ``MaxPool1D(kernel_size, stride=None, padding=0)``, as PyTorch's ``max_pool1d``: the
    gradient of each window goes to its first maximal element. Input ``(n, C, L)``, output
    ``(n, C, Lo)``, ``Lo = (L + 2 p - k) // s + 1``. The kernels are ``MaxPool2D``'s on the
    input viewed as ``(n, C, 1, L)``.
    """

    kernels = Kernels(
        _max_pool1d_forward, _max_pool1d_grad_input, residuals=Residuals(_max_pool1d_forward_residuals, _max_pool1d_grad_input_residuals)
    )


@layer
class AvgPool1D(_Pool1D):
    """Mean over each window of ``kernel_size`` steps of each channel, padded zeros included.

    ``AvgPool1D(kernel_size, stride=None, padding=0)``; every window is divided by
    ``kernel_size``, as PyTorch's ``avg_pool1d`` with ``count_include_pad=True`` (its
    default). Input ``(n, C, L)``, output ``(n, C, Lo)``, ``Lo = (L + 2 p - k) // s + 1``. The
    kernels are ``AvgPool2D``'s on the input viewed as ``(n, C, 1, L)``.
    """

    kernels = Kernels(_avg_pool1d_forward, _avg_pool1d_grad_input)


@layer
class GlobalAvgPool(Layer):
    """The mean over every axis after the channels: ``(n, C, ...) -> (n, C)``.

    ``GlobalAvgPool()`` on sequences ``(n, C, L)``, images ``(n, C, H, W)`` or volumes; as
    ``x.mean(dim=tuple(range(2, x.ndim)))`` in PyTorch (``adaptive_avg_pool1d(x, 1)`` or
    ``adaptive_avg_pool2d(x, 1)``, flattened). The kernels see ``(n, C, m)`` views, every axis
    after the channels merged (``kernel_rank = 3``), so they compile once per dtype whatever
    the rank.
    """

    kernels = Kernels(_global_avg_pool_forward, _global_avg_pool_grad_input)
    kernel_rank = 3

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        input_shape = tuple(input_shape)
        if len(input_shape) < 2:
            raise ValueError(
                f"expects per-example input of shape (channels, ...) with at least one axis after the channels, "
                f"a batch (n, C, L) or (n, C, H, W), got per-example shape {input_shape}"
            )
        if min(input_shape) < 1:
            raise ValueError(f"expects positive sizes, got per-example shape {input_shape}")
        return (input_shape[0],)
