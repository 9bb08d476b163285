"""Gradient transforms, and ``chain`` to put them in front of an optimizer (as Optax).

A transform is a frozen record with two pure methods, ``state = t.init(params)`` and
``grads, state = t.update(grads, state, params)``. ``chain(t1, t2, optimizer)`` applies
``t1`` then ``t2`` to the gradients, then the optimizer, and is itself an optimizer.
Each transform is one kernel per array, so each costs a pass over memory (clipping by
global norm costs two: the norm, then the scaling); the named optimizers fuse their whole
rule into one kernel per array instead (``benchmarks/optim_update.py`` measures Adam with
and without clipping in front).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import attrs
import numpy as np

from jitnn import validate
from jitnn._checks import readonly
from jitnn._jit import jit
from jitnn.optim._base import count_field, as_learning_rate, float_leaves, learning_rate_at, map_kernel, step_count

__all__ = [
    "GradientTransform", "EmptyState", "CountState", "ChainState", "OptimizerChain",
    "clip_by_global_norm", "clip_by_value", "add_decayed_weights", "scale", "scale_by_schedule", "check_finite", "chain",
]


@jit
def _sum_of_squares(x):
    """sum(x**2) in float64;  x (m,) -> float."""
    total = 0.0
    for i in range(x.size):
        total += np.float64(x[i]) * np.float64(x[i])
    return total


@jit
def _scale(x, factor):
    """factor x;  x (m,) -> (m,)."""
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = factor * np.float64(x[i])
    return (out,)


@jit
def _clip(x, limit):
    """x clipped to [-limit, limit];  x (m,) -> (m,)."""
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = min(max(x[i], -limit), limit)
    return (out,)


@jit
def _add_decayed_weights(grad, param, weight_decay):
    """grad + weight_decay param;  (m,) -> (m,)."""
    out = np.empty_like(grad)
    for i in range(grad.size):
        out[i] = np.float64(grad[i]) + weight_decay * np.float64(param[i])
    return (out,)


@jit
def _first_non_finite(x):
    """Index of the first NaN or infinity in x (m,), or -1."""
    for i in range(x.size):
        if not np.isfinite(x[i]):
            return i
    return -1


@attrs.frozen
class EmptyState:
    """The state of a transform that keeps none."""


@attrs.frozen
class CountState:
    """The state of a transform that counts its updates."""

    count: np.ndarray = count_field()


class GradientTransform:
    """Base of the transforms: ``init(params) -> state``, ``update(grads, state, params)
    -> (grads, state)``. Stateless transforms define only :meth:`transform`."""

    __slots__ = ()

    def init(self, params: Any) -> Any:
        return EmptyState()

    def update(self, grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
        if not isinstance(state, EmptyState):
            raise TypeError(f"{type(self).__name__}.update: state must be the EmptyState from init, got {type(state).__name__}")
        return self.transform(grads, params), state

    def transform(self, grads: Any, params: Any) -> Any:
        raise NotImplementedError


def _map_grads(kernel: Callable[..., tuple], grads: Any, config: tuple, who: str) -> Any:
    return map_kernel(kernel, [grads], config, 1, who, ["grads"])[0]


@attrs.frozen
class ClipByGlobalNorm(GradientTransform):
    """Scale all gradients by ``max_norm / norm`` when their global L2 norm exceeds
    ``max_norm`` (as Optax's ``clip_by_global_norm``)."""

    max_norm: float = attrs.field(converter=validate.converter(validate.non_negative_real, "clip_by_global_norm", "max_norm"))

    def transform(self, grads: Any, params: Any) -> Any:
        leaves = float_leaves(grads, "clip_by_global_norm", "grads")
        norm = math.sqrt(sum(_sum_of_squares(readonly(g.reshape(-1))) for _, g in leaves))
        if norm <= self.max_norm:
            return grads
        return _map_grads(_scale, grads, (self.max_norm / norm,), "clip_by_global_norm")


@attrs.frozen
class ClipByValue(GradientTransform):
    """Clip every gradient element to ``[-limit, limit]``."""

    limit: float = attrs.field(converter=validate.converter(validate.non_negative_real, "clip_by_value", "limit"))

    def transform(self, grads: Any, params: Any) -> Any:
        return _map_grads(_clip, grads, (self.limit,), "clip_by_value")


@attrs.frozen
class AddDecayedWeights(GradientTransform):
    """L2 weight decay: ``g <- g + weight_decay * p`` (PyTorch's ``weight_decay`` argument
    of ``SGD``, ``Adam``, ``RMSprop``; for decoupled decay use ``adamw``)."""

    weight_decay: float = attrs.field(converter=validate.converter(validate.non_negative_real, "add_decayed_weights", "weight_decay"))

    def transform(self, grads: Any, params: Any) -> Any:
        return map_kernel(_add_decayed_weights, [grads, params], (self.weight_decay,), 1, "add_decayed_weights", ["grads", "params"])[0]


@attrs.frozen
class Scale(GradientTransform):
    """Multiply every gradient by ``factor``."""

    factor: float = attrs.field(converter=validate.converter(validate.real, "scale", "factor"))

    def transform(self, grads: Any, params: Any) -> Any:
        return _map_grads(_scale, grads, (self.factor,), "scale")


@attrs.frozen
class CheckFinite(GradientTransform):
    """Raise ``ValueError`` naming the parameter whose gradient first holds a NaN or an
    infinity. Leave it out of the chain and it costs nothing."""

    def transform(self, grads: Any, params: Any) -> Any:
        for path, grad in float_leaves(grads, "check_finite", "grads"):
            index = _first_non_finite(readonly(grad.reshape(-1)))
            if index >= 0:
                where = np.unravel_index(index, grad.shape)
                raise ValueError(
                    f"check_finite: the gradient of {path or 'the parameter'} holds {grad.reshape(-1)[index]} "
                    f"at index {tuple(int(i) for i in where)}"
                )
        return grads


@attrs.frozen
class ScaleBySchedule(GradientTransform):
    """Multiply every gradient by ``schedule(step)``, counting its own updates."""

    schedule: Callable[[int], float] = attrs.field(converter=lambda v: as_learning_rate(v, "scale_by_schedule"))

    def init(self, params: Any) -> CountState:
        return CountState(step_count(0))

    def update(self, grads: Any, state: Any, params: Any) -> tuple[Any, CountState]:
        if not isinstance(state, CountState):
            raise TypeError(f"scale_by_schedule.update: state must be the CountState from init, got {type(state).__name__}")
        count = int(state.count)
        factor = learning_rate_at(self.schedule, count, "scale_by_schedule")
        return _map_grads(_scale, grads, (factor,), "scale_by_schedule"), CountState(step_count(count + 1))


@attrs.frozen
class ChainState:
    """The states of a chain's transforms, then of its optimizer."""

    transforms: tuple[Any, ...]
    optimizer: Any


@attrs.frozen
class OptimizerChain:
    """Transforms applied to the gradients in order, then an optimizer; an optimizer itself."""

    transforms: tuple[GradientTransform, ...]
    optimizer: Any

    def init(self, params: Any) -> ChainState:
        return ChainState(tuple(t.init(params) for t in self.transforms), self.optimizer.init(params))

    def update(self, params: Any, grads: Any, state: ChainState) -> tuple[Any, ChainState]:
        if not isinstance(state, ChainState) or len(state.transforms) != len(self.transforms):
            raise TypeError(f"chain.update: state must be the ChainState from this chain's init, got {type(state).__name__}")
        transform_states = []
        for transform, transform_state in zip(self.transforms, state.transforms):
            grads, transform_state = transform.update(grads, transform_state, params)
            transform_states.append(transform_state)
        params, optimizer_state = self.optimizer.update(params, grads, state.optimizer)
        return params, ChainState(tuple(transform_states), optimizer_state)


def chain(*steps: Any) -> OptimizerChain:
    """``chain(transform, ..., optimizer)``: the transforms in order, then the optimizer."""
    if not steps:
        raise ValueError("chain: give at least an optimizer")
    *transforms, optimizer = steps
    for i, transform in enumerate(transforms):
        if not isinstance(transform, GradientTransform):
            raise TypeError(f"chain: argument {i} must be a gradient transform (clip_by_global_norm, ...), got {type(transform).__name__}")
    if isinstance(optimizer, GradientTransform) or not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"chain: the last argument must be an optimizer (sgd, adam, ...), got {type(optimizer).__name__}")
    return OptimizerChain(tuple(transforms), optimizer)


def clip_by_global_norm(max_norm: float) -> ClipByGlobalNorm:
    """Rescale the gradients so that their global L2 norm is at most ``max_norm``."""
    return ClipByGlobalNorm(max_norm)


def clip_by_value(limit: float) -> ClipByValue:
    """Clip each gradient element to ``[-limit, limit]``."""
    return ClipByValue(limit)


def add_decayed_weights(weight_decay: float) -> AddDecayedWeights:
    """L2 weight decay added to the gradients: ``g + weight_decay * p``."""
    return AddDecayedWeights(weight_decay)


def scale(factor: float) -> Scale:
    """Multiply the gradients by a constant ``factor``."""
    return Scale(factor)


def scale_by_schedule(schedule: Any) -> ScaleBySchedule:
    """Multiply the gradients by ``schedule(step)`` (learning-rate scaling as a transform)."""
    return ScaleBySchedule(schedule)


def check_finite() -> CheckFinite:
    """Refuse gradients holding NaN or infinity, naming the parameter."""
    return CheckFinite()
