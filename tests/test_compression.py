"""Specific tests of the compression core: the registries and kinds, the width check, the
fixed-width layouts (varint size fields), the stochastic quantizer's special cases,
the adaptive rule, and the gossip compressors (dithered, top-k, random-k, sign).

The source coder has its own file, ``test_source_coder.py``.

What every registered quantizer x codec must satisfy (round trip, error bound,
unbiasedness, payload length, malformed payloads, fuzzing) is in
``test_compression_contract.py``.
"""

from __future__ import annotations

import hashlib
import math
import struct

import numpy as np
import pytest

from flower_qgadmm.compression import (
    CODECS,
    MAX_LEVEL_BITS,
    QUANTIZERS,
    DitheredQuantizer,
    FixedWidthCodec,
    Float32Quantizer,
    PayloadError,
    Quantized,
    Quantizer,
    RandomKQuantizer,
    ScaledDitheredQuantizer,
    SignQuantizer,
    SourceCodec,
    StochasticQuantizer,
    TopKQuantizer,
    adaptive_bits,
    check_compatible,
    check_level_bits,
    make_codec,
    make_quantizer,
    pack_codes,
    payload_bytes,
    register_codec,
    register_quantizer,
    unpack_codes,
)
from flower_qgadmm.compression.codecs import SHORT_RANGE, varint_length, write_varint
from flower_qgadmm.compression.memory import PublicCopies
from flower_qgadmm.compression.quantizers import float32_ceil, stochastic_levels

CODEC = FixedWidthCodec()
ALL_BITS = list(range(1, MAX_LEVEL_BITS + 1))


@pytest.fixture
def registries():
    """Restore both registries after a test that registers throw-away classes."""
    saved_q, saved_c = dict(QUANTIZERS), dict(CODECS)
    yield
    QUANTIZERS.clear()
    QUANTIZERS.update(saved_q)
    CODECS.clear()
    CODECS.update(saved_c)


class _Dummy(Quantizer):
    unbiased = False

    def quantize(self, x, rng, bits=None):
        return Quantized(np.zeros(0, np.uint32), 0.0, 1)

    def dequantize(self, q):
        return np.zeros(q.size)

    def nominal_bits(self, q):
        return 0


# ---------------------------------------------------------------- registries


def test_builtin_names_are_registered() -> None:
    assert QUANTIZERS["stochastic"] is StochasticQuantizer
    assert QUANTIZERS["float32"] is Float32Quantizer
    assert QUANTIZERS["dithered"] is DitheredQuantizer
    assert QUANTIZERS["top-k"] is TopKQuantizer
    assert QUANTIZERS["random-k"] is RandomKQuantizer
    assert QUANTIZERS["sign"] is SignQuantizer
    assert CODECS["fixed-width"] is FixedWidthCodec
    assert CODECS["source"] is SourceCodec


def test_make_builds_instances_with_kwargs() -> None:
    # Execute
    quantizer = make_quantizer("stochastic", bits=5)
    # Assert
    assert isinstance(quantizer, StochasticQuantizer) and quantizer.bits == 5
    assert isinstance(make_quantizer("float32"), Float32Quantizer)
    assert isinstance(make_codec("fixed-width"), FixedWidthCodec)


def test_unknown_name_lists_the_registered_ones() -> None:
    # Execute / Assert: e.g. "unknown quantizer 'x'; registered: ['float32', 'stochastic']"
    with pytest.raises(KeyError) as err:
        make_quantizer("x")
    assert err.value.args[0] == f"unknown quantizer 'x'; registered: {sorted(QUANTIZERS)}"
    assert all(f"'{name}'" in err.value.args[0] for name in ("float32", "stochastic", "sign"))
    with pytest.raises(KeyError) as err:
        make_codec("zip")
    assert err.value.args[0] == f"unknown codec 'zip'; registered: {sorted(CODECS)}"


def test_registration_and_duplicate_names(registries) -> None:
    # Execute
    register_quantizer("dummy")(_Dummy)
    # Assert
    assert make_quantizer("dummy").unbiased is False
    with pytest.raises(ValueError, match="already registered"):
        register_quantizer("stochastic")(_Dummy)
    with pytest.raises(ValueError, match="already registered"):
        register_codec("fixed-width")(FixedWidthCodec)
    assert QUANTIZERS["stochastic"] is StochasticQuantizer


def test_registration_refuses_incomplete_classes(registries) -> None:
    # Prepare: a quantizer without the unbiased declaration, a codec without its overhead
    class Undeclared(Quantizer):
        quantize = _Dummy.quantize
        dequantize = _Dummy.dequantize
        nominal_bits = _Dummy.nominal_bits

    class NoOverhead(FixedWidthCodec):
        header_overhead_bits = None

    # Execute / Assert
    with pytest.raises(TypeError, match="unbiased"):
        register_quantizer("undeclared")(Undeclared)
    with pytest.raises(TypeError, match="header_overhead_bits"):
        register_codec("no-overhead")(NoOverhead)
    with pytest.raises(TypeError, match="not a subclass"):
        register_codec("wrong-kind")(_Dummy)
    with pytest.raises(ValueError, match="non-empty"):
        register_quantizer("")(_Dummy)
    assert "undeclared" not in QUANTIZERS and "no-overhead" not in CODECS


def test_registration_refuses_unknown_kinds(registries) -> None:
    # Prepare
    class Foreign(_Dummy):
        kinds = frozenset({"levels", "huffman"})

    class Undeclared(_Dummy):
        kinds = ("levels",)

    # Execute / Assert
    with pytest.raises(TypeError, match="must declare kinds"):
        register_quantizer("foreign")(Foreign)
    with pytest.raises(TypeError, match="must declare kinds"):
        register_quantizer("undeclared")(Undeclared)


# ---------------------------------------------------------------- kinds


def test_quantized_kind_defaults_to_the_historic_ones() -> None:
    # Execute / Assert: Quantized(codes, scale, bits) keeps its meaning
    assert Quantized(np.zeros(3, np.uint32), 1.0, 3).kind == "levels"
    assert Quantized(np.zeros(3, np.float32), 0.0, 32).kind == "raw"
    assert Quantized(np.zeros(0, np.int64), 0.0, 32, "sparse", index=np.zeros(0), dim=7).size == 7
    with pytest.raises(ValueError, match="unknown kind 'dense'"):
        Quantized(np.zeros(3), 0.0, 32, "dense")
    with pytest.raises(ValueError, match="needs index and dim"):
        Quantized(np.zeros(3), 0.0, 32, "sparse")


def test_kinds_declared_by_quantizers_and_codecs() -> None:
    # Assert
    assert StochasticQuantizer.kinds == {"levels"} and Float32Quantizer.kinds == {"raw"}
    assert DitheredQuantizer.kinds == SignQuantizer.kinds == {"signed"}
    assert TopKQuantizer.kinds == RandomKQuantizer.kinds == {"sparse"}
    assert FixedWidthCodec.kinds == {"levels", "raw", "signed", "sparse"}
    assert SourceCodec.kinds == {"levels", "signed"}
    assert SourceCodec().supports("signed") and not SourceCodec().supports("sparse")


def test_incompatible_pair_refused_at_set_up() -> None:
    # Prepare
    message = (
        "codec 'source' cannot write the sparse messages of quantizer 'top-k' (it writes: "
        "levels, signed); codecs that can: ['fixed-width']"
    )
    top_k = make_quantizer("top-k", fraction=0.1)
    # Execute / Assert: the error names both and the codecs that would do
    with pytest.raises(ValueError) as err:
        check_compatible(top_k, make_codec("source"))
    assert str(err.value) == message
    with pytest.raises(ValueError, match="cannot write the sparse messages"):
        PublicCopies(0, [1], np.zeros(4), top_k, make_codec("source"))
    check_compatible(make_quantizer("dithered", levels=1), make_codec("source"))  # fine


def test_public_copies_refuse_a_message_of_another_kind() -> None:
    # Prepare: a stochastic worker receives a dithered payload (both readable by the codec)
    copies = PublicCopies(0, [1], np.zeros(4), StochasticQuantizer(2), CODEC)
    foreign = CODEC.encode(DitheredQuantizer(2).quantize(np.ones(4), np.random.default_rng(0)))
    # Execute / Assert
    with pytest.raises(PayloadError, match="carries a signed message, quantizer 'stochastic'"):
        copies.receive(1, foreign)


def historic_layout(payload: bytes, size: int) -> bytes:
    """A levels / raw payload in the layout of before issue 12: its size varint written
    back as a uint32 and a 16-bit range back as the float32 it is the high half of
    (everything else unchanged)."""
    varint = varint_length(size)
    assert payload[1 : 1 + varint] == write_varint(size)
    tag, rest = payload[0], payload[1 + varint :]
    if tag & SHORT_RANGE:
        tag, rest = tag & ~SHORT_RANGE, b"\0\0" + rest
    return bytes((tag,)) + struct.pack("<I", size) + rest


def float32_range_levels(x: np.ndarray, rng: np.random.Generator, bits: int) -> Quantized:
    """The stochastic quantizer of before issue 12: R = the float32 at or above max |x|."""
    r = float32_ceil(float(np.max(np.abs(x)))) if x.size else 0.0
    if r == 0.0:
        return Quantized(np.zeros(x.size, dtype=np.uint32), 0.0, bits)
    return Quantized(stochastic_levels(x, r, 2**bits - 1, rng), r, bits)


def test_historic_payloads_are_byte_identical() -> None:
    # Prepare: the bytes of the levels / raw payloads before the new kinds were added,
    # from the quantizer of then (a float32 range R), put back in the layout of then
    digest = hashlib.sha256()
    for bits in range(1, 17):
        for d in (0, 1, 13, 1001):
            x = np.random.default_rng(d + bits).standard_normal(d) * 3
            payload = CODEC.encode(float32_range_levels(x, np.random.default_rng(bits), bits))
            digest.update(historic_layout(payload, d))
    for d in (0, 1, 13, 1001):
        x = np.random.default_rng(d).standard_normal(d)
        digest.update(historic_layout(CODEC.encode(Float32Quantizer().quantize(x)), d))
    # Assert
    assert digest.hexdigest() == "2178a79db603f1cb9f31274c4e9230b091b5b763e68984cedaa8ac78e626a5ca"


# ---------------------------------------------------------------- the width check


@pytest.mark.parametrize("value", [1, 16, np.int64(3), 8.0])
def test_check_level_bits_accepts_integral_widths(value) -> None:
    assert check_level_bits(value) == int(value)
    assert type(check_level_bits(value)) is int


@pytest.mark.parametrize("value", [0, 17, -1, 2.5, True, "3", None])
def test_check_level_bits_names_the_key(value) -> None:
    with pytest.raises(ValueError) as err:
        check_level_bits(value, key="bits-max")
    assert str(err.value) == f"bits-max must be in 1..16, got {value}"


@pytest.mark.parametrize("bits", [0, 17])
def test_bad_width_is_refused_everywhere(bits: int) -> None:
    # Prepare
    message = f"bits must be in 1..16, got {bits}"
    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        StochasticQuantizer(bits)
    with pytest.raises(ValueError, match=message):
        StochasticQuantizer(2).quantize(np.ones(3), np.random.default_rng(0), bits=bits)
    with pytest.raises(ValueError, match=f"got {bits}"):
        CODEC.encode(Quantized(np.zeros(3, np.uint32), 1.0, bits))


def test_encode_refuses_what_decode_would_reject() -> None:
    # Prepare
    ok = np.array([0, 1, 3], np.uint32)
    # Execute / Assert
    with pytest.raises(ValueError, match="does not fit"):
        CODEC.encode(Quantized(np.array([0, 4], np.uint32), 1.0, 2))
    with pytest.raises(ValueError, match="non-negative integers"):
        CODEC.encode(Quantized(np.array([0, -1]), 1.0, 2))
    for scale in (-1.0, np.nan, np.inf, 0.1):  # 0.1 is not a float32 value
        with pytest.raises(ValueError, match="range R"):
            CODEC.encode(Quantized(ok, scale, 2))
    with pytest.raises(ValueError, match="1-D"):
        CODEC.encode(Quantized(np.zeros((2, 2), np.uint32), 1.0, 2))
    with pytest.raises(ValueError, match="non-finite"):
        CODEC.encode(Quantized(np.array([1.0, np.nan], np.float32), 0.0, 32))


# ---------------------------------------------------------------- fixed-width layout


@pytest.mark.parametrize("bits", ALL_BITS)
def test_pack_unpack_all_widths(bits: int) -> None:
    # Prepare: extreme codes, then seeded random codes at sizes with and without padding
    top = 2**bits - 1
    cases = [np.array([0, top, 1 % (top + 1), top // 2, top], np.uint32)]
    rng = np.random.default_rng(bits)
    cases += [rng.integers(0, top + 1, size=n, dtype=np.uint32) for n in (0, 1, 7, 13, 64)]
    for codes in cases:
        # Execute
        body = pack_codes(codes, bits)
        # Assert
        assert len(body) == math.ceil(bits * codes.size / 8)
        np.testing.assert_array_equal(unpack_codes(body, bits, codes.size), codes)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_stochastic_payload_layout_all_widths(bits: int) -> None:
    # Prepare
    x = np.random.default_rng(bits).standard_normal(13)
    quantizer = StochasticQuantizer(bits)
    # Execute
    q = quantizer.quantize(x, np.random.default_rng(0))
    payload = CODEC.encode(q)
    back = CODEC.decode(payload, size=13)
    # Assert: 1-byte width with the 16-bit range flag, 1-byte size varint (13 < 128),
    # the high half of R's float32 (its low half is 0), then ceil(b*d/8) bytes
    assert len(payload) == 4 + math.ceil(bits * 13 / 8) == payload_bytes(bits, 13)
    assert payload[0] == 0x80 | bits and payload[1] == 13
    assert np.frombuffer(b"\0\0" + payload[2:4], "<f4")[0] == q.scale
    np.testing.assert_array_equal(back.codes, q.codes)


def test_float32_payload_layout() -> None:
    # Prepare
    x = np.array([1.5, -2.0, 0.25])
    # Execute
    payload = CODEC.encode(Float32Quantizer().quantize(x))
    # Assert: 1-byte width 32, 1-byte size varint, then the float32 entries
    assert len(payload) == 2 + 4 * 3 == payload_bytes(32, 3)
    assert payload[0] == 32 and payload[1] == 3
    np.testing.assert_array_equal(np.frombuffer(payload[2:], "<f4"), x)


@pytest.mark.parametrize(
    ("size", "varint"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (2**21, b"\x80\x80\x80\x01"),
    ],
)
def test_size_field_is_a_leb128_varint(size: int, varint: bytes) -> None:
    # Prepare
    codes = np.arange(size, dtype=np.uint32) % 2
    # Execute
    levels = CODEC.encode(Quantized(codes, 1.0, 1))
    raw = CODEC.encode(Quantized(codes.astype(np.float32), 0.0, 32))
    # Assert: width (R = 1.0 fits 16 bits) | varint d | R | body, and width 32 | varint d
    # | body
    assert levels[: 1 + len(varint)] == bytes([0x81]) + varint
    assert len(levels) == 1 + len(varint) + 2 + math.ceil(size / 8) == payload_bytes(1, size)
    assert raw[: 1 + len(varint)] == bytes([32]) + varint
    assert len(raw) == 1 + len(varint) + 4 * size == payload_bytes(32, size)


def test_decode_messages_name_the_fault() -> None:
    # Prepare
    payload = CODEC.encode(StochasticQuantizer(3).quantize(np.ones(33), np.random.default_rng(1)))
    # Execute / Assert
    with pytest.raises(PayloadError, match="truncated"):
        CODEC.decode(payload[:-1])
    with pytest.raises(PayloadError, match="oversized"):
        CODEC.decode(payload + b"\x00")
    with pytest.raises(PayloadError, match="expects 32"):
        CODEC.decode(payload, size=32)
    with pytest.raises(PayloadError, match="tag 0 is not a width"):
        CODEC.decode(b"\x00" + payload[1:])
    with pytest.raises(PayloadError, match="range"):
        CODEC.decode(payload[:2] + np.float32(np.nan).tobytes()[2:] + payload[4:])


# ---------------------------------------------------------------- stochastic quantizer


def test_nominal_bits_are_the_papers_counts() -> None:
    # Prepare
    x = np.linspace(-2, 3, 50)
    rng = np.random.default_rng(7)
    # Execute / Assert: b*d + 32 for R, and 32*d for the float32 path
    assert StochasticQuantizer(3).nominal_bits(StochasticQuantizer(3).quantize(x, rng)) == 182
    assert Float32Quantizer().nominal_bits(Float32Quantizer().quantize(x)) == 32 * 50


def test_stochastic_range_codes_and_seed_dependence() -> None:
    # Prepare
    x = np.linspace(-2.0, 3.1, 50)
    quantizer = StochasticQuantizer(3)
    # Execute
    q = quantizer.quantize(x, np.random.default_rng(7))
    other = quantizer.quantize(x, np.random.default_rng(8))
    # Assert: R is the bfloat16 (a float32 with 7 mantissa bits) at or above max|x|, codes
    # fit, seeds matter
    assert q.scale == 3.109375 == 3.1 + (3.109375 - 3.1)  # 0x4047 << 16: 3 + 7 / 64
    assert q.scale - 2.0**-6 < 3.1 <= q.scale
    assert q.codes.dtype == np.uint32 and q.codes.max() <= 7
    assert CODEC.encode(q) != CODEC.encode(other)
    assert quantizer.error_bound(q) == 2 * q.scale / 7


def test_zero_range_is_special_cased() -> None:
    # Execute
    q = StochasticQuantizer(2).quantize(np.zeros(5), np.random.default_rng(0))
    # Assert: R = 0, all codes 0, no division by zero
    assert q.scale == 0.0 and not q.codes.any()
    np.testing.assert_array_equal(StochasticQuantizer(2).dequantize(q), np.zeros(5))


@pytest.mark.parametrize("quantizer", [StochasticQuantizer(8), Float32Quantizer()])
def test_values_beyond_float32_range_are_refused(quantizer: Quantizer) -> None:
    # Prepare: finite in float64, but R or the raw entry would arrive as Inf
    x = np.array([1.0, -1e39])
    # Execute / Assert
    with pytest.raises(ValueError, match="float32 range"):
        quantizer.quantize(x, np.random.default_rng(0))


def test_width_override_per_message() -> None:
    # Execute
    q = StochasticQuantizer(2).quantize(np.ones(4), np.random.default_rng(0), bits=5)
    # Assert
    assert q.bits == 5


def test_adaptive_rule_keeps_step_from_growing() -> None:
    # Delta_k = 2 R_k / (2^b_k - 1) <= omega * Delta_{k-1}, with the smallest such b.
    for prev_bits, prev_r, new_r, omega in [
        (2, 1.0, 1.0, 1.0),
        (2, 1.0, 0.3, 1.0),
        (3, 1.0, 2.5, 0.9),
        (4, 0.5, 0.01, 0.5),
    ]:
        b = adaptive_bits(prev_bits, prev_r, new_r, omega, bits_max=16)
        assert 2 * new_r / (2**b - 1) <= omega * 2 * prev_r / (2**prev_bits - 1) + 1e-15
        if b > 1:
            assert 2 * new_r / (2 ** (b - 1) - 1) > omega * 2 * prev_r / (2**prev_bits - 1)
    assert adaptive_bits(2, 1.0, 1e9, 1.0, bits_max=8) == 8  # capped
    assert adaptive_bits(5, 0.0, 1.0, 1.0, bits_max=8) == 5  # no previous range: keep


# ---------------------------------------------------------------- fixed-width: new kinds


def test_signed_payload_layout() -> None:
    # Prepare: s = 2 -> offset codes level + 2 in 0..4 on 3 bits
    q = Quantized(np.array([-2, 0, 1, 2, -1], np.int32), 1.5, 3, "signed", 2)
    # Execute
    payload = CODEC.encode(q)
    back = CODEC.decode(payload, size=5)
    # Assert: tag 64, d and s (1-byte varints), scale, then ceil(3 * 5 / 8) = 2 bytes
    assert len(payload) == 7 + 2 == CODEC.payload_length(q)
    assert struct.unpack_from("<BBBf", payload) == (64, 5, 2, 1.5)
    np.testing.assert_array_equal(unpack_codes(payload[7:], 3, 5), [0, 2, 3, 4, 1])
    assert (back.kind, back.levels, back.bits, back.scale) == ("signed", 2, 3, 1.5)
    np.testing.assert_array_equal(back.codes, q.codes)


def test_sparse_payload_layout() -> None:
    # Prepare: d = 10 -> 4-bit positions
    q = Quantized(
        np.array([0.5, -2.0], np.float32), 0.0, 32, "sparse", index=np.array([3, 9]), dim=10
    )
    # Execute
    payload = CODEC.encode(q)
    back = CODEC.decode(payload, size=10)
    # Assert: tag 65, d and k (1-byte varints), 1 byte of positions, 2 float32
    assert len(payload) == 3 + 1 + 8 == CODEC.payload_length(q)
    assert payload[:3] == bytes([65, 10, 2])
    assert payload[3] == 3 | 9 << 4
    np.testing.assert_array_equal(np.frombuffer(payload[4:], "<f4"), [0.5, -2.0])
    assert (back.kind, back.dim, back.size) == ("sparse", 10, 10)
    np.testing.assert_array_equal(back.index, [3, 9])


def test_encode_refuses_malformed_new_kinds() -> None:
    # Prepare
    def signed(codes, s=1, bits=2, scale=1.0):
        return Quantized(np.array(codes), scale, bits, "signed", s)

    def sparse(index, values, dim=5):
        return Quantized(
            np.array(values, np.float32), 0.0, 32, "sparse", index=np.array(index), dim=dim
        )

    # Execute / Assert
    with pytest.raises(ValueError, match="exceeds s = 1"):
        CODEC.encode(signed([0, 2]))
    with pytest.raises(ValueError, match="s = 0"):
        CODEC.encode(signed([0], s=0))
    with pytest.raises(ValueError, match="bits = 3, s = 1 needs 2"):
        CODEC.encode(signed([0], bits=3))
    with pytest.raises(ValueError, match="must be integers"):
        CODEC.encode(signed([0.5]))
    with pytest.raises(ValueError, match="signed scale"):
        CODEC.encode(signed([1], scale=0.1))
    with pytest.raises(ValueError, match="strictly increasing"):
        CODEC.encode(sparse([2, 2], [1, 1]))
    with pytest.raises(ValueError, match="strictly increasing"):
        CODEC.encode(sparse([5], [1]))
    with pytest.raises(ValueError, match="non-finite"):
        CODEC.encode(sparse([1], [np.inf]))


# ---------------------------------------------------------------- dithered


@pytest.mark.parametrize("levels", [0, -1, 2.5, True, "4"])
def test_dithered_levels_below_one_are_refused(levels) -> None:
    with pytest.raises(ValueError, match=r"dithered: levels s must be an integer in 1\.\."):
        DitheredQuantizer(levels)
    with pytest.raises(ValueError, match="norm must be 'l2' or 'linf'"):
        DitheredQuantizer(2, norm="l1")


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_dithered_levels_follow_the_formula(norm: str) -> None:
    # Prepare: Q(x)_k = N sign(x_k) floor(s |x_k| / N + u_k) / s
    x = np.array([3.0, -4.0, 0.0, 0.5, -0.1])
    s = 3
    u = np.random.default_rng(11).random(5)
    big = np.linalg.norm(x) if norm == "l2" else np.abs(x).max()
    # Execute
    quantizer = DitheredQuantizer(s, norm=norm)
    q = quantizer.quantize(x, np.random.default_rng(11))
    # Assert: N is the float32 at or above the norm
    n32 = q.scale
    assert float(np.float32(n32)) == n32 and 0 <= n32 - big < 1e-6
    np.testing.assert_array_equal(q.codes, np.sign(x) * np.floor(s * np.abs(x) / n32 + u))
    np.testing.assert_allclose(quantizer.dequantize(q), n32 * q.codes / s)
    assert quantizer.error_bound(q) == n32 / s
    assert (q.kind, q.levels, q.bits) == ("signed", 3, 3)


def test_dithered_norm_is_rounded_up_to_float32() -> None:
    # Prepare: max |x| is not a float32 value; with linf the top entry sits on the norm
    x = np.array([0.1, -0.3, 1 / 3])
    # Execute
    levels = [
        DitheredQuantizer(4, norm="linf").quantize(x, np.random.default_rng(seed))
        for seed in range(200)
    ]
    # Assert: N = the float32 just above 1/3, levels never above s
    assert levels[0].scale > 1 / 3 and float(np.float32(levels[0].scale)) == levels[0].scale
    assert max(int(np.abs(q.codes).max()) for q in levels) == 4


def test_dithered_zero_vector_and_nominal_bits() -> None:
    # Execute
    q = DitheredQuantizer(16).quantize(np.zeros(50), np.random.default_rng(0))
    # Assert: zero levels, norm 0; 32 + d (1 + ceil(log2(s + 1))) bits
    assert q.scale == 0.0 and not q.codes.any()
    assert DitheredQuantizer(16).nominal_bits(q) == 32 + 50 * 6
    assert (
        DitheredQuantizer(1).nominal_bits(
            DitheredQuantizer(1).quantize(np.ones(50), np.random.default_rng(0))
        )
        == 132
    )


def test_variance_scaling_divides_by_tau() -> None:
    # Prepare
    x = np.random.default_rng(3).standard_normal(100)
    plain = make_quantizer("dithered", levels=4)
    scaled = make_quantizer("dithered", levels=4, variance_scaling=True)
    # Execute
    q = scaled.quantize(x, np.random.default_rng(5))
    # Assert: tau = 1 + min(d / s^2, sqrt(d) / s) = 1 + min(6.25, 2.5); same payload
    assert isinstance(scaled, ScaledDitheredQuantizer) and scaled.unbiased is False
    assert type(plain) is DitheredQuantizer and plain.unbiased is True
    assert scaled.tau(100, 4) == 3.5
    np.testing.assert_array_equal(q.codes, plain.quantize(x, np.random.default_rng(5)).codes)
    np.testing.assert_allclose(scaled.dequantize(q), plain.dequantize(q) / 3.5)
    assert np.all(np.abs(scaled.dequantize(q) - x) <= scaled.error_bound(q))


def test_dithered_is_unbiased_over_many_draws() -> None:
    # Prepare: 20000 seeded draws of s = 1 (the largest variance)
    x = np.array([0.9, -0.31, 0.05, -1.0, 0.0])
    quantizer = DitheredQuantizer(1)
    rng = np.random.default_rng(1)
    # Execute
    draws = np.stack([quantizer.dequantize(quantizer.quantize(x, rng)) for _ in range(20000)])
    # Assert: within 5 standard errors
    atol = 5 * draws.std(axis=0) / np.sqrt(draws.shape[0]) + 1e-12
    assert np.all(np.abs(draws.mean(axis=0) - x) <= atol)


# ---------------------------------------------------------------- top-k, random-k, sign


def test_top_k_keeps_the_largest_with_ties_by_index() -> None:
    # Prepare
    x = np.array([1.0, -3.0, 3.0, 2.0, 3.0, -0.5])
    # Execute
    q = TopKQuantizer(k=2).quantize(x)
    # Assert
    np.testing.assert_array_equal(q.index, [1, 2])
    np.testing.assert_array_equal(TopKQuantizer(k=2).dequantize(q), [0, -3, 3, 0, 0, 0])
    np.testing.assert_array_equal(TopKQuantizer(k=4).quantize(x).index, [1, 2, 3, 4])
    assert TopKQuantizer(k=2).error_bound(q) >= 3.0


def test_top_k_sizes_and_messages() -> None:
    # Execute / Assert
    with pytest.raises(ValueError) as err:
        TopKQuantizer(k=12).quantize(np.ones(10))
    assert str(err.value) == "top-k: k = 12 exceeds the dimension 10"
    with pytest.raises(ValueError, match="random-k: k = 3 exceeds the dimension 2"):
        RandomKQuantizer(k=3).quantize(np.ones(2), np.random.default_rng(0))
    with pytest.raises(ValueError, match="exactly one of k and fraction"):
        TopKQuantizer()
    with pytest.raises(ValueError, match="exactly one of k and fraction"):
        TopKQuantizer(k=1, fraction=0.5)
    with pytest.raises(ValueError, match="k must be an integer"):
        TopKQuantizer(k=0)
    for fraction in (0.0, 1.5, -0.1, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="fraction must be in"):
            RandomKQuantizer(fraction=fraction)
    # k = min(d, max(1, ceil(f d))): 1% of 650 -> 7 entries of 32 + 10 bits
    quantizer = TopKQuantizer(fraction=0.01)
    q = quantizer.quantize(np.arange(650.0))
    assert quantizer.count(650) == 7 and quantizer.count(10) == 1 and quantizer.count(0) == 0
    assert quantizer.nominal_bits(q) == 7 * 42
    np.testing.assert_array_equal(q.index, np.arange(643, 650))


def test_random_k_keeps_values_unscaled() -> None:
    # Prepare
    x = np.arange(1.0, 11.0)
    quantizer = RandomKQuantizer(k=4)
    # Execute
    q = quantizer.quantize(x, np.random.default_rng(2))
    again = quantizer.quantize(x, np.random.default_rng(2))
    # Assert: sorted distinct positions, values x_k as they are (CHOCO's rand_k),
    # deterministic for a seed
    assert np.all(np.diff(q.index) > 0) and q.index.size == 4
    np.testing.assert_array_equal(q.codes, x[q.index])
    np.testing.assert_array_equal(q.index, again.index)
    assert quantizer.error_bound(q) == math.inf
    assert quantizer.nominal_bits(q) == 4 * (32 + 4)
    assert not RandomKQuantizer.unbiased


def test_random_k_is_chocos_compression_operator() -> None:
    # Prepare: CHOCO-SGD needs E||Q(x) - x||^2 <= (1 - omega) ||x||^2; rand_k has omega = k/d
    x = np.array([0.9, -0.31, 0.05, -1.0, 0.0, 2.0])
    quantizer = RandomKQuantizer(k=2)
    rng = np.random.default_rng(4)
    # Execute
    draws = np.stack([quantizer.dequantize(quantizer.quantize(x, rng)) for _ in range(20000)])
    # Assert: each entry is kept with probability k/d, so E[Q(x)] = (k/d) x and the error
    # is the dropped entries: E||Q(x) - x||^2 = (1 - k/d) ||x||^2 (here 2/3 ||x||^2)
    atol = 5 * draws.std(axis=0) / np.sqrt(draws.shape[0]) + 1e-7
    assert np.all(np.abs(draws.mean(axis=0) - x / 3) <= atol)
    errors = np.sum((draws - x) ** 2, axis=1)
    sem = errors.std() / np.sqrt(errors.size)
    assert abs(errors.mean() - (2 / 3) * np.sum(x**2)) <= 5 * sem


def test_scaled_sign() -> None:
    # Prepare
    x = np.array([1.0, -2.0, 0.0, 3.0])
    quantizer = make_quantizer("sign")
    # Execute
    q = quantizer.quantize(x)
    # Assert: sign(x) ||x||_1 / d, zeros stay zero; 32 + d bits
    np.testing.assert_array_equal(quantizer.dequantize(q), [1.5, -1.5, 0.0, 1.5])
    assert (q.kind, q.levels, q.scale) == ("signed", 1, 1.5)
    assert quantizer.nominal_bits(q) == 36
    np.testing.assert_array_equal(quantizer.dequantize(quantizer.quantize(np.zeros(3))), 0.0)


@pytest.mark.parametrize("name", ["dithered", "float32", "random-k", "sign", "stochastic", "top-k"])
def test_a_complex_vector_is_refused_not_stripped_of_its_imaginary_part(name: str) -> None:
    """numpy's float conversion drops the imaginary part with only a ComplexWarning: every
    built-in quantizer refuses a complex vector instead of sending its real part."""
    kwargs = {"random-k": {"fraction": 0.5}, "top-k": {"fraction": 0.5}, "stochastic": {"bits": 3}}
    quantizer = make_quantizer(name, **kwargs.get(name, {}))
    x = np.array([1.0 + 2.0j, -0.5 + 0.0j, 0.25 - 1.0j])
    with pytest.raises(ValueError, match="vector must be real, got dtype complex128"):
        quantizer.quantize(x, np.random.default_rng(0))
