"""Specific tests of the compression core: the registries, the width check, the
fixed-width layout, the stochastic quantizer's special cases and the adaptive rule.

What every registered quantizer x codec must satisfy (round trip, error bound,
unbiasedness, payload length, malformed payloads, fuzzing) is in
``test_compression_contract.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from flower_qgadmm.compression import (
    CODECS,
    MAX_LEVEL_BITS,
    QUANTIZERS,
    FixedWidthCodec,
    Float32Quantizer,
    PayloadError,
    Quantized,
    Quantizer,
    StochasticQuantizer,
    adaptive_bits,
    check_level_bits,
    make_codec,
    make_quantizer,
    pack_codes,
    payload_bytes,
    register_codec,
    register_quantizer,
    unpack_codes,
)

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
    assert CODECS["fixed-width"] is FixedWidthCodec


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
    assert "'float32', 'stochastic'" in err.value.args[0]
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
    # Assert: 1-byte width, 4-byte size, 4-byte R, then ceil(b*d/8) bytes
    assert len(payload) == 9 + math.ceil(bits * 13 / 8) == payload_bytes(bits, 13)
    assert payload[0] == bits and int.from_bytes(payload[1:5], "little") == 13
    assert np.frombuffer(payload[5:9], "<f4")[0] == q.scale
    np.testing.assert_array_equal(back.codes, q.codes)


def test_float32_payload_layout() -> None:
    # Prepare
    x = np.array([1.5, -2.0, 0.25])
    # Execute
    payload = CODEC.encode(Float32Quantizer().quantize(x))
    # Assert: 1-byte width 32, 4-byte size, then the float32 entries
    assert len(payload) == 5 + 4 * 3 == payload_bytes(32, 3)
    assert payload[0] == 32 and int.from_bytes(payload[1:5], "little") == 3
    np.testing.assert_array_equal(np.frombuffer(payload[5:], "<f4"), x)


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
    with pytest.raises(PayloadError, match="width 0"):
        CODEC.decode(b"\x00" + payload[1:])
    with pytest.raises(PayloadError, match="range"):
        CODEC.decode(payload[:5] + np.float32(np.nan).tobytes() + payload[9:])


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
    # Assert: R is the float32 at or above max|x|, codes fit, seeds matter
    assert float(np.float32(q.scale)) == q.scale
    assert q.scale >= 3.1 > float(np.nextafter(np.float32(q.scale), np.float32(0)))
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
