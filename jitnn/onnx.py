"""Export to ONNX: the evaluation-mode forward pass of a model as an ONNX graph.

``jn.onnx.export(model, "model.onnx", input_shape)`` writes a model that onnxruntime (or any
ONNX runtime) runs with a dynamic batch axis: batch normalization with its running
statistics, dropout as the identity. It needs the ``onnx`` package (the ``onnx`` extra).

The export reads the model's plan (:mod:`jitnn.plan`), the same one the passes and the
compiled step run, so every combinator, and a composite layer of a user's that lowers to
calls, sums and concatenations, is exported without code of its own: each call of a leaf
layer becomes that layer's nodes, each sum a ``Sum`` node, each concatenation a ``Concat``.
A leaf layer gives its nodes by a method ``to_onnx(self, graph, x, input_shape) -> str``
(see :class:`Graph`); the built-in layers' forms are in this module. A layer without one is
refused, naming it and its position.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import numpy as np

from jitnn import layers as _layers, plan as _plan, validate
from jitnn._checks import check_float_dtype, describe
from jitnn.io import _write_atomically
from jitnn.protocol import Composite, Layer

__all__ = ["DEFAULT_OPSET", "Graph", "export", "to_model"]

#: The opset written by default; LayerNormalization needs 17.
DEFAULT_OPSET = 17
_LOWEST_OPSET = 17


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ImportError("jitnn.onnx needs the onnx package: pip install 'jitnn[onnx]' (or pip install onnx)") from None
    return onnx


class Graph:
    """What an exporter writes into: nodes, and constants (initializers) in the model's dtype.

    A layer's ``to_onnx(self, graph, x, input_shape)`` gets this, the name of its input (a
    tensor ``(batch, *input_shape)``) and its per-example input shape, adds its nodes, and
    returns the name of its output, which must be ``(batch, *self.output_shape(input_shape))``.

    - ``graph.constant(array, hint)``: a constant tensor (converted to ``graph.dtype`` when
      it is floating-point); returns its name.
    - ``graph.node(op_type, inputs, hint, outputs=1, **attributes)``: a node of the default
      ONNX domain; returns its output's name (a tuple of names for ``outputs > 1``).
    - ``graph.dtype`` (the model's NumPy dtype) and ``graph.opset``.
    """

    def __init__(self, dtype: np.dtype, opset: int) -> None:
        self.dtype, self.opset = np.dtype(dtype), opset
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = set()

    def name(self, hint: str) -> str:
        """A tensor name not used yet, from ``hint``."""
        base = "".join(c if c.isalnum() or c in "._" else "_" for c in hint) or "t"
        name, k = base, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    def constant(self, array: Any, hint: str = "constant") -> str:
        array = np.asarray(array)
        if array.dtype.kind == "f":
            array = array.astype(self.dtype)
        name = self.name(hint)
        self.initializers.append(_onnx().numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op_type: str, inputs: list[str], hint: str = "", outputs: int = 1, **attributes: Any) -> Any:
        names = [self.name(f"{hint or op_type}_out{'' if outputs == 1 else k}") for k in range(outputs)]
        self.nodes.append(_onnx().helper.make_node(op_type, inputs, names, name=self.name(hint or op_type), **attributes))
        return names[0] if outputs == 1 else tuple(names)


def to_model(model: Layer, input_shape: Any, *, opset: int | None = None, dtype: Any = None) -> Any:
    """The ONNX ``ModelProto`` of ``model``'s evaluation-mode forward pass for examples of
    shape ``input_shape`` (the batch axis is dynamic, named ``batch``), checked by
    ``onnx.checker``. Input ``input`` (the exported dtype, or int64 indices for a model that
    starts with an :class:`~jitnn.Embedding`), output ``output``. See :func:`export`."""
    onnx = _onnx()
    if not isinstance(model, Layer):
        raise TypeError(f"onnx.export: model must be a jitnn layer, got {type(model).__name__}")
    shape = _input_shape(input_shape)
    opset = DEFAULT_OPSET if opset is None else validate.integer(opset, "onnx.export", "opset")
    if opset < _LOWEST_OPSET:
        raise ValueError(f"onnx.export: opset must be at least {_LOWEST_OPSET} (LayerNormalization), got {opset}")
    try:
        lowered = _plan.lower(model, shape)
    except (TypeError, ValueError) as error:
        raise ValueError(f"onnx.export: {describe(model)} does not take examples of shape {shape}: {error}") from None
    dtype = np.dtype(model.dtype or np.float32) if dtype is None else check_float_dtype(dtype, "onnx.export")
    graph = Graph(dtype, opset)
    indices = _takes_indices(model)
    names: dict[int, str] = {0: "input"}
    graph._names.update({"input", "output"})
    for op in lowered.ops:
        if isinstance(op, _plan.Call):
            site = lowered.sites[op.site]
            names[op.y] = _leaf(graph, site.layer, site.where, names[op.x], lowered.slots[op.x], lowered.slots[op.y])
        elif isinstance(op, _plan.Sum):
            names[op.y] = graph.node("Sum", [names[x] for x in op.xs], "sum")
        else:
            names[op.y] = graph.node("Concat", [names[x] for x in op.xs], "concat", axis=op.axis + 1)
    graph.nodes.append(onnx.helper.make_node("Identity", [names[lowered.output]], ["output"], name=graph.name("output_identity")))
    element = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(np.int64) if indices else dtype)
    inputs = [onnx.helper.make_tensor_value_info("input", element, ["batch", *shape])]
    outputs = [onnx.helper.make_tensor_value_info("output", onnx.helper.np_dtype_to_tensor_dtype(dtype),
                                                  ["batch", *lowered.slots[lowered.output]])]
    body = onnx.helper.make_graph(graph.nodes, "jitnn", inputs, outputs, graph.initializers)
    opsets = [onnx.helper.make_opsetid("", opset)]
    proto = onnx.helper.make_model(body, opset_imports=opsets, producer_name="jitnn",
                                   ir_version=onnx.helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export(model: Layer, path: str | os.PathLike[str], input_shape: Any, *, opset: int | None = None, dtype: Any = None) -> None:
    """Write ``model``'s evaluation-mode forward pass to ``path`` as an ONNX model.

    Parameters
    ----------
    model : a jitnn model of built-in layers and combinators, or of layers of your own that
        give ``to_onnx`` (see :class:`Graph`)
    path : where to write (atomically: a complete file or none)
    input_shape : the shape of one example, without the batch axis (``(784,)``, ``(1, 28,
        28)``); the exported model takes any batch size
    opset : the ONNX opset (default :data:`DEFAULT_OPSET`, at least 17)
    dtype : the exported model's floating-point dtype: the model's own by default, or
        float32 or float64 (the parameters are converted). onnxruntime's CPU provider has
        float64 kernels for fewer operators than float32 ones (none for ``Erf``, so none for
        GELU); ``dtype=np.float32`` exports a float64 model for it.

    Raises
    ------
    TypeError
        A layer without an ONNX form (named, with its position).
    ValueError
        ``input_shape`` does not fit the model, or a bad opset.
    ImportError
        Without the ``onnx`` package.
    """
    proto = to_model(model, input_shape, opset=opset, dtype=dtype)
    data = proto.SerializeToString()
    _write_atomically(os.fspath(path), lambda file: file.write(data))  # as jn.save writes


def _input_shape(value: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in (value if isinstance(value, (tuple, list)) else (value,)))
    except (TypeError, ValueError):
        raise TypeError(f"onnx.export: input_shape must be a tuple of positive ints (one example's shape), got {value!r}") from None
    if not shape or any(v < 1 for v in shape):
        raise ValueError(f"onnx.export: input_shape must be a non-empty tuple of positive ints (one example's shape), got {value!r}")
    return shape


def _takes_indices(model: Layer) -> bool:
    """Whether the model's first layer takes indices (an embedding), not floating-point data."""
    first = model
    while isinstance(first, Composite):
        first = first._first_member()
    return type(first)._input is not Layer._input


def _leaf(graph: Graph, layer: Layer, where: str, x: str, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> str:
    own = getattr(layer, "to_onnx", None)
    exporter: Callable[..., str] | None = _EXPORTERS.get(type(layer))
    if own is not None:
        return own(graph, x, input_shape)
    if exporter is None:
        place = f" at model{where}" if where else ""
        raise TypeError(f"onnx.export: {type(layer).__name__}{place} has no ONNX form; give the class a method "
                        "to_onnx(self, graph, x, input_shape) -> output name (see jitnn.onnx.Graph)")
    return exporter(layer, graph, x, input_shape, output_shape)


# --------------------------------------------------------------------------- the built-in layers
def _dense(layer: Any, graph: Graph, x: str, shape: Any, out: Any) -> str:
    """``Gemm`` on a batch of vectors (the bias fused, as runtimes like it); ``MatMul`` and
    ``Add`` where there are more axes (a Dense on every step of a sequence)."""
    W, b = graph.constant(layer.W, "dense.W"), graph.constant(layer.b, "dense.b")
    if len(shape) == 1:
        return graph.node("Gemm", [x, W, b], "dense")
    return graph.node("Add", [graph.node("MatMul", [x, W], "dense_matmul"), b], "dense_bias")


def _unary(op: str, **attributes: Any) -> Callable[..., str]:
    return lambda layer, graph, x, shape, out: graph.node(op, [x], op.lower(), **attributes)


def _leaky_relu(layer: Any, graph: Graph, x: str, shape: Any, out: Any) -> str:
    return graph.node("LeakyRelu", [x], "leaky_relu", alpha=float(layer.negative_slope))


def _gelu(layer: Any, graph: Graph, x: str, shape: Any, out: Any) -> str:
    """The exact GELU, ``x Phi(x) = x (1 + erf(x / sqrt 2)) / 2``, from primitives (Gelu is opset 20)."""
    scaled = graph.node("Div", [x, graph.constant(np.array(math.sqrt(2.0)), "sqrt2")], "gelu_scale")
    erf = graph.node("Erf", [scaled], "gelu_erf")
    shifted = graph.node("Add", [erf, graph.constant(np.array(1.0), "one")], "gelu_shift")
    product = graph.node("Mul", [x, shifted], "gelu_mul")
    return graph.node("Mul", [product, graph.constant(np.array(0.5), "half")], "gelu_half")


def _softmax(layer: Any, graph: Graph, x: str, shape: Any, out: Any) -> str:
    return graph.node("Softmax", [x], "softmax", axis=-1)


def _conv(layer: Any, graph: Graph, x: str, shape: Any, out: Any) -> str:
    pairs = layer.W.ndim == 4  # Conv2D's configuration is pairs, Conv1D's ints
    as_list = (lambda v: [int(a) for a in v]) if pairs else (lambda v: [int(v)])
    padding = as_list(layer.padding)
    return graph.node("Conv", [x, graph.constant(layer.W, "conv.W"), graph.constant(layer.b, "conv.b")], "conv",
                      kernel_shape=list(layer.W.shape[2:]), strides=as_list(layer.stride), dilations=as_list(layer.dilation),
                      pads=padding + padding)


def _pool(op: str, **attributes: Any) -> Callable[..., str]:
    def export(layer: Any, graph: Graph, x: str, shape: Any, out: Any) -> str:
        as_list = (lambda v: [int(a) for a in v]) if isinstance(layer.kernel_size, tuple) else (lambda v: [int(v)])
        padding = as_list(layer.padding)
        return graph.node(op, [x], op.lower(), kernel_shape=as_list(layer.kernel_size), strides=as_list(layer.stride),
                          pads=padding + padding, **attributes)

    return export


def _global_avg_pool(layer: Any, graph: Graph, x: str, shape: Any, out: Any) -> str:
    pooled = graph.node("GlobalAveragePool", [x], "global_avg_pool")
    return graph.node("Flatten", [pooled], "global_avg_pool_flatten", axis=1)


def _batch_norm(layer: Any, graph: Graph, x: str, shape: Any, out: Any) -> str:
    inputs = [x] + [graph.constant(getattr(layer, name), f"batch_norm.{name}") for name in ("scale", "shift", "running_mean", "running_var")]
    return graph.node("BatchNormalization", inputs, "batch_norm", epsilon=float(layer.eps))


def _layer_norm(layer: Any, graph: Graph, x: str, shape: Any, out: Any) -> str:
    inputs = [x, graph.constant(layer.scale, "layer_norm.scale"), graph.constant(layer.shift, "layer_norm.shift")]
    return graph.node("LayerNormalization", inputs, "layer_norm", axis=-1, epsilon=float(layer.eps))


def _embedding(layer: Any, graph: Graph, x: str, shape: Any, out: Any) -> str:
    return graph.node("Gather", [graph.constant(layer.table, "embedding.table"), x], "embedding", axis=0)


def _positional(layer: Any, graph: Graph, x: str, shape: Any, out: Any) -> str:
    return graph.node("Add", [x, graph.constant(layer.table[: shape[0]], "positional.table")], "positional")


def _reshape(layer: Any, graph: Graph, x: str, shape: Any, out: Any) -> str:
    return graph.node("Reshape", [x, graph.constant(np.array([-1, *out], np.int64), "reshape.shape")], "reshape")


def _flatten(layer: Any, graph: Graph, x: str, shape: Any, out: Any) -> str:
    return graph.node("Flatten", [x], "flatten", axis=1)


def _identity(layer: Any, graph: Graph, x: str, shape: Any, out: Any) -> str:
    return graph.node("Identity", [x], "identity")


def _multi_head_attention(layer: Any, graph: Graph, x: str, shape: Any, out: Any) -> str:
    """Self-attention written out: the three projections, the heads ``(n, H, T, h)``, the
    scaled scores with the causal mask added (``-inf`` above the diagonal), their softmax,
    the heads side by side again and the output projection."""
    (T, d), H = shape, int(layer.num_heads)
    h = d // H
    Wi, bi = np.asarray(layer.in_proj_weight), np.asarray(layer.in_proj_bias)

    def projection(k: int, name: str) -> str:
        product = graph.node("MatMul", [x, graph.constant(Wi[k * d : (k + 1) * d].T, f"attention.W{name}")], f"attention_{name}")
        biased = graph.node("Add", [product, graph.constant(bi[k * d : (k + 1) * d], f"attention.b{name}")], f"attention_{name}_bias")
        heads = graph.node("Reshape", [biased, graph.constant(np.array([-1, T, H, h], np.int64), "attention.heads")], f"attention_{name}_heads")
        return graph.node("Transpose", [heads], f"attention_{name}_t", perm=[0, 2, 3, 1] if name == "k" else [0, 2, 1, 3])

    q, k, v = projection(0, "q"), projection(1, "k"), projection(2, "v")
    scores = graph.node("Div", [graph.node("MatMul", [q, k], "attention_scores"), graph.constant(np.array(math.sqrt(h)), "attention.scale")],
                        "attention_scaled")
    if layer.causal:
        mask = np.where(np.triu(np.ones((T, T), bool), 1), -np.inf, 0.0)
        scores = graph.node("Add", [scores, graph.constant(mask, "attention.causal_mask")], "attention_masked")
    weights = graph.node("Softmax", [scores], "attention_softmax", axis=-1)
    context = graph.node("Transpose", [graph.node("MatMul", [weights, v], "attention_context")], "attention_context_t", perm=[0, 2, 1, 3])
    joined = graph.node("Reshape", [context, graph.constant(np.array([-1, T, d], np.int64), "attention.joined")], "attention_joined")
    product = graph.node("MatMul", [joined, graph.constant(np.asarray(layer.out_proj_weight).T, "attention.Wo")], "attention_out")
    return graph.node("Add", [product, graph.constant(layer.out_proj_bias, "attention.bo")], "attention_out_bias")


#: PyTorch's gate blocks in ONNX's order: GRU r z n -> z r h, LSTM i f g o -> i o f c.
_GATE_ORDER = {"RNN": (0,), "GRU": (1, 0, 2), "LSTM": (0, 3, 1, 2)}


def _recurrent(layer: Any, graph: Graph, x: str, shape: Any, out: Any) -> str:
    """ONNX's RNN, GRU (``linear_before_reset=1``, PyTorch's form) or LSTM operator on the
    sequence-major input, one direction (``reverse`` for a reverse layer), from zero
    states; the outputs batch-major again: every step's state, or the last one."""
    kind, hidden = type(layer).__name__, layer.hidden_size
    order = _GATE_ORDER[kind]

    def blocks(array: Any) -> np.ndarray:
        array = np.asarray(array)
        return np.concatenate([array[g * hidden : (g + 1) * hidden] for g in order])

    W, R = graph.constant(blocks(layer.weight_ih)[None], f"{kind.lower()}.W"), graph.constant(blocks(layer.weight_hh)[None], f"{kind.lower()}.R")
    B = graph.constant(np.concatenate([blocks(layer.bias_ih), blocks(layer.bias_hh)])[None], f"{kind.lower()}.B")
    steps = graph.node("Transpose", [x], f"{kind.lower()}_time_major", perm=[1, 0, 2])
    attributes: dict[str, Any] = {"hidden_size": hidden, "direction": "reverse" if layer.reverse else "forward"}
    if kind == "GRU":
        attributes["linear_before_reset"] = 1
    outputs = graph.node(kind, [steps, W, R, B], kind.lower(), outputs=3 if kind == "LSTM" else 2, **attributes)
    if layer.return_sequences:  # Y (T, 1, n, hidden) -> (n, T, hidden)
        batch_major = graph.node("Transpose", [outputs[0]], f"{kind.lower()}_batch_major", perm=[2, 0, 1, 3])
        return graph.node("Reshape", [batch_major, graph.constant(np.array([-1, shape[0], hidden], np.int64), "recurrent.sequence")],
                          f"{kind.lower()}_sequence")
    return graph.node("Reshape", [outputs[1], graph.constant(np.array([-1, hidden], np.int64), "recurrent.last")], f"{kind.lower()}_last")


_EXPORTERS: dict[type, Callable[..., str]] = {
    _layers.Dense: _dense,
    _layers.Identity: _identity,
    _layers.Dropout: _identity,  # evaluation mode
    _layers.ReLU: _unary("Relu"),
    _layers.Sigmoid: _unary("Sigmoid"),
    _layers.Tanh: _unary("Tanh"),
    _layers.LeakyReLU: _leaky_relu,
    _layers.GELU: _gelu,
    _layers.Softmax: _softmax,
    _layers.Conv2D: _conv,
    _layers.Conv1D: _conv,
    _layers.MaxPool2D: _pool("MaxPool"),
    _layers.MaxPool1D: _pool("MaxPool"),
    _layers.AvgPool2D: _pool("AveragePool", count_include_pad=1),
    _layers.AvgPool1D: _pool("AveragePool", count_include_pad=1),
    _layers.GlobalAvgPool: _global_avg_pool,
    _layers.BatchNorm: _batch_norm,
    _layers.LayerNorm: _layer_norm,
    _layers.Embedding: _embedding,
    _layers.PositionalEmbedding: _positional,
    _layers.Reshape: _reshape,
    _layers.Flatten: _flatten,
    _layers.MultiHeadAttention: _multi_head_attention,
    _layers.RNN: _recurrent,
    _layers.GRU: _recurrent,
    _layers.LSTM: _recurrent,
}
