"""Linear-regression task: which rows this SuperNode holds."""

from __future__ import annotations

import numpy as np
from flwr.app import Context

from flower_qgadmm.config import ExperimentConfig
from flower_qgadmm.data import load_dataset
from flower_qgadmm.flower.client import partition_of


def load_partition(context: Context) -> tuple[np.ndarray, np.ndarray]:
    """This node's (X, y): the synthetic problem or ``data-csv``, split by partition id."""
    cfg = ExperimentConfig.from_run_config(context.run_config)
    pid, num = partition_of(context)
    if num != cfg.num_workers:
        raise ValueError(f"num-partitions={num} but num-workers={cfg.num_workers}")
    datasets = load_dataset(
        cfg.num_workers,
        cfg.samples_per_worker,
        cfg.dim,
        cfg.noise,
        cfg.seed,
        cfg.data_csv,
        cfg.data_target,
    )
    return datasets[pid]
