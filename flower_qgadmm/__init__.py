"""flower-qgadmm: communication-efficient decentralized learning (Q-GADMM, ...) for Flower."""

from .config import ExperimentConfig, GadmmConfig
from .reference import run_reference
from .topology import Graph, chain

__version__ = "0.1.0"

__all__ = ["ExperimentConfig", "GadmmConfig", "Graph", "__version__", "chain", "run_reference"]
