"""A small decoder-only transformer, trained as a character-level language model on Python's own source.

    python examples/char_transformer.py [--steps 1500] [--dim 64] [--blocks 2] [--heads 4]
                                        [--context 64] [--batch-size 32] [--seed 0]

The text is the source of a fixed list of standard-library modules, which every Python
installation ships: nothing is downloaded. Characters outside printable ASCII (and tab and
newline) become one placeholder. The last tenth of the text is held out.

The model: ``Embedding`` of the characters plus a learned ``PositionalEmbedding``, then pre-norm
blocks ``X + MultiHeadAttention(LayerNorm(X))`` (causal) and ``X + MLP(LayerNorm(X))`` with a
GELU MLP four times as wide, a final ``LayerNorm`` and ``Dense`` to the vocabulary. Every
position predicts the next character (softmax cross-entropy over ``(n, T, vocab)`` scores);
training runs through one compiled step (AdamW with a warm-up cosine schedule). The script
prints the training and held-out loss as it goes (in nats per character; a uniform guess
costs ``log(vocab)``) and a sampled continuation of a prompt at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time

import numpy as np

import jitnn as jn

#: The modules whose source is the corpus (about 600 KB; all pure Python in CPython).
MODULES = ("argparse", "textwrap", "dataclasses", "functools", "inspect", "typing", "enum", "pathlib", "fractions", "statistics")
PLACEHOLDER = "~"
ALPHABET = "\n\t" + "".join(chr(c) for c in range(32, 127))


def load_corpus() -> str:
    """The concatenated source of :data:`MODULES`, with characters outside ``ALPHABET`` replaced."""
    parts = []
    for name in MODULES:
        spec = importlib.util.find_spec(name)
        origin = getattr(spec, "origin", None) if spec is not None else None
        if origin and origin.endswith(".py"):
            with open(origin, encoding="utf-8") as file:
                parts.append(file.read())
    if not parts:
        raise SystemExit("examples/char_transformer.py: found none of the standard library's sources")
    allowed = set(ALPHABET)
    return "".join(c if c in allowed else PLACEHOLDER for c in "\n".join(parts))


def encode(text: str) -> np.ndarray:
    table = {c: i for i, c in enumerate(ALPHABET)}
    return np.array([table[c] for c in text], np.int64)


def decode(indices: np.ndarray) -> str:
    return "".join(ALPHABET[i] for i in indices)


def build(key: jn.random.Key, vocab: int, dim: int, blocks: int, heads: int, context: int) -> jn.Layer:
    keys = jn.random.split(key, 3 + 3 * blocks)
    layers: list[jn.Layer] = [jn.Embedding.init(keys[0], vocab, dim), jn.PositionalEmbedding.init(keys[1], context, dim)]
    for b in range(blocks):
        k_attention, k_up, k_down = keys[3 + 3 * b : 6 + 3 * b]
        layers.append(jn.Residual(jn.pipe(jn.LayerNorm.init(None, dim), jn.MultiHeadAttention.init(k_attention, dim, heads, causal=True))))
        layers.append(jn.Residual(jn.pipe(
            jn.LayerNorm.init(None, dim), jn.Dense.init(k_up, dim, 4 * dim), jn.GELU(), jn.Dense.init(k_down, 4 * dim, dim),
        )))
    layers += [jn.LayerNorm.init(None, dim), jn.Dense.init(keys[2], dim, vocab)]
    return jn.pipe(*layers)


def windows(data: np.ndarray, starts: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``(n, context)`` and next-character targets ``(n, context)`` at ``starts``."""
    offsets = starts[:, None] + np.arange(context)[None, :]
    return data[offsets], data[offsets + 1]


def held_out_loss(model: jn.Layer, loss: jn.Loss, data: np.ndarray, context: int, count: int = 64) -> float:
    starts = np.linspace(0, len(data) - context - 2, count).astype(np.int64)
    X, T = windows(data, starts, context)
    return float(loss.value(model.forward(X), T))


def sample(model: jn.Layer, prompt: str, length: int, context: int, rng: np.random.Generator, temperature: float = 0.8) -> str:
    """``length`` characters after ``prompt``, each drawn from the model's softmax at ``temperature``."""
    indices = list(encode(prompt))
    for _ in range(length):
        window = np.array([indices[-context:]], np.int64)
        scores = np.asarray(model.forward(window)[0, -1], np.float64) / temperature
        p = np.exp(scores - scores.max())
        indices.append(int(rng.choice(len(p), p=p / p.sum())))
    return decode(np.array(indices[len(prompt):]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sample", type=int, default=300, help="characters to sample at the end")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if min(args.steps, args.dim, args.blocks, args.heads, args.context, args.batch_size) < 1:
        parser.error("every size must be positive")

    text = load_corpus()
    data = encode(text)
    split = int(0.9 * len(data))
    train, held_out = data[:split], data[split:]
    vocab = len(ALPHABET)
    init_key, _ = jn.random.split(jn.random.key(args.seed))
    model = build(init_key, vocab, args.dim, args.blocks, args.heads, args.context)
    n_params = sum(leaf.size for leaf in jn.tree.leaves(model))
    print(f"corpus: {len(text):,} characters of {len(MODULES)} standard-library modules, vocabulary {vocab}; "
          f"model: {args.blocks} blocks, dim {args.dim}, {args.heads} heads, context {args.context}, {n_params:,} parameters")
    print(f"a uniform guess costs log({vocab}) = {math.log(vocab):.3f} nats per character")

    loss = jn.SoftmaxCrossEntropy()
    warmup = min(100, args.steps // 10 + 1)
    schedule = jn.optim.warmup_cosine_decay(3e-3, warmup_steps=warmup, decay_steps=max(args.steps, warmup + 1), end_value=3e-4)
    optimizer = jn.optim.adamw(schedule, weight_decay=0.01)
    step = jn.compile_step(model, loss, optimizer)
    state = optimizer.init(model)
    rng = np.random.default_rng(args.seed)
    print(f"step {0:>5}  held-out loss {held_out_loss(model, loss, held_out, args.context):.3f}")
    every = max(args.steps // 10, 1)
    started = time.perf_counter()
    running = []
    for i in range(1, args.steps + 1):
        starts = rng.integers(0, len(train) - args.context - 1, size=args.batch_size)
        X, T = windows(train, starts, args.context)
        model, state, value = step(model, state, X, T)
        running.append(value)
        if i % every == 0 or i == args.steps:
            print(f"step {i:>5}  training loss {np.mean(running):.3f}  held-out loss "
                  f"{held_out_loss(model, loss, held_out, args.context):.3f}  ({time.perf_counter() - started:.0f} s)", flush=True)
            running = []
    final = held_out_loss(model, loss, held_out, args.context)
    print(f"final held-out loss {final:.4f}")
    prompt = "def "
    print(f"sample after {prompt!r}:\n{prompt}{sample(model, prompt, args.sample, args.context, rng)}")


if __name__ == "__main__":
    main()
