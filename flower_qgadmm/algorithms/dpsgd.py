"""D-PSGD (Lian et al., NeurIPS 2017, arXiv 1705.09056): decentralized parallel SGD.

n workers on any connected graph with a symmetric doubly stochastic mixing matrix W
(the graph's Metropolis-Hastings weights by default). One phase per iteration, every
worker in it. Iteration k, worker i, in parallel:

1. x_i^{k} = sum_j w_ij x_j^{k-1} - eta * g_i(x_i^{k-1}), with g_i a (mini-batch or
   full-batch) gradient of f_i and x_j^{k-1} the neighbours' models received this round
   (sent at the end of iteration k-1; at k = 1 the shared initial model);
2. send x_i^{k} to every neighbour, uncompressed: the float32 difference against the
   public copy (so the copy tracks x_i to float32 precision of each change, 32 bits
   per entry as an uncompressed float32 model).

The step size eta defaults to half the stability bound of the quadratic case,
eta = (1 + lambda_min(W)) / (2 L_max), with L_max the largest local smoothness constant
the workers report (exact for least squares), re-resolved when a repair changes W;
solvers that report none (networks) get :data:`DEFAULT_SGD_STEP` (the local solver's
``lr`` / ``optimizer`` / ``local-steps`` are not used: one plain gradient step per round).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..compression import Float32Quantizer, Quantizer
from ..settings import at_least, setting
from ..topology import Graph
from .base import Phase, Wiring, Worker

DEFAULT_SGD_STEP = 0.1  # plain-SGD step for solvers without a smoothness constant


@dataclass(frozen=True)
class DpsgdSettings:
    """Settings of D-PSGD (identical on every worker)."""

    step_size: float = setting(
        0.0, "D-PSGD gradient step eta (0: automatic, half the quadratic stability bound)"
    )

    def __post_init__(self) -> None:
        at_least("step-size", self.step_size, 0.0)


class Dpsgd(Worker):
    """One D-PSGD worker."""

    Settings = DpsgdSettings
    needs_mixing = True

    @classmethod
    def schedule(cls, graph: Graph) -> list[Phase]:
        """Everybody in one phase."""
        return [Phase("all", graph.active)]

    @classmethod
    def wiring_of(cls, graph: Graph, node: int, mixing: np.ndarray | None) -> Wiring:
        if mixing is None:
            raise ValueError("D-PSGD needs a mixing matrix")
        nbrs = graph.neighbours(node)
        return Wiring(
            nbrs, 0, tuple(float(mixing[node, m]) for m in nbrs), float(mixing[node, node])
        )

    @classmethod
    def resolve(
        cls,
        settings: DpsgdSettings,
        reports: Sequence[Mapping[str, Any]],
        mixing: np.ndarray | None,
    ) -> DpsgdSettings:
        if settings.step_size > 0:
            return settings
        smooth = [r.get("smoothness") for r in reports]
        if not smooth or any(s is None for s in smooth) or max(smooth) <= 0:
            return replace(settings, step_size=DEFAULT_SGD_STEP)
        lam_min = float(np.linalg.eigvalsh(mixing)[0]) if mixing is not None else 1.0
        return replace(settings, step_size=(1.0 + lam_min) / (2.0 * max(smooth)))

    def make_quantizer(self) -> Quantizer:
        return Float32Quantizer()

    def step(self, iteration: int, phase: str) -> bytes | None:
        """Step 1 (mix the neighbours' models, gradient step at the own one), then 2."""
        eta = self.settings.step_size
        if not eta > 0:
            raise ValueError("D-PSGD step-size was not resolved (must be > 0)")
        w = self.wiring
        mixed = w.self_weight * self.theta
        for m, weight in zip(w.neighbours, w.weights, strict=True):
            mixed = mixed + weight * self.copies[m]
        grad = self.solver.gradient(self.theta, (self.seed, self.node, int(iteration)))
        theta = mixed - eta * grad
        self.check_divergence(theta, iteration, f"lower step-size (now {eta:g})")
        self.theta = theta
        payload, change, q = self.copies.encode(theta, None)  # float32: nothing random
        self.copies.commit(change)
        return self.finish_step(iteration, payload, self.copies.quantizer.nominal_bits(q))
