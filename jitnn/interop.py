"""PyTorch's names and layouts for a model's parameters: :func:`state_dict` and :func:`load_state_dict`.

>>> sd = jitnn.interop.state_dict(model)                                    # doctest: +SKIP
>>> torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})  # doctest: +SKIP
>>> model = jitnn.interop.load_state_dict(model, torch_model.state_dict())  # doctest: +SKIP

The names
---------
A :class:`~jitnn.Chain` is a ``torch.nn.Sequential``: its layer at position ``i`` has the
prefix ``"i."``, and chains nest (``"3.0.weight"`` is the weight of the first layer of the
chain at position 3). A layer without parameters or buffers (an activation, ``Dropout``,
``Flatten``, a pooling layer) takes its index and gives no entries, as in PyTorch. A model
that is not a chain is the one module itself (a ``Dense`` gives ``weight`` and ``bias``).

=====================  ==================================================  =====================================================
jitnn layer            PyTorch module                                      entries (PyTorch's name <- jitnn's field)
=====================  ==================================================  =====================================================
Dense                  ``Linear``                                          ``weight`` <- ``W.T`` (out, in), ``bias`` <- ``b``
Conv2D, Conv1D         ``Conv2d``, ``Conv1d``                              ``weight`` <- ``W``, ``bias`` <- ``b`` (the same layout)
BatchNorm              ``BatchNorm1d`` (``(n, C)``, ``(n, C, L)``) or      ``weight`` <- ``scale``, ``bias`` <- ``shift``,
                       ``BatchNorm2d`` (``(n, C, H, W)``)                  ``running_mean``, ``running_var``, ``num_batches_tracked``
LayerNorm              ``LayerNorm``                                       ``weight`` <- ``scale``, ``bias`` <- ``shift``
Embedding              ``Embedding``                                       ``weight`` <- ``table``
RNN, GRU, LSTM         ``RNN``, ``GRU``, ``LSTM`` (one layer,              ``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``,
                       ``batch_first=True``)                               ``bias_hh_l0`` <- the fields without ``_l0``
Bidirectional          the same module with ``bidirectional=True``         the above from ``forward_layer``, and the same names
                                                                           with ``_reverse`` appended from ``reverse_layer``
MultiHeadAttention     ``MultiheadAttention(dim, num_heads,                ``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight``
                       batch_first=True)``                                 <- ``out_proj_weight``, ``out_proj.bias`` <- ``out_proj_bias``
=====================  ==================================================  =====================================================

A state dict holds parameters and buffers only: the configuration (a convolution's stride,
padding and dilation, ``eps``, ``momentum``, ``num_heads``) is not in it, so the PyTorch
module must be built with the configuration of the jitnn layer. How a PyTorch module is
called is not in it either: ``nn.Sequential`` cannot hold a recurrent module or
``MultiheadAttention`` as they are (they return tuples and take three inputs), so a model
built around them calls them itself; a recurrent layer with ``return_sequences=False`` is
PyTorch's ``output[:, -1]`` (``h_n`` of the two directions side by side for a
``Bidirectional``), and ``MultiHeadAttention(causal=True)`` is PyTorch's module called with
the boolean ``attn_mask`` of the upper triangle.

jitnn's ``BatchNorm`` does not count the batches it has seen: :func:`state_dict` gives
``num_batches_tracked`` as 0 (PyTorch reads it only when its ``momentum`` is ``None``, a
cumulative average, which jitnn has not), and :func:`load_state_dict` accepts any value,
or none (as PyTorch does), and ignores it.

What has no PyTorch names
-------------------------
A layer with parameters or buffers outside the table has no PyTorch module whose names
would fit, and both functions refuse it with a ``TypeError`` naming its class and position:
``PositionalEmbedding`` (PyTorch has no module that adds a learned table of positions),
``Residual``, ``Add`` and ``Concatenate`` holding parameters (``nn.Sequential`` has no skip
connections or branches), any user-defined layer, a lone ``RNN``, ``GRU`` or ``LSTM`` with
``reverse=True`` (PyTorch runs a reverse direction only inside a bidirectional module, whose
other direction it lacks), and a ``Bidirectional`` whose two layers differ in kind or size
(PyTorch's two directions are one kind of cell of one size).

What :func:`load_state_dict` checks
-----------------------------------
The checks of :func:`jitnn.load`: every entry the model needs is present (the first missing
one is named), each has exactly the shape the table gives in PyTorch's layout (the name, the
shape expected and found), holds floating-point numbers (converted to the model's dtype:
float16, float32 and float64 alike; anything else is refused, naming the entry), and the
state dict holds nothing else (the first extra entry is named). Nothing is unpickled or
executed: the values are NumPy arrays or PyTorch tensors already in memory.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple, TypeVar

import numpy as np

from jitnn import tree as trees
from jitnn._checks import freeze
from jitnn.chain import Chain
from jitnn.combinators import Add, Concatenate, Residual
from jitnn.io import _preview
from jitnn.layers import (
    GRU, LSTM, RNN, BatchNorm, Bidirectional, Conv1D, Conv2D, Dense, Embedding, LayerNorm, MultiHeadAttention, PositionalEmbedding,
)
from jitnn.protocol import Layer

__all__ = ["state_dict", "load_state_dict"]

_Model = TypeVar("_Model", bound=Layer)


# =========================================================================== the table
class _Name(NamedTuple):
    """One entry of a PyTorch module: its name there, the jitnn field it holds (dotted, from
    the layer; ``""`` for one jitnn does not keep), and whether PyTorch's layout is the
    field's transpose."""

    torch: str
    field: str
    transposed: bool = False


class _Module(NamedTuple):
    """The PyTorch module a jitnn layer class is, and its entries."""

    torch: str
    names: tuple[_Name, ...]


_RECURRENT = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_WEIGHT_BIAS = (_Name("weight", "W"), _Name("bias", "b"))
_AFFINE = (_Name("weight", "scale"), _Name("bias", "shift"))
#: the running statistics, and PyTorch's batch counter, which jitnn does not keep (see the module's notes)
_STATISTICS = (_Name("running_mean", "running_mean"), _Name("running_var", "running_var"), _Name("num_batches_tracked", ""))


def _cell(torch: str, *members: str) -> _Module:
    """A recurrent module of one layer: each direction's four entries, ``_reverse`` for the second."""
    names = tuple(
        _Name(f"{name}_l0{suffix}", f"{member}.{name}" if member else name)
        for member, suffix in zip(members, ("", "_reverse")) for name in _RECURRENT
    )
    return _Module(torch, names)


_TABLE: dict[type, _Module] = {
    Dense: _Module("Linear", (_Name("weight", "W", transposed=True), _Name("bias", "b"))),
    Conv2D: _Module("Conv2d", _WEIGHT_BIAS),
    Conv1D: _Module("Conv1d", _WEIGHT_BIAS),
    BatchNorm: _Module("BatchNorm1d or BatchNorm2d", _AFFINE + _STATISTICS),
    LayerNorm: _Module("LayerNorm", _AFFINE),
    Embedding: _Module("Embedding", (_Name("weight", "table"),)),
    RNN: _cell("RNN(batch_first=True)", ""),
    GRU: _cell("GRU(batch_first=True)", ""),
    LSTM: _cell("LSTM(batch_first=True)", ""),
    Bidirectional: _cell("RNN, GRU or LSTM (batch_first=True, bidirectional=True)", "forward_layer", "reverse_layer"),
    MultiHeadAttention: _Module("MultiheadAttention(batch_first=True)", (
        _Name("in_proj_weight", "in_proj_weight"), _Name("in_proj_bias", "in_proj_bias"),
        _Name("out_proj.weight", "out_proj_weight"), _Name("out_proj.bias", "out_proj_bias"),
    )),
}

#: why a layer with parameters has no PyTorch module, where more can be said than that it is not in the table
_NO_MODULE = {
    PositionalEmbedding: "PyTorch has no module that adds a learned table of positions",
    Residual: "nn.Sequential has no skip connections",
    Add: "nn.Sequential has no branches",
    Concatenate: "nn.Sequential has no branches",
}


class _Entry(NamedTuple):
    """One entry of a model's state dict: its key, the path of the jitnn leaf it holds
    (``""``: none), its layout, and the layer it belongs to, for error messages."""

    key: str
    path: str
    transposed: bool
    owner: str


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path and name else path or name


def _entries(model: Layer, who: str) -> list[_Entry]:
    """Every entry of ``model``'s state dict, in PyTorch's order; ``TypeError`` at the first
    layer that has no PyTorch module."""
    return list(_walk(model, who, "", "", ""))


def _walk(layer: Layer, who: str, where: str, prefix: str, path: str) -> Iterator[_Entry]:
    """The entries of ``layer`` at ``model{where}``, its keys after ``prefix`` and its leaves under ``path``."""
    kind = type(layer)
    if kind is Chain:
        for i, member in enumerate(layer.layers):
            yield from _walk(member, who, f"{where}.layers[{i}]", f"{prefix}{i}.", _join(path, f"layers.{i}"))
        return
    module = _TABLE.get(kind)
    if module is None:
        if not trees.leaves(layer):  # an activation, a pooling layer...: an index and no entries, as in PyTorch
            return
        reason = _NO_MODULE.get(kind, f"{kind.__name__} is not one of the layers that map to PyTorch modules ({_mapped()})")
        raise TypeError(f"{who}: {_here(layer, where)} has parameters and no PyTorch module with these names: {reason}")
    _check_exact(layer, who, where)
    owner = f"{_here(layer, where)}, PyTorch's {module.torch}"
    for name in module.names:
        yield _Entry(prefix + name.torch, _join(path, name.field) if name.field else "", name.transposed, owner)


def _here(layer: Layer, where: str) -> str:
    """``'Dense at model.layers[2]'``; ``'Dense at model'`` for the model itself."""
    return f"{type(layer).__name__} at model{where}"


def _mapped() -> str:
    return ", ".join(cls.__name__ for cls in _TABLE)


def _check_exact(layer: Layer, who: str, where: str) -> None:
    """``TypeError`` for the mapped classes whose configuration PyTorch's module cannot have."""
    here = _here(layer, where)
    if isinstance(layer, (RNN, GRU, LSTM)) and layer.reverse:
        raise TypeError(
            f"{who}: {here} has reverse=True and no PyTorch module with these names: PyTorch runs a reverse direction only "
            f"inside a bidirectional module (jn.Bidirectional of a forward and this reverse layer is one)"
        )
    if isinstance(layer, Bidirectional):
        ahead, back = layer.forward_layer, layer.reverse_layer
        if type(ahead) is not type(back) or ahead.hidden_size != back.hidden_size:
            raise TypeError(
                f"{who}: {here} joins {type(ahead).__name__}(hidden {ahead.hidden_size}) and {type(back).__name__}(hidden "
                f"{back.hidden_size}) and has no PyTorch module with these names: PyTorch's two directions are one kind of "
                f"cell of one size"
            )


def _check_model(model: Any, who: str, name: str) -> None:
    if not isinstance(model, Layer):
        raise TypeError(f"{who}: {name} must be a jitnn layer (for example a Chain made by jn.pipe), got {type(model).__name__}")


# =========================================================================== public API
def state_dict(model: Layer) -> dict[str, np.ndarray]:
    """The parameters and buffers of ``model`` under PyTorch's names, in PyTorch's layouts.

    Parameters
    ----------
    model : jitnn layer
        A ``Chain`` (PyTorch's ``nn.Sequential``; chains nest) or a single layer, of the
        layers in the table of :mod:`jitnn.interop` and layers without parameters.

    Returns
    -------
    dict of str to numpy.ndarray
        What ``torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()},
        strict=True)`` accepts for the equivalent PyTorch model, in PyTorch's order: each
        array a fresh C-contiguous copy in the model's dtype (``num_batches_tracked``: an
        int64 0, jitnn does not count batches).

    Raises
    ------
    TypeError
        ``model`` is not a jitnn layer; a layer with parameters has no PyTorch module with
        these names (the error names its class and position, ``model.layers[2]``).
    """
    _check_model(model, "state_dict", "model")
    leaves = dict(trees.leaves_with_paths(model))
    result: dict[str, np.ndarray] = {}
    for entry in _entries(model, "state_dict"):
        if not entry.path:
            result[entry.key] = np.zeros((), np.int64)
            continue
        leaf = leaves[entry.path]
        result[entry.key] = np.array(leaf.T if entry.transposed else leaf, dtype=leaf.dtype, order="C", copy=True)
    return result


def load_state_dict(like: _Model, state_dict: Mapping[str, Any]) -> _Model:
    """A model of ``like``'s architecture holding the parameters and buffers of a PyTorch state dict.

    Parameters
    ----------
    like : jitnn layer
        A model of the wanted architecture and dtype (a freshly initialised one); its own
        values are not used.
    state_dict : mapping of str to array
        PyTorch's names to NumPy arrays or PyTorch tensors (``torch_model.state_dict()``, or
        what :func:`state_dict` gives), in PyTorch's layouts.

    Returns
    -------
    model
        ``like`` rebuilt with the state dict's values: each array converted to the model's
        dtype (float16, float32 and float64 alike; converting to a narrower dtype rounds),
        laid out as jitnn keeps it, C-contiguous and read-only. ``num_batches_tracked`` is
        ignored, whatever it holds, and may be missing.

    Raises
    ------
    TypeError
        ``like`` is not a jitnn layer, or one of its layers has no PyTorch module with these
        names; ``state_dict`` is not a mapping; an entry is neither a NumPy array nor a
        PyTorch tensor.
    ValueError
        An entry the model needs is missing (the first in PyTorch's order), an entry has
        another shape than PyTorch's module has (the name, expected and found) or does not
        hold floating-point numbers, or the state dict holds an entry the model has no
        place for (the first one).

    Notes
    -----
    Nothing is executed: the values are arrays already in memory; an array of Python
    objects is refused like any other non-floating array.
    """
    who = "load_state_dict"
    _check_model(like, who, "like")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{who}: state_dict must be a mapping of PyTorch's names to arrays (a dict), got {type(state_dict).__name__}")
    entries = _entries(like, who)
    leaves = dict(trees.leaves_with_paths(like))
    names = list(state_dict)
    arrays: dict[str, np.ndarray] = {}
    for entry in entries:
        if entry.key not in state_dict:
            if not entry.path:  # num_batches_tracked: PyTorch, too, loads a state dict without it
                continue
            missing = sum(1 for e in entries if e.path and e.key not in state_dict)
            which = "the one entry" if missing == 1 else f"the first of the {missing} entries"
            raise ValueError(
                f"{who}: the state dict has no entry {entry.key!r} ({entry.owner}), {which} of like missing from it "
                f"(it holds {_preview([str(name) for name in names])})"
            )
        if not entry.path:  # accepted whatever it holds, and ignored
            continue
        value = _as_array(state_dict[entry.key], entry, who)
        leaf = leaves[entry.path]
        expected = leaf.T.shape if entry.transposed else leaf.shape
        if value.shape != expected:
            raise ValueError(f"{who}: the entry {entry.key!r} ({entry.owner}) has shape {value.shape} where {expected} was expected")
        if value.dtype.kind != "f":
            raise ValueError(
                f"{who}: the entry {entry.key!r} ({entry.owner}) has dtype {value.dtype} where floating-point numbers were "
                f"expected (they become {leaf.dtype})"
            )
        arrays[entry.path] = freeze(np.array(value.T if entry.transposed else value, dtype=leaf.dtype, order="C", copy=True))
    expected_keys = {entry.key for entry in entries}
    extra = [name for name in names if name not in expected_keys]
    if extra:
        raise ValueError(
            f"{who}: the state dict holds an entry {extra[0]!r} that like has no parameter or buffer for "
            f"({len(extra)} such entr{'ies' if len(extra) > 1 else 'y'}: {_preview([str(name) for name in extra])})"
        )
    return trees.unflatten(like, [arrays[path] for path in leaves])


def _as_array(value: Any, entry: _Entry, who: str) -> np.ndarray:
    """``value`` as a NumPy array: an array as it is, a PyTorch tensor through
    ``.detach().cpu().numpy()`` (PyTorch is already imported wherever a tensor exists)."""
    if isinstance(value, np.ndarray):
        return value
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        try:
            return value.detach().cpu().numpy()
        except (TypeError, RuntimeError) as error:  # a dtype NumPy has no equivalent of (bfloat16)
            raise TypeError(f"{who}: the entry {entry.key!r} ({entry.owner}) cannot be read as a NumPy array: {error}") from error
    raise TypeError(f"{who}: the entry {entry.key!r} ({entry.owner}) must be a NumPy array or a PyTorch tensor, got {type(value).__name__}")
