"""Deployment on loopback (TLS + SuperNode auth, 4 SuperNodes): time per round.

The deployment kit (:mod:`flower_qgadmm.deploy`) starts a real SuperLink and four
SuperNodes; ``flwr run`` then runs, 3 rounds each on the digits task (the same MLP and
data): Q-SGADMM 4-bit, D-PSGD (ring) and Flower's FedAvg, first with Flower's own reply wait
(``send_and_receive`` sleeps 3 s between pulls; ``FLOWER_QGADMM_PULL=flower``), then with
ours (pulls after 20 ms, backing off to 0.5 s). Time per round is the strategy's own
(from the ServerApp log). Targets (issue "Scale and speed", point 4): a GADMM iteration
<= 1.5x a FedAvg round, a gossip round <= 1.0x, on the same deployment. Where the rest
goes: each SuperNode sleeps 3 s when it finds no message and starts a ClientApp process
per message (Flower's, not changeable from a ServerApp). ``--quick``: skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from flower_qgadmm import deploy

TITLE = "Deployment iteration time"
ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 3
DIGITS = {"task": "digits", "rho": 1.0, "dual-step": 0.01, "bits": 4}
RUNS = {  # the same model (the digits MLP, d = 4,810) and data for all three
    "q-sgadmm": {**DIGITS, "algorithm": "q-sgadmm"},
    "d-psgd": {**DIGITS, "algorithm": "d-psgd", "topology": "ring"},
    "fedavg": {**DIGITS, "algorithm": "fedavg"},
}


def _flwr_run(root: Path, settings: dict) -> float:
    results = root / "results"
    config = {
        "num-workers": 4,
        "num-iterations": ROUNDS,
        "samples-per-worker": 20,
        "dim": 5,
        **settings,
    }
    overrides = " ".join(
        f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}" for k, v in config.items()
    )
    overrides += f' results-dir="{results}"'
    proc = subprocess.run(
        [
            str(deploy.BIN / "flwr"),
            "run",
            str(ROOT),
            deploy.CONNECTION,
            "--stream",
            "--run-config",
            overrides,
        ],
        env=deploy.flower_env(root / "flwr-home"),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    log = proc.stdout + proc.stderr
    found = re.findall(
        r"(?:Strategy finished \d+ rounds in|Strategy execution finished in) ([0-9.]+)s", log
    )
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"flwr run failed: {log[-2000:]}")
    return float(found[-1]) / ROUNDS


def run(quick: bool = False) -> list[dict]:
    if quick:
        return [
            {
                "name": "deployment",
                "measured": None,
                "target": None,
                "ok": None,
                "note": "skipped in --quick",
            }
        ]
    times: dict[tuple[str, str], float] = {}
    for mode in ("flower", "ours"):
        os.environ["FLOWER_QGADMM_PULL"] = "flower" if mode == "flower" else ""
        with tempfile.TemporaryDirectory(prefix="deploy-bench-") as tmp:
            root = Path(tmp)
            deploy.up(root, nodes=4)
            try:
                for name, settings in RUNS.items():
                    times[(mode, name)] = _flwr_run(root, settings)
            finally:
                deploy.down(root)
    os.environ.pop("FLOWER_QGADMM_PULL", None)
    rows = []
    for mode in ("flower", "ours"):
        wait = "Flower's 3 s pull" if mode == "flower" else "our pull loop"
        for name in RUNS:
            rows.append(
                {
                    "name": f"{name} round, {wait}",
                    "measured": round(times[(mode, name)], 2),
                    "target": None,
                    "ok": None,
                    "unit": "s",
                }
            )
    fedavg = times[("ours", "fedavg")]
    for name, target in (("q-sgadmm", 1.5), ("d-psgd", 1.0)):
        ratio = times[("ours", name)] / fedavg
        rows.append(
            {
                "name": f"{name} round / FedAvg round (our pull loop)",
                "measured": round(ratio, 3),
                "target": target,
                "ok": ratio <= target,
            }
        )
    return rows


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv), indent=1))
