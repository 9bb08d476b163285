"""Normalization layers."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

from jitnn import random, validate
from jitnn._checks import check_float_dtype
from jitnn._jit import as_readonly, jit
from jitnn.protocol import Array, Context, Kernels, Layer, Residuals, buffer, layer, param

__all__ = ["LayerNorm", "BatchNorm"]


@jit
def _layer_norm_statistics(x, eps):
    """Per row of x (m, k): the mean (m,) and 1 / sqrt(var + eps) (m,), float64 (biased variance)."""
    m, k = x.shape
    mean, inverse_std = np.empty(m, np.float64), np.empty(m, np.float64)
    for i in range(m):
        total = 0.0
        for j in range(k):
            total += x[i, j]
        total /= k
        variance = 0.0
        for j in range(k):
            variance += (x[i, j] - total) ** 2
        mean[i], inverse_std[i] = total, 1.0 / math.sqrt(variance / k + eps)
    return mean, inverse_std


@jit
def _layer_norm_forward_residuals(X, scale, shift, eps):
    """Y = xhat * scale + shift over the last axis, xhat = (x - mean) / sqrt(var + eps);
    X (n, ..., k), scale, shift (k,) -> (Y like X, R = (mean, inverse_std), each (X.size // k,) float64)."""
    k = X.shape[-1]
    x = X.reshape((X.size // k, k))
    mean, inverse_std = _layer_norm_statistics(x, eps)
    Y = np.empty(X.shape, X.dtype)
    y = Y.reshape(x.shape)
    for i in range(x.shape[0]):
        for j in range(k):
            y[i, j] = (x[i, j] - mean[i]) * inverse_std[i] * scale[j] + shift[j]
    return Y, (as_readonly(mean), as_readonly(inverse_std))


@jit
def _layer_norm_forward(X, scale, shift, eps):
    """Y of :func:`_layer_norm_forward_residuals` (its statistics are a row's two numbers)."""
    return _layer_norm_forward_residuals(X, scale, shift, eps)[0]


@jit
def _layer_norm_residuals(X, eps):
    """R of :func:`_layer_norm_forward_residuals` without Y: (mean, inverse_std) per row (a plain call)."""
    k = X.shape[-1]
    mean, inverse_std = _layer_norm_statistics(X.reshape((X.size // k, k)), eps)
    return as_readonly(mean), as_readonly(inverse_std)


@jit
def _layer_norm_plain_grad_input(X, dY, scale, shift, eps):
    """dX of :func:`_layer_norm_grad_input`, the statistics computed here (a plain call)."""
    return _layer_norm_grad_input(X, dY, _layer_norm_residuals(X, eps), scale, shift, eps)


@jit
def _layer_norm_plain_grad_params(X, dY, scale, shift, eps):
    """The gradients of :func:`_layer_norm_grad_params`, the statistics computed here (a plain call)."""
    return _layer_norm_grad_params(X, dY, _layer_norm_residuals(X, eps), scale, shift, eps)


@jit
def _layer_norm_grad_input(X, dY, R, scale, shift, eps):
    """dX = inv_std (g - mean(g) - xhat mean(g xhat)), g = dY * scale, per row, from R = (mean, inv_std);  -> dX like X."""
    mean, inverse_std = R
    k = X.shape[-1]
    x, d = X.reshape((X.size // k, k)), dY.reshape((dY.size // k, k))
    dX = np.empty(X.shape, X.dtype)
    dx = dX.reshape(x.shape)
    for i in range(d.shape[0]):
        mean_g, mean_gx = 0.0, 0.0
        for j in range(k):
            g = d[i, j] * scale[j]
            mean_g += g
            mean_gx += g * ((x[i, j] - mean[i]) * inverse_std[i])
        mean_g, mean_gx = mean_g / k, mean_gx / k
        for j in range(k):
            dx[i, j] = inverse_std[i] * (d[i, j] * scale[j] - mean_g - ((x[i, j] - mean[i]) * inverse_std[i]) * mean_gx)
    return dX


@jit
def _layer_norm_grad_params(X, dY, R, scale, shift, eps):
    """d scale = sum over rows of dY * xhat, d shift = sum over rows of dY, from R = (mean, inv_std);  -> ((k,), (k,))."""
    mean, inverse_std = R
    k = X.shape[-1]
    x, d = X.reshape((X.size // k, k)), dY.reshape((dY.size // k, k))
    d_scale, d_shift = np.zeros(k, scale.dtype), np.zeros(k, shift.dtype)
    for i in range(d.shape[0]):
        for j in range(k):
            d_scale[j] += d[i, j] * ((x[i, j] - mean[i]) * inverse_std[i])
            d_shift[j] += d[i, j]
    return d_scale, d_shift


def _epsilon(who: str) -> Callable[[Any], float]:
    """The converter of ``who``'s ``eps``: a finite positive number."""
    return validate.converter(validate.positive_real, who, "eps", must="be a positive number")


@layer
class LayerNorm(Layer):
    """Layer normalization (Ba et al., 2016) over the last axis, with a learned ``scale``
    and ``shift`` per feature, as PyTorch's ``LayerNorm(features)`` (biased variance,
    ``eps`` inside the square root, default 1e-5). Input ``(n, ..., features)``."""

    scale: Array = param()
    shift: Array = param()
    eps: float = attrs.field(default=1e-5, converter=_epsilon("LayerNorm"))

    kernels = Kernels(
        _layer_norm_forward, _layer_norm_plain_grad_input, _layer_norm_plain_grad_params,
        residuals=Residuals(_layer_norm_forward_residuals, _layer_norm_grad_input, _layer_norm_grad_params),
    )
    rows = True  # normalizes the last axis: kernels see (rows, features) whatever the rank

    @classmethod
    def init(cls, key: random.Key | None, features: int, *, eps: float = 1e-5, dtype: Any = np.float32) -> LayerNorm:
        """Scale ones and shift zeros (the key is accepted for a uniform signature)."""
        features = validate.positive_int(features, "LayerNorm.init", "features")
        dtype = check_float_dtype(dtype, "LayerNorm.init")
        return cls(scale=np.ones(features, dtype), shift=np.zeros(features, dtype), eps=eps)

    @property
    def features(self) -> int:
        return self.scale.shape[0]

    def check_params(self) -> None:
        if self.scale.ndim != 1 or self.shift.shape != self.scale.shape:
            raise ValueError(f"LayerNorm: scale and shift must both have shape (features,), got {self.scale.shape} and {self.shift.shape}")

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) < 1 or input_shape[-1] != self.features:
            raise ValueError(f"expects per-example input shape (..., {self.features}), got {tuple(input_shape)}")
        return tuple(input_shape)

    def label(self) -> str:
        """The class name with the short configuration that :func:`jitnn.summary` shows."""
        return f"{type(self).__name__}({self.features})"


# --------------------------------------------------------------------------- batch normalization
@jit
def _batch_statistics(X):
    """Per channel of X (n, C, ...): the batch mean and biased variance;  -> mean (C,),
    variance (C,) in float64."""
    n, channels = X.shape[0], X.shape[1]
    x = X.reshape((n, channels, X.size // (n * channels)))
    count = n * x.shape[2]
    mean, variance = np.zeros(channels), np.zeros(channels)
    for c in range(channels):
        for i in range(n):
            for s in range(x.shape[2]):
                mean[c] += x[i, c, s]
        mean[c] /= count
        for i in range(n):
            for s in range(x.shape[2]):
                variance[c] += (x[i, c, s] - mean[c]) ** 2
        variance[c] /= count
    return mean, variance


@jit
def _batch_norm_forward_residuals(X, scale, shift, running_mean, running_var, momentum, eps, training):
    """Y = (X - mean) / sqrt(var + eps) * scale + shift per channel, with the batch's mean and
    biased variance if training, else the running ones;  X (n, C, ...) -> (Y like X,
    R = (mean (C,), variance (C,), values per channel))."""
    n, channels = X.shape[0], X.shape[1]
    if training:
        mean, variance = _batch_statistics(X)
    else:
        mean, variance = running_mean.astype(np.float64), running_var.astype(np.float64)
    x = X.reshape((n, channels, X.size // (n * channels)))
    Y = np.empty(X.shape, X.dtype)
    y = Y.reshape(x.shape)
    for c in range(channels):
        factor = scale[c] / math.sqrt(variance[c] + eps)
        for i in range(n):
            for s in range(x.shape[2]):
                y[i, c, s] = (x[i, c, s] - mean[c]) * factor + shift[c]
    return Y, (as_readonly(mean), as_readonly(variance), n * x.shape[2])


@jit
def _batch_norm_forward(X, scale, shift, running_mean, running_var, momentum, eps, training):
    """Y of :func:`_batch_norm_forward_residuals` (its statistics are two numbers a channel)."""
    return _batch_norm_forward_residuals(X, scale, shift, running_mean, running_var, momentum, eps, training)[0]


@jit
def _batch_norm_grad_input(X, dY, R, scale, shift, momentum, eps, training):
    """dX = scale inv_std (dY - [training] (mean(dY) + xhat mean(dY xhat))) per channel, from R;  -> like X."""
    mean, variance, count = R
    n, channels = X.shape[0], X.shape[1]
    x = X.reshape((n, channels, X.size // (n * channels)))
    d = dY.reshape(x.shape)
    dX = np.empty(X.shape, X.dtype)
    dx = dX.reshape(x.shape)
    for c in range(channels):
        inverse_std = 1.0 / math.sqrt(variance[c] + eps)
        mean_d, mean_dx = 0.0, 0.0
        if training:
            for i in range(n):
                for s in range(x.shape[2]):
                    mean_d += d[i, c, s]
                    mean_dx += d[i, c, s] * (x[i, c, s] - mean[c]) * inverse_std
            mean_d, mean_dx = mean_d / count, mean_dx / count
        for i in range(n):
            for s in range(x.shape[2]):
                normalized = (x[i, c, s] - mean[c]) * inverse_std
                dx[i, c, s] = scale[c] * inverse_std * (d[i, c, s] - mean_d - normalized * mean_dx)
    return dX


@jit
def _batch_norm_grad_params(X, dY, R, scale, shift, momentum, eps, training):
    """d scale = sum of dY * xhat, d shift = sum of dY, per channel, from R;  -> ((C,), (C,))."""
    mean, variance, count = R
    n, channels = X.shape[0], X.shape[1]
    x = X.reshape((n, channels, X.size // (n * channels)))
    d = dY.reshape(x.shape)
    d_scale, d_shift = np.zeros(channels, scale.dtype), np.zeros(channels, shift.dtype)
    for c in range(channels):
        inverse_std = 1.0 / math.sqrt(variance[c] + eps)
        for i in range(n):
            for s in range(x.shape[2]):
                d_scale[c] += d[i, c, s] * (x[i, c, s] - mean[c]) * inverse_std
                d_shift[c] += d[i, c, s]
    return d_scale, d_shift


@jit
def _batch_norm_update(R, running_mean, running_var, momentum, eps, training):
    """running <- (1 - momentum) running + momentum batch, with the unbiased batch variance,
    from the batch statistics R;  -> (running_mean (C,), running_var (C,))."""
    mean, variance, count = R
    keep = 1.0 - momentum
    new_mean, new_var = np.empty_like(running_mean), np.empty_like(running_var)
    for c in range(mean.size):
        new_mean[c] = keep * np.float64(running_mean[c]) + momentum * mean[c]
        new_var[c] = keep * np.float64(running_var[c]) + momentum * (variance[c] * (count / (count - 1)))
    return new_mean, new_var


@layer
class BatchNorm(Layer):
    """Batch normalization (Ioffe and Szegedy, 2015) over the per-example axis 0 (the
    features of ``(n, C)`` input, the channels of ``(n, C, H, W)``), as PyTorch's
    ``BatchNorm1d``/``BatchNorm2d``.

    In training mode (``training=True`` in :func:`jitnn.forward`, ``value_and_grad``,
    ``train_step``, ``fit``) it normalizes with the batch's mean and biased variance and
    the pass reports the layer with new running statistics, ``running <- (1 - momentum)
    running + momentum batch`` (unbiased variance, as PyTorch); in evaluation mode it uses
    the running statistics. ``running_mean`` and ``running_var`` are buffers: saved with
    the model, never touched by optimizers.
    """

    scale: Array = param()
    shift: Array = param()
    running_mean: Array = buffer()
    running_var: Array = buffer()
    momentum: float = attrs.field(default=0.1, converter=validate.converter(validate.fraction, "BatchNorm", "momentum", include_one=True))
    eps: float = attrs.field(default=1e-5, converter=_epsilon("BatchNorm"))

    kernels = Kernels(
        _batch_norm_forward,
        residuals=Residuals(_batch_norm_forward_residuals, _batch_norm_grad_input, _batch_norm_grad_params, _batch_norm_update),
    )
    needs_context = True

    @classmethod
    def init(cls, key: random.Key | None, features: int, *, momentum: float = 0.1, eps: float = 1e-5, dtype: Any = np.float32) -> BatchNorm:
        """Scale ones, shift zeros, running mean zeros and running variance ones."""
        features = validate.positive_int(features, "BatchNorm.init", "features")
        dtype = check_float_dtype(dtype, "BatchNorm.init")
        ones, zeros = np.ones(features, dtype), np.zeros(features, dtype)
        return cls(scale=ones, shift=zeros, running_mean=zeros, running_var=ones, momentum=momentum, eps=eps)

    @property
    def features(self) -> int:
        return self.scale.shape[0]

    def check_params(self) -> None:
        shape = self.scale.shape
        if len(shape) != 1 or any(getattr(self, name).shape != shape for name in ("shift", "running_mean", "running_var")):
            raise ValueError("BatchNorm: scale, shift, running_mean and running_var must all have shape (features,)")
        if np.any(self.running_var < 0):  # training never makes one; a NaN (a diverged model) is kept
            raise ValueError(f"BatchNorm: running_var must not be negative, got a minimum of {float(np.min(self.running_var))}")

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) < 1 or input_shape[0] != self.features:
            raise ValueError(f"expects per-example input shape ({self.features}, ...), got {tuple(input_shape)}")
        return tuple(input_shape)

    def call_args(self, X: Array, context: Context, where: str) -> tuple[Any, ...]:
        if context.training and X.size // self.features < 2:
            raise ValueError(f"BatchNorm at model{where}: training needs more than one value per channel, got input of shape {X.shape}")
        return (context.training,)

    def label(self) -> str:
        """The class name with the short configuration that :func:`jitnn.summary` shows."""
        return f"{type(self).__name__}({self.features})"

