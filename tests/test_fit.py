"""``jn.fit``'s training workflow: validation data scored after each epoch in evaluation
mode (the loss and named metrics, in ``FitResult.metrics``), the same scores compiled or
not, and every bad argument refused before the first step."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import jitnn as jn


def data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian blobs per class, four classes, six features."""
    rng = np.random.default_rng(seed)
    T = rng.integers(0, 4, n)
    centers = np.random.default_rng(100).normal(scale=3.0, size=(4, 6))
    return (centers[T] + rng.normal(size=(n, 6))).astype(np.float32), T


def classifier(seed: int = 0) -> jn.Layer:
    k1, k2 = jn.random.split(jn.random.key(seed))
    return jn.pipe(jn.Dense.init(k1, 6, 16), jn.ReLU(), jn.Dropout(0.2), jn.Dense.init(k2, 16, 4))


def fit(model: jn.Layer, **options: Any) -> jn.FitResult:
    X, T = data(96, 1)
    return jn.fit(model, jn.SoftmaxCrossEntropy(), jn.optim.adam(0.02), X, T, key=jn.random.key(2), batch_size=16, **options)


def top_2_accuracy(scores: Any, labels: Any) -> float:
    return jn.top_k_accuracy(scores, labels, k=2)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "generic"])
def test_validation_scores_each_epoch_in_evaluation_mode(compiled: bool) -> None:
    X_val, T_val = data(40, 3)
    result = fit(classifier(), epochs=3, validation_data=(X_val, T_val), metrics=[jn.accuracy, top_2_accuracy], compiled=compiled)
    assert list(result.metrics) == ["loss", "val_loss", "val_accuracy", "val_top_2_accuracy"]
    assert result.metrics["loss"] == result.history and all(len(values) == 3 for values in result.metrics.values())
    Y = result.model.forward(X_val)  # evaluation mode: dropout off
    assert result.metrics["val_loss"][-1] == jn.SoftmaxCrossEntropy().value(Y, T_val)
    assert result.metrics["val_accuracy"][-1] == jn.accuracy(Y, T_val)
    assert result.metrics["val_top_2_accuracy"][-1] == jn.top_k_accuracy(Y, T_val, k=2)
    assert result.metrics["val_loss"][-1] < result.metrics["val_loss"][0] and result.metrics["val_accuracy"][-1] > 0.5


def test_the_compiled_and_generic_fits_score_alike() -> None:
    """The compiled step and compile_predict give the generic path's bits, so the scores are equal."""
    validation = data(40, 3)
    runs = [fit(classifier(), epochs=2, validation_data=validation, metrics=[jn.accuracy], compiled=c).metrics for c in (True, False)]
    assert runs[0] == runs[1]


def test_a_validation_set_larger_than_a_prediction_batch_is_scored_whole() -> None:
    X_val, T_val = data(2500, 4)  # more rows than one compiled prediction batch (1024)
    result = fit(classifier(), epochs=1, validation_data=(X_val, T_val), metrics=[jn.accuracy])
    Y = np.concatenate([result.model.forward(X_val[i : i + 1024]) for i in range(0, 2500, 1024)])
    assert result.metrics["val_accuracy"] == (jn.accuracy(Y, T_val),)
    assert result.metrics["val_loss"] == (jn.SoftmaxCrossEntropy().value(Y, T_val),)


def test_without_validation_data_the_metrics_hold_the_loss_only() -> None:
    result = fit(classifier(), epochs=2)
    assert result.metrics == {"loss": result.history}


def test_verbose_prints_the_scores_of_each_epoch(capsys: pytest.CaptureFixture) -> None:
    fit(classifier(), epochs=2, validation_data=data(20, 3), metrics=[jn.accuracy], verbose=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"epoch {i + 1}/2: loss ") for i, line in enumerate(lines))
    assert all(", val_loss " in line and ", val_accuracy " in line and line.endswith(" s)") for line in lines)


def test_bad_validation_data_and_metrics_are_refused_before_training() -> None:
    X_val, T_val = data(10, 3)
    cases = [
        (dict(metrics=[jn.accuracy]), ValueError, "fit: metrics are computed on validation data; give validation_data"),
        (dict(validation_data=(X_val, T_val), metrics=["accuracy"]), TypeError, "fit: each metric must be a function"),
        (dict(validation_data=(X_val, T_val), metrics=jn.accuracy), TypeError, "fit: metrics must be a list of functions"),
        (dict(validation_data=(X_val, T_val), metrics=[lambda Y, T: 0.0]), TypeError, "has no name"),
        (dict(validation_data=(X_val, T_val), metrics=[jn.accuracy, jn.accuracy]), ValueError, "two metrics are named 'accuracy'"),
        (dict(validation_data=X_val), TypeError, "fit: validation_data must be a pair"),
        (dict(validation_data=(X_val[:, :5], T_val)), ValueError, r"validation_data's inputs have shape \(10, 5\).*examples of shape \(6,\)"),
        (dict(validation_data=(X_val, T_val[:9])), ValueError, "fit: validation_data has 10 inputs but 9 targets"),
        (dict(validation_data=(X_val, T_val + 4)), ValueError, "SoftmaxCrossEntropy: label .* is out of range for 4 classes"),
        (dict(validation_data=(X_val.astype(int), T_val)), TypeError, "must hold floating-point numbers"),
    ]
    for options, error, message in cases:
        with pytest.raises(error, match=message):
            fit(classifier(), epochs=1, callback=lambda *args: pytest.fail("trained despite bad arguments"), **options)
