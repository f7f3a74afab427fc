"""Drop-in API for PyTorch models: a ClientApp from (model_fn, loaders, loss_fn).

The returned ClientApp answers both our relay (:class:`RelayStrategy` with any
algorithm that takes stochastic steps: ``"sgadmm"``, ``"q-sgadmm"``, ``"d-psgd"``) and
Flower's own FedAvg (``train`` / ``evaluate`` messages carrying the flat model as
``arrays["theta"]``), so one project can compare them. Settings (optimizer, lr, local
steps, rho, bits, ...) come from the ServerApp: the relay sends them at set-up; for
FedAvg :func:`~flower_qgadmm.flower.run_flower_fedavg` sends them as ``train_config``.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context
from flwr.clientapp import ClientApp
from torch import nn
from torch.utils.data import DataLoader

from ..config import SolverSettings
from ..torch_solver import LossFn, TorchSolver, seeded_model
from .client import SolverFn, make_client_app, partition_of
from .fedavg import add_fedavg_handlers

LoaderFn = Callable[[Context], DataLoader]


def torch_solver_fn(
    model_fn: Callable[[], nn.Module],
    train_loader_fn: LoaderFn,
    test_loader_fn: LoaderFn | None = None,
    loss_fn: LossFn | None = None,
) -> SolverFn:
    """``solver_fn(context, settings, seed)`` building this node's :class:`TorchSolver`
    (optimizer, lr, local steps, ``same-batch``, ``loss-reduction`` and ``device`` from
    the settings)."""

    def solver_fn(context: Context, cfg: SolverSettings, seed: int) -> TorchSolver:
        pid, _ = partition_of(context)
        return TorchSolver(
            seeded_model(model_fn, seed),
            train_loader_fn(context),
            loss_fn if loss_fn is not None else nn.CrossEntropyLoss(),
            test_loader_fn(context) if test_loader_fn is not None else None,
            optimizer=cfg.optimizer,
            lr=cfg.lr,
            local_steps=cfg.local_steps,
            name=f"worker {pid}",
            device=cfg.device,
            same_batch=cfg.same_batch,
            loss_reduction=cfg.loss_reduction,
        )

    return solver_fn


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
        ``context.node_config``): map-style or ``IterableDataset``, any sampler (e.g. a
        shared dataset with a ``SubsetRandomSampler`` per node). Shuffling uses torch's
        RNG, which the solver seeds per (seed, worker, iteration).
    loss_fn : callable, optional
        ``loss_fn(outputs, targets)`` (default: ``nn.CrossEntropyLoss()``). With a test
        loader, workers report ``accuracy`` for classification (outputs ``(B, C)``, C > 1,
        integer targets), else ``test_loss`` (e.g. regression with ``nn.MSELoss()``).

    The model may be float32, float64 or bfloat16 and runs on the ``device`` setting
    ('cpu', 'cuda', 'cuda:N', 'mps'); see :class:`~flower_qgadmm.torch_solver.TorchSolver`.
    """
    solver_fn = torch_solver_fn(model_fn, train_loader_fn, test_loader_fn, loss_fn)
    app = make_client_app(solver_fn)
    add_fedavg_handlers(app, solver_fn)
    return app
