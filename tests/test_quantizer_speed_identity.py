"""The fast quantize / pack / unpack / dequantize give the same numbers as before.

The project promises identical histories for the same seed before and after speed work,
so the implementations of commit 1a9ee06 are kept here verbatim (``ref_*``) and the
current code must match them byte for byte: the codes, the payloads, the dequantized
floats and the generator's state after a message, over many random inputs, widths 1..16
and the sizes where the chunked paths change step. The payload headers are the one
deliberate change since (issue 12: the size and s fields are LEB128 varints instead of
uint32), rebuilt here independently (``ref_*_header``).
"""

from __future__ import annotations

import numpy as np
import pytest

from flower_qgadmm.compression import (
    DitheredQuantizer,
    FixedWidthCodec,
    Quantized,
    StochasticQuantizer,
)
from flower_qgadmm.compression.codecs import pack_codes, unpack_codes
from flower_qgadmm.compression.quantizers import (
    LEVEL_CHUNK,
    bfloat16_ceil,
    finite_range,
    float32_ceil,
)

# ---------------------------------------------------------------- the reference (1a9ee06)


def ref_finite_range(x: np.ndarray) -> tuple[np.ndarray, float]:
    arr = np.asarray(x, dtype=np.float64)
    amax = float(np.max(np.abs(arr))) if arr.size else 0.0
    return arr, amax


def ref_quantize(x: np.ndarray, rng: np.random.Generator, b: int) -> Quantized:
    v, amax = ref_finite_range(x)
    top = 2**b - 1
    # the one change since: R rounded up to 16 bits instead of 32 (issue 12)
    r = bfloat16_ceil(amax) if v.size else 0.0
    if r == 0.0:
        return Quantized(np.zeros(v.size, dtype=np.uint32), 0.0, b)
    delta = 2.0 * r / top
    c = (v + r) / delta
    low = np.floor(c)
    codes = low + (rng.random(v.size) < (c - low))
    np.clip(codes, 0, top, out=codes)
    return Quantized(codes.astype(np.uint32), r, b)


def ref_float32_ceil(value: float) -> float:  # as of f59f693 (numpy scalars)
    r32 = np.float32(value)
    if float(r32) < value:
        r32 = np.nextafter(r32, np.float32(np.inf))
    return float(r32)


def ref_bfloat16_ceil(value: float) -> float:  # as of f59f693 (numpy scalars)
    r32 = np.float32(ref_float32_ceil(value))
    pattern = int(r32.view(np.uint32))
    if pattern & 0xFFFF:
        up = ((pattern | 0xFFFF) + 1) & 0xFFFFFFFF
        rounded = np.uint32(up).view(np.float32)
        if np.isfinite(rounded):
            return float(rounded)
    return float(r32)


def ref_dequantize(q: Quantized) -> np.ndarray:
    if q.scale == 0.0:
        return np.zeros(q.size, dtype=np.float64)
    delta = 2.0 * q.scale / (2**q.bits - 1)
    return delta * q.codes.astype(np.float64) - q.scale


REF_CHUNK = 1 << 16


def ref_pack_bits(codes: np.ndarray, bits: int) -> bytes:
    shifts = np.arange(bits, dtype=np.uint64)
    bitmat = ((codes.astype(np.uint64)[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bitmat.ravel(), bitorder="little").tobytes()


def ref_unpack_bits(raw: np.ndarray, bits: int, size: int) -> np.ndarray:
    bitmat = np.unpackbits(raw, count=size * bits, bitorder="little").reshape(size, bits)
    weights = np.uint64(1) << np.arange(bits, dtype=np.uint64)
    return (bitmat.astype(np.uint64) @ weights).astype(np.uint32)


def ref_pack_groups(codes: np.ndarray, bits: int) -> np.ndarray:
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


def ref_unpack_groups(body: np.ndarray, bits: int) -> np.ndarray:
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


def ref_pack_codes(codes: np.ndarray, bits: int) -> bytes:
    c = np.asarray(codes).reshape(-1)
    if bits == 0 or c.size == 0:
        return b""
    if bits == 8:
        return c.astype(np.uint8).tobytes()
    if bits == 16:
        return c.astype("<u2").tobytes()
    if c.size <= 1024:
        return ref_pack_bits(c, bits)
    total = (bits * c.size + 7) // 8
    out = np.empty(total, dtype=np.uint8)
    mask = np.uint64((1 << bits) - 1)
    for start in range(0, c.size, REF_CHUNK):
        part = c[start : start + REF_CHUNK]
        chunk = np.zeros(-(-part.size // 8) * 8, dtype=np.uint64)
        chunk[: part.size] = part.astype(np.uint64)
        chunk &= mask
        packed = ref_pack_groups(chunk, bits)
        at = start * bits // 8
        length = min(packed.size, total - at)
        out[at : at + length] = packed[:length]
    return out.tobytes()


def ref_unpack_codes(body: bytes, bits: int, size: int) -> np.ndarray:
    if bits == 0:
        return np.zeros(size, dtype=np.uint32)
    raw = np.frombuffer(body, dtype=np.uint8)
    need = (bits * size + 7) // 8
    if bits == 8:
        return raw[:size].astype(np.uint32)
    if bits == 16:
        return raw[: 2 * size].view("<u2").astype(np.uint32)
    if size <= 1024:
        return ref_unpack_bits(raw, bits, size)
    out = np.empty(size, dtype=np.uint32)
    for start in range(0, size, REF_CHUNK):
        count = min(REF_CHUNK, size - start)
        at = start * bits // 8
        chunk = np.zeros(-(-count // 8) * bits, dtype=np.uint8)
        available = min(chunk.size, need - at)
        chunk[:available] = raw[at : at + available]
        out[start : start + count] = ref_unpack_groups(chunk, bits)[:count]
    return out


def ref_varint(value: int) -> bytes:
    """LEB128, written independently of the codec: the header's integer fields since
    issue 12 (they were uint32 in 1a9ee06; the bodies are unchanged)."""
    out = []
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def ref_levels_header(bits: int, size: int, scale: float) -> bytes:
    """width u8 | d varint | R f32, or (issue 12) 0x80 | width | d varint | the high half
    of R's f32 when its low half is 0."""
    r32 = np.float32(scale).astype("<f4").tobytes()
    if r32[:2] == b"\0\0":
        return bytes([0x80 | bits]) + ref_varint(size) + r32[2:]
    return bytes([bits]) + ref_varint(size) + r32


def ref_signed_header(size: int, levels: int, scale: float) -> bytes:
    """tag 64 | d varint | s varint | scale f32."""
    return (
        bytes([64])
        + ref_varint(size)
        + ref_varint(levels)
        + np.float32(scale).astype("<f4").tobytes()
    )


# ---------------------------------------------------------------- inputs

SIZES = (1, 2, 7, 8, 9, 1023, 1024, 1025, 4097, LEVEL_CHUNK - 1, LEVEL_CHUNK, LEVEL_CHUNK + 3)


def vectors(rng: np.random.Generator, size: int):
    """Random vectors of several shapes: Gaussian, heavy-tailed, tiny, huge, entries
    exactly at +-max, integers (c lands on levels), signed zeros."""
    yield rng.standard_normal(size)
    yield rng.standard_cauchy(size)
    yield rng.standard_normal(size) * 1e-30
    yield rng.standard_normal(size) * 1e25
    x = rng.uniform(-1.0, 1.0, size)
    x[rng.integers(0, size)] = 1.0
    x[rng.integers(0, size)] = -1.0
    yield x
    yield rng.integers(-3, 4, size).astype(np.float64)
    yield np.where(rng.random(size) < 0.5, -0.0, 0.0)
    yield np.full(size, float(np.float32(0.1)))


def state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("bits", range(1, 17))
def test_stochastic_codes_payloads_and_draws_identical(bits: int) -> None:
    # Prepare
    rng = np.random.default_rng(1000 + bits)
    quantizer, codec = StochasticQuantizer(bits), FixedWidthCodec()
    for size in SIZES:
        for x in vectors(rng, size):
            seed = int(rng.integers(2**63))
            new_rng, old_rng = np.random.default_rng(seed), np.random.default_rng(seed)
            # Execute
            q = quantizer.quantize(x, new_rng)
            ref = ref_quantize(x, old_rng, bits)
            # Assert: codes, scale, payload, dequantized floats and generator state
            assert q.codes.dtype == ref.codes.dtype == np.uint32
            assert np.array_equal(q.codes, ref.codes), (bits, size)
            assert q.scale == ref.scale and q.bits == ref.bits
            assert state(new_rng) == state(old_rng)
            payload = codec.encode(q)
            assert payload == ref_levels_header(bits, size, ref.scale) + ref_pack_codes(
                ref.codes, bits
            )
            back = codec.decode(payload, size)
            assert np.array_equal(back.codes, ref.codes)
            # decoded codes are narrow (half the memory traffic of uint32 at 2 bits)
            assert back.codes.dtype == (np.uint8 if bits <= 8 else np.uint16)
            got, want = quantizer.dequantize(back), ref_dequantize(ref)
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


def test_one_draw_per_entry_over_many_messages() -> None:
    # Prepare: one generator over a sequence of messages of mixed widths and sizes
    new_rng, old_rng = np.random.default_rng(7), np.random.default_rng(7)
    data = np.random.default_rng(8)
    for _ in range(40):
        bits = int(data.integers(1, 17))
        x = data.standard_normal(int(data.integers(0, 3 * LEVEL_CHUNK)))
        # Execute / Assert
        q, ref = StochasticQuantizer(bits).quantize(x, new_rng), ref_quantize(x, old_rng, bits)
        assert np.array_equal(q.codes, ref.codes) and q.scale == ref.scale
    assert state(new_rng) == state(old_rng)


@pytest.mark.parametrize("bits", [*range(1, 17), 17, 24, 31, 32])
def test_pack_unpack_identical(bits: int) -> None:
    # Prepare: codes of several integer dtypes, some with bits beyond the width
    rng = np.random.default_rng(bits)
    for size in (0, 1, 3, 8, 13, 1024, 1025, 5000, 70_001):
        top = 2**bits - 1
        codes = rng.integers(0, top + 1, size, dtype=np.uint64)
        for dtype in (np.uint32, np.int64, np.uint64):
            if bits == 32 and dtype is np.int64:
                continue
            c = codes.astype(dtype)
            # Execute / Assert
            body = pack_codes(c, bits)
            assert body == ref_pack_codes(c, bits), (bits, size, dtype)
            tail = b"\xff" if (bits * size) % 8 == 0 else b""
            back = unpack_codes(body + tail, bits, size)
            assert np.array_equal(back, codes)
            assert back.dtype == np.min_scalar_type(2 ** max(bits, 8) - 1), (bits, back.dtype)
            assert np.array_equal(
                unpack_codes(body, bits, size), ref_unpack_codes(body, bits, size)
            )
        wide = rng.integers(0, 2**32, size, dtype=np.uint64)  # only the low bits count
        assert pack_codes(wide, bits) == ref_pack_codes(wide, bits)


def test_unpack_ignores_set_padding_bits() -> None:
    # Prepare: bodies whose padding bits (which decode refuses) are set
    rng = np.random.default_rng(3)
    for bits in (1, 2, 4):
        for size in (1, 3, 5, 7, 1027):
            body = bytearray(pack_codes(rng.integers(0, 2**bits, size), bits))
            body[-1] |= 0xFF << ((bits * size) % 8 or 8) & 0xFF
            # Execute / Assert
            got = unpack_codes(bytes(body), bits, size)
            assert np.array_equal(got, ref_unpack_codes(bytes(body), bits, size))


def test_finite_range_identical_and_refusals_unchanged() -> None:
    # Prepare
    rng = np.random.default_rng(5)
    for size in SIZES:
        for x in vectors(rng, size):
            # Execute / Assert: the same max |x| (a +0.0 for all-zero vectors)
            _, amax = finite_range(x)
            _, want = ref_finite_range(x)
            assert amax == want and np.signbit(amax) == np.signbit(want)
    for bad in ([1.0, np.nan], [np.inf, 1.0], [-np.inf], [1e39], [-1e39]):
        with pytest.raises(ValueError):
            finite_range(np.array(bad))


@pytest.mark.parametrize("levels", [1, 4, 16, 1000])
def test_dithered_codes_payloads_and_draws_identical(levels: int) -> None:
    # Prepare: the historic dithered expression and signed encoding
    rng = np.random.default_rng(11 + levels)
    codec = FixedWidthCodec()
    for norm in ("l2", "linf"):
        quantizer = DitheredQuantizer(levels, norm)
        for size in SIZES:
            for x in vectors(rng, size):
                seed = int(rng.integers(2**63))
                new_rng, old_rng = np.random.default_rng(seed), np.random.default_rng(seed)
                # Execute
                q = quantizer.quantize(x, new_rng)
                v, amax = ref_finite_range(x)
                n = amax if norm == "linf" else max(float(np.linalg.norm(v)), amax)
                scale = float32_ceil(n)
                if scale == 0.0:
                    want = np.zeros(v.size, np.int32)
                else:
                    u = old_rng.random(v.size)
                    level = np.floor(np.abs(v) * (levels / scale) + u)
                    np.minimum(level, levels, out=level)
                    want = (np.sign(v) * level).astype(np.int32)
                # Assert: levels, draws, payload
                assert q.scale == scale and q.codes.dtype == np.int32
                assert np.array_equal(q.codes, want), (norm, size)
                assert state(new_rng) == state(old_rng)
                offsets = (want.astype(np.int64) + levels).astype(np.uint32)
                body = ref_pack_codes(offsets, q.bits)
                head = ref_signed_header(size, levels, scale)
                assert codec.encode(q) == head + body


def test_signed_encode_checks_unchanged() -> None:
    # Prepare: levels beyond s in several dtypes
    from flower_qgadmm.compression.codecs import check_signed

    codec = FixedWidthCodec()
    for dtype in (np.int32, np.int64, np.int16, np.uint8):
        q = Quantized(np.array([0, 1, 3], dtype), 1.0, 3, "signed", 2)
        # Execute / Assert: the historic message
        with pytest.raises(ValueError, match="signed level 3 exceeds s = 2"):
            codec.encode(q)
        with pytest.raises(ValueError, match="signed level 3 exceeds s = 2"):
            check_signed(q)
    q = Quantized(np.array([-2, 0, 2], np.int32), 1.0, 3, "signed", 2)
    codes, s, scale = check_signed(q)
    assert codes.dtype == np.int64 and s == 2 and scale == 1.0
    assert codec.encode(q) == codec.encode(
        Quantized(np.array([-2, 0, 2], np.int64), 1.0, 3, "signed", 2)
    )


def test_decode_values_is_decode_then_dequantize() -> None:
    # Prepare: every kind and width the fixed-width codec writes, with their quantizers
    from flower_qgadmm.compression import (
        Float32Quantizer,
        RandomKQuantizer,
        SignQuantizer,
        TopKQuantizer,
    )

    rng = np.random.default_rng(21)
    codec = FixedWidthCodec()
    quantizers = [StochasticQuantizer(b) for b in range(1, 17)]
    quantizers += [DitheredQuantizer(3), SignQuantizer(), Float32Quantizer()]
    quantizers += [TopKQuantizer(fraction=0.1), RandomKQuantizer(fraction=0.1)]
    for quantizer in quantizers:
        for size in (1, 2, 3, 5, 8, 1023, 4097):
            for x in vectors(rng, size):
                payload = codec.encode(quantizer.quantize(x, rng))
                # Execute / Assert: the same floats, bit for bit
                want = quantizer.dequantize(codec.decode(payload, size))
                got = codec.decode_values(payload, size, quantizer)
                assert got.dtype == want.dtype and got.shape == want.shape
                assert got.tobytes() == want.tobytes(), (quantizer, size)


def test_decode_values_refuses_what_decode_refuses() -> None:
    # Prepare
    from flower_qgadmm.compression import PayloadError, SignQuantizer

    codec, quantizer = FixedWidthCodec(), StochasticQuantizer(2)
    x = np.random.default_rng(0).standard_normal(10)
    payload = codec.encode(quantizer.quantize(x, np.random.default_rng(1)))
    signed = codec.encode(SignQuantizer().quantize(x))
    bad = [payload[:-1], payload + b"\0", payload[:-1] + b"\xff", b"", b"\x03" + payload[1:]]
    # Execute / Assert: malformed payloads, wrong size, wrong kind
    for p in bad:
        with pytest.raises(PayloadError):
            codec.decode(p, 10)
        with pytest.raises(PayloadError):
            codec.decode_values(p, 10, quantizer)
    with pytest.raises(PayloadError, match="declares 10 entries"):
        codec.decode_values(payload, 11, quantizer)
    with pytest.raises(PayloadError, match="payload from worker 3 carries a signed message"):
        codec.decode_values(signed, 10, quantizer, "from worker 3")


@pytest.mark.filterwarnings("ignore:overflow")
def test_the_range_roundings_equal_their_numpy_formulation() -> None:
    # float32_ceil / bfloat16_ceil on the bit pattern in plain Python: the same floats
    # (and signs of zero) as the numpy scalar code they replaced, edges included
    rng = np.random.default_rng(7)
    top = float(np.finfo(np.float32).max)
    edges = [0.0, -0.0, 5e-324, 1e-45, 1.4e-45, 7e-46, 1e-40, 1.0, 1.0000001, top]
    edges += [top * (1 + 1e-9), float(np.nextafter(top, np.inf)), 3.5e38, 1e39, 1e300]
    edges += [np.inf, -1.0, -1e-40, -top, -1e39, -np.inf]
    mags = rng.random(20000) * 10.0 ** rng.integers(-46, 40, 20000)
    f32 = (rng.random(5000) * 10.0 ** rng.integers(-38, 38, 5000)).astype(np.float32)
    values = edges + list(mags) + list(-mags[:3000]) + [float(x) for x in f32]
    values += [float(np.nextafter(x, np.float32(np.inf))) * (1 - 1e-12) for x in f32[:2000]]
    for v in values:
        got, want = float32_ceil(v), ref_float32_ceil(v)
        assert got == want and np.signbit(got) == np.signbit(want), v
        if v >= 0:
            got, want = bfloat16_ceil(v), ref_bfloat16_ceil(v)
            assert got == want and np.signbit(got) == np.signbit(want), v
