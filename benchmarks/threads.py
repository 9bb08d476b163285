#!/usr/bin/env python
"""Benchmark: the compiled training step with its BLAS on 1 thread against 2, per batch size.

jitnn's kernels run on one thread; their matrix products (``jitnn._blas.matmul``) call
the OpenBLAS of ``jitnn._blas.library()`` (NumPy's bundled one where there is one), whose thread count ``jn.compile_step(..., threads=...)`` sets for the
duration of each step. ``threads=None`` (the default) lets :func:`jitnn._blas.auto_threads`
choose: one thread below ``jitnn._blas.SMALL_BATCH`` examples, every core BLAS started with
from there on. This script measures whether that rule picks the faster count, for

* ``mlp``: the 784-256-128-10 ReLU MLP, float32, ``jn.SoftmaxCrossEntropy()``,
  ``jn.optim.sgd(0.01)`` (the model of ``mlp_step.py``);
* ``cnn``: a small CNN on 1x28x28 images, ``Conv2D(1 -> 16, 3x3, padding 1), ReLU,
  MaxPool2D(2), Flatten, Dense(3136 -> 10)``, same loss and optimizer. Its convolution is one
  GEMM per example (im2col, then ``[W b] @ [columns; ones]``), so each of its matrix
  products is small whatever the batch size; only the Dense layer's grow with the batch.

For each model three steps are compiled from the same model: ``threads=1``, ``threads=2``
and ``threads=None``. Each is called once before any timing, so that generating and
compiling the step (or loading it from Numba's on-disk cache; ``step.compile_seconds``)
never falls inside a timed call; the three first steps, taken from the same initial model
and batch, must give the same loss and updated parameters, otherwise the script stops. The
step is then timed as a training loop runs it: each call gets the model and optimizer state
the previous call returned. The three steps take turns in rounds (1 thread, 2 threads,
automatic, 1 thread, ...), each turn after a short pause (OpenBLAS's threads keep spinning
for about 0.1 s after a call) and one untimed call, so that a burst of load from elsewhere
on the machine is shared between them. Each cell is the median of single-call wall-clock
times.

From the medians the report gives, per batch size, ``t(1 thread) / t(2 threads)`` (above 1:
two threads are faster), which count is faster (medians closer than ``TIE``, or overlapping
interquartile ranges, are a tie), the crossover (the smallest batch size at which two
threads win and from which one thread wins at no larger size measured), what ``threads=None`` chose and how its time
compares with the faster fixed count, and which values of ``SMALL_BATCH`` the measurements
support.

Two BLAS threads need both cores of a 2-core machine: while another process keeps one core
busy, every product waits for the descheduled thread, and two threads come out several
times slower than one. So each row also says how many cores other processes kept busy while
it was timed (``/proc/stat``'s busy time less this process's CPU time); rows above
``DISTURBED`` are shown but left out of the conclusions. Run it on a quiet machine.

None of jitnn's kernels uses Numba's ``prange`` (the script checks that no compiled kernel
has ``parallel=True``), so Numba's own thread count plays no part here and is not varied;
the report says why the kernels are written that way.

The report on stdout is Markdown; progress goes to stderr.

Usage::

    NUMBA_CACHE_DIR=.numba_cache python benchmarks/threads.py          # full run
    python benchmarks/threads.py --quick                               # a short, noisier run
    python benchmarks/threads.py --models mlp --batch-sizes 32,64,128
    python benchmarks/threads.py --cnn-max-batch 1024  # also the CNN at the largest sizes
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from _common import (
    positive_integers,
    ROOT,
    Samples,
    TimingDefaults,
    add_timing_arguments,
    describe_machine,
    load_average,
    markdown_table,
    measure_interleaved,
    microseconds,
    milliseconds,
    numba_cache_location,
    ratio,
    relative_difference,
    resolve_timing,
    run_with_cache_choice,
    settle,
    stderr,
    thread_settings,
)

LEARNING_RATE = 0.01
MLP_SIZES = (784, 256, 128, 10)
CNN_CHANNELS, CNN_IMAGE = 16, 28
DEFAULT_BATCH_SIZES = (1, 4, 16, 32, 64, 128, 256, 1024)
DEFAULT_CNN_MAX_BATCH = 256
MODELS = ("mlp", "cnn")
TITLES = {
    "mlp": f"MLP {'-'.join(map(str, MLP_SIZES))}, ReLU",
    "cnn": f"CNN Conv2D(1->{CNN_CHANNELS}, 3x3, padding 1), ReLU, MaxPool2D(2), Flatten, "
           f"Dense({CNN_CHANNELS * (CNN_IMAGE // 2) ** 2}->10) on 1x{CNN_IMAGE}x{CNN_IMAGE}",
}

#: The fixed thread counts compared, and the labels of the three steps timed.
FEW, MANY = 1, 2
VARIANTS = {"1 thread": FEW, "2 threads": MANY, "auto": None}

#: Two medians closer than this fraction of the smaller one are called a tie (so are two
#: cells whose interquartile ranges overlap): repeated runs of the same cell differ by a few
#: percent on a 2-core machine.
TIE = 0.05

#: A row timed while other processes kept more than this many cores busy is shown but left
#: out of the conclusions: two BLAS threads stall whenever one of the two cores is taken.
DISTURBED = 0.25

#: How closely the three first steps (same model, same batch) must agree: the loss, relatively,
#: and every updated parameter relative to its largest element. BLAS may split a product
#: differently on two threads, which can change the last bits of float32 sums.
LOSS_RTOL = 1e-5
PARAM_RTOL = 1e-3

#: The timing budget per table cell, for a full and a --quick run.
TIMING = TimingDefaults()


# --------------------------------------------------------------------------- arguments
def _models(text: str) -> tuple[str, ...]:
    names = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in MODELS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"choose from {','.join(MODELS)}; got {text!r}")
    return tuple(name for name in MODELS if name in names)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time jitnn's compiled training step with BLAS on 1 thread, on 2 threads and with the "
        "automatic choice (threads=None), per batch size, for an MLP and a small CNN.",
    )
    parser.add_argument("--batch-sizes", type=positive_integers, default=DEFAULT_BATCH_SIZES, metavar="N,N,...",
                        help="batch sizes to time (default: %(default)s)")
    parser.add_argument("--models", type=_models, default=MODELS, metavar="NAME,...",
                        help=f"models to time, from {','.join(MODELS)} (default: all)")
    parser.add_argument("--cnn-max-batch", type=int, default=DEFAULT_CNN_MAX_BATCH, metavar="N",
                        help="largest batch size timed for the CNN, whose step is slow (default: %(default)s)")
    add_timing_arguments(parser, TIMING, "seed for the weights and the data")
    args = parser.parse_args(argv)
    if args.cnn_max_batch < 1:
        parser.error("--cnn-max-batch must be a positive integer")
    resolve_timing(parser, args, TIMING)
    return args


# --------------------------------------------------------------------------- models
def build_model(jn: Any, name: str, seed: int) -> Any:
    if name == "mlp":
        k1, k2, k3 = jn.random.split(jn.random.key(seed), 3)
        return jn.pipe(jn.Dense.init(k1, MLP_SIZES[0], MLP_SIZES[1]), jn.ReLU(),
                       jn.Dense.init(k2, MLP_SIZES[1], MLP_SIZES[2]), jn.ReLU(),
                       jn.Dense.init(k3, MLP_SIZES[2], MLP_SIZES[3]))
    k, k2 = jn.random.split(jn.random.key(seed))
    return jn.pipe(jn.Conv2D.init(k, 1, CNN_CHANNELS, 3, padding=1), jn.ReLU(), jn.MaxPool2D(2), jn.Flatten(),
                   jn.Dense.init(k2, CNN_CHANNELS * (CNN_IMAGE // 2) ** 2, 10))


def make_batch(name: str, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    shape = (batch, MLP_SIZES[0]) if name == "mlp" else (batch, 1, CNN_IMAGE, CNN_IMAGE)
    return rng.standard_normal(shape, dtype=np.float32), rng.integers(0, 10, batch, dtype=np.int64)


def parameters(jn: Any, model: Any) -> list[np.ndarray]:
    """The model's arrays (parameters), as float64 copies."""
    return [np.array(leaf, np.float64) for leaf in jn.tree.leaves(model)]


class Loop:
    """One compiled step run as a training loop runs it: each call continues from the model
    and optimizer state the previous call returned."""

    def __init__(self, step: Any, model: Any, state: Any, X: np.ndarray, T: np.ndarray):
        self.step, self.model, self.state, self.X, self.T = step, model, state, X, T

    def __call__(self) -> float:
        self.model, self.state, value = self.step(self.model, self.state, self.X, self.T)
        return value


# --------------------------------------------------------------------------- other load
def _busy_seconds() -> float | None:
    """CPU seconds all cores spent busy (or stolen by the hypervisor) since boot, from
    ``/proc/stat``; ``None`` where it cannot be read."""
    try:
        with open("/proc/stat", encoding="utf-8") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 5:
        return None
    ticks = [int(value) for value in fields[1:9]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle and iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """How many cores other processes kept busy while a block ran: the machine's busy time
    (from ``/proc/stat``) minus this process's CPU time, over the wall-clock time. Two BLAS
    threads need both cores; a core taken by something else stalls every product that
    waits for its second thread, so this says which rows were measured on a shared machine."""

    def __enter__(self) -> OtherLoad:
        self.cores: float | None = None
        self._busy, self._own, self._wall = _busy_seconds(), os.times(), time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        busy, own, wall = _busy_seconds(), os.times(), time.perf_counter()
        if busy is None or self._busy is None or wall <= self._wall:
            return
        own_seconds = (own.user + own.system) - (self._own.user + self._own.system)
        self.cores = max(0.0, (busy - self._busy) - own_seconds) / (wall - self._wall)


# --------------------------------------------------------------------------- analysis
def faster(few: Samples, many: Samples) -> str:
    """Which fixed count is faster, or ``"tie"`` when the medians differ by less than TIE or
    the interquartile ranges overlap."""
    if few.median > many.median * (1 + TIE) and few.quantile(0.25) > many.quantile(0.75):
        return f"{MANY} threads"
    if many.median > few.median * (1 + TIE) and many.quantile(0.25) > few.quantile(0.75):
        return f"{FEW} thread"
    return "tie"


def crossover(sizes: Sequence[int], verdicts: Sequence[str]) -> int | None:
    """The smallest batch size at which two threads are faster and from which one thread is
    faster at no larger size measured (``None`` if two threads never win there)."""
    found = None
    for size, verdict in reversed(list(zip(sizes, verdicts))):
        if verdict == f"{FEW} thread":
            break
        if verdict == f"{MANY} threads":
            found = size
    return found


def threshold_classes(sizes: Sequence[int]) -> list[tuple[int, int | None]]:
    """The ranges of ``SMALL_BATCH`` that give different choices on the measured sizes: the
    rule picks one thread for ``n < SMALL_BATCH``, so every value in ``(a, b]`` (``a``, ``b``
    neighbouring sizes) does the same; ``(low, high)`` with ``high`` None for 'above all'."""
    classes = []
    previous = 0
    for size in sizes:
        classes.append((previous + 1, size))
        previous = size
    classes.append((previous + 1, None))
    return classes


def class_costs(times: dict[int, tuple[float, float, str]],
                classes: list[tuple[int, int | None]]) -> list[tuple[float, float]]:
    """For each threshold class: (sum over sizes, worst size) of the chosen count's time over
    the faster count's time, minus 1; a tie costs nothing either way. ``times`` maps a batch
    size to the medians with 1 and 2 threads and the verdict of :func:`faster`."""
    costs = []
    for _, high in classes:
        threshold = high if high is not None else math.inf
        excesses = [0.0]
        for size, (t_few, t_many, verdict) in times.items():
            chosen = t_few if size < threshold else t_many
            excesses.append(0.0 if verdict == "tie" else chosen / min(t_few, t_many) - 1)
        costs.append((sum(excesses), max(excesses)))
    return costs


def describe_class(low: int, high: int | None) -> str:
    """``SMALL_BATCH`` from ``low`` to ``high`` (``None``: no upper end), in words."""
    if high is None:
        return f"{low} or more" + (" (one thread at every size measured)" if low > 1 else "")
    if low == high == 1:
        return "1 (two threads at every size)"
    if low == high:
        return f"{high}"
    return f"{low} to {high}" + (" (1: two threads at every size)" if low == 1 else "")


def class_of(value: int, classes: list[tuple[int, int | None]]) -> int:
    for index, (low, high) in enumerate(classes):
        if value >= low and (high is None or value <= high):
            return index
    return len(classes) - 1


# --------------------------------------------------------------------------- main
class Results:
    """What a run measured, for the report."""

    def __init__(self, all_cores: int, small_batch: int):
        self.all_cores, self.small_batch = all_cores, small_batch
        self.sizes: dict[str, tuple[int, ...]] = {}
        self.cells: dict[tuple[str, int, str], Samples] = {}
        self.others: dict[tuple[str, int], float | None] = {}
        self.compile_seconds: dict[tuple[str, str], float] = {}
        self.sources: list[str] = []
        self.worst_loss = self.worst_param = 0.0
        self.load: list[float | None] = []
        self.n_kernels = self.n_parallel = 0
        self.numba_threads = 0

    def disturbed(self, name: str, batch: int) -> bool:
        cores = self.others.get((name, batch))
        return cores is not None and cores > DISTURBED


def main(argv: list[str] | None = None) -> int:
    return run_with_cache_choice(run, parse_args(argv))


def run(args: argparse.Namespace, cold_cache: str | None) -> int:
    """The benchmark; ``cold_cache`` is the new, empty Numba cache folder of ``--cold-cache``."""
    sys.path.insert(0, str(ROOT))  # benchmark this checkout of jitnn
    import numba

    import jitnn as jn
    from jitnn import _blas
    from jitnn._jit import KERNELS

    if not _blas.available():
        print("## BLAS threads of jitnn's compiled step")
        print()
        print("The BLAS thread count cannot be read or changed here (it is not OpenBLAS, or it was not found), "
              "so `threads=` has no effect and there is nothing to compare.")
        return 1
    results = Results(_blas.auto_threads(10**9), _blas.SMALL_BATCH)
    results.load.append(load_average())
    loss = jn.SoftmaxCrossEntropy()
    optimizer = jn.optim.sgd(LEARNING_RATE)
    for name in args.models:
        model = build_model(jn, name, args.seed)
        steps = {label: jn.compile_step(model, loss, optimizer, threads=threads) for label, threads in VARIANTS.items()}
        state = optimizer.init(model)
        before = parameters(jn, model)
        sizes = results.sizes[name] = tuple(size for size in args.batch_sizes if name != "cnn" or size <= args.cnn_max_batch)
        data_rng = np.random.default_rng(args.seed + 1)
        for batch in sizes:
            X, T = make_batch(name, batch, data_rng)

            # first calls, untimed (they compile, or load, at the first batch size), from the same
            # model and batch: the three thread settings must compute the same step
            values, updates = {}, {}
            for label, step in steps.items():
                settle(args.pause)
                new_model, _, values[label] = step(model, state, X, T)
                if (name, label) not in results.compile_seconds:
                    results.compile_seconds[name, label] = step.compile_seconds
                    results.sources.append(step.source)
                updates[label] = [after - old for after, old in zip(parameters(jn, new_model), before)]
            reference = values["1 thread"]
            for label in VARIANTS:
                loss_difference = abs(values[label] - reference) / abs(reference)
                param_difference = max(relative_difference(got, expected)
                                       for got, expected in zip(updates[label], updates["1 thread"]))
                results.worst_loss = max(results.worst_loss, loss_difference)
                results.worst_param = max(results.worst_param, param_difference)
                if not (loss_difference <= LOSS_RTOL and param_difference <= PARAM_RTOL):
                    stderr(f"{name}, batch {batch}: the step with {label} differs from the one with 1 thread "
                           f"(loss {values[label]!r} against {reference!r}, parameter updates by {param_difference:.1e} "
                           f"of their largest element); not timing a wrong step")
                    return 1

            stderr(f"{name}, batch {batch}: timing {', '.join(VARIANTS)} ({args.budget}) ...")
            loops = {label: Loop(step, model, state, X, T) for label, step in steps.items()}
            with OtherLoad() as other:
                samples = measure_interleaved(loops, args.budget, pause=args.pause)
            results.others[name, batch] = other.cores
            for label, cell in samples.items():
                results.cells[name, batch, label] = cell
                stderr(f"  {label:9s} {cell.summary()}")
            if other.cores is not None:
                stderr(f"  other processes kept {other.cores:.2f} cores busy meanwhile"
                       + (" (disturbed: left out of the conclusions)" if other.cores > DISTURBED else ""))
    results.load.append(load_average())
    results.n_kernels = len(KERNELS)
    results.n_parallel = sum(1 for kernel in KERNELS if kernel.targetoptions.get("parallel"))
    results.numba_threads = numba.config.NUMBA_NUM_THREADS
    report(args, results, cold_cache)
    return 0


# --------------------------------------------------------------------------- the report
def report(args: argparse.Namespace, results: Results, cold_cache: str | None) -> None:
    small_batch, all_cores = results.small_batch, results.all_cores
    print("## BLAS threads of jitnn's compiled step: 1 thread against 2, per batch size")
    print()
    for line in describe_machine(["numpy", "scipy", "numba", "llvmlite"]):
        print(line + "  ")
    print(f"Threads: {thread_settings()}; the BLAS count is set per step by `jn.compile_step(..., threads=...)`; "
          f"`threads=None` uses 1 thread below `SMALL_BATCH = {small_batch}` examples and {all_cores} (every core "
          f"the BLAS started with) from there on.  ")
    if None not in results.load:
        print(f"Load average (1 min) before the first model and after the last timing: {results.load[0]:.2f}, "
              f"{results.load[1]:.2f} (this process alone brings it towards 1, or 2 while BLAS runs 2 threads; the "
              f"`other load` column says what else ran while each row was timed).")
    print()
    if all_cores != MANY:
        print(f"Note: BLAS started with {all_cores} threads, so `threads=None` uses {all_cores} threads on large "
              f"batches, a count that neither fixed column measures.")
        print()

    def cell(name: str, batch: int, label: str) -> str:
        samples = results.cells[name, batch, label]
        return microseconds(samples.median) + (f" ±{samples.spread * 100:.0f}%" if args.spread else "")

    # ---- one table per model
    kept: dict[str, dict[int, tuple[float, float, str]]] = {}  # undisturbed rows: medians and verdict
    for name in args.models:
        sizes = results.sizes[name]
        print(f"### {TITLES[name]}, float32, softmax cross-entropy, SGD {LEARNING_RATE:g}")
        print()
        rows, verdicts = [], {}
        kept[name] = {}
        for batch in sizes:
            few, many, auto = (results.cells[name, batch, label] for label in VARIANTS)
            verdict = verdicts[batch] = faster(few, many)
            if not results.disturbed(name, batch):
                kept[name][batch] = (few.median, many.median, verdict)
            chosen = 1 if batch < small_batch else all_cores
            picks = ("n/a" if chosen not in (FEW, MANY) else "yes" if verdict == "tie"
                     or (verdict == f"{FEW} thread") == (chosen == FEW) else "**no**")
            load = results.others[name, batch]
            rows.append([str(batch), cell(name, batch, "1 thread"), cell(name, batch, "2 threads"),
                         cell(name, batch, "auto"), ratio(few.median, many.median), verdict, str(chosen), picks,
                         ratio(auto.median, min(few.median, many.median)),
                         "n/a" if load is None else f"{load:.2f}" + (" (disturbed)" if load > DISTURBED else "")])
        print(markdown_table(["batch", "1 thread (µs)", "2 threads (µs)", "auto (µs)", "t(1)/t(2)", "faster",
                              "auto uses", "auto picks the faster", "auto/best", "other load (cores)"], rows))
        print()
        print(f"{name.upper()}: {summarize(sizes, verdicts, [batch for batch in sizes if results.disturbed(name, batch)])}")
        print()

    # ---- what SMALL_BATCH the measurements support
    print("### The threshold `SMALL_BATCH`")
    print()
    joint = sorted(set(size for name in args.models for size in kept[name]))
    if not joint:
        print(f"Every row was disturbed (other processes kept more than {DISTURBED:g} cores busy while it was timed): "
              f"no conclusion about `SMALL_BATCH`. Run again on a quiet machine.")
        print()
    else:
        threshold_report(args.models, kept, joint, small_batch)

    # ---- method
    counts = [len(samples) for samples in results.cells.values()]
    print(f"Median wall-clock time of one compiled step (forward, loss, backward, SGD update), in microseconds, over "
          f"at least {args.budget.min_repeats} calls and {args.budget.seconds:g} s per cell (here {min(counts)} to "
          f"{max(counts)} calls), spread over {args.budget.rounds} rounds in which the three steps take turns "
          f"(1 thread, 2 threads, automatic; each turn after a {args.pause:g} s pause that lets OpenBLAS's threads "
          f"stop spinning, and one untimed call), after 3 untimed warm-up calls. Each call continues from the model "
          f"and state the previous one returned, as in training. `t(1)/t(2)` above 1 means 2 threads are faster; "
          f"`faster` calls a tie when the medians differ by less than {TIE * 100:.0f}% or the interquartile ranges "
          f"overlap. `auto` is `threads=None`; `auto uses` is the count it set; `auto/best` is its time over the "
          f"faster fixed count's (1 up to noise when it picks well). `other load` is how many cores other "
          f"processes kept busy (or the hypervisor took) while the row was timed, from `/proc/stat` less this "
          f"process's CPU time: 2 BLAS threads need both cores, and a step waits for the slower thread at every "
          f"product, so a row with other load above {DISTURBED:g} is marked disturbed, shown, and left out of the "
          f"crossover and the threshold analysis. The crossover is the smallest batch size at which 2 threads "
          f"are faster and from which 1 thread is faster at no larger undisturbed size measured (ties allowed). {'Quick run: short and noisy. ' if args.quick else ''}")
    print()
    compiled = "; ".join(
        f"{name.upper()} " + ", ".join(f"{label} {milliseconds(results.compile_seconds[name, label])} ms"
                                       for label in VARIANTS)
        for name in args.models)
    print(f"Compilation is never timed: each step was called once, untimed, before any measurement (generation and "
          f"compilation, or loading from the disk cache, `step.compile_seconds`: {compiled}), with "
          f"{numba_cache_location(cold_cache)}. Check before timing, at every batch size: the first step with "
          f"each thread count, from the same model and batch, gives the same loss (largest relative difference "
          f"{results.worst_loss:.1e}) and the same parameter updates (largest difference {results.worst_param:.1e} "
          f"of the largest element).")
    print()

    # ---- Numba's own threads
    print("### Numba's prange: not used, so not timed")
    print()
    found = any("prange" in source or "parallel" in source for source in results.sources)
    in_steps = "contain `prange` or `parallel`" if found else "contain neither `prange` nor `parallel`"
    print(f"Checked in this run: {results.n_parallel} of the {results.n_kernels} Numba functions jitnn compiled (its "
          f"kernels and the generated steps) have `parallel=True`, and the generated steps' sources {in_steps}. So "
          f"`numba.set_num_threads` (Numba's pool has {results.numba_threads} threads here) changes nothing in these "
          f"steps, and there is no second thread count to measure: all parallelism is BLAS's, inside each matrix "
          f"product. Parallelizing the Conv2D loop over examples with `prange` (one GEMM per example) was not done "
          f"because it would nest thread pools: each of Numba's workers would call a GEMM that OpenBLAS may split "
          f"over its own threads, so on 2 cores Numba's 2 and BLAS's 2 threads would oversubscribe the machine "
          f"(4 busy threads, plus OpenBLAS's spinning waits). Such a kernel would have to pin BLAS to one thread "
          f"inside the loop, and would then compete with the Dense layer's multithreaded BLAS calls for the same "
          f"cores; the tables above measure only BLAS's threads.")


def summarize(sizes: Sequence[int], verdicts: dict[int, str], disturbed: Sequence[int]) -> str:
    """One model's conclusion: the crossover, and the undisturbed sizes where 1 thread wins."""
    clean = [size for size in sizes if size not in disturbed]
    if not clean:
        return f"every row was disturbed (other load above {DISTURBED:g} cores): no conclusion."
    cross = crossover(clean, [verdicts[size] for size in clean])
    ones = [size for size in clean if verdicts[size] == f"{FEW} thread"]
    twos = [size for size in clean if verdicts[size] == f"{MANY} threads"]
    if cross is None:
        text = "**no crossover within the sizes measured**: " + (
            f"two threads win at no size above {ones[-1]}, the largest where one thread wins" if ones
            else "two threads are faster at no batch size measured")
    elif cross == clean[0]:
        text = (f"**crossover at batch {cross}, the smallest size measured**: two threads are faster there, and one "
                f"thread is faster at no larger size")
    else:
        text = (f"**crossover at batch {cross}**: two threads are faster at {cross}, and one thread is faster at no "
                f"larger size measured")
    extra = []
    if ones:
        extra.append(f"one thread is faster at {', '.join(map(str, ones))}")
    below = [size for size in twos if cross is None or size < cross]
    if below:
        extra.append(f"two threads also win at {', '.join(map(str, below))}, below a size where one thread wins or "
                     f"the crossover (not monotonic: noise, or a real bump)")
    ties = [size for size in clean if verdicts[size] == "tie"]
    if ties:
        extra.append(f"ties at {', '.join(map(str, ties))}")
    if disturbed:
        extra.append(f"left out as disturbed: {', '.join(map(str, disturbed))}")
    return text + ("; " + "; ".join(extra) if extra else "") + "."


def threshold_report(models: Sequence[str], kept: dict[str, dict[int, tuple[float, float, str]]],
                     joint: Sequence[int], small_batch: int) -> None:
    classes = threshold_classes(joint)
    per_model = {name: class_costs(kept[name], classes) for name in models}
    current = class_of(small_batch, classes)
    rows = []
    for index, (low, high) in enumerate(classes):
        worst = max(per_model[name][index][1] for name in models)
        total = sum(per_model[name][index][0] for name in models)
        rows.append([describe_class(low, high) + (" (current)" if index == current else "")]
                    + [f"{per_model[name][index][1] * 100:.0f}%" for name in models]
                    + [f"{worst * 100:.0f}%", f"{total * 100:.0f}%"])
    print(markdown_table(["SMALL_BATCH"] + [f"{name.upper()} worst loss" for name in models]
                         + ["worst loss", "summed loss"], rows))
    print()
    print("For each range of `SMALL_BATCH` (values in one range make the same choice at every batch size measured): "
          "how much slower the count the rule would pick is than the faster fixed count, at the worst undisturbed "
          "batch size and summed over them (as fractions of the faster time; a tie costs nothing; 0% means the rule "
          "picks the faster count everywhere).")
    print()
    supported = [index for index in range(len(classes)) if max(per_model[name][index][1] for name in models) == 0]
    best = min(range(len(classes)), key=lambda i: (sum(per_model[name][i][0] for name in models), -i))
    if supported:
        runs: list[list[int]] = []  # neighbouring ranges joined
        for index in supported:
            if runs and runs[-1][-1] == index - 1:
                runs[-1].append(index)
            else:
                runs.append([index])
        ranges = " and ".join(describe_class(classes[run[0]][0], classes[run[-1]][1]) for run in runs)
        verdict = "supported" if current in supported else "not supported"
        print(f"**`SMALL_BATCH = {small_batch}` is {verdict} by these measurements**: the values with which the rule "
              f"picks the faster count (or one of two that tie) at every undisturbed batch size, for every model, "
              f"are {ranges}" + ("" if current in supported else
                                 f"; with {small_batch} the rule is up to "
                                 f"{max(per_model[name][current][1] for name in models) * 100:.0f}% slower") + ".")
    else:
        print(f"**No single `SMALL_BATCH` picks the faster count at every undisturbed batch size for every model**; "
              f"the smallest summed loss is at {describe_class(*classes[best])}, against "
              f"{sum(per_model[name][current][0] for name in models) * 100:.0f}% for the current "
              f"`SMALL_BATCH = {small_batch}`.")
    print()


if __name__ == "__main__":
    sys.exit(main())
