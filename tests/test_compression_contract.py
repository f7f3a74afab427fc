"""Contract suite: every registered quantizer (with each example) x every registered codec.

In the style of scikit-learn's ``parametrize_with_checks``: the parameters are read from
the registries (``QUANTIZERS``, ``CODECS``), not from hard-coded classes, and each
``check_*`` function below is one clause of the contract. A newly registered quantizer
must get an entry in ``EXAMPLES`` (its constructor kwargs for the suite) and a newly
registered codec an entry in ``MALFORMED`` (payloads its header must reject); the
coverage tests fail loudly until it has one.

The contract, for ``x_hat = dequantize(decode(encode(quantize(x))))``:

- ``x_hat`` is a float64 vector of the shape of ``x``; ``x`` is not modified;
- ``|x_hat - x| <= error_bound(q)`` per entry; lossless: ``x_hat == float32(x)``;
- unbiased (where declared): the mean of many seeded draws is ``x`` within a few
  standard errors; a quantizer that shrinks in expectation (``shrink(d)`` = tau > 1:
  the scaled dithered quantizer, random-k) has the mean ``x / tau``;
- the codec round trip is exact on :class:`Quantized`, so sender and receiver agree;
- the same seed gives the same bytes;
- ``len(payload) == codec.payload_length(q)`` (``== codec.payload_bytes(bits, d)`` for the
  historic kinds) and, for fixed-length codecs, the bits beyond the paper's count are
  the codec's ``overhead_bits(q)`` plus < 8 bits of padding (plus a documented extra
  for the pairs in ``LAYOUT_EXTRA``);
- empty and all-zero vectors work; NaN/Inf or 2-D input raise ``ValueError``;
- truncated, oversized, wrong-size and malformed payloads raise ``PayloadError``, and
  fuzzed bytes raise nothing else.

It runs over the pairs whose codec can write every kind the quantizer produces
(``Quantizer.kinds`` <= ``Codec.kinds``); the other pairs are listed as explicit skips,
and ``test_incompatible_pair_is_refused`` checks they are refused with a clear error.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from flower_qgadmm.compression import (
    CODECS,
    KINDS,
    QUANTIZERS,
    Codec,
    PayloadError,
    Quantized,
    Quantizer,
    SignQuantizer,
    TopKQuantizer,
    check_compatible,
    make_codec,
    make_quantizer,
    registered_name,
)
from flower_qgadmm.compression.codecs import write_varint
from flower_qgadmm.compression.entropy import BitWriter

# Constructor kwargs the suite runs each registered quantizer with.
EXAMPLES: dict[str, list[dict]] = {
    "stochastic": [dict(bits=b) for b in (1, 2, 3, 8, 16)],
    "float32": [{}],
    "dithered": [
        dict(levels=1),
        dict(levels=16, norm="linf"),
        dict(levels=4, variance_scaling=True),
        dict(levels=1, norm="linf", variance_scaling=True),
        dict(levels=2**20),
    ],
    "top-k": [dict(fraction=0.1), dict(fraction=1.0)],
    "random-k": [dict(fraction=0.1), dict(fraction=0.5), dict(fraction=1.0)],
    "sign": [{}],
}

# (quantizer, codec) pairs whose layout is not the paper's count, with the extra bits:
# the fixed-width codec writes the three values {-1, 0, +1} of the scaled sign in 2 bits,
# where the paper counts 1 sign bit per entry.
LAYOUT_EXTRA: dict[tuple[str, str], Callable[[Quantized], int]] = {
    ("sign", "fixed-width"): lambda q: q.size,
}


def source_payload(tag: int, size: int, scale: float, stream: str) -> bytes:
    """A source-coded payload: header (tag | r, d as a varint, scale) + the bit string
    ``stream``."""
    writer = BitWriter()
    for bit in stream:
        writer.write(int(bit), 1)
    return bytes([tag]) + write_varint(size) + struct.pack("<f", scale) + writer.getvalue()


def f32(value: float) -> bytes:
    return struct.pack("<f", value)


# Per registered codec: payloads its header check must reject, by case name.
MALFORMED: dict[str, dict[str, bytes]] = {
    # width or tag u8 | d varint | (signed: s varint | scale f32; sparse: k varint;
    # levels: R f32) | body
    "fixed-width": {
        **{f"width byte {w}": bytes([w, 4]) + f32(1.0) + bytes(4) for w in (0, 17, 31, 33, 255)},
        "NaN scale": bytes([8, 4]) + f32(float("nan")) + bytes(4),
        "+Inf scale": bytes([8, 4]) + f32(float("inf")) + bytes(4),
        "negative scale": bytes([8, 4]) + f32(-1.0) + bytes(4),
        "non-finite raw entry": bytes([32, 2]) + f32(1.0) + f32(np.inf),
        "size field too large": bytes([8]) + write_varint(2**32 - 1) + f32(1.0) + bytes(4),
        "size varint not minimal": bytes([8, 0x84, 0x00]) + f32(1.0) + bytes(4),
        "size varint beyond 2^32 - 1": bytes([8]) + b"\x84\x80\x80\x80\x10" + f32(1.0) + bytes(4),
        "size varint of 6 bytes": bytes([8]) + b"\x84\x80\x80\x80\x80\x00" + f32(1.0) + bytes(4),
        "size varint truncated": bytes([8, 0x84]),
        "raw size varint not minimal": bytes([32, 0x84, 0x00]) + bytes(16),
        "signed header truncated": bytes([64, 4, 1]) + bytes(3),
        "signed s = 0": bytes([64, 4, 0]) + f32(1.0) + bytes(1),
        "signed s varint not minimal": bytes([64, 4, 0x81, 0x00]) + f32(1.0) + bytes(1),
        "signed s varint truncated": bytes([64, 4, 0x81]),
        "signed NaN scale": bytes([64, 4, 1]) + f32(float("nan")) + bytes(1),
        "signed negative scale": bytes([64, 4, 1]) + f32(-1.0) + bytes(1),
        "signed level beyond s": bytes([64, 4, 1]) + f32(1.0) + b"\xff",
        "signed body truncated": bytes([64, 4, 16]) + f32(1.0) + bytes(2),
        "sparse header truncated": bytes([65, 4]),
        "sparse k > d": bytes([65, 4, 5]) + bytes(2 + 20),
        "sparse k varint not minimal": bytes([65, 4, 0x81, 0x00]) + bytes(1 + 4),
        "sparse positions repeated": bytes([65, 4, 2]) + b"\x05" + bytes(8),
        "sparse position beyond d": bytes([65, 3, 1]) + b"\x03" + bytes(4),
        "sparse non-finite value": bytes([65, 4, 1]) + b"\x00" + f32(np.inf),
        "sparse body short for d": bytes([65]) + write_varint(2**32 - 1) + b"\x01" + bytes(6),
    },
    # tags 0xA0 | r (signed) and 0xC0 | r (levels); streams as bit strings
    "source": {
        "tag of no kind": source_payload(0x00, 4, 1.0, "1" + "1"),
        "fixed-width tag": struct.pack("<BBf", 8, 4, 1.0) + bytes(1),
        "size varint not minimal": bytes([0xA0, 0x84, 0x00]) + f32(1.0) + b"\xc0",
        "size varint truncated": bytes([0xA0, 0x84]),
        "NaN scale": source_payload(0xA0, 4, float("nan"), "1" + "1"),
        "negative scale": source_payload(0xA0, 4, -1.0, "1" + "1"),
        "header only": source_payload(0xA0, 4, 1.0, ""),
        "count above d": source_payload(0xA0, 4, 1.0, "1" + "00110"),
        "run beyond d": source_payload(0xA0, 4, 1.0, "1" + "010" + "00001" + "0" + "1"),
        "runs past the end": source_payload(
            0xA0, 4, 1.0, "1" + "011" + "0001" + "0" + "1" + "1" + "0" + "1"
        ),
        "level above s": source_payload(0xA0, 4, 1.0, "1" + "010" + "1" + "0" + "010"),
        "codeword truncated": source_payload(0xA0, 4, 1.0, "1" + "010" + "1" + "0"),
        "padding not zero": source_payload(0xA0, 4, 1.0, "1" + "1" + "01"),
        "levels code above 2^b - 1": source_payload(
            0xC0, 4, 1.0, "0000" + "1" + "010" + "1" + "0" + "1"
        ),
        "levels code below 0": source_payload(0xC0, 4, 1.0, "0000" + "0" + "010" + "1" + "1" + "1"),
        "size field too large": source_payload(0xA0, 2**32 - 1, 1.0, "1" + "1"),
        "oversized for d": source_payload(0xA0, 4, 1.0, "1" + "1") + bytes(100),
    },
}

SIZES = [0, 1, 2, 7, 13, 64, 1001]
UNBIASED_X = np.array([0.9, -0.31, 0.05, -1.0, 0.5, 0.0, 0.77, 1e-3])
DRAWS = 2000
#: quantizers whose mean is not a multiple of x (``shrink`` 1, not unbiased): check_mean
#: skips them; any other must be unbiased or declare its ``shrink``
MEAN_UNDECLARED = (TopKQuantizer, SignQuantizer)
FUZZ_STRINGS = 300


def pipeline(quantizer: Quantizer, codec: Codec, x: np.ndarray, rng: np.random.Generator):
    """(quantized, payload, x_hat) of one transmission."""
    q = quantizer.quantize(x, rng)
    payload = codec.encode(q)
    return q, payload, quantizer.dequantize(codec.decode(payload, size=x.size))


def vector(seed: int, size: int) -> np.ndarray:
    """A seeded test vector with entries of mixed magnitude."""
    return np.random.default_rng(seed).standard_normal(size) * 3.0


# ---------------------------------------------------------------- the checks


def check_roundtrip_shape_dtype(quantizer: Quantizer, codec: Codec) -> None:
    for size in SIZES:
        # Prepare
        x = vector(size, size)
        x_before = x.copy()
        # Execute
        q, _, x_hat = pipeline(quantizer, codec, x, np.random.default_rng(size))
        # Assert
        assert x_hat.shape == x.shape and x_hat.dtype == np.float64
        assert q.size == size
        np.testing.assert_array_equal(x, x_before)


def check_error_bounded(quantizer: Quantizer, codec: Codec) -> None:
    for size in SIZES:
        # Prepare
        x = vector(100 + size, size)
        # Execute
        q, _, x_hat = pipeline(quantizer, codec, x, np.random.default_rng(size))
        # Assert
        if type(quantizer).lossless:
            np.testing.assert_array_equal(x_hat, x.astype(np.float32).astype(np.float64))
        else:
            bound = quantizer.error_bound(q)
            assert np.all(np.abs(x_hat - x) <= bound * (1 + 1e-12))


def check_mean(quantizer: Quantizer, codec: Codec) -> None:
    # Prepare: one fixed vector, many draws from one seeded generator
    x = UNBIASED_X
    tau = quantizer.shrink(x.size)
    assert tau >= 1 and (tau == 1 or not type(quantizer).unbiased)
    if isinstance(quantizer, MEAN_UNDECLARED):
        pytest.skip(f"{type(quantizer).__name__}: its mean is no multiple of x")
    rng = np.random.default_rng(20240607)
    # Execute
    draws = np.stack([pipeline(quantizer, codec, x, rng)[2] for _ in range(DRAWS)])
    bound = quantizer.error_bound(quantizer.quantize(x, rng))
    # Assert: |err| <= bound gives a standard deviation <= bound (Popoviciu), so the mean
    # lies within 4 standard errors; float32 rounding of x is allowed on top. Without a
    # bound on the deviation from the mean (random-k, a shrinking quantizer) the sample
    # standard deviation is used, with 5 standard errors.
    unbiased = type(quantizer).unbiased and math.isfinite(bound)
    spread = 4 * bound if unbiased else 5 * draws.std(axis=0)
    atol = spread / np.sqrt(DRAWS) + 2.0**-23 * np.abs(x) + 1e-12
    assert np.all(np.abs(draws.mean(axis=0) - x / tau) <= atol)
    # and pooled over the entries: tau = x.x / E[x.Q(x)], within 4 standard errors
    t = draws @ x
    tolerance = 4 * t.std() / (t.mean() * np.sqrt(DRAWS)) + 2.0**-20
    assert abs(float(x @ x) / t.mean() / tau - 1) <= tolerance


def check_codec_roundtrip_exact(quantizer: Quantizer, codec: Codec) -> None:
    # Prepare
    q = quantizer.quantize(vector(1, 37), np.random.default_rng(1))
    # Execute
    back = codec.decode(codec.encode(q), size=q.size)
    # Assert: the receiver rebuilds exactly what the sender's dequantize sees
    assert isinstance(back, Quantized)
    assert back.bits == q.bits and back.scale == q.scale
    assert (back.kind, back.levels, back.dim, back.size) == (q.kind, q.levels, q.dim, q.size)
    assert q.kind in type(quantizer).kinds
    np.testing.assert_array_equal(back.codes, q.codes)
    if q.kind == "sparse":
        np.testing.assert_array_equal(back.index, q.index)
    np.testing.assert_array_equal(quantizer.dequantize(back), quantizer.dequantize(q))


def check_same_seed_same_bytes(quantizer: Quantizer, codec: Codec) -> None:
    # Prepare
    x = vector(2, 50)
    # Execute
    a = codec.encode(quantizer.quantize(x, np.random.default_rng(7)))
    b = codec.encode(quantizer.quantize(x, np.random.default_rng(7)))
    # Assert
    assert a == b


def check_payload_length_and_overhead(quantizer: Quantizer, codec: Codec) -> None:
    for size in SIZES:
        # Prepare
        x = vector(200 + size, size)
        # Execute
        q, payload, _ = pipeline(quantizer, codec, x, np.random.default_rng(size))
        nominal = quantizer.nominal_bits(q)
        # Assert
        assert len(payload) == codec.payload_length(q)
        if q.kind in ("levels", "raw") and not type(codec).variable_length:
            assert len(payload) == codec.payload_bytes(q.bits, size)
        if type(codec).variable_length:
            continue  # its length depends on the values: payload_length is the contract
        extra = LAYOUT_EXTRA.get((registered_name(quantizer), registered_name(codec)))
        padding = 8 * len(payload) - nominal - codec.overhead_bits(q)
        padding -= extra(q) if extra else 0
        assert 0 <= padding < 8, (size, padding)


def check_empty_and_zero_vectors(quantizer: Quantizer, codec: Codec) -> None:
    for x in (np.zeros(0), np.zeros(9)):
        # Execute
        q, payload, x_hat = pipeline(quantizer, codec, x, np.random.default_rng(0))
        # Assert
        assert len(payload) == codec.payload_length(q)
        assert x_hat.shape == x.shape and x_hat.dtype == np.float64
        np.testing.assert_array_equal(x_hat, x)


def check_bad_input_refused(quantizer: Quantizer, codec: Codec) -> None:
    # Prepare
    bad_inputs = [np.array([1.0, v, 0.0]) for v in (np.nan, np.inf, -np.inf)]
    bad_inputs.append(np.zeros((2, 2)))
    for x in bad_inputs:
        # Execute / Assert
        with pytest.raises(ValueError):
            quantizer.quantize(x, np.random.default_rng(0))


def check_truncated_payloads(quantizer: Quantizer, codec: Codec) -> None:
    # Prepare: a short payload
    payload = codec.encode(quantizer.quantize(vector(3, 5), np.random.default_rng(3)))
    for cut in range(len(payload)):
        for size in (None, 5):
            # Execute / Assert
            with pytest.raises(PayloadError):
                codec.decode(payload[:cut], size=size)


def check_oversized_and_wrong_size(quantizer: Quantizer, codec: Codec) -> None:
    # Prepare
    payload = codec.encode(quantizer.quantize(vector(4, 5), np.random.default_rng(4)))
    # Execute / Assert
    for extra in (b"\x00", b"\xff" * 9):
        with pytest.raises(PayloadError):
            codec.decode(payload + extra)
    for size in (0, 4, 6):
        with pytest.raises(PayloadError):
            codec.decode(payload, size=size)


def check_fuzzed_bytes(quantizer: Quantizer, codec: Codec) -> None:
    # Prepare: half random strings, half valid payloads with a few random bytes replaced
    rng = np.random.default_rng(5)
    valid = codec.encode(quantizer.quantize(vector(5, 11), np.random.default_rng(5)))
    blobs = []
    for i in range(FUZZ_STRINGS):
        if i % 2:
            blobs.append(rng.integers(0, 256, size=int(rng.integers(0, 40)), dtype=np.uint8))
        else:
            blob = np.frombuffer(valid, dtype=np.uint8).copy()
            hits = rng.integers(0, blob.size, size=int(rng.integers(1, 4)))
            blob[hits] = rng.integers(0, 256, size=hits.size, dtype=np.uint8)
            blobs.append(blob)
    for blob in blobs:
        # Execute / Assert: PayloadError or a well-formed Quantized, nothing else
        try:
            q = codec.decode(blob.tobytes())
        except PayloadError:
            continue
        assert isinstance(q, Quantized) and q.codes.ndim == 1


CHECKS: list[Callable[[Quantizer, Codec], None]] = [
    check_roundtrip_shape_dtype,
    check_error_bounded,
    check_mean,
    check_codec_roundtrip_exact,
    check_same_seed_same_bytes,
    check_payload_length_and_overhead,
    check_empty_and_zero_vectors,
    check_bad_input_refused,
    check_truncated_payloads,
    check_oversized_and_wrong_size,
    check_fuzzed_bytes,
]


def kwargs_id(kwargs: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(kwargs.items()))


def compatible(qname: str, cname: str) -> bool:
    """Whether the codec writes every kind the quantizer produces (the kinds API)."""
    return QUANTIZERS[qname].kinds <= CODECS[cname].kinds


def contract_cases() -> Iterator:
    """(quantizer name, kwargs, codec name, check) over the registries' contents; pairs
    the codec cannot write are explicit skips."""
    for qname in sorted(QUANTIZERS):
        for kwargs in EXAMPLES.get(qname, []):
            for cname in sorted(CODECS):
                marks = ()
                if not compatible(qname, cname):
                    reason = f"codec {cname!r} does not write {sorted(QUANTIZERS[qname].kinds)}"
                    marks = (pytest.mark.skip(reason=reason),)
                for check in CHECKS:
                    yield pytest.param(
                        qname,
                        kwargs,
                        cname,
                        check,
                        id=f"{qname}({kwargs_id(kwargs)})-{cname}-{check.__name__}",
                        marks=marks,
                    )


@pytest.mark.parametrize(("qname", "kwargs", "cname", "check"), list(contract_cases()))
def test_contract(qname: str, kwargs: dict, cname: str, check: Callable) -> None:
    check(make_quantizer(qname, **kwargs), make_codec(cname))


@pytest.mark.parametrize(
    ("qname", "cname"),
    [
        pytest.param(qname, cname, id=f"{qname}-{cname}")
        for qname in sorted(QUANTIZERS)
        for cname in sorted(CODECS)
        if not compatible(qname, cname)
    ],
)
def test_incompatible_pair_is_refused(qname: str, cname: str) -> None:
    # Prepare
    quantizer = make_quantizer(qname, **EXAMPLES[qname][0])
    codec = make_codec(cname)
    q = quantizer.quantize(vector(6, 20), np.random.default_rng(6))
    # Execute / Assert: refused at set-up with both names, and by encode
    with pytest.raises(ValueError, match=f"codec '{cname}' cannot write the {q.kind} messages"):
        check_compatible(quantizer, codec)
    assert not codec.supports(q.kind)
    with pytest.raises(ValueError):
        codec.encode(q)


def test_every_pair_is_compatible_or_refused() -> None:
    # Assert: every quantizer has at least one codec able to write it
    for qname in QUANTIZERS:
        assert any(compatible(qname, cname) for cname in CODECS), qname


@pytest.mark.parametrize(
    ("cname", "payload"),
    [
        pytest.param(cname, payload, id=f"{cname}-{case}")
        for cname in sorted(CODECS)
        for case, payload in MALFORMED.get(cname, {}).items()
    ],
)
def test_malformed_header_raises_payload_error(cname: str, payload: bytes) -> None:
    # Prepare
    codec = make_codec(cname)
    # Execute / Assert
    for size in (None, 4):
        with pytest.raises(PayloadError):
            codec.decode(payload, size=size)


# ---------------------------------------------------------------- coverage of the registries


def test_every_registered_quantizer_has_examples() -> None:
    # Assert: a quantizer registered without examples would silently escape the suite
    assert sorted(QUANTIZERS) == sorted(EXAMPLES)
    assert all(EXAMPLES[name] for name in QUANTIZERS)


def test_every_registered_codec_has_malformed_cases() -> None:
    assert sorted(CODECS) == sorted(MALFORMED)
    assert all(MALFORMED[name] for name in CODECS)


@pytest.mark.parametrize("qname", sorted(QUANTIZERS))
def test_registered_quantizer_declares_its_properties(qname: str) -> None:
    cls = QUANTIZERS[qname]
    assert issubclass(cls, Quantizer)
    assert isinstance(cls.unbiased, bool) and isinstance(cls.lossless, bool)
    assert cls.kinds and cls.kinds <= set(KINDS)


@pytest.mark.parametrize("cname", sorted(CODECS))
def test_registered_codec_declares_its_overhead(cname: str) -> None:
    cls = CODECS[cname]
    assert issubclass(cls, Codec)
    assert isinstance(cls.header_overhead_bits, int) and cls.header_overhead_bits >= 0
    assert cls.kinds and cls.kinds <= set(KINDS)


@pytest.mark.parametrize("qname", sorted(QUANTIZERS))
def test_examples_produce_the_declared_kinds(qname: str) -> None:
    for kwargs in EXAMPLES[qname]:
        quantizer = make_quantizer(qname, **kwargs)
        q = quantizer.quantize(vector(8, 10), np.random.default_rng(8))
        assert q.kind in type(quantizer).kinds


def test_random_k_of_a_fixed_k_shrinks_by_d_over_k() -> None:
    # a fixed k cannot take the contract's empty vectors (k > d is refused), so its mean
    # is checked here: E[Q(x)] = (k / d) x on UNBIASED_X's 8 entries
    quantizer = make_quantizer("random-k", k=3)
    assert quantizer.shrink(UNBIASED_X.size) == 8 / 3
    check_mean(quantizer, make_codec("fixed-width"))
