"""What checkpoints cost the reference runner: the same run with and without them.

Runs ``python -m flower_qgadmm.simulate`` (Q-GADMM on a chain, the GADMM paper's 50
samples x 50 features per worker) with ``--checkpoint-every 0`` and with ``--checkpoint-every
K``, interleaved, and prints the wall time of each and the ratio. ``--before DIR`` runs the
same commands with another checkout of this repository first on ``PYTHONPATH`` (e.g.
``git worktree add /tmp/old <commit>``), interleaved with this one: a before / after of a
change to the checkpoints. Every run writes into its own temporary folder, deleted after.

    python simulations/bench_checkpoint.py                      # 1,000 workers, 100 its
    python simulations/bench_checkpoint.py --workers 10000 --dim 20 --iterations 20
    python simulations/bench_checkpoint.py --before /tmp/old --repeats 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed_run(code: Path, args: argparse.Namespace, every: int) -> tuple[float, int, float]:
    """Seconds of one CLI run with ``code`` first on the path, and the checkpoint files
    it left (the two latest checkpoints are kept) and their MB (those of the relay alone:
    ``relay-*``, the set-up part included)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable, "-m", "flower_qgadmm.simulate", "--algorithm", "q-gadmm",
        "--workers", str(args.workers), "--samples-per-worker", str(args.samples),
        "--dim", str(args.dim), "--iterations", str(args.iterations),
        "--checkpoint-every", str(every), "--log-every", str(10 * args.iterations),
        "--out", str(folder / "h.jsonl"), "--plot", str(folder / "h.png"),
    ]  # fmt: skip
    try:
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=folder)
        took = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        files = sum(1 for _ in (folder / "h-checkpoint").rglob("*.npz"))
        relay = sum(p.stat().st_size for p in (folder / "h-checkpoint").glob("relay-*"))
        return took, files, relay / 1e6
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=50, help="samples per worker")
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--every", type=int, default=10, help="checkpoint every K iterations")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--before", type=Path, help="another checkout, run interleaved")
    args = parser.parse_args()
    versions = {"this": ROOT} if args.before is None else {"before": args.before, "this": ROOT}
    times: dict[tuple[str, int], list[float]] = {}
    files: dict[tuple[str, int], tuple[int, float]] = {}
    for _ in range(args.repeats):
        for name, code in versions.items():
            for every in (0, args.every):
                took, count, relay = timed_run(code, args, every)
                times.setdefault((name, every), []).append(took)
                files[name, every] = count, relay
    print(
        f"{args.workers} workers, {args.samples} x {args.dim} each, {args.iterations} "
        f"iterations, Q-GADMM; medians of {args.repeats} interleaved runs (load "
        f"{os.getloadavg()[0]:.2f} at the end)"
    )
    print(
        f"{'version':>8} {'no checkpoint':>14} {f'every {args.every}':>10} {'ratio':>6} "
        "files  relay MB (two checkpoints kept)"
    )
    for name in versions:
        plain = statistics.median(times[name, 0])
        saving = statistics.median(times[name, args.every])
        print(
            f"{name:>8} {plain:13.1f}s {saving:9.1f}s {saving / plain:6.2f} "
            f"{files[name, args.every][0]:5d}  {files[name, args.every][1]:.1f}"
        )


if __name__ == "__main__":
    main()
