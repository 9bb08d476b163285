"""What every optimizer shares: the learning rate, the step count and the per-array loop.

An optimizer is a frozen record of hyperparameters with two pure methods,
``state = opt.init(params)`` and ``params, state = opt.update(params, grads, state)``. A
named optimizer is ONE kernel per parameter array that reads the parameter, its gradient
and its moments and writes fresh arrays in one pass, computing in float64 and rounding once
to the parameters' dtype; :class:`Optimizer` does the rest:
checks, the learning-rate schedule, the step count and rebuilding the trees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, ClassVar

import attrs
import numpy as np
from numba import types
from numba.extending import overload

from jitnn import tree, validate
from jitnn._checks import FLOAT_DTYPES, freeze, readonly
from jitnn.optim.schedules import Schedule
from jitnn.protocol import Layer

__all__ = ["check_params_tree", "count_field", "moment_field", "Optimizer", "as_learning_rate", "step_count", "zeros_like_tree", "float_leaves", "map_kernel", "learning_rate_at", "gradient_grid", "gradient_at", "lr_scale", "lr_scale_field"]

LearningRate = float | Schedule | Callable[[int], float]


def as_learning_rate(value: Any, who: str) -> float | Schedule | Callable[[int], float]:
    """A learning rate: a finite non-negative number (kept as a float) or a schedule (any
    callable of the step count)."""
    if validate.is_real(value):
        return validate.non_negative_real(value, who, "learning_rate")
    if callable(value):
        return value
    raise TypeError(f"{who}: learning_rate must be a number or a schedule (a function of the step count), got {value!r}")


def learning_rate_at(learning_rate: LearningRate, count: int, who: str) -> float:
    """The learning rate for the update after ``count`` earlier ones, checked."""
    if isinstance(learning_rate, float):
        return learning_rate
    return validate.non_negative_real(learning_rate(count), who, f"the learning rate the schedule gave at step {count}")


# --------------------------------------------------------------------------- kernels' gradients
# An optimizer kernel reads its gradient through these two, so that one kernel takes both
# forms: a 1-D array (the flat gradient), or, from the compiled step, the factors (A, B) of
# a weight gradient A.T @ B with A of one row (jitnn.Factored), whose element (r, c) it forms
# as it updates it. Loop over the grid; element i = r * columns + c of the flat parameter:
#
#     rows, columns = gradient_grid(grad)
#     for r in range(rows):
#         for c in range(columns):
#             i = r * columns + c
#             g = np.float64(gradient_at(grad, i, r, c))


def gradient_grid(grad: Any) -> tuple[int, int]:
    """``(1, size)`` for a flat gradient; ``(m, n)`` for the factors of an ``(m, n)`` one."""
    if isinstance(grad, tuple):
        return grad[0].shape[1], grad[1].shape[1]
    return 1, grad.size


def gradient_at(grad: Any, i: int, r: int, c: int) -> Any:
    """Element ``i`` of a flat gradient; element ``(r, c)`` of factors with one row, the one
    rounded product ``A[0, r] * B[0, c]`` that ``jitnn._blas.outer_sum`` stores."""
    if isinstance(grad, tuple):
        return grad[0][0, r] * grad[1][0, c]
    return grad[i]


@overload(gradient_grid, inline="always")
def _gradient_grid(grad):  # type: ignore[no-untyped-def]
    if isinstance(grad, types.BaseTuple):
        return lambda grad: (grad[0].shape[1], grad[1].shape[1])
    return lambda grad: (1, grad.size)


@overload(gradient_at, inline="always")
def _gradient_at(grad, i, r, c):  # type: ignore[no-untyped-def]
    if isinstance(grad, types.BaseTuple):
        return lambda grad, i, r, c: grad[0][0, r] * grad[1][0, c]
    return lambda grad, i, r, c: grad[i]


def count_field() -> Any:
    """The ``count`` field of a state record: a 0-d int64 array, shown as its number."""
    return attrs.field(repr=lambda count: str(int(count)), validator=_check_count)


def _check_count(state: Any, attribute: Any, value: Any) -> None:
    """A step count must be a non-negative integer (0-d): the updates depend on it."""
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.shape != () or array.dtype.kind not in "iu":
        raise TypeError(f"{type(state).__name__}: count must be a 0-d integer array (the number of updates so far), got {value!r}")
    if int(array) < 0:
        raise ValueError(f"{type(state).__name__}: count must be non-negative, got {int(array)}")


def moment_field() -> Any:
    """A moment field of a state record (a tree like the parameters), shown by shapes."""
    return attrs.field(repr=tree.short_repr, metadata={"moment": True})


def lr_scale_field() -> Any:
    """The ``lr_scale`` field of a named optimizer's state: a 0-d float64 array (default 1)
    that multiplies the learning rate (the schedule's value, where there is one) at every
    update. ``jitnn.callbacks.ReduceLROnPlateau`` lowers it; being part of the state, it is
    saved with it and read by the compiled step like the rest."""
    return attrs.field(factory=lambda: lr_scale(1.0), converter=_to_lr_scale, repr=lambda scale: repr(float(scale)))


def lr_scale(value: float) -> np.ndarray:
    """A learning-rate scale as the read-only 0-d float64 array states hold."""
    return freeze(np.array(value, dtype=np.float64))


def _to_lr_scale(value: Any) -> np.ndarray:
    """A positive finite number, or a 0-d array of one, as :func:`lr_scale` makes it."""
    number = float(value) if isinstance(value, np.ndarray) and value.shape == () else value
    number = validate.positive_real(number, "optimizer state", "lr_scale")
    if isinstance(value, np.ndarray) and value.dtype == np.float64 and not value.flags.writeable:
        return value
    return lr_scale(number)


def step_count(count: int) -> np.ndarray:
    """A step count as the read-only 0-d int64 array that optimizer states hold."""
    return freeze(np.array(count, dtype=np.int64))


def zeros_like_tree(params: Any) -> Any:
    """A tree of ``params``' structure holding read-only zeros for every trainable array."""
    return tree.map(lambda p: freeze(np.zeros_like(p)), params, trainable=True)


def check_params_tree(params: Any, who: str) -> None:
    """``TypeError`` unless ``params`` is a model or a tree holding arrays (a layer without
    parameters is a model too: its state has empty moments)."""
    if not isinstance(params, Layer) and not tree.leaves(params):
        raise TypeError(f"{who}: params must be a model or a tree of arrays (records, tuples, lists, dicts), got {type(params).__name__} without arrays")


def float_leaves(arrays: Any, who: str, role: str) -> list[tuple[str, np.ndarray]]:
    """The leaves of ``arrays`` with their paths, after checking each is float32 or float64."""
    return _check_float(tree.leaves_with_paths(arrays, trainable=True), who, role)


def _check_float(found: list[tuple[str, np.ndarray]], who: str, role: str) -> list[tuple[str, np.ndarray]]:
    for path, leaf in found:
        if leaf.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{who}: {role} {path or '(the root)'} has dtype {leaf.dtype}; only float32 and float64 arrays can be optimized")
    return found


def map_kernel(kernel: Callable[..., tuple], trees: list[Any], config: tuple, outputs: int, who: str, roles: list[str],
               keep: Sequence[bool] | None = None) -> list[Any]:
    """Run ``kernel(*leaves, *config) -> (out_1, ..., out_k)`` on the matching leaves of
    ``trees`` and return ``k = outputs`` new trees of ``trees[0]``'s structure.

    ``trees`` are ``[params, grads, *moments]`` and the outputs ``[params, *moments]``; a
    leaf whose ``keep`` entry is true is left as it is (its parameter and moments, the same
    arrays), without calling the kernel.

    Every tree must have the structure, shapes and dtypes of ``trees[0]``; the error names
    ``roles[i]`` and the first parameter that differs. The kernel sees flat (1-D) read-only
    arrays, so it compiles once per dtype whatever the parameters' ranks; its fresh
    outputs are made read-only and reshaped back.
    """
    template, structure = tree.flatten(trees[0], trainable=True)
    _check_float(template, who, roles[0])
    columns = [[leaf for _, leaf in template]]
    for other, role in zip(trees[1:], roles[1:]):
        columns.append(_matching_leaves(template, structure, trees[0], other, who, role))
    results = []
    for index, arrays in enumerate(zip(*columns)):
        if keep is not None and keep[index]:
            results.append([arrays[0], *arrays[2:]])
            continue
        flat = [readonly(a.reshape(-1)) for a in arrays]
        results.append([freeze(out).reshape(arrays[0].shape) for out in kernel(*flat, *config)])
    return [tree._refill(trees[0], [r[i] for r in results], trainable=True) for i in range(outputs)]


def _matching_leaves(template: list[tuple[str, np.ndarray]], structure: tuple, params: Any, other: Any, who: str, role: str) -> list[np.ndarray]:
    """``other``'s leaves, checked against the parameters' structure, shapes and dtypes in
    one walk; on a mismatch, a full comparison names the first difference."""
    found, other_structure = tree.flatten(other, trainable=True)
    matches = other_structure == structure and len(found) == len(template) and all(
        path == other_path and leaf.shape == expected.shape and leaf.dtype == expected.dtype
        for (path, expected), (other_path, leaf) in zip(template, found)
    )
    if not matches:
        try:
            tree.check_same_structure(other, params, trainable=True)
        except ValueError as error:
            raise ValueError(f"{who}: {role} do not match the parameters: {error}") from None
    return [leaf for _, leaf in found]


class Optimizer:
    """Base of the named optimizers.

    A subclass is an ``attrs`` frozen record with a ``learning_rate`` field (a number or a
    schedule) and hyperparameters, and states

    * ``kernel``: ``(param, grad, *moments, *config) -> (new_param, *new_moments)``, all
      arrays 1-D; ``grad`` is read through :func:`gradient_grid` and :func:`gradient_at`
      when ``factored_gradients`` is true (every built-in optimizer), so that the compiled
      step can hand it a weight gradient's factors instead of the stored gradient;
    * ``state_class``: a frozen record whose fields are ``count``, the moments (each a
      tree of the parameters' structure, made with :func:`moment_field`) and ``lr_scale``
      (:func:`lr_scale_field`), which multiplies the learning rate;
    * :meth:`kernel_config`: the scalars handed to the kernel for one update.
    """

    __slots__ = ()
    kernel: ClassVar[Callable[..., tuple]]
    state_class: ClassVar[type]
    #: Whether ``kernel`` takes a gradient's factors as well as a flat gradient (see
    #: :func:`gradient_at`); a subclass whose kernel indexes ``grad`` itself leaves it false.
    factored_gradients: ClassVar[bool] = False
    #: True for an optimizer that wraps a named one (``Masked``): it is not named itself.
    wrapper: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    @property
    def moment_names(self) -> tuple[str, ...]:
        return tuple(field.name for field in attrs.fields(self.state_class) if field.metadata.get("moment"))

    def kernel_config(self, learning_rate: float, step: int) -> tuple[Any, ...]:
        """The scalars after the arrays for the ``step``-th update (1 for the first)."""
        raise NotImplementedError

    def frozen(self, params: Any) -> tuple[bool, ...]:
        """For each trainable array of ``params`` (in :func:`jitnn.tree.leaves` order),
        whether the update leaves it (and its moments) as it is: none, here; see
        :func:`jitnn.optim.masked`. The compiled step skips those updates too."""
        return (False,) * len(tree.leaves(params, trainable=True))

    def init(self, params: Any) -> Any:
        """The state for ``params``: a zero step count and zero moments."""
        check_params_tree(params, f"{self.name}.init")
        return self.state_class(step_count(0), *(zeros_like_tree(params) for _ in self.moment_names))

    def update(self, params: Any, grads: Any, state: Any) -> tuple[Any, Any]:
        """New parameters and a new state; nothing given is written to."""
        who = f"{self.name}.update"
        if type(state) is not self.state_class:
            raise TypeError(f"{who}: state must be the {self.state_class.__name__} from {self.name}.init, got {type(state).__name__}")
        count = int(state.count)
        learning_rate = learning_rate_at(self.learning_rate, count, who) * float(state.lr_scale)
        moments = [getattr(state, name) for name in self.moment_names]
        roles = ["params", "grads", *(f"the state's {name}" for name in self.moment_names)]
        config = self.kernel_config(learning_rate, count + 1)
        frozen = self.frozen(params)
        new_params, *new_moments = map_kernel(self.kernel, [params, grads, *moments], config, 1 + len(moments), who, roles,
                                              frozen if any(frozen) else None)
        return new_params, self.state_class(step_count(count + 1), *new_moments, lr_scale=state.lr_scale)
