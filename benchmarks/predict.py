#!/usr/bin/env python
"""Benchmark: prediction (the evaluation-mode forward pass) of a 784-256-128-10 ReLU MLP, float32.

Timed side by side in one run, at batch sizes 1, 32 and 1024 by default:

* ``compiled``: ``jn.compile_predict(model)``, called as ``predict(model, X)``: the forward
  pass in one Numba function;
* ``forward``: ``model.forward(X)``, jitnn's generic evaluation-mode pass (Python between
  the kernels);
* ``torch``: PyTorch eager, ``nn.Sequential`` of ``Linear``/``ReLU`` under
  ``torch.inference_mode()``, at PyTorch's default thread count, returning a NumPy array;
* ``onnxruntime``: the same PyTorch module exported with ``torch.onnx.export(...,
  dynamo=False)`` and run by an onnxruntime ``InferenceSession`` on its CPU provider with
  default options;
* ``exported``: the jitnn model exported by ``jn.onnx.to_model`` and run by onnxruntime in
  the same way.

Every implementation holds jitnn's initial weights; before timing, each one's output on the
batch is checked against ``model.forward``'s (to float32 tolerance), otherwise the script
stops. The first call of each is timed on its own and left out of the medians, which are
of single-call wall-clock times taken in rounds in which the implementations take turns,
each turn after a pause that lets other libraries' spinning threads go idle.

PyTorch and onnxruntime (with ``onnx``, which the export needs) are optional: a missing one
reads ``n/a``. The report on stdout is Markdown; progress goes to stderr.

Usage::

    NUMBA_CACHE_DIR=.numba_cache python benchmarks/predict.py
    python benchmarks/predict.py --quick --batch-sizes 1
"""

from __future__ import annotations

import argparse
import io
import sys
from typing import Any, Callable

import numpy as np

from _common import (
    implementations_type,
    ROOT,
    TimingDefaults,
    add_timing_arguments,
    describe_machine,
    first_call,
    import_timed,
    markdown_table,
    measure_interleaved,
    microseconds,
    milliseconds,
    positive_integers,
    ratio,
    resolve_timing,
    run_with_cache_choice,
    settle,
    stderr,
    thread_settings,
)

SIZES = (784, 256, 128, 10)
DEFAULT_BATCH_SIZES = (1, 32, 1024)
IMPLEMENTATIONS = ("compiled", "forward", "torch", "onnxruntime", "exported")
LABELS = {"compiled": "jitnn compile_predict", "forward": "jitnn model.forward", "torch": "PyTorch",
          "onnxruntime": "onnxruntime (PyTorch's export)", "exported": "onnxruntime (jn.onnx export)"}
#: The target: at least this many times faster than onnxruntime, at this batch size.
ONNX_TARGET = (1, 2.0)
#: How closely every output must match ``model.forward``'s, relative to its largest element:
#: float32 sums of at most 784 products summed in other orders differ by far less.
OUTPUT_RTOL = 1e-4
TIMING = TimingDefaults()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time prediction of a 784-256-128-10 ReLU MLP in float32: "
                                     "jitnn's compiled and generic forward passes against PyTorch and onnxruntime.")
    parser.add_argument("--batch-sizes", type=positive_integers, default=DEFAULT_BATCH_SIZES, metavar="N,N,...",
                        help="batch sizes to time (default: %(default)s)")
    parser.add_argument("--impls", type=implementations_type(IMPLEMENTATIONS), default=IMPLEMENTATIONS, metavar="NAME,...",
                        help=f"implementations to run, from {','.join(IMPLEMENTATIONS)} (default: all)")
    add_timing_arguments(parser, TIMING, "seed for the weights and the data")
    args = parser.parse_args(argv)
    resolve_timing(parser, args, TIMING)
    return args


# --------------------------------------------------------------------------- implementations
# Each factory takes the jitnn model and returns ``predict(X) -> NumPy array``.
def compiled_factory(jn: Any, model: Any) -> Callable[[np.ndarray], Any]:
    predict = jn.compile_predict(model)
    return lambda X: predict(model, X)


def forward_factory(jn: Any, model: Any) -> Callable[[np.ndarray], Any]:
    return model.forward


def torch_module(torch: Any, jn: Any, model: Any) -> Any:
    """The PyTorch ``nn.Sequential`` holding ``model``'s weights (``Linear`` keeps ``W.T``)."""
    layers = []
    for member in model.layers:
        if isinstance(member, jn.Dense):
            linear = torch.nn.Linear(*member.W.shape)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(np.array(member.W.T)))
                linear.bias.copy_(torch.from_numpy(np.array(member.b)))
            layers.append(linear)
        else:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).eval()


def torch_factory(torch: Any, jn: Any, model: Any) -> Callable[[np.ndarray], Any]:
    module = torch_module(torch, jn, model)

    def predict(X: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(X)).numpy()

    return predict


def onnxruntime_factory(modules: dict[str, Any], jn: Any, model: Any) -> Callable[[np.ndarray], Any]:
    torch, onnxruntime = modules["torch"], modules["onnxruntime"]
    module = torch_module(torch, jn, model)
    buffer = io.BytesIO()
    torch.onnx.export(module, (torch.zeros(1, SIZES[0]),), buffer, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    return lambda X: session.run(None, {"x": X})[0]


def exported_factory(modules: dict[str, Any], jn: Any, model: Any) -> Callable[[np.ndarray], Any]:
    proto = jn.onnx.to_model(model, (SIZES[0],))
    session = modules["onnxruntime"].InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda X: session.run(None, {"input": X})[0]


# --------------------------------------------------------------------------- the run
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_with_cache_choice(run, args)


def run(args: argparse.Namespace, cold_cache: str | None) -> int:
    sys.path.insert(0, str(ROOT))
    jn, jitnn_seconds, error = import_timed("jitnn")
    if jn is None:
        raise ImportError(f"cannot import jitnn from {ROOT}: {error}")
    modules: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for name in ("torch", "onnx", "onnxruntime"):
        module, _, error = import_timed(name)
        if module is None:
            missing[name] = error or "not importable"
        else:
            modules[name] = module
    needs = {"torch": ("torch",), "onnxruntime": ("torch", "onnx", "onnxruntime"), "exported": ("onnx", "onnxruntime")}
    active = [name for name in args.impls if not any(module in missing for module in needs.get(name, ()))]
    for name in args.impls:
        if name not in active:
            stderr(f"{LABELS[name]}: needs {', '.join(needs[name])} ({'; '.join(missing[m] for m in needs[name] if m in missing)}); n/a")

    k1, k2, k3 = jn.random.split(jn.random.key(args.seed), 3)
    model = jn.pipe(jn.Dense.init(k1, SIZES[0], SIZES[1]), jn.ReLU(), jn.Dense.init(k2, SIZES[1], SIZES[2]), jn.ReLU(),
                    jn.Dense.init(k3, SIZES[2], SIZES[3]))
    factories = {"compiled": lambda: compiled_factory(jn, model), "forward": lambda: forward_factory(jn, model),
                 "torch": lambda: torch_factory(modules["torch"], jn, model),
                 "onnxruntime": lambda: onnxruntime_factory(modules, jn, model),
                 "exported": lambda: exported_factory(modules, jn, model)}
    predictors = {name: factories[name]() for name in active}

    medians: dict[tuple[int, str], float] = {}
    first_calls: dict[tuple[int, str], float] = {}
    worst = 0.0
    rng = np.random.default_rng(args.seed + 1)
    first_weight = np.array(model.layers[0].W)
    for batch in args.batch_sizes:
        X = rng.standard_normal((batch, SIZES[0]), dtype=np.float32)
        expected = np.asarray(model.forward(X), np.float64)
        scale = float(np.max(np.abs(expected))) or 1.0
        calls = {}
        for name in active:
            predict = predictors[name]
            settle(args.pause)
            seconds, Y = first_call(lambda: predict(X))
            first_calls[batch, name] = seconds
            difference = float(np.max(np.abs(np.asarray(Y, np.float64) - expected))) / scale
            worst = max(worst, difference)
            if not difference <= OUTPUT_RTOL:
                stderr(f"batch {batch}: {LABELS[name]}'s output differs from model.forward's by {difference:.1e} of its "
                       f"largest element (tolerance {OUTPUT_RTOL}); not timing a wrong prediction")
                return 1
            calls[name] = (lambda predict: lambda: predict(X))(predict)
        if batch == ONNX_TARGET[0]:  # a floor for any implementation: the first layer's weights are read once a call
            calls["floor"] = lambda: first_weight.max()  # NumPy's vectorised max: a read at memory speed
        stderr(f"batch {batch}: timing {', '.join(calls)} ...")
        for name, cell in measure_interleaved(calls, args.budget, pause=args.pause).items():
            medians[batch, name] = cell.median
            stderr(f"  {name:12s} {cell.summary()}")

    def median(batch: int, name: str) -> float | None:
        return medians.get((batch, name))

    print(f"## Prediction with a {'-'.join(map(str, SIZES))} ReLU MLP (float32, evaluation mode)")
    print()
    for line in describe_machine(["numpy", "numba", "torch", "onnxruntime", "onnx"]):
        print(line + "  ")
    from jitnn import _blas

    threads = [thread_settings(), f"jitnn's products on {'NumPy' if _blas.library().name == 'numpy' else 'SciPy'}'s BLAS, on 1 thread below batch {_blas.SMALL_BATCH}"]
    if "torch" in modules:
        threads.append(f"PyTorch at its default of {modules['torch'].get_num_threads()} threads")
    print("Threads: " + "; ".join(threads) + ".")
    print()
    headers = (["batch"] + [f"{LABELS[name]} (µs)" for name in IMPLEMENTATIONS]
               + [f"{name}/compiled" for name in IMPLEMENTATIONS[1:]])
    rows = [[str(batch)] + [microseconds(median(batch, name)) if median(batch, name) else "n/a" for name in IMPLEMENTATIONS]
            + [ratio(median(batch, name), median(batch, "compiled")) for name in IMPLEMENTATIONS[1:]]
            for batch in args.batch_sizes]
    print(markdown_table(headers, rows))
    print()
    print(f"Median wall-clock time of one call, in microseconds, over at least {args.budget.min_repeats} calls and "
          f"{args.seconds:g} s per cell in {args.budget.rounds} interleaved rounds; `peer/compiled` above 1 means "
          f"compile_predict is faster. Every output matched model.forward's before timing (largest difference "
          f"{worst:.1e} of the output's largest element; tolerance {OUTPUT_RTOL:g}).{' Quick run: short and noisy.' if args.quick else ''}")
    print()
    batch, wanted = ONNX_TARGET
    compiled, onnx = median(batch, "compiled"), median(batch, "exported") or median(batch, "onnxruntime")
    if compiled and onnx:
        which = "jitnn's export" if median(batch, "exported") else "PyTorch's export"
        print(f"Target: at batch {batch}, at least {wanted:g}x faster than onnxruntime ({which}): {onnx / compiled:.2f}x, "
              f"{'met' if onnx / compiled >= wanted else 'NOT met'}.")
        floor = median(batch, "floor")
        if floor:
            print(f"The target asks for {microseconds(onnx / wanted)} µs a call. Reading the first layer's weights once "
                  f"({first_weight.nbytes / 1e3:.0f} KB, `W.max()` in NumPy, a vectorised read, timed in the same rounds), which every "
                  f"forward pass must do, took {microseconds(floor)} µs.")
        print()
    print("### First call, milliseconds")
    print()
    rows = [[str(batch)] + [milliseconds(first_calls.get((batch, name))) for name in IMPLEMENTATIONS] for batch in args.batch_sizes]
    print(markdown_table(["batch"] + [LABELS[name] for name in IMPLEMENTATIONS], rows))
    print()
    where = "a new, empty Numba cache folder (--cold-cache)" if cold_cache is not None else "the Numba cache in use"
    print(f"The first call of compile_predict generates and compiles its function (or loads it from {where}) once per "
          f"per-example input shape, so at the first batch size only. Import of jitnn: {milliseconds(jitnn_seconds)} ms.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
