"""Training rows per worker through Flower Datasets' partitioners.

The labels become an in-memory Hugging Face ``datasets.Dataset`` with two columns, the
original row index (``"row"``) and ``"label"``. As ``flwr_datasets.FederatedDataset``
does before partitioning, the rows are shuffled with the seed; then a partitioner from
``flwr_datasets.partitioner`` splits them and each worker's ``"row"`` values are its
indices into the caller's arrays. Nothing is downloaded: the data set is built from
the arrays in memory.

Schemes (:data:`SCHEMES`):

- ``"iid"``: ``IidPartitioner(num_partitions)``, equal contiguous shards of the
  shuffled rows (sizes differ by at most one).
- ``"contiguous"``: the same shards of the rows in their order, not shuffled (the
  papers' split: worker w holds the w-th block of the data set).
- ``"dirichlet"``: ``DirichletPartitioner(num_partitions, partition_by="label", alpha,
  min_partition_size, self_balancing, seed)``, per label Dirichlet(alpha) proportions
  over workers (label skew; small alpha, strong skew). One draw per seed by default
  (``min_partition_size=0``): a worker left without rows is an error naming it.
- ``"pathological"``: ``PathologicalPartitioner(num_partitions, partition_by="label",
  num_classes_per_partition, class_assignment_mode="first-deterministic", seed)``, every
  worker holds rows of exactly ``classes_per_worker`` labels (worker ``w``'s first
  label is the ``w % num_labels``-th, the others are drawn). With fewer workers than
  labels some labels may go to no worker: a warning names them and their rows are
  left out.

``import datasets`` and ``flwr_datasets`` take about a second, so they are imported on
first use, not with this module.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

SCHEMES = ("iid", "contiguous", "dirichlet", "pathological")


def labels_dataset(labels: np.ndarray) -> Any:  # -> datasets.Dataset
    """An in-memory ``datasets.Dataset`` with columns ``"row"`` (0..n-1) and ``"label"``."""
    import datasets

    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    return datasets.Dataset.from_dict(
        {"row": np.arange(len(labels), dtype=np.int64), "label": labels}
    )


def make_partitioner(
    num_workers: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    classes_per_worker: int = 2,
    min_partition_size: int = 0,
    self_balancing: bool = False,
) -> Any:  # -> flwr_datasets.partitioner.Partitioner
    """The ``flwr_datasets`` partitioner of ``scheme`` (no data set assigned yet)."""
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    if scheme not in SCHEMES:
        raise ValueError(f"unknown partition scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    if int(num_workers) < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if scheme in ("iid", "contiguous"):
        return IidPartitioner(num_partitions=int(num_workers))
    if scheme == "dirichlet":
        if not float(alpha) > 0:
            raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
        return DirichletPartitioner(
            num_partitions=int(num_workers),
            partition_by="label",
            alpha=float(alpha),
            min_partition_size=int(min_partition_size),
            self_balancing=bool(self_balancing),
            shuffle=True,
            seed=int(seed),
        )
    if int(classes_per_worker) < 1:
        raise ValueError(f"classes_per_worker must be >= 1, got {classes_per_worker}")
    return PathologicalPartitioner(
        num_partitions=int(num_workers),
        partition_by="label",
        num_classes_per_partition=int(classes_per_worker),
        class_assignment_mode="first-deterministic",
        shuffle=True,
        seed=int(seed),
    )


def partition_indices(
    labels: np.ndarray,
    num_workers: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    classes_per_worker: int = 2,
    *,
    min_partition_size: int = 0,
    self_balancing: bool = False,
) -> list[np.ndarray]:
    """Sorted row indices (int64) into ``labels`` for each of ``num_workers`` workers.

    ``scheme``: ``"iid"``, ``"dirichlet"`` (``alpha``; ``min_partition_size`` > 0 makes
    Flower Datasets redraw, quietly, up to 10 more times until every worker has that
    many rows; ``self_balancing`` stops giving rows to a worker above the average) or
    ``"pathological"`` (``classes_per_worker`` labels per worker). The same arguments
    give the same split. Raises ValueError for an unknown scheme, a worker left without
    rows (named) and settings the scheme cannot meet.
    """
    labels, num_workers = np.asarray(labels), int(num_workers)
    partitioner = make_partitioner(
        num_workers, scheme, alpha, seed, classes_per_worker, min_partition_size, self_balancing
    )
    settings = _describe(scheme, num_workers, alpha, classes_per_worker)
    n = len(labels)
    if num_workers > n:
        raise ValueError(
            f"worker {n} got an empty partition ({settings}): only {n} rows; use fewer workers"
        )
    if scheme == "pathological":
        num_labels = len(np.unique(labels))
        if classes_per_worker > num_labels:
            raise ValueError(
                f"pathological partition impossible: classes-per-worker={classes_per_worker} "
                f"but the data has only {num_labels} labels"
            )
    rows = labels_dataset(labels)
    partitioner.dataset = rows if scheme == "contiguous" else rows.shuffle(seed=int(seed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parts = [_rows(partitioner.load_partition(w)) for w in range(num_workers)]
        except ValueError as exc:
            raise _explain(exc, scheme, settings, min_partition_size) from exc
    # Replayed: flwr-datasets' warnings, but its unused-labels text names a setting that
    # does not exist (ours says which labels), and Dirichlet redraws are expected here
    for warning in caught:
        if scheme == "pathological" and "will NOT be used" in str(warning.message):
            _warn_unused_labels(labels, parts, classes_per_worker, num_workers)
        elif not (scheme == "dirichlet" and "min_partition_size" in str(warning.message)):
            warnings.warn(warning.message, warning.category, stacklevel=2)
    for w, p in enumerate(parts):
        if len(p) == 0:
            raise ValueError(
                f"worker {w} got an empty partition ({settings}); "
                + (
                    "use a larger dirichlet-alpha or fewer workers"
                    if scheme == "dirichlet"
                    else "use fewer workers"
                )
            )
    return parts


def partition_arrays(
    x: np.ndarray, y: np.ndarray, num_workers: int, **kwargs: Any
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(x[idx], y[idx])`` per worker, e.g. of the MNIST / CIFAR-10 arrays that
    ``image_task``'s loaders return; ``kwargs`` as :func:`partition_indices`."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    return [(x[idx], y[idx]) for idx in partition_indices(y, num_workers, **kwargs)]


def dataset_labels(dataset: Any) -> np.ndarray:
    """The labels of a torch-style (map-style) data set: ``dataset.targets``
    (torchvision), the last tensor of a ``TensorDataset``, else ``dataset[i][1]``."""
    targets = getattr(dataset, "targets", None)
    if targets is None and hasattr(dataset, "tensors"):
        targets = dataset.tensors[-1]
    if targets is None:
        targets = [dataset[i][1] for i in range(len(dataset))]
    if hasattr(targets, "numpy"):
        targets = targets.numpy()
    return np.asarray([int(t) for t in targets] if isinstance(targets, Sequence) else targets)


def partition_dataset(dataset: Any, num_workers: int, **kwargs: Any) -> list[Any]:
    """``torch.utils.data.Subset`` per worker of a torch-style data set (labels by
    :func:`dataset_labels`); ``kwargs`` as :func:`partition_indices`."""
    from torch.utils.data import Subset

    parts = partition_indices(dataset_labels(dataset), num_workers, **kwargs)
    return [Subset(dataset, idx.tolist()) for idx in parts]


def _rows(partition: Any) -> np.ndarray:
    """The original row indices of one partition, sorted."""
    rows = partition.with_format("numpy")["row"][:]
    return np.sort(np.asarray(rows, dtype=np.int64))


def _describe(scheme: str, num_workers: int, alpha: float, classes_per_worker: int) -> str:
    detail = {
        "dirichlet": f", alpha={alpha}",
        "pathological": f", classes-per-worker={classes_per_worker}",
    }.get(scheme, "")
    return f"{scheme}{detail}, {num_workers} workers"


def _explain(exc: ValueError, scheme: str, settings: str, min_partition_size: int) -> ValueError:
    """flwr-datasets' error with our settings' names and the way out."""
    if scheme == "dirichlet" and "max number of attempts" in str(exc):
        return ValueError(
            f"dirichlet partition: no draw in 11 gave every worker >= {min_partition_size} "
            f"rows ({settings}); use a larger dirichlet-alpha or fewer workers"
        )
    if scheme == "pathological":  # the first sentence; the rest names flwr-datasets' knobs
        reason = str(exc).split(". Please")[0].rstrip(".")
        return ValueError(
            f"pathological partition impossible ({settings}): {reason}; "
            "use fewer workers or a smaller classes-per-worker"
        )
    return ValueError(f"{scheme} partition failed ({settings}): {exc}")


def _warn_unused_labels(
    labels: np.ndarray, parts: list[np.ndarray], classes_per_worker: int, num_workers: int
) -> None:
    used = np.zeros(len(labels), dtype=bool)
    for p in parts:
        used[p] = True
    unused = np.unique(labels[~used]).tolist()
    warnings.warn(
        f"pathological partition: labels {unused} ({int((~used).sum())} rows) go to no "
        f"worker and are left out ({num_workers} workers x {classes_per_worker} "
        "classes-per-worker); use at least as many workers as labels to use them all",
        UserWarning,
        stacklevel=3,
    )
