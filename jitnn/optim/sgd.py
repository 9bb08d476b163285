"""Stochastic gradient descent, plain and with momentum (PyTorch's ``SGD`` conventions)."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from jitnn import validate
from jitnn._jit import jit
from jitnn.optim._base import lr_scale_field, gradient_at, gradient_grid, count_field, moment_field, LearningRate, Optimizer, as_learning_rate

__all__ = ["SGD", "SGDState", "sgd", "Momentum", "MomentumState", "momentum"]


@jit
def _sgd_update(param, grad, learning_rate):
    """p - lr g (in float64, rounded once);  param, grad (m,) -> (new param,)."""
    out = np.empty_like(param)
    rows, columns = gradient_grid(grad)
    for r in range(rows):
        for c in range(columns):
            i = r * columns + c
            out[i] = np.float64(param[i]) - learning_rate * np.float64(gradient_at(grad, i, r, c))
    return (out,)


@attrs.frozen
class SGDState:
    """Plain SGD keeps only the step count (for learning-rate schedules)."""

    count: np.ndarray = count_field()
    lr_scale: np.ndarray = lr_scale_field()


@attrs.frozen
class SGD(Optimizer):
    """``p <- p - lr * g``."""

    learning_rate: LearningRate = attrs.field(converter=lambda v: as_learning_rate(v, "sgd"))
    kernel = staticmethod(_sgd_update)
    state_class = SGDState
    factored_gradients = True

    def kernel_config(self, learning_rate: float, step: int) -> tuple[Any, ...]:
        return (learning_rate,)


def sgd(learning_rate: LearningRate) -> SGD:
    """Plain SGD; ``learning_rate`` is a number or a schedule."""
    return SGD(learning_rate)


@jit
def _momentum_update(param, grad, velocity, learning_rate, beta, nesterov):
    """v <- beta v + g;  p <- p - lr (g + beta v if nesterov else v);  all (m,)."""
    new_param, new_velocity = np.empty_like(param), np.empty_like(velocity)
    rows, columns = gradient_grid(grad)
    for r in range(rows):
        for c in range(columns):
            i = r * columns + c
            g = np.float64(gradient_at(grad, i, r, c))
            v = beta * np.float64(velocity[i]) + g
            new_velocity[i] = v
            new_param[i] = np.float64(param[i]) - learning_rate * (g + beta * v if nesterov else v)
    return new_param, new_velocity


@attrs.frozen
class MomentumState:
    """The step count and the velocity (a tree of the parameters' structure)."""

    count: np.ndarray = count_field()
    velocity: Any = moment_field()
    lr_scale: np.ndarray = lr_scale_field()


@attrs.frozen
class Momentum(Optimizer):
    """SGD with (heavy-ball or Nesterov) momentum, as ``torch.optim.SGD(momentum=beta,
    nesterov=...)`` with no dampening: ``v <- beta v + g``, ``p <- p - lr v`` (Nesterov:
    ``p <- p - lr (g + beta v)``). The first velocity is ``g``, as in PyTorch."""

    learning_rate: LearningRate = attrs.field(converter=lambda v: as_learning_rate(v, "momentum"))
    beta: float = attrs.field(default=0.9, converter=validate.converter(validate.fraction, "momentum", "beta"))
    nesterov: bool = attrs.field(default=False, converter=validate.converter(validate.flag, "momentum", "nesterov"))
    kernel = staticmethod(_momentum_update)
    state_class = MomentumState
    factored_gradients = True

    def kernel_config(self, learning_rate: float, step: int) -> tuple[Any, ...]:
        return (learning_rate, self.beta, self.nesterov)


def momentum(learning_rate: LearningRate, beta: float = 0.9, nesterov: bool = False) -> Momentum:
    """SGD with momentum ``beta`` (Nesterov's variant when ``nesterov``)."""
    return Momentum(learning_rate, beta, nesterov)
