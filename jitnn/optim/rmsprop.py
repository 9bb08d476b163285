"""RMSprop (Tieleman and Hinton, 2012), as ``torch.optim.RMSprop`` without momentum."""

from __future__ import annotations

import math
from typing import Any

import attrs
import numpy as np

from jitnn import validate
from jitnn._jit import jit
from jitnn.optim._base import lr_scale_field, gradient_at, gradient_grid, count_field, moment_field, LearningRate, Optimizer, as_learning_rate

__all__ = ["RMSprop", "RMSpropState", "rmsprop"]


@jit
def _rmsprop_update(param, grad, nu, learning_rate, decay, eps):
    """nu <- decay nu + (1 - decay) g**2;  p <- p - lr g / (sqrt(nu) + eps);  all (m,)."""
    new_param, new_nu = np.empty_like(param), np.empty_like(nu)
    rows, columns = gradient_grid(grad)
    for r in range(rows):
        for c in range(columns):
            i = r * columns + c
            g = np.float64(gradient_at(grad, i, r, c))
            v = decay * np.float64(nu[i]) + (1.0 - decay) * g * g
            new_nu[i] = v
            new_param[i] = np.float64(param[i]) - learning_rate * g / (math.sqrt(v) + eps)
    return new_param, new_nu


@attrs.frozen
class RMSpropState:
    """The step count and the running mean of squared gradients."""

    count: np.ndarray = count_field()
    nu: Any = moment_field()
    lr_scale: np.ndarray = lr_scale_field()


@attrs.frozen
class RMSprop(Optimizer):
    """RMSprop. Epsilon is added OUTSIDE the square root, ``g / (sqrt(nu) + eps)``, as in
    PyTorch (TensorFlow and Optax add it inside); ``decay`` is PyTorch's ``alpha``."""

    learning_rate: LearningRate = attrs.field(default=1e-2, converter=lambda v: as_learning_rate(v, "rmsprop"))
    decay: float = attrs.field(default=0.99, converter=validate.converter(validate.fraction, "rmsprop", "decay"))
    eps: float = attrs.field(default=1e-8, converter=validate.converter(validate.non_negative_real, "rmsprop", "eps"))
    kernel = staticmethod(_rmsprop_update)
    state_class = RMSpropState
    factored_gradients = True

    def kernel_config(self, learning_rate: float, step: int) -> tuple[Any, ...]:
        return (learning_rate, self.decay, self.eps)


def rmsprop(learning_rate: LearningRate = 1e-2, decay: float = 0.99, eps: float = 1e-8) -> RMSprop:
    """RMSprop; ``learning_rate`` is a number or a schedule."""
    return RMSprop(learning_rate, decay, eps)
