"""jitnn.datasets: IDX files built here byte by byte, and scikit-learn's 8x8 digits."""

from __future__ import annotations

import gzip
import importlib.machinery
import re
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from jitnn import datasets

# The IDX type codes, written out independently of the module under test.
CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}


# --------------------------------------------------------------------------- helpers
def raises(exc: type[Exception], *fragments: str):
    """``pytest.raises`` that also requires every literal ``fragment`` in the message."""
    pattern = "".join(f"(?=.*{re.escape(fragment)})" for fragment in fragments)
    return pytest.raises(exc, match=re.compile(pattern, re.DOTALL))


def header(code: int, shape: tuple[int, ...]) -> bytes:
    """An IDX header: two zero bytes, the type code, ndim, one big-endian uint32 per dimension."""
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` encoded as an IDX file: header, then the items big-endian in C order."""
    big_endian = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder(">"))
    return header(CODES[array.dtype], array.shape) + big_endian.tobytes()


def write(path: Path, content: bytes, compressed: bool = False) -> Path:
    path.write_bytes(gzip.compress(content) if compressed else content)
    return path


def sample(dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """Values that expose a wrong byte order or sign: extremes, negatives, non-integers."""
    n = int(np.prod(shape))
    if dtype.kind == "f":
        values = np.array([-1.5, 0.0, 2.0**-20, 1e30 if dtype.itemsize == 4 else 1e300, np.inf, -np.inf, np.nan, 3.25])
    else:
        info = np.iinfo(dtype)
        values = np.array([info.min, info.max, 0, 1, -1 if info.min < 0 else 2, 0x0102 % (info.max + 1), 77])
    return np.resize(values, n).astype(dtype).reshape(shape)


# --------------------------------------------------------------------------- load_idx round trips
@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5)], ids=["1d", "3d"])
@pytest.mark.parametrize("dtype", list(CODES), ids=str)
def test_load_idx_round_trips_every_type(tmp_path: Path, dtype: np.dtype, shape: tuple[int, ...], compressed: bool) -> None:
    original = sample(dtype, shape)
    path = write(tmp_path / "data.idx", idx_bytes(original), compressed)
    loaded = datasets.load_idx(path)
    assert loaded.dtype == dtype and loaded.dtype.isnative
    assert loaded.shape == shape
    np.testing.assert_array_equal(loaded, original)
    assert loaded.flags.c_contiguous and loaded.flags.aligned
    assert not loaded.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        loaded[(0,) * len(shape)] = 1


def test_load_idx_reads_mnist_like_labels_and_images(tmp_path: Path) -> None:
    labels = np.arange(10, dtype=np.uint8)
    images = np.arange(10 * 28 * 28).astype(np.uint8).reshape(10, 28, 28)
    np.testing.assert_array_equal(datasets.load_idx(write(tmp_path / "l", idx_bytes(labels))), labels)
    np.testing.assert_array_equal(datasets.load_idx(write(tmp_path / "i", idx_bytes(images), True)), images)


def test_load_idx_known_bytes_are_big_endian(tmp_path: Path) -> None:
    path = write(tmp_path / "x.idx", header(0x0C, (2,)) + bytes([0, 0, 1, 2, 0xFF, 0xFF, 0xFF, 0xFE]))
    np.testing.assert_array_equal(datasets.load_idx(path), np.array([258, -2], dtype=np.int32))


def test_load_idx_accepts_a_str_path_and_an_empty_dimension(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.idx", header(0x0D, (0, 4)))
    loaded = datasets.load_idx(str(path))
    assert loaded.shape == (0, 4) and loaded.dtype == np.float32


def test_load_idx_detects_gzip_by_content_not_name(tmp_path: Path) -> None:
    original = sample(np.dtype(np.int16), (4, 3))
    no_suffix = write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(original), compressed=True)
    plain_named_gz = write(tmp_path / "plain.idx.gz", idx_bytes(original))
    assert no_suffix.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(datasets.load_idx(no_suffix), original)
    np.testing.assert_array_equal(datasets.load_idx(plain_named_gz), original)


# --------------------------------------------------------------------------- load_idx refusals
GOOD = idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3))  # 4 + 8 header bytes, 6 data bytes

BAD_FILES = {
    "bad magic": (b"\x01\x00" + GOOD[2:], ["not an IDX file", "expected the magic bytes 0x00 0x00", "found 0x01 0x00"]),
    "unknown type code": (GOOD[:2] + b"\x0a" + GOOD[3:], ["unknown type code 0x0A", "0x08 (uint8)", "0x0E (float64)"]),
    "zero dimensions": (bytes([0, 0, 8, 0]) + b"\x05", ["declares 0 dimensions", "expected at least 1"]),
    "empty file": (b"", ["incomplete header", "expected 4 bytes", "found 0"]),
    "truncated header": (GOOD[:3], ["incomplete header", "expected 4 bytes", "found 3"]),
    "truncated dimensions": (GOOD[:10], ["incomplete header", "expected 8 bytes for 2 dimensions", "found 6"]),
    "truncated data": (GOOD[:-1], ["declares shape (2, 3) of uint8", "expected 6 bytes", "found 5"]),
    "extra trailing data": (GOOD + b"\x00", ["declares shape (2, 3) of uint8", "expected 6 bytes", "found more", "trailing data"]),
}


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_load_idx_refuses_malformed_files(tmp_path: Path, case: str, compressed: bool) -> None:
    content, fragments = BAD_FILES[case]
    path = write(tmp_path / "bad.idx", content, compressed)
    with raises(ValueError, "load_idx", repr(str(path)), *fragments):
        datasets.load_idx(path)


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize(
    "code, shape, expected",
    [(0x08, (1 << 15, 1 << 15), 1 << 30), (0x0E, (0xFFFFFFFF,) * 3, 8 * 0xFFFFFFFF**3)],
    ids=["1GiB", "astronomical"],
)
def test_load_idx_refuses_a_huge_declared_size_without_allocating_it(
    tmp_path: Path, code: int, shape: tuple[int, ...], expected: int, compressed: bool
) -> None:
    path = write(tmp_path / "huge.idx", header(code, shape) + bytes(100), compressed)
    tracemalloc.start()
    try:
        with raises(ValueError, f"expected {expected} bytes", "found 100"):
            datasets.load_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"load_idx allocated {peak} bytes for a 100-byte body"


def damaged_gzip(kind: str) -> bytes:
    stream = gzip.compress(GOOD)
    if kind == "bad crc":
        return stream[:-8] + bytes(b ^ 0xFF for b in stream[-8:-4]) + stream[-4:]
    if kind == "cut short":
        return stream[: len(stream) // 2]
    return stream[:2] + b"not a gzip header, nor deflate data"


@pytest.mark.parametrize("kind", ["bad crc", "cut short", "bad header"])
def test_load_idx_refuses_a_damaged_gzip_stream(tmp_path: Path, kind: str) -> None:
    path = write(tmp_path / "damaged.gz", damaged_gzip(kind))
    with raises(ValueError, "load_idx", repr(str(path)), "damaged gzip stream"):
        datasets.load_idx(path)


@pytest.mark.parametrize("path", [123, None, b"bytes/path", ["a"]], ids=repr)
def test_load_idx_refuses_a_path_of_the_wrong_type(path: object) -> None:
    with raises(TypeError, "load_idx", "path must be a str or os.PathLike", type(path).__name__):
        datasets.load_idx(path)  # type: ignore[arg-type]


def test_load_idx_refuses_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing-idx1-ubyte"
    with raises(FileNotFoundError, "load_idx", "no such file", repr(str(missing))):
        datasets.load_idx(missing)


# --------------------------------------------------------------------------- load_mnist
def mnist_folder(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> Path:
    folder.mkdir(exist_ok=True)
    write(folder / f"{prefix}-images-idx3-ubyte.gz", idx_bytes(images), compressed=True)
    write(folder / f"{prefix}-labels-idx1-ubyte", idx_bytes(labels))
    return folder


@pytest.fixture
def fake_images() -> tuple[np.ndarray, np.ndarray]:
    images = (np.arange(3 * 28 * 28) * 7 % 256).astype(np.uint8).reshape(3, 28, 28)
    return images, np.array([7, 0, 9], dtype=np.uint8)


@pytest.mark.parametrize("kind, prefix", [("train", "train"), ("test", "t10k")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_load_mnist_reads_the_standard_file_names(tmp_path: Path, fake_images, kind: str, prefix: str, dtype: type) -> None:
    images, labels = fake_images
    mnist_folder(tmp_path, prefix, images, labels)
    X, T = datasets.load_mnist(tmp_path, kind, dtype=dtype)
    assert X.shape == (3, 1, 28, 28) and X.dtype == dtype
    assert T.shape == (3,) and T.dtype == np.int64
    # one division of an exact integer in dtype against the same division in float64: each
    # correctly rounded, so within u(dtype) + u(float64) of the quotient
    expected = images / 255.0
    u = np.finfo(dtype).eps / 2 + np.finfo(np.float64).eps / 2
    assert np.all(np.abs(X[:, 0] - expected) <= u * expected)
    assert X.min() == 0.0 and X.max() == 1.0
    np.testing.assert_array_equal(T, labels)
    assert X.flags.c_contiguous and not X.flags.writeable and not T.flags.writeable


def test_load_mnist_refuses_a_count_mismatch(tmp_path: Path, fake_images) -> None:
    images, labels = fake_images
    mnist_folder(tmp_path, "train", images, labels[:2])
    with raises(ValueError, "load_mnist", "holds 3 images", "holds 2 labels", "train-labels-idx1-ubyte"):
        datasets.load_mnist(tmp_path)


def test_load_mnist_refuses_files_of_the_wrong_layout(tmp_path: Path, fake_images) -> None:
    images, labels = fake_images
    mnist_folder(tmp_path, "train", images.astype(np.float32), labels)
    with raises(ValueError, "load_mnist", "uint8 images of shape (n, rows, columns)", "got float32 of shape (3, 28, 28)"):
        datasets.load_mnist(tmp_path)
    mnist_folder(tmp_path, "train", images, labels.reshape(3, 1))
    with raises(ValueError, "load_mnist", "uint8 labels of shape (n,)", "got uint8 of shape (3, 1)"):
        datasets.load_mnist(tmp_path)


def test_load_mnist_refuses_missing_files_and_bad_arguments(tmp_path: Path, fake_images) -> None:
    mnist_folder(tmp_path, "train", *fake_images)
    with raises(FileNotFoundError, "load_mnist", "'t10k-images-idx3-ubyte'", "'t10k-images-idx3-ubyte.gz'"):
        datasets.load_mnist(tmp_path, "test")
    with raises(FileNotFoundError, "load_mnist", "no such folder", "nowhere"):
        datasets.load_mnist(tmp_path / "nowhere")
    with raises(ValueError, "load_mnist", "kind must be 'train' or 'test'", "'validation'"):
        datasets.load_mnist(tmp_path, "validation")
    with raises(TypeError, "load_mnist", "path must be a str or os.PathLike", "int"):
        datasets.load_mnist(42)  # type: ignore[arg-type]
    with raises(TypeError, "load_mnist", "float32 or float64", "int32"):
        datasets.load_mnist(tmp_path, dtype=np.int32)


# --------------------------------------------------------------------------- load_digits
@pytest.fixture(scope="module")
def sklearn_digits():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    return sklearn_datasets.load_digits()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_load_digits_shapes_dtypes_and_range(sklearn_digits, dtype: type) -> None:
    X, T = datasets.load_digits(dtype=dtype)
    assert X.shape == (1797, 64) and X.dtype == dtype
    assert T.shape == (1797,) and T.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    assert set(np.unique(T)) == set(range(10))
    np.testing.assert_array_equal(X, (sklearn_digits.data / 16.0).astype(dtype))
    np.testing.assert_array_equal(T, sklearn_digits.target)
    assert X.flags.c_contiguous and not X.flags.writeable and not T.flags.writeable


def test_load_digits_images_are_the_flat_data_reshaped(sklearn_digits) -> None:
    flat, T_flat = datasets.load_digits()
    images, T = datasets.load_digits(images=True, dtype=np.float32)
    assert images.shape == (1797, 1, 8, 8) and images.dtype == np.float32
    np.testing.assert_array_equal(images, flat.reshape(-1, 1, 8, 8))
    np.testing.assert_array_equal(images[5, 0], sklearn_digits.images[5] / 16.0)
    np.testing.assert_array_equal(T, T_flat)
    assert images.flags.c_contiguous and not images.flags.writeable


def test_load_digits_refuses_bad_arguments(sklearn_digits) -> None:
    with raises(TypeError, "load_digits", "float32 or float64", "int32"):
        datasets.load_digits(dtype=np.int32)
    with raises(TypeError, "load_digits", "float32 or float64", "float16"):
        datasets.load_digits(dtype="float16")
    with raises(TypeError, "load_digits", "images must be True or False", "'yes'"):
        datasets.load_digits(images="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        datasets.load_digits(True)  # type: ignore[misc]


def test_load_digits_without_scikit_learn_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with raises(ImportError, "load_digits", "scikit-learn", "pip install scikit-learn"):
        datasets.load_digits()


def test_load_digits_reads_the_bundled_file_without_importing_scikit_learn(sklearn_digits) -> None:
    code = "import sys, jitnn; jitnn.datasets.load_digits(); print('sklearn' in sys.modules)"
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert finished.stdout.strip() == "False"


def test_load_digits_falls_back_to_scikit_learn_where_the_file_is_elsewhere(
    sklearn_digits, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    elsewhere = importlib.machinery.ModuleSpec("sklearn", None, is_package=True)
    elsewhere.submodule_search_locations = [str(tmp_path)]  # no datasets/data/digits.csv.gz there
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: elsewhere)
    X, T = datasets.load_digits(dtype=np.float64)
    np.testing.assert_array_equal(X, sklearn_digits.data / 16.0)
    np.testing.assert_array_equal(T, sklearn_digits.target)
