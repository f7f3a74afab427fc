"""The vector source coder of Malcom-PSGD (Woldemariam et al., arXiv 2309.05633).

Lossless on the integer levels: ``decode(encode(q))`` gives back exactly the levels
(and the float32 scale) of q. The levels of a small residual are mostly 0, so the coder
sends only where the non-zeros are (the zero runs between them) and what they are.

Kinds written: "signed" (the dithered quantizer, scaled sign) and "levels" (Q-GADMM's
unsigned b-bit codes, sent as signed offsets ``c_k - c0`` from the most frequent code
c0 of the message, which becomes the "zero"; ties: the smallest code). "raw" and
"sparse" are refused (``ValueError``).

Wire format (header little-endian, then a bit stream MSB first, zero-padded to a byte)::

    byte 0      tag: kind in the top 3 bits (0b101 signed, 0b110 levels),
                the Golomb-Rice parameter r in the low 5 bits (0..31)
    bytes 1-4   d, uint32
    bytes 5-8   the scale as float32 (signed: the norm / scale; levels: the range R)
    stream      signed: gamma(s)                       the top level s >= 1
                levels: b - 1 on 4 bits, c0 on b bits  the width b and the centre
                gamma(n + 1)                           n = number of non-zero levels
                n codewords, in order of position:
                    rice(run_i, r)   the zeros before the non-zero (Golomb-Rice, 2^r)
                    1 sign bit       1 = negative
                    gamma(|l_i|)     the magnitude (Elias gamma)
                the final run of zeros is implied by d.

(see :mod:`.entropy` for the codes). So a message is ``9 + ceil(B / 8)`` bytes with
``B = |gamma(s)| + |gamma(n + 1)| + sum_i [(run_i >> r) + r + 2 + 2 floor(log2 |l_i|) + 1]``
(levels: ``4 + b`` instead of ``|gamma(s)|``).

Choice of r: the one minimizing the stream length exactly,
``r = argmin_{0 <= r <= 31} sum_i (run_i >> r) + n r`` (ties: the smallest). For runs
roughly geometric with a density p of non-zeros this is the classic Golomb-Rice choice
``2^r ~ ln 2 / p``; minimizing over the observed runs costs O(n log d) and is never
worse.

Closed-form estimate (:meth:`SourceCodec.estimate_bits`), from the counts only (d, n,
the magnitude histogram c_m): with the n non-zeros spread uniformly, the n + 1 gaps
have mean ``(d - n) / (n + 1)``, i.e. roughly geometric runs with
``P(run >= j) = (1 - p)^j``, ``p = (n + 1) / (d + 1)``. A Golomb-Rice code with
``m = 2^r`` then costs on average ``r + 1 + E[floor(run / m)] = r + 1 + theta / (1 -
theta)``, ``theta = (1 - p)^m``, so::

    estimate = 8 ceil( (72 + H + n min_r [r + 1 + theta_r / (1 - theta_r)] + n
                        + sum_m c_m (2 floor(log2 m) + 1)) / 8 )

with ``H = |gamma(s)| + |gamma(n + 1)|`` (levels: ``4 + b + |gamma(n + 1)|``) and 72
the tag, d and scale. The sign and magnitude terms are exact; only the run term is an
expectation (its standard deviation is about ``sqrt(2 n)`` bits, the variance
``theta / (1 - theta)^2 ~ 2`` of each quotient at the best r). Measured on d = 1000,
s = 1, 2-5% density: within 3.3% of the payload length (``tests/test_source_coder.py``).

Cost: encoding is numpy throughout; decoding is a pure-Python loop of O(1) steps per
non-zero (two "next 1 bit" look-ups, :class:`~.entropy.BitReader`), then numpy; about
9 ms for d = 10^5 with 20% non-zeros (``simulations/bench_source_coder.py``).

Robustness: ``decode`` raises :class:`PayloadError` (never anything else) on truncated,
oversized or corrupted payloads, and its work and memory are O(d): the payload length is
checked against the longest stream d entries can produce (``9 + ceil((200 + 97 d) / 8)``
bytes) before the stream is read, d against the size the receiver expects (or against
``max_size`` when it passes none), n against d, every run against d and every level
against s (on the length of its gamma prefix, before reading it).
"""

from __future__ import annotations

import math
import struct

import numpy as np

from .base import Codec, PayloadError, Quantized, register_codec
from .codecs import check_levels, check_signed
from .compressors import MAX_SIGNED_LEVEL, signed_width
from .entropy import (
    BitReader,
    BitWriter,
    best_rice_parameter,
    bit_length,
    codewords_length,
    gamma_length,
    read_codewords,
    write_codewords,
)

_HEAD = struct.Struct("<BIf")
KIND_SIGNED = 0b101
KIND_LEVELS = 0b110
_MAX_SIZE = 2**32 - 1
MAX_CODEWORD_BITS = 96
"""Longest codeword beyond its run's unary quotient: 1 + 31 (r) + 1 (sign) + 63 (gamma)."""


def max_payload_bytes(size: int) -> int:
    """The longest payload d entries can produce: ``9 + ceil((200 + 97 d) / 8)`` bytes
    (stream header < 200 bits; per entry <= 1 bit of unary run plus one codeword)."""
    return _HEAD.size + (200 + (1 + MAX_CODEWORD_BITS) * size + 7) // 8


def expected_run_bits(count: int, size: int) -> tuple[float, int]:
    """(expected Golomb-Rice bits of ``count`` runs among ``size`` entries, best r).

    ``count min_r [r + 1 + theta_r / (1 - theta_r)]`` with ``theta_r = (1 - p)^(2^r)``
    and ``p = (count + 1) / (size + 1)`` (see the module docstring).
    """
    if count == 0:
        return 0.0, 0
    p = (count + 1) / (size + 1)
    best, best_r = math.inf, 0
    for r in range(32):
        theta = 0.0 if p >= 1.0 else math.exp((1 << r) * math.log1p(-p))
        cost = r + 1 + (theta / (1.0 - theta) if theta < 1.0 else math.inf)
        if cost < best:
            best, best_r = cost, r
    return count * best, best_r


def _check_levels(q: Quantized) -> tuple[np.ndarray, int, float]:
    """(codes as int64, b, R) of a "levels" message, refused as the fixed-width codec does."""
    codes, bits, scale = check_levels(q)
    return codes.astype(np.int64), bits, scale


class _Plan:
    """Everything :meth:`SourceCodec.encode` writes, before writing it."""

    def __init__(self, q: Quantized) -> None:
        self.head = BitWriter()
        if q.kind == "signed":
            values, s, self.scale = check_signed(q)
            self.kind = KIND_SIGNED
            self.head.write_gamma(s)
        elif q.kind == "levels":
            codes, b, self.scale = _check_levels(q)
            centre = int(np.argmax(np.bincount(codes, minlength=1))) if codes.size else 0
            values = codes - centre
            self.kind = KIND_LEVELS
            self.head.write(b - 1, 4)
            self.head.write(centre, b)
        else:
            raise ValueError(
                f"the source codec writes signed and levels messages, not {q.kind!r} "
                "(use the fixed-width codec)"
            )
        self.size = int(values.size)
        where = np.flatnonzero(values)
        self.runs = np.diff(where, prepend=-1) - 1
        self.negative = values[where] < 0
        self.magnitudes = np.abs(values[where])
        self.head.write_gamma(where.size + 1)
        self.r = best_rice_parameter(self.runs)

    def stream_bits(self) -> int:
        return len(self.head) + codewords_length(self.runs, self.magnitudes, self.r)

    def payload(self) -> bytes:
        self.head.write_bits(write_codewords(self.runs, self.negative, self.magnitudes, self.r))
        tag = (self.kind << 5) | self.r
        return _HEAD.pack(tag, self.size, self.scale) + self.head.getvalue()


@register_codec("source")
class SourceCodec(Codec):
    """Vector source coder: Golomb-Rice zero runs, a sign bit, Elias-gamma magnitudes.

    See the module docstring for the format, the choice of r and the estimate.

    Parameters
    ----------
    max_size : int
        Largest d accepted by ``decode`` when the receiver passes no expected ``size``
        (default 2^26), so a forged header cannot make it allocate more.

    ``header_overhead_bits`` (40: the tag/r byte and d) is the framing beyond the scale's
    32 bits; the stream adds ``|gamma(s)| + |gamma(n + 1)|`` bits (levels: ``4 + b +
    |gamma(n + 1)|``) and its own length varies with the values (``variable_length``);
    :meth:`payload_length` computes it exactly without encoding.
    """

    header_overhead_bits = 40
    kinds = frozenset({"signed", "levels"})
    variable_length = True

    def __init__(self, max_size: int = 2**26) -> None:
        self.max_size = int(max_size)

    def encode(self, q: Quantized) -> bytes:
        return _Plan(q).payload()

    def payload_length(self, q: Quantized) -> int:
        return _HEAD.size + (_Plan(q).stream_bits() + 7) // 8

    def stream_bits(self, q: Quantized) -> int:
        """Exact bits of the stream after the 9-byte header, before the padding."""
        return _Plan(q).stream_bits()

    def estimate_bits(self, q: Quantized) -> int:
        """Closed-form estimate of ``8 * len(encode(q))`` from the counts (module docstring).

        Uses d, the number n of non-zero levels and their magnitude histogram only (not
        the positions). ``ValueError`` for kinds the codec does not write.
        """
        if q.kind == "signed":
            values, s, _ = check_signed(q)
            head = gamma_length(s)
        elif q.kind == "levels":
            codes, b, _ = _check_levels(q)
            centre = int(np.argmax(np.bincount(codes, minlength=1))) if codes.size else 0
            values = codes - centre
            head = 4 + b
        else:
            raise ValueError(f"the source codec does not write {q.kind!r} messages")
        mags = np.abs(values[values != 0])
        n, d = int(mags.size), int(values.size)
        hist = np.bincount(bit_length(mags), minlength=1)  # c by floor(log2 m) + 1
        magnitude_bits = int(np.sum(hist * np.maximum(2 * np.arange(hist.size) - 1, 0)))
        run_bits, _ = expected_run_bits(n, d)
        total = 8 * _HEAD.size + head + gamma_length(n + 1) + run_bits + n + magnitude_bits
        return 8 * math.ceil(total / 8)

    def decode(self, payload: bytes, size: int | None = None) -> Quantized:
        data = bytes(payload)
        if len(data) < _HEAD.size:
            raise PayloadError(
                f"truncated payload: {len(data)} bytes, a header needs at least {_HEAD.size}"
            )
        tag, d, scale = _HEAD.unpack_from(data)
        kind, r = tag >> 5, tag & 31
        if kind not in (KIND_SIGNED, KIND_LEVELS):
            raise PayloadError(f"bad header: tag {tag:#04x} is not a source-coded message")
        if not np.isfinite(scale) or scale < 0:
            raise PayloadError(f"bad header: scale {scale} must be finite and >= 0")
        if size is not None and d != size:
            raise PayloadError(f"payload holds {d} entries, the receiver expects {size}")
        if size is None and d > self.max_size:
            raise PayloadError(f"payload declares {d} entries, more than max_size {self.max_size}")
        if len(data) > max_payload_bytes(d):
            raise PayloadError(
                f"oversized payload: {len(data)} bytes, {d} entries need at most "
                f"{max_payload_bytes(d)}"
            )
        reader = BitReader(data[_HEAD.size :])
        if kind == KIND_SIGNED:
            s = reader.read_gamma(MAX_SIGNED_LEVEL.bit_length(), "the top level s")
            centre, top = 0, s
        else:
            b = reader.read(4, "the width b") + 1
            centre = reader.read(b, "the centre code")
            top = max(centre, 2**b - 1 - centre)
        count = reader.read_gamma(33, "the count of non-zeros") - 1
        if count > d:
            raise PayloadError(f"bad stream: {count} non-zero levels in {d} entries")
        runs, negative, mags = read_codewords(reader, count, r, max(d - 1, 0), top)
        reader.check_end()
        where = np.cumsum(runs + 1) - 1
        if count and where[-1] >= d:
            raise PayloadError(f"bad stream: the runs run past the {d} entries")
        signed = np.where(negative, -mags, mags)
        if kind == KIND_SIGNED:
            codes = np.zeros(d, dtype=np.int32)
            codes[where] = signed
            return Quantized(codes, float(scale), signed_width(s), "signed", int(s))
        values = centre + signed
        if count and (values.min() < 0 or values.max() > 2**b - 1):
            raise PayloadError(f"bad stream: a level code outside 0..{2**b - 1}")
        codes = np.full(d, centre, dtype=np.uint32)
        codes[where] = values
        return Quantized(codes, float(scale), int(b), "levels")
