#!/usr/bin/env python
"""Benchmark: training steps of sequence models, jitnn's compiled step against PyTorch eager.

Three workloads, float32, Adam (learning rate 1e-2):

* ``gru``: the MNIST-1D GRU (``examples/mnist1d.py``): a bidirectional GRU, input size 1,
  hidden size 6, over 40 steps, every step's output ``(n, 40, 12)`` flattened into
  ``Dense(480, 10)``; softmax cross-entropy; batch 100;
* ``cnn``: the MNIST-1D CNN: ``Conv1D(1 -> 25, k5, s2, p1)``, ReLU, ``Conv1D(25 -> 25, k3, s2,
  p1)``, ReLU, the same again, ReLU, ``Flatten``, ``Dense(125, 10)``; softmax cross-entropy;
  batch 100;
* ``block``: one pre-norm transformer block on ``(32, 64, 64)``:
  ``X + MHA(LayerNorm(X))`` with causal 4-head attention, then ``H + MLP(LayerNorm(H))``
  with ``Dense(64 -> 256), GELU, Dense(256 -> 64)``; mean squared error to a random target.

One step is the forward pass, the loss, the backward pass and Adam's update:

* ``jitnn``: ``step = jn.compile_step(model, loss, jn.optim.adam(1e-2))``, called as
  ``model, state, value = step(model, state, X, T)`` (what ``jn.fit`` runs);
* ``torch``: PyTorch eager, the same modules (``nn.GRU(batch_first=True, bidirectional=True)``,
  ``nn.Conv1d``, ``nn.MultiheadAttention(batch_first=True)`` with a boolean causal mask and
  ``need_weights=False``, ``nn.LayerNorm``, ``nn.Linear``, exact ``nn.GELU``) with
  ``torch.optim.Adam``: ``zero_grad(set_to_none=True)``, ``backward``, ``step``; at
  ``--torch-threads`` threads (default: jitnn's BLAS thread count, shown in the header).

* ``jax``: the same model as a pure function under one ``jax.jit`` with ``jax.value_and_grad``
  and Adam's update written out (``lax.scan`` for the GRU, ``lax.conv_general_dilated`` for
  the CNN), at JAX's default threads.

PyTorch and JAX are optional: without one, its columns read ``n/a``.

Both start from jitnn's initial weights, copied into PyTorch's modules, and see the same
batch. Before timing, the first step of each is compared: the two losses must agree to
``TOLERANCE`` (relative), otherwise the script stops with exit code 1. The first call of each
is timed alone ("first step": Numba compilation or on-disk cache load for jitnn, lazy set-up
for PyTorch) and never counted in the step times, which are medians of single-call
wall-clock times taken in rounds in which the two take turns, each turn after a short pause
so that the other library's BLAS threads go idle first.

The aims, printed as a verdict: the GRU step at least 5x faster than PyTorch's, the
CNN's at least 2x.

Usage::

    NUMBA_CACHE_DIR=.numba_cache python benchmarks/sequence_step.py        # full run
    python benchmarks/sequence_step.py --quick --workloads gru,cnn
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

import numpy as np

from _common import (
    TimingDefaults,
    add_timing_arguments,
    describe_machine,
    first_call,
    import_timed,
    load_average,
    markdown_table,
    measure_interleaved,
    milliseconds,
    numba_cache_location,
    ratio,
    resolve_timing,
    run_with_cache_choice,
    stderr,
    thread_settings,
)

WORKLOADS = ("gru", "cnn", "block")
#: The aims: PyTorch's step time over jitnn's, at least.
AIMS = {"gru": 5.0, "cnn": 2.0}
#: How closely the first step's losses must agree, relative: float32 sums of a few thousand
#: terms (u = 6e-8 each), with BLAS and PyTorch summing in other orders, stay far below this.
TOLERANCE = 1e-4
TIMING = TimingDefaults(seconds=3.0, min_repeats=50, rounds=6, quick_seconds=0.3)


def _workloads(text: str) -> tuple[str, ...]:
    names = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in WORKLOADS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"choose from {','.join(WORKLOADS)}; got {text!r}")
    return tuple(name for name in WORKLOADS if name in names)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", type=_workloads, default=WORKLOADS, metavar="NAME,...",
                        help=f"workloads to run, from {','.join(WORKLOADS)} (default: all)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="PyTorch's intra-op threads (default: jitnn's BLAS thread count)")
    add_timing_arguments(parser, TIMING, "seed for the weights and the data")
    args = parser.parse_args(argv)
    resolve_timing(parser, args, TIMING)
    return args


# --------------------------------------------------------------------------- the models
def build(jn: Any, name: str, seed: int) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    """``(model, loss, X, T)`` for a workload, from ``seed``."""
    key = jn.random.key(seed)
    rng = np.random.default_rng(seed)
    k = jn.random.split(key, 8)
    if name == "gru":
        model = jn.pipe(jn.GRU.init(k[0], 1, 6, bidirectional=True), jn.Flatten(), jn.Dense.init(k[1], 480, 10))
        X = rng.normal(size=(100, 40, 1)).astype(np.float32)
        return model, jn.SoftmaxCrossEntropy(), X, rng.integers(0, 10, size=100)
    if name == "cnn":
        model = jn.pipe(
            jn.Conv1D.init(k[0], 1, 25, 5, stride=2, padding=1), jn.ReLU(),
            jn.Conv1D.init(k[1], 25, 25, 3, stride=2, padding=1), jn.ReLU(),
            jn.Conv1D.init(k[2], 25, 25, 3, stride=2, padding=1), jn.ReLU(),
            jn.Flatten(), jn.Dense.init(k[3], 125, 10),
        )
        X = rng.normal(size=(100, 1, 40)).astype(np.float32)
        return model, jn.SoftmaxCrossEntropy(), X, rng.integers(0, 10, size=100)
    dim = 64
    model = jn.pipe(
        jn.Residual(jn.pipe(jn.LayerNorm.init(None, dim), jn.MultiHeadAttention.init(k[0], dim, 4, causal=True))),
        jn.Residual(jn.pipe(jn.LayerNorm.init(None, dim), jn.Dense.init(k[1], dim, 4 * dim), jn.GELU(), jn.Dense.init(k[2], 4 * dim, dim))),
    )
    X = rng.normal(size=(32, 64, dim)).astype(np.float32)
    return model, jn.MeanSquaredError(), X, rng.normal(size=X.shape).astype(np.float32)


def torch_model(torch: Any, name: str, model: Any) -> Any:
    """PyTorch's modules holding jitnn's initial weights."""
    nn = torch.nn
    t = lambda a: torch.tensor(np.array(a))

    def linear(dense: Any) -> Any:
        module = nn.Linear(dense.n_in, dense.n_out)
        module.weight.data, module.bias.data = t(dense.W.T), t(dense.b)
        return module

    if name == "gru":
        bi, dense = model.layers[0], model.layers[2]
        gru = nn.GRU(1, 6, batch_first=True, bidirectional=True)
        for suffix in ("", "_reverse"):
            for field in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(gru, f"{field}_l0{suffix}").data = t(getattr(bi, field + suffix))
        head = linear(dense)

        class GRUNet(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.gru, self.head = gru, head

            def forward(self, x: Any) -> Any:
                return self.head(self.gru(x)[0].reshape(len(x), -1))

        return GRUNet()
    if name == "cnn":
        layers = []
        for layer in model.layers:
            if type(layer).__name__ == "Conv1D":
                conv = nn.Conv1d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride, padding=layer.padding)
                conv.weight.data, conv.bias.data = t(layer.W), t(layer.b)
                layers.append(conv)
            elif type(layer).__name__ == "ReLU":
                layers.append(nn.ReLU())
            elif type(layer).__name__ == "Flatten":
                layers.append(nn.Flatten())
            else:
                layers.append(linear(layer))
        return nn.Sequential(*layers)
    attention_block, mlp_block = model.layers[0].inner, model.layers[1].inner
    norm1, mha = attention_block.layers
    norm2, up, _, down = mlp_block.layers
    dim = mha.dim

    def layer_norm(layer: Any) -> Any:
        module = nn.LayerNorm(dim, eps=layer.eps)
        module.weight.data, module.bias.data = t(layer.scale), t(layer.shift)
        return module

    attention = nn.MultiheadAttention(dim, mha.num_heads, batch_first=True)
    for field in ("in_proj_weight", "in_proj_bias"):
        getattr(attention, field).data = t(getattr(mha, field))
    attention.out_proj.weight.data, attention.out_proj.bias.data = t(mha.out_proj_weight), t(mha.out_proj_bias)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.attention, self.norm2 = layer_norm(norm1), attention, layer_norm(norm2)
            self.mlp = nn.Sequential(linear(up), nn.GELU(), linear(down))

        def forward(self, x: Any) -> Any:
            steps = x.shape[1]
            mask = torch.triu(torch.ones(steps, steps, dtype=torch.bool), diagonal=1)
            h = self.norm1(x)
            x = x + self.attention(h, h, h, attn_mask=mask, need_weights=False)[0]
            return x + self.mlp(self.norm2(x))

    return Block()


# --------------------------------------------------------------------------- the steps
def jitnn_step(jn: Any, model: Any, loss: Any, X: np.ndarray, T: np.ndarray) -> Callable[[], float]:
    optimizer = jn.optim.adam(1e-2)
    step = jn.compile_step(model, loss, optimizer)
    state = {"model": model, "opt": optimizer.init(model)}

    def run() -> float:
        state["model"], state["opt"], value = step(state["model"], state["opt"], X, T)
        return value

    return run


def torch_step(torch: Any, net: Any, name: str, X: np.ndarray, T: np.ndarray) -> Callable[[], float]:
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.from_numpy(X)
    if name == "block":
        target, criterion = torch.from_numpy(T), torch.nn.MSELoss()
    else:
        target, criterion = torch.from_numpy(np.asarray(T, np.int64)), torch.nn.CrossEntropyLoss()

    def run() -> float:
        optimizer.zero_grad(set_to_none=True)
        value = criterion(net(x), target)
        value.backward()
        optimizer.step()
        return value.item()

    return run


def jax_step(jax: Any, name: str, model: Any, X: np.ndarray, T: np.ndarray) -> Callable[[], float]:
    """The same step in JAX: the model as a pure function of jitnn's initial weights, the
    loss, ``jax.grad`` and Adam written out (Optax's ``adam`` update rule), all under one
    ``jax.jit``."""
    jnp, lax = jax.numpy, jax.lax

    def dense(p: Any, x: Any) -> Any:
        return x @ p["W"] + p["b"]

    if name == "gru":
        bi, head = model.layers[0], model.layers[2]
        fields = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        params = {"forward": {f: jnp.asarray(getattr(bi, f)) for f in fields},
                  "reverse": {f: jnp.asarray(getattr(bi, f + "_reverse")) for f in fields},
                  "head": {"W": jnp.asarray(head.W), "b": jnp.asarray(head.b)}}

        def direction(p: Any, x: Any, reverse: bool) -> Any:
            hidden = p["weight_hh"].shape[1]
            gi = jnp.swapaxes(x @ p["weight_ih"].T + p["bias_ih"], 0, 1)  # (T, n, 3H)

            def cell(h: Any, g: Any) -> Any:
                gh = h @ p["weight_hh"].T + p["bias_hh"]
                r = jax.nn.sigmoid(g[:, :hidden] + gh[:, :hidden])
                z = jax.nn.sigmoid(g[:, hidden:2 * hidden] + gh[:, hidden:2 * hidden])
                n_ = jnp.tanh(g[:, 2 * hidden:] + r * gh[:, 2 * hidden:])
                h = (1 - z) * n_ + z * h
                return h, h

            _, states = lax.scan(cell, jnp.zeros((x.shape[0], hidden), x.dtype), gi, reverse=reverse)
            return jnp.swapaxes(states, 0, 1)

        def apply(p: Any, x: Any) -> Any:
            out = jnp.concatenate([direction(p["forward"], x, False), direction(p["reverse"], x, True)], axis=-1)
            return dense(p["head"], out.reshape(x.shape[0], -1))
    elif name == "cnn":
        convs = [layer for layer in model.layers if type(layer).__name__ == "Conv1D"]
        params = {"convs": [{"W": jnp.asarray(c.W), "b": jnp.asarray(c.b)} for c in convs],
                  "head": {"W": jnp.asarray(model.layers[-1].W), "b": jnp.asarray(model.layers[-1].b)}}
        geometry = [(c.stride, c.padding) for c in convs]

        def apply(p: Any, x: Any) -> Any:
            for q, (stride, padding) in zip(p["convs"], geometry):
                x = lax.conv_general_dilated(x, q["W"], (stride,), [(padding, padding)], dimension_numbers=("NCH", "OIH", "NCH"))
                x = jax.nn.relu(x + q["b"][None, :, None])
            return dense(p["head"], x.reshape(x.shape[0], -1))
    else:
        attention_block, mlp_block = model.layers[0].inner, model.layers[1].inner
        norm1, mha = attention_block.layers
        norm2, up, _, down = mlp_block.layers
        heads, eps = mha.num_heads, norm1.eps
        arrays = lambda layer, names: {f: jnp.asarray(getattr(layer, f)) for f in names}
        params = {"norm1": arrays(norm1, ("scale", "shift")), "norm2": arrays(norm2, ("scale", "shift")),
                  "mha": arrays(mha, ("in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias")),
                  "up": arrays(up, ("W", "b")), "down": arrays(down, ("W", "b"))}

        def layer_norm(p: Any, x: Any) -> Any:
            mean = x.mean(-1, keepdims=True)
            var = ((x - mean) ** 2).mean(-1, keepdims=True)
            return (x - mean) / jnp.sqrt(var + eps) * p["scale"] + p["shift"]

        def attention(p: Any, x: Any) -> Any:
            n, steps, dim = x.shape
            qkv = x @ p["in_proj_weight"].T + p["in_proj_bias"]
            split = lambda a: a.reshape(n, steps, heads, dim // heads).transpose(0, 2, 1, 3)
            q, k, v = (split(a) for a in jnp.split(qkv, 3, axis=-1))
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dim // heads)
            scores = jnp.where(jnp.tril(jnp.ones((steps, steps), bool)), scores, -jnp.inf)
            context = (jax.nn.softmax(scores, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(n, steps, dim)
            return context @ p["out_proj_weight"].T + p["out_proj_bias"]

        def apply(p: Any, x: Any) -> Any:
            x = x + attention(p["mha"], layer_norm(p["norm1"], x))
            return x + dense(p["down"], jax.nn.gelu(dense(p["up"], layer_norm(p["norm2"], x)), approximate=False))

    if name == "block":
        loss = lambda p, x, t: jnp.mean((apply(p, x) - t) ** 2)
    else:
        loss = lambda p, x, t: -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(apply(p, x)), t[:, None], axis=1))
    b1, b2, lr, eps_adam = 0.9, 0.999, 1e-2, 1e-8

    @jax.jit
    def step(p: Any, m: Any, v: Any, count: Any, x: Any, t: Any) -> Any:
        value, g = jax.value_and_grad(loss)(p, x, t)
        count = count + 1
        m = jax.tree_util.tree_map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
        v = jax.tree_util.tree_map(lambda v_, g_: b2 * v_ + (1 - b2) * g_ * g_, v, g)
        hat = lambda a, b: a / (1 - b ** count)
        p = jax.tree_util.tree_map(lambda p_, m_, v_: p_ - lr * hat(m_, b1) / (jnp.sqrt(hat(v_, b2)) + eps_adam), p, m, v)
        return p, m, v, count, value

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    state = {"p": params, "m": zeros, "v": zeros, "count": jnp.zeros((), jnp.float32)}
    x, t = jnp.asarray(X), jnp.asarray(T if name == "block" else np.asarray(T, np.int32))

    def run() -> float:
        state["p"], state["m"], state["v"], state["count"], value = step(state["p"], state["m"], state["v"], state["count"], x, t)
        return float(value)  # waits for the result

    return run


# --------------------------------------------------------------------------- the run
def run(args: argparse.Namespace, cold_cache: str | None) -> int:
    import jitnn as jn

    torch, _, torch_error = import_timed("torch")
    jax, _, jax_error = import_timed("jax")
    from jitnn import _blas

    threads = _blas.auto_threads(100)  # what the compiled step uses at these batch sizes
    if torch is not None:
        torch.set_num_threads(args.torch_threads or threads)
    rows, verdicts, failed = [], [], False
    for name in args.workloads:
        stderr(f"{name}: building")
        model, loss, X, T = build(jn, name, args.seed)
        steps = {"jitnn": jitnn_step(jn, model, loss, X, T)}
        if torch is not None:
            steps["torch"] = torch_step(torch, torch_model(torch, name, model), name, X, T)
        if jax is not None:
            steps["jax"] = jax_step(jax, name, model, X, T)
        firsts, values = {}, {}
        for impl, step in steps.items():
            firsts[impl], values[impl] = first_call(step)
        for impl in values:
            difference = abs(values[impl] - values["jitnn"]) / max(abs(values["jitnn"]), 1e-30)
            if difference > TOLERANCE:
                stderr(f"{name}: the first step's losses differ: jitnn {values['jitnn']!r}, {impl} {values[impl]!r}")
                failed = True
        stderr(f"{name}: timing")
        samples = measure_interleaved(steps, args.budget, pause=args.pause)
        median = {impl: s.median for impl, s in samples.items()}
        speedup = median["torch"] / median["jitnn"] if "torch" in median else None
        rows.append([
            name, milliseconds(firsts["jitnn"]), milliseconds(median["jitnn"]),
            milliseconds(firsts.get("torch")), milliseconds(median.get("torch")),
            ratio(median.get("torch"), median["jitnn"]),
            milliseconds(firsts.get("jax")), milliseconds(median.get("jax")),
            ratio(median.get("jax"), median["jitnn"]),
        ])
        if name in AIMS and speedup is not None:
            met = "met" if speedup >= AIMS[name] else "**not met**"
            verdicts.append(f"- {name}: jitnn {speedup:.2f}x faster than PyTorch; aim at least {AIMS[name]:g}x: {met}")
    print("# Sequence models: one training step (Adam), jitnn's compiled step against PyTorch eager\n")
    for line in describe_machine(["numpy", "numba", "torch", "jax"]):
        print(line + "  ")
    load = load_average()
    print(f"jitnn BLAS threads {threads}; PyTorch threads {torch.get_num_threads() if torch is not None else 'n/a'}; "
          f"{thread_settings()}; {numba_cache_location(cold_cache)}; load average {load if load is not None else 'n/a'}"
          + (f"; PyTorch not available ({torch_error})" if torch is None else "")
          + (f"; JAX not available ({jax_error})" if jax is None else "") + "\n")
    print(markdown_table(["workload", "jitnn first step", "jitnn step", "PyTorch first step", "PyTorch step", "PyTorch / jitnn",
                          "JAX first step", "JAX step", "JAX / jitnn"], rows))
    if verdicts:
        print("\n" + "\n".join(verdicts))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return run_with_cache_choice(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
