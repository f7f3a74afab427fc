"""GADMM vs Q-GADMM (and D-PSGD) on one linear-regression problem (reference runner).

Run: ``python simulations/compare_linreg.py [--rho R] [--iterations 500] [--dim 20]``
(``--rho`` default 0: automatic).
Writes ``results/<time>-compare-linreg/``: one history per variant, ``compare.png``
(gap vs iteration and vs measured bits) and ``summary.md`` (iterations and bits to
reach the tolerance, ratios to GADMM).
"""

from __future__ import annotations

import argparse

from flower_qgadmm.config import RunConfig
from flower_qgadmm.data import load_dataset
from flower_qgadmm.history import new_run_dir, plot_histories, summarize, write_history
from flower_qgadmm.reference import least_squares_solvers, make_engine
from flower_qgadmm.settings import positive_int

VARIANTS = {
    "gadmm": {"algorithm": "gadmm"},
    "q-gadmm 2-bit": {"algorithm": "q-gadmm", "bits": 2},
    "q-gadmm 3-bit": {"algorithm": "q-gadmm", "bits": 3},
    "q-gadmm 4-bit": {"algorithm": "q-gadmm", "bits": 4},
    "q-gadmm adaptive": {
        "algorithm": "q-gadmm",
        "bits": 2,
        "adaptive_bits": True,
        "omega": 0.95,
        "bits_max": 8,
    },
    "d-psgd": {"algorithm": "d-psgd"},
}
DEFAULTS = RunConfig()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # first paragraph
    parser.add_argument("--rho", type=float, default=DEFAULTS.rho)
    parser.add_argument("--iterations", type=positive_int, default=DEFAULTS.num_iterations)
    parser.add_argument("--workers", type=positive_int, default=DEFAULTS.num_workers)
    parser.add_argument("--dim", type=int, default=DEFAULTS.dim)
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args()
    base = RunConfig.of(
        rho=args.rho,
        num_iterations=args.iterations,
        num_workers=args.workers,
        dim=args.dim,
        seed=args.seed,
    )
    data = load_dataset(base.num_workers, base.samples_per_worker, base.dim, base.noise, base.seed)
    out = new_run_dir(args.results_dir, "compare-linreg")
    histories, diverged = {}, {}
    rho = base.rho
    for label, change in VARIANTS.items():
        try:
            cfg = base.replace(**change)
            engine = make_engine(
                cfg.algorithm, least_squares_solvers(data), None, cfg.algo, cfg.seed
            )
            rows = engine.run(cfg.num_iterations)
            if label == "gadmm":
                rho = engine.settings.rho  # the one used (rho = 0: picked from the data)
        except FloatingPointError as exc:
            print(f"{label}: {exc}")
            diverged[label] = str(exc)
            continue
        histories[label] = rows
        write_history(out / f"{label.replace(' ', '-')}.jsonl", rows)
    plot_histories(histories, out / "compare.png")
    ref = summarize(histories["gadmm"], args.tolerance)
    lines = [
        f"# GADMM vs Q-GADMM vs D-PSGD (chain): {base.num_workers} workers, d = {base.dim}, "
        f"rho = {rho:g}{' (automatic)' if base.rho == 0 else ''}, seed {base.seed}, "
        f"tolerance {args.tolerance:g}",
        "",
        "| variant | iterations to tol | bits to tol | iterations / GADMM | bits / GADMM "
        "| final gap |",
        "|---|---|---|---|---|---|",
    ]
    for label, rows in histories.items():
        s = summarize(rows, args.tolerance)
        if s["reached_iteration"] is None:
            lines.append(f"| {label} | not reached | - | - | - | {s['final_gap']:.2e} |")
            continue
        ratios = "- | -"  # GADMM did not reach the tolerance: nothing to compare with
        if ref["reached_iteration"] is not None:
            ratios = (
                f"{s['reached_iteration'] / ref['reached_iteration']:.3f} | "
                f"{s['reached_bits'] / ref['reached_bits']:.3f}"
            )
        lines.append(
            f"| {label} | {s['reached_iteration']} | {s['reached_bits']:,} | {ratios} | "
            f"{s['final_gap']:.2e} |"
        )
    for label, why in diverged.items():  # listed, not dropped
        lines.append(f"| {label} | diverged | - | - | - | {why.split(';')[0]} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
