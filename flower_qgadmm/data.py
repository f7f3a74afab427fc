"""Linear-regression data: a seeded synthetic problem, or a user's CSV, split over workers.

Rows are split contiguously and as equally as possible (``numpy.array_split``), as in the
papers' experiments. Data are read as given (no intercept column is added); the feature
columns of a CSV can be chosen (``features``) or left out (``drop``). Scaling, when on,
happens in the solvers (:mod:`flower_qgadmm.solvers`), results stay in original units.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .settings import closest

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


#: Smallest accepted magnitude of a column's largest entry (and of the target's): squares
#: of values below ~1e-154 underflow float64 to 0, so X^T X, the losses and F* vanish and
#: a run reports perfect convergence at zero. 1e-150 keeps the squares normal numbers.
TINY = 1e-150


def parse_columns(text: str | Sequence[str] | None) -> list[str]:
    """Column names from ``"a, b,c"`` (or a sequence); empty: none."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    return [c.strip() for c in items if c.strip()]


def read_csv(
    path: str | Path,
    target: str,
    features: str | Sequence[str] | None = None,
    drop: str | Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a numeric CSV with a header row; ``target`` names the label column.

    ``features`` (names, or one comma-separated string) keeps only those feature columns,
    in that order; ``drop`` leaves columns out (applied after ``features``). Unknown
    names, the target among them, duplicates, or no feature left are refused, naming the
    columns there are. Every check below applies to the columns kept, so a bad column can
    be dropped.

    UTF-8 (a leading byte-order mark is ignored). Refused with a ValueError naming the
    cause: no header row (a first row of numbers), duplicate column names, no feature
    column besides the target, non-numeric, NaN/Inf or over-long fields, ragged rows,
    feature columns that are all zero or tiny (largest magnitude below :data:`TINY`), a
    target of that kind, and more than one constant feature column (a single constant
    column is the user's intercept and is kept).
    """
    path = Path(path)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()}: give an absolute path)"
        raise FileNotFoundError(f"CSV file not found: {path}{where}")
    try:
        header, rows = _read_rows(path, target)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    names = select_columns(path, header, target, parse_columns(features), parse_columns(drop))
    used = [header.index(n) for n in names] + [header.index(target)]
    data = np.empty((len(rows), len(used)))
    for i, (lineno, row) in enumerate(rows):  # only the columns kept are read
        try:
            data[i] = [float(row[c]) for c in used]
        except ValueError:
            bad = next(c for c in used if not _is_number(row[c]))
            raise ValueError(
                f"{path}:{lineno}: column {header[bad]!r} has a non-numeric value "
                f"{_shorten(row[bad])} (drop the column, or choose the features)"
            ) from None
    finite = np.isfinite(data)
    if not finite.all():
        i, j = (int(v) for v in np.argwhere(~finite)[0])
        raise ValueError(
            f"{path}:{rows[i][0]}: column {header[used[j]]!r} is {data[i, j]} "
            "(NaN/Inf values are refused)"
        )
    X, y = data[:, :-1], data[:, -1]
    _check_columns(path, X, y, names, target)
    return X, y


def select_columns(
    path: Path, header: list[str], target: str, features: list[str], drop: list[str]
) -> list[str]:
    """The feature columns kept: ``features`` (default: every column but the target),
    without ``drop``."""
    for what, names in (("features", features), ("drop", drop)):
        unknown = [n for n in names if n not in header]
        if unknown:
            near = [f"{c!r} for {n!r}" for n in unknown if (c := closest(n, header))]
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise ValueError(
                f"{path}: {what} names unknown column(s) {unknown}; columns: {header}{hint}"
            )
        if target in names and what == "features":
            raise ValueError(f"{path}: the target {target!r} cannot also be a feature")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{path}: {what} names column(s) {twice} twice")
    chosen = features or [h for h in header if h != target]
    kept = [n for n in chosen if n not in drop]
    if not kept:
        raise ValueError(
            f"{path}: no feature column left (features {features or 'all'}, drop {drop})"
        )
    return kept


#: separators a CSV saved by a spreadsheet may have instead of commas (their names)
SEPARATORS = {";": "';'", "\t": "tab", "|": "'|'"}


def _read_rows(path: Path, target: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the rows (line number, fields) of ``path``."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise ValueError(f"{path} is empty") from None
            if all(_is_number(h) for h in header):
                raise ValueError(
                    f"{path} has no header row: its first row {header[:5]} is numbers; "
                    "the first row must name the columns"
                )
            dup = sorted({h for h in header if header.count(h) > 1})
            if dup:
                raise ValueError(f"{path}: duplicate column name(s) {dup}")
            if target not in header:
                one = header[0] if len(header) == 1 else ""  # another separator, unsplit?
                sep = next((name for c, name in SEPARATORS.items() if c in one), None)
                if sep:
                    hint = f" (the file looks {sep}-separated: save it with commas)"
                elif (near := closest(target, header)) is not None:
                    hint = f" (did you mean {near!r}?)"
                else:
                    hint = ""
                raise ValueError(f"{path} has no target column {target!r}; columns: {header}{hint}")
            if len(header) == 1:
                raise ValueError(
                    f"{path} has only the target column {target!r}: no feature columns "
                    "(the model would have dimension 0)"
                )
            rows = []
            for row in reader:
                lineno = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise ValueError(
                        f"{path}:{lineno}: {len(row)} fields, header has {len(header)}"
                    )
                rows.append((lineno, row))
        except csv.Error as exc:
            raise ValueError(f"{path}:{reader.line_num}: not a readable CSV ({exc})") from None
    if not rows:
        raise ValueError(f"{path} has a header but no data rows")
    return header, rows


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _shorten(value: str, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width] + "..."


def _check_columns(path: Path, X: np.ndarray, y: np.ndarray, names: list[str], target: str) -> None:
    """Refuse data that make a run meaningless (see :func:`read_csv`)."""
    largest = np.max(np.abs(X), axis=0)
    zero = [n for n, m in zip(names, largest, strict=True) if m == 0]
    if zero:
        raise ValueError(f"{path}: column(s) {zero} are all zero: drop them")
    tiny = [n for n, m in zip(names, largest, strict=True) if m < TINY]
    if tiny:
        raise ValueError(
            f"{path}: column(s) {tiny} have no value of magnitude >= {TINY:g}: their squares "
            "underflow float64 (the run would report convergence at zero); rescale them"
        )
    if float(np.max(np.abs(y))) < TINY:
        raise ValueError(
            f"{path}: target {target!r} has no value of magnitude >= {TINY:g} (largest "
            f"{float(np.max(np.abs(y))):.3g}): the optimum is theta = 0 and F* underflows; "
            "rescale it"
        )
    constant = [n for n, col in zip(names, X.T, strict=True) if np.all(col == col[0])]
    if len(constant) > 1 and X.shape[0] > 1:
        raise ValueError(
            f"{path}: constant column(s) {constant}: they are collinear (one constant "
            "column is an intercept; keep at most one)"
        )


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
        cfg.data_features,
        cfg.data_drop,
    )


def load_dataset(
    num_workers: int,
    samples_per_worker: int = 50,
    dim: int = 20,
    noise: float = 0.1,
    seed: int = 0,
    data_csv: str = "",
    data_target: str = "",
    data_features: str = "",
    data_drop: str = "",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """All workers' (X_n, y_n): from ``data_csv`` (its ``data_features`` columns, without
    ``data_drop``) if given, else the synthetic problem."""
    if data_csv:
        X, y = read_csv(data_csv, data_target, data_features, data_drop)
    else:
        X, y = synthetic_regression(num_workers, samples_per_worker, dim, noise, seed)
    return split_rows(X, y, num_workers)
