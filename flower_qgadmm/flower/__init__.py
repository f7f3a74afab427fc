"""Flower binding: the relay strategy (ServerApp side), the worker ClientApps, the FedAvg
baseline and a test Grid. The only package of flower_qgadmm that imports flwr.

``torch_client_app`` is loaded on first use, so importing this package does not import
torch (deployment starts a fresh ClientApp process per message).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_module

# Imported on first use (PEP 562): a ClientApp process imports the client side only, not
# the relay and its round engine; torch_client_app not torch until used.
_EXPORTS = {
    "NamedClientApp": ".client",
    "least_squares": ".client",
    "make_client_app": ".client",
    "partition_of": ".client",
    "add_fedavg_handlers": ".fedavg",
    "run_flower_fedavg": ".fedavg",
    "RelayStrategy": ".strategy",
    "WorkerFailure": ".strategy",
    "torch_client_app": ".torch_app",
    "torch_solver_fn": ".torch_app",
}

__all__ = [
    "NamedClientApp",
    "RelayStrategy",
    "WorkerFailure",
    "add_fedavg_handlers",
    "least_squares",
    "make_client_app",
    "partition_of",
    "run_flower_fedavg",
    "torch_client_app",
    "torch_solver_fn",
]

if TYPE_CHECKING:
    from .client import NamedClientApp, least_squares, make_client_app, partition_of
    from .fedavg import add_fedavg_handlers, run_flower_fedavg
    from .strategy import RelayStrategy, WorkerFailure
    from .torch_app import torch_client_app


__getattr__, __dir__ = lazy_module(__name__, _EXPORTS)
