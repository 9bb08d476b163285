"""Stochastic gradient descent: ``W <- W - learning_rate * dW``."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from jitnn._jit import jit
from jitnn.optim._base import check_learning_rate, update_leaves

__all__ = ["SGD", "SGDState", "sgd"]


@jit
def _sgd_update(param, grad, learning_rate):
    """param - learning_rate * grad (in float64, rounded once);  param, grad (m,) -> (m,)."""
    out = np.empty_like(param)
    for i in range(param.size):
        out[i] = param[i] - learning_rate * grad[i]
    return out


@attrs.frozen
class SGDState:
    """Plain SGD keeps no state."""


@attrs.frozen
class SGD:
    """Plain stochastic gradient descent; ``init`` and ``update`` are pure functions."""

    learning_rate: float = attrs.field(converter=lambda v: check_learning_rate(v, "sgd"))

    def init(self, params: Any) -> SGDState:
        """The (empty) state for ``params``."""
        return SGDState()

    def update(self, params: Any, grads: Any, state: SGDState) -> tuple[Any, SGDState]:
        """New parameters ``params - learning_rate * grads`` and the state; nothing is
        written into ``params``, ``grads`` or ``state``."""
        if not isinstance(state, SGDState):
            raise TypeError(f"sgd.update: state must be the SGDState from sgd.init, got {type(state).__name__}")
        return update_leaves(_sgd_update, params, grads, self.learning_rate), state


def sgd(learning_rate: float) -> SGD:
    """Plain SGD with a fixed ``learning_rate``."""
    return SGD(learning_rate)
