"""The FedAvg baseline: Flower's own ``FedAvg`` strategy on our local solvers, written in
our history format. Both sides live here: :func:`add_fedavg_handlers` (ClientApp
``train`` / ``evaluate``) and :func:`run_flower_fedavg` (ServerApp).

The handlers answer two kinds of FedAvg messages: :func:`run_flower_fedavg`'s (the flat
model as ``arrays["theta"]``, our solver settings and the seed as the config), and those
of a ``flwr.serverapp.strategy.FedAvg`` of the user's own project (the model's
``state_dict`` as the ``arrays``, e.g. ``initial_arrays=ArrayRecord(Net().state_dict())``,
and the project's ``train_config``): see :func:`add_fedavg_handlers`.

Bits are the measured bytes of the float32 model Array each worker downloads and
uploads per round; the Flower bytes of every message are counted by
:class:`~flower_qgadmm.flower.metering.MeteredGrid`, as for our relay.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from ..config import FedAvgSettings, SolverSettings
from ..history import progress_line
from ..metrics import history_row
from ..settings import at_least, coerce, keys_of
from ..solvers import LocalSolver
from .client import SolverFn, partition_of, solver_from_record, solver_settings_record
from .metering import MeteredGrid
from .records import numpy_record, record_numpy, record_state, state_record


def model_array(theta: np.ndarray) -> Array:
    """A flat model as FedAvg exchanges it (float32)."""
    return Array(np.ascontiguousarray(theta, dtype=np.float32))


def model_bytes(dim: int) -> int:
    """Bytes of one float32 model as a Flower Array (numpy serialization, with header)."""
    return len(model_array(np.zeros(dim)).data)


def fedavg_row(
    k: int,
    theta: np.ndarray,
    train_loss: float,
    num_trained: int,
    evaluate: Callable[[np.ndarray], dict[str, float]] | None,
    previous: dict | None = None,
    traffic: dict[str, int] | None = None,
) -> dict:
    """A history row for round k of FedAvg (``num_trained`` workers down- and uploaded
    the model; counters accumulate from the ``previous`` row; ``traffic``: the Flower
    byte counters)."""
    sent = 2 * num_trained * model_bytes(theta.size) * 8
    before = previous or {"bits": 0, "transmissions": 0}
    counters = {
        "bits": before["bits"] + sent,
        "payload_bytes": (before["bits"] + sent) // 8,
        "nominal_bits": before["bits"] + sent,
        "transmissions": before["transmissions"] + 2 * num_trained,
        "round_transmissions": 2 * num_trained,
        "censored": 0,
    }
    extra = evaluate(theta) if evaluate is not None else None
    row = history_row(k, [{"objective": train_loss}], counters, models=[theta], extra=extra)
    row["train_loss"] = train_loss
    row.update(traffic or {})
    return row


# ---------------------------------------------------------------------- ClientApp side
def num_examples(solver: LocalSolver) -> int:
    """FedAvg's weight of a worker: the samples of its own training data (the sampler's
    length, else the dataset's; 1 when neither is known, e.g. an IterableDataset)."""
    loader = getattr(solver, "train_loader", None)
    if loader is None:
        return int(getattr(solver, "num_samples", 1))
    for source in (loader.sampler, loader.dataset):
        try:
            return len(source)
        except TypeError:
            continue
    return 1


STATE_KEPT = "fedavg.kept"
"""``context.state`` key of a node's solver state beyond the model (e.g. BatchNorm
statistics), kept from round to round."""


BASELINE_KEYS = frozenset({"seed", *keys_of(SolverSettings)})
"""Config keys of :func:`run_flower_fedavg`'s messages (:func:`solver_settings_record`):
a config holding all of them is the baseline's (the flat model); any other is a FedAvg
of the user's project (the model's ``state_dict``)."""


def project_settings(config: ConfigRecord, context: Context) -> ConfigRecord:
    """The solver settings a FedAvg of the user's own project trains with: the run
    config's solver keys (``lr``, ``local-steps``, ``optimizer``, ...) and ``seed``
    (default 0), then those of the message's config (a ``train_config`` such as Flower's
    quickstart ``{"lr": 0.01}``). The config's other keys (``server-round``, the
    project's own) are the project's and are not read."""
    solver_keys = BASELINE_KEYS - {"seed"}
    values = {k: v for k, v in context.run_config.items() if k in solver_keys}
    values.update((k, v) for k, v in config.items() if k in solver_keys)
    seed = coerce("seed", int, context.run_config.get("seed", 0))  # RunSettings' rules
    at_least("seed", seed, 0)
    return ConfigRecord({**values, "seed": seed})


def add_fedavg_handlers(app: ClientApp, solver_fn: SolverFn) -> None:
    """Register FedAvg's ``train`` / ``evaluate`` handlers using the same local solver:
    ``local-steps`` optimizer steps from the global model per round.

    Two kinds of messages are answered, told apart by their config
    (:data:`BASELINE_KEYS`):

    - :func:`run_flower_fedavg`'s: the flat model of the trainable parameters
      (``arrays["theta"]``) and our solver settings. Only those are averaged; what the
      solver keeps beyond them (:meth:`~flower_qgadmm.solvers.LocalSolver.extra_state`:
      BatchNorm statistics, frozen parameters) stays on the node, in ``context.state``,
      from round to round, as every worker of the decentralized algorithms keeps it
      (FedBN's rule for BatchNorm).
    - those of a ``flwr.serverapp.strategy.FedAvg`` of the user's own project: the
      model's whole ``state_dict`` (:meth:`~flower_qgadmm.solvers.LocalSolver.to_arrays`
      layout; buffers included, as such a FedAvg averages them) and the project's
      ``train_config``; the settings are :func:`project_settings`, and the reply carries
      the trained ``state_dict`` under the same keys. A model of other keys or shapes is
      refused naming both.

    Rounds are seeded by (seed, partition-id, ``server-round``)."""

    def _local(msg: Message, context: Context) -> tuple[LocalSolver, int, np.ndarray, bool]:
        """(solver, seed, global model, whether the message is the baseline's)."""
        for key in ("config", "arrays"):
            if key not in msg.content:
                raise ValueError(f"FedAvg message carries no {key!r} record")
        config = msg.content["config"]
        baseline = BASELINE_KEYS <= set(config.keys())
        record = config if baseline else project_settings(config, context)
        solver = solver_from_record(record, context, solver_fn)
        if not baseline:
            solver.set_initial(record_numpy(msg.content["arrays"]))
            return solver, int(record["seed"]), solver.initial(), False
        if STATE_KEPT in context.state:
            solver.load_extra_state(record_state(context.state[STATE_KEPT]))
        arrays = msg.content["arrays"]
        worker = f"worker {partition_of(context)[0]}"
        if "theta" not in arrays:
            raise ValueError(
                f"{worker}: FedAvg message has arrays {sorted(arrays)}, expected 'theta'"
            )
        theta = arrays["theta"].numpy().astype(np.float64)
        if theta.shape != (solver.dim,):
            raise ValueError(
                f"{worker}: global model has {theta.shape[0]} entries, its model {solver.dim} "
                "(every node's model_fn must build the same architecture)"
            )
        return solver, int(record["seed"]), theta, True

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        solver, seed, theta, baseline = _local(msg, context)
        pid, _ = partition_of(context)
        k = int(msg.content["config"].get("server-round", 0))
        new = solver.solve(np.zeros(solver.dim), 0.0, theta, (seed, pid, k))
        if baseline:
            kept = solver.extra_state()
            if kept:
                context.state[STATE_KEPT] = state_record(kept)
            arrays = ArrayRecord({"theta": model_array(new)})
        else:
            arrays = numpy_record(solver.to_arrays(new))
        metrics = {
            "num-examples": num_examples(solver),
            "train-loss": solver.objective(new),
        }
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
        return Message(content, reply_to=msg)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        solver, _, theta, _ = _local(msg, context)
        metrics = {"num-examples": num_examples(solver), **solver.evaluate(theta)}
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


# ---------------------------------------------------------------------- ServerApp side
class RecordingFedAvg(FedAvg):
    """Flower's FedAvg that keeps each round's aggregated train metrics and the number
    of workers that trained."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.train_metrics: dict[int, MetricRecord] = {}
        self.trained: dict[int, int] = {}

    def aggregate_train(self, server_round, replies):  # noqa: D102
        replies = list(replies)
        self.trained[server_round] = sum(not r.has_error() for r in replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        if metrics is not None:
            self.train_metrics[server_round] = metrics
        return arrays, metrics


def run_flower_fedavg(
    grid: Grid,
    num_workers: int,
    theta0: np.ndarray,
    num_rounds: int,
    timeout: float,
    solver: SolverSettings,
    seed: int,
    settings: FedAvgSettings | None = None,
    evaluate: Callable[[np.ndarray], dict[str, float]] | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run ``flwr.serverapp.strategy.FedAvg`` over ``num_workers`` nodes; return rows
    (``on_row`` is called with each as it is made)."""
    settings = settings or FedAvgSettings()
    grid = MeteredGrid(grid)
    strategy = RecordingFedAvg(
        fraction_train=settings.fraction_train,
        fraction_evaluate=0.0,
        min_train_nodes=max(1, int(round(settings.fraction_train * num_workers))),
        min_evaluate_nodes=0,
        min_available_nodes=num_workers,
    )
    history: list[dict] = []

    def central(k: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Runs after each round's aggregation: write our history row."""
        if k == 0:
            return None
        if not strategy.trained.get(k):
            raise RuntimeError(f"FedAvg round {k}: no worker trained (see the errors above)")
        theta = arrays["theta"].numpy().astype(np.float64)
        metrics = strategy.train_metrics.get(k, MetricRecord())
        loss = float(metrics["train-loss"]) if "train-loss" in metrics else float("nan")
        previous = history[-1] if history else None
        trained = strategy.trained.get(k, 0)
        row = fedavg_row(k, theta, loss, trained, evaluate, previous, grid.counters())
        history.append(row)
        if on_row is not None:
            on_row(row)
        log(INFO, "[ROUND %d/%d] %s", k, num_rounds, progress_line(row))
        return None

    strategy.start(
        grid,
        initial_arrays=ArrayRecord({"theta": model_array(theta0)}),
        num_rounds=num_rounds,
        timeout=timeout,
        train_config=solver_settings_record(solver, seed),
        evaluate_fn=central,
    )
    return history
