"""Per-iteration history: the papers' objective error plus consensus and bit counters.

One function computes a history row from the workers' models and local objectives, so
the reference runner and the Flower strategy report identical numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Optimum:
    """Centralized least-squares optimum theta* and F* = sum_n f_n(theta*)."""

    theta: np.ndarray
    value: float


def optimal_model(stats: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """theta* from each worker's (X^T X + l2 I, X^T y), summed in worker order:
    the solution of A theta = b (least-squares solution if A is singular).

    F* is then sum_n f_n(theta*) evaluated by each worker from its residuals; the
    closed form (y^T y - b^T theta*) / 2 cancels badly near a good fit.
    """
    gram = sum(s[0] for s in stats)
    xty = sum(s[1] for s in stats)
    return np.linalg.lstsq(gram, xty, rcond=None)[0]


def history_row(
    iteration: int,
    thetas: Sequence[np.ndarray],
    reports: Sequence[Mapping[str, float]],
    bits: int,
    nominal_bits: int,
    transmissions: int,
    optimum: Optimum | None = None,
    extra: Mapping[str, float] | None = None,
) -> dict[str, float | int]:
    """One JSON-Lines row from the workers' models and reports (``GadmmNode.metrics``).

    Keys: ``objective`` F = sum_n f_n(theta_n) and ``train_loss`` = F / N;
    ``consensus_error`` sqrt(mean_n ||theta_n - theta_bar||^2); with a known optimum,
    ``objective_gap`` |F - F*| / |F*| and ``optimum_distance`` ||theta_bar - theta*|| /
    ||theta*||; ``accuracy`` (mean over workers) when the workers report one; cumulative
    ``bits`` (8 * payload bytes), ``nominal_bits`` (paper's formula), ``transmissions``;
    then ``extra`` (e.g. the mean model's test accuracy).
    """
    models = np.stack(thetas)
    mean = models.mean(axis=0)
    f = float(np.sum([r["objective"] for r in reports]))
    row: dict[str, float | int] = {"iteration": int(iteration), "objective": f}
    if optimum is not None:
        denom = abs(optimum.value) if optimum.value != 0 else 1.0
        ref = float(np.linalg.norm(optimum.theta)) or 1.0
        row["objective_gap"] = abs(f - optimum.value) / denom
    row["train_loss"] = f / len(reports)
    row["consensus_error"] = float(np.sqrt(np.mean(np.sum((models - mean) ** 2, axis=1))))
    if optimum is not None:
        row["optimum_distance"] = float(np.linalg.norm(mean - optimum.theta)) / ref
    if all("accuracy" in r for r in reports):
        row["accuracy"] = float(np.mean([r["accuracy"] for r in reports]))
    row.update(bits=int(bits), nominal_bits=int(nominal_bits), transmissions=int(transmissions))
    row.update(extra or {})
    return row
