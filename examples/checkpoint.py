"""Train on the digits, save a checkpoint, reload it in a new process and evaluate it there.

    python examples/checkpoint.py [--epochs 20] [--folder checkpoints] [--seed 0]

The training run keeps the loss and the test accuracy of every epoch, saves the model and
the optimizer state with ``jn.save`` (one ``.npz`` each, keys are the records' field paths)
and writes the curves to ``curves.png`` when matplotlib is installed. Then a NEW Python
process (this script again, with ``--evaluate``) builds a model of the same architecture,
fills it with ``jn.load(path, like=model)``, which checks every name, shape and dtype, and
prints its test accuracy: the same number, since the round trip is exact.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

import jitnn as jn


def build_model(key: jn.random.Key) -> jn.Chain:
    """The architecture; the evaluating process builds it again to load into."""
    k1, k2 = jn.random.split(key)
    return jn.pipe(jn.Dense.init(k1, 64, 128, weight_init=jn.init.he_normal), jn.ReLU(), jn.Dropout(0.1), jn.Dense.init(k2, 128, 10))


def split_digits(seed: int, test_fraction: float = 0.25) -> tuple[np.ndarray, ...]:
    """The digits in [0, 1], split into train and test sets by a seeded permutation."""
    X, T = jn.datasets.load_digits()
    order = jn.random.permutation(jn.random.key(seed), len(X))
    n_test = int(len(X) * test_fraction)
    return X[order[n_test:]], T[order[n_test:]], X[order[:n_test]], T[order[:n_test]]


def train(args: argparse.Namespace) -> None:
    X_train, T_train, X_test, T_test = split_digits(args.seed)
    init_key, train_key = jn.random.split(jn.random.key(args.seed))
    model, optimizer = build_model(init_key), jn.optim.adam(1e-3)
    accuracies: list[float] = []
    result = jn.fit(
        model, jn.SoftmaxCrossEntropy(), optimizer, X_train, T_train, key=train_key, epochs=args.epochs,
        callback=lambda epoch, model, loss: accuracies.append(jn.metrics.accuracy(model.forward(X_test), T_test)),
    )
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    jn.save(folder / "model.npz", result.model)
    jn.save(folder / "state.npz", result.state)
    print(f"trained {args.epochs} epochs: final loss {result.history[-1]:.4f}, test accuracy {accuracies[-1]:.4f}")
    print(f"saved {folder / 'model.npz'} and {folder / 'state.npz'}")
    plot(result.history, accuracies, folder / "curves.png")

    evaluated = subprocess.run(
        [sys.executable, __file__, "--evaluate", "--folder", str(folder), "--seed", str(args.seed)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    print(f"a new process: {evaluated}")
    reloaded = float(evaluated.rsplit(" ", 1)[-1])
    print("the reloaded model gives the same accuracy" if reloaded == accuracies[-1] else "MISMATCH after reloading")


def evaluate(args: argparse.Namespace) -> None:
    _, _, X_test, T_test = split_digits(args.seed)
    like = build_model(jn.random.key(12345))  # the architecture; its values are replaced
    model = jn.load(Path(args.folder) / "model.npz", like=like)
    state = jn.load(Path(args.folder) / "state.npz", like=jn.optim.adam(1e-3).init(like))
    print(f"loaded the model and an optimizer state after {int(state.count)} steps; test accuracy {jn.metrics.accuracy(model.forward(X_test), T_test)}")


def plot(losses: list[float], accuracies: list[float], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no curves.png")
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = np.arange(1, len(losses) + 1)
    left.plot(epochs, losses)
    left.set(xlabel="epoch", ylabel="training loss")
    right.plot(epochs, accuracies)
    right.set(xlabel="epoch", ylabel="test accuracy")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--folder", default="checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evaluate", action="store_true", help="load the checkpoint in --folder and print the test accuracy")
    args = parser.parse_args()
    (evaluate if args.evaluate else train)(args)


if __name__ == "__main__":
    main()
