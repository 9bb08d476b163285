"""Validation shared by every public entry point.

Kernels never check anything (Numba does not check bounds), so every array is checked
here, in Python, before a kernel sees it. Errors name the layer or loss, where it sits in
the model, and the expected and actual shape or dtype.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from jitnn._jit import jit

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def describe(obj: Any, where: str = "") -> str:
    """Name an object for an error message: ``'Dense'`` or ``'Dense at model.layers[2]'``."""
    name = type(obj).__name__
    return f"{name} at model{where}" if where else name


def readonly(array: np.ndarray) -> np.ndarray:
    """A read-only view of ``array``: every array a kernel sees is read-only, so each kernel
    compiles once per dtype instead of once per combination of writable and read-only."""
    if not array.flags.writeable:
        return array
    view = array.view()
    view.flags.writeable = False
    return view


def freeze(array: np.ndarray) -> np.ndarray:
    """Mark a fresh array that nobody else holds (a kernel's output) read-only, in place."""
    array.flags.writeable = False
    return array


def check_float_dtype(dtype: Any, who: str) -> np.dtype:
    """Return ``dtype`` as a NumPy dtype if it is float32 or float64, else raise TypeError."""
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{who}: dtype must be float32 or float64, got {dtype!r}") from None
    if resolved not in FLOAT_DTYPES:
        raise TypeError(f"{who}: dtype must be float32 or float64, got {resolved}")
    return resolved


def float_input(X: Any, dtype: np.dtype | None, who: str, name: str = "input") -> np.ndarray:
    """Check and convert data at a model's boundary.

    Floating-point data of another dtype or layout is converted once, to ``dtype`` (the
    parameters' dtype) and C order; integer, boolean, complex and object data is refused,
    as are scalars and empty batches.
    """
    array = X if isinstance(X, np.ndarray) else _as_array(X, who, name)
    if array.dtype.kind != "f":
        raise TypeError(
            f"{who}: {name} must hold floating-point numbers, got dtype {array.dtype}; "
            f"convert it first, for example with .astype(np.float32)"
        )
    if array.ndim == 0:
        raise ValueError(f"{who}: {name} must be an array whose first axis is the batch, got a scalar")
    if array.shape[0] == 0:
        raise ValueError(f"{who}: {name} is an empty batch (shape {array.shape}); give at least one example")
    if dtype is None:
        dtype = array.dtype if array.dtype in FLOAT_DTYPES else _nearest_float(array.dtype)
    return np.ascontiguousarray(array, dtype=dtype)


#: Up to this many labels, :func:`integer_labels` finds their range in Python.
_FEW_LABELS = 16


def integer_labels(T: Any, shape: int | tuple[int, ...], n_classes: int, who: str, ignore: int | None = None) -> np.ndarray:
    """Check class labels: integers of any dtype, of ``shape`` (``(n,)`` for an int ``n``:
    one label per example; ``(n, length)`` for a sequence's positions), each in ``[0,
    n_classes)`` or equal to ``ignore`` (a label that marks a position to leave out)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    labels = T if isinstance(T, np.ndarray) else _as_array(T, who, "labels")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{who}: labels must be integers (class indices), got dtype {labels.dtype}")
    if labels.shape != shape:
        raise ValueError(f"{who}: labels must have shape {shape} to match the predictions, got {labels.shape}")
    if labels.dtype == np.uint64 and labels.size and int(labels.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{who}: label {int(labels.max())} is out of range for {n_classes} classes (labels must lie in [0, {n_classes}))")
    converted = np.ascontiguousarray(labels, dtype=np.int64)
    counted = converted.reshape(-1) if ignore is None else converted[converted != ignore]
    if counted.size <= _FEW_LABELS:  # a few labels: Python's min and max cost less than a kernel call
        values = counted.tolist()
        low, high = (min(values), max(values)) if values else (0, 0)
    else:
        low, high = _bounds(readonly(counted))
    if low < 0 or high >= n_classes:
        bad = low if low < 0 else high
        besides = "" if ignore is None else f", or be the ignored label {ignore}"
        raise ValueError(f"{who}: label {bad} is out of range for {n_classes} classes (labels must lie in [0, {n_classes}){besides})")
    return converted


def float_targets(T: Any, shape: tuple[int, ...], dtype: np.dtype, who: str) -> np.ndarray:
    """Check real-valued targets: floating-point or integer, the same shape as the predictions."""
    targets = T if isinstance(T, np.ndarray) else _as_array(T, who, "targets")
    if targets.dtype.kind not in "fiub":
        raise TypeError(f"{who}: targets must be real numbers, got dtype {targets.dtype}")
    if targets.shape != shape:
        raise ValueError(f"{who}: targets must have the predictions' shape {shape}, got {targets.shape}")
    return np.ascontiguousarray(targets, dtype=dtype)


def sample_weights(weights: Any, n: int, who: str) -> np.ndarray:
    """Per-example weights for a batch of ``n`` examples, as the loss kernels take them: a
    read-only float64 array ``(n,)`` of finite, non-negative numbers (scikit-learn's
    ``sample_weight``); ``None`` gives weights of 1 (one shared array per ``n``)."""
    if weights is None:
        return _ones(n)
    array = weights if isinstance(weights, np.ndarray) else _as_array(weights, who, "sample_weight")
    if array.dtype.kind not in "fiub":
        raise TypeError(f"{who}: sample_weight must be real numbers, got dtype {array.dtype}")
    if array.shape != (n,):
        raise ValueError(f"{who}: sample_weight must have one weight per example, shape ({n},), got {array.shape}")
    array = np.ascontiguousarray(array, dtype=np.float64)
    if n and not (np.isfinite(array).all() and array.min() >= 0.0):
        bad = array[~(np.isfinite(array) & (array >= 0.0))][0]
        raise ValueError(f"{who}: sample_weight must be finite and non-negative, got {bad}")
    return readonly(array)


@functools.lru_cache(maxsize=64)
def _ones(n: int) -> np.ndarray:
    return freeze(np.ones(n))


def _as_array(value: Any, who: str, name: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{who}: {name} cannot be read as an array ({error})") from None


def _nearest_float(dtype: np.dtype) -> np.dtype:
    return FLOAT_DTYPES[0] if dtype.itemsize <= 4 else FLOAT_DTYPES[1]


#: What :func:`require_gradient_shape` raises; the compiled step's wrapper recognises it and
#: names the layer.
WRONG_GRADIENT_SHAPE = "a grad_params kernel returned a gradient of the wrong shape"


@jit
def require_gradient_shape(same):
    """Raise ``ValueError(WRONG_GRADIENT_SHAPE)`` unless ``same``: the compiled step's check
    that a parameter's gradient has the parameter's shape (the optimizer would read out of
    bounds otherwise). One call per parameter rather than a ``raise`` written into the step:
    Numba lowers each ``raise`` of a function body anew, and a step's own compilation time
    grows with them; this one compiles once, for one signature."""
    if not same:
        raise ValueError(WRONG_GRADIENT_SHAPE)


@jit
def _bounds(values):
    """(min, max) of a non-empty int64 array (m,) in one pass: one kernel call instead of two
    NumPy reductions, on every training step."""
    low = high = values[0]
    for value in values[1:]:
        low, high = min(low, value), max(high, value)
    return int(low), int(high)
