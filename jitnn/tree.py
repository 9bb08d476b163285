"""Functions over trees: any nest of records, tuples, lists and dicts with arrays at the leaves.

The leaves are arrays: a record's parameter fields (see :func:`jitnn.param`), its buffers
(:func:`jitnn.buffer`) and any other array held by a record, tuple, list or dict. Record
fields that hold records or containers are followed; any other field (configuration:
ints, floats, strings) is kept as it is. Models, gradient records and optimizer states are
all trees.

Every function takes ``trainable=False``; with ``trainable=True`` only what training
changes counts as a leaf: a record's arrays other than its parameters (buffers such as
running statistics) are kept as they are. Optimizers walk trees that way.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import attrs
import numpy as np

from jitnn.protocol import PARAM

__all__ = [
    "map", "map_with_paths", "leaves", "leaves_with_paths", "flatten", "unflatten", "check_same_structure", "short_repr",
]


class _Walk(NamedTuple):
    """How :func:`_visit` walks: rebuild the tree?, report nodes to?, trainable leaves only?"""

    rebuild: bool
    on_node: Callable[[str, type], None] | None = None
    trainable: bool = False


def _is_node(value: Any) -> bool:
    return isinstance(value, (np.ndarray, tuple, list, dict)) or attrs.has(type(value))


def _mismatch(path: str, what: str) -> ValueError:
    return ValueError(f"tree structures differ at {path or 'the root'}: {what}")


def _visit(fn: Callable[..., Any], tree: Any, others: tuple[Any, ...], path: str, walk: _Walk) -> Any:
    """The one traversal: call ``fn(path, leaf, *matching_leaves)`` on every leaf, checking
    that ``others`` match ``tree``; rebuild the tree from the results if ``walk.rebuild``;
    call ``walk.on_node(path, type)`` on every record and container."""
    if isinstance(tree, np.ndarray):
        for other in others:
            if not isinstance(other, np.ndarray):
                raise _mismatch(path, f"an array against {type(other).__name__}")
        return fn(path, tree, *others)
    kind = type(tree)
    for other in others:
        if type(other) is not kind:
            raise _mismatch(path, f"{kind.__name__} against {type(other).__name__}")
    if walk.on_node is not None and _is_node(tree):
        walk.on_node(path, kind)
    if attrs.has(kind):
        changes = {}
        for field in attrs.fields(kind):
            value = getattr(tree, field.name)
            if field.metadata.get(PARAM) or (_is_node(value) and not (walk.trainable and isinstance(value, np.ndarray))):
                matching = tuple(getattr(other, field.name) for other in others)
                changes[field.name] = _visit(fn, value, matching, _join(path, field.name), walk)
        return attrs.evolve(tree, **changes) if walk.rebuild and changes else tree
    if isinstance(tree, (tuple, list)):
        for other in others:
            if len(other) != len(tree):
                raise _mismatch(path, f"{len(tree)} items against {len(other)}")
        items = [_visit(fn, item, tuple(other[i] for other in others), _join(path, str(i)), walk) for i, item in enumerate(tree)]
        if not walk.rebuild:
            return tree
        return kind(*items) if hasattr(tree, "_fields") else kind(items)
    if isinstance(tree, dict):
        for other in others:
            if other.keys() != tree.keys():
                raise _mismatch(path, f"keys {sorted(str(k) for k in tree)} against {sorted(str(k) for k in other)}")
        items = {k: _visit(fn, v, tuple(o[k] for o in others), _join(path, str(k)), walk) for k, v in tree.items()}
        return kind(items) if walk.rebuild else tree
    return tree


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def map(fn: Callable[..., Any], tree: Any, *others: Any, trainable: bool = False) -> Any:
    """Apply ``fn`` to every leaf of ``tree`` (and the matching leaves of ``others``, which
    must have the same structure), returning a new tree of the same structure.

    Records are rebuilt with ``attrs.evolve``, so ``fn`` must return what the record
    accepts (arrays of the leaf's shape, typically); a NumPy scalar (what arithmetic on a
    0-d array gives) becomes a 0-d array again, so the structure is kept. Nothing is
    changed in place.
    """
    return _visit(lambda path, *arrays: _as_leaf(fn(*arrays)), tree, others, "", _Walk(rebuild=True, trainable=trainable))


def _as_leaf(value: Any) -> Any:
    return np.asarray(value) if isinstance(value, np.generic) else value


def map_with_paths(fn: Callable[..., Any], tree: Any, *others: Any, trainable: bool = False) -> Any:
    """As :func:`map`, but ``fn`` also receives each leaf's dotted path first:
    ``fn(path, leaf, *matching_leaves)``."""
    return _visit(lambda path, *arrays: _as_leaf(fn(path, *arrays)), tree, others, "", _Walk(rebuild=True, trainable=trainable))


def flatten(tree: Any, trainable: bool = False) -> tuple[list[tuple[str, np.ndarray]], tuple[tuple[str, type], ...]]:
    """In one walk: the leaves with their paths, and the structure (every record and
    container with its path and type). Two trees have the same structure exactly when
    their structures compare equal and their leaves' paths do."""
    found: list[tuple[str, np.ndarray]] = []
    nodes: list[tuple[str, type]] = []
    walk = _Walk(rebuild=False, on_node=lambda path, kind: nodes.append((path, kind)), trainable=trainable)
    _visit(lambda path, leaf: found.append((path, leaf)), tree, (), "", walk)
    return found, tuple(nodes)


def leaves_with_paths(tree: Any, trainable: bool = False) -> list[tuple[str, np.ndarray]]:
    """Every leaf with its dotted field path (``"layers.0.W"``), in the order :func:`map`
    visits them."""
    found: list[tuple[str, np.ndarray]] = []
    _visit(lambda path, leaf: found.append((path, leaf)), tree, (), "", _Walk(rebuild=False, trainable=trainable))
    return found


def leaves(tree: Any, trainable: bool = False) -> list[np.ndarray]:
    """Every leaf array of ``tree``, in the order :func:`map` visits them."""
    return [leaf for _, leaf in leaves_with_paths(tree, trainable)]


def check_same_structure(tree: Any, other: Any, trainable: bool = False) -> None:
    """Raise ``ValueError`` naming the first place where ``other`` differs from ``tree`` in
    structure, shape or dtype."""

    def compare(path: str, a: np.ndarray, b: np.ndarray) -> None:
        if a.shape != b.shape:
            raise _mismatch(path, f"shape {a.shape} against {b.shape}")
        if a.dtype != b.dtype:
            raise _mismatch(path, f"dtype {a.dtype} against {b.dtype}")

    _visit(compare, tree, (other,), "", _Walk(rebuild=False, trainable=trainable))


def unflatten(tree: Any, new_leaves: list[np.ndarray], trainable: bool = False) -> Any:
    """A tree of ``tree``'s structure whose leaves are ``new_leaves`` (in :func:`leaves` order)."""
    new_leaves = list(new_leaves)
    count = len(leaves_with_paths(tree, trainable))
    if len(new_leaves) != count:
        raise ValueError(f"unflatten: the tree has {count} leaves, got {len(new_leaves)}")
    return _refill(tree, new_leaves, trainable)


def _refill(tree: Any, new_leaves: list[np.ndarray], trainable: bool = False) -> Any:
    """:func:`unflatten` for callers that know the count is right (one walk instead of two)."""
    supply = iter(new_leaves)
    return map(lambda _: next(supply), tree, trainable=trainable)


def short_repr(tree: Any) -> str:
    """A repr of ``tree`` that shows every array as its dtype and shape (``float32[3, 4]``)
    rather than its contents; records keep their own reprs (which do the same)."""
    if isinstance(tree, np.ndarray):
        return f"{tree.dtype}[{', '.join(str(size) for size in tree.shape)}]"
    if isinstance(tree, dict):
        return "{" + ", ".join(f"{key!r}: {short_repr(value)}" for key, value in tree.items()) + "}"
    if isinstance(tree, (tuple, list)):
        items = ", ".join(short_repr(item) for item in tree)
        if hasattr(tree, "_fields"):
            return f"{type(tree).__name__}({items})"
        return f"[{items}]" if isinstance(tree, list) else f"({items}{',' if len(tree) == 1 else ''})"
    return repr(tree)
