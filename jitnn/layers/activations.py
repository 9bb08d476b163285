"""Activation layers.

The element-wise activations share one template: two scalar functions (the value and the
derivative, selected by a small integer code) and two kernels that map them over the
array. A new element-wise activation is a code, two lines in each scalar function and a
three-line class. ``Softmax`` couples the elements of a row and has kernels of its own.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import attrs
import numpy as np

from jitnn import validate
from jitnn._math import row_max
from jitnn._jit import as_readonly, jit
from jitnn.protocol import Kernels, Layer, Residuals, layer

__all__ = ["Identity", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU", "Softmax"]

_IDENTITY, _LEAKY_RELU, _SIGMOID, _TANH, _GELU = range(5)
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@jit
def _activation_value(code, x, slope):
    """f(x) for the activation ``code``; ``slope`` is LeakyReLU's negative slope."""
    if code == _LEAKY_RELU:
        return x if x > 0 else slope * x
    if code == _SIGMOID:
        if x >= 0:
            return 1.0 / (1.0 + math.exp(-x))
        e = math.exp(x)
        return e / (1.0 + e)
    if code == _TANH:
        return math.tanh(x)
    if code == _GELU:
        return 0.5 * x * (1.0 + math.erf(x * _SQRT_HALF))
    return x


@jit
def _activation_derivative(code, x, slope):
    """f'(x) for the activation ``code``."""
    if code == _LEAKY_RELU:
        return 1.0 if x > 0 else slope
    if code == _SIGMOID:
        e = math.exp(-abs(x))
        return e / ((1.0 + e) * (1.0 + e))
    if code == _TANH:
        y = math.tanh(x)
        return 1.0 - y * y
    if code == _GELU:
        return 0.5 * (1.0 + math.erf(x * _SQRT_HALF)) + x * _INV_SQRT_2PI * math.exp(-0.5 * x * x)
    return 1.0


@jit
def _elementwise_forward(x, code, slope):
    """y = f(x) element by element;  x (m,) -> y (m,)."""
    y = np.empty_like(x)
    for i in range(x.size):
        y[i] = _activation_value(code, x[i], slope)
    return y


@jit
def _elementwise_grad_input(x, d, code, slope):
    """dx = d * f'(x) element by element;  x, d (m,) -> dx (m,)."""
    dx = np.empty_like(x)
    if code == _LEAKY_RELU:  # the common case, written out so that it vectorizes (7x faster)
        for i in range(x.size):
            dx[i] = d[i] if x[i] > 0 else slope * d[i]
        return dx
    for i in range(x.size):
        dx[i] = d[i] * _activation_derivative(code, x[i], slope)
    return dx


class _Elementwise(Layer):
    """Base of the element-wise activations: no parameters, shape kept."""

    __slots__ = ()
    code: ClassVar[int]
    kernels = Kernels(_elementwise_forward, _elementwise_grad_input)
    elementwise = True

    def config(self) -> tuple[Any, ...]:
        return (self.code, 0.0)


@layer
class Identity(_Elementwise):
    """``f(x) = x``."""

    code = _IDENTITY


@layer
class ReLU(_Elementwise):
    """``f(x) = max(x, 0)``; the derivative at 0 is taken as 0."""

    code = _LEAKY_RELU


@layer
class LeakyReLU(_Elementwise):
    """``f(x) = x if x > 0 else negative_slope * x``."""

    negative_slope: float = attrs.field(default=0.01, converter=validate.converter(validate.real, "LeakyReLU", "negative_slope"))
    code = _LEAKY_RELU

    def config(self) -> tuple[Any, ...]:
        return (self.code, self.negative_slope)

    def label(self) -> str:
        """The class name with the short configuration that :func:`jitnn.summary` shows."""
        return f"{type(self).__name__}({self.negative_slope:g})"


@layer
class Sigmoid(_Elementwise):
    """``f(x) = 1 / (1 + exp(-x))``, computed without overflow."""

    code = _SIGMOID


@layer
class Tanh(_Elementwise):
    """``f(x) = tanh(x)``."""

    code = _TANH


@layer
class GELU(_Elementwise):
    """Gaussian error linear unit, exact form: ``f(x) = x * Phi(x)``."""

    code = _GELU


@jit
def _softmax_rows(X):
    """Y[i] = exp(X[i] - max X[i]) / sum(...) for each row;  X (m, k) -> Y (m, k)."""
    Y = np.empty(X.shape, X.dtype)
    for i in range(X.shape[0]):
        top = row_max(X, i)
        total = 0.0
        for j in range(X.shape[1]):
            Y[i, j] = math.exp(X[i, j] - top)
            total += Y[i, j]
        for j in range(X.shape[1]):
            Y[i, j] /= total
    return Y


@jit
def _softmax_forward(X):
    """Softmax over the last axis;  X (n, ..., k) -> Y (n, ..., k)."""
    k = X.shape[-1]
    return _softmax_rows(X.reshape((X.size // k, k))).reshape(X.shape)


@jit
def _softmax_forward_residuals(X):
    """Softmax over the last axis, and R = (Y,): its backward pass needs only the output;  X (n, ..., k) -> (Y, (Y,))."""
    Y = as_readonly(_softmax_forward(X))
    return Y, (Y,)


@jit(inline="always")
def _softmax_vjp_rows(y, d, out):
    """out[i] = y[i] * (d[i] - sum(d[i] * y[i])) for each row;  y, d, out (m, k) (out may be y)."""
    for i in range(y.shape[0]):
        inner = 0.0
        for j in range(y.shape[1]):
            inner += d[i, j] * y[i, j]
        for j in range(y.shape[1]):
            out[i, j] = y[i, j] * (d[i, j] - inner)


@jit
def _softmax_grad_input(X, dY):
    """dX = Y * (dY - sum(dY * Y, last axis)), Y = softmax(X) computed here (a plain call);  X, dY (n, ..., k) -> dX."""
    k = X.shape[-1]
    Y = _softmax_rows(X.reshape((X.size // k, k)))
    _softmax_vjp_rows(Y, dY.reshape((dY.size // k, k)), Y)
    return Y.reshape(X.shape)


@jit
def _softmax_grad_input_residuals(X, dY, R):
    """dX = Y * (dY - sum(dY * Y, last axis)), with Y from R = (Y,);  X, dY (n, ..., k) -> dX."""
    k = X.shape[-1]
    dX = np.empty(X.shape, X.dtype)
    _softmax_vjp_rows(R[0].reshape((X.size // k, k)), dY.reshape((dY.size // k, k)), dX.reshape((X.size // k, k)))
    return dX


@layer
class Softmax(Layer):
    """Softmax over the last axis. Its Jacobian is not diagonal:
    ``dX = Y * (dY - sum(dY * Y))`` per row."""

    kernels = Kernels(_softmax_forward, _softmax_grad_input, residuals=Residuals(_softmax_forward_residuals, _softmax_grad_input_residuals))

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) < 1 or input_shape[-1] == 0:
            raise ValueError(f"expects a non-empty last axis per example (the classes), got per-example shape {tuple(input_shape)}")
        return tuple(input_shape)
