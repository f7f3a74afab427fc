"""Checkpoints: the relay's state and every worker's state at an iteration boundary.

Layout of a checkpoint directory (``<run folder>/checkpoint`` by default)::

    worker-<n>/iteration-<k>.npz   worker n's state (written by the worker itself)
    relay-<k>.npz                  the engine's state (mailbox, graph, counters, history)
    latest.json                    {"iteration": k}: written last, so it only ever names
                                   a complete checkpoint

Workers persist their own state, on their own machine, instead of sending it through
the relay: a checkpoint then costs no network traffic (a worker's state is its model,
its neighbours' copies and its duals, several models' worth of bytes, which sent every
K rounds would cost more than the training itself), and the relay never holds the
models. In simulation every worker writes under the same directory; in deployment each
device writes under the same path on its own disk, where the resumed run finds it.

Every file is written to a temporary name and renamed, so a run killed mid-write leaves
the previous checkpoint intact. After a complete checkpoint the two latest are kept; while
the next one is being written, the one ``latest.json`` names is always complete (older
files are deleted only up to it).
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray], scalars: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    encoded = json.dumps(dict(scalars), default=_plain).encode()
    with tmp.open("wb") as fh:
        write_npz(fh, {**arrays, _SCALARS: np.frombuffer(encoded, dtype=np.uint8)})
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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


# ---------------------------------------------------------------------- the relay
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
    tmp = _temporary(directory / "latest.json")
    tmp.write_text(json.dumps({"iteration": int(iteration)}))
    os.replace(tmp, directory / "latest.json")
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
    for path in directory.glob("relay-*.npz"):
        path.unlink(missing_ok=True)
    for folder in directory.glob("worker-*"):
        for path in folder.glob("iteration-*.npz"):
            path.unlink(missing_ok=True)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def load_relay(directory: str | Path, iteration: int) -> tuple[dict[str, np.ndarray], dict]:
    """The relay's saved (arrays, state) of ``iteration``."""
    return _read_npz(Path(directory) / f"relay-{int(iteration)}.npz")


def relay_state(directory: str | Path, iteration: int) -> dict:
    """The relay's saved state of ``iteration``, without reading its arrays (the models)."""
    return _read_npz(Path(directory) / f"relay-{int(iteration)}.npz", with_arrays=False)[1]
