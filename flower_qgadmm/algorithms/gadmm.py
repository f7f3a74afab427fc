"""GADMM (arXiv 1909.00047) and Q-GADMM (arXiv 1910.10453): one worker's update rules.

Worker n on a bipartite graph (a chain for GADMM) keeps its model theta_n, the public
copy theta_hat_n that its neighbours also hold, their copies theta_hat_m, and one dual
lambda_e per incident edge e = (a, b), a < b, for the constraint theta_a = theta_b.
Let alpha_n = sum_e s_ne lambda_e with s_ne = +1 if n = a, -1 if n = b. Iteration k:

1. Heads (group 0) solve, in parallel,
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
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..compression import (
    FixedWidthCodec,
    Float32Quantizer,
    PayloadError,
    Quantized,
    Quantizer,
    StochasticQuantizer,
    adaptive_bits,
)
from ..config import GadmmConfig
from ..solvers import LocalSolver

log = logging.getLogger(__name__)

DIVERGED = 1e30  # |theta| beyond this is treated as divergence (float32 max is 3.4e38)
GROWTH_WARNING = 100.0


def make_quantizer(cfg: GadmmConfig) -> Quantizer:
    """The quantizer of an algorithm: float32 for GADMM, stochastic for Q-GADMM."""
    return StochasticQuantizer(cfg.bits) if cfg.quantized else Float32Quantizer()


class GadmmNode:
    """One GADMM / Q-GADMM worker: the step rules, framework-free.

    Driven identically by :mod:`flower_qgadmm.reference` and the Flower ClientApp: call
    :meth:`receive` for every payload a neighbour sent, then :meth:`step` when the
    worker's group is active; persist with :meth:`state_dict`.

    Parameters
    ----------
    node : int
        This worker's index on the graph (its partition id).
    neighbours : sequence of int
        Indices of its neighbours.
    group : int
        0 = head group (updates first in an iteration), 1 = tail group.
    solver : LocalSolver
        The local primal solver holding this worker's data (exact least squares, or a
        few optimizer steps on a network: the stochastic variants).
    cfg : GadmmConfig
        Hyperparameters (identical on every worker).
    """

    def __init__(
        self,
        node: int,
        neighbours: Sequence[int],
        group: int,
        solver: LocalSolver,
        cfg: GadmmConfig,
    ) -> None:
        if not neighbours:
            raise ValueError(f"worker {node} has no neighbours")
        self.node = int(node)
        self.neighbours = tuple(int(m) for m in neighbours)
        self.group = int(group)
        self.solver = solver
        self.cfg = cfg
        self.quantizer = make_quantizer(cfg)
        self.codec = FixedWidthCodec()
        d = solver.dim
        # Iterate and public copies (own and neighbours'), all from the shared start
        # theta^0 (0 for least squares, the seeded initial model for a network).
        start = solver.initial()
        self.theta = start.copy()
        self.hat = {m: start.copy() for m in (self.node, *self.neighbours)}
        # One dual per incident edge, keyed by the neighbour; oriented low -> high index.
        self.dual = {m: np.zeros(d) for m in self.neighbours}
        self.dual_pending = False
        # Quantizer memory for the adaptive rule (width and range of the last message).
        self.last_bits = cfg.bits
        self.last_range = 0.0
        self.first_range = 0.0
        self.warned = False
        # Counters of what was actually produced.
        self.iteration = 0
        self.last_payload_bits = 0
        self.last_nominal_bits = 0

    # ------------------------------------------------------------------ messages
    def receive(self, src: int, payload: bytes) -> None:
        """Decode a neighbour's payload into its public copy (raises PayloadError)."""
        if src not in self.dual:
            raise PayloadError(f"worker {self.node} got a payload from non-neighbour {src}")
        self.hat[src] = self.hat[src] + self._decode(payload, f"from worker {src}")

    def _decode(self, payload: bytes, where: str) -> np.ndarray:
        q = self.codec.decode(payload, size=self.theta.size)
        if (q.bits == 32) != (not self.cfg.quantized):
            raise PayloadError(
                f"payload {where} has {q.bits}-bit entries, unexpected for {self.cfg.algorithm}"
            )
        return self.quantizer.dequantize(q)

    # ------------------------------------------------------------------ update rules
    def _update_duals(self) -> None:
        """Step 4: lambda_ab += eta rho (theta_hat_a - theta_hat_b) on every incident edge.

        eta = ``dual_step`` is 1 in the papers' equations; the stochastic variants need a
        damped step (the authors' notebook uses 0.01) or the duals grow and accuracy decays.
        """
        step = self.cfg.dual_step * self.cfg.rho
        for m in self.neighbours:
            a, b = (self.node, m) if self.node < m else (m, self.node)
            self.dual[m] = self.dual[m] + step * (self.hat[a] - self.hat[b])
        self.dual_pending = False

    def _aggregate_dual(self) -> np.ndarray:
        alpha = np.zeros_like(self.theta)
        for m in self.neighbours:
            alpha = alpha + self.dual[m] if self.node < m else alpha - self.dual[m]
        return alpha

    def step(self, iteration: int) -> bytes | None:
        """Steps 1-2 (and 4 when due) for this worker at ``iteration`` (1-based).

        Returns the payload to relay to every neighbour, or None when censored.
        """
        if self.dual_pending:
            self._update_duals()
        rho = self.cfg.rho
        linear = rho * sum(self.hat[m] for m in self.neighbours) - self._aggregate_dual()
        key = (self.cfg.seed, self.node, int(iteration))
        theta = self.solver.solve(linear, rho * len(self.neighbours), self.theta, key)
        self._check_divergence(theta, iteration)
        self.theta = theta
        payload = self._transmit(iteration)
        self.iteration = int(iteration)
        if self.group == 1:
            self._update_duals()
        else:
            self.dual_pending = True
        return payload

    def _advice(self) -> str:
        if self.cfg.quantized and not self.cfg.adaptive_bits:
            return (
                f"{self.cfg.bits}-bit Q-GADMM can diverge at rho={self.cfg.rho:g}: "
                "use more bits, adaptive-bits, or a smaller rho"
            )
        return f"try a different rho (now {self.cfg.rho:g})"

    def _check_divergence(self, theta: np.ndarray, iteration: int) -> None:
        size = float(np.max(np.abs(theta))) if theta.size else 0.0
        if not np.isfinite(size) or size > DIVERGED:
            raise FloatingPointError(
                f"worker {self.node} diverged at iteration {iteration} "
                f"(max |theta| = {size:.3g}); {self._advice()}"
            )

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

    def _transmit(self, iteration: int) -> bytes | None:
        """Quantize theta - theta_hat, encode, and apply the decoded bytes to the own copy.

        With censoring (CQ-GGADMM), a change whose 2-norm is below tau0 * xi^k is not
        sent: the copy stays stale on both ends and the next difference is taken against
        the last *sent* copy, so decoders never drift.
        """
        v = self.theta - self.hat[self.node]
        rng = np.random.default_rng([self.cfg.seed, self.node, iteration])
        bits = self.last_bits
        if self.cfg.quantized and self.cfg.adaptive_bits:
            new_range = float(np.max(np.abs(v))) if v.size else 0.0
            bits = adaptive_bits(
                self.last_bits, self.last_range, new_range, self.cfg.omega, self.cfg.bits_max
            )
        q: Quantized = self.quantizer.quantize(v, rng, bits=bits)
        payload = self.codec.encode(q)
        # GRACE's sender-side decode: hold exactly what the receivers rebuild.
        change = self._decode(payload, "of its own")
        threshold = self.cfg.censor_tau0 * self.cfg.censor_xi**iteration
        if self.cfg.censoring and float(np.linalg.norm(change)) < threshold:
            self.last_payload_bits = self.last_nominal_bits = 0
            return None
        self.hat[self.node] = self.hat[self.node] + change
        if self.cfg.quantized:
            self.last_bits, self.last_range = q.bits, q.scale
            self._warn_if_growing(q.scale)
        self.last_payload_bits = 8 * len(payload)
        self.last_nominal_bits = self.quantizer.nominal_bits(q)
        return payload

    def rewire(
        self, neighbours: Sequence[int], group: int, copies: Mapping[int, np.ndarray]
    ) -> None:
        """Adopt a repaired graph between two iterations (a neighbour left the run).

        Call after every pending payload was received. Pending duals are applied first
        (so no update is lost or taken with the next iteration's copies); duals and
        copies of dropped edges are discarded; a new edge starts with a zero dual and
        the new neighbour's current public copy (``copies``, sent by the relay), which
        both ends then hold.
        """
        if self.dual_pending:
            self._update_duals()
        new = tuple(int(m) for m in neighbours)
        if not new:
            raise ValueError(f"worker {self.node} has no neighbours after the repair")
        missing = [m for m in new if m not in self.dual and m not in copies]
        if missing:
            raise ValueError(
                f"worker {self.node}: no public copy given for new neighbours {missing}"
            )
        d = self.theta.size
        self.hat = {
            self.node: self.hat[self.node],
            **{m: self.hat[m] if m in self.dual else np.asarray(copies[m], float) for m in new},
        }
        self.dual = {m: self.dual.get(m, np.zeros(d)) for m in new}
        self.neighbours = new
        self.group = int(group)

    def public_copy(self) -> np.ndarray:
        """theta_hat_n, the copy of this worker that its neighbours hold."""
        return self.hat[self.node]

    # ------------------------------------------------------------------ reporting
    def objective(self) -> float:
        """f_n(theta_n) at the current model."""
        return self.solver.objective(self.theta)

    def metrics(self) -> dict[str, float]:
        """This worker's report: ``objective`` f_n(theta_n) plus the solver's own metrics."""
        return {"objective": self.objective(), **self.solver.evaluate(self.theta)}

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, scalars): everything that must survive between two messages."""
        arrays = {"theta": self.theta}
        arrays.update({f"hat.{m}": v for m, v in self.hat.items()})
        arrays.update({f"dual.{m}": v for m, v in self.dual.items()})
        arrays.update({f"solver.{k}": v for k, v in self.solver.extra_state().items()})
        scalars = {
            "node": self.node,
            "iteration": self.iteration,
            "dual-pending": self.dual_pending,
            "last-bits": self.last_bits,
            "last-range": self.last_range,
            "first-range": self.first_range,
            "warned": self.warned,
        }
        return arrays, scalars

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], scalars: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; refuses a state of another worker or shape."""
        if int(scalars["node"]) != self.node:
            raise ValueError(f"state of worker {scalars['node']} loaded into worker {self.node}")
        own = {k: v for k, v in arrays.items() if not k.startswith("solver.")}
        expected = {"theta", *(f"hat.{m}" for m in self.hat), *(f"dual.{m}" for m in self.dual)}
        if set(own) != expected:
            raise ValueError(
                f"worker {self.node}: saved state has arrays {sorted(own)}, "
                f"expected {sorted(expected)} (did the neighbours change?)"
            )
        for key, value in own.items():
            if np.shape(value) != self.theta.shape:
                raise ValueError(f"worker {self.node}: state {key} has shape {np.shape(value)}")
        self.theta = np.array(arrays["theta"], dtype=np.float64)
        self.hat = {m: np.array(arrays[f"hat.{m}"], dtype=np.float64) for m in self.hat}
        self.dual = {m: np.array(arrays[f"dual.{m}"], dtype=np.float64) for m in self.dual}
        self.solver.load_extra_state(
            {k[len("solver.") :]: v for k, v in arrays.items() if k.startswith("solver.")}
        )
        self.iteration = int(scalars["iteration"])
        self.dual_pending = bool(scalars["dual-pending"])
        self.last_bits = int(scalars["last-bits"])
        self.last_range = float(scalars["last-range"])
        self.first_range = float(scalars["first-range"])
        self.warned = bool(scalars["warned"])
