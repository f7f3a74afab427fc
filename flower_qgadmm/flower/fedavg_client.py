"""FedAvg ``train`` / ``evaluate`` handlers on our local solvers (no torch import here, so
a ClientApp that only runs linear regression starts fast in deployment)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..config import GadmmConfig
from .client import SolverFn, config_dict, partition_of


def fedavg_train_config(cfg: GadmmConfig) -> ConfigRecord:
    """The ``train_config`` to pass to Flower's FedAvg so clients train like our workers."""
    return ConfigRecord(asdict(cfg))


def model_array(theta: np.ndarray) -> Array:
    """A flat model as FedAvg exchanges it (float32)."""
    return Array(np.ascontiguousarray(theta, dtype=np.float32))


def add_fedavg_handlers(app: ClientApp, solver_fn: SolverFn) -> None:
    """Register FedAvg's ``train`` / ``evaluate`` handlers using the same local solver."""

    def _solver(msg: Message, context: Context) -> tuple[Any, GadmmConfig, np.ndarray]:
        settings = config_dict(msg.content["config"]) if "config" in msg.content else {}
        known = GadmmConfig.__dataclass_fields__
        cfg = GadmmConfig(**{k: v for k, v in settings.items() if k in known})
        solver = solver_fn(context, cfg)
        theta = msg.content["arrays"]["theta"].numpy().astype(np.float64)
        if theta.shape != (solver.dim,):
            raise ValueError(f"global model has {theta.shape[0]} entries, local model {solver.dim}")
        return solver, cfg, theta

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        solver, cfg, theta = _solver(msg, context)
        pid, _ = partition_of(context)
        k = int(msg.content["config"].get("server-round", 0)) if "config" in msg.content else 0
        new = solver.solve(np.zeros(solver.dim), 0.0, theta, (cfg.seed, pid, k))
        metrics = {
            "num-examples": len(solver.train_loader.dataset),
            "train-loss": solver.objective(new),
        }
        content = RecordDict(
            {"arrays": ArrayRecord({"theta": model_array(new)}), "metrics": MetricRecord(metrics)}
        )
        return Message(content, reply_to=msg)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        solver, _, theta = _solver(msg, context)
        metrics = {"num-examples": len(solver.train_loader.dataset), **solver.evaluate(theta)}
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
