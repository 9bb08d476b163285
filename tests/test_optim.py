"""Optimizers, gradient transforms and ``chain`` against plain-NumPy float64 references.

Every update rule is written out again below, in NumPy and in float64, from the papers and
the conventions of ``torch.optim`` (which the library's docstrings follow):

* SGD ``p - lr g``; momentum ``v = beta v + g`` (the first velocity is ``g``), ``p - lr v``,
  Nesterov ``p - lr (g + beta v)``;
* Adam with bias correction, ``eps`` added to ``sqrt(v_hat)``; AdamW multiplies ``p`` by
  ``1 - lr weight_decay`` before the Adam step;
* RMSprop and Adagrad with ``eps`` outside the square root, Adagrad's sum started at
  ``initial_accumulator``;
* Lion ``c = b1 m + (1 - b1) g``, ``p (1 - lr wd) - lr sign(c)``, ``m = b2 m + (1 - b2) g``.

Whole trajectories (parameters and the moments the state exposes) are compared over many
steps, with a number or a schedule as the learning rate, on a model and on a plain tree.
The PyTorch comparisons run only where PyTorch is installed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import jitnn as jn
import tolerances
from tolerances import Tracked

optim = jn.optim
STEPS = 25


# =========================================================================== references
class RefSGD:
    moments: tuple[str, ...] = ()

    def init(self, p):
        return {}

    def step(self, t, lr, p, g, m):
        return p - lr * g, {}


class RefMomentum:
    moments = ("velocity",)

    def __init__(self, beta, nesterov=False):
        self.beta, self.nesterov = beta, nesterov

    def init(self, p):
        return {"velocity": np.zeros_like(p)}

    def step(self, t, lr, p, g, m):
        # as torch.optim.SGD with dampening 0: the buffer starts as the first gradient
        v = g.copy() if t == 0 else self.beta * m["velocity"] + g
        direction = g + self.beta * v if self.nesterov else v
        return p - lr * direction, {"velocity": v}


class RefAdam:
    moments = ("mu", "nu")

    def __init__(self, b1=0.9, b2=0.999, eps=1e-8, weight_decay=None):
        self.b1, self.b2, self.eps, self.weight_decay = b1, b2, eps, weight_decay

    def init(self, p):
        return {"mu": np.zeros_like(p), "nu": np.zeros_like(p)}

    def step(self, t, lr, p, g, m):
        k = t + 1  # Adam counts its steps from 1
        mu = self.b1 * m["mu"] + (1 - self.b1) * g
        nu = self.b2 * m["nu"] + (1 - self.b2) * np.square(g)
        mu_hat = mu / (1 - self.b1**k)
        nu_hat = nu / (1 - self.b2**k)
        if self.weight_decay is not None:  # AdamW: decoupled decay, before the Adam step
            p = p * (1 - lr * self.weight_decay)
        return p - lr * mu_hat / (np.sqrt(nu_hat) + self.eps), {"mu": mu, "nu": nu}


class RefRMSprop:
    moments = ("nu",)

    def __init__(self, decay=0.99, eps=1e-8):
        self.decay, self.eps = decay, eps

    def init(self, p):
        return {"nu": np.zeros_like(p)}

    def step(self, t, lr, p, g, m):
        nu = self.decay * m["nu"] + (1 - self.decay) * g * g
        return p - lr * g / (np.sqrt(nu) + self.eps), {"nu": nu}


class RefAdagrad:
    moments = ("sum_of_squares",)

    def __init__(self, eps=1e-10, initial_accumulator=0.0):
        self.eps, self.initial_accumulator = eps, initial_accumulator

    def init(self, p):
        return {"sum_of_squares": np.full_like(p, self.initial_accumulator)}

    def step(self, t, lr, p, g, m):
        s = m["sum_of_squares"] + g * g
        return p - lr * g / (np.sqrt(s) + self.eps), {"sum_of_squares": s}


class RefLion:
    moments = ("mu",)

    def __init__(self, b1=0.9, b2=0.99, weight_decay=0.0):
        self.b1, self.b2, self.weight_decay = b1, b2, weight_decay

    def init(self, p):
        return {"mu": np.zeros_like(p)}

    def step(self, t, lr, p, g, m):
        c = self.b1 * m["mu"] + (1 - self.b1) * g
        new_p = p * (1 - lr * self.weight_decay) - lr * np.sign(c)
        return new_p, {"mu": self.b2 * m["mu"] + (1 - self.b2) * g}


def ref_warmup_cosine(peak, warmup, decay, init, end) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then half a cosine to ``end`` at step ``decay``."""

    def at(t: int) -> float:
        if t < warmup:
            return init + (peak - init) * t / warmup
        fraction = min(1.0, (t - warmup) / (decay - warmup))
        return end + 0.5 * (peak - end) * (1 + math.cos(math.pi * fraction))

    return at


# --------------------------------------------------------------------------- the cases
# id -> (make(learning_rate) -> optimizer, reference, base learning rate, torch factory or None)
def _torch(name: str, **kwargs):
    def make(tensors, lr):
        import torch

        return getattr(torch.optim, name)(tensors, lr=lr, **kwargs)

    return make


CASES: dict[str, tuple[Callable[[Any], Any], Any, float, Any]] = {
    "sgd": (lambda lr: optim.sgd(lr), RefSGD(), 0.1, _torch("SGD")),
    "momentum": (lambda lr: optim.momentum(lr, beta=0.8), RefMomentum(0.8), 0.05, _torch("SGD", momentum=0.8)),
    "momentum_default_beta": (lambda lr: optim.momentum(lr), RefMomentum(0.9), 0.05, _torch("SGD", momentum=0.9)),
    "nesterov": (
        lambda lr: optim.momentum(lr, beta=0.7, nesterov=True), RefMomentum(0.7, nesterov=True), 0.05,
        _torch("SGD", momentum=0.7, nesterov=True),
    ),
    "adam": (
        lambda lr: optim.adam(lr, b1=0.8, b2=0.95, eps=1e-3), RefAdam(0.8, 0.95, 1e-3), 0.02,
        _torch("Adam", betas=(0.8, 0.95), eps=1e-3),
    ),
    "adam_defaults": (lambda lr: optim.adam(lr), RefAdam(0.9, 0.999, 1e-8), 0.01, _torch("Adam")),
    "adamw": (
        lambda lr: optim.adamw(lr, b1=0.85, b2=0.97, eps=1e-4, weight_decay=0.3), RefAdam(0.85, 0.97, 1e-4, 0.3), 0.02,
        _torch("AdamW", betas=(0.85, 0.97), eps=1e-4, weight_decay=0.3),
    ),
    "adamw_defaults": (lambda lr: optim.adamw(lr), RefAdam(0.9, 0.999, 1e-8, 0.01), 0.02, _torch("AdamW")),
    "rmsprop": (
        lambda lr: optim.rmsprop(lr, decay=0.9, eps=1e-3), RefRMSprop(0.9, 1e-3), 0.01,
        _torch("RMSprop", alpha=0.9, eps=1e-3),
    ),
    "rmsprop_defaults": (lambda lr: optim.rmsprop(lr), RefRMSprop(0.99, 1e-8), 0.01, _torch("RMSprop", alpha=0.99, eps=1e-8)),
    "adagrad": (lambda lr: optim.adagrad(lr, eps=1e-3), RefAdagrad(1e-3), 0.1, _torch("Adagrad", eps=1e-3)),
    "adagrad_initial_accumulator": (
        lambda lr: optim.adagrad(lr, eps=1e-10, initial_accumulator=0.5), RefAdagrad(1e-10, 0.5), 0.1,
        _torch("Adagrad", eps=1e-10, initial_accumulator_value=0.5),
    ),
    "lion": (lambda lr: optim.lion(lr, b1=0.9, b2=0.99), RefLion(0.9, 0.99), 0.01, None),
    "lion_weight_decay": (lambda lr: optim.lion(lr, b1=0.8, b2=0.95, weight_decay=0.5), RefLion(0.8, 0.95, 0.5), 0.01, None),
}
TORCH_CASES = [name for name, case in CASES.items() if case[3] is not None]

MODEL_PATHS = ["layers.0.W", "layers.0.b", "layers.2.W", "layers.2.b"]


def make_params(kind: str, dtype=np.float64, seed: int = 0) -> Any:
    """A small model, ``Dense(3, 4) -> ReLU -> Dense(4, 2)``, or a plain dict/tuple tree."""
    rng = np.random.default_rng(seed)
    if kind == "model":
        return jn.pipe(
            jn.Dense(W=rng.normal(size=(3, 4)).astype(dtype), b=rng.normal(size=4).astype(dtype)),
            jn.ReLU(),
            jn.Dense(W=rng.normal(size=(4, 2)).astype(dtype), b=rng.normal(size=2).astype(dtype)),
        )
    return {
        "w": rng.normal(size=(2, 3)).astype(dtype),
        "nested": (np.array(rng.normal(), dtype=dtype), rng.normal(size=(2, 2, 2)).astype(dtype)),
        "b": rng.normal(size=3).astype(dtype),
    }


def make_grads(params: Any, steps: int = STEPS, seed: int = 1) -> list[Any]:
    """A fixed sequence of gradient trees shaped like ``params``: normal draws on scales from
    0.01 to 10, with about one element in six exactly zero."""
    rng = np.random.default_rng(seed)

    def draw(p: np.ndarray) -> np.ndarray:
        g = rng.normal(size=p.shape) * 10 ** rng.uniform(-2, 1) * (rng.random(p.shape) > 0.15)
        return np.asarray(g, dtype=p.dtype)

    return [jn.tree.map(draw, params) for _ in range(steps)]


def f64(tree: Any) -> list[np.ndarray]:
    return [np.array(leaf, dtype=np.float64) for leaf in jn.tree.leaves(tree)]


def run_reference(reference, lr_at: Callable[[int], float], params: Any, grads_seq: list[Any]):
    """The reference trajectory: after each step, the parameter leaves and per-leaf moments."""
    p = f64(params)
    m = [reference.init(leaf) for leaf in p]
    trajectory = []
    for t, grads in enumerate(grads_seq):
        out = [reference.step(t, lr_at(t), pi, gi, mi) for pi, gi, mi in zip(p, f64(grads), m)]
        p, m = [o[0] for o in out], [o[1] for o in out]
        trajectory.append((p, m))
    return trajectory


def tracked_trajectory(form, lr_at: Callable[[int], Any], params: Any, grads_seq: list[Any]):
    """``run_reference`` with every value a ``Tracked``: the bounds of each step's parameters
    and moments for the formulas of ``form`` (a reference's ``init`` and ``step``), from exact
    parameters and gradients."""
    p = [Tracked(leaf) for leaf in f64(params)]
    m = [{name: Tracked(value) for name, value in form.init(leaf.value).items()} for leaf in p]
    trajectory = []
    for t, grads in enumerate(grads_seq):
        out = [form.step(t, lr_at(t), pi, Tracked(gi), mi) for pi, gi, mi in zip(p, f64(grads), m)]
        p, m = [o[0] for o in out], [o[1] for o in out]
        trajectory.append((p, m))
    return trajectory


def learning_rate_error(ours: Any, theirs: Callable[[int], float]) -> Callable[[int], Tracked]:
    """The learning rate jitnn uses at step ``t`` (a number, or a schedule's value), as a
    ``Tracked`` around the reference's value ``theirs(t)`` with the difference of the two."""
    def at(t: int) -> Tracked:
        value = ours(t) if callable(ours) else ours
        return Tracked(theirs(t), abs(value - theirs(t)))

    return at


class KernelAdam(RefAdam):
    """Adam in the order of operations of jitnn's kernel: the bias corrections are folded into
    ``step_size = lr / (1 - b1**k)`` and ``1 / sqrt(1 - b2**k)``, and AdamW's decay factor
    multiplies ``p`` in the same expression. (The other kernels evaluate the references'
    expressions in the references' order.)"""

    def step(self, t, lr, p, g, m):
        k = t + 1
        lr = lr if isinstance(lr, Tracked) else Tracked(lr)
        step_size = lr / (1 - self.b1**k)
        inverse_root = 1.0 / Tracked(1 - self.b2**k).sqrt()
        mu = self.b1 * m["mu"] + (1 - self.b1) * g
        nu = self.b2 * m["nu"] + (1 - self.b2) * g * g
        decay = 0.0 if self.weight_decay is None else self.weight_decay
        factor = 1 - lr * decay if decay else 1.0
        return p * factor - step_size * mu / (nu.sqrt() * inverse_root + self.eps), {"mu": mu, "nu": nu}


def kernel_form(reference):
    """The formulas of jitnn's kernel for the optimizer that ``reference`` describes."""
    if isinstance(reference, RefAdam):
        return KernelAdam(reference.b1, reference.b2, reference.eps, reference.weight_decay)
    return reference


class TorchAdam(RefAdam):
    """``torch.optim.Adam`` and ``AdamW`` (the single-tensor loop of ``torch/optim/adam.py``):
    ``exp_avg.lerp_(g, 1 - b1)``, ``exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)``,
    ``denom = exp_avg_sq.sqrt() / bias_correction2 ** 0.5 + eps`` and ``p.addcdiv_(exp_avg,
    denom, value=-lr / bias_correction1)``; AdamW first ``p.mul_(1 - lr weight_decay)``."""

    def step(self, t, lr, p, g, m):
        k = t + 1
        u = tolerances.unit_roundoff(np.float64)
        root = (1 - self.b2**k) ** 0.5
        correction = Tracked(root, 2 * u * root)  # a power of 0.5: within one unit in the last place
        mu = m["mu"] + (1 - self.b1) * (g - m["mu"])
        nu = m["nu"] * self.b2 + (1 - self.b2) * g * g
        if self.weight_decay is not None:
            p = p * (1 - lr * self.weight_decay)
        step_size = Tracked(lr) / (1 - self.b1**k)
        return p + -step_size * (mu / (nu.sqrt() / correction + self.eps)), {"mu": mu, "nu": nu}


class TorchRMSprop(RefRMSprop):
    """``torch.optim.RMSprop``: ``square_avg.mul_(alpha).addcmul_(g, g, value=1 - alpha)``, then
    ``p.addcdiv_(g, square_avg.sqrt().add_(eps), value=-lr)``."""

    def step(self, t, lr, p, g, m):
        nu = m["nu"] * self.decay + (1 - self.decay) * g * g
        return p + -lr * (g / (nu.sqrt() + self.eps)), {"nu": nu}


class TorchAdagrad(RefAdagrad):
    """``torch.optim.Adagrad``: ``state_sum.addcmul_(g, g, value=1)``, then ``p.addcdiv_(g,
    state_sum.sqrt().add_(eps), value=-lr)``."""

    def step(self, t, lr, p, g, m):
        s = m["sum_of_squares"] + 1.0 * g * g
        return p + -lr * (g / (s.sqrt() + self.eps)), {"sum_of_squares": s}


def torch_form(reference):
    """PyTorch's formulas for the optimizer that ``reference`` describes (``torch.optim.SGD``
    with or without momentum: the references' own, ``p.add_(g, alpha=-lr)`` and
    ``buf.mul_(momentum).add_(g)``)."""
    if isinstance(reference, RefAdam):
        return TorchAdam(reference.b1, reference.b2, reference.eps, reference.weight_decay)
    if isinstance(reference, RefRMSprop):
        return TorchRMSprop(reference.decay, reference.eps)
    if isinstance(reference, RefAdagrad):
        return TorchAdagrad(reference.eps, reference.initial_accumulator)
    return reference


def assert_on_bounds(leaves, expected, bounds, what: str) -> None:
    for (path, leaf), ref, bound in zip(leaves, expected, bounds):
        tolerances.assert_within(leaf, ref, bound, f"{what} {path}")


def leaf_paths(tree: Any) -> list[str]:
    return [path for path, _ in jn.tree.leaves_with_paths(tree)]


def copy_leaves(tree: Any) -> list[np.ndarray]:
    return [np.array(leaf, copy=True) for leaf in jn.tree.leaves(tree)]


def assert_bitwise_equal(tree: Any, saved: list[np.ndarray]) -> None:
    now = jn.tree.leaves(tree)
    assert len(now) == len(saved)
    for a, b in zip(now, saved):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def schedule_for(base: float):
    """The library's warm-up cosine schedule and an independent formula for it."""
    args = {"peak_value": base, "warmup_steps": 4, "decay_steps": 16, "init_value": base / 10, "end_value": base / 20}
    return optim.warmup_cosine_decay(**args), ref_warmup_cosine(base, 4, 16, base / 10, base / 20)


# =========================================================================== trajectories
@pytest.mark.parametrize("lr_kind", ["number", "schedule"])
@pytest.mark.parametrize("kind", ["model", "tree"])
@pytest.mark.parametrize("name", list(CASES))
def test_trajectory_matches_the_numpy_reference(name, kind, lr_kind):
    make, reference, base, _ = CASES[name]
    if lr_kind == "number":
        learning_rate, lr_at = base, (lambda t: base)
    else:
        learning_rate, lr_at = schedule_for(base)
    params = make_params(kind)
    grads_seq = make_grads(params)
    expected = run_reference(reference, lr_at, params, grads_seq)
    theirs = tracked_trajectory(reference, lr_at, params, grads_seq)
    ours = tracked_trajectory(kernel_form(reference), learning_rate_error(learning_rate, lr_at), params, grads_seq)

    opt = make(learning_rate)
    state = opt.init(params)
    assert int(state.count) == 0
    for moment in reference.moments:
        for leaf, ref_leaf in zip(jn.tree.leaves(getattr(state, moment)), f64(params)):
            np.testing.assert_array_equal(leaf, reference.init(ref_leaf)[moment])

    for t, (grads, (ref_params, ref_moments)) in enumerate(zip(grads_seq, expected)):
        params, state = opt.update(params, grads, state)
        assert int(state.count) == t + 1
        (our_p, our_m), (their_p, their_m) = ours[t], theirs[t]
        assert all(leaf.dtype == np.float64 for leaf in jn.tree.leaves(params))
        bounds = [a.error + b.error for a, b in zip(our_p, their_p)]
        assert_on_bounds(jn.tree.leaves_with_paths(params), ref_params, bounds, f"{name}: after step {t}:")
        for moment in reference.moments:
            bounds = [a[moment].error + b[moment].error for a, b in zip(our_m, their_m)]
            assert_on_bounds(jn.tree.leaves_with_paths(getattr(state, moment)), [r[moment] for r in ref_moments], bounds, f"{name}: after step {t}: {moment}.")
    if kind == "model":
        assert type(params) is jn.Chain and params.layers[1] == jn.ReLU()
        assert leaf_paths(params) == MODEL_PATHS


def test_the_state_exposes_exactly_the_moments_of_the_reference():
    params = make_params("model")
    for name, (make, reference, base, _) in CASES.items():
        state = make(base).init(params)
        expected = ["count"] + [f"{moment}.{path}" for moment in reference.moments for path in MODEL_PATHS] + ["lr_scale"]
        assert leaf_paths(state) == expected, name
        assert float(state.lr_scale) == 1.0 and not state.lr_scale.flags.writeable


def test_a_schedule_is_called_with_the_number_of_earlier_updates():
    calls: list[int] = []

    def schedule(t):
        calls.append(t)
        return 0.01 * (1 + t % 3)

    params = make_params("tree")
    grads_seq = make_grads(params, steps=6)
    opt = optim.momentum(schedule, beta=0.5)
    state = opt.init(params)
    expected = run_reference(RefMomentum(0.5), lambda t: 0.01 * (1 + t % 3), params, grads_seq)
    bounds = tracked_trajectory(RefMomentum(0.5), lambda t: 0.01 * (1 + t % 3), params, grads_seq)  # the kernel's formula too
    for t, grads in enumerate(grads_seq):
        params, state = opt.update(params, grads, state)
        assert calls and calls[-1] == t and type(calls[-1]) is int
        assert_on_bounds(jn.tree.leaves_with_paths(params), expected[t][0], [2 * b.error for b in bounds[t][0]], f"step {t}:")
    assert sorted(set(calls)) == list(range(6))


def test_a_warmup_schedule_starting_at_zero_leaves_the_first_step_still():
    params = make_params("model")
    grads = make_grads(params, steps=2)
    opt = optim.adam(optim.warmup_cosine_decay(0.1, 5, 20, init_value=0.0))
    state = opt.init(params)
    after, state = opt.update(params, grads[0], state)
    assert_bitwise_equal(after, copy_leaves(params))  # learning rate 0 at step 0
    assert np.any(jn.tree.leaves(state.mu)[0] != 0)  # the moments still moved
    after, state = opt.update(after, grads[1], state)  # lr 0.02 at step 1
    assert not np.array_equal(jn.tree.leaves(after)[0], jn.tree.leaves(params)[0])


# =========================================================================== float32
@pytest.mark.parametrize("name", list(CASES))
def test_float32_keeps_its_dtype_and_agrees_with_float64_to_rounding(name):
    """Each float32 step equals the float64 reference step from the same float32 values,
    rounded to float32 (within one unit in the last place)."""
    make, reference, base, _ = CASES[name]
    learning_rate, lr_at = schedule_for(base)
    params = make_params("model", dtype=np.float32)
    opt = make(learning_rate)
    state = opt.init(params)
    for t, grads in enumerate(make_grads(params, steps=20)):
        p64, g64 = f64(params), f64(grads)
        moments = {m: f64(getattr(state, m)) for m in reference.moments}
        expected = [
            reference.step(t, lr_at(t), p64[i], g64[i], {m: moments[m][i] for m in reference.moments})
            for i in range(len(p64))
        ]
        params, state = opt.update(params, grads, state)
        for (path, leaf), (ref_p, _) in zip(jn.tree.leaves_with_paths(params), expected):
            assert leaf.dtype == np.float32, path
            np.testing.assert_array_max_ulp(leaf, ref_p.astype(np.float32), maxulp=1)
        for m in reference.moments:
            for leaf, (_, ref_m) in zip(jn.tree.leaves(getattr(state, m)), expected):
                assert leaf.dtype == np.float32
                np.testing.assert_array_max_ulp(leaf, ref_m[m].astype(np.float32), maxulp=1)


# =========================================================================== purity
def full_chain(learning_rate: Any = 0.01) -> Any:
    return optim.chain(
        optim.check_finite(),
        optim.clip_by_global_norm(1.0),
        optim.clip_by_value(0.5),
        optim.add_decayed_weights(0.01),
        optim.scale(0.5),
        optim.scale_by_schedule(lambda t: 1.0 / (1 + t)),
        optim.adam(learning_rate),
    )


def test_every_named_optimizer_has_a_reference_case():
    """CASES compares each named optimizer with a reference: a new one needs a case here."""
    covered = {make(0.01).name for make, _, _, _ in CASES.values()}
    assert covered == set(optim.OPTIMIZERS), f"add CASES for: {sorted(set(optim.OPTIMIZERS) - covered)}"


ALL_OPTIMIZERS: dict[str, Callable[[], Any]] = {
    **{name: (lambda case=case: case[0](case[2])) for name, case in CASES.items()},
    "chain": full_chain,
}


def optimizer_state(state: Any) -> Any:
    """The named optimizer's own state (inside a chain's state, or the state itself)."""
    return state.optimizer if isinstance(state, optim.ChainState) else state


@pytest.mark.parametrize("kind", ["model", "tree"])
@pytest.mark.parametrize("name", list(ALL_OPTIMIZERS))
def test_update_is_pure_and_returns_read_only_arrays(name, kind):
    params = make_params(kind)
    grads_seq = make_grads(params, steps=4)
    opt = ALL_OPTIMIZERS[name]()
    state = opt.init(params)
    for leaf in jn.tree.leaves(state):
        assert not leaf.flags.writeable
    for grads in grads_seq[:3]:  # a state with non-zero moments
        params, state = opt.update(params, grads, state)
    if kind == "tree":  # the caller's own writable arrays
        params = jn.tree.map(np.array, params)
        assert all(leaf.flags.writeable for leaf in jn.tree.leaves(params))
    grads = grads_seq[3]
    saved = [copy_leaves(params), copy_leaves(grads), copy_leaves(state)]
    count = int(optimizer_state(state).count)

    new_params, new_state = opt.update(params, grads, state)

    for tree, copy in zip([params, grads, state], saved):
        assert_bitwise_equal(tree, copy)
    assert type(new_state) is type(state) and type(new_params) is type(params)
    for leaf in jn.tree.leaves(new_params) + jn.tree.leaves(new_state):
        assert not leaf.flags.writeable
        with pytest.raises(ValueError):
            leaf[...] = 0
    for new, old in zip(jn.tree.leaves(new_params), jn.tree.leaves(params)):
        assert not np.shares_memory(new, old)
    assert int(optimizer_state(new_state).count) == count + 1
    assert int(optimizer_state(state).count) == count


@pytest.mark.parametrize("name", list(ALL_OPTIMIZERS))
def test_tree_functions_work_on_every_state_and_a_copied_state_gives_the_same_step(name):
    params = make_params("model")
    grads_seq = make_grads(params, steps=3)
    opt = ALL_OPTIMIZERS[name]()
    state = opt.init(params)
    for grads in grads_seq[:2]:
        params, state = opt.update(params, grads, state)

    paths = leaf_paths(state)
    optimizer_prefix = "optimizer." if name == "chain" else ""
    assert f"{optimizer_prefix}count" in paths
    if name == "chain":
        assert "transforms.5.count" in paths  # scale_by_schedule's own count
        assert "optimizer.mu.layers.0.W" in paths and "optimizer.nu.layers.2.b" in paths
    for moment in CASES.get(name, (None, RefSGD()))[1].moments:
        assert [p for p in paths if p.startswith(moment + ".")] == [f"{moment}.{p}" for p in MODEL_PATHS]

    copied = jn.tree.map(np.copy, state)
    assert type(copied) is type(state)
    assert leaf_paths(copied) == paths
    doubled = jn.tree.map(lambda a: np.asarray(a * 2), state)  # a 0-d array times 2 is a NumPy scalar
    for a, b in zip(jn.tree.leaves(doubled), jn.tree.leaves(state)):
        np.testing.assert_array_equal(a, b * 2)

    from_original = opt.update(params, grads_seq[2], state)
    from_copy = opt.update(params, grads_seq[2], copied)
    assert_bitwise_equal(from_copy[0], copy_leaves(from_original[0]))
    assert_bitwise_equal(from_copy[1], copy_leaves(from_original[1]))


# =========================================================================== bad calls
OTHER_MODEL_PATH = "layers.2.W"


def other_model(dtype=np.float64) -> jn.Chain:
    """Like ``make_params('model')`` but its last layer has three outputs."""
    rng = np.random.default_rng(5)
    return jn.pipe(
        jn.Dense(W=rng.normal(size=(3, 4)).astype(dtype), b=rng.normal(size=4).astype(dtype)),
        jn.ReLU(),
        jn.Dense(W=rng.normal(size=(4, 3)).astype(dtype), b=rng.normal(size=3).astype(dtype)),
    )


@pytest.mark.parametrize("name", list(ALL_OPTIMIZERS))
def test_grads_of_another_shape_name_the_parameter(name):
    params = make_params("model")
    opt = ALL_OPTIMIZERS[name]()
    with pytest.raises(ValueError, match=re.escape(OTHER_MODEL_PATH)):
        opt.update(params, other_model(), opt.init(params))


@pytest.mark.parametrize("name", list(ALL_OPTIMIZERS))
def test_grads_of_another_structure_or_dtype_name_the_parameter(name):
    params = make_params("tree")
    opt = ALL_OPTIMIZERS[name]()
    state = opt.init(params)
    missing = {"w": params["w"], "nested": params["nested"]}
    with pytest.raises(ValueError, match="keys"):
        opt.update(params, missing, state)
    short = {**params, "nested": params["nested"][:1]}
    with pytest.raises(ValueError, match="nested"):
        opt.update(params, short, state)
    float32 = {**params, "nested": (params["nested"][0], params["nested"][1].astype(np.float32))}
    with pytest.raises(ValueError, match=r"nested\.1.*float32|float32.*nested\.1"):
        opt.update(params, float32, state)


@pytest.mark.parametrize("name", list(CASES))
def test_a_state_from_another_optimizer_is_refused(name):
    params = make_params("model")
    opt = ALL_OPTIMIZERS[name]()
    other = optim.adagrad() if isinstance(opt, optim.RMSprop) else optim.rmsprop()
    for state in [other.init(params), full_chain().init(params), None, {}, opt.init(params).count]:
        with pytest.raises(TypeError, match="state"):
            opt.update(params, params, state)


def test_a_chain_refuses_states_of_anything_else():
    params = make_params("model")
    chained = full_chain()
    for state in [optim.adam().init(params), optim.chain(optim.scale(1.0), optim.adam()).init(params), None]:
        with pytest.raises(TypeError, match="state"):
            chained.update(params, params, state)
    # the same number of transforms, but a state of another kind in one slot
    a = optim.chain(optim.scale(2.0), optim.sgd(0.1))
    b = optim.chain(optim.scale_by_schedule(optim.constant(2.0)), optim.sgd(0.1))
    with pytest.raises(TypeError, match="state"):
        a.update(params, params, b.init(params))
    with pytest.raises(TypeError, match="state"):
        b.update(params, params, a.init(params))


@pytest.mark.parametrize("name", [n for n, case in CASES.items() if case[1].moments] + ["chain"])
def test_a_state_for_another_model_names_the_parameter(name):
    params = make_params("model")
    opt = ALL_OPTIMIZERS[name]()
    with pytest.raises(ValueError, match=re.escape(OTHER_MODEL_PATH)):
        opt.update(params, params, opt.init(other_model()))
    with pytest.raises(ValueError, match="float32"):
        opt.update(params, params, opt.init(make_params("model", dtype=np.float32)))


FACTORIES = {
    "sgd": optim.sgd, "momentum": optim.momentum, "adam": optim.adam, "adamw": optim.adamw,
    "rmsprop": optim.rmsprop, "adagrad": optim.adagrad, "lion": optim.lion,
}


@pytest.mark.parametrize("lr", [-0.1, -1e-300, np.nan, np.inf, -np.inf, np.float32(-1.0)])
@pytest.mark.parametrize("name", list(FACTORIES))
def test_bad_learning_rate_is_refused_at_construction(name, lr):
    with pytest.raises(ValueError, match="learning_rate"):
        FACTORIES[name](lr)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_learning_rate_of_the_wrong_type_is_refused(name):
    for lr in ["0.1", None, [0.1], True]:
        with pytest.raises(TypeError, match="learning_rate"):
            FACTORIES[name](lr)


BAD_HYPERPARAMETERS = [
    (optim.momentum, "beta", 1.0), (optim.momentum, "beta", -0.1), (optim.momentum, "beta", np.nan),
    (optim.adam, "b1", 1.0), (optim.adam, "b1", -0.1), (optim.adam, "b1", 1.5), (optim.adam, "b1", np.nan),
    (optim.adam, "b2", 1.0), (optim.adam, "b2", -1e-9), (optim.adam, "eps", -1e-8), (optim.adam, "eps", np.nan),
    (optim.adam, "eps", np.inf),
    (optim.adamw, "b1", 1.0), (optim.adamw, "b2", 2.0), (optim.adamw, "eps", -1.0),
    (optim.adamw, "weight_decay", -0.01), (optim.adamw, "weight_decay", np.inf),
    (optim.rmsprop, "decay", 1.0), (optim.rmsprop, "decay", -0.5), (optim.rmsprop, "eps", -1e-8),
    (optim.adagrad, "eps", -1e-10), (optim.adagrad, "initial_accumulator", -0.1),
    (optim.adagrad, "initial_accumulator", np.nan),
    (optim.lion, "b1", 1.0), (optim.lion, "b1", -0.5), (optim.lion, "b2", 1.0), (optim.lion, "weight_decay", -1.0),
]


@pytest.mark.parametrize(
    "factory, name, value", BAD_HYPERPARAMETERS, ids=[f"{f.__name__}-{n}={v}" for f, n, v in BAD_HYPERPARAMETERS]
)
def test_bad_hyperparameters_are_refused_at_construction_naming_them(factory, name, value):
    with pytest.raises(ValueError, match=name):
        factory(0.01, **{name: value})


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda v: optim.clip_by_global_norm(v), "max_norm"),
        (lambda v: optim.clip_by_value(v), "limit"),
        (lambda v: optim.add_decayed_weights(v), "weight_decay"),
    ],
)
@pytest.mark.parametrize("value", [-1.0, np.nan, np.inf])
def test_bad_transform_arguments_are_refused(make, name, value):
    with pytest.raises(ValueError, match=name):
        make(value)


@pytest.mark.parametrize("factor", [np.nan, np.inf, -np.inf])
def test_scale_refuses_a_non_finite_factor(factor):
    # a NaN or infinite factor would turn every parameter into NaN on the first update
    with pytest.raises(ValueError):
        optim.scale(factor)


def test_a_schedule_that_goes_negative_is_refused_at_the_update_naming_the_step():
    params = make_params("model")
    grads = make_grads(params, steps=4)
    opt = optim.adam(lambda t: 0.01 * (2 - t))  # 0.02, 0.01, 0.0, then negative
    state = opt.init(params)
    for t in range(3):
        params, state = opt.update(params, grads[t], state)
    saved = copy_leaves(params), copy_leaves(state)
    with pytest.raises(ValueError, match=r"step 3\b"):
        opt.update(params, grads[3], state)
    assert_bitwise_equal(params, saved[0])
    assert_bitwise_equal(state, saved[1])


@pytest.mark.parametrize("value", [np.nan, np.inf, "0.1", None])
def test_a_schedule_giving_a_non_number_is_refused_at_the_update(value):
    params = make_params("tree")
    opt = optim.sgd(lambda t: value)
    with pytest.raises(ValueError, match="step 0"):
        opt.update(params, params, opt.init(params))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float16])
@pytest.mark.parametrize("name", ["sgd", "adam", "chain"])
def test_parameters_that_are_not_float32_or_float64_are_refused_naming_them(name, dtype):
    # integers would be truncated silently by the kernels; float16 is not supported by them
    params = {"weights": np.arange(6, dtype=dtype).reshape(2, 3)}
    grads = {"weights": np.ones((2, 3), dtype=dtype)}
    opt = ALL_OPTIMIZERS[name]()
    with pytest.raises((TypeError, ValueError)) as info:
        opt.update(params, grads, opt.init(params))
    assert "weights" in str(info.value) and np.dtype(dtype).name in str(info.value), str(info.value)


# =========================================================================== check_finite
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_finite_names_the_parameter_and_the_index(bad):
    params = make_params("model")
    grads = make_grads(params, steps=1)[0]
    W = np.array(grads.layers[2].W)
    W[3, 1] = bad
    grads = jn.pipe(grads.layers[0], grads.layers[1], jn.Dense(W=W, b=grads.layers[2].b))
    opt = optim.chain(optim.check_finite(), optim.adam(0.01))
    with pytest.raises(ValueError, match=r"layers\.2\.W.*\(3, 1\)"):
        opt.update(params, grads, opt.init(params))

    tree = make_params("tree")
    tree_grads = jn.tree.map(np.array, tree)
    tree_grads["nested"][1][1, 0, 1] = bad
    opt = optim.chain(optim.check_finite(), optim.sgd(0.1))
    with pytest.raises(ValueError, match=r"nested\.1.*\(1, 0, 1\)"):
        opt.update(tree, tree_grads, opt.init(tree))


def test_check_finite_passes_finite_gradients_through_unchanged():
    params = make_params("model")
    grads_seq = make_grads(params, steps=5)
    transform = optim.check_finite()
    out, state = transform.update(grads_seq[0], transform.init(params), params)
    assert state == optim.EmptyState()
    assert_bitwise_equal(out, copy_leaves(grads_seq[0]))

    checked, plain = optim.chain(optim.check_finite(), optim.adam(0.01)), optim.adam(0.01)
    p1 = p2 = params
    s1, s2 = checked.init(params), plain.init(params)
    for grads in grads_seq:
        p1, s1 = checked.update(p1, grads, s1)
        p2, s2 = plain.update(p2, grads, s2)
        assert_bitwise_equal(p1, copy_leaves(p2))
        assert_bitwise_equal(s1.optimizer, copy_leaves(s2))


# =========================================================================== transforms
def apply(transform, grads, params=None):
    out, state = transform.update(grads, transform.init(params if params is not None else grads), params)
    return out, state


def global_norm(tree) -> float:
    return math.sqrt(sum(float(np.sum(np.square(leaf))) for leaf in f64(tree)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clip_by_global_norm_scales_only_above_the_limit(dtype):
    grads = make_params("tree", dtype=dtype, seed=3)
    norm = global_norm(grads)

    out, state = apply(optim.clip_by_global_norm(norm / 3), grads)
    assert state == optim.EmptyState()
    # both sides: the norm (a float64 sum of squares and a square root), the factor, the
    # product; jitnn's then rounded to the gradients' dtype
    leaves = [Tracked(leaf) for leaf in f64(grads)]
    tracked_norm = sum((leaf * leaf).sum() for leaf in leaves).sqrt()
    for leaf, ref, g in zip(jn.tree.leaves(out), f64(grads), leaves):
        assert leaf.dtype == dtype and not leaf.flags.writeable
        ours, theirs = (g * ((norm / 3) / tracked_norm)).rounded_to(dtype), Tracked(ref) * ((norm / 3) / tracked_norm)
        tolerances.assert_within(leaf, ref * ((norm / 3) / norm), ours.error + theirs.error, "clipped")
    # the norm of the clipped leaves, each off by its bound: off by at most the norm of the bounds
    errors = [(g * ((norm / 3) / tracked_norm)).rounded_to(dtype).error for g in leaves]
    clipped = sum((Tracked(leaf, e) * Tracked(leaf, e)).sum() for leaf, e in zip(f64(out), errors)).sqrt()
    tolerances.assert_within(global_norm(out), norm / 3, 2 * clipped.error, "norm")

    out, _ = apply(optim.clip_by_global_norm(2 * norm), grads)
    assert_bitwise_equal(out, copy_leaves(grads))

    out, _ = apply(optim.clip_by_global_norm(0.0), grads)
    for leaf in jn.tree.leaves(out):
        np.testing.assert_array_equal(leaf, 0)


def test_clip_by_global_norm_at_exactly_the_limit_and_just_above():
    grads = {"a": np.array([3.0]), "b": np.array([[0.0, 4.0]])}  # global norm exactly 5
    out, _ = apply(optim.clip_by_global_norm(5.0), grads)
    assert_bitwise_equal(out, copy_leaves(grads))
    out, _ = apply(optim.clip_by_global_norm(4.5), grads)
    # 3 and 4 times the factor 4.5 / 5 (its rounding and the product's), against the literals
    # (one rounding each): three roundings in all
    u = tolerances.unit_roundoff(np.float64)
    tolerances.assert_within(out["a"], [2.7], 3 * u * 2.7)
    tolerances.assert_within(out["b"], [[0.0, 3.6]], 3 * u * np.array([[0.0, 3.6]]))


@pytest.mark.parametrize("limit", [0.0, 0.3, 2.0])
def test_clip_by_value(limit):
    grads = make_grads(make_params("tree"), steps=1)[0]
    out, state = apply(optim.clip_by_value(limit), grads)
    assert state == optim.EmptyState()
    for leaf, ref in zip(jn.tree.leaves(out), f64(grads)):
        np.testing.assert_array_equal(leaf, np.clip(ref, -limit, limit))
    assert_bitwise_equal(grads, copy_leaves(make_grads(make_params("tree"), steps=1)[0]))


@pytest.mark.parametrize("weight_decay", [0.0, 0.1, 3.0])
def test_add_decayed_weights(weight_decay):
    params = make_params("model")
    grads = make_grads(params, steps=1)[0]
    out, _ = apply(optim.add_decayed_weights(weight_decay), grads, params)
    for leaf, g, p in zip(jn.tree.leaves(out), f64(grads), f64(params)):
        one_side = Tracked(g) + weight_decay * Tracked(p)  # a product and a sum, on each side
        tolerances.assert_within(leaf, g + weight_decay * p, 2 * one_side.error)
    with pytest.raises(ValueError, match=re.escape(OTHER_MODEL_PATH)):
        apply(optim.add_decayed_weights(0.1), grads, other_model())


@pytest.mark.parametrize("factor", [0.5, -2.0, 0.0, 3.0])
def test_scale(factor):
    grads = make_grads(make_params("tree"), steps=1)[0]
    out, _ = apply(optim.scale(factor), grads)
    for leaf, ref in zip(jn.tree.leaves(out), f64(grads)):
        np.testing.assert_array_equal(leaf, factor * ref)  # one multiplication, correctly rounded


def test_scale_by_schedule_counts_its_own_updates():
    schedule = lambda t: 0.5 ** t
    grads = make_grads(make_params("tree"), steps=1)[0]
    transform = optim.scale_by_schedule(schedule)
    state = transform.init(grads)
    assert type(state) is optim.CountState and int(state.count) == 0
    for t in range(4):
        out, state = transform.update(grads, state, None)
        assert int(state.count) == t + 1 and not state.count.flags.writeable
        for leaf, ref in zip(jn.tree.leaves(out), f64(grads)):
            np.testing.assert_array_equal(leaf, schedule(t) * ref)
    out, state = transform.update(grads, optim.CountState(np.array(7)), None)
    assert int(state.count) == 8
    for leaf, ref in zip(jn.tree.leaves(out), f64(grads)):
        np.testing.assert_array_equal(leaf, schedule(7) * ref)


def test_scale_by_schedule_and_the_optimizer_keep_separate_counts():
    params = make_params("tree")
    grads = make_grads(params, steps=1)[0]
    opt = optim.chain(optim.scale_by_schedule(lambda t: 0.5 ** t), optim.sgd(lambda t: 1.0 + t))
    state = optim.ChainState((optim.CountState(np.array(10)),), optim.SGDState(np.array(0)))
    new, state = opt.update(params, grads, state)
    for leaf, p, g in zip(jn.tree.leaves(new), f64(params), f64(grads)):
        one_side = Tracked(p) - 1.0 * (0.5**10 * Tracked(g))  # products by powers of two are exact: one rounding
        tolerances.assert_within(leaf, p - 1.0 * (0.5**10 * g), 2 * one_side.error)
    assert int(state.transforms[0].count) == 11 and int(state.optimizer.count) == 1


def test_chain_applies_the_transforms_in_order_then_the_optimizer():
    params = make_params("tree")
    grads = jn.tree.map(lambda g: np.asarray(10 * g), make_grads(params, steps=1)[0])
    clip_then_scale = optim.chain(optim.clip_by_value(0.5), optim.scale(3.0), optim.sgd(0.1))
    scale_then_clip = optim.chain(optim.scale(3.0), optim.clip_by_value(0.5), optim.sgd(0.1))
    first, _ = clip_then_scale.update(params, grads, clip_then_scale.init(params))
    second, _ = scale_then_clip.update(params, grads, scale_then_clip.init(params))
    for a, b, p, g in zip(jn.tree.leaves(first), jn.tree.leaves(second), f64(params), f64(grads)):
        # the same products, clips and difference on each side
        first_side = Tracked(p) - 0.1 * (3.0 * np.clip(Tracked(g), -0.5, 0.5))
        second_side = Tracked(p) - 0.1 * np.clip(3.0 * Tracked(g), -0.5, 0.5)
        tolerances.assert_within(a, p - 0.1 * (3.0 * np.clip(g, -0.5, 0.5)), 2 * first_side.error)
        tolerances.assert_within(b, p - 0.1 * np.clip(3.0 * g, -0.5, 0.5), 2 * second_side.error)
    assert any(not np.allclose(a, b) for a, b in zip(jn.tree.leaves(first), jn.tree.leaves(second)))


def test_full_chain_trajectory_matches_the_numpy_reference():
    max_norm, limit, weight_decay, factor = 1.0, 0.5, 0.01, 0.5
    schedule = lambda t: 1.0 / (1 + t)
    params = make_params("model")
    grads_seq = make_grads(params, steps=20)
    opt = full_chain(0.01)
    reference = RefAdam(0.9, 0.999, 1e-8)

    def chain_step(adam, t, p, g, m):
        """The chain's formulas, for plain arrays or ``Tracked`` values."""
        norm = sum((gi * gi).sum() for gi in g)
        norm = math.sqrt(norm) if isinstance(norm, float) else norm.sqrt()
        clip = norm > max_norm  # a Tracked comparison fails if the errors could turn it around
        if clip:
            g = [gi * (max_norm / norm) for gi in g]
        g = [np.clip(gi, -limit, limit) for gi in g]
        g = [gi + weight_decay * pi for gi, pi in zip(g, p)]
        g = [factor * schedule(t) * gi for gi in g]
        out = [adam.step(t, 0.01, pi, gi, mi) for pi, gi, mi in zip(p, g, m)]
        return [o[0] for o in out], [o[1] for o in out], clip

    # the reference, and the bounds of its formulas and of the kernels' (KernelAdam's order)
    p = f64(params)
    m = [reference.init(leaf) for leaf in p]
    sides = {form: ([Tracked(leaf) for leaf in p], [{k: Tracked(v) for k, v in mi.items()} for mi in m]) for form in (reference, KernelAdam())}
    state = opt.init(params)
    assert [type(s) for s in state.transforms] == [optim.EmptyState] * 5 + [optim.CountState]
    assert type(state.optimizer) is optim.AdamState
    clipped = 0
    for t, grads in enumerate(grads_seq):
        p, m, clip = chain_step(reference, t, p, f64(grads), m)
        clipped += clip
        for form, (tp, tm) in list(sides.items()):
            tp, tm, _ = chain_step(form, t, tp, [Tracked(gi) for gi in f64(grads)], tm)
            sides[form] = (tp, tm)

        params, state = opt.update(params, grads, state)
        assert int(state.optimizer.count) == t + 1 and int(state.transforms[5].count) == t + 1
        (ref_p, ref_m), (our_p, our_m) = sides.values()
        assert_on_bounds(jn.tree.leaves_with_paths(params), p, [a.error + b.error for a, b in zip(ref_p, our_p)], f"step {t}:")
        for moment in ("mu", "nu"):
            bounds = [a[moment].error + b[moment].error for a, b in zip(ref_m, our_m)]
            assert_on_bounds(jn.tree.leaves_with_paths(getattr(state.optimizer, moment)), [mi[moment] for mi in m], bounds, f"step {t}: {moment}.")
    assert 0 < clipped < len(grads_seq)  # both sides of the global-norm clip were exercised


def test_chain_state_round_trip():
    params = make_params("model")
    grads_seq = make_grads(params, steps=6)
    opt = full_chain()
    state = opt.init(params)
    for grads in grads_seq[:3]:
        params, state = opt.update(params, grads, state)
    assert type(state) is optim.ChainState and len(state.transforms) == 6
    # rebuilt from its leaves (writable copies), the state carries on exactly as the original
    rebuilt = jn.tree.unflatten(state, [np.array(leaf) for leaf in jn.tree.leaves(state)])
    a_params, a_state = params, state
    b_params, b_state = params, rebuilt
    for grads in grads_seq[3:]:
        a_params, a_state = opt.update(a_params, grads, a_state)
        b_params, b_state = opt.update(b_params, grads, b_state)
    assert_bitwise_equal(b_params, copy_leaves(a_params))
    assert_bitwise_equal(b_state, copy_leaves(a_state))
    assert leaf_paths(b_state) == leaf_paths(a_state)


def test_a_chain_of_only_an_optimizer_is_that_optimizer():
    params = make_params("model")
    chained, plain = optim.chain(optim.rmsprop(0.01)), optim.rmsprop(0.01)
    s1, s2 = chained.init(params), plain.init(params)
    p1 = p2 = params
    for grads in make_grads(params, steps=3):
        p1, s1 = chained.update(p1, grads, s1)
        p2, s2 = plain.update(p2, grads, s2)
    assert s1.transforms == ()
    assert_bitwise_equal(p1, copy_leaves(p2))


def test_chain_argument_errors():
    with pytest.raises(TypeError, match="argument 0"):
        optim.chain(optim.sgd(0.1), optim.scale(1.0), optim.sgd(0.1))
    with pytest.raises(TypeError, match="argument 1"):
        optim.chain(optim.scale(1.0), optim.adam(), optim.sgd(0.1))
    with pytest.raises(TypeError, match="argument 1"):
        optim.chain(optim.scale(1.0), lambda g: g, optim.sgd(0.1))
    with pytest.raises(TypeError, match="last argument"):
        optim.chain(optim.scale(1.0), optim.clip_by_value(1.0))
    with pytest.raises(TypeError, match="last argument"):
        optim.chain(optim.check_finite())
    with pytest.raises(TypeError, match="last argument"):
        optim.chain(optim.scale(1.0), "adam")
    with pytest.raises(ValueError):
        optim.chain()


# =========================================================================== PyTorch
@pytest.mark.parametrize("kind", ["model", "tree"])
@pytest.mark.parametrize("name", TORCH_CASES)
def test_trajectory_matches_torch_optim(name, kind):
    torch = pytest.importorskip("torch")
    make, reference, base, torch_factory = CASES[name]
    params = make_params(kind)
    grads_seq = make_grads(params, steps=20)
    ours = tracked_trajectory(kernel_form(reference), lambda t: base, params, grads_seq)
    theirs = tracked_trajectory(torch_form(reference), lambda t: base, params, grads_seq)
    tensors = [torch.tensor(leaf, dtype=torch.float64, requires_grad=True) for leaf in f64(params)]
    torch_opt = torch_factory(tensors, base)
    opt = make(base)
    state = opt.init(params)
    for t, grads in enumerate(grads_seq):
        for tensor, g in zip(tensors, f64(grads)):
            tensor.grad = torch.from_numpy(g)
        torch_opt.step()
        params, state = opt.update(params, grads, state)
        bounds = [a.error + b.error for a, b in zip(ours[t][0], theirs[t][0])]
        assert_on_bounds(jn.tree.leaves_with_paths(params), [tensor.detach().numpy() for tensor in tensors], bounds, f"{name}: step {t}:")


# --------------------------------------------------------------------------- gradient accumulation
def test_multi_steps_updates_once_every_k_batches_with_the_mean_gradient():
    rng = np.random.default_rng(11)
    model = jn.pipe(jn.Dense(W=rng.normal(size=(4, 3)), b=rng.normal(size=3)), jn.Tanh(), jn.Dense(W=rng.normal(size=(3, 2)), b=np.zeros(2)))
    batches = [(rng.normal(size=(5, 4)), rng.integers(0, 2, 5)) for _ in range(6)]
    loss, inner = jn.SoftmaxCrossEntropy(), jn.optim.adam(0.1)
    accumulating = jn.optim.multi_steps(inner, 3)
    params, state = model, accumulating.init(model)
    expected, expected_state = model, inner.init(model)
    for start in (0, 3):
        grads = [jn.value_and_grad(expected, loss, X, T)[1] for X, T in batches[start : start + 3]]
        for i, (X, T) in enumerate(batches[start : start + 3]):
            before = params
            params, state = accumulating.update(params, jn.value_and_grad(params, loss, X, T)[1], state)
            if i < 2:
                assert params is before and int(state.mini_step) == i + 1  # nothing moves until the third batch
        # the mean as the kernels form it: the sum in batch order (0 + g1 is exact; each further sum rounds once),
        # then one division rounded once; the update from it is then the inner optimizer's own, so all bits agree
        total = jn.tree.map(lambda a, b, c: (a + b) + c, *grads)
        mean = jn.tree.map(lambda t: np.float64(t) / 3.0, total)
        expected, expected_state = inner.update(expected, mean, expected_state)
        for a, b in zip(jn.tree.leaves(params), jn.tree.leaves(expected)):
            assert a.tobytes() == b.tobytes()
        assert int(state.mini_step) == 0 and int(state.optimizer.count) == int(expected_state.count)


def test_multi_steps_trains_in_fit_compiled_or_not_alike():
    rng = np.random.default_rng(12)
    model = jn.pipe(jn.Dense.init(jn.random.key(0), 4, 8), jn.ReLU(), jn.Dense.init(jn.random.key(1), 8, 3))
    X, T = rng.normal(size=(48, 4)).astype(np.float32), rng.integers(0, 3, 48)
    optimizer = jn.optim.multi_steps(jn.optim.sgd(0.1), 2)
    runs = [jn.fit(model, jn.SoftmaxCrossEntropy(), optimizer, X, T, key=jn.random.key(2), epochs=2, batch_size=8, compiled=c) for c in (True, False)]
    for a, b in zip(jn.tree.leaves(runs[0].model), jn.tree.leaves(runs[1].model)):
        assert a.tobytes() == b.tobytes()
    assert int(runs[0].state.optimizer.count) == 6  # 12 batches, an update every 2
    plateau = jn.callbacks.ReduceLROnPlateau("loss", patience=0, min_delta=10.0)
    result = jn.fit(model, jn.SoftmaxCrossEntropy(), optimizer, X, T, key=jn.random.key(2), epochs=2, batch_size=8, callbacks=[plateau])
    assert float(result.state.optimizer.lr_scale) == 0.1


def test_multi_steps_refuses_bad_arguments():
    with pytest.raises((TypeError, ValueError), match="multi_steps: every"):
        jn.optim.multi_steps(jn.optim.sgd(0.1), 0)
    with pytest.raises(TypeError, match="multi_steps: optimizer must have init and update"):
        jn.optim.multi_steps("sgd", 2)
    with pytest.raises(TypeError, match="multi_steps.update: state must be the MultiStepsState"):
        model = jn.Dense.init(jn.random.key(0), 2, 2)
        jn.optim.multi_steps(jn.optim.sgd(0.1), 2).update(model, model, jn.optim.sgd(0.1).init(model))
