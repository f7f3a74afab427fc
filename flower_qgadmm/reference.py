"""Single-process reference runner: all workers in one process, no Flower.

The fast path for experiments and the oracle for the Flower binding's tests. It drives
the same :class:`~flower_qgadmm.algorithms.GadmmNode` objects the ClientApp uses, in the
same order: per iteration, the head phase then the tail phase; in a phase every active
worker steps and its payload is delivered to each neighbour.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .algorithms import GadmmNode
from .config import GadmmConfig
from .metrics import Optimum, history_row
from .solvers import LeastSquaresSolver
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


def build_nodes(
    cfg: GadmmConfig, datasets: Sequence[tuple[np.ndarray, np.ndarray]], graph: Graph
) -> list[GadmmNode]:
    """One :class:`GadmmNode` per worker, with its data and neighbours."""
    if len(datasets) != graph.num_nodes:
        raise ValueError(f"{len(datasets)} datasets for a graph of {graph.num_nodes} workers")
    dims = {X.shape[1] for X, _ in datasets}
    if len(dims) != 1:
        raise ValueError(f"workers disagree on the model dimension: {sorted(dims)}")
    return [
        GadmmNode(n, graph.neighbours(n), graph.group(n), LeastSquaresSolver(X, y, cfg.l2), cfg)
        for n, (X, y) in enumerate(datasets)
    ]


def run_reference(
    cfg: GadmmConfig,
    datasets: Sequence[tuple[np.ndarray, np.ndarray]],
    iterations: int,
    graph: Graph | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> ReferenceResult:
    """Run GADMM / Q-GADMM for ``iterations``: history rows and final models.

    Parameters
    ----------
    cfg : GadmmConfig
        Algorithm settings.
    datasets : sequence of (X_n, y_n)
        Worker n's data; worker n sits at position n of the graph.
    iterations : int
        Number of iterations (each = head phase + tail phase).
    graph : Graph, optional
        Communication graph (default: the chain over all workers).
    on_row : callable, optional
        Called with each history row as it is produced (progress logging).
    """
    graph = graph or chain(len(datasets))
    nodes = build_nodes(cfg, datasets, graph)
    optimum = Optimum.from_statistics([n.solver.sufficient_statistics() for n in nodes])
    bits = nominal = sent = 0
    history = []
    for k in range(1, iterations + 1):
        for members in graph.colouring():
            payloads = {n: nodes[n].step(k) for n in members}
            for n, payload in payloads.items():
                bits += nodes[n].last_payload_bits
                nominal += nodes[n].last_nominal_bits
                sent += 1
                for m in graph.neighbours(n):
                    nodes[m].receive(n, payload)
        row = history_row(
            k,
            [n.theta for n in nodes],
            [n.objective() for n in nodes],
            optimum,
            bits,
            nominal,
            sent,
        )
        history.append(row)
        if on_row is not None:
            on_row(row)
    return ReferenceResult(history, np.stack([n.theta for n in nodes]))
