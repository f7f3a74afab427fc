"""Hashes of 33 reference runs, to show that a change leaves every number as it was.

Run before and after a change that must not move any number (a speed-up, a refactor) and
compare the two outputs::

    python simulations/history_hashes.py > before.txt   # on the old commit
    python simulations/history_hashes.py > after.txt    # on the new one
    diff before.txt after.txt                            # nothing: identical histories

Each line is a SHA-256 prefix of one run's history rows (every key and value), its
workers' final models (their float64 bytes) and its ``final`` dict, then the run's
settings. The runs: 4 graphs (chain, ring, 2-row grid, random bipartite) x 8 algorithm
settings (GADMM, 3-bit Q-GADMM, adaptive Q-GADMM, censored GADMM and Q-GADMM, D-PSGD,
CHOCO-SGD, Malcom-PSGD) on seeded least squares (8 workers, d = 10, 20 samples each),
plus a Q-GADMM run whose worker 3 leaves a third of the way (iteration 10 of 30; the graph
repaired). Hashes depend on numpy's and the BLAS's floating point: compare runs on one
machine and environment.
"""

from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np

from flower_qgadmm.config import RunConfig
from flower_qgadmm.data import experiment_datasets
from flower_qgadmm.reference import least_squares_solvers, run_from_config
from flower_qgadmm.settings import positive_int

BASE = {"num-workers": 8, "dim": 10, "samples-per-worker": 20}
GRAPHS = (
    {"topology": "chain"},
    {"topology": "ring"},
    {"topology": "grid", "topology-param": 2},
    {"topology": "bipartite", "topology-param": 0.5},
)
ALGORITHMS = (
    {"algorithm": "gadmm"},
    {"algorithm": "q-gadmm", "bits": 3},
    {"algorithm": "q-gadmm", "adaptive-bits": True},
    {"algorithm": "gadmm", "censoring": True},
    {"algorithm": "q-gadmm", "censoring": True},
    {"algorithm": "d-psgd"},
    {"algorithm": "choco-sgd"},
    {"algorithm": "malcom-psgd"},
)


def runs(iterations: int) -> list[dict]:
    """The run configs (kebab-case keys), the repair run last."""
    repair = {"algorithm": "q-gadmm", "remove-workers": f"3@{max(1, iterations // 3)}"}
    settings = [{**BASE, **g, **a} for g in GRAPHS for a in ALGORITHMS] + [{**BASE, **repair}]
    return [{**s, "num-iterations": iterations} for s in settings]


def run_hash(run_config: dict) -> str:
    """The hash of one reference run (history, final models, ``final``)."""
    cfg = RunConfig.from_run_config(run_config)
    result = run_from_config(cfg, least_squares_solvers(experiment_datasets(cfg)))
    digest = hashlib.sha256()
    digest.update(json.dumps(result.history, sort_keys=True, default=repr).encode())
    digest.update(np.ascontiguousarray(result.models, dtype=np.float64).tobytes())
    digest.update(json.dumps(result.final, sort_keys=True, default=repr).encode())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # first paragraph
    parser.add_argument("--iterations", type=positive_int, default=30)
    args = parser.parse_args()
    for run_config in runs(args.iterations):
        print(run_hash(run_config), json.dumps(run_config, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
