#!/usr/bin/env python
"""Benchmark two jitnn source trees side by side, in one run: a base revision and a head.

    python benchmarks/revisions.py --base REV [--head PATH_OR_REV] [--budget small|full] [GROUP ...]

``--base`` is a git revision of this repository; its files are extracted with ``git archive
REV | tar -x`` into a temporary folder, removed at the end. ``--head`` is a folder holding a
jitnn source tree (the default: this working tree, uncommitted changes included) or another
git revision, extracted the same way. Each side runs in its own long-lived worker process
(this script with ``--worker``) started with ``PYTHONPATH=<tree>`` and its own new, empty
``NUMBA_CACHE_DIR`` (or, with ``--cache-dir``, its own folder kept between runs), so the two
never share compiled code; the environment is otherwise unchanged. The parent and a worker
speak JSON lines over the worker's stdin and stdout: set the cases up, time ``repeats``
calls of one case, describe yourself, quit.

Each worker builds every case of the chosen groups from jitnn's public API only (so the
same case code runs on both revisions), calls each once (timed: the compilation or cache
load, "first call") and then ``warmup`` more times, so that nothing compiles while timing.
Then the cases are timed one after the other. A case is timed in ``rounds`` rounds; in each
round both workers take a turn, base first in even rounds and head first in odd ones (so
with an even number of rounds, as in both budgets, each side goes first equally often and a
load that rises or falls during a case favours neither), each turn after a short pause
(OpenBLAS's threads in the other process stop spinning) and one untimed call, then ``repeats`` timed
calls, the same number on both sides, chosen from a few calls of each side just before the
case's rounds so that a case takes about ``--seconds`` per side. Machine noise therefore
lands on both sides alike.

The rounds are split between ``--processes`` successive pairs of workers (2 in the small
budget, 4 in the full one; each later pair loads what the first compiled from the same cache
folders). Two processes running identical code can differ by several per cent for reasons
of their own (where their memory landed, which core they ran on): with a single pair, the
70 µs ``LayerNorm.grad_input`` case once came out 16 % apart, in all six rounds. With fresh
pairs such an effect changes from pair to pair, so it shows as rounds that disagree rather
than as a difference between the revisions.

Per case the report gives the median of all single-call times of each side, ``head/base``,
the noise band and a verdict:

* noise: the larger of the two sides' spreads (half the interquartile range of the single
  calls, relative to the median) and ``--noise-floor`` (default 3 %, which also covers the
  small differences between two processes running identical code);
* ``faster``: ``head/base < 1 - noise`` and the head's median below the base's in every
  round; ``slower``: ``head/base > 1 + noise`` and above in every round; otherwise ``same``
  (within noise). A burst of load from elsewhere that hits one side in one round therefore
  cannot make a verdict on its own; cases whose noise exceeds 25 % are listed as unreliable.

It also compares what each case's first call returned on the two sides (a norm and a random
projection of every array in the result) and lists the cases that differ by more than 1e-5.

The cases (``GROUP`` arguments select them; all by default):

* ``conv``: the model and sizes of ``conv_step.py`` (``Conv2D(1 -> 32, 3x3), ReLU,
  MaxPool2D(2)`` on ``X (64, 1, 28, 28)``): ``jn.forward``, ``jn.backward`` from one fixed
  trace, ``jn.value_and_grad`` and the compiled SGD step with ``MeanSquaredError`` against
  random targets; the layers alone at those sizes: ``Conv2D.grad_input`` and
  ``grad_params``, ``MaxPool2D.grad_input``; and ``BatchNorm(32)`` on the convolution's
  output ``(64, 32, 26, 26)`` in training mode, ``jn.forward(..., training=True)`` and
  ``jn.backward`` from its trace;
* ``mlp``: ``mlp_step.py``'s 784-256-128-10 ReLU MLP at batch 1, 16 and 1024: the compiled
  SGD step and ``jn.value_and_grad`` (softmax cross-entropy);
* ``layernorm``: ``layernorm_step.py``'s model (4 x [LayerNorm(256), Dense, GELU], Dense to
  10, Softmax, mean squared error) at batch 64 and 512: ``jn.forward``, ``jn.backward``,
  ``jn.value_and_grad``, the compiled SGD step, and the first LayerNorm's ``grad_input`` and
  ``grad_params`` and the Softmax's ``grad_input`` at the model's sizes.

The compiled steps carry their model and state from call to call, as ``jn.fit`` does.

The report on stdout is Markdown; progress goes to stderr. Run it with OpenBLAS's tuning
variables unset (``env -u``), so that both sides run the BLAS kernels OpenBLAS picks for the
CPU::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/revisions.py --base main
    python benchmarks/revisions.py --base f7f3b4a --head f7f3b4a --budget small   # the self-test
    python benchmarks/revisions.py --base main --head ../other-tree conv layernorm --json timings.json
    python benchmarks/revisions.py --base main --cache-dir .numba_cache/revisions   # reruns compile little

Without ``--cache-dir`` each worker starts from an empty cache, so the set-up compiles every
kernel and compiled step twice (once per side, at the same time), a few minutes on two cores.

Self-test, 2026-12-01, ``--base f7f3b4a --head f7f3b4a --budget small``, 2 shared cores at load 1.2-2.6: 29 of 29 cases "same"; head/base 0.95-1.04 in the 9 cases with noise up to ±10 %, 0.87-1.22 in the 11 at ±13-21 %, 0.67-5.7 in the 9 flagged unreliable (multi-threaded BLAS under others' load).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import IO, Any, Callable, NamedTuple, Sequence

from _common import (
    ROOT,
    Budget,
    Samples,
    describe_machine,
    first_call,
    load_average,
    markdown_table,
    microseconds,
    milliseconds,
    settle,
    stderr,
    thread_settings,
)

GROUPS = ("conv", "mlp", "layernorm")
SIDES = ("base", "head")
#: Named budgets: seconds per case and side, least timed calls per case and side, rounds,
#: and the pairs of worker processes the rounds are split between.
BUDGETS = {"small": (0.6, 12, 6, 2), "full": (2.0, 32, 8, 4)}
DEFAULT_NOISE_FLOOR = 0.03
#: Cases whose noise band is wider than this are listed as unreliable.
NOISY = 0.25
#: First-call results that differ by more than this (relative to the array's norm) are listed.
RESULT_TOLERANCE = 1e-5
MLP_BATCH_SIZES = (1, 16, 1024)
LAYERNORM_BATCH_SIZES = (64, 512)
LEARNING_RATE = 0.01
WARMUP_CALLS = 3
#: Calls per side, just before a case's rounds, that estimate its time per call (not reported).
CALIBRATION_CALLS = 3
MAX_REPEATS = 100_000


# --------------------------------------------------------------------------- statistics
class Comparison(NamedTuple):
    """Base against head for one case (times in seconds)."""

    base_median: float
    head_median: float
    ratio: float  # head / base
    noise: float  # the half-width of the "same" band, relative (0.05 means +-5 %)
    base_spread: float
    head_spread: float
    faster_rounds: int  # rounds in which the head's median was below the base's
    slower_rounds: int
    rounds: int
    verdict: str  # "faster", "slower" or "same"


def compare(base_rounds: Sequence[Sequence[float]], head_rounds: Sequence[Sequence[float]],
            noise_floor: float = DEFAULT_NOISE_FLOOR) -> Comparison:
    """The verdict on one case from each side's single-call times, round by round.

    ``base_rounds[r]`` and ``head_rounds[r]`` are the times of round ``r``. The medians are
    over all rounds; the noise is the larger of the two spreads (half the interquartile
    range relative to the median) and ``noise_floor``. The head is ``faster`` when
    ``head/base < 1 - noise`` and its median is the lower one in every round, ``slower``
    when ``head/base > 1 + noise`` and its median is the higher one in every round, and
    the ``same`` otherwise.
    """
    if len(base_rounds) != len(head_rounds) or not base_rounds:
        raise ValueError("compare: need the same number of rounds, at least one, on both sides")
    if any(not times for times in (*base_rounds, *head_rounds)):
        raise ValueError("compare: every round needs at least one time on each side")
    if noise_floor < 0:
        raise ValueError("compare: noise_floor must not be negative")
    base = Samples(time_ for times in base_rounds for time_ in times)
    head = Samples(time_ for times in head_rounds for time_ in times)
    ratio = head.median / base.median
    noise = max(noise_floor, base.spread, head.spread)
    faster = sum(statistics.median(h) < statistics.median(b) for b, h in zip(base_rounds, head_rounds))
    slower = sum(statistics.median(h) > statistics.median(b) for b, h in zip(base_rounds, head_rounds))
    rounds = len(base_rounds)
    if ratio < 1 - noise and faster == rounds:
        verdict = "faster"
    elif ratio > 1 + noise and slower == rounds:
        verdict = "slower"
    else:
        verdict = "same"
    return Comparison(base.median, head.median, ratio, noise, base.spread, head.spread, faster, slower, rounds, verdict)


def repeats_per_turn(estimates: Sequence[float], budget: Budget) -> int:
    """Timed calls per turn, the same on both sides: enough for ``budget.seconds`` per side
    over ``budget.rounds`` turns at the slower side's estimated time per call, at least
    ``budget.min_repeats`` per side in all and at most ``budget.max_repeats``."""
    slowest = max(max(estimates), 1e-9)
    wanted = math.ceil(budget.seconds / budget.rounds / slowest)
    least = math.ceil(budget.min_repeats / budget.rounds)
    most = max(least, budget.max_repeats // budget.rounds)
    return max(least, min(wanted, most))


# --------------------------------------------------------------------------- arguments
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time jitnn's passes, layers and compiled steps for two source trees (a base git revision "
        "and a head tree or revision) side by side, in interleaved rounds, and say per case whether the head is "
        "faster, slower or the same within noise.",
    )
    parser.add_argument("groups", nargs="*", metavar="GROUP",
                        help=f"case groups to run, from {', '.join(GROUPS)} (default: all)")
    parser.add_argument("--base", required=True, metavar="REV",
                        help="the git revision to compare against (a commit, branch or tag of this repository)")
    parser.add_argument("--head", default=None, metavar="PATH_OR_REV",
                        help="a folder holding a jitnn source tree, or a git revision (default: this working tree, "
                        "uncommitted changes included)")
    parser.add_argument("--budget", choices=tuple(BUDGETS), default="full",
                        help="timing budget: " + "; ".join(f"{name}: {s:g} s and at least {m} calls per case and side, "
                                                           f"in {r} rounds over {p} pairs of worker processes"
                                                           for name, (s, m, r, p) in BUDGETS.items())
                        + " (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=None, help="time per case and side (overrides --budget)")
    parser.add_argument("--min-repeats", type=int, default=None,
                        help="least timed calls per case and side (overrides --budget)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds per case, best even so that each side goes first equally often "
                        "(overrides --budget)")
    parser.add_argument("--processes", type=int, default=None,
                        help="successive pairs of worker processes the rounds are split between, at most the "
                        "rounds (overrides --budget)")
    parser.add_argument("--noise-floor", type=float, default=DEFAULT_NOISE_FLOOR,
                        help="the narrowest noise band, relative (default: %(default)s, that is +-3 %%)")
    parser.add_argument("--pause", type=float, default=0.15,
                        help="seconds to sleep before each turn, so that the other process's BLAS threads stop "
                        "spinning (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights and the data (default: %(default)s)")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter of the two workers (default: this one, %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                        help="keep each side's Numba cache under DIR between runs, in a folder per side and commit "
                        "(or per side and folder), so that the two sides never share one and a rerun compiles nothing "
                        "that did not change (default: new, empty cache folders, removed at the end)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write every timing, per case, side and round, to this JSON file")
    args = parser.parse_args(argv)
    unknown = [group for group in args.groups if group not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    args.groups = tuple(group for group in GROUPS if group in args.groups) if args.groups else GROUPS
    seconds, min_repeats, rounds, processes = BUDGETS[args.budget]
    args.seconds = seconds if args.seconds is None else args.seconds
    args.min_repeats = min_repeats if args.min_repeats is None else args.min_repeats
    args.rounds = rounds if args.rounds is None else args.rounds
    args.processes = min(processes, args.rounds) if args.processes is None else args.processes
    try:
        args.timing = Budget(args.seconds, args.min_repeats, args.rounds, max_repeats=MAX_REPEATS)
    except ValueError as error:
        parser.error(str(error))
    if not 1 <= args.processes <= args.rounds:
        parser.error("--processes must be at least 1 and at most the number of rounds")
    if not 0 <= args.noise_floor < 1:
        parser.error("--noise-floor must be at least 0 and below 1")
    if args.pause < 0:
        parser.error("--pause must not be negative")
    return args


# --------------------------------------------------------------------------- the cases (in a worker)
class Case(NamedTuple):
    group: str
    name: str  # unique across the groups; the table names the case by it
    call: Callable[[], Any]


def conv_cases(jn: Any, np: Any, seed: int) -> list[Case]:
    """conv_step.py's model and sizes (built as its run() builds them), and its layers alone."""
    import conv_step

    settings = conv_step.parse_args([])  # the benchmark's default sizes
    n, C, out, size = settings.batch, settings.channels_in, settings.channels_out, settings.size
    weight_key, bias_key = jn.random.split(jn.random.key(seed))
    conv = jn.Conv2D.init(weight_key, C, out, conv_step.KERNEL)
    bias = jn.random.uniform(bias_key, (out,), -0.5, 0.5)
    model = jn.pipe(jn.Conv2D(W=conv.W, b=bias), jn.ReLU(), jn.MaxPool2D(conv_step.POOL))
    rng = np.random.default_rng(seed + 1)
    X = rng.standard_normal((n, C, size, size), dtype=np.float32)
    output_shape = (n, *model.output_shape((C, size, size)))
    dY = rng.standard_normal(output_shape, dtype=np.float32)
    T = rng.standard_normal(output_shape, dtype=np.float32)
    parts = conv_step.jitnn_parts(jn, model, X, dY)  # jn.forward; jn.backward from one fixed trace
    loss, optimizer = jn.MeanSquaredError(), jn.optim.sgd(LEARNING_RATE)
    compiled = _carried_step(jn, model, loss, optimizer, X, T)

    layer, relu, pool = model.layers
    Z = layer.forward(X)  # the convolution's output, (n, out, Ho, Wo)
    A = relu.forward(Z)  # the pool's input
    dZ = rng.standard_normal(Z.shape, dtype=np.float32)
    batch_norm = jn.pipe(jn.BatchNorm.init(None, out))
    bn_trace = jn.forward(batch_norm, Z, training=True)[1]
    shape = "x".join(map(str, X.shape))
    return [
        Case("conv", f"model forward, `jn.forward` (X {shape})", parts["forward"]),
        Case("conv", "model backward, `jn.backward` from a trace", parts["backward"]),
        Case("conv", "model `jn.value_and_grad` (MSE)", lambda: jn.value_and_grad(model, loss, X, T)),
        Case("conv", "model compiled SGD step (MSE)", compiled),
        Case("conv", f"`Conv2D.grad_input` ({C}->{out}, dY {'x'.join(map(str, Z.shape))})", lambda: layer.grad_input(X, dZ)),
        Case("conv", f"`Conv2D.grad_params` ({C}->{out})", lambda: layer.grad_params(X, dZ)),
        Case("conv", f"`MaxPool2D.grad_input` (X {'x'.join(map(str, A.shape))})", lambda: pool.grad_input(A, dY)),
        Case("conv", f"BatchNorm({out}) `jn.forward`, training", lambda: jn.forward(batch_norm, Z, training=True)),
        Case("conv", f"BatchNorm({out}) `jn.backward`, training trace", lambda: jn.backward(batch_norm, bn_trace, dZ)),
    ]


def mlp_cases(jn: Any, np: Any, seed: int) -> list[Case]:
    """mlp_step.py's MLP (its initial weights) at MLP_BATCH_SIZES."""
    import mlp_step

    sizes = mlp_step.SIZES
    k1, k2, k3 = jn.random.split(jn.random.key(seed), 3)
    model = jn.pipe(jn.Dense.init(k1, sizes[0], sizes[1]), jn.ReLU(), jn.Dense.init(k2, sizes[1], sizes[2]), jn.ReLU(),
                    jn.Dense.init(k3, sizes[2], sizes[3]))
    loss = jn.SoftmaxCrossEntropy()
    rng = np.random.default_rng(seed + 1)
    cases = []
    for batch in MLP_BATCH_SIZES:
        X = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
        T = rng.integers(0, sizes[-1], batch, dtype=np.int64)
        runner = mlp_step.compiled_factory(jn)(model, None, X, T)  # carries model and state, as jn.fit
        cases += [
            Case("mlp", f"batch {batch}: compiled SGD step", runner.step),
            Case("mlp", f"batch {batch}: `jn.value_and_grad`", lambda X=X, T=T: jn.value_and_grad(model, loss, X, T)),
        ]
    return cases


def layernorm_cases(jn: Any, np: Any, seed: int) -> list[Case]:
    """layernorm_step.py's model at LAYERNORM_BATCH_SIZES, and its LayerNorm and Softmax alone."""
    import layernorm_step

    model = layernorm_step.build_model(jn, seed)
    loss, optimizer = layernorm_step.make_loss(jn), jn.optim.sgd(LEARNING_RATE)
    norm, softmax = model.layers[0], model.layers[-1]
    logits_of = jn.pipe(*model.layers[:-1])  # the Softmax's input
    rng = np.random.default_rng(seed + 1)
    cases = []
    for batch in LAYERNORM_BATCH_SIZES:
        X, T = layernorm_step.make_batch(rng, batch)
        Y, trace = jn.forward(model, X)
        dY = loss.grad(Y, T)
        dH = rng.standard_normal(X.shape, dtype=np.float32)
        logits = logits_of.forward(X)
        cases += [
            Case("layernorm", f"batch {batch}: model `jn.forward`", lambda X=X: jn.forward(model, X)),
            Case("layernorm", f"batch {batch}: model `jn.backward` from a trace",
                 lambda trace=trace, dY=dY: jn.backward(model, trace, dY)),
            Case("layernorm", f"batch {batch}: model `jn.value_and_grad`", lambda X=X, T=T: jn.value_and_grad(model, loss, X, T)),
            Case("layernorm", f"batch {batch}: model compiled SGD step", _carried_step(jn, model, loss, optimizer, X, T)),
            Case("layernorm", f"batch {batch}: `LayerNorm.grad_input` ({batch}x{X.shape[1]})",
                 lambda X=X, dH=dH: norm.grad_input(X, dH)),
            Case("layernorm", f"batch {batch}: `LayerNorm.grad_params`", lambda X=X, dH=dH: norm.grad_params(X, dH)),
            Case("layernorm", f"batch {batch}: `Softmax.grad_input` ({batch}x{logits.shape[1]})",
                 lambda logits=logits, dY=dY: softmax.grad_input(logits, dY)),
        ]
    return cases


def _carried_step(jn: Any, model: Any, loss: Any, optimizer: Any, X: Any, T: Any) -> Callable[[], Any]:
    """``jn.compile_step``'s step, each call from the model and state the previous one returned."""
    step = jn.compile_step(model, loss, optimizer)
    current = {"model": model, "state": optimizer.init(model)}

    def call() -> Any:
        current["model"], current["state"], value = step(current["model"], current["state"], X, T)
        return current["model"], value

    return call


CASE_BUILDERS = {"conv": conv_cases, "mlp": mlp_cases, "layernorm": layernorm_cases}


def fingerprint(result: Any, jn: Any, np: Any) -> list[float]:
    """Per floating-point array in ``result`` (arrays, numbers, records, nested tuples; a
    ``jn.Trace`` is left out): its norm and its projection on a fixed random unit vector,
    for comparing two revisions' results without sending the arrays."""
    arrays: list[Any] = []

    def walk(value: Any) -> None:
        if isinstance(value, np.ndarray):
            if value.dtype.kind == "f":
                arrays.append(value)
        elif isinstance(value, float):
            arrays.append(np.array([value]))
        elif isinstance(value, (tuple, list)):
            for item in value:
                walk(item)
        elif isinstance(value, (jn.Trace, int, str, bool)) or value is None:
            return
        else:
            try:
                leaves = jn.tree.leaves(value)
            except Exception:
                return
            for leaf in leaves:
                walk(leaf)

    walk(result)
    values: list[float] = []
    for array in arrays:
        flat = np.asarray(array, np.float64).reshape(-1)
        direction = np.random.default_rng(flat.size).standard_normal(flat.size)
        direction /= np.linalg.norm(direction) or 1.0
        values += [float(np.linalg.norm(flat)), float(flat @ direction)]
    return values


def fingerprint_difference(base: Sequence[float], head: Sequence[float]) -> float:
    """The largest difference between two fingerprints, per array relative to its norm (inf
    if they hold different numbers of arrays, NaN if either has a NaN)."""
    if len(base) != len(head):
        return math.inf
    worst = 0.0
    for index in range(0, len(base), 2):
        scale = abs(base[index]) or 1.0
        for a, b in ((base[index], head[index]), (base[index + 1], head[index + 1])):
            difference = abs(a - b) / scale
            if math.isnan(difference):
                return math.nan
            worst = max(worst, difference)
    return worst


# --------------------------------------------------------------------------- the worker
def worker(side: str) -> int:
    """Answer the parent's JSON-line requests on stdin; replies go to the original stdout,
    and anything else written to stdout (by Python or by C code) goes to stderr instead."""
    replies: IO[str] = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    state: dict[str, Any] = {}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = _answer(side, request, state)
        except Exception:
            reply = {"ok": False, "error": traceback.format_exc()}
        replies.write(json.dumps(reply) + "\n")
        if request.get("op") == "quit":
            break
    return 0


def _answer(side: str, request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "setup":
        return _setup(side, request, state)
    if op == "run":
        call = state["cases"][request["case"]].call
        for _ in range(request.get("warmup", 1)):
            call()
        clock = time.perf_counter
        times = []
        for _ in range(request["repeats"]):
            started = clock()
            call()
            times.append(clock() - started)
        return {"ok": True, "times": times}
    if op == "info":
        import _common

        jn = state["jn"]
        try:
            blas = jn._blas.library().name  # not public: reported where the revision has it
        except Exception:
            blas = "unknown"
        import numba

        return {"ok": True, "libraries": _common._blas_libraries(), "jitnn_blas": blas,
                "numba_threads": numba.config.NUMBA_NUM_THREADS, "cache": _common.kernel_cache_counts()}
    if op == "quit":
        return {"ok": True}
    raise ValueError(f"unknown request {op!r}")


def _setup(side: str, request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    import _common

    started = time.perf_counter()
    jn, import_seconds, error = _common.import_timed("jitnn")
    if jn is None:
        raise ImportError(f"cannot import jitnn: {error}")
    import numpy as np

    where = Path(jn.__file__).resolve().parent
    expected = Path(request["tree"]).resolve() / "jitnn"
    if where != expected:
        raise ImportError(f"jitnn was imported from {where}, not from {expected}: check PYTHONPATH")
    state["jn"] = jn
    cache_before = _common.kernel_cache_counts()
    cases: dict[str, Case] = {}
    failures: dict[str, str] = {}  # a group or case this revision cannot run: its error, in one line
    for group in request["groups"]:
        try:
            for case in CASE_BUILDERS[group](jn, np, request["seed"]):
                cases[case.name] = case
        except Exception as error:
            failures[f"group {group}"] = _one_line(error)
            stderr(f"[{side}] group {group} cannot be built:\n{traceback.format_exc()}")
    described = []
    for case in list(cases.values()):
        try:
            seconds, result = first_call(case.call)
            for _ in range(request["warmup"]):
                case.call()
        except Exception as error:
            failures[case.name] = _one_line(error)
            del cases[case.name]
            stderr(f"[{side}] {case.name} fails:\n{traceback.format_exc()}")
            continue
        described.append({"group": case.group, "name": case.name, "first_call": seconds,
                          "fingerprint": fingerprint(result, jn, np)})
        stderr(f"[{side}] {case.name}: first call {milliseconds(seconds)} ms")
    state["cases"] = cases
    cache_after = _common.kernel_cache_counts()
    return {"ok": True, "jitnn": str(where), "version": getattr(jn, "__version__", "?"), "import_seconds": import_seconds,
            "setup_seconds": time.perf_counter() - started, "cases": described, "failures": failures,
            "cache": [cache_before, cache_after]}


def _one_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip().splitlines()
    return text[0] if text else type(error).__name__


# --------------------------------------------------------------------------- the parent
class Tree(NamedTuple):
    label: str  # how the report names it
    path: Path
    temporary: bool  # extracted here, to be removed
    key: str  # names its cache folder under --cache-dir: the side and the commit, or the side and the folder


def _git(*arguments: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *arguments], capture_output=True, text=True, check=True).stdout.strip()


def resolve_revision(revision: str) -> str:
    """The full commit hash of ``revision``; ``ValueError`` if git does not know it."""
    try:
        return _git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    except (subprocess.CalledProcessError, OSError):  # unknown to git, or no git at all
        raise ValueError(f"{revision!r} is not a git revision of {ROOT}") from None


def extract(revision: str, side: str, cache_dir: Path | None = None) -> Tree:
    """``git archive REV | tar -x`` into a new temporary folder, or with ``cache_dir`` into
    ``cache_dir/<side>-<commit>/tree`` (emptied first), the same path on every run, which
    Numba's cache index needs to find its entries again (it records each source file's path
    and modification time, and ``git archive`` gives every file the commit's time)."""
    commit = resolve_revision(revision)
    key = f"{side}-{commit[:12]}"
    if cache_dir is None:
        folder = Path(tempfile.mkdtemp(prefix=f"jitnn-{side}-{commit[:10]}-"))
    else:
        folder = cache_dir.resolve() / key / "tree"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", "--format=tar", commit], stdout=subprocess.PIPE)
    unpack = subprocess.run(["tar", "-x", "-C", str(folder)], stdin=archive.stdout, check=False)
    archive.stdout.close()
    if archive.wait() != 0 or unpack.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"git archive {commit} | tar -x -C {folder} failed")
    if not (folder / "jitnn" / "__init__.py").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        raise ValueError(f"revision {revision} ({commit[:10]}) has no jitnn/__init__.py")
    return Tree(f"{revision} ({commit[:10]})" if not commit.startswith(revision) else commit[:10], folder, True, key)


def resolve_head(head: str | None, cache_dir: Path | None = None) -> Tree:
    """The working tree (``head`` None), a folder holding ``jitnn/``, or an extracted revision."""
    if head is None:
        try:
            revision = _git("rev-parse", "--short", "HEAD")
            dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "jitnn")
            label = f"working tree ({revision}{' + uncommitted changes to jitnn/' if dirty else ''})"
        except (subprocess.CalledProcessError, OSError):
            label = f"working tree {ROOT}"
        return Tree(label, ROOT, False, _folder_key(ROOT))
    path = Path(head)
    if path.is_dir():
        if not (path / "jitnn" / "__init__.py").is_file():
            raise ValueError(f"--head {head}: no jitnn/__init__.py in that folder")
        return Tree(f"folder {path.resolve()}", path.resolve(), False, _folder_key(path.resolve()))
    return extract(head, "head", cache_dir)


def _folder_key(path: Path) -> str:
    return f"head-folder-{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"


class Worker:
    """One worker process, spoken to in JSON lines."""

    def __init__(self, side: str, tree: Tree, python: str, cache: str) -> None:
        self.side, self.tree = side, tree
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join([str(tree.path)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
        environment["NUMBA_CACHE_DIR"] = cache
        self.process = subprocess.Popen([python, str(Path(__file__).resolve()), "--worker", side], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=environment, text=True, bufsize=1)

    def send(self, request: dict[str, Any]) -> None:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()

    def receive(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.side} worker ended unexpectedly (exit code {self.process.wait()})")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"the {self.side} worker failed:\n{reply.get('error')}")
        return reply

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        self.send(request)
        return self.receive()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.ask({"op": "quit"})
            except (RuntimeError, OSError, ValueError):
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 2 and argv[0] == "--worker" and argv[1] in SIDES:  # started by the parent, below
        return worker(argv[1])
    args = parse_args(argv)
    trees: dict[str, Tree] = {}
    caches: dict[str, str] = {}
    temporary_caches: list[str] = []
    try:
        try:
            trees["base"] = extract(args.base, "base", args.cache_dir)
            trees["head"] = resolve_head(args.head, args.cache_dir)
        except (ValueError, RuntimeError) as error:
            stderr(f"revisions.py: {error}")
            return 2
        for side in SIDES:
            if args.cache_dir is None:
                caches[side] = tempfile.mkdtemp(prefix=f"jitnn-numba-{side}-")
                temporary_caches.append(caches[side])  # removed at the end
            else:
                caches[side] = str(args.cache_dir.resolve() / trees[side].key / "numba")
                os.makedirs(caches[side], exist_ok=True)
            stderr(f"{side}: {trees[side].label}, jitnn from {trees[side].path}, NUMBA_CACHE_DIR={caches[side]}")
        return run(args, trees, caches)
    finally:
        for tree in trees.values():
            if tree.temporary:
                shutil.rmtree(tree.path, ignore_errors=True)
        for cache in temporary_caches:
            shutil.rmtree(cache, ignore_errors=True)


def split_rounds(rounds: int, processes: int) -> list[range]:
    """The rounds each successive pair of worker processes times: ``rounds`` split into
    ``processes`` consecutive runs, as even as they go (the first ones get the remainder)."""
    if not 1 <= processes <= rounds:
        raise ValueError("split_rounds: need 1 <= processes <= rounds")
    size, extra = divmod(rounds, processes)
    blocks, start = [], 0
    for index in range(processes):
        stop = start + size + (index < extra)
        blocks.append(range(start, stop))
        start = stop
    return blocks


def run(args: argparse.Namespace, trees: dict[str, Tree], caches: dict[str, str]) -> int:
    load = [load_average()]
    setups: list[dict[str, Any]] = []  # per pair of workers, per side
    names: list[str] = []
    repeats: dict[str, int] = {}
    timings: dict[str, dict[str, list[list[float]]]] = {}
    infos: dict[str, Any] = {}
    for pair, round_indices in enumerate(split_rounds(args.timing.rounds, args.processes)):
        workers: dict[str, Worker] = {}
        try:
            for side in SIDES:
                workers[side] = Worker(side, trees[side], args.python, caches[side])
            # ---- set-up: both workers build, compile (or load) and warm up their cases at the same time
            started = time.perf_counter()
            for side in SIDES:
                workers[side].send({"op": "setup", "groups": list(args.groups), "seed": args.seed,
                                    "warmup": WARMUP_CALLS, "tree": str(trees[side].path)})
            setup = {side: workers[side].receive() for side in SIDES}
            setups.append(setup)
            stderr(f"worker pair {pair + 1} of {args.processes}: set up and warmed up in "
                   f"{time.perf_counter() - started:.1f} s")
            runnable = [case["name"] for case in setup["base"]["cases"]
                        if case["name"] in {other["name"] for other in setup["head"]["cases"]}]
            if pair == 0:
                names = runnable  # the cases both sides can run
                for side in SIDES:
                    for what, error in setup[side]["failures"].items():
                        stderr(f"{side} cannot run {what}: {error}")
            elif runnable != names:
                raise RuntimeError(f"worker pair {pair + 1} built other cases than the first pair")

            # ---- the timing: per case, interleaved rounds
            for name in names:
                if name not in repeats:  # from a few calls on each side, one side at a time
                    estimates = []
                    for side in SIDES:
                        settle(args.pause)
                        reply = workers[side].ask({"op": "run", "case": name, "repeats": CALIBRATION_CALLS, "warmup": 1})
                        estimates.append(statistics.median(reply["times"]))
                    repeats[name] = repeats_per_turn(estimates, args.timing)
                rounds = timings.setdefault(name, {side: [] for side in SIDES})
                for round_ in round_indices:
                    for side in (SIDES if round_ % 2 == 0 else SIDES[::-1]):
                        settle(args.pause)
                        reply = workers[side].ask({"op": "run", "case": name, "repeats": repeats[name], "warmup": 1})
                        rounds[side].append(reply["times"])
                medians = {side: statistics.median(t for times in rounds[side][-len(round_indices):] for t in times)
                           for side in SIDES}
                stderr(f"  pair {pair + 1}, {name}: base {microseconds(medians['base'])} µs, head "
                       f"{microseconds(medians['head'])} µs ({len(round_indices)} x {repeats[name]} calls per side)")
            infos = {side: workers[side].ask({"op": "info"}) for side in SIDES}
        finally:
            for worker_ in workers.values():
                worker_.close()
    load.append(load_average())
    comparisons = {name: compare(timings[name]["base"], timings[name]["head"], args.noise_floor) for name in names}

    report(args, trees, setups, infos, names, comparisons, load)
    if args.json is not None:
        groups = {case["name"]: case["group"] for case in setups[0]["base"]["cases"]}
        args.json.write_text(json.dumps({
            "base": trees["base"].label, "head": trees["head"].label, "budget": repr(args.timing),
            "processes": args.processes, "noise_floor": args.noise_floor,
            "cases": {name: {"group": groups[name], **timings[name], "verdict": comparisons[name].verdict}
                      for name in names}}, indent=1) + "\n")
        stderr(f"timings written to {args.json}")
    return 0


def report(args: argparse.Namespace, trees: dict[str, Tree], setups: list[dict[str, Any]], infos: dict[str, Any],
           names: list[str], comparisons: dict[str, Comparison], load: list[float | None]) -> None:
    first = setups[0]
    described = {side: {case["name"]: case for case in first[side]["cases"]} for side in SIDES}
    groups = {name: described["base"][name]["group"] for name in names}
    print(f"## jitnn base {trees['base'].label} against head {trees['head'].label}")
    print()
    machine = describe_machine(["numpy", "scipy", "numba", "llvmlite", "threadpoolctl"])[0]
    print(machine.replace("; jitnn at commit", "; benchmark scripts at commit") + "  ")
    for side in SIDES:
        info = infos[side]
        print(f"{side}: jitnn {first[side]['version']} from `{first[side]['jitnn']}`; its matrix products on "
              f"{info['jitnn_blas']}'s BLAS; BLAS and thread pools loaded in its worker: "
              + ("; ".join(info["libraries"]) or "none found") + "  ")
    print(f"Threads: {thread_settings()}; Numba threads {infos['base']['numba_threads']} (base), "
          f"{infos['head']['numba_threads']} (head).  ")
    if None not in load:
        print(f"Load average (1 min) before the set-up and after the timing: {load[0]:.2f}, {load[1]:.2f} (the timed "
              f"worker alone brings it towards 1, more with BLAS threads; {os.cpu_count()} cores).")
    print()

    for group in args.groups:
        print(f"### {group}")
        print()
        rows = []
        for name in (name for name in names if groups[name] == group):
            result = comparisons[name]
            rows.append([name, microseconds(result.base_median), microseconds(result.head_median),
                         f"{result.ratio:.2f}", f"±{result.noise * 100:.0f}%",
                         f"{result.faster_rounds}/{result.rounds}", result.verdict])
        if rows:
            print(markdown_table(["case", "base (µs)", "head (µs)", "head/base", "noise", "head faster in rounds",
                                  "verdict"], rows))
        else:
            print("No case of this group runs on both sides (see below).")
        print()

    verdicts = [comparisons[name].verdict for name in names]
    print(f"Verdicts: {verdicts.count('faster')} faster, {verdicts.count('slower')} slower, "
          f"{verdicts.count('same')} the same within noise, of {len(names)} cases.")
    for side in SIDES:
        failures = first[side]["failures"]
        if failures:
            print(f"Not run, because the {side} revision fails them (the other side's are left out too): "
                  + "; ".join(f"{what}: {error}" for what, error in failures.items()) + ".")
    noisy = [name for name in names if comparisons[name].noise > NOISY]
    if noisy:
        print(f"Unreliable (noise above ±{NOISY * 100:.0f}%, the machine was busy: rerun these on a quiet machine): "
              + "; ".join(noisy) + ".")
    print()
    print(f"Medians of single-call wall-clock times, in microseconds, of each side, over {args.timing.rounds} rounds per "
          f"case in which both sides take a turn (base first in even rounds, head first in odd ones), the rounds split "
          f"between {args.processes} successive pair{'s' if args.processes > 1 else ''} of worker processes, each turn after a "
          f"{args.pause:g} s pause and one untimed call, then the same number of timed calls on both sides, chosen for "
          f"about {args.timing.seconds:g} s per case and side and at least {args.timing.min_repeats} calls. "
          f"`noise` is the larger of the two sides' spreads (half the interquartile range of the single calls, relative "
          f"to the median) and {args.noise_floor * 100:g} %; the verdict is `faster` when head/base is below 1 - noise and "
          f"the head's median is the lower one in every round, `slower` when head/base is above 1 + noise and the "
          f"head's median is the higher one in every round, `same` otherwise. "
          f"Every case was called {1 + WARMUP_CALLS} times in each worker before the timing, so no compilation is timed; "
          f"with more than one pair of workers, an effect of one process (where its memory lies, the core it runs on) "
          f"shows as rounds that disagree instead of as a difference between the revisions.")
    print()

    differing = []
    for name in names:
        difference = fingerprint_difference(described["base"][name]["fingerprint"], described["head"][name]["fingerprint"])
        if not difference <= RESULT_TOLERANCE:
            differing.append(f"{name} ({difference:.1e})")
    if differing:
        print(f"Results: the first calls of these cases returned different numbers on the two sides (largest "
              f"difference relative to the array's norm, tolerance {RESULT_TOLERANCE:g}): " + "; ".join(differing) + ".")
    else:
        print(f"Results: every case's first call returned the same numbers on both sides (each array's norm and "
              f"projection on a fixed random direction, to {RESULT_TOLERANCE:g} of its norm).")
    print()

    rows = []
    for pair, setup_pair in enumerate(setups):
        for side in SIDES:
            setup = setup_pair[side]
            before, after = setup["cache"]
            compiled = (f"{after[0] - before[0]} loaded, {after[1] - before[1]} compiled"
                        if before is not None and after is not None else "unknown")
            slowest = max(setup["cases"], key=lambda case: case["first_call"], default=None)
            rows.append([f"{side}, pair {pair + 1}", milliseconds(setup["import_seconds"]),
                         f"{setup['setup_seconds']:.1f}", compiled,
                         f"{slowest['name']}: {milliseconds(slowest['first_call'])}" if slowest else "n/a"])
    print(markdown_table(["worker", "import jitnn (ms)", "set-up and warm-up (s)", "kernel signatures",
                          "slowest first call (ms)"], rows))
    print()
    where = (f"in its own folder under --cache-dir {args.cache_dir}" if args.cache_dir is not None
             else "in a new, empty Numba cache folder of its own for the run (so the first pair compiles and later "
                  "pairs load)")
    print(f"Set-up of each worker (importing jitnn, building the cases and their first and warm-up calls), {where}; "
          f"the two workers of a pair set up at the same time, so on a machine with few cores their compile times slow "
          f"each other down.")


if __name__ == "__main__":
    sys.exit(main())
