"""Per-example weights (scikit-learn's ``sample_weight``) for every loss, ``value_and_grad``,
the compiled step, ``fit`` and the scikit-learn estimators: against the weighted NumPy
reference (``reference.weighted_loss``) within the bound of the kernels' roundings
(``tolerances.loss_bound`` with weights), against PyTorch's per-example losses, against
central differences, as repeated examples, bit for bit with weights of 1, and bad weights
refused by name."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import reference

import jitnn as jn
import tolerances

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
WEIGHTS = np.array([0.5, 0.0, 2.0, 1.0, 3.0, 0.25])  # one example weighs 0


def cases(dtype: Any) -> list[tuple[jn.Loss, np.ndarray, Any, Any, tuple]]:
    """(loss, Y, T, its reference class, the reference's configuration): six examples each."""
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 4, size=(6, 3))
    labels[2] = -100  # an example of padding alone, with a weight: it still counts for nothing
    labels[0, 1] = -100
    return [
        (jn.SoftmaxCrossEntropy(), rng.normal(size=(6, 4)).astype(dtype), rng.integers(0, 4, 6), reference.SoftmaxCrossEntropy, ()),
        (jn.SoftmaxCrossEntropy(ignore_label=-100, label_smoothing=0.2), rng.normal(size=(6, 3, 4)).astype(dtype), labels,
         reference.SoftmaxCrossEntropy, (-100, 0.2)),
        (jn.MeanSquaredError(), rng.normal(size=(6, 2, 3)).astype(dtype), rng.normal(size=(6, 2, 3)).astype(dtype), reference.MeanSquaredError, ()),
        (jn.BinaryCrossEntropy(), rng.normal(size=(6, 3)).astype(dtype), rng.uniform(size=(6, 3)).astype(dtype), reference.BinaryCrossEntropy, ()),
        (jn.Huber(0.5), rng.normal(size=(6, 3)).astype(dtype), rng.normal(size=(6, 3)).astype(dtype), reference.Huber, (0.5,)),
        (jn.KLDivergence(), rng.normal(size=(6, 2, 4)).astype(dtype), rng.dirichlet(np.ones(4), size=(6, 2)).astype(dtype), reference.KLDivergence, ()),
    ]


IDS = ["cross-entropy", "cross-entropy-sequences-ignored-smoothed", "mse", "bce", "huber", "kl-sequences"]
CASES = pytest.mark.parametrize("index", range(len(IDS)), ids=IDS)


@DTYPES
@CASES
def test_each_weighted_loss_matches_the_weighted_reference_within_its_rounding(index: int, dtype: Any) -> None:
    loss, Y, T, cls, config = cases(dtype)[index]
    value, grad = loss.value_and_grad(Y, T, WEIGHTS)
    expected_value, expected_grad = reference.weighted_loss(cls, Y, T, WEIGHTS, *config)
    e_value, e_grad = tolerances.loss_reference_bounds(loss, Y, T, dtype, weights=WEIGHTS)
    tolerances.assert_within(value, expected_value, e_value, "value")
    tolerances.assert_within(grad, expected_grad, e_grad, "grad")
    assert grad.dtype == dtype and grad.shape == Y.shape
    assert value == loss.value(Y, T, WEIGHTS) and grad.tobytes() == loss.grad(Y, T, WEIGHTS).tobytes()
    assert not grad[1].any(), "an example of weight 0 has a zero gradient"


@DTYPES
@CASES
def test_weights_of_one_give_the_unweighted_bits(index: int, dtype: Any) -> None:
    loss, Y, T, _, _ = cases(dtype)[index]
    plain, weighted = loss.value_and_grad(Y, T), loss.value_and_grad(Y, T, np.ones(len(Y)))
    assert plain[0] == weighted[0] and plain[1].tobytes() == weighted[1].tobytes()


@CASES
def test_an_integer_weight_counts_as_that_many_copies(index: int) -> None:
    """scikit-learn's meaning: weights 0, 1, 2, 3 are the batch with each example repeated so
    often. The two computations sum in different orders, so they agree within both bounds."""
    loss, Y, T, _, _ = cases(np.float64)[index]
    counts = np.array([0, 1, 2, 3, 1, 2])
    copies = np.repeat(np.arange(len(Y)), counts)
    value, grad = loss.value_and_grad(Y, T, counts)
    repeated_value, repeated_grad = loss.value_and_grad(Y[copies], np.asarray(T)[copies])
    summed = np.zeros(Y.shape)
    np.add.at(summed, copies, repeated_grad)
    e_value, e_grad = tolerances.loss_reference_bounds(loss, Y, T, np.float64, weights=counts)
    e_repeated_value, e_repeated_grad = tolerances.loss_reference_bounds(loss, Y[copies], np.asarray(T)[copies], np.float64)
    e_summed = np.zeros(Y.shape)
    np.add.at(e_summed, copies, e_repeated_grad)
    # the repeated gradient's copies are added here in float64: one rounding each
    e_summed += tolerances.gamma(counts.max(), np.float64) * np.abs(summed)
    tolerances.assert_within(value, repeated_value, e_value + e_repeated_value, "value")
    tolerances.assert_within(grad, summed, e_grad + e_summed, "grad")


@CASES
def test_each_weighted_loss_passes_the_finite_difference_check(index: int) -> None:
    loss, Y, T, _, _ = cases(np.float64)[index]
    jn.testing.check_loss_grad(loss, Y, T, sample_weight=WEIGHTS)


@DTYPES
@CASES
def test_weights_that_are_all_zero_give_a_zero_loss_and_gradient(index: int, dtype: Any) -> None:
    loss, Y, T, _, _ = cases(dtype)[index]
    value, grad = loss.value_and_grad(Y, T, np.zeros(len(Y)))
    assert value == 0.0 and grad.shape == Y.shape and not grad.any()


@DTYPES
@CASES
def test_each_weighted_loss_matches_pytorch(index: int, dtype: Any) -> None:
    """PyTorch's per-example losses (``reduction="none"``), weighted and divided by the
    weighted count of their terms, in float64 from the same values."""
    torch = pytest.importorskip("torch")
    loss, Y, T, _, _ = cases(dtype)[index]
    y = torch.tensor(Y.astype(np.float64), requires_grad=True)
    w = torch.tensor(WEIGHTS)
    if isinstance(loss, jn.SoftmaxCrossEntropy):
        ignore = -100 if loss.ignore_label is None else loss.ignore_label
        labels = torch.tensor(np.asarray(T, np.int64).reshape(len(Y), -1))
        terms = torch.nn.functional.cross_entropy(y.reshape(len(Y), -1, Y.shape[-1]).transpose(1, 2), labels, reduction="none",
                                                  ignore_index=ignore, label_smoothing=loss.label_smoothing)
        counted = (labels != ignore).double()
    elif isinstance(loss, jn.KLDivergence):
        t = torch.tensor(T.astype(np.float64))
        terms = torch.nn.functional.kl_div(torch.log_softmax(y, dim=-1), t, reduction="none").sum(dim=-1).reshape(len(Y), -1)
        counted = torch.ones_like(terms)
    else:
        t = torch.tensor(T.astype(np.float64))
        function = {jn.MeanSquaredError: lambda: torch.nn.functional.mse_loss(y, t, reduction="none"),
                    jn.BinaryCrossEntropy: lambda: torch.nn.functional.binary_cross_entropy_with_logits(y, t, reduction="none"),
                    jn.Huber: lambda: torch.nn.functional.huber_loss(y, t, reduction="none", delta=loss.delta)}[type(loss)]
        terms = function().reshape(len(Y), -1)
        counted = torch.ones_like(terms)
    value = (w[:, None] * terms).sum() / (w[:, None] * counted).sum()
    value.backward()
    e_value, e_grad = tolerances.loss_reference_bounds(loss, Y, T, dtype, weights=WEIGHTS)
    ours, grad = loss.value_and_grad(Y, T, WEIGHTS)
    tolerances.assert_within(ours, float(value.detach()), e_value, "value")
    tolerances.assert_within(grad, y.grad.numpy(), e_grad, "grad")


# --------------------------------------------------------------------------- passes, step, fit
def _model(rng: np.random.Generator, n_in: int, n_out: int) -> jn.Layer:
    return jn.pipe(jn.Dense(W=rng.normal(size=(n_in, 5)), b=rng.normal(size=5)), jn.Tanh(),
                   jn.Dense(W=rng.normal(size=(5, n_out)), b=rng.normal(size=n_out)))


@pytest.mark.parametrize("index", [0, 3, 4], ids=[IDS[0], IDS[3], IDS[4]])  # (n, k) outputs: the bounds' Dense rule
def test_value_and_grad_weighs_the_examples_within_the_bound(index: int) -> None:
    loss, Y, T, cls, config = cases(np.float64)[index]
    rng = np.random.default_rng(12)
    model = _model(rng, 3, Y.shape[-1])
    X = rng.normal(size=(*Y.shape[:-1], 3))
    value, grads = jn.value_and_grad(model, loss, X, T, sample_weight=WEIGHTS)
    bound = tolerances.value_and_grad_bound(model, loss, X, T, np.float64, sample_weight=WEIGHTS)
    tolerances.assert_within(value, bound.value, bound.e_value, "value")
    for got, expected, error in zip(jn.tree.leaves(grads), bound.grads, bound.egrads):
        tolerances.assert_within(got, expected, error, "grad")


@CASES
def test_the_compiled_step_gives_the_generic_bits_with_weights(index: int) -> None:
    loss, Y, T, _, _ = cases(np.float64)[index]
    rng = np.random.default_rng(13)
    model = _model(rng, 3, Y.shape[-1])
    X = rng.normal(size=(*Y.shape[:-1], 3))
    optimizer = jn.optim.adam(0.01)
    step = jn.compile_step(model, loss, optimizer)
    for weights in (WEIGHTS, None, np.zeros(len(Y))):
        compiled, _, value = step(model, optimizer.init(model), X, T, sample_weight=weights)
        generic, _, expected = jn.train_step(model, optimizer.init(model), loss, optimizer, X, T, sample_weight=weights)
        assert value == expected
        for a, b in zip(jn.tree.leaves(compiled), jn.tree.leaves(generic)):
            assert a.tobytes() == b.tobytes()
    # weights of 1 are no weights, bit for bit
    with_ones = step(model, optimizer.init(model), X, T, sample_weight=np.ones(len(Y)))
    without = step(model, optimizer.init(model), X, T)
    assert with_ones[2] == without[2]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(jn.tree.leaves(with_ones[0]), jn.tree.leaves(without[0])))


def test_batches_carry_each_examples_weight() -> None:
    X, T, w = np.arange(10.0)[:, None], np.arange(10), np.arange(10.0) / 10
    seen = list(jn.batches(jn.random.key(0), X, T, 4, sample_weight=w))
    assert [len(batch) for batch in seen] == [3, 3, 3]
    for X_batch, T_batch, w_batch in seen:
        np.testing.assert_array_equal(w_batch, T_batch / 10)
        np.testing.assert_array_equal(X_batch[:, 0], T_batch)
    assert all(len(batch) == 2 for batch in jn.batches(jn.random.key(0), X, T, 4))


def _digits(n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(14)
    X = rng.normal(size=(n, 6))
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64)


@pytest.mark.parametrize("compiled", [False, True], ids=["generic", "compiled"])
def test_fit_with_weights_of_one_is_fit_without_weights(compiled: bool) -> None:
    X, T = _digits()
    model = _model(np.random.default_rng(15), 6, 2)
    arguments = dict(key=jn.random.key(1), epochs=2, batch_size=16, compiled=compiled)
    plain = jn.fit(model, jn.SoftmaxCrossEntropy(), jn.optim.adam(0.01), X, T, **arguments)
    weighted = jn.fit(model, jn.SoftmaxCrossEntropy(), jn.optim.adam(0.01), X, T, sample_weight=np.ones(len(X)), **arguments)
    assert plain.history == weighted.history
    assert all(a.tobytes() == b.tobytes() for a, b in zip(jn.tree.leaves(plain.model), jn.tree.leaves(weighted.model)))


def test_fit_weighs_each_batch_and_the_epochs_mean() -> None:
    """One full batch an epoch with plain gradient descent: fit's first epoch is one step on
    the weighted loss, so its model is ``train_step``'s on the same (shuffled) batch, bit for
    bit, and its history the weighted loss before the step."""
    X, T = _digits(40)
    w = np.random.default_rng(16).uniform(0, 2, size=len(X))
    model, loss, optimizer = _model(np.random.default_rng(17), 6, 2), jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.1)
    key = jn.random.key(2)
    result = jn.fit(model, loss, optimizer, X, T, key=key, epochs=1, batch_size=len(X), sample_weight=w, compiled=False)
    # fit's keys: the epoch key splits into the order's key and the steps' key
    _, epoch_key = jn.random.split(key)
    order_key, steps_key = jn.random.split(epoch_key)
    (X_batch, T_batch, w_batch), = jn.batches(order_key, X, T, len(X), sample_weight=w)
    expected, _, value = jn.train_step(model, optimizer.init(model), loss, optimizer, X_batch, T_batch,
                                       key=jn.random.fold_in(steps_key, 0), sample_weight=w_batch)
    # the epoch's mean is over its batches weighted by their weights' sums: for one batch
    # value * mass / mass, two float64 roundings from the batch's loss
    assert len(result.history) == 1
    tolerances.assert_within(result.history[0], value, tolerances.gamma(2, np.float64) * abs(value), "history")
    assert all(a.tobytes() == b.tobytes() for a, b in zip(jn.tree.leaves(result.model), jn.tree.leaves(expected)))
    assert value != loss.value(model.forward(X_batch), T_batch), "the weights changed the loss"


def test_fit_weighs_the_validation_loss() -> None:
    X, T = _digits()
    model = _model(np.random.default_rng(18), 6, 2)
    w = np.linspace(0, 1, 30)
    result = jn.fit(model, jn.SoftmaxCrossEntropy(), jn.optim.adam(0.01), X[:90], T[:90], key=jn.random.key(3), epochs=1,
                    validation_data=(X[90:], T[90:], w), compiled=False)
    expected = jn.SoftmaxCrossEntropy().value(result.model.forward(X[90:]), T[90:], w)
    assert result.metrics["val_loss"] == (expected,)


# --------------------------------------------------------------------------- bad input
def _absolute_value(Y, T):
    return float(np.abs(Y - T).mean())


def _absolute_grad(Y, T):
    return np.sign(Y - T) / Y.size


@jn.loss
class AbsoluteError(jn.Loss):
    """A user's loss written before weights: its kernels take (Y, T)."""

    kernels = jn.losses.LossKernels(_absolute_value, _absolute_grad)

    def targets(self, Y: Any, T: Any) -> Any:
        return np.asarray(T, Y.dtype)


def test_a_loss_without_weighted_kernels_works_and_refuses_weights_by_name() -> None:
    Y, T = np.ones((3, 2)), np.zeros((3, 2))
    assert AbsoluteError().value(Y, T) == 1.0
    with pytest.raises(TypeError, match="AbsoluteError's kernels take no per-example weights"):
        AbsoluteError().value(Y, T, np.ones(3))
    model = jn.pipe(jn.Dense(W=np.eye(2), b=np.zeros(2)))
    with pytest.raises(TypeError, match="fit: AbsoluteError's kernels take no per-example weights"):
        jn.fit(model, AbsoluteError(), jn.optim.sgd(0.1), Y, T, key=jn.random.key(0), sample_weight=np.ones(3))
    with pytest.raises(TypeError, match="value_and_grad: AbsoluteError's kernels"):
        jn.value_and_grad(model, AbsoluteError(), Y, T, sample_weight=np.ones(3))


@pytest.mark.parametrize(("weights", "error", "match"), [
    (np.ones(5), ValueError, r"one weight per example, shape \(6,\), got \(5,\)"),
    (np.ones((6, 1)), ValueError, r"shape \(6,\), got \(6, 1\)"),
    (-WEIGHTS, ValueError, "finite and non-negative, got -0.5"),
    (np.array([1, 1, np.nan, 1, 1, 1.0]), ValueError, "finite and non-negative, got nan"),
    (np.array([1, 1, np.inf, 1, 1, 1.0]), ValueError, "finite and non-negative, got inf"),
    (np.array(["a"] * 6), TypeError, "real numbers, got dtype <U1"),
], ids=["short", "2-d", "negative", "nan", "inf", "strings"])
def test_bad_weights_are_refused_naming_the_loss_and_the_function(weights: Any, error: type, match: str) -> None:
    loss, Y, T, _, _ = cases(np.float64)[0]
    with pytest.raises(error, match=f"SoftmaxCrossEntropy: sample_weight must .*{match}"):
        loss.value(Y, T, weights)
    model = _model(np.random.default_rng(19), 3, 4)
    X = np.ones((6, 3))
    with pytest.raises(error, match=f"value_and_grad: sample_weight must .*{match}"):
        jn.value_and_grad(model, loss, X, T, sample_weight=weights)
    step = jn.compile_step(model, loss, jn.optim.sgd(0.1))
    with pytest.raises(error, match=f"step: sample_weight must .*{match}"):
        step(model, jn.optim.sgd(0.1).init(model), X, T, sample_weight=weights)
    with pytest.raises(error, match=f"fit: sample_weight must .*{match}"):
        jn.fit(model, loss, jn.optim.sgd(0.1), X, T, key=jn.random.key(0), sample_weight=weights)


def test_fit_refuses_weights_that_are_all_zero_and_bad_validation_weights() -> None:
    X, T = _digits(12)
    model = _model(np.random.default_rng(20), 6, 2)
    with pytest.raises(ValueError, match="fit: sample_weight is 0 for every example"):
        jn.fit(model, jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.1), X, T, key=jn.random.key(0), sample_weight=np.zeros(12))
    with pytest.raises(ValueError, match="fit: validation_data's weights: sample_weight must have one weight per example"):
        jn.fit(model, jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.1), X, T, key=jn.random.key(0), validation_data=(X, T, np.ones(3)))
    with pytest.raises(TypeError, match="a pair \\(X_val, T_val\\) or a triple"):
        jn.fit(model, jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.1), X, T, key=jn.random.key(0), validation_data=(X, T, None, None))
