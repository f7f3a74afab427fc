"""Bit-level entropy codes of the source coder: Elias gamma, Golomb-Rice, bit I/O.

Conventions: a bit stream is written most significant bit first (bit 0 of the stream
is the top bit of byte 0, as ``np.packbits``), and padded with zeros to whole bytes.

- unary(q), q >= 0: q zeros then a one. ``unary(3) = 0001``.
- Elias gamma of n >= 1 (Elias 1975), with ``L = floor(log2 n) + 1`` the bit length of
  n: L - 1 zeros, then n in binary on L bits (which starts with its leading 1). Length
  ``2 floor(log2 n) + 1``. ``gamma(1) = 1``, ``gamma(2) = 010``, ``gamma(5) = 00101``,
  ``gamma(9) = 0001001``.
- Golomb-Rice of n >= 0 with parameter ``m = 2^r`` (Golomb 1966, Rice 1979):
  unary(n >> r), then the r low bits of n, MSB first. Length ``(n >> r) + 1 + r``.
  ``rice(9, r=2) = 001 01``, ``rice(0, r=3) = 1 000``, ``rice(5, r=0) = 000001``.

A *codeword* of the source coder is the code of one non-zero level: the Golomb-Rice
code of the zero run before it, one sign bit (1 = negative), and the Elias gamma code of
its magnitude; a stream is the codewords of the non-zeros in order. Its length is
``sum_i [(run_i >> r) + 1 + r] + n + sum_i (2 floor(log2 |l_i|) + 1)``.

:func:`write_codewords` builds the stream with numpy (loops over the <= 32 bit
positions of a field, never over entries); :func:`read_codewords` walks it with a small
pure-Python loop over the codewords only, each step O(1) thanks to a "next non-zero
byte" table, then extracts every field with numpy. Readers never loop on a malformed stream:
every unary prefix is found by one table look-up and bounded by the caller's limit, the
number of codewords is checked against the bits available before the loop, and every
read beyond the end raises :class:`PayloadError`.
"""

from __future__ import annotations

import numpy as np

from .base import PayloadError


def bit_length(n: np.ndarray) -> np.ndarray:
    """``int.bit_length`` of every entry of a non-negative integer array (< 2^53), int64."""
    n = np.asarray(n, dtype=np.int64)
    return np.frexp(n.astype(np.float64))[1].astype(np.int64)


def gamma_lengths(n: np.ndarray) -> np.ndarray:
    """Lengths of the Elias gamma codes of n >= 1: ``2 floor(log2 n) + 1``."""
    return 2 * bit_length(n) - 1


def rice_lengths(n: np.ndarray, r: int) -> np.ndarray:
    """Lengths of the Golomb-Rice codes of n >= 0 with parameter 2^r: ``(n >> r) + 1 + r``."""
    return (np.asarray(n, dtype=np.int64) >> r) + 1 + r


def gamma_length(n: int) -> int:
    """Length of the Elias gamma code of one integer n >= 1."""
    return 2 * int(n).bit_length() - 1


# ---------------------------------------------------------------- scalar bit I/O


class BitWriter:
    """Appends bits MSB first; scalar writes for headers, arrays for bulk codewords."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._small: list[int] = []

    def _flush(self) -> None:
        if self._small:
            self._chunks.append(np.array(self._small, dtype=np.uint8))
            self._small = []

    def write(self, value: int, nbits: int) -> None:
        """The ``nbits`` low bits of ``value``, MSB first."""
        if nbits < 0 or value < 0 or value >> nbits:
            raise ValueError(f"{value} does not fit in {nbits} bits")
        self._small.extend((value >> i) & 1 for i in range(nbits - 1, -1, -1))

    def write_unary(self, q: int) -> None:
        """q zeros then a one."""
        if q < 0:
            raise ValueError(f"unary code of a negative number {q}")
        self._small.extend([0] * q)
        self._small.append(1)

    def write_gamma(self, n: int) -> None:
        """Elias gamma of n >= 1."""
        if n < 1:
            raise ValueError(f"Elias gamma codes integers >= 1, got {n}")
        length = int(n).bit_length()
        self._small.extend([0] * (length - 1))
        self.write(int(n), length)

    def write_rice(self, n: int, r: int) -> None:
        """Golomb-Rice of n >= 0 with parameter 2^r."""
        if n < 0 or r < 0:
            raise ValueError(f"Golomb-Rice codes n >= 0 with r >= 0, got n = {n}, r = {r}")
        self.write_unary(n >> r)
        self.write(n & ((1 << r) - 1), r)

    def write_bits(self, bits: np.ndarray) -> None:
        """Append an array of 0/1 bits."""
        self._flush()
        self._chunks.append(np.asarray(bits, dtype=np.uint8))

    def bits(self) -> np.ndarray:
        """Everything written, as a uint8 array of 0/1."""
        self._flush()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return sum(c.size for c in self._chunks) + len(self._small)

    def getvalue(self) -> bytes:
        """The bits packed MSB first, zero-padded to whole bytes."""
        return np.packbits(self.bits()).tobytes()

    def to01(self) -> str:
        """The bits as a string of '0' / '1' (for tests)."""
        return "".join(map(str, self.bits().tolist()))


class BitReader:
    """Reads a byte string MSB first; every read past the end raises :class:`PayloadError`.

    :meth:`next_one` finds the next 1 bit in O(1) whatever the gap: within the current
    byte by ``int.bit_length``, beyond it through a "next non-zero byte" table (int32,
    4 bytes per payload byte, built with numpy). The 0/1 array of the bits (``bits``,
    one byte per bit) serves the vectorized field extraction.
    """

    def __init__(self, data: bytes) -> None:
        raw = np.frombuffer(data, dtype=np.uint8)
        self.nbytes = int(raw.size)
        self.nbits = 8 * self.nbytes
        self.data = bytes(data) + b"\x00"  # a sentinel byte for p == nbits
        table = np.full(self.nbytes + 2, self.nbytes, dtype=np.int32)
        nonzero = np.flatnonzero(raw)
        table[nonzero] = nonzero
        self._next_byte = memoryview(np.minimum.accumulate(table[::-1])[::-1].copy())
        self.bits = np.unpackbits(raw)
        self.pos = 0

    def next_one(self, p: int) -> int:
        """The position of the first 1 bit at or after ``p`` (``nbits`` if none); p <= nbits."""
        byte = p >> 3
        v = self.data[byte] & (0xFF >> (p & 7))
        if v:
            return (byte << 3) | (8 - v.bit_length())
        byte = self._next_byte[byte + 1]
        if byte >= self.nbytes:
            return self.nbits
        return (byte << 3) | (8 - self.data[byte].bit_length())

    @property
    def remaining(self) -> int:
        """Bits not read yet."""
        return self.nbits - self.pos

    def _truncated(self, what: str) -> PayloadError:
        return PayloadError(f"truncated payload: the bit stream ends inside {what}")

    def read(self, nbits: int, what: str = "a field") -> int:
        """The next ``nbits`` bits as an unsigned integer."""
        end = self.pos + nbits
        if end > self.nbits:
            raise self._truncated(what)
        value = 0
        for b in self.bits[self.pos : end].tolist():
            value = (value << 1) | b
        self.pos = end
        return value

    def read_unary(self, limit: int, what: str = "a unary code") -> int:
        """A unary code q <= ``limit`` (``PayloadError`` beyond it or at the end)."""
        t = self.next_one(self.pos)
        if t >= self.nbits:
            raise self._truncated(what)
        if t - self.pos > limit:
            raise PayloadError(f"bad stream: {what} of {t - self.pos} exceeds {limit}")
        q = t - self.pos
        self.pos = t + 1
        return q

    def read_gamma(self, max_bits: int, what: str = "an Elias gamma code") -> int:
        """An Elias gamma code of at most ``max_bits`` significant bits."""
        u = self.next_one(self.pos)
        if u >= self.nbits:
            raise self._truncated(what)
        length = u - self.pos + 1
        if length > max_bits:
            raise PayloadError(f"bad stream: {what} of {length} bits exceeds {max_bits}")
        self.pos = u
        return self.read(length, what)

    def read_rice(self, r: int, limit: int, what: str = "a Golomb-Rice code") -> int:
        """A Golomb-Rice code with parameter 2^r of a value <= ``limit``."""
        n = (self.read_unary(limit >> r, what) << r) | self.read(r, what)
        if n > limit:
            raise PayloadError(f"bad stream: {what} of {n} exceeds {limit}")
        return n

    def check_end(self) -> None:
        """Only the zero padding (< 8 bits) may remain."""
        rest = self.remaining
        if rest >= 8 or self.next_one(self.pos) < self.nbits:
            kind = "oversized" if rest >= 8 else "malformed"
            raise PayloadError(f"{kind} payload: {rest} bits after the last codeword")


# ---------------------------------------------------------------- codewords (vectorized)


def best_rice_parameter(runs: np.ndarray) -> int:
    """The r in 0..31 minimizing ``sum_i (run_i >> r) + n r`` (the Golomb-Rice part of the
    stream; ties: the smallest r). 0 when there is no run."""
    runs = np.asarray(runs, dtype=np.int64)
    if runs.size == 0:
        return 0
    top = min(31, int(runs.max()).bit_length())
    costs = [int(np.sum(runs >> r)) + runs.size * r for r in range(top + 1)]
    return int(np.argmin(costs))


def codewords_length(runs: np.ndarray, magnitudes: np.ndarray, r: int) -> int:
    """Exact bits of :func:`write_codewords`: ``sum(run >> r) + n (r + 2) + sum gamma``."""
    runs = np.asarray(runs, dtype=np.int64)
    return int(np.sum(runs >> r) + runs.size * (r + 2) + np.sum(gamma_lengths(magnitudes)))


def write_codewords(
    runs: np.ndarray, negative: np.ndarray, magnitudes: np.ndarray, r: int
) -> np.ndarray:
    """The codewords ``rice(run_i, r) | sign_i | gamma(|l_i|)`` as a 0/1 uint8 array.

    ``runs`` >= 0, ``magnitudes`` in 1..2^31-1, ``r`` in 0..31. Vectorized: one numpy
    pass per bit position of a field (<= 31 + 31), none per entry.
    """
    runs = np.asarray(runs, dtype=np.int64)
    mags = np.asarray(magnitudes, dtype=np.int64)
    neg = np.asarray(negative, dtype=np.uint8)
    if runs.size == 0:
        return np.zeros(0, dtype=np.uint8)
    quot = runs >> r
    length = bit_length(mags)
    ends = np.cumsum(quot + r + 2 * length + 1)
    t = ends - (r + 2 * length + 1)  # the unary terminator of each codeword
    out = np.zeros(int(ends[-1]), dtype=np.uint8)
    out[t] = 1
    for j in range(r):
        out[t + 1 + j] = (runs >> (r - 1 - j)) & 1
    out[t + 1 + r] = neg
    lead = t + r + length + 1  # the leading 1 of the gamma code's binary part
    for j in range(int(length.max())):
        have = length > j
        out[lead[have] + j] = (mags[have] >> (length[have] - 1 - j)) & 1
    return out


def read_codewords(
    reader: BitReader, count: int, r: int, max_run: int, max_magnitude: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(runs, negative, magnitudes) of ``count`` codewords at the reader's position.

    Raises :class:`PayloadError` on a truncated stream, a run above ``max_run`` or a
    magnitude above ``max_magnitude`` (checked on its gamma length first, so no prefix is
    longer than ``bit_length(max_magnitude)``). The loop runs ``count`` times at most,
    and ``count`` is checked against the bits left (a codeword has >= r + 3 bits).
    """
    if count * (r + 3) > reader.remaining:
        raise PayloadError(
            f"truncated payload: {count} codewords need at least {count * (r + 3)} bits, "
            f"{reader.remaining} left"
        )
    nxt, n, p = reader.next_one, reader.nbits, reader.pos  # nxt(p): O(1), see BitReader
    max_quot = max_run >> r
    max_len = int(max_magnitude).bit_length()
    ts = [0] * count
    us = [0] * count
    for i in range(count):
        t = nxt(p)
        if t >= n:
            raise reader._truncated(f"codeword {i}")
        if t - p > max_quot:
            raise PayloadError(f"bad stream: codeword {i} codes a run above {max_run}")
        g = t + r + 2
        if g >= n:
            raise reader._truncated(f"codeword {i}")
        u = nxt(g)
        if u - g >= max_len:
            if u >= n:
                raise reader._truncated(f"codeword {i}")
            raise PayloadError(f"bad stream: codeword {i} codes a level above {max_magnitude}")
        p = 2 * u - g + 1
        if p > n:
            raise reader._truncated(f"codeword {i}")
        ts[i] = t
        us[i] = u
    t = np.array(ts, dtype=np.int64)
    u = np.array(us, dtype=np.int64)
    length = u - (t + r + 2) + 1
    starts = np.empty(count, dtype=np.int64)
    if count:
        starts[0] = reader.pos
        starts[1:] = (u + length)[:-1]
    reader.pos = p
    bits = reader.bits
    runs = t - starts
    for j in range(r):
        runs = (runs << 1) | bits[t + 1 + j]
    negative = bits[t + 1 + r].astype(bool)
    mags = np.zeros(count, dtype=np.int64)
    for j in range(int(length.max()) if count else 0):
        have = length > j
        mags[have] = (mags[have] << 1) | bits[u[have] + j]
    if count and (int(mags.max()) > max_magnitude or int(runs.max()) > max_run):
        raise PayloadError(f"bad stream: a level above {max_magnitude} or run above {max_run}")
    return runs, negative, mags
