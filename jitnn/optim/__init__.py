"""Optimizers: pairs of pure functions, ``state = opt.init(params)`` and
``params, state = opt.update(params, grads, state)``; each update is a kernel per array."""

from jitnn.optim.sgd import SGD, SGDState, sgd

__all__ = ["SGD", "SGDState", "sgd"]
