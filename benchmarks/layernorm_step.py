#!/usr/bin/env python
"""Benchmark: one SGD training step of a LayerNorm-heavy pre-norm MLP, float32.

The model is four pre-norm blocks ``LayerNorm(256), Dense(256 -> 256), GELU`` followed by
``Dense(256 -> 10)`` and ``Softmax``; the loss is the mean squared error between the
softmax output and one-hot targets (so the Softmax layer is part of the backward pass, not
folded into the loss). One step is the forward pass, the loss, the backward pass and a plain
SGD update with learning rate 0.01. It is timed for

* ``compiled``: ``jn.compile_step(model, jn.MeanSquaredError(), jn.optim.sgd(0.01))``, called
  as ``model, state, value = step(model, state, X, T)`` (what ``jn.fit`` runs);
* ``jitnn``: the generic path, ``jn.value_and_grad`` then ``opt.update``;
* ``torch``: PyTorch eager, ``nn.Sequential`` of ``LayerNorm``/``Linear``/``GELU`` (exact,
  erf form, as jitnn's), ``Softmax(dim=1)``, ``MSELoss`` and ``optim.SGD`` (``zero_grad``,
  ``backward``, ``step``), at PyTorch's default thread count.

PyTorch is optional: without it its column reads ``n/a``.

Every implementation starts, for each batch size, from jitnn's initial weights (LayerNorm
scale ones and shift zeros, Glorot uniform Dense weights) and sees the same random batch.
Before timing, the first step of each is checked against jitnn's generic step (the loss and
every parameter's update must agree to float32 tolerance), otherwise the script stops with
exit code 1. First calls are timed alone and left out of the step times, which are medians
of single-call wall-clock times taken in rounds in which the implementations take turns,
each turn after a short pause (see ``mlp_step.py`` for why).

:func:`build_model` and :func:`make_batch` are also used by ``benchmarks/revisions.py``.

The report on stdout is Markdown; progress goes to stderr.

Usage::

    NUMBA_CACHE_DIR=.numba_cache python benchmarks/layernorm_step.py        # full run
    python benchmarks/layernorm_step.py --quick                             # a short run
    python benchmarks/layernorm_step.py --batch-sizes 64 --impls compiled,jitnn
    python benchmarks/layernorm_step.py --cold-cache   # compile jitnn's kernels afresh
"""

from __future__ import annotations

import argparse
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
    kernel_cache_counts,
    load_average,
    markdown_table,
    measure_interleaved,
    microseconds,
    milliseconds,
    numba_cache_location,
    page_faults_per_call,
    positive_integers,
    ratio,
    resolve_timing,
    run_with_cache_choice,
    settle,
    stderr,
    thread_settings,
)
from mlp_step import LOSS_RTOL, UPDATE_RTOL, Runner, _changes, check_first_steps

FEATURES = 256
BLOCKS = 4
CLASSES = 10
LEARNING_RATE = 0.01
DEFAULT_BATCH_SIZES = (64, 512)
IMPLEMENTATIONS = ("compiled", "jitnn", "torch")
LABELS = {"compiled": "jitnn compiled", "jitnn": "jitnn generic", "torch": "PyTorch"}
MODULES = {"compiled": "jitnn", "jitnn": "jitnn", "torch": "torch"}

#: The timing budget per table cell, for a full and a --quick run.
TIMING = TimingDefaults()


# --------------------------------------------------------------------------- the model
def build_model(jn: Any, seed: int = 0) -> Any:
    """``BLOCKS`` x [LayerNorm(FEATURES), Dense(FEATURES -> FEATURES), GELU], Dense(FEATURES ->
    CLASSES), Softmax; weights from ``jn.random.key(seed)``. Public API only."""
    keys = jn.random.split(jn.random.key(seed), BLOCKS + 1)
    layers: list[Any] = []
    for key in keys[:BLOCKS]:
        layers += [jn.LayerNorm.init(None, FEATURES), jn.Dense.init(key, FEATURES, FEATURES), jn.GELU()]
    layers += [jn.Dense.init(keys[BLOCKS], FEATURES, CLASSES), jn.Softmax()]
    return jn.pipe(*layers)


def make_batch(rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """A random float32 batch ``X (batch, FEATURES)`` and one-hot float32 targets ``T (batch, CLASSES)``."""
    X = rng.standard_normal((batch, FEATURES), dtype=np.float32)
    T = np.zeros((batch, CLASSES), np.float32)
    T[np.arange(batch), rng.integers(0, CLASSES, batch)] = 1.0
    return X, T


def make_loss(jn: Any) -> Any:
    return jn.MeanSquaredError()


# --------------------------------------------------------------------------- arguments
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=f"Time one SGD step of {BLOCKS} pre-norm blocks [LayerNorm({FEATURES}), Dense, GELU], "
        f"Dense({FEATURES}->{CLASSES}), Softmax, mean squared error, in float32: jitnn's compiled and "
        "generic steps against PyTorch.",
    )
    parser.add_argument("--batch-sizes", type=positive_integers, default=DEFAULT_BATCH_SIZES, metavar="N,N,...",
                        help="batch sizes to time (default: %(default)s)")
    parser.add_argument("--impls", type=implementations_type(IMPLEMENTATIONS, "jitnn"), default=IMPLEMENTATIONS, metavar="NAME,...",
                        help=f"implementations to run, from {','.join(IMPLEMENTATIONS)}; jitnn (the reference of "
                        "the check) is always one (default: all)")
    add_timing_arguments(parser, TIMING, "seed for the weights and the data")
    args = parser.parse_args(argv)
    resolve_timing(parser, args, TIMING)
    return args


# --------------------------------------------------------------------------- implementations
# A factory ``build(model, X, T) -> Runner`` per implementation (see mlp_step.py's Runner);
# ``runner.weights()`` lists every layer's parameters in model order as pairs:
# (scale, shift) for a LayerNorm, (W (n_in, n_out), b) for a Dense.
def _jitnn_weights(jn: Any, model: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = []
    for member in model.layers:
        if isinstance(member, jn.LayerNorm):
            pairs.append((member.scale, member.shift))
        elif isinstance(member, jn.Dense):
            pairs.append((member.W, member.b))
    return pairs


def jitnn_factory(jn: Any) -> Callable[..., Runner]:
    loss = make_loss(jn)
    optimizer = jn.optim.sgd(LEARNING_RATE)

    def build(model: Any, X: np.ndarray, T: np.ndarray) -> Runner:
        current = {"model": model, "state": optimizer.init(model)}

        def step() -> float:
            value, grads = jn.value_and_grad(current["model"], loss, X, T)
            current["model"], current["state"] = optimizer.update(current["model"], grads, current["state"])
            return value

        return Runner(step, lambda: _jitnn_weights(jn, current["model"]))

    return build


def compiled_factory(jn: Any) -> Callable[..., Runner]:
    loss = make_loss(jn)
    optimizer = jn.optim.sgd(LEARNING_RATE)

    def build(model: Any, X: np.ndarray, T: np.ndarray) -> Runner:
        step = jn.compile_step(model, loss, optimizer)  # generated and compiled (or loaded) at the first call
        current = {"model": model, "state": optimizer.init(model)}

        def run() -> float:
            current["model"], current["state"], value = step(current["model"], current["state"], X, T)
            return value

        return Runner(run, lambda: _jitnn_weights(jn, current["model"]))

    return build


def torch_factory(torch: Any) -> Callable[..., Runner]:
    nn = torch.nn

    def build(model: Any, X: np.ndarray, T: np.ndarray) -> Runner:
        modules: list[Any] = []
        for _ in range(BLOCKS):
            modules += [nn.LayerNorm(FEATURES, eps=1e-5), nn.Linear(FEATURES, FEATURES), nn.GELU()]
        modules += [nn.Linear(FEATURES, CLASSES), nn.Softmax(dim=1)]
        network = nn.Sequential(*modules)
        trained = [member for member in network if isinstance(member, (nn.LayerNorm, nn.Linear))]
        jitnn_layers = [member for member in model.layers if hasattr(member, "scale") or hasattr(member, "W")]
        with torch.no_grad():
            for module, member in zip(trained, jitnn_layers):
                if isinstance(module, nn.LayerNorm):
                    module.weight.copy_(torch.from_numpy(np.array(member.scale)))
                    module.bias.copy_(torch.from_numpy(np.array(member.shift)))
                else:
                    module.weight.copy_(torch.from_numpy(np.ascontiguousarray(member.W.T)))  # torch stores (n_out, n_in)
                    module.bias.copy_(torch.from_numpy(np.array(member.b)))
        loss_function = nn.MSELoss()
        optimizer = torch.optim.SGD(network.parameters(), lr=LEARNING_RATE)
        X_tensor, T_tensor = torch.from_numpy(X), torch.from_numpy(T)

        def step() -> float:
            optimizer.zero_grad()
            value = loss_function(network(X_tensor), T_tensor)
            value.backward()
            optimizer.step()
            return value.item()

        def weights() -> list[tuple[np.ndarray, np.ndarray]]:
            pairs = []
            for module in trained:
                weight = module.weight.detach().numpy()
                pairs.append(((weight if isinstance(module, nn.LayerNorm) else weight.T).copy(),
                              module.bias.detach().numpy().copy()))
            return pairs

        return Runner(step, weights)

    return build


FACTORIES = {"compiled": compiled_factory, "jitnn": jitnn_factory, "torch": torch_factory}


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    return run_with_cache_choice(run, parse_args(argv))


def run(args: argparse.Namespace, cold_cache: str | None) -> int:
    """The benchmark; ``cold_cache`` is the new, empty Numba cache folder of ``--cold-cache``."""
    sys.path.insert(0, str(ROOT))  # benchmark this checkout of jitnn

    # ---- imports, timed
    modules: dict[str, Any] = {}
    import_seconds: dict[str, float] = {}
    missing: dict[str, str] = {}
    for name in args.impls:
        module, seconds, error = import_timed(MODULES[name])
        if module is None and MODULES[name] == "jitnn":
            raise ImportError(f"cannot import jitnn from {ROOT}: {error}")
        if module is None:
            missing[name] = error or "not importable"
            stderr(f"{LABELS[name]}: not installed ({missing[name]}); its column will read n/a")
        else:
            modules[name] = module
            import_seconds.setdefault(MODULES[name], seconds)
    active = [name for name in args.impls if name not in missing]
    builders = {name: FACTORIES[name](modules[name]) for name in active}
    jn = modules["jitnn"]
    model = build_model(jn, args.seed)
    args.load = [load_average()]

    medians: dict[tuple[int, str], float] = {}
    spreads: dict[tuple[int, str], float] = {}
    first_calls: dict[tuple[int, str], float] = {}
    faults: dict[tuple[int, str], float | None] = {}
    worst_loss_difference = worst_update_difference = 0.0
    cache_counts = None
    data_rng = np.random.default_rng(args.seed + 1)
    for batch in args.batch_sizes:
        X, T = make_batch(data_rng, batch)

        # first calls, from a fresh state: timed alone, and checked against jitnn's generic step
        runners, losses, updates = {}, {}, {}
        for name in active:
            runner = builders[name](model, X, T)
            before = [(np.array(a), np.array(b)) for a, b in runner.weights()]
            settle(args.pause)
            first_calls[batch, name], value = first_call(runner.step)
            if MODULES[name] == "jitnn" and cache_counts is None:
                cache_counts = kernel_cache_counts()
            losses[name] = float(value)
            updates[name] = _changes(before, runner.weights())
            runners[name] = runner
        problems, loss_difference, update_difference = check_first_steps(batch, losses, updates, "jitnn")
        if problems:
            stderr("The implementations disagree; not timing a wrong step:\n  " + "\n  ".join(problems))
            return 1
        worst_loss_difference = max(worst_loss_difference, loss_difference)
        worst_update_difference = max(worst_update_difference, update_difference)

        # the step times
        stderr(f"batch {batch}: timing {', '.join(active)} ({args.budget}) ...")
        samples = measure_interleaved({name: runners[name].step for name in active}, args.budget, pause=args.pause)
        for name, cell in samples.items():
            medians[batch, name], spreads[batch, name] = cell.median, cell.spread
            stderr(f"  {name:8s} {cell.summary()}")
        for name in active:
            settle(args.pause)
            faults[batch, name] = page_faults_per_call(runners[name].step)
    args.load.append(load_average())

    # ---- the report
    print(f"## One SGD step of {BLOCKS} x [LayerNorm({FEATURES}), Dense({FEATURES}->{FEATURES}), GELU], "
          f"Dense({FEATURES}->{CLASSES}), Softmax (float32, mean squared error, lr {LEARNING_RATE})")
    print()
    for line in describe_machine(["numpy", "scipy", "numba", "llvmlite", "torch"]):
        print(line + "  ")
    torch = modules.get("torch")
    import numba
    threads = [thread_settings(), f"Numba threads {numba.config.NUMBA_NUM_THREADS}; jitnn's matrix products run "
               f"on the BLAS of jitnn._blas.library() ({jn._blas.library().name}'s), on "
               f"{jn._blas.auto_threads(1)} thread below batch {jn._blas.SMALL_BATCH} and on "
               f"{jn._blas.auto_threads(jn._blas.SMALL_BATCH)} from there in the compiled step (threads=None)"]
    if torch is not None:
        threads.append(f"PyTorch at its default of {torch.get_num_threads()} threads "
                       f"({torch.get_num_interop_threads()} inter-op), not changed")
    print("Threads: " + "; ".join(threads) + ".  ")
    if None not in args.load:
        print(f"Load average (1 min) when the first calls started and when timing ended: {args.load[0]:.2f}, "
              f"{args.load[1]:.2f}.")
    print()

    def cell(batch: int, name: str) -> str:
        if (batch, name) not in medians:
            return "n/a"
        return microseconds(medians[batch, name]) + (f" ±{spreads[batch, name] * 100:.0f}%" if args.spread else "")

    def median(batch: int, name: str) -> float | None:
        return medians.get((batch, name))

    headers = (["batch"] + [f"{LABELS[name]} (µs)" for name in IMPLEMENTATIONS]
               + ["generic/compiled", "PyTorch/compiled"])
    rows = [[str(batch)] + [cell(batch, name) for name in IMPLEMENTATIONS]
            + [ratio(median(batch, "jitnn"), median(batch, "compiled")), ratio(median(batch, "torch"), median(batch, "compiled"))]
            for batch in args.batch_sizes]
    print(markdown_table(headers, rows))
    print()
    print(f"Median wall-clock time of one step, in microseconds, over at least {args.budget.min_repeats} calls and "
          f"{args.budget.seconds:g} s per cell, spread over {args.budget.rounds} rounds in which the implementations "
          f"take turns (each turn after a {args.pause:g} s pause that lets other libraries' BLAS threads stop "
          f"spinning, and one untimed call), after 3 untimed warm-up calls; first calls are excluded (table below). "
          f"`X/compiled` above 1 means the compiled step is faster than X. "
          f"{'Quick run: short and noisy. ' if args.quick else ''}")
    print()

    if any(value is not None for value in faults.values()):
        print("### Page faults per step")
        print()
        rows = [[str(batch)] + [f"{faults[batch, name]:.1f}" if faults.get((batch, name)) is not None else "n/a"
                                for name in IMPLEMENTATIONS] for batch in args.batch_sizes]
        print(markdown_table(["batch"] + [LABELS[name] for name in IMPLEMENTATIONS], rows))
        print()
        print("Minor page faults of the process per step, averaged over 10 untimed steps after the timing.")
        print()

    print("### First call (compile), milliseconds")
    print()
    rows = [[str(batch)] + [milliseconds(first_calls.get((batch, name))) for name in IMPLEMENTATIONS]
            for batch in args.batch_sizes]
    print(markdown_table(["batch"] + [LABELS[name] for name in IMPLEMENTATIONS], rows))
    print()
    counts = (f"{cache_counts[0]} kernel signatures loaded from the on-disk cache and {cache_counts[1]} compiled"
              if cache_counts else "cache use unknown")
    notes = [f"Each implementation's first step from a fresh state, timed alone. jitnn's first steps at the first "
             f"batch size compile its kernels (or load them): {counts} by the first of them, using "
             f"{numba_cache_location(cold_cache)}; the compiled step's first call also generates and compiles its "
             f"function once per per-example input shape."]
    notes.append("Import times: " + ", ".join(f"{name} {milliseconds(seconds)} ms" for name, seconds in import_seconds.items()) + ".")
    for name, error in missing.items():
        notes.append(f"{LABELS[name]} is not installed (install a CPU build of `torch` to compare): {error}.")
    print(" ".join(notes))
    print()
    print(f"Check before timing, at every batch size: each implementation's first step, from identical weights and "
          f"data, matches jitnn's generic step (loss to a relative {LOSS_RTOL:g}, largest difference "
          f"{worst_loss_difference:.1e}; every parameter's update to {UPDATE_RTOL:g} of its largest element, largest difference "
          f"{worst_update_difference:.1e}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
