"""Optimizers: pairs of pure functions, ``state = opt.init(params)`` and
``params, state = opt.update(params, grads, state)``.

Each named optimizer is one fused kernel per parameter array; gradient transforms
(clipping, weight decay, scaling) go in front with :func:`chain`; any learning rate may be
a number or a schedule from :mod:`jitnn.optim.schedules`. :data:`OPTIMIZERS` maps each named
optimizer's name to its factory.
"""

import sys
from collections.abc import Callable, Mapping
from types import MappingProxyType

from jitnn.optim import schedules
from jitnn.optim._base import Optimizer
from jitnn.optim.accumulate import MultiSteps, MultiStepsState, multi_steps
from jitnn.optim.adagrad import Adagrad, AdagradState, adagrad
from jitnn.optim.adam import Adam, AdamState, AdamW, adam, adamw
from jitnn.optim.lion import Lion, LionState, lion
from jitnn.optim.masked import Masked, masked
from jitnn.optim.rmsprop import RMSprop, RMSpropState, rmsprop
from jitnn.optim.schedules import (
    constant,
    exponential_decay,
    one_cycle,
    step_decay,
    warmup_cosine_decay,
)
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
    "OPTIMIZERS",
    "SGD",
    "Adagrad",
    "AdagradState",
    "Adam",
    "AdamState",
    "AdamW",
    "ChainState",
    "CountState",
    "EmptyState",
    "GradientTransform",
    "Lion",
    "LionState",
    "Masked",
    "Momentum",
    "MomentumState",
    "MultiSteps",
    "MultiStepsState",
    "Optimizer",
    "OptimizerChain",
    "RMSprop",
    "RMSpropState",
    "SGDState",
    "adagrad",
    "adam",
    "adamw",
    "add_decayed_weights",
    "chain",
    "check_finite",
    "clip_by_global_norm",
    "clip_by_value",
    "constant",
    "exponential_decay",
    "lion",
    "masked",
    "momentum",
    "multi_steps",
    "one_cycle",
    "rmsprop",
    "scale",
    "scale_by_schedule",
    "schedules",
    "sgd",
    "step_decay",
    "warmup_cosine_decay",
]


def _named_optimizers() -> Mapping[str, Callable[..., Optimizer]]:
    """Every named optimizer's factory by name, found from the optimizers themselves: each
    concrete :class:`Optimizer` subclass of jitnn (one with a kernel) is named by its class in
    lower case (``Adam`` -> ``"adam"``, as its messages say ``adam.update``), and its factory is
    the function of that name in the class's module."""
    found: dict[str, Callable[..., Optimizer]] = {}
    pending = list(Optimizer.__subclasses__())
    while pending:
        cls = pending.pop(0)
        pending += cls.__subclasses__()
        if not cls.__module__.startswith("jitnn.") or cls.wrapper or getattr(cls, "kernel", None) is None:
            continue
        name = cls.__name__.lower()
        factory = getattr(sys.modules[cls.__module__], name, None)
        if not callable(factory):
            raise TypeError(f"jitnn.optim: the optimizer {cls.__name__} needs a factory function {name}() in {cls.__module__}")
        found[name] = factory
    return MappingProxyType(dict(sorted(found.items())))


#: The named optimizers: name -> factory (``OPTIMIZERS["adam"](1e-3)`` is ``adam(1e-3)``), read-only.
#: A new optimizer is in it once its module is imported here: an :class:`Optimizer` subclass
#: with a kernel, and a factory named after it.
OPTIMIZERS: Mapping[str, Callable[..., Optimizer]] = _named_optimizers()
