"""CHOCO-SGD (Koloskova, Stich, Jaggi, ICML 2019, arXiv 1902.00340): gossip with
compressed model differences.

n workers on any connected graph with mixing weights W (:class:`~.gossip.Gossip`).
Worker i keeps its model x_i and public copies x_hat_j (its own and its neighbours',
bit-identical on both ends of an edge, :mod:`flower_qgadmm.compression.memory`).
One round t, all workers in parallel:

1. local step: x_i^{t+1/2} = x_i^t - eta g_i(x_i^t) (mini-batch or full-batch gradient);
2. (optional, CHOCO with the prox of Malcom-PSGD) x_i^{t+1/2} <- soft_threshold(., eta mu);
3. q_i = Q(x_i^{t+1/2} - x_hat_i^t), encoded and sent to every neighbour;
4. x_hat_j^{t+1} = x_hat_j^t + q_j for j = i and every neighbour j;
5. consensus: x_i^{t+1} = x_i^{t+1/2} + gamma sum_j w_ij (x_hat_j^{t+1} - x_hat_i^{t+1}).

Step 5 needs the neighbours' q_j of round t, which arrive with the inbox of round t+1:
it runs at the start of the next step, right after the inbox is applied (the same
trajectory as the textbook loop; tested). A history row of round t therefore reports
the workers' half steps x^{t+1/2}; ``sparsity`` is their fraction of zero entries and
``sparsity_after_consensus`` that of the consensus output x^{t} computed at the start of
round t (in round 1 the initial model x^0, which no consensus step produced: 1.0 for the
zero start of least squares).

Compressor Q (``compressor``): dithered QSGD with s ``levels`` (``norm``, CHOCO's
``variance-scaling``), top-k, random-k (``fraction``), scaled sign, or float32 (exact:
with gamma = 1 this is D-PSGD in its adapt-combine form). Codec: fixed-width packing or
the vector source coder. Defaults ("auto"): dithered, s = 16, fixed-width, no prox.

The consensus step gamma (``consensus-step``, 0: automatic) is :data:`CONSENSUS_STEP`,
lowered to :data:`CONSENSUS_BUDGET` / tau when the compressor shrinks a residual by a
tau > 1 in expectation (CHOCO's variance scaling of the dithered quantizer, tau = 1 +
min(d / s^2, sqrt(d) / s); random-k's unscaled entries, tau = d / k): the public copies
then follow the models by only 1/tau of the residual per round, so the consensus step
mixes copies that lag by about tau rounds, a delayed feedback that holds only while
gamma tau stays small. Measured on the digits MLP (d =
4,810, 10 workers on a chain, 500 rounds): with s = 1 (tau = 70.4) CHOCO's worker
accuracy is 0.92-0.93 for gamma = 0.01-0.05 and 0.64 at 0.1; Malcom's workers drift
apart from round ~300 at 0.1 (0.57) and hold at 0.035-0.05 (0.93); softmax regression (d =
650, tau = 26.5) holds at 0.1 and drifts at 0.2; s = 16 (tau = 5.3) holds at 0.4;
random-k at 1% (tau = 98) drifts at 0.1 (worker accuracy 0.37) and holds at 0.02 (0.92),
while top-k at 1%, whose copies catch the largest entries at once, holds at 0.1 (0.94).
The automatic value, gamma tau = 2, gives Malcom 0.028 on the MLP (worker accuracy 0.953
after 1,500 rounds) and 0.075 on softmax regression (0.921, as at 0.1), random-k 0.02;
CHOCO's s = 16 and top-k keep 0.1.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..compression import Quantizer, make_quantizer
from ..compression.compressors import dithered_omega
from .gossip import Gossip, GossipSettings, compressor_parameters, zero_fraction

if TYPE_CHECKING:
    from scipy.sparse import csr_array

#: the automatic consensus step for a compressor that does not scale its output
CONSENSUS_STEP = 0.1
#: gamma * tau of the automatic consensus step for a compressor that divides by tau
CONSENSUS_BUDGET = 2.0
#: gamma * tau above which a consensus step set by hand gets a warning at set-up: in the
#: runs measured (docs/defaults.md) every gamma tau up to 3.5 held and every one from 5.3
#: on drifted apart (or ended far lower); 3 leaves a margin, as the automatic 2 does
CONSENSUS_RISK = 3.0

log = logging.getLogger(__name__)


def auto_consensus_step(quantizer: Quantizer, dim: int) -> float:
    """The automatic consensus step for ``quantizer`` on models of ``dim`` entries:
    min(:data:`CONSENSUS_STEP`, :data:`CONSENSUS_BUDGET` / tau), with tau the factor by
    which the quantizer shrinks a residual in expectation (:meth:`Quantizer.shrink`: the
    dithered quantizer's variance scaling, random-k's d / k; 1 for the others)."""
    return min(CONSENSUS_STEP, CONSENSUS_BUDGET / quantizer.shrink(dim))


def soft_threshold(v: np.ndarray, a: float) -> np.ndarray:
    """sign(v) * max(|v| - a, 0): the proximal operator of a * ||.||_1."""
    return np.sign(v) * np.maximum(np.abs(v) - a, 0.0)


class Choco(Gossip):
    """One CHOCO-SGD worker."""

    unused_keys = Gossip.LOCAL_STEPS | {"dpsgd-form"}

    default_levels = 16
    default_l1 = 0.0

    def __init__(self, node, wiring, solver, settings, seed) -> None:
        super().__init__(node, wiring, solver, settings, seed)
        self.pending = False  # the consensus step of the last round is still to do
        self.sparsity_after = zero_fraction(self.theta)

    @classmethod
    def resolve(
        cls,
        settings: GossipSettings,
        reports: Sequence[Mapping[str, Any]],
        mixing: csr_array | None,
    ) -> GossipSettings:
        """The automatic values this algorithm means (``codec``, ``compressor``, ``levels``
        and ``l1`` of "auto" or 0: see :attr:`default_codec`, :attr:`default_levels`,
        :attr:`default_l1`; ``consensus-step`` 0: :func:`auto_consensus_step`), so logs
        and summaries show what runs, and the automatic step; warns (once per run)
        about a dithered quantizer whose error E|Q(v)-v|^2 = omega |v|^2 is not below
        |v|^2 without variance scaling."""
        changes: dict[str, Any] = {}
        if settings.codec == "auto":
            changes["codec"] = cls.default_codec
        if settings.compressor == "auto":
            changes["compressor"] = "dithered"
        # the dithered quantizer, or one of yours that takes levels (compressor_parameters)
        takes = compressor_parameters(changes.get("compressor", settings.compressor)) or ()
        if "levels" in takes and not settings.levels:
            changes["levels"] = cls.default_levels
        if not settings.l1 and cls.default_l1:
            changes["l1"] = cls.default_l1
        settings = replace(settings, **changes) if changes else settings
        s, d = settings.levels or cls.default_levels, int(reports[0]["dim"])
        if not settings.consensus_step:
            gamma = auto_consensus_step(cls.compressor_of(settings), d)
            settings = replace(settings, consensus_step=gamma)
        omega = dithered_omega(d, s)
        if {"levels", "variance_scaling"} <= set(takes) and not settings.variance_scaling:
            if omega >= 1:
                log.warning(
                    "dithered s=%d on d=%d without variance-scaling: E|Q(v)-v|^2 = %.3g "
                    "|v|^2 >= |v|^2, so the public copies cannot track the models and the "
                    "run will likely diverge; set variance-scaling = true or more levels",
                    s,
                    d,
                    omega,
                )
        return super().resolve(settings, reports, mixing)

    @classmethod
    def setup_warnings(
        cls,
        settings: GossipSettings,
        options: Mapping[str, Any],
        reports: Sequence[Mapping[str, Any]],
    ) -> list[str]:
        """A consensus step set by hand whose gamma tau exceeds :data:`CONSENSUS_RISK`
        (tau: the compressor's :meth:`~flower_qgadmm.compression.Quantizer.shrink`)."""
        dim = int(reports[0].get("dim", 0)) if reports else 0
        compressor, gamma = cls.compressor_of(settings), settings.consensus_step
        tau = compressor.shrink(dim) if dim else 1.0
        if not gamma * tau > CONSENSUS_RISK:
            return []
        auto = auto_consensus_step(compressor, dim)
        return [
            f"consensus-step {gamma:g} with a compressor that shrinks residuals by tau = "
            f"{tau:.3g} on d = {dim}: gamma tau = {gamma * tau:.3g} > {CONSENSUS_RISK:g}, "
            "where the workers can drift apart (measured: docs/defaults.md); the "
            f"automatic value (consensus-step = 0) is {auto:.3g}"
        ]

    @classmethod
    def divergence_causes(
        cls, settings: GossipSettings, requested: GossipSettings
    ) -> tuple[str, ...]:
        """A dithered quantizer without CHOCO's variance scaling (with s <= sqrt(d) its
        error exceeds the residual: the set-up warned when so) and a consensus step set by
        hand (gamma tau above about 3 drifts apart)."""
        tips = []
        takes = compressor_parameters(settings.compressor) or ()
        if {"levels", "variance_scaling"} <= set(takes) and not settings.variance_scaling:
            tips.append(
                f"variance-scaling = false with s = {settings.levels or cls.default_levels}: "
                "the dithered quantizer's error min(d / s^2, sqrt(d) / s) |v|^2 exceeds the "
                "residual |v|^2 unless s > sqrt(d), and the public copies cannot track the "
                "models; set variance-scaling = true or more levels"
            )
        if requested.consensus_step:
            tips.append(
                f"consensus-step={settings.consensus_step:g} was set by hand: lower it, or "
                "use the automatic value (0: gamma tau = 2)"
            )
        return tuple(tips)

    # ------------------------------------------------------------------ resolved options
    @property
    def levels(self) -> int:
        """s of the dithered quantizer."""
        return self.settings.levels or self.default_levels

    @property
    def mu(self) -> float:
        """l1 weight of the prox step (0: none)."""
        return self.settings.l1 or self.default_l1

    @property
    def consensus_step(self) -> float:
        """gamma of the consensus step (resolved; automatic for settings that were not)."""
        step = self.settings.consensus_step
        return step or auto_consensus_step(self.copies.quantizer, self.theta.size)

    @classmethod
    def compressor_of(cls, settings: GossipSettings) -> Quantizer:
        """The ``compressor`` (dithered for "auto"), given the settings its constructor
        takes (:func:`~.gossip.compressor_parameters`: ``levels`` (0: :attr:`default_levels`),
        ``norm``, ``variance_scaling``, ``fraction``)."""
        name = "dithered" if settings.compressor == "auto" else settings.compressor
        values = {
            "levels": settings.levels or cls.default_levels,
            "norm": settings.norm,
            "variance_scaling": settings.variance_scaling,
            "fraction": settings.fraction,
        }
        return make_quantizer(name, **{k: values[k] for k in compressor_parameters(name) or ()})

    def make_quantizer(self) -> Quantizer:
        return self.compressor_of(self.settings)

    def advice(self) -> str:
        s = self.settings
        return (
            f"lower step-size (now {s.step_size:g}) or consensus-step (now "
            f"{self.consensus_step:g}), or use variance-scaling / more levels"
        )

    # ------------------------------------------------------------------ the round
    def _consensus(self) -> None:
        """Step 5 of the previous round (and the prox when it comes after)."""
        gamma = self.consensus_step
        hat, w = self.copies.hat, self.wiring
        own = hat[self.node]
        delta = np.zeros(self.theta.shape, self.theta.dtype)  # zeros_like, in C
        for m, weight in zip(w.neighbours, w.weights, strict=True):
            delta = delta + weight * (hat[m] - own)
        theta = self.theta + gamma * delta
        if self.mu > 0 and self.settings.prox_order == "after":
            theta = soft_threshold(theta, self.settings.step_size * self.mu)
        self.theta = theta
        self.sparsity_after = zero_fraction(theta)
        self.pending = False

    def step(self, iteration: int, phase: str) -> bytes | None:
        """Consensus of the last round, then steps 1-4 of this one."""
        if self.pending:
            self._consensus()
        half = self.gradient_step(self.theta, iteration)
        if self.mu > 0 and self.settings.prox_order == "before":
            half = soft_threshold(half, self.settings.step_size * self.mu)
        self.check_divergence(half, iteration, self.advice)
        self.theta = half
        rng = self.rng(iteration)
        payload, change, q = self.copies.encode(half, rng)
        self.copies.commit(change, payload)
        self.pending = True
        return self.finish_step(iteration, payload, self.nominal_bits(q))

    def finish(self) -> None:
        """Apply the pending consensus step (after the last round's payloads arrived)."""
        if self.pending:
            self._consensus()

    # ------------------------------------------------------------------ reporting
    def metrics(self, evaluate: bool = True) -> dict[str, float]:
        return {**super().metrics(evaluate), "sparsity_after_consensus": self.sparsity_after}

    # ------------------------------------------------------------------ persistence
    def extra_scalars(self) -> dict[str, Any]:
        return {"pending": self.pending, "sparsity-after": self.sparsity_after}

    def load_extra(self, arrays: Mapping[str, np.ndarray], scalars: Mapping[str, Any]) -> None:
        self.pending = bool(scalars["pending"])
        self.sparsity_after = float(scalars["sparsity-after"])
