"""The wire schema: Flower records <-> payloads, settings, wiring and worker state.

Message types between the relay and a worker (content keys in brackets):

- ``query.identify`` -> [identity: partition-id, num-partitions]
- ``query.describe`` [solver: solver settings, seed] -> [report: dim, layout, framework,
  smoothness?] [statistics?: gram, xty] [moments?: count, sum, squares of the columns]
- ``query.setup`` [run: node, algorithm, seed, simulated-keys?] [wiring] [settings]
  [solver: solver settings, feature-scale?] [initial?: the user's initial model]
  -> [state?: bytes (of the worker's state in ``context.state``)]
- ``query.objective`` [theta] -> [objective: value]
- ``train.step`` [round: iteration, phase, evaluate, reply-model?, checkpoint?,
  checkpoint-previous?, checkpoint-run?] [inbox: src -> payload (a ConfigRecord of
  bytes: :func:`inbox_record`)]
  -> [metrics: objective, disagreement, disagreement_max, ..., nominal-bits]
  [payload?: payload -> the bytes] [blame?: src -> why it could not be decoded]
  [model?: its model in its owner's layout, when ``reply-model``] [saved?: iteration,
  when it saved its state under ``checkpoint``], or [diverged: reason] when the
  worker's model blew up (the relay stops the run). Training traffic is payloads and
  scalars; the model rides along only with a worker's last step of an evaluation round,
  the checkpoint order with its last step of a checkpoint round
  (:class:`~flower_qgadmm.rounds.LastStep`).
- ``query.model`` -> [model: the model in its owner's layout] (an evaluation round's
  model of a worker that did not send it with its step)
- ``query.finish`` [inbox] -> [model: owner's layout] (after the last round)
- ``query.checkpoint`` [checkpoint: directory, iteration, previous?, run?] -> {} (the worker
  saves its own state on its machine; after a repair changed it, or when its save with
  the step failed; else the step did)
- ``query.restore`` [run] [wiring] [settings] [solver] [checkpoint: directory, iteration,
  run?: the run that wrote the relay's checkpoint; a worker file of another is refused]
  -> {} (set up again and load the saved state)
- ``query.export`` [to: recipients] -> [copy: theta-hat] (sealed for the recipients
  when encrypting)
- ``query.repair`` [wiring] [inbox] [copies: m -> theta-hat, or sealed] [settings] -> {}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from ..compression import PayloadError

PAYLOAD_KEY = "payload"  # a step reply's payload record holds this one key
SEALED_STYPE = "flower_qgadmm.sealed"  # sealed (encrypted) copies in a repair


def payload_record(payload: bytes) -> ConfigRecord:
    """A step reply's payload: the encoded bytes untouched (never decoded by the relay),
    the one ``bytes`` value of a ConfigRecord (see :func:`inbox_record`)."""
    return ConfigRecord({PAYLOAD_KEY: bytes(payload)})


def record_payload(record: ConfigRecord, where: str) -> bytes:
    """Inverse of :func:`payload_record`; raises PayloadError for any other record."""
    if list(record.keys()) != [PAYLOAD_KEY]:
        raise PayloadError(f"{where}: expected one {PAYLOAD_KEY!r}, got {sorted(record.keys())}")
    return payload_bytes(record[PAYLOAD_KEY], where)


def payload_bytes(value: Any, where: str) -> bytes:
    """A payload read from a record: ``bytes``, or PayloadError naming what came instead."""
    if not isinstance(value, bytes):
        kind = type(value).__name__
        raise PayloadError(f"{where}: expected an encoded payload (bytes), got {kind}")
    return value


def inbox_record(inbox: Mapping[int, bytes]) -> ConfigRecord:
    """An inbox (source worker -> payload) as a ConfigRecord of ``bytes`` values.

    Flower names and moves a message's records as objects, one RPC each in a deployment
    (the ServerApp's push, the SuperNode's pull, the ClientApp's task input): a
    ConfigRecord is one object, where an ArrayRecord of payloads is one plus two per
    payload (each Array and its ArrayChunk). Flower's ConfigRecord takes ``bytes`` for
    serialised custom data; it is not chunked (one object of up to gRPC's 2 GB)."""
    return ConfigRecord({str(m): bytes(p) for m, p in inbox.items()})


def read_inbox(record: ConfigRecord) -> tuple[dict[int, bytes], dict[int, str]]:
    """(inbox, blame): the payloads of an inbox record, and the sources whose entry is not
    a payload (not bytes) with the reason, to report rather than fail on."""
    inbox: dict[int, bytes] = {}
    blame: dict[int, str] = {}
    for src, value in record.items():
        try:
            inbox[int(src)] = payload_bytes(value, f"payload from worker {src}")
        except PayloadError as exc:
            blame[int(src)] = str(exc)
    return inbox, blame


def record_inbox(record: ConfigRecord) -> dict[int, bytes]:
    """Inverse of :func:`inbox_record` (raises :func:`read_inbox`'s PayloadError for the
    first entry that is not bytes)."""
    inbox, blame = read_inbox(record)
    if blame:
        raise PayloadError(next(iter(blame.values())))
    return inbox


def sealed_array(sealed: bytes) -> Array:
    """Sealed bytes (an encrypted copy) untouched as a ``uint8`` Array."""
    return Array(dtype="uint8", shape=(len(sealed),), stype=SEALED_STYPE, data=bytes(sealed))


def array_sealed(array: Array, where: str) -> bytes:
    """Inverse of :func:`sealed_array`; raises PayloadError on a foreign Array."""
    if array.stype != SEALED_STYPE or array.dtype != "uint8":
        raise PayloadError(f"{where}: expected sealed bytes, got {array.dtype}/{array.stype}")
    if tuple(array.shape) != (len(array.data),):
        raise PayloadError(f"{where}: shape {array.shape} does not match {len(array.data)} bytes")
    return bytes(array.data)


def copies_record(copies: Mapping[int, np.ndarray | bytes]) -> ArrayRecord:
    """Public copies for new neighbours: float64 arrays, or sealed bytes (encryption)."""
    return ArrayRecord(
        {
            str(m): sealed_array(c) if isinstance(c, bytes) else numpy_array(c)
            for m, c in copies.items()
        }
    )


def record_copies(record: ArrayRecord) -> dict[int, np.ndarray | bytes]:
    """Inverse of :func:`copies_record`."""
    return {
        int(m): array_sealed(a, f"copy of worker {m}") if a.stype == SEALED_STYPE else a.numpy()
        for m, a in record.items()
    }


def array_record(content: RecordDict, key: str, where: str) -> ArrayRecord | None:
    """``content[key]`` if it is an ArrayRecord, None if there is none; ValueError for a
    record of another type (a foreign reply fails its worker, never the ServerApp; a
    foreign message is refused by the ClientApp, never read as empty)."""
    return _typed_record(content, key, ArrayRecord, where)


def config_record(content: RecordDict, key: str, where: str) -> ConfigRecord | None:
    """:func:`array_record` for a ConfigRecord (payloads and inboxes)."""
    return _typed_record(content, key, ConfigRecord, where)


def _typed_record(content: RecordDict, key: str, kind: type, where: str) -> Any:
    if key not in content:
        return None
    record = content[key]
    if not isinstance(record, kind):
        article = "an" if kind.__name__[0] in "AEIOU" else "a"
        raise ValueError(
            f"{where}: {key!r} is a {type(record).__name__}, not {article} {kind.__name__}"
        )
    return record


def numpy_array(value: np.ndarray) -> Array:
    """A Flower Array of a numpy array in C order, its shape kept: a 0-d array (a torch
    BatchNorm's ``num_batches_tracked``) stays 0-d (``np.ascontiguousarray`` makes it
    1-d, and the model's state_dict would no longer match)."""
    return Array(np.asarray(value, order="C"))


def numpy_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """ArrayRecord of named numpy arrays (:func:`numpy_array`)."""
    return ArrayRecord({k: numpy_array(v) for k, v in arrays.items()})


def record_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Inverse of :func:`numpy_record`."""
    return {k: v.numpy() for k, v in record.items()}


STATE_STYPE = "flower_qgadmm.state"
STATE_KINDS = "biufc"  # bool, signed and unsigned integers, floats, complex


def state_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """A node's state arrays for ``context.state``: each one's little-endian bytes as
    they are, under :data:`STATE_STYPE`. Flower's numpy Arrays (:func:`numpy_record`)
    go through ``np.save`` / ``np.load`` and their header parsing: at d = 10^5 (an MNIST
    MLP's worker keeps 6-7 model-sized float64 arrays) that cost several ms per message
    to restore the state and again to save it, a third of a step; these cost one copy
    each way."""
    record = {}
    for key, value in arrays.items():
        a = np.asarray(value)
        if a.dtype.kind not in STATE_KINDS:  # refused now, not when the next message restores it
            raise ValueError(f"state array {key!r} of {a.dtype} cannot be kept: numbers only")
        a = np.asarray(a, dtype=a.dtype.newbyteorder("<"), order="C")  # 0-d stays 0-d
        record[key] = Array(dtype=a.dtype.str, shape=a.shape, stype=STATE_STYPE, data=a.tobytes())
    return ArrayRecord(record)


def record_state(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Inverse of :func:`state_record`: read-only views of the record's bytes (copy what
    you keep); ValueError for an Array of another kind or whose bytes do not match its
    shape."""
    out = {}
    for key, array in record.items():
        try:
            dtype = np.dtype(array.dtype) if array.stype == STATE_STYPE else None
        except TypeError:
            dtype = None
        if dtype is None or dtype.kind not in STATE_KINDS:
            raise ValueError(
                f"state array {key!r} is not a node state array ({array.stype}, {array.dtype})"
            )
        shape = tuple(int(n) for n in array.shape)
        if min(shape, default=0) < 0 or len(array.data) != dtype.itemsize * int(np.prod(shape)):
            raise ValueError(
                f"state array {key!r}: {len(array.data)} bytes for shape {shape} of {dtype}"
            )
        out[key] = np.frombuffer(array.data, dtype=dtype).reshape(shape)
    return out


def config_dict(record: ConfigRecord) -> dict[str, Any]:
    """Plain dict of a ConfigRecord."""
    return dict(record.items())
