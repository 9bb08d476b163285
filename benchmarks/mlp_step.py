#!/usr/bin/env python
"""Benchmark: one SGD training step of a 784-256-128-10 ReLU MLP, float32.

One step is the forward pass, the softmax cross-entropy loss (mean over the batch), the
backward pass and a plain SGD update with learning rate 0.01. It is timed for

* ``compiled``: jitnn's compiled step, ``jn.compile_step(model, loss, jn.optim.sgd(0.01))``:
  forward, loss, backward and update in one Numba function, called as
  ``model, state, value = step(model, state, X, T)`` (what ``jn.fit`` runs);
* ``jitnn``: the generic path, ``jn.value_and_grad`` then ``opt.update`` with
  ``jn.optim.sgd(0.01)`` (what ``jn.train_step`` does);
* ``numpy``: the same step written by hand with NumPy (matrix products, ReLU masks, a stable
  softmax), returning new arrays;
* ``torch``: PyTorch eager, ``nn.Sequential`` of ``Linear``/``ReLU``, ``CrossEntropyLoss``,
  ``optim.SGD`` (``zero_grad``, ``backward``, ``step``), at PyTorch's default thread count;
* ``jax``: a ``jax.jit``-compiled pure step ``(params, X, T) -> (new params, loss)``, with
  ``block_until_ready`` on the results;
* ``limit``: the same step hand-fused in one Numba function (``limit_step``): the products
  through Numba's ``np.dot``, each layer's ReLU, softmax and their gradients as loops, and
  each weight update fused with its gradient into a fresh array, at batch 1 as
  ``W - lr * outer(x, d)`` so that ``dW`` is never stored; fresh arrays are returned, as the
  compiled step's contract asks. It is the limit a compiled step of this MLP can be measured
  against (the compiled step's target at batch 1: within ``LIMIT_TARGET``);
* ``limit64``: the same hand-fused step with jitnn's update arithmetic: each new weight is
  ``p - lr g`` computed in float64 and rounded once to float32 (``g`` the float32 gradient,
  at batch 1 the rounded product ``x_i d_j``), as jitnn's SGD kernel computes it, where
  ``limit`` computes in float32. The two limits differ by what that arithmetic costs;
* ``floor``: the step's matrix products alone (3 forward, 5 backward) through NumPy's BLAS
  (``np.dot``) into preallocated outputs, a lower bound for any implementation of the step.

PyTorch and JAX are optional: when one is not installed its columns read ``n/a``.

Every implementation starts, for each batch size, from jitnn's initial weights and sees the
same random batch. Before timing, the first step of each is checked against jitnn's (or, if
jitnn is left out, NumPy's): the loss values and the updated weights must agree to float32
tolerance, otherwise the script stops. The first call of each implementation is timed on its
own ("first call (compile)": Numba compilation or on-disk cache load, JAX tracing and
compilation, PyTorch's lazy set-up) and left out of the step times, which are medians of
single-call wall-clock times, taken in rounds in which the implementations take turns. Each
turn starts after a short pause, because OpenBLAS's threads keep spinning for about 0.1 s
after a call and NumPy (whose bundled OpenBLAS jitnn's kernels also call, see
``jitnn/_blas.py``), SciPy, PyTorch and JAX each bring their own thread pools: without the
pause one library's idle threads slow the next one down.

The report on stdout is Markdown; progress goes to stderr.

Usage::

    NUMBA_CACHE_DIR=.numba_cache python benchmarks/mlp_step.py            # full run
    python benchmarks/mlp_step.py --quick                                 # about half a minute
    python benchmarks/mlp_step.py --batch-sizes 64,1024 --impls jitnn,torch,floor
    python benchmarks/mlp_step.py --cold-cache    # compile jitnn's kernels afresh
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

import numpy as np

from _common import (
    implementations_type,
    positive_integers,
    kernel_cache_counts,
    page_faults_per_call,
    run_with_cache_choice,
    TimingDefaults,
    add_timing_arguments,
    resolve_timing,
    ROOT,
    describe_machine,
    first_call,
    import_timed,
    markdown_table,
    measure_interleaved,
    microseconds,
    milliseconds,
    ratio,
    settle,
    stderr,
    thread_settings,
)

SIZES = (784, 256, 128, 10)
LEARNING_RATE = 0.01
DEFAULT_BATCH_SIZES = (1, 16, 64, 256, 1024)
IMPLEMENTATIONS = ("compiled", "jitnn", "numpy", "torch", "jax", "limit", "limit64", "floor")
LABELS = {"compiled": "jitnn compiled", "jitnn": "jitnn generic", "numpy": "NumPy", "torch": "PyTorch", "jax": "JAX",
          "limit": "limit", "limit64": "limit, f64 update", "floor": "floor"}
PEERS = ("jitnn", "numpy", "torch", "jax")
#: The targets for the compiled step: at least these times faster than JAX at these batch sizes.
JAX_TARGETS = {1: 3.0, 16: 1.5}
FLOOR_TARGET = (1024, 1.15)
#: The target against the hand-fused Numba step: at most this multiple of its time, at this batch size.
LIMIT_TARGET = (1, 1.25)

#: How closely the first step of a peer must match the reference: the loss, relatively, and
#: each updated parameter's change ``new - old``, relative to the largest change in it.
LOSS_RTOL = 1e-5
UPDATE_RTOL = 1e-3


# --------------------------------------------------------------------------- arguments
#: The timing budget per table cell, for a full and a --quick run.
TIMING = TimingDefaults()

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time one SGD step (forward, softmax cross-entropy, backward, update) of a "
        "784-256-128-10 ReLU MLP in float32: jitnn against NumPy, PyTorch, JAX and a BLAS floor.",
    )
    parser.add_argument("--batch-sizes", type=positive_integers, default=DEFAULT_BATCH_SIZES, metavar="N,N,...",
                        help="batch sizes to time (default: %(default)s)")
    parser.add_argument("--impls", type=implementations_type(IMPLEMENTATIONS), default=IMPLEMENTATIONS, metavar="NAME,...",
                        help=f"implementations to run, from {','.join(IMPLEMENTATIONS)} (default: all)")
    add_timing_arguments(parser, TIMING, "seed for the weights and the data")
    args = parser.parse_args(argv)
    resolve_timing(parser, args, TIMING)
    return args


# --------------------------------------------------------------------------- implementations
# Each implementation is a factory ``build(model, params, X, T) -> Runner``: ``model`` is
# jitnn's initial model, ``params`` the same weights as NumPy arrays [(W, b), ...] with W of
# shape (n_in, n_out), ``X`` the float32 batch and ``T`` the int64 labels. A runner keeps its
# own training state; ``runner.step()`` performs one step and returns the loss;
# ``runner.weights()`` gives the current weights in the layout of ``params`` (for the checks).
class Runner:
    def __init__(self, step: Callable[[], Any], weights: Callable[[], list[tuple[np.ndarray, np.ndarray]]] | None):
        self.step = step
        self.weights = weights


def jitnn_factory(jn: Any) -> Callable[..., Runner]:
    loss = jn.SoftmaxCrossEntropy()
    optimizer = jn.optim.sgd(LEARNING_RATE)

    def build(model: Any, params: Any, X: np.ndarray, T: np.ndarray) -> Runner:
        current = {"model": model, "state": optimizer.init(model)}  # a model is a value: no copy needed

        def step() -> float:
            value, grads = jn.value_and_grad(current["model"], loss, X, T)
            current["model"], current["state"] = optimizer.update(current["model"], grads, current["state"])
            return value

        def weights() -> list[tuple[np.ndarray, np.ndarray]]:
            return [(member.W, member.b) for member in current["model"].layers if isinstance(member, jn.Dense)]

        return Runner(step, weights)

    return build


def compiled_factory(jn: Any) -> Callable[..., Runner]:
    loss = jn.SoftmaxCrossEntropy()
    optimizer = jn.optim.sgd(LEARNING_RATE)

    def build(model: Any, params: Any, X: np.ndarray, T: np.ndarray) -> Runner:
        step = jn.compile_step(model, loss, optimizer)  # generated and compiled (or loaded) at the first call
        current = {"model": model, "state": optimizer.init(model)}

        def run() -> float:
            current["model"], current["state"], value = step(current["model"], current["state"], X, T)
            return value

        def weights() -> list[tuple[np.ndarray, np.ndarray]]:
            return [(member.W, member.b) for member in current["model"].layers if isinstance(member, jn.Dense)]

        return Runner(run, weights)

    return build


def numpy_step(params: list[tuple[np.ndarray, np.ndarray]], X: np.ndarray, T: np.ndarray,
               learning_rate: float) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """One SGD step of the MLP by hand; returns new parameter arrays and the loss before the step."""
    (W1, b1), (W2, b2), (W3, b3) = params
    n = X.shape[0]
    rows = np.arange(n)
    dot = np.dot  # hands every product here to BLAS; `@` does not when the inner dimension is 1 (batch 1)
    Z1 = dot(X, W1)
    Z1 += b1
    H1 = np.maximum(Z1, 0)
    Z2 = dot(H1, W2)
    Z2 += b2
    H2 = np.maximum(Z2, 0)
    Y = dot(H2, W3)
    Y += b3
    shifted = Y - Y.max(axis=1, keepdims=True)  # stable softmax
    E = np.exp(shifted)
    S = E.sum(axis=1, keepdims=True)
    loss = float(np.mean(np.log(S[:, 0]) - shifted[rows, T]))
    dY = E / S
    dY[rows, T] -= 1
    dY /= n
    dW3, db3 = dot(H2.T, dY), dY.sum(axis=0)
    dZ2 = dot(dY, W3.T)
    dZ2 *= Z2 > 0
    dW2, db2 = dot(H1.T, dZ2), dZ2.sum(axis=0)
    dZ1 = dot(dZ2, W2.T)
    dZ1 *= Z1 > 0
    dW1, db1 = dot(X.T, dZ1), dZ1.sum(axis=0)
    grads = ((dW1, db1), (dW2, db2), (dW3, db3))
    return [(W - learning_rate * dW, b - learning_rate * db) for (W, b), (dW, db) in zip(params, grads)], loss


def numpy_factory(_: Any = None) -> Callable[..., Runner]:
    def build(model: Any, params: Any, X: np.ndarray, T: np.ndarray) -> Runner:
        current = {"params": [(W.copy(), b.copy()) for W, b in params]}

        def step() -> float:
            current["params"], value = numpy_step(current["params"], X, T, LEARNING_RATE)
            return value

        return Runner(step, lambda: current["params"])

    return build


def torch_factory(torch: Any) -> Callable[..., Runner]:
    nn = torch.nn

    def build(model: Any, params: Any, X: np.ndarray, T: np.ndarray) -> Runner:
        network = nn.Sequential(nn.Linear(SIZES[0], SIZES[1]), nn.ReLU(), nn.Linear(SIZES[1], SIZES[2]), nn.ReLU(),
                                nn.Linear(SIZES[2], SIZES[3]))
        linears = [member for member in network if isinstance(member, nn.Linear)]
        with torch.no_grad():
            for linear, (W, b) in zip(linears, params):
                linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))  # torch stores (n_out, n_in)
                linear.bias.copy_(torch.from_numpy(b.copy()))
        loss_function = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(network.parameters(), lr=LEARNING_RATE)
        X_tensor, T_tensor = torch.from_numpy(X), torch.from_numpy(T.astype(np.int64))

        def step() -> float:
            optimizer.zero_grad()
            value = loss_function(network(X_tensor), T_tensor)
            value.backward()
            optimizer.step()
            return value.item()

        def weights() -> list[tuple[np.ndarray, np.ndarray]]:
            return [(linear.weight.detach().numpy().T.copy(), linear.bias.detach().numpy().copy()) for linear in linears]

        return Runner(step, weights)

    return build


def jax_factory(jax: Any) -> Callable[..., Runner]:
    import jax.numpy as jnp

    def loss_function(params: Any, X: Any, T: Any) -> Any:
        H = X
        for i, (W, b) in enumerate(params):
            H = H @ W + b
            if i < len(params) - 1:
                H = jax.nn.relu(H)
        log_probabilities = jax.nn.log_softmax(H, axis=1)
        return -jnp.mean(jnp.take_along_axis(log_probabilities, T[:, None], axis=1))

    @jax.jit
    def train_step(params: Any, X: Any, T: Any) -> Any:
        value, grads = jax.value_and_grad(loss_function)(params, X, T)
        return jax.tree_util.tree_map(lambda p, g: p - LEARNING_RATE * g, params, grads), value

    def build(model: Any, params: Any, X: np.ndarray, T: np.ndarray) -> Runner:
        current = {"params": tuple((jnp.array(W), jnp.array(b)) for W, b in params)}
        X_device, T_device = jnp.asarray(X), jnp.asarray(T.astype(np.int32))  # data on the device once, as for torch

        def step() -> Any:
            current["params"], value = jax.block_until_ready(train_step(current["params"], X_device, T_device))
            return value

        def weights() -> list[tuple[np.ndarray, np.ndarray]]:
            return [(np.asarray(W), np.asarray(b)) for W, b in current["params"]]

        return Runner(step, weights)

    return build


def limit_factory(numba: Any, wide: bool = False) -> Callable[..., Runner]:
    """The hand-fused step, compiled at its first call in each process (timed apart, as every
    first call); with ``wide``, each update computed in float64 and rounded once (``limit64``)."""

    @numba.njit(nogil=True, error_model="numpy")
    def updated(W, H, dZ, learning_rate):  # W - lr * H.T @ dZ, fresh; at batch 1 the outer product, fused
        n_in, n_out = W.shape
        out = np.empty_like(W)
        if H.shape[0] == 1:
            for i in range(n_in):
                if wide:
                    h = H[0, i]
                    for j in range(n_out):
                        out[i, j] = np.float64(W[i, j]) - learning_rate * np.float64(h * dZ[0, j])
                else:
                    scaled = learning_rate * H[0, i]
                    for j in range(n_out):
                        out[i, j] = W[i, j] - scaled * dZ[0, j]
        else:
            dW = np.dot(H.T, dZ)
            for i in range(n_in):
                for j in range(n_out):
                    if wide:
                        out[i, j] = np.float64(W[i, j]) - learning_rate * np.float64(dW[i, j])
                    else:
                        out[i, j] = W[i, j] - learning_rate * dW[i, j]
        return out

    @numba.njit(nogil=True, error_model="numpy")
    def updated_bias(b, db, learning_rate):  # b - lr * db, fresh, in b's dtype
        out = np.empty_like(b)
        for j in range(b.shape[0]):
            if wide:
                out[j] = np.float64(b[j]) - learning_rate * np.float64(db[j])
            else:
                out[j] = b[j] - learning_rate * db[j]
        return out

    @numba.njit(nogil=True, error_model="numpy")
    def relu_layer(H, W, b):  # (Z, max(Z, 0)) with Z = H @ W + b
        Z = np.dot(H, W)
        A = np.empty_like(Z)
        for r in range(Z.shape[0]):
            for j in range(Z.shape[1]):
                Z[r, j] += b[j]
                A[r, j] = max(Z[r, j], 0)
        return Z, A

    @numba.njit(nogil=True, error_model="numpy")
    def backward_relu(dA, W, Z):  # (dA @ W.T) * (Z > 0)
        dH = np.dot(dA, W.T)
        for r in range(dH.shape[0]):
            for j in range(dH.shape[1]):
                if Z[r, j] <= 0:
                    dH[r, j] = 0
        return dH

    @numba.njit(nogil=True, error_model="numpy")
    def limit_step(W1, b1, W2, b2, W3, b3, X, T, learning_rate):
        n = X.shape[0]
        Z1, H1 = relu_layer(X, W1, b1)
        Z2, H2 = relu_layer(H1, W2, b2)
        Y = np.dot(H2, W3)
        dY = np.empty_like(Y)
        loss = 0.0
        for r in range(n):
            top = -np.inf
            for j in range(Y.shape[1]):
                Y[r, j] += b3[j]
                top = max(top, Y[r, j])
            total = 0.0
            for j in range(Y.shape[1]):
                dY[r, j] = np.exp(Y[r, j] - top)
                total += dY[r, j]
            loss += np.log(total) - (Y[r, T[r]] - top)
            for j in range(Y.shape[1]):
                dY[r, j] = dY[r, j] / total / n
            dY[r, T[r]] -= 1.0 / n
        db3, db2, db1 = dY.sum(axis=0), np.empty(b2.shape, b2.dtype), np.empty(b1.shape, b1.dtype)
        dZ2 = backward_relu(dY, W3, Z2)
        dZ1 = backward_relu(dZ2, W2, Z1)
        db2[:] = 0
        db1[:] = 0
        for r in range(n):
            for j in range(dZ2.shape[1]):
                db2[j] += dZ2[r, j]
            for j in range(dZ1.shape[1]):
                db1[j] += dZ1[r, j]
        return ((updated(W1, X, dZ1, learning_rate), updated_bias(b1, db1, learning_rate)),
                (updated(W2, H1, dZ2, learning_rate), updated_bias(b2, db2, learning_rate)),
                (updated(W3, H2, dY, learning_rate), updated_bias(b3, db3, learning_rate)), loss / n)

    def build(model: Any, params: Any, X: np.ndarray, T: np.ndarray) -> Runner:
        current = {"params": [(W.copy(), b.copy()) for W, b in params]}
        rate = np.float64(LEARNING_RATE) if wide else np.float32(LEARNING_RATE)

        def step() -> float:
            (W1, b1), (W2, b2), (W3, b3) = current["params"]
            *new, value = limit_step(W1, b1, W2, b2, W3, b3, X, T, rate)
            current["params"] = new
            return value

        return Runner(step, lambda: current["params"])

    return build


def floor_factory(_: Any = None) -> Callable[..., Runner]:
    """The 8 matrix products of a step, same shapes, into preallocated outputs."""

    def build(model: Any, params: Any, X: np.ndarray, T: np.ndarray) -> Runner:
        n = X.shape[0]
        (W1, _), (W2, _), (W3, _) = params
        rng = np.random.default_rng(n)
        H1, H2, dY, dZ2, dZ1 = (rng.standard_normal(shape, dtype=np.float32)
                                for shape in ((n, SIZES[1]), (n, SIZES[2]), (n, SIZES[3]), (n, SIZES[2]), (n, SIZES[1])))
        out = {name: np.empty(shape, np.float32) for name, shape in (
            ("Z1", (n, SIZES[1])), ("Z2", (n, SIZES[2])), ("Y", (n, SIZES[3])),
            ("dW3", W3.shape), ("dH2", (n, SIZES[2])), ("dW2", W2.shape), ("dH1", (n, SIZES[1])), ("dW1", W1.shape))}
        dot = np.dot  # every product goes to BLAS (np.matmul computes the batch-1 weight gradients without it)
        Xt, H1t, H2t, W2t, W3t = X.T, H1.T, H2.T, W2.T, W3.T  # views: BLAS reads them transposed, no copies

        def step() -> None:
            dot(X, W1, out=out["Z1"])       # forward
            dot(H1, W2, out=out["Z2"])
            dot(H2, W3, out=out["Y"])
            dot(H2t, dY, out=out["dW3"])    # backward: dW for 3 layers, dX for 2
            dot(dY, W3t, out=out["dH2"])
            dot(H1t, dZ2, out=out["dW2"])
            dot(dZ2, W2t, out=out["dH1"])
            dot(Xt, dZ1, out=out["dW1"])

        return Runner(step, None)

    return build


FACTORIES = {"compiled": compiled_factory, "jitnn": jitnn_factory, "numpy": numpy_factory, "torch": torch_factory, "jax": jax_factory,
             "limit": limit_factory, "limit64": lambda numba: limit_factory(numba, wide=True), "floor": floor_factory}
MODULES = {"compiled": "jitnn", "jitnn": "jitnn", "torch": "torch", "jax": "jax", "limit": "numba", "limit64": "numba"}
INSTALL_HINTS = {"torch": "a CPU build of `torch`", "jax": "`jax` (CPU)"}  # for the "not installed" note


# --------------------------------------------------------------------------- checks
def check_first_steps(batch: int, losses: dict[str, float], updates: dict[str, list[np.ndarray]],
                      reference: str) -> tuple[list[str], float, float]:
    """Compare every implementation's first step with ``reference``'s.

    Returns the problems found, the largest relative loss difference and the largest update
    difference (relative to the largest element of the reference's update).
    """
    problems, worst_loss, worst_update = [], 0.0, 0.0
    expected_loss = losses[reference]
    for name, value in losses.items():
        if name == reference:
            continue
        difference = abs(value - expected_loss) / abs(expected_loss)
        worst_loss = max(worst_loss, difference)
        if not difference <= LOSS_RTOL:  # also catches NaN
            problems.append(f"batch {batch}: {name} loss {value!r} differs from {reference} loss {expected_loss!r} "
                            f"(relative tolerance {LOSS_RTOL})")
        for index, (got, expected) in enumerate(zip(updates[name], updates[reference])):
            error = float(np.max(np.abs(got - expected))) / (float(np.max(np.abs(expected))) or 1.0)
            worst_update = max(worst_update, error)
            if not error <= UPDATE_RTOL:
                problems.append(f"batch {batch}: {name} parameter {index} update differs from {reference}'s by "
                                f"{error:.2e} of its largest element (tolerance {UPDATE_RTOL})")
    return problems, worst_loss, worst_update


def _changes(before: list[tuple[np.ndarray, np.ndarray]], after: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    return [np.asarray(new, np.float64) - np.asarray(old, np.float64)
            for pair_old, pair_new in zip(before, after) for old, new in zip(pair_old, pair_new)]


def targets_report(batch_sizes: tuple[int, ...], median: Callable[[int, str], float | None]) -> list[str]:
    """Each target for the compiled step with the measured ratio and whether it is met."""
    lines = []
    for batch, wanted in JAX_TARGETS.items():
        compiled, jax = median(batch, "compiled"), median(batch, "jax")
        if batch in batch_sizes and compiled and jax:
            lines.append(f"batch {batch}: at least {wanted:g}x faster than JAX: {jax / compiled:.2f}x, "
                         f"{'met' if jax / compiled >= wanted else 'NOT met'}")
    for batch in batch_sizes:
        compiled = median(batch, "compiled")
        peers = {name: median(batch, name) for name in ("numpy", "torch", "jax") if median(batch, name)}
        if 64 <= batch <= 1024 and compiled and peers:
            fastest = min(peers, key=peers.get)
            lines.append(f"batch {batch}: no slower than the fastest peer ({LABELS[fastest]}, "
                         f"{microseconds(peers[fastest])} µs): {peers[fastest] / compiled:.2f}x, "
                         f"{'met' if compiled <= peers[fastest] else 'NOT met'}")
    batch, limit = LIMIT_TARGET
    compiled, fused = median(batch, "compiled"), median(batch, "limit")
    if batch in batch_sizes and compiled and fused:
        lines.append(f"batch {batch}: within {limit:g}x of the hand-fused limit: {compiled / fused:.2f}x, "
                     f"{'met' if compiled / fused <= limit else 'NOT met'}")
    wide = median(batch, "limit64")
    if batch in batch_sizes and compiled and wide:
        lines.append(f"(beside it: {compiled / wide:.2f}x the hand-fused step with jitnn's float64 update arithmetic, "
                     f"which takes {wide / fused:.2f}x the limit's time)" if fused else f"{compiled / wide:.2f}x the limit64 step")
    batch, limit = FLOOR_TARGET
    compiled, floor = median(batch, "compiled"), median(batch, "floor")
    if batch in batch_sizes and compiled and floor:
        lines.append(f"batch {batch}: within {limit:g}x of the floor: {compiled / floor:.2f}x, "
                     f"{'met' if compiled / floor <= limit else 'NOT met'}")
    return lines


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    return run_with_cache_choice(run, parse_args(argv))


def run(args: argparse.Namespace, cold_cache: str | None) -> int:
    """The benchmark; ``cold_cache`` is the new, empty Numba cache folder of ``--cold-cache``."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # no probing for accelerators
    sys.path.insert(0, str(ROOT))  # benchmark this checkout of jitnn

    # ---- imports, timed
    modules: dict[str, Any] = {}
    import_seconds: dict[str, float] = {}
    missing: dict[str, str] = {}
    for name in args.impls:
        if name not in MODULES:
            continue
        module, seconds, error = import_timed(MODULES[name])
        if module is None and MODULES[name] == "jitnn":
            raise ImportError(f"cannot import jitnn from {ROOT}: {error}")
        if module is None:
            missing[name] = error or "not importable"
            stderr(f"{LABELS[name]}: not installed ({missing[name]}); its columns will read n/a")
        else:
            modules[name], import_seconds[name] = module, seconds
    active = [name for name in args.impls if name not in missing]
    builders = {name: FACTORIES[name](modules.get(name)) for name in active}

    # ---- the initial weights: jitnn's initializers, shared by every implementation
    jn = modules.get("jitnn") or modules.get("compiled")
    if jn is None:  # jitnn left out (--impls): the peers still need identical weights (Glorot uniform)
        rng = np.random.default_rng(args.seed)
        params = []
        for n_in, n_out in zip(SIZES[:-1], SIZES[1:]):
            limit = np.sqrt(6.0 / (n_in + n_out))
            params.append((rng.uniform(-limit, limit, (n_in, n_out)).astype(np.float32), np.zeros(n_out, np.float32)))
        model = None
    else:
        k1, k2, k3 = jn.random.split(jn.random.key(args.seed), 3)
        model = jn.pipe(jn.Dense.init(k1, SIZES[0], SIZES[1]), jn.ReLU(), jn.Dense.init(k2, SIZES[1], SIZES[2]), jn.ReLU(),
                        jn.Dense.init(k3, SIZES[2], SIZES[3]))
        params = [(np.array(member.W), np.array(member.b)) for member in model.layers if isinstance(member, jn.Dense)]
    reference = next((name for name in ("jitnn", "numpy", "torch", "jax") if name in active), None)

    medians: dict[tuple[int, str], float] = {}
    spreads: dict[tuple[int, str], float] = {}
    first_calls: dict[tuple[int, str], float] = {}
    faults: dict[tuple[int, str], float | None] = {}
    worst_loss_difference = worst_update_difference = 0.0
    cache_counts = None
    data_rng = np.random.default_rng(args.seed + 1)
    for batch in args.batch_sizes:
        X = data_rng.standard_normal((batch, SIZES[0]), dtype=np.float32)
        T = data_rng.integers(0, SIZES[-1], batch, dtype=np.int64)

        # first calls, from a fresh state: timed alone, and checked against the reference
        runners, losses, updates = {}, {}, {}
        for name in active:
            runner = builders[name](model, params, X, T)
            before = runner.weights() if runner.weights else None
            before = [(np.array(W), np.array(b)) for W, b in before] if before else None
            settle(args.pause)
            seconds, value = first_call(runner.step)
            first_calls[batch, name] = seconds
            if MODULES.get(name) == "jitnn" and cache_counts is None:
                cache_counts = kernel_cache_counts()
            if runner.weights is not None:
                losses[name] = float(value)
                updates[name] = _changes(before, runner.weights())
            runners[name] = runner
        if reference is not None:
            problems, loss_difference, update_difference = check_first_steps(batch, losses, updates, reference)
            if problems:
                stderr("The implementations disagree; not timing a wrong step:\n  " + "\n  ".join(problems))
                return 1
            worst_loss_difference = max(worst_loss_difference, loss_difference)
            worst_update_difference = max(worst_update_difference, update_difference)

        # the step times
        stderr(f"batch {batch}: timing {', '.join(active)} ...")
        samples = measure_interleaved({name: runners[name].step for name in active}, args.budget, pause=args.pause)
        for name, cell in samples.items():
            medians[batch, name], spreads[batch, name] = cell.median, cell.spread
            stderr(f"  {name:6s} {cell.summary()}")
        for name in active:
            faults[batch, name] = page_faults_per_call(runners[name].step)

    # ---- the report
    print(f"## One SGD step of a {'-'.join(map(str, SIZES))} ReLU MLP (float32, softmax cross-entropy, lr {LEARNING_RATE})")
    print()
    for line in describe_machine(["numpy", "scipy", "numba", "torch", "jax", "jaxlib"]):
        print(line + "  ")
    torch = modules.get("torch")
    threads = [thread_settings()]
    if torch is not None:
        threads.append(f"PyTorch at its default of {torch.get_num_threads()} threads "
                       f"({torch.get_num_interop_threads()} inter-op), not changed")
    if jn is not None:
        import numba
        from jitnn import _blas
        blas = "NumPy's OpenBLAS" if _blas.library().name == "numpy" else "SciPy's BLAS"
        threads.append(f"Numba threads {numba.config.NUMBA_NUM_THREADS}; jitnn's matrix products run on {blas} "
                       f"(see jitnn/_blas.py), on {_blas.auto_threads(1)} thread below batch "
                       f"{_blas.SMALL_BATCH} and on {_blas.auto_threads(_blas.SMALL_BATCH)} from there in the compiled step (threads=None)")
    print("Threads: " + "; ".join(threads) + ".")
    print()

    def cell(batch: int, name: str) -> str:
        if (batch, name) not in medians:
            return "n/a"
        text = microseconds(medians[batch, name])
        return text + (f" ±{spreads[batch, name] * 100:.0f}%" if args.spread else "")

    def median(batch: int, name: str) -> float | None:
        return medians.get((batch, name))

    headers = ["batch"] + [f"{LABELS[name]} (µs)" for name in IMPLEMENTATIONS] + \
              [f"{'generic' if peer == 'jitnn' else peer}/compiled" for peer in PEERS] + ["compiled/limit", "compiled/limit64", "compiled/floor"]
    rows = []
    for batch in args.batch_sizes:
        rows.append([str(batch)] + [cell(batch, name) for name in IMPLEMENTATIONS]
                    + [ratio(median(batch, peer), median(batch, "compiled")) for peer in PEERS]
                    + [ratio(median(batch, "compiled"), median(batch, "limit")),
                       ratio(median(batch, "compiled"), median(batch, "limit64")),
                       ratio(median(batch, "compiled"), median(batch, "floor"))])
    print(markdown_table(headers, rows))
    print()
    print(f"Median wall-clock time of one step, in microseconds, over at least {args.budget.min_repeats} calls and "
          f"{args.budget.seconds:g} s per cell, spread over {args.budget.rounds} rounds in which the implementations "
          f"take turns (each turn after a {args.pause:g} s pause that lets other libraries' BLAS threads stop "
          f"spinning and one untimed call), after 3 untimed warm-up calls; first calls are excluded (next table). "
          f"`peer/compiled` above 1 means the compiled step is faster than that peer (`generic` is jitnn's own "
          f"generic path); `compiled/floor` is the compiled step's time as a multiple "
          f"of the step's 8 matrix products alone through NumPy's BLAS (preallocated outputs), so 1 would be pure "
          f"BLAS time. {'Quick run: short and noisy. ' if args.quick else ''}")
    print()
    verdicts = targets_report(args.batch_sizes, median)
    if verdicts:
        print("Targets for the compiled step, in this run:")
        print()
        for line in verdicts:
            print(f"- {line}")
        print()

    if any(value is not None for value in faults.values()):
        print("### Page faults per step")
        print()
        headers = ["batch"] + [LABELS[name] for name in IMPLEMENTATIONS]
        rows = [[str(batch)] + [f"{faults[batch, name]:.1f}" if faults.get((batch, name)) is not None else "n/a"
                                for name in IMPLEMENTATIONS] for batch in args.batch_sizes]
        print(markdown_table(headers, rows))
        print()
        print("Minor page faults of the process per step, averaged over 10 untimed steps after the timing: "
              "0 means every array a step allocates reuses memory that earlier steps freed.")
        print()

    print("### First call (compile), milliseconds")
    print()
    headers = ["batch"] + [LABELS[name] for name in IMPLEMENTATIONS]
    rows = [[str(batch)] + [milliseconds(first_calls.get((batch, name))) for name in IMPLEMENTATIONS]
            for batch in args.batch_sizes]
    print(markdown_table(headers, rows))
    print()
    notes = ["Each implementation's first step from a fresh state, timed alone."]
    if jn is not None:
        where = ("a new, empty Numba cache folder (--cold-cache)" if cold_cache is not None
                 else f"NUMBA_CACHE_DIR={os.environ['NUMBA_CACHE_DIR']}" if os.environ.get("NUMBA_CACHE_DIR")
                 else "Numba's default cache folders (next to the sources)")
        final_counts = kernel_cache_counts()
        counts = (f"{cache_counts[0]} kernel signatures loaded from the on-disk cache and {cache_counts[1]} compiled"
                  if cache_counts else "cache use unknown")
        if cache_counts and final_counts and final_counts != cache_counts:
            counts += (f" (and {final_counts[0] - cache_counts[0]} loaded, {final_counts[1] - cache_counts[1]} compiled "
                       f"at later batch sizes)")
        notes.append(f"jitnn compiles its kernels once per dtype and layout, at the first batch size: {counts}, "
                     f"using {where}. The compiled step's first call also generates its function and compiles it (or "
                     f"loads it from the same cache) once per per-example input shape, so at the first batch size only; "
                     f"`benchmarks/compile_time.py` times a fresh process.")
    if "jax" in modules:
        notes.append("JAX traces and compiles once per input shape, so at every batch size.")
    if import_seconds:
        notes.append("Import times: " + ", ".join(f"{LABELS[name]} {milliseconds(seconds)} ms"
                                                 for name, seconds in import_seconds.items()) + ".")
    for name, error in missing.items():
        notes.append(f"{LABELS[name]} is not installed (install {INSTALL_HINTS.get(name, name)} to compare): {error}.")
    print(" ".join(notes))
    print()
    if reference is not None and len(losses) > 1:
        print(f"Check before timing, at every batch size: each implementation's first step, from identical weights "
              f"and data, matches {LABELS[reference]}'s (loss to a relative {LOSS_RTOL:g}, largest loss difference "
              f"{worst_loss_difference:.1e}; every parameter's update to {UPDATE_RTOL:g} of its largest element, "
              f"largest difference {worst_update_difference:.1e}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
