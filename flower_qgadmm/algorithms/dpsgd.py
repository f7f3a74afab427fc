"""D-PSGD (Lian et al., NeurIPS 2017, arXiv 1705.09056): decentralized parallel SGD.

n workers on any connected graph with a symmetric doubly stochastic mixing matrix W.
One phase per iteration, every worker in it (:class:`~.gossip.Gossip`). Iteration k,
worker i, in parallel, in the paper's combine-then-adapt form (the default):

1. x_i^{k} = sum_j w_ij x_j^{k-1} - eta * g_i(x_i^{k-1}), with g_i a (mini-batch or
   full-batch) gradient of f_i and x_j^{k-1} the neighbours' models received this round
   (sent at the end of iteration k-1; at k = 1 the shared initial model);
2. send x_i^{k} to every neighbour, uncompressed: the float32 difference against the
   public copy (so the copy tracks x_i to float32 precision of each change, 32 bits per
   entry as an uncompressed float32 model).

``dpsgd-form = "adapt-combine"`` is the other common form (ALGORITHMS_MALCOM.md):
x_i^{k+1/2} = x_i^k - eta g_i(x_i^k), x_i^{k+1} = sum_j w_ij x_j^{k+1/2}. The combine
needs the neighbours' half steps of the same round, which arrive with the next round's
inbox: it runs at the start of the next step (the reported model of round k is the half
step). This is CHOCO-SGD with exact compression and gamma = 1.

The step size eta defaults to half the stability bound of the quadratic case,
eta = (1 + lambda_min(W)) / (2 L_max), re-resolved when a repair changes W; solvers that
report no smoothness constant (networks) get 0.1. The local solver's ``lr`` /
``optimizer`` / ``local-steps`` are not used: one plain gradient step per round.
"""

from __future__ import annotations

from ..compression import Float32Quantizer, Quantizer
from .gossip import Gossip


class Dpsgd(Gossip):
    """One D-PSGD worker."""

    # full-precision float32 messages: none of the compressed algorithms' settings
    unused_keys = Gossip.LOCAL_STEPS | {
        *("consensus-step", "compressor", "levels", "norm", "variance-scaling", "fraction"),
        *("l1", "prox-order"),
    }
    drift_advice = "a step-size too large for this model"  # no consensus-step to lower

    def make_quantizer(self) -> Quantizer:
        return Float32Quantizer()

    def step(self, iteration: int, phase: str) -> bytes | None:
        """Mix and take the gradient step (in the configured order), then send."""
        if self.settings.dpsgd_form == "combine-adapt":
            theta = self.mixed(self.theta) - self.descent(self.theta, iteration)
        else:
            start = self.mixed(self.theta) if self.iteration > 0 else self.theta
            theta = self.gradient_step(start, iteration)
        self.check_divergence(theta, iteration, self.advice)
        self.theta = theta
        payload, change, q = self.copies.encode(theta, None)  # float32: nothing random
        self.copies.commit(change, payload)
        return self.finish_step(iteration, payload, self.nominal_bits(q))

    def finish(self) -> None:
        """adapt-combine: the combine of the last round (call once, after its inbox)."""
        if self.settings.dpsgd_form == "adapt-combine" and self.iteration > 0:
            self.theta = self.mixed(self.theta)
