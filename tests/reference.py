"""Plain NumPy reference implementations of jitnn's built-in layers and losses.

Slow, obvious and independent of jitnn's kernels: the test suite compares every layer and
loss against these. Everything is computed in float64, whatever the input dtype, so that a
float32 kernel is compared with the best answer float64 can give.

Each layer is a namespace with three functions following the kernels' convention:

- ``forward(X, *params, **config) -> Y``
- ``grad_input(X, dY, *params, **config) -> dX``
- ``grad_params(X, dY, *params, **config) -> tuple`` (one gradient per parameter; empty
  for a layer without parameters)

Each loss is a namespace with ``value(Y, T) -> float`` and ``grad(Y, T) -> dL/dY``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf


def _f64(*arrays):
    converted = tuple(np.asarray(a, dtype=np.float64) for a in arrays)
    return converted[0] if len(converted) == 1 else converted


# --------------------------------------------------------------------------- layers
class Dense:
    """``Y = X @ W + b``; ``X (n, n_in)``, ``W (n_in, n_out)``, ``b (n_out,)``."""

    @staticmethod
    def forward(X, W, b):
        X, W, b = _f64(X, W, b)
        return X @ W + b

    @staticmethod
    def grad_input(X, dY, W, b):
        dY, W = _f64(dY, W)
        return dY @ W.T

    @staticmethod
    def grad_params(X, dY, W, b):
        X, dY = _f64(X, dY)
        return X.T @ dY, dY.sum(axis=0)

    @staticmethod
    def jacobian_input(x, W, b):
        """``dY/dx`` for one example ``x (n_in,)``: ``(n_out, n_in)``."""
        return _f64(W).T.copy()


class _Elementwise:
    """``Y = f(X)`` element by element; ``dX = dY * f'(X)``; no parameters."""

    @staticmethod
    def value(x, **config):
        raise NotImplementedError

    @staticmethod
    def derivative(x, **config):
        raise NotImplementedError

    @classmethod
    def forward(cls, X, **config):
        return cls.value(_f64(X), **config)

    @classmethod
    def grad_input(cls, X, dY, **config):
        X, dY = _f64(X, dY)
        return dY * cls.derivative(X, **config)

    @classmethod
    def grad_params(cls, X, dY, **config):
        return ()


class Identity(_Elementwise):
    @staticmethod
    def value(x):
        return x.copy()

    @staticmethod
    def derivative(x):
        return np.ones_like(x)


class ReLU(_Elementwise):
    """``max(x, 0)``; the derivative at 0 is 0."""

    @staticmethod
    def value(x):
        return np.where(x > 0, x, 0.0)

    @staticmethod
    def derivative(x):
        return np.where(x > 0, 1.0, 0.0)


class LeakyReLU(_Elementwise):
    """``x if x > 0 else negative_slope * x``."""

    @staticmethod
    def value(x, negative_slope=0.01):
        return np.where(x > 0, x, negative_slope * x)

    @staticmethod
    def derivative(x, negative_slope=0.01):
        return np.where(x > 0, 1.0, negative_slope)


class Sigmoid(_Elementwise):
    @staticmethod
    def value(x):
        # 1 / (1 + exp(-x)) written so that neither branch overflows
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    @classmethod
    def derivative(cls, x):
        s = cls.value(x)
        return s * (1.0 - s)


class Tanh(_Elementwise):
    @staticmethod
    def value(x):
        return np.tanh(x)

    @staticmethod
    def derivative(x):
        return 1.0 - np.tanh(x) ** 2


class GELU(_Elementwise):
    """Exact GELU: ``x * Phi(x)``, ``Phi`` the standard normal distribution function."""

    @staticmethod
    def value(x):
        return x * 0.5 * (1.0 + erf(x / np.sqrt(2.0)))

    @staticmethod
    def derivative(x):
        cdf = 0.5 * (1.0 + erf(x / np.sqrt(2.0)))
        pdf = np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi)
        return cdf + x * pdf


class Softmax:
    """Softmax over the last axis; ``dX = Y * (dY - sum(dY * Y, last axis))``."""

    @staticmethod
    def forward(X):
        X = _f64(X)
        e = np.exp(X - X.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    @classmethod
    def grad_input(cls, X, dY):
        Y, dY = cls.forward(X), _f64(dY)
        return Y * (dY - np.sum(dY * Y, axis=-1, keepdims=True))

    @staticmethod
    def grad_params(X, dY):
        return ()

    @classmethod
    def jacobian_input(cls, x):
        """``dY/dx`` for one example ``x (k,)``: ``diag(y) - y y^T``, ``(k, k)``."""
        y = cls.forward(x)
        return np.diag(y) - np.outer(y, y)


class Chain:
    """Members applied in order; each member is ``(reference, params, config)``."""

    @staticmethod
    def forward(X, members):
        for ref, params, config in members:
            X = ref.forward(X, *params, **config)
        return X

    @staticmethod
    def _inputs(X, members):
        inputs = []
        for ref, params, config in members:
            inputs.append(X)
            X = ref.forward(X, *params, **config)
        return inputs

    @classmethod
    def grad_input(cls, X, dY, members):
        inputs = cls._inputs(X, members)
        dY = _f64(dY)
        for (ref, params, config), X_i in zip(members[::-1], inputs[::-1]):
            dY = ref.grad_input(X_i, dY, *params, **config)
        return dY

    @classmethod
    def grad_params(cls, X, dY, members):
        """One tuple of parameter gradients per member, in the members' order."""
        inputs = cls._inputs(X, members)
        dY = _f64(dY)
        grads = [None] * len(members)
        for i in range(len(members) - 1, -1, -1):
            ref, params, config = members[i]
            grads[i] = ref.grad_params(inputs[i], dY, *params, **config)
            dY = ref.grad_input(inputs[i], dY, *params, **config)
        return tuple(grads)


# --------------------------------------------------------------------------- losses
def _logsumexp(Y):
    top = Y.max(axis=-1, keepdims=True)
    return (top + np.log(np.exp(Y - top).sum(axis=-1, keepdims=True)))[..., 0]


class SoftmaxCrossEntropy:
    """Logits ``Y (n, k)``, integer labels ``T (n,)``: ``mean_i logsumexp(Y[i]) - Y[i, T[i]]``."""

    @staticmethod
    def value(Y, T):
        Y, T = _f64(Y), np.asarray(T).astype(np.int64)
        rows = np.arange(Y.shape[0])
        return float(np.mean(_logsumexp(Y) - Y[rows, T]))

    @staticmethod
    def grad(Y, T):
        Y, T = _f64(Y), np.asarray(T).astype(np.int64)
        n, k = Y.shape
        onehot = np.zeros((n, k))
        onehot[np.arange(n), T] = 1.0
        return (Softmax.forward(Y) - onehot) / n


class MeanSquaredError:
    """Mean over ALL elements of ``(Y - T)**2``."""

    @staticmethod
    def value(Y, T):
        Y, T = _f64(Y, T)
        return float(np.mean((Y - T) ** 2))

    @staticmethod
    def grad(Y, T):
        Y, T = _f64(Y, T)
        return 2.0 * (Y - T) / Y.size


class BinaryCrossEntropy:
    """From logits, mean over all elements of ``max(y, 0) - y t + log1p(exp(-|y|))``."""

    @staticmethod
    def value(Y, T):
        Y, T = _f64(Y, T)
        return float(np.mean(np.maximum(Y, 0.0) - Y * T + np.log1p(np.exp(-np.abs(Y)))))

    @staticmethod
    def grad(Y, T):
        Y, T = _f64(Y, T)
        return (Sigmoid.value(Y) - T) / Y.size
