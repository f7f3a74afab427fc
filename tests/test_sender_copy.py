"""The sender's own copy: dequantize(q) where the round trip is exact, the decode otherwise.

:class:`~flower_qgadmm.compression.memory.PublicCopies` skips decoding its own payload
for the pairs in ``EXACT_ROUND_TRIP`` (fixed-width codec with the stochastic or the
float32 quantizer) and adds ``quantizer.dequantize(q)``: this holds it to the promise
that these are the floats every receiver decodes from the bytes, bit for bit, over
every width, sizes around the packing paths, and vectors with signed zeros, tiny and
huge entries. The in-process memo hands them to the receivers, read-only.
"""

from __future__ import annotations

import numpy as np
import pytest

from flower_qgadmm.compression import (
    DitheredQuantizer,
    FixedWidthCodec,
    Float32Quantizer,
    SourceCodec,
    StochasticQuantizer,
)
from flower_qgadmm.compression.memory import EXACT_ROUND_TRIP, PublicCopies, within
from flower_qgadmm.numeric import max_abs


def vectors(rng: np.random.Generator, size: int):
    yield rng.standard_normal(size)
    yield rng.standard_cauchy(size)
    yield rng.standard_normal(size) * 1e-30
    yield rng.standard_normal(size) * 1e25
    yield rng.integers(-3, 4, size).astype(np.float64)
    yield np.where(rng.random(size) < 0.5, -0.0, 0.0)
    yield np.zeros(size)


QUANTIZERS = [Float32Quantizer(), *(StochasticQuantizer(b) for b in range(1, 17))]


@pytest.mark.parametrize("quantizer", QUANTIZERS, ids=lambda q: f"{type(q).__name__}")
def test_dequantize_is_the_decoded_payload(quantizer) -> None:
    # Prepare
    rng = np.random.default_rng(7)
    codec = FixedWidthCodec()
    assert (type(quantizer), type(codec)) in EXACT_ROUND_TRIP
    for size in (0, 1, 3, 8, 50, 1023, 4097):
        for x in vectors(rng, size):
            q = quantizer.quantize(x, rng)
            # Execute
            payload = codec.encode(q)
            decoded = codec.decode_values(payload, size, quantizer)
            # Assert: bit for bit (signed zeros included)
            want = quantizer.dequantize(q)
            assert want.dtype == decoded.dtype and want.shape == decoded.shape
            assert want.tobytes() == decoded.tobytes(), (quantizer, size)


@pytest.mark.parametrize(
    "quantizer, codec",
    [
        (StochasticQuantizer(3), FixedWidthCodec()),
        (Float32Quantizer(), FixedWidthCodec()),
        (DitheredQuantizer(4), FixedWidthCodec()),
        (DitheredQuantizer(1), SourceCodec()),
    ],
    ids=["stochastic", "float32", "dithered", "dithered-source"],
)
def test_sender_and_receiver_copies_agree(quantizer, codec) -> None:
    # Prepare: a sender and a receiver, with and without the shared memo
    rng = np.random.default_rng(3)
    for memo in (None, {}):
        sender = PublicCopies(0, [1], np.zeros(40), quantizer, codec)
        receiver = PublicCopies(1, [0], np.zeros(40), quantizer, codec)
        sender.memo = receiver.memo = memo
        for k in range(5):
            theta = rng.standard_normal(40) * 10.0**-k
            # Execute
            payload, change, _ = sender.encode(theta, np.random.default_rng(k))
            sender.commit(change)
            receiver.receive(0, payload)
            # Assert
            assert receiver.hat[0].tobytes() == sender.own.tobytes()
            assert change.tobytes() == sender.decode(payload, "again").tobytes()
            if memo is not None:
                assert memo[payload] is change and not change.flags.writeable


def test_within_is_the_exact_maximum() -> None:
    rng = np.random.default_rng(5)
    cases = [np.zeros(0), np.zeros(4), np.array([1e30]), np.array([np.nextafter(1e30, 2e30)])]
    cases += [np.array([np.nan, 0.0]), np.array([np.inf]), np.array([-1e30, 1e29])]
    cases += [rng.standard_normal(100) * 10.0**e for e in (-300, 0, 14, 15, 29, 30, 200)]
    cases += [np.full(10**4, 0.99e30 / 100), np.ones((3, 3)), np.ones(5, dtype=np.float32)]
    for x in cases:
        for bound in (1e30, 1e15, 1.0):
            want = (float(np.abs(x).max()) if x.size else 0.0) <= bound
            assert within(x, bound) == want, (x, bound)


def test_max_abs_is_numpys_maximum() -> None:
    rng = np.random.default_rng(6)
    cases = [np.zeros(4), -np.zeros(3), np.array([5e-324]), np.array([-2.0, 2.0, -2.0])]
    cases += [rng.standard_normal(n) * 10.0 ** rng.integers(-300, 150, n) for n in (1, 7, 64)]
    cases += [rng.integers(-3, 4, 1000).astype(float), rng.standard_normal(300)[::3]]
    cases += [rng.standard_normal(100) * 10.0**e for e in (-300, 0, 30, 150)]
    for x in cases:
        got = max_abs(x)
        assert got is not None and got == float(np.abs(x).max()) and not np.signbit(got)
    # what it cannot decide: the caller's exact path
    for x in (
        np.zeros(0),
        np.array([np.nan]),
        np.array([np.inf]),
        np.array([1e200]),
        np.ones(3, dtype=np.float32),
        np.ones((2, 2)),
    ):
        assert max_abs(x) is None


def test_the_hot_paths_direct_builders_make_the_dataclasses_objects() -> None:
    """dense_quantized / step_result set the fields at once instead of through the frozen
    dataclasses' __init__: the same objects (fields, kind, equality, repr, pickling)."""
    import pickle

    from flower_qgadmm.compression.base import Quantized, dense_quantized
    from flower_qgadmm.rounds import StepResult, step_result

    codes = np.arange(5, dtype=np.uint32)
    for args in ((codes, 1.5, 3, "levels"), (codes.astype(np.float32), 0.0, 32, "raw")):
        fast, slow = dense_quantized(*args), Quantized(*args[:3])
        assert fast == slow and repr(fast) == repr(slow) and fast.kind == args[3]
        assert repr(pickle.loads(pickle.dumps(fast))) == repr(slow)
        with pytest.raises(AttributeError):  # still frozen
            fast.scale = 2.0
    fields = (b"x", {"objective": 1.0}, 7, {}, None, True)
    assert step_result(*fields) == StepResult(*fields)
    assert step_result(*fields[:4]) == StepResult(*fields[:4])
