"""SGADMM vs Q-SGADMM vs FedAvg on an image task (default: offline digits, 10 workers, IID).

Run: ``python simulations/image_experiment.py [--iterations 150] [--partition dirichlet]``.
D-PSGD (one mini-batch gradient per round, default step) runs on the same chain. Uses
the reference runner, and Flower's own FedAvg in this process (the Flower path gives
identical numbers, see the tests; to run a variant on Flower instead:
``flwr run . --stream --federation-config num-supernodes=10 --run-config
"task='digits' algorithm='q-sgadmm' bits=4 rho=1.0 dual-step=0.01 num-iterations=150"``).

Writes ``results/<time>-image-<task>/``: one history per variant, ``accuracy.png``
(accuracy vs round and vs cumulative measured bits) and ``summary.md``: final accuracy,
rounds and bits to reach the target (SGADMM's final worker accuracy minus 1 point).
"""

from __future__ import annotations

import argparse
import time

import torch

from flower_qgadmm.compression.quantizers import check_level_bits
from flower_qgadmm.config import RunConfig
from flower_qgadmm.flower import add_fedavg_handlers, run_flower_fedavg
from flower_qgadmm.flower.client import partition_of
from flower_qgadmm.history import metric_of, new_run_dir, plot_histories, write_history
from flower_qgadmm.image_task import image_solver, load_task_data, mean_model_evaluator
from flower_qgadmm.reference import run_reference
from flower_qgadmm.settings import positive_int
from flower_qgadmm.testing import FakeGrid


def variants(bits: list[int]) -> dict[str, dict]:
    out = {"sgadmm": {"algorithm": "sgadmm"}}
    out.update({f"q-sgadmm {b}-bit": {"algorithm": "q-sgadmm", "bits": b} for b in bits})
    out["d-psgd"] = {"algorithm": "d-psgd"}
    out["fedavg"] = {"algorithm": "fedavg"}
    return out


def fedavg_in_process(cfg: RunConfig, data, evaluate) -> list[dict]:
    """Flower's own FedAvg, driven in this process through the test Grid."""
    from flwr.clientapp import ClientApp

    app = ClientApp()
    add_fedavg_handlers(
        app, lambda ctx, solver, seed: image_solver(cfg, partition_of(ctx)[0], data, solver, seed)
    )
    theta0 = image_solver(cfg, 0, data).initial()
    return run_flower_fedavg(
        FakeGrid(app, cfg.num_workers, {}),
        cfg.num_workers,
        theta0,
        cfg.num_iterations,
        600.0,
        cfg.solver,
        cfg.seed,
        cfg.algo,
        evaluate,
    )


def first_reaching(rows: list[dict], key: str, target: float) -> dict | None:
    return next((r for r in rows if r.get(key, -1) >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # first paragraph
    parser.add_argument("--task", default="digits", choices=["digits", "mnist"])
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--workers", type=positive_int, default=10)
    parser.add_argument("--iterations", type=positive_int, default=150)
    parser.add_argument("--rho", type=float, default=1.0)
    parser.add_argument("--dual-step", type=float, default=0.01)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4, 2])
    parser.add_argument(
        "--partition", default="iid", choices=["iid", "contiguous", "dirichlet", "pathological"]
    )
    parser.add_argument("--dirichlet-alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args()
    for bits in args.bits:  # before any run (a bad width used to fail after SGADMM's)
        try:
            check_level_bits(bits)
        except ValueError as exc:
            parser.error(f"--bits: {exc}")
    torch.set_num_threads(1)  # tiny models: threads only add contention
    base = RunConfig.of(
        task=args.task,
        algorithm="sgadmm",
        data_dir=args.data_dir,
        num_workers=args.workers,
        num_iterations=args.iterations,
        rho=args.rho,
        dual_step=args.dual_step,
        lr=args.lr,
        local_steps=args.local_steps,
        batch_size=args.batch_size,
        partition=args.partition,
        dirichlet_alpha=args.dirichlet_alpha,
        seed=args.seed,
    )
    data = load_task_data(base)
    evaluate = mean_model_evaluator(base, data)
    out = new_run_dir(args.results_dir, f"image-{args.task}")
    histories: dict[str, list[dict]] = {}
    for label, change in variants(args.bits).items():
        t0 = time.perf_counter()
        cfg = base.replace(**change)
        if cfg.algorithm == "fedavg":
            rows = fedavg_in_process(cfg, data, evaluate)
        else:
            solvers = [image_solver(cfg, w, data) for w in range(cfg.num_workers)]
            rows = run_reference(
                cfg.algorithm,
                solvers,
                cfg.num_iterations,
                cfg.algo,
                seed=cfg.seed,
                evaluate=evaluate,
            ).history
        histories[label] = rows
        write_history(out / f"{label.replace(' ', '-')}.jsonl", rows)
        last = rows[-1]
        print(
            f"{label}: {time.perf_counter() - t0:.0f}s, final accuracy "
            f"{last.get('accuracy', last['mean_model_accuracy']):.4f}, bits {last['bits']:,}",
            flush=True,
        )
    plot_histories(histories, out / "accuracy.png")
    ref = histories["sgadmm"]
    target = ref[-1]["accuracy"] - 0.01
    ref_hit = first_reaching(ref, "accuracy", target)
    lines = [
        f"# {args.task}: {base.num_workers} workers ({base.partition}), {base.num_iterations} "
        f"rounds, rho={base.rho:g}, dual-step={base.dual_step:g}, Adam lr={base.lr:g}, "
        f"{base.local_steps} steps of batch {base.batch_size}, seed {base.seed}",
        "",
        f"Target: SGADMM's final worker accuracy minus 1 point = {target:.4f}. Worker accuracy "
        "is the mean over workers of each worker's own model on the test set; FedAvg has one "
        "global model (its mean-model accuracy is used).",
        "",
        "| variant | final worker acc | final mean-model acc | rounds to target "
        "| bits to target | rounds / SGADMM | bits / SGADMM |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, rows in histories.items():
        key, _ = metric_of(rows)
        hit = first_reaching(rows, key, target)
        final = rows[-1]
        cells = [label, f"{final[key]:.4f}", f"{final['mean_model_accuracy']:.4f}"]
        if hit and ref_hit:
            cells += [
                str(hit["iteration"]),
                f"{hit['bits']:,}",
                f"{hit['iteration'] / ref_hit['iteration']:.2f}",
                f"{hit['bits'] / ref_hit['bits']:.3f}",
            ]
        else:
            cells += ["not reached", "-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
