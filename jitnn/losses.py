"""Losses: records with two kernels, ``value(Y, T) -> float`` (mean over the batch) and
``grad(Y, T) -> dL/dY``, and optionally a third that gives both in one pass. Targets are
checked in Python before a kernel sees them.

A loss with ``rows = True`` (softmax cross-entropy) scores the last axis of its predictions:
its kernels get ``(rows, last axis)`` views of predictions of any rank, every leading axis
merged into the rows, and its targets as :meth:`Loss.targets` converts them (one label per
row), so one compiled kernel per dtype serves ``(n, k)`` batches and ``(n, T, k)``
sequences alike; the gradient takes the predictions' shape back."""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, NamedTuple

import attrs
import numpy as np

from jitnn import validate
from jitnn._checks import describe, float_input, float_targets, integer_labels, readonly
from jitnn._math import row_max
from jitnn._jit import jit
from jitnn.protocol import Array

__all__ = [
    "Loss", "LossKernels", "loss", "registered_losses", "SoftmaxCrossEntropy", "MeanSquaredError", "BinaryCrossEntropy", "Huber",
    "KLDivergence",
]


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
    #: True for a loss whose kernels score the last axis: they get ``(rows, last axis)``
    #: views of predictions of any rank (see the module's notes).
    rows: ClassVar[bool] = False

    def targets(self, Y: Array, T: Any) -> Array:
        """Check ``T`` against the predictions ``Y`` and convert it for the kernels."""
        raise NotImplementedError

    def config(self) -> tuple[Any, ...]:
        """Static configuration handed to the kernels after ``Y`` and ``T``."""
        return tuple(getattr(self, f.name) for f in attrs.fields(type(self)))

    def _prepare(self, Y: Any, T: Any) -> tuple[tuple[int, ...], Array, Array]:
        """The predictions' shape, the predictions as the kernels see them and the targets."""
        Y = float_input(Y, None, describe(self), "predictions Y")
        if Y.size == 0:
            raise ValueError(f"{describe(self)}: predictions Y of shape {Y.shape} hold no values; the mean over them is undefined")
        targets = self.targets(Y, T)
        return Y.shape, readonly(self._kernel_view(Y)), readonly(targets)

    def _kernel_view(self, Y: Array) -> Array:
        """``Y`` as the kernels see it: ``(rows, last axis)`` for a ``rows`` loss."""
        return Y.reshape(-1, Y.shape[-1]) if self.rows and Y.ndim > 2 else Y

    def value(self, Y: Any, T: Any) -> float:
        """The loss, a mean over the batch."""
        _, Y, T = self._prepare(Y, T)
        return float(self.kernels.value(Y, T, *self.config()))

    __call__ = value

    def grad(self, Y: Any, T: Any) -> Array:
        """``dL/dY``, the shape and dtype of ``Y``."""
        shape, Y, T = self._prepare(Y, T)
        return self.kernels.grad(Y, T, *self.config()).reshape(shape)

    def value_and_grad(self, Y: Any, T: Any) -> tuple[float, Array]:
        """Both, checking the arguments once."""
        shape, Y, T = self._prepare(Y, T)
        config, kernels = self.config(), self.kernels
        if kernels.value_and_grad is not None:
            value, dY = kernels.value_and_grad(Y, T, *config)
            return float(value), dY.reshape(shape)
        return float(kernels.value(Y, T, *config)), kernels.grad(Y, T, *config).reshape(shape)


_REGISTRY: list[type] = []


def loss(cls: type) -> type:
    """Make ``cls`` (a :class:`Loss` subclass) a frozen record and register it."""
    cls = attrs.frozen(cls)
    _REGISTRY.append(cls)
    return cls


def registered_losses() -> tuple[type, ...]:
    """Every class made with :func:`loss` so far."""
    return tuple(_REGISTRY)


# --------------------------------------------------------------------------- softmax + cross-entropy
@jit
def _softmax_cross_entropy_value_and_grad(Y, T, ignore, smoothing):
    """The mean over the rows whose label is not ``ignore`` of ``logsumexp(Y[i]) - q . Y[i]``
    with ``q = (1 - smoothing) onehot(T[i]) + smoothing / k`` (``smoothing = 0``: ``q`` the
    one-hot label, the loss ``logsumexp(Y[i]) - Y[i, T[i]]``), and ``dY = (softmax(Y) - q) /
    count`` on those rows, 0 on the others, with one exponential per element (in float64;
    dY is rounded once); 0 and a zero gradient where every row is ignored;  Y (m, k)
    logits, T (m,) int labels -> (float, dY (m, k))."""
    n, k = Y.shape
    dY = np.empty(Y.shape, Y.dtype)
    count = 0
    for i in range(n):
        if T[i] != ignore:
            count += 1
    exps = np.empty(k, np.float64)
    total = 0.0
    spread = smoothing / k
    for i in range(n):
        if T[i] == ignore:
            for j in range(k):
                dY[i, j] = 0.0
            continue
        top = row_max(Y, i)
        s = 0.0
        for j in range(k):
            exps[j] = math.exp(Y[i, j] - top)
            s += exps[j]
        if smoothing == 0.0:
            total += math.log(s) + top - Y[i, T[i]]
            for j in range(k):
                dY[i, j] = exps[j] / s / count
            dY[i, T[i]] = (exps[T[i]] / s - 1.0) / count
        else:
            row_sum = 0.0
            for j in range(k):
                row_sum += Y[i, j]
            total += math.log(s) + top - ((1.0 - smoothing) * Y[i, T[i]] + spread * row_sum)
            for j in range(k):
                dY[i, j] = (exps[j] / s - spread) / count
            dY[i, T[i]] = (exps[T[i]] / s - (1.0 - smoothing) - spread) / count
    return (total / count if count else 0.0), dY


@jit
def _softmax_cross_entropy_value(Y, T, ignore, smoothing):
    """The value alone (see :func:`_softmax_cross_entropy_value_and_grad`)."""
    return _softmax_cross_entropy_value_and_grad(Y, T, ignore, smoothing)[0]


@jit
def _softmax_cross_entropy_grad(Y, T, ignore, smoothing):
    """The gradient alone (see :func:`_softmax_cross_entropy_value_and_grad`)."""
    return _softmax_cross_entropy_value_and_grad(Y, T, ignore, smoothing)[1]


_INT64 = np.iinfo(np.int64)


def _ignore_label(value: Any) -> int | None:
    return validate.optional(value, "SoftmaxCrossEntropy", "ignore_label", check=validate.integer, low=int(_INT64.min), high=int(_INT64.max),
                             none_means="every label counts", must="be an integer")


@loss
class SoftmaxCrossEntropy(Loss):
    """Cross-entropy of softmax(Y) over the last axis against integer labels: Y ``(n,
    n_classes)`` logits with T ``(n,)`` class indices of any integer dtype, or Y ``(n,
    length, n_classes)`` (a score per position of a sequence; any number of axes between
    the batch and the classes) with T ``(n, length)``. The loss is the mean over every
    position. Stable for logits of any magnitude.

    ``ignore_label`` (PyTorch's ``ignore_index``): positions whose label is this value
    contribute nothing (padding), and the mean is over the positions that count; the value
    need not be a class (``-100`` as in PyTorch). Where every position of a batch is
    ignored, the loss is 0 and its gradient zero (PyTorch gives NaN, the mean over no
    positions; a batch of padding alone has nothing to learn, and a NaN would stop
    training). PyTorch takes sequence scores as ``(n, n_classes, length)``: jitnn's are
    ``(n, length, n_classes)``, the layout a ``Dense`` on each position gives.

    ``label_smoothing`` (PyTorch's of that name, in ``[0, 1]``): the target of a position is
    ``(1 - label_smoothing)`` on its label and ``label_smoothing / n_classes`` on every class,
    so the loss is ``logsumexp(y) - sum_j q_j y_j``.
    """

    ignore_label: int | None = attrs.field(default=None, converter=_ignore_label)
    label_smoothing: float = attrs.field(default=0.0, converter=validate.converter(validate.fraction, "SoftmaxCrossEntropy", "label_smoothing", include_one=True))

    kernels = LossKernels(_softmax_cross_entropy_value, _softmax_cross_entropy_grad, _softmax_cross_entropy_value_and_grad)
    rows = True  # the kernels see (positions, classes)

    def config(self) -> tuple[Any, ...]:
        """The label the kernels leave out (``ignore_label``, or -1, never a valid label,
        without one) and the label smoothing."""
        return (-1 if self.ignore_label is None else self.ignore_label, self.label_smoothing)

    def targets(self, Y: Array, T: Any) -> Array:
        if Y.ndim < 2:
            raise ValueError(f"{describe(self)}: predictions must have shape (n, n_classes) or (n, length, n_classes), got {Y.shape}")
        labels = integer_labels(T, Y.shape[:-1], Y.shape[-1], describe(self), self.ignore_label)
        return labels.reshape(-1)


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



# --------------------------------------------------------------------------- Huber
@jit
def _huber_value(Y, T, delta):
    """mean over all elements of 0.5 d**2 where |d| <= delta, else delta (|d| - delta / 2),
    d = y - t;  Y, T (n, ...) -> float."""
    y, t = Y.reshape(-1), T.reshape(-1)
    total = 0.0
    for i in range(y.size):
        a = abs(y[i] - t[i])
        total += 0.5 * a * a if a <= delta else delta * (a - 0.5 * delta)
    return total / y.size


@jit
def _huber_grad(Y, T, delta):
    """dY = clip(y - t, -delta, delta) / Y.size;  Y, T (n, ...) -> dY (n, ...)."""
    dY = np.empty(Y.shape, Y.dtype)
    y, t, d = Y.reshape(-1), T.reshape(-1), dY.reshape(-1)
    for i in range(y.size):
        difference = y[i] - t[i]
        d[i] = min(max(difference, -delta), delta) / y.size
    return dY


@loss
class Huber(Loss):
    """The Huber loss (PyTorch's ``HuberLoss``): per element ``0.5 d**2`` where ``|d| <=
    delta`` and ``delta (|d| - delta / 2)`` beyond, ``d = y - t``, the mean over all
    elements: squared error near the target, absolute error (robust to outliers) far from
    it. ``delta`` > 0, default 1."""

    delta: float = attrs.field(default=1.0, converter=validate.converter(validate.positive_real, "Huber", "delta"))

    kernels = LossKernels(_huber_value, _huber_grad)

    def targets(self, Y: Array, T: Any) -> Array:
        return float_targets(T, Y.shape, Y.dtype, describe(self))


# --------------------------------------------------------------------------- KL divergence
@jit
def _kl_divergence_value_and_grad(Y, T):
    """The mean over the rows of sum_j t_j (log t_j - log softmax(y)_j) (a term with t_j = 0
    counts 0), and dY = (softmax(y) sum_j t_j - t) / rows, with one exponential per element
    (in float64; dY rounded once);  Y (m, k) logits, T (m, k) probabilities -> (float, dY)."""
    n, k = Y.shape
    dY = np.empty(Y.shape, Y.dtype)
    exps = np.empty(k, np.float64)
    total = 0.0
    for i in range(n):
        top = row_max(Y, i)
        s = 0.0
        for j in range(k):
            exps[j] = math.exp(Y[i, j] - top)
            s += exps[j]
        lse = top + math.log(s)
        mass = 0.0
        for j in range(k):
            t = np.float64(T[i, j])
            mass += t
            if t > 0.0:
                total += t * (math.log(t) - (Y[i, j] - lse))
        for j in range(k):
            dY[i, j] = (exps[j] / s * mass - T[i, j]) / n
    return total / n, dY


@jit
def _kl_divergence_value(Y, T):
    """The value alone (see :func:`_kl_divergence_value_and_grad`)."""
    return _kl_divergence_value_and_grad(Y, T)[0]


@jit
def _kl_divergence_grad(Y, T):
    """The gradient alone (see :func:`_kl_divergence_value_and_grad`)."""
    return _kl_divergence_value_and_grad(Y, T)[1]


@loss
class KLDivergence(Loss):
    """The Kullback-Leibler divergence ``KL(T || softmax(Y))`` of soft targets: Y logits and
    T probabilities (non-negative, each row summing to 1 as a distribution does) of the same
    shape, ``(n, n_classes)`` or ``(n, ..., n_classes)``; the mean over the rows (positions)
    of ``sum_j t_j (log t_j - log softmax(y)_j)``, a term with ``t_j = 0`` counting 0. For
    ``(n, n_classes)`` it is PyTorch's ``KLDivLoss(reduction="batchmean")`` of
    ``log_softmax(Y)`` (for more axes PyTorch divides by ``n`` alone). Distillation: the
    teacher's softmax as ``T``."""

    kernels = LossKernels(_kl_divergence_value, _kl_divergence_grad, _kl_divergence_value_and_grad)
    rows = True

    def config(self) -> tuple[Any, ...]:
        return ()

    def targets(self, Y: Array, T: Any) -> Array:
        targets = float_targets(T, Y.shape, Y.dtype, describe(self))
        if not targets.min() >= 0.0:  # NaN fails too
            raise ValueError(f"{describe(self)}: targets must be probabilities (non-negative), got a smallest value of {targets.min()}")
        return targets.reshape(-1, Y.shape[-1]) if Y.ndim > 2 else targets
