"""Dropout (Srivastava et al., 2014), inverted: scaled at training time, identity otherwise."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from jitnn import random, validate
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


@layer
class Dropout(Layer):
    """Drop each element with probability ``rate`` in training mode and scale the kept
    ones by ``1 / (1 - rate)``; the identity in evaluation mode. The mask comes from the
    pass's key and the layer's position, so the same key drops the same elements."""

    rate: float = attrs.field(converter=validate.converter(validate.fraction, "Dropout", "rate (the fraction of elements dropped)"))
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

    def label(self) -> str:
        """The class name with the short configuration that :func:`jitnn.summary` shows."""
        return f"{type(self).__name__}({self.rate:g})"
