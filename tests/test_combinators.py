"""Residual, Concatenate (Parallel), Add and LayerNorm beyond the conformance contract:
their structure, shape rules, errors and agreement with plain NumPy."""

from __future__ import annotations

import numpy as np
import pytest

import jitnn as jn
import tolerances
from jitnn.combinators import Add, Concatenate, Parallel, Residual
from jitnn.layers.normalization import LayerNorm


def dense(rng: np.random.Generator, n_in: int, n_out: int, dtype=np.float64) -> jn.Dense:
    return jn.Dense(W=rng.normal(size=(n_in, n_out)).astype(dtype), b=rng.normal(size=n_out).astype(dtype))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_residual_adds_the_input(rng):
    inner = jn.pipe(dense(rng, 4, 6), jn.Tanh(), dense(rng, 6, 4))
    X = rng.normal(size=(5, 4))
    np.testing.assert_array_equal(Residual(inner).forward(X), X + inner.forward(X))  # the same kernels, then the same sum


def test_residual_gradients_are_the_inner_ones_plus_identity(rng):
    inner = jn.pipe(dense(rng, 4, 6), jn.Tanh(), dense(rng, 6, 4))
    X, dY = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    model = Residual(inner)
    np.testing.assert_array_equal(model.grad_input(X, dY), dY + inner.grad_input(X, dY))
    grads = model.grad_params(X, dY)
    assert type(grads) is Residual and type(grads.inner) is jn.Chain
    for got, expected in zip(jn.tree.leaves(grads), jn.tree.leaves(inner.grad_params(X, dY))):
        np.testing.assert_array_equal(got, expected)


def test_concatenate_joins_branch_outputs_on_the_feature_axis(rng):
    a, b = dense(rng, 4, 2), jn.pipe(dense(rng, 4, 3), jn.Sigmoid())
    X = rng.normal(size=(5, 4))
    model = Concatenate((a, b))
    np.testing.assert_array_equal(model.forward(X), np.concatenate([a.forward(X), b.forward(X)], axis=1))
    assert model.output_shape((4,)) == (5,)
    assert Parallel is Concatenate


def test_concatenate_splits_the_output_gradient_among_branches(rng):
    a, b = dense(rng, 4, 2), dense(rng, 4, 3)
    X, dY = rng.normal(size=(5, 4)), rng.normal(size=(5, 5))
    model = Concatenate((a, b))
    # each branch gets its part of dY as a C-ordered copy (as the layers convert their input),
    # and the branches' input gradients are added in order: the same bits
    expected_dX = a.grad_input(X, dY[:, :2]) + b.grad_input(X, dY[:, 2:])
    np.testing.assert_array_equal(model.grad_input(X, dY), expected_dX)
    grads = model.grad_params(X, dY)
    np.testing.assert_array_equal(grads.branches[1].W, b.grad_params(X, dY[:, 2:]).W)


def test_concatenate_along_another_axis(rng):
    X = rng.normal(size=(2, 3, 4))
    model = Concatenate((jn.Identity(), jn.Tanh()), axis=-1)
    # the identity is exact; jitnn's tanh and NumPy's are each within tolerances.LIBRARY
    # roundings of the exact value
    expected = np.concatenate([X, np.tanh(X)], axis=2)
    bound = np.concatenate([np.zeros_like(X), 2 * tolerances.LIBRARY * tolerances.unit_roundoff(np.float64) * np.abs(np.tanh(X))], axis=2)
    tolerances.assert_within(model.forward(X), expected, bound)
    jn.testing.check_grads(model, X)


def test_add_sums_branch_outputs(rng):
    a, b = dense(rng, 4, 3), jn.pipe(dense(rng, 4, 3), jn.Tanh())
    X, dY = rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
    model = Add((a, b))
    np.testing.assert_array_equal(model.forward(X), a.forward(X) + b.forward(X))  # the same kernels, added in order
    np.testing.assert_array_equal(model.grad_input(X, dY), a.grad_input(X, dY) + b.grad_input(X, dY))


@pytest.mark.parametrize(
    "model",
    [
        lambda r: Residual(jn.pipe(dense(r, 3, 5), jn.GELU(), dense(r, 5, 3))),
        lambda r: Concatenate((dense(r, 3, 2), jn.pipe(dense(r, 3, 4), jn.Tanh()), jn.Identity())),
        lambda r: Add((dense(r, 3, 2), jn.pipe(dense(r, 3, 2), jn.Sigmoid()))),
        lambda r: jn.pipe(dense(r, 3, 4), Residual(Add((jn.Tanh(), dense(r, 4, 4)))), LayerNorm(scale=r.normal(size=4), shift=r.normal(size=4))),
    ],
    ids=["residual", "concatenate", "add", "nested"],
)
def test_combinators_pass_the_gradient_check_and_train(rng, model):
    model = model(rng)
    X = rng.normal(size=(6, 3))
    jn.testing.check_grads(model, X)
    T = rng.integers(0, model.output_shape((3,))[0], size=6)
    result = jn.fit(model, jn.SoftmaxCrossEntropy(), jn.optim.adam(1e-2), X, T, key=jn.random.key(0), epochs=30, batch_size=6)
    assert result.history[-1] < result.history[0]


def test_errors_name_the_position_inside_combinators(rng):
    model = jn.pipe(jn.Tanh(), Concatenate((jn.Identity(), jn.pipe(jn.ReLU(), dense(rng, 4, 2)))))
    with pytest.raises(ValueError, match=r"Dense at model\.layers\[1\]\.branches\[1\]\.layers\[1\].*\(5,\)"):
        model.forward(np.ones((2, 5)))


def test_residual_refuses_a_shape_changing_inner_layer(rng):
    with pytest.raises(ValueError, match=r"Residual.*\(4,\).*\(5,\)"):
        Residual(dense(rng, 4, 5))
    with pytest.raises(TypeError):
        Residual("not a layer")


def test_branch_combinators_refuse_bad_branches(rng):
    with pytest.raises(ValueError, match="different input shapes"):
        Concatenate((dense(rng, 4, 2), dense(rng, 5, 2)))
    with pytest.raises(ValueError, match="at least two"):
        Add((dense(rng, 4, 2),))
    with pytest.raises(ValueError, match="one shape"):
        Add((dense(rng, 4, 2), dense(rng, 4, 3)))
    with pytest.raises(TypeError, match="dtype"):
        Add((dense(rng, 4, 2), dense(rng, 4, 2, np.float32)))
    with pytest.raises(TypeError, match="not a jitnn layer"):
        Concatenate((dense(rng, 4, 2), np.ones(3)))
    with pytest.raises(ValueError, match="axis"):
        Concatenate((jn.Identity(), jn.Identity()), axis=2).output_shape((3,))


def test_combinator_gradient_records_work_with_optimizers(rng):
    model = Concatenate((dense(rng, 3, 2), Residual(jn.pipe(dense(rng, 3, 3), jn.Tanh()))))
    X, T = rng.normal(size=(4, 3)), np.array([0, 1, 4, 2])
    value, grads = jn.value_and_grad(model, jn.SoftmaxCrossEntropy(), X, T)
    opt = jn.optim.momentum(0.1)
    new_model, state = opt.update(model, grads, opt.init(model))
    assert type(new_model) is Concatenate and type(new_model.branches[1]) is Residual
    assert [p for p, _ in jn.tree.leaves_with_paths(state)][1:3] == ["velocity.branches.0.W", "velocity.branches.0.b"]


# --------------------------------------------------------------------------- LayerNorm
def layer_norm_reference(X, scale, shift, eps=1e-5):
    mean = X.mean(axis=-1, keepdims=True)
    variance = X.var(axis=-1, keepdims=True)
    return (X - mean) / np.sqrt(variance + eps) * scale + shift


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_matches_numpy(rng, dtype):
    layer = LayerNorm(scale=rng.normal(size=5).astype(dtype), shift=rng.normal(size=5).astype(dtype))
    X = rng.normal(size=(3, 2, 5)).astype(dtype)
    Y = layer.forward(X)
    assert Y.dtype == dtype
    expected = layer_norm_reference(X.astype(np.float64), layer.scale.astype(np.float64), layer.shift.astype(np.float64))
    # the reference's formula is reference.LayerNorm's: the roundings of tolerances._LayerNorm
    eY, _, _ = tolerances.reference_bounds(layer, X, np.zeros_like(Y), dtype)
    tolerances.assert_within(Y, expected, eY)


def test_layer_norm_gradients(rng):
    layer = LayerNorm(scale=rng.normal(size=4), shift=rng.normal(size=4), eps=1e-3)
    jn.testing.check_grads(layer, rng.normal(size=(3, 4)))
    jn.testing.check_grads(layer, rng.normal(size=(2, 3, 4)))


def test_layer_norm_init_and_errors():
    layer = LayerNorm.init(jn.random.key(0), 6, dtype=np.float64)
    assert layer.scale.dtype == np.float64 and np.all(layer.scale == 1) and np.all(layer.shift == 0)
    with pytest.raises(ValueError, match=r"LayerNorm.*\(\.\.\., 6\).*\(4,\)"):
        layer.forward(np.ones((2, 4)))
    with pytest.raises(ValueError, match="features"):
        LayerNorm.init(None, 0)
    with pytest.raises(ValueError, match="eps"):
        LayerNorm.init(None, 3, eps=0.0)
    with pytest.raises(ValueError, match="scale and shift"):
        LayerNorm(scale=np.ones(3), shift=np.ones(4))


def test_layer_norm_agrees_with_pytorch(rng):
    torch = pytest.importorskip("torch")
    layer = LayerNorm(scale=rng.normal(size=4), shift=rng.normal(size=4))
    X, dY = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    reference = torch.nn.LayerNorm(4).double()
    reference.weight.data, reference.bias.data = torch.tensor(layer.scale.copy()), torch.tensor(layer.shift.copy())
    inputs = torch.tensor(X, requires_grad=True)
    output = reference(inputs)
    output.backward(torch.tensor(dY))
    eY, edX, (e_scale, e_shift) = layer_norm_torch_bounds(layer, X, dY)
    tolerances.assert_within(layer.forward(X), output.detach().numpy(), eY, "forward")
    tolerances.assert_within(layer.grad_input(X, dY), inputs.grad.numpy(), edX, "grad_input")
    grads = layer.grad_params(X, dY)
    tolerances.assert_within(grads.scale, reference.weight.grad.numpy(), e_scale, "scale")
    tolerances.assert_within(grads.shift, reference.bias.grad.numpy(), e_shift, "shift")


def layer_norm_torch_bounds(layer: LayerNorm, X: np.ndarray, dY: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """How far jitnn's float64 LayerNorm and PyTorch's may be apart. jitnn's side is
    tolerances._LayerNorm's bound. PyTorch's CPU kernel works from ``x`` itself rather than
    ``x - mean``: ``y = (x rstd - mean rstd) scale + shift``, and ``dx = rstd g + b x + c`` with
    ``b = (mean sum(g) - sum(g x)) rstd**3 / k`` and ``c = -b mean - sum(g) rstd / k`` (``g = dy
    scale``). Its roundings are counted against those magnitudes, with ``|x| + |mean|`` where
    ``|x - mean|`` stood: ``gamma(k + 6)`` of each (the statistics are bounded as jitnn's are)."""
    _, eY, ours = tolerances.layer_bounds(layer, X, dY, np.float64)
    k = X.shape[-1]
    spread = np.abs(X) + np.abs(X.mean(axis=-1, keepdims=True))
    rstd = 1 / np.sqrt(X.var(axis=-1, keepdims=True) + layer.eps)
    g = np.abs(dY * layer.scale)
    c = tolerances.gamma(k + 6, np.float64)
    their_Y = eY + c * (spread * rstd * np.abs(layer.scale) + np.abs(layer.shift))
    b = (spread * g).sum(axis=-1, keepdims=True) * rstd**3 / k
    their_dX = ours.edX + c * (rstd * g + b * spread + g.sum(axis=-1, keepdims=True) * rstd / k)
    return eY + their_Y, ours.edX + their_dX, [2 * e for e in ours.egrads]
