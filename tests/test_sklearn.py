"""jitnn.sklearn: scikit-learn's estimator checks, cross-validation on the digits, and the
estimators in Pipeline and GridSearchCV."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import jitnn as jn
import tolerances
from jitnn.sklearn import MLPClassifier, MLPRegressor

#: Most fits here run a few epochs on purpose; the two tests about ConvergenceWarning catch it
#: themselves.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@parametrize_with_checks([MLPClassifier(random_state=0), MLPRegressor(random_state=0)])
def test_scikit_learn_estimator_checks(estimator, check) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # checks feed degenerate data on purpose
        check(estimator)


def test_cross_validated_accuracy_on_the_digits() -> None:
    """Shuffled stratified 5-fold cross-validation with the default parameters. (On the
    unshuffled folds of ``cv=5`` both this and scikit-learn's own MLPClassifier reach 0.94:
    those folds split the digits by writer.)"""
    X, y = load_digits(return_X_y=True)
    scores = cross_val_score(MLPClassifier(random_state=0), X / 16.0, y, cv=StratifiedKFold(5, shuffle=True, random_state=0))
    assert scores.mean() >= 0.95, scores


def digits_subset(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    return X[:n], y[:n]


def test_in_a_pipeline_and_a_grid_search() -> None:
    X, y = digits_subset()
    search = GridSearchCV(
        make_pipeline(StandardScaler(), MLPClassifier(max_iter=10, random_state=0)),
        {"mlpclassifier__hidden_layer_sizes": [(16,), (32,)], "mlpclassifier__learning_rate": [1e-3, 1e-2]},
        cv=3,
    )
    search.fit(X, y)
    assert set(search.best_params_) == {"mlpclassifier__hidden_layer_sizes", "mlpclassifier__learning_rate"}
    assert search.score(X, y) > 0.8


def test_labels_of_any_kind_come_back_as_given() -> None:
    X, y = digits_subset()
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    model = MLPClassifier(max_iter=20, random_state=0).fit(X / 16.0, names[y])
    assert list(model.classes_) == sorted(names)
    predicted = model.predict(X / 16.0)
    assert predicted.dtype == names.dtype and np.mean(predicted == names[y]) > 0.9
    probabilities = model.predict_proba(X[:5] / 16.0)
    assert probabilities.shape == (5, 10)
    # predict_proba is a float64 softmax of the logits, each within tolerances._Softmax's
    # bound; they sum to 1 within those bounds and the sum's gamma(10)
    logits = model._outputs(X[:5] / 16.0)
    _, e_p, _ = tolerances.forward_bound(jn.Softmax(), logits, np.float64)
    tolerances.assert_within(probabilities.sum(axis=1), np.ones(5), e_p.sum(axis=1) + tolerances.gamma(10, np.float64), "sum")
    # predict_log_proba is (x - max) - log(sum): the difference, the sum's relative error rho,
    # log's own and the last difference; exp adds its own, relative
    u, L = tolerances.unit_roundoff(np.float64), tolerances.LIBRARY
    spread = logits.max(axis=1, keepdims=True) - logits
    total = np.exp(-spread).sum(axis=1, keepdims=True)
    rho = (probabilities * u * (spread + L)).sum(axis=1, keepdims=True) + tolerances.gamma(10, np.float64)
    e_log = u * spread + rho + L * u * np.log(total) + u * (spread + np.log(total))
    tolerances.assert_within(np.exp(model.predict_log_proba(X[:5] / 16.0)), probabilities, probabilities * (e_log + L * u) + e_p, "exp of log")


def test_training_is_reproducible_and_runs_the_compiled_step() -> None:
    X, y = digits_subset()
    first = MLPClassifier(max_iter=5, random_state=3).fit(X, y)
    second = MLPClassifier(max_iter=5, random_state=3).fit(X, y)
    assert first.compiled_ and first.n_iter_ == 5 and len(first.loss_curve_) == 5
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))
    other = MLPClassifier(max_iter=5, random_state=4).fit(X, y)
    assert not np.array_equal(first.predict_proba(X), other.predict_proba(X))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_pickled_estimator_predicts_the_same_and_keeps_its_arrays_read_only(dtype: str) -> None:
    X, y = digits_subset()
    model = MLPClassifier(max_iter=3, dtype=dtype, random_state=0).fit(X, y)
    copy = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(copy.predict_proba(X), model.predict_proba(X))
    # the copy builds its compiled prediction once, when unpickled, not at every call
    predict = copy._predict
    copy.predict(X)
    assert copy._predict is predict and "_predict" in model.__dict__
    assert copy.model_.layers[0].W.dtype == np.dtype(dtype)
    assert not copy.model_.layers[0].W.flags.writeable


def test_the_regressor_fits_one_and_several_outputs() -> None:
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(200, 3))
    y = np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2]
    model = MLPRegressor(hidden_layer_sizes=(32, 32), learning_rate=1e-2, max_iter=100, random_state=0).fit(X, y)
    assert model.predict(X).shape == (200,)
    assert model.score(X, y) > 0.9
    Y = np.stack([y, -y], axis=1)
    both = MLPRegressor(hidden_layer_sizes=(32,), learning_rate=1e-2, max_iter=50, random_state=0).fit(X, Y)
    assert both.predict(X).shape == (200, 2)


def test_the_optimizers_and_activations_it_offers_all_train() -> None:
    X, y = digits_subset(200)
    assert {"adam", "adamw", "sgd", "momentum", "rmsprop", "adagrad", "lion"} <= set(jn.optim.OPTIMIZERS)
    for optimizer in jn.optim.OPTIMIZERS:  # every named optimizer
        for activation in ("relu", "tanh", "logistic", "gelu", "identity"):
            model = MLPClassifier(hidden_layer_sizes=(8,), optimizer=optimizer, activation=activation, learning_rate=1e-2,
                                  max_iter=2, random_state=0).fit(X / 16.0, y)
            assert np.isfinite(model.loss_curve_).all(), (optimizer, activation)


def test_an_l2_penalty_shrinks_the_weights() -> None:
    X, y = digits_subset()
    plain = MLPClassifier(max_iter=10, random_state=0).fit(X / 16.0, y)
    penalized = MLPClassifier(max_iter=10, alpha=1.0, random_state=0).fit(X / 16.0, y)
    assert np.linalg.norm(penalized.model_.layers[0].W) < np.linalg.norm(plain.model_.layers[0].W)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"hidden_layer_sizes": (0,)}, "hidden_layer_sizes must be positive integers"),
        ({"hidden_layer_sizes": (4.5,)}, "hidden_layer_sizes must be positive integers"),
        ({"activation": "softplus"}, "activation must be one of"),
        ({"optimizer": "lbfgs"}, "optimizer must be one of"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"max_iter": True}, "max_iter must be a positive integer"),
        ({"learning_rate": -1.0}, "learning_rate must be a finite non-negative number"),
        ({"alpha": float("nan")}, "alpha must be a finite non-negative number"),
        ({"tol": -1e-3}, "tol must be a finite non-negative number"),
        ({"n_iter_no_change": 0}, "n_iter_no_change must be a positive integer"),
        ({"early_stopping": "yes"}, "early_stopping must be True or False"),
        ({"validation_fraction": 1.0}, "validation_fraction must lie strictly between 0 and 1"),
        ({"dtype": "float16"}, "dtype must be float32 or float64"),
    ],
)
def test_bad_parameters_are_refused_when_fitting(params: dict, message: str) -> None:
    X, y = digits_subset(50)
    estimator = MLPClassifier(**params)
    with pytest.raises((ValueError, TypeError), match=message):
        estimator.fit(X, y)


def test_training_stops_when_the_loss_stops_improving_by_tol() -> None:
    """scikit-learn's rule: stop after more than n_iter_no_change epochs in a row that do
    not beat the best loss by tol. With a tol no epoch can beat, that is the first epoch
    plus n_iter_no_change + 1."""
    X, y = digits_subset(100)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model = MLPClassifier(max_iter=50, tol=100.0, n_iter_no_change=2, random_state=0).fit(X / 16.0, y)
    assert model.n_iter_ == 4 and len(model.loss_curve_) == 4
    assert model.best_loss_ == min(model.loss_curve_)
    longer = MLPClassifier(max_iter=50, tol=100.0, n_iter_no_change=5, random_state=0).fit(X / 16.0, y)
    assert longer.n_iter_ == 7
    assert longer.loss_curve_[:4] == model.loss_curve_  # the same epochs, stopped later


def test_early_stopping_keeps_the_network_of_the_best_held_out_epoch() -> None:
    """With early_stopping the rule watches the held-out accuracy and the fit ends with the
    best epoch's network: the same network a fit stopped right after that epoch makes (the
    split and the keys are the same, so the epochs up to it are too)."""
    X, y = digits_subset(300)
    X = X / 16.0
    settings = {"hidden_layer_sizes": (32,), "learning_rate": 1e-2, "early_stopping": True, "validation_fraction": 0.2,
                "n_iter_no_change": 3, "random_state": 0}
    model = MLPClassifier(max_iter=200, **settings).fit(X, y)
    scores = model.validation_scores_
    assert len(scores) == model.n_iter_ < 200 and model.best_loss_ is None
    best = int(np.argmax(scores))
    assert model.best_validation_score_ == scores[best] > 0.8
    assert model.n_iter_ == best + 1 + 4  # the best epoch, then n_iter_no_change + 1 that are not better by tol
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        short = MLPClassifier(max_iter=best + 1, **settings).fit(X, y)
    np.testing.assert_array_equal(model.predict_proba(X), short.predict_proba(X))
    assert short.validation_scores_ == scores[:best + 1]


def test_early_stopping_of_a_regressor_watches_r2() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3))
    y = X @ np.array([1.0, -1.0, 2.0])
    model = MLPRegressor(hidden_layer_sizes=(16,), learning_rate=1e-2, early_stopping=True, max_iter=300,
                         random_state=0).fit(X, y)
    assert model.best_validation_score_ == max(model.validation_scores_) > 0.95


def test_early_stopping_needs_enough_examples_of_each_class() -> None:
    X, y = digits_subset(30)
    with pytest.raises(ValueError, match="cannot hold out validation_fraction=0.1 of 30 examples"):
        MLPClassifier(early_stopping=True).fit(X, y)


def test_running_out_of_epochs_while_improving_warns() -> None:
    X, y = digits_subset(100)
    with pytest.warns(ConvergenceWarning, match="max_iter=3 epochs ran"):
        model = MLPRegressor(max_iter=3, tol=0.0, random_state=0).fit(X / 16.0, y.astype(float))
    assert model.n_iter_ == 3


def test_partial_fit_trains_one_epoch_per_call_and_continues() -> None:
    X, y = digits_subset(300)
    X = X / 16.0
    chunks = np.array_split(np.arange(len(X)), 3)
    model = MLPClassifier(hidden_layer_sizes=(32,), learning_rate=1e-2, random_state=0)
    twin = MLPClassifier(hidden_layer_sizes=(32,), learning_rate=1e-2, random_state=0)
    for epoch in range(8):
        for chunk in chunks:
            model.partial_fit(X[chunk], y[chunk], classes=np.arange(10))
            twin.partial_fit(X[chunk], y[chunk], classes=np.arange(10) if epoch == 0 else None)
    assert model.n_iter_ == 24 and len(model.loss_curve_) == 24
    assert model.score(X, y) > 0.9
    assert model.loss_curve_[-1] < model.loss_curve_[0] / 4
    np.testing.assert_array_equal(model.predict_proba(X), twin.predict_proba(X))  # the same calls, the same model
    fitted = MLPClassifier(max_iter=3, random_state=0).fit(X, y)
    before = fitted.predict_proba(X)
    fitted.partial_fit(X[:50], y[:50])  # continues the fitted network; classes_ are known
    assert fitted.n_iter_ == 4 and not np.array_equal(fitted.predict_proba(X), before)


def test_partial_fit_refuses_what_does_not_continue_the_first_call() -> None:
    X, y = digits_subset(60)
    with pytest.raises(ValueError, match="first call of partial_fit needs classes="):
        MLPClassifier().partial_fit(X, y)
    model = MLPClassifier(random_state=0).partial_fit(X, y % 3, classes=[0, 1, 2])
    with pytest.raises(ValueError, match=r"labels \[3, 4\] are not among classes_"):
        model.partial_fit(X, np.where(y % 5 > 2, y % 5, 0))
    with pytest.raises(ValueError, match="differs from the classes_ of the first call"):
        model.partial_fit(X, y % 3, classes=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="features"):
        model.partial_fit(X[:, :10], y % 3)
    regressor = MLPRegressor(random_state=0).partial_fit(X, y.astype(float))
    with pytest.raises(ValueError, match="y has 2 outputs, the network of the first call 1"):
        regressor.partial_fit(X, np.stack([y, y], axis=1).astype(float))


def test_partial_fit_of_a_regressor_lowers_its_loss() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.1 * rng.normal(size=200)
    model = MLPRegressor(hidden_layer_sizes=(16,), learning_rate=1e-2, random_state=0)
    for _ in range(30):
        model.partial_fit(X, y)
    assert model.n_iter_ == 30 and model.predict(X).shape == (200,)
    assert model.loss_curve_[-1] < model.loss_curve_[0] / 10
    assert model.score(X, y) > 0.9


def test_predicting_before_fitting_or_with_other_features_is_refused() -> None:
    X, y = digits_subset(50)
    with pytest.raises(NotFittedError):
        MLPClassifier().predict(X)
    model = MLPClassifier(max_iter=1).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        model.predict(X[:, :10])
    with pytest.raises(ValueError, match="NaN"):
        model.predict(np.full_like(X, np.nan))


def test_fits_of_one_depth_share_one_compiled_step() -> None:
    """The generated code depends on the architecture, not on the widths: fits with other
    hidden widths, feature counts and class counts add no compiled step module."""
    import sys

    X, y = digits_subset()
    MLPClassifier(hidden_layer_sizes=(8,), max_iter=1, random_state=0).fit(X, y)
    steps = {name for name in sys.modules if name.startswith("jitnn_step_")}
    MLPClassifier(hidden_layer_sizes=(24,), max_iter=1, random_state=0).fit(X[:, :40], y % 3)
    assert {name for name in sys.modules if name.startswith("jitnn_step_")} == steps
    MLPClassifier(hidden_layer_sizes=(8, 8), max_iter=1, random_state=0).fit(X, y)  # another depth: a new one
    assert len({name for name in sys.modules if name.startswith("jitnn_step_")} - steps) == 1


def test_sample_weight_of_one_is_no_weight_and_zero_weights_ignore_examples() -> None:
    """Weights of 1 train the same network bit for bit. Weight 0 on examples whose labels were
    scrambled leaves them out of every loss: that network matches the one trained on the clean
    examples alone in accuracy on held-out digits, and beats the one that learns the scrambled labels."""
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    X_train, y_train, X_test, y_test = X[:1000], y[:1000], X[1000:], y[1000:]
    plain = MLPClassifier(max_iter=15, random_state=0).fit(X_train, y_train)
    ones = MLPClassifier(max_iter=15, random_state=0).fit(X_train, y_train, sample_weight=np.ones(len(y_train)))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(jn.tree.leaves(plain.model_), jn.tree.leaves(ones.model_)))
    scrambled = y_train.copy()
    bad = np.random.default_rng(0).random(len(y_train)) < 0.5
    scrambled[bad] = np.random.default_rng(1).integers(0, 10, bad.sum())
    weights = (~bad).astype(np.float64)
    noisy = MLPClassifier(max_iter=15, random_state=0).fit(X_train, scrambled).score(X_test, y_test)
    weighted = MLPClassifier(max_iter=15, random_state=0).fit(X_train, scrambled, sample_weight=weights).score(X_test, y_test)
    assert weighted > noisy + 0.03, (weighted, noisy)
    # scikit-learn's score takes weights as well
    assert MLPClassifier(max_iter=2, random_state=0).fit(X_train, y_train).score(X_test, y_test, sample_weight=np.ones(len(y_test))) > 0.5


def test_sample_weight_with_early_stopping_and_for_the_regressor() -> None:
    X, y = digits_subset(400)
    w = np.where(y % 2 == 0, 2.0, 0.5)
    classifier = MLPClassifier(max_iter=5, early_stopping=True, n_iter_no_change=2, random_state=0).fit(X / 16.0, y, sample_weight=w)
    assert len(classifier.validation_scores_) == classifier.n_iter_
    rng = np.random.default_rng(2)
    X_reg = rng.normal(size=(200, 3))
    t = X_reg @ np.array([1.0, -2.0, 0.5])
    regressor = MLPRegressor(max_iter=30, random_state=0).fit(X_reg, t, sample_weight=rng.uniform(0.5, 1.5, 200))
    assert regressor.score(X_reg, t) > 0.5
    regressor.partial_fit(X_reg, t, sample_weight=np.ones(200))


@pytest.mark.parametrize(("weights", "message"), [
    (np.ones(5), "5 != 300|inconsistent|shape"),
    (-np.ones(300), "negative"),
])
def test_bad_sample_weights_are_refused_naming_the_estimator(weights: np.ndarray, message: str) -> None:
    X, y = digits_subset()
    with pytest.raises(ValueError, match=f"(?i)MLPClassifier: .*({message})"):
        MLPClassifier(max_iter=1).fit(X, y, sample_weight=weights)
