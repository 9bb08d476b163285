"""Compiled prediction: a model's evaluation-mode forward pass in one Numba function.

``predict = jitnn.compile_predict(model)`` generates, from the model's structure, one
``@jit`` function that calls the plain forward kernels of every layer in the order
``model.forward`` calls them (dropout off, batch normalization on its running statistics),
with no Python between them, and wraps it in :class:`CompiledPredict`, a callable
``predict(model, X) -> Y``. For a batch of at most ``batch_size`` examples it gives
``model.forward(X)`` bit for bit; a larger input runs in batches of ``batch_size`` rows.

The function is written to the same disk cache as the compiled training step
(:mod:`jitnn._codegen`), so another process loads it instead of compiling it.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import numpy as np

from jitnn import _blas, _memory, plan, validate
from jitnn._checks import describe, freeze, readonly
from jitnn._codegen import StepSource, load_function
from jitnn.protocol import Array, Layer
from jitnn.step import NOTHING, call_extras, compile_for, input_check, leaf_layers, model_arrays

__all__ = ["CompiledPredict", "compile_predict"]

#: The rows ``compile_predict`` runs at once by default.
DEFAULT_BATCH_SIZE = 1024

#: How many batch sizes a compiled function keeps the per-call arguments of.
_KEPT_EXTRAS = 8


def compile_predict(model: Layer, *, batch_size: int = DEFAULT_BATCH_SIZE, threads: int | None = None) -> CompiledPredict:
    """The evaluation-mode forward pass of ``model``'s architecture, compiled into one function.

    Parameters
    ----------
    model : the model (its structure and configuration; any model of the same architecture
        can be passed to the function, with any parameter values)
    batch_size : the most rows run at once; a larger input runs in batches of this many
        rows and the outputs are joined.
    threads : BLAS threads for the matrix products: ``None`` chooses by batch size, as the
        compiled training step does; an integer fixes the count.

    Returns
    -------
    CompiledPredict
        ``predict(model, X) -> Y``, a fresh read-only array, bit for bit ``model.forward(X)``
        for an input of at most ``batch_size`` rows (each batch's rows as ``model.forward``
        of that batch for a larger one). The function is generated and compiled at the first
        call for each per-example input shape and dtype and cached on disk.

    Raises
    ------
    TypeError
        For a model that is not a jitnn layer, or a bad ``batch_size`` or ``threads``.
    """
    return CompiledPredict(model, batch_size=batch_size, threads=threads)


@attrs.define
class _Compiled:
    """The function for one per-example input shape and dtype, its plan, the calls that
    take per-call arguments, and those arguments by batch size (evaluation mode: they
    depend on the shape and dtype only)."""

    function: Any
    plan: plan.Plan
    context_calls: tuple[plan.Call, ...]
    source: str
    cached: bool
    extras: dict[tuple[int, np.dtype], tuple[tuple[Any, ...], ...]] = attrs.field(factory=dict)
    ready: bool = False


class CompiledPredict:
    """A compiled evaluation-mode forward pass for one architecture.

    Call it as ``Y = predict(model, X)``. Attributes: ``batch_size``, ``threads``,
    ``compile_seconds`` (generation, compilation or loading from the disk cache, for all
    input shapes so far), ``cached`` (whether the last compiled function is on disk) and
    ``source`` (the generated code of the last input shape).
    """

    def __init__(self, model: Layer, *, batch_size: int = DEFAULT_BATCH_SIZE, threads: int | None = None) -> None:
        if not isinstance(model, Layer):
            raise TypeError(f"compile_predict: model must be a jitnn layer (for example a Chain), got {type(model).__name__}")
        self.batch_size = validate.positive_int(batch_size, "compile_predict", "batch_size")
        self.threads = _blas.check_threads(threads, "compile_predict")
        _memory.keep_freed_memory()
        self.model = model
        self.compile_seconds = 0.0
        self.cached = False
        self.source = ""
        self._leaves = leaf_layers(model, "", "compile_predict", training=False)
        self._configs = tuple(layer.config() for _, layer in self._leaves)
        self._model_dtype = model.dtype
        self._input = input_check(model)
        self._plans: dict[tuple[tuple[int, ...], np.dtype], _Compiled] = {}
        # the last model called with and its arrays, recognised by identity (one tuple, replaced whole)
        self._last_model: tuple[Any, tuple[Array, ...], tuple[Array, ...]] = (NOTHING, (), ())

    def __repr__(self) -> str:
        return f"CompiledPredict({describe(self.model)}, batch_size={self.batch_size})"

    def __call__(self, model: Layer, X: Any) -> Array:
        """The model's output for ``X`` in evaluation mode; see :func:`compile_predict`."""
        last = self._last_model
        if model is last[0]:
            params, buffers = last[1], last[2]
        else:
            params, buffers = model_arrays(self._leaves, self._configs, model, "predict")
            self._last_model = (model, params, buffers)
        X = readonly(self._input(X))
        compiled = self._plans.get((X.shape[1:], X.dtype)) or self._plan(X)
        size = self.batch_size
        if X.shape[0] <= size:
            Y = self._run(compiled, X, params, buffers)
        else:
            Y = freeze(np.concatenate([self._run(compiled, X[i : i + size], params, buffers) for i in range(0, X.shape[0], size)]))
        if np.may_share_memory(Y, X):  # a model that returns (a view of) its input: Flatten, Reshape, Identity
            Y = freeze(Y.copy())
        return Y

    def _run(self, compiled: _Compiled, X: Array, params: tuple[Array, ...], buffers: tuple[Array, ...]) -> Array:
        n = X.shape[0]
        extras = compiled.extras.get((n, X.dtype))
        if extras is None:
            if len(compiled.extras) >= _KEPT_EXTRAS:
                compiled.extras.clear()
            extras = compiled.extras[n, X.dtype] = call_extras(compiled.plan, compiled.context_calls, n, X.dtype, self._model_dtype, False, None)
        arguments = (X, params, buffers, self._configs, extras)
        if not compiled.ready:
            self._compile(compiled, arguments)
        restore = _blas.use_threads(self.threads or _blas.auto_threads(n))
        try:
            return compiled.function(*arguments)
        finally:
            if restore:
                _blas.set_threads(restore)

    def _plan(self, X: Array) -> _Compiled:
        started = time.perf_counter()
        lowered = plan.lower(self.model, X.shape[1:], X.shape[0])
        source = StepSource(lowered)
        text = source.predict_function()
        function, cached = load_function(text, source.kernels, "predict")
        context = tuple(call for call in lowered.calls if lowered.sites[call.site].layer.needs_context)
        compiled = self._plans[X.shape[1:], X.dtype] = _Compiled(function, lowered, context, text, cached)
        self.source, self.cached = text, cached
        self.compile_seconds += time.perf_counter() - started
        return compiled

    def _compile(self, compiled: _Compiled, arguments: tuple[Any, ...]) -> None:
        """Compile (or load from the disk cache) for the types of ``arguments``, timed into
        ``compile_seconds``."""
        self.compile_seconds += compile_for(compiled, arguments, f"compile_predict: the generated function for {describe(self.model)}")
