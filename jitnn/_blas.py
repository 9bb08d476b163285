"""The BLAS behind jitnn's matrix products, and its thread count.

Kernels multiply matrices with :func:`matmul` and :func:`matmul_into`, not with Numba's
``@`` and ``np.dot``: those call SciPy's BLAS (through ``scipy.linalg.cython_blas``), while
these call the OpenBLAS that NumPy's wheels bundle, where there is one. The two are often
not the same release (NumPy 2.4.6 ships OpenBLAS 0.3.31, SciPy 1.17.1 ships 0.3.30), and on
the products of a small batch the newer one is faster: the forward product of a
784-256-128-10 MLP's first layer at batch 16 takes 60 µs instead of 77 µs on 2 cores
(``benchmarks/gemm.py``). NumPy's own products and jitnn's then also share one pool of
threads instead of two, which spin against each other after each call.

Compiled code calls the product through a symbol jitnn registers at import
(``jitnn_sgemm``/``jitnn_dgemm``, the CBLAS interface with 64-bit integers), so kernels cached
on disk never hold an address. Where NumPy has no bundled OpenBLAS (a build against another
BLAS), or ``JITNN_BLAS=scipy`` is set, the symbols name a small compiled function that calls
Numba's own product instead, that is SciPy's BLAS: every kernel works the same either way.

On a small batch, waking a second thread costs more than it saves; on a large one, all
cores pay off. ``benchmarks/threads.py`` measures the step both ways per batch size;
:func:`auto_threads` is the rule it supports. Where the BLAS in use is not OpenBLAS, the
thread count cannot be changed and the thread functions do nothing.
"""

from __future__ import annotations

import ctypes
import glob
import numbers
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, NamedTuple

import numba
import numpy as np
from numba import types
from numba.extending import overload

__all__ = [
    "matmul", "matmul_into", "library", "available", "get_threads", "set_threads", "use_threads", "threads",
    "auto_threads", "check_threads", "SMALL_BATCH",
]

#: Batches smaller than this run the step's BLAS on one thread; larger ones use every core
#: BLAS was started with. ``benchmarks/threads.py`` on 2 cores: the 784-256-128-10 MLP ties
#: at batch 1-10 and is 1.3x faster on 2 threads at 16 (1.8x at 1024); a small CNN ties at
#: every batch size. One thread below the crossover also keeps small steps from waiting on a
#: second core that other processes hold (on a loaded machine 2 threads were up to 100x slower).
SMALL_BATCH = 16


# --------------------------------------------------------------------------- the library
class Library(NamedTuple):
    """The BLAS that jitnn's products run on."""

    name: str  #: "numpy" (NumPy's bundled OpenBLAS) or "scipy" (Numba's product: SciPy's BLAS)
    path: str  #: the shared library's file, or "" where it is not known
    gemm: dict[str, int]  #: the address of the CBLAS gemm per dtype char ("f", "d"), if direct
    set_threads: Callable[[int], Any] | None
    get_threads: Callable[[], int] | None


def _load(path: str) -> Any:
    try:
        return ctypes.CDLL(path)
    except OSError:
        return None


def _thread_functions(library: Any, names: tuple[tuple[str, str], ...]) -> tuple[Any, Any]:
    for set_name, get_name in names:
        setter, getter = getattr(library, set_name, None), getattr(library, get_name, None)
        if setter is not None and getter is not None:
            setter.argtypes, setter.restype, getter.restype = [ctypes.c_int], None, ctypes.c_int
            return setter, getter
    return None, None


def _numpy_openblas() -> Library | None:
    """NumPy's bundled OpenBLAS with its 64-bit-integer CBLAS gemm, or ``None``."""
    package = os.path.dirname(np.__file__)
    candidates = sorted(glob.glob(os.path.join(os.path.dirname(package), "numpy.libs", "*openblas64*"))
                        + glob.glob(os.path.join(package, ".dylibs", "*openblas64*")))
    for path in candidates:
        library = _load(path)
        if library is None:
            continue
        for prefix in ("scipy_", ""):  # NumPy 2 wheels prefix OpenBLAS's symbols, NumPy 1.26 does not
            sgemm, dgemm = getattr(library, f"{prefix}cblas_sgemm64_", None), getattr(library, f"{prefix}cblas_dgemm64_", None)
            if sgemm is None or dgemm is None:
                continue
            gemm = {"f": ctypes.cast(sgemm, ctypes.c_void_p).value, "d": ctypes.cast(dgemm, ctypes.c_void_p).value}
            setter, getter = _thread_functions(library, ((f"{prefix}openblas_set_num_threads64_", f"{prefix}openblas_get_num_threads64_"),))
            return Library("numpy", path, gemm, setter, getter)
    return None


def _scipy_openblas() -> Library:
    """SciPy's BLAS, as Numba's own product calls it; its thread count where it is OpenBLAS."""
    setter = getter = None
    path = ""
    try:
        import scipy
    except ImportError:  # pragma: no cover - SciPy is a dependency
        return Library("scipy", path, {}, None, None)
    root = os.path.dirname(os.path.dirname(scipy.__file__))
    candidates = glob.glob(os.path.join(root, "scipy.libs", "*openblas*")) + glob.glob(os.path.join(os.path.dirname(scipy.__file__), ".dylibs", "*openblas*"))
    for candidate in candidates:
        library = _load(candidate)
        if library is None:
            continue
        setter, getter = _thread_functions(library, (("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
                                                     ("openblas_set_num_threads", "openblas_get_num_threads")))
        if setter is not None:
            path = candidate
            break
    return Library("scipy", path, {}, setter, getter)


def _choose() -> Library:
    choice = os.environ.get("JITNN_BLAS", "").strip().lower()
    if choice not in ("", "numpy", "scipy"):
        raise ValueError(f"JITNN_BLAS must be 'numpy' or 'scipy' (or unset), got {choice!r}")
    found = None if choice == "scipy" else _numpy_openblas()
    return found or _scipy_openblas()


_LIBRARY = _choose()
_FUNCTIONS = (_LIBRARY.set_threads, _LIBRARY.get_threads) if _LIBRARY.set_threads else None
_MAX = _FUNCTIONS[1]() if _FUNCTIONS else 1


def library() -> Library:
    """Which BLAS jitnn's products run on in this process (see the module's notes)."""
    return _LIBRARY


def available() -> bool:
    """Whether the BLAS thread count can be read and changed here."""
    return _FUNCTIONS is not None


def get_threads() -> int:
    """The BLAS thread count now (1 where it cannot be read)."""
    return _FUNCTIONS[1]() if _FUNCTIONS else 1


def set_threads(count: int) -> None:
    """Set the BLAS thread count (a no-op where it cannot be changed)."""
    if _FUNCTIONS:
        _FUNCTIONS[0](int(count))


def auto_threads(batch_size: int) -> int:
    """The thread count for a batch of ``batch_size`` examples: 1 below :data:`SMALL_BATCH`,
    else as many as BLAS started with."""
    return 1 if batch_size < SMALL_BATCH else _MAX


def use_threads(count: int) -> int:
    """Set the BLAS thread count to ``count`` if it differs; return the count to restore
    afterwards, or 0 when nothing changed (the compiled step's cheap form of :func:`threads`)."""
    if _FUNCTIONS is None:
        return 0
    before = _FUNCTIONS[1]()
    if before == count:
        return 0
    _FUNCTIONS[0](count)
    return before


@contextmanager
def threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` BLAS threads, then restore the count."""
    if _FUNCTIONS is None:
        yield
        return
    before = _FUNCTIONS[1]()
    if before == count:
        yield
        return
    _FUNCTIONS[0](count)
    try:
        yield
    finally:
        _FUNCTIONS[0](before)


def check_threads(value: Any, who: str) -> int | None:
    """``None`` (choose by batch size) or a positive integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{who}: threads must be None (chosen by batch size) or a positive integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- the products
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS's enumerations
_SYMBOLS = {"f": "jitnn_sgemm", "d": "jitnn_dgemm"}


def _gemm_signature(scalar: Any) -> Any:
    """CBLAS gemm with 64-bit integers: (order, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)."""
    i32, i64, pointer = types.int32, types.int64, types.voidptr
    return types.void(i32, i32, i32, i64, i64, i64, scalar, pointer, i64, pointer, i64, scalar, pointer, i64)


def _fallback_gemm(dtype: Any) -> int:
    """The address of a compiled row-major gemm that calls Numba's own product (SciPy's BLAS)."""
    scalar = numba.from_dtype(np.dtype(dtype))

    def gemm(order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):  # pragma: no cover - compiled
        A = numba.carray(a, (m, lda), dtype)[:, :k] if transa == _NO_TRANS else numba.carray(a, (k, lda), dtype)[:, :m].T
        B = numba.carray(b, (k, ldb), dtype)[:, :n] if transb == _NO_TRANS else numba.carray(b, (n, ldb), dtype)[:, :k].T
        C = numba.carray(c, (m, ldc), dtype)[:, :n]
        product = np.ascontiguousarray(A) @ np.ascontiguousarray(B)
        for i in range(m):
            for j in range(n):
                C[i, j] = alpha * product[i, j] + (beta * C[i, j] if beta != 0 else 0)

    return numba.cfunc(_gemm_signature(scalar), cache=True)(gemm).address


def _register() -> dict[str, Any]:
    """Point the gemm symbols at the library in use; the typed external functions."""
    import llvmlite.binding as llvm

    functions = {}
    for char, symbol in _SYMBOLS.items():
        scalar = numba.from_dtype(np.dtype(char))
        address = _LIBRARY.gemm.get(char) or _fallback_gemm(np.dtype(char).type)
        llvm.add_symbol(symbol, address)
        functions[char] = types.ExternalFunction(symbol, _gemm_signature(scalar))
    return functions


_GEMM = {} if numba.config.DISABLE_JIT else _register()


def matmul(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A @ B`` for 2-D float32 or float64 arrays of one dtype, as a new C-ordered array,
    through jitnn's BLAS; other arrays go to Numba's ``@``. For use inside kernels."""
    return A @ B


def matmul_into(A: np.ndarray, B: np.ndarray, out: np.ndarray, accumulate: bool = False) -> None:
    """``out[...] = A @ B``, or ``out += A @ B`` with ``accumulate``, in one BLAS call where
    ``out`` is C-ordered and of the operands' dtype. For use inside kernels."""
    if accumulate:
        out += A @ B
    else:
        out[...] = A @ B


def _direct(*arrays: Any) -> Any:
    """The gemm for these array types, or ``None`` where the product is not a plain 2-D
    float32/float64 one."""
    if not all(isinstance(a, types.Array) and a.ndim == 2 for a in arrays):
        return None
    dtype = arrays[0].dtype
    if dtype not in (types.float32, types.float64) or any(a.dtype != dtype for a in arrays):
        return None
    return _GEMM[np.dtype(str(dtype)).char]


def _operand(array: Any) -> tuple[int, bool]:
    """(transpose flag, whether the leading dimension is the second axis) for a C or F array."""
    return (_NO_TRANS, True) if array.layout == "C" else (_TRANS, False)


@overload(matmul, jit_options={"error_model": "numpy"})
def _matmul(A, B):  # type: ignore[no-untyped-def]  # Numba compares the parameters with impl's
    gemm = _direct(A, B)
    if gemm is None:
        return lambda A, B: A @ B
    if A.layout not in "CF" or B.layout not in "CF":  # strided views: one contiguous copy
        return lambda A, B: matmul(np.ascontiguousarray(A), np.ascontiguousarray(B))

    def impl(A, B):  # pragma: no cover - compiled
        out = np.empty((A.shape[0], B.shape[1]), A.dtype)
        matmul_into(A, B, out)
        return out

    return impl


@overload(matmul_into, jit_options={"error_model": "numpy"})
def _matmul_into(A, B, out, accumulate=False):  # type: ignore[no-untyped-def]
    gemm = _direct(A, B, out)
    if gemm is None or out.layout != "C":
        def through_numba(A, B, out, accumulate=False):  # pragma: no cover - compiled
            if accumulate:
                out += A @ B
            else:
                out[...] = A @ B
        return through_numba
    if A.layout not in "CF" or B.layout not in "CF":
        return lambda A, B, out, accumulate=False: matmul_into(np.ascontiguousarray(A), np.ascontiguousarray(B), out, accumulate)
    trans_a, a_rows = _operand(A)
    trans_b, b_rows = _operand(B)
    one, zero = (np.dtype(str(A.dtype)).type(v) for v in (1, 0))

    def impl(A, B, out, accumulate=False):  # pragma: no cover - compiled
        m, k = A.shape
        n = B.shape[1]
        if B.shape[0] != k or out.shape[0] != m or out.shape[1] != n:
            raise ValueError("matmul: the shapes of A, B and out do not match")
        if m == 0 or n == 0:
            return
        if k == 0:
            if not accumulate:
                out[...] = 0
            return
        lda = A.shape[1] if a_rows else A.shape[0]
        ldb = B.shape[1] if b_rows else B.shape[0]
        gemm(_ROW_MAJOR, trans_a, trans_b, m, n, k, one, A.ctypes.data, lda, B.ctypes.data, ldb,
             one if accumulate else zero, out.ctypes.data, n)

    return impl
