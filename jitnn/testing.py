"""Tools to test layers and losses: the conformance suite, gradient checks and full Jacobians.

All are generic: they use only the public answers of the layer protocol and the public
passes, so they work for any layer, a user's own included. :func:`check_layer` runs on one
layer everything jitnn's own test suite requires of its built-in layers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import attrs
import numpy as np

from jitnn import passes, random, tree, validate
from jitnn._blas import outer_sum
from jitnn._checks import FLOAT_DTYPES, describe, float_input
from jitnn.inspection import summary
from jitnn.losses import Loss, MeanSquaredError
from jitnn.optim import sgd
from jitnn.protocol import Composite, Layer
from jitnn.step import compile_step
from jitnn.train import train_step

__all__ = [
    "LAYER_CHECKS", "LayerCheckError", "LayerReport", "check_grads", "check_layer", "check_loss_grad", "jacobian", "numerical_gradient",
    "relative_error",
]


def _check_tolerances(who: str, eps: Any, rtol: Any, atol: Any) -> None:
    """``eps`` must be a finite positive number, ``rtol`` and ``atol`` finite non-negative ones."""
    for name, value, check in (("eps", eps, validate.positive_real), ("rtol", rtol, validate.non_negative_real), ("atol", atol, validate.non_negative_real)):
        validate.real(value, who, name, finite=False)  # TypeError unless a number
        check(value, who, name)


def _to_float64(layer: Layer) -> Layer:
    return tree.map(lambda a: a.astype(np.float64), layer)


def numerical_gradient(fn: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences ``(fn(x + eps e_i) - fn(x - eps e_i)) / 2 eps`` for every element."""
    x = np.array(x, dtype=np.float64)
    grad = np.empty_like(x)
    flat, out = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + eps
        plus = fn(x.copy())
        flat[i] = saved - eps
        minus = fn(x.copy())
        flat[i] = saved
        out[i] = (plus - minus) / (2 * eps)
    return grad


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> tuple[float, tuple[int, ...]]:
    """``max |a - n| / max(max |a|, max |n|)`` and the index of the worst element."""
    diff = np.abs(np.asarray(analytic, np.float64) - np.asarray(numeric, np.float64))
    if diff.size == 0:
        return 0.0, ()
    scale = max(np.abs(analytic).max(), np.abs(numeric).max(), 1e-12)
    worst = np.unravel_index(np.argmax(diff), diff.shape)
    return float(diff[worst] / scale), tuple(int(i) for i in worst)


def _compare(who: str, what: str, analytic: np.ndarray, numeric: np.ndarray, rtol: float, atol: float) -> None:
    if analytic.shape != numeric.shape:
        raise AssertionError(f"{who}: {what} has shape {analytic.shape}, expected {numeric.shape}")
    error, worst = relative_error(analytic, numeric)
    if not error <= rtol and not np.max(np.abs(analytic - numeric), initial=0.0) <= atol:  # NaN fails both
        raise AssertionError(
            f"{who}: {what} disagrees with central differences: relative error {error:.3g} > {rtol:g}; "
            f"worst element {list(worst)}: analytic {analytic[worst]!r}, numeric {numeric[worst]!r}"
        )


def check_grads(
    layer: Layer,
    X: Any,
    *,
    key: random.Key | None = None,
    eps: float = 1e-6,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    training: bool = False,
) -> None:
    """Check the layer's input and parameter gradients against central differences.

    Everything is done in float64 (the layer's arrays and ``X`` are converted). The scalar
    differentiated is ``sum(forward(X) * dY)`` for a random ``dY`` drawn from ``key``
    (default ``random.key(0)``). A gradient passes when its relative error (largest
    difference over largest magnitude) is at most ``rtol``, or when every difference is at
    most ``atol`` (a gradient that is zero up to rounding, such as a bias before batch
    normalization, is only central-difference noise). With ``training=True`` the passes run in training mode
    with ``key`` (a dropout mask, batch statistics), the same for every evaluation.

    Raises
    ------
    AssertionError
        naming the layer, the gradient (``grad_input`` or the parameter's path), the relative
        error and the worst element with both values.
    """
    if not isinstance(layer, Layer):
        raise TypeError(f"check_grads: expected a jitnn layer, got {type(layer).__name__}")
    who = f"check_grads({describe(layer)})"
    _check_tolerances(who, eps, rtol, atol)
    if key is not None and not isinstance(key, random.Key):
        raise TypeError(f"{who}: key must be a jitnn.random.Key or None, got {type(key).__name__}")
    training = validate.flag(training, who, "training")
    key = key or random.key(0)
    layer64 = _to_float64(layer)
    X = np.array(layer64._input(X))
    if X.dtype.kind == "f":  # a layer without parameters keeps its input's dtype: float64 here too
        X = X.astype(np.float64)

    def output(model: Layer, inputs: np.ndarray) -> np.ndarray:
        return passes.forward(model, inputs, key=key, training=training)[0]

    Y, trace = passes.forward(layer64, X, key=key, training=training)
    dY = random.normal(random.fold_in(key, "dY"), Y.shape, dtype=np.float64)
    grads, dX = passes.backward(layer64, trace, dY)

    if X.dtype.kind == "f":  # integer input (indices) has no gradient to check
        _compare(who, "grad_input", dX, numerical_gradient(lambda x: float(np.sum(output(layer64, x) * dY)), X, eps), rtol, atol)

    analytic = dict(tree.leaves_with_paths(grads, trainable=True))
    params = tree.leaves(layer64, trainable=True)
    for index, (path, value) in enumerate(tree.leaves_with_paths(layer64, trainable=True)):

        def objective(candidate: np.ndarray, index: int = index) -> float:
            changed = tree.unflatten(layer64, params[:index] + [candidate] + params[index + 1 :], trainable=True)
            return float(np.sum(output(changed, X) * dY))

        _compare(who, f"grad_params {path}", analytic[path], numerical_gradient(objective, value, eps), rtol, atol)


def check_loss_grad(loss: Loss, Y: Any, T: Any, *, sample_weight: Any = None, eps: float = 1e-6, rtol: float = 1e-6, atol: float = 1e-8) -> None:
    """Check ``loss.grad(Y, T)`` against central differences of ``loss.value`` in float64,
    and, where the loss gives a ``value_and_grad`` kernel, that ``loss.value_and_grad``
    agrees with ``value`` and ``grad`` (which it replaces in training); with
    ``sample_weight``, of the weighted loss."""
    if not isinstance(loss, Loss):
        raise TypeError(f"check_loss_grad: expected a jitnn loss, got {type(loss).__name__}")
    who = f"check_loss_grad({describe(loss)})"
    _check_tolerances(who, eps, rtol, atol)
    Y = np.array(float_input(Y, np.float64, describe(loss), "predictions Y"))
    numeric = numerical_gradient(lambda y: loss.value(y, T, sample_weight), Y, eps)
    grad = loss.grad(Y, T, sample_weight)
    _compare(who, "grad", grad, numeric, rtol, atol)
    if loss.kernels.value_and_grad is not None:
        value, both = loss.value_and_grad(Y, T, sample_weight)
        expected = loss.value(Y, T, sample_weight)
        same_value = abs(value - expected) <= atol + rtol * abs(expected)  # NaN fails
        if not same_value or both.shape != grad.shape or not np.allclose(both, grad, rtol=rtol, atol=atol):
            difference = np.max(np.abs(both - grad)) if both.shape == grad.shape else f"shape {both.shape} against {grad.shape}"
            raise AssertionError(f"{who}: the value_and_grad kernel disagrees with value and grad: value {value!r} against "
                                 f"{expected!r}, gradient difference {difference}")


def jacobian(layer: Layer, x: Any, wrt: str = "input") -> Any:
    """The full Jacobian of ``layer`` at ONE example ``x`` (no batch axis), from products.

    Row ``k`` is the product with the one-hot output gradient ``e_k`` (one call of
    ``grad_input`` or ``grad_params`` per output element).

    Returns
    -------
    ``wrt="input"``: array of shape ``output_shape + x.shape``.
    ``wrt="params"``: dict from each parameter's path to an array of shape
    ``output_shape + parameter.shape``.
    """
    if wrt not in ("input", "params"):
        raise ValueError(f"jacobian: wrt must be 'input' or 'params', got {wrt!r}")
    X = float_input(np.asarray(x)[np.newaxis], layer.dtype, describe(layer))
    out_shape = layer.forward(X).shape[1:]
    size = int(np.prod(out_shape))
    rows: list[Any] = []
    for k in range(size):
        dY = np.zeros((1, size), dtype=X.dtype)
        dY[0, k] = 1.0
        dY = dY.reshape((1, *out_shape))
        rows.append(layer.grad_input(X, dY)[0] if wrt == "input" else dict(tree.leaves_with_paths(layer.grad_params(X, dY), trainable=True)))
    if wrt == "input":
        return np.stack(rows).reshape(out_shape + X.shape[1:])
    return {path: np.stack([row[path] for row in rows]).reshape(out_shape + value.shape) for path, value in tree.leaves_with_paths(layer, trainable=True)}


# --------------------------------------------------------------------------- the conformance suite
#: The checks of :func:`check_layer`, in the order they run (the names its reports use).
LAYER_CHECKS = (
    "shapes and dtypes",
    "gradients",
    "gradients in training mode",
    "purity",
    "batch invariance",
    "trace route",
    "same key, same bits",
    "compiled step",
)


@attrs.frozen
class LayerReport:
    """What :func:`check_layer` found, check by check (names from :data:`LAYER_CHECKS`).

    Attributes
    ----------
    layer : str
        The class name of the layer checked.
    passed : tuple of str
        The checks that ran and found nothing wrong.
    failed : tuple of (str, str)
        Each failed check with what it found.
    skipped : tuple of (str, str)
        Each check (or part of one, its reason naming the dtype) that did not run, with the
        reason: it does not apply to the layer, it was asked to be skipped, or what it needs
        already failed in another check.
    """

    layer: str
    passed: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]
    skipped: tuple[tuple[str, str], ...]

    @property
    def run(self) -> tuple[str, ...]:
        """The checks that ran to a verdict (passed or failed), in the order they ran."""
        done = set(self.passed) | {name for name, _ in self.failed}
        return tuple(name for name in LAYER_CHECKS if name in done)

    def __str__(self) -> str:
        lines = [f"check_layer({self.layer}): {len(self.failed)} of {len(self.run)} checks failed" if self.failed
                 else f"check_layer({self.layer}): all {len(self.run)} checks passed"]
        lines += [f"FAILED {name}: {message}" for name, message in self.failed]
        if self.passed:
            lines.append(f"passed: {', '.join(self.passed)}")
        lines += [f"skipped {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


class LayerCheckError(AssertionError):
    """Raised by :func:`check_layer` when a check fails: the message lists every failed check
    by name with what it found; ``report`` is the full :class:`LayerReport`."""

    def __init__(self, report: LayerReport) -> None:
        super().__init__(str(report))
        self.report = report


def check_layer(
    layer: Layer,
    X: Any,
    *,
    dY: Any = None,
    key: random.Key | None = None,
    loss: Loss | None = None,
    T: Any = None,
    steps: int = 3,
    rtol: float | None = None,
    atol: float | None = None,
    eps: float | None = None,
    dtypes: Sequence[Any] = (np.float32, np.float64),
    skip: Sequence[str] = (),
) -> LayerReport:
    """Run jitnn's conformance checks on ``layer`` (any layer: a leaf or a composite, a
    built-in or a user's own) with the input batch ``X``.

    Each check below runs, in each dtype of ``dtypes`` where it says so (the layer's arrays
    and a floating-point ``X`` are converted to it; a layer that cannot be converted is
    skipped in that dtype), and every failure is collected: the checks do not stop at the
    first one. Only the public answers and passes are used (``layer.forward``,
    ``grad_input``, ``grad_params``, :func:`jitnn.forward`, :func:`jitnn.backward`,
    :func:`jitnn.value_and_grad`, :func:`jitnn.train_step`, :func:`jitnn.compile_step`).

    ``shapes and dtypes``
        ``forward`` gives the shape the layer's shape rule (``output_shape``) states, in
        the layer's dtype; ``grad_input`` the input's shape; ``grad_params`` and
        :func:`jitnn.backward` a gradient record of the layer's own type and structure
        (:func:`jitnn.tree.check_same_structure`: the same records, shapes and dtypes;
        a layer without parameters returns itself).
    ``gradients``
        :func:`check_grads` in float64 (the layer converted with
        ``jn.tree.map(lambda a: a.astype(np.float64), layer)``), in evaluation mode, with
        ``rtol``, ``atol`` and ``eps`` (by default ``check_grads``' own: 1e-6, 1e-8, 1e-6).
    ``gradients in training mode``
        The same in training mode with ``key``, for a layer that uses the training context
        (a layer in it has ``needs_context``, or its training forward differs from its
        evaluation forward: dropout, batch statistics); skipped otherwise.
    ``purity``
        Over every call that any check makes: ``X``, ``dY``, the targets and the layer's
        arrays are never changed (and the layer's arrays are read-only); the arrays inside
        every returned record (gradient records, updated and trained models, optimizer
        states) are read-only; no returned array shares memory with ``X``, ``dY`` or the
        targets, and a writable one (an output ``Y`` or ``dX``: fresh, the caller's to
        keep) shares none with the layer either. A kernel that writes into an array it is
        handed (all are read-only) fails here, whichever check called it first.
    ``batch invariance``
        In evaluation mode (batch statistics are a property of training), ``forward(X)``
        equals the rows ``forward(X[i:i+1])`` stacked, ``grad_input`` likewise, and
        ``grad_params(X, dY)`` the sum of the rows' gradients. Not bit for bit: a product
        of another batch size may run another BLAS kernel (jitnn uses gemv for one row,
        gemm for more), which sums in another order. Two orders of a sum of ``K`` products
        differ by at most ``2 gamma_K sum|terms|`` (``gamma_K = K u / (1 - K u)``, ``u``
        the unit roundoff): ``K`` is bounded by the largest array in the model (its input,
        any layer's output in :func:`jitnn.summary`, any parameter: no dot product is
        longer), times the batch size for a parameter gradient (a sum over the batch);
        ``sum|terms|`` by the largest magnitude of the result (of the rows' gradients
        summed in absolute value for a parameter gradient); and one such bound is allowed
        for each leaf layer the rounding passes through. A batch-dependent result differs
        by the size of the result itself, far above this bound.
    ``trace route``
        In evaluation mode, :func:`jitnn.forward` then :func:`jitnn.backward` give exactly
        (bit for bit) ``layer.forward(X)``, ``layer.grad_input(X, dY)`` and
        ``layer.grad_params(X, dY)``, a second call gives the same bits, and
        :func:`jitnn.value_and_grad` gives exactly the loss and the gradient that
        ``jn.backward`` of the loss's gradient gives. Both routes run the same kernels in
        the same order on the same arrays, so nothing but the bits is acceptable: a layer
        whose backward pass reuses what its forward pass computed must compute the same.
        For a layer with a ``Kernels.factored`` kernel (:class:`jitnn.Factored`), its
        gradients, each factor pair ``(A, B)`` as ``jitnn.outer_sum(A, B)``, are
        ``layer.grad_params``'s bit for bit, at the checked batch and at its first example.
    ``same key, same bits``
        For a layer that uses the training context: two training passes with the same
        ``key`` give the same bits (output, updated model, gradients); skipped otherwise.
    ``compiled step``
        ``steps`` steps of :func:`jitnn.compile_step` (``loss``, ``jn.optim.sgd(0.1)``)
        against :func:`jitnn.train_step` from the same model and keys: the losses, models
        and optimizer states agree to 1e-12 relative (1e-13 absolute) in float64 and 2e-6
        (2e-7) in float32, the loss to 1e-12 and 1e-5. Not bit for bit: the two call the
        same kernels, but the compiled step chooses its BLAS thread count by batch size
        (one thread below 8 examples) while the generic path runs with the process's, and
        a product split over another number of threads may sum in another order. A layer
        that ``compile_step`` refuses (``TypeError``: it has no compiled form) is skipped
        there, as is one whose generated step does not compile while the generic step runs.

    Parameters
    ----------
    layer : the layer to check.
    X : a batch the layer accepts (floating-point data, or what its first layer takes:
        indices for an embedding), at least two examples for batch statistics. Keep it
        small: the finite differences run the layer twice per input and parameter value.
    dY : the output gradient for the gradient calls; by default normal values from ``key``.
    key : the randomness of the checks (``dY``, targets, dropout masks); default ``random.key(0)``.
    loss, T : the loss of the value-and-gradient and training checks and its targets; by
        default :class:`jitnn.MeanSquaredError` against normal values of the output's shape
        (``T`` without ``loss`` gives that loss those targets). A loss needs its ``T``.
    steps : training steps of the compiled-step check.
    rtol, atol, eps : the finite-difference check's tolerances and step (see :func:`check_grads`).
    dtypes : the dtypes of the checks that run per dtype (all but the finite differences).
    skip : names of checks (from :data:`LAYER_CHECKS`) not to run; they are reported skipped.

    Returns
    -------
    LayerReport
        the checks run, passed and skipped (with reasons), when none failed.

    Raises
    ------
    LayerCheckError
        (an ``AssertionError``) listing every failed check by name with what it found.

    Example
    -------
    >>> import numpy as np, jitnn as jn
    >>> layer = jn.Dense.init(jn.random.key(0), 4, 3)
    >>> report = jn.testing.check_layer(layer, np.random.default_rng(0).normal(size=(5, 4)))
    >>> report.failed
    ()
    >>> [name for name, _ in report.skipped]
    ['gradients in training mode', 'same key, same bits']
    """
    who = "check_layer"
    if not isinstance(layer, Layer):
        raise TypeError(f"{who}: expected a jitnn layer, got {type(layer).__name__}")
    if key is not None and not isinstance(key, random.Key):
        raise TypeError(f"{who}: key must be a jitnn.random.Key or None, got {type(key).__name__}")
    if loss is not None and not isinstance(loss, Loss):
        raise TypeError(f"{who}: loss must be a jitnn loss or None, got {loss!r}")
    if loss is not None and T is None:
        raise TypeError(f"{who}: give the targets T for loss={type(loss).__name__}()")
    steps = validate.positive_int(steps, who, "steps")
    defaults = {"rtol": 1e-6, "atol": 1e-8, "eps": 1e-6}
    tolerances = {name: defaults[name] if value is None else value for name, value in (("rtol", rtol), ("atol", atol), ("eps", eps))}
    _check_tolerances(who, tolerances["eps"], tolerances["rtol"], tolerances["atol"])
    if isinstance(dtypes, (str, np.dtype, type)) or not dtypes:
        raise TypeError(f"{who}: dtypes must be a non-empty sequence of float32 and float64, got {dtypes!r}")
    dtypes = tuple(dict.fromkeys(_float_dtype(d, who) for d in dtypes))
    skip = (skip,) if isinstance(skip, str) else tuple(skip)
    unknown = [name for name in skip if name not in LAYER_CHECKS]
    if unknown:
        raise ValueError(f"{who}: unknown checks in skip: {unknown}; the checks are {list(LAYER_CHECKS)}")
    checker = _Checker(layer, X, dY, key or random.key(0), loss, T, int(steps), tolerances, dtypes, skip)
    report = checker.run()
    if report.failed:
        raise LayerCheckError(report)
    return report


def _float_dtype(dtype: Any, who: str) -> np.dtype:
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved not in FLOAT_DTYPES:
        raise TypeError(f"{who}: dtypes must hold float32 or float64, got {dtype!r}")
    return resolved


class _Variant(NamedTuple):
    """The layer and fresh writable arrays in one dtype, and copies to detect writes."""

    dtype: np.dtype
    layer: Layer
    X: np.ndarray
    dY: np.ndarray
    T: Any
    given: tuple[tuple[str, np.ndarray, np.ndarray], ...]  # (name, array handed in, its copy)


#: Error messages of a write into a read-only array: Numba's (typing a kernel that writes
#: into an argument, which jitnn always hands over read-only) and NumPy's.
_READ_ONLY_WRITE = re.compile(r"Cannot modify readonly array[^\n]*|assignment destination is read-only|output array is read-only")


def _error_text(error: BaseException) -> str:
    found = _READ_ONLY_WRITE.search(str(error))
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = " / ".join(lines[:6]) + (" / ..." if len(lines) > 6 else "")
    if found and found.group(0) not in text:
        text += f" ({found.group(0)})"
    return f"{type(error).__name__}: {text}"


def _same_bits(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


_TOO_HARD = getattr(np, "exceptions", np).TooHardError  # np.exceptions from NumPy 1.25


def _shares(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` share memory (counted as shared where that is too hard to decide)."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=10**6))
    except _TOO_HARD:
        return True


def _leaf_layers(layer: Layer) -> list[Layer]:
    if isinstance(layer, Composite):
        return [leaf for member in layer.members for leaf in _leaf_layers(member)]
    return [layer]


class _Checker:
    """One run of :func:`check_layer`: the variants per dtype, the calls (each watched for
    writes into what it was handed and for what it returns) and the outcome of each check."""

    #: Why the training checks do not apply to a layer.
    NO_CONTEXT = "the layer does not use the training context (no layer in it has needs_context, and its training forward is its evaluation forward)"

    def __init__(self, layer: Layer, X: Any, dY: Any, key: random.Key, loss: Loss | None, T: Any, steps: int,
                 tolerances: dict[str, float], dtypes: tuple[np.dtype, ...], skip: tuple[str, ...]) -> None:
        self.layer, self.X, self.dY, self.key, self.steps = layer, np.asarray(X), dY, key, steps
        self.loss = loss or MeanSquaredError()
        self.T, self.tolerances, self.dtypes, self.skip = T, tolerances, dtypes, skip
        self.problems: dict[str, list[str]] = {name: [] for name in LAYER_CHECKS}
        self.skips: list[tuple[str, str]] = []
        self.seen: dict[tuple[type, str], str] = {}  # error -> the check that reported it
        self.check = ""
        self.label = ""
        self.wrote = False  # whether a write into a read-only array has been reported
        self._variants: dict[np.dtype, _Variant | str] = {}
        self._uses_context: bool | None = None

    # ------------------------------------------------------------------ the run
    def run(self) -> LayerReport:
        checks = {
            "shapes and dtypes": _check_shapes_and_dtypes, "gradients": _check_gradients,
            "gradients in training mode": _check_gradients_in_training, "purity": _check_purity,
            "batch invariance": _check_batch_invariance, "trace route": _check_trace_route,
            "same key, same bits": _check_same_key, "compiled step": _check_compiled_step,
        }
        verdict: dict[str, str | None] = {}  # None: ran; otherwise why it did not
        for name in LAYER_CHECKS:
            if name in self.skip:
                verdict[name] = "skipped on request"
                continue
            self.check, self.label = name, ""
            try:
                verdict[name] = checks[name](self)
            except Exception as error:  # noqa: BLE001  # any error of the layer is a finding, reported by name
                verdict[name] = self._error(name, error)
        passed, failed, skipped = [], [], []
        for name in LAYER_CHECKS:
            problems = [] if name in self.skip else list(dict.fromkeys(self.problems[name]))
            if problems:
                failed.append((name, "; ".join(problems)))
            elif verdict[name] is not None:
                skipped.append((name, verdict[name]))
            else:
                passed.append(name)
            if verdict[name] is None:  # the dtypes it ran without
                skipped += [(name, reason) for reason in dict.fromkeys(r for n, r in self.skips if n == name)]
        return LayerReport(type(self.layer).__name__, tuple(passed), tuple(failed), tuple(skipped))

    def _error(self, name: str, error: Exception) -> str | None:
        """Record what a check raised; return why the check is counted as not run, or
        ``None`` where the error is the check's failure."""
        where = self.label or "the check"
        text = _error_text(error)
        write = _READ_ONLY_WRITE.search(str(error))
        if write and "purity" not in self.skip:
            if not self.wrote:  # once: every later call of the kernel raises the same
                self.wrote = True
                self.problems["purity"].append(f"{where} raised {type(error).__name__} ({write.group(0)}): the layer writes into an array "
                                               "it was handed (all are read-only)")
            return None if name == "purity" else f"{where} writes into a read-only array (see purity)"
        signature = (type(error), str(error))
        if signature in self.seen and self.seen[signature] != name:
            return f"{where} raised the error reported by {self.seen[signature]!r}"
        self.seen.setdefault(signature, name)
        self.problems[name].append(f"{where} raised {text}")
        return None

    def problem(self, message: str, check: str | None = None) -> None:
        self.problems[check or self.check].append(message)

    # ------------------------------------------------------------------ the variants
    def variants(self) -> list[_Variant]:
        """The variant in each dtype that the layer allows (the others noted as skipped)."""
        found = []
        for dtype in self.dtypes:
            variant = self._variants.get(dtype)
            if variant is None:
                variant = self._variants[dtype] = self._make_variant(dtype)
            if isinstance(variant, str):
                self.skips.append((self.check, f"in {dtype}: {variant}"))
            else:
                found.append(variant)
        return found

    def _make_variant(self, dtype: np.dtype) -> _Variant | str:
        layer = self.layer
        if any(leaf.dtype != dtype for leaf in tree.leaves(layer)):
            try:
                layer = tree.map(lambda a: a.astype(dtype), layer)
            except (TypeError, ValueError) as error:
                return f"the layer cannot be converted to {dtype}: {_error_text(error)}"
        X = np.array(self.X, dtype=dtype if self.X.dtype.kind == "f" else None, order="C")
        shape = (X.shape[0], *layer.output_shape(X.shape[1:])) if X.ndim else ()
        if self.dY is None:
            dY = np.array(random.normal(random.fold_in(self.key, "dY"), shape, dtype=dtype))
        else:
            dY = np.array(self.dY, dtype=dtype, order="C")
        if self.T is None:
            T = np.array(random.normal(random.fold_in(self.key, "T"), shape, dtype=dtype))
        else:
            T = np.array(self.T, dtype=dtype if np.asarray(self.T).dtype.kind == "f" else None, order="C")
        given = [("X", X), ("dY", dY), ("the targets T", T)] + [(f"the layer's {path or 'array'}", a) for path, a in tree.leaves_with_paths(layer)]
        return _Variant(dtype, layer, X, dY, T, tuple((name, a, a.copy()) for name, a in given))

    def uses_context(self) -> bool:
        """Whether training mode matters: a layer in it declares ``needs_context``, or a
        training forward differs from an evaluation forward."""
        if self._uses_context is None:
            self._uses_context = any(type(leaf).needs_context for leaf in _leaf_layers(self.layer))
            if not self._uses_context:
                variants = self.variants()
                if variants:
                    variant = variants[0]
                    Y = self.call(variant, "jn.forward(layer, X)", passes.forward, variant.layer, variant.X)[0]
                    Y_training = self.call(variant, "jn.forward(layer, X, key=key, training=True)", passes.forward,
                                           variant.layer, variant.X, key=self.key, training=True)[0]
                    self._uses_context = not _same_bits(Y, Y_training)
        return self._uses_context

    # ------------------------------------------------------------------ watched calls
    def call(self, variant: _Variant, label: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``function(*args, **kwargs)``, then the purity checks on what it was handed and
        what it returned, reported with ``label``."""
        self.label = f"{label} in {variant.dtype}"
        result = function(*args, **kwargs)
        for name, array, before in variant.given:
            if not _same_bits(array, before):
                self.problem(f"{self.label} changed {name}", "purity")
                if array.flags.writeable:
                    np.copyto(array, before)  # for the checks that follow
        self._check_returned(variant, result, "the result")
        return result

    def _check_returned(self, variant: _Variant, value: Any, what: str) -> None:
        handed = [variant.X, variant.dY] + ([variant.T] if isinstance(variant.T, np.ndarray) else [])
        if isinstance(value, np.ndarray):
            if any(_shares(value, a) for a in handed):
                self.problem(f"{self.label} returned {what}, which shares memory with the arrays it was handed", "purity")
            if value.flags.writeable and any(_shares(value, a) for a in tree.leaves(variant.layer)):
                self.problem(f"{self.label} returned {what}, writable and sharing memory with the layer's arrays", "purity")
        elif isinstance(value, passes.Trace):
            self._check_record(variant, value.updated_model, "the trace's updated model", handed)
        elif isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                self._check_returned(variant, item, f"item {i} of the result")
        elif attrs.has(type(value)):
            self._check_record(variant, value, f"the {type(value).__name__} record", handed)

    def _check_record(self, variant: _Variant, record: Any, what: str, handed: list[np.ndarray]) -> None:
        for path, leaf in tree.leaves_with_paths(record):
            if leaf.flags.writeable:
                self.problem(f"{self.label} returned {what} with a writable array at {path or 'the root'}", "purity")
            if any(_shares(leaf, a) for a in handed):
                self.problem(f"{self.label} returned {what} whose {path or 'array'} shares memory with the arrays it was handed", "purity")


# --------------------------------------------------------------------------- the checks
# Each takes the checker, reports what it finds with ``checker.problem`` and returns ``None``
# (it ran) or the reason it does not apply.
def _record_problems(grads: Any, layer: Layer, where: str = "") -> list[str]:
    """How the gradient record ``grads`` differs from what ``layer``'s must be."""
    at = f" at {where}" if where else ""
    if type(grads) is not type(layer):
        return [f"the gradient record{at} is a {type(grads).__name__}, expected a {type(layer).__name__}"]
    if isinstance(layer, Composite):
        if len(grads.members) != len(layer.members):
            return [f"the gradient record{at} has {len(grads.members)} members, the layer {len(layer.members)}"]
        return [p for (suffix, member), g in zip(layer.named_members(), grads.members) for p in _record_problems(g, member, where + suffix)]
    if not layer.param_names and grads is not layer:
        return [f"the gradient record{at} of a layer without parameters must be the layer itself"]
    if layer.param_names and grads is layer:
        return [f"the gradient record{at} is the layer itself, not a new record of gradients"]
    try:
        tree.check_same_structure(layer, grads)
    except ValueError as error:
        return [f"the gradient record{at} does not have the layer's structure: {error}"]
    return []


def _check_shapes_and_dtypes(checker: _Checker) -> None:
    for v in checker.variants():
        n, d = v.X.shape[0], v.dtype
        expected = (n, *v.layer.output_shape(v.X.shape[1:]))
        Y = checker.call(v, "layer.forward(X)", v.layer.forward, v.X)
        Y_traced, trace = checker.call(v, "jn.forward(layer, X)", passes.forward, v.layer, v.X)
        dX = checker.call(v, "layer.grad_input(X, dY)", v.layer.grad_input, v.X, v.dY)
        grads = checker.call(v, "layer.grad_params(X, dY)", v.layer.grad_params, v.X, v.dY)
        grads_traced, dX_traced = checker.call(v, "jn.backward(layer, trace, dY)", passes.backward, v.layer, trace, v.dY)
        for what, array, shape in (("layer.forward(X)", Y, expected), ("jn.forward(layer, X)", Y_traced, expected),
                                   ("layer.grad_input(X, dY)", dX, v.X.shape), ("jn.backward's dX", dX_traced, v.X.shape)):
            if not isinstance(array, np.ndarray):
                checker.problem(f"in {d}: {what} is a {type(array).__name__}, not an array")
                continue
            if array.shape != shape:
                rule = "the layer's output_shape gives" if array is Y or array is Y_traced else "the input has"
                checker.problem(f"in {d}: {what} has shape {array.shape}, {rule} {shape}")
            if array.dtype != d:
                checker.problem(f"in {d}: {what} has dtype {array.dtype}, expected the layer's {d}")
        for what, record in (("layer.grad_params", grads), ("jn.backward", grads_traced)):
            for message in _record_problems(record, v.layer):
                checker.problem(f"in {d}: {what}: {message}")


def _x64(checker: _Checker) -> np.ndarray:
    return np.array(checker.X, dtype=np.float64 if checker.X.dtype.kind == "f" else None)


def _check_gradients(checker: _Checker) -> None:
    checker.label = "check_grads(layer, X) in float64"
    try:
        check_grads(checker.layer, _x64(checker), key=checker.key, **checker.tolerances)
    except AssertionError as error:
        checker.problem(str(error))


def _check_gradients_in_training(checker: _Checker) -> str | None:
    if not checker.uses_context():
        return checker.NO_CONTEXT
    checker.label = "check_grads(layer, X, training=True) in float64"
    try:
        check_grads(checker.layer, _x64(checker), key=checker.key, training=True, **checker.tolerances)
    except AssertionError as error:
        checker.problem(str(error))
    return None


def _check_purity(checker: _Checker) -> None:
    """The calls not made elsewhere; the problems of every call are collected into this check."""
    for v in checker.variants():
        for path, leaf in tree.leaves_with_paths(v.layer):
            if leaf.flags.writeable:
                checker.problem(f"in {v.dtype}: the layer's array {path or '(the root)'} is writable")
        checker.call(v, "layer(X)", v.layer, v.X)
        checker.call(v, "layer.grad_input(X, dY)", v.layer.grad_input, v.X, v.dY)
        checker.call(v, "layer.grad_params(X, dY)", v.layer.grad_params, v.X, v.dY)
        checker.call(v, "jn.value_and_grad(layer, loss, X, T)", passes.value_and_grad, v.layer, checker.loss, v.X, v.T)
        if checker.uses_context():
            _, trace = checker.call(v, "jn.forward(layer, X, key=key, training=True)", passes.forward, v.layer, v.X, key=checker.key, training=True)
            checker.call(v, "jn.backward(layer, training trace, dY)", passes.backward, v.layer, trace, v.dY)


def _gamma(count: int, dtype: np.dtype) -> float:
    """``gamma_K = K u / (1 - K u)``: the relative rounding bound of a sum of ``K`` products."""
    ku = count * float(np.finfo(dtype).eps) / 2
    return ku / (1 - ku) if ku < 1 else math.inf


def _reduction_bound(layer: Layer, X: np.ndarray, Y: np.ndarray) -> tuple[int, int]:
    """``(K, L)``: a bound on the length of any sum of products in ``layer`` (no dot product
    is longer than the largest array it reads: the input, a layer's output, a parameter)
    and the number of leaf layers the rounding passes through."""
    sizes = [int(np.prod(X.shape[1:])), int(np.prod(Y.shape[1:]))] + [leaf.size for leaf in tree.leaves(layer, trainable=True)]
    depth = len(_leaf_layers(layer))
    try:
        rows = summary(layer, tuple(X.shape[1:])).rows
    except (TypeError, ValueError):
        rows = ()
    sizes += [int(np.prod(row.output_shape)) for row in rows if row.output_shape is not None]
    return max(sizes + [1]), max(depth, 1)


def _compare_rounding(checker: _Checker, what: str, batch: np.ndarray, rows: np.ndarray, bound: float, detail: str) -> None:
    a, b = np.asarray(batch, np.float64), np.asarray(rows, np.float64)
    if a.shape != b.shape:
        checker.problem(f"{what}: the batch gives shape {a.shape}, the rows {b.shape}")
        return
    with np.errstate(invalid="ignore"):
        difference = np.abs(a - b)
        bad = ~((a == b) | (difference <= bound) | (np.isnan(a) & np.isnan(b)))
    if bad.any():
        worst = np.unravel_index(np.argmax(np.where(bad, np.nan_to_num(difference, nan=np.inf), -1.0)), a.shape)
        index = [int(i) for i in worst]
        checker.problem(f"{what}: the batch and the examples one at a time differ by {difference[worst]:.3g} at {index} "
                        f"({float(a[worst])!r} against {float(b[worst])!r}), more than rounding can explain ({bound:.3g}: {detail})")


def _check_batch_invariance(checker: _Checker) -> None:
    for v in checker.variants():
        n, d = v.X.shape[0], v.dtype
        rows = [(v.X[i : i + 1], v.dY[i : i + 1]) for i in range(n)]
        Y = checker.call(v, "layer.forward(X)", v.layer.forward, v.X)
        Y_rows = np.concatenate([checker.call(v, f"layer.forward(X[{i}:{i + 1}])", v.layer.forward, x) for i, (x, _) in enumerate(rows)])
        dX = checker.call(v, "layer.grad_input(X, dY)", v.layer.grad_input, v.X, v.dY)
        dX_rows = np.concatenate([checker.call(v, f"layer.grad_input(X[{i}:{i + 1}], dY[{i}:{i + 1}])", v.layer.grad_input, x, dy)
                                  for i, (x, dy) in enumerate(rows)])
        K, depth = _reduction_bound(v.layer, v.X, Y)
        detail = f"2 gamma_K x {depth} layer(s) x the largest magnitude, K = {K}, in {d}"
        scale = max(float(np.max(np.abs(Y), initial=0.0)), float(np.max(np.abs(Y_rows), initial=0.0)))
        _compare_rounding(checker, f"in {d}: forward", Y, Y_rows, 2 * depth * _gamma(K, d) * scale, detail)
        scale = max(float(np.max(np.abs(dX), initial=0.0)), float(np.max(np.abs(dX_rows), initial=0.0)))
        _compare_rounding(checker, f"in {d}: grad_input", dX, dX_rows, 2 * depth * _gamma(K, d) * scale, detail)
        grads = tree.leaves_with_paths(checker.call(v, "layer.grad_params(X, dY)", v.layer.grad_params, v.X, v.dY), trainable=True)
        per_row = [tree.leaves(checker.call(v, f"layer.grad_params(X[{i}:{i + 1}], dY[{i}:{i + 1}])", v.layer.grad_params, x, dy), trainable=True)
                   for i, (x, dy) in enumerate(rows)]
        for k, (path, grad) in enumerate(grads):
            parts = np.array([row[k] for row in per_row], dtype=np.float64)
            total, magnitude = parts.sum(axis=0), np.abs(parts).sum(axis=0)
            bound = 2 * depth * _gamma(n * K, d) * max(float(np.max(magnitude, initial=0.0)), float(np.max(np.abs(grad), initial=0.0)))
            _compare_rounding(checker, f"in {d}: grad_params {path}", grad, total, bound,
                              f"2 gamma_nK x {depth} layer(s) x the rows' gradients summed in absolute value, n K = {n * K}, in {d}")


def _check_trace_route(checker: _Checker) -> None:
    for v in checker.variants():
        d = v.dtype
        Y = checker.call(v, "layer.forward(X)", v.layer.forward, v.X)
        dX = checker.call(v, "layer.grad_input(X, dY)", v.layer.grad_input, v.X, v.dY)
        grads = checker.call(v, "layer.grad_params(X, dY)", v.layer.grad_params, v.X, v.dY)
        Y_traced, trace = checker.call(v, "jn.forward(layer, X)", passes.forward, v.layer, v.X)
        grads_traced, dX_traced = checker.call(v, "jn.backward(layer, trace, dY)", passes.backward, v.layer, trace, v.dY)
        pairs = [("the output", Y_traced, Y, "jn.forward", "layer.forward"), ("dX", dX_traced, dX, "jn.backward", "layer.grad_input")]
        pairs += [(f"the gradient {path}", a, b, "jn.backward", "layer.grad_params")
                  for (path, a), (_, b) in zip(tree.leaves_with_paths(grads_traced), tree.leaves_with_paths(grads))]
        if len(tree.leaves(grads_traced)) != len(tree.leaves(grads)):
            checker.problem(f"in {d}: jn.backward and layer.grad_params give gradient records of different structures")
        again = checker.call(v, "layer.forward(X), again", v.layer.forward, v.X)
        pairs.append(("the output of a second call", again, Y, "layer.forward", "the first layer.forward"))
        value, grads_loss = checker.call(v, "jn.value_and_grad(layer, loss, X, T)", passes.value_and_grad, v.layer, checker.loss, v.X, v.T)
        expected_value, dY_loss = checker.loss.value_and_grad(Y_traced, v.T)
        grads_expected, _ = checker.call(v, "jn.backward(layer, trace, the loss's dY)", passes.backward, v.layer, trace, dY_loss)
        if not _same_bits(np.float64(value), np.float64(expected_value)):
            checker.problem(f"in {d}: jn.value_and_grad gives the loss {value!r}, the loss of jn.forward's output is {expected_value!r}")
        pairs += [(f"the loss gradient {path}", a, b, "jn.value_and_grad", "jn.backward of the loss's dY")
                  for (path, a), (_, b) in zip(tree.leaves_with_paths(grads_loss), tree.leaves_with_paths(grads_expected))]
        if not isinstance(v.layer, Composite) and v.layer.kernels.factored is not None:
            pairs += _factored_pairs(checker, v, v.X, v.dY, "")
            pairs += _factored_pairs(checker, v, v.X[:1], v.dY[:1], " at one example")
        for what, a, b, first, second in pairs:
            if not _same_bits(a, b):
                difference = np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))) if np.shape(a) == np.shape(b) else "shapes differ"
                checker.problem(f"in {d}: {what} of {first} is not bit for bit that of {second} (largest difference {difference})")


def _factored_pairs(checker: _Checker, v: _Variant, X: np.ndarray, dY: np.ndarray, where: str) -> list[tuple[str, Any, Any, str, str]]:
    """The gradients of a layer's ``Kernels.factored`` kernel (each factor pair ``(A, B)``
    as ``outer_sum(A, B)``, the product the compiled step forms) beside ``layer.grad_params``'s,
    to compare bit for bit."""
    layer = v.layer
    names = layer.kernels.factored.params
    label = f"the Kernels.factored grad_params kernel{where}"

    def formed() -> tuple[Any, ...]:  # the factors are the arrays handed over, by design: what is returned is their product
        grads = layer._factored_gradients(X, dY)
        if not isinstance(grads, tuple) or len(grads) != len(layer.param_names):
            raise TypeError(f"{label} must return a tuple of {len(layer.param_names)} entries, one per parameter")
        for name, grad in zip(layer.param_names, grads):
            if name in names and not (isinstance(grad, tuple) and len(grad) == 2 and all(isinstance(f, np.ndarray) and f.ndim == 2 for f in grad)
                                      and grad[0].shape[0] == grad[1].shape[0]):
                raise TypeError(f"{label} must give {name}'s gradient as a pair (A, B) of 2-D arrays with as many rows")
        return tuple(outer_sum(*grad) if name in names else grad for name, grad in zip(layer.param_names, grads))

    expected = checker.call(v, f"layer.grad_params(X, dY){where}", layer.grad_params, X, dY)
    grads = checker.call(v, label, formed)
    return [(f"the gradient .{name}{where}", grad, getattr(expected, name), label, "layer.grad_params") for name, grad in zip(layer.param_names, grads)]


def _check_same_key(checker: _Checker) -> str | None:
    if not checker.uses_context():
        return checker.NO_CONTEXT
    for v in checker.variants():
        runs = []
        for attempt in ("first", "second"):
            Y, trace = checker.call(v, f"jn.forward(layer, X, key=key, training=True), {attempt} call", passes.forward,
                                    v.layer, v.X, key=checker.key, training=True)
            grads, dX = checker.call(v, f"jn.backward of the {attempt} training trace", passes.backward, v.layer, trace, v.dY)
            value, loss_grads = checker.call(v, f"jn.value_and_grad(..., key=key, training=True), {attempt} call", passes.value_and_grad,
                                             v.layer, checker.loss, v.X, v.T, key=checker.key, training=True)
            runs.append({"the output": [Y], "the updated model": tree.leaves(trace.updated_model), "the gradients": tree.leaves(grads),
                         "dX": [dX], "the loss": [np.float64(value)], "value_and_grad's gradients": tree.leaves(loss_grads)})
        for what, first in runs[0].items():
            second = runs[1][what]
            if len(first) != len(second) or not all(_same_bits(a, b) for a, b in zip(first, second)):
                checker.problem(f"in {v.dtype}: two training passes with the same key differ in {what}")
    return None


def _step_tolerance(dtype: np.dtype) -> tuple[float, float, float]:
    """(rtol, atol) of the arrays and rtol of the loss: rounding in another thread split."""
    return (1e-12, 1e-13, 1e-12) if dtype == np.float64 else (2e-6, 2e-7, 1e-5)


def _check_compiled_step(checker: _Checker) -> str | None:
    ran, not_compiled = False, []
    for v in checker.variants():
        d, optimizer = v.dtype, sgd(0.1)
        try:
            step = compile_step(v.layer, checker.loss, optimizer)
        except TypeError as error:
            not_compiled.append(f"in {d}: jn.compile_step refuses the layer ({_error_text(error)})")
            continue
        compiled = generic = v.layer
        compiled_state = generic_state = optimizer.init(v.layer)
        rtol, atol, loss_rtol = _step_tolerance(d)
        for i in range(checker.steps):
            step_key = random.fold_in(checker.key, i)
            try:
                compiled, compiled_state, value = checker.call(v, f"the compiled step {i + 1}", step, compiled, compiled_state, v.X, v.T, key=step_key)
            except TypeError as error:
                if i:
                    raise
                checker.call(v, "jn.train_step 1", train_step, generic, generic_state, checker.loss, optimizer, v.X, v.T, key=step_key)
                not_compiled.append(f"in {d}: the generated step does not compile ({_error_text(error)})")
                break
            generic, generic_state, expected = checker.call(v, f"jn.train_step {i + 1}", train_step, generic, generic_state,
                                                            checker.loss, optimizer, v.X, v.T, key=step_key)
            ran = True
            found = _step_difference(compiled, generic, compiled_state, generic_state, value, expected, rtol, atol, loss_rtol)
            if found:
                checker.problem(f"in {d}, after step {i + 1}: {found}")
                break
    if not ran:
        return "; ".join(not_compiled) or "no dtype to run it in"
    checker.skips += [("compiled step", reason) for reason in not_compiled]
    return None


def _step_difference(compiled: Layer, generic: Layer, compiled_state: Any, generic_state: Any, value: float, expected: float,
                     rtol: float, atol: float, loss_rtol: float) -> str:
    """What differs between the compiled and the generic step's results ("" if nothing)."""
    if not abs(value - expected) <= loss_rtol * abs(expected):  # NaN differs
        return f"the compiled step's loss {value!r} against train_step's {expected!r}"
    for what, a, b in (("model", compiled, generic), ("optimizer state", compiled_state, generic_state)):
        try:
            tree.check_same_structure(b, a)
        except ValueError as error:
            return f"the compiled step's {what} has another structure than train_step's: {error}"
        for (path, x), (_, y) in zip(tree.leaves_with_paths(a), tree.leaves_with_paths(b)):
            if not np.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True):
                difference = np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))
                return f"the compiled step's {what} differs from train_step's at {path or 'the root'} by up to {difference:.3g} (rtol {rtol:g}, atol {atol:g})"
    return ""
