"""A training loop over minibatches: the compiled step by default, the generic pieces for
models it cannot compile."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Sequence
from typing import Any, Callable

import attrs
import numpy as np

from jitnn import _blas, distributed, random, validate
from jitnn import tree as tree_module
from jitnn.data import batches
from jitnn.losses import Loss
from jitnn.passes import value_grad_and_update
from jitnn.protocol import Layer
from jitnn._checks import readonly
from jitnn.callbacks import Progress
from jitnn.predict import compile_predict
from jitnn.step import compile_step, input_check, stand_in

__all__ = ["FitResult", "NonFiniteLossError", "fit", "train_step"]


@attrs.frozen
class FitResult:
    """What :func:`fit` returns: the trained model, the optimizer state, per epoch the mean
    training loss over the epoch's batches (``history``), whether it trained with the
    compiled step (:func:`jitnn.compile_step`'s, which runs the generic path while its
    function compiles in another process: a short fit may have run no step compiled), and
    ``metrics``: per epoch, by name, ``"loss"`` (``history``) and, with validation data,
    ``"val_loss"`` and ``"val_<metric>"`` for each metric (its function's name)."""

    model: Layer
    state: Any
    history: tuple[float, ...]
    compiled: bool = False
    metrics: dict[str, tuple[float, ...]] = attrs.field(factory=dict)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite during :func:`fit` (with ``check_finite=True``).

    Attributes: ``epoch`` and ``step`` (1-based, the step within the epoch), ``value`` (the
    loss), and ``model`` and ``state``: the model and optimizer state the failing step
    started from, the last ones whose loss was finite, so nothing trained is lost.
    """

    def __init__(self, epoch: int, step: int, value: float, model: Layer, state: Any) -> None:
        super().__init__(
            f"fit: the loss is {value} at epoch {epoch}, step {step}: the first non-finite loss. The model and "
            "optimizer state that step started from are this error's .model and .state"
        )
        self.epoch, self.step, self.value, self.model, self.state = epoch, step, value, model, state


def train_step(
    model: Layer, state: Any, loss: Loss, optimizer: Any, X: Any, T: Any, *, key: random.Key | None = None, sample_weight: Any = None
) -> tuple[Layer, Any, float]:
    """One training step: the loss and gradients on ``(X, T)`` in training mode (dropout
    draws its masks from ``key``; batch normalization uses and updates batch statistics),
    then the optimizer's update. ``sample_weight`` weighs the examples (see
    :func:`jitnn.value_and_grad`).

    Returns the new model (new parameters and running statistics), the new optimizer state
    and the loss before the update.
    """
    _check_optimizer(optimizer, "train_step")
    value, grads, model = value_grad_and_update(model, loss, X, T, key=key, training=True, sample_weight=sample_weight)
    model, state = optimizer.update(model, grads, state)
    return model, state, value


def fit(
    model: Layer,
    loss: Loss,
    optimizer: Any,
    X: Any,
    T: Any,
    *,
    key: random.Key,
    epochs: int = 1,
    batch_size: int = 32,
    state: Any = None,
    verbose: bool = False,
    callback: Callable[[int, Layer, float], bool | None] | None = None,
    compiled: bool | None = None,
    threads: int | None = None,
    check_finite: bool = False,
    validation_data: tuple[Any, Any] | None = None,
    metrics: Sequence[Callable[[Any, Any], float]] = (),
    callbacks: Sequence[Any] = (),
    sample_weight: Any = None,
    distributed: bool = False,
) -> FitResult:
    """Train ``model`` on ``(X, T)`` for ``epochs`` passes over shuffled minibatches.

    Training mode throughout; each epoch's order and each step's randomness (dropout) come
    from keys derived from ``key``, so the same key gives the same model, compiled or not.
    ``state`` continues an earlier run (default: ``optimizer.init(model)``).

    ``compiled``: ``None`` (default) runs :func:`jitnn.compile_step`'s step when the model
    can be compiled and :func:`train_step` otherwise; a step not yet in the disk cache is
    compiled in another process (``compile_step(background=True)``) while the first steps
    run the generic path, which gives the same bits, so training starts at once. ``True``
    requires the compiled step and compiles it here before the first step (``TypeError`` if
    the model cannot be compiled); ``False`` runs the generic path.
    ``threads`` is handed to :func:`jitnn.compile_step` (BLAS threads; ``None`` chooses by
    batch size). With ``verbose`` the progress through each epoch and a line per epoch are
    printed to standard error; ``callback(epoch, model, mean_loss)`` is called after each
    epoch, and training stops there if it returns ``True`` (early stopping).

    With ``check_finite`` every step's loss is checked, and the first NaN or infinite one
    raises :class:`NonFiniteLossError` naming the epoch and step and holding the model and
    state that step started from. Off by default; when off, nothing is checked.

    ``sample_weight`` (one finite, non-negative weight per example of ``X``, scikit-learn's
    meaning) weighs each example's loss: every batch's loss is its weighted mean (see
    :func:`jitnn.value_and_grad`), and ``history`` the weighted mean over the epoch. Checked
    before training, as is a loss whose kernels take no weights.

    ``validation_data=(X_val, T_val)`` scores the model after each epoch in evaluation mode:
    its outputs come from :func:`jitnn.compile_predict` (``model.forward`` with
    ``compiled=False``, or for a model it cannot compile), in batches, and the loss and each
    of ``metrics`` (functions ``metric(outputs, targets) -> number`` such as
    :func:`jitnn.accuracy`) are computed on all of them: ``FitResult.metrics["val_loss"]``
    and ``["val_<name>"]``, ``name`` the function's ``__name__``. Metrics are computed on
    the validation data only (the compiled step does not keep the training batches'
    outputs), so ``metrics`` needs ``validation_data``. Both are checked before training.
    ``validation_data=(X_val, T_val, w_val)`` weighs the validation loss by ``w_val`` (the
    metrics are computed unweighted).

    ``distributed=True`` trains data-parallel over MPI (run under ``mpirun -n N``; see
    :mod:`jitnn.distributed`): every rank passes the same arguments (checked by a checksum
    before training), starts from rank 0's model, trains on its shard of each global batch
    of ``batch_size`` examples and applies the update of the whole batch, so the ranks end
    with the same model. Losses and validation scores are reduced across the ranks;
    progress, checkpoints and logs come from rank 0. A rank that raises stops every rank.

    ``callbacks`` (see :mod:`jitnn.callbacks`: ``EarlyStopping``, ``ModelCheckpoint``,
    ``CSVLogger``, your own) are called at the start and end of training and of each epoch
    with a :class:`jitnn.callbacks.Progress`, and may stop training or hand back another
    model or optimizer state; ``callback`` runs after them at the end of each epoch.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"fit: model must be a jitnn layer, got {type(model).__name__}")
    if not isinstance(loss, Loss):
        raise TypeError(f"fit: loss must be a jitnn loss, got {type(loss).__name__}")
    epochs = validate.non_negative_int(epochs, "fit", "epochs")
    batch_size = validate.positive_int(batch_size, "fit", "batch_size")
    threads = _blas.check_threads(threads, "fit")
    if compiled not in (None, True, False):
        raise TypeError(f"fit: compiled must be None, True or False, got {compiled!r}")
    check_finite = validate.flag(check_finite, "fit", "check_finite")
    verbose = validate.flag(verbose, "fit", "verbose")
    if callback is not None and not callable(callback):
        raise TypeError(f"fit: callback must be a function (epoch, model, mean_loss) or None, got {callback!r}")
    if not isinstance(key, random.Key):
        raise TypeError(f"fit: key must be a jitnn.random.Key (jn.random.key(seed)), got {type(key).__name__}")
    _check_optimizer(optimizer, "fit")
    weights = _fit_weights(loss, X, sample_weight)
    parallel = None
    if validate.flag(distributed, "fit", "distributed"):
        parallel = _DataParallel(optimizer, batch_size, X=X, T=T, key=key.words, sample_weight=weights, epochs=epochs)
    with parallel.guard() if parallel is not None else contextlib.nullcontext():  # a rank that fails from here stops them all
        if parallel is not None:
            verbose = verbose and parallel.main
            model, state = parallel.broadcast(model), None if state is None else parallel.broadcast(state)
        validation = _Validation(model, loss, X, validation_data, metrics, compiled, threads, batch_size, parallel)
        hooks = _Callbacks(callbacks)
        # the compiled step is split around the ranks' Allreduce; the generic path averages in its update
        step = _step_for(model, loss, optimizer, compiled, threads, None if parallel is None else parallel.reduce_step)
        if parallel is not None:
            optimizer = parallel.around(optimizer)
        state = optimizer.init(model) if state is None else state
        return _epochs(model, state, loss, optimizer, step, X, T, weights, key, epochs, batch_size, verbose, callback, check_finite,
                       validation, hooks, parallel)


def _epochs(model: Layer, state: Any, loss: Loss, optimizer: Any, step: Any, X: Any, T: Any, weights: Any, key: random.Key, epochs: int,
            batch_size: int, verbose: bool, callback: Any, check_finite: bool, validation: _Validation, hooks: _Callbacks,
            parallel: _DataParallel | None) -> FitResult:
    """``fit``'s loop over the epochs, its arguments checked."""
    history: list[float] = []
    scores: dict[str, list[float]] = {name: [] for name in validation.names}

    def progress(epoch: int) -> Progress:
        return Progress(epoch, epochs, model, state, {"loss": tuple(history), **{name: tuple(values) for name, values in scores.items()}})

    model, state, stop = hooks("on_train_begin", progress(0))
    for epoch in range(epochs if not stop else 0):
        model, state, stop = hooks("on_epoch_begin", progress(epoch))
        if stop:
            break
        key, epoch_key = random.split(key)
        started, values, masses = time.perf_counter(), [], []
        order_key, steps_key = random.split(epoch_key)
        bar = _Progress(epoch, epochs, verbose)
        seen = 0
        for index, (X_batch, T_batch, *w_batch) in enumerate(batches(order_key, X, T, batch_size, sample_weight=weights)):
            step_key = random.fold_in(steps_key, index)
            w_batch = w_batch[0] if w_batch else None
            size = len(X_batch)
            if parallel is not None:  # this rank's shard; its dropout masks from a key of its own
                X_batch, T_batch, w_batch = parallel.shard(X_batch, T_batch, w_batch)
                step_key = random.fold_in(step_key, parallel.rank)
            before = (model, state)
            if step is None:
                model, state, value = train_step(model, state, loss, optimizer, X_batch, T_batch, key=step_key, sample_weight=w_batch)
            else:
                model, state, value = step(model, state, X_batch, T_batch, key=step_key, sample_weight=w_batch)
            if check_finite and not math.isfinite(value):
                raise NonFiniteLossError(epoch + 1, index + 1, value, *before)
            values.append(value)
            seen += size
            masses.append(len(X_batch) if w_batch is None else float(w_batch.sum()))  # what the batch's mean was over
            bar.update(index + 1, len(X) if hasattr(X, "__len__") else None, seen, value, masses[-1])
        if parallel is not None:  # the mean over every rank's batches
            mean = parallel.mean(values, masses)
        else:
            mean = float(np.average(values, weights=masses)) if values and sum(masses) > 0 else float("nan")
        history.append(mean)
        scored = validation(model)
        for name, value in scored.items():
            scores[name].append(value)
        bar.done({"loss": mean, **scored}, time.perf_counter() - started)
        model, state, stop = hooks("on_epoch_end", progress(epoch))
        if (callback is not None and callback(epoch, model, mean) is True) or stop:
            break
    model, state, _ = hooks("on_train_end", progress(len(history)))
    found = {"loss": tuple(history), **{name: tuple(values) for name, values in scores.items()}}
    return FitResult(model, state, tuple(history), step is not None, found)


def _fit_weights(loss: Loss, X: Any, sample_weight: Any) -> Any:
    """``fit``'s ``sample_weight``, checked before training: one finite, non-negative weight
    per example, not all 0, for a loss whose kernels take weights (``None`` stays ``None``)."""
    if sample_weight is None:
        return None
    n = np.shape(X)[0] if np.ndim(X) else 0
    (weights,) = loss.weights(n, sample_weight, "fit")
    if n and not weights.sum() > 0.0:
        raise ValueError("fit: sample_weight is 0 for every example: there is nothing to learn from")
    return weights


def _check_optimizer(optimizer: Any, who: str) -> None:
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise TypeError(f"{who}: optimizer must have init and update (for example jn.optim.adam(1e-3)), got {optimizer!r}")


def _step_for(model: Layer, loss: Loss, optimizer: Any, compiled: bool | None, threads: int | None, reduce: Any = None) -> Any:
    """The compiled step (split around ``reduce`` if given), or ``None`` for the generic path."""
    if compiled is False:
        return None
    try:
        return compile_step(model, loss, optimizer, threads=threads, background=compiled is None and reduce is None, reduce=reduce)
    except TypeError:
        if compiled:
            raise
        return None


class _Progress:
    """Progress through an epoch on standard error. On a terminal a bar redrawn in place (at
    most about 40 times an epoch) with the running mean loss; in every case, at the end, one
    line with the epoch's scores and its time."""

    WIDTH = 24

    def __init__(self, epoch: int, epochs: int, verbose: bool, stream: Any = None) -> None:
        self.prefix, self.verbose = f"epoch {epoch + 1}/{epochs}", verbose
        self.stream = sys.stderr if stream is None else stream
        self.live = verbose and self.stream.isatty()
        self.shown, self.total, self.weight = -1.0, 0.0, 0.0

    def update(self, steps: int, total: int | None, seen: int, value: float, mass: float) -> None:
        """After ``steps`` steps and ``seen`` of ``total`` examples; the last batch's loss
        ``value`` was a mean over ``mass`` (its size, or its weights' sum)."""
        if not self.live:
            return
        self.total, self.weight = self.total + value * mass, self.weight + mass  # the running mean over the epoch
        fraction = seen / total if total else 0.0
        if fraction - self.shown >= 0.025 or seen == total:
            self.shown = fraction
            filled = int(self.WIDTH * fraction)
            bar = "=" * filled + (">" if filled < self.WIDTH else "") + " " * (self.WIDTH - filled - 1)
            running = self.total / self.weight if self.weight else float("nan")
            print(f"\r{self.prefix} [{bar}] {100 * fraction:3.0f}% {steps} steps, loss {running:.4f}",
                  end="", file=self.stream, flush=True)

    def done(self, scores: dict[str, float], seconds: float) -> None:
        if self.verbose:
            text = ", ".join(f"{name} {value:.4f}" for name, value in scores.items())
            clear = "\r\x1b[K" if self.live else ""  # the bar's line, cleared
            print(f"{clear}{self.prefix}: {text} ({seconds:.2f} s)", file=self.stream)


class _Validation:
    """The validation data and metrics of a fit, checked before training, and the scores of
    a model on them (``{}`` without validation data)."""

    def __init__(self, model: Layer, loss: Loss, X: Any, data: Any, metrics: Any, compiled: bool | None, threads: int | None,
                 batch_size: int, parallel: _DataParallel | None = None) -> None:
        self.parallel = parallel
        if isinstance(metrics, (str, bytes)) or not isinstance(metrics, Sequence):
            raise TypeError(f"fit: metrics must be a list of functions metric(outputs, targets) -> number, got {metrics!r}")
        self.metrics: list[tuple[str, Callable[[Any, Any], float]]] = []
        for metric in metrics:
            name = getattr(metric, "__name__", None)
            if not callable(metric):
                raise TypeError(f"fit: each metric must be a function metric(outputs, targets) -> number, got {metric!r}")
            if not isinstance(name, str) or not name.isidentifier():
                raise TypeError(f"fit: metric {metric!r} has no name (a function's __name__ names its scores); wrap it in a def")
            if name in {"loss"} | {n for n, _ in self.metrics}:
                raise ValueError(f"fit: two metrics are named {name!r}; each metric needs a name of its own")
            self.metrics.append((name, metric))
        self.names: tuple[str, ...] = ()
        if data is None:
            if self.metrics:
                raise ValueError("fit: metrics are computed on validation data; give validation_data=(X_val, T_val)")
            return
        if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
            raise TypeError(f"fit: validation_data must be a pair (X_val, T_val) or a triple (X_val, T_val, w_val), got {type(data).__name__}"
                            + (f" of {len(data)}" if isinstance(data, (tuple, list)) else ""))
        self.X = readonly(input_check(model)(data[0]))
        n = self.X.shape[0]
        if np.ndim(X) and self.X.shape[1:] != np.shape(X)[1:]:
            raise ValueError(f"fit: validation_data's inputs have shape {self.X.shape}, the training inputs {np.shape(X)}: "
                             f"examples of shape {np.shape(X)[1:]} are needed")
        if len(data[1]) != n:
            raise ValueError(f"fit: validation_data has {n} inputs but {len(data[1])} targets")
        output = stand_in((n, *model.output_shape(self.X.shape[1:])), model.dtype or self.X.dtype)
        loss.targets(output, data[1])  # the targets' checks, naming the loss
        self.T, self.loss = data[1], loss
        self.weights = loss.weights(n, data[2], "fit: validation_data's weights")[0] if len(data) == 3 else None
        if parallel is not None:  # each rank scores its part; the scores are averaged over the ranks
            part = parallel.part(n)
            self.X, self.T = self.X[part], np.asarray(self.T)[part]
            self.weights = None if self.weights is None else self.weights[part]
        self.names = ("val_loss", *(f"val_{name}" for name, _ in self.metrics))
        self.predict = None if compiled is False else compile_predict(model, batch_size=max(batch_size, 1024), threads=threads)
        self.compiled = compiled
        self.batch_size = max(batch_size, 1024)

    def __call__(self, model: Layer) -> dict[str, float]:
        if not self.names:
            return {}
        if self.X.shape[0] == 0:  # a rank with no validation examples (fewer of them than ranks)
            scores = dict.fromkeys(self.names, 0.0)
        else:
            Y = self._outputs(model)
            scores = {"val_loss": self.loss.value(Y, self.T, self.weights)}
            for name, metric in self.metrics:
                scores[f"val_{name}"] = validate.real(metric(Y, self.T), "fit", f"the value of metric {name}", finite=False)
        if self.parallel is not None:
            return self.parallel.reduce(scores, self.X.shape[0])
        return scores

    def _outputs(self, model: Layer) -> Any:
        if self.predict is not None:
            try:
                return self.predict(model, self.X)
            except TypeError as error:  # a model whose prediction does not compile: the generic pass, unless compiled=True
                if self.compiled or "compile_predict" not in str(error):
                    raise
                self.predict = None
        X, size = self.X, self.batch_size
        return np.concatenate([model.forward(X[i : i + size]) for i in range(0, X.shape[0], size)])


class _DataParallel:
    """What a distributed ``fit`` adds: the arguments checked alike on every rank, the shard of
    each global batch, and the optimizer that averages before it updates: ``update`` sums every
    rank's gradients and new running statistics, each times its shard's weight, in one
    ``Allreduce`` (:func:`jitnn.distributed.average`), then runs the wrapped optimizer's
    update, the same on every rank."""

    def __init__(self, optimizer: Any, batch_size: int, **arguments: Any) -> None:
        self.world = distributed.comm("fit")
        self.rank, self.size = self.world.Get_rank(), self.world.Get_size()
        self.main = self.rank == 0
        if batch_size < self.size:
            raise ValueError(f"fit: batch_size={batch_size} is smaller than the {self.size} ranks; each global batch is split "
                             "across the ranks, so it needs at least one example for each")
        distributed.check_same("fit", batch_size=batch_size, **arguments)
        self.optimizer, self.weight = optimizer, 0.0

    def around(self, optimizer: Any) -> _DataParallel:
        """Itself as the optimizer of the generic path: the average, then ``optimizer``'s update."""
        self.optimizer = optimizer
        return self

    def reduce_step(self, grads: tuple, buffers: tuple) -> tuple[tuple, tuple]:
        """The compiled step's reduction: every gradient and new buffer averaged over the ranks
        in one ``Allreduce``, read-only as the step's own arrays."""
        flat = [array for site in buffers for array in site]
        averaged, _ = distributed.average(list(grads) + flat, self.weight, "fit")
        for array in averaged:
            array.flags.writeable = False
        new_buffers, k = [], len(grads)
        for site in buffers:
            new_buffers.append(tuple(averaged[k : k + len(site)]))
            k += len(site)
        return tuple(averaged[: len(grads)]), tuple(new_buffers)

    def guard(self) -> Any:
        return distributed.abort_on_error("fit")

    def broadcast(self, tree: Any) -> Any:
        return distributed.broadcast(tree, "fit")

    def part(self, n: int) -> slice:
        return distributed.shard(n, self.size, self.rank)

    def shard(self, X: np.ndarray, T: np.ndarray, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """This rank's part of a global batch, and the weight its gradient gets; a rank left
        without examples (the last batch of an epoch, smaller than the ranks) runs the first
        example with weight 0, so that it takes part in the ``Allreduce`` and adds nothing."""
        part = self.part(len(X))
        if part.stop > part.start:
            X, T, w = X[part], T[part], None if w is None else w[part]
            self.weight = float(len(X) if w is None else w.sum())
            return X, T, w
        self.weight = 0.0
        return X[:1], T[:1], np.zeros(1)

    def mean(self, values: list[float], masses: list[float]) -> float:
        """The epoch's mean loss over every rank's batches (one ``Allreduce``)."""
        total = float(sum(masses))
        local = float(np.dot(values, masses) / total) if total > 0 else 0.0
        (mean,), mass = distributed.average([np.array([local])], total, "fit")
        return float(mean[0]) if mass > 0 else float("nan")

    def reduce(self, scores: dict[str, float], weight: float) -> dict[str, float]:
        """Validation scores averaged over the ranks, each weighted by its examples."""
        averaged, _ = distributed.average([np.array(list(scores.values()), np.float64)], float(weight), "fit")
        return dict(zip(scores, map(float, averaged[0])))

    # the optimizer protocol, around the user's optimizer
    def init(self, model: Layer) -> Any:
        return self.optimizer.init(model)

    def update(self, model: Layer, grads: Layer, state: Any) -> tuple[Layer, Any]:
        gradients = tree_module.leaves(grads, trainable=True)
        trainable = {path for path, _ in tree_module.leaves_with_paths(model, trainable=True)}
        everything = tree_module.leaves_with_paths(model)
        buffers = [k for k, (path, _) in enumerate(everything) if path not in trainable]
        averaged, _ = distributed.average(gradients + [everything[k][1] for k in buffers], self.weight, "fit")
        grads = tree_module.unflatten(grads, averaged[: len(gradients)], trainable=True)
        if buffers:  # the running statistics, averaged as the gradients are
            arrays = [array for _, array in everything]
            for k, array in zip(buffers, averaged[len(gradients) :]):
                array.flags.writeable = False
                arrays[k] = array
            model = tree_module.unflatten(model, arrays)
        return self.optimizer.update(model, grads, state)


_HOOKS = ("on_train_begin", "on_epoch_begin", "on_epoch_end", "on_train_end")


class _Callbacks:
    """``fit``'s callbacks, checked at the call; calling it runs one hook of each in turn
    and returns the model, state and stop flag the last one left."""

    def __init__(self, callbacks: Any) -> None:
        if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Sequence):
            raise TypeError(f"fit: callbacks must be a list of callbacks (see jitnn.callbacks), got {callbacks!r}")
        for callback in callbacks:
            if not any(callable(getattr(callback, hook, None)) for hook in _HOOKS):
                raise TypeError(f"fit: {callback!r} is not a callback: it has none of the methods {', '.join(_HOOKS)} "
                                "(a function (epoch, model, mean_loss) goes in callback=)")
        self.callbacks = tuple(callbacks)

    def __call__(self, hook: str, progress: Progress) -> tuple[Layer, Any, bool]:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            result = None if method is None else method(progress)
            if result is None:
                continue
            if not isinstance(result, Progress):
                raise TypeError(f"fit: {type(callback).__name__}.{hook} must return None or a Progress "
                                f"(progress.evolve(...)), got {type(result).__name__}")
            if not isinstance(result.model, Layer):
                raise TypeError(f"fit: {type(callback).__name__}.{hook} handed back a model that is not a jitnn layer")
            progress = result
        return progress.model, progress.state, progress.stop
