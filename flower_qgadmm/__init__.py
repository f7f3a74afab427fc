"""flower-qgadmm: communication-efficient decentralized learning (Q-GADMM, ...) for Flower."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_module

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


__getattr__, __dir__ = lazy_module(__name__, _EXPORTS)
