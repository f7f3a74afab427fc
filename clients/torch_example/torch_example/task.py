"""The user's side: a model and this node's data loaders (nothing GADMM-specific).

The data is scikit-learn's digits (it ships with scikit-learn, so this runs offline) as
a Hugging Face ``datasets.Dataset``, split over the SuperNodes with a Flower Datasets
partitioner, as with ``FederatedDataset`` (which would download a data set from the
Hub instead).
"""

from functools import lru_cache

import numpy as np
import torch
from datasets import Dataset
from flwr_datasets.partitioner import IidPartitioner
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    """A small CNN for 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv(x.view(-1, 1, 8, 8))), 2)
        return self.fc(x.flatten(1))


@lru_cache(maxsize=1)
def _digits() -> dict[str, Dataset]:
    """Digits as a Dataset ("image": 64 floats in [0, 1], "label"), with a test set of
    360 rows fixed by the seed; the train rows come out in a seeded random order."""
    digits = load_digits()
    data = Dataset.from_dict(
        {"image": (digits.data / 16.0).astype(np.float32), "label": digits.target}
    )
    return data.train_test_split(test_size=360, seed=0)


@lru_cache(maxsize=4)
def _partitioner(num_partitions: int) -> IidPartitioner:
    """The train split over ``num_partitions`` SuperNodes (equal shards)."""
    partitioner = IidPartitioner(num_partitions=num_partitions)
    partitioner.dataset = _digits()["train"]
    return partitioner


def _tensors(data: Dataset) -> TensorDataset:
    """(image, label) tensors of a Dataset, the batches the training loop expects."""
    arrays = data.with_format("numpy")[:]
    return TensorDataset(
        torch.from_numpy(arrays["image"]), torch.from_numpy(arrays["label"]).long()
    )


@lru_cache(maxsize=4)
def _train(partition_id: int, num_partitions: int) -> TensorDataset:
    return _tensors(_partitioner(num_partitions).load_partition(partition_id))


@lru_cache(maxsize=1)
def _test() -> TensorDataset:
    return _tensors(_digits()["test"])


def train_loader(context) -> DataLoader:
    pid, n = context.node_config["partition-id"], context.node_config["num-partitions"]
    return DataLoader(_train(int(pid), int(n)), batch_size=32, shuffle=True)


def test_loader(context) -> DataLoader:
    return DataLoader(_test(), batch_size=256)
