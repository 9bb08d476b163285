#!/usr/bin/env python
"""Benchmark: forward and backward pass of ``Conv2D(1 -> 32, 3x3), ReLU, MaxPool2D(2)``, float32.

The block is applied to a random batch ``X (64, 1, 28, 28)`` by default (``--batch``,
``--channels-in``, ``--channels-out``, ``--size``); a fixed random output gradient ``dY`` of
the output's shape ``(64, 32, 13, 13)`` is passed back, and every implementation returns the
output ``Y`` and the gradients ``dW``, ``db`` (the convolution's parameters) and ``dX`` (the
input). One call, "a step", is timed for

* ``jitnn``: ``Y, trace = jn.forward(model, X)`` then ``grads, dX = jn.backward(model, trace, dY)``
  with ``model = jn.pipe(jn.Conv2D.init(key, 1, 32, 3), jn.ReLU(), jn.MaxPool2D(2))``; also
  each half alone (``jn.forward``, and ``jn.backward`` from one fixed trace);
* ``numpy``: the same block written by hand with NumPy: im2col through
  ``sliding_window_view`` (one copy), the convolution as one matrix product (``@``, BLAS), the
  ReLU mask, a 2x2 max pool by reshaping and ``argmax``; backward: the pool's gradient
  scattered to each window's maximum (``put_along_axis``), the ReLU mask,
  ``dW = dZ_matrix.T @ columns``, ``db`` as column sums, and ``dX`` by col2im, one slice
  addition per kernel offset;
* ``torch``: PyTorch eager, ``F.conv2d``, ``F.relu``, ``F.max_pool2d`` with autograd and
  ``Y.backward(dY)`` each step (the gradients are reset to ``None`` first, as
  ``zero_grad()`` does), at PyTorch's default thread count (shown in the header).

PyTorch is optional: without it its row reads ``n/a``.

Every implementation uses jitnn's initial weights (He uniform, and a random bias so that the
check covers the bias) and the same ``X`` and ``dY``. Before timing, the first step of each is
compared with jitnn's: ``Y``, ``dW``, ``db`` and ``dX`` must agree to float32 tolerance,
otherwise the script stops with exit code 1. The first call of each implementation is timed
on its own ("first call (compile)": Numba compilation or on-disk cache load, PyTorch's lazy
set-up) and never counted in the step times, which are medians of single-call wall-clock
times, taken in rounds in which the implementations take turns, each turn after a short
pause so that another library's OpenBLAS threads stop spinning first (as ``mlp_step.py``).

The project's stated aim is jitnn within 2x of PyTorch on this block; the report says
whether it holds.

The report on stdout is Markdown; progress goes to stderr.

Usage::

    NUMBA_CACHE_DIR=.numba_cache python benchmarks/conv_step.py           # full run
    python benchmarks/conv_step.py --quick                                # a short run
    python benchmarks/conv_step.py --batch 256 --channels-out 64 --size 32
    python benchmarks/conv_step.py --cold-cache   # compile jitnn's kernels afresh
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from _common import (
    implementations_type,
    run_with_cache_choice,
    TimingDefaults,
    add_timing_arguments,
    resolve_timing,
    ROOT,
    describe_machine,
    first_call,
    import_timed,
    kernel_cache_counts,
    load_average,
    markdown_table,
    measure_interleaved,
    microseconds,
    milliseconds,
    numba_cache_location,
    page_faults_per_call,
    ratio,
    relative_difference,
    settle,
    stderr,
    thread_settings,
)

KERNEL = 3  # the convolution's kernel size (stride 1, no padding)
POOL = 2  # the max pool's kernel size and stride
IMPLEMENTATIONS = ("jitnn", "numpy", "torch")
LABELS = {"jitnn": "jitnn", "numpy": "NumPy im2col", "torch": "PyTorch"}
#: The project's aim: jitnn's step at most this many times PyTorch's.
TARGET_VERSUS_TORCH = 2.0
#: How closely each implementation's Y, dW, db and dX must match jitnn's: the largest
#: difference relative to the largest element of jitnn's array.
TOLERANCE = 1e-4
OUTPUTS = ("Y", "dW", "db", "dX")


# --------------------------------------------------------------------------- arguments
#: The timing budget per table cell, for a full and a --quick run.
TIMING = TimingDefaults(seconds=3.0, min_repeats=50, rounds=6, quick_seconds=0.3)

def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=f"Time the forward and backward pass of Conv2D({KERNEL}x{KERNEL}), ReLU, MaxPool2D({POOL}) in "
        "float32: jitnn against a NumPy im2col version and PyTorch.",
    )
    parser.add_argument("--batch", type=_positive, default=64, help="examples in the batch (default: %(default)s)")
    parser.add_argument("--channels-in", type=_positive, default=1,
                        help="input channels (default: %(default)s)")
    parser.add_argument("--channels-out", type=_positive, default=32,
                        help="output channels of the convolution (default: %(default)s)")
    parser.add_argument("--size", type=_positive, default=28,
                        help=f"height and width of the (square) images, at least {KERNEL - 1 + POOL} "
                        "(default: %(default)s)")
    parser.add_argument("--impls", type=implementations_type(IMPLEMENTATIONS, "jitnn"), default=IMPLEMENTATIONS, metavar="NAME,...",
                        help=f"implementations to run, from {','.join(IMPLEMENTATIONS)}; jitnn is always one "
                        "(default: all)")
    add_timing_arguments(parser, TIMING, "seed for the weights and the data")
    args = parser.parse_args(argv)
    if args.size < KERNEL - 1 + POOL:
        parser.error(f"--size must be at least {KERNEL - 1 + POOL}, so that the pooled output is not empty")
    resolve_timing(parser, args, TIMING)
    return args


# --------------------------------------------------------------------------- implementations
# Each implementation is a factory ``build(X, W, b, dY) -> step``: ``X (n, C, H, W)`` the
# batch, ``W (out, C, k, k)`` and ``b (out,)`` jitnn's parameters as writable NumPy copies,
# ``dY`` the output gradient. ``step()`` runs the forward and backward pass once and returns
# ``(Y, dW, db, dX)`` in any array type ``np.asarray`` reads (for the check).
def jitnn_parts(jn: Any, model: Any, X: np.ndarray, dY: np.ndarray) -> dict[str, Callable[[], Any]]:
    """jitnn's step, and its forward and backward passes alone (backward from one fixed trace)."""

    def step() -> tuple[Any, ...]:
        Y, trace = jn.forward(model, X)
        grads, dX = jn.backward(model, trace, dY)
        conv = grads.layers[0]
        return Y, conv.W, conv.b, dX

    def forward() -> Any:
        return jn.forward(model, X)

    trace: dict[str, Any] = {}

    def backward() -> Any:
        if "trace" not in trace:  # the first call makes the trace (and is timed as a first call)
            trace["trace"] = jn.forward(model, X)[1]
        return jn.backward(model, trace["trace"], dY)

    return {"step": step, "forward": forward, "backward": backward}


def numpy_step(X: np.ndarray, W: np.ndarray, b: np.ndarray, dY: np.ndarray) -> tuple[np.ndarray, ...]:
    """Conv2D (stride 1, no padding), ReLU and a POOL x POOL max pool by hand, forward and backward.

    Inside, images are kept channels-last, ``(n, Ho, Wo, out)``: the rows of the matrix products.
    """
    n, C, H, Wd = X.shape
    out, _, kh, kw = W.shape
    Ho, Wo = H - kh + 1, Wd - kw + 1
    Po, Qo = Ho // POOL, Wo // POOL
    # forward: im2col, one row per output position (i, y, x), one column per weight position (c, a, b)
    columns = sliding_window_view(X, (kh, kw), axis=(2, 3)).transpose(0, 2, 3, 1, 4, 5).reshape(n * Ho * Wo, C * kh * kw)
    W_matrix = W.reshape(out, C * kh * kw)
    Z = columns @ W_matrix.T  # (n Ho Wo, out)
    Z += b
    A = np.maximum(Z, 0)
    windows = (A.reshape(n, Ho, Wo, out)[:, : Po * POOL, : Qo * POOL]
               .reshape(n, Po, POOL, Qo, POOL, out).transpose(0, 1, 3, 5, 2, 4).reshape(n, Po, Qo, out, POOL * POOL))
    where = windows.argmax(axis=-1)[..., None]  # the first maximum, row-major in the window (PyTorch's rule)
    Y = np.take_along_axis(windows, where, axis=-1)[..., 0].transpose(0, 3, 1, 2)  # (n, out, Po, Qo)
    # backward: the pool's gradient to each window's maximum, the ReLU mask, then the convolution
    dwindows = np.zeros((n, Po, Qo, out, POOL * POOL), X.dtype)
    np.put_along_axis(dwindows, where, dY.transpose(0, 2, 3, 1)[..., None], axis=-1)
    dA = np.zeros((n, Ho, Wo, out), X.dtype)
    dA[:, : Po * POOL, : Qo * POOL] = (dwindows.reshape(n, Po, Qo, out, POOL, POOL).transpose(0, 1, 4, 2, 5, 3)
                                       .reshape(n, Po * POOL, Qo * POOL, out))
    dZ = dA.reshape(n * Ho * Wo, out)
    dZ *= Z > 0
    dW = (dZ.T @ columns).reshape(W.shape)
    db = dZ.sum(axis=0)
    dcolumns = (dZ @ W_matrix).reshape(n, Ho, Wo, C, kh, kw)
    dX = np.zeros_like(X)
    for a in range(kh):  # col2im: each kernel offset's slice of the columns goes back where it was read
        for c in range(kw):
            dX[:, :, a : a + Ho, c : c + Wo] += dcolumns[:, :, :, :, a, c].transpose(0, 3, 1, 2)
    return Y, dW, db, dX


def numpy_factory(_: Any = None) -> Callable[..., Callable[[], Any]]:
    def build(X: np.ndarray, W: np.ndarray, b: np.ndarray, dY: np.ndarray) -> Callable[[], Any]:
        return lambda: numpy_step(X, W, b, dY)

    return build


def torch_factory(torch: Any) -> Callable[..., Callable[[], Any]]:
    functional = torch.nn.functional

    def build(X: np.ndarray, W: np.ndarray, b: np.ndarray, dY: np.ndarray) -> Callable[[], Any]:
        X_tensor = torch.from_numpy(X.copy()).requires_grad_(True)  # dX is computed, as by the others
        W_tensor = torch.from_numpy(W.copy()).requires_grad_(True)
        b_tensor = torch.from_numpy(b.copy()).requires_grad_(True)
        dY_tensor = torch.from_numpy(dY.copy())

        def step() -> tuple[Any, ...]:
            X_tensor.grad = W_tensor.grad = b_tensor.grad = None  # zero the gradients (zero_grad's default)
            Y = functional.max_pool2d(functional.relu(functional.conv2d(X_tensor, W_tensor, b_tensor)), POOL)
            Y.backward(dY_tensor)
            return Y.detach(), W_tensor.grad, b_tensor.grad, X_tensor.grad

        return step

    return build


FACTORIES = {"numpy": numpy_factory, "torch": torch_factory}


def _as_arrays(result: tuple[Any, ...]) -> dict[str, np.ndarray]:
    return {name: np.asarray(value) for name, value in zip(OUTPUTS, result)}


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    return run_with_cache_choice(run, parse_args(argv))


def run(args: argparse.Namespace, cold_cache: str | None) -> int:
    """The benchmark; ``cold_cache`` is the new, empty Numba cache folder of ``--cold-cache``."""
    sys.path.insert(0, str(ROOT))  # benchmark this checkout of jitnn
    n, C, out, size = args.batch, args.channels_in, args.channels_out, args.size

    # ---- imports, timed
    jn, jitnn_import, error = import_timed("jitnn")
    if jn is None:
        raise ImportError(f"cannot import jitnn from {ROOT}: {error}")
    torch, torch_import, torch_missing = (import_timed("torch") if "torch" in args.impls else (None, None, None))
    if "torch" in args.impls and torch is None:
        stderr(f"PyTorch: not installed ({torch_missing}); its row will read n/a")
    active = [name for name in args.impls if not (name == "torch" and torch is None)]

    # ---- the model, the data, and the same weights for everyone
    weight_key, bias_key = jn.random.split(jn.random.key(args.seed))
    conv = jn.Conv2D.init(weight_key, C, out, KERNEL)
    bias = jn.random.uniform(bias_key, (out,), -0.5, 0.5)  # a zero bias would leave the bias out of the check
    model = jn.pipe(jn.Conv2D(W=conv.W, b=bias), jn.ReLU(), jn.MaxPool2D(POOL))
    W, b = np.array(model.layers[0].W), np.array(model.layers[0].b)
    data_rng = np.random.default_rng(args.seed + 1)
    X = data_rng.standard_normal((n, C, size, size), dtype=np.float32)
    output_shape = (n, out, *model.output_shape((C, size, size))[1:])
    dY = data_rng.standard_normal(output_shape, dtype=np.float32)
    stderr(f"X {X.shape} -> Y {output_shape}; implementations: {', '.join(active)}")

    # ---- first calls, timed alone (jitnn's forward, then its backward, then the peers)
    args.load = [load_average()]
    cache_before = kernel_cache_counts()
    parts = jitnn_parts(jn, model, X, dY)
    first_calls: dict[str, float] = {}
    settle(args.pause)
    first_calls["jitnn forward"], (Y, trace) = first_call(lambda: jn.forward(model, X))
    first_calls["jitnn backward"], (grads, dX) = first_call(lambda: jn.backward(model, trace, dY))
    first_calls["jitnn"] = first_calls["jitnn forward"] + first_calls["jitnn backward"]
    cache_after_first = kernel_cache_counts()
    results = {"jitnn": _as_arrays((Y, grads.layers[0].W, grads.layers[0].b, dX))}
    steps: dict[str, Callable[[], Any]] = {"jitnn": parts["step"]}
    for name in active[1:]:
        steps[name] = FACTORIES[name](torch if name == "torch" else None)(X.copy(), W.copy(), b.copy(), dY.copy())
        settle(args.pause)
        first_calls[name], result = first_call(steps[name])
        results[name] = _as_arrays(result)

    # ---- the check: every implementation's Y, dW, db, dX against jitnn's (and jitnn's step against its first passes)
    results["jitnn step"] = _as_arrays(steps["jitnn"]())
    differences: dict[tuple[str, str], float] = {}
    problems = []
    for name, result in results.items():
        if name == "jitnn":
            continue
        for output in OUTPUTS:
            difference = relative_difference(result[output], results["jitnn"][output])
            differences[name, output] = difference
            if not difference <= TOLERANCE:  # also catches NaN and a shape mismatch (inf)
                problems.append(f"{name} {output} (shape {result[output].shape}) differs from jitnn's "
                                f"(shape {results['jitnn'][output].shape}) by {difference:.2e} of its largest element "
                                f"(tolerance {TOLERANCE:g})")
    if problems:
        stderr("The implementations disagree; not timing a wrong step:\n  " + "\n  ".join(problems))
        return 1
    for name in ["jitnn step", *active[1:]]:
        stderr(f"  {name:10s} first call {milliseconds(first_calls.get(name, first_calls['jitnn']))} ms; "
               f"differences from jitnn's first passes: "
               + ", ".join(f"{output} {differences[name, output]:.1e}" for output in OUTPUTS))

    # ---- the step times, interleaved; jitnn's halves take their turns in the same rounds
    calls = dict(steps)
    calls["jitnn forward"], calls["jitnn backward"] = parts["forward"], parts["backward"]
    stderr(f"timing {', '.join(calls)} ({args.budget}) ...")
    samples = measure_interleaved(calls, args.budget, pause=args.pause)
    medians = {name: cell.median for name, cell in samples.items()}
    spreads = {name: cell.spread for name, cell in samples.items()}
    counts = {name: len(cell) for name, cell in samples.items()}
    quartiles = {name: (cell.quantile(0.25), cell.quantile(0.75)) for name, cell in samples.items()}
    for name, cell in samples.items():
        stderr(f"  {name:15s} {cell.summary()}")
    faults = {}
    for name, call in calls.items():
        settle(args.pause)
        faults[name] = page_faults_per_call(call)
    args.load.append(load_average())

    report(args, jn, torch, X.shape, output_shape, medians, spreads, quartiles, counts, faults, first_calls, differences,
           cache_before, cache_after_first, cold_cache, jitnn_import, torch_import, torch_missing)
    return 0


# --------------------------------------------------------------------------- the report
def report(args: argparse.Namespace, jn: Any, torch: Any, input_shape: tuple[int, ...], output_shape: tuple[int, ...],
           medians: dict[str, float], spreads: dict[str, float], quartiles: dict[str, tuple[float, float]],
           counts: dict[str, int], faults: dict[str, float | None],
           first_calls: dict[str, float], differences: dict[tuple[str, str], float],
           cache_before: tuple[int, int] | None, cache_after_first: tuple[int, int] | None, cold_cache: str | None,
           jitnn_import: float | None, torch_import: float | None, torch_missing: str | None) -> None:
    n, C, size = input_shape[0], input_shape[1], input_shape[2]
    out = output_shape[1]
    conv_size = size - KERNEL + 1
    print(f"## Forward and backward of Conv2D({C}->{out}, {KERNEL}x{KERNEL}), ReLU, MaxPool2D({POOL}) "
          f"(float32, batch {n}, {size}x{size} images)")
    print()
    for line in describe_machine(["numpy", "scipy", "numba", "llvmlite", "torch"]):
        print(line + "  ")
    threads = [thread_settings(), "jitnn's loops run on one thread and its matrix products on the BLAS of jitnn._blas.library() "
               f"({jn._blas.library().name}'s), NumPy's on NumPy's OpenBLAS (thread counts above)"]
    if torch is not None:
        threads.append(f"PyTorch at its default of {torch.get_num_threads()} threads "
                       f"({torch.get_num_interop_threads()} inter-op), not changed")
    print("Threads: " + "; ".join(threads) + ".  ")
    if None not in args.load:
        print(f"Load average (1 min) when the first calls started and when timing ended: {args.load[0]:.2f}, "
              f"{args.load[1]:.2f} (this process alone brings it towards 1; well above 1 means something else was "
              f"running on the {os.cpu_count()} cores).")
    print()

    def cell(name: str) -> str:
        if name not in medians:
            return "n/a"
        return microseconds(medians[name]) + (f" ±{spreads[name] * 100:.0f}%" if args.spread else "")

    def fault_cell(name: str) -> str:
        value = faults.get(name)
        return "n/a" if value is None else f"{value:,.0f}"

    jitnn_time = medians["jitnn"]
    headers = ["implementation", "forward+backward (µs)", "ratio vs jitnn", "page faults/step", "first call (ms)"]
    rows = [[LABELS[name], cell(name), ratio(medians.get(name), jitnn_time), fault_cell(name),
             milliseconds(first_calls.get(name))] for name in IMPLEMENTATIONS if name in args.impls]
    print(markdown_table(headers, rows))
    print()
    print(f"Median wall-clock time of one step (forward and backward, `Y, dW, db, dX` from `X, dY`), in "
          f"microseconds, over at least {args.budget.min_repeats} calls and {args.budget.seconds:g} s per cell "
          f"(here {min(counts.values())} to {max(counts.values())} calls), spread over {args.budget.rounds} rounds "
          f"in which the implementations take turns (each turn after a {args.pause:g} s pause that lets other "
          f"libraries' BLAS threads stop spinning, and one untimed call), after 3 untimed warm-up calls. "
          f"`ratio vs jitnn` is the implementation's time over jitnn's: above 1 means jitnn is faster. Page faults: "
          f"minor page faults per step (average of 10 untimed calls; one is a first write to a fresh 4 KiB page). "
          f"First calls are timed alone and excluded from the medians. "
          f"{'Quick run: short and noisy. ' if args.quick else ''}")
    print()
    torch_time = medians.get("torch")
    if torch_time is None:
        reason = f"PyTorch is not installed ({torch_missing})" if torch_missing else "PyTorch was not run (--impls)"
        print(f"**Aim: jitnn within {TARGET_VERSUS_TORCH:g}x of PyTorch: not assessed**, {reason}.")
    else:
        times = jitnn_time / torch_time
        holds = times <= TARGET_VERSUS_TORCH
        relation = f"takes {times:.2f}x PyTorch's time" if times >= 1 else f"is {1 / times:.2f}x faster than PyTorch"
        print(f"**Aim: jitnn within {TARGET_VERSUS_TORCH:g}x of PyTorch: {'holds' if holds else 'does NOT hold'}** "
              f"(jitnn {microseconds(jitnn_time)} µs, PyTorch {microseconds(torch_time)} µs: jitnn {relation}"
              + ("" if holds else f"; it would need to be {times / TARGET_VERSUS_TORCH:.2f}x faster")
              + f"; medians, with spreads of ±{spreads['jitnn'] * 100:.0f}% and ±{spreads['torch'] * 100:.0f}% "
              f"(half the interquartile range)).")
        (low, high), limit = quartiles["jitnn"], TARGET_VERSUS_TORCH * torch_time
        if low <= limit <= high:
            print(f"Borderline: {TARGET_VERSUS_TORCH:g}x PyTorch's median ({microseconds(limit)} µs) lies between "
                  f"jitnn's quartiles ({microseconds(low)} to {microseconds(high)} µs), so another run may give the "
                  f"other answer.")
    print()

    # ---- jitnn's halves
    print("### jitnn's forward and backward passes alone")
    print()
    halves = ("jitnn forward", "jitnn backward")
    total = sum(medians[name] for name in halves)
    rows = [["`jn.forward(model, X)`", cell("jitnn forward"), f"{medians['jitnn forward'] / total * 100:.0f}%",
             fault_cell("jitnn forward"), milliseconds(first_calls["jitnn forward"])],
            ["`jn.backward(model, trace, dY)`", cell("jitnn backward"), f"{medians['jitnn backward'] / total * 100:.0f}%",
             fault_cell("jitnn backward"), milliseconds(first_calls["jitnn backward"])],
            ["sum of the two", microseconds(total), "100%", "", ""],
            ["the step (table above)", cell("jitnn"), "", fault_cell("jitnn"), ""]]
    print(markdown_table(["pass", "time (µs)", "share of the sum", "page faults/call", "first call (ms)"], rows))
    print()
    print(f"Timed in the same rounds as the table above. The backward pass is timed from one fixed trace "
          f"(the layers' inputs kept by the forward pass); it computes, per layer, the parameter gradients "
          f"and the input gradient from the layer's input and dY, so it repeats work the forward pass did: "
          f"the convolution's columns (im2col of a {n}x{C}x{size}x{size} batch into a {C * KERNEL * KERNEL}x"
          f"{n * conv_size * conv_size:,} matrix) and the pool's argmax.")
    extra = medians["jitnn"] - total
    if extra > 0.1 * total:
        step_faults, pass_faults = faults.get("jitnn"), [faults.get(name) for name in halves]
        text = (f"The step takes {microseconds(extra)} µs ({extra / total * 100:.0f}%) more than its two passes timed "
                f"apart; page faults per call, counted after the timing: {fault_cell('jitnn')} for the step, "
                f"{fault_cell('jitnn forward')} and {fault_cell('jitnn backward')} for the passes.")
        if step_faults is not None and None not in pass_faults and step_faults > sum(pass_faults) + 100:
            text += (" A pass's multi-megabyte temporaries are freed as soon as it returns and reused by the next "
                     "call, whereas a step keeps the trace's arrays alive while the backward pass allocates, and "
                     "glibc's allocator then hands back fresh pages (it maps blocks above its mmap threshold anew and "
                     "trims the heap's top; see `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_`), each first "
                     "write to one costing a page fault.")
        else:
            text += (" The counts depend on the allocator's history (a step keeps the trace's multi-megabyte "
                     "arrays alive while the backward pass allocates, and glibc may hand it fresh pages, each first "
                     "write costing a page fault), so they may miss faults taken during the timing; the difference "
                     "is otherwise not explained by this benchmark.")
        print(text)
    print()

    # ---- first calls and the check
    where = numba_cache_location(cold_cache)
    compiled = "cache use unknown"
    if cache_before is not None and cache_after_first is not None:
        compiled = (f"{cache_after_first[0] - cache_before[0]} kernel signatures loaded from the on-disk cache and "
                    f"{cache_after_first[1] - cache_before[1]} compiled, using {where}")
    notes = [f"First calls: each implementation's first step, timed alone; jitnn's is its first forward pass "
             f"({milliseconds(first_calls['jitnn forward'])} ms) plus its first backward pass "
             f"({milliseconds(first_calls['jitnn backward'])} ms): {compiled}."]
    imports = [f"jitnn {milliseconds(jitnn_import)} ms"] + ([f"PyTorch {milliseconds(torch_import)} ms"]
                                                          if torch_import is not None else [])
    notes.append("Import times: " + ", ".join(imports) + ".")
    print(" ".join(notes))
    print()
    peers = [name for name in IMPLEMENTATIONS[1:] if (name, "Y") in differences]
    if peers:
        worst = {output: max(differences[name, output] for name in peers) for output in OUTPUTS}
        print(f"Check before timing: from identical weights, data and dY, the first step of "
              f"{' and '.join(LABELS[name] for name in peers)} matches jitnn's (largest difference relative to the "
              f"largest element, tolerance {TOLERANCE:g}): "
              + ", ".join(f"{output} {worst[output]:.1e}" for output in OUTPUTS)
              + f"; jitnn's timed step reproduces its first passes to "
              f"{max(differences['jitnn step', output] for output in OUTPUTS):.1e}.")


if __name__ == "__main__":
    sys.exit(main())
