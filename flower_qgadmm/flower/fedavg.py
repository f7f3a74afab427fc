"""Flower's own FedAvg, run on the same ClientApp and written in our history format."""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from ..config import GadmmConfig
from ..fedavg import fedavg_row
from .fedavg_client import fedavg_train_config, model_array
from .strategy import progress_line


class RecordingFedAvg(FedAvg):
    """Flower's FedAvg that keeps each round's aggregated train metrics."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.train_metrics: dict[int, MetricRecord] = {}

    def aggregate_train(self, server_round, replies):  # noqa: D102
        arrays, metrics = super().aggregate_train(server_round, replies)
        if metrics is not None:
            self.train_metrics[server_round] = metrics
        return arrays, metrics


def run_flower_fedavg(
    grid: Grid,
    cfg: GadmmConfig,
    num_workers: int,
    theta0: np.ndarray,
    num_rounds: int,
    timeout: float,
    evaluate: Callable[[np.ndarray], dict[str, float]] | None = None,
) -> list[dict]:
    """Run ``flwr.serverapp.strategy.FedAvg`` over all ``num_workers`` nodes; return rows."""
    strategy = RecordingFedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=num_workers,
        min_evaluate_nodes=0,
        min_available_nodes=num_workers,
    )
    history: list[dict] = []

    def central(k: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Runs after each round's aggregation: write our history row."""
        if k == 0:
            return None
        theta = arrays["theta"].numpy().astype(np.float64)
        metrics = strategy.train_metrics.get(k, MetricRecord())
        loss = float(metrics["train-loss"]) if "train-loss" in metrics else float("nan")
        row = fedavg_row(k, theta, loss, num_workers, theta.size, evaluate)
        history.append(row)
        log(INFO, "[ROUND %d/%d] %s", k, num_rounds, progress_line(row))
        return None

    strategy.start(
        grid,
        initial_arrays=ArrayRecord({"theta": model_array(theta0)}),
        num_rounds=num_rounds,
        timeout=timeout,
        train_config=fedavg_train_config(cfg),
        evaluate_fn=central,
    )
    return history
