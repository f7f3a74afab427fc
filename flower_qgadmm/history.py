"""History files (JSON Lines, one object per iteration) and their plots.

Both runners write the same format; :func:`summarize` reads off when a run reached a
tolerance, which is what a GADMM-vs-Q-GADMM comparison reports.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path


def new_run_dir(results_dir: str | Path, label: str) -> Path:
    """Create and return a fresh sub-folder ``<results_dir>/<UTC time>-<label>[-i]``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(results_dir) / f"{stamp}-{label}"
    path, i = base, 1
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            i += 1
            path = base.with_name(f"{base.name}-{i}")


def write_history(path: str | Path, rows: Iterable[Mapping]) -> Path:
    """Write rows as JSON Lines; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(dict(row)) + "\n")
    return path


def read_history(path: str | Path) -> list[dict]:
    """Read a JSON Lines history."""
    with Path(path).open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def summarize(rows: Sequence[Mapping], tolerance: float = 1e-6) -> dict:
    """First iteration from which ``objective_gap`` stays below ``tolerance``, and its bits."""
    reached = None
    for i in range(len(rows) - 1, -1, -1):
        if not rows[i]["objective_gap"] < tolerance:
            break
        reached = rows[i]
    last = rows[-1]
    return {
        "iterations": len(rows),
        "final_gap": last["objective_gap"],
        "final_consensus_error": last["consensus_error"],
        "total_bits": last["bits"],
        "reached_iteration": reached["iteration"] if reached else None,
        "reached_bits": reached["bits"] if reached else None,
    }


def metric_of(rows: Sequence[Mapping]) -> tuple[str, str]:
    """(key, axis label) of a history's headline metric: the relative objective gap for
    least squares, else the mean worker test accuracy (the global model's for FedAvg)."""
    if "objective_gap" in rows[0]:
        return "objective_gap", "|F - F*| / |F*|"
    if "accuracy" in rows[0]:
        return "accuracy", "test accuracy (mean over workers)"
    return "mean_model_accuracy", "test accuracy (mean over workers)"


def plot_histories(histories: Mapping[str, Sequence[Mapping]], path: str | Path) -> Path:
    """Headline metric (see :func:`metric_of`) vs round and vs cumulative measured bits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_it, ax_bits) = plt.subplots(1, 2, figsize=(11, 4))
    ylabel, log_y = "", False
    for label, rows in histories.items():
        key, ylabel = metric_of(rows)
        log_y = key == "objective_gap"
        values = [max(r[key], 1e-300) if log_y else r[key] for r in rows]
        ax_it.plot([r["iteration"] for r in rows], values, label=label)
        ax_bits.plot([r["bits"] for r in rows], values, label=label)
    ax_bits.set_xscale("log")
    ax_it.set_xlabel("iteration (round)")
    ax_bits.set_xlabel("cumulative transmitted bits (measured)")
    for ax in (ax_it, ax_bits):
        if log_y:
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_summary(label: str, rows: Sequence[Mapping], tolerance: float) -> str:
    """One human-readable line per run."""
    key, _ = metric_of(rows)
    last = rows[-1]
    if key != "objective_gap":
        return (
            f"{label}: {len(rows)} rounds, final {key.replace('_', ' ')} {last[key]:.4f}, "
            f"mean-model accuracy {last['mean_model_accuracy']:.4f}, {last['bits']} bits"
        )
    s = summarize(rows, tolerance)
    reached = (
        f"gap < {tolerance:g} from iteration {s['reached_iteration']} "
        f"after {s['reached_bits']} bits"
        if s["reached_iteration"] is not None
        else f"gap never stayed below {tolerance:g}"
    )
    return (
        f"{label}: {s['iterations']} iterations, final gap {s['final_gap']:.3e}, "
        f"consensus error {s['final_consensus_error']:.3e}, {s['total_bits']} bits; {reached}"
    )


def progress_line(row: dict) -> str:
    """The per-round log line: gap or loss/accuracy, consensus, bits, Flower bytes."""
    parts = []
    if "objective_gap" in row:
        parts.append(f"gap={row['objective_gap']:.3e}")
    else:
        parts.append(f"train-loss={row['train_loss']:.4f}")
    for key in ("accuracy", "mean_model_accuracy"):
        if key in row:
            parts.append(f"{key.replace('_', '-')}={row[key]:.4f}")
    parts.append(f"consensus={row['consensus_error']:.3e} bits={row['bits']}")
    if "flower_bytes_down" in row:
        parts.append(f"flower-bytes down={row['flower_bytes_down']} up={row['flower_bytes_up']}")
    return " ".join(parts)
