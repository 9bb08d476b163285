"""``jn.fit``'s training workflow: validation data scored after each epoch in evaluation
mode (the loss and named metrics, in ``FitResult.metrics``), the same scores compiled or
not, and every bad argument refused before the first step."""

from __future__ import annotations

import hashlib
from pathlib import Path
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


# --------------------------------------------------------------------------- callbacks
class Scripted:
    """A metric whose values are given in advance (its name is its function's: ``scripted``),
    so that a test decides when a monitored score improves."""

    def __init__(self, values: list[float]) -> None:
        self.values = iter(values)

    def __call__(self, outputs: Any, targets: Any) -> float:
        return next(self.values)


def scripted(values: list[float]) -> Any:
    metric = Scripted(values)

    def scripted(outputs: Any, targets: Any) -> float:
        return metric(outputs, targets)

    return scripted


class Recorder(jn.callbacks.Callback):
    """Keeps what every hook saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, Any, Any]] = []
        self.states: dict[int, Any] = {}

    def on_train_begin(self, progress: jn.callbacks.Progress) -> None:
        self.seen.append(("train_begin", progress.epoch, progress.model, dict(progress.metrics)))

    def on_epoch_begin(self, progress: jn.callbacks.Progress) -> None:
        self.seen.append(("epoch_begin", progress.epoch, progress.model, dict(progress.metrics)))

    def on_epoch_end(self, progress: jn.callbacks.Progress) -> None:
        self.seen.append(("epoch_end", progress.epoch, progress.model, dict(progress.metrics)))
        self.states[progress.epoch] = progress.state

    def on_train_end(self, progress: jn.callbacks.Progress) -> None:
        self.seen.append(("train_end", progress.epoch, progress.model, dict(progress.metrics)))

    def models(self) -> list[Any]:
        return [model for hook, _, model, _ in self.seen if hook == "epoch_end"]


def test_the_hooks_run_in_order_with_the_metrics_so_far() -> None:
    recorder = Recorder()
    result = fit(classifier(), epochs=2, validation_data=data(20, 3), metrics=[jn.accuracy], callbacks=[recorder])
    hooks = [(hook, epoch) for hook, epoch, _, _ in recorder.seen]
    assert hooks == [("train_begin", 0), ("epoch_begin", 0), ("epoch_end", 0), ("epoch_begin", 1), ("epoch_end", 1), ("train_end", 2)]
    assert recorder.seen[0][3] == {"loss": (), "val_loss": (), "val_accuracy": ()}  # every name, before training
    assert recorder.seen[2][3]["val_accuracy"] == result.metrics["val_accuracy"][:1]
    assert recorder.seen[-1][3] == result.metrics and recorder.seen[-1][2] is result.model


def test_early_stopping_stops_and_returns_the_best_epochs_model() -> None:
    recorder = Recorder()
    stopping = jn.callbacks.EarlyStopping("val_scripted", patience=2, mode="max")
    values = [0.5, 0.7, 0.6, 0.65, 0.9, 0.95]  # best at epoch 1; epochs 2 and 3 do not beat it, 4 is never run
    result = fit(classifier(), epochs=6, validation_data=data(20, 3), metrics=[scripted(values)], callbacks=[recorder, stopping])
    assert result.metrics["val_scripted"] == (0.5, 0.7, 0.6, 0.65) and len(result.history) == 4
    assert stopping.stopped_epoch == 3 and stopping.best_epoch == 1
    models = recorder.models()
    assert result.model is models[1] and result.model is not models[3]
    state_after_epoch_1 = result.state
    assert int(state_after_epoch_1.count) == 2 * 6  # two epochs of six steps: the state that belongs with the model


def test_early_stopping_on_the_training_loss_needs_no_validation_data() -> None:
    stopping = jn.callbacks.EarlyStopping("loss", patience=0, min_delta=10.0)  # nothing improves by 10: stop after epoch 2
    result = fit(classifier(), epochs=5, callbacks=[stopping])
    assert len(result.history) == 2 and stopping.best_epoch == 0


def test_without_restore_best_the_last_model_is_returned() -> None:
    recorder = Recorder()
    stopping = jn.callbacks.EarlyStopping("val_scripted", patience=0, mode="max", restore_best=False)
    result = fit(classifier(), epochs=4, validation_data=data(20, 3), metrics=[scripted([0.5, 0.4, 0.3, 0.2])], callbacks=[recorder, stopping])
    assert len(result.history) == 2 and result.model is recorder.models()[-1]


def test_a_checkpoint_of_the_best_epoch_is_reloaded_in_a_new_process(tmp_path: Any) -> None:
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "best.npz"
    recorder = Recorder()
    checkpoint = jn.callbacks.ModelCheckpoint(path, "val_scripted", mode="max")
    fit(classifier(), epochs=4, validation_data=data(20, 3), metrics=[scripted([0.5, 0.7, 0.6, 0.65])], callbacks=[recorder, checkpoint])
    assert checkpoint.saved == [0, 1]
    best = recorder.models()[1]
    child = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import hashlib
        import jitnn as jn
        from test_fit import classifier
        model = classifier(7)  # another model of the architecture: its values are not used
        found = jn.load({str(path)!r}, {{"model": model, "state": jn.optim.adam(0.02).init(model)}})
        digest = hashlib.sha256(b"".join(leaf.tobytes() for leaf in jn.tree.leaves(found["model"]))).hexdigest()
        print(digest, int(found["state"].count))
    """)
    process = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300, check=False)
    assert process.returncode == 0, process.stderr
    digest, count = process.stdout.split()
    assert digest == hashlib.sha256(b"".join(leaf.tobytes() for leaf in jn.tree.leaves(best))).hexdigest()
    assert int(count) == 2 * 6


def test_every_epoch_is_checkpointed_without_best_only(tmp_path: Any) -> None:
    checkpoint = jn.callbacks.ModelCheckpoint(tmp_path / "epoch{epoch}.npz", best_only=False)
    fit(classifier(), epochs=3, callbacks=[checkpoint])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch1.npz", "epoch2.npz", "epoch3.npz"]


def test_the_csv_log_has_a_row_per_epoch(tmp_path: Any) -> None:
    import csv

    path = tmp_path / "log.csv"
    result = fit(classifier(), epochs=3, validation_data=data(20, 3), metrics=[jn.accuracy], callbacks=[jn.callbacks.CSVLogger(path)])
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["epoch", "loss", "val_loss", "val_accuracy"] and len(rows) == 4
    for epoch, row in enumerate(rows[1:]):
        assert row[0] == str(epoch + 1) and [float(v) for v in row[1:]] == [result.metrics[name][epoch] for name in rows[0][1:]]
    fit(classifier(), epochs=1, validation_data=data(20, 3), metrics=[jn.accuracy], callbacks=[jn.callbacks.CSVLogger(path, append=True)])
    assert len(list(csv.reader(path.open()))) == 5  # one header, four rows


class Replace(jn.callbacks.Callback):
    """Hands fit another model at the start of epoch 1."""

    def __init__(self, model: jn.Layer) -> None:
        self.model = model

    def on_epoch_begin(self, progress: jn.callbacks.Progress) -> Any:
        return progress.evolve(model=self.model) if progress.epoch == 1 else None


def test_a_callback_can_hand_back_another_model() -> None:
    recorder = Recorder()
    other = classifier(9)
    fit(classifier(), epochs=2, callbacks=[Replace(other), recorder], compiled=True)
    begins = [model for hook, epoch, model, _ in recorder.seen if hook == "epoch_begin"]
    assert begins[1] is other  # the callback after it saw the change, and training went on from it


class ReturnsJunk(jn.callbacks.Callback):
    def on_epoch_end(self, progress: jn.callbacks.Progress) -> Any:
        return True


def test_bad_callbacks_are_refused() -> None:
    with pytest.raises(TypeError, match="fit: callbacks must be a list of callbacks"):
        fit(classifier(), callbacks=jn.callbacks.CSVLogger("log.csv"))
    with pytest.raises(TypeError, match="is not a callback: it has none of the methods"):
        fit(classifier(), callbacks=[lambda epoch, model, loss: None])
    with pytest.raises(ValueError, match=r"EarlyStopping: monitor='val_acc' is not a metric this fit produces; it produces 'loss', 'val_loss', 'val_accuracy'"):
        fit(classifier(), validation_data=data(20, 3), metrics=[jn.accuracy], callbacks=[jn.callbacks.EarlyStopping("val_acc")],
            callback=lambda *args: pytest.fail("trained despite a bad monitor"))
    with pytest.raises(TypeError, match=r"fit: ReturnsJunk.on_epoch_end must return None or a Progress"):
        fit(classifier(), callbacks=[ReturnsJunk()])
    with pytest.raises(ValueError, match="EarlyStopping: mode must be 'auto', 'min' or 'max'"):
        jn.callbacks.EarlyStopping(mode="up")
    with pytest.raises((TypeError, ValueError), match="EarlyStopping: patience"):
        jn.callbacks.EarlyStopping(patience=-1)
    with pytest.raises(FileNotFoundError, match="ModelCheckpoint: the folder"):
        fit(classifier(), callbacks=[jn.callbacks.ModelCheckpoint("/no/such/folder/x.npz", "loss")])
    with pytest.raises(TypeError, match="a callback may change model, state and stop, not"):
        jn.callbacks.Progress(0, 1, classifier(), None, {}).evolve(epoch=3)


def test_a_plateau_lowers_the_learning_rate_in_the_state() -> None:
    recorder = Recorder()
    plateau = jn.callbacks.ReduceLROnPlateau("val_scripted", factor=0.5, patience=2, cooldown=1, mode="min", min_scale=0.2)
    values = [1.0, 0.9, 0.95, 0.93, 0.96, 0.99, 0.98, 0.97, 0.99]  # no improvement after epoch 1
    result = fit(classifier(), epochs=9, validation_data=data(20, 3), metrics=[scripted(values)], callbacks=[plateau, recorder])
    # as Keras counts: epochs 2 and 3 fail, lowered after 3 to 0.5; the cooldown restarts the count at epoch 4, so 4 and 5
    # fail, lowered to 0.25; 6 and 7 fail, lowered to min_scale (0.125 is below it); 8 fails once
    assert plateau.reductions == [3, 5, 7]
    scales = {epoch: float(state.lr_scale) for hook, epoch, _, _ in recorder.seen if hook == "epoch_end" for state in [recorder.states[epoch]]}
    assert scales == {0: 1.0, 1: 1.0, 2: 1.0, 3: 0.5, 4: 0.5, 5: 0.25, 6: 0.25, 7: 0.2, 8: 0.2}  # what the callback after it saw
    assert float(result.state.lr_scale) == 0.2


def test_a_plateau_lowers_a_chains_optimizer_and_bad_settings_are_refused() -> None:
    transforms_only = jn.optim.chain(jn.optim.clip_by_value(1.0), jn.optim.sgd(0.1))
    plateau = jn.callbacks.ReduceLROnPlateau("loss", patience=0, min_delta=10.0)  # only the first epoch improves
    result = jn.fit(classifier(), jn.SoftmaxCrossEntropy(), transforms_only, *data(32, 1), key=jn.random.key(0), epochs=2, callbacks=[plateau])
    assert plateau.reductions == [1] and float(result.state.optimizer.lr_scale) == 0.1  # a chain's optimizer holds it
    with pytest.raises(ValueError, match=r"ReduceLROnPlateau: factor must lie in \(0, 1\)"):
        jn.callbacks.ReduceLROnPlateau(factor=1.5)


# --------------------------------------------------------------------------- the curves
def test_the_history_is_drawn_as_a_png(tmp_path: Any) -> None:
    pytest.importorskip("matplotlib")
    result = fit(classifier(), epochs=3, validation_data=data(20, 3), metrics=[jn.accuracy])
    path = tmp_path / "history.png"
    jn.plot_history(result, path, title="blobs")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    jn.plot_history({"loss": (1.0, 0.5)}, tmp_path / "loss.png")  # a metrics mapping will do
    with pytest.raises(ValueError, match="plot_history: the result holds no epoch to draw"):
        jn.plot_history({"loss": ()}, tmp_path / "none.png")
    with pytest.raises(TypeError, match="plot_history: result must be a jitnn.FitResult"):
        jn.plot_history([1.0, 0.5], tmp_path / "list.png")


def test_on_a_terminal_a_bar_shows_the_running_loss() -> None:
    import io

    from jitnn.train import _Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = _Progress(0, 3, True, stream)
    for steps, (seen, value, mass) in enumerate([(10, 2.0, 10), (20, 1.0, 10), (25, 4.0, 5)], start=1):
        progress.update(steps, 25, seen, value, mass)
    progress.done({"loss": 1.9, "val_loss": 2.0}, 0.5)
    frames = stream.getvalue().split("\r")
    assert frames[1] == "epoch 1/3 [=========>              ]  40% 1 steps, loss 2.0000"
    assert frames[2].endswith(" 80% 2 steps, loss 1.5000")  # (10 * 2 + 10 * 1) / 20
    assert frames[3] == "epoch 1/3 [========================] 100% 3 steps, loss 2.0000"  # (30 + 5 * 4) / 25
    assert frames[4] == "\x1b[Kepoch 1/3: loss 1.9000, val_loss 2.0000 (0.50 s)\n"
    quiet = Terminal()
    _Progress(0, 3, False, quiet).update(1, 25, 10, 2.0, 10)
    weighted = Terminal()  # batches weighted by sample weights: the running mean is over the weights' sums
    bar = _Progress(0, 1, True, weighted)
    bar.update(1, 20, 10, 2.0, 1.0)
    bar.update(2, 20, 20, 1.0, 3.0)
    assert weighted.getvalue().split("\r")[2].endswith("100% 2 steps, loss 1.2500")  # (2 * 1 + 1 * 3) / 4
    assert quiet.getvalue() == ""
