"""The shared converters of ``jitnn.validate``, and the checks that came with them.

Each converter returns a plain Python value, refuses bools where numbers are wanted,
accepts NumPy's scalars like Python's, and names the caller and the field in its message.
"""

from __future__ import annotations

import fractions
import math
import re
from typing import Any

import attrs
import numpy as np
import pytest

import jitnn as jn
from jitnn import validate

NAN, INF = float("nan"), float("inf")


def refused(exc: type[Exception], message: str) -> Any:
    """``pytest.raises`` requiring the whole message, literally."""
    return pytest.raises(exc, match="^" + re.escape(message) + "$")


# --------------------------------------------------------------------------- what counts as a number
@pytest.mark.parametrize("value", [0, -3, 2**70, np.int8(3), np.int64(-1), np.uint64(2**63)])
def test_integers_are_integers_and_reals(value: Any) -> None:
    assert validate.is_integer(value) and validate.is_real(value)


@pytest.mark.parametrize("value", [True, False, np.True_, np.bool_(False)])
def test_a_bool_is_not_a_number(value: Any) -> None:
    assert not validate.is_integer(value) and not validate.is_real(value)


@pytest.mark.parametrize("value", [1.5, NAN, INF, np.float32(2.0), np.float64(-0.5), np.float16(1), fractions.Fraction(1, 3)])
def test_reals_that_are_not_integers(value: Any) -> None:
    assert validate.is_real(value) and not validate.is_integer(value)


@pytest.mark.parametrize("value", ["1", None, 1j, np.array(3), [1], object()])
def test_things_that_are_not_numbers(value: Any) -> None:
    assert not validate.is_integer(value) and not validate.is_real(value)


# --------------------------------------------------------------------------- integers
@pytest.mark.parametrize("value", [3, np.int32(3), np.int64(3), np.uint8(3)])
def test_integer_returns_a_python_int(value: Any) -> None:
    for converted in (validate.integer(value, "f", "n"), validate.positive_int(value, "f", "n"), validate.non_negative_int(value, "f", "n")):
        assert type(converted) is int and converted == 3


def test_integer_without_bounds_refuses_only_non_integers_with_a_type_error() -> None:
    assert validate.integer(-(10**30), "f", "axis") == -(10**30)
    for bad in (1.0, 1.5, "1", None, True, np.True_, np.float64(2.0)):
        with refused(TypeError, f"f: axis must be an integer, got {bad!r}"):
            validate.integer(bad, "f", "axis")


@pytest.mark.parametrize("bad", [0, -1, np.int64(0), 2.5, 1.0, "1", None, True, np.True_])
def test_positive_int_refuses_with_one_value_error(bad: Any) -> None:
    with refused(ValueError, f"Dense.init: n_in must be a positive integer, got {bad!r}"):
        validate.positive_int(bad, "Dense.init", "n_in")


def test_positive_int_bound() -> None:
    assert validate.positive_int(1, "f", "n") == 1


@pytest.mark.parametrize("bad", [-1, np.int8(-1), 0.0, False])
def test_non_negative_int(bad: Any) -> None:
    assert validate.non_negative_int(0, "f", "n") == 0
    with refused(ValueError, f"f: n must be a non-negative integer, got {bad!r}"):
        validate.non_negative_int(bad, "f", "n")


def test_integer_bounds_are_inclusive_and_worded() -> None:
    assert validate.integer(2, "f", "n", low=2) == 2 and validate.integer(9, "f", "n", low=2, high=9) == 9
    assert validate.integer(-5, "f", "n", high=-5) == -5
    with refused(ValueError, "f: n must be an integer >= 2, got 1"):
        validate.integer(1, "f", "n", low=2)
    with refused(ValueError, "f: n must be an integer in [2, 9], got 10"):
        validate.integer(10, "f", "n", low=2, high=9)
    with refused(ValueError, "f: n must be an integer <= -5, got -4"):
        validate.integer(-4, "f", "n", high=-5)
    with refused(ValueError, "f: n must be an integer in [2, 9], got 'x'"):  # bounded: one exception for every refusal
        validate.integer("x", "f", "n", low=2, high=9)


def test_wrong_type_and_must_override_the_exception_and_the_words() -> None:
    with refused(TypeError, "key: seed must be a non-negative integer, got 1.5"):
        validate.non_negative_int(1.5, "key", "seed", wrong_type=TypeError)
    with refused(ValueError, "key: seed must be a non-negative integer, got -1"):  # out of range stays a ValueError
        validate.non_negative_int(-1, "key", "seed", wrong_type=TypeError)
    with refused(ValueError, "f: axis must be an integer, got 'a'"):
        validate.integer("a", "f", "axis", wrong_type=ValueError)
    with refused(ValueError, "f: n must be a whole number of steps, got 0"):
        validate.positive_int(0, "f", "n", must="be a whole number of steps")


def test_int_tuple() -> None:
    assert validate.int_tuple(3, "f", "shape") == (3,)
    assert validate.int_tuple([2, np.int64(3)], "f", "shape", low=0) == (2, 3)
    assert validate.int_tuple(np.array([4, 0]), "f", "shape", low=0) == (4, 0)
    assert validate.int_tuple((), "f", "shape", low=1) == ()
    assert all(type(v) is int for v in validate.int_tuple((np.int16(1), 2), "f", "shape"))
    for bad in ((2, -1), [0]):
        with refused(ValueError, f"f: sizes must be positive integers, got {bad!r}"):
            validate.int_tuple(bad, "f", "sizes", low=1)
    for bad in ((2, True), (1.5,), "ab", 2.5, None):
        with refused(ValueError, f"f: shape must be non-negative integers, got {bad!r}"):
            validate.int_tuple(bad, "f", "shape", low=0)
        with refused(TypeError, f"f: shape must be integers, got {bad!r}"):
            validate.int_tuple(bad, "f", "shape")
    with refused(ValueError, "f: shape must be integers >= 2, got (1,)"):
        validate.int_tuple((1,), "f", "shape", low=2)


# --------------------------------------------------------------------------- real numbers
@pytest.mark.parametrize("value", [1, 1.0, np.float32(1.0), np.float64(1.0), np.int64(1), np.float16(1.0), fractions.Fraction(1)])
def test_real_returns_a_python_float(value: Any) -> None:
    for converted in (validate.real(value, "f", "x"), validate.positive_real(value, "f", "x"), validate.non_negative_real(value, "f", "x")):
        assert type(converted) is float and converted == 1.0
    assert type(validate.fraction(value, "f", "x", include_one=True)) is float


@pytest.mark.parametrize("bad", [NAN, INF, -INF, np.float32("nan"), "1", None, True, np.True_, 1j, 10**400])
def test_real_refuses_non_finite_values_and_non_numbers(bad: Any) -> None:
    with refused(ValueError, f"LeakyReLU: negative_slope must be a finite real number, got {bad!r}"):
        validate.real(bad, "LeakyReLU", "negative_slope")


def test_real_without_finite_checks_the_kind_alone() -> None:
    assert validate.real(INF, "f", "x", finite=False) == INF
    assert math.isnan(validate.real(NAN, "f", "x", finite=False))
    for bad in ("a", None, True):
        with refused(TypeError, f"f: rtol must be a number, got {bad!r}"):
            validate.real(bad, "f", "rtol", finite=False)


def test_real_without_finite_still_refuses_nan_against_a_bound() -> None:
    assert validate.real(INF, "f", "x", low=0, finite=False) == INF
    with refused(ValueError, "f: x must be a non-negative number, got nan"):
        validate.real(NAN, "f", "x", low=0, finite=False)
    with refused(ValueError, "f: x must be a positive number, got -inf"):
        validate.real(-INF, "f", "x", low=0, low_open=True, finite=False)


@pytest.mark.parametrize("bad", [0, 0.0, -1e-300, -1.0, NAN, INF, "a", None, False])
def test_positive_real(bad: Any) -> None:
    assert validate.positive_real(1e-300, "f", "eps") == 1e-300
    with refused(ValueError, f"f: eps must be a finite positive number, got {bad!r}"):
        validate.positive_real(bad, "f", "eps")


@pytest.mark.parametrize("bad", [-1e-300, -1, NAN, INF, -INF, "a", None, True])
def test_non_negative_real(bad: Any) -> None:
    assert validate.non_negative_real(0, "f", "lr") == 0.0 and validate.non_negative_real(-0.0, "f", "lr") == 0.0
    with refused(ValueError, f"adam: lr must be a finite non-negative number, got {bad!r}"):
        validate.non_negative_real(bad, "adam", "lr")


def test_fraction_is_half_open_unless_one_is_included() -> None:
    assert validate.fraction(0, "f", "rate") == 0.0 and validate.fraction(0.999, "f", "rate") == 0.999
    for bad in (1, 1.0, -0.1, 1.5, NAN, INF, "0.5", None, True):
        with refused(ValueError, f"Dropout: rate must lie in [0, 1), got {bad!r}"):
            validate.fraction(bad, "Dropout", "rate")
    assert validate.fraction(1, "f", "p", include_one=True) == 1.0
    for bad in (1.0000001, -1e-9, NAN, True):
        with refused(ValueError, f"bernoulli: p must lie in [0, 1], got {bad!r}"):
            validate.fraction(bad, "bernoulli", "p", include_one=True)


def test_real_bounds_open_and_closed() -> None:
    between = {"low": 0, "high": 1, "low_open": True, "high_open": True}
    assert validate.real(0.5, "f", "x", **between) == 0.5
    for bad in (0, 1, 0.0, 1.0):
        with refused(ValueError, f"f: x must lie in (0, 1), got {bad!r}"):
            validate.real(bad, "f", "x", **between)
    assert validate.real(1, "f", "x", low=0, high=1, low_open=True) == 1.0
    with refused(ValueError, "f: x must lie in (0, 1], got 0"):
        validate.real(0, "f", "x", low=0, high=1, low_open=True)
    assert validate.real(-2, "f", "x", low=-2) == -2.0
    with refused(ValueError, "f: x must be a finite number >= -2, got -3"):
        validate.real(-3, "f", "x", low=-2)
    with refused(ValueError, "f: x must be a finite number > -2, got -2"):
        validate.real(-2, "f", "x", low=-2, low_open=True)
    with refused(ValueError, "f: x must be a finite number <= 5, got 6"):
        validate.real(6, "f", "x", high=5)
    with refused(ValueError, "f: x must be a finite number < 5, got 5"):
        validate.real(5, "f", "x", high=5, high_open=True)
    with refused(ValueError, "f: x must lie strictly between 0 and 1, got 1.0"):
        validate.real(1.0, "f", "x", must="lie strictly between 0 and 1", **between)


# --------------------------------------------------------------------------- flags
@pytest.mark.parametrize("value, expected", [(True, True), (False, False), (np.True_, True), (np.bool_(False), False)])
def test_flag_accepts_python_and_numpy_booleans(value: Any, expected: bool) -> None:
    converted = validate.flag(value, "fit", "verbose")
    assert type(converted) is bool and converted is expected


@pytest.mark.parametrize("bad", [0, 1, 1.0, "yes", "", None, np.array(True), np.int64(1)])
def test_flag_refuses_everything_else(bad: Any) -> None:
    with refused(TypeError, f"fit: verbose must be True or False, got {bad!r}"):
        validate.flag(bad, "fit", "verbose")
    with refused(ValueError, f"E: early_stopping must be True or False, got {bad!r}"):
        validate.flag(bad, "E", "early_stopping", wrong_type=ValueError)


# --------------------------------------------------------------------------- optional and converter
def test_optional() -> None:
    assert validate.optional(None, "f", "threads", check=validate.positive_int) is None
    assert validate.optional(np.int64(2), "f", "threads", check=validate.positive_int) == 2
    with refused(ValueError, "compile_step: threads must be None (chosen by batch size) or a positive integer, got 0"):
        validate.optional(0, "compile_step", "threads", check=validate.positive_int, none_means="chosen by batch size")
    with refused(ValueError, "f: x must be None or lie in [0, 1], got 2"):
        validate.optional(2, "f", "x", check=validate.fraction, include_one=True)
    with refused(TypeError, "f: axis must be None or an integer, got 'a'"):
        validate.optional("a", "f", "axis", check=validate.integer)


def test_optional_leaves_other_messages_alone() -> None:
    def even(value: Any, who: str, name: str) -> int:
        if value % 2:
            raise ValueError("odd")
        return value

    assert validate.optional(None, "f", "n", check=even) is None
    with refused(ValueError, "odd"):
        validate.optional(3, "f", "n", check=even)


@attrs.frozen
class _Record:
    rate: float = attrs.field(default=0.5, converter=validate.converter(validate.fraction, "Record", "rate"))
    size: int = attrs.field(default=1, converter=validate.converter(validate.integer, "Record", "size", low=1, high=4))
    threads: int | None = attrs.field(default=None, converter=validate.converter(validate.optional, "Record", "threads", check=validate.positive_int))


def test_converter_in_an_attrs_record() -> None:
    record = _Record(np.float32(0.25), np.int64(4), 2)
    assert record == _Record(0.25, 4, 2) and type(record.rate) is float and type(record.size) is int
    assert attrs.evolve(record, size=3).rate == 0.25  # converting a converted value changes nothing
    assert _Record().threads is None
    with refused(ValueError, "Record: rate must lie in [0, 1), got 1.0"):
        _Record(rate=1.0)
    with refused(ValueError, "Record: size must be an integer in [1, 4], got 5"):
        _Record(size=5)
    with refused(ValueError, "Record: threads must be None or a positive integer, got 0"):
        _Record(threads=0)


# --------------------------------------------------------------------------- every message names the caller and the field
CONVERTERS = [
    (validate.integer, {}, "x"), (validate.positive_int, {}, 0), (validate.non_negative_int, {}, -1),
    (validate.int_tuple, {"low": 0}, (-1,)), (validate.real, {}, NAN), (validate.positive_real, {}, 0.0),
    (validate.non_negative_real, {}, -1.0), (validate.fraction, {}, 1.0), (validate.flag, {}, 1),
]


@pytest.mark.parametrize("check, options, bad", CONVERTERS, ids=[c.__name__ for c, _, _ in CONVERTERS])
def test_every_message_names_who_and_the_field(check: Any, options: dict, bad: Any) -> None:
    with pytest.raises((TypeError, ValueError)) as info:
        check(bad, "SomeLayer.init", "some_field", **options)
    message = str(info.value)
    assert message.startswith("SomeLayer.init: some_field must ") and message.endswith(f", got {bad!r}")


# --------------------------------------------------------------------------- checks the shared converters added
def test_exponential_decay_staircase_must_be_a_flag() -> None:
    """``staircase`` was converted with ``bool``: ``staircase='no'`` meant True."""
    assert jn.optim.exponential_decay(0.1, 0.5, 2, staircase=np.True_).staircase is True
    for bad in ("no", 1, None):
        with pytest.raises(TypeError, match="schedule: staircase must be True or False"):
            jn.optim.exponential_decay(0.1, 0.5, 2, staircase=bad)


def test_batches_shuffle_and_drop_last_must_be_flags() -> None:
    X, T = np.ones((4, 2)), np.arange(4)
    for name in ("shuffle", "drop_last"):
        with pytest.raises(TypeError, match=f"batches: {name} must be True or False, got 'no'"):
            jn.batches(jn.random.key(0), X, T, 2, **{name: "no"})
    assert len(list(jn.batches(None, X, T, 3, shuffle=np.False_, drop_last=np.True_))) == 1


def _small_fit(**options: Any) -> Any:
    model = jn.pipe(jn.Dense.init(jn.random.key(0), 2, 1))
    X, T = np.ones((4, 2), np.float32), np.zeros((4, 1), np.float32)
    return jn.fit(model, jn.MeanSquaredError(), jn.optim.sgd(0.1), X, T, key=jn.random.key(1), **options)


def test_fit_checks_batch_size_and_threads_before_training() -> None:
    """A bad batch_size was reported by ``batches`` at the first epoch (never with
    ``epochs=0``); a bad thread count was never checked on the generic path."""
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=f"fit: batch_size must be a positive integer, got {bad!r}"):
            _small_fit(epochs=0, batch_size=bad)
    with pytest.raises(ValueError, match=r"fit: threads must be None \(chosen by batch size\) or a positive integer, got 0"):
        _small_fit(threads=0, compiled=False)
    assert _small_fit(epochs=1, batch_size=np.int64(2), compiled=False, verbose=np.False_).history


def test_random_arguments_refused_with_the_function_name() -> None:
    key = jn.random.key(0)
    with pytest.raises(ValueError, match="bernoulli: p must lie in"):
        jn.random.bernoulli(key, True, 3)  # a bool was taken for 1.0
    for low, high in ((0.0, INF), (-INF, 0.0), (NAN, 1.0)):
        with pytest.raises(ValueError, match="uniform: (low|high) must be a finite real number"):
            jn.random.uniform(key, 3, low, high)
    with pytest.raises(ValueError, match="normal: shape must be non-negative integers, got 2.5"):
        jn.random.normal(key, 2.5)  # was a bare "'float' object is not iterable"
    assert jn.random.uniform(key, 2, np.float32(-1), 1).shape == (2,)
