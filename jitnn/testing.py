"""Tools to test layers and losses: gradient checks and full Jacobians.

Both are generic: they use only the three answers of the layer protocol, so they work for
any layer, a user's own included.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from jitnn import passes, random, tree, validate
from jitnn._checks import describe, float_input
from jitnn.losses import Loss
from jitnn.protocol import Layer

__all__ = ["check_grads", "check_loss_grad", "jacobian", "numerical_gradient", "relative_error"]


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


def check_loss_grad(loss: Loss, Y: Any, T: Any, *, eps: float = 1e-6, rtol: float = 1e-6, atol: float = 1e-8) -> None:
    """Check ``loss.grad(Y, T)`` against central differences of ``loss.value`` in float64,
    and, where the loss gives a ``value_and_grad`` kernel, that ``loss.value_and_grad``
    agrees with ``value`` and ``grad`` (which it replaces in training)."""
    if not isinstance(loss, Loss):
        raise TypeError(f"check_loss_grad: expected a jitnn loss, got {type(loss).__name__}")
    who = f"check_loss_grad({describe(loss)})"
    _check_tolerances(who, eps, rtol, atol)
    Y = np.array(float_input(Y, np.float64, describe(loss), "predictions Y"))
    numeric = numerical_gradient(lambda y: loss.value(y, T), Y, eps)
    grad = loss.grad(Y, T)
    _compare(who, "grad", grad, numeric, rtol, atol)
    if loss.kernels.value_and_grad is not None:
        value, both = loss.value_and_grad(Y, T)
        expected = loss.value(Y, T)
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
