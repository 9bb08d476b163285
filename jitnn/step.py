"""One compiled training step: forward, loss, backward and update in a single Numba function.

``step = jitnn.compile_step(model, loss, optimizer)`` generates, from the model's structure,
one ``@jit`` function that calls the same kernels as the generic path
(:func:`jitnn.value_and_grad` then ``optimizer.update``) with no Python between them, and
wraps it in :class:`CompiledStep`, a callable ``step(model, state, X, T, key=None) ->
(model, state, value)`` with the generic path's checks and results.

What the wrapper does per call, and why it keeps the functional contract:

- nothing given is written to: the kernels only read their inputs;
- every array it returns (parameters, optimizer moments, running statistics) is a fresh
  array that a kernel allocated during this call, marked read-only before it is returned:
  no caller holds it, and nobody can write to it later;
- the arrays inside the step (activations, gradients) and the ones it returns are
  allocated by the kernels; with glibc's malloc thresholds fixed (:mod:`jitnn._memory`)
  each step gets the blocks the previous one freed, so after the first step of a batch
  shape nothing new is mapped and no page faults are paid;
- the records around those arrays are copied field by field from the model it was given
  (their validation already ran when that model was built), so a step costs no per-record
  checks; a model or state it returned itself is recognised (by identity) and not walked
  again.
"""

from __future__ import annotations

import itertools
import os
import pickle
import subprocess
import sys
import time
from typing import Any, Callable, Iterator

import attrs
import numba
import numpy as np

from jitnn import _blas, _memory, passes, plan, random, validate
from jitnn._checks import WRONG_GRADIENT_SHAPE, describe, float_input, readonly, sample_weights
from jitnn._codegen import StepSource, load_function
from jitnn.losses import Loss
from jitnn.optim._base import Optimizer, learning_rate_at, step_count
from jitnn.protocol import Array, Composite, Context, Layer

__all__ = ["CompiledStep", "compile_step"]


def compile_step(model: Layer, loss: Loss, optimizer: Any, *, threads: int | None = None, background: bool = False,
                 reduce: Callable[[tuple, tuple], tuple[tuple, tuple]] | None = None) -> CompiledStep:
    """A training step compiled into one Numba function for ``model``'s architecture.

    Parameters
    ----------
    model : the model (its structure and configuration; any model of the same architecture
        can be passed to the step, with any parameter values)
    loss : a jitnn loss
    optimizer : a jitnn optimizer. A named optimizer (sgd, momentum, adam, adamw, rmsprop,
        adagrad, lion) runs inside the compiled function; any other (an ``optim.chain``
        with transforms, a user's own) runs its ``update`` in Python after it.
    threads : BLAS threads for the step's matrix products: ``None`` chooses by batch size
        (one thread for small batches, all for large ones; see :mod:`jitnn._blas`), an
        integer fixes the count.
    background : compile in another process instead of in this one. Until that process has
        put the compiled function in the disk cache, each call runs the generic path
        (:func:`jitnn.train_step`, under the same BLAS thread count), which gives the same
        bits; the call after it finished loads the function and uses it from then on. A
        function already in the cache is loaded at once. Where the step cannot be cached
        (an unwritable cache folder, a kernel without a source file), with
        ``NUMBA_DISABLE_JIT=1`` or with ``JITNN_BACKGROUND_COMPILE=0``, the step compiles in
        this process as without ``background``. :func:`jitnn.fit` uses this by default.
    reduce : a function ``(grads, buffers) -> (grads, buffers)`` called between the gradients
        and the update, which it may change (data parallelism averages them over MPI ranks:
        :func:`jitnn.fit` with ``distributed=True``). ``grads`` holds each parameter's
        gradient in the model's order, ``buffers`` the new buffers of each site that updates
        them (a tuple per site). With it the step is split in two compiled functions, the
        gradients' and the named optimizer's update, and that call is the only Python between
        them. Not with ``background``.

    Returns
    -------
    CompiledStep
        ``step(model, state, X, T, key=None, sample_weight=None) -> (model, state,
        value)``, equal to :func:`jitnn.train_step` on the same arguments. The function is generated and
        compiled at the first call for each per-example input shape (``step.compile_seconds``
        says how long that took) and cached on disk, so another process loads it.

    Raises
    ------
    TypeError
        For an argument of the wrong kind, or a model with a layer that has no compiled
        form (a layer whose ``updated`` is Python
        rather than a ``Kernels.update`` kernel): use :func:`jitnn.train_step` for those.
    """
    return CompiledStep(model, loss, optimizer, threads=threads, background=background, reduce=reduce)


@attrs.define
class _Compiled:
    """The compiled function for one per-example input shape and dtype: the model's plan
    for that shape, the calls that take per-call arguments, the sites whose buffers the
    step updates, and whether the function has been compiled (or loaded) for the argument
    types of a first call."""

    function: Any
    plan: plan.Plan
    context_calls: tuple[plan.Call, ...]
    buffer_sites: tuple[int, ...]
    source: str
    cached: bool
    ready: bool = False
    child: subprocess.Popen | None = None  # the process compiling it in the background
    child_done: bool = False  # a background compilation ran (successfully or not): not again
    update: Any = None  # a split step's compiled update (see CompiledStep's reduce)
    update_ready: bool = False

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.plan.output_shape


class CompiledStep:
    """A compiled training step for one architecture, loss and optimizer.

    Call it as ``model, state, value = step(model, state, X, T, key=None,
    sample_weight=None)``. Attributes:
    ``compile_seconds`` (generation, compilation or loading from the disk cache, for all
    input shapes so far), ``cached`` (whether the last compiled function is on disk),
    ``source`` (the generated code of the last input shape), ``fused`` (whether the
    optimizer runs inside the compiled function), ``background`` (whether a function not in
    the disk cache compiles in another process) and ``generic_steps`` (the calls that ran
    the generic path meanwhile).
    """

    def __init__(self, model: Layer, loss: Loss, optimizer: Any, *, threads: int | None = None, background: bool = False,
                 reduce: Callable[[tuple, tuple], tuple[tuple, tuple]] | None = None) -> None:
        if not isinstance(model, Layer):
            raise TypeError(f"compile_step: model must be a jitnn layer (for example a Chain), got {type(model).__name__}")
        if not isinstance(loss, Loss):
            raise TypeError(f"compile_step: loss must be a jitnn loss such as jn.SoftmaxCrossEntropy(), got {loss!r}")
        if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
            raise TypeError(f"compile_step: optimizer must have init and update (for example jn.optim.adam(1e-3)), got {optimizer!r}")
        self.threads = _blas.check_threads(threads, "compile_step")
        self.background = validate.flag(background, "compile_step", "background") and os.environ.get("JITNN_BACKGROUND_COMPILE", "1") != "0"
        if reduce is not None and not callable(reduce):
            raise TypeError(f"compile_step: reduce must be a function (grads, buffers) -> (grads, buffers) or None, got {reduce!r}")
        self._reduce = reduce
        self.background = self.background and reduce is None
        self.generic_steps = 0  # calls that ran the generic path while the function compiled elsewhere
        _memory.keep_freed_memory()  # reuse the blocks the previous step freed (see _memory.py)
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.fused = isinstance(optimizer, Optimizer)
        self.compile_seconds = 0.0
        self.cached = False
        self.source = ""
        self._leaves = leaf_layers(model, "")
        self._configs = tuple(layer.config() for _, layer in self._leaves)
        self._first_buffer = tuple(itertools.accumulate((len(layer.buffer_names) for _, layer in self._leaves), initial=0))
        self._loss_config = loss.config()
        self._moment_names = optimizer.moment_names if self.fused else ()
        self._who = f"{optimizer.name} in the compiled step" if self.fused else ""
        self._model_dtype = model.dtype
        self._input = input_check(model)
        self._rebuild = _rebuilder(model)
        self._plans: dict[tuple[tuple[int, ...], np.dtype], _Compiled] = {}
        # what the last call returned, recognised by identity so that it is not walked again;
        # each is one tuple, replaced whole, so threads sharing a step never see half of one
        self._last_model: tuple[Any, tuple[Array, ...], tuple[Any, ...]] = (NOTHING, (), ())
        self._last_state: tuple[Any, tuple[tuple[Array, ...], ...]] = (NOTHING, ())

    def __repr__(self) -> str:
        return f"CompiledStep({describe(self.model)}, {type(self.loss).__name__}, {type(self.optimizer).__name__}, fused={self.fused})"

    # ------------------------------------------------------------------ the call
    def __call__(self, model: Layer, state: Any, X: Any, T: Any, *, key: random.Key | None = None,
                 sample_weight: Any = None) -> tuple[Layer, Any, float]:
        """One step on the batch ``(X, T)`` in training mode, its examples weighted by
        ``sample_weight`` (see :class:`jitnn.Loss`); see :func:`compile_step`."""
        if key is not None and not isinstance(key, random.Key):
            raise TypeError(f"step: key must be a jitnn.random.Key or None, got {type(key).__name__}")
        last = self._last_model
        params, buffers = (last[1], last[2]) if model is last[0] else self._model_arrays(model)
        X = readonly(self._input(X))
        compiled = self._plans.get((X.shape[1:], X.dtype)) or self._plan(X)
        n = X.shape[0]
        given_T = T  # the generic path takes the targets as given (the loss converts them again)
        T = readonly(self.loss.targets(stand_in((n, *compiled.output_shape), self._model_dtype or X.dtype), T))
        weights = self.loss.weights(n, sample_weight, "step")
        W = weights[0] if weights else sample_weights(None, n, "step")  # passed, unused, to a loss without weights
        extras = call_extras(compiled.plan, compiled.context_calls, n, X.dtype, self._model_dtype, True, key)
        if self.fused:
            last_state = self._last_state
            moments = last_state[1] if state is last_state[0] else self._moment_arrays(state)
            optimizer, count = self.optimizer, int(state.count)
            learning_rate = learning_rate_at(optimizer.learning_rate, count, self._who) * float(state.lr_scale)
            hyper = optimizer.kernel_config(learning_rate, count + 1)
        else:
            moments, hyper = (), ()
        arguments = (X, T, W, params, buffers, self._configs, extras, self._loss_config, moments, hyper)
        if not compiled.ready:
            waiting = self._compiling_elsewhere(compiled, arguments)
            if waiting:
                return self._generic_step(model, state, X, given_T, sample_weight, key, n, start=compiled if waiting == "start" else None,
                                          arguments=arguments)
            self._compile(compiled, arguments)
        restore = _blas.use_threads(self.threads or _blas.auto_threads(n))
        try:
            results = compiled.function(*arguments)
        except ValueError as error:
            if error.args == (WRONG_GRADIENT_SHAPE,):
                self._name_wrong_gradient(model, X, given_T, sample_weight, key)
            raise
        finally:
            if restore:
                _blas.set_threads(restore)
        if self._reduce is not None:  # the step split around the reduction
            value, grads, updated = results
            grads, updated = self._reduce(grads, updated)
            if not self.fused:
                return self._update_in_python(compiled, model, state, params, value, grads, updated)
            update_arguments = (params, grads, moments, hyper)
            if not compiled.update_ready:
                self.compile_seconds += compile_for(_Update(compiled), update_arguments, f"compile_step: the generated update for {describe(self.model)}")
                compiled.update_ready = True
            new_params, new_moments = compiled.update(*update_arguments)
            results = (value, new_params, new_moments, updated)
        elif not self.fused:
            return self._update_in_python(compiled, model, state, params, *results)
        value, new_params, new_moments, updated_buffers = results
        new_buffers = dict(zip(compiled.buffer_sites, updated_buffers)) if updated_buffers else _NONE
        new_model = self._rebuild(model, iter(new_params), new_buffers)
        # as in the generic update, the moment trees are made of the new model's records
        trees = [self._rebuild(new_model, iter(arrays), _NONE) for arrays in new_moments]
        new_state = _clone(state, dict(zip(("count", *self._moment_names), (step_count(count + 1), *trees))))
        self._remember(new_model, new_params, buffers, new_buffers)
        self._last_state = (new_state, new_moments)
        return new_model, new_state, float(value)

    # ------------------------------------------------------------------ background compilation
    def _compiling_elsewhere(self, compiled: _Compiled, arguments: tuple[Any, ...]) -> str:
        """``"start"`` (run the generic step, then start compiling in another process),
        ``"running"`` (that process has not finished) or ``""`` (compile or load here)."""
        if not (self.background and compiled.cached and hasattr(compiled.function, "compile")) or compiled.child_done:
            return ""
        if compiled.child is None:
            return "" if _in_disk_cache(compiled.function, arguments) else "start"
        if compiled.child.poll() is None:
            return "running"
        compiled.child, compiled.child_done = None, True  # its result is in the cache, or it failed: _compile either way
        return ""

    def _generic_step(self, model: Layer, state: Any, X: Array, T: Any, sample_weight: Any, key: random.Key | None, n: int, *,
                      start: _Compiled | None, arguments: tuple[Any, ...]) -> tuple[Layer, Any, float]:
        """:func:`jitnn.train_step` under the thread count the compiled function would use;
        with ``start``, then start compiling that function in another process (after this
        step, so that it finds every kernel compiled and cached)."""
        restore = _blas.use_threads(self.threads or _blas.auto_threads(n))
        try:
            value, grads, model = passes.value_grad_and_update(model, self.loss, X, T, key=key, training=True, sample_weight=sample_weight)
            model, state = self.optimizer.update(model, grads, state)
        finally:
            if restore:
                _blas.set_threads(restore)
        self.generic_steps += 1
        if start is not None:
            start.child = _start_compiling(start.function, arguments)
            start.child_done = start.child is None
        return model, state, value

    def _name_wrong_gradient(self, model: Layer, X: Array, T: Any, sample_weight: Any, key: random.Key | None) -> None:
        """A parameter's gradient had the wrong shape inside the step: the generic path on the
        same batch names the layer and the shapes (it checks each gradient as it comes)."""
        passes.value_and_grad(model, self.loss, X, T, key=key, training=True, sample_weight=sample_weight)
        raise ValueError(f"step: {WRONG_GRADIENT_SHAPE} in {describe(model)} (the generic path, on the same batch, got the right shapes)")

    def _update_in_python(self, compiled: _Compiled, model: Layer, state: Any, params: tuple[Array, ...], value: float, grads: tuple, buffers: tuple) -> tuple[Layer, Any, float]:
        """For an optimizer without one kernel (a chain of transforms, a user's own): the
        gradient records and the model with its new running statistics, then its update."""
        new_buffers = dict(zip(compiled.buffer_sites, buffers))
        if new_buffers:
            model = self._rebuild(model, iter(params), new_buffers)
        grads = self._rebuild(model, iter(grads), {})
        new_model, new_state = self.optimizer.update(model, grads, state)
        return new_model, new_state, float(value)

    def _remember(self, model: Layer, params: tuple[Array, ...], buffers: tuple[Array, ...], new_buffers: dict[int, tuple]) -> None:
        """Keep ``model``'s arrays for the next call: its parameters, and its buffers with
        the new ones of the sites the step updated."""
        if new_buffers:
            found = list(buffers)
            for site, arrays in new_buffers.items():
                first = self._first_buffer[site]
                found[first : first + len(arrays)] = arrays
            buffers = tuple(found)
        self._last_model = (model, params, buffers)

    # ------------------------------------------------------------------ checked arguments
    def _model_arrays(self, model: Any) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
        return model_arrays(self._leaves, self._configs, model, "step")

    def _moment_arrays(self, state: Any) -> tuple[tuple[Array, ...], ...]:
        optimizer = self.optimizer
        if type(state) is not optimizer.state_class:
            raise TypeError(f"step: state must be the {optimizer.state_class.__name__} from {optimizer.name}.init, got {type(state).__name__}")
        moments = []
        for name in self._moment_names:
            leaves = leaf_layers(getattr(state, name), "")
            try:
                _check_architecture(self._leaves, None, leaves)
            except (TypeError, ValueError) as error:
                raise ValueError(f"step: the state's {name} does not match the model: {error}") from None
            moments.append(tuple(p for _, layer in leaves for p in layer.params))
        return tuple(moments)

    # ------------------------------------------------------------------ generation
    def _plan(self, X: Array) -> _Compiled:
        started = time.perf_counter()
        lowered = plan.lower(self.model, X.shape[1:], X.shape[0])
        source = StepSource(lowered)
        kernel = self.optimizer.kernel if self.fused else None
        factored = self.fused and getattr(self.optimizer, "factored_gradients", False)
        frozen = frozenset(k for k, keep in enumerate(self.optimizer.frozen(self.model)) if keep) if self.fused else frozenset()
        split = self._reduce is not None
        text = source.function(self.loss, None if split else kernel, len(self._moment_names), factored and not split, frozen)
        function, cached = load_function(text, source.kernels)
        update = None
        if split and kernel is not None:
            updater = StepSource(lowered)
            update, _ = load_function(updater.update_function(kernel, len(self._moment_names), frozen), updater.kernels, "update")
        context = tuple(call for call in lowered.calls if lowered.sites[call.site].layer.needs_context)
        compiled = _Compiled(function, lowered, context, tuple(site for site, _ in source.buffers), text, cached, update=update)
        self._plans[X.shape[1:], X.dtype] = compiled
        self.source, self.cached = text, cached
        self.compile_seconds += time.perf_counter() - started
        return compiled

    def _compile(self, compiled: _Compiled, arguments: tuple[Any, ...]) -> None:
        """Compile (or load from the disk cache) for the types of ``arguments``, timed into
        ``compile_seconds``, so that compilation never hides inside a step."""
        self.compile_seconds += compile_for(compiled, arguments, f"compile_step: the generated step for {describe(self.model)}")


class _Update:
    """A split step's update, as :func:`compile_for` takes a function."""

    def __init__(self, compiled: _Compiled) -> None:
        self.function, self.ready = compiled.update, False


def compile_for(compiled: Any, arguments: tuple[Any, ...], what: str) -> float:
    """Compile ``compiled.function`` (or load it from the disk cache) for the types of
    ``arguments`` and mark it ready; the seconds it took. A typing error becomes a
    ``TypeError`` that names ``what`` was generated."""
    started = time.perf_counter()
    if hasattr(compiled.function, "compile"):  # not under NUMBA_DISABLE_JIT=1
        try:
            compiled.function.compile(tuple(numba.typeof(a) for a in arguments))
        except numba.core.errors.TypingError as error:
            raise TypeError(f"{what} does not compile:\n{error}") from None
    compiled.ready = True
    return time.perf_counter() - started


def _in_disk_cache(function: Any, arguments: tuple[Any, ...]) -> bool:
    """Whether Numba's disk cache holds ``function`` compiled for the types of ``arguments``
    (its index only: nothing is loaded)."""
    try:
        cache = function._cache
        key = cache._index_key(tuple(numba.typeof(a) for a in arguments), function.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:  # no index yet, or one that cannot be read: compiling will tell
        return False


#: Run in the background process: import the generated module from its file, compile its
#: step for the pickled argument types read from standard input (Numba saves it to the cache).
_CHILD = (
    "import importlib.util, pickle, sys\n"
    "name, path = sys.argv[1], sys.argv[2]\n"
    "spec = importlib.util.spec_from_file_location(name, path)\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "sys.modules[name] = module\n"
    "spec.loader.exec_module(module)\n"
    "module.step.compile(pickle.load(sys.stdin.buffer))\n"
)


#: The processes compiling a step, by module and argument types: a second step of the same
#: architecture (another ``fit`` of the same model) waits for the same process.
_COMPILING: dict[tuple[str, tuple[Any, ...]], subprocess.Popen] = {}


def _start_compiling(function: Any, arguments: tuple[Any, ...]) -> subprocess.Popen | None:
    """A process compiling ``function`` (a generated step) for the types of ``arguments``
    into the disk cache, with this process's module path; ``None`` if it cannot start."""
    module = sys.modules[function.py_func.__module__]
    types = tuple(numba.typeof(a) for a in arguments)
    for key, process in list(_COMPILING.items()):  # reap the finished ones (no zombies are left)
        if process.poll() is not None:
            del _COMPILING[key]
    running = _COMPILING.get((module.__name__, types))
    if running is not None:
        return running
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
    try:
        child = subprocess.Popen([sys.executable, "-c", _CHILD, module.__name__, module.__file__], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
        with child.stdin:
            pickle.dump(types, child.stdin)
    except Exception:  # cannot start, or the types do not pickle: compile here instead
        return None
    _COMPILING[module.__name__, types] = child
    return child


_STAND_INS: dict[tuple[tuple[int, ...], np.dtype], Array] = {}


def stand_in(shape: tuple[int, ...], dtype: np.dtype) -> Array:
    """A read-only array of ``shape`` and ``dtype`` that allocates nothing: what the checks
    that read only shape and dtype (``Loss.targets``, ``Layer.call_args``) get."""
    found = _STAND_INS.get((shape, dtype))
    if found is None:
        found = _STAND_INS[shape, dtype] = np.broadcast_to(np.zeros((), dtype), shape)
    return found


def call_extras(lowered: plan.Plan, context_calls: tuple[plan.Call, ...], n: int, dtype: np.dtype, model_dtype: np.dtype | None,
                training: bool, key: random.Key | None) -> tuple[tuple[Any, ...], ...]:
    """Each call's per-call arguments (a dropout mask) for a batch of ``n`` inputs of
    ``dtype``, in training or evaluation mode; every array after the input has the
    parameters' dtype."""
    calls = lowered.calls
    if not context_calls:
        return _NO_EXTRAS[len(calls)]
    context = Context(training, key)
    extras: list[tuple[Any, ...]] = [()] * len(calls)
    for call in context_calls:
        site = lowered.sites[call.site]
        layer = site.layer
        values = tuple(layer.call_args(stand_in((n, *lowered.slots[call.x]), dtype if call.x == 0 else model_dtype or dtype), context, site.where))
        extras[call.call] = layer._kernel_extras(values)
    return tuple(extras)


class _NoExtras(dict):
    """``_NO_EXTRAS[k]``: a tuple of ``k`` empty tuples, made once."""

    def __missing__(self, count: int) -> tuple[tuple[()], ...]:
        value = self[count] = ((),) * count
        return value


_NO_EXTRAS = _NoExtras()
_NONE: dict[int, tuple[Array, ...]] = {}  # no new buffers (never written to)
NOTHING = object()  # what the step remembers before its first call: no argument is this


# --------------------------------------------------------------------------- model walks
def model_arrays(expected: list[tuple[str, Layer]], configs: tuple[Any, ...], model: Any, who: str) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    """The parameter and buffer arrays of ``model``, after checking it has the architecture
    of the leaves ``expected`` (configuration included); ``who`` names the caller in errors."""
    if not isinstance(model, Layer):
        raise TypeError(f"{who}: model must be a jitnn layer, got {type(model).__name__}")
    leaves = leaf_layers(model, "", who, training=False)
    _check_architecture(expected, configs, leaves, who)
    return tuple(p for _, layer in leaves for p in layer.params), tuple(b for _, layer in leaves for b in layer.buffers)


def leaf_layers(model: Any, where: str, who: str = "compile_step", training: bool = True) -> list[tuple[str, Layer]]:
    """The leaf layers of ``model`` with their positions, in the order the step uses them;
    ``TypeError`` for a layer that has no compiled form (in ``training``: one whose buffers
    are updated in Python)."""
    if isinstance(model, Composite):
        return [leaf for suffix, member in model.named_members() for leaf in leaf_layers(member, where + suffix, who, training)]
    if not isinstance(model, Layer):
        raise TypeError(f"{who}: model{where} is not a jitnn layer (got {type(model).__name__})")
    if training and model.needs_context and type(model).updated is not Layer.updated:
        raise TypeError(
            f"compile_step: {describe(model, where)} computes its updated buffers in Python (it overrides updated); "
            "give it a Kernels.update kernel to compile it, or use jitnn.train_step"
        )
    return [(where, model)]


def _check_architecture(expected: list[tuple[str, Layer]], configs: tuple[Any, ...] | None, found: list[tuple[str, Layer]], who: str = "step") -> None:
    """Raise unless ``found`` has the leaves, parameter shapes and dtypes (and, given
    ``configs``, the configuration) of ``expected``, naming the first difference."""
    if [w for w, _ in found] != [w for w, _ in expected]:
        raise ValueError(f"{who}: the model's structure differs from the compiled one: leaves {[w or 'model' for w, _ in found]} against {[w or 'model' for w, _ in expected]}")
    for i, ((where, layer), (_, template)) in enumerate(zip(found, expected)):
        if type(layer) is not type(template):
            raise ValueError(f"{who}: model{where} is a {type(layer).__name__}, the compiled model has a {type(template).__name__} there")
        for name, array, wanted in zip(layer.param_names, layer.params, template.params):
            if array.shape != wanted.shape or array.dtype != wanted.dtype:
                raise ValueError(f"{who}: {describe(layer, where)}.{name} is {array.dtype}{list(array.shape)}, the compiled model has {wanted.dtype}{list(wanted.shape)}")
        if configs is not None and not _same_config(layer.config(), configs[i]):
            raise ValueError(f"{who}: {describe(layer, where)} is configured differently from the compiled model: {layer.config()} against {configs[i]}")


def _same_config(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.shape == y.shape and x.dtype == y.dtype):
                return False
        elif type(x) is not type(y) or x != y:
            return False
    return True


def input_check(model: Layer) -> Callable[[Any], Array]:
    """``model._input`` (check and convert a batch), with the walk to the layer that decides
    what input the model takes done once."""
    first = model
    while isinstance(first, Composite):
        first = first.members[0]
    if type(first)._input is not Layer._input:
        return first._input
    dtype, who = model.dtype, describe(model)
    return lambda X: float_input(X, dtype, who)


Rebuild = Callable[[Any, Iterator[Array], "dict[int, tuple[Array, ...]]"], Any]


def _rebuilder(template: Layer) -> Rebuild:
    """A function ``rebuild(node, params, buffers)`` that copies ``node`` (``template``'s
    architecture: the model, or a gradient or moment tree of its structure) with its leaf
    layers holding the next arrays of ``params`` and, for leaf ``i`` in ``buffers``, those
    buffers.

    It is written once per architecture as straight-line Python (no walk, no checks per
    call: a step's rebuild takes about a microsecond per record). Records are copied field
    by field: the arrays have the shapes and dtypes the originals had, so the records'
    checks, which ran when ``node`` was built, still hold.
    """
    lines: list[str] = []
    namespace: dict[str, Any] = {"new": object.__new__, "put": object.__setattr__}
    counter, leaves = itertools.count(), itertools.count()

    def emit(node: Layer, expression: str) -> str:
        i = next(counter)
        cls, old = type(node), f"old{i}"
        namespace[f"C{i}"] = cls
        lines.append(f"{old} = {expression}")
        changes: dict[str, str] = {}
        if isinstance(node, Composite):
            for name, is_tuple in node._member_fields():  # the members, in the order of the plan's sites
                value = getattr(node, name)
                if is_tuple:
                    changes[name] = f"({', '.join(emit(v, f'{old}.{name}[{j}]') for j, v in enumerate(value))},)"
                else:
                    changes[name] = emit(value, f"{old}.{name}")
        else:
            index = next(leaves)
            changes = {name: "next(params)" for name in cls.param_names}
            if cls.buffer_names:
                lines.append(f"new_buffers{i} = buffers.get({index})")
                for j, name in enumerate(cls.buffer_names):
                    changes[name] = f"{old}.{name} if new_buffers{i} is None else new_buffers{i}[{j}]"
        if not changes:
            return old
        lines.append(f"new{i} = new(C{i})")
        for field in cls.__attrs_attrs__:
            lines.append(f"put(new{i}, {field.name!r}, {changes.get(field.name, f'{old}.{field.name}')})")
        return f"new{i}"

    result = emit(template, "node")
    body = "\n".join(f"    {line}" for line in lines)
    exec(f"def rebuild(node, params, buffers):\n{body}\n    return {result}\n", namespace)
    return namespace["rebuild"]


def _clone(record: Any, changes: dict[str, Any]) -> Any:
    """A copy of the frozen record ``record`` with ``changes``, made without running its
    converters and checks (the caller guarantees that they hold)."""
    new = object.__new__(type(record))
    for field in type(record).__attrs_attrs__:
        object.__setattr__(new, field.name, changes[field.name] if field.name in changes else getattr(record, field.name))
    return new

