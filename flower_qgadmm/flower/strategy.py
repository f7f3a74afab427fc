"""GadmmRelay: the ServerApp strategy that schedules head/tail phases and relays payloads.

Flower has no peer-to-peer channel, so the ServerApp routes every worker's encoded
payload to that worker's neighbours, untouched: it never decodes a payload. One Flower
round is one GADMM iteration made of two phases (heads, then tails), each one
``send_and_receive`` exchange built by :meth:`configure_train` and consumed by
:meth:`aggregate_train`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from ..config import GadmmConfig
from ..metrics import Accountant, Optimum, history_row, optimal_model
from ..topology import Graph, chain
from .client import setup_record
from .records import array_payload, message_bytes, numpy_record, payload_array, record_numpy

PHASES = ("head", "tail")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def progress_line(row: dict) -> str:
    """The per-round log line: gap or loss/accuracy, consensus, bits, Flower bytes."""
    parts = []
    if "objective_gap" in row:
        parts.append(f"gap={row['objective_gap']:.3e}")
    else:
        parts.append(f"train-loss={row['train_loss']:.4f}")
    for key in ("accuracy", "mean_model_accuracy"):
        if key in row:
            parts.append(f"{key.replace('_', '-')}={row[key]:.4f}")
    parts.append(f"consensus={row['consensus_error']:.3e} bits={row['bits']}")
    if "flower_bytes_down" in row:
        parts.append(f"flower-bytes down={row['flower_bytes_down']} up={row['flower_bytes_up']}")
    return " ".join(parts)


def short_reason(reason: str) -> str:
    """The ClientApp's own message from Flower's error reason (drops Ray's wrapping)."""
    text = _ANSI.sub("", reason)
    if "Message: " in text:
        text = text.rsplit("Message: ", 1)[1]
    text = text.strip()
    return text[:-2].rstrip() if text.endswith("'>") else text


class WorkerFailure(RuntimeError):
    """One or more workers failed or did not answer within the timeout."""

    def __init__(self, message: str, failed: dict[int, str]) -> None:
        super().__init__(message)
        self.failed = failed


class GadmmRelay(Strategy):
    """Relay strategy for GADMM / Q-GADMM over Flower.

    Parameters
    ----------
    config : GadmmConfig
        Algorithm settings, sent to every worker at set-up (one source of truth).
    num_workers : int
        Number of SuperNodes expected; the run waits until all have connected.
    discovery_timeout : float
        Seconds to wait for all SuperNodes to register (default: 120).
    graph : Graph, optional
        Communication graph, any connected bipartite one (default: the chain of
        ``num_workers``). Workers are placed on the graph by partition id.
    on_row : callable, optional
        Called with each history row (e.g. to log progress or stream to a file).
    evaluate : callable, optional
        ``evaluate(mean model) -> dict`` merged into each history row (server-side
        evaluation of the workers' average, e.g. test accuracy).
    on_failure : str
        ``"repair"``: a worker that fails or stays silent in a phase counts as censored
        for the rest of that iteration, then leaves; the graph is repaired
        (:meth:`Graph.repaired`) and the run goes on with the others. ``"stop"``: raise
        :class:`WorkerFailure` at once (default: "repair").
    removals : dict, optional
        Planned departures ``{worker: iteration}``: the worker is not asked to step from
        that iteration on and the graph is repaired as for a failure.
    """

    def __init__(
        self,
        config: GadmmConfig,
        num_workers: int,
        discovery_timeout: float = 120.0,
        graph: Graph | None = None,
        on_row: Callable[[dict], None] | None = None,
        evaluate: Callable[[np.ndarray], dict[str, float]] | None = None,
        on_failure: str = "repair",
        removals: dict[int, int] | None = None,
    ) -> None:
        if on_failure not in ("repair", "stop"):
            raise ValueError(f"on_failure must be 'repair' or 'stop', got {on_failure!r}")
        if num_workers < 2:
            raise ValueError(f"num_workers must be >= 2, got {num_workers}")
        if not discovery_timeout > 0:
            raise ValueError(f"discovery_timeout must be > 0, got {discovery_timeout}")
        self.config = config
        self.num_workers = int(num_workers)
        self.discovery_timeout = float(discovery_timeout)
        self.graph = graph if graph is not None else chain(self.num_workers)
        if self.graph.num_nodes != self.num_workers:
            raise ValueError(f"graph has {self.graph.num_nodes} nodes for {num_workers} workers")
        self.on_row = on_row
        self.evaluate = evaluate
        self.on_failure = on_failure
        self.removals = dict(removals or {})
        self._failing: dict[int, str] = {}  # partition -> why, this iteration
        self._stats: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.history: list[dict] = []
        self.node_ids: list[int] = []  # partition id -> Flower node id
        self.optimum: Optimum | None = None
        self._pending: dict[tuple[int, int], bytes] = {}  # (src, dst) -> payload
        self._thetas: dict[int, np.ndarray] = {}
        self._reports: dict[int, dict[str, float]] = {}
        self.accountant = Accountant(self.graph)
        self._bytes_down = self._bytes_up = 0

    # ------------------------------------------------------------------ Strategy API
    def summary(self) -> None:
        """Log the configuration."""
        heads, tails = self.graph.colouring()
        log(INFO, "\t├── Algorithm: %s", self.config)
        log(INFO, "\t├── Workers: %d (heads %s, tails %s)", self.num_workers, heads, tails)
        log(INFO, "\t└── Edges: %s", self.graph.edges)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Messages of one phase (``config["phase"]``): each active worker's inbox."""
        phase = str(config["phase"])
        group = PHASES.index(phase)
        members = self.graph.colouring()[group]
        messages = []
        for n in (m for m in members if m not in self._failing):
            inbox = ArrayRecord(
                {
                    str(m): payload_array(self._pending.pop((m, n)))
                    for m in self.graph.neighbours(n)
                    if (m, n) in self._pending
                }
            )
            content = RecordDict(
                {"round": ConfigRecord({"iteration": server_round, "phase": phase}), "inbox": inbox}
            )
            messages.append(
                Message(
                    content,
                    dst_node_id=self.node_ids[n],
                    message_type=f"train.{phase}",
                    group_id=str(server_round),
                )
            )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Queue each payload for the sender's neighbours; keep models for the history.

        A reply without a payload is a censored worker: nothing is relayed and its
        neighbours keep their copy of it.
        """
        phase_bits = 0
        for msg in replies:
            n = self._partition(msg)
            metrics = dict(msg.content["metrics"].items())
            nominal = int(metrics.pop("nominal-bits"))
            metrics.pop("payload-bits")
            self._reports[n] = {k: float(v) for k, v in metrics.items()}
            self._thetas[n] = record_numpy(msg.content["model"])["theta"]
            if "payload" not in msg.content:
                self.accountant.skipped(n)
                continue
            payload = array_payload(msg.content["payload"]["payload"], f"reply of worker {n}")
            for m in self.graph.neighbours(n):
                if (n, m) in self._pending:
                    raise RuntimeError(f"payload {n}->{m} was never delivered (schedule bug)")
                self._pending[(n, m)] = payload
            self.accountant.sent(n, 8 * len(payload), nominal)
            phase_bits += 8 * len(payload)
        return None, MetricRecord({"payload-bits": phase_bits})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No separate evaluation round: the history is computed from the train replies."""
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """No separate evaluation round."""
        return None

    # ------------------------------------------------------------------ the run
    def start(  # type: ignore[override]
        self,
        grid: Grid,
        initial_arrays: ArrayRecord | None = None,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Discover and set up the workers, then run ``num_rounds`` head/tail iterations.

        ``timeout`` bounds every exchange (seconds). A worker that fails or stays silent
        leaves and the graph is repaired (``on_failure="repair"``), or the run raises
        :class:`WorkerFailure` naming it (``"stop"``, or when no repair is possible);
        ``self.history`` keeps the rows so far.
        """
        log(INFO, "Starting %s strategy:", self.__class__.__name__)
        self.summary()
        self._discover(grid, timeout)
        self._setup(grid, timeout)
        result = Result()
        t0 = time.monotonic()
        for k in range(1, num_rounds + 1):
            self.accountant.start_round()
            for p, at in self.removals.items():
                if at == k and p in self.graph.active:
                    log(INFO, "worker %d leaves the run before iteration %d (remove-workers)", p, k)
                    self._failing[p] = "removed by config"
            for phase in PHASES:
                self._run_phase(grid, k, phase, timeout)
            if self._failing:
                self._repair(grid, k, timeout)
            alive = self.graph.active
            thetas = [self._thetas[n] for n in alive]
            mean = np.mean(thetas, axis=0)
            extra = dict(self.evaluate(mean)) if self.evaluate is not None else {}
            if evaluate_fn is not None:
                extra.update(dict(evaluate_fn(k, numpy_record({"theta": mean})) or {}))
            row = history_row(
                k,
                thetas,
                [self._reports[n] for n in alive],
                self.accountant.counters(),
                self.optimum,
                extra,
            )
            row["flower_bytes_down"] = self._bytes_down
            row["flower_bytes_up"] = self._bytes_up
            self.history.append(row)
            result.train_metrics_clientapp[k] = MetricRecord(row)
            log(INFO, "[ROUND %d/%d] %s", k, num_rounds, progress_line(row))
            if self.on_row is not None:
                self.on_row(row)
        mean = np.mean([self._thetas[n] for n in self.graph.active], axis=0)
        result.arrays = numpy_record({"theta": mean})
        log(INFO, "Strategy finished %d rounds in %.2fs", num_rounds, time.monotonic() - t0)
        return result

    def last_models(self) -> dict[int, np.ndarray]:
        """The latest model each worker reported (partition -> theta), e.g. to save after
        a failure."""
        return dict(self._thetas)

    def _run_phase(self, grid: Grid, k: int, phase: str, timeout: float) -> None:
        messages = list(
            self.configure_train(k, ArrayRecord(), ConfigRecord({"phase": phase}), grid)
        )
        what = f"{phase} phase of iteration {k}"
        replies, failed = self._exchange(
            grid, messages, timeout, what, tolerate=self.on_failure == "repair"
        )
        self.aggregate_train(k, replies)
        for p, why in failed.items():
            log(WARNING, "worker %d leaves the run after failing in the %s: %s", p, what, why)
            self._failing[p] = why

    def _repair(self, grid: Grid, k: int, timeout: float) -> None:
        """Remove the workers that failed in iteration ``k`` and rewire the others.

        Every remaining worker gets the payloads still pending for it (so it applies its
        pending duals with this iteration's copies), its new neighbours and group, and,
        for a new edge, the new neighbour's public copy, fetched with ``query.export``
        and counted as repair bits. The optimum is recomputed for the remaining data.
        """
        failed = sorted(self._failing)
        try:
            new = self.graph.repaired(failed)
        except ValueError as exc:
            raise WorkerFailure(f"run stopped after iteration {k}: {exc}", {}) from None
        old = self.graph
        wanted = {
            n: [m for m in new.neighbours(n) if m not in old.neighbours(n)] for n in new.active
        }
        exporters = sorted({m for ms in wanted.values() for m in ms})
        copies: dict[int, np.ndarray] = {}
        if exporters:
            messages = [
                Message(RecordDict(), dst_node_id=self.node_ids[m], message_type="query.export")
                for m in exporters
            ]
            replies, _ = self._exchange(grid, messages, timeout, f"export after iteration {k}")
            for msg in replies:
                copies[self._partition(msg)] = record_numpy(msg.content["copy"])["theta-hat"]
        self._pending = {e: p for e, p in self._pending.items() if e[1] in new.active}
        messages = []
        for n in new.active:
            inbox = {
                str(m): payload_array(self._pending.pop((m, n)))
                for m in old.neighbours(n)
                if (m, n) in self._pending
            }
            given = {str(m): copies[m] for m in wanted[n]}
            for m in wanted[n]:
                self.accountant.repaired(m, 64 * copies[m].size)
            setup = ConfigRecord({"neighbours": list(new.neighbours(n)), "group": new.group(n)})
            content = RecordDict(
                {"repair": setup, "inbox": ArrayRecord(inbox), "copies": numpy_record(given)}
            )
            messages.append(
                Message(content, dst_node_id=self.node_ids[n], message_type="query.repair")
            )
        self._exchange(grid, messages, timeout, f"repair after iteration {k}")
        log(WARNING, "workers %s left after iteration %d; graph repaired: %s", failed, k, new.edges)
        self.graph = new
        self.accountant.set_graph(new)
        self._failing = {}
        if self._stats:
            theta = optimal_model([self._stats[n] for n in new.active])
            self.optimum = Optimum(theta, self._optimal_value(grid, theta, timeout))

    def _exchange(
        self,
        grid: Grid,
        messages: list[Message],
        timeout: float,
        what: str,
        tolerate: bool = False,
    ) -> tuple[list[Message], dict[int, str]]:
        """send_and_receive + accounting: (good replies, failed partition -> why).

        Errors or silence raise WorkerFailure naming the workers, unless ``tolerate``.
        """
        self._bytes_down += sum(message_bytes(m) for m in messages)
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        self._bytes_up += sum(message_bytes(m) for m in replies)
        to_partition = {nid: p for p, nid in enumerate(self.node_ids)}
        failed: dict[int, str] = {}
        answered = set()
        for msg in replies:
            src = msg.metadata.src_node_id
            answered.add(src)
            if msg.has_error():
                failed[src] = f"error {msg.error.code}: {short_reason(msg.error.reason)}"
        for m in messages:
            if m.metadata.dst_node_id not in answered:
                failed[m.metadata.dst_node_id] = f"no reply within {timeout:g}s"
        if failed:
            lines = [
                f"worker {to_partition.get(nid, '?')} (node {nid}): {why}"
                for nid, why in sorted(failed.items())
            ]
            for line in lines:
                log(WARNING, "%s failed: %s", what, line)
            if not tolerate:
                raise WorkerFailure(f"{what} failed: " + "; ".join(lines), failed)
        good = [m for m in replies if not m.has_error()]
        return good, {to_partition[nid]: why for nid, why in failed.items()}

    def _partition(self, msg: Message) -> int:
        return self.node_ids.index(msg.metadata.src_node_id)

    def _discover(self, grid: Grid, timeout: float) -> None:
        """Wait until ``num_workers`` nodes are connected; learn who holds which partition.

        Nodes register asynchronously, so the chain is built only once all are present.
        The first nodes seen are asked for their ``num-partitions`` at once, so a
        federation of the wrong size fails fast instead of waiting for the timeout.
        """
        deadline = time.monotonic() + self.discovery_timeout
        checked = False
        while True:
            ids = sorted(grid.get_node_ids())
            if len(ids) >= self.num_workers:
                break
            if ids and not checked:
                self._identify(grid, ids, timeout)
                checked = True
            if time.monotonic() > deadline:
                raise WorkerFailure(
                    f"only {len(ids)} of {self.num_workers} SuperNodes connected within "
                    f"{self.discovery_timeout:g}s (discovery-timeout)",
                    {},
                )
            time.sleep(0.5)
        log(INFO, "%d SuperNodes connected; asking for their partitions", len(ids))
        by_partition = self._identify(grid, ids, timeout)
        missing = sorted(set(range(self.num_workers)) - set(by_partition))
        if missing:
            raise ValueError(f"no SuperNode holds partition(s) {missing}")
        self.node_ids = [by_partition[p] for p in range(self.num_workers)]

    def _identify(self, grid: Grid, ids: list[int], timeout: float) -> dict[int, int]:
        """Ask nodes for (partition-id, num-partitions); return partition -> node id."""
        messages = [
            Message(RecordDict(), dst_node_id=i, message_type="query.identify") for i in ids
        ]
        self.node_ids = list(ids)  # provisional, for error messages
        replies, _ = self._exchange(grid, messages, timeout, "identify")
        by_partition: dict[int, int] = {}
        for msg in replies:
            ident = msg.content["identity"]
            pid, num = int(ident["partition-id"]), int(ident["num-partitions"])
            node = msg.metadata.src_node_id
            if num != self.num_workers:
                raise ValueError(
                    f"node {node} says num-partitions={num}, but the run expects "
                    f"num-workers={self.num_workers}; in simulation start the federation with "
                    f"--federation-config num-supernodes={self.num_workers} (or set num-workers)"
                )
            if pid in by_partition:
                raise ValueError(f"nodes {by_partition[pid]} and {node} both hold partition {pid}")
            by_partition[pid] = node
        return by_partition

    def _setup(self, grid: Grid, timeout: float) -> None:
        """Send settings, neighbours and group; collect data statistics for F*."""
        messages = [
            Message(
                RecordDict(
                    {
                        "setup": setup_record(
                            n, list(self.graph.neighbours(n)), self.graph.group(n), self.config
                        )
                    }
                ),
                dst_node_id=self.node_ids[n],
                message_type="query.setup",
            )
            for n in range(self.num_workers)
        ]
        replies, _ = self._exchange(grid, messages, timeout, "setup")
        dims: dict[int, int] = {}
        stats = self._stats
        for msg in replies:
            n = self._partition(msg)
            dims[n] = int(msg.content["model-size"]["dim"])
            if "statistics" in msg.content:
                s = record_numpy(msg.content["statistics"])
                stats[n] = (s["gram"], s["xty"])
        if len(set(dims.values())) != 1:
            by_worker = ", ".join(f"worker {n}: {d}" for n, d in sorted(dims.items()))
            raise ValueError(f"workers disagree on the model size ({by_worker})")
        if len(stats) == self.num_workers:
            theta = optimal_model([stats[n] for n in range(self.num_workers)])
            self.optimum = Optimum(theta, self._optimal_value(grid, theta, timeout))

    def _optimal_value(self, grid: Grid, theta: np.ndarray, timeout: float) -> float:
        """F* = sum_n f_n(theta*), each term from the worker's own residuals."""
        messages = [
            Message(
                RecordDict({"optimum": numpy_record({"theta": theta})}),
                dst_node_id=self.node_ids[n],
                message_type="query.optimum",
            )
            for n in self.graph.active
        ]
        values = {
            self._partition(msg): float(msg.content["objective"]["value"])
            for msg in self._exchange(grid, messages, timeout, "optimum")[0]
        }
        return float(sum(values[n] for n in self.graph.active))
