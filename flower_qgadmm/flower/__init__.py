"""Flower binding: the relay strategy (ServerApp side) and the worker ClientApp."""

from .client import make_client_app
from .strategy import GadmmRelay, WorkerFailure

__all__ = ["GadmmRelay", "WorkerFailure", "make_client_app"]
