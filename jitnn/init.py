"""Weight initializers: ``init(key, shape, dtype=np.float32) -> array``.

Fan-in and fan-out follow PyTorch: for a matrix ``(n_in, n_out)`` (jitnn's ``Dense.W``)
they are ``n_in`` and ``n_out``; for a convolution kernel ``(out, in, *window)`` they are
``in * prod(window)`` and ``out * prod(window)``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from jitnn import random
from jitnn._checks import check_float_dtype

__all__ = ["Initializer", "fans", "zeros", "glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_normal"]

Initializer = Callable[..., np.ndarray]


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of ``shape``."""
    if len(shape) < 2:
        raise ValueError(f"fans: a weight needs at least two axes, got shape {shape}")
    if len(shape) == 2:
        return shape[0], shape[1]
    window = math.prod(shape[2:])
    return shape[1] * window, shape[0] * window


def zeros(key: random.Key | None, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """All zeros (the key is accepted for a uniform signature and not used)."""
    return np.zeros(shape, dtype=check_float_dtype(dtype, "zeros"))


def _uniform(key: random.Key, shape: tuple[int, ...], limit: float, dtype: Any) -> np.ndarray:
    return random.uniform(key, shape, -limit, limit, dtype=dtype)


def _normal(key: random.Key, shape: tuple[int, ...], std: float, dtype: Any) -> np.ndarray:
    sample = random.normal(key, shape, dtype=dtype)
    return (sample * sample.dtype.type(std)).astype(sample.dtype, copy=False)


def glorot_uniform(key: random.Key, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """Glorot (Xavier) uniform: ``U(-a, a)``, ``a = sqrt(6 / (fan_in + fan_out))``."""
    fan_in, fan_out = fans(shape)
    return _uniform(key, shape, math.sqrt(6.0 / (fan_in + fan_out)), dtype)


def glorot_normal(key: random.Key, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """Glorot (Xavier) normal: ``N(0, 2 / (fan_in + fan_out))``."""
    fan_in, fan_out = fans(shape)
    return _normal(key, shape, math.sqrt(2.0 / (fan_in + fan_out)), dtype)


def he_uniform(key: random.Key, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """He (Kaiming) uniform for ReLU networks: ``U(-a, a)``, ``a = sqrt(6 / fan_in)``."""
    return _uniform(key, shape, math.sqrt(6.0 / fans(shape)[0]), dtype)


def he_normal(key: random.Key, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """He (Kaiming) normal for ReLU networks: ``N(0, 2 / fan_in)``."""
    return _normal(key, shape, math.sqrt(2.0 / fans(shape)[0]), dtype)


def lecun_normal(key: random.Key, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """LeCun normal: ``N(0, 1 / fan_in)``."""
    return _normal(key, shape, math.sqrt(1.0 / fans(shape)[0]), dtype)
