"""``jn.testing.check_layer``, the conformance suite offered to users: it passes on a user's
layer written as the README shows (every built-in layer goes through it in
``test_conformance.py``), and on layers broken on purpose it fails naming the check that
catches each fault, with the others still run."""

from __future__ import annotations

import itertools
from typing import Any

import attrs
import numba
import numpy as np
import pytest
from test_api import ScaleDoubledInputGrad, ScaleWrongParamGrad
from user_layers import (
    Linear,
    Scale,
    ScaleShape,
    _scale_forward,
    _scale_grad_input,
    _scale_grad_params,
    _linear_forward,
    _linear_grad_input,
    _linear_grad_params,
)

import jitnn as jn

S = np.array([0.5, -2.0, 1.5], np.float32)
X = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
ALL = set(jn.testing.LAYER_CHECKS)
CONTEXT_CHECKS = {"gradients in training mode", "same key, same bits"}


def failed(layer: jn.Layer, inputs: np.ndarray = X, **kwargs: Any) -> jn.testing.LayerReport:
    """The report of a check_layer run that must fail; its message names every failed check."""
    with pytest.raises(jn.testing.LayerCheckError) as caught:
        jn.testing.check_layer(layer, inputs, **kwargs)
    report = caught.value.report
    assert isinstance(caught.value, AssertionError)
    for name, message in report.failed:
        assert f"FAILED {name}: {message}" in str(caught.value)
    return report


def failed_names(report: jn.testing.LayerReport) -> set[str]:
    return {name for name, _ in report.failed}


# --------------------------------------------------------------------------- layers that pass
def test_a_user_layer_passes_every_check_that_applies() -> None:
    report = jn.testing.check_layer(Scale(s=S), X)
    assert set(report.passed) == ALL - CONTEXT_CHECKS
    assert report.run == tuple(name for name in jn.testing.LAYER_CHECKS if name not in CONTEXT_CHECKS)
    assert dict(report.skipped).keys() == CONTEXT_CHECKS
    assert not report.failed
    assert "all 6 checks passed" in str(report)


W = np.random.default_rng(1).normal(size=(3, 2)).astype(np.float32)


def test_a_user_layer_with_factored_gradients_passes() -> None:
    report = jn.testing.check_layer(Linear(W=W), X)
    assert set(report.passed) == ALL - CONTEXT_CHECKS


@numba.njit(cache=True)
def _linear_grad_factors_doubled(X, dY, W):
    """Wrong on purpose: factors of twice the gradient."""
    return ((X, 2 * dY),)


@numba.njit(cache=True)
def _linear_grad_factors_unpaired(X, dY, W):
    """Wrong on purpose: the gradient itself where its factors belong."""
    return (X.T @ dY,)


@jn.layer
class LinearDoubledFactors(Linear):
    kernels = jn.Kernels(_linear_forward, _linear_grad_input, _linear_grad_params, factored=jn.Factored(_linear_grad_factors_doubled, ("W",)))


@jn.layer
class LinearUnpairedFactors(Linear):
    kernels = jn.Kernels(_linear_forward, _linear_grad_input, _linear_grad_params, factored=jn.Factored(_linear_grad_factors_unpaired, ("W",)))


def test_factors_that_are_not_the_stored_gradient_fail_the_trace_route() -> None:
    report = failed(LinearDoubledFactors(W=W), skip=("compiled step",))
    assert failed_names(report) == {"trace route"}
    message = dict(report.failed)["trace route"]
    assert "the gradient .W of the Kernels.factored grad_params kernel is not bit for bit that of layer.grad_params" in message
    assert "the gradient .W at one example of the Kernels.factored grad_params kernel at one example" in message
    report = failed(LinearUnpairedFactors(W=W), skip=("compiled step",))
    assert failed_names(report) == {"trace route"}
    assert "must give W's gradient as a pair (A, B) of 2-D arrays with as many rows" in dict(report.failed)["trace route"]


def test_a_model_holding_a_user_layer_passes() -> None:
    model = jn.pipe(jn.Dense.init(jn.random.key(1), 3, 3), Scale(s=S), jn.Dropout(0.25), jn.Tanh())
    report = jn.testing.check_layer(model, X, key=jn.random.key(2))
    assert set(report.passed) == ALL  # the dropout makes the training checks apply


def test_the_arguments_are_handed_as_given_and_left_unchanged() -> None:
    """dY, T and a loss of the user's; X, dY and T are never written (check_layer copies)."""
    rng = np.random.default_rng(3)
    dY, T = rng.normal(size=(5, 3)), rng.random((5, 3)).astype(np.float32)
    before = [X.copy(), dY.copy(), T.copy()]
    report = jn.testing.check_layer(Scale(s=S), X, dY=dY, loss=jn.BinaryCrossEntropy(), T=T, steps=2, dtypes=(np.float64,))
    assert "compiled step" in report.passed
    for array, copy in zip((X, dY, T), before):
        np.testing.assert_array_equal(array, copy)
    labels = rng.integers(0, 3, 5)
    jn.testing.check_layer(Scale(s=S), X, loss=jn.SoftmaxCrossEntropy(), T=labels, dtypes=(np.float32,))


def test_checks_can_be_skipped_by_name() -> None:
    report = jn.testing.check_layer(ScaleDoubledInputGrad(s=S), X, skip=("gradients",))
    assert dict(report.skipped)["gradients"] == "skipped on request"
    assert "gradients" not in report.run


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="expected a jitnn layer"):
        jn.testing.check_layer("Scale", X)
    with pytest.raises(TypeError, match="give the targets T"):
        jn.testing.check_layer(Scale(s=S), X, loss=jn.MeanSquaredError())
    with pytest.raises(ValueError, match="unknown checks in skip: \\['gradient'\\]"):
        jn.testing.check_layer(Scale(s=S), X, skip=("gradient",))
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        jn.testing.check_layer(Scale(s=S), X, steps=0)
    with pytest.raises(TypeError, match="dtypes must hold float32 or float64"):
        jn.testing.check_layer(Scale(s=S), X, dtypes=(np.float16,))
    with pytest.raises(ValueError, match="rtol must be a finite non-negative number"):
        jn.testing.check_layer(Scale(s=S), X, rtol=-1.0)
    with pytest.raises(TypeError, match="key must be a jitnn.random.Key"):
        jn.testing.check_layer(Scale(s=S), X, key=0)


# --------------------------------------------------------------------------- layers broken on purpose
def test_a_wrong_input_gradient_fails_the_gradient_check_only() -> None:
    report = failed(ScaleDoubledInputGrad(s=S))
    assert failed_names(report) == {"gradients"}
    assert "grad_input disagrees with central differences" in dict(report.failed)["gradients"]
    assert set(report.passed) == ALL - CONTEXT_CHECKS - {"gradients"}  # the other checks still ran


def test_a_wrong_parameter_gradient_fails_the_gradient_check() -> None:
    report = failed(ScaleWrongParamGrad(s=S))
    assert failed_names(report) == {"gradients"}
    assert "grad_params s" in dict(report.failed)["gradients"]


@numba.njit(cache=True)
def _scale_forward_into_input(X, s):
    """Wrong on purpose: writes into its input before scaling it."""
    X[0, 0] = 0.0
    return X * s


@jn.layer
class ScaleWritesItsInput(ScaleShape):
    s: np.ndarray = jn.param()
    kernels = jn.Kernels(_scale_forward_into_input, _scale_grad_input, _scale_grad_params)


def test_a_kernel_that_writes_into_its_input_fails_the_purity_check() -> None:
    report = failed(ScaleWritesItsInput(s=S))
    assert failed_names(report) == {"purity"}
    message = dict(report.failed)["purity"]
    assert message.startswith("layer.forward(X) in float32 raised") and "writes into an array it was handed" in message
    assert message.count("raised") == 1  # reported once, not once per call
    assert "writes into a read-only array (see purity)" in dict(report.skipped)["shapes and dtypes"]


@numba.njit(cache=True)
def _scale_by_batch_forward(X, s):
    """Wrong on purpose: Y = X * s * n, the batch size n in it (with consistent gradients)."""
    return X * s * X.shape[0]


@numba.njit(cache=True)
def _scale_by_batch_grad_input(X, dY, s):
    return dY * s * X.shape[0]


@numba.njit(cache=True)
def _scale_by_batch_grad_params(X, dY, s):
    return ((X * dY).sum(axis=0) * X.shape[0],)


@jn.layer
class ScaleByBatchSize(ScaleShape):
    s: np.ndarray = jn.param()
    kernels = jn.Kernels(_scale_by_batch_forward, _scale_by_batch_grad_input, _scale_by_batch_grad_params)


def test_a_forward_that_depends_on_the_batch_fails_batch_invariance_only() -> None:
    report = failed(ScaleByBatchSize(s=S))
    assert failed_names(report) == {"batch invariance"}
    message = dict(report.failed)["batch invariance"]
    assert "in float32: forward: the batch and the examples one at a time differ" in message
    assert "in float64: grad_input" in message and "grad_params s" in message


@numba.njit(cache=True)
def _scale_grad_params_short(X, dY, s):
    """Wrong on purpose: a gradient one element short."""
    return ((X * dY).sum(axis=0)[1:],)


@jn.layer
class ScaleShortParamGrad(ScaleShape):
    s: np.ndarray = jn.param()
    kernels = jn.Kernels(_scale_forward, _scale_grad_input, _scale_grad_params_short)


def test_a_parameter_gradient_of_the_wrong_shape_fails_the_shape_check() -> None:
    report = failed(ScaleShortParamGrad(s=S))
    assert report.failed[0][0] == "shapes and dtypes"
    assert failed_names(report) <= {"shapes and dtypes", "compiled step"}  # the compiled step checks the shape its own way
    assert "layer.grad_params(X, dY) in float32 raised ValueError" in dict(report.failed)["shapes and dtypes"]
    assert "gradient of s has shape (2,), expected (3,)" in dict(report.failed)["shapes and dtypes"]
    # the checks that need the gradient cannot run, and say why; the forward-only ones still pass
    assert "raised the error reported by 'shapes and dtypes'" in dict(report.skipped)["batch invariance"]


def test_the_compiled_step_names_the_layer_whose_parameter_gradient_has_the_wrong_shape() -> None:
    """The step's own check (one call per parameter, before the optimizer reads the
    gradient) is translated into the generic path's error, which names the layer."""
    model = jn.pipe(ScaleShortParamGrad(s=S), jn.Dense.init(jn.random.key(0), S.size, 2, dtype=S.dtype))
    optimizer = jn.optim.sgd(0.1)
    step = jn.compile_step(model, jn.SoftmaxCrossEntropy(), optimizer)
    X = np.ones((4, S.size), S.dtype)
    with pytest.raises(ValueError, match=r"ScaleShortParamGrad at model.layers\[0\]: gradient of s has shape \(2,\), expected \(3,\)"):
        step(model, optimizer.init(model), X, np.zeros(4, np.int64))


@numba.njit(cache=True)
def _scale_forward_float64(X, s):
    """Wrong on purpose: the output is float64 whatever the layer's dtype."""
    return (X * s).astype(np.float64)


@jn.layer
class ScaleOutputInFloat64(ScaleShape):
    s: np.ndarray = jn.param()
    kernels = jn.Kernels(_scale_forward_float64, _scale_grad_input, _scale_grad_params)


def test_an_output_in_another_dtype_fails_the_shape_and_dtype_check() -> None:
    report = failed(ScaleOutputInFloat64(s=S))
    assert "shapes and dtypes" in failed_names(report)
    assert "in float32: layer.forward(X) has dtype float64, expected the layer's float32" in dict(report.failed)["shapes and dtypes"]


_calls = itertools.count()


@numba.njit(cache=True)
def _jitter_forward(X, s, factor):
    """Y = X * s * factor;  X (n, k), s (k,), factor a scalar."""
    return X * s * factor


@numba.njit(cache=True)
def _jitter_grad_input(X, dY, s, factor):
    return dY * s * factor


@numba.njit(cache=True)
def _jitter_grad_params(X, dY, s, factor):
    return ((X * dY).sum(axis=0) * factor,)


@jn.layer
class Jitter(ScaleShape):
    """Wrong on purpose: its per-call argument (a factor) changes from call to call instead
    of coming from the pass's key, so a trace and a plain call, or two training passes with
    the same key, see different factors."""

    s: np.ndarray = jn.param()
    kernels = jn.Kernels(_jitter_forward, _jitter_grad_input, _jitter_grad_params)
    needs_context = True

    def call_args(self, X: Any, context: Any, where: str) -> tuple[Any, ...]:
        return (X.dtype.type(1 + next(_calls) % 3),)


def test_answers_that_change_from_call_to_call_fail_the_trace_route_and_same_key_checks() -> None:
    report = failed(Jitter(s=S), skip=("gradients", "gradients in training mode", "compiled step"))
    assert {"trace route", "same key, same bits"} <= failed_names(report)
    assert "is not bit for bit that of" in dict(report.failed)["trace route"]
    assert "two training passes with the same key differ in" in dict(report.failed)["same key, same bits"]


@jn.layer
class PythonCount:
    """A layer the compiled step cannot run: it updates its buffer in Python."""

    count: jn.Array = jn.buffer()
    kernels = jn.Kernels(_scale_forward, _scale_grad_input)
    needs_context = True

    def updated(self, X: Any, call_args: Any) -> PythonCount:
        return attrs.evolve(self, count=self.count + 1)


def test_a_layer_without_a_compiled_form_is_skipped_there_not_failed() -> None:
    report = jn.testing.check_layer(PythonCount(count=np.ones(3)), X)
    reason = dict(report.skipped)["compiled step"]
    assert "jn.compile_step refuses the layer" in reason and "computes its updated buffers in Python" in reason
    assert "compiled step" not in report.run
    assert {"same key, same bits", "purity", "trace route"} <= set(report.passed)


# --------------------------------------------------------------------------- check_grads in float64
SEEN: list[np.dtype] = []


def _recording_tanh(X):
    SEEN.append(X.dtype)
    return np.tanh(X)


def _recording_tanh_grad(X, dY):
    SEEN.append(X.dtype)
    return dY * (1.0 - np.tanh(X) ** 2)


@jn.layer
class RecordingTanh:
    """Tanh with plain Python kernels that note the dtype they are handed."""

    kernels = jn.Kernels(_recording_tanh, _recording_tanh_grad)


def test_check_grads_computes_a_layer_without_parameters_in_float64() -> None:
    SEEN.clear()
    jn.testing.check_grads(RecordingTanh(), X)  # float32 input
    assert SEEN and set(SEEN) == {np.dtype(np.float64)}
