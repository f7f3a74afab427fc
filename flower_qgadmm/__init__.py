"""flower-qgadmm: communication-efficient decentralized learning (Q-GADMM, ...) for Flower."""

from .algorithms import REGISTRY, GadmmSettings, GossipSettings, get_algorithm, register
from .config import RunConfig, SolverSettings
from .reference import run_reference
from .topology import Graph, chain

__version__ = "0.1.0"

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
