"""Codecs: fixed-width bit packing of quantizer codes into self-describing bytes.

Layout of the levels and raw kinds (little-endian):

- ``bits`` (uint8): 1..16 for packed levels, 32 for raw float32 entries; on a levels
  width, the flag :data:`SHORT_RANGE` (``0x80 | bits``) says the range takes 2 bytes;
- ``size``: the number of entries d as an unsigned LEB128 varint (:func:`write_varint`:
  7 bits per byte, low groups first, the high bit set on every byte but the last; as in
  protobuf): 1 byte for d < 2^7, 2 for d < 2^14, 3 for d < 2^21, 4 for d < 2^28, 5 up to
  2^32 - 1;
- ``scale``: the range R, present only for packed levels: 2 bytes (the high half of its
  float32, a bfloat16) when its low 16 bits are 0, which the stochastic quantizer ensures
  by rounding R up (:func:`~.quantizers.bfloat16_ceil`); else the float32 in 4 bytes;
- body: ``ceil(bits * d / 8)`` bytes; entry i occupies bits [i*b, (i+1)*b) of the
  little-endian bit stream (raw float32 entries: 4 bytes each).

So a b-bit message of the stochastic quantizer is ``3 + v(d) + ceil(b*d/8)`` bytes (``5
+ ...`` with a 32-bit range) and a float32 message ``1 + v(d) + 4*d``, with ``v(n)`` the
varint's length (:func:`varint_length`): a 3-bit message of d = 10 entries is 8 bytes, its
float32 message 42. The header is :func:`header_bytes`.

The first byte doubles as a kind tag; the other kinds use values no width can take:

- "signed" (tag 64): ``tag u8 | d varint | s varint | scale f32``, then the d offset
  codes ``level + s`` in ``0..2s``, ``w = ceil(log2(2s + 1))`` bits each, packed as
  above: ``5 + v(d) + v(s) + ceil(w*d/8)`` bytes. As ``w = 1 + ceil(log2(s + 1))`` this
  is the dithered quantizer's nominal ``32 + d w`` plus ``8 (1 + v(d) + v(s))`` bits
  (tag, d, s) and the padding.
- "sparse" (tag 65): ``tag u8 | d varint | k varint``, then the k positions (strictly
  increasing) in ``ceil(log2 d)`` bits each, packed as above and padded to a byte, then
  the k float32 values: ``1 + v(d) + v(k) + ceil(k ceil(log2 d) / 8) + 4k`` bytes, the
  nominal ``k (32 + ceil(log2 d))`` plus ``8 (1 + v(d) + v(k))`` bits and the padding.

Every payload has exactly one valid form: the varints are minimal (no trailing 0x00
group, at most 5 bytes, values < 2^32), a range that fits 2 bytes is not written in 4, the
padding bits are 0, the length is exact, so
``decode`` accepts a payload only if ``encode`` of what it returns gives the same bytes.
:meth:`FixedWidthCodec.check_envelope` checks the header, the length and the padding in
O(1) (a varint is at most 5 bytes); ``decode`` runs it, then checks the values (signed
levels <= s, positions strictly increasing and < d, finite float32). Packing streams
:data:`PACK_CHUNK` entries at a time (bounded extra memory at every width); widths 1, 2,
4, 8 and 16 have byte-level fast paths writing the same bytes.
:meth:`FixedWidthCodec.decode_values` is ``quantizer.dequantize(decode(payload))`` in one
step (a byte-to-floats gather for 1, 2 and 4-bit stochastic levels), the same floats.

Until issue 12 the size, s and k fields were uint32 and R always a float32 (a b-bit
message was 9 + ceil(b d / 8) bytes, a float32 one 5 + 4d): for small models the header
dominated the message.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from ..numeric import all_finite
from .base import (
    MAX_SCALE,
    Codec,
    PayloadError,
    Quantized,
    Quantizer,
    ScaleOverflowError,
    check_declared_size,
    check_expected_size,
    check_header_scale,
    dense_quantized,
    payload_view,
    register_codec,
    registered_name,
)
from .compressors import MAX_SIGNED_LEVEL, index_width, signed_width
from .quantizers import (
    FLOAT32_MAX,
    MAX_LEVEL_BITS,
    Float32Quantizer,
    StochasticQuantizer,
    check_level_bits,
    is_float32,
)

_SCALE = struct.Struct("<f")
RAW_BITS = 32
SHORT_RANGE = 0x80
"""Flag on a levels width byte: the range R that follows is 2 bytes, the high half of a
float32 whose low half is 0 (a bfloat16 value)."""
SIGNED_TAG = 64
SPARSE_TAG = 65
_MAX_SIZE = 2**32 - 1
MAX_VARINT_BYTES = 5
"""Longest varint a header field may take (values up to 2^32 - 1)."""
_MIN_HEAD = 2  # the tag and a 1-byte varint


def varint_length(value: int) -> int:
    """Bytes of the LEB128 varint of ``value`` (0..2^32-1): ``max(1, ceil(bit_length /
    7))``, so 1 for 0..127, 2 up to 2^14 - 1, ..., 5 up to 2^32 - 1."""
    return max(1, -(-int(value).bit_length() // 7))


def write_varint(value: int) -> bytes:
    """The unsigned LEB128 varint of ``value`` (0..2^32-1): 7 bits per byte, low groups
    first, the high bit set on every byte but the last; the shortest form (the only one
    :func:`read_varint` accepts). ``ValueError`` outside 0..2^32-1."""
    value = int(value)
    if not 0 <= value <= _MAX_SIZE:
        raise ValueError(f"a header field is in 0..2^32-1, got {value}")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(view: memoryview | bytes, offset: int, what: str) -> tuple[int, int]:
    """(value, offset after it) of the varint at ``offset``; :class:`PayloadError` (naming
    the field ``what``) if the payload ends inside it, or it is not minimal (a last group
    0 after others), longer than :data:`MAX_VARINT_BYTES` or >= 2^32. Reads at most 5
    bytes."""
    length = len(view)
    if offset < length and view[offset] < 0x80:  # one byte (d < 128): minimal, < 2^32
        return view[offset], offset + 1
    value = 0
    for i in range(MAX_VARINT_BYTES):
        at = offset + i
        if at >= length:
            raise PayloadError(
                f"truncated payload: length {length} bytes ends inside the {what} field "
                f"(a varint from byte {offset})"
            )
        byte = view[at]
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if byte == 0 and i:
                raise PayloadError(
                    f"bad header: the {what} field is not a minimal varint (bytes "
                    f"{offset}..{at} end in a 0x00 group)"
                )
            if value > _MAX_SIZE:
                raise PayloadError(f"bad header: the {what} field is {value}, beyond 2^32 - 1")
            return value, at + 1
    raise PayloadError(
        f"bad header: the {what} field is a varint longer than {MAX_VARINT_BYTES} bytes "
        f"(from byte {offset})"
    )


def short_range(scale: float) -> bool:
    """Whether the float32 ``scale`` has its low 16 bits 0, so a levels header carries it
    in 2 bytes (:data:`SHORT_RANGE`): always true of the stochastic quantizer's R."""
    return _SCALE.pack(scale)[:2] == b"\0\0"


def header_bytes(bits: int, size: int, scale: float = 0.0) -> int:
    """Header length of a levels (``bits`` 1..16) or raw (``bits`` 32) message of ``size``
    entries: the width byte, the size varint and, for levels, the range ``scale``: 2
    bytes if :func:`short_range` (the stochastic quantizer's R; the default), else 4."""
    if bits == RAW_BITS:
        return 1 + varint_length(size)
    return 1 + varint_length(size) + (2 if short_range(scale) else _SCALE.size)


def payload_bytes(bits: int, size: int, scale: float = 0.0) -> int:
    """Exact length of the payload for ``size`` entries of ``bits`` bits (and, for
    levels, range ``scale``: see :func:`header_bytes`)."""
    return header_bytes(bits, size, scale) + (bits * size + 7) // 8


PACK_CHUNK = 1 << 16
"""Entries packed or unpacked per step (a multiple of 8, so every chunk starts on a byte):
the extra memory of :func:`pack_codes` / :func:`unpack_codes` is O(PACK_CHUNK), whatever
the width and the number of entries."""

SMALL_PACK = 1024
"""Up to this many entries, one bit matrix (d x b bytes, at most 32 KiB) is faster than
the grouped words of the chunked path (fewer numpy calls); the bytes are the same."""


def _pack_bits(codes: np.ndarray, bits: int) -> bytes:
    """Small arrays: a d x b matrix of bits, packed little-endian."""
    shifts = np.arange(bits, dtype=np.uint64)
    bitmat = ((codes.astype(np.uint64)[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bitmat.ravel(), bitorder="little").tobytes()


def _unpack_bits(raw: np.ndarray, bits: int, size: int) -> np.ndarray:
    """Inverse of :func:`_pack_bits` (``raw`` holds at least ``ceil(bits size / 8)`` bytes)."""
    bitmat = np.unpackbits(raw, count=size * bits, bitorder="little").reshape(size, bits)
    weights = np.uint64(1) << np.arange(bits, dtype=np.uint64)
    return (bitmat.astype(np.uint64) @ weights).astype(code_dtype(bits))


def _pack_groups(codes: np.ndarray, bits: int) -> np.ndarray:
    """The ``bits`` bytes of every group of 8 codes (``codes.size`` a multiple of 8).

    Code j of a group occupies bits ``[j b, (j + 1) b)`` of its group's ``b`` bytes,
    read as a little-endian integer: built in ``ceil(b / 8)`` uint64 words (a code
    of <= 32 bits straddles at most two), whose little-endian bytes are the group's.
    """
    groups = codes.reshape(-1, 8)
    nwords = (bits + 7) // 8
    words = np.zeros((groups.shape[0], nwords), dtype="<u8")
    for j in range(8):
        word, offset = divmod(j * bits, 64)
        column = groups[:, j]
        words[:, word] |= column << np.uint64(offset)
        if offset + bits > 64:
            words[:, word + 1] |= column >> np.uint64(64 - offset)
    return words.view(np.uint8)[:, :bits].ravel()


def _unpack_groups(body: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`_pack_groups`: ``uint64`` codes of ``body`` (``bits`` bytes per
    group of 8 codes)."""
    groups = body.size // bits
    nwords = (bits + 7) // 8
    padded = np.zeros((groups, 8 * nwords), dtype=np.uint8)
    padded[:, :bits] = body.reshape(groups, bits)
    words = padded.view("<u8")
    mask = np.uint64((1 << bits) - 1)
    out = np.empty((groups, 8), dtype=np.uint64)
    for j in range(8):
        word, offset = divmod(j * bits, 64)
        column = words[:, word] >> np.uint64(offset)
        if offset + bits > 64:
            column |= words[:, word + 1] << np.uint64(64 - offset)
        out[:, j] = column & mask
    return out.ravel()


_GATHER2 = 0x0104_1040
"""2^24 + 2^18 + 2^12 + 2^6: times a little-endian word of four 2-bit codes (code j at
bit 8j), it puts code j at bit 24 + 2j, the top byte being the packed byte (the other
partial products land in disjoint bit pairs below bit 24 or beyond bit 31: no carry)."""


_U8, _U2, _U32, _F4 = np.dtype(np.uint8), np.dtype("<u2"), np.dtype("<u4"), np.dtype("<f4")
_FOUR = np.uint16(4)
SMALL_PACK_STRIDED = 4096
"""Up to this many 4-bit codes, two strided halves are or-ed into bytes (fewer numpy calls
for the small models of the convex tasks); beyond it the contiguous uint16 words are
faster (strided access cost 3.5x at d = 10^6, measured)."""
_LOW_BITS = {b: np.uint8((1 << b) - 1) for b in (1, 2, 4)}
_GATHER2_WORD, _TOP_BYTE = np.uint32(_GATHER2), np.uint32(24)


def _pack_small_widths(codes: np.ndarray, bits: int, below: bool = False) -> bytes:
    """Widths 1, 2, 4 (8 // b codes per byte) from integer codes: the layout of
    :func:`_pack_groups` in a few uint8 / uint32 passes instead of d words. ``below``:
    the codes are known to be < 2^bits (checked levels), so their low bits need no mask."""
    low = codes.astype(_U8)  # the low 8 bits (modular for any integer dtype)
    if not below:
        low &= _LOW_BITS[bits]
    if bits == 1:
        return np.packbits(low, bitorder="little").tobytes()
    per = 8 // bits
    whole = low.size - low.size % per
    if bits == 2:
        words = low[:whole].view(_U32)
        words *= _GATHER2_WORD  # code j to bits 24 + 2j
        words >>= _TOP_BYTE
        body = words.astype(_U8).tobytes()
    elif whole <= SMALL_PACK_STRIDED:  # byte k: code 2k low, code 2k + 1 high (fewer calls)
        body = (low[0:whole:2] | (low[1:whole:2] << 4)).tobytes()
    else:  # long vectors: contiguous words, code 1 shifted to bits 4..7 beside code 0
        words = low[:whole].view(_U2)
        words |= words >> _FOUR
        body = words.astype(_U8).tobytes()
    if whole < low.size:  # the last, partial byte
        last = sum(int(c) << (j * bits) for j, c in enumerate(low[whole:]))
        body += bytes([last])
    return body


def _pack_levels(codes: np.ndarray, bits: int) -> bytes:
    """:func:`pack_codes` of levels that passed :func:`check_levels` (1-D, non-negative
    integers < 2^bits, bits 1..16): the same bytes, without masking the codes."""
    if bits in _LOW_BITS and codes.size:
        return _pack_small_widths(codes, bits, below=True)
    return pack_codes(codes, bits)


_BYTE_CODES = {
    b: (np.arange(256)[:, None] >> (b * np.arange(8 // b))) & ((1 << b) - 1) for b in (1, 2, 4)
}
"""Per width b in 1, 2, 4: row k holds the 8 // b codes byte k carries (as indices)."""

_LEVEL_CODES = {b: np.arange(2**b, dtype=np.float64) for b in _BYTE_CODES}
"""Per width b in 1, 2, 4: the 2^b codes as float64 (0., 1., ..., 2^b - 1)."""


def _unpack_small_widths(raw: np.ndarray, bits: int, size: int) -> np.ndarray:
    """Inverse of :func:`_pack_small_widths` (``raw`` holds at least ``ceil(b size / 8)``
    bytes; the padding bits are not read), as ``uint8``: each byte spread into a word
    with one code per byte (``unpackbits`` for 1 bit)."""
    per = 8 // bits
    body = raw[: -(-size // per)]
    if bits == 1:
        return np.unpackbits(body, count=size, bitorder="little")
    if bits == 2:  # code j at bits 2j -> 8j: shifted by 6, then the pairs by 12
        words = body.astype("<u4")
        words |= words << np.uint32(6)
        words |= words << np.uint32(12)
        words &= np.uint32(0x03030303)
    else:  # byte k = (code 2k+1, code 2k) -> little-endian word of both codes
        words = body.astype("<u2")
        words |= words << np.uint16(4)
        words &= np.uint16(0x0F0F)
    return words.view(np.uint8)[:size]


def code_dtype(bits: int) -> type[np.unsignedinteger]:
    """The narrowest unsigned type of ``bits``-bit codes: what :func:`unpack_codes`
    returns (uint8 up to 8 bits, uint16 up to 16, else uint32). Narrow codes are what
    keeps decoding within 2x a copy of the floats: at 2 bits the uint32 codes were half
    the memory traffic of unpacking and dequantizing."""
    return np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32


def _check_width(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 0 <= bits <= 32:
        raise ValueError(f"a packed width is an integer in 0..32, got {bits!r}")
    return int(bits)


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack unsigned codes (< 2**bits) densely, ``bits`` (0..32) per entry, little-endian
    bit order: entry i occupies bits ``[i b, (i + 1) b)`` of the stream, bit k of the
    stream being bit ``k % 8`` of byte ``k // 8``; ``ceil(b d / 8)`` bytes, the padding
    bits 0. Only the ``bits`` low bits of each code are written.

    Streams :data:`PACK_CHUNK` entries at a time: beyond the output, the extra memory is
    bounded whatever the width and the size.
    """
    bits = _check_width(bits)
    c = np.asarray(codes).reshape(-1)
    if bits == 0 or c.size == 0:
        return b""
    if bits == 8:
        return c.astype(np.uint8).tobytes()
    if bits == 16:
        return c.astype("<u2").tobytes()
    if bits in (1, 2, 4) and c.dtype.kind in "ui":
        return _pack_small_widths(c, bits)
    if c.size <= SMALL_PACK:
        return _pack_bits(c, bits)
    total = (bits * c.size + 7) // 8
    out = np.empty(total, dtype=np.uint8)
    mask = np.uint64((1 << bits) - 1)
    for start in range(0, c.size, PACK_CHUNK):
        part = c[start : start + PACK_CHUNK]
        chunk = np.zeros(-(-part.size // 8) * 8, dtype=np.uint64)
        chunk[: part.size] = part.astype(np.uint64)
        chunk &= mask
        packed = _pack_groups(chunk, bits)
        at = start * bits // 8  # a whole byte: start is a multiple of 8
        length = min(packed.size, total - at)
        out[at : at + length] = packed[:length]
    return out.tobytes()


def unpack_codes(body: bytes, bits: int, size: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: the ``size`` codes of the first ``ceil(bits * size
    / 8)`` bytes of ``body``, in the narrowest unsigned type of the width
    (:func:`code_dtype`; ``PayloadError`` if ``body`` is shorter; the padding bits are
    not read). Bounded extra memory, as :func:`pack_codes`."""
    bits = _check_width(bits)
    size = int(size)
    if bits == 0:
        return np.zeros(size, dtype=np.uint8)
    raw = np.frombuffer(body, dtype=np.uint8)
    need = (bits * size + 7) // 8
    if raw.size < need:
        raise PayloadError(
            f"truncated payload: {raw.size} bytes of codes, {size} entries of {bits} bits "
            f"need {need}"
        )
    if bits == 8:
        return raw[:size].copy()
    if bits == 16:
        return raw[: 2 * size].view("<u2").astype(np.uint16)
    if bits in (1, 2, 4):
        return _unpack_small_widths(raw, bits, size)
    if size <= SMALL_PACK:
        return _unpack_bits(raw, bits, size)
    out = np.empty(size, dtype=code_dtype(bits))
    for start in range(0, size, PACK_CHUNK):
        count = min(PACK_CHUNK, size - start)
        at = start * bits // 8
        chunk = np.zeros(-(-count // 8) * bits, dtype=np.uint8)
        available = min(chunk.size, need - at)
        chunk[:available] = raw[at : at + available]
        out[start : start + count] = _unpack_groups(chunk, bits)[:count]
    return out


@functools.lru_cache(maxsize=16)
def _raw_head(size: int) -> bytes:
    """The header of a float32 message of ``size`` entries: its tag and d."""
    return bytes((RAW_BITS,)) + write_varint(size)


def _all_raw(payloads: Sequence[object], size: int) -> bool:
    """Every one of ``payloads`` is the bytes of a float32 message of ``size`` entries:
    its header (tag 32 and the minimal varint of d: all of a float32 message's) and its
    length."""
    if size > _MAX_SIZE:
        return False
    head = _raw_head(size)
    length = len(head) + 4 * size
    return all([type(p) is bytes and len(p) == length and p.startswith(head) for p in payloads])


def signed_header_bytes(levels: int, size: int) -> int:
    """Header length of a fixed-width "signed" message: ``5 + v(d) + v(s)`` (tag, d, s,
    scale)."""
    return 1 + varint_length(size) + varint_length(levels) + _SCALE.size


def sparse_header_bytes(count: int, size: int) -> int:
    """Header length of a fixed-width "sparse" message: ``1 + v(d) + v(k)`` (tag, d, k)."""
    return 1 + varint_length(size) + varint_length(count)


def signed_payload_bytes(levels: int, size: int) -> int:
    """Length of a fixed-width "signed" payload: ``5 + v(d) + v(s) + ceil(w d / 8)``,
    ``w = ceil(log2(2s+1))``."""
    return signed_header_bytes(levels, size) + (signed_width(levels) * size + 7) // 8


def sparse_payload_bytes(count: int, size: int) -> int:
    """Length of a fixed-width "sparse" payload: ``1 + v(d) + v(k) + ceil(k ceil(log2 d) /
    8) + 4 k``."""
    return sparse_header_bytes(count, size) + (index_width(size) * count + 7) // 8 + 4 * count


def check_scale(scale: float, what: str = "range R") -> float:
    """``scale`` if finite, >= 0 and a float32 value; ``ValueError`` otherwise, and
    :class:`~.base.ScaleOverflowError` beyond :data:`~.base.MAX_SCALE` (no decoder
    accepts it)."""
    scale = float(scale)
    if not (math.isfinite(scale) and 0 <= scale <= FLOAT32_MAX and is_float32(scale)):
        raise ValueError(f"{what} = {scale} must be finite, >= 0 and a float32 value")
    if scale > MAX_SCALE:
        raise ScaleOverflowError(
            f"{what} = {scale:.7g} exceeds {MAX_SCALE:g}: the model diverged, no receiver "
            "accepts the payload"
        )
    return scale


def check_signed(q: Quantized) -> tuple[np.ndarray, int, float]:
    """(codes as int64, s, scale) of a "signed" message; ``ValueError`` if it is not one
    every codec can write (1-D integer levels in [-s, s], s in 1..2^31-1, float32 scale,
    ``bits`` the dense width)."""
    codes, s = _checked_signed_levels(q)
    return codes.astype(np.int64), s, check_scale(q.scale, "signed scale")


def _checked_signed_levels(q: Quantized) -> tuple[np.ndarray, int]:
    """(codes as given, s) after the checks of :func:`check_signed` but the scale's."""
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
    if codes.size:
        if codes.dtype == np.int32:  # the quantizers' levels: no |x| temporary
            top = max(int(codes.max()), -int(codes.min()))
        else:
            top = int(np.abs(codes.astype(np.int64)).max())
        if top > s:
            raise ValueError(f"signed level {top} exceeds s = {s}")
    return codes, s


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


def _check_length(length: int, expected: int, what: Callable[[], str]) -> None:
    """PayloadError unless a payload has the ``expected`` length (``what()`` names what
    needs it: the text is built only then, the relay checks every payload)."""
    if length != expected:
        kind = "truncated" if length < expected else "oversized"
        raise PayloadError(f"{kind} payload: length {length} bytes, {what()} is {expected}")


def _read_scale(
    view: memoryview,
    at: int,
    max_scale: float,
    name: str,
    header: Callable[[], str],
    short: bool = False,
) -> tuple[float, int]:
    """(the scale at ``at``, the offset of the body after it): a float32, or with
    ``short`` the high half of one in 2 bytes; PayloadError if the payload ends first
    (``header()`` names what needed it) or the scale is not valid."""
    body = at + (2 if short else _SCALE.size)
    if len(view) < body:
        raise PayloadError(f"truncated payload: length {len(view)} bytes, {header()} needs {body}")
    if short:
        (scale,) = _SCALE.unpack(bytes((0, 0, view[at], view[at + 1])))
    else:
        (scale,) = _SCALE.unpack_from(view, at)
    check_header_scale(scale, max_scale, name)
    return scale, body


def _check_padding(view: memoryview, end: int, body_bits: int) -> None:
    """The padding bits (the high bits of the body's last byte, ``end - 1``) are 0."""
    pad = -body_bits % 8
    if pad and view[end - 1] >> (8 - pad):
        raise PayloadError(f"malformed payload: the {pad} padding bits of the last byte are not 0")


class _Envelope(NamedTuple):
    """What a fixed-width header declares (after :meth:`FixedWidthCodec._envelope`)."""

    kind: str
    size: int  # d
    bits: int  # width of one dense entry (levels, signed: w; raw, sparse: 32)
    scale: float  # R or the signed scale; 0 for raw / sparse
    body: int  # offset of the body (the header's length)
    extra: int = 0  # signed: s; sparse: k


# _Envelope(*fields) with all six fields, without the named tuple's Python-level __new__
# (one per payload the relay checks)
_new_tuple = tuple.__new__


def _raw_values(view: memoryview, offset: int) -> np.ndarray:
    """The float32 values from ``offset`` to the end of a payload (a read-only view of
    it); :class:`PayloadError` if one is not finite."""
    values = np.frombuffer(view, dtype="<f4", offset=offset)
    if not np.isfinite(values).all():
        raise PayloadError("payload carries non-finite float32 values")
    return values


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
    if codes.size and int(np.maximum.reduce(codes)) > 2**bits - 1:  # codes.max(), unwrapped
        raise ValueError(f"level code {int(codes.max())} does not fit in {bits} bits")
    return codes, bits, scale


def _levels_payload(codes: np.ndarray, bits: int, scale: float) -> bytes:
    """The fixed-width payload of checked levels (:func:`check_levels`)."""
    packed = _SCALE.pack(scale)
    if packed[:2] == b"\0\0":  # short_range(scale): its high half is enough
        head = bytes((SHORT_RANGE | bits,)) + write_varint(codes.size) + packed[2:]
    else:
        head = bytes((bits,)) + write_varint(codes.size) + packed
    return head + _pack_levels(codes, bits)


@register_codec("fixed-width")
class FixedWidthCodec(Codec):
    """Dense b-bit packing behind a ``3 + v(d)``-byte header (``5 + v(d)`` for a range
    that needs 32 bits, ``1 + v(d)`` for the raw float32 path), ``v(d)`` the length of the
    size varint: 4 bytes for d < 128.

    Against the paper's count (``b*d + 32`` with R, or ``32*d``) a payload carries the
    width byte and the size varint, and a 16-bit range saves 16 of R's 32 bits
    (:meth:`overhead_bits`: ``8 (1 + v(d))`` bits, minus 16 for a 16-bit range: 0 for d <
    128; at most 48 = :attr:`header_overhead_bits`), plus the padding of the body to whole
    bytes. ``encode`` refuses (``ValueError``) what ``decode`` would reject, so a
    sender cannot emit a payload its receiver throws away (a scale beyond
    :data:`~.base.MAX_SCALE`: :class:`~.base.ScaleOverflowError`, which a worker reports
    as divergence).

    Also writes "signed" levels (tag 64, offset codes of ``ceil(log2(2s+1))`` bits) and
    "sparse" messages (tag 65, ``ceil(log2 d)``-bit positions + float32 values), each
    with ``8 (1 + v(d) + v(s or k))`` bits beyond the nominal count; see the module
    docstring.
    """

    header_overhead_bits = 8 * (1 + MAX_VARINT_BYTES)
    kinds = frozenset({"levels", "raw", "signed", "sparse"})
    #: decoding without an expected size: the largest dimension a sparse message may
    #: declare (its k entries do not bound d; the source codec's ``max_size`` likewise)
    max_sparse_size = 2**26

    def payload_bytes(self, bits: int, size: int) -> int:
        return payload_bytes(bits, size)

    def payload_length(self, q: Quantized) -> int:
        if q.kind == "signed":
            return signed_payload_bytes(q.levels, q.size)
        if q.kind == "sparse":
            return sparse_payload_bytes(int(np.asarray(q.codes).shape[0]), q.size)
        return payload_bytes(q.bits, q.size, q.scale)

    def overhead_bits(self, q: Quantized) -> int:
        """``8 (1 + v(d))`` bits (width, d) for raw and for levels with a 32-bit range,
        ``8 (1 + v(d)) - 16`` for levels with a 16-bit range (:func:`short_range`); ``8
        (1 + v(d) + v(s or k))`` (tag, d, s or k) for signed / sparse; ``v`` the varint
        length."""
        if q.kind == "signed":
            return 8 * (1 + varint_length(q.size) + varint_length(q.levels))
        if q.kind == "sparse":
            count = int(np.asarray(q.codes).shape[0])
            return 8 * (1 + varint_length(q.size) + varint_length(count))
        saved = 16 if q.bits != RAW_BITS and short_range(q.scale) else 0
        return 8 * (1 + varint_length(q.size)) - saved

    def encode(self, q: Quantized) -> bytes:
        if q.kind == "signed":
            codes, s = _checked_signed_levels(q)
            scale = check_scale(q.scale, "signed scale")
            head = bytes((SIGNED_TAG,)) + write_varint(codes.size) + write_varint(s)
            head += _SCALE.pack(scale)
            if codes.dtype == np.int32:  # level + s in 0..2s < 2^32: exact modulo 2^32
                offsets = codes.view(np.uint32) + np.uint32(s)
            else:
                offsets = (codes.astype(np.int64) + s).astype(np.uint32)
            return head + pack_codes(offsets, signed_width(s))
        if q.kind == "sparse":
            index, values, dim = check_sparse(q)
            head = bytes((SPARSE_TAG,)) + write_varint(dim) + write_varint(index.size)
            return head + pack_codes(index.astype(np.uint32), index_width(dim)) + values.tobytes()
        codes = np.asarray(q.codes)
        if codes.ndim != 1 or codes.shape[0] > _MAX_SIZE:
            raise ValueError(f"cannot encode codes of shape {codes.shape}: need 1-D, < 2^32")
        if q.bits == RAW_BITS:
            body = np.ascontiguousarray(codes, dtype=_F4)
            if not all_finite(body):
                raise ValueError("cannot encode non-finite float32 values")
            return bytes((RAW_BITS,)) + write_varint(codes.size) + body.tobytes()
        return _levels_payload(*check_levels(q))

    def encode_built(self, q: Quantized) -> bytes:
        """:meth:`encode` of a message that :class:`~.quantizers.StochasticQuantizer` or
        :class:`~.quantizers.Float32Quantizer` (those classes themselves) has just
        returned, as :class:`~.memory.PublicCopies` passes it; the same bytes. Levels:
        the codes are a 1-D uint32 array clipped to ``2^bits - 1``, ``bits`` passed the
        width check and R is the float32 :func:`~.quantizers.bfloat16_ceil` of a finite
        maximum, so of :func:`check_levels` only the range's bound is left
        (:class:`~.base.ScaleOverflowError` beyond :data:`~.base.MAX_SCALE`, from
        :func:`check_scale`). Raw: the 1-D float32 cast of a vector within the float32
        range, finite: nothing is left to check."""
        codes = q.codes
        if q.bits == RAW_BITS:
            body = np.ascontiguousarray(codes, dtype=_F4)
            return bytes((RAW_BITS,)) + write_varint(codes.size) + body.tobytes()
        return _levels_payload(codes, q.bits, check_scale(q.scale))

    def encode_raw_rows(self, values: np.ndarray) -> list[bytes]:
        """:meth:`encode_built` of the float32 message of every row of the 2-D float32
        ``values`` (what :class:`~.quantizers.Float32Quantizer` built for several workers at
        once): the same bytes, the header written once."""
        head = _raw_head(values.shape[1])
        return [head + row.tobytes() for row in values]

    def accepts_all(self, payloads: Sequence[bytes], size: int, max_scale: float) -> bool:
        """True when every payload is a float32 message of ``size`` entries (its header
        and length: all :meth:`check_envelope` reads of one), which carries no scale."""
        if type(self).check_envelope is not FixedWidthCodec.check_envelope:
            return False
        size = check_expected_size(size)
        return _all_raw(payloads, size)

    def check_envelope(self, payload: bytes, size: int, max_scale: float = MAX_SCALE) -> None:
        """:class:`PayloadError` unless the header and the length fit a model of ``size``
        entries: the tag (a width 1..16, with or without :data:`SHORT_RANGE`, or 32, or
        the signed / sparse tag), minimal
        varints (at most 5 bytes, < 2^32), d == size, the exact length of that kind,
        width and size, the scale (finite, >= 0, <= ``max_scale``; a range in 4 bytes
        only if it does not fit 2), signed s in
        1..2^31-1, sparse k <= d, and the padding bits of the packed codes 0. O(1): at
        most 15 header bytes and one byte of padding are read, no value is unpacked (a
        float32 message: its header compared with the one of ``size`` entries)."""
        size = check_expected_size(size)
        if _all_raw((payload,), size):
            return
        self._envelope(payload_view(payload), size, max_scale)

    def _envelope(self, view: memoryview, size: int | None, max_scale: float) -> _Envelope:
        length = len(view)
        if length < _MIN_HEAD:
            raise PayloadError(
                f"truncated payload: length {length} bytes, a header needs at least {_MIN_HEAD}"
            )
        tag = view[0]
        if tag == SIGNED_TAG:
            n, at = read_varint(view, 1, "size")
            check_declared_size(n, size)
            s, at = read_varint(view, at, "signed levels")
            if not 1 <= s <= MAX_SIGNED_LEVEL:
                raise PayloadError(
                    f"bad header: signed levels s = {s} not in 1..{MAX_SIGNED_LEVEL}"
                )
            scale, body = _read_scale(
                view,
                at,
                max_scale,
                "signed scale",
                lambda: f"a signed header of {n} entries (s = {s})",
            )
            width = signed_width(s)
            _check_length(
                length,
                body + (width * n + 7) // 8,
                lambda: f"a signed message of {n} entries of {width} bits (s = {s})",
            )
            _check_padding(view, length, width * n)
            return _new_tuple(_Envelope, ("signed", n, width, float(scale), body, s))
        if tag == SPARSE_TAG:
            n, at = read_varint(view, 1, "size")
            check_declared_size(n, size)
            if size is None and n > self.max_sparse_size:  # the one kind whose d is not
                raise PayloadError(  # bounded by the payload's length
                    f"payload declares {n} entries, more than max_sparse_size "
                    f"{self.max_sparse_size} (give the expected size)"
                )
            k, body = read_varint(view, at, "kept entries")
            if k > n:
                raise PayloadError(f"bad header: {k} kept entries of a vector of {n}")
            positions = index_width(n) * k
            _check_length(
                length,
                body + (positions + 7) // 8 + 4 * k,
                lambda: f"a sparse message of {k} of {n} entries",
            )
            _check_padding(view, length - 4 * k, positions)
            return _new_tuple(_Envelope, ("sparse", n, RAW_BITS, 0.0, body, k))
        short = bool(tag & SHORT_RANGE)
        bits = tag & ~SHORT_RANGE
        if (short or bits != RAW_BITS) and not 1 <= bits <= MAX_LEVEL_BITS:
            raise PayloadError(
                f"bad header: tag {tag} is not a width 1..{MAX_LEVEL_BITS} (plus "
                f"{SHORT_RANGE} for a 16-bit range) or {RAW_BITS} (nor the tag "
                f"{SIGNED_TAG} signed / {SPARSE_TAG} sparse)"
            )
        n, at = read_varint(view, 1, "size")
        check_declared_size(n, size)
        if bits == RAW_BITS:
            _check_length(length, at + 4 * n, lambda: f"a float32 message of {n} entries")
            return _new_tuple(_Envelope, ("raw", n, RAW_BITS, 0.0, at, 0))
        scale, body = _read_scale(
            view, at, max_scale, "range R", lambda: f"a {bits}-bit header of {n} entries", short
        )
        if not short and view[at] == view[at + 1] == 0:
            raise PayloadError(
                f"bad header: range R = {scale:.7g} is written in 4 bytes but fits 2 (its "
                f"low 16 bits are 0: the tag must be {SHORT_RANGE | bits}, R its high half)"
            )
        _check_length(
            length, body + (bits * n + 7) // 8, lambda: f"a {bits}-bit message of {n} entries"
        )
        _check_padding(view, length, bits * n)
        return _new_tuple(_Envelope, ("levels", n, bits, float(scale), body, 0))

    def decode_values(
        self, payload: bytes, size: int | None, quantizer: Quantizer, where: str = ""
    ) -> np.ndarray:
        """``quantizer.dequantize(self.decode(payload, size))``, bit for bit, and the same
        :class:`PayloadError` for what ``decode`` refuses or for a message of a kind
        ``quantizer`` does not produce (``where`` says whose payload, as in ``"from
        worker 3"``).

        Faster for :class:`~.quantizers.StochasticQuantizer` levels of 1, 2 or 4 bits: the
        2^b values ``delta * k - R`` are computed once and each byte of the body becomes
        its ``8 / b`` floats in one row gather, without the codes (about one numpy
        copy of the output instead of two; ``benchmarks/bench_codec.py``). And for
        :class:`~.quantizers.Float32Quantizer` raw values: checked, then straight to float64
        (what its ``dequantize`` does), without building the :class:`~.base.Quantized`.
        """
        view = payload_view(payload if isinstance(payload, bytes) else bytes(payload_view(payload)))
        head = self._envelope(view, size, MAX_SCALE)
        if head.kind == "raw" and type(quantizer) is Float32Quantizer:
            return _raw_values(view, head.body).astype(np.float64)
        fast = type(quantizer) is StochasticQuantizer and head.kind == "levels"
        if not (fast and head.bits in _BYTE_CODES and head.scale != 0.0):
            q = self._decode(view, head)  # the header is read once
            kinds = type(quantizer).kinds
            if q.kind not in kinds:
                raise PayloadError(
                    f"payload {where + ' ' if where else ''}carries a {q.kind} message, "
                    f"quantizer {registered_name(quantizer)!r} expects "
                    f"{', '.join(sorted(kinds))}"
                )
            return quantizer.dequantize(q)
        bits, n, scale = head.bits, head.size, head.scale
        top = 2**bits - 1
        # the historic delta * float64(code) - R for each of the 2^b codes
        values = 2.0 * scale / top * _LEVEL_CODES[bits] - scale
        body = np.frombuffer(view, dtype=np.uint8, offset=head.body)
        return values[_BYTE_CODES[bits]].take(body, axis=0).reshape(-1)[:n]

    def decode(self, payload: bytes, size: int | None = None) -> Quantized:
        # bytes are immutable: the raw values may stay a view of them (anything else is
        # copied first)
        view = payload_view(payload if isinstance(payload, bytes) else bytes(payload_view(payload)))
        if size is not None:
            size = check_expected_size(size, "decode")
        return self._decode(view, self._envelope(view, size, MAX_SCALE))

    def _decode(self, view: memoryview, head: _Envelope) -> Quantized:
        """The message of a payload whose header :meth:`_envelope` read into ``head``."""
        n = head.size
        if head.kind == "raw":
            return dense_quantized(_raw_values(view, head.body), 0.0, RAW_BITS, "raw")
        if head.kind == "levels":
            codes = unpack_codes(view[head.body :], head.bits, n)
            return dense_quantized(codes, head.scale, head.bits, "levels")
        if head.kind == "signed":
            s = head.extra
            offsets = unpack_codes(view[head.body :], head.bits, n)
            if n and int(offsets.max()) > 2 * s:
                raise PayloadError(f"signed level {int(offsets.max()) - s} exceeds s = {s}")
            codes = (offsets.astype(np.int64) - s).astype(np.int32)
            return Quantized(codes, head.scale, head.bits, "signed", s)
        k = head.extra
        split = len(view) - 4 * k
        index = unpack_codes(view[head.body : split], index_width(n), k)
        index = index.astype(np.int64)
        if k and (index[-1] >= n or np.any(np.diff(index) <= 0)):
            raise PayloadError(f"sparse positions are not strictly increasing in 0..{n - 1}")
        return Quantized(_raw_values(view, split), 0.0, 32, "sparse", index=index, dim=int(n))
