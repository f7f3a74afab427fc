"""ServerApp: relay GADMM / Q-GADMM over the SuperNodes; write history.jsonl and a plot."""

from __future__ import annotations

from logging import ERROR, INFO
from pathlib import Path

from flwr.app import Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from flower_qgadmm.config import ExperimentConfig
from flower_qgadmm.flower import GadmmRelay
from flower_qgadmm.history import format_summary, new_run_dir, plot_histories, write_history

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the experiment described by the run config."""
    try:
        cfg = ExperimentConfig.from_run_config(context.run_config)
    except ValueError as exc:
        log(ERROR, "Invalid run config: %s", exc)
        raise
    run_dir = new_run_dir(Path(cfg.results_dir).expanduser().resolve(), f"flower-{cfg.algorithm}")
    log(INFO, "Results go to %s", run_dir)
    strategy = GadmmRelay(cfg.gadmm, cfg.num_workers, cfg.discovery_timeout)
    try:
        strategy.start(grid, num_rounds=cfg.num_iterations, timeout=cfg.phase_timeout)
    except Exception as exc:
        log(ERROR, "Run stopped: %s (saving the %d rows so far)", exc, len(strategy.history))
        raise
    finally:
        if strategy.history:
            write_history(run_dir / "history.jsonl", strategy.history)
            plot_histories({cfg.algorithm: strategy.history}, run_dir / "history.png")
            log(INFO, "%s", format_summary(cfg.algorithm, strategy.history, 1e-6))
        log(INFO, "Wrote %s", run_dir)
