"""Each kernel compiles once per float dtype, always for read-only arrays.

A read-only array is a different Numba type from a writable one (``Array.mutable`` is False), and a 1-D array from a
2-D one: a kernel handed an inconsistent mix is compiled again for each combination. This
test drives every built-in layer (each example of the shared table, ``tests/layer_examples.py``),
loss, optimizer and gradient transform through the public entry points (the compiled step and
``fit`` included), with writable, read-only, non-contiguous and float16 inputs in float32 and
float64, then looks at what each kernel was compiled for.

The exercise runs in a fresh interpreter, so that what other tests compiled (other shapes,
users' layers) does not count here; it imports the table from the tests folder, which it is
handed as its first argument.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import pytest

pytestmark = pytest.mark.skipif(
    bool(numba.config.DISABLE_JIT), reason="with NUMBA_DISABLE_JIT the kernels are plain Python functions, with no signatures"
)

EXERCISE = textwrap.dedent(
    """
    import json
    import sys
    import attrs
    import numpy as np
    import numba
    import jitnn as jn
    from jitnn._jit import KERNELS

    sys.path.insert(0, sys.argv[1])  # the tests folder
    from layer_examples import LAYER_EXAMPLES, OPTIMIZER_EXAMPLES

    rng = np.random.default_rng(0)


    def variants(array, dtype):
        # the same values as a writable array, a read-only one, a non-contiguous view and float16
        writable = np.array(array, dtype=dtype)
        read_only = writable.copy()
        read_only.flags.writeable = False
        wide = np.repeat(writable, 2, axis=-1)
        strided = wide[..., ::2]
        assert not strided.flags.c_contiguous
        fortran = np.asfortranarray(writable)
        return [writable, read_only, strided, fortran, writable.astype(np.float16)]


    def index_variants(indices):
        # integer indices: the same values in four integer dtypes, read-only and non-contiguous
        read_only = indices.copy()
        read_only.flags.writeable = False
        strided = np.repeat(indices, 2, axis=-1)[..., ::2]
        return [indices.astype(np.int8), indices.astype(np.uint16), indices.astype(np.int32), read_only, strided]


    def kernel_functions(kernels):
        # the kernels of a layer or loss (nested kernel tuples included)
        for kernel in kernels:
            if isinstance(kernel, tuple):
                yield from kernel_functions(kernel)
            elif callable(kernel):  # not a Factored kernel's parameter names
                yield kernel


    for dtype in (np.float32, np.float64):
        # ---- every built-in layer, as the shared table makes it (each in its usual place: a
        #      kernel is compiled again for arrays of another rank), in evaluation and training mode
        for cls, entry in LAYER_EXAMPLES.items():
            example, inputs = entry.make(dtype, np.random.default_rng(1))
            # a recurrent layer has a set of kernels per output rank (kernel_sets): both are driven
            flipped = [attrs.evolve(example, return_sequences=not example.return_sequences)] if hasattr(cls, "kernel_sets") else []
            for layer in [example, *flipped]:
                dY = rng.normal(size=(inputs.shape[0], *layer.output_shape(inputs.shape[1:])))
                batches = index_variants(inputs) if inputs.dtype.kind in "iu" else variants(inputs, dtype)
                for x, dy in zip(batches, variants(dY, dtype)):
                    layer.forward(x)
                    layer(x)
                    layer.grad_input(x, dy)
                    layer.grad_params(x, dy)
                    if getattr(layer.kernels, "factored", None) is not None:  # the compiled step's route (it may load the step from the cache)
                        layer._factored_gradients(x, dy)
                    for training in (False, True):
                        Y, trace = jn.forward(layer, x, training=training, key=jn.random.key(0))
                        jn.backward(layer, trace, dy)

        d1 = jn.Dense(W=rng.normal(size=(4, 5)).astype(dtype), b=rng.normal(size=5).astype(dtype))
        d2 = jn.Dense(W=rng.normal(size=(5, 3)).astype(dtype), b=rng.normal(size=3).astype(dtype))
        X = rng.normal(size=(6, 4))

        model = jn.pipe(d1, jn.ReLU(), jn.pipe(jn.LeakyReLU(0.2), jn.GELU(), d2), jn.Tanh(), jn.Sigmoid(), jn.Identity())
        classifier = jn.pipe(d1, jn.Tanh(), d2)
        probabilities = jn.pipe(classifier, jn.Softmax())
        opt = jn.optim.sgd(0.1)
        state = opt.init(model)
        dY3 = rng.normal(size=(6, 3))
        for x, dy in zip(variants(X, dtype), variants(dY3, dtype)):
            for m in (model, probabilities):
                Y, trace = jn.forward(m, x)
                grads, dX = jn.backward(m, trace, dy)
                m.forward(x)
                m.grad_input(x, dy)
                m.grad_params(x, dy)
            grads, _ = jn.backward(model, jn.forward(model, x)[1], dy)
            model_after, state = opt.update(model, grads, state)

            labels = rng.integers(0, 3, size=6)
            for label_dtype in (np.int8, np.int32, np.uint16, np.int64):
                value, grads = jn.value_and_grad(classifier, jn.SoftmaxCrossEntropy(), x, labels.astype(label_dtype))
                classifier_after, _ = opt.update(classifier, grads, opt.init(classifier))
            targets = rng.normal(size=(6, 3))
            for T in (targets.astype(dtype), targets.astype(np.float16), targets.round().astype(np.int32)):
                jn.value_and_grad(classifier, jn.MeanSquaredError(), x, T)
            jn.value_and_grad(classifier, jn.BinaryCrossEntropy(), x, rng.random((6, 3)).astype(dtype))

        Y3 = rng.normal(size=(6, 3))
        for y in variants(Y3, dtype):
            losses = [
                (jn.SoftmaxCrossEntropy(), rng.integers(0, 3, size=6).astype(np.uint16)),
                (jn.MeanSquaredError(), rng.normal(size=(6, 3)).astype(dtype)),
                (jn.BinaryCrossEntropy(), rng.random((6, 3)).astype(dtype)),
                (jn.Huber(), rng.normal(size=(6, 3)).astype(dtype)),
                (jn.KLDivergence(), rng.dirichlet(np.ones(3), size=6).astype(dtype)),
                (jn.SoftmaxCrossEntropy(label_smoothing=0.1), rng.integers(0, 3, size=6)),
            ]
            for loss, T in losses:
                loss.value(y, T)
                loss(y, T)
                loss.grad(y, T)
                loss.value_and_grad(y, T)

        # ---- sequence scores (n, T, k) with labels (n, T): the loss's kernels see (n T, k) rows
        labels_seq = rng.integers(0, 3, size=(2, 3))
        for y in variants(rng.normal(size=(2, 3, 3)), dtype):
            jn.KLDivergence().value_and_grad(y, rng.dirichlet(np.ones(3), size=(2, 3)))
            for loss in (jn.SoftmaxCrossEntropy(), jn.SoftmaxCrossEntropy(ignore_label=-100)):
                loss.value(y, labels_seq.astype(np.int32))
                loss.grad(y, labels_seq)
                loss.value_and_grad(y, labels_seq.astype(np.uint16))

        grads, _ = jn.backward(model, jn.forward(model, X)[1], rng.normal(size=(6, 3)))
        schedule = jn.optim.exponential_decay(1.0, 0.5, 10)
        transforms = [jn.optim.check_finite(), jn.optim.clip_by_global_norm(1e-3), jn.optim.clip_by_value(0.1),
                      jn.optim.add_decayed_weights(0.01), jn.optim.scale(0.5), jn.optim.scale_by_schedule(schedule)]
        optimizers = [make() for make in OPTIMIZER_EXAMPLES.values()]  # every named optimizer
        optimizers += [jn.optim.momentum(0.1, nesterov=True), jn.optim.chain(*transforms, jn.optim.adam(schedule))]
        for optimizer in optimizers:
            params, state = model, optimizer.init(model)
            for _ in range(2):
                params, state = optimizer.update(params, grads, state)

        jn.testing.check_grads(d1, X)
        jn.testing.check_grads(jn.pipe(jn.Softmax(), jn.Tanh()), X)
        jn.testing.jacobian(d1, X[0].astype(dtype))
        jn.testing.jacobian(jn.Softmax(), X[0].astype(dtype))

        # ---- spatial layers: NCHW batches through a small network
        conv = jn.Conv2D(W=rng.normal(size=(3, 2, 3, 2)).astype(dtype), b=rng.normal(size=3).astype(dtype),
                         stride=(1, 2), padding=1, dilation=(2, 1))
        X4 = rng.normal(size=(2, 2, 5, 5))
        network = jn.pipe(conv, jn.MaxPool2D(2, padding=1), jn.AvgPool2D(1), jn.Flatten(),
                          jn.Dense(W=rng.normal(size=(12, 3)).astype(dtype), b=np.zeros(3, dtype)))
        for x in variants(X4, dtype):
            value, grads = jn.value_and_grad(network, jn.SoftmaxCrossEntropy(), x, rng.integers(0, 3, size=2))
            opt.update(network, grads, opt.init(network))
        jn.testing.check_grads(conv, X4[:1])

        # ---- element-wise layers on 4-D input (handed flat views), normalization, dropout, embedding,
        #      in evaluation and training mode, inside combinators
        norm_net = jn.pipe(
            conv, jn.BatchNorm.init(None, 3, dtype=dtype), jn.ReLU(), jn.Dropout(0.5), jn.Tanh(), jn.Flatten(),
            jn.Residual(jn.pipe(jn.LayerNorm.init(None, 27, dtype=dtype), jn.GELU())),
            jn.Concatenate((jn.Dense(W=rng.normal(size=(27, 2)).astype(dtype), b=np.zeros(2, dtype)), jn.Sigmoid())),
            jn.Add((jn.Identity(), jn.LeakyReLU(0.1))),
        )
        for x in variants(X4, dtype):
            norm_net.forward(x)  # the plain forward kernels, which keep no residuals
            for training in (False, True):
                Y, trace = jn.forward(norm_net, x, training=training, key=jn.random.key(0))
                jn.backward(norm_net, trace, np.ones(Y.shape, dtype))
            jn.train_step(norm_net, opt.init(norm_net), jn.SoftmaxCrossEntropy(), opt, x, rng.integers(0, 29, size=2), key=jn.random.key(1))
        # ---- the compiled step and fit: the step hands kernels read-only arrays only, so it
        #      compiles no kernel again
        step_models = [(classifier, X, rng.integers(0, 3, size=6)), (norm_net, X4, rng.integers(0, 29, size=2)),
                       (network, X4, rng.integers(0, 3, size=2))]
        for (m, x, labels), optimizer in zip(step_models, (jn.optim.adam(), jn.optim.momentum(0.1), optimizers[-1])):
            step = jn.compile_step(m, jn.SoftmaxCrossEntropy(), optimizer)
            m_state = optimizer.init(m)
            for variant in variants(x, dtype)[:2]:
                m, m_state, _ = step(m, m_state, variant, labels, key=jn.random.key(2))
        jn.fit(classifier, jn.MeanSquaredError(), opt, X, rng.normal(size=(6, 3)), key=jn.random.key(3), batch_size=4)
        # ---- a sequence model: tokens, positions, causal attention, scores per position
        seq_model = jn.pipe(
            jn.Embedding.init(jn.random.key(0), 5, 4, dtype=dtype), jn.PositionalEmbedding.init(jn.random.key(1), 6, 4, dtype=dtype),
            jn.Residual(jn.MultiHeadAttention.init(jn.random.key(2), 4, 2, causal=True, dtype=dtype)), jn.Dense.init(jn.random.key(3), 4, 5, dtype=dtype),
        )
        tokens = rng.integers(0, 5, size=(3, 6))
        seq_targets = np.where(rng.random(tokens.shape) < 0.3, -100, tokens)
        seq_loss = jn.SoftmaxCrossEntropy(ignore_label=-100)
        step = jn.compile_step(seq_model, seq_loss, jn.optim.adam())
        m, m_state = seq_model, jn.optim.adam().init(seq_model)
        for variant in index_variants(tokens)[:2]:
            m, m_state, _ = step(m, m_state, variant, seq_targets, key=jn.random.key(4))
            jn.value_and_grad(seq_model, seq_loss, variant, seq_targets)
        jn.fit(seq_model, seq_loss, opt, tokens, seq_targets, key=jn.random.key(5), batch_size=2)

    # the kernels of everything exercised above, which must all have been compiled
    from jitnn.optim import transforms
    optimizer_kernels = list(dict.fromkeys(type(make()).kernel for make in OPTIMIZER_EXAMPLES.values()))
    transform_kernels = [transforms._sum_of_squares, transforms._scale, transforms._clip, transforms._add_decayed_weights, transforms._first_non_finite]
    exercised = [f"{k.py_func.__module__}.{k.py_func.__qualname__}" for k in optimizer_kernels + transform_kernels]
    losses = [cls for cls in jn.registered_losses() if cls.__module__.startswith("jitnn.")]
    for cls in [*LAYER_EXAMPLES, *losses]:  # composite layers have no kernels of their own
        exercised += [f"{k.py_func.__module__}.{k.py_func.__qualname__}" for k in kernel_functions(getattr(cls, "kernel_sets", None) or cls.kernels or ())]

    report = []
    for dispatcher in KERNELS:
        function = dispatcher.py_func
        report.append({
            "name": f"{function.__module__}.{function.__qualname__}",
            "signatures": [
                [[str(arg), isinstance(arg, numba.types.Array), (not arg.mutable) if isinstance(arg, numba.types.Array) else False] for arg in signature]
                for signature in dispatcher.signatures
            ],
        })
    optimizers = [f"{k.py_func.__module__}.{k.py_func.__qualname__}" for k in optimizer_kernels]
    print("REPORT " + json.dumps({"kernels": report, "exercised": exercised, "optimizer_kernels": optimizers}))
    """
)


@pytest.fixture(scope="module")
def report() -> dict:
    """Run the exercise in a fresh interpreter and return what it reports."""
    result = subprocess.run(
        [sys.executable, "-c", EXERCISE, str(Path(__file__).resolve().parent)], capture_output=True, text=True, timeout=900, check=False,
        env=os.environ.copy(),
    )
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("REPORT "))
    return json.loads(line[len("REPORT ") :])


@pytest.fixture(scope="module")
def compiled(report: dict) -> dict[str, list[list[list]]]:
    """Kernel name -> its compiled signatures, each a list of ``[type, is_array, read_only]``."""
    return {entry["name"]: entry["signatures"] for entry in report["kernels"]}


def test_the_exercise_reached_the_kernels_it_means_to_check(report: dict, compiled: dict[str, list]) -> None:
    assert report["exercised"]
    missing = [name for name in report["exercised"] if name not in compiled]
    assert not missing, f"kernels not listed in jitnn._jit.KERNELS: {missing}"
    not_compiled = [name for name in report["exercised"] if not compiled[name]]
    assert not not_compiled, f"kernels the exercise never reached: {not_compiled}"


def test_each_kernel_compiles_at_most_once_per_float_dtype(report: dict, compiled: dict[str, list]) -> None:
    """Two signatures at most (float32, float64); an optimizer's kernel twice as many, once
    for each with a weight gradient given as its factors (a tuple, from the compiled step)."""
    assert report["optimizer_kernels"]

    def too_many(name: str, signatures: list[list[list]]) -> bool:
        factored = [signature for signature in signatures if len(signature) > 1 and signature[1][0].startswith("UniTuple(readonly array(")]
        if name in report["optimizer_kernels"]:
            return len(factored) > 2 or len(signatures) - len(factored) > 2
        return len(signatures) > 2

    found = {
        name: [", ".join(arg for arg, _, _ in signature) for signature in signatures]
        for name, signatures in compiled.items()
        if too_many(name, signatures)
    }
    assert not found, "kernels compiled for more than two signatures (of each gradient form):\n" + "\n".join(
        f"{name}:\n    " + "\n    ".join(sigs) for name, sigs in found.items()
    )


def test_every_array_a_kernel_sees_is_read_only(compiled: dict[str, list]) -> None:
    writable = sorted(
        {
            f"{name}({', '.join(arg for arg, _, _ in signature)})"
            for name, signatures in compiled.items()
            for signature in signatures
            if any(is_array and not read_only for _, is_array, read_only in signature)
        }
    )
    assert not writable, "kernels compiled for writable arrays:\n" + "\n".join(writable)
