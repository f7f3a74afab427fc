"""Find and stop the local SuperLink that ``flwr run`` started for one ``FLWR_HOME``.

``python -m flower_qgadmm.superlink status|stop [--flwr-home PATH]`` (console script
``flower-qgadmm-superlink``). Linux only: it reads ``/proc``.

How flwr 1.42 starts it (``flwr/cli/local_superlink.py``): a detached
(``start_new_session``) ``flower-superlink --insecure --simulation --isolation subprocess
--control-api-address 127.0.0.1:<control port> --host 127.0.0.1 --port <http port>
--log-file $FLWR_HOME/local-superlink/superlink.log ... [--database
$FLWR_HOME/local-superlink/state.db]``, with the caller's environment. It writes no pid
file; ``flwr run`` finds it again only by probing ``127.0.0.1:<http port>/health``.
So what ties a SuperLink to its ``FLWR_HOME`` is the ``--log-file`` (always given) or
``--database`` argument, resolved against the process's working directory when
relative (Flower does not make ``FLWR_HOME`` absolute). The environment's
``FLWR_HOME`` is not used: every process started from that shell inherits it, a
deployment's ``flower-superlink`` included.

What it leaves running: SuperExec (``flower-superexec --parent-pid <superlink>``, a
child in a session of its own) and, during a run, ``flwr-simulation`` under SuperExec
with Ray's processes (gcs_server, raylet, dashboard, actors) under that. ``stop`` sends
SIGTERM to the SuperLink and every descendant (found through the parent pids in
``/proc``, re-read while waiting), waits, then sends SIGKILL to what is left. A process is
identified by pid and start time, so a pid reused meanwhile is never signalled.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

PROC = Path("/proc")
LOCAL_DIR = "local-superlink"  # flwr 1.42: $FLWR_HOME/local-superlink/{superlink.log,state.db}
HOME_ARGS = {"--log-file": "superlink.log", "--database": "state.db"}
DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Proc:
    """One process as ``/proc`` shows it; ``(pid, start)`` identifies it."""

    pid: int
    ppid: int
    start: int  # clock ticks after boot (field 22 of /proc/<pid>/stat)
    state: str
    argv: tuple[str, ...]
    comm: str = ""  # the kernel's short name (all a zombie has left)

    @property
    def name(self) -> str:
        """The program: the script after a Python interpreter, else argv[0]'s basename."""
        words = [a for a in self.argv if not a.startswith("-")]
        if not words:
            return self.comm or "?"
        first = os.path.basename(words[0])
        if first.startswith("python") and len(words) > 1:
            return os.path.basename(words[1])
        return first


@dataclass
class SuperLink:
    """A local SuperLink process and its descendants."""

    proc: Proc
    home: str
    descendants: list[Proc] = field(default_factory=list)


# ------------------------------------------------------------------------ /proc


def read_proc(pid: int) -> Proc | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        cmdline = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:  # gone, or not ours to read
        return None
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]  # comm may hold spaces and ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    argv = tuple(a.decode(errors="replace") for a in cmdline.split(b"\0")[:-1])
    return Proc(pid, int(fields[1]), int(fields[19]), fields[0], argv, comm)


def processes() -> dict[int, Proc]:
    """Every process readable now, by pid."""
    out = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (p := read_proc(int(entry.name))) is not None:
            out[p.pid] = p
    return out


def _alive(p: Proc) -> bool:
    now = read_proc(p.pid)
    return now is not None and now.start == p.start and now.state not in ("Z", "X")


def descendants(root: int, procs: dict[int, Proc]) -> list[Proc]:
    """The process tree under ``root`` (not included), parents before children."""
    children: dict[int, list[Proc]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p)
    out, todo = [], [root]
    while todo:
        for child in sorted(children.get(todo.pop(0), []), key=lambda c: c.pid):
            out.append(child)
            todo.append(child.pid)
    return out


def _start_time(p: Proc) -> datetime:
    btime = next(
        int(line.split()[1])
        for line in (PROC / "stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    return datetime.fromtimestamp(btime + p.start / os.sysconf("SC_CLK_TCK"))


def listening_ports(pid: int) -> list[int]:
    """TCP ports the process listens on (its socket inodes in ``/proc/net/tcp{,6}``)."""
    try:
        fds = list((PROC / str(pid) / "fd").iterdir())
    except OSError:
        return []
    inodes = set()
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            rows = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


# ------------------------------------------------------------------------ matching


def option(argv: Iterable[str], name: str) -> str | None:
    """The value of ``name`` in ``argv`` (``--name value`` or ``--name=value``)."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1 :]
    return None


def is_superlink(p: Proc) -> bool:
    """``flower-superlink`` as the program or as the script a Python interpreter runs."""
    names = [os.path.basename(a) for a in p.argv[:2]]
    return names[:1] == ["flower-superlink"] or (
        len(names) == 2 and "python" in names[0] and names[1] == "flower-superlink"
    )


def superlink_home(p: Proc) -> str | None:
    """The FLWR_HOME a local SuperLink was started for (from its arguments), or None."""
    for name, filename in HOME_ARGS.items():
        value = option(p.argv, name)
        if value is None:
            continue
        path = Path(value)
        if path.name != filename or path.parent.name != LOCAL_DIR:
            continue
        if not path.is_absolute():  # FLWR_HOME was relative: to the SuperLink's cwd
            try:
                cwd = os.readlink(PROC / str(p.pid) / "cwd")
            except OSError:
                return None
            if cwd.endswith(" (deleted)"):
                return None
            path = Path(cwd) / path
        return os.path.realpath(path.parent.parent)
    return None


def default_home() -> Path:
    """``$FLWR_HOME`` if set and not empty, else ``~/.flwr``: as flwr resolves it."""
    return Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")


def find_superlinks(home: Path | str | None = None) -> list[SuperLink]:
    """Local SuperLinks started for ``home`` (None: every one), with their trees."""
    procs = processes()
    want = None if home is None else os.path.realpath(home)
    found = []
    for p in sorted(procs.values(), key=lambda q: q.pid):
        if p.state in ("Z", "X") or not is_superlink(p):
            continue
        got = superlink_home(p)
        if got is not None and (want is None or got == want):
            found.append(SuperLink(p, got, descendants(p.pid, procs)))
    return found


# ------------------------------------------------------------------------ signals


def _signal(p: Proc, sig: int) -> str | None:
    """Send ``sig`` to ``p`` if it is still that process; an error text, or None."""
    fd = None
    try:
        fd = os.pidfd_open(p.pid)  # pins the process: no pid reuse after this check
    except ProcessLookupError:
        return None
    except (AttributeError, OSError):
        pass
    try:
        if not _alive(p):
            return None
        if fd is None:
            os.kill(p.pid, sig)
        else:
            signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        return None
    except PermissionError:
        return "permission denied"
    finally:
        if fd is not None:
            os.close(fd)
    return None


def stop_tree(link: SuperLink, timeout: float = DEFAULT_TIMEOUT) -> tuple[list, list]:
    """SIGTERM the SuperLink and its descendants, SIGKILL what is left after ``timeout``.

    Returns ``(stopped, left)``: ``(Proc, how)`` pairs, ``how`` being the signal that
    ended it, and ``(Proc, reason)`` pairs for what could not be stopped.
    """
    tracked: dict[int, Proc] = {}
    errors: dict[int, str] = {}
    how: dict[int, str] = {}

    def signal_new(tree: list[Proc], sig: int) -> None:
        for p in tree:
            if p.pid not in tracked and p.state not in ("Z", "X"):  # zombies have exited
                tracked[p.pid] = p
                if err := _signal(p, sig):
                    errors[p.pid] = err

    def alive() -> list[Proc]:
        return [p for p in tracked.values() if _alive(p) and p.pid not in errors]

    def wait(until: float, sig: int) -> None:
        while True:
            running = alive()
            gone = {p.pid for p in tracked.values()} - {p.pid for p in running}
            for pid in gone - how.keys() - errors.keys():
                how[pid] = signal.Signals(sig).name
            if not running or time.monotonic() >= until:
                return
            procs = processes()  # children started meanwhile (or while shutting down)
            for p in running:
                signal_new(descendants(p.pid, procs), sig)
            time.sleep(0.1)

    signal_new([link.proc, *link.descendants], signal.SIGTERM)
    wait(time.monotonic() + timeout, signal.SIGTERM)
    for p in alive():
        if err := _signal(p, signal.SIGKILL):
            errors[p.pid] = err
    wait(time.monotonic() + 5.0, signal.SIGKILL)
    for p in alive():
        errors[p.pid] = "still running after SIGKILL"
    stopped = [(p, how[p.pid]) for p in tracked.values() if p.pid in how]
    left = [(tracked[pid], reason) for pid, reason in errors.items()]
    return stopped, left


# ------------------------------------------------------------------------ CLI


def _ports(p: Proc) -> str:
    host = option(p.argv, "--host")
    parts = []
    if port := option(p.argv, "--port"):
        parts.append(f"http {host + ':' if host else ''}{port}")
    if control := option(p.argv, "--control-api-address"):
        parts.append(f"control {control}")
    listening = listening_ports(p.pid)
    parts.append("listening " + (",".join(map(str, listening)) if listening else "-"))
    return "  ".join(parts)


def _describe(link: SuperLink) -> list[str]:
    p = link.proc
    started = _start_time(p)
    up = datetime.now() - started
    lines = [
        f"pid {p.pid}  started {started:%Y-%m-%d %H:%M:%S} (up {str(up).split('.')[0]})  "
        f"{_ports(p)}"
    ]
    lines += [
        f"  child pid {c.pid} (parent {c.ppid}) {c.name}" + (" <defunct>" if c.state == "Z" else "")
        for c in link.descendants
    ]
    return lines


def _others(home: str) -> str | None:
    others = [link for link in find_superlinks() if link.home != home]
    if not others:
        return None
    ports = sorted({option(link.proc.argv, "--port") or "?" for link in others})
    return (
        f"({len(others)} other local SuperLink(s) on this machine, for other FLWR_HOMEs, "
        f"on http port(s) {', '.join(ports)}; `flwr run` reuses whichever answers on "
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT, whatever its FLWR_HOME)"
    )


def status(home: Path) -> int:
    """Print the local SuperLinks of ``home``; exit code 0."""
    links = find_superlinks(home)
    real = os.path.realpath(home)
    if not links:
        print(f"no local SuperLink running for FLWR_HOME={real}")
    else:
        print(f"{len(links)} local SuperLink(s) for FLWR_HOME={real}:")
        for link in links:
            print("\n".join("  " + line for line in _describe(link)))
    if note := _others(real):
        print(note)
    return 0


def _say(text: str) -> None:
    """Print a line of the stop report; a reader that went away (``... stop | head -1``)
    must not leave the rest of the SuperLinks running: the remaining lines are dropped."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def stop(home: Path, timeout: float = DEFAULT_TIMEOUT) -> int:
    """Stop the local SuperLinks of ``home`` and their process trees; exit code 0 or 1."""
    links = find_superlinks(home)
    real = os.path.realpath(home)
    if not links:
        _say(f"no local SuperLink running for FLWR_HOME={real}: nothing to stop")
        return 0
    failed = False
    for link in links:
        _say(f"stopping local SuperLink pid {link.proc.pid} (FLWR_HOME={real})")
        stopped, left = stop_tree(link, timeout)
        for p, how in stopped:
            _say(f"  stopped pid {p.pid} {p.name} ({how})")
        for p, reason in left:
            _say(f"  error: pid {p.pid} {p.name}: {reason}")
        failed = failed or bool(left)
    return 1 if failed else 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m flower_qgadmm.superlink",
        description="List or stop the local SuperLink that `flwr run` started for a FLWR_HOME "
        "(and its SuperExec, simulation and Ray processes). Only that process tree is "
        "touched: processes are found by the SuperLink's --log-file/--database under "
        "FLWR_HOME, never by name.",
    )
    parser.add_argument("command", choices=["status", "stop"])
    parser.add_argument(
        "--flwr-home",
        help="the FLWR_HOME the SuperLink was started for (default: $FLWR_HOME, else ~/.flwr)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"stop: seconds to wait after SIGTERM before SIGKILL (default: {DEFAULT_TIMEOUT:g})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.flwr_home is not None and not args.flwr_home.strip():
        parser.error("--flwr-home is empty")
    home = Path(args.flwr_home) if args.flwr_home is not None else default_home()
    if home.exists() and not home.is_dir():
        parser.error(f"--flwr-home {home} is not a directory")
    if not args.timeout > 0:  # also rejects nan
        parser.error(f"--timeout must be > 0, got {args.timeout}")
    if not (PROC / "self" / "stat").exists():
        parser.error("needs Linux /proc to find processes")
    if args.command == "status":
        return status(home)
    return stop(home, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
