"""Losses: records with two kernels, ``value(Y, T) -> float`` (mean over the batch) and
``grad(Y, T) -> dL/dY``, and optionally a third that gives both in one pass. Targets are
checked in Python before a kernel sees them."""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, NamedTuple

import attrs
import numpy as np

from jitnn._checks import describe, float_input, float_targets, integer_labels, readonly
from jitnn._jit import jit
from jitnn.protocol import Array

__all__ = ["Loss", "LossKernels", "loss", "registered_losses", "SoftmaxCrossEntropy", "MeanSquaredError", "BinaryCrossEntropy"]


class LossKernels(NamedTuple):
    """``value(Y, T, *config) -> float`` and ``grad(Y, T, *config) -> dY``; optionally
    ``value_and_grad(Y, T, *config) -> (value, dY)``, both in one pass, for a loss whose two
    halves share their costly part (softmax cross-entropy's exponentials). Where it is given,
    training (:meth:`Loss.value_and_grad` and the compiled step) calls it instead of the two;
    its results must be those of ``value`` and ``grad``."""

    value: Callable[..., float]
    grad: Callable[..., Array]
    value_and_grad: Callable[..., tuple[float, Array]] | None = None


class Loss:
    """Base of every loss; subclass it through the :func:`loss` decorator.

    A loss gives :meth:`targets`, which checks and converts ``T`` for predictions ``Y``,
    and ``kernels``; the rest is generic.
    """

    __slots__ = ()
    kernels: ClassVar[LossKernels]

    def targets(self, Y: Array, T: Any) -> Array:
        """Check ``T`` against the predictions ``Y`` and convert it for the kernels."""
        raise NotImplementedError

    def config(self) -> tuple[Any, ...]:
        """Static configuration handed to the kernels after ``Y`` and ``T``."""
        return tuple(getattr(self, f.name) for f in attrs.fields(type(self)))

    def _prepare(self, Y: Any, T: Any) -> tuple[Array, Array]:
        Y = float_input(Y, None, describe(self), "predictions Y")
        if Y.size == 0:
            raise ValueError(f"{describe(self)}: predictions Y of shape {Y.shape} hold no values; the mean over them is undefined")
        return readonly(Y), readonly(self.targets(Y, T))

    def value(self, Y: Any, T: Any) -> float:
        """The loss, a mean over the batch."""
        Y, T = self._prepare(Y, T)
        return float(self.kernels.value(Y, T, *self.config()))

    __call__ = value

    def grad(self, Y: Any, T: Any) -> Array:
        """``dL/dY``, the shape and dtype of ``Y``."""
        Y, T = self._prepare(Y, T)
        return self.kernels.grad(Y, T, *self.config())

    def value_and_grad(self, Y: Any, T: Any) -> tuple[float, Array]:
        """Both, checking the arguments once."""
        Y, T = self._prepare(Y, T)
        config, kernels = self.config(), self.kernels
        if kernels.value_and_grad is not None:
            value, dY = kernels.value_and_grad(Y, T, *config)
            return float(value), dY
        return float(kernels.value(Y, T, *config)), kernels.grad(Y, T, *config)


_REGISTRY: list[type] = []


def loss(cls: type) -> type:
    """Make ``cls`` (a :class:`Loss` subclass) a frozen record and register it."""
    cls = attrs.frozen(cls)
    _REGISTRY.append(cls)
    return cls


def registered_losses() -> tuple[type, ...]:
    """Every class made with :func:`loss` so far."""
    return tuple(_REGISTRY)


def _require_2d(loss_: Loss, Y: Array) -> None:
    if Y.ndim != 2:
        raise ValueError(f"{describe(loss_)}: predictions must have shape (n, n_classes), got {Y.shape}")


# --------------------------------------------------------------------------- softmax + cross-entropy
@jit
def _softmax_cross_entropy_value_and_grad(Y, T):
    """mean_i [logsumexp(Y[i]) - Y[i, T[i]]] and dY = (softmax(Y) - onehot(T)) / n, with
    one exponential per element (in float64; dY is rounded once);  Y (n, k) logits, T (n,)
    int labels -> (float, dY (n, k))."""
    n, k = Y.shape
    dY = np.empty(Y.shape, Y.dtype)
    exps = np.empty(k, np.float64)
    total = 0.0
    for i in range(n):
        top = Y[i].max()
        s = 0.0
        for j in range(k):
            exps[j] = math.exp(Y[i, j] - top)
            s += exps[j]
        total += math.log(s) + top - Y[i, T[i]]
        for j in range(k):
            dY[i, j] = exps[j] / s / n
        dY[i, T[i]] = (exps[T[i]] / s - 1.0) / n
    return total / n, dY


@jit
def _softmax_cross_entropy_value(Y, T):
    """The value alone (see :func:`_softmax_cross_entropy_value_and_grad`)."""
    return _softmax_cross_entropy_value_and_grad(Y, T)[0]


@jit
def _softmax_cross_entropy_grad(Y, T):
    """The gradient alone (see :func:`_softmax_cross_entropy_value_and_grad`)."""
    return _softmax_cross_entropy_value_and_grad(Y, T)[1]


@loss
class SoftmaxCrossEntropy(Loss):
    """Cross-entropy of softmax(Y) against integer labels: Y ``(n, n_classes)`` logits,
    T ``(n,)`` class indices of any integer dtype. Stable for logits of any magnitude."""

    kernels = LossKernels(_softmax_cross_entropy_value, _softmax_cross_entropy_grad, _softmax_cross_entropy_value_and_grad)

    def targets(self, Y: Array, T: Any) -> Array:
        _require_2d(self, Y)
        return integer_labels(T, Y.shape[0], Y.shape[1], describe(self))


# --------------------------------------------------------------------------- mean squared error
@jit
def _mean_squared_error_value(Y, T):
    """sum((Y - T)**2) / Y.size;  Y, T (n, ...) -> float."""
    y, t = Y.reshape(-1), T.reshape(-1)
    total = 0.0
    for i in range(y.size):
        total += (y[i] - t[i]) ** 2
    return total / y.size


@jit
def _mean_squared_error_grad(Y, T):
    """dY = 2 (Y - T) / Y.size;  Y, T (n, ...) -> dY (n, ...)."""
    dY = np.empty(Y.shape, Y.dtype)
    y, t, d = Y.reshape(-1), T.reshape(-1), dY.reshape(-1)
    for i in range(y.size):
        d[i] = 2.0 * (y[i] - t[i]) / y.size
    return dY


@loss
class MeanSquaredError(Loss):
    """Mean over all elements of ``(Y - T)**2`` (as PyTorch's ``MSELoss``): for each example
    the mean squared error over its outputs, averaged over the batch."""

    kernels = LossKernels(_mean_squared_error_value, _mean_squared_error_grad)

    def targets(self, Y: Array, T: Any) -> Array:
        return float_targets(T, Y.shape, Y.dtype, describe(self))


# --------------------------------------------------------------------------- binary cross-entropy
@jit
def _binary_cross_entropy_value(Y, T):
    """mean of max(y, 0) - y t + log(1 + exp(-|y|)) over all elements;  Y logits, T in [0, 1]."""
    y, t = Y.reshape(-1), T.reshape(-1)
    total = 0.0
    for i in range(y.size):
        total += max(y[i], 0.0) - y[i] * t[i] + math.log1p(math.exp(-abs(y[i])))
    return total / y.size


@jit
def _binary_cross_entropy_grad(Y, T):
    """dY = (sigmoid(Y) - T) / Y.size;  Y, T (n, ...) -> dY (n, ...)."""
    dY = np.empty(Y.shape, Y.dtype)
    y, t, d = Y.reshape(-1), T.reshape(-1), dY.reshape(-1)
    for i in range(y.size):
        e = math.exp(-abs(y[i]))
        p = 1.0 / (1.0 + e) if y[i] >= 0 else e / (1.0 + e)
        d[i] = (p - t[i]) / y.size
    return dY


@loss
class BinaryCrossEntropy(Loss):
    """Binary cross-entropy from logits (as PyTorch's ``BCEWithLogitsLoss``): Y logits,
    T probabilities in [0, 1] of the same shape; mean over all elements."""

    kernels = LossKernels(_binary_cross_entropy_value, _binary_cross_entropy_grad)

    def targets(self, Y: Array, T: Any) -> Array:
        targets = float_targets(T, Y.shape, Y.dtype, describe(self))
        if not (targets.min() >= 0.0 and targets.max() <= 1.0):
            raise ValueError(f"{describe(self)}: targets must be probabilities in [0, 1], got values in [{targets.min()}, {targets.max()}]")
        return targets
