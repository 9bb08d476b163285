#!/usr/bin/env python
"""Benchmark: a new user's first run, from ``import`` to the end of the first epoch.

    python benchmarks/first_run.py [--base REV] [--repeats N] [--models mlp,cnn]

Each run is a new Python process (``python -c ...``) that imports NumPy and jitnn, loads
scikit-learn's 8x8 digits with ``jn.datasets.load_digits``, builds the model of
``examples/digits_mlp.py`` or ``examples/digits_cnn.py`` (the CNN: Conv2D, BatchNorm, ReLU,
MaxPool2D, Flatten, Dropout, Dense, AdamW with a warm-up cosine schedule) and trains it for
one epoch with ``jn.fit`` (batch 32, so 57 steps: compiled, or, while the step compiles in
another process, generic). A cold run gets a new, empty
``NUMBA_CACHE_DIR``; the warm run right after it reuses the folder the cold run filled. An
"after warmup" run gets another empty folder, filled first by ``python -m jitnn warmup
--dtype float32`` (timed on its own): the first run of a new architecture on a machine where
the built-in kernels were compiled ahead of time, so that only the model's own step compiles.

The child splits its time into phases with ``time.perf_counter`` (imports, the data, the
model, ``fit``), and splits the compilation inside ``fit`` with Numba's compile events
(``numba.core.event``, each compilation's time less the compilations nested in it):

* "step": the generated training step's own compilation, which in Numba includes linking
  in and optimizing again the machine code of every kernel it calls;
* "kernels": jitnn's ``@jit`` kernels;
* "Numba library": the implementations of NumPy functions and builtins that Numba compiles
  for the kernels (``np.empty``, ``np.take``, string formatting for error messages, ...);
* "rest of fit": everything else in ``fit``: Numba's one-time set-up in a process, loading
  machine code from the cache, and the 57 steps themselves.

``--base REV`` runs the same children, in the same run, against a git revision of this
repository (extracted with ``git archive`` into a temporary folder), alternating base and
head, so the table compares the two side by side. Every child prints its last loss; the
report says whether the two revisions and the cold and warm runs agree to the bit.

Run it with ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` unset (``env -u ...``), on an
otherwise idle machine: compilation is single-threaded and any other load lands in it.
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
from pathlib import Path
from typing import Any

from _common import ROOT, describe_machine, load_average, markdown_table, stderr, thread_settings

#: The targets of the first run, in seconds from the child's first statement to the end of
#: the first epoch: (cold cache, warm cache) per model; a run after the warmup is held to the
#: cold target (its model's step is new).
TARGETS = {"cnn": (5.0, 1.5), "mlp": (2.5, 1.5)}
STATES = ("cold", "warm", "after warmup")
CHILD_TIMEOUT_SECONDS = 900

CHILD_CODE = r"""
import time
started = time.perf_counter()
import sys
sys.path.insert(0, sys.argv[1])
which = sys.argv[2]
import numpy as np
numpy_done = time.perf_counter()
import jitnn as jn
jitnn_done = time.perf_counter()
from numba.core import event
recorder = event.RecordingListener()
event.register("numba:compile", recorder)
X, T = jn.datasets.load_digits(images=which == "cnn")
data_done = time.perf_counter()
key = jn.random.key(0)
k1, k2, k3, train_key = jn.random.split(key, 4)
if which == "cnn":
    model = jn.pipe(jn.Conv2D.init(k1, 1, 16, 3, padding=1), jn.BatchNorm.init(None, 16), jn.ReLU(),
                    jn.MaxPool2D(2), jn.Flatten(), jn.Dropout(0.2), jn.Dense.init(k2, 256, 10))
    steps = jn.data.n_batches(len(X), 32)
    optimizer = jn.optim.adamw(jn.optim.warmup_cosine_decay(3e-3, warmup_steps=steps // 10, decay_steps=steps))
else:
    model = jn.pipe(jn.Dense.init(k1, 64, 128, weight_init=jn.init.he_normal), jn.ReLU(),
                    jn.Dense.init(k2, 128, 64, weight_init=jn.init.he_normal), jn.ReLU(), jn.Dense.init(k3, 64, 10))
    optimizer = jn.optim.sgd(0.1)
model_done = time.perf_counter()
generic = [0]
run_generic = getattr(jn.CompiledStep, "_generic_step", None)  # a revision without background compilation: none
def counted(self, *args, **kwargs):
    generic[0] += 1
    return run_generic(self, *args, **kwargs)
if run_generic is not None:
    jn.CompiledStep._generic_step = counted
result = jn.fit(model, jn.SoftmaxCrossEntropy(), optimizer, X, T, key=train_key, epochs=1, batch_size=32)
fit_done = time.perf_counter()
import os
while True:  # the step compiling in the background: wait, so that the next run finds it cached
    try:
        os.wait()
    except ChildProcessError:
        break
background_done = time.perf_counter()

own = {"step": 0.0, "kernels": 0.0, "library": 0.0}
each = {}
stack = []
for stamp, record in recorder.buffer:
    if record.is_start:
        stack.append([record.data["dispatcher"], stamp, 0.0])
        continue
    dispatcher, begun, nested = stack.pop()
    spent = stamp - begun
    if stack:
        stack[-1][2] += spent
    module = getattr(dispatcher.py_func, "__module__", "") or ""
    kind = "step" if module.startswith("jitnn_step_") else "kernels" if module.startswith("jitnn") else "library"
    own[kind] += spent - nested
    name = module.split(".")[-1] + "." + dispatcher.py_func.__qualname__
    each[name] = each.get(name, 0.0) + spent - nested
import json
print(json.dumps({
    "numpy": numpy_done - started, "jitnn": jitnn_done - numpy_done, "data": data_done - jitnn_done,
    "model": model_done - data_done, "fit": fit_done - model_done, "total": fit_done - started,
    "step": own["step"], "kernels": own["kernels"], "library": own["library"],
    "generic": generic[0], "background": background_done - fit_done,
    "slowest": sorted(each.items(), key=lambda item: -item[1])[:8],
    "sklearn_imported": "sklearn" in sys.modules, "file": jn.__file__, "loss": float(result.history[-1]).hex(),
}))
"""

COLUMNS = [("numpy", "import NumPy"), ("jitnn", "import jitnn"), ("data", "load digits"), ("model", "build model"),
           ("step", "compile: step"), ("kernels", "compile: kernels"), ("library", "compile: Numba library"),
           ("rest", "rest of fit"), ("total", "total"), ("generic", "generic steps"),
           ("background", "background compile after the epoch")]


def run_child(tree: Path, which: str, cache: str) -> dict[str, Any]:
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment["NUMBA_CACHE_DIR"] = cache
    finished = subprocess.run([sys.executable, "-c", CHILD_CODE, str(tree), which], env=environment,
                              capture_output=True, text=True, timeout=CHILD_TIMEOUT_SECONDS, cwd=tempfile.gettempdir())
    lines = [line for line in finished.stdout.splitlines() if line.startswith("{")]
    if finished.returncode != 0 or not lines:
        raise RuntimeError(f"the {which} child of {tree} failed ({finished.returncode}):\n{finished.stdout}{finished.stderr}")
    report = json.loads(lines[-1])
    if not Path(report["file"]).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"the child imported jitnn from {report['file']}, not from {tree}")
    report["rest"] = report["fit"] - report["step"] - report["kernels"] - report["library"]
    return report


def run_warmup(tree: Path, cache: str) -> float:
    """``python -m jitnn warmup --dtype float32`` into ``cache``; its wall time in seconds."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment.update(NUMBA_CACHE_DIR=cache, PYTHONPATH=str(tree))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jitnn", "warmup", "--dtype", "float32", "--quiet"], env=environment, check=True,
                   capture_output=True, timeout=CHILD_TIMEOUT_SECONDS, cwd=tempfile.gettempdir())
    return time.perf_counter() - started


def extract(revision: str, into: Path) -> None:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "jitnn"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)


def prime(tree: Path) -> None:
    """One untimed import, so that Python's bytecode caches exist and the libraries were read once."""
    cache = tempfile.mkdtemp(prefix="jitnn-first-run-prime-")
    try:
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tree)!r}); import numpy, jitnn"],
                       env={**os.environ, "NUMBA_CACHE_DIR": cache}, check=True, capture_output=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="a git revision to run side by side with this working tree")
    parser.add_argument("--repeats", type=int, default=1, help="cold, warm and after-warmup runs per model and tree (default 1)")
    parser.add_argument("--models", default="cnn,mlp", help="comma-separated: cnn, mlp (default both)")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    if not models or any(m not in TARGETS for m in models) or args.repeats < 1:
        parser.error("--models takes cnn and/or mlp, --repeats at least 1")

    scratch = Path(tempfile.mkdtemp(prefix="jitnn-first-run-"))
    trees = {"head": ROOT}
    try:
        if args.base:
            (scratch / "base").mkdir()
            extract(args.base, scratch / "base")
            trees = {"base": scratch / "base", "head": ROOT}
        for tree in trees.values():
            prime(tree)
        load_before = load_average()
        results: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        warmups: dict[str, list[float]] = {}
        for repeat in range(args.repeats):
            for which in models:
                for side, tree in trees.items():
                    cache = tempfile.mkdtemp(prefix="cache-", dir=scratch)
                    for state in STATES:
                        if state == "after warmup":
                            if not (tree / "jitnn" / "warmup.py").exists():
                                continue  # a revision without the warmup command
                            shutil.rmtree(cache, ignore_errors=True)
                            cache = tempfile.mkdtemp(prefix="cache-", dir=scratch)
                            stderr(f"run {repeat + 1}/{args.repeats}: {side}, python -m jitnn warmup ...")
                            warmups.setdefault(side, []).append(run_warmup(tree, cache))
                        stderr(f"run {repeat + 1}/{args.repeats}: {which}, {side}, {state} cache ...")
                        report = run_child(tree, which, cache)
                        results.setdefault((which, side, state), []).append(report)
                        stderr(f"  {report['total']:.2f} s")
                    shutil.rmtree(cache, ignore_errors=True)
        load_after = load_average()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print("## The first run: import to the end of the first epoch on the digits, a new process")
    print()
    for line in describe_machine(["numpy", "numba", "llvmlite", "scikit-learn"]):
        print(line + "  ")
    print(f"Threads: {thread_settings()}; 1-minute load average {load_before} before, {load_after} after.")
    print()
    headers = ["model", "tree", "cache"] + [title + ("" if key == "generic" else " (s)") for key, title in COLUMNS] + ["target (s)"]
    rows = []
    for (which, side, state), reports in results.items():
        medians = {key: statistics.median(r.get(key, 0) for r in reports) for key, _ in COLUMNS}  # a base without background: 0
        target = TARGETS[which][state == "warm"]
        rows.append([which, side if args.base else "this tree", state] + [f"{medians[key]:.0f}" if key == "generic" else f"{medians[key]:.2f}" for key, _ in COLUMNS]
                    + [f"{target:g} ({'met' if medians['total'] <= target else 'not met'})"])
    print(markdown_table(headers, rows, right_align_from=3))
    print()
    for side, seconds in warmups.items():
        print(f"`python -m jitnn warmup --dtype float32` into an empty cache ({side if args.base else 'this tree'}): "
              f"median {statistics.median(seconds):.1f} s over {len(seconds)} run{'s' if len(seconds) > 1 else ''}, before each \"after warmup\" row's run.")
        print()
    print(f"{'Medians over ' + str(args.repeats) + ' runs' if args.repeats > 1 else 'One run'} per row. "
          "\"compile: ...\" is each compilation's own time (less the compilations nested in it); "
          "\"rest of fit\" is Numba's set-up, loading from the cache and the 57 steps; \"generic steps\" ran "
          "the generic path while the step compiled in another process (`fit`'s default), and \"background compile "
          "after the epoch\" is how much longer that process ran (the next run waits for it).")
    print()
    print("Slowest compilations of the cold runs (each function's own time, signatures summed, first run):")
    print()
    for (which, side, state), reports in results.items():
        if state == "cold":
            listed = ", ".join(f"`{name}` {seconds:.2f}" for name, seconds in reports[0]["slowest"])
            print(f"- {which}, {side if args.base else 'this tree'}: {listed}")
    print()
    losses = {r["loss"] for reports in results.values() for r in reports}
    per_model = {which: {r["loss"] for (w, _, _), reports in results.items() if w == which for r in reports}
                 for which in models}
    agree = all(len(v) == 1 for v in per_model.values())
    print(f"Last losses {'agree to the bit' if agree else 'DIFFER'} between every run of a model "
          f"({len(losses)} distinct values over {len(models)} models). scikit-learn imported: "
          f"{sorted({r['sklearn_imported'] for reports in results.values() for r in reports})}.")
    return 0 if agree else 1


if __name__ == "__main__":
    started = time.perf_counter()
    status = main()
    stderr(f"done in {time.perf_counter() - started:.0f} s")
    sys.exit(status)
