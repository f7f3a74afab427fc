"""``python -m flower_qgadmm.superlink``: finds and stops only the tree of one FLWR_HOME.

Fake SuperLinks: small Python scripts named ``flower-superlink``, ``flower-superexec`` and
``flwr-simulation``, started with the arguments flwr 1.42's ``flwr run`` gives a local
SuperLink (the SuperLink starts the SuperExec in a session of its own, which starts the
simulation). Every process the tests start is killed by pid at the end.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flower_qgadmm import superlink

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("flower-superlink", "flower-superexec", "flwr-simulation")

FAKE = """
import os, signal, socket, subprocess, sys, time
from pathlib import Path

role = Path(sys.argv[0]).name
pids = Path(os.environ["FAKE_PIDS"])
if os.environ.get("FAKE_IGNORE_TERM") == role:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if role == "flower-superlink" and os.environ.get("FAKE_LISTEN"):
    server = socket.socket()
    server.bind(("127.0.0.1", int(sys.argv[sys.argv.index("--port") + 1])))
    server.listen()
nxt = {"flower-superlink": "flower-superexec", "flower-superexec": "flwr-simulation"}.get(role)
if nxt:
    subprocess.Popen(
        [sys.executable, str(Path(sys.argv[0]).with_name(nxt)), "--parent-pid", str(os.getpid())],
        start_new_session=role == "flower-superlink",
    )
# written whole, then renamed: the test polls for the file and must never read it empty
(pids / f"{role}.tmp").write_text(str(os.getpid()))
os.replace(pids / f"{role}.tmp", pids / f"{role}.pid")
time.sleep(120)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def running(pid: int) -> bool:
    """Alive and not a zombie (an exited child its parent has not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


class Fakes:
    """Starts fake process trees and kills whatever is left of them at the end."""

    def __init__(self, tmp: Path):
        self.bin = tmp / "bin"
        self.bin.mkdir()
        for role in ROLES:
            (self.bin / role).write_text(FAKE)
        self.tmp = tmp
        self.popens: list[subprocess.Popen] = []
        self.piddirs: list[Path] = []

    def start(self, args: list[str], env: dict | None = None, cwd: Path | None = None) -> dict:
        """One tree; returns {role: pid} once all three run."""
        piddir = self.tmp / f"pids{len(self.piddirs)}"
        piddir.mkdir()
        self.piddirs.append(piddir)
        env = {**os.environ, **(env or {}), "FAKE_PIDS": str(piddir)}
        cmd = [sys.executable, str(self.bin / "flower-superlink"), *args]
        self.popens.append(subprocess.Popen(cmd, env=env, cwd=cwd, start_new_session=True))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all((piddir / f"{r}.pid").exists() for r in ROLES):
                return {r: int((piddir / f"{r}.pid").read_text()) for r in ROLES}
            time.sleep(0.05)
        raise AssertionError("fake SuperLink tree did not start")

    def cleanup(self) -> None:
        for piddir in self.piddirs:
            for f in piddir.glob("*.pid"):
                pid = int(f.read_text())
                try:  # only if that pid still runs one of our fake scripts
                    ours = str(self.bin).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if ours:
                    os.kill(pid, signal.SIGKILL)
        for p in self.popens:
            p.kill()
            p.wait(timeout=10)


@pytest.fixture
def fakes(tmp_path):
    f = Fakes(tmp_path)
    yield f
    f.cleanup()


def local_args(home: Path | str, port: int = 1, database: bool = True) -> list[str]:
    """The arguments flwr 1.42 starts a local SuperLink with (cli/local_superlink.py)."""
    args = ["--insecure", "--simulation", "--isolation", "subprocess"]
    args += ["--control-api-address", "127.0.0.1:2", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--log-file", f"{home}/local-superlink/superlink.log"]
    args += ["--log-rotation-interval-hours", "24", "--log-rotation-backup-count", "7"]
    return args + (["--database", f"{home}/local-superlink/state.db"] if database else [])


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flower_qgadmm.superlink", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_stop_stops_only_its_own_tree(fakes, tmp_path):
    home_a, home_b = tmp_path / "home-a", tmp_path / "home-b"
    a = fakes.start(local_args(home_a), env={"FLWR_HOME": str(home_a)})
    b = fakes.start(local_args(home_b), env={"FLWR_HOME": str(home_b)})
    # a deployment's SuperLink run from a shell with the same FLWR_HOME: not a local one
    deploy = ["--insecure", "--port", "3", "--database", str(tmp_path / "deploy" / "state.db")]
    d = fakes.start(deploy, env={"FLWR_HOME": str(home_a)})

    out = cli("stop", "--flwr-home", str(home_a), "--timeout", "5")

    assert out.returncode == 0, out.stderr
    for role, pid in a.items():
        assert f"stopped pid {pid} {role} (SIGTERM)" in out.stdout
        assert not running(pid), role
    for pid in [*b.values(), *d.values()]:
        assert running(pid)
        assert f"pid {pid} " not in out.stdout
    again = cli("stop", "--flwr-home", str(home_a))
    assert again.returncode == 0
    assert "no local SuperLink running for FLWR_HOME=" in again.stdout
    assert "nothing to stop" in again.stdout


def test_status_lists_the_superlink_of_flwr_home(fakes, tmp_path):
    home = tmp_path / "home"
    port = free_port()
    # FLWR_HOME relative, as flwr passes it on: resolved against the SuperLink's cwd
    tree = fakes.start(local_args("home", port, database=False), {"FAKE_LISTEN": "1"}, tmp_path)

    out = cli("status", env={"FLWR_HOME": str(home)})  # the default: $FLWR_HOME

    assert out.returncode == 0, out.stderr
    assert f"1 local SuperLink(s) for FLWR_HOME={os.path.realpath(home)}" in out.stdout
    pattern = rf"pid {tree['flower-superlink']}  started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d "
    assert re.search(pattern, out.stdout)
    assert f"http 127.0.0.1:{port}  control 127.0.0.1:2  listening {port}" in out.stdout
    assert f"child pid {tree['flower-superexec']} " in out.stdout
    assert f"child pid {tree['flwr-simulation']} " in out.stdout
    other = cli("status", "--flwr-home", str(tmp_path / "elsewhere"))
    assert other.returncode == 0
    assert "no local SuperLink running for FLWR_HOME=" in other.stdout
    assert all(running(pid) for pid in tree.values())  # status only looks


def test_stop_kills_what_ignores_sigterm(fakes, tmp_path):
    home = tmp_path / "home"
    tree = fakes.start(local_args(home), env={"FAKE_IGNORE_TERM": "flower-superexec"})

    start = time.monotonic()
    out = cli("stop", "--flwr-home", str(home), "--timeout", "1")

    assert out.returncode == 0, out.stderr
    assert time.monotonic() - start < 30
    assert f"stopped pid {tree['flower-superexec']} flower-superexec (SIGKILL)" in out.stdout
    assert f"stopped pid {tree['flower-superlink']} flower-superlink (SIGTERM)" in out.stdout
    assert not any(running(pid) for pid in tree.values())


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["restart"],
        ["status", "--flwr-home", ""],
        ["stop", "--flwr-home", "A_FILE"],
        ["stop", "--timeout", "0"],
        ["stop", "--timeout", "soon"],
        ["status", "--port", "1"],
    ],
)
def test_bad_input_exits_2_with_one_error_line(argv, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("")
    argv = [str(a_file) if a == "A_FILE" else a for a in argv]

    with pytest.raises(SystemExit) as exc:
        superlink.main(argv)

    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1


def test_home_from_arguments():
    def proc(*argv: str) -> superlink.Proc:
        return superlink.Proc(os.getpid(), 1, 0, "S", ("python3", "/v/bin/flower-superlink", *argv))

    assert superlink.superlink_home(proc("--log-file=/h/local-superlink/superlink.log")) == "/h"
    assert superlink.superlink_home(proc("--database", "/h/local-superlink/state.db")) == "/h"
    assert superlink.superlink_home(proc("--database", "/h/state.db")) is None  # not local
    assert superlink.is_superlink(proc())
    assert not superlink.is_superlink(superlink.Proc(1, 0, 0, "S", ("grep", "flower-superlink")))
    assert superlink.option(["--port", "9"], "--port") == "9"
    assert superlink.option(["--port"], "--port") is None


# three SuperLinks whose trees the fake stop_tree "stops"; the first waits until the
# reader of the report has gone away, so every later line meets a closed pipe
BROKEN_PIPE_CHILD = """
import os, sys, time
sys.path.insert(0, {root!r})
from flower_qgadmm import superlink as s
from flower_qgadmm.superlink import Proc, SuperLink
links = [SuperLink(Proc(100 + i, 1, 0, "S", ("flower-superlink",)), "/h") for i in range(3)]
s.find_superlinks = lambda home: links
def fake(link, timeout):
    if link is links[0]:
        while not os.path.exists({gone!r}):
            time.sleep(0.01)
    sys.stderr.write(f"stopped {{link.proc.pid}}\\n")
    sys.stderr.flush()
    return [(link.proc, "SIGTERM")] * 20, []
s.stop_tree = fake
sys.exit(s.stop(s.Path("/h"), 1.0))
"""


def test_stop_goes_on_when_the_reader_of_its_report_goes_away(tmp_path) -> None:
    # Prepare: `python -m flower_qgadmm.superlink stop | head -1`
    gone = tmp_path / "gone"
    child = subprocess.Popen(
        [sys.executable, "-c", BROKEN_PIPE_CHILD.format(root=str(ROOT), gone=str(gone))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Execute: read the first line, close the pipe, let the child go on
    first = child.stdout.readline()
    child.stdout.close()
    gone.touch()
    deadline = time.monotonic() + 60
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    errors = child.stderr.read()
    # Assert: every SuperLink was stopped, and the exit code is stop's
    assert first.startswith("stopping local SuperLink pid 100")
    assert errors.split() == ["stopped", "100", "stopped", "101", "stopped", "102"], errors
    assert child.returncode == 0
