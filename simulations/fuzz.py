"""Fuzzing: every payload decoder and every ClientApp entry point that takes payloads.

Run: ``python simulations/fuzz.py --cases 100000 --seed 0`` (``--app-cases`` per
ClientApp entry point, ``--time-limit`` seconds per case, ``--decoders`` to pick some).
Prints one row per decoder (and per algorithm x entry point) and exits 1 if any case
crashed, hung or was silently accepted. ``tests/test_fuzz.py`` runs the same cases with
small budgets.

Decoders: the fixed-width codec's four kinds (levels of 1..16 bits with a 32-bit range,
and with a 16-bit one as the stochastic quantizer sends, raw float32, signed levels,
sparse) and the source codec's two (signed, levels). A case takes a valid
message of a random size d (0..2000, with its edge cases), applies one mutation
(:data:`MUTATIONS`: truncation, extension, bit flips in the header or the body, a byte
set to a random value, random bytes, a header field set to an extreme value (a varint
field: also non-minimal, overlong, >= 2^32, or the former uint32), a payload of another
size, a wrong expected size, a header spliced onto another message's body;
1 case in 8 decodes without an expected size), then runs what a receiver runs:
``check_envelope(payload, d)`` (what the relay runs before forwarding) and
``decode(payload, d)``, then the kind check of :class:`PublicCopies`.

Outcomes (:data:`OUTCOMES`):

- ``refused``: :class:`PayloadError` (from decode, or the receiver's kind check);
- ``value change``: decoded without error, and allowed: a well-formed message of the
  expected size and kind, finite, that ``check_envelope`` accepts, whose encoding is
  exactly the mutated bytes (nothing ignored or misread). A bit flip in the packed
  values of a fixed-width message gives other valid values: without a MAC no decoder can
  tell, so this is an undetectable value change, not a silent acceptance;
- ``silent``: silent acceptance (a failure): a decode that breaks any of the above (wrong
  size, non-finite values, codes out of range, accepted although ``check_envelope``
  refuses, or bytes that do not re-encode to themselves);
- ``crash``: any other exception (a failure);
- ``hang``: the case took longer than the time limit (a failure; a SIGALRM timer also
  interrupts it in the main thread).

ClientApp entry points (``train.step``, ``query.finish``, ``query.repair``): a small
relay run over a :class:`~flower_qgadmm.testing.FakeGrid` (5 workers, d = 6, worker 2
silent from iteration 3 so the relay repairs the chain) records every such message with
the receiving worker's state; a case replays one of them on a copy of that state with
one inbox payload mutated as above (or replaced by a value of another type, or its sender
id changed).
``refused``: the handler raised PayloadError, or replied blaming that sender, and the
sender's public copy is unchanged; ``value change``: the worker applied a payload the
codec decodes; ``silent``: it applied one the codec refuses, a refused payload changed
its state, or the reply carries non-finite numbers; ``crash``: any other exception.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import math
import signal
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from flower_qgadmm.compression import (
    MAX_SIGNED_LEVEL,
    Codec,
    FixedWidthCodec,
    PayloadError,
    Quantized,
    SourceCodec,
)
from flower_qgadmm.compression.base import MAX_SCALE
from flower_qgadmm.compression.codecs import write_varint
from flower_qgadmm.compression.compressors import signed_width
from flower_qgadmm.compression.quantizers import bfloat16_ceil

OUTCOMES = ("refused", "value change", "silent", "crash", "hang")
FAILURES = ("silent", "crash", "hang")

# ---------------------------------------------------------------- valid messages


def _size(rng: np.random.Generator) -> int:
    """d: edge sizes (0..8) 15%, typical (9..200) 60%, larger (201..2000) 25%."""
    u = rng.random()
    if u < 0.15:
        return int(rng.integers(0, 9))
    if u < 0.75:
        return int(rng.integers(9, 201))
    return int(rng.integers(201, 2001))


def _scale(rng: np.random.Generator) -> float:
    """A float32 scale: 0, 1, or log-uniform in 1e-6..1e6."""
    u = rng.random()
    if u < 0.1:
        return 0.0
    if u < 0.2:
        return 1.0
    return float(np.float32(10.0 ** rng.uniform(-6, 6)))


def _top_level(rng: np.random.Generator, small: bool) -> int:
    """s: mostly small (1..16), sometimes large, up to 2^31 - 1."""
    u = rng.random()
    if u < (0.9 if small else 0.6):
        return int(rng.integers(1, 17))
    if u < 0.97:
        return int(rng.integers(17, 2**16))
    return int(rng.choice([2**31 - 1, int(rng.integers(2**16, MAX_SIGNED_LEVEL + 1))]))


def _levels(rng: np.random.Generator, d: int) -> Quantized:
    bits = int(rng.integers(1, 17))
    codes = rng.integers(0, 2**bits, d, dtype=np.int64).astype(np.uint32)
    return Quantized(codes, _scale(rng), bits)


def _levels16(rng: np.random.Generator, d: int) -> Quantized:
    """Levels whose range fits 16 bits (the stochastic quantizer's: rounded up)."""
    q = _levels(rng, d)
    return Quantized(q.codes, bfloat16_ceil(q.scale), q.bits)


def _raw(rng: np.random.Generator, d: int) -> Quantized:
    values = rng.standard_normal(d) * 10.0 ** rng.uniform(-3, 3)
    values[rng.random(d) < 0.1] = 0.0
    return Quantized(values.astype(np.float32), 0.0, 32)


def _signed_codes(rng: np.random.Generator, d: int, s: int, density: float) -> np.ndarray:
    codes = np.zeros(d, dtype=np.int64)
    where = rng.random(d) < density
    n = int(where.sum())
    codes[where] = rng.integers(1, s + 1, n) * rng.choice([-1, 1], n)
    return codes.astype(np.int32)


def _signed(rng: np.random.Generator, d: int) -> Quantized:
    s = _top_level(rng, small=False)
    codes = _signed_codes(rng, d, s, float(rng.random()))
    return Quantized(codes, _scale(rng), signed_width(s), "signed", s)


def _sparse(rng: np.random.Generator, d: int) -> Quantized:
    k = int(rng.integers(0, d + 1)) if rng.random() < 0.3 else int(rng.integers(0, d // 10 + 2))
    k = min(k, d)
    index = np.sort(rng.choice(d, size=k, replace=False)).astype(np.int64)
    values = (rng.standard_normal(k) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
    return Quantized(values, 0.0, 32, "sparse", index=index, dim=d)


def _source_signed(rng: np.random.Generator, d: int) -> Quantized:
    s = _top_level(rng, small=True)
    codes = _signed_codes(rng, d, s, float(rng.random() ** 2))
    return Quantized(codes, _scale(rng), signed_width(s), "signed", s)


def _source_levels(rng: np.random.Generator, d: int) -> Quantized:
    bits = int(rng.integers(1, 17))
    top = 2**bits - 1
    centre = int(rng.integers(0, top + 1))
    spread = _signed_codes(rng, d, max(1, min(top, int(rng.integers(1, 8)))), rng.random() ** 2)
    codes = np.clip(centre + spread.astype(np.int64), 0, top).astype(np.uint32)
    return Quantized(codes, _scale(rng), bits)


@dataclass(frozen=True)
class Decoder:
    """One decoder under test: a codec, the kind of its messages, how to make a valid one,
    its header fields in order from byte 0 (struct formats, ``"V"`` a LEB128 varint) and
    the bytes after them that still count as header (the rest is the body)."""

    name: str
    codec: Codec
    kind: str
    make: Callable[[np.random.Generator, int], Quantized]
    fields: tuple[str, ...]
    extra_header: int = 0

    def layout(self, payload: bytes) -> tuple[list[tuple[int, str, int]], int]:
        """((offset, format, length) of each field present in ``payload``, the header's
        length): a varint ends at its first byte < 0x80 (at most 5 bytes, or the end)."""
        fields, at = [], 0
        for fmt in self.fields:
            if fmt == "V":
                length = 1
                while (
                    length < 5 and at + length <= len(payload) and payload[at + length - 1] >= 0x80
                ):
                    length += 1
            else:
                length = struct.calcsize("<" + fmt)
            if at + length > len(payload):
                break
            fields.append((at, fmt, length))
            at += length
        return fields, at + self.extra_header


# the source decoder bounds d by max_size when decoding without an expected size
_SOURCE = SourceCodec(max_size=1 << 14)
_FIXED = FixedWidthCodec()

DECODERS: dict[str, Decoder] = {
    d.name: d
    for d in (
        # fixed-width: width or tag u8 | d varint | (R f32 or its high half; s varint |
        # scale f32; k varint)
        Decoder("fixed-width/levels", _FIXED, "levels", _levels, ("B", "V", "f")),
        Decoder("fixed-width/levels16", _FIXED, "levels", _levels16, ("B", "V", "H")),
        Decoder("fixed-width/raw", _FIXED, "raw", _raw, ("B", "V")),
        Decoder("fixed-width/signed", _FIXED, "signed", _signed, ("B", "V", "V", "f")),
        Decoder("fixed-width/sparse", _FIXED, "sparse", _sparse, ("B", "V", "V")),
        # source: byte 0 = kind << 5 | r, d varint, scale f32; the stream header (s or b,
        # c0; n) follows
        Decoder("source/signed", _SOURCE, "signed", _source_signed, ("B", "V", "f"), 4),
        Decoder("source/levels", _SOURCE, "levels", _source_levels, ("B", "V", "f"), 4),
    )
}

# ---------------------------------------------------------------- mutations

_U8 = (0, 1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 66, 127, 128, 160, 191, 192, 223, 255)
_F32 = (
    math.inf,
    -math.inf,
    math.nan,
    -0.0,
    -1.0,
    0.0,
    1e-45,
    1e30,
    float(np.float32(1e30)),  # the float32 just above 1e30
    1.0000001e30,
    3e38,
    float(np.finfo(np.float32).max),
)


_MALFORMED_VARINTS = (
    b"\x80\x00",  # 0, not minimal
    b"\x81\x80\x00",  # 1, not minimal
    b"\x80\x80\x80\x80\x80\x00",  # 6 bytes
    b"\xff\xff\xff\xff\xff\x01",  # 6 bytes
    b"\x80\x80\x80\x80\x10",  # 2^32
    b"\xff\xff\xff\xff\x7f",  # 2^35 - 1
    b"\xff",  # a continuation with nothing (or the next field) after it
)


def _extreme_varint(rng: np.random.Generator, old: bytes, d: int) -> bytes:
    """Replacement bytes of a varint field: an extreme value (minimal form), the value
    written as the uint32 of the former layout, a non-minimal form of the old value, or
    a malformed varint."""
    u = rng.random()
    if u < 0.5:
        return write_varint(int(_extreme(rng, "I", d)))  # uint32: always writable
    if u < 0.6:
        return struct.pack("<I", int(_extreme(rng, "I", d)))
    if u < 0.8 and len(old) < 5:  # the same value with a trailing 0x00 group
        return old[:-1] + bytes([old[-1] | 0x80]) + b"\x00"
    return _MALFORMED_VARINTS[int(rng.integers(0, len(_MALFORMED_VARINTS)))]


def _extreme(rng: np.random.Generator, fmt: str, d: int) -> int | float:
    if fmt == "B":
        if rng.random() < 0.3:  # the source tag: any kind (3 bits) with any r (5 bits)
            return int(rng.integers(0, 8)) << 5 | int(rng.choice([0, 1, 2, 30, 31]))
        return int(rng.choice(_U8)) if rng.random() < 0.8 else int(rng.integers(0, 256))
    if fmt == "I":
        choices = (0, 1, 2, d - 1, d + 1, 2 * d + 1, 2**16, 2**31 - 1, 2**31, 2**32 - 1)
        value = int(rng.choice(choices)) if rng.random() < 0.85 else int(rng.integers(0, 2**32))
        return value % 2**32
    if fmt == "H":  # a 16-bit range: the high half of an extreme float32
        return int(np.float32(_extreme(rng, "f", d)).view(np.uint32)) >> 16
    if rng.random() < 0.85:
        return float(rng.choice(_F32))
    return float(np.frombuffer(rng.bytes(4), "<f4")[0])


def _flip(rng: np.random.Generator, data: bytearray, low: int, high: int) -> None:
    for _ in range(int(rng.choice([1, 1, 1, 2, 3]))):
        bit = int(rng.integers(8 * low, 8 * high))
        data[bit // 8] ^= 1 << (bit % 8)


MUTATIONS = {
    # name: weight
    "truncate": 12,
    "extend": 8,
    "flip header": 15,
    "flip body": 15,
    "set byte": 10,
    "random bytes": 8,
    "extreme field": 16,
    "other size": 6,
    "expected size": 4,
    "splice": 6,
}
_NAMES = tuple(MUTATIONS)
_WEIGHTS = np.array([MUTATIONS[m] for m in _NAMES], float) / sum(MUTATIONS.values())


def mutate(
    rng: np.random.Generator, dec: Decoder, payload: bytes, d: int, mutation: str
) -> tuple[bytes, int]:
    """(mutated payload, the size the receiver expects) for one mutation."""
    data = bytearray(payload)
    size = d
    n = len(data)
    header = dec.layout(payload)[1]
    if mutation == "truncate":
        cut = int(rng.integers(0, n)) if rng.random() < 0.5 else n - int(rng.integers(1, 5))
        del data[max(cut, 0) :]
    elif mutation == "extend":
        extra = int(rng.choice([1, 1, 2, 3, 4, 8, int(rng.integers(1, 64))]))
        data += bytes(extra) if rng.random() < 0.3 else rng.bytes(extra)
    elif mutation == "flip header":
        _flip(rng, data, 0, min(n, header))
    elif mutation == "flip body":
        if n > header:
            _flip(rng, data, header, n)
        else:
            _flip(rng, data, 0, n)
    elif mutation == "set byte":
        for _ in range(int(rng.choice([1, 1, 2, 4]))):
            data[int(rng.integers(0, n))] = int(rng.integers(0, 256))
    elif mutation == "random bytes":
        length = int(rng.integers(0, 2 * n + 16))
        data = bytearray(rng.bytes(length))
        if length and rng.random() < 0.5:  # keep the tag so the decoder goes further
            data[0] = payload[0]
        if length >= 5 and rng.random() < 0.5:  # and the size (and what follows a varint)
            data[1:5] = payload[1:5]
    elif mutation == "extreme field":
        for _ in range(int(rng.choice([1, 1, 2]))):
            fields, _ = dec.layout(bytes(data))  # a varint set before may move the rest
            if not fields:
                break
            offset, fmt, length = fields[int(rng.integers(0, len(fields)))]
            if fmt == "V":
                old = bytes(data[offset : offset + length])
                data[offset : offset + length] = _extreme_varint(rng, old, d)
            else:
                struct.pack_into("<" + fmt, data, offset, _extreme(rng, fmt, d))
        _, end = dec.layout(bytes(data))
        start = end - dec.extra_header  # the source stream header's first byte
        if dec.codec is _SOURCE and len(data) > start and rng.random() < 0.3:
            data[start] = int(rng.choice([0x00, 0x01, 0x80, 0xFF]))
            if rng.random() < 0.5:  # a run of zero bits: a long gamma prefix
                stop = min(len(data), start + 4)
                data[start:stop] = bytes(stop - start)
    elif mutation == "other size":  # a valid payload of another size
        other = d + int(rng.choice([-1, 1, 2, 7, -7, 64]))
        other = other if other >= 0 and other != d else d + 1
        data = bytearray(dec.codec.encode(dec.make(rng, other)))
    elif mutation == "expected size":  # intact payload, the receiver expects another size
        size = d + int(rng.choice([-1, 1, 8, -8, 1000]))
        size = size if size >= 0 else d + 1
    elif mutation == "splice":  # this header on another message's body (same size)
        other = dec.codec.encode(dec.make(rng, d))
        cut = min(header, n, len(other))
        data = bytearray(payload[:cut] + other[cut:])
    else:
        raise ValueError(f"unknown mutation {mutation!r}")
    return bytes(data), size


@dataclass
class Case:
    """One fuzz case: reproduce it with :func:`make_case` (decoder, seed, index)."""

    decoder: str
    index: int
    mutation: str
    payload: bytes
    size: int | None  # what decode is given (None: no expected size)
    expected: int  # the receiver's model size (check_envelope's)
    original: bytes


def make_case(decoder: str, seed: int, index: int) -> Case:
    """Case ``index`` of ``decoder`` under ``seed``: the same inputs give the same case."""
    dec = DECODERS[decoder]
    rng = np.random.default_rng([seed, list(DECODERS).index(decoder), index])
    d = _size(rng)
    original = dec.codec.encode(dec.make(rng, d))
    mutation = str(rng.choice(_NAMES, p=_WEIGHTS))
    for _ in range(20):  # a mutation that changes nothing is drawn again
        payload, size = mutate(rng, dec, original, d, mutation)
        if payload != original or size != d:
            break
    else:
        payload, size = original[:-1], d
    no_size = rng.random() < 0.125 and mutation not in ("expected size", "other size")
    decode_size = None if no_size else size
    return Case(decoder, index, mutation, payload, decode_size, size, original)


# ---------------------------------------------------------------- the time limit


class Hang(BaseException):
    """Raised by the SIGALRM handler when a case overruns its time limit."""


def _on_alarm(signum, frame):  # noqa: ARG001
    raise Hang


@contextlib.contextmanager
def watchdog() -> Iterator[Callable[[float], None]]:
    """``arm(seconds)``: interrupt the case with :class:`Hang` after ``seconds`` (0:
    disarm). Only in the main thread with SIGALRM; elsewhere ``arm`` does nothing and
    only the measured time tells a hang."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield lambda seconds: None
        return
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        yield lambda seconds: signal.setitimer(signal.ITIMER_REAL, seconds)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- classification


def well_formed(q: Quantized, kind: str) -> str:
    """'' if ``q`` is a message a receiver may use (finite, codes in range), else why not."""
    if not isinstance(q, Quantized):
        return f"decode returned {type(q).__name__}"
    codes = np.asarray(q.codes)
    if codes.ndim != 1:
        return f"codes of shape {codes.shape}"
    scale = float(q.scale)
    if not (math.isfinite(scale) and 0 <= scale <= MAX_SCALE):
        return f"scale {scale}"
    if kind == "levels":
        if not 1 <= q.bits <= 16 or codes.dtype.kind != "u":
            return f"levels of {q.bits} bits, {codes.dtype}"
        if codes.size and int(codes.max()) > 2**q.bits - 1:
            return f"level code {int(codes.max())} beyond {q.bits} bits"
    elif kind == "signed":
        if not 1 <= q.levels <= MAX_SIGNED_LEVEL or q.bits != signed_width(q.levels):
            return f"signed s = {q.levels}, bits = {q.bits}"
        if codes.size and int(np.abs(codes.astype(np.int64)).max()) > q.levels:
            return "a signed level beyond s"
    elif kind in ("raw", "sparse"):
        if codes.dtype != np.float32 or not np.all(np.isfinite(codes)):
            return "non-finite or non-float32 values"
        if kind == "sparse":
            index = np.asarray(q.index)
            if index.shape != codes.shape:
                return f"index {index.shape} for values {codes.shape}"
            if index.size and (index[0] < 0 or index[-1] >= q.dim or np.any(np.diff(index) <= 0)):
                return "positions not strictly increasing in 0..d-1"
    return ""


def classify(dec: Decoder, payload: bytes, size: int | None, expected: int) -> tuple[str, str]:
    """(outcome, detail) of one payload at the receiver (exceptions propagate: crash)."""
    codec = dec.codec
    try:
        codec.check_envelope(payload, expected)
        envelope = ""
    except PayloadError as exc:
        envelope = str(exc)
    try:
        q = codec.decode(payload, size=size)
    except PayloadError as exc:
        return "refused", str(exc)
    declared = expected if size is not None else q.size
    problems = []
    if q.size != declared:
        problems.append(f"decoded {q.size} entries, expected {declared}")
    if size is not None and envelope:
        problems.append(f"check_envelope refuses it ({envelope})")
    if q.kind not in ("levels", "raw", "signed", "sparse"):
        problems.append(f"kind {q.kind!r}")
    else:
        why = well_formed(q, q.kind)
        if why:
            problems.append(why)
        else:
            try:
                codec.check_envelope(payload, q.size)
            except PayloadError as exc:
                problems.append(f"check_envelope(its own size) refuses it ({exc})")
            try:
                again = codec.encode(q)
            except ValueError as exc:
                problems.append(f"cannot be encoded again ({exc})")
            else:
                if again != payload:
                    problems.append("does not re-encode to the same bytes")
    if problems:
        return "silent", "; ".join(problems)
    if q.kind != dec.kind:  # the receiver's check (PublicCopies.decode)
        return "refused", f"a valid {q.kind} message where {dec.kind} is expected (kind check)"
    return "value change", ""


@dataclass
class Tally:
    """Outcome counts of one decoder or entry point, the slowest case, failures kept."""

    cases: int = 0
    counts: Counter = field(default_factory=Counter)
    kind_checks: int = 0
    max_seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (case, detail)

    def add(self, outcome: str, seconds: float, case: str, detail: str) -> None:
        self.cases += 1
        self.counts[outcome] += 1
        self.max_seconds = max(self.max_seconds, seconds)
        if outcome == "refused" and detail.endswith("(kind check)"):
            self.kind_checks += 1
        if outcome in FAILURES and len(self.failures) < 20:
            self.failures.append((case, detail))

    @property
    def failed(self) -> int:
        return sum(self.counts[o] for o in FAILURES)


def run_case(case: Case, arm: Callable[[float], None], time_limit: float) -> tuple[str, str, float]:
    """(outcome, detail, seconds) of one decoder case under the time limit."""
    dec = DECODERS[case.decoder]
    start = time.perf_counter()
    try:
        arm(time_limit)
        try:
            outcome, detail = classify(dec, case.payload, case.size, case.expected)
        finally:
            arm(0)
    except Hang:
        outcome, detail = "hang", f"interrupted after {time_limit} s"
    except Exception as exc:  # noqa: BLE001 - anything but PayloadError is a crash
        outcome, detail = "crash", f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    if seconds > time_limit and outcome != "hang":
        outcome, detail = "hang", f"took {seconds:.3f} s > {time_limit} s ({outcome}: {detail})"
    return outcome, detail, seconds


def fuzz_decoder(
    decoder: str,
    cases: int,
    seed: int,
    time_limit: float = 2.0,
    progress: Callable[[int], None] | None = None,
) -> Tally:
    """Run ``cases`` cases of one decoder."""
    tally = Tally()
    with watchdog() as arm:
        for index in range(cases):
            case = make_case(decoder, seed, index)
            outcome, detail, seconds = run_case(case, arm, time_limit)
            tally.add(outcome, seconds, f"{decoder} case {index} ({case.mutation})", detail)
            if progress is not None and (index + 1) % 10000 == 0:
                progress(index + 1)
    return tally


# ---------------------------------------------------------------- ClientApp entry points

ENTRY_POINTS = ("train.step", "query.finish", "query.repair")
APPS: dict[str, dict] = {
    "q-gadmm fixed-width levels": {"algorithm": "q-gadmm", "bits": 3},
    "gadmm fixed-width raw": {"algorithm": "gadmm"},
    "choco-sgd fixed-width signed": {"algorithm": "choco-sgd"},
    "choco-sgd fixed-width sparse": {
        "algorithm": "choco-sgd",
        "compressor": "top-k",
        "fraction": 0.5,
    },
    "malcom-psgd source signed": {"algorithm": "malcom-psgd"},
    "q-gadmm source levels": {"algorithm": "q-gadmm", "codec": "source"},
}
_APP_RUN = {"num-workers": 5, "samples-per-worker": 20, "dim": 6, "rho": 5.0, "seed": 0}
_WRAPPER = "wrapper"  # the payload as a value of another type (not bytes)
_SENDER = "sender"  # mutation of the sender id


@dataclass
class Recording:
    """A relay run's messages to fuzz: (type, message, node id, state before it)."""

    app: object  # the ClientApp
    grid: object  # the FakeGrid (contexts: node config, run config)
    codec: Codec
    kind: str
    dim: int
    messages: dict[str, list[tuple[object, int, object]]]
    payloads: list[bytes]  # every payload relayed in the run


def record_app(name: str, rounds: int = 5) -> Recording:
    """Run the relay over a FakeGrid for ``rounds`` iterations (worker 2 silent from
    iteration 3: the relay repairs the chain) and record the messages to fuzz."""
    from flower_qgadmm.algorithms import get_algorithm
    from flower_qgadmm.compression import make_codec
    from flower_qgadmm.config import RunConfig
    from flower_qgadmm.data import load_dataset
    from flower_qgadmm.flower import RelayStrategy, make_client_app
    from flower_qgadmm.flower.client import least_squares, partition_of
    from flower_qgadmm.flower.records import record_inbox
    from flower_qgadmm.testing import FakeGrid

    class RecordingGrid(FakeGrid):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.recorded: dict[str, list] = {e: [] for e in ENTRY_POINTS}
            self.payloads: list[bytes] = []

        def send_and_receive(self, messages, *, timeout=None):
            replies = []
            for msg in messages:
                mtype = msg.metadata.message_type
                if mtype in ENTRY_POINTS:
                    ctx = self.contexts[msg.metadata.dst_node_id]
                    state = copy.deepcopy(ctx.state)
                    self.recorded[mtype].append((msg, msg.metadata.dst_node_id, state))
                    inbox = msg.content.config_records.get("inbox")
                    self.payloads += record_inbox(inbox).values() if inbox else []
                replies += super().send_and_receive([msg], timeout=timeout)
            return replies

    rc = RunConfig.from_run_config(
        {**_APP_RUN, **APPS[name], "num-iterations": rounds}
    ).to_run_config()
    cfg = RunConfig.from_run_config(rc)
    data = load_dataset(cfg.num_workers, cfg.samples_per_worker, cfg.dim, cfg.noise, cfg.seed)
    app = make_client_app(least_squares(lambda ctx: data[partition_of(ctx)[0]]))

    def silent(pid, msg) -> bool:
        round_ = msg.content["round"] if "round" in msg.content else None
        return pid == 2 and round_ is not None and int(round_["iteration"]) >= 3

    grid = RecordingGrid(app, cfg.num_workers, rc, fail=silent)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0, results_dir=None)
    with quiet():
        strategy.start(grid, num_rounds=rounds, timeout=1.0)
    name = getattr(cfg.algo, "codec", "auto")
    codec = make_codec(
        get_algorithm(cfg.algorithm).worker.default_codec if name == "auto" else name
    )
    payloads = [p for p in grid.payloads if p]
    q = codec.decode(payloads[0], size=cfg.dim)
    missing = [e for e in ENTRY_POINTS if not grid.recorded[e]]
    if missing or not payloads:
        raise RuntimeError(f"{name}: the run sent no {missing or 'payloads'}")
    return Recording(app, grid, codec, q.kind, cfg.dim, grid.recorded, payloads)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Flower's and the algorithms' log lines below ERROR are dropped (a fuzzed payload
    may well make a worker warn about its growing range)."""
    loggers = [logging.getLogger(name) for name in ("flwr", "flower_qgadmm")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _neighbours(state) -> list[int]:
    from flower_qgadmm.algorithms import Wiring
    from flower_qgadmm.flower.client import STATE_WIRING
    from flower_qgadmm.flower.records import config_dict

    return list(Wiring.from_record(config_dict(state[STATE_WIRING])).neighbours)


def _copy_of(state, src: int) -> np.ndarray | None:
    """The public copy of ``src`` a worker state holds (None if it holds none)."""
    from flower_qgadmm.flower.client import STATE_ARRAYS
    from flower_qgadmm.flower.records import record_state

    arrays = record_state(state[STATE_ARRAYS]) if STATE_ARRAYS in state else {}
    for key, array in arrays.items():
        if key == f"hat.{src}" or key.endswith(f".hat.{src}"):
            return array
    return None


def _finite_reply(reply) -> bool:
    from flower_qgadmm.flower.records import SEALED_STYPE

    for record in reply.content.metric_records.values():
        for value in record.values():
            values = value if isinstance(value, list) else [value]
            if not all(math.isfinite(float(v)) for v in values):
                return False
    for record in reply.content.array_records.values():
        for array in record.values():
            if array.stype == SEALED_STYPE:
                continue
            values = array.numpy()
            if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
                return False
    return True


def app_case(rec: Recording, entry: str, seed: int, index: int):
    """(message, context, sender, mutated payload or None, mutation) of one case."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    rng = np.random.default_rng([seed, ENTRY_POINTS.index(entry), index, 7])
    msg, node, state = rec.messages[entry][int(rng.integers(0, len(rec.messages[entry])))]
    inbox = msg.content.config_records.get("inbox") or ConfigRecord()
    senders = [int(s) for s in inbox.keys()] or _neighbours(state)
    src = senders[int(rng.integers(0, len(senders)))]
    original = (
        inbox[str(src)]
        if str(src) in inbox
        else rec.payloads[int(rng.integers(0, len(rec.payloads)))]
    )
    u = rng.random()
    payload: bytes | None = None
    if u < 0.05:
        mutation = _WRAPPER
        kind = int(rng.integers(0, 4))
        if kind == 0:
            value: object = original.hex()  # str
        elif kind == 1:
            value = [original]  # a list of bytes
        elif kind == 2:
            value = list(np.frombuffer(original[: len(original) // 8 * 8] or bytes(8), "<f8"))
        else:
            value = int.from_bytes(original[:7] or b"\0", "little")
    elif u < 0.08:
        mutation = _SENDER  # a worker that is not a neighbour (or itself, or no worker)
        own = int(rec.grid.contexts[node].node_config["partition-id"])
        strangers = [m for m in range(-1, 6) if m != own and m not in _neighbours(state)]
        src = int(rng.choice([*strangers, own, 99, 2**31]))
        value = original
    else:
        dec = next(
            v for v in DECODERS.values() if type(v.codec) is type(rec.codec) and v.kind == rec.kind
        )
        mutation = str(rng.choice(_NAMES, p=_WEIGHTS))
        if mutation in ("other size", "splice"):
            mutation = "flip body"  # the worker's payloads are real ones of this run's d
        if mutation == "expected size":
            mutation = "extreme field"
        for _ in range(20):
            payload, _ = mutate(rng, dec, original, rec.dim, mutation)
            if payload != original:
                break
        value = payload
    records = {str(s): v for s, v in inbox.items() if int(s) != src}
    records[str(src)] = value
    content = RecordDict({k: v for k, v in msg.content.items() if k != "inbox"})
    content["inbox"] = ConfigRecord(records)
    proto = rec.grid.contexts[node]
    ctx = Context(
        run_id=1,
        node_id=node,
        node_config=dict(proto.node_config),
        state=copy.deepcopy(state),
        run_config=dict(proto.run_config),
    )
    out = Message(content, dst_node_id=node, message_type=entry)
    return out, ctx, src, payload, mutation, state


def classify_app(rec: Recording, entry: str, seed: int, index: int) -> tuple[str, str]:
    """(outcome, detail) of one ClientApp case (exceptions other than PayloadError
    propagate: crash)."""
    msg, ctx, src, payload, mutation, before = app_case(rec, entry, seed, index)
    try:
        reply = rec.app(msg, ctx)
    except PayloadError as exc:
        if not _same_arrays(ctx.state, before):
            return "silent", f"raised PayloadError but changed the state ({exc})"
        return "refused", str(exc)
    blame = reply.content.config_records.get("blame")
    if blame is not None and str(src) in blame:
        old, new = _copy_of(before, src), _copy_of(ctx.state, src)
        if (
            src in _neighbours(before)
            and old is not None
            and new is not None
            and not np.array_equal(old, new)
        ):
            return "silent", "blamed the sender but changed its copy"
        return "refused", str(blame[str(src)])
    if not _finite_reply(reply):
        return "silent", "the reply carries non-finite numbers"
    if mutation in (_WRAPPER, _SENDER):
        return "silent", f"accepted a payload with a bad {mutation}"
    try:
        q = rec.codec.decode(payload, size=rec.dim)
        if q.kind != rec.kind:
            raise PayloadError(f"a {q.kind} message")
    except PayloadError as exc:
        return "silent", f"applied a payload the codec refuses ({exc})"
    return "value change", ""


def _same_arrays(state, before) -> bool:
    from flower_qgadmm.flower.client import STATE_ARRAYS

    if (STATE_ARRAYS in state) != (STATE_ARRAYS in before):
        return False
    if STATE_ARRAYS not in state:
        return True
    from flower_qgadmm.flower.records import record_state

    now, then = record_state(state[STATE_ARRAYS]), record_state(before[STATE_ARRAYS])
    return set(now) == set(then) and all(np.array_equal(now[k], then[k]) for k in now)


def fuzz_app(rec: Recording, entry: str, cases: int, seed: int, time_limit: float = 2.0) -> Tally:
    """Run ``cases`` cases of one ClientApp entry point of a recorded run."""
    tally = Tally()
    with watchdog() as arm, quiet():
        for index in range(cases):
            start = time.perf_counter()
            try:
                arm(time_limit)
                try:
                    outcome, detail = classify_app(rec, entry, seed, index)
                finally:
                    arm(0)
            except Hang:
                outcome, detail = "hang", f"interrupted after {time_limit} s"
            except Exception as exc:  # noqa: BLE001
                outcome, detail = "crash", f"{type(exc).__name__}: {exc}"
            seconds = time.perf_counter() - start
            if seconds > time_limit and outcome != "hang":
                outcome, detail = "hang", f"took {seconds:.3f} s ({outcome}: {detail})"
            tally.add(outcome, seconds, f"{entry} case {index}", detail)
    return tally


# ---------------------------------------------------------------- report


def table(rows: dict[str, Tally]) -> str:
    """The outcome table, one row per decoder or entry point."""
    head = (
        f"{'decoder / entry point':44} {'cases':>8} {'PayloadError':>12} {'value chg':>10} "
        f"{'silent':>7} {'crash':>6} {'hang':>5} {'max ms':>8}"
    )
    lines = [head, "-" * len(head)]
    for name, t in rows.items():
        c = t.counts
        lines.append(
            f"{name:44} {t.cases:>8} {c['refused']:>12} {c['value change']:>10} "
            f"{c['silent']:>7} {c['crash']:>6} {c['hang']:>5} {1e3 * t.max_seconds:>8.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # first paragraph
    parser.add_argument("--cases", type=int, default=100_000, help="cases per decoder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--app-cases", type=int, default=2000, help="cases per ClientApp entry point and app"
    )
    parser.add_argument("--time-limit", type=float, default=2.0, help="seconds per case")
    parser.add_argument(
        "--decoders", default=",".join(DECODERS), help="comma-separated decoders to fuzz"
    )
    parser.add_argument("--apps", default=",".join(APPS), help="comma-separated apps ('' none)")
    args = parser.parse_args(argv)
    if args.cases < 1 or args.app_cases < 1:
        parser.error("--cases and --app-cases must be at least 1")
    if not args.time_limit > 0:
        parser.error("--time-limit must be positive")
    decoders = [n for n in args.decoders.split(",") if n]
    apps = [n for n in args.apps.split(",") if n]
    for what, names, known in (("decoder", decoders, DECODERS), ("app", apps, APPS)):
        unknown = [n for n in names if n not in known]
        if unknown:
            parser.error(f"unknown {what}(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    rows: dict[str, Tally] = {}
    start = time.perf_counter()
    for name in decoders:
        t0 = time.perf_counter()
        rows[name] = fuzz_decoder(name, args.cases, args.seed, args.time_limit)
        print(f"# {name}: {args.cases} cases in {time.perf_counter() - t0:.1f} s", flush=True)
    for name in apps:
        t0 = time.perf_counter()
        rec = record_app(name)
        for entry in ENTRY_POINTS:
            rows[f"{name}: {entry}"] = fuzz_app(
                rec, entry, args.app_cases, args.seed, args.time_limit
            )
        print(f"# {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    print(
        f"\nseed {args.seed}, time limit {args.time_limit} s per case, "
        f"{time.perf_counter() - start:.0f} s in all\n"
    )
    print(table(rows))
    kind = sum(t.kind_checks for t in rows.values())
    if kind:
        print(
            f"\n({kind} of the PayloadError cases: a valid message of another kind, "
            "refused by the receiver's kind check)"
        )
    failed = {name: t for name, t in rows.items() if t.failed}
    for name, t in failed.items():
        print(f"\n{name}: {t.failed} failures, e.g.")
        for case, detail in t.failures[:5]:
            print(f"  {case}: {detail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
