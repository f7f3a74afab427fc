"""Command line for the reference runner: ``python -m flower_qgadmm.simulate``.

Takes the same settings as the Flower app's ``[tool.flwr.app.config]`` as options
(``--rho 20 --bits 2 --adaptive-bits``), plus short aliases (``--workers``,
``--iterations``, ``--csv``, ``--target``), and writes a JSON Lines history and a plot.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from .compression import PayloadError
from .config import ExperimentConfig, from_mapping
from .data import experiment_datasets
from .history import format_summary, new_run_dir, plot_histories, write_history
from .reference import least_squares_solvers, run_reference

ALIASES = {
    "num_workers": "--workers",
    "num_iterations": "--iterations",
    "data_csv": "--csv",
    "data_target": "--target",
}
FLOWER_ONLY = {"results_dir", "discovery_timeout", "phase_timeout", "on_failure", "inject_failure"}


def build_parser() -> argparse.ArgumentParser:
    """Options generated from :class:`ExperimentConfig` so defaults live in one place."""
    parser = argparse.ArgumentParser(
        prog="python -m flower_qgadmm.simulate",
        description="Run GADMM / Q-GADMM linear regression in one process (no Flower).",
    )
    for f in fields(ExperimentConfig):
        if f.name in FLOWER_ONLY:
            continue
        names = ["--" + f.name.replace("_", "-")]
        if f.name in ALIASES:
            names.insert(0, ALIASES[f.name])
        default = f.default if f.default is not MISSING else None
        if f.type == "bool":
            parser.add_argument(
                *names, dest=f.name, action=argparse.BooleanOptionalAction, default=default
            )
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            parser.add_argument(
                *names, dest=f.name, type=kind, default=default, help=f"(default: {default})"
            )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="history file (JSON Lines); default: results/<time>-<algorithm>/history.jsonl",
    )
    parser.add_argument("--plot", type=Path, default=None, help="PNG (default: beside --out)")
    parser.add_argument("--log-every", type=int, default=25, help="progress line every N")
    parser.add_argument("--tolerance", type=float, default=1e-6, help="for the summary line")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = {
        f.name: getattr(args, f.name) for f in fields(ExperimentConfig) if f.name not in FLOWER_ONLY
    }
    try:
        cfg = from_mapping(ExperimentConfig, settings)
        if cfg.task != "linreg":
            raise ValueError(
                "this command runs linear regression; for image tasks use "
                "simulations/image_experiment.py"
            )
        datasets = experiment_datasets(cfg)
        out = args.out or new_run_dir("results", f"reference-{cfg.algorithm}") / "history.jsonl"

        def progress(row: dict) -> None:
            k = row["iteration"]
            if k == 1 or k % args.log_every == 0 or k == cfg.num_iterations:
                print(
                    f"[iteration {k}/{cfg.num_iterations}] gap={row['objective_gap']:.3e} "
                    f"consensus={row['consensus_error']:.3e} bits={row['bits']}",
                    flush=True,
                )

        rows = run_reference(
            cfg.gadmm,
            least_squares_solvers(datasets, cfg.l2),
            cfg.num_iterations,
            graph=cfg.graph(),
            on_row=progress,
            failures=cfg.removals(),
        ).history
    except (ValueError, FileNotFoundError, PayloadError, FloatingPointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_history(out, rows)
    png = plot_histories({cfg.algorithm: rows}, args.plot or out.with_suffix(".png"))
    print(format_summary(cfg.algorithm, rows, args.tolerance))
    print(f"history: {out}\nplot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
