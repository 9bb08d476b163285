"""Composition: ``pipe`` and ``compose`` build a ``Chain``, which is itself a layer."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from jitnn.protocol import EVALUATION, Array, Composite, Context, Layer, layer

__all__ = ["Chain", "pipe", "compose"]


def _as_layers(layers: Any) -> tuple[Layer, ...]:
    layers = tuple(layers)
    for i, member in enumerate(layers):
        if not isinstance(member, Layer):
            raise TypeError(f"Chain: layers[{i}] is not a jitnn layer (got {type(member).__name__})")
    return layers


@layer
class Chain(Composite):
    """Layers applied in order, ``layers[0]`` first. A chain is a layer, so chains nest.

    Its gradient record is a ``Chain`` of its members' gradient records.
    """

    layers: tuple[Layer, ...] = attrs.field(converter=_as_layers)

    def __attrs_post_init__(self) -> None:
        if not self.layers:
            raise ValueError("Chain: needs at least one layer")
        dtypes = {member.dtype for member in self.layers if member.dtype is not None}
        if len(dtypes) > 1:
            found = ", ".join(f"layers[{i}] {m.dtype}" for i, m in enumerate(self.layers) if m.dtype is not None)
            raise TypeError(f"Chain: all parameters must share one dtype, got {found}")
        _check_composition(self.layers)

    @property
    def members(self) -> tuple[Layer, ...]:
        return self.layers

    def named_members(self) -> tuple[tuple[str, Layer], ...]:
        return tuple((f".layers[{i}]", member) for i, member in enumerate(self.layers))

    @property
    def dtype(self) -> np.dtype | None:
        for member in self.layers:
            if member.dtype is not None:
                return member.dtype
        return None

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The first stated input shape, if every layer before it keeps that shape."""
        for i, member in enumerate(self.layers):
            shape = member.input_shape
            if shape is not None:
                try:
                    kept = all(before.output_shape(shape) == shape for before in self.layers[:i])
                except ValueError:
                    return None
                return shape if kept else None
        return None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(input_shape)
        for i, member in enumerate(self.layers):
            try:
                shape = member.output_shape(shape)
            except ValueError as error:
                raise ValueError(f"layers[{i}] ({type(member).__name__}) {error}") from None
        return shape

    def _forward(self, X: Array, where: str, context: Context = EVALUATION) -> Array:
        for suffix, member in self.named_members():
            X = member._forward(X, where + suffix, context)
        return X

    def _trace(self, X: Array, where: str, context: Context = EVALUATION) -> tuple[Array, tuple[Any, ...], Chain]:
        traces, updated = [], []
        for suffix, member in self.named_members():
            X, trace, member_after = member._trace(X, where + suffix, context)
            traces.append(trace)
            updated.append(member_after)
        same = all(after is member for after, member in zip(updated, self.layers))
        return X, tuple(traces), (self if same else Chain(updated))

    def _backward(self, trace: Any, dY: Array, where: str, need_input_grad: bool = True) -> tuple[Chain, Array | None]:
        named = self.named_members()
        grads: list[Any] = [None] * len(named)
        for i in range(len(named) - 1, -1, -1):
            suffix, member = named[i]
            grads[i], dY = member._backward(trace[i], dY, where + suffix, need_input_grad or i > 0)
        return Chain(grads), dY

    def _emit(self, source: Any, x: str, shape: tuple[int, ...], where: str) -> tuple[str, tuple[int, ...], Any]:
        backwards = []
        for suffix, member in self.named_members():
            x, shape, backward = source.layer(member, x, shape, where + suffix)
            backwards.append(backward)

        def backward(dy: str, need_input_grad: bool) -> str | None:
            for i in range(len(backwards) - 1, -1, -1):
                dy = backwards[i](dy, need_input_grad or i > 0)
            return dy

        return x, shape, backward


def _check_composition(layers: tuple[Layer, ...]) -> None:
    """Follow the shape rules through ``layers``, from the first layer that states its input
    shape, so that a mismatch is reported when composing, before anything runs."""
    shape: tuple[int, ...] | None = None
    for i, member in enumerate(layers):
        if shape is None:
            shape = member.input_shape
            if shape is None:
                continue
        try:
            shape = member.output_shape(shape)
        except ValueError as error:
            before = f"layers[{i - 1}] ({type(layers[i - 1]).__name__}) produces {shape}" if i else ""
            raise ValueError(f"cannot compose: layers[{i}] ({type(member).__name__}) {error}; {before}".rstrip("; ")) from None


def pipe(*layers: Layer) -> Chain:
    """The layers applied left to right: ``pipe(a, b, c)(X) == c(b(a(X)))``."""
    if not layers:
        raise ValueError("pipe: give at least one layer")
    return Chain(layers)


def compose(*layers: Layer) -> Chain:
    """The layers composed as in mathematics: ``compose(c, b, a) == pipe(a, b, c)``.

    The chain stores the layers in the order they are applied, so error messages count
    positions from the layer applied first (``a`` above is ``layers[0]``).
    """
    if not layers:
        raise ValueError("compose: give at least one layer")
    return Chain(layers[::-1])
