"""Gradient accumulation: :func:`multi_steps` applies an optimizer every ``k`` batches to the
mean of their gradients, as Optax's ``MultiSteps``."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from jitnn import validate
from jitnn._jit import jit
from jitnn.optim._base import check_params_tree, count_field, map_kernel, moment_field, step_count, zeros_like_tree

__all__ = ["MultiSteps", "MultiStepsState", "multi_steps"]


@jit
def _accumulate(total, grad):
    """total + grad, in the arrays' dtype;  (m,) -> (m,)."""
    out = np.empty_like(total)
    for i in range(total.size):
        out[i] = total[i] + grad[i]
    return (out,)


@jit
def _mean(total, count):
    """total / count, in float64 rounded once;  (m,) -> (m,)."""
    out = np.empty_like(total)
    for i in range(total.size):
        out[i] = np.float64(total[i]) / count
    return (out,)


@attrs.frozen
class MultiStepsState:
    """The batches accumulated since the last update (``mini_step``), the sum of their
    gradients (a tree like the parameters) and the inner optimizer's state."""

    mini_step: np.ndarray = count_field()
    total: Any = moment_field()
    optimizer: Any = None


def _check_optimizer(value: Any) -> None:
    if not (callable(getattr(value, "init", None)) and callable(getattr(value, "update", None))):
        raise TypeError(f"multi_steps: optimizer must have init and update (jn.optim.adam(...), ...), got {value!r}")


@attrs.frozen
class MultiSteps:
    """An optimizer that sums the gradients of ``every`` batches and, at the last of them,
    runs ``optimizer`` once on their mean; the parameters stay as they are (the same arrays)
    in between. Its state holds the inner one (``state.optimizer``), whose step count then
    counts the updates made, not the batches seen.

    The compiled step runs it after its compiled forward and backward pass (``step.fused``
    is false), as any optimizer that is not a named one.
    """

    optimizer: Any = attrs.field(validator=lambda self, attribute, value: _check_optimizer(value))
    every: int = attrs.field(converter=validate.converter(validate.positive_int, "multi_steps", "every"))

    @property
    def name(self) -> str:
        return f"multi_steps({getattr(self.optimizer, 'name', type(self.optimizer).__name__)}, {self.every})"

    def init(self, params: Any) -> MultiStepsState:
        check_params_tree(params, "multi_steps.init")
        return MultiStepsState(step_count(0), zeros_like_tree(params), self.optimizer.init(params))

    def update(self, params: Any, grads: Any, state: MultiStepsState) -> tuple[Any, MultiStepsState]:
        who = "multi_steps.update"
        if not isinstance(state, MultiStepsState):
            raise TypeError(f"{who}: state must be the MultiStepsState from multi_steps(...).init, got {type(state).__name__}")
        (total,) = map_kernel(_accumulate, [state.total, grads], (), 1, who, ["the state's total", "grads"])
        mini_step = int(state.mini_step) + 1
        if mini_step < self.every:
            return params, MultiStepsState(step_count(mini_step), total, state.optimizer)
        (mean,) = map_kernel(_mean, [total], (float(self.every),), 1, who, ["the state's total"])
        params, inner = self.optimizer.update(params, mean, state.optimizer)
        return params, MultiStepsState(step_count(0), zeros_like_tree(params), inner)


def multi_steps(optimizer: Any, every: int) -> MultiSteps:
    """``optimizer`` applied once every ``every`` batches, to the mean of their gradients
    (gradient accumulation: the update of a batch ``every`` times larger, in the memory of one)."""
    return MultiSteps(optimizer, every)
