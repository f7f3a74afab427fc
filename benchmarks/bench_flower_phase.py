"""A round of ours vs a Flower FedAvg round, same SuperNodes, model and data.

``flwr run`` of this repository's app on the digits task (the MLP, d = 4,810), 10
simulated SuperNodes, 30 rounds each: Q-SGADMM 4-bit (two phases per iteration), D-PSGD
(one gossip phase) and Flower's own FedAvg. Time per round is that of the steady rounds
2 .. 29, from the times their history rows appeared (:meth:`flwr_local.FlwrRun.
steady_round`), the same measure for all three: it leaves out SuperLink and Ray start-up,
our set-up exchanges, the workers' first import of torch and of their data (FedAvg's first
round pays them, our set-up does) and the last round's model pull. The strategy's own
time per round (what the ServerApp logs, first round included) is in the notes. Each
SuperLinks start with Ray's inline limit at 4 MiB for every app, as the README advises
for this model's node state (:mod:`flwr_local`). Each algorithm runs :data:`REPEATS` times,
interleaved, the order reversed every other pass; the ratios use the median times (single
runs of the FedAvg round ranged from 0.33 to 0.45 s on this machine). Targets (issue
"Scale and speed", point 4): a phase <= 0.6x a FedAvg round, a GADMM iteration <= 1.2x,
a gossip round <= 1.0x. ``--quick``: skipped (nine real runs take minutes).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

TITLE = "Flower phase vs FedAvg round"
ROUNDS = 30
REPEATS = 3
ALGORITHMS = ("fedavg", "q-sgadmm", "d-psgd")
BASE = {
    "task": "digits",
    "num-workers": 10,
    "num-iterations": ROUNDS,
    "rho": 1.0,
    "dual-step": 0.01,
    "bits": 4,
    "evaluate-every": 10,
}


def run(quick: bool = False) -> list[dict]:
    if quick:
        return [
            {
                "name": "Flower rounds",
                "measured": None,
                "target": None,
                "ok": None,
                "note": "skipped in --quick",
            }
        ]
    from flwr_local import flwr_run

    times: dict[str, list[float]] = {a: [] for a in ALGORITHMS}
    whole: dict[str, list[float]] = {a: [] for a in ALGORITHMS}
    for repeat in range(REPEATS):
        for algorithm in ALGORITHMS if repeat % 2 == 0 else ALGORITHMS[::-1]:
            result = flwr_run({**BASE, "algorithm": algorithm}, supernodes=10)
            times[algorithm].append(result.steady_round())
            whole[algorithm].append(result.per_round(ROUNDS))
    per_round = {a: statistics.median(t) for a, t in times.items()}
    logged = {a: statistics.median(t) for a, t in whole.items()}
    fedavg = per_round["fedavg"]
    rows = [
        {
            "name": "FedAvg round (10 SuperNodes, digits MLP), steady",
            "measured": round(fedavg, 3),
            "target": None,
            "ok": None,
            "unit": "s",
            "note": "runs: " + ", ".join(f"{t:.3f}" for t in times["fedavg"]),
        }
    ]
    for name, key, share, target in (
        ("Q-SGADMM phase / FedAvg round", "q-sgadmm", 0.5, 0.6),
        ("Q-SGADMM iteration / FedAvg round", "q-sgadmm", 1.0, 1.2),
        ("D-PSGD round / FedAvg round", "d-psgd", 1.0, 1.0),
    ):
        value = share * per_round[key] / fedavg
        note = (
            f"strategy's logged time per round, first round included: "
            f"{share * logged[key] / logged['fedavg']:.2f}x"
        )
        rows.append(
            {
                "name": name,
                "measured": round(value, 3),
                "target": target,
                "ok": value <= target,
                "note": note,
            }
        )
    return rows
