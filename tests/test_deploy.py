"""End to end on loopback: a TLS + SuperNode-auth SuperLink, 4 SuperNodes, real runs.

The kit's default SuperNodes (short waits, a warm executor forking a ClientApp per
message) run the main tests; one test runs Flower's SuperNode unchanged (3 s idle sleep,
``flwr-clientapp`` process per message) on the same SuperLink. Slow: run alone with
``pytest -m deploy``. Every process the kit starts is stopped by the fixture, by process
group, and checked gone (its SuperNodes' executors and ClientApps included). The unit
tests of the node side (commands, waits) are fast and run with the rest.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from flower_qgadmm import deploy
from flower_qgadmm.config import RunConfig
from flower_qgadmm.data import experiment_datasets
from flower_qgadmm.flower import supernode
from flower_qgadmm.history import read_history
from flower_qgadmm.reference import least_squares_solvers, run_from_config

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"num-workers": 4, "samples-per-worker": 20, "dim": 5, "bits": 3, "encrypt": "true"}


def processes_mentioning(text: str) -> list[str]:
    out = subprocess.run(
        ["ps", "-eww", "-o", "pid=,stat=,args="], capture_output=True, text=True
    ).stdout
    return [
        line
        for line in out.splitlines()
        if text in line and " Z" not in line[:15] and "ps -eww" not in line
    ]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_and_check(root: Path, state: dict) -> None:
    deploy.down(root)
    deadline = time.monotonic() + 30

    def left() -> tuple[list[str], list[int]]:
        groups = [pid for pid in state["pids"].values() if group_alive(pid)]
        return processes_mentioning(str(root)), groups

    while any(left()) and time.monotonic() < deadline:
        time.sleep(1)
    processes, groups = left()
    assert not processes, "processes left behind"
    assert not groups, f"process groups left behind: {groups}"


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    state = deploy.up(root, nodes=4)
    yield root, state
    stop_and_check(root, state)


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


@pytest.mark.slow
@pytest.mark.deploy
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
    # the kit's SuperNodes served every message from their warm executors
    for i in range(4):
        log = (root / "logs" / f"supernode-{i}.log").read_text()
        assert "warm executor for 127.0.0.1:" in log
        assert "Start `flwr-clientapp` process" not in log


@pytest.mark.slow
@pytest.mark.deploy
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


@pytest.mark.slow
@pytest.mark.deploy
def test_flower_own_supernodes_give_the_same_run(federation, tmp_path) -> None:
    """``up(clientapp="subprocess", node_poll=0)``: Flower's SuperNode unchanged (its
    SuperExec starts ``flwr-clientapp`` per message); same history as the kit's default."""
    root = tmp_path / "flower-nodes"
    state = deploy.up(root, nodes=4, clientapp="subprocess", node_poll=0)
    try:
        results = tmp_path / "results"
        proc = subprocess.run(
            run_command(root, results, {"num-iterations": 2}),
            env=deploy.flower_env(root / "flwr-home"),
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stdout[-3000:]
        logs = [(root / "logs" / f"supernode-{i}.log").read_text() for i in range(4)]
    finally:
        stop_and_check(root, state)
    history = read_history(next(results.glob("*-flower-q-gadmm")) / "history.jsonl")
    cfg = RunConfig.from_run_config({**SETTINGS, "encrypt": True, "num-iterations": 2})
    expected = run_from_config(cfg, least_squares_solvers(experiment_datasets(cfg)))
    for got, want in zip(history, expected.history, strict=True):
        assert {k: got[k] for k in want} == pytest.approx(want, rel=1e-9)
    for log in logs:
        assert "Start `flwr-clientapp` process" in log and "warm executor" not in log


# ---------------------------------------------------------------- node side, fast
def test_supernode_commands() -> None:
    args = ("127.0.0.1:9092", Path("ca.crt"), Path("key"), 1, 4, 9100)
    plain = deploy.supernode_command(*args)
    assert plain[0] == str(deploy.BIN / "flower-supernode") and "--isolation" not in plain
    assert plain == deploy.supernode_command(*args, clientapp="subprocess", node_poll=0)
    warm = deploy.supernode_command(*args, clientapp="warm", node_poll=0.2)
    assert warm[:4] == [sys.executable, "-m", "flower_qgadmm.deploy", "supernode"]
    assert warm[4:8] == ["--poll", "0.2", "--warm-clientapp", "--"]
    assert warm[8:] == [*plain[1:], "--isolation", "process"]
    polled = deploy.supernode_command(*args, clientapp="subprocess", node_poll=0.5)
    assert polled[4:7] == ["--poll", "0.5", "--"] and polled[7:] == plain[1:]
    with pytest.raises(ValueError, match="clientapp"):
        deploy.supernode_command(*args, clientapp="thread")


def test_node_waits_shorten_idle_sleeps_and_reply_checks(monkeypatch) -> None:
    slept: list[float] = []
    fake = SimpleNamespace(sleep=slept.append, monotonic=lambda: 42.0)
    monkeypatch.setattr(supernode, "time", fake)
    waits = supernode._NodeWaits(poll=0.05)
    for _ in range(6):
        waits.sleep(3)  # Flower's idle sleep
    assert slept[0] == supernode.FIRST_POLL and max(slept) == 0.05
    assert slept == sorted(slept)  # growing, capped
    waits.sleep(0.5)  # waiting for the ClientApp's reply
    assert slept[-1] == supernode.REPLY_POLL
    waits.sleep(3)  # served a message: pull soon again
    assert slept[-1] == supernode.FIRST_POLL
    assert waits.monotonic() == 42.0  # everything else is the time module


def test_backoff_grows_to_the_poll_during_a_run_and_to_a_second_when_idle() -> None:
    now = [0.0]
    backoff = supernode.Backoff(poll=0.2, clock=lambda: now[0])
    waits = []
    for _ in range(12):  # a run in progress: nothing for a moment
        waits.append(backoff.next())
        now[0] += waits[-1]
    assert waits[0] == supernode.FIRST_POLL and max(waits) == 0.2 == waits[-1]
    assert waits == sorted(waits)
    now[0] = supernode.IDLE_AFTER  # idle for that long: the waits grow on to IDLE_POLL
    later = [backoff.next() for _ in range(20)]
    assert later[0] == 0.2 and later == sorted(later)
    assert max(later) == supernode.IDLE_POLL == later[-1]
    backoff.reset()  # a message came: poll soon, and within a run again
    assert backoff.next() == supernode.FIRST_POLL
    now[0] += supernode.IDLE_AFTER - 1.0
    assert max(backoff.next() for _ in range(30)) == 0.2
    # a poll above IDLE_POLL (Flower's own 3 s) is never shortened by idleness
    slow = supernode.Backoff(poll=3.0, clock=lambda: now[0])
    now[0] += 2 * supernode.IDLE_AFTER
    assert max(slow.next() for _ in range(30)) == 3.0


def test_shorten_waits_on_this_flower(monkeypatch) -> None:
    from flwr.supernode import start_client_internal as loop
    from flwr.supernode.runtime import run_clientapp as task

    monkeypatch.setattr(loop, "time", loop.time)  # restored after the test
    monkeypatch.setattr(loop, "pull_objects", loop.pull_objects)
    monkeypatch.setattr(
        task, "pull_and_inflate_object_from_tree", task.pull_and_inflate_object_from_tree
    )
    monkeypatch.setattr(loop, "_push_messages", loop._push_messages)
    assert supernode.shorten_supernode_waits(0.2)
    assert isinstance(loop.time, supernode._NodeWaits) and loop.time.poll == 0.2
    # serving a message (pushing its reply) resets the node's backoff
    backoff = loop.time.backoff
    backoff.wait, backoff.since = 0.2, -100.0
    with pytest.raises(AttributeError):  # Flower's push, given no node state
        loop._push_messages(state=None, object_store=None, send=None, push_object=None)
    assert backoff.wait == supernode.FIRST_POLL and backoff.since > 0
    first, cap = supernode.PULL_BACKOFF
    tries = supernode.pull_tries(supernode.PULL_BACKOFF, supernode.PULL_PATIENCE)
    assert tries == 500  # Flower's count: the node's patience is what it was
    assert loop.pull_objects.keywords == {
        "initial_backoff": first,
        "backoff_cap": cap,
        "max_tries_per_object": tries,
    }
    assert not supernode.shorten_supernode_waits(0.2)  # only once: time is no longer time
    assert supernode._short_backoff(task, "pull_and_inflate_object_from_tree")
    assert task.pull_and_inflate_object_from_tree.keywords["initial_backoff"] == first
    assert not supernode._short_backoff(SimpleNamespace(f=lambda x: x), "f")


def test_clientapp_env_is_set_unless_chosen() -> None:
    environ = {"PATH": "/bin"}
    assert supernode.clientapp_env(environ) == ["OMP_WAIT_POLICY"]
    assert environ == {"PATH": "/bin", "OMP_WAIT_POLICY": "PASSIVE"}
    mine = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert supernode.clientapp_env(mine) == [] and mine == {"OMP_WAIT_POLICY": "ACTIVE"}


@pytest.mark.slow
def test_clientapp_env_gives_the_same_numbers(tmp_path) -> None:
    """A few solver steps of the digits MLP in a process with the warm executor's
    CLIENTAPP_ENV and in one without: the same bytes."""
    script = (
        "import sys, numpy as np\n"
        "from flower_qgadmm.config import RunConfig\n"
        "from flower_qgadmm.image_task import image_solver, load_task_data\n"
        "cfg = RunConfig.of(task='digits', algorithm='q-sgadmm', num_workers=4)\n"
        "data, out = load_task_data(cfg), []\n"
        "for w in range(2):\n"
        "    s = image_solver(cfg, w, data)\n"
        "    t = s.initial()\n"
        "    for k in range(3):\n"
        "        t = s.solve(np.full_like(t, 0.01), 1.0, t, (0, w, k))\n"
        "        out += [t, [s.objective(t)], list(s.evaluate(t).values())]\n"
        "np.save(sys.argv[1], np.concatenate([np.ravel(a) for a in out]))\n"
    )
    saved = []
    for extra in ({}, supernode.CLIENTAPP_ENV):
        env = {k: v for k, v in os.environ.items() if k not in supernode.CLIENTAPP_ENV}
        path = tmp_path / f"out{len(saved)}.npy"
        subprocess.run(
            [sys.executable, "-c", script, str(path)],
            env={**env, **extra, "FLOWER_QGADMM_CACHE": "off"},
            check=True,
            cwd=ROOT,
            timeout=300,
        )
        saved.append(np.load(path))
    assert saved[0].tobytes() == saved[1].tobytes()


def test_fab_carries_only_the_apps_code() -> None:
    """pyproject's fab-include: the FAB every ClientApp message unzips and hash-checks
    holds the package and the experiment's apps, not docs, tests or benchmarks."""
    import io
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    names = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(ROOT))).namelist()
    assert {"clients/experiment/server_app.py", "clients/experiment/client_app.py"} <= set(names)
    assert "flower_qgadmm/flower/client.py" in names and "flower_qgadmm/__init__.py" in names
    for name in names:
        top = name.split("/")[0]
        assert name in ("pyproject.toml", ".info/CONTENT") or top in ("flower_qgadmm", "clients")
        assert name.endswith((".py", ".toml", "CONTENT")) and "torch_example" not in name
    packaged = {p.relative_to(ROOT).as_posix() for p in (ROOT / "flower_qgadmm").rglob("*.py")}
    assert packaged <= set(names)


def test_bench_anatomy_splits_an_exchange(tmp_path) -> None:
    """benchmarks/bench_deployment.anatomy on a hand-written pair of logs."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_deployment as bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    def stamp(second: float) -> str:
        return f"2026-12-01 12:00:{int(second):02d},{round(second % 1 * 1000):03d}"

    (tmp_path / "superlink.log").write_text(
        f"DEBUG {stamp(1.0)}:     Runtime.PushMessages\n"
        f"DEBUG {stamp(9.0)}:     Runtime.PushMessages\n"
    )
    marks = [
        (1.5, "INFO", "Receiving: train.step message (ID: x)"),
        (2.0, "INFO", "Received successfully"),
        (3.0, "DEBUG", "[flwr-clientapp] Start FAB installation."),
        (3.25, "DEBUG", "[flwr-clientapp] Start `ClientApp` Loading."),
        (5.25, "DEBUG", "Runtime.PushMessages"),
        (5.5, "INFO", "Sending: train.step message (ID: y)"),
        (6.0, "INFO", "Sent successfully"),
    ]
    lines = [f"\x1b[92m{level} {stamp(t)}\x1b[0m:      {text}" for t, level, text in marks]
    lines.insert(1, "import time:      100 |     400000 | flwr")  # before the FAB
    lines.insert(5, "import time:      100 |    1500000 | torch")  # app loading
    lines.insert(6, "import time:      100 |    9000000 |   torch.nested")  # not top-level
    (tmp_path / "supernode-0.log").write_text("\n".join(lines) + "\n")
    split = bench.anatomy(tmp_path, since=0)
    expected = {
        "wait": 0.5,
        "pull": 0.5,
        "start": 1.0,
        "flwr_imports": 0.4,
        "fab": 0.25,
        "app_imports": 1.5,
        "handler": 0.5,
        "reply_wait": 0.25,
        "push": 0.5,
        "server": 3.0,
        "exchange": 8.0,
        "exchanges": 1,
    }
    assert split == pytest.approx(expected)


def test_down_leaves_a_reused_pid_alone_and_needs_a_deployment(tmp_path) -> None:
    # Prepare: a process in its own group standing for one `up` started, recorded with
    # a wrong start time (its pid was taken over by another process since)
    import json

    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        start = deploy.read_proc(proc.pid).start
        state = {"pids": {"superlink": proc.pid}, "starts": {"superlink": start + 1}}
        (tmp_path / "deployment.json").write_text(json.dumps(state))
        # Execute / Assert: not ours, not signalled
        assert deploy.down(tmp_path, timeout=1.0) == []
        assert proc.poll() is None
        # the recorded start time: ours, stopped
        state["starts"]["superlink"] = start
        (tmp_path / "deployment.json").write_text(json.dumps(state))
        assert deploy.down(tmp_path, timeout=5.0) == [proc.pid]
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(FileNotFoundError, match="no deployment in .*nothing to stop"):
        deploy.down(tmp_path / "nowhere")


def test_down_stops_descendants_in_other_sessions_and_up_refuses_a_running_deployment(
    tmp_path,
) -> None:
    # Prepare: a "SuperLink" in its own session that starts a child in another session
    # (as Flower's SuperLink starts its SuperExec and ServerApp), recorded as `up` does
    import json

    child_pid = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "c = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
        f"open({str(child_pid)!r}, 'w').write(str(c.pid))\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    child = None
    try:
        deadline = time.monotonic() + 20
        while not child_pid.exists() or not child_pid.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        child = int(child_pid.read_text())
        start = deploy.read_proc(proc.pid).start
        state = {"pids": {"superlink": proc.pid}, "starts": {"superlink": start}}
        (tmp_path / "deployment.json").write_text(json.dumps(state))
        # Execute / Assert: a second `up` in the same folder is refused, nothing touched
        with pytest.raises(RuntimeError, match=r"still running \(superlink"):
            deploy.up(tmp_path, 2)
        assert not (tmp_path / "certs").exists()
        # a leader whose recorded start time is not its own (its pid reused since): its
        # descendants are not ours either
        assert deploy._descendant_groups({proc.pid: start + 1}) == set()
        assert deploy._descendant_groups({proc.pid: start}) == {child}
        # `down` stops the leader and its descendant in the other session
        assert deploy.down(tmp_path, timeout=5.0) == [proc.pid]
        assert proc.wait(timeout=10) == -signal.SIGTERM
        deadline = time.monotonic() + 10
        while (p := deploy.read_proc(child)) is not None and p.state not in ("Z", "X"):
            assert time.monotonic() < deadline, "the descendant in another session survived"
            time.sleep(0.05)
    finally:
        for pid in (proc.pid, child):
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        proc.wait()


def test_up_refuses_ports_in_use_before_starting_anything(tmp_path) -> None:
    # A SuperLink port another process answers on (another deployment's SuperLink): `up`
    # started its own SuperLink, which failed to bind, and registered the keys with the
    # other one ("registering ... failed: Connection to the SuperLink is unavailable")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        try:
            with pytest.raises(RuntimeError, match=rf"{port} \(--port\).*leave --port"):
                deploy.up(tmp_path, 2, port=port)
            assert not (tmp_path / "deployment.json").exists()  # nothing started
            with pytest.raises(RuntimeError, match=rf"{port} \(--node-port\)"):
                deploy.up(tmp_path, 2, port=deploy.free_port(), node_port=port - 1)
            assert not (tmp_path / "deployment.json").exists()
        finally:
            if (tmp_path / "deployment.json").exists():  # the old code started a SuperLink
                deploy.down(tmp_path, timeout=5.0)


def test_up_needs_two_nodes_and_keys_a_count(tmp_path, capsys) -> None:
    # `up --nodes 1` (or 0) started a SuperLink and printed a `flwr run` line that fails
    # (num-workers=1); `keys --count 0` wrote nothing and said so as a success
    for nodes in (1, 0, -3):
        try:
            code = deploy.main(["up", "--dir", str(tmp_path / "d"), "--nodes", str(nodes)])
        finally:
            if (tmp_path / "d" / "deployment.json").exists():  # the old code started it
                deploy.down(tmp_path / "d", timeout=5.0)
        assert code == 2
        assert f"nodes must be an integer >= 2 (a run needs 2 workers), got {nodes}" in (
            capsys.readouterr().err
        )
        assert not (tmp_path / "d").exists()  # nothing written, nothing started
    for command in ("keys", "worker-keys"):
        with pytest.raises(SystemExit) as exit_:
            deploy.main([command, "--dir", str(tmp_path / "k"), "--count", "0"])
        assert exit_.value.code == 2
        assert "--count must be >= 1, got 0" in capsys.readouterr().err


def test_up_that_fails_midway_stops_what_it_started(tmp_path, monkeypatch) -> None:
    # `up` failing after its SuperLink started (a registration refused, a SuperLink slow
    # to listen: TimeoutError) left the SuperLink running and said nothing about it
    listener = (
        "import socket, sys, time\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); time.sleep(60)\n"
    )
    monkeypatch.setattr(
        deploy,
        "superlink_command",
        lambda certs, port, database: [sys.executable, "-c", listener, str(port)],
    )

    def refuse(home, public_key):
        raise RuntimeError(f"registering {public_key} failed: refused")

    monkeypatch.setattr(deploy, "register", refuse)
    try:
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=r"failed: refused\n`up` stopped the processes"):
            deploy.up(tmp_path, 2, port=deploy.free_port())
        assert time.monotonic() - t0 < 15  # its own child reaped: no wait for a zombie
        import json

        pid = json.loads((tmp_path / "deployment.json").read_text())["pids"]["superlink"]
        proc = deploy.read_proc(pid)
        assert proc is None or proc.state in ("Z", "X"), "the SuperLink was left running"
        assert deploy._running(tmp_path) == []  # a second `up` is not refused
    finally:
        if deploy._running(tmp_path):
            deploy.down(tmp_path, timeout=5.0)


def test_down_reports_only_what_was_running(tmp_path, capsys) -> None:
    # a second `down` (or one after the processes died) said "stopped [<pids>]" for
    # processes that were gone already
    import json

    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    start = deploy.read_proc(proc.pid).start
    proc.kill()
    proc.wait()
    state = {"pids": {"superlink": proc.pid}, "starts": {"superlink": start}}
    (tmp_path / "deployment.json").write_text(json.dumps(state))
    assert deploy.down(tmp_path, timeout=1.0) == []
    assert deploy.main(["down", "--dir", str(tmp_path)]) == 0
    assert "stopped nothing: no process of it was running" in capsys.readouterr().out


def test_up_refuses_a_superlink_port_among_the_supernodes_ports(tmp_path, capsys) -> None:
    # `up --port 48201 --node-port 48200 --nodes 2` started everything and returned 0;
    # SuperNode 1 then failed to bind 48201 (the SuperLink's) and exited ("SuperNode
    # Runtime HTTP API failed to start"); a port past 65535 raised OverflowError
    refused = {
        (48201, 48200, 2): "--port 48201 is also SuperNode 1's port (--node-port 48200 gives "
        "the 2 SuperNodes 48200-48201): choose a --port outside that range",
        (48200, 48200, 4): "--port 48200 is also SuperNode 0's port",
        (48203, 48200, 4): "--port 48203 is also SuperNode 3's port",
        (48200, 65535, 2): "--node-port 65535 with 2 SuperNodes needs ports 65535-65536, past "
        "65535: choose --node-port <= 65534",
        (70000, 0, 2): "--port must be a TCP port 1-65535 (0: a free one), got 70000",
        (0, -1, 2): "--node-port must be a TCP port 1-65535 (0: a free one), got -1",
    }
    for (port, node_port, nodes), message in refused.items():
        root = tmp_path / f"d{port}-{node_port}-{nodes}"
        argv = ["up", "--dir", str(root), "--nodes", str(nodes), "--port", str(port)]
        try:
            code = deploy.main([*argv, "--node-port", str(node_port)])
        finally:
            if (root / "deployment.json").exists():  # the old code started it
                deploy.down(root, timeout=5.0)
        assert code == 2
        assert message in capsys.readouterr().err
        assert not root.exists()  # nothing written, nothing started
    deploy.check_ports(48202, 48200, 2)  # next to the range: fine
    deploy.check_ports(48199, 48200, 2)
    deploy.check_ports(48200, 0, 2)


def test_up_gives_every_process_its_own_free_port(tmp_path, monkeypatch) -> None:
    # free ports were picked one at a time: the system may hand out again a port given
    # to a SuperNode that does not listen yet, or (with --node-port) one of the
    # SuperNodes' ports to the SuperLink
    offered = iter([48210, 48210, 48211, 48211, 48210, 48212, 48212, 48213])

    class Socket:  # bind(("127.0.0.1", 0)) gets the next port offered
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def bind(self, address):
            self.port = next(offered)

        def getsockname(self):
            return ("127.0.0.1", self.port)

    commands = []
    monkeypatch.setattr(deploy.socket, "socket", Socket)
    monkeypatch.setattr(deploy, "port_in_use", lambda port: False)
    monkeypatch.setattr(deploy, "wait_started", lambda *args, **kwargs: None)
    monkeypatch.setattr(deploy, "register", lambda home, public: None)
    monkeypatch.setattr(deploy, "make_certificates", lambda certs: None)
    fake = SimpleNamespace(pid=2**31 - 1, poll=lambda: None)  # no such process
    monkeypatch.setattr(deploy, "start", lambda cmd, *a: commands.append(cmd) or fake)

    def ports() -> list[int]:
        out = [int(commands[0][commands[0].index("--port") + 1])]
        for cmd in commands[1:]:
            out.append(int(cmd[len(cmd) - 1 - cmd[::-1].index("--port") + 1]))
        commands.clear()
        return out

    deploy.up(tmp_path / "a", 3)  # SuperLink, then each SuperNode its own port
    assert ports() == [48210, 48211, 48212, 48213]
    offered = iter([48220, 48221, 48222, 48223])
    deploy.up(tmp_path / "b", 3, node_port=48220)  # the SuperLink outside 48220-48222
    assert ports() == [48223, 48220, 48221, 48222]


def test_up_names_a_process_that_exits_at_start(tmp_path, monkeypatch) -> None:
    # a SuperNode that exited at start (its port taken, a crash) left `up` saying all
    # was well (code 0; the run then waited for it); a SuperLink that exited before
    # listening took 30 s and said only "nothing listens on 127.0.0.1:<port>"
    listener = (
        "import socket, sys, time\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); time.sleep(60)\n"
    )
    crash = "import sys; print('RuntimeError: HTTP API failed to start.'); sys.exit(3)"

    def node_command(superlink, ca, key, partition, partitions, port, **kwargs):
        if partition == 1:
            return [sys.executable, "-c", crash]
        return [sys.executable, "-c", listener, str(port)]

    monkeypatch.setattr(deploy, "register", lambda home, public_key: None)
    monkeypatch.setattr(deploy, "supernode_command", node_command)
    for crashing in ("SuperNode 1", "the SuperLink"):
        root = tmp_path / crashing.replace(" ", "-")
        link = [sys.executable, "-c", crash] if crashing == "the SuperLink" else None

        def link_command(certs, port, database, link=link):
            return link or [sys.executable, "-c", listener, str(port)]

        monkeypatch.setattr(deploy, "superlink_command", link_command)
        log = "superlink.log" if link else "supernode-1.log"
        try:
            t0 = time.monotonic()
            with pytest.raises(RuntimeError) as failure:
                deploy.up(root, 3, port=deploy.free_port())
            assert time.monotonic() - t0 < 25
            assert (
                f"{crashing} exited (code 3); the end of {root / 'logs' / log}:\n"
                "RuntimeError: HTTP API failed to start.\n`up` stopped the processes"
            ) in str(failure.value)
            assert deploy._running(root) == []
        finally:
            if deploy._running(root):
                deploy.down(root, timeout=5.0)


def test_status_says_what_still_runs_and_a_broken_record_is_named(tmp_path, capsys) -> None:
    # there was no `deploy status` (only `ps`), and `down` on a deployment.json that is
    # not up's record (a hand edit, ...) ended in a traceback (JSONDecodeError,
    # AttributeError)
    import json
    import re

    running = subprocess.Popen(["sleep", "60"], start_new_session=True)
    gone = subprocess.Popen(["sleep", "60"], start_new_session=True)
    starts = {"superlink": deploy.read_proc(running.pid).start}
    starts["supernode-0"] = deploy.read_proc(gone.pid).start
    gone.kill()
    gone.wait()
    state = {"address": "127.0.0.1:9", "pids": {"superlink": running.pid, "supernode-0": gone.pid}}
    (tmp_path / "deployment.json").write_text(json.dumps({**state, "starts": starts}))
    try:
        assert deploy.main(["status", "--dir", str(tmp_path)]) == 1
        out = capsys.readouterr().out
        assert out.startswith(f"SuperLink 127.0.0.1:9 ({tmp_path})")
        # the role and the port follow each line since `status` prints them (an older
        # record without ports: the SuperLink's from its address)
        assert re.search(rf"superlink +SuperLink +pid {running.pid} +running +127.0.0.1:9 ", out)
        assert re.search(rf"supernode-0 +SuperNode 0/1 +pid {gone.pid} +not running +port not", out)
        assert "1 of 2 not running: see" in out
    finally:
        running.kill()
        running.wait()
    assert deploy.main(["status", "--dir", str(tmp_path)]) == 1
    assert "none running (stopped, or exited): `deploy up --dir" in capsys.readouterr().out
    for broken in ("{not json", "[1]", '{"pids": {"superlink": "x"}}'):
        (tmp_path / "deployment.json").write_text(broken)
        for command in ("down", "status"):
            assert deploy.main([command, "--dir", str(tmp_path)]) == 2
            err = capsys.readouterr().err
            assert f"{tmp_path / 'deployment.json'} is not the record `up` writes" in err
    assert deploy.main(["status", "--dir", str(tmp_path / "none")]) == 2
    assert "no deployment in" in capsys.readouterr().err


def test_an_interrupted_save_keeps_the_last_record(tmp_path, monkeypatch) -> None:
    # `up` saves deployment.json after each process it starts; a Ctrl-C in the middle of
    # a write left half a file, and `down` (up's own clean-up too) could not read it
    import json

    deploy._save(tmp_path, {"pids": {"superlink": 1}})
    write = Path.write_text

    def interrupted(self, text, *args, **kwargs):
        write(self, text[: len(text) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        deploy._save(tmp_path, {"pids": {"superlink": 1, "supernode-0": 2}})
    monkeypatch.undo()
    assert json.loads((tmp_path / "deployment.json").read_text()) == {"pids": {"superlink": 1}}


def test_up_and_the_supernode_launcher_refuse_a_poll_that_is_no_wait(tmp_path, capsys) -> None:
    # `up --node-poll -1` (or nan) silently ran Flower's 3 s waits, `inf` let a SuperNode's
    # idle wait grow without end; `executor --poll 0` would poll in a busy loop
    for poll in ("-1", "nan", "inf"):
        root = tmp_path / f"d{poll}"
        try:
            code = deploy.main(["up", "--dir", str(root), "--nodes", "2", "--node-poll", poll])
        finally:
            if (root / "deployment.json").exists():  # the old code started it
                deploy.down(root, timeout=5.0)
        assert code == 2
        assert "node_poll (--node-poll) must be >= 0 seconds (0: Flower's 3 s), got" in (
            capsys.readouterr().err
        )
        assert not root.exists()
    for argv in (["supernode", "--poll", "-1"], ["executor", "--runtime-api-address", "x:1"]):
        with pytest.raises(SystemExit) as exit_:
            deploy.main(argv if argv[0] == "supernode" else [*argv, "--poll", "0"])
        assert exit_.value.code == 2
        assert "--poll must be" in capsys.readouterr().err


def _bench_deployment():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_deployment
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return bench_deployment


def test_bench_pair_ratios() -> None:
    """benchmarks/bench_deployment.pair_ratios: the ratio of each pair's medians (runs made
    at the same time), not of rounds pooled over runs minutes apart; unpaired lists refused."""
    bench = _bench_deployment()
    # the load doubled between the two pairs: the pooled medians would say 1.5x (7.5 / 5)
    gossip = [[2.0, 3.0, 2.5], [9.0, 10.0, 11.0]]
    fedavg = [[2.5, 2.5, 2.5], [10.0, 11.0, 12.0]]
    assert bench.pair_ratios(gossip, fedavg) == pytest.approx([1.0, 10.0 / 11.0])
    with pytest.raises(ValueError, match="2 runs against 1 baseline runs"):
        bench.pair_ratios(gossip, fedavg[:1])


def test_bench_paired_mode_runs_each_target_beside_fedavg(tmp_path, monkeypatch) -> None:
    """BENCH_DEPLOYMENT_PAIRED=1: two deployments per config; each target algorithm runs at
    the same time as FedAvg on the other deployment, then swapped; its ratio is the median
    of the pairs' ratios, whatever the load of each pair."""
    import threading

    bench = _bench_deployment()
    monkeypatch.setenv("BENCH_DEPLOYMENT_PAIRED", "1")
    monkeypatch.setenv("BENCH_DEPLOYMENT_CONFIGS", "ours")
    monkeypatch.setenv("BENCH_DEPLOYMENT_REPEATS", "2")
    monkeypatch.setenv("BENCH_DEPLOYMENT_DIR", str(tmp_path))
    monkeypatch.setattr(bench, "_up", lambda config, root, index: None)
    base = {"q-sgadmm": 3.0, "d-psgd": 1.8, "fedavg": 2.0}
    lock, together = threading.Lock(), threading.Barrier(2)
    calls: list[tuple[int, str, str]] = []

    def fake_run(root, settings, env=None, rounds=bench.ROUNDS, app=bench.ROOT):
        with lock:
            pair = len(calls) // 2  # pairs run one after the other
            calls.append((pair, root.name, settings["algorithm"]))
        together.wait(timeout=10)  # both runs of a pair are in flight at once
        load = 1.0 + pair  # the machine's load grows from pair to pair
        steady = [base[settings["algorithm"]] * load] * 4
        return steady[0], steady

    monkeypatch.setattr(bench, "_flwr_run", fake_run)
    rows = {r["name"]: r for r in bench.run()}
    pairs: dict[int, set] = {}
    for pair, root, name in calls:
        pairs.setdefault(pair, set()).add((root, name))
    assert pairs == {
        0: {("ours", "q-sgadmm"), ("ours-b", "fedavg")},
        1: {("ours-b", "q-sgadmm"), ("ours", "fedavg")},
        2: {("ours", "d-psgd"), ("ours-b", "fedavg")},
        3: {("ours-b", "d-psgd"), ("ours", "fedavg")},
        4: {("ours", "q-sgadmm"), ("ours-b", "fedavg")},
        5: {("ours-b", "q-sgadmm"), ("ours", "fedavg")},
        6: {("ours", "d-psgd"), ("ours-b", "fedavg")},
        7: {("ours-b", "d-psgd"), ("ours", "fedavg")},
    }
    label = bench.LABELS["ours"]
    gossip = rows[f"d-psgd round / FedAvg round, {label}"]
    assert gossip["measured"] == pytest.approx(0.9) and gossip["ok"]
    assert "median of 4 concurrent pairs" in gossip["note"]
    assert "per-pair ratios 0.90-0.90" in gossip["note"]
    assert rows[f"q-sgadmm round / FedAvg round, {label}"]["measured"] == pytest.approx(1.5)
    assert (
        "(runs concurrent with another algorithm's, 8 runs)"
        in (rows[f"fedavg round, {label}"]["note"])
    )


def test_clientapp_child_retries_its_input_every_50ms_at_most(monkeypatch, retry_clock) -> None:
    """A forked ClientApp child asks its SuperNode for a task input object not there yet
    after 10, 20, 40 ms, then every 50 ms (was: doubling to 1 s, so the child got its
    input a median 0.31 s after its SuperNode had it); an object that never comes still
    fails after about PULL_PATIENCE seconds of waits, as before (500 tries of 1 s).
    Flower's retry loop runs with its waits recorded instead of waited (no real time)."""
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, ObjectUnavailableError
    from flwr.supernode.runtime import run_clientapp as task

    waits = retry_clock.waits
    monkeypatch.setattr(
        task, "pull_and_inflate_object_from_tree", task.pull_and_inflate_object_from_tree
    )
    seen = {}

    def run_clientapp(**kwargs) -> None:  # what the child runs, given its token
        seen["pull"] = task.pull_and_inflate_object_from_tree

    monkeypatch.setattr(task, "run_clientapp", run_clientapp)
    assert supernode._serve_task("127.0.0.1:1", "token", os.getpid()) == 0
    keywords = seen["pull"].keywords
    assert (keywords["initial_backoff"], keywords["backoff_cap"]) == supernode.TASK_BACKOFF
    misses = [15]

    def pull(object_id: str) -> bytes:
        if misses[0]:
            misses[0] -= 1
            raise ObjectUnavailableError(object_id)
        return b"x"

    options = {k: v for k, v in keywords.items() if k != "max_concurrent_pulls"}
    assert inflatable_utils.pull_objects(["o"], pull, **options) == {"o": b"x"}
    assert waits == pytest.approx([0.01, 0.02, 0.04] + [0.05] * 12)
    waits.clear()

    def never(object_id: str) -> bytes:
        raise ObjectUnavailableError(object_id)

    with pytest.raises(ObjectPullError):
        inflatable_utils.pull_objects(["o"], never, **options)
    assert max(waits) == pytest.approx(0.05)
    assert supernode.PULL_PATIENCE <= sum(waits) < supernode.PULL_PATIENCE + 0.1


NO_PROCESS = SimpleNamespace(pid=2**31 - 1, poll=lambda: None)  # a pid no process has


def fake_processes(monkeypatch, start=lambda cmd, *args: NO_PROCESS) -> None:
    """`up` without processes, certificates, registrations or port checks: ``start``
    stands for starting each process."""
    monkeypatch.setattr(deploy, "port_in_use", lambda port: False)
    monkeypatch.setattr(deploy, "wait_started", lambda *args, **kwargs: None)
    monkeypatch.setattr(deploy, "register", lambda home, public: None)
    monkeypatch.setattr(deploy, "make_certificates", lambda certs: None)
    monkeypatch.setattr(deploy, "start", start)


def test_status_prints_each_process_role_and_port(tmp_path, monkeypatch, capsys) -> None:
    """`deploy status` printed names, pids and states only: which port the SuperLink
    (Fleet, Control and ServerAppIo APIs on one TLS port, flwr 1.42) and each SuperNode
    (its runtime API) listen on had to be looked up in the `up` output or with `ss`.
    `up` now records the ports in deployment.json and `status` prints them, saying so
    when a running process does not answer on its port."""
    import json
    import re

    # Prepare: `up` with every process faked, to see what it records
    fake_processes(monkeypatch)
    deploy.up(tmp_path, 2, port=49291, node_port=49292)
    record = json.loads((tmp_path / "deployment.json").read_text())
    assert record["ports"] == {"superlink": 49291, "supernode-0": 49292, "supernode-1": 49293}
    monkeypatch.undo()
    # a SuperLink that runs and listens, a SuperNode that runs but does not answer, one
    # that stopped
    link = subprocess.Popen(["sleep", "60"], start_new_session=True)
    mute = subprocess.Popen(["sleep", "60"], start_new_session=True)
    with socket.socket() as listening, socket.socket() as closed:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        closed.bind(("127.0.0.1", 0))  # bound, not listening: nothing answers
        port, silent = listening.getsockname()[1], closed.getsockname()[1]
        pids = {"superlink": link.pid, "supernode-0": mute.pid, "supernode-1": 2**31 - 1}
        ports = {"superlink": port, "supernode-0": silent, "supernode-1": 49293}
        starts = {name: None for name in pids}
        state = {"address": f"127.0.0.1:{port}", "pids": pids, "ports": ports, "starts": starts}
        (tmp_path / "deployment.json").write_text(json.dumps(state))
        try:
            # Execute
            code = deploy.main(["status", "--dir", str(tmp_path)])
        finally:
            for proc in (link, mute):
                proc.kill()
                proc.wait()
    # Assert
    out = capsys.readouterr().out
    assert code == 1  # one stopped
    assert re.search(
        rf"superlink +SuperLink +pid {link.pid} +running +127.0.0.1:{port} "
        r"\(Fleet, Control and ServerAppIo APIs, TLS\)\n",
        out,
    )
    assert re.search(
        rf"supernode-0 +SuperNode 0/2 +pid {mute.pid} +running +127.0.0.1:{silent} "
        r"\(its ClientApps' runtime API\), not answering\n",
        out,
    )
    assert re.search(
        r"supernode-1 +SuperNode 1/2 +pid \d+ +not running +127.0.0.1:49293 "
        r"\(its ClientApps' runtime API\)\n",
        out,
    )


def test_up_starts_the_superlink_on_a_fresh_database(tmp_path, monkeypatch) -> None:
    """A second `up` in a folder started its SuperLink on the first one's state.db,
    which still listed the old SuperNodes as online (until their heartbeat expired)
    beside the new ones. Now the database and SQLite's files beside it are removed
    before the SuperLink starts; nothing else of the folder is."""
    # Prepare: what an earlier deployment left in the folder
    for name in ("state.db", "state.db-wal", "state.db-shm", "state.db-journal"):
        (tmp_path / name).write_text("the last deployment's nodes")
    (tmp_path / "results").mkdir()
    seen = {}

    def start(cmd, log, env, cwd):
        if "superlink" in log.name:  # what the SuperLink finds at its start
            database = Path(cmd[cmd.index("--database") + 1])
            seen["database"] = database
            seen["left"] = sorted(p.name for p in tmp_path.glob("state.db*"))
        return NO_PROCESS

    fake_processes(monkeypatch, start)
    # Execute
    deploy.up(tmp_path, 2)
    # Assert
    assert seen == {"database": tmp_path.resolve() / "state.db", "left": []}
    assert (tmp_path / "results").is_dir()
