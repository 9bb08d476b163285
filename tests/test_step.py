"""The compiled training step agrees with the generic path (``train_step``: value_and_grad
then the optimizer's update) for every layer, optimizer, a user's layer and nested chains;
keeps the functional contract; refuses bad input clearly; and is cached on disk."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import attrs
import numba
import numpy as np
import pytest
from layer_examples import LAYER_EXAMPLES, LAYER_IDS, OPTIMIZER_EXAMPLES, dense
from user_layers import Linear, Scale

import jitnn as jn
import tolerances
from jitnn import _blas, _codegen
from jitnn._jit import jit

ROOT = Path(__file__).resolve().parent.parent
needs_jit = pytest.mark.skipif(bool(numba.config.DISABLE_JIT), reason="about compiled machine code, which NUMBA_DISABLE_JIT=1 turns off")


def assert_trees_equal(actual: Any, expected: Any, what: str) -> None:
    """Every leaf (parameters and buffers) bitwise equal, dtype included."""
    jn.tree.check_same_structure(expected, actual)
    for (path, a), (_, b) in zip(jn.tree.leaves_with_paths(actual), jn.tree.leaves_with_paths(expected)):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), f"{what}: {path}"


def run_both(model: jn.Layer, loss: jn.Loss, optimizer: Any, batches: list[tuple[np.ndarray, np.ndarray]], dtype: Any, key: Any = None) -> None:
    """Train with the compiled step and with train_step on the same batches and keys; the
    models, states and loss values must be the same bits after every step. The compiled step
    calls the kernels the generic path calls, in the same order, compiled without fastmath;
    the generic step runs with the BLAS thread count the compiled step chose for the batch
    (``_blas.auto_threads``), so even the matrix products sum in the same order."""
    step = jn.compile_step(model, loss, optimizer)
    compiled = generic = model
    compiled_state = generic_state = optimizer.init(model)
    for i, (X, T) in enumerate(batches):
        step_key = None if key is None else jn.random.fold_in(key, i)
        compiled, compiled_state, value = step(compiled, compiled_state, X, T, key=step_key)
        with _blas.threads(_blas.auto_threads(len(X))):
            generic, generic_state, expected = jn.train_step(generic, generic_state, loss, optimizer, X, T, key=step_key)
        assert value == expected, f"loss at step {i}"
        assert_trees_equal(compiled, generic, f"model after step {i}")
        assert_trees_equal(compiled_state, generic_state, f"optimizer state after step {i}")


def mse_batches(model: jn.Layer, X: np.ndarray, dtype: Any, steps: int = 3, seed: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    shape = (X.shape[0], *model.output_shape(X.shape[1:]))
    return [(X, rng.normal(size=shape).astype(dtype)) for _ in range(steps)]


# --------------------------------------------------------------------------- every layer
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("layer_class", list(LAYER_EXAMPLES), ids=LAYER_IDS)
def test_every_layer_agrees_with_the_generic_step(layer_class: type, dtype: Any) -> None:
    layer, X = LAYER_EXAMPLES[layer_class].make(dtype, np.random.default_rng(0))
    run_both(layer, jn.MeanSquaredError(), jn.optim.adam(0.05), mse_batches(layer, X, dtype), dtype, key=jn.random.key(3))


def mlp(dtype: Any, seed: int = 0) -> jn.Chain:
    rng = np.random.default_rng(seed)
    return jn.pipe(dense(rng, 6, 8, dtype), jn.Tanh(), dense(rng, 8, 8, dtype), jn.ReLU(), dense(rng, 8, 4, dtype))


def classification_batches(dtype: Any, sizes: tuple[int, ...] = (7,) * 5, seed: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(n, 6)).astype(dtype), rng.integers(0, 4, n)) for n in sizes]


#: Every named optimizer (the shared table), then variants that take other paths through the step.
OPTIMIZERS = {
    **OPTIMIZER_EXAMPLES,
    "nesterov": lambda: jn.optim.momentum(0.05, nesterov=True),
    "scheduled": lambda: jn.optim.adam(jn.optim.warmup_cosine_decay(0.05, 2, 10)),
    "chain": lambda: jn.optim.chain(jn.optim.clip_by_global_norm(0.5), jn.optim.add_decayed_weights(0.01), jn.optim.momentum(0.05)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_agrees_with_the_generic_step(name: str, dtype: Any) -> None:
    """Batches of 7 and of 1 example: at one, a Dense weight's gradient reaches a built-in
    optimizer as its factors (jitnn.Factored), formed element by element as it updates."""
    optimizer = OPTIMIZERS[name]()
    run_both(mlp(dtype), jn.SoftmaxCrossEntropy(), optimizer, classification_batches(dtype, (7, 1, 7, 1, 1)), dtype)


def test_every_named_optimizer_runs_inside_the_compiled_function() -> None:
    for name, make in OPTIMIZERS.items():
        step = jn.compile_step(mlp(np.float64), jn.SoftmaxCrossEntropy(), make())
        assert step.fused == (name != "chain"), name


@pytest.mark.parametrize("loss", [jn.SoftmaxCrossEntropy(), jn.MeanSquaredError(), jn.BinaryCrossEntropy()], ids=lambda loss: type(loss).__name__)
def test_every_loss_agrees_with_the_generic_step(loss: jn.Loss) -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(9, 6))
    if isinstance(loss, jn.SoftmaxCrossEntropy):
        T = rng.integers(0, 4, 9).astype(np.int32)
    elif isinstance(loss, jn.BinaryCrossEntropy):
        T = rng.random((9, 4))
    else:
        T = rng.normal(size=(9, 4))
    run_both(mlp(np.float64), loss, jn.optim.sgd(0.1), [(X, T)] * 3, np.float64)


# --------------------------------------------------------------------------- a user's loss
@jit
def _absolute_error_value(Y, T, weight):
    """weight * mean_i sum_j |Y - T|;  Y, T (n, k) -> float."""
    total = 0.0
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            total += abs(Y[i, j] - T[i, j])
    return weight * total / Y.shape[0]


@jit
def _absolute_error_grad(Y, T, weight):
    """weight * sign(Y - T) / n;  (n, k)."""
    dY = np.empty_like(Y)
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            dY[i, j] = weight * np.sign(Y[i, j] - T[i, j]) / Y.shape[0]
    return dY


@jit
def _absolute_error_value_and_grad(Y, T, weight):
    return _absolute_error_value(Y, T, weight), _absolute_error_grad(Y, T, weight)


@jn.loss
class AbsoluteError(jn.Loss):
    """A user's loss with a configuration field, with or without a fused kernel."""

    weight: float = 0.5
    kernels = jn.losses.LossKernels(_absolute_error_value, _absolute_error_grad)

    def targets(self, Y: np.ndarray, T: Any) -> np.ndarray:
        return np.asarray(T, dtype=Y.dtype)


@jn.loss
class FusedAbsoluteError(AbsoluteError):
    kernels = jn.losses.LossKernels(_absolute_error_value, _absolute_error_grad, _absolute_error_value_and_grad)


@pytest.mark.parametrize("loss_class", [AbsoluteError, FusedAbsoluteError])
def test_a_users_loss_with_or_without_a_fused_kernel_agrees_with_the_generic_step(loss_class: type) -> None:
    rng = np.random.default_rng(5)
    X, T = rng.normal(size=(9, 6)), rng.normal(size=(9, 4))
    loss = loss_class(weight=0.25)
    value, dY = loss.value_and_grad(X[:, :4], T)
    assert value == loss.value(X[:, :4], T) and np.array_equal(dY, loss.grad(X[:, :4], T))
    run_both(mlp(np.float64), loss, jn.optim.sgd(0.1), [(X, T)] * 3, np.float64)
    step = jn.compile_step(mlp(np.float64), loss, jn.optim.sgd(0.1))
    step(mlp(np.float64), jn.optim.sgd(0.1).init(mlp(np.float64)), X, T)
    fused = loss_class is FusedAbsoluteError
    assert ("_absolute_error_value_and_grad" in step.source) == fused
    assert ("_absolute_error_grad" in step.source.replace("_absolute_error_value_and_grad", "")) == (not fused)


@jit
def _absolute_error_value_and_doubled_grad(Y, T, weight):
    """Wrong on purpose: twice the true gradient."""
    return _absolute_error_value(Y, T, weight), 2.0 * _absolute_error_grad(Y, T, weight)


@jn.loss
class BrokenFusedAbsoluteError(AbsoluteError):
    kernels = jn.losses.LossKernels(_absolute_error_value, _absolute_error_grad, _absolute_error_value_and_doubled_grad)


def test_check_loss_grad_checks_a_fused_kernel_against_the_two() -> None:
    rng = np.random.default_rng(6)
    Y, T = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    jn.testing.check_loss_grad(FusedAbsoluteError(), Y, T)
    with pytest.raises(AssertionError, match="value_and_grad kernel disagrees with value and grad"):
        jn.testing.check_loss_grad(BrokenFusedAbsoluteError(), Y, T)


def test_softmax_cross_entropy_is_one_kernel_in_the_compiled_step() -> None:
    step = jn.compile_step(mlp(np.float64), jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.1))
    X, T = classification_batches(np.float64, (7,))[0]
    step(mlp(np.float64), jn.optim.sgd(0.1).init(mlp(np.float64)), X, T)
    assert "_softmax_cross_entropy_value_and_grad" in step.source
    assert "_softmax_cross_entropy_grad" not in step.source


# --------------------------------------------------------------------------- a user's layer, nested models
def test_a_user_layer_agrees_with_the_generic_step() -> None:
    rng = np.random.default_rng(5)
    model = jn.pipe(dense(rng, 6, 5, np.float64), Scale(s=rng.normal(size=5)), jn.Tanh(), dense(rng, 5, 4, np.float64))
    run_both(model, jn.SoftmaxCrossEntropy(), jn.optim.adam(0.02), classification_batches(np.float64), np.float64)


@pytest.mark.parametrize("optimizer", [jn.optim.sgd(0.1), jn.optim.adam(0.02)], ids=["sgd", "adam"])
def test_a_user_layer_with_factored_gradients_agrees_with_the_generic_step(optimizer: Any) -> None:
    """Linear's weight gradient reaches the optimizer as its factors: formed element by
    element at one example, through jn.outer_sum at more."""
    rng = np.random.default_rng(5)
    model = jn.pipe(Linear(W=rng.normal(size=(6, 5))), jn.Tanh(), Linear(W=rng.normal(size=(5, 4))))
    batches = classification_batches(np.float64, (1, 7, 1, 1))
    run_both(model, jn.SoftmaxCrossEntropy(), optimizer, batches, np.float64)
    step = jn.compile_step(model, jn.SoftmaxCrossEntropy(), optimizer)
    step(model, optimizer.init(model), *batches[0])
    assert step.fused and "_linear_grad_factors" in step.source and "_linear_grad_params" not in step.source


def nested_model(dtype: Any) -> jn.Layer:
    """Chains inside chains and every combinator, a dropout and a batch normalization."""
    rng = np.random.default_rng(6)
    block = jn.Residual(jn.pipe(dense(rng, 8, 8, dtype), jn.GELU(), jn.pipe(dense(rng, 8, 8, dtype))))
    branches = jn.Concatenate((jn.pipe(dense(rng, 8, 3, dtype), jn.Sigmoid()), jn.Add((dense(rng, 8, 5, dtype), jn.pipe(dense(rng, 8, 5, dtype), jn.ReLU())))))
    return jn.pipe(
        jn.pipe(dense(rng, 6, 8, dtype), jn.BatchNorm.init(None, 8, dtype=dtype)),
        block,
        jn.Dropout(0.25),
        branches,
        jn.LayerNorm.init(None, 8, dtype=dtype),
        dense(rng, 8, 4, dtype),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_nested_chains_and_combinators_agree_with_the_generic_step(dtype: Any) -> None:
    run_both(nested_model(dtype), jn.SoftmaxCrossEntropy(), jn.optim.adamw(0.01), classification_batches(dtype), dtype, key=jn.random.key(8))


def test_a_small_convolutional_network_agrees_with_the_generic_step() -> None:
    rng = np.random.default_rng(7)
    key = jn.random.key(1)
    model = jn.pipe(
        jn.Conv2D.init(key, 1, 4, 3, padding=1, dtype=np.float64),
        jn.BatchNorm.init(None, 4, dtype=np.float64),
        jn.ReLU(),
        jn.MaxPool2D(2),
        jn.Flatten(),
        jn.Dropout(0.1),
        jn.Dense.init(key, 4 * 3 * 3, 3, dtype=np.float64),
    )
    batches = [(rng.normal(size=(5, 1, 6, 6)), rng.integers(0, 3, 5)) for _ in range(3)]
    run_both(model, jn.SoftmaxCrossEntropy(), jn.optim.momentum(0.05), batches, np.float64, key=jn.random.key(2))


def test_an_embedding_model_takes_integer_input() -> None:
    rng = np.random.default_rng(8)
    model = jn.pipe(jn.Embedding.init(jn.random.key(0), 10, 4, dtype=np.float64), jn.Flatten(), dense(rng, 12, 3, np.float64))
    batches = [(rng.integers(0, 10, size=(6, 3)), rng.integers(0, 3, 6)) for _ in range(3)]
    run_both(model, jn.SoftmaxCrossEntropy(), jn.optim.adam(0.1), batches, np.float64)


def test_batches_of_another_size_reuse_the_compiled_function() -> None:
    model, loss, optimizer = mlp(np.float64), jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.1)
    step = jn.compile_step(model, loss, optimizer)
    state = optimizer.init(model)
    X = np.random.default_rng(0).normal(size=(9, 6))
    model, state, _ = step(model, state, X, np.zeros(9, np.int64))
    seconds = step.compile_seconds
    assert seconds > 0
    step(model, state, X[:3], np.zeros(3, np.int64))
    assert step.compile_seconds == seconds and len(step._plans) == 1


# --------------------------------------------------------------------------- the functional contract
def test_nothing_given_is_written_and_everything_returned_is_fresh_and_read_only() -> None:
    model, loss, optimizer = nested_model(np.float64), jn.SoftmaxCrossEntropy(), jn.optim.adam(0.01)
    step = jn.compile_step(model, loss, optimizer)
    state = optimizer.init(model)
    (X, T), = classification_batches(np.float64, (7,))
    X.flags.writeable = True
    before = [a.copy() for a in jn.tree.leaves(model) + jn.tree.leaves(state)] + [X.copy(), T.copy()]
    new_model, new_state, _ = step(model, state, X, T, key=jn.random.key(0))
    after = jn.tree.leaves(model) + jn.tree.leaves(state) + [X, T]
    for old, now in zip(before, after):
        np.testing.assert_array_equal(old, now)
    given = jn.tree.leaves(model) + jn.tree.leaves(state) + [X, T]
    fresh = jn.tree.leaves(new_model, trainable=True) + jn.tree.leaves(new_state, trainable=True)
    fresh += [new_model.layers[0].layers[1].running_mean, new_model.layers[0].layers[1].running_var]
    for array in fresh:
        assert not array.flags.writeable
        assert not any(np.shares_memory(array, old) for old in given)
    assert int(new_state.count) == 1 and int(state.count) == 0


def test_the_same_arguments_give_the_same_result_whichever_model_came_before() -> None:
    """The step recognises the model it returned (and skips walking it); any other model of
    the architecture is checked and walked. Both give the same numbers."""
    model, loss, optimizer = mlp(np.float64), jn.SoftmaxCrossEntropy(), jn.optim.adam(0.01)
    step = jn.compile_step(model, loss, optimizer)
    (X, T), = classification_batches(np.float64, (7,))
    state = optimizer.init(model)
    first, first_state, v1 = step(model, state, X, T)
    second, _, v2 = step(first, first_state, X, T)  # the model it returned: fast path
    again, _, v3 = step(model, state, X, T)  # an older model: checked path
    assert v1 == v3
    assert_trees_equal(again, first, "model")
    rebuilt = jn.tree.map(np.copy, first)  # an equal model that the step never saw
    third, _, v4 = step(rebuilt, jn.tree.map(np.copy, first_state), X, T)
    assert v4 == v2
    for a, b in zip(jn.tree.leaves(third), jn.tree.leaves(second)):
        np.testing.assert_array_equal(a, b)


def test_fit_uses_the_compiled_step_and_gives_the_generic_result() -> None:
    rng = np.random.default_rng(9)
    model = jn.pipe(dense(rng, 6, 8, np.float64), jn.ReLU(), jn.Dropout(0.2), dense(rng, 8, 4, np.float64))
    # 48 examples: every batch has 16, so the compiled step's thread count (chosen by batch
    # size) is the one the generic path runs under, and the two give the same bits
    X, T = rng.normal(size=(48, 6)), rng.integers(0, 4, 48)
    kwargs = {"key": jn.random.key(4), "epochs": 2, "batch_size": 16}
    compiled = jn.fit(model, jn.SoftmaxCrossEntropy(), jn.optim.adam(0.01), X, T, **kwargs)
    with _blas.threads(_blas.auto_threads(16)):
        generic = jn.fit(model, jn.SoftmaxCrossEntropy(), jn.optim.adam(0.01), X, T, compiled=False, **kwargs)
    assert compiled.compiled and not generic.compiled
    assert compiled.history == generic.history
    assert_trees_equal(compiled.model, generic.model, "fitted model")


def test_fit_falls_back_to_the_generic_path_for_a_model_it_cannot_compile() -> None:
    rng = np.random.default_rng(10)
    model = jn.pipe(dense(rng, 3, 2, np.float64), PythonStatistics(count=np.zeros(1)))
    X, T = rng.normal(size=(8, 3)), rng.normal(size=(8, 2))
    result = jn.fit(model, jn.MeanSquaredError(), jn.optim.sgd(0.1), X, T, key=jn.random.key(0))
    assert not result.compiled and len(result.history) == 1
    with pytest.raises(TypeError, match="PythonStatistics at model.layers\\[1\\] computes its updated buffers in Python"):
        jn.fit(model, jn.MeanSquaredError(), jn.optim.sgd(0.1), X, T, key=jn.random.key(0), compiled=True)
    with pytest.raises(TypeError, match="compiled must be None, True or False"):
        jn.fit(model, jn.MeanSquaredError(), jn.optim.sgd(0.1), X, T, key=jn.random.key(0), compiled="yes")


def test_fit_shows_progress(capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(11)
    X, T = rng.normal(size=(20, 6)), rng.integers(0, 4, 20)
    jn.fit(mlp(np.float64), jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.1), X, T, key=jn.random.key(0), epochs=2, verbose=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]


# --------------------------------------------------------------------------- bad input
@numba.njit(cache=True)
def _identity_forward(X, count):
    """Y = X (a buffer ``count`` rides along)."""
    return X.copy()


@numba.njit(cache=True)
def _identity_grad_input(X, dY, count):
    """dX = dY."""
    return dY.copy()


@jn.layer
class PythonStatistics:
    """A layer (Y = X) that updates a buffer in Python, so the step cannot run it."""

    count: jn.Array = jn.buffer()
    kernels = jn.Kernels(_identity_forward, _identity_grad_input)
    needs_context = True

    def updated(self, X: Any, call_args: Any) -> PythonStatistics:
        return attrs.evolve(self, count=self.count + 1)


def test_compile_step_refuses_what_it_cannot_compile() -> None:
    loss, optimizer = jn.MeanSquaredError(), jn.optim.sgd(0.1)
    with pytest.raises(TypeError, match="model must be a jitnn layer"):
        jn.compile_step("model", loss, optimizer)
    with pytest.raises(TypeError, match="loss must be a jitnn loss"):
        jn.compile_step(mlp(np.float64), "mse", optimizer)
    with pytest.raises(TypeError, match="optimizer must have init and update"):
        jn.compile_step(mlp(np.float64), loss, 0.1)
    with pytest.raises(ValueError, match="threads must be None"):
        jn.compile_step(mlp(np.float64), loss, optimizer, threads=0)
    with pytest.raises(TypeError, match="computes its updated buffers in Python"):
        jn.compile_step(jn.pipe(PythonStatistics(count=np.zeros(1))), loss, optimizer)


def test_a_kernel_that_cannot_be_imported_is_refused() -> None:
    @jit
    def local_forward(X):
        """Y = X."""
        return X.copy()

    @jn.layer
    class Local:
        kernels = jn.Kernels(local_forward, local_forward)

    step = jn.compile_step(Local(), jn.MeanSquaredError(), jn.optim.sgd(0.1))
    with pytest.raises(TypeError, match="must be a module-level @jit function"):
        step(Local(), jn.optim.sgd(0.1).init(Local()), np.ones((2, 3)), np.ones((2, 3)))


def test_the_step_checks_its_arguments_naming_what_is_wrong() -> None:
    model, loss, optimizer = mlp(np.float64), jn.SoftmaxCrossEntropy(), jn.optim.adam(0.01)
    step = jn.compile_step(model, loss, optimizer)
    state = optimizer.init(model)
    X, T = np.ones((4, 6)), np.array([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"Dense at model.layers\[4\].W is float64\[8, 5\], the compiled model has float64\[8, 4\]"):
        step(jn.pipe(*mlp(np.float64).layers[:4], dense(np.random.default_rng(0), 8, 5, np.float64)), state, X, T)
    with pytest.raises(ValueError, match="structure differs from the compiled one"):
        step(jn.pipe(*model.layers[:4]), state, X, T)
    leaky = jn.pipe(*model.layers[:3], jn.LeakyReLU(0.01), model.layers[4])
    with pytest.raises(ValueError, match=r"LeakyReLU at model.layers\[3\] is configured differently"):
        jn.compile_step(leaky, loss, optimizer)(jn.pipe(*model.layers[:3], jn.LeakyReLU(0.1), model.layers[4]), state, X, T)
    with pytest.raises(ValueError, match="is a Sigmoid, the compiled model has a Tanh"):
        step(jn.pipe(model.layers[0], jn.Sigmoid(), *model.layers[2:]), state, X, T)
    with pytest.raises(TypeError, match="state must be the AdamState"):
        step(model, jn.optim.sgd(0.1).init(model), X, T)
    with pytest.raises(ValueError, match="the state's mu does not match"):
        step(model, optimizer.init(jn.pipe(*model.layers[:4], dense(np.random.default_rng(0), 8, 5, np.float64))), X, T)
    with pytest.raises(TypeError, match="must hold floating-point numbers"):
        step(model, state, X.astype(np.int64), T)
    with pytest.raises(ValueError, match=r"Dense at model.layers\[0\]: expects per-example input shape \(6,\)"):
        step(model, state, np.ones((4, 5)), T)
    with pytest.raises(ValueError, match="labels"):
        step(model, state, X, np.array([0, 1, 2, 9]))
    with pytest.raises(ValueError, match="labels|examples"):
        step(model, state, X, np.array([0, 1]))
    with pytest.raises(TypeError, match="key must be a jitnn.random.Key"):
        step(model, state, X, T, key=0)
    dropout = jn.pipe(model, jn.Dropout(0.5))
    with pytest.raises(ValueError, match="Dropout needs a random key"):
        jn.compile_step(dropout, loss, optimizer)(dropout, optimizer.init(dropout), X, T)


# --------------------------------------------------------------------------- the disk cache
def test_the_generated_module_is_written_once_inside_the_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_codegen, "cache_folder", lambda: tmp_path / "steps")
    model = jn.pipe(dense(np.random.default_rng(0), 3, 2, np.float64), jn.Sigmoid(), jn.Identity())
    step = jn.compile_step(model, jn.MeanSquaredError(), jn.optim.sgd(0.1))
    step(model, jn.optim.sgd(0.1).init(model), np.ones((2, 3)), np.ones((2, 2)))
    files = list((tmp_path / "steps").glob("jitnn_step_*.py"))
    assert len(files) == 1 and step.cached
    assert files[0].read_text().endswith(step.source)
    assert files[0].stem in sys.modules


def test_a_cache_folder_that_cannot_be_written_falls_back_to_compiling_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setattr(_codegen, "cache_folder", lambda: blocked / "steps")
    model = jn.pipe(dense(np.random.default_rng(0), 3, 2, np.float64), jn.Tanh(), jn.Identity(), jn.Identity())
    step = jn.compile_step(model, jn.MeanSquaredError(), jn.optim.sgd(0.1))
    with pytest.warns(RuntimeWarning, match="cannot cache the compiled step"):
        new, _, value = step(model, jn.optim.sgd(0.1).init(model), np.ones((2, 3)), np.ones((2, 2)))
    assert not step.cached
    with _blas.threads(_blas.auto_threads(2)):
        expected, _, expected_value = jn.train_step(model, jn.optim.sgd(0.1).init(model), jn.MeanSquaredError(), jn.optim.sgd(0.1), np.ones((2, 3)), np.ones((2, 2)))
    assert value == expected_value
    assert_trees_equal(new, expected, "model")


CACHE_SCRIPT = textwrap.dedent("""
    import numpy as np, jitnn as jn
    key = jn.random.key(0)
    model = jn.pipe(jn.Dense.init(key, 5, 4), jn.ReLU(), jn.Dense.init(key, 4, 3))
    optimizer = jn.optim.adam(1e-2)
    step = jn.compile_step(model, jn.SoftmaxCrossEntropy(), optimizer)
    X = np.linspace(-1, 1, 20, dtype=np.float32).reshape(4, 5)
    model, state, value = step(model, optimizer.init(model), X, np.array([0, 1, 2, 0]))
    function = next(iter(step._plans.values())).function
    print(repr(value), sum(function.stats.cache_hits.values()), sum(function.stats.cache_misses.values()), step.cached)
""")


@needs_jit
def test_a_second_process_loads_the_step_from_the_disk_cache(tmp_path: Path) -> None:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    runs = [subprocess.run([sys.executable, "-c", CACHE_SCRIPT], env=env, capture_output=True, check=False, text=True, timeout=300) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    first, second = (run.stdout.split() for run in runs)
    assert first[0] == second[0]  # the same loss
    assert first[1:] == ["0", "1", "True"]  # compiled, then written to the cache
    assert second[1:] == ["1", "0", "True"]  # loaded from the cache, not compiled
    assert len(list((tmp_path / "cache" / "jitnn_steps").glob("jitnn_step_*.py"))) == 1


BACKGROUND_SCRIPT = textwrap.dedent("""
    import time
    import numpy as np
    import jitnn as jn
    from jitnn import _blas

    rng = np.random.default_rng(3)
    k1, k2 = jn.random.split(jn.random.key(0))
    model = jn.pipe(jn.Dense.init(k1, 6, 8, dtype=np.float64), jn.ReLU(), jn.Dropout(0.2), jn.Dense.init(k2, 8, 4, dtype=np.float64))
    X, T = rng.normal(size=(16, 6)), rng.integers(0, 4, 16)
    loss, optimizer = jn.SoftmaxCrossEntropy(), jn.optim.adam(0.01)
    step = jn.compile_step(model, loss, optimizer, background=True)
    compiled = lambda: all(c.ready for c in step._plans.values()) and bool(step._plans)
    trained, state, values, started = model, optimizer.init(model), [], time.perf_counter()
    while len(values) < 3 or not compiled() or len(values) < step.generic_steps + 3:
        trained, state, value = step(trained, state, X, T, key=jn.random.fold_in(jn.random.key(1), len(values)))
        values.append(value)
        if not compiled():
            assert time.perf_counter() - started < 600, "the background compilation did not finish"
            time.sleep(0.05)
    reference, reference_state = model, optimizer.init(model)
    with _blas.threads(_blas.auto_threads(16)):
        for i in range(len(values)):
            reference, reference_state, value = jn.train_step(reference, reference_state, loss, optimizer, X, T, key=jn.random.fold_in(jn.random.key(1), i))
            assert value == values[i], (i, value, values[i])
    same = all(np.array_equal(a, b) for a, b in zip(jn.tree.leaves((trained, state)), jn.tree.leaves((reference, reference_state))))
    print(step.generic_steps, len(values) - step.generic_steps, same, step.compile_seconds < 1.0)
""")


def test_a_step_compiled_in_another_process_takes_over_from_the_generic_path_with_the_same_bits(tmp_path: Path) -> None:
    """``background=True``: the first calls run the generic path while a child process
    compiles the function into the cache; a later call loads it (no compilation here) and
    the rest run compiled. Every loss and the final model equal the generic path's."""
    if numba.config.DISABLE_JIT:
        pytest.skip("with NUMBA_DISABLE_JIT=1 nothing is compiled, in the background or not")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-c", BACKGROUND_SCRIPT], env=env, capture_output=True, check=False, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    generic, compiled, same, loaded = run.stdout.split()
    assert int(generic) >= 1 and int(compiled) >= 3
    assert same == "True"
    assert loaded == "True"  # loading the function the child compiled, not compiling it here


def test_background_compilation_can_be_turned_off() -> None:
    model = mlp(np.float64)
    assert jn.compile_step(model, jn.MeanSquaredError(), jn.optim.sgd(0.1), background=True).background
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JITNN_BACKGROUND_COMPILE", "0")
        assert not jn.compile_step(model, jn.MeanSquaredError(), jn.optim.sgd(0.1), background=True).background
    with pytest.raises(TypeError, match="compile_step: background"):
        jn.compile_step(model, jn.MeanSquaredError(), jn.optim.sgd(0.1), background="yes")


def test_the_module_name_changes_when_a_kernel_source_changes(tmp_path: Path) -> None:
    """Numba's cache checks only the generated file, so the environment fingerprint in the
    file (and so its name) must follow the kernels' source files."""
    module = tmp_path / "user_kernels.py"
    module.write_text("from jitnn._jit import jit\n@jit\ndef k(X):\n    return X * 2.0\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import user_kernels

        first = _codegen._fingerprint([user_kernels.k])
        module.write_text("from jitnn._jit import jit\n@jit\ndef k(X):\n    return X * 3.0\n")
        os.utime(module, (1, 1))
        assert _codegen._fingerprint([user_kernels.k]) != first
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("user_kernels", None)


# --------------------------------------------------------------------------- threads
def test_threads_are_chosen_by_batch_size_and_restored() -> None:
    assert _blas.auto_threads(1) == 1
    assert _blas.auto_threads(_blas.SMALL_BATCH) == _blas._MAX
    before = _blas.get_threads()
    with _blas.threads(1):
        assert _blas.get_threads() == 1 or not _blas.available()
    assert _blas.get_threads() == before


def test_a_fixed_thread_count_gives_the_same_step() -> None:
    """``threads=None`` is the count chosen by batch size: the same bits as that count fixed.
    Another count may sum the matrix products in another order: each run's loss and gradients
    are within the bounds of ``tolerances.value_and_grad_bound`` of the exact ones, so two runs
    within twice those; SGD's ``p - lr g`` then differs by ``lr`` times the gradients' bound
    and a rounding of ``lr g`` and of the new parameter in each run."""
    model, loss, optimizer = mlp(np.float64), jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.1)
    (X, T), = classification_batches(np.float64, (80,))
    results = {threads: jn.compile_step(model, loss, optimizer, threads=threads)(model, optimizer.init(model), X, T) for threads in (None, 1, 2)}
    chosen = _blas.auto_threads(len(X))
    if chosen in results:
        assert results[None][2] == results[chosen][2]
        assert_trees_equal(results[None][0], results[chosen][0], f"model, threads=None and threads={chosen}")
    bound = tolerances.value_and_grad_bound(model, loss, X, T, np.float64)
    u = tolerances.unit_roundoff(np.float64)
    for threads in (None, 2):
        tolerances.assert_within(results[threads][2], results[1][2], 2 * bound.e_value, f"loss, threads={threads} and threads=1")
        for (path, a), b, g, e in zip(jn.tree.leaves_with_paths(results[threads][0]), jn.tree.leaves(results[1][0]), bound.grads, bound.egrads):
            limit = 0.1 * 2 * e + 2 * u * (0.1 * np.abs(g) + np.abs(b))
            tolerances.assert_within(a, b, limit, f"{path}, threads={threads} and threads=1")


# --------------------------------------------------------------------------- memory between steps
@needs_jit
def test_steps_reuse_the_memory_the_previous_step_freed() -> None:
    """With malloc's thresholds fixed (jitnn/_memory.py) a step gets the blocks the last one
    freed: a step writing a few megabytes costs no page faults once the shape is known
    (without the fix it paid hundreds a step)."""
    resource = pytest.importorskip("resource")
    if not jn._memory.keep_freed_memory():
        pytest.skip("malloc tuning is not available here (not glibc, or JITNN_MALLOC_TUNING=0)")
    rng = np.random.default_rng(12)
    model = jn.pipe(dense(rng, 300, 400, np.float32), jn.ReLU(), dense(rng, 400, 10, np.float32))
    optimizer = jn.optim.adam(1e-3)
    step, state = jn.compile_step(model, jn.SoftmaxCrossEntropy(), optimizer), optimizer.init(model)
    X, T = rng.normal(size=(256, 300)).astype(np.float32), rng.integers(0, 10, 256)
    for _ in range(5):
        model, state, _ = step(model, state, X, T)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        model, state, _ = step(model, state, X, T)
    per_step = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
    assert per_step < 10, f"{per_step} page faults per step"


@needs_jit
def test_generic_steps_reuse_the_memory_the_previous_step_freed() -> None:
    """The same for the generic path (forward then backward, here through train_step) on a
    small CNN, whose step paid 2,673 page faults and twice its time before the generic
    passes fixed malloc's thresholds too."""
    resource = pytest.importorskip("resource")
    if not jn._memory.keep_freed_memory():
        pytest.skip("malloc tuning is not available here (not glibc, or JITNN_MALLOC_TUNING=0)")
    rng = np.random.default_rng(13)
    key = jn.random.key(13)
    model = jn.pipe(jn.Conv2D.init(key, 1, 16, 3), jn.ReLU(), jn.MaxPool2D(2), jn.Flatten(), dense(rng, 16 * 13 * 13, 10, np.float32))
    optimizer = jn.optim.sgd(0.01)
    state = optimizer.init(model)
    X, T = rng.normal(size=(64, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 64)
    for _ in range(5):
        model, state, _ = jn.train_step(model, state, jn.SoftmaxCrossEntropy(), optimizer, X, T)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        model, state, _ = jn.train_step(model, state, jn.SoftmaxCrossEntropy(), optimizer, X, T)
    per_step = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
    assert per_step < 10, f"{per_step} page faults per step"


@pytest.mark.parametrize("call", ["forward", "value_and_grad", "compile_step"])
def test_the_first_pass_or_compiled_step_of_a_process_fixes_mallocs_thresholds(call: str) -> None:
    code = textwrap.dedent(f"""
        import numpy as np, jitnn as jn
        assert jn._memory._applied is None
        model = jn.Dense.init(jn.random.key(0), 3, 2)
        X, T = np.ones((4, 3), np.float32), np.zeros(4, np.int64)
        call = {call!r}
        if call == "forward":
            jn.forward(model, X)
        elif call == "value_and_grad":
            jn.value_and_grad(model, jn.SoftmaxCrossEntropy(), X, T)
        else:
            jn.compile_step(model, jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.1))
        print(jn._memory._applied)
    """)
    environment = {name: value for name, value in os.environ.items() if name != "JITNN_MALLOC_TUNING"}
    child = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, check=False, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == str(sys.platform.startswith("linux"))


def test_malloc_tuning_can_be_turned_off() -> None:
    code = "import jitnn._memory as m; print(m.keep_freed_memory())"
    off = subprocess.run([sys.executable, "-c", code], env={**os.environ, "JITNN_MALLOC_TUNING": "0"}, capture_output=True, check=False, text=True, timeout=120)
    assert off.returncode == 0, off.stderr
    assert off.stdout.strip() == "False"


def test_threads_sharing_one_step_get_the_results_of_running_alone() -> None:
    """The kernels release the GIL, so a step may be shared by threads; what it remembers
    between calls is replaced whole, so no thread picks up another's arrays."""
    import threading

    loss, optimizer = jn.SoftmaxCrossEntropy(), jn.optim.adam(0.01)
    models = [mlp(np.float64, seed) for seed in range(4)]
    data = classification_batches(np.float64, (5,) * 15)
    step = jn.compile_step(models[0], loss, optimizer)

    def train(model: jn.Layer) -> jn.Layer:
        state = optimizer.init(model)
        for X, T in data:
            model, state, _ = step(model, state, X, T)
        return model

    alone = [train(model) for model in models]
    shared: list[Any] = [None] * len(models)
    threads = [threading.Thread(target=lambda i=i: shared.__setitem__(i, train(models[i]))) for i in range(len(models))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for expected, got in zip(alone, shared):
        for a, b in zip(jn.tree.leaves(got), jn.tree.leaves(expected)):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- a loss that stops being finite
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "generic"])
def test_fit_reports_the_first_non_finite_loss_and_keeps_the_last_good_model(compiled: bool) -> None:
    rng = np.random.default_rng(13)
    X, T = rng.normal(size=(40, 6)), rng.integers(0, 4, 40)
    X[25] = np.inf  # one bad example: the first epoch's step whose batch holds it is the first bad one
    model, optimizer = mlp(np.float64), jn.optim.sgd(0.1)
    kwargs = {"key": jn.random.key(5), "epochs": 2, "batch_size": 10, "compiled": compiled}
    with pytest.raises(jn.NonFiniteLossError, match=r"the loss is nan at epoch 1, step \d") as caught:
        jn.fit(model, jn.SoftmaxCrossEntropy(), optimizer, X, T, check_finite=True, **kwargs)
    error = caught.value
    assert error.epoch == 1 and not np.isfinite(error.value)
    # the model the failing step started from: finite, and what training up to there gives
    assert all(np.isfinite(leaf).all() for leaf in jn.tree.leaves(error.model))
    epoch_key = jn.random.split(jn.random.key(5))[1]  # as fit derives the first epoch's batch order
    order = jn.random.split(epoch_key)[0]
    first_bad = next(i for i, (Xb, _) in enumerate(jn.batches(order, X, T, 10)) if not np.isfinite(Xb).all()) + 1
    assert error.step == first_bad
    assert int(error.state.count) == first_bad - 1
    # without the check, training runs on and the history shows the NaN
    result = jn.fit(model, jn.SoftmaxCrossEntropy(), optimizer, X, T, **kwargs)
    assert np.isnan(result.history).any()
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        jn.fit(model, jn.SoftmaxCrossEntropy(), optimizer, X, T, check_finite=1, **kwargs)


def test_the_learning_rate_scale_in_the_state_is_read_by_both_paths() -> None:
    """sgd(0.02) at lr_scale 0.5 is sgd(0.01) to the bit (halving is exact), compiled or not."""
    model, (X, T) = mlp(np.float64), classification_batches(np.float64, (7,))[0]
    halved = attrs.evolve(jn.optim.sgd(0.02).init(model), lr_scale=0.5)
    expected, _, value = jn.train_step(model, jn.optim.sgd(0.01).init(model), jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.01), X, T)
    generic, generic_state, _ = jn.train_step(model, halved, jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.02), X, T)
    compiled, compiled_state, _ = jn.compile_step(model, jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.02))(model, halved, X, T)
    assert_trees_equal(generic, expected, "generic")
    assert_trees_equal(compiled, expected, "compiled")
    assert float(generic_state.lr_scale) == float(compiled_state.lr_scale) == 0.5  # the scale stays in the state
    with pytest.raises(ValueError, match="lr_scale"):
        attrs.evolve(halved, lr_scale=0.0)


# --------------------------------------------------------------------------- freezing
@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "lion"])
def test_a_masked_optimizer_leaves_the_frozen_parameters_bit_for_bit(name: str) -> None:
    """Inside the compiled step as in the generic update: the first layer frozen whole, the
    second layer's bias frozen alone; batches of 7 and of 1 (the factored route)."""
    model = mlp(np.float64)  # layers.0, layers.2, layers.4 are the Dense layers
    optimizer = jn.optim.masked(OPTIMIZERS[name](), lambda path: path not in ("layers.0.W", "layers.0.b", "layers.2.b"))
    run_both(model, jn.SoftmaxCrossEntropy(), optimizer, classification_batches(np.float64, (7, 1, 7)), np.float64)
    step = jn.compile_step(model, jn.SoftmaxCrossEntropy(), optimizer)
    assert step.fused
    state = optimizer.init(model)
    new, new_state, _ = step(model, state, *classification_batches(np.float64, (7,))[0])
    for frozen in (new.layers[0].W, new.layers[0].b, new.layers[2].b):
        assert any(frozen is p for p in jn.tree.leaves(model))  # the same array, not a copy
    assert not np.array_equal(new.layers[2].W, model.layers[2].W) and not np.array_equal(new.layers[4].b, model.layers[4].b)
    for moment in optimizer.moment_names:
        assert not np.any(getattr(new_state, moment).layers[0].W)
    assert step.source.count("_dense_grad_params(") + step.source.count("_dense_grad_factors(") == 2  # none for the frozen layer


def test_masked_refuses_what_it_cannot_use() -> None:
    model = mlp(np.float64)
    with pytest.raises(TypeError, match="masked: optimizer must be a named jitnn optimizer"):
        jn.optim.masked(jn.optim.chain(jn.optim.scale(0.5), jn.optim.sgd(0.1)), {"layers.0"})
    with pytest.raises(TypeError, match="masked: select must be a predicate on parameter paths or a collection of paths"):
        jn.optim.masked(jn.optim.sgd(0.1), "layers.0")
    with pytest.raises(ValueError, match=r"masked\(sgd\): \['layers.9'\] select no parameter"):
        jn.optim.masked(jn.optim.sgd(0.1), {"layers.9"}).init(model)
    with pytest.raises(TypeError, match=r"masked\(sgd\): select must return True or False"):
        jn.optim.masked(jn.optim.sgd(0.1), lambda path: path).init(model)
    prefixes = jn.optim.masked(jn.optim.sgd(0.1), {"layers.4"})
    assert prefixes.frozen(model) == (True, True, True, True, False, False)


@pytest.mark.parametrize("optimizer", [
    jn.optim.adam(0.01),
    jn.optim.masked(jn.optim.momentum(0.1, 0.9), lambda path: not path.startswith("layers.0")),
    jn.optim.chain(jn.optim.clip_by_global_norm(1.0), jn.optim.sgd(0.1)),
], ids=["adam", "masked-momentum", "chain"])
def test_a_step_split_around_a_reduction_gives_the_fused_steps_bits(optimizer: Any) -> None:
    """``reduce`` sees every gradient and new buffer between the two compiled halves; the
    identity gives the single function's result bit for bit, frozen parameters and running
    statistics included, and a reduction that doubles the gradients is what the update gets."""
    rng = np.random.default_rng(21)
    k1, k2 = jn.random.split(jn.random.key(5))
    model = jn.pipe(jn.Dense.init(k1, 4, 6, dtype=np.float64), jn.BatchNorm.init(None, 6, dtype=np.float64), jn.Tanh(),
                    jn.Dense.init(k2, 6, 3, dtype=np.float64))
    X, T = rng.normal(size=(9, 4)), rng.integers(0, 3, 9)
    seen = []

    def identity(grads: tuple, buffers: tuple) -> tuple:
        seen.append((len(grads), [len(site) for site in buffers]))
        return grads, buffers

    whole = jn.compile_step(model, jn.SoftmaxCrossEntropy(), optimizer)
    split = jn.compile_step(model, jn.SoftmaxCrossEntropy(), optimizer, reduce=identity)
    a, b = (model, optimizer.init(model)), (model, optimizer.init(model))
    for _ in range(3):
        *a, value_a = whole(*a, X, T)
        *b, value_b = split(*b, X, T)
        assert value_a == value_b
    assert seen == [(6, [2])] * 3  # six parameters; one site (BatchNorm) with two new buffers
    for x, y in zip(jn.tree.leaves(a), jn.tree.leaves(b)):
        assert x.tobytes() == y.tobytes()

    def doubled(grads: tuple, buffers: tuple) -> tuple:
        return tuple(2 * g for g in grads), buffers

    sgd = jn.optim.sgd(0.1)
    twice, _, _ = jn.compile_step(model, jn.SoftmaxCrossEntropy(), sgd, reduce=doubled)(model, sgd.init(model), X, T)
    _, grads = jn.value_and_grad(model, jn.SoftmaxCrossEntropy(), X, T, training=True)
    for new, old, g in zip(jn.tree.leaves(twice, trainable=True), jn.tree.leaves(model, trainable=True), jn.tree.leaves(grads, trainable=True)):
        np.testing.assert_array_equal(new, old - 0.1 * (2 * g))
    with pytest.raises(TypeError, match="reduce must be a function"):
        jn.compile_step(model, jn.SoftmaxCrossEntropy(), sgd, reduce=3)
