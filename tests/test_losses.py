"""The losses beyond the first three: Huber, KL divergence against soft targets, and label
smoothing for softmax cross-entropy. Each against its NumPy reference (within the bound of
its roundings, ``tolerances.loss_bound``), against PyTorch where it is installed, against
central differences, in the compiled step, and with bad input refused by name. (The shared
loss table in ``test_conformance.py`` runs the common checks on every loss too.)"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import reference

import jitnn as jn
import tolerances

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])


def soft(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])


def cases(dtype: Any) -> list[tuple[jn.Loss, np.ndarray, np.ndarray, Any]]:
    """(loss, Y, T, reference with its configuration)."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, size=(4, 3))
    labels[0, 0] = -100
    return [
        (jn.Huber(0.5), rng.normal(size=(5, 3)).astype(dtype), rng.normal(size=(5, 3)).astype(dtype), lambda f, Y, T: f(reference.Huber, Y, T, 0.5)),
        (jn.KLDivergence(), rng.normal(size=(4, 3, 5)).astype(dtype), soft(rng, (4, 3, 5)).astype(dtype), lambda f, Y, T: f(reference.KLDivergence, Y, T)),
        (jn.SoftmaxCrossEntropy(label_smoothing=0.1), rng.normal(size=(6, 5)).astype(dtype), rng.integers(0, 5, size=6),
         lambda f, Y, T: f(reference.SoftmaxCrossEntropy, Y, T, None, 0.1)),
        (jn.SoftmaxCrossEntropy(ignore_label=-100, label_smoothing=1.0), rng.normal(size=(4, 3, 5)).astype(dtype), labels,
         lambda f, Y, T: f(reference.SoftmaxCrossEntropy, Y, T, -100, 1.0)),
    ]


IDS = ["huber", "kl-sequences", "smoothing", "smoothing-1-ignored"]


@DTYPES
@pytest.mark.parametrize("index", range(4), ids=IDS)
def test_each_loss_matches_its_reference_within_its_rounding(index: int, dtype: Any) -> None:
    loss, Y, T, ref = cases(dtype)[index]
    value, grad = loss.value_and_grad(Y, T)
    e_value, e_grad = tolerances.loss_reference_bounds(loss, Y, T, dtype)
    tolerances.assert_within(value, ref(lambda cls, *a: cls.value(*a), Y, T), e_value, "value")
    tolerances.assert_within(grad, ref(lambda cls, *a: cls.grad(*a), Y, T), e_grad, "grad")
    assert grad.dtype == dtype and grad.shape == Y.shape
    assert value == loss.value(Y, T) and np.array_equal(grad, loss.grad(Y, T))


@pytest.mark.parametrize("index", range(4), ids=IDS)
def test_each_loss_passes_the_finite_difference_check(index: int) -> None:
    loss, Y, T, _ = cases(np.float64)[index]
    jn.testing.check_loss_grad(loss, Y, T)


def test_no_smoothing_is_the_plain_loss_bit_for_bit() -> None:
    rng = np.random.default_rng(4)
    Y, T = rng.normal(size=(7, 4)), rng.integers(0, 4, size=7)
    plain, smoothed = jn.SoftmaxCrossEntropy().value_and_grad(Y, T), jn.SoftmaxCrossEntropy(label_smoothing=0.0).value_and_grad(Y, T)
    assert plain[0] == smoothed[0] and plain[1].tobytes() == smoothed[1].tobytes()


@DTYPES
@pytest.mark.parametrize("index", range(4), ids=IDS)
def test_each_loss_matches_pytorch(index: int, dtype: Any) -> None:
    torch = pytest.importorskip("torch")
    loss, Y, T, _ = cases(dtype)[index]
    y = torch.tensor(Y.astype(np.float64), requires_grad=True)
    if isinstance(loss, jn.Huber):
        value = torch.nn.HuberLoss(delta=loss.delta)(y, torch.tensor(T.astype(np.float64)))
    elif isinstance(loss, jn.KLDivergence):  # batchmean over the positions, as jitnn's mean over rows
        rows = y.reshape(-1, Y.shape[-1])
        value = torch.nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(rows, dim=1), torch.tensor(T.astype(np.float64)).reshape(rows.shape))
    else:
        ignore = -100 if loss.ignore_label is None else loss.ignore_label
        value = torch.nn.CrossEntropyLoss(ignore_index=ignore, label_smoothing=loss.label_smoothing)(
            y.reshape(-1, Y.shape[-1]), torch.tensor(np.asarray(T, np.int64).reshape(-1)))
    value.backward()
    # PyTorch computed in float64 from the same values: within the float64 rounding of its
    # side (the reference's bound in float64) plus jitnn's in dtype
    e_value, e_grad = tolerances.loss_reference_bounds(loss, Y, T, dtype)
    ours, grad = loss.value_and_grad(Y, T)
    tolerances.assert_within(ours, float(value.detach()), e_value, "value")
    tolerances.assert_within(grad, y.grad.numpy(), e_grad, "grad")


@pytest.mark.parametrize("index", range(4), ids=IDS)
def test_the_compiled_step_gives_the_generic_bits(index: int) -> None:
    loss, Y, T, _ = cases(np.float64)[index]
    rng = np.random.default_rng(5)
    model = jn.pipe(jn.Dense(W=rng.normal(size=(Y.shape[-1], Y.shape[-1])), b=rng.normal(size=Y.shape[-1])))
    X = rng.normal(size=Y.shape)
    optimizer = jn.optim.adam(0.01)
    step = jn.compile_step(model, loss, optimizer)
    compiled, compiled_state, value = step(model, optimizer.init(model), X, T)
    generic, generic_state, expected = jn.train_step(model, optimizer.init(model), loss, optimizer, X, T)
    assert value == expected
    for a, b in zip(jn.tree.leaves(compiled), jn.tree.leaves(generic)):
        assert a.tobytes() == b.tobytes()


def test_bad_configurations_and_targets_are_refused() -> None:
    with pytest.raises((TypeError, ValueError), match="Huber: delta"):
        jn.Huber(0.0)
    with pytest.raises((TypeError, ValueError), match="SoftmaxCrossEntropy: label_smoothing"):
        jn.SoftmaxCrossEntropy(label_smoothing=1.5)
    with pytest.raises(ValueError, match="KLDivergence: targets must be probabilities"):
        jn.KLDivergence().value(np.zeros((2, 3)), np.array([[0.5, 0.5, 0.0], [1.5, -0.5, 0.0]]))
    with pytest.raises(ValueError, match=r"KLDivergence: targets must have the predictions' shape \(2, 3\)"):
        jn.KLDivergence().value(np.zeros((2, 3)), np.full((2, 4), 0.25))
    with pytest.raises(ValueError, match=r"Huber: targets must have the predictions' shape"):
        jn.Huber().grad(np.zeros((2, 3)), np.zeros(3))
