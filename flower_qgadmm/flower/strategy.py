"""RelayStrategy: the ServerApp strategy that runs any registered algorithm over Flower.

Thin by design: :meth:`RelayStrategy.start` discovers the SuperNodes and hands the run to
the round engine (:mod:`flower_qgadmm.rounds`) with the Flower transport
(:mod:`~flower_qgadmm.flower.transport`); one Flower round is one iteration of the
algorithm, made of the phases of its schedule (GADMM: two groups in turn; gossip: one).
Flower's Strategy methods are implemented on top of the same transport, so
``configure_train`` builds a phase's messages and ``aggregate_train`` posts its replies
(with the relay's checks; :meth:`RelayStrategy.start` does not call them, the engine
drives the exchanges itself).

``start`` takes Flower's arguments and honours each of them (or refuses it with a
message): ``initial_arrays`` is every worker's initial model (in the model's own layout);
``train_config`` overrides solver or algorithm settings for this run; ``evaluate_fn``
gets the workers' mean model as an ArrayRecord in the model's own layout, in evaluation
rounds (every ``evaluate_every`` rounds and the last; round 0 with ``initial_arrays``).
The returned ``Result`` has Flower's fields: ``train_metrics_clientapp`` holds each
round's history row (the workers' reports and the relay's counters and model metrics),
``evaluate_metrics_serverapp`` the model metrics and ``evaluate_fn``'s, ``arrays`` the
final mean model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from .. import checkpoint
from ..algorithms import Phase, get_algorithm
from ..config import (
    BASELINES,
    RESUMABLE,
    RunConfig,
    SolverSettings,
    algorithm_sections,
    setting_fields,
)
from ..history import RunRecorder, progress_line, resumed_run_folder, stopped_note
from ..rounds import RoundEngine, WorkerFailure
from ..settings import as_record, from_mapping, key_of, keys_of
from ..topology import Graph, chain, edges_text
from .metering import MeteredGrid, fedavg_bytes
from .records import numpy_record, record_numpy
from .transport import FlowerTransport

# Row keys computed from pulled models (evaluation rounds): Flower's server-side metrics.
MODEL_METRICS = ("consensus_error", "optimum_distance")


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
        Seconds to wait for all SuperNodes to connect and answer who they are (default:
        120); the whole discovery takes at most this long, whatever the phase timeout.
    on_failure : str
        ``"repair"``: a worker that fails or stays silent counts as censored for the rest
        of the iteration, then leaves; the graph is repaired and the run goes on.
        ``"stop"``: raise :class:`WorkerFailure` at once (default: "repair").
    removals : dict, optional
        Planned departures ``{worker: iteration}``.
    evaluate : callable, optional
        ``evaluate(flat mean model) -> dict`` merged into the rows of evaluation rounds.
    on_row : callable, optional
        Called with each history row.
    evaluate_every : int
        Pull the workers' models every this many rounds (and in the last) for the
        consensus error, the distance to the optimum, ``evaluate`` and ``evaluate_fn``;
        training replies never carry a model (default: 10).
    results_dir : str or Path, optional
        Write the run's results into a new sub-folder ``<UTC time>-flower-<algorithm>``:
        ``history.jsonl`` (appended round by round), ``history.png``, ``summary.md`` and
        the final mean model (``model.pt`` state_dict for torch models, else
        ``model.npz``) plus every worker's flat model (``models.npz``). Default: none.
    checkpoint_every : int
        With a results folder, save every worker's state (on its own machine) and the
        relay's every this many rounds under ``<run folder>/checkpoint`` (0: never;
        default: 10). See :mod:`flower_qgadmm.checkpoint`.
    resume : str or Path, optional
        A previous run folder: continue from its latest checkpoint, appending to its
        history (rows after the checkpoint are redone). The settings must be the same.
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
        evaluate_every: int = 10,
        results_dir: str | Path | None = None,
        checkpoint_every: int = 10,
        resume: str | Path | None = None,
    ) -> None:
        if algorithm in BASELINES:  # the run config's "fedavg": not a relay algorithm
            raise ValueError(
                f"algorithm {algorithm!r} is Flower's FedAvg, not an algorithm of the relay: "
                "run flwr.serverapp.strategy.FedAvg (or flower_qgadmm.flower."
                "run_flower_fedavg) on the same ClientApp when cfg.algorithm == 'fedavg', "
                "as clients/torch_example/torch_example/server_app.py does"
            )
        self.spec = get_algorithm(algorithm)
        for name, value, low in (("num_workers", num_workers, 2), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not discovery_timeout > 0:
            raise ValueError(f"discovery_timeout must be > 0, got {discovery_timeout}")
        if on_failure not in ("repair", "stop"):
            raise ValueError(f"on_failure must be 'repair' or 'stop', got {on_failure!r}")
        if int(evaluate_every) < 1:
            raise ValueError(f"evaluate_every must be >= 1, got {evaluate_every}")
        if int(checkpoint_every) < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
        self.num_workers = int(num_workers)
        self.settings = settings if settings is not None else self.spec.Settings()
        self.solver = solver if solver is not None else SolverSettings()
        # refused here, not at start() after the summary logged the wrong settings
        if not isinstance(self.settings, self.spec.Settings):
            raise TypeError(
                f"{self.spec.name} takes {self.spec.Settings.__name__} "
                f"(get_algorithm({self.spec.name!r}).Settings), got {self.settings!r}"
            )
        if not isinstance(self.solver, SolverSettings):
            raise TypeError(f"solver must be a SolverSettings, got {self.solver!r}")
        # what was asked for: every start() begins from it (a run's train_config and its
        # resolved automatic values do not carry over to the next)
        self._requested = (self.settings, self.solver)
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
        self.evaluate_every = int(evaluate_every)
        self.results_dir = results_dir
        self.checkpoint_every = int(checkpoint_every)
        self.resume = resume or None
        self.run_config: dict[str, Any] = {}  # the run's keys (from_config), for the summary
        # keys the run does not use: the algorithm's unused solver keys; from_config adds
        # those its task leaves unused
        self.unused: frozenset[str] = frozenset(self.spec.unused_keys)
        # the task and data settings (from_config): a resume with other ones is refused
        self.data_settings: dict[str, Any] = {}
        self.history: list[dict] = []
        self._served: set[str] = set()  # evaluate_fn's metric names in the last start()
        self.engine: RoundEngine | None = None
        self.transport: FlowerTransport | None = None
        self.recorder: RunRecorder | None = None

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
            "evaluate_every": cfg.evaluate_every,
            "results_dir": cfg.results_dir,
            "checkpoint_every": cfg.checkpoint_every,
            "resume": cfg.resume or None,
        }
        strategy = cls(cfg.algorithm, cfg.num_workers, **{**arguments, **kwargs})
        # the summary and the log list the run's keys, not those it does not read
        strategy.unused = cfg.unread()
        for line in cfg.unread_given():
            log(WARNING, "run config: %s", line)
        strategy.run_config = cfg.record()
        strategy.data_settings = cfg.data_settings()
        for miss in cfg.near_misses():  # a typo in a project's config (strict=False)
            log(WARNING, "run config: %s (the key is ignored)", miss)
        return strategy

    # ------------------------------------------------------------------ Strategy API
    def summary(self) -> None:
        """Log the configuration (the settings the run uses)."""

        def used(section: Any) -> str:
            kept = as_record(section).items()
            return ", ".join(f"{k}={v!r}" for k, v in kept if k not in self.unused) or "-"

        log(INFO, "\t├── Algorithm: %s (%s)", self.spec.name, used(self.settings))
        log(INFO, "\t├── Local solver: %s; seed %d", used(self.solver), self.seed)
        log(INFO, "\t└── Workers: %d, edges %s", self.num_workers, edges_text(self.graph.edges))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Messages of one phase (``config["phase"]``): each active member's inbox; the
        workers report their solver's metrics (test accuracy, ...) unless
        ``config["evaluate"]`` is False."""
        engine = self._engine()
        phases = {p.name: p for p in engine.phases}
        if config.get("phase") not in phases:
            raise ValueError(f"phase {config.get('phase')!r} is not one of {sorted(phases)}")
        phase = phases[str(config["phase"])]
        members = [n for n in phase.members if n not in engine.leaving]
        return self._transport().step_messages(
            server_round,
            phase,
            engine.inboxes(members),
            bool(config.get("evaluate", True)),
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Post each good reply's payload to the sender's neighbours (untouched), after the
        relay's envelope checks (:meth:`RoundEngine.faults`); error replies, malformed ones
        and refused payloads are not posted, and counted as ``failed``. Repairs happen
        in :meth:`start` (the engine), not here."""
        results, failed = self._transport().step_results(list(replies))
        engine = self._engine()
        failed = {**failed, **engine.faults(results)}  # drops the refused results
        engine.post(Phase("replies", tuple(results)), list(results), results)
        bits = sum(8 * len(r.payload) for r in results.values() if r.payload is not None)
        return None, MetricRecord({"payload-bits": bits, "failed": len(failed)})

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
    def _apply_train_config(self, train_config: ConfigRecord | None) -> None:
        """``train_config`` keys override solver settings (``lr``, ``local-steps``, ...) or
        the algorithm's settings (``rho``, ``bits``, ...); any other key is refused."""
        if not train_config:
            return
        solver_keys, algo_keys = set(keys_of(SolverSettings)), set(keys_of(self.spec.Settings))
        unknown = sorted(
            k for k in train_config if k.replace("_", "-") not in solver_keys | algo_keys
        )
        if unknown:
            raise ValueError(
                f"train_config key(s) {unknown} are neither solver settings "
                f"({sorted(solver_keys)}) nor {self.spec.name} settings ({sorted(algo_keys)}); "
                "the workers' local training is configured only through these"
            )
        mine = {k.replace("_", "-"): v for k, v in train_config.items()}
        solver = {k: v for k, v in mine.items() if k in solver_keys}
        algo = {k: v for k, v in mine.items() if k in algo_keys}
        self.solver = from_mapping(SolverSettings, {**as_record(self.solver), **solver})
        self.settings = from_mapping(self.spec.Settings, {**as_record(self.settings), **algo})

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

        Parameters (Flower's :meth:`Strategy.start`, each honoured or refused)
        ----------------------------------------------------------------------
        grid : Grid
            The ServerApp's grid; every message's bytes are counted
            (:class:`~flower_qgadmm.flower.metering.MeteredGrid`).
        initial_arrays : ArrayRecord, optional
            Every worker's initial model, in the model's own layout (for a torch model
            ``ArrayRecord(model.state_dict())``); default: the workers' seeded model.
        num_rounds : int
            Iterations (one Flower round each).
        timeout : float
            Seconds to wait for the replies of any one exchange.
        train_config : ConfigRecord, optional
            Overrides of solver settings (``lr``, ``local-steps``, ``optimizer``, ...) or
            of the algorithm's settings (``rho``, ``bits``, ...) for this run; other keys
            are refused (the workers have no other use for them).
        evaluate_config : ConfigRecord, optional
            Refused when non-empty: workers report their metrics with every step; there
            is no client-side evaluation round to configure.
        evaluate_fn : callable, optional
            ``evaluate_fn(server_round, arrays) -> MetricRecord | None`` as for Flower's
            FedAvg: ``arrays`` is the workers' mean model in the model's own layout, in
            evaluation rounds (every ``evaluate_every`` rounds, the last round, and round
            0 when ``initial_arrays`` is given). Its metrics go to
            ``Result.evaluate_metrics_serverapp`` (names as written) and into the history
            row (as written, or ``server_<name>`` where the row already has a worker
            metric of that name, e.g. ``server_accuracy``). For an algorithm whose last
            step waits for the next inbox (CHOCO-SGD, Malcom-PSGD, D-PSGD adapt-combine)
            it is called twice for the last round: for the row, then on the final models
            after that step, whose metrics ``Result`` keeps (a logger keyed by round sees
            the last round twice).

        A worker that fails or stays silent leaves and the graph is repaired
        (``on_failure="repair"``), or the run raises :class:`WorkerFailure` naming it
        (``"stop"``, or when no repair is possible); ``self.history`` (and
        ``results_dir``'s ``history.jsonl``) keep the rows so far.
        """
        if evaluate_config:
            raise ValueError(
                f"evaluate_config {dict(evaluate_config)} cannot be honoured: the workers "
                "report their metrics with every step and have no evaluation round; pass None"
            )
        if int(num_rounds) < 1:
            raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.settings, self.solver = self._requested
        self._apply_train_config(train_config)
        for w, at in sorted(self.removals.items()):
            if at > int(num_rounds):
                log(
                    WARNING,
                    "worker %d is to leave at iteration %d, after the last of %d rounds: it stays",
                    w,
                    at,
                    int(num_rounds),
                )
        initial = record_numpy(initial_arrays) if initial_arrays is not None else None
        log(INFO, "Starting %s strategy:", self.__class__.__name__)
        self.summary()
        self.transport = FlowerTransport(
            MeteredGrid(grid),
            self.spec.name,
            self.solver,
            self.seed,
            self.num_workers,
            timeout,
            self.discovery_timeout,
        )
        self.recorder = None  # created once the engine accepted the run (below)
        result = Result()
        k_now = [0]
        self._served = set()  # evaluate_fn's metric names (to find them in restored rows)

        def evaluate(mean: np.ndarray) -> dict[str, float]:
            extra = dict(self.evaluate(mean)) if self.evaluate is not None else {}
            if evaluate_fn is not None:
                arrays = numpy_record(self._engine().mean_arrays())
                extra.update(self._call_evaluate_fn(evaluate_fn, k_now[0], arrays, result))
            return extra

        def into_result(row: dict) -> None:
            k = row["iteration"]
            result.train_metrics_clientapp[k] = MetricRecord(_numbers(row))
            server_side = {key: row[key] for key in MODEL_METRICS if key in row}
            if server_side:
                result.evaluate_metrics_serverapp.setdefault(k, MetricRecord())
                result.evaluate_metrics_serverapp[k].update(server_side)

        def on_row(row: dict) -> None:
            k = row["iteration"]
            into_result(row)
            if self.recorder is not None:
                self.recorder.add(row)
            first = self.engine.history[0] if self.engine and self.engine.history else row
            log(INFO, "[ROUND %d/%d] %s", k, num_rounds, progress_line(row, first))
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
            evaluate_every=self.evaluate_every,
            checkpoint_every=self.checkpoint_every,
            run_settings={**self.data_settings, **as_record(self.solver)},
            unread=self.unused,
            run_config=self.run_config or None,
        )  # validates the run (graph, settings) before anything is written
        if self.resume is not None:
            # a missing or foreign checkpoint is refused before waiting for SuperNodes, and
            # before anything is written into the folder given (which may be no run's)
            checkpoints = resumed_run_folder(self.resume) / "checkpoint"
            try:
                self.engine.check_resume(checkpoints, num_rounds)
            except ValueError:
                hint = self._resume_overrides(checkpoints)
                if hint:  # the settings of the checkpoint's run, as Flower takes them
                    log(WARNING, "Resume: to continue that run, give its settings: %s", hint)
                raise
        if self.results_dir is not None or self.resume is not None:
            label = f"flower-{self.spec.name}"
            self.recorder = RunRecorder(self.results_dir or ".", label, self.resume)
            self.engine.checkpoint_dir = str(self.recorder.checkpoints)
            log(INFO, "Results go to %s", self.recorder.path)
        self.history = self.engine.history  # filled as rounds complete, kept on failure
        finished = started = False
        error: BaseException | None = None  # what stopped the run, for its summary
        try:
            self.transport.discover()
            done = 0
            if self.resume is not None and self.recorder is not None:
                done = self.engine.resume(self.recorder.checkpoints, num_rounds)
                self.recorder.restart_from(self.engine.history)
                restored = list(self.engine.history)
                for row in restored:
                    into_result(row)
            else:
                self.engine.start(initial)
                if evaluate_fn is not None and initial_arrays is not None:
                    self._call_evaluate_fn(evaluate_fn, 0, initial_arrays, result)
            started = True
            self.settings = self.engine.settings  # automatic values resolved
            t0 = time.monotonic()
            for k in range(done + 1, num_rounds + 1):
                k_now[0] = k
                self.engine.run_round(k, final=k == num_rounds)
            k_now[0] = num_rounds  # a deferred step's final evaluation is the last round's
            self.engine.finish()
            finished = True
            result.arrays = numpy_record(self.engine.mean_arrays())
            final = {
                key: self.engine.final[key] for key in MODEL_METRICS if key in self.engine.final
            }
            if final:  # the metrics of round num_rounds describe result.arrays
                result.evaluate_metrics_serverapp.setdefault(num_rounds, MetricRecord())
                result.evaluate_metrics_serverapp[num_rounds].update(final)
            if done == num_rounds and evaluate_fn is not None and not self.engine.final:
                # a finished run resumed (to finalise its folder): no round ran here, so
                # evaluate_fn sees the final model as the last round's call did
                self._call_evaluate_fn(evaluate_fn, num_rounds, result.arrays, result)
            if done:  # the restored rows hold evaluate_fn's metrics of their rounds too
                self._served_into_result(restored, result)
            ran = f"{num_rounds - done} rounds" + (f" (resumed after {done})" if done else "")
            log(INFO, "Strategy finished %s in %.2fs", ran, time.monotonic() - t0)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if started or self.resume is None:  # a refused resume leaves its run's files
                self._close_results(num_rounds, finished, error)
        return result

    def _resume_overrides(self, checkpoints: Path) -> str:
        """``flwr run . --run-config "dim=30 resume='...'"``: the run-config keys whose
        values differ from those the checkpoint's run recorded (:meth:`RunConfig.record`),
        as they were, but those a resume may change (:data:`RESUMABLE`); empty when the
        checkpoint keeps no record (written by an earlier version) or none differs.
        (Flower passes every key of the project's config, so the relay cannot tell the
        keys given from the others and take the rest from the checkpoint; and the
        ClientApps read theirs from the run config too.)"""
        try:
            state = checkpoint.relay_state(checkpoints, checkpoint.latest(checkpoints))
        except (OSError, ValueError):
            return ""
        record = state.get("run-config")
        if not isinstance(record, dict):
            return ""
        defaults = {key_of(f.name): f.default for _, f in setting_fields()}
        differ = [
            f"{key}={_toml(value)}"
            for key, value in sorted(record.items())
            if key in defaults
            and key not in RESUMABLE
            and self.run_config.get(key, defaults[key]) != value
        ]
        if not differ:
            return ""
        return f'flwr run . --run-config "{" ".join(differ)} resume={_toml(str(self.resume))}"'

    def _served_into_result(self, rows: list[dict], result: Result) -> None:
        """Put ``evaluate_fn``'s metrics of restored history rows (a resumed run's rounds
        before its checkpoint) into ``result.evaluate_metrics_serverapp``, as the
        uninterrupted run had them: each name this run's ``evaluate_fn`` returned, from
        the rows where models were pulled (as written, or ``server_<name>``)."""
        for row in rows:
            k = row["iteration"]
            if k not in result.evaluate_metrics_serverapp:  # no model pull in that round
                continue
            served = {}
            for name in sorted(self._served):
                key = f"server_{name}" if f"server_{name}" in row else name
                if isinstance(row.get(key), (int, float)):
                    served[name] = row[key]
            record = result.evaluate_metrics_serverapp[k]
            record.update({n: v for n, v in served.items() if n not in record})

    def _call_evaluate_fn(
        self,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None],
        server_round: int,
        arrays: ArrayRecord,
        result: Result,
    ) -> dict[str, float]:
        metrics = evaluate_fn(server_round, arrays)
        if metrics is None:
            return {}
        self._served.update(dict(metrics))
        result.evaluate_metrics_serverapp.setdefault(server_round, MetricRecord())
        result.evaluate_metrics_serverapp[server_round].update(dict(metrics))
        log(INFO, "Global evaluation, round %d: %s", server_round, dict(metrics))
        return dict(metrics)

    def _close_results(
        self, num_rounds: int, finished: bool, error: BaseException | None = None
    ) -> None:
        """Write the plot, summary and models into ``results_dir`` (also after a failure:
        whatever models were last pulled, and the ``error`` that stopped the run)."""
        if self.recorder is None:
            return
        engine = self.engine
        model = engine.mean_arrays() if engine is not None and engine.arrays else None
        rounds = len(self.recorder.rows)
        reference = fedavg_bytes(model, self.num_workers, rounds) if model and rounds else None
        note = "" if finished else stopped_note(rounds, num_rounds, error)
        graph = self.graph
        settings: dict[str, Any] = {
            "algorithm": self.spec.name,
            "num-workers": self.num_workers,
            "seed": self.seed,
            "rounds": num_rounds,
            "graph": f"{graph.num_nodes} nodes, {len(graph.edges)} edges",
            "evaluate-every": self.evaluate_every,
            "checkpoint-every": self.checkpoint_every,
            **{k: v for k, v in as_record(self.settings).items() if k not in self.unused},
        }
        settings.update(
            {f"solver {k}": v for k, v in as_record(self.solver).items() if k not in self.unused}
        )
        # the run config's other keys (task, topology, ...), as the FedAvg baseline lists;
        # not num-iterations ("rounds" is what ran) nor other algorithms' settings
        skip = {"num-iterations", *keys_of(*algorithm_sections())}
        settings.update(
            {
                k: v
                for k, v in self.run_config.items()
                if k not in settings and f"solver {k}" not in settings and k not in skip
            }
        )
        line = self.recorder.close(
            settings,
            model,
            engine.framework if engine else "numpy",
            reference,
            note,
            final=engine.final if engine is not None else None,
            departures=engine.departures if engine is not None else (),
        )
        if engine is not None and engine.thetas:
            models = {f"worker-{p}": t for p, t in engine.models().items()}
            np.savez(self.recorder.path / "models.npz", **models)
        log(INFO if finished else WARNING, "%s", line)
        log(INFO, "Wrote %s", self.recorder.path)

    @property
    def graph(self) -> Graph:
        """The communication graph (repaired as workers leave)."""
        return self.engine.graph if self.engine else self._graph

    @property
    def node_ids(self) -> list[int]:
        """Flower node id of each partition (after discovery)."""
        return self.transport.node_ids if self.transport else []

    def last_models(self) -> dict[int, np.ndarray]:
        """The latest model pulled from each worker (partition -> flat theta)."""
        return self.engine.models() if self.engine else {}


def _numbers(row: Mapping[str, Any]) -> dict[str, float | int]:
    """The numeric entries of a history row (what a MetricRecord can hold)."""
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


__all__ = ["RelayStrategy", "WorkerFailure", "progress_line"]


def _toml(value: Any) -> str:
    """``value`` as a TOML value of ``flwr run --run-config``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'" if "'" not in value else json.dumps(value)
    return repr(value)
