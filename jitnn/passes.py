"""The generic forward and backward passes, written once for every layer."""

from __future__ import annotations

from typing import Any

import attrs

from jitnn._checks import describe, float_input
from jitnn import tree
from jitnn.losses import Loss
from jitnn.protocol import Array, Layer

__all__ = ["Trace", "forward", "backward", "value_and_grad"]


@attrs.frozen(eq=False)
class Trace:
    """What :func:`forward` keeps for :func:`backward`: the model, every layer's input
    (nested like the model) and the shape of the model's output."""

    model: Layer = attrs.field(repr=False)
    inputs: Any = attrs.field(repr=False)
    output_shape: tuple[int, ...]


def _check_model(model: Any, who: str) -> None:
    if not isinstance(model, Layer):
        raise TypeError(f"{who}: model must be a jitnn layer (for example a Chain), got {type(model).__name__}")


def forward(model: Layer, X: Any) -> tuple[Array, Trace]:
    """Apply ``model`` to the batch ``X``, keeping each layer's input.

    Returns
    -------
    Y : array, shape ``(n, *model.output_shape(X.shape[1:]))``
    trace : Trace, to hand to :func:`backward`
    """
    _check_model(model, "forward")
    X = float_input(X, model.dtype, describe(model))
    Y, inputs = model._trace(X, "")
    return Y, Trace(model, inputs, Y.shape)


def backward(model: Layer, trace: Trace, dY: Any) -> tuple[Layer, Array]:
    """Walk back through ``model`` once from ``dY = dL/dY``.

    Returns
    -------
    grads : a NEW record of the model's structure whose parameters hold ``dL/dW``
    dX : array, the shape of the model's input, ``dL/dX``
    """
    _check_model(model, "backward")
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
    return model._backward(trace.inputs, dY, "")


def value_and_grad(model: Layer, loss: Any, X: Any, T: Any) -> tuple[float, Layer]:
    """The loss of ``model`` on the batch ``(X, T)`` and its gradient to every parameter.

    Returns
    -------
    value : float, the loss (mean over the batch)
    grads : a NEW record of the model's structure whose parameters hold ``dL/dW``
    """
    _check_model(model, "value_and_grad")
    if not isinstance(loss, Loss):
        raise TypeError(f"value_and_grad: loss must be a jitnn loss such as jn.SoftmaxCrossEntropy(), got {loss!r}")
    X = float_input(X, model.dtype, describe(model))
    Y, inputs = model._trace(X, "")
    value, dY = loss.value_and_grad(Y, T)
    grads, _ = model._backward(inputs, dY, "", need_input_grad=False)
    return value, grads
