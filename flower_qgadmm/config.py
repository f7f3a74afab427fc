"""The settings of one run: run-level, task, local solver, and the algorithm's own section.

Each run-config key has one owner (:mod:`flower_qgadmm.settings`):

- :class:`RunSettings`: algorithm, task, workers, iterations, topology and mixing, seed,
  results, timeouts, failure policy;
- :class:`TaskSettings`: the data (synthetic regression, CSV, image tasks, partitions);
- :class:`SolverSettings`: the local solver (optimizer, learning rate, local steps, l2);
- the algorithm's settings class, owned by the registered algorithm
  (:class:`~flower_qgadmm.algorithms.GadmmSettings`, ``GossipSettings``, ...), or
  :class:`FedAvgSettings` for the FedAvg baseline.

:meth:`RunConfig.from_run_config` routes a flat kebab-case mapping (Flower's
``context.run_config``, or the ``simulate`` options) to the sections, validates each
once, then checks the run as a whole (the algorithm fits the task, the graph suits the
algorithm). Keys of algorithms other than the selected one are validated and ignored,
so one ``[tool.flwr.app.config]`` serves every algorithm.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from .algorithms import REGISTRY, get_algorithm
from .partitions import SCHEMES
from .settings import (
    as_record,
    at_least,
    closest,
    coerce_fields,
    declaring_class,
    from_mapping,
    key_of,
    keys_of,
    one_of,
    positive,
    setting,
    split_keys,
)
from .solvers import STOCHASTIC_ONLY
from .topology import MIXING, Graph, make_topology, parse_matrix

OPTIMIZERS = ("adam", "sgd")
LOSS_REDUCTIONS = ("mean", "sum")  # TorchSolver's loss_reduction
TASKS = ("linreg", "digits", "mnist", "cifar10", "custom")
CUSTOM_TASK = "custom"  # the data and the model are the user's ClientApp's (torch_client_app)
BASELINES = ("fedavg",)
#: run-config keys a resume may change: more iterations, where the results go, the
#: checkpoints' rhythm, the Flower runtime's waits and failure policy; the solver's
#: ``device`` and the ``data-dir`` (the same numbers elsewhere: the engine's ``MOVABLE``)
RESUMABLE = frozenset(
    {"num-iterations", "resume", "results-dir", "checkpoint-every", "discovery-timeout"}
    | {"phase-timeout", "on-failure", "inject-failure", "device", "data-dir"}
)


@dataclass(frozen=True)
class RunSettings:
    """Run-level settings."""

    algorithm: str = setting("q-gadmm", "algorithm (registered name) or the 'fedavg' baseline")
    task: str = setting(
        "linreg",
        "'linreg' (exact solves), 'digits' (offline), 'mnist', 'cifar10', or 'custom': your own "
        "ClientApp's data and model (torch_client_app; stochastic local steps)",
    )
    num_workers: int = setting(10, "number of workers; must equal the number of SuperNodes")
    num_iterations: int = setting(500, "iterations = Flower rounds")
    topology: str = setting("chain", "chain, ring, grid, torus, complete, random-regular, ...")
    topology_param: float = setting(
        0.0, "grid/torus rows, degree, edge probability, radius (0: auto)"
    )
    topology_edges: str = setting("", "topology 'edges': '0-1 1-2 ...'")
    mixing: str = setting("metropolis", "gossip weights: 'metropolis', 'max-degree' or 'matrix'")
    mixing_matrix: str = setting("", "mixing 'matrix': rows separated by ';' ('0.5 0.5; 0.5 0.5')")
    seed: int = setting(0, "seed of data, initial model, quantization and mini-batches")
    results_dir: str = setting(
        "results", "a new sub-folder per run: history.jsonl, plot, summary.md, final model"
    )
    evaluate_every: int = setting(
        10, "pull the models every k rounds (and the last) for consensus and evaluation"
    )
    checkpoint_every: int = setting(
        10, "save every worker's and the relay's state every k rounds (0: never)"
    )
    resume: str = setting(
        "",
        "a previous run's folder (or its history file or checkpoint folder): continue from "
        "its checkpoint",
    )
    discovery_timeout: float = setting(120.0, "seconds to wait for all SuperNodes")
    phase_timeout: float = setting(300.0, "seconds to wait for one phase's replies")
    on_failure: str = setting("repair", "a worker that fails: 'repair' the graph, or 'stop'")
    remove_workers: str = setting("", "planned departures: '3@20 5@40' (worker@iteration)")
    inject_failure: str = setting(
        "", "testing: 'w@k' makes worker w fail from iteration k on ('w@k:garbage' corrupts)"
    )

    def __post_init__(self) -> None:
        coerce_fields(self)
        known = sorted([*REGISTRY, *BASELINES])
        if self.algorithm not in known:
            raise ValueError(f"unknown algorithm {self.algorithm!r}; choose one of {known}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {sorted(TASKS)}")
        if self.num_workers < 2:
            raise ValueError(f"num-workers must be >= 2, got {self.num_workers}")
        at_least("seed", self.seed, 0)
        at_least("num-iterations", self.num_iterations, 1)
        at_least("evaluate-every", self.evaluate_every, 1)
        at_least("checkpoint-every", self.checkpoint_every, 0)
        at_least("topology-param", self.topology_param, 0.0)
        if self.topology in ("grid", "torus") and not float(self.topology_param).is_integer():
            raise ValueError(
                f"topology-param of a {self.topology} is its number of rows: a whole number "
                f"(0: automatic), got {self.topology_param:g}"
            )
        one_of("mixing", self.mixing, (*MIXING, "matrix"))
        positive("discovery-timeout", self.discovery_timeout)
        positive("phase-timeout", self.phase_timeout)
        one_of("on-failure", self.on_failure, ("repair", "stop"))
        self.removals()
        self.failure()

    def removals(self) -> dict[int, int]:
        """``remove-workers = "3@20 5@40"``: worker -> iteration at which it leaves."""
        out = {}
        for token in self.remove_workers.replace(",", " ").split():
            worker, sep, at = token.partition("@")
            if not (sep and worker.isdigit() and at.isdigit()):
                raise ValueError(
                    f"remove-workers entries look like 'worker@iteration', got {token!r}"
                )
            if not 1 <= int(at) <= self.num_iterations:
                raise ValueError(
                    f"remove-workers {token!r}: the iteration must be in 1..{self.num_iterations} "
                    "(num-iterations)"
                )
            if int(worker) >= self.num_workers:
                raise ValueError(
                    f"remove-workers names worker {worker}; there are {self.num_workers}"
                )
            if int(worker) in out:
                raise ValueError(f"remove-workers names worker {worker} twice")
            out[int(worker)] = int(at)
        return out

    def failure(self) -> tuple[int, int] | None:
        """``inject-failure = "w@k"``: (worker, iteration) of a simulated dropout (or, with
        ``:garbage``, of a worker whose payloads are corrupted from then on), or None."""
        spec = self._injected()
        return None if spec is None else spec[:2]

    def failure_mode(self) -> str:
        """How the injected failure shows: ``"error"`` or ``"garbage"`` payloads."""
        spec = self._injected()
        return "garbage" if spec is not None and spec[2] == "garbage" else "error"

    def _injected(self) -> tuple[int, int, str] | None:
        """``inject-failure`` parsed: (worker, iteration, mode), or None if unset."""
        if not self.inject_failure:
            return None
        spec, colon, mode = self.inject_failure.partition(":")
        mode = mode.strip()  # spaces are allowed around every part ('2 @ 7 : garbage')
        worker, sep, at = spec.partition("@")
        ok = sep and worker.strip().isdigit() and at.strip().isdigit() and int(at) >= 1
        if not ok or mode not in ("", "garbage") or (colon and not mode):
            raise ValueError(
                "inject-failure must look like 'worker@iteration' or "
                f"'worker@iteration:garbage', got {self.inject_failure!r}"
            )
        if int(worker) >= self.num_workers:
            raise ValueError(f"inject-failure names worker {worker}; there are {self.num_workers}")
        return int(worker), int(at), mode


@dataclass(frozen=True)
class TaskSettings:
    """The data a run learns from."""

    #: the keys of linear regression only (synthetic data or a CSV), and of image tasks only
    LINREG_ONLY: ClassVar[frozenset[str]] = frozenset(
        {"samples-per-worker", "dim", "noise", "data-csv", "data-target", "data-features"}
        | {"data-drop"}
    )
    IMAGE_ONLY: ClassVar[frozenset[str]] = frozenset(
        {"batch-size", "partition", "dirichlet-alpha", "classes-per-worker", "data-dir", "model"}
    )

    samples_per_worker: int = setting(50, "synthetic linreg: rows per worker")
    dim: int = setting(20, "synthetic linreg: model dimension")
    noise: float = setting(0.1, "synthetic linreg: label noise std")
    data_csv: str = setting("", "linreg: a CSV with a header row instead of synthetic data")
    data_target: str = setting("", "linreg: the CSV's target column")
    data_features: str = setting(
        "", "linreg CSV: feature columns to use, comma-separated (default: all but the target)"
    )
    data_drop: str = setting("", "linreg CSV: columns to leave out, comma-separated")
    batch_size: int = setting(32, "image tasks: mini-batch size")
    partition: str = setting(
        "iid",
        "image tasks: 'iid', 'contiguous' (equal shards in the data's order, the papers'), "
        "'dirichlet' or 'pathological' (flwr-datasets partitioners)",
    )
    dirichlet_alpha: float = setting(0.5, "label skew of the dirichlet partition, > 0")
    classes_per_worker: int = setting(2, "pathological partition: labels per worker, >= 1")
    data_dir: str = setting("", "mnist / cifar10: torchvision root holding the files")
    model: str = setting("auto", "image tasks: the task's network ('auto') or 'softmax'")

    def __post_init__(self) -> None:
        coerce_fields(self)
        for key in ("samples_per_worker", "dim", "batch_size"):
            at_least(key.replace("_", "-"), getattr(self, key), 1)
        at_least("noise", self.noise, 0.0)
        one_of("model", self.model, ("auto", "softmax"))
        one_of("partition", self.partition, SCHEMES)
        at_least("classes-per-worker", self.classes_per_worker, 1)
        positive("dirichlet-alpha", self.dirichlet_alpha)
        if self.data_csv and not self.data_target:
            raise ValueError("data-csv is set but data-target (the target column) is empty")
        if self.data_target and not self.data_csv:  # the file forgotten: not synthetic data
            raise ValueError("data-target names a column of data-csv, which is empty")
        if (self.data_features or self.data_drop) and not self.data_csv:
            raise ValueError("data-features / data-drop choose columns of data-csv, which is empty")


@dataclass(frozen=True)
class SolverSettings:
    """The local solver of every worker (identical on every worker)."""

    #: the keys of exact least squares only (a torch model's loss has no ridge term)
    LINREG_ONLY: ClassVar[frozenset[str]] = frozenset({"l2"})

    optimizer: str = setting("adam", "stochastic local steps: 'adam' or 'sgd'")
    lr: float = setting(0.001, "learning rate of the local optimizer")
    local_steps: int = setting(5, "mini-batch steps per primal update (fedavg: per round)")
    same_batch: bool = setting(
        False,
        "torch: the local steps of one update all take one mini-batch (the SGADMM authors' "
        "notebook); default: a new batch per step",
    )
    loss_reduction: str = setting(
        "mean",
        "torch: the mini-batch loss the local steps minimise, its 'mean' over the batch "
        "(torch's default) or 'sum' (the SGADMM paper's); the reported loss stays the mean",
    )
    l2: float = setting(0.0, "ridge term (l2/2)||theta||^2 in every local loss (linreg)")
    device: str = setting("cpu", "torch device of the local solver: 'cpu', 'cuda', 'cuda:1', 'mps'")

    def __post_init__(self) -> None:
        coerce_fields(self)
        one_of("optimizer", self.optimizer, OPTIMIZERS)
        positive("lr", self.lr)
        at_least("local-steps", self.local_steps, 1)
        one_of("loss-reduction", self.loss_reduction, LOSS_REDUCTIONS)
        at_least("l2", self.l2, 0.0)
        # Spelling only: the ServerApp validating the run config may have no GPU that its
        # SuperNodes have; each worker's TorchSolver checks availability on its machine.
        if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", self.device):
            raise ValueError(
                f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}"
            )


@dataclass(frozen=True)
class FedAvgSettings:
    """Flower's FedAvg baseline."""

    fraction_train: float = setting(1.0, "fedavg: fraction of workers sampled per round")

    def __post_init__(self) -> None:
        coerce_fields(self)
        if not 0 < self.fraction_train <= 1:
            raise ValueError(f"fraction-train must be in (0, 1], got {self.fraction_train}")


def algorithm_sections() -> list[type]:
    """Settings classes of every registered algorithm and baseline (each once)."""
    out: list[type] = []
    for spec in REGISTRY.values():
        if spec.Settings not in out:
            out.append(spec.Settings)
    return [*out, FedAvgSettings]


def sections() -> list[type]:
    """Every settings class, in the order keys are routed; a key owned by two classes
    (e.g. a newly registered algorithm reusing ``rho``) is refused."""
    classes = [RunSettings, TaskSettings, SolverSettings, *algorithm_sections()]
    owner: dict[str, type] = {}
    for cls in classes:
        for f in fields(cls):
            declared = declaring_class(cls, f.name)
            key = f.name.replace("_", "-")
            if owner.setdefault(key, declared) is not declared:
                raise ValueError(
                    f"setting {key!r} is declared by both {owner[key].__name__} and "
                    f"{declared.__name__}; each key has one owner (rename it, or share it "
                    "by inheriting one settings class, like CodecSettings)"
                )
    return classes


def near_misses(keys: Iterable[str], known: Iterable[str]) -> list[str]:
    """``'<key>' is not a setting: did you mean '<ours>'?`` for each of ``keys`` that looks
    like a misspelling of one of the ``known`` keys: at most 2 edits away (1 for keys of
    up to 4 letters), case and ``_`` / ``-`` aside, and not one of ours with a word added
    (``fraction-fit``, ``test-batch-size``, ``device-id``: a project's own keys)."""
    known = sorted(known)
    out = []
    for key in sorted(keys):
        if key_of(str(key)) in known:  # one of ours, left alone on purpose (task "custom")
            continue
        spelt = str(key).lower().replace("_", "-")
        best = closest(spelt, known)
        if best is not None and not (spelt.startswith(best + "-") or spelt.endswith("-" + best)):
            out.append(f"{key!r} is not a setting: did you mean {best!r}?")
    return out


def settings_class(algorithm: str) -> type:
    """The settings class of ``algorithm``."""
    return FedAvgSettings if algorithm in BASELINES else get_algorithm(algorithm).Settings


def _refuse_two_spellings(
    run_config: Mapping[str, Any], ours: Iterable[str], yours: Iterable[str] = ()
) -> None:
    """A setting given under both its kebab- and its snake-case key (``local-steps`` and
    ``local_steps``) with different values is refused: one would silently win. ``yours``:
    keys left to the project (the data keys of task "custom")."""
    ours, yours = set(ours), set(yours)
    spellings: dict[str, list[str]] = {}
    for k in run_config:
        if key_of(k) in ours and key_of(k) not in yours:
            spellings.setdefault(key_of(k), []).append(k)
    for key, names in sorted(spellings.items()):
        values = {repr(run_config[n]) for n in names}
        if len(names) > 1 and len(values) > 1:
            given = ", ".join(f"{n} = {run_config[n]!r}" for n in sorted(names))
            raise ValueError(
                f"{given}: both are the setting {key!r}; keep {key!r} only (a key of "
                "your own needs another name)"
            )


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one run, validated once. Section fields are also readable as
    attributes (``cfg.num_workers``, ``cfg.rho``): each key has exactly one owner."""

    run: RunSettings = RunSettings()
    task_settings: TaskSettings = TaskSettings()
    solver: SolverSettings = SolverSettings()
    algorithms: tuple[Any, ...] = ()  # every algorithm section (defaults where not given)
    #: keys ``from_run_config(strict=False)`` left alone (a project's own, or typos)
    ignored: tuple[str, ...] = field(default=(), compare=False)
    #: our keys the run config gave (the others are defaults)
    given: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        given = {type(a): a for a in self.algorithms}
        unknown = [c.__name__ for c in given if c not in algorithm_sections()]
        if unknown:
            raise TypeError(f"not a settings class of a registered algorithm: {unknown}")
        full = tuple(given.get(c) or c() for c in algorithm_sections())
        object.__setattr__(self, "algorithms", full)
        self._check_task()
        if self.run.algorithm not in BASELINES:
            spec = get_algorithm(self.run.algorithm)
            spec.worker.schedule(self.graph)  # does the graph suit the algorithm?
            self.mixing_weights()
            self._check_departures(spec)

    @property
    def algo(self) -> Any:
        """The selected algorithm's settings."""
        wanted = settings_class(self.run.algorithm)
        return next(a for a in self.algorithms if isinstance(a, wanted))

    def _check_departures(self, spec: Any) -> None:
        """Planned departures must leave a graph the algorithm can still run on."""
        gone = sorted(self.removals())
        if not gone:
            return
        if spec.worker.needs_mixing and self.run.mixing == "matrix":
            raise ValueError(
                "remove-workers with mixing = 'matrix': a user mixing matrix cannot be "
                "recomputed after workers leave; use 'metropolis' or 'max-degree'"
            )
        try:
            spec.worker.schedule(self.graph.repaired(gone))
        except ValueError as exc:
            raise ValueError(f"remove-workers {self.run.remove_workers!r}: {exc}") from None

    def _check_task(self) -> None:
        name = self.run.algorithm
        image = self.run.task != "linreg"
        if name in BASELINES:
            ok = image
        else:
            ok = get_algorithm(name).solver in ("any", "stochastic" if image else "exact")
        if not ok:
            valid = [
                n
                for n, s in REGISTRY.items()
                if s.solver in ("any", "stochastic" if image else "exact")
            ] + (list(BASELINES) if image else [])
            hint = (
                " (or, for your own data and model in a ClientApp, task = 'custom')"
                if self.run.task == "linreg"
                else ""
            )
            raise ValueError(
                f"algorithm {name!r} does not apply to task {self.run.task!r}; "
                f"choose one of {valid}{hint}"
            )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("run", "task_settings", "solver", "algorithms"):
            raise AttributeError(name)
        for section in (self.run, self.task_settings, self.solver, self.algo):
            if name in getattr(type(section), "__dataclass_fields__", {}):
                return getattr(section, name)
        raise AttributeError(f"RunConfig has no setting {name!r}")

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any], strict: bool = True) -> RunConfig:
        """Parse Flower's ``context.run_config`` (kebab-case keys). Unknown keys raise, or
        with ``strict=False`` are left alone (a user project's own keys); so are, with
        ``strict=False`` and ``task = "custom"`` (your data and model), our tasks' data
        keys (``model``, ``partition``, ``batch-size``, ...: :class:`TaskSettings`),
        which such a run does not read."""
        if not isinstance(run_config, Mapping):
            raise TypeError(
                "run_config must be a mapping of setting keys to values (Flower's "
                f"context.run_config), got {type(run_config).__name__}"
            )
        classes = sections()
        custom = not strict and str(run_config.get("task", "")) == CUSTOM_TASK
        _refuse_two_spellings(
            run_config, keys_of(*classes), keys_of(TaskSettings) if custom else ()
        )
        parts, unknown = split_keys(run_config, classes)
        if custom:
            data = classes.index(TaskSettings)
            unknown += [k for k in run_config if key_of(k) in parts[data]]
            parts[data] = {}
        if unknown and strict:
            known = ", ".join(keys_of(*classes))
            hints = "".join(f"; {m}" for m in near_misses(unknown, keys_of(*classes)))
            raise ValueError(f"unknown config key(s) {sorted(unknown)}{hints}; known keys: {known}")
        run, task, solver, *algos = (
            from_mapping(c, p) for c, p in zip(classes, parts, strict=True)
        )
        given = tuple(sorted({k for part in parts for k in part}))
        ignored = () if strict else tuple(sorted(unknown))
        return cls(run, task, solver, tuple(algos), ignored, given)

    def data_settings(self) -> dict[str, Any]:
        """The task and its data settings (none for "custom": those are your ClientApp's)."""
        data = {} if self.run.task == CUSTOM_TASK else as_record(self.task_settings)
        return {"task": self.run.task, **data}

    def run_settings(self) -> dict[str, Any]:
        """What shapes a run beyond the algorithm's settings, for a resume to compare with
        its checkpoint's: :meth:`data_settings` and the local solver's."""
        return {**self.data_settings(), **as_record(self.solver)}

    def record(self) -> dict[str, Any]:
        """The settings this run reads, flat kebab-case (:meth:`to_run_config` without
        :meth:`unread`): what a run's summary lists and its checkpoints keep, so that a
        resume can rebuild the run from them (:meth:`continuing`)."""
        unread = self.unread()
        return {k: v for k, v in self.to_run_config().items() if k not in unread}

    @classmethod
    def continuing(cls, record: Mapping[str, Any], given: Mapping[str, Any]) -> RunConfig:
        """The config of a resumed run: the ``given`` settings (the command line's, with
        ``resume``) over the ``record`` (:meth:`record`) that the checkpoint keeps of the
        run that wrote it. Keys the record lacks (settings added since) take their
        defaults, as that run did; keys no longer settings are left out; :attr:`given`
        holds the ``given`` keys only (the recorded ones were the interrupted run's)."""
        known = set(keys_of(*sections()))
        settings = {k: v for k, v in record.items() if k in known and k != "resume"}
        settings.update({key_of(k): v for k, v in given.items()})
        cfg = cls.from_run_config(settings)
        return dataclasses.replace(cfg, given=tuple(sorted(key_of(k) for k in given)))

    def unread(self) -> frozenset[str]:
        """The keys this run does not read: our tasks' data keys for task "custom" (your
        data), the other tasks' ones; for exact least squares the stochastic solver's
        (``optimizer``, ``lr``, ``local-steps``, ...) and ``device``, on other tasks the
        least-squares ones (``l2``, ``scale-features``, ...); those the algorithm
        does not read (``Worker.unused_keys``: e.g. D-PSGD's optimizer and compressor);
        and those of the other algorithms' settings only (``rho`` for CHOCO-SGD)."""
        task = self.run.task
        if task == CUSTOM_TASK:
            unread = set(keys_of(TaskSettings))
        elif task == "linreg":
            unread = {*STOCHASTIC_ONLY, "device", *TaskSettings.IMAGE_ONLY}
        else:
            unread = set(TaskSettings.LINREG_ONLY)
        if task != "linreg":
            unread |= SolverSettings.LINREG_ONLY | getattr(self.algo, "LINREG_ONLY", frozenset())
        if self.run.algorithm not in BASELINES:
            unread |= get_algorithm(self.run.algorithm).unused_keys
        # the keys only the other algorithms' settings have (rho for CHOCO-SGD, ...)
        own = set(keys_of(type(self.algo)))
        for section in self.algorithms:
            unread |= set(keys_of(type(section))) - own
        return frozenset(unread)

    def unread_given(self) -> list[str]:
        """``"lr, levels: not read by d-psgd on task 'digits'; ignored"`` when the run
        config set keys of :meth:`unread` to other values than their defaults (a warning:
        they do nothing here)."""
        # a key given with its default (Flower passes every key the pyproject declares)
        # changes nothing: only one set to something else is worth a warning
        now = self.to_run_config()
        defaults = {key_of(f.name): f.default for _, f in setting_fields()}
        given = sorted(
            k for k in self.unread() if k in self.given and now.get(k) != defaults.get(k)
        )
        if not given:
            return []
        who = f"{self.run.algorithm} on task {self.run.task!r}"
        return [f"{', '.join(given)}: not read by {who}; ignored"]

    def near_misses(self) -> list[str]:
        """The ignored keys (:attr:`ignored`) that look like misspellings of ours:
        ``"'rhoo' is not a setting: did you mean 'rho'?"``, for the relay to warn about
        (a project's own keys, such as ``num-server-rounds``, are far from ours). With
        task "custom" our tasks' data keys are the project's, so a key that resembles one
        of them (``partitioner``, ``batch-sizes``) is the project's too: no hint."""
        known = keys_of(*sections())
        if self.run.task != CUSTOM_TASK:
            return near_misses(self.ignored, known)
        data = set(keys_of(TaskSettings))
        yours = [k for k in self.ignored if key_of(str(k)) not in data]
        return near_misses(yours, [k for k in known if k not in data])

    @classmethod
    def of(cls, **settings: Any) -> RunConfig:
        """From snake- or kebab-case keyword settings (``RunConfig.of(rho=3, bits=4)``)."""
        return cls.from_run_config(settings)

    def to_run_config(self) -> dict[str, Any]:
        """The flat kebab-case mapping of every setting (all algorithms' sections too)."""
        out = {**as_record(self.run), **as_record(self.task_settings), **as_record(self.solver)}
        for section in self.algorithms:
            out.update(as_record(section))
        return out

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some settings changed (snake- or kebab-case keys); the keys the
        run config gave (:attr:`given`) are this one's and the changed ones, the ignored
        keys this one's."""
        new = self.from_run_config(
            {**self.to_run_config(), **{key_of(k): v for k, v in changes.items()}}
        )
        given = tuple(sorted({*self.given, *(key_of(k) for k in changes)}))
        return dataclasses.replace(new, given=given, ignored=self.ignored)

    # ------------------------------------------------------------------ derived
    @cached_property
    def graph(self) -> Graph:
        """The communication graph (workers placed by partition id); built once."""
        r = self.run
        return make_topology(r.topology, r.num_workers, r.seed, r.topology_param, r.topology_edges)

    def mixing_weights(self) -> str | np.ndarray:
        """The mixing setting for the engine: a kind name, or the user's matrix."""
        if self.run.mixing != "matrix":
            return self.run.mixing
        if not self.run.mixing_matrix:
            raise ValueError("mixing = 'matrix' needs mixing-matrix (rows separated by ';')")
        from .topology import check_mixing_matrix

        return check_mixing_matrix(self.graph, parse_matrix(self.run.mixing_matrix))

    def removals(self) -> dict[int, int]:
        """Planned departures, worker -> iteration."""
        return self.run.removals()

    def failure(self) -> tuple[int, int] | None:
        """Injected failure (worker, iteration), or None."""
        return self.run.failure()

    @property
    def failure_mode(self) -> str:
        """How the injected failure shows: ``"error"`` or ``"garbage"`` payloads."""
        return self.run.failure_mode()


def setting_fields() -> list[tuple[type, Any]]:
    """(owner, field) of every setting, each key once (a shared key under the class that
    declares it, listed after the sections), for generated command lines and docs."""
    order = sections()
    out: dict[str, tuple[type, Any]] = {}
    for cls in order:
        for f in fields(cls):
            out.setdefault(f.name, (declaring_class(cls, f.name), f))
    rank = {cls: i for i, cls in enumerate(order)}
    return sorted(out.values(), key=lambda pair: rank.get(pair[0], len(order)))
