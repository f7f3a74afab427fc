"""What crosses Flower: Q-SGADMM 4-bit on a chain vs Flower's FedAvg, same model, rounds.

Run: ``python simulations/traffic.py [--rounds 100] [--evaluate-every 10] [--workers 5]``.

Two projects: the example user project ``clients/torch_example`` (its CNN, its
Flower Datasets loaders) and this repository's digits experiment (``task='digits'``,
the MLP). Both run through the in-process test Grid: every message is a real Flower
``Message`` and its bytes are counted as Flower's ``message_size_mod`` counts them
(:class:`~flower_qgadmm.flower.metering.MeteredGrid`), the same counters a real
``flwr run`` logs. Prints, per project: all bytes that crossed Flower (both directions,
all message kinds, model pulls every ``--evaluate-every`` rounds included), FedAvg's
bytes for the same rounds, their ratio (target <= 0.25), and for one round without
evaluation the training bytes over (payload up + relayed payload down) (target <= 1.15).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flower_qgadmm.config import RunConfig, SolverSettings
from flower_qgadmm.flower import RelayStrategy, run_flower_fedavg
from flower_qgadmm.flower.torch_app import torch_solver_fn
from flower_qgadmm.settings import positive_int
from flower_qgadmm.testing import FakeGrid

ROOT = Path(__file__).resolve().parents[1]


def probe_round(rounds: int, every: int) -> int:
    """The first round after the first that carries no evaluation (neither a multiple of
    ``every`` nor the last): the round whose training bytes are measured."""
    for k in range(2, rounds):
        if k % every:
            return k
    raise ValueError(
        f"no round without evaluation in {rounds} rounds with evaluate-every {every}: "
        "use --rounds >= 3 and --evaluate-every >= 2"
    )


def relay_traffic(app, cfg: RunConfig, rounds: int, every: int) -> dict:
    """Bytes of a relay run, and the training bytes of one round without evaluation
    (:func:`probe_round`) over its payload bytes."""
    probe = probe_round(rounds, every)
    grid = FakeGrid(app, cfg.num_workers, cfg.to_run_config())
    strategy = RelayStrategy.from_config(cfg, evaluate_every=every, results_dir=None)
    strategy.start(grid, num_rounds=rounds, timeout=600.0)
    rows = {r["iteration"]: r for r in strategy.history}
    before, row = rows[probe - 1], rows[probe]

    def delta(key: str) -> int:
        return row[key] - before[key]

    train = delta("flower_train_bytes_down") + delta("flower_train_bytes_up")
    payload = delta("payload_bytes") + delta("relayed_bytes")
    last = rows[rounds]
    return {
        "total": last["flower_bytes_down"] + last["flower_bytes_up"],
        "train": last["flower_train_bytes_down"] + last["flower_train_bytes_up"],
        "eval": last["flower_eval_bytes_down"] + last["flower_eval_bytes_up"],
        "control": last["flower_control_bytes_down"] + last["flower_control_bytes_up"],
        "payload": last["payload_bytes"],
        "relayed": last["relayed_bytes"],
        "round_overhead": train / payload,
        "accuracy": last.get("accuracy"),
    }


def fedavg_traffic(app, cfg: RunConfig, rounds: int, theta0) -> dict:
    """Bytes of Flower's FedAvg over the same nodes, model and rounds."""
    grid = FakeGrid(app, cfg.num_workers, cfg.to_run_config())
    rows = run_flower_fedavg(
        grid, cfg.num_workers, theta0, rounds, 600.0, cfg.solver, cfg.seed, cfg.algo
    )
    last = rows[-1]
    return {"total": last["flower_bytes_down"] + last["flower_bytes_up"]}


def torch_example(workers: int):
    """The example project's ClientApp, its run config and its model's initial vector."""
    sys.path.insert(0, str(ROOT / "clients" / "torch_example"))
    from torch_example.client_app import app
    from torch_example.task import Net, test_loader, train_loader

    cfg = RunConfig.of(
        task="digits", algorithm="q-sgadmm", bits=4, rho=1.0, dual_step=0.01, num_workers=workers
    )
    grid = FakeGrid(app, workers, {})
    context = next(iter(grid.contexts.values()))
    solver = torch_solver_fn(Net, train_loader, test_loader)(context, SolverSettings(), cfg.seed)
    return app, cfg, solver.initial()


def digits_experiment(workers: int):
    """This repository's experiment app on the digits task (MLP)."""
    from clients.experiment.client_app import app
    from flower_qgadmm.image_task import image_solver, load_task_data

    cfg = RunConfig.of(
        task="digits", algorithm="q-sgadmm", bits=4, rho=1.0, dual_step=0.01, num_workers=workers
    )
    return app, cfg, image_solver(cfg, 0, load_task_data(cfg)).initial()


def compare(project: str, workers: int, rounds: int, every: int) -> dict:
    """Relay vs FedAvg traffic for one project."""
    app, cfg, theta0 = (torch_example if project == "torch_example" else digits_experiment)(workers)
    ours = relay_traffic(app, cfg, rounds, every)
    fedavg = fedavg_traffic(app, cfg.replace(algorithm="fedavg"), rounds, theta0)
    return {
        **ours,
        "dim": theta0.size,
        "fedavg": fedavg["total"],
        "ratio": ours["total"] / fedavg["total"],
    }


RATIO_TARGET = 0.25  # all Flower bytes / FedAvg's
OVERHEAD_TARGET = 1.15  # a training round's bytes / (payload up + relayed payload down)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # first paragraph
    parser.add_argument("--rounds", type=positive_int, default=100)
    parser.add_argument("--evaluate-every", type=positive_int, default=10)
    parser.add_argument("--workers", type=positive_int, default=5)
    args = parser.parse_args()
    try:
        probe_round(args.rounds, args.evaluate_every)
    except ValueError as exc:
        parser.error(str(exc))
    sys.path.insert(0, str(ROOT))
    print(
        "| project | d | Flower bytes (all) | train | eval | set-up | FedAvg | ratio | "
        "round overhead |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")  # targets marked ok / missed
    for project in ("torch_example", "digits"):
        r = compare(project, args.workers, args.rounds, args.evaluate_every)
        ratio = f"{r['ratio']:.3f} ({'ok' if r['ratio'] <= RATIO_TARGET else 'missed'})"
        overhead = r["round_overhead"]
        overhead = f"{overhead:.3f} ({'ok' if overhead <= OVERHEAD_TARGET else 'missed'})"
        print(
            f"| {project} | {r['dim']:,} | {r['total']:,} | {r['train']:,} | {r['eval']:,} | "
            f"{r['control']:,} | {r['fedavg']:,} | {ratio} | {overhead} |"
        )


if __name__ == "__main__":
    main()
