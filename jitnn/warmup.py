"""Compile jitnn's built-in kernels ahead of time: ``python -m jitnn warmup``.

Numba compiles a kernel the first time it is called for a new argument type and keeps the
machine code in its disk cache (``NUMBA_CACHE_DIR``, or ``__pycache__`` beside jitnn's
sources). A new process with an empty cache therefore spends most of its first training
step compiling: 10-15 s for a small CNN on two cores. :func:`warmup` runs every built-in
layer (in training and evaluation mode, first in a model and after a layer with
parameters, so that each gradient kernel a model can call is reached), every loss,
optimizer and gradient transform, on tiny inputs in each float dtype, through the same
generic passes a model uses, so that each kernel is compiled for the signature it will
be called with and saved. A model built afterwards from built-in layers compiles only its
own training step (``jitnn.compile_step``: the kernels it calls are loaded, not compiled).

Run it once after installing jitnn (or upgrading Numba or jitnn, which invalidates the
cache): ``python -m jitnn warmup`` (``--dtype float32`` for one dtype, ``--quiet``).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import attrs
import numpy as np

from jitnn import layers as L
from jitnn import optim, random
from jitnn._checks import readonly, require_gradient_shape
from jitnn._jit import KERNELS
from jitnn.chain import pipe
from jitnn.combinators import Add, Concatenate, Residual
from jitnn.losses import BinaryCrossEntropy, Huber, KLDivergence, Loss, MeanSquaredError, SoftmaxCrossEntropy
from jitnn.passes import value_and_grad
from jitnn.protocol import Layer

__all__ = ["WarmupReport", "warmup"]


@attrs.frozen
class WarmupReport:
    """What :func:`warmup` did: the dtypes, how many kernel signatures were compiled (new
    to the cache) and loaded (already there), and the seconds it took."""

    dtypes: tuple[str, ...]
    compiled: int
    loaded: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"jitnn warmup ({', '.join(self.dtypes)}): {self.compiled} kernel signatures compiled, "
            f"{self.loaded} already in the cache, {self.seconds:.1f} s"
        )


# A model, the batch it trains on and its loss: (model, X, T, loss), for one dtype.
Workload = tuple[Layer, np.ndarray, np.ndarray, Loss]


def _workloads(dtype: Any) -> list[Workload]:
    """Small models that, together, call every built-in layer's kernels in the places a
    model calls them: each layer first (no input gradient) and after a layer with
    parameters (an input gradient), on inputs of the ranks it takes."""
    k = iter(random.split(random.key(0), 48))
    rng = np.random.default_rng(0)
    n = 4

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal((n, *shape)).astype(dtype)

    def labels(classes: int, *shape: int) -> np.ndarray:
        return rng.integers(0, classes, (n, *shape))

    cross_entropy = SoftmaxCrossEntropy()
    images = pipe(  # (n, 2, 8, 8)
        L.Conv2D.init(next(k), 2, 4, 3, padding=1, dtype=dtype), L.BatchNorm.init(None, 4, dtype=dtype), L.ReLU(),
        L.Conv2D.init(next(k), 4, 4, 3, padding=1, dtype=dtype), L.MaxPool2D(2), L.AvgPool2D(2), L.Dropout(0.2),
        L.Flatten(), L.Dense.init(next(k), 16, 3, dtype=dtype),
    )
    pooled = pipe(  # (n, 2, 8, 8), normalized first so that the convolution after it gives dX
        L.LayerNorm.init(None, 8, dtype=dtype), L.Conv2D.init(next(k), 2, 3, 3, dtype=dtype), L.GlobalAvgPool(),
        L.BatchNorm.init(None, 3, dtype=dtype), L.Dense.init(next(k), 3, 3, dtype=dtype),
    )
    signals = pipe(  # (n, 2, 16)
        L.Conv1D.init(next(k), 2, 4, 3, padding=1, dtype=dtype), L.Conv1D.init(next(k), 4, 4, 3, dtype=dtype),
        L.MaxPool1D(2), L.AvgPool1D(2), L.GlobalAvgPool(), L.Dense.init(next(k), 4, 3, dtype=dtype),
    )
    dense = pipe(  # (n, 6): every activation, a residual, a concatenation, a sum
        L.Dense.init(next(k), 6, 8, dtype=dtype), L.GELU(), L.BatchNorm.init(None, 8, dtype=dtype), L.Tanh(),
        Residual(pipe(L.Dense.init(next(k), 8, 8, dtype=dtype), L.LeakyReLU(0.1))),
        Concatenate((L.Sigmoid(), L.Identity())), Add((L.Dense.init(next(k), 16, 16, dtype=dtype), L.ReLU())),
        L.Reshape((4, 4)), L.LayerNorm.init(None, 4, dtype=dtype), L.Flatten(), L.Dense.init(next(k), 16, 3, dtype=dtype), L.Softmax(),
    )
    text = pipe(  # (n, 5) integer tokens: embeddings, attention, every recurrent cell
        L.Embedding.init(next(k), 10, 6, dtype=dtype), L.PositionalEmbedding.init(next(k), 5, 6, dtype=dtype),
        L.MultiHeadAttention.init(next(k), 6, 2, causal=True, dtype=dtype), L.LayerNorm.init(None, 6, dtype=dtype),
        L.GRU.init(next(k), 6, 5, dtype=dtype), L.LSTM.init(next(k), 5, 4, bidirectional=True, dtype=dtype),
        L.RNN.init(next(k), 8, 3, return_sequences=False, dtype=dtype), L.Dense.init(next(k), 3, 3, dtype=dtype),
    )
    recurrent = [  # each cell, returning sequences or the final state, first in a model and after one
        pipe(*before, cell.init(next(k), 3, 4, return_sequences=sequences, dtype=dtype), L.Dense.init(next(k), 4, 3, dtype=dtype))
        for cell in (L.RNN, L.GRU, L.LSTM)
        for sequences in (True, False)
        for before in ((), (L.LayerNorm.init(None, 3, dtype=dtype),))
    ]
    attention = [pipe(L.MultiHeadAttention.init(next(k), 3, 1, dtype=dtype), L.Dense.init(next(k), 3, 3, dtype=dtype))]  # first
    first_dense = pipe(L.Dense.init(next(k), 6, 3, dtype=dtype))
    return [
        (images, normal(2, 8, 8), labels(3), cross_entropy),
        (pooled, normal(2, 8, 8), labels(3), cross_entropy),
        (signals, normal(2, 16), labels(3), cross_entropy),
        (dense, normal(6), normal(3), MeanSquaredError()),
        (first_dense, normal(6), rng.random((n, 3)).astype(dtype), BinaryCrossEntropy()),
        (first_dense, normal(6), normal(3), Huber()),
        (first_dense, normal(6), rng.dirichlet(np.ones(3), size=n).astype(dtype), KLDivergence()),
        (text, labels(10, 5), labels(3), cross_entropy),
        *((model, normal(5, 3), labels(3, 5) if model.layers[-2].return_sequences else labels(3), cross_entropy) for model in recurrent),
        *((model, normal(5, 3), labels(3, 5), cross_entropy) for model in attention),
    ]


def _optimizers() -> list[Any]:
    """Every named optimizer, and a chain of every gradient transform."""
    named = [factory(1e-3) for factory in optim.OPTIMIZERS.values()]
    transforms = optim.chain(
        optim.check_finite(), optim.clip_by_global_norm(1.0), optim.clip_by_value(1.0),
        optim.add_decayed_weights(1e-4), optim.scale_by_schedule(lambda count: 1.0), optim.scale(0.5), optim.sgd(1e-3),
    )
    return [*named, transforms]


def _run(model: Layer, X: np.ndarray, T: np.ndarray, loss: Loss, optimizers: Sequence[Any]) -> None:
    key = random.key(1)
    model.forward(X)  # evaluation mode: the plain forward kernels
    _, grads = value_and_grad(model, loss, X, T, key=key, training=True)
    for optimizer in optimizers:
        optimizer.update(model, grads, optimizer.init(model))


def _factored(dtype: Any, optimizers: Sequence[Any]) -> None:
    """The compiled step's route for a Dense weight at one example (``jitnn.Factored``):
    Dense's factored kernel, and each optimizer's kernel handed the gradient's factors."""
    dense = L.Dense.init(random.key(2), 3, 2, dtype=dtype)
    (A, B), _ = dense._factored_gradients(np.ones((1, 3), dtype), np.ones((1, 2), dtype))
    factors, param = (readonly(A), readonly(B)), readonly(np.zeros(6, dtype))
    for optimizer in optimizers:
        if getattr(optimizer, "factored_gradients", False):
            type(optimizer).kernel(param, factors, *(param,) * len(optimizer.moment_names), *optimizer.kernel_config(1e-3, 1))


def _counts() -> tuple[int, int]:
    """Signatures compiled and loaded so far, over every kernel made with ``jitnn._jit.jit``."""
    compiled = sum(sum(dispatcher.stats.cache_misses.values()) for dispatcher in KERNELS)
    loaded = sum(sum(dispatcher.stats.cache_hits.values()) for dispatcher in KERNELS)
    return compiled, loaded


def warmup(dtypes: Sequence[Any] = (np.float32, np.float64), *, progress: Callable[[str], None] | None = None) -> WarmupReport:
    """Compile (or load) every built-in kernel for ``dtypes`` and save it in the disk cache.

    Parameters
    ----------
    dtypes : the float dtypes to compile for (float32, float64 or both).
    progress : called with a line of text after each workload (``None``: silent).

    Returns
    -------
    WarmupReport
        How many kernel signatures were compiled and how many were already cached.
    """
    names = []
    for dtype in dtypes:
        found = np.dtype(dtype)
        if found not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"warmup: dtypes must be float32 or float64, got {found}")
        names.append(found.name)
    started = time.perf_counter()
    compiled_before, loaded_before = _counts()
    require_gradient_shape(True)  # the compiled step's one check
    optimizers = _optimizers()
    for name in names:
        _factored(np.dtype(name), optimizers)
        for index, (model, X, T, loss) in enumerate(_workloads(np.dtype(name))):
            _run(model, X, T, loss, optimizers if index == 0 else ())  # their kernels see flat arrays: one model reaches them
            if progress is not None:
                compiled, loaded = _counts()
                progress(f"{name}: model {index + 1}, {compiled - compiled_before} compiled, {loaded - loaded_before} loaded, {time.perf_counter() - started:.1f} s")
    compiled, loaded = _counts()
    return WarmupReport(tuple(names), compiled - compiled_before, loaded - loaded_before, time.perf_counter() - started)
