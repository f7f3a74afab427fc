"""The round, written once: any registered algorithm, any transport.

One iteration (= one Flower round) of a decentralized algorithm, for each phase of the
algorithm's schedule:

1. build each active member's inbox from the mailbox (payloads its neighbours sent
   since it last stepped);
2. the transport delivers the inboxes and steps the members (in-process calls, or one
   Flower message exchange), collecting each member's payload and scalar metrics (the
   training traffic is the payloads; a member's model comes along only with its last
   step of an evaluation iteration, see below);
3. every payload is posted, untouched, to the sender's neighbours; its measured bits
   (8 x bytes) and the paper's nominal bits are counted;
4. a worker that failed or stayed silent is treated per the failure policy: ``"stop"``
   raises :class:`WorkerFailure`; ``"repair"`` lets it count as censored for the rest
   of the iteration. Faults are pinned on the worker that caused them: the relay checks
   every payload's envelope (:meth:`Codec.check_envelope`: header, width, length, range
   against the run's model size; no value is decoded) before posting it, and a receiver
   that still cannot decode a payload skips it and names its sender
   (:meth:`Worker.receive_all`); in both cases the *sender* fails.

At the iteration boundary, workers that failed or were removed leave: the graph is
repaired (:meth:`Graph.repaired`), mixing weights recomputed, new neighbours get each
other's public copies, and the optimum F* is recomputed for the remaining data. In an
evaluation round (every ``evaluate_every`` iterations, and the last one) the relay
needs the workers' models, in their owner's layout (:mod:`~flower_qgadmm.model_arrays`),
for the consensus error, the distance to the optimum and the mean-model evaluation:
each worker returns its model with its last step of the iteration (:class:`LastStep`),
and a model that did not come (an older ClientApp, a repair) is pulled.
Then the history row is produced (:func:`~flower_qgadmm.metrics.history_row`).

Set-up, once per run: the transport asks every worker for its problem's report (model
size, smoothness, sufficient statistics); the algorithm resolves automatic settings;
the workers are set up with their wiring; F* = sum_n f_n(theta*) is summed from residuals.

Checkpoints (:mod:`~flower_qgadmm.checkpoint`), every ``checkpoint_every`` iterations:
each worker saves its own state with its last step of the iteration (:class:`LastStep`;
at the boundary instead, when that save failed or a repair changed the states), then
the engine saves its own (graph, mailbox, counters, F*, history).
:meth:`RoundEngine.resume` restores both and the run continues exactly as if it had not
stopped.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import re
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import checkpoint, crypto
from .algorithms import AlgorithmSpec, Phase, Reports, Wiring
from .compression import PayloadError, ScaleLimitError, registered_name
from .conditioning import FeatureTransform, global_transform, single_blas_thread
from .metrics import (
    Accountant,
    Optimum,
    Watchdog,
    add_extra,
    history_row,
    model_metrics,
    optimal_model,
)
from .model_arrays import Arrays, average, flatten
from .numeric import all_finite, frozen_at_once, largest_eigenvalue, number
from .settings import as_record, from_mapping
from .solvers import STOCHASTIC_ONLY
from .topology import EDGES_SHOWN, Graph, check_mixing_matrix, edges_text, mixing_groups

if TYPE_CHECKING:
    from scipy.sparse import csr_array

# The largest range (scale) field the relay forwards: a legitimate model difference this
# large means the sender's model blew up; beyond it the payload is refused and its sender
# fails (the policy applies: one such worker leaves), rather than letting its neighbours
# diverge. When the run cannot go on (policy "stop", or no graph left to repair) and a
# worker failed so, the run diverged: FloatingPointError, with the algorithm's advice.
MAX_RANGE = 1e15
DIVERGED = f"diverged: its message's range R exceeds the relay's limit {MAX_RANGE:g}"
#: A set-up stage (describe, resolve, set up, optimum) that takes at least this many
#: seconds says so in the log, so that a large run is not silent for a minute.
SLOW_STAGE = 2.0

ACCOUNTANT_FIELDS = (
    "bits",
    "nominal_bits",
    "transmissions",
    "censored",
    "round_transmissions",
    "repair_bits",
    "energy",
    "relayed_bytes",
    "sealed_bytes",
)

log = logging.getLogger(__name__)

Inbox = dict[int, bytes]  # source worker -> payload
# what a set-up report may carry (LocalSolver.report)
REPORT_KEYS = ("dim", "smoothness", "statistics", "layout", "framework", "moments", "shapes")


def _same_shapes(seen: Mapping[int, Sequence[str] | None]) -> None:
    """Refuse workers whose models' arrays (a report's ``shapes``: ``"name (shape)"`` per
    array of the model's layout, buffers included) differ, naming the first worker that
    differs from the lowest-numbered one and the first array that does: models of one
    size and parameter names but other shapes (another architecture) cannot be mixed."""
    first, *others = sorted(seen)
    want = tuple(seen[first] or ())
    for n in others:
        got = tuple(seen[n] or ())
        if got == want:
            continue
        for a, b in zip(got, want, strict=False):
            if a != b:
                break
        else:  # one is a prefix of the other: the first array only one has
            a = got[len(want)] if len(got) > len(want) else "nothing"
            b = want[len(got)] if len(want) > len(got) else "nothing"
        raise ValueError(
            f"workers disagree on the model's arrays: worker {n} has {a} where worker "
            f"{first} has {b} (every node's model_fn must build the same architecture)"
        )


class WorkerFailure(RuntimeError):
    """One or more workers failed or did not answer within the timeout."""

    def __init__(self, message: str, failed: Mapping[int, str]) -> None:
        super().__init__(message)
        self.failed = dict(failed)


@dataclass(frozen=True)
class LastStep:
    """What a member also does after its last step of an iteration, in the same exchange
    (saving the relay one exchange per request: in deployment a message round trip costs
    seconds): reply with its model (an evaluation round), and save its checkpoint of the
    iteration under ``checkpoint`` (deleting those before ``previous``). A worker's model
    and state do not change between its last step and the iteration boundary unless the
    graph is repaired, so both equal what a pull or a checkpoint message at the boundary
    would get."""

    model: bool = False
    checkpoint: str | None = None
    previous: int | None = None
    run: str | None = None  # the engine's run id, written with the worker's checkpoint


@dataclass(frozen=True)
class StepResult:
    """What a worker returned from one step."""

    payload: bytes | None  # None: nothing sent (censored)
    metrics: Mapping[str, float]  # its report (``objective``, ``disagreement``, ...)
    nominal_bits: int  # the paper's bit count of the payload
    blame: Mapping[int, str] = field(default_factory=dict)  # senders it could not decode
    model: Arrays | None = None  # its model (owner layout), when its LastStep asked
    saved: bool = False  # it saved its checkpoint, when its LastStep asked


def step_result(
    payload: bytes | None,
    metrics: Mapping[str, float],
    nominal_bits: int,
    blame: Mapping[int, str],
    model: Arrays | None = None,
    saved: bool = False,
) -> StepResult:
    """``StepResult(payload, metrics, nominal_bits, blame, model, saved)``, its fields set
    at once instead of through the frozen dataclass's per-field ``__setattr__`` (the
    in-process transport builds one per worker and step). The same object."""
    fields = {"payload": payload, "metrics": metrics, "nominal_bits": nominal_bits}
    fields["blame"], fields["model"], fields["saved"] = blame, model, saved
    return frozen_at_once(StepResult, fields)


class Transport(ABC):
    """How the engine reaches the workers: in-process, or over Flower."""

    #: Column scale of the least-squares features, sent with the set-up (None: none);
    #: set by the engine (:meth:`set_feature_scale`) before :meth:`setup` / :meth:`restore`.
    feature_scale: np.ndarray | None = None

    def set_feature_scale(self, scale: np.ndarray | None) -> None:
        """The workers' solvers divide their feature columns by ``scale`` (from the next
        :meth:`setup` or :meth:`restore` on; see :mod:`flower_qgadmm.solvers`). Kept in C
        order and read-only: the workers of one process then share it (a transform
        copies an array of another layout; an F-ordered whitening matrix was copied
        once per worker, d^2 floats each)."""
        if scale is None:
            self.feature_scale = None
            return
        self.feature_scale = np.array(scale, dtype=np.float64, order="C")
        self.feature_scale.flags.writeable = False

    @abstractmethod
    def describe(self, workers: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Each worker's problem report (:meth:`LocalSolver.report`, the
        :data:`REPORT_KEYS` it has)."""

    @abstractmethod
    def setup(
        self, wirings: Mapping[int, Wiring], settings: Any, initial: Arrays | None = None
    ) -> None:
        """Create every worker's state with its wiring and the (resolved) settings;
        ``initial``: the user's initial model (owner layout) instead of the solver's."""

    @abstractmethod
    def objective(self, theta: np.ndarray, workers: Sequence[int]) -> dict[int, float]:
        """f_n(theta) of each worker."""

    @abstractmethod
    def step(
        self,
        iteration: int,
        phase: Phase,
        inboxes: Mapping[int, Inbox],
        evaluate: bool = True,
        last: Mapping[int, LastStep] | None = None,
    ) -> tuple[dict[int, StepResult], dict[int, str]]:
        """Deliver the inboxes and step the members: (results, failed worker -> why);
        the reports carry the solvers' metrics (e.g. test accuracy) only if ``evaluate``;
        the members in ``last`` also do what their :class:`LastStep` asks (the result's
        ``model`` and ``saved``); ``why`` reads after "worker <n> ", e.g. "(node 7): no
        reply within 30s". A worker whose model diverged raises FloatingPointError (fatal
        whatever the policy)."""

    @abstractmethod
    def pull(self, workers: Sequence[int]) -> dict[int, dict[str, np.ndarray]]:
        """Each worker's current model in its owner's layout (evaluation traffic)."""

    @abstractmethod
    def finish(self, inboxes: Mapping[int, Inbox]) -> dict[int, dict[str, np.ndarray]]:
        """Deliver the last payloads, let every worker complete a deferred step
        (:meth:`Worker.finish`), return the final models (owner layout)."""

    @abstractmethod
    def export(self, requests: Mapping[int, Sequence[int]]) -> dict[int, np.ndarray | bytes]:
        """Each exporter's public copy for its new neighbours after a repair
        (``{exporter: recipients}``): the array, or sealed for the recipients when
        messages are encrypted."""

    @abstractmethod
    def rewire(
        self,
        plan: Mapping[int, tuple[Wiring, Inbox, dict[int, np.ndarray | bytes]]],
        settings: Any,
    ) -> None:
        """Deliver pending payloads, then adopt the new wiring, new neighbours' copies and
        the settings re-resolved for the new graph."""

    @abstractmethod
    def checkpoint(
        self,
        directory: str,
        iteration: int,
        workers: Sequence[int],
        previous: int | None,
        run: str | None = None,
    ) -> None:
        """Have every worker save its state of ``iteration`` under ``directory``, marked
        with ``run``, deleting checkpoints before ``previous``: each in its own file
        (:func:`~flower_qgadmm.checkpoint.save_worker`, a Flower worker on its machine)
        or all in one (:func:`~flower_qgadmm.checkpoint.save_workers`, workers sharing a
        process)."""

    @abstractmethod
    def restore(
        self,
        directory: str,
        iteration: int,
        wirings: Mapping[int, Wiring],
        settings: Any,
        run: str | None = None,
    ) -> None:
        """Set every worker up again (wiring, settings) and load its saved state, which
        must be marked with ``run`` when given (the relay checkpoint's run)."""

    def counters(self) -> dict[str, int]:
        """Transport counters added to each history row (e.g. Flower bytes)."""
        return {}

    def load_counters(self, counters: Mapping[str, int]) -> None:
        """Continue the :meth:`counters` of a resumed run (default: none kept)."""
        return None


class RoundEngine:
    """Runs a registered algorithm round by round through a transport.

    Parameters
    ----------
    spec : AlgorithmSpec
        The algorithm (:func:`~flower_qgadmm.algorithms.get_algorithm`).
    settings : object
        Its settings (an instance of ``spec.Settings``).
    graph : Graph
        The communication graph; workers sit on it by partition id.
    transport : Transport
        How the workers are reached.
    mixing : str, np.ndarray or scipy sparse matrix
        Mixing weights for algorithms that use them: ``"metropolis"`` (default),
        ``"max-degree"``, or a user matrix, dense or sparse (checked: symmetric, doubly
        stochastic, supported on the graph's edges).
    on_failure : str
        ``"repair"`` (default) or ``"stop"``.
    removals : mapping of worker -> iteration, optional
        Planned departures: the worker does not step from that iteration on and the
        graph is repaired at its end.
    evaluate : callable, optional
        ``evaluate(mean model) -> metrics`` merged into the rows of evaluation rounds.
    on_row : callable, optional
        Called with each history row.
    log_fn : callable, optional
        ``log_fn(level, msg, *args)`` for the engine's messages (default: this module's
        logger; the Flower strategy passes Flower's ``log``).
    evaluate_every : int
        Pull the models every this many iterations (and in the last one) for the
        consensus error, distance to the optimum and ``evaluate`` (default: 1).
    checkpoint_dir : str or Path, optional
        Where checkpoints go (default: none are written).
    checkpoint_every : int
        Save a checkpoint every this many iterations (0: never; default: 0).
    run_config : mapping, optional
        The run's config record (:meth:`RunConfig.record`), kept in checkpoints for a
        resume to rebuild the run from (``simulate --resume`` alone; not compared).
    """

    #: how the refusal of a resume with other settings than the checkpoint's ends: what
    #: to do to continue that run, worded for the caller's interface (the default suits
    #: ``run_from_config`` and Flower, which passes every key and logs the ``--run-config``
    #: that gives the checkpoint's; the CLI, which takes the settings from the
    #: checkpoint, says to leave the options out)
    resume_advice = "set them as the checkpoint has them to continue that run"

    def __init__(
        self,
        spec: AlgorithmSpec,
        settings: Any,
        graph: Graph,
        transport: Transport,
        mixing: str | np.ndarray | csr_array = "metropolis",
        on_failure: str = "repair",
        removals: Mapping[int, int] | None = None,
        evaluate: Callable[[np.ndarray], Mapping[str, float]] | None = None,
        on_row: Callable[[dict], None] | None = None,
        log_fn: Callable[..., None] | None = None,
        evaluate_every: int = 1,
        checkpoint_dir: Any = None,
        checkpoint_every: int = 0,
        run_settings: Mapping[str, Any] | None = None,
        unread: Collection[str] | None = None,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        if int(checkpoint_every) < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
        if int(evaluate_every) < 1:
            raise ValueError(f"evaluate_every must be >= 1, got {evaluate_every}")
        if on_failure not in ("repair", "stop"):
            raise ValueError(f"on_failure must be 'repair' or 'stop', got {on_failure!r}")
        if not isinstance(settings, spec.Settings):
            raise TypeError(f"{spec.name} takes {spec.Settings.__name__}, got {settings!r}")
        self.spec = spec
        self.requested = settings  # as given; automatic values are resolved per graph
        self.settings = settings
        self.transport = transport
        self.mixing_kind = mixing
        self.on_failure = on_failure
        self.removals = dict(removals or {})
        for w, at in self.removals.items():  # planned departures: a worker, an iteration
            if not (0 <= int(w) < graph.num_nodes) or int(at) < 1:
                raise ValueError(
                    f"removals {{{w}: {at}}}: worker must be in 0..{graph.num_nodes - 1} "
                    "and the iteration >= 1"
                )
        self.evaluate = evaluate
        self.on_row = on_row
        self.log = log_fn or log.log
        self.evaluate_every = int(evaluate_every)
        self.checkpoint_dir = None if checkpoint_dir is None else str(checkpoint_dir)
        self.checkpoint_every = int(checkpoint_every)
        # the settings beyond the algorithm's that shaped the run (the local solvers' lr,
        # local steps, ...; the data's) when the caller knows them: kept in checkpoints, so
        # that a resume with other ones is refused
        self.run_settings = None if run_settings is None else dict(run_settings)
        # the settings the run does not read (RunConfig.unread(); by default those the
        # algorithm does not read): a resume may change them
        self.unread = frozenset(spec.unused_keys if unread is None else unread)
        # the run's whole config (RunConfig.record()) when the caller knows it: kept in
        # checkpoints, so that a resume can rebuild the run from them (simulate --resume)
        self.run_config = None if run_config is None else dict(run_config)
        self._saved: int | None = None  # iteration of the last checkpoint written
        # what this run's relay files rely on in the folder it checkpoints into: (folder,
        # the run whose set-up part is there (checkpoint.save_setup), the history files
        # of earlier runs it continues, [[run, rows], ...]); and how many rows of the
        # history are in files (checkpoint.append_history). Written at its first
        # checkpoint into a folder, or taken from the checkpoint it resumed
        self._relies_on: tuple[str, str, list[list]] | None = None
        self._history_saved = 0
        # marks this run's checkpoint files: a worker file another run wrote into the same
        # folder (two resumptions of one checkpoint at once) is refused at resume
        self.run_id = uuid.uuid4().hex
        self._repaired: int | None = None  # iteration of the last graph repair
        self.graph = graph
        self._configured = graph  # the run's graph before any repair (checkpoints keep it)
        self.phases = spec.worker.schedule(graph)  # refuses a graph the algorithm can't use
        if getattr(settings, "encrypt", False):  # before any worker is set up
            for n in graph.active:
                crypto.check_recipients(len(graph.neighbours(n)), n)
        self.mixing = self._mixing(graph)
        self.accountant = Accountant(graph)
        self.optimum: Optimum | None = None
        self.history: list[dict] = []
        self.thetas: dict[int, np.ndarray] = {}  # worker -> latest pulled model (flat)
        self.arrays: dict[int, dict[str, np.ndarray]] = {}  # ... in its owner's layout
        self.layout: tuple[str, ...] = ("theta",)  # arrays making up the flat model
        self.framework = "numpy"
        self.reports: dict[int, Mapping[str, float]] = {}
        self._pending: dict[int, dict[int, bytes]] = {}  # dst -> {src: payload}
        self.leaving: dict[int, str] = {}  # workers leaving at the end of this iteration
        self.diverged: dict[int, float] = {}  # this iteration's senders of ranges > MAX_RANGE
        #: the workers that left: {"worker", "iteration" (0: at set-up), "reason"}, in order
        self.departures: list[dict[str, Any]] = []
        self._stats: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._reports: dict[int, dict[str, Any]] = {}
        self._internal: dict[int, list] = {}  # id(statistics) -> _internal_stats entry
        self._transform_of: tuple[np.ndarray, FeatureTransform] | None = None  # _transform
        self.scale: np.ndarray | None = None  # feature transform T: 1-D RMS or 2-D whitening
        self.conditioning = "none"  # what T is, for the log and the summary
        self.watchdog = Watchdog()  # divergence (raises) and stalls (a warning)
        self.stall: str | None = None  # the last stall or drift warning given
        #: What the final models say when the workers' last, deferred step moved them
        #: away from those the last row reports (gossip: the rows report the half steps,
        #: the final models have the last consensus step): :func:`~.metrics.
        #: model_metrics` plus ``evaluate`` of their mean; empty when they are the same
        #: (the GADMM family). Set by :meth:`finish`.
        self.final: dict[str, float] = {}
        self.dim = 0
        self.codec = spec.worker.codec_for(settings)  # to check envelopes at the relay

    def _mixing(self, graph: Graph) -> csr_array | None:
        """The gossip weights of ``graph``, sparse (None when the algorithm needs none)."""
        if not self.spec.worker.needs_mixing:
            return None
        if isinstance(self.mixing_kind, str):
            return graph.mixing_weights(self.mixing_kind)
        if graph.removed != self._configured.removed:  # the user's rows: the run's start
            raise ValueError("a user mixing matrix cannot be recomputed after workers leave")
        from scipy.sparse import csr_array as sparse

        weights = check_mixing_matrix(graph, self.mixing_kind)
        groups = mixing_groups(graph, weights)
        if len(groups) > 1:
            shown = "; ".join(str(g) if len(g) <= 8 else f"{g[:8]}..." for g in groups[:4])
            self.log(
                logging.WARNING,
                "the mixing matrix does not connect the workers: its positive weights split "
                "them into %d groups (%s%s) that never exchange information, so they cannot "
                "reach consensus (the identity is local training only)",
                len(groups),
                shown,
                "; ..." if len(groups) > 4 else "",
            )
        return sparse(weights)

    def _mixing_name(self) -> str | None:
        """What the run mixes with, kept in its checkpoints for a resume to compare: the
        weights' kind, or "a user matrix" with a digest of its entries (None when the
        algorithm mixes nothing)."""
        if not self.spec.worker.needs_mixing:
            return None
        if isinstance(self.mixing_kind, str):
            return repr(self.mixing_kind)
        W = self.mixing  # a user matrix is never recomputed: the configured graph's
        digest = hashlib.sha256(W.indptr.tobytes() + W.indices.tobytes() + W.data.tobytes())
        return f"a user matrix (sha256 {digest.hexdigest()[:12]})"

    # ------------------------------------------------------------------ set-up
    def start(self, initial: Arrays | None = None) -> None:
        """Describe the workers, resolve settings, set them up (from the user's
        ``initial`` model if given), compute F*. Workers that fail on the way are
        treated per the failure policy: with ``"repair"`` they leave before the first
        iteration and set-up starts over on the repaired graph."""
        while True:
            try:
                return self._start(initial)
            except WorkerFailure as exc:
                self._leave_before_start(exc)

    def _leave_before_start(self, exc: WorkerFailure) -> None:
        failed = {n: why for n, why in exc.failed.items() if n in self.graph.active}
        if self.on_failure == "stop" or not failed or len(failed) != len(exc.failed):
            raise exc
        if len(failed) == len(self.graph.active):  # nothing to repair: say so, with the cause
            raise WorkerFailure(f"every worker failed at set-up: {exc}", failed)
        try:
            new = self.graph.repaired(failed)
            phases, mixing = self.spec.worker.schedule(new), self._mixing(new)
        except ValueError as err:
            raise WorkerFailure(f"{exc}; and without them {err}", failed) from None
        for n, why in sorted(failed.items()):
            self.log(logging.WARNING, "worker %d leaves the run at set-up: %s", n, why)
            self.departures.append({"worker": n, "iteration": 0, "reason": why})
        self.graph, self.phases, self.mixing = new, phases, mixing
        self.accountant.set_graph(new)

    @contextmanager
    def _stage(self, what: str) -> Iterator[None]:
        """Log ``set-up: <what> in <s> s`` when the enclosed set-up stage took at least
        :data:`SLOW_STAGE` seconds (large runs: 100,000 workers take a minute to set up)."""
        start = time.perf_counter()
        yield
        took = time.perf_counter() - start
        if took >= SLOW_STAGE:
            self.log(logging.INFO, "set-up: %s in %.1f s", what, took)

    def _start(self, initial: Arrays | None) -> None:
        active = self.graph.active
        with self._stage(f"{len(active)} workers described"):
            reports = self.transport.describe(active)
        for key, what in (("dim", "model size"), ("layout", "model layout")):
            seen = {n: reports[n].get(key) for n in active}
            if len({str(v) for v in seen.values()}) != 1:
                by_worker = ", ".join(f"worker {n}: {v}" for n, v in sorted(seen.items()))
                networks = all(reports[n].get("framework") == "torch" for n in active)
                fix = (
                    "every node's model_fn must build the same architecture"
                    if networks
                    else "every worker's data must have the same features"
                )
                raise ValueError(f"workers disagree on the {what} ({by_worker}): {fix}")
        _same_shapes({n: reports[n].get("shapes") for n in active})
        first = reports[active[0]]
        self.dim = int(first["dim"])
        self.layout = tuple(first.get("layout", ("theta",)))
        self.framework = str(first.get("framework", "numpy"))
        self._reports = reports
        self._stats = {n: r["statistics"] for n, r in reports.items() if "statistics" in r}
        with self._stage("features scaled and settings resolved"):
            self.scale = self._feature_scale(active)
            self.transport.set_feature_scale(self.scale)
            reports = self._resolve_reports()  # one object: what both derive is kept on it
            self.settings = self._resolve(reports, self.graph, self.mixing)
            self._setup_warnings(reports)
        self.codec = self.spec.worker.codec_for(self.settings)
        with self._stage(f"{len(active)} workers set up"):
            self.transport.setup(self._wirings(self.graph), self.settings, initial)
        with self._stage("optimum F* computed"):
            self._update_optimum()

    def _feature_scale(self, active: Sequence[int]) -> np.ndarray | None:
        """The feature transform T (:mod:`~flower_qgadmm.conditioning`) from the workers'
        column ``moments`` and statistics, when the algorithm's ``scale_features`` asks for
        it and every solver reports moments (least squares); else None. The column RMS,
        or with ``whiten_features`` the whitening factor when it is accurate. An all-zero
        column is refused."""
        if not getattr(self.requested, "scale_features", False):
            return None
        moments = [self._reports[n].get("moments") for n in active]
        if any(m is None for m in moments):
            return None
        whiten = getattr(self.requested, "whiten_features", False)
        known = all(n in self._stats for n in active)
        grams = [self._stats[n][0] for n in active] if known else None
        transform, note = global_transform(moments, grams, whiten)
        self.log(logging.INFO, "feature conditioning: %s", note)
        self.conditioning = note
        return transform

    def _transform(self) -> FeatureTransform | None:
        """The transform of :attr:`scale` (built, and its matrix checked, once per scale)."""
        if self.scale is None:
            return None
        built = self._transform_of
        if built is None or built[0] is not self.scale:
            built = self._transform_of = (self.scale, FeatureTransform(self.scale, self.dim))
        return built[1]

    def _scaled_stats(self, stats: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(X^T X + l2 I, X^T y) in the solvers' internal coordinates."""
        return self._internal_stats(stats)[2]

    def _internal_stats(self, stats: tuple[np.ndarray, np.ndarray]) -> list:
        """[stats, scale, stats in internal coordinates, their smoothness or None]:
        transformed once per worker's statistics and feature transform (set-up resolves
        settings, logs warnings and computes F* from the same statistics)."""
        entry = self._internal.get(id(stats))
        if entry is None or entry[0] is not stats or entry[1] is not self.scale:
            transform = self._transform()
            scaled = stats if transform is None else transform.statistics(*stats)
            entry = self._internal[id(stats)] = [stats, self.scale, scaled, None]
        return entry

    def _options(self) -> dict[str, Any]:
        """The registered variant's options for the algorithm's warnings and advice, with
        its name as ``algorithm`` and the kind of local solver it runs as ``solver``."""
        return {**self.spec.options, "algorithm": self.spec.name, "solver": self.spec.solver}

    def _setup_warnings(self, reports: Reports) -> None:
        """Log the algorithm's warnings about the resolved settings
        (``Worker.setup_warnings(settings, options, reports)``, if it has one; ``options``
        are :meth:`_options`)."""
        check = getattr(self.spec.worker, "setup_warnings", None)
        if check is not None:
            for text in check(self.settings, self._options(), reports):
                self.log(logging.WARNING, "%s", text)
        task = (self.run_settings or {}).get("task")
        if task == "linreg" and self.framework != "numpy":  # the default task, forgotten
            self.log(
                logging.WARNING,
                "the run's task is 'linreg' but the workers train %s models: set task = "
                "'custom' for your own data and model (the summary records the task's "
                "data settings, which this run does not use)",
                self.framework,
            )

    def _resolve_reports(self, graph: Graph | None = None) -> Reports:
        """The active workers' reports with statistics in internal coordinates."""
        active = (graph or self.graph).active
        reports = [dict(self._reports[n]) for n in active]
        with single_blas_thread():  # one limit for the transforms of all workers' statistics
            entries = [
                self._internal_stats(r["statistics"])
                if self.scale is not None and "statistics" in r
                else None
                for r in reports
            ]
        for report, entry in zip(reports, entries, strict=True):
            if entry is not None:
                if entry[3] is None:
                    entry[3] = largest_eigenvalue(entry[2][0])
                report["statistics"], report["smoothness"] = entry[2], entry[3]
        return Reports(reports)

    def _resolve(self, reports: Reports, graph: Graph, mixing: csr_array | None) -> Any:
        resolve = self.spec.worker.resolve
        extra = {"graph": graph} if "graph" in inspect.signature(resolve).parameters else {}
        settings = resolve(self.requested, reports, mixing, **extra)
        if settings != self.requested:
            self.log(logging.INFO, "automatic settings resolved: %s", settings)
        return settings

    def _wirings(self, graph: Graph) -> dict[int, Wiring]:
        return {n: self.spec.worker.wiring_of(graph, n, self.mixing) for n in graph.active}

    def _update_optimum(self) -> None:
        active = self.graph.active
        if not all(n in self._stats for n in active):
            self.optimum = None
            return
        # theta* in the internal coordinates (better conditioned when scaled), reported in
        # original units; F* = sum_n f_n at it, which scaling does not change
        internal = optimal_model({n: self._scaled_stats(self._stats[n]) for n in active})
        transform = self._transform()
        theta = internal if transform is None else transform.to_original(internal)
        values = self.transport.objective(internal, active)
        numbers = [number(values[n], f"worker {n}: its solver's objective") for n in active]
        self.optimum = Optimum(theta, float(sum(numbers)))

    # ------------------------------------------------------------------ one iteration
    def run_round(self, k: int, final: bool = False) -> dict:
        """Iteration ``k`` (1-based): every phase, then repair, then (in an evaluation
        round: every ``evaluate_every``-th and the ``final`` one) the model pull, then the
        history row."""
        self.accountant.start_round()
        leaving = self.leaving = {}
        self.diverged = {}
        for w, at in self.removals.items():
            if at == k and w in self.graph.active:
                self.log(
                    logging.INFO, "worker %d leaves the run before iteration %d (planned)", w, k
                )
                leaving[w] = "removed by config"
        # the workers evaluate their model (test accuracy, ...) in evaluation rounds only
        evaluating = final or k % self.evaluate_every == 0
        every = self.checkpoint_every
        saving = bool(self.checkpoint_dir and every and k % every == 0)
        # a member's last step of the iteration also returns its model / saves its state
        request = LastStep(
            evaluating, self.checkpoint_dir if saving else None, self._saved, self.run_id
        )
        asking = evaluating or saving
        if asking:  # the phase of each worker's last step
            last_phase = {n: i for i, phase in enumerate(self.phases) for n in phase.members}
        models: dict[int, Arrays] = {}
        saved: set[int] = set()
        for i, phase in enumerate(self.phases):
            members = [n for n in phase.members if n not in leaving] if leaving else phase.members
            inboxes = self.inboxes(members)
            last = None
            if asking:
                last = {n: request for n in members if last_phase[n] == i}
            results, failed = self.transport.step(k, phase, inboxes, evaluating, last)
            failed = {**failed, **self.faults(results)}
            if failed and self.on_failure == "stop":
                self._stop_if_diverged(k, failed)
                why = causes(failed)
                raise WorkerFailure(f"{phase.name} phase of iteration {k} failed: {why}", failed)
            for n, why in failed.items():
                self.log(
                    logging.WARNING,
                    "worker %d leaves the run after failing in the %s phase of iteration %d: %s",
                    n,
                    phase.name,
                    k,
                    why,
                )
                leaving[n] = why
            self.post(phase, members, results)
            for n, r in results.items() if last else ():  # what the last steps returned
                if r.model is not None:
                    models[n] = r.model
                if r.saved:
                    saved.add(n)
        if leaving:
            self._repair(k, leaving)
        self.leaving = {}
        if evaluating:
            self.pull(k, models)  # may repair too (a bad model)
        row = self._row(k, evaluating)
        if saving:  # a repair changed the workers' states: they all save them again
            self.save_checkpoint(k, () if self._repaired == k else saved)
        return row

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, k: int, saved: Collection[int] = ()) -> None:
        """Checkpoint after iteration ``k``: the workers' states (but those in ``saved``,
        which saved theirs with their last step), then the engine's."""
        directory = self.checkpoint_dir
        if directory is None:
            raise ValueError("no checkpoint_dir given")
        missing = [n for n in self.graph.active if n not in saved]
        if missing:
            self.transport.checkpoint(directory, k, missing, self._saved, self.run_id)
        here = os.path.realpath(directory)
        if self._relies_on is None or self._relies_on[0] != here:  # nothing of it there yet
            self._save_setup(directory)
            self._relies_on, self._history_saved = (here, self.run_id, []), 0
        if len(self.history) > self._history_saved:  # append the rows since the last one
            checkpoint.append_history(
                directory, self.run_id, _jsonable(self.history[self._history_saved :])
            )
            self._history_saved = len(self.history)
        _, setup, parts = self._relies_on
        own = self._history_saved - sum(count for _, count in parts)
        # one entry per kind, not per worker (checkpoint.stack_rows)
        arrays = checkpoint.pack_blobs(
            "pending",
            {(src, dst): p for dst, box in self._pending.items() for src, p in box.items()},
        )
        arrays.update(checkpoint.stack_rows("theta", self.thetas))
        if self.optimum is not None:
            arrays["optimum"] = self.optimum.theta
        if self.scale is not None:
            arrays["feature-scale"] = self.scale
        state = {
            "iteration": k,
            "run": self.run_id,
            "algorithm": self.spec.name,
            "requested": as_record(self.requested),
            "format": CHECKPOINT_FORMAT,
            "run-settings": self.run_settings,
            "run-config": self.run_config,
            "settings": as_record(self.settings),
            "seed": getattr(self.transport, "seed", None),
            "configured-edges": [list(e) for e in self._configured.edges],
            "mixing": self._mixing_name(),
            "evaluate-every": self.evaluate_every,
            "removals": {str(w): int(at) for w, at in sorted(self.removals.items())},
            "graph": {
                "num_nodes": self.graph.num_nodes,
                "edges": [list(e) for e in self.graph.edges],
                "removed": sorted(self.graph.removed),
            },
            "accountant": {f: getattr(self.accountant, f) for f in ACCOUNTANT_FIELDS},
            "optimum_value": None if self.optimum is None else self.optimum.value,
            "dim": self.dim,
            "layout": list(self.layout),
            "framework": self.framework,
            "reports": {str(n): dict(r) for n, r in self.reports.items()},
            "departures": self.departures,
            "setup": setup,
            "history-parts": parts + [[self.run_id, own]] if own else parts,
            "transport": self.transport.counters(),
        }
        checkpoint.save_relay(directory, k, arrays, _jsonable(state), self._saved)
        self._saved = k

    def _save_setup(self, directory: Any) -> None:
        """Write what the relay's state holds unchanged for the whole run (the workers'
        set-up reports and sufficient statistics: most of a relay file of many workers)
        once, into ``directory`` (:func:`~flower_qgadmm.checkpoint.save_setup`)."""
        arrays = checkpoint.stack_rows("gram", {n: g for n, (g, _) in self._stats.items()})
        arrays.update(checkpoint.stack_rows("xty", {n: b for n, (_, b) in self._stats.items()}))
        described = {
            str(n): {key: v for key, v in r.items() if key not in ("statistics", "shapes")}
            for n, r in self._reports.items()
        }
        checkpoint.save_setup(directory, self.run_id, arrays, _jsonable({"described": described}))

    def check_resume(
        self, directory: Any, until: int | None = None
    ) -> tuple[int, dict[str, np.ndarray], dict[str, Any]]:
        """What :meth:`resume` checks before it changes anything, on the relay alone (a
        ServerApp runs it before waiting for its SuperNodes): the latest checkpoint in
        ``directory`` exists, is not beyond ``until``, is of this algorithm, format,
        settings, seed, graph, mixing weights and ``evaluate_every``, and planned the same
        departures up to its iteration. Returns (iteration, arrays, state) of the checkpoint."""
        directory = str(directory)
        k = checkpoint.latest(directory)
        if until is not None and k > until:
            raise ValueError(
                f"the checkpoint in {directory} was taken after iteration {k}, beyond the "
                f"{until} iterations of this run: ask for at least {k}"
            )
        arrays, state = checkpoint.load_relay(directory, k)
        if state["algorithm"] != self.spec.name:
            raise ValueError(
                f"the checkpoint is of {state['algorithm']!r}, this run is {self.spec.name!r}"
            )
        _check_format(state, self.codec, directory)
        # a setting added since the checkpoint was written did then what its default does
        requested = _predating(state["requested"], _jsonable(as_record(self.spec.Settings())))
        free = self.unread  # settings the run does not read
        changed = _changed(requested, _jsonable(as_record(self.requested)), free)
        if state.get("run-settings") is not None and self.run_settings is not None:
            from .config import setting_fields  # the run's sections (config imports us not)

            now = _jsonable(self.run_settings)
            defaults = {f.name.replace("_", "-"): f.default for _, f in setting_fields()}
            then = _predating(
                state["run-settings"], _jsonable({k: defaults[k] for k in now if k in defaults})
            )
            exact = state.get("framework") == "numpy"  # least squares: no stochastic steps
            unused = MOVABLE | free | (STOCHASTIC_ONLY if exact else set())
            changed += _changed(then, now, unused)
        # which rows carry the models' metrics (and, over Flower, the models' bytes): a
        # resume that changed it would write a history matching neither run's
        if state.get("evaluate-every", self.evaluate_every) != self.evaluate_every:
            changed.append(f"evaluate-every: {state['evaluate-every']} -> {self.evaluate_every}")
        seed = getattr(self.transport, "seed", None)
        if state.get("seed", seed) != seed:
            changed.append(f"seed: {state['seed']} -> {seed}")
        edges = [list(e) for e in self._configured.edges]
        if state.get("configured-edges", edges) != edges:
            changed.append(f"graph: {_edges_text(state['configured-edges'], edges)}")
        mixing = self._mixing_name()
        if state.get("mixing", mixing) != mixing:
            changed.append(f"mixing: {state['mixing']} weights -> {mixing} weights")
        if changed:
            raise ValueError(
                "the run's settings differ from the checkpoint's (checkpoint -> now): "
                + "; ".join(changed)
                + f" ({self.resume_advice})"
            )
        if state.get("removals") is not None:  # the departures planned up to iteration k
            # happened (or not) in the checkpoint's run: a resume cannot change them
            then = {int(w): int(at) for w, at in state["removals"].items() if int(at) <= k}
            now = {int(w): int(at) for w, at in self.removals.items() if int(at) <= k}
            if then != now:
                shown = [
                    " ".join(f"{w}@{at}" for w, at in sorted(r.items())) or "none"
                    for r in (then, now)
                ]
                raise ValueError(
                    f"the checkpoint of iteration {k} was taken after the planned departures "
                    f"{shown[0]} (remove-workers up to iteration {k}), this run plans "
                    f"{shown[1]}: a resume may only change departures after iteration {k}"
                )
        g = state["graph"]
        if g["num_nodes"] != self.graph.num_nodes:
            raise ValueError(
                f"the checkpoint has {g['num_nodes']} workers, the run has {self.graph.num_nodes}"
            )
        return k, arrays, state

    def resume(self, directory: Any, until: int | None = None) -> int:
        """Continue from the latest checkpoint in ``directory``: restore the engine and
        every worker; returns the iteration it was taken after. ``until``: the run's
        last iteration (a checkpoint beyond it is refused)."""
        directory = str(directory)
        k, arrays, state = self.check_resume(directory, until)
        g = state["graph"]
        self.graph = Graph(
            g["num_nodes"], [tuple(e) for e in g["edges"]], self.graph.positions, g["removed"]
        )
        self.phases = self.spec.worker.schedule(self.graph)
        self.mixing = self._mixing(self.graph)
        self.settings = from_mapping(self.spec.Settings, state["settings"])
        self.codec = self.spec.worker.codec_for(self.settings)
        self.dim, self.layout, self.framework = (
            int(state["dim"]),
            tuple(state["layout"]),
            state["framework"],
        )
        self.accountant.set_graph(self.graph)
        for f, v in state["accountant"].items():
            setattr(self.accountant, f, v)
        self._reports = {int(n): dict(r) for n, r in state["described"].items()}
        xty = checkpoint.unstack_rows(arrays, "xty")
        self._stats = {n: (g, xty[n]) for n, g in checkpoint.unstack_rows(arrays, "gram").items()}
        for n, stats in self._stats.items():
            self._reports[n]["statistics"] = stats
        self.optimum = (
            Optimum(arrays["optimum"], float(state["optimum_value"]))
            if "optimum" in arrays
            else None
        )
        self._pending = {}
        for (src, dst), payload in checkpoint.unpack_blobs(arrays, "pending").items():
            self._pending.setdefault(dst, {})[src] = payload
        self.thetas = checkpoint.unstack_rows(arrays, "theta")
        self.reports = {int(n): r for n, r in state["reports"].items()}
        self.departures = [dict(d) for d in state.get("departures", [])]
        self.history[:] = state["history"]
        # the set-up part and the rows stay in the files they were read from (format 4;
        # format 3 holds both in its relay file: the next checkpoint writes them apart)
        setup, parts = state.get("setup"), state.get("history-parts")
        self._relies_on, self._history_saved = None, 0
        if setup is not None:
            parts = [] if parts is None else [list(p) for p in parts]
            self._relies_on = (os.path.realpath(directory), setup, parts)
            self._history_saved = sum(count for _, count in parts)
        for row in self.history:  # the watchdog continues where it was
            self.watchdog.check(row, None if self.optimum is None else self.optimum.value)
        self.scale = arrays.get("feature-scale")
        self.transport.set_feature_scale(self.scale)
        self.transport.restore(
            directory, k, self._wirings(self.graph), self.settings, state.get("run")
        )
        self.transport.load_counters(state["transport"])
        self._saved = k
        self.log(logging.INFO, "resumed from the checkpoint of iteration %d in %s", k, directory)
        return k

    def pull(self, k: int | None = None, have: Mapping[int, Arrays] | None = None) -> None:
        """Pull every active worker's model (:attr:`arrays`, :attr:`thetas`), but those
        in ``have`` (returned with their last step). A worker that fails to answer, or
        answers with a model of another layout or size or with non-finite values, is
        treated per the policy (in iteration ``k``: with ``"repair"`` it leaves, the graph
        is repaired and the models still missing are pulled again)."""
        have = dict(have or {})
        while True:
            try:
                active = self.graph.active
                models = {n: have[n] for n in active if n in have}
                missing = [n for n in active if n not in have]
                if missing:
                    models.update(self.transport.pull(missing))
                return self._keep({n: models[n] for n in active if n in models})
            except WorkerFailure as exc:
                if self.on_failure == "stop" or k is None:
                    raise
                for n, why in sorted(exc.failed.items()):
                    self.log(logging.WARNING, "worker %d leaves the run: model pull: %s", n, why)
                self._repair(k, exc.failed)

    def _keep(self, models: Mapping[int, Mapping[str, np.ndarray]]) -> None:
        """Keep pulled models after checking each against the layout (all or none)."""
        flat, bad = {}, {}
        for n, arrays in models.items():
            try:
                theta = flatten(arrays, self.layout)
            except (ValueError, TypeError) as exc:
                bad[n] = f"malformed model: {exc}"
                continue
            if theta.shape != (self.dim,):
                bad[n] = f"malformed model: {theta.size} entries, the run's model has {self.dim}"
            elif not all_finite(theta):  # np.isfinite(theta).all(), usually one BLAS call
                bad[n] = "malformed model: NaN/Inf entries"
            else:
                flat[n] = theta
        if bad:
            raise WorkerFailure(f"model pull failed: {causes(bad)}", bad)
        for n, arrays in models.items():
            self.arrays[n] = dict(arrays)
            self.thetas[n] = flat[n]

    def mean_arrays(self) -> dict[str, np.ndarray]:
        """The mean of the active workers' last pulled models, in their owner's layout."""
        return average([self.arrays[n] for n in self.graph.active if n in self.arrays])

    def faults(self, results: dict[int, StepResult]) -> dict[int, str]:
        """Workers at fault in a phase's results: a payload whose envelope the relay
        refuses (its result is dropped, nothing is posted), and the senders of payloads a
        receiver could not decode. ``results`` loses the refused ones."""
        faults: dict[int, str] = {}
        sealed = getattr(self.settings, "encrypt", False)
        sent = [r.payload for r in results.values() if r.payload is not None]
        if sealed or not self.codec.accepts_all(sent, self.dim, MAX_RANGE):
            self._envelopes(results, faults, sealed)
        if any([r.blame for r in results.values()]):
            for n, r in results.items():
                for src, why in r.blame.items():
                    faults.setdefault(src, f"sent worker {n} a payload it could not decode: {why}")
        return faults

    def _envelopes(
        self, results: dict[int, StepResult], faults: dict[int, str], sealed: bool
    ) -> None:
        """The envelope checks of :meth:`faults`, payload by payload."""
        for n in sorted(results):
            payload = results[n].payload
            if payload is None:
                continue
            try:
                if sealed:  # only sizes are visible
                    bound = self.codec.max_payload_bytes(self.dim)
                    crypto.check_sealed(payload, self.graph.neighbours(n), bound)
                else:
                    self.codec.check_envelope(payload, self.dim, MAX_RANGE)
            except ScaleLimitError as exc:  # well formed: the sender's model blew up
                faults[n] = DIVERGED
                self.diverged[n] = exc.scale
                del results[n]
            except PayloadError as exc:
                faults[n] = f"sent a malformed payload: {exc}"
                del results[n]

    def inbox(self, n: int, neighbours: Sequence[int] | None = None) -> Inbox:
        """Take worker ``n``'s pending payloads (from ``neighbours``, default: its current
        ones) out of the mailbox; their bytes count as delivered by the relay."""
        sources = self.graph.neighbours(n) if neighbours is None else neighbours
        return self._take({n: sources})[n]

    def inboxes(self, members: Sequence[int]) -> dict[int, Inbox]:
        """:meth:`inbox` of every one of ``members`` (from its current neighbours)."""
        neighbours = self.graph.neighbours
        return self._take({n: neighbours(n) for n in members})

    def _take(self, sources: Mapping[int, Sequence[int]]) -> dict[int, Inbox]:
        """The payloads pending from ``sources[n]`` to each ``n``, taken out of the
        mailbox; their bytes counted as delivered, once for all."""
        pending = self._pending
        inboxes, delivered = {}, 0
        for n, senders in sources.items():
            inbox = inboxes[n] = {}
            box = pending.pop(n, None)
            if not box:
                continue
            for m in senders:  # in the senders' order
                payload = box.pop(m, None)  # payloads are bytes, never None
                if payload is not None:
                    inbox[m] = payload
                    delivered += len(payload)
            if box:  # from others (none but in a repair): they stay
                pending[n] = box
        if delivered:
            self.accountant.delivered(delivered)
        return inboxes

    def post(self, phase: Phase, members: Sequence[int], results: Mapping[int, StepResult]) -> None:
        """Record each member's result; post its payload to its neighbours (except those
        leaving the run), count bits."""
        sealed = getattr(self.settings, "encrypt", False)
        pending, leaving, reports = self._pending, self.leaving, self.reports
        neighbours, accountant = self.graph.neighbours, self.accountant
        sends = []
        for n in members:
            r = results.get(n)
            if r is None:
                continue
            reports[n] = r.metrics
            payload = r.payload
            if payload is None:  # censored: neighbours keep the stale copy
                accountant.skipped(n)
                continue
            for m in neighbours(n):
                if m in leaving:
                    continue
                box = pending.get(m)
                if box is None:
                    pending[m] = {n: payload}
                elif n in box:
                    raise RuntimeError(f"payload {n}->{m} was never delivered (schedule bug)")
                else:
                    box[n] = payload
            sends.append((n, 8 * len(payload), r.nominal_bits))
            if sealed:
                accountant.sealed(crypto.overhead(payload))
        accountant.sent_many(sends, len(members))

    def _stop_if_diverged(self, k: int, failing: Mapping[int, str]) -> None:
        """FloatingPointError, with the algorithm's advice, when the run must stop and
        some of the ``failing`` workers sent a range beyond ``MAX_RANGE``: the run
        diverged (typically every worker at once), no device failed."""
        ranges = [self.diverged[n] for n in failing if n in self.diverged]
        if ranges:
            raise FloatingPointError(
                f"the run diverged at iteration {k}: {causes(failing)} (largest range "
                f"{max(ranges):.3g}); {self.advice()}"
            )

    def _repair(self, k: int, failing: Mapping[int, str]) -> None:
        """Remove the workers that left in iteration ``k`` and rewire the others.

        Every remaining worker gets the payloads still pending for it, its new wiring and,
        for a new edge, the new neighbour's public copy (sent in full, float64, and
        counted as repair bits). The optimum is recomputed for the remaining data.
        """
        self._repaired = k
        old = self.graph
        gone = sorted(failing)
        try:
            new = old.repaired(gone)
            phases = self.spec.worker.schedule(new)
            mixing = self._mixing(new)
        except ValueError as exc:
            self._stop_if_diverged(k, failing)
            raise WorkerFailure(
                f"run stopped during iteration {k} ({k - 1} completed): {exc}; in iteration "
                f"{k} {causes(failing)}",
                dict(failing),
            ) from None
        wanted = {
            n: [m for m in new.neighbours(n) if m not in old.neighbours(n)] for n in new.active
        }
        requests: dict[int, list[int]] = {}
        for n, ms in wanted.items():
            for m in ms:
                requests.setdefault(m, []).append(n)
        try:
            copies = self.transport.export(requests) if requests else {}
        except WorkerFailure as exc:  # an exporter failed too: it leaves as well
            if self.on_failure == "stop":
                raise
            return self._repair(k, {**failing, **exc.failed})
        for m, copy in copies.items():  # each exported copy once, however many receive it
            sealed = isinstance(copy, bytes)
            self.accountant.repaired(m, 8 * len(copy) if sealed else 64 * copy.size)
            if sealed:
                self.accountant.sealed(crypto.overhead(copy))
        self.graph, self.phases, self.mixing = new, phases, mixing
        self.departures += [{"worker": n, "iteration": k, "reason": failing[n]} for n in gone]
        # e.g. D-PSGD's step for the new W
        self.settings = self._resolve(self._resolve_reports(new), new, mixing)
        # to workers still in the run (not `in new.active`, a tuple: O(N) per payload,
        # 1.2 s per repair on a ring of 10,000 workers)
        gone_now = new.removed
        self._pending = {dst: box for dst, box in self._pending.items() if dst not in gone_now}
        plan = {}
        for n in new.active:
            inbox = self.inbox(n, old.neighbours(n))
            given = {m: copies[m] for m in wanted[n]}
            plan[n] = (self.spec.worker.wiring_of(new, n, mixing), inbox, given)
        self.accountant.set_graph(new)
        try:
            self.transport.rewire(plan, self.settings)
        except WorkerFailure as exc:  # a worker failed to adopt the graph: it leaves too
            if self.on_failure == "stop":
                raise
            return self._repair(k, exc.failed)
        added = sorted(set(new.edges) - set(old.edges))  # a chain's splices
        self.log(
            logging.WARNING,
            "workers %s left in iteration %d; graph repaired for the next: %s%s",
            gone,
            k,
            edges_text(new.edges),
            f" (new: {edges_text(added)})" if added and len(new.edges) > EDGES_SHOWN else "",
        )
        self._update_optimum()

    def _row(self, k: int, evaluating: bool) -> dict:
        alive = self.graph.active
        models = [self.thetas[n] for n in alive] if evaluating else None
        extra = None
        if models is not None and self.evaluate is not None:
            extra = dict(self.evaluate(np.mean(models, axis=0)))
        row = history_row(
            k,
            [self.reports[n] for n in alive],
            self.accountant.counters(),
            self.optimum,
            models,
            extra,
        )
        row["workers"] = len(alive)  # those still in the run (departures: self.departures)
        row.update(self.transport.counters())
        self.history.append(row)
        if self.on_row is not None:
            self.on_row(row)
        self._watch(row)
        return row

    def _watch(self, row: Mapping[str, Any]) -> None:
        """Stop a diverging run (FloatingPointError, after its row was recorded) with
        advice for its cause; warn once when it stalls, once when its workers drift
        apart."""
        value = None if self.optimum is None else self.optimum.value
        # advice built only if it raises; the stall causes are the algorithm's
        worker = self.spec.worker
        stall = self.watchdog.check(
            row, value, self.advice, worker.stall_causes, worker.drift_advice
        )
        if stall is not None:
            self.stall = stall
            self.log(logging.WARNING, "%s", stall)

    def advice(self) -> str:
        """What to change when the run diverges, from the algorithm
        (``Worker.divergence_advice(settings, requested, options, facts)``, if it has one)
        and what the relay knows of the data (``facts``: ``scaled``, ``column_rms``)."""
        advise = getattr(self.spec.worker, "divergence_advice", None)
        if advise is None:
            return "lower step-size (or rho) if set by hand, or use the automatic value (0)"
        facts: dict[str, Any] = {"scaled": self.scale is not None}
        moments = [self._reports.get(n, {}).get("moments") for n in self.graph.active]
        if moments and all(m is not None for m in moments):
            count = sum(float(np.asarray(m["count"]).reshape(-1)[0]) for m in moments)
            squares = sum(np.asarray(m["squares"], dtype=np.float64) for m in moments)
            facts["column_rms"] = np.sqrt(squares / count)
        return advise(self.settings, self.requested, self._options(), facts)

    # ------------------------------------------------------------------ the run
    def run(self, iterations: int, initial: Arrays | None = None, resume: Any = None) -> list[dict]:
        """Set up (from the user's ``initial`` model if given; or continue from the
        checkpoint directory ``resume``), then the rounds up to ``iterations``, then
        :meth:`finish`; returns the history (also kept on failure in :attr:`history`)."""
        done = self.resume(resume, iterations) if resume is not None else self.start(initial) or 0
        for k in range(done + 1, iterations + 1):
            self.run_round(k, final=k == iterations)
        self.finish()
        return self.history

    def finish(self) -> None:
        """After the last round: deliver what is still in the mailbox and let the workers
        complete deferred steps; :attr:`thetas` become the final models (the history rows
        are unchanged) and, if that step moved them, :attr:`final` says what they are
        worth."""
        active = self.graph.active
        inboxes = self.inboxes(active)
        before = {n: self.thetas.get(n) for n in active}
        self._keep(self.transport.finish(inboxes))
        moved = [
            n for n in active if before[n] is None or not np.array_equal(before[n], self.thetas[n])
        ]
        self.final = {}
        if moved:
            models = [self.thetas[n] for n in active]
            self.final = model_metrics(models, self.optimum)
            if self.evaluate is not None:
                add_extra(self.final, self.evaluate(np.mean(models, axis=0)))
            shown = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}"
                for k, v in self.final.items()
            )
            self.log(
                logging.INFO,
                "final models (after the workers' deferred step; the last row reports the "
                "models before it): %s",
                shown,
            )

    def models(self) -> dict[int, np.ndarray]:
        """The latest pulled model of each worker (flat; departed workers included)."""
        return dict(self.thetas)


def _jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and tuples turned into plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


MOVABLE = frozenset({"device", "data-dir"})
"""Settings a resumed run may change: the solver's device (the same numbers on another
one), the data's folder (the same files elsewhere)."""
CHECKPOINT_FORMAT = 4
"""Version of what a checkpoint holds. 4: what stays the same for a whole run (the
workers' statistics and set-up reports) is written once, apart
(:func:`~flower_qgadmm.checkpoint.save_setup`), and the history rows are appended to a
file per run (:func:`~flower_qgadmm.checkpoint.append_history`), the relay's file
counting them (refused by older versions, which would find neither statistics nor
history in the relay's file); 3: the relay's per-worker arrays stacked, one
entry per kind (:func:`~flower_qgadmm.checkpoint.stack_rows`), and the reference
runner's workers in one file (read, with formats 1-2, by this version; refused by older
ones, which would find no models in it); 2: the source coder writes d as a varint (its
pending payloads), torch mini-batches come from ``torch_solver.batch_seed``; 1 (no
``format`` key): before both."""


def _check_format(state: Mapping[str, Any], codec: Any, directory: str) -> None:
    """Refuse a checkpoint whose continuation would differ from the run that wrote it:
    one of format 1 with source-coded payloads pending (their header changed) or of a
    torch model (its mini-batches were drawn from another stream)."""
    version = int(state.get("format", 1))
    if version > CHECKPOINT_FORMAT:
        raise ValueError(
            f"the checkpoint in {directory} has format {version}, newer than this version's "
            f"{CHECKPOINT_FORMAT}: resume it with the version that wrote it"
        )
    if version >= 2:  # 2 -> 3 -> 4 changed the files' layout only, and all are read
        return
    why = []
    if registered_name(codec) == "source":
        why.append("its source-coded payloads carry the former 4-byte size field")
    if state.get("framework") == "torch":
        why.append("its mini-batches were drawn from the quantizer's stream")
    if why:
        raise ValueError(
            f"the checkpoint in {directory} was written by an earlier version (format "
            f"{version}) and cannot continue identically here: {'; '.join(why)}. Resume it "
            "with that version, or start a new run"
        )


def _predating(then: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's settings record with the ``defaults`` of the keys it lacks (settings
    added to the package after it was written: the run did what their default does)."""
    return {**{k: v for k, v in defaults.items() if k not in then}, **then}


def _edges_text(then: list[list[int]], now: list[list[int]]) -> str:
    """Two configured graphs that differ, for a refused resume: their edges when at most
    :data:`~flower_qgadmm.topology.EDGES_SHOWN`, else their sizes and the first edge of
    one that the other lacks."""
    if max(len(then), len(now)) <= EDGES_SHOWN:
        return f"edges {then} -> {now}"
    ours, theirs = {tuple(e) for e in now}, {tuple(e) for e in then}
    lost = [e for e in then if tuple(e) not in ours]
    new = [e for e in now if tuple(e) not in theirs]
    side = f"edge {lost[0]} gone" if lost else f"edge {new[0]} new" if new else "reordered"
    return f"{len(then)} edges -> {len(now)} edges ({side})"


def _changed(
    then: Mapping[str, Any], now: Mapping[str, Any], ignore: Collection[str] = ()
) -> list[str]:
    """``key: old -> new`` for every setting that differs between two records (but the
    keys in ``ignore``)."""
    return [
        f"{key.replace('_', '-')}: {then.get(key)!r} -> {now.get(key)!r}"
        for key in sorted((set(then) | set(now)) - set(ignore))
        if then.get(key) != now.get(key)
    ]


def causes(failing: Mapping[int, str]) -> str:
    """``worker 3 <why>; workers 0, 1 <why>``: failed workers grouped by reason (a Flower
    reason ``(node N): <why>`` groups by ``<why>``, its nodes listed: ``workers 0, 1
    (nodes 12, 34): <why>``), so ten workers failing alike make one line."""
    by_reason: dict[str, list[tuple[int, str | None]]] = {}
    for n, why in sorted(failing.items()):
        node = re.match(r"\(node (\d+)\): ", why)
        key = f": {why[node.end() :]}" if node else f" {why}"
        by_reason.setdefault(key, []).append((n, node.group(1) if node else None))
    parts = []
    for why, members in by_reason.items():
        workers = ", ".join(str(n) for n, _ in members)
        nodes = [node for _, node in members if node is not None]
        where = f" (node{'s' if len(nodes) > 1 else ''} {', '.join(nodes)})" if nodes else ""
        parts.append(f"worker{'s' if len(members) > 1 else ''} {workers}{where}{why}")
    return "; ".join(parts)
