"""The number of threads of the BLAS that kernels call.

Numba's ``np.dot`` and ``@`` call SciPy's BLAS (OpenBLAS in SciPy's wheels). On a small
batch, waking a second thread costs more than it saves; on a large one, all cores pay off.
``benchmarks/threads.py`` measures the step both ways per batch size; :func:`auto_threads`
is the rule it supports. Where SciPy's BLAS is not OpenBLAS (or cannot be found), the
thread count cannot be changed and these functions do nothing.
"""

from __future__ import annotations

import ctypes
import glob
import numbers
import os
from contextlib import contextmanager
from typing import Any, Iterator

__all__ = ["available", "get_threads", "set_threads", "use_threads", "threads", "auto_threads", "check_threads", "SMALL_BATCH"]

#: Batches smaller than this run the step's BLAS on one thread; larger ones use every core
#: BLAS was started with. ``benchmarks/threads.py`` on 2 cores: the 784-256-128-10 MLP ties
#: at batch 1-10 and is 1.3x faster on 2 threads at 16 (1.8x at 1024); a small CNN ties at
#: every batch size. One thread below the crossover also keeps small steps from waiting on a
#: second core that other processes hold (on a loaded machine 2 threads were up to 100x slower).
SMALL_BATCH = 16


def _find() -> tuple[Any, Any] | None:
    """The setter and getter of SciPy's OpenBLAS thread count, or ``None``."""
    try:
        import scipy
    except ImportError:  # pragma: no cover - SciPy is a dependency
        return None
    root = os.path.dirname(os.path.dirname(scipy.__file__))
    candidates = glob.glob(os.path.join(root, "scipy.libs", "*openblas*")) + glob.glob(os.path.join(os.path.dirname(scipy.__file__), ".dylibs", "*openblas*"))
    for path in candidates:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            setter, getter = getattr(library, f"{prefix}_set_num_threads", None), getattr(library, f"{prefix}_get_num_threads", None)
            if setter is not None and getter is not None:
                getter.restype = ctypes.c_int
                setter.argtypes = [ctypes.c_int]
                return setter, getter
    return None


_FUNCTIONS = _find()
_MAX = _FUNCTIONS[1]() if _FUNCTIONS else 1


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
