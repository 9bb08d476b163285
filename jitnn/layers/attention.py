"""Multi-head self-attention (Vaswani et al., 2017), laid out as PyTorch's
``torch.nn.MultiheadAttention(dim, num_heads, batch_first=True)``.

For a batch ``X (n, T, dim)`` of sequences, with ``h = dim / num_heads`` features a head::

    Q, K, V = X W_q^T + b_q, X W_k^T + b_k, X W_v^T + b_v      (W_q, W_k, W_v: the thirds of in_proj_weight)
    P = softmax over the keys of Q_h K_h^T / sqrt(h)            (per example and head; causal: key j <= query i)
    C = [P_1 V_1, ..., P_H V_H]                                 (the heads side by side: the context)
    Y = C W_o^T + b_o                                           (out_proj)

The projections are one matrix product over all ``n T`` positions each; the scores ``Q_h
K_h^T`` and the context ``P_h V_h`` one product per example and head. The softmax subtracts
each row's maximum, so no exponential overflows; a causal mask leaves the masked keys out
of the row entirely (their probabilities are exact zeros, no ``-inf`` enters the
arithmetic). The residual forward keeps ``Q``, ``K``, ``V`` (per example and head), ``P``
and ``C``; the backward pass is written once (:func:`_attention_backward`) and gives both
gradients from one sweep over the examples and heads.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import numpy as np

from jitnn import init as initializers
from jitnn import random, validate
from jitnn._blas import matmul, matmul_into
from jitnn._checks import check_float_dtype
from jitnn._jit import as_readonly, jit
from jitnn.protocol import Array, Kernels, Layer, Residuals, layer, param

__all__ = ["MultiHeadAttention"]


# --------------------------------------------------------------------------- shared pieces
@jit(inline="always")
def _project(x, W, b, out):
    """out = x @ W.T + b, one product over every row;  x (m, k), W (o, k), b (o,), out (m, o)."""
    matmul_into(x, W.T, out)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] += b[j]


@jit(inline="always")
def _column_sums(a):
    """The sum of the rows of a (m, k), row after row;  -> (k,)."""
    total = np.zeros(a.shape[1], a.dtype)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            total[j] += a[i, j]
    return total


@jit(inline="always")
def _softmax_scores(p, scale, causal):
    """In place: row t of p (T, T) holding the scores q_t . k_j becomes the softmax of
    ``scale * p[t, j]`` over the keys j <= t (causal) or all keys, the row's maximum
    subtracted first; masked keys get exact zeros and take no part in the arithmetic."""
    keys = p.shape[1]
    for t in range(p.shape[0]):
        stop = t + 1 if causal else keys
        top = p[t, 0] * scale
        for j in range(1, stop):
            top = max(top, p[t, j] * scale)
        total = 0.0
        for j in range(stop):
            p[t, j] = math.exp(p[t, j] * scale - top)
            total += p[t, j]
        for j in range(stop):
            p[t, j] /= total
        for j in range(stop, keys):
            p[t, j] = 0.0


@jit(inline="always")
def _softmax_scores_vjp(p, dp, scale, causal):
    """In place: dp (T, T), the gradient of the probabilities p, becomes the gradient of the
    scores, ``scale * p * (dp - sum(dp * p))`` per row over the keys the row reads (zeros at
    masked keys)."""
    keys = p.shape[1]
    for t in range(p.shape[0]):
        stop = t + 1 if causal else keys
        inner = 0.0
        for j in range(stop):
            inner += dp[t, j] * p[t, j]
        for j in range(stop):
            dp[t, j] = scale * (p[t, j] * (dp[t, j] - inner))
        for j in range(stop, keys):
            dp[t, j] = 0.0


@jit(inline="always")
def _attention(X, Wi, bi, Wo, bo, settings, keep):
    """Y (n, T, d) and the residuals (Q, K, V (n, H, T, h), P (n, H, T, T), C (n T, d));
    without ``keep`` one example and head's probabilities are kept at a time (P (1, 1, T, T)),
    the same numbers computed the same way."""
    heads, causal = settings
    n, T, d = X.shape
    size = d // heads
    scale = 1.0 / math.sqrt(size)
    x = X.reshape((n * T, d))
    qkv = np.empty((n * T, 3 * d), X.dtype)
    _project(x, Wi, bi, qkv)
    Q = np.empty((n, heads, T, size), X.dtype)
    K = np.empty((n, heads, T, size), X.dtype)
    V = np.empty((n, heads, T, size), X.dtype)
    for i in range(n):
        for t in range(T):
            row = i * T + t
            for a in range(heads):
                for c in range(size):
                    Q[i, a, t, c] = qkv[row, a * size + c]
                    K[i, a, t, c] = qkv[row, d + a * size + c]
                    V[i, a, t, c] = qkv[row, 2 * d + a * size + c]
    P = np.empty((n, heads, T, T) if keep else (1, 1, T, T), X.dtype)
    C = np.empty((n * T, d), X.dtype)
    part = np.empty((T, size), X.dtype)
    for i in range(n):
        for a in range(heads):
            p = P[i, a] if keep else P[0, 0]
            matmul_into(Q[i, a], K[i, a].T, p)
            _softmax_scores(p, scale, causal)
            matmul_into(p, V[i, a], part)
            for t in range(T):
                for c in range(size):
                    C[i * T + t, a * size + c] = part[t, c]
    Y = np.empty((n * T, d), X.dtype)
    _project(C, Wo, bo, Y)
    return Y.reshape((n, T, d)), Q, K, V, P, C


@jit(inline="always")
def _attention_backward(X, dY, R, Wo, settings):
    """The gradient of the projections' output qkv (n T, 3 d), from dY (n, T, d) and the
    residuals R: dC = dY W_o, then per example and head dP = dC_h V_h^T, dV_h = P^T dC_h,
    dS = the softmax's gradient of dP (scaled), dQ_h = dS K_h, dK_h = dS^T Q_h."""
    Q, K, V, P, C = R
    heads, causal = settings
    n, T, d = X.shape
    size = d // heads
    scale = 1.0 / math.sqrt(size)
    dC = matmul(dY.reshape((n * T, d)), Wo)
    dqkv = np.empty((n * T, 3 * d), X.dtype)
    dpart = np.empty((T, size), X.dtype)
    dp = np.empty((T, T), X.dtype)
    dq = np.empty((T, size), X.dtype)
    dk = np.empty((T, size), X.dtype)
    dv = np.empty((T, size), X.dtype)
    for i in range(n):
        for a in range(heads):
            for t in range(T):
                for c in range(size):
                    dpart[t, c] = dC[i * T + t, a * size + c]
            p = P[i, a]
            matmul_into(dpart, V[i, a].T, dp)
            matmul_into(p.T, dpart, dv)
            _softmax_scores_vjp(p, dp, scale, causal)
            matmul_into(dp, K[i, a], dq)
            matmul_into(dp.T, Q[i, a], dk)
            for t in range(T):
                row = i * T + t
                for c in range(size):
                    dqkv[row, a * size + c] = dq[t, c]
                    dqkv[row, d + a * size + c] = dk[t, c]
                    dqkv[row, 2 * d + a * size + c] = dv[t, c]
    return dqkv


@jit(inline="always")
def _attention_input_gradient(X, dqkv, Wi):
    """dX = dqkv @ W_in;  -> (n, T, d)."""
    return matmul(dqkv, Wi).reshape(X.shape)


@jit(inline="always")
def _attention_param_gradients(X, dY, R, dqkv):
    """d in_proj_weight = dqkv^T X, d in_proj_bias = the rows of dqkv summed, d
    out_proj_weight = dY^T C, d out_proj_bias = the rows of dY summed (all over n T rows)."""
    C = R[4]
    n, T, d = X.shape
    dy = dY.reshape((n * T, d))
    d_in_weight = matmul(dqkv.T, X.reshape((n * T, d)))
    d_in_bias = _column_sums(dqkv)
    d_out_weight = matmul(dy.T, C)
    d_out_bias = _column_sums(dy)
    return d_in_weight, d_in_bias, d_out_weight, d_out_bias


# --------------------------------------------------------------------------- the kernels
@jit
def _attention_forward(X, Wi, bi, Wo, bo, settings):
    """Self-attention of each sequence;  X (n, T, d) -> Y (n, T, d) (see the module's notes)."""
    return _attention(X, Wi, bi, Wo, bo, settings, False)[0]


@jit
def _attention_forward_residuals(X, Wi, bi, Wo, bo, settings):
    """Y and R = (Q, K, V (n, H, T, h), P (n, H, T, T), C (n T, d)): what the backward pass reads."""
    Y, Q, K, V, P, C = _attention(X, Wi, bi, Wo, bo, settings, True)
    return Y, (as_readonly(Q), as_readonly(K), as_readonly(V), as_readonly(P), as_readonly(C))


@jit
def _attention_grad_input(X, dY, R, Wi, bi, Wo, bo, settings):
    """dX (n, T, d) from the residuals R."""
    return _attention_input_gradient(X, _attention_backward(X, dY, R, Wo, settings), Wi)


@jit
def _attention_grad_params(X, dY, R, Wi, bi, Wo, bo, settings):
    """The four parameters' gradients from the residuals R."""
    return _attention_param_gradients(X, dY, R, _attention_backward(X, dY, R, Wo, settings))


@jit
def _attention_gradients(X, dY, R, Wi, bi, Wo, bo, settings):
    """(dX, the four parameters' gradients) from one backward sweep."""
    dqkv = _attention_backward(X, dY, R, Wo, settings)
    return _attention_input_gradient(X, dqkv, Wi), _attention_param_gradients(X, dY, R, dqkv)


# --------------------------------------------------------------------------- the layer
_WHO = "MultiHeadAttention"


@layer
class MultiHeadAttention(Layer):
    """Multi-head self-attention over sequences ``(n, T, dim) -> (n, T, dim)``, as
    ``torch.nn.MultiheadAttention(dim, num_heads, batch_first=True)`` called with the same
    sequence as query, key and value (``need_weights=False``), the parameters named and laid
    out as PyTorch's, so that they copy across as they are:

    - ``in_proj_weight (3 dim, dim)``, ``in_proj_bias (3 dim,)``: the query, key and value
      projections stacked, ``[Q K V] = X in_proj_weight^T + in_proj_bias``;
    - ``out_proj_weight (dim, dim)``, ``out_proj_bias (dim,)``: ``Y = C out_proj_weight^T +
      out_proj_bias``, ``C`` the heads' contexts side by side.

    Each of the ``num_heads`` heads attends with ``dim / num_heads`` features, scaled by
    ``1 / sqrt(dim / num_heads)``. With ``causal=True`` position ``i`` attends to positions
    ``j <= i`` only (PyTorch's boolean ``attn_mask`` of the upper triangle): what a later
    position holds never reaches an earlier position's output. The kernels' arithmetic is
    described in :mod:`jitnn.layers.attention`.
    """

    in_proj_weight: Array = param()
    in_proj_bias: Array = param()
    out_proj_weight: Array = param()
    out_proj_bias: Array = param()
    num_heads: int = attrs.field(converter=validate.converter(validate.positive_int, _WHO, "num_heads"))
    causal: bool = attrs.field(default=False, converter=validate.converter(validate.flag, _WHO, "causal"))

    kernels = Kernels(
        _attention_forward,
        residuals=Residuals(_attention_forward_residuals, _attention_grad_input, _attention_grad_params, gradients=_attention_gradients),
    )

    @classmethod
    def init(cls, key: random.Key, dim: int, num_heads: int, *, causal: bool = False, dtype: Any = np.float32) -> MultiHeadAttention:
        """A new layer initialized as PyTorch initializes ``nn.MultiheadAttention``:
        ``in_proj_weight`` Glorot (Xavier) uniform, ``U(-a, a)`` with ``a = sqrt(6 / (dim +
        3 dim))`` (PyTorch's ``xavier_uniform_`` of the stacked ``(3 dim, dim)`` matrix);
        ``out_proj_weight`` as a ``Linear(dim, dim)``'s default, ``U(-1 / sqrt(dim), 1 /
        sqrt(dim))`` (PyTorch's ``kaiming_uniform_(a=sqrt(5))``); both biases zero
        (PyTorch sets them with ``constant_(0)``)."""
        who = f"{_WHO}.init"
        dim, num_heads = validate.positive_int(dim, who, "dim"), validate.positive_int(num_heads, who, "num_heads")
        _check_heads(who, dim, num_heads)
        causal = validate.flag(causal, who, "causal")
        dtype = check_float_dtype(dtype, who)
        if not isinstance(key, random.Key):
            raise TypeError(f"{who}: key must be a jitnn.random.Key (jn.random.key(seed)), got {type(key).__name__}")
        in_key, out_key = random.split(key)
        bound = 1.0 / math.sqrt(dim)
        return cls(
            in_proj_weight=initializers.glorot_uniform(in_key, (3 * dim, dim), dtype=dtype),
            in_proj_bias=np.zeros(3 * dim, dtype),
            out_proj_weight=random.uniform(out_key, (dim, dim), -bound, bound, dtype=dtype),
            out_proj_bias=np.zeros(dim, dtype),
            num_heads=num_heads,
            causal=causal,
        )

    @property
    def dim(self) -> int:
        return self.out_proj_weight.shape[0]

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def config(self) -> tuple[Any, ...]:
        """One argument for the kernels, ``(num_heads, causal)``: a tuple keeps the residual
        gradient kernels at eight arguments."""
        return ((self.num_heads, self.causal),)

    def check_params(self) -> None:
        Wi, bi, Wo, bo = self.params
        if Wo.ndim != 2 or Wo.shape[0] != Wo.shape[1]:
            raise ValueError(f"{_WHO}: out_proj_weight must have shape (dim, dim), got {Wo.shape}")
        dim = Wo.shape[0]
        expected = {"in_proj_weight": (3 * dim, dim), "in_proj_bias": (3 * dim,), "out_proj_bias": (dim,)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{_WHO}: {name} must have shape {shape} for dim {dim} (out_proj_weight {Wo.shape}), got {getattr(self, name).shape}")
        _check_heads(_WHO, dim, self.num_heads)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        input_shape = tuple(input_shape)
        if len(input_shape) != 2 or input_shape[1] != self.dim:
            raise ValueError(f"expects per-example input shape (length, {self.dim}) (a batch of sequences (n, length, {self.dim})), got {input_shape}")
        if input_shape[0] == 0:
            raise ValueError(f"expects sequences of at least one position, got per-example shape {input_shape}")
        return input_shape

    def label(self) -> str:
        """The class name with the short configuration that :func:`jitnn.summary` shows."""
        return f"{type(self).__name__}({self.dim}, {self.num_heads} heads{', causal' if self.causal else ''})"


def _check_heads(who: str, dim: int, num_heads: int) -> None:
    if dim % num_heads:
        raise ValueError(f"{who}: num_heads must divide dim, got num_heads={num_heads} for dim={dim}")
