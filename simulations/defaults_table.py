"""Defaults on real and synthetic data: GADMM and Q-GADMM with nothing tuned.

Every problem runs through the reference runner's own path (``RunConfig`` from the
same keys the command line takes, ``simulate.build_solvers``, the round engine) with only
the data, the target and the number of workers given; everything else is the default
(automatic rho, feature scaling, 3-bit Q-GADMM, 3000 iterations). Real data sets come
from scikit-learn and are written to CSV files first, so they take exactly the path of
``python -m flower_qgadmm.simulate --csv FILE --target COLUMN --workers N``.

Prints a Markdown table: per problem and algorithm, the automatic rho, the iteration from
which the relative objective gap stays <= 1e-4 and the measured bits by then, the final
gap, and Q-GADMM's bits as a fraction of GADMM's: measured (8 x the payload bytes,
headers included) and nominal (the paper's b d + 32 against 32 d).

    python simulations/defaults_table.py                 # every problem (~10 minutes)
    python simulations/defaults_table.py --only diabetes --iterations 1000
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from flower_qgadmm.config import RunConfig
from flower_qgadmm.history import summarize
from flower_qgadmm.reference import make_engine
from flower_qgadmm.settings import positive_int
from flower_qgadmm.simulate import build_solvers

TOLERANCE = 1e-4


def write_csv(path: Path, X: np.ndarray, y: np.ndarray, names: list[str], target: str) -> None:
    """A CSV with a header row, the target last (values written exactly, repr)."""
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow([*names, target])
        for row, t in zip(X, y, strict=True):
            out.writerow([repr(float(v)) for v in row] + [repr(float(t))])


def clean(name: str) -> str:
    return name.replace(" ", "_").replace("(", "").replace(")", "")


def problems(folder: Path) -> list[tuple[str, dict]]:
    """(label, run-config keys) of every problem of the acceptance table."""
    from sklearn import datasets

    out: list[tuple[str, dict]] = []

    def add(label: str, X, y, names, target, workers: int = 10) -> None:
        path = folder / f"{label}.csv"
        write_csv(path, np.asarray(X), np.asarray(y), [clean(n) for n in names], clean(target))
        out.append(
            (label, {"data-csv": str(path), "data-target": clean(target), "num-workers": workers})
        )

    d = datasets.load_diabetes(scaled=False)
    add("diabetes (unscaled)", d.data, d.target, d.feature_names, "progression")
    d = datasets.load_diabetes()
    add("diabetes (as shipped)", d.data, d.target, d.feature_names, "progression")
    d = datasets.load_linnerud()
    for j, target in enumerate(d.target_names):
        add(f"linnerud {target}", d.data, d.target[:, j], d.feature_names, target)
    for loader, column, label in (
        (datasets.load_wine, "alcohol", "wine"),
        (datasets.load_breast_cancer, "mean texture", "breast-cancer"),
    ):
        d = loader()
        names = list(d.feature_names)
        j = names.index(column)
        X = np.delete(d.data, j, axis=1)
        add(f"{label} ({column})", X, d.data[:, j], names[:j] + names[j + 1 :], column)
    rng = np.random.default_rng(7)
    scales = np.logspace(-3, 3, 20)
    X = rng.standard_normal((500, 20)) * scales
    theta = rng.standard_normal(20) / scales
    y = X @ theta + 0.1 * rng.standard_normal(500)
    add("synthetic, column scales 1e-3..1e3", X, y, [f"x{i}" for i in range(20)], "y")
    for n in (50, 100):
        out.append((f"synthetic chain of {n}", {"num-workers": n}))
    return out


def run(keys: dict, algorithm: str, iterations: int) -> dict:
    cfg = RunConfig.from_run_config({**keys, "algorithm": algorithm, "num-iterations": iterations})
    solvers, _ = build_solvers(cfg)
    engine = make_engine(
        cfg.algorithm, solvers, cfg.graph, cfg.algo, cfg.seed, evaluate_every=cfg.evaluate_every
    )
    error = ""
    try:
        engine.run(iterations)
    except (FloatingPointError, ValueError, RuntimeError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    s = summarize(engine.history, TOLERANCE) if engine.history else {}
    nominal = None
    if s.get("reached_iteration"):
        nominal = engine.history[s["reached_iteration"] - 1]["nominal_bits"]
    out = {"rho": engine.settings.rho, "dim": engine.dim, "error": error, "nominal": nominal}
    return {**out, **s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # first paragraph
    parser.add_argument("--iterations", type=positive_int, default=3000)
    parser.add_argument("--only", default="", help="run the problems whose label contains this")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        chosen = [
            (label, keys)
            for label, keys in problems(Path(tmp))
            if args.only.lower() in label.lower()
        ]
        if not chosen:
            parser.error(f"--only {args.only!r} matches no problem")
        print(
            f"| problem | d | rho (auto) | GADMM: iter to {TOLERANCE:g} | GADMM bits | "
            "Q-GADMM (3-bit): iter | Q-GADMM bits | Q/G bits (measured) | Q/G (nominal) | "
            "final gap G / Q |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for label, keys in chosen:
            start = time.perf_counter()
            g = run(keys, "gadmm", args.iterations)
            q = run(keys, "q-gadmm", args.iterations)
            both = g.get("reached_bits") and q.get("reached_bits")
            ratio = f"{q['reached_bits'] / g['reached_bits']:.3f}" if both else "-"
            nominal = f"{q['nominal'] / g['nominal']:.3f}" if both else "-"
            cells = [
                label,
                str(g["dim"]),
                f"{g['rho']:.3g}",
                str(g.get("reached_iteration") or "not reached"),
                f"{g['reached_bits']:,}" if g.get("reached_bits") else "-",
                str(q.get("reached_iteration") or "not reached"),
                f"{q['reached_bits']:,}" if q.get("reached_bits") else "-",
                ratio,
                nominal,
                f"{g.get('final_gap', float('nan')):.1e} / {q.get('final_gap', float('nan')):.1e}"
                + (" (stalled)" if g.get("stalled") or q.get("stalled") else ""),
            ]
            print("| " + " | ".join(cells) + " |", flush=True)
            for name, r in (("gadmm", g), ("q-gadmm", q)):
                if r["error"]:
                    print(f"  ({label}, {name} stopped: {r['error']})", flush=True)
            print(f"  ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
