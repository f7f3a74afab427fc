"""End to end on loopback: a TLS + SuperNode-auth SuperLink, 4 SuperNodes, real runs.

Slow (Flower's SuperNodes poll every 3 s and start a ClientApp process per message, so
one exchange takes ~10 s): run alone with ``pytest -m deploy``. Every process the kit
starts is stopped by the fixture, by process group, and checked gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from flower_qgadmm import deploy
from flower_qgadmm.config import RunConfig
from flower_qgadmm.data import experiment_datasets
from flower_qgadmm.history import read_history
from flower_qgadmm.reference import least_squares_solvers, run_from_config

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"num-workers": 4, "samples-per-worker": 20, "dim": 5, "bits": 3, "encrypt": "true"}

pytestmark = [pytest.mark.slow, pytest.mark.deploy]


def processes_mentioning(text: str) -> list[str]:
    out = subprocess.run(
        ["ps", "-eww", "-o", "pid=,stat=,args="], capture_output=True, text=True
    ).stdout
    return [
        line
        for line in out.splitlines()
        if text in line and " Z" not in line[:15] and "ps -eww" not in line
    ]


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    state = deploy.up(root, nodes=4)
    yield root, state
    deploy.down(root)
    deadline = time.monotonic() + 30
    while processes_mentioning(str(root)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not processes_mentioning(str(root)), "processes left behind"


def refused(cmd: list[str], env: dict, log: Path) -> tuple[int, str]:
    """Start a SuperNode that should be refused; (exit code, its log). Its helper
    processes are stopped with it (own process group)."""
    with log.open("w") as fh:
        proc = subprocess.Popen(
            cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=90)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return code, log.read_text()


def run_command(root: Path, results: Path, extra: dict) -> list[str]:
    overrides = " ".join(f"{k}={v}" for k, v in {**SETTINGS, **extra}.items())
    overrides += f' results-dir="{results}"'
    return [
        str(deploy.BIN / "flwr"),
        "run",
        str(ROOT),
        deploy.CONNECTION,
        "--stream",
        "--run-config",
        overrides,
    ]


def test_tls_auth_run_equals_reference_and_strangers_are_refused(federation, tmp_path) -> None:
    root, state = federation
    env = deploy.flower_env(root / "flwr-home")
    # An unregistered key and a node without the CA certificate are refused
    rogue, _ = deploy.make_node_key(tmp_path, "rogue")
    registered_key = root / "keys" / "supernode-0"
    strangers = {
        "unregistered": deploy.supernode_command(
            state["address"], root / "certs" / "ca.crt", rogue, 0, 4, deploy.free_port(), max_wait=5
        ),
        "no-ca": deploy.supernode_command(
            state["address"], None, registered_key, 0, 4, deploy.free_port(), max_wait=5
        ),
        "insecure": [
            str(deploy.BIN / "flower-supernode"),
            "--superlink",
            state["address"],
            "--insecure",
            "--node-config",
            "partition-id=0 num-partitions=4",
            "--host",
            "127.0.0.1",
            "--port",
            str(deploy.free_port()),
            "--max-wait-time",
            "5",
        ],
    }
    outcome = {k: refused(cmd, env, tmp_path / f"{k}.log") for k, cmd in strangers.items()}
    assert outcome["unregistered"][0] != 0
    assert "Failed to activate SuperNode" in outcome["unregistered"][1]
    assert outcome["no-ca"][0] != 0
    assert "CERTIFICATE_VERIFY_FAILED" in outcome["no-ca"][1]
    assert outcome["insecure"][0] != 0  # plain-text client: never admitted, gives up
    assert "Giving up reconnection" in outcome["insecure"][1]
    # A Q-GADMM run over TLS, peer messages sealed end to end with the kit's worker keys,
    # equals the simulation/reference history of the same encrypted run
    results = tmp_path / "results"
    proc = subprocess.run(
        run_command(root, results, {"num-iterations": 3}),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    history = read_history(next(results.glob("*-flower-q-gadmm")) / "history.jsonl")
    cfg = RunConfig.from_run_config({**SETTINGS, "encrypt": True, "num-iterations": 3})
    solvers = least_squares_solvers(experiment_datasets(cfg))
    expected = run_from_config(cfg, solvers)  # simulated keys: other bytes, same lengths
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert cfg.algo.encrypt and expected.history[-1]["encryption_overhead_bytes"] > 0
    for got, want in zip(history, expected.history, strict=True):
        assert {k: got[k] for k in want} == pytest.approx(want, rel=1e-9)
        assert got["flower_bytes_up"] > got["bits"] / 8  # wire bytes recorded per round
    assert "encryption_overhead_bytes" in history[-1]


def test_killed_supernode_is_named_and_the_run_goes_on(federation, tmp_path) -> None:
    root, state = federation
    env = deploy.flower_env(root / "flwr-home")
    results = tmp_path / "results"
    cmd = run_command(root, results, {"num-iterations": 5, "phase-timeout": 30.0})
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    killed = False
    deadline = time.monotonic() + 600
    for line in proc.stdout:
        lines.append(line)
        if not killed and "[ROUND 2/5]" in line:
            os.killpg(state["pids"]["supernode-3"], signal.SIGKILL)  # the device dies
            killed = True
        assert time.monotonic() < deadline, "run hangs"
    proc.wait(timeout=60)
    log = "".join(lines)
    assert killed, log[-3000:]
    assert "worker 3 leaves the run" in log and "no reply within 30s" in log
    assert "graph repaired" in log
    history = read_history(next(results.glob("*-flower-q-gadmm")) / "history.jsonl")
    assert [r["iteration"] for r in history] == [1, 2, 3, 4, 5]
