"""benchmarks/revisions.py without timing anything: its arguments, its statistics and
verdicts on made-up numbers, and one request of its worker protocol answered in-process."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
try:
    import revisions
finally:
    sys.path.remove(str(BENCHMARKS))


def rounds_of(values: list[float], rounds: int = 3, repeats: int = 20, scale: float = 1.0) -> list[list[float]]:
    """``rounds`` rounds of ``repeats`` times cycling through ``values`` (times ``scale``)."""
    return [[values[(r + i) % len(values)] * scale for i in range(repeats)] for r in range(rounds)]


# --------------------------------------------------------------------------- arguments
def test_base_is_required(capsys):
    with pytest.raises(SystemExit):
        revisions.parse_args([])
    assert "--base" in capsys.readouterr().err


def test_defaults_and_group_selection():
    args = revisions.parse_args(["--base", "main"])
    assert args.base == "main" and args.head is None
    assert args.groups == revisions.GROUPS
    assert (args.seconds, args.min_repeats, args.rounds, args.processes) == revisions.BUDGETS["full"]
    args = revisions.parse_args(["--base", "abc123", "--head", "../tree", "layernorm", "conv", "--budget", "small"])
    assert args.head == "../tree"
    assert args.groups == ("conv", "layernorm")  # in the report's order
    assert (args.timing.seconds, args.timing.min_repeats, args.timing.rounds, args.processes) == revisions.BUDGETS["small"]


def test_budget_overrides_and_bad_values(capsys):
    args = revisions.parse_args(["--base", "main", "--budget", "small", "--rounds", "4", "--seconds", "0.5"])
    assert (args.timing.seconds, args.timing.min_repeats, args.timing.rounds) == (0.5, revisions.BUDGETS["small"][1], 4)
    assert revisions.parse_args(["--base", "main", "--rounds", "1"]).processes == 1  # never more pairs than rounds
    assert revisions.parse_args(["--base", "main", "--processes", "3"]).processes == 3
    for bad in (["mlp", "gpu"], ["--rounds", "0"], ["--noise-floor", "1.5"], ["--budget", "huge"],
                ["--rounds", "2", "--processes", "3"], ["--processes", "0"]):
        with pytest.raises(SystemExit):
            revisions.parse_args(["--base", "main", *bad])
    capsys.readouterr()


def test_worker_arguments_are_not_options():
    with pytest.raises(SystemExit):  # "--worker" is only understood alone with a side, as the parent starts it
        revisions.parse_args(["--base", "main", "--worker", "base"])


# --------------------------------------------------------------------------- statistics
SPREAD = [0.98, 1.0, 1.02, 0.99, 1.01]  # about +-1 % around 1


def test_identical_times_are_the_same():
    result = revisions.compare(rounds_of(SPREAD), rounds_of(SPREAD))
    assert result.ratio == 1.0
    assert result.verdict == "same"
    assert result.noise == revisions.DEFAULT_NOISE_FLOOR  # the spreads are below the floor
    assert result.rounds == 3 and result.faster_rounds == 0 and result.slower_rounds == 0


def test_clearly_faster_and_slower():
    base = rounds_of(SPREAD, scale=1e-3)
    faster = revisions.compare(base, rounds_of(SPREAD, scale=0.8e-3))
    assert faster.verdict == "faster" and faster.faster_rounds == 3
    assert faster.ratio == pytest.approx(0.8)
    assert faster.base_median == pytest.approx(1e-3) and faster.head_median == pytest.approx(0.8e-3)
    slower = revisions.compare(base, rounds_of(SPREAD, scale=1.25e-3))
    assert slower.verdict == "slower" and slower.slower_rounds == 3
    assert slower.ratio == pytest.approx(1.25)


def test_within_the_noise_floor_is_the_same():
    base = rounds_of(SPREAD)
    assert revisions.compare(base, rounds_of(SPREAD, scale=0.98)).verdict == "same"
    assert revisions.compare(base, rounds_of(SPREAD, scale=1.02)).verdict == "same"
    assert revisions.compare(base, rounds_of(SPREAD, scale=0.98), noise_floor=0.01).verdict == "faster"


def test_the_spread_widens_the_band():
    wide = [0.7, 0.85, 1.0, 1.15, 1.3]  # half IQR 15 %
    result = revisions.compare(rounds_of(wide), rounds_of(wide, scale=0.9))
    assert result.noise == pytest.approx(0.15, rel=0.05)
    assert result.verdict == "same"  # 10 % faster is inside +-15 %


def test_one_contrary_round_blocks_the_verdict():
    base = rounds_of(SPREAD, rounds=5)
    head = rounds_of(SPREAD, rounds=5, scale=0.7)
    head[1] = [value * 1.05 for value in base[1]]  # a burst of load during one of the head's turns
    result = revisions.compare(base, head)
    assert result.ratio < 1 - result.noise  # the pooled medians alone would say faster
    assert result.faster_rounds == 4 and result.slower_rounds == 1
    assert result.verdict == "same"


def test_compare_refuses_mismatched_rounds():
    with pytest.raises(ValueError):
        revisions.compare([[1.0]], [[1.0], [1.0]])
    with pytest.raises(ValueError):
        revisions.compare([], [])
    with pytest.raises(ValueError):
        revisions.compare([[1.0], []], [[1.0], [1.0]])


def test_repeats_per_turn():
    budget = revisions.Budget(seconds=0.3, min_repeats=6, rounds=3, max_repeats=1000)
    assert revisions.repeats_per_turn([1e-3, 2e-3], budget) == 50  # 0.1 s per turn at the slower side's 2 ms
    assert revisions.repeats_per_turn([0.5, 0.1], budget) == 2  # at least min_repeats over the rounds
    assert revisions.repeats_per_turn([1e-9, 1e-9], budget) == 333  # at most max_repeats over the rounds


def test_split_rounds():
    assert revisions.split_rounds(6, 2) == [range(0, 3), range(3, 6)]
    assert revisions.split_rounds(8, 3) == [range(0, 3), range(3, 6), range(6, 8)]
    assert revisions.split_rounds(4, 1) == [range(0, 4)]
    with pytest.raises(ValueError):
        revisions.split_rounds(2, 3)


def test_fingerprint_difference():
    assert revisions.fingerprint_difference([2.0, 1.0, 5.0, -3.0], [2.0, 1.0, 5.0, -3.0]) == 0.0
    assert revisions.fingerprint_difference([2.0, 1.0], [2.0, 1.002]) == pytest.approx(1e-3)
    assert revisions.fingerprint_difference([2.0, 1.0], [2.0, 1.0, 1.0, 1.0]) == math.inf
    assert math.isnan(revisions.fingerprint_difference([2.0, math.nan], [2.0, 1.0]))


# --------------------------------------------------------------------------- the protocol
def test_run_request_times_the_requested_calls():
    calls = []
    state = {"cases": {"c": revisions.Case("g", "c", lambda: calls.append(1))}}
    reply = revisions._answer("base", {"op": "run", "case": "c", "repeats": 4, "warmup": 2}, state)
    assert reply["ok"] and len(reply["times"]) == 4 and all(t >= 0 for t in reply["times"])
    assert len(calls) == 6  # two untimed, four timed
    with pytest.raises(ValueError):
        revisions._answer("base", {"op": "nonsense"}, state)


def test_unknown_revision_is_refused():
    with pytest.raises(ValueError):
        revisions.resolve_revision("no-such-revision-anywhere")
