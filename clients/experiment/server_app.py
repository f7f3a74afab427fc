"""ServerApp: run the configured task and algorithm; write history.jsonl and a plot."""

from __future__ import annotations

from logging import ERROR, INFO
from pathlib import Path

import numpy as np
from flwr.app import Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from flower_qgadmm.config import RunConfig
from flower_qgadmm.flower import RelayStrategy
from flower_qgadmm.history import format_summary, new_run_dir, plot_histories, write_history

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the experiment described by the run config."""
    try:
        cfg = RunConfig.from_run_config(context.run_config)
    except ValueError as exc:
        log(ERROR, "Invalid run config: %s", exc)
        raise
    run_dir = new_run_dir(Path(cfg.results_dir).expanduser().resolve(), f"flower-{cfg.algorithm}")
    log(INFO, "Results go to %s", run_dir)
    history: list[dict] = []
    strategy: RelayStrategy | None = None
    try:
        if cfg.algorithm == "fedavg":
            history = run_fedavg(grid, cfg)
        else:
            evaluate = None
            if cfg.task != "linreg":
                from flower_qgadmm.image_task import mean_model_evaluator

                evaluate = mean_model_evaluator(cfg)
            strategy = RelayStrategy.from_config(cfg, evaluate=evaluate)
            history = strategy.history
            strategy.start(grid, num_rounds=cfg.num_iterations, timeout=cfg.phase_timeout)
            history = strategy.history  # filled as rounds complete, kept on failure
    except Exception as exc:
        if strategy is not None:
            history = strategy.history
        log(ERROR, "Run stopped: %s (saving the %d rows so far)", exc, len(history))
        raise
    finally:
        if history:
            write_history(run_dir / "history.jsonl", history)
            plot_histories({cfg.algorithm: history}, run_dir / "history.png")
            log(INFO, "%s", format_summary(cfg.algorithm, history, 1e-6))
        if strategy is not None and strategy.last_models():  # latest model of every worker
            models = {f"worker-{p}": t for p, t in strategy.last_models().items()}
            np.savez(run_dir / "models.npz", **models)
        log(INFO, "Wrote %s", run_dir)


def run_fedavg(grid: Grid, cfg: RunConfig) -> list[dict]:
    """Flower's FedAvg on the image task, same model, data and local optimizer."""
    from flower_qgadmm.flower.fedavg import run_flower_fedavg
    from flower_qgadmm.image_task import image_solver, load_task_data, mean_model_evaluator

    data = load_task_data(cfg)
    theta0 = image_solver(cfg, 0, data).initial()
    return run_flower_fedavg(
        grid,
        cfg.num_workers,
        theta0,
        cfg.num_iterations,
        cfg.phase_timeout,
        cfg.solver,
        cfg.seed,
        cfg.algo,
        mean_model_evaluator(cfg, data),
    )
