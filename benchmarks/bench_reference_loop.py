"""The reference runner against a plain numpy loop of the same algorithm.

GADMM and 4-bit Q-GADMM on the GADMM paper's set-up (24 workers on a chain, 50 samples x
50 features each, synthetic and seeded), 1,000 iterations, rho = 20: the reference runner
(``run_reference``, everything it does: set-up, optimum, history rows with F, gap and
disagreement every iteration, models pulled every 10) against a plain loop written here
from the papers (cached inverses, the objective F every iteration, the stochastic
quantizer with the same per-(worker, iteration) RNG). Timings interleaved, median of 3
(wall clock; the note adds the ratio of CPU-time medians, steadier on a loaded machine).
Target (issue "Scale and speed", point 1): the runner within 2x the plain loop.
``--quick``: 100 iterations, one repeat.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from flower_qgadmm.config import RunConfig
from flower_qgadmm.data import experiment_datasets
from flower_qgadmm.reference import least_squares_solvers, run_from_config

TITLE = "Reference runner vs a plain numpy loop"
SETUP = {"num-workers": 24, "samples-per-worker": 50, "dim": 50, "rho": 20.0}


def plain_loop(datasets, rho: float, iterations: int, bits: int | None, seed: int = 0):
    """(Q-)GADMM on a chain in plain numpy; returns the objective of every iteration."""
    n_workers, d = len(datasets), datasets[0][0].shape[1]
    b = [X.T @ y for X, y in datasets]
    degree = [1 if n in (0, n_workers - 1) else 2 for n in range(n_workers)]
    inverse = [
        np.linalg.inv(X.T @ X + rho * degree[n] * np.eye(d)) for n, (X, _) in enumerate(datasets)
    ]
    theta, hat, lam = (
        np.zeros((n_workers, d)),
        np.zeros((n_workers, d)),
        np.zeros((n_workers - 1, d)),
    )
    objective = np.empty(iterations)
    for k in range(1, iterations + 1):
        for first in (0, 1):
            for n in range(first, n_workers, 2):
                rhs = b[n].copy()
                if n > 0:
                    rhs += rho * hat[n - 1] + lam[n - 1]
                if n < n_workers - 1:
                    rhs += rho * hat[n + 1] - lam[n]
                theta[n] = inverse[n] @ rhs
            for n in range(first, n_workers, 2):
                v = theta[n] - hat[n]
                if bits is None:
                    hat[n] += v.astype(np.float32)
                    continue
                r = float(np.max(np.abs(v)))
                if r > 0:
                    delta = 2 * r / (2**bits - 1)
                    c = (v + r) / delta
                    q = np.floor(c) + (np.random.default_rng([seed, n, k]).random(d) < c % 1)
                    hat[n] += delta * q - r
        lam += rho * (hat[:-1] - hat[1:])
        objective[k - 1] = sum(
            0.5 * np.sum((X @ t - y) ** 2) for t, (X, y) in zip(theta, datasets, strict=True)
        )
    return objective


def run(quick: bool = False) -> list[dict]:
    iterations, repeats = (100, 1) if quick else (1000, 3)
    rows = []
    for algorithm, bits in (("gadmm", None), ("q-gadmm", 4)):
        extra = {} if bits is None else {"bits": bits}
        cfg = RunConfig.from_run_config(
            {**SETTINGS_OF(algorithm), "num-iterations": iterations, **extra}
        )
        datasets = experiment_datasets(cfg)
        ours, plain, ours_cpu, plain_cpu = [], [], [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            run_from_config(cfg, least_squares_solvers(datasets))
            ours.append(time.perf_counter() - t0)
            ours_cpu.append(time.process_time() - c0)
            t0, c0 = time.perf_counter(), time.process_time()
            plain_loop(datasets, cfg.algo.rho, iterations, bits, cfg.seed)
            plain.append(time.perf_counter() - t0)
            plain_cpu.append(time.process_time() - c0)
        ratio = statistics.median(ours) / statistics.median(plain)
        cpu_ratio = statistics.median(ours_cpu) / statistics.median(plain_cpu)
        rows.append(
            {
                "name": f"{algorithm}: reference runner / plain loop",
                "measured": round(ratio, 2),
                "target": 2.0,
                "ok": ratio <= 2.0,
                "note": f"{statistics.median(ours):.3f} s vs {statistics.median(plain):.3f} s "
                f"(CPU time: {cpu_ratio:.2f}x)",
            }
        )
    return rows


def SETTINGS_OF(algorithm: str) -> dict:  # noqa: N802 - a table, read as a constant
    return {**SETUP, "algorithm": algorithm}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run("--quick" in sys.argv), indent=1))
