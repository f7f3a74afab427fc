"""Which data and local solver a SuperNode holds, for every task of the experiment."""

from __future__ import annotations

import numpy as np
from flwr.app import Context

from flower_qgadmm.config import ExperimentConfig, GadmmConfig
from flower_qgadmm.data import experiment_datasets
from flower_qgadmm.flower.client import partition_of
from flower_qgadmm.image_task import image_solver
from flower_qgadmm.solvers import LeastSquaresSolver, LocalSolver


def experiment_config(context: Context) -> ExperimentConfig:
    """The run config, checked against this node's ``num-partitions``."""
    cfg = ExperimentConfig.from_run_config(context.run_config)
    _, num = partition_of(context)
    if num != cfg.num_workers:
        raise ValueError(f"num-partitions={num} but num-workers={cfg.num_workers}")
    return cfg


def load_partition(context: Context) -> tuple[np.ndarray, np.ndarray]:
    """Linear regression: this node's (X, y), synthetic or ``data-csv``, by partition id."""
    cfg = experiment_config(context)
    datasets = experiment_datasets(cfg)
    return datasets[partition_of(context)[0]]


def solver_fn(context: Context, gcfg: GadmmConfig) -> LocalSolver:
    """This node's local solver: exact least squares or a TorchSolver on its image shard."""
    cfg = experiment_config(context)
    if cfg.task == "linreg":
        X, y = load_partition(context)
        return LeastSquaresSolver(X, y, gcfg.l2)
    return image_solver(cfg, gcfg, partition_of(context)[0])
