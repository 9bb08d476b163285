"""Source generation and on-disk caching for the compiled training step.

:func:`jitnn.compile_step` writes, for one model, loss and optimizer, the source of a single
Python function that runs the model's plan (:mod:`jitnn.plan`): every operation of the plan
in order (each call of a leaf layer's own kernels, the sums and concatenations), the loss,
then the plan read backwards, and the optimizer's kernel per parameter array. It compiles
it with jitnn's kernel policy. The source is written to a module file named by a hash of its
text, inside the Numba cache folder, and imported under that name, so Numba's on-disk cache
keys on a real file and a second process loads machine code instead of compiling.

The generated function has one calling convention::

    step(X, T, W, params, buffers, configs, extras, loss_config, moments, hyper)

- ``T`` the targets as the loss converts them; ``W`` the per-example weights (read-only
  float64, ones without ``sample_weight``), handed to a loss whose kernels take them;
- ``params`` and ``buffers``: every parameter and buffer array of the model, in site order;
- ``configs[i]``: site ``i``'s ``config()``; ``extras[c]``: call ``c``'s per-call arguments;
- ``moments[j][k]``: the optimizer's ``j``-th moment of parameter ``k``; ``hyper``: its
  kernel's scalars for this step.

Every value is passed in, none is written into the source as a constant: Numba would type an
integer constant as a literal and compile a kernel once per value. Every array the step makes
itself is handed to kernels through ``as_readonly`` (a retyping, not a copy), so the kernels
run with the read-only signatures the generic path compiles, and the step compiles no
kernel a second time. Residuals are locals of the function; the generic passes keep the
same ones in their trace, and both read the plan in the same order, so they agree bit for
bit.
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
from typing import Any

import numba
import numpy as np

from jitnn._blas import outer_sum
from jitnn._checks import require_gradient_shape
from jitnn.plan import Call, Plan, Sum

__all__ = ["StepSource", "load_function"]


class StepSource:
    """The lines of the step function of one plan, written in one walk of its operations."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.lines: list[str] = []
        self.buffers: list[tuple[int, str]] = []  # (site index, its new buffers as a read-only tuple)
        self._imports: dict[int, tuple[str, Any]] = {}
        self._names = itertools.count()

    def _variable(self, prefix: str) -> str:
        return f"{prefix}{next(self._names)}"

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

    # ------------------------------------------------------------------ one call of a leaf
    def _arguments(self, call: Call, residual: bool) -> str:
        """The kernel arguments after ``X`` (and ``dY``, ``R``): parameters, buffers (the
        forward side only), configuration and per-call arguments."""
        site = self.plan.sites[call.site]
        layer = site.layer
        parts = [f"params[{site.first_param + j}]" for j in range(len(layer.param_names))]
        if not residual:
            parts += [f"buffers[{site.first_buffer + j}]" for j in range(len(layer.buffer_names))]
        return "".join(f", {p}" for p in parts) + f", *configs[{call.site}], *extras[{call.call}]"

    def _merges_rows(self, call: Call) -> bool:
        """Whether the call's layer sees ``(rows, last axis)`` views of inputs of another rank."""
        return self.plan.sites[call.site].layer.rows and len(self.plan.slots[call.x]) != 1

    def _merges_trailing(self, call: Call, slot: int) -> bool:
        """Whether the call's layer sees the array of ``slot`` with its trailing axes merged
        (it has more axes than the layer's ``kernel_rank``)."""
        rank = self.plan.sites[call.site].layer.kernel_rank
        return rank is not None and 1 + len(self.plan.slots[slot]) > rank

    def _flat(self, variable: str, call: Call, slot: int | None = None) -> str:
        """``variable``, the array of ``slot`` (by default the call's input), as the call's
        kernels see it (see ``Layer._kernel_view``)."""
        layer = self.plan.sites[call.site].layer
        if layer.elementwise:
            return f"ro({variable}.reshape(-1))"
        if self._merges_trailing(call, call.x if slot is None else slot):
            return f"ro({variable}.reshape({variable}.shape[:{layer.kernel_rank - 1}] + (-1,)))"
        return f"ro({variable}.reshape((-1, {variable}.shape[-1])))" if self._merges_rows(call) else f"ro({variable})"

    def _restored(self, call: Call, value: str | None = None) -> str:
        """The reshape that gives the kernel output ``value`` the leading axes of the call's
        input again (``None``: the input's whole shape, for ``dX``), or nothing where the
        kernel kept them. Written with the arrays' own shapes, so that the source does not
        depend on the widths."""
        x = f"s{call.x}"
        if self.plan.sites[call.site].layer.elementwise or (value is None and self._merges_rows(call)):
            return f".reshape({x}.shape)"
        if self._merges_trailing(call, call.x):  # dX, and an output of the input's shape
            keeps_shape = self.plan.slots[call.y] == self.plan.slots[call.x]
            return f".reshape({x}.shape)" if value is None or keeps_shape else ""
        return f".reshape({x}.shape[:-1] + {value}.shape[-1:])" if self._merges_rows(call) else ""

    def _forward_call(self, call: Call, keep: bool, training: bool = True) -> tuple[str, str | None]:
        """Emit the call's forward (and, in training, its buffers' update); return its
        output and residual variables."""
        layer = self.plan.sites[call.site].layer
        kernels = layer.kernels
        residuals = kernels.residuals if keep or kernels.forward is None else None
        x_in, y = self._flat(f"s{call.x}", call), f"s{call.y}"
        r = None
        if residuals is not None:
            out, r = self._variable("out"), self._variable("r")
            self.lines.append(f"{out} = {self.kernel(residuals.forward)}({x_in}{self._arguments(call, False)})")
            self.lines.append(f"{y}, {r} = {out}[0]{self._restored(call, f'{out}[0]')}, {out}[1]")
        else:
            self.lines.append(f"{y} = {self.kernel(kernels.forward)}({x_in}{self._arguments(call, False)})")
            if self._restored(call, y):
                self.lines.append(f"{y} = {y}{self._restored(call, y)}")
        if layer.needs_context and training:
            update = kernels.residuals.update if kernels.residuals is not None else None
            new = self._variable("buffers")
            if update is not None:
                if r is None:
                    r = self._variable("r")
                    self.lines.append(f"{r} = {self.kernel(kernels.residuals.forward)}({x_in}{self._arguments(call, False)})[1]")
                self.lines.append(f"{new} = {self.kernel(update)}({r}{self._buffer_arguments(call)})")
            elif kernels.update is not None:
                self.lines.append(f"{new} = {self.kernel(kernels.update)}({x_in}{self._arguments(call, False)})")
            else:
                return y, r
            self.buffers.append((call.site, _tuple(f"ro({new}[{j}])" for j in range(len(layer.buffer_names)))))
        return y, r

    def _buffer_arguments(self, call: Call) -> str:
        site = self.plan.sites[call.site]
        parts = [f"buffers[{site.first_buffer + j}]" for j in range(len(site.layer.buffer_names))]
        return "".join(f", {p}" for p in parts) + f", *configs[{call.site}], *extras[{call.call}]"

    def _backward_call(self, call: Call, r: str | None, dy: str, input_gradient: bool) -> str | None:
        """Emit the call's gradients; add its parameters' to their totals; return ``dx``."""
        site = self.plan.sites[call.site]
        layer = site.layer
        kernels = layer.kernels
        x_in, dy_in = self._flat(f"s{call.x}", call), self._flat(dy, call, call.y)
        if r is not None:
            head, arguments = f"{x_in}, {dy_in}, {r}", self._arguments(call, True)
            grad_params, grad_input = kernels.residuals.grad_params, kernels.residuals.grad_input
        else:
            head, arguments = f"{x_in}, {dy_in}", self._arguments(call, False)
            grad_params, grad_input = kernels.grad_params, kernels.grad_input
        both = r is not None and kernels.residuals.gradients is not None and bool(layer.param_names) and input_gradient
        # weight gradients as factors, for an optimizer that updates from them (see jitnn.Factored)
        factored = kernels.factored if r is None and self._factored and site.calls == 1 else None
        dx = self._variable("dx") if input_gradient else None
        shape = self._restored(call)
        indices = range(site.first_param, site.first_param + len(layer.param_names))
        if layer.param_names and all(k in self._frozen for k in indices):  # no update needs its gradients
            for k in indices:
                self._unchanged(k)
            both = False
        elif layer.param_names:
            grads = self._variable("grads")
            if both:  # one backward sweep for both gradients
                self.lines.append(f"{dx}, {grads} = {self.kernel(kernels.residuals.gradients)}({head}{arguments})")
                if shape:
                    self.lines.append(f"{dx} = {dx}{shape}")
            else:
                kernel = factored.grad_params if factored is not None else grad_params
                self.lines.append(f"{grads} = {self.kernel(kernel)}({head}{arguments})")
            for j, name in enumerate(layer.param_names):
                if site.first_param + j in self._frozen:
                    self._unchanged(site.first_param + j)
                elif factored is not None and name in factored.params:
                    self._factored_gradient(site.first_param + j, f"{grads}[{j}]")
                else:
                    self._parameter_gradient(site.first_param + j, f"{grads}[{j}]", True)
        if input_gradient and not both:
            self.lines.append(f"{dx} = {self.kernel(grad_input)}({head}{arguments}){shape}")
        return dx

    # ------------------------------------------------------------------ the whole function
    def function(self, loss: Any, optimizer_kernel: Any, n_moments: int, factored: bool = False, frozen: frozenset[int] = frozenset()) -> str:
        """The source of the step. With ``optimizer_kernel`` ``None`` the step stops at the
        gradients: ``-> (value, grads, new buffers)``; otherwise it updates: ``-> (value,
        new params, new moments, new buffers)``. With ``factored`` the optimizer's kernel
        takes a weight gradient's factors (``Optimizer.factored_gradients``), and the layers
        that give them (``Kernels.factored``) hand it those. The parameters in ``frozen``
        (indices, see ``Optimizer.frozen``) come back as they were, moments too.

        Each parameter is updated as soon as its gradient is complete, in the backward pass,
        while it is still in cache (the order changes no result: each update reads only its
        own parameter, gradient and moments)."""
        plan = self.plan
        self._update = self.kernel(optimizer_kernel) if optimizer_kernel is not None else None
        self._factored = factored and self._update is not None
        self._frozen = frozen if self._update is not None else frozenset()
        self._n_moments = n_moments
        n_params = sum(len(site.layer.param_names) for site in plan.sites)
        self._grads: list[str | None] = [None] * n_params
        self._pending = [site.calls for site in plan.sites for _ in site.layer.param_names]
        self._new_params: dict[int, str] = {}
        self._new_moments: list[dict[int, str]] = [{} for _ in range(n_moments)]
        needed = plan.gradient_needed(False)
        residuals = self._forward(lambda op: plan.keeps_residuals(op, needed), True)
        y = f"s{plan.output}"
        # a loss that scores the last axis gets (rows, last axis) views, as Loss._kernel_view
        merged = getattr(loss, "rows", False) and len(plan.slots[plan.output]) > 1
        y_in = f"ro({y}.reshape((-1, {y}.shape[-1])))" if merged else f"ro({y})"
        targets = f"{y_in}, T, W" if loss.kernels.weighted else f"{y_in}, T"
        if loss.kernels.value_and_grad is not None:
            self.lines.append(f"value, dy = {self.kernel(loss.kernels.value_and_grad)}({targets}, *loss_config)")
        else:
            self.lines.append(f"value = {self.kernel(loss.kernels.value)}({targets}, *loss_config)")
            self.lines.append(f"dy = {self.kernel(loss.kernels.grad)}({targets}, *loss_config)")
        if merged:
            self.lines.append(f"dy = dy.reshape({y}.shape)")
        def add(total: str, gradient: str) -> str:
            name = self._variable("d")
            self.lines.append(f"{name} = {total} + {gradient}")
            return name

        def part(gradient: str, axis: int, start: int, stop: int) -> str:
            name = self._variable("d")
            self.lines.append(f"{name} = np.ascontiguousarray({gradient}[{':, ' * (axis + 1)}{start}:{stop}])")
            return name

        plan.read_backwards("dy", False, lambda op, dy, input_needed: self._backward_call(op, residuals[op.call], dy, input_needed), add, part)
        for k, pending in enumerate(self._pending):
            if pending and k in self._frozen:
                self._unchanged(k)
            elif pending:  # a parameter no gradient reached: its gradient is zero
                self._pending[k] = 1
                self._parameter_gradient(k, f"np.zeros_like(params[{k}])", False)
        buffers = _tuple(name for _, name in self.buffers)
        if self._update is None:
            self.lines.append(f"return value, {_tuple(f'ro({g})' for g in self._grads)}, {buffers}")
        else:
            new_params = [self._new_params[k] for k in range(n_params)]
            new_moments = (_tuple(moment[k] for k in range(n_params)) for moment in self._new_moments)
            self.lines.append(f"return value, {_tuple(new_params)}, {_tuple(new_moments)}, {buffers}")
        return self._module("step(X, T, W, params, buffers, configs, extras, loss_config, moments, hyper)")

    def update_function(self, optimizer_kernel: Any, n_moments: int, frozen: frozenset[int] = frozenset()) -> str:
        """The source of ``update(params, grads, moments, hyper) -> (new params, new moments)``:
        the optimizer's kernel on each parameter, as the fused step calls it, for a step split
        around something that changes the gradients in between (data parallelism's
        ``Allreduce``). ``grads[k]`` is parameter ``k``'s gradient, of its shape."""
        self._update, self._n_moments = self.kernel(optimizer_kernel), n_moments
        n_params = sum(len(site.layer.param_names) for site in self.plan.sites)
        self._pending = [1] * n_params
        self._new_params, self._new_moments = {}, [{} for _ in range(n_moments)]
        for k in range(n_params):
            if k in frozen:
                self._unchanged(k)
                continue
            out = self._variable("updated")
            self.lines.append(f"{out} = {self._updated(k, f'ro(grads[{k}].reshape(-1))')}")
            self._updates(k, out)
        new_moments = (_tuple(moment[k] for k in range(n_params)) for moment in self._new_moments)
        self.lines.append(f"return {_tuple(self._new_params[k] for k in range(n_params))}, {_tuple(new_moments)}")
        return self._module("update(params, grads, moments, hyper)")

    def predict_function(self) -> str:
        """The source of ``predict(X, params, buffers, configs, extras) -> Y``: the plan's
        forward pass in evaluation mode (the plain forward kernels, no buffer updates), as
        ``layer.forward`` runs it."""
        self._forward(lambda op: False, False)
        self.lines.append(f"return ro(s{self.plan.output})")
        return self._module("predict(X, params, buffers, configs, extras)")

    def _forward(self, keep: Any, training: bool) -> dict[int, str | None]:
        """Emit the plan's forward operations; return each call's residual variable (where
        ``keep(call)`` asks for residuals)."""
        self.lines.append("s0 = X")
        residuals: dict[int, str | None] = {}
        for op in self.plan.ops:
            if isinstance(op, Call):
                _, residuals[op.call] = self._forward_call(op, keep(op), training)
            elif isinstance(op, Sum):
                self.lines.append(f"s{op.y} = {' + '.join(f's{x}' for x in op.xs)}")
            else:
                self.lines.append(f"s{op.y} = np.concatenate(({', '.join(f's{x}' for x in op.xs)},), axis={op.axis + 1})")
        return residuals

    def _module(self, signature: str) -> str:
        """The module's text: the kernels' imports, then the function ``signature`` with the lines written."""
        imports = "\n".join(
            f"from {d.py_func.__module__ if hasattr(d, 'py_func') else d.__module__} import "
            f"{getattr(d, 'py_func', d).__name__} as {alias}"
            for alias, d in self._imports.values()
        )
        body = "\n".join(f"    {line}" for line in self.lines)
        return (
            f"{imports}\nimport numpy as np\nfrom jitnn._jit import as_readonly as ro, jit\n\n\n"
            f"@jit\ndef {signature}:\n"
            f"{body}\n"
        )

    def _parameter_gradient(self, k: int, gradient: str, check: bool) -> None:
        """One more part of parameter ``k``'s gradient (a layer applied several times has
        several); once all have come, check its shape (a kernel that got it wrong would make
        the optimizer read out of bounds) and update the parameter."""
        if self._grads[k] is not None:
            total = self._variable("g")
            self.lines.append(f"{total} = {self._grads[k]} + {gradient}")
            gradient = total
        self._grads[k] = gradient
        self._pending[k] -= 1
        if self._pending[k]:
            return
        if check:
            self.lines.append(f"{self.kernel(require_gradient_shape)}({gradient}.shape == params[{k}].shape)")
        if self._update is None:
            return
        out = self._variable("updated")
        self.lines.append(f"{out} = {self._updated(k, f'ro({gradient}.reshape(-1))')}")
        self._updates(k, out)

    def _factored_gradient(self, k: int, pair: str) -> None:
        """Parameter ``k``'s gradient as the factors ``(A, B)`` of ``A.T @ B`` (its only
        part): the optimizer forms it element by element where ``A`` has one row, and gets
        ``outer_sum(A, B)`` otherwise, the bits the stored gradient has either way."""
        a, b, out = self._variable("a"), self._variable("b"), self._variable("updated")
        self._grads[k] = pair
        self._pending[k] -= 1
        self.lines.append(f"{a}, {b} = {pair}")
        self.lines.append(f"{self.kernel(require_gradient_shape)}(({a}.shape[1], {b}.shape[1]) == params[{k}].shape and {a}.shape[0] == {b}.shape[0])")
        self.lines.append(f"if {a}.shape[0] == 1:")
        self.lines.append(f"    {out} = {self._updated(k, f'({a}, {b})')}")
        self.lines.append("else:")
        self.lines.append(f"    {out} = {self._updated(k, f'ro({self.kernel(outer_sum)}({a}, {b}).reshape(-1))')}")
        self._updates(k, out)

    def _updated(self, k: int, gradient: str) -> str:
        """The optimizer's kernel call for parameter ``k`` with ``gradient`` (flat, or factors)."""
        moments = "".join(f", moments[{j}][{k}].reshape(-1)" for j in range(self._n_moments))
        return f"{self._update}(params[{k}].reshape(-1), {gradient}{moments}, *hyper)"

    def _unchanged(self, k: int) -> None:
        """Parameter ``k`` is frozen: it and its moments come back as they were."""
        self._pending[k] = 0
        self._new_params[k] = f"params[{k}]"
        for j in range(self._n_moments):
            self._new_moments[j][k] = f"moments[{j}][{k}]"

    def _updates(self, k: int, out: str) -> None:
        """Take parameter ``k``'s new value and moments from the optimizer's results ``out``."""
        self._new_params[k] = f"ro({out}[0].reshape(params[{k}].shape))"
        for j in range(self._n_moments):
            self._new_moments[j][k] = f"ro({out}[{j + 1}].reshape(params[{k}].shape))"

    @property
    def kernels(self) -> list[Any]:
        return [dispatcher for _, dispatcher in self._imports.values()]


def _tuple(items: Any) -> str:
    items = list(items)
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"


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


def load_function(source: str, kernels: list[Any], name: str = "step") -> tuple[Any, bool]:
    """Import the function ``name`` (``step``, ``update`` or ``predict``) of ``source`` from a module
    file named by its hash.

    Returns the compiled dispatcher and whether it is cached on disk. When the cache folder
    cannot be written (or a kernel has no source file), the module is written to a private
    temporary folder and compiled in memory, with a warning.
    """
    fingerprint = _fingerprint(kernels)
    text = f"# generated by jitnn.compile_{name}; environment {fingerprint or 'uncacheable'}\n{source}"
    module_name = f"jitnn_{name}_{hashlib.sha256(text.encode()).hexdigest()[:20]}"
    if module_name in sys.modules:
        return getattr(sys.modules[module_name], name), bool(fingerprint)
    folder, cached = cache_folder(), bool(fingerprint)
    try:
        if not cached:
            raise OSError("a kernel has no readable source file")
        path = _write_once(folder, f"{module_name}.py", text)
    except OSError as error:
        warnings.warn(f"jitnn: cannot cache the compiled {name} in {folder} ({error}); compiling it in memory", RuntimeWarning, stacklevel=3)
        path, cached = Path(tempfile.mkdtemp(prefix=f"jitnn_{name}_")) / f"{module_name}.py", False
        path.write_bytes(text.replace("@jit\n", "@jit(cache=False)\n", 1).encode())
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return getattr(module, name), cached


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
