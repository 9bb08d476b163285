"""Layers that depend on the pass's mode and key (Dropout, BatchNorm), and Embedding:
their behaviour in training and evaluation, against NumPy and (when installed) PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

import jitnn as jn
import tolerances


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


def batch_norm(rng: np.random.Generator, features: int, dtype=np.float64, momentum: float = 0.1) -> jn.BatchNorm:
    return jn.BatchNorm(
        scale=rng.normal(size=features).astype(dtype),
        shift=rng.normal(size=features).astype(dtype),
        running_mean=rng.normal(size=features).astype(dtype),
        running_var=rng.uniform(0.5, 2.0, size=features).astype(dtype),
        momentum=momentum,
    )


# --------------------------------------------------------------------------- the pass's context
def test_passes_check_mode_and_key(rng):
    model = jn.Dropout(0.5)
    with pytest.raises(TypeError, match="training"):
        jn.forward(model, np.ones((2, 3)), training="yes")
    with pytest.raises(TypeError, match="key"):
        jn.forward(model, np.ones((2, 3)), training=True, key=0)
    with pytest.raises(ValueError, match="Dropout needs a random key"):
        jn.forward(model, np.ones((2, 3)), training=True)


def test_fold_in_is_deterministic_and_separates_data():
    key = jn.random.key(3)
    assert jn.random.fold_in(key, ".layers[1]") == jn.random.fold_in(key, ".layers[1]")
    assert jn.random.fold_in(key, ".layers[1]") != jn.random.fold_in(key, ".layers[2]")
    assert jn.random.fold_in(key, 7) != jn.random.fold_in(key, 8)
    with pytest.raises(TypeError):
        jn.random.fold_in(key, -1)


# --------------------------------------------------------------------------- Dropout
def test_dropout_is_the_identity_in_evaluation(rng):
    X = rng.normal(size=(4, 5)).astype(np.float32)
    layer = jn.Dropout(0.5)
    np.testing.assert_array_equal(layer.forward(X), X)
    np.testing.assert_array_equal(jn.forward(layer, X, key=jn.random.key(0))[0], X)


def test_dropout_drops_the_rate_and_scales_the_rest(rng):
    X = np.ones((200, 100))
    Y, _ = jn.forward(jn.Dropout(0.3), X, training=True, key=jn.random.key(1))
    kept = Y != 0
    assert abs(1 - kept.mean() - 0.3) < 0.01
    np.testing.assert_array_equal(Y[kept], 1 / (1 - 0.3))  # 1 times the mask's value, 1 / (1 - rate): exact


def test_dropout_masks_follow_the_key_and_the_position(rng):
    X = np.ones((8, 16))
    model = jn.pipe(jn.Dropout(0.5), jn.Dropout(0.5))
    first, _ = jn.forward(model, X, training=True, key=jn.random.key(2))
    again, _ = jn.forward(model, X, training=True, key=jn.random.key(2))
    other, _ = jn.forward(model, X, training=True, key=jn.random.key(3))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    single = jn.pipe(jn.Dropout(0.5), jn.Identity())
    Y_single, _ = jn.forward(single, X, training=True, key=jn.random.key(2))
    assert not np.array_equal(first, Y_single * Y_single)  # the two layers drew different masks


def test_dropout_backward_uses_the_forward_mask(rng):
    X, dY = rng.normal(size=(6, 7)), rng.normal(size=(6, 7))
    Y, trace = jn.forward(jn.Dropout(0.4), X, training=True, key=jn.random.key(5))
    _, dX = jn.backward(jn.Dropout(0.4), trace, dY)
    # dX = dY m rounded once; dY (Y / X) = dY (X m rounded) / X rounded, times dY rounded: four
    # roundings between them
    tolerances.assert_within(dX, dY * (Y / X), 4 * tolerances.unit_roundoff(np.float64) * np.abs(dX))
    jn.testing.check_grads(jn.Dropout(0.4), X, training=True, key=jn.random.key(5))


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_dropout_refuses_a_rate_outside_0_1(rate):
    with pytest.raises(ValueError, match="Dropout"):
        jn.Dropout(rate)


def test_training_with_dropout_is_deterministic(rng):
    X, T = rng.normal(size=(32, 4)), rng.integers(0, 3, size=32)
    k1, k2 = jn.random.split(jn.random.key(0))
    model = jn.pipe(jn.Dense.init(k1, 4, 16), jn.ReLU(), jn.Dropout(0.2), jn.Dense.init(k2, 16, 3))
    runs = [jn.fit(model, jn.SoftmaxCrossEntropy(), jn.optim.adam(1e-2), X, T, key=jn.random.key(9), epochs=3, batch_size=8) for _ in range(2)]
    for a, b in zip(jn.tree.leaves(runs[0].model), jn.tree.leaves(runs[1].model)):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- BatchNorm
def batch_norm_reference(X, layer, training):
    axes = (0,) + tuple(range(2, X.ndim))
    shape = (1, -1) + (1,) * (X.ndim - 2)
    if training:
        mean, var = X.mean(axis=axes), X.var(axis=axes)
    else:
        mean, var = layer.running_mean, layer.running_var
    normalized = (X - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + layer.eps)
    return normalized * layer.scale.reshape(shape) + layer.shift.reshape(shape)


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 2, 5)])
@pytest.mark.parametrize("training", [False, True])
def test_batch_norm_matches_numpy(rng, shape, training):
    layer = batch_norm(rng, 3)
    X = rng.normal(size=shape)
    Y, trace = jn.forward(layer, X, training=training)
    # the reference's formula is the one tolerances._BatchNorm counts, on both sides in float64
    _, eY, _ = tolerances.forward_bound(layer, X, np.float64, training=training)
    tolerances.assert_within(Y, batch_norm_reference(X, layer, training), 2 * eY)
    jn.testing.check_grads(layer, X, training=training)


def test_batch_norm_reports_new_running_statistics_only_in_training(rng):
    layer = batch_norm(rng, 3, momentum=0.25)
    X = rng.normal(size=(5, 3, 4))
    _, trace = jn.forward(layer, X, training=False)
    assert trace.updated_model is layer
    _, trace = jn.forward(jn.pipe(jn.Identity(), layer), X, training=True)
    updated = trace.updated_model.layers[1]
    axes = (0, 2)
    _, e_mean, _, e_var = tolerances.batch_norm_statistics_bound(layer, X, np.float64)  # each side's
    tolerances.assert_within(updated.running_mean, 0.75 * layer.running_mean + 0.25 * X.mean(axis=axes), 2 * e_mean, "mean")
    unbiased = X.var(axis=axes) * 20 / 19
    tolerances.assert_within(updated.running_var, 0.75 * layer.running_var + 0.25 * unbiased, 2 * e_var, "var")
    np.testing.assert_array_equal(updated.scale, layer.scale)
    assert not updated.running_mean.flags.writeable


def test_batch_norm_statistics_are_buffers_that_optimizers_leave_alone(rng):
    layer = batch_norm(rng, 3)
    assert [p for p, _ in jn.tree.leaves_with_paths(layer)] == ["scale", "shift", "running_mean", "running_var"]
    assert [p for p, _ in jn.tree.leaves_with_paths(layer, trainable=True)] == ["scale", "shift"]
    X, T = rng.normal(size=(8, 3)), rng.integers(0, 3, size=8)
    opt = jn.optim.adamw(0.1, weight_decay=0.5)
    model, state, _ = jn.train_step(layer, opt.init(layer), jn.SoftmaxCrossEntropy(), opt, X, T)
    expected = 0.9 * layer.running_mean + 0.1 * X.mean(axis=0)
    _, e_mean, _, _ = tolerances.batch_norm_statistics_bound(layer, X, np.float64)
    tolerances.assert_within(model.running_mean, expected, 2 * e_mean)  # updated from the batch, not decayed
    assert [p for p, _ in jn.tree.leaves_with_paths(state.mu, trainable=True)] == ["scale", "shift"]
    np.testing.assert_array_equal(state.mu.running_mean, model.running_mean)  # carried along, not optimized


def test_batch_norm_agrees_with_pytorch(rng):
    torch = pytest.importorskip("torch")
    layer = batch_norm(rng, 3)
    X, dY = rng.normal(size=(4, 3, 2, 3)), rng.normal(size=(4, 3, 2, 3))
    reference = torch.nn.BatchNorm2d(3, momentum=0.1).double()
    reference.weight.data, reference.bias.data = torch.tensor(layer.scale.copy()), torch.tensor(layer.shift.copy())
    reference.running_mean.data, reference.running_var.data = torch.tensor(layer.running_mean.copy()), torch.tensor(layer.running_var.copy())
    inputs = torch.tensor(X, requires_grad=True)
    output = reference(inputs)
    output.backward(torch.tensor(dY))
    Y, trace = jn.forward(layer, X, training=True)
    grads, dX = jn.backward(layer, trace, dY)
    # jitnn's side: tolerances._BatchNorm's bounds. PyTorch's CPU kernel normalizes as
    # x alpha + (shift - mean alpha) with alpha = scale / std, which rounds against |x| +
    # |mean| rather than |x - mean|: gamma(4) of those magnitudes more; its backward pass and
    # statistics have jitnn's form.
    _, eY, saved = tolerances.forward_bound(layer, X, np.float64, training=True)
    bound = tolerances.backward_bound(layer, saved, dY, np.float64)
    shaped = lambda v: np.asarray(v).reshape(1, -1, 1, 1)
    alpha = np.abs(shaped(layer.scale)) / np.sqrt(X.var(axis=(0, 2, 3), keepdims=True) + layer.eps)
    pytorch_form = tolerances.gamma(4, np.float64) * (np.abs(X) + np.abs(X.mean(axis=(0, 2, 3), keepdims=True))) * alpha
    tolerances.assert_within(Y, output.detach().numpy(), 2 * eY + pytorch_form, "forward")
    tolerances.assert_within(dX, inputs.grad.numpy(), 2 * bound.edX, "dX")
    tolerances.assert_within(grads.scale, reference.weight.grad.numpy(), 2 * bound.egrads[0], "d scale")
    mean, e_mean, var, e_var = tolerances.batch_norm_statistics_bound(layer, X, np.float64)
    tolerances.assert_within(trace.updated_model.running_mean, reference.running_mean.numpy(), 2 * e_mean, "running_mean")
    tolerances.assert_within(trace.updated_model.running_var, reference.running_var.numpy(), 2 * e_var, "running_var")
    reference.eval()
    # evaluation with the new statistics, which differ by up to their bounds: y moves by |f|
    # per unit of the mean and |(x - mean) f| / (2 (var + eps)) per unit of the variance (f =
    # scale / std), on top of each side's roundings
    updated = trace.updated_model
    _, eY, _ = tolerances.forward_bound(updated, X, np.float64)
    factor = np.abs(shaped(updated.scale)) / np.sqrt(shaped(var) + updated.eps)
    moved = factor * shaped(2 * e_mean) + np.abs(X - shaped(mean)) * factor / (2 * (shaped(var) + updated.eps)) * shaped(2 * e_var)
    pytorch_form = tolerances.gamma(4, np.float64) * (np.abs(X) + np.abs(shaped(mean))) * factor
    tolerances.assert_within(updated.forward(X), reference(torch.tensor(X)).detach().numpy(), 2 * eY + pytorch_form + moved, "evaluation")


def test_batch_norm_errors(rng):
    layer = jn.BatchNorm.init(None, 3, dtype=np.float64)
    with pytest.raises(ValueError, match=r"BatchNorm.*\(3, \.\.\.\).*\(4,\)"):
        layer.forward(np.ones((2, 4)))
    with pytest.raises(ValueError, match="more than one value per channel"):
        jn.forward(layer, np.ones((1, 3)), training=True)
    with pytest.raises(ValueError, match="momentum"):
        jn.BatchNorm.init(None, 3, momentum=1.5)
    with pytest.raises(ValueError, match="features"):
        jn.BatchNorm.init(None, 0)
    with pytest.raises(ValueError, match="shape"):
        jn.BatchNorm(scale=np.ones(3), shift=np.ones(3), running_mean=np.ones(2), running_var=np.ones(3))
    with pytest.raises(TypeError, match="dtype"):
        jn.BatchNorm(scale=np.ones(3), shift=np.ones(3), running_mean=np.ones(3, np.float32), running_var=np.ones(3))
    with pytest.raises(ValueError, match="running_var must not be negative, got a minimum of -0.5"):
        jn.BatchNorm(scale=np.ones(3), shift=np.ones(3), running_mean=np.ones(3), running_var=np.array([1.0, -0.5, 0.0]))
    diverged = jn.BatchNorm(scale=np.ones(3), shift=np.ones(3), running_mean=np.ones(3), running_var=np.array([1.0, np.nan, 0.0]))
    assert np.isnan(diverged.running_var[1])  # a diverged model can still be built, saved and inspected


# --------------------------------------------------------------------------- Embedding
def test_embedding_looks_rows_up_and_accumulates_repeated_indices(rng):
    layer = jn.Embedding(table=rng.normal(size=(6, 4)))
    indices = np.array([[0, 5, 5], [2, 0, 5]], dtype=np.int16)
    np.testing.assert_array_equal(layer.forward(indices), layer.table[indices])
    dY = rng.normal(size=(2, 3, 4))
    grads = layer.grad_params(indices, dY)
    expected = np.zeros((6, 4))
    np.add.at(expected, indices.reshape(-1), dY.reshape(-1, 4))
    # the same rows summed, in jitnn's order and np.add.at's: gamma(uses) each (tolerances._Embedding)
    bound = tolerances.layer_bounds(layer, indices, dY, np.float64)[2].egrads[0]
    tolerances.assert_within(grads.table, expected, 2 * bound)
    np.testing.assert_array_equal(layer.grad_input(indices, dY), np.zeros(indices.shape))
    jn.testing.check_grads(layer, indices)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int32, np.uint64, np.int64])
def test_embedding_takes_any_integer_dtype(rng, dtype):
    layer = jn.Embedding.init(jn.random.key(0), 10, 3)
    indices = np.array([[1, 2], [9, 0]], dtype=dtype)
    np.testing.assert_array_equal(layer.forward(indices), layer.table[indices.astype(np.int64)])


def test_embedding_refuses_bad_indices():
    layer = jn.Embedding.init(jn.random.key(0), 4, 2)
    for bad, error, fragment in [
        (np.array([[4]]), ValueError, "index 4 is out of range for a vocabulary of 4"),
        (np.array([[-1]]), ValueError, "index -1"),
        (np.array([[2**63]], dtype=np.uint64), ValueError, "out of range"),
        (np.array([[1.0]]), TypeError, "integer indices"),
        (np.zeros((0, 3), np.int64), ValueError, "non-empty"),
    ]:
        with pytest.raises(error, match=fragment):
            layer.forward(bad)
    with pytest.raises(ValueError, match="vocab"):
        jn.Embedding.init(jn.random.key(0), 0, 2)
    model = jn.pipe(jn.Dense.init(jn.random.key(0), 2, 3), jn.Embedding.init(jn.random.key(1), 4, 2))
    with pytest.raises(TypeError, match=r"Embedding at model\.layers\[1\].*first"):
        model.forward(np.ones((1, 2), np.float32))


def test_an_embedding_model_trains(rng):
    k1, k2 = jn.random.split(jn.random.key(4))
    model = jn.pipe(jn.Embedding.init(k1, 10, 4), jn.Flatten(), jn.Dense.init(k2, 12, 2))
    indices = rng.integers(0, 10, size=(40, 3))
    labels = (indices.sum(axis=1) > 13).astype(np.int64)
    result = jn.fit(model, jn.SoftmaxCrossEntropy(), jn.optim.adam(3e-2), indices, labels, key=jn.random.key(0), epochs=30, batch_size=8)
    assert result.history[-1] < 0.5 * result.history[0]


def test_embedding_agrees_with_pytorch(rng):
    torch = pytest.importorskip("torch")
    layer = jn.Embedding(table=rng.normal(size=(7, 3)))
    indices, dY = rng.integers(0, 7, size=(4, 5)), rng.normal(size=(4, 5, 3))
    reference = torch.nn.Embedding(7, 3).double()
    reference.weight.data = torch.tensor(layer.table.copy())
    output = reference(torch.tensor(indices))
    output.backward(torch.tensor(dY))
    np.testing.assert_array_equal(layer.forward(indices), output.detach().numpy())
    bound = tolerances.layer_bounds(layer, indices, dY, np.float64)[2].egrads[0]  # sums of the rows, in two orders
    tolerances.assert_within(layer.grad_params(indices, dY).table, reference.weight.grad.numpy(), 2 * bound)
