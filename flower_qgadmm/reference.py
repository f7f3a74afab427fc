"""Single-process reference runner: all workers in one process, no Flower.

The fast path for experiments and the oracle for the Flower binding's tests. It is the
in-process :class:`~flower_qgadmm.rounds.Transport`: the round engine
(:mod:`flower_qgadmm.rounds`) drives the same :class:`~flower_qgadmm.algorithms.Worker`
objects the ClientApp uses, in the same order.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .algorithms import Phase, Wiring, Worker, get_algorithm
from .checkpoint import load_workers, save_workers
from .compression.memory import DecodeMemo
from .config import RunConfig
from .crypto import Keyring
from .model_arrays import Arrays
from .rounds import (
    REPORT_KEYS,
    Inbox,
    LastStep,
    RoundEngine,
    StepResult,
    Transport,
    step_result,
)
from .solvers import LeastSquaresSolver, LocalSolver
from .topology import Graph, chain


@dataclass
class ReferenceResult:
    """History rows (one per iteration), the workers' final models (N x d) and, when the
    workers' last, deferred step moved the models after the last row (gossip's consensus
    step), what the final models are worth (:attr:`RoundEngine.final`; else empty)."""

    history: list[dict]
    models: np.ndarray
    final: dict = field(default_factory=dict)

    @property
    def mean_model(self) -> np.ndarray:
        """Average of the workers' models."""
        return self.models.mean(axis=0)


def least_squares_solvers(
    datasets: Sequence[tuple[np.ndarray, np.ndarray]], l2: float = 0.0
) -> list[LeastSquaresSolver]:
    """One exact solver per worker's (X_n, y_n)."""
    return [LeastSquaresSolver(X, y, l2) for X, y in datasets]


#: what a ClientApp's ``context.state`` keeps of a scalar (a Flower ConfigRecord's types)
SCALAR_TYPES = (bool, int, float, str, bytes)


def _same(a: Any, b: Any) -> bool:
    """``a`` and ``b`` hold the same values: arrays equal in shape, dtype and entries,
    containers entry by entry, numbers and strings equal (NaN equal to NaN); other
    objects (a solver, a channel, an RNG) are not compared."""
    a = a.item() if isinstance(a, np.generic) else a  # a numpy scalar as the number
    b = b.item() if isinstance(b, np.generic) else b
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and bool(np.all((a == b) | ((a != a) & (b != b))))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (set, frozenset)) and isinstance(b, (set, frozenset)):
        return a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (*SCALAR_TYPES, type(None))) or isinstance(b, (*SCALAR_TYPES, type(None))):
        return type(a) is type(b) and (a == b or (a != a and b != b))
    return True


def state_lost(live: Worker, rebuilt: Worker) -> list[str]:
    """The attributes of ``live`` that ``rebuilt`` (built anew and given ``live``'s
    :meth:`~Worker.state_dict`) does not hold the same: what the state misses, beyond
    :attr:`Worker.transient`. The public copies are compared through their arrays."""
    if not _same(live.copies.hat, rebuilt.copies.hat):
        return ["copies.hat"]
    ours, theirs = vars(live), vars(rebuilt)
    skip = set(type(live).transient)
    return sorted(
        k
        for k in ours.keys() | theirs.keys()
        if k not in skip and not _same(ours.get(k), theirs.get(k))
    )


class InProcessTransport(Transport):
    """Workers as objects in this process; a step is a method call.

    With ``rebuild`` every worker is built anew from its :meth:`~Worker.state_dict`
    (and a copy of its solver as set up) before each of its steps, as a ClientApp
    rebuilds it for every message: a worker whose state misses something raises
    ValueError naming the attributes (:func:`state_lost`), so a custom algorithm can be
    checked without Flower. Slower; the histories are those of a run without it."""

    def __init__(
        self, algorithm: str, solvers: Sequence[LocalSolver], seed: int, rebuild: bool = False
    ) -> None:
        self.spec = get_algorithm(algorithm)
        self.solvers = list(solvers)
        self.seed = int(seed)
        self.rebuild = bool(rebuild)
        self._pristine: dict[int, LocalSolver] = {}  # each solver as set up (rebuild)
        self.workers: dict[int, Worker] = {}
        # payload -> its decoded change, shared by the workers (PublicCopies.memo): each
        # payload is decoded once, by its sender; entries live until the next phase's
        # members received them (a payload is received in the phase after it was sent;
        # later, it is decoded again)
        self.memo = DecodeMemo()

    def describe(self, workers: Sequence[int]) -> dict[int, dict[str, Any]]:
        reports = {n: self.solvers[n].report() for n in workers}
        return {
            n: {k: r[k] for k in REPORT_KEYS if r.get(k) is not None} for n, r in reports.items()
        }

    def setup(
        self, wirings: Mapping[int, Wiring], settings: Any, initial: Arrays | None = None
    ) -> None:
        for n in wirings:  # the relay's feature scale (None: original coordinates)
            if hasattr(self.solvers[n], "set_scale"):
                self.solvers[n].set_scale(self.feature_scale)
            elif self.feature_scale is not None:
                raise ValueError(f"worker {n}'s solver cannot scale its features")
        if initial is not None:
            for n in wirings:
                self.solvers[n].set_initial(initial)
        if self.rebuild:
            self._pristine = {n: copy.deepcopy(self.solvers[n]) for n in wirings}
        self.memo = DecodeMemo()
        self.workers = {n: self._build(n, w, self.solvers[n], settings) for n, w in wirings.items()}

    def _build(self, n: int, wiring: Wiring, solver: LocalSolver, settings: Any) -> Worker:
        worker = self.spec.build(n, wiring, solver, settings, self.seed)
        worker.copies.memo = self.memo
        if getattr(settings, "encrypt", False):  # keys derived from the seed (simulation)
            worker.attach_channel(Keyring.simulated(self.seed, len(self.solvers), n))
        return worker

    def _rebuilt(self, n: int, when: str) -> Worker:
        """Worker ``n`` built anew from its state, as a ClientApp does (``rebuild``);
        ``when`` says which message it is rebuilt for."""
        live = self.workers[n]
        arrays, scalars = live.state_dict()
        for key, value in scalars.items():
            items = value if isinstance(value, list) else [value]
            kinds = {type(v) for v in items}
            if not all(isinstance(v, SCALAR_TYPES) for v in items) or len(kinds) > 1:
                what = type(value).__name__
                if isinstance(value, list):
                    what += " of " + ", ".join(sorted(k.__name__ for k in kinds))
                raise ValueError(
                    f"worker {n}: state scalar {key!r} is a {what}; a ClientApp keeps "
                    "bool, int, float, str, bytes or lists of one of them"
                )
        solver = copy.deepcopy(self._pristine[n])
        rebuilt = self._build(n, live.wiring, solver, live.settings)
        rebuilt.load_state_dict({k: np.array(v) for k, v in arrays.items()}, dict(scalars))
        lost = state_lost(live, rebuilt)
        if lost:
            raise ValueError(
                f"worker {n} (rebuilt {when}): {', '.join(lost)} "
                f"not restored by {type(live).__name__}.state_dict() / load_state_dict(): "
                "keep them in extra_arrays() / extra_scalars() and restore them in "
                "load_extra(), or list caches in `transient`"
            )
        self.workers[n], self.solvers[n] = rebuilt, solver
        return rebuilt

    def objective(self, theta: np.ndarray, workers: Sequence[int]) -> dict[int, float]:
        return {n: self.solvers[n].objective(theta) for n in workers}

    def step(
        self,
        iteration: int,
        phase: Phase,
        inboxes: Mapping[int, Inbox],
        evaluate: bool = True,
        last: Mapping[int, LastStep] | None = None,
    ) -> tuple[dict[int, StepResult], dict[int, str]]:
        nodes = list(inboxes)
        if self.rebuild:
            workers = [self._rebuilt(n, f"for its step of iteration {iteration}") for n in nodes]
        else:
            workers = [self.workers[n] for n in nodes]
        # the members of a phase step together (Worker.receive_many, send_many,
        # metrics_many: the numbers of one call per worker)
        kind = self.spec.worker
        blames = kind.receive_many(workers, [inboxes[n] for n in nodes])
        self.memo.clear()  # what the last phase sent is in
        payloads, reports = kind.send_and_report_many(workers, iteration, phase.name, evaluate)
        # the model rides on the last step; the states are saved together, in one file,
        # when the engine asks after the iteration (the same states: nothing touches a
        # worker between its last step and the iteration's end)
        asked = [n for n in nodes if n in last and last[n].model] if last else []
        models = self.pull(asked) if asked else {}
        results = {
            n: step_result(payload, metrics, worker.last_nominal_bits, blame, models.get(n))
            for n, worker, blame, payload, metrics in zip(
                nodes, workers, blames, payloads, reports, strict=True
            )
        }
        return results, {}

    def pull(self, workers: Sequence[int]) -> dict[int, dict[str, np.ndarray]]:
        return {n: self.solvers[n].to_arrays(self.workers[n].theta) for n in workers}

    def finish(self, inboxes: Mapping[int, Inbox]) -> dict[int, dict[str, np.ndarray]]:
        for n, inbox in inboxes.items():
            worker = (
                self._rebuilt(n, "after the last iteration") if self.rebuild else self.workers[n]
            )
            worker.receive_strict(inbox)
            worker.finish()
        return self.pull(list(inboxes))

    def checkpoint(
        self,
        directory: str,
        iteration: int,
        workers: Sequence[int],
        previous: int | None,
        run: str | None = None,
    ) -> None:
        states = {n: self.workers[n].state_dict() for n in workers}
        save_workers(directory, iteration, states, previous, run)

    def restore(
        self,
        directory: str,
        iteration: int,
        wirings: Mapping[int, Wiring],
        settings: Any,
        run: str | None = None,
    ) -> None:
        self.setup(wirings, settings)
        for n, state in load_workers(directory, iteration, wirings, run).items():
            self.workers[n].load_state_dict(*state)

    def export(self, requests: Mapping[int, Sequence[int]]) -> dict[int, np.ndarray | bytes]:
        return {n: self.workers[n].export_copy(to) for n, to in requests.items()}

    def rewire(
        self,
        plan: Mapping[int, tuple[Wiring, Inbox, dict[int, np.ndarray | bytes]]],
        settings: Any,
    ) -> None:
        for n, (wiring, inbox, copies) in plan.items():
            worker = self.workers[n]
            worker.receive_strict(inbox)
            worker.rewire(wiring, copies)
            worker.settings = settings


def build_workers(
    algorithm: str,
    solvers: Sequence[LocalSolver],
    graph: Graph | None = None,
    settings: Any = None,
    seed: int = 0,
    mixing: str | np.ndarray = "metropolis",
) -> list[Worker]:
    """Set-up only: the workers of a run, before the first iteration (for tests). They
    share no decode memo (:attr:`PublicCopies.memo`): no transport drops its entries."""
    engine = make_engine(algorithm, solvers, graph, settings, seed, mixing)
    engine.start()
    workers = [engine.transport.workers[n] for n in range(len(solvers))]
    for worker in workers:
        worker.copies.memo = None
    return workers


def make_engine(
    algorithm: str,
    solvers: Sequence[LocalSolver],
    graph: Graph | None = None,
    settings: Any = None,
    seed: int = 0,
    mixing: str | np.ndarray = "metropolis",
    rebuild_workers: bool = False,
    **kwargs: Any,
) -> RoundEngine:
    """A round engine over the in-process transport (``kwargs``: removals, evaluate,
    on_row); call ``start()`` then ``run_round(k)``, or ``run(iterations)``."""
    spec = get_algorithm(algorithm)
    graph = graph or chain(len(solvers))
    if len(solvers) != graph.num_nodes:
        raise ValueError(f"{len(solvers)} workers for a graph of {graph.num_nodes} nodes")
    settings = settings if settings is not None else spec.Settings()
    transport = InProcessTransport(algorithm, solvers, seed, rebuild_workers)
    return RoundEngine(spec, settings, graph, transport, mixing, **kwargs)


def run_reference(
    algorithm: str,
    solvers: Sequence[LocalSolver],
    iterations: int,
    settings: Any = None,
    *,
    seed: int = 0,
    graph: Graph | None = None,
    mixing: str | np.ndarray = "metropolis",
    on_row: Callable[[dict], None] | None = None,
    evaluate: Callable[[np.ndarray], dict[str, float]] | None = None,
    removals: Mapping[int, int] | None = None,
    evaluate_every: int = 1,
    initial: Arrays | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 0,
    resume: str | None = None,
    run_settings: Mapping[str, Any] | None = None,
    rebuild_workers: bool = False,
    unread: Sequence[str] | None = None,
    run_config: Mapping[str, Any] | None = None,
) -> ReferenceResult:
    """Run a registered algorithm for ``iterations`` in this process.

    Parameters
    ----------
    algorithm : str
        A registered name (``"q-gadmm"``, ``"d-psgd"``, ...).
    solvers : sequence of LocalSolver
        Worker n's local solver (its data); worker n sits at position n of the graph.
        For least squares use :func:`least_squares_solvers`.
    iterations : int
        Number of iterations (rounds).
    settings : object, optional
        The algorithm's settings (default: its defaults).
    seed : int
        Run seed of every worker's RNG (default: 0).
    graph : Graph, optional
        Communication graph (default: the chain over all workers).
    mixing : str, np.ndarray or scipy sparse matrix
        Mixing weights for gossip algorithms (default: "metropolis").
    on_row, evaluate : callable, optional
        Progress callback per history row; ``evaluate(mean model) -> metrics``.
    removals : mapping of worker -> iteration, optional
        Workers that leave from that iteration on; the graph is repaired after it.
    evaluate_every : int
        Rows carry the model-based metrics (consensus error, distance to the optimum,
        ``evaluate``) every this many iterations and in the last (default: 1, every row).
    initial : mapping of str -> np.ndarray, optional
        Every worker's initial model in the solvers' layout
        (:meth:`LocalSolver.set_initial`), as ``RelayStrategy.start(initial_arrays=...)``.
    checkpoint_dir, checkpoint_every : optional
        Save every worker's and the engine's state every ``checkpoint_every`` iterations
        under ``checkpoint_dir`` (:mod:`flower_qgadmm.checkpoint`).
    resume : str, optional
        A checkpoint directory: continue from its latest checkpoint up to ``iterations``.
    run_settings : mapping, optional
        The settings beyond the algorithm's that shaped the run (the solvers' lr, local
        steps, ...; the data's: :meth:`RunConfig.run_settings`), kept in checkpoints: a
        resume with other ones is refused (default: not checked).
    rebuild_workers : bool
        Build every worker anew from its ``state_dict()`` before each of its steps, as
        a ClientApp does for every message, and raise ValueError naming what the state
        missed (:class:`InProcessTransport`): the check for a custom algorithm. The
        history is that of a run without it (default: False, workers kept in memory).
    unread : sequence of str, optional
        Settings the run does not read, which a resume may change
        (:meth:`RunConfig.unread`; default: those the algorithm does not read).
    run_config : mapping, optional
        The run's config record (:meth:`RunConfig.record`), kept in checkpoints: a
        resume can rebuild the run from it (default: not kept).
    """
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)):
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    engine = make_engine(
        algorithm,
        solvers,
        graph,
        settings,
        seed,
        mixing,
        removals=removals,
        evaluate=evaluate,
        on_row=on_row,
        evaluate_every=evaluate_every,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        run_settings=run_settings,
        rebuild_workers=rebuild_workers,
        unread=unread,
        run_config=run_config,
    )
    history = engine.run(iterations, initial, resume)
    models = np.stack([engine.thetas[n] for n in engine.graph.active])
    return ReferenceResult(history, models, dict(engine.final))


def run_from_config(
    cfg: RunConfig, solvers: Sequence[LocalSolver], **kwargs: Any
) -> ReferenceResult:
    """:func:`run_reference` with every setting of a :class:`RunConfig`: algorithm and its
    settings, iterations, seed, graph, mixing weights, planned departures and
    ``evaluate-every`` (``kwargs``:
    ``evaluate``, ``on_row``, or overrides such as ``removals``); a resume may change the
    settings the run does not read (:meth:`RunConfig.unread`)."""
    arguments: dict[str, Any] = {
        "seed": cfg.seed,
        "graph": cfg.graph,
        "mixing": cfg.mixing_weights(),
        "removals": cfg.removals(),
        "evaluate_every": cfg.evaluate_every,
        "run_settings": cfg.run_settings(),
        "unread": cfg.unread(),
        "run_config": cfg.record(),
    }
    return run_reference(
        cfg.algorithm, solvers, cfg.num_iterations, cfg.algo, **{**arguments, **kwargs}
    )
