"""Typed, validated settings. Defaults are written once, here.

Flower passes settings as a flat mapping of kebab-case keys (``context.run_config``);
:meth:`ExperimentConfig.from_run_config` maps ``adaptive-bits`` to ``adaptive_bits`` and
rejects unknown keys with a message listing the known ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from .compression.quantizers import MAX_LEVEL_BITS
from .topology import Graph, make_topology

ALGORITHMS = ("gadmm", "q-gadmm", "sgadmm", "q-sgadmm")
BASELINES = ("fedavg",)
TASKS = {
    "linreg": ("gadmm", "q-gadmm"),
    "digits": ("sgadmm", "q-sgadmm", "fedavg"),
    "mnist": ("sgadmm", "q-sgadmm", "fedavg"),
    "cifar10": ("sgadmm", "q-sgadmm", "fedavg"),
}
OPTIMIZERS = ("adam", "sgd")

T = TypeVar("T")


def _coerce(name: str, kind: Any, value: Any) -> Any:
    """Convert a run-config value to the field's type, or raise a ValueError naming it."""
    key = name.replace("_", "-")
    if kind in (bool, "bool"):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if kind in (int, "int"):
        if isinstance(value, bool) or not float(value).is_integer():
            raise ValueError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if kind in (float, "float"):
        if isinstance(value, bool):
            raise ValueError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number, got {value!r}") from None
    return str(value)


def from_mapping(cls: type[T], mapping: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> T:
    """Build dataclass ``cls`` from kebab- or snake-case keys; unknown keys raise ValueError."""
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    unknown = []
    for key, value in mapping.items():
        name = key.replace("-", "_")
        if name in known:
            kwargs[name] = _coerce(name, known[name].type, value)
        elif key not in ignore:
            unknown.append(key)
    if unknown:
        valid = ", ".join(sorted(n.replace("_", "-") for n in known))
        raise ValueError(f"unknown config key(s) {sorted(unknown)}; known keys: {valid}")
    return cls(**kwargs)


@dataclass(frozen=True)
class GadmmConfig:
    """Hyperparameters of GADMM / Q-GADMM (one worker's view; identical on every worker).

    Parameters
    ----------
    algorithm : str
        ``"gadmm"`` / ``"sgadmm"`` (float32 messages) or ``"q-gadmm"`` / ``"q-sgadmm"``
        (quantized); the ``s`` variants take stochastic local steps (default: "q-gadmm").
    rho : float
        ADMM penalty rho > 0 (default: 20.0).
    bits : int
        Bits per entry of Q-GADMM, 1..16; the initial width when adaptive (default: 2).
    adaptive_bits : bool
        Use the adaptive level rule Delta_k <= omega * Delta_{k-1} (default: False).
    omega : float
        Step-shrink factor of the adaptive rule, in (0, 1] (default: 1.0).
    bits_max : int
        Cap of the adaptive rule, 1..16 (default: 8).
    l2 : float
        Optional ridge term (l2/2)||theta||^2 in every local loss, >= 0 (default: 0.0).
    dual_step : float
        Dual step as a fraction of rho, lambda += dual_step * rho * (...) (default: 1.0,
        the papers' equations; 0.01 for the stochastic variants, as the authors' notebook).
    seed : int
        Seed of every worker's quantization and mini-batch RNG and of the shared initial
        model (default: 0).
    optimizer, lr, local_steps : str, float, int
        Local solver of the stochastic variants: ``"adam"`` or ``"sgd"``, its learning
        rate, and mini-batch steps per primal update (default: "adam", 1e-3, 5).
    censoring, censor_tau0, censor_xi : bool, float, float
        CQ-GGADMM censoring: skip a transmission whose decoded change has 2-norm below
        tau0 * xi^k at iteration k (default: False, 0.3, 0.9; tau0 is in model units and
        xi should be near the per-iteration decay of the changes: tune both per problem).
    """

    algorithm: str = "q-gadmm"
    rho: float = 20.0
    bits: int = 2
    adaptive_bits: bool = False
    omega: float = 1.0
    bits_max: int = 8
    l2: float = 0.0
    dual_step: float = 1.0
    seed: int = 0
    optimizer: str = "adam"
    lr: float = 1e-3
    local_steps: int = 5
    censoring: bool = False
    censor_tau0: float = 0.3
    censor_xi: float = 0.9

    def __post_init__(self) -> None:
        self._validate(check_algorithm=True)

    def _validate(self, check_algorithm: bool) -> None:
        """Range checks -> ValueError naming the run-config key."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.local_steps < 1:
            raise ValueError(f"local-steps must be >= 1, got {self.local_steps}")
        if check_algorithm and self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algorithm!r}; choose one of {ALGORITHMS}")
        if not self.rho > 0:
            raise ValueError(f"rho must be > 0, got {self.rho}")
        for key, value in (("bits", self.bits), ("bits-max", self.bits_max)):
            if not 1 <= value <= MAX_LEVEL_BITS:
                raise ValueError(f"{key} must be in 1..{MAX_LEVEL_BITS}, got {value}")
        if self.adaptive_bits and self.bits > self.bits_max:
            raise ValueError(f"bits ({self.bits}) must not exceed bits-max ({self.bits_max})")
        if not 0 < self.omega <= 1:
            raise ValueError(f"omega must be in (0, 1], got {self.omega}")
        if self.l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")
        if not self.dual_step > 0:
            raise ValueError(f"dual-step must be > 0, got {self.dual_step}")
        if not self.censor_tau0 > 0:
            raise ValueError(f"censor-tau0 must be > 0, got {self.censor_tau0}")
        if not 0 < self.censor_xi < 1:
            raise ValueError(f"censor-xi must be in (0, 1), got {self.censor_xi}")

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> GadmmConfig:
        """The GadmmConfig keys found in a Flower run config (kebab-case); other keys of
        the user's project are left alone, bad values raise ValueError naming the key."""
        names = {f.name for f in fields(cls)}
        mine = {k: v for k, v in run_config.items() if k.replace("-", "_") in names}
        return from_mapping(cls, mine)

    @property
    def quantized(self) -> bool:
        """True for the quantized variants."""
        return self.algorithm.startswith("q-")


@dataclass(frozen=True)
class ExperimentConfig(GadmmConfig):
    """Every setting of the experiments (``[tool.flwr.app.config]``).

    ``task`` picks the problem: ``"linreg"`` (GADMM / Q-GADMM, exact local solves),
    ``"digits"`` (scikit-learn's 8x8 digits, offline) or ``"mnist"`` (torchvision, from
    ``data_dir``) for SGADMM / Q-SGADMM and the FedAvg baseline, with ``batch_size`` and
    an ``"iid"`` or ``"dirichlet"`` (``dirichlet_alpha``) ``partition``.
    It extends :class:`GadmmConfig` (whose fields and defaults it inherits) with the run
    and data settings: ``topology`` (``chain``, ``ring``, ``grid``, ``geometric``,
    ``bipartite`` or ``edges`` with ``topology_edges = "0-1 1-2 ..."``) and its
    ``topology_param`` (grid rows, radio range in metres, edge probability),
    ``num_iterations`` (rounds), ``num_workers`` (must equal the number of SuperNodes),
    ``samples_per_worker``/``dim``/``noise`` of the seeded synthetic problem, or
    ``data_csv``/``data_target`` for a user's CSV, ``results_dir`` for outputs, the
    Flower timeouts in seconds, ``on_failure`` (``"repair"`` or ``"stop"``),
    ``remove_workers = "w@k ..."`` (worker w leaves before iteration k) and, for
    testing the repair, ``inject_failure = "w@k"`` (worker w fails from iteration k).
    """

    task: str = "linreg"
    topology: str = "chain"
    topology_param: float = 0.0
    topology_edges: str = ""
    batch_size: int = 32
    partition: str = "iid"
    dirichlet_alpha: float = 0.5
    data_dir: str = ""
    num_iterations: int = 500
    num_workers: int = 10
    samples_per_worker: int = 50
    dim: int = 20
    noise: float = 0.1
    data_csv: str = ""
    data_target: str = ""
    results_dir: str = "results"
    discovery_timeout: float = 120.0
    phase_timeout: float = 300.0
    on_failure: str = "repair"
    remove_workers: str = ""
    inject_failure: str = ""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {sorted(TASKS)}")
        if self.algorithm not in TASKS[self.task]:
            raise ValueError(
                f"algorithm {self.algorithm!r} does not apply to task {self.task!r}; "
                f"choose one of {TASKS[self.task]}"
            )
        self._validate(check_algorithm=self.algorithm not in BASELINES)
        if self.partition not in ("iid", "dirichlet"):
            raise ValueError(f"partition must be 'iid' or 'dirichlet', got {self.partition!r}")
        if not self.dirichlet_alpha > 0:
            raise ValueError(f"dirichlet-alpha must be > 0, got {self.dirichlet_alpha}")
        if self.batch_size < 1:
            raise ValueError(f"batch-size must be >= 1, got {self.batch_size}")
        for key in ("num_iterations", "samples_per_worker", "dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}")
        if self.num_workers < 2:
            raise ValueError(f"num-workers must be >= 2 (a chain), got {self.num_workers}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        if self.data_csv and not self.data_target:
            raise ValueError("data-csv is set but data-target (the target column) is empty")
        for key in ("discovery_timeout", "phase_timeout"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key.replace('_', '-')} must be > 0 seconds")
        if self.on_failure not in ("repair", "stop"):
            raise ValueError(f"on-failure must be 'repair' or 'stop', got {self.on_failure!r}")
        self.failure()  # validates inject-failure
        self.removals()  # validates remove-workers
        self.graph()  # validates the topology settings

    def removals(self) -> dict[int, int]:
        """``remove-workers = "3@20 5@40"``: worker -> iteration at which it leaves."""
        out = {}
        for token in self.remove_workers.replace(",", " ").split():
            worker, sep, at = token.partition("@")
            if not (sep and worker.isdigit() and at.isdigit()) or int(at) < 1:
                raise ValueError(
                    f"remove-workers entries look like 'worker@iteration', got {token!r}"
                )
            if int(worker) >= self.num_workers:
                raise ValueError(
                    f"remove-workers names worker {worker}; there are {self.num_workers}"
                )
            out[int(worker)] = int(at)
        return out

    def failure(self) -> tuple[int, int] | None:
        """``inject-failure = "w@k"``: (worker, iteration) of a simulated dropout, or None."""
        if not self.inject_failure:
            return None
        worker, sep, at = self.inject_failure.partition("@")
        if not (sep and worker.strip().isdigit() and at.strip().isdigit()):
            raise ValueError(
                f"inject-failure must look like 'worker@iteration', got {self.inject_failure!r}"
            )
        return int(worker), int(at)

    def graph(self) -> Graph:
        """The communication graph (workers placed by partition id)."""
        return make_topology(
            self.topology, self.num_workers, self.seed, self.topology_param, self.topology_edges
        )

    @property
    def gadmm(self) -> GadmmConfig:
        """The algorithm part."""
        names = {f.name for f in fields(GadmmConfig)}
        return GadmmConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> ExperimentConfig:
        """Parse Flower's ``context.run_config`` (kebab-case keys); unknown keys raise."""
        return from_mapping(cls, run_config)
