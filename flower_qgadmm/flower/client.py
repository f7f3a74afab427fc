"""ClientApp handlers: one GADMM worker per SuperNode, its state in ``context.state``.

Message types (sent by :class:`~flower_qgadmm.flower.strategy.GadmmRelay`):

- ``query.identify``: reply with this node's ``partition-id`` / ``num-partitions``;
- ``query.setup``: receive the algorithm settings, neighbours and group; create the
  worker state; reply with its model size and the least-squares statistics (theta*);
- ``query.optimum``: reply with f_n(theta*), so F* is summed from residuals;
- ``train.head`` / ``train.tail``: apply the relayed neighbour payloads, take one step,
  reply with the encoded payload (plus this worker's objective and model for the history);
- ``query.export`` / ``query.repair``: after a worker left, send the own public copy /
  adopt the repaired graph (:meth:`GadmmNode.rewire`).

Deployment starts a fresh ClientApp process per message, so everything that must
survive lives in ``context.state``; it is written only after a step succeeded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..algorithms import GadmmNode
from ..config import GadmmConfig
from ..solvers import LeastSquaresSolver, LocalSolver
from .records import (
    array_payload,
    config_dict,
    numpy_record,
    payload_array,
    record_numpy,
)

SolverFn = Callable[[Context, GadmmConfig], LocalSolver]

STATE_ARRAYS = "gadmm.arrays"
STATE_SCALARS = "gadmm.scalars"
STATE_SETUP = "gadmm.setup"


def partition_of(context: Context) -> tuple[int, int]:
    """(partition-id, num-partitions) from the node config, with a clear error if absent."""
    try:
        pid = int(context.node_config["partition-id"])
        num = int(context.node_config["num-partitions"])
    except KeyError as exc:
        raise ValueError(
            f"node config lacks {exc}; start the SuperNode with "
            "--node-config 'partition-id=<i> num-partitions=<N>'"
        ) from None
    if not 0 <= pid < num:
        raise ValueError(f"partition-id {pid} is outside 0..{num - 1}")
    return pid, num


def _build_node(context: Context, solver_fn: SolverFn) -> GadmmNode:
    """Rebuild this worker's GadmmNode from the setup kept in ``context.state``."""
    if STATE_SETUP not in context.state:
        raise RuntimeError("worker was never set up (no query.setup received in this run)")
    setup = config_dict(context.state[STATE_SETUP])
    cfg = GadmmConfig(**{k: setup[k] for k in GadmmConfig.__dataclass_fields__})
    return GadmmNode(
        int(setup["node"]),
        [int(m) for m in setup["neighbours"]],
        int(setup["group"]),
        solver_fn(context, cfg),
        cfg,
    )


def _save(context: Context, node: GadmmNode) -> None:
    arrays, scalars = node.state_dict()
    context.state[STATE_ARRAYS] = numpy_record(arrays)
    context.state[STATE_SCALARS] = ConfigRecord(scalars)


def identify(msg: Message, context: Context, solver_fn: SolverFn | None = None) -> Message:
    """Reply with the partition this node holds."""
    pid, num = partition_of(context)
    content = RecordDict({"identity": ConfigRecord({"partition-id": pid, "num-partitions": num})})
    return Message(content, reply_to=msg)


def setup(msg: Message, context: Context, solver_fn: SolverFn) -> Message:
    """Create this worker's state from the relay's settings; reply with its model size and,
    for least squares, the data statistics the relay needs for F*."""
    pid, _ = partition_of(context)
    settings = config_dict(msg.content["setup"])
    if int(settings["node"]) != pid:
        raise ValueError(f"setup for worker {settings['node']} sent to partition {pid}")
    context.state[STATE_SETUP] = ConfigRecord(settings)
    node = _build_node(context, solver_fn)
    _save(context, node)
    content = RecordDict({"model-size": ConfigRecord({"dim": node.solver.dim})})
    if isinstance(node.solver, LeastSquaresSolver):
        gram, xty = node.solver.sufficient_statistics()
        content["statistics"] = numpy_record({"gram": gram, "xty": xty})
    return Message(content, reply_to=msg)


def optimum(msg: Message, context: Context, solver_fn: SolverFn) -> Message:
    """Reply with f_n(theta*) for the centralized optimum theta* the relay sends."""
    node = _build_node(context, solver_fn)
    theta = record_numpy(msg.content["optimum"])["theta"]
    value = node.solver.objective(np.asarray(theta, dtype=np.float64))
    return Message(RecordDict({"objective": MetricRecord({"value": value})}), reply_to=msg)


def phase(msg: Message, context: Context, solver_fn: SolverFn) -> Message:
    """One head or tail step: receive relayed payloads, update, reply with the payload."""
    node = _restore(context, solver_fn)
    iteration = int(msg.content["round"]["iteration"])
    if iteration != node.iteration + 1:
        raise ValueError(
            f"worker {node.node} is at iteration {node.iteration}, got a step for {iteration}"
        )
    inbox = msg.content.array_records.get("inbox", ArrayRecord())
    for src, array in inbox.items():
        node.receive(int(src), array_payload(array, f"payload from worker {src}"))
    payload = node.step(iteration)
    _save(context, node)
    content = RecordDict(
        {
            "metrics": MetricRecord(
                {
                    **node.metrics(),
                    "payload-bits": node.last_payload_bits,
                    "nominal-bits": node.last_nominal_bits,
                }
            ),
            "model": numpy_record({"theta": node.theta}),
        }
    )
    if payload is not None:  # None: censored, nothing to relay
        content["payload"] = ArrayRecord({"payload": payload_array(payload)})
    return Message(content, reply_to=msg)


def least_squares(load_data: Callable[[Context], tuple[np.ndarray, np.ndarray]]) -> SolverFn:
    """Solver factory for linear regression from ``load_data(context) -> (X, y)``."""

    def solver_fn(context: Context, cfg: GadmmConfig) -> LocalSolver:
        X, y = load_data(context)
        return LeastSquaresSolver(X, y, cfg.l2)

    return solver_fn


def _restore(context: Context, solver_fn: SolverFn) -> GadmmNode:
    node = _build_node(context, solver_fn)
    node.load_state_dict(
        record_numpy(context.state[STATE_ARRAYS]), config_dict(context.state[STATE_SCALARS])
    )
    return node


def export(msg: Message, context: Context, solver_fn: SolverFn) -> Message:
    """Reply with this worker's public copy (a new neighbour needs it after a repair)."""
    node = _restore(context, solver_fn)
    copy = numpy_record({"theta-hat": node.public_copy()})
    return Message(RecordDict({"copy": copy}), reply_to=msg)


def repair(msg: Message, context: Context, solver_fn: SolverFn) -> Message:
    """Adopt the repaired graph: pending payloads, new neighbours and group, new copies."""
    node = _restore(context, solver_fn)
    for src, array in msg.content["inbox"].items():
        node.receive(int(src), array_payload(array, f"payload from worker {src}"))
    new = config_dict(msg.content["repair"])
    copies = {int(m): v for m, v in record_numpy(msg.content["copies"]).items()}
    node.rewire([int(m) for m in new["neighbours"]], int(new["group"]), copies)
    setup = config_dict(context.state[STATE_SETUP])
    setup.update(neighbours=list(node.neighbours), group=node.group)
    context.state[STATE_SETUP] = ConfigRecord(setup)
    _save(context, node)
    return Message(RecordDict(), reply_to=msg)


def _bind(handler: Callable[..., Message], solver_fn: SolverFn) -> Callable[..., Message]:
    """A ``(msg, context)`` ClientApp handler calling ``handler(msg, context, solver_fn)``."""

    def handle(msg: Message, context: Context) -> Message:
        return handler(msg, context, solver_fn)

    return handle


def make_client_app(solver_fn: SolverFn, app: ClientApp | None = None) -> ClientApp:
    """A ClientApp running one GADMM-family worker per SuperNode.

    Parameters
    ----------
    solver_fn : callable
        ``solver_fn(context, config) -> LocalSolver``: this node's local solver holding
        its data (read the partition from ``context.node_config``); ``config`` is the
        GadmmConfig the relay sent. See :func:`least_squares` and
        :func:`flower_qgadmm.flower.torch_client_app`.
    app : ClientApp, optional
        Register the handlers on an existing ClientApp (default: a new one).
    """
    app = app if app is not None else ClientApp()

    handlers = {
        ("query", "identify"): identify,
        ("query", "setup"): setup,
        ("query", "optimum"): optimum,
        ("query", "export"): export,
        ("query", "repair"): repair,
        ("train", "head"): phase,
        ("train", "tail"): phase,
    }
    for (kind, action), handler in handlers.items():
        getattr(app, kind)(action)(_bind(handler, solver_fn))
    return app


def setup_record(node: int, neighbours: list[int], group: int, cfg: GadmmConfig) -> ConfigRecord:
    """The ``query.setup`` content the relay sends to one worker."""
    return ConfigRecord({**asdict(cfg), "node": node, "neighbours": neighbours, "group": group})
