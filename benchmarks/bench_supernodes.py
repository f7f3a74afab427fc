"""100 SuperNodes in simulation: Q-GADMM on the GADMM paper's set-up over ``flwr run``.

100 workers on a chain, 50 samples x 50 features each (synthetic, seeded), 50
iterations, models pulled every 10; the default Ray backend of ``flwr run``'s local
simulation (no backend config needed on this 2-core, 24 GiB machine). Reports the wall
time of the whole command, the strategy's time per iteration and the peak resident
memory of the SuperLink's process tree. ``--quick``: skipped (a real run takes a minute).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

TITLE = "100 SuperNodes"

SETTINGS = {
    "algorithm": "q-gadmm",
    "num-workers": 100,
    "num-iterations": 50,
    "samples-per-worker": 50,
    "dim": 50,
    "discovery-timeout": 900.0,
    "phase-timeout": 900.0,
    "evaluate-every": 10,
}


def run(quick: bool = False) -> list[dict]:
    if quick:
        return [
            {
                "name": "100 SuperNodes",
                "measured": None,
                "target": None,
                "ok": None,
                "note": "skipped in --quick",
            }
        ]
    from flwr_local import flwr_run

    result = flwr_run(SETTINGS, supernodes=100)
    completed = "[ROUND 50/50]" in result.log
    return [
        {
            "name": "50 iterations with 100 SuperNodes complete",
            "measured": float(completed),
            "target": 1.0,
            "ok": completed,
            "unit": "yes=1",
        },
        {
            "name": "wall time of flwr run (100 SuperNodes, 50 iterations)",
            "measured": round(result.wall, 1),
            "target": None,
            "ok": None,
            "unit": "s",
        },
        {
            "name": "strategy time per iteration (2 phases)",
            "measured": round(result.per_round(50) or float("nan"), 3),
            "target": None,
            "ok": None,
            "unit": "s",
            "note": f"steady iterations (2..49): {result.steady_round():.3f} s",
        },
        {
            "name": "peak RSS of the SuperLink tree (Ray, actors, ServerApp)",
            "measured": round(result.peak_rss_gib, 2),
            "target": None,  # the issue asks for it to be reported; the machine has 24 GiB
            "ok": None,
            "unit": "GiB",
            "note": "of the machine's 24 GiB",
        },
    ]
