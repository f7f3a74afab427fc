"""Envelope checks without decoding, and bounded-memory packing of every width.

- ``Codec.check_envelope(payload, size, max_scale)``: what each codec refuses from the
  header and the length alone (with the message saying what is wrong), that it is O(1)
  in d (no value unpacked), and that ``decode`` refuses everything it refuses;
- ``pack_codes`` / ``unpack_codes`` give the same bytes as the historic implementation
  (kept below as the slow reference) at every width 0..32, whatever the chunking, in
  bounded extra memory;
- every accepted payload is canonical: ``encode(decode(p)) == p``;
- the varint header fields (d, signed s, sparse k): their edges (1..5 bytes, up to
  2^32 - 1, declared sizes checked from the header alone), the forms refused
  (non-minimal, longer than 5 bytes, >= 2^32, truncated), and a round trip property over
  widths 1..16, raw, signed and sparse with the exact length and overhead.

The fuzzing of the decoders is in ``test_fuzz.py``.
"""

from __future__ import annotations

import math
import struct
import time
import tracemalloc

import numpy as np
import pytest

from flower_qgadmm.compression import (
    MAX_SIGNED_LEVEL,
    Codec,
    FixedWidthCodec,
    PayloadError,
    Quantized,
    SourceCodec,
    pack_codes,
    unpack_codes,
)
from flower_qgadmm.compression import codecs as codecs_module
from flower_qgadmm.compression.base import MAX_SCALE, ScaleOverflowError
from flower_qgadmm.compression.codecs import short_range
from flower_qgadmm.compression.compressors import index_width, signed_width
from flower_qgadmm.compression.entropy import BitWriter, write_codewords
from flower_qgadmm.compression.quantizers import bfloat16_ceil
from flower_qgadmm.compression.source import _Plan, max_payload_bytes

FIXED = FixedWidthCodec()
SOURCE = SourceCodec()

# ---------------------------------------------------------------- the historic packing


def reference_pack(codes: np.ndarray, bits: int) -> bytes:
    """pack_codes as it was (a d x b bit matrix for odd widths): the byte-exact reference."""
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


def reference_unpack(body: bytes, bits: int, size: int) -> np.ndarray:
    """unpack_codes as it was."""
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


def random_codes(rng: np.random.Generator, size: int, bits: int) -> np.ndarray:
    """Uniform codes of ``bits`` bits, with the extremes 0 and 2^b - 1 planted."""
    codes = rng.integers(0, 2**bits, size, dtype=np.uint64).astype(np.uint32)
    if size >= 2:
        codes[rng.integers(0, size)] = 2**bits - 1
        codes[rng.integers(0, size)] = 0
    return codes


WIDTHS = list(range(0, 33))


@pytest.mark.parametrize(("chunk", "small"), [(8, 0), (64, 0), (1 << 16, 0), (1 << 16, 1024)])
def test_packing_is_byte_identical_to_the_reference_at_every_width(
    monkeypatch, chunk, small
) -> None:
    # Prepare: small chunks put many chunk boundaries (and a ragged last chunk) in play;
    # small = 0 sends every size through the chunked path, 1024 the small ones through
    # the bit matrix
    monkeypatch.setattr(codecs_module, "PACK_CHUNK", chunk)
    monkeypatch.setattr(codecs_module, "SMALL_PACK", small)
    rng = np.random.default_rng(chunk + small)
    for bits in WIDTHS:
        sizes = [0, 1, 7, 8, 9, 63, 65, 129, 1024, 1025, *rng.integers(1, 3000, 6).tolist()]
        for size in sizes:
            codes = random_codes(rng, int(size), bits)
            # Execute
            body = pack_codes(codes, bits)
            # Assert: the same bytes as before; both unpackers give the codes back
            assert body == reference_pack(codes, bits), (bits, size)
            assert len(body) == math.ceil(bits * size / 8)
            np.testing.assert_array_equal(unpack_codes(body, bits, int(size)), codes)
            np.testing.assert_array_equal(reference_unpack(body, bits, int(size))[:size], codes)


@pytest.mark.parametrize("bits", [1, 3, 7, 12, 13, 16, 21, 32])
def test_packing_across_the_default_chunk_boundary(bits: int) -> None:
    # Prepare: more than two default chunks, a size that is not a multiple of 8
    size = 2 * codecs_module.PACK_CHUNK + 13
    codes = random_codes(np.random.default_rng(bits), size, bits)
    # Execute
    body = pack_codes(codes, bits)
    # Assert
    assert body == reference_pack(codes, bits)
    np.testing.assert_array_equal(unpack_codes(body, bits, size), codes)


def test_packing_accepts_int64_codes_and_ignores_the_padding() -> None:
    # signed offsets and sparse positions arrive as int64 / uint32
    codes = np.array([5, 0, 7, 3, 1], dtype=np.int64)
    body = pack_codes(codes, 3)
    assert body == reference_pack(codes.astype(np.uint32), 3)
    # padding bits are not read by unpack_codes (decode refuses them, see below)
    padded = body[:-1] + bytes([body[-1] | 0x80])
    np.testing.assert_array_equal(unpack_codes(padded, 3, 5), codes)
    with pytest.raises(PayloadError, match="truncated"):
        unpack_codes(body[:-1], 3, 5)
    with pytest.raises(ValueError, match="0..32"):
        pack_codes(codes, 33)


def peak_mib(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("bits", [3, 7, 13])
def test_encode_and_decode_memory_is_bounded_at_odd_widths(bits: int) -> None:
    # Prepare: 2^21 entries (the historic bit matrix took 8 bytes per bit: 112 MiB at 7 bits)
    size = 1 << 21
    codes = random_codes(np.random.default_rng(0), size, bits)
    q = Quantized(codes, 1.0, bits)
    payload = FIXED.encode(q)
    out_mib = len(payload) / 2**20
    # Execute / Assert: encode holds the body and the payload; decode the uint32 codes
    assert peak_mib(lambda: FIXED.encode(q)) < 2 * out_mib + 4
    assert peak_mib(lambda: FIXED.decode(payload, size)) < 4 * size / 2**20 + 4


# ---------------------------------------------------------------- valid messages


def levels(bits: int = 4, size: int = 150, scale: float = 1.5, seed: int = 0) -> Quantized:
    return Quantized(random_codes(np.random.default_rng(seed), size, bits), scale, bits)


def signed(s: int = 3, size: int = 150, scale: float = 2.0, density: float = 0.3) -> Quantized:
    rng = np.random.default_rng(s)
    codes = np.where(rng.random(size) < density, rng.integers(-s, s + 1, size), 0)
    return Quantized(codes.astype(np.int32), scale, signed_width(s), "signed", s)


def raw(size: int = 150) -> Quantized:
    return Quantized(np.random.default_rng(1).standard_normal(size).astype(np.float32), 0.0, 32)


def sparse(k: int = 12, size: int = 150) -> Quantized:
    rng = np.random.default_rng(2)
    index = np.sort(rng.choice(size, k, replace=False)).astype(np.int64)
    values = rng.standard_normal(k).astype(np.float32)
    return Quantized(values, 0.0, 32, "sparse", index=index, dim=size)


def valid_payloads() -> list[tuple[str, object, bytes, int]]:
    """(name, codec, payload, d) of every kind, incl. d = 0 and 1."""
    out = []
    for size in (0, 1, 150):
        out += [
            (f"levels d={size}", FIXED, FIXED.encode(levels(size=size)), size),
            (f"raw d={size}", FIXED, FIXED.encode(raw(size)), size),
            (f"signed d={size}", FIXED, FIXED.encode(signed(size=size)), size),
            (f"sparse d={size}", FIXED, FIXED.encode(sparse(min(size, 12), size)), size),
            (f"source signed d={size}", SOURCE, SOURCE.encode(signed(size=size)), size),
            (f"source levels d={size}", SOURCE, SOURCE.encode(levels(size=size)), size),
        ]
    return out


@pytest.mark.parametrize(("name", "codec", "payload", "size"), valid_payloads())
def test_valid_payloads_pass_and_are_canonical(name, codec, payload, size) -> None:
    # Execute / Assert: the envelope passes (bytes, bytearray, memoryview alike), the
    # payload decodes and re-encodes to the same bytes
    assert codec.check_envelope(payload, size) is None
    codec.check_envelope(bytearray(payload), size)
    codec.check_envelope(memoryview(payload), size)
    q = codec.decode(payload, size=size)
    assert q.size == size
    assert codec.encode(q) == payload


# ---------------------------------------------------------------- what each codec refuses


def patch(payload: bytes, offset: int, fmt: str, value) -> bytes:
    data = bytearray(payload)
    struct.pack_into("<" + fmt, data, offset, value)
    return bytes(data)


def replace(payload: bytes, offset: int, old: int, new: bytes) -> bytes:
    """``payload`` with its ``old`` bytes at ``offset`` (a header field) replaced by ``new``."""
    return payload[:offset] + new + payload[offset + old :]


def padded_levels() -> bytes:
    payload = FIXED.encode(levels(3, 5))  # 15 bits of codes: 1 padding bit
    return payload[:-1] + bytes([payload[-1] | 0x80])


# headers (d = 150: a 2-byte size varint 0x96 0x01)
# R = float32(1.2345) needs 32 bits: width | d | R f32 | 4 bits x 150: 1 + 2 + 4 + 75 = 82 bytes
LEVELS = FIXED.encode(levels(scale=float(np.float32(1.2345))))
# R = 1.5 fits 16 (0x3FC0): 0x80 | width | d | R high half | 4 bits x 150: 80 bytes
SHORT = FIXED.encode(levels())
SIGNED = FIXED.encode(signed())  # tag | d | s = 3 (1 byte) | scale f32 | 3-bit codes: 8 + 57
RAW = FIXED.encode(raw())  # width 32 | d | 600 bytes of float32
SPARSE = FIXED.encode(sparse())  # tag | d | k = 12 (1 byte) | 8-bit positions | values: 4 + 60
SRC_SIGNED = SOURCE.encode(signed())  # tag | d (2-byte varint) | scale f32 at byte 3 | stream
SRC_LEVELS = SOURCE.encode(levels())

REFUSED = [
    # (codec, payload, size, message)
    (FIXED, LEVELS, 1370, "declares 150 entries, the receiver expects 1370"),
    (FIXED, b"\x00" + LEVELS[1:], 150, "tag 0 is not a width 1..16 \\(plus 128"),
    (FIXED, b"\x11" + LEVELS[1:], 150, "tag 17 is not a width 1..16"),
    (FIXED, b"\x21" + LEVELS[1:], 150, "tag 33 is not"),
    (FIXED, b"\x80" + SHORT[1:], 150, "tag 128 is not a width"),
    (FIXED, b"\xa0" + SHORT[1:], 150, "tag 160 is not a width"),
    (FIXED, SHORT[:-1], 150, "length 79 bytes, a 4-bit message of 150 entries is 80"),
    (FIXED, SHORT[:4], 150, "length 4 bytes, a 4-bit header of 150 entries needs 5"),
    (FIXED, patch(SHORT, 3, "H", 0x7F80), 150, "range R = inf is not finite"),
    (FIXED, patch(SHORT, 3, "H", 0x7FC0), 150, "range R = nan is not finite"),
    (FIXED, patch(SHORT, 3, "H", 0xBF80), 150, "range R = -1 is negative"),
    (FIXED, patch(SHORT, 3, "H", 0x7F00), 150, "range R = 1.701412e\\+38 exceeds 1e\\+30"),
    (
        FIXED,
        b"\x04" + SHORT[1:3] + b"\x00\x00" + SHORT[3:],
        150,
        "range R = 1.5 is written in 4 bytes but fits 2 .*the tag must be 132",
    ),
    (FIXED, LEVELS[:-1], 150, "length 81 bytes, a 4-bit message of 150 entries is 82"),
    (FIXED, LEVELS + b"\x00", 150, "oversized payload: length 83 bytes"),
    (FIXED, b"", 150, "truncated payload: length 0 bytes, a header needs at least 2"),
    (FIXED, LEVELS[:1], 150, "truncated payload: length 1 bytes, a header needs at least 2"),
    (FIXED, LEVELS[:2], 150, "truncated payload: length 2 bytes ends inside the size field"),
    (FIXED, LEVELS[:5], 150, "length 5 bytes, a 4-bit header of 150 entries needs 7"),
    (FIXED, patch(LEVELS, 3, "f", math.inf), 150, "range R = inf is not finite"),
    (FIXED, patch(LEVELS, 3, "f", math.nan), 150, "range R = nan is not finite"),
    (FIXED, patch(LEVELS, 3, "f", -1.0), 150, "range R = -1 is negative"),
    (FIXED, patch(LEVELS, 3, "f", 3e38), 150, "range R = 3e\\+38 exceeds 1e\\+30"),
    (FIXED, padded_levels(), 5, "the 1 padding bits of the last byte are not 0"),
    (FIXED, replace(LEVELS, 1, 2, b"\x96\x81\x00"), 150, "size field is not a minimal varint"),
    (FIXED, replace(LEVELS, 1, 2, b"\x96\x81\x80\x80\x80\x00"), 150, "longer than 5 bytes"),
    (
        FIXED,
        replace(LEVELS, 1, 2, b"\x80\x80\x80\x80\x10"),
        150,
        "the size field is 4294967296, beyond 2\\^32 - 1",
    ),
    (FIXED, replace(LEVELS, 1, 2, b"\x95\x01"), 150, "declares 149 entries, the receiver expects"),
    (FIXED, RAW[:-2], 150, "length 601 bytes, a float32 message of 150 entries is 603"),
    (FIXED, RAW, 149, "declares 150 entries, the receiver expects 149"),
    (FIXED, replace(RAW, 1, 2, b"\x96\x81\x00"), 150, "size field is not a minimal varint"),
    (FIXED, RAW[:2], 150, "length 2 bytes ends inside the size field"),
    (FIXED, SIGNED[:2], 150, "length 2 bytes ends inside the size field"),
    (FIXED, SIGNED[:3], 150, "length 3 bytes ends inside the signed levels field"),
    (FIXED, SIGNED[:6], 150, "a signed header of 150 entries \\(s = 3\\) needs 8"),
    (FIXED, patch(SIGNED, 3, "B", 0), 150, "signed levels s = 0 not in"),
    (FIXED, replace(SIGNED, 3, 1, b"\x80\x80\x80\x80\x08"), 150, "s = 2147483648 not in"),
    (FIXED, replace(SIGNED, 3, 1, b"\x83\x00"), 150, "signed levels field is not a minimal"),
    (FIXED, replace(SIGNED, 3, 1, b"\x83" * 5 + b"\x00"), 150, "longer than 5 bytes"),
    (FIXED, patch(SIGNED, 3, "B", 4), 150, "a signed message of 150 entries of 4 bits \\(s = 4\\)"),
    (FIXED, patch(SIGNED, 4, "f", 1e31), 150, "signed scale = 1e\\+31 exceeds 1e\\+30"),
    (FIXED, replace(SIGNED, 1, 2, b"\x07"), 150, "declares 7 entries, the receiver expects 150"),
    (FIXED, replace(SIGNED, 1, 2, b"\x96\x81\x00"), 150, "size field is not a minimal varint"),
    (FIXED, replace(SPARSE, 3, 1, b"\x97\x01"), 150, "151 kept entries of a vector of 150"),
    (FIXED, patch(SPARSE, 3, "B", 13), 150, "a sparse message of 13 of 150 entries"),
    (FIXED, replace(SPARSE, 3, 1, b"\x8c\x00"), 150, "kept entries field is not a minimal"),
    (FIXED, replace(SPARSE, 1, 2, b"\x96\x81\x00"), 150, "size field is not a minimal varint"),
    (FIXED, SPARSE[:3], 150, "length 3 bytes ends inside the kept entries field"),
    (SOURCE, SRC_SIGNED, 151, "declares 150 entries, the receiver expects 151"),
    (SOURCE, b"\x00" + SRC_SIGNED[1:], 150, "tag 0x00 is not a source-coded message"),
    (SOURCE, patch(SRC_SIGNED, 3, "f", math.inf), 150, "scale = inf is not finite"),
    (SOURCE, patch(SRC_LEVELS, 3, "f", 1e38), 150, "range R = 1e\\+38 exceeds 1e\\+30"),
    (SOURCE, bytes([0xA0 | 31]) + SRC_SIGNED[1:], 150, "r = 31, at most 8 for 150 entries"),
    (SOURCE, SRC_SIGNED[:7], 150, "the header of 150 entries and a stream need at least 8"),
    (SOURCE, SRC_SIGNED[:1] + b"\x80" * 6, 150, "size field is a varint longer than 5"),
    (SOURCE, replace(SRC_SIGNED, 1, 2, b"\x96\x81\x00"), 150, "size field is not a minimal"),
    (
        SOURCE,
        SRC_SIGNED[:7] + b"\x00" * 16,
        150,
        "the top level s of more than 128 bits exceeds 31",
    ),
    (SOURCE, SRC_SIGNED + bytes(max_payload_bytes(150)), 150, "150 entries need at most"),
]


@pytest.mark.parametrize(("codec", "payload", "size", "message"), REFUSED)
def test_check_envelope_says_what_is_wrong_and_decode_agrees(codec, payload, size, message):
    # Execute / Assert: check_envelope and decode refuse with the same message
    with pytest.raises(PayloadError, match=message):
        codec.check_envelope(payload, size)
    with pytest.raises(PayloadError, match=message):
        codec.decode(payload, size=size)


def test_accepts_all_only_what_check_envelope_accepts() -> None:
    """Codec.accepts_all, the relay's glance at a phase's payloads: True for float32
    messages of the size (the reference runner's GADMM), False as soon as one is of
    another kind, size or length (each then checked), and for every refused payload."""
    valid = [(codec, payload, size) for _, codec, payload, size in valid_payloads()]
    for codec, payload, size in valid:
        if codec.accepts_all([payload], size, MAX_SCALE):
            codec.check_envelope(payload, size, MAX_SCALE)  # accepted: no error
    raws = [FIXED.encode(raw(150)), FIXED.encode(raw(150))]
    assert FIXED.accepts_all(raws, 150, MAX_SCALE)
    assert FIXED.accepts_all([], 150, MAX_SCALE)
    assert not FIXED.accepts_all(raws, 149, MAX_SCALE)
    assert not FIXED.accepts_all([*raws, FIXED.encode(levels(size=150))], 150, MAX_SCALE)
    assert not FIXED.accepts_all([raws[0] + b"\x00"], 150, MAX_SCALE)
    assert not FIXED.accepts_all([bytearray(raws[0])], 150, MAX_SCALE)
    assert not SOURCE.accepts_all(raws, 150, MAX_SCALE)  # the default: check each
    for codec, payload, size, _ in REFUSED:
        assert not codec.accepts_all([payload], size, MAX_SCALE)

    class Stricter(FixedWidthCodec):
        def check_envelope(self, payload, size, max_scale=MAX_SCALE):
            raise PayloadError("refused")

    assert not Stricter().accepts_all(raws, 150, MAX_SCALE)
    with pytest.raises(ValueError, match="size must be an integer"):
        FIXED.accepts_all(raws, -1, MAX_SCALE)


def bits(stream: str) -> bytes:
    """A '0'/'1' string, MSB first, zero-padded to whole bytes."""
    stream += "0" * (-len(stream) % 8)
    return bytes(int(stream[i : i + 8], 2) for i in range(0, len(stream), 8))


def test_source_stream_header_bounds_the_length() -> None:
    # Prepare: n = 0 non-zeros among d = 150 with s = 1: an 8-byte payload (the header: 7
    # bytes, d a 2-byte varint); the same header with n = 5 needs 5 (r + 3) more bits
    zero = SOURCE.encode(signed(1, density=0.0))
    assert len(zero) == 8 and zero[7] == 0b1_1_000000  # gamma(1) = 1, gamma(n + 1 = 1) = 1
    five = zero[:7] + bits("1" + "00110")  # s = 1, gamma(n + 1 = 6), then nothing
    # Execute / Assert
    with pytest.raises(PayloadError, match=r"5 non-zero levels among 150 entries .* take"):
        SOURCE.check_envelope(five, 150)
    many = zero[:7] + bits("1" + "00000000" + "100000001")  # gamma(n + 1 = 257), n > d
    with pytest.raises(PayloadError, match="256 non-zero levels in 150 entries"):
        SOURCE.check_envelope(many, 150)
    # and the longest stream of n codewords: n = 0 allows no more than the header
    with pytest.raises(PayloadError, match="oversized payload: length 9 bytes"):
        SOURCE.check_envelope(zero + b"\x00", 150)


def test_envelope_only_values_are_left_to_decode() -> None:
    # Prepare: a signed level beyond s, a NaN raw value, unordered sparse positions: the
    # envelope (header, length) is intact
    bad_signed = SIGNED[:8] + bytes([0xFF]) + SIGNED[9:]  # offset 7 > 2s = 6
    bad_raw = RAW[:3] + np.float32(np.nan).tobytes() + RAW[7:]
    bad_sparse = SPARSE[:4] + bytes([SPARSE[5], SPARSE[4]]) + SPARSE[6:]
    for payload, message in [
        (bad_signed, "exceeds s = 3"),
        (bad_raw, "non-finite"),
        (bad_sparse, "not strictly increasing"),
    ]:
        # Execute / Assert
        FIXED.check_envelope(payload, 150)
        with pytest.raises(PayloadError, match=message):
            FIXED.decode(payload, size=150)


def test_source_decode_refuses_non_canonical_streams() -> None:
    # Prepare: the same levels written with r = 0 where the encoder picks another r,
    # and a levels message whose centre is not the most frequent code
    q = signed(1, size=150, density=0.05)
    plan = _Plan(q)
    assert plan.r > 0
    plan.r = 0
    forced = plan.payload()
    # Execute / Assert
    SOURCE.check_envelope(forced, 150)  # a plausible envelope
    with pytest.raises(PayloadError, match=r"r = 0, the encoder picks"):
        SOURCE.decode(forced, size=150)
    codes = np.array([1, 1, 1, 2], np.uint32)  # mode 1; write it around centre 2
    offsets = codes.astype(np.int64) - 2
    head = BitWriter()
    head.write(2 - 1, 4)  # b = 2
    head.write(2, 2)  # centre 2
    where = np.flatnonzero(offsets)
    head.write_gamma(where.size + 1)
    runs = np.diff(where, prepend=-1) - 1
    head.write_bits(write_codewords(runs, offsets[where] < 0, np.abs(offsets[where]), 0))
    payload = struct.pack("<BBf", 0b110 << 5, 4, 1.0) + head.getvalue()
    with pytest.raises(PayloadError, match="centre code 2, the encoder picks the most frequent 1"):
        SOURCE.decode(payload, size=4)


@pytest.mark.parametrize("codec", [FIXED, SOURCE])
def test_max_scale_is_the_callers(codec) -> None:
    payload = codec.encode(signed(scale=5.0))
    codec.check_envelope(payload, 150, max_scale=5.0)
    with pytest.raises(PayloadError, match="exceeds 4"):
        codec.check_envelope(payload, 150, max_scale=4.0)


def test_check_envelope_refuses_a_bad_size_argument_as_a_caller_error() -> None:
    for size in (-1, 1.5, "150", None, True):
        with pytest.raises(ValueError, match="size must be an integer >= 0") as err:
            FIXED.check_envelope(LEVELS, size)
        assert not isinstance(err.value, PayloadError)
    with pytest.raises(PayloadError, match="a payload is bytes, got str"):
        FIXED.check_envelope("not bytes", 150)


@pytest.mark.parametrize("codec", [FIXED, SOURCE])
def test_encode_refuses_a_scale_no_receiver_accepts(codec) -> None:
    # a scale beyond MAX_SCALE: the sender's model diverged (a worker reports it so)
    with pytest.raises(ScaleOverflowError, match="exceeds 1e\\+30") as err:
        codec.encode(signed(scale=float(np.float32(1e31))))
    assert isinstance(err.value, ValueError) and isinstance(err.value, FloatingPointError)
    codec.encode(signed(scale=float(np.float32(9e29))))
    assert MAX_SCALE == 1e30


def test_base_class_default_decodes() -> None:
    # Prepare: a codec that does not override check_envelope falls back on decode
    class Plain(FixedWidthCodec):
        check_envelope = Codec.check_envelope

    codec = Plain()
    # Execute / Assert
    codec.check_envelope(LEVELS, 150)
    with pytest.raises(PayloadError, match="expects 149"):
        codec.check_envelope(LEVELS, 149)
    with pytest.raises(PayloadError, match="exceeds 1"):
        codec.check_envelope(LEVELS, 150, max_scale=1.0)


# ---------------------------------------------------------------- O(1) in d


def big_payloads() -> list[tuple[str, object, bytes, int]]:
    d = 1 << 20
    rng = np.random.default_rng(3)
    sign = np.where(rng.random(d) < 0.05, rng.choice([-1, 1], d), 0).astype(np.int32)
    return [
        ("levels", FIXED, FIXED.encode(levels(7, d)), d),
        ("raw", FIXED, FIXED.encode(raw(d)), d),
        ("signed", FIXED, FIXED.encode(signed(MAX_SIGNED_LEVEL >> 8, d, density=0.5)), d),
        ("sparse", FIXED, FIXED.encode(sparse(d // 4, d)), d),
        ("source", SOURCE, SOURCE.encode(Quantized(sign, 1.0, 2, "signed", 1)), d),
    ]


@pytest.mark.parametrize(("name", "codec", "payload", "size"), big_payloads())
def test_check_envelope_is_constant_time_and_memory(name, codec, payload, size) -> None:
    # Execute: on a payload of 2^20 entries
    tracemalloc.start()
    start = time.perf_counter()
    for _ in range(100):
        codec.check_envelope(payload, size)
    seconds = (time.perf_counter() - start) / 100
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # Assert: no copy, no unpacking: a few kB and well under a millisecond (the
    # decode of the same payload takes tens of milliseconds)
    assert peak < 16_384, peak
    assert seconds < 1e-3, seconds


# ---------------------------------------------------------------- varint header fields

VARINT_EDGES = [
    (0, b"\x00"),
    (1, b"\x01"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (16383, b"\xff\x7f"),
    (16384, b"\x80\x80\x01"),
    (2**21 - 1, b"\xff\xff\x7f"),
    (2**21, b"\x80\x80\x80\x01"),
    (2**28 - 1, b"\xff\xff\xff\x7f"),
    (2**28, b"\x80\x80\x80\x80\x01"),
    (2**31, b"\x80\x80\x80\x80\x08"),
    (2**32 - 1, b"\xff\xff\xff\xff\x0f"),
]


@pytest.mark.parametrize(("value", "varint"), VARINT_EDGES)
def test_varint_edges(value: int, varint: bytes) -> None:
    # Execute / Assert: the LEB128 bytes, their length, and the read back (with a tail)
    assert codecs_module.write_varint(value) == varint
    assert codecs_module.varint_length(value) == len(varint)
    assert codecs_module.read_varint(b"\x07" + varint + b"\xff", 1, "size") == (
        value,
        1 + len(varint),
    )


def test_varint_writer_refuses_what_does_not_fit() -> None:
    for value in (-1, 2**32, 2**40):
        with pytest.raises(ValueError, match="a header field is in 0..2\\^32-1"):
            codecs_module.write_varint(value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated payload: length 0 bytes ends inside the size field"),
        (b"\x80", "truncated payload: length 1 bytes ends inside the size field"),
        (b"\xff\xff\xff\xff", "length 4 bytes ends inside the size field"),
        (b"\x80\x00", "the size field is not a minimal varint \\(bytes 0..1 end in a 0x00"),
        (b"\xff\x80\x00", "not a minimal varint"),
        (b"\x80\x80\x80\x80\x00", "not a minimal varint"),
        (b"\x80\x80\x80\x80\x10", "the size field is 4294967296, beyond 2\\^32 - 1"),
        (b"\xff\xff\xff\xff\x7f", "the size field is 34359738367, beyond"),
        (b"\x80\x80\x80\x80\x80\x00", "a varint longer than 5 bytes"),
        (b"\xff" * 9, "a varint longer than 5 bytes"),
    ],
)
def test_varint_reader_refuses_every_other_form(data: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        codecs_module.read_varint(data, 0, "size")


def header_only(kind: str, size: int) -> bytes:
    """The header of a message of ``size`` entries, without its body (no allocation)."""
    d = codecs_module.write_varint(size)
    one = struct.pack("<f", 1.0)
    return {
        "levels": bytes([0x81]) + d + one[2:],  # a 16-bit range
        "levels32": bytes([1]) + d + struct.pack("<f", 1.25 + 2.0**-20),
        "raw": bytes([32]) + d,
        "signed": bytes([64]) + d + b"\x01" + one,
        "sparse": bytes([65]) + d + b"\x00",
    }[kind]


@pytest.mark.parametrize("kind", ["levels", "levels32", "raw", "signed", "sparse"])
@pytest.mark.parametrize(("size", "varint"), VARINT_EDGES)
def test_declared_sizes_at_varint_edges(kind: str, size: int, varint: bytes) -> None:
    # Prepare: the header alone; its length is what the envelope computes for d entries
    head = header_only(kind, size)
    assert head[1 : 1 + len(varint)] == varint
    lengths = {
        "levels": codecs_module.payload_bytes(1, size),
        "levels32": codecs_module.payload_bytes(1, size, 1.25 + 2.0**-20),
        "raw": codecs_module.payload_bytes(32, size),
        "signed": codecs_module.signed_payload_bytes(1, size),
        "sparse": codecs_module.sparse_payload_bytes(0, size),
    }
    full = lengths[kind]
    # Execute / Assert: a header of d entries with no body is short by exactly the body
    # (sparse k = 0: no body, so the header alone is the whole message)
    if full == len(head):
        FIXED.check_envelope(head, size)
        assert FIXED.decode(head, size).size == size
    else:
        with pytest.raises(PayloadError, match=f"length {len(head)} bytes, .* is {full}$"):
            FIXED.check_envelope(head, size)
    # the declared size against another expected one
    other = size - 1 if size else 1
    with pytest.raises(PayloadError, match=f"declares {size} entries, the receiver expects"):
        FIXED.check_envelope(head, other)
    # and without an expected size, decode refuses the missing body, never allocates it
    if full != len(head):
        with pytest.raises(PayloadError, match="truncated payload"):
            FIXED.decode(head)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384])
def test_messages_at_varint_edges_round_trip(size: int) -> None:
    # Prepare: every kind at sizes where the size varint changes length
    k = min(size, 130)  # k = 128..130: a 2-byte k varint
    messages = [levels(3, size), raw(size), signed(200, size), sparse(k, size)]
    for q in messages:
        # Execute
        payload = FIXED.encode(q)
        # Assert: the declared size, the exact length, the canonical form
        FIXED.check_envelope(payload, size)
        assert len(payload) == FIXED.payload_length(q)
        assert payload[1 : 1 + codecs_module.varint_length(size)] == codecs_module.write_varint(
            size
        )
        back = FIXED.decode(payload, size)
        assert back.size == size and FIXED.encode(back) == payload
        for expected in (size + 1, size + 128, abs(size - 1)):
            if expected != size:
                with pytest.raises(PayloadError, match=f"declares {size} entries"):
                    FIXED.check_envelope(payload, expected)


def field_offsets(payload: bytes) -> list[tuple[str, int, int]]:
    """(name, offset, length) of the varint fields of a fixed-width payload."""
    n, at = codecs_module.read_varint(payload, 1, "size")
    fields = [("size", 1, at - 1)]
    if payload[0] in (codecs_module.SIGNED_TAG, codecs_module.SPARSE_TAG):
        _, end = codecs_module.read_varint(payload, at, "second")
        name = "signed levels" if payload[0] == codecs_module.SIGNED_TAG else "kept entries"
        fields.append((name, at, end - at))
    return fields


def random_message(rng: np.random.Generator, kind: str, size: int, bits: int = 3) -> Quantized:
    if kind == "levels":  # a range of 32 bits, or of 16 (as the stochastic quantizer's)
        scale = float(np.float32(rng.uniform(0, 4)))
        if rng.random() < 0.5:
            scale = bfloat16_ceil(scale)
        return Quantized(random_codes(rng, size, bits), scale, bits)
    if kind == "raw":
        return Quantized(rng.standard_normal(size).astype(np.float32), 0.0, 32)
    if kind == "signed":
        s = int(rng.choice([1, 3, 127, 128, 16383, 16384, MAX_SIGNED_LEVEL]))
        codes = np.where(rng.random(size) < 0.5, rng.integers(-s, s + 1, size), 0)
        return Quantized(codes.astype(np.int32), 1.0, signed_width(s), "signed", s)
    k = int(rng.integers(0, size + 1))
    index = np.sort(rng.choice(size, k, replace=False)).astype(np.int64)
    values = rng.standard_normal(k).astype(np.float32)
    return Quantized(values, 0.0, 32, "sparse", index=index, dim=size)


PROPERTY_SIZES = [0, 1, 2, 9, 127, 128, 129, 1000, 16383, 16384]


@pytest.mark.parametrize(
    "kind", [*(f"levels {b}" for b in range(1, 17)), "raw", "signed", "sparse"]
)
def test_round_trip_property(kind: str) -> None:
    # Prepare
    rng = np.random.default_rng(sum(map(ord, kind)))
    name, _, bits = kind.partition(" ")
    for size in PROPERTY_SIZES:
        for _ in range(3):
            q = random_message(rng, name, size, int(bits or 32))
            # Execute
            payload = FIXED.encode(q)
            back = FIXED.decode(payload, size)
            # Assert: the same message; the exact length and overhead; one valid form
            assert back.kind == q.kind and back.size == size and back.scale == q.scale
            np.testing.assert_array_equal(back.codes, q.codes)
            if name == "sparse":
                np.testing.assert_array_equal(back.index, q.index)
            assert FIXED.encode(back) == payload
            assert len(payload) == FIXED.payload_length(q)
            if name == "raw" or (name == "levels" and short_range(q.scale)):
                assert len(payload) == FIXED.payload_bytes(q.bits, size)
            fields = field_offsets(payload)
            saved = 16 if name == "levels" and short_range(q.scale) else 0  # R in 2 bytes
            assert FIXED.overhead_bits(q) == 8 * (1 + sum(length for *_, length in fields)) - saved
            nominal = {
                "levels": q.bits * size + 32,
                "raw": 32 * size,
                "signed": q.bits * size + 32,
                "sparse": q.codes.size * (32 + index_width(size)),
            }[name]
            assert 0 <= 8 * len(payload) - nominal - FIXED.overhead_bits(q) < 8
            FIXED.check_envelope(payload, size)
            # every varint field: a non-minimal, an overlong and a truncated form
            for field, at, length in fields:
                value = codecs_module.read_varint(payload, at, field)[0]
                groups = bytearray(codecs_module.write_varint(value))
                groups[-1] |= 0x80
                padded = "not a minimal varint" if length < 5 else "longer than 5 bytes"
                for form, message in [
                    (bytes(groups) + b"\x00", padded),
                    (b"\xff" * 5 + b"\x01", "longer than 5 bytes"),
                ]:
                    bad = payload[:at] + form + payload[at + length :]
                    with pytest.raises(PayloadError, match=f"{field} field .*{message}"):
                        FIXED.check_envelope(bad, size)
                    with pytest.raises(PayloadError, match=message):
                        FIXED.decode(bad, size)
                cut = payload[: at + length - 1]
                inside = f"ends inside the {field} field" if len(cut) >= 2 else "needs at least 2"
                for check in (FIXED.check_envelope, FIXED.decode):
                    with pytest.raises(PayloadError, match=f"truncated payload: .*{inside}"):
                        check(cut, size)


def test_a_sparse_message_declaring_a_huge_size_is_refused_without_an_expected_size() -> None:
    from flower_qgadmm.compression import FixedWidthCodec, PayloadError, make_quantizer
    from flower_qgadmm.compression.codecs import SPARSE_TAG, write_varint

    # 7 bytes declaring d = 2^32 - 1 with no kept entry: decoding it would allocate 32 GiB
    forged = bytes((SPARSE_TAG,)) + write_varint(2**32 - 1) + write_varint(0)
    codec = FixedWidthCodec()
    quantizer = make_quantizer("top-k", k=1)
    for decode in (
        lambda: codec.decode(forged),
        lambda: codec.decode_values(forged, None, quantizer),
    ):
        with pytest.raises(PayloadError, match="more than max_sparse_size"):
            decode()
    # with the size expected, the receiver's usual call, it is refused as before
    with pytest.raises(PayloadError, match="the receiver expects 8"):
        codec.decode(forged, 8)


@pytest.mark.parametrize("codec", [FIXED, SOURCE])
def test_decode_refuses_a_bad_size_argument_as_a_caller_error(codec) -> None:
    """decode(payload, "150") said 'payload declares 150 entries, the receiver expects
    150' (a PayloadError blaming the sender); a size that is not an integer >= 0 is the
    caller's mistake, named as check_envelope names it. None still skips the check."""
    payload = codec.encode(signed(scale=5.0))
    for size in (-1, 1.5, "150", True):
        with pytest.raises(ValueError, match="decode: size must be an integer >= 0") as err:
            codec.decode(payload, size)
        assert not isinstance(err.value, PayloadError)
    assert codec.decode(payload, None).codes.size == codec.decode(payload, 150).codes.size == 150
