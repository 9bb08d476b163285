"""Saving and loading trees: models, optimizer states, any nest of records with array leaves.

Format
------
A checkpoint holds one array per leaf of the tree, keyed by the leaf's dotted field path
from :func:`jitnn.tree.leaves_with_paths` (``"layers.0.W"``, ``"mu.layers.2.b"``,
``"count"``). Nothing else is stored: the structure comes from the tree handed to
:func:`load` (``like``), which is how a model is built anyway, so the file stays readable by
any tool that reads the container format.

- A path ending in ``.npz`` (or any suffix other than ``.safetensors``) is written as a
  NumPy ``.npz`` archive: one uncompressed ``.npy`` member per leaf, written by
  ``numpy.lib.format.write_array`` with pickling refused. A 0-d leaf (an optimizer's step
  ``count``) is stored as a 0-d array. The file lands exactly at the path given (no
  ``.npz`` is appended).
- A path ending in ``.safetensors`` is written in the safetensors format (needs the
  ``safetensors`` package: ``pip install safetensors``), with the same keys. It holds
  booleans, integers and float16/32/64 in native byte order. A 0-d leaf is stored with
  shape ``()``, which safetensors keeps (checked with version 0.8); :func:`load` checks
  every shape, so a version that changed it would be refused rather than trusted.

What :func:`load` checks
------------------------
Every leaf of ``like`` must have an array of the same name, dtype and shape in the file,
and the file must hold nothing else. The checks run in ``like``'s leaf order and the error
names the first difference: the missing path, the extra key, or the path with the dtype or
shape expected and found. A file written from a model of another structure therefore fails
at its first differing field. Only then is array data read. A file that cannot be parsed
(empty, truncated, random bytes, an archive member that is not an array, an array of Python
objects) is refused with a ``ValueError`` that names the file, says it is not a jitnn
checkpoint or is damaged, and chains the underlying error.

Loading never unpickles or executes anything from a file: ``.npz`` archives are opened
with ``numpy.load(..., allow_pickle=False)`` and an array of Python objects is refused from
its header, before its data is touched; safetensors holds raw numbers only. The arrays
returned are fresh, C-contiguous, read-only and own their memory.

Why the write is atomic
-----------------------
A checkpoint is written to a temporary file in the target's folder, flushed to disk
(``fsync``) and only then renamed onto the target with ``os.replace``, which is atomic on
POSIX and Windows. A crash, a full disk or an interrupt during the write therefore never
leaves a half-written file at the path, and never damages the checkpoint that was there
before: the path holds either the old file or the complete new one. The temporary file is
removed on any error.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import tempfile
import zipfile
import zlib
from typing import Any, BinaryIO, Callable, Iterator, TypeVar

import numpy as np

from jitnn import tree as trees
from jitnn._checks import freeze

__all__ = ["save", "load"]

_Tree = TypeVar("_Tree")

#: dtype kinds a checkpoint holds: booleans, signed and unsigned integers, floats, complex
_NUMERIC_KINDS = "biufc"
#: what the safetensors format holds in every version that stores NumPy arrays
_SAFETENSORS_DTYPES = frozenset(
    np.dtype(name) for name in
    ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16", "float32", "float64")
)
#: the first bytes of a zip archive with members, and of an empty one
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}
#: what parsing a file that is not a well-formed checkpoint raises (zipfile, numpy's .npy
#: reader, zlib, the operating system); safetensors' own error is added when it is imported
_UNREADABLE: tuple[type[BaseException], ...] = (
    OSError, EOFError, ValueError, KeyError, RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error, struct.error,
)

_Entries = list[tuple[str, np.ndarray]]


# =========================================================================== public API
def save(path: str | os.PathLike[str], tree: Any) -> None:
    """Write every array leaf of ``tree`` to ``path``, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Where to write. A path ending in ``.safetensors`` is written in the safetensors
        format; any other (``.npz`` by convention) as a NumPy ``.npz`` archive, exactly at
        this path.
    tree : model, optimizer state or any tree
        A nest of records, tuples, lists and dicts; each array leaf (any shape, ``()``
        included) is stored under its dotted path (``"layers.0.W"``).

    Raises
    ------
    TypeError
        ``path`` is not a str or PathLike; ``tree`` has no array leaves; a leaf's dtype is
        not boolean or numeric (or, for safetensors, not one the format holds).
    ValueError
        Two leaves share a path (a dict key containing ``"."`` collides with a nested field).
    ImportError
        A ``.safetensors`` path without the ``safetensors`` package.

    Notes
    -----
    The file is written to a temporary file in the same folder, synced to disk and renamed
    onto ``path``: the path never holds a half-written file, and an existing file there is
    left intact if the write fails.
    """
    path = _check_path(path, "save")
    entries = _entries(tree, "save", "tree")
    if os.path.isdir(path):
        raise IsADirectoryError(f"save: {path!r} is a folder; give the path of a file to write")
    if _is_safetensors(path):
        data = _safetensors_bytes(entries)
        _write_atomically(path, lambda file: file.write(data))
    else:
        _write_atomically(path, lambda file: _write_npz(file, entries))


def load(path: str | os.PathLike[str], like: _Tree) -> _Tree:
    """Read the checkpoint at ``path`` into a tree of ``like``'s structure.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`save` (``.safetensors`` by its suffix, ``.npz`` otherwise).
    like : model, optimizer state or any tree
        A tree of the structure, dtypes and shapes the file must hold (a freshly
        initialised model, ``opt.init(model)``); its own values are not used.

    Returns
    -------
    tree
        ``like`` rebuilt with the file's arrays: each C-contiguous, read-only and owning
        its memory.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    TypeError
        ``path`` is not a str or PathLike; ``like`` has no array leaves, or one of an
        unstorable dtype.
    ValueError
        The file is not a jitnn checkpoint or is damaged; or its contents differ from
        ``like``: a missing key (the first in ``like``'s order), an extra key, a dtype or
        shape mismatch (the path, expected and found).
    ImportError
        A ``.safetensors`` path without the ``safetensors`` package.

    Notes
    -----
    Nothing is unpickled or executed: ``.npz`` files are opened with
    ``numpy.load(path, allow_pickle=False)`` and arrays of Python objects are refused.
    """
    path = _check_path(path, "load")
    entries = _entries(like, "load", "like")
    if os.path.isdir(path):
        raise IsADirectoryError(f"load: {path!r} is a folder; give the path of a checkpoint file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"load: no such file: {path!r}")
    open_archive = _SafetensorsArchive if _is_safetensors(path) else _NpzArchive
    with open(path, "rb") as file:
        head = file.read(8)
        if not head:
            raise _damaged(path, "the file is empty")
        file.seek(0)
        with _unreadable_as_damaged(path):
            archive = open_archive(file, head)
        with archive:
            arrays = _read_checked(path, archive, entries)
    return trees.unflatten(like, arrays)


# =========================================================================== checks
def _check_path(path: Any, who: str) -> str:
    """``path`` as a str, or TypeError."""
    if isinstance(path, (str, os.PathLike)):
        resolved = os.fspath(path)
        if isinstance(resolved, str):
            return resolved
    raise TypeError(f"{who}: path must be a str or os.PathLike naming a file, got {type(path).__name__}")


def _entries(tree: Any, who: str, name: str) -> _Entries:
    """The leaves of ``tree`` with their paths, each of a storable dtype, paths unique."""
    entries = trees.leaves_with_paths(tree)
    if not entries:
        raise TypeError(
            f"{who}: {name} must be a jitnn tree with array leaves (a model, an optimizer state, or any nest of "
            f"records, tuples, lists and dicts holding arrays), got {type(tree).__name__} with none"
        )
    seen: set[str] = set()
    for key, array in entries:
        if array.dtype.kind not in _NUMERIC_KINDS or array.dtype.hasobject:
            raise TypeError(
                f"{who}: the leaf {key!r} has dtype {array.dtype}, which a checkpoint cannot hold "
                f"(booleans, integers, floating-point and complex numbers only)"
            )
        if key in seen:
            raise ValueError(f"{who}: two leaves share the path {key!r} (a dict key containing '.' collides with a nested field); rename one")
        seen.add(key)
    return entries


def _is_safetensors(path: str) -> bool:
    return path.lower().endswith(".safetensors")


def _damaged(path: str, reason: str) -> ValueError:
    return ValueError(f"load: {path!r} is not a jitnn checkpoint or is damaged: {reason}")


@contextlib.contextmanager
def _unreadable_as_damaged(path: str) -> Iterator[None]:
    """Turn what a parser raises on a malformed file into one ValueError naming the file."""
    try:
        yield
    except _unreadable() as error:
        raise _damaged(path, str(error) or type(error).__name__) from error


def _read_checked(path: str, archive: _NpzArchive | _SafetensorsArchive, entries: _Entries) -> list[np.ndarray]:
    """The arrays for ``entries`` (in order), after checking every name, dtype and shape."""
    present = set(archive.names)
    for key, leaf in entries:
        if key not in present:
            missing = sum(1 for name, _ in entries if name not in present)
            raise ValueError(
                f"load: {path!r} has no array {key!r}, the first of the {missing} leaves of like missing from the file "
                f"(it holds {_preview(archive.names)})"
            )
        with _unreadable_as_damaged(path):
            shape, dtype = archive.header(key)
        if dtype.hasobject:
            raise _damaged(path, f"the array {key!r} holds Python objects (dtype {dtype}), which loading never unpickles")
        differences = []
        if dtype != leaf.dtype:
            differences.append(f"dtype {dtype} where {leaf.dtype} was expected")
        if shape != leaf.shape:
            differences.append(f"shape {shape} where {leaf.shape} was expected")
        if differences:
            raise ValueError(f"load: {path!r}: the array {key!r} has " + " and ".join(differences))
    expected = {key for key, _ in entries}
    extra = [name for name in archive.names if name not in expected]
    if extra:
        raise ValueError(
            f"load: {path!r} holds an array {extra[0]!r} that like has no leaf for "
            f"({len(extra)} such array{'s' if len(extra) > 1 else ''}: {_preview(extra)})"
        )
    arrays = []
    for key, _ in entries:
        with _unreadable_as_damaged(path):
            arrays.append(_owned(archive.read(key)))
    return arrays


def _preview(names: list[str], shown: int = 5) -> str:
    if not names:
        return "no arrays"
    listed = ", ".join(repr(name) for name in names[:shown])
    return f"{listed}{', ...' if len(names) > shown else ''} ({len(names)} in all)"


def _owned(array: np.ndarray) -> np.ndarray:
    """A read-only C-contiguous copy that owns its memory (no view into the file's buffer)."""
    return freeze(np.array(array, order="C", copy=True))


# =========================================================================== .npz
def _write_npz(file: BinaryIO, entries: _Entries) -> None:
    """One uncompressed ``<key>.npy`` member per leaf, as ``numpy.savez`` writes them (but
    through ``file``, so no suffix is added, and with pickling refused)."""
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, array in entries:
            with archive.open(f"{key}.npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


class _NpzArchive:
    """An open ``.npz`` file: its array names, each array's header, each array's data."""

    def __init__(self, file: BinaryIO, head: bytes) -> None:
        if not head.startswith(_ZIP_MAGIC):
            raise ValueError(f"it is not an .npz archive (an .npz file begins with {_ZIP_MAGIC[0]!r}, this one with {head[:4]!r})")
        self.npz = np.load(file, allow_pickle=False)
        if not isinstance(self.npz, np.lib.npyio.NpzFile):
            raise ValueError(f"numpy read it as {type(self.npz).__name__}, not an .npz archive")
        self.members = {name.removesuffix(".npy"): name for name in self.npz.zip.namelist()}
        self.names = list(self.members)

    def header(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """The shape and dtype a member declares, read without touching its data."""
        with self.npz.zip.open(self.members[key]) as member:
            version = np.lib.format.read_magic(member)
            read_header = _NPY_HEADER_READERS.get(version)
            if read_header is None:
                raise ValueError(f"the array {key!r} is in .npy format version {version}, which jitnn does not write")
            shape, _, dtype = read_header(member)
        return shape, dtype

    def read(self, key: str) -> np.ndarray:
        return self.npz[key]

    def __enter__(self) -> _NpzArchive:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.npz.close()


# =========================================================================== .safetensors
def _safetensors_module(who: str) -> Any:
    try:
        import safetensors.numpy
    except ImportError as error:
        raise ImportError(
            f"{who}: reading or writing a .safetensors file needs the safetensors package: pip install safetensors "
            f"(or use a path ending in .npz)"
        ) from error
    return safetensors.numpy


def _safetensors_bytes(entries: _Entries) -> bytes:
    """The whole file, in memory, so that it is written like any other (atomically)."""
    module = _safetensors_module("save")
    for key, array in entries:
        if array.dtype not in _SAFETENSORS_DTYPES:
            raise TypeError(
                f"save: the leaf {key!r} has dtype {array.dtype}, which safetensors cannot hold (booleans, integers "
                f"and float16/32/64 in native byte order only); save to a path ending in .npz instead"
            )
    # safetensors reads raw memory: hand it C-contiguous arrays (np.ascontiguousarray would
    # turn a 0-d array into shape (1,))
    return module.save({key: np.asarray(array, order="C") for key, array in entries})


class _SafetensorsArchive:
    """An open ``.safetensors`` file, read whole (the format holds raw numbers only)."""

    def __init__(self, file: BinaryIO, head: bytes) -> None:
        self.arrays: dict[str, np.ndarray] = _safetensors_module("load").load(file.read())
        self.names = list(self.arrays)

    def header(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        array = self.arrays[key]
        return array.shape, array.dtype

    def read(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def __enter__(self) -> _SafetensorsArchive:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.arrays.clear()


def _unreadable() -> tuple[type[BaseException], ...]:
    """:data:`_UNREADABLE`, plus safetensors' error class where the package is installed."""
    try:
        from safetensors import SafetensorError
    except ImportError:
        return _UNREADABLE
    return (*_UNREADABLE, SafetensorError)


# =========================================================================== atomic write
def _write_atomically(path: str, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write`` on a temporary file in ``path``'s folder, sync it to disk and rename it
    onto ``path``; on any error (an interrupt included) remove it and leave ``path`` as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    mode = _file_mode(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)[:100]}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _sync_folder(folder)


def _file_mode(path: str) -> int:
    """The permissions the file should get: those of the file it replaces, else what ``open``
    would give a new file (``mkstemp`` makes it private to its owner)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` sets it, racing with
    threads that create files); 0o022 where the system does not report it."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _sync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX; skipped where folders cannot be opened)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
