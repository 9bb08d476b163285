"""MNIST-1D's four reference models, trained as in the paper, beside the paper's test accuracies.

    python examples/mnist1d.py [--steps 6000] [--models logistic,mlp,cnn,gru] [--seeds 3]

MNIST-1D (Greydanus, "Scaling down deep learning", 2020) draws 4,000 training and 1,000
test series of length 40 from ten one-dimensional digit templates, with shifts, scaling,
shear, correlated noise and padding. The data is generated here, offline, by the PyPI
package ``mnist1d`` (the ``examples`` extra): ``make_dataset(get_dataset_args())``, the
paper's default arguments and seed.

The models and training are the paper's reference ones (``mnist1d/models.py``,
``mnist1d/train.py``): Adam with learning rate 1e-2, batches of 100 taken in order
(``x[(step * 100) % 4000:][:100]``), 6,000 steps, softmax cross-entropy, test accuracy at
the end. Each model is trained from ``--seeds`` initializations (seeds 0, 1, ...) and the
table gives their mean test accuracy and its range: one run's accuracy moves by about a
percentage point from one initialization to the next (the CNN's from 0.916 to 0.939 over
seeds 0 to 5). The CNN is written with ``Conv1D`` and the GRU is bidirectional, as PyTorch's
``nn.GRU(1, 6, bidirectional=True, batch_first=True)``, every step's output flattened into
``Dense(480, 10)``. Every layer starts from PyTorch's default initialization, as the paper's
did (the GRU's is jitnn's default too). Each model trains through one compiled step
(``jn.compile_step``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import jitnn as jn

#: The paper's test accuracies (its Table 1 and repository README).
PAPER = {"logistic": 0.32, "mlp": 0.68, "cnn": 0.94, "gru": 0.91}


def load_mnist1d() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train (4000, 40), y_train, x_test (1000, 40), y_test)``, float32 series and int64 labels."""
    here = Path(__file__).resolve().parent
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]  # this file is named mnist1d.py too
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise SystemExit("examples/mnist1d.py needs the mnist1d package: pip install 'jitnn[examples]'") from error
    finally:
        sys.path[:] = saved
    data = make_dataset(get_dataset_args())
    as_series = lambda x: np.asarray(x, np.float32)
    return as_series(data["x"]), np.asarray(data["y"], np.int64), as_series(data["x_test"]), np.asarray(data["y_test"], np.int64)


# --------------------------------------------------------------------------- the models
def pytorch_default(fan_in: int) -> jn.init.Initializer:
    """PyTorch's default initialization of ``nn.Linear`` and ``nn.Conv1d``, weights and biases
    alike: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, as the paper's models were initialized."""
    bound = 1.0 / np.sqrt(fan_in)
    return lambda key, shape, dtype=np.float32: jn.random.uniform(key, shape, -bound, bound, dtype)


def dense(key: jn.random.Key, n_in: int, n_out: int) -> jn.Dense:
    return jn.Dense.init(key, n_in, n_out, weight_init=pytorch_default(n_in), bias_init=pytorch_default(n_in))


def conv1d(key: jn.random.Key, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int) -> jn.Conv1D:
    init = pytorch_default(in_channels * kernel_size)
    return jn.Conv1D.init(key, in_channels, out_channels, kernel_size, stride, padding, weight_init=init, bias_init=init)


def logistic(key: jn.random.Key) -> tuple[jn.Layer, Callable[[np.ndarray], np.ndarray]]:
    return dense(key, 40, 10), lambda x: x


def mlp(key: jn.random.Key) -> tuple[jn.Layer, Callable[[np.ndarray], np.ndarray]]:
    """40-100-100-10 with ReLU and a residual around the second layer: h = h + relu(W2 h)."""
    k1, k2, k3 = jn.random.split(key, 3)
    model = jn.pipe(
        dense(k1, 40, 100), jn.ReLU(),
        jn.Residual(jn.pipe(dense(k2, 100, 100), jn.ReLU())),
        dense(k3, 100, 10),
    )
    return model, lambda x: x


def cnn(key: jn.random.Key) -> tuple[jn.Layer, Callable[[np.ndarray], np.ndarray]]:
    """Three 1-D convolutions (1 -> 25, kernel 5, stride 2, padding 1; then 25 -> 25, kernel 3,
    stride 2, padding 1, twice) with ReLU: 40 -> 19 -> 10 -> 5 steps; then Dense(125, 10)."""
    k1, k2, k3, k4 = jn.random.split(key, 4)
    model = jn.pipe(
        conv1d(k1, 1, 25, 5, stride=2, padding=1), jn.ReLU(),
        conv1d(k2, 25, 25, 3, stride=2, padding=1), jn.ReLU(),
        conv1d(k3, 25, 25, 3, stride=2, padding=1), jn.ReLU(),
        jn.Flatten(),
        dense(k4, 125, 10),
    )
    return model, lambda x: x.reshape(len(x), 1, 40)  # (n, channels, length)


def gru(key: jn.random.Key) -> tuple[jn.Layer, Callable[[np.ndarray], np.ndarray]]:
    """A bidirectional GRU, hidden size 6, over the 40 steps of one feature; every step's
    output (n, 40, 12) flattened into Dense(480, 10)."""
    k1, k2 = jn.random.split(key)
    model = jn.pipe(jn.GRU.init(k1, 1, 6, bidirectional=True), jn.Flatten(), dense(k2, 480, 10))
    return model, lambda x: x.reshape(len(x), 40, 1)  # (n, steps, features)


MODELS = {"logistic": logistic, "mlp": mlp, "cnn": cnn, "gru": gru}


# --------------------------------------------------------------------------- training
def train(name: str, data: tuple[np.ndarray, ...], steps: int, seed: int, batch_size: int = 100) -> dict:
    """Train one model as the paper does; its test accuracy and timings."""
    x_train, y_train, x_test, y_test = data
    model, shape = MODELS[name](jn.random.key(seed))
    X_train, X_test = shape(x_train), shape(x_test)
    loss, optimizer = jn.SoftmaxCrossEntropy(), jn.optim.adam(1e-2)
    step = jn.compile_step(model, loss, optimizer)
    state = optimizer.init(model)
    started = time.perf_counter()
    model, state, _ = step(model, state, X_train[:batch_size], y_train[:batch_size])  # compiles (or loads the cache)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(1, steps):
        start = (i * batch_size) % len(X_train)
        model, state, value = step(model, state, X_train[start : start + batch_size], y_train[start : start + batch_size])
    rest = time.perf_counter() - started
    accuracy = jn.accuracy(model.forward(X_test), y_test)
    return {"name": name, "accuracy": accuracy, "first": first, "per_step": rest / max(steps - 1, 1), "loss": value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--models", default=",".join(MODELS), help="a comma-separated subset of " + ", ".join(MODELS))
    parser.add_argument("--seeds", type=int, default=3, help="initializations per model (seeds 0, 1, ...)")
    args = parser.parse_args()
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown or not names:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    if args.steps < 1 or args.seeds < 1:
        parser.error("--steps and --seeds must be positive")

    data = load_mnist1d()
    print(f"MNIST-1D: {len(data[0])} training and {len(data[2])} test series of length {data[0].shape[1]}; "
          f"Adam 1e-2, batch 100 in order, {args.steps} steps; {args.seeds} initialization(s) per model")
    print(f"{'model':<10} {'test accuracy':>13} {'range':>13} {'paper':>6} {'first step':>11} {'per step':>9}")
    lines = []
    for name in names:
        runs = [train(name, data, args.steps, seed) for seed in range(args.seeds)]
        accuracies = [r["accuracy"] for r in runs]
        mean = float(np.mean(accuracies))
        spread = f"{min(accuracies):.3f}-{max(accuracies):.3f}"
        per_step = float(np.median([r["per_step"] for r in runs]))
        print(f"{name:<10} {mean:>13.3f} {spread:>13} {PAPER[name]:>6.2f} {runs[0]['first']:>10.2f}s {1e3 * per_step:>7.3f}ms", flush=True)
        lines.append(f"{name} test accuracy {mean:.4f}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
