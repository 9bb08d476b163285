"""Callbacks for :func:`jitnn.fit`: early stopping, checkpoints, a CSV log, your own.

A callback is an object with any of four methods, each called with a :class:`Progress`
record (the epoch, the model, the optimizer state and every metric so far):

=========================  ============================================================
``on_train_begin(p)``      before the first epoch (``p.metrics`` holds every name, empty)
``on_epoch_begin(p)``      before each epoch
``on_epoch_end(p)``        after each epoch, its scores in ``p.metrics``
``on_train_end(p)``        after the last epoch, or the one training stopped after
=========================  ============================================================

The callbacks here are :class:`EarlyStopping`, :class:`ModelCheckpoint`,
:class:`ReduceLROnPlateau` and :class:`CSVLogger`.

Each returns ``None`` (nothing to change) or a new record made with :meth:`Progress.evolve`:
``p.evolve(stop=True)`` stops training after this epoch, ``p.evolve(model=..., state=...)``
hands ``fit`` another model or optimizer state to go on with (and to return, from
``on_train_end``). Subclass :class:`Callback` for the methods you leave out. Callbacks run
in the order given, each seeing what the one before it handed back.

A callback that watches a metric (``monitor``) checks in ``on_train_begin`` that ``fit``
will produce it, so a misspelt name fails before the first step. ``mode`` says which way is
better: ``"min"``, ``"max"`` or ``"auto"`` (``"min"`` for a name ending in ``loss``,
``"max"`` otherwise).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from jitnn import validate
from jitnn.distributed import is_main
from jitnn.io import save
from jitnn.optim._base import lr_scale
from jitnn.optim.accumulate import MultiStepsState
from jitnn.optim.transforms import ChainState
from jitnn.protocol import Layer

__all__ = ["Callback", "CSVLogger", "EarlyStopping", "ModelCheckpoint", "Progress", "ReduceLROnPlateau"]


@attrs.frozen
class Progress:
    """Where training stands, as :func:`jitnn.fit` hands it to callbacks.

    Attributes
    ----------
    epoch : int
        The epoch (0-based) about to run or just run; in ``on_train_end`` the number run.
    epochs : int
        The epochs ``fit`` was asked for.
    model, state : the model and optimizer state at this point.
    metrics : mapping of str to tuple of float
        Every score so far, one value per finished epoch: ``"loss"``, and with validation
        data ``"val_loss"`` and ``"val_<metric>"``.
    stop : bool
        Whether training stops after this epoch (a callback sets it).
    """

    epoch: int
    epochs: int
    model: Layer
    state: Any
    metrics: Mapping[str, tuple[float, ...]]
    stop: bool = False

    def evolve(self, **changes: Any) -> Progress:
        """A copy with ``changes`` (``model``, ``state``, ``stop``)."""
        unknown = set(changes) - {"model", "state", "stop"}
        if unknown:
            raise TypeError(f"Progress.evolve: a callback may change model, state and stop, not {sorted(unknown)}")
        return attrs.evolve(self, **changes)

    def latest(self, name: str) -> float:
        """The last value of metric ``name``."""
        return self.metrics[name][-1]


class Callback:
    """A callback that does nothing: subclass it and define the methods you need."""

    def on_train_begin(self, progress: Progress) -> Progress | None:
        return None

    def on_epoch_begin(self, progress: Progress) -> Progress | None:
        return None

    def on_epoch_end(self, progress: Progress) -> Progress | None:
        return None

    def on_train_end(self, progress: Progress) -> Progress | None:
        return None


class _Monitor(Callback):
    """A callback that follows one metric and knows when it improves."""

    def __init__(self, who: str, monitor: str, mode: str, min_delta: float) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"{who}: monitor must be a metric's name such as 'val_loss', got {monitor!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"{who}: mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.who, self.monitor = who, monitor
        self.mode = ("min" if monitor.endswith("loss") else "max") if mode == "auto" else mode
        self.min_delta = validate.non_negative_real(min_delta, who, "min_delta")
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_train_begin(self, progress: Progress) -> Progress | None:
        if self.monitor not in progress.metrics:
            raise ValueError(f"{self.who}: monitor={self.monitor!r} is not a metric this fit produces; it produces "
                             f"{', '.join(repr(name) for name in progress.metrics)} (validation metrics need validation_data)")
        self.best = math.inf if self.mode == "min" else -math.inf
        return None

    def improved(self, progress: Progress) -> bool:
        """Whether the monitored metric's last value beats the best so far by ``min_delta``
        (then it becomes the best). NaN never improves."""
        value = progress.latest(self.monitor)
        better = value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        if better:
            self.best = value
        return better


class EarlyStopping(_Monitor):
    """Stop once ``monitor`` has failed to improve for ``patience`` epochs in a row.

    An epoch improves when the metric beats the best so far by more than ``min_delta``. As
    in Keras, training stops after the ``patience``-th epoch in a row without improvement
    (``patience=0``, the default, stops at the first, as ``1`` does).
    With ``restore_best`` (the default) ``fit`` returns the model and optimizer state of the
    best epoch rather than the last one. ``stopped_epoch`` is the epoch (0-based) training
    stopped after, ``None`` if it ran out of epochs first.
    """

    def __init__(self, monitor: str = "val_loss", *, patience: int = 0, min_delta: float = 0.0, mode: str = "auto",
                 restore_best: bool = True) -> None:
        super().__init__("EarlyStopping", monitor, mode, min_delta)
        self.patience = validate.non_negative_int(patience, "EarlyStopping", "patience")
        self.restore_best = validate.flag(restore_best, "EarlyStopping", "restore_best")
        self.wait, self.best_epoch, self.stopped_epoch, self._kept = 0, None, None, None

    def on_train_begin(self, progress: Progress) -> Progress | None:
        super().on_train_begin(progress)
        self.wait, self.best_epoch, self.stopped_epoch, self._kept = 0, None, None, None
        return None

    def on_epoch_end(self, progress: Progress) -> Progress | None:
        if self.improved(progress):
            self.wait, self.best_epoch = 0, progress.epoch
            self._kept = (progress.model, progress.state)  # values: keeping them copies nothing
            return None
        self.wait += 1
        if self.wait >= max(self.patience, 1):
            self.stopped_epoch = progress.epoch
            return progress.evolve(stop=True)
        return None

    def on_train_end(self, progress: Progress) -> Progress | None:
        if self.restore_best and self._kept is not None:
            model, state = self._kept
            return progress.evolve(model=model, state=state)
        return None


class ModelCheckpoint(_Monitor):
    """Save the model and optimizer state after an epoch, through :func:`jitnn.save`.

    The file (``.npz``, or ``.safetensors`` by its suffix) holds the tree
    ``{"model": model, "state": state}``: read it back with
    ``jn.load(path, {"model": model, "state": optimizer.init(model)})``. It is written
    atomically, so a crash mid-write leaves the previous checkpoint whole. ``path`` may
    hold ``{epoch}`` (1-based), formatted per epoch. With ``best_only`` (the default) only
    an epoch that improves ``monitor`` is saved; otherwise every epoch is. ``saved`` lists
    the epochs (0-based) saved. In a distributed fit only rank 0 writes (every rank has the
    same model).
    """

    def __init__(self, path: str | os.PathLike[str], monitor: str = "val_loss", *, best_only: bool = True, mode: str = "auto",
                 min_delta: float = 0.0) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"ModelCheckpoint: path must be a str or os.PathLike, got {type(path).__name__}")
        super().__init__("ModelCheckpoint", monitor, mode, min_delta)
        self.path = os.fspath(path)
        self.best_only = validate.flag(best_only, "ModelCheckpoint", "best_only")
        self.saved: list[int] = []

    def on_train_begin(self, progress: Progress) -> Progress | None:
        if self.best_only:
            super().on_train_begin(progress)
        self.saved = []
        folder = Path(self.path).parent
        if not folder.is_dir():
            raise FileNotFoundError(f"ModelCheckpoint: the folder {str(folder)!r} of path {self.path!r} does not exist")
        return None

    def on_epoch_end(self, progress: Progress) -> Progress | None:
        if not self.best_only or self.improved(progress):
            if is_main():
                save(self.path.replace("{epoch}", str(progress.epoch + 1)), {"model": progress.model, "state": progress.state})
            self.saved.append(progress.epoch)
        return None


class CSVLogger(Callback):
    """Write one row per epoch to the CSV file ``path``: ``epoch`` (1-based) then every
    metric, in ``fit``'s order. The file is replaced at the start of training (``append``
    adds to it instead) and flushed after each row. In a distributed fit only rank 0 writes."""

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"CSVLogger: path must be a str or os.PathLike, got {type(path).__name__}")
        self.path = os.fspath(path)
        self.append = validate.flag(append, "CSVLogger", "append")
        self._names: tuple[str, ...] = ()

    def on_train_begin(self, progress: Progress) -> Progress | None:
        self._names = tuple(progress.metrics)
        if not is_main():
            return None
        header = not (self.append and os.path.exists(self.path) and os.path.getsize(self.path))
        with open(self.path, "a" if self.append else "w", newline="") as file:
            if header:
                csv.writer(file).writerow(("epoch", *self._names))
        return None

    def on_epoch_end(self, progress: Progress) -> Progress | None:
        if not is_main():
            return None
        with open(self.path, "a", newline="") as file:
            csv.writer(file).writerow((progress.epoch + 1, *(repr(progress.latest(name)) for name in self._names)))
        return None


class ReduceLROnPlateau(_Monitor):
    """Multiply the learning rate by ``factor`` once ``monitor`` has failed to improve for
    ``patience`` epochs in a row, as Keras's callback of that name does.

    The scale lives in the optimizer state (``state.lr_scale``, 1 at ``init``; in an
    ``optim.chain`` or ``optim.multi_steps``, its optimizer's state), which multiplies the learning rate, or the
    schedule's value, at every update: the change is a new state handed back to ``fit``,
    saved with it in a checkpoint, and the compiled step reads it like the rest. After a
    reduction, ``cooldown`` epochs pass before counting starts again; the scale never goes
    below ``min_scale``. ``reductions`` lists the epochs (0-based) after which it was lowered.
    """

    def __init__(self, monitor: str = "val_loss", *, factor: float = 0.1, patience: int = 10, min_delta: float = 1e-4,
                 mode: str = "auto", cooldown: int = 0, min_scale: float = 0.0) -> None:
        super().__init__("ReduceLROnPlateau", monitor, mode, min_delta)
        self.factor = validate.real(factor, "ReduceLROnPlateau", "factor", low=0.0, high=1.0, low_open=True, high_open=True,
                                    must="lie in (0, 1)")
        self.patience = validate.non_negative_int(patience, "ReduceLROnPlateau", "patience")
        self.cooldown = validate.non_negative_int(cooldown, "ReduceLROnPlateau", "cooldown")
        self.min_scale = validate.non_negative_real(min_scale, "ReduceLROnPlateau", "min_scale")
        self.wait, self.cooling, self.reductions = 0, 0, []

    def on_train_begin(self, progress: Progress) -> Progress | None:
        super().on_train_begin(progress)
        _scale_of(progress.state)  # a state without a scale fails here, before training
        self.wait, self.cooling, self.reductions = 0, 0, []
        return None

    def on_epoch_end(self, progress: Progress) -> Progress | None:
        if self.cooling:
            self.cooling -= 1
            self.wait = 0
        if self.improved(progress):
            self.wait = 0
            return None
        if self.cooling:
            return None
        self.wait += 1
        if self.wait < max(self.patience, 1):
            return None
        self.wait, self.cooling = 0, self.cooldown
        before = _scale_of(progress.state)
        scale = max(before * self.factor, self.min_scale)
        if scale == before:  # already at min_scale
            return None
        if scale <= 0.0:
            raise ValueError("ReduceLROnPlateau: the learning-rate scale reached 0; give min_scale > 0 or a larger factor")
        self.reductions.append(progress.epoch)
        return progress.evolve(state=_with_scale(progress.state, scale))


def _scale_of(state: Any) -> float:
    """The learning-rate scale of an optimizer state (a chain's or multi_steps': its optimizer's)."""
    if isinstance(state, (ChainState, MultiStepsState)):
        return _scale_of(state.optimizer)
    if not hasattr(state, "lr_scale"):
        raise TypeError(f"ReduceLROnPlateau: the optimizer state {type(state).__name__} has no lr_scale; the named optimizers "
                        "(jn.optim.OPTIMIZERS), alone or at the end of a chain, have one")
    return float(state.lr_scale)


def _with_scale(state: Any, scale: float) -> Any:
    if isinstance(state, (ChainState, MultiStepsState)):
        return attrs.evolve(state, optimizer=_with_scale(state.optimizer, scale))
    return attrs.evolve(state, lr_scale=lr_scale(scale))
