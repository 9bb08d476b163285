"""scikit-learn estimators built on jitnn: :class:`MLPClassifier` and :class:`MLPRegressor`.

They follow scikit-learn's conventions (``fit``/``partial_fit``/``predict``/``predict_proba``/``score``,
``get_params``/``set_params``, parameters stored unchanged by ``__init__``, fitted attributes
ending in ``_``), so ``Pipeline``, ``GridSearchCV`` and ``cross_val_score`` work with them,
and they pass scikit-learn's ``check_estimator``. Training runs :func:`jitnn.fit`, on the
compiled step: every fit of the same depth and activation reuses one compiled function
(the generated code depends on the architecture, not on the widths), loaded from the disk
cache in a new process.

Needs scikit-learn 1.6 or newer (``pip install scikit-learn``); ``import jitnn`` does not.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
except ImportError as error:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError("jitnn.sklearn needs scikit-learn 1.6 or newer: pip install scikit-learn") from error

import jitnn as jn
from jitnn import validate

__all__ = ["MLPClassifier", "MLPRegressor"]

ACTIVATIONS = {"relu": jn.ReLU, "tanh": jn.Tanh, "logistic": jn.Sigmoid, "gelu": jn.GELU, "identity": jn.Identity}


class _MLP(BaseEstimator):
    """What both estimators share: the parameters, their checks, building the network and
    training it. Subclasses say how targets become what the loss takes, and the loss."""

    def __init__(
        self,
        hidden_layer_sizes: tuple[int, ...] = (100,),
        activation: str = "relu",
        optimizer: str = "adam",
        learning_rate: float = 1e-3,
        alpha: float = 0.0,
        batch_size: int = 32,
        max_iter: int = 100,
        tol: float = 1e-4,
        n_iter_no_change: int = 10,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        dtype: Any = "float64",
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.alpha = alpha
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ checks
    def _checked(self) -> tuple[tuple[int, ...], Any, Any, np.dtype]:
        """The parameters, checked: hidden widths, activation class, optimizer, dtype."""
        name = type(self).__name__
        sizes = validate.int_tuple(self.hidden_layer_sizes, name, "hidden_layer_sizes", low=1)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"{name}: activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.optimizer not in jn.optim.OPTIMIZERS:
            raise ValueError(f"{name}: optimizer must be one of {sorted(jn.optim.OPTIMIZERS)}, got {self.optimizer!r}")
        for field in ("batch_size", "max_iter", "n_iter_no_change"):
            validate.positive_int(getattr(self, field), name, field)
        for field in ("learning_rate", "alpha", "tol"):
            validate.non_negative_real(getattr(self, field), name, field)
        validate.flag(self.early_stopping, name, "early_stopping", wrong_type=ValueError)  # a ValueError, as for every parameter here
        validate.real(
            self.validation_fraction, name, "validation_fraction", low=0, high=1, low_open=True, high_open=True,
            must="lie strictly between 0 and 1",
        )
        dtype = jn._checks.check_float_dtype(self.dtype, name)
        optimizer = jn.optim.OPTIMIZERS[self.optimizer](float(self.learning_rate))
        if self.alpha > 0:  # L2 penalty on the gradients, as scikit-learn's alpha
            optimizer = jn.optim.chain(jn.optim.add_decayed_weights(float(self.alpha)), optimizer)
        return sizes, ACTIVATIONS[self.activation], optimizer, dtype

    # ------------------------------------------------------------------ training
    def _build(self, key: Any, n_in: int, n_out: int, sizes: tuple[int, ...], activation: type, dtype: np.dtype) -> jn.Chain:
        keys = jn.random.split(key, len(sizes) + 1)
        # He initialization for the ReLU family, Dense's default (Glorot) for the others
        init = {"weight_init": jn.init.he_normal} if activation in (jn.ReLU, jn.GELU) else {}
        layers: list[jn.Layer] = []
        for k, width in zip(keys, sizes):
            layers += [jn.Dense.init(k, n_in, width, dtype=dtype, **init), activation()]
            n_in = width
        layers.append(jn.Dense.init(keys[-1], n_in, n_out, dtype=dtype))
        return jn.pipe(*layers)

    def _start(self, n_in: int, n_out: int) -> None:
        """A new network and optimizer state, and the key for training it."""
        sizes, activation, optimizer, dtype = self._checked()
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        init_key, self._key = jn.random.split(jn.random.key(seed))
        self.model_ = self._build(init_key, n_in, n_out, sizes, activation, dtype)
        self._state = optimizer.init(self.model_)
        self._predict = jn.compile_predict(self.model_)  # compiles at its first call
        self.loss_curve_, self.best_loss_, self.n_iter_ = [], np.inf, 0

    def _epochs(self, X: np.ndarray, T: np.ndarray, w: np.ndarray | None, loss: jn.Loss, epochs: int, callback: Any = None) -> None:
        """Train the network on (X, T), examples weighted by ``w``, for at most ``epochs`` more
        epochs, from where it is."""
        _, _, optimizer, dtype = self._checked()
        self._key, key = jn.random.split(self._key)
        result = jn.fit(
            self.model_, loss, optimizer, X.astype(dtype, copy=False), T, key=key, epochs=epochs, state=self._state,
            batch_size=min(int(self.batch_size), len(X)), verbose=bool(self.verbose), callback=callback, sample_weight=w,
        )
        self.model_, self._state = result.model, result.state
        self.loss_curve_ += result.history
        self.best_loss_ = min(self.loss_curve_, default=np.inf)
        self.n_iter_ += len(result.history)
        self.compiled_ = result.compiled

    def _train(self, X: np.ndarray, T: np.ndarray, w: np.ndarray | None, n_out: int, loss: jn.Loss) -> None:
        """``fit``: a new network, trained until the training loss (or, with ``early_stopping``,
        the score on a held-out part of the data, weighted as the examples are) stops
        improving, or for ``max_iter`` epochs."""
        self._start(X.shape[1], n_out)
        tol, patience = float(self.tol), int(self.n_iter_no_change)
        if self.early_stopping:
            X, X_valid, T, T_valid, *weights = self._split(X, T, w)
            w, w_valid = weights if weights else (None, None)
            stop: _NoImprovement = _BestValidationScore(tol, patience, lambda model: self._score(model, X_valid, T_valid, w_valid))
        else:
            stop = _NoImprovement(tol, patience)
        self._epochs(X, T, w, loss, int(self.max_iter), stop)
        if isinstance(stop, _BestValidationScore):
            self.model_ = stop.best_model  # the network of the best epoch, as scikit-learn keeps
            self.validation_scores_, self.best_validation_score_, self.best_loss_ = stop.scores, stop.best_score, None
        if not stop.stopped:
            warnings.warn(
                f"{type(self).__name__}: max_iter={self.max_iter} epochs ran and the training loss was still improving "
                f"by more than tol={self.tol}; raise max_iter to train longer", ConvergenceWarning, stacklevel=3,
            )

    def _split(self, X: np.ndarray, T: np.ndarray, w: np.ndarray | None) -> list[np.ndarray]:
        """(X_train, X_valid, T_train, T_valid[, w_train, w_valid]): ``validation_fraction``
        held out, stratified by class for a classifier, drawn from ``random_state``."""
        stratify = T if isinstance(self, ClassifierMixin) else None
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        arrays = (X, T) if w is None else (X, T, w)
        try:
            return train_test_split(*arrays, test_size=float(self.validation_fraction), random_state=seed, stratify=stratify)
        except ValueError as error:
            raise ValueError(f"{type(self).__name__}: cannot hold out validation_fraction={self.validation_fraction} "
                             f"of {len(X)} examples for early stopping ({error})") from None

    def _score(self, model: jn.Layer, X: np.ndarray, T: np.ndarray, w: np.ndarray | None) -> float:
        """The estimator's score of ``model`` on held-out data, examples weighted by ``w``:
        accuracy or R²."""
        raise NotImplementedError

    def _weights(self, X: np.ndarray, sample_weight: Any) -> np.ndarray | None:
        """``sample_weight`` checked as scikit-learn checks it (a number for every example,
        one per example, non-negative, not all 0); ``None`` stays ``None`` (every weight 1)."""
        if sample_weight is None:
            return None
        try:
            return _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        except ValueError as error:
            raise ValueError(f"{type(self).__name__}: {error}") from None

    def _forward(self, model: jn.Layer, X: np.ndarray) -> np.ndarray:
        """``model``'s outputs for ``X`` (evaluation mode), through :func:`jitnn.compile_predict`:
        the bits of ``model.forward`` for each batch of up to 1024 rows."""
        return self._predict(model, X.astype(model.dtype, copy=False))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # a copy: object.__getstate__ hands back the instance's own __dict__
        state.pop("_predict", None)  # compiled code does not pickle
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "model_" in state:  # a fitted estimator: its prediction again, loaded from the disk cache at the first call
            self._predict = jn.compile_predict(self.model_)

    def _partial(self, X: np.ndarray, T: np.ndarray, w: np.ndarray | None, n_out: int, loss: jn.Loss, first: bool) -> None:
        """``partial_fit``: one epoch over (X, T), starting a network on the first call."""
        if first:
            self._start(X.shape[1], n_out)
        self._epochs(X, T, w, loss, 1)

    def _outputs(self, X: Any) -> np.ndarray:
        """The network's outputs for ``X`` (evaluation mode)."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=(np.float64, np.float32), reset=False)
        return np.asarray(self._forward(self.model_, X), dtype=np.float64)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False  # the same random_state gives the same model
        return tags


class _NoImprovement:
    """``jn.fit``'s callback for scikit-learn's stopping rule: training stops once the epoch's
    mean loss has failed to beat the best so far by ``tol`` for more than ``patience``
    epochs in a row."""

    def __init__(self, tol: float, patience: int) -> None:
        self.tol, self.patience = tol, patience
        self.best, self.count, self.stopped = np.inf, 0, False

    def __call__(self, epoch: int, model: Any, loss: float) -> bool:
        self.count = self.count + 1 if loss > self.best - self.tol else 0
        self.best = min(self.best, loss)
        self.stopped = self.count > self.patience
        return self.stopped


class _BestValidationScore(_NoImprovement):
    """The same rule on a validation score, which must rise by ``tol``; it keeps the model of
    the best epoch (a model is a value: keeping it copies nothing)."""

    def __init__(self, tol: float, patience: int, score: Any) -> None:
        super().__init__(tol, patience)
        self.score, self.scores, self.best_score, self.best_model = score, [], -np.inf, None

    def __call__(self, epoch: int, model: Any, loss: float) -> bool:
        value = float(self.score(model))
        self.scores.append(value)
        self.count = self.count + 1 if value < self.best_score + self.tol else 0
        if value > self.best_score or self.best_model is None:
            self.best_score, self.best_model = value, model
        self.stopped = self.count > self.patience
        return self.stopped


class MLPClassifier(ClassifierMixin, _MLP):
    """A multi-layer perceptron classifier trained with jitnn (softmax cross-entropy).

    Parameters
    ----------
    hidden_layer_sizes : widths of the hidden layers, default ``(100,)``
    activation : ``"relu"`` (default), ``"tanh"``, ``"logistic"``, ``"gelu"`` or ``"identity"``
    optimizer : the name of a jitnn optimizer, a key of ``jitnn.optim.OPTIMIZERS``: ``"adam"``
        (default), ``"adamw"``, ``"sgd"``, ``"momentum"``, ``"rmsprop"``...
    learning_rate : the optimizer's learning rate, default 1e-3
    alpha : L2 penalty added to the gradients (``g + alpha * w``), default 0
    batch_size : examples per step (at most the number of examples), default 32
    max_iter : the most epochs to run, default 100
    tol, n_iter_no_change : training stops when the epoch's mean loss has not improved on
        the best so far by ``tol`` (default 1e-4) for more than ``n_iter_no_change``
        (default 10) epochs in a row, as in scikit-learn; a ``ConvergenceWarning`` says when
        ``max_iter`` ran out first
    early_stopping : hold out ``validation_fraction`` (default 0.1) of the data, stratified
        by class, and apply that rule to the held-out accuracy (R² for the regressor)
        instead of the training loss, keeping the network of the best epoch; default False
    dtype : ``"float64"`` (default) or ``"float32"``, the network's parameters
    random_state : None, an int or a ``numpy.random.RandomState``: the initial weights
        and the order of the batches; the same value gives the same model
    verbose : print the loss per epoch

    Attributes
    ----------
    classes_ : the class labels, sorted; n_features_in_ ; model_ : the trained jitnn model
    (its outputs are logits); loss_curve_ : mean training loss per epoch ; best_loss_ : its
    smallest value (None with early_stopping) ; validation_scores_, best_validation_score_ :
    the held-out scores per epoch and the best (with early_stopping) ; n_iter_ : epochs run ;
    compiled_ : whether the compiled step trained it
    """

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPClassifier:
        """Train on ``X`` (n, n_features) and class labels ``y`` (n,) of any kind; with
        ``sample_weight`` (n,) each example's loss weighs that much (an integer weight as that
        many copies of it; see :func:`jitnn.value_and_grad`)."""
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32))
        check_classification_targets(y)
        w = self._weights(X, sample_weight)
        self.classes_, T = np.unique(y, return_inverse=True)
        self._train(X, T.astype(np.int64), w, len(self.classes_), jn.SoftmaxCrossEntropy())
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None) -> MLPClassifier:
        """One epoch over ``(X, y)`` (in minibatches of ``batch_size``), continuing the network
        of earlier calls or of :meth:`fit`; the first call starts one and needs ``classes``,
        every label that any call will bring. ``sample_weight`` as in :meth:`fit`."""
        first = not hasattr(self, "model_")
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32), reset=first)
        w = self._weights(X, sample_weight)
        check_classification_targets(y)
        name = type(self).__name__
        if first:
            if classes is None:
                raise ValueError(f"{name}: the first call of partial_fit needs classes=, every class label the calls will bring")
            self.classes_ = np.unique(np.asarray(classes))
        elif classes is not None and not np.array_equal(np.unique(np.asarray(classes)), self.classes_):
            raise ValueError(f"{name}: classes={classes!r} differs from the classes_ of the first call, {self.classes_!r}")
        unknown = np.setdiff1d(y, self.classes_)
        if unknown.size:
            raise ValueError(f"{name}: labels {unknown.tolist()[:5]} are not among classes_ {self.classes_.tolist()}")
        self._partial(X, np.searchsorted(self.classes_, y).astype(np.int64), w, len(self.classes_), jn.SoftmaxCrossEntropy(), first)
        return self

    def _score(self, model: jn.Layer, X: np.ndarray, T: np.ndarray, w: np.ndarray | None) -> float:
        return float(accuracy_score(T, np.argmax(self._forward(model, X), axis=1), sample_weight=w))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (n, n_classes), columns in the order of ``classes_``."""
        logits = self._outputs(X)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """The logarithms of :meth:`predict_proba`, computed stably."""
        logits = self._outputs(X)
        shifted = logits - logits.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each example."""
        best = np.argmax(self._outputs(X), axis=1)  # checks that the estimator is fitted
        return self.classes_[best]


class MLPRegressor(RegressorMixin, _MLP):
    """A multi-layer perceptron regressor trained with jitnn (mean squared error); one or
    several outputs. Parameters and attributes as :class:`MLPClassifier`, without
    ``classes_``."""

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """Train on ``X`` (n, n_features) and targets ``y`` (n,) or (n, n_outputs); with
        ``sample_weight`` (n,) each example's loss weighs that much."""
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32), multi_output=True, y_numeric=True)
        w = self._weights(X, sample_weight)
        self._one_output = y.ndim == 1
        T = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        self._train(X, T, w, T.shape[1], jn.MeanSquaredError())
        return self

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """One epoch over ``(X, y)`` (in minibatches of ``batch_size``), continuing the network
        of earlier calls or of :meth:`fit`; the first call starts one. ``sample_weight`` as in
        :meth:`fit`."""
        first = not hasattr(self, "model_")
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32), multi_output=True, y_numeric=True, reset=first)
        w = self._weights(X, sample_weight)
        T = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        if first:
            self._one_output = y.ndim == 1
        elif T.shape[1] != self.model_.output_shape((self.n_features_in_,))[0]:
            raise ValueError(f"{type(self).__name__}: y has {T.shape[1]} outputs, the network of the first call "
                             f"{self.model_.output_shape((self.n_features_in_,))[0]}")
        self._partial(X, T, w, T.shape[1], jn.MeanSquaredError(), first)
        return self

    def _score(self, model: jn.Layer, X: np.ndarray, T: np.ndarray, w: np.ndarray | None) -> float:
        return float(r2_score(T, self._forward(model, X), sample_weight=w))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def predict(self, X: Any) -> np.ndarray:
        """Predictions, (n,) for a one-output fit, else (n, n_outputs)."""
        Y = self._outputs(X)
        return Y[:, 0] if self._one_output else Y
