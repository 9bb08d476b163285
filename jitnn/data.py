"""Minibatches."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from jitnn import random, validate
from jitnn._checks import _as_array, sample_weights

__all__ = ["batches", "n_batches"]


def _check(X: Any, T: Any, batch_size: Any) -> tuple[np.ndarray, np.ndarray, int]:
    X, T = _as_array(X, "batches", "X"), _as_array(T, "batches", "T")
    if X.ndim == 0 or T.ndim == 0:
        raise ValueError("batches: X and T must be arrays whose first axis is the example")
    if X.shape[0] != T.shape[0]:
        raise ValueError(f"batches: X has {X.shape[0]} examples but T has {T.shape[0]}")
    return X, T, validate.positive_int(batch_size, "batches", "batch_size")


def n_batches(n_examples: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches :func:`batches` yields for ``n_examples``."""
    return n_examples // batch_size if drop_last else -(-n_examples // batch_size)


def batches(
    key: random.Key | None,
    X: Any,
    T: Any,
    batch_size: int,
    shuffle: bool = True,
    drop_last: bool = False,
    sample_weight: Any = None,
) -> Iterator[tuple[np.ndarray, ...]]:
    """Yield ``(X_batch, T_batch)`` pairs covering the examples once, or with
    ``sample_weight`` (one finite, non-negative weight per example) ``(X_batch, T_batch,
    w_batch)`` triples, each batch's weights those of its examples.

    With ``shuffle`` the order is a permutation drawn from ``key`` (the same key gives the
    same order); without it ``key`` may be ``None``. The last batch is smaller unless
    ``drop_last``. Arguments are checked at the call, not at the first batch. Batches are
    fresh C-contiguous copies: writing into one never changes the caller's arrays.
    """
    X, T, batch_size = _check(X, T, batch_size)
    shuffle, drop_last = validate.flag(shuffle, "batches", "shuffle"), validate.flag(drop_last, "batches", "drop_last")
    if shuffle and not isinstance(key, random.Key):
        raise TypeError(f"batches: shuffle=True needs a jitnn.random.Key to draw the order, got {type(key).__name__}")
    arrays = (X, T) if sample_weight is None else (X, T, sample_weights(sample_weight, X.shape[0], "batches"))
    order = random.permutation(key, X.shape[0]) if shuffle else None
    return _batches(arrays, batch_size, order, drop_last)


def _batches(
    arrays: tuple[np.ndarray, ...], batch_size: int, order: np.ndarray | None, drop_last: bool
) -> Iterator[tuple[np.ndarray, ...]]:
    n = arrays[0].shape[0]
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        chosen = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
        yield tuple(np.array(array[chosen], order="C") for array in arrays)
