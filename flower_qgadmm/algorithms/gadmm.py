"""GADMM (arXiv 1909.00047) and Q-GADMM (arXiv 1910.10453): one worker's update rules.

Worker n on a bipartite graph (a chain for GADMM) keeps its model theta_n, the public
copy theta_hat_n that its neighbours also hold, their copies theta_hat_m, and one dual
lambda_e per incident edge e = (a, b), a < b, for the constraint theta_a = theta_b.
Let alpha_n = sum_e s_ne lambda_e with s_ne = +1 if n = a, -1 if n = b. The schedule
is the graph's two-colouring: the head group, then the tail group. Iteration k:

1. Heads solve, in parallel,
   theta_n = argmin f_n(theta) + <alpha_n, theta> + (rho/2) sum_m ||theta - theta_hat_m||^2.
2. Each head sends the payload of Q(theta_n - theta_hat_n); sender and receivers set
   theta_hat_n += dequantize(decode(payload)) from the same bytes.
3. Tails do 1-2 with the heads' new copies.
4. Every worker updates its edge duals, lambda_ab += rho (theta_hat_a - theta_hat_b),
   from copies both ends hold, so both ends agree bit for bit. A tail does it right
   after its own send; a head when it has the tails' new copies, i.e. at the start of
   its next step.

GADMM is the same code with the lossless float32 path: the "difference" is sent in
float32, so theta_hat_n tracks theta_n to float32 precision of the last change.
SGADMM / Q-SGADMM are the same rules with a stochastic local solver.

Automatic settings (:meth:`Gadmm.resolve`, from the workers' set-up reports):

- ``rho = 0`` (the default) picks the penalty from the problem and the graph. ADMM on a
  quadratic converges fastest near rho = sqrt(mu L) (Ghadimi, Teixeira, Shames, Johansson,
  "Optimal parameter selection for the alternating direction method of multipliers
  (ADMM): quadratic problems", IEEE TAC 60(3), 2015); on a graph, the consensus
  constraint adds the Laplacian's spectrum, and the best penalty scales like
  1 / sqrt(sigma_2 sigma_max) of the graph Laplacian (Shi, Ling, Yuan, Wu, Yin, "On the
  linear convergence of the ADMM in decentralized consensus optimization", IEEE TSP
  62(7), 2014; Teixeira et al., "ADMM for distributed quadratic problems: optimal
  parameter selection", IEEE TSP 64(22), 2016): on a chain of N workers that factor is
  about 2 pi / N, which is why a long chain needs a large rho. We use

      rho = 2 * geomean(spectrum of H / N) / sqrt(sigma_2 * sigma_max),

  H = sum_n (X_n^T X_n + l2 I) in the solvers' (scaled) coordinates, N workers. The
  geometric mean of the whole spectrum replaces sqrt(lambda_min lambda_max): equal for a
  well-conditioned problem, and on ill-conditioned ones (uncentred features, where one
  large eigenvalue carries the column means) it tracks the penalty that minimises the
  iterations to a relative objective gap much better (measured on 11 problems, see
  docs/defaults.md). The factor 2 is measured too. Solvers without sufficient statistics
  (the stochastic variants) get rho = 1. Residual balancing (Boyd et al. 2011, 3.4.1) is
  not implemented: a fixed rho keeps both ends of every edge trivially consistent.
- ``dual-step = 0``: 1 (the papers) for exact least-squares solves, 0.01 for stochastic
  solvers (the authors' notebook; a full step lets the duals grow and accuracy decay).
- ``adaptive-bits``: the width of each message is the smallest b with
  Delta_k <= omega * 2 R_{k-1} / (2^bits - 1): the step may not exceed omega times the
  step the *configured* width gave the previous range. The rule of the CQ-GGADMM slides
  compares with the previous step Delta_{k-1} itself, which ratchets: once the width
  rose it must stay (measured: the mean width reaches the cap of 8 within 100
  iterations on every problem tried, omega 0.9 or 1). With this reference the width
  rises only while the range grows (then the step stays bounded by the previous range,
  which is what keeps 2-bit messages stable at a large rho) and returns to the
  configured width (or below) as the range shrinks: measured mean widths 2.4-3.9.
- A fixed width of 1 bit, or 2 bits with d >= 16 and rho >= geomean(spectrum of H / N) /
  2, gets a warning at set-up (:meth:`Gadmm.setup_warnings`): measured, 2-bit Q-GADMM
  diverged on every such problem (d = 20..50, rho 30..160) and converged on d <= 12.
- ``scale-features = true``: the relay conditions the least-squares features
  (:mod:`flower_qgadmm.conditioning`): by their global RMS, and with ``whiten-features``
  (default) by the Cholesky factor of the global second-moment matrix; rho is then
  chosen in those coordinates.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..compression import Float32Quantizer, Quantizer, StochasticQuantizer, adaptive_bits
from ..compression.base import dense_quantized
from ..compression.memory import commit_rows, encode_rows, lossless_rows, own_rows
from ..compression.quantizers import bfloat16_ceil, check_level_bits
from ..numeric import lanczos_eigenvalue, row_dots, rows_beyond
from ..settings import one_of, positive, setting
from ..solvers import LocalSolver
from ..topology import Graph
from .base import DIVERGED, CodecSettings, Phase, Wiring, Worker, derived, get_algorithm

if TYPE_CHECKING:
    from scipy.sparse import csr_array

log = logging.getLogger(__name__)

GROWTH_WARNING = 100.0
#: Largest accepted rho. The primal step solves (X^T X + l2 I + rho c_n I) theta = ...;
#: float64 keeps about 16 digits, so once rho c_n exceeds the data's curvature by ~1e16
#: the data term is rounded away and the models never leave theta^0 (the run "converges"
#: to nothing). 1e12 leaves data with curvature down to ~1e-4 visible, and keeps
#: rho * theta far from overflow.
RHO_MAX = 1e12
HEAD, TAIL = "head", "tail"
_FLOAT64 = np.dtype(np.float64)
#: Automatic rho: this factor times geomean(spectrum of H / N) / sqrt(sigma_2 sigma_max).
AUTO_RHO_FACTOR = 2.0
#: Automatic settings for solvers without sufficient statistics (stochastic variants).
STOCHASTIC_RHO = 1.0
STOCHASTIC_DUAL_STEP = 0.01


QUANTIZER_KEYS = frozenset({"bits", "adaptive-bits", "omega", "bits-max", "adaptive-reference"})
"""The settings only the quantized variants (Q-GADMM, Q-SGADMM) read."""


def title(algorithm: str | None) -> str:
    """A quantized variant's name as the papers write it, for messages: ``q-sgadmm`` ->
    ``Q-SGADMM`` (:attr:`Worker.algorithm`, or the set-up warnings' ``options``); a
    worker built without the registry has no name: Q-GADMM."""
    return algorithm.upper() if algorithm else "Q-GADMM"


@dataclass(frozen=True)
class GadmmSettings(CodecSettings):
    """Settings of the GADMM family (identical on every worker)."""

    LINREG_ONLY = frozenset({"scale-features", "whiten-features"})

    rho: float = setting(
        0.0, "ADMM penalty rho > 0 (0: automatic, from the data's spectrum and the graph)"
    )
    bits: int = setting(3, "quantized variants: bits per entry, 1..16 (initial width if adaptive)")
    adaptive_bits: bool = setting(
        False, "adaptive width: smallest b with Delta_k <= omega * 2 R_{k-1} / (2^bits - 1)"
    )
    omega: float = setting(1.0, "step-shrink factor of the adaptive rule, in (0, 1]")
    bits_max: int = setting(8, "cap of the adaptive rule, 1..16")
    adaptive_reference: str = setting(
        "configured",
        "adaptive rule's reference step: 'configured' (the configured width's step for the "
        "last range) or 'previous' (the last step itself: the CQ-GGADMM slides' rule, "
        "which ratchets the width up)",
    )
    dual_step: float = setting(
        0.0, "dual step as a fraction of rho (0: automatic, 1 for exact solves, 0.01 stochastic)"
    )
    censoring: bool = setting(False, "CQ-GGADMM: skip a send whose change is below tau0 * xi^k")
    censor_tau0: float = setting(
        0.3,
        "censoring threshold scale, > 0, on the change's 2-norm in the solver's coordinates "
        "(the whitened ones with scale-features)",
    )
    censor_xi: float = setting(0.9, "censoring threshold decay per iteration, in (0, 1)")
    scale_features: bool = setting(
        True, "linreg: solve with features divided by their global RMS (results in original units)"
    )
    whiten_features: bool = setting(
        True,
        "linreg, with scale-features: also decorrelate the features (Cholesky factor of the "
        "global second-moment matrix, d <= 1024)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rho != 0:
            positive("rho", self.rho, automatic=True)
        if self.rho > RHO_MAX:
            raise ValueError(
                f"rho must be <= {RHO_MAX:g}, got {self.rho:g}: beyond it the data term of the "
                "primal step is lost to float64 rounding and the models never move"
            )
        check_level_bits(self.bits, "bits")
        check_level_bits(self.bits_max, "bits-max")
        if self.adaptive_bits and self.bits > self.bits_max:
            raise ValueError(f"bits ({self.bits}) must not exceed bits-max ({self.bits_max})")
        one_of("adaptive-reference", self.adaptive_reference, ("configured", "previous"))
        if not 0 < self.omega <= 1:
            raise ValueError(f"omega must be in (0, 1], got {self.omega}")
        if self.dual_step != 0:
            positive("dual-step", self.dual_step, automatic=True)
        positive("censor-tau0", self.censor_tau0)
        if not 0 < self.censor_xi < 1:
            raise ValueError(f"censor-xi must be in (0, 1), got {self.censor_xi}")


class Gadmm(Worker):
    """One GADMM / Q-GADMM worker (``quantized`` picks the variant).

    Driven by :mod:`flower_qgadmm.rounds`: :meth:`receive` for every payload a neighbour
    sent, then :meth:`step` when the worker's group is active.
    """

    Settings = GadmmSettings
    stall_causes = "ill-conditioned data or a rho far from its best"
    # no step size to lower: the penalty, the width and (stochastic) the dual step and lr
    drift_advice = (
        "too few bits for this rho, or a rho far from its best (rho = 0 picks it from the "
        "data); with stochastic solvers also a dual-step or lr too large"
    )

    def __init__(
        self,
        node: int,
        wiring: Wiring,
        solver: LocalSolver,
        settings: GadmmSettings,
        seed: int,
        quantized: bool = True,
    ) -> None:
        self.quantized = bool(quantized)
        if settings.rho == 0 or settings.dual_step == 0:
            raise ValueError(
                "rho = 0 / dual-step = 0 mean automatic: resolve the settings first "
                "(Gadmm.resolve; the round engine does it at set-up)"
            )
        super().__init__(node, wiring, solver, settings, seed)
        # One dual per incident edge, keyed by the neighbour; oriented low -> high index.
        self.dual = {m: np.zeros(solver.dim) for m in wiring.neighbours}
        self.dual_pending = False
        # Quantizer memory for the adaptive rule (width and range of the last message).
        self.last_bits = settings.bits
        self.last_range = 0.0
        self.first_range = 0.0
        self.warned = False

    # ------------------------------------------------------------------ the run's shape
    @classmethod
    def schedule(cls, graph: Graph) -> list[Phase]:
        """Heads, then tails: the two colour classes (raises naming an odd cycle)."""
        try:
            heads, tails = graph.two_colouring()
        except ValueError as exc:
            raise ValueError(
                f"{exc}; group ADMM needs a bipartite graph (a chain, an even ring, a grid, "
                "'bipartite', ...), or run a gossip algorithm (d-psgd, choco-sgd, "
                "malcom-psgd) on this one"
            ) from None
        return [Phase(HEAD, heads), Phase(TAIL, tails)]

    @classmethod
    def wiring_of(cls, graph: Graph, node: int, mixing: csr_array | None) -> Wiring:
        return Wiring(graph.neighbours(node), group=graph.group(node))

    @classmethod
    def resolve(
        cls,
        settings: GadmmSettings,
        reports: Sequence[Mapping[str, Any]],
        mixing: csr_array | None,
        graph: Graph | None = None,
    ) -> GadmmSettings:
        """Fill ``rho = 0`` and ``dual-step = 0`` (see the module docstring)."""
        exact = bool(reports) and all("statistics" in r for r in reports)
        changes: dict[str, float] = {}
        if settings.rho == 0:
            changes["rho"] = auto_rho(reports, graph) if exact else STOCHASTIC_RHO
        if settings.dual_step == 0:
            changes["dual_step"] = 1.0 if exact else STOCHASTIC_DUAL_STEP
        return replace(settings, **changes) if changes else settings

    @classmethod
    def setup_warnings(
        cls,
        settings: GadmmSettings,
        options: Mapping[str, Any],
        reports: Sequence[Mapping[str, Any]],
    ) -> list[str]:
        """Warnings for the relay to log at set-up: a fixed width too small for the
        chosen rho (see the module docstring for the measured rule), naming the variant
        run (``options["algorithm"]``: Q-GADMM, Q-SGADMM)."""
        if not options.get("quantized", True) or settings.adaptive_bits or settings.bits > 2:
            return []
        tip = "use bits >= 3 or adaptive-bits"
        name = title(options.get("algorithm"))
        if settings.bits == 1:
            return [f"1-bit {name} sends only +-R per entry and diverges easily; {tip}"]
        dim = int(reports[0].get("dim", 0)) if reports else 0
        if dim < 16 or not all("statistics" in r for r in reports):
            return []
        level = _geomean_curvature(reports)
        if level > 0 and settings.rho >= 0.5 * level:
            return [
                f"2-bit {name} may diverge at rho={settings.rho:g} on this problem "
                f"(d = {dim}; measured: fixed 2-bit diverged for d >= 16 once rho >= half "
                f"the per-worker curvature, here {0.5 * level:.3g}); {tip}"
            ]
        return []

    @classmethod
    def unused_keys_for(cls, options: Mapping[str, Any]) -> frozenset[str]:
        """GADMM and SGADMM send float32 messages: no quantizer key is read."""
        unused = super().unused_keys_for(options)
        return unused if options.get("quantized", True) else unused | QUANTIZER_KEYS

    def make_quantizer(self) -> Quantizer:
        return StochasticQuantizer(self.settings.bits) if self.quantized else Float32Quantizer()

    # ------------------------------------------------------------------ update rules
    # The rules are written for the members of a phase at once, their vectors as the
    # rows of one array (the reference runner steps a phase in a few numpy calls per
    # rule); a worker alone (a Flower ClientApp) is a phase of one. Each row gets the
    # floats of the per-worker expressions in the comments: elementwise operations in
    # the same order, sums over the neighbours added in their order.

    def step(self, iteration: int, phase: str) -> bytes | None:
        """Steps 1-2 (and 4 when due) in the head or tail phase of ``iteration``."""
        return self._steps([self], iteration, phase)[0]

    @classmethod
    def step_many(cls, workers: Sequence[Gadmm], iteration: int, phase: str) -> list[bytes | None]:
        """:meth:`step` of every worker (members of one phase), taken together (one by
        one for a subclass with a step of its own)."""
        if cls.step is not Gadmm.step:
            return [w.step(iteration, phase) for w in workers]
        return cls._steps(workers, iteration, phase)

    @classmethod
    def send_and_report_many(
        cls, workers: Sequence[Gadmm], iteration: int, phase: str, evaluate: bool = True
    ) -> tuple[list[bytes | None], list[dict[str, float]]]:
        """:meth:`Worker.send_and_report_many`; when the members step together
        (:meth:`_steps`) and report as :class:`Worker` does, the reports take the
        distances to the neighbours' copies from the rows of the step (the same floats
        as :meth:`Worker.metrics_many`)."""
        together = (
            workers
            and cls.send_many.__func__ is Worker.send_many.__func__
            and cls.step is Gadmm.step
            and cls.step_many.__func__ is Gadmm.step_many.__func__
            and cls.metrics_many.__func__ is Worker.metrics_many.__func__
            and cls._reports_together()
            and cls._steps_together(workers)
        )
        if not together:
            return super().send_and_report_many(workers, iteration, phase, evaluate)
        distances: list[list[float]] = []
        payloads = cls._steps(workers, iteration, phase, distances)
        cls._check_payloads(workers, payloads)
        if not distances:
            return payloads, cls.metrics_many(workers, evaluate)
        return payloads, cls._reports(workers, evaluate, *distances)

    @classmethod
    def _steps(
        cls,
        workers: Sequence[Gadmm],
        iteration: int,
        phase: str,
        distances: list[list[float]] | None = None,
    ) -> list[bytes | None]:
        """The steps of :meth:`step_many`; ``distances``, if given, gets the members'
        distances to their neighbours' copies after the steps (:meth:`_Slots.distances`),
        when they can be computed from the rows."""
        if not workers:
            return []
        s = workers[0].settings
        if any([w.settings is not s for w in workers]):  # one run's workers share them
            return [p for w in workers for p in cls._steps([w], iteration, phase)]
        slots = _Slots(workers)
        if slots.phases != {phase}:
            for w in workers:
                expected = HEAD if w.wiring.group == 0 else TAIL
                if phase != expected:
                    raise ValueError(f"worker {w.node} is a {expected}, asked to step as a {phase}")
        pending = [i for i, w in enumerate(workers) if w.dual_pending]
        if pending:
            slots.update_duals(pending)
        rho = s.rho
        # linear = rho * sum_m theta_hat_m - alpha_n
        linear = slots.copies[0] + 0.0  # 0 + the first, as sum() starts
        for rows, copies in zip(slots.rows[1:], slots.copies[1:], strict=True):
            linear[rows] += copies
        linear *= rho
        linear -= slots.aggregate_dual()
        solvers = [w.solver for w in workers]
        kind = type(solvers[0])
        if any([type(v) is not kind for v in solvers]):
            kind = LocalSolver
        k = int(iteration)
        solved = kind.solve_many(
            solvers,
            linear,
            [rho * degree for degree in slots.degrees],
            [w.theta for w in workers],
            [(w.seed, w.node, k) for w in workers],
        )
        shape = workers[0].theta.shape
        if all(
            [type(t) is np.ndarray and t.dtype is _FLOAT64 and t.shape == shape for t in solved]
        ):
            thetas = solved  # float64 vectors of the model's shape: what from_solver passes
        else:
            thetas = [  # finite: checked just below
                w.from_solver(t, "solve", finite=False)
                for w, t in zip(workers, solved, strict=True)
            ]
        block = np.array(thetas)  # rows, as np.stack
        for i in rows_beyond(block, DIVERGED):  # raises, the advice built then
            workers[i].check_divergence(thetas[i], iteration, workers[i]._advice, "solve")
        for w, theta in zip(workers, thetas, strict=True):
            w.theta = theta
        copies = [w.copies for w in workers]
        if not s.censoring and not any([w.quantized for w in workers]) and lossless_rows(copies):
            # the float32 path, every row at once (_transmit's, without censoring)
            owns = own_rows(copies) if slots.own is None else slots.own  # as yet unchanged
            payloads, changes, values = encode_rows(copies, block, owns)
            slots.own = commit_rows(copies, changes, owns, payloads)
            # the papers' 32 d bits of every message (or what a subclass counts)
            if cls.nominal_bits is Worker.nominal_bits:
                first = workers[0].nominal_bits(dense_quantized(values[0], 0.0, 32, "raw"))
                nominals = [first] * len(workers)
            else:
                nominals = [
                    w.nominal_bits(dense_quantized(v, 0.0, 32, "raw"))
                    for w, v in zip(workers, values, strict=True)
                ]
            sent = list(zip(payloads, nominals, strict=True))
        else:
            sent = [w._transmit(iteration) for w in workers]
            slots.own = None  # changed: gathered again
        if phase == TAIL:
            slots.update_duals(range(len(workers)))
        else:
            for w in workers:
                w.dual_pending = True
        if distances is not None:
            distances.extend(slots.distances(block))
        return [
            w.finish_step(k, payload, nominal)
            for w, (payload, nominal) in zip(workers, sent, strict=True)
        ]

    def _advice(self) -> str:
        s = self.settings
        if self.quantized and not s.adaptive_bits:
            return (
                f"{s.bits}-bit {title(self.algorithm)} can diverge at rho={s.rho:g}: "
                "use more bits, adaptive-bits, or a smaller rho"
            )
        if self.algorithm and get_algorithm(self.algorithm).solver == "stochastic":
            return f"try a different rho (now {s.rho:g}), or a smaller lr or dual-step"
        return f"try a different rho (now {s.rho:g})"

    @classmethod
    def divergence_advice(
        cls,
        settings: GadmmSettings,
        requested: GadmmSettings,
        options: Mapping[str, Any],
        facts: Mapping[str, Any],
    ) -> str:
        """What to change when a run diverged, by likely cause: too few bits for the
        penalty (fixed width), a hand-set rho, unscaled data of very different column
        scales, with stochastic local solves (``options["solver"]``) a learning rate or
        dual step too large."""
        tips = []
        if options.get("quantized", True) and not settings.adaptive_bits:
            tips.append(
                f"too few bits: {settings.bits}-bit messages are too coarse at "
                f"rho={settings.rho:g} (use bits >= {settings.bits + 1}, or adaptive-bits)"
            )
        if requested.rho != 0:
            tips.append(
                f"rho={settings.rho:g} was set by hand: it may be too large (quantization "
                "noise dominates) or too small; rho = 0 picks it from the data"
            )
        rms = facts.get("column_rms")
        if not facts.get("scaled") and rms is not None and len(rms):
            low, high = float(np.min(rms)), float(np.max(rms))
            if low > 0 and high / low > 1e3:
                tips.append(
                    f"data scale: feature columns range from RMS {low:.3g} to {high:.3g}; "
                    "set scale-features = true"
                )
        if options.get("solver") == "stochastic":
            how = "set by hand" if requested.dual_step != 0 else "the automatic value"
            tips.append(
                f"{title(options.get('algorithm'))}'s stochastic local steps: a learning "
                f"rate (lr) or dual-step (now {settings.dual_step:g}, {how}) too large"
            )
        if not options.get("quantized", True) and requested.rho == 0 and not tips:
            tips.append("exact GADMM should not diverge: check the data for extreme values")
        return "likely causes: " + "; ".join(tips) if tips else ""

    def _warn_if_growing(self, new_range: float) -> None:
        """Differences should shrink; a range 100x the first message's signals divergence."""
        if self.first_range == 0.0:
            self.first_range = new_range
        elif not self.warned and new_range > GROWTH_WARNING * self.first_range:
            self.warned = True
            log.warning(
                "worker %d: quantized difference range grew to %.3g (first message %.3g); %s",
                self.node,
                new_range,
                self.first_range,
                self._advice(),
            )

    def _transmit(self, iteration: int) -> tuple[bytes | None, int]:
        """Quantize theta - theta_hat, encode, and apply the decoded bytes to the own copy.

        With censoring (CQ-GGADMM), a change whose 2-norm is below tau0 * xi^k is not
        sent: the copy stays stale on both ends and the next difference is taken against
        the last *sent* copy, so decoders never drift.
        """
        s = self.settings
        # the lossless path draws nothing: no RNG to build
        rng = self.rng(iteration) if self.quantized else None
        bits = self.last_bits if self.quantized else None
        if self.quantized and s.adaptive_bits:
            v = self.theta - self.copies.own
            # the range the message will carry (max |v| rounded up to a bfloat16 value,
            # as the quantizer does): the bound holds for the step actually sent
            new_range = bfloat16_ceil(float(np.max(np.abs(v)))) if v.size else 0.0
            # the reference step is the configured width's step for the last range (by
            # default), or the last step itself (the slides' rule: it ratchets the width)
            reference = s.bits if s.adaptive_reference == "configured" else self.last_bits
            bits = adaptive_bits(reference, self.last_range, new_range, s.omega, s.bits_max)
        payload, change, q = self.copies.encode(self.theta, rng, bits)
        if s.censoring and float(np.linalg.norm(change)) < s.censor_tau0 * s.censor_xi**iteration:
            return None, 0
        self.copies.commit(change, payload)
        nominal = self.nominal_bits(q)
        if self.quantized:
            self.last_bits, self.last_range = q.bits, q.scale
            self._warn_if_growing(q.scale)
            if s.adaptive_bits and getattr(self.copies.codec, "estimate_bits", None) is None:
                # the paper's count when the width varies: b d + 32 + the width itself,
                # one of 1..bits-max (the source coder's estimate has its own header)
                nominal += (s.bits_max - 1).bit_length()
        return payload, nominal

    def rewire(self, wiring: Wiring, copies: Mapping[int, np.ndarray]) -> None:
        """Adopt a repaired graph. Pending duals are applied first (so no update is lost
        or taken with the next iteration's copies); duals of dropped edges are
        discarded; a new edge starts with a zero dual."""
        if self.dual_pending:  # step 4, as a phase of one
            _Slots([self]).update_duals([0])
        super().rewire(wiring, copies)
        self.dual = {m: self.dual.get(m, np.zeros(self.theta.size)) for m in wiring.neighbours}

    # ------------------------------------------------------------------ persistence
    def extra_arrays(self) -> dict[str, np.ndarray]:
        return {f"dual.{m}": v for m, v in self.dual.items()}

    def extra_scalars(self) -> dict[str, Any]:
        return {
            "dual-pending": self.dual_pending,
            "last-bits": self.last_bits,
            "last-range": self.last_range,
            "first-range": self.first_range,
            "warned": self.warned,
        }

    def load_extra(self, arrays: Mapping[str, np.ndarray], scalars: Mapping[str, Any]) -> None:
        self.dual = {m: np.array(arrays[f"dual.{m}"], dtype=np.float64) for m in self.dual}
        self.dual_pending = bool(scalars["dual-pending"])
        self.last_bits = int(scalars["last-bits"])
        self.last_range = float(scalars["last-range"])
        self.first_range = float(scalars["first-range"])
        self.warned = bool(scalars["warned"])


#: Largest graph whose Laplacian spectrum :func:`graph_factor` computes whole (dense,
#: O(N^3): 0.3 s at N = 1,000, 40 s at 10,000 here); larger graphs go sparse.
DENSE_LAPLACIAN_MAX = 1000


def graph_factor(graph: Graph | None, num_workers: int) -> float:
    """sqrt(sigma_2 sigma_max) of the graph Laplacian over the active workers (a chain of
    ``num_workers`` when no graph is given): how fast disagreement travels the graph.

    Up to :data:`DENSE_LAPLACIAN_MAX` workers from the whole spectrum; above, from the
    sparse Laplacian (:func:`_sparse_graph_factor`: no N x N matrix; 0.1 s for a chain
    of 10,000 workers, 3.5 s for 100,000)."""
    if graph is None:
        nodes = list(range(num_workers))
        edges = [(i, i + 1) for i in range(num_workers - 1)]
    else:
        nodes = list(graph.active)
        edges = [(a, b) for a in nodes for b in graph.neighbours(a) if a < b]
    index = {n: i for i, n in enumerate(nodes)}
    if len(nodes) > DENSE_LAPLACIAN_MAX:
        return _sparse_graph_factor(len(nodes), [(index[a], index[b]) for a, b in edges])
    lap = np.zeros((len(nodes), len(nodes)))
    for a, b in edges:
        i, j = index[a], index[b]
        lap[i, j] -= 1.0
        lap[j, i] -= 1.0
        lap[i, i] += 1.0
        lap[j, j] += 1.0
    sigma = np.linalg.eigvalsh(lap)
    if len(sigma) < 2 or sigma[1] <= 1e-12 * sigma[-1]:
        return 1.0
    return float(math.sqrt(sigma[1] * sigma[-1]))


def _sparse_graph_factor(n: int, edges: list[tuple[int, int]]) -> float:
    """:func:`graph_factor` of a large connected graph (``n`` nodes, ``edges`` as index
    pairs), without an N x N matrix.

    sigma_2 is 1 / lambda_max of the Laplacian's pseudo-inverse, applied to a vector b
    orthogonal to the constant one by solving the grounded Laplacian (the last node's
    row and column removed: positive definite for a connected graph, one sparse LU) and
    centring: well separated (sigma_3 / sigma_2 is about 4 on a chain), so Lanczos
    converges in a few steps to machine precision. sigma_max (clustered at the top of a
    long chain's spectrum) by Lanczos to ARPACK's tolerance 1e-4, which puts it within
    1e-5 (relative; measured 6e-6 on a chain of 100,000): the penalty needs no more."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import laplacian
    from scipy.sparse.linalg import LinearOperator, eigsh, splu

    i, j = np.array(edges, dtype=np.int64).reshape(-1, 2).T
    adjacency = coo_matrix((np.ones(2 * i.size), (np.r_[i, j], np.r_[j, i])), shape=(n, n))
    lap = laplacian(adjacency.tocsc()).tocsc()
    top = lanczos_eigenvalue(lap, "LA", 1e-4)
    try:
        grounded = splu(lap[:-1, :-1].tocsc())
    except RuntimeError:  # singular: the graph is not connected
        return 1.0

    def pseudo_inverse(b: np.ndarray) -> np.ndarray:
        x = np.append(grounded.solve(b[:-1] - b.mean()), 0.0)
        return x - x.mean()

    operator = LinearOperator((n, n), matvec=pseudo_inverse, dtype=np.float64)
    start = np.random.default_rng(0).standard_normal(n)  # fixed, orthogonal to 1
    (inverse,) = eigsh(
        operator, k=1, which="LA", tol=0, v0=start - start.mean(), return_eigenvectors=False
    )
    if not inverse > 0 or 1.0 / inverse <= 1e-12 * top:
        return 1.0
    return float(math.sqrt(top / inverse))


def auto_rho(reports: Sequence[Mapping[str, Any]], graph: Graph | None = None) -> float:
    """The automatic penalty from the workers' statistics (X_n^T X_n + l2 I, in the
    solvers' coordinates) and the graph: ``AUTO_RHO_FACTOR * geomean(spectrum of H / N) /
    sqrt(sigma_2 sigma_max)`` (module docstring), within [1e-12, :data:`RHO_MAX`].
    Eigenvalues below 1e-12 of the largest (a singular H) are left out of the mean."""
    geomean = _geomean_curvature(reports)
    if geomean <= 0:
        return 1.0
    rho = AUTO_RHO_FACTOR * geomean / graph_factor(graph, len(reports))
    return float(min(max(rho, 1e-12), RHO_MAX))


def _geomean_curvature(reports: Sequence[Mapping[str, Any]]) -> float:
    """geomean(spectrum of H / N) from the workers' statistics, eigenvalues below 1e-12 of
    the largest left out; 0 if there is no positive curvature. Computed once per set-up
    (:func:`~flower_qgadmm.algorithms.base.derived`): auto_rho (through resolve) and
    2-bit Q-GADMM's setup_warnings both ask for it, an eigvalsh of a d x d matrix each
    (seconds at d = 3,000)."""
    return derived(reports, _curvature)


def _curvature(reports: Sequence[Mapping[str, Any]]) -> float:
    """:func:`_geomean_curvature`, computed."""
    grams = [np.asarray(r["statistics"][0], dtype=np.float64) for r in reports]
    spectrum = np.linalg.eigvalsh(sum(grams) / len(grams))
    top = float(spectrum[-1]) if spectrum.size else 0.0
    if not (top > 0 and math.isfinite(top)):
        return 0.0
    kept = spectrum[spectrum > 1e-12 * top]
    return float(np.exp(np.mean(np.log(kept))))


#: Largest phase (members x model entries) whose edge signs :func:`_layout` writes out
#: entry by entry.
FULL_SIGNS = 1 << 16


@functools.lru_cache(maxsize=16)
def _layout(wirings: tuple[tuple[int, int, tuple[int, ...]], ...], dim: int) -> tuple:
    """Where the members of a phase (``wirings``: each one's node, group and neighbours)
    sit in :class:`_Slots`: per neighbour slot j, the members with more than j
    neighbours (as indices of the phase and as an index of its rows), the sign s_ne of
    each edge (+1 at the edge's low end; (members, ``dim``), or (members, 1) for a large
    phase) and the (member, j-th neighbour) pairs; the phases the members' groups step in
    and their degrees (also as floats); the member of every pair, slot after slot, and
    each slot's span of them (one array of every slot's copies: :attr:`_Slots.every_copy`);
    a cache of the signs times a dual step (:func:`_signed_steps`). The same for every
    phase of a run until a repair rewires it: computed once."""
    members: list[list[int]] = []
    neighbours: list[list[int]] = []
    signs: list[list[float]] = []
    for i, (node, _, ms) in enumerate(wirings):
        for j, m in enumerate(ms):
            if j == len(members):
                members.append([])
                neighbours.append([])
                signs.append([])
            members[j].append(i)
            neighbours[j].append(m)
            signs[j].append(1.0 if node < m else -1.0)
    count = len(wirings)
    rows = [slice(None) if len(ms) == count else _frozen(np.array(ms)) for ms in members]
    # a sign per model entry when that is small (a full-size product is about three
    # times faster than one broadcasting a column at d = 50), else one per row
    width = dim if len(wirings) * dim <= FULL_SIGNS else 1
    sign = [_frozen(np.repeat(np.array(s)[:, None], width, axis=1)) for s in signs]
    pairs = [tuple(zip(ms, ns, strict=True)) for ms, ns in zip(members, neighbours, strict=True)]
    phases = frozenset(HEAD if group == 0 else TAIL for _, group, _ in wirings)
    degrees = tuple(len(ms) for _, _, ms in wirings)
    counts = _frozen(np.array(degrees, dtype=np.float64))
    owners = _frozen(np.array([i for ms in members for i in ms], dtype=np.intp))
    ends = np.cumsum([0, *map(len, members)]).tolist()  # of each slot's pairs, in owners
    spans = tuple([slice(a, b) for a, b in zip(ends, ends[1:], strict=False)])
    # shared by every phase of this layout: nothing in it can change (but the cache of
    # the signs times a dual step, which depends on nothing else)
    return (
        tuple(map(tuple, members)),
        tuple(rows),
        tuple(sign),
        tuple(pairs),
        phases,
        degrees,
        counts,
        owners,
        spans,
        {},
    )


def _signed_steps(layout_steps: dict, sign: Sequence[np.ndarray], step: float) -> tuple:
    """The edge signs of a layout times ``step`` (each slot's), made once per step value
    (kept in the layout's ``layout_steps``; at most 4 values)."""
    signed = layout_steps.get(step)
    if signed is None:
        if len(layout_steps) >= 4:
            layout_steps.clear()
        signed = layout_steps[step] = tuple([_frozen(s * step) for s in sign])
    return signed


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


class _Slots:
    """The vectors GADMM's rules read of the members of a phase (:meth:`Gadmm.step_many`),
    by neighbour slot: slot j holds, for every member with more than j neighbours (its
    ``members``, as ``rows`` of the phase), its j-th neighbour, its copy of that
    neighbour (rows of one array), its dual of the edge, and the sign s_ne of the edge at
    the worker (+1 at its low end)."""

    def __init__(self, workers: Sequence[Gadmm]) -> None:
        self.workers = workers
        wirings = tuple([(w.node, w.wiring.group, w.wiring.neighbours) for w in workers])
        layout = _layout(wirings, workers[0].theta.size)
        self.members, self.rows, self.sign, self.pairs = layout[:4]
        self.phases, self.degrees, self.counts, self.owners, spans, self.steps = layout[4:]
        pairs = self.pairs
        hats = [w.copies.hat for w in workers]
        self.dicts = dicts = [w.dual for w in workers]  # the members' dual dicts
        # every slot's copies in one array (rows, as np.stack), a slot's rows a view of it
        self.every_copy = np.array([hats[i][m] for ps in pairs for i, m in ps])
        self.copies = [self.every_copy[span] for span in spans]
        self.duals = [[dicts[i][m] for i, m in ps] for ps in pairs]
        self.own: np.ndarray | None = None  # every member's theta_hat_n, once gathered
        # per slot, the duals as the rows of one array, when update_duals made them so
        self.dual_rows: list[np.ndarray | None] = [None] * len(pairs)

    def update_duals(self, which: Sequence[int]) -> None:
        """Step 4 for the members at ``which`` (indices into the phase): on every incident
        edge, lambda_ab += eta rho (theta_hat_a - theta_hat_b), from copies both ends hold.

        eta = ``dual_step`` is 1 in the papers' equations; the stochastic variants need a
        damped step (the authors' notebook uses 0.01) or the duals grow and accuracy decays.
        """
        settings = self.workers[0].settings
        step = settings.dual_step * settings.rho
        if self.own is None:
            self.own = own_rows([w.copies for w in self.workers])
        chosen = set(which)
        everyone = len(chosen) == len(self.workers)
        dicts = self.dicts
        signed = _signed_steps(self.steps, self.sign, step) if everyone else None
        for j, (members, rows, pairs, copies, duals, sign) in enumerate(
            zip(
                self.members,
                self.rows,
                self.pairs,
                self.copies,
                self.duals,
                self.sign,
                strict=True,
            )
        ):
            if everyone:
                ks: Sequence[int] = range(len(members))
                own, other, signs = self.own[rows], copies, signed[j]
                old = duals if self.dual_rows[j] is None else self.dual_rows[j]
            else:
                ks = [k for k, i in enumerate(members) if i in chosen]
                if not ks:
                    continue
                own, other = self.own[[members[k] for k in ks]], copies[ks]
                signs = sign[ks] * step
                old = [duals[k] for k in ks]
            # s_ne (hat[node] - hat[m]) times the step: hat[node] - hat[m] at the edge's low
            # end, hat[m] - hat[node] = -(hat[node] - hat[m]) (exactly) at its high end;
            # x * -step is -(x * step): the floats of that difference times the step (a
            # zero difference gives -0 at the high end, and -0 + dual is dual: a dual
            # never is -0), then + dual
            change = own - other
            change *= signs  # s_ne * step
            change += old if type(old) is np.ndarray else np.array(old)  # rows, as np.stack
            # new arrays (saved states keep the old ones)
            new = list(change)
            if everyone:
                for (i, m), row in zip(pairs, new, strict=True):
                    dicts[i][m] = row
                duals[:] = new
                self.dual_rows[j] = change
            else:
                self.dual_rows[j] = None
                for k, row in zip(ks, new, strict=True):
                    i, m = pairs[k]
                    dicts[i][m] = row
                    duals[k] = row
        for i in which:
            self.workers[i].dual_pending = False

    def aggregate_dual(self) -> np.ndarray:
        """alpha_n = sum_e s_ne lambda_e of every member, added in its neighbours' order:
        ``0 + lambda`` or ``0 - lambda`` for the first edge, then ``+= lambda`` or ``-=
        lambda``, written as additions of s_ne lambda (x - y is x + (-y) in IEEE
        arithmetic, signed zeros included)."""
        # the duals of a slot as rows: those update_duals just made, else gathered (and
        # kept for the update after the send)
        self.dual_rows = blocks = [
            np.array(duals) if block is None else block
            for duals, block in zip(self.duals, self.dual_rows, strict=True)
        ]
        alpha = blocks[0] * self.sign[0]
        alpha += 0.0
        for rows, block, sign in zip(self.rows[1:], blocks[1:], self.sign[1:], strict=True):
            alpha[rows] += block * sign
        return alpha

    def distances(self, thetas: np.ndarray) -> list[list[float]]:
        """Each member's distances to its copies of its neighbours (``thetas``: the models
        as rows): [root mean squares, largest], each a list, the floats of
        :meth:`Worker.metrics_many` (a row per distance: theta_n - theta_hat_m, its dot
        product with itself, the square root, squared again, summed over the
        neighbours in their order); empty (not computed) unless every member has one or
        two neighbours and the models are float64."""
        degrees = self.degrees
        if thetas.dtype is not _FLOAT64 or not 1 <= min(degrees, default=0) <= max(degrees) <= 2:
            return []
        # a distance per (member, neighbour), slot by slot; every member has a first
        # neighbour: the first slot's distances are the phase's members'
        every = np.sqrt(row_dots(thetas[self.owners] - self.every_copy))
        count = len(thetas)
        first = every[:count]
        total = first * first
        if len(self.rows) > 1:
            rows, second = self.rows[1], every[count:]
            total[rows] += second * second
            first[rows] = np.maximum(first[rows], second)
        total /= self.counts
        return [np.sqrt(total).tolist(), first.tolist()]
