"""The recurrent layers: RNN, GRU, LSTM and Bidirectional.

Against PyTorch's modules (``batch_first=True``, one layer) in float64: outputs, input
gradients and every parameter's gradient, within the bounds ``tests/tolerances.py`` carries
through the recurrence; the elementary functions their kernels use (``jitnn._math``); the
errors they raise; PyTorch's names on a bidirectional layer; checkpoints and summaries; the
compiled training step against the generic one, bit for bit; every direction and output
not in the shared table through ``jn.testing.check_layer``.
"""

from __future__ import annotations

import math
import pickle
from typing import Any

import attrs
import numba
import numpy as np
import pytest

import jitnn as jn
import tolerances
from jitnn import _blas, _math

CELLS = [jn.RNN, jn.GRU, jn.LSTM]
PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def assert_trees_equal(actual: Any, expected: Any, what: str) -> None:
    """Every leaf bitwise equal, dtype included."""
    jn.tree.check_same_structure(expected, actual)
    for (path, a), (_, b) in zip(jn.tree.leaves_with_paths(actual), jn.tree.leaves_with_paths(expected)):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), f"{what}: {path}"


# --------------------------------------------------------------------------- the elementary functions
@numba.njit
def _apply(which: int, x: np.ndarray, out: np.ndarray) -> None:
    for i in range(x.size):
        if which == 0:
            out[i] = _math.exp_nonpositive(x[i])
        elif which == 1:
            out[i] = _math.sigmoid(x[i])
        else:
            out[i] = _math.tanh(x[i])


def _grid(dtype: Any, low: float, high: float) -> np.ndarray:
    """Points spread evenly and by magnitude (down to the subnormals) over [low, high]."""
    count = 20_000 if numba.config.DISABLE_JIT else 400_000
    tiny = float(np.finfo(dtype).smallest_subnormal)
    magnitudes = np.logspace(math.log10(tiny), math.log10(max(abs(low), abs(high))), count)
    points = np.concatenate([np.linspace(low, high, count), magnitudes, -magnitudes, [0.0, -0.0, low, high]])
    return points[(points >= low) & (points <= high)].astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("which, low, high", [(0, -800.0, 0.0), (1, -800.0, 800.0), (2, -30.0, 30.0)], ids=["exp", "sigmoid", "tanh"])
def test_elementary_functions_are_within_four_units_in_the_last_place(which: int, low: float, high: float, dtype: Any) -> None:
    """exp (of x <= 0), sigmoid and tanh, against long double (64 bits of precision on x86,
    11 more than float64): within the 4 ulp ``tests/tolerances.py`` assumes of a library
    function, everywhere, the subnormal results included (their ulp is the smallest one)."""
    x = _grid(dtype, max(low, -110.0) if dtype == np.float32 else low, high)
    out = np.empty_like(x)
    _apply(which, x, out)
    wide = x.astype(np.longdouble)
    exact = np.exp(wide) if which == 0 else 1 / (1 + np.exp(-wide)) if which == 1 else np.tanh(wide)
    ulp = np.maximum(np.spacing(np.abs(exact).astype(dtype)).astype(np.longdouble), np.spacing(dtype(0)))
    errors = np.abs(out.astype(np.longdouble) - exact) / ulp
    assert float(errors.max()) <= 4, f"{float(errors.max())} ulp at {x[np.argmax(errors)]!r}"


@np.errstate(over="ignore", invalid="ignore")  # under NUMBA_DISABLE_JIT=1, NumPy's scalars warn on inf
def test_elementary_functions_keep_nan_and_limits() -> None:
    for dtype in (np.float32, np.float64):
        x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30], dtype)
        out = np.empty_like(x)
        _apply(1, x, out)
        np.testing.assert_array_equal(out, np.array([np.nan, 1, 0, 0.5, 0.5, 1, 0], dtype))
        _apply(2, x, out)
        np.testing.assert_array_equal(out, np.array([np.nan, 1, -1, 0, -0.0, 1, -1], dtype))
        assert np.signbit(out[4])
        _apply(0, -np.abs(x), out)
        np.testing.assert_array_equal(out, np.array([np.nan, 0, 0, 1, 1, 0, 0], dtype))


# --------------------------------------------------------------------------- against PyTorch
def torch_module(torch: Any, cls: type, input_size: int, hidden: int, bidirectional: bool, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    module = getattr(torch.nn, cls.__name__)(input_size, hidden, batch_first=True, bidirectional=bidirectional)
    with torch.no_grad():  # larger weights than PyTorch's initial ones: the gates leave their linear range
        for p in module.parameters():
            p.mul_(2.5)
    return module


def from_torch(cls: type, module: Any, return_sequences: bool, dtype: Any = np.float64) -> jn.Layer:
    """The jitnn layer holding the module's parameters: weight_ih_l0 -> weight_ih, and the
    _reverse ones in the reverse layer of a Bidirectional."""
    directions = ["", "_reverse"] if module.bidirectional else [""]
    layers = [
        cls(**{name: getattr(module, f"{name}_l0{suffix}").detach().numpy().astype(dtype) for name in PARAMS},
            reverse=bool(suffix), return_sequences=return_sequences)
        for suffix in directions
    ]
    return jn.Bidirectional(*layers) if module.bidirectional else layers[0]


def torch_answers(torch: Any, module: Any, X: np.ndarray, dY_seed: int, return_sequences: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """PyTorch's output (all states, or h_n of each direction side by side), dY, dX and the
    parameters' gradients by name."""
    X_t = torch.tensor(X, requires_grad=True)
    output, last = module(X_t)
    last = last[0] if isinstance(last, tuple) else last  # LSTM: (h_n, c_n)
    Y = output if return_sequences else last.permute(1, 0, 2).reshape(X.shape[0], -1)
    dY = np.random.default_rng(dY_seed).normal(size=tuple(Y.shape)).astype(X.dtype)
    Y.backward(torch.tensor(dY))
    grads = {name: p.grad.numpy() for name, p in module.named_parameters()}
    return Y.detach().numpy(), dY, X_t.grad.numpy(), grads


@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-way", "bidirectional"])
@pytest.mark.parametrize("cls", CELLS, ids=[c.__name__ for c in CELLS])
def test_agrees_with_pytorch_in_float64(cls: type, bidirectional: bool, return_sequences: bool) -> None:
    """Weights copied from PyTorch give PyTorch's output, input gradient and parameter
    gradients. Both compute in float64, the same cell formulas in their own order (PyTorch:
    the input's products for all steps at once, ``(h - n) z + n``, autograd's products): the
    rules of ``tests/tolerances.py`` count each formula's roundings against the magnitudes of
    its terms for either way of writing it, so each side is within that float64 bound of the
    exact answer, and the two within twice it (``reference_bounds``)."""
    torch = pytest.importorskip("torch")
    torch.set_default_dtype(torch.float64)
    try:
        module = torch_module(torch, cls, 3, 5, bidirectional).double()
        X = np.random.default_rng(1).normal(size=(4, 7, 3))
        Y_t, dY, dX_t, grads_t = torch_answers(torch, module, X, 2, return_sequences)
    finally:
        torch.set_default_dtype(torch.float32)
    layer = from_torch(cls, module, return_sequences)
    eY, edX, egrads = tolerances.reference_bounds(layer, X, dY, np.float64)
    tolerances.assert_within(layer.forward(X), Y_t, eY, "forward")
    tolerances.assert_within(layer.grad_input(X, dY), dX_t, edX, "grad_input")
    grads = layer.grad_params(X, dY)
    names = [f"{name}_l0{suffix}" for suffix in (["", "_reverse"] if bidirectional else [""]) for name in PARAMS]
    for k, (name, leaf) in enumerate(zip(names, jn.tree.leaves(grads, trainable=True))):
        tolerances.assert_within(leaf, grads_t[name], egrads[k], name)


@pytest.mark.parametrize("cls", CELLS, ids=[c.__name__ for c in CELLS])
def test_pytorch_weights_in_float32_give_pytorch_output(cls: type) -> None:
    """PyTorch's float32 module and the layer made from its parameters (float32, as PyTorch
    keeps them): each side within the float32 bound of the exact answer."""
    torch = pytest.importorskip("torch")
    module = torch_module(torch, cls, 2, 4, True, seed=3)
    X = np.random.default_rng(4).normal(size=(5, 9, 2)).astype(np.float32)
    Y_t, dY, dX_t, grads_t = torch_answers(torch, module, X, 5, True)
    layer = from_torch(cls, module, True, np.float32)
    assert layer.dtype == np.float32
    eY, edX, egrads = tolerances.reference_bounds(layer, X, dY, np.float32, np.float32)
    tolerances.assert_within(layer.forward(X), Y_t, eY, "forward")
    tolerances.assert_within(layer.grad_input(X, dY), dX_t, edX, "grad_input")
    names = [f"{name}_l0{suffix}" for suffix in ("", "_reverse") for name in PARAMS]
    for k, (name, leaf) in enumerate(zip(names, jn.tree.leaves(layer.grad_params(X, dY), trainable=True))):
        tolerances.assert_within(leaf, grads_t[name], egrads[k], name)


def test_large_inputs_stay_finite_and_agree_with_pytorch() -> None:
    """Pre-activations in the hundreds saturate every gate: sigmoid through exp(-|x|) and
    tanh never overflow, and the answers still agree with PyTorch's."""
    torch = pytest.importorskip("torch")
    torch.set_default_dtype(torch.float64)
    try:
        module = torch_module(torch, jn.LSTM, 2, 3, True, seed=5).double()
        X = 300 * np.random.default_rng(6).normal(size=(3, 5, 2))
        Y_t, dY, dX_t, _ = torch_answers(torch, module, X, 7, True)
    finally:
        torch.set_default_dtype(torch.float32)
    layer = from_torch(jn.LSTM, module, True)
    Y, dX = layer.forward(X), layer.grad_input(X, dY)
    assert np.all(np.isfinite(Y)) and np.all(np.isfinite(dX))
    eY, edX, _ = tolerances.reference_bounds(layer, X, dY, np.float64)
    tolerances.assert_within(Y, Y_t, eY, "forward")
    tolerances.assert_within(dX, dX_t, edX, "grad_input")


# --------------------------------------------------------------------------- making layers
def test_init_draws_pytorch_shapes_and_scale() -> None:
    key = jn.random.key(3)
    for cls, gates in zip(CELLS, (1, 3, 4)):
        layer = cls.init(key, 2, 5)
        assert (layer.weight_ih.shape, layer.weight_hh.shape, layer.bias_ih.shape, layer.bias_hh.shape) == ((5 * gates, 2), (5 * gates, 5), (5 * gates,), (5 * gates,))
        assert layer.dtype == np.float32 and not layer.reverse and layer.return_sequences
        for array in layer.params:
            assert np.all(np.abs(array) <= 1 / math.sqrt(5)) and np.ptp(array) > 0
        both = cls.init(key, 2, 5, bidirectional=True, return_sequences=False, dtype=np.float64)
        assert isinstance(both, jn.Bidirectional) and both.dtype == np.float64
        assert not both.forward_layer.reverse and both.reverse_layer.reverse and not both.return_sequences
        # the forward direction's parameters are drawn first: those of the one-way layer
        assert_trees_equal(both.forward_layer, cls.init(key, 2, 5, return_sequences=False, dtype=np.float64), "forward direction")
        assert not np.array_equal(both.weight_ih, both.weight_ih_reverse)


def test_bidirectional_has_pytorch_names() -> None:
    layer = jn.GRU.init(jn.random.key(0), 2, 3, bidirectional=True)
    for name in PARAMS:
        assert getattr(layer, name) is getattr(layer.forward_layer, name)
        assert getattr(layer, f"{name}_reverse") is getattr(layer.reverse_layer, name)
    for missing in ("W", "weight_xx", "weight_ih_reverse_reverse", "reverse", "gates_reverse"):
        with pytest.raises(AttributeError, match=missing):
            getattr(layer, missing)
    assert not hasattr(layer, "weight_ih_l0")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        layer.weight_ih = layer.weight_hh  # type: ignore[misc]
    copied = attrs.evolve(layer)
    assert copied == layer and copied.weight_hh_reverse is layer.reverse_layer.weight_hh
    unpickled = pickle.loads(pickle.dumps(layer))
    assert unpickled == layer and not unpickled.weight_ih_reverse.flags.writeable


def test_labels() -> None:
    key = jn.random.key(0)
    assert jn.GRU.init(key, 1, 6).label() == "GRU(1 -> 6)"
    assert attrs.evolve(jn.GRU.init(key, 1, 6), reverse=True).label() == "GRU(1 -> 6, reverse)"
    assert jn.LSTM.init(key, 3, 2, return_sequences=False).label() == "LSTM(3 -> 2, last state)"
    assert jn.RNN.init(key, 4, 5, bidirectional=True).label() == "Bidirectional(RNN, 4 -> 2 x 5)"
    mixed = jn.Bidirectional(jn.GRU.init(key, 4, 5), attrs.evolve(jn.LSTM.init(key, 4, 2), reverse=True))
    assert mixed.label() == "Bidirectional(GRU + LSTM, 4 -> 5 + 2)" and mixed.output_shape((3, 4)) == (3, 7)


# --------------------------------------------------------------------------- errors name the layer
def call_and_check(call: Any, error: type, *fragments: str) -> None:
    with pytest.raises(error) as caught:
        call()
    for fragment in fragments:
        assert fragment in str(caught.value), f"{fragment!r} not in {caught.value}"


@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-way", "bidirectional"])
def test_wrong_input_is_refused_naming_the_layer(bidirectional: bool) -> None:
    layer = jn.GRU.init(jn.random.key(0), 3, 4, bidirectional=bidirectional)
    for method in (layer.forward, lambda X: layer.grad_input(X, np.zeros((2, 5, 8)))):
        call_and_check(lambda: method(np.zeros((2, 5, 2))), ValueError, "GRU", "(sequence length, 3)", "(5, 2)")  # features
        call_and_check(lambda: method(np.zeros((2, 0, 3))), ValueError, "GRU", "at least one step", "(0, 3)")  # no steps
        call_and_check(lambda: method(np.zeros((2, 3))), ValueError, "GRU", "(n, T, 3)", "(3,)")  # a 2-D batch
        call_and_check(lambda: method(np.zeros((2, 5, 3, 1))), ValueError, "GRU", "(5, 3, 1)")
    model = jn.pipe(jn.Flatten(), jn.Reshape((5, 2)), layer)
    call_and_check(lambda: model.forward(np.zeros((2, 10))), ValueError, "GRU at model.layers[2]", "(5, 2)")
    if bidirectional:
        call_and_check(lambda: model.forward(np.zeros((2, 10))), ValueError, ".forward_layer")


def test_bad_arguments_are_refused_naming_the_function() -> None:
    key = jn.random.key(0)
    call_and_check(lambda: jn.GRU.init(key, 0, 3), ValueError, "GRU.init: input_size must be a positive integer")
    call_and_check(lambda: jn.LSTM.init(key, 2, 2.5), ValueError, "LSTM.init: hidden_size")
    call_and_check(lambda: jn.RNN.init(key, 2, 3, bidirectional=1), TypeError, "RNN.init: bidirectional must be True or False")
    call_and_check(lambda: jn.RNN.init(key, 2, 3, return_sequences="yes"), TypeError, "RNN.init: return_sequences")
    call_and_check(lambda: jn.GRU.init(key, 2, 3, dtype=np.int32), TypeError, "GRU.init: dtype")
    layer = jn.GRU.init(key, 2, 3)
    call_and_check(lambda: attrs.evolve(layer, reverse=1), TypeError, "GRU: reverse must be True or False")
    call_and_check(lambda: attrs.evolve(layer, weight_hh=np.zeros((9, 2), np.float32)), ValueError, "GRU: weight_ih must have shape (3 hidden, input_size)")
    call_and_check(lambda: attrs.evolve(layer, bias_ih=np.zeros(8, np.float32)), ValueError, "bias_ih (8,)")
    call_and_check(lambda: attrs.evolve(layer, bias_hh=np.zeros(9)), TypeError, "GRU: all parameters must share one dtype")
    other = attrs.evolve(layer, reverse=True)
    call_and_check(lambda: jn.Bidirectional(layer, layer), ValueError, "Bidirectional: reverse_layer must have reverse=True")
    call_and_check(lambda: jn.Bidirectional(other, other), ValueError, "Bidirectional: forward_layer must have reverse=False")
    call_and_check(lambda: jn.Bidirectional(layer, jn.Dense.init(key, 2, 3)), TypeError, "Bidirectional: reverse_layer must be an RNN, GRU or LSTM")
    call_and_check(lambda: jn.Bidirectional(layer, attrs.evolve(jn.GRU.init(key, 3, 3), reverse=True)), ValueError, "one input size")
    call_and_check(lambda: jn.Bidirectional(layer, attrs.evolve(other, return_sequences=False)), ValueError, "return_sequences")


# --------------------------------------------------------------------------- in a model
def gru_model(key: Any, dtype: Any = np.float32, length: int = 40) -> jn.Chain:
    """The MNIST-1D model: a bidirectional GRU (1 -> 6) over 40 steps, Flatten, Dense(480, 10)."""
    k1, k2 = jn.random.split(key)
    return jn.pipe(jn.GRU.init(k1, 1, 6, bidirectional=True, dtype=dtype), jn.Flatten(), jn.Dense.init(k2, 12 * length, 10, dtype=dtype))


def test_save_load_and_summary_of_a_bidirectional_gru_model(tmp_path: Any) -> None:
    model = gru_model(jn.random.key(1))
    path = tmp_path / "gru.npz"
    jn.save(path, model)
    loaded = jn.load(path, gru_model(jn.random.key(2)))
    assert_trees_equal(loaded, model, "loaded")
    X = np.random.default_rng(0).normal(size=(3, 40, 1)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(X), model.forward(X))
    table = jn.summary(model, (40, 1))
    rows = {row.position: row for row in table.rows}
    assert rows["layers[0]"].label == "Bidirectional(GRU, 1 -> 2 x 6)" and rows["layers[0]"].output_shape == (40, 12)
    assert rows["layers[0].forward_layer"].label == "GRU(1 -> 6)" and rows["layers[0].forward_layer"].output_shape == (40, 6)
    assert rows["layers[0].reverse_layer"].label == "GRU(1 -> 6, reverse)"
    assert rows["layers[0]"].params == 2 * (18 * 1 + 18 * 6 + 18 + 18) == 324
    assert rows["layers[2]"].output_shape == (10,)
    assert "GRU(1 -> 6, reverse)" in str(table)


def run_both(model: jn.Layer, loss: jn.Loss, optimizer: Any, batches: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """The compiled step and train_step from the same model: the same bits after every step
    (at the BLAS thread count the compiled step chose, so that products sum alike)."""
    step = jn.compile_step(model, loss, optimizer)
    compiled = generic = model
    compiled_state = generic_state = optimizer.init(model)
    for i, (X, T) in enumerate(batches):
        compiled, compiled_state, value = step(compiled, compiled_state, X, T)
        with _blas.threads(_blas.auto_threads(len(X))):
            generic, generic_state, expected = jn.train_step(generic, generic_state, loss, optimizer, X, T)
        assert value == expected, f"loss at step {i}"
        assert_trees_equal(compiled, generic, f"model after step {i}")
        assert_trees_equal(compiled_state, generic_state, f"optimizer state after step {i}")


def test_compiled_step_of_the_gru_model_equals_train_step() -> None:
    rng = np.random.default_rng(2)
    batches = [(rng.normal(size=(16, 40, 1)).astype(np.float32), rng.integers(0, 10, 16)) for _ in range(3)]
    run_both(gru_model(jn.random.key(4)), jn.SoftmaxCrossEntropy(), jn.optim.adam(1e-2), batches)


def test_compiled_step_of_stacked_recurrent_layers_equals_train_step() -> None:
    """A recurrent layer after another needs both gradients: one sweep (Residuals.gradients)."""
    k = jn.random.split(jn.random.key(5), 3)
    model = jn.pipe(
        jn.RNN.init(k[0], 3, 4, dtype=np.float64),
        jn.LSTM.init(k[1], 4, 3, bidirectional=True, return_sequences=False, dtype=np.float64),
        jn.Dense.init(k[2], 6, 2, dtype=np.float64),
    )
    rng = np.random.default_rng(3)
    batches = [(rng.normal(size=(5, 6, 3)), rng.normal(size=(5, 2))) for _ in range(3)]
    run_both(model, jn.MeanSquaredError(), jn.optim.sgd(0.1), batches)


def test_fit_trains_the_gru_model() -> None:
    """A task only the sequence's order solves: is the first half's sum larger than the second's."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(128, 8, 1)).astype(np.float32)
    labels = (X[:, :4, 0].sum(axis=1) > X[:, 4:, 0].sum(axis=1)).astype(np.int64)
    k1, k2 = jn.random.split(jn.random.key(0))
    model = jn.pipe(jn.GRU.init(k1, 1, 6, bidirectional=True), jn.Flatten(), jn.Dense.init(k2, 12 * 8, 2))
    before = jn.accuracy(model.forward(X), labels)
    result = jn.fit(model, jn.SoftmaxCrossEntropy(), jn.optim.adam(0.02), X, labels, epochs=15, batch_size=32, key=jn.random.key(2))
    after = jn.accuracy(result.model.forward(X), labels)
    assert after > 0.9 > before


# --------------------------------------------------------------------------- every configuration
@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cls", CELLS, ids=[c.__name__ for c in CELLS])
def test_check_layer_passes_in_every_configuration(cls: type, reverse: bool, return_sequences: bool) -> None:
    """The conformance suite (finite differences, purity, batch invariance, trace route,
    compiled step) on each direction and output, in float64: the shared table holds one
    configuration of each layer."""
    rng = np.random.default_rng(7)
    width = cls.gates * 3
    layer = cls(*(0.6 * rng.normal(size=s) for s in ((width, 2), (width, 3), (width,), (width,))), reverse=reverse, return_sequences=return_sequences)
    report = jn.testing.check_layer(layer, rng.normal(size=(3, 5, 2)), dtypes=(np.float64,))
    assert not report.failed, report
