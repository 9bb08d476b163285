"""Recurrent layers: ``RNN`` (tanh), ``GRU`` and ``LSTM``, one direction each, and
``Bidirectional``, which runs a forward and a reverse layer over the same sequences.

Each leaf layer holds PyTorch's single-layer parameters under PyTorch's names and layouts,
``G`` gate blocks stacked along the first axis (``G`` = 1 for RNN, 3 for GRU in the order
``r, z, n``, 4 for LSTM in the order ``i, f, g, o``)::

    weight_ih (G hidden, input_size)   weight_hh (G hidden, hidden)
    bias_ih   (G hidden,)              bias_hh   (G hidden,)

so ``jn.GRU(weight_ih=gru.weight_ih_l0.detach().numpy(), ...)`` copies a one-layer
``torch.nn.GRU(batch_first=True)``. The state starts at zero. Input ``(n, T, input_size)``;
output the state after every step, ``(n, T, hidden)`` (``return_sequences=True``), or the
state after the last one, ``(n, hidden)``. A layer with ``reverse=True`` reads the
sequence from ``t = T - 1`` down to ``t = 0``; its output at ``t`` is still its state after
reading ``t``, and its last state is the one after reading ``t = 0``.

The cells, with ``a = W_ih x_t + b_ih`` (one block per gate) and ``b = W_hh h + b_hh``::

    RNN   h' = tanh(a + b)
    GRU   r = sigmoid(a_r + b_r), z = sigmoid(a_z + b_z), n = tanh(a_n + r b_n),
          h' = n + z (h - n)                                    (= (1 - z) n + z h)
    LSTM  i, f, o = sigmoid(a + b) of their blocks, g = tanh(a_g + b_g),
          c' = f c + i g, h' = o tanh(c')

How the kernels work
--------------------
Every array a step works on is laid out with the batch last, ``(rows, T, n)``, so that the
element-wise loops run along contiguous memory and vectorize (with ``jitnn._math``'s
``sigmoid`` and ``tanh``, which are plain arithmetic). The input's part of every gate at
every step is ONE matrix product before the loop, ``A = [weight_ih b_ih] @ [X, 1].T`` (``(G
hidden, T, n)``, the columns of ``X`` taken by time). Each step then multiplies the state,
``weight_hh @ h`` (``h`` is ``(hidden, n)``), into a buffer made once, and applies the cell
in a few loops over the rows, each reading and writing few arrays (LLVM vectorizes a loop
only if it can check its arrays apart at run time). The residual forward keeps, per time,
what the backward pass reads: the gates after their nonlinearities, the state before the
step (with a row of ones under it, for the bias), GRU's ``b_n = W_hn h + b_hn``, LSTM's
cell before the step and ``tanh`` of the one after it; the RNN keeps its new state.

The backward pass is one sweep over the steps in reverse order (:func:`_gru_sweep` and its
siblings, shared by ``grad_input``, ``grad_params`` and ``gradients``, so the three give the
same bits). Element by element it turns the state's gradient into the gradients of the
gates' pre-activations, of their input side ``dA`` and their hidden side ``dB`` (the same
but for GRU's ``n`` gate: ``dB_n = dA_n r``), and hands the state before the step
``weight_hh.T @ dB_t`` (one product per step). After the sweep, each remaining gradient is
ONE product over all ``T n`` columns: ``dX = dA.T @ weight_ih``, ``[d weight_ih, d bias_ih] =
dA @ [X, 1]`` and ``[d weight_hh, d bias_hh] = dB @ [H_prev; 1].T`` (a bias's gradient is
the product's last column: a sum).

The output's rank depends on ``return_sequences``, and a compiled function has one return
type, so each layer has two sets of kernels, one per output rank, sharing the compiled
forward loop and backward sweep; an instance picks its set by its ``return_sequences``
(``kernel_sets``). The kernels hand the loop whether to keep every step's residuals as
``np.bool_(True)`` or ``np.bool_(False)``: typed ``bool``, where a bare ``True`` would be a
literal and compile the loop once per value.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import attrs
import numpy as np

from jitnn import random, validate
from jitnn._blas import beside_bias, matmul, matmul_into
from jitnn._checks import check_float_dtype
from jitnn._jit import as_readonly, jit
from jitnn._math import sigmoid, tanh
from jitnn.protocol import Array, Composite, Kernels, Layer, Residuals, layer, param

__all__ = ["RNN", "GRU", "LSTM", "Bidirectional"]


# --------------------------------------------------------------------------- shared pieces
@jit(inline="always")
def _time(s, T, reverse):
    """The time read at step ``s``: ``s`` forwards, ``T - 1 - s`` in reverse."""
    return T - 1 - s if reverse else s


@jit(inline="always")
def _time_major_input(X):
    """``[X, 1]`` with rows by time: (T n, input + 1), row ``t n + i`` holding ``X[i, t]`` and a
    one (for the bias);  X (n, T, input)."""
    n, T, features = X.shape
    rows = np.empty((T * n, features + 1), X.dtype)
    for t in range(T):
        for i in range(n):
            for f in range(features):
                rows[t * n + i, f] = X[i, t, f]
            rows[t * n + i, features] = 1
    return rows


@jit(inline="always")
def _input_projection(X, W_ih, b_ih):
    """A = [W_ih b_ih] @ [X, 1].T, every step's input part in one product;  -> (G hidden, T, n)."""
    n, T = X.shape[0], X.shape[1]
    width = W_ih.shape[0]
    return matmul(beside_bias(W_ih, b_ih, X), _time_major_input(X).T).reshape((width, T, n))


@jit(inline="always")
def _output_gradient_by_time(dY, T, reverse, sequences):
    """The output's gradient at every step, (hidden, T, n), zero where the output has none
    (every step but the last, for the last state);  dY (n, T or 1, hidden)."""
    n, hidden = dY.shape[0], dY.shape[2]
    by_time = np.zeros((hidden, T, n), dY.dtype)
    last = _time(T - 1, T, reverse)
    for i in range(n):
        for k in range(dY.shape[1]):
            t = k if sequences else last
            for j in range(hidden):
                by_time[j, t, i] = dY[i, k, j]
    return by_time


@jit(inline="always")
def _states_over_ones(X, hidden, slots):
    """P (hidden + 1, slots, n): rows for the states before each step (filled by the loop), over
    a row of ones (the bias's, in the product with the hidden side's gradients)."""
    P = np.empty((hidden + 1, slots, X.shape[0]), X.dtype)
    P[hidden] = 1
    return P


@jit(inline="always")
def _write_output(Y, h, t, sequences):
    """Y[:, t] (or Y[:, 0], the last state) = h.T;  h (hidden, n)."""
    out = t if sequences else 0
    for i in range(Y.shape[0]):
        for j in range(Y.shape[2]):
            Y[i, out, j] = h[j, i]


@jit(inline="always")
def _input_gradient(X, dA, W_ih):
    """dX = dA.T @ W_ih, one product over the T n columns of dA, in X's (n, T, input) order."""
    n, T, features = X.shape
    by_time = matmul(dA.reshape((dA.shape[0], T * n)).T, W_ih)
    dX = np.empty(X.shape, X.dtype)
    for t in range(T):
        for i in range(n):
            for f in range(features):
                dX[i, t, f] = by_time[t * n + i, f]
    return dX


@jit(inline="always")
def _parameter_gradients(X, dA, dB, P):
    """[d weight_ih, d bias_ih] = dA @ [X, 1] and [d weight_hh, d bias_hh] = dB @ [P; 1].T: one
    product each over the T n columns (the biases' column is a sum);  dA, dB (G hidden, T, n),
    P (hidden + 1, T, n): the state before each step, then a row of ones."""
    n, T, features = X.shape
    width, hidden = dA.shape[0], P.shape[0] - 1
    ih = matmul(dA.reshape((width, T * n)), _time_major_input(X))
    hh = matmul(dB.reshape((width, T * n)), P.reshape((hidden + 1, T * n)).T)
    return ih[:, :features].copy(), hh[:, :hidden].copy(), ih[:, features].copy(), hh[:, hidden].copy()


# --------------------------------------------------------------------------- RNN
@jit
def _rnn_run(X, W_ih, W_hh, b_ih, b_hh, reverse, sequences, keep):
    """h' = tanh(A_t + W_hh h + b_hh) step by step;  -> (Y (n, T or 1, hidden), after (hidden,
    T, n): the state after each time, P (hidden + 1, T, n): the state before it, then ones),
    the last two for every time with ``keep`` (else one slot, overwritten)."""
    n, T = X.shape[0], X.shape[1]
    hidden = W_hh.shape[1]
    A = _input_projection(X, W_ih, b_ih)
    slots = T if keep else 1
    after = np.empty((hidden, slots, n), X.dtype)
    P = _states_over_ones(X, hidden, slots)
    Y = np.empty((n, T if sequences else 1, hidden), X.dtype)
    h, h_next = np.zeros((hidden, n), X.dtype), np.empty((hidden, n), X.dtype)
    B = np.empty((hidden, n), X.dtype)
    for s in range(T):
        t = _time(s, T, reverse)
        k = t if keep else 0
        matmul_into(W_hh, h, B)
        # each loop reads and writes few arrays, so that LLVM can check them apart and vectorize it
        for j in range(hidden):
            bias = b_hh[j]
            for i in range(n):
                after[j, k, i] = tanh(A[j, t, i] + (B[j, i] + bias))
        for j in range(hidden):
            for i in range(n):
                P[j, k, i] = h[j, i]
                h_next[j, i] = after[j, k, i]
        if sequences or s == T - 1:
            _write_output(Y, h_next, t, sequences)
        h, h_next = h_next, h
    return Y, after, P


@jit
def _rnn_sweep(dY, R, W_hh, reverse, sequences):
    """The backward sweep: the pre-activations' gradients dA = dB (hidden, T, n), by time;
    dY (n, T or 1, hidden)."""
    after, P = R
    hidden, T, n = after.shape
    one = np.ones(1, after.dtype)[0]
    dY_t = _output_gradient_by_time(dY, T, reverse, sequences)
    dA = np.empty((hidden, T, n), after.dtype)
    step = np.empty((hidden, n), after.dtype)  # this step's dB, contiguous for the product
    dh = np.zeros((hidden, n), after.dtype)  # through W_hh, from the next step
    for s in range(T - 1, -1, -1):
        t = _time(s, T, reverse)
        for j in range(hidden):
            for i in range(n):
                h = after[j, t, i]
                step[j, i] = (dh[j, i] + dY_t[j, t, i]) * (one - h * h)
        for j in range(hidden):
            for i in range(n):
                dA[j, t, i] = step[j, i]
        if s > 0:
            matmul_into(W_hh.T, step, dh)
    return dA, dA


@jit
def _rnn_forward(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """Y (n, T, hidden): the state after each time."""
    return _rnn_run(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences, np.bool_(False))[0]


@jit
def _rnn_forward_final(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """Y (n, hidden): the state after the last step."""
    Y = _rnn_run(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences, np.bool_(False))[0]
    return Y.reshape((Y.shape[0], Y.shape[2]))


@jit
def _rnn_forward_residuals(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """(Y (n, T, hidden), R = (after, P)) for every time."""
    Y, after, P = _rnn_run(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences, np.bool_(True))
    return Y, (as_readonly(after), as_readonly(P))


@jit
def _rnn_forward_residuals_final(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """(Y (n, hidden), R = (after, P))."""
    Y, after, P = _rnn_run(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences, np.bool_(True))
    return Y.reshape((Y.shape[0], Y.shape[2])), (as_readonly(after), as_readonly(P))


@jit
def _rnn_grad_input(X, dY, R, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """dX (n, T, input) from the sweep;  dY (n, T, hidden)."""
    dA, _ = _rnn_sweep(dY, R, W_hh, reverse, return_sequences)
    return _input_gradient(X, dA, W_ih)


@jit
def _rnn_grad_input_final(X, dY, R, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """dX (n, T, input) from the sweep;  dY (n, hidden)."""
    dA, _ = _rnn_sweep(dY.reshape((dY.shape[0], 1, dY.shape[1])), R, W_hh, reverse, return_sequences)
    return _input_gradient(X, dA, W_ih)


@jit
def _rnn_grad_params(X, dY, R, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """(d weight_ih, d weight_hh, d bias_ih, d bias_hh) from the sweep;  dY (n, T, hidden)."""
    dA, dB = _rnn_sweep(dY, R, W_hh, reverse, return_sequences)
    return _parameter_gradients(X, dA, dB, R[1])


@jit
def _rnn_grad_params_final(X, dY, R, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """The parameters' gradients from the sweep;  dY (n, hidden)."""
    dA, dB = _rnn_sweep(dY.reshape((dY.shape[0], 1, dY.shape[1])), R, W_hh, reverse, return_sequences)
    return _parameter_gradients(X, dA, dB, R[1])


@jit
def _rnn_gradients(X, dY, R, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """(dX, parameters' gradients) from one sweep;  dY (n, T, hidden)."""
    dA, dB = _rnn_sweep(dY, R, W_hh, reverse, return_sequences)
    return _input_gradient(X, dA, W_ih), _parameter_gradients(X, dA, dB, R[1])


@jit
def _rnn_gradients_final(X, dY, R, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """(dX, parameters' gradients) from one sweep;  dY (n, hidden)."""
    dA, dB = _rnn_sweep(dY.reshape((dY.shape[0], 1, dY.shape[1])), R, W_hh, reverse, return_sequences)
    return _input_gradient(X, dA, W_ih), _parameter_gradients(X, dA, dB, R[1])


# --------------------------------------------------------------------------- GRU
@jit
def _gru_run(X, W_ih, W_hh, b_ih, b_hh, reverse, sequences, keep):
    """The GRU step by step;  -> (Y (n, T or 1, hidden), gates (3 hidden, T, n): r, z, n after
    their nonlinearities, Bn (hidden, T, n): W_hn h + b_hn, P (hidden + 1, T, n): the state
    before each time, then ones), the last three for every time with ``keep``."""
    n, T = X.shape[0], X.shape[1]
    hidden = W_hh.shape[1]
    A = _input_projection(X, W_ih, b_ih)
    slots = T if keep else 1
    gates = np.empty((3 * hidden, slots, n), X.dtype)
    Bn = np.empty((hidden, slots, n), X.dtype)
    P = _states_over_ones(X, hidden, slots)
    Y = np.empty((n, T if sequences else 1, hidden), X.dtype)
    h, h_next = np.zeros((hidden, n), X.dtype), np.empty((hidden, n), X.dtype)
    B = np.empty((3 * hidden, n), X.dtype)
    for s in range(T):
        t = _time(s, T, reverse)
        k = t if keep else 0
        matmul_into(W_hh, h, B)
        # each loop reads and writes few arrays, so that LLVM can check them apart and vectorize it
        for row in range(2 * hidden):  # r and z
            bias = b_hh[row]
            for i in range(n):
                gates[row, k, i] = sigmoid(A[row, t, i] + (B[row, i] + bias))
        for j in range(hidden):  # n = tanh(a_n + r b_n)
            bias = b_hh[2 * hidden + j]
            for i in range(n):
                b = B[2 * hidden + j, i] + bias
                Bn[j, k, i] = b
                gates[2 * hidden + j, k, i] = tanh(A[2 * hidden + j, t, i] + gates[j, k, i] * b)
        for j in range(hidden):  # h' = n + z (h - n)
            for i in range(n):
                previous, c = h[j, i], gates[2 * hidden + j, k, i]
                P[j, k, i] = previous
                h_next[j, i] = c + gates[hidden + j, k, i] * (previous - c)
        if sequences or s == T - 1:
            _write_output(Y, h_next, t, sequences)
        h, h_next = h_next, h
    return Y, gates, Bn, P


@jit
def _gru_sweep(dY, R, W_hh, reverse, sequences):
    """The backward sweep: dA (3 hidden, T, n), the gradient of the input side of each gate's
    pre-activation, and dB, of its hidden side (the same but for the n gate: dB_n = dA_n r),
    by time;  dY (n, T or 1, hidden)."""
    gates, Bn, P = R
    hidden, T, n = Bn.shape
    one = np.ones(1, Bn.dtype)[0]
    dY_t = _output_gradient_by_time(dY, T, reverse, sequences)
    dA = np.empty((3 * hidden, T, n), Bn.dtype)
    dB = np.empty((3 * hidden, T, n), Bn.dtype)
    step = np.empty((3 * hidden, n), Bn.dtype)  # this step's dB, contiguous for the product
    grad = np.empty((hidden, n), Bn.dtype)  # the gradient of this step's new state
    dh = np.zeros((hidden, n), Bn.dtype)  # through W_hh, from the next step
    direct = np.zeros((hidden, n), Bn.dtype)  # through h' = n + z (h - n), from the next step
    for s in range(T - 1, -1, -1):
        t = _time(s, T, reverse)
        # each loop reads and writes few arrays, so that LLVM can check them apart and vectorize it
        for j in range(hidden):
            for i in range(n):
                grad[j, i] = (dh[j, i] + direct[j, i]) + dY_t[j, t, i]
        for j in range(hidden):  # the n gate's pre-activation (input side), and h's direct path
            for i in range(n):
                d, z, c = grad[j, i], gates[hidden + j, t, i], gates[2 * hidden + j, t, i]
                dA[2 * hidden + j, t, i] = d * (one - z) * (one - c * c)
                direct[j, i] = d * z
        for j in range(hidden):  # r, and the n gate's hidden side
            for i in range(n):
                dc, r = dA[2 * hidden + j, t, i], gates[j, t, i]
                step[j, i] = dc * Bn[j, t, i] * (r * (one - r))
                step[2 * hidden + j, i] = dc * r
        for j in range(hidden):  # z
            for i in range(n):
                z, c = gates[hidden + j, t, i], gates[2 * hidden + j, t, i]
                step[hidden + j, i] = grad[j, i] * (P[j, t, i] - c) * (z * (one - z))
        for row in range(3 * hidden):
            for i in range(n):
                dB[row, t, i] = step[row, i]
        for row in range(2 * hidden):
            for i in range(n):
                dA[row, t, i] = step[row, i]
        if s > 0:
            matmul_into(W_hh.T, step, dh)
    return dA, dB


@jit
def _gru_forward(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """Y (n, T, hidden): the state after each time."""
    return _gru_run(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences, np.bool_(False))[0]


@jit
def _gru_forward_final(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """Y (n, hidden): the state after the last step."""
    Y = _gru_run(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences, np.bool_(False))[0]
    return Y.reshape((Y.shape[0], Y.shape[2]))


@jit
def _gru_forward_residuals(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """(Y (n, T, hidden), R = (gates, Bn, P)) for every time."""
    Y, gates, Bn, P = _gru_run(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences, np.bool_(True))
    return Y, (as_readonly(gates), as_readonly(Bn), as_readonly(P))


@jit
def _gru_forward_residuals_final(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """(Y (n, hidden), R = (gates, Bn, P))."""
    Y, gates, Bn, P = _gru_run(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences, np.bool_(True))
    return Y.reshape((Y.shape[0], Y.shape[2])), (as_readonly(gates), as_readonly(Bn), as_readonly(P))


@jit
def _gru_grad_input(X, dY, R, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """dX (n, T, input) from the sweep;  dY (n, T, hidden)."""
    dA, _ = _gru_sweep(dY, R, W_hh, reverse, return_sequences)
    return _input_gradient(X, dA, W_ih)


@jit
def _gru_grad_input_final(X, dY, R, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """dX (n, T, input) from the sweep;  dY (n, hidden)."""
    dA, _ = _gru_sweep(dY.reshape((dY.shape[0], 1, dY.shape[1])), R, W_hh, reverse, return_sequences)
    return _input_gradient(X, dA, W_ih)


@jit
def _gru_grad_params(X, dY, R, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """The parameters' gradients from the sweep;  dY (n, T, hidden)."""
    dA, dB = _gru_sweep(dY, R, W_hh, reverse, return_sequences)
    return _parameter_gradients(X, dA, dB, R[2])


@jit
def _gru_grad_params_final(X, dY, R, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """The parameters' gradients from the sweep;  dY (n, hidden)."""
    dA, dB = _gru_sweep(dY.reshape((dY.shape[0], 1, dY.shape[1])), R, W_hh, reverse, return_sequences)
    return _parameter_gradients(X, dA, dB, R[2])


@jit
def _gru_gradients(X, dY, R, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """(dX, parameters' gradients) from one sweep;  dY (n, T, hidden)."""
    dA, dB = _gru_sweep(dY, R, W_hh, reverse, return_sequences)
    return _input_gradient(X, dA, W_ih), _parameter_gradients(X, dA, dB, R[2])


@jit
def _gru_gradients_final(X, dY, R, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """(dX, parameters' gradients) from one sweep;  dY (n, hidden)."""
    dA, dB = _gru_sweep(dY.reshape((dY.shape[0], 1, dY.shape[1])), R, W_hh, reverse, return_sequences)
    return _input_gradient(X, dA, W_ih), _parameter_gradients(X, dA, dB, R[2])


# --------------------------------------------------------------------------- LSTM
@jit
def _lstm_run(X, W_ih, W_hh, b_ih, b_hh, reverse, sequences, keep):
    """The LSTM step by step;  -> (Y (n, T or 1, hidden), gates (4 hidden, T, n): i, f, g, o
    after their nonlinearities, Cp (hidden, T, n): the cell before each time, Tc (hidden, T,
    n): tanh of the cell after it, P (hidden + 1, T, n): the state before it, then ones),
    the last four for every time with ``keep``."""
    n, T = X.shape[0], X.shape[1]
    hidden = W_hh.shape[1]
    A = _input_projection(X, W_ih, b_ih)
    slots = T if keep else 1
    gates = np.empty((4 * hidden, slots, n), X.dtype)
    Cp = np.empty((hidden, slots, n), X.dtype)
    Tc = np.empty((hidden, slots, n), X.dtype)
    P = _states_over_ones(X, hidden, slots)
    Y = np.empty((n, T if sequences else 1, hidden), X.dtype)
    h, h_next = np.zeros((hidden, n), X.dtype), np.empty((hidden, n), X.dtype)
    cell, cell_next = np.zeros((hidden, n), X.dtype), np.empty((hidden, n), X.dtype)
    B = np.empty((4 * hidden, n), X.dtype)
    for s in range(T):
        t = _time(s, T, reverse)
        k = t if keep else 0
        matmul_into(W_hh, h, B)
        # each loop reads and writes few arrays, so that LLVM can check them apart and vectorize it
        for row in range(4 * hidden):  # i, f, g, o
            bias = b_hh[row]
            if 2 * hidden <= row < 3 * hidden:
                for i in range(n):
                    gates[row, k, i] = tanh(A[row, t, i] + (B[row, i] + bias))
            else:
                for i in range(n):
                    gates[row, k, i] = sigmoid(A[row, t, i] + (B[row, i] + bias))
        for j in range(hidden):  # c' = f c + i g
            for i in range(n):
                cell_next[j, i] = gates[hidden + j, k, i] * cell[j, i] + gates[j, k, i] * gates[2 * hidden + j, k, i]
        for j in range(hidden):
            for i in range(n):
                Tc[j, k, i] = tanh(cell_next[j, i])
        for j in range(hidden):  # h' = o tanh(c')
            for i in range(n):
                Cp[j, k, i], P[j, k, i] = cell[j, i], h[j, i]
                h_next[j, i] = gates[3 * hidden + j, k, i] * Tc[j, k, i]
        if sequences or s == T - 1:
            _write_output(Y, h_next, t, sequences)
        h, h_next = h_next, h
        cell, cell_next = cell_next, cell
    return Y, gates, Cp, Tc, P


@jit
def _lstm_sweep(dY, R, W_hh, reverse, sequences):
    """The backward sweep: the pre-activations' gradients dA = dB (4 hidden, T, n), by time;
    dY (n, T or 1, hidden)."""
    gates, Cp, Tc, P = R
    hidden, T, n = Tc.shape
    one = np.ones(1, Tc.dtype)[0]
    dY_t = _output_gradient_by_time(dY, T, reverse, sequences)
    dA = np.empty((4 * hidden, T, n), Tc.dtype)
    step = np.empty((4 * hidden, n), Tc.dtype)  # this step's dB, contiguous for the product
    grad = np.empty((hidden, n), Tc.dtype)  # the gradient of this step's new state
    dh = np.zeros((hidden, n), Tc.dtype)  # through W_hh, from the next step
    dc = np.zeros((hidden, n), Tc.dtype)  # of the cell: from the next step, then of this step's
    for s in range(T - 1, -1, -1):
        t = _time(s, T, reverse)
        # each loop reads and writes few arrays, so that LLVM can check them apart and vectorize it
        for j in range(hidden):
            for i in range(n):
                grad[j, i] = dh[j, i] + dY_t[j, t, i]
        for j in range(hidden):  # the new cell's gradient, and o
            for i in range(n):
                d, tc, o = grad[j, i], Tc[j, t, i], gates[3 * hidden + j, t, i]
                dc[j, i] = dc[j, i] + d * o * (one - tc * tc)
                step[3 * hidden + j, i] = d * tc * (o * (one - o))
        for j in range(hidden):  # i and g
            for i in range(n):
                ig, gg = gates[j, t, i], gates[2 * hidden + j, t, i]
                step[j, i] = dc[j, i] * gg * (ig * (one - ig))
                step[2 * hidden + j, i] = dc[j, i] * ig * (one - gg * gg)
        for j in range(hidden):  # f, and the old cell's gradient
            for i in range(n):
                fg = gates[hidden + j, t, i]
                step[hidden + j, i] = dc[j, i] * Cp[j, t, i] * (fg * (one - fg))
                dc[j, i] = dc[j, i] * fg
        for row in range(4 * hidden):
            for i in range(n):
                dA[row, t, i] = step[row, i]
        if s > 0:
            matmul_into(W_hh.T, step, dh)
    return dA, dA


@jit
def _lstm_forward(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """Y (n, T, hidden): the state after each time."""
    return _lstm_run(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences, np.bool_(False))[0]


@jit
def _lstm_forward_final(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """Y (n, hidden): the state after the last step (PyTorch's h_n, not c_n)."""
    Y = _lstm_run(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences, np.bool_(False))[0]
    return Y.reshape((Y.shape[0], Y.shape[2]))


@jit
def _lstm_forward_residuals(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """(Y (n, T, hidden), R = (gates, Cp, Tc, P)) for every time."""
    Y, gates, Cp, Tc, P = _lstm_run(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences, np.bool_(True))
    return Y, (as_readonly(gates), as_readonly(Cp), as_readonly(Tc), as_readonly(P))


@jit
def _lstm_forward_residuals_final(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """(Y (n, hidden), R = (gates, Cp, Tc, P))."""
    Y, gates, Cp, Tc, P = _lstm_run(X, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences, np.bool_(True))
    return Y.reshape((Y.shape[0], Y.shape[2])), (as_readonly(gates), as_readonly(Cp), as_readonly(Tc), as_readonly(P))


@jit
def _lstm_grad_input(X, dY, R, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """dX (n, T, input) from the sweep;  dY (n, T, hidden)."""
    dA, _ = _lstm_sweep(dY, R, W_hh, reverse, return_sequences)
    return _input_gradient(X, dA, W_ih)


@jit
def _lstm_grad_input_final(X, dY, R, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """dX (n, T, input) from the sweep;  dY (n, hidden)."""
    dA, _ = _lstm_sweep(dY.reshape((dY.shape[0], 1, dY.shape[1])), R, W_hh, reverse, return_sequences)
    return _input_gradient(X, dA, W_ih)


@jit
def _lstm_grad_params(X, dY, R, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """The parameters' gradients from the sweep;  dY (n, T, hidden)."""
    dA, dB = _lstm_sweep(dY, R, W_hh, reverse, return_sequences)
    return _parameter_gradients(X, dA, dB, R[3])


@jit
def _lstm_grad_params_final(X, dY, R, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """The parameters' gradients from the sweep;  dY (n, hidden)."""
    dA, dB = _lstm_sweep(dY.reshape((dY.shape[0], 1, dY.shape[1])), R, W_hh, reverse, return_sequences)
    return _parameter_gradients(X, dA, dB, R[3])


@jit
def _lstm_gradients(X, dY, R, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """(dX, parameters' gradients) from one sweep;  dY (n, T, hidden)."""
    dA, dB = _lstm_sweep(dY, R, W_hh, reverse, return_sequences)
    return _input_gradient(X, dA, W_ih), _parameter_gradients(X, dA, dB, R[3])


@jit
def _lstm_gradients_final(X, dY, R, W_ih, W_hh, b_ih, b_hh, reverse, return_sequences):
    """(dX, parameters' gradients) from one sweep;  dY (n, hidden)."""
    dA, dB = _lstm_sweep(dY.reshape((dY.shape[0], 1, dY.shape[1])), R, W_hh, reverse, return_sequences)
    return _input_gradient(X, dA, W_ih), _parameter_gradients(X, dA, dB, R[3])


# --------------------------------------------------------------------------- the layers
class _PerOutputRank:
    """The ``kernels`` of a layer whose output's rank depends on ``return_sequences``: an
    instance gets the set for its rank; the class itself, the sequence-output set."""

    def __init__(self, sets: tuple[Kernels, Kernels]) -> None:
        self.sequences, self.final = sets

    def __get__(self, instance: Any, owner: type) -> Kernels:
        if instance is None or instance.return_sequences:
            return self.sequences
        return self.final


def _kernel_sets(*kernels: Any) -> tuple[Kernels, Kernels]:
    """The kernel sets for sequence output and for the last state, from ten kernels: the
    forward, residual forward, grad_input, grad_params and gradients kernels, each as
    (sequences, last state)."""
    forward, residual, grad_input, grad_params, gradients = (kernels[2 * k : 2 * k + 2] for k in range(5))
    sequences, final = (
        Kernels(forward[which], residuals=Residuals(residual[which], grad_input[which], grad_params[which], gradients=gradients[which]))
        for which in range(2)
    )
    return sequences, final


def _flag(who: str, name: str) -> Any:
    return validate.converter(validate.flag, who, name)


class _Recurrent(Layer):
    """What RNN, GRU and LSTM share: PyTorch's parameters, the shape rule, ``init``."""

    __slots__ = ()
    #: the number of gate blocks stacked in the weights (1, 3, 4)
    gates: ClassVar[int]
    #: the kernels for sequence output and for the last state; ``kernels`` picks one per instance
    kernel_sets: ClassVar[tuple[Kernels, Kernels]]

    @classmethod
    def init(
        cls, key: random.Key, input_size: int, hidden_size: int, *, bidirectional: bool = False,
        return_sequences: bool = True, dtype: Any = np.float32,
    ) -> Any:
        """A new layer with PyTorch's default initialization: every parameter uniform in
        ``[-1/sqrt(hidden_size), 1/sqrt(hidden_size))``. With ``bidirectional``, a
        :class:`Bidirectional` of a forward and a reverse layer, the forward one's parameters
        drawn first (the same as ``init`` without ``bidirectional`` gives)."""
        who = f"{cls.__name__}.init"
        input_size = validate.positive_int(input_size, who, "input_size")
        hidden_size = validate.positive_int(hidden_size, who, "hidden_size")
        bidirectional = validate.flag(bidirectional, who, "bidirectional")
        return_sequences = validate.flag(return_sequences, who, "return_sequences")
        dtype = check_float_dtype(dtype, who)
        keys = random.split(key, 8 if bidirectional else 4)
        width, limit = cls.gates * hidden_size, 1.0 / math.sqrt(hidden_size)
        shapes = ((width, input_size), (width, hidden_size), (width,), (width,))

        def direction(keys: tuple[random.Key, ...], reverse: bool) -> _Recurrent:
            arrays = [random.uniform(k, shape, -limit, limit, dtype=dtype) for k, shape in zip(keys, shapes)]
            return cls(*arrays, reverse=reverse, return_sequences=return_sequences)

        forward = direction(keys[:4], False)
        return Bidirectional(forward, direction(keys[4:], True)) if bidirectional else forward

    @property
    def input_size(self) -> int:
        return self.weight_ih.shape[1]

    @property
    def hidden_size(self) -> int:
        return self.weight_hh.shape[1]

    def check_params(self) -> None:
        name, G = type(self).__name__, self.gates
        W_ih, W_hh = self.weight_ih, self.weight_hh
        width = W_hh.shape[0] if W_hh.ndim == 2 else -1
        if (
            W_hh.ndim != 2 or W_hh.shape[1] < 1 or width != G * W_hh.shape[1]
            or W_ih.ndim != 2 or W_ih.shape[1] < 1 or W_ih.shape[0] != width
            or self.bias_ih.shape != (width,) or self.bias_hh.shape != (width,)
        ):
            blocks = f"{G} hidden" if G > 1 else "hidden"
            raise ValueError(
                f"{name}: weight_ih must have shape ({blocks}, input_size), weight_hh ({blocks}, hidden), bias_ih and "
                f"bias_hh ({blocks},) with positive sizes, got weight_ih {W_ih.shape}, weight_hh {W_hh.shape}, "
                f"bias_ih {self.bias_ih.shape} and bias_hh {self.bias_hh.shape}"
            )

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(input_shape)
        if len(shape) != 2 or shape[1] != self.input_size:
            raise ValueError(
                f"expects per-example input of shape (sequence length, {self.input_size}), a batch (n, T, {self.input_size}), "
                f"got per-example shape {shape}"
            )
        if shape[0] < 1:
            raise ValueError(f"expects sequences of at least one step, got per-example shape {shape}")
        return (shape[0], self.hidden_size) if self.return_sequences else (self.hidden_size,)

    def label(self) -> str:
        """The class name with the short configuration that :func:`jitnn.summary` shows."""
        options = (", reverse" if self.reverse else "") + ("" if self.return_sequences else ", last state")
        return f"{type(self).__name__}({self.input_size} -> {self.hidden_size}{options})"


@layer
class RNN(_Recurrent):
    """Elman recurrent layer with tanh, ``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)``: one
    direction of PyTorch's ``torch.nn.RNN(batch_first=True)`` (one layer, tanh).

    Parameters
    ----------
    weight_ih : array (hidden, input_size)
    weight_hh : array (hidden, hidden)
    bias_ih, bias_hh : array (hidden,)
    reverse : bool
        Read the sequence from its end (the reverse direction of a bidirectional layer).
    return_sequences : bool
        Output the state after every step, ``(n, T, hidden)``; else the last one, ``(n, hidden)``.
    """

    weight_ih: Array = param()
    weight_hh: Array = param()
    bias_ih: Array = param()
    bias_hh: Array = param()
    reverse: bool = attrs.field(default=False, converter=_flag("RNN", "reverse"))
    return_sequences: bool = attrs.field(default=True, converter=_flag("RNN", "return_sequences"))

    gates = 1
    kernel_sets = _kernel_sets(
        _rnn_forward, _rnn_forward_final, _rnn_forward_residuals, _rnn_forward_residuals_final,
        _rnn_grad_input, _rnn_grad_input_final, _rnn_grad_params, _rnn_grad_params_final, _rnn_gradients, _rnn_gradients_final,
    )
    kernels = _PerOutputRank(kernel_sets)


@layer
class GRU(_Recurrent):
    """Gated recurrent unit: one direction of PyTorch's ``torch.nn.GRU(batch_first=True)``
    (one layer), gates ``r, z, n`` in that order::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    Parameters
    ----------
    weight_ih : array (3 hidden, input_size)
    weight_hh : array (3 hidden, hidden)
    bias_ih, bias_hh : array (3 hidden,)
    reverse, return_sequences : bool
        As for :class:`RNN`.
    """

    weight_ih: Array = param()
    weight_hh: Array = param()
    bias_ih: Array = param()
    bias_hh: Array = param()
    reverse: bool = attrs.field(default=False, converter=_flag("GRU", "reverse"))
    return_sequences: bool = attrs.field(default=True, converter=_flag("GRU", "return_sequences"))

    gates = 3
    kernel_sets = _kernel_sets(
        _gru_forward, _gru_forward_final, _gru_forward_residuals, _gru_forward_residuals_final,
        _gru_grad_input, _gru_grad_input_final, _gru_grad_params, _gru_grad_params_final, _gru_gradients, _gru_gradients_final,
    )
    kernels = _PerOutputRank(kernel_sets)


@layer
class LSTM(_Recurrent):
    """Long short-term memory: one direction of PyTorch's ``torch.nn.LSTM(batch_first=True)``
    (one layer, no projection), gates ``i, f, g, o`` in that order::

        i, f, o = sigmoid(W_i* x + b_i* + W_h* h + b_h*)
        g = tanh(W_ig x + b_ig + W_hg h + b_hg)
        c' = f * c + i * g,  h' = o * tanh(c')

    The output is the state ``h`` (PyTorch's output and ``h_n``); the cell stays inside.

    Parameters
    ----------
    weight_ih : array (4 hidden, input_size)
    weight_hh : array (4 hidden, hidden)
    bias_ih, bias_hh : array (4 hidden,)
    reverse, return_sequences : bool
        As for :class:`RNN`.
    """

    weight_ih: Array = param()
    weight_hh: Array = param()
    bias_ih: Array = param()
    bias_hh: Array = param()
    reverse: bool = attrs.field(default=False, converter=_flag("LSTM", "reverse"))
    return_sequences: bool = attrs.field(default=True, converter=_flag("LSTM", "return_sequences"))

    gates = 4
    kernel_sets = _kernel_sets(
        _lstm_forward, _lstm_forward_final, _lstm_forward_residuals, _lstm_forward_residuals_final,
        _lstm_grad_input, _lstm_grad_input_final, _lstm_grad_params, _lstm_grad_params_final, _lstm_gradients, _lstm_gradients_final,
    )
    kernels = _PerOutputRank(kernel_sets)


# --------------------------------------------------------------------------- both directions
def _check_direction(reverse: bool) -> Any:
    field = "reverse_layer" if reverse else "forward_layer"

    def check(record: Any, attribute: Any, value: Any) -> None:
        if not isinstance(value, _Recurrent):
            raise TypeError(f"Bidirectional: {field} must be an RNN, GRU or LSTM layer, got {type(value).__name__}")
        if value.reverse is not reverse:
            raise ValueError(f"Bidirectional: {field} must have reverse={reverse}, got reverse={value.reverse}")

    return check


_SUFFIX = "_reverse"


@layer
class Bidirectional(Composite):
    """A forward and a reverse recurrent layer over the same sequences, their outputs joined
    along the features: ``(n, T, 2 hidden)`` with ``return_sequences`` (at each ``t``, the
    forward layer's state after reading ``t``, then the reverse layer's), else ``(n, 2
    hidden)``: the forward layer's last state, then the reverse layer's after it has read
    ``t = 0`` (PyTorch's ``h_n`` of the two directions, side by side).

    ``GRU.init(key, input_size, hidden, bidirectional=True)`` (and ``RNN``'s, ``LSTM``'s) makes
    one. From a PyTorch module ``m = torch.nn.GRU(..., bidirectional=True, batch_first=True)``
    (one layer), the parameters map as::

        m.weight_ih_l0          -> bi.weight_ih          (bi.forward_layer.weight_ih)
        m.weight_hh_l0          -> bi.weight_hh          ...
        m.bias_ih_l0, m.bias_hh_l0 -> bi.bias_ih, bi.bias_hh
        m.weight_ih_l0_reverse  -> bi.weight_ih_reverse  (bi.reverse_layer.weight_ih)
        ... and so on for weight_hh, bias_ih and bias_hh

    so a model is built from one with ``jn.Bidirectional(jn.GRU(weight_ih=..., ...),
    jn.GRU(weight_ih=..., ..., reverse=True))``. The names without a suffix and with
    ``_reverse`` are read-only properties, for any parameter of the members.
    """

    forward_layer: Layer = attrs.field(validator=_check_direction(False))
    reverse_layer: Layer = attrs.field(validator=_check_direction(True))

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        ahead, back = self.forward_layer, self.reverse_layer
        if ahead.input_size != back.input_size:
            raise ValueError(f"Bidirectional: the two layers must share one input size, got {ahead.input_size} and {back.input_size}")
        if ahead.return_sequences != back.return_sequences:
            raise ValueError(
                f"Bidirectional: the two layers must agree on return_sequences, got {ahead.return_sequences} and {back.return_sequences}"
            )
        if ahead.dtype != back.dtype:
            raise TypeError(f"Bidirectional: the two layers' parameters must share one dtype, got {ahead.dtype} and {back.dtype}")

    def __getattr__(self, name: str) -> Any:
        """PyTorch's names: ``weight_ih`` is the forward layer's, ``weight_ih_reverse`` the
        reverse layer's (any name in a member's ``param_names``)."""
        if not name.startswith("_"):
            reverse = name.endswith(_SUFFIX)
            base = name[: -len(_SUFFIX)] if reverse else name
            try:
                member = object.__getattribute__(self, "reverse_layer" if reverse else "forward_layer")
            except AttributeError:  # not yet set (while unpickling)
                member = None
            if member is not None and base in type(member).param_names:
                return getattr(member, base)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def return_sequences(self) -> bool:
        return self.forward_layer.return_sequences

    def lower(self, plan: Any, x: Any) -> Any:
        return plan.concat([plan.apply(self.forward_layer, x), plan.apply(self.reverse_layer, x)], axis=-1)

    def label(self) -> str:
        """The class name with the short configuration that :func:`jitnn.summary` shows."""
        ahead, back = self.forward_layer, self.reverse_layer
        kind = type(ahead).__name__ if type(back) is type(ahead) else f"{type(ahead).__name__} + {type(back).__name__}"
        width = f"2 x {ahead.hidden_size}" if back.hidden_size == ahead.hidden_size else f"{ahead.hidden_size} + {back.hidden_size}"
        options = "" if ahead.return_sequences else ", last state"
        return f"{type(self).__name__}({kind}, {ahead.input_size} -> {width}{options})"
