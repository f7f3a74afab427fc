"""Speed of the reference runner on the default problem (10 workers, d = 20, 500
iterations, chain), per algorithm, best of 3 runs in this process.

Run: ``python simulations/bench_reference.py [--repeats 3]``. Prints seconds per run and
microseconds per worker-step; the set-up (data, solvers, optimum) is included, as a
user's ``run_reference`` call pays it.
"""

from __future__ import annotations

import argparse
import time

from flower_qgadmm.config import RunConfig
from flower_qgadmm.data import experiment_datasets
from flower_qgadmm.reference import least_squares_solvers, run_from_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # first paragraph
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for algorithm in ("gadmm", "q-gadmm", "d-psgd"):
        cfg = RunConfig.of(algorithm=algorithm)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            rows = run_from_config(cfg, least_squares_solvers(experiment_datasets(cfg))).history
            times.append(time.perf_counter() - t0)
        steps = cfg.num_workers * cfg.num_iterations
        print(
            f"{algorithm:8s} best {min(times):.3f} s ({1e6 * min(times) / steps:.0f} us per "
            f"worker-step), runs {[round(t, 3) for t in times]}, final gap "
            f"{rows[-1]['objective_gap']:.3e}"
        )


if __name__ == "__main__":
    main()
