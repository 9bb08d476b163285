"""What every optimizer shares: argument checks and the per-array update loop."""

from __future__ import annotations

import numbers
from typing import Any, Callable

import numpy as np

from jitnn import tree
from jitnn._checks import freeze, readonly

__all__ = ["check_learning_rate", "update_leaves"]


def check_learning_rate(value: Any, who: str) -> float:
    """A learning rate: a finite, non-negative real number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value < 0:
        raise ValueError(f"{who}: learning_rate must be a finite non-negative number, got {value!r}")
    return float(value)


def update_leaves(kernel: Callable[..., Any], params: Any, grads: Any, *config: Any) -> Any:
    """A new tree: ``kernel(param, grad, *config)`` for every parameter array.

    The kernel sees flat (1-D) read-only views, so it compiles once per dtype whatever the
    parameters' ranks, and returns a flat array that is reshaped back. ``grads`` must have the structure, shapes and dtypes of ``params``; the error names the
    first parameter that differs. Fresh arrays from the kernel are made read-only.
    """

    def step(path: str, param: np.ndarray, grad: np.ndarray) -> np.ndarray:
        if grad.shape != param.shape or grad.dtype != param.dtype:
            raise ValueError(
                f"optimizer update: the gradient of {path} has shape {grad.shape} and dtype {grad.dtype}, "
                f"the parameter {param.shape} and {param.dtype}"
            )
        return freeze(kernel(readonly(param.reshape(-1)), readonly(grad.reshape(-1)), *config)).reshape(param.shape)

    try:
        return tree.map_with_paths(step, params, grads)
    except ValueError as error:
        if str(error).startswith("optimizer update"):
            raise
        raise ValueError(f"optimizer update: grads do not match params: {error}") from None
