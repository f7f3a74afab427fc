"""The gossip family's shared parts: one phase per round with every worker, mixing weights
from the graph, the settings every gossip algorithm reads, and the automatic step size.

D-PSGD (:mod:`.dpsgd`), CHOCO-SGD (:mod:`.choco`) and Malcom-PSGD (:mod:`.malcom`)
differ only in how they mix, compress and apply the proximal step. All run on any
connected graph with a symmetric doubly stochastic mixing matrix W (Metropolis-Hastings
by default, :meth:`Graph.mixing_weights`, sparse); a worker knows its row of W (its
:class:`~.base.Wiring`), never builds weights itself.

Settings whose natural default differs between algorithms are "auto" in the run config
and resolved by the algorithm (``compressor``, ``levels``, ``l1``, and the shared
``codec`` of :class:`~.base.CodecSettings`, and CHOCO / Malcom's ``consensus-step``): one key,
one owner, and ``[tool.flwr.app.config]`` serves every algorithm.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..compression import QUANTIZERS
from ..compression.compressors import MAX_SIGNED_LEVEL
from ..numeric import EXACT_SPECTRUM_DIM, lanczos_eigenvalue
from ..settings import at_least, one_of, positive, setting
from ..solvers import STOCHASTIC_ONLY
from ..topology import Graph
from .base import CodecSettings, Phase, Wiring, Worker

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from scipy.sparse import csr_array

DEFAULT_SGD_STEP = 0.1  # plain-SGD step for solvers without a smoothness constant
#: The settings a compressor's constructor may take, by parameter name: every quantizer
#: registered (``register_quantizer``) whose constructor needs nothing else is a choice
#: of ``compressor``, built with those of its parameters (:func:`compressor_parameters`).
COMPRESSOR_SETTINGS = ("levels", "norm", "variance_scaling", "fraction")


#: Largest number of workers whose lambda_min(W) is taken from the whole spectrum when
#: Lanczos gives no valid value (LAPACK, O(n^3): about 8 s at 3,000 here, 128 MB at 4,096);
#: above, the Gershgorin bound min(2 w_ii - 1).
DENSE_FALLBACK_MAX = 4096


def lambda_min(mixing: csr_array | np.ndarray) -> float:
    """The smallest eigenvalue of the symmetric mixing matrix W (sparse or dense).

    Up to :data:`~flower_qgadmm.numeric.EXACT_SPECTRUM_DIM` workers from the whole
    spectrum; above, by :func:`~flower_qgadmm.numeric.lanczos_eigenvalue` on W's sparse
    form (one entry per edge and the diagonal) to tolerance 1e-4, since the bottom of a long chain's
    spectrum is clustered: 0.16 s against 8 s on a chain of 3,000 workers, within 1e-5
    (relative; measured 9e-6), which the automatic step (half a stability bound) does
    not need. A Lanczos value above min w_ii (impossible for lambda_min) or no
    convergence gives, with a warning, the whole spectrum's value up to
    :data:`DENSE_FALLBACK_MAX` workers, above it the lower bound max(-1, min(2 w_ii - 1))
    (Gershgorin: -1, no automatic step, once a self-weight w_ii is 0)."""
    from scipy.sparse import csr_array as sparse
    from scipy.sparse import issparse
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence

    n = mixing.shape[0]
    if n <= EXACT_SPECTRUM_DIM:
        return float(np.linalg.eigvalsh(mixing.toarray() if issparse(mixing) else mixing)[0])
    W = sparse(mixing)
    diagonal = W.diagonal()
    try:
        value = lanczos_eigenvalue(W, "SA", 1e-4)
    except (ArpackError, ArpackNoConvergence):
        value = np.inf
    # lambda_min <= w_ii (the Rayleigh quotient of e_i): ARPACK breaks down on spectra of
    # a few distinct values of large multiplicity (a block of the identity next to an
    # averaging block: it returned 1 for 0), and then its answer is above that bound
    if value <= float(diagonal.min()) + 1e-4:  # up to Lanczos's tolerance
        return value
    if n <= DENSE_FALLBACK_MAX:
        log.warning(
            "lambda_min of the %d x %d mixing matrix: Lanczos gave no valid value; taking "
            "the whole spectrum instead (seconds)",
            n,
            n,
        )
        return float(np.linalg.eigvalsh(W.toarray())[0])
    # Gershgorin, rows of nonnegative weights summing to 1: lambda_min >= 2 w_ii - 1 for
    # some i, a lower bound (a smaller automatic step, never an unstable one)
    bound = max(-1.0, float(np.min(2.0 * diagonal - 1.0)))
    log.warning(
        "lambda_min of the %d x %d mixing matrix: Lanczos gave no valid value; using the "
        "lower bound min(2 w_ii - 1) = %.6g (the automatic step may be smaller than needed)",
        n,
        n,
        bound,
    )
    return bound


def compressor_parameters(name: str) -> tuple[str, ...] | None:
    """The :data:`COMPRESSOR_SETTINGS` that the constructor of the quantizer registered as
    ``name`` takes; None if it requires another argument (e.g. Q-GADMM's ``stochastic``
    needs ``bits``): the gossip settings cannot build it."""
    taken = []
    for p in inspect.signature(QUANTIZERS[name]).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in COMPRESSOR_SETTINGS:
            taken.append(p.name)
        elif p.default is p.empty:
            return None
    return tuple(taken)


def compressors() -> tuple[str, ...]:
    """The choices of ``compressor``: "auto" and every registered quantizer the gossip
    settings can build (built in: float32, dithered, top-k, random-k, sign; and yours)."""
    return ("auto", *(n for n in QUANTIZERS if compressor_parameters(n) is not None))


@dataclass(frozen=True)
class GossipSettings(CodecSettings):
    """Settings of the gossip family (D-PSGD, CHOCO-SGD, Malcom-PSGD)."""

    step_size: float = setting(
        0.0, "gossip: gradient step eta (0: automatic, half the quadratic stability bound)"
    )
    dpsgd_form: str = setting(
        "combine-adapt",
        "D-PSGD: 'combine-adapt' (Lian et al.: sum_j w_ij x_j - eta g(x_i)) or "
        "'adapt-combine' (sum_j w_ij (x_j - eta g(x_j)))",
    )
    consensus_step: float = setting(
        0.0,
        "CHOCO / Malcom: consensus step gamma, in (0, 1] (0: automatic, min(0.1, 2 / tau) "
        "with tau the compressor's shrink, E[Q(v)] = v / tau)",
    )
    compressor: str = setting(
        "auto",
        "CHOCO / Malcom: dithered, top-k, random-k, sign, float32 or one you registered "
        "(register_quantizer; auto: dithered)",
    )
    levels: int = setting(0, "dithered quantizer levels s >= 1 (0: auto, CHOCO 16, Malcom 1)")
    norm: str = setting("l2", "dithered quantizer norm: 'l2' or 'linf'")
    variance_scaling: bool = setting(
        True, "dithered: divide by tau = 1 + min(d/s^2, sqrt(d)/s) (CHOCO's; keeps copies stable)"
    )
    fraction: float = setting(0.01, "top-k / random-k: fraction of entries kept, in (0, 1]")
    l1: float = setting(0.0, "l1 weight mu of the prox step (0: auto, Malcom 2e-4, CHOCO none)")
    prox_order: str = setting("before", "Malcom: prox 'before' or 'after' the consensus step")

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("step-size", self.step_size, 0.0)
        one_of("dpsgd-form", self.dpsgd_form, ("combine-adapt", "adapt-combine"))
        at_least("consensus-step", self.consensus_step, 0.0)
        if self.consensus_step > 1:
            raise ValueError(
                f"consensus-step must be in (0, 1] (0: automatic), got {self.consensus_step}"
            )
        one_of("compressor", self.compressor, compressors())
        at_least("levels", self.levels, 0)
        if self.levels > MAX_SIGNED_LEVEL:  # its levels are int32 codes
            raise ValueError(f"levels must be at most {MAX_SIGNED_LEVEL}, got {self.levels}")
        one_of("norm", self.norm, ("l2", "linf"))
        positive("fraction", self.fraction)
        if self.fraction > 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        at_least("l1", self.l1, 0.0)
        one_of("prox-order", self.prox_order, ("before", "after"))


def zero_fraction(v: np.ndarray) -> float:
    """Fraction of exactly-zero entries."""
    return float(np.count_nonzero(v == 0)) / max(v.size, 1)


class Gossip(Worker):
    """Base of the one-phase gossip algorithms: schedule, wiring, automatic step."""

    Settings = GossipSettings
    needs_mixing = True
    #: what the built-in gossip algorithms do not read (their ``unused_keys``): a round's
    #: local work is one gradient of step-size, no optimizer, no local steps (a gossip
    #: algorithm of your own that takes optimizer steps inherits nothing of it)
    LOCAL_STEPS = STOCHASTIC_ONLY - {"loss-reduction"}  # the gradient reads loss-reduction
    stall_causes = (
        "the bias of a constant step size, a step size far from its best or a slowly mixing graph"
    )
    drift_advice = (
        "a consensus-step too large for the compressor (CHOCO, Malcom: keep gamma tau near "
        "2 or below, as the automatic value 0 does; Malcom's s = 1 on the digits MLP drifts "
        "at 0.1, gamma tau = 7) or a step-size too large"
    )

    @classmethod
    def schedule(cls, graph: Graph) -> list[Phase]:
        """Everybody in one phase."""
        return [Phase("gossip", graph.active)]

    @classmethod
    def wiring_of(cls, graph: Graph, node: int, mixing: csr_array | None) -> Wiring:
        """The neighbours and worker ``node``'s row of W (``mixing``, sparse)."""
        if mixing is None:
            raise ValueError(f"{cls.__name__} needs a mixing matrix")
        start, stop = mixing.indptr[node], mixing.indptr[node + 1]  # the row's entries
        columns, weights = mixing.indices[start:stop].tolist(), mixing.data[start:stop].tolist()
        row = dict(zip(columns, weights, strict=True))
        nbrs = graph.neighbours(node)
        return Wiring(nbrs, 0, tuple(row.get(m, 0.0) for m in nbrs), row.get(node, 0.0))

    @classmethod
    def resolve(
        cls,
        settings: GossipSettings,
        reports: Sequence[Mapping[str, Any]],
        mixing: csr_array | None,
    ) -> GossipSettings:
        """The automatic step: half the stability bound of the quadratic case,
        (1 + lambda_min(W)) / (2 L_max), with L_max the largest smoothness constant the
        workers report; :data:`DEFAULT_SGD_STEP` when a solver reports none."""
        if settings.step_size > 0:
            return settings
        smooth = [r.get("smoothness") for r in reports]
        if not smooth or any(s is None for s in smooth) or max(smooth) <= 0:
            return replace(settings, step_size=DEFAULT_SGD_STEP)
        lam_min = lambda_min(mixing) if mixing is not None else 1.0
        if lam_min <= -1.0 + 1e-9:  # a step of 0 (or 1e-16) would stop every run here
            raise ValueError(
                f"no automatic step-size: lambda_min(W) = {lam_min:.9g} makes (1 + "
                "lambda_min) / (2 L_max) zero. The mixing matrix has eigenvalue -1 (its "
                "positive weights form a bipartite graph without self-weights, e.g. '0 1; 1 0',"
                " whose halves swap models every round: gossip with it never converges), or, "
                f"above {DENSE_FALLBACK_MAX} workers where Lanczos gave no valid value, its "
                "lower bound min(2 w_ii - 1) is -1; give the workers self-weights w_ii > 0"
            )
        return replace(settings, step_size=(1.0 + lam_min) / (2.0 * max(smooth)))

    def mixed(self, own: np.ndarray) -> np.ndarray:
        """w_ii own + sum_j w_ij theta_hat_j (the neighbours' public copies)."""
        w, hat = self.wiring, self.copies.hat
        out = w.self_weight * own
        for m, weight in zip(w.neighbours, w.weights, strict=True):
            out = out + weight * hat[m]
        return out

    def descent(self, theta: np.ndarray, iteration: int) -> np.ndarray:
        """eta g_i(theta), g_i seeded by (seed, worker, iteration)."""
        eta = self.settings.step_size
        if not eta > 0:
            raise ValueError("step-size was not resolved (must be > 0)")
        gradient = self.solver.gradient(theta, (self.seed, self.node, int(iteration)))
        return eta * self.from_solver(gradient, "gradient", iteration)

    def gradient_step(self, theta: np.ndarray, iteration: int) -> np.ndarray:
        """theta - eta g_i(theta)."""
        return theta - self.descent(theta, iteration)

    def advice(self) -> str:
        """What to change when the model blows up."""
        return f"lower step-size (now {self.settings.step_size:g})"

    @classmethod
    def divergence_advice(
        cls,
        settings: GossipSettings,
        requested: GossipSettings,
        options: Mapping[str, Any],
        facts: Mapping[str, Any],
    ) -> str:
        """What to change when the relay's watchdog stops a diverging run: the step size
        (automatic or set by hand) and :meth:`divergence_causes`. Without it the relay
        advised "lower step-size (or rho) if set by hand, or use the automatic value",
        naming ADMM's rho and, for an automatic step, nothing to do."""
        step = settings.step_size
        tips = list(cls.divergence_causes(settings, requested))
        if requested.step_size:
            tips.append(
                f"lower step-size (now {step:g}, set by hand), or use the automatic value "
                "(0: half the quadratic stability bound)"
            )
        else:
            tips.append(f"lower step-size (now {step:g}, the automatic value) by hand")
        return "likely causes: " + "; ".join(tips)

    @classmethod
    def divergence_causes(
        cls, settings: GossipSettings, requested: GossipSettings
    ) -> tuple[str, ...]:
        """Causes of a divergence besides the step size (none for D-PSGD)."""
        return ()

    def metrics(self, evaluate: bool = True) -> dict[str, float]:
        """The objective and solver metrics, plus ``sparsity``: the fraction of exactly
        zero entries of the reported model."""
        return {**super().metrics(evaluate), "sparsity": zero_fraction(self.theta)}
