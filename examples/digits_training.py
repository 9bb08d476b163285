"""Train on scikit-learn's digits as with Keras: a validation set scored every epoch, early
stopping that keeps the best epoch, a checkpoint of it, a lower learning rate on a plateau,
a CSV log and the curves as a PNG.

    python examples/digits_training.py [--out digits_run] [--epochs 100] [--seed 0]

Writes ``best.npz`` (the best epoch's model and optimizer state), ``log.csv`` and
``history.png`` into ``--out``, reloads the checkpoint and prints its test accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import jitnn as jn


def split(seed: int) -> tuple[np.ndarray, ...]:
    """The digits scaled to [0, 1]: 60% to train on, 20% to validate on, 20% to test on."""
    X, T = jn.datasets.load_digits()
    order = jn.random.permutation(jn.random.key(seed), len(X))
    a, b = int(0.6 * len(X)), int(0.8 * len(X))
    return X[order[:a]], T[order[:a]], X[order[a:b]], T[order[a:b]], X[order[b:]], T[order[b:]]


def network(key: jn.random.Key) -> jn.Layer:
    k1, k2 = jn.random.split(key)
    return jn.pipe(jn.Dense.init(k1, 64, 128, weight_init=jn.init.he_normal), jn.ReLU(), jn.Dropout(0.2), jn.Dense.init(k2, 128, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("digits_run"))
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    X_train, T_train, X_val, T_val, X_test, T_test = split(args.seed)
    init_key, train_key = jn.random.split(jn.random.key(args.seed))
    model, optimizer = network(init_key), jn.optim.adam(3e-3)
    stopping = jn.callbacks.EarlyStopping("val_loss", patience=8)
    plateau = jn.callbacks.ReduceLROnPlateau("val_loss", factor=0.5, patience=3)
    result = jn.fit(
        model, jn.SoftmaxCrossEntropy(), optimizer, X_train, T_train, key=train_key, epochs=args.epochs, batch_size=32,
        validation_data=(X_val, T_val),
        metrics=[jn.accuracy],
        callbacks=[stopping, plateau, jn.callbacks.ModelCheckpoint(args.out / "best.npz", "val_loss"),
                   jn.callbacks.CSVLogger(args.out / "log.csv")],
        verbose=True,
    )
    jn.plot_history(result, args.out / "history.png", title="digits: Dense 128, dropout, Adam")

    ran = len(result.history)
    stopped = f"stopped after epoch {stopping.stopped_epoch + 1}" if stopping.stopped_epoch is not None else "ran every epoch"
    print(f"{ran} epochs, {stopped}; best epoch {stopping.best_epoch + 1} "
          f"(val_loss {result.metrics['val_loss'][stopping.best_epoch]:.4f}, "
          f"val_accuracy {result.metrics['val_accuracy'][stopping.best_epoch]:.4f})")
    print(f"learning rate halved after epochs {[epoch + 1 for epoch in plateau.reductions]}; the best epoch's "
          f"optimizer state, returned with its model, has lr_scale {float(result.state.lr_scale):g}")
    saved = jn.load(args.out / "best.npz", {"model": network(init_key), "state": optimizer.init(model)})
    predict = jn.compile_predict(saved["model"])
    reloaded = jn.accuracy(predict(saved["model"], X_test), T_test)
    returned = jn.accuracy(predict(result.model, X_test), T_test)
    print(f"checkpoint reloaded: test accuracy {reloaded:.4f} (the returned model: {returned:.4f})")
    print(f"wrote {', '.join(str(args.out / name) for name in ('best.npz', 'log.csv', 'history.png'))}")


if __name__ == "__main__":
    main()
