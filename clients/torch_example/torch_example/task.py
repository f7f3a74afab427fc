"""The user's side: a model and this node's data loaders (nothing GADMM-specific)."""

import numpy as np
import torch
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


def _split(partition_id: int, num_partitions: int):
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = np.random.default_rng(0).permutation(len(y))
    test, train = order[:360], order[360:]
    shard = np.array_split(train, num_partitions)[partition_id]
    return TensorDataset(x[shard], y[shard]), TensorDataset(x[test], y[test])


def train_loader(context) -> DataLoader:
    pid, n = context.node_config["partition-id"], context.node_config["num-partitions"]
    return DataLoader(_split(pid, n)[0], batch_size=32, shuffle=True)


def test_loader(context) -> DataLoader:
    pid, n = context.node_config["partition-id"], context.node_config["num-partitions"]
    return DataLoader(_split(pid, n)[1], batch_size=256)
