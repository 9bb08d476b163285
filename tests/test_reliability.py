"""Reliability across processes: training is deterministic (bit for bit, in separate
interpreters, compiled or not), Numba's on-disk cache never breaks a run (a cache folder
that cannot be written, one that does not exist yet or goes away, damaged cache files, a
source file changed after it was cached, two processes filling the same folder at once),
and malformed calls end in a Python exception, never in a crash of the interpreter.

The cache tests run in child interpreters with their own ``NUMBA_CACHE_DIR`` under
``tmp_path``, so none depends on what an earlier test left. The determinism children use
the suite's cache folder, whatever it holds: they must give the same bits whether they
compile their kernels or load them.

What is guaranteed about determinism (what the tests below check):

- On one machine, with the same versions of jitnn, NumPy, Numba and the BLAS, the same key,
  data and model give bitwise-identical parameters, optimizer state and running statistics
  in every process, on the generic path and with the compiled step: dropout masks and the
  batch order come from the key alone, and every kernel runs its operations in a fixed
  order. Machine code loaded from the disk cache gives the same bits as freshly compiled.
- The compiled step and the generic path give bitwise-identical results: they call the same
  kernels, compiled without ``fastmath`` (so the compiler never reorders floating-point
  operations), on the same arrays in the same order.
- With the same number of BLAS threads (``compile_step(..., threads=n)``, or the same batch
  size when the count is chosen by batch size) results are bitwise identical. With another
  number of threads a BLAS may split the matrix products differently, so only equality to
  floating-point rounding is promised. (SciPy's OpenBLAS splits a product by rows and
  columns, never inside a sum, and here gave bitwise-identical results with 1 and 2 threads
  too; another BLAS, or another CPU, need not.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pytest

import jitnn as jn
import tolerances
from jitnn import _blas
from jitnn._jit import jit

needs_jit = pytest.mark.skipif(bool(numba.config.DISABLE_JIT), reason="about compiled machine code and its disk cache, which NUMBA_DISABLE_JIT=1 turns off")

#: A child interpreter can take a while on a loaded machine, most of it compiling kernels
#: into an empty cache folder; this bounds a hang, not the expected time.
CHILD_TIMEOUT = 600

#: Trains a model and hashes every leaf of the model and optimizer state (path, dtype,
#: shape and bytes). Run in child interpreters, and with ``exec`` in this one.
TRAINING = textwrap.dedent("""
    import hashlib
    import warnings

    import numpy as np

    import jitnn as jn
    from jitnn._jit import KERNELS


    def make(kind):
        rng = np.random.default_rng(0)
        k1, k2, k3 = jn.random.split(jn.random.key(0), 3)
        if kind == "mlp":
            model = jn.pipe(jn.Dense.init(k1, 6, 16, dtype=np.float64), jn.ReLU(), jn.Dropout(0.3), jn.Dense.init(k2, 16, 3, dtype=np.float64))
            X = rng.normal(size=(40, 6))
        elif kind == "cnn":
            model = jn.pipe(
                jn.Conv2D.init(k1, 1, 4, 3, padding=1), jn.BatchNorm.init(None, 4), jn.ReLU(), jn.MaxPool2D(2),
                jn.Flatten(), jn.Dropout(0.2), jn.Dense.init(k2, 4 * 3 * 3, 3),
            )
            X = rng.normal(size=(40, 1, 6, 6)).astype(np.float32)
        else:  # "wide": large enough products for BLAS to use several threads
            model = jn.pipe(jn.Dense.init(k1, 300, 256, dtype=np.float64), jn.ReLU(), jn.Dropout(0.3), jn.Dense.init(k3, 256, 10, dtype=np.float64))
            X = rng.normal(size=(512, 300))
        return model, X, rng.integers(0, 3, size=len(X))


    def train(kind, compiled, threads=None, batch_size=8, epochs=2):
        model, X, T = make(kind)
        result = jn.fit(
            model, jn.SoftmaxCrossEntropy(), jn.optim.adam(1e-2), X, T, key=jn.random.key(7),
            epochs=epochs, batch_size=batch_size, compiled=compiled, threads=threads,
        )
        assert result.compiled == compiled
        return result.model, result.state


    def digest(tree):
        h = hashlib.sha256()
        for path, leaf in jn.tree.leaves_with_paths(tree):
            leaf = np.ascontiguousarray(leaf)
            h.update(f"{path}|{leaf.dtype.str}|{leaf.shape}|".encode())
            h.update(leaf.tobytes())
        return h.hexdigest()


    def cache_counts():
        hits = sum(sum(d.stats.cache_hits.values()) for d in KERNELS)
        misses = sum(sum(d.stats.cache_misses.values()) for d in KERNELS)
        return hits, misses
""")


def _training() -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(TRAINING, namespace)
    return namespace


def run_child(code: str, cache: Path | str | None = None, *, start_only: bool = False, **env: str) -> Any:
    """Run ``code`` in a fresh interpreter (``NUMBA_CACHE_DIR=cache`` when given); return the
    finished process, or with ``start_only`` the running ``Popen``."""
    environment = {**os.environ, **env}
    if cache is not None:
        environment["NUMBA_CACHE_DIR"] = str(cache)
    command = [sys.executable, "-c", code]
    if start_only:
        return subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=CHILD_TIMEOUT)


def finished(process: Any) -> str:
    """The standard output of a child that exited normally (no signal, no exception)."""
    assert process.returncode >= 0, f"the child was killed by signal {-process.returncode}:\n{process.stderr}"
    assert process.returncode == 0, f"the child failed:\n{process.stderr}"
    return process.stdout


def fields(stdout: str, tag: str) -> list[str]:
    """The words after ``tag`` on the line of ``stdout`` that starts with it."""
    lines = [line.split()[1:] for line in stdout.splitlines() if line.startswith(tag + " ")]
    assert len(lines) == 1, f"expected one {tag!r} line in:\n{stdout}"
    return lines[0]


# --------------------------------------------------------------------------- determinism
def digest_child(kind: str, compiled: bool) -> str:
    return TRAINING + f"\nprint('digest', digest(train({kind!r}, {compiled!r})))\n"


@pytest.mark.parametrize("compiled", [False, True], ids=["generic", "compiled"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"], ids=["mlp-dropout", "cnn-batchnorm"])
def test_the_same_key_gives_the_same_bits_in_separate_processes(kind: str, compiled: bool) -> None:
    """Two fresh interpreters (and this one) train to bitwise-identical models and optimizer
    states: nothing depends on addresses, hash seeds, or what a process did before."""
    code = digest_child(kind, compiled)
    digests = [fields(finished(run_child(code, PYTHONHASHSEED=str(seed))), "digest")[0] for seed in (1, 2)]
    training = _training()
    here = training["digest"](training["train"](kind, compiled))
    assert digests == [here, here]


@pytest.mark.parametrize("kind", ["mlp", "cnn"], ids=["mlp-dropout", "cnn-batchnorm"])
def test_the_compiled_step_and_the_generic_path_agree_bit_for_bit(kind: str) -> None:
    training = _training()
    compiled = training["train"](kind, True)
    generic = training["train"](kind, False)
    jn.tree.check_same_structure(compiled, generic)
    for (path, a), (_, b) in zip(jn.tree.leaves_with_paths(compiled), jn.tree.leaves_with_paths(generic)):
        assert a.dtype == b.dtype and np.array_equal(a, b), path
    # the runs differ from a run with another key: the comparison above can fail
    model, X, T = training["make"](kind)
    other = jn.fit(model, jn.SoftmaxCrossEntropy(), jn.optim.adam(1e-2), X, T, key=jn.random.key(8), epochs=2, batch_size=8)
    assert training["digest"]((other.model, other.state)) != training["digest"](compiled)


def wide_step_bounds(model: jn.Layer, state: Any, X: np.ndarray, T: np.ndarray, key: Any, optimizer: Any) -> tuple[Any, Any]:
    """How far one training step of the "wide" model (Dense 300-256, ReLU, Dropout, Dense
    256-10, float64; softmax cross-entropy; Adam) from ``model`` and ``state`` on ``(X, T)``
    with ``key`` may differ between two BLAS thread counts: ``(gradient bounds, step bounds)``,
    leaf by leaf.

    Only the matrix products change with the thread count (a BLAS may split a sum between
    threads and add the parts in another order); every other kernel runs the same code. Each
    run's gradient is within the bound of :func:`tolerances.value_and_grad_bound` of the exact
    gradient (a product of length K within ``gamma(K) |A| |B|``, carried through the bias,
    ReLU, dropout and the loss to first order; ReLU's inputs that the forward bound puts
    within reach of 0 are allowed to change branch), so two runs are within twice that. The
    Adam update of two such gradients, from the same parameters and moments, differs by at
    most :func:`tolerances.adam_update_difference`: near a zero gradient Adam multiplies the
    difference by up to ``lr / eps`` (1e6 here), which is why no fixed relative tolerance
    holds for the parameters."""
    _, trace = jn.forward(model, X, key=key, training=True)
    mask = trace.record.extras[2][0]  # the per-call arguments of the third call (the Dropout layer): its mask
    run = tolerances.value_and_grad_bound(model, jn.SoftmaxCrossEntropy(), X, T, np.float64, masks=iter([mask]))
    e_grads = [2 * e for e in run.egrads]
    with _blas.threads(1):
        _, grads = jn.value_and_grad(model, jn.SoftmaxCrossEntropy(), X, T, key=key, training=True)
    step = int(state.count) + 1
    leaves = zip(jn.tree.leaves(grads), e_grads, jn.tree.leaves(model), jn.tree.leaves(state.mu), jn.tree.leaves(state.nu))
    steps = [tolerances.adam_update_difference(p, g, e, mu, nu, step, optimizer) for g, e, p, mu, nu in leaves]
    return e_grads, steps


@needs_jit
def test_thread_counts_same_count_is_bitwise_another_count_is_close() -> None:
    """Guaranteed: the same thread count gives the same bits (and the generic path gives the
    compiled step's bits at the same count); another thread count gives the same result to
    rounding. Whether two thread counts give the same bits depends on the BLAS (OpenBLAS may
    choose other kernels by thread count), so that is not asserted.

    "To rounding" is checked step by step: each step of the fit, from the same model, state,
    batch and key, taken at 1 and at 2 threads, gives gradients, parameters and Adam moments
    within the bounds derived in :func:`wide_step_bounds` from the step's own arrays. Over
    several steps the differences compound through training itself (a ReLU that changes
    branch, Adam's ``lr / eps`` amplification near a zero gradient), which no rounding bound
    describes, so whole runs at different counts are not compared."""
    training = _training()
    runs = {threads: [training["train"]("wide", True, threads=threads, batch_size=256, epochs=1) for _ in range(2)] for threads in (1, 2)}
    for threads, (first, second) in runs.items():
        assert training["digest"](first) == training["digest"](second), f"{threads} thread(s)"
    # the generic path calls the same kernels in the same order: the same bits at the same count
    for threads in (1, 2):
        with _blas.threads(threads):
            generic = training["train"]("wide", False, batch_size=256, epochs=1)
        assert training["digest"](generic) == training["digest"](runs[threads][0]), f"generic path, {threads} thread(s)"

    # each step of that fit (the same batches and keys as jn.fit) at 1 and at 2 threads
    model, X, T = training["make"]("wide")
    loss, optimizer = jn.SoftmaxCrossEntropy(), jn.optim.adam(1e-2)
    steps = {threads: jn.compile_step(model, loss, optimizer, threads=threads) for threads in (1, 2)}
    state = optimizer.init(model)
    _, epoch_key = jn.random.split(jn.random.key(7))
    order_key, steps_key = jn.random.split(epoch_key)
    for index, (X_batch, T_batch) in enumerate(jn.batches(order_key, X, T, 256)):
        key = jn.random.fold_in(steps_key, index)
        e_grads, bounds = wide_step_bounds(model, state, X_batch, T_batch, key, optimizer)
        grads = {}
        for threads in (1, 2):
            with _blas.threads(threads):
                grads[threads] = jn.value_and_grad(model, loss, X_batch, T_batch, key=key, training=True)[1]
        for (path, a), b, e in zip(jn.tree.leaves_with_paths(grads[1]), jn.tree.leaves(grads[2]), e_grads):
            tolerances.assert_within(a, b, e, f"gradient {path}, step {index}")
        (one, one_state, _), (two, two_state, _) = (steps[t](model, state, X_batch, T_batch, key=key) for t in (1, 2))
        assert int(one_state.count) == int(two_state.count) == index + 1
        for i, ((path, a), b) in enumerate(zip(jn.tree.leaves_with_paths(one), jn.tree.leaves(two))):
            tolerances.assert_within(a, b, bounds[i].params, f"parameter {path}, step {index}")
            tolerances.assert_within(jn.tree.leaves(one_state.mu)[i], jn.tree.leaves(two_state.mu)[i], bounds[i].mu, f"mu.{path}, step {index}")
            tolerances.assert_within(jn.tree.leaves(one_state.nu)[i], jn.tree.leaves(two_state.nu)[i], bounds[i].nu, f"nu.{path}, step {index}")
        model, state = one, one_state
    # the loop above is the fit's: it ends where the 1-thread fit ended
    assert training["digest"]((model, state)) == training["digest"](runs[1][0])


def test_a_thread_count_that_is_not_a_positive_integer_is_refused() -> None:
    model, _, _ = _training()["make"]("mlp")
    for threads in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="compile_step: threads must be None"):
            jn.compile_step(model, jn.SoftmaxCrossEntropy(), jn.optim.adam(1e-2), threads=threads)


# --------------------------------------------------------------------------- the disk cache
#: A compiled fit with the warnings it raised; then the cache hits and misses of every kernel.
#: ``{before}`` runs after jitnn is imported, before training.
CACHE_CHILD_TEMPLATE = TRAINING + textwrap.dedent("""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        {before}
        trained = train("mlp", True)
    for warning in caught:
        print("warning", warning.category.__name__, str(warning.message).replace(chr(10), " "))
    print("digest", digest(trained))
    print("counts", *cache_counts())
""")
CACHE_CHILD = CACHE_CHILD_TEMPLATE.replace("{before}", "pass")


def warnings_of(stdout: str) -> list[str]:
    return [line.split(None, 1)[1] for line in stdout.splitlines() if line.startswith("warning ")]


@pytest.fixture(scope="module")
def expected_mlp() -> str:
    """The digest of the compiled fit of CACHE_CHILD, trained in this process."""
    training = _training()
    return training["digest"](training["train"]("mlp", True))


@needs_jit
@pytest.mark.parametrize("how", ["read-only folder", "path inside a file"])
def test_a_cache_folder_that_cannot_be_written_gives_correct_results(tmp_path: Path, how: str, expected_mlp: str) -> None:
    """At most a warning (a RuntimeWarning from jitnn), never an exception, and the same
    bits as with a working cache. Root ignores permissions, so a read-only folder is tried
    only as another user; a path inside a regular file cannot be created by anyone."""
    if how == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root can write to a read-only folder")
        cache = tmp_path / "cache"
        cache.mkdir()
        cache.chmod(0o555)
    else:
        (tmp_path / "file").write_text("not a folder")
        cache = tmp_path / "file" / "cache"
    try:
        stdout = finished(run_child(CACHE_CHILD, cache))
    finally:
        if cache.is_dir():
            cache.chmod(0o755)
    assert fields(stdout, "digest") == [expected_mlp]
    caught = warnings_of(stdout)
    assert any(re.match(r"RuntimeWarning jitnn: cannot cache the compiled step in ", warning) for warning in caught), caught
    for warning in caught:
        assert re.match(r"RuntimeWarning jitnn: cannot cache ", warning), warning
    assert not (cache.is_dir() and any(cache.iterdir()))


@needs_jit
def test_a_kernel_that_no_cache_folder_accepts_is_compiled_in_memory_in_a_child(tmp_path: Path) -> None:
    """Numba looks for a cache folder in NUMBA_CACHE_DIR, then beside the source file, then
    in the user's cache folder; with none of them usable it refuses to cache, and ``jit``
    compiles the kernel in memory with a warning instead of failing the import."""
    (tmp_path / "file").write_text("not a folder")
    blocked = tmp_path / "file" / "below"
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "__pycache__").write_text("not a folder")  # nothing can be cached beside the source
    write_changed(folder / "user_kernel.py", USER_KERNEL.replace("FACTOR", "2.0"))
    code = "import warnings\nwarnings.simplefilter('always')\n" + USER_KERNEL_CHILD.format(folder=str(folder))
    process = run_child(code, blocked, HOME=str(blocked), XDG_CACHE_HOME=str(blocked))
    assert fields(finished(process), "sum") == ["6.0", "0", "1"]  # compiled, not loaded
    assert re.search(r"RuntimeWarning: jitnn: cannot cache _user_kernel_scale on disk .*compiling it in memory", process.stderr), process.stderr


@needs_jit
def test_a_cache_folder_that_does_not_exist_yet_is_created(tmp_path: Path, expected_mlp: str) -> None:
    cache = tmp_path / "not" / "yet"
    stdout = finished(run_child(CACHE_CHILD, cache))
    assert fields(stdout, "digest") == [expected_mlp]
    assert warnings_of(stdout) == []
    assert len(list((cache / "jitnn_steps").glob("jitnn_step_*.py"))) == 1
    assert list(cache.rglob("*.nbi")) and list(cache.rglob("*.nbc"))
    hits, misses = map(int, fields(stdout, "counts"))
    assert misses > 0 and hits == 0  # compiled, and saved


WARM_CHILD = TRAINING + textwrap.dedent("""
    import sys
    train("mlp", True)
    train("cnn", True)
    print("counts", *cache_counts())
    print("imported", "none", *(name for name in ("numba.np.arraymath", "scipy.linalg") if name in sys.modules))
""")


@needs_jit
def test_a_process_that_loads_every_kernel_from_the_cache_imports_none_of_numbas_compiler_registries(tmp_path: Path) -> None:
    """Loading machine code needs Numba's runtime, not its typing and lowering registries
    (``numba.np.arraymath`` pulls SciPy's BLAS in: about 0.5 s of a warm first run), and no
    kernel the compiled steps of an MLP and a CNN call may need them back through its
    environment (``ndarray.max`` would)."""
    cache = tmp_path / "cache"
    finished(run_child(WARM_CHILD, cache))
    stdout = finished(run_child(WARM_CHILD, cache))
    hits, misses = map(int, fields(stdout, "counts"))
    assert misses == 0 and hits > 0
    assert fields(stdout, "imported") == ["none"]


@needs_jit
def test_two_processes_filling_one_cache_folder_at_once(tmp_path: Path, expected_mlp: str) -> None:
    """Both compile and write the same entries at the same time; both succeed with the right
    bits, and a third process then loads every kernel from the folder, compiling none."""
    cache = tmp_path / "cache"
    cache.mkdir()
    children = [run_child(CACHE_CHILD, cache, start_only=True) for _ in range(2)]
    results = []
    for child in children:
        try:
            stdout, stderr = child.communicate(timeout=CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            for other in children:
                other.kill()
            raise
        results.append(subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr))
    for result in results:
        stdout = finished(result)
        assert fields(stdout, "digest") == [expected_mlp]
        assert warnings_of(stdout) == []
    third = finished(run_child(CACHE_CHILD, cache))
    assert fields(third, "digest") == [expected_mlp]
    hits, misses = map(int, fields(third, "counts"))
    assert misses == 0 and hits > 0
    assert len(list((cache / "jitnn_steps").glob("jitnn_step_*.py"))) == 1
    assert not list((cache / "jitnn_steps").glob(".tmp_*"))


def damage(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:20])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"\x80\x04not a pickle at all")


@needs_jit
@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
@pytest.mark.parametrize("files", ["index", "data"])
def test_damaged_cache_files_are_compiled_again_and_repaired(tmp_path: Path, files: str, how: str) -> None:
    """A damaged index (``.nbi``) or data file (``.nbc``), as a full disk or a copy cut short
    leaves them, costs a compilation and a warning; the next process loads from the cache."""
    folder, cache = tmp_path / "code", tmp_path / "cache"
    folder.mkdir()
    write_changed(folder / "user_kernel.py", USER_KERNEL.replace("FACTOR", "2.0"))
    code = USER_KERNEL_CHILD.format(folder=str(folder))
    assert fields(finished(run_child(code, cache)), "sum") == ["6.0", "0", "1"]
    damaged = sorted(cache.rglob("*.nbi" if files == "index" else "*.nbc"))
    assert len(damaged) == 1
    damage(damaged[0], how)
    process = run_child(code, cache)
    assert fields(finished(process), "sum") == ["6.0", "0", "1"]  # compiled again
    assert re.search(r"RuntimeWarning: jitnn: cannot load _user_kernel_scale from the disk cache", process.stderr), process.stderr
    repaired = run_child(code, cache)
    assert fields(finished(repaired), "sum") == ["6.0", "1", "0"]  # loaded again
    assert "Warning" not in repaired.stderr


@needs_jit
def test_a_cache_folder_that_goes_away_after_the_import_costs_only_warnings(tmp_path: Path, expected_mlp: str) -> None:
    """The folder is there when the kernels are defined, then replaced by a file before they
    compile: neither loading nor saving may fail the call."""
    cache = tmp_path / "cache"
    cache.mkdir()
    before = "import os, shutil; shutil.rmtree(os.environ['NUMBA_CACHE_DIR']); open(os.environ['NUMBA_CACHE_DIR'], 'w').close()"
    stdout = finished(run_child(CACHE_CHILD_TEMPLATE.replace("{before}", before), cache))
    assert fields(stdout, "digest") == [expected_mlp]
    caught = warnings_of(stdout)
    assert any(re.match(r"RuntimeWarning jitnn: cannot save \w+ to the disk cache", warning) for warning in caught), caught
    assert any(re.match(r"RuntimeWarning jitnn: cannot cache the compiled step in ", warning) for warning in caught), caught
    for warning in caught:
        assert re.match(r"RuntimeWarning jitnn: cannot (save|load|cache) ", warning), warning
    assert cache.is_file()


USER_KERNEL = textwrap.dedent("""
    import numpy as np
    from jitnn._jit import jit


    @jit
    def _user_kernel_scale(X):
        \"\"\"Y = FACTOR X;  any shape.\"\"\"
        return X * FACTOR
""")

USER_KERNEL_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {folder!r})
    import numpy as np
    import user_kernel
    kernel = user_kernel._user_kernel_scale
    print("sum", float(kernel(np.ones(3)).sum()), sum(kernel.stats.cache_hits.values()), sum(kernel.stats.cache_misses.values()))
""")


def write_changed(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` and move its timestamp away from the old one's."""
    before = path.stat().st_mtime if path.exists() else None
    path.write_text(text)
    if before is not None:
        os.utime(path, (before + 10, before + 10))


@needs_jit
def test_a_kernel_changed_after_it_was_cached_is_compiled_again(tmp_path: Path) -> None:
    folder, cache = tmp_path / "code", tmp_path / "cache"
    folder.mkdir()
    module = folder / "user_kernel.py"
    code = USER_KERNEL_CHILD.format(folder=str(folder))
    write_changed(module, USER_KERNEL.replace("FACTOR", "2.0"))
    assert fields(finished(run_child(code, cache)), "sum") == ["6.0", "0", "1"]  # compiled and saved
    assert fields(finished(run_child(code, cache)), "sum") == ["6.0", "1", "0"]  # loaded
    write_changed(module, USER_KERNEL.replace("FACTOR", "3.0"))
    assert fields(finished(run_child(code, cache)), "sum") == ["9.0", "0", "1"]  # the new source


USER_LAYER = textwrap.dedent("""
    import jitnn as jn
    from jitnn._jit import jit


    @jit
    def _user_layer_forward(X):
        \"\"\"Y = FACTOR X;  (n, k).\"\"\"
        return X * FACTOR


    @jit
    def _user_layer_grad_input(X, dY):
        \"\"\"dX = FACTOR dY;  (n, k).\"\"\"
        return dY * FACTOR


    @jn.layer
    class Scale:
        \"\"\"Multiplies by a constant.\"\"\"

        kernels = jn.Kernels(_user_layer_forward, _user_layer_grad_input)
""")

USER_LAYER_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {folder!r})
    import numpy as np
    import jitnn as jn
    import user_layer
    dense = jn.Dense.init(jn.random.key(0), 3, 2, dtype=np.float64)
    model = jn.pipe(dense, user_layer.Scale())
    X, T = np.linspace(-1, 1, 12).reshape(4, 3), np.ones((4, 2))
    loss, optimizer = jn.MeanSquaredError(), jn.optim.sgd(0.1)
    step = jn.compile_step(model, loss, optimizer)
    _, _, value = step(model, optimizer.init(model), X, T)
    expected = loss.value({factor} * (X @ np.asarray(dense.W) + np.asarray(dense.b)), T)
    names = [name for name in sys.modules if name.startswith("jitnn_step_")]
    print("step", repr(value), repr(expected), step.cached, *names)
""")


def user_layer_value_bound(factor: float) -> float:
    """How far the child's step loss and its ``expected`` (the same loss kernel on NumPy's
    product) may be apart: each side's output is within ``factor`` times the Dense layer's
    bound (``tolerances.forward_bound``) and the scaling's rounding of the exact one, and the
    loss of each within ``tolerances.loss_bound`` of the exact loss."""
    dense = jn.Dense.init(jn.random.key(0), 3, 2, dtype=np.float64)
    X, T = np.linspace(-1, 1, 12).reshape(4, 3), np.ones((4, 2))
    Y, eY, _ = tolerances.forward_bound(dense, X, np.float64)
    e_scaled = factor * eY + tolerances.unit_roundoff(np.float64) * np.abs(factor * Y)
    return 2 * tolerances.loss_bound(jn.MeanSquaredError(), factor * Y, T, np.float64, e_scaled).e_value


@needs_jit
def test_a_user_layer_changed_after_its_step_was_cached_gets_a_new_step(tmp_path: Path) -> None:
    """The generated step's module is named by a fingerprint that covers the user's kernel
    file, so a changed kernel gives a new module (Numba's own index would only see that the
    generated file is unchanged)."""
    folder, cache = tmp_path / "code", tmp_path / "cache"
    folder.mkdir()
    module = folder / "user_layer.py"
    runs = []
    for factor in ("2.0", "2.0", "3.0"):
        write_changed(module, USER_LAYER.replace("FACTOR", factor))
        value, expected, cached, name = fields(finished(run_child(USER_LAYER_CHILD.format(folder=str(folder), factor=factor), cache)), "step")
        tolerances.assert_within(float(value), float(expected), user_layer_value_bound(float(factor)), "loss")
        assert cached == "True"
        runs.append((value, name))
    assert runs[0] == runs[1]  # the same source: the same step module, loaded from the cache
    assert runs[2][0] != runs[0][0] and runs[2][1] != runs[0][1]
    assert len(list((cache / "jitnn_steps").glob("jitnn_step_*.py"))) == 2


@needs_jit
def test_a_user_layer_whose_source_file_is_gone_gets_a_step_compiled_in_memory(tmp_path: Path) -> None:
    """The fingerprint cannot read the kernel's file any more: the step is not cached (its
    name could not follow the source), with a warning, and is still right."""
    folder, cache = tmp_path / "code", tmp_path / "cache"
    folder.mkdir()
    write_changed(folder / "user_layer.py", USER_LAYER.replace("FACTOR", "2.0"))
    code = USER_LAYER_CHILD.format(folder=str(folder), factor="2.0").replace(
        "import user_layer\n", "import user_layer\nimport os\nos.remove(user_layer.__file__)\n"
    )
    process = run_child(code, cache)
    value, expected, cached, _ = fields(finished(process), "step")
    tolerances.assert_within(float(value), float(expected), user_layer_value_bound(2.0), "loss")
    assert cached == "False"
    assert "RuntimeWarning: jitnn: cannot cache the compiled step" in process.stderr
    assert not (folder / "user_layer.py").exists()


@needs_jit
def test_a_kernel_without_a_source_file_is_compiled_in_memory_with_a_warning() -> None:
    namespace: dict[str, Any] = {"jit": jit}
    exec("def _reliability_triple(x):\n    return 3.0 * x\n", namespace)
    with pytest.warns(RuntimeWarning, match="jitnn: cannot cache _reliability_triple on disk"):
        kernel = jit(namespace["_reliability_triple"])
    assert kernel(2.0) == 6.0


# --------------------------------------------------------------------------- crash safety
#: Malformed calls: (what, the exception expected, the call). Each must raise the exception
#: from Python; none may crash the interpreter or succeed.
MALFORMED = [
    ("Dense.forward, wrong feature count", "ValueError", "dense.forward(np.ones((2, 5)))"),
    ("Dense.forward, 3-d input", "ValueError", "dense.forward(np.ones((2, 4, 1)))"),
    ("Dense.forward, object dtype", "TypeError", "dense.forward(np.array([[1, 'a', None, 2]], dtype=object))"),
    ("Dense.forward, complex dtype", "TypeError", "dense.forward(np.ones((2, 4), complex))"),
    ("Dense.forward, integer dtype", "TypeError", "dense.forward(np.ones((2, 4), np.int64))"),
    ("Dense.forward, empty batch", "ValueError", "dense.forward(np.ones((0, 4)))"),
    ("Dense.grad_input, dY of the wrong width", "ValueError", "dense.grad_input(np.ones((2, 4)), np.ones((2, 4)))"),
    ("Dense.grad_input, dY of the wrong batch", "ValueError", "dense.grad_input(np.ones((2, 4)), np.ones((3, 3)))"),
    ("Dense.grad_params, dY of the wrong shape", "ValueError", "dense.grad_params(np.ones((2, 4)), np.ones((2, 2)))"),
    ("Dense.init, negative size", "ValueError", "jn.Dense.init(key, -3, 2)"),
    ("Conv2D.forward, wrong channel count", "ValueError", "conv.forward(np.ones((2, 3, 5, 5)))"),
    ("Conv2D.forward, 2-d input", "ValueError", "conv.forward(np.ones((2, 25)))"),
    ("Conv2D.grad_input, dY of the wrong size", "ValueError", "conv.grad_input(np.ones((1, 1, 5, 5)), np.ones((1, 2, 4, 4)))"),
    ("Conv2D.grad_params, dY of the wrong channels", "ValueError", "conv.grad_params(np.ones((1, 1, 5, 5)), np.ones((1, 3, 5, 5)))"),
    ("Conv2D.init, negative channels", "ValueError", "jn.Conv2D.init(key, -1, 2, 3)"),
    ("Conv2D.init, zero stride", "ValueError", "jn.Conv2D.init(key, 1, 2, 3, stride=0)"),
    ("MaxPool2D.forward, image smaller than the window", "ValueError", "pool.forward(np.ones((1, 1, 1, 1)))"),
    ("MaxPool2D.grad_input, dY of the wrong size", "ValueError", "pool.grad_input(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)))"),
    ("MaxPool2D, negative window", "ValueError", "jn.MaxPool2D(-2)"),
    ("Embedding.forward, index past the vocabulary", "ValueError", "embedding.forward(np.array([[0, 5]]))"),
    ("Embedding.forward, negative index", "ValueError", "embedding.forward(np.array([[-1, 0]]))"),
    ("Embedding.forward, float indices", "TypeError", "embedding.forward(np.array([[0.5, 1.0]]))"),
    ("Embedding.grad_params, dY of the wrong width", "ValueError", "embedding.grad_params(np.array([[0, 1]]), np.ones((1, 2, 4)))"),
    ("Embedding.init, empty vocabulary", "ValueError", "jn.Embedding.init(key, 0, 3)"),
    ("BatchNorm.init, negative features", "ValueError", "jn.BatchNorm.init(None, -4)"),
    ("BatchNorm.init, NaN eps", "ValueError", "jn.BatchNorm.init(None, 4, eps=float('nan'))"),
    ("Dropout, NaN rate", "ValueError", "jn.Dropout(float('nan'))"),
    ("adam, NaN learning rate", "ValueError", "jn.optim.adam(float('nan'))"),
    ("sgd, infinite learning rate", "ValueError", "jn.optim.sgd(float('inf'))"),
    ("random.normal, negative shape", "ValueError", "jn.random.normal(key, (-1, 2))"),
    ("random.split, negative count", "ValueError", "jn.random.split(key, -2)"),
    ("train_step, label past the classes", "ValueError", "jn.train_step(mlp, sgd.init(mlp), cross_entropy, sgd, X, np.array([0, 3]))"),
    ("train_step, negative label", "ValueError", "jn.train_step(mlp, sgd.init(mlp), cross_entropy, sgd, X, np.array([0, -1]))"),
    ("train_step, empty batch", "ValueError", "jn.train_step(mlp, sgd.init(mlp), cross_entropy, sgd, X[:0], T[:0])"),
    ("fit, zero batch size", "ValueError", "jn.fit(mlp, cross_entropy, sgd, X, T, key=key, batch_size=0)"),
    ("adam.update, gradients of another tree", "ValueError", "adam.update(mlp, dense, adam.init(mlp))"),
    ("adam.update, the state of sgd", "TypeError", "adam.update(mlp, mlp, sgd.init(mlp))"),
    ("save, a leaf that is not an array", "TypeError", "jn.save(os.path.join(folder, 'bad.npz'), [1, object()])"),
    ("load, into another tree", "ValueError", "jn.load(saved, dense)"),
    ("load, a missing file", "FileNotFoundError", "jn.load(os.path.join(folder, 'missing.npz'), mlp)"),
    ("load, a checkpoint cut in half", "ValueError", "jn.load(half, mlp)"),
    ("load, a text file", "ValueError", "jn.load(text, mlp)"),
    ("load, a folder", "IsADirectoryError", "jn.load(folder, mlp)"),
    ("load_idx, truncated file", "ValueError", "jn.datasets.load_idx(truncated)"),
    ("load_idx, damaged gzip stream", "ValueError", "jn.datasets.load_idx(damaged_gzip)"),
    ("load_idx, a header declaring 2**62 bytes", "ValueError", "jn.datasets.load_idx(huge)"),
    ("load_idx, missing file", "FileNotFoundError", "jn.datasets.load_idx(os.path.join(folder, 'missing.idx'))"),
    ("load_idx, not a path", "TypeError", "jn.datasets.load_idx(3)"),
    ("compile_step, a chain holding a number", "TypeError", "jn.compile_step(jn.pipe(jn.ReLU(), 3), cross_entropy, adam)"),
    ("compile_step, not a model", "TypeError", "jn.compile_step('mlp', cross_entropy, adam)"),
    ("compiled step, the state of sgd", "TypeError", "step(mlp, sgd.init(mlp), X, T)"),
    ("compiled step, the state of momentum", "TypeError", "step(mlp, jn.optim.momentum(0.1).init(mlp), X, T)"),
    ("compiled step, wrong feature count", "ValueError", "step(mlp, adam.init(mlp), np.ones((2, 5)), T)"),
    ("compiled step, label past the classes", "ValueError", "step(mlp, adam.init(mlp), X, np.array([0, 7]))"),
    ("compiled step, another architecture", "ValueError", "step(dense, adam.init(dense), X, T)"),
    ("compiled step, object input", "TypeError", "step(mlp, adam.init(mlp), np.ones((2, 4), dtype=object), T)"),
    ("compiled step, the state of another model", "ValueError", "step(mlp, adam.init(dense), X, T)"),
    ("compiled step, labels of the wrong shape", "ValueError", "step(mlp, adam.init(mlp), X, T[:, None])"),
    ("Dense, a bias of the wrong length", "ValueError", "jn.Dense(W=np.ones((4, 3)), b=np.ones(2))"),
    ("Dense, parameters of two dtypes", "TypeError", "jn.Dense(W=np.ones((4, 3)), b=np.ones(3, np.float32))"),
    ("SoftmaxCrossEntropy, float labels", "TypeError", "cross_entropy.value(np.ones((2, 3)), np.array([0.5, 1.0]))"),
    ("fit, fewer targets than inputs", "ValueError", "jn.fit(mlp, cross_entropy, adam, np.ones((5, 4)), T, key=key)"),
]

CRASH_CHILD = textwrap.dedent("""
    import faulthandler, gzip, os, struct, sys
    faulthandler.enable()
    import numpy as np
    import jitnn as jn

    folder = sys.argv[1]
    key = jn.random.key(0)
    dense = jn.Dense.init(key, 4, 3, dtype=np.float64)
    conv = jn.Conv2D.init(key, 1, 2, 3, padding=1, dtype=np.float64)
    pool = jn.MaxPool2D(2)
    embedding = jn.Embedding.init(key, 5, 3, dtype=np.float64)
    mlp = jn.pipe(jn.Dense.init(key, 4, 8, dtype=np.float64), jn.ReLU(), jn.Dense.init(key, 8, 3, dtype=np.float64))
    X, T = np.ones((2, 4)), np.array([0, 1])
    cross_entropy, sgd, adam = jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.1), jn.optim.adam(1e-3)
    truncated = os.path.join(folder, "truncated.idx")
    with open(truncated, "wb") as file:  # declares 10 images of 28 x 28 bytes, holds 100 bytes
        file.write(bytes([0, 0, 8, 3]) + struct.pack(">III", 10, 28, 28) + bytes(100))
    with open(os.path.join(folder, "huge.idx"), "wb") as file:  # declares (2**31 - 1) ** 2 bytes
        file.write(bytes([0, 0, 8, 2]) + struct.pack(">II", 2**31 - 1, 2**31 - 1) + bytes(10))
    damaged_gzip = os.path.join(folder, "damaged.idx.gz")
    with open(damaged_gzip, "wb") as file:
        file.write(gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 100) + bytes(100))[:30])
    huge = os.path.join(folder, "huge.idx")
    saved, half, text = (os.path.join(folder, name) for name in ("mlp.npz", "half.npz", "text.npz"))
    jn.save(saved, mlp)
    with open(saved, "rb") as source, open(half, "wb") as file:
        content = source.read()
        file.write(content[: len(content) // 2])
    with open(text, "w") as file:
        file.write("not a checkpoint")
    step = jn.compile_step(mlp, cross_entropy, adam)
    step(mlp, adam.init(mlp), X, T)  # compiled, so that the bad calls below reach it
    for number, code in enumerate(sys.stdin.read().splitlines()):
        print("start", number, flush=True)
        try:
            eval(code)
        except Exception as error:
            print("raised", number, type(error).__name__, flush=True)
        else:
            print("returned", number, flush=True)
""")


def test_malformed_calls_raise_python_exceptions_and_never_crash(tmp_path: Path) -> None:
    """All calls run one after another in one child interpreter, which reports each call
    before running it: a signal (a segmentation fault in a kernel) shows as a negative
    return code, and the last call started names the culprit."""
    calls = "\n".join(code for _, _, code in MALFORMED)
    process = subprocess.run(
        [sys.executable, "-c", CRASH_CHILD, str(tmp_path)], input=calls, capture_output=True, text=True, timeout=CHILD_TIMEOUT
    )
    started = [int(line.split()[1]) for line in process.stdout.splitlines() if line.startswith("start ")]
    culprit = MALFORMED[started[-1]][0] if started else "the setup"
    assert process.returncode >= 0, f"killed by signal {-process.returncode} in {culprit}:\n{process.stderr}"
    assert process.returncode == 0, f"failed in {culprit}:\n{process.stderr}"
    outcomes = {int(words[1]): words[2] if words[0] == "raised" else "no exception" for words in map(str.split, process.stdout.splitlines()) if words[0] in ("raised", "returned")}
    assert len(outcomes) == len(MALFORMED)
    wrong = [f"{what}: expected {expected}, got {outcomes[i]}" for i, (what, expected, _) in enumerate(MALFORMED) if outcomes[i] != expected]
    assert not wrong, "\n".join(wrong)


def test_the_malformed_calls_are_many_and_distinct() -> None:
    assert len(MALFORMED) >= 25
    assert len({what for what, _, _ in MALFORMED}) == len({code for _, _, code in MALFORMED}) == len(MALFORMED)
