"""Adam and AdamW (Kingma and Ba, 2015; Loshchilov and Hutter, 2019), as ``torch.optim``."""

from __future__ import annotations

import math
from typing import Any

import attrs
import numpy as np

from jitnn import validate
from jitnn._jit import jit
from jitnn.optim._base import lr_scale_field, gradient_at, gradient_grid, count_field, moment_field, LearningRate, Optimizer, as_learning_rate

__all__ = ["Adam", "AdamW", "AdamState", "adam", "adamw"]


@jit
def _adam_update(param, grad, mu, nu, hyper):
    """One Adam(W) step;  hyper = (lr, b1, b2, eps, lr / (1 - b1**t), 1 / sqrt(1 - b2**t), decay).

    p <- p (1 - lr decay) - lr (mu / (1 - b1**t)) / (sqrt(nu) / sqrt(1 - b2**t) + eps)
    with mu <- b1 mu + (1 - b1) g and nu <- b2 nu + (1 - b2) g**2;  all (m,).
    """
    learning_rate, b1, b2, eps, step_size, inverse_root_correction2, decay = hyper
    new_param, new_mu, new_nu = np.empty_like(param), np.empty_like(mu), np.empty_like(nu)
    rows, columns = gradient_grid(grad)
    for r in range(rows):
        for c in range(columns):
            i = r * columns + c
            g = np.float64(gradient_at(grad, i, r, c))
            m = b1 * np.float64(mu[i]) + (1.0 - b1) * g
            v = b2 * np.float64(nu[i]) + (1.0 - b2) * g * g
            new_mu[i], new_nu[i] = m, v
            denominator = math.sqrt(v) * inverse_root_correction2 + eps
            new_param[i] = np.float64(param[i]) * (1.0 - learning_rate * decay) - step_size * m / denominator
    return new_param, new_mu, new_nu


@attrs.frozen
class AdamState:
    """The step count and the first and second moment estimates (trees like the params)."""

    count: np.ndarray = count_field()
    mu: Any = moment_field()
    nu: Any = moment_field()
    lr_scale: np.ndarray = lr_scale_field()


@attrs.frozen
class Adam(Optimizer):
    """Adam with bias correction; epsilon is added to ``sqrt(v_hat)`` (as PyTorch)."""

    learning_rate: LearningRate = attrs.field(default=1e-3, converter=lambda v: as_learning_rate(v, "adam"))
    b1: float = attrs.field(default=0.9, converter=validate.converter(validate.fraction, "adam", "b1"))
    b2: float = attrs.field(default=0.999, converter=validate.converter(validate.fraction, "adam", "b2"))
    eps: float = attrs.field(default=1e-8, converter=validate.converter(validate.non_negative_real, "adam", "eps"))
    kernel = staticmethod(_adam_update)
    state_class = AdamState
    factored_gradients = True

    def decoupled_decay(self) -> float:
        """The decoupled weight decay (none for Adam)."""
        return 0.0

    def kernel_config(self, learning_rate: float, step: int) -> tuple[Any, ...]:
        step_size = learning_rate / (1.0 - self.b1**step)
        inverse_root_correction2 = 1.0 / math.sqrt(1.0 - self.b2**step)
        return ((learning_rate, self.b1, self.b2, self.eps, step_size, inverse_root_correction2, self.decoupled_decay()),)


@attrs.frozen
class AdamW(Adam):
    """Adam with decoupled weight decay: ``p <- p (1 - lr weight_decay)`` before the Adam
    step, as ``torch.optim.AdamW`` (the decay is scaled by the learning rate)."""

    weight_decay: float = attrs.field(default=0.01, converter=validate.converter(validate.non_negative_real, "adamw", "weight_decay"))

    def decoupled_decay(self) -> float:
        return self.weight_decay


def adam(learning_rate: LearningRate = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Adam:
    """Adam; ``learning_rate`` is a number or a schedule."""
    return Adam(learning_rate, b1, b2, eps)


def adamw(learning_rate: LearningRate = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.01) -> AdamW:
    """AdamW (decoupled weight decay); ``learning_rate`` is a number or a schedule."""
    return AdamW(learning_rate, b1, b2, eps, weight_decay)
