"""ServerApp: run the configured task and algorithm; the results folder gets the history
(row by row), a plot, a summary and the final model."""

from __future__ import annotations

from logging import ERROR, INFO, WARNING

from flwr.app import Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from flower_qgadmm.config import RunConfig
from flower_qgadmm.flower import RelayStrategy
from flower_qgadmm.history import RunRecorder, stopped_note

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the experiment described by the run config."""
    try:
        cfg = RunConfig.from_run_config(context.run_config)
    except ValueError as exc:
        log(ERROR, "Invalid run config: %s", exc)
        raise
    try:
        if cfg.algorithm == "fedavg":
            run_fedavg(grid, cfg)
        else:
            evaluate = None
            if cfg.task != "linreg":
                from flower_qgadmm.image_task import mean_model_evaluator

                evaluate = mean_model_evaluator(cfg)
            strategy = RelayStrategy.from_config(cfg, evaluate=evaluate)
            strategy.start(grid, num_rounds=cfg.num_iterations, timeout=cfg.phase_timeout)
    except Exception as exc:
        log(ERROR, "Run stopped: %s", exc)
        raise


def run_fedavg(grid: Grid, cfg: RunConfig) -> list[dict]:
    """Flower's FedAvg on the image task, same model, data and local optimizer."""
    from flower_qgadmm.flower.fedavg import run_flower_fedavg
    from flower_qgadmm.image_task import image_solver, load_task_data, mean_model_evaluator

    data = load_task_data(cfg)
    solver = image_solver(cfg, 0, data)  # the model's layout, for the saved model
    recorder = RunRecorder(cfg.results_dir, "flower-fedavg")
    log(INFO, "Results go to %s", recorder.path)
    evaluate, last = mean_model_evaluator(cfg, data), {}

    def evaluate_and_keep(theta):  # every round's global model: the last one is saved
        last["theta"] = theta
        return evaluate(theta)

    error: BaseException | None = None  # what stopped the run, for its summary
    try:
        return run_flower_fedavg(
            grid,
            cfg.num_workers,
            solver.initial(),
            cfg.num_iterations,
            cfg.phase_timeout,
            cfg.solver,
            cfg.seed,
            cfg.algo,
            evaluate_and_keep,
            on_row=recorder.add,
        )
    except BaseException as exc:
        error = exc
        raise
    finally:
        model = solver.to_arrays(last["theta"]) if "theta" in last else None
        settings = {"algorithm": "fedavg", **cfg.to_run_config()}
        note = "" if error is None else stopped_note(len(recorder.rows), cfg.num_iterations, error)
        line = recorder.close(settings, model, solver.framework, note=note)
        log(INFO if error is None else WARNING, "%s", line)
        log(INFO, "Wrote %s", recorder.path)
