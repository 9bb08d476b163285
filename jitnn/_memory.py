"""Keeping freed memory for the next training step.

A training step allocates the same arrays every time (activations, gradients, new
parameters) and frees them when the next step replaces them. glibc's malloc adapts its
thresholds as it goes: blocks above a moving threshold are mapped fresh from the kernel, and
free memory at the top of the heap above another threshold is handed back. For the step's
pattern of allocations it keeps doing both, so every step pays a page fault for each 4 KiB
it writes: for the 784-256-128-10 MLP, 360 faults a step at batch 1 (617 µs instead of
79 µs) and 600-1,000 at batch 1024 (7.3-8.1 ms instead of 5.8 ms).

Fixing the two thresholds (which also stops glibc adapting them) makes malloc hand the step
the blocks the previous step freed, so the arrays are allocated once per batch shape and
then reused, with no page faults. The settings are process-wide: freed blocks below
``MMAP_THRESHOLD`` stay in the heap, and up to ``TRIM_THRESHOLD`` of free memory is kept
rather than returned to the system. The first :func:`jitnn.compile_step`, :func:`jitnn.forward`,
:func:`jitnn.backward` or :func:`jitnn.value_and_grad` of a process applies them (the
generic path has the same pattern: ``benchmarks/conv_step.py`` measured 2,673 faults a step
and twice the time without them); set ``JITNN_MALLOC_TUNING=0`` in the environment to leave
malloc alone. Elsewhere
than glibc (macOS, musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

#: Blocks smaller than this come from the heap, not from fresh mappings (glibc's own
#: ceiling for its adaptive threshold on 64-bit systems).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of the heap is returned to the system only above this.
TRIM_THRESHOLD = 256 << 20

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's <malloc.h>
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Fix glibc malloc's mmap and trim thresholds, once per process; return whether they
    are in effect (``False`` with ``JITNN_MALLOC_TUNING=0``, or without glibc)."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get("JITNN_MALLOC_TUNING", "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
