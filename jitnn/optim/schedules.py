"""Learning-rate schedules: pure functions of the step count.

A schedule is a frozen record called as ``schedule(step) -> float``, where ``step`` is the
number of updates made before this one (0 for the first). Every optimizer accepts a number
or a schedule (or any function of the step count) as its learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

from jitnn import validate

__all__ = ["Schedule", "Constant", "constant", "step_decay", "exponential_decay", "warmup_cosine_decay", "one_cycle"]

_WHO = "schedule"  # the name the schedules' messages start with


def _nonnegative(name: str) -> Callable[[Any], float]:
    return validate.converter(validate.non_negative_real, _WHO, name)


def _at_least(name: str, low: int = 1) -> Callable[[Any], int]:
    return validate.converter(validate.integer, _WHO, name, low=low)


def _cosine(start: float, end: float, fraction: float) -> float:
    """From ``start`` (fraction 0) to ``end`` (fraction 1) along half a cosine."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * fraction))


class Schedule:
    """Base of the schedules: ``schedule(step) -> float``."""

    __slots__ = ()

    def __call__(self, step: int) -> float:
        return self.at(validate.non_negative_int(step, _WHO, "the step count"))

    def at(self, step: int) -> float:
        raise NotImplementedError


@attrs.frozen
class Constant(Schedule):
    """``value`` at every step."""

    value: float = attrs.field(converter=_nonnegative("value"))

    def at(self, step: int) -> float:
        return self.value


@attrs.frozen
class StepDecay(Schedule):
    """``init_value * decay_rate ** (step // step_size)``."""

    init_value: float = attrs.field(converter=_nonnegative("init_value"))
    decay_rate: float = attrs.field(converter=_nonnegative("decay_rate"))
    step_size: int = attrs.field(converter=_at_least("step_size"))

    def at(self, step: int) -> float:
        return self.init_value * self.decay_rate ** (step // self.step_size)


@attrs.frozen
class ExponentialDecay(Schedule):
    """``init_value * decay_rate ** (step / decay_steps)`` (``step // decay_steps`` when
    ``staircase``)."""

    init_value: float = attrs.field(converter=_nonnegative("init_value"))
    decay_rate: float = attrs.field(converter=_nonnegative("decay_rate"))
    decay_steps: int = attrs.field(converter=_at_least("decay_steps"))
    staircase: bool = attrs.field(default=False, converter=validate.converter(validate.flag, _WHO, "staircase"))

    def at(self, step: int) -> float:
        exponent = step // self.decay_steps if self.staircase else step / self.decay_steps
        return self.init_value * self.decay_rate**exponent


@attrs.frozen
class WarmupCosineDecay(Schedule):
    """Linear warm-up from ``init_value`` to ``peak_value`` over ``warmup_steps``, then a
    cosine decay to ``end_value`` at ``decay_steps`` (counted from the start, warm-up
    included, as in Optax), then ``end_value``."""

    peak_value: float = attrs.field(converter=_nonnegative("peak_value"))
    warmup_steps: int = attrs.field(converter=_at_least("warmup_steps", 0))
    decay_steps: int = attrs.field(converter=_at_least("decay_steps"))
    init_value: float = attrs.field(default=0.0, converter=_nonnegative("init_value"))
    end_value: float = attrs.field(default=0.0, converter=_nonnegative("end_value"))

    def __attrs_post_init__(self) -> None:
        if self.decay_steps <= self.warmup_steps:
            raise ValueError(f"warmup_cosine_decay: decay_steps ({self.decay_steps}) must exceed warmup_steps ({self.warmup_steps})")

    def at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.init_value + (self.peak_value - self.init_value) * step / self.warmup_steps
        fraction = min(step - self.warmup_steps, self.decay_steps - self.warmup_steps) / (self.decay_steps - self.warmup_steps)
        return _cosine(self.peak_value, self.end_value, fraction)


@attrs.frozen
class OneCycle(Schedule):
    """The one-cycle policy (Smith and Topin, 2017) as PyTorch's ``OneCycleLR`` with cosine
    annealing: from ``max_value / div_factor`` up to ``max_value`` over the first
    ``pct_start`` of ``total_steps``, then down to ``max_value / div_factor /
    final_div_factor`` at the last step."""

    max_value: float = attrs.field(converter=_nonnegative("max_value"))
    total_steps: int = attrs.field(converter=_at_least("total_steps", 2))
    pct_start: float = attrs.field(default=0.3, converter=validate.converter(validate.real, _WHO, "pct_start", low=0, high=1, low_open=True, high_open=True))
    div_factor: float = attrs.field(default=25.0, converter=_nonnegative("div_factor"))
    final_div_factor: float = attrs.field(default=1e4, converter=_nonnegative("final_div_factor"))

    def __attrs_post_init__(self) -> None:
        if self.div_factor <= 0 or self.final_div_factor <= 0:
            raise ValueError("one_cycle: div_factor and final_div_factor must be positive")
        if not 0 < self.pct_start * self.total_steps - 1 < self.total_steps - 1:
            raise ValueError(f"one_cycle: pct_start={self.pct_start} leaves no room for both phases in {self.total_steps} steps")

    def at(self, step: int) -> float:
        initial = self.max_value / self.div_factor
        peak_step = self.pct_start * self.total_steps - 1
        last_step = self.total_steps - 1
        if step <= peak_step:
            return _cosine(initial, self.max_value, step / peak_step)
        return _cosine(self.max_value, initial / self.final_div_factor, min(step - peak_step, last_step - peak_step) / (last_step - peak_step))


def constant(value: float) -> Constant:
    """The same learning rate at every step."""
    return Constant(value)


def step_decay(init_value: float, decay_rate: float, step_size: int) -> StepDecay:
    """Multiply by ``decay_rate`` every ``step_size`` steps (PyTorch's ``StepLR``)."""
    return StepDecay(init_value, decay_rate, step_size)


def exponential_decay(init_value: float, decay_rate: float, decay_steps: int, staircase: bool = False) -> ExponentialDecay:
    """Decay by ``decay_rate`` every ``decay_steps``, smoothly or in stairs."""
    return ExponentialDecay(init_value, decay_rate, decay_steps, staircase)


def warmup_cosine_decay(peak_value: float, warmup_steps: int, decay_steps: int, init_value: float = 0.0, end_value: float = 0.0) -> WarmupCosineDecay:
    """Linear warm-up then cosine decay (Optax's ``warmup_cosine_decay_schedule``)."""
    return WarmupCosineDecay(peak_value, warmup_steps, decay_steps, init_value, end_value)


def one_cycle(max_value: float, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0, final_div_factor: float = 1e4) -> OneCycle:
    """The one-cycle policy (PyTorch's ``OneCycleLR``, cosine annealing)."""
    return OneCycle(max_value, total_steps, pct_start, div_factor, final_div_factor)
