"""Per-worker update rules, framework-free (numpy; torch only inside local solvers).

The registry: one line per algorithm. Adding an algorithm = one module here + one line.
"""

from .base import REGISTRY, AlgorithmSpec, Phase, Wiring, Worker, get_algorithm, register
from .choco import Choco
from .dpsgd import Dpsgd
from .gadmm import Gadmm, GadmmSettings
from .gossip import Gossip, GossipSettings
from .malcom import Malcom

register("gadmm", Gadmm, quantized=False, solver="exact", description="GADMM, float32 messages")
register("q-gadmm", Gadmm, quantized=True, solver="exact", description="Q-GADMM, quantized")
register("sgadmm", Gadmm, quantized=False, solver="stochastic", description="stochastic GADMM")
register("q-sgadmm", Gadmm, quantized=True, solver="stochastic", description="quantized SGADMM")
register("d-psgd", Dpsgd, description="D-PSGD (Lian et al. 2017), uncompressed gossip")
register("choco-sgd", Choco, description="CHOCO-SGD (Koloskova et al. 2019)")
register("malcom-psgd", Malcom, description="Malcom-PSGD (Campbell et al. 2023)")

__all__ = [
    "REGISTRY",
    "AlgorithmSpec",
    "Choco",
    "Dpsgd",
    "Gadmm",
    "GadmmSettings",
    "Gossip",
    "GossipSettings",
    "Malcom",
    "Phase",
    "Wiring",
    "Worker",
    "get_algorithm",
    "register",
]
