"""``python -m jitnn warmup`` compiles the built-in kernels ahead of time, so that a model
built afterwards from built-in layers compiles only its own training step.

The check runs in child interpreters with an empty ``NUMBA_CACHE_DIR`` of their own: the
first runs the command, the second trains models of every layer family and counts the
kernel signatures it had to compile (none) and the steps it compiled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest

import jitnn as jn  # noqa: F401  (imported before the warmup module, as users do)
from jitnn.warmup import warmup

needs_jit = pytest.mark.skipif(bool(numba.config.DISABLE_JIT), reason="about compiled machine code and its disk cache, which NUMBA_DISABLE_JIT=1 turns off")

#: Bounds a hang; compiling every float32 kernel into an empty cache takes 1-3 minutes.
CHILD_TIMEOUT = 900

AFTER_WARMUP = textwrap.dedent("""
    import numpy as np
    import jitnn as jn
    from jitnn._jit import KERNELS

    k = iter(jn.random.split(jn.random.key(0), 16))
    rng = np.random.default_rng(0)
    models = [
        (jn.pipe(jn.Conv2D.init(next(k), 1, 4, 3, padding=1), jn.BatchNorm.init(None, 4), jn.ReLU(), jn.MaxPool2D(2),
                 jn.Flatten(), jn.Dropout(0.2), jn.Dense.init(next(k), 16, 3)), rng.standard_normal((20, 1, 4, 4)), rng.integers(0, 3, 20)),
        (jn.pipe(jn.Dense.init(next(k), 5, 8), jn.ReLU(), jn.Dense.init(next(k), 8, 3)), rng.standard_normal((20, 5)), rng.integers(0, 3, 20)),
        (jn.pipe(jn.Embedding.init(next(k), 7, 4), jn.GRU.init(next(k), 4, 6, return_sequences=False), jn.Dense.init(next(k), 6, 3)),
         rng.integers(0, 7, (20, 5)), rng.integers(0, 3, 20)),
    ]
    for model, X, T in models:
        result = jn.fit(model, jn.SoftmaxCrossEntropy(), jn.optim.adamw(1e-3), X.astype(np.float32) if X.dtype.kind == "f" else X, T,
                        key=jn.random.key(1), epochs=1, batch_size=8, compiled=True)  # the step compiles here
        assert result.compiled
    kernels = [d for d in KERNELS if d.py_func.__module__.startswith("jitnn.")]  # not the models' own steps
    misses = sum(sum(d.stats.cache_misses.values()) for d in kernels)
    hits = sum(sum(d.stats.cache_hits.values()) for d in kernels)
    print("kernels", misses, hits)
""")


def run(arguments: list[str], cache: Path) -> str:
    process = subprocess.run([sys.executable, *arguments], env={**os.environ, "NUMBA_CACHE_DIR": str(cache)},
                             capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    assert process.returncode == 0, f"the child failed ({process.returncode}):\n{process.stdout}\n{process.stderr}"
    return process.stdout


@needs_jit
def test_after_the_warmup_a_new_model_compiles_only_its_step(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    summary = run(["-m", "jitnn", "warmup", "--dtype", "float32", "--quiet"], cache)
    assert summary.startswith("jitnn warmup (float32): ") and " kernel signatures compiled" in summary
    compiled = int(summary.split(": ")[1].split()[0])
    assert compiled > 50  # every layer family's kernels, in an empty cache
    assert not list((cache / "jitnn_steps").glob("*.py"))  # no step: those depend on the model
    misses, hits = map(int, next(line for line in run(["-c", AFTER_WARMUP], cache).splitlines() if line.startswith("kernels ")).split()[1:])
    assert misses == 0, f"{misses} kernel signatures were compiled after the warmup"
    assert hits > 0
    assert len(list((cache / "jitnn_steps").glob("*.py"))) == 3  # each model compiled its own step


def test_the_warmup_refuses_other_dtypes() -> None:
    with pytest.raises(ValueError, match="warmup: dtypes must be float32 or float64, got float16"):
        warmup([np.float16])


def test_the_warmup_command_refuses_an_unknown_dtype(capsys: pytest.CaptureFixture) -> None:
    from jitnn.__main__ import main

    with pytest.raises(SystemExit):
        main(["warmup", "--dtype", "int8"])
    assert "invalid choice" in capsys.readouterr().err
