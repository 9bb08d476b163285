"""A user-defined layer: a record, three kernels and a shape rule.

PReLU (He et al., 2015) is a ReLU whose negative slope is learned, one slope per feature:
``Y = X if X > 0 else alpha * X``. Once declared, it composes with the built-in layers,
passes jitnn's gradient check and trains with jitnn's optimizers, with no other code.

    python examples/custom_layer.py
"""

from __future__ import annotations

import numba
import numpy as np

import jitnn as jn


# The three kernels: forward(X, *params), grad_input(X, dY, *params), grad_params(X, dY, *params).
@numba.njit(cache=True)
def prelu_forward(X, alpha):
    """Y = X if X > 0 else alpha * X;  X (n, k), alpha (k,) -> Y (n, k)."""
    Y = np.empty(X.shape, X.dtype)
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            Y[i, j] = X[i, j] if X[i, j] > 0 else alpha[j] * X[i, j]
    return Y


@numba.njit(cache=True)
def prelu_grad_input(X, dY, alpha):
    """dX = dY if X > 0 else alpha * dY."""
    dX = np.empty(X.shape, X.dtype)
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            dX[i, j] = dY[i, j] if X[i, j] > 0 else alpha[j] * dY[i, j]
    return dX


@numba.njit(cache=True)
def prelu_grad_params(X, dY, alpha):
    """d alpha[j] = sum over the batch of dY * X where X <= 0;  -> (d alpha (k,),)."""
    grad = np.zeros(alpha.shape, alpha.dtype)
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            if X[i, j] <= 0:
                grad[j] += dY[i, j] * X[i, j]
    return (grad,)


@jn.layer
class PReLU:
    """ReLU with a learned negative slope per feature; input and output ``(n, features)``."""

    alpha: jn.Array = jn.param()
    kernels = jn.Kernels(prelu_forward, prelu_grad_input, prelu_grad_params)

    @classmethod
    def init(cls, features: int, slope: float = 0.25, dtype=np.float32) -> PReLU:
        return cls(alpha=np.full(features, slope, dtype=dtype))

    # The shape rule: checked when composing and before every kernel call.
    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.alpha.shape

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        jn.require_shape(input_shape, self.input_shape)
        return tuple(input_shape)


def main() -> None:
    key = jn.random.key(0)
    data_key, k1, k2, train_key = jn.random.split(key, 4)

    # Gradients checked against float64 central differences, like every built-in layer.
    X = jn.random.normal(data_key, (5, 3), dtype=np.float64)
    jn.testing.check_grads(PReLU.init(3, dtype=np.float64), X)
    print("PReLU passes jitnn.testing.check_grads")

    # Shape mismatches are reported when composing.
    try:
        jn.pipe(jn.Dense.init(k1, 2, 8), PReLU.init(4))
    except ValueError as error:
        print(f"composition refused: {error}")

    # A two-class toy problem: is the point inside the unit circle?
    points = jn.random.uniform(data_key, (512, 2), -1.5, 1.5)
    labels = (np.sum(points**2, axis=1) < 1.0).astype(np.int64)
    model = jn.pipe(jn.Dense.init(k1, 2, 16, weight_init=jn.init.he_normal), PReLU.init(16), jn.Dense.init(k2, 16, 2))
    result = jn.fit(model, jn.SoftmaxCrossEntropy(), jn.optim.sgd(0.3), points, labels, key=train_key, epochs=40, batch_size=32)
    predicted = np.argmax(result.model.forward(points), axis=1)
    print(f"loss {result.history[0]:.3f} -> {result.history[-1]:.3f}; training accuracy {np.mean(predicted == labels):.3f}")
    print(f"learned slopes: {np.round(result.model.layers[1].alpha, 3)}")


if __name__ == "__main__":
    main()
