"""The one place where jitnn decides how kernels are compiled.

Every kernel in jitnn is made with :func:`jit`: compiled to machine code by Numba,
cached on disk (``NUMBA_CACHE_DIR`` is honoured), with the GIL released and without
``fastmath`` (which would break NaN and infinity handling). Division follows NumPy's error
model (``x / 0`` gives inf or NaN, as in NumPy) rather than Python's: Python's check for a
zero divisor on every division keeps loops from vectorizing (Adam's update ran 4.5x
slower with it, ``benchmarks/optim_update.py``). Inputs are validated before any kernel
runs, so no kernel divides by a zero that a user's mistake could produce. Where the cache
folder cannot be written, the kernel is compiled in memory instead, with a warning; a cache
file that cannot be read back (damaged, truncated, or in a folder that has gone) or written
(a full disk) costs a compilation and a warning, never the call.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable

import numba
import numpy as np
from numba import types
from numba.core.imputils import impl_ret_borrowed
from numba.core.runtime import rtsys
from numba.extending import intrinsic

__all__ = ["jit", "KERNELS", "as_readonly"]

_POLICY: dict[str, Any] = {"cache": True, "nogil": True, "error_model": "numpy"}

#: Every dispatcher made by :func:`jit`, in order of creation; the test suite uses it to
#: check that each kernel is compiled for a small, fixed number of signatures.
KERNELS: list[Any] = []


def jit(function: Callable | None = None, **options: Any) -> Any:
    """Compile ``function`` with jitnn's policy; usable as ``@jit`` or ``@jit(parallel=True)``."""
    if function is None:
        return lambda f: jit(f, **options)
    settings = {**_POLICY, **options}
    try:
        dispatcher = numba.njit(**settings)(function)
    except RuntimeError as error:  # no writable cache locator for this file
        warnings.warn(
            f"jitnn: cannot cache {function.__qualname__} on disk ({error}); "
            "compiling it in memory instead",
            RuntimeWarning,
            stacklevel=2,
        )
        dispatcher = numba.njit(**{**settings, "cache": False})(function)
    if settings["cache"]:
        _guard_cache(dispatcher)
    KERNELS.append(dispatcher)
    return dispatcher


def _guard_cache(dispatcher: Any) -> None:
    """Make a failure of ``dispatcher``'s disk cache a cache miss with a warning.

    Numba raises whatever reading an index or data file raises (``UnpicklingError`` for a
    truncated file, ``NotADirectoryError`` for a folder replaced by a file) from the call that
    loads it, and whatever writing raises (``OSError`` for a full disk) from the call that
    compiled. Here a file that cannot be loaded is compiled instead, and its index is removed
    so that the next save writes a sound one; a save that fails keeps the machine code in
    memory.
    """
    cache = getattr(dispatcher, "_cache", None)
    load, save = getattr(cache, "_load_overload", None), getattr(cache, "save_overload", None)
    guard = getattr(cache, "_guard_against_spurious_io_errors", None)
    if load is None or save is None or guard is None:
        return
    name = dispatcher.py_func.__qualname__

    def load_overload(signature: Any, target_context: Any) -> Any:
        # Numba's own load_overload refreshes the target context first, which imports
        # every typing and lowering registry (and SciPy's BLAS): about 0.8 s that loading
        # machine code does not need, beyond the runtime (NRT) it initializes. Any
        # compilation refreshes the context itself.
        try:
            rtsys.initialize(target_context)
            with guard():
                return load(signature, target_context)
        except Exception as error:
            warnings.warn(f"jitnn: cannot load {name} from the disk cache ({type(error).__name__}: {error}); compiling it again", RuntimeWarning, stacklevel=2)
            try:
                os.unlink(cache._cache_file._index_path)
            except (AttributeError, OSError):
                pass
            return None

    def save_overload(signature: Any, data: Any) -> None:
        try:
            save(signature, data)
        except Exception as error:
            warnings.warn(f"jitnn: cannot save {name} to the disk cache ({type(error).__name__}: {error}); it stays compiled in memory", RuntimeWarning, stacklevel=2)

    cache.load_overload, cache.save_overload = load_overload, save_overload


@intrinsic
def _as_readonly(typingctx: Any, array: Any) -> Any:
    """The same array, typed read-only: no copy, no change to the data."""
    if not isinstance(array, types.Array):
        return None
    result = array.copy(readonly=True)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return impl_ret_borrowed(context, builder, result, args[0])

    return result(array), codegen


def _as_readonly_view(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


#: ``as_readonly(array)`` inside compiled code: the array typed read-only. Kernels see only
#: read-only arrays, so code that hands them arrays it made itself (the compiled training
#: step) reuses the signatures the generic path compiled instead of compiling each kernel
#: again for writable arrays. Under ``NUMBA_DISABLE_JIT=1`` it is a read-only view.
as_readonly = _as_readonly_view if numba.config.DISABLE_JIT else _as_readonly
