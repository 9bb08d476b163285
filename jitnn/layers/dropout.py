"""Dropout (Srivastava et al., 2014), inverted: scaled at training time, identity otherwise."""

from __future__ import annotations

import math
import numbers
from typing import Any

import attrs
import numpy as np

from jitnn import random
from jitnn._checks import freeze
from jitnn._jit import jit
from jitnn.protocol import Array, Context, Kernels, Layer, layer

__all__ = ["Dropout"]


@jit
def _dropout_forward(x, mask):
    """y = x * mask;  x (m,), mask (m,) holding 0 or 1 / (1 - rate)."""
    y = np.empty_like(x)
    for i in range(x.size):
        y[i] = x[i] * mask[i]
    return y


@jit
def _dropout_grad_input(x, d, mask):
    """dx = d * mask;  (m,)."""
    return _dropout_forward(d, mask)


def _rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or not 0 <= value < 1:
        raise ValueError(f"Dropout: rate (the fraction of elements dropped) must lie in [0, 1), got {value!r}")
    return float(value)


@layer
class Dropout(Layer):
    """Drop each element with probability ``rate`` in training mode and scale the kept
    ones by ``1 / (1 - rate)``; the identity in evaluation mode. The mask comes from the
    pass's key and the layer's position, so the same key drops the same elements."""

    rate: float = attrs.field(converter=_rate)
    kernels = Kernels(_dropout_forward, _dropout_grad_input)
    needs_context = True
    elementwise = True

    def config(self) -> tuple[Any, ...]:
        return ()

    def call_args(self, X: Array, context: Context, where: str) -> tuple[Any, ...]:
        if not context.training or self.rate == 0.0:
            return (freeze(np.ones(X.shape, X.dtype)),)
        keep = random.bernoulli(context.key_for(where, "Dropout"), 1.0 - self.rate, X.shape)
        return (freeze(keep.astype(X.dtype) / X.dtype.type(1.0 - self.rate)),)
