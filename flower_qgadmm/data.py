"""Linear-regression data: a seeded synthetic problem, or a user's CSV, split over workers.

Rows are split contiguously and as equally as possible (``numpy.array_split``), as in the
papers' experiments. Data are used as given: no scaling and no intercept column.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .config import RunConfig


def synthetic_regression(
    num_workers: int, samples_per_worker: int, dim: int, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """X ~ N(0, 1), theta_true ~ N(0, 1), y = X theta_true + noise * N(0, 1), seeded."""
    rng = np.random.default_rng([seed, 20191023])
    X = rng.standard_normal((num_workers * samples_per_worker, dim))
    theta = rng.standard_normal(dim)
    y = X @ theta + noise * rng.standard_normal(X.shape[0])
    return X, y


def read_csv(path: str | Path, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a numeric CSV with a header row; ``target`` names the label column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"{path} is empty") from None
        if target not in header:
            raise ValueError(f"{path} has no target column {target!r}; columns: {header}")
        rows = []
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{lineno}: {len(row)} fields, header has {len(header)}")
            try:
                rows.append([float(c) for c in row])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: non-numeric value in {row}") from None
    if not rows:
        raise ValueError(f"{path} has a header but no data rows")
    data = np.asarray(rows)
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{path} contains NaN/Inf values")
    t = header.index(target)
    return np.delete(data, t, axis=1), data[:, t]


def split_rows(
    X: np.ndarray, y: np.ndarray, num_workers: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contiguous, as-equal-as-possible split; every worker must get at least one row."""
    if X.shape[0] < num_workers:
        raise ValueError(f"{X.shape[0]} rows cannot be split over {num_workers} workers")
    idx = np.array_split(np.arange(X.shape[0]), num_workers)
    return [(X[i], y[i]) for i in idx]


def experiment_datasets(cfg: RunConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """The linear-regression data an :class:`RunConfig` describes, split by worker."""
    return load_dataset(
        cfg.num_workers,
        cfg.samples_per_worker,
        cfg.dim,
        cfg.noise,
        cfg.seed,
        cfg.data_csv,
        cfg.data_target,
    )


def load_dataset(
    num_workers: int,
    samples_per_worker: int = 50,
    dim: int = 20,
    noise: float = 0.1,
    seed: int = 0,
    data_csv: str = "",
    data_target: str = "",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """All workers' (X_n, y_n): from ``data_csv`` if given, else the synthetic problem."""
    if data_csv:
        X, y = read_csv(data_csv, data_target)
    else:
        X, y = synthetic_regression(num_workers, samples_per_worker, dim, noise, seed)
    return split_rows(X, y, num_workers)
