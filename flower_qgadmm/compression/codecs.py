"""Codecs: fixed-width bit packing of quantizer codes into self-describing bytes.

Layout (little-endian):

- ``bits`` (uint8): 1..16 for packed levels, 32 for raw float32 entries;
- ``size`` (uint32): number of entries d;
- ``scale`` (float32): the range R, present only for packed levels;
- body: ``ceil(bits * d / 8)`` bytes; entry i occupies bits [i*b, (i+1)*b) of the
  little-endian bit stream (raw float32 entries: 4 bytes each).

So a b-bit message is 9 + ceil(b*d/8) bytes, a float32 message 5 + 4*d bytes.
"""

from __future__ import annotations

import struct

import numpy as np

from .base import Codec, PayloadError, Quantized, register_codec
from .quantizers import MAX_LEVEL_BITS, check_level_bits

_HEAD = struct.Struct("<BI")
_SCALE = struct.Struct("<f")
RAW_BITS = 32


def header_bytes(bits: int) -> int:
    """Header length for a message of this width."""
    return _HEAD.size + (0 if bits == RAW_BITS else _SCALE.size)


def payload_bytes(bits: int, size: int) -> int:
    """Exact length of the payload for ``size`` entries of ``bits`` bits."""
    return header_bytes(bits) + (bits * size + 7) // 8


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack unsigned codes (< 2**bits) densely, ``bits`` per entry, little-endian bit order."""
    c = np.ascontiguousarray(codes)
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


@register_codec("fixed-width")
class FixedWidthCodec(Codec):
    """Dense b-bit packing with a 9-byte header (5 bytes for the raw float32 path).

    Beyond the paper's count (``b*d + 32`` with R, or ``32*d``) a payload carries the
    40-bit width + size header and the padding of the body to whole bytes.
    ``encode`` refuses (``ValueError``) what ``decode`` would reject, so a sender cannot
    emit a payload its receiver throws away.
    """

    header_overhead_bits = 8 * _HEAD.size

    def payload_bytes(self, bits: int, size: int) -> int:
        return payload_bytes(bits, size)

    def encode(self, q: Quantized) -> bytes:
        codes = np.asarray(q.codes)
        if codes.ndim != 1 or codes.shape[0] > _MAX_SIZE:
            raise ValueError(f"cannot encode codes of shape {codes.shape}: need 1-D, < 2^32")
        if q.bits == RAW_BITS:
            body = np.ascontiguousarray(codes, dtype="<f4")
            if not np.all(np.isfinite(body)):
                raise ValueError("cannot encode non-finite float32 values")
            return _HEAD.pack(RAW_BITS, q.size) + body.tobytes()
        bits = check_level_bits(q.bits, key="Quantized.bits (or 32 for raw float32)")
        scale = float(q.scale)
        if not (np.isfinite(scale) and scale >= 0 and float(np.float32(scale)) == scale):
            raise ValueError(f"range R = {q.scale} must be finite, >= 0 and a float32 value")
        if codes.size and (
            codes.dtype.kind not in "ui" or (codes.dtype.kind == "i" and codes.min() < 0)
        ):
            raise ValueError(f"level codes must be non-negative integers, got {codes.dtype}")
        if codes.size and int(codes.max()) > 2**bits - 1:
            raise ValueError(f"level code {int(codes.max())} does not fit in {bits} bits")
        head = _HEAD.pack(bits, q.size) + _SCALE.pack(scale)
        return head + pack_codes(codes, bits)

    def decode(self, payload: bytes, size: int | None = None) -> Quantized:
        data = bytes(payload)
        if len(data) < _HEAD.size:
            raise PayloadError(
                f"truncated payload: {len(data)} bytes, a header needs at least {_HEAD.size}"
            )
        bits, n = _HEAD.unpack_from(data)
        if bits != RAW_BITS:
            try:
                check_level_bits(bits)
            except ValueError:
                raise PayloadError(
                    f"bad header: width {bits} bits is not 1..{MAX_LEVEL_BITS} or {RAW_BITS}"
                ) from None
        if size is not None and n != size:
            raise PayloadError(f"payload holds {n} entries, the receiver expects {size}")
        expected = payload_bytes(bits, n)
        if len(data) != expected:
            kind = "truncated" if len(data) < expected else "oversized"
            raise PayloadError(
                f"{kind} payload: {len(data)} bytes, {n} entries of {bits} bits need {expected}"
            )
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
