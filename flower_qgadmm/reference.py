"""Single-process reference runner: all workers in one process, no Flower.

The fast path for experiments and the oracle for the Flower binding's tests. It drives
the same :class:`~flower_qgadmm.algorithms.GadmmNode` objects the ClientApp uses, in the
same order: per iteration, the head phase then the tail phase; in a phase every active
worker steps and its payload is delivered to each neighbour.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .algorithms import GadmmNode
from .config import GadmmConfig
from .metrics import Accountant, Optimum, history_row, optimal_model
from .solvers import LeastSquaresSolver, LocalSolver
from .topology import Graph, chain

log = logging.getLogger(__name__)


@dataclass
class ReferenceResult:
    """History rows (one per iteration) and the workers' final models (N x d)."""

    history: list[dict]
    models: np.ndarray

    @property
    def mean_model(self) -> np.ndarray:
        """Average of the workers' models."""
        return self.models.mean(axis=0)


def least_squares_solvers(
    datasets: Sequence[tuple[np.ndarray, np.ndarray]], l2: float = 0.0
) -> list[LeastSquaresSolver]:
    """One exact solver per worker's (X_n, y_n)."""
    return [LeastSquaresSolver(X, y, l2) for X, y in datasets]


def build_nodes(cfg: GadmmConfig, solvers: Sequence[LocalSolver], graph: Graph) -> list[GadmmNode]:
    """One :class:`GadmmNode` per worker, with its solver (data) and neighbours."""
    if len(solvers) != graph.num_nodes:
        raise ValueError(f"{len(solvers)} workers for a graph of {graph.num_nodes} nodes")
    dims = [s.dim for s in solvers]
    if len(set(dims)) != 1:
        raise ValueError(f"workers disagree on the model dimension: {dims} (by worker)")
    return [
        GadmmNode(n, graph.neighbours(n), graph.group(n), solver, cfg)
        for n, solver in enumerate(solvers)
    ]


def optimum_of(solvers: Sequence[LocalSolver]) -> Optimum | None:
    """The centralized optimum when every solver exposes sufficient statistics."""
    if all(hasattr(s, "sufficient_statistics") for s in solvers):
        theta = optimal_model([s.sufficient_statistics() for s in solvers])
        return Optimum(theta, float(sum(s.objective(theta) for s in solvers)))
    return None


def run_reference(
    cfg: GadmmConfig,
    solvers: Sequence[LocalSolver],
    iterations: int,
    graph: Graph | None = None,
    on_row: Callable[[dict], None] | None = None,
    evaluate: Callable[[np.ndarray], dict[str, float]] | None = None,
    failures: Mapping[int, int] | None = None,
) -> ReferenceResult:
    """Run (Q-)GADMM / (Q-)SGADMM for ``iterations``: history rows and final models.

    Parameters
    ----------
    cfg : GadmmConfig
        Algorithm settings.
    solvers : sequence of LocalSolver
        Worker n's local solver (its data); worker n sits at position n of the graph.
        For least squares use :func:`least_squares_solvers`.
    iterations : int
        Number of iterations (each = head phase + tail phase).
    graph : Graph, optional
        Communication graph (default: the chain over all workers).
    on_row : callable, optional
        Called with each history row as it is produced (progress logging).
    evaluate : callable, optional
        ``evaluate(mean model) -> metrics`` added to each row (e.g. test accuracy).
    failures : mapping of worker -> iteration, optional
        Workers that stop answering from that iteration on (a dropout): for the rest of
        that iteration they count as censored; then the graph is repaired
        (:meth:`Graph.repaired`) and the run continues on the remaining workers, whose
        history rows and optimum it reports.
    """
    graph = graph or chain(len(solvers))
    nodes = build_nodes(cfg, solvers, graph)
    optimum = optimum_of(solvers)
    accountant = Accountant(graph)
    failures = dict(failures or {})
    history = []
    for k in range(1, iterations + 1):
        accountant.start_round()
        failed = {w for w, at in failures.items() if at == k}
        for members in graph.colouring():
            payloads = {n: nodes[n].step(k) for n in members if n not in failed}
            for n, payload in payloads.items():
                if payload is None:  # censored: neighbours keep the stale copy
                    accountant.skipped(n)
                    continue
                accountant.sent(n, nodes[n].last_payload_bits, nodes[n].last_nominal_bits)
                for m in graph.neighbours(n):
                    nodes[m].receive(n, payload)
        if failed:
            graph = repair(nodes, graph, failed, accountant)
            optimum = optimum_of([solvers[n] for n in graph.active])
        alive = [nodes[n] for n in graph.active]
        thetas = [n.theta for n in alive]
        extra = evaluate(np.mean(thetas, axis=0)) if evaluate is not None else None
        row = history_row(
            k, thetas, [n.metrics() for n in alive], accountant.counters(), optimum, extra
        )
        history.append(row)
        if on_row is not None:
            on_row(row)
    return ReferenceResult(history, np.stack([nodes[n].theta for n in graph.active]))


def repair(
    nodes: Sequence[GadmmNode], graph: Graph, failed: set[int], accountant: Accountant
) -> Graph:
    """Remove ``failed`` workers between two iterations and rewire the others.

    A new edge needs each end's current public copy at the other end: those copies are
    sent in full (float64) and counted as repair bits.
    """
    new = graph.repaired(failed)
    log.warning("workers %s left; repaired graph edges: %s", sorted(failed), new.edges)
    for n in new.active:
        copies = {
            m: nodes[m].public_copy() for m in new.neighbours(n) if m not in graph.neighbours(n)
        }
        for m, copy in copies.items():
            accountant.repaired(m, 64 * copy.size)
        nodes[n].rewire(new.neighbours(n), new.group(n), copies)
    accountant.set_graph(new)
    return new
