"""``jn.testing.jacobian`` of the sequence layers against central differences, in float64.

The table's example of each layer (``tests/layer_examples.py``) at its first example: the
Jacobian built from ``grad_input`` / ``grad_params`` products must match the one built from
the forward pass alone, ``(f(x + h e_j) - f(x - h e_j)) / 2h``. Central differences err by
``h^2 f''' / 6`` (truncation; the layers' inputs are O(1), their derivatives O(1) to a few)
plus ``u |f| / h`` (rounding): with ``h = 1e-5`` both are below 1e-9, and the bound 1e-6
leaves room for derivatives up to a few hundred. A wrong gradient misses by O(1).
"""

from __future__ import annotations

import attrs
import numpy as np
import pytest
from layer_examples import LAYER_EXAMPLES

import jitnn as jn

SEQUENCE_LAYERS = [
    jn.Conv1D, jn.MaxPool1D, jn.AvgPool1D, jn.GlobalAvgPool, jn.RNN, jn.GRU, jn.LSTM, jn.Bidirectional,
    jn.MultiHeadAttention, jn.PositionalEmbedding,
]
H = 1e-5
BOUND = 1e-6


def _example(cls: type) -> tuple[jn.Layer, np.ndarray]:
    layer, X = LAYER_EXAMPLES[cls].make(np.float64, np.random.default_rng(3))
    return layer, np.asarray(X[0], np.float64)


@pytest.mark.parametrize("cls", SEQUENCE_LAYERS, ids=lambda cls: cls.__name__)
def test_input_jacobian_matches_central_differences(cls: type) -> None:
    layer, x = _example(cls)
    J = jn.testing.jacobian(layer, x)
    f = lambda v: layer.forward(v[np.newaxis])[0]
    out_shape = f(x).shape
    assert J.shape == out_shape + x.shape
    numeric = np.empty((int(np.prod(out_shape)), x.size))
    for j in range(x.size):
        step = np.zeros(x.size)
        step[j] = H
        step = step.reshape(x.shape)
        numeric[:, j] = ((f(x + step) - f(x - step)) / (2 * H)).reshape(-1)
    np.testing.assert_allclose(J.reshape(numeric.shape), numeric, rtol=0, atol=BOUND)


@pytest.mark.parametrize("cls", [jn.Conv1D, jn.GRU, jn.LSTM, jn.MultiHeadAttention, jn.PositionalEmbedding], ids=lambda cls: cls.__name__)
def test_parameter_jacobian_matches_central_differences(cls: type) -> None:
    layer, x = _example(cls)
    J = jn.testing.jacobian(layer, x, wrt="params")
    X = x[np.newaxis]
    for (path, value), name in zip(jn.tree.leaves_with_paths(layer, trainable=True), layer.param_names):
        base = np.array(value)
        numeric = []
        for j in range(base.size):
            changed = []
            for sign in (1, -1):
                w = base.copy().reshape(-1)
                w[j] += sign * H
                changed.append(attrs.evolve(layer, **{name: w.reshape(base.shape)}).forward(X)[0])
            numeric.append(((changed[0] - changed[1]) / (2 * H)).reshape(-1))
        numeric = np.stack(numeric, axis=1)
        np.testing.assert_allclose(J[path].reshape(numeric.shape), numeric, rtol=0, atol=BOUND, err_msg=path)
