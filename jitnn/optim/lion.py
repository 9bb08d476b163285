"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms")."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from jitnn import validate
from jitnn._jit import jit
from jitnn.optim._base import lr_scale_field, gradient_at, gradient_grid, count_field, moment_field, LearningRate, Optimizer, as_learning_rate

__all__ = ["Lion", "LionState", "lion"]


@jit
def _lion_update(param, grad, mu, learning_rate, b1, b2, weight_decay):
    """p <- p (1 - lr wd) - lr sign(b1 mu + (1 - b1) g);  mu <- b2 mu + (1 - b2) g;  all (m,)."""
    new_param, new_mu = np.empty_like(param), np.empty_like(mu)
    rows, columns = gradient_grid(grad)
    for r in range(rows):
        for c in range(columns):
            i = r * columns + c
            g, m = np.float64(gradient_at(grad, i, r, c)), np.float64(mu[i])
            direction = np.sign(b1 * m + (1.0 - b1) * g)
            new_param[i] = np.float64(param[i]) * (1.0 - learning_rate * weight_decay) - learning_rate * direction
            new_mu[i] = b2 * m + (1.0 - b2) * g
    return new_param, new_mu


@attrs.frozen
class LionState:
    """The step count and the momentum."""

    count: np.ndarray = count_field()
    mu: Any = moment_field()
    lr_scale: np.ndarray = lr_scale_field()


@attrs.frozen
class Lion(Optimizer):
    """Lion: the sign of an interpolated momentum, with decoupled weight decay (as the
    paper's reference code and ``lion-pytorch``). Use a learning rate 3-10x smaller than
    AdamW's."""

    learning_rate: LearningRate = attrs.field(default=1e-4, converter=lambda v: as_learning_rate(v, "lion"))
    b1: float = attrs.field(default=0.9, converter=validate.converter(validate.fraction, "lion", "b1"))
    b2: float = attrs.field(default=0.99, converter=validate.converter(validate.fraction, "lion", "b2"))
    weight_decay: float = attrs.field(default=0.0, converter=validate.converter(validate.non_negative_real, "lion", "weight_decay"))
    kernel = staticmethod(_lion_update)
    state_class = LionState
    factored_gradients = True

    def kernel_config(self, learning_rate: float, step: int) -> tuple[Any, ...]:
        return (learning_rate, self.b1, self.b2, self.weight_decay)


def lion(learning_rate: LearningRate = 1e-4, b1: float = 0.9, b2: float = 0.99, weight_decay: float = 0.0) -> Lion:
    """Lion; ``learning_rate`` is a number or a schedule."""
    return Lion(learning_rate, b1, b2, weight_decay)
