"""Optimizers: pairs of pure functions, ``state = opt.init(params)`` and
``params, state = opt.update(params, grads, state)``.

Each named optimizer is one fused kernel per parameter array; gradient transforms
(clipping, weight decay, scaling) go in front with :func:`chain`; any learning rate may be
a number or a schedule from :mod:`jitnn.optim.schedules`.
"""

from jitnn.optim import schedules
from jitnn.optim._base import Optimizer
from jitnn.optim.adagrad import Adagrad, AdagradState, adagrad
from jitnn.optim.adam import Adam, AdamState, AdamW, adam, adamw
from jitnn.optim.lion import Lion, LionState, lion
from jitnn.optim.rmsprop import RMSprop, RMSpropState, rmsprop
from jitnn.optim.schedules import constant, exponential_decay, one_cycle, step_decay, warmup_cosine_decay
from jitnn.optim.sgd import SGD, Momentum, MomentumState, SGDState, momentum, sgd
from jitnn.optim.transforms import (
    ChainState,
    CountState,
    EmptyState,
    GradientTransform,
    OptimizerChain,
    add_decayed_weights,
    chain,
    check_finite,
    clip_by_global_norm,
    clip_by_value,
    scale,
    scale_by_schedule,
)

__all__ = [
    "Optimizer", "GradientTransform",
    "sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad", "lion",
    "SGD", "Momentum", "Adam", "AdamW", "RMSprop", "Adagrad", "Lion",
    "SGDState", "MomentumState", "AdamState", "RMSpropState", "AdagradState", "LionState",
    "chain", "clip_by_global_norm", "clip_by_value", "add_decayed_weights", "scale", "scale_by_schedule", "check_finite",
    "OptimizerChain", "ChainState", "CountState", "EmptyState",
    "schedules", "constant", "step_decay", "exponential_decay", "warmup_cosine_decay", "one_cycle",
]
