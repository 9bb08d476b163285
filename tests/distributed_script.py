"""Run by ``tests/test_distributed.py`` under ``mpirun -n 2``: a distributed fit, each rank
writing what it ended with. ``python distributed_script.py MODE OUT``:

- ``train``: a float64 MLP, Adam, validation data and a CSV log; each rank saves its model
  and optimizer state to ``OUT/rank<r>.npz`` and its metrics to ``OUT/metrics<r>.txt``;
- ``batchnorm``: the same with batch normalization (each rank normalizes its shard with its
  own statistics, so only the ranks' agreement is checked);
- ``generic``: ``train`` on the generic path (``compiled=False``), whose update averages;
- ``fail``: rank 1 raises in a callback at the end of the first epoch;
- ``die``: rank 1 is killed (SIGKILL) at the end of the first epoch;
- ``keys``: each rank passes another key;
- ``data``: rank 1 passes other data;
- ``small``: a batch size smaller than the number of ranks.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np

import jitnn as jn

EPOCHS, BATCH = 3, 24


def problem(batch_norm: bool = False) -> tuple[jn.Layer, np.ndarray, np.ndarray]:
    """The model, data and labels every rank (and the single-process run) starts from."""
    k1, k2 = jn.random.split(jn.random.key(7))
    middle = [jn.BatchNorm.init(None, 16, dtype=np.float64)] if batch_norm else []
    model = jn.pipe(jn.Dense.init(k1, 5, 16, dtype=np.float64), *middle, jn.Tanh(), jn.Dense.init(k2, 16, 3, dtype=np.float64))
    rng = np.random.default_rng(8)
    X = rng.normal(size=(100, 5))
    return model, X, (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)


def main(mode: str, out: Path) -> None:
    model, X, T = problem(batch_norm=mode == "batchnorm")
    key = jn.random.key(0)
    batch_size = BATCH
    callbacks: list = []
    if mode == "keys":
        key = jn.random.key(int(jn.distributed.comm().Get_rank()))
    elif mode == "data" and jn.distributed.comm().Get_rank() == 1:
        X = X + 1e-12
    elif mode == "small":
        batch_size = 1
    elif mode == "fail":

        class Fail(jn.callbacks.Callback):
            def on_epoch_end(self, progress: jn.callbacks.Progress) -> None:
                if jn.distributed.rank() == 1:
                    raise RuntimeError("a failure on rank 1, on purpose")

        callbacks.append(Fail())
    elif mode == "die":

        class Die(jn.callbacks.Callback):
            def on_epoch_end(self, progress: jn.callbacks.Progress) -> None:
                if jn.distributed.rank() == 1:
                    os.kill(os.getpid(), signal.SIGKILL)

        callbacks.append(Die())
    elif mode == "train":
        callbacks.append(jn.callbacks.CSVLogger(out / "log.csv"))
    result = jn.fit(model, jn.SoftmaxCrossEntropy(), jn.optim.adam(0.01), X[:80], T[:80], key=key, epochs=EPOCHS, batch_size=batch_size,
                    validation_data=(X[80:], T[80:]), metrics=[jn.accuracy], callbacks=callbacks, compiled=mode != "generic",
                    distributed=True)
    r = jn.distributed.rank()
    jn.save(out / f"rank{r}.npz", {"model": result.model, "state": result.state})
    (out / f"metrics{r}.txt").write_text(repr({name: list(values) for name, values in result.metrics.items()}))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
