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
a given data set and setting. Every worker reports accuracy on the whole test set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .config import RunConfig, SolverSettings
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
    try:
        splits = [dataset_cls(data_dir, train=t, download=False) for t in (True, False)]
    except RuntimeError as exc:
        raise FileNotFoundError(f"{name} not found under {data_dir!r}: {exc}") from None
    (xtr, ytr), (xte, yte) = (to_numpy(ds) for ds in splits)
    return ImageData(xtr, ytr, xte, yte)


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
    parts = partition_indices(
        np.frombuffer(labels, dtype=dtype), num_workers, scheme, alpha, seed, classes_per_worker
    )
    for p in parts:
        p.setflags(write=False)
    return tuple(parts)


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
