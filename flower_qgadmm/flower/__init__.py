"""Flower binding: the relay strategy (ServerApp side) and the worker ClientApps.

``torch_client_app`` is loaded on first use, so importing this package does not import
torch (deployment starts a fresh ClientApp process per message).
"""

from typing import Any

from .client import least_squares, make_client_app
from .fedavg_client import fedavg_train_config
from .strategy import GadmmRelay, WorkerFailure

__all__ = [
    "GadmmRelay",
    "WorkerFailure",
    "fedavg_train_config",
    "least_squares",
    "make_client_app",
    "torch_client_app",
]


def __getattr__(name: str) -> Any:
    if name == "torch_client_app":
        from .torch_app import torch_client_app

        return torch_client_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
