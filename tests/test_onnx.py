"""ONNX export: every built-in layer and combinator (the shared table of
``tests/layer_examples.py``), exported by ``jn.onnx`` and run by onnxruntime, gives
``model.forward``'s output to float32 rounding at batch 1 and at a larger batch; a user's
layer gives its own nodes through ``to_onnx``; bad input is refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from layer_examples import LAYER_EXAMPLES

import jitnn as jn
import tolerances

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def run(proto: Any, X: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": X})[0]


def batches(X: np.ndarray) -> list[np.ndarray]:
    """One example, and a batch of more than the table's (its rows twice, and once more)."""
    return [X[:1], np.concatenate([X, X, X[:3]])]


@pytest.mark.parametrize("cls", list(LAYER_EXAMPLES), ids=[cls.__name__ for cls in LAYER_EXAMPLES])
def test_each_layer_exported_runs_in_onnxruntime_as_model_forward(cls: type, tmp_path: Path) -> None:
    """onnxruntime computes the layer's formula in float32 as jitnn does, in its own order;
    the error rules of ``tolerances.forward_bound`` do not depend on the order of the sums
    (``gamma(n)`` of the sum of magnitudes) and each library function is within their
    ``LIBRARY`` ulps, so each output is within ``eY`` of the exact one and the two within
    ``2 eY`` of each other."""
    layer, X = LAYER_EXAMPLES[cls].make(np.float32, np.random.default_rng(0))
    path = tmp_path / "model.onnx"
    jn.onnx.export(layer, path, X.shape[1:])
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in batches(X):
        got = run(proto, batch)
        expected = layer.forward(batch)
        _, bound, _ = tolerances.forward_bound(layer, batch, np.float32)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        tolerances.assert_within(got, expected, 2 * bound, f"{cls.__name__} at batch {len(batch)}")


def test_a_model_of_many_layers_and_float64_parameters() -> None:
    """A float64 model exports in float64 (onnxruntime's CPU provider runs these operators in
    double), or in float32 with ``dtype=np.float32``."""
    k = jn.random.split(jn.random.key(0), 3)
    model = jn.pipe(jn.Dense.init(k[0], 6, 8, dtype=np.float64), jn.ReLU(), jn.Dropout(0.5),
                    jn.Dense.init(k[1], 8, 4, dtype=np.float64), jn.Softmax())
    X = np.random.default_rng(1).normal(size=(9, 6))
    proto = jn.onnx.to_model(model, (6,))
    _, bound, _ = tolerances.forward_bound(model, X, np.float64)
    tolerances.assert_within(run(proto, X), model.forward(X), 2 * bound, "float64")
    as_float32 = jn.onnx.to_model(model, (6,), dtype=np.float32)
    _, bound32, _ = tolerances.forward_bound(model, X, np.float32)
    got = run(as_float32, X.astype(np.float32))
    assert got.dtype == np.float32
    # the export rounds the parameters to float32: the same model as jitnn's float32 copy of it
    model32 = jn.tree.unflatten(model, [a.astype(np.float32) for a in jn.tree.leaves(model)])
    tolerances.assert_within(got, model32.forward(X.astype(np.float32)), 2 * bound32, "float32")


def test_a_dense_on_every_step_of_a_sequence_and_a_transformer_block() -> None:
    """``Dense`` on ``(n, T, d)`` (``MatMul`` and ``Add`` rather than ``Gemm``), inside a
    transformer block of embeddings, attention and a feed-forward part (LayerNorm, whose
    error rule takes exact inputs only, is checked on its own in the table)."""
    k = jn.random.split(jn.random.key(3), 5)
    block = jn.pipe(
        jn.Embedding.init(k[0], 11, 8), jn.PositionalEmbedding.init(k[1], 6, 8),
        jn.Residual(jn.MultiHeadAttention.init(k[2], 8, 2, causal=True)),
        jn.Residual(jn.pipe(jn.Dense.init(k[3], 8, 16), jn.GELU(), jn.Dense.init(k[4], 16, 8))),
        jn.Dense.init(k[0], 8, 11),
    )
    tokens = np.random.default_rng(4).integers(0, 11, size=(3, 6))
    _, bound, _ = tolerances.forward_bound(block, tokens, np.float32)
    tolerances.assert_within(run(jn.onnx.to_model(block, (6,)), tokens), block.forward(tokens), 2 * bound, "transformer block")


@jn.layer
class Square(jn.Layer):
    """A user's layer with its own ONNX form: ``Y = X * X``."""

    kernels = jn.Kernels(lambda X: X * X, lambda X, dY: 2.0 * X * dY)

    def to_onnx(self, graph: jn.onnx.Graph, x: str, input_shape: tuple[int, ...]) -> str:
        return graph.node("Mul", [x, x], "square")


@jn.layer
class Cube(jn.Layer):
    """A user's layer without one."""

    kernels = jn.Kernels(lambda X: X * X * X, lambda X, dY: 3.0 * X * X * dY)


def test_a_users_layer_gives_its_own_nodes_and_one_without_is_refused_by_name() -> None:
    k = jn.random.split(jn.random.key(0), 2)
    model = jn.pipe(jn.Dense.init(k[0], 3, 4), Square(), jn.Dense.init(k[1], 4, 2))
    X = np.random.default_rng(2).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_allclose(run(jn.onnx.to_model(model, (3,)), X), model.forward(X), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match=r"onnx.export: Cube at model.layers\[1\] has no ONNX form; give the class a method to_onnx"):
        jn.onnx.to_model(jn.pipe(jn.Dense.init(k[0], 3, 4), Cube()), (3,))


def test_bad_input_is_refused_by_name(tmp_path: Path) -> None:
    model = jn.pipe(jn.Dense.init(jn.random.key(0), 3, 4))
    with pytest.raises(ValueError, match=r"onnx.export: Chain does not take examples of shape \(5,\)"):
        jn.onnx.export(model, tmp_path / "m.onnx", (5,))
    with pytest.raises(ValueError, match="input_shape must be a non-empty tuple of positive ints"):
        jn.onnx.export(model, tmp_path / "m.onnx", ())
    with pytest.raises(TypeError, match="input_shape must be a tuple of positive ints"):
        jn.onnx.export(model, tmp_path / "m.onnx", "three")
    with pytest.raises(ValueError, match="opset must be at least 17"):
        jn.onnx.export(model, tmp_path / "m.onnx", (3,), opset=13)
    with pytest.raises(TypeError, match="model must be a jitnn layer"):
        jn.onnx.export(object(), tmp_path / "m.onnx", (3,))
    assert not list(tmp_path.iterdir()), "nothing is written when the export fails"
