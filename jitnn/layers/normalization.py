"""Normalization layers."""

from __future__ import annotations

import math
import numbers
from typing import Any

import attrs
import numpy as np

from jitnn import random
from jitnn._checks import check_float_dtype
from jitnn._jit import jit
from jitnn.protocol import Array, Kernels, Layer, layer, param

__all__ = ["LayerNorm"]


@jit
def _layer_norm_rows(X, eps):
    """Per row of X (m, k): xhat = (x - mean) / sqrt(var + eps) (m, k), and 1 / sqrt(var + eps) (m,)."""
    m, k = X.shape
    normalized = np.empty((m, k), np.float64)
    inverse_std = np.empty(m, np.float64)
    for i in range(m):
        mean = 0.0
        for j in range(k):
            mean += X[i, j]
        mean /= k
        variance = 0.0
        for j in range(k):
            variance += (X[i, j] - mean) ** 2
        inverse_std[i] = 1.0 / math.sqrt(variance / k + eps)
        for j in range(k):
            normalized[i, j] = (X[i, j] - mean) * inverse_std[i]
    return normalized, inverse_std


@jit
def _layer_norm_forward(X, scale, shift, eps):
    """Y = xhat * scale + shift over the last axis;  X (n, ..., k), scale, shift (k,) -> Y like X."""
    k = X.shape[-1]
    normalized, _ = _layer_norm_rows(X.reshape((X.size // k, k)), eps)
    Y = np.empty(X.shape, X.dtype)
    y = Y.reshape((X.size // k, k))
    for i in range(y.shape[0]):
        for j in range(k):
            y[i, j] = normalized[i, j] * scale[j] + shift[j]
    return Y


@jit
def _layer_norm_grad_input(X, dY, scale, shift, eps):
    """dX = inv_std (g - mean(g) - xhat mean(g xhat)), g = dY * scale, per row;  -> dX like X."""
    k = X.shape[-1]
    normalized, inverse_std = _layer_norm_rows(X.reshape((X.size // k, k)), eps)
    d = dY.reshape((dY.size // k, k))
    dX = np.empty(X.shape, X.dtype)
    dx = dX.reshape((X.size // k, k))
    for i in range(d.shape[0]):
        mean_g, mean_gx = 0.0, 0.0
        for j in range(k):
            g = d[i, j] * scale[j]
            mean_g += g
            mean_gx += g * normalized[i, j]
        mean_g, mean_gx = mean_g / k, mean_gx / k
        for j in range(k):
            dx[i, j] = inverse_std[i] * (d[i, j] * scale[j] - mean_g - normalized[i, j] * mean_gx)
    return dX


@jit
def _layer_norm_grad_params(X, dY, scale, shift, eps):
    """d scale = sum over rows of dY * xhat, d shift = sum over rows of dY;  -> ((k,), (k,))."""
    k = X.shape[-1]
    normalized, _ = _layer_norm_rows(X.reshape((X.size // k, k)), eps)
    d = dY.reshape((dY.size // k, k))
    d_scale, d_shift = np.zeros(k, scale.dtype), np.zeros(k, shift.dtype)
    for i in range(d.shape[0]):
        for j in range(k):
            d_scale[j] += d[i, j] * normalized[i, j]
            d_shift[j] += d[i, j]
    return d_scale, d_shift


def _epsilon(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"LayerNorm: eps must be a positive number, got {value!r}")
    return float(value)


@layer
class LayerNorm(Layer):
    """Layer normalization (Ba et al., 2016) over the last axis, with a learned ``scale``
    and ``shift`` per feature, as PyTorch's ``LayerNorm(features)`` (biased variance,
    ``eps`` inside the square root, default 1e-5). Input ``(n, ..., features)``."""

    scale: Array = param()
    shift: Array = param()
    eps: float = attrs.field(default=1e-5, converter=_epsilon)

    kernels = Kernels(_layer_norm_forward, _layer_norm_grad_input, _layer_norm_grad_params)

    @classmethod
    def init(cls, key: random.Key | None, features: int, *, eps: float = 1e-5, dtype: Any = np.float32) -> "LayerNorm":
        """Scale ones and shift zeros (the key is accepted for a uniform signature)."""
        if isinstance(features, bool) or not isinstance(features, numbers.Integral) or features < 1:
            raise ValueError(f"LayerNorm.init: features must be a positive integer, got {features!r}")
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
