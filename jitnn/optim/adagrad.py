"""Adagrad (Duchi, Hazan and Singer, 2011), as ``torch.optim.Adagrad``."""

from __future__ import annotations

import math
from typing import Any

import attrs
import numpy as np

from jitnn import tree, validate
from jitnn._checks import freeze
from jitnn._jit import jit
from jitnn.optim._base import lr_scale_field, gradient_at, gradient_grid, check_params_tree, count_field, moment_field, LearningRate, Optimizer, as_learning_rate, step_count

__all__ = ["Adagrad", "AdagradState", "adagrad"]


@jit
def _adagrad_update(param, grad, sum_of_squares, learning_rate, eps):
    """s <- s + g**2;  p <- p - lr g / (sqrt(s) + eps);  all (m,)."""
    new_param, new_sum = np.empty_like(param), np.empty_like(sum_of_squares)
    rows, columns = gradient_grid(grad)
    for r in range(rows):
        for c in range(columns):
            i = r * columns + c
            g = np.float64(gradient_at(grad, i, r, c))
            s = np.float64(sum_of_squares[i]) + g * g
            new_sum[i] = s
            new_param[i] = np.float64(param[i]) - learning_rate * g / (math.sqrt(s) + eps)
    return new_param, new_sum


@attrs.frozen
class AdagradState:
    """The step count and the running sum of squared gradients."""

    count: np.ndarray = count_field()
    sum_of_squares: Any = moment_field()
    lr_scale: np.ndarray = lr_scale_field()


@attrs.frozen
class Adagrad(Optimizer):
    """Adagrad: ``s <- s + g**2``, ``p <- p - lr g / (sqrt(s) + eps)``; epsilon outside the
    square root and the sum started at ``initial_accumulator``, as in PyTorch."""

    learning_rate: LearningRate = attrs.field(default=1e-2, converter=lambda v: as_learning_rate(v, "adagrad"))
    eps: float = attrs.field(default=1e-10, converter=validate.converter(validate.non_negative_real, "adagrad", "eps"))
    initial_accumulator: float = attrs.field(default=0.0, converter=validate.converter(validate.non_negative_real, "adagrad", "initial_accumulator"))
    kernel = staticmethod(_adagrad_update)
    state_class = AdagradState
    factored_gradients = True

    def init(self, params: Any) -> AdagradState:
        check_params_tree(params, "adagrad.init")
        start = self.initial_accumulator
        return AdagradState(step_count(0), tree.map(lambda p: freeze(np.full_like(p, start)), params, trainable=True))

    def kernel_config(self, learning_rate: float, step: int) -> tuple[Any, ...]:
        return (learning_rate, self.eps)


def adagrad(learning_rate: LearningRate = 1e-2, eps: float = 1e-10, initial_accumulator: float = 0.0) -> Adagrad:
    """Adagrad; ``learning_rate`` is a number or a schedule."""
    return Adagrad(learning_rate, eps, initial_accumulator)
