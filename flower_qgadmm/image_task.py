"""Image classification tasks for SGADMM / Q-SGADMM and FedAvg.

- ``digits``: scikit-learn's 8x8 digits (ships with the package: runs offline), an MLP
  64-64-10; a seeded 80/20 train/test split.
- ``mnist``: torchvision's MNIST read from ``data_dir`` (``download=False``: this
  machine has no internet; users with the files or internet point ``data-dir`` at a
  torchvision root), the paper's MLP 784-128-64-10 without biases (d = 109,184).
- ``cifar10``: torchvision's CIFAR-10 from ``data_dir``, a small CNN.

Training rows are split over workers by Flower Datasets' partitioners
(:mod:`flower_qgadmm.partitions`, seeded): ``iid`` (equal shards of the shuffled rows),
``dirichlet`` (Dirichlet(alpha) label proportions per worker) or ``pathological``
(``classes-per-worker`` labels per worker). The split is computed once per process for
a given data set and setting, and kept on disk (:func:`cache_dir`): a deployed ClientApp
is a new process per message, which would otherwise partition again every time. Every
worker reports accuracy on the whole test set.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .config import CUSTOM_TASK, TASKS, RunConfig, SolverSettings
from .partitions import partition_indices  # also imported from here by callers
from .torch_solver import TorchSolver, seeded_model


@dataclass(frozen=True)
class ImageData:
    """Flattened images (float32 in [0, 1]) and integer labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_data(seed: int = 0, test_fraction: float = 0.2) -> ImageData:
    """scikit-learn's digits (1797 images, 8x8), scaled to [0, 1], seeded split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng([seed, 1797]).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return ImageData(x[train], y[train], x[test], y[test])


def _torchvision_data(task: str, name: str, dataset_cls, data_dir: str, to_numpy) -> ImageData:
    """Train and test split of a torchvision dataset under ``data_dir`` (no download)."""
    if not data_dir:
        raise ValueError(f"task {task!r} needs data-dir (a torchvision root with {name})")
    splits = []
    for train in (True, False):
        try:
            splits.append(dataset_cls(data_dir, train=train, download=False))
        except RuntimeError as exc:
            if "not found" in str(exc).lower():  # torchvision's word for missing files
                raise FileNotFoundError(f"{name} not found under {data_dir!r}: {exc}") from None
            raise ValueError(_unreadable(name, data_dir, train, exc)) from None
        except (AssertionError, ValueError, EOFError, OSError, IndexError) as exc:
            # torchvision's readers assert on a wrong magic number, fail on a short file
            raise ValueError(_unreadable(name, data_dir, train, exc)) from None
    (xtr, ytr), (xte, yte) = (to_numpy(ds) for ds in splits)
    for split, x, y in (("training", xtr, ytr), ("test", xte, yte)):
        if len(x) != len(y):
            raise ValueError(
                f"{name} under {data_dir!r}: the {split} split has {len(x)} images but "
                f"{len(y)} labels: its files do not belong together"
            )
    return ImageData(xtr, ytr, xte, yte)


def _unreadable(name: str, data_dir: str, train: bool, exc: BaseException) -> str:
    split = "training" if train else "test"
    return (
        f"{name} under {data_dir!r}: the {split} files cannot be read "
        f"({type(exc).__name__}: {exc or 'corrupt'}); replace them with the original files"
    )


def load_mnist_data(data_dir: str) -> ImageData:
    """MNIST through torchvision's loader (files under ``data_dir/MNIST/raw``)."""
    from torchvision.datasets import MNIST

    def flat(ds: MNIST) -> tuple[np.ndarray, np.ndarray]:
        x = ds.data.reshape(len(ds.data), -1).numpy().astype(np.float32) / 255.0
        return x, ds.targets.numpy().astype(np.int64)

    return _torchvision_data("mnist", "MNIST", MNIST, data_dir, flat)


def load_cifar10_data(data_dir: str) -> ImageData:
    """CIFAR-10 through torchvision's loader (``data_dir/cifar-10-batches-py``)."""
    from torchvision.datasets import CIFAR10

    def flat(ds: CIFAR10) -> tuple[np.ndarray, np.ndarray]:
        x = ds.data.transpose(0, 3, 1, 2).reshape(len(ds.data), -1).astype(np.float32) / 255.0
        return x, np.asarray(ds.targets, dtype=np.int64)

    return _torchvision_data("cifar10", "CIFAR-10", CIFAR10, data_dir, flat)


def digits_mlp() -> nn.Module:
    """MLP 64-64-10 with ReLU."""
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def mnist_mlp() -> nn.Module:
    """The paper's MLP 784-128-64-10, ReLU, no biases (d = 109,184)."""
    return nn.Sequential(
        nn.Linear(784, 128, bias=False),
        nn.ReLU(),
        nn.Linear(128, 64, bias=False),
        nn.ReLU(),
        nn.Linear(64, 10, bias=False),
    )


class Cifar10CNN(nn.Module):
    """A small CNN for 3x32x32 images (inputs arrive flattened, channels first)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, 3, 32, 32)))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "digits": digits_mlp,
    "mnist": mnist_mlp,
    "cifar10": Cifar10CNN,
}
INPUTS = {"digits": 64, "mnist": 784, "cifar10": 3 * 32 * 32}


def model_fn(cfg: RunConfig) -> Callable[[], nn.Module]:
    """The task's network (``model = "auto"``) or softmax regression (``"softmax"``: one
    linear layer, e.g. d = 650 on digits, the set-up of the Malcom-PSGD measurements)."""
    if cfg.model == "softmax":
        return lambda: nn.Linear(INPUTS[cfg.task], 10)
    return MODELS[cfg.task]


def load_task_data(cfg: RunConfig) -> ImageData:
    """The task's full data set."""
    if cfg.task == "digits":
        return load_digits_data(cfg.seed)
    if cfg.task == "mnist":
        return load_mnist_data(cfg.data_dir)
    if cfg.task == "cifar10":
        return load_cifar10_data(cfg.data_dir)
    if cfg.task == CUSTOM_TASK:
        raise ValueError(
            "task 'custom' means your own ClientApp holds the data and the model "
            "(flower_qgadmm.flower.torch_client_app); this app's own tasks are "
            f"{', '.join(t for t in TASKS if t != CUSTOM_TASK)}"
        )
    raise ValueError(f"task {cfg.task!r} is not an image task")


def worker_indices(cfg: RunConfig, data: ImageData) -> tuple[np.ndarray, ...]:
    """Training row indices of every worker under the run's partition settings (computed
    once per process for the same labels and settings; the arrays are read-only)."""
    labels = np.ascontiguousarray(data.y_train)
    return _cached_indices(
        labels.tobytes(),
        labels.dtype.str,
        cfg.num_workers,
        cfg.partition,
        float(cfg.dirichlet_alpha),
        int(cfg.seed),
        cfg.classes_per_worker,
    )


@lru_cache(maxsize=8)
def _cached_indices(
    labels: bytes,
    dtype: str,
    num_workers: int,
    scheme: str,
    alpha: float,
    seed: int,
    classes_per_worker: int,
) -> tuple[np.ndarray, ...]:
    settings = {
        "num_workers": num_workers,
        "scheme": scheme,
        "alpha": repr(alpha),
        "seed": seed,
        "classes_per_worker": classes_per_worker,
    }
    key = _partition_key(labels, dtype, settings)
    parts = _read_partition(key, num_workers, len(labels) // np.dtype(dtype).itemsize)
    if parts is None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            parts = partition_indices(
                np.frombuffer(labels, dtype=dtype),
                num_workers,
                scheme,
                alpha,
                seed,
                classes_per_worker,
            )
        for warning in caught:  # replayed; a split that warns is not kept (it would not warn)
            warnings.warn(warning.message, warning.category, stacklevel=3)
        if not caught:
            _write_partition(key, parts)
    for p in parts:
        p.setflags(write=False)
    return tuple(parts)


# ---------------------------------------------------------------- the partition cache
CACHE_ENV = "FLOWER_QGADMM_CACHE"  # a directory, or "off"
CACHE_FORMAT = 1
_VERSIONED = ("numpy", "datasets", "flwr-datasets")  # what computes the split


def cache_dir() -> Path | None:
    """Where worker partitions are kept: ``$FLOWER_QGADMM_CACHE`` (``off``: nowhere),
    else ``$FLWR_HOME/cache/flower-qgadmm`` when ``FLWR_HOME`` is set (the deployment
    kit's SuperNodes), else ``flower-qgadmm-cache-<uid>`` in the temp directory. A
    directory another user owns or can write to is not used."""
    chosen = os.environ.get(CACHE_ENV, "")
    if chosen.lower() in ("off", "0", "false", "no"):
        return None
    if chosen:
        path = Path(chosen)
    elif os.environ.get("FLWR_HOME"):
        path = Path(os.environ["FLWR_HOME"]) / "cache" / "flower-qgadmm"
    else:
        path = Path(tempfile.gettempdir()) / f"flower-qgadmm-cache-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError:
        return None
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    return path


def _partition_key(labels: bytes, dtype: str, settings: dict) -> str:
    """Hash of exactly what determines a split: the labels, the partition settings and
    the versions of the packages that compute it."""
    versions = {}
    for package in _VERSIONED:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    described = json.dumps(
        {
            "format": CACHE_FORMAT,
            "labels": hashlib.sha256(labels).hexdigest(),
            "dtype": dtype,
            "settings": settings,
            "versions": versions,
        },
        sort_keys=True,
    )
    return hashlib.sha256(described.encode()).hexdigest()


def _digest(parts: Sequence[np.ndarray]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(np.ascontiguousarray(p, dtype="<i8").tobytes())
    return h.hexdigest()


def _read_partition(key: str, num_workers: int, num_rows: int) -> list[np.ndarray] | None:
    """The cached split of ``key``, or None if absent, unreadable or not verified (its
    key, worker count, digest, index ranges)."""
    where = cache_dir()
    path = where / f"partition-{key}.npz" if where is not None else None
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["key"]) != key or int(saved["workers"]) != num_workers:
                return None
            parts = [np.array(saved[f"w{w}"], dtype=np.int64) for w in range(num_workers)]
            digest = str(saved["digest"])
    except Exception:  # noqa: BLE001 - truncated, not a zip, missing entries: rebuilt
        return None
    for p in parts:
        if p.ndim != 1 or (len(p) and (p.min() < 0 or p.max() >= num_rows)):
            return None
    return parts if digest == _digest(parts) else None


def _write_partition(key: str, parts: Sequence[np.ndarray]) -> None:
    """Keep a split (atomically: a temporary file renamed); failures are ignored."""
    where = cache_dir()
    if where is None:
        return
    arrays = {f"w{w}": np.asarray(p, dtype=np.int64) for w, p in enumerate(parts)}
    tmp = None
    try:
        with tempfile.NamedTemporaryFile(dir=where, suffix=".tmp", delete=False) as fh:
            tmp = fh.name
            np.savez(
                fh, key=np.array(key), workers=np.array(len(parts)), digest=_digest(parts), **arrays
            )
        os.replace(tmp, where / f"partition-{key}.npz")
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def loader(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool) -> DataLoader:
    """A DataLoader over in-memory tensors (shuffling uses torch's seeded global RNG)."""
    return DataLoader(
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
        batch_size=batch_size,
        shuffle=shuffle,
    )


def image_solver(
    cfg: RunConfig,
    worker: int,
    data: ImageData | None = None,
    solver: SolverSettings | None = None,
    seed: int | None = None,
) -> TorchSolver:
    """Worker ``worker``'s TorchSolver: its shard, the shared test set, the task's model;
    ``solver`` / ``seed`` as the relay sent them (default: the run config's)."""
    solver = solver if solver is not None else cfg.solver
    seed = cfg.seed if seed is None else int(seed)
    data = data if data is not None else load_task_data(cfg)
    idx = worker_indices(cfg, data)[worker]
    return TorchSolver(
        seeded_model(model_fn(cfg), seed),
        loader(data.x_train[idx], data.y_train[idx], cfg.batch_size, shuffle=True),
        nn.CrossEntropyLoss(),
        loader(data.x_test, data.y_test, 1024, shuffle=False),
        optimizer=solver.optimizer,
        lr=solver.lr,
        local_steps=solver.local_steps,
        name=f"worker {worker}",
        device=solver.device,
        same_batch=solver.same_batch,
        loss_reduction=solver.loss_reduction,
    )


def mean_model_evaluator(
    cfg: RunConfig, data: ImageData | None = None
) -> Callable[[np.ndarray], dict[str, float]]:
    """``evaluate(theta) -> {"mean_model_accuracy", "mean_model_test_loss"}`` on the test set."""
    data = data if data is not None else load_task_data(cfg)
    test = loader(data.x_test, data.y_test, 1024, shuffle=False)
    solver = TorchSolver(
        seeded_model(model_fn(cfg), cfg.seed),
        test,
        nn.CrossEntropyLoss(),
        test,
        name="evaluator",
        device=cfg.solver.device,
    )

    def evaluate(theta: np.ndarray) -> dict[str, float]:
        loss, acc = solver._pass(test, theta)
        return {"mean_model_accuracy": acc, "mean_model_test_loss": loss}

    return evaluate
