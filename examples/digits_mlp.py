"""Train a small MLP on scikit-learn's bundled 8x8 digits and print its test accuracy.

    python examples/digits_mlp.py [--epochs 30] [--batch-size 32] [--learning-rate 0.1] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import jitnn as jn


def load_digits(seed: int, test_fraction: float = 0.25) -> tuple[np.ndarray, ...]:
    """The digits scaled to [0, 1], split into train and test sets by a seeded permutation."""
    X, T = jn.datasets.load_digits()
    order = jn.random.permutation(jn.random.key(seed), len(X))
    n_test = int(len(X) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return X[train], T[train], X[test], T[test]


def accuracy(model: jn.Layer, X: np.ndarray, T: np.ndarray) -> float:
    return float(np.mean(np.argmax(model.forward(X), axis=1) == T))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    X_train, T_train, X_test, T_test = load_digits(args.seed)
    init_key, train_key = jn.random.split(jn.random.key(args.seed))
    k1, k2, k3 = jn.random.split(init_key, 3)
    model = jn.pipe(
        jn.Dense.init(k1, 64, 128, weight_init=jn.init.he_normal),
        jn.ReLU(),
        jn.Dense.init(k2, 128, 64, weight_init=jn.init.he_normal),
        jn.ReLU(),
        jn.Dense.init(k3, 64, 10),
    )
    print(model)
    started = time.perf_counter()
    result = jn.fit(
        model,
        jn.SoftmaxCrossEntropy(),
        jn.optim.sgd(args.learning_rate),
        X_train,
        T_train,
        key=train_key,
        epochs=args.epochs,
        batch_size=args.batch_size,
    )
    seconds = time.perf_counter() - started
    print(f"trained {args.epochs} epochs in {seconds:.2f} s (first-call compilation included); "
          f"loss {result.history[0]:.4f} -> {result.history[-1]:.4f}")
    print(f"train accuracy {accuracy(result.model, X_train, T_train):.4f}")
    print(f"test accuracy {accuracy(result.model, X_test, T_test):.4f}")


if __name__ == "__main__":
    main()
