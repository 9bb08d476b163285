"""Elementary functions for kernels, written so that loops over them vectorize.

Numba compiles ``math.exp`` and ``math.tanh`` to calls into the C library, one element at a
time (no vector math library ships with it), and a recurrent layer's forward pass spends
most of its time in them: 25 ns for one float32 ``tanh``. The functions here are plain
arithmetic (a range reduction, a polynomial and a power of two built from its bits), with
no calls and no branches (only selects), so LLVM turns a loop over them into SIMD
instructions: a float32 ``tanh`` then costs under 2 ns.

- ``exp_nonpositive(x)``: ``exp(x)`` for ``x <= 0``. ``x = k ln 2 + r`` with ``k`` the
  nearest integer to ``x / ln 2`` and ``|r| <= ln 2 / 2`` (Cody and Waite: ``ln 2`` split
  into a short head, whose products with ``k`` are exact, and a tail), ``exp(r)`` by its
  Taylor polynomial (degree 7 in float32, 13 in float64: the truncation is below 0.1 u),
  times ``2**k`` as two factors ``2**l`` and ``2**(k - l)`` (``l`` the nearest integer to ``k /
  2``), each a normal number, so that results down in the subnormal range round once. The
  nearest integers come from adding and subtracting ``1.5 * 2**23`` (``2**52``), a floor
  being a call into the C library. Below ``-104`` (float32) or ``-746`` (float64), where the
  result rounds to 0, the argument is clamped there; NaN stays NaN.
- ``sigmoid(x) = 1 / (1 + exp(-x))`` through ``e = exp(-|x|)``: ``1 / (1 + e)`` for ``x >= 0``,
  ``e / (1 + e)`` otherwise; nothing overflows.
- ``tanh(x)``: for ``|x| < 0.625`` Cephes' odd approximation ``x + x z P(z)`` (float32,
  ``z = x**2``) or ``x + x z P(z) / Q(z)`` (float64); above, ``(1 - e) / (1 + e)`` with ``e =
  exp(-2 |x|)``, where ``1 - e > 0.7`` (no cancellation). The sign is copied back.

Each is within 4 units in the last place of the exact value on the whole float range
(``tests/test_recurrent.py`` measures it, against float64 and long double), the accuracy
``tests/tolerances.py`` assumes of a library function. They are ``@jit(inline="always")``
functions of a float32 or float64 scalar, for use inside kernels; their constants come in
the argument's dtype (``_constants``), so float32 arithmetic stays float32. Under
``NUMBA_DISABLE_JIT=1`` they run as Python on NumPy scalars, with the same operations.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import types
from numba.extending import intrinsic, overload

from jitnn._jit import jit

__all__ = ["exp_nonpositive", "sigmoid", "tanh"]


# --------------------------------------------------------------------------- a power of two from its bits
@intrinsic
def _float_from_bits_intrinsic(typingctx: Any, bits: Any) -> Any:
    """The float whose bits are ``bits``: int32 -> float32, int64 -> float64."""
    result = {types.int32: types.float32, types.int64: types.float64}.get(bits)
    if result is None:
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], context.get_value_type(result))

    return result(bits), codegen


def _float_from_bits(bits: Any) -> Any:
    """The float whose bits are ``bits`` (a NumPy int32 or int64)."""
    return np.asarray(bits).view(np.float32 if np.asarray(bits).dtype == np.int32 else np.float64)[()]


@overload(_float_from_bits)
def _float_from_bits_compiled(bits):  # type: ignore[no-untyped-def]
    return lambda bits: _float_from_bits_intrinsic(bits)


# --------------------------------------------------------------------------- constants in the argument's dtype
def _constants_for(dtype: Any) -> tuple[Any, ...]:
    c = np.dtype(dtype).type
    single = c is np.float32
    # ln 2 = head + tail, the head short enough that k * head is exact for every k used
    head, tail = (0.693359375, -2.12194440e-4) if single else (6.93145751953125e-1, 1.42860682030941723212e-6)
    degree = 7 if single else 13
    if single:  # Cephes tanhf: tanh(x) = x + x z P(z), z = x**2, for |x| < 0.625 (Q = 1)
        p, q = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1), (0.0, 1.0)
    else:  # Cephes tanh: tanh(x) = x + x z P(z) / Q(z), Q monic
        p = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
        q = (1.0, 1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)
    return (
        c(0), c(0.5), c(1), c(2), c(0.625),
        c(-104.0 if single else -746.0),  # below: exp rounds to 0
        c(-150.0 if single else -1076.0),  # the nearest integer to lowest / ln 2
        c(1.0 / math.log(2.0)), c(1.5 * 2.0 ** (23 if single else 52)), c(head), c(tail),
        tuple(c(1.0 / math.factorial(k)) for k in range(degree, -1, -1)),  # Taylor, highest power first
        tuple(c(v) for v in p), tuple(c(v) for v in q),
    )


_CONSTANTS = {np.dtype(np.float32): _constants_for(np.float32), np.dtype(np.float64): _constants_for(np.float64)}
_TYPES = {types.float32: np.dtype(np.float32), types.float64: np.dtype(np.float64)}


def _constants(x: Any) -> tuple[Any, ...]:
    """The constants of these functions in ``x``'s dtype (float32 or float64)."""
    return _CONSTANTS[np.dtype(np.float32) if isinstance(x, np.float32) else np.dtype(np.float64)]


@overload(_constants)
def _constants_compiled(x):  # type: ignore[no-untyped-def]
    if x not in _TYPES:
        return None
    constants = _CONSTANTS[_TYPES[x]]
    return lambda x: constants


def _power_of_two(k: Any) -> Any:
    """``2**k`` for a float ``k`` holding an integer in the normal exponent range."""
    if isinstance(k, np.float32):
        return _float_from_bits(np.int32((np.int32(k) + 127) << 23))
    return _float_from_bits(np.int64((np.int64(k) + 1023) << 52))


@overload(_power_of_two)
def _power_of_two_compiled(k):  # type: ignore[no-untyped-def]
    if k == types.float32:
        return lambda k: _float_from_bits_intrinsic(np.int32((np.int32(k) + np.int32(127)) << np.int32(23)))
    if k == types.float64:
        return lambda k: _float_from_bits_intrinsic(np.int64((np.int64(k) + np.int64(1023)) << np.int64(52)))
    return None


# --------------------------------------------------------------------------- the functions
@jit(inline="always")
def exp_nonpositive(x):
    """exp(x) for x <= 0 in x's dtype (float32 or float64); for use inside kernels."""
    zero, half, one, two, small, lowest, lowest_k, log2e, magic, head, tail, taylor, p, q = _constants(x)
    x = max(x, lowest)  # NaN stays NaN
    k = max(lowest_k, (x * log2e + magic) - magic)  # the nearest integer to x / ln 2; NaN gives lowest_k
    r = (x - k * head) - k * tail
    poly = taylor[0]
    for coefficient in taylor[1:]:
        poly = poly * r + coefficient
    low = (k * half + magic) - magic
    return (poly * _power_of_two(low)) * _power_of_two(k - low)


@jit(inline="always")
def sigmoid(x):
    """1 / (1 + exp(-x)) in x's dtype, without overflow; for use inside kernels."""
    zero, half, one, two, small, lowest, lowest_k, log2e, magic, head, tail, taylor, p, q = _constants(x)
    e = exp_nonpositive(-abs(x))
    return max(e, math.copysign(one, x)) / (one + e)  # 1 / (1 + e) for x >= 0, e / (1 + e) below


@jit(inline="always")
def tanh(x):
    """tanh(x) in x's dtype; for use inside kernels."""
    zero, half, one, two, small, lowest, lowest_k, log2e, magic, head, tail, taylor, p, q = _constants(x)
    a = abs(x)
    z = a * a
    numerator = p[0]
    for coefficient in p[1:]:
        numerator = numerator * z + coefficient
    denominator = q[0]
    for coefficient in q[1:]:
        denominator = denominator * z + coefficient
    near = a + a * (z * numerator / denominator)
    e = exp_nonpositive(-two * a)
    far = (one - e) / (one + e)
    return math.copysign(near if a < small else far, x)  # the sign of -0 too; NaN: far, which is NaN


@jit(inline="always")
def row_max(X, i):
    """The largest value of row ``i`` of ``X`` (m, k >= 1), NaN if the row holds one: the
    bits of ``X[i].max()``, written as a loop because NumPy's reductions in Numba live in a
    module whose import (with SciPy's BLAS) costs a process that loads cached code 0.5 s."""
    top = X[i, 0]
    if top != top:
        return top
    for j in range(1, X.shape[1]):
        value = X[i, j]
        if value != value:
            return value
        if value > top:
            top = value
    return top
