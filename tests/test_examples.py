"""The examples run as a user runs them, in a fresh interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ.copy(),
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_custom_layer_example_checks_composes_and_trains() -> None:
    out = run_example("custom_layer.py")
    assert "PReLU passes jitnn.testing.check_grads" in out
    assert "composition refused" in out and "PReLU" in out
    accuracy = float(re.search(r"training accuracy ([0-9.]+)", out).group(1))
    assert accuracy >= 0.9


def test_digits_mlp_reaches_095_test_accuracy() -> None:
    pytest.importorskip("sklearn", reason="the digits example needs scikit-learn (the 'examples' extra)")
    out = run_example("digits_mlp.py")
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", out).group(1))
    assert accuracy >= 0.95, out


def test_compare_optimizers_example_prints_a_curve_per_optimizer() -> None:
    pytest.importorskip("sklearn", reason="the optimizer comparison needs scikit-learn (the 'examples' extra)")
    out = run_example("compare_optimizers.py", "--epochs", "3")
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(row[0]) for row in rows] == [1, 2, 3]
    accuracies = np.array([[float(value) for value in row[1:]] for row in rows])
    assert accuracies.shape == (3, 7) and np.all((accuracies >= 0) & (accuracies <= 1))
    sgd, adam = accuracies[:, 0], accuracies[:, 2]
    assert adam[-1] > sgd[-1]


def test_digits_cnn_reaches_097_test_accuracy() -> None:
    pytest.importorskip("sklearn", reason="the digits example needs scikit-learn (the 'examples' extra)")
    out = run_example("digits_cnn.py")
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", out).group(1))
    assert accuracy >= 0.97, out


def test_checkpoint_example_reloads_the_model_in_a_new_process(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="the digits example needs scikit-learn (the 'examples' extra)")
    out = run_example("checkpoint.py", "--epochs", "3", "--folder", str(tmp_path))
    assert "the reloaded model gives the same accuracy" in out, out
    assert "after 129 steps" in out  # 3 epochs of 43 batches (42 of 32, one of 4) of the 1,348 training digits
    assert (tmp_path / "model.npz").exists() and (tmp_path / "state.npz").exists()
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", out).group(1))
    assert accuracy > 0.8, out


def test_mnist1d_example_reaches_the_papers_accuracies() -> None:
    """The paper's four models after its 6,000 steps, mean test accuracy over three
    initializations: logistic >= 0.30, MLP >= 0.63, the CNN
    on Conv1D >= 0.92, the bidirectional GRU >= 0.88 test accuracy (the paper: 0.32, 0.68,
    0.94, 0.91)."""
    pytest.importorskip("mnist1d", reason="the MNIST-1D example needs the mnist1d package (the 'examples' extra)")
    out = run_example("mnist1d.py")
    found = {name: float(value) for name, value in re.findall(r"^(\w+) test accuracy ([0-9.]+)$", out, re.MULTILINE)}
    assert set(found) == {"logistic", "mlp", "cnn", "gru"}, out
    minimum = {"logistic": 0.30, "mlp": 0.63, "cnn": 0.92, "gru": 0.88}
    assert all(found[name] >= minimum[name] for name in minimum), out


def test_char_transformer_example_learns_and_samples() -> None:
    """A short run of the character-level transformer: the held-out loss falls well below a
    uniform guess's log(vocab) (the first thing a model learns, the characters' frequencies,
    already takes it under 0.75 log(vocab)), and a continuation is printed."""
    out = run_example("char_transformer.py", "--steps", "150", "--dim", "32", "--blocks", "1", "--context", "32", "--sample", "40")
    uniform = float(re.search(r"= ([0-9.]+) nats per character", out).group(1))
    first = float(re.search(r"step +0 +held-out loss ([0-9.]+)", out).group(1))
    final = float(re.search(r"final held-out loss ([0-9.]+)", out).group(1))
    assert first > 0.9 * uniform and final < 0.75 * uniform, out
    assert "sample after 'def '" in out


def test_digits_training_stops_early_checkpoints_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="the digits example needs scikit-learn (the 'examples' extra)")
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib (the 'examples' extra)")
    out = run_example("digits_training.py", "--out", str(tmp_path), "--epochs", "60")
    reloaded, returned = map(float, re.search(r"checkpoint reloaded: test accuracy ([0-9.]+) \(the returned model: ([0-9.]+)\)", out).groups())
    assert reloaded == returned >= 0.95, out  # the checkpoint holds the best epoch, which early stopping returned
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0] == "epoch,loss,val_loss,val_accuracy" and len(rows) == 1 + int(re.search(r"^(\d+) epochs", out, re.M).group(1))
    assert (tmp_path / "history.png").read_bytes()[:4] == b"\x89PNG"


def test_export_example_gives_the_same_accuracy_in_onnxruntime_and_pytorch(tmp_path: Path) -> None:
    for module in ("sklearn", "onnx", "onnxruntime", "torch"):
        pytest.importorskip(module, reason=f"the export example needs {module}")
    out = run_example("export.py", "--out", str(tmp_path))
    accuracies = [float(a) for a in re.findall(r"test accuracy ([0-9.]+)", out)]
    assert len(accuracies) == 3 and accuracies[0] >= 0.95, out
    # the three compute the same float32 logits in other orders (tests/test_onnx.py and
    # tests/test_interop.py bound the differences); a test digit whose two largest logits are
    # closer than that may change its class, so the accuracies agree to one digit of the 360
    assert all(abs(a - accuracies[0]) <= 1 / 360 + 1e-12 for a in accuracies), out
    assert (tmp_path / "digits_cnn.onnx").stat().st_size > 0
