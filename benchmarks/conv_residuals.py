"""Benchmark: Conv2D keeping its columns for the backward pass against building them again.

``Conv2D`` hands its forward pass's columns (every example's im2col matrix, ``n (C kh kw +
1) Ho Wo`` values) to ``grad_params`` as residuals. This script times, side by side in one
run, the same networks with ``Conv2D`` and with ``Conv2DRecompute``, a subclass defined here
whose kernels are Conv2D's plain ones (no residuals: ``grad_params`` builds the columns
again, as before protocol 2). Cases: the generic backward pass (``jn.forward`` then
``jn.backward``), ``jn.value_and_grad`` and the compiled SGD step, for two networks:

- ``conv_step``: ``Conv2D(1 -> 32, 3x3), ReLU, MaxPool2D(2)`` on ``(64, 1, 28, 28)``, the
  block of ``benchmarks/conv_step.py`` (columns: 10 x 676 per example);
- ``deep``: ``Conv2D(16 -> 32, 3x3, padding 1), ReLU`` on ``(64, 16, 14, 14)`` (columns:
  145 x 196 per example, 7 MB for the batch).

Prints a Markdown table of medians (and the ratio ``recompute / residuals``: above 1 means
keeping the columns is faster). Run with the BLAS variables unset::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/conv_residuals.py
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Budget, describe_machine, markdown_table, measure_interleaved, thread_settings  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="timing budget per cell (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per cell (default: %(default)s)")
    args = parser.parse_args(argv)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".numba_cache"))

    import numpy as np

    import jitnn as jn
    from jitnn.layers import conv

    @jn.layer
    class Conv2DRecompute(jn.Conv2D):
        """Conv2D without residuals: grad_params builds the columns again."""

        kernels = jn.Kernels(conv._conv2d_forward, conv._conv2d_grad_input, conv._conv2d_grad_params)

    def networks(cls: type) -> dict[str, tuple[Any, np.ndarray]]:
        rng = np.random.default_rng(0)
        key = jn.random.key(0)
        small = jn.Conv2D.init(key, 1, 32, 3)
        deep = jn.Conv2D.init(key, 16, 32, 3, padding=1)
        return {
            "conv_step": (jn.pipe(cls(W=small.W, b=small.b), jn.ReLU(), jn.MaxPool2D(2)), rng.normal(size=(64, 1, 28, 28)).astype(np.float32)),
            "deep": (jn.pipe(cls(W=deep.W, b=deep.b, padding=1), jn.ReLU()), rng.normal(size=(64, 16, 14, 14)).astype(np.float32)),
        }

    def cases(cls: type) -> dict[str, Callable[[], Any]]:
        found = {}
        for name, (model, X) in networks(cls).items():
            Y, trace = jn.forward(model, X)
            dY = np.random.default_rng(1).normal(size=Y.shape).astype(np.float32)
            T = np.random.default_rng(2).normal(size=(X.shape[0], int(np.prod(Y.shape[1:])))).astype(np.float32)
            flat = jn.pipe(model, jn.Flatten())
            optimizer = jn.optim.sgd(0.01)
            step, state = jn.compile_step(flat, jn.MeanSquaredError(), optimizer), optimizer.init(flat)
            step(flat, state, X, T)  # compile (or load) before timing
            found[f"{name}: backward"] = lambda model=model, trace=trace, dY=dY: jn.backward(model, trace, dY)
            found[f"{name}: forward + backward"] = lambda model=model, X=X, dY=dY: jn.backward(model, jn.forward(model, X)[1], dY)
            found[f"{name}: value_and_grad"] = lambda flat=flat, X=X, T=T: jn.value_and_grad(flat, jn.MeanSquaredError(), X, T)
            found[f"{name}: compiled step"] = lambda step=step, flat=flat, state=state, X=X, T=T: step(flat, state, X, T)
        return found

    residual, recompute = cases(jn.Conv2D), cases(Conv2DRecompute)
    budget = Budget(args.seconds, min_repeats=10, rounds=args.rounds)
    rows = []
    for name in residual:
        samples = measure_interleaved({"residuals": residual[name], "recompute": recompute[name]}, budget)
        a, b = samples["residuals"].median, samples["recompute"].median
        rows.append([name, f"{a * 1e3:.3f}", f"{b * 1e3:.3f}", f"{b / a:.2f}"])
    print("\n".join(describe_machine(["numpy", "numba"])))
    print(thread_settings())
    print(markdown_table(["case (float32)", "residuals (ms)", "recompute (ms)", "recompute / residuals"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
