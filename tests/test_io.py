"""save and load: bitwise round trips of models and optimizer states, the checks load makes,
refusal of damaged or foreign files, the atomic write, and the safetensors format."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import jitnn as jn
from jitnn.combinators import Concatenate, Residual
from jitnn.io import load, save

DAMAGED = "is not a jitnn checkpoint or is damaged"


# =========================================================================== trees
def randomized(tree, seed: int = 0):
    """``tree`` with every leaf replaced by random numbers in [0.5, 1.5) of its dtype, so no
    leaf keeps its (often all-zero) initial value."""
    rng = np.random.default_rng(seed)
    return jn.tree.map(lambda leaf: rng.uniform(0.5, 1.5, size=leaf.shape).astype(leaf.dtype), tree)


def mlp(dtype=np.float32):
    k1, k2 = jn.random.split(jn.random.key(0))
    return randomized(jn.pipe(jn.Dense.init(k1, 4, 8, dtype=dtype), jn.ReLU(), jn.Dense.init(k2, 8, 3, dtype=dtype)))


def cnn(dtype=np.float32):
    k1, k2 = jn.random.split(jn.random.key(1))
    return randomized(jn.pipe(
        jn.Conv2D.init(k1, 1, 4, 3, padding=1, dtype=dtype), jn.BatchNorm.init(None, 4, dtype=dtype), jn.ReLU(),
        jn.MaxPool2D(2), jn.Flatten(), jn.Dense.init(k2, 36, 3, dtype=dtype),
    ), seed=1)


def nested(dtype=np.float32):
    k = jn.random.split(jn.random.key(2), 5)
    return randomized(jn.pipe(
        jn.Dense.init(k[0], 4, 6, dtype=dtype),
        Residual(jn.pipe(jn.Dense.init(k[1], 6, 6, dtype=dtype), jn.Tanh())),
        Concatenate((jn.Dense.init(k[2], 6, 2, dtype=dtype), jn.pipe(jn.Dense.init(k[3], 6, 3, dtype=dtype), jn.ReLU()))),
        jn.Dense.init(k[4], 5, 3, dtype=dtype),
    ), seed=2)


MODELS = {
    "mlp-float32": lambda: mlp(np.float32),
    "mlp-float64": lambda: mlp(np.float64),
    "cnn-batchnorm-float32": lambda: cnn(np.float32),
    "cnn-batchnorm-float64": lambda: cnn(np.float64),
    "nested-residual-concatenate": lambda: nested(np.float64),
}
INPUT_SHAPES = {mlp: (4,), cnn: (1, 6, 6), nested: (4,)}


def trained_state(optimizer, make_model, dtype):
    """The optimizer's state after two updates on random data, with the model it belongs to."""
    model = make_model(dtype)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(6, *INPUT_SHAPES[make_model])).astype(dtype)
    T = rng.integers(0, 3, size=6)
    state = optimizer.init(model)
    for _ in range(2):
        _, grads = jn.value_and_grad(model, jn.SoftmaxCrossEntropy(), X, T)
        model, state = optimizer.update(model, grads, state)
    return model, state


def assert_same_leaves(got_tree, expected_tree):
    """Same structure and paths; every leaf the same bytes, dtype and shape."""
    jn.tree.check_same_structure(expected_tree, got_tree)
    got, expected = jn.tree.leaves_with_paths(got_tree), jn.tree.leaves_with_paths(expected_tree)
    assert [path for path, _ in got] == [path for path, _ in expected]
    for (path, array), (_, reference) in zip(got, expected):
        assert array.dtype == reference.dtype and array.shape == reference.shape, path
        assert np.array_equal(array, reference, equal_nan=array.dtype.kind in "fc"), path
        assert array.tobytes() == reference.tobytes(), path


def assert_bitwise_equal(loaded, original):
    """:func:`assert_same_leaves`, and every loaded array read-only, C-contiguous and owning
    its memory."""
    assert_same_leaves(loaded, original)
    for path, array in jn.tree.leaves_with_paths(loaded):
        assert array.flags.writeable is False, path
        assert array.flags.c_contiguous and array.flags.owndata, path


@pytest.fixture(params=[".npz", ".safetensors"])
def suffix(request) -> str:
    if request.param == ".safetensors":
        pytest.importorskip("safetensors")
    return request.param


def write_npz(path, arrays: dict) -> None:
    """An .npz written by NumPy itself (through a file object, so no suffix is added)."""
    with open(path, "wb") as file:
        np.savez(file, **arrays)


def leaves_dict(tree) -> dict:
    return dict(jn.tree.leaves_with_paths(tree))


# =========================================================================== round trips
@pytest.mark.parametrize("name", MODELS)
def test_models_round_trip_bitwise(tmp_path, suffix, name):
    model = MODELS[name]()
    path = tmp_path / f"model{suffix}"
    save(path, model)
    loaded = load(path, like=MODELS[name]())
    assert_bitwise_equal(loaded, model)
    assert type(loaded) is jn.Chain


def test_batchnorm_buffers_are_saved_and_restored(tmp_path, suffix):
    model = cnn()
    save(tmp_path / f"m{suffix}", model)
    fresh = jn.pipe(*[jn.BatchNorm.init(None, 4) if isinstance(layer, jn.BatchNorm) else layer for layer in model.layers])
    assert not np.array_equal(fresh.layers[1].running_var, model.layers[1].running_var)
    loaded = load(tmp_path / f"m{suffix}", fresh)
    assert loaded.layers[1].buffer_names == ("running_mean", "running_var")
    assert np.array_equal(loaded.layers[1].running_mean, model.layers[1].running_mean)
    assert np.array_equal(loaded.layers[1].running_var, model.layers[1].running_var)


@pytest.mark.parametrize("make_model", [mlp, cnn, nested], ids=["mlp", "cnn", "nested"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("optimizer", [jn.optim.adam(1e-2), jn.optim.momentum(0.1)], ids=["adam", "momentum"])
def test_optimizer_states_round_trip_bitwise(tmp_path, suffix, optimizer, dtype, make_model):
    model, state = trained_state(optimizer, make_model, dtype)
    assert int(state.count) == 2
    moments = [leaf for path, leaf in jn.tree.leaves_with_paths(state) if path != "count"]
    assert all(np.any(leaf != 0) for leaf in moments if leaf.size)  # the states are not their zero start
    path = tmp_path / f"state{suffix}"
    save(path, state)
    loaded = load(path, like=optimizer.init(make_model(dtype)))
    assert_bitwise_equal(loaded, state)
    assert type(loaded) is type(state)
    assert loaded.count.shape == () and loaded.count.dtype == np.int64 and int(loaded.count) == 2
    # the loaded state goes on training exactly as the original does
    X = np.random.default_rng(4).normal(size=(6, *INPUT_SHAPES[make_model])).astype(dtype)
    _, grads = jn.value_and_grad(model, jn.SoftmaxCrossEntropy(), X, np.zeros(6, dtype=np.int64))
    assert_same_leaves(optimizer.update(model, grads, loaded)[1], optimizer.update(model, grads, state)[1])


def test_special_values_and_dtypes_round_trip_bitwise(tmp_path, suffix):
    quiet_nan_with_payload = np.array([0x7FC00123], dtype=np.uint32).view(np.float32)
    tree = {
        "floats32": np.concatenate([quiet_nan_with_payload, np.array([-0.0, np.inf, -np.inf, 1e-45, np.finfo(np.float32).max], np.float32)]),
        "floats64": np.array([np.nan, -0.0, np.inf, 5e-324, np.pi]),
        "half": np.array([1.5, -2.25], dtype=np.float16),
        "ints": np.array([np.iinfo(np.int64).min, -1, np.iinfo(np.int64).max]),
        "bytes": np.arange(5, dtype=np.uint8),
        "flags": np.array([True, False, True]),
        "scalar": np.array(7, dtype=np.int64),
        "matrix": [np.asfortranarray(np.arange(6.0).reshape(2, 3))],
    }
    path = tmp_path / f"tree{suffix}"
    save(path, tree)
    loaded = load(path, like=tree)
    assert_bitwise_equal(loaded, tree)
    assert loaded["floats32"][:1].view(np.uint32)[0] == 0x7FC00123
    assert isinstance(loaded["matrix"], list) and loaded["matrix"][0].flags.c_contiguous


def test_npz_holds_one_array_per_leaf_keyed_by_field_path(tmp_path):
    model, state = trained_state(jn.optim.adam(1e-2), mlp, np.float32)
    save(tmp_path / "state.npz", state)
    with np.load(tmp_path / "state.npz", allow_pickle=False) as archive:
        assert archive.files == [path for path, _ in jn.tree.leaves_with_paths(state)]
        assert archive.files[:2] == ["count", "mu.layers.0.W"]
        assert archive["count"].shape == () and archive["count"].dtype == np.int64 and archive["count"] == 2
        assert np.array_equal(archive["nu.layers.2.b"], state.nu.layers[2].b)


def test_complex_leaves_round_trip_in_npz(tmp_path):
    tree = (np.array([1 + 2j, np.nan - 0j], dtype=np.complex128), np.array([3j], dtype=np.complex64))
    save(tmp_path / "c.npz", tree)
    assert_bitwise_equal(load(tmp_path / "c.npz", tree), tree)


def test_a_file_reloads_identically_in_a_new_process(tmp_path):
    model = nested()
    save(tmp_path / "model.npz", model)
    script = f"""
import hashlib, json, sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
import jitnn as jn
from jitnn.io import load
from test_io import nested
loaded = load({str(tmp_path / 'model.npz')!r}, like=jn.tree.map(lambda leaf: 0 * leaf, nested()))
print(json.dumps([[path, str(a.dtype), list(a.shape), hashlib.sha256(a.tobytes()).hexdigest(), a.flags.writeable]
                  for path, a in jn.tree.leaves_with_paths(loaded)]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert result.returncode == 0, result.stderr
    expected = [[path, str(a.dtype), list(a.shape), hashlib.sha256(a.tobytes()).hexdigest(), False]
                for path, a in jn.tree.leaves_with_paths(model)]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected


# =========================================================================== load's checks
def test_load_into_another_structure_names_the_first_differing_field(tmp_path):
    save(tmp_path / "m.npz", mlp())
    k1, k2 = jn.random.split(jn.random.key(5))
    no_activation = jn.pipe(jn.Dense.init(k1, 4, 8), jn.Dense.init(k2, 8, 3))
    with pytest.raises(ValueError, match=r"m\.npz' has no array 'layers\.1\.W', the first of the 2 leaves of like missing"):
        load(tmp_path / "m.npz", no_activation)
    narrower = jn.pipe(jn.Dense.init(k1, 4, 6), jn.ReLU(), jn.Dense.init(k2, 6, 3))
    with pytest.raises(ValueError, match=r"the array 'layers\.0\.W' has shape \(4, 8\) where \(4, 6\) was expected"):
        load(tmp_path / "m.npz", narrower)
    with pytest.raises(ValueError, match=r"the array 'layers\.0\.W' has dtype float32 where float64 was expected"):
        load(tmp_path / "m.npz", mlp(np.float64))
    with pytest.raises(ValueError, match=r"has no array 'count', the first of the 10 leaves"):
        load(tmp_path / "m.npz", jn.optim.adam(1e-3).init(mlp()))


def test_missing_key_is_named(tmp_path):
    arrays = leaves_dict(mlp())
    del arrays["layers.2.W"], arrays["layers.2.b"]
    write_npz(tmp_path / "m.npz", arrays)
    with pytest.raises(ValueError, match=r"has no array 'layers\.2\.W', the first of the 2 leaves of like missing from the file "
                                         r"\(it holds 'layers\.0\.W', 'layers\.0\.b' \(2 in all\)\)"):
        load(tmp_path / "m.npz", mlp())


def test_extra_key_is_named(tmp_path):
    arrays = leaves_dict(mlp()) | {"layers.3.W": np.zeros((3, 3), np.float32)}
    write_npz(tmp_path / "m.npz", arrays)
    with pytest.raises(ValueError, match=r"holds an array 'layers\.3\.W' that like has no leaf for \(1 such array"):
        load(tmp_path / "m.npz", mlp())


def test_wrong_dtype_is_named_with_expected_and_found(tmp_path):
    arrays = leaves_dict(mlp()) | {"layers.0.b": np.zeros(8, np.float64)}
    write_npz(tmp_path / "m.npz", arrays)
    with pytest.raises(ValueError, match=r"m\.npz': the array 'layers\.0\.b' has dtype float64 where float32 was expected$"):
        load(tmp_path / "m.npz", mlp())


def test_wrong_shape_is_named_with_expected_and_found(tmp_path):
    arrays = leaves_dict(mlp()) | {"layers.2.W": np.zeros((3, 8), np.float32)}
    write_npz(tmp_path / "m.npz", arrays)
    with pytest.raises(ValueError, match=r"the array 'layers\.2\.W' has shape \(3, 8\) where \(8, 3\) was expected$"):
        load(tmp_path / "m.npz", mlp())


def test_wrong_dtype_and_shape_are_both_named(tmp_path):
    write_npz(tmp_path / "m.npz", leaves_dict(mlp()) | {"layers.0.W": np.zeros(2, np.int32)})
    with pytest.raises(ValueError, match=r"'layers\.0\.W' has dtype int32 where float32 was expected and shape \(2,\) where \(4, 8\)"):
        load(tmp_path / "m.npz", mlp())


def test_a_bare_0d_count_is_checked_like_any_leaf(tmp_path):
    state = jn.optim.adam(1e-3).init(mlp())
    write_npz(tmp_path / "s.npz", leaves_dict(state) | {"count": np.array([0])})
    with pytest.raises(ValueError, match=r"the array 'count' has shape \(1,\) where \(\) was expected"):
        load(tmp_path / "s.npz", state)


# =========================================================================== damaged and foreign files
def damaged_files(tmp_path):
    save(tmp_path / "good.npz", mlp())
    good = (tmp_path / "good.npz").read_bytes()
    W = good.index(np.ascontiguousarray(mlp().layers[0].W).tobytes())  # the first parameter's data
    corrupted = bytearray(good)
    corrupted[W + 5] ^= 0xFF
    np.save(tmp_path / "plain.npy", np.zeros(3))
    return {
        "empty": (b"", "the file is empty"),
        "random bytes": (np.random.default_rng(0).bytes(300), "it is not an .npz archive"),
        "truncated": (good[: len(good) // 2], "File is not a zip file"),
        "truncated to its first bytes": (good[:3], "it is not an .npz archive"),
        "a flipped byte": (bytes(corrupted), "Bad CRC-32"),
        "an .npy file": ((tmp_path / "plain.npy").read_bytes(), r"begins with b'PK\\x03\\x04', this one with b'\\x93NUM'"),
        "a zip without arrays": (zip_with({"layers.0.W.npy": b"not an array"}), "the magic string is not correct"),
    }


def zip_with(members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("case", ["empty", "random bytes", "truncated", "truncated to its first bytes", "a flipped byte",
                                  "an .npy file", "a zip without arrays"])
def test_damaged_or_foreign_files_are_refused(tmp_path, case):
    data, reason = damaged_files(tmp_path)[case]
    (tmp_path / "bad.npz").write_bytes(data)
    with pytest.raises(ValueError, match=rf"load: '.*bad\.npz' {DAMAGED}: .*{reason}") as caught:
        load(tmp_path / "bad.npz", mlp())
    if case in ("truncated", "a flipped byte"):
        assert isinstance(caught.value.__cause__, zipfile.BadZipFile)


class Trap:
    """An object whose unpickling creates a folder: proof of whether a load executed code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_object_arrays_are_refused_and_never_unpickled(tmp_path):
    arrays = leaves_dict(mlp())
    write_npz(tmp_path / "m.npz", arrays | {"layers.0.W": np.array([object()], dtype=object)})
    with pytest.raises(ValueError, match=rf"m\.npz' {DAMAGED}: the array 'layers\.0\.W' holds Python objects \(dtype object\)"):
        load(tmp_path / "m.npz", mlp())
    # of the right shape, later in the file, with a payload that runs code when unpickled
    marker = tmp_path / "code-ran"
    trap = np.empty((8, 3), dtype=object)
    trap[...] = Trap(str(marker))
    write_npz(tmp_path / "trap.npz", arrays | {"layers.2.W": trap})
    with pytest.raises(ValueError, match=rf"{DAMAGED}: the array 'layers\.2\.W' holds Python objects"):
        load(tmp_path / "trap.npz", mlp())
    assert not marker.exists()
    with np.load(tmp_path / "trap.npz", allow_pickle=True) as archive:  # the trap is live: unpickling runs it
        archive["layers.2.W"]
    assert marker.is_dir()


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.npz"):
        load(tmp_path / "nowhere.npz", mlp())


# =========================================================================== argument checks
@pytest.mark.parametrize("path", [123, None, b"model.npz", ["model.npz"]])
def test_path_must_be_str_or_pathlike(path):
    with pytest.raises(TypeError, match=rf"save: path must be a str or os.PathLike naming a file, got {type(path).__name__}"):
        save(path, mlp())
    with pytest.raises(TypeError, match=rf"load: path must be a str or os.PathLike naming a file, got {type(path).__name__}"):
        load(path, mlp())


@pytest.mark.parametrize("tree", [None, 3, "weights", jn.ReLU(), {}, [jn.ReLU(), jn.Flatten()]])
def test_trees_without_array_leaves_are_refused(tmp_path, tree):
    save(tmp_path / "m.npz", mlp())
    name = type(tree).__name__
    with pytest.raises(TypeError, match=rf"save: tree must be a jitnn tree with array leaves .* got {name} with none"):
        save(tmp_path / "other.npz", tree)
    with pytest.raises(TypeError, match=rf"load: like must be a jitnn tree with array leaves .* got {name} with none"):
        load(tmp_path / "m.npz", tree)
    assert not (tmp_path / "other.npz").exists()


@pytest.mark.parametrize("leaf", [np.array([object()], dtype=object), np.array(["a"]), np.array([b"a"]),
                                  np.zeros(2, dtype=[("x", np.float32)]), np.array(["2024-01-01"], dtype="datetime64[D]")])
def test_leaves_of_non_numeric_dtype_are_refused_naming_the_path(tmp_path, leaf):
    tree = {"good": np.zeros(2), "nested": {"bad": leaf}}
    with pytest.raises(TypeError, match=rf"save: the leaf 'nested\.bad' has dtype {re.escape(str(leaf.dtype))}, which a checkpoint cannot hold"):
        save(tmp_path / "t.npz", tree)
    with pytest.raises(TypeError, match=r"load: the leaf 'nested\.bad' has dtype"):
        load(tmp_path / "t.npz", tree)
    assert os.listdir(tmp_path) == []


def test_colliding_paths_are_refused(tmp_path):
    tree = {"a": {"b": np.zeros(1)}, "a.b": np.ones(1)}
    with pytest.raises(ValueError, match=r"save: two leaves share the path 'a\.b'"):
        save(tmp_path / "t.npz", tree)


# =========================================================================== the write
@pytest.mark.parametrize("name", ["model.npz", "model.ckpt", "model"])
def test_the_file_lands_exactly_at_the_path_given(tmp_path, name):
    save(str(tmp_path / name), mlp())
    assert os.listdir(tmp_path) == [name]
    assert_bitwise_equal(load(str(tmp_path / name), mlp()), mlp())


def test_save_replaces_an_existing_file_and_leaves_no_temporary_files(tmp_path):
    save(tmp_path / "m.npz", mlp())
    save(tmp_path / "m.npz", nested())
    assert os.listdir(tmp_path) == ["m.npz"]
    assert_bitwise_equal(load(tmp_path / "m.npz", nested()), nested())


def test_a_new_file_gets_the_permissions_open_would_give(tmp_path):
    save(tmp_path / "m.npz", mlp())
    (tmp_path / "plain").write_bytes(b"")
    assert (tmp_path / "m.npz").stat().st_mode == (tmp_path / "plain").stat().st_mode
    os.chmod(tmp_path / "m.npz", 0o600)
    save(tmp_path / "m.npz", mlp())
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_save_leaves_the_existing_file_intact_and_no_temporary_files(tmp_path, monkeypatch, error):
    save(tmp_path / "m.npz", mlp())
    before = (tmp_path / "m.npz").read_bytes()
    write_array = np.lib.format.write_array
    calls = []

    def fail_on_the_second_array(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise error
        return write_array(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", fail_on_the_second_array)
    with pytest.raises(type(error)):
        save(tmp_path / "m.npz", nested())
    assert len(calls) == 2  # the failure came halfway through the write
    assert os.listdir(tmp_path) == ["m.npz"]
    assert (tmp_path / "m.npz").read_bytes() == before
    monkeypatch.undo()
    assert_bitwise_equal(load(tmp_path / "m.npz", mlp()), mlp())


def test_a_failed_save_to_a_new_path_leaves_nothing(tmp_path, monkeypatch):
    def failing_fsync(handle):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        save(tmp_path / "m.npz", mlp())
    assert os.listdir(tmp_path) == []


def test_saving_onto_a_folder_is_refused(tmp_path):
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(IsADirectoryError, match=r"save: '.*folder\.npz' is a folder"):
        save(tmp_path / "folder.npz", mlp())
    assert os.listdir(tmp_path) == ["folder.npz"] and os.listdir(tmp_path / "folder.npz") == []


def test_saving_into_a_missing_folder_fails_without_creating_it(tmp_path):
    with pytest.raises(FileNotFoundError):
        save(tmp_path / "missing" / "m.npz", mlp())
    assert os.listdir(tmp_path) == []


# =========================================================================== safetensors
def test_safetensors_keys_and_0d_count(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    _, state = trained_state(jn.optim.adam(1e-2), mlp, np.float32)
    save(tmp_path / "s.safetensors", state)
    assert os.listdir(tmp_path) == ["s.safetensors"]
    stored = safetensors_numpy.load_file(str(tmp_path / "s.safetensors"))
    assert sorted(stored) == sorted(path for path, _ in jn.tree.leaves_with_paths(state))
    assert stored["count"].shape == () and stored["count"].dtype == np.int64 and int(stored["count"]) == 2
    assert_bitwise_equal(load(tmp_path / "s.safetensors", jn.optim.adam(1e-2).init(mlp())), state)


def test_safetensors_refusals(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    model = mlp()
    arrays = leaves_dict(model)
    path = tmp_path / "m.safetensors"
    save(path, model)
    good = path.read_bytes()
    for data, reason in [(b"", "the file is empty"), (np.random.default_rng(0).bytes(300), "Error while deserializing"),
                         (good[: len(good) // 2], "Error while deserializing")]:
        path.write_bytes(data)
        with pytest.raises(ValueError, match=rf"load: '.*m\.safetensors' {DAMAGED}: {reason}"):
            load(path, model)
    cases = [
        ({k: v for k, v in arrays.items() if k != "layers.0.b"}, r"has no array 'layers\.0\.b', the first of the 1 leaves"),
        (arrays | {"extra": np.zeros(1, np.float32)}, r"holds an array 'extra' that like has no leaf for"),
        (arrays | {"layers.2.b": np.zeros(3, np.float64)}, r"the array 'layers\.2\.b' has dtype float64 where float32 was expected"),
        (arrays | {"layers.2.b": np.zeros(4, np.float32)}, r"the array 'layers\.2\.b' has shape \(4,\) where \(3,\) was expected"),
    ]
    for stored, message in cases:
        safetensors_numpy.save_file({k: np.ascontiguousarray(v) for k, v in stored.items()}, str(path))
        with pytest.raises(ValueError, match=message):
            load(path, model)
    with pytest.raises(TypeError, match=r"save: the leaf 'z' has dtype complex64, which safetensors cannot hold .* \.npz instead"):
        save(tmp_path / "c.safetensors", {"z": np.zeros(2, np.complex64)})
    with pytest.raises(TypeError, match=r"the leaf 'big' has dtype >f4, which safetensors cannot hold"):
        save(tmp_path / "c.safetensors", {"big": np.zeros(2, ">f4")})
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


def test_safetensors_without_the_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError, match=r"save: reading or writing a \.safetensors file needs the safetensors package: pip install safetensors"):
        save(tmp_path / "m.safetensors", mlp())
    (tmp_path / "m.safetensors").write_bytes(b"0" * 16)
    with pytest.raises(ImportError, match=r"load: .*pip install safetensors"):
        load(tmp_path / "m.safetensors", mlp())
    assert os.listdir(tmp_path) == ["m.safetensors"]
