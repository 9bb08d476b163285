"""The plan: a model's structure lowered once per architecture and input shape.

A model is a tree of records; what runs is a flat list of operations over numbered slots,
each slot holding one array of a known per-example shape (slot 0 is the model's input):

- :class:`Call`: leaf layer ``leaf`` applied to slot ``x``, giving slot ``y``;
- :class:`Sum`: slots ``xs`` (all of one shape) added, left to right;
- :class:`Concat`: slots ``xs`` joined along per-example ``axis``.

:func:`lower` builds it: leaf layers become calls, and each composite layer wires its
members once, in :meth:`jitnn.Composite.lower`, through the :class:`Planner`. Every leaf
layer of the tree is a :class:`Site` (its position, its parameters' and buffers' places in
the flat lists the compiled step takes), numbered in the order of the tree (members in
field order), whatever order a composite applies them in; a site applied twice shares its
parameters, and its gradients are summed.

The backward pass is not written anywhere: it is the plan read backwards. A call's
gradients come from the layer's kernels, a sum hands its output gradient to each input,
a concatenation splits it, and a slot read by several operations adds up the gradients
it receives, in the order they arrive. The generic passes here run the plan on arrays
(:func:`run_forward`, :func:`run_backward`); the compiled step (``jitnn/_codegen.py``)
writes the same operations, in the same order, as source, so both give the same bits.
"""

from __future__ import annotations

import functools
import operator
import weakref
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import attrs
import numpy as np

from jitnn._checks import describe, freeze
from jitnn.protocol import EVALUATION, Array, Composite, Context, Layer

__all__ = [
    "Call", "Concat", "Plan", "Planner", "Site", "Slot", "Sum", "forward_only", "leaf_layers", "lower", "output_shape_of",
    "plain_gradients", "rebuild", "run_backward", "run_forward",
]

Shape = tuple[int, ...]


class Slot(NamedTuple):
    """A slot of the plan being built: its number and the per-example shape of its array."""

    index: int
    shape: Shape


class Site(NamedTuple):
    """A leaf layer of the model: its position (``where``), the layer as lowered (its
    kernels, configuration and parameter shapes stand for every model of the
    architecture), how many calls apply it, and where its parameters and buffers start in
    the model's flat lists of them."""

    where: str
    layer: Layer
    calls: int
    first_param: int
    first_buffer: int


class Call(NamedTuple):
    """``slots[y] = sites[site].layer(slots[x])``; ``call`` numbers the calls in order."""

    site: int
    x: int
    y: int
    call: int


class Sum(NamedTuple):
    """``slots[y] = slots[xs[0]] + slots[xs[1]] + ...`` (left to right)."""

    xs: tuple[int, ...]
    y: int


class Concat(NamedTuple):
    """``slots[y]`` = the slots ``xs`` joined along per-example ``axis``; ``bounds`` are the
    part boundaries along it (for the backward split)."""

    xs: tuple[int, ...]
    axis: int
    bounds: tuple[int, ...]
    y: int


Op = Call | Sum | Concat


@attrs.frozen(eq=False)
class Plan:
    """A model lowered for one per-example input shape: the slots' per-example shapes, the
    operations in forward order, the leaf sites, the output slot, and the calls (in
    order)."""

    slots: tuple[Shape, ...]
    ops: tuple[Op, ...]
    sites: tuple[Site, ...]
    output: int
    calls: tuple[Call, ...]

    @property
    def input_shape(self) -> Shape:
        return self.slots[0]

    @property
    def output_shape(self) -> Shape:
        return self.slots[self.output]

    def gradient_needed(self, input_gradient: bool) -> list[bool]:
        """Per slot, whether the backward pass computes its gradient: a slot needs one if
        an operation that made it depends on parameters (or, with ``input_gradient``, on
        the model's input). Worked out once per plan for each answer."""
        return self._needed[bool(input_gradient)]

    @functools.cached_property
    def _needed(self) -> tuple[list[bool], list[bool]]:
        return self._gradient_needed(False), self._gradient_needed(True)

    def _gradient_needed(self, input_gradient: bool) -> list[bool]:
        needed = [False] * len(self.slots)
        needed[0] = input_gradient
        for op in self.ops:
            if isinstance(op, Call):
                needed[op.y] = bool(self.sites[op.site].layer.param_names) or needed[op.x]
            else:
                needed[op.y] = any(needed[x] for x in op.xs)
        return needed

    def keeps_residuals(self, call: Call, needed: list[bool]) -> bool:
        """Whether a call's backward pass runs, so that its forward keeps residuals."""
        return bool(self.sites[call.site].layer.param_names) or needed[call.x]

    def read_backwards(
        self, dY: Any, input_gradient: bool, call: Callable[[Call, Any, bool], Any], add: Callable[[Any, Any], Any],
        part: Callable[[Any, int, int, int], Any],
    ) -> Any:
        """The backward pass, written once for whoever runs it (the generic passes on arrays,
        the compiled step as source): from the output's gradient ``dY``, each operation in
        reverse order hands gradients to its inputs, and a slot that receives several adds
        them in the order they come (``add(received, new)``). ``call(op, dy, input_needed)``
        does a call's gradients and returns its ``dX`` (or ``None``); ``part(dy, axis, start,
        stop)`` is a concatenation input's share. Returns the input's gradient, if asked."""
        needed = self.gradient_needed(input_gradient)
        grads: list[Any] = [None] * len(self.slots)
        grads[self.output] = dY

        def receive(slot: int, gradient: Any) -> None:
            grads[slot] = gradient if grads[slot] is None else add(grads[slot], gradient)

        for op in reversed(self.ops):
            gradient = grads[op.y]
            if gradient is None:
                continue  # nothing that reaches the output depends on this slot
            if isinstance(op, Call):
                site = self.sites[op.site]
                if site.layer.param_names or needed[op.x]:
                    dX = call(op, gradient, needed[op.x])
                    if dX is not None:
                        receive(op.x, dX)
            elif isinstance(op, Sum):
                for x in op.xs:
                    if needed[x]:
                        receive(x, gradient)
            else:
                for x, start, stop in zip(op.xs, op.bounds[:-1], op.bounds[1:]):
                    if needed[x]:
                        receive(x, part(gradient, op.axis, start, stop))
        return grads[0] if input_gradient else None

    @functools.cached_property
    def kept(self) -> tuple[list[bool], list[bool]]:
        """Per call, whether a forward pass keeps its residuals: whether its backward pass
        runs (without, then with the input's gradient)."""
        return tuple([self.keeps_residuals(call, self.gradient_needed(flag)) for call in self.calls] for flag in (False, True))

    @functools.cached_property
    def freed(self) -> list[tuple[int, ...]]:
        """Per operation, the slots that nothing after it reads (a forward pass that keeps
        nothing drops their arrays there)."""
        last = [-1] * len(self.slots)
        for i, op in enumerate(self.ops):
            for x in (op.x,) if isinstance(op, Call) else op.xs:
                last[x] = i
        last[self.output] = len(self.ops)
        freed: list[list[int]] = [[] for _ in self.ops]
        for slot, i in enumerate(last):
            if 0 <= i < len(self.ops):
                freed[i].append(slot)
        return [tuple(slots) for slots in freed]


# --------------------------------------------------------------------------- lowering
class Planner:
    """What a composite's :meth:`~jitnn.Composite.lower` builds the plan with.

    ``apply(member, x)`` applies a member (the layer itself, or its index in
    ``named_members()``, which a composite holding the same layer twice must use) to slot
    ``x``; ``add(*slots)`` and ``concat(slots, axis=0)`` join slots. Each returns the new
    slot. Shapes are checked as the plan is built, and errors name the layer and its
    position in the model.
    """

    def __init__(self, model: Layer, input_shape: Shape, batch: int | None = None) -> None:
        self._batch = batch
        self._sites: list[tuple[str, Layer, int, int]] = []
        self._site_of: dict[str, int] = {}
        self._named: dict[int, tuple[tuple[str, Layer], ...]] = {}
        self._counts = [0, 0]  # parameters and buffers of the sites so far
        self._enumerate(model, "")
        self._calls = [0] * len(self._sites)
        self._slots: list[Shape] = [tuple(input_shape)]
        self._ops: list[Op] = []
        self._call_ops: list[Call] = []
        self._stack: list[tuple[Composite, str, tuple[tuple[str, Layer], ...]]] = []
        self._model = model

    def _enumerate(self, layer: Layer, where: str) -> None:
        if isinstance(layer, Composite):
            named = self._named[id(layer)] = layer.named_members()
            for suffix, member in named:
                self._enumerate(member, where + suffix)
            return
        if not isinstance(layer, Layer):
            raise TypeError(f"model{where} is not a jitnn layer (got {type(layer).__name__})")
        counts = self._counts
        self._site_of[where] = len(self._sites)
        self._sites.append((where, layer, counts[0], counts[1]))
        counts[0] += len(layer.param_names)
        counts[1] += len(layer.buffer_names)

    def lower(self) -> Plan:
        output = self._apply(self._model, "", Slot(0, self._slots[0]))
        sites = tuple(Site(where, layer, count, params, buffers) for (where, layer, params, buffers), count in zip(self._sites, self._calls))
        for site in sites:
            if site.calls > 1 and site.layer.buffer_names:
                raise ValueError(f"{describe(site.layer, site.where)}: a layer with buffers can be applied only once in a model, got {site.calls} times")
        return Plan(tuple(self._slots), tuple(self._ops), sites, output.index, tuple(self._call_ops))

    # ------------------------------------------------------------------ for composites
    def apply(self, member: Layer | int, x: Slot) -> Slot:
        """Apply a member of the composite being lowered to slot ``x``."""
        composite, where, named = self._stack[-1]
        if isinstance(member, int) and not isinstance(member, bool):
            if not 0 <= member < len(named):
                raise ValueError(f"{describe(composite, where)}: has {len(named)} members, no member {member}")
            suffix, layer = named[member]
        else:
            matches = [(suffix, layer) for suffix, layer in named if layer is member]
            if not matches:
                raise ValueError(f"{describe(composite, where)}: plan.apply was given a layer that is not one of its members")
            if len(matches) > 1:
                raise ValueError(f"{describe(composite, where)}: holds this layer {len(matches)} times; apply it by its index in named_members()")
            suffix, layer = matches[0]
        return self._apply(layer, where + suffix, self._slot(x))

    def add(self, *slots: Slot) -> Slot:
        """The sum of ``slots`` (all of one per-example shape)."""
        slots = tuple(self._slot(s) for s in slots)
        if not slots:
            raise ValueError(f"{self._who()}: add needs at least one slot")
        shapes = [s.shape for s in slots]
        if any(shape != shapes[0] for shape in shapes):
            raise ValueError(f"{self._who()}: outputs must share one shape to be added, got {shapes}")
        if len(slots) == 1:
            return slots[0]
        return self._op(lambda y: Sum(tuple(s.index for s in slots), y), shapes[0])

    def concat(self, slots: Sequence[Slot], axis: int = 0) -> Slot:
        """``slots`` joined along per-example ``axis`` (negative counts from the end)."""
        slots = tuple(self._slot(s) for s in slots)
        if not slots:
            raise ValueError(f"{self._who()}: concat needs at least one slot")
        try:
            shape, axis = concat_shape([s.shape for s in slots], axis)
        except ValueError as error:
            raise ValueError(f"{self._who()}: {error}") from None
        if len(slots) == 1:
            return slots[0]
        bounds = tuple(int(b) for b in np.cumsum([0] + [s.shape[axis] for s in slots]))
        return self._op(lambda y: Concat(tuple(s.index for s in slots), axis, bounds, y), shape)

    # ------------------------------------------------------------------ internals
    def _who(self) -> str:
        composite, where, _ = self._stack[-1]
        return describe(composite, where)

    def _slot(self, slot: Any) -> Slot:
        if not isinstance(slot, Slot) or slot.index >= len(self._slots) or self._slots[slot.index] != slot.shape:
            raise TypeError(f"{self._who()}: lower must combine and return the slots its plan gives, got {slot!r}")
        return slot

    def _op(self, make: Any, shape: Shape) -> Slot:
        y = len(self._slots)
        self._slots.append(tuple(shape))
        self._ops.append(make(y))
        return Slot(y, tuple(shape))

    def _apply(self, layer: Layer, where: str, x: Slot) -> Slot:
        if isinstance(layer, Composite):
            self._stack.append((layer, where, self._named[id(layer)]))
            try:
                return self._slot(layer.lower(self, x))
            finally:
                self._stack.pop()
        try:
            out = tuple(layer.output_shape(x.shape))
        except ValueError as error:
            shape = f"input array of shape {(self._batch, *x.shape)}" if self._batch is not None else f"per-example input shape {x.shape}"
            raise ValueError(f"{describe(layer, where)}: {error} ({shape})") from None
        site = self._site_of[where]
        self._calls[site] += 1
        call = len(self._call_ops)
        slot = self._op(lambda y: Call(site, x.index, y, call), out)
        self._call_ops.append(self._ops[-1])
        return slot


def concat_shape(shapes: Sequence[Shape], axis: int) -> tuple[Shape, int]:
    """The shape of per-example ``shapes`` joined along ``axis``, and the axis made
    non-negative; ``ValueError`` if they cannot be joined."""
    rank = len(shapes[0])
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for per-example outputs of shape {shapes[0]}")
    joined = axis % rank
    rest = [s[:joined] + s[joined + 1 :] for s in shapes]
    if any(len(s) != rank for s in shapes) or any(r != rest[0] for r in rest):
        raise ValueError(f"branch outputs {list(shapes)} cannot be joined along per-example axis {axis}")
    return shapes[0][:joined] + (sum(s[joined] for s in shapes),) + shapes[0][joined + 1 :], joined


#: Plans of live models, by the model's identity and the input shape: a model is a value,
#: so its plan cannot change while it lives; an entry goes when its model does.
_PLANS: dict[tuple[int, Shape], tuple[weakref.ref, Plan]] = {}
_MOST_PLANS = 1024


def lower(model: Layer, input_shape: Shape, batch: int | None = None) -> Plan:
    """The plan of ``model`` for per-example input ``input_shape`` (``batch``, if known,
    only makes error messages show the whole input array's shape). Lowered once per live
    model and input shape."""
    key = (id(model), tuple(input_shape))
    found = _PLANS.get(key)
    if found is not None and found[0]() is model:
        return found[1]
    lowered = Planner(model, key[1], batch).lower()
    if len(_PLANS) >= _MOST_PLANS:
        _PLANS.clear()
    _PLANS[key] = (weakref.ref(model, lambda _, key=key, plans=_PLANS: plans.pop(key, None)), lowered)
    return lowered


def output_shape_of(composite: Composite, input_shape: Shape) -> Shape:
    """A composite's per-example output shape, as its wiring gives it."""
    return lower(composite, input_shape).output_shape


def leaf_layers(model: Layer) -> list[Layer]:
    """The leaf layers of ``model`` in site order (the order of the tree)."""
    if isinstance(model, Composite):
        return [leaf for member in model.members for leaf in leaf_layers(member)]
    return [model]


def rebuild(model: Layer, leaves: Iterator[Layer]) -> Layer:
    """A record of ``model``'s structure whose leaf layers are the next items of ``leaves``
    (site order); a composite whose members all come back unchanged is kept as it is."""
    if not isinstance(model, Composite):
        return next(leaves)
    old = model.members
    members = [rebuild(member, leaves) for member in old]
    if all(new is was for new, was in zip(members, old)):
        return model
    return model.with_members(members)


# --------------------------------------------------------------------------- the generic passes
class Record(NamedTuple):
    """What a forward pass keeps for the backward pass: every slot's array, and each
    call's per-call arguments and residuals (``None`` where it kept none)."""

    plan: Plan
    values: list[Array | None]
    extras: list[tuple[Any, ...]]
    residuals: list[Any]


def run_forward(
    plan: Plan, leaves: Sequence[Layer], X: Array, context: Context = EVALUATION, keep: bool = False, input_gradient: bool = True
) -> tuple[Array, Record | None, list[Layer]]:
    """Run ``plan`` with the leaf layers ``leaves`` on ``X``.

    Returns the output, the :class:`Record` for :func:`run_backward` (with ``keep``, holding
    the residuals of every call whose backward pass will run, ``input_gradient`` saying
    whether that pass computes ``dX``; without ``keep``, ``None``, and each array is
    dropped once nothing reads it), and the leaves as the batch leaves them (new running
    statistics in training mode)."""
    values: list[Array | None] = [None] * len(plan.slots)
    values[0] = X
    extras: list[tuple[Any, ...]] = [()] * len(plan.calls)
    residuals: list[Any] = [None] * len(plan.calls)
    after = list(leaves)
    kept = plan.kept[bool(input_gradient)] if keep else None
    n, training = X.shape[0], context.training
    for i, op in enumerate(plan.ops):
        if type(op) is Call:
            where, layer, x = plan.sites[op.site].where, leaves[op.site], values[op.x]
            layer._check_input(x, where)
            extra = layer.call_args(x, context, where) if layer.needs_context else ()
            Y, R = layer._run_forward(x, extra, keep and kept[op.call])
            if Y.shape[0] != n or Y.shape[1:] != plan.slots[op.y]:
                raise ValueError(f"{describe(layer, where)}: the forward kernel returned shape {Y.shape}, the shape rule gives {(n, *plan.slots[op.y])}")
            if training and layer.needs_context:
                overridden = type(layer).updated is not Layer.updated
                after[op.site] = layer.updated(x, extra) if overridden else layer._updated(x, R, extra)
            extras[op.call], residuals[op.call] = extra, R
        elif type(op) is Sum:
            Y = functools.reduce(operator.add, [values[x] for x in op.xs])
        else:
            Y = np.concatenate([values[x] for x in op.xs], axis=op.axis + 1)
        values[op.y] = Y
        if not keep:
            for x in plan.freed[i]:
                values[x] = None
    return values[plan.output], (Record(plan, values, extras, residuals) if keep else None), after


def run_backward(
    plan: Plan, leaves: Sequence[Layer], record: Record, dY: Array, input_gradient: bool = True
) -> tuple[list[Layer], Array | None]:
    """The plan read backwards from ``dY``: each leaf's gradient record (site order) and,
    with ``input_gradient``, ``dX``."""
    totals: list[list[Array] | None] = [None] * len(plan.sites)

    def call(op: Call, gradient: Array, input_needed: bool) -> Array | None:
        layer = leaves[op.site]
        params, dX = layer._run_backward(
            record.values[op.x], gradient, record.residuals[op.call], record.extras[op.call], plan.sites[op.site].where, True, input_needed
        )
        if params is not None:
            found = totals[op.site]
            totals[op.site] = list(params) if found is None else [a + b for a, b in zip(found, params)]
        return dX

    def part(gradient: Array, axis: int, start: int, stop: int) -> Array:
        return np.ascontiguousarray(gradient[(slice(None),) * (axis + 1) + (slice(start, stop),)])

    dX = plan.read_backwards(dY, input_gradient, call, operator.add, part)
    records = []
    for layer, total in zip(leaves, totals):
        if not layer.param_names:
            records.append(layer)
        else:
            arrays = total if total is not None else [np.zeros_like(p) for p in layer.params]
            records.append(layer.with_params([freeze(a) for a in arrays]))
    return records, dX


# --------------------------------------------------------------------------- public answers
def _check_output_gradient(layer: Layer, plan: Plan, X: Array, dY: Array) -> None:
    expected = (X.shape[0], *plan.output_shape)
    if dY.shape != expected:
        raise ValueError(f"{describe(layer)}: the output gradient dY must have shape {expected}, got {dY.shape}")


def forward_only(model: Layer, X: Array) -> Array:
    """``model.forward(X)`` for a checked batch ``X``: evaluation mode, nothing kept."""
    plan = lower(model, X.shape[1:], X.shape[0])
    return run_forward(plan, [site.layer for site in plan.sites], X)[0]


def plain_gradients(model: Layer, X: Array, dY: Array, params: bool, inputs: bool) -> tuple[Any, Array | None]:
    """``(gradient record, dX)`` of ``model`` at ``X`` for ``dY``, in evaluation mode: a
    leaf layer's plain answers straight from its kernels; a composite's from a forward
    pass that keeps what its backward pass needs."""
    plan = lower(model, X.shape[1:], X.shape[0])
    _check_output_gradient(model, plan, X, dY)
    leaves = [site.layer for site in plan.sites]
    if isinstance(model, Composite):
        _, record, _ = run_forward(plan, leaves, X, keep=True)
        records, dX = run_backward(plan, leaves, record, dY, inputs)
        return rebuild(model, iter(records)), dX
    extras = model.call_args(X, EVALUATION, "") if model.needs_context else ()
    grads, dX = model._run_backward(X, dY, None, extras, "", params, inputs)
    record = model if grads is None else model.with_params([freeze(g) for g in grads])
    return record, dX
