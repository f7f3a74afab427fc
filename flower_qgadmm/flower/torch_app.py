"""Drop-in API for PyTorch models: a ClientApp from (model_fn, loaders, loss_fn).

The returned ClientApp answers both our relay (:class:`RelayStrategy` with any
algorithm that takes stochastic steps: ``"sgadmm"``, ``"q-sgadmm"``, ``"d-psgd"``) and
Flower's own ``FedAvg`` (``train`` / ``evaluate``), so one project can compare them:
as :func:`~flower_qgadmm.flower.run_flower_fedavg` drives it (the flat model as
``arrays["theta"]``, our solver settings and seed as the config) or as a project's own
``FedAvg`` sends the model's ``state_dict`` (see
:func:`~flower_qgadmm.flower.add_fedavg_handlers`). Pass ``fedavg=False`` to keep
handlers of your own. Settings (optimizer, lr, local steps, rho, bits, ...) come from
the ServerApp: the relay sends them at set-up; :func:`run_flower_fedavg` as
``train_config``; a project's FedAvg from the run config and its ``train_config``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from flwr.app import Context
from flwr.clientapp import ClientApp
from torch import nn
from torch.utils.data import DataLoader

from ..config import SolverSettings
from ..torch_solver import LossFn, TorchSolver, seeded_model
from .client import NamedClientApp, SolverFn, make_client_app, partition_of
from .fedavg import add_fedavg_handlers

LoaderFn = Callable[[Context], DataLoader]


def takes_context(model_fn: Callable[..., nn.Module]) -> bool:
    """``model_fn`` has exactly one required positional parameter: it is called as
    ``model_fn(context)`` (e.g. to pick the model from ``context.run_config``), else as
    ``model_fn()`` (a model class whose arguments all have defaults)."""
    return len(_required(model_fn)) == 1


def _required(model_fn: Callable[..., nn.Module]) -> list[inspect.Parameter]:
    """The required positional parameters of ``model_fn`` (none without a signature)."""
    try:
        parameters = inspect.signature(model_fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: called without
        return []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p for p in parameters if p.kind in positional and p.default is p.empty]


def torch_solver_fn(
    model_fn: Callable[..., nn.Module],
    train_loader_fn: LoaderFn,
    test_loader_fn: LoaderFn | None = None,
    loss_fn: LossFn | None = None,
) -> SolverFn:
    """``solver_fn(context, settings, seed)`` building this node's :class:`TorchSolver`
    (optimizer, lr, local steps, ``same-batch``, ``loss-reduction`` and ``device`` from
    the settings); ``model_fn()`` or ``model_fn(context)`` (:func:`takes_context`)."""
    with_context = takes_context(model_fn)

    def with_the_context(context: Context) -> nn.Module:
        try:
            return model_fn(context)
        except TypeError as exc:  # e.g. Net(num_classes) given the Context as num_classes
            name = getattr(model_fn, "__name__", "model_fn")
            if name == "<lambda>":  # a function of the context: its own error
                raise
            param = _required(model_fn)[0].name
            raise TypeError(
                f"{name}(context) failed ({exc}): a model_fn with one required parameter "
                f"({param!r}) is called with the Context; if {param!r} is not the Context, "
                f"pass a function building the model, e.g. lambda: {name}(...)"
            ) from exc

    def solver_fn(context: Context, cfg: SolverSettings, seed: int) -> TorchSolver:
        pid, _ = partition_of(context)
        build = (lambda: with_the_context(context)) if with_context else model_fn
        return TorchSolver(
            seeded_model(build, seed),
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
    model_fn: Callable[..., nn.Module],
    train_loader_fn: LoaderFn,
    test_loader_fn: LoaderFn | None = None,
    loss_fn: LossFn | None = None,
    app: ClientApp | None = None,
    fedavg: bool = True,
) -> ClientApp:
    """A ClientApp for any PyTorch model: a worker of every registered algorithm (Q-SGADMM,
    the gossip family) and a client of the FedAvg baseline.

    Parameters
    ----------
    model_fn : callable
        ``model_fn() -> nn.Module``, or ``model_fn(context)`` (one required parameter: to
        pick the model from the run config); called under a seeded RNG, so every worker
        starts from the same model.
    train_loader_fn, test_loader_fn : callable
        ``fn(context) -> DataLoader`` of this node's data (read ``partition-id`` from
        ``context.node_config``): map-style or ``IterableDataset``, any sampler (e.g. a
        shared dataset with a ``SubsetRandomSampler`` per node). Shuffling uses torch's
        RNG, which the solver seeds per (seed, worker, iteration).
    loss_fn : callable, optional
        ``loss_fn(outputs, targets)`` (default: ``nn.CrossEntropyLoss()``). With a test
        loader, workers report ``accuracy`` for classification (outputs ``(B, C)``, C > 1,
        integer targets), else ``test_loss`` (e.g. regression with ``nn.MSELoss()``).

    app : ClientApp, optional
        Register the handlers on your existing ClientApp (default: a new one); the
        workers' messages have their own names (``query.*``, ``train.step``).
    fedavg : bool
        Also answer Flower's ``FedAvg`` (:func:`~flower_qgadmm.flower.run_flower_fedavg`,
        or your project's own sending a ``state_dict``) with the default ``train`` /
        ``evaluate`` handlers (default: True); False when your ClientApp has its own.

    The model may be float32, float64 or bfloat16 and runs on the ``device`` setting
    ('cpu', 'cuda', 'cuda:N', 'mps'); see :class:`~flower_qgadmm.torch_solver.TorchSolver`.
    """
    solver_fn = torch_solver_fn(model_fn, train_loader_fn, test_loader_fn, loss_fn)
    app = app if app is not None else NamedClientApp()
    if fedavg:  # first: a clash with the app's own handlers registers none of ours
        try:
            add_fedavg_handlers(app, solver_fn)
        except ValueError as exc:  # Flower's: the app has a train / evaluate handler
            if "already registered" not in str(exc):
                raise
            raise ValueError(
                f"torch_client_app(..., app=app): {exc} Your ClientApp has its own "
                "train / evaluate handlers: pass fedavg=False to keep them (flower-qgadmm's "
                "workers answer their own messages only)"
            ) from exc
    return make_client_app(solver_fn, app)
