"""Data sets: IDX files (MNIST, Fashion-MNIST) and scikit-learn's bundled 8x8 digits.

The IDX format
--------------
An IDX file is a header followed by the items of one array, in C order:

============  =========================================================================
bytes         meaning
============  =========================================================================
0, 1          the magic: two zero bytes
2             the item type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
              0x0D float32, 0x0E float64
3             the number of dimensions ``d`` (at least 1)
4 .. 4+4d     one big-endian unsigned 32-bit integer per dimension
then          the items, big-endian, exactly ``prod(dims) * itemsize`` bytes
============  =========================================================================

The files are often distributed gzip-compressed (``train-images-idx3-ubyte.gz``).
:func:`load_idx` recognises gzip by the stream's first two bytes (0x1f 0x8b), not by the
file's name, so a renamed file loads all the same.

Checks
------
:func:`load_idx` refuses, with a ``ValueError`` that names the file and gives what it
expected and what it found: a wrong magic, an unknown type code, zero dimensions, a header
cut short, and a data section shorter or longer than the dimensions declare; and a damaged
gzip stream. The data are read in chunks of at most 1 MiB and never beyond one byte past
the declared size, so a header that declares an absurd size over a small body is refused
after reading what the file actually holds, without allocating what the header claims.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import struct
import zlib
from typing import Any, BinaryIO

import numpy as np

from jitnn import validate
from jitnn._checks import check_float_dtype, freeze

__all__ = ["load_idx", "load_mnist", "load_digits"]

_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(np.int16),
    0x0C: np.dtype(np.int32),
    0x0D: np.dtype(np.float32),
    0x0E: np.dtype(np.float64),
}

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one array from an IDX file, plain or gzip-compressed.

    Parameters
    ----------
    path
        The file. Gzip compression is recognised by the file's first two bytes.

    Returns
    -------
    numpy.ndarray
        The array, of the shape the header declares (``(n,)`` for MNIST labels,
        ``(n, 28, 28)`` for its images) and the dtype of its type code, in native byte
        order, C-contiguous and read-only.

    Raises
    ------
    TypeError
        If ``path`` is not a ``str`` or ``os.PathLike``.
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is not a well-formed IDX file (see the module's documentation) or its
        gzip stream is damaged; the message names the file and what is wrong.
    """
    name = _check_path(path, "load_idx")
    try:
        file = open(name, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"load_idx: no such file: {name!r}") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"load_idx: {name!r} is a folder; give the path of an IDX file") from None
    with file:
        compressed = file.read(2) == _GZIP_MAGIC
        file.seek(0)
        if not compressed:
            return _read_idx(file, name)
        try:
            with gzip.GzipFile(fileobj=file) as stream:
                return _read_idx(stream, name)
        except (gzip.BadGzipFile, EOFError, zlib.error) as error:
            raise ValueError(f"load_idx: {name!r} is a damaged gzip stream ({error})") from None


def load_mnist(
    folder: str | os.PathLike[str], kind: str = "train", *, dtype: Any = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST or Fashion-MNIST (or any data set in their layout) from a folder.

    Parameters
    ----------
    folder
        A folder holding the standard file names, each plain or with ``.gz``:
        ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte`` (``kind="train"``) or
        ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (``kind="test"``).
    kind
        ``"train"`` or ``"test"``.
    dtype
        float32 (default) or float64, the dtype of the images.

    Returns
    -------
    X : numpy.ndarray
        The images scaled to [0, 1], shape ``(n, 1, rows, columns)`` (NCHW, ``(n, 1, 28, 28)``
        for MNIST), read-only.
    T : numpy.ndarray
        The labels, int64, shape ``(n,)``, read-only.

    Raises
    ------
    TypeError
        If ``folder`` is not a ``str`` or ``os.PathLike``, or ``dtype`` is not float32 or float64.
    FileNotFoundError
        If the folder or one of the two files is missing.
    ValueError
        If ``kind`` is unknown, a file is not valid IDX, the images are not uint8 of shape
        ``(n, rows, columns)``, the labels not uint8 of shape ``(n,)``, or their counts differ.
    """
    who = "load_mnist"
    root = _check_path(folder, who)
    if not isinstance(kind, str) or kind not in _MNIST_FILES:
        raise ValueError(f"{who}: kind must be 'train' or 'test', got {kind!r}")
    dtype = check_float_dtype(dtype, who)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{who}: no such folder: {root!r}")
    image_path, label_path = (_find(root, stem, who) for stem in _MNIST_FILES[kind])
    images, labels = load_idx(image_path), load_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(
            f"{who}: {image_path!r} must hold uint8 images of shape (n, rows, columns), "
            f"got {images.dtype} of shape {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{who}: {label_path!r} must hold uint8 labels of shape (n,), got {labels.dtype} of shape {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{who}: {image_path!r} holds {len(images)} images but {label_path!r} holds {len(labels)} labels")
    X = images.astype(dtype)
    X /= 255
    return freeze(X)[:, np.newaxis], freeze(labels.astype(np.int64))


def load_digits(*, images: bool = False, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 handwritten digits (1797 examples, 10 classes).

    Needs scikit-learn (``pip install scikit-learn``); ``ImportError`` is raised when the
    function is called without it, not when this module is imported.

    Parameters
    ----------
    images
        ``False`` (default): ``X`` has shape ``(1797, 64)``, for dense layers.
        ``True``: ``X`` has shape ``(1797, 1, 8, 8)`` (NCHW), for ``Conv2D``; it is the flat
        ``X`` reshaped.
    dtype
        float32 (default) or float64.

    Returns
    -------
    X : numpy.ndarray
        The pixel intensities (0 to 16 in the source) divided by 16, so in [0, 1], read-only.
    T : numpy.ndarray
        The digit of each example, int64, shape ``(1797,)``, read-only.

    Raises
    ------
    TypeError
        If ``images`` is not a bool or ``dtype`` is not float32 or float64.
    ImportError
        If scikit-learn is not installed.
    """
    who = "load_digits"
    images = validate.flag(images, who, "images")
    dtype = check_float_dtype(dtype, who)
    pixels, digits = _bundled_digits(who)
    X = freeze((pixels / 16.0).astype(dtype))
    T = freeze(digits.astype(np.int64))
    return (X.reshape(-1, 1, 8, 8) if images else X), T


def _bundled_digits(who: str) -> tuple[np.ndarray, np.ndarray]:
    """The digits' pixels (float64) and labels, read from the file scikit-learn bundles
    (``sklearn/datasets/data/digits.csv.gz``, 64 pixels and the label per line) without
    importing scikit-learn, whose import takes longer than the rest of a small first run;
    where that file is not found, from ``sklearn.datasets.load_digits``."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise ImportError(
            f"{who}: the 8x8 digits are bundled with scikit-learn, which is not installed; "
            "install it with `pip install scikit-learn`"
        )
    for folder in spec.submodule_search_locations or ():
        path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            with gzip.open(path, "rt") as lines:
                table = np.loadtxt(lines, delimiter=",")
            return table[:, :-1], table[:, -1]
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    return digits.data, digits.target


def _check_path(path: Any, who: str) -> str:
    """``path`` as a ``str``, or TypeError if it is neither a ``str`` nor ``os.PathLike``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{who}: path must be a str or os.PathLike, got {type(path).__name__}")
    return os.fsdecode(path)


def _find(root: str, stem: str, who: str) -> str:
    """The path of ``stem`` or ``stem.gz`` in ``root``, or FileNotFoundError naming both."""
    for name in (stem, stem + ".gz"):
        candidate = os.path.join(root, name)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"{who}: found neither {stem!r} nor {stem + '.gz'!r} in {root!r}")


def _read_at_most(stream: BinaryIO, limit: int) -> bytearray:
    """Up to ``limit`` bytes of ``stream``, read in chunks so memory follows what is present."""
    data = bytearray()
    while len(data) < limit:
        chunk = stream.read(min(_CHUNK, limit - len(data)))
        if not chunk:
            break
        data += chunk
    return data


def _read_idx(stream: BinaryIO, name: str) -> np.ndarray:
    """Parse and check one IDX stream (already decompressed); ``name`` is for the messages."""
    where = f"load_idx: {name!r}"
    header = _read_at_most(stream, 4)
    if len(header) < 4:
        raise ValueError(
            f"{where} has an incomplete header: expected 4 bytes (magic, type code, number of "
            f"dimensions), found {len(header)}"
        )
    if header[:2] != b"\0\0":
        raise ValueError(f"{where} is not an IDX file: expected the magic bytes 0x00 0x00, found 0x{header[0]:02X} 0x{header[1]:02X}")
    code, ndim = header[2], header[3]
    if code not in _IDX_TYPES:
        known = ", ".join(f"0x{known:02X} ({dtype})" for known, dtype in _IDX_TYPES.items())
        raise ValueError(f"{where} has unknown type code 0x{code:02X}; expected one of {known}")
    if ndim == 0:
        raise ValueError(f"{where} declares 0 dimensions; expected at least 1")
    dims = _read_at_most(stream, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise ValueError(
            f"{where} has an incomplete header: expected {4 * ndim} bytes for {ndim} dimensions, found {len(dims)}"
        )
    shape = struct.unpack(f">{ndim}I", dims)
    dtype = _IDX_TYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    data = _read_at_most(stream, expected + 1)
    if len(data) != expected:
        found = str(len(data)) if len(data) < expected else "more (trailing data after the last item)"
        raise ValueError(
            f"{where} declares shape {shape} of {dtype}, so expected {expected} bytes of data after the header, found {found}"
        )
    array = np.frombuffer(data, dtype=dtype.newbyteorder(">"))
    if not array.dtype.isnative:
        array = array.byteswap(inplace=True).view(dtype)
    return freeze(array.reshape(shape))
