"""Dense (fully connected) layer: ``Y = X @ W + b`` on the last axis of inputs of any rank."""

from __future__ import annotations

from typing import Any

import numpy as np

from jitnn import init as initializers
from jitnn import random, validate
from jitnn._blas import matmul, outer_sum
from jitnn._checks import check_float_dtype
from jitnn._jit import jit
from jitnn.protocol import Array, Factored, Kernels, Layer, layer, param

__all__ = ["Dense"]


@jit
def _dense_forward(X, W, b):
    """Y = X @ W + b;  X (n, n_in), W (n_in, n_out), b (n_out,) -> Y (n, n_out)."""
    Y = matmul(X, W)
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] += b[j]
    return Y


@jit
def _dense_grad_input(X, dY, W, b):
    """dX = dY @ W.T;  dY (n, n_out), W (n_in, n_out) -> dX (n, n_in)."""
    return matmul(dY, W.T)


@jit(inline="always")
def _bias_gradient(dY):
    """db = dY summed over the rows (n_out,), in row order."""
    db = np.zeros(dY.shape[1], dtype=dY.dtype)
    for i in range(dY.shape[0]):
        for j in range(dY.shape[1]):
            db[j] += dY[i, j]
    return db


@jit
def _dense_grad_params(X, dY, W, b):
    """dW = X.T @ dY (n_in, n_out), db = dY summed over the batch (n_out,)."""
    return outer_sum(X, dY), _bias_gradient(dY)


@jit
def _dense_grad_factors(X, dY, W, b):
    """((X, dY), db): dW as its factors (dW = X.T @ dY), db as in _dense_grad_params."""
    return (X, dY), _bias_gradient(dY)


@layer
class Dense(Layer):
    """Fully connected layer ``Y = X @ W + b``.

    Parameters
    ----------
    W : array (n_in, n_out)
    b : array (n_out,)

    Input ``(n, ..., n_in)``, output ``(n, ..., n_out)``, as ``torch.nn.Linear``: the
    product acts on the last axis, every leading axis is a row (a sequence's steps, for
    example). The kernels see ``(rows, n_in)`` views (``rows = True``), so they compile once
    per dtype whatever the rank.
    """

    W: Array = param()
    b: Array = param()

    kernels = Kernels(_dense_forward, _dense_grad_input, _dense_grad_params, factored=Factored(_dense_grad_factors, ("W",)))
    rows = True

    @classmethod
    def init(
        cls,
        key: random.Key,
        n_in: int,
        n_out: int,
        *,
        weight_init: initializers.Initializer = initializers.glorot_uniform,
        bias_init: initializers.Initializer = initializers.zeros,
        dtype: Any = np.float32,
    ) -> Dense:
        """A new layer with ``W`` drawn by ``weight_init`` (Glorot uniform by default) from
        ``key`` and ``b`` from ``bias_init`` (zeros by default)."""
        n_in, n_out = validate.positive_int(n_in, "Dense.init", "n_in"), validate.positive_int(n_out, "Dense.init", "n_out")
        dtype = check_float_dtype(dtype, "Dense.init")
        weight_key, bias_key = random.split(key)
        return cls(W=weight_init(weight_key, (n_in, n_out), dtype=dtype), b=bias_init(bias_key, (n_out,), dtype=dtype))

    @property
    def n_in(self) -> int:
        return self.W.shape[0]

    @property
    def n_out(self) -> int:
        return self.W.shape[1]

    def check_params(self) -> None:
        if self.W.ndim != 2 or self.b.shape != (self.W.shape[1],):
            raise ValueError(f"Dense: W must have shape (n_in, n_out) and b (n_out,), got W {self.W.shape} and b {self.b.shape}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(n_in,)``: the shape of one example of a batch ``(n, n_in)``; ``(..., n_in)`` is taken too."""
        return (self.n_in,)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        input_shape = tuple(input_shape)
        if not input_shape or input_shape[-1] != self.n_in:
            raise ValueError(f"expects per-example input shape ({self.n_in},) or (..., {self.n_in}), got {input_shape}")
        return input_shape[:-1] + (self.n_out,)

    def label(self) -> str:
        """The class name with the short configuration that :func:`jitnn.summary` shows."""
        return f"{type(self).__name__}({self.n_in} -> {self.n_out})"
