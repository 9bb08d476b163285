"""Converters that check the scalar arguments of layers, losses, optimizers and functions.

Every converter is called as ``convert(value, who, name, **options)`` and returns the value
converted to a plain Python ``int``, ``float`` or ``bool``, or raises an error that names
``who`` (the layer, optimizer or function) and ``name`` (the field or argument)::

    >>> positive_int(0, "Dense.init", "n_out")
    Traceback (most recent call last):
    ...
    ValueError: Dense.init: n_out must be a positive integer, got 0

The message always reads ``f"{who}: {name} must {requirement}, got {value!r}"``. A bool is
never taken for a number (``True`` is refused where an integer or a real number is wanted);
NumPy's integer and floating-point scalars are numbers like Python's.

Which error
    A value of the right kind outside the bounds raises ``ValueError``. A value of the wrong
    kind (a string, ``None``, a bool where a number is wanted) raises ``wrong_type``. When
    not given, that is ``TypeError`` if the requirement is the kind alone (:func:`flag`,
    :func:`integer` and :func:`int_tuple` without bounds, :func:`real` without bounds and
    with ``finite=False``) and ``ValueError`` otherwise, so that one message and one
    exception cover every value a bounded field refuses.

In an ``attrs`` record, :func:`converter` turns a check into the one-argument converter a
field takes, :func:`optional` lets a field be ``None`` too::

    eps: float = attrs.field(default=1e-5, converter=validate.converter(validate.positive_real, "LayerNorm", "eps"))
    threads: int | None = attrs.field(default=None, converter=validate.converter(validate.optional, "Step", "threads", check=validate.positive_int))

The built-in layers, losses, optimizers, schedules and functions check their scalar
arguments with these, and a user's layer or loss can check its own fields the same way.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import numpy as np

__all__ = [
    "converter", "flag", "fraction", "int_tuple", "integer", "is_integer", "is_real", "non_negative_int",
    "non_negative_real", "optional", "positive_int", "positive_real", "real",
]

T = TypeVar("T")
Error = type[Exception]


# --------------------------------------------------------------------------- what counts as a number
def is_integer(value: Any) -> bool:
    """Whether ``value`` is an integer: Python's or NumPy's, never a bool."""
    return type(value) is int or (isinstance(value, numbers.Integral) and not isinstance(value, bool))


def is_real(value: Any) -> bool:
    """Whether ``value`` is a real number (an integer included): Python's or NumPy's, never a bool."""
    return type(value) is float or (isinstance(value, numbers.Real) and not isinstance(value, bool))


def _refuse(value: Any, who: str, name: str, requirement: str, error: Error) -> NoReturn:
    raise error(f"{who}: {name} must {requirement}, got {value!r}")


def _kind_error(wrong_type: Error | None, bounded: bool) -> Error:
    return wrong_type if wrong_type is not None else ValueError if bounded else TypeError


# --------------------------------------------------------------------------- integers
def integer(
    value: Any, who: str, name: str, *, low: int | None = None, high: int | None = None,
    wrong_type: Error | None = None, must: str | None = None,
) -> int:
    """An integer in ``[low, high]`` (either bound may be ``None``), as a Python ``int``.

    ``must`` replaces the requirement in the message (by default ``'be an integer'``,
    ``'be a positive integer'``, ``'be an integer in [2, 9]'``, ...).
    """
    if is_integer(value):
        if (low is None or value >= low) and (high is None or value <= high):
            return int(value)
        error: Error = ValueError
    else:
        error = _kind_error(wrong_type, low is not None or high is not None)
    _refuse(value, who, name, must or _integer_requirement(low, high), error)


def positive_int(value: Any, who: str, name: str, *, wrong_type: Error | None = None, must: str | None = None) -> int:
    """An integer >= 1, as a Python ``int``."""
    return integer(value, who, name, low=1, wrong_type=wrong_type, must=must)


def non_negative_int(value: Any, who: str, name: str, *, wrong_type: Error | None = None, must: str | None = None) -> int:
    """An integer >= 0, as a Python ``int``."""
    return integer(value, who, name, low=0, wrong_type=wrong_type, must=must)


def int_tuple(value: Any, who: str, name: str, *, low: int | None = None, wrong_type: Error | None = None) -> tuple[int, ...]:
    """Integers, each at least ``low`` when given, as a tuple of Python ints: an integer
    ``v`` gives ``(v,)``, any other iterable its items (a shape, a list of widths)."""
    if is_integer(value):
        items: tuple[Any, ...] = (value,)
    else:
        try:
            items = tuple(value)
        except TypeError:
            items = (None,)
    if all(is_integer(v) and (low is None or v >= low) for v in items):
        return tuple(int(v) for v in items)
    bounded = low is not None
    error = ValueError if all(is_integer(v) for v in items) else _kind_error(wrong_type, bounded)
    words = {None: "integers", 0: "non-negative integers", 1: "positive integers"}.get(low, f"integers >= {low}")
    _refuse(value, who, name, f"be {words}", error)


def _integer_requirement(low: int | None, high: int | None) -> str:
    if high is None:
        return {None: "be an integer", 0: "be a non-negative integer", 1: "be a positive integer"}.get(low, f"be an integer >= {low}")
    return f"be an integer <= {high}" if low is None else f"be an integer in [{low}, {high}]"


# --------------------------------------------------------------------------- real numbers
def real(
    value: Any, who: str, name: str, *, low: float | None = None, high: float | None = None,
    low_open: bool = False, high_open: bool = False, finite: bool = True,
    wrong_type: Error | None = None, must: str | None = None,
) -> float:
    """A real number between ``low`` and ``high`` (either may be ``None``), as a Python ``float``.

    A bound is included unless ``low_open``/``high_open``. With ``finite`` (the default)
    NaN and the infinities are refused; with ``finite=False`` the infinities are accepted
    where the bounds allow them, and NaN only when there is no bound at all (then only the
    kind is checked). ``must`` replaces the requirement in the message (by default
    ``'be a finite real number'``, ``'be a finite positive number'``, ``'lie in [0, 1)'``, ...).
    """
    if is_real(value):
        try:
            if (
                (not finite or math.isfinite(value))
                and (low is None or (value > low if low_open else value >= low))
                and (high is None or (value < high if high_open else value <= high))
            ):
                return float(value)
        except OverflowError:  # an int too large for a float
            pass
        error: Error = ValueError
    else:
        error = _kind_error(wrong_type, finite or low is not None or high is not None)
    _refuse(value, who, name, must or _real_requirement(low, high, low_open, high_open, finite), error)


def positive_real(value: Any, who: str, name: str, *, wrong_type: Error | None = None, must: str | None = None) -> float:
    """A finite real number > 0, as a Python ``float``."""
    return real(value, who, name, low=0, low_open=True, wrong_type=wrong_type, must=must)


def non_negative_real(value: Any, who: str, name: str, *, wrong_type: Error | None = None, must: str | None = None) -> float:
    """A finite real number >= 0, as a Python ``float``."""
    return real(value, who, name, low=0, wrong_type=wrong_type, must=must)


def fraction(
    value: Any, who: str, name: str, *, include_one: bool = False, wrong_type: Error | None = None, must: str | None = None,
) -> float:
    """A real number in ``[0, 1)`` (a rate, a decay), or in ``[0, 1]`` with ``include_one``
    (a probability), as a Python ``float``."""
    return real(value, who, name, low=0, high=1, high_open=not include_one, wrong_type=wrong_type, must=must)


def _real_requirement(low: float | None, high: float | None, low_open: bool, high_open: bool, finite: bool) -> str:
    if low is not None and high is not None:
        return f"lie in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    finite_ = "finite " if finite else ""
    if low is None and high is None:
        return "be a finite real number" if finite else "be a number"
    if low == 0 and high is None:
        return f"be a {finite_}{'positive' if low_open else 'non-negative'} number"
    bound = f"{'>' if low_open else '>='} {low}" if high is None else f"{'<' if high_open else '<='} {high}"
    return f"be a {finite_}number {bound}"


# --------------------------------------------------------------------------- flags
def flag(value: Any, who: str, name: str, *, wrong_type: Error = TypeError) -> bool:
    """``True`` or ``False`` (NumPy's booleans included), as a Python ``bool``; nothing else,
    not even 0 and 1."""
    if value is True or value is False or isinstance(value, np.bool_):
        return bool(value)
    _refuse(value, who, name, "be True or False", wrong_type)


# --------------------------------------------------------------------------- composition
def optional(value: Any, who: str, name: str, *, check: Callable[..., T], none_means: str | None = None, **options: Any) -> T | None:
    """``None``, or what ``check(value, who, name, **options)`` returns.

    A refused value's message says that ``None`` is accepted too, and with ``none_means``
    what it stands for: ``optional(0, "compile_step", "threads", check=positive_int,
    none_means="chosen by batch size")`` raises ``compile_step: threads must be None
    (chosen by batch size) or a positive integer, got 0``.
    """
    if value is None:
        return None
    try:
        return check(value, who, name, **options)
    except (TypeError, ValueError) as error:
        # every converter here words its message "{who}: {name} must {requirement}, got {value!r}"
        head, tail, message = f"{who}: {name} must ", f", got {value!r}", str(error)
        if not (message.startswith(head) and message.endswith(tail)):  # a check worded otherwise: kept as it is
            raise
        requirement = message[len(head) : len(message) - len(tail)]
        alternative = "None" if none_means is None else f"None ({none_means})"
        requirement = f"be {alternative} or {requirement.removeprefix('be ')}"
        raise type(error)(f"{head}{requirement}{tail}") from None


def converter(check: Callable[..., T], who: str, name: str, /, **options: Any) -> Callable[[Any], T]:
    """``check`` for one field, as the one-argument converter ``attrs.field`` takes:
    ``attrs.field(converter=converter(fraction, "adam", "b1"))``."""

    def convert(value: Any) -> T:
        return check(value, who, name, **options)

    return convert
