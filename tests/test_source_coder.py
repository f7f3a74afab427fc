"""The vector source coder of Malcom-PSGD and its bit-level codes.

- Elias gamma, Golomb-Rice and the codewords against hand-computed bit strings, and a
  whole payload byte for byte;
- exact round trips: random sparse levels, all zeros, all non-zero, one huge run, huge
  levels, d = 1 and 0, Q-GADMM's unsigned levels;
- it beats dense fixed-width packing on sparse levels;
- fuzzing: random bytes, bit flips and truncations raise PayloadError only, quickly;
- the closed-form estimate: the documented formula, computed here term by term, and its
  distance to the measured length.

What every (quantizer, codec) pair satisfies is in ``test_compression_contract.py``.
"""

from __future__ import annotations

import math
import struct
import time

import numpy as np
import pytest

from flower_qgadmm.compression import (
    MAX_SIGNED_LEVEL,
    FixedWidthCodec,
    PayloadError,
    Quantized,
    SourceCodec,
    StochasticQuantizer,
    make_codec,
    make_quantizer,
)
from flower_qgadmm.compression.compressors import signed_width
from flower_qgadmm.compression.entropy import (
    BitReader,
    BitWriter,
    best_rice_parameter,
    gamma_lengths,
    read_codewords,
    rice_lengths,
    write_codewords,
)
from flower_qgadmm.compression.memory import PublicCopies
from flower_qgadmm.compression.source import expected_run_bits, max_payload_bytes

CODEC = SourceCodec()
DENSE = FixedWidthCodec()


def signed(codes, s: int = 1, scale: float = 1.0) -> Quantized:
    """A "signed" message of these levels."""
    codes = np.asarray(codes, dtype=np.int32)
    return Quantized(codes, scale, signed_width(s), "signed", s)


def sparse_levels(rng: np.random.Generator, d: int, density: float, s: int) -> np.ndarray:
    """d levels with about density * d non-zeros, magnitudes uniform in 1..s, random signs."""
    levels = np.zeros(d, dtype=np.int32)
    where = rng.random(d) < density
    levels[where] = rng.integers(1, s + 1, where.sum()) * rng.choice([-1, 1], where.sum())
    return levels


def roundtrip(q: Quantized) -> tuple[bytes, Quantized]:
    payload = CODEC.encode(q)
    back = CODEC.decode(payload, size=q.size)
    assert len(payload) == CODEC.payload_length(q)
    assert (back.kind, back.bits, back.levels, back.scale) == (q.kind, q.bits, q.levels, q.scale)
    np.testing.assert_array_equal(back.codes, q.codes)
    return payload, back


# ---------------------------------------------------------------- bit-level codes


@pytest.mark.parametrize(
    ("n", "bits"),
    [(1, "1"), (2, "010"), (3, "011"), (4, "00100"), (5, "00101"), (9, "0001001"),
     (17, "000010001")],
)  # fmt: skip
def test_elias_gamma_by_hand(n: int, bits: str) -> None:
    # Execute
    writer = BitWriter()
    writer.write_gamma(n)
    # Assert
    assert writer.to01() == bits
    assert gamma_lengths(np.array([n]))[0] == len(bits)
    assert BitReader(writer.getvalue()).read_gamma(32) == n


@pytest.mark.parametrize(
    ("n", "r", "bits"),
    [(9, 2, "00101"), (0, 3, "1000"), (5, 0, "000001"), (13, 3, "01101"), (0, 0, "1"),
     (7, 1, "00011")],
)  # fmt: skip
def test_golomb_rice_by_hand(n: int, r: int, bits: str) -> None:
    # Execute
    writer = BitWriter()
    writer.write_rice(n, r)
    # Assert: unary(n >> r) as zeros then a one, then the r low bits
    assert writer.to01() == bits
    assert rice_lengths(np.array([n]), r)[0] == len(bits)
    assert BitReader(writer.getvalue()).read_rice(r, limit=100) == n


def test_bit_reader_bounds() -> None:
    # Prepare: "00000000 00000001"
    reader = BitReader(b"\x00\x01")
    # Execute / Assert: a unary prefix longer than its limit, and reads past the end
    with pytest.raises(PayloadError, match="exceeds 10"):
        reader.read_unary(limit=10)
    assert reader.read_unary(limit=15) == 15 and reader.remaining == 0
    with pytest.raises(PayloadError, match="truncated"):
        reader.read(1)
    with pytest.raises(PayloadError, match="truncated"):
        BitReader(b"\x00").read_gamma(32)
    with pytest.raises(PayloadError, match="of 9 bits exceeds 4"):
        BitReader(b"\x00\x80\x00").read_gamma(4)


def test_next_one_bit_against_brute_force() -> None:
    # Prepare: byte strings with long zero gaps
    rng = np.random.default_rng(1)
    for _ in range(100):
        data = rng.choice([0, 0, 0, 1, 128, 255, 17], size=int(rng.integers(0, 20)))
        data = data.astype(np.uint8).tobytes()
        reader = BitReader(data)
        bits = np.unpackbits(np.frombuffer(data, np.uint8))
        for p in range(bits.size + 1):
            # Execute / Assert
            ones = np.flatnonzero(bits[p:])
            assert reader.next_one(p) == (p + ones[0] if ones.size else bits.size)


def test_codewords_by_hand() -> None:
    # Prepare: runs 2, 0 / signs -, + / magnitudes 3, 1 with r = 1:
    # rice(2,1) = 01 0, sign 1, gamma(3) = 011 | rice(0,1) = 1 0, sign 0, gamma(1) = 1
    expected = "010" + "1" + "011" + "10" + "0" + "1"
    # Execute
    bits = write_codewords(np.array([2, 0]), np.array([True, False]), np.array([3, 1]), r=1)
    reader = BitReader(np.packbits(bits).tobytes())
    runs, negative, mags = read_codewords(reader, 2, r=1, max_run=10, max_magnitude=3)
    # Assert
    assert "".join(map(str, bits.tolist())) == expected
    np.testing.assert_array_equal(runs, [2, 0])
    np.testing.assert_array_equal(negative, [True, False])
    np.testing.assert_array_equal(mags, [3, 1])


def test_whole_payload_by_hand() -> None:
    # Prepare: levels [0, 0, -1, 0, 2], s = 2: runs 2, 1; r = 0 (cost 3 + 0 = 1 + 2, tie)
    q = signed([0, 0, -1, 0, 2], s=2, scale=0.5)
    stream = "010" + "011" + "001" + "1" + "1" + "01" + "0" + "010"  # gamma(s), gamma(n+1), ...
    # Execute
    payload = CODEC.encode(q)
    # Assert: tag 0xA0 | r, d (a 1-byte varint), scale, then the 17 bits padded to 3 bytes
    expected = struct.pack("<BBf", 0xA0, 5, 0.5) + int(stream + "0" * 7, 2).to_bytes(3, "big")
    assert payload == expected
    assert CODEC.stream_bits(q) == len(stream) == 17
    roundtrip(q)


def test_rice_parameter_minimizes_the_length() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    runs = rng.geometric(0.03, size=200) - 1
    # Execute
    r = best_rice_parameter(runs)
    # Assert: no other r codes the runs in fewer bits; 2^r ~ ln 2 / p
    costs = [int(rice_lengths(runs, k).sum()) for k in range(20)]
    assert costs[r] == min(costs) and r in (4, 5)
    assert best_rice_parameter(np.zeros(0, np.int64)) == 0


def format_bits(levels: np.ndarray, s: int) -> int:
    """The payload length in bits, counted here from the format (module docstring of
    ``compression/source.py``): a tag byte, d as a LEB128 varint, the float32 scale, then
    gamma(s), gamma(n + 1) and per non-zero the Rice code of its zero run (the r of the
    shortest total), a sign bit and gamma(|level|), padded to a byte."""

    def gamma(n: int) -> int:
        return 2 * int(n).bit_length() - 1

    nonzero = np.flatnonzero(levels)
    runs = np.diff(nonzero, prepend=-1) - 1
    rice = min(int(np.sum(runs >> r)) + runs.size * (r + 1) for r in range(32))
    stream = gamma(s) + gamma(nonzero.size + 1) + (rice if runs.size else 0)
    stream += nonzero.size + sum(gamma(abs(int(v))) for v in levels[nonzero])
    varint = max(1, -(-levels.size.bit_length() // 7))
    return 8 * (1 + varint + 4) + 8 * -(-stream // 8)


@pytest.mark.parametrize("s", [1, 16])
def test_payload_length_equals_a_count_of_the_format(s: int) -> None:
    rng = np.random.default_rng(10 + s)
    for d in (1, 127, 128, 650, 20_000):
        for density in (0.0, 0.01, 0.2, 1.0):
            levels = sparse_levels(rng, d, density, s)
            assert 8 * len(CODEC.encode(signed(levels, s=s))) == format_bits(levels, s)


# ---------------------------------------------------------------- exact round trips


@pytest.mark.parametrize("s", [1, 3, 16, 255])
def test_roundtrip_random_sparse_levels(s: int) -> None:
    rng = np.random.default_rng(s)
    for d in (1, 2, 17, 650, 5000):
        for density in (0.0, 0.01, 0.05, 0.3, 1.0):
            roundtrip(signed(sparse_levels(rng, d, density, s), s=s))


def test_roundtrip_special_vectors() -> None:
    # all zeros, all non-zero, one huge run, huge levels, d = 1 and d = 0
    one_run = np.zeros(100_000, np.int32)
    one_run[-1] = -1
    cases = [
        signed(np.zeros(1000), s=1),
        signed(np.ones(300) * np.where(np.arange(300) % 3, 1, -1), s=1),
        signed(one_run, s=1),
        signed([2**20, 0, -(2**20), 5], s=2**20),
        signed([MAX_SIGNED_LEVEL, -MAX_SIGNED_LEVEL, 0, 1], s=MAX_SIGNED_LEVEL),
        signed([1], s=1),
        signed([0], s=7),
        signed([], s=1, scale=0.0),
    ]
    for q in cases:
        payload, _ = roundtrip(q)
    # one huge run costs a few bytes: r adapts to the run
    assert len(CODEC.encode(cases[2])) <= 9 + 8


def test_roundtrip_qgadmm_levels() -> None:
    # Prepare: Q-GADMM's unsigned codes (offsets from the most frequent code)
    rng = np.random.default_rng(9)
    for bits in (1, 2, 8, 16):
        quantizer = StochasticQuantizer(bits)
        for d in (0, 1, 40, 3000):
            x = rng.standard_normal(d) * rng.random(d) ** 8  # mostly tiny entries
            # Execute / Assert
            _, back = roundtrip(quantizer.quantize(x, rng))
            assert back.codes.dtype == np.uint32
    codes = np.array([0, 3, 3, 3, 2, 3], np.uint32)
    payload, _ = roundtrip(Quantized(codes, 1.0, 2))
    assert payload[0] >> 5 == 0b110


def test_dithered_through_the_source_coder_in_public_copies() -> None:
    # Prepare: Malcom-PSGD's pair, built by name
    quantizer, codec = make_quantizer("dithered", levels=1), make_codec("source")
    sender = PublicCopies(0, [1], np.zeros(650), quantizer, codec)
    receiver = PublicCopies(1, [0], np.zeros(650), quantizer, codec)
    theta = np.random.default_rng(2).standard_normal(650) * (np.arange(650) % 20 == 0)
    # Execute
    payload, change, _ = sender.encode(theta, np.random.default_rng(3))
    receiver.receive(0, payload)
    # Assert: both ends hold the same copy
    np.testing.assert_array_equal(receiver[0], change)


# ---------------------------------------------------------------- size and estimate


def test_source_coder_beats_fixed_width_on_sparse_levels(capsys) -> None:
    # Prepare: d = 1000, s = 1, 5% non-zeros; the dense layout needs 2 bits per entry
    rng = np.random.default_rng(4)
    q = signed(sparse_levels(rng, 1000, 0.05, 1))
    nnz = int(np.count_nonzero(q.codes))
    # Execute
    source_bits = 8 * len(CODEC.encode(q))
    dense_bits = 8 * len(DENSE.encode(q))
    # Assert
    with capsys.disabled():
        print(
            f"\n  d=1000, s=1, {nnz} non-zeros: source {source_bits / nnz:.2f} bits/non-zero, "
            f"fixed-width {dense_bits / nnz:.2f} ({source_bits / dense_bits:.1%})"
        )
    assert source_bits < 0.25 * dense_bits


def test_estimate_within_ten_percent_on_typical_sparse_levels(capsys) -> None:
    # Prepare: d = 1000, s = 1, 2-5% density, 20 seeds each
    rng = np.random.default_rng(5)
    errors = []
    for density in (0.02, 0.03, 0.05):
        for _ in range(20):
            q = signed(sparse_levels(rng, 1000, density, 1))
            # Execute
            measured = 8 * len(CODEC.encode(q))
            errors.append(CODEC.estimate_bits(q) / measured - 1)
    # Assert
    errors = np.array(errors)
    with capsys.disabled():
        print(
            f"\n  estimate / measured - 1: mean {errors.mean():+.1%}, "
            f"worst {errors[np.argmax(np.abs(errors))]:+.1%} over {errors.size} vectors"
        )
    assert np.all(np.abs(errors) <= 0.10)


def test_estimate_terms() -> None:
    # Prepare: counts only; signs and magnitudes exact, runs in expectation
    q = signed([0, 0, -1, 0, 2], s=2, scale=0.5)
    run_bits, r = expected_run_bits(2, 5)
    # Execute / Assert: the tag, d (a 1-byte varint) and the scale (48 bits) + gamma(2) +
    # gamma(3) + runs + 2 signs + gamma(1) + gamma(2)
    total = 48 + 3 + 3 + run_bits + 2 + 1 + 3
    assert CODEC.estimate_bits(q) == 8 * int(np.ceil(total / 8))
    assert expected_run_bits(0, 100) == (0.0, 0)
    assert expected_run_bits(100, 100)[1] == 0  # all non-zero: runs of 0, r = 0
    with pytest.raises(ValueError, match="does not write 'raw'"):
        CODEC.estimate_bits(Quantized(np.zeros(3, np.float32), 0.0, 32))


def test_vectorized_on_a_large_vector() -> None:
    # Prepare: d = 100000, 20% non-zeros, s = 16
    q = signed(sparse_levels(np.random.default_rng(6), 100_000, 0.2, 16), s=16)
    # Execute
    start = time.perf_counter()
    roundtrip(q)
    elapsed = time.perf_counter() - start
    # Assert: numpy everywhere but a short loop over the non-zeros
    assert elapsed < 1.0


def test_encode_refuses_what_it_cannot_write() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="not 'raw'"):
        CODEC.encode(Quantized(np.zeros(3, np.float32), 0.0, 32))
    with pytest.raises(ValueError, match="not 'sparse'"):
        CODEC.encode(make_quantizer("top-k", k=1).quantize(np.ones(3)))
    with pytest.raises(ValueError, match="exceeds s = 1"):
        CODEC.encode(signed([0, 2], s=1))
    with pytest.raises(ValueError, match="does not fit in 2 bits"):
        CODEC.encode(Quantized(np.array([4], np.uint32), 1.0, 2))


def test_declared_size_is_bounded() -> None:
    # Prepare: a valid all-zero message of d = 10^6
    payload = CODEC.encode(signed(np.zeros(1_000_000)))
    # Execute / Assert: refused without an expected size beyond max_size, fine with it
    with pytest.raises(PayloadError, match="more than max_size 1000"):
        SourceCodec(max_size=1000).decode(payload)
    assert SourceCodec(max_size=1000).decode(payload, size=1_000_000).size == 1_000_000
    assert max_payload_bytes(4) == 6 + (200 + 97 * 4 + 7) // 8
    assert max_payload_bytes(10**6) == 8 + (200 + 97 * 10**6 + 7) // 8  # d: a 3-byte varint
    assert len(payload) == 8 + 1  # tag, d in 3 bytes, scale; gamma(s = 1), gamma(n + 1 = 1)
    for forged in (
        payload[:1] + b"\x80" * 5 + payload[4:],
        payload[:1] + b"\x85\x00" + payload[2:],
    ):
        with pytest.raises(PayloadError, match="size field|minimal|truncated|bad"):
            CODEC.decode(forged)


# ---------------------------------------------------------------- fuzzing


def test_fuzzed_payloads_raise_payload_error_only_and_quickly() -> None:
    # Prepare: 300 random byte strings (half with a valid tag), 300 bit flips and
    # truncations of valid streams of both kinds
    rng = np.random.default_rng(7)
    blobs: list[tuple[bytes, int | None]] = []
    for i in range(300):
        blob = bytearray(rng.integers(0, 256, size=int(rng.integers(0, 60)), dtype=np.uint8))
        if i % 2 and len(blob) >= 5:
            blob[0] = (0xA0 if i % 4 == 1 else 0xC0) | int(rng.integers(0, 32))
            blob[1:5] = struct.pack("<I", int(rng.integers(0, 2000)))
        blobs.append((bytes(blob), None))
    valid = []
    for seed in range(10):
        d = int(rng.integers(1, 400))
        valid.append(CODEC.encode(signed(sparse_levels(rng, d, 0.1, 1 + seed), s=1 + seed)))
        x = rng.standard_normal(d) * rng.random(d) ** 6
        valid.append(CODEC.encode(StochasticQuantizer(1 + seed).quantize(x, rng)))
    for i in range(300):
        payload = bytearray(valid[i % len(valid)])
        size = struct.unpack_from("<I", payload, 1)[0] if i % 3 else None
        if i % 2:
            bit = int(rng.integers(0, 8 * len(payload)))
            payload[bit // 8] ^= 0x80 >> (bit % 8)
        else:
            payload = payload[: int(rng.integers(0, len(payload)))]
        blobs.append((bytes(payload), size))
    # Execute / Assert: PayloadError or a well-formed message; bounded time per decode
    worst = 0.0
    start = time.perf_counter()
    outcomes = {"error": 0, "decoded": 0}
    for blob, size in blobs:
        t0 = time.perf_counter()
        try:
            q = CODEC.decode(blob, size=size)
        except PayloadError:
            outcomes["error"] += 1
        else:
            outcomes["decoded"] += 1
            assert q.kind in ("signed", "levels") and q.codes.ndim == 1
            assert CODEC.decode(CODEC.encode(q), size=q.size).codes.shape == q.codes.shape
        worst = max(worst, time.perf_counter() - t0)
    total = time.perf_counter() - start
    # no hang: a bound on the worst case only (the machine is shared; speed is measured
    # by simulations/bench_source_coder.py and simulations/fuzz.py, not asserted here)
    assert worst < 5.0, (total, worst)
    assert outcomes["error"] > 400


def test_every_truncation_of_a_valid_stream_is_refused() -> None:
    # Prepare
    payload = CODEC.encode(signed(sparse_levels(np.random.default_rng(8), 500, 0.05, 3), s=3))
    # Execute / Assert
    for cut in range(len(payload)):
        with pytest.raises(PayloadError):
            CODEC.decode(payload[:cut])
        with pytest.raises(PayloadError):
            CODEC.decode(payload[:cut], size=500)
    for extra in (b"\x00", b"\x80", b"\x00" * 3):
        with pytest.raises(PayloadError):
            CODEC.decode(payload + extra)


@pytest.mark.parametrize(
    "algorithm, extra",
    [("malcom-psgd", {}), ("choco-sgd", {"codec": "source"}), ("q-gadmm", {"codec": "source"})],
)
def test_nominal_bits_are_the_source_coders_estimate_whatever_the_algorithm(
    algorithm, extra
) -> None:
    # Prepare: every algorithm that sends through the source coder
    from flower_qgadmm.compression import SourceCodec as Coder
    from flower_qgadmm.config import RunConfig
    from flower_qgadmm.data import experiment_datasets
    from flower_qgadmm.reference import least_squares_solvers, make_engine

    cfg = RunConfig.of(algorithm=algorithm, num_workers=4, samples_per_worker=20, dim=8, **extra)
    engine = make_engine(
        cfg.algorithm, least_squares_solvers(experiment_datasets(cfg)), cfg.graph, cfg.algo
    )
    engine.start()
    sent = {}
    for worker in engine.transport.workers.values():  # the quantized messages, kept
        original = worker.copies.encode

        def encode(theta, rng, bits=None, original=original, n=worker.node):
            payload, change, q = original(theta, rng, bits)
            sent[n] = q
            return payload, change, q

        worker.copies.encode = encode
    # Execute
    row = engine.run_round(1)
    # Assert: the history's nominal bits are the coder's closed-form estimate (Malcom's
    # formula), not the quantizer's dense count
    assert row["nominal_bits"] == sum(Coder().estimate_bits(q) for q in sent.values())
    assert row["nominal_bits"] != sum(
        worker.copies.quantizer.nominal_bits(sent[n])
        for n, worker in engine.transport.workers.items()
    )


def closed_form_here(values: np.ndarray, head: int) -> int:
    """The estimate of the module docstring, computed here from its formula (not from
    ``expected_run_bits``): 8 ceil((40 + 8 v(d) + head + |gamma(n + 1)| + n min_r [r + 1 +
    theta_r / (1 - theta_r)] + n + sum_i |gamma(|l_i|)|) / 8), theta_r = (1 - p)^(2^r),
    p = (n + 1) / (d + 1); ``head`` is |gamma(s)| (levels: 4 + b)."""

    def gamma(m: int) -> int:
        return 2 * int(m).bit_length() - 1

    d = values.size
    nonzero = [abs(int(v)) for v in values[values != 0]]
    n = len(nonzero)
    runs = 0.0
    if n:
        p = (n + 1) / (d + 1)
        costs = []
        for r in range(32):
            theta = (1.0 - p) ** (2**r)
            costs.append(r + 1 + theta / (1.0 - theta) if theta < 1.0 else math.inf)
        runs = n * min(costs)
    varint = max(1, -(-d.bit_length() // 7))
    total = 40 + 8 * varint + head + gamma(n + 1) + runs + n + sum(gamma(m) for m in nonzero)
    return 8 * math.ceil(total / 8)


def test_estimate_equals_the_closed_form_computed_here() -> None:
    # Prepare: sizes across the varint boundaries, densities 0 to 1, s from 1 to 255, and
    # Q-GADMM's unsigned levels (offsets from the most frequent code, head 4 + b)
    rng = np.random.default_rng(12)
    cases = []
    for d in (1, 50, 127, 128, 650, 4810, 20_000):
        for density in (0.0, 0.005, 0.03, 0.3, 1.0):
            for s in (1, 3, 255):
                levels = sparse_levels(rng, d, density, s)
                cases.append((signed(levels, s=s), levels, 2 * s.bit_length() - 1))
    for bits in (2, 8):
        x = rng.standard_normal(3000) * rng.random(3000) ** 8
        q = StochasticQuantizer(bits).quantize(x, rng)
        codes = q.codes.astype(np.int64)
        centre = int(np.argmax(np.bincount(codes)))
        cases.append((q, codes - centre, 4 + bits))
    # Execute / Assert: the estimate is the documented formula, term by term
    for q, values, head in cases:
        assert CODEC.estimate_bits(q) == closed_form_here(values, head), (q.size, q.kind)
