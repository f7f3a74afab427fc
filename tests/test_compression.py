"""Contract tests of the quantizers and the fixed-width codec."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flower_qgadmm.compression import (
    FixedWidthCodec,
    Float32Quantizer,
    PayloadError,
    StochasticQuantizer,
    adaptive_bits,
    pack_codes,
    payload_bytes,
    unpack_codes,
)

CODEC = FixedWidthCodec()
ALL_BITS = list(range(1, 17))
SIZES = [0, 1, 2, 7, 13, 64, 1001]


def roundtrip(quantizer, x, rng, bits=None):
    q = quantizer.quantize(x, rng, bits=bits)
    payload = CODEC.encode(q)
    return q, payload, quantizer.dequantize(CODEC.decode(payload, size=x.size))


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("size", SIZES)
def test_stochastic_roundtrip_within_one_step_and_exact_size(bits: int, size: int) -> None:
    # Prepare
    rng = np.random.default_rng([bits, size])
    x = rng.standard_normal(size) * 3.0
    # Execute
    q, payload, x_hat = roundtrip(StochasticQuantizer(bits), x, rng)
    # Assert
    assert len(payload) == 9 + math.ceil(bits * size / 8) == payload_bytes(bits, size)
    assert x_hat.shape == x.shape and x_hat.dtype == np.float64
    if size:
        step = 2 * q.scale / (2**bits - 1)
        assert q.scale >= np.max(np.abs(x))
        assert np.all(np.abs(x_hat - x) <= step * (1 + 1e-12))
        assert q.codes.max() <= 2**bits - 1


@pytest.mark.parametrize("size", SIZES)
def test_float32_path_is_exact_on_float32_values(size: int) -> None:
    x = np.random.default_rng(size).standard_normal(size).astype(np.float32).astype(np.float64)
    q, payload, x_hat = roundtrip(Float32Quantizer(), x, None)
    assert len(payload) == 5 + 4 * size == payload_bytes(32, size)
    np.testing.assert_array_equal(x_hat, x)
    assert Float32Quantizer().nominal_bits(q) == 32 * size


@pytest.mark.parametrize("bits", [1, 2, 3, 8])
def test_stochastic_quantizer_is_unbiased(bits: int) -> None:
    # Prepare: a fixed vector, many independent seeded draws
    x = np.array([0.9, -0.31, 0.05, -1.0, 0.5, 0.0, 0.77])
    quantizer = StochasticQuantizer(bits)
    draws = 20000
    # Execute
    total = np.zeros_like(x)
    for i in range(draws):
        total += quantizer.dequantize(quantizer.quantize(x, np.random.default_rng(i)))
    # Assert: within 5 standard errors of the mean (variance <= step^2 / 4 per entry)
    step = 2 * 1.0 / (2**bits - 1)
    np.testing.assert_allclose(total / draws, x, atol=5 * step / 2 / np.sqrt(draws))


def test_same_seed_same_bytes_and_nominal_bits() -> None:
    x = np.linspace(-2, 3, 50)
    quantizer = StochasticQuantizer(3)
    a = CODEC.encode(quantizer.quantize(x, np.random.default_rng(7)))
    b = CODEC.encode(quantizer.quantize(x, np.random.default_rng(7)))
    c = CODEC.encode(quantizer.quantize(x, np.random.default_rng(8)))
    assert a == b and a != c
    assert quantizer.nominal_bits(quantizer.quantize(x, np.random.default_rng(7))) == 3 * 50 + 32


def test_zero_range_is_special_cased() -> None:
    q, payload, x_hat = roundtrip(StochasticQuantizer(2), np.zeros(5), np.random.default_rng(0))
    assert q.scale == 0.0
    np.testing.assert_array_equal(x_hat, np.zeros(5))


@pytest.mark.parametrize("bits", ALL_BITS)
def test_pack_unpack_all_widths_extreme_codes(bits: int) -> None:
    codes = np.array([0, 2**bits - 1, 1 % 2**bits, (2**bits - 1) // 2, 2**bits - 1], np.uint32)
    np.testing.assert_array_equal(unpack_codes(pack_codes(codes, bits), bits, codes.size), codes)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused(bad: float) -> None:
    x = np.array([1.0, bad, 0.0])
    for quantizer in (StochasticQuantizer(2), Float32Quantizer()):
        with pytest.raises(ValueError, match="non-finite"):
            quantizer.quantize(x, np.random.default_rng(0))


def test_wrong_rank_and_bad_width_are_refused() -> None:
    with pytest.raises(ValueError, match="1-D"):
        StochasticQuantizer(2).quantize(np.zeros((2, 2)), np.random.default_rng(0))
    for bits in (0, 17):
        with pytest.raises(ValueError, match="1..16"):
            StochasticQuantizer(bits)


def test_truncated_and_malformed_payloads_raise_payload_error() -> None:
    # Prepare
    x = np.random.default_rng(0).standard_normal(33)
    payload = CODEC.encode(StochasticQuantizer(3).quantize(x, np.random.default_rng(1)))
    raw = CODEC.encode(Float32Quantizer().quantize(x))
    # Execute / Assert
    for cut in (0, 1, 4, 8, len(payload) - 1):
        with pytest.raises(PayloadError, match="truncated"):
            CODEC.decode(payload[:cut])
    with pytest.raises(PayloadError, match="oversized"):
        CODEC.decode(payload + b"\x00")
    with pytest.raises(PayloadError, match="expects 32"):
        CODEC.decode(payload, size=32)
    with pytest.raises(PayloadError, match="width 0"):
        CODEC.decode(b"\x00" + payload[1:])
    bad_scale = payload[:5] + np.float32(np.nan).tobytes() + payload[9:]
    with pytest.raises(PayloadError, match="range"):
        CODEC.decode(bad_scale)
    nan_raw = raw[:5] + np.float32(np.inf).tobytes() + raw[9:]
    with pytest.raises(PayloadError, match="non-finite"):
        CODEC.decode(nan_raw)


def test_fuzzed_bytes_raise_nothing_but_payload_error() -> None:
    rng = np.random.default_rng(3)
    for _ in range(2000):
        blob = rng.integers(0, 256, size=int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
        try:
            CODEC.decode(blob)
        except PayloadError:
            pass


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
