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
    v(d) bytes  d, an unsigned LEB128 varint as the fixed-width codec writes it
                (:func:`~.codecs.write_varint`; v(d) = 1 for d < 128, 2 for d < 16,384,
                3 for d < 2^21, ...)
    4 bytes     the scale as float32 (signed: the norm / scale; levels: the range R)
    stream      signed: gamma(s)                       the top level s >= 1
                levels: b - 1 on 4 bits, c0 on b bits  the width b and the centre
                gamma(n + 1)                           n = number of non-zero levels
                n codewords, in order of position:
                    rice(run_i, r)   the zeros before the non-zero (Golomb-Rice, 2^r)
                    1 sign bit       1 = negative
                    gamma(|l_i|)     the magnitude (Elias gamma)
                the final run of zeros is implied by d.

(see :mod:`.entropy` for the codes). So a message is ``5 + v(d) + ceil(B / 8)`` bytes with
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

    estimate = 8 ceil( (40 + 8 v(d) + H + n min_r [r + 1 + theta_r / (1 - theta_r)] + n
                        + sum_m c_m (2 floor(log2 m) + 1)) / 8 )

with ``H = |gamma(s)| + |gamma(n + 1)|`` (levels: ``4 + b + |gamma(n + 1)|``) and
``40 + 8 v(d)`` the tag, d and scale. The sign and magnitude terms are exact; only the
run term is an expectation. Its standard deviation is at most about ``sqrt(2 n)`` bits
(the variance ``theta / (1 - theta)^2 ~ 2`` of each quotient at the best r, were the gaps
independent); with n known the gaps sum to at most d, and the spread is smaller (measured:
2.3-2.5 bits for n = 30 at uniform positions on d = 1000, against sqrt(2 n) = 7.7). On d = 1000,
s = 1, 2-5% density: typically within 1% and at most about 3.5% of the payload length
(``tests/test_source_coder.py``; 3.6% once in 200 random draws at 2%).

Cost: encoding is numpy throughout; decoding is a pure-Python loop of O(1) steps per
non-zero (two "next 1 bit" look-ups, :class:`~.entropy.BitReader`), then numpy; about
9 ms for d = 10^5 with 20% non-zeros (``simulations/bench_source_coder.py``).

Robustness: ``decode`` raises :class:`PayloadError` (never anything else) on truncated,
oversized or corrupted payloads, and its work and memory are O(d). First the envelope
(:meth:`SourceCodec.check_envelope`, O(1), what a relay checks before forwarding): d
against the size the receiver expects (or ``max_size`` when it passes none), the scale
(finite, >= 0, <= 1e30), r <= bit_length(d - 1), the stream header (s, or b and c0, and
n <= d, from its first 16 bytes), and the length against the longest stream d entries
can produce (``5 + v(d) + ceil((200 + 97 d) / 8)`` bytes) and, tighter, against the shortest
and longest streams of n codewords with this r and s: ``n (r + 3)`` and ``((d - n) >>
r) + n (r + 1 + 2 bit_length(s))`` bits after the stream header (n = 0: the header
only). Then the stream: every run against d and every level against s (on the length of
its gamma prefix, before reading it), nothing but zero padding after the last codeword.
Finally the payload must be the one the encoder writes for what it carries (r the best
Golomb-Rice parameter of the runs, levels: c0 the most frequent code), so
``encode(decode(p)) == p`` for every accepted payload.
"""

from __future__ import annotations

import math
import struct
from typing import NamedTuple

import numpy as np

from .base import (
    MAX_SCALE,
    Codec,
    PayloadError,
    Quantized,
    check_declared_size,
    check_expected_size,
    check_header_scale,
    payload_view,
    register_codec,
)
from .codecs import check_levels, check_signed, read_varint, varint_length, write_varint
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

_SCALE = struct.Struct("<f")
_MIN_HEAD = 6  # the tag, a 1-byte d, the scale
KIND_SIGNED = 0b101
KIND_LEVELS = 0b110
_MAX_SIZE = 2**32 - 1
MAX_CODEWORD_BITS = 96
"""Longest codeword beyond its run's unary quotient: 1 + 31 (r) + 1 (sign) + 63 (gamma)."""


def head_size(size: int) -> int:
    """Bytes of the header of a message of ``size`` entries: the tag, d as a varint,
    the float32 scale (``5 + v(d)``)."""
    return 5 + varint_length(size)


def max_payload_bytes(size: int) -> int:
    """The longest payload d entries can produce: ``5 + v(d) + ceil((200 + 97 d) / 8)``
    bytes (stream header < 200 bits; per entry <= 1 bit of unary run plus one codeword)."""
    return head_size(size) + (200 + (1 + MAX_CODEWORD_BITS) * size + 7) // 8


def max_rice_parameter(size: int) -> int:
    """The largest r the encoder picks for ``size`` entries: ``bit_length(d - 1)`` (the
    longest run is d - 1, and r never exceeds its bit length); 0 for d <= 1."""
    return (int(size) - 1).bit_length() if size > 1 else 0


_STREAM_HEAD_BYTES = 16
"""Bytes of the stream holding its header whatever d: gamma(s) <= 61 bits (levels: 4 + b
<= 20), gamma(n + 1) <= 65 bits, so at most 126 bits."""


class _StreamHead(NamedTuple):
    """The source payload's header and the stream header (:meth:`SourceCodec._envelope`)."""

    kind: int  # KIND_SIGNED or KIND_LEVELS
    r: int
    size: int  # d
    scale: float
    top: int  # signed: s; levels: b
    centre: int  # levels: c0; signed: 0
    count: int  # n, the non-zero levels
    head_bits: int  # bits of the stream header
    start: int  # byte offset of the stream (the header's length)


class _HeadBits:
    """MSB-first reads of the first bytes of a stream, held as one Python int."""

    def __init__(self, data: bytes) -> None:
        self.nbits = 8 * len(data)
        self.value = int.from_bytes(data, "big")
        self.pos = 0

    def read(self, nbits: int, what: str) -> int:
        if self.pos + nbits > self.nbits:
            raise PayloadError(f"truncated payload: the bit stream ends inside {what}")
        self.pos += nbits
        return (self.value >> (self.nbits - self.pos)) & ((1 << nbits) - 1)

    def read_gamma(self, max_bits: int, what: str) -> int:
        rest = self.value & ((1 << (self.nbits - self.pos)) - 1)
        zeros = self.nbits - self.pos - rest.bit_length()  # up to the next 1 (or the end)
        if zeros >= max_bits:
            length = f"{zeros + 1}" if rest else f"more than {zeros}"  # no 1 in these bytes
            raise PayloadError(f"bad stream: {what} of {length} bits exceeds {max_bits}")
        if not rest:
            raise PayloadError(f"truncated payload: the bit stream ends inside {what}")
        self.pos += zeros
        return self.read(zeros + 1, what)


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
        header = bytes((tag,)) + write_varint(self.size) + _SCALE.pack(self.scale)
        return header + self.head.getvalue()


@register_codec("source")
class SourceCodec(Codec):
    """Vector source coder: Golomb-Rice zero runs, a sign bit, Elias-gamma magnitudes.

    See the module docstring for the format, the choice of r and the estimate.

    Parameters
    ----------
    max_size : int
        Largest d accepted by ``decode`` when the receiver passes no expected ``size``
        (default 2^26), so a forged header cannot make it allocate more.

    ``header_overhead_bits`` (48: the tag/r byte and d, a varint of at most 5 bytes) is
    the framing beyond the scale's 32 bits; the stream adds ``|gamma(s)| + |gamma(n +
    1)|`` bits (levels: ``4 + b + |gamma(n + 1)|``) and its own length varies with the
    values (``variable_length``); :meth:`payload_length` computes it exactly without
    encoding.
    """

    header_overhead_bits = 8 * 6
    kinds = frozenset({"signed", "levels"})
    variable_length = True

    def __init__(self, max_size: int = 2**26) -> None:
        self.max_size = int(max_size)

    def encode(self, q: Quantized) -> bytes:
        return _Plan(q).payload()

    def max_payload_bytes(self, size: int) -> int:
        """:func:`max_payload_bytes` (a long codeword per entry), or the default bound."""
        return max(super().max_payload_bytes(size), max_payload_bytes(size))

    def payload_length(self, q: Quantized) -> int:
        plan = _Plan(q)
        return head_size(plan.size) + (plan.stream_bits() + 7) // 8

    def stream_bits(self, q: Quantized) -> int:
        """Exact bits of the stream after the header, before the padding."""
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
        total = 8 * head_size(d) + head + gamma_length(n + 1) + run_bits + n + magnitude_bits
        return 8 * math.ceil(total / 8)

    def check_envelope(self, payload: bytes, size: int, max_scale: float = MAX_SCALE) -> None:
        """:class:`PayloadError` unless the header, the stream header and the length fit
        a model of ``size`` entries: the kind tag, d == size, the scale (finite, >= 0,
        <= ``max_scale``), r <= bit_length(d - 1) (no larger r is ever chosen), s in
        1..2^31-1 (levels: any b, c0), n <= d, and the length between the shortest and
        the longest stream of n codewords, r and s (or b, c0) among d entries (so at most
        :func:`max_payload_bytes`). O(1): reads at most the first 26 bytes."""
        self._envelope(payload_view(payload), check_expected_size(size), max_scale)

    def _envelope(self, view: memoryview, size: int | None, max_scale: float) -> _StreamHead:
        length = len(view)
        if length < _MIN_HEAD + 1:
            raise PayloadError(
                f"truncated payload: length {length} bytes, a source-coded message needs at "
                f"least {_MIN_HEAD + 1}"
            )
        tag = view[0]
        kind, r = tag >> 5, tag & 31
        if kind not in (KIND_SIGNED, KIND_LEVELS):
            raise PayloadError(f"bad header: tag {tag:#04x} is not a source-coded message")
        d, at = read_varint(view, 1, "size")
        start = at + _SCALE.size
        if length < start + 1:
            raise PayloadError(
                f"truncated payload: length {length} bytes, the header of {d} entries and a "
                f"stream need at least {start + 1}"
            )
        (scale,) = _SCALE.unpack_from(view, at)
        check_declared_size(d, size)
        if size is None and d > self.max_size:
            raise PayloadError(f"payload declares {d} entries, more than max_size {self.max_size}")
        check_header_scale(scale, max_scale, "range R" if kind == KIND_LEVELS else "scale")
        if r > max_rice_parameter(d):
            raise PayloadError(
                f"bad header: Golomb-Rice parameter r = {r}, at most "
                f"{max_rice_parameter(d)} for {d} entries"
            )
        if length > max_payload_bytes(d):
            raise PayloadError(
                f"oversized payload: length {length} bytes, {d} entries need at most "
                f"{max_payload_bytes(d)}"
            )
        head = _HeadBits(bytes(view[start : start + _STREAM_HEAD_BYTES]))
        if kind == KIND_SIGNED:
            top = head.read_gamma(MAX_SIGNED_LEVEL.bit_length(), "the top level s")
            centre, largest = 0, top
        else:
            top = head.read(4, "the width b") + 1
            centre = head.read(top, "the centre code")
            largest = max(centre, 2**top - 1 - centre)
        count = head.read_gamma(33, "the count of non-zeros") - 1
        if count > d:
            raise PayloadError(f"bad stream: {count} non-zero levels in {d} entries")
        # each codeword: unary quotient >= 1 bit, r bits, a sign bit, gamma(|l|) >= 1 bit;
        # the n quotients sum to at most (d - n) >> r (the n runs sum to at most d - n)
        quotients = (d - count) >> r if count else 0
        shortest = head.pos + count * (r + 3)
        longest = head.pos + quotients + count * (r + 2 + 2 * largest.bit_length() - 1)
        low, high = start + (shortest + 7) // 8, start + (longest + 7) // 8
        if not low <= length <= high:
            raise PayloadError(
                f"{'truncated' if length < low else 'oversized'} payload: length {length} "
                f"bytes, {count} non-zero levels among {d} entries (r = {r}) take "
                f"{low}..{high}"
            )
        return _StreamHead(kind, r, d, float(scale), top, centre, count, head.pos, start)

    def decode(self, payload: bytes, size: int | None = None) -> Quantized:
        data = payload if isinstance(payload, bytes) else bytes(payload_view(payload))
        if size is not None:
            size = check_expected_size(size, "decode")
        head = self._envelope(memoryview(data), size, MAX_SCALE)
        d, r, count = head.size, head.r, head.count
        reader = BitReader(data[head.start :])
        reader.pos = head.head_bits
        if head.kind == KIND_SIGNED:
            s = head.top
            largest = s
        else:
            b, centre = head.top, head.centre
            largest = max(centre, 2**b - 1 - centre)
        runs, negative, mags = read_codewords(reader, count, r, max(d - 1, 0), largest)
        reader.check_end()
        where = np.cumsum(runs + 1) - 1
        if count and where[-1] >= d:
            raise PayloadError(f"bad stream: the runs run past the {d} entries")
        if r != best_rice_parameter(runs):
            raise PayloadError(
                f"bad stream: Golomb-Rice parameter r = {r}, the encoder picks "
                f"{best_rice_parameter(runs)} for these runs"
            )
        signed = np.where(negative, -mags, mags)
        if head.kind == KIND_SIGNED:
            codes = np.zeros(d, dtype=np.int32)
            codes[where] = signed
            return Quantized(codes, head.scale, signed_width(s), "signed", int(s))
        values = centre + signed
        if count and (values.min() < 0 or values.max() > 2**b - 1):
            raise PayloadError(f"bad stream: a level code outside 0..{2**b - 1}")
        codes = np.full(d, centre, dtype=np.uint32)
        codes[where] = values
        mode = int(np.argmax(np.bincount(codes, minlength=1)))
        if mode != centre:
            raise PayloadError(
                f"bad stream: centre code {centre}, the encoder picks the most frequent {mode}"
            )
        return Quantized(codes, head.scale, int(b), "levels")
