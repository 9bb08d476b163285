"""Train the same digits MLP with several optimizers and print test accuracy per epoch.

    python examples/compare_optimizers.py [--epochs 10] [--seed 0]

Every run starts from the same weights and sees the same batches (the same keys), so the
columns differ only by the optimizer.
"""

from __future__ import annotations

import argparse


import jitnn as jn
from digits_mlp import accuracy, load_digits

OPTIMIZERS = {
    "sgd(0.01)": lambda: jn.optim.sgd(0.01),
    "momentum(0.01)": lambda: jn.optim.momentum(0.01),
    "adam(1e-3)": lambda: jn.optim.adam(1e-3),
    "adamw(1e-3)": lambda: jn.optim.adamw(1e-3),
    "rmsprop(1e-3)": lambda: jn.optim.rmsprop(1e-3),
    "lion(1e-4)": lambda: jn.optim.lion(1e-4),
    "adam+cosine": None,  # built in main(): it needs the number of steps
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    X_train, T_train, X_test, T_test = load_digits(args.seed)
    init_key, train_key = jn.random.split(jn.random.key(args.seed))
    k1, k2 = jn.random.split(init_key)
    model = jn.pipe(jn.Dense.init(k1, 64, 64, weight_init=jn.init.he_normal), jn.ReLU(), jn.Dense.init(k2, 64, 10))
    steps = args.epochs * jn.data.n_batches(len(X_train), args.batch_size)
    schedule = jn.optim.warmup_cosine_decay(3e-3, warmup_steps=steps // 10, decay_steps=steps)

    curves = {}
    for name, make in OPTIMIZERS.items():
        optimizer = jn.optim.adam(schedule) if make is None else make()
        curve: list[float] = []
        jn.fit(model, jn.SoftmaxCrossEntropy(), optimizer, X_train, T_train, key=train_key,
               epochs=args.epochs, batch_size=args.batch_size,
               callback=lambda epoch, trained, loss: curve.append(accuracy(trained, X_test, T_test)))
        curves[name] = curve

    names = list(curves)
    print("test accuracy after each epoch")
    print("epoch " + " ".join(f"{name:>14}" for name in names))
    for epoch in range(args.epochs):
        print(f"{epoch + 1:5d} " + " ".join(f"{curves[name][epoch]:14.4f}" for name in names))
    for name in names:
        first = next((e + 1 for e, a in enumerate(curves[name]) if a >= 0.95), None)
        print(f"{name}: best {max(curves[name]):.4f}; first epoch at >= 0.95: {first or 'never'}")


if __name__ == "__main__":
    main()
