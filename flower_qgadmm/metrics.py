"""Per-iteration history: the papers' objective error plus consensus and bit counters.

One function computes a history row from the workers' reports (and, in evaluation
rounds, their models), so the reference runner and the Flower strategy report identical
numbers.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .energy import transmit_energy
from .topology import Graph


@dataclass(frozen=True)
class Optimum:
    """Centralized least-squares optimum theta* and F* = sum_n f_n(theta*)."""

    theta: np.ndarray
    value: float


EQUILIBRATE_SPREAD = 1e6
"""Largest ratio of the diagonal entries of the summed X^T X (squared column norms) that
:func:`optimal_model` solves as it is; beyond it, it equilibrates first."""


def optimal_model(
    stats: Sequence[tuple[np.ndarray, np.ndarray]] | Mapping[int, tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
    """theta* from each worker's (X^T X + l2 I, X^T y), summed in worker order:
    the solution of A theta = b (least-squares solution if A is singular).

    ``stats`` is a sequence in worker order, or a mapping worker -> statistics (then
    errors name the worker). Statistics that are not finite, do not fit together, or
    overflow when summed raise ValueError before LAPACK sees them (an SVD of Inf/NaN may
    fail obscurely or never return).

    F* is then sum_n f_n(theta*) evaluated by each worker from its residuals; the
    closed form (y^T y - b^T theta*) / 2 cancels badly near a good fit.
    """
    if isinstance(stats, Mapping):
        items = [(f"worker {n}", s) for n, s in stats.items()]
    else:
        items = [(f"the worker at position {i}", s) for i, s in enumerate(stats)]
    if not items:
        raise ValueError("optimal_model: no statistics")
    grams, xtys = [], []
    for who, (gram, xty) in items:
        gram = np.asarray(gram, dtype=np.float64)
        xty = np.asarray(xty, dtype=np.float64)
        d = xty.shape[0] if xty.ndim == 1 else -1
        if d < 0 or gram.shape != (d, d):
            raise ValueError(
                f"{who}: statistics must be X^T X (d, d) and X^T y (d,), "
                f"got {gram.shape} and {xty.shape}"
            )
        if grams and d != xtys[0].shape[0]:
            first = xtys[0].shape[0]
            raise ValueError(f"{who}: statistics of dimension {d}, the first has {first}")
        if not (np.all(np.isfinite(gram)) and np.all(np.isfinite(xty))):
            raise ValueError(f"{who} sent statistics (X^T X, X^T y) containing NaN/Inf")
        grams.append(gram)
        xtys.append(xty)
    with np.errstate(over="ignore", invalid="ignore"):
        gram = sum(grams)
        xty = sum(xtys)
    if not (np.all(np.isfinite(gram)) and np.all(np.isfinite(xty))):
        raise ValueError("the workers' statistics overflow float64 when summed: rescale the data")
    # Columns of very different scales: the least-squares solve truncates singular values
    # below eps * max(d) * sigma_max, so A's conditioning (the square of X's) would drop
    # the small columns. Solve D A D z = D b, theta = D z with D = diag(A)^(-1/2) then
    # (Jacobi equilibration); within EQUILIBRATE_SPREAD, A as it is (bit for bit as before).
    diag = np.diag(gram)
    positive = diag[diag > 0]
    if positive.size and float(positive.max()) > EQUILIBRATE_SPREAD * float(positive.min()):
        scale = 1.0 / np.sqrt(np.where(diag > 0, diag, 1.0))  # 1 for an all-zero column
        z, _, _, singular = np.linalg.lstsq(
            gram * scale[:, None] * scale[None, :], xty * scale, rcond=None
        )
        theta = scale * z
    else:
        theta, _, _, singular = np.linalg.lstsq(gram, xty, rcond=None)
    if not (np.all(np.isfinite(singular)) and np.all(np.isfinite(theta))):
        raise ValueError(
            "the centralized optimum overflows float64 (summed X^T X up to "
            f"{float(np.max(np.abs(gram))):.3g}): rescale the data"
        )
    return theta


class Accountant:
    """What was actually sent: cumulative payload bits (8 x bytes), the paper's nominal
    bits, transmissions, censored (skipped) transmissions, and, with device positions,
    transmit energy (:mod:`flower_qgadmm.energy`). Shared by both runners."""

    def __init__(self, graph: Graph) -> None:
        self.bits = self.nominal_bits = self.transmissions = self.censored = 0
        self.relayed_bytes = 0
        self.sealed_bytes = 0  # what end-to-end encryption added to the payloads
        self.round_transmissions = 0
        self.repair_bits = 0
        self.energy = 0.0
        self.set_graph(graph)

    def set_graph(self, graph: Graph) -> None:
        """Use a (repaired) graph from now on: distances to the farthest neighbour."""
        self.graph = graph
        self._reach = None
        if graph.positions is not None:
            pos = graph.positions
            self._reach = {
                n: max(float(np.linalg.norm(pos[n] - pos[m])) for m in graph.neighbours(n))
                for n in graph.active
            }

    def repaired(self, node: int, bits: int) -> None:
        """Count a full public copy exported to new neighbours during a graph repair
        (once, however many receive it, as a broadcast payload)."""
        self.bits += int(bits)
        self.repair_bits += int(bits)

    def start_round(self) -> None:
        """Reset the per-round counter."""
        self.round_transmissions = 0

    def sent(self, node: int, payload_bits: int, nominal_bits: int, concurrent: int) -> None:
        """Count one broadcast (heard by every neighbour, counted once) made while
        ``concurrent`` workers transmit in the same phase."""
        self.sent_many([(node, payload_bits, nominal_bits)], concurrent)

    def sent_many(self, sends: Sequence[tuple[int, int, int]], concurrent: int) -> None:
        """:meth:`sent` of every (node, payload bits, nominal bits) in ``sends`` (the
        energies' floats added in this order)."""
        self.bits += sum([int(bits) for _, bits, _ in sends])
        self.nominal_bits += sum([int(bits) for _, _, bits in sends])
        self.transmissions += len(sends)
        self.round_transmissions += len(sends)
        if self._reach is not None:
            for node, payload_bits, _ in sends:
                self.energy += transmit_energy(payload_bits, self._reach[node], concurrent)

    def delivered(self, nbytes: int) -> None:
        """Count bytes the relay delivered, each payload once per neighbour it went to
        (the fan-out)."""
        self.relayed_bytes += int(nbytes)

    def sealed(self, nbytes: int) -> None:
        """Count the bytes encryption added to one payload (header, wrapped keys, tag)."""
        self.sealed_bytes += int(nbytes)

    def skipped(self, node: int) -> None:
        """Count a censored transmission (nothing sent)."""
        self.censored += 1

    def counters(self) -> dict[str, float | int]:
        """The cumulative counters for a history row."""
        out: dict[str, float | int] = {
            "bits": self.bits,
            "payload_bytes": self.bits // 8,
            "relayed_bytes": self.relayed_bytes,
            "nominal_bits": self.nominal_bits,
            "transmissions": self.transmissions,
            "round_transmissions": self.round_transmissions,
            "censored": self.censored,
        }
        if self.repair_bits:
            out["repair_bits"] = self.repair_bits
        if self.sealed_bytes:
            out["encryption_overhead_bytes"] = self.sealed_bytes
        if self._reach is not None:
            out["energy_joules"] = self.energy
        return out


def model_metrics(models: Sequence[np.ndarray], optimum: Optimum | None = None) -> dict[str, float]:
    """What the workers' models say (:func:`history_row`'s model columns):
    ``consensus_error`` sqrt(mean_n ||theta_n - theta_bar||^2) and, with a known optimum,
    ``optimum_distance`` ||theta_bar - theta*|| / ||theta*|| and ``optimum_error``
    ||theta_bar - theta*||."""
    stacked = np.stack(models)
    mean = stacked.mean(axis=0)
    out = {"consensus_error": float(np.sqrt(np.mean(np.sum((stacked - mean) ** 2, axis=1))))}
    if optimum is not None:
        ref = float(np.linalg.norm(optimum.theta)) or 1.0
        distance = float(np.linalg.norm(mean - optimum.theta))
        out["optimum_distance"] = distance / ref
        out["optimum_error"] = distance
    return out


_SUM = np.add.reduce
_FLOAT64 = np.dtype(np.float64)
_OWN_COLUMNS = frozenset({"objective", "disagreement", "disagreement_max"})


def history_row(
    iteration: int,
    reports: Sequence[Mapping[str, float]],
    counters: Mapping[str, float | int],
    optimum: Optimum | None = None,
    models: Sequence[np.ndarray] | None = None,
    extra: Mapping[str, float] | None = None,
) -> dict[str, float | int]:
    """One JSON-Lines row from the workers' reports (``Worker.metrics``: scalars) and,
    in rounds where the models were pulled, the models.

    From the reports, every round: ``objective`` F = sum_n f_n(theta_n) and
    ``train_loss`` = F / N; with a known optimum, ``objective_gap`` |F - F*| / |F*|;
    ``edge_disagreement`` sqrt(mean_n d_n^2) and ``edge_disagreement_max`` max_n of the
    workers' distances to the copies they hold of their neighbours (``disagreement``,
    ``disagreement_max``); the mean over workers of every other metric they all report
    (``accuracy``, ``sparsity``, ...). From the models, when given: ``consensus_error``
    sqrt(mean_n ||theta_n - theta_bar||^2) and, with a known optimum,
    ``optimum_distance`` ||theta_bar - theta*|| / ||theta*||. Then the ``counters``
    (:class:`Accountant`, transport bytes) and ``extra`` (e.g. the mean model's test
    accuracy) as given; an ``extra`` name the row already has (a user's ``evaluate_fn``
    returning ``accuracy``, next to the workers' mean accuracy) is stored as
    ``server_<name>``, overwriting nothing.

    With a known optimum, every row also carries ``objective_error`` |F - F*| (absolute)
    and ``optimum_value`` F*, and evaluation rows ``optimum_error`` ||theta_bar - theta*||
    (absolute): when |F*| is ~0 (a near-perfect fit) the relative gap is meaningless and
    :func:`~flower_qgadmm.history.summarize` uses the absolute values instead.
    """
    # np.add.reduce(values, axis=None): what np.sum of a list calls, without its wrapper
    f = float(_SUM([r["objective"] for r in reports], axis=None))
    row: dict[str, float | int] = {"iteration": int(iteration), "objective": f}
    if optimum is not None:
        denom = abs(optimum.value) if optimum.value != 0 else 1.0
        row["objective_gap"] = abs(f - optimum.value) / denom
        row["objective_error"] = abs(f - optimum.value)
        row["optimum_value"] = float(optimum.value)
    row["train_loss"] = f / len(reports)
    if all(["disagreement" in r for r in reports]):
        squares = np.asarray([r["disagreement"] ** 2 for r in reports])
        if squares.dtype == _FLOAT64:  # np.sqrt(np.mean(squares)) without the wrappers:
            # the same sum (np.add.reduce), divided by the count, the same correctly
            # rounded square root
            rms = math.sqrt(float(_SUM(squares, axis=None)) / squares.size)
        else:
            rms = float(np.sqrt(np.mean(squares)))
        row["edge_disagreement"] = rms
        row["edge_disagreement_max"] = float(max([r["disagreement_max"] for r in reports]))
    if models is not None:
        row.update(model_metrics(models, optimum))
    for key in reports[0]:  # accuracy, sparsity, ...: the mean over workers (a solver
        # metric named like a field computed above, e.g. "iteration", does not replace it)
        if key not in _OWN_COLUMNS and key not in row and all(key in r for r in reports):
            row[key] = float(np.mean([r[key] for r in reports]))
    row.update(counters)
    add_extra(row, extra or {})
    return row


def add_extra(row: dict, extra: Mapping[str, float]) -> None:
    """Put ``extra`` metrics (an ``evaluate`` callback's) into ``row``; a name the row
    already has is stored as ``server_<name>``, overwriting nothing."""
    for key, value in extra.items():
        row[f"server_{key}" if key in row else key] = value


#: Divergence: the objective beyond this many times its level over the first iterations.
GROWTH_LIMIT = 1e4
EARLY_ITERATIONS = 10
#: Stall: over this many iterations, the largest relative gap of the later half is at
#: least 0.9 x the largest of the earlier half ...
STALL_WINDOW = 600  # measured: 200 and 400 flagged plateaus that later resolved
#: ... while above this (below it a flat gap is float64 round-off, i.e. convergence) ...
STALL_FLOOR = 1e-10
#: ... and while |F - F*| is above this times the first objective (F* ~ 0: relative gaps
#: are round-off over round-off).
STALL_ABSOLUTE = 1e-12


def _converged(row: Mapping, level: float) -> bool:
    """|F - F*| at round-off of the objective's early ``level``."""
    error = row.get("objective_error")
    return error is not None and level > 0 and error <= STALL_ABSOLUTE * level


def _envelope_stalled(gaps: Sequence[float], floor: float) -> bool:
    """The largest gap of the later half of ``gaps`` is at least 0.9 x the largest of the
    earlier half, and above ``floor``. Envelopes, not minima: |F - F*| dips through zero
    before the workers agree, so a minimum says nothing about progress."""
    half = len(gaps) // 2
    early, late = max(gaps[:half]), max(gaps[half:])
    return late > floor and late >= 0.9 * early


def stall_of(
    rows: Sequence[Mapping], window: int = STALL_WINDOW, floor: float = STALL_FLOOR
) -> tuple[int, float] | None:
    """(first iteration of the stalled window, largest gap in its later half) if the
    relative ``objective_gap`` of the last ``window`` rows made no progress: the largest
    gap of the window's later half is at least 0.9 x that of its earlier half, above
    ``floor``, and |F - F*| is above round-off (:data:`STALL_ABSOLUTE`); else None."""
    if len(rows) < window:
        return None
    gaps = [r.get("objective_gap") for r in rows[-window:]]
    if any(g is None or not math.isfinite(g) for g in gaps):
        return None
    early = rows[:EARLY_ITERATIONS]  # the watchdog's round-off level, from the same rows
    level = max(abs(float(r["objective"])) for r in early)
    level = max(level, abs(float(early[0].get("optimum_value") or 0.0)))
    if not _envelope_stalled(gaps, floor) or _converged(rows[-1], level):
        return None
    return int(rows[-window]["iteration"]), max(gaps[window // 2 :])


def _enter(window: deque[tuple[int, float]], index: int, gap: float, gone: int) -> None:
    """Put gap ``index`` into a sliding window's decreasing deque of (index, gap), whose
    first entry is then the window's largest gap, after dropping the gap ``gone`` (the
    one that left the window, if it is the first entry: every other one was dropped
    by a larger later gap)."""
    while window and window[-1][1] <= gap:
        window.pop()
    window.append((index, gap))
    if window[0][0] <= gone:
        window.popleft()


STALL_CAUSES = "ill-conditioned data or a step size far from its best"
"""What a stall message names by default (an algorithm's ``Worker.stall_causes``)."""
DRIFT = 3.0
"""The workers drift apart when, after the first iterations, their objective has risen to
``DRIFT`` times its lowest value while their edge disagreement has grown ``DRIFT``-fold
since that lowest point. Measured: Malcom-PSGD at consensus-step 0.1 (its old default) on the
digits MLP (s = 1, d = 4,810), lowest objective 3.2 at iteration 300, 18.9 at 500 with
the disagreement x4.5; converging runs (GADMM on non-IID data included, whose objective
rises as the workers agree) do not grow both."""
DRIFT_ADVICE = "a step size too large for this model"
"""What a drift message names by default (an algorithm's ``Worker.drift_advice``)."""


class Watchdog:
    """Watches the history rows of a run as they come.

    Divergence: the objective F is not finite, or exceeds :data:`GROWTH_LIMIT` times its
    largest value over the first :data:`EARLY_ITERATIONS` iterations (and |F*|): growth
    relative to the run itself, caught long before the models overflow.
    :meth:`check` raises FloatingPointError then. A stall (:func:`stall_of`) and a drift
    (:data:`DRIFT`: the objective and the workers' disagreement rising together) are not
    errors: :meth:`check` returns a message once each, the first time it is seen.
    """

    def __init__(
        self,
        growth: float = GROWTH_LIMIT,
        early: int = EARLY_ITERATIONS,
        window: int = STALL_WINDOW,
    ) -> None:
        self.growth, self.early, self.window = float(growth), int(early), int(window)
        self.level = 0.0  # largest |F| (and |F*|) over the first iterations
        self.seen = 0
        self.gaps: deque[float] = deque(maxlen=max(self.window, 0))  # the last ``window``
        # relative gaps, and the maxima of their halves as they come (the gaps[:window //
        # 2] and the rest, as _envelope_stalled splits them): (index, gap) in decreasing
        # deques, each gap pushed and dropped once instead of two max() of window / 2
        self._count = 0
        self._early: deque[tuple[int, float]] = deque()
        self._late: deque[tuple[int, float]] = deque()
        self.stalled = False
        self.lowest: tuple[int, float, float] | None = None  # (k, F, edge disagreement)
        self.drifting = False

    def check(
        self,
        row: Mapping,
        optimum: float | None = None,
        advice: str | Callable[[], str] = "",
        causes: str = STALL_CAUSES,
        drift: str = DRIFT_ADVICE,
    ) -> str | None:
        """Raise FloatingPointError if ``row`` shows divergence; return a stall message
        the first time the gap stops improving, a drift message the first time the
        workers drift apart; else None. ``advice`` (or what calling it returns, only when
        raising) ends the divergence message; ``causes`` (the algorithm's
        ``Worker.stall_causes``) is what the stall message names, ``drift`` (its
        ``Worker.drift_advice``) what the drift message advises."""
        k, f = int(row["iteration"]), float(row["objective"])
        if not math.isfinite(f):
            advice = advice() if callable(advice) else advice
            raise FloatingPointError(
                f"the run diverged at iteration {k}: the objective is {f}; {advice}".rstrip("; ")
            )
        if self.seen < self.early:
            self.seen += 1
            self.level = max(self.level, abs(f), abs(optimum or 0.0))
        elif self.level > 0 and abs(f) > self.growth * self.level:
            advice = advice() if callable(advice) else advice
            raise FloatingPointError(
                f"the run diverged at iteration {k}: the objective grew to {f:.3g}, more than "
                f"{self.growth:g} times its level over the first {self.early} iterations "
                f"({self.level:.3g}); {advice}".rstrip("; ")
            )
        edge = row.get("edge_disagreement")
        if edge is not None and not self.drifting and self.seen >= self.early:
            message = self._drift(k, f, float(edge), drift)
            if message is not None:
                return message
        gap = row.get("objective_gap")
        if gap is None or self.stalled or not math.isfinite(gap):
            return None
        self._push(float(gap))
        if len(self.gaps) < self.window or _converged(row, self.level):
            return None
        if self._envelope_stalled():
            self.stalled = True
            return (
                f"the run stalls: the relative gap made no progress over iterations "
                f"{k - self.window + 1}..{k} (largest gap of the last {self.window // 2}: "
                f"{max(list(self.gaps)[self.window // 2 :]):.3e}); the run goes on ({causes}: "
                "more iterations may not help much)"
            )
        return None

    def drift_of(self, rows: Sequence[Mapping]) -> tuple[int, str] | None:
        """(iteration, message) of the first drift in a whole history (:data:`DRIFT`), as
        :meth:`check` finds it row by row; None if the workers never drift apart."""
        for i, row in enumerate(rows):
            edge = row.get("edge_disagreement")
            if i < self.early or edge is None or not math.isfinite(row["objective"]):
                continue
            message = self._drift(int(row["iteration"]), float(row["objective"]), edge, "")
            if message is not None:
                return int(row["iteration"]), message
        return None

    def _drift(self, k: int, f: float, edge: float, advice: str) -> str | None:
        """The drift message (:data:`DRIFT`) the first time it applies, else None."""
        if self.lowest is None or f < self.lowest[1]:
            self.lowest = (k, f, edge)
            return None
        at, low, edge_then = self.lowest
        if not (low > 0 and f > DRIFT * low and edge > DRIFT * edge_then):
            return None
        self.drifting = True
        return (
            f"the workers drift apart: the objective rose to {f:.3g}, {f / low:.1f} times its "
            f"lowest ({low:.3g} at iteration {at}), while their disagreement grew from "
            f"{edge_then:.3g} to {edge:.3g}; the run goes on (likely cause: {advice})"
        )

    def _push(self, gap: float) -> None:
        """Append ``gap`` to :attr:`gaps` and to the maxima of their two halves."""
        gaps = self.gaps
        gaps.append(gap)
        if self.window < 2:  # no halves to keep (_envelope_stalled reads the gaps)
            return
        i, self._count = self._count, self._count + 1
        later = self.window - self.window // 2  # the gaps of the later half
        _enter(self._late, i, gap, i - later)
        if i >= later:  # gap i - later leaves the later half for the earlier one
            _enter(self._early, i - later, gaps[-later - 1], i - self.window)

    def _envelope_stalled(self) -> bool:
        """:func:`_envelope_stalled` of :attr:`gaps` (full) from the halves' maxima: the
        same comparisons of the same largest values."""
        if self.window < 2:
            return _envelope_stalled(list(self.gaps), STALL_FLOOR)
        early, late = self._early[0][1], self._late[0][1]
        return late > STALL_FLOOR and late >= 0.9 * early
