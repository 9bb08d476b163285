"""The layer protocol: a frozen record of parameters plus three kernels.

A layer answers three questions, each through an ``@jit`` kernel with one calling
convention (``params`` are the parameter fields in declaration order, ``config`` is
:meth:`Layer.config`, by default the other fields in declaration order):

====  ==========================  =============================================
[1]   ``forward(X, *params, *config)``                 ``-> Y = f(X; W)``
[2]   ``grad_input(X, dY, *params, *config)``          ``-> dX = dL/dX``
[3]   ``grad_params(X, dY, *params, *config)``         ``-> (dL/dW, ...)``, one per parameter
====  ==========================  =============================================

Everything else (the passes, the optimizers, the gradient checks) is written once in
terms of these answers. The Python methods here validate every array before a kernel
sees it, because kernels do not check bounds, and hand kernels read-only arrays only.

Three optional extensions, each a class attribute or method of the record:

- ``elementwise = True``: the kernels get flat (1-D) views and the result takes ``X``'s
  shape again, so they compile once per dtype whatever the input's rank;
- ``needs_context = True``: :meth:`Layer.call_args` turns the pass's :class:`Context`
  (training mode, key) and the input's shape and dtype into extra kernel arguments
  appended after ``config`` (a dropout mask), kept in the trace for the backward pass;
  :meth:`Layer.updated` gives the layer as a training batch leaves it (new running
  statistics), by default through the optional ``Kernels.update`` kernel;
- :func:`buffer` fields: arrays the layer carries (and saves) but does not train.

Layers made of layers derive from :class:`Composite` and implement the passes over their
``members`` instead of kernels.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, NamedTuple, Sequence, TypeVar

import attrs
import numpy as np

from jitnn import random
from jitnn._checks import FLOAT_DTYPES, describe, float_input, freeze, readonly

__all__ = ["Array", "Composite", "Context", "EVALUATION", "Kernels", "Layer", "buffer", "layer", "param", "registered_layers", "require_shape"]

Array = np.ndarray
PARAM = "jitnn.param"
BUFFER = "jitnn.buffer"
L = TypeVar("L", bound="Layer")


class Kernels(NamedTuple):
    """The three kernels of a layer; ``grad_params`` is ``None`` for a layer without parameters.

    A layer with buffers that a training batch changes (running statistics) may give a
    fourth, ``update(X, *params, *config, *call_args) -> (new buffer, ...)`` in
    :attr:`Layer.buffer_names` order: the default :meth:`Layer.updated` calls it, and the
    compiled training step (:func:`jitnn.compile_step`) runs it inside the step.
    """

    forward: Callable[..., Array]
    grad_input: Callable[..., Array]
    grad_params: Callable[..., tuple[Array, ...]] | None = None
    update: Callable[..., tuple[Array, ...]] | None = None


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
    return attrs.field(
        converter=_to_param,
        eq=attrs.cmp_using(eq=_array_equal),
        hash=False,
        repr=_array_repr,
        metadata={PARAM: True},
    )


def buffer() -> Any:
    """Declare a buffer field: an array the layer keeps and updates from data (batch
    normalization's running statistics) but that is not trained. Read-only like a
    parameter, saved with the model, handed to the kernels with the configuration, and
    left alone by optimizers and gradient checks."""
    return attrs.field(
        converter=_to_param,
        eq=attrs.cmp_using(eq=_array_equal),
        hash=False,
        repr=_array_repr,
        metadata={BUFFER: True},
    )


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
    #: Names of the parameter fields, then of the configuration fields (set by ``@layer``).
    param_names: ClassVar[tuple[str, ...]] = ()
    buffer_names: ClassVar[tuple[str, ...]] = ()
    config_names: ClassVar[tuple[str, ...]] = ()
    #: True for a layer whose kernels take per-call arguments from the pass's
    #: :class:`Context` (see :meth:`call_args`).
    needs_context: ClassVar[bool] = False
    #: True for a layer whose kernels work element by element: they are handed flat (1-D)
    #: views, so they compile once per dtype whatever the input's rank.
    elementwise: ClassVar[bool] = False

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

    def config(self) -> tuple[Any, ...]:
        """The static configuration handed to the kernels after the parameters.

        By default the non-parameter fields in declaration order; a layer may override it to
        hand the kernels values derived from its fields.
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
        """The layer after a training batch: with a ``Kernels.update`` kernel, a copy
        holding the buffers it returns (new running statistics); otherwise itself."""
        update = self.kernels.update if self.kernels is not None else None
        if update is None:
            return self
        if self.elementwise:
            X, call_args = X.reshape(-1), _flat(call_args)
        new = update(readonly(X), *self.params, *self.config(), *call_args)
        if not isinstance(new, tuple) or len(new) != len(self.buffer_names):
            raise TypeError(f"{describe(self)}: update kernel must return a tuple of {len(self.buffer_names)} arrays (one per buffer)")
        return attrs.evolve(self, **{name: freeze(value) for name, value in zip(self.buffer_names, new)})

    # ------------------------------------------------------------------ public answers
    def forward(self, X: Any) -> Array:
        """[1] The output ``Y = f(X; W)`` for a batch ``X`` of shape ``(n, *input_shape)``.

        Floating-point input of another dtype or memory layout is converted once to the
        parameters' dtype; anything else raises ``TypeError`` or ``ValueError``.
        """
        return self._forward(self._input(X), "")

    __call__ = forward

    def grad_input(self, X: Any, dY: Any) -> Array:
        """[2] ``dX = dL/dX`` (shape of ``X``) given ``dY = dL/dY`` (shape of the output)."""
        X, dY = self._boundary(X, dY)
        return self._grad_input(X, dY, "")

    def grad_params(self: L, X: Any, dY: Any) -> L:
        """[3] A new record of this layer's type whose parameter fields hold ``dL/dW``.

        A layer without parameters returns itself (once ``X`` and ``dY`` are checked).
        """
        X, dY = self._boundary(X, dY)
        if not self.param_names and not isinstance(self, Composite):
            self._check(X, "", dY)
        return self._grad_params(X, dY, "")

    def _input(self, X: Any) -> Array:
        """Check and convert a batch at the model's boundary (floating-point data)."""
        return float_input(X, self.dtype, describe(self))

    def _boundary(self, X: Any, dY: Any) -> tuple[Array, Array]:
        X = self._input(X)
        return X, float_input(dY, self.dtype or X.dtype, describe(self), "output gradient dY")

    # ------------------------------------------------------------------ checked kernel calls
    # ``where`` is the layer's position in the model (".layers[2]"), used in error messages.
    # Composite layers override these five methods; everything else is generic.
    def _check(self, X: Array, where: str, dY: Array | None = None) -> None:
        try:
            out = self.output_shape(X.shape[1:])
        except ValueError as error:
            raise ValueError(f"{describe(self, where)}: {error} (input array of shape {X.shape})") from None
        if dY is not None and dY.shape != (X.shape[0], *out):
            raise ValueError(
                f"{describe(self, where)}: the output gradient dY must have shape {(X.shape[0], *out)}, got {dY.shape}"
            )

    def _forward(self, X: Array, where: str, context: Context = EVALUATION) -> Array:
        self._check(X, where)
        extra = self.call_args(X, context, where) if self.needs_context else ()
        return self._call(self.kernels.forward, X, None, extra)

    def _grad_input(self, X: Array, dY: Array, where: str, extra: tuple[Any, ...] = ()) -> Array:
        self._check(X, where, dY)
        if self.needs_context and not extra:
            extra = self.call_args(X, EVALUATION, where)
        return self._call(self.kernels.grad_input, X, dY, extra)

    def _call(self, kernel: Callable[..., Array], X: Array, dY: Array | None, extra: tuple[Any, ...]) -> Array:
        """``kernel(X, [dY,] *params, *config, *extra)`` on read-only arrays (flat ones for an
        element-wise layer, whose result takes ``X``'s shape again)."""
        arrays = (X,) if dY is None else (X, dY)
        if self.elementwise:
            arrays, extra = tuple(a.reshape(-1) for a in arrays), _flat(extra)
            return kernel(*map(readonly, arrays), *self.params, *self.config(), *extra).reshape(X.shape)
        return kernel(*map(readonly, arrays), *self.params, *self.config(), *extra)

    def _grad_params(self: L, X: Array, dY: Array, where: str, extra: tuple[Any, ...] = ()) -> L:
        if not self.param_names:
            return self
        self._check(X, where, dY)
        if self.needs_context and not extra:
            extra = self.call_args(X, EVALUATION, where)
        grads = self.kernels.grad_params(readonly(X), readonly(dY), *self.params, *self.config(), *extra)
        if not isinstance(grads, tuple) or len(grads) != len(self.param_names):
            raise TypeError(f"{describe(self, where)}: grad_params kernel must return a tuple of {len(self.param_names)} arrays")
        for name, grad in zip(self.param_names, grads):
            if grad.shape != getattr(self, name).shape:
                raise ValueError(f"{describe(self, where)}: gradient of {name} has shape {grad.shape}, expected {getattr(self, name).shape}")
        return self.with_params([freeze(grad) for grad in grads])

    def _trace(self: L, X: Array, where: str, context: Context = EVALUATION) -> tuple[Array, Any, L]:
        """Forward, keeping what the backward pass needs (for a leaf layer: its input, and
        its per-call arguments if it has any); also the layer as updated by the batch."""
        if not self.needs_context:
            return self._forward(X, where), X, self
        self._check(X, where)
        extra = self.call_args(X, context, where)
        Y = self._call(self.kernels.forward, X, None, extra)
        return Y, (X, extra), (self.updated(X, extra) if context.training else self)

    def _backward(self, trace: Any, dY: Array, where: str, need_input_grad: bool = True) -> tuple[Any, Array | None]:
        """Gradient record and (unless not needed) ``dX``, from what :meth:`_trace` kept."""
        X, extra = trace if self.needs_context else (trace, ())
        grads = self._grad_params(X, dY, where, extra)
        return grads, (self._grad_input(X, dY, where, extra) if need_input_grad else None)


def _flat(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """Per-call arguments as an element-wise layer's kernels get them: arrays flattened."""
    return tuple(v.reshape(-1) if isinstance(v, np.ndarray) else v for v in values)


class Composite(Layer):
    """Base of the layers made of layers (``Chain``, ``Residual``, ``Concatenate``...):
    they implement ``_forward``, ``_trace`` and ``_backward`` over their members; their
    ``grad_input`` and ``grad_params`` are a traced forward then a backward pass."""

    __slots__ = ()

    @property
    def members(self) -> tuple[Layer, ...]:
        """The layers this one is made of, in order."""
        raise NotImplementedError

    def named_members(self) -> tuple[tuple[str, Layer], ...]:
        """Each member with the suffix that names its position (``".layers[2]"``): the
        passes build each layer's ``where`` (error messages, its random key) from these."""
        raise NotImplementedError

    def _emit(self, source: Any, x: str, shape: tuple[int, ...], where: str) -> tuple[str, tuple[int, ...], Callable[[str, bool], str | None]]:
        """Write this layer's part of a compiled training step (see ``jitnn/_codegen.py``).

        Given the variable ``x`` holding the input (per-example shape ``shape``), emit the
        forward lines through ``source`` and return the output variable, the output's
        per-example shape and a function ``backward(dy, need_input_grad) -> dx`` that emits
        the backward lines when called (in reverse order of the forward ones). A composite
        layer without it cannot be compiled; the generic passes still work.
        """
        raise TypeError(f"{type(self).__name__} has no compiled form (it does not implement Composite._emit)")

    def _input(self, X: Any) -> Array:
        """The layer applied first decides what input it takes (indices for an embedding);
        floating-point input is converted to the whole model's dtype."""
        first = self.members[0]
        while isinstance(first, Composite):
            first = first.members[0]
        if type(first)._input is not Layer._input:
            return first._input(X)
        return float_input(X, self.dtype, describe(self))

    def _grad_input(self, X: Array, dY: Array, where: str, extra: tuple[Any, ...] = ()) -> Array:
        return self._backward(self._checked_trace(X, dY, where), dY, where)[1]

    def _grad_params(self: L, X: Array, dY: Array, where: str, extra: tuple[Any, ...] = ()) -> L:
        return self._backward(self._checked_trace(X, dY, where), dY, where, need_input_grad=False)[0]

    def _checked_trace(self, X: Array, dY: Array, where: str) -> Any:
        """The trace of ``X`` (its members check the input, naming themselves), once ``dY``
        is known to have the output's shape."""
        Y, trace, _ = self._trace(X, where)
        if dY.shape != Y.shape:
            raise ValueError(f"{describe(self, where)}: the output gradient dY must have shape {Y.shape}, got {dY.shape}")
        return trace


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
    cls.config_names = tuple(f.name for f in fields if not f.metadata.get(PARAM))
    cls.__setstate__ = _read_only_after(cls.__setstate__)
    if cls._forward is Layer._forward:  # a leaf layer: it must bring its kernels
        if not isinstance(cls.kernels, Kernels):
            raise TypeError(f"layer {cls.__name__} must define kernels = Kernels(forward, grad_input, grad_params)")
        if cls.param_names and cls.kernels.grad_params is None:
            raise TypeError(f"layer {cls.__name__} has parameters {cls.param_names} but no grad_params kernel")
    _REGISTRY.append(cls)
    return cls


def registered_layers() -> tuple[type, ...]:
    """Every class made with :func:`layer` so far, jitnn's own and users' alike."""
    return tuple(_REGISTRY)
