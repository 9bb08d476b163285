"""Shape layers: ``Flatten`` and ``Reshape`` change the per-example shape, not the values.

Both copy: the output is a fresh C-contiguous array that shares no memory with the input.
Numba compiles a kernel for each rank of array it is handed, so each layer has kernels of its
own: in its usual place (``Flatten`` after a spatial layer, ``Reshape`` at a model's input)
each is compiled once per dtype.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from jitnn import validate
from jitnn._jit import jit
from jitnn.protocol import Kernels, Layer, layer

__all__ = ["Flatten", "Reshape"]


@jit
def _flatten_forward(X):
    """Y = a copy of X with each example flattened (C order);  X (n, ...) -> Y (n, size / n)."""
    return X.reshape((X.shape[0], -1)).copy()


@jit
def _flatten_grad_input(X, dY):
    """dX = a copy of dY reshaped to X's shape;  dY (n, size / n) -> dX (n, ...)."""
    return dY.reshape(X.shape).copy()


@jit
def _reshape_forward(X, shape):
    """Y = a copy of X reshaped to (n, *shape), one -1 allowed;  X (n, ...) -> Y (n, *shape)."""
    return X.reshape((X.shape[0],) + shape).copy()


@jit
def _reshape_grad_input(X, dY, shape):
    """dX = a copy of dY reshaped to X's shape;  dY (n, *shape) -> dX (n, ...)."""
    return dY.reshape(X.shape).copy()


def _int_tuple(value: Any) -> Any:
    """A tuple of Python ints for an integer or a sequence of integers; anything else unchanged."""
    if validate.is_integer(value):
        return (int(value),)
    if isinstance(value, (tuple, list)) and all(validate.is_integer(v) for v in value):
        return tuple(int(v) for v in value)
    return value


def _check_target(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not (isinstance(value, tuple) and all(type(v) is int for v in value)):
        raise TypeError(f"Reshape: shape must be an integer or a tuple of integers, got {value!r}")
    if any(v < -1 for v in value) or value.count(-1) > 1:
        raise ValueError(f"Reshape: shape {value} must hold non-negative sizes and at most one -1")


@layer
class Reshape(Layer):
    """The per-example shape becomes ``shape`` (one entry may be ``-1``: whatever is left).

    ``Reshape((1, 28, 28))`` turns a batch ``(n, 784)`` into ``(n, 1, 28, 28)``. The batch
    axis is kept and is not part of ``shape``. The per-example sizes must agree.
    """

    shape: tuple[int, ...] = attrs.field(converter=_int_tuple, validator=_check_target)

    kernels = Kernels(_reshape_forward, _reshape_grad_input)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        size, known = math.prod(input_shape), math.prod(v for v in self.shape if v != -1)
        if -1 not in self.shape:
            if known != size:
                raise ValueError(f"cannot reshape per-example shape {tuple(input_shape)} (size {size}) into {self.shape} (size {known})")
            return self.shape
        if known == 0 or size % known:
            raise ValueError(f"cannot reshape per-example shape {tuple(input_shape)} (size {size}) into {self.shape}")
        return tuple(size // known if v == -1 else v for v in self.shape)

    def label(self) -> str:
        """The class name with the short configuration that :func:`jitnn.summary` shows."""
        return f"{type(self).__name__}({self.shape})"


@layer
class Flatten(Layer):
    """Each example flattened to one axis: per-example shape ``(C, H, W)`` becomes ``(C H W,)``
    (C order, as ``torch.flatten(X, 1)``)."""

    kernels = Kernels(_flatten_forward, _flatten_grad_input)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (math.prod(input_shape),)
