"""RelayStrategy: the ServerApp strategy that runs any registered algorithm over Flower.

Thin by design: :meth:`RelayStrategy.start` discovers the SuperNodes and hands the run to
the round engine (:mod:`flower_qgadmm.rounds`) with the Flower transport
(:mod:`~flower_qgadmm.flower.transport`); one Flower round is one iteration of the
algorithm, made of the phases of its schedule (GADMM: two groups in turn; gossip: one).
Flower's Strategy methods are implemented on top of the same transport, so
``configure_train`` builds a phase's messages and ``aggregate_train`` reads its replies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from ..algorithms import Phase, get_algorithm
from ..config import RunConfig, SolverSettings
from ..history import progress_line
from ..rounds import RoundEngine, WorkerFailure
from ..topology import Graph, chain
from .records import numpy_record
from .transport import FlowerTransport


class RelayStrategy(Strategy):
    """Relay strategy: runs a registered decentralized algorithm over Flower.

    Parameters
    ----------
    algorithm : str
        Registered algorithm name (``"q-gadmm"``, ``"q-sgadmm"``, ``"d-psgd"``, ...).
    num_workers : int
        Number of SuperNodes expected; the run waits until all have connected.
    settings : object, optional
        The algorithm's settings (default: its defaults), sent to every worker.
    solver : SolverSettings, optional
        Local-solver settings sent to every worker (default: the defaults).
    seed : int
        Run seed (default: 0).
    graph : Graph, optional
        Communication graph (default: the chain of ``num_workers``). Workers are placed
        on it by partition id.
    mixing : str or np.ndarray
        Mixing weights of gossip algorithms (default: "metropolis").
    discovery_timeout : float
        Seconds to wait for all SuperNodes to register (default: 120).
    on_failure : str
        ``"repair"``: a worker that fails or stays silent counts as censored for the rest
        of the iteration, then leaves; the graph is repaired and the run goes on.
        ``"stop"``: raise :class:`WorkerFailure` at once (default: "repair").
    removals : dict, optional
        Planned departures ``{worker: iteration}``.
    evaluate : callable, optional
        ``evaluate(mean model) -> dict`` merged into each history row.
    on_row : callable, optional
        Called with each history row.
    """

    def __init__(
        self,
        algorithm: str,
        num_workers: int,
        settings: Any = None,
        solver: SolverSettings | None = None,
        seed: int = 0,
        graph: Graph | None = None,
        mixing: str | np.ndarray = "metropolis",
        discovery_timeout: float = 120.0,
        on_failure: str = "repair",
        removals: dict[int, int] | None = None,
        evaluate: Callable[[np.ndarray], dict[str, float]] | None = None,
        on_row: Callable[[dict], None] | None = None,
    ) -> None:
        self.spec = get_algorithm(algorithm)
        if num_workers < 2:
            raise ValueError(f"num_workers must be >= 2, got {num_workers}")
        if not discovery_timeout > 0:
            raise ValueError(f"discovery_timeout must be > 0, got {discovery_timeout}")
        if on_failure not in ("repair", "stop"):
            raise ValueError(f"on_failure must be 'repair' or 'stop', got {on_failure!r}")
        self.num_workers = int(num_workers)
        self.settings = settings if settings is not None else self.spec.Settings()
        self.solver = solver if solver is not None else SolverSettings()
        self.seed = int(seed)
        self._graph = graph if graph is not None else chain(self.num_workers)
        if self._graph.num_nodes != self.num_workers:
            raise ValueError(f"graph has {self._graph.num_nodes} nodes for {num_workers} workers")
        self.spec.worker.schedule(self._graph)  # refuses a graph the algorithm cannot use
        self.mixing = mixing
        self.discovery_timeout = float(discovery_timeout)
        self.on_failure = on_failure
        self.removals = dict(removals or {})
        self.evaluate = evaluate
        self.on_row = on_row
        self.history: list[dict] = []
        self.engine: RoundEngine | None = None
        self.transport: FlowerTransport | None = None

    @classmethod
    def from_config(cls, cfg: RunConfig, **kwargs: Any) -> RelayStrategy:
        """The strategy a :class:`RunConfig` describes; ``kwargs`` add or override
        constructor arguments (``evaluate``, ``on_row``, ``discovery_timeout``, ...)."""
        arguments: dict[str, Any] = {
            "settings": cfg.algo,
            "solver": cfg.solver,
            "seed": cfg.seed,
            "graph": cfg.graph,
            "mixing": cfg.mixing_weights(),
            "discovery_timeout": cfg.discovery_timeout,
            "on_failure": cfg.on_failure,
            "removals": cfg.removals(),
        }
        return cls(cfg.algorithm, cfg.num_workers, **{**arguments, **kwargs})

    # ------------------------------------------------------------------ Strategy API
    def summary(self) -> None:
        """Log the configuration."""
        log(INFO, "\t├── Algorithm: %s %s", self.spec.name, self.settings)
        log(INFO, "\t├── Local solver: %s, seed %d", self.solver, self.seed)
        log(INFO, "\t└── Workers: %d, edges %s", self.num_workers, self.graph.edges)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Messages of one phase (``config["phase"]``): each active member's inbox."""
        engine = self._engine()
        phases = {p.name: p for p in engine.phases}
        if config.get("phase") not in phases:
            raise ValueError(f"phase {config.get('phase')!r} is not one of {sorted(phases)}")
        phase = phases[str(config["phase"])]
        members = [n for n in phase.members if n not in engine.leaving]
        return self._transport().step_messages(
            server_round, phase, {n: engine.inbox(n) for n in members}
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Post each reply's payload to the sender's neighbours (untouched). Failures and
        repairs are handled by :meth:`start` (the engine), not here."""
        results = self._transport().step_results(list(replies))
        engine = self._engine()
        engine.post(Phase("replies", tuple(results)), list(results), results)
        bits = sum(8 * len(r.payload) for r in results.values() if r.payload is not None)
        return None, MetricRecord({"payload-bits": bits})

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

    def _engine(self) -> RoundEngine:
        if self.engine is None:
            raise RuntimeError("call start() first: the engine is created there")
        return self.engine

    def _transport(self) -> FlowerTransport:
        if self.transport is None:
            raise RuntimeError("call start() first: the transport is created there")
        return self.transport

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
        """Discover and set up the workers, then run ``num_rounds`` iterations.

        ``timeout`` bounds every exchange (seconds). A worker that fails or stays silent
        leaves and the graph is repaired (``on_failure="repair"``), or the run raises
        :class:`WorkerFailure` naming it (``"stop"``, or when no repair is possible);
        ``self.history`` keeps the rows so far.
        """
        log(INFO, "Starting %s strategy:", self.__class__.__name__)
        self.summary()
        self.transport = FlowerTransport(
            grid,
            self.spec.name,
            self.solver,
            self.seed,
            self.num_workers,
            timeout,
            self.discovery_timeout,
        )
        result = Result()
        k_now = [0]

        def evaluate(mean: np.ndarray) -> dict[str, float]:
            extra = dict(self.evaluate(mean)) if self.evaluate is not None else {}
            if evaluate_fn is not None:
                extra.update(dict(evaluate_fn(k_now[0], numpy_record({"theta": mean})) or {}))
            return extra

        def on_row(row: dict) -> None:
            result.train_metrics_clientapp[row["iteration"]] = MetricRecord(row)
            log(INFO, "[ROUND %d/%d] %s", row["iteration"], num_rounds, progress_line(row))
            if self.on_row is not None:
                self.on_row(row)

        self.engine = RoundEngine(
            self.spec,
            self.settings,
            self._graph,
            self.transport,
            self.mixing,
            self.on_failure,
            self.removals,
            evaluate if (self.evaluate or evaluate_fn) else None,
            on_row,
            log,
        )
        self.history = self.engine.history  # filled as rounds complete, kept on failure
        self.transport.discover()
        self.engine.start()
        self.settings = self.engine.settings  # automatic values resolved
        t0 = time.monotonic()
        for k in range(1, num_rounds + 1):
            k_now[0] = k
            self.engine.run_round(k)
        self.engine.finish()
        mean = np.mean([self.engine.thetas[n] for n in self.engine.graph.active], axis=0)
        result.arrays = numpy_record({"theta": mean})
        log(INFO, "Strategy finished %d rounds in %.2fs", num_rounds, time.monotonic() - t0)
        return result

    @property
    def graph(self) -> Graph:
        """The communication graph (repaired as workers leave)."""
        return self.engine.graph if self.engine else self._graph

    @property
    def node_ids(self) -> list[int]:
        """Flower node id of each partition (after discovery)."""
        return self.transport.node_ids if self.transport else []

    def last_models(self) -> dict[int, np.ndarray]:
        """The latest model each worker reported (partition -> theta), e.g. to save after
        a failure."""
        return self.engine.models() if self.engine else {}


__all__ = ["RelayStrategy", "WorkerFailure", "progress_line"]
