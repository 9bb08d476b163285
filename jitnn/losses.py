"""Losses: records with two kernels, ``value(Y, T, W) -> float`` (mean over the batch) and
``grad(Y, T, W) -> dL/dY``, and optionally a third that gives both in one pass. Targets and
weights are checked in Python before a kernel sees them.

``W`` holds one weight per example (scikit-learn's ``sample_weight``; 1 without one): the
value is ``sum_i W[i] c_i / sum_i W[i] m_i``, ``c_i`` example ``i``'s summed terms and
``m_i`` how many it has (its elements, or the positions that count), so that weights of 1
give the plain mean bit for bit (each term times 1.0, and a count summed from 1.0s is
exact), an integer weight counts as that many copies of the example, and a batch whose
weights are all 0 has loss 0 and a zero gradient.

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
from jitnn._checks import describe, float_input, float_targets, integer_labels, readonly, sample_weights
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
    its results must be those of ``value`` and ``grad``.

    With ``weighted`` the kernels take per-example weights after the targets, ``value(Y, T,
    W, *config)`` with ``W`` a read-only float64 array ``(n,)`` (see the module's notes), and
    the loss accepts ``sample_weight``; without it (a loss written before weights, the
    default) they do not, and a ``sample_weight`` is refused naming the loss."""

    value: Callable[..., float]
    grad: Callable[..., Array]
    value_and_grad: Callable[..., tuple[float, Array]] | None = None
    weighted: bool = False


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

    def _prepare(self, Y: Any, T: Any, sample_weight: Any) -> tuple[tuple[int, ...], tuple[Array, ...]]:
        """The predictions' shape, and the kernels' arguments before the configuration: the
        predictions as the kernels see them, the targets and (for weighted kernels) the weights."""
        Y = float_input(Y, None, describe(self), "predictions Y")
        if Y.size == 0:
            raise ValueError(f"{describe(self)}: predictions Y of shape {Y.shape} hold no values; the mean over them is undefined")
        arguments = (readonly(self._kernel_view(Y)), readonly(self.targets(Y, T)))
        return Y.shape, arguments + self.weights(Y.shape[0], sample_weight)

    def weights(self, n: int, sample_weight: Any, who: str = "") -> tuple[Array, ...]:
        """``(W,)``, the checked per-example weights of a batch of ``n`` the kernels take after
        the targets (weights of 1 for ``None``), or ``()`` for kernels that take none."""
        if self.kernels.weighted:
            return (sample_weights(sample_weight, n, who or describe(self)),)
        if sample_weight is not None:
            raise TypeError(f"{who or describe(self)}: {describe(self)}'s kernels take no per-example weights, so sample_weight "
                            "cannot be used with it (write them to take W after T and declare LossKernels(..., weighted=True))")
        return ()

    def _kernel_view(self, Y: Array) -> Array:
        """``Y`` as the kernels see it: ``(rows, last axis)`` for a ``rows`` loss."""
        return Y.reshape(-1, Y.shape[-1]) if self.rows and Y.ndim > 2 else Y

    def value(self, Y: Any, T: Any, sample_weight: Any = None) -> float:
        """The loss, a mean over the batch; with ``sample_weight`` (one non-negative weight
        per example) the weighted mean."""
        _, arguments = self._prepare(Y, T, sample_weight)
        return float(self.kernels.value(*arguments, *self.config()))

    __call__ = value

    def grad(self, Y: Any, T: Any, sample_weight: Any = None) -> Array:
        """``dL/dY``, the shape and dtype of ``Y``."""
        shape, arguments = self._prepare(Y, T, sample_weight)
        return self.kernels.grad(*arguments, *self.config()).reshape(shape)

    def value_and_grad(self, Y: Any, T: Any, sample_weight: Any = None) -> tuple[float, Array]:
        """Both, checking the arguments once."""
        shape, arguments = self._prepare(Y, T, sample_weight)
        config, kernels = self.config(), self.kernels
        if kernels.value_and_grad is not None:
            value, dY = kernels.value_and_grad(*arguments, *config)
            return float(value), dY.reshape(shape)
        return float(kernels.value(*arguments, *config)), kernels.grad(*arguments, *config).reshape(shape)


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
def _softmax_cross_entropy_value_and_grad(Y, T, W, ignore, smoothing):
    """``sum_i w_i (logsumexp(Y[i]) - q . Y[i]) / sum_i w_i`` over the rows whose label is not
    ``ignore``, ``w_i`` the weight of row ``i``'s example, with ``q = (1 - smoothing)
    onehot(T[i]) + smoothing / k`` (``smoothing = 0``: ``q`` the one-hot label, the term
    ``logsumexp(Y[i]) - Y[i, T[i]]``), and ``dY = w_i (softmax(Y) - q) / sum w`` on those rows,
    0 on the others, with one exponential per element (in float64; dY is rounded once); 0 and
    a zero gradient where the rows that count weigh 0;  Y (m, k) logits, T (m,) int labels,
    W (n,) the weights of the n examples, each of m / n rows -> (float, dY (m, k))."""
    n, k = Y.shape
    per = n // W.size
    dY = np.zeros(Y.shape, Y.dtype)
    mass = 0.0
    for i in range(n):
        if T[i] != ignore:
            mass += W[i // per]
    if mass == 0.0:
        return 0.0, dY
    exps = np.empty(k, np.float64)
    total = 0.0
    spread = smoothing / k
    for i in range(n):
        if T[i] == ignore:
            continue
        w = W[i // per]
        top = row_max(Y, i)
        s = 0.0
        for j in range(k):
            exps[j] = math.exp(Y[i, j] - top)
            s += exps[j]
        if smoothing == 0.0:
            total += w * (math.log(s) + top - Y[i, T[i]])
            for j in range(k):
                dY[i, j] = w * (exps[j] / s) / mass
            dY[i, T[i]] = w * (exps[T[i]] / s - 1.0) / mass
        else:
            row_sum = 0.0
            for j in range(k):
                row_sum += Y[i, j]
            total += w * (math.log(s) + top - ((1.0 - smoothing) * Y[i, T[i]] + spread * row_sum))
            for j in range(k):
                dY[i, j] = w * (exps[j] / s - spread) / mass
            dY[i, T[i]] = w * (exps[T[i]] / s - (1.0 - smoothing) - spread) / mass
    return total / mass, dY


@jit
def _softmax_cross_entropy_value(Y, T, W, ignore, smoothing):
    """The value alone (see :func:`_softmax_cross_entropy_value_and_grad`)."""
    return _softmax_cross_entropy_value_and_grad(Y, T, W, ignore, smoothing)[0]


@jit
def _softmax_cross_entropy_grad(Y, T, W, ignore, smoothing):
    """The gradient alone (see :func:`_softmax_cross_entropy_value_and_grad`)."""
    return _softmax_cross_entropy_value_and_grad(Y, T, W, ignore, smoothing)[1]


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

    kernels = LossKernels(_softmax_cross_entropy_value, _softmax_cross_entropy_grad, _softmax_cross_entropy_value_and_grad, weighted=True)
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


# --------------------------------------------------------------------------- elementwise losses
# Each example of Y (n, ...) is a block of Y.size / n elements; W[e] weighs block e.
@jit
def _weighted_denominator(W, per):
    """``per * sum(W)``: the weighted count of the terms the mean divides by."""
    mass = 0.0
    for e in range(W.size):
        mass += W[e]
    return mass * per


@jit
def _mean_squared_error_value(Y, T, W):
    """sum_e W[e] sum((Y[e] - T[e])**2) / (sum(W) Y[e].size);  Y, T (n, ...), W (n,) -> float."""
    y, t = Y.reshape(-1), T.reshape(-1)
    per = y.size // W.size
    denominator = _weighted_denominator(W, per)
    total = 0.0
    for e in range(W.size):
        w = W[e]
        for i in range(e * per, (e + 1) * per):
            total += w * (y[i] - t[i]) ** 2
    return total / denominator if denominator > 0.0 else 0.0


@jit
def _mean_squared_error_grad(Y, T, W):
    """dY = 2 W[e] (Y - T) / (sum(W) Y[e].size);  Y, T (n, ...), W (n,) -> dY (n, ...)."""
    dY = np.zeros(Y.shape, Y.dtype)
    y, t, d = Y.reshape(-1), T.reshape(-1), dY.reshape(-1)
    per = y.size // W.size
    denominator = _weighted_denominator(W, per)
    if denominator > 0.0:
        for e in range(W.size):
            w = W[e]
            for i in range(e * per, (e + 1) * per):
                d[i] = w * (2.0 * (y[i] - t[i])) / denominator
    return dY


@loss
class MeanSquaredError(Loss):
    """Mean over all elements of ``(Y - T)**2`` (as PyTorch's ``MSELoss``): for each example
    the mean squared error over its outputs, averaged over the batch."""

    kernels = LossKernels(_mean_squared_error_value, _mean_squared_error_grad, weighted=True)

    def targets(self, Y: Array, T: Any) -> Array:
        return float_targets(T, Y.shape, Y.dtype, describe(self))


# --------------------------------------------------------------------------- binary cross-entropy
@jit
def _binary_cross_entropy_value(Y, T, W):
    """The weighted mean of max(y, 0) - y t + log1p(exp(-|y|)) over all elements (as
    :func:`_mean_squared_error_value`);  Y logits, T in [0, 1], W (n,)."""
    y, t = Y.reshape(-1), T.reshape(-1)
    per = y.size // W.size
    denominator = _weighted_denominator(W, per)
    total = 0.0
    for e in range(W.size):
        w = W[e]
        for i in range(e * per, (e + 1) * per):
            total += w * (max(y[i], 0.0) - y[i] * t[i] + math.log1p(math.exp(-abs(y[i]))))
    return total / denominator if denominator > 0.0 else 0.0


@jit
def _binary_cross_entropy_grad(Y, T, W):
    """dY = W[e] (sigmoid(Y) - T) / (sum(W) Y[e].size);  Y, T (n, ...), W (n,) -> dY (n, ...)."""
    dY = np.zeros(Y.shape, Y.dtype)
    y, t, d = Y.reshape(-1), T.reshape(-1), dY.reshape(-1)
    per = y.size // W.size
    denominator = _weighted_denominator(W, per)
    if denominator > 0.0:
        for e in range(W.size):
            w = W[e]
            for i in range(e * per, (e + 1) * per):
                exp = math.exp(-abs(y[i]))
                p = 1.0 / (1.0 + exp) if y[i] >= 0 else exp / (1.0 + exp)
                d[i] = w * (p - t[i]) / denominator
    return dY


@loss
class BinaryCrossEntropy(Loss):
    """Binary cross-entropy from logits (as PyTorch's ``BCEWithLogitsLoss``): Y logits,
    T probabilities in [0, 1] of the same shape; mean over all elements."""

    kernels = LossKernels(_binary_cross_entropy_value, _binary_cross_entropy_grad, weighted=True)

    def targets(self, Y: Array, T: Any) -> Array:
        targets = float_targets(T, Y.shape, Y.dtype, describe(self))
        if not (targets.min() >= 0.0 and targets.max() <= 1.0):
            raise ValueError(f"{describe(self)}: targets must be probabilities in [0, 1], got values in [{targets.min()}, {targets.max()}]")
        return targets



# --------------------------------------------------------------------------- Huber
@jit
def _huber_value(Y, T, W, delta):
    """The weighted mean over all elements (as :func:`_mean_squared_error_value`) of 0.5 d**2
    where |d| <= delta, else delta (|d| - delta / 2), d = y - t;  Y, T (n, ...), W (n,) -> float."""
    y, t = Y.reshape(-1), T.reshape(-1)
    per = y.size // W.size
    denominator = _weighted_denominator(W, per)
    total = 0.0
    for e in range(W.size):
        w = W[e]
        for i in range(e * per, (e + 1) * per):
            a = abs(y[i] - t[i])
            total += w * (0.5 * a * a if a <= delta else delta * (a - 0.5 * delta))
    return total / denominator if denominator > 0.0 else 0.0


@jit
def _huber_grad(Y, T, W, delta):
    """dY = W[e] clip(y - t, -delta, delta) / (sum(W) Y[e].size);  Y, T (n, ...), W (n,) -> dY (n, ...)."""
    dY = np.zeros(Y.shape, Y.dtype)
    y, t, d = Y.reshape(-1), T.reshape(-1), dY.reshape(-1)
    per = y.size // W.size
    denominator = _weighted_denominator(W, per)
    if denominator > 0.0:
        for e in range(W.size):
            w = W[e]
            for i in range(e * per, (e + 1) * per):
                d[i] = w * min(max(y[i] - t[i], -delta), delta) / denominator
    return dY


@loss
class Huber(Loss):
    """The Huber loss (PyTorch's ``HuberLoss``): per element ``0.5 d**2`` where ``|d| <=
    delta`` and ``delta (|d| - delta / 2)`` beyond, ``d = y - t``, the mean over all
    elements: squared error near the target, absolute error (robust to outliers) far from
    it. ``delta`` > 0, default 1."""

    delta: float = attrs.field(default=1.0, converter=validate.converter(validate.positive_real, "Huber", "delta"))

    kernels = LossKernels(_huber_value, _huber_grad, weighted=True)

    def targets(self, Y: Array, T: Any) -> Array:
        return float_targets(T, Y.shape, Y.dtype, describe(self))


# --------------------------------------------------------------------------- KL divergence
@jit
def _kl_divergence_value_and_grad(Y, T, W):
    """``sum_i w_i sum_j t_j (log t_j - log softmax(y)_j) / sum_i w_i`` over the rows (a term
    with t_j = 0 counts 0), ``w_i`` the weight of row ``i``'s example, and dY = w_i
    (softmax(y) sum_j t_j - t) / sum w, with one exponential per element (in float64; dY
    rounded once); 0 and a zero gradient where the weights are all 0;  Y (m, k) logits, T (m,
    k) probabilities, W (n,) the weights of the n examples, each of m / n rows -> (float, dY)."""
    n, k = Y.shape
    per = n // W.size
    dY = np.zeros(Y.shape, Y.dtype)
    mass = _weighted_denominator(W, per)
    if mass == 0.0:
        return 0.0, dY
    exps = np.empty(k, np.float64)
    total = 0.0
    for i in range(n):
        w = W[i // per]
        top = row_max(Y, i)
        s = 0.0
        for j in range(k):
            exps[j] = math.exp(Y[i, j] - top)
            s += exps[j]
        lse = top + math.log(s)
        probability = 0.0
        for j in range(k):
            t = np.float64(T[i, j])
            probability += t
            if t > 0.0:
                total += w * (t * (math.log(t) - (Y[i, j] - lse)))
        for j in range(k):
            dY[i, j] = w * (exps[j] / s * probability - T[i, j]) / mass
    return total / mass, dY


@jit
def _kl_divergence_value(Y, T, W):
    """The value alone (see :func:`_kl_divergence_value_and_grad`)."""
    return _kl_divergence_value_and_grad(Y, T, W)[0]


@jit
def _kl_divergence_grad(Y, T, W):
    """The gradient alone (see :func:`_kl_divergence_value_and_grad`)."""
    return _kl_divergence_value_and_grad(Y, T, W)[1]


@loss
class KLDivergence(Loss):
    """The Kullback-Leibler divergence ``KL(T || softmax(Y))`` of soft targets: Y logits and
    T probabilities (non-negative, each row summing to 1 as a distribution does) of the same
    shape, ``(n, n_classes)`` or ``(n, ..., n_classes)``; the mean over the rows (positions)
    of ``sum_j t_j (log t_j - log softmax(y)_j)``, a term with ``t_j = 0`` counting 0. For
    ``(n, n_classes)`` it is PyTorch's ``KLDivLoss(reduction="batchmean")`` of
    ``log_softmax(Y)`` (for more axes PyTorch divides by ``n`` alone). Distillation: the
    teacher's softmax as ``T``."""

    kernels = LossKernels(_kl_divergence_value, _kl_divergence_grad, _kl_divergence_value_and_grad, weighted=True)
    rows = True

    def config(self) -> tuple[Any, ...]:
        return ()

    def targets(self, Y: Array, T: Any) -> Array:
        targets = float_targets(T, Y.shape, Y.dtype, describe(self))
        if not targets.min() >= 0.0:  # NaN fails too
            raise ValueError(f"{describe(self)}: targets must be probabilities (non-negative), got a smallest value of {targets.min()}")
        return targets.reshape(-1, Y.shape[-1]) if Y.ndim > 2 else targets
