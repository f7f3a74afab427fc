"""The per-worker contract every decentralized algorithm implements, and its registry.

An algorithm is a :class:`Worker` subclass: one worker's update rules (framework-free)
plus class-level facts about the whole run: its **schedule** on a graph (the phases of
one iteration and who steps in each), what it needs of the graph (a two-colouring, mixing
weights) and its settings class. :mod:`flower_qgadmm.rounds` drives any registered
algorithm the same way, in-process or over Flower:

    for phase in schedule(graph):
        for n in phase.members:           # in parallel
            worker_n.receive(src, payload)  for each payload relayed to n
            payload = worker_n.step(k, phase.name)   # None = nothing sent (censored)
        relay payload to every neighbour of n, untouched

A worker's state survives between messages through :meth:`Worker.state_dict`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..compression import CODECS, PayloadError
from ..compression.memory import PublicCopies, receive_rows
from ..metrics import DRIFT_ADVICE, STALL_CAUSES
from ..numeric import number, row_dots, within
from ..settings import coerce_fields, one_of, setting
from ..solvers import LocalSolver
from ..streams import KeyedStreams
from ..topology import Graph

if TYPE_CHECKING:
    from scipy.sparse import csr_array

log = logging.getLogger(__name__)

DIVERGED = 1e30  # |theta| beyond this is treated as divergence (float32 max is 3.4e38)


@dataclass(frozen=True)
class CodecSettings:
    """How messages are written; every algorithm's settings inherit it (one ``codec`` key)."""

    #: keys that apply to the exact least-squares task only (left out of the summary of
    #: a run on another task)
    LINREG_ONLY: ClassVar[frozenset[str]] = frozenset()

    codec: str = setting(
        "auto",
        "message codec: 'fixed-width', 'source' or one you registered (register_codec); auto: "
        "Malcom source, else fixed",
    )
    encrypt: bool = setting(False, "seal every peer message end to end: the relay sees sizes only")

    def __post_init__(self) -> None:
        coerce_fields(self)
        one_of("codec", self.codec, ("auto", *CODECS))  # built-in and registered codecs


@dataclass(frozen=True)
class Phase:
    """One exchange of an iteration: ``members`` step in parallel."""

    name: str
    members: tuple[int, ...]


@dataclass(frozen=True)
class Wiring:
    """What one worker knows of the graph: its neighbours, its group (two-colouring) and
    its row of the mixing matrix (``weights`` aligned with ``neighbours``)."""

    neighbours: tuple[int, ...]
    group: int = 0
    weights: tuple[float, ...] = ()
    self_weight: float = 1.0

    def to_record(self) -> dict[str, Any]:
        """Plain dict for a Flower ConfigRecord (no empty lists: Flower cannot size them)."""
        out: dict[str, Any] = {
            "neighbours": list(self.neighbours),
            "group": self.group,
            "self-weight": self.self_weight,
        }
        if self.weights:
            out["weights"] = list(self.weights)
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Wiring:
        """Inverse of :meth:`to_record`."""
        return cls(
            tuple(int(m) for m in record["neighbours"]),
            int(record["group"]),
            tuple(float(w) for w in record.get("weights", ())),
            float(record["self-weight"]),
        )


class Reports(tuple):
    """The active workers' set-up reports (:meth:`LocalSolver.report`, statistics in the
    solvers' coordinates) as the round engine hands them to an algorithm at set-up: one
    object to ``resolve`` and to ``setup_warnings``, so a value both derive from them
    (e.g. GADMM's curvature, an eigendecomposition of a d x d matrix) is computed once
    (:func:`derived`). Any sequence of report dicts may stand in its place."""

    def __new__(cls, reports: Sequence[Mapping[str, Any]] = ()) -> Reports:
        self = super().__new__(cls, reports)
        self._derived: dict[Callable, Any] = {}  # compute -> its value
        return self


def derived(reports: Sequence[Mapping[str, Any]], compute: Callable[[Sequence], Any]) -> Any:
    """``compute(reports)``: computed once per :class:`Reports` object and kept on it
    (the reports are not changed during a set-up), afresh for any other sequence."""
    if not isinstance(reports, Reports):
        return compute(reports)
    if compute not in reports._derived:
        reports._derived[compute] = compute(reports)
    return reports._derived[compute]


class Worker(ABC):
    """One worker of a decentralized algorithm.

    Parameters
    ----------
    node : int
        This worker's index on the graph (its partition id).
    wiring : Wiring
        Its neighbours (and group / mixing weights when the algorithm uses them).
    solver : LocalSolver
        The local solver holding this worker's data.
    settings : object
        The algorithm's settings (instance of :attr:`Settings`), identical on every worker.
    seed : int
        Run seed: the worker's RNG at iteration k is ``default_rng([seed, node, k])``
        (:meth:`rng`).
    """

    Settings: ClassVar[type]
    needs_mixing: ClassVar[bool] = False  # wiring carries a row of the mixing matrix
    default_codec: ClassVar[str] = "fixed-width"  # what codec = "auto" means
    #: the likely causes a stall warning names (the relay's watchdog, ``metrics.Watchdog``)
    stall_causes: ClassVar[str] = STALL_CAUSES
    #: what a drift warning (the workers drifting apart, ``metrics.DRIFT``) advises
    drift_advice: ClassVar[str] = DRIFT_ADVICE
    #: attributes a step sets for its caller to read, not state kept for the next message
    #: (the reference runner's ``rebuild_workers`` check does not ask for them in
    #: :meth:`state_dict`); a subclass adds its own caches here
    transient: ClassVar[tuple[str, ...]] = ("last_payload_bits", "last_nominal_bits")
    #: settings (the local solver's, or of the settings class it shares with other
    #: algorithms) this algorithm's steps do not read: left out of the run's summary and
    #: log, a warning when a run config gives them, free to change on resume
    unused_keys: ClassVar[frozenset[str]] = frozenset()
    #: the name this worker runs as (set by :meth:`AlgorithmSpec.build`; one class may
    #: serve several registered variants, ``q-gadmm`` and ``q-sgadmm``), for its messages
    algorithm: str = ""

    @classmethod
    def unused_keys_for(cls, options: Mapping[str, Any]) -> frozenset[str]:
        """:attr:`unused_keys` of the variant registered with ``options`` (a class that
        serves several variants, GADMM's float32 and quantized ones, adds those the
        variant does not read)."""
        return frozenset(cls.unused_keys)

    def __init__(
        self, node: int, wiring: Wiring, solver: LocalSolver, settings: Any, seed: int
    ) -> None:
        if not wiring.neighbours:
            raise ValueError(f"worker {node} has no neighbours")
        self.node = int(node)
        self.wiring = wiring
        self.solver = solver
        self.settings = settings
        self.seed = int(seed)
        self._streams = KeyedStreams((self.seed, self.node))
        start = solver.initial()  # theta^0, shared by every worker
        self.theta = start.copy()
        self.copies = PublicCopies(
            self.node, wiring.neighbours, start, self.make_quantizer(), self.codec_for(settings)
        )
        self.iteration = 0
        # Counters of what the last step actually produced.
        self.last_payload_bits = 0
        self.last_nominal_bits = 0
        # End-to-end encryption (settings.encrypt): attach_channel() gives the keys;
        # opened[m] is the iteration of the last message accepted from m (no replays).
        self.channel = None
        self.opened: dict[int, int] = {}

    # ------------------------------------------------------------------ the run's shape
    @classmethod
    @abstractmethod
    def schedule(cls, graph: Graph) -> list[Phase]:
        """The phases of one iteration on ``graph`` (raises ValueError if the graph does
        not suit the algorithm, e.g. an odd cycle for group ADMM)."""

    @classmethod
    def wiring_of(cls, graph: Graph, node: int, mixing: csr_array | None) -> Wiring:
        """Worker ``node``'s view of the graph."""
        return Wiring(graph.neighbours(node))

    @classmethod
    def resolve(
        cls, settings: Any, reports: Sequence[Mapping[str, Any]], mixing: csr_array | None
    ) -> Any:
        """Settings with automatic values filled in from the workers' set-up reports
        (:meth:`LocalSolver.report`; the engine gives a :class:`Reports`, the same object
        it then gives ``setup_warnings``); by default unchanged."""
        return settings

    # ------------------------------------------------------------------ compression
    @abstractmethod
    def make_quantizer(self):  # -> Quantizer
        """The quantizer of this worker's messages."""

    @classmethod
    def codec_for(cls, settings: Any):  # -> Codec
        """The codec of the messages under ``settings``: the ``codec`` setting, "auto"
        meaning :attr:`default_codec`. The workers write with it and the relay checks
        envelopes with it: override this (a classmethod) to give an algorithm another codec;
        a quantizer-codec pair that cannot work is refused by
        :class:`~flower_qgadmm.compression.memory.PublicCopies` at set-up."""
        from ..compression import make_codec

        name = getattr(settings, "codec", "auto")
        return make_codec(cls.default_codec if name == "auto" else name)

    # ------------------------------------------------------------------ messages
    def receive(self, src: int, payload: bytes) -> None:
        """Decode a neighbour's payload into its public copy (raises PayloadError)."""
        self.copies.receive(src, payload)

    def receive_all(self, inbox: Mapping[int, bytes]) -> dict[int, str]:
        """Receive every payload of an inbox (opening it first when messages are sealed);
        one that cannot be opened or decoded (or would make the copy non-finite or
        absurdly large) is skipped, the copy of its sender stays as it was, and the
        sender is blamed: returns ``{sender: reason}``."""
        blamed = {}
        sealed = self.channel is not None
        for src, payload in inbox.items():
            try:
                self.receive(src, self.open(int(src), payload) if sealed else payload)
            except PayloadError as exc:
                blamed[int(src)] = str(exc)
        return blamed

    @classmethod
    def receive_many(
        cls, workers: Sequence[Worker], inboxes: Sequence[Mapping[int, bytes]]
    ) -> list[dict[int, str]]:
        """``[w.receive_all(inbox) for w, inbox in zip(workers, inboxes)]`` for workers of
        this class (the members of one phase), the same copies and blame; payloads the
        workers' shared decode memo holds (the reference runner) are added to the
        copies at once (:func:`~flower_qgadmm.compression.memory.receive_rows`) when no
        message is sealed and the class receives as this one does."""
        plain = cls.receive is Worker.receive and cls.receive_all is Worker.receive_all
        if plain and all([w.channel is None for w in workers]):
            blamed = receive_rows([w.copies for w in workers], inboxes)
            if blamed is not None:
                return blamed
        return [w.receive_all(inbox) for w, inbox in zip(workers, inboxes, strict=True)]

    def receive_strict(self, inbox: Mapping[int, bytes]) -> None:
        """:meth:`receive_all`, raising PayloadError naming the sender of the first payload
        that cannot be opened or decoded (after the last round, and during a repair,
        there is no step to report it with)."""
        for src, why in sorted(self.receive_all(inbox).items()):
            raise PayloadError(f"payload from worker {src}: {why}")

    # ------------------------------------------------------------------ encryption
    def attach_channel(self, keyring) -> None:
        """Seal and open peer messages with ``keyring`` (:class:`~flower_qgadmm.crypto.
        Keyring`) when the settings ask for encryption; no-op otherwise."""
        if getattr(self.settings, "encrypt", False):
            from ..crypto import Channel, session_of

            self.channel = Channel(keyring, session_of(self.seed, type(self).__name__))

    def open(self, src: int, blob: bytes) -> bytes:
        """The plaintext of a message from ``src`` (itself when nothing is sealed)."""
        if self.channel is None:
            return blob
        plain, iteration = self.channel.open(
            blob, src, self.opened.get(src, -1), self.iteration + 1
        )
        self.opened[src] = iteration
        return plain

    def send(self, iteration: int, phase: str) -> bytes | None:
        """:meth:`step`, then seal its payload for the neighbours (when encrypting)."""
        if getattr(self.settings, "encrypt", False) and self.channel is None:
            raise RuntimeError(f"worker {self.node}: encrypt = true but no keys attached")
        payload = self.step(iteration, phase)
        if payload is not None and type(payload) is not bytes:
            self._not_bytes(payload)
        if payload is None or self.channel is None:
            return payload
        return self.channel.seal(payload, iteration, phase, self.neighbours)

    @classmethod
    def send_many(cls, workers: Sequence[Worker], iteration: int, phase: str) -> list[bytes | None]:
        """``[w.send(iteration, phase) for w in workers]`` for workers of this class (the
        members of one phase): their steps taken together (:meth:`step_many`) when no
        message is sealed (and the class sends as this one does), the same payloads."""
        if not cls._steps_together(workers):
            return [w.send(iteration, phase) for w in workers]
        payloads = cls.step_many(workers, iteration, phase)
        cls._check_payloads(workers, payloads)
        return payloads

    @classmethod
    def _steps_together(cls, workers: Sequence[Worker]) -> bool:
        """:meth:`send_many` takes the steps of ``workers`` together: the class sends as
        this one does and no message is sealed."""
        return cls.send is Worker.send and not any(
            [getattr(w.settings, "encrypt", False) for w in workers]
        )

    @staticmethod
    def _check_payloads(workers: Sequence[Worker], payloads: Sequence[bytes | None]) -> None:
        """Raise the TypeError of the first step that returned something else than bytes."""
        for w, payload in zip(workers, payloads, strict=True):
            if payload is not None and type(payload) is not bytes:
                w._not_bytes(payload)

    @classmethod
    def send_and_report_many(
        cls, workers: Sequence[Worker], iteration: int, phase: str, evaluate: bool = True
    ) -> tuple[list[bytes | None], list[dict[str, float]]]:
        """:meth:`send_many`, then :meth:`metrics_many` (what a phase's members send and
        report after their steps). An algorithm whose steps compute the distances to
        the neighbours' copies anyway may hand them to the reports (GADMM does)."""
        return cls.send_many(workers, iteration, phase), cls.metrics_many(workers, evaluate)

    def _not_bytes(self, payload: object) -> None:
        """Raise the TypeError of a step that returned something else than bytes."""
        raise TypeError(
            f"worker {self.node}: {type(self).__name__}.step returned a "
            f"{type(payload).__name__}; it must return the payload's bytes (or None)"
        )

    def export_copy(self, recipients: Sequence[int]) -> np.ndarray | bytes:
        """The public copy for new neighbours after a repair: the array, or sealed for
        ``recipients`` when encrypting (the relay must not see it)."""
        copy = self.public_copy()
        if self.channel is None:
            return copy
        from ..crypto import COPY_PHASE  # crypto is imported only when encrypting

        blob = copy.astype("<f8").tobytes()
        return self.channel.seal(blob, self.iteration, COPY_PHASE, recipients)

    def open_copy(self, src: int, copy: np.ndarray | bytes) -> np.ndarray:
        """A new neighbour's public copy, opened if sealed (ForgedMessage otherwise)."""
        if isinstance(copy, (bytes, bytearray)):
            if self.channel is None:
                raise ValueError(f"worker {self.node} got a sealed copy without keys")
            plain, _ = self.channel.open(bytes(copy), src, -1, 2**32 - 1, copy=True)
            copy = np.frombuffer(plain, dtype="<f8")
            if copy.shape != self.theta.shape:
                raise ValueError(f"copy from worker {src} has {copy.size} entries")
        return np.asarray(copy, dtype=np.float64)

    @abstractmethod
    def step(self, iteration: int, phase: str) -> bytes | None:
        """This worker's update in ``phase`` of ``iteration`` (1-based): the payload to
        relay to every neighbour, or None when nothing is sent."""

    @classmethod
    def step_many(cls, workers: Sequence[Worker], iteration: int, phase: str) -> list[bytes | None]:
        """``[w.step(iteration, phase) for w in workers]``: the steps of the members of one
        phase (workers of this class), which do not depend on each other. An algorithm
        may take them together, with the workers' vectors as the rows of one array
        (GADMM does), as long as every worker ends in the state and returns the payload
        its own :meth:`step` would give."""
        return [w.step(iteration, phase) for w in workers]

    def nominal_bits(self, q) -> int:
        """The nominal size of message ``q``, reported next to the measured bytes: the
        codec's closed-form estimate when it has one (the source coder, Malcom-PSGD's
        formula, whichever algorithm uses it), else the quantizer's formula (the papers':
        b d + 32 for Q-GADMM, 32 d for GADMM and D-PSGD, the QSGD count for CHOCO-SGD)."""
        estimate = getattr(self.copies.codec, "estimate_bits", None)
        return int(estimate(q)) if estimate is not None else self.copies.quantizer.nominal_bits(q)

    def finish_step(self, iteration: int, payload: bytes | None, nominal: int) -> bytes | None:
        """Record what a step produced (bits actually serialized, nominal bits)."""
        self.iteration = int(iteration)
        self.last_payload_bits = 0 if payload is None else 8 * len(payload)
        self.last_nominal_bits = 0 if payload is None else int(nominal)
        return payload

    def finish(self) -> None:
        """Complete a step deferred to the next round (e.g. CHOCO's consensus step) once
        the last round's payloads were received; by default nothing is deferred."""
        return None

    def rng(self, iteration: int) -> np.random.Generator:
        """The generator of ``iteration``: ``default_rng([seed, node, iteration])``, the
        same object reused from one call to the next (:mod:`~flower_qgadmm.streams`)."""
        return self._streams.at(iteration)

    def from_solver(
        self, value: Any, method: str, iteration: int | None = None, finite: bool = True
    ) -> np.ndarray:
        """``value``, what the local solver's ``method`` returned, if it is a float vector
        of the model's shape; else a ValueError naming the worker and the method (a
        custom :class:`~flower_qgadmm.solvers.LocalSolver` that returns another shape);
        a FloatingPointError naming them if it holds NaN/Inf (the model it started from
        was finite: :meth:`check_divergence` stopped the run before otherwise). With
        ``finite = False`` the caller leaves that check to :meth:`check_divergence` with
        ``source = method`` (the value is the new model: one check, not two)."""
        if (
            type(value) is np.ndarray
            and value.shape == self.theta.shape
            and value.dtype.kind == "f"
        ):
            # one sum proves the usual finite vector; an overflowing sum checks entries
            if not finite or math.isfinite(float(np.add.reduce(value))):
                return value
            if np.isfinite(value).all():
                return value
            self._solver_broke(method, iteration)
        got = (
            f"an array of shape {value.shape} and dtype {value.dtype}"
            if isinstance(value, np.ndarray)
            else f"a {type(value).__name__}"
        )
        raise ValueError(
            f"worker {self.node}: {type(self.solver).__name__}.{method} returned {got}; "
            f"expected a float array of shape {self.theta.shape} (the model's)"
        )

    def _solver_broke(self, method: str, iteration: int | None) -> None:
        """Raise the FloatingPointError of a solver ``method`` that returned NaN/Inf."""
        when = "" if iteration is None else f" at iteration {iteration}"
        raise FloatingPointError(
            f"worker {self.node} diverged{when}: {type(self.solver).__name__}.{method} "
            "returned NaN/Inf at a finite model "
            f"(max |theta| = {float(np.abs(self.theta).max()):.3g}): its computation "
            "broke down (its own step sizes, or a bug)"
        )

    def check_divergence(
        self,
        theta: np.ndarray,
        iteration: int,
        advice: str | Callable[[], str],
        source: str | None = None,
    ) -> None:
        """Raise FloatingPointError naming the worker if ``theta`` blew up; ``advice``
        (or what calling it returns, only then) ends the message. ``source``: the solver
        method that returned ``theta`` as it is (:meth:`from_solver` with ``finite =
        False``), named if ``theta`` holds NaN/Inf."""
        if within(theta, DIVERGED):  # finite and at most DIVERGED
            return
        if source is not None and not np.isfinite(theta).all():
            self._solver_broke(source, iteration)
        size = float(np.abs(theta).max()) if theta.size else 0.0
        if not math.isfinite(size) or size > DIVERGED:
            raise FloatingPointError(
                f"worker {self.node} diverged at iteration {iteration} "
                f"(max |theta| = {size:.3g}); {advice() if callable(advice) else advice}"
            )

    def rewire(self, wiring: Wiring, copies: Mapping[int, np.ndarray]) -> None:
        """Adopt a repaired graph between two iterations (a neighbour left the run).

        Call after every pending payload was received. A new neighbour starts from its
        current public copy (``copies``, sent by the relay), which both ends then hold.
        """
        if not wiring.neighbours:
            raise ValueError(f"worker {self.node} has no neighbours after the repair")
        opened = {int(m): self.open_copy(int(m), c) for m, c in copies.items()}
        self.copies.rewire(wiring.neighbours, opened)
        self.wiring = wiring
        self.opened = {m: k for m, k in self.opened.items() if m in wiring.neighbours}

    @property
    def neighbours(self) -> tuple[int, ...]:
        """Current neighbours."""
        return self.wiring.neighbours

    def public_copy(self) -> np.ndarray:
        """theta_hat_n, the copy of this worker that its neighbours hold."""
        return self.copies.own

    # ------------------------------------------------------------------ reporting
    def objective(self) -> float:
        """f_n(theta_n) at the current model (ValueError naming the worker if the solver
        returns no number)."""
        value = self.solver.objective(self.theta)
        if type(value) is float:  # what number() returns for it (its text built if not)
            return value
        return number(value, f"worker {self.node}: {type(self.solver).__name__}.objective")

    def metrics(self, evaluate: bool = True) -> dict[str, float]:
        """This worker's report (scalars only; the model stays here): ``objective``
        f_n(theta_n), the solver's metrics (``solver.evaluate``, e.g. test accuracy: only
        when ``evaluate``, i.e. in the relay's evaluation rounds), and how far the model is
        from the copies it holds of its neighbours: ``disagreement``
        sqrt(mean_m ||theta_n - theta_hat_m||^2) and ``disagreement_max``
        max_m ||theta_n - theta_hat_m||."""
        theta, hat = self.theta, self.copies.hat
        gaps = []
        for m in self.neighbours:  # np.linalg.norm's sqrt(x . x), without its wrapper
            gap = theta - hat[m]
            gaps.append(math.sqrt(gap.dot(gap)))
        return self._report(gaps, evaluate)

    def _report(self, gaps: list[float], evaluate: bool) -> dict[str, float]:
        """:meth:`metrics` given the distances ``gaps`` to the neighbours' copies."""
        rms, top = _root_mean_square(gaps), max(gaps, default=0.0)
        return self._record(self.objective(), rms, top, evaluate)

    def _record(self, objective: float, rms: float, top: float, evaluate: bool) -> dict:
        """The report of :meth:`_records` of this worker alone."""
        return self._records([self], [objective], [rms], [top], evaluate)[0]

    @staticmethod
    def _records(
        workers: Sequence[Worker],
        objectives: Sequence[float],
        rms: Sequence[float],
        tops: Sequence[float],
        evaluate: bool,
    ) -> list[dict]:
        """Each worker's report: its ``objective``, its solver's metrics
        (``evaluate(theta)``, checked to be a mapping) when ``evaluate``, its
        ``disagreement`` ``rms`` and its max ``top``."""
        if not evaluate:
            return [
                {"objective": f, "disagreement": r, "disagreement_max": t}
                for f, r, t in zip(objectives, rms, tops, strict=True)
            ]
        out = []
        for w, f, r, t in zip(workers, objectives, rms, tops, strict=True):
            scores = w.solver.evaluate(w.theta)
            if not isinstance(scores, Mapping):
                raise TypeError(
                    f"worker {w.node}: {type(w.solver).__name__}.evaluate returned a "
                    f"{type(scores).__name__}; it must return a dict of metric names to numbers"
                )
            # the solver's metrics after the objective (a name it shares replaces it)
            out.append({"objective": f, **scores, "disagreement": r, "disagreement_max": t})
        return out

    @classmethod
    def metrics_many(
        cls, workers: Sequence[Worker], evaluate: bool = True
    ) -> list[dict[str, float]]:
        """``[w.metrics(evaluate) for w in workers]`` for workers of this class (the members
        of one phase), the same numbers: when the class reports as this one does, the
        objectives come from the solvers' class at once
        (:meth:`~flower_qgadmm.solvers.LocalSolver.objective_many`) and the distances to
        the neighbours' copies are computed for all workers at once."""
        if not cls._reports_together() or not workers:
            return [w.metrics(evaluate) for w in workers]
        neighbours = [w.wiring.neighbours for w in workers]  # what w.neighbours reads
        degrees = tuple([len(ms) for ms in neighbours])
        thetas = [w.theta for w in workers]
        owners, starts, counts = _segments(degrees)
        copies = [
            hat[m]
            for hat, ms in zip([w.copies.hat for w in workers], neighbours, strict=True)
            for m in ms
        ]
        distances = np.zeros(0)
        if copies:
            # a row per (worker, neighbour), as np.stack; float64 as theta - hat of a
            # float32 theta (a custom solver's)
            gaps = np.array(thetas, dtype=np.float64)[owners]
            gaps -= np.array(copies)
            distances = np.sqrt(row_dots(gaps))  # math.sqrt of each: the same floats
        if 1 <= min(degrees) and max(degrees) <= 2:
            # one or two squares per worker: their sum is the same in any order
            squares = distances * distances  # about the sums of squares: no new overflow
            means = np.sqrt(np.add.reduceat(squares, starts) / counts).tolist()
            largest = np.maximum.reduceat(distances, starts).tolist()
        else:
            listed, at = distances.tolist(), 0
            means, largest = [], []
            for degree in degrees:
                mine, at = listed[at : at + degree], at + degree
                means.append(_root_mean_square(mine))
                largest.append(max(mine, default=0.0))
        return cls._reports(workers, evaluate, means, largest, thetas)

    @classmethod
    def _reports_together(cls) -> bool:
        """:meth:`metrics_many` reports the workers of this class at once: they report
        as this class does (``metrics``, ``objective``, ``neighbours``)."""
        return (
            cls.metrics is Worker.metrics
            and cls.objective is Worker.objective
            and cls.neighbours is Worker.neighbours
        )

    @classmethod
    def _reports(
        cls,
        workers: Sequence[Worker],
        evaluate: bool,
        means: Sequence[float],
        largest: Sequence[float],
        thetas: Sequence[np.ndarray] | None = None,
    ) -> list[dict[str, float]]:
        """The reports of :meth:`metrics_many` given each worker's distances to its
        neighbours' copies (their root mean square and largest), the objectives of the
        solvers' class at once (``thetas``: the workers' models, if gathered)."""
        if thetas is None:
            thetas = [w.theta for w in workers]
        solvers = [w.solver for w in workers]
        kind = type(solvers[0])
        if any([type(v) is not kind for v in solvers]):
            kind = LocalSolver
        values = kind.objective_many(solvers, thetas)
        if not all([type(v) is float for v in values]):
            values = [  # what number() returns for each (its text built if not a float)
                v
                if type(v) is float
                else number(v, f"worker {w.node}: {type(w.solver).__name__}.objective")
                for w, v in zip(workers, values, strict=True)
            ]
        return cls._records(workers, values, means, largest, evaluate)

    # ------------------------------------------------------------------ persistence
    def extra_arrays(self) -> dict[str, np.ndarray]:
        """Algorithm-specific arrays to persist (model-shaped)."""
        return {}

    def extra_scalars(self) -> dict[str, Any]:
        """Algorithm-specific scalars to persist."""
        return {}

    def load_extra(self, arrays: Mapping[str, np.ndarray], scalars: Mapping[str, Any]) -> None:
        """Restore :meth:`extra_arrays` / :meth:`extra_scalars` (default: nothing kept)."""
        return None

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, scalars): everything that must survive between two messages."""
        arrays = {"theta": self.theta, **self.copies.arrays(), **self.extra_arrays()}
        arrays.update({f"solver.{k}": v for k, v in self.solver.extra_state().items()})
        scalars = {"node": self.node, "iteration": self.iteration, **self.extra_scalars()}
        scalars.update({f"opened.{m}": k for m, k in self.opened.items()})
        return arrays, scalars

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], scalars: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; refuses a state of another worker or shape."""
        if int(scalars["node"]) != self.node:
            raise ValueError(f"state of worker {scalars['node']} loaded into worker {self.node}")
        own = {k: v for k, v in arrays.items() if not k.startswith("solver.")}
        expected = {"theta", *self.copies.arrays(), *self.extra_arrays()}
        if set(own) != expected:
            raise ValueError(
                f"worker {self.node}: saved state has arrays {sorted(own)}, "
                f"expected {sorted(expected)} (did the neighbours change?)"
            )
        for key, value in own.items():
            if np.shape(value) != self.theta.shape:
                raise ValueError(f"worker {self.node}: state {key} has shape {np.shape(value)}")
        self.theta = np.array(arrays["theta"], dtype=np.float64)
        self.copies.load(arrays)
        self.solver.load_extra_state(
            {k[len("solver.") :]: v for k, v in arrays.items() if k.startswith("solver.")}
        )
        self.iteration = int(scalars["iteration"])
        self.opened = {
            int(k[len("opened.") :]): int(v) for k, v in scalars.items() if k.startswith("opened.")
        }
        self.load_extra(arrays, scalars)


@functools.lru_cache(maxsize=16)
def _segments(degrees: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The workers of ``degrees`` neighbours with their distances to them listed worker
    by worker: the worker of each distance, where each worker's distances start, and how
    many (as floats)."""
    owners = np.repeat(np.arange(len(degrees)), degrees)
    return owners, np.cumsum((0, *degrees[:-1])), np.array(degrees, dtype=np.float64)


def _root_mean_square(values: Sequence[float]) -> float:
    """``float(np.sqrt(np.mean(np.square(values))))`` (0 for none), bit for bit: numpy adds
    fewer than 8 entries one after the other from 0 (its pairwise summation starts at 8),
    which plain floats do without building an array."""
    n = len(values)
    if n >= 8:
        return float(np.sqrt(np.add.reduce(np.square(values)) / n))
    total = 0.0
    for v in values:
        total += v * v
    return math.sqrt(total / n) if n else 0.0


@dataclass(frozen=True)
class AlgorithmSpec:
    """A registered algorithm: its worker class, fixed variant options and the kind of
    local solver it needs (``"exact"`` least squares, ``"stochastic"`` torch, ``"any"``)."""

    name: str
    worker: type[Worker]
    options: Mapping[str, Any]
    solver: str = "any"
    description: str = ""

    @property
    def Settings(self) -> type:  # noqa: N802 - mirrors the class attribute
        """The algorithm's settings class."""
        return self.worker.Settings

    @property
    def unused_keys(self) -> frozenset[str]:
        """The settings this variant does not read (``Worker.unused_keys_for``)."""
        return self.worker.unused_keys_for(self.options)

    def build(
        self, node: int, wiring: Wiring, solver: LocalSolver, settings: Any, seed: int
    ) -> Worker:
        """A worker of this algorithm (:attr:`Worker.algorithm` is this name)."""
        worker = self.worker(node, wiring, solver, settings, seed, **self.options)
        worker.algorithm = self.name
        return worker


REGISTRY: dict[str, AlgorithmSpec] = {}
WIRE_TYPES = (bool, int, float, str, "bool", "int", "float", "str")
"""The types of a setting's field (declared as types or, with postponed annotations, as
their names): what a run config and a Flower ConfigRecord carry."""


def register(
    name: str, worker: type[Worker], *, solver: str = "any", description: str = "", **options
) -> AlgorithmSpec:
    """Register ``worker`` (with fixed ``options``) under ``name``. Refused: a name taken,
    settings that are not a frozen dataclass of bool / int / float / str fields, a key
    another settings class owns (``ValueError`` naming both), a worker defining
    ``make_codec`` (override ``codec_for``)."""
    spec = _register(name, worker, solver=solver, description=description, **options)
    try:  # every key has one owner, across the run's and every algorithm's settings
        from ..config import sections

        sections()
    except ValueError:
        del REGISTRY[name]
        raise
    return spec


def _register(
    name: str, worker: type[Worker], *, solver: str = "any", description: str = "", **options
) -> AlgorithmSpec:
    """:func:`register` without the key check (the package's own algorithms, registered
    while the config module, which checks keys, cannot be imported yet)."""
    if name in REGISTRY:
        raise ValueError(f"algorithm {name!r} is already registered")
    settings = getattr(worker, "Settings", None)
    if not (dataclasses.is_dataclass(settings) and settings.__dataclass_params__.frozen):
        raise TypeError(f"{worker.__name__}.Settings must be a frozen dataclass, got {settings!r}")
    if hasattr(worker, "make_codec"):  # the relay would check envelopes with another codec
        raise TypeError(
            f"{worker.__name__} defines make_codec: override the classmethod codec_for(settings) "
            "instead (the workers write with it and the relay checks envelopes with it)"
        )
    for f in dataclasses.fields(settings):  # what a run config and a ConfigRecord carry
        if f.type not in WIRE_TYPES:
            raise TypeError(
                f"{settings.__name__}.{f.name} is a {f.type}: a setting is a bool, int, float "
                "or str (run configs and Flower's ConfigRecords carry nothing else)"
            )
    spec = AlgorithmSpec(name, worker, dict(options), solver, description)
    REGISTRY[name] = spec
    return spec


def get_algorithm(name: str) -> AlgorithmSpec:
    """The registered algorithm ``name``; an unknown name lists the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown algorithm {name!r}; registered: {sorted(REGISTRY)}") from None
