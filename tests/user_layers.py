"""A user's layer, written as the README shows, shared by the tests that need one: ``Scale``,
``Y = X * s`` with one learned factor per feature, its kernels compiled by plain
``numba.njit`` (not jitnn's own policy) at module level, where the compiled step can import
them."""

from __future__ import annotations

import numba
import numpy as np

import jitnn as jn

__all__ = ["Linear", "Scale", "ScaleShape", "_scale_forward", "_scale_grad_input", "_scale_grad_params"]


@numba.njit(cache=True)
def _scale_forward(X, s):
    """Y = X * s;  X (n, k), s (k,) -> Y (n, k)."""
    return X * s


@numba.njit(cache=True)
def _scale_grad_input(X, dY, s):
    """dX = dY * s;  dY (n, k), s (k,) -> dX (n, k)."""
    return dY * s


@numba.njit(cache=True)
def _scale_grad_params(X, dY, s):
    """ds = sum over the batch of X * dY;  -> ((k,),)."""
    return ((X * dY).sum(axis=0),)


class ScaleShape:
    """The shape rule of a layer with one factor per feature (shared with the tests' broken
    variants of Scale)."""

    @property
    def input_shape(self):
        return self.s.shape

    def output_shape(self, input_shape):
        jn.require_shape(input_shape, self.input_shape)
        return tuple(input_shape)


@jn.layer
class Scale(ScaleShape):
    """Y = X * s, one learned factor per feature."""

    s: np.ndarray = jn.param()
    kernels = jn.Kernels(_scale_forward, _scale_grad_input, _scale_grad_params)


@numba.njit(cache=True)
def _linear_forward(X, W):
    """Y = X @ W;  X (n, k), W (k, m) -> Y (n, m)."""
    return X @ W


@numba.njit(cache=True)
def _linear_grad_input(X, dY, W):
    """dX = dY @ W.T."""
    return dY @ W.T


@numba.njit(cache=True)
def _linear_grad_params(X, dY, W):
    """dW = X.T @ dY, as jn.outer_sum forms it (what its factored kernel stands for)."""
    return (jn.outer_sum(X, dY),)


@numba.njit(cache=True)
def _linear_grad_factors(X, dY, W):
    """dW as its factors (X, dY)."""
    return ((X, dY),)


@jn.layer
class Linear:
    """Y = X @ W, a dense layer without a bias, whose weight gradient reaches the
    compiled step's optimizer as its factors (jn.Factored)."""

    W: np.ndarray = jn.param()
    kernels = jn.Kernels(_linear_forward, _linear_grad_input, _linear_grad_params, factored=jn.Factored(_linear_grad_factors, ("W",)))
    rows = True

    @property
    def input_shape(self):
        return self.W.shape[:1]

    def output_shape(self, input_shape):
        jn.require_shape(input_shape, self.input_shape)
        return self.W.shape[1:]
