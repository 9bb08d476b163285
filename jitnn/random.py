"""Explicit, pure randomness: keys in, numbers out, no global state.

A key is a small immutable value. The same key gives the same numbers in every process
and on every run; :func:`split` derives independent keys from one. Sampling functions take
a key and return fresh arrays; they never advance any hidden state.

>>> key = key(0); k1, k2 = split(key)
>>> normal(k1, (2, 3)).shape
(2, 3)
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from jitnn import validate
from jitnn._checks import check_float_dtype

__all__ = ["Key", "key", "split", "fold_in", "normal", "uniform", "permutation", "bernoulli"]


def _words(value: tuple[int, ...]) -> tuple[int, ...]:
    words = tuple(int(w) for w in value)
    if len(words) != 4 or any(not 0 <= w < 2**32 for w in words):
        raise ValueError(f"Key: expected four 32-bit words, got {value!r}")
    return words


@attrs.frozen
class Key:
    """A random key: 128 bits, hashable, comparable, safe to keep and to save."""

    words: tuple[int, ...] = attrs.field(converter=_words)

    def _generator(self) -> np.random.Generator:
        return np.random.Generator(np.random.Philox(np.random.SeedSequence(self.words)))


def _check_key(value: Any, who: str) -> Key:
    if not isinstance(value, Key):
        raise TypeError(f"{who}: expected a jitnn.random.Key (from jitnn.random.key(seed)), got {type(value).__name__}")
    return value


def key(seed: int) -> Key:
    """The key for a non-negative integer ``seed``."""
    seed = validate.non_negative_int(seed, "key", "seed", wrong_type=TypeError)
    return Key(tuple(np.random.SeedSequence(seed).generate_state(4, np.uint32)))


def split(parent: Key, n: int = 2) -> tuple[Key, ...]:
    """``n`` new keys derived from ``parent``, independent of it and of each other."""
    _check_key(parent, "split")
    n = validate.positive_int(n, "split", "n")
    return tuple(
        Key(tuple(np.random.SeedSequence(parent.words, spawn_key=(i,)).generate_state(4, np.uint32)))
        for i in range(n)
    )


def fold_in(parent: Key, data: int | str) -> Key:
    """A new key derived from ``parent`` and ``data`` (a non-negative integer or a string,
    such as a layer's position in a model): the same pair always gives the same key."""
    _check_key(parent, "fold_in")
    if isinstance(data, str):
        words = tuple(data.encode("utf-8"))
    elif validate.is_integer(data) and data >= 0:
        words = (int(data) & 0xFFFFFFFF, int(data) >> 32)
    else:
        raise TypeError(f"fold_in: data must be a non-negative integer or a string, got {data!r}")
    derived = np.random.SeedSequence((*parent.words, 0x6A69746E, len(words), *words))  # 'jitn' separates the parts
    return Key(tuple(derived.generate_state(4, np.uint32)))


def _shape(shape: Any, who: str) -> tuple[int, ...]:
    return validate.int_tuple(shape, who, "shape", low=0)


def normal(key: Key, shape: Any, dtype: Any = np.float32) -> np.ndarray:
    """Standard normal samples of ``shape`` and ``dtype`` (float32 or float64)."""
    dtype = check_float_dtype(dtype, "normal")
    return _check_key(key, "normal")._generator().standard_normal(_shape(shape, "normal"), dtype=dtype)


def uniform(key: Key, shape: Any, low: float = 0.0, high: float = 1.0, dtype: Any = np.float32) -> np.ndarray:
    """Samples uniform on ``[low, high)`` of ``shape`` and ``dtype`` (float32 or float64)."""
    dtype = check_float_dtype(dtype, "uniform")
    low, high = validate.real(low, "uniform", "low"), validate.real(high, "uniform", "high")
    if not low < high:
        raise ValueError(f"uniform: need low < high, got low={low}, high={high}")
    unit = _check_key(key, "uniform")._generator().random(_shape(shape, "uniform"), dtype=dtype)
    return (unit * dtype.type(high - low) + dtype.type(low)).astype(dtype, copy=False)


def permutation(key: Key, n: int) -> np.ndarray:
    """A random permutation of ``range(n)`` (int64)."""
    n = validate.non_negative_int(n, "permutation", "n")
    return _check_key(key, "permutation")._generator().permutation(n).astype(np.int64)


def bernoulli(key: Key, p: float, shape: Any) -> np.ndarray:
    """Booleans of ``shape``, each ``True`` with probability ``p``."""
    p = validate.fraction(p, "bernoulli", "p", include_one=True)
    return _check_key(key, "bernoulli")._generator().random(_shape(shape, "bernoulli")) < p
