"""Models in their owner's layout: named arrays (a torch ``state_dict`` as numpy, or
``{"theta": vector}`` for least squares), as a model pull, ``evaluate_fn`` and the saved
final model carry them.

The workers exchange one flat float64 vector (:meth:`LocalSolver.parameter_keys` tells
which arrays make it up, in order); everything the relay reports from pulled models
(consensus, distance to the optimum, the mean model) is computed from
:func:`flatten` of those arrays, in both runners, so the numbers agree.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

Arrays = Mapping[str, np.ndarray]


def flatten(arrays: Arrays, keys: Sequence[str]) -> np.ndarray:
    """The flat float64 model vector: the arrays named by ``keys``, in that order."""
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ValueError(f"model lacks {missing} (has {sorted(arrays)})")
    if not keys:
        return np.zeros(0)
    if len(keys) == 1:  # a copy of the one array, as concatenate makes
        return np.array(arrays[keys[0]], dtype=np.float64).reshape(-1)
    return np.concatenate([np.asarray(arrays[k], dtype=np.float64).reshape(-1) for k in keys])


def average(models: Sequence[Arrays]) -> dict[str, np.ndarray]:
    """Array-wise mean of models of one layout: floating arrays are averaged in float64
    and cast back to their dtype; other arrays (e.g. ``num_batches_tracked``) are taken
    from the first model."""
    if not models:
        raise ValueError("no model to average")
    first = models[0]
    for m in models[1:]:
        if set(m) != set(first) or any(np.shape(m[k]) != np.shape(first[k]) for k in first):
            raise ValueError("models of different layouts cannot be averaged")
    out = {}
    for key, value in first.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating):
            mean = np.mean([np.asarray(m[key], dtype=np.float64) for m in models], axis=0)
            out[key] = mean.astype(value.dtype)
        else:
            out[key] = value.copy()
    return out


def save_model(directory: str | Path, arrays: Arrays, framework: str) -> Path:
    """Write a model: ``model.pt`` (a torch ``state_dict``, load it with
    ``module.load_state_dict(torch.load(path))``) for torch models, else ``model.npz``."""
    directory = Path(directory)
    if framework == "torch":
        import torch

        path = directory / "model.pt"
        torch.save({k: torch.as_tensor(np.asarray(v)) for k, v in arrays.items()}, path)
        return path
    path = directory / "model.npz"
    write_npz(path, arrays)
    return path


def write_npz(file: str | Path | BinaryIO, arrays: Arrays) -> None:
    """``np.savez(file, **arrays)`` for any key: the same layout (one ``.npy`` per key in
    an uncompressed zip, read back by ``np.load``), written here because np.savez's keyword
    arguments cannot carry keys named like its parameters (``file``, ``allow_pickle``)."""
    with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, value in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
