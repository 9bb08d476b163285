"""The BLAS behind jitnn's matrix products, and its thread count.

Kernels multiply matrices with :func:`matmul` and :func:`matmul_into`, not with Numba's
``@`` and ``np.dot``: those call SciPy's BLAS (through ``scipy.linalg.cython_blas``), while
these call the OpenBLAS that NumPy's wheels bundle, where there is one. The two are often
not the same release (NumPy 2.4.6 ships OpenBLAS 0.3.31, SciPy 1.17.1 ships 0.3.30), and on
the products of a small batch the newer one is faster: the forward product of a
784-256-128-10 MLP's first layer at batch 16 takes 57 µs instead of 77 µs on 2 cores
(``benchmarks/gemm.py``). NumPy's own products and jitnn's then also share one pool of
threads instead of two, which spin against each other after each call.

Compiled code calls the library through symbols jitnn registers at import (``jitnn_sgemm``,
``jitnn_dgemv`` and so on: CBLAS's gemm, and gemv for a single row or column, with 64-bit
integers), so kernels cached on disk never hold an address. Where NumPy has no bundled OpenBLAS (a build against another
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
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, NamedTuple

import numba
import numpy as np
from numba import types
from numba.extending import overload

from jitnn import validate
from jitnn._jit import jit

__all__ = [
    "matmul", "matmul_into", "outer_sum", "library", "available", "get_threads", "set_threads", "use_threads", "threads",
    "auto_threads", "check_threads", "SMALL_BATCH",
]

#: Batches smaller than this run the step's BLAS on one thread; larger ones use every core
#: BLAS was started with. ``benchmarks/threads.py`` on 2 cores, with NumPy's OpenBLAS: the
#: 784-256-128-10 MLP ties at batch 1-4 and is 1.17x faster on 2 threads at 8 (1.28x at 16,
#: 1.61x at 64); a small CNN ties at every size up to 256. One thread below the crossover
#: also keeps small steps from waiting on a second core that other processes hold (on a
#: loaded machine 2 threads were up to 100x slower).
SMALL_BATCH = 8


# --------------------------------------------------------------------------- the library
_ROUTINES = ("gemm", "gemv")  # the BLAS routines jitnn calls


class Library(NamedTuple):
    """The BLAS that jitnn's products run on."""

    name: str  #: "numpy" (NumPy's bundled OpenBLAS) or "scipy" (Numba's product: SciPy's BLAS)
    path: str  #: the shared library's file, or "" where it is not known
    #: the addresses of its CBLAS gemm and gemv by (routine, dtype char), for example
    #: ("gemm", "f"); empty where the products go through Numba's own (SciPy's BLAS)
    routines: dict[tuple[str, str], int]
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
            functions = {(routine, char): getattr(library, f"{prefix}cblas_{'s' if char == 'f' else 'd'}{routine}64_", None)
                         for routine in _ROUTINES for char in "fd"}
            if None in functions.values():
                continue
            routines = {name: ctypes.cast(function, ctypes.c_void_p).value for name, function in functions.items()}
            setter, getter = _thread_functions(library, ((f"{prefix}openblas_set_num_threads64_", f"{prefix}openblas_get_num_threads64_"),))
            return Library("numpy", path, routines, setter, getter)
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
    return validate.optional(value, who, "threads", check=validate.positive_int, none_means="chosen by batch size")


# --------------------------------------------------------------------------- the products
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS's enumerations
def _signature(routine: str, scalar: Any) -> Any:
    """CBLAS's gemm and gemv with 64-bit integers:
    gemm(order, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc) and
    gemv(order, trans, m, n, alpha, A, lda, x, incx, beta, y, incy)."""
    i32, i64, pointer = types.int32, types.int64, types.voidptr
    if routine == "gemm":
        return types.void(i32, i32, i32, i64, i64, i64, scalar, pointer, i64, pointer, i64, scalar, pointer, i64)
    return types.void(i32, i32, i64, i64, scalar, pointer, i64, pointer, i64, scalar, pointer, i64)


def _fallback(routine: str, dtype: Any) -> int:
    """The address of a compiled row-major ``routine`` that calls Numba's own product
    (SciPy's BLAS) instead of a library's: what the symbols name where NumPy has no
    bundled OpenBLAS."""

    def gemm(order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):  # pragma: no cover - compiled
        A = numba.carray(a, (m, lda), dtype)[:, :k] if transa == _NO_TRANS else numba.carray(a, (k, lda), dtype)[:, :m].T
        B = numba.carray(b, (k, ldb), dtype)[:, :n] if transb == _NO_TRANS else numba.carray(b, (n, ldb), dtype)[:, :k].T
        C = numba.carray(c, (m, ldc), dtype)
        product = np.ascontiguousarray(A) @ np.ascontiguousarray(B)
        for i in range(m):
            for j in range(n):
                C[i, j] = alpha * product[i, j] + (beta * C[i, j] if beta != 0 else 0)

    def gemv(order, trans, m, n, alpha, a, lda, x, incx, beta, y, incy):  # pragma: no cover - compiled
        A = numba.carray(a, (m, lda), dtype)[:, :n]
        if trans != _NO_TRANS:
            A = A.T
        rows, length = A.shape
        vector = numba.carray(x, ((length - 1) * incx + 1,), dtype)[::incx]
        out = numba.carray(y, ((rows - 1) * incy + 1,), dtype)[::incy]
        product = np.ascontiguousarray(A) @ np.ascontiguousarray(vector)
        for i in range(rows):
            out[i] = alpha * product[i] + (beta * out[i] if beta != 0 else 0)

    signature = _signature(routine, numba.from_dtype(np.dtype(dtype)))
    return numba.cfunc(signature, cache=True)(gemm if routine == "gemm" else gemv).address


def _register() -> dict[tuple[str, str], Any]:
    """Point jitnn's BLAS symbols at the library in use; the typed external functions, by
    (routine, dtype char)."""
    import llvmlite.binding as llvm

    functions = {}
    for routine in _ROUTINES:
        for char in "fd":
            symbol = f"jitnn_{'s' if char == 'f' else 'd'}{routine}"
            address = _LIBRARY.routines.get((routine, char)) or _fallback(routine, np.dtype(char).type)
            llvm.add_symbol(symbol, address)
            functions[routine, char] = types.ExternalFunction(symbol, _signature(routine, numba.from_dtype(np.dtype(char))))
    return functions


_ROUTINE = {} if numba.config.DISABLE_JIT else _register()


_SHAPES = "matmul: the shapes of A, B and out do not match"


def matmul(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A @ B`` for 2-D float32 or float64 arrays of one dtype, as a new C-ordered array,
    through jitnn's BLAS; other arrays go to Numba's ``@``. For use inside kernels (this
    Python body runs under ``NUMBA_DISABLE_JIT=1``)."""
    if A.shape[1] != B.shape[0]:
        raise ValueError(_SHAPES)
    return A @ B


def matmul_into(A: np.ndarray, B: np.ndarray, out: np.ndarray, accumulate: bool = False) -> None:
    """``out[...] = A @ B``, or ``out += A @ B`` with ``accumulate``, in one BLAS call where
    ``out`` is C-ordered and of the operands' dtype. For use inside kernels."""
    if A.shape[1] != B.shape[0] or out.shape != (A.shape[0], B.shape[1]):
        raise ValueError(_SHAPES)
    if accumulate:
        out += A @ B
    else:
        out[...] = A @ B


@jit
def outer_sum(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A.T @ B`` (``A`` (k, m), ``B`` (k, n)): the sum of the rows' outer products, a new
    C-ordered ``(m, n)`` array, as a weight gradient ``X.T @ dY``. For use inside kernels.

    At one row (``k = 1``) it is the outer product itself, written as a loop: each element
    is the one rounded product ``A[0, i] * B[0, j]``, the same expression that an optimizer
    forms on the fly from the factors (``jitnn.optim._base.gradient_at``), so that a layer's
    factored gradient and its stored one give the same bits (BLAS would add the product to
    a zero, which turns a ``-0.0`` into ``0.0``). Otherwise one product through :func:`matmul`.
    """
    if A.shape[0] != 1 or B.shape[0] != 1:
        return matmul(A.T, B)
    out = np.empty((A.shape[1], B.shape[1]), A.dtype)
    for i in range(A.shape[1]):
        a = A[0, i]
        for j in range(B.shape[1]):
            out[i, j] = a * B[0, j]
    return out


@jit(inline="always")
def beside_bias(W: np.ndarray, b: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``[W b]`` (rows, columns + 1) in ``like``'s dtype: a weight matrix with its bias as one
    more column, for one product with ``[X; ones]``. For use inside kernels. Written as loops
    rather than slice assignments, which would compile Numba's formatted shape-mismatch
    error (a few seconds of a cold first run, for a check that cannot fail here)."""
    rows, columns = W.shape
    weights = np.empty((rows, columns + 1), like.dtype)
    for r in range(rows):
        for c in range(columns):
            weights[r, c] = W[r, c]
        weights[r, columns] = b[r]
    return weights


def _direct(*arrays: Any) -> Any:
    """The (gemm, gemv) pair for these array types, or ``None`` where the product is not a
    plain 2-D float32/float64 one."""
    if not all(isinstance(a, types.Array) and a.ndim == 2 for a in arrays):
        return None
    dtype = arrays[0].dtype
    if dtype not in (types.float32, types.float64) or any(a.dtype != dtype for a in arrays):
        return None
    char = np.dtype(str(dtype)).char
    return _ROUTINE["gemm", char], _ROUTINE["gemv", char]


def _operand(array: Any) -> tuple[int, bool]:
    """(transpose flag, whether the leading dimension is the second axis) for a C or F array."""
    return (_NO_TRANS, True) if array.layout == "C" else (_TRANS, False)


@overload(matmul, jit_options={"error_model": "numpy"})
def _matmul(A, B):  # type: ignore[no-untyped-def]  # Numba compares the parameters with impl's
    if _direct(A, B) is None:
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
    routines = _direct(A, B, out)
    if routines is None or out.layout != "C":
        def through_numba(A, B, out, accumulate=False):  # pragma: no cover - compiled
            if accumulate:
                out += A @ B
            else:
                out[...] = A @ B
        return through_numba
    if A.layout not in "CF" or B.layout not in "CF":
        return lambda A, B, out, accumulate=False: matmul_into(np.ascontiguousarray(A), np.ascontiguousarray(B), out, accumulate)
    gemm, gemv = routines
    trans_a, a_rows = _operand(A)
    trans_b, b_rows = _operand(B)
    one, zero = (np.dtype(str(A.dtype)).type(v) for v in (1, 0))

    def impl(A, B, out, accumulate=False):  # pragma: no cover - compiled
        m, k = A.shape
        n = B.shape[1]
        if B.shape[0] != k or out.shape[0] != m or out.shape[1] != n:
            raise ValueError(_SHAPES)
        if m == 0 or n == 0:
            return
        if k == 0:
            if not accumulate:
                out[...] = 0
            return
        lda = A.shape[1] if a_rows else A.shape[0]
        ldb = B.shape[1] if b_rows else B.shape[0]
        beta = one if accumulate else zero
        if m == 1:  # a row times a matrix: out = op(B).T @ a, one matrix-vector product
            gemv(_ROW_MAJOR, _TRANS if b_rows else _NO_TRANS, k if b_rows else n, n if b_rows else k, one,
                 B.ctypes.data, ldb, A.ctypes.data, 1, beta, out.ctypes.data, 1)
        elif n == 1:  # a matrix times a column
            gemv(_ROW_MAJOR, _NO_TRANS if a_rows else _TRANS, m if a_rows else k, k if a_rows else m, one,
                 A.ctypes.data, lda, B.ctypes.data, 1, beta, out.ctypes.data, 1)
        else:
            gemm(_ROW_MAJOR, trans_a, trans_b, m, n, k, one, A.ctypes.data, lda, B.ctypes.data, ldb,
                 beta, out.ctypes.data, n)

    return impl
