"""Checkpoints: the relay's state and every worker's state at an iteration boundary.

Layout of a checkpoint directory (``<run folder>/checkpoint`` by default)::

    worker-<n>/iteration-<k>.npz   worker n's state (written by the worker itself)
    workers-<k>.npz                the states of all workers of one process (the
                                   reference runner's), in one file
    relay-<k>.npz                  the engine's state (mailbox, graph, counters, history)
    relay-setup.npz                what the engine's state holds unchanged for a whole run
                                   (the workers' set-up reports and statistics), written
                                   once and named by every relay-<k>.npz of the run
    history-<run>.jsonl            the history rows, appended by run ``<run>`` at each of
                                   its checkpoints; relay-<k>.npz counts the rows of each
                                   run's file that are its history
    latest.json                    {"iteration": k}: written last, so it only ever names
                                   a complete checkpoint

Workers persist their own state, on their own machine, instead of sending it through
the relay: a checkpoint then costs no network traffic (a worker's state is its model,
its neighbours' copies and its duals, several models' worth of bytes, which sent every
K rounds would cost more than the training itself), and the relay never holds the
models. In a Flower simulation every worker writes under the same directory; in
deployment each device writes under the same path on its own disk, where the resumed run
finds it. The reference runner, whose workers all live in one process, writes their
states into one file per checkpoint (:func:`save_workers`): a file per worker costs a
create, an fsync, a rename and a delete each, 1.3-5 ms per worker here, which made a run
of 1,000 workers 1.86x slower with the default checkpoints (every 10 iterations; 1.09x
with one file: ``simulations/bench_checkpoint.py``). For the same reason the relay
stacks its per-worker arrays (models, statistics; :func:`stack_rows`) and the pending
payloads (:func:`pack_blobs`) into one entry per kind (checkpoint format 3; files of
formats 1-2, one entry per worker, are read too), and writes what does not change within a
run once, into ``relay-setup.npz`` (:func:`save_setup`; format 4): the workers' Gram
matrices and set-up reports were 92% of a relay file of 5,000 workers (d = 20: 21.5 of
23.3 MB), rewritten at every checkpoint. The history grows by a row per iteration: each
checkpoint appends its new rows (:func:`append_history`) instead of rewriting them all,
which made 5,000 iterations of 24 workers 2.3x slower with checkpoints every 10 (52.3 s
against 22.5 s: quadratic in the iterations).

Every file is written to a temporary name and renamed, so a run killed mid-write leaves
the previous checkpoint intact. After a complete checkpoint the two latest are kept; while
the next one is being written, the one ``latest.json`` names is always complete (older
files are deleted only up to it).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .model_arrays import write_npz

KEEP = 2  # checkpoints kept per writer
RUN_KEY = "checkpoint-run"  # the run that wrote a worker file (the relay keeps its own)
_SCALARS = "__scalars__"


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and arrays in a state's scalars."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"cannot save {type(value).__name__} in a checkpoint")


def _temporary(path: Path) -> Path:
    """A fresh temporary name beside ``path``: two writers of one file never share it."""
    fd, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[BinaryIO]:
    """A file to write ``path`` through: a fresh temporary name beside it, synced to disk
    and renamed over ``path`` once the block completes (a run killed mid-write leaves
    the previous file intact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    with tmp.open("wb") as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray], scalars: Mapping[str, Any]) -> None:
    encoded = json.dumps(dict(scalars), default=_plain).encode()
    with _atomic(path) as fh:
        write_npz(fh, {**arrays, _SCALARS: np.frombuffer(encoded, dtype=np.uint8)})


def _read_npz(path: Path, with_arrays: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, scalars) of a checkpoint file (no arrays read unless ``with_arrays``);
    ValueError naming it if it is corrupt (truncated, emptied, overwritten: not what
    :func:`_write_npz` wrote)."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file {path} is missing")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files if k != _SCALARS and with_arrays}
            scalars = json.loads(bytes(data[_SCALARS]).decode())
        if not isinstance(scalars, dict):
            raise TypeError(f"its scalars are a {type(scalars).__name__}, not a mapping")
    except (zipfile.BadZipFile, EOFError, KeyError, TypeError, ValueError, OSError) as exc:
        raise ValueError(_corrupt(path, exc)) from exc
    return arrays, scalars


def _corrupt(path: Path, exc: BaseException) -> str:
    return (
        f"checkpoint file {path} is corrupt ({type(exc).__name__}: {exc}); resume from a "
        "copy of the folder whose files are intact, or start the run again"
    )


def _prune(directory: Path, pattern: str, keep_from: int) -> None:
    """Delete checkpoints older than the ``KEEP`` latest (by iteration number)."""
    for path in directory.glob(pattern):
        try:
            k = int(path.stem.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            continue
        if k < keep_from:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------- workers
def worker_file(directory: str | Path, node: int, iteration: int) -> Path:
    """Where worker ``node`` keeps its state of ``iteration``."""
    return Path(directory) / f"worker-{int(node)}" / f"iteration-{int(iteration)}.npz"


def save_worker(
    directory: str | Path,
    node: int,
    iteration: int,
    arrays: Mapping[str, np.ndarray],
    scalars: Mapping[str, Any],
    previous: int | None = None,
    run: str | None = None,
) -> Path:
    """Write a worker's :meth:`~flower_qgadmm.algorithms.Worker.state_dict` (plus any
    set-up records in ``scalars``), marked with the ``run`` that asked for it (the
    relay's :data:`RUN_KEY`); checkpoints before ``previous`` are deleted."""
    path = worker_file(directory, node, iteration)
    marked = dict(scalars) if run is None else {**scalars, RUN_KEY: str(run)}
    _write_npz(path, arrays, marked)
    if previous is not None:
        _prune(path.parent, "iteration-*.npz", previous)
    return path


def load_worker(
    directory: str | Path, node: int, iteration: int, run: str | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A worker's saved (arrays, scalars); ValueError if the file holds another
    iteration's state (a file renamed or left by another run), or, given the ``run`` the
    relay's checkpoint names, if another run wrote it (two runs saving into one folder)."""
    arrays, scalars = _read_npz(worker_file(directory, node, iteration))
    if int(scalars.get("iteration", -1)) != int(iteration):
        raise ValueError(
            f"worker {node}'s checkpoint file of iteration {iteration} holds the state of "
            f"iteration {scalars.get('iteration')}: not this checkpoint's"
        )
    written_by = scalars.pop(RUN_KEY, None)
    if run is not None and written_by != run:
        raise ValueError(
            f"worker {node}'s checkpoint file of iteration {iteration} was written by "
            f"another run than the relay's checkpoint (run {written_by}, expected {run}): "
            f"two runs saved into {directory}; resume from a folder only one run wrote"
        )
    return arrays, scalars


# ---------------------------------------------------------------------- one process's workers
def workers_file(directory: str | Path, iteration: int) -> Path:
    """Where the workers of one process keep their states of ``iteration``."""
    return Path(directory) / f"workers-{int(iteration)}.npz"


def save_workers(
    directory: str | Path,
    iteration: int,
    states: Mapping[int, tuple[Mapping[str, np.ndarray], Mapping[str, Any]]],
    previous: int | None = None,
    run: str | None = None,
) -> Path:
    """Write the ``states`` (``{node: state_dict()}``) of workers living in one process
    into one file, marked with ``iteration`` and ``run``: the bytes of all their arrays
    one after the other in its ``data`` entry, and an ``index`` (JSON) of each worker's
    scalars and of its arrays' names, dtypes and shapes, in the order of those bytes.
    One temporary file, fsync and rename per checkpoint instead of one per worker; files
    of checkpoints before ``previous`` are deleted."""
    path = workers_file(directory, iteration)
    parts: list[np.ndarray] = []
    index: dict[str, Any] = {}
    for node, (arrays, scalars) in states.items():
        entries = []
        for key, value in arrays.items():
            array = np.asarray(value, order="C")  # ascontiguousarray makes 0-d 1-d
            if array.dtype.hasobject:
                raise TypeError(f"worker {node}: state array {key!r} holds Python objects")
            parts.append(array.reshape(-1).view(np.uint8))
            entries.append([str(key), array.dtype.str, list(array.shape)])
        index[str(int(node))] = {"scalars": dict(scalars), "arrays": entries}
    head = {"iteration": int(iteration), "run": run, "workers": index}
    encoded = np.frombuffer(json.dumps(head, default=_plain).encode(), dtype=np.uint8)
    header = {"descr": "|u1", "fortran_order": False, "shape": (sum(p.size for p in parts),)}
    with _atomic(path) as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as archive:
        with archive.open("data.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)
            for part in parts:  # streamed: no copy of all the states at once
                member.write(part)
        with archive.open("index.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, encoded, allow_pickle=False)
    if previous is not None:
        _prune(path.parent, "workers-*.npz", previous)
    return path


def load_workers(
    directory: str | Path, iteration: int, nodes: Iterable[int], run: str | None = None
) -> dict[int, tuple[dict[str, np.ndarray], dict[str, Any]]]:
    """The saved (arrays, scalars) of the workers ``nodes``, from their process's file
    (:func:`save_workers`) or, when there is none (a checkpoint of format 1-2), from
    their own files (:func:`load_worker`). ValueError if the file holds another
    iteration's states, was written by another ``run`` than the relay's checkpoint
    names, misses one of ``nodes``, or is corrupt."""
    nodes = [int(n) for n in nodes]
    path = workers_file(directory, iteration)
    if not path.exists():
        return {n: load_worker(directory, n, iteration, run) for n in nodes}
    try:
        with np.load(path, allow_pickle=False) as data:
            head = json.loads(bytes(data["index"]).decode())
            blob = data["data"]
        saved = head["workers"]
        if not isinstance(saved, dict):
            raise TypeError(f"its index lists a {type(saved).__name__}, not a mapping")
    except (zipfile.BadZipFile, EOFError, KeyError, TypeError, ValueError, OSError) as exc:
        raise ValueError(_corrupt(path, exc)) from exc
    if head.get("iteration") != int(iteration):
        raise ValueError(
            f"the workers' checkpoint file of iteration {iteration} holds the states of "
            f"iteration {head.get('iteration')}: not this checkpoint's"
        )
    if run is not None and head.get("run") != run:
        raise ValueError(
            f"the workers' checkpoint file of iteration {iteration} was written by another "
            f"run than the relay's checkpoint (run {head.get('run')}, expected {run}): two "
            f"runs saved into {directory}; resume from a folder only one run wrote"
        )
    wanted, states, offset = set(nodes), {}, 0
    try:
        for key, entry in saved.items():
            arrays = {}
            for name, dtype, shape in entry["arrays"]:
                kind = np.dtype(dtype)
                count = math.prod(shape)
                if int(key) in wanted:
                    flat = np.frombuffer(blob, kind, count, offset)
                    arrays[name] = flat.reshape(shape).copy()
                offset += count * kind.itemsize
            if int(key) in wanted:
                states[int(key)] = (arrays, dict(entry["scalars"]))
        if offset != blob.size:
            raise ValueError(f"its index accounts for {offset} of its {blob.size} bytes")
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(_corrupt(path, exc)) from exc
    for n in nodes:
        if n not in states:
            raise ValueError(
                f"worker {n}'s state is missing from the workers' checkpoint file {path}"
            )
    return {n: states[n] for n in nodes}


def stack_rows(prefix: str, rows: Mapping[int, np.ndarray]) -> dict[str, np.ndarray]:
    """``{prefix: the rows stacked, prefix + "-nodes": their workers}`` (nothing for no
    rows): one entry for all workers instead of one each (a zip entry costs a header)."""
    if not rows:
        return {}
    nodes = list(rows)
    return {
        prefix: np.stack([rows[n] for n in nodes]),
        f"{prefix}-nodes": np.array(nodes, dtype=np.int64),
    }


def unstack_rows(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[int, np.ndarray]:
    """The rows :func:`stack_rows` stacked, by worker (each its own array), or those of a
    checkpoint of format 1-2 (one entry ``<prefix>.<node>`` per worker)."""
    if prefix in arrays:
        nodes = arrays[f"{prefix}-nodes"]
        return {int(n): row.copy() for n, row in zip(nodes, arrays[prefix], strict=True)}
    cut = len(prefix) + 1
    return {int(k[cut:]): v for k, v in arrays.items() if k.startswith(prefix + ".")}


def pack_blobs(prefix: str, blobs: Mapping[tuple[int, int], bytes]) -> dict[str, np.ndarray]:
    """``{prefix: the bytes one after the other, prefix + "-index": (a, b, size) rows}``
    (nothing for none): byte strings keyed by pairs of workers in two entries."""
    if not blobs:
        return {}
    keys = list(blobs)
    joined = b"".join(blobs[k] for k in keys)
    return {
        prefix: np.frombuffer(joined, dtype=np.uint8) if joined else np.zeros(0, np.uint8),
        f"{prefix}-index": np.array([[a, b, len(blobs[a, b])] for a, b in keys], np.int64),
    }


def unpack_blobs(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[tuple[int, int], bytes]:
    """The byte strings of :func:`pack_blobs`, or those of a checkpoint of format 1-2 (one
    entry ``<prefix>.<a>.<b>`` each)."""
    if prefix in arrays:
        data, out, offset = arrays[prefix].tobytes(), {}, 0
        for a, b, size in arrays[f"{prefix}-index"].tolist():
            out[a, b] = data[offset : offset + size]
            offset += size
        return out
    out = {}
    for key, value in arrays.items():
        if key.startswith(prefix + "."):
            _, a, b = key.split(".")
            out[int(a), int(b)] = value.tobytes()
    return out


# ---------------------------------------------------------------------- the relay
SETUP_FILE = "relay-setup.npz"


def save_setup(
    directory: str | Path, run: str, arrays: Mapping[str, np.ndarray], state: Mapping[str, Any]
) -> None:
    """Write the part of the relay's state that stays the same for a whole run (written
    once per run, before its first relay file): ``arrays`` and ``state``, marked with
    the ``run`` that wrote them. The relay files that rely on it name that run
    (``state["setup"]`` of :func:`save_relay`); :func:`load_relay` merges it back."""
    _write_npz(Path(directory) / SETUP_FILE, arrays, {**state, "setup-run": run})


def save_relay(
    directory: str | Path,
    iteration: int,
    arrays: Mapping[str, np.ndarray],
    state: Mapping[str, Any],
    previous: int | None = None,
) -> Path:
    """Write the relay's state of ``iteration`` and mark it the latest checkpoint (after
    every worker has written its own)."""
    directory = Path(directory)
    path = directory / f"relay-{int(iteration)}.npz"
    _write_npz(path, arrays, state)
    with _atomic(directory / "latest.json") as fh:  # on disk before it names the files
        fh.write(json.dumps({"iteration": int(iteration)}).encode())
    if previous is not None:
        _prune(directory, "relay-*.npz", previous)
    return path


def latest(directory: str | Path) -> int:
    """The iteration of the latest complete checkpoint in ``directory``."""
    marker = Path(directory) / "latest.json"
    if not marker.exists():
        raise FileNotFoundError(f"no checkpoint in {directory} (no latest.json): nothing to resume")
    try:
        iteration = json.loads(marker.read_text())["iteration"]
        if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
            raise ValueError(f"iteration {iteration!r} is not a count of iterations")
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(_corrupt(marker, exc)) from exc
    return iteration


def clear(directory: str | Path) -> None:
    """Delete the checkpoints in ``directory`` (a new run starting over a finished run's
    folder): ``latest.json`` first, so that no partial set is ever named, then the
    relay's and the workers' files of the layout above, and worker folders left empty;
    anything else there stays."""
    directory = Path(directory)
    (directory / "latest.json").unlink(missing_ok=True)
    for pattern in ("relay-*.npz", "workers-*.npz", "history-*.jsonl"):
        for path in directory.glob(pattern):
            path.unlink(missing_ok=True)
    for folder in directory.glob("worker-*"):
        for path in folder.glob("iteration-*.npz"):
            path.unlink(missing_ok=True)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def history_file(directory: str | Path, run: str) -> Path:
    """Where run ``run`` appends its history rows."""
    return Path(directory) / f"history-{run}.jsonl"


def append_history(directory: str | Path, run: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append ``rows`` (one JSON line each) to the history file of ``run``, synced to disk
    before the relay file that counts them is written. Only that run appends to it: a
    line cut by a kill lies beyond the count of the last complete checkpoint."""
    lines = b"".join(json.dumps(dict(row), default=_plain).encode() + b"\n" for row in rows)
    path = history_file(directory, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as fh:
        fh.write(lines)
        fh.flush()
        os.fsync(fh.fileno())


def load_history(directory: str | Path, parts: Iterable[Sequence[Any]]) -> list[dict]:
    """The history of ``parts``, ``[[run, count], ...]``: the first ``count`` rows of each
    run's file, in order (the rows beyond them were appended after that checkpoint)."""
    rows: list[dict] = []
    for run, count in parts:
        path = history_file(directory, str(run))
        if not path.exists():
            raise FileNotFoundError(f"checkpoint file {path} is missing")
        try:
            with path.open("rb") as fh:
                part = [json.loads(line) for line in itertools.islice(fh, int(count))]
            if len(part) < count:
                raise EOFError(f"it holds {len(part)} rows, the checkpoint counts {count}")
            if not all(isinstance(row, dict) for row in part):
                raise TypeError("a row is not a mapping")
        except (EOFError, TypeError, ValueError, OSError) as exc:
            raise ValueError(_corrupt(path, exc)) from exc
        rows += part
    return rows


def load_relay(directory: str | Path, iteration: int) -> tuple[dict[str, np.ndarray], dict]:
    """The relay's saved (arrays, state) of ``iteration``, with the run's set-up part
    (:func:`save_setup`) merged in when the file relies on one (``state["setup"]``, the
    run that wrote it, stays in the state) and its ``history`` read from the runs' files
    it counts (``state["history-parts"]``); ValueError if one of them is missing or
    another run's."""
    directory = Path(directory)
    path = directory / f"relay-{int(iteration)}.npz"
    arrays, state = _read_npz(path)
    if "history-parts" in state:  # else the history is in the relay's file (format <= 3)
        state["history"] = load_history(directory, state["history-parts"])
    run = state.get("setup")
    if run is None:  # format 3 and before: everything is in the relay's file
        return arrays, state
    setup = directory / SETUP_FILE
    more, fixed = _read_npz(setup)
    if fixed.pop("setup-run", None) != run:
        raise ValueError(
            f"{setup} is not the set-up part of {path} (another run wrote it over this "
            "run's): resume from a copy of the folder whose files are intact, or start "
            "the run again"
        )
    return {**arrays, **more}, {**state, **fixed}


def relay_state(directory: str | Path, iteration: int) -> dict:
    """The relay's saved state of ``iteration``, without reading its arrays (the models)
    or its run's set-up part."""
    return _read_npz(Path(directory) / f"relay-{int(iteration)}.npz", with_arrays=False)[1]
