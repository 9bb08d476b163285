"""Tolerances derived from the computation: how far two computations of one value may be
apart, from the number of roundings between them and the magnitudes those roundings are
relative to. The tests that compare two results (two BLAS thread counts, two libraries, a
batch and its rows, jitnn and a float64 reference, jitnn and PyTorch) take their bounds
from here, element by element, so that each bound is written down once.

Notation and facts (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
2002, sections 2.2 and 3.1):

- ``u`` is the unit roundoff: ``2**-24`` in float32, ``2**-53`` in float64; one correctly
  rounded operation (``+ - * /``, ``sqrt``, a conversion) has ``|fl(x) - x| <= u |x|``;
- ``gamma(n) = n u / (1 - n u)``: a sum of ``n`` terms, or a dot product of length ``n``,
  computed in ANY order (any blocking, any split between threads, any tree, with or
  without fused multiply-adds) is within ``gamma(n) * sum |terms|`` of the exact value;
- a library function (``exp``, ``log``, ``log1p``, ``tanh``, ``erf``; glibc's, NumPy's and
  SciPy's) is taken to be within 4 units in the last place, ``LIBRARY = 8`` roundings of
  ``u`` relative to its value; an error ``e`` in its argument adds ``|f'| e``.

Two computations that are each within ``E`` of the exact value are within ``2 E`` of each
other; a jitnn kernel in ``dtype`` and a float64 reference are within ``E(dtype) +
E(float64)``.

``forward_bound``, ``backward_bound`` and ``loss_bound`` carry such bounds through jitnn's
layers and losses (running error analysis, to first order in ``u``): for every layer they
compute the exact answer (in float64) and a bound on how far a jitnn kernel in ``dtype``
can be from it, given bounds on the errors already in its inputs. The rounding counts of
each layer are written next to its rule, for the operations of jitnn's kernel and of the
reference in ``reference.py`` (where the two differ, the larger count is used).

Bounds are computed in float64 from non-negative terms; :func:`assert_within` allows them
a factor ``1 + 2**-10`` for the terms of second order in ``u`` that a first-order analysis
leaves out (at most ``n u`` relative, under 1e-4 for every sum here).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

import jitnn as jn
import reference
import reference_spatial

#: Roundings of u for one call of a library function (4 units in the last place).
LIBRARY = 8

#: The allowance :func:`assert_within` makes for second-order terms (see the module's notes).
SECOND_ORDER = 1 + 2**-10


def unit_roundoff(dtype: Any) -> float:
    """``u``: ``2**-24`` for float32, ``2**-53`` for float64."""
    return float(np.finfo(dtype).eps) / 2


def gamma(n: Any, dtype: Any) -> Any:
    """``gamma(n) = n u / (1 - n u)``: the relative bound of a sum or dot product of ``n``
    terms (``n`` may be an array)."""
    nu = np.asarray(n, dtype=np.float64) * unit_roundoff(dtype)
    if np.any(nu >= 0.5):
        raise ValueError(f"gamma: n u = {np.max(nu)} is too large for a first-order bound")
    return nu / (1.0 - nu)


def absolute(*arrays: Any) -> tuple[np.ndarray, ...] | np.ndarray:
    """The arrays' absolute values in float64."""
    result = tuple(np.abs(np.asarray(a, dtype=np.float64)) for a in arrays)
    return result[0] if len(result) == 1 else result


def assert_within(actual: Any, expected: Any, bound: Any, err_msg: str = "") -> None:
    """``|actual - expected| <= bound`` element by element (both NaN, or equal infinities,
    also agree). On failure the message names the worst element and its ratio to the bound."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{err_msg}: shapes {actual.shape} and {expected.shape}"
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), actual.shape)
    assert np.all(np.isfinite(bound)) and np.all(bound >= 0), f"{err_msg}: the bound must be finite and non-negative"
    special = ~(np.isfinite(actual) & np.isfinite(expected))
    same_special = (np.isnan(actual) & np.isnan(expected)) | (actual == expected)
    assert np.all(same_special[special]), f"{err_msg}: non-finite values differ: {actual[special]} and {expected[special]}"
    with np.errstate(invalid="ignore"):
        difference = np.where(special, 0.0, np.abs(actual - expected))
    beyond = difference > bound * SECOND_ORDER
    if beyond.any():
        ratio = np.where(bound > 0, difference / np.where(bound > 0, bound, 1.0), np.inf)
        worst = np.unravel_index(np.argmax(np.where(beyond, ratio, -1.0)), actual.shape) if actual.ndim else ()
        raise AssertionError(
            f"{err_msg}: {int(beyond.sum())} of {beyond.size} elements differ by more than the derived bound; the worst, "
            f"at {tuple(int(i) for i in worst)}: {actual[worst]!r} against {expected[worst]!r}, a difference of "
            f"{difference[worst]:.3e} against a bound of {bound[worst]:.3e} ({ratio[worst]:.3g} times the bound)"
        )


# --------------------------------------------------------------------------- layers
class Saved(NamedTuple):
    """What a forward rule keeps for the backward rule: the exact input, the bound on its
    error, and the rule's own values (the members' ``Saved`` for a composite)."""

    X: np.ndarray
    eX: np.ndarray
    own: Any


class Gradients(NamedTuple):
    """The exact input gradient and parameter gradients (in ``jn.tree.leaves(...,
    trainable=True)`` order), with bounds on their errors."""

    dX: np.ndarray
    edX: np.ndarray
    grads: list[np.ndarray]
    egrads: list[np.ndarray]


_FORWARD: dict[type, Callable[..., tuple[np.ndarray, np.ndarray, Any]]] = {}
_BACKWARD: dict[type, Callable[..., Gradients]] = {}


def _rule(*classes: type) -> Callable[[Any], Any]:
    def register(pair: Any) -> Any:
        for cls in classes:
            _FORWARD[cls], _BACKWARD[cls] = pair.forward, pair.backward
        return pair

    return register


def _f64(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _like(e: Any, X: np.ndarray) -> np.ndarray:
    return np.broadcast_to(_f64(e), X.shape).copy()


def forward_bound(layer: jn.Layer, X: Any, dtype: Any, eX: Any = 0.0, *, masks: Iterator[np.ndarray] | None = None,
                  training: bool = False) -> tuple[np.ndarray, np.ndarray, Saved]:
    """The exact output of ``layer`` on ``X`` (float64), a bound on the error of jitnn's output
    computed in ``dtype`` from an input within ``eX`` of ``X``, and what :func:`backward_bound`
    needs. ``masks`` yields the training-mode dropout masks (in the order of the layers);
    without it Dropout is the identity (evaluation mode). ``training`` selects batch
    normalization's batch statistics."""
    X = _f64(X) if np.asarray(X).dtype.kind == "f" else np.asarray(X)
    eX = _like(eX, X) if X.dtype.kind == "f" else np.zeros(X.shape)
    rule = _FORWARD.get(type(layer))
    if rule is None:
        raise NotImplementedError(f"no error rule for {type(layer).__name__}")
    Y, eY, own = rule(layer, X, eX, dtype, masks, training)
    return Y, eY, Saved(X, eX, own)


def backward_bound(layer: jn.Layer, saved: Saved, dY: Any, dtype: Any, edY: Any = 0.0) -> Gradients:
    """The exact input and parameter gradients of ``layer`` for the output gradient ``dY``,
    with bounds on the errors of jitnn's computing them in ``dtype`` from an output gradient
    within ``edY`` of ``dY`` (and the input the forward rule was given)."""
    dY = _f64(dY)
    return _BACKWARD[type(layer)](layer, saved, dY, _like(edY, dY), dtype)


def layer_bounds(layer: jn.Layer, X: Any, dY: Any, dtype: Any, **options: Any) -> tuple[np.ndarray, np.ndarray, Gradients]:
    """``(Y, eY, gradients)`` for a layer on exact inputs: one forward and one backward rule."""
    Y, eY, saved = forward_bound(layer, X, dtype, **options)
    return Y, eY, backward_bound(layer, saved, dY, dtype)


def _no_input_error(name: str, *errors: np.ndarray) -> None:
    if any(np.any(e) for e in errors):
        raise NotImplementedError(f"the {name} rule takes exact inputs only")


class _Dense:
    """``Y = X @ W + b``: a product of length ``n_in`` then the bias, ``gamma(n_in + 1)``;
    ``dX = dY @ W.T``, ``gamma(n_out)``; ``dW = X.T @ dY`` and ``db`` (a loop over the batch),
    ``gamma(n)``."""

    @staticmethod
    def forward(layer, X, eX, dtype, masks, training):
        W, b = _f64(layer.W), _f64(layer.b)
        Y = X @ W + b
        aX, aW = absolute(X, W)
        return Y, eX @ aW + gamma(W.shape[0] + 1, dtype) * (aX @ aW + np.abs(b)), None

    @staticmethod
    def backward(layer, saved, dY, edY, dtype):
        X, eX = saved.X, saved.eX
        W = _f64(layer.W)
        aX, aW, adY = absolute(X, W, dY)
        n = X.shape[0]
        dX = dY @ W.T
        edX = edY @ aW.T + gamma(W.shape[1], dtype) * (adY @ aW.T)
        dW = X.T @ dY
        edW = aX.T @ edY + eX.T @ adY + gamma(n, dtype) * (aX.T @ adY)
        db = dY.sum(axis=0)
        edb = edY.sum(axis=0) + gamma(n, dtype) * adY.sum(axis=0)
        return Gradients(dX, edX, [dW, db], [edW, edb])


_rule(jn.Dense)(_Dense)


class _Elementwise:
    """``y = f(x)`` and ``dx = dy f'(x)`` element by element: an input error ``e`` adds
    ``|f'| e`` to ``y`` and ``|f''| |dy| e`` to ``dx`` (for the piecewise-linear activations, an
    input within ``e`` of the kink may take the other branch: ``|1 - slope| |dy|`` more).
    The rounding counts (``L = LIBRARY``):

    - Identity, ReLU: exact;
    - LeakyReLU: ``slope * x``, one rounding (x <= 0), for ``y`` and for ``dx``;
    - Sigmoid: ``y`` is ``1 / (1 + exp(-x))`` or ``exp(x) / (1 + exp(x))``: ``2 L + 3`` relative;
      ``dx`` is jitnn's ``dy e / ((1 + e) (1 + e))``, ``e = exp(-|x|)`` (``3 L + 5`` relative),
      or the reference's ``dy s (1 - s)``, whose cancellation in ``1 - s`` gives ``(2 L + 6)
      |dy| s``: both within ``(3 L + 5) u |dy| s``;
    - Tanh: ``y`` one library call; ``dx = dy (1 - y y)``: ``(2 L + 1) u t**2`` from ``y**2``, then
      two roundings of ``|dy| (1 - t**2)``;
    - GELU: ``y = 0.5 x (1 + erf(x / sqrt 2))``: the argument (two roundings, ``erf`` changes by
      at most 0.49 of them), erf, ``1 + erf`` and the product: ``(L + 4) u 0.5 |x| (1 + |erf|)``;
      ``f' = Phi(x) + x phi(x)``: the same for ``Phi``, and ``x**2 + L + 3`` roundings for ``x
      phi(x)`` (``exp(-x**2 / 2)`` of a rounded argument), so ``(L + 5 + x**2) u |dy| (Phi + |x|
      phi)`` with ``Phi`` written ``0.5 (1 + |erf|)``.
    """

    @staticmethod
    def values(layer, x):
        if isinstance(layer, (jn.ReLU, jn.LeakyReLU)):
            slope = 0.0 if isinstance(layer, jn.ReLU) else layer.negative_slope
            return np.where(x > 0, x, slope * x), np.where(x > 0, 1.0, slope), np.zeros_like(x), slope
        if isinstance(layer, jn.Sigmoid):
            s = reference.Sigmoid.value(x)
            return s, s * (1 - s), s * (1 - s) * (1 - 2 * s), None
        if isinstance(layer, jn.Tanh):
            t = np.tanh(x)
            return t, 1 - t * t, -2 * t * (1 - t * t), None
        if isinstance(layer, jn.GELU):
            phi = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
            return reference.GELU.value(x), reference.GELU.derivative(x), phi * (2 - x * x), None
        return x.copy(), np.ones_like(x), np.zeros_like(x), None  # Identity

    @classmethod
    def own(cls, layer, x, y, dY, dtype):
        """The rounding bounds of y and of dx (exact inputs)."""
        u, L = unit_roundoff(dtype), LIBRARY
        if isinstance(layer, jn.LeakyReLU):
            return np.where(x > 0, 0.0, u * np.abs(y)), np.where(x > 0, 0.0, u * np.abs(layer.negative_slope * dY))
        if isinstance(layer, jn.Sigmoid):
            return (2 * L + 3) * u * y, (3 * L + 5) * u * np.abs(dY) * y
        if isinstance(layer, jn.Tanh):
            return L * u * np.abs(y), u * np.abs(dY) * ((2 * L + 1) * y * y + 2 * (1 - y * y))
        if isinstance(layer, jn.GELU):
            from scipy.special import erf

            Phi = 0.5 * (1 + np.abs(erf(x / math.sqrt(2))))
            phi = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
            return (L + 4) * u * np.abs(x) * Phi, (L + 5 + x * x) * u * np.abs(dY) * (Phi + np.abs(x) * phi)
        return np.zeros_like(x), np.zeros_like(x)  # Identity, ReLU: exact

    @classmethod
    def forward(cls, layer, X, eX, dtype, masks, training):
        y, d1, _, slope = cls.values(layer, X)
        lipschitz = np.abs(d1)
        if slope is not None:  # near the kink the other branch's slope applies
            lipschitz = np.where(np.abs(X) <= eX, max(1.0, abs(slope)), lipschitz)
        return y, lipschitz * eX + cls.own(layer, X, y, np.zeros_like(X), dtype)[0], None

    @classmethod
    def backward(cls, layer, saved, dY, edY, dtype):
        X, eX = saved.X, saved.eX
        y, d1, d2, slope = cls.values(layer, X)
        dX = dY * d1
        edX = np.abs(d1) * edY + np.abs(d2) * np.abs(dY) * eX + cls.own(layer, X, y, dY, dtype)[1]
        if slope is not None:
            flip = np.abs(X) <= eX
            edX = np.where(flip, edX + abs(1.0 - slope) * (np.abs(dY) + edY), edX)
        return Gradients(dX, edX, [], [])


_rule(jn.Identity, jn.ReLU, jn.LeakyReLU, jn.Sigmoid, jn.Tanh, jn.GELU)(_Elementwise)


class _Softmax:
    """Softmax over the last axis, ``s = exp(x - max) / sum``: relative error ``u (|x - max| +
    L)`` from the rounded difference and the exponential, plus the sum's (its terms' relative
    errors weighted by their shares ``s``, and ``gamma(k)``) and the division's (``u``): ``r``
    for each element. An input error ``e`` moves
    ``s`` by at most ``s (e + sum(s e))``. ``dx = s (dy - sum(dy s))``: ``s``'s error, the inner
    sum ``gamma(k)``, the difference and the product: ``s (r + gamma(k) + 2 u) (|q| + sum(|dy|
    s))`` with ``q = dy - sum(dy s)``."""

    @staticmethod
    def values(X, dtype):
        u, L = unit_roundoff(dtype), LIBRARY
        k = X.shape[-1]
        spread = X.max(axis=-1, keepdims=True) - X
        s = reference.Softmax.forward(X)
        r = u * (spread + L) + np.sum(s * u * (spread + L), axis=-1, keepdims=True) + gamma(k, dtype) + u
        return s, r

    @classmethod
    def forward(cls, layer, X, eX, dtype, masks, training):
        s, r = cls.values(X, dtype)
        return s, s * (eX + np.sum(s * eX, axis=-1, keepdims=True)) + s * r, None

    @classmethod
    def backward(cls, layer, saved, dY, edY, dtype):
        X, eX = saved.X, saved.eX
        s, r = cls.values(X, dtype)
        k, u = X.shape[-1], unit_roundoff(dtype)
        row = lambda a: np.sum(a, axis=-1, keepdims=True)
        q = dY - row(dY * s)
        magnitude = np.abs(q) + row(np.abs(dY) * s)
        es = s * (eX + row(s * eX))
        edX = s * (r + gamma(k, dtype) + 2 * u) * magnitude + es * np.abs(q) + s * row(np.abs(dY) * es) + s * (edY + row(s * edY))
        return Gradients(s * q, edX, [], [])


_rule(jn.Softmax)(_Softmax)


class _Dropout:
    """Training mode: ``y = x m`` with the mask's values ``0`` or ``1 / (1 - rate)``, one
    rounding (and so for ``dx = dy m``); evaluation mode: the identity."""

    @staticmethod
    def forward(layer, X, eX, dtype, masks, training):
        mask = None if masks is None else _f64(next(masks))
        if mask is None:
            return X.copy(), eX.copy(), None
        Y = X * mask
        return Y, np.abs(mask) * eX + unit_roundoff(dtype) * np.abs(Y), mask

    @staticmethod
    def backward(layer, saved, dY, edY, dtype):
        mask = saved.own
        if mask is None:
            return Gradients(dY.copy(), edY.copy(), [], [])
        dX = dY * mask
        return Gradients(dX, np.abs(mask) * edY + unit_roundoff(dtype) * np.abs(dX), [], [])


_rule(jn.Dropout)(_Dropout)


class _Reshape:
    """Flatten and Reshape move values: exact."""

    @staticmethod
    def forward(layer, X, eX, dtype, masks, training):
        shape = (X.shape[0], -1) if isinstance(layer, jn.Flatten) else (X.shape[0], *layer.shape)
        return X.reshape(shape).copy(), eX.reshape(shape).copy(), None

    @staticmethod
    def backward(layer, saved, dY, edY, dtype):
        return Gradients(dY.reshape(saved.X.shape).copy(), edY.reshape(saved.X.shape).copy(), [], [])


_rule(jn.Flatten, jn.Reshape)(_Reshape)


class _Chain:
    """Members in order: each member's bound is the next one's input error."""

    @staticmethod
    def forward(layer, X, eX, dtype, masks, training):
        saved = []
        for member in layer.layers:
            X, eX, kept = forward_bound(member, X, dtype, eX, masks=masks, training=training)
            saved.append(kept)
        return X, eX, saved

    @staticmethod
    def backward(layer, saved, dY, edY, dtype):
        grads: list[list[np.ndarray]] = []
        egrads: list[list[np.ndarray]] = []
        for member, kept in zip(layer.layers[::-1], saved.own[::-1]):
            g = backward_bound(member, kept, dY, dtype, edY)
            dY, edY = g.dX, g.edX
            grads.insert(0, g.grads)
            egrads.insert(0, g.egrads)
        return Gradients(dY, edY, [a for m in grads for a in m], [a for m in egrads for a in m])


_rule(jn.Chain)(_Chain)


class _Residual:
    """``y = x + inner(x)`` and ``dx = dy + inner's dx``: one rounding each."""

    @staticmethod
    def forward(layer, X, eX, dtype, masks, training):
        inner, e_inner, kept = forward_bound(layer.inner, X, dtype, eX, masks=masks, training=training)
        Y = X + inner
        return Y, eX + e_inner + unit_roundoff(dtype) * np.abs(Y), kept

    @staticmethod
    def backward(layer, saved, dY, edY, dtype):
        g = backward_bound(layer.inner, saved.own, dY, dtype, edY)
        dX = dY + g.dX
        return Gradients(dX, edY + g.edX + unit_roundoff(dtype) * np.abs(dX), g.grads, g.egrads)


class _Branches:
    """Concatenate joins the branches' outputs (exact) and Add sums them (``gamma(B - 1)``
    for ``B`` branches); both sum the branches' input gradients (``gamma(B - 1)``)."""

    @staticmethod
    def forward(layer, X, eX, dtype, masks, training):
        outputs = [forward_bound(branch, X, dtype, eX, masks=masks, training=training) for branch in layer.branches]
        if isinstance(layer, jn.Concatenate):
            axis = layer.axis + 1
            return np.concatenate([o[0] for o in outputs], axis=axis), np.concatenate([o[1] for o in outputs], axis=axis), outputs
        Y = sum(o[0] for o in outputs)
        eY = sum(o[1] for o in outputs) + gamma(len(outputs) - 1, dtype) * sum(np.abs(o[0]) for o in outputs)
        return Y, eY, outputs

    @staticmethod
    def backward(layer, saved, dY, edY, dtype):
        outputs = saved.own
        if isinstance(layer, jn.Concatenate):
            axis = layer.axis + 1
            cuts = np.cumsum([o[0].shape[axis] for o in outputs])[:-1]
            parts = zip(np.split(dY, cuts, axis=axis), np.split(edY, cuts, axis=axis))
        else:
            parts = ((dY, edY) for _ in outputs)
        gs = [backward_bound(branch, o[2], d, dtype, e) for branch, o, (d, e) in zip(layer.branches, outputs, parts)]
        dX = sum(g.dX for g in gs)
        edX = sum(g.edX for g in gs) + gamma(len(gs) - 1, dtype) * sum(np.abs(g.dX) for g in gs)
        return Gradients(dX, edX, [a for g in gs for a in g.grads], [a for g in gs for a in g.egrads])


_rule(jn.Residual)(_Residual)
_rule(jn.Concatenate, jn.Add)(_Branches)


def _conv_config(layer: jn.Conv2D) -> dict[str, Any]:
    return {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation}


class _Conv2D:
    """One product per example: ``y`` sums ``C kh kw`` products and the bias, ``gamma(C kh kw +
    1)``; an element of ``dx`` sums at most ``out kh kw`` products (a product of length
    ``out``, then the overlapping windows); ``dW`` and ``db`` sum over ``n Ho Wo`` positions.
    Every magnitude is the reference's loops on absolute values (they are linear in each
    argument)."""

    @staticmethod
    def forward(layer, X, eX, dtype, masks, training):
        W, b, config = _f64(layer.W), _f64(layer.b), _conv_config(layer)
        conv = reference_spatial.Conv2D
        Y = conv.forward(X, W, b, **config)
        aX, aW = absolute(X, W)
        terms = W[0].size + 1
        return Y, conv.forward(eX, aW, 0 * b, **config) + gamma(terms, dtype) * conv.forward(aX, aW, np.abs(b), **config), None

    @staticmethod
    def backward(layer, saved, dY, edY, dtype):
        X, eX = saved.X, saved.eX
        W, b, config = _f64(layer.W), _f64(layer.b), _conv_config(layer)
        conv = reference_spatial.Conv2D
        aX, aW, adY = absolute(X, W, dY)
        out, _, kh, kw = W.shape
        dX = conv.grad_input(X, dY, W, b, **config)
        edX = conv.grad_input(X, edY, aW, b, **config) + gamma(out * kh * kw, dtype) * conv.grad_input(X, adY, aW, b, **config)
        dW, db = conv.grad_params(X, dY, W, b, **config)
        positions = dY.shape[0] * dY.shape[2] * dY.shape[3]
        edW = conv.grad_params(aX, edY, W, b, **config)[0] + conv.grad_params(eX, adY, W, b, **config)[0]
        edW = edW + gamma(positions, dtype) * conv.grad_params(aX, adY, W, b, **config)[0]
        edb = edY.sum(axis=(0, 2, 3)) + gamma(positions, dtype) * adY.sum(axis=(0, 2, 3))
        return Gradients(dX, edX, [dW, db], [edW, edb])


_rule(jn.Conv2D)(_Conv2D)


def _pool_config(layer: Any) -> dict[str, Any]:
    return {"kernel_size": layer.kernel_size, "stride": layer.stride, "padding": layer.padding}


def _near_ties(X: np.ndarray, eX: np.ndarray, kernel_size: Any, stride: Any, padding: Any) -> np.ndarray:
    """1 for every element of a window whose maximum another element could overtake (within
    the two input errors), 0 elsewhere; shaped like the pooled output's windows' union."""
    marks = np.zeros(reference_spatial._padded(X, padding, 0.0).shape)
    Xp = reference_spatial._padded(X, padding, -np.inf)
    Ep = reference_spatial._padded(eX, padding, 0.0)
    Ho, Wo = (reference_spatial._output_size(X.shape[2 + k], kernel_size[k], stride[k], padding[k]) for k in range(2))
    for y in range(Ho):
        for x in range(Wo):
            rows, cols = reference_spatial._window(y, x, kernel_size, stride)
            window, errors = Xp[:, :, rows, cols], Ep[:, :, rows, cols]
            top = window.max(axis=(2, 3), keepdims=True)
            top_error = np.where(window == top, errors, 0).max(axis=(2, 3), keepdims=True)
            rivals = (window != top) & (top - window <= errors + top_error)
            close = rivals.any(axis=(2, 3), keepdims=True) & np.isfinite(top)
            marks[:, :, rows, cols] = np.maximum(marks[:, :, rows, cols], np.broadcast_to(close, window.shape))
    return reference_spatial._unpadded(marks, padding)


class _Pool:
    """MaxPool2D: ``y`` is one of the window's elements (off by at most the largest input
    error of the window); ``dx`` sums the ``dy`` routed to an element, at most ``kh kw`` of
    them, ``gamma(kh kw)``; where an input error could change a window's maximum, ``|dy|`` may
    go to any of its elements. AvgPool2D: a window's sum and a division (``gamma(kh kw + 1)``);
    ``dx`` sums at most ``kh kw`` quotients or products by ``1 / (kh kw)``
    (``gamma(kh kw + 2)``)."""

    @staticmethod
    def forward(layer, X, eX, dtype, masks, training):
        config = _pool_config(layer)
        kh, kw = layer.kernel_size
        if isinstance(layer, jn.MaxPool2D):
            pool = reference_spatial.MaxPool2D
            Xp = reference_spatial._padded(eX, layer.padding, 0.0)
            eY = reference_spatial.MaxPool2D.forward(Xp, layer.kernel_size, layer.stride, (0, 0))
            return pool.forward(X, **config), eY, None
        pool = reference_spatial.AvgPool2D
        return pool.forward(X, **config), pool.forward(eX, **config) + gamma(kh * kw + 1, dtype) * pool.forward(np.abs(X), **config), None

    @staticmethod
    def backward(layer, saved, dY, edY, dtype):
        X, eX = saved.X, saved.eX
        config = _pool_config(layer)
        kh, kw = layer.kernel_size
        pool = reference_spatial.MaxPool2D if isinstance(layer, jn.MaxPool2D) else reference_spatial.AvgPool2D
        terms = kh * kw if isinstance(layer, jn.MaxPool2D) else kh * kw + 2
        dX = pool.grad_input(X, dY, **config)
        edX = pool.grad_input(X, edY, **config) + gamma(terms, dtype) * pool.grad_input(X, np.abs(dY), **config)
        if isinstance(layer, jn.MaxPool2D) and np.any(eX):
            spread = reference_spatial.AvgPool2D.grad_input(X, np.abs(dY) + edY, **config) * kh * kw
            edX = edX + _near_ties(X, eX, **config) * spread
        return Gradients(dX, edX, [], [])


_rule(jn.MaxPool2D, jn.AvgPool2D)(_Pool)


def _conv1d_config(layer: jn.Conv1D) -> dict[str, Any]:
    return {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation}


class _Conv1D:
    """As :class:`_Conv2D` on sequences (its kernels are Conv2D's on a height of 1): ``y`` sums
    ``C k`` products and the bias, ``gamma(C k + 1)``; an element of ``dx`` at most ``out k``
    products; ``dW`` and ``db`` sum over ``n Lo`` positions. The magnitudes are the 1-D
    reference's loops on absolute values."""

    @staticmethod
    def forward(layer, X, eX, dtype, masks, training):
        W, b, config = _f64(layer.W), _f64(layer.b), _conv1d_config(layer)
        conv = reference_spatial.Conv1D
        Y = conv.forward(X, W, b, **config)
        aX, aW = absolute(X, W)
        terms = W[0].size + 1
        return Y, conv.forward(eX, aW, 0 * b, **config) + gamma(terms, dtype) * conv.forward(aX, aW, np.abs(b), **config), None

    @staticmethod
    def backward(layer, saved, dY, edY, dtype):
        X, eX = saved.X, saved.eX
        W, b, config = _f64(layer.W), _f64(layer.b), _conv1d_config(layer)
        conv = reference_spatial.Conv1D
        aX, aW, adY = absolute(X, W, dY)
        out, _, k = W.shape
        dX = conv.grad_input(X, dY, W, b, **config)
        edX = conv.grad_input(X, edY, aW, b, **config) + gamma(out * k, dtype) * conv.grad_input(X, adY, aW, b, **config)
        dW, db = conv.grad_params(X, dY, W, b, **config)
        positions = dY.shape[0] * dY.shape[2]
        edW = conv.grad_params(aX, edY, W, b, **config)[0] + conv.grad_params(eX, adY, W, b, **config)[0]
        edW = edW + gamma(positions, dtype) * conv.grad_params(aX, adY, W, b, **config)[0]
        edb = edY.sum(axis=(0, 2)) + gamma(positions, dtype) * adY.sum(axis=(0, 2))
        return Gradients(dX, edX, [dW, db], [edW, edb])


_rule(jn.Conv1D)(_Conv1D)


def _near_ties_1d(X: np.ndarray, eX: np.ndarray, kernel_size: int, stride: int, padding: int) -> np.ndarray:
    """:func:`_near_ties` for sequences ``(n, C, L)``."""
    marks = np.zeros(reference_spatial._padded_1d(X, padding, 0.0).shape)
    Xp = reference_spatial._padded_1d(X, padding, -np.inf)
    Ep = reference_spatial._padded_1d(eX, padding, 0.0)
    for t in range(reference_spatial._output_size(X.shape[2], kernel_size, stride, padding)):
        window = reference_spatial._window_1d(t, kernel_size, stride)
        values, errors = Xp[:, :, window], Ep[:, :, window]
        top = values.max(axis=2, keepdims=True)
        top_error = np.where(values == top, errors, 0).max(axis=2, keepdims=True)
        rivals = (values != top) & (top - values <= errors + top_error)
        close = rivals.any(axis=2, keepdims=True) & np.isfinite(top)
        marks[:, :, window] = np.maximum(marks[:, :, window], np.broadcast_to(close, values.shape))
    return reference_spatial._unpadded_1d(marks, padding)


class _Pool1D:
    """As :class:`_Pool` on sequences: MaxPool1D's ``y`` is one of the window's elements,
    ``dx`` sums at most ``k`` routed ``dy`` (``gamma(k)``), and an input error that could change
    a window's maximum may send ``|dy|`` to any of its elements; AvgPool1D's ``y`` a window's
    sum and a division (``gamma(k + 1)``), ``dx`` at most ``k`` quotients (``gamma(k + 2)``)."""

    @staticmethod
    def forward(layer, X, eX, dtype, masks, training):
        config = _pool_config(layer)
        k = layer.kernel_size
        if isinstance(layer, jn.MaxPool1D):
            pool = reference_spatial.MaxPool1D
            eY = pool.forward(reference_spatial._padded_1d(eX, layer.padding, 0.0), k, layer.stride, 0)
            return pool.forward(X, **config), eY, None
        pool = reference_spatial.AvgPool1D
        return pool.forward(X, **config), pool.forward(eX, **config) + gamma(k + 1, dtype) * pool.forward(np.abs(X), **config), None

    @staticmethod
    def backward(layer, saved, dY, edY, dtype):
        X, eX = saved.X, saved.eX
        config = _pool_config(layer)
        k = layer.kernel_size
        maximum = isinstance(layer, jn.MaxPool1D)
        pool = reference_spatial.MaxPool1D if maximum else reference_spatial.AvgPool1D
        dX = pool.grad_input(X, dY, **config)
        edX = pool.grad_input(X, edY, **config) + gamma(k if maximum else k + 2, dtype) * pool.grad_input(X, np.abs(dY), **config)
        if maximum and np.any(eX):
            spread = reference_spatial.AvgPool1D.grad_input(X, np.abs(dY) + edY, **config) * k
            edX = edX + _near_ties_1d(X, eX, **config) * spread
        return Gradients(dX, edX, [], [])


_rule(jn.MaxPool1D, jn.AvgPool1D)(_Pool1D)


class _GlobalAvgPool:
    """Per channel of an example, ``m`` values: ``y`` a sum and a division, ``gamma(m + 1)`` of
    the mean of ``|x|``; ``dx = dy / m``, a division and the store, ``gamma(2)``."""

    @staticmethod
    def forward(layer, X, eX, dtype, masks, training):
        pool = reference_spatial.GlobalAvgPool
        m = X[0, 0].size
        return pool.forward(X), pool.forward(eX) + gamma(m + 1, dtype) * pool.forward(np.abs(X)), None

    @staticmethod
    def backward(layer, saved, dY, edY, dtype):
        pool = reference_spatial.GlobalAvgPool
        dX = pool.grad_input(saved.X, dY)
        return Gradients(dX, pool.grad_input(saved.X, edY) + gamma(2, dtype) * np.abs(dX), [], [])


_rule(jn.GlobalAvgPool)(_GlobalAvgPool)


class _LayerNorm:
    """Per row of ``k`` features (exact inputs only): the mean ``gamma(k + 1)`` of ``|x|``; ``d =
    x - mean``; the variance ``mean(2 |d| e_d) + gamma(k + 2) var``; ``1 / sqrt(var + eps)``
    three more roundings, half of the variance's relative error; ``xhat = d / std`` with ``e_d
    / std`` and two roundings; ``y = xhat scale + shift`` two. ``dx = (g - mean g - xhat
    mean(g xhat)) / std`` with ``g = dy scale``: ``gamma(k + 4)`` of the magnitudes, and the
    errors of ``xhat`` and ``1 / std``. The parameters' gradients sum over the rows."""

    @staticmethod
    def stats(layer, X, dtype):
        u, k = unit_roundoff(dtype), X.shape[-1]
        mean = X.mean(axis=-1, keepdims=True)
        d = X - mean
        var = (d * d).mean(axis=-1, keepdims=True)
        inv = 1 / np.sqrt(var + layer.eps)
        e_d = gamma(k + 1, dtype) * np.abs(X).mean(axis=-1, keepdims=True) + u * np.abs(d)
        e_var = (2 * np.abs(d) * e_d).mean(axis=-1, keepdims=True) + gamma(k + 2, dtype) * var
        rho_inv = 0.5 * (e_var / (var + layer.eps) + u) + 2 * u
        xhat = d * inv
        e_xhat = e_d * inv + np.abs(xhat) * (rho_inv + u)
        return xhat, e_xhat, inv, rho_inv

    @classmethod
    def forward(cls, layer, X, eX, dtype, masks, training):
        _no_input_error("LayerNorm", eX)
        u = unit_roundoff(dtype)
        scale, shift = _f64(layer.scale), _f64(layer.shift)
        xhat, e_xhat, _, _ = cls.stats(layer, X, dtype)
        Y = xhat * scale + shift
        return Y, np.abs(scale) * e_xhat + u * np.abs(xhat * scale) + u * np.abs(Y), None

    @classmethod
    def backward(cls, layer, saved, dY, edY, dtype):
        X = saved.X
        _no_input_error("LayerNorm", saved.eX, edY)
        u, k = unit_roundoff(dtype), X.shape[-1]
        scale = _f64(layer.scale)
        xhat, e_xhat, inv, rho_inv = cls.stats(layer, X, dtype)
        mean = lambda a: a.mean(axis=-1, keepdims=True)
        g = dY * scale
        inner = g - mean(g) - xhat * mean(g * xhat)
        dX = inv * inner
        e_inner = gamma(k + 4, dtype) * (np.abs(g) + mean(np.abs(g)) + np.abs(xhat) * mean(np.abs(g * xhat)))
        e_inner = e_inner + np.abs(mean(g * xhat)) * e_xhat + np.abs(xhat) * mean(np.abs(g) * e_xhat)
        edX = inv * e_inner + np.abs(dX) * (rho_inv + u)
        rows = X.size // k
        flat = lambda a: a.reshape(-1, k)
        d_scale = flat(dY * xhat).sum(axis=0)
        e_scale = flat(np.abs(dY) * e_xhat).sum(axis=0) + gamma(rows + 1, dtype) * flat(np.abs(dY * xhat)).sum(axis=0)
        d_shift = flat(dY).sum(axis=0)
        e_shift = gamma(rows, dtype) * flat(np.abs(dY)).sum(axis=0)
        return Gradients(dX, edX, [d_scale, d_shift], [e_scale, e_shift])


_rule(jn.LayerNorm)(_LayerNorm)


class _BatchNorm:
    """Per channel, over its ``N`` values (exact inputs only). Evaluation mode: ``(x - mean) *
    (scale / sqrt(var + eps)) + shift`` with the running statistics (exact): ``5 u |d f| + u
    |y|`` (``d = x - mean``, ``f`` the factor); ``dx = dy scale / std``, 6 roundings; the
    parameters' gradients sum over the ``N`` values, ``gamma(N + 6)``. Training mode: the batch
    mean ``gamma(N + 1)`` of ``|x|``, the biased variance ``mean(2 |d| e_d) + gamma(N + 2) var``,
    ``1 / std`` three roundings and half the variance's relative error, ``xhat = d / std``; then
    as in evaluation mode for ``y``; ``dx = scale / std (dy - mean(dy) - xhat mean(dy xhat))``
    (``gamma(N + 4)`` of the magnitudes, and the errors of ``xhat`` and ``1 / std``); the
    parameters' gradients ``sum(dy xhat)`` and ``sum(dy)``."""

    @staticmethod
    def shaped(layer, X, v):
        return _f64(v).reshape((1, -1) + (1,) * (X.ndim - 2))

    @classmethod
    def stats(cls, layer, X, dtype, training):
        """mean, var, d = x - mean and its error, and the relative error of 1 / sqrt(var + eps)."""
        u = unit_roundoff(dtype)
        axes = (0,) + tuple(range(2, X.ndim))
        count = X.size // X.shape[1]
        if training:
            mean = X.mean(axis=axes, keepdims=True)
            d = X - mean
            var = (d * d).mean(axis=axes, keepdims=True)
            e_d = gamma(count + 1, dtype) * np.abs(X).mean(axis=axes, keepdims=True) + u * np.abs(d)
            e_var = (2 * np.abs(d) * e_d).mean(axis=axes, keepdims=True) + gamma(count + 2, dtype) * var
            rho = 0.5 * (e_var / (var + layer.eps) + u) + 2 * u
        else:
            mean, var = cls.shaped(layer, X, layer.running_mean), cls.shaped(layer, X, layer.running_var)
            d = X - mean
            e_d, e_var, rho = u * np.abs(d), np.zeros_like(var), 3 * u
        return mean, var, d, e_d, e_var, rho

    @classmethod
    def forward(cls, layer, X, eX, dtype, masks, training):
        _no_input_error("BatchNorm", eX)
        u = unit_roundoff(dtype)
        c = lambda v: cls.shaped(layer, X, v)
        _, var, d, e_d, _, rho = cls.stats(layer, X, dtype, training)
        factor = c(layer.scale) / np.sqrt(var + layer.eps)
        Y = d * factor + c(layer.shift)
        eY = e_d * np.abs(factor) + np.abs(d * factor) * (rho + u) + u * np.abs(Y)
        return Y, eY, training

    @classmethod
    def backward(cls, layer, saved, dY, edY, dtype):
        X, training = saved.X, saved.own
        _no_input_error("BatchNorm", saved.eX, edY)
        u = unit_roundoff(dtype)
        c = lambda v: cls.shaped(layer, X, v)
        axes = (0,) + tuple(range(2, X.ndim))
        count = X.size // X.shape[1]
        _, var, d, e_d, _, rho = cls.stats(layer, X, dtype, training)
        inv = 1 / np.sqrt(var + layer.eps)
        xhat = d * inv
        e_xhat = e_d * inv + np.abs(xhat) * (rho + u)
        scale = c(layer.scale)
        if training:
            mean = lambda a: a.mean(axis=axes, keepdims=True)
            inner = dY - mean(dY) - xhat * mean(dY * xhat)
            e_inner = gamma(count + 4, dtype) * (np.abs(dY) + mean(np.abs(dY)) + np.abs(xhat) * mean(np.abs(dY * xhat)))
            e_inner = e_inner + np.abs(mean(dY * xhat)) * e_xhat + np.abs(xhat) * mean(np.abs(dY) * e_xhat)
            dX = scale * inv * inner
            edX = np.abs(scale * inv) * e_inner + np.abs(dX) * (rho + 2 * u)
        else:
            dX = dY * scale * inv
            edX = 6 * u * np.abs(dX)
        d_scale, d_shift = (dY * xhat).sum(axis=axes), dY.sum(axis=axes)
        e_scale = (np.abs(dY) * e_xhat).sum(axis=axes) + gamma(count + 2, dtype) * np.abs(dY * xhat).sum(axis=axes)
        e_shift = gamma(count, dtype) * np.abs(dY).sum(axis=axes)
        return Gradients(dX, edX, [d_scale, d_shift], [e_scale, e_shift])


def batch_norm_statistics_bound(layer: jn.BatchNorm, X: Any, dtype: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The running statistics a training batch ``X`` gives ``layer``, ``(1 - momentum) running
    + momentum batch`` with the unbiased batch variance, exact, and bounds on their errors:
    the batch statistics' (as :class:`_BatchNorm`), the factor ``N / (N - 1)`` and its product,
    and the two products and the sum: ``(mean, e_mean, var, e_var)``."""
    X = _f64(X)
    u = unit_roundoff(dtype)
    mean, var, _, e_d, e_var, _ = _BatchNorm.stats(layer, X, dtype, True)
    count = X.size // X.shape[1]
    e_mean = (e_d - u * np.abs(X - mean)).max(axis=(0,) + tuple(range(2, X.ndim)))  # the batch mean's own error
    mean, var, e_var = (a.reshape(-1) for a in (mean, var, e_var))
    m, keep = layer.momentum, 1 - layer.momentum
    rm, rv = _f64(layer.running_mean), _f64(layer.running_var)
    unbiased = var * (count / (count - 1))
    new_mean = keep * rm + m * mean
    new_var = keep * rv + m * unbiased
    e_new_mean = m * e_mean + 3 * u * (keep * np.abs(rm) + m * np.abs(mean))
    e_new_var = m * e_var * (count / (count - 1)) + 5 * u * (keep * rv + m * unbiased)
    return new_mean, e_new_mean, new_var, e_new_var


_rule(jn.BatchNorm)(_BatchNorm)


class _Embedding:
    """A lookup (exact); a row of the table's gradient sums the ``count`` rows of ``dy`` that
    used it, ``gamma(count)``; the input gradient is zero."""

    @staticmethod
    def forward(layer, X, eX, dtype, masks, training):
        return _f64(layer.table)[X], np.zeros(X.shape + (layer.table.shape[1],)), None

    @staticmethod
    def backward(layer, saved, dY, edY, dtype):
        X, table = saved.X, layer.table
        width = table.shape[1]
        grad, magnitude, errors = np.zeros(table.shape), np.zeros(table.shape), np.zeros(table.shape)
        np.add.at(grad, X.ravel(), dY.reshape(-1, width))
        np.add.at(magnitude, X.ravel(), np.abs(dY).reshape(-1, width))
        np.add.at(errors, X.ravel(), edY.reshape(-1, width))
        counts = np.bincount(X.ravel(), minlength=table.shape[0])[:, None]
        return Gradients(np.zeros(X.shape), np.zeros(X.shape), [grad], [errors + gamma(counts, dtype) * magnitude])


_rule(jn.Embedding)(_Embedding)


class _PositionalEmbedding:
    """``y = x + table[t]``: one rounding; ``dx = dy`` (a copy, exact); a row of the table's
    gradient sums the batch's ``n`` rows of ``dy`` at its position, ``gamma(n)``."""

    @staticmethod
    def forward(layer, X, eX, dtype, masks, training):
        Y = reference.PositionalEmbedding.forward(X, layer.table)
        return Y, eX + unit_roundoff(dtype) * np.abs(Y), None

    @staticmethod
    def backward(layer, saved, dY, edY, dtype):
        n, T = dY.shape[:2]
        grad, egrad = np.zeros(layer.table.shape), np.zeros(layer.table.shape)
        grad[:T] = dY.sum(axis=0)
        egrad[:T] = edY.sum(axis=0) + gamma(n, dtype) * np.abs(dY).sum(axis=0)
        return Gradients(dY.copy(), edY.copy(), [grad], [egrad])


_rule(jn.PositionalEmbedding)(_PositionalEmbedding)


class _MultiHeadAttention:
    """Per example ``X (T, d)``, ``H`` heads of ``h = d / H`` features, ``L = LIBRARY``; each
    product's bound is that of a dot product of its length (errors in both factors carried
    through, ``e_a |b| + |a| e_b``):

    - the projection ``[Q K V] = X Wi^T + bi``: ``gamma(d + 1)`` (a product of length ``d``,
      then the bias), as :class:`_Dense`;
    - the scores ``S = Q K^T``: ``gamma(h)``; ``z = S / sqrt(h)``, the product by the scale
      (itself a square root and a division): three roundings of ``|z|``;
    - the probabilities ``P``: the softmax of ``z`` over the keys a row reads (``j <= i``
      with ``causal``: ``k`` keys), as :class:`_Softmax` (relative ``u (|z - max| + L)``,
      the sum's ``gamma(k)``, the division), and an input error ``e`` moves ``P`` by at most
      ``P (e + sum(P e))``; masked keys are exact zeros;
    - the context ``C = P V``: ``gamma(T)`` (a product over every key, the masked ones
      adding exact zeros); ``Y = C Wo^T + bo``: ``gamma(d + 1)``.

    Backwards: ``dC = dY Wo`` ``gamma(d)``; ``dP = dC V^T`` ``gamma(h)``; ``dV = P^T dC``
    ``gamma(T)``; the scores' gradient ``dS = P (dP - sum(dP P)) / sqrt(h)``: the inner sum
    ``gamma(k)`` of ``|dP| P`` with the errors of ``dP`` and ``P``, the difference one
    rounding, then the products by ``P`` and by the scale and the scale itself: five
    roundings of ``|dS|``; ``dQ = dS K`` and ``dK = dS^T Q`` ``gamma(T)``; ``dX = dqkv Wi``
    ``gamma(3 d)``; the parameters' gradients sum over the batch's ``n T`` positions,
    ``gamma(n T)``."""

    @staticmethod
    def forward(layer, X, eX, dtype, masks, training):
        u, L = unit_roundoff(dtype), LIBRARY
        H, causal = layer.num_heads, layer.causal
        Wi, bi, Wo, bo = (_f64(p) for p in layer.params)
        n, T, d = X.shape
        h = d // H
        Q, K, V, Z, P, C, Y = reference.MultiHeadAttention.parts(X, Wi, bi, Wo, bo, H, causal)
        heads = lambda a: a.reshape(n, T, H, h).transpose(0, 2, 1, 3)
        tr = lambda a: a.transpose(0, 1, 3, 2)
        row = lambda a: a.sum(axis=-1, keepdims=True)
        aX, aWi, aWo = absolute(X, Wi, Wo)
        e_qkv = eX @ aWi.T + gamma(d + 1, dtype) * (aX @ aWi.T + np.abs(bi))
        eQ, eK, eV = (heads(e_qkv[..., k * d : (k + 1) * d]) for k in range(3))
        aQ, aK, aV = absolute(Q, K, V)
        allowed = ~np.triu(np.ones((T, T), bool), 1) if causal else np.ones((T, T), bool)
        keys = allowed.sum(axis=-1, keepdims=True)
        z = np.where(allowed, Z, 0.0)
        e_z = np.where(allowed, (eQ @ tr(aK) + aQ @ tr(eK) + gamma(h, dtype) * (aQ @ tr(aK))) / np.sqrt(h) + 3 * u * np.abs(z), 0.0)
        spread = np.where(allowed, Z.max(axis=-1, keepdims=True) - z, 0.0)
        r = u * (spread + L) + row(P * u * (spread + L)) + gamma(keys, dtype) + u
        eP = P * (e_z + row(P * e_z)) + P * r
        rows = lambda a: a.transpose(0, 2, 1, 3).reshape(n, T, d)
        eC = rows(eP @ aV + P @ eV + gamma(T, dtype) * (P @ aV))
        eY = eC @ aWo.T + gamma(d + 1, dtype) * (np.abs(C) @ aWo.T + np.abs(bo))
        return Y, eY, (Q, K, V, P, C, eQ, eK, eV, eP, eC, keys)

    @staticmethod
    def backward(layer, saved, dY, edY, dtype):
        u = unit_roundoff(dtype)
        X, eX = saved.X, saved.eX
        Q, K, V, P, C, eQ, eK, eV, eP, eC, keys = saved.own
        Wi, _, Wo, _ = (_f64(p) for p in layer.params)
        n, T, d = X.shape
        H = layer.num_heads
        h = d // H
        heads = lambda a: a.reshape(n, T, H, h).transpose(0, 2, 1, 3)
        rows = lambda a: a.transpose(0, 2, 1, 3).reshape(n, T, d)
        tr = lambda a: a.transpose(0, 1, 3, 2)
        row = lambda a: a.sum(axis=-1, keepdims=True)
        flat = lambda a: a.reshape(-1, a.shape[-1])
        aX, aWi, aWo, adY, aC = absolute(X, Wi, Wo, dY, C)
        aQ, aK, aV = absolute(Q, K, V)
        dC, e_dC = heads(dY @ Wo), heads(edY @ aWo + gamma(d, dtype) * (adY @ aWo))
        adC = np.abs(dC)
        dP = dC @ tr(V)
        e_dP = e_dC @ tr(aV) + adC @ tr(eV) + gamma(h, dtype) * (adC @ tr(aV))
        dV = tr(P) @ dC
        e_dV = tr(eP) @ adC + tr(P) @ e_dC + gamma(T, dtype) * (tr(P) @ adC)
        inner = row(dP * P)
        e_inner = row(e_dP * P + np.abs(dP) * eP) + gamma(keys, dtype) * row(np.abs(dP) * P)
        q = dP - inner
        e_q = e_dP + e_inner + u * np.abs(q)
        dS = P * q / np.sqrt(h)
        e_dS = (np.abs(q) * eP + P * e_q) / np.sqrt(h) + 5 * u * np.abs(dS)
        adS = np.abs(dS)
        dQ, e_dQ = dS @ K, e_dS @ aK + adS @ eK + gamma(T, dtype) * (adS @ aK)
        dK, e_dK = tr(dS) @ Q, tr(e_dS) @ aQ + tr(adS) @ eQ + gamma(T, dtype) * (tr(adS) @ aQ)
        dqkv = np.concatenate([rows(dQ), rows(dK), rows(dV)], axis=-1)
        e_dqkv = np.concatenate([rows(e_dQ), rows(e_dK), rows(e_dV)], axis=-1)
        adqkv = np.abs(dqkv)
        dX, edX = dqkv @ Wi, e_dqkv @ aWi + gamma(3 * d, dtype) * (adqkv @ aWi)
        m = n * T
        dWi = flat(dqkv).T @ flat(X)
        e_dWi = flat(e_dqkv).T @ flat(aX) + flat(adqkv).T @ flat(eX) + gamma(m, dtype) * (flat(adqkv).T @ flat(aX))
        dbi, e_dbi = flat(dqkv).sum(axis=0), flat(e_dqkv).sum(axis=0) + gamma(m, dtype) * flat(adqkv).sum(axis=0)
        dWo = flat(dY).T @ flat(C)
        e_dWo = flat(adY).T @ flat(eC) + flat(edY).T @ flat(aC) + gamma(m, dtype) * (flat(adY).T @ flat(aC))
        dbo, e_dbo = flat(dY).sum(axis=0), flat(edY).sum(axis=0) + gamma(m, dtype) * flat(adY).sum(axis=0)
        return Gradients(dX, edX, [dWi, dbi, dWo, dbo], [e_dWi, e_dbi, e_dWo, e_dbo])


_rule(jn.MultiHeadAttention)(_MultiHeadAttention)


class _Recurrent:
    """RNN, GRU and LSTM, step by step in the order the layer reads the times (running error
    analysis through the recurrence, to first order). Every value carries a bound on its
    error, from the input's error, the state's from the earlier step and the roundings of the
    step. The counts hold for each formula as jitnn's kernels and PyTorch's cells write it
    (``n + z (h - n)``, ``(h - n) z + n`` or ``(1 - z) n + z h``; ``grad (1 - z)`` or ``grad -
    grad z``), each rounding taken against the magnitudes of the terms it adds (``L`` =
    LIBRARY, ``s(1 - s)`` and ``1 - t**2`` the derivatives of sigmoid and tanh at their
    outputs):

    - ``a = W_ih x + b_ih`` ``gamma(input + 1)``, ``hb = W_hh h + b_hh`` ``gamma(hidden + 1)``
      (with the state's error through ``|W_hh|``), the pre-activation ``a + hb`` one more;
      GRU's ``n`` gate ``tanh(a_n + r hb_n)``: two more roundings;
    - a sigmoid or tanh: ``L u`` of its value, and its argument's error times its derivative;
    - GRU ``h' = n + z (h - n)``: ``3 u (|h| + |n|) + u |h'|``; LSTM ``c' = f c + i g`` three
      roundings, ``h' = o tanh(c')`` one;
    - backwards, the state's gradient sums the output's, the one through ``W_hh`` (a product
      of length ``G hidden``) and GRU's ``z grad``: a rounding per term; each gate's
      pre-activation gradient is a product of three or four factors (a rounding each, and
      those inside ``1 - z``, ``s (1 - s)``, ``1 - t**2``), each factor with its own error;
    - ``dX = dA @ W_ih`` ``gamma(G hidden)``, and the parameters' gradients sum over the ``T n``
      (example, time) pairs: ``gamma(T n)`` (also when summed per step first, ``gamma(n) +
      gamma(T)``), with the errors of ``dA`` and of the input or the states.
    """

    @staticmethod
    def forward(layer, X, eX, dtype, masks, training):
        u, L = unit_roundoff(dtype), LIBRARY
        W_ih, W_hh, b_ih, b_hh = (_f64(p) for p in layer.params)
        n, T, features = X.shape
        hidden = W_hh.shape[1]
        times = list(range(T - 1, -1, -1)) if layer.reverse else list(range(T))
        zeros = np.zeros((n, hidden))
        h, eh, c, ec = zeros, zeros, zeros, zeros
        Y, eY, steps = np.zeros((n, T, hidden)), np.zeros((n, T, hidden)), []
        for t in times:
            x, ex = X[:, t], eX[:, t]
            a = x @ W_ih.T + b_ih
            ea = ex @ np.abs(W_ih).T + gamma(features + 1, dtype) * (np.abs(x) @ np.abs(W_ih).T + np.abs(b_ih))
            hb = h @ W_hh.T + b_hh
            ehb = eh @ np.abs(W_hh).T + gamma(hidden + 1, dtype) * (np.abs(h) @ np.abs(W_hh).T + np.abs(b_hh))
            step = {"h": h, "eh": eh, "c": c, "ec": ec}
            if isinstance(layer, jn.RNN):
                pre = a + hb
                h = np.tanh(pre)
                eh = (1 - h * h) * (ea + ehb + u * np.abs(pre)) + L * u * np.abs(h)
                step.update(new=h, e_new=eh)
            elif isinstance(layer, jn.GRU):
                (a_r, a_z, a_n), (hb_r, hb_z, hb_n) = np.split(a, 3, axis=1), np.split(hb, 3, axis=1)
                (ea_r, ea_z, ea_n), (ehb_r, ehb_z, ehb_n) = np.split(ea, 3, axis=1), np.split(ehb, 3, axis=1)
                r, z = reference.Sigmoid.value(a_r + hb_r), reference.Sigmoid.value(a_z + hb_z)
                er = r * (1 - r) * (ea_r + ehb_r + u * np.abs(a_r + hb_r)) + L * u * r
                ez = z * (1 - z) * (ea_z + ehb_z + u * np.abs(a_z + hb_z)) + L * u * z
                argument = a_n + r * hb_n
                e_argument = ea_n + np.abs(hb_n) * er + r * ehb_n + u * np.abs(r * hb_n) + u * np.abs(argument)
                g = np.tanh(argument)
                eg = (1 - g * g) * e_argument + L * u * np.abs(g)
                new = g + z * (h - g)
                e_new = np.abs(1 - z) * eg + np.abs(h - g) * ez + z * eh + 3 * u * (np.abs(h) + np.abs(g)) + u * np.abs(new)
                step.update(r=r, er=er, z=z, ez=ez, g=g, eg=eg, hb_n=hb_n, ehb_n=ehb_n)
                h, eh = new, e_new
            else:  # LSTM
                pre, e_pre = a + hb, ea + ehb + u * np.abs(a + hb)
                (p_i, p_f, p_g, p_o), (e_i, e_f, e_g, e_o) = np.split(pre, 4, axis=1), np.split(e_pre, 4, axis=1)
                i, f, o = (reference.Sigmoid.value(v) for v in (p_i, p_f, p_o))
                g = np.tanh(p_g)
                ei, ef, eo = (s * (1 - s) * e + L * u * s for s, e in ((i, e_i), (f, e_f), (o, e_o)))
                eg = (1 - g * g) * e_g + L * u * np.abs(g)
                cell = f * c + i * g
                e_cell = np.abs(c) * ef + f * ec + np.abs(g) * ei + i * eg + u * (np.abs(f * c) + np.abs(i * g)) + u * np.abs(cell)
                tc = np.tanh(cell)
                etc = (1 - tc * tc) * e_cell + L * u * np.abs(tc)
                step.update(i=i, ei=ei, f=f, ef=ef, g=g, eg=eg, o=o, eo=eo, tc=tc, etc=etc)
                h, eh, c, ec = o * tc, np.abs(tc) * eo + o * etc + u * np.abs(o * tc), cell, e_cell
            steps.append(step)
            Y[:, t], eY[:, t] = h, eh
        if not layer.return_sequences:
            return h, eh, (times, steps)
        return Y, eY, (times, steps)

    @staticmethod
    def backward(layer, saved, dY, edY, dtype):
        u = unit_roundoff(dtype)
        X, eX = saved.X, saved.eX
        times, steps = saved.own
        W_ih, W_hh, b_ih, b_hh = (_f64(p) for p in layer.params)
        n, T, features = X.shape
        hidden, width = W_hh.shape[1], W_ih.shape[0]
        zeros = np.zeros((n, hidden))
        rec, erec, carried, e_carried = zeros, zeros, zeros, zeros  # through W_hh; GRU's z grad or LSTM's cell gradient
        dA, edA, dB, edB = (np.zeros((n, T, width)) for _ in range(4))
        for position in range(T - 1, -1, -1):
            t, s = times[position], steps[position]
            if layer.return_sequences:
                out, e_out = dY[:, t], edY[:, t]
            else:
                out, e_out = (dY, edY) if position == T - 1 else (zeros, zeros)
            if isinstance(layer, jn.GRU):
                grad = rec + carried + out
                e_grad = erec + e_carried + e_out + 2 * u * (np.abs(rec) + np.abs(carried) + np.abs(out))
            else:
                grad, e_grad = rec + out, erec + e_out + u * (np.abs(rec) + np.abs(out))
            if isinstance(layer, jn.RNN):
                new, e_new = s["new"], s["e_new"]
                q, eq = 1 - new * new, 2 * np.abs(new) * e_new + u * new * new + u * np.abs(1 - new * new)
                da = grad * q
                e_da = np.abs(q) * e_grad + np.abs(grad) * eq + u * np.abs(da)
                a_in, e_in, a_h, e_h = da, e_da, da, e_da
            elif isinstance(layer, jn.GRU):
                r, er, z, ez, g, eg, hb_n, ehb_n, h, eh = (s[k] for k in ("r", "er", "z", "ez", "g", "eg", "hb_n", "ehb_n", "h", "eh"))
                dn = grad * (1 - z)
                e_dn = np.abs(1 - z) * e_grad + np.abs(grad) * ez + 2 * u * np.abs(grad) * (1 + z)
                q, eq = 1 - g * g, 2 * np.abs(g) * eg + u * g * g + u * np.abs(1 - g * g)
                d_n = dn * q
                e_d_n = np.abs(q) * e_dn + np.abs(dn) * eq + u * np.abs(d_n)
                d_r, e_d_r = _Recurrent._through_sigmoid(d_n * hb_n, np.abs(hb_n) * e_d_n + np.abs(d_n) * ehb_n + u * np.abs(d_n * hb_n), r, er, u)
                difference, e_difference = h - g, eh + eg + u * (np.abs(h) + np.abs(g))
                dz = grad * difference
                d_z, e_d_z = _Recurrent._through_sigmoid(dz, np.abs(difference) * e_grad + np.abs(grad) * e_difference + u * np.abs(dz), z, ez, u)
                d_nr, e_d_nr = d_n * r, r * e_d_n + np.abs(d_n) * er + u * np.abs(d_n * r)
                a_in, e_in = np.concatenate([d_r, d_z, d_n], axis=1), np.concatenate([e_d_r, e_d_z, e_d_n], axis=1)
                a_h, e_h = np.concatenate([d_r, d_z, d_nr], axis=1), np.concatenate([e_d_r, e_d_z, e_d_nr], axis=1)
                carried, e_carried = grad * z, z * e_grad + np.abs(grad) * ez + u * np.abs(grad * z)
            else:  # LSTM
                i, ei, f, ef, g, eg, o, eo, tc, etc, c, ec = (s[k] for k in ("i", "ei", "f", "ef", "g", "eg", "o", "eo", "tc", "etc", "c", "ec"))
                q, eq = 1 - tc * tc, 2 * np.abs(tc) * etc + u * tc * tc + u * np.abs(1 - tc * tc)
                m = grad * o * q
                e_m = np.abs(o * q) * e_grad + np.abs(grad * q) * eo + np.abs(grad * o) * eq + 2 * u * np.abs(m)
                dc, e_dc = carried + m, e_carried + e_m + u * np.abs(carried + m)
                d_o, e_d_o = _Recurrent._through_sigmoid(grad * tc, np.abs(tc) * e_grad + np.abs(grad) * etc + u * np.abs(grad * tc), o, eo, u)
                d_i, e_d_i = _Recurrent._through_sigmoid(dc * g, np.abs(g) * e_dc + np.abs(dc) * eg + u * np.abs(dc * g), i, ei, u)
                d_f, e_d_f = _Recurrent._through_sigmoid(dc * c, np.abs(c) * e_dc + np.abs(dc) * ec + u * np.abs(dc * c), f, ef, u)
                qg, eqg = 1 - g * g, 2 * np.abs(g) * eg + u * g * g + u * np.abs(1 - g * g)
                d_g = dc * i * qg
                e_d_g = np.abs(i * qg) * e_dc + np.abs(dc * qg) * ei + np.abs(dc * i) * eqg + 2 * u * np.abs(d_g)
                a_in, e_in = np.concatenate([d_i, d_f, d_g, d_o], axis=1), np.concatenate([e_d_i, e_d_f, e_d_g, e_d_o], axis=1)
                a_h, e_h = a_in, e_in
                carried, e_carried = dc * f, f * e_dc + np.abs(dc) * ef + u * np.abs(dc * f)
            dA[:, t], edA[:, t], dB[:, t], edB[:, t] = a_in, e_in, a_h, e_h
            rec = a_h @ W_hh
            erec = e_h @ np.abs(W_hh) + gamma(width, dtype) * (np.abs(a_h) @ np.abs(W_hh))
        dX = dA @ W_ih
        edX = edA @ np.abs(W_ih) + gamma(width, dtype) * (np.abs(dA) @ np.abs(W_ih))
        states = np.zeros((n, T, hidden))
        e_states = np.zeros((n, T, hidden))
        for t, s in zip(times, steps):
            states[:, t], e_states[:, t] = s["h"], s["eh"]
        rows = lambda v: v.reshape(n * T, -1)  # noqa: E731
        count = gamma(n * T, dtype)
        grads, egrads = [], []
        for d, e_d, inputs, e_inputs in ((dA, edA, X, eX), (dB, edB, states, e_states)):
            d, e_d, inputs, e_inputs = rows(d), rows(e_d), rows(inputs), rows(e_inputs)
            grads.append(d.T @ inputs)
            egrads.append(e_d.T @ np.abs(inputs) + np.abs(d).T @ e_inputs + count * (np.abs(d).T @ np.abs(inputs)))
        for d, e_d in ((dA, edA), (dB, edB)):
            d, e_d = rows(d), rows(e_d)
            grads.append(d.sum(axis=0))
            egrads.append(e_d.sum(axis=0) + count * np.abs(d).sum(axis=0))
        return Gradients(dX, edX, grads, egrads)

    @staticmethod
    def _through_sigmoid(d, e_d, s, es, u):
        """``d s (1 - s)`` and its bound: ``d``'s error, ``s``'s through ``s (1 - s)``
        (derivative ``1 - 2 s``), the two roundings of ``s (1 - s)`` and the product's."""
        factor = s * (1 - s)
        e_factor = np.abs(1 - 2 * s) * es + 2 * u * factor
        value = d * factor
        return value, factor * e_d + np.abs(d) * e_factor + u * np.abs(value)


_rule(jn.RNN, jn.GRU, jn.LSTM)(_Recurrent)


class _Bidirectional:
    """The two layers' rules; their outputs joined along the features (exact); the input's
    gradient sums the two layers' (one rounding)."""

    @staticmethod
    def forward(layer, X, eX, dtype, masks, training):
        parts = [forward_bound(member, X, dtype, eX) for member in (layer.forward_layer, layer.reverse_layer)]
        return np.concatenate([p[0] for p in parts], axis=-1), np.concatenate([p[1] for p in parts], axis=-1), [p[2] for p in parts]

    @staticmethod
    def backward(layer, saved, dY, edY, dtype):
        width = layer.forward_layer.hidden_size
        members = (layer.forward_layer, layer.reverse_layer)
        gs = [backward_bound(m, kept, d, dtype, e) for m, kept, d, e in zip(members, saved.own, np.split(dY, [width], axis=-1), np.split(edY, [width], axis=-1))]
        dX = gs[0].dX + gs[1].dX
        return Gradients(dX, gs[0].edX + gs[1].edX + unit_roundoff(dtype) * np.abs(dX), gs[0].grads + gs[1].grads, gs[0].egrads + gs[1].egrads)


_rule(jn.Bidirectional)(_Bidirectional)


# --------------------------------------------------------------------------- losses
class LossBound(NamedTuple):
    """A loss's exact value and gradient with bounds on jitnn's errors in computing them."""

    value: float
    e_value: float
    dY: np.ndarray
    edY: np.ndarray


def loss_bound(loss: jn.Loss, Y: Any, T: Any, dtype: Any, eY: Any = 0.0, weights: Any = None) -> LossBound:
    """The value and gradient of ``loss`` at the exact logits or predictions ``Y`` and targets
    ``T``, with bounds on jitnn's errors in ``dtype`` from predictions within ``eY`` of ``Y``;
    with ``weights`` (one per example), of the weighted loss (see :class:`_Weighing`).

    - SoftmaxCrossEntropy, per row ``lse - y_t`` with ``lse = max + log(sum(exp(y - max)))``: the
      sum's relative error ``rho = sum(s u (|y - max| + L)) + gamma(k)``, through ``log`` (``rho``
      absolute) and ``log`` itself (``L u |log|``), two more roundings of ``|max| + |log| +
      |y_t|``, then the mean ``gamma(n)``; an input error moves a row by at most ``sum(s e) +
      e_t``. The gradient ``(s - onehot) / n``: ``s``'s error (as :class:`_Softmax`, with the
      division by ``n``), and for the target ``u |s_t - 1|`` twice; an input error ``s (e +
      sum(s e)) / n``. Predictions ``(n, ..., k)`` are their rows (positions); with
      ``ignore_label``, ``n`` counts the rows whose label is not ignored, and the others'
      gradient is an exact 0.
    - targets of a float dtype are converted to the predictions' dtype first: that conversion's
      change ``e_t`` is an input error like ``e``;
    - MeanSquaredError: ``(y - t)**2`` three roundings, the sum and the division ``gamma(N + 1)``:
      ``gamma(N + 4)`` of the mean; the gradient ``2 (y - t) / N``: three roundings.
    - Huber: per element the difference's rounding and the inputs' errors through ``h' =
      clip(d)`` (plus half their square, ``h'' <= 1``) and three roundings of the term, then the
      mean ``gamma(N + 1)``; the gradient ``clip(d) / N`` moves by at most the difference's
      error (clip is 1-Lipschitz) and two roundings. KLDivergence and label smoothing: see
      :func:`_kl_divergence_bound` and :func:`_smoothed_cross_entropy_bound`.
    - BinaryCrossEntropy: per element ``max(y, 0) - y t + log1p(exp(-|y|))``: the product,
      difference and sum (three roundings of ``|max| + |y t| + |log1p|``), ``exp`` through
      ``log1p`` and ``log1p`` itself (``2 L u |log1p|``, as ``log1p(e) >= e / (1 + e)``), then
      the mean ``gamma(N + 1)``; the gradient ``(sigmoid(y) - t) / N``: the sigmoid's ``2 L + 3``
      relative and two roundings of ``|s - t|``.
    """
    u, L = unit_roundoff(dtype), LIBRARY
    Y = _f64(Y)
    eY = _like(eY, Y)
    examples = Y.shape[0]
    if isinstance(loss, jn.SoftmaxCrossEntropy):
        # the positions of a sequence are rows; an ignored row adds nothing (its gradient is
        # an exact zero), and the mean is over the n rows that count
        shape = Y.shape
        T = np.asarray(T).astype(np.int64).reshape(-1)
        Y, eY = Y.reshape(-1, shape[-1]), eY.reshape(-1, shape[-1])
        counted = np.ones(T.shape, bool) if loss.ignore_label is None else T != loss.ignore_label
        kept = np.flatnonzero(counted)
        weigh = _Weighing(weights, examples, T.size, kept)
        if not counted.any() or weigh.none:
            return LossBound(0.0, 0.0, np.zeros(shape), np.zeros(shape))
        Y, eY, T = Y[kept], eY[kept], T[kept]
        n, k = Y.shape
        rows = np.arange(n)
        top = Y.max(axis=1)
        spread = top[:, None] - Y
        total = np.exp(-spread).sum(axis=1)
        log_total = np.log(total)
        lse = top + log_total
        terms = lse - Y[rows, T]
        s = np.exp(-spread) / total[:, None]
        rho = (s * u * (spread + L)).sum(axis=1) + gamma(k, dtype)
        if loss.label_smoothing:
            return _smoothed_cross_entropy_bound(loss.label_smoothing, counted, kept, shape, Y, eY, T, top, spread, log_total, s, rho, dtype, weigh)
        e_terms = rho + L * u * np.abs(log_total) + gamma(2, dtype) * (np.abs(top) + np.abs(log_total) + np.abs(Y[rows, T]))
        e_terms = e_terms + (s * eY).sum(axis=1) + eY[rows, T]
        value = weigh.mean(terms)
        e_value = weigh.mean(e_terms) + gamma(n, dtype) * weigh.mean(np.abs(terms)) + weigh.e_value(np.abs(terms))
        onehot = np.zeros_like(Y)
        onehot[rows, T] = 1.0
        dY = (s - onehot) / n
        r = u * (spread + L) + rho[:, None] + 2 * u
        edY = s * r / n + 2 * u * onehot * np.abs(s - 1) / n + s * (eY + (s * eY).sum(axis=1, keepdims=True)) / n
        dY, edY = weigh.gradient(dY, edY)
        all_dY, all_edY = np.zeros((counted.size, k)), np.zeros((counted.size, k))
        all_dY[kept], all_edY[kept] = dY, edY
        return LossBound(value, e_value, all_dY.reshape(shape), all_edY.reshape(shape))
    T = _f64(T)
    eT = np.abs(T - T.astype(dtype))  # the kernel's targets are converted to the predictions' dtype
    N = Y.size
    if isinstance(loss, jn.KLDivergence):
        return _kl_divergence_bound(Y, eY, T, eT, dtype, _Weighing(weights, examples, Y.size // Y.shape[-1]))
    weigh = _Weighing(weights, examples, N)  # the elementwise losses: every element is a term
    if weigh.none:
        return LossBound(0.0, 0.0, np.zeros(Y.shape), np.zeros(Y.shape))
    flat = lambda a: np.reshape(a, -1)  # noqa: E731 - the weighing sees the terms in a row
    if isinstance(loss, jn.MeanSquaredError):
        difference = Y - T
        value = weigh.mean(flat(difference**2))
        e_value = gamma(N + 4, dtype) * weigh.mean(flat(difference**2)) + weigh.mean(flat(2 * np.abs(difference) * (eY + eT)))
        e_value += weigh.e_value(flat(difference**2))
        dY = 2 * difference / N
        return LossBound(value, e_value, *weigh.gradient(dY, 3 * u * np.abs(dY) + 2 * (eY + eT) / N))
    if isinstance(loss, jn.Huber):
        difference, delta = Y - T, loss.delta
        a = np.abs(difference)
        terms = np.where(a <= delta, 0.5 * a**2, delta * (a - 0.5 * delta))
        e_d = u * a + eY + eT  # the difference's rounding and the inputs' errors
        e_terms = 3 * u * terms + np.minimum(a, delta) * e_d + 0.5 * e_d**2  # h' = clip(d), h'' <= 1
        value = weigh.mean(flat(terms))
        e_value = weigh.mean(flat(e_terms)) + gamma(N + 1, dtype) * weigh.mean(flat(terms)) + weigh.e_value(flat(terms))
        dY = np.clip(difference, -delta, delta) / N
        return LossBound(value, e_value, *weigh.gradient(dY, e_d / N + 2 * u * np.abs(dY)))  # clip is 1-Lipschitz
    if isinstance(loss, jn.BinaryCrossEntropy):
        softplus = np.log1p(np.exp(-np.abs(Y)))
        terms = np.maximum(Y, 0) - Y * T + softplus
        magnitude = np.abs(np.maximum(Y, 0)) + np.abs(Y * T) + softplus
        s = reference.Sigmoid.value(Y)
        e_terms = 3 * u * magnitude + 2 * L * u * softplus + np.abs(s - T) * eY + np.abs(Y) * eT
        value = weigh.mean(flat(terms))
        e_value = weigh.mean(flat(e_terms)) + gamma(N + 1, dtype) * weigh.mean(flat(magnitude)) + weigh.e_value(flat(magnitude))
        dY = (s - T) / N
        edY = ((2 * L + 3) * u * s + 2 * u * np.abs(s - T) + s * (1 - s) * eY + eT) / N
        return LossBound(value, e_value, *weigh.gradient(dY, edY))
    raise NotImplementedError(f"no error rule for {type(loss).__name__}")


def _smoothed_cross_entropy_bound(smoothing: float, counted: np.ndarray, kept: np.ndarray, shape: tuple[int, ...], Y: np.ndarray,
                                  eY: np.ndarray, T: np.ndarray, top: np.ndarray, spread: np.ndarray, log_total: np.ndarray,
                                  s: np.ndarray, rho: np.ndarray, dtype: Any, weigh: _Weighing) -> LossBound:
    """Softmax cross-entropy with label smoothing ``e``, per row ``lse - (1 - e) y_t - (e / k)
    sum(y)``: the log-sum-exp as without smoothing (``rho`` through ``log``, ``L u |log|``), the
    row's sum ``gamma(k)`` of ``sum|y|``, and four roundings of ``|max| + |log| + (1 - e)|y_t|
    + (e / k) sum|y|``; then the mean ``gamma(n)``. An input error moves a row by at most
    ``sum(s e) + sum(q e)``. The gradient ``(s - q) / n``: ``s``'s error and three roundings
    of ``|s - q|``; an input error as without smoothing."""
    u, L = unit_roundoff(dtype), LIBRARY
    n, k = Y.shape
    rows = np.arange(n)
    q = np.full((n, k), smoothing / k)
    q[rows, T] += 1.0 - smoothing
    lse = top + log_total
    terms = lse - (q * Y).sum(axis=1)
    magnitude = np.abs(top) + np.abs(log_total) + (1 - smoothing) * np.abs(Y[rows, T]) + smoothing / k * np.abs(Y).sum(axis=1)
    e_terms = rho + L * u * np.abs(log_total) + gamma(4, dtype) * magnitude + gamma(k, dtype) * smoothing / k * np.abs(Y).sum(axis=1)
    e_terms = e_terms + (s * eY).sum(axis=1) + (q * eY).sum(axis=1)
    value = weigh.mean(terms)
    e_value = weigh.mean(e_terms) + gamma(n, dtype) * weigh.mean(np.abs(terms)) + weigh.e_value(np.abs(terms))
    dY = (s - q) / n
    r = u * (spread + L) + rho[:, None] + 2 * u
    edY = s * r / n + 3 * u * np.abs(s - q) / n + s * (eY + (s * eY).sum(axis=1, keepdims=True)) / n
    dY, edY = weigh.gradient(dY, edY)
    all_dY, all_edY = np.zeros((counted.size, k)), np.zeros((counted.size, k))
    all_dY[kept], all_edY[kept] = dY, edY
    return LossBound(value, e_value, all_dY.reshape(shape), all_edY.reshape(shape))


def _kl_divergence_bound(Y: np.ndarray, eY: np.ndarray, T: np.ndarray, eT: np.ndarray, dtype: Any, weigh: _Weighing) -> LossBound:
    """KL divergence, per row ``sum_j t_j (log t_j - (y_j - lse))`` over the ``t_j > 0``: the
    log-sum-exp's error as softmax cross-entropy's (``rho`` through ``log``, ``L u |log|``, one
    rounding of the addition), ``log t``'s ``L u``, two more roundings inside the bracket and
    the product's, an input error ``t (e_j + sum(s e))`` and a target's conversion error
    through ``|log t + 1 - ls|``; the sum over all ``n k`` terms and the mean ``gamma(n k + 1)``.
    The gradient ``(s m - t) / n`` with ``m = sum t``: ``s``'s error (as softmax's), ``m``'s
    ``gamma(k)``, and three roundings of ``|s m - t|``; input errors ``s m (e + sum(s e))`` and
    ``e_t + s sum(e_t)``, over ``n``."""
    u, L = unit_roundoff(dtype), LIBRARY
    shape = Y.shape
    if weigh.none:
        return LossBound(0.0, 0.0, np.zeros(shape), np.zeros(shape))
    k = shape[-1]
    Y, eY, T, eT = (a.reshape(-1, k) for a in (Y, eY, T, eT))
    n = Y.shape[0]
    top = Y.max(axis=1, keepdims=True)
    spread = top - Y
    total = np.exp(-spread).sum(axis=1, keepdims=True)
    log_total = np.log(total)
    s = np.exp(-spread) / total
    rho = (s * u * (spread + L)).sum(axis=1, keepdims=True) + gamma(k, dtype)
    e_lse = rho + L * u * np.abs(log_total) + u * (np.abs(top) + np.abs(log_total))
    ls = Y - (top + log_total)
    positive = T > 0
    log_t = np.log(np.where(positive, T, 1.0))
    inner = log_t - ls
    terms = np.where(positive, T * inner, 0.0)
    e_terms = np.where(positive, T * (L * u * np.abs(log_t) + e_lse + u * np.abs(ls) + u * np.abs(inner)) + u * np.abs(terms)
                       + T * (eY + (s * eY).sum(axis=1, keepdims=True)) + eT * np.abs(log_t + 1 - ls), 0.0)
    value = weigh.mean(terms.sum(axis=1))
    e_value = (weigh.mean(e_terms.sum(axis=1)) + gamma(n * k + 1, dtype) * weigh.mean(np.abs(terms).sum(axis=1))
               + weigh.e_value(np.abs(terms).sum(axis=1)))
    mass = T.sum(axis=1, keepdims=True)
    dY = (s * mass - T) / n
    r = u * (spread + L) + rho + 2 * u
    edY = (s * mass * (r + gamma(k, dtype) + u) + 3 * u * np.abs(s * mass - T) + s * mass * (eY + (s * eY).sum(axis=1, keepdims=True))
           + eT + s * eT.sum(axis=1, keepdims=True)) / n
    dY, edY = weigh.gradient(dY, edY)
    return LossBound(value, e_value, dY.reshape(shape), edY.reshape(shape))


class _Weighing:
    """How per-example weights change a loss's bound. The kernels compute ``sum_j w_j c_j /
    sum_j w_j``, each term ``c_j`` (an element, or a row that counts) times its example's
    weight ``w_j``, where the plain loss is ``sum_j c_j / m``; so the value is the weighted
    mean of the terms, with each term's error weighted alike, and the gradient of term ``j``
    is the plain one times ``w_j m / sum w``. On top of the plain kernel's roundings come the
    product ``w_j c_j`` (one float64 rounding a term), the float64 sum of the weights
    (``gamma(m)`` of the divisor, relative): ``gamma(2 m + 1)`` in float64 of the weighted
    mean of ``|c_j|`` for the value, and for the gradient the product with ``w_j`` and the
    divisor's error, ``gamma(m + 2)`` in float64 of ``|dY|``. Without weights every factor is
    1 and nothing is added. ``none``: the terms that count weigh 0 in all (value and
    gradient are then exact zeros)."""

    def __init__(self, weights: Any, examples: int, terms: int, kept: Any = None) -> None:
        self.weights = None
        if weights is not None:
            per_term = np.repeat(np.asarray(weights, np.float64), terms // examples)
            self.weights = per_term if kept is None else per_term[kept]
        self.none = self.weights is not None and not self.weights.sum() > 0

    def mean(self, x: np.ndarray) -> float:
        return float(x.mean() if self.weights is None else (self.weights * x).sum() / self.weights.sum())

    def e_value(self, magnitude: np.ndarray) -> float:
        return 0.0 if self.weights is None else float(gamma(2 * self.weights.size + 1, np.float64) * self.mean(magnitude))

    def gradient(self, dY: np.ndarray, edY: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.weights is None:
            return dY, edY
        scale = (self.weights * self.weights.size / self.weights.sum())[:, None]  # per term (a row or an element)
        dY, edY = (dY.reshape(scale.size, -1) * scale).reshape(dY.shape), (edY.reshape(scale.size, -1) * scale).reshape(dY.shape)
        return dY, edY + gamma(self.weights.size + 2, np.float64) * np.abs(dY)


class ValueAndGrad(NamedTuple):
    """:func:`value_and_grad_bound`'s answer: the loss and the parameter gradients, exact, with
    bounds on jitnn's errors."""

    value: float
    e_value: float
    grads: list[np.ndarray]
    egrads: list[np.ndarray]


def value_and_grad_bound(model: jn.Layer, loss: jn.Loss, X: Any, T: Any, dtype: Any, sample_weight: Any = None, **options: Any) -> ValueAndGrad:
    """The exact loss and parameter gradients of ``model`` on ``(X, T)`` (what
    ``jn.value_and_grad`` computes, with ``sample_weight``), with bounds on jitnn's errors in
    ``dtype``: the forward rules, the loss's rule, then the backward rules."""
    Y, eY, saved = forward_bound(model, X, dtype, **options)
    bound = loss_bound(loss, Y, T, dtype, eY, sample_weight)
    g = backward_bound(model, saved, bound.dY, dtype, bound.edY)
    return ValueAndGrad(bound.value, bound.e_value, g.grads, g.egrads)


def reference_bounds(layer: jn.Layer, X: Any, dY: Any, dtype: Any, other: Any = np.float64) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Bounds on how far a jitnn kernel computing in ``dtype`` may be from another
    computation of the layer in ``other`` (the float64 references, PyTorch): each side's
    rounding from :func:`layer_bounds`, added. ``(forward, grad_input, grad_params)``."""
    _, eY, g = layer_bounds(layer, X, dY, dtype)
    _, eY2, g2 = layer_bounds(layer, X, dY, other)
    return eY + eY2, g.edX + g2.edX, [a + b for a, b in zip(g.egrads, g2.egrads)]


def loss_reference_bounds(loss: jn.Loss, Y: Any, T: Any, dtype: Any, other: Any = np.float64, weights: Any = None) -> tuple[float, np.ndarray]:
    """As :func:`reference_bounds`, for a loss's value and gradient (weighted by ``weights``)."""
    ours, theirs = loss_bound(loss, Y, T, dtype, weights=weights), loss_bound(loss, Y, T, other, weights=weights)
    return ours.e_value + theirs.e_value, ours.edY + theirs.edY

# --------------------------------------------------------------------------- optimizers
class AdamDifference(NamedTuple):
    """Bounds on the differences of Adam's new parameters and moments."""

    params: np.ndarray
    mu: np.ndarray
    nu: np.ndarray


def adam_update_difference(p: Any, g: Any, e_g: Any, mu: Any, nu: Any, step: int, optimizer: Any) -> AdamDifference:
    """A bound on the differences of two Adam updates (jitnn's kernel, which computes in
    float64) from the same parameters ``p`` and moments ``mu``, ``nu``, at step ``step`` (from
    1), of two gradients within ``e_g`` of each other, one of them ``g``.

    With ``c1 = 1 - b1``, ``c2 = 1 - b2``: ``m = b1 mu + c1 g`` moves by ``c1 e_g`` and each
    evaluation rounds ``c1 g`` and the sum; ``v = b2 nu + c2 g g`` by ``c2 e_g (2 |g| + e_g)``
    with three roundings; ``sqrt`` by at most ``min(sqrt(e_v), e_v / sqrt(v))``; the
    denominator ``sqrt(v) k + eps`` (``k = 1 / sqrt(1 - b2**t)``) with two more roundings; the
    step ``step_size m / den`` by ``step_size (e_m + |m| e_den / den) / (den - e_den)`` and two
    roundings; the new parameter ``p - step`` one. Near a zero gradient the denominator is
    about ``eps`` and the difference in ``g`` is multiplied by up to ``lr / eps``: this is the
    sensitivity the bound carries."""
    u = unit_roundoff(np.float64)
    p, g, mu, nu = (_f64(a) for a in (p, g, mu, nu))
    e_g = _like(e_g, g)
    b1, b2, eps = optimizer.b1, optimizer.b2, optimizer.eps
    lr = float(optimizer.learning_rate(step - 1)) if callable(optimizer.learning_rate) else float(optimizer.learning_rate)
    step_size = lr / (1.0 - b1**step)
    k = 1.0 / math.sqrt(1.0 - b2**step)
    c1, c2 = 1.0 - b1, 1.0 - b2
    m = b1 * mu + c1 * g
    v = b2 * nu + c2 * g * g
    e_m = c1 * e_g + 2 * u * (c1 * np.abs(g) + np.abs(m))
    e_v = c2 * e_g * (2 * np.abs(g) + e_g) + 2 * u * (2 * c2 * g * g + v)
    root = np.sqrt(v)
    with np.errstate(divide="ignore", invalid="ignore"):
        e_root = np.minimum(np.sqrt(e_v), np.where(root > 0, e_v / root, np.inf)) + 2 * u * root
    den = root * k + eps
    e_den = k * e_root + 2 * u * (k * root + den)
    assert np.all(e_den < den), "the denominators' bound is not small against them: the first-order bound does not apply"
    x = step_size * m / den
    e_x = step_size * (e_m + np.abs(m) * e_den / den) / (den - e_den) + 4 * u * np.abs(x)
    return AdamDifference(e_x + 2 * u * np.abs(p - x), e_m, e_v)


# --------------------------------------------------------------------------- elementwise formulas
class Tracked:
    """A value (a number or an array, held in float64) with a bound on its error, for running
    error analysis of elementwise formulas written with NumPy operations (the optimizers'
    references, their kernels' order of operations, PyTorch's). Operands that are not
    ``Tracked`` (numbers, plain arrays) are exact. Every operation propagates the bounds
    exactly (``|a' b' - a b| <= |a| e_b + e_a |b| + e_a e_b``, and so on) and adds one rounding
    ``u |result|`` of its ``dtype`` (none for a product by an exact power of two, or by 0);
    ``sign`` of a value within its error of 0 may be anything
    in [-1, 1]; ``clip``, ``abs`` and ``-`` are exact and move by at most the error."""

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        """NumPy's ufuncs on Tracked values (``np.sqrt(t)``, ``array * t``, ...), through the
        methods below."""
        unary = {np.sqrt: "sqrt", np.square: "square", np.sign: "sign", np.negative: "__neg__", np.absolute: "__abs__"}
        binary = {np.add: ("__add__", "__radd__"), np.subtract: ("__sub__", "__rsub__"),
                  np.multiply: ("__mul__", "__rmul__"), np.true_divide: ("__truediv__", "__rtruediv__")}
        if method != "__call__" or kwargs:
            return NotImplemented
        if ufunc in unary:
            return getattr(inputs[0], unary[ufunc])()
        if ufunc in binary:
            a, b = inputs
            return getattr(a, binary[ufunc][0])(b) if isinstance(a, Tracked) else getattr(b, binary[ufunc][1])(a)
        if ufunc is np.power and isinstance(inputs[0], Tracked) and np.all(np.asarray(inputs[1]) == 2):
            return inputs[0].square()
        return NotImplemented

    def __init__(self, value: Any, error: Any = 0.0, dtype: Any = np.float64) -> None:
        self.value = np.asarray(value, dtype=np.float64)
        self.error = np.broadcast_to(np.asarray(error, dtype=np.float64), self.value.shape).copy()
        self.dtype = np.dtype(dtype)

    def __repr__(self) -> str:
        return f"Tracked({self.value!r}, error {self.error!r})"

    def _u(self, other: Any) -> float:
        dtypes = [self.dtype] + ([other.dtype] if isinstance(other, Tracked) else [])
        return max(unit_roundoff(d) for d in dtypes)

    @staticmethod
    def _parts(x: Any) -> tuple[np.ndarray, Any]:
        return (x.value, x.error) if isinstance(x, Tracked) else (np.asarray(x, dtype=np.float64), 0.0)

    def _new(self, value: Any, error: Any, other: Any = None, rounded: bool = True) -> Tracked:
        value = np.asarray(value, dtype=np.float64)
        u = self._u(other)
        dtype = np.float32 if u > unit_roundoff(np.float64) else np.float64
        return Tracked(value, error + (u * np.abs(value) if rounded else 0.0), dtype)

    def __add__(self, other: Any) -> Tracked:
        b, eb = self._parts(other)
        return self._new(self.value + b, self.error + eb, other)

    __radd__ = __add__

    def __sub__(self, other: Any) -> Tracked:
        b, eb = self._parts(other)
        return self._new(self.value - b, self.error + eb, other)

    def __rsub__(self, other: Any) -> Tracked:
        b, eb = self._parts(other)
        return self._new(b - self.value, self.error + eb, other)

    def __mul__(self, other: Any) -> Tracked:
        b, eb = self._parts(other)
        a, ea = self.value, self.error
        exact = not isinstance(other, Tracked) and bool(np.all((b == 0) | (np.abs(np.frexp(b)[0]) == 0.5)))  # by 0 or 2**k
        return self._new(a * b, np.abs(a) * eb + ea * np.abs(b) + ea * eb, other, rounded=not exact)

    __rmul__ = __mul__

    @staticmethod
    def _quotient(a: np.ndarray, ea: Any, b: np.ndarray, eb: Any) -> tuple[np.ndarray, np.ndarray]:
        assert np.all(np.abs(b) > eb), "a divisor within its error of 0: no first-order bound"
        q = a / b
        return q, (ea + np.abs(q) * eb) / (np.abs(b) - eb)

    def __truediv__(self, other: Any) -> Tracked:
        b, eb = self._parts(other)
        q, e = self._quotient(self.value, self.error, b, eb)
        return self._new(q, e, other)

    def __rtruediv__(self, other: Any) -> Tracked:
        a, ea = self._parts(other)
        q, e = self._quotient(a, ea, self.value, self.error)
        return self._new(q, e, other)

    def __neg__(self) -> Tracked:
        return self._new(-self.value, self.error, rounded=False)

    def __abs__(self) -> Tracked:
        return self._new(np.abs(self.value), self.error, rounded=False)

    def __pow__(self, power: int) -> Tracked:
        assert power == 2, "only squares"
        return self.square()

    def square(self) -> Tracked:
        a, ea = self.value, self.error
        return self._new(a * a, (2 * np.abs(a) + ea) * ea)

    def sqrt(self) -> Tracked:
        a, ea = self.value, self.error
        root = np.sqrt(a)
        with np.errstate(divide="ignore", invalid="ignore"):
            through = np.where(root > 0, ea / (root + np.sqrt(np.maximum(a - ea, 0))), np.inf)
        return self._new(root, np.minimum(np.sqrt(ea), through))

    def sign(self) -> Tracked:
        a, ea = self.value, self.error
        return self._new(np.sign(a), np.where(np.abs(a) > ea, 0.0, np.where(ea == 0, 0.0, 2.0)), rounded=False)

    def clip(self, low: float, high: float, out: None = None, **unused: Any) -> Tracked:
        return self._new(np.clip(self.value, low, high), self.error, rounded=False)

    def sum(self, axis: None = None, **unused: Any) -> Tracked:
        """A sum of all the elements in any order: ``gamma(n)`` of the sum of their magnitudes."""
        assert axis is None, "sums of all the elements only"
        n = self.value.size
        total = float(np.sum(self.value))
        error = float(np.sum(self.error)) + gamma(n, self.dtype) * float(np.sum(np.abs(self.value)))
        return Tracked(total, error, self.dtype)

    def copy(self) -> Tracked:
        return Tracked(self.value.copy(), self.error.copy(), self.dtype)

    def rounded_to(self, dtype: Any) -> Tracked:
        """The value stored in ``dtype``: one rounding of that dtype."""
        return Tracked(self.value, self.error + unit_roundoff(dtype) * np.abs(self.value), dtype)

    def __gt__(self, other: Any) -> bool:
        """A comparison that the errors cannot turn around (else an AssertionError)."""
        b, eb = self._parts(other)
        decided = np.abs(self.value - b) > self.error + eb
        assert np.all(decided), "a comparison within the errors of its operands"
        return bool(np.all(self.value > b))

    def __le__(self, other: Any) -> bool:
        return not self.__gt__(other)



def sgd_numpy_bound(p: Any, g: Any, learning_rate: float, dtype: Any) -> np.ndarray:
    """How far jitnn's SGD step (``p - lr g`` in float64, rounded once to ``dtype``) and NumPy's
    ``p - lr * g`` on arrays of ``dtype`` (``lr`` rounded to ``dtype``, then the product and the
    difference in ``dtype``) may be apart."""
    ours = (Tracked(p) - learning_rate * Tracked(g)).rounded_to(dtype)
    rate = Tracked(learning_rate, unit_roundoff(dtype) * abs(learning_rate), dtype)
    theirs = Tracked(p, 0.0, dtype) - rate * Tracked(g, 0.0, dtype)
    return ours.error + theirs.error
