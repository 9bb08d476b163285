"""Freezing part of a model: :func:`masked` updates only the parameters it selects."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, ClassVar

import attrs

from jitnn import tree
from jitnn.optim._base import Optimizer

__all__ = ["Masked", "masked"]


def _selection(select: Any) -> Callable[[str], bool] | frozenset[str]:
    if callable(select):
        return select
    if isinstance(select, (str, bytes)) or not isinstance(select, Collection) or not all(isinstance(p, str) for p in select):
        raise TypeError(f"masked: select must be a predicate on parameter paths or a collection of paths, got {select!r}")
    return frozenset(select)


def _inner(optimizer: Any) -> Optimizer:
    if not isinstance(optimizer, Optimizer) or isinstance(optimizer, Masked):
        raise TypeError(f"masked: optimizer must be a named jitnn optimizer (jn.optim.adam(...), ...), got {optimizer!r}")
    return optimizer


@attrs.frozen
class Masked(Optimizer):
    """A named optimizer that updates only the parameters ``select`` chooses.

    ``select`` is a predicate ``path -> bool`` on the parameters' dotted paths
    (``"layers.0.W"``, as :func:`jitnn.tree.leaves_with_paths` gives them), or a collection
    of paths and path prefixes (``{"layers.2"}`` selects every array of ``layers[2]``). The
    others, and their moments, are left as they are: the same arrays, bit for bit. The
    state is the inner optimizer's (every moment kept, the frozen ones stay zero), so
    ``ReduceLROnPlateau`` and checkpoints work as for it, and the compiled step runs it
    inside its function, skipping the frozen parameters' updates (and a layer's parameter
    gradients where all of its parameters are frozen).
    """

    wrapper: ClassVar[bool] = True
    optimizer: Optimizer = attrs.field(converter=_inner)
    select: Callable[[str], bool] | frozenset[str] = attrs.field(converter=_selection)

    @property
    def name(self) -> str:
        return f"masked({self.optimizer.name})"

    @property
    def kernel(self) -> Callable[..., tuple]:  # type: ignore[override]
        return self.optimizer.kernel

    @property
    def state_class(self) -> type:  # type: ignore[override]
        return self.optimizer.state_class

    @property
    def factored_gradients(self) -> bool:  # type: ignore[override]
        return self.optimizer.factored_gradients

    @property
    def learning_rate(self) -> Any:
        return self.optimizer.learning_rate

    def kernel_config(self, learning_rate: float, step: int) -> tuple[Any, ...]:
        return self.optimizer.kernel_config(learning_rate, step)

    def init(self, params: Any) -> Any:
        self.frozen(params)  # an unusable selection fails here
        return self.optimizer.init(params)

    def frozen(self, params: Any) -> tuple[bool, ...]:
        paths = [path for path, _ in tree.leaves_with_paths(params, trainable=True)]
        select = self.select
        if callable(select):
            chosen = [select(path) for path in paths]
            if not all(isinstance(c, bool) for c in chosen):
                raise TypeError(f"{self.name}: select must return True or False for a path, got {chosen!r}")
        else:
            unknown = [p for p in select if not any(path == p or path.startswith(p + ".") for path in paths)]
            if unknown:
                raise ValueError(f"{self.name}: {sorted(unknown)} select no parameter; the parameters are {paths}")
            chosen = [any(path == p or path.startswith(p + ".") for p in select) for path in paths]
        return tuple(not c for c in chosen)


def masked(optimizer: Optimizer, select: Callable[[str], bool] | Collection[str]) -> Masked:
    """``optimizer`` updating only the parameters ``select`` chooses (see :class:`Masked`):
    ``masked(adam(1e-3), lambda path: not path.startswith("layers.0"))`` freezes the first
    layer, ``masked(sgd(0.1), {"layers.4"})`` trains only ``layers[4]``."""
    return Masked(optimizer, select)
