"""Embedding: integer indices in, learned vectors out."""

from __future__ import annotations

from typing import Any

import numpy as np

from jitnn import init as initializers
from jitnn import random, validate
from jitnn._checks import _as_array, check_float_dtype, describe
from jitnn._jit import jit
from jitnn.protocol import Array, Kernels, Layer, layer, param

__all__ = ["Embedding", "PositionalEmbedding"]


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


# --------------------------------------------------------------------------- positions
@jit
def _positional_forward(X, table):
    """Y[i, t] = X[i, t] + table[t];  X (n, T, dim), table (max_length, dim), T <= max_length -> (n, T, dim)."""
    n, length, dim = X.shape
    Y = np.empty(X.shape, X.dtype)
    for i in range(n):
        for t in range(length):
            for c in range(dim):
                Y[i, t, c] = X[i, t, c] + table[t, c]
    return Y


@jit
def _positional_grad_input(X, dY, table):
    """dX = dY (a copy: the caller's own array)."""
    return dY.copy()


@jit
def _positional_grad_params(X, dY, table):
    """d table[t] = sum over the batch of dY[:, t] for t < T, zero for the rows beyond;  -> (max_length, dim)."""
    n, length, dim = X.shape
    grad = np.zeros(table.shape, table.dtype)
    for i in range(n):
        for t in range(length):
            for c in range(dim):
                grad[t, c] += dY[i, t, c]
    return (grad,)


@layer
class PositionalEmbedding(Layer):
    """A learned vector per position added to a batch of sequences: ``Y[i, t] = X[i, t] +
    table[t]`` for ``X (n, T, dim)``, ``T <= max_length`` (the first ``T`` rows of the
    ``(max_length, dim)`` table; the others get a zero gradient). It goes after an
    :class:`Embedding` of the tokens, as in GPT-2 and BERT, so that attention, which
    treats its input as a set, can tell positions apart."""

    table: Array = param()
    kernels = Kernels(_positional_forward, _positional_grad_input, _positional_grad_params)

    @classmethod
    def init(
        cls, key: random.Key, max_length: int, dim: int, *, weight_init: initializers.Initializer | None = None, dtype: Any = np.float32,
    ) -> PositionalEmbedding:
        """A table drawn from ``N(0, 0.02**2)`` (GPT-2's and BERT's initialization of their
        position tables), or from ``weight_init``. Small against the unit-variance token
        vectors of :class:`Embedding`'s default, so that a new model starts out nearly
        blind to positions instead of with large random offsets that the tokens must
        overcome; the gradient still reaches every row a sequence uses, and training
        grows what the task needs."""
        who = "PositionalEmbedding.init"
        max_length, dim = validate.positive_int(max_length, who, "max_length"), validate.positive_int(dim, who, "dim")
        dtype = check_float_dtype(dtype, who)
        shape = (max_length, dim)
        table = initializers._normal(key, shape, 0.02, dtype) if weight_init is None else weight_init(key, shape, dtype=dtype)
        return cls(table=table)

    @property
    def max_length(self) -> int:
        return self.table.shape[0]

    @property
    def dim(self) -> int:
        return self.table.shape[1]

    def check_params(self) -> None:
        if self.table.ndim != 2 or self.table.shape[0] == 0:
            raise ValueError(f"PositionalEmbedding: table must have shape (max_length, dim) with max_length >= 1, got {self.table.shape}")

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        input_shape = tuple(input_shape)
        if len(input_shape) != 2 or input_shape[1] != self.dim:
            raise ValueError(f"expects per-example input shape (length, {self.dim}) (a batch of sequences (n, length, {self.dim})), got {input_shape}")
        if input_shape[0] > self.max_length:
            raise ValueError(f"a sequence of length {input_shape[0]} is longer than max_length {self.max_length}")
        return input_shape

    def label(self) -> str:
        """The class name with the short configuration that :func:`jitnn.summary` shows."""
        return f"{type(self).__name__}({self.max_length} x {self.dim})"
