"""Which data and local solver a SuperNode holds, for every task of the experiment."""

from __future__ import annotations

from functools import lru_cache

from flwr.app import Context

from flower_qgadmm.config import RunConfig, SolverSettings
from flower_qgadmm.data import experiment_datasets
from flower_qgadmm.flower.client import partition_of
from flower_qgadmm.solvers import LeastSquaresSolver, LocalSolver


@lru_cache(maxsize=4)
def _parse(items: frozenset) -> RunConfig:
    return RunConfig.from_run_config(dict(items))


def experiment_config(context: Context) -> RunConfig:
    """The run config (parsed and validated once per process and run), checked against
    this node's ``num-partitions``."""
    cfg = _parse(frozenset(context.run_config.items()))
    _, num = partition_of(context)
    if num != cfg.num_workers:
        raise ValueError(f"num-partitions={num} but num-workers={cfg.num_workers}")
    return cfg


# A simulation process serves many messages of one run: read each data set once per
# process (keyed by the frozen config; the arrays are never modified).
_linreg_data = lru_cache(maxsize=2)(experiment_datasets)


@lru_cache(maxsize=2)
def _image_data(cfg: RunConfig):  # -> ImageData; torch is imported only here
    from flower_qgadmm.image_task import load_task_data

    return load_task_data(cfg)


def solver_fn(context: Context, settings: SolverSettings, seed: int) -> LocalSolver:
    """This node's local solver: exact least squares or a TorchSolver on its image shard."""
    cfg = experiment_config(context)
    pid = partition_of(context)[0]
    if cfg.task == "linreg":
        X, y = _linreg_data(cfg)[pid]
        return LeastSquaresSolver(X, y, settings.l2)
    from flower_qgadmm.image_task import image_solver

    return image_solver(cfg, pid, _image_data(cfg), settings, seed)
