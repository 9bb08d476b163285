"""Train a small CNN on scikit-learn's digits, export it to ONNX and run it in onnxruntime,
and load its weights into the same network in PyTorch: three accuracies on the test digits.

    python examples/export.py [--out export_run] [--epochs 15] [--seed 0]

Needs onnx, onnxruntime and torch (``pip install onnx onnxruntime torch``). Writes
``digits_cnn.onnx`` into ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

import jitnn as jn


def network(key: jn.random.Key) -> jn.Layer:
    """Conv 3x3 (8 channels) - BatchNorm - ReLU - MaxPool 2 - Flatten - Dropout - Dense 10."""
    k1, k2 = jn.random.split(key)
    return jn.pipe(
        jn.Conv2D.init(k1, 1, 8, 3, padding=1), jn.BatchNorm.init(None, 8), jn.ReLU(), jn.MaxPool2D(2),
        jn.Flatten(), jn.Dropout(0.25), jn.Dense.init(k2, 8 * 4 * 4, 10),
    )


def torch_network(torch: Any) -> Any:
    """The same network in PyTorch: jitnn's chain positions are the module indices."""
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Dropout(0.25), nn.Linear(8 * 4 * 4, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("export_run"))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import onnxruntime
    import torch

    X, T = jn.datasets.load_digits(images=True)
    order = jn.random.permutation(jn.random.key(args.seed), len(X))
    train, test = order[: int(0.8 * len(X))], order[int(0.8 * len(X)) :]
    init_key, train_key = jn.random.split(jn.random.key(args.seed))
    model = jn.fit(network(init_key), jn.SoftmaxCrossEntropy(), jn.optim.adam(3e-3), X[train], T[train], key=train_key,
                   epochs=args.epochs, batch_size=32).model
    X_test, T_test = X[test], T[test]
    ours = model.forward(X_test)

    path = args.out / "digits_cnn.onnx"
    jn.onnx.export(model, path, X.shape[1:])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    exported = session.run(None, {"input": X_test})[0]

    module = torch_network(torch)
    module.load_state_dict({name: torch.from_numpy(array) for name, array in jn.interop.state_dict(model).items()}, strict=True)
    with torch.inference_mode():
        theirs = module.eval()(torch.from_numpy(X_test)).numpy()

    print(f"jitnn       test accuracy {jn.accuracy(ours, T_test):.4f}")
    print(f"onnxruntime test accuracy {jn.accuracy(exported, T_test):.4f} (largest difference from jitnn's logits "
          f"{np.abs(exported - ours).max():.1e})")
    print(f"PyTorch     test accuracy {jn.accuracy(theirs, T_test):.4f} (largest difference from jitnn's logits "
          f"{np.abs(theirs - ours).max():.1e})")


if __name__ == "__main__":
    main()
