"""Bounded fuzzing of every payload decoder and of the ClientApp entry points.

The cases and their classification are ``simulations/fuzz.py``'s (see its docstring;
``python simulations/fuzz.py --cases 100000`` is the long mode). Here: a few thousand
seeded cases per decoder (8000) (fixed-width levels of 1..16 bits, raw float32, signed, sparse;
source signed, levels) and 250 per ClientApp entry point (``train.step``,
``query.finish``, ``query.repair`` of six algorithm / codec pairs), under a per-case
time limit. Every case must end in PayloadError or an undetectable value change: no
silent acceptance, no crash, no hang. The harness itself is checked against codecs
broken on purpose.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flower_qgadmm.compression import FixedWidthCodec, PayloadError, Quantized

ROOT = Path(__file__).resolve().parents[1]
SEED = 20240611
DECODER_CASES = 8000
APP_CASES = 250
TIME_LIMIT = 2.0  # seconds per case: beyond it, a hang


def load_fuzz():
    name = "simulations_fuzz"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "simulations" / "fuzz.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


fuzz = load_fuzz()


def report(tally) -> str:
    return f"{dict(tally.counts)}; failures: {tally.failures[:5]}"


@pytest.mark.parametrize("decoder", list(fuzz.DECODERS))
def test_decoder_fuzz(decoder: str) -> None:
    # Execute
    tally = fuzz.fuzz_decoder(decoder, DECODER_CASES, SEED, TIME_LIMIT)
    # Assert: only PayloadError or undetectable value changes, both well represented
    assert tally.cases == DECODER_CASES
    assert tally.failed == 0, report(tally)
    assert tally.counts["refused"] > DECODER_CASES // 2, report(tally)
    assert tally.counts["value change"] > 0, report(tally)
    assert tally.max_seconds < TIME_LIMIT


def test_cases_are_seeded_and_cover_every_mutation() -> None:
    # Execute
    first = [fuzz.make_case("fixed-width/signed", 5, i) for i in range(300)]
    again = [fuzz.make_case("fixed-width/signed", 5, i) for i in range(300)]
    other = [fuzz.make_case("fixed-width/signed", 6, i) for i in range(300)]
    # Assert: same seed, same cases; another seed, other cases; every mutation drawn,
    # and sizes from the edge cases (0..8) to the larger ones
    assert [(c.payload, c.size, c.mutation) for c in first] == [
        (c.payload, c.size, c.mutation) for c in again
    ]
    assert [c.payload for c in first] != [c.payload for c in other]
    assert {c.mutation for c in first} == set(fuzz.MUTATIONS)
    assert any(c.size is None for c in first)
    sizes = [c.expected for c in first]
    assert min(sizes) == 0 and max(sizes) > 1000


# ---------------------------------------------------------------- ClientApp entry points


@pytest.fixture(scope="module")
def recordings():
    """One recorded relay run per app (lazily: only the apps a test asks for)."""
    cache: dict[str, object] = {}

    def get(app: str):
        if app not in cache:
            cache[app] = fuzz.record_app(app)
        return cache[app]

    return get


@pytest.mark.parametrize("app", list(fuzz.APPS))
def test_client_app_fuzz(app: str, recordings) -> None:
    # Prepare: a relay run of 5 rounds (worker 2 silent from round 3: a repair)
    rec = recordings(app)
    for entry in fuzz.ENTRY_POINTS:
        # Execute
        tally = fuzz.fuzz_app(rec, entry, APP_CASES, SEED, TIME_LIMIT)
        # Assert
        assert tally.failed == 0, f"{entry}: {report(tally)}"
        assert tally.counts["refused"] > APP_CASES // 2, f"{entry}: {report(tally)}"


# ---------------------------------------------------------------- the harness itself


class Lenient(FixedWidthCodec):
    """Broken on purpose: ignores the expected size and the padding (drops a check)."""

    def decode(self, payload, size=None):
        return super().decode(payload, None)


class Crashing(FixedWidthCodec):
    def decode(self, payload, size=None):
        return Quantized(np.zeros(1), 0.0, 32) if payload[:1] == b"\x20" else payload[99]


class Slow(FixedWidthCodec):
    def decode(self, payload, size=None):
        while True:
            time.sleep(0.01)


def test_the_harness_counts_silent_acceptances_crashes_and_hangs() -> None:
    levels = fuzz.DECODERS["fixed-width/levels"]
    payload = FixedWidthCodec().encode(Quantized(np.arange(8, dtype=np.uint32), 1.0, 3))

    def outcome(codec, data, size=8, limit=TIME_LIMIT):
        dec = fuzz.Decoder("broken", codec, "levels", levels.make, levels.fields)
        case = fuzz.Case("broken", 0, "test", data, size, size, payload)
        fuzz.DECODERS["broken"] = dec
        try:
            with fuzz.watchdog() as arm:
                return fuzz.run_case(case, arm, limit)[0]
        finally:
            del fuzz.DECODERS["broken"]

    # a payload of 9 entries accepted where 8 are expected
    nine = FixedWidthCodec().encode(Quantized(np.arange(9, dtype=np.uint32), 1.0, 4))
    assert outcome(Lenient(), nine) == "silent"
    assert outcome(FixedWidthCodec(), nine) == "refused"
    # flipped value bits: other valid levels, undetectable (header: 3, 8 (1 byte), R)
    assert levels.layout(payload) == ([(0, "B", 1), (1, "V", 1), (2, "f", 4)], 6)
    flipped = payload[:6] + bytes([payload[6] ^ 1]) + payload[7:]
    assert outcome(FixedWidthCodec(), flipped) == "value change"
    # a raw message where levels are expected: the receiver's kind check
    raw = FixedWidthCodec().encode(Quantized(np.zeros(8, np.float32), 0.0, 32))
    assert outcome(FixedWidthCodec(), raw) == "refused"
    # decode that returns something that does not re-encode, or raises IndexError
    assert outcome(Crashing(), b"\x20" + payload[1:]) == "silent"
    assert outcome(Crashing(), payload) == "crash"
    assert outcome(Slow(), payload, limit=0.1) == "hang"


def test_decode_without_size_is_bounded_by_max_size() -> None:
    # the source decoder under fuzz refuses a declared d above its max_size when it is
    # given no expected size (a forged header cannot make it allocate more)
    codec = fuzz.DECODERS["source/signed"].codec
    from flower_qgadmm.compression.codecs import write_varint

    payload = codec.encode(Quantized(np.zeros(4, np.int32), 1.0, 2, "signed", 1))
    forged = payload[:1] + write_varint(codec.max_size + 1) + payload[2:]  # d: 1 byte before
    with pytest.raises(PayloadError, match="more than max_size"):
        codec.decode(forged)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cases", "0"], "--cases and --app-cases must be at least 1"),
        (["--app-cases", "-1"], "--cases and --app-cases must be at least 1"),
        (["--time-limit", "0"], "--time-limit must be positive"),
        (["--decoders", "nope"], "unknown decoder(s) nope; choose from fixed-width/levels"),
        (["--apps", "nope"], "unknown app(s) nope; choose from q-gadmm fixed-width levels"),
    ],
)
def test_the_command_line_refuses_what_it_cannot_run(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        fuzz.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
