"""The layer protocol: a frozen record of parameters plus its kernels.

A layer answers three questions, each through an ``@jit`` kernel with one calling
convention. ``params`` are the parameter fields in declaration order, ``buffers`` the
:func:`buffer` fields, ``config`` is :meth:`Layer.config` (by default the other fields in
declaration order) and ``extras`` the per-call arguments of :meth:`Layer.call_args`:

====  ====================================================  =========================
[1]   ``forward(X, *params, *buffers, *config, *extras)``           ``-> Y = f(X; W)``
[2]   ``grad_input(X, dY, *params, *buffers, *config, *extras)``    ``-> dX = dL/dX``
[3]   ``grad_params(X, dY, *params, *buffers, *config, *extras)``   ``-> (dL/dW, ...)``
====  ====================================================  =========================

A layer whose backward pass needs what its forward pass computed (statistics, columns,
argmax positions) gives :class:`Residuals` kernels as well: ``forward`` returns ``(Y, R)``
with ``R`` a tuple, and the gradient kernels take ``R`` instead of recomputing it (and
instead of the buffers: what the backward pass needs of them, the forward pass puts in
``R``). The generic passes keep ``R`` in the trace, the compiled step as a local. The three
answers still stand alone: ``grad_input(X, dY)`` on a layer computes ``R`` from ``X`` first.

Everything else (the passes, the optimizers, the gradient checks) is written once in
terms of these answers. The Python methods here validate every array before a kernel
sees it, because kernels do not check bounds, and hand kernels read-only arrays only.

Five optional extensions, each a class attribute or method of the record:

- ``elementwise = True``: the kernels get flat (1-D) views and the result takes ``X``'s
  shape again, so they compile once per dtype whatever the input's rank;
- ``rows = True``: the kernels get two-dimensional views, every axis but the last merged
  into rows (``(n, ..., d) -> (n ..., d)``), and the output takes the leading axes back, so
  a layer that acts on the last axis (``Dense``, ``LayerNorm``) works on inputs of any rank
  with kernels compiled once per dtype;
- ``kernel_rank = r``: the kernels get arrays of at most ``r`` axes, the axes from the
  ``r``-th on merged into one (``(n, C, H, W) -> (n, C, H W)`` for ``r = 3``), and an output
  of the merged input's shape (``dX``) takes the input's shape back, so a layer that
  reduces or acts on the trailing axes as a whole (``GlobalAvgPool``) works on inputs of
  any rank with kernels compiled once per dtype;
- ``needs_context = True``: :meth:`Layer.call_args` turns the pass's :class:`Context`
  (training mode, key) and the input's shape and dtype into extra kernel arguments
  appended after ``config`` (a dropout mask), kept in the trace for the backward pass;
  :meth:`Layer.updated` gives the layer as a training batch leaves it (new running
  statistics), by default through the optional ``update`` kernel;
- :func:`buffer` fields: arrays the layer carries (and saves) but does not train.

Layers made of layers derive from :class:`Composite` and describe, once, how their members
are wired (:meth:`Composite.lower`); :mod:`jitnn.plan` lowers a whole model into the plan
that the generic passes run and the compiled step is generated from.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, NamedTuple, Sequence, TypeVar

import attrs
import numpy as np

from jitnn import random
from jitnn._checks import FLOAT_DTYPES, describe, float_input, freeze, readonly

__all__ = [
    "Array", "Composite", "Context", "EVALUATION", "Factored", "Kernels", "Layer", "Residuals", "buffer", "layer", "param", "registered_layers",
    "require_shape",
]

Array = np.ndarray
PARAM = "jitnn.param"
BUFFER = "jitnn.buffer"
L = TypeVar("L", bound="Layer")


class Residuals(NamedTuple):
    """The kernels of a layer whose backward pass reuses what its forward pass computed.

    - ``forward(X, *params, *buffers, *config, *extras) -> (Y, R)``: the output and the
      residuals ``R``, a tuple of arrays (or scalars) that the backward pass needs;
    - ``grad_input(X, dY, R, *params, *config, *extras) -> dX``;
    - ``grad_params(X, dY, R, *params, *config, *extras) -> (dL/dW, ...)``, ``None`` for a
      layer without parameters;
    - ``update(R, *buffers, *config, *extras) -> (new buffer, ...)``: the buffers as a
      training batch leaves them (batch normalization's running statistics from the batch
      statistics in ``R``), ``None`` for a layer that has none to update;
    - ``gradients(X, dY, R, *params, *config, *extras) -> (dX, (dL/dW, ...))``, optional:
      both gradients from one backward sweep, for a layer whose two gradients share most of
      their work (backpropagation through time, attention). The passes call it wherever
      both are wanted; it must give the bits ``grad_input`` and ``grad_params`` give.

    The kernels after ``forward`` take no buffers: what they need of them is in ``R``.
    ``Y`` must be the bits :attr:`Kernels.forward` gives (``jn.testing.check_layer``
    checks it), so that a pass that keeps residuals and one that does not agree.
    """

    forward: Callable[..., tuple[Array, tuple[Any, ...]]]
    grad_input: Callable[..., Array]
    grad_params: Callable[..., tuple[Array, ...]] | None = None
    update: Callable[..., tuple[Array, ...]] | None = None
    gradients: Callable[..., tuple[Array, tuple[Array, ...]]] | None = None


class Factored(NamedTuple):
    """A parameters' gradient kernel that gives some gradients as factors instead of arrays.

    - ``grad_params(X, dY, *params, *buffers, *config, *extras)``: the arguments of
      :attr:`Kernels.grad_params`, and one entry per parameter as it gives, except that the
      entry of each parameter named in ``params`` is a pair ``(A, B)`` of 2-D arrays whose
      product ``A.T @ B`` (``A`` (k, m), ``B`` (k, n)) is that parameter's ``(m, n)``
      gradient: ``Dense``'s is ``(X, dY)``, its ``dW = X.T @ dY``.
    - ``params``: the names of those parameters (2-D ones).

    The compiled training step calls it instead of ``grad_params`` for a layer applied once,
    where the call keeps no residuals and the optimizer takes factored gradients (every
    built-in one does). Where ``A`` has one row, the optimizer forms each element
    ``A[0, i] * B[0, j]`` as it updates it, so that the gradient is never stored (at batch 1
    a ``784 x 256`` weight's gradient is written and read back otherwise); with more rows the
    step forms :func:`jitnn.outer_sum` ``(A, B)`` first. The stored gradients (``grad_params``)
    must be ``outer_sum`` of the factors, bit for bit (``jn.testing.check_layer`` checks it
    at the checked batch and at one example), which they are when ``grad_params`` computes
    them with ``outer_sum``.
    """

    grad_params: Callable[..., tuple[Any, ...]]
    params: tuple[str, ...]


class Kernels(NamedTuple):
    """The kernels of a layer (see the module's table for their arguments).

    ``grad_params`` is ``None`` for a layer without parameters. A layer with buffers that a
    training batch changes (running statistics) may give ``update(X, *params, *buffers,
    *config, *extras) -> (new buffer, ...)`` in :attr:`Layer.buffer_names` order: the default
    :meth:`Layer.updated` calls it, and the compiled training step runs it inside the step.

    ``residuals`` (:class:`Residuals`) are kernels that hand what the forward pass computed
    to the backward pass. A layer that gives them may leave ``grad_input`` and
    ``grad_params`` (and ``update``) out: its plain answers then compute the residuals from
    ``X`` first. Where both are given, the plain kernels answer a plain call and the
    residual ones serve the passes; the two must agree bit for bit.

    ``factored`` (:class:`Factored`) gives weight gradients as the factors of a product,
    for the compiled step to update from without storing them.
    """

    forward: Callable[..., Array] | None
    grad_input: Callable[..., Array] | None = None
    grad_params: Callable[..., tuple[Array, ...]] | None = None
    update: Callable[..., tuple[Array, ...]] | None = None
    residuals: Residuals | None = None
    factored: Factored | None = None


def _to_param(value: Any) -> Array:
    """Store ``value`` as a read-only C-contiguous array.

    A read-only array that no writable array can reach is kept as it is (no copy); anything
    else (a list, a writable array, a read-only view of a writable one) is copied first, so
    no array the caller holds can change the parameter.
    """
    array = np.asarray(value)
    if array.flags.writeable or not array.flags.c_contiguous or _reaches_writable(array):
        array = np.array(array, order="C", copy=True)
        array.flags.writeable = False
    return array


def _reaches_writable(array: Array) -> bool:
    base = array.base
    while isinstance(base, np.ndarray):
        if base.flags.writeable:
            return True
        base = base.base
    return False


def _array_equal(a: Array, b: Array) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))


def _array_repr(a: Array) -> str:
    return f"{a.dtype}[{', '.join(map(str, a.shape))}]"


def param() -> Any:
    """Declare a parameter field: an array, made read-only on construction.

    Records compare parameters by value (``np.array_equal``); ``repr`` shows dtype and shape.
    """
    return _array_field(PARAM)


def buffer() -> Any:
    """Declare a buffer field: an array the layer keeps and updates from data (batch
    normalization's running statistics) but that is not trained. Read-only like a
    parameter, saved with the model, handed to the forward-side kernels, and
    left alone by optimizers and gradient checks. Kernels get the buffers after the
    parameters and before the configuration."""
    return _array_field(BUFFER)


def _array_field(kind: str) -> Any:
    """A read-only array field compared by value, tagged ``kind`` (parameter or buffer)."""
    return attrs.field(converter=_to_param, eq=attrs.cmp_using(eq=_array_equal), hash=False, repr=_array_repr, metadata={kind: True})


@attrs.frozen
class Context:
    """What a pass hands to the layers that need it: the mode and a random key.

    ``training`` selects training behaviour (dropout drops, batch normalization uses and
    updates batch statistics); ``key`` is the source of randomness. A layer gets its own
    key from :meth:`key_for`, derived from ``key`` and its position in the model, so the
    same key gives the same numbers and no two layers share them. Nothing is global.
    """

    training: bool = False
    key: Any = None

    def key_for(self, where: str, who: str) -> Any:
        """The key of the layer at position ``where``; ``ValueError`` if no key was given."""
        if self.key is None:
            raise ValueError(f"{who} needs a random key in training mode: pass key= to jitnn.forward, value_and_grad, train_step or fit")
        return random.fold_in(self.key, where or "model")


#: The context of a pass that asks for nothing: evaluation mode, no key.
EVALUATION = Context()


def require_shape(input_shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless the per-example ``input_shape`` equals ``expected``.

    For use in :meth:`Layer.output_shape`; jitnn adds the layer's name and position.
    """
    if tuple(input_shape) != tuple(expected):
        raise ValueError(f"expects per-example input shape {tuple(expected)}, got {tuple(input_shape)}")


class Layer:
    """Base of every layer. Subclass it through the :func:`layer` decorator.

    Shapes in the shape rule (:attr:`input_shape`, :meth:`output_shape`) are per example:
    they leave out the first (batch) axis, which every array passed to a layer has.
    """

    __slots__ = ()

    #: The layer's kernels; ``None`` only for composite layers (``Chain``) that override
    #: the private pass methods instead.
    kernels: ClassVar[Kernels | None] = None
    #: Names of the parameter, buffer and configuration fields (set by ``@layer``).
    param_names: ClassVar[tuple[str, ...]] = ()
    buffer_names: ClassVar[tuple[str, ...]] = ()
    config_names: ClassVar[tuple[str, ...]] = ()
    #: True for a layer whose kernels take per-call arguments from the pass's
    #: :class:`Context` (see :meth:`call_args`).
    needs_context: ClassVar[bool] = False
    #: True for a layer whose kernels work element by element: they are handed flat (1-D)
    #: views, so they compile once per dtype whatever the input's rank.
    elementwise: ClassVar[bool] = False
    #: True for a layer that acts on the last axis alone: its kernels are handed 2-D views
    #: ``(rows, last axis)`` of inputs of any rank, and outputs take the leading axes back.
    rows: ClassVar[bool] = False
    #: For a layer whose kernels take arrays of a fixed rank ``r``: every array of more axes
    #: is handed to them with its axes from the ``r``-th on merged into one (``(n, C, H, W)
    #: -> (n, C, H W)`` for 3), and an output of the merged input's shape takes the input's
    #: shape back. ``None``: arrays as they are.
    kernel_rank: ClassVar[int | None] = None

    # ------------------------------------------------------------------ the shape rule
    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The per-example input shape this layer requires, or ``None`` if it accepts any."""
        return None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The per-example output shape for ``input_shape``; raise ``ValueError`` if it is not
        accepted. The default keeps the shape (element-wise layers)."""
        return tuple(input_shape)

    def check_params(self) -> None:
        """Raise ``ValueError`` if the parameter arrays do not fit together (override)."""

    # ------------------------------------------------------------------ what the kernels get
    @property
    def params(self) -> tuple[Array, ...]:
        """The parameter arrays, in declaration order."""
        return tuple(getattr(self, name) for name in self.param_names)

    @property
    def buffers(self) -> tuple[Array, ...]:
        """The buffer arrays, in declaration order."""
        return tuple(getattr(self, name) for name in self.buffer_names) if self.buffer_names else ()

    def config(self) -> tuple[Any, ...]:
        """The static configuration handed to the kernels after the parameters and buffers.

        By default the fields that are neither parameters nor buffers, in declaration order;
        a layer may override it to hand the kernels values derived from its fields.
        """
        return tuple(getattr(self, name) for name in self.config_names)

    @property
    def dtype(self) -> np.dtype | None:
        """The parameters' dtype, or ``None`` for a layer without parameters."""
        for name in self.param_names:
            return getattr(self, name).dtype
        return None

    def with_params(self: L, arrays: Sequence[Array]) -> L:
        """A copy of this record whose parameter fields hold ``arrays`` (in declaration order)."""
        return attrs.evolve(self, **dict(zip(self.param_names, arrays)))

    def __attrs_post_init__(self) -> None:
        arrays = self.param_names + self.buffer_names
        dtypes = set()
        for name in arrays:
            value = getattr(self, name)
            if value.dtype not in FLOAT_DTYPES:
                raise TypeError(f"{type(self).__name__}.{name}: parameters must be float32 or float64, got {value.dtype}")
            dtypes.add(value.dtype)
        if len(dtypes) > 1:
            found = ", ".join(f"{n}: {getattr(self, n).dtype}" for n in arrays)
            raise TypeError(f"{type(self).__name__}: all parameters must share one dtype, got {found}")
        self.check_params()

    # ------------------------------------------------------------------ layers that need the context
    def call_args(self, X: Array, context: Context, where: str) -> tuple[Any, ...]:
        """Per-call arguments handed to all three kernels after the configuration (only
        for a layer with ``needs_context = True``): a dropout mask drawn from the layer's
        key, a training flag. The trace keeps them, so the backward pass sees the same.

        Only ``X``'s shape and dtype may be read, not its values: the compiled training
        step calls this before the step runs, with a stand-in of the right shape and
        dtype (values the layer needs belong in its kernels).
        """
        return ()

    def updated(self: L, X: Array, call_args: tuple[Any, ...]) -> L:
        """The layer after a training batch: with an ``update`` kernel (plain or residual),
        a copy holding the buffers it returns (new running statistics); otherwise itself."""
        return self._updated(X, None, call_args)

    # ------------------------------------------------------------------ public answers
    def forward(self, X: Any) -> Array:
        """[1] The output ``Y = f(X; W)`` for a batch ``X`` of shape ``(n, *input_shape)``.

        Floating-point input of another dtype or memory layout is converted once to the
        parameters' dtype; anything else raises ``TypeError`` or ``ValueError``.
        """
        from jitnn import plan

        return plan.forward_only(self, self._input(X))

    __call__ = forward

    def grad_input(self, X: Any, dY: Any) -> Array:
        """[2] ``dX = dL/dX`` (shape of ``X``) given ``dY = dL/dY`` (shape of the output)."""
        from jitnn import plan

        return plan.plain_gradients(self, *self._boundary(X, dY), params=False, inputs=True)[1]

    def grad_params(self: L, X: Any, dY: Any) -> L:
        """[3] A new record of this layer's type whose parameter fields hold ``dL/dW``.

        A layer without parameters returns itself (once ``X`` and ``dY`` are checked).
        """
        from jitnn import plan

        return plan.plain_gradients(self, *self._boundary(X, dY), params=True, inputs=False)[0]

    def _input(self, X: Any) -> Array:
        """Check and convert a batch at the model's boundary (floating-point data)."""
        return float_input(X, self.dtype, describe(self))

    def _boundary(self, X: Any, dY: Any) -> tuple[Array, Array]:
        X = self._input(X)
        return X, float_input(dY, self.dtype or X.dtype, describe(self), "output gradient dY")

    def _check_input(self, X: Array, where: str) -> None:
        """Check the values of an input inside a model before a kernel sees them (the shape
        rule has checked the shape): a layer whose kernels index with their input does
        (``Embedding``). Nothing by default."""

    # ------------------------------------------------------------------ the kernel convention
    # The one place where a leaf layer's kernels are called. The plan's passes call these
    # with arrays whose shapes the shape rule has already accepted; ``where`` is the layer's
    # position in the model (".layers[2]"), for error messages.
    def _run_forward(self, X: Array, extras: tuple[Any, ...], keep: bool) -> tuple[Array, Any]:
        """``(Y, R)``: the output and, with ``keep`` and residual kernels, the residuals
        (``None`` otherwise)."""
        kernels = self.kernels
        residuals = kernels.residuals
        x, extras = self._kernel_view(X), self._kernel_extras(extras)
        arguments = (*self.params, *self.buffers, *self.config(), *extras)
        if kernels.forward is not None and not (keep and residuals is not None):
            Y, R = kernels.forward(readonly(x), *arguments), None
        else:
            Y, R = residuals.forward(readonly(x), *arguments)
            R = R if keep else None
        return self._output_view(Y, X), R

    def _residuals(self, X: Array, extras: tuple[Any, ...]) -> Any:
        """The residuals of ``X``, computed afresh (a plain call without a trace)."""
        return self._run_forward(X, extras, True)[1]

    def _run_backward(
        self, X: Array, dY: Array, R: Any, extras: tuple[Any, ...], where: str, params: bool, inputs: bool
    ) -> tuple[tuple[Array, ...] | None, Array | None]:
        """``(parameter gradients, dX)``, each only if asked for: with the residuals ``R``
        of the forward pass if it kept them, else with the plain kernels (or residuals
        computed now, for a layer that has only residual kernels)."""
        kernels = self.kernels
        residuals = kernels.residuals
        params = params and bool(self.param_names)
        plain = R is None and (kernels.grad_input is not None or not inputs) and (kernels.grad_params is not None or not params)
        if not plain and R is None:
            R = self._residuals(X, extras)
        x, d, extras = readonly(self._kernel_view(X)), readonly(self._kernel_view(dY)), self._kernel_extras(extras)
        if plain:
            head, arguments = (x, d), (*self.params, *self.buffers, *self.config(), *extras)
            grad_params, grad_input = kernels.grad_params, kernels.grad_input
        else:
            head, arguments = (x, d, R), (*self.params, *self.config(), *extras)
            grad_params, grad_input = residuals.grad_params, residuals.grad_input
        grads = dX = None
        if params and inputs and not plain and residuals.gradients is not None:
            dX, grads = residuals.gradients(*head, *arguments)
        elif params:
            grads = grad_params(*head, *arguments)
        if grads is not None:
            if not isinstance(grads, tuple) or len(grads) != len(self.param_names):
                raise TypeError(f"{describe(self, where)}: grad_params kernel must return a tuple of {len(self.param_names)} arrays")
            for name, grad in zip(self.param_names, grads):
                if grad.shape != getattr(self, name).shape:
                    raise ValueError(f"{describe(self, where)}: gradient of {name} has shape {grad.shape}, expected {getattr(self, name).shape}")
        if inputs:
            dX = grad_input(*head, *arguments) if dX is None else dX
            dX = dX.reshape(X.shape) if self.elementwise or self.rows or self.kernel_rank is not None else dX
            if dX.shape != X.shape:
                raise ValueError(f"{describe(self, where)}: grad_input kernel returned shape {dX.shape}, the input has {X.shape}")
        return grads, dX

    def _factored_gradients(self, X: Array, dY: Array) -> tuple[Any, ...]:
        """What the ``Kernels.factored`` kernel gives at ``X`` for ``dY`` in evaluation mode,
        with the arguments of the plain ``grad_params`` kernel (for checks and the warmup)."""
        X, dY = self._boundary(X, dY)
        extras = self._kernel_extras(self.call_args(X, EVALUATION, "") if self.needs_context else ())
        x, d = readonly(self._kernel_view(X)), readonly(self._kernel_view(dY))
        return self.kernels.factored.grad_params(x, d, *self.params, *self.buffers, *self.config(), *extras)

    def _updated(self: L, X: Array, R: Any, extras: tuple[Any, ...]) -> L:
        """The layer with the buffers its ``update`` kernel gives for this batch (the
        residual one, from ``R`` or residuals computed now, where there is one)."""
        kernels = self.kernels
        residual_update = kernels.residuals.update if kernels.residuals is not None else None
        if residual_update is not None:
            R = self._residuals(X, extras) if R is None else R
            new = residual_update(R, *self.buffers, *self.config(), *self._kernel_extras(extras))
        elif kernels.update is not None:
            new = kernels.update(readonly(self._kernel_view(X)), *self.params, *self.buffers, *self.config(), *self._kernel_extras(extras))
        else:
            return self
        if not isinstance(new, tuple) or len(new) != len(self.buffer_names):
            raise TypeError(f"{describe(self)}: update kernel must return a tuple of {len(self.buffer_names)} arrays (one per buffer)")
        return attrs.evolve(self, **{name: freeze(value) for name, value in zip(self.buffer_names, new)})

    def _kernel_view(self, A: Array) -> Array:
        """``A`` as the kernels see it: flat for an element-wise layer, ``(rows, last
        axis)`` for a ``rows`` layer, its trailing axes merged down to ``kernel_rank`` axes,
        as it is otherwise."""
        if self.elementwise:
            return A.reshape(-1)
        if self.rows:
            return A.reshape(-1, A.shape[-1]) if A.ndim != 2 else A
        rank = self.kernel_rank
        return A.reshape(A.shape[: rank - 1] + (-1,)) if rank is not None and A.ndim > rank else A

    def _kernel_extras(self, extras: tuple[Any, ...]) -> tuple[Any, ...]:
        """Per-call arguments as the kernels get them: arrays viewed as :meth:`_kernel_view` views ``X``."""
        if not (self.elementwise or self.rows or self.kernel_rank is not None):
            return extras
        return tuple(self._kernel_view(v) if isinstance(v, np.ndarray) else v for v in extras)

    def _output_view(self, Y: Array, X: Array) -> Array:
        """A kernel's output ``Y`` for the input ``X``, with the axes :meth:`_kernel_view` merged given back."""
        if self.elementwise:
            return Y.reshape(X.shape)
        if self.rows:
            return Y.reshape(X.shape[:-1] + Y.shape[-1:]) if X.ndim != 2 else Y
        rank = self.kernel_rank
        if rank is not None and X.ndim > rank and Y.shape == X.shape[: rank - 1] + (int(np.prod(X.shape[rank - 1 :])),):
            return Y.reshape(X.shape)
        return Y

    # ------------------------------------------------------------------ description
    def label(self) -> str:
        """The layer as :func:`jitnn.summary` names it: the class name, followed by the
        configuration that tells instances apart where the layer overrides this
        (``"Dense(784 -> 256)"``)."""
        return type(self).__name__



class Composite(Layer):
    """Base of the layers made of layers (``Chain``, ``Residual``, ``Concatenate``...).

    Its members are its fields that hold a layer or a tuple of layers, in field order. It
    says once how they are wired, in :meth:`lower`, from which the generic passes, the
    compiled step and (unless it gives its own) its shape rule all follow::

        @jn.layer
        class DenseBlock(jn.Composite):      # Y = [X, f(X)] along the features
            inner: jn.Layer

            def lower(self, plan, x):
                return plan.concat([x, plan.apply(self.inner, x)], axis=0)
    """

    __slots__ = ()

    def lower(self, plan: Any, x: Any) -> Any:
        """Wire the members: given the :class:`jitnn.plan.Planner` ``plan`` and the slot
        ``x`` holding this layer's input, return the slot holding its output, made with
        ``plan.apply(member, slot)``, ``plan.add(*slots)`` and ``plan.concat(slots, axis)``
        (each slot has a per-example ``shape``)."""
        raise NotImplementedError

    def _member_fields(self) -> list[tuple[str, bool]]:
        """``(name, is_tuple)`` of each field that holds a layer or a tuple of layers."""
        found = []
        for field in type(self).__attrs_attrs__:
            value = getattr(self, field.name)
            if isinstance(value, Layer):
                found.append((field.name, False))
            elif type(value) is tuple and value and all(isinstance(v, Layer) for v in value):
                found.append((field.name, True))
        return found

    def named_members(self) -> tuple[tuple[str, Layer], ...]:
        """Each member with the suffix that names its position (``".layers[2]"``): the
        passes build each layer's ``where`` (error messages, its random key) from these."""
        named: list[tuple[str, Layer]] = []
        for name, is_tuple in self._member_fields():
            value = getattr(self, name)
            if is_tuple:
                named.extend((f".{name}[{i}]", v) for i, v in enumerate(value))
            else:
                named.append((f".{name}", value))
        return tuple(named)

    @property
    def members(self) -> tuple[Layer, ...]:
        """The layers this one is made of, in order."""
        members: list[Layer] = []
        for name, is_tuple in self._member_fields():
            value = getattr(self, name)
            members.extend(value) if is_tuple else members.append(value)
        return tuple(members)

    def _first_member(self) -> Layer:
        for field in type(self).__attrs_attrs__:
            value = getattr(self, field.name)
            if isinstance(value, Layer):
                return value
            if type(value) is tuple and value and all(isinstance(v, Layer) for v in value):
                return value[0]
        raise TypeError(f"{type(self).__name__} has no members (fields holding layers)")

    def with_members(self: L, members: Sequence[Layer]) -> L:
        """A copy whose members (in :attr:`members` order) are ``members``: how gradient
        records and updated models of a composite's structure are made."""
        supply, changes = iter(members), {}
        for name, is_tuple in self._member_fields():
            count = len(getattr(self, name)) if is_tuple else 1
            taken = tuple(next(supply) for _ in range(count))
            changes[name] = taken if is_tuple else taken[0]
        return attrs.evolve(self, **changes)

    @property
    def dtype(self) -> np.dtype | None:
        for member in self.members:
            if member.dtype is not None:
                return member.dtype
        return None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape that :meth:`lower` gives (a composite may state its own rule)."""
        from jitnn import plan

        return plan.output_shape_of(self, tuple(input_shape))

    def _input(self, X: Any) -> Array:
        """The layer applied first decides what input it takes (indices for an embedding);
        floating-point input is converted to the whole model's dtype."""
        first = self._first_member()
        while isinstance(first, Composite):
            first = first._first_member()
        if type(first)._input is not Layer._input:
            return first._input(X)
        return float_input(X, self.dtype, describe(self))


_REGISTRY: list[type] = []


def _read_only_after(setstate: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """attrs' ``__setstate__`` (unpickling) followed by marking the parameter and buffer
    arrays read-only again: unpickled arrays are fresh copies that no one else holds, but
    NumPy unpickles every array writable and attrs sets fields without their converters."""

    def __setstate__(self: Any, state: Any) -> None:
        setstate(self, state)
        for name in self.param_names + self.buffer_names:
            getattr(self, name).flags.writeable = False

    return __setstate__


def layer(cls: type) -> type:
    """Make ``cls`` a jitnn layer: a frozen ``attrs`` record that follows the protocol.

    The class declares parameter fields with :func:`param`, configuration fields as plain
    annotated attributes (ints, floats, tuples), ``kernels = Kernels(...)`` and, unless it
    keeps its input's shape, a shape rule (:attr:`Layer.input_shape`,
    :meth:`Layer.output_shape`). It need not subclass :class:`Layer`; the decorator adds it.
    """
    if not issubclass(cls, Layer):
        namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
        bases = tuple(b for b in cls.__bases__ if b is not object) + (Layer,)
        cls = type(cls.__name__, bases, namespace)
    cls = attrs.frozen(cls)
    fields = attrs.fields(cls)
    cls.param_names = tuple(f.name for f in fields if f.metadata.get(PARAM))
    cls.buffer_names = tuple(f.name for f in fields if f.metadata.get(BUFFER))
    cls.config_names = tuple(f.name for f in fields if not (f.metadata.get(PARAM) or f.metadata.get(BUFFER)))
    cls.__setstate__ = _read_only_after(cls.__setstate__)
    if issubclass(cls, Composite):
        if cls.lower is Composite.lower:
            raise TypeError(f"composite layer {cls.__name__} must define lower(plan, x), which wires its members")
    else:
        _check_kernels(cls)
    _REGISTRY.append(cls)
    return cls


def _check_kernels(cls: type) -> None:
    """A leaf layer must bring kernels for all three answers (plain or residual)."""
    kernels = cls.kernels
    if not isinstance(kernels, Kernels):
        raise TypeError(f"layer {cls.__name__} must define kernels = Kernels(forward, grad_input, grad_params)")
    residuals = kernels.residuals
    if residuals is not None and not isinstance(residuals, Residuals):
        raise TypeError(f"layer {cls.__name__}: Kernels.residuals must be a jitnn.Residuals, got {type(residuals).__name__}")
    if kernels.forward is None and residuals is None:
        raise TypeError(f"layer {cls.__name__} has no forward kernel")
    if kernels.grad_input is None and residuals is None:
        raise TypeError(f"layer {cls.__name__} has no grad_input kernel")
    if cls.param_names and kernels.grad_params is None and (residuals is None or residuals.grad_params is None):
        raise TypeError(f"layer {cls.__name__} has parameters {cls.param_names} but no grad_params kernel")
    factored = kernels.factored
    if factored is not None:
        if not isinstance(factored, Factored):
            raise TypeError(f"layer {cls.__name__}: Kernels.factored must be a jitnn.Factored, got {type(factored).__name__}")
        unknown = [name for name in factored.params if name not in cls.param_names]
        if unknown or not factored.params:
            raise TypeError(f"layer {cls.__name__}: Factored.params must name some of its parameters {cls.param_names}, got {factored.params}")
        if kernels.grad_params is None:
            raise TypeError(f"layer {cls.__name__}: Kernels.factored needs the plain grad_params kernel it stands for")


def registered_layers() -> tuple[type, ...]:
    """Every class made with :func:`layer` so far, jitnn's own and users' alike."""
    return tuple(_REGISTRY)
