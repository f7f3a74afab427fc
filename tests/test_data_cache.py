"""The on-disk cache of worker partitions (flower_qgadmm/image_task.py): a deployed
ClientApp is a new process per message; it reads its split from the cache instead of
partitioning again. The cache gives the same indices, and a stale, corrupted or foreign
file is detected and rebuilt."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from flower_qgadmm import image_task
from flower_qgadmm.config import RunConfig


@pytest.fixture
def cache(tmp_path, monkeypatch):
    where = tmp_path / "cache"
    monkeypatch.setenv(image_task.CACHE_ENV, str(where))
    calls: list[tuple] = []
    real = image_task.partition_indices

    def counted(*args, **kwargs):
        calls.append(args[1:])
        return real(*args, **kwargs)

    monkeypatch.setattr(image_task, "partition_indices", counted)
    image_task._cached_indices.cache_clear()  # a new process: nothing in memory
    yield where, calls
    image_task._cached_indices.cache_clear()


def fresh_indices(cfg, data) -> tuple[np.ndarray, ...]:
    image_task._cached_indices.cache_clear()
    return image_task.worker_indices(cfg, data)


def files(where) -> list:
    return sorted(where.glob("partition-*.npz"))


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "pathological"])
def test_cached_split_equals_the_computed_one(cache, partition) -> None:
    where, calls = cache
    cfg = RunConfig.of(task="digits", algorithm="q-sgadmm", num_workers=10, partition=partition)
    data = image_task.load_digits_data(cfg.seed)
    computed = fresh_indices(cfg, data)
    assert len(calls) == 1 and len(files(where)) == 1
    cached = fresh_indices(cfg, data)
    assert len(calls) == 1  # read, not partitioned again
    for a, b in zip(computed, cached, strict=True):
        assert np.array_equal(a, b) and b.dtype == np.int64 and not b.flags.writeable
    # other settings, other labels: another entry
    other = RunConfig.of(
        task="digits", algorithm="q-sgadmm", num_workers=10, partition=partition, seed=7
    )
    fresh_indices(other, data)
    fresh_indices(cfg, image_task.load_digits_data(cfg.seed + 1))
    assert len(calls) == 3 and len(files(where)) == 3


def test_solver_of_a_cached_split_is_the_same(cache) -> None:
    cfg = RunConfig.of(task="digits", algorithm="q-sgadmm", num_workers=4)
    data = image_task.load_task_data(cfg)
    runs = []
    for _ in range(2):  # computed, then read from the cache
        image_task._cached_indices.cache_clear()
        solver = image_task.image_solver(cfg, 2, data)
        theta = solver.initial()
        theta = solver.solve(np.full_like(theta, 0.01), 1.0, theta, (0, 2, 1))
        runs.append((theta, solver.objective(theta), solver.evaluate(theta)))
    assert len(cache[1]) == 1
    assert np.array_equal(runs[0][0], runs[1][0]) and runs[0][1:] == runs[1][1:]


def damage_truncate(path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def damage_garbage(path) -> None:
    path.write_bytes(b"not a zip file at all")


def damage_indices(path) -> None:  # a valid file whose indices changed (digest fails)
    with np.load(path) as saved:
        arrays = {k: saved[k] for k in saved.files}
    arrays["w0"] = arrays["w0"].copy()
    arrays["w0"][0] = arrays["w0"][1]
    np.savez(path, **arrays)


def damage_out_of_range(path) -> None:  # digest recomputed: the range check catches it
    with np.load(path) as saved:
        arrays = {k: saved[k] for k in saved.files}
    arrays["w1"] = arrays["w1"] + 10**6
    parts = [arrays[f"w{w}"] for w in range(int(arrays["workers"]))]
    arrays["digest"] = np.array(image_task._digest(parts))
    np.savez(path, **arrays)


def damage_key(path) -> None:  # another split's file under this name
    with np.load(path) as saved:
        arrays = {k: saved[k] for k in saved.files}
    arrays["key"] = np.array("0" * 64)
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    "damage",
    [damage_truncate, damage_garbage, damage_indices, damage_out_of_range, damage_key],
)
def test_bad_cache_entry_is_rebuilt(cache, damage) -> None:
    where, calls = cache
    cfg = RunConfig.of(task="digits", algorithm="q-sgadmm", num_workers=4, partition="dirichlet")
    data = image_task.load_digits_data(cfg.seed)
    good = fresh_indices(cfg, data)
    (path,) = files(where)
    damage(path)
    again = fresh_indices(cfg, data)
    assert len(calls) == 2  # not trusted: partitioned again
    assert all(np.array_equal(a, b) for a, b in zip(good, again, strict=True))
    fresh_indices(cfg, data)  # and the entry was written again, whole
    assert len(calls) == 2 and files(where) == [path]
    assert not list(where.glob("*.tmp"))


def test_cache_off_and_unsafe_directories(cache, monkeypatch, tmp_path) -> None:
    where, calls = cache
    cfg = RunConfig.of(task="digits", algorithm="q-sgadmm", num_workers=4)
    data = image_task.load_digits_data(cfg.seed)
    monkeypatch.setenv(image_task.CACHE_ENV, "off")
    assert image_task.cache_dir() is None
    fresh_indices(cfg, data)
    fresh_indices(cfg, data)
    assert len(calls) == 2 and not where.exists()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # others could plant a split there: not used
    monkeypatch.setenv(image_task.CACHE_ENV, str(shared))
    assert image_task.cache_dir() is None
    monkeypatch.delenv(image_task.CACHE_ENV)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    assert image_task.cache_dir() == tmp_path / "home" / "cache" / "flower-qgadmm"
    assert os.stat(image_task.cache_dir()).st_mode & 0o777 == 0o700


def test_a_split_that_warns_warns_every_time_and_is_not_kept(cache) -> None:
    where, calls = cache
    # 3 workers with 2 labels each cannot cover the 10 digits: a warning names the rest
    cfg = RunConfig.of(task="digits", algorithm="q-sgadmm", num_workers=3, partition="pathological")
    data = image_task.load_digits_data(cfg.seed)
    for _ in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fresh_indices(cfg, data)
        assert caught
    assert len(calls) == 2 and not files(where)
