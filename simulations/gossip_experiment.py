"""Malcom-PSGD vs CHOCO-SGD vs D-PSGD on an image task (default: offline digits).

Run: ``python simulations/gossip_experiment.py [--iterations 300] [--seeds 0 1 2]
[--graphs ring-8 ring-16 random-regular-8] [--partitions iid dirichlet] [--jobs 2]``.

Every variant runs in the reference runner (the Flower path gives identical numbers, see
the tests), on each graph and partition, for each seed. Variants:

- D-PSGD (uncompressed float32 models);
- CHOCO-SGD with dithered QSGD s = 1 and CHOCO's variance scaling, QSGD s = 16, top-1%
  (fixed-width codec);
- CHOCO-SGD with an l1 prox (dithered s = 1, fixed-width codec, l1 = 2e-3): the
  difference to "malcom l1=2e-3" is then the source coder alone;
- CHOCO-SGD with dithered s = 1 and the source coder ("choco qsgd-1 source"): Malcom
  without its prox;
- Malcom-PSGD (l1 prox, dithered s = 1, vector source coder) with its default l1 = 2e-4,
  and with l1 = 2e-3.

Writes ``results/<time>-gossip-<task>/``: one history per run (JSON Lines), plots per
graph and partition (accuracy vs round, vs cumulative measured bits, sparsity vs round,
bits per round vs round) and ``summary.md``: final accuracy (mean worker and mean model),
sparsity, rounds and measured bits to the target (CHOCO-SGD QSGD s = 1's final mean
worker accuracy minus 1 point), ratios of Malcom's bits to each baseline; means over seeds.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from flower_qgadmm.settings import positive_int

VARIANTS: dict[str, dict] = {
    "d-psgd": {"algorithm": "d-psgd"},
    "choco qsgd-1": {
        "algorithm": "choco-sgd",
        "compressor": "dithered",
        "levels": 1,
        "variance-scaling": True,
    },
    # Malcom without its prox: the same quantizer and source coder (where the bits go)
    "choco qsgd-1 source": {
        "algorithm": "choco-sgd",
        "compressor": "dithered",
        "levels": 1,
        "codec": "source",
    },
    "choco qsgd-16": {"algorithm": "choco-sgd", "compressor": "dithered", "levels": 16},
    "choco top-1%": {"algorithm": "choco-sgd", "compressor": "top-k", "fraction": 0.01},
    "choco+prox": {"algorithm": "choco-sgd", "compressor": "dithered", "levels": 1, "l1": 0.002},
    "malcom-psgd": {"algorithm": "malcom-psgd"},  # l1 = 2e-4
    "malcom l1=2e-3": {"algorithm": "malcom-psgd", "l1": 0.002},
}
DEFAULT_VARIANTS = list(VARIANTS)
BASE = "choco qsgd-1"  # the target is its final accuracy minus 1 point


def graph_settings(name: str) -> dict:
    """``ring-8`` -> topology ring, 8 workers; ``random-regular-8`` -> degree 3."""
    kind, _, workers = name.rpartition("-")
    if not kind or not workers.isdigit():
        raise ValueError(f"graph {name!r}: write a topology and its workers, e.g. ring-8")
    out = {"topology": kind, "num-workers": int(workers)}
    if kind == "random-regular":
        out["topology-param"] = 3
    return out


def one_run(job: tuple) -> tuple:
    """(graph, partition, seed, variant, history) of one reference run."""
    import torch

    from flower_qgadmm.config import RunConfig
    from flower_qgadmm.image_task import image_solver, load_task_data, mean_model_evaluator
    from flower_qgadmm.reference import run_from_config

    torch.set_num_threads(1)
    graph, partition, seed, variant, base = job
    settings = {**base, **graph_settings(graph), "partition": partition, "seed": seed}
    cfg = RunConfig.from_run_config({**settings, **VARIANTS[variant]})
    data = load_task_data(cfg)
    solvers = [image_solver(cfg, w, data) for w in range(cfg.num_workers)]
    rows = run_from_config(cfg, solvers, evaluate=mean_model_evaluator(cfg, data)).history
    return graph, partition, seed, variant, rows


def reached(rows: list[dict], target: float) -> dict | None:
    """The first row whose mean worker accuracy reaches the target."""
    return next((r for r in rows if r["accuracy"] >= target), None)


def seed_series(histories: list, n: int, key: str, default: float | None = None) -> np.ndarray:
    """``key`` of the first ``n`` rows of every seed's history, one row per seed."""
    return np.array([[r.get(key, default) for r in rows[:n]] for rows in histories], float)


def plot(runs: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    for variant, histories in runs.items():
        # the mean over the seeds (rows of the same iterations; a run that stopped early
        # shortens the others), the seeds' range shaded
        n = min(len(rows) for rows in histories)
        it = [r["iteration"] for r in histories[0][:n]]
        accuracy, bits = (seed_series(histories, n, key) for key in ("accuracy", "bits"))
        line = axes[0].plot(it, accuracy.mean(axis=0), label=variant)[0]
        if len(histories) > 1:
            low, high = accuracy.min(axis=0), accuracy.max(axis=0)
            axes[0].fill_between(it, low, high, color=line.get_color(), alpha=0.2)
        axes[1].plot(bits.mean(axis=0), accuracy.mean(axis=0), label=variant)
        sparsity = seed_series(histories, n, "sparsity", 0.0)
        axes[2].plot(it, sparsity.mean(axis=0), label=variant)
        per_round = np.diff(bits, axis=1, prepend=0.0).mean(axis=0)
        axes[3].plot(it, per_round, label=variant)
    axes[1].set_xscale("log")
    axes[3].set_yscale("log")
    for ax, (x, y) in zip(
        axes,
        [
            ("round", "worker accuracy"),
            ("cumulative measured bits", "worker accuracy"),
            ("round", "model sparsity (zero fraction)"),
            ("round", "bits per round (all workers)"),
        ],
        strict=True,
    ):
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    seeds = max(len(h) for h in runs.values())
    fig.suptitle(f"{title} (mean of {seeds} seeds, their range shaded)" if seeds > 1 else title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # first paragraph
    parser.add_argument("--task", default="digits", choices=["digits", "mnist", "cifar10"])
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--iterations", type=positive_int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--graphs", nargs="+", default=["ring-8", "ring-16", "random-regular-8"])
    parser.add_argument("--partitions", nargs="+", default=["iid", "dirichlet"])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default="auto", choices=["auto", "softmax"])
    parser.add_argument("--jobs", type=positive_int, default=2)
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args()
    from flower_qgadmm.config import RunConfig
    from flower_qgadmm.history import json_line, new_run_dir

    if BASE not in args.variants:  # the target is its final accuracy
        args.variants = [BASE, *args.variants]
        print(f"variant {BASE!r} added: the target is its final accuracy minus 1 point")

    base = {
        "task": args.task,
        "data-dir": args.data_dir,
        "num-iterations": args.iterations,
        "batch-size": args.batch_size,
        "model": args.model,
        "evaluate-every": 1,  # the accuracy curves need the test accuracy of every round
    }
    for g in args.graphs:  # every graph and partition checked before any run
        for p in args.partitions:
            try:
                RunConfig.from_run_config(
                    {**base, **graph_settings(g), "partition": p, "algorithm": "d-psgd"}
                )
            except ValueError as exc:
                parser.error(f"--graphs {g} --partitions {p}: {exc}")
    jobs = [
        (g, p, s, v, base)
        for g in args.graphs
        for p in args.partitions
        for s in args.seeds
        for v in args.variants
    ]
    out = new_run_dir(args.results_dir, f"gossip-{args.task}")
    t0 = time.perf_counter()
    results: dict = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for graph, partition, seed, variant, rows in pool.map(one_run, jobs):
            results.setdefault((graph, partition), {}).setdefault(variant, []).append(rows)
            name = f"{graph}-{partition}-seed{seed}-{variant.replace(' ', '_')}.jsonl"
            with (out / name).open("w") as fh:
                fh.writelines(json_line(r) for r in rows)  # strict JSON (NaN: null)
            last = rows[-1]
            print(
                f"[{time.perf_counter() - t0:6.0f}s] {graph} {partition} seed {seed} {variant}: "
                f"acc {last['accuracy']:.4f} bits {last['bits']:,}",
                flush=True,
            )
    lines = [
        f"# Gossip on {args.task} (model {args.model}): {args.iterations} rounds, "
        f"seeds {args.seeds}, "
        f"batch {args.batch_size}, default step sizes (eta 0.1; gamma automatic, "
        "min(0.1, 2 / tau))",
        "",
        f"Target per graph and partition: {BASE}'s final mean worker accuracy minus 1 point "
        "(mean over seeds). Accuracy: mean over workers of each worker's own model "
        "(`accuracy`) and of the workers' average model (`mean-model`). Bits: measured, "
        "all workers, cumulative. Means over seeds; 'n/r' = not reached by every seed.",
        "",
    ]
    for (graph, partition), runs in results.items():
        plot(runs, out / f"{graph}-{partition}.png", f"{args.task}, {graph}, {partition}")
        target = float(np.mean([h[-1]["accuracy"] for h in runs[BASE]])) - 0.01
        malcoms = [v for v in runs if v.startswith("malcom")]
        lines += [
            f"## {graph}, {partition} (target {target:.4f})",
            "",
            "| variant | final acc | final mean-model acc | sparsity | rounds to target "
            "| bits to target | " + " | ".join(f"{m} bits / this" for m in malcoms) + " |",
            "|---|---|---|---|---|---|" + "---|" * len(malcoms),
        ]
        hits = {v: [reached(h, target) for h in hs] for v, hs in runs.items()}
        bits = {
            v: float(np.mean([x["bits"] for x in hs])) if all(hs) else None
            for v, hs in hits.items()
        }
        for variant, histories in runs.items():
            finals = [h[-1] for h in histories]
            cells = [
                variant,
                f"{np.mean([f['accuracy'] for f in finals]):.4f}",
                f"{np.mean([f['mean_model_accuracy'] for f in finals]):.4f}",
                f"{np.mean([f.get('sparsity', 0.0) for f in finals]):.3f}",
            ]
            if bits[variant] is not None:
                rounds = np.mean([x["iteration"] for x in hits[variant]])
                cells += [f"{rounds:.0f}", f"{bits[variant]:,.0f}"]
            else:
                cells += ["n/r", "n/r"]
            ratios = [
                f"{bits[m] / bits[variant]:.3f}" if bits.get(m) and bits[variant] else "-"
                for m in malcoms
            ]
            lines.append("| " + " | ".join([*cells, *ratios]) + " |")
        lines.append("")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out} in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
