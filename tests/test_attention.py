"""Multi-head self-attention, learned positions and sequence targets for softmax cross-entropy.

The table's entry (``tests/layer_examples.py``) runs the causal layer through the conformance
suite; here: the layer without the mask, PyTorch's ``nn.MultiheadAttention`` and
``cross_entropy(ignore_index=...)`` in float64 (bounds from ``tolerances.py``), causality, the
checks in Python, and a small transformer trained end to end on a toy task.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pytest
from layer_examples import attention

import jitnn as jn
import reference
import tolerances
from jitnn import _blas
from jitnn import step as step_module
from jitnn._checks import readonly

DTYPES = [np.float32, np.float64]


def block_model(key: jn.random.Key, vocab: int, dim: int, heads: int, length: int, dtype: Any = np.float32) -> jn.Chain:
    """A tiny pre-norm transformer: token and position embeddings, ``X + MHA(LayerNorm(X))``
    (causal), ``X + MLP(LayerNorm(X))``, a final LayerNorm and the scores over the vocabulary."""
    k = jn.random.split(key, 6)
    return jn.pipe(
        jn.Embedding.init(k[0], vocab, dim, dtype=dtype),
        jn.PositionalEmbedding.init(k[1], length, dim, dtype=dtype),
        jn.Residual(jn.pipe(jn.LayerNorm.init(None, dim, dtype=dtype), jn.MultiHeadAttention.init(k[2], dim, heads, causal=True, dtype=dtype))),
        jn.Residual(jn.pipe(
            jn.LayerNorm.init(None, dim, dtype=dtype), jn.Dense.init(k[3], dim, 2 * dim, dtype=dtype), jn.GELU(),
            jn.Dense.init(k[4], 2 * dim, dim, dtype=dtype),
        )),
        jn.LayerNorm.init(None, dim, dtype=dtype),
        jn.Dense.init(k[5], dim, vocab, dtype=dtype),
    )


def shifted(tokens: np.ndarray, ignore: int = -100) -> np.ndarray:
    """The toy task's targets: each position's label is the previous token; the first
    position has none (``ignore``)."""
    targets = np.full_like(tokens, ignore)
    targets[:, 1:] = tokens[:, :-1]
    return targets


def reference_args(layer: jn.MultiHeadAttention) -> tuple[tuple, dict]:
    return layer.params, {"num_heads": layer.num_heads, "causal": layer.causal}


# --------------------------------------------------------------------------- the layer without the mask
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_attention_without_the_mask_matches_the_reference(dtype: Any) -> None:
    layer, X = attention(np.random.default_rng(3), dtype, causal=False)
    dY = np.random.default_rng(4).normal(size=X.shape).astype(dtype)
    params, config = reference_args(layer)
    eY, edX, egrads = tolerances.reference_bounds(layer, X, dY, dtype)
    tolerances.assert_within(layer.forward(X), reference.MultiHeadAttention.forward(X, *params, **config), eY, "forward")
    tolerances.assert_within(layer.grad_input(X, dY), reference.MultiHeadAttention.grad_input(X, dY, *params, **config), edX, "grad_input")
    expected = reference.MultiHeadAttention.grad_params(X, dY, *params, **config)
    for name, grad, want, e in zip(layer.param_names, layer.grad_params(X, dY).params, expected, egrads):
        tolerances.assert_within(grad, want, e, name)


def test_attention_without_the_mask_passes_the_layer_checks() -> None:
    layer, X = attention(np.random.default_rng(5), np.float64, causal=False)
    report = jn.testing.check_layer(layer, X)
    assert "trace route" in report.passed and "gradients" in report.passed and "compiled step" in report.passed


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_both_gradients_from_one_sweep_are_the_bits_of_each_alone(causal: bool) -> None:
    """Residuals.gradients (one backward sweep) against grad_input and grad_params, each run alone."""
    layer, X = attention(np.random.default_rng(6), np.float32, causal=causal, n=3, T=5, dim=8, heads=4)
    kernels = layer.kernels.residuals
    dY = np.random.default_rng(7).normal(size=X.shape).astype(np.float32)
    X, dY = readonly(X), readonly(dY)
    Y, R = kernels.forward(X, *layer.params, *layer.config())
    np.testing.assert_array_equal(Y, layer.kernels.forward(X, *layer.params, *layer.config()))
    dX, grads = kernels.gradients(X, dY, R, *layer.params, *layer.config())
    np.testing.assert_array_equal(dX, kernels.grad_input(X, dY, R, *layer.params, *layer.config()))
    for a, b in zip(grads, kernels.grad_params(X, dY, R, *layer.params, *layer.config())):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- PyTorch
def torch_attention(torch: Any, layer: jn.MultiHeadAttention) -> Any:
    module = torch.nn.MultiheadAttention(layer.dim, layer.num_heads, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        module.in_proj_weight.copy_(torch.tensor(layer.in_proj_weight))
        module.in_proj_bias.copy_(torch.tensor(layer.in_proj_bias))
        module.out_proj.weight.copy_(torch.tensor(layer.out_proj_weight))
        module.out_proj.bias.copy_(torch.tensor(layer.out_proj_bias))
    return module


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_attention_matches_pytorch_in_float64(causal: bool) -> None:
    """Outputs, dX and every parameter's gradient against ``nn.MultiheadAttention(batch_first=True)``
    with the same weights (``need_weights=False``; the causal mask as a boolean upper triangle).

    Each side is within the float64 rounding bound of ``tolerances._MultiHeadAttention`` of
    the exact answer: PyTorch computes the same products (the projections, ``Q K^T``, ``P V``
    and the backward ones: dot products of the same lengths, bounded by ``gamma_K`` in any
    order and blocking), one exponential per score, the row sums and divisions of the
    softmax, and the scale ``1 / sqrt(h)`` applied once to the scores or split between
    ``Q`` and ``K`` (at most three roundings of a score either way, what the rule counts), so
    the two are within twice that bound of each other.
    """
    torch = pytest.importorskip("torch")
    layer, X = attention(np.random.default_rng(8), np.float64, causal=causal, n=3, T=5, dim=8, heads=2)
    dY = np.random.default_rng(9).normal(size=X.shape)
    module = torch_attention(torch, layer)
    x = torch.tensor(X, requires_grad=True)
    T = X.shape[1]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1) if causal else None
    y, weights = module(x, x, x, need_weights=False, attn_mask=mask)
    assert weights is None
    y.backward(torch.tensor(dY))
    eY, edX, egrads = tolerances.reference_bounds(layer, X, dY, np.float64, np.float64)
    tolerances.assert_within(layer.forward(X), y.detach().numpy(), eY, "forward")
    tolerances.assert_within(layer.grad_input(X, dY), x.grad.numpy(), edX, "grad_input")
    theirs = [module.in_proj_weight.grad, module.in_proj_bias.grad, module.out_proj.weight.grad, module.out_proj.bias.grad]
    for name, grad, want, e in zip(layer.param_names, layer.grad_params(X, dY).params, theirs, egrads):
        tolerances.assert_within(grad, want.numpy(), e, name)


def test_initialization_follows_pytorch() -> None:
    """Xavier uniform for the stacked projections, Linear's default for the output one, zero
    biases; the draws stay within their bounds and spread over them."""
    dim, heads = 32, 4
    layer = jn.MultiHeadAttention.init(jn.random.key(0), dim, heads, dtype=np.float64)
    xavier = math.sqrt(6.0 / (dim + 3 * dim))
    assert layer.in_proj_weight.shape == (3 * dim, dim) and layer.out_proj_weight.shape == (dim, dim)
    assert np.abs(layer.in_proj_weight).max() <= xavier and np.abs(layer.in_proj_weight).max() > 0.95 * xavier
    linear = 1 / math.sqrt(dim)
    assert np.abs(layer.out_proj_weight).max() <= linear and np.abs(layer.out_proj_weight).max() > 0.95 * linear
    assert not layer.in_proj_bias.any() and not layer.out_proj_bias.any()
    assert layer.dtype == np.float64 and not layer.causal and layer.head_dim == 8
    table = jn.PositionalEmbedding.init(jn.random.key(1), 64, dim).table
    assert table.shape == (64, dim) and table.dtype == np.float32
    # the sample standard deviation of 2048 normal draws is within 10% of 0.02 (about 6 standard errors)
    assert abs(float(table.std()) - 0.02) < 0.002


@pytest.mark.parametrize("ignore_label", [None, -100, 2], ids=["none", "-100", "a class"])
def test_sequence_cross_entropy_matches_pytorch(ignore_label: int | None) -> None:
    """Scores ``(n, T, k)`` against ``cross_entropy`` of the ``(n, k, T)`` permutation PyTorch
    takes, with ``ignore_index``: the mean over the positions that count, the same value and
    gradient. PyTorch's float64 computation is bounded by the same rule as jitnn's float64
    one (``tolerances.loss_bound``: a logsumexp and a difference per position, a mean over
    the counted positions), so the two are within the two bounds added."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    Y, T = rng.normal(size=(3, 7, 5)), rng.integers(0, 5, size=(3, 7))
    if ignore_label is not None and ignore_label < 0:
        T[rng.random(T.shape) < 0.3] = ignore_label
    loss = jn.SoftmaxCrossEntropy(ignore_label=ignore_label)
    value, grad = loss.value_and_grad(Y, T)
    y = torch.tensor(Y, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(y.permute(0, 2, 1), torch.tensor(T), ignore_index=-100 if ignore_label is None else ignore_label)
    expected.backward()
    e_value, e_grad = tolerances.loss_reference_bounds(loss, Y, T, np.float64, np.float64)
    tolerances.assert_within(value, expected.item(), e_value, "value")
    tolerances.assert_within(grad, y.grad.numpy(), e_grad, "grad")
    assert grad.shape == Y.shape


def test_all_positions_ignored_gives_zero_and_a_zero_gradient() -> None:
    """PyTorch's mean over no positions is NaN (0 / 0); jitnn's is 0, with a zero gradient as PyTorch's."""
    Y = np.random.default_rng(11).normal(size=(2, 3, 4))
    T = np.full((2, 3), -100)
    value, grad = jn.SoftmaxCrossEntropy(ignore_label=-100).value_and_grad(Y, T)
    assert value == 0.0 and grad.shape == Y.shape and not grad.any()
    torch = pytest.importorskip("torch")
    y = torch.tensor(Y, requires_grad=True)
    theirs = torch.nn.functional.cross_entropy(y.permute(0, 2, 1), torch.tensor(T), ignore_index=-100)
    theirs.backward()
    assert math.isnan(theirs.item()) and not y.grad.numpy().any()


# --------------------------------------------------------------------------- sequence targets
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_sequence_scores_are_their_positions_as_rows(dtype: Any) -> None:
    """(n, T, k) with (n, T) labels is the same computation as (n T, k) with (n T,): the same
    bits; and without ignored labels the 2-D loss is unchanged against the reference."""
    rng = np.random.default_rng(12)
    Y, T = rng.normal(size=(4, 5, 3)).astype(dtype), rng.integers(0, 3, size=(4, 5)).astype(np.int32)
    for loss in (jn.SoftmaxCrossEntropy(), jn.SoftmaxCrossEntropy(ignore_label=1)):
        value, grad = loss.value_and_grad(Y, T)
        flat_value, flat_grad = loss.value_and_grad(Y.reshape(20, 3), T.reshape(20))
        assert value == flat_value and value == loss.value(Y, T) == loss(Y, T)
        np.testing.assert_array_equal(grad, flat_grad.reshape(grad.shape))
        np.testing.assert_array_equal(grad, loss.grad(Y, T))
        assert grad.dtype == dtype
        e_value, e_grad = tolerances.loss_reference_bounds(loss, Y, T, dtype)
        tolerances.assert_within(value, reference.SoftmaxCrossEntropy.value(Y, T, loss.ignore_label), e_value, "value")
        tolerances.assert_within(grad, reference.SoftmaxCrossEntropy.grad(Y, T, loss.ignore_label), e_grad, "grad")
    jn.testing.check_loss_grad(jn.SoftmaxCrossEntropy(ignore_label=1), Y.astype(np.float64), T)


def test_sequence_loss_checks_name_the_loss() -> None:
    rng = np.random.default_rng(13)
    Y = rng.normal(size=(2, 3, 4))
    loss = jn.SoftmaxCrossEntropy(ignore_label=-1)
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy: labels must have shape \(2, 3\) to match the predictions, got \(2,\)"):
        loss.value(Y, np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy: labels must have shape \(2, 3\) to match the predictions, got \(2, 3, 1\)"):
        loss.grad(Y, np.zeros((2, 3, 1), np.int64))
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy: label -2 is out of range for 4 classes \(labels must lie in \[0, 4\), or be the ignored label -1\)"):
        loss.value(Y, np.full((2, 3), -2))
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy: label 4 is out of range for 4 classes \(labels must lie in \[0, 4\)\)"):
        jn.SoftmaxCrossEntropy().value(Y, np.full((2, 3), 4))
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy: ignore_label must be None \(every label counts\) or an integer, got 0.5"):
        jn.SoftmaxCrossEntropy(ignore_label=0.5)
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy: ignore_label must be None \(every label counts\) or an integer, got True"):
        jn.SoftmaxCrossEntropy(ignore_label=True)


# --------------------------------------------------------------------------- causality
def test_a_future_token_does_not_change_earlier_positions() -> None:
    """Changing the input at position t changes no output before t, bit for bit (each row
    of a projection is its own dot products, and a masked key's probability is an exact
    zero), and does change the outputs from t on; without the mask every position changes."""
    rng = np.random.default_rng(14)
    causal, X = attention(rng, np.float64, causal=True, n=2, T=6, dim=8, heads=2)
    changed = X.copy()
    changed[:, 4] += rng.normal(size=(2, 8))
    Y, Y2 = causal.forward(X), causal.forward(changed)
    np.testing.assert_array_equal(Y[:, :4], Y2[:, :4])
    assert np.all(np.abs(Y[:, 4:] - Y2[:, 4:]).max(axis=-1) > 1e-6)
    full = jn.MultiHeadAttention(*causal.params, num_heads=2, causal=False)
    assert np.all(np.abs(full.forward(X)[:, :4] - full.forward(changed)[:, :4]).max(axis=-1) > 1e-6)

    model = block_model(jn.random.key(2), 7, 8, 2, 6, np.float64)
    tokens = rng.integers(0, 7, size=(3, 6))
    later = tokens.copy()
    later[:, 3] = (later[:, 3] + 1) % 7
    scores, scores2 = model.forward(tokens), model.forward(later)
    np.testing.assert_array_equal(scores[:, :3], scores2[:, :3])
    assert np.all(np.abs(scores[:, 3:] - scores2[:, 3:]).max(axis=-1) > 1e-9)


# --------------------------------------------------------------------------- checks in Python
def test_the_checks_name_the_layer() -> None:
    key = jn.random.key(0)
    with pytest.raises(ValueError, match=r"MultiHeadAttention.init: num_heads must divide dim, got num_heads=4 for dim=6"):
        jn.MultiHeadAttention.init(key, 6, 4)
    with pytest.raises(ValueError, match=r"MultiHeadAttention.init: num_heads must be a positive integer, got 0"):
        jn.MultiHeadAttention.init(key, 6, 0)
    with pytest.raises(TypeError, match=r"MultiHeadAttention.init: causal must be True or False, got 1"):
        jn.MultiHeadAttention.init(key, 6, 2, causal=1)
    layer = jn.MultiHeadAttention.init(key, 6, 2)
    with pytest.raises(ValueError, match=r"MultiHeadAttention: num_heads must divide dim, got num_heads=4 for dim=6"):
        jn.MultiHeadAttention(*layer.params, num_heads=4)
    with pytest.raises(ValueError, match=r"MultiHeadAttention: in_proj_weight must have shape \(18, 6\) for dim 6"):
        jn.MultiHeadAttention(layer.in_proj_weight[:12], *layer.params[1:], num_heads=2)
    with pytest.raises(ValueError, match=r"MultiHeadAttention: out_proj_weight must have shape \(dim, dim\), got \(6, 5\)"):
        jn.MultiHeadAttention(*layer.params[:2], layer.out_proj_weight[:, :5], layer.out_proj_bias, num_heads=2)
    with pytest.raises(ValueError, match=r"MultiHeadAttention: expects per-example input shape \(length, 6\) .*, got \(6,\) \(input array of shape \(3, 6\)\)"):
        layer.forward(np.ones((3, 6), np.float32))
    with pytest.raises(ValueError, match=r"MultiHeadAttention: expects per-example input shape \(length, 6\) .*, got \(4, 5\)"):
        layer.forward(np.ones((3, 4, 5), np.float32))
    with pytest.raises(ValueError, match=r"MultiHeadAttention: expects sequences of at least one position, got per-example shape \(0, 6\)"):
        layer.grad_input(np.ones((3, 0, 6), np.float32), np.ones((3, 0, 6), np.float32))
    model = jn.pipe(jn.Dense.init(key, 4, 6), layer)  # Dense acts on the last axis of (n, T, 4)
    assert model.forward(np.ones((2, 3, 4), np.float32)).shape == (2, 3, 6)
    with pytest.raises(ValueError, match=r"MultiHeadAttention at model.layers\[1\]: expects per-example input shape \(length, 6\) .*, got \(6,\)"):
        model.forward(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"MultiHeadAttention"):
        jn.pipe(jn.Dense.init(key, 4, 5), layer)  # no rank of input gives attention its width

    positions = jn.PositionalEmbedding.init(key, 5, 6)
    with pytest.raises(ValueError, match=r"PositionalEmbedding: a sequence of length 7 is longer than max_length 5"):
        positions.forward(np.ones((2, 7, 6), np.float32))
    with pytest.raises(ValueError, match=r"PositionalEmbedding: expects per-example input shape \(length, 6\) .*, got \(4, 3\)"):
        positions.forward(np.ones((2, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"PositionalEmbedding.init: max_length must be a positive integer, got 0"):
        jn.PositionalEmbedding.init(key, 0, 6)


def test_summary_labels() -> None:
    model = block_model(jn.random.key(0), 11, 8, 2, 6)
    text = str(jn.summary(model, (6,)))
    assert "MultiHeadAttention(8, 2 heads, causal)" in text and "PositionalEmbedding(6 x 8)" in text
    assert jn.MultiHeadAttention.init(jn.random.key(0), 64, 4).label() == "MultiHeadAttention(64, 4 heads)"


# --------------------------------------------------------------------------- a small transformer
def test_a_small_transformer_passes_the_gradient_check() -> None:
    model = block_model(jn.random.key(3), 7, 8, 2, 6, np.float64)
    tokens = np.random.default_rng(15).integers(0, 7, size=(2, 5))
    jn.testing.check_grads(model, tokens)


class _Compiling:
    """Stands for the process compiling a step in the background: still running when first
    asked, finished when asked again."""

    def __init__(self) -> None:
        self.polls = 0

    def poll(self) -> int | None:
        self.polls += 1
        return None if self.polls == 1 else 0


@pytest.mark.parametrize("background", [False, True], ids=["compiled", "background"])
def test_the_compiled_step_gives_the_generic_steps_bits_with_sequence_targets(background: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``background``, each input length's first two calls run the generic path inside
    the step (as while another process compiles it), the next ones the compiled function."""
    model = block_model(jn.random.key(4), 7, 8, 2, 6, np.float64)
    rng = np.random.default_rng(16)
    loss, optimizer = jn.SoftmaxCrossEntropy(ignore_label=-100), jn.optim.adam(0.01)
    monkeypatch.setattr(step_module, "_in_disk_cache", lambda function, arguments: False)
    monkeypatch.setattr(step_module, "_start_compiling", lambda function, arguments: _Compiling())
    step = jn.compile_step(model, loss, optimizer, background=background)
    compiled = generic = model
    compiled_state = generic_state = optimizer.init(model)
    for i in range(8):
        tokens = rng.integers(0, 7, size=(5, 6 - i % 2))  # two sequence lengths: one plan each
        targets = shifted(tokens)
        compiled, compiled_state, value = step(compiled, compiled_state, tokens, targets)
        with _blas.threads(_blas.auto_threads(len(tokens))):  # the thread count the compiled step chose
            generic, generic_state, expected = jn.train_step(generic, generic_state, loss, optimizer, tokens, targets)
        assert value == expected, f"loss at step {i}"
        for (path, a), (_, b) in zip(jn.tree.leaves_with_paths((compiled, compiled_state)), jn.tree.leaves_with_paths((generic, generic_state))):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f"step {i}: {path}"
    assert "_attention_gradients" in step.source and "_softmax_cross_entropy_value_and_grad" in step.source
    assert step.generic_steps == (4 if background and not numba.config.DISABLE_JIT else 0)


def test_a_small_transformer_saves_and_loads(tmp_path: Path) -> None:
    model = block_model(jn.random.key(5), 7, 8, 2, 6)
    tokens = np.random.default_rng(17).integers(0, 7, size=(3, 6))
    for name in ("model.npz", "model.safetensors"):
        if name.endswith(".safetensors"):
            pytest.importorskip("safetensors")
        jn.save(tmp_path / name, model)
        loaded = jn.load(tmp_path / name, block_model(jn.random.key(6), 7, 8, 2, 6))
        assert loaded == model
        np.testing.assert_array_equal(loaded.forward(tokens), model.forward(tokens))


def test_a_small_transformer_learns_to_recall_the_previous_token() -> None:
    """Each position's target is the token before it (the first position's is ignored): the
    causal attention must learn to look one position back. An untrained model is about as
    good as a uniform guess, log(vocab) nats a position; 320 Adam steps through ``jn.fit``
    (the compiled step) take the loss under a tenth of that (it reaches about 0.01)."""
    vocab, length = 8, 8
    rng = np.random.default_rng(18)
    tokens = rng.integers(0, vocab, size=(256, length))
    targets = shifted(tokens)
    model = block_model(jn.random.key(7), vocab, 16, 2, length)
    loss = jn.SoftmaxCrossEntropy(ignore_label=-100)
    initial = jn.value_and_grad(model, loss, tokens, targets)[0]
    uniform = math.log(vocab)
    assert initial > 0.9 * uniform
    result = jn.fit(model, loss, jn.optim.adam(1e-2), tokens, targets, key=jn.random.key(8), epochs=20, batch_size=16)
    assert result.compiled
    final = jn.value_and_grad(result.model, loss, tokens, targets)[0]
    assert final < 0.1 * uniform and final < initial - 0.8 * uniform, (initial, result.history)
    predicted = result.model.forward(tokens[:32]).argmax(axis=-1)
    assert np.mean(predicted[:, 1:] == tokens[:32, :-1]) > 0.95
