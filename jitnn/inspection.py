"""A table of a model's layers: position, configuration, output shape and size.

>>> k1, k2 = jitnn.random.split(jitnn.random.key(0))
>>> model = jitnn.pipe(jitnn.Dense.init(k1, 784, 256), jitnn.ReLU(), jitnn.Dense.init(k2, 256, 10))
>>> print(summary(model, (784,)))
Chain, per-example input (784,), float32
Position   Layer              Output shape  Parameters  Buffers      Size
---------  -----------------  ------------  ----------  -------  --------
layers[0]  Dense(784 -> 256)  (256,)           200,960        0  785.0 KB
layers[1]  ReLU               (256,)                 0        0       0 B
layers[2]  Dense(256 -> 10)   (10,)              2,570        0   10.0 KB
-------------------------------------------------------------------------
Trainable parameters: 203,530
Buffer values:        0
Size:                 795.0 KB (814,120 bytes)
Output shape:         (10,) per example

The table follows the model's structure: a composite layer (``Chain``, ``Residual``,
``Concatenate``, ``Add``) is a row showing its members' totals, with its members indented
under it; a top-level ``Chain`` is the table itself. Shapes are per example (without the
batch axis) and are found with the layers' shape rules alone: nothing is run.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from jitnn import validate
from jitnn._checks import describe
from jitnn.chain import Chain
from jitnn.combinators import Residual, _Branches
from jitnn.layers.recurrent import Bidirectional
from jitnn.passes import _check_model
from jitnn.protocol import Composite, Layer

__all__ = ["Summary", "SummaryRow", "summary"]

Shape = tuple[int, ...]


@attrs.frozen
class SummaryRow:
    """One layer of a :class:`Summary`.

    Attributes
    ----------
    position : str
        Where the layer sits in the model, as in error messages without the leading
        ``model.``: ``"layers[2]"``, ``"layers[1].inner.layers[0]"``; ``""`` for the model
        itself when it is a row (a model that is not a ``Chain``).
    depth : int
        Indentation: 0 for the top-level rows, one more for each composite around the layer.
    type_name : str
        The layer's class name, ``"Conv2D"``.
    label : str
        What the layer's :meth:`~jitnn.Layer.label` gives: the class name with a short
        configuration, ``"Conv2D(1 -> 16, 3x3, stride 1, padding 1)"``; the class name alone
        for a layer that does not override it (no configuration to show, or a user's layer).
    output_shape : tuple of int or None
        The per-example output shape; ``None`` for the members of a composite layer whose
        members' inputs jitnn cannot know (a user's own composite; its own row has a shape).
    params : int
        Trainable parameters (values in the parameter fields), the members' included.
    buffers : int
        Values in the buffer fields (running statistics: saved, never trained).
    nbytes : int
        Bytes held by the parameters and buffers.
    composite : bool
        Whether the layer is made of layers (its members are the rows below it, one deeper).
    """

    position: str
    depth: int
    type_name: str
    label: str
    output_shape: Shape | None
    params: int
    buffers: int
    nbytes: int
    composite: bool


@attrs.frozen
class Summary:
    """The table made by :func:`summary`; ``str(summary)`` renders it, aligned.

    Attributes
    ----------
    model_name : str
        The model's class name.
    input_shape, output_shape : tuple of int
        The model's per-example input and output shapes.
    dtype : numpy dtype or None
        The parameters' dtype (``None`` for a model without parameters).
    rows : tuple of SummaryRow
        One per layer, in order, each composite followed by its members.
    params, buffers, nbytes : int
        Totals over the whole model: trainable parameters, buffer values and their bytes.
    """

    model_name: str
    input_shape: Shape
    output_shape: Shape
    dtype: np.dtype | None
    rows: tuple[SummaryRow, ...]
    params: int
    buffers: int
    nbytes: int

    def __repr__(self) -> str:
        return (
            f"Summary({self.model_name}, {len(self.rows)} rows, params={self.params}, buffers={self.buffers}, "
            f"nbytes={self.nbytes}, output_shape={self.output_shape})"
        )

    def __str__(self) -> str:
        header = ("Position", "Layer", "Output shape", "Parameters", "Buffers", "Size")
        right = (False, False, False, True, True, True)
        cells = [
            (
                row.position or "model",
                "  " * row.depth + row.label,
                "?" if row.output_shape is None else str(row.output_shape),
                f"{row.params:,}",
                f"{row.buffers:,}",
                _format_bytes(row.nbytes),
            )
            for row in self.rows
        ]
        widths = [max(len(values[i]) for values in [header, *cells]) for i in range(len(header))]

        def line(values: tuple[str, ...]) -> str:
            padded = (v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right))
            return "  ".join(padded).rstrip()

        underline = line(tuple("-" * w for w in widths))
        title = f"{self.model_name}, per-example input {self.input_shape}" + (f", {self.dtype}" if self.dtype is not None else "")
        footer = [
            f"Trainable parameters: {self.params:,}",
            f"Buffer values:        {self.buffers:,}",
            f"Size:                 {_format_bytes(self.nbytes)}" + (f" ({self.nbytes:,} bytes)" if self.nbytes >= 1024 else ""),
            f"Output shape:         {self.output_shape} per example",
        ]
        return "\n".join([title, line(header), underline, *map(line, cells), "-" * len(underline), *footer])


def _format_bytes(count: int) -> str:
    """``count`` bytes in human units, as Keras does (1 KB = 1024 bytes): ``"918.5 KB"``."""
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in ("KB", "MB", "GB"):
        value /= 1024
        if round(value, 1) < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TB"


# --------------------------------------------------------------------------- the walk
def _output_shape(layer: Layer, shape: Shape, where: str) -> Shape:
    """``layer.output_shape(shape)``; its ValueError named with the layer's position."""
    try:
        return tuple(layer.output_shape(shape))
    except ValueError as error:
        raise ValueError(f"summary: {describe(layer, where)} does not accept per-example input shape {shape}: {error}") from None


def _walk_members(composite: Composite, shape: Shape | None, where: str, depth: int, rows: list[SummaryRow]) -> tuple[list[SummaryRow], Shape | None]:
    """Append the rows of ``composite``'s members (at ``depth``); return the members' own
    rows and, for a ``Chain``, the shape its last member gives.

    A ``Chain`` hands each member the previous member's output; ``Residual``,
    ``Concatenate``, ``Add`` and ``Bidirectional`` hand every member their own input; the
    members of any other composite get no shape (jitnn cannot know how it routes its input)."""
    sequential = isinstance(composite, Chain)
    member_shape = shape if sequential or isinstance(composite, (Residual, _Branches, Bidirectional)) else None
    own_rows = []
    for suffix, member in composite.named_members():
        row = _walk(member, member_shape, where + suffix, depth, rows)
        own_rows.append(row)
        if sequential:
            member_shape = row.output_shape
    return own_rows, (member_shape if sequential else None)


def _walk(layer: Layer, shape: Shape | None, where: str, depth: int, rows: list[SummaryRow]) -> SummaryRow:
    """Append the row of ``layer`` (given its per-example input ``shape``, or ``None`` if
    unknown) and, for a composite, its members' rows after it; return the layer's row."""
    index = len(rows)
    rows.append(None)  # type: ignore[arg-type]  # the layer's row, filled in once its members are counted
    members: list[SummaryRow] = []
    out: Shape | None = None
    if isinstance(layer, Composite):
        members, out = _walk_members(layer, shape, where, depth + 1, rows)
    if shape is not None and not isinstance(layer, Chain):
        out = _output_shape(layer, shape, where)
    counts = _counts(layer, members)
    rows[index] = SummaryRow(where[1:], depth, type(layer).__name__, layer.label(), out, *counts, isinstance(layer, Composite))
    return rows[index]


def _counts(layer: Layer, member_rows: list[SummaryRow]) -> tuple[int, int, int]:
    """(parameter values, buffer values, their bytes) of the layer's own fields
    (``param_names``, ``buffer_names``) plus those of its members' rows."""
    params = [getattr(layer, name) for name in layer.param_names]
    buffers = [getattr(layer, name) for name in layer.buffer_names]
    return (
        sum(a.size for a in params) + sum(row.params for row in member_rows),
        sum(a.size for a in buffers) + sum(row.buffers for row in member_rows),
        sum(a.nbytes for a in params + buffers) + sum(row.nbytes for row in member_rows),
    )


def _check_input_shape(input_shape: Any) -> Shape:
    if validate.is_integer(input_shape):
        raise TypeError(f"summary: input_shape must be a tuple of positive integers, got the integer {input_shape}; write ({input_shape},)")
    if not isinstance(input_shape, tuple) or not all(validate.is_integer(s) for s in input_shape):
        raise TypeError(
            f"summary: input_shape must be a tuple of positive integers (the shape of one example, without the batch axis), "
            f"got {input_shape!r}"
        )
    if any(s < 1 for s in input_shape):
        raise ValueError(f"summary: input_shape must hold positive sizes, got {input_shape}")
    return tuple(int(s) for s in input_shape)


def _accepts(model: Layer, shape: Shape) -> bool:
    """Whether ``model`` accepts ``shape`` (for a hint only: any error means no, so the
    hint can never replace the error being reported)."""
    try:
        model.output_shape(shape)
    except Exception:  # noqa: BLE001  # any error means no: the hint never replaces the error
        return False
    return True


def summary(model: Layer, input_shape: tuple[int, ...]) -> Summary:
    """The table of ``model``'s layers for inputs of per-example shape ``input_shape``.

    Parameters
    ----------
    model : Layer
        Any layer: a ``Chain`` (its layers are the top-level rows), a combinator, a single
        layer, a user's own layer.
    input_shape : tuple of positive int
        The shape of one example, without the batch axis: ``(784,)`` for batches
        ``(n, 784)``, ``(1, 28, 28)`` for ``(n, 1, 28, 28)``, ``(seq_len,)`` for index
        batches ``(n, seq_len)`` of an embedding; ``()`` for one value per example.

    Returns
    -------
    Summary
        One :class:`SummaryRow` per layer and the model's totals; ``print`` it for the table.

    Raises
    ------
    TypeError
        If ``model`` is not a layer or ``input_shape`` not a tuple of integers.
    ValueError
        If a size is not positive, or a layer does not accept the shape it would be given
        (the message names the layer, its position and both shapes).
    """
    _check_model(model, "summary")
    shape = _check_input_shape(input_shape)
    rows: list[SummaryRow] = []
    try:
        if isinstance(model, Chain):
            top, out = _walk_members(model, shape, "", 0, rows)
            totals = _counts(model, top)
        else:
            row = _walk(model, shape, "", 0, rows)
            out, totals = row.output_shape, (row.params, row.buffers, row.nbytes)
    except ValueError as error:
        if shape and _accepts(model, shape[1:]):
            raise ValueError(
                f"{error} (input_shape is the shape of one example, without the batch axis; "
                f"if {shape} includes the batch axis, the model accepts {shape[1:]})"
            ) from None
        raise
    return Summary(type(model).__name__, shape, out, model.dtype, tuple(rows), *totals)  # type: ignore[arg-type]  # out is known
