"""FedAvg baseline on the same solvers, data and history format.

The Flower path uses Flower's own ``FedAvg`` strategy (see :func:`run_flower_fedavg`);
the reference path below is the plain loop for quick offline comparisons. Bits are the
measured bytes of the float32 model Array each worker downloads and uploads per round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .config import GadmmConfig
from .metrics import history_row
from .solvers import LocalSolver


def model_bytes(dim: int) -> int:
    """Bytes of one float32 model as a Flower Array (numpy serialization, with header)."""
    from flwr.app import Array

    return len(Array(np.zeros(dim, dtype=np.float32)).data)


def fedavg_row(
    k: int,
    theta: np.ndarray,
    train_loss: float,
    num_workers: int,
    dim: int,
    evaluate: Callable[[np.ndarray], dict[str, float]] | None,
) -> dict:
    """A history row for round k of FedAvg (all workers hold the global model)."""
    per_round = 2 * num_workers * model_bytes(dim) * 8
    counters = {
        "bits": per_round * k,
        "nominal_bits": per_round * k,
        "transmissions": 2 * num_workers * k,
        "round_transmissions": 2 * num_workers,
        "censored": 0,
    }
    extra = evaluate(theta) if evaluate is not None else None
    row = history_row(k, [theta], [{"objective": train_loss}], counters, extra=extra)
    row["train_loss"] = train_loss
    return row


def run_fedavg_reference(
    cfg: GadmmConfig,
    solvers: Sequence[LocalSolver],
    rounds: int,
    evaluate: Callable[[np.ndarray], dict[str, float]] | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Plain FedAvg: each worker runs ``local_steps`` from the global model; the server
    averages the models weighted by local sample counts (float32 on the wire)."""
    theta = solvers[0].initial()
    sizes = np.array([len(s.train_loader.dataset) for s in solvers], dtype=np.float64)
    history = []
    for k in range(1, rounds + 1):
        zeros = np.zeros_like(theta)
        local = [
            s.solve(zeros, 0.0, theta, (cfg.seed, w, k)).astype(np.float32)
            for w, s in enumerate(solvers)
        ]
        losses = [s.objective(m.astype(np.float64)) for s, m in zip(solvers, local, strict=True)]
        theta = (np.tensordot(sizes, np.stack(local), axes=1) / sizes.sum()).astype(np.float64)
        row = fedavg_row(
            k, theta, float(np.dot(sizes, losses) / sizes.sum()), len(solvers), theta.size, evaluate
        )
        history.append(row)
        if on_row is not None:
            on_row(row)
    return history
