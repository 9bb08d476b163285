"""Plain NumPy reference implementations of jitnn's spatial layers.

Direct loops over the output positions, one window at a time: slow, obvious, and written
without the columns (im2col) formulation the kernels use. Everything is computed in float64.
The conventions are those of ``reference.py``: each layer is a namespace with
``forward(X, *params, **config)``, ``grad_input(X, dY, *params, **config)`` and
``grad_params(X, dY, *params, **config)``.

Batches are NCHW; configuration values are pairs ``(along height, along width)``. The
one-dimensional layers (NCL batches, integer configuration) have loops of their own,
written without the two-dimensional ones.
"""

from __future__ import annotations

import numpy as np

from reference import _f64


def _output_size(size, kernel, stride, padding, dilation=1):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _padded(X, padding, fill):
    ph, pw = padding
    return np.pad(X, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)


def _window(y, x, kernel, stride, dilation=(1, 1)):
    """The index of the window of output position ``(y, x)`` in the padded image's last two axes."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    return (slice(y * sh, y * sh + dh * (kh - 1) + 1, dh), slice(x * sw, x * sw + dw * (kw - 1) + 1, dw))


def _unpadded(X, padding):
    ph, pw = padding
    return X[:, :, ph : X.shape[2] - ph, pw : X.shape[3] - pw]


class Conv2D:
    """Cross-correlation: ``Y[i, o, y, x] = b[o] + sum(W[o] * padded X[i, :, window at (y, x)])``;
    ``W (out, C, kh, kw)``."""

    @staticmethod
    def _sizes(X, W, stride, padding, dilation):
        return tuple(_output_size(X.shape[2 + k], W.shape[2 + k], stride[k], padding[k], dilation[k]) for k in range(2))

    @classmethod
    def forward(cls, X, W, b, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
        X, W, b = _f64(X, W, b)
        Ho, Wo = cls._sizes(X, W, stride, padding, dilation)
        Xp = _padded(X, padding, 0.0)
        Y = np.empty((X.shape[0], W.shape[0], Ho, Wo))
        for i in range(X.shape[0]):
            for o in range(W.shape[0]):
                for y in range(Ho):
                    for x in range(Wo):
                        rows, cols = _window(y, x, W.shape[2:], stride, dilation)
                        Y[i, o, y, x] = np.sum(Xp[i, :, rows, cols] * W[o]) + b[o]
        return Y

    @classmethod
    def grad_input(cls, X, dY, W, b, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
        X, dY, W = _f64(X, dY, W)
        dXp = np.zeros(_padded(X, padding, 0.0).shape)
        for i in range(dY.shape[0]):
            for o in range(dY.shape[1]):
                for y in range(dY.shape[2]):
                    for x in range(dY.shape[3]):
                        rows, cols = _window(y, x, W.shape[2:], stride, dilation)
                        dXp[i, :, rows, cols] += dY[i, o, y, x] * W[o]
        return _unpadded(dXp, padding)

    @classmethod
    def grad_params(cls, X, dY, W, b, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
        X, dY, W = _f64(X, dY, W)
        Xp = _padded(X, padding, 0.0)
        dW = np.zeros(W.shape)
        for i in range(dY.shape[0]):
            for o in range(dY.shape[1]):
                for y in range(dY.shape[2]):
                    for x in range(dY.shape[3]):
                        rows, cols = _window(y, x, W.shape[2:], stride, dilation)
                        dW[o] += dY[i, o, y, x] * Xp[i, :, rows, cols]
        return dW, dY.sum(axis=(0, 2, 3))


class MaxPool2D:
    """Maximum of each window of the image padded with ``-inf``; the gradient goes to the
    first maximal element of the window (row-major)."""

    @staticmethod
    def _each_window(X, kernel_size, stride, padding):
        """Yield ``(i, c, y, x, flat index into the padded plane of the first maximum)``."""
        Xp = _padded(X, padding, -np.inf)
        Ho, Wo = (_output_size(X.shape[2 + k], kernel_size[k], stride[k], padding[k]) for k in range(2))
        for i in range(X.shape[0]):
            for c in range(X.shape[1]):
                for y in range(Ho):
                    for x in range(Wo):
                        rows, cols = _window(y, x, kernel_size, stride)
                        a, b = np.unravel_index(np.argmax(Xp[i, c, rows, cols]), (kernel_size[0], kernel_size[1]))
                        yield i, c, y, x, (rows.start + a, cols.start + b)

    @classmethod
    def forward(cls, X, kernel_size, stride, padding=(0, 0)):
        X = _f64(X)
        Xp = _padded(X, padding, -np.inf)
        Ho, Wo = (_output_size(X.shape[2 + k], kernel_size[k], stride[k], padding[k]) for k in range(2))
        Y = np.empty((X.shape[0], X.shape[1], Ho, Wo))
        for i, c, y, x, (h, w) in cls._each_window(X, kernel_size, stride, padding):
            Y[i, c, y, x] = Xp[i, c, h, w]
        return Y

    @classmethod
    def grad_input(cls, X, dY, kernel_size, stride, padding=(0, 0)):
        X, dY = _f64(X, dY)
        dXp = np.zeros(_padded(X, padding, 0.0).shape)
        for i, c, y, x, (h, w) in cls._each_window(X, kernel_size, stride, padding):
            dXp[i, c, h, w] += dY[i, c, y, x]
        return _unpadded(dXp, padding)

    @staticmethod
    def grad_params(X, dY, kernel_size, stride, padding=(0, 0)):
        return ()


class AvgPool2D:
    """Mean of each window of the image padded with zeros, divided by ``kh kw`` always
    (PyTorch's ``count_include_pad=True``)."""

    @staticmethod
    def forward(X, kernel_size, stride, padding=(0, 0)):
        X = _f64(X)
        Xp = _padded(X, padding, 0.0)
        Ho, Wo = (_output_size(X.shape[2 + k], kernel_size[k], stride[k], padding[k]) for k in range(2))
        Y = np.empty((X.shape[0], X.shape[1], Ho, Wo))
        for y in range(Ho):
            for x in range(Wo):
                rows, cols = _window(y, x, kernel_size, stride)
                Y[:, :, y, x] = Xp[:, :, rows, cols].sum(axis=(2, 3)) / (kernel_size[0] * kernel_size[1])
        return Y

    @staticmethod
    def grad_input(X, dY, kernel_size, stride, padding=(0, 0)):
        X, dY = _f64(X, dY)
        dXp = np.zeros(_padded(X, padding, 0.0).shape)
        for y in range(dY.shape[2]):
            for x in range(dY.shape[3]):
                rows, cols = _window(y, x, kernel_size, stride)
                dXp[:, :, rows, cols] += dY[:, :, y, x, None, None] / (kernel_size[0] * kernel_size[1])
        return _unpadded(dXp, padding)

    @staticmethod
    def grad_params(X, dY, kernel_size, stride, padding=(0, 0)):
        return ()


# --------------------------------------------------------------------------- one dimension: (n, C, L)
def _padded_1d(X, padding, fill):
    return np.pad(X, ((0, 0), (0, 0), (padding, padding)), constant_values=fill)


def _unpadded_1d(X, padding):
    return X[:, :, padding : X.shape[2] - padding]


def _window_1d(t, kernel, stride, dilation=1):
    """The index of the window of output position ``t`` in the padded sequence's last axis."""
    return slice(t * stride, t * stride + dilation * (kernel - 1) + 1, dilation)


class Conv1D:
    """Cross-correlation: ``Y[i, o, t] = b[o] + sum(W[o] * padded X[i, :, window at t])``;
    ``W (out, C, k)``."""

    @staticmethod
    def forward(X, W, b, stride=1, padding=0, dilation=1):
        X, W, b = _f64(X, W, b)
        n, out, k = X.shape[0], W.shape[0], W.shape[2]
        Lo = _output_size(X.shape[2], k, stride, padding, dilation)
        Xp = _padded_1d(X, padding, 0.0)
        Y = np.empty((n, out, Lo))
        for i in range(n):
            for o in range(out):
                for t in range(Lo):
                    Y[i, o, t] = np.sum(Xp[i, :, _window_1d(t, k, stride, dilation)] * W[o]) + b[o]
        return Y

    @staticmethod
    def grad_input(X, dY, W, b, stride=1, padding=0, dilation=1):
        X, dY, W = _f64(X, dY, W)
        dXp = np.zeros(_padded_1d(X, padding, 0.0).shape)
        for i in range(dY.shape[0]):
            for o in range(dY.shape[1]):
                for t in range(dY.shape[2]):
                    dXp[i, :, _window_1d(t, W.shape[2], stride, dilation)] += dY[i, o, t] * W[o]
        return _unpadded_1d(dXp, padding)

    @staticmethod
    def grad_params(X, dY, W, b, stride=1, padding=0, dilation=1):
        X, dY, W = _f64(X, dY, W)
        Xp = _padded_1d(X, padding, 0.0)
        dW = np.zeros(W.shape)
        for i in range(dY.shape[0]):
            for o in range(dY.shape[1]):
                for t in range(dY.shape[2]):
                    dW[o] += dY[i, o, t] * Xp[i, :, _window_1d(t, W.shape[2], stride, dilation)]
        return dW, dY.sum(axis=(0, 2))


class MaxPool1D:
    """Maximum of each window of the sequence padded with ``-inf``; the gradient goes to the
    first maximal element of the window."""

    @staticmethod
    def _each_window(X, kernel_size, stride, padding):
        """Yield ``(i, c, t, index into the padded sequence of the first maximum)``."""
        Xp = _padded_1d(X, padding, -np.inf)
        Lo = _output_size(X.shape[2], kernel_size, stride, padding)
        for i in range(X.shape[0]):
            for c in range(X.shape[1]):
                for t in range(Lo):
                    window = _window_1d(t, kernel_size, stride)
                    yield i, c, t, window.start + int(np.argmax(Xp[i, c, window]))

    @classmethod
    def forward(cls, X, kernel_size, stride, padding=0):
        X = _f64(X)
        Xp = _padded_1d(X, padding, -np.inf)
        Y = np.empty((X.shape[0], X.shape[1], _output_size(X.shape[2], kernel_size, stride, padding)))
        for i, c, t, h in cls._each_window(X, kernel_size, stride, padding):
            Y[i, c, t] = Xp[i, c, h]
        return Y

    @classmethod
    def grad_input(cls, X, dY, kernel_size, stride, padding=0):
        X, dY = _f64(X, dY)
        dXp = np.zeros(_padded_1d(X, padding, 0.0).shape)
        for i, c, t, h in cls._each_window(X, kernel_size, stride, padding):
            dXp[i, c, h] += dY[i, c, t]
        return _unpadded_1d(dXp, padding)

    @staticmethod
    def grad_params(X, dY, kernel_size, stride, padding=0):
        return ()


class AvgPool1D:
    """Mean of each window of the sequence padded with zeros, divided by ``k`` always
    (PyTorch's ``count_include_pad=True``)."""

    @staticmethod
    def forward(X, kernel_size, stride, padding=0):
        X = _f64(X)
        Xp = _padded_1d(X, padding, 0.0)
        Lo = _output_size(X.shape[2], kernel_size, stride, padding)
        Y = np.empty((X.shape[0], X.shape[1], Lo))
        for t in range(Lo):
            Y[:, :, t] = Xp[:, :, _window_1d(t, kernel_size, stride)].sum(axis=2) / kernel_size
        return Y

    @staticmethod
    def grad_input(X, dY, kernel_size, stride, padding=0):
        X, dY = _f64(X, dY)
        dXp = np.zeros(_padded_1d(X, padding, 0.0).shape)
        for t in range(dY.shape[2]):
            dXp[:, :, _window_1d(t, kernel_size, stride)] += dY[:, :, t, None] / kernel_size
        return _unpadded_1d(dXp, padding)

    @staticmethod
    def grad_params(X, dY, kernel_size, stride, padding=0):
        return ()


class GlobalAvgPool:
    """The mean of each channel of each example over all its other axes: ``(n, C, ...) -> (n, C)``."""

    @staticmethod
    def forward(X):
        X = _f64(X)
        Y = np.empty(X.shape[:2])
        for i in range(X.shape[0]):
            for c in range(X.shape[1]):
                Y[i, c] = X[i, c].sum() / X[i, c].size
        return Y

    @staticmethod
    def grad_input(X, dY):
        X, dY = _f64(X, dY)
        dX = np.empty(X.shape)
        for i in range(X.shape[0]):
            for c in range(X.shape[1]):
                dX[i, c] = dY[i, c] / X[i, c].size
        return dX

    @staticmethod
    def grad_params(X, dY):
        return ()


class Flatten:
    """Each example to one axis, C order."""

    @staticmethod
    def forward(X):
        X = _f64(X)
        return X.reshape(X.shape[0], -1).copy()

    @staticmethod
    def grad_input(X, dY):
        return _f64(dY).reshape(np.shape(X)).copy()

    @staticmethod
    def grad_params(X, dY):
        return ()


class Reshape:
    """Each example to ``shape`` (one -1 allowed), C order."""

    @staticmethod
    def forward(X, shape):
        X = _f64(X)
        return X.reshape((X.shape[0], *shape)).copy()

    @staticmethod
    def grad_input(X, dY, shape):
        return _f64(dY).reshape(np.shape(X)).copy()

    @staticmethod
    def grad_params(X, dY, shape):
        return ()
