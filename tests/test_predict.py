"""``jn.compile_predict``: the compiled evaluation-mode forward pass gives ``model.forward``'s
bits for every layer, combinator and a user's layer, runs a large input in batches, returns
fresh read-only arrays, and refuses what it cannot run, naming it."""

from __future__ import annotations

from typing import Any

import attrs
import numba
import numpy as np
import pytest
from layer_examples import LAYER_EXAMPLES, LAYER_IDS, dense
from user_layers import Linear, Scale, ScaleShape

import jitnn as jn

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])


def assert_same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert actual.tobytes() == expected.tobytes()


@DTYPES
@pytest.mark.parametrize("layer_class", list(LAYER_EXAMPLES), ids=LAYER_IDS)
def test_every_layer_gives_the_bits_of_its_forward(layer_class: type, dtype: Any) -> None:
    """The same kernels in the same order on the same arrays: nothing but the bits will do."""
    layer, X = LAYER_EXAMPLES[layer_class].make(dtype, np.random.default_rng(0))
    predict = jn.compile_predict(layer)
    Y = predict(layer, X)
    assert_same_bits(Y, layer.forward(X))
    assert not Y.flags.writeable and not np.shares_memory(Y, X)


def evaluation_model(dtype: Any) -> jn.Layer:
    """Every combinator, a dropout, batch and layer normalization (with running statistics
    away from their initial values) and a user's layers."""
    rng = np.random.default_rng(6)
    norm = jn.BatchNorm.init(None, 8, dtype=dtype)
    norm = attrs.evolve(norm, running_mean=rng.normal(size=8).astype(dtype), running_var=rng.uniform(0.5, 2, 8).astype(dtype))
    return jn.pipe(
        jn.pipe(dense(rng, 6, 8, dtype), norm, jn.Dropout(0.5)),
        jn.Residual(jn.pipe(dense(rng, 8, 8, dtype), jn.GELU())),
        jn.Concatenate((jn.pipe(dense(rng, 8, 3, dtype), jn.Sigmoid()), jn.Add((dense(rng, 8, 5, dtype), Linear(W=rng.normal(size=(8, 5)).astype(dtype)))))),
        jn.LayerNorm.init(None, 8, dtype=dtype),
        Scale(s=rng.normal(size=8).astype(dtype)),
        dense(rng, 8, 4, dtype),
    )


@DTYPES
def test_a_model_with_every_combinator_runs_in_evaluation_mode(dtype: Any) -> None:
    model = evaluation_model(dtype)
    X = np.random.default_rng(1).normal(size=(9, 6)).astype(dtype)
    predict = jn.compile_predict(model)
    assert_same_bits(predict(model, X), model.forward(X))
    assert "Dropout" not in predict.source and "update" not in predict.source  # no training-mode work


def test_any_model_of_the_architecture_can_be_passed() -> None:
    model = evaluation_model(np.float64)
    other = jn.tree.map(lambda a: a * 2.0, model)
    predict = jn.compile_predict(model)
    X = np.random.default_rng(2).normal(size=(5, 6))
    for m in (model, other, model):
        assert_same_bits(predict(m, X), m.forward(X))


def test_a_large_input_runs_in_batches_of_batch_size_rows() -> None:
    rng = np.random.default_rng(3)
    model = jn.pipe(dense(rng, 6, 8, np.float32), jn.ReLU(), dense(rng, 8, 3, np.float32))
    X = rng.normal(size=(23, 6)).astype(np.float32)
    predict = jn.compile_predict(model, batch_size=5)
    Y = predict(model, X)
    assert_same_bits(Y, np.concatenate([model.forward(X[i : i + 5]) for i in range(0, 23, 5)]))
    assert not Y.flags.writeable
    assert_same_bits(predict(model, X[:5]), model.forward(X[:5]))
    assert predict.compile_seconds > 0 and len(predict._plans) == 1  # one function for every batch size


def test_inputs_are_converted_as_forward_converts_them() -> None:
    rng = np.random.default_rng(4)
    model = jn.pipe(dense(rng, 6, 3, np.float32), jn.Tanh())
    X = rng.normal(size=(4, 6))  # float64 data for a float32 model
    predict = jn.compile_predict(model)
    assert_same_bits(predict(model, X), model.forward(X))
    assert_same_bits(predict(model, np.asfortranarray(X)), model.forward(X))
    assert_same_bits(predict(model, X.tolist()), model.forward(X))


def test_a_layer_that_returns_its_input_gets_a_copy() -> None:
    model = jn.pipe(jn.Flatten())
    X = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    Y = jn.compile_predict(model)(model, X)
    assert_same_bits(Y, X.reshape(2, 12))
    assert not np.shares_memory(Y, X) and not Y.flags.writeable


@numba.njit(cache=True)
def _counted_forward(X, s, count):
    """Y = X * s (the buffer ``count`` only counts batches)."""
    return X * s


@numba.njit(cache=True)
def _counted_grad_input(X, dY, s, count):
    return dY * s


@numba.njit(cache=True)
def _counted_grad_params(X, dY, s, count):
    return ((X * dY).sum(axis=0),)


@jn.layer
class PythonBuffers(ScaleShape):
    """Updates its buffer in Python in training: the compiled step refuses it, prediction runs it."""

    s: np.ndarray = jn.param()
    count: jn.Array = jn.buffer()
    kernels = jn.Kernels(_counted_forward, _counted_grad_input, _counted_grad_params)
    needs_context = True

    def updated(self, X: Any, call_args: Any) -> PythonBuffers:
        return attrs.evolve(self, count=self.count + 1)


def test_a_layer_without_a_compiled_training_form_still_predicts() -> None:
    layer = PythonBuffers(s=np.array([0.5, -2.0, 1.5]), count=np.zeros(()))
    X = np.random.default_rng(5).normal(size=(4, 3))
    with pytest.raises(TypeError, match="compile_step: PythonBuffers computes its updated buffers in Python"):
        jn.compile_step(layer, jn.MeanSquaredError(), jn.optim.sgd(0.1))
    assert_same_bits(jn.compile_predict(layer)(layer, X), layer.forward(X))


def test_bad_arguments_are_refused_naming_them() -> None:
    rng = np.random.default_rng(6)
    model = jn.pipe(dense(rng, 6, 8, np.float32), jn.ReLU(), dense(rng, 8, 3, np.float32))
    with pytest.raises(TypeError, match="compile_predict: model must be a jitnn layer"):
        jn.compile_predict("model")
    for bad in (0, -1, 2.5, True):
        with pytest.raises((TypeError, ValueError), match="compile_predict: batch_size"):
            jn.compile_predict(model, batch_size=bad)
    with pytest.raises((TypeError, ValueError), match="compile_predict: threads"):
        jn.compile_predict(model, threads=0)
    predict = jn.compile_predict(model)
    with pytest.raises(ValueError, match=r"Dense.*\(6,\).*\(5,\)"):
        predict(model, np.zeros((2, 5), np.float32))
    with pytest.raises(TypeError, match="must hold floating-point numbers"):
        predict(model, np.zeros((2, 6), np.int64))
    with pytest.raises(TypeError, match="predict: model must be a jitnn layer"):
        predict(None, np.zeros((2, 6), np.float32))
    wider = jn.pipe(dense(rng, 6, 9, np.float32), jn.ReLU(), dense(rng, 9, 3, np.float32))
    with pytest.raises(ValueError, match=r"predict: Dense at model.layers\[0\].W is float32\[6, 9\], the compiled model has float32\[6, 8\]"):
        predict(wider, np.zeros((2, 6), np.float32))
    with pytest.raises(ValueError, match="predict: the model's structure differs from the compiled one"):
        predict(jn.pipe(dense(rng, 6, 3, np.float32)), np.zeros((2, 6), np.float32))
