"""Two-dimensional max and average pooling over NCHW batches, as PyTorch's ``max_pool2d`` and
``avg_pool2d`` with their defaults.

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
"""

from __future__ import annotations

import attrs
import numpy as np

from jitnn._jit import as_readonly, jit
from jitnn.layers.conv import Pair, pair_field, pair_text, spatial_output_size
from jitnn.protocol import Kernels, Layer, Residuals, layer

__all__ = ["MaxPool2D", "AvgPool2D"]


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
