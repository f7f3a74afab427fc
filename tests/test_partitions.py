"""Training rows per worker through Flower Datasets' partitioners (flower_qgadmm.partitions)."""

from __future__ import annotations

import time
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from flower_qgadmm import RunConfig
from flower_qgadmm.image_task import (
    image_solver,
    load_digits_data,
    load_task_data,
    worker_indices,
)
from flower_qgadmm.image_task import partition_indices as image_task_partition_indices
from flower_qgadmm.partitions import (
    SCHEMES,
    dataset_labels,
    labels_dataset,
    partition_arrays,
    partition_dataset,
    partition_indices,
)

LABELS = np.random.default_rng(0).integers(0, 10, size=2000)
KW = {"alpha": 0.3, "classes_per_worker": 2}


def label_shares(labels: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    """Rows: workers; columns: the share of each label in the worker's rows."""
    return np.array([np.bincount(labels[p], minlength=10) / len(p) for p in parts])


def test_image_task_keeps_the_import_name() -> None:
    assert image_task_partition_indices is partition_indices


def test_labels_dataset_is_an_in_memory_hf_dataset() -> None:
    import datasets

    ds = labels_dataset(LABELS[:7])
    assert isinstance(ds, datasets.Dataset)
    assert ds.column_names == ["row", "label"] and ds.num_rows == 7
    assert ds.cache_files == []  # built in memory, nothing read or written
    with pytest.raises(ValueError, match="one-dimensional"):
        labels_dataset(np.zeros((3, 2)))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_split_is_reproducible_by_seed(scheme: str) -> None:
    a = partition_indices(LABELS, 10, scheme, seed=3, **KW)
    b = partition_indices(LABELS, 10, scheme, seed=3, **KW)
    c = partition_indices(LABELS, 10, scheme, seed=4, **KW)
    assert len(a) == 10 and all(x.dtype == np.int64 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    # the contiguous split is the data's order: no seed to change it
    same = all(np.array_equal(x, z) for x, z in zip(a, c, strict=True))
    assert same == (scheme == "contiguous")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_split_is_disjoint_sorted_and_covers_every_row(scheme: str) -> None:
    parts = partition_indices(LABELS, 10, scheme, seed=1, **KW)
    assert all(len(p) > 0 and np.all(np.diff(p) > 0) for p in parts)  # sorted, no repeats
    rows = np.concatenate(parts)
    assert len(rows) == len(LABELS)  # disjoint ...
    assert np.array_equal(np.sort(rows), np.arange(len(LABELS)))  # ... and complete


def test_iid_shards_are_equal_and_look_like_the_whole() -> None:
    parts = partition_indices(LABELS, 10, "iid", seed=1)
    assert {len(p) for p in parts} == {200}
    assert {len(p) for p in partition_indices(LABELS[:1438], 10, "iid")} == {143, 144}
    overall = np.bincount(LABELS, minlength=10) / len(LABELS)
    assert np.abs(label_shares(LABELS, parts) - overall).max() < 0.1


def test_contiguous_shards_are_the_blocks_of_the_data_in_order() -> None:
    # the papers' split: worker w holds the w-th block of rows
    for n, workers in ((2000, 10), (1438, 10), (7, 3)):
        parts = partition_indices(LABELS[:n], workers, "contiguous", seed=5)
        want = np.array_split(np.arange(n), workers)
        assert all(np.array_equal(p, w) for p, w in zip(parts, want, strict=True))


def test_dirichlet_is_skewed_and_smaller_alpha_skews_more() -> None:
    overall = np.bincount(LABELS, minlength=10) / len(LABELS)

    def skew(parts: list[np.ndarray]) -> float:  # mean total-variation distance to overall
        return float(np.mean(0.5 * np.abs(label_shares(LABELS, parts) - overall).sum(axis=1)))

    iid = partition_indices(LABELS, 10, "iid", seed=1)
    strong = partition_indices(LABELS, 10, "dirichlet", alpha=0.1, seed=1)
    mild = partition_indices(LABELS, 10, "dirichlet", alpha=1.0, seed=1)
    shares = label_shares(LABELS, strong)
    assert shares.max() > 0.3  # some worker is dominated by a few labels
    assert not np.allclose(shares, shares[0])  # workers' label distributions differ
    assert skew(iid) < 0.1 < skew(mild) < skew(strong)
    assert len({len(p) for p in strong}) > 1  # and so do their sizes


def test_pathological_gives_each_worker_its_number_of_labels() -> None:
    for cpw in (1, 2, 3):
        parts = partition_indices(LABELS, 10, "pathological", seed=2, classes_per_worker=cpw)
        assert [len(np.unique(LABELS[p])) for p in parts] == [cpw] * 10
    # worker w's first label is the (w % 10)-th ("first-deterministic", the paper's)
    parts = partition_indices(LABELS, 12, "pathological", seed=2, classes_per_worker=2)
    assert all(w % 10 in set(LABELS[p].tolist()) for w, p in enumerate(parts))


def test_pathological_with_fewer_workers_than_labels_warns_about_dropped_labels() -> None:
    with pytest.warns(UserWarning, match=r"labels \[.*\] \(\d+ rows\) go to no worker"):
        parts = partition_indices(LABELS, 3, "pathological", seed=0, classes_per_worker=2)
    assert all(len(np.unique(LABELS[p])) == 2 for p in parts)
    assert len(np.concatenate(parts)) < len(LABELS)


def test_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="unknown partition scheme 'shards'; use one of iid"):
        partition_indices(LABELS, 4, "shards")
    labels = np.repeat(np.arange(2), 5)
    with pytest.raises(
        ValueError,
        match=r"worker \d+ got an empty partition \(dirichlet, alpha=0.01, 8 workers\); "
        "use a larger dirichlet-alpha or fewer workers",
    ):
        partition_indices(labels, 8, "dirichlet", alpha=0.01, seed=0)
    with pytest.raises(ValueError, match=r"worker 10 got an empty partition .* only 10 rows"):
        partition_indices(labels, 11, "iid")
    with pytest.raises(ValueError, match="num_workers must be >= 1"):
        partition_indices(labels, 0, "iid")
    with pytest.raises(ValueError, match="dirichlet alpha must be > 0"):
        partition_indices(labels, 2, "dirichlet", alpha=0.0)
    with pytest.raises(ValueError, match=r"no draw in 11 gave every worker >= 3 rows"):
        partition_indices(labels, 3, "dirichlet", alpha=0.01, min_partition_size=3)
    with pytest.raises(ValueError, match="classes-per-worker=3 but the data has only 2 labels"):
        partition_indices(labels, 2, "pathological", classes_per_worker=3)
    with pytest.raises(ValueError, match="classes_per_worker must be >= 1"):
        partition_indices(labels, 2, "pathological", classes_per_worker=0)
    rare = np.array([0] * 10 + [1])  # label 1 has one row but every worker needs it
    with pytest.raises(
        ValueError, match=r"impossible \(pathological, classes-per-worker=2, 3 workers\): Label: 1 "
    ):
        partition_indices(rare, 3, "pathological", classes_per_worker=2)


def test_dirichlet_min_partition_size_redraws_quietly() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parts = partition_indices(LABELS, 10, "dirichlet", alpha=0.1, seed=0, min_partition_size=50)
    assert min(len(p) for p in parts) >= 50


def test_arrays_and_torch_datasets_go_through_the_same_split() -> None:
    x = np.arange(len(LABELS) * 2, dtype=np.float32).reshape(-1, 2)
    want = partition_indices(LABELS, 4, "dirichlet", alpha=0.5, seed=5)
    shards = partition_arrays(x, LABELS, 4, scheme="dirichlet", alpha=0.5, seed=5)
    for (xs, ys), idx in zip(shards, want, strict=True):
        assert np.array_equal(xs, x[idx]) and np.array_equal(ys, LABELS[idx])
    tensors = TensorDataset(torch.from_numpy(x), torch.from_numpy(LABELS))
    subsets = partition_dataset(tensors, 4, scheme="dirichlet", alpha=0.5, seed=5)
    assert [s.indices for s in subsets] == [idx.tolist() for idx in want]
    # torchvision-style (.targets) and plain (x, y) items give the same labels
    assert np.array_equal(dataset_labels(SimpleNamespace(targets=LABELS.tolist())), LABELS)
    plain = [(row, int(label)) for row, label in zip(x[:5], LABELS[:5], strict=True)]
    assert np.array_equal(dataset_labels(plain), LABELS[:5])
    with pytest.raises(ValueError, match="x has 3 rows but y has 2000"):
        partition_arrays(x[:3], LABELS, 2)


@pytest.mark.parametrize("num_workers", [3, 4, 5, 6, 8, 9, 10])
@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_digits_task_loads_for_the_workers_used_in_tests(num_workers: int, partition: str) -> None:
    cfg = RunConfig.of(
        task="digits", algorithm="q-sgadmm", num_workers=num_workers, partition=partition
    )
    data = load_task_data(cfg)
    parts = worker_indices(cfg, data)
    assert worker_indices(cfg, data) is parts  # computed once per process
    assert sum(len(p) for p in parts) == len(data.y_train) == 1438
    assert not parts[0].flags.writeable
    solver = image_solver(cfg, num_workers - 1, data)
    assert len(solver.train_loader.dataset) == len(parts[-1])


def test_digits_task_pathological_indices() -> None:
    # the run config learns 'pathological' / classes-per-worker in config.py; the data
    # path already takes them (worker_indices reads only these fields)
    data = load_digits_data(0)
    cfg = SimpleNamespace(
        num_workers=10, partition="pathological", dirichlet_alpha=0.5, seed=0, classes_per_worker=2
    )
    parts = worker_indices(cfg, data)
    assert [len(np.unique(data.y_train[p])) for p in parts] == [2] * 10
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(1438))


def test_partitioning_digits_for_ten_workers_is_quick() -> None:
    y = load_digits_data(0).y_train
    partition_indices(y, 10, "dirichlet")  # imports datasets / flwr_datasets once
    t0 = time.perf_counter()
    for scheme in SCHEMES:
        partition_indices(y, 10, scheme, seed=11)
    assert time.perf_counter() - t0 < 5.0  # about 0.1 s on 2 cores; generous for CI
