#!/usr/bin/env python
"""Benchmark: the matrix products of a 784-256-128-10 MLP step, through jitnn's BLAS and
through Numba's own ``@``.

jitnn's kernels multiply with ``jitnn._blas.matmul``, which calls the OpenBLAS bundled with
NumPy where there is one; Numba's ``@`` inside compiled code calls SciPy's BLAS. The two
wheels often carry different OpenBLAS releases. For each batch size this script times the
products of one training step of the MLP, each compiled both ways and called from Python on
the same float32 arrays, into fresh outputs as the kernels do:

* ``X @ W``   the forward product of each layer, ``(n, in) @ (in, out)``;
* ``dY @ W.T`` the gradient to each layer's input (not needed for the first layer);
* ``X.T @ dY`` the gradient to each weight matrix.

Both libraries run on the thread count the compiled step chooses for that batch
(``jitnn._blas.auto_threads``), set in both. Each cell is the median of single calls, the two
ways taking turns in rounds after a short pause (another library's OpenBLAS threads spin
for about 0.1 s after a call). The first call of each compiled function (compilation) is
left out. Before timing, both results are checked against NumPy's to float32 tolerance.

Usage::

    NUMBA_CACHE_DIR=.numba_cache python benchmarks/gemm.py
    python benchmarks/gemm.py --quick --batch-sizes 16,1024
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np

from _common import (
    ROOT,
    TimingDefaults,
    add_timing_arguments,
    describe_machine,
    markdown_table,
    measure_interleaved,
    microseconds,
    positive_integers,
    ratio,
    resolve_timing,
    run_with_cache_choice,
    stderr,
)

SIZES = (784, 256, 128, 10)
DEFAULT_BATCH_SIZES = (1, 16, 64, 256, 1024)
TIMING = TimingDefaults(seconds=0.3, quick_seconds=0.05)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time the MLP step's matrix products through jitnn's BLAS "
                                     "and through Numba's own @ (SciPy's BLAS).")
    parser.add_argument("--batch-sizes", type=positive_integers, default=DEFAULT_BATCH_SIZES, metavar="N,N,...",
                        help="batch sizes to time (default: %(default)s)")
    add_timing_arguments(parser, TIMING, "seed for the arrays")
    args = parser.parse_args(argv)
    resolve_timing(parser, args, TIMING)
    return args


def products(batch: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, A, B) for every product of one step, with A and B as the kernels see them."""
    found = []
    for layer, (n_in, n_out) in enumerate(zip(SIZES[:-1], SIZES[1:]), start=1):
        X = rng.standard_normal((batch, n_in), dtype=np.float32)
        W = rng.standard_normal((n_in, n_out), dtype=np.float32)
        dY = rng.standard_normal((batch, n_out), dtype=np.float32)
        found.append((f"layer {layer}: X @ W", X, W))
        if layer > 1:
            found.append((f"layer {layer}: dY @ W.T", dY, W.T))
        found.append((f"layer {layer}: X.T @ dY", X.T, dY))
    return found


def main(argv: list[str] | None = None) -> int:
    return run_with_cache_choice(run, parse_args(argv))


def run(args: argparse.Namespace, cold_cache: str | None) -> int:
    sys.path.insert(0, str(ROOT))
    import numba

    from jitnn import _blas
    from jitnn._blas import matmul

    @numba.njit(cache=True)
    def through_jitnn(A: Any, B: Any) -> Any:
        return matmul(A, B)

    @numba.njit(cache=True)
    def through_numba(A: Any, B: Any) -> Any:
        return A @ B

    scipy_pool = _blas._scipy_openblas()
    library = _blas.library()
    rng = np.random.default_rng(args.seed)
    rows, totals = [], []
    for batch in args.batch_sizes:
        threads = _blas.auto_threads(batch)
        if scipy_pool.set_threads:
            scipy_pool.set_threads(threads)
        total = {"jitnn": 0.0, "numba": 0.0}
        with _blas.threads(threads):
            for label, A, B in products(batch, rng):
                expected = A.astype(np.float64) @ B.astype(np.float64)
                for name, function in (("jitnn", through_jitnn), ("numba", through_numba)):
                    got = function(A, B)  # compiles (or loads) once per layout
                    scale = np.abs(expected).max() or 1.0
                    if not np.abs(got - expected).max() <= 1e-4 * scale:
                        stderr(f"{name} gives a wrong product for {label} at batch {batch}")
                        return 1
                stderr(f"batch {batch}: {label}")
                samples = measure_interleaved({"jitnn": lambda: through_jitnn(A, B), "numba": lambda: through_numba(A, B)},
                                              args.budget, pause=args.pause)
                medians = {name: samples[name].median for name in samples}
                for name in total:
                    total[name] += medians[name]
                rows.append([str(batch), str(threads), label, microseconds(medians["jitnn"]), microseconds(medians["numba"]),
                             ratio(medians["numba"], medians["jitnn"])])
        totals.append([str(batch), str(threads), microseconds(total["jitnn"]), microseconds(total["numba"]),
                       ratio(total["numba"], total["jitnn"])])

    print("## The MLP step's matrix products: jitnn's BLAS against Numba's `@`\n")
    for line in describe_machine(["numpy", "scipy", "numba"]):
        print(line + "  ")
    where = {"numpy": f"NumPy's bundled OpenBLAS ({os.path.basename(library.path)})",
             "scipy": "Numba's own product, SciPy's BLAS (NumPy has no bundled OpenBLAS here, or JITNN_BLAS=scipy)"}
    print(f"jitnn's products run on {where[library.name]}.\n")
    print(markdown_table(["batch", "threads", "all products (sum)", "jitnn (µs)", "Numba @ (µs)", "Numba/jitnn"],
                         [[b, t, "", j, n, r] for b, t, j, n, r in totals], right_align_from=3))
    print("\nPer product:\n")
    print(markdown_table(["batch", "threads", "product", "jitnn (µs)", "Numba @ (µs)", "Numba/jitnn"], rows,
                         right_align_from=3))
    print(f"\nMedian wall-clock time of one call from Python, over at least {args.min_repeats} calls and "
          f"{args.seconds:g} s per cell in {args.rounds} rounds; `Numba/jitnn` above 1 means jitnn's product is faster. "
          "Both include allocating the output and Numba's dispatch (about 1 µs).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
