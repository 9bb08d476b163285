"""Learning-rate schedules against independent float64 formulas, their boundary steps, and
(where PyTorch is installed) ``torch.optim.lr_scheduler``.

A schedule is called with the number of updates made before the current one, so the first
update uses ``schedule(0)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import jitnn as jn

optim = jn.optim
STEPS = 40
RTOL = 1e-12


# --------------------------------------------------------------------------- references
def ref_constant(value):
    return lambda t: value


def ref_step_decay(init, rate, size):
    return lambda t: init * rate ** math.floor(t / size)


def ref_exponential(init, rate, steps, staircase=False):
    return lambda t: init * rate ** (math.floor(t / steps) if staircase else t / steps)


def half_cosine(start, end, fraction):
    """``start`` at fraction 0, ``end`` at fraction 1, along half a period of a cosine."""
    return end + (start - end) * (1 + np.cos(np.pi * fraction)) / 2


def ref_warmup_cosine(peak, warmup, decay, init=0.0, end=0.0):
    def at(t):
        if t < warmup:
            return init + (peak - init) * (t / warmup)
        return half_cosine(peak, end, min(t - warmup, decay - warmup) / (decay - warmup))

    return at


def ref_one_cycle(max_value, total, pct_start=0.3, div=25.0, final_div=1e4):
    """PyTorch's OneCycleLR with cosine annealing and two phases: up over steps
    ``[0, pct_start * total - 1]``, down over ``[pct_start * total - 1, total - 1]``."""
    start = max_value / div
    low = start / final_div
    peak_step = pct_start * total - 1
    last = total - 1

    def at(t):
        if t <= peak_step:
            return half_cosine(start, max_value, t / peak_step)
        return half_cosine(max_value, low, min(1.0, (t - peak_step) / (last - peak_step)))

    return at


CASES = {
    "constant": (optim.constant(0.05), ref_constant(0.05)),
    "step_decay": (optim.step_decay(0.1, 0.5, 7), ref_step_decay(0.1, 0.5, 7)),
    "step_decay_every_step": (optim.step_decay(0.3, 0.9, 1), ref_step_decay(0.3, 0.9, 1)),
    "exponential": (optim.exponential_decay(0.1, 0.3, 8), ref_exponential(0.1, 0.3, 8)),
    "exponential_staircase": (optim.exponential_decay(0.1, 0.3, 8, staircase=True), ref_exponential(0.1, 0.3, 8, True)),
    "warmup_cosine": (
        optim.warmup_cosine_decay(0.2, warmup_steps=6, decay_steps=30, init_value=0.01, end_value=0.002),
        ref_warmup_cosine(0.2, 6, 30, 0.01, 0.002),
    ),
    "warmup_cosine_defaults": (optim.warmup_cosine_decay(0.2, 5, 25), ref_warmup_cosine(0.2, 5, 25)),
    "warmup_cosine_no_warmup": (optim.warmup_cosine_decay(0.2, 0, 25, end_value=0.01), ref_warmup_cosine(0.2, 0, 25, 0.0, 0.01)),
    "one_cycle": (optim.one_cycle(0.4, 30, pct_start=0.3), ref_one_cycle(0.4, 30, 0.3)),
    "one_cycle_options": (
        optim.one_cycle(0.4, 24, pct_start=0.25, div_factor=10.0, final_div_factor=100.0),
        ref_one_cycle(0.4, 24, 0.25, 10.0, 100.0),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_schedule_matches_the_formula(name):
    schedule, reference = CASES[name]
    for t in range(STEPS):
        value = schedule(t)
        assert type(value) is float, (t, type(value))
        assert value == pytest.approx(float(reference(t)), rel=RTOL, abs=1e-300), f"{name} at step {t}"


@pytest.mark.parametrize("name", list(CASES))
def test_schedule_accepts_numpy_integers_and_is_pure(name):
    schedule, _ = CASES[name]
    for t in (0, 3, 17):
        assert schedule(np.int64(t)) == schedule(t) == schedule(np.uint8(t))
    assert [schedule(t) for t in range(10)] == [schedule(t) for t in range(10)]


def test_step_decay_boundaries():
    schedule = optim.step_decay(0.1, 0.5, 7)
    assert schedule(6) == schedule(0) == 0.1
    assert schedule(7) == pytest.approx(0.05, rel=RTOL) and schedule(13) == schedule(7)
    assert schedule(14) == pytest.approx(0.025, rel=RTOL)


def test_exponential_decay_reaches_the_rate_after_decay_steps():
    smooth = optim.exponential_decay(2.0, 0.1, 10)
    stairs = optim.exponential_decay(2.0, 0.1, 10, staircase=True)
    assert smooth(10) == pytest.approx(0.2, rel=RTOL) and stairs(10) == pytest.approx(0.2, rel=RTOL)
    assert smooth(5) == pytest.approx(2.0 * 0.1**0.5, rel=RTOL)
    assert stairs(9) == 2.0 and stairs(5) == 2.0
    values = [smooth(t) for t in range(30)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_warmup_cosine_boundaries():
    peak, warmup, decay, init, end = 0.2, 6, 30, 0.01, 0.002
    schedule = optim.warmup_cosine_decay(peak, warmup, decay, init_value=init, end_value=end)
    assert schedule(0) == pytest.approx(init, rel=RTOL)
    assert schedule(warmup - 1) == pytest.approx(init + (peak - init) * (warmup - 1) / warmup, rel=RTOL)
    assert schedule(warmup) == pytest.approx(peak, rel=RTOL)  # the end of the warm-up is the peak
    assert max(schedule(t) for t in range(decay + 10)) == pytest.approx(peak, rel=RTOL)
    halfway = warmup + (decay - warmup) // 2
    assert schedule(halfway) == pytest.approx((peak + end) / 2, rel=RTOL)
    assert schedule(decay - 1) > end
    for t in [decay, decay + 1, decay + 10, 10**6]:  # clamped to end_value
        assert schedule(t) == pytest.approx(end, rel=RTOL)
    assert optim.warmup_cosine_decay(0.2, 5, 25)(25) == pytest.approx(0.0, abs=1e-18)


def test_one_cycle_boundaries():
    max_value, total, pct_start = 0.4, 20, 0.25
    schedule = optim.one_cycle(max_value, total, pct_start=pct_start, div_factor=25.0, final_div_factor=1e4)
    values = [schedule(t) for t in range(total)]
    peak_step = int(pct_start * total - 1)
    assert values[0] == pytest.approx(max_value / 25, rel=RTOL)
    assert values[peak_step] == pytest.approx(max_value, rel=RTOL)
    assert int(np.argmax(values)) == peak_step
    assert all(a < b for a, b in zip(values[: peak_step + 1], values[1 : peak_step + 1]))
    assert all(a > b for a, b in zip(values[peak_step:], values[peak_step + 1 :]))
    assert values[-1] == pytest.approx(max_value / 25 / 1e4, rel=RTOL)
    assert int(np.argmin(values)) == total - 1
    assert schedule(total + 5) == pytest.approx(values[-1], rel=RTOL)  # past the end it stays down


# --------------------------------------------------------------------------- PyTorch
def torch_values(make_scheduler, lr, steps):
    torch = pytest.importorskip("torch")
    param = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = make_scheduler(torch, optimizer)
    values = []
    for _ in range(steps):
        values.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return values


def assert_agree(schedule, values):
    for t, value in enumerate(values):
        assert schedule(t) == pytest.approx(value, rel=RTOL), f"step {t}"


def test_step_decay_agrees_with_torch_step_lr():
    values = torch_values(lambda torch, opt: torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5), 0.1, STEPS)
    assert_agree(optim.step_decay(0.1, 0.5, 7), values)


def test_exponential_decay_agrees_with_torch_exponential_lr():
    values = torch_values(lambda torch, opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9), 0.1, STEPS)
    assert_agree(optim.exponential_decay(0.1, 0.9, 1), values)
    assert_agree(optim.exponential_decay(0.1, 0.9, 1, staircase=True), values)


@pytest.mark.parametrize(
    "total, pct_start, div_factor, final_div_factor",
    [(30, 0.3, 25.0, 1e4), (24, 0.25, 10.0, 100.0), (40, 0.5, 5.0, 1e3), (25, 0.33, 25.0, 1e4)],
)
def test_one_cycle_agrees_with_torch_one_cycle_lr(total, pct_start, div_factor, final_div_factor):
    def make(torch, opt):
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=0.4, total_steps=total, pct_start=pct_start, anneal_strategy="cos", cycle_momentum=False,
            div_factor=div_factor, final_div_factor=final_div_factor,
        )

    values = torch_values(make, 0.4, total)
    assert_agree(optim.one_cycle(0.4, total, pct_start, div_factor, final_div_factor), values)


# --------------------------------------------------------------------------- bad arguments
BAD = [
    ("constant negative", lambda: optim.constant(-0.1)),
    ("constant nan", lambda: optim.constant(np.nan)),
    ("constant inf", lambda: optim.constant(np.inf)),
    ("constant string", lambda: optim.constant("0.1")),
    ("step_decay negative init", lambda: optim.step_decay(-0.1, 0.5, 3)),
    ("step_decay negative rate", lambda: optim.step_decay(0.1, -0.5, 3)),
    ("step_decay zero step_size", lambda: optim.step_decay(0.1, 0.5, 0)),
    ("step_decay negative step_size", lambda: optim.step_decay(0.1, 0.5, -2)),
    ("step_decay fractional step_size", lambda: optim.step_decay(0.1, 0.5, 2.5)),
    ("step_decay boolean step_size", lambda: optim.step_decay(0.1, 0.5, True)),
    ("exponential negative init", lambda: optim.exponential_decay(-1.0, 0.5, 3)),
    ("exponential negative rate", lambda: optim.exponential_decay(0.1, -0.5, 3)),
    ("exponential nan rate", lambda: optim.exponential_decay(0.1, np.nan, 3)),
    ("exponential zero decay_steps", lambda: optim.exponential_decay(0.1, 0.5, 0)),
    ("warmup_cosine negative peak", lambda: optim.warmup_cosine_decay(-0.1, 5, 20)),
    ("warmup_cosine negative warmup", lambda: optim.warmup_cosine_decay(0.1, -1, 20)),
    ("warmup_cosine zero decay_steps", lambda: optim.warmup_cosine_decay(0.1, 0, 0)),
    ("warmup_cosine warmup == decay", lambda: optim.warmup_cosine_decay(0.1, 10, 10)),
    ("warmup_cosine warmup > decay", lambda: optim.warmup_cosine_decay(0.1, 12, 10)),
    ("warmup_cosine negative end", lambda: optim.warmup_cosine_decay(0.1, 2, 10, end_value=-0.01)),
    ("warmup_cosine negative init", lambda: optim.warmup_cosine_decay(0.1, 2, 10, init_value=-0.01)),
    ("one_cycle negative max", lambda: optim.one_cycle(-0.1, 20)),
    ("one_cycle pct_start 0", lambda: optim.one_cycle(0.1, 20, pct_start=0.0)),
    ("one_cycle pct_start 1", lambda: optim.one_cycle(0.1, 20, pct_start=1.0)),
    ("one_cycle pct_start 1.5", lambda: optim.one_cycle(0.1, 20, pct_start=1.5)),
    ("one_cycle pct_start negative", lambda: optim.one_cycle(0.1, 20, pct_start=-0.3)),
    ("one_cycle pct_start nan", lambda: optim.one_cycle(0.1, 20, pct_start=np.nan)),
    ("one_cycle total 0", lambda: optim.one_cycle(0.1, 0)),
    ("one_cycle total 1", lambda: optim.one_cycle(0.1, 1)),
    ("one_cycle zero div_factor", lambda: optim.one_cycle(0.1, 20, div_factor=0.0)),
    ("one_cycle zero final_div_factor", lambda: optim.one_cycle(0.1, 20, final_div_factor=0.0)),
    ("one_cycle negative div_factor", lambda: optim.one_cycle(0.1, 20, div_factor=-25.0)),
    ("one_cycle no room for the warm-up", lambda: optim.one_cycle(0.1, 20, pct_start=0.05)),
]


@pytest.mark.parametrize("make", [make for _, make in BAD], ids=[name for name, _ in BAD])
def test_bad_arguments_are_refused(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("step", [-1, -10, 2.5, np.float64(2.5), "3", None])
@pytest.mark.parametrize("name", list(CASES))
def test_a_negative_or_non_integer_step_is_refused(name, step):
    schedule, _ = CASES[name]
    with pytest.raises(ValueError, match="step"):
        schedule(step)
