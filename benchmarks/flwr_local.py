"""Run this repository's Flower app with ``flwr run`` on a local simulation, measured.

A helper of the Flower benchmarks (not a benchmark itself): each call starts its own
local SuperLink (own ``FLWR_HOME`` and ports), samples the total resident memory of that
SuperLink's process tree (SuperExec, ServerApp, Ray and its actors) every 0.5 s, and
stops that tree by pid afterwards (:mod:`flower_qgadmm.superlink`). The SuperLink starts
with ``RAY_max_direct_call_object_size`` = 4 MiB, as the README advises for models whose
node state exceeds Ray's 100 KiB inline limit, unless the environment sets it.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from flower_qgadmm.flower.transport import RAY_INLINE, RAY_INLINE_SUGGESTED
from flower_qgadmm.superlink import descendants, find_superlinks, processes, stop

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ROW_POLL = 0.005  # seconds between looks at a run's history file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class FlwrRun:
    """What one ``flwr run`` did."""

    log: str
    wall: float  # seconds of the whole command (SuperLink start, Ray, the run)
    peak_rss_gib: float  # total RSS of the SuperLink's process tree, sampled
    strategy_seconds: float | None  # the strategy's own time for its rounds (from the log)
    row_times: list[float] = field(default_factory=list)  # when each history row appeared

    def per_round(self, rounds: int) -> float | None:
        return None if self.strategy_seconds is None else self.strategy_seconds / rounds

    def steady_round(self) -> float:
        """Seconds per round of rounds 2 .. N-1, from the times their history rows
        appeared: without the first round (where FedAvg's workers import torch and load
        their data, which ours do at set-up, before the strategy's clock starts) and the
        last (the final model pull). The same measure for every algorithm."""
        t = self.row_times
        if len(t) < 4:
            raise RuntimeError(f"{len(t)} history rows seen; steady rounds need 4 or more")
        return (t[-2] - t[0]) / (len(t) - 2)


def row_times(results: Path, done: threading.Event, times: list[float], poll: float) -> None:
    """Append the time each new history row appears in ``results/*/history.jsonl`` (our
    relay and our FedAvg baseline both write a row as each round ends), every ``poll``
    seconds, until ``done``."""
    seen = 0
    while not done.is_set():
        files = list(results.glob("*/history.jsonl"))
        if files:
            rows = files[0].read_bytes().count(b"\n")
            now = time.monotonic()
            times.extend([now] * (rows - seen))
            seen = max(seen, rows)
        time.sleep(poll)


def _tree_rss(home: Path) -> int:
    total = 0
    procs = processes()
    for link in find_superlinks(home):
        for pid in {link.proc.pid} | {p.pid for p in descendants(link.proc.pid, procs)}:
            try:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * 4096
            except (OSError, IndexError, ValueError):
                pass
    return total


def flwr_run(
    run_config: dict,
    supernodes: int,
    timeout: float = 3600,
    federation: str = "",
    extra_env: dict[str, str] | None = None,
) -> FlwrRun:
    """``flwr run . --stream`` with ``supernodes`` simulated SuperNodes and ``run_config``
    (a results folder in a temporary directory), ``federation`` adding settings to
    ``--federation-config`` (e.g. ``"client-resources-num-cpus=1"``), ``extra_env`` to
    the environment of the command (and so of the SuperLink it starts); raises if the
    run failed."""
    with tempfile.TemporaryDirectory(prefix="flwr-bench-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        env = {
            **os.environ,
            "FLWR_HOME": str(home),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            # the README's setting for models whose node state exceeds Ray's inline limit
            # (the same for every app measured); set it in the environment to override
            # (102400 is Ray's default)
            RAY_INLINE: os.environ.get(RAY_INLINE, str(RAY_INLINE_SUGGESTED)),
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
            "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
            **(extra_env or {}),
        }

        def toml(v):
            return f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v

        config = {**run_config, "results-dir": str(Path(tmp) / "results")}
        overrides = " ".join(f"{k}={toml(v)}" for k, v in config.items())
        cmd = [
            str(BIN / "flwr"),
            "run",
            ".",
            "--stream",
            "--federation-config",
            f"num-supernodes={supernodes} {federation}".strip(),
            "--run-config",
            overrides,
        ]
        peak, done = [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss(home))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rows: list[float] = []
        watcher = threading.Thread(
            target=row_times, args=(Path(tmp) / "results", done, rows, ROW_POLL), daemon=True
        )
        watcher.start()
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
            )
        finally:
            wall = time.monotonic() - t0
            done.set()
            sampler.join()
            watcher.join()
            stop(home)
        log = proc.stdout + proc.stderr
        runs = list((Path(tmp) / "results").glob("*"))
        if proc.returncode != 0 or not runs or "Run stopped" in log:
            raise RuntimeError(f"flwr run failed:\n{log[-3000:]}")
        found = re.findall(
            r"(?:Strategy finished \d+ rounds in|Strategy execution finished in) ([0-9.]+)s", log
        )
        seconds = float(found[-1]) if found else None
        return FlwrRun(log, wall, peak[0] / 2**30, seconds, rows)
