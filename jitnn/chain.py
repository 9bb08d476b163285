"""Composition: ``pipe`` and ``compose`` build a ``Chain``, which is itself a layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from jitnn.protocol import Composite, Layer, layer

__all__ = ["Chain", "pipe", "compose"]

T = TypeVar("T")


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

    def lower(self, plan: Any, x: Any) -> Any:
        for i in range(len(self.layers)):
            x = plan.apply(i, x)
        return x


def with_stated_shape(rule: Callable[[tuple[int, ...]], T], shape: tuple[int, ...]) -> T:
    """``rule(shape)`` for a stated per-example input shape, or for that shape behind one or
    two leading axes if that is what the rule accepts.

    A layer that acts on the last axis (``Dense``, ``LayerNorm``: ``rows = True``) states
    ``(n_in,)`` but takes ``(..., n_in)`` too, so a composition is refused only if no rank
    fits (a ``Dense`` width mismatch does not fit any). ``ValueError``: the first error."""
    try:
        return rule(shape)
    except ValueError as error:
        first = error
    for leading in ((1,), (1, 1)):
        try:
            return rule(leading + tuple(shape))
        except ValueError:
            pass
    raise first


def _check_composition(layers: tuple[Layer, ...]) -> None:
    """Follow the shape rules through ``layers``, from the first layer that states its input
    shape, so that a mismatch is reported when composing, before anything runs."""
    for start, first in enumerate(layers):
        if first.input_shape is not None:
            with_stated_shape(lambda shape, start=start: _follow(layers, start, shape), first.input_shape)
            return


def _follow(layers: tuple[Layer, ...], start: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape ``layers[start:]`` give for ``shape``; ``ValueError`` naming both layers at a mismatch."""
    for i in range(start, len(layers)):
        member = layers[i]
        try:
            shape = member.output_shape(shape)
        except ValueError as error:
            before = f"layers[{i - 1}] ({type(layers[i - 1]).__name__}) produces {shape}" if i > start else ""
            raise ValueError(f"cannot compose: layers[{i}] ({type(member).__name__}) {error}; {before}".rstrip("; ")) from None
    return shape


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
