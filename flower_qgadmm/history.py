"""History files (JSON Lines, one object per iteration), their plots and summaries.

Both runners write the same format; :func:`summarize` reads off when a run reached a
tolerance, which is what a GADMM-vs-Q-GADMM comparison reports. :class:`RunRecorder`
writes a run's folder as it goes (rows appended and flushed one by one, so an
interrupted run keeps every completed round).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .metrics import Watchdog, stall_of


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


def _finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (in lists and dicts too) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def json_line(row: Mapping) -> str:
    """A row as one line of strict JSON: NaN and infinities (also inside lists, e.g. a
    MetricRecord list an ``evaluate_fn`` returned) become ``null``."""
    return json.dumps(_finite_or_none(row), allow_nan=False) + "\n"


def write_history(path: str | Path, rows: Iterable[Mapping]) -> Path:
    """Write rows as JSON Lines; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for row in rows:
            fh.write(json_line(row))
    return path


def read_history(path: str | Path) -> list[dict]:
    """Read a JSON Lines history; a top-level ``null`` (a non-finite value when written)
    reads back as NaN, so summaries and plots take the rows as they were."""
    with Path(path).open() as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [{k: math.nan if v is None else v for k, v in row.items()} for row in rows]


#: |F*| at most this times the first iteration's objective counts as ~0: the relative gap
#: |F - F*| / |F*| then divides by round-off, and summaries use the absolute gap.
TINY_OPTIMUM = 1e-12


def gap_key(rows: Sequence[Mapping]) -> str:
    """The gap a summary uses: ``objective_gap`` (relative, |F - F*| / |F*|), or
    ``objective_error`` (absolute, |F - F*|) when |F*| is ~0 (:data:`TINY_OPTIMUM`)."""
    first, last = rows[0], rows[-1]
    if "objective_error" not in last or "optimum_value" not in last:
        return "objective_gap"
    level = abs(float(first.get("objective", 0.0))) or 1.0
    tiny = abs(float(last["optimum_value"])) <= TINY_OPTIMUM * level
    return "objective_error" if tiny else "objective_gap"


def summarize(rows: Sequence[Mapping], tolerance: float = 1e-6) -> dict:
    """First iteration from which the gap stays below ``tolerance``, and its bits.

    The gap is the relative ``objective_gap``, or the absolute ``objective_error`` when
    |F*| is ~0 (``gap_key`` says which; see :func:`gap_key`). Also: the final absolute
    gap and distance to theta* (``final_error``, ``final_optimum_error``, when known), the
    last consensus error (``final_consensus_error``, NaN if no row has one) and the
    iteration of the models both were measured on (``models_iteration``: the last row
    that pulled them, not the last row of a run stopped between two pulls; None) and
    ``stalled`` ((iteration of the last progress, best gap) or None,
    :func:`~flower_qgadmm.metrics.stall_of`).
    """
    key = gap_key(rows)
    reached = None
    for i in range(len(rows) - 1, -1, -1):
        if not rows[i][key] < tolerance:
            break
        reached = rows[i]
    last = rows[-1]
    distances = [r["optimum_error"] for r in rows if "optimum_error" in r]
    pulled = next((r for r in reversed(rows) if "consensus_error" in r), None)
    return {
        "iterations": len(rows),
        "gap_key": key,
        "final_gap": last[key],
        "final_relative_gap": last["objective_gap"],
        "final_error": last.get("objective_error"),
        "final_optimum_error": distances[-1] if distances else None,
        "final_consensus_error": math.nan if pulled is None else pulled["consensus_error"],
        "models_iteration": None if pulled is None else pulled["iteration"],
        "total_bits": last["bits"],
        "reached_iteration": reached["iteration"] if reached else None,
        "reached_bits": reached["bits"] if reached else None,
        "stalled": stall_of(rows) if reached is None else None,
    }


def metric_of(rows: Sequence[Mapping]) -> tuple[str, str]:
    """(key, axis label) of a history's headline metric: the relative objective gap for
    least squares, else the mean worker test accuracy (the global model's for FedAvg)."""
    if "objective_gap" in rows[0]:
        if gap_key(rows) == "objective_error":
            return "objective_error", "|F - F*| (F* ~ 0: absolute gap)"
        return "objective_gap", "|F - F*| / |F*|"
    # test metrics are in the evaluation rows only (every evaluate-every and the last)
    if any("accuracy" in r for r in rows):
        return "accuracy", "test accuracy (mean over workers)"
    if any("mean_model_accuracy" in r for r in rows):
        return "mean_model_accuracy", "test accuracy (mean over workers)"
    if any("test_loss" in r for r in rows):
        return "test_loss", "test loss (mean over workers)"
    return "train_loss", "training loss (mean over workers)"


def plot_histories(histories: Mapping[str, Sequence[Mapping]], path: str | Path) -> Path:
    """Headline metric (see :func:`metric_of`) vs round and vs cumulative measured bits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_it, ax_bits) = plt.subplots(1, 2, figsize=(11, 4))
    ylabel, log_y = "", False
    for label, rows in histories.items():
        key, ylabel = metric_of(rows)
        log_y = key in ("objective_gap", "objective_error")
        rows = [r for r in rows if key in r]  # test metrics: evaluation rows only
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
    if key not in ("objective_gap", "objective_error"):
        # test metrics come with evaluation rows: the last of them (a run that stopped
        # early may have ended between two)
        seen = next(r for r in reversed(rows) if key in r)
        when = "final" if seen is last else f"round {seen['iteration']}"
        mean_model = seen.get("mean_model_accuracy")
        shown = key == "mean_model_accuracy" or mean_model is None  # said once
        mean_text = "" if shown else f"mean-model accuracy {mean_model:.4f}, "
        drift = Watchdog().drift_of(rows)
        drift_text = "" if drift is None else f"; the workers drift apart from round {drift[0]}"
        return (
            f"{label}: {len(rows)} rounds, {when} {key.replace('_', ' ')} {seen[key]:.4f}, "
            f"{mean_text}{last['bits']} bits{drift_text}"
        )
    s = summarize(rows, tolerance)
    name = "gap" if s["gap_key"] == "objective_gap" else "absolute gap"
    reached = (
        f"{name} < {tolerance:g} from iteration {s['reached_iteration']} "
        f"after {s['reached_bits']} bits"
        if s["reached_iteration"] is not None
        else f"{name} never stayed below {tolerance:g}"
    )
    if s["gap_key"] == "objective_gap":
        absolute = [] if s["final_error"] is None else [f"|F - F*| {s['final_error']:.3e}"]
    else:
        absolute = [
            f"F* = {rows[-1]['optimum_value']:.3e} is ~0, so the summary uses the absolute "
            f"gap |F - F*| (relative gap {s['final_relative_gap']:.3e} is meaningless)"
        ]
    # the model metrics of a run stopped between two pulls are those of the last pull
    pulled = s["models_iteration"]
    at = "" if pulled in (None, rows[-1]["iteration"]) else f" (models of iteration {pulled})"
    if s["final_optimum_error"] is not None:
        absolute.append(f"||theta - theta*|| {s['final_optimum_error']:.3e}{at}")
    consensus = (
        f"consensus error {s['final_consensus_error']:.3e}{at}"
        if pulled is not None
        else "consensus error not measured (no model pulled)"
    )
    extra = f" ({', '.join(absolute)})" if absolute else ""
    stalled = ""
    if s["stalled"] is not None:
        since, level = s["stalled"]
        stalled = (
            f"; stalled: no progress since iteration {since} (relative gap still "
            f"{level:.3e}); more iterations will not help much"
        )
    return (
        f"{label}: {s['iterations']} iterations, final {name} {s['final_gap']:.3e}{extra}, "
        f"{consensus}, {s['total_bits']} bits; "
        f"{reached}{stalled}"
    )


def progress_line(row: dict, first: Mapping | None = None) -> str:
    """The per-round log line: gap or loss/accuracy, consensus, bits, Flower bytes. The gap
    is the one the summary uses (:func:`gap_key` of ``first``, the run's first row, and
    ``row``): absolute when |F*| is ~0."""
    parts = []
    if "objective_gap" in row:
        key = gap_key([first if first is not None else row, row])
        name = "gap" if key == "objective_gap" else "abs-gap"
        parts.append(f"{name}={row[key]:.3e}")
    else:
        parts.append(f"train-loss={row['train_loss']:.4f}")
    for key in ("accuracy", "mean_model_accuracy"):
        if key in row:
            parts.append(f"{key.replace('_', '-')}={row[key]:.4f}")
    if "consensus_error" in row:
        parts.append(f"consensus={row['consensus_error']:.3e}")
    elif "edge_disagreement" in row:
        parts.append(f"disagreement={row['edge_disagreement']:.3e}")
    parts.append(f"bits={row['bits']}")
    if "flower_bytes_down" in row:
        parts.append(f"flower-bytes down={row['flower_bytes_down']} up={row['flower_bytes_up']}")
    return " ".join(parts)


def traffic_table(row: Mapping, fedavg_bytes: int | None = None) -> str:
    """Markdown table of what crossed the wire by the end of ``row`` (cumulative), next to
    what FedAvg would have moved for the same model and rounds when given."""
    lines = ["| traffic | bytes |", "|---|---:|"]
    entries = [
        ("payload sent by the workers", row.get("payload_bytes")),
        ("payload delivered by the relay (fan-out)", row.get("relayed_bytes")),
    ]
    for kind, what in (("train", "training"), ("eval", "evaluation"), ("control", "set-up")):
        for side in ("down", "up"):
            entries.append(
                (f"Flower {what} messages, {side}", row.get(f"flower_{kind}_bytes_{side}"))
            )
    down, up = row.get("flower_bytes_down"), row.get("flower_bytes_up")
    total = None if down is None else down + up
    entries.append(("**Flower, all messages, both directions**", total))
    if fedavg_bytes:
        entries.append(("FedAvg, same model and rounds (model down + up per worker)", fedavg_bytes))
    lines += [f"| {name} | {value:,} |" for name, value in entries if value is not None]
    if fedavg_bytes and total is not None:
        lines.append(f"| ratio to FedAvg | {total / fedavg_bytes:.3f} |")
    return "\n".join(lines)


def resumed_run_folder(resume: str | Path) -> Path:
    """The run folder a ``resume`` names (the folder, its ``history.jsonl`` or its
    checkpoint folder). Nothing is written: a results folder holding runs is refused,
    naming them."""
    path = Path(resume).expanduser().resolve()
    if path.is_file():  # the run's history.jsonl (or its checkpoint's latest)
        path = path.parent
    if path.name == "checkpoint" and (path / "latest.json").exists():
        path = path.parent  # given the run's checkpoint folder itself
    if not path.is_dir():
        raise FileNotFoundError(f"resume: {path} is not a run folder")
    if not (path / "checkpoint").exists() and not (path / "history.jsonl").exists():
        runs = sorted(p.parent.name for p in path.glob("*/history.jsonl"))
        if runs:
            shown = ", ".join(runs[-3:]) + (f" (and {len(runs) - 3} more)" if len(runs) > 3 else "")
            raise FileNotFoundError(
                f"no checkpoint in {path}: it is a results folder, not a run; it holds the run "
                f"folders {shown}: give one of them as resume"
            )
    return path


def stopped_note(rounds: int, planned: int, error: BaseException | None = None) -> str:
    """``Run stopped after 3 of 10 rounds. Why: ValueError: <message>``: what a run's
    summary says of a run that did not finish (``error``: what stopped it)."""
    note = f"Run stopped after {rounds} of {planned} rounds."
    if error is not None:
        note += f" Why: {type(error).__name__}" + (f": {error}" if str(error) else "")
    return note


class RunRecorder:
    """A run's results folder, written as the run goes.

    ``history.jsonl`` gets one strict-JSON line per round, flushed at once (an interrupted
    run keeps every completed round); :meth:`close` adds ``history.png``, ``summary.md``
    and the final model (:func:`~flower_qgadmm.model_arrays.save_model`).
    """

    def __init__(self, results_dir: str | Path, label: str, resume: str | Path | None = None):
        self.label = label
        if resume is None:
            self.path = new_run_dir(Path(results_dir).expanduser().resolve(), label)
        else:
            self.path = resumed_run_folder(resume)
        self.rows: list[dict] = []
        self._fh = (self.path / "history.jsonl").open("a", buffering=1)

    @property
    def checkpoints(self) -> Path:
        """The run's checkpoint directory."""
        return self.path / "checkpoint"

    def restart_from(self, rows: Sequence[Mapping]) -> None:
        """A resumed run: the history is the checkpoint's ``rows`` (later rows, written
        after the checkpoint, are dropped and will be redone)."""
        self._fh.close()
        write_history(self.path / "history.jsonl", rows)
        self.rows = [dict(r) for r in rows]
        self._fh = (self.path / "history.jsonl").open("a", buffering=1)

    def add(self, row: Mapping) -> None:
        """Append one history row (kept once it is written)."""
        self._fh.write(json_line(row))
        self._fh.flush()
        self.rows.append(dict(row))

    def close(
        self,
        settings: Mapping[str, Any] | None = None,
        model: Mapping | None = None,
        framework: str = "numpy",
        fedavg_bytes: int | None = None,
        note: str = "",
        tolerance: float = 1e-6,
        final: Mapping[str, Any] | None = None,
        departures: Sequence[Mapping[str, Any]] = (),
    ) -> str:
        """Write the plot, ``summary.md`` and the final ``model`` (owner layout); return
        the one-line summary (of a run without rows: ``<label>: no round ran. <note>``,
        the ``note`` of a run that stopped saying why, :func:`stopped_note`). ``final``:
        what the final models are worth when the workers' last, deferred step moved them
        after the last row (:attr:`~flower_qgadmm.rounds.RoundEngine.final`);
        ``departures``: the workers that left the run
        (:attr:`~flower_qgadmm.rounds.RoundEngine.departures`)."""
        from .model_arrays import save_model

        self._fh.close()
        if self.rows:
            line = format_summary(self.label, self.rows, tolerance)
            plot_histories({self.label: self.rows}, self.path / "history.png")
        else:  # stopped before round 1: the line says why (the log shows only the line)
            line = f"{self.label}: no round ran" + (f". {note}" if note else "")
        parts = [f"# {self.label}", "", line, ""]
        if note and self.rows:
            parts += [note, ""]
        if departures:
            parts += [
                "## Workers that left",
                "",
                "From then on the run went on without them: the objective, its optimum F* "
                "and the gap are those of the remaining workers' data.",
                "",
                "| worker | left in iteration | why |",
                "|---|---|---|",
                *(
                    f"| {d['worker']} | {d['iteration'] or 'set-up'} | "
                    f"{str(d['reason']).replace('|', '/')} |"
                    for d in departures
                ),
                "",
            ]
        if settings:
            parts += ["## Settings", "", "| key | value |", "|---|---|"]
            parts += [f"| `{k}` | `{v}` |" for k, v in settings.items()]
            parts.append("")
        if self.rows:
            parts += ["## Traffic", "", traffic_table(self.rows[-1], fedavg_bytes), ""]
        if model is not None:
            saved = save_model(self.path, model, framework)
            parts += ["## Final model", "", f"`{saved.name}` (mean of the workers' models)", ""]
        if final:
            parts += [
                "The last row reports the workers' models before their last, deferred step "
                "(the gossip algorithms' consensus step: the rows report the half steps); "
                "the saved models took it. What they are worth:",
                "",
                "| metric | value |",
                "|---|---|",
                *(
                    f"| `{k}` | {v:.6g} |" if isinstance(v, (int, float)) else f"| `{k}` | {v} |"
                    for k, v in final.items()
                ),
                "",
            ]
        (self.path / "summary.md").write_text("\n".join(parts))
        return line
