"""Train a small CNN on scikit-learn's bundled 8x8 digits and print its test accuracy.

    python examples/digits_cnn.py [--epochs 15] [--batch-size 32] [--seed 0]

conv 3x3 (1 -> 16) + batch norm + ReLU + 2x2 max pool, then dropout and a dense layer,
trained with AdamW and a warm-up cosine schedule.
"""

from __future__ import annotations

import argparse
import time


import jitnn as jn
from digits_mlp import accuracy, load_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    X_train, T_train, X_test, T_test = load_digits(args.seed)
    images = lambda X: X.reshape(-1, 1, 8, 8)  # NCHW
    init_key, train_key = jn.random.split(jn.random.key(args.seed))
    k1, k2 = jn.random.split(init_key)
    model = jn.pipe(
        jn.Conv2D.init(k1, 1, 16, 3, padding=1),  # (16, 8, 8)
        jn.BatchNorm.init(None, 16),
        jn.ReLU(),
        jn.MaxPool2D(2),  # (16, 4, 4)
        jn.Flatten(),  # (256,)
        jn.Dropout(0.2),
        jn.Dense.init(k2, 256, 10),
    )
    print(model)
    steps = args.epochs * jn.data.n_batches(len(X_train), args.batch_size)
    optimizer = jn.optim.adamw(jn.optim.warmup_cosine_decay(3e-3, warmup_steps=steps // 10, decay_steps=steps))
    started = time.perf_counter()
    result = jn.fit(model, jn.SoftmaxCrossEntropy(), optimizer, images(X_train), T_train,
                    key=train_key, epochs=args.epochs, batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    print(f"trained {args.epochs} epochs in {seconds:.2f} s (first-call compilation included); "
          f"loss {result.history[0]:.4f} -> {result.history[-1]:.4f}")
    print(f"train accuracy {accuracy(result.model, images(X_train), T_train):.4f}")
    print(f"test accuracy {accuracy(result.model, images(X_test), T_test):.4f}")


if __name__ == "__main__":
    main()
