#!/usr/bin/env python
"""Benchmark: one optimizer update, ``params, state = opt.update(params, grads, state)``.

The parameters are those of a jitnn model, ``Dense(2h -> h), ReLU, Dense(h -> 2h)`` in
float32 (four arrays: two weight matrices and two bias vectors), with h = 512 by default:
1,050,112 parameters; ``--params N`` picks the h that comes closest to N parameters. Each of
sgd, momentum, adam, adamw, rmsprop, adagrad and lion, and one chain,
``chain(clip_by_global_norm(1.0), adam(1e-3))``, is timed for

* ``jitnn``: ``opt.update`` with ``jn.optim.<name>(...)``. Each named optimizer is ONE
  fused Numba kernel per parameter array that reads the parameter, its gradient and its
  moments once and writes fresh arrays (nothing is updated in place); Python around it
  checks the trees, reads the learning rate and rebuilds the records;
* ``numpy``: the same rule written as a NumPy user would, one vectorised expression after
  another per array, each making a new array;
* ``torch foreach`` and ``torch fused``: ``torch.optim`` with ``foreach=True`` and with
  ``fused=True`` (where this PyTorch offers it on the CPU; otherwise ``n/a``), calling
  ``optimizer.step()`` on ``torch.nn.Parameter`` tensors whose ``.grad`` is set. PyTorch
  updates the parameters and moments IN PLACE, allocating nothing, and runs at its default
  thread count (shown in the header), while jitnn and NumPy use one thread. PyTorch has no
  Lion, so that row reads ``n/a``; the chain row calls ``clip_grad_norm_(foreach=True)``
  before the step;
* ``floor``: the memory traffic the rule cannot avoid, with no arithmetic: for a rule that
  must read R arrays and write W arrays of the model's size (Adam reads p, g, m, v and
  writes p, m, v: R = 4, W = 3), one ``np.add(a, b, out=c)`` over (R - W) model sizes and
  one ``np.copyto`` over (2W - R) model sizes, all preallocated, moves the same bytes.
  The chain's floor assumes the clipping fused into Adam: one extra read of g for the norm.

Alongside, the script times jitnn's kernels alone (called directly on the flat arrays,
outputs dropped at once) and the update of a tiny model with the same four arrays (7
parameters: what jitnn's Python costs per update whatever the size), and counts the minor
page faults of one update of each implementation (a first write to fresh memory faults
once per 4 KiB page).

Before timing, every implementation takes three updates from identical arrays with three
different random gradients: jitnn's parameters and moments must match NumPy's to float32
tolerance (PyTorch's parameters too), otherwise the script stops with exit code 1. The
first of those updates is timed on its own ("first call": Numba compilation or loading the
compiled kernel from the on-disk cache, PyTorch's lazy state set-up) and never counted in
the update times, which are medians of single-call wall-clock times, taken in rounds in
which the implementations take turns (as ``mlp_step.py``).

The report on stdout is Markdown; progress goes to stderr.

Usage::

    NUMBA_CACHE_DIR=.numba_cache python benchmarks/optim_update.py          # full run
    python benchmarks/optim_update.py --quick                               # a short run
    python benchmarks/optim_update.py --params 100000 --optimizers adam,lion
    python benchmarks/optim_update.py --cold-cache       # compile jitnn's kernels afresh
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from _common import (
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
    page_faults_per_call,
    ratio,
    settle,
    stderr,
    thread_settings,
)

DEFAULT_HIDDEN = 512  # Dense(1024 -> 512), ReLU, Dense(512 -> 1024): 1,050,112 parameters
TARGET_SPEEDUP = 2.0  # the project's stated target: jitnn at least 2x faster than NumPy

#: The timed implementations, in the table's order (``floor`` last).
IMPLEMENTATIONS = ("jitnn", "numpy", "torch foreach", "torch fused", "floor")
LABELS = {"jitnn": "jitnn", "numpy": "NumPy", "torch foreach": "torch foreach", "torch fused": "torch fused",
          "floor": "floor"}
#: Timed alongside, for the breakdown of jitnn's time.
EXTRAS = ("jitnn kernels", "jitnn tiny")

#: The check after three updates: each parameter's total change must match the reference's
#: to UPDATE_RTOL of its largest element; each moment to MOMENT_RTOL of its largest element.
UPDATE_RTOL = 1e-4
MOMENT_RTOL = 1e-5
#: Lion takes the sign of ``b1 m + (1 - b1) g``: where that is within rounding of zero,
#: float32 (NumPy) and float64 (jitnn's kernel) arithmetic may pick opposite signs. Up to
#: this fraction of a parameter's elements may differ, each by at most 2 lr per update.
SIGN_FLIP_FRACTION = 1e-5
CHECK_STEPS = 3


# --------------------------------------------------------------------------- NumPy rules
# One function per rule, ``step(p, g, *moments, t, **hyperparameters) -> (p, *moments)``
# for one parameter array at update t (1 for the first), written the plain NumPy way.
#: The timing budget per table cell, for a full and a --quick run.
TIMING = TimingDefaults()

def numpy_sgd(p, g, t, learning_rate):
    return (p - learning_rate * g,)


def numpy_momentum(p, g, velocity, t, learning_rate, beta):
    velocity = beta * velocity + g
    return p - learning_rate * velocity, velocity


def numpy_adam(p, g, mu, nu, t, learning_rate, b1, b2, eps, weight_decay=0.0):
    if weight_decay:
        p = p * (1 - learning_rate * weight_decay)
    mu = b1 * mu + (1 - b1) * g
    nu = b2 * nu + (1 - b2) * g**2
    mu_hat = mu / (1 - b1**t)
    nu_hat = nu / (1 - b2**t)
    return p - learning_rate * mu_hat / (np.sqrt(nu_hat) + eps), mu, nu


def numpy_rmsprop(p, g, nu, t, learning_rate, decay, eps):
    nu = decay * nu + (1 - decay) * g**2
    return p - learning_rate * g / (np.sqrt(nu) + eps), nu


def numpy_adagrad(p, g, sum_of_squares, t, learning_rate, eps):
    sum_of_squares = sum_of_squares + g**2
    return p - learning_rate * g / (np.sqrt(sum_of_squares) + eps), sum_of_squares


def numpy_lion(p, g, mu, t, learning_rate, b1, b2, weight_decay):
    direction = np.sign(b1 * mu + (1 - b1) * g)
    p = p * (1 - learning_rate * weight_decay) - learning_rate * direction
    mu = b2 * mu + (1 - b2) * g
    return p, mu


def numpy_clip_by_global_norm(grads: list[np.ndarray], max_norm: float) -> list[np.ndarray]:
    norm = np.sqrt(sum(np.sum(g * g) for g in grads))
    if norm <= max_norm:
        return grads
    return [g * (max_norm / norm) for g in grads]


class NumpyOptimizer:
    """A per-array NumPy ``step`` run over lists of arrays; the state is a dict holding the
    update count and one list per moment (named as jitnn's state fields)."""

    def __init__(self, step: Callable[..., tuple], moments: tuple[str, ...] = (), clip: float | None = None):
        self.step, self.moments, self.clip = step, moments, clip

    def init(self, params: list[np.ndarray]) -> dict[str, Any]:
        return {"count": 0, **{name: [np.zeros_like(p) for p in params] for name in self.moments}}

    def update(self, params: list[np.ndarray], grads: list[np.ndarray], state: dict[str, Any]) -> tuple[list, dict]:
        t = state["count"] + 1
        if self.clip is not None:
            grads = numpy_clip_by_global_norm(grads, self.clip)
        results = [self.step(p, g, *moments, t) for p, g, *moments in
                   zip(params, grads, *(state[name] for name in self.moments))]
        new_state = {"count": t, **{name: [r[i + 1] for r in results] for i, name in enumerate(self.moments)}}
        return [r[0] for r in results], new_state


# --------------------------------------------------------------------------- the rows
@dataclass(frozen=True)
class Rule:
    """One row: the same update rule for every implementation."""

    name: str
    jitnn: Callable[[Any], Any]                            # jn -> optimizer
    numpy: NumpyOptimizer
    torch: Callable[[Any, list, dict], Any] | None         # (torch, params, {"foreach"|"fused": True}) -> optimizer
    reads: int                                             # arrays of the model's size read ...
    writes: int                                            # ... and written, at the least
    clip: float | None = None                              # clip_by_global_norm in front
    sign: bool = False                                     # the rule takes a sign (see SIGN_FLIP_FRACTION)


def _rules() -> dict[str, Rule]:
    def torch_optimizer(class_name: str, **hyperparameters: Any) -> Callable[[Any, list, dict], Any]:
        return lambda torch, params, variant: getattr(torch.optim, class_name)(params, **hyperparameters, **variant)

    rules = [
        Rule("sgd", lambda jn: jn.optim.sgd(0.01),
             NumpyOptimizer(functools.partial(numpy_sgd, learning_rate=0.01)),
             torch_optimizer("SGD", lr=0.01), reads=2, writes=1),
        Rule("momentum", lambda jn: jn.optim.momentum(0.01, beta=0.9),
             NumpyOptimizer(functools.partial(numpy_momentum, learning_rate=0.01, beta=0.9), ("velocity",)),
             torch_optimizer("SGD", lr=0.01, momentum=0.9), reads=3, writes=2),
        Rule("adam", lambda jn: jn.optim.adam(1e-3),
             NumpyOptimizer(functools.partial(numpy_adam, learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8), ("mu", "nu")),
             torch_optimizer("Adam", lr=1e-3), reads=4, writes=3),
        Rule("adamw", lambda jn: jn.optim.adamw(1e-3, weight_decay=0.01),
             NumpyOptimizer(functools.partial(numpy_adam, learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8,
                                              weight_decay=0.01), ("mu", "nu")),
             torch_optimizer("AdamW", lr=1e-3, weight_decay=0.01), reads=4, writes=3),
        Rule("rmsprop", lambda jn: jn.optim.rmsprop(1e-2, decay=0.99, eps=1e-8),
             NumpyOptimizer(functools.partial(numpy_rmsprop, learning_rate=1e-2, decay=0.99, eps=1e-8), ("nu",)),
             torch_optimizer("RMSprop", lr=1e-2, alpha=0.99, eps=1e-8), reads=3, writes=2),
        Rule("adagrad", lambda jn: jn.optim.adagrad(1e-2, eps=1e-10),
             NumpyOptimizer(functools.partial(numpy_adagrad, learning_rate=1e-2, eps=1e-10), ("sum_of_squares",)),
             torch_optimizer("Adagrad", lr=1e-2, eps=1e-10), reads=3, writes=2),
        Rule("lion", lambda jn: jn.optim.lion(1e-4, b1=0.9, b2=0.99, weight_decay=0.01),
             NumpyOptimizer(functools.partial(numpy_lion, learning_rate=1e-4, b1=0.9, b2=0.99, weight_decay=0.01), ("mu",)),
             None, reads=3, writes=2, sign=True),
        Rule("clip+adam", lambda jn: jn.optim.chain(jn.optim.clip_by_global_norm(1.0), jn.optim.adam(1e-3)),
             NumpyOptimizer(functools.partial(numpy_adam, learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8), ("mu", "nu"),
                            clip=1.0),
             torch_optimizer("Adam", lr=1e-3), reads=5, writes=3, clip=1.0),
    ]
    return {rule.name: rule for rule in rules}


RULES = _rules()
ROW_LABELS = {"clip+adam": "chain(clip_by_global_norm(1), adam)"}
#: The fixed hyperparameters, for the report.
HYPERPARAMETERS = ("sgd lr 0.01; momentum lr 0.01, beta 0.9; adam lr 1e-3 (b1 0.9, b2 0.999, eps 1e-8); adamw the "
                   "same with weight decay 0.01; rmsprop lr 1e-2, decay 0.99, eps 1e-8; adagrad lr 1e-2, eps 1e-10; "
                   "lion lr 1e-4, b1 0.9, b2 0.99, weight decay 0.01; the chain clips to global norm 1 (the random "
                   "gradients' norm is about 1,000, so it always scales) then adam lr 1e-3")


# --------------------------------------------------------------------------- runners
# A runner holds one implementation's parameters and state. ``prepare(grads)`` turns a list
# of NumPy gradient arrays (in the order of jitnn's tree leaves) into what ``update`` takes;
# ``update(prepared)`` is the timed call; ``params()`` and ``moments()`` give NumPy copies
# for the check.
class JitnnRunner:
    def __init__(self, jn: Any, optimizer: Any, model: Any):
        self.jn, self.optimizer = jn, optimizer
        self.params, self.state = model, optimizer.init(model)
        self.named = getattr(optimizer, "optimizer", optimizer)  # a chain's optimizer, else itself

    def prepare(self, grads: list[np.ndarray]) -> Any:
        return self.jn.tree.unflatten(self.params, grads)

    def update(self, grads: Any) -> None:
        self.params, self.state = self.optimizer.update(self.params, grads, self.state)

    def param_list(self) -> list[np.ndarray]:
        return self.jn.tree.leaves(self.params)

    def moments(self) -> dict[str, list[np.ndarray]]:
        state = getattr(self.state, "optimizer", self.state)  # a chain's optimizer state
        return {name: self.jn.tree.leaves(getattr(state, name)) for name in self.named.moment_names}

    def kernels_alone(self, grads: list[np.ndarray]) -> Callable[[], None] | None:
        """The update's kernels called directly on the current flat arrays (read-only, as
        jitnn hands them), each output dropped at once; ``None`` for a chain."""
        if self.named is not self.optimizer or not isinstance(self.optimizer.learning_rate, float):
            return None
        moments = self.moments()
        columns = zip(self.param_list(), grads, *(moments[name] for name in self.named.moment_names))
        flats = [[_readonly(array.reshape(-1)) for array in arrays] for arrays in columns]
        config = self.optimizer.kernel_config(self.optimizer.learning_rate, int(self.state.count) + 1)
        kernel = self.optimizer.kernel

        def run() -> None:
            for arrays in flats:
                kernel(*arrays, *config)

        return run


class NumpyRunner:
    def __init__(self, optimizer: NumpyOptimizer, params: list[np.ndarray]):
        self.optimizer = optimizer
        self.params = [p.copy() for p in params]
        self.state = optimizer.init(self.params)

    def prepare(self, grads: list[np.ndarray]) -> list[np.ndarray]:
        return [g.copy() for g in grads]

    def update(self, grads: list[np.ndarray]) -> None:
        self.params, self.state = self.optimizer.update(self.params, grads, self.state)

    def param_list(self) -> list[np.ndarray]:
        return self.params

    def moments(self) -> dict[str, list[np.ndarray]]:
        return {name: self.state[name] for name in self.optimizer.moments}


class TorchRunner:
    """``torch.optim`` on Parameters made from copies of the arrays; updates in place."""

    def __init__(self, torch: Any, rule: Rule, variant: dict[str, bool], params: list[np.ndarray]):
        self.torch, self.clip = torch, rule.clip
        self.params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
        self.optimizer = rule.torch(torch, self.params, variant)
        self.foreach_clip = torch.nn.utils.clip_grad_norm_
        self.current = None

    def prepare(self, grads: list[np.ndarray]) -> list[Any]:
        return [self.torch.from_numpy(g.copy()) for g in grads]

    def update(self, grads: list[Any]) -> None:
        if grads is not self.current:  # set once; the timed calls then step with the same grads
            for param, grad in zip(self.params, grads):
                param.grad = grad
            self.current = grads
        if self.clip is not None:
            self.foreach_clip(self.params, self.clip, foreach=True)
        self.optimizer.step()

    def param_list(self) -> list[np.ndarray]:
        return [p.detach().numpy().copy() for p in self.params]


class FloorRunner:
    """R reads and W writes of the model's size: np.add over R - W sizes, np.copyto over 2W - R."""

    def __init__(self, size: int, reads: int, writes: int):
        added, copied = reads - writes, 2 * writes - reads
        if added < 0 or copied < 0:
            raise ValueError(f"floor: cannot make {reads} reads and {writes} writes from an add and a copy")
        rng = np.random.default_rng(size)
        self.a, self.b = (rng.standard_normal(added * size, dtype=np.float32) for _ in range(2))
        self.c = np.empty(added * size, np.float32)
        self.source = rng.standard_normal(copied * size, dtype=np.float32)
        self.destination = np.empty(copied * size, np.float32)

    def prepare(self, grads: list[np.ndarray]) -> None:
        return None

    def update(self, _: Any = None) -> None:
        if self.c.size:
            np.add(self.a, self.b, out=self.c)
        if self.destination.size:
            np.copyto(self.destination, self.source)


def _readonly(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


# --------------------------------------------------------------------------- checks
def compare(name: str, rule: Rule, start: list[np.ndarray], got: Any, reference: Any,
            moments: bool) -> tuple[list[str], float, float, int]:
    """Compare a runner's parameters (and moments) with the reference's after the check's
    updates. Returns the problems, the worst parameter and moment differences (relative
    to the largest element) and the number of elements let through as sign flips."""
    problems, worst_update, worst_moment, flips = [], 0.0, 0.0, 0
    for index, (p0, p, q) in enumerate(zip(start, got.param_list(), reference.param_list())):
        change, expected = np.asarray(p, np.float64) - p0, np.asarray(q, np.float64) - p0
        scale = float(np.max(np.abs(expected))) or 1.0
        error = np.abs(change - expected) / scale
        if rule.sign:  # a sign taken within rounding of zero may flip: count those, check the rest
            off = error > UPDATE_RTOL
            allowed = math.floor(SIGN_FLIP_FRACTION * error.size)
            step = 2 * RULES[rule.name].numpy.step.keywords["learning_rate"]
            if off.sum() > allowed or np.any(np.abs(change - expected)[off] > CHECK_STEPS * step * 1.01):
                problems.append(f"{rule.name}: {name} parameter {index}: {int(off.sum())} of {error.size} elements "
                                f"differ from NumPy's beyond {UPDATE_RTOL:g} (at most {allowed} sign flips allowed)")
            flips += int(off.sum())
            error = error[~off]
        worst = float(np.max(error)) if error.size else 0.0
        worst_update = max(worst_update, worst)
        if not worst <= UPDATE_RTOL:  # also catches NaN
            problems.append(f"{rule.name}: {name} parameter {index} changed by {worst:.2e} (of its largest change) "
                            f"more or less than NumPy's (tolerance {UPDATE_RTOL:g})")
    if moments:
        expected_moments = reference.moments()
        for moment, arrays in got.moments().items():
            for index, (m, r) in enumerate(zip(arrays, expected_moments[moment])):
                worst = float(np.max(np.abs(np.asarray(m, np.float64) - r))) / (float(np.max(np.abs(r))) or 1.0)
                worst_moment = max(worst_moment, worst)
                if not worst <= MOMENT_RTOL:
                    problems.append(f"{rule.name}: {name} state {moment}[{index}] differs from NumPy's by {worst:.2e} "
                                    f"of its largest element (tolerance {MOMENT_RTOL:g})")
    return problems, worst_update, worst_moment, flips


# --------------------------------------------------------------------------- arguments
def _optimizers(text: str) -> tuple[str, ...]:
    names = {part.strip() for part in text.split(",") if part.strip()}
    if not names or names - set(RULES):
        raise argparse.ArgumentTypeError(f"choose from {','.join(RULES)}; got {text!r}")
    return tuple(name for name in RULES if name in names)


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def hidden_for(params: int) -> int:
    """The h whose model Dense(2h -> h), ReLU, Dense(h -> 2h) (4h**2 + 3h parameters) comes
    closest to ``params``."""
    h = max(1, round((-3 + math.sqrt(9 + 16 * params)) / 8))
    return min((candidate for candidate in (h - 1, h, h + 1) if candidate >= 1),
               key=lambda candidate: abs(4 * candidate * candidate + 3 * candidate - params))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time one optimizer update of a float32 model of about a million parameters: jitnn's fused "
        "kernels against the same rules in NumPy, torch.optim (foreach and fused) and a memory-traffic floor.",
    )
    parser.add_argument("--params", type=_positive_int, default=None, metavar="N",
                        help="about how many parameters (default 1,050,112: Dense 1024->512, ReLU, Dense 512->1024)")
    parser.add_argument("--optimizers", type=_optimizers, default=tuple(RULES), metavar="NAME,...",
                        help=f"rows to run, from {','.join(RULES)} (default: all)")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if it is installed")
    parser.add_argument("--torch-threads", type=_positive_int, default=None, metavar="N",
                        help="torch.set_num_threads(N) (default: leave PyTorch's default)")
    add_timing_arguments(parser, TIMING, "seed for the weights and gradients")
    args = parser.parse_args(argv)
    args.hidden = DEFAULT_HIDDEN if args.params is None else hidden_for(args.params)
    resolve_timing(parser, args, TIMING)
    return args


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    return run_with_cache_choice(run, parse_args(argv))


def run(args: argparse.Namespace, cold_cache: str | None) -> int:
    """The benchmark; ``cold_cache`` is the new, empty Numba cache folder of ``--cold-cache``."""
    sys.path.insert(0, str(ROOT))  # benchmark this checkout of jitnn
    jn, jitnn_import, error = import_timed("jitnn")
    if jn is None:
        raise ImportError(f"cannot import jitnn from {ROOT}: {error}")
    torch, torch_import, torch_missing = (None, None, "left out (--no-torch)") if args.no_torch else import_timed("torch")
    if torch is None:
        stderr(f"PyTorch: {torch_missing}; its columns will read n/a")
    elif args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    h = args.hidden
    k1, k2 = jn.random.split(jn.random.key(args.seed))
    model = jn.pipe(jn.Dense.init(k1, 2 * h, h), jn.ReLU(), jn.Dense.init(k2, h, 2 * h))
    start = [np.array(leaf) for leaf in jn.tree.leaves(model)]
    size = sum(p.size for p in start)
    tiny = jn.pipe(jn.Dense.init(k1, 2, 1), jn.ReLU(), jn.Dense.init(k2, 1, 2))
    tiny_grads = [np.full(leaf.shape, 0.1, np.float32) for leaf in jn.tree.leaves(tiny)]
    rng = np.random.default_rng(args.seed + 1)
    check_grads = [[rng.standard_normal(p.shape, dtype=np.float32) for p in start] for _ in range(CHECK_STEPS)]
    timing_grads = [rng.standard_normal(p.shape, dtype=np.float32) for p in start]
    variants = {"torch foreach": {"foreach": True}, "torch fused": {"fused": True}}
    stderr(f"model: Dense({2 * h} -> {h}), ReLU, Dense({h} -> {2 * h}): {size:,} float32 parameters in {len(start)} arrays")

    medians: dict[tuple[str, str], float] = {}
    spreads: dict[tuple[str, str], float] = {}
    first_calls: dict[tuple[str, str], float] = {}
    faults: dict[tuple[str, str], float | None] = {}
    unavailable: dict[tuple[str, str], str] = {}
    worst_update = worst_moment = 0.0
    sign_flips: dict[str, int] = {}
    cache_before = kernel_cache_counts()
    args.load = [load_average()]
    for name in args.optimizers:
        rule = RULES[name]
        builders: dict[str, Callable[[], Any]] = {
            "jitnn": lambda: JitnnRunner(jn, rule.jitnn(jn), model),
            "numpy": lambda: NumpyRunner(rule.numpy, start),
        }
        for variant, options in variants.items():
            if torch is None:
                unavailable[name, variant] = f"PyTorch {torch_missing}"
            elif rule.torch is None:
                unavailable[name, variant] = "torch.optim has no such optimizer"
            else:
                builders[variant] = functools.partial(TorchRunner, torch, rule, options, start)

        # three checked updates; the first one timed alone
        runners: dict[str, Any] = {}
        for implementation, build in builders.items():
            try:
                runner = build()
                prepared = [runner.prepare(grads) for grads in check_grads]
                settle(args.pause)
                first_calls[name, implementation], _ = first_call(lambda: runner.update(prepared[0]))
                for grads in prepared[1:]:
                    runner.update(grads)
            except Exception as error:
                if not implementation.startswith("torch"):
                    raise
                unavailable[name, implementation] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
                first_calls.pop((name, implementation), None)
                stderr(f"{name}: {implementation} not available: {unavailable[name, implementation]}")
                continue
            runners[implementation] = runner
        problems = []
        for implementation, runner in runners.items():
            if implementation == "numpy":
                continue
            found, update_error, moment_error, flips = compare(
                implementation, rule, start, runner, runners["numpy"], moments=implementation == "jitnn")
            problems += found
            worst_update, worst_moment = max(worst_update, update_error), max(worst_moment, moment_error)
            if flips:
                sign_flips[f"{name} {implementation}"] = flips
        if problems:
            stderr("The implementations disagree; not timing a wrong update:\n  " + "\n  ".join(problems))
            return 1

        # the update times, interleaved
        runners["floor"] = FloorRunner(size, rule.reads, rule.writes)
        runners["jitnn tiny"] = JitnnRunner(jn, rule.jitnn(jn), tiny)
        calls = {implementation: functools.partial(runner.update, runner.prepare(timing_grads if
                                                   implementation != "jitnn tiny" else tiny_grads))
                 for implementation, runner in runners.items()}
        kernels = runners["jitnn"].kernels_alone(timing_grads)
        if kernels is not None:
            calls["jitnn kernels"] = kernels
        order = [impl for impl in ("jitnn", "jitnn kernels", "jitnn tiny", *IMPLEMENTATIONS[1:]) if impl in calls]
        stderr(f"{name}: timing {', '.join(order)} ...")
        samples = measure_interleaved({impl: calls[impl] for impl in order}, args.budget, pause=args.pause)
        for implementation, cell in samples.items():
            medians[name, implementation], spreads[name, implementation] = cell.median, cell.spread
            stderr(f"  {implementation:14s} {cell.summary()}")
        for implementation in ("jitnn", "numpy", "torch foreach", "torch fused", "floor"):
            if implementation in calls:
                settle(args.pause)
                faults[name, implementation] = page_faults_per_call(calls[implementation])
        del runners, calls, samples
    args.load.append(load_average())

    report(args, jn, torch, size, medians, spreads, first_calls, faults, unavailable, worst_update, worst_moment,
           sign_flips, cache_before, cold_cache, jitnn_import, torch_import, torch_missing)
    return 0


def report(args: argparse.Namespace, jn: Any, torch: Any, size: int, medians: dict, spreads: dict, first_calls: dict,
           faults: dict, unavailable: dict, worst_update: float, worst_moment: float, sign_flips: dict,
           cache_before: tuple[int, int] | None, cold_cache: str | None, jitnn_import: float,
           torch_import: float | None, torch_missing: str | None) -> None:
    h = args.hidden
    print(f"## One optimizer update of {size:,} float32 parameters (Dense {2 * h}->{h}, ReLU, Dense {h}->{2 * h})")
    print()
    for line in describe_machine(["numpy", "numba", "llvmlite", "torch"]):
        print(line + "  ")
    threads = [thread_settings(), "jitnn's and NumPy's updates run on one thread"]
    if torch is not None:
        threads.append(f"PyTorch at {torch.get_num_threads()} threads"
                       + (" (--torch-threads)" if args.torch_threads else " (its default, not changed)"))
    print("Threads: " + "; ".join(threads) + ".  ")
    if None not in args.load:
        print(f"Load average (1 min) when timing started and ended: {args.load[0]:.2f}, {args.load[1]:.2f} "
              f"(this process alone brings it towards 1; well above 1 means something else was running on the "
              f"{os.cpu_count()} cores).")
    print()

    def median(row: str, implementation: str) -> float | None:
        return medians.get((row, implementation))

    def cell(row: str, implementation: str) -> str:
        if (row, implementation) not in medians:
            return "n/a"
        return microseconds(medians[row, implementation]) + (
            f" ±{spreads[row, implementation] * 100:.0f}%" if args.spread else "")

    def best_torch(row: str) -> float | None:
        times = [t for t in (median(row, "torch foreach"), median(row, "torch fused")) if t is not None]
        return min(times) if times else None

    def verdict(row: str) -> str:
        jitnn, numpy = median(row, "jitnn"), median(row, "numpy")
        if jitnn is None or numpy is None:
            return "n/a"
        return "yes" if numpy / jitnn >= TARGET_SPEEDUP else "no"

    rows = args.optimizers
    headers = ["optimizer", "arrays read+written", "jitnn (µs)", "NumPy (µs)", "torch foreach (µs)", "torch fused (µs)",
               "floor (µs)", "numpy/jitnn", f"≥{TARGET_SPEEDUP:g}x NumPy?", "torch/jitnn", "jitnn/floor"]
    table = [[ROW_LABELS.get(row, row), f"{RULES[row].reads}+{RULES[row].writes}"]
             + [cell(row, implementation) for implementation in IMPLEMENTATIONS]
             + [ratio(median(row, "numpy"), median(row, "jitnn")), verdict(row),
                ratio(best_torch(row), median(row, "jitnn")), ratio(median(row, "jitnn"), median(row, "floor"))]
             for row in rows]
    print(markdown_table(headers, table))
    print()
    met = [row for row in rows if verdict(row) == "yes"]
    missed = [row for row in rows if verdict(row) == "no"]
    print(f"Median wall-clock time of one update, in microseconds, over at least {args.budget.min_repeats} calls and "
          f"{args.budget.seconds:g} s per cell, spread over {args.budget.rounds} rounds in which the implementations "
          f"take turns (each turn after a {args.pause:g} s pause and one untimed call), after 3 untimed warm-up calls; "
          f"first calls are excluded (table below). Every implementation starts from the same arrays, and the timed "
          f"calls reuse one set of random gradients while the parameters and state move on from call to call. "
          f"`numpy/jitnn` and `torch/jitnn` above 1 mean jitnn is faster; `torch/jitnn` uses the faster of the two "
          f"PyTorch columns. `jitnn/floor` is jitnn's time as a multiple of moving the bytes the rule must read and "
          f"write (`arrays read+written`, each {size * 4 / 2**20:.1f} MiB) through preallocated arrays with one "
          f"`np.add(out=)` and one `np.copyto`. {'Quick run: short and noisy. ' if args.quick else ''}")
    print()
    print(f"The project's target is jitnn at least {TARGET_SPEEDUP:g}x faster than the NumPy version: "
          + (f"met for {', '.join(met)}" if met else "met for none")
          + (f"; not met for {', '.join(missed)}" if missed else "") + ".")
    print()
    print("jitnn runs ONE fused Numba kernel per parameter array that reads the parameter, its gradient and its "
          "moments once and writes fresh (read-only) arrays for the new parameter and moments; nothing is written in "
          "place, so every update allocates the model's size once per output. NumPy's version makes a new "
          "array for every intermediate expression. PyTorch's `step()` updates parameters and moments IN PLACE and "
          "allocates nothing per update (the foreach path groups the arrays into multi-tensor calls; the fused path "
          "is one kernel per group), and it may use more than one thread. The chain runs a norm pass and a scaling "
          "pass (writing a new gradient tree) before Adam's kernels; its floor assumes the scaling fused into Adam.")
    print()
    print(f"Hyperparameters: {HYPERPARAMETERS}.")
    print()

    # ---- where jitnn's time goes
    print("### Where jitnn's time goes")
    print()
    headers = ["optimizer", "update (µs)", "kernels alone (µs)", "tiny model update (µs)", "page faults/update: jitnn",
               "NumPy", "torch foreach", "floor"]

    def fault_cell(row: str, implementation: str) -> str:
        value = faults.get((row, implementation))
        return "n/a" if value is None else f"{value:,.0f}"

    table = [[ROW_LABELS.get(row, row), cell(row, "jitnn"), cell(row, "jitnn kernels"), cell(row, "jitnn tiny")]
             + [fault_cell(row, implementation) for implementation in ("jitnn", "numpy", "torch foreach", "floor")]
             for row in rows]
    print(markdown_table(headers, table))
    print()
    print(f"`kernels alone`: the optimizer's kernel called directly on the same flat read-only arrays, one call per "
          f"array with each output dropped at once (so the allocator hands the same memory back at once; n/a for the "
          f"chain). `tiny model update`: `opt.update` on a model of the same four arrays with 7 parameters, i.e. "
          f"jitnn's Python per update (checks, tree traversals, record rebuilding, kernel dispatch) with no work. "
          f"Page faults: minor page faults per update (average of 10 untimed calls); one is a first write to a "
          f"fresh 4 KiB page, and one update's outputs span about {size * 4 / 4096:,.0f} pages per array written. "
          f"Whether a fresh output faults depends on the allocator's history: glibc serves a block above its "
          f"mmap threshold (128 KiB at start, raised up to 32 MiB as large blocks are freed) with fresh pages, so "
          f"the same update can cost several times more early in a process than after a while (try "
          f"`MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_`); here each timing follows the checked updates and "
          f"warm-up calls, so the allocator has seen these sizes before.")
    print()

    # ---- first calls
    print("### First call (compile), milliseconds")
    print()
    columns = ("jitnn", "numpy", "torch foreach", "torch fused")
    table = [[ROW_LABELS.get(row, row)] + [milliseconds(first_calls.get((row, implementation))) for implementation in columns]
             for row in rows]
    print(markdown_table(["optimizer"] + [LABELS[c] for c in columns], table))
    print()
    cache_after = kernel_cache_counts()
    where = ("a new, empty Numba cache folder (--cold-cache)" if cold_cache is not None
             else f"NUMBA_CACHE_DIR={os.environ['NUMBA_CACHE_DIR']}" if os.environ.get("NUMBA_CACHE_DIR")
             else "Numba's default cache folders (next to the sources)")
    counts = "cache use unknown"
    if cache_before is not None and cache_after is not None:
        counts = (f"{cache_after[0] - cache_before[0]} kernel signatures loaded from the on-disk cache and "
                  f"{cache_after[1] - cache_before[1]} compiled")
    chain_note = (" (the chain's first call also brings in the clipping kernels; Adam's kernel is in memory by then)"
                  if "clip+adam" in rows and "adam" in rows else "")
    notes = [f"Each implementation's first update from a fresh state, timed alone. jitnn: {counts}, using "
             f"{where}{chain_note}."]
    notes.append(f"Import times: jitnn {milliseconds(jitnn_import)} ms"
                 + (f", PyTorch {milliseconds(torch_import)} ms." if torch_import is not None else "."))
    print(" ".join(notes))
    print()
    reasons: dict[str, list[str]] = {}
    for (row, implementation), reason in unavailable.items():
        if row in rows:
            reasons.setdefault(f"{implementation}: {reason}", []).append(ROW_LABELS.get(row, row))
    if reasons:
        print("n/a: " + "; ".join(f"{reason} ({', '.join(names)})" for reason, names in reasons.items()) + ".")
        print()
    flips = (f" For Lion, {sum(sign_flips.values())} elements in all were let through as sign flips "
             f"({', '.join(f'{k}: {v}' for k, v in sign_flips.items())}): where `b1 m + (1 - b1) g` is within rounding "
             f"of zero, float32 and float64 arithmetic may take opposite signs." if sign_flips else "")
    print(f"Check before timing: from identical arrays, after {CHECK_STEPS} updates with different random gradients, "
          f"every parameter's change matches NumPy's to {UPDATE_RTOL:g} of its largest element (jitnn and PyTorch; "
          f"largest difference {worst_update:.1e}) and jitnn's moments match NumPy's to {MOMENT_RTOL:g} (largest "
          f"difference {worst_moment:.1e}).{flips}")


if __name__ == "__main__":
    sys.exit(main())
