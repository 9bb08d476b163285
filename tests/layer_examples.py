"""The one table of examples of jitnn's built-in layers and named optimizers.

Every test that runs "each built-in layer" or "each optimizer" draws from here: the
conformance tests (``test_conformance.py``), the compiled step's (``test_step.py``), the
property tests and the fresh-process signature exercise (``test_signatures.py``, which
imports this module in a child interpreter). ``test_conformance.py`` fails, naming it, for
any layer class that jitnn registers (``jn.registered_layers()``) or named optimizer that
jitnn offers (``jn.optim.OPTIMIZERS``) without an entry here.

A layer's entry is ``LayerExample(make, reference)``: ``make(dtype, rng) -> (layer, X)``
builds a small instance in ``dtype`` and a valid input batch; ``reference(layer)`` names
its NumPy reference (``reference.py``, ``reference_spatial.py``) with the parameters and
configuration to call it with. Inputs are kept tiny, so that central differences stay cheap,
and each layer is used with inputs of one rank, as in its usual place in a model (a kernel
compiles again for arrays of another rank; the signature test counts compilations).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import reference
import reference_spatial

import jitnn as jn

__all__ = [
    "LAYER_EXAMPLES",
    "LAYER_IDS",
    "OPTIMIZER_EXAMPLES",
    "LayerExample",
    "away_from_zero",
    "dense",
    "distinct_values",
    "example",
    "reference_for",
]


def away_from_zero(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any, low: float = 0.1, high: float = 2.0) -> np.ndarray:
    """Values with ``low <= |x| < high`` and random signs: clear of ReLU's kink at 0."""
    magnitude = rng.uniform(low, high, size=shape)
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return (sign * magnitude).astype(dtype)


def distinct_values(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A random permutation of evenly spaced values: no two equal, so every window of max
    pooling has a unique maximum and central differences are valid."""
    size = int(np.prod(shape))
    return ((rng.permutation(size) - size / 2) * (4.0 / size)).reshape(shape).astype(dtype)


def dense(rng: np.random.Generator, n_in: int, n_out: int, dtype: Any) -> jn.Dense:
    """A Dense layer with random weights and a non-zero bias."""
    return jn.Dense(W=rng.normal(size=(n_in, n_out)).astype(dtype), b=rng.normal(size=n_out).astype(dtype))


class LayerExample(NamedTuple):
    #: ``make(dtype, rng) -> (layer, X)``: an example instance and a valid input batch
    make: Callable[[Any, np.random.Generator], tuple[jn.Layer, np.ndarray]]
    #: ``reference(layer) -> (namespace in reference.py, params, config)``
    reference: Callable[[jn.Layer], tuple[Any, tuple, dict]]


def reference_for(layer: jn.Layer) -> tuple[Any, tuple, dict]:
    """The reference namespace, parameters and configuration for any layer in the table."""
    return LAYER_EXAMPLES[type(layer)].reference(layer)


def example(cls: type, dtype: Any, seed: int = 0) -> tuple[jn.Layer, np.ndarray, np.ndarray]:
    """The table's example for ``cls`` in ``dtype`` with an output gradient ``dY``."""
    rng = np.random.default_rng(seed)
    layer, X = LAYER_EXAMPLES[cls].make(dtype, rng)
    out_shape = (X.shape[0], *layer.output_shape(X.shape[1:]))
    dY = rng.normal(size=out_shape).astype(dtype)
    return layer, X, dY


# --------------------------------------------------------------------------- dense layers and activations
def activation(cls: type, ref: Any, **config: Any) -> LayerExample:
    return LayerExample(
        make=lambda dtype, rng: (cls(**config), away_from_zero(rng, (5, 4), dtype)),
        reference=lambda layer: (ref, (), dict(config)),
    )


def make_chain(dtype: Any, rng: np.random.Generator) -> tuple[jn.Layer, np.ndarray]:
    model = jn.pipe(dense(rng, 4, 6, dtype), jn.Tanh(), jn.pipe(dense(rng, 6, 3, dtype), jn.Softmax()))
    return model, away_from_zero(rng, (5, 4), dtype)


LAYER_EXAMPLES: dict[type, LayerExample] = {
    jn.Dense: LayerExample(
        make=lambda dtype, rng: (dense(rng, 4, 3, dtype), away_from_zero(rng, (5, 4), dtype)),
        reference=lambda layer: (reference.Dense, (layer.W, layer.b), {}),
    ),
    jn.Identity: activation(jn.Identity, reference.Identity),
    jn.ReLU: activation(jn.ReLU, reference.ReLU),
    jn.LeakyReLU: activation(jn.LeakyReLU, reference.LeakyReLU, negative_slope=0.2),
    jn.Sigmoid: activation(jn.Sigmoid, reference.Sigmoid),
    jn.Tanh: activation(jn.Tanh, reference.Tanh),
    jn.GELU: activation(jn.GELU, reference.GELU),
    jn.Softmax: activation(jn.Softmax, reference.Softmax),
    jn.Chain: LayerExample(
        make=make_chain,
        reference=lambda layer: (reference.Chain, (), {"members": [reference_for(m) for m in layer.layers]}),
    ),
}


# --------------------------------------------------------------------------- spatial layers
# NCHW batches kept tiny (n=2, C=2, 5x5) so that the central differences stay cheap.
def make_conv(dtype: Any, rng: np.random.Generator) -> tuple[jn.Layer, np.ndarray]:
    """A non-square, strided, padded and dilated convolution: 2 -> 3 channels, kernel 3x2."""
    W, b = 0.5 * rng.normal(size=(3, 2, 3, 2)), rng.normal(size=3)
    layer = jn.Conv2D(W=W.astype(dtype), b=b.astype(dtype), stride=(1, 2), padding=1, dilation=(2, 1))
    return layer, away_from_zero(rng, (2, 2, 5, 5), dtype)


def pooling(cls: type, ref: Any, **config: Any) -> LayerExample:
    def make(dtype: Any, rng: np.random.Generator) -> tuple[jn.Layer, np.ndarray]:
        return cls(**config), distinct_values(rng, (2, 2, 5, 5), dtype)

    return LayerExample(
        make=make,
        reference=lambda layer: (ref, (), {"kernel_size": layer.kernel_size, "stride": layer.stride, "padding": layer.padding}),
    )


# NCL batches (n=2, C=2, L=9).
def make_conv1d(dtype: Any, rng: np.random.Generator) -> tuple[jn.Layer, np.ndarray]:
    """A strided, padded and dilated convolution of sequences: 2 -> 3 channels, kernel 3."""
    W, b = 0.5 * rng.normal(size=(3, 2, 3)), rng.normal(size=3)
    layer = jn.Conv1D(W=W.astype(dtype), b=b.astype(dtype), stride=2, padding=2, dilation=2)
    return layer, away_from_zero(rng, (2, 2, 9), dtype)


def pooling_1d(cls: type, ref: Any, **config: Any) -> LayerExample:
    def make(dtype: Any, rng: np.random.Generator) -> tuple[jn.Layer, np.ndarray]:
        return cls(**config), distinct_values(rng, (2, 2, 9), dtype)

    return LayerExample(
        make=make,
        reference=lambda layer: (ref, (), {"kernel_size": layer.kernel_size, "stride": layer.stride, "padding": layer.padding}),
    )


LAYER_EXAMPLES.update({
    jn.Conv2D: LayerExample(
        make=make_conv,
        reference=lambda layer: (
            reference_spatial.Conv2D,
            (layer.W, layer.b),
            {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation},
        ),
    ),
    jn.MaxPool2D: pooling(jn.MaxPool2D, reference_spatial.MaxPool2D, kernel_size=3, stride=2, padding=1),
    jn.AvgPool2D: pooling(jn.AvgPool2D, reference_spatial.AvgPool2D, kernel_size=(2, 3), stride=(1, 2), padding=1),
    jn.Conv1D: LayerExample(
        make=make_conv1d,
        reference=lambda layer: (
            reference_spatial.Conv1D,
            (layer.W, layer.b),
            {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation},
        ),
    ),
    jn.MaxPool1D: pooling_1d(jn.MaxPool1D, reference_spatial.MaxPool1D, kernel_size=3, stride=2, padding=1),
    jn.AvgPool1D: pooling_1d(jn.AvgPool1D, reference_spatial.AvgPool1D, kernel_size=4, stride=3, padding=2),
    jn.GlobalAvgPool: LayerExample(  # images: the kernels see (n, C, H W)
        make=lambda dtype, rng: (jn.GlobalAvgPool(), away_from_zero(rng, (2, 3, 2, 3), dtype)),
        reference=lambda layer: (reference_spatial.GlobalAvgPool, (), {}),
    ),
    jn.Flatten: LayerExample(
        make=lambda dtype, rng: (jn.Flatten(), away_from_zero(rng, (2, 2, 3, 2), dtype)),
        reference=lambda layer: (reference_spatial.Flatten, (), {}),
    ),
    jn.Reshape: LayerExample(
        make=lambda dtype, rng: (jn.Reshape((3, -1)), away_from_zero(rng, (2, 2, 3, 2), dtype)),
        reference=lambda layer: (reference_spatial.Reshape, (), {"shape": layer.shape}),
    ),
})


# --------------------------------------------------------------------------- combinators, normalization, dropout, embedding
def make_residual(dtype: Any, rng: np.random.Generator) -> tuple[jn.Layer, np.ndarray]:
    return jn.Residual(jn.pipe(dense(rng, 4, 3, dtype), jn.Tanh(), dense(rng, 3, 4, dtype))), away_from_zero(rng, (5, 4), dtype)


def make_branches(cls: type) -> Callable[[Any, np.random.Generator], tuple[jn.Layer, np.ndarray]]:
    def make(dtype: Any, rng: np.random.Generator) -> tuple[jn.Layer, np.ndarray]:
        return cls((dense(rng, 4, 3, dtype), jn.pipe(dense(rng, 4, 3, dtype), jn.Sigmoid()))), away_from_zero(rng, (5, 4), dtype)

    return make


def make_layer_norm(dtype: Any, rng: np.random.Generator) -> tuple[jn.Layer, np.ndarray]:
    layer = jn.LayerNorm(scale=rng.normal(size=4).astype(dtype), shift=rng.normal(size=4).astype(dtype), eps=1e-3)
    return layer, away_from_zero(rng, (5, 4), dtype)


def make_batch_norm(dtype: Any, rng: np.random.Generator) -> tuple[jn.Layer, np.ndarray]:
    """Three channels of 2x2 images (NCHW), batch normalization's usual place after a convolution."""
    arrays = {name: rng.normal(size=3) for name in ("scale", "shift", "running_mean")}
    layer = jn.BatchNorm(**{k: v.astype(dtype) for k, v in arrays.items()}, running_var=rng.uniform(0.5, 2, size=3).astype(dtype))
    return layer, away_from_zero(rng, (4, 3, 2, 2), dtype)


def make_embedding(dtype: Any, rng: np.random.Generator) -> tuple[jn.Layer, np.ndarray]:
    return jn.Embedding(table=rng.normal(size=(6, 3)).astype(dtype)), rng.integers(0, 6, size=(5, 4))


LAYER_EXAMPLES.update({
    jn.Residual: LayerExample(make=make_residual, reference=lambda layer: (reference.Residual, (), {"inner": reference_for(layer.inner)})),
    jn.Concatenate: LayerExample(
        make=make_branches(jn.Concatenate),
        reference=lambda layer: (reference.Concatenate, (), {"branches": [reference_for(b) for b in layer.branches], "axis": layer.axis}),
    ),
    jn.Add: LayerExample(
        make=make_branches(jn.Add),
        reference=lambda layer: (reference.Add, (), {"branches": [reference_for(b) for b in layer.branches]}),
    ),
    jn.LayerNorm: LayerExample(make=make_layer_norm, reference=lambda layer: (reference.LayerNorm, (layer.scale, layer.shift), {"eps": layer.eps})),
    jn.BatchNorm: LayerExample(
        make=make_batch_norm,
        reference=lambda layer: (reference.BatchNorm, (layer.scale, layer.shift, layer.running_mean, layer.running_var), {"eps": layer.eps}),
    ),
    jn.Dropout: LayerExample(  # evaluation mode: the identity (training mode: tests/test_context_layers.py)
        make=lambda dtype, rng: (jn.Dropout(0.3), away_from_zero(rng, (5, 4), dtype)),
        reference=lambda layer: (reference.Identity, (), {}),
    ),
    jn.Embedding: LayerExample(make=make_embedding, reference=lambda layer: (reference.Embedding, (layer.table,), {})),
})

# --------------------------------------------------------------------------- sequences
def attention(rng: np.random.Generator, dtype: Any, causal: bool, n: int = 2, T: int = 4, dim: int = 6, heads: int = 2) -> tuple[jn.Layer, np.ndarray]:
    """Self-attention on (n, T, dim) sequences with random weights of the scale of PyTorch's
    initialization and non-zero biases: scores of order one, so that the softmax is neither
    uniform nor saturated."""
    scale = 1 / np.sqrt(dim)
    layer = jn.MultiHeadAttention(
        in_proj_weight=(rng.normal(size=(3 * dim, dim)) * 1.5 * scale).astype(dtype), in_proj_bias=(0.3 * rng.normal(size=3 * dim)).astype(dtype),
        out_proj_weight=(rng.normal(size=(dim, dim)) * scale).astype(dtype), out_proj_bias=(0.3 * rng.normal(size=dim)).astype(dtype),
        num_heads=heads, causal=causal,
    )
    return layer, away_from_zero(rng, (n, T, dim), dtype)


LAYER_EXAMPLES.update({
    # causal here (the mask is the harder path); tests/test_attention.py checks the non-causal layer too
    jn.MultiHeadAttention: LayerExample(
        make=lambda dtype, rng: attention(rng, dtype, causal=True),
        reference=lambda layer: (
            reference.MultiHeadAttention,
            (layer.in_proj_weight, layer.in_proj_bias, layer.out_proj_weight, layer.out_proj_bias),
            {"num_heads": layer.num_heads, "causal": layer.causal},
        ),
    ),
    jn.PositionalEmbedding: LayerExample(  # a table longer than the sequences: rows beyond get zero gradients
        make=lambda dtype, rng: (jn.PositionalEmbedding(table=rng.normal(size=(6, 3)).astype(dtype)), away_from_zero(rng, (2, 4, 3), dtype)),
        reference=lambda layer: (reference.PositionalEmbedding, (layer.table,), {}),
    ),
})

# --------------------------------------------------------------------------- recurrent layers
# n=3 sequences of T=4 steps, 2 features, hidden 3; the directions and outputs mixed across them
def recurrent(cls: type, rng: np.random.Generator, dtype: Any, reverse: bool, return_sequences: bool) -> jn.Layer:
    """A recurrent layer (input 2, hidden 3) with weights of PyTorch's initial scale or so."""
    width = cls.gates * 3
    arrays = [0.6 * rng.normal(size=shape) for shape in ((width, 2), (width, 3), (width,), (width,))]
    return cls(*(a.astype(dtype) for a in arrays), reverse=reverse, return_sequences=return_sequences)


def recurrent_example(cls: type, reverse: bool, return_sequences: bool) -> LayerExample:
    return LayerExample(
        make=lambda dtype, rng: (recurrent(cls, rng, dtype, reverse, return_sequences), rng.normal(size=(3, 4, 2)).astype(dtype)),
        reference=lambda layer: (
            getattr(reference, type(layer).__name__), layer.params, {"reverse": layer.reverse, "return_sequences": layer.return_sequences},
        ),
    )


def make_bidirectional(dtype: Any, rng: np.random.Generator) -> tuple[jn.Layer, np.ndarray]:
    """A bidirectional GRU whose output is the two last states."""
    layer = jn.Bidirectional(recurrent(jn.GRU, rng, dtype, False, False), recurrent(jn.GRU, rng, dtype, True, False))
    return layer, rng.normal(size=(3, 4, 2)).astype(dtype)


LAYER_EXAMPLES.update({
    jn.RNN: recurrent_example(jn.RNN, reverse=False, return_sequences=False),
    jn.GRU: recurrent_example(jn.GRU, reverse=True, return_sequences=True),
    jn.LSTM: recurrent_example(jn.LSTM, reverse=True, return_sequences=False),
    jn.Bidirectional: LayerExample(
        make=make_bidirectional,
        reference=lambda layer: (  # the two directions' outputs side by side: the last per-example axis
            reference.Concatenate, (), {"branches": [reference_for(layer.forward_layer), reference_for(layer.reverse_layer)],
                                        "axis": 1 if layer.return_sequences else 0},
        ),
    ),
})

LAYER_IDS = [cls.__name__ for cls in LAYER_EXAMPLES]


# --------------------------------------------------------------------------- named optimizers
#: One instance of each named optimizer (``jn.optim.OPTIMIZERS``), made afresh by each call.
OPTIMIZER_EXAMPLES: dict[str, Callable[[], Any]] = {
    "sgd": lambda: jn.optim.sgd(0.1),
    "momentum": lambda: jn.optim.momentum(0.05, beta=0.8),
    "adam": lambda: jn.optim.adam(0.01),
    "adamw": lambda: jn.optim.adamw(0.01, weight_decay=0.1),
    "rmsprop": lambda: jn.optim.rmsprop(0.01),
    "adagrad": lambda: jn.optim.adagrad(0.1),
    "lion": lambda: jn.optim.lion(0.01),
}
