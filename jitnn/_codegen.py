"""Source generation and on-disk caching for the compiled training step.

:func:`jitnn.compile_step` writes, for one model, loss and optimizer, the source of a single
Python function that calls every layer's own kernels in order (forward, the loss, backward,
the optimizer's kernel per parameter array) and compiles it with jitnn's kernel policy. The
source is written to a module file named by a hash of its text, inside the Numba cache
folder, and imported under that name, so Numba's on-disk cache keys on a real file and a
second process loads machine code instead of compiling.

The generated function has one calling convention::

    step(X, T, params, configs, extras, loss_config, moments, hyper)

- ``params``: every parameter array of the model, in the order of its leaf layers;
- ``configs[i]`` and ``extras[i]``: leaf ``i``'s ``config()`` and per-call arguments;
- ``moments[j][k]``: the optimizer's ``j``-th moment of parameter ``k``; ``hyper``: its
  kernel's scalars for this step.

Every value is passed in, none is written into the source as a constant: Numba would type an
integer constant as a literal and compile a kernel once per value. Every array the step makes
itself is handed to kernels through ``as_readonly`` (a retyping, not a copy), so the kernels
run with the read-only signatures the generic path compiles, and the step compiles no
kernel a second time.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import itertools
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import attrs
import numba
import numpy as np

from jitnn._checks import describe
from jitnn.protocol import Composite, Layer

__all__ = ["Leaf", "StepSource", "load_function"]


@attrs.frozen
class Leaf:
    """A leaf layer of the model as the step sees it: its position (``where``), its
    per-example input shape, whether that input is the model's own input, and where its
    parameters start in ``params``."""

    layer: Layer
    where: str
    input_shape: tuple[int, ...]
    takes_model_input: bool
    first_param: int


Backward = Callable[[str, bool], "str | None"]


class StepSource:
    """The lines of a step function, built by walking the model once.

    Leaf layers are written here, generically from their kernels; composite layers write
    their own part through :meth:`Composite._emit`, calling :meth:`layer` on their members.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.leaves: list[Leaf] = []
        self.grads: list[str] = []  # the variable holding each parameter's gradient
        self.buffers: list[tuple[int, str]] = []  # (leaf index, its new buffers as a read-only tuple)
        self._imports: dict[int, tuple[str, Any]] = {}
        self._names = itertools.count()

    # ------------------------------------------------------------------ helpers for _emit
    def variable(self, prefix: str) -> str:
        """A fresh variable name."""
        return f"{prefix}{next(self._names)}"

    def line(self, text: str) -> None:
        self.lines.append(text)

    def kernel(self, dispatcher: Any) -> str:
        """The name under which the generated module imports ``dispatcher``."""
        known = self._imports.get(id(dispatcher))
        if known is None:
            function = getattr(dispatcher, "py_func", dispatcher)
            module, name = function.__module__, function.__name__
            if getattr(sys.modules.get(module), name, None) is not dispatcher:
                raise TypeError(
                    f"kernel {function.__qualname__} cannot be compiled into a training step: it must be a "
                    f"module-level @jit function importable as {module}.{name}"
                )
            known = self._imports[id(dispatcher)] = (f"k{len(self._imports)}_{name.lstrip('_')}", dispatcher)
        return known[0]

    def layer(self, layer: Layer, x: str, shape: tuple[int, ...], where: str) -> tuple[str, tuple[int, ...], Backward]:
        """Emit ``layer`` applied to the variable ``x``; see :meth:`Composite._emit`."""
        if isinstance(layer, Composite):
            return layer._emit(self, x, shape, where)
        return self._leaf(layer, x, shape, where)

    # ------------------------------------------------------------------ leaf layers
    def _leaf(self, layer: Layer, x: str, shape: tuple[int, ...], where: str) -> tuple[str, tuple[int, ...], Backward]:
        try:
            out = tuple(layer.output_shape(shape))
        except ValueError as error:
            raise ValueError(f"{describe(layer, where)}: {error} (per-example input shape {shape})") from None
        index, first = len(self.leaves), len(self.grads)
        self.leaves.append(Leaf(layer, where, tuple(shape), x == "X", first))
        kernels = layer.kernels
        forward, grad_input = self.kernel(kernels.forward), self.kernel(kernels.grad_input)
        grad_params = self.kernel(kernels.grad_params) if layer.param_names else None
        flat = layer.elementwise
        x_in = f"ro({x}.reshape(-1))" if flat else f"ro({x})"
        back_shape = f".reshape({x}.shape)" if flat else ""
        rest = "".join(f", params[{first + j}]" for j in range(len(layer.param_names))) + f", *configs[{index}], *extras[{index}]"
        y = self.variable("y")
        self.line(f"{y} = {forward}({x_in}{rest}){back_shape}")
        if layer.needs_context and kernels.update is not None:
            new = self.variable("buffers")
            self.line(f"{new} = {self.kernel(kernels.update)}({x_in}{rest})")
            self.buffers.append((index, _tuple(f"ro({new}[{j}])" for j in range(len(layer.buffer_names)))))
        self.grads.extend([""] * len(layer.param_names))

        def backward(dy: str, need_input_grad: bool) -> str | None:
            dy_in = f"ro({dy}.reshape(-1))" if flat else f"ro({dy})"
            if grad_params is not None:
                grads = self.variable("grads")
                self.line(f"{grads} = {grad_params}({x_in}, {dy_in}{rest})")
                for j in range(len(layer.param_names)):
                    self._gradient(first + j, f"{grads}[{j}]", describe(layer, where))
            if not need_input_grad:
                return None
            dx = self.variable("dx")
            self.line(f"{dx} = {grad_input}({x_in}, {dy_in}{rest}){back_shape}")
            return dx

        return y, out, backward

    # ------------------------------------------------------------------ the whole function
    def function(self, model: Layer, input_shape: tuple[int, ...], loss: Any, optimizer_kernel: Any, n_moments: int) -> tuple[str, tuple[int, ...]]:
        """The source of the step for ``model`` on per-example input ``input_shape``, and
        the model's per-example output shape. With ``optimizer_kernel`` ``None`` the step
        stops at the gradients: ``-> (value, grads, new buffers)``; otherwise it updates:
        ``-> (value, new params, new moments, new buffers)``.

        Each layer's parameters are updated as soon as its gradients exist, in the backward
        pass, while they are still in cache (the order changes no result: each update reads
        only its own parameter, gradient and moments)."""
        self._update = self.kernel(optimizer_kernel) if optimizer_kernel is not None else None
        self._n_moments = n_moments
        self._new_params: dict[int, str] = {}
        self._new_moments: list[dict[int, str]] = [{} for _ in range(n_moments)]
        y, output_shape, backward = self.layer(model, "X", tuple(input_shape), "")
        if loss.kernels.value_and_grad is not None:
            self.line(f"value, dy = {self.kernel(loss.kernels.value_and_grad)}(ro({y}), T, *loss_config)")
        else:
            value, grad = self.kernel(loss.kernels.value), self.kernel(loss.kernels.grad)
            self.line(f"value = {value}(ro({y}), T, *loss_config)")
            self.line(f"dy = {grad}(ro({y}), T, *loss_config)")
        backward("dy", False)
        buffers = _tuple(name for _, name in self.buffers)
        if self._update is None:
            self.line(f"return value, {_tuple(f'ro({g})' for g in self.grads)}, {buffers}")
        else:
            new_params = [self._new_params[k] for k in range(len(self.grads))]
            new_moments = (_tuple(moment[k] for k in range(len(self.grads))) for moment in self._new_moments)
            self.line(f"return value, {_tuple(new_params)}, {_tuple(new_moments)}, {buffers}")
        imports = "\n".join(
            f"from {d.py_func.__module__ if hasattr(d, 'py_func') else d.__module__} import "
            f"{getattr(d, 'py_func', d).__name__} as {alias}"
            for alias, d in self._imports.values()
        )
        body = "\n".join(f"    {line}" for line in self.lines)
        source = (
            f"{imports}\nimport numpy as np\nfrom jitnn._jit import as_readonly as ro, jit\n\n\n"
            "@jit\ndef step(X, T, params, configs, extras, loss_config, moments, hyper):\n"
            f"{body}\n"
        )
        return source, output_shape

    def _gradient(self, k: int, gradient: str, owner: str) -> None:
        """Parameter ``k``'s gradient is ``gradient``: check its shape (a kernel that got
        it wrong would make the optimizer read out of bounds) and update the parameter."""
        self.grads[k] = gradient
        self.line(f"if {gradient}.shape != params[{k}].shape:")
        self.line(f"    raise ValueError('the grad_params kernel of {_quote(owner)} returned a gradient of the wrong shape')")
        if self._update is None:
            return
        out = self.variable("updated")
        moments = "".join(f", moments[{j}][{k}].reshape(-1)" for j in range(self._n_moments))
        self.line(f"{out} = {self._update}(params[{k}].reshape(-1), ro({gradient}.reshape(-1)){moments}, *hyper)")
        self._new_params[k] = f"ro({out}[0].reshape(params[{k}].shape))"
        for j in range(self._n_moments):
            self._new_moments[j][k] = f"ro({out}[{j + 1}].reshape(params[{k}].shape))"

    @property
    def kernels(self) -> list[Any]:
        return [dispatcher for _, dispatcher in self._imports.values()]


def _tuple(items: Any) -> str:
    items = list(items)
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


# --------------------------------------------------------------------------- modules on disk
def _fingerprint(kernels: list[Any]) -> str:
    """A hash of everything the generated code's machine code depends on besides its own
    text: the versions of Python, NumPy and Numba and the source of every module that
    defines a kernel the step calls, and of jitnn itself (kernels call jitnn's helpers).
    Numba's cache checks only the generated file, so a changed kernel must change its name."""
    digest = hashlib.sha256(f"{sys.version}|{np.__version__}|{numba.__version__}".encode())
    files = set(_jitnn_sources())
    for dispatcher in kernels:
        module = sys.modules.get(getattr(dispatcher, "py_func", dispatcher).__module__)
        path = getattr(module, "__file__", None)
        if path is None:
            return ""  # a kernel without a source file: the step cannot be cached
        files.add(str(path))
    try:
        for path in sorted(files):
            digest.update(_file_digest(path))
    except OSError:
        return ""  # a source file removed or unreadable since it was imported: likewise
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _jitnn_sources() -> tuple[str, ...]:
    """jitnn's source files, found once per process (their contents are read by stamp)."""
    return tuple(str(p) for p in sorted(Path(__file__).parent.rglob("*.py")))


_DIGESTS: dict[tuple[str, float, int], bytes] = {}


def _file_digest(path: str) -> bytes:
    stat = os.stat(path)
    key = (path, stat.st_mtime, stat.st_size)
    if key not in _DIGESTS:
        _DIGESTS[key] = hashlib.sha256(Path(path).read_bytes()).digest()
    return _DIGESTS[key]


def cache_folder() -> Path:
    """Where generated step modules are written: ``steps`` under ``NUMBA_CACHE_DIR`` when
    it is set, otherwise under the user's cache folder (``$XDG_CACHE_HOME/jitnn``)."""
    if numba.config.CACHE_DIR:
        return Path(numba.config.CACHE_DIR) / "jitnn_steps"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jitnn" / "steps"


def load_function(source: str, kernels: list[Any]) -> tuple[Any, bool]:
    """Import the ``step`` function of ``source`` from a module file named by its hash.

    Returns the compiled dispatcher and whether it is cached on disk. When the cache folder
    cannot be written (or a kernel has no source file), the module is written to a private
    temporary folder and compiled in memory, with a warning.
    """
    fingerprint = _fingerprint(kernels)
    text = f"# generated by jitnn.compile_step; environment {fingerprint or 'uncacheable'}\n{source}"
    name = f"jitnn_step_{hashlib.sha256(text.encode()).hexdigest()[:20]}"
    if name in sys.modules:
        return sys.modules[name].step, bool(fingerprint)
    folder, cached = cache_folder(), bool(fingerprint)
    try:
        if not cached:
            raise OSError("a kernel has no readable source file")
        path = _write_once(folder, f"{name}.py", text)
    except OSError as error:
        warnings.warn(f"jitnn: cannot cache the compiled step in {folder} ({error}); compiling it in memory", RuntimeWarning, stacklevel=3)
        path, cached = Path(tempfile.mkdtemp(prefix="jitnn_step_")) / f"{name}.py", False
        path.write_bytes(text.replace("@jit\n", "@jit(cache=False)\n", 1).encode())
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module.step, cached


def _write_once(folder: Path, filename: str, text: str) -> Path:
    """Write ``text`` to ``folder/filename`` unless it is already there, atomically (a
    temporary file, then a rename), so two processes never see half a file. An existing
    file is never rewritten: its timestamp is what Numba's cache index keys on. The text is
    UTF-8 whatever the locale (Python reads a module's source as UTF-8; a layer's name in
    the generated code may not be ASCII)."""
    path = folder / filename
    if path.exists() and path.read_bytes() == text.encode():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK):
        raise OSError("the folder is not writable")
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".py")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(text.encode())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path
