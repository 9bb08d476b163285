"""A training loop over minibatches, built from the generic pieces."""

from __future__ import annotations

import numbers
import sys
import time
from typing import Any, Callable

import attrs
import numpy as np

from jitnn import random
from jitnn.data import batches
from jitnn.losses import Loss
from jitnn.passes import value_grad_and_update
from jitnn.protocol import Layer

__all__ = ["FitResult", "fit", "train_step"]


@attrs.frozen
class FitResult:
    """What :func:`fit` returns: the trained model, the optimizer state and, per epoch, the
    mean training loss over the epoch's batches."""

    model: Layer
    state: Any
    history: tuple[float, ...]


def train_step(
    model: Layer, state: Any, loss: Loss, optimizer: Any, X: Any, T: Any, *, key: random.Key | None = None
) -> tuple[Layer, Any, float]:
    """One training step: the loss and gradients on ``(X, T)`` in training mode (dropout
    draws its masks from ``key``; batch normalization uses and updates batch statistics),
    then the optimizer's update.

    Returns the new model (new parameters and running statistics), the new optimizer state
    and the loss before the update.
    """
    value, grads, model = value_grad_and_update(model, loss, X, T, key=key, training=True)
    model, state = optimizer.update(model, grads, state)
    return model, state, value


def fit(
    model: Layer,
    loss: Loss,
    optimizer: Any,
    X: Any,
    T: Any,
    *,
    key: random.Key,
    epochs: int = 1,
    batch_size: int = 32,
    state: Any = None,
    verbose: bool = False,
    callback: Callable[[int, Layer, float], None] | None = None,
) -> FitResult:
    """Train ``model`` on ``(X, T)`` for ``epochs`` passes over shuffled minibatches.

    Training mode throughout; each epoch's order and each step's randomness (dropout) come
    from keys derived from ``key``, so the same key gives the same model. ``state`` continues an earlier run (default: ``optimizer.init(model)``). With
    ``verbose`` a line per epoch is printed; ``callback(epoch, model, mean_loss)`` is called
    after each epoch.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"fit: model must be a jitnn layer, got {type(model).__name__}")
    if not isinstance(loss, Loss):
        raise TypeError(f"fit: loss must be a jitnn loss, got {type(loss).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 0:
        raise ValueError(f"fit: epochs must be a non-negative integer, got {epochs!r}")
    state = optimizer.init(model) if state is None else state
    history = []
    for epoch in range(int(epochs)):
        key, epoch_key = random.split(key)
        started, values, weights = time.perf_counter(), [], []
        order_key, steps_key = random.split(epoch_key)
        for step, (X_batch, T_batch) in enumerate(batches(order_key, X, T, batch_size)):
            model, state, value = train_step(model, state, loss, optimizer, X_batch, T_batch, key=random.fold_in(steps_key, step))
            values.append(value)
            weights.append(len(X_batch))
        mean = float(np.average(values, weights=weights))
        history.append(mean)
        if verbose:
            print(f"epoch {epoch + 1}/{epochs}: loss {mean:.4f} ({time.perf_counter() - started:.2f} s)", file=sys.stderr)
        if callback is not None:
            callback(epoch, model, mean)
    return FitResult(model, state, tuple(history))
