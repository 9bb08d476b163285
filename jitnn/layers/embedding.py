"""Embedding: integer indices in, learned vectors out."""

from __future__ import annotations

from typing import Any

import numpy as np

from jitnn import init as initializers
from jitnn import random, validate
from jitnn._checks import _as_array, check_float_dtype, describe
from jitnn._jit import jit
from jitnn.protocol import Array, Kernels, Layer, layer, param

__all__ = ["Embedding"]


@jit
def _embedding_forward(indices, table):
    """Y[..., :] = table[indices[...]];  indices (n, ...) int64, table (vocab, dim) -> (n, ..., dim)."""
    flat = indices.reshape(-1)
    Y = np.empty((flat.size, table.shape[1]), table.dtype)
    for i in range(flat.size):
        Y[i] = table[flat[i]]
    return Y.reshape(indices.shape + (table.shape[1],))


@jit
def _embedding_grad_input(indices, dY, table):
    """Indices are not differentiable: zeros of the indices' shape, in the table's dtype."""
    return np.zeros(indices.shape, table.dtype)


@jit
def _embedding_grad_params(indices, dY, table):
    """d table[v] = sum of dY rows whose index is v (repeated indices accumulate);  -> (vocab, dim)."""
    flat = indices.reshape(-1)
    d = dY.reshape((flat.size, table.shape[1]))
    grad = np.zeros(table.shape, table.dtype)
    for i in range(flat.size):
        grad[flat[i]] += d[i]
    return (grad,)


@layer
class Embedding(Layer):
    """A table of ``vocab`` learned vectors of size ``dim``: indices ``(n, ...)`` of any
    integer dtype, each in ``[0, vocab)``, give vectors ``(n, ..., dim)``. The gradient of
    a row accumulates over repeated indices; indices themselves get a zero gradient."""

    table: Array = param()
    kernels = Kernels(_embedding_forward, _embedding_grad_input, _embedding_grad_params)

    @classmethod
    def init(cls, key: random.Key, vocab: int, dim: int, *, weight_init: initializers.Initializer | None = None, dtype: Any = np.float32) -> Embedding:
        """A table drawn from ``N(0, 1)`` (PyTorch's default) or from ``weight_init``."""
        vocab, dim = validate.positive_int(vocab, "Embedding.init", "vocab"), validate.positive_int(dim, "Embedding.init", "dim")
        dtype = check_float_dtype(dtype, "Embedding.init")
        table = random.normal(key, (vocab, dim), dtype) if weight_init is None else weight_init(key, (vocab, dim), dtype=dtype)
        return cls(table=table)

    @property
    def vocab(self) -> int:
        return self.table.shape[0]

    @property
    def dim(self) -> int:
        return self.table.shape[1]

    def check_params(self) -> None:
        if self.table.ndim != 2:
            raise ValueError(f"Embedding: table must have shape (vocab, dim), got {self.table.shape}")

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(input_shape) + (self.dim,)

    def _input(self, X: Any) -> Array:
        """Indices of any integer dtype, converted to C-contiguous int64."""
        who = describe(self)
        indices = X if isinstance(X, np.ndarray) else _as_array(X, who, "input")
        if indices.dtype.kind not in "iu":
            raise TypeError(f"{who}: input must be integer indices, got dtype {indices.dtype}")
        if indices.ndim == 0 or indices.shape[0] == 0:
            raise ValueError(f"{who}: input must be a non-empty batch of indices, got shape {indices.shape}")
        self._check_range(indices, who)
        return np.ascontiguousarray(indices, dtype=np.int64)

    def _check_range(self, indices: Array, who: str) -> None:
        if indices.size:
            low, high = int(indices.min()), int(indices.max())
            if low < 0 or high >= self.vocab:
                raise ValueError(f"{who}: index {low if low < 0 else high} is out of range for a vocabulary of {self.vocab}")

    def _check_input(self, X: Array, where: str) -> None:
        who = describe(self, where)
        if X.dtype != np.int64:
            raise TypeError(f"{who}: input must be integer indices (put Embedding first in a model), got dtype {X.dtype}")
        self._check_range(X, who)

    def label(self) -> str:
        """The class name with the short configuration that :func:`jitnn.summary` shows."""
        return f"{type(self).__name__}({self.vocab} -> {self.dim})"
