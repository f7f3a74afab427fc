"""Drop-in API for PyTorch models: a ClientApp from (model_fn, loaders, loss_fn).

The returned ClientApp answers both our relay (:class:`GadmmRelay` with
``algorithm="sgadmm"`` or ``"q-sgadmm"``) and Flower's own FedAvg (``train`` /
``evaluate`` messages carrying the flat model as ``arrays["theta"]``), so one project
can compare them. Settings (optimizer, lr, local steps, rho, bits, ...) come from the
ServerApp: the relay sends its GadmmConfig at set-up; for FedAvg pass the same fields
as ``train_config``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn
from torch.utils.data import DataLoader

from ..config import GadmmConfig
from ..torch_solver import LossFn, TorchSolver, seeded_model
from .client import SolverFn, config_dict, make_client_app, partition_of

LoaderFn = Callable[[Context], DataLoader]


def torch_solver_fn(
    model_fn: Callable[[], nn.Module],
    train_loader_fn: LoaderFn,
    test_loader_fn: LoaderFn | None = None,
    loss_fn: LossFn | None = None,
) -> SolverFn:
    """``solver_fn(context, config)`` building this node's :class:`TorchSolver`."""

    def solver_fn(context: Context, cfg: GadmmConfig) -> TorchSolver:
        pid, _ = partition_of(context)
        return TorchSolver(
            seeded_model(model_fn, cfg.seed),
            train_loader_fn(context),
            loss_fn if loss_fn is not None else nn.CrossEntropyLoss(),
            test_loader_fn(context) if test_loader_fn is not None else None,
            optimizer=cfg.optimizer,
            lr=cfg.lr,
            local_steps=cfg.local_steps,
            name=f"worker {pid}",
        )

    return solver_fn


def fedavg_train_config(cfg: GadmmConfig) -> ConfigRecord:
    """The ``train_config`` to pass to Flower's FedAvg so clients train like our workers."""
    return ConfigRecord(asdict(cfg))


def model_array(theta: np.ndarray) -> Array:
    """A flat model as FedAvg exchanges it (float32)."""
    return Array(np.ascontiguousarray(theta, dtype=np.float32))


def add_fedavg_handlers(app: ClientApp, solver_fn: SolverFn) -> None:
    """Register FedAvg's ``train`` / ``evaluate`` handlers using the same local solver."""

    def _solver(msg: Message, context: Context) -> tuple[TorchSolver, GadmmConfig, np.ndarray]:
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


def torch_client_app(
    model_fn: Callable[[], nn.Module],
    train_loader_fn: LoaderFn,
    test_loader_fn: LoaderFn | None = None,
    loss_fn: LossFn | None = None,
) -> ClientApp:
    """A ClientApp for any PyTorch model: SGADMM / Q-SGADMM worker and FedAvg client.

    Parameters
    ----------
    model_fn : callable
        ``model_fn() -> nn.Module``; called under a seeded RNG, so every worker starts
        from the same model.
    train_loader_fn, test_loader_fn : callable
        ``fn(context) -> DataLoader`` of this node's data (read ``partition-id`` from
        ``context.node_config``). Shuffling uses torch's RNG, which the solver seeds per
        (seed, worker, iteration).
    loss_fn : callable, optional
        ``loss_fn(outputs, targets)`` (default: ``nn.CrossEntropyLoss()``); accuracy is
        reported for classification outputs when a test loader is given.
    """
    solver_fn = torch_solver_fn(model_fn, train_loader_fn, test_loader_fn, loss_fn)
    app = make_client_app(solver_fn)
    add_fedavg_handlers(app, solver_fn)
    return app
