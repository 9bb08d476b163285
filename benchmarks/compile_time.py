#!/usr/bin/env python
"""Benchmark: time to the first finished training step, in a fresh Python process.

The model is a 784-256-128-10 ReLU MLP in float32 with ``jn.SoftmaxCrossEntropy()`` and
``jn.optim.sgd(0.01)``, trained on one random batch (64 examples by default). What a user
waits for before training starts is the import of NumPy and jitnn, building the model and
the data, and the first step, which generates the step's code and compiles it (or loads
its machine code from Numba's on-disk cache) before it runs. Every scenario runs in its own
child process (``python -c ...``), so nothing compiled or imported in one can shorten
another:

* ``compiled, cold cache``: ``jn.compile_step`` with ``NUMBA_CACHE_DIR`` pointing at a new,
  empty folder, so every kernel and the generated step are compiled;
* ``compiled, warm cache``: the same again, right after, with the folder the cold run
  filled, so everything is loaded from disk;
* ``generic, cold cache`` and ``generic, warm cache``: the same two runs for the generic
  path's first step, ``jn.train_step`` (``--no-generic`` leaves them out), each pair with
  its own new folder.

A cold run always gets a new folder (one per repeat), and a warm run the folder of the
cold run just before it; the folders are deleted afterwards. The child times itself with
``time.perf_counter`` from its first statement: the import of NumPy and jitnn, building
the model and the data, the first step (and, for the compiled step, the part of it that
``step.compile_seconds`` attributes to generating and compiling or loading), and a second
step, which shows the steady state. The parent also times the whole child process,
interpreter start-up and exit included. Each column is the median over ``--repeats``
runs, taken separately, so the columns need not add up exactly. Before the timed runs one
untimed child imports jitnn (with a throwaway cache folder and bytecode writing on, even
where ``PYTHONDONTWRITEBYTECODE`` is set), so that Python's bytecode caches exist, as they
do for an installed package, and the operating system has read the libraries once;
otherwise the first run alone would pay for that.

The target is a first finished step within 2 s of the child's start, import included,
with a warm cache.

The report on stdout is Markdown; progress goes to stderr.

Usage::

    python benchmarks/compile_time.py                 # 3 repeats of each scenario, about a minute
    python benchmarks/compile_time.py --quick         # 1 repeat
    python benchmarks/compile_time.py --repeats 5 --batch-size 256 --no-generic
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, NamedTuple

from _common import (
    ROOT,
    describe_machine,
    load_average,
    markdown_table,
    milliseconds,
    stderr,
    thread_settings,
)

SIZES = (784, 256, 128, 10)
LEARNING_RATE = 0.01
#: The target: seconds from the start of the child's code to its first finished step,
#: import included, with a warm cache (the compiled step).
TARGET_SECONDS = 2.0
CHILD_TIMEOUT_SECONDS = 600

#: The code every child runs. Arguments: the repository root, "compiled" or "generic", the
#: batch size. It prints one JSON line with its timings on stdout.
CHILD_CODE = """
import time
started = time.perf_counter()
import sys
root, path, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, root)
before_numpy = time.perf_counter()
import numpy as np
numpy_done = time.perf_counter()
import jitnn as jn
imported = time.perf_counter()

k1, k2, k3 = jn.random.split(jn.random.key(0), 3)
model = jn.pipe(jn.Dense.init(k1, {n0}, {n1}), jn.ReLU(), jn.Dense.init(k2, {n1}, {n2}), jn.ReLU(),
                jn.Dense.init(k3, {n2}, {n3}))
loss, optimizer = jn.SoftmaxCrossEntropy(), jn.optim.sgd({lr})
rng = np.random.default_rng(1)
X = rng.standard_normal((batch, {n0}), dtype=np.float32)
T = rng.integers(0, {n3}, batch)
if path == "compiled":
    step = jn.compile_step(model, loss, optimizer)
else:
    def step(model, state, X, T):
        return jn.train_step(model, state, loss, optimizer, X, T)
state = optimizer.init(model)
built = time.perf_counter()

model, state, value = step(model, state, X, T)
first_done = time.perf_counter()


def counts(dispatchers):
    hits = misses = 0
    for dispatcher in dispatchers:
        stats = getattr(dispatcher, "stats", None)
        if stats is not None:
            hits += sum(stats.cache_hits.values())
            misses += sum(stats.cache_misses.values())
    return hits, misses


import jitnn._jit
steps = [plan.function for plan in step._plans.values()] if path == "compiled" else []
kernel_hits, kernel_misses = counts(k for k in jitnn._jit.KERNELS if not any(k is s for s in steps))
step_hits = step_misses = None
compile_seconds = cached = None
if path == "compiled":  # the generated step is made with jitnn's jit too, so it is left out of the kernels
    compile_seconds, cached = step.compile_seconds, step.cached
    step_hits, step_misses = counts(steps)

second_started = time.perf_counter()
model, state, second_value = step(model, state, X, T)
second_done = time.perf_counter()

import json
print(json.dumps({{
    "import_seconds": imported - before_numpy,
    "numpy_import_seconds": numpy_done - before_numpy,
    "build_seconds": built - imported,
    "first_step_seconds": first_done - built,
    "compile_seconds": compile_seconds,
    "total_seconds": first_done - started,
    "second_step_seconds": second_done - second_started,
    "cached": cached,
    "kernel_cache_hits": kernel_hits,
    "kernel_cache_misses": kernel_misses,
    "step_cache_hits": step_hits,
    "step_cache_misses": step_misses,
    "losses": [float(value), float(second_value)],
}}))
""".format(n0=SIZES[0], n1=SIZES[1], n2=SIZES[2], n3=SIZES[3], lr=LEARNING_RATE)


class Scenario(NamedTuple):
    label: str
    path: str  # "compiled" or "generic"
    warm: bool


# --------------------------------------------------------------------------- arguments
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time the first finished training step of a 784-256-128-10 ReLU MLP (float32, SGD) in a "
        "fresh Python process, import included, with a cold and a warm Numba cache.",
    )
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each scenario; the table shows medians (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="examples in the batch (default: %(default)s)")
    parser.add_argument("--no-generic", action="store_true",
                        help="leave out the generic path (jn.train_step), time only the compiled step")
    parser.add_argument("--quick", action="store_true", help="one run of each scenario (same as --repeats 1)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


# --------------------------------------------------------------------------- the children
def child_environment(cache: str) -> dict[str, str]:
    """This process's environment with ``NUMBA_CACHE_DIR`` set to ``cache`` and this
    checkout of jitnn first on ``PYTHONPATH``."""
    environment = dict(os.environ)
    environment["NUMBA_CACHE_DIR"] = cache
    paths = [str(ROOT)] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    environment["PYTHONPATH"] = os.pathsep.join(paths)
    return environment


def run_child(path: str, batch: int, cache: str) -> dict[str, Any]:
    """Run one scenario's child with the Numba cache folder ``cache``; its report, with the
    wall time of the whole process added as ``process_seconds``."""
    command = [sys.executable, "-c", CHILD_CODE, str(ROOT), path, str(batch)]
    started = time.perf_counter()
    try:
        finished = subprocess.run(command, env=child_environment(cache), capture_output=True, text=True,
                                  timeout=CHILD_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the {path} child ran for more than {CHILD_TIMEOUT_SECONDS} s") from None
    process_seconds = time.perf_counter() - started
    lines = [line for line in finished.stdout.splitlines() if line.startswith("{")]
    if finished.returncode != 0 or not lines:
        raise RuntimeError(f"the {path} child failed (exit status {finished.returncode}):\n"
                           f"{finished.stdout}{finished.stderr}")
    report = json.loads(lines[-1])
    report["process_seconds"] = process_seconds
    return report


def prime() -> None:
    """One untimed import of jitnn in a child, with a throwaway cache folder: writes Python's
    bytecode caches and lets the operating system read the libraries once."""
    cache = tempfile.mkdtemp(prefix="jitnn-bench-prime-")
    try:
        environment = child_environment(cache)
        environment.pop("PYTHONDONTWRITEBYTECODE", None)  # as an installed package would have them
        finished = subprocess.run([sys.executable, "-c", "import numpy, jitnn"], env=environment,
                                  capture_output=True, text=True, timeout=CHILD_TIMEOUT_SECONDS)
        if finished.returncode != 0:
            raise RuntimeError(f"cannot import jitnn from {ROOT}:\n{finished.stderr}")
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def run_pair(path: str, batch: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A cold run with a new, empty cache folder, then a warm run with the folder it filled."""
    cache = tempfile.mkdtemp(prefix="jitnn-bench-cache-")
    try:
        cold = run_child(path, batch, cache)
        warm = run_child(path, batch, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return cold, warm


def source_state() -> dict[str, tuple[int, int]]:
    """The modification time and size of every Python file of jitnn. A change between a
    cold run and the warm run after it changes the generated step's name, so the warm run
    compiles it again."""
    return {str(path): (path.stat().st_mtime_ns, path.stat().st_size) for path in sorted((ROOT / "jitnn").rglob("*.py"))}


# --------------------------------------------------------------------------- the report
def median_of(reports: list[dict[str, Any]], key: str) -> float | None:
    values = [report[key] for report in reports if report.get(key) is not None]
    return statistics.median(values) if values else None


def cache_counts(reports: list[dict[str, Any]]) -> str:
    """Numba signatures loaded from disk and compiled (kernels plus the generated step), as
    "loaded / compiled", of the first run (every run of a scenario should agree)."""
    report = reports[0]
    hits = report["kernel_cache_hits"] + (report["step_cache_hits"] or 0)
    misses = report["kernel_cache_misses"] + (report["step_cache_misses"] or 0)
    text = f"{hits} / {misses}"
    if any((r["kernel_cache_hits"], r["kernel_cache_misses"], r["step_cache_hits"], r["step_cache_misses"])
           != (report["kernel_cache_hits"], report["kernel_cache_misses"], report["step_cache_hits"],
               report["step_cache_misses"]) for r in reports):
        text += " (varied)"
    return text


def total_cell(reports: list[dict[str, Any]]) -> str:
    """The median time to the first finished step, with the range when there are several runs."""
    values = [report["total_seconds"] for report in reports]
    text = milliseconds(statistics.median(values))
    if len(values) > 1:
        text += f" ({milliseconds(min(values))}–{milliseconds(max(values))})"
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = ["compiled"] if args.no_generic else ["compiled", "generic"]
    scenarios = [Scenario(f"{path}, {'warm' if warm else 'cold'} cache", path, warm)
                 for path in paths for warm in (False, True)]
    results: dict[Scenario, list[dict[str, Any]]] = {scenario: [] for scenario in scenarios}
    load_before = load_average()
    sources_before = source_state()

    stderr("importing jitnn once, untimed ...")
    prime()
    for repeat in range(args.repeats):
        for path in paths:
            stderr(f"run {repeat + 1}/{args.repeats}: {path}, cold then warm cache ...")
            cold, warm = run_pair(path, args.batch_size)
            results[Scenario(f"{path}, cold cache", path, False)].append(cold)
            results[Scenario(f"{path}, warm cache", path, True)].append(warm)
            for name, report in (("cold", cold), ("warm", warm)):
                stderr(f"  {name}: first step finished {report['total_seconds']:.2f} s after the start "
                       f"(import {report['import_seconds']:.2f} s, first step {report['first_step_seconds']:.2f} s), "
                       f"whole process {report['process_seconds']:.2f} s, second step "
                       f"{report['second_step_seconds'] * 1e3:.2f} ms")

    # ---- checks: every run of a path computed the same losses, and the warm runs compiled nothing
    problems = []
    for path in paths:
        losses = {tuple(report["losses"]) for scenario in scenarios if scenario.path == path
                  for report in results[scenario]}
        if len(losses) > 1:
            problems.append(f"the {path} runs computed different losses: {sorted(losses)}")
    compiled_losses = {tuple(r["losses"]) for s in scenarios if s.path == "compiled" for r in results[s]}
    generic_losses = {tuple(r["losses"]) for s in scenarios if s.path == "generic" for r in results[s]}
    if generic_losses and compiled_losses:
        a, b = next(iter(compiled_losses)), next(iter(generic_losses))
        if any(abs(x - y) > 1e-5 * abs(y) for x, y in zip(a, b)):
            problems.append(f"the compiled step's losses {a} differ from the generic path's {b}")
    for scenario in scenarios:
        if scenario.warm and any(r["kernel_cache_misses"] or r["step_cache_misses"] for r in results[scenario]):
            problems.append(f"{scenario.label}: some signatures were compiled instead of loaded from the cache")
    if any(report["cached"] is False for scenario in scenarios if scenario.path == "compiled"
           for report in results[scenario]):
        problems.append("the compiled step could not be cached on disk (step.cached is False)")
    if source_state() != sources_before:
        problems.append("jitnn's source files changed during the runs, so they timed different code")
    for problem in problems:
        stderr("warning: " + problem)

    # ---- the report
    print(f"## Time to the first finished training step, {'-'.join(map(str, SIZES))} ReLU MLP "
          f"(float32, softmax cross-entropy, SGD lr {LEARNING_RATE}, batch {args.batch_size})")
    print()
    for line in describe_machine(["numpy", "scipy", "numba", "llvmlite"]):
        print(line + "  ")
    load_after = load_average()
    load = (f"; 1-minute load average {load_before:.2f} before the runs, {load_after:.2f} after"
            if load_before is not None and load_after is not None else "")
    print(f"Threads: {thread_settings()}{load}.")
    print()

    headers = ["scenario", "import (ms)", "model + data (ms)", "first step (ms)", "of which compile/load (ms)",
               "first step finished, import included (ms)", "whole process (ms)", "second step (ms)",
               "Numba signatures loaded / compiled"]
    rows = []
    for scenario in scenarios:
        reports = results[scenario]
        rows.append([scenario.label,
                     milliseconds(median_of(reports, "import_seconds")),
                     milliseconds(median_of(reports, "build_seconds")),
                     milliseconds(median_of(reports, "first_step_seconds")),
                     milliseconds(median_of(reports, "compile_seconds")),
                     total_cell(reports),
                     milliseconds(median_of(reports, "process_seconds")),
                     milliseconds(median_of(reports, "second_step_seconds")),
                     cache_counts(reports)])
    print(markdown_table(headers, rows))
    print()
    numpy_import = median_of([r for reports in results.values() for r in reports], "numpy_import_seconds")
    runs = (f"Medians over {args.repeats} runs of each scenario, each run a new Python process; the range of the "
            f"runs in brackets." if args.repeats > 1 else "One run of each scenario, in a new Python process.")
    print(f"{runs} "
          f"\"compiled\" is `jn.compile_step`'s step, \"generic\" is `jn.train_step`. A cold run gets a new, empty "
          f"`NUMBA_CACHE_DIR`; the warm run after it reuses that folder. \"import\" is `import numpy, jitnn` "
          f"(NumPy alone: {milliseconds(numpy_import)} ms); \"model + data\" builds the model, the optimizer state, "
          f"the batch and the compiled step object; \"first step\" is the first call, \"of which compile/load\" the "
          f"part `step.compile_seconds` reports (generating the step's code, compiling it or loading it from disk). "
          f"\"first step finished\" runs from the child's first statement to the end of its first step; \"whole "
          f"process\" is the child's wall time seen from the parent, interpreter start-up and exit included. "
          f"Signature counts are Numba's cache hits and misses, jitnn's kernels and the generated step together, "
          f"after the first step.")
    print()
    if problems:
        print("Problems: " + "; ".join(problems) + ".")
        print()

    warm = results[Scenario("compiled, warm cache", "compiled", True)]
    warm_total = statistics.median(r["total_seconds"] for r in warm)
    verdict = "PASS" if warm_total < TARGET_SECONDS else "FAIL"
    print(f"Target: under {TARGET_SECONDS:g} s with a warm cache, import included (compiled step). "
          f"**{verdict}**: {warm_total:.2f} s (median; whole process "
          f"{statistics.median(r['process_seconds'] for r in warm):.2f} s).")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
