"""Flower binding: the relay strategy (ServerApp side) and the worker ClientApps."""

from .client import least_squares, make_client_app
from .strategy import GadmmRelay, WorkerFailure
from .torch_app import fedavg_train_config, torch_client_app

__all__ = [
    "GadmmRelay",
    "WorkerFailure",
    "fedavg_train_config",
    "least_squares",
    "make_client_app",
    "torch_client_app",
]
