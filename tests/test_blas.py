"""The matrix products of jitnn's kernels (``jitnn._blas.matmul`` and ``matmul_into``) and
the choice of BLAS behind them.

Each product is compared with NumPy's ``@`` for every memory layout a kernel hands it (C
order, a transposed view, a strided view), both float dtypes, empty and single-row or
single-column shapes. Child processes show that ``JITNN_BLAS=scipy`` (Numba's own product,
SciPy's BLAS) gives the same layers' results as the default, that the two share one on-disk
cache, and that an unknown ``JITNN_BLAS`` is refused at import.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import tolerances
from jitnn import _blas
from jitnn._blas import matmul, matmul_into
from jitnn._jit import jit


def reference_bound(A: np.ndarray, B: np.ndarray, dtype: Any, C: Any = None) -> np.ndarray:
    """How far ``A @ B`` (plus ``C``) computed in ``dtype`` in any order may be from the float64
    product: ``gamma(K) (|A| |B| + |C|)`` in ``dtype`` for ours and in float64 for the
    reference's, ``K`` the products (and ``C``) summed into each element."""
    A64, B64 = tolerances.absolute(A, B)
    magnitude = A64 @ B64 + (0 if C is None else np.abs(C))
    terms = A.shape[1] + (C is not None)
    return (tolerances.gamma(terms, dtype) + tolerances.gamma(terms, np.float64)) * magnitude


@jit(cache=False)
def compiled_matmul(A, B):
    return matmul(A, B)


@jit(cache=False)
def compiled_matmul_into(A, B, out, accumulate):
    matmul_into(A, B, out, accumulate)


def layouts(M: np.ndarray) -> dict[str, np.ndarray]:
    """The same matrix as a C array, a transposed view (F order) and a strided view."""
    strided = np.zeros((M.shape[0] * 2, M.shape[1] * 3), M.dtype)[::2, ::3]
    strided[...] = M
    return {"C": np.ascontiguousarray(M), "F": np.asfortranarray(M), "strided": strided}


#: (m, k, n): a general product, a row times a matrix and a matrix times a column (gemv),
#: a dot product, an outer product (k = 1) and a larger one
SHAPES = [(3, 4, 5), (1, 7, 6), (6, 7, 1), (1, 5, 1), (5, 1, 4), (16, 33, 9)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n", SHAPES)
@pytest.mark.parametrize("product", [compiled_matmul, matmul], ids=["compiled", "python"])
def test_matmul_agrees_with_numpy_for_every_layout(product: Callable, dtype: Any, m: int, k: int, n: int) -> None:
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    A, B = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    expected = A.astype(np.float64) @ B.astype(np.float64)
    bound = reference_bound(A, B, dtype)
    for a_name, a in layouts(A).items():
        for b_name, b in layouts(B).items():
            got = product(a, b)
            assert got.shape == (m, n) and got.dtype == dtype and got.flags.c_contiguous, (a_name, b_name)
            tolerances.assert_within(got, expected, bound, f"A {a_name}, B {b_name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n", [(0, 3, 4), (3, 0, 4), (3, 4, 0)])
def test_matmul_of_empty_matrices_is_empty_or_zero(dtype: Any, m: int, k: int, n: int) -> None:
    got = compiled_matmul(np.ones((m, k), dtype), np.ones((k, n), dtype))
    assert got.shape == (m, n) and got.dtype == dtype
    assert not got.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("accumulate", [False, True])
def test_matmul_into_overwrites_or_adds(dtype: Any, accumulate: bool) -> None:
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((4, 6)).astype(dtype), rng.standard_normal((6, 5)).astype(dtype)
    start = rng.standard_normal((4, 5)).astype(dtype)
    for a in layouts(A).values():
        out = start.copy()
        compiled_matmul_into(a, B.T.copy().T, out, accumulate)
        expected = A.astype(np.float64) @ B.astype(np.float64) + (start if accumulate else 0)
        tolerances.assert_within(out, expected, reference_bound(A, B, dtype, start if accumulate else None))


def test_matmul_into_ignores_what_a_fresh_output_held() -> None:
    """Overwriting must not read the old contents: NaN there must not leak into the result."""
    A, B = np.eye(3, dtype=np.float32), np.full((3, 2), 2.0, np.float32)
    out = np.full((3, 2), np.nan, np.float32)
    compiled_matmul_into(A, B, out, False)
    np.testing.assert_array_equal(out, np.full((3, 2), 2.0, np.float32))


def test_matmul_into_an_output_that_is_not_c_ordered() -> None:
    A, B = np.arange(6.0).reshape(2, 3), np.arange(12.0).reshape(3, 4)
    out = np.zeros((4, 2)).T  # F order
    compiled_matmul_into(A, B, out, False)
    np.testing.assert_array_equal(out, A @ B)


@pytest.mark.parametrize("shapes", [((2, 3), (4, 5), (2, 5)), ((2, 3), (3, 5), (2, 4)), ((2, 3), (3, 5), (3, 5))])
def test_matmul_into_refuses_shapes_that_do_not_match(shapes: tuple) -> None:
    A, B, out = (np.ones(shape) for shape in shapes)
    with pytest.raises(ValueError, match="shapes"):
        compiled_matmul_into(A, B, out, False)


def test_matmul_refuses_inner_dimensions_that_differ() -> None:
    with pytest.raises(ValueError):
        compiled_matmul(np.ones((2, 3)), np.ones((4, 5)))


def test_the_library_in_use_is_described() -> None:
    library = _blas.library()
    assert library.name in ("numpy", "scipy")
    if library.name == "numpy":
        assert set(library.routines) == {(routine, char) for routine in ("gemm", "gemv") for char in "fd"}
        assert all(library.routines.values())
        assert Path(library.path).is_file()
    assert _blas.available() == (library.set_threads is not None)


# --------------------------------------------------------------------------- child processes
CHILD_TIMEOUT = 600

#: The models, inputs, losses and targets of the child processes (also built here, for the bounds).
CASES = textwrap.dedent("""
    import numpy as np, jitnn as jn


    def cases():
        key = jn.random.key(3)
        for dtype in (np.float32, np.float64):
            k = jn.random.split(key, 4)
            mlp = jn.pipe(jn.Dense.init(k[0], 12, 9, dtype=dtype), jn.ReLU(), jn.Dense.init(k[1], 9, 4, dtype=dtype))
            cnn = jn.pipe(jn.Conv2D.init(k[2], 2, 3, 3, dtype=dtype), jn.ReLU(), jn.Flatten(), jn.Dense.init(k[3], 3 * 4 * 4, 4, dtype=dtype))
            single = jn.Dense.init(k[3], 12, 1, dtype=dtype)  # one example, one output: matrix-vector products
            yield f"mlp-{np.dtype(dtype).name}", dtype, mlp, jn.random.normal(k[0], (5, 12), dtype=dtype), jn.SoftmaxCrossEntropy(), np.arange(5) % 4
            yield f"cnn-{np.dtype(dtype).name}", dtype, cnn, jn.random.normal(k[1], (5, 2, 6, 6), dtype=dtype), jn.SoftmaxCrossEntropy(), np.arange(5) % 4
            yield f"single-{np.dtype(dtype).name}", dtype, single, jn.random.normal(k[2], (1, 12), dtype=dtype), jn.MeanSquaredError(), np.ones((1, 1), dtype)
""")

LAYERS = CASES + textwrap.dedent("""
    from jitnn import _blas
    print("library", _blas.library().name)
    for name, dtype, model, X, loss, T in cases():
        value, grads = jn.value_and_grad(model, loss, X, T)
        flat = np.concatenate([np.ravel(leaf) for leaf in jn.tree.leaves(grads)] + [model.forward(X).ravel()])
        np.save(f"{name}.npy", flat)
        print("value", name, repr(float(value)))
""")


def layers_bounds() -> dict[str, np.ndarray]:
    """For each case of CASES, how far two BLAS libraries' gradients and outputs (flattened as
    the child saves them) may be apart: each library's within the bound of
    ``tolerances.value_and_grad_bound`` (and ``forward_bound``) of the exact answer, so the two
    within twice that."""
    namespace: dict[str, Any] = {}
    exec(CASES, namespace)
    bounds = {}
    for name, dtype, model, X, loss, T in namespace["cases"]():
        grads = tolerances.value_and_grad_bound(model, loss, X, T, dtype)
        _, eY, _ = tolerances.forward_bound(model, X, dtype)
        bounds[name] = 2 * np.concatenate([np.ravel(e) for e in grads.egrads] + [eY.ravel()])
    return bounds


def run_child(code: str, folder: Path, cache: Path, **env: str) -> str:
    environment = {name: value for name, value in os.environ.items() if name != "JITNN_BLAS"}
    environment.update(NUMBA_CACHE_DIR=str(cache), **env)
    process = subprocess.run([sys.executable, "-c", code], cwd=folder, env=environment, capture_output=True, text=True,
                             timeout=CHILD_TIMEOUT)
    assert process.returncode == 0, process.stderr
    return process.stdout


def test_scipy_blas_gives_the_same_layers_and_shares_the_cache(tmp_path: Path) -> None:
    """The default BLAS, then JITNN_BLAS=scipy, then the default again, on ONE cache folder:
    the same values and gradients each time (to rounding), so cached kernels never hold the
    address of a library."""
    cache = tmp_path / "cache"
    runs = {}
    for run, env in (("first", {}), ("scipy", {"JITNN_BLAS": "scipy"}), ("again", {})):
        folder = tmp_path / run
        folder.mkdir()
        stdout = run_child(LAYERS, folder, cache, **env)
        runs[run] = folder
        if run == "scipy":
            assert "library scipy" in stdout
    bounds = layers_bounds()
    assert sorted(bounds) == sorted(f"{model}-{dtype}" for model in ("mlp", "cnn", "single") for dtype in ("float32", "float64"))
    for name, bound in bounds.items():
        first, scipy, again = (np.load(runs[run] / f"{name}.npy") for run in ("first", "scipy", "again"))
        np.testing.assert_array_equal(first, again, err_msg=name)  # same library, same bits
        tolerances.assert_within(scipy, first, bound, name)


def test_an_unknown_blas_choice_is_refused_at_import(tmp_path: Path) -> None:
    environment = {**os.environ, "JITNN_BLAS": "mkl", "NUMBA_CACHE_DIR": str(tmp_path)}
    process = subprocess.run([sys.executable, "-c", "import jitnn"], env=environment, capture_output=True, text=True,
                             timeout=CHILD_TIMEOUT)
    assert process.returncode != 0
    assert "JITNN_BLAS must be 'numpy' or 'scipy'" in process.stderr
