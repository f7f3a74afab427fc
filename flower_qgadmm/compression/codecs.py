"""Codecs: fixed-width bit packing of quantizer codes into self-describing bytes.

Layout (little-endian) of the historic kinds, unchanged byte for byte:

- ``bits`` (uint8): 1..16 for packed levels, 32 for raw float32 entries;
- ``size`` (uint32): number of entries d;
- ``scale`` (float32): the range R, present only for packed levels;
- body: ``ceil(bits * d / 8)`` bytes; entry i occupies bits [i*b, (i+1)*b) of the
  little-endian bit stream (raw float32 entries: 4 bytes each).

So a b-bit message is 9 + ceil(b*d/8) bytes, a float32 message 5 + 4*d bytes.

The first byte doubles as a kind tag; the new kinds use values no width can take:

- "signed" (tag 64): ``tag u8 | d u32 | s u32 | scale f32`` (13 bytes), then the d
  offset codes ``level + s`` in ``0..2s``, ``w = ceil(log2(2s + 1))`` bits each, packed
  as above: 13 + ceil(w*d/8) bytes. As ``w = 1 + ceil(log2(s + 1))`` this is the
  dithered quantizer's nominal ``32 + d w`` plus 72 bits (tag, d, s) and the padding.
- "sparse" (tag 65): ``tag u8 | d u32 | k u32`` (9 bytes), then the k positions
  (strictly increasing) in ``ceil(log2 d)`` bits each, packed as above and padded to a
  byte, then the k float32 values: 9 + ceil(k ceil(log2 d) / 8) + 4k bytes, the nominal
  ``k (32 + ceil(log2 d))`` plus 72 bits and the padding.
"""

from __future__ import annotations

import struct

import numpy as np

from .base import Codec, PayloadError, Quantized, register_codec
from .compressors import MAX_SIGNED_LEVEL, index_width, signed_width
from .quantizers import MAX_LEVEL_BITS, check_level_bits

_HEAD = struct.Struct("<BI")
_SCALE = struct.Struct("<f")
_SIGNED_HEAD = struct.Struct("<BIIf")
_SPARSE_HEAD = struct.Struct("<BII")
RAW_BITS = 32
SIGNED_TAG = 64
SPARSE_TAG = 65


def header_bytes(bits: int) -> int:
    """Header length for a message of this width."""
    return _HEAD.size + (0 if bits == RAW_BITS else _SCALE.size)


def payload_bytes(bits: int, size: int) -> int:
    """Exact length of the payload for ``size`` entries of ``bits`` bits."""
    return header_bytes(bits) + (bits * size + 7) // 8


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack unsigned codes (< 2**bits) densely, ``bits`` (0..32) per entry, little-endian
    bit order."""
    c = np.ascontiguousarray(codes)
    if bits == 0:
        return b""
    if bits == 8:
        return c.astype(np.uint8).tobytes()
    if bits == 16:
        return c.astype("<u2").tobytes()
    if bits in (1, 2, 4):
        per = 8 // bits
        grid = np.zeros(-(-c.size // per) * per, np.uint8)
        grid[: c.size] = c
        shifts = np.arange(0, 8, bits, dtype=np.uint8)
        return np.bitwise_or.reduce(grid.reshape(-1, per) << shifts, axis=1).tobytes()
    shifts = np.arange(bits, dtype=np.uint32)
    bitmat = ((c.astype(np.uint32)[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bitmat.ravel(), bitorder="little").tobytes()


def unpack_codes(body: bytes, bits: int, size: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`; returns ``uint32`` codes."""
    if bits == 0:
        return np.zeros(size, dtype=np.uint32)
    raw = np.frombuffer(body, dtype=np.uint8)
    if bits == 8:
        return raw.astype(np.uint32)
    if bits == 16:
        return np.frombuffer(body, dtype="<u2").astype(np.uint32)
    if bits in (1, 2, 4):
        shifts = np.arange(0, 8, bits, dtype=np.uint8)
        grid = (raw[:, None] >> shifts) & np.uint8(2**bits - 1)
        return grid.ravel()[:size].astype(np.uint32)
    bitmat = np.unpackbits(raw, count=size * bits, bitorder="little").reshape(size, bits)
    weights = (np.uint32(1) << np.arange(bits, dtype=np.uint32)).astype(np.uint32)
    return bitmat.astype(np.uint32) @ weights


_MAX_SIZE = 2**32 - 1


def signed_payload_bytes(levels: int, size: int) -> int:
    """Length of a fixed-width "signed" payload: 13 + ceil(w d / 8), w = ceil(log2(2s+1))."""
    return _SIGNED_HEAD.size + (signed_width(levels) * size + 7) // 8


def sparse_payload_bytes(count: int, size: int) -> int:
    """Length of a fixed-width "sparse" payload: 9 + ceil(k ceil(log2 d) / 8) + 4 k."""
    return _SPARSE_HEAD.size + (index_width(size) * count + 7) // 8 + 4 * count


def check_scale(scale: float, what: str = "range R") -> float:
    """``scale`` if finite, >= 0 and a float32 value; ``ValueError`` otherwise."""
    scale = float(scale)
    if not (np.isfinite(scale) and scale >= 0 and float(np.float32(scale)) == scale):
        raise ValueError(f"{what} = {scale} must be finite, >= 0 and a float32 value")
    return scale


def check_signed(q: Quantized) -> tuple[np.ndarray, int, float]:
    """(codes as int64, s, scale) of a "signed" message; ``ValueError`` if it is not one
    every codec can write (1-D integer levels in [-s, s], s in 1..2^31-1, float32 scale,
    ``bits`` the dense width)."""
    codes = np.asarray(q.codes)
    if codes.ndim != 1 or codes.shape[0] > _MAX_SIZE:
        raise ValueError(f"cannot encode codes of shape {codes.shape}: need 1-D, < 2^32")
    s = q.levels
    if (
        isinstance(s, bool)
        or not isinstance(s, (int, np.integer))
        or not 1 <= s <= MAX_SIGNED_LEVEL
    ):
        raise ValueError(f"signed levels: s = {s!r} must be an integer in 1..{MAX_SIGNED_LEVEL}")
    s = int(s)
    if q.bits != signed_width(s):
        raise ValueError(f"signed levels: bits = {q.bits}, s = {s} needs {signed_width(s)}")
    if codes.size and codes.dtype.kind not in "ui":
        raise ValueError(f"signed levels must be integers, got {codes.dtype}")
    codes = codes.astype(np.int64)
    if codes.size and int(np.abs(codes).max()) > s:
        raise ValueError(f"signed level {int(np.abs(codes).max())} exceeds s = {s}")
    return codes, s, check_scale(q.scale, "signed scale")


def check_sparse(q: Quantized) -> tuple[np.ndarray, np.ndarray, int]:
    """(positions as int64, values as float32, d) of a "sparse" message; ``ValueError``
    unless positions are 1-D, strictly increasing, in ``0..d-1`` and values finite."""
    index = np.asarray(q.index)
    values = np.asarray(q.codes)
    dim = int(q.dim)
    if index.ndim != 1 or values.shape != index.shape:
        raise ValueError(
            f"sparse: index {index.shape} and values {values.shape} must be 1-D, equal"
        )
    if not 0 <= dim <= _MAX_SIZE:
        raise ValueError(f"sparse: dimension {dim} must be in 0..2^32-1")
    if q.bits != 32:
        raise ValueError(f"sparse: values are float32, bits = {q.bits} must be 32")
    if index.size:
        if index.dtype.kind not in "ui":
            raise ValueError(f"sparse: positions must be integers, got {index.dtype}")
        index = index.astype(np.int64)
        if index[0] < 0 or index[-1] >= dim or np.any(np.diff(index) <= 0):
            raise ValueError(f"sparse: positions must be strictly increasing in 0..{dim - 1}")
    values = np.ascontiguousarray(values, dtype="<f4")
    if not np.all(np.isfinite(values)):
        raise ValueError("cannot encode non-finite float32 values")
    return index.astype(np.int64), values, dim


def _check_size(n: int, size: int | None) -> None:
    if size is not None and n != size:
        raise PayloadError(f"payload holds {n} entries, the receiver expects {size}")


def _check_length(data: bytes, expected: int, what: str) -> None:
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "oversized"
        raise PayloadError(f"{kind} payload: {len(data)} bytes, {what} need {expected}")


def check_levels(q: Quantized) -> tuple[np.ndarray, int, float]:
    """(codes, b, R) of a "levels" message; ValueError for what no decoder would accept
    (shared by every codec that writes levels)."""
    codes = np.asarray(q.codes)
    if codes.ndim != 1 or codes.shape[0] > _MAX_SIZE:
        raise ValueError(f"cannot encode codes of shape {codes.shape}: need 1-D, < 2^32")
    bits = check_level_bits(q.bits, key="Quantized.bits (or 32 for raw float32)")
    scale = check_scale(q.scale)
    if codes.size and (
        codes.dtype.kind not in "ui" or (codes.dtype.kind == "i" and codes.min() < 0)
    ):
        raise ValueError(f"level codes must be non-negative integers, got {codes.dtype}")
    if codes.size and int(codes.max()) > 2**bits - 1:
        raise ValueError(f"level code {int(codes.max())} does not fit in {bits} bits")
    return codes, bits, scale


@register_codec("fixed-width")
class FixedWidthCodec(Codec):
    """Dense b-bit packing with a 9-byte header (5 bytes for the raw float32 path).

    Beyond the paper's count (``b*d + 32`` with R, or ``32*d``) a payload carries the
    40-bit width + size header and the padding of the body to whole bytes.
    ``encode`` refuses (``ValueError``) what ``decode`` would reject, so a sender cannot
    emit a payload its receiver throws away.

    Also writes "signed" levels (tag 64, offset codes of ``ceil(log2(2s+1))`` bits) and
    "sparse" messages (tag 65, ``ceil(log2 d)``-bit positions + float32 values), each
    with 72 bits beyond the nominal count; see the module docstring.
    """

    header_overhead_bits = 8 * _HEAD.size
    kinds = frozenset({"levels", "raw", "signed", "sparse"})

    def payload_bytes(self, bits: int, size: int) -> int:
        return payload_bytes(bits, size)

    def payload_length(self, q: Quantized) -> int:
        if q.kind == "signed":
            return signed_payload_bytes(q.levels, q.size)
        if q.kind == "sparse":
            return sparse_payload_bytes(int(np.asarray(q.codes).shape[0]), q.size)
        return payload_bytes(q.bits, q.size)

    def overhead_bits(self, q: Quantized) -> int:
        """40 bits (width, d) for levels / raw; 72 (tag, d, s or k) for signed / sparse."""
        return 72 if q.kind in ("signed", "sparse") else self.header_overhead_bits

    def encode(self, q: Quantized) -> bytes:
        if q.kind == "signed":
            codes, s, scale = check_signed(q)
            head = _SIGNED_HEAD.pack(SIGNED_TAG, codes.size, s, scale)
            return head + pack_codes((codes + s).astype(np.uint32), signed_width(s))
        if q.kind == "sparse":
            index, values, dim = check_sparse(q)
            head = _SPARSE_HEAD.pack(SPARSE_TAG, dim, index.size)
            return head + pack_codes(index.astype(np.uint32), index_width(dim)) + values.tobytes()
        codes = np.asarray(q.codes)
        if codes.ndim != 1 or codes.shape[0] > _MAX_SIZE:
            raise ValueError(f"cannot encode codes of shape {codes.shape}: need 1-D, < 2^32")
        if q.bits == RAW_BITS:
            body = np.ascontiguousarray(codes, dtype="<f4")
            if not np.all(np.isfinite(body)):
                raise ValueError("cannot encode non-finite float32 values")
            return _HEAD.pack(RAW_BITS, q.size) + body.tobytes()
        codes, bits, scale = check_levels(q)
        head = _HEAD.pack(bits, q.size) + _SCALE.pack(scale)
        return head + pack_codes(codes, bits)

    def decode(self, payload: bytes, size: int | None = None) -> Quantized:
        data = bytes(payload)
        if len(data) < _HEAD.size:
            raise PayloadError(
                f"truncated payload: {len(data)} bytes, a header needs at least {_HEAD.size}"
            )
        if data[0] == SIGNED_TAG:
            return self._decode_signed(data, size)
        if data[0] == SPARSE_TAG:
            return self._decode_sparse(data, size)
        bits, n = _HEAD.unpack_from(data)
        if bits != RAW_BITS:
            try:
                check_level_bits(bits)
            except ValueError:
                raise PayloadError(
                    f"bad header: width {bits} bits is not 1..{MAX_LEVEL_BITS} or {RAW_BITS} "
                    f"(nor the tag {SIGNED_TAG} signed / {SPARSE_TAG} sparse)"
                ) from None
        _check_size(n, size)
        _check_length(data, payload_bytes(bits, n), f"{n} entries of {bits} bits")
        if bits == RAW_BITS:
            values = np.frombuffer(data, dtype="<f4", offset=_HEAD.size)  # read-only view
            if not np.all(np.isfinite(values)):
                raise PayloadError("payload carries non-finite float32 values")
            return Quantized(values, 0.0, RAW_BITS)
        (scale,) = _SCALE.unpack_from(data, _HEAD.size)
        if not np.isfinite(scale) or scale < 0:
            raise PayloadError(f"bad header: range R = {scale} must be finite and >= 0")
        codes = unpack_codes(data[header_bytes(bits) :], bits, n)
        return Quantized(codes, float(scale), int(bits))

    def _decode_signed(self, data: bytes, size: int | None) -> Quantized:
        if len(data) < _SIGNED_HEAD.size:
            raise PayloadError(f"truncated payload: {len(data)} bytes, a signed header needs 13")
        _, n, s, scale = _SIGNED_HEAD.unpack_from(data)
        if not 1 <= s <= MAX_SIGNED_LEVEL:
            raise PayloadError(f"bad header: signed levels s = {s} not in 1..{MAX_SIGNED_LEVEL}")
        if not np.isfinite(scale) or scale < 0:
            raise PayloadError(f"bad header: signed scale {scale} must be finite and >= 0")
        _check_size(n, size)
        width = signed_width(s)
        _check_length(data, signed_payload_bytes(s, n), f"{n} signed levels of {width} bits")
        offsets = unpack_codes(data[_SIGNED_HEAD.size :], width, n)
        if n and int(offsets.max()) > 2 * s:
            raise PayloadError(f"signed level {int(offsets.max()) - s} exceeds s = {s}")
        codes = (offsets.astype(np.int64) - s).astype(np.int32)
        return Quantized(codes, float(scale), width, "signed", int(s))

    def _decode_sparse(self, data: bytes, size: int | None) -> Quantized:
        if len(data) < _SPARSE_HEAD.size:
            raise PayloadError(f"truncated payload: {len(data)} bytes, a sparse header needs 9")
        _, n, k = _SPARSE_HEAD.unpack_from(data)
        if k > n:
            raise PayloadError(f"bad header: {k} kept entries of a vector of {n}")
        _check_size(n, size)
        _check_length(data, sparse_payload_bytes(k, n), f"{k} of {n} sparse entries")
        width = index_width(n)
        split = len(data) - 4 * k
        index = unpack_codes(data[_SPARSE_HEAD.size : split], width, k).astype(np.int64)
        if k and (index[-1] >= n or np.any(np.diff(index) <= 0)):
            raise PayloadError(f"sparse positions are not strictly increasing in 0..{n - 1}")
        values = np.frombuffer(data, dtype="<f4", offset=split)
        if not np.all(np.isfinite(values)):
            raise PayloadError("payload carries non-finite float32 values")
        return Quantized(values, 0.0, 32, "sparse", index=index, dim=int(n))
