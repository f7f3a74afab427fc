"""Flower binding: the relay strategy (ServerApp side), the worker ClientApps, the FedAvg
baseline and a test Grid. The only package of flower_qgadmm that imports flwr.

``torch_client_app`` is loaded on first use, so importing this package does not import
torch (deployment starts a fresh ClientApp process per message).
"""

from typing import Any

from .client import least_squares, make_client_app, partition_of
from .fedavg import add_fedavg_handlers, run_flower_fedavg
from .strategy import RelayStrategy, WorkerFailure

__all__ = [
    "RelayStrategy",
    "WorkerFailure",
    "add_fedavg_handlers",
    "least_squares",
    "make_client_app",
    "partition_of",
    "run_flower_fedavg",
    "torch_client_app",
]


def __getattr__(name: str) -> Any:
    if name == "torch_client_app":
        from .torch_app import torch_client_app

        return torch_client_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
