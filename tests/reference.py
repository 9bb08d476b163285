"""Plain NumPy reference implementations of jitnn's built-in layers and losses.

Slow, obvious and independent of jitnn's kernels: the test suite compares every layer and
loss against these. Everything is computed in float64, whatever the input dtype, so that a
float32 kernel is compared with the best answer float64 can give.

Each layer is a namespace with three functions following the kernels' convention:

- ``forward(X, *params, **config) -> Y``
- ``grad_input(X, dY, *params, **config) -> dX``
- ``grad_params(X, dY, *params, **config) -> tuple`` (one gradient per parameter; empty
  for a layer without parameters)

Each loss is a namespace with ``value(Y, T) -> float`` and ``grad(Y, T) -> dL/dY``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf


def _f64(*arrays):
    converted = tuple(np.asarray(a, dtype=np.float64) for a in arrays)
    return converted[0] if len(converted) == 1 else converted


# --------------------------------------------------------------------------- layers
class Dense:
    """``Y = X @ W + b``; ``X (n, n_in)``, ``W (n_in, n_out)``, ``b (n_out,)``."""

    @staticmethod
    def forward(X, W, b):
        X, W, b = _f64(X, W, b)
        return X @ W + b

    @staticmethod
    def grad_input(X, dY, W, b):
        dY, W = _f64(dY, W)
        return dY @ W.T

    @staticmethod
    def grad_params(X, dY, W, b):
        X, dY = _f64(X, dY)
        return X.T @ dY, dY.sum(axis=0)

    @staticmethod
    def jacobian_input(x, W, b):
        """``dY/dx`` for one example ``x (n_in,)``: ``(n_out, n_in)``."""
        return _f64(W).T.copy()


class _Elementwise:
    """``Y = f(X)`` element by element; ``dX = dY * f'(X)``; no parameters."""

    @staticmethod
    def value(x, **config):
        raise NotImplementedError

    @staticmethod
    def derivative(x, **config):
        raise NotImplementedError

    @classmethod
    def forward(cls, X, **config):
        return cls.value(_f64(X), **config)

    @classmethod
    def grad_input(cls, X, dY, **config):
        X, dY = _f64(X, dY)
        return dY * cls.derivative(X, **config)

    @classmethod
    def grad_params(cls, X, dY, **config):
        return ()


class Identity(_Elementwise):
    @staticmethod
    def value(x):
        return x.copy()

    @staticmethod
    def derivative(x):
        return np.ones_like(x)


class ReLU(_Elementwise):
    """``max(x, 0)``; the derivative at 0 is 0."""

    @staticmethod
    def value(x):
        return np.where(x > 0, x, 0.0)

    @staticmethod
    def derivative(x):
        return np.where(x > 0, 1.0, 0.0)


class LeakyReLU(_Elementwise):
    """``x if x > 0 else negative_slope * x``."""

    @staticmethod
    def value(x, negative_slope=0.01):
        return np.where(x > 0, x, negative_slope * x)

    @staticmethod
    def derivative(x, negative_slope=0.01):
        return np.where(x > 0, 1.0, negative_slope)


class Sigmoid(_Elementwise):
    @staticmethod
    def value(x):
        # 1 / (1 + exp(-x)) written so that neither branch overflows
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    @classmethod
    def derivative(cls, x):
        s = cls.value(x)
        return s * (1.0 - s)


class Tanh(_Elementwise):
    @staticmethod
    def value(x):
        return np.tanh(x)

    @staticmethod
    def derivative(x):
        return 1.0 - np.tanh(x) ** 2


class GELU(_Elementwise):
    """Exact GELU: ``x * Phi(x)``, ``Phi`` the standard normal distribution function."""

    @staticmethod
    def value(x):
        return x * 0.5 * (1.0 + erf(x / np.sqrt(2.0)))

    @staticmethod
    def derivative(x):
        cdf = 0.5 * (1.0 + erf(x / np.sqrt(2.0)))
        pdf = np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi)
        return cdf + x * pdf


class Softmax:
    """Softmax over the last axis; ``dX = Y * (dY - sum(dY * Y, last axis))``."""

    @staticmethod
    def forward(X):
        X = _f64(X)
        e = np.exp(X - X.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    @classmethod
    def grad_input(cls, X, dY):
        Y, dY = cls.forward(X), _f64(dY)
        return Y * (dY - np.sum(dY * Y, axis=-1, keepdims=True))

    @staticmethod
    def grad_params(X, dY):
        return ()

    @classmethod
    def jacobian_input(cls, x):
        """``dY/dx`` for one example ``x (k,)``: ``diag(y) - y y^T``, ``(k, k)``."""
        y = cls.forward(x)
        return np.diag(y) - np.outer(y, y)


class Chain:
    """Members applied in order; each member is ``(reference, params, config)``."""

    @staticmethod
    def forward(X, members):
        for ref, params, config in members:
            X = ref.forward(X, *params, **config)
        return X

    @staticmethod
    def _inputs(X, members):
        inputs = []
        for ref, params, config in members:
            inputs.append(X)
            X = ref.forward(X, *params, **config)
        return inputs

    @classmethod
    def grad_input(cls, X, dY, members):
        inputs = cls._inputs(X, members)
        dY = _f64(dY)
        for (ref, params, config), X_i in zip(members[::-1], inputs[::-1]):
            dY = ref.grad_input(X_i, dY, *params, **config)
        return dY

    @classmethod
    def grad_params(cls, X, dY, members):
        """One tuple of parameter gradients per member, in the members' order."""
        inputs = cls._inputs(X, members)
        dY = _f64(dY)
        grads = [None] * len(members)
        for i in range(len(members) - 1, -1, -1):
            ref, params, config = members[i]
            grads[i] = ref.grad_params(inputs[i], dY, *params, **config)
            dY = ref.grad_input(inputs[i], dY, *params, **config)
        return tuple(grads)


class Residual:
    """``X + inner(X)``; ``inner`` is ``(reference, params, config)``."""

    @staticmethod
    def forward(X, inner):
        ref, params, config = inner
        return _f64(X) + ref.forward(X, *params, **config)

    @staticmethod
    def grad_input(X, dY, inner):
        ref, params, config = inner
        return _f64(dY) + ref.grad_input(X, dY, *params, **config)

    @staticmethod
    def grad_params(X, dY, inner):
        ref, params, config = inner
        return (ref.grad_params(X, dY, *params, **config),)


class Concatenate:
    """Branches' outputs joined along per-example ``axis``."""

    @staticmethod
    def forward(X, branches, axis):
        return np.concatenate([ref.forward(X, *p, **c) for ref, p, c in branches], axis=axis + 1)

    @staticmethod
    def _parts(X, dY, branches, axis):
        sizes = [ref.forward(X, *p, **c).shape[axis + 1] for ref, p, c in branches]
        return np.split(_f64(dY), np.cumsum(sizes)[:-1], axis=axis + 1)

    @classmethod
    def grad_input(cls, X, dY, branches, axis):
        parts = cls._parts(X, dY, branches, axis)
        return sum(ref.grad_input(X, d, *p, **c) for (ref, p, c), d in zip(branches, parts))

    @classmethod
    def grad_params(cls, X, dY, branches, axis):
        parts = cls._parts(X, dY, branches, axis)
        return tuple(ref.grad_params(X, d, *p, **c) for (ref, p, c), d in zip(branches, parts))


class Add:
    """Branches' outputs summed."""

    @staticmethod
    def forward(X, branches):
        return sum(ref.forward(X, *p, **c) for ref, p, c in branches)

    @staticmethod
    def grad_input(X, dY, branches):
        return sum(ref.grad_input(X, dY, *p, **c) for ref, p, c in branches)

    @staticmethod
    def grad_params(X, dY, branches):
        return tuple(ref.grad_params(X, dY, *p, **c) for ref, p, c in branches)


class LayerNorm:
    """Normalization over the last axis, then ``* scale + shift``."""

    @staticmethod
    def _normalized(X, eps):
        X = _f64(X)
        mean, var = X.mean(axis=-1, keepdims=True), X.var(axis=-1, keepdims=True)
        return (X - mean) / np.sqrt(var + eps), 1.0 / np.sqrt(var + eps)

    @classmethod
    def forward(cls, X, scale, shift, eps):
        return cls._normalized(X, eps)[0] * _f64(scale) + _f64(shift)

    @classmethod
    def grad_input(cls, X, dY, scale, shift, eps):
        normalized, inverse_std = cls._normalized(X, eps)
        g = _f64(dY) * _f64(scale)
        return inverse_std * (g - g.mean(axis=-1, keepdims=True) - normalized * (g * normalized).mean(axis=-1, keepdims=True))

    @classmethod
    def grad_params(cls, X, dY, scale, shift, eps):
        normalized = cls._normalized(X, eps)[0]
        dY = _f64(dY).reshape(-1, normalized.shape[-1])
        return (dY * normalized.reshape(dY.shape)).sum(axis=0), dY.sum(axis=0)


class BatchNorm:
    """Evaluation mode: ``(X - running_mean) / sqrt(running_var + eps) * scale + shift``
    per channel (per-example axis 0)."""

    @staticmethod
    def _per_channel(v, X):
        return _f64(v).reshape((1, -1) + (1,) * (np.ndim(X) - 2))

    @classmethod
    def forward(cls, X, scale, shift, running_mean, running_var, eps):
        c = lambda v: cls._per_channel(v, X)
        return (_f64(X) - c(running_mean)) / np.sqrt(c(running_var) + eps) * c(scale) + c(shift)

    @classmethod
    def grad_input(cls, X, dY, scale, shift, running_mean, running_var, eps):
        c = lambda v: cls._per_channel(v, X)
        return _f64(dY) * c(scale) / np.sqrt(c(running_var) + eps)

    @classmethod
    def grad_params(cls, X, dY, scale, shift, running_mean, running_var, eps):
        c = lambda v: cls._per_channel(v, X)
        normalized = (_f64(X) - c(running_mean)) / np.sqrt(c(running_var) + eps)
        axes = (0,) + tuple(range(2, np.ndim(X)))
        return (_f64(dY) * normalized).sum(axis=axes), _f64(dY).sum(axis=axes)


class Embedding:
    """``table[indices]``; the gradient of a row sums the rows of dY that used it."""

    @staticmethod
    def forward(X, table):
        return _f64(table)[X]

    @staticmethod
    def grad_input(X, dY, table):
        return np.zeros(np.shape(X))

    @staticmethod
    def grad_params(X, dY, table):
        grad = np.zeros(np.shape(table))
        np.add.at(grad, np.ravel(X), _f64(dY).reshape(-1, grad.shape[1]))
        return (grad,)


class PositionalEmbedding:
    """``X (n, T, dim) + table[:T]``; the table's gradient sums ``dY`` over the batch (rows
    beyond ``T`` get zeros)."""

    @staticmethod
    def forward(X, table):
        X = _f64(X)
        return X + _f64(table)[: X.shape[1]]

    @staticmethod
    def grad_input(X, dY, table):
        return _f64(dY).copy()

    @staticmethod
    def grad_params(X, dY, table):
        grad = np.zeros(np.shape(table))
        grad[: np.shape(X)[1]] = _f64(dY).sum(axis=0)
        return (grad,)


class MultiHeadAttention:
    """Self-attention as ``torch.nn.MultiheadAttention(batch_first=True)`` with query = key =
    value = ``X (n, T, d)``: ``[Q K V] = X Wi^T + bi`` split into ``num_heads`` heads of ``h =
    d / num_heads`` features, ``P = softmax(Q K^T / sqrt(h))`` over the keys (with
    ``causal``, keys ``j > i`` masked out), ``C = P V`` with the heads side by side, ``Y = C
    Wo^T + bo``. The gradients by the chain rule, written out with NumPy's products."""

    @staticmethod
    def parts(X, Wi, bi, Wo, bo, num_heads, causal):
        """Every intermediate: Q, K, V (n, H, T, h), the scaled scores Z and P (n, H, T, T)
        (``-inf`` and 0 at masked keys), C (n, T, d) and Y."""
        X, Wi, bi, Wo, bo = _f64(X, Wi, bi, Wo, bo)
        n, T, d = X.shape
        h = d // num_heads
        qkv = X @ Wi.T + bi
        heads = lambda a: a.reshape(n, T, num_heads, h).transpose(0, 2, 1, 3)
        Q, K, V = (heads(qkv[..., k * d : (k + 1) * d]) for k in range(3))
        Z = (Q @ K.transpose(0, 1, 3, 2)) / np.sqrt(h)
        if causal:
            Z = np.where(np.triu(np.ones((T, T), bool), 1), -np.inf, Z)
        E = np.exp(Z - Z.max(axis=-1, keepdims=True))
        P = E / E.sum(axis=-1, keepdims=True)
        C = (P @ V).transpose(0, 2, 1, 3).reshape(n, T, d)
        return Q, K, V, Z, P, C, C @ Wo.T + bo

    @classmethod
    def forward(cls, X, Wi, bi, Wo, bo, num_heads, causal):
        return cls.parts(X, Wi, bi, Wo, bo, num_heads, causal)[-1]

    @classmethod
    def _backward(cls, X, dY, Wi, bi, Wo, bo, num_heads, causal):
        Q, K, V, _, P, C, _ = cls.parts(X, Wi, bi, Wo, bo, num_heads, causal)
        X, dY, Wi, Wo = _f64(X, dY, Wi, Wo)
        n, T, d = X.shape
        h = d // num_heads
        dC = (dY @ Wo).reshape(n, T, num_heads, h).transpose(0, 2, 1, 3)
        dP = dC @ V.transpose(0, 1, 3, 2)
        dV = P.transpose(0, 1, 3, 2) @ dC
        dZ = P * (dP - (dP * P).sum(axis=-1, keepdims=True)) / np.sqrt(h)
        dQ, dK = dZ @ K, dZ.transpose(0, 1, 3, 2) @ Q
        rows = lambda a: a.transpose(0, 2, 1, 3).reshape(n, T, d)
        dqkv = np.concatenate([rows(dQ), rows(dK), rows(dV)], axis=-1)
        return dqkv, C

    @classmethod
    def grad_input(cls, X, dY, Wi, bi, Wo, bo, num_heads, causal):
        dqkv, _ = cls._backward(X, dY, Wi, bi, Wo, bo, num_heads, causal)
        return dqkv @ _f64(Wi)

    @classmethod
    def grad_params(cls, X, dY, Wi, bi, Wo, bo, num_heads, causal):
        dqkv, C = cls._backward(X, dY, Wi, bi, Wo, bo, num_heads, causal)
        X, dY = _f64(X, dY)
        d = X.shape[-1]
        flat = lambda a: a.reshape(-1, a.shape[-1])
        return flat(dqkv).T @ flat(X), flat(dqkv).sum(axis=0), flat(dY).T @ flat(C).reshape(-1, d), flat(dY).sum(axis=0)


# --------------------------------------------------------------------------- recurrent layers
class _Recurrent:
    """One direction of PyTorch's one-layer RNN, GRU or LSTM over ``X (n, T, input)``, the
    state zero at the start, read from ``t = T - 1`` down with ``reverse``: a loop over the
    steps, one ``cell`` each, and backpropagation through time by hand, one ``cell_backward``
    per step in the opposite order. Parameters as PyTorch's ``weight_ih_l0`` and so on; the
    gate blocks are the rows of the weights. The output: the state ``h`` after each time
    ``(n, T, hidden)``, or after the last step ``(n, hidden)``."""

    @staticmethod
    def initial(n, hidden):
        return (np.zeros((n, hidden)),)

    @staticmethod
    def _steps(T, reverse):
        return list(range(T - 1, -1, -1)) if reverse else list(range(T))

    @classmethod
    def _run(cls, X, W_ih, W_hh, b_ih, b_hh, reverse):
        X, W_ih, W_hh, b_ih, b_hh = _f64(X, W_ih, W_hh, b_ih, b_hh)
        n, T, _ = X.shape
        hidden = W_hh.shape[1]
        state, outputs, caches = cls.initial(n, hidden), np.zeros((n, T, hidden)), {}
        for t in cls._steps(T, reverse):
            state, caches[t] = cls.cell(X[:, t], state, W_ih, W_hh, b_ih, b_hh)
            outputs[:, t] = state[0]
        return outputs, state[0], caches

    @classmethod
    def forward(cls, X, W_ih, W_hh, b_ih, b_hh, reverse=False, return_sequences=True):
        outputs, last, _ = cls._run(X, W_ih, W_hh, b_ih, b_hh, reverse)
        return outputs if return_sequences else last

    @classmethod
    def _backward(cls, X, dY, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
        _, _, caches = cls._run(X, W_ih, W_hh, b_ih, b_hh, reverse)
        X, dY, W_ih, W_hh = _f64(X, dY, W_ih, W_hh)
        n, T, _ = X.shape
        dX = np.zeros(X.shape)
        grads = [np.zeros(np.shape(p)) for p in (W_ih, W_hh, b_ih, b_hh)]
        dstate = cls.initial(n, W_hh.shape[1])  # what the later step hands back
        steps = cls._steps(T, reverse)
        for position in range(T - 1, -1, -1):
            t = steps[position]
            if return_sequences:
                dstate = (dstate[0] + dY[:, t],) + dstate[1:]
            elif position == T - 1:
                dstate = (dstate[0] + dY,) + dstate[1:]
            dX[:, t], dstate, step_grads = cls.cell_backward(dstate, caches[t], W_ih, W_hh)
            for total, g in zip(grads, step_grads):
                total += g
        return dX, tuple(grads)

    @classmethod
    def grad_input(cls, X, dY, W_ih, W_hh, b_ih, b_hh, reverse=False, return_sequences=True):
        return cls._backward(X, dY, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences)[0]

    @classmethod
    def grad_params(cls, X, dY, W_ih, W_hh, b_ih, b_hh, reverse=False, return_sequences=True):
        return cls._backward(X, dY, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences)[1]

    @staticmethod
    def _gradients(da_input, da_hidden, x, h, W_ih, W_hh):
        """dx, dh and the step's parameter gradients from the pre-activations' gradients
        (of ``x W_ih.T + b_ih`` and of ``h W_hh.T + b_hh``)."""
        grads = (da_input.T @ x, da_hidden.T @ h, da_input.sum(axis=0), da_hidden.sum(axis=0))
        return da_input @ W_ih, da_hidden @ W_hh, grads


class RNN(_Recurrent):
    """``h' = tanh(x W_ih.T + b_ih + h W_hh.T + b_hh)``."""

    @staticmethod
    def cell(x, state, W_ih, W_hh, b_ih, b_hh):
        (h,) = state
        h_new = np.tanh(x @ W_ih.T + b_ih + h @ W_hh.T + b_hh)
        return (h_new,), (x, h, h_new)

    @classmethod
    def cell_backward(cls, dstate, cache, W_ih, W_hh):
        (dh_new,) = dstate
        x, h, h_new = cache
        da = dh_new * (1.0 - h_new**2)
        dx, dh, grads = cls._gradients(da, da, x, h, W_ih, W_hh)
        return dx, (dh,), grads


class GRU(_Recurrent):
    """Gates r, z, n: ``n = tanh(a_n + r (h W_hn.T + b_hn))``, ``h' = (1 - z) n + z h``."""

    @staticmethod
    def cell(x, state, W_ih, W_hh, b_ih, b_hh):
        (h,) = state
        a_r, a_z, a_n = np.split(x @ W_ih.T + b_ih, 3, axis=1)
        g_r, g_z, g_n = np.split(h @ W_hh.T + b_hh, 3, axis=1)
        r, z = Sigmoid.value(a_r + g_r), Sigmoid.value(a_z + g_z)
        n = np.tanh(a_n + r * g_n)
        return ((1.0 - z) * n + z * h,), (x, h, r, z, n, g_n)

    @classmethod
    def cell_backward(cls, dstate, cache, W_ih, W_hh):
        (dh_new,) = dstate
        x, h, r, z, n, g_n = cache
        dn_pre = dh_new * (1.0 - z) * (1.0 - n**2)
        dr_pre = dn_pre * g_n * r * (1.0 - r)
        dz_pre = dh_new * (h - n) * z * (1.0 - z)
        da_input = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
        da_hidden = np.concatenate([dr_pre, dz_pre, dn_pre * r], axis=1)
        dx, dh, grads = cls._gradients(da_input, da_hidden, x, h, W_ih, W_hh)
        return dx, (dh + dh_new * z,), grads


class LSTM(_Recurrent):
    """Gates i, f, g, o: ``c' = f c + i g``, ``h' = o tanh(c')``; the state is ``(h, c)``."""

    @staticmethod
    def initial(n, hidden):
        return (np.zeros((n, hidden)), np.zeros((n, hidden)))

    @staticmethod
    def cell(x, state, W_ih, W_hh, b_ih, b_hh):
        h, c = state
        a_i, a_f, a_g, a_o = np.split(x @ W_ih.T + b_ih + h @ W_hh.T + b_hh, 4, axis=1)
        i, f, g, o = Sigmoid.value(a_i), Sigmoid.value(a_f), np.tanh(a_g), Sigmoid.value(a_o)
        c_new = f * c + i * g
        return (o * np.tanh(c_new), c_new), (x, h, c, i, f, g, o, c_new)

    @classmethod
    def cell_backward(cls, dstate, cache, W_ih, W_hh):
        dh_new, dc_new = dstate
        x, h, c, i, f, g, o, c_new = cache
        tc = np.tanh(c_new)
        dc = dc_new + dh_new * o * (1.0 - tc**2)
        da = np.concatenate([dc * g * i * (1.0 - i), dc * c * f * (1.0 - f), dc * i * (1.0 - g**2), dh_new * tc * o * (1.0 - o)], axis=1)
        dx, dh, grads = cls._gradients(da, da, x, h, W_ih, W_hh)
        return dx, (dh, dc * f), grads


# --------------------------------------------------------------------------- losses
def _logsumexp(Y):
    top = Y.max(axis=-1, keepdims=True)
    return (top + np.log(np.exp(Y - top).sum(axis=-1, keepdims=True)))[..., 0]


class SoftmaxCrossEntropy:
    """Logits ``Y (n, k)``, integer labels ``T (n,)``: ``mean_i logsumexp(Y[i]) - q_i . Y[i]``
    with ``q_i = (1 - label_smoothing) onehot(T[i]) + label_smoothing / k`` (the one-hot
    label without smoothing); or ``Y (n, ..., k)`` with ``T (n, ...)``: the mean over every
    position. With ``ignore_label``, positions of that label are left out of the mean (0 and
    a zero gradient where all are)."""

    @staticmethod
    def _rows(Y, T, ignore_label):
        Y, T = _f64(Y), np.asarray(T).astype(np.int64)
        Y, T = Y.reshape(-1, Y.shape[-1]), T.reshape(-1)
        counted = np.ones(T.shape, bool) if ignore_label is None else T != ignore_label
        return Y, T, counted

    @staticmethod
    def _targets(T, k, label_smoothing):
        q = np.full((T.size, k), label_smoothing / k)
        q[np.arange(T.size), T] += 1.0 - label_smoothing
        return q

    @classmethod
    def value(cls, Y, T, ignore_label=None, label_smoothing=0.0):
        Y, T, counted = cls._rows(Y, T, ignore_label)
        if not counted.any():
            return 0.0
        rows = np.flatnonzero(counted)
        q = cls._targets(T[rows], Y.shape[1], label_smoothing)
        return float(np.mean(_logsumexp(Y[rows]) - (q * Y[rows]).sum(axis=1)))

    @classmethod
    def grad(cls, Y, T, ignore_label=None, label_smoothing=0.0):
        shape = np.shape(Y)
        Y, T, counted = cls._rows(Y, T, ignore_label)
        rows = np.flatnonzero(counted)
        grad = np.zeros(Y.shape)
        if rows.size:
            grad[rows] = (Softmax.forward(Y[rows]) - cls._targets(T[rows], Y.shape[1], label_smoothing)) / rows.size
        return grad.reshape(shape)


class MeanSquaredError:
    """Mean over ALL elements of ``(Y - T)**2``."""

    @staticmethod
    def value(Y, T):
        Y, T = _f64(Y, T)
        return float(np.mean((Y - T) ** 2))

    @staticmethod
    def grad(Y, T):
        Y, T = _f64(Y, T)
        return 2.0 * (Y - T) / Y.size


class BinaryCrossEntropy:
    """From logits, mean over all elements of ``max(y, 0) - y t + log1p(exp(-|y|))``."""

    @staticmethod
    def value(Y, T):
        Y, T = _f64(Y, T)
        return float(np.mean(np.maximum(Y, 0.0) - Y * T + np.log1p(np.exp(-np.abs(Y)))))

    @staticmethod
    def grad(Y, T):
        Y, T = _f64(Y, T)
        return (Sigmoid.value(Y) - T) / Y.size


class Huber:
    """Mean over all elements of ``0.5 d**2`` (``|d| <= delta``) or ``delta (|d| - delta / 2)``, ``d = y - t``."""

    @staticmethod
    def value(Y, T, delta=1.0):
        d = np.abs(np.subtract(*_f64(Y, T)))
        return float(np.mean(np.where(d <= delta, 0.5 * d**2, delta * (d - 0.5 * delta))))

    @staticmethod
    def grad(Y, T, delta=1.0):
        Y, T = _f64(Y, T)
        return np.clip(Y - T, -delta, delta) / Y.size


class KLDivergence:
    """Logits ``Y``, probabilities ``T`` of the same shape ``(..., k)``: the mean over the rows
    of ``sum_j t_j (log t_j - log softmax(y)_j)``, ``0 log 0 = 0``."""

    @staticmethod
    def _rows(Y, T):
        Y, T = _f64(Y, T)
        return Y.reshape(-1, Y.shape[-1]), T.reshape(-1, Y.shape[-1])

    @classmethod
    def value(cls, Y, T):
        Y, T = cls._rows(Y, T)
        log_softmax = Y - _logsumexp(Y)[:, None]
        with np.errstate(divide="ignore"):
            terms = np.where(T > 0, T * (np.log(np.where(T > 0, T, 1.0)) - log_softmax), 0.0)
        return float(terms.sum(axis=1).mean())

    @classmethod
    def grad(cls, Y, T):
        shape = np.shape(Y)
        Y, T = cls._rows(Y, T)
        return ((Softmax.forward(Y) * T.sum(axis=1, keepdims=True) - T) / Y.shape[0]).reshape(shape)


def weighted_loss(cls, Y, T, weights, *config):
    """``(value, grad)`` of the loss ``cls`` (one of the references above, with its
    configuration) with one weight per example: ``sum_i w_i S_i / sum_i w_i c_i``, ``S_i``
    example ``i``'s summed terms and ``c_i`` how many it has (its elements; its rows for the
    row losses; the positions that count for cross-entropy), built from the reference on each
    example alone, whose value is ``S_i / c_i`` and gradient ``dS_i / c_i``."""
    Y, weights = _f64(Y), np.asarray(weights, np.float64)
    T = np.asarray(T)
    ignore = config[0] if cls is SoftmaxCrossEntropy and config else None
    counts = np.array([
        (np.sum(T[i] != ignore) if ignore is not None else T[i].size) if cls is SoftmaxCrossEntropy
        else Y[i].size // Y.shape[-1] if cls is KLDivergence else Y[i].size
        for i in range(len(Y))
    ], np.float64)
    mass = float((weights * counts).sum())
    grad = np.zeros(Y.shape)
    if mass == 0.0:
        return 0.0, grad
    value = 0.0
    for i in range(len(Y)):
        if counts[i]:
            value += weights[i] * counts[i] * cls.value(Y[i : i + 1], T[i : i + 1], *config)
            grad[i] = weights[i] * counts[i] / mass * cls.grad(Y[i : i + 1], T[i : i + 1], *config)[0]
    return value / mass, grad
