"""Command line of the reference runner: ``python -m flower_qgadmm.simulate``.

Takes the same settings as the Flower app's ``[tool.flwr.app.config]`` as options
(``--algorithm d-psgd --topology ring --rho 20 --adaptive-bits``), generated from the
settings classes (one description and default each), plus short aliases
(``--workers``, ``--iterations``, ``--csv``, ``--target``), and writes a JSON Lines
history and a plot.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .compression import PayloadError
from .config import BASELINES, FedAvgSettings, RunConfig, setting_fields
from .history import format_summary, new_run_dir, plot_histories, progress_line, write_history
from .reference import least_squares_solvers, make_engine
from .rounds import WorkerFailure

ALIASES = {
    "num_workers": "--workers",
    "num_iterations": "--iterations",
    "data_csv": "--csv",
    "data_target": "--target",
}
FLOWER_ONLY = {"results_dir", "discovery_timeout", "phase_timeout", "on_failure", "inject_failure"}


def _fields():
    return [
        (cls, f)
        for cls, f in setting_fields()
        if f.name not in FLOWER_ONLY and cls is not FedAvgSettings
    ]


def build_parser() -> argparse.ArgumentParser:
    """Options generated from the settings classes, so defaults live in one place."""
    parser = argparse.ArgumentParser(
        prog="python -m flower_qgadmm.simulate",
        description="Run a decentralized algorithm with all workers in one process (no Flower).",
    )
    groups: dict[type, argparse._ArgumentGroup] = {}
    for cls, f in _fields():
        group = groups.setdefault(cls, parser.add_argument_group(cls.__doc__.splitlines()[0]))
        names = ["--" + f.name.replace("_", "-")]
        if f.name in ALIASES:
            names.insert(0, ALIASES[f.name])
        text = f"{f.metadata.get('help', '')} (default: {f.default})"
        if f.type in (bool, "bool"):
            group.add_argument(
                *names, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            group.add_argument(*names, dest=f.name, type=kind, default=None, help=text)
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


def build_solvers(cfg: RunConfig):
    """(solvers, evaluate) of the task: exact least squares, or torch on an image task."""
    if cfg.task == "linreg":
        from .data import experiment_datasets

        return least_squares_solvers(experiment_datasets(cfg), cfg.l2), None
    from .image_task import image_solver, load_task_data, mean_model_evaluator

    data = load_task_data(cfg)
    solvers = [image_solver(cfg, w, data) for w in range(cfg.num_workers)]
    return solvers, mean_model_evaluator(cfg, data)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    given = {f.name: getattr(args, f.name) for _, f in _fields()}
    rows: list[dict] = []
    try:
        cfg = RunConfig.from_run_config({k: v for k, v in given.items() if v is not None})
        if cfg.algorithm in BASELINES:
            raise ValueError(f"{cfg.algorithm} runs on Flower only (flwr run .)")
        solvers, evaluate = build_solvers(cfg)
        out = args.out or new_run_dir("results", f"reference-{cfg.algorithm}") / "history.jsonl"

        def progress(row: dict) -> None:
            k = row["iteration"]
            if k == 1 or k % args.log_every == 0 or k == cfg.num_iterations:
                print(f"[iteration {k}/{cfg.num_iterations}] {progress_line(row)}", flush=True)

        engine = make_engine(
            cfg.algorithm,
            solvers,
            cfg.graph,
            cfg.algo,
            cfg.seed,
            cfg.mixing_weights(),
            on_row=progress,
            evaluate=evaluate,
            removals=cfg.removals(),
        )
        rows = engine.history
        engine.run(cfg.num_iterations)
    except (ValueError, FileNotFoundError, PayloadError, FloatingPointError, WorkerFailure) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if rows:
            write_history(out, rows)
            print(f"history so far ({len(rows)} rows): {out}", file=sys.stderr)
        return 2
    write_history(out, rows)
    png = plot_histories({cfg.algorithm: rows}, args.plot or out.with_suffix(".png"))
    print(format_summary(cfg.algorithm, rows, args.tolerance))
    print(f"history: {out}\nplot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
