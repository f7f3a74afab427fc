"""ClientApp handlers: one worker of any registered algorithm per SuperNode.

The relay (:class:`~flower_qgadmm.flower.strategy.RelayStrategy`) sends the message
types listed in :mod:`~flower_qgadmm.flower.records`. The worker class comes from the
registry by the algorithm name the relay sends at set-up; a step is one ``train.step``
message whatever the algorithm's schedule (the phase name travels in the content).

Deployment starts a fresh ClientApp process per message, so everything that must
survive lives in ``context.state``; it is written only after a handler succeeded (a
set-up the worker refuses leaves the previous state).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from functools import lru_cache
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log

from ..algorithms import Wiring, Worker, get_algorithm
from ..checkpoint import load_worker, save_worker
from ..config import SolverSettings
from ..crypto import Keyring
from ..settings import as_record, from_mapping
from ..solvers import LeastSquaresSolver, LocalSolver
from .records import (
    array_record,
    config_dict,
    config_record,
    copies_record,
    numpy_record,
    payload_record,
    read_inbox,
    record_copies,
    record_inbox,
    record_numpy,
    record_state,
    state_record,
)

SolverFn = Callable[[Context, SolverSettings, int], LocalSolver]
"""``solver_fn(context, solver settings, seed) -> LocalSolver`` of this node's data."""

STATE_SETUP = "worker.setup"  # node, algorithm, seed
STATE_WIRING = "worker.wiring"
STATE_SETTINGS = "worker.settings"
STATE_SOLVER = "worker.solver"
STATE_ARRAYS = "worker.arrays"
STATE_SCALARS = "worker.scalars"


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


def solver_settings_record(solver: SolverSettings, seed: int) -> ConfigRecord:
    """Local-solver settings and the run seed, as sent to every worker."""
    return ConfigRecord({**as_record(solver), "seed": int(seed)})


@lru_cache(maxsize=16)
def _parse(cls: type, items: tuple) -> Any:
    """Settings parsed and validated once per process, not on every message."""
    return from_mapping(cls, dict(items))


def solver_from_record(record: ConfigRecord, context: Context, solver_fn: SolverFn) -> LocalSolver:
    """This node's local solver from a solver-settings record (see
    :func:`solver_settings_record`)."""
    values = config_dict(record)
    seed = int(values.pop("seed"))
    values.pop("server-round", None)  # added by Flower's FedAvg
    scale = values.pop("feature-scale", None)  # the relay's feature transform (set-up)
    solver = solver_fn(context, _parse(SolverSettings, tuple(sorted(values.items()))), seed)
    if scale is not None:
        if not hasattr(solver, "set_scale"):
            raise ValueError(f"{type(solver).__name__} cannot scale its features")
        solver.set_scale(np.asarray(scale, dtype=np.float64))
    return solver


def _build(context: Context, solver_fn: SolverFn, initial: ArrayRecord | None = None) -> Worker:
    """Rebuild this worker from the setup kept in ``context.state`` (starting from the
    user's ``initial`` model at set-up, if given)."""
    if STATE_SETUP not in context.state:
        raise RuntimeError("worker was never set up (no query.setup received in this run)")
    setup = config_dict(context.state[STATE_SETUP])
    spec = get_algorithm(str(setup["algorithm"]))
    settings = _parse(
        spec.Settings, tuple(sorted(config_dict(context.state[STATE_SETTINGS]).items()))
    )
    solver = solver_from_record(context.state[STATE_SOLVER], context, solver_fn)
    if initial is not None:
        solver.set_initial(record_numpy(initial))
    wiring = Wiring.from_record(config_dict(context.state[STATE_WIRING]))
    worker = spec.build(int(setup["node"]), wiring, solver, settings, int(setup["seed"]))
    if getattr(settings, "encrypt", False):
        simulated = bool(setup.get("simulated-keys", False))
        keys = keyring_of(context, int(setup["node"]), int(setup["seed"]), simulated)
        worker.attach_channel(keys)
    return worker


def keyring_of(context: Context, node: int, seed: int, simulated: bool = False) -> Keyring:
    """This worker's keys: the deployment kit's files when the node config names them
    (``identity-key``: its private key, ``worker-keys``: every worker's public key), else,
    in a simulation (``simulated``: the relay runs on Flower's simulation Grid), keys
    derived from the seed, which anyone knowing the seed knows. A deployed worker without
    key files refuses to run encrypted (ValueError) rather than seal with keys the relay
    can derive."""
    config = context.node_config
    if "identity-key" in config:
        if "worker-keys" not in config:
            raise ValueError("node config has identity-key but no worker-keys (public keys)")
        return _keyring_from_files(node, str(config["identity-key"]), str(config["worker-keys"]))
    if not simulated:
        raise ValueError(
            "encrypt = true on a deployed SuperNode needs its key files in the node config "
            "(identity-key, worker-keys: python -m flower_qgadmm.deploy worker-keys); keys "
            "derived from the seed, which the relay knows, are for simulation only"
        )
    _, num = partition_of(context)
    return Keyring.simulated(seed, num, node)


@lru_cache(maxsize=4)
def _keyring_from_files(node: int, private: str, publics: str) -> Keyring:
    return Keyring.from_files(node, private, publics)


def _restore(context: Context, solver_fn: SolverFn) -> Worker:
    worker = _build(context, solver_fn)
    worker.load_state_dict(
        record_state(context.state[STATE_ARRAYS]), config_dict(context.state[STATE_SCALARS])
    )
    return worker


def _save(context: Context, worker: Worker) -> None:
    arrays, scalars = worker.state_dict()
    context.state[STATE_ARRAYS] = state_record(arrays)
    context.state[STATE_SCALARS] = ConfigRecord(scalars)
    context.state[STATE_WIRING] = ConfigRecord(worker.wiring.to_record())


def identify(msg: Message, context: Context, solver_fn: SolverFn) -> Message:
    """Reply with the partition this node holds."""
    pid, num = partition_of(context)
    content = RecordDict({"identity": ConfigRecord({"partition-id": pid, "num-partitions": num})})
    return Message(content, reply_to=msg)


def describe(msg: Message, context: Context, solver_fn: SolverFn) -> Message:
    """Reply with this worker's problem report: model size, smoothness, statistics."""
    report = solver_from_record(msg.content["solver"], context, solver_fn).report()
    # the rounds.REPORT_KEYS: dim, layout, framework, smoothness, statistics, moments,
    # shapes
    described = {
        "dim": int(report["dim"]),
        "layout": [str(k) for k in report["layout"]],
        "framework": str(report["framework"]),
    }
    content = RecordDict({"report": ConfigRecord(described)})
    if report.get("shapes") is not None:
        content["report"]["shapes"] = [str(s) for s in report["shapes"]]
    if report.get("smoothness") is not None:
        content["report"]["smoothness"] = float(report["smoothness"])
    if report.get("statistics") is not None:
        gram, xty = report["statistics"]
        content["statistics"] = numpy_record({"gram": gram, "xty": xty})
    if report.get("moments") is not None:  # column moments, for the relay's feature scale
        content["moments"] = numpy_record(report["moments"])
    return Message(content, reply_to=msg)


def setup(msg: Message, context: Context, solver_fn: SolverFn) -> Message:
    """Create this worker's state from the relay's settings and wiring."""
    pid, _ = partition_of(context)
    run = config_dict(msg.content["run"])
    if int(run["node"]) != pid:
        raise ValueError(f"setup for worker {run['node']} sent to partition {pid}")
    new = {
        STATE_SETUP: ConfigRecord(run),
        STATE_WIRING: msg.content["wiring"],
        STATE_SETTINGS: msg.content["settings"],
        STATE_SOLVER: msg.content["solver"],
    }
    before = {key: context.state[key] for key in new if key in context.state}
    for key, record in new.items():
        context.state[key] = record
    try:  # the worker is built from the new records; a set-up it refuses leaves the old
        worker = _build(context, solver_fn, array_record(msg.content, "initial", "setup"))
    except Exception:
        for key in new:
            if key in before:
                context.state[key] = before[key]
            else:
                del context.state[key]
        raise
    _save(context, worker)
    report = ConfigRecord({"bytes": state_bytes(context)})
    return Message(RecordDict({"state": report}), reply_to=msg)


def state_bytes(context: Context) -> int:
    """Bytes of the arrays a node keeps in ``context.state`` (what Flower moves with every
    message to the node and back)."""
    return sum(
        len(array.data)
        for record in context.state.values()
        if isinstance(record, ArrayRecord)
        for array in record.values()
    )


def checkpoint(msg: Message, context: Context, solver_fn: SolverFn) -> Message:
    """Save this worker's state of the given iteration under the given directory (on
    this machine; :mod:`flower_qgadmm.checkpoint`)."""
    where = config_dict(msg.content["checkpoint"])
    worker = _restore(context, solver_fn)
    if worker.iteration != int(where["iteration"]):
        raise ValueError(
            f"worker {worker.node} is at iteration {worker.iteration}, asked to checkpoint "
            f"iteration {where['iteration']}"
        )
    _checkpoint(worker, str(where["directory"]), where.get("previous"), where.get("run"))
    return Message(RecordDict(), reply_to=msg)


def _checkpoint(worker: Worker, directory: str, previous: Any, run: Any = None) -> None:
    """Save the worker's state of its current iteration on this machine, marked with the
    relay's ``run``."""
    arrays, scalars = worker.state_dict()
    save_worker(directory, worker.node, worker.iteration, arrays, scalars, previous, run)


def restore(msg: Message, context: Context, solver_fn: SolverFn) -> Message:
    """Set this worker up again and load its saved state (a resumed run)."""
    setup(msg, context, solver_fn)
    where = config_dict(msg.content["checkpoint"])
    worker = _build(context, solver_fn)
    worker.load_state_dict(
        *load_worker(
            str(where["directory"]), worker.node, int(where["iteration"]), where.get("run")
        )
    )
    _save(context, worker)
    return Message(RecordDict(), reply_to=msg)


def objective(msg: Message, context: Context, solver_fn: SolverFn) -> Message:
    """Reply with f_n(theta) for the model the relay sends (e.g. theta*, for F*)."""
    theta = np.asarray(record_numpy(msg.content["theta"])["theta"], dtype=np.float64)
    if STATE_SOLVER not in context.state:
        raise RuntimeError("worker was never set up (no query.setup received in this run)")
    value = solver_from_record(context.state[STATE_SOLVER], context, solver_fn).objective(theta)
    return Message(RecordDict({"objective": MetricRecord({"value": value})}), reply_to=msg)


def step(msg: Message, context: Context, solver_fn: SolverFn) -> Message:
    """One step: receive relayed payloads, update, reply with the payload and report."""
    worker = _restore(context, solver_fn)
    iteration = int(msg.content["round"]["iteration"])
    if iteration <= worker.iteration:
        raise ValueError(
            f"worker {worker.node} is at iteration {worker.iteration}, got a step for {iteration}"
        )
    inbox, blame = read_inbox(config_record(msg.content, "inbox", "step") or ConfigRecord())
    blame.update(worker.receive_all(inbox))  # undecodable payloads: skipped, sender named
    try:
        payload = worker.send(iteration, str(msg.content["round"]["phase"]))
        evaluate = bool(msg.content["round"].get("evaluate", True))  # evaluation rounds
        metrics = {**worker.metrics(evaluate), "nominal-bits": worker.last_nominal_bits}
    except FloatingPointError as exc:  # diverged: the relay stops the run (state not saved)
        return Message(RecordDict({"diverged": ConfigRecord({"reason": str(exc)})}), reply_to=msg)
    _save(context, worker)
    order = msg.content["round"]
    content = RecordDict({"metrics": MetricRecord(metrics)})  # no model: scalars only
    if blame:
        content["blame"] = ConfigRecord({str(src): why for src, why in blame.items()})
    if payload is not None:  # None: censored, nothing to relay
        content["payload"] = payload_record(payload)
    if "checkpoint" in order:  # its last step of a checkpoint iteration (rounds.LastStep)
        try:
            _checkpoint(
                worker,
                str(order["checkpoint"]),
                order.get("checkpoint-previous"),
                order.get("checkpoint-run"),
            )
            content["saved"] = ConfigRecord({"iteration": iteration})
        except OSError as exc:  # the step stands; the relay asks again (query.checkpoint)
            log(WARNING, "worker %d could not save its checkpoint: %s", worker.node, exc)
    if order.get("reply-model", False):  # ... of an evaluation round: the model too
        content["model"] = _model_record(worker)
    return Message(content, reply_to=msg)


def _model_record(worker: Worker) -> ArrayRecord:
    """The worker's model in its owner's layout (a torch state_dict, or theta)."""
    return numpy_record(worker.solver.to_arrays(worker.theta))


def _model_reply(msg: Message, worker: Worker) -> Message:
    return Message(RecordDict({"model": _model_record(worker)}), reply_to=msg)


def model(msg: Message, context: Context, solver_fn: SolverFn) -> Message:
    """Reply with this worker's current model (an evaluation round's pull)."""
    return _model_reply(msg, _restore(context, solver_fn))


def finish(msg: Message, context: Context, solver_fn: SolverFn) -> Message:
    """After the last round: receive the last payloads, complete a deferred step, reply
    with the final model."""
    worker = _restore(context, solver_fn)
    worker.receive_strict(record_inbox(_inbox(msg)))
    worker.finish()
    _save(context, worker)
    return _model_reply(msg, worker)


def _inbox(msg: Message) -> ConfigRecord:
    """The inbox of a finish or repair (KeyError if there is none)."""
    record = config_record(msg.content, "inbox", msg.metadata.message_type)
    if record is None:
        raise KeyError(f"{msg.metadata.message_type}: no inbox")
    return record


def export(msg: Message, context: Context, solver_fn: SolverFn) -> Message:
    """Reply with this worker's public copy for its new neighbours after a repair (sealed
    for them when encrypting)."""
    recipients = [int(m) for m in msg.content["to"]["recipients"]]
    copy = _restore(context, solver_fn).export_copy(recipients)
    return Message(RecordDict({"copy": copies_record({0: copy})}), reply_to=msg)


def repair(msg: Message, context: Context, solver_fn: SolverFn) -> Message:
    """Adopt the repaired graph: pending payloads, the new wiring, new neighbours' copies."""
    worker = _restore(context, solver_fn)
    worker.receive_strict(record_inbox(_inbox(msg)))
    copies = record_copies(msg.content["copies"])
    worker.rewire(Wiring.from_record(config_dict(msg.content["wiring"])), copies)
    context.state[STATE_SETTINGS] = msg.content["settings"]  # re-resolved for the new graph
    _save(context, worker)
    return Message(RecordDict(), reply_to=msg)


def least_squares(load_data: Callable[[Context], tuple[np.ndarray, np.ndarray]]) -> SolverFn:
    """Solver factory for linear regression from ``load_data(context) -> (X, y)``."""

    def solver_fn(context: Context, settings: SolverSettings, seed: int) -> LocalSolver:
        X, y = load_data(context)
        return LeastSquaresSolver(X, y, settings.l2)

    return solver_fn


HANDLERS = {
    "identify": identify,
    "describe": describe,
    "setup": setup,
    "objective": objective,
    "model": model,
    "checkpoint": checkpoint,
    "restore": restore,
    "finish": finish,
    "export": export,
    "repair": repair,
}


class NamedKeyError(KeyError):
    """A ``KeyError`` raised in a worker's handler, its message naming its type
    (``KeyError: 'batch-size'``): Flower's simulation reports only ``str(exc)``, which for
    a ``KeyError`` (a run-config key your loader reads and your pyproject lacks) is the
    bare key. Still a ``KeyError``."""

    def __str__(self) -> str:
        return f"KeyError: {super().__str__()}"


def _bind(handler: Callable[..., Message], solver_fn: SolverFn) -> Callable[..., Message]:
    """A ``(msg, context)`` ClientApp handler calling ``handler(msg, context, solver_fn)``;
    a ``KeyError`` it raises comes out as a :class:`NamedKeyError`."""

    def handle(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context, solver_fn)
        except NamedKeyError:
            raise
        except KeyError as exc:
            raise NamedKeyError(*exc.args) from exc

    return handle


STACK_DEPTH = 16  # frames whose modules a NamedClientApp remembers (its creators)


class NamedClientApp(ClientApp):
    """A Flower ``ClientApp`` that pickles as the module attribute holding it.

    Flower's simulation hands the ClientApp to its Ray actor with every message
    (``vce_api``: ``actor.run.remote(app_fn, message, cid, context)``, pickled by Ray's
    cloudpickle). A plain ClientApp goes by value: each registered handler, a closure,
    as code (this package's 13 handlers and the experiment app's mods: 11 KB, 1.5-4 ms of
    the simulation's one dispatching thread per message, before the actor starts it).
    This one goes as ``(module, name)`` when a module on the stack that created it holds
    it under a name (the app Flower loads from ``clientapp = "module:name"`` is such an
    attribute), and the actor imports that module once; otherwise (an app that is no
    module's attribute, or lives in ``__main__``) by value, as a ClientApp does. A copy
    (``copy.copy``, ``copy.deepcopy``) of an app found by name is the app itself, as for
    a module-level function. Deployment starts a process per message and pickles nothing.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        frame, names = sys._getframe(1), []
        while frame is not None and len(names) < STACK_DEPTH:
            name = frame.f_globals.get("__name__")
            if isinstance(name, str) and name != "__main__" and name not in names:
                names.append(name)
            frame = frame.f_back
        self._creators = tuple(names)

    def reference(self) -> tuple[str, str] | None:
        """``(module, name)`` of a creator module's attribute that is this app, or None."""
        for module_name in self._creators:
            module = sys.modules.get(module_name)
            # a copy: Flower pickles from its engine's thread while others may import
            for name, value in tuple(vars(module).items()) if module is not None else ():
                if value is self:
                    return module_name, name
        return None

    def __reduce_ex__(self, protocol: Any) -> Any:
        where = self.reference()
        return super().__reduce_ex__(protocol) if where is None else (named_app, where)


def named_app(module: str, name: str) -> ClientApp:
    """The ClientApp ``module.name`` (a :class:`NamedClientApp` unpickled), imported."""
    app = getattr(importlib.import_module(module), name, None)
    if not isinstance(app, ClientApp):
        raise TypeError(f"{module}.{name} is a {type(app).__name__}, not the ClientApp pickled")
    return app


def make_client_app(solver_fn: SolverFn, app: ClientApp | None = None) -> ClientApp:
    """A ClientApp running one worker of any registered algorithm per SuperNode.

    Parameters
    ----------
    solver_fn : callable
        ``solver_fn(context, settings, seed) -> LocalSolver``: this node's local solver
        holding its data (read the partition from ``context.node_config``); ``settings``
        are the :class:`~flower_qgadmm.config.SolverSettings` the relay sent. See
        :func:`least_squares` and :func:`flower_qgadmm.flower.torch_client_app`.
    app : ClientApp, optional
        Register the handlers on an existing ClientApp (default: a new
        :class:`NamedClientApp`, which Flower's simulation passes to its actor by name).
    """
    app = app if app is not None else NamedClientApp()
    try:
        for action, handler in HANDLERS.items():
            app.query(action)(_bind(handler, solver_fn))
        app.train("step")(_bind(step, solver_fn))
    except ValueError as exc:  # Flower's: a handler of that name is on the app already
        if "already registered" not in str(exc):
            raise
        raise ValueError(
            f"{exc} flower-qgadmm's worker handlers are on this ClientApp already: call "
            "make_client_app / torch_client_app once per ClientApp"
        ) from exc
    return app
