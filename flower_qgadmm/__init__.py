"""flower-qgadmm: communication-efficient decentralized learning (Q-GADMM, ...) for Flower."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Imported on first use (PEP 562): a ClientApp process (one per message in a deployment)
# does not import the reference runner and the round engine it never uses.
_EXPORTS = {
    "REGISTRY": ".algorithms",
    "GadmmSettings": ".algorithms",
    "GossipSettings": ".algorithms",
    "get_algorithm": ".algorithms",
    "register": ".algorithms",
    "RunConfig": ".config",
    "SolverSettings": ".config",
    "run_reference": ".reference",
    "Graph": ".topology",
    "chain": ".topology",
}

__all__ = [
    "REGISTRY",
    "GossipSettings",
    "GadmmSettings",
    "Graph",
    "RunConfig",
    "SolverSettings",
    "__version__",
    "chain",
    "get_algorithm",
    "register",
    "run_reference",
]

if TYPE_CHECKING:
    from .algorithms import REGISTRY, GadmmSettings, GossipSettings, get_algorithm, register
    from .config import RunConfig, SolverSettings
    from .reference import run_reference
    from .topology import Graph, chain


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:  # a submodule, as ``flower_qgadmm.<name>`` after an eager import would be
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
