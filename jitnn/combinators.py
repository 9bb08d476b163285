"""Combinators beyond ``Chain``: ``Residual``, ``Concatenate`` and ``Add``. Each is a layer
made of layers; its gradient record has its own type, holding the members' records."""

from __future__ import annotations

from typing import Any

import attrs

from jitnn import validate
from jitnn.chain import _as_layers, with_stated_shape
from jitnn.plan import concat_shape
from jitnn.protocol import Composite, Layer, layer

__all__ = ["Residual", "Concatenate", "Parallel", "Add"]


def _check_inner(record: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, Layer):
        raise TypeError(f"Residual: inner must be a jitnn layer, got {type(value).__name__}")


@layer
class Residual(Composite):
    """``Y = X + f(X)``; ``f`` must keep its input's shape."""

    inner: Layer = attrs.field(validator=_check_inner)

    def __attrs_post_init__(self) -> None:
        if self.inner.input_shape is not None:
            shape, out = with_stated_shape(lambda shape: (tuple(shape), self.inner.output_shape(shape)), self.inner.input_shape)
            if out != shape:
                raise ValueError(f"Residual: the inner layer must keep its input's shape, but it maps {shape} to {out}")

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return self.inner.input_shape

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        out = self.inner.output_shape(input_shape)
        if out != tuple(input_shape):
            raise ValueError(f"needs an inner layer that keeps the shape {tuple(input_shape)}, but it gives {out}")
        return out

    def lower(self, plan: Any, x: Any) -> Any:
        return plan.add(x, plan.apply(self.inner, x))


class _Branches(Composite):
    """Base of the layers that hand the same input to several branches and join their
    outputs; subclasses say how outputs are joined (``_join``)."""

    __slots__ = ()

    def _validate(self) -> None:
        name = type(self).__name__
        if len(self.branches) < 2:
            raise ValueError(f"{name}: needs at least two branches, got {len(self.branches)}")
        dtypes = {b.dtype for b in self.branches if b.dtype is not None}
        if len(dtypes) > 1:
            raise TypeError(f"{name}: all parameters must share one dtype, got {sorted(str(d) for d in dtypes)}")
        stated = {b.input_shape for b in self.branches if b.input_shape is not None}
        if len(stated) > 1:
            found = ", ".join(f"branches[{i}] {b.input_shape}" for i, b in enumerate(self.branches) if b.input_shape is not None)
            raise ValueError(f"{name}: the branches expect different input shapes: {found}")
        shape = self.input_shape
        if shape is not None:
            try:
                with_stated_shape(self.output_shape, shape)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        stated = {b.input_shape for b in self.branches if b.input_shape is not None}
        return stated.pop() if len(stated) == 1 else None

    def _branch_shapes(self, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        shapes = []
        for i, branch in enumerate(self.branches):
            try:
                shapes.append(branch.output_shape(tuple(input_shape)))
            except ValueError as error:
                raise ValueError(f"branches[{i}] ({type(branch).__name__}) {error}") from None
        return shapes

    def lower(self, plan: Any, x: Any) -> Any:
        return self._join(plan, [plan.apply(i, x) for i in range(len(self.branches))])


@layer
class Concatenate(_Branches):
    """The same input to every branch; their outputs joined along per-example ``axis``
    (default 0: the features of ``(n, k)`` outputs, the channels of ``(n, C, H, W)``)."""

    branches: tuple[Layer, ...] = attrs.field(converter=_as_layers)
    axis: int = attrs.field(default=0, converter=validate.converter(validate.integer, "Concatenate", "axis"))

    def __attrs_post_init__(self) -> None:
        self._validate()

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return concat_shape(self._branch_shapes(input_shape), self.axis)[0]

    def _join(self, plan: Any, outputs: list[Any]) -> Any:
        return plan.concat(outputs, self.axis)

    def label(self) -> str:
        """The class name with the short configuration that :func:`jitnn.summary` shows."""
        return f"{type(self).__name__}(axis {self.axis})"


#: Another name for :class:`Concatenate` (branches side by side).
Parallel = Concatenate


@layer
class Add(_Branches):
    """The same input to every branch; their outputs (all of one shape) summed."""

    branches: tuple[Layer, ...] = attrs.field(converter=_as_layers)

    def __attrs_post_init__(self) -> None:
        self._validate()

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shapes = self._branch_shapes(input_shape)
        if any(s != shapes[0] for s in shapes):
            raise ValueError(f"branch outputs must share one shape to be added, got {shapes}")
        return shapes[0]

    def _join(self, plan: Any, outputs: list[Any]) -> Any:
        return plan.add(*outputs)
