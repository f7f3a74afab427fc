"""The Flower transport of the round engine: discovery, message exchange, timeouts.

Flower has no peer-to-peer channel, so the ServerApp relays: every step is one
``send_and_receive`` exchange in which each member gets its inbox (the payloads its
neighbours sent, untouched bytes) and answers with its own payload, which the engine
posts to the sender's neighbours. The relay never decodes a payload. A training reply
carries the payload and a few scalars; models cross the wire only in evaluation rounds
(with each worker's last step of the iteration, or ``query.model`` for a worker that has
not sent it) and at the end. Checkpoints, too, are saved by each worker with its last
step of the iteration (``query.checkpoint`` only after a repair changed the workers'
states, or for a worker whose save with its step failed): neither costs an exchange of
its own. What crossed Flower is counted by
:class:`~flower_qgadmm.flower.metering.MeteredGrid`, per direction and traffic kind.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common import log
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from ..algorithms import Phase, Wiring
from ..config import SolverSettings
from ..model_arrays import Arrays
from ..rounds import Inbox, LastStep, StepResult, Transport, WorkerFailure, causes
from ..settings import as_record
from .client import solver_settings_record
from .metering import MeteredGrid
from .records import (
    array_record,
    config_record,
    copies_record,
    inbox_record,
    numpy_record,
    record_copies,
    record_numpy,
    record_payload,
)

RAY_INLINE = "RAY_max_direct_call_object_size"  # Ray's setting, read when Ray starts
RAY_INLINE_DEFAULT = 100 * 1024  # bytes: Ray's default
RAY_INLINE_SUGGESTED = 4 * 1024 * 1024  # bytes: measured faster up to 16 MB (benchmarks doc)
REASK_UNAVAILABLE = 5.0  # s: discovery asks the same nodes again at most this often


def ray_inline_advice(state_bytes: int, environ: Mapping[str, str]) -> str | None:
    """Advice when a worker's state is larger than what Ray passes inline.

    Flower's simulation runs each message through a Ray actor with the node's context as
    an argument and in the result. Ray passes an object of up to
    ``RAY_max_direct_call_object_size`` bytes inline; a larger one goes through its
    shared-memory object store, measured at about 4 ms more per call here (2 cores) for
    160 KB to 300 KB. The setting is read when Ray starts, from the environment of
    Flower's simulation process, which inherits the local SuperLink's."""
    try:
        limit = int(environ.get(RAY_INLINE, RAY_INLINE_DEFAULT))
    except ValueError:
        limit = RAY_INLINE_DEFAULT
    if state_bytes <= limit:
        return None
    suggested = max(RAY_INLINE_SUGGESTED, 2 * state_bytes)
    return (
        f"each worker keeps {state_bytes / 1024:.0f} KiB of state in its context, which "
        f"Flower's Ray backend moves with every message through Ray's object store (Ray "
        f"passes at most {limit / 1024:.0f} KiB inline): about 4 ms more per message. "
        f"Start the local SuperLink with {RAY_INLINE}={suggested} in its environment "
        "(python -m flower_qgadmm.superlink stop, then "
        f"{RAY_INLINE}={suggested} flwr run . ...); see the README, 'Deep networks: SGADMM "
        "and Q-SGADMM'"
    )


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


_CLASS_REASON = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>:<'(.*)'>", re.DOTALL)


def short_reason(reason: str) -> str:
    """The ClientApp's own message from Flower's error reason: without Ray's wrapping
    (simulation: ``...ClientAppException occurred. Message: <message>'>``), and a
    SuperNode's ``<class 'KeyError'>:<'<message>'>`` as ``KeyError: <message>``
    (a :class:`~flower_qgadmm.flower.client.NamedKeyError`'s message names its type)."""
    text = _ANSI.sub("", reason).strip()
    if "Message: " in text:
        text = text.rsplit("Message: ", 1)[1].strip()
        return text[:-2].rstrip() if text.endswith("'>") else text
    match = _CLASS_REASON.fullmatch(text)
    if match:
        name, message = match.groups()
        return message if name == "NamedKeyError" else f"{name}: {message}"
    return text


# Flower's ClientApp, for a message type it has no handler for
_NO_HANDLER = re.compile(r"No (\w+) function registered with name '(\w+)'")
# Flower's deployment Grid, for a reply whose objects it could not pull (flwr 1.42:
# HttpGrid.pull_messages, from inflatable_utils.ObjectPullError)
_MISSING_OBJECT = re.compile(r"Failed to pull object with ID '([^']+)'")


def _failure(error: Message | None, timeout: float) -> str:
    """Why a node failed: its error reply's code and reason, or no reply at all. A
    reply that reached the SuperLink without all its objects (its sender stopped during
    the upload; the pull gives up at the exchange's deadline,
    :func:`~flower_qgadmm.flower.metering.shorten_reply_pull`) counts as no reply and
    names the missing object. A ClientApp without our handlers (Flower's ``No query
    function registered with name 'identify'``) is told how to add them."""
    if error is None:
        return f"no reply within {timeout:g}s"
    lost = _MISSING_OBJECT.search(error.error.reason)
    if error.error.code == ErrorCode.MESSAGE_UNAVAILABLE and lost:
        return (
            f"no complete reply within {timeout:g}s: object {lost.group(1)} of its reply "
            "never reached the SuperLink (the node's upload of its reply stopped)"
        )
    reason = short_reason(error.error.reason)
    missing = _NO_HANDLER.search(reason)
    if missing:
        reason += (
            f": the ClientApp has no handler for flower-qgadmm's '{'.'.join(missing.groups())}' "
            "messages; build it with flower_qgadmm.flower.torch_client_app(model_fn, "
            "train_loader_fn, ...) or make_client_app(solver_fn), or add them to your "
            "ClientApp with torch_client_app(..., app=app, fedavg=False)"
        )
    return f"error {error.error.code}: {reason}"


class FlowerTransport(Transport):
    """Reaches one worker per SuperNode through a Flower Grid.

    Parameters
    ----------
    grid : Grid
        The ServerApp's grid (wrapped in a :class:`MeteredGrid` unless it is one).
    algorithm : str
        Registered algorithm name, sent at set-up (the worker class comes from it).
    solver : SolverSettings
        Local-solver settings, sent to every worker.
    seed : int
        Run seed.
    num_workers : int
        SuperNodes expected; :meth:`discover` waits until all have connected.
    timeout : float
        Seconds to wait for the replies of one exchange.
    discovery_timeout : float
        Seconds to wait for all SuperNodes to connect and answer who they are.
    """

    def __init__(
        self,
        grid: Grid,
        algorithm: str,
        solver: SolverSettings,
        seed: int,
        num_workers: int,
        timeout: float,
        discovery_timeout: float,
    ) -> None:
        self.grid = grid if isinstance(grid, MeteredGrid) else MeteredGrid(grid)
        self.algorithm = algorithm
        self.solver = solver_settings_record(solver, seed)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.timeout = float(timeout)
        self.discovery_timeout = float(discovery_timeout)
        self.node_ids = []  # partition id -> Flower node id

    @property
    def node_ids(self) -> list[int]:
        """Partition id -> Flower node id (set by discovery)."""
        return self._node_ids

    @node_ids.setter
    def node_ids(self, ids: Sequence[int]) -> None:
        self._node_ids = list(ids)
        # node id -> partition: a reply's sender in O(1) (a list's index() made every
        # exchange of N replies O(N^2)); the first partition of a repeated id, as index()
        self._partition = {}
        for p, nid in enumerate(self._node_ids):
            self._partition.setdefault(nid, p)

    # ------------------------------------------------------------------ exchange
    def exchange(
        self,
        messages: list[Message],
        what: str,
        tolerate: bool = False,
        timeout: float | None = None,
    ) -> tuple[list[Message], dict[int, str]]:
        """send_and_receive: (good replies, failed partition -> why), waiting ``timeout``
        seconds (default: the phase timeout).

        Errors or silence raise WorkerFailure naming the workers, unless ``tolerate``.
        """
        timeout = self.timeout if timeout is None else float(timeout)
        replies, errors = self._send_and_receive(messages, timeout)
        failed = {node: _failure(error, timeout) for node, error in errors.items()}
        to_partition = self._partition
        why = {
            to_partition.get(nid, -1): f"(node {nid}): {reason}" for nid, reason in failed.items()
        }
        if why:
            log(WARNING, "%s failed: %s", what, causes(why))
        if why and not tolerate:
            raise WorkerFailure(f"{what} failed: {causes(why)}", why)
        return replies, why

    def _send_and_receive(
        self, messages: list[Message], timeout: float
    ) -> tuple[list[Message], dict[int, Message | None]]:
        """send_and_receive: (good replies, node -> its error reply, or None: no reply
        within ``timeout``). A reply is its message's destination's (pushing set the
        message ids), not its src_node_id's: the SuperLink answers for a node it lost
        ("Node Unavailable") in its own name."""
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        to_node = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        to_node.pop("", None)  # messages never pushed (an in-process Grid)
        errors: dict[int, Message | None] = {m.metadata.dst_node_id: None for m in messages}
        for msg in replies:
            node = to_node.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
            if msg.has_error():
                errors[node] = msg
            elif errors.get(node) is None:  # answered (an error reply stays)
                errors.pop(node, None)
        return [m for m in replies if not m.has_error()], errors

    def _message(self, n: int, kind: str, content: RecordDict | None = None, **kw) -> Message:
        return Message(
            content or RecordDict(), dst_node_id=self.node_ids[n], message_type=kind, **kw
        )

    def partition(self, msg: Message) -> int:
        """The partition (worker index) that sent ``msg``; ValueError for a node that
        holds none."""
        try:
            return self._partition[msg.metadata.src_node_id]
        except KeyError:
            raise ValueError(
                f"a reply from node {msg.metadata.src_node_id}, which holds no partition of "
                "this run"
            ) from None

    # ------------------------------------------------------------------ discovery
    def discover(self) -> None:
        """Wait until ``num_workers`` nodes are connected; learn who holds which partition.

        Nodes register asynchronously, so the graph is used only once all are present.
        The first nodes seen are asked for their ``num-partitions`` at once, so a
        federation of the wrong size fails fast instead of waiting for the timeout. A
        node the SuperLink still lists but answers for as unavailable (a SuperNode that
        stopped or crashed less than its heartbeat patience ago) is not counted: the run
        waits for it to come back, up to the discovery timeout. The whole of discovery,
        the nodes' answers included, takes at most the discovery timeout.
        """
        deadline = time.monotonic() + self.discovery_timeout
        checked = False
        asked: tuple[list[int], float, list[int]] = ([], 0.0, [])  # ids, ask again at, gone
        while True:
            ids = sorted(self.grid.get_node_ids())
            now = time.monotonic()
            gone = asked[2] if ids == asked[0] else []  # unavailable when last asked
            if now >= deadline:
                up = len(ids) - len(gone)
                unavailable = f"; unavailable: node(s) {', '.join(map(str, gone))}" if gone else ""
                raise WorkerFailure(
                    f"only {up} of {self.num_workers} SuperNodes connected within "
                    f"{self.discovery_timeout:g}s (discovery-timeout){unavailable}",
                    {},
                )
            # the same nodes are asked again only REASK_UNAVAILABLE after: every identify
            # starts a ClientApp on each healthy node (a process in deployment)
            if len(ids) >= self.num_workers and (ids != asked[0] or now >= asked[1]):
                log(INFO, "%d SuperNodes connected; asking for their partitions", len(ids))
                by_partition, gone = self._identify(ids, deadline)
                if not gone:
                    break
                asked = (ids, time.monotonic() + REASK_UNAVAILABLE, gone)
                log(
                    WARNING,
                    "SuperNode(s) %s listed by the SuperLink but unavailable (stopped or "
                    "crashed); waiting for %d SuperNodes up to discovery-timeout=%gs",
                    ", ".join(map(str, gone)),
                    self.num_workers,
                    self.discovery_timeout,
                )
            elif len(ids) < self.num_workers and ids and not checked:
                checked = not self._identify(ids, deadline)[1]
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0.0)))
        missing = sorted(set(range(self.num_workers)) - set(by_partition))
        if missing:
            raise ValueError(f"no SuperNode holds partition(s) {missing}")
        self.node_ids = [by_partition[p] for p in range(self.num_workers)]

    def _identify(self, ids: list[int], deadline: float) -> tuple[dict[int, int], list[int]]:
        """Ask nodes for (partition-id, num-partitions); return (partition -> node id,
        the nodes the SuperLink answered for as unavailable).

        Part of discovery: the first message a node gets may wait for its ClientApp to
        start (in Flower's simulation, the Ray actors and their imports), so it waits
        until the discovery's ``deadline`` (``time.monotonic()``), whatever the phase
        timeout. Failures name the nodes (their partitions are not known yet)."""
        self.node_ids = list(ids)  # provisional: the messages' destinations
        messages = [self._message(i, "query.identify") for i in range(len(ids))]
        good, errors = self._send_and_receive(messages, max(deadline - time.monotonic(), 0.0))
        gone = [n for n, e in errors.items() if e and e.error.code == ErrorCode.NODE_UNAVAILABLE]
        timeout = self.discovery_timeout  # no reply: the discovery's time has run out
        failed = {
            n: _failure(e, timeout) + ("" if e else " (discovery-timeout)")
            for n, e in errors.items()
            if n not in gone
        }
        if failed:
            nodes: dict[str, list[int]] = {}  # nodes by reason: one line for every node
            for node, reason in sorted(failed.items()):
                nodes.setdefault(reason, []).append(node)
            why = "; ".join(
                f"node{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}: {reason}"
                for reason, ids in nodes.items()
            )
            log(WARNING, "identify failed: %s", why)
            raise WorkerFailure(f"identify failed: {why}", {})
        by_partition: dict[int, int] = {}
        for msg in good:
            ident = msg.content["identity"]
            pid, num = int(ident["partition-id"]), int(ident["num-partitions"])
            node = msg.metadata.src_node_id
            if num != self.num_workers:
                n = self.num_workers
                fix = (
                    f"in simulation start the federation with --federation-config "
                    f"num-supernodes={n}"
                    if self.grid.simulation
                    else f"start {n} SuperNodes, SuperNode i with --node-config "
                    f"'partition-id=<i> num-partitions={n}' (the kit: deploy up --nodes {n})"
                )
                raise ValueError(
                    f"node {node} says num-partitions={num}, but the run expects "
                    f"num-workers={n}; {fix} (or set num-workers={num})"
                )
            if pid in by_partition:
                raise ValueError(f"nodes {by_partition[pid]} and {node} both hold partition {pid}")
            by_partition[pid] = node
        return by_partition, sorted(gone)

    # ------------------------------------------------------------------ Transport
    def describe(self, workers: Sequence[int]) -> dict[int, dict[str, Any]]:
        content = RecordDict({"solver": self.solver})
        messages = [self._message(n, "query.describe", content) for n in workers]
        reports = {}
        for msg in self.exchange(messages, "describe")[0]:
            report: dict[str, Any] = dict(msg.content["report"].items())
            for key in ("layout", "shapes"):
                if key in report:
                    report[key] = tuple(report[key])
            if "statistics" in msg.content:
                s = record_numpy(msg.content["statistics"])
                report["statistics"] = (s["gram"], s["xty"])
            if "moments" in msg.content:
                report["moments"] = record_numpy(msg.content["moments"])
            reports[self.partition(msg)] = report
        return reports

    def setup(
        self, wirings: Mapping[int, Wiring], settings: Any, initial: Arrays | None = None
    ) -> None:
        messages = []
        for n, wiring in wirings.items():
            content = self._setup_content(n, wiring, settings)
            if initial is not None:
                content["initial"] = numpy_record(initial)
            messages.append(self._message(n, "query.setup", content))
        replies = self.exchange(messages, "setup")[0]
        if self.grid.in_memory:  # Flower's simulation: its Ray backend moves the node state
            sizes = [int(m.content["state"]["bytes"]) for m in replies if "state" in m.content]
            advice = ray_inline_advice(max(sizes, default=0), os.environ)
            if advice:
                log(WARNING, "%s", advice)

    def _setup_content(self, n: int, wiring: Wiring, settings: Any) -> RecordDict:
        run = {"node": n, "algorithm": self.algorithm, "seed": self.seed}
        if self.grid.simulation:  # workers may derive encryption keys from the seed
            run["simulated-keys"] = True
        solver = self.solver
        if self.feature_scale is not None:  # kept by the worker with its solver settings
            scale = [float(v) for v in np.ravel(self.feature_scale)]  # 1-D or d x d
            solver = ConfigRecord({**dict(self.solver.items()), "feature-scale": scale})
        return RecordDict(
            {
                "run": ConfigRecord(run),
                "wiring": ConfigRecord(wiring.to_record()),
                "settings": ConfigRecord(as_record(settings)),
                "solver": solver,
            }
        )

    def objective(self, theta: np.ndarray, workers: Sequence[int]) -> dict[int, float]:
        content = RecordDict({"theta": numpy_record({"theta": theta})})
        messages = [self._message(n, "query.objective", content) for n in workers]
        return {
            self.partition(msg): float(msg.content["objective"]["value"])
            for msg in self.exchange(messages, "objective")[0]
        }

    def step_messages(
        self,
        iteration: int,
        phase: Phase,
        inboxes: Mapping[int, Inbox],
        evaluate: bool = True,
        last: Mapping[int, LastStep] | None = None,
    ) -> list[Message]:
        """The messages of one phase: each member's inbox, whether to evaluate and, for
        the members in ``last``, whether to reply with the model (``reply-model``) and
        where to save the checkpoint (``checkpoint``, ``checkpoint-previous``,
        ``checkpoint-run``)."""
        messages = []
        for n, inbox in inboxes.items():
            order: dict[str, Any] = {
                "iteration": iteration,
                "phase": phase.name,
                "evaluate": evaluate,
            }
            then = last.get(n) if last else None
            if then is not None and then.model:
                order["reply-model"] = True
            if then is not None and then.checkpoint is not None:
                order["checkpoint"] = then.checkpoint
                if then.previous is not None:
                    order["checkpoint-previous"] = int(then.previous)
                if then.run is not None:
                    order["checkpoint-run"] = str(then.run)
            content = RecordDict({"round": ConfigRecord(order), "inbox": inbox_record(inbox)})
            messages.append(self._message(n, "train.step", content, group_id=str(iteration)))
        return messages

    def step_results(
        self, replies: Sequence[Message]
    ) -> tuple[dict[int, StepResult], dict[int, str]]:
        """Each reply's payload (untouched bytes) and report; an error reply or a malformed
        one (missing or foreign records, non-finite metrics) fails the worker that sent it."""
        results, failed = {}, {}
        for msg in replies:
            n = self.partition(msg)
            if msg.has_error():  # exchange() drops these; a Strategy API caller may not
                failed[n] = f"(node {msg.metadata.src_node_id}): error {msg.error.code}: " + (
                    short_reason(msg.error.reason)
                )
                continue
            if "diverged" in msg.content:  # fatal in both transports, whatever the policy
                raise FloatingPointError(str(msg.content["diverged"]["reason"]))
            try:
                results[n] = self._step_result(msg, n)
            except (KeyError, TypeError, ValueError) as exc:  # PayloadError is a ValueError
                why = f"(node {msg.metadata.src_node_id}): malformed reply: {exc}"
                log(WARNING, "worker %d %s", n, why)
                failed[n] = why
        return results, failed

    @staticmethod
    def _step_result(msg: Message, n: int) -> StepResult:
        metrics = {k: float(v) for k, v in msg.content["metrics"].items()}
        bad = sorted(k for k, v in metrics.items() if not np.isfinite(v))
        if bad or "objective" not in metrics:
            raise ValueError(f"metrics {bad or ['objective']} missing or not finite")
        nominal = int(metrics.pop("nominal-bits"))
        where = f"reply of worker {n}"
        record = config_record(msg.content, "payload", where)
        payload = None if record is None else record_payload(record, where)
        blame = {}
        if "blame" in msg.content:
            blame = {int(src): str(why) for src, why in msg.content["blame"].items()}
        # the model is checked by the engine with every pulled model (RoundEngine._keep)
        record = array_record(msg.content, "model", where)
        model = None if record is None else record_numpy(record)
        saved = "saved" in msg.content
        return StepResult(payload, metrics, nominal, blame, model, saved)

    def step(
        self,
        iteration: int,
        phase: Phase,
        inboxes: Mapping[int, Inbox],
        evaluate: bool = True,
        last: Mapping[int, LastStep] | None = None,
    ) -> tuple[dict[int, StepResult], dict[int, str]]:
        messages = self.step_messages(iteration, phase, inboxes, evaluate, last)
        what = f"{phase.name} phase of iteration {iteration}"
        replies, failed = self.exchange(messages, what, tolerate=True)
        results, malformed = self.step_results(replies)
        return results, {**failed, **malformed}

    def pull(self, workers: Sequence[int]) -> dict[int, dict[str, np.ndarray]]:
        messages = [self._message(n, "query.model") for n in workers]
        return self._models(self.exchange(messages, "model pull")[0])

    def _models(
        self, replies: Sequence[Message], what: str = "model pull"
    ) -> dict[int, dict[str, np.ndarray]]:
        return self._read_replies(replies, what, "model", record_numpy)

    def _read_replies(
        self, replies: Sequence[Message], what: str, key: str, read: Callable[[ArrayRecord], Any]
    ) -> dict[int, Any]:
        """``read`` of each reply's ``key`` record; replies without it (or with a foreign
        record) fail their workers (WorkerFailure, treated per the policy by the engine)."""
        out, bad = {}, {}
        for msg in replies:
            n = self.partition(msg)
            try:
                record = array_record(msg.content, key, f"reply of worker {n}")
                if record is None:
                    raise ValueError(f"the reply carries no {key}")
                out[n] = read(record)
            except (KeyError, TypeError, ValueError) as exc:
                bad[n] = f"(node {msg.metadata.src_node_id}): malformed reply: {exc}"
        if bad:
            raise WorkerFailure(f"{what} failed: {causes(bad)}", bad)
        return out

    def finish(self, inboxes: Mapping[int, Inbox]) -> dict[int, dict[str, np.ndarray]]:
        messages = [
            self._message(n, "query.finish", RecordDict({"inbox": inbox_record(inbox)}))
            for n, inbox in inboxes.items()
        ]
        return self._models(self.exchange(messages, "finish")[0], "finish")

    def export(self, requests: Mapping[int, Sequence[int]]) -> dict[int, np.ndarray | bytes]:
        messages = [
            self._message(
                n, "query.export", RecordDict({"to": ConfigRecord({"recipients": list(to)})})
            )
            for n, to in requests.items()
        ]
        replies = self.exchange(messages, "export")[0]
        return self._read_replies(replies, "export", "copy", lambda r: record_copies(r)[0])

    def rewire(
        self,
        plan: Mapping[int, tuple[Wiring, Inbox, dict[int, np.ndarray | bytes]]],
        settings: Any,
    ) -> None:
        messages = []
        for n, (wiring, inbox, copies) in plan.items():
            content = RecordDict(
                {
                    "wiring": ConfigRecord(wiring.to_record()),
                    "inbox": inbox_record(inbox),
                    "copies": copies_record(copies),
                    "settings": ConfigRecord(as_record(settings)),
                }
            )
            messages.append(self._message(n, "query.repair", content))
        self.exchange(messages, "repair")

    def checkpoint(
        self,
        directory: str,
        iteration: int,
        workers: Sequence[int],
        previous: int | None,
        run: str | None = None,
    ) -> None:
        where: dict[str, Any] = {"directory": directory, "iteration": int(iteration)}
        if previous is not None:
            where["previous"] = int(previous)
        if run is not None:
            where["run"] = str(run)
        content = RecordDict({"checkpoint": ConfigRecord(where)})
        self.exchange(
            [self._message(n, "query.checkpoint", content) for n in workers], "checkpoint"
        )

    def restore(
        self,
        directory: str,
        iteration: int,
        wirings: Mapping[int, Wiring],
        settings: Any,
        run: str | None = None,
    ) -> None:
        where = ConfigRecord({"directory": directory, "iteration": int(iteration)})
        if run is not None:
            where["run"] = str(run)
        messages = []
        for n, wiring in wirings.items():
            content = self._setup_content(n, wiring, settings)
            content["checkpoint"] = where
            messages.append(self._message(n, "query.restore", content))
        self.exchange(messages, "restore")

    def counters(self) -> dict[str, int]:
        return self.grid.counters()

    def load_counters(self, counters: Mapping[str, int]) -> None:
        self.grid.load_counters(counters)
