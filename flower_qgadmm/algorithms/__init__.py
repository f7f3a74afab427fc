"""Per-worker update rules, framework-free (numpy; torch only inside local solvers).

The registry: one line per algorithm. Adding an algorithm = one module here + one line
(``_register``: the package's own keys are checked by the config module, which cannot be
imported while they register; a user's module calls :func:`register`, which checks that
every key has one owner).
"""

from .base import (
    REGISTRY,
    AlgorithmSpec,
    Phase,
    Reports,
    Wiring,
    Worker,
    _register,
    get_algorithm,
    register,
)
from .choco import Choco
from .dpsgd import Dpsgd
from .gadmm import Gadmm, GadmmSettings
from .gossip import Gossip, GossipSettings
from .malcom import Malcom

_register("gadmm", Gadmm, quantized=False, solver="exact", description="GADMM, float32 messages")
_register("q-gadmm", Gadmm, quantized=True, solver="exact", description="Q-GADMM, quantized")
_register("sgadmm", Gadmm, quantized=False, solver="stochastic", description="stochastic GADMM")
_register("q-sgadmm", Gadmm, quantized=True, solver="stochastic", description="quantized SGADMM")
_register("d-psgd", Dpsgd, description="D-PSGD (Lian et al. 2017), uncompressed gossip")
_register("choco-sgd", Choco, description="CHOCO-SGD (Koloskova et al. 2019)")
_register("malcom-psgd", Malcom, description="Malcom-PSGD (Campbell et al. 2023)")

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
    "Reports",
    "Wiring",
    "Worker",
    "get_algorithm",
    "register",
]
