"""The plan (jitnn/plan.py): combinators defined here, in a test file, run through the
forward and backward passes, check_grads and the compiled step with nothing more than
their ``lower``; the plan reads backwards into the right gradients for shared layers and
dead branches; residual layers' two routes give the same bits; lowering errors name the
layer."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import jitnn as jn
from jitnn import plan as jplan
from user_layers import Scale


# --------------------------------------------------------------------------- users' combinators
@jn.layer
class DenseBlock(jn.Composite):
    """``Y = [X, f(X)]`` along the features (DenseNet's block)."""

    inner: jn.Layer

    def lower(self, plan: Any, x: Any) -> Any:
        return plan.concat([x, plan.apply(self.inner, x)], axis=0)


@jn.layer
class Twice(jn.Composite):
    """``Y = f(f(X))``: one layer applied twice, sharing its parameters."""

    inner: jn.Layer

    def lower(self, plan: Any, x: Any) -> Any:
        return plan.apply(self.inner, plan.apply(self.inner, x))


@jn.layer
class Gate(jn.Composite):
    """``Y = a(X) + b(X) + X``, with a branch ``c`` whose output is never used."""

    a: jn.Layer
    b: jn.Layer
    c: jn.Layer

    def lower(self, plan: Any, x: Any) -> Any:
        plan.apply(self.c, x)  # computed and dropped: its parameters get zero gradients
        return plan.add(plan.apply(self.a, x), plan.apply(self.b, x), x)


def dense(key: Any, n_in: int, n_out: int) -> jn.Dense:
    return jn.Dense.init(key, n_in, n_out, dtype=np.float64)


def models() -> dict[str, jn.Layer]:
    k = jn.random.split(jn.random.key(3), 6)
    return {
        "dense-block": jn.pipe(dense(k[0], 4, 3), DenseBlock(jn.pipe(dense(k[1], 3, 5), jn.Tanh())), dense(k[2], 8, 3)),
        "twice": jn.pipe(dense(k[0], 4, 4), Twice(jn.pipe(dense(k[3], 4, 4), jn.Sigmoid())), dense(k[2], 4, 3)),
        "gate": jn.pipe(dense(k[0], 4, 4), Gate(dense(k[4], 4, 4), jn.pipe(jn.LayerNorm.init(None, 4, dtype=np.float64), jn.GELU()), dense(k[5], 4, 2)), jn.Softmax()),
    }


@pytest.fixture(params=list(models()), ids=list(models()))
def model(request: pytest.FixtureRequest) -> jn.Layer:
    return models()[request.param]


def test_users_combinators_pass_the_gradient_check(model: jn.Layer) -> None:
    X = np.random.default_rng(0).normal(size=(5, 4))
    jn.testing.check_grads(model, X)


def test_users_combinators_forward_and_backward_agree_with_the_plain_answers(model: jn.Layer) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(6, 4))
    Y, trace = jn.forward(model, X)
    dY = rng.normal(size=Y.shape)
    grads, dX = jn.backward(model, trace, dY)
    np.testing.assert_array_equal(Y, model.forward(X))
    np.testing.assert_array_equal(dX, model.grad_input(X, dY))
    for (path, a), (_, b) in zip(jn.tree.leaves_with_paths(grads), jn.tree.leaves_with_paths(model.grad_params(X, dY))):
        np.testing.assert_array_equal(a, b, err_msg=path)
    jn.tree.check_same_structure(model, grads)


def test_users_combinators_compile_and_agree_with_the_generic_step_bit_for_bit(model: jn.Layer) -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(8, 4))
    loss, optimizer = jn.MeanSquaredError(), jn.optim.adam(1e-2)
    T = rng.normal(size=(8, *model.output_shape((4,))))
    step = jn.compile_step(model, loss, optimizer)
    compiled, generic = (model, optimizer.init(model)), (model, optimizer.init(model))
    for _ in range(3):
        *compiled, value = step(*compiled, X, T)
        *generic, expected = jn.train_step(*generic, loss, optimizer, X, T)
        assert value == expected
    for (path, a), (_, b) in zip(jn.tree.leaves_with_paths(compiled), jn.tree.leaves_with_paths(generic)):
        np.testing.assert_array_equal(a, b, err_msg=path)


def test_a_layer_applied_twice_gets_the_sum_of_both_gradients() -> None:
    """Twice(Scale): Y = X s s, so dL/ds = sum(dY X s) + sum(dY X s) (one term per call)."""
    s = np.array([0.5, -2.0, 3.0])
    model = Twice(Scale(s=s))
    rng = np.random.default_rng(4)
    X, dY = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    grads = model.grad_params(X, dY)
    np.testing.assert_allclose(grads.inner.s, 2 * (dY * X * s).sum(axis=0), rtol=1e-14)
    np.testing.assert_array_equal(model.forward(X), (X * s) * s)
    np.testing.assert_array_equal(model.grad_input(X, dY), (dY * s) * s)


def test_a_branch_that_reaches_no_output_gets_zero_gradients() -> None:
    model = models()["gate"]
    X = np.random.default_rng(5).normal(size=(3, 4))
    grads = model.grad_params(X, np.ones((3, 4)))
    unused = grads.layers[1].c
    assert not unused.W.any() and not unused.b.any()
    assert not unused.W.flags.writeable


def test_the_plan_of_a_model() -> None:
    k = jn.random.split(jn.random.key(0), 2)
    model = jn.pipe(dense(k[0], 4, 4), jn.Residual(jn.pipe(jn.ReLU(), dense(k[1], 4, 4))), jn.Concatenate([jn.Tanh(), jn.Identity()]))
    lowered = jplan.lower(model, (4,))
    assert [site.where for site in lowered.sites] == [
        ".layers[0]", ".layers[1].inner.layers[0]", ".layers[1].inner.layers[1]", ".layers[2].branches[0]", ".layers[2].branches[1]",
    ]
    assert [type(op).__name__ for op in lowered.ops] == ["Call", "Call", "Call", "Sum", "Call", "Call", "Concat"]
    assert lowered.slots[lowered.output] == (8,) and lowered.output_shape == model.output_shape((4,))
    assert [site.first_param for site in lowered.sites] == [0, 2, 2, 4, 4]
    # the first layer's input needs no gradient; every later slot does
    assert lowered.gradient_needed(False) == [False] + [True] * (len(lowered.slots) - 1)


def test_lowering_errors_name_the_layer_and_its_position() -> None:
    @jn.layer
    class Mismatch(jn.Composite):
        a: jn.Layer
        b: jn.Layer

        def lower(self, plan: Any, x: Any) -> Any:
            return plan.add(plan.apply(self.a, x), plan.apply(self.b, x))

    @jn.layer
    class Stranger(jn.Composite):
        a: jn.Layer

        def lower(self, plan: Any, x: Any) -> Any:
            return plan.apply(jn.ReLU(), x)

    @jn.layer
    class Forgetful(jn.Composite):
        a: jn.Layer

        def lower(self, plan: Any, x: Any) -> Any:
            plan.apply(self.a, x)

    k = jn.random.split(jn.random.key(0), 2)
    X = np.ones((2, 4))
    with pytest.raises(ValueError, match=r"Mismatch at model\.layers\[1\]: outputs must share one shape to be added, got \[\(4,\), \(3,\)\]"):
        jn.pipe(jn.Identity(), Mismatch(jn.Identity(), dense(k[0], 4, 3))).forward(X)
    with pytest.raises(ValueError, match=r"Stranger: plan.apply was given a layer that is not one of its members"):
        Stranger(jn.Tanh()).forward(X)
    with pytest.raises(TypeError, match=r"Forgetful: lower must combine and return the slots its plan gives, got None"):
        Forgetful(jn.Tanh()).forward(X)
    same = jn.ReLU()
    with pytest.raises(ValueError, match=r"holds this layer 2 times; apply it by its index"):
        Mismatch(same, same).forward(X)
    with pytest.raises(ValueError, match=r"Dense at model\.layers\[1\]\.b: expects per-example input shape \(3,\) or \(\.\.\., 3\), got \(4,\) \(input array of shape \(2, 4\)\)"):
        jn.pipe(jn.Identity(), Mismatch(jn.Identity(), dense(k[1], 3, 4))).forward(X)
    bn = jn.BatchNorm.init(None, 4, dtype=np.float64)
    with pytest.raises(ValueError, match=r"BatchNorm at model\.inner: a layer with buffers can be applied only once in a model, got 2 times"):
        Twice(bn).forward(X)


def test_a_composite_without_lower_is_refused_when_declared() -> None:
    with pytest.raises(TypeError, match="composite layer Nothing must define lower"):
        @jn.layer
        class Nothing(jn.Composite):
            inner: jn.Layer


# --------------------------------------------------------------------------- residuals
RESIDUAL_LAYERS = {
    "LayerNorm": lambda dtype: (jn.LayerNorm(scale=np.linspace(0.5, 2, 6).astype(dtype), shift=np.arange(6, dtype=dtype) / 7), (5, 3, 6)),
    "BatchNorm": lambda dtype: (jn.BatchNorm(scale=np.linspace(0.5, 2, 3).astype(dtype), shift=np.arange(3, dtype=dtype),
                                             running_mean=np.arange(3, dtype=dtype) / 4, running_var=np.linspace(0.5, 2, 3).astype(dtype)), (6, 3, 2, 2)),
    "MaxPool2D": lambda dtype: (jn.MaxPool2D(2, padding=1), (2, 3, 5, 4)),
    "Softmax": lambda dtype: (jn.Softmax(), (4, 2, 5)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(RESIDUAL_LAYERS))
@pytest.mark.parametrize("training", [False, True], ids=["evaluation", "training"])
def test_the_residual_route_and_the_plain_route_give_the_same_bits(name: str, dtype: Any, training: bool) -> None:
    """A trace keeps the residuals; ``grad_input``/``grad_params`` recompute them from X alone
    (and the plain forward kernel computes none): all three give the same bits. In training
    mode the compiled step (residuals as locals) and the generic step (in the trace) agree."""
    layer, shape = RESIDUAL_LAYERS[name](dtype)
    rng = np.random.default_rng(6)
    X = rng.normal(size=shape).astype(dtype)
    assert layer.kernels.residuals is not None
    Y, trace = jn.forward(layer, X)
    dY = rng.normal(size=Y.shape).astype(dtype)
    grads, dX = jn.backward(layer, trace, dY)
    np.testing.assert_array_equal(Y, layer.forward(X))
    np.testing.assert_array_equal(dX, layer.grad_input(X, dY))
    for a, b in zip(jn.tree.leaves(grads), jn.tree.leaves(layer.grad_params(X, dY))):
        np.testing.assert_array_equal(a, b)
    if training:
        model = jn.pipe(layer, jn.Flatten())
        T = rng.normal(size=(shape[0], int(np.prod(Y.shape[1:])))).astype(dtype)
        loss, optimizer = jn.MeanSquaredError(), jn.optim.sgd(0.1)
        step = jn.compile_step(model, loss, optimizer)
        compiled = step(model, optimizer.init(model), X, T)
        generic = jn.train_step(model, optimizer.init(model), loss, optimizer, X, T)
        for a, b in zip(jn.tree.leaves(compiled[:2]), jn.tree.leaves(generic[:2])):
            np.testing.assert_array_equal(a, b)
        assert compiled[2] == generic[2]


def test_the_residual_update_of_batch_norm_matches_its_definition() -> None:
    """The running statistics come from the forward's batch statistics (no second pass)."""
    layer, shape = RESIDUAL_LAYERS["BatchNorm"](np.float64)
    X = np.random.default_rng(7).normal(size=shape)
    _, trace = jn.forward(layer, X, training=True)
    after = trace.updated_model
    values = X.transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(after.running_mean, 0.9 * layer.running_mean + 0.1 * values.mean(axis=1), rtol=1e-14)
    np.testing.assert_allclose(after.running_var, 0.9 * layer.running_var + 0.1 * values.var(axis=1, ddof=1), rtol=1e-13)


def test_a_softmax_output_handed_to_the_caller_is_their_own() -> None:
    """Softmax keeps its output as its residual; the caller of jn.forward gets a writable
    copy, so writing into it cannot change the backward pass."""
    X = np.random.default_rng(8).normal(size=(3, 4))
    Y, trace = jn.forward(jn.Softmax(), X)
    dY = np.ones_like(Y)
    expected = jn.backward(jn.Softmax(), trace, dY)[1]
    Y[:] = 0.0
    np.testing.assert_array_equal(jn.backward(jn.Softmax(), trace, dY)[1], expected)


def test_no_kernel_takes_more_than_nine_arguments() -> None:
    """Buffers travel apart from configuration and residual kernels take R instead of the
    buffers, so that no kernel's argument list grows past nine: the recurrent layers'
    residual gradient kernels (``X, dY, R``, four parameters, ``reverse`` and
    ``return_sequences``) take nine, every other kernel at most eight."""
    import inspect

    from jitnn._jit import KERNELS

    functions = [getattr(k, "py_func", k) for k in KERNELS]  # the functions themselves under NUMBA_DISABLE_JIT=1
    counts = {
        f"{f.__module__}.{f.__name__}": len(inspect.signature(f).parameters)
        for f in functions
        if (f.__module__ or "").startswith("jitnn.")  # not the generated steps (whole models) nor kernels made by exec
    }
    assert counts and not {name: n for name, n in counts.items() if n > 9}
    assert not {name: n for name, n in counts.items() if n > 8 and not name.startswith("jitnn.layers.recurrent.")}
