"""The generic forward and backward passes, written once for every layer.

A pass runs in evaluation mode unless asked for training (``training=True``), and takes
its randomness from an explicit ``key``: dropout needs one in training mode, and batch
normalization uses batch statistics and reports its new running statistics. Nothing is
global: the same model, data, key and mode give the same result.
"""

from __future__ import annotations

from typing import Any

import attrs

from jitnn import _memory, plan, random, tree
from jitnn._checks import describe, float_input
from jitnn.losses import Loss
from jitnn.protocol import Array, Context, Layer

__all__ = ["Trace", "forward", "backward", "value_and_grad", "value_grad_and_update"]


@attrs.frozen(eq=False)
class Trace:
    """What :func:`forward` keeps for :func:`backward`: the model, the pass's
    :class:`jitnn.plan.Record` (every slot's array of the model's plan, each call's per-call
    arguments and residuals), the shape of the model's output, and ``updated_model``: the
    model as the batch left it (new batch-normalization statistics in training mode; the
    model itself otherwise)."""

    model: Layer = attrs.field(repr=False)
    record: plan.Record = attrs.field(repr=False)
    output_shape: tuple[int, ...]
    updated_model: Layer = attrs.field(repr=False)

    @property
    def inputs(self) -> tuple[Array, ...]:
        """Each leaf layer's input, in the order the plan calls them."""
        return tuple(self.record.values[call.x] for call in self.record.plan.calls)


def _updated(model: Layer, leaves: list[Layer], after: list[Layer]) -> Layer:
    """``model`` with the leaves a training batch changed (itself if none changed)."""
    if all(new is old for new, old in zip(after, leaves)):
        return model
    return plan.rebuild(model, iter(after))


def _check_model(model: Any, who: str) -> None:
    if not isinstance(model, Layer):
        raise TypeError(f"{who}: model must be a jitnn layer (for example a Chain), got {type(model).__name__}")


def _context(key: Any, training: Any, who: str) -> Context:
    if not isinstance(training, bool):
        raise TypeError(f"{who}: training must be True or False, got {training!r}")
    if key is not None and not isinstance(key, random.Key):
        raise TypeError(f"{who}: key must be a jitnn.random.Key or None, got {type(key).__name__}")
    return Context(training, key)


def forward(model: Layer, X: Any, *, key: random.Key | None = None, training: bool = False) -> tuple[Array, Trace]:
    """Apply ``model`` to the batch ``X``, keeping each layer's input.

    Returns
    -------
    Y : array, shape ``(n, *model.output_shape(X.shape[1:]))``
    trace : Trace, to hand to :func:`backward`; ``trace.updated_model`` carries new
        running statistics after a training batch
    """
    _check_model(model, "forward")
    _memory.keep_freed_memory()  # once per process: reuse the blocks earlier steps freed
    context = _context(key, training, "forward")
    X = model._input(X)
    lowered = plan.lower(model, X.shape[1:], X.shape[0])
    leaves = [site.layer for site in lowered.sites]
    Y, record, after = plan.run_forward(lowered, leaves, X, context, keep=True)
    if not Y.flags.writeable:  # the output is also a residual (Softmax's): the caller gets their own
        Y = Y.copy()
    return Y, Trace(model, record, Y.shape, _updated(model, leaves, after))


def backward(model: Layer, trace: Trace, dY: Any) -> tuple[Layer, Array]:
    """Walk back through ``model`` once from ``dY = dL/dY``.

    Returns
    -------
    grads : a NEW record of the model's structure whose parameters hold ``dL/dW``
    dX : array, the shape of the model's input, ``dL/dX``
    """
    _check_model(model, "backward")
    _memory.keep_freed_memory()  # once per process: reuse the blocks earlier steps freed
    if not isinstance(trace, Trace):
        raise TypeError(f"backward: trace must be the Trace returned by jitnn.forward, got {type(trace).__name__}")
    if trace.model is not model:
        try:
            tree.check_same_structure(trace.model, model)
        except ValueError as error:
            raise ValueError(f"backward: the trace was made by jitnn.forward with another model ({error})") from None
    dY = float_input(dY, model.dtype, describe(model), "output gradient dY")
    if dY.shape != trace.output_shape:
        raise ValueError(f"backward: dY must have the model output's shape {trace.output_shape}, got {dY.shape}")
    lowered = trace.record.plan
    leaves = [site.layer for site in lowered.sites] if trace.model is model else plan.leaf_layers(model)
    records, dX = plan.run_backward(lowered, leaves, trace.record, dY)
    return plan.rebuild(model, iter(records)), dX


def value_grad_and_update(
    model: Layer, loss: Loss, X: Any, T: Any, *, key: random.Key | None = None, training: bool = True, sample_weight: Any = None
) -> tuple[float, Layer, Layer]:
    """The loss on ``(X, T)`` (its examples weighted by ``sample_weight``, see
    :func:`value_and_grad`), its gradient to every parameter, and the model as the batch
    left it (new running statistics in training mode; ``model`` itself otherwise).

    This is what a training step needs; :func:`value_and_grad` is the same without the
    updated model.
    """
    _check_model(model, "value_and_grad")
    _memory.keep_freed_memory()  # once per process: reuse the blocks earlier steps freed
    if not isinstance(loss, Loss):
        raise TypeError(f"value_and_grad: loss must be a jitnn loss such as jn.SoftmaxCrossEntropy(), got {loss!r}")
    context = _context(key, training, "value_and_grad")
    X = model._input(X)
    if sample_weight is not None:  # checked before the forward pass, naming the function
        sample_weight = loss.weights(X.shape[0], sample_weight, "value_and_grad")[0]
    lowered = plan.lower(model, X.shape[1:], X.shape[0])
    leaves = [site.layer for site in lowered.sites]
    Y, record, after = plan.run_forward(lowered, leaves, X, context, keep=True, input_gradient=False)
    value, dY = loss.value_and_grad(Y, T, sample_weight)
    records, _ = plan.run_backward(lowered, leaves, record, dY, input_gradient=False)
    return value, plan.rebuild(model, iter(records)), _updated(model, leaves, after)


def value_and_grad(
    model: Layer, loss: Loss, X: Any, T: Any, *, key: random.Key | None = None, training: bool = False, sample_weight: Any = None
) -> tuple[float, Layer]:
    """The loss of ``model`` on the batch ``(X, T)`` and its gradient to every parameter.

    ``sample_weight`` (one finite, non-negative weight per example, scikit-learn's meaning)
    makes the loss the weighted mean ``sum_i w_i loss_i / sum_i w_i`` (an integer weight
    counts as that many copies of the example); ``None`` is every weight 1, the plain mean,
    bit for bit.

    Returns
    -------
    value : float, the loss (mean over the batch)
    grads : a NEW record of the model's structure whose parameters hold ``dL/dW``
    """
    value, grads, _ = value_grad_and_update(model, loss, X, T, key=key, training=training, sample_weight=sample_weight)
    return value, grads
