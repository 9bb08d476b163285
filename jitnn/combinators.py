"""Combinators beyond ``Chain``: ``Residual``, ``Concatenate`` and ``Add``. Each is a layer
made of layers; its gradient record has its own type, holding the members' records."""

from __future__ import annotations

import numbers
from typing import Any

import attrs
import numpy as np

from jitnn.chain import _as_layers
from jitnn.protocol import EVALUATION, Array, Composite, Context, Layer, layer

__all__ = ["Residual", "Concatenate", "Parallel", "Add"]


def _check_inner(record: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, Layer):
        raise TypeError(f"Residual: inner must be a jitnn layer, got {type(value).__name__}")


def _axis(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Concatenate: axis must be an integer, got {value!r}")
    return int(value)


@layer
class Residual(Composite):
    """``Y = X + f(X)``; ``f`` must keep its input's shape."""

    inner: Layer = attrs.field(validator=_check_inner)

    def __attrs_post_init__(self) -> None:
        shape = self.inner.input_shape
        if shape is not None:
            out = self.inner.output_shape(shape)
            if out != shape:
                raise ValueError(f"Residual: the inner layer must keep its input's shape, but it maps {shape} to {out}")

    @property
    def members(self) -> tuple[Layer, ...]:
        return (self.inner,)

    def named_members(self) -> tuple[tuple[str, Layer], ...]:
        return ((".inner", self.inner),)

    @property
    def dtype(self) -> np.dtype | None:
        return self.inner.dtype

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return self.inner.input_shape

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        out = self.inner.output_shape(input_shape)
        if out != tuple(input_shape):
            raise ValueError(f"needs an inner layer that keeps the shape {tuple(input_shape)}, but it gives {out}")
        return out

    def _forward(self, X: Array, where: str, context: Context = EVALUATION) -> Array:
        return X + self.inner._forward(X, where + ".inner", context)

    def _trace(self, X: Array, where: str, context: Context = EVALUATION) -> tuple[Array, Any, Residual]:
        Y, trace, inner = self.inner._trace(X, where + ".inner", context)
        return X + Y, trace, (self if inner is self.inner else Residual(inner))

    def _backward(self, trace: Any, dY: Array, where: str, need_input_grad: bool = True) -> tuple[Residual, Array | None]:
        grads, dX = self.inner._backward(trace, dY, where + ".inner", need_input_grad)
        return Residual(grads), (dY + dX if need_input_grad else None)

    def _emit(self, source: Any, x: str, shape: tuple[int, ...], where: str) -> tuple[str, tuple[int, ...], Any]:
        inner, out, inner_backward = source.layer(self.inner, x, shape, where + ".inner")
        self.output_shape(shape)
        y = source.variable("y")
        source.line(f"{y} = {x} + {inner}")

        def backward(dy: str, need_input_grad: bool) -> str | None:
            dx = inner_backward(dy, need_input_grad)
            if not need_input_grad:
                return None
            total = source.variable("dx")
            source.line(f"{total} = {dy} + {dx}")
            return total

        return y, out, backward



class _Branches(Composite):
    """Base of the layers that hand the same input to several branches and join their
    outputs; subclasses say how outputs are joined and how dY is split among branches."""

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
                self.output_shape(shape)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None

    @property
    def members(self) -> tuple[Layer, ...]:
        return self.branches

    def named_members(self) -> tuple[tuple[str, Layer], ...]:
        return tuple((f".branches[{i}]", branch) for i, branch in enumerate(self.branches))

    @property
    def dtype(self) -> np.dtype | None:
        for branch in self.branches:
            if branch.dtype is not None:
                return branch.dtype
        return None

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

    def _forward(self, X: Array, where: str, context: Context = EVALUATION) -> Array:
        return self._join([branch._forward(X, where + suffix, context) for suffix, branch in self.named_members()])

    def _trace(self, X: Array, where: str, context: Context = EVALUATION) -> tuple[Array, Any, Any]:
        outputs, traces, updated = zip(*(branch._trace(X, where + suffix, context) for suffix, branch in self.named_members()))
        same = all(after is branch for after, branch in zip(updated, self.branches))
        return self._join(list(outputs)), (traces, [Y.shape[1:] for Y in outputs]), (self if same else attrs.evolve(self, branches=updated))

    def _backward(self, trace: Any, dY: Array, where: str, need_input_grad: bool = True) -> tuple[Any, Array | None]:
        traces, shapes = trace
        grads, dX = [], None
        for (suffix, branch), branch_trace, branch_dY in zip(self.named_members(), traces, self._split(dY, shapes)):
            g, d = branch._backward(branch_trace, branch_dY, where + suffix, need_input_grad)
            grads.append(g)
            if need_input_grad:
                dX = d if dX is None else dX + d
        return attrs.evolve(self, branches=tuple(grads)), dX

    def _emit(self, source: Any, x: str, shape: tuple[int, ...], where: str) -> tuple[str, tuple[int, ...], Any]:
        outputs, shapes, backwards = zip(*(source.layer(branch, x, shape, where + suffix) for suffix, branch in self.named_members()))
        out = self.output_shape(shape)
        y = source.variable("y")
        source.line(f"{y} = {self._join_source(list(outputs), list(shapes))}")

        def backward(dy: str, need_input_grad: bool) -> str | None:
            dxs = []
            for part, branch_backward in zip(self._split_source(source, dy, list(shapes)), backwards):
                dxs.append(branch_backward(part, need_input_grad))
            if not need_input_grad:
                return None
            dx = source.variable("dx")
            source.line(f"{dx} = {' + '.join(dxs)}")
            return dx

        return y, out, backward



@layer
class Concatenate(_Branches):
    """The same input to every branch; their outputs joined along per-example ``axis``
    (default 0: the features of ``(n, k)`` outputs, the channels of ``(n, C, H, W)``)."""

    branches: tuple[Layer, ...] = attrs.field(converter=_as_layers)
    axis: int = attrs.field(default=0, converter=_axis)

    def __attrs_post_init__(self) -> None:
        self._validate()

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shapes = self._branch_shapes(input_shape)
        rank = len(shapes[0])
        if not -rank <= self.axis < rank:
            raise ValueError(f"axis {self.axis} is out of range for per-example outputs of shape {shapes[0]}")
        axis = self.axis % rank
        rest = [s[:axis] + s[axis + 1 :] for s in shapes]
        if any(len(s) != rank for s in shapes) or any(r != rest[0] for r in rest):
            raise ValueError(f"branch outputs {shapes} cannot be joined along per-example axis {self.axis}")
        return shapes[0][:axis] + (sum(s[axis] for s in shapes),) + shapes[0][axis + 1 :]

    def _join(self, outputs: list[Array]) -> Array:
        return np.concatenate(outputs, axis=self.axis % (outputs[0].ndim - 1) + 1)

    def _join_source(self, outputs: list[str], shapes: list[tuple[int, ...]]) -> str:
        return f"np.concatenate(({', '.join(outputs)},), axis={self.axis % len(shapes[0]) + 1})"

    def _split_source(self, source: Any, dy: str, shapes: list[tuple[int, ...]]) -> list[str]:
        axis = self.axis % len(shapes[0])
        bounds = np.cumsum([0] + [s[axis] for s in shapes])
        parts = []
        for start, stop in zip(bounds[:-1], bounds[1:]):
            part = source.variable("dy")
            source.line(f"{part} = np.ascontiguousarray({dy}[{':, ' * (axis + 1)}{start}:{stop}])")
            parts.append(part)
        return parts

    def _split(self, dY: Array, shapes: list[tuple[int, ...]]) -> list[Array]:
        axis = self.axis % len(shapes[0])
        bounds = np.cumsum([s[axis] for s in shapes])[:-1]
        return [np.ascontiguousarray(part) for part in np.split(dY, bounds, axis=axis + 1)]


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

    def _join(self, outputs: list[Array]) -> Array:
        total = outputs[0].copy()
        for output in outputs[1:]:
            total += output
        return total

    def _split(self, dY: Array, shapes: list[tuple[int, ...]]) -> list[Array]:
        return [dY] * len(shapes)

    def _join_source(self, outputs: list[str], shapes: list[tuple[int, ...]]) -> str:
        return " + ".join(outputs)

    def _split_source(self, source: Any, dy: str, shapes: list[tuple[int, ...]]) -> list[str]:
        return [dy] * len(shapes)
