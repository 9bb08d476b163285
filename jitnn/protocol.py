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
sees it, because kernels do not check bounds.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, NamedTuple, Sequence, TypeVar

import attrs
import numpy as np

from jitnn._checks import FLOAT_DTYPES, describe, float_input, freeze, readonly

__all__ = ["Array", "Kernels", "Layer", "layer", "param", "registered_layers", "require_shape"]

Array = np.ndarray
PARAM = "jitnn.param"
L = TypeVar("L", bound="Layer")


class Kernels(NamedTuple):
    """The three kernels of a layer; ``grad_params`` is ``None`` for a layer without parameters."""

    forward: Callable[..., Array]
    grad_input: Callable[..., Array]
    grad_params: Callable[..., tuple[Array, ...]] | None = None


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
    config_names: ClassVar[tuple[str, ...]] = ()

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
        dtypes = set()
        for name in self.param_names:
            value = getattr(self, name)
            if value.dtype not in FLOAT_DTYPES:
                raise TypeError(f"{type(self).__name__}.{name}: parameters must be float32 or float64, got {value.dtype}")
            dtypes.add(value.dtype)
        if len(dtypes) > 1:
            found = ", ".join(f"{n}: {getattr(self, n).dtype}" for n in self.param_names)
            raise TypeError(f"{type(self).__name__}: all parameters must share one dtype, got {found}")
        self.check_params()

    # ------------------------------------------------------------------ public answers
    def forward(self, X: Any) -> Array:
        """[1] The output ``Y = f(X; W)`` for a batch ``X`` of shape ``(n, *input_shape)``.

        Floating-point input of another dtype or memory layout is converted once to the
        parameters' dtype; anything else raises ``TypeError`` or ``ValueError``.
        """
        return self._forward(float_input(X, self.dtype, describe(self)), "")

    __call__ = forward

    def grad_input(self, X: Any, dY: Any) -> Array:
        """[2] ``dX = dL/dX`` (shape of ``X``) given ``dY = dL/dY`` (shape of the output)."""
        X, dY = self._boundary(X, dY)
        return self._grad_input(X, dY, "")

    def grad_params(self: L, X: Any, dY: Any) -> L:
        """[3] A new record of this layer's type whose parameter fields hold ``dL/dW``.

        A layer without parameters returns itself.
        """
        X, dY = self._boundary(X, dY)
        return self._grad_params(X, dY, "")

    def _boundary(self, X: Any, dY: Any) -> tuple[Array, Array]:
        who = describe(self)
        X = float_input(X, self.dtype, who)
        return X, float_input(dY, X.dtype, who, "output gradient dY")

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

    def _forward(self, X: Array, where: str) -> Array:
        self._check(X, where)
        return self.kernels.forward(readonly(X), *self.params, *self.config())

    def _grad_input(self, X: Array, dY: Array, where: str) -> Array:
        self._check(X, where, dY)
        return self.kernels.grad_input(readonly(X), readonly(dY), *self.params, *self.config())

    def _grad_params(self: L, X: Array, dY: Array, where: str) -> L:
        if not self.param_names:
            return self
        self._check(X, where, dY)
        grads = self.kernels.grad_params(readonly(X), readonly(dY), *self.params, *self.config())
        if not isinstance(grads, tuple) or len(grads) != len(self.param_names):
            raise TypeError(f"{describe(self, where)}: grad_params kernel must return a tuple of {len(self.param_names)} arrays")
        for name, grad in zip(self.param_names, grads):
            if grad.shape != getattr(self, name).shape:
                raise ValueError(f"{describe(self, where)}: gradient of {name} has shape {grad.shape}, expected {getattr(self, name).shape}")
        return self.with_params([freeze(grad) for grad in grads])

    def _trace(self, X: Array, where: str) -> tuple[Array, Any]:
        """Forward, keeping what the backward pass needs (for a leaf layer: its input)."""
        return self._forward(X, where), X

    def _backward(self, trace: Any, dY: Array, where: str, need_input_grad: bool = True) -> tuple[Any, Array | None]:
        """Gradient record and (unless not needed) ``dX``, from what :meth:`_trace` kept."""
        grads = self._grad_params(trace, dY, where)
        return grads, (self._grad_input(trace, dY, where) if need_input_grad else None)


_REGISTRY: list[type] = []


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
    cls.config_names = tuple(f.name for f in fields if not f.metadata.get(PARAM))
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
