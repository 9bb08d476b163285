"""jn.interop: PyTorch's names and layouts for a model's parameters.

Every layer with a PyTorch module, in a small chain with activations between: the state
dict loads into the equivalent ``torch.nn`` model with ``strict=True`` and the two give the
same output (within the bounds ``tests/tolerances.py`` derives), the recurrent layers with
``return_sequences=False`` and causal attention called as ``jitnn.interop`` documents; a
PyTorch model's state dict loads into jitnn, round-trips bit for bit and gives PyTorch's
output; nested chains and parameterless layers get PyTorch's indices; and the checks of
``load_state_dict`` and the layers refused by both directions.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import attrs
import numpy as np
import pytest

import jitnn as jn
import tolerances
from jitnn.interop import load_state_dict, state_dict

F64 = np.float64
CELLS = [jn.RNN, jn.GRU, jn.LSTM]


def keys(count: int, seed: int = 0) -> list[jn.random.Key]:
    return jn.random.split(jn.random.key(seed), count)


def randomized(model: jn.Layer, seed: int = 0) -> jn.Layer:
    """``model`` with every leaf drawn anew: parameters in [-1, 1), running variances in [0.5, 1.5)."""
    rng = np.random.default_rng(seed)

    def draw(path: str, leaf: np.ndarray) -> np.ndarray:
        low, high = (0.5, 1.5) if path.endswith("running_var") else (-1.0, 1.0)
        return rng.uniform(low, high, size=leaf.shape).astype(leaf.dtype)

    return jn.tree.map_with_paths(draw, model)


# =========================================================================== the models
def every_step(torch: Any, member: Any, x: Any) -> Any:
    """How a PyTorch model calls a recurrent module (its output, the state after every step)
    or attention (the sequence as query, key and value, no mask)."""
    if isinstance(member, torch.nn.MultiheadAttention):
        return member(x, x, x, need_weights=False)[0]
    return member(x)[0]


def last_state(torch: Any, member: Any, x: Any) -> Any:
    """A recurrent layer with ``return_sequences=False``, as ``jitnn.interop`` documents it:
    ``output[:, -1]``; for a bidirectional module ``h_n`` of the two directions side by side
    (``output[:, -1]`` holds the reverse direction's first state, not its last)."""
    output, state = member(x)
    h_n = state[0] if isinstance(member, torch.nn.LSTM) else state  # an LSTM's (h_n, c_n)
    return torch.cat([h_n[0], h_n[1]], dim=-1) if member.bidirectional else output[:, -1]


def causal(torch: Any, member: Any, x: Any) -> Any:
    """``MultiHeadAttention(causal=True)``: the module with the boolean ``attn_mask`` of the
    upper triangle (``True``: a key the query may not read), the sequence as query, key and
    value."""
    T = x.shape[1]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    return member(x, x, x, attn_mask=mask, need_weights=False)[0]


class Case(NamedTuple):
    """A jitnn model, the equivalent PyTorch model (built from the torch module), an input,
    and how the PyTorch model calls its recurrent or attention module."""

    model: Callable[[], jn.Layer]
    module: Callable[[Any], Any]
    X: Callable[[np.random.Generator], np.ndarray]
    call: Callable[[Any, Any, Any], Any] = every_step


def _recurrent_case(cls: type, bidirectional: bool, return_sequences: bool = True) -> Case:
    width = 8 if bidirectional else 4

    def model() -> jn.Layer:
        k = keys(3, 4)
        recurrent = cls.init(k[1], 5, 4, bidirectional=bidirectional, return_sequences=return_sequences, dtype=F64)
        return jn.pipe(jn.Dense.init(k[0], 3, 5, dtype=F64), jn.Tanh(), recurrent, jn.Dense.init(k[2], width, 2, dtype=F64))

    def module(torch: Any) -> Any:
        cell = getattr(torch.nn, cls.__name__)(5, 4, batch_first=True, bidirectional=bidirectional)
        return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), cell, torch.nn.Linear(width, 2))

    return Case(model, module, lambda rng: rng.normal(size=(3, 6, 3)), every_step if return_sequences else last_state)


CASES: dict[str, Case] = {
    "Dense": Case(
        lambda: jn.pipe(jn.Dense.init(keys(2)[0], 5, 7, dtype=F64), jn.ReLU(), jn.Dense.init(keys(2)[1], 7, 3, dtype=F64)),
        lambda torch: torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3)),
        lambda rng: rng.normal(size=(4, 5)),
    ),
    "Conv2D": Case(
        lambda: jn.pipe(
            jn.Conv2D.init(keys(3)[0], 2, 3, 3, padding=1, dtype=F64), jn.ReLU(), jn.MaxPool2D(2),
            jn.Conv2D.init(keys(3)[1], 3, 4, (2, 3), stride=(1, 2), dilation=(2, 1), dtype=F64), jn.Tanh(), jn.Flatten(),
            jn.Dense.init(keys(3)[2], 4, 2, dtype=F64),
        ),
        lambda torch: torch.nn.Sequential(
            torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(3, 4, (2, 3), stride=(1, 2), dilation=(2, 1)), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(4, 2),
        ),
        lambda rng: rng.normal(size=(3, 2, 6, 6)),
    ),
    "Conv1D": Case(
        lambda: jn.pipe(
            jn.Conv1D.init(keys(3)[0], 2, 4, 3, padding=1, dtype=F64), jn.Tanh(),
            jn.Conv1D.init(keys(3)[1], 4, 3, 2, stride=2, dtype=F64), jn.ReLU(), jn.Flatten(), jn.Dense.init(keys(3)[2], 9, 2, dtype=F64),
        ),
        lambda torch: torch.nn.Sequential(
            torch.nn.Conv1d(2, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv1d(4, 3, 2, stride=2), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Linear(9, 2),
        ),
        lambda rng: rng.normal(size=(3, 2, 7)),
    ),
    "BatchNorm-1d": Case(
        lambda: jn.pipe(jn.BatchNorm.init(None, 5, dtype=F64), jn.Tanh(), jn.Dense.init(keys(1)[0], 5, 3, dtype=F64)),
        lambda torch: torch.nn.Sequential(torch.nn.BatchNorm1d(5), torch.nn.Tanh(), torch.nn.Linear(5, 3)),
        lambda rng: rng.normal(size=(6, 5)),
    ),
    "BatchNorm-2d": Case(
        lambda: jn.pipe(
            jn.BatchNorm.init(None, 2, dtype=F64), jn.ReLU(), jn.Conv2D.init(keys(2)[0], 2, 3, 3, dtype=F64), jn.Flatten(),
            jn.Dense.init(keys(2)[1], 27, 2, dtype=F64),
        ),
        lambda torch: torch.nn.Sequential(
            torch.nn.BatchNorm2d(2), torch.nn.ReLU(), torch.nn.Conv2d(2, 3, 3), torch.nn.Flatten(), torch.nn.Linear(27, 2),
        ),
        lambda rng: rng.normal(size=(3, 2, 5, 5)),
    ),
    "LayerNorm": Case(
        lambda: jn.pipe(jn.LayerNorm.init(None, 6, dtype=F64), jn.Tanh(), jn.Dense.init(keys(1)[0], 6, 2, dtype=F64)),
        lambda torch: torch.nn.Sequential(torch.nn.LayerNorm(6), torch.nn.Tanh(), torch.nn.Linear(6, 2)),
        lambda rng: rng.normal(size=(4, 6)),
    ),
    "Embedding": Case(
        lambda: jn.pipe(jn.Embedding.init(keys(2)[0], 9, 4, dtype=F64), jn.Tanh(), jn.Dense.init(keys(2)[1], 4, 3, dtype=F64)),
        lambda torch: torch.nn.Sequential(torch.nn.Embedding(9, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)),
        lambda rng: rng.integers(0, 9, size=(3, 5)),
    ),
    **{f"{cls.__name__}": _recurrent_case(cls, False) for cls in CELLS},
    **{f"Bidirectional-{cls.__name__}": _recurrent_case(cls, True) for cls in CELLS},
    **{f"{cls.__name__}-last": _recurrent_case(cls, False, return_sequences=False) for cls in CELLS},
    **{f"Bidirectional-{cls.__name__}-last": _recurrent_case(cls, True, return_sequences=False) for cls in CELLS},
    "MultiHeadAttention": Case(
        lambda: jn.pipe(
            jn.Dense.init(keys(3)[0], 3, 8, dtype=F64), jn.Tanh(), jn.MultiHeadAttention.init(keys(3)[1], 8, 2, dtype=F64),
            jn.Dense.init(keys(3)[2], 8, 2, dtype=F64),
        ),
        lambda torch: torch.nn.Sequential(
            torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.MultiheadAttention(8, 2, batch_first=True), torch.nn.Linear(8, 2),
        ),
        lambda rng: rng.normal(size=(3, 5, 3)),
    ),
    "MultiHeadAttention-causal": Case(
        lambda: jn.pipe(
            jn.Dense.init(keys(3)[0], 3, 8, dtype=F64), jn.Tanh(), jn.MultiHeadAttention.init(keys(3)[1], 8, 2, causal=True, dtype=F64),
            jn.Dense.init(keys(3)[2], 8, 2, dtype=F64),
        ),
        lambda torch: torch.nn.Sequential(
            torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.MultiheadAttention(8, 2, batch_first=True), torch.nn.Linear(8, 2),
        ),
        lambda rng: rng.normal(size=(3, 5, 3)),
        causal,
    ),
}


# =========================================================================== PyTorch's side
def torch_model(torch: Any, case: Case) -> Any:
    """The case's PyTorch model in float64, evaluation mode."""
    return case.module(torch).double().eval()


def run_torch(torch: Any, module: Any, X: np.ndarray, call: Callable[[Any, Any, Any], Any] = every_step) -> np.ndarray:
    """The output of a PyTorch ``Sequential``, calling the members that ``Sequential`` cannot
    call itself as jitnn's layers are (a recurrent module, attention) with ``call``: by
    default a recurrent module's output (all steps), attention with the sequence as query,
    key and value. Gradients stay enabled, so that attention takes the path that
    ``test_attention.py`` compares (not the fused inference kernel)."""

    def run(module: Any, x: Any) -> Any:
        for member in module:
            if isinstance(member, torch.nn.Sequential):
                x = run(member, x)
            elif isinstance(member, (torch.nn.MultiheadAttention, torch.nn.RNNBase)):
                x = call(torch, member, x)
            else:
                x = member(x)
        return x

    return run(module, torch.from_numpy(X)).detach().numpy()


def randomize_torch(torch: Any, module: Any, seed: int) -> None:
    """Every floating entry of ``module``'s state dict drawn anew in place (parameters in
    [-1, 1), running variances in [0.5, 1.5)); the batch counters set to 7, a value jitnn
    ignores."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, value in module.state_dict().items():  # tensors sharing the module's storage
            if not value.is_floating_point():
                value.fill_(7)
            elif name.endswith("running_var"):
                value.uniform_(0.5, 1.5)
            else:
                value.uniform_(-1.0, 1.0)


def pytorch_form(layer: jn.Layer, X: np.ndarray) -> Any:
    """What PyTorch's CPU kernels round beyond the bound of jitnn's formula (on exact input
    ``X``; both derived in ``test_context_layers.py`` and ``test_combinators.py``): batch
    normalization in evaluation mode computes ``x alpha + (shift - mean alpha)``, ``alpha =
    scale / std``, rounding against ``|x| + |mean|`` rather than ``|x - mean|``, ``gamma(4)`` of
    those magnitudes more; layer normalization ``(x rstd - mean rstd) scale + shift``,
    ``gamma(k + 6)`` of the same magnitudes. Every other layer here computes the same sums and
    functions as jitnn's in its own order, which the bound of each rule allows."""
    if isinstance(layer, jn.BatchNorm):
        shaped = lambda v: np.asarray(v, F64).reshape((1, -1) + (1,) * (X.ndim - 2))
        alpha = np.abs(shaped(layer.scale)) / np.sqrt(shaped(layer.running_var) + layer.eps)
        return tolerances.gamma(4, F64) * (np.abs(X) + np.abs(shaped(layer.running_mean))) * alpha
    if isinstance(layer, jn.LayerNorm):
        k = X.shape[-1]
        spread = np.abs(X) + np.abs(X.mean(axis=-1, keepdims=True))
        rstd = 1 / np.sqrt(X.var(axis=-1, keepdims=True) + layer.eps)
        return tolerances.gamma(k + 6, F64) * (spread * rstd * np.abs(layer.scale) + np.abs(layer.shift))
    return 0.0


def torch_bound(model: jn.Chain, X: np.ndarray) -> np.ndarray:
    """How far jitnn's float64 output and PyTorch's may be apart.

    Both compute the same sums in float64 in different orders (blocked products, another
    order of the terms): a sum of ``n`` terms in any order is within ``gamma(n) * sum |terms|``
    of the exact value (``gamma(n) = n u / (1 - n u)``, ``u = unit_roundoff(float64)``), and a
    library function within a few units in the last place. ``tolerances.forward_bound``
    carries those bounds, layer by layer, through the chain: each layer's rounding, and the
    errors already in its input times how much the layer can magnify them. jitnn's output is
    within that bound of the exact one; PyTorch's within the same bound plus, for the
    normalization layers, what its formula rounds beyond jitnn's (:func:`pytorch_form`),
    carried through the layers after them; so the two are within the sum of the two.
    Normalization layers come first in these models: their rules take exact input."""
    _, ours, _ = tolerances.forward_bound(model, X, F64)
    Y, theirs = X, 0.0
    for layer in model.layers:
        exact = Y
        Y, theirs, _ = tolerances.forward_bound(layer, exact, F64, theirs)
        theirs = theirs + pytorch_form(layer, exact)
    return ours + theirs


# =========================================================================== jitnn -> PyTorch
@pytest.mark.parametrize("name", list(CASES))
def test_state_dict_loads_into_pytorch_and_gives_its_output(name: str) -> None:
    torch = pytest.importorskip("torch")
    case = CASES[name]
    model = randomized(case.model(), seed=1)
    X = case.X(np.random.default_rng(2))
    sd = state_dict(model)
    module = torch_model(torch, case)
    assert list(sd) == list(module.state_dict())  # PyTorch's names, in PyTorch's order
    module.load_state_dict({key: torch.from_numpy(value) for key, value in sd.items()}, strict=True)
    tolerances.assert_within(model.forward(X), run_torch(torch, module, X, case.call), torch_bound(model, X), name)


# =========================================================================== PyTorch -> jitnn
@pytest.mark.parametrize("name", list(CASES))
def test_pytorch_state_dict_loads_round_trips_and_gives_its_output(name: str) -> None:
    torch = pytest.importorskip("torch")
    case = CASES[name]
    module = torch_model(torch, case)
    randomize_torch(torch, module, seed=3)
    theirs = {key: value.numpy().copy() for key, value in module.state_dict().items()}
    like = case.model()
    model = load_state_dict(like, module.state_dict())
    assert type(model) is type(like) and model.dtype == F64
    for path, leaf in jn.tree.leaves_with_paths(model):
        assert not leaf.flags.writeable and leaf.flags.c_contiguous and leaf.dtype == F64, path
    ours = state_dict(model)
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        if key.endswith("num_batches_tracked"):  # jitnn does not count batches: PyTorch's 7 is ignored, 0 given back
            assert value == 7 and ours[key].dtype == np.int64 and ours[key].shape == () and ours[key] == 0
            continue
        assert ours[key].dtype == value.dtype and ours[key].shape == value.shape, key
        np.testing.assert_array_equal(ours[key], value, err_msg=key)  # bit for bit
    X = case.X(np.random.default_rng(4))
    tolerances.assert_within(model.forward(X), run_torch(torch, module, X, case.call), torch_bound(model, X), name)


# =========================================================================== names
def test_nested_chains_nest_and_parameterless_layers_take_indices() -> None:
    k = keys(4, 5)
    model = jn.pipe(
        jn.Dense.init(k[0], 4, 6), jn.ReLU(), jn.Dropout(0.5),
        jn.pipe(jn.Dense.init(k[1], 6, 5), jn.Tanh(), jn.pipe(jn.Identity(), jn.LayerNorm.init(None, 5))),
        jn.Residual(jn.pipe(jn.ReLU(), jn.Sigmoid())),  # a composite without parameters: an index, no entries
        jn.Dense.init(k[2], 5, 2),
    )
    sd = state_dict(model)
    assert list(sd) == ["0.weight", "0.bias", "3.0.weight", "3.0.bias", "3.2.1.weight", "3.2.1.bias", "5.weight", "5.bias"]
    assert all(value.dtype == np.float32 for value in sd.values())
    np.testing.assert_array_equal(sd["3.0.weight"], model.layers[3].layers[0].W.T)
    np.testing.assert_array_equal(sd["3.2.1.bias"], model.layers[3].layers[2].layers[1].shift)
    torch = pytest.importorskip("torch")
    nn = torch.nn
    module = nn.Sequential(
        nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.5),
        nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Sequential(nn.Identity(), nn.LayerNorm(5))), nn.Identity(), nn.Linear(5, 2),
    )
    assert list(module.state_dict()) == list(sd)
    module.load_state_dict({key: torch.from_numpy(value) for key, value in sd.items()}, strict=True)


def test_a_single_layer_is_the_module_itself() -> None:
    dense = randomized(jn.Dense.init(keys(1)[0], 3, 2, dtype=F64))
    sd = state_dict(dense)
    assert list(sd) == ["weight", "bias"]
    assert load_state_dict(dense, sd) == dense
    bidirectional = jn.GRU.init(keys(1)[0], 2, 3, bidirectional=True)
    assert list(state_dict(bidirectional)) == [f"{name}_l0{suffix}" for suffix in ("", "_reverse") for name in
                                               ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert state_dict(jn.pipe(jn.ReLU(), jn.Flatten())) == {}


def test_arrays_are_contiguous_copies_in_the_model_dtype() -> None:
    model = randomized(CASES["BatchNorm-2d"].model()).layers
    model = jn.pipe(*(jn.tree.map(lambda a: a.astype(np.float32), layer) for layer in model))
    sd = state_dict(model)
    for key, value in sd.items():
        assert value.flags.c_contiguous and value.flags.owndata and value.flags.writeable, key
        assert value.dtype == (np.int64 if key.endswith("num_batches_tracked") else np.float32), key
        assert not any(np.shares_memory(value, leaf) for leaf in jn.tree.leaves(model)), key
    assert sd["0.num_batches_tracked"].shape == ()


def test_round_trip_within_jitnn_and_dtype_conversion() -> None:
    model = randomized(CASES["Conv2D"].model(), seed=6)
    assert load_state_dict(model, state_dict(model)) == model
    # float32 values become float64 exactly; float64 values become float32 by rounding
    narrow = {key: value.astype(np.float32) for key, value in state_dict(model).items()}
    widened = load_state_dict(model, narrow)
    assert widened.dtype == F64
    np.testing.assert_array_equal(widened.layers[0].W, narrow["0.weight"].astype(F64))
    model32 = jn.pipe(*(jn.tree.map(lambda a: a.astype(np.float32), layer) for layer in model.layers))
    rounded = load_state_dict(model32, state_dict(model))
    assert rounded.dtype == np.float32
    np.testing.assert_array_equal(rounded.layers[6].W, model.layers[6].W.astype(np.float32))
    half = load_state_dict(model32, {key: value.astype(np.float16) for key, value in state_dict(model).items()})
    np.testing.assert_array_equal(half.layers[6].b, model.layers[6].b.astype(np.float16).astype(np.float32))


def test_num_batches_tracked_is_ignored_or_may_be_missing() -> None:
    model = randomized(CASES["BatchNorm-1d"].model())
    sd = state_dict(model)
    for value in (np.array(123, np.int64), np.array([1.5, 2.0]), "anything"):
        assert load_state_dict(model, {**sd, "0.num_batches_tracked": value}) == model
    del sd["0.num_batches_tracked"]
    assert load_state_dict(model, sd) == model


# =========================================================================== refusals
def dense_model() -> jn.Chain:
    k = keys(2, 7)
    return randomized(jn.pipe(jn.Dense.init(k[0], 3, 4), jn.ReLU(), jn.Dense.init(k[1], 4, 2)))


def test_missing_extra_and_misshapen_entries_are_named() -> None:
    model = dense_model()
    sd = state_dict(model)
    missing = {key: value for key, value in sd.items() if key != "2.weight"}
    with pytest.raises(ValueError, match=r"load_state_dict: .*no entry '2\.weight' \(Dense at model\.layers\[2\], PyTorch's Linear\)"):
        load_state_dict(model, missing)
    with pytest.raises(ValueError, match=r"first of the 2 entries"):
        load_state_dict(model, {"0.bias": sd["0.bias"], "2.bias": sd["2.bias"]})
    with pytest.raises(ValueError, match=r"load_state_dict: .*entry '5\.weight' that like has no parameter"):
        load_state_dict(model, {**sd, "5.weight": sd["2.weight"]})
    # jitnn's own layout (n_in, n_out) where PyTorch's (out, in) belongs
    with pytest.raises(ValueError, match=r"load_state_dict: the entry '0\.weight' .* shape \(3, 4\) where \(4, 3\) was expected"):
        load_state_dict(model, {**sd, "0.weight": np.asarray(model.layers[0].W)})
    with pytest.raises(ValueError, match=r"'2\.bias' .* shape \(1, 2\) where \(2,\) was expected"):
        load_state_dict(model, {**sd, "2.bias": sd["2.bias"].reshape(1, 2)})


def test_non_floating_values_are_refused_by_name() -> None:
    model = dense_model()
    sd = state_dict(model)
    for bad in (np.ones((4, 3), np.int64), np.ones((4, 3), bool), np.ones((4, 3), np.complex128), np.empty((4, 3), object)):
        with pytest.raises(ValueError, match=rf"load_state_dict: the entry '0\.weight' .* dtype {bad.dtype} where floating-point"):
            load_state_dict(model, {**sd, "0.weight": bad})
    with pytest.raises(TypeError, match=r"entry '0\.bias' .* must be a NumPy array or a PyTorch tensor, got list"):
        load_state_dict(model, {**sd, "0.bias": [0.0] * 4})


def test_layers_without_pytorch_names_are_refused() -> None:
    k = keys(4, 8)
    cases = {
        "PositionalEmbedding at model.layers[1]": jn.pipe(jn.Embedding.init(k[0], 5, 4), jn.PositionalEmbedding.init(k[1], 6, 4)),
        "Residual at model.layers[1]": jn.pipe(jn.Dense.init(k[0], 3, 3), jn.Residual(jn.Dense.init(k[1], 3, 3))),
        "Add at model.layers[0].layers[1]": jn.pipe(jn.pipe(jn.ReLU(), jn.Add((jn.Dense.init(k[0], 3, 2), jn.Dense.init(k[1], 3, 2))))),
        "Concatenate at model.layers[0]": jn.pipe(jn.Concatenate((jn.Dense.init(k[0], 3, 2), jn.ReLU()))),
        "GRU at model.layers[0]": jn.pipe(attrs.evolve(jn.GRU.init(k[2], 2, 3), reverse=True)),
        "Bidirectional at model": jn.Bidirectional(jn.GRU.init(k[2], 2, 3), attrs.evolve(jn.LSTM.init(k[3], 2, 3), reverse=True)),
        "Bidirectional at model.layers[0]": jn.pipe(
            jn.Bidirectional(jn.RNN.init(k[2], 2, 3), attrs.evolve(jn.RNN.init(k[3], 2, 4), reverse=True)),
        ),
    }
    for where, model in cases.items():
        for call in (lambda: state_dict(model), lambda: load_state_dict(model, {})):
            with pytest.raises(TypeError, match=rf"^(load_)?state_dict: {re.escape(where)} "):
                call()
            with pytest.raises(TypeError, match="no PyTorch module with these names"):
                call()


def test_like_and_state_dict_must_be_what_they_say() -> None:
    sd = state_dict(dense_model())
    for wrong in ({"0.weight": 1}, None, np.ones(3)):
        with pytest.raises(TypeError, match="load_state_dict: like must be a jitnn layer"):
            load_state_dict(wrong, sd)
        with pytest.raises(TypeError, match="state_dict: model must be a jitnn layer"):
            state_dict(wrong)
    with pytest.raises(TypeError, match="load_state_dict: state_dict must be a mapping"):
        load_state_dict(dense_model(), list(sd.items()))


def test_pytorch_tensors_of_another_dtype_are_converted() -> None:
    torch = pytest.importorskip("torch")
    model = dense_model().layers
    model = jn.pipe(*(jn.tree.map(lambda a: a.astype(F64), layer) for layer in model))
    tensors = {key: torch.from_numpy(value).float() for key, value in state_dict(model).items()}
    loaded = load_state_dict(model, tensors)
    assert loaded.dtype == F64
    np.testing.assert_array_equal(loaded.layers[0].W, model.layers[0].W.astype(np.float32).astype(F64))
    with pytest.raises(ValueError, match=r"'2\.bias' .* dtype int32 where floating-point"):
        load_state_dict(model, {**tensors, "2.bias": torch.zeros(2, dtype=torch.int32)})
    with pytest.raises(TypeError, match=r"'2\.bias' .* cannot be read as a NumPy array"):
        load_state_dict(model, {**tensors, "2.bias": torch.zeros(2, dtype=torch.bfloat16)})
