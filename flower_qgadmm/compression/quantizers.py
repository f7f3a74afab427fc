"""Quantizers: the Q-GADMM stochastic quantizer and the lossless float32 path.

(The gossip compressors of CHOCO-SGD / Malcom-PSGD, dithered, top-k, random-k and
scaled sign, are in :mod:`.compressors`.)

Q-GADMM (arXiv 1910.10453, eq. 10-12) quantizes v = theta - theta_hat_prev with b bits:

1. R = max_i |v_i|, rounded up to a bfloat16 value (a float32 whose low 16 bits are 0:
   the receiver reads the same value from 2 bytes, and every entry stays in [-R, R]);
2. Delta = 2R / (2^b - 1); c_i = (v_i + R) / Delta in [0, 2^b - 1];
3. q_i = ceil(c_i) with probability c_i - floor(c_i), else floor(c_i) (unbiased);
4. the receiver rebuilds Delta * q_i - R; R = 0 is special-cased (all codes 0).
"""

from __future__ import annotations

import math
import operator
import struct

import numpy as np

from ..numeric import max_abs, within
from .base import Quantized, Quantizer, dense_quantized, register_quantizer

MAX_LEVEL_BITS = 16


def check_level_bits(value: object, key: str = "bits") -> int:
    """Return ``value`` as an int in ``1..MAX_LEVEL_BITS``; raise ``ValueError`` otherwise.

    The one owner of the width check; ``key`` names the setting in the message (e.g.
    ``"bits-max"``). Integers (Python or numpy) and integral floats are accepted; bools,
    fractions and non-numbers are refused.
    """
    bits: int | None = None
    if not isinstance(value, (bool, np.bool_)):
        try:
            bits = operator.index(value)
        except TypeError:
            if isinstance(value, (float, np.floating)) and float(value).is_integer():
                bits = int(value)
    if bits is None or not 1 <= bits <= MAX_LEVEL_BITS:
        raise ValueError(f"{key} must be in 1..{MAX_LEVEL_BITS}, got {value}")
    return bits


def check_finite(x: np.ndarray, what: str = "vector") -> np.ndarray:
    """Return ``x`` as a 1-D float64 array; raise ``ValueError`` on NaN/Inf or wrong rank."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ValueError(f"{what} has {bad} non-finite entries (NaN/Inf); refusing to send it")
    return arr


FLOAT32_MAX = float(np.finfo(np.float32).max)  # the largest float32
_F32, _U32 = struct.Struct("<f"), struct.Struct("<I")  # a float32 and its bit pattern
_MAX, _MIN = np.maximum.reduce, np.minimum.reduce
# the dtypes of the hot paths, built once (a numpy type given as a dtype is converted at
# every call)
_F8, _I4, _U4 = np.dtype(np.float64), np.dtype(np.int32), np.dtype(np.uint32)


def check_float32_range(v: np.ndarray, what: str = "vector") -> np.ndarray:
    """Raise ``ValueError`` if ``v`` has entries beyond the float32 range (R and raw
    entries travel as float32, so they would arrive as Inf)."""
    if v.size and float(np.max(np.abs(v))) > FLOAT32_MAX:
        raise ValueError(f"{what} has entries beyond the float32 range (|x| > {FLOAT32_MAX:.3g})")
    return v


def finite_range(x: np.ndarray, what: str = "vector") -> tuple[np.ndarray, float]:
    """(x as 1-D float64, max |x_i|), refusing NaN/Inf and entries beyond the float32 range
    with the messages of :func:`check_finite` / :func:`check_float32_range`, in one pass."""
    if type(x) is np.ndarray and x.dtype.kind == "c":  # asarray would drop the imaginary part
        raise ValueError(f"{what} must be real, got dtype {x.dtype}")
    arr = np.asarray(x, dtype=_F8)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    # usually BLAS: a finite sum of squares proves every entry finite, then idamax finds
    # the largest |x_i| (numeric.max_abs); else max |x_i| = max(max x, -min x) without
    # the temporary |x| (NaN propagates through both reductions; abs() turns an all
    # -0.0 vector's -0.0 into 0.0), the ufuncs' reduce directly
    amax = max_abs(arr) if arr.size else 0.0
    if amax is None:
        amax = abs(max(float(_MAX(arr)), -float(_MIN(arr))))
    if not math.isfinite(amax):
        check_finite(arr, what)
    if amax > FLOAT32_MAX:
        check_float32_range(arr, what)
    return arr, amax


def is_float32(value: float) -> bool:
    """``value`` (finite, at most :data:`FLOAT32_MAX` in magnitude) is a float32 value."""
    return _F32.unpack(_F32.pack(value))[0] == value


def float32_ceil(value: float) -> float:
    """Smallest float32 >= value (so codes never exceed the top level after rounding R).

    In plain Python on the IEEE bit pattern (``struct`` rounds to the nearest float32, as
    a numpy cast does): the same floats as ``np.float32`` and ``np.nextafter`` at a
    fraction of their scalar overhead (it runs once per message)."""
    value = float(value)
    try:
        r = _F32.unpack(_F32.pack(value))[0]
    except OverflowError:  # finite, beyond the float32 range: the cast gives +-inf
        return math.inf if value > 0 else -FLOAT32_MAX
    if r < value:  # one float32 step up: the pattern + 1 (of |r| - 1 below zero)
        (pattern,) = _U32.unpack(_F32.pack(r))
        pattern = 1 if r == 0 else (pattern + 1 if r > 0 else pattern - 1)
        r = _F32.unpack(_U32.pack(pattern))[0]
    return r


def bfloat16_ceil(value: float) -> float:
    """Smallest float32 >= ``value`` whose low 16 bits are 0 (a bfloat16 value: sign, the
    8 exponent bits and the 7 high mantissa bits), or :func:`float32_ceil` of ``value`` if
    that would overflow to infinity. For ``value >= 0``.

    The stochastic quantizer's range R: a codec writes such a range in 16 bits instead of
    32, and rounding R up keeps every entry inside [-R, R], so the rounding stays unbiased;
    the step ``2R / (2^b - 1)`` grows by less than 2^-7 (0.8%).
    """
    r = float32_ceil(value)
    if math.isfinite(r):
        (pattern,) = _U32.unpack(_F32.pack(r))
        if pattern & 0xFFFF:
            up = ((pattern | 0xFFFF) + 1) & 0xFFFFFFFF  # the carry may raise the exponent
            rounded = _F32.unpack(_U32.pack(up))[0]
            if math.isfinite(rounded):
                return rounded
    return r


def adaptive_bits(
    prev_bits: int, prev_range: float, new_range: float, omega: float, bits_max: int
) -> int:
    """Adaptive level rule of Q-GADMM: the smallest b whose step Delta_k = 2 R_k / (2^b - 1)
    is at most ``omega`` times the step ``prev_bits`` gave ``prev_range``:
    2^b - 1 >= (2^{prev_bits} - 1) R_k / (omega R_{k-1}).

    With ``prev_bits`` = b_{k-1} this is the rule as the CQ-GGADMM slides write it
    (Delta_k <= omega Delta_{k-1}, which ratchets the width up); :class:`~flower_qgadmm.
    algorithms.gadmm.Gadmm` passes the configured width instead (its module docstring
    says why). The result is clipped to ``[1, bits_max]``; without a previous range
    ``prev_bits`` is kept.
    """
    if prev_range <= 0.0:
        return prev_bits
    need = (2**prev_bits - 1) * new_range / (omega * prev_range)
    for b in range(1, bits_max + 1):
        if 2**b - 1 >= need:
            return b
    return bits_max


SMALL_LEVELS = 1 << 12
"""Up to this many entries :func:`stochastic_levels` works on whole-vector temporaries in
one pass (fewer numpy calls for the small models of the convex tasks), beyond it in
:data:`LEVEL_CHUNK` steps; both give the same codes and draws."""

LEVEL_CHUNK = 1 << 15
"""Entries :func:`stochastic_levels` handles per step: its float64 scratch (4 buffers of
this many entries, 1 MiB) stays in cache instead of d-sized temporaries."""


def stochastic_levels(v: np.ndarray, r: float, top: int, rng: np.random.Generator) -> np.ndarray:
    """The ``uint32`` codes ``min(floor(c) + (u < c - floor(c)), top)`` of
    ``c = (v + r) / delta``, ``delta = 2 r / top``, with ``u = rng.random(d)``.

    Bit for bit the historic one-shot expression (same float64 operations, so the same
    ``c``; ``c - floor(c)`` is exact), and the same draws: ``rng.random(out=...)`` over
    consecutive chunks yields the stream of one ``rng.random(d)`` call (one 64-bit output
    per float64) and leaves the generator in the same state. Computed
    :data:`LEVEL_CHUNK` entries at a time in reused buffers: about 2x faster than the
    d-sized temporaries (see ``benchmarks/bench_codec.py``).
    """
    n = v.size
    delta = 2.0 * r / top
    if n <= SMALL_LEVELS:  # one pass, the same operations and draws, fewer calls
        c = v + r
        c /= delta
        low = np.floor(c)
        c -= low
        small = low.astype(_I4)
        small += rng.random(n) < c
        codes = small.view(_U4)
        np.minimum(codes, top, out=codes)
        return codes
    codes = np.empty(n, dtype=np.uint32)
    signed = codes.view(np.int32)  # levels < 2^16: float64 -> int32 converts faster
    step = min(LEVEL_CHUNK, n)
    c = np.empty(step)
    low = np.empty(step)
    u = np.empty(step)
    up = np.empty(step, dtype=bool)
    for start in range(0, n, step):
        m = min(step, n - start)
        cm, lm, um, upm = c[:m], low[:m], u[:m], up[:m]
        out = signed[start : start + m]
        np.add(v[start : start + m], r, out=cm)
        np.divide(cm, delta, out=cm)  # c = (v + r) / delta >= 0, as the historic code
        np.floor(cm, out=lm)
        np.subtract(cm, lm, out=cm)  # the fraction c - floor(c), exact
        rng.random(out=um)
        np.less(um, cm, out=upm)
        out[...] = lm  # floor(c) < 2^b: exact
        out += upm
    np.minimum(codes, top, out=codes)  # the historic clip: c may exceed top by an ulp
    return codes


@register_quantizer("stochastic")
class StochasticQuantizer(Quantizer):
    """Unbiased stochastic rounding onto 2^b - 1 uniform levels over [-R, R].

    Parameters
    ----------
    bits : int
        Bits per entry, 1..16 (default width; ``quantize`` may override it per message).
    """

    unbiased = True
    lossless = False
    kinds = frozenset({"levels"})

    def __init__(self, bits: int) -> None:
        self.bits = check_level_bits(bits)

    def quantize(
        self, x: np.ndarray, rng: np.random.Generator, bits: int | None = None
    ) -> Quantized:
        if bits is None:
            b = self.bits
        elif type(bits) is int and 1 <= bits <= MAX_LEVEL_BITS:  # what the check returns
            b = bits
        else:
            b = check_level_bits(bits)
        v, amax = finite_range(x)
        top = 2**b - 1
        r = bfloat16_ceil(amax) if v.size else 0.0
        if r == 0.0:
            return dense_quantized(np.zeros(v.size, dtype=np.uint32), 0.0, b, "levels")
        return dense_quantized(stochastic_levels(v, r, top, rng), r, b, "levels")

    def dequantize(self, q: Quantized) -> np.ndarray:
        if q.scale == 0.0:
            return np.zeros(q.size, dtype=np.float64)
        delta = 2.0 * q.scale / (2**q.bits - 1)
        # delta * code - R, the two roundings of the historic expression, in place;
        # levels < 2^16 read as int32 convert faster than as uint32, to the same floats
        codes = q.codes
        if codes.dtype == _U4 and codes.flags.c_contiguous:
            codes = codes.view(_I4)
        out = codes.astype(_F8)
        out *= delta
        out -= q.scale
        return out

    def nominal_bits(self, q: Quantized) -> int:
        return q.bits * q.size + 32

    def error_bound(self, q: Quantized) -> float:
        """The step Delta = 2R / (2^b - 1): each entry is rounded to an adjacent level."""
        return 2.0 * q.scale / (2**q.bits - 1)


@register_quantizer("float32")
class Float32Quantizer(Quantizer):
    """The lossless 32-bit path: entries are sent as IEEE float32 (GADMM's 32*d bits).

    Exact up to the float32 rounding of the input, hence ``lossless`` and ``unbiased``.
    ``quantize`` ignores ``rng`` and ``bits``.
    """

    unbiased = True
    lossless = True
    kinds = frozenset({"raw"})
    bits = 32

    def quantize(
        self, x: np.ndarray, rng: np.random.Generator | None = None, bits: int | None = None
    ) -> Quantized:
        if type(x) is np.ndarray and x.dtype.kind == "c":
            finite_range(x)  # raises: complex
        v = np.asarray(x, dtype=_F8)
        if not (v.ndim == 1 and within(v, FLOAT32_MAX)):  # one dot product, usually
            v, _ = finite_range(x)  # refuses NaN/Inf, |x| > float32 max, not 1-D
        return dense_quantized(v.astype(np.float32), 0.0, 32, "raw")

    def dequantize(self, q: Quantized) -> np.ndarray:
        return q.codes.astype(_F8)

    def nominal_bits(self, q: Quantized) -> int:
        return 32 * q.size

    def error_bound(self, q: Quantized) -> float:
        """0: the receiver gets float32(x) exactly."""
        return 0.0
