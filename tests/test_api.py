"""Good and bad input for the public API: trees, keys, initializers, records, composition,
the passes, SGD, minibatches, fit, a user-defined layer and the gradient checker."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import numba
import numpy as np
import pytest

import jitnn as jn
import tolerances
from user_layers import Scale, ScaleShape, _scale_forward, _scale_grad_input, _scale_grad_params

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- shared pieces
def keys(n: int, seed: int = 0) -> tuple[jn.random.Key, ...]:
    return jn.random.split(jn.random.key(seed), n)


@pytest.fixture(scope="module")
def model() -> jn.Chain:
    """Dense(3, 4) -> ReLU -> [Dense(4, 2) -> Tanh]."""
    k1, k2 = keys(2, seed=10)
    return jn.pipe(jn.Dense.init(k1, 3, 4), jn.ReLU(), jn.pipe(jn.Dense.init(k2, 4, 2), jn.Tanh()))


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return jn.random.normal(jn.random.key(11), (6, 3))


def copy_leaves(tree) -> list[np.ndarray]:
    return [leaf.copy() for leaf in jn.tree.leaves(tree)]


def assert_leaves_bitwise_equal(tree, saved: list[np.ndarray]) -> None:
    now = jn.tree.leaves(tree)
    assert len(now) == len(saved)
    for a, b in zip(now, saved):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


MODEL_PATHS = ["layers.0.W", "layers.0.b", "layers.2.layers.0.W", "layers.2.layers.0.b"]


# =========================================================================== jn.tree
def test_leaves_with_paths_of_a_nested_chain(model):
    found = jn.tree.leaves_with_paths(model)
    assert [path for path, _ in found] == MODEL_PATHS
    assert found[0][1] is model.layers[0].W
    assert found[3][1] is model.layers[2].layers[0].b
    assert [leaf.shape for leaf in jn.tree.leaves(model)] == [(3, 4), (4,), (4, 2), (2,)]


def test_leaves_of_containers():
    tree = {"a": np.ones(2), "b": (np.zeros(3), [np.ones((2, 2)), {"c": np.arange(3.0)}]), "n": 7}
    found = jn.tree.leaves_with_paths(tree)
    assert [path for path, _ in found] == ["a", "b.0", "b.1.0", "b.1.1.c"]
    assert found[2][1] is tree["b"][1][0]
    assert len(jn.tree.leaves(tree)) == 4


def test_leaves_of_a_bare_array_and_an_empty_tree():
    a = np.ones(3)
    assert jn.tree.leaves_with_paths(a) == [("", a)]
    assert jn.tree.leaves(jn.ReLU()) == []
    assert jn.tree.leaves(()) == []


def test_map_builds_a_new_model_and_never_mutates(model):
    saved = copy_leaves(model)
    doubled = jn.tree.map(lambda a: a * 2, model)
    assert type(doubled) is jn.Chain and doubled is not model
    assert doubled.layers[1] == jn.ReLU()
    assert isinstance(doubled.layers[2], jn.Chain) and doubled.layers[2] is not model.layers[2]
    for new, old in zip(jn.tree.leaves(doubled), saved):
        np.testing.assert_array_equal(new, old * 2)
        assert not new.flags.writeable
    assert_leaves_bitwise_equal(model, saved)
    jn.tree.check_same_structure(model, doubled)


def test_map_keeps_configuration_fields():
    tree = jn.pipe(jn.LeakyReLU(0.25), jn.Dense.init(jn.random.key(0), 2, 2))
    out = jn.tree.map(lambda a: a + 1, tree)
    assert out.layers[0] == jn.LeakyReLU(0.25)
    np.testing.assert_array_equal(out.layers[1].b, np.ones(2, np.float32))


def test_map_over_several_trees(model):
    summed = jn.tree.map(lambda a, b, c: a + b + c, model, model, model)
    tripled = jn.tree.map(lambda a: a * 3, model)
    for a, b in zip(jn.tree.leaves(summed), jn.tree.leaves(tripled)):
        np.testing.assert_array_equal(a, b)  # a + a is exact, so (a + a) + a and a * 3 are both 3a rounded once


def test_map_with_paths_passes_paths_in_leaves_order(model):
    seen = []
    out = jn.tree.map_with_paths(lambda path, a, b: (seen.append(path), a - b)[1], model, model)
    assert seen == MODEL_PATHS
    assert all(not leaf.any() for leaf in jn.tree.leaves(out))


def test_map_over_containers_keeps_their_types_and_does_not_mutate():
    Pair = collections.namedtuple("Pair", "left right")
    inner = [np.ones(2), np.zeros(2)]
    tree = {"a": np.ones(3), "b": (np.zeros(1), inner), "p": Pair(np.ones(1), np.full(1, 5.0)), "n": "keep"}
    out = jn.tree.map(lambda a: a + 1, tree)
    assert set(out) == {"a", "b", "p", "n"} and out["n"] == "keep"
    assert type(out["b"]) is tuple and type(out["b"][1]) is list and type(out["p"]) is Pair
    assert out["b"][1] is not inner
    np.testing.assert_array_equal(out["p"].right, [6.0])
    np.testing.assert_array_equal(out["b"][1][1], [1.0, 1.0])
    # the input is untouched
    assert tree["b"][1] is inner and inner[1][0] == 0.0 and tree["a"][0] == 1.0


def test_unflatten_round_trip(model):
    new_leaves = [np.full(leaf.shape, i, leaf.dtype) for i, leaf in enumerate(jn.tree.leaves(model))]
    out = jn.tree.unflatten(model, new_leaves)
    assert type(out) is jn.Chain
    for i, leaf in enumerate(jn.tree.leaves(out)):
        assert (leaf == i).all()
    assert jn.tree.unflatten(model, jn.tree.leaves(model)) == model


@pytest.mark.parametrize("count", [0, 3, 5])
def test_unflatten_with_a_wrong_number_of_leaves(model, count):
    with pytest.raises(ValueError, match=f"4 leaves, got {count}"):
        jn.tree.unflatten(model, [np.zeros(1)] * count)


def test_check_same_structure_accepts_equal_structures(model):
    jn.tree.check_same_structure(model, jn.tree.map(np.zeros_like, model))
    jn.tree.check_same_structure({"a": (np.ones(2),)}, {"a": (np.zeros(2),)})


def structure_mismatches(model):
    k1, k2 = keys(2, seed=12)
    inner = model.layers[2]
    return [
        (
            jn.pipe(model.layers[0], model.layers[1], jn.pipe(jn.Dense.init(k1, 4, 3), jn.Tanh())),
            "layers.2.layers.0.W", "(4, 2)", "(4, 3)",
        ),
        (jn.tree.map(lambda a: a.astype(np.float64), model), "layers.0.W", "float32", "float64"),
        (jn.pipe(model.layers[0], jn.Tanh(), inner), "layers.1", "ReLU", "Tanh"),
        (jn.pipe(model.layers[0], model.layers[1]), "layers", "3", "2"),
        (jn.pipe(model.layers[0], model.layers[1], jn.Dense.init(k2, 4, 2)), "layers.2", "Chain", "Dense"),
    ]


@pytest.mark.parametrize("case", range(5))
def test_check_same_structure_names_the_path(model, case):
    other, path, *fragments = structure_mismatches(model)[case]
    with pytest.raises(ValueError) as info:
        jn.tree.check_same_structure(model, other)
    message = str(info.value)
    assert f"at {path}:" in message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    "a, b, path",
    [
        ({"a": np.ones(2), "b": np.ones(1)}, {"a": np.ones(2), "c": np.ones(1)}, "the root"),
        ({"a": (np.ones(2), np.ones(2))}, {"a": (np.ones(2),)}, "a"),
        ({"a": [np.ones(2)]}, {"a": (np.ones(2),)}, "a"),
        ({"a": {"b": np.ones(2)}}, {"a": {"b": np.ones(3)}}, "a.b"),
        ((np.ones(1), np.ones(2)), (np.ones(1), 2.0), "1"),
    ],
)
def test_container_mismatches_name_the_path(a, b, path):
    with pytest.raises(ValueError, match=f"at {path}:"):
        jn.tree.check_same_structure(a, b)


def test_map_refuses_trees_of_another_structure(model):
    other = jn.pipe(model.layers[0], model.layers[1])
    with pytest.raises(ValueError, match="at layers:"):
        jn.tree.map(lambda a, b: a + b, model, other)
    with pytest.raises(ValueError, match="at layers.1:"):
        jn.tree.map(lambda a, b: a + b, model, jn.pipe(model.layers[0], jn.Sigmoid(), model.layers[2]))


# =========================================================================== jn.random
def test_same_key_same_numbers():
    a, b = jn.random.key(42), jn.random.key(42)
    assert a == b and hash(a) == hash(b)
    np.testing.assert_array_equal(jn.random.normal(a, (3, 4)), jn.random.normal(b, (3, 4)))
    np.testing.assert_array_equal(jn.random.uniform(a, (5,)), jn.random.uniform(b, (5,)))
    np.testing.assert_array_equal(jn.random.permutation(a, 20), jn.random.permutation(b, 20))
    np.testing.assert_array_equal(jn.random.bernoulli(a, 0.5, (30,)), jn.random.bernoulli(b, 0.5, (30,)))
    assert jn.random.split(a, 3) == jn.random.split(b, 3)


def test_sampling_does_not_advance_any_state():
    k = jn.random.key(3)
    first = jn.random.normal(k, 10)
    jn.random.uniform(k, 100)
    np.random.seed(0)
    np.testing.assert_array_equal(jn.random.normal(k, 10), first)


def test_different_keys_give_different_numbers():
    k0, k1 = jn.random.key(0), jn.random.key(1)
    assert k0 != k1
    assert not np.array_equal(jn.random.normal(k0, 50), jn.random.normal(k1, 50))
    c1, c2 = jn.random.split(k0)
    assert not np.array_equal(jn.random.normal(c1, 50), jn.random.normal(c2, 50))
    assert not np.array_equal(jn.random.normal(c1, 50), jn.random.normal(k0, 50))


@pytest.mark.parametrize("n", [1, 2, 5, 17])
def test_split_returns_n_distinct_keys(n):
    parent = jn.random.key(9)
    children = jn.random.split(parent, n)
    assert isinstance(children, tuple) and len(children) == n
    assert all(isinstance(child, jn.random.Key) for child in children)
    assert len(set(children) | {parent}) == n + 1
    draws = {jn.random.normal(child, 4).tobytes() for child in children}
    assert len(draws) == n


def test_split_defaults_to_two_and_is_pure():
    parent = jn.random.key(9)
    assert len(jn.random.split(parent)) == 2
    assert jn.random.split(parent) == jn.random.split(parent)
    assert jn.random.split(parent) != jn.random.split(jn.random.split(parent)[0])


def test_sample_shapes_and_dtypes():
    k = jn.random.key(5)
    assert jn.random.normal(k, (2, 3)).shape == (2, 3)
    assert jn.random.normal(k, 4).shape == (4,)
    assert jn.random.normal(k, (2, 3)).dtype == np.float32
    assert jn.random.normal(k, (2,), dtype=np.float64).dtype == np.float64
    assert jn.random.uniform(k, (2, 3), dtype=np.float64).dtype == np.float64
    assert jn.random.permutation(k, 5).dtype == np.int64
    assert jn.random.bernoulli(k, 0.5, (2, 2)).dtype == bool
    assert jn.random.normal(k, (0, 3)).shape == (0, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_uniform_range(dtype):
    u = jn.random.uniform(jn.random.key(6), (20000,), -2.0, 3.0, dtype=dtype)
    assert u.dtype == dtype
    assert u.min() >= -2.0 and u.max() < 3.0
    assert u.min() < -1.9 and u.max() > 2.9
    assert abs(u.mean() - 0.5) < 0.05


def test_normal_moments():
    z = jn.random.normal(jn.random.key(7), (40000,), dtype=np.float64)
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1.0) < 0.03


def test_permutation_is_a_permutation():
    p = jn.random.permutation(jn.random.key(8), 100)
    np.testing.assert_array_equal(np.sort(p), np.arange(100))
    assert not np.array_equal(p, np.arange(100))
    assert jn.random.permutation(jn.random.key(8), 0).shape == (0,)


def test_bernoulli_frequency_and_ends():
    k = jn.random.key(9)
    assert abs(jn.random.bernoulli(k, 0.3, (20000,)).mean() - 0.3) < 0.02
    assert not jn.random.bernoulli(k, 0.0, (100,)).any()
    assert jn.random.bernoulli(k, 1.0, (100,)).all()


@pytest.mark.parametrize("seed", [-1, -(2**40), 1.5, 2.0, True, False, "0", None, np.float64(1.0)])
def test_bad_seeds(seed):
    with pytest.raises((TypeError, ValueError), match="seed"):
        jn.random.key(seed)


@pytest.mark.parametrize("seed", [0, 1, 2**31, 2**64 + 5, np.int32(7), np.uint64(9)])
def test_good_seeds(seed):
    k = jn.random.key(seed)
    assert k == jn.random.key(int(seed))


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2", None])
def test_split_bad_n(n):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        jn.random.split(jn.random.key(0), n)


@pytest.mark.parametrize("bad_key", [0, None, (1, 2, 3, 4), "key"])
def test_functions_refuse_non_keys(bad_key):
    for fn in (
        lambda: jn.random.split(bad_key),
        lambda: jn.random.normal(bad_key, 3),
        lambda: jn.random.uniform(bad_key, 3),
        lambda: jn.random.permutation(bad_key, 3),
        lambda: jn.random.bernoulli(bad_key, 0.5, 3),
    ):
        with pytest.raises(TypeError, match="Key"):
            fn()


def test_bad_sampling_arguments():
    k = jn.random.key(0)
    with pytest.raises(ValueError, match="shape"):
        jn.random.normal(k, (2, -1))
    with pytest.raises(ValueError, match="shape"):
        jn.random.uniform(k, (2.5,))
    with pytest.raises(ValueError, match="low < high"):
        jn.random.uniform(k, 3, 1.0, 1.0)
    with pytest.raises(ValueError, match="low < high"):
        jn.random.uniform(k, 3, 2.0, 1.0)
    for dtype in (np.int32, np.float16, "nonsense"):
        with pytest.raises(TypeError, match="float32 or float64"):
            jn.random.normal(k, 3, dtype=dtype)
        with pytest.raises(TypeError, match="float32 or float64"):
            jn.random.uniform(k, 3, dtype=dtype)
    for p in (-0.1, 1.5, np.nan):
        with pytest.raises(ValueError, match="p must lie in"):
            jn.random.bernoulli(k, p, 3)
    for n in (-1, 2.5, True):
        with pytest.raises(ValueError, match="n must be a non-negative integer"):
            jn.random.permutation(k, n)


def test_key_refuses_bad_words():
    with pytest.raises(ValueError):
        jn.random.Key((1, 2, 3))
    with pytest.raises(ValueError):
        jn.random.Key((1, 2, 3, 2**32))
    with pytest.raises(ValueError):
        jn.random.Key((1, 2, 3, -1))


DRAW_SCRIPT = textwrap.dedent(
    """
    import json, numpy as np, jitnn as jn
    key = jn.random.key(2024)
    k1, k2, k3 = jn.random.split(key, 3)
    d = jn.Dense.init(k3, 3, 2, dtype=np.float64)
    print(json.dumps({
        "words": list(key.words),
        "split": [list(k.words) for k in (k1, k2, k3)],
        "normal": jn.random.normal(k1, 5, dtype=np.float64).tolist(),
        "uniform": jn.random.uniform(k2, 5, -1.0, 1.0, dtype=np.float64).tolist(),
        "permutation": jn.random.permutation(k1, 12).tolist(),
        "bernoulli": jn.random.bernoulli(k2, 0.4, 12).tolist(),
        "dense": d.W.ravel().tolist(),
    }))
    """
)


def draw_in_subprocess(hash_seed: str) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    result = subprocess.run(
        [sys.executable, "-c", DRAW_SCRIPT], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_determinism_across_processes():
    first, second = draw_in_subprocess("1"), draw_in_subprocess("12345")
    assert first == second
    # and the same numbers in this process
    key = jn.random.key(2024)
    k1, k2, k3 = jn.random.split(key, 3)
    assert first["words"] == list(key.words)
    assert first["split"] == [list(k.words) for k in (k1, k2, k3)]
    assert first["normal"] == jn.random.normal(k1, 5, dtype=np.float64).tolist()
    assert first["permutation"] == jn.random.permutation(k1, 12).tolist()
    assert first["dense"] == jn.Dense.init(k3, 3, 2, dtype=np.float64).W.ravel().tolist()
    assert len(set(map(tuple, first["split"]))) == 3


# =========================================================================== jn.init
INITIALIZERS = [
    jn.init.glorot_uniform, jn.init.glorot_normal, jn.init.he_uniform, jn.init.he_normal, jn.init.lecun_normal,
]


@pytest.mark.parametrize("initializer", INITIALIZERS + [jn.init.zeros], ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", [(3, 5), (4, 2, 3, 3)])
def test_initializer_shapes_and_dtypes(initializer, shape):
    k = jn.random.key(1)
    W = initializer(k, shape)
    assert W.shape == shape and W.dtype == np.float32
    W64 = initializer(k, shape, dtype=np.float64)
    assert W64.shape == shape and W64.dtype == np.float64
    assert np.isfinite(W).all()
    np.testing.assert_array_equal(initializer(k, shape), W)
    if initializer is not jn.init.zeros:
        assert not np.array_equal(initializer(jn.random.key(2), shape), W)
        assert np.unique(W).size > W.size // 2


@pytest.mark.parametrize("initializer", INITIALIZERS + [jn.init.zeros], ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", [np.int32, np.float16, "nonsense"])
def test_initializer_bad_dtype(initializer, dtype):
    with pytest.raises(TypeError, match="float32 or float64"):
        initializer(jn.random.key(0), (3, 3), dtype=dtype)


def test_zeros_are_zeros():
    assert not jn.init.zeros(jn.random.key(0), (3, 4)).any()
    assert not jn.init.zeros(None, (2,)).any()


@pytest.mark.parametrize(
    "initializer, limit",
    [(jn.init.glorot_uniform, lambda fi, fo: np.sqrt(6 / (fi + fo))), (jn.init.he_uniform, lambda fi, fo: np.sqrt(6 / fi))],
    ids=["glorot_uniform", "he_uniform"],
)
@pytest.mark.parametrize("shape", [(50, 30), (8, 4, 3, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_uniform_initializers_stay_within_their_limit(initializer, limit, shape, dtype):
    a = limit(*jn.init.fans(shape))
    W = initializer(jn.random.key(3), shape, dtype=dtype)
    tolerance = np.finfo(dtype).eps * a
    assert np.abs(W).max() <= a + tolerance
    assert W.max() > 0.9 * a and W.min() < -0.9 * a


@pytest.mark.parametrize(
    "initializer, std",
    [
        (jn.init.he_normal, lambda fi, fo: np.sqrt(2 / fi)),
        (jn.init.glorot_normal, lambda fi, fo: np.sqrt(2 / (fi + fo))),
        (jn.init.lecun_normal, lambda fi, fo: np.sqrt(1 / fi)),
    ],
    ids=["he_normal", "glorot_normal", "lecun_normal"],
)
@pytest.mark.parametrize("shape", [(400, 300), (32, 16, 5, 5)])
def test_normal_initializers_have_the_right_spread(initializer, std, shape):
    W = initializer(jn.random.key(4), shape, dtype=np.float64)
    expected = std(*jn.init.fans(shape))
    assert abs(W.std() / expected - 1) < 0.05
    assert abs(W.mean()) < 0.05 * expected


@pytest.mark.parametrize(
    "shape, expected",
    [((3, 4), (3, 4)), ((784, 256), (784, 256)), ((8, 3, 5, 5), (75, 200)), ((6, 2, 3), (6, 18)), ((2, 3, 1, 1), (3, 2))],
)
def test_fans(shape, expected):
    assert jn.init.fans(shape) == expected


@pytest.mark.parametrize("shape", [(), (5,)])
def test_fans_needs_two_axes(shape):
    with pytest.raises(ValueError, match="two axes"):
        jn.init.fans(shape)


# =========================================================================== Dense and records
@pytest.mark.parametrize("dtype", [np.float32, np.float64, "float64", np.dtype("float32")])
def test_dense_init_shapes_and_dtypes(dtype):
    d = jn.Dense.init(jn.random.key(0), 5, 3, dtype=dtype)
    assert d.W.shape == (5, 3) and d.b.shape == (3,)
    assert d.W.dtype == np.dtype(dtype) and d.b.dtype == np.dtype(dtype) and d.dtype == np.dtype(dtype)
    assert (d.n_in, d.n_out) == (5, 3)
    assert not d.b.any() and d.W.any()
    assert np.abs(d.W).max() <= np.sqrt(6 / 8) * (1 + 1e-6)


def test_dense_init_default_dtype_is_float32():
    assert jn.Dense.init(jn.random.key(0), 2, 2).dtype == np.float32


def test_dense_init_same_key_same_layer():
    a = jn.Dense.init(jn.random.key(1), 6, 4)
    b = jn.Dense.init(jn.random.key(1), 6, 4)
    c = jn.Dense.init(jn.random.key(2), 6, 4)
    assert a == b and a is not b
    assert a != c


def test_dense_init_with_other_initializers():
    k = jn.random.key(1)
    d = jn.Dense.init(k, 6, 4, weight_init=jn.init.he_normal, bias_init=lambda key, shape, dtype: np.ones(shape, dtype))
    weight_key, _ = jn.random.split(k)
    np.testing.assert_array_equal(d.W, jn.init.he_normal(weight_key, (6, 4)))
    np.testing.assert_array_equal(d.b, np.ones(4, np.float32))


def test_dense_from_arrays_copies_and_freezes():
    W = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.ones(3, np.float32)
    d = jn.Dense(W=W, b=b)
    W[0, 0] = 100.0
    b[:] = 7.0
    assert d.W[0, 0] == 0.0 and (d.b == 1.0).all()
    assert not d.W.flags.writeable and not d.b.flags.writeable
    with pytest.raises(ValueError):
        d.W[0, 0] = 1.0
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        d.W = W


def test_dense_from_lists_and_views():
    d = jn.Dense(W=[[1.0, 2.0], [3.0, 4.0]], b=[0.5, 0.5])
    assert d.W.dtype == np.float64 and d.W.shape == (2, 2)
    big = np.arange(16, dtype=np.float32).reshape(4, 4)
    e = jn.Dense(W=big[::2, ::2], b=big[0, :2])
    assert e.W.flags.c_contiguous and not e.W.flags.writeable
    big[0, 0] = -1.0
    assert e.W[0, 0] == 0.0 and e.b[0] == 0.0


def test_records_compare_by_value():
    d = jn.Dense.init(jn.random.key(2), 3, 2)
    same = jn.Dense(W=d.W.copy(), b=d.b.copy())
    assert d == same
    W = d.W.copy()
    W[1, 1] += 1.0
    assert d != jn.Dense(W=W, b=d.b)
    assert d != jn.Dense(W=d.W.astype(np.float64), b=d.b.astype(np.float64))
    assert d != jn.ReLU()
    assert jn.ReLU() == jn.ReLU() and jn.ReLU() != jn.Tanh()
    assert jn.LeakyReLU(0.1) == jn.LeakyReLU(0.1) and jn.LeakyReLU(0.1) != jn.LeakyReLU(0.2)
    assert jn.pipe(d, jn.ReLU()) == jn.pipe(same, jn.ReLU())
    assert jn.pipe(d, jn.ReLU()) != jn.pipe(d, jn.Tanh())


def nan_dense() -> jn.Dense:
    return jn.Dense(W=np.full((2, 2), np.nan, np.float32), b=np.zeros(2, np.float32))


def test_records_with_nan_equal_themselves():
    assert nan_dense() == nan_dense()


def test_records_are_hashable_or_not_consistently():
    d = jn.Dense.init(jn.random.key(2), 3, 2)
    pairs = [
        (d, jn.Dense(W=d.W.copy(), b=d.b.copy())),
        (jn.ReLU(), jn.ReLU()),
        (jn.LeakyReLU(0.3), jn.LeakyReLU(0.3)),
        (jn.pipe(d, jn.ReLU()), jn.pipe(jn.Dense(W=d.W.copy(), b=d.b.copy()), jn.ReLU())),
    ]
    for a, b in pairs:
        assert a == b
        try:
            hash_a = hash(a)
        except TypeError:
            with pytest.raises(TypeError):
                hash(b)
        else:
            assert hash_a == hash(b), type(a).__name__
            assert len({a, b}) == 1


def test_evolve_makes_a_copy():
    d = jn.Dense.init(jn.random.key(2), 3, 2)
    new_W = np.zeros((3, 2), np.float32)
    e = attrs.evolve(d, W=new_W)
    assert e is not d and type(e) is jn.Dense
    assert not e.W.any() and d.W.any()
    assert e.b is d.b
    assert not e.W.flags.writeable
    with pytest.raises(ValueError, match="Dense"):
        attrs.evolve(d, W=np.zeros((3, 5), np.float32))
    with pytest.raises(TypeError, match="Dense"):
        attrs.evolve(d, W=np.zeros((3, 2), np.int64))


def test_repr_shows_dtype_and_shape_not_data():
    d = jn.Dense(W=np.full((60, 70), 123.456, np.float32), b=np.full(70, 987.5, np.float32))
    text = repr(d)
    assert "Dense" in text and "float32" in text and "60, 70" in text and "70" in text
    assert "123" not in text and "987" not in text
    assert len(text) < 80
    chain_text = repr(jn.pipe(d, jn.ReLU()))
    assert "Chain" in chain_text and "ReLU" in chain_text and "123" not in chain_text and len(chain_text) < 120


# =========================================================================== composition and passes
@pytest.fixture(scope="module")
def three_layers() -> tuple[jn.Layer, jn.Layer, jn.Layer]:
    k1, k2 = keys(2, seed=13)
    return jn.Dense.init(k1, 3, 5), jn.GELU(), jn.Dense.init(k2, 5, 2)


def test_pipe_equals_compose_reversed(three_layers, X):
    a, b, c = three_layers
    piped, composed = jn.pipe(a, b, c), jn.compose(c, b, a)
    assert piped == composed
    assert piped.layers == (a, b, c)
    expected = c.forward(b.forward(a.forward(X)))
    np.testing.assert_array_equal(piped.forward(X), expected)
    np.testing.assert_array_equal(composed(X), expected)


def test_chains_nest(three_layers, X):
    a, b, c = three_layers
    flat = jn.pipe(a, b, c)
    nested = jn.pipe(jn.pipe(a, b), c)
    assert isinstance(nested.layers[0], jn.Chain)
    np.testing.assert_array_equal(nested.forward(X), flat.forward(X))
    assert nested != flat
    deeper = jn.pipe(jn.pipe(jn.pipe(a)), jn.pipe(b, jn.pipe(c)))
    np.testing.assert_array_equal(deeper.forward(X), flat.forward(X))
    assert deeper.output_shape((3,)) == (2,) and deeper.output_shape((4, 3)) == (4, 2) and deeper.input_shape == (3,)


def test_chain_grad_record_is_a_chain_of_member_grads(three_layers, X):
    a, b, c = three_layers
    model = jn.pipe(a, jn.pipe(b, c))
    dY = jn.random.normal(jn.random.key(14), (X.shape[0], 2))
    grads = model.grad_params(X, dY)
    assert type(grads) is jn.Chain and type(grads.layers[1]) is jn.Chain
    jn.tree.check_same_structure(model, grads)
    # by hand, layer by layer
    H = a.forward(X)
    G = b.forward(H)
    dG = c.grad_input(G, dY)
    dH = b.grad_input(H, dG)
    assert grads.layers[0] == a.grad_params(X, dH)
    assert grads.layers[1].layers[0] == b == b.grad_params(H, dG)
    assert grads.layers[1].layers[1] == c.grad_params(G, dY)
    np.testing.assert_array_equal(model.grad_input(X, dY), a.grad_input(X, dH))
    # and the generic passes agree
    Y, trace = jn.forward(model, X)
    np.testing.assert_array_equal(Y, model.forward(X))
    pass_grads, dX = jn.backward(model, trace, dY)
    assert pass_grads == grads
    np.testing.assert_array_equal(dX, a.grad_input(X, dH))
    assert all(not leaf.flags.writeable for leaf in jn.tree.leaves(pass_grads))


def test_dense_gradients_match_numpy(X):
    d = jn.Dense.init(jn.random.key(15), 3, 4, dtype=np.float64)
    dY = jn.random.normal(jn.random.key(16), (X.shape[0], 4), dtype=np.float64)
    X64 = X.astype(np.float64)
    # the same products and sums in NumPy's order and in jitnn's: each within its bound
    _, eY, bound = tolerances.layer_bounds(d, X64, dY, np.float64)
    tolerances.assert_within(d.forward(X64), X64 @ d.W + d.b, 2 * eY, "forward")
    tolerances.assert_within(d.grad_input(X64, dY), dY @ d.W.T, 2 * bound.edX, "grad_input")
    g = d.grad_params(X64, dY)
    assert type(g) is jn.Dense
    tolerances.assert_within(g.W, X64.T @ dY, 2 * bound.egrads[0], "dW")
    tolerances.assert_within(g.b, dY.sum(axis=0), 2 * bound.egrads[1], "db")


def test_parameterless_grad_params_returns_itself(X):
    relu = jn.ReLU()
    assert relu.grad_params(X, np.ones_like(X)) is relu


@pytest.mark.parametrize(
    "loss, targets",
    [
        (jn.SoftmaxCrossEntropy(), lambda n: np.arange(n) % 2),
        (jn.MeanSquaredError(), lambda n: np.linspace(-1, 1, 2 * n).reshape(n, 2)),
        (jn.BinaryCrossEntropy(), lambda n: (np.arange(2 * n).reshape(n, 2) % 3 == 0).astype(np.float32)),
    ],
    ids=["cross-entropy", "mse", "bce"],
)
def test_value_and_grad_equals_forward_loss_backward(three_layers, X, loss, targets):
    model = jn.pipe(*three_layers)
    T = targets(X.shape[0])
    value, grads = jn.value_and_grad(model, loss, X, T)
    Y, trace = jn.forward(model, X)
    assert isinstance(value, float)
    assert value == loss.value(Y, T)
    expected, _ = jn.backward(model, trace, loss.grad(Y, T))
    assert grads == expected
    assert all(leaf.dtype == np.float32 for leaf in jn.tree.leaves(grads))


def test_passes_leave_inputs_alone(three_layers, X):
    model = jn.pipe(*three_layers)
    saved_X, saved_model = X.copy(), copy_leaves(model)
    Y, trace = jn.forward(model, X)
    jn.backward(model, trace, np.ones_like(Y))
    jn.value_and_grad(model, jn.MeanSquaredError(), X, np.zeros_like(Y))
    np.testing.assert_array_equal(X, saved_X)
    assert_leaves_bitwise_equal(model, saved_model)


# =========================================================================== SGD
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lr", [0.0, 0.1, 1.7])
def test_sgd_update_is_p_minus_lr_g(dtype, lr):
    k1, k2, k3 = keys(3, seed=20)
    params = jn.pipe(jn.Dense.init(k1, 4, 3, dtype=dtype), jn.ReLU(), jn.Dense.init(k2, 3, 2, dtype=dtype))
    grad_keys = iter(jn.random.split(k3, 4))
    grads = jn.tree.map(lambda p: jn.random.normal(next(grad_keys), p.shape, dtype=dtype), params)
    opt = jn.optim.sgd(lr)
    state = opt.init(params)
    saved_params, saved_grads = copy_leaves(params), copy_leaves(grads)
    saved_state = attrs.evolve(state) if attrs.has(type(state)) else state

    new_params, new_state = opt.update(params, grads, state)

    assert type(new_params) is jn.Chain and new_params.layers[1] == jn.ReLU()
    for new, p, g in zip(jn.tree.leaves(new_params), saved_params, saved_grads):
        assert new.dtype == dtype and new.shape == p.shape
        expected = p - lr * g
        if dtype == np.float64:
            np.testing.assert_array_equal(new, expected)
        else:
            # jitnn: p - lr g in float64, rounded once to float32; NumPy: lr rounded to float32,
            # then the product and the difference in float32
            tolerances.assert_within(new, expected, tolerances.sgd_numpy_bound(p, g, lr, np.float32))
        assert not new.flags.writeable
    assert_leaves_bitwise_equal(params, saved_params)
    assert_leaves_bitwise_equal(grads, saved_grads)
    assert state == saved_state and int(state.count) == 0
    assert type(new_state) is jn.optim.SGDState and int(new_state.count) == 1


def test_sgd_on_a_plain_dict_tree():
    params = {"w": np.ones((2, 2)), "rest": (np.zeros(3),)}
    grads = {"w": np.full((2, 2), 2.0), "rest": (np.ones(3),)}
    opt = jn.optim.sgd(0.5)
    new, _ = opt.update(params, grads, opt.init(params))
    np.testing.assert_array_equal(new["w"], np.zeros((2, 2)))
    np.testing.assert_array_equal(new["rest"][0], np.full(3, -0.5))
    assert params["w"][0, 0] == 1.0


def test_sgd_step_lowers_the_loss(three_layers, X):
    model = jn.pipe(*three_layers)
    loss = jn.SoftmaxCrossEntropy()
    T = np.arange(X.shape[0]) % 2
    before, grads = jn.value_and_grad(model, loss, X, T)
    opt = jn.optim.sgd(0.05)
    model, _ = opt.update(model, grads, opt.init(model))
    after, _ = jn.value_and_grad(model, loss, X, T)
    assert after < before


@pytest.mark.parametrize("lr", [-0.1, -1e-12, np.nan, np.inf, -np.inf])
def test_sgd_bad_learning_rate(lr):
    with pytest.raises(ValueError, match="learning_rate"):
        jn.optim.sgd(lr)


@pytest.mark.parametrize("lr", ["0.1", None, 1 + 2j, [0.1], True])
def test_sgd_learning_rate_of_the_wrong_type(lr):
    with pytest.raises(TypeError, match="learning_rate"):
        jn.optim.sgd(lr)


@pytest.mark.parametrize("lr", [0, 0.5, np.float32(0.25), np.float64(0.1), 3])
def test_sgd_good_learning_rate(lr):
    assert jn.optim.sgd(lr).learning_rate == float(lr)


def grads_mismatches(params):
    k1, k2 = keys(2, seed=21)
    return [
        (jn.pipe(params.layers[0], params.layers[1], jn.Dense.init(k1, 3, 5)), "layers.2.W"),
        (jn.tree.map(lambda a: a.astype(np.float64), params), "layers.0.W"),
        (jn.pipe(params.layers[0], params.layers[1]), "layers"),
        (jn.pipe(params.layers[0], jn.Tanh(), params.layers[2]), "layers.1"),
        (jn.pipe(params.layers[0], params.layers[1], jn.pipe(params.layers[2])), "layers.2"),
    ]


@pytest.mark.parametrize("case", range(5))
def test_sgd_refuses_grads_of_another_structure(case):
    k1, k2 = keys(2, seed=22)
    params = jn.pipe(jn.Dense.init(k1, 4, 3), jn.ReLU(), jn.Dense.init(k2, 3, 2))
    grads, path = grads_mismatches(params)[case]
    opt = jn.optim.sgd(0.1)
    with pytest.raises(ValueError) as info:
        opt.update(params, grads, opt.init(params))
    message = str(info.value)
    assert path in message, message


def test_sgd_mismatch_message_gives_both_shapes():
    k1, k2 = keys(2, seed=22)
    params = jn.pipe(jn.Dense.init(k1, 4, 3), jn.ReLU(), jn.Dense.init(k2, 3, 2))
    grads = jn.pipe(params.layers[0], params.layers[1], jn.Dense.init(k1, 3, 5))
    opt = jn.optim.sgd(0.1)
    with pytest.raises(ValueError, match=r"layers\.2\.W.*\(3, 5\).*\(3, 2\)"):
        opt.update(params, grads, opt.init(params))


@pytest.mark.parametrize("state", [None, (), {}, "state", jn.ReLU()])
def test_sgd_wrong_state_type(state):
    params = jn.Dense.init(jn.random.key(0), 2, 2)
    with pytest.raises(TypeError, match="state"):
        jn.optim.sgd(0.1).update(params, params, state)


def test_train_step_is_value_and_grad_then_update(three_layers, X):
    model = jn.pipe(*three_layers)
    loss, opt = jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.1)
    T = np.arange(X.shape[0]) % 2
    state = opt.init(model)
    new_model, new_state, value = jn.train_step(model, state, loss, opt, X, T)
    expected_value, grads = jn.value_and_grad(model, loss, X, T)
    expected_model, _ = opt.update(model, grads, state)
    assert value == expected_value
    assert new_model == expected_model


# =========================================================================== batches
def numbered(n: int, width: int = 2) -> tuple[np.ndarray, np.ndarray]:
    T = np.arange(n)
    X = np.repeat(T[:, None].astype(np.float32), width, axis=1) + np.arange(width, dtype=np.float32) / 10
    return X, T


@pytest.mark.parametrize("n, batch_size", [(10, 3), (12, 4), (7, 10), (1, 1), (33, 8)])
def test_every_example_once_per_epoch(n, batch_size):
    X, T = numbered(n)
    out = list(jn.batches(jn.random.key(0), X, T, batch_size))
    sizes = [len(t) for _, t in out]
    assert sizes == [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    seen = np.concatenate([t for _, t in out])
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))
    for xb, tb in out:
        np.testing.assert_array_equal(xb, X[tb])
        assert xb.flags.c_contiguous and tb.flags.c_contiguous
    assert len(out) == jn.data.n_batches(n, batch_size)


def test_batches_shuffle_by_key():
    X, T = numbered(50)
    order = lambda key: np.concatenate([t for _, t in jn.batches(key, X, T, 8)])
    first = order(jn.random.key(1))
    np.testing.assert_array_equal(first, order(jn.random.key(1)))
    assert not np.array_equal(first, np.arange(50))
    assert not np.array_equal(first, order(jn.random.key(2)))


@pytest.mark.parametrize("key", [None, jn.random.key(3)])
def test_batches_without_shuffle_keep_order(key):
    X, T = numbered(10)
    out = list(jn.batches(key, X, T, 4, shuffle=False))
    assert [t.tolist() for _, t in out] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    np.testing.assert_array_equal(out[2][0], X[8:])


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_drop_last(shuffle):
    X, T = numbered(10)
    out = list(jn.batches(jn.random.key(4), X, T, 4, shuffle=shuffle, drop_last=True))
    assert [len(t) for _, t in out] == [4, 4]
    assert len(set(np.concatenate([t for _, t in out]).tolist())) == 8
    assert list(jn.batches(jn.random.key(4), X, T, 11, shuffle=shuffle, drop_last=True)) == []
    assert jn.data.n_batches(10, 4, drop_last=True) == 2


def scribble(batch: np.ndarray) -> None:
    """Write into a batch as a user might (in-place augmentation); a read-only batch refuses."""
    try:
        batch += 100
    except ValueError:
        assert not batch.flags.writeable


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_do_not_alias_the_data(shuffle):
    """Writing into a batch must not write into the caller's data: a batch is either a fresh
    array or a read-only view, whether or not the examples are shuffled."""
    X, T = numbered(9)
    saved_X, saved_T = X.copy(), T.copy()
    for xb, tb in jn.batches(jn.random.key(5), X, T, 4, shuffle=shuffle):
        scribble(xb)
        scribble(tb)
    np.testing.assert_array_equal(X, saved_X)
    np.testing.assert_array_equal(T, saved_T)


def test_batches_of_multidimensional_data():
    X = np.arange(6 * 2 * 3, dtype=np.float32).reshape(6, 2, 3)
    T = np.arange(6 * 2).reshape(6, 2)
    out = list(jn.batches(jn.random.key(6), X, T, 4))
    assert [xb.shape for xb, _ in out] == [(4, 2, 3), (2, 2, 3)]
    assert [tb.shape for _, tb in out] == [(4, 2), (2, 2)]


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "4", None])
def test_batches_bad_batch_size(batch_size):
    X, T = numbered(5)
    with pytest.raises(ValueError, match="batch_size"):
        list(jn.batches(jn.random.key(0), X, T, batch_size))


def test_batches_mismatched_lengths():
    X, _ = numbered(5)
    with pytest.raises(ValueError, match="5.*4"):
        list(jn.batches(jn.random.key(0), X, np.arange(4), 2))
    with pytest.raises(ValueError):
        list(jn.batches(jn.random.key(0), X, np.int64(3), 2))


def test_batches_shuffle_needs_a_key():
    X, T = numbered(5)
    with pytest.raises(TypeError, match="Key"):
        list(jn.batches(None, X, T, 2))


# =========================================================================== fit
def blobs(n: int = 200, seed: int = 30) -> tuple[np.ndarray, np.ndarray]:
    T = np.arange(n) % 2
    X = jn.random.normal(jn.random.key(seed), (n, 2)) * 0.5 + np.where(T[:, None] == 1, 1.5, -1.5).astype(np.float32)
    return X.astype(np.float32), T


@pytest.fixture(scope="module")
def small_classifier() -> jn.Chain:
    k1, k2 = keys(2, seed=31)
    return jn.pipe(jn.Dense.init(k1, 2, 8), jn.ReLU(), jn.Dense.init(k2, 8, 2))


def test_fit_lowers_the_loss_on_a_separable_problem(small_classifier):
    X, T = blobs()
    result = jn.fit(small_classifier, jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.1), X, T, key=jn.random.key(0), epochs=6, batch_size=16)
    assert isinstance(result, jn.FitResult)
    assert len(result.history) == 6 and all(isinstance(v, float) for v in result.history)
    assert all(b < a for a, b in zip(result.history, result.history[1:])), result.history
    assert result.history[-1] < 0.25 * result.history[0]
    assert (result.model.forward(X).argmax(axis=1) == T).mean() > 0.97
    jn.tree.check_same_structure(small_classifier, result.model)
    assert isinstance(result.state, jn.optim.SGDState)


def test_fit_is_deterministic_for_a_key(small_classifier):
    X, T = blobs(64)
    run = lambda seed: jn.fit(
        small_classifier, jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.1), X, T, key=jn.random.key(seed), epochs=2, batch_size=8
    )
    first, second, other = run(1), run(1), run(2)
    assert first.history == second.history
    assert first.model == second.model
    assert first.model != other.model


def test_fit_leaves_model_and_data_alone(small_classifier):
    X, T = blobs(32)
    saved = copy_leaves(small_classifier), X.copy(), T.copy()
    jn.fit(small_classifier, jn.MeanSquaredError(), jn.optim.sgd(0.1), X, np.eye(2)[T], key=jn.random.key(0), epochs=1, batch_size=8)
    assert_leaves_bitwise_equal(small_classifier, saved[0])
    np.testing.assert_array_equal(X, saved[1])
    np.testing.assert_array_equal(T, saved[2])


def test_fit_zero_epochs_returns_the_model(small_classifier):
    X, T = blobs(16)
    result = jn.fit(small_classifier, jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.1), X, T, key=jn.random.key(0), epochs=0)
    assert result.history == () and result.model == small_classifier


def test_fit_callback_sees_every_epoch(small_classifier):
    X, T = blobs(16)
    calls = []
    result = jn.fit(
        small_classifier, jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.1), X, T, key=jn.random.key(0), epochs=3,
        batch_size=4, callback=lambda epoch, model, value: calls.append((epoch, value)),
    )
    assert calls == list(enumerate(result.history))


@pytest.mark.parametrize("compiled", [True, False])
def test_fit_stops_after_the_epoch_whose_callback_returns_true(small_classifier, compiled):
    X, T = blobs(16)
    run = dict(key=jn.random.key(0), batch_size=4, compiled=compiled)
    stopped = jn.fit(small_classifier, jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.1), X, T, epochs=10,
                     callback=lambda epoch, model, value: epoch == 2, **run)
    assert len(stopped.history) == 3
    three = jn.fit(small_classifier, jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.1), X, T, epochs=3, **run)
    assert stopped.history == three.history  # the same three epochs, then nothing
    for a, b in zip(jn.tree.leaves(stopped.model), jn.tree.leaves(three.model)):
        np.testing.assert_array_equal(a, b)
    # only True stops: a truthy value that is not True (a list, 1) does not
    kept = jn.fit(small_classifier, jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.1), X, T, epochs=4,
                  callback=lambda epoch, model, value: [epoch], **run)
    assert len(kept.history) == 4


@pytest.mark.parametrize("epochs", [-1, 1.5, True, "2", None])
def test_fit_bad_epochs(small_classifier, epochs):
    X, T = blobs(16)
    with pytest.raises(ValueError, match="epochs"):
        jn.fit(small_classifier, jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.1), X, T, key=jn.random.key(0), epochs=epochs)


def test_fit_bad_model_or_loss(small_classifier):
    X, T = blobs(16)
    opt = jn.optim.sgd(0.1)
    with pytest.raises(TypeError, match="model"):
        jn.fit(lambda x: x, jn.SoftmaxCrossEntropy(), opt, X, T, key=jn.random.key(0))
    with pytest.raises(TypeError, match="loss"):
        jn.fit(small_classifier, "cross-entropy", opt, X, T, key=jn.random.key(0))
    with pytest.raises(ValueError, match="batch_size"):
        jn.fit(small_classifier, jn.SoftmaxCrossEntropy(), opt, X, T, key=jn.random.key(0), batch_size=0)
    with pytest.raises(ValueError, match="label"):
        jn.fit(small_classifier, jn.SoftmaxCrossEntropy(), opt, X, T + 5, key=jn.random.key(0))


# =========================================================================== a user-defined layer
# Scale (tests/user_layers.py) and three variants whose gradients are wrong on purpose.
@numba.njit(cache=True)
def _scale_grad_input_doubled(X, dY, s):
    """Wrong on purpose: twice the true dX."""
    return dY * s + dY * s


@numba.njit(cache=True)
def _scale_grad_input_one_bad_element(X, dY, s):
    """Wrong on purpose: the true dX except at [2, 1]."""
    dX = dY * s
    dX[2, 1] += 1.0
    return dX


@numba.njit(cache=True)
def _scale_grad_params_wrong(X, dY, s):
    """Wrong on purpose: forgets X."""
    return (dY.sum(axis=0),)


@jn.layer
class ScaleDoubledInputGrad(ScaleShape):
    s: np.ndarray = jn.param()
    kernels = jn.Kernels(_scale_forward, _scale_grad_input_doubled, _scale_grad_params)


@jn.layer
class ScaleOneBadElement(ScaleShape):
    s: np.ndarray = jn.param()
    kernels = jn.Kernels(_scale_forward, _scale_grad_input_one_bad_element, _scale_grad_params)


@jn.layer
class ScaleWrongParamGrad(ScaleShape):
    s: np.ndarray = jn.param()
    kernels = jn.Kernels(_scale_forward, _scale_grad_input, _scale_grad_params_wrong)


S = np.array([0.5, -2.0, 1.5], np.float32)


def test_custom_layer_is_a_layer():
    layer = Scale(s=S)
    assert isinstance(layer, jn.Layer)
    assert Scale in jn.registered_layers()
    assert layer.param_names == ("s",) and layer.dtype == np.float32
    assert not layer.s.flags.writeable
    assert layer == Scale(s=S.copy()) and "float32[3]" in repr(layer)
    assert [path for path, _ in jn.tree.leaves_with_paths(layer)] == ["s"]


def test_custom_layer_answers(X):
    layer = Scale(s=S)
    dY = jn.random.normal(jn.random.key(40), X.shape)
    # the kernels' products are NumPy's, one correctly rounded multiplication each
    np.testing.assert_array_equal(layer.forward(X), X * S)
    np.testing.assert_array_equal(layer.grad_input(X, dY), dY * S)
    g = layer.grad_params(X, dY)
    assert type(g) is Scale
    # the same products summed over the batch in two orders: 2 gamma(n - 1) of their magnitudes
    terms = X * dY
    tolerances.assert_within(g.s, terms.sum(axis=0), 2 * tolerances.gamma(len(X) - 1, terms.dtype) * np.abs(terms.astype(np.float64)).sum(axis=0))


def test_custom_layer_validation_comes_free(X):
    layer = Scale(s=S)
    with pytest.raises(ValueError, match=r"Scale.*\(3,\).*\(4,\)"):
        layer.forward(np.ones((2, 4), np.float32))
    with pytest.raises(TypeError, match="Scale"):
        layer.forward(np.ones((2, 3), np.int64))
    with pytest.raises(TypeError, match="Scale"):
        Scale(s=np.ones(3, np.int32))
    model = jn.pipe(jn.ReLU(), layer)
    with pytest.raises(ValueError, match=r"Scale at model\.layers\[1\]"):
        model.forward(np.ones((2, 5), np.float32))


def test_custom_layer_composes(X):
    k = jn.random.key(41)
    dense = jn.Dense.init(k, 3, 3)
    model = jn.pipe(dense, Scale(s=S), jn.Tanh())
    # the same product and the same scaling; then two float32 tanh (jitnn's, NumPy's), each
    # within tolerances.LIBRARY roundings of the exact value
    expected = np.tanh(dense.forward(X) * S)
    bound = 2 * tolerances.LIBRARY * tolerances.unit_roundoff(np.float32) * np.abs(expected.astype(np.float64))
    tolerances.assert_within(model.forward(X), expected, bound)
    grads = model.grad_params(X, np.ones((X.shape[0], 3), np.float32))
    assert type(grads.layers[1]) is Scale
    with pytest.raises(ValueError, match=r"Scale.*\(3,\).*\(4,\)"):
        jn.pipe(jn.Dense.init(k, 3, 4), Scale(s=S))


def test_custom_layer_passes_check_grads(X):
    jn.testing.check_grads(Scale(s=S), X)
    jn.testing.check_grads(jn.pipe(jn.Dense.init(jn.random.key(42), 3, 3), Scale(s=S), jn.Sigmoid()), X)


def test_custom_layer_trains_with_sgd():
    k1, k2 = keys(2, seed=43)
    s_true = np.array([2.0, -1.0, 0.5], np.float32)
    X = jn.random.normal(k1, (256, 3))
    T = X * s_true
    model = Scale(s=np.ones(3, np.float32))
    result = jn.fit(model, jn.MeanSquaredError(), jn.optim.sgd(0.5), X, T, key=k2, epochs=15, batch_size=32)
    assert type(result.model) is Scale
    assert result.history[-1] < 1e-3 * result.history[0]
    np.testing.assert_allclose(result.model.s, s_true, atol=1e-2)


def test_layer_without_kernels_is_refused():
    with pytest.raises(TypeError, match="NoKernels.*kernels"):

        @jn.layer
        class NoKernels:
            s: np.ndarray = jn.param()

    with pytest.raises(TypeError, match="TupleKernels"):

        @jn.layer
        class TupleKernels:
            kernels = (_scale_forward, _scale_grad_input, _scale_grad_params)


def test_layer_with_parameters_but_no_grad_params_kernel_is_refused():
    with pytest.raises(TypeError, match="NoParamGrad.*grad_params"):

        @jn.layer
        class NoParamGrad:
            s: np.ndarray = jn.param()
            kernels = jn.Kernels(_scale_forward, _scale_grad_input)


def test_a_factored_kernel_that_does_not_fit_the_layer_is_refused():
    factors = jn.Factored(_scale_grad_params, ("s",))
    with pytest.raises(TypeError, match=r"NotAFactored: Kernels.factored must be a jitnn.Factored, got tuple"):

        @jn.layer
        class NotAFactored:
            s: np.ndarray = jn.param()
            kernels = jn.Kernels(_scale_forward, _scale_grad_input, _scale_grad_params, factored=(_scale_grad_params, ("s",)))

    for names in [("t",), ()]:
        with pytest.raises(TypeError, match=r"UnknownFactor: Factored.params must name some of its parameters \('s',\)"):

            @jn.layer
            class UnknownFactor:
                s: np.ndarray = jn.param()
                kernels = jn.Kernels(_scale_forward, _scale_grad_input, _scale_grad_params, factored=jn.Factored(_scale_grad_params, names))

    with pytest.raises(TypeError, match="OnlyFactored: Kernels.factored needs the plain grad_params kernel"):

        @jn.layer
        class OnlyFactored:
            s: np.ndarray = jn.param()
            kernels = jn.Kernels(_scale_forward, _scale_grad_input, residuals=jn.Residuals(_scale_forward, None, _scale_grad_params), factored=factors)


def test_require_shape():
    jn.require_shape((3, 4), (3, 4))
    jn.require_shape([3], (3,))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        jn.require_shape((4, 3), (3, 4))


# =========================================================================== check_grads catches mistakes
def test_check_grads_catches_a_doubled_input_gradient(X):
    with pytest.raises(AssertionError, match=r"ScaleDoubledInputGrad.*grad_input.*worst element"):
        jn.testing.check_grads(ScaleDoubledInputGrad(s=S), X)


def test_check_grads_names_the_worst_element(X):
    with pytest.raises(AssertionError) as info:
        jn.testing.check_grads(ScaleOneBadElement(s=S), X)
    message = str(info.value)
    assert "ScaleOneBadElement" in message and "grad_input" in message
    assert "worst element [2, 1]" in message, message


def test_check_grads_catches_a_wrong_parameter_gradient(X):
    with pytest.raises(AssertionError, match=r"ScaleWrongParamGrad.*grad_params s.*worst element"):
        jn.testing.check_grads(ScaleWrongParamGrad(s=S), X)


def test_check_grads_names_the_position_of_a_wrong_member(X):
    model = jn.pipe(jn.Dense.init(jn.random.key(44), 3, 3), ScaleWrongParamGrad(s=S))
    with pytest.raises(AssertionError, match=r"grad_params layers\.1\.s"):
        jn.testing.check_grads(model, X)


def test_check_grads_refuses_a_non_layer(X):
    with pytest.raises(TypeError, match="layer"):
        jn.testing.check_grads(lambda x: x, X)


def test_tree_map_keeps_a_zero_dimensional_leaf_an_array():
    tree = {"scalar": np.array(2.0), "vector": np.ones(3)}
    doubled = jn.tree.map(lambda a: 10 * a, tree)  # 10 * a 0-d array is a NumPy scalar
    assert isinstance(doubled["scalar"], np.ndarray) and doubled["scalar"].shape == ()
    assert float(doubled["scalar"]) == 20.0
    opt = jn.optim.sgd(0.1)
    new, _ = opt.update(tree, doubled, opt.init(tree))
    assert float(new["scalar"]) == 0.0
