"""Deployment kit: a TLS + SuperNode-authentication Flower federation, e.g. on loopback.

``python -m flower_qgadmm.deploy up --dir deploy --nodes 4`` creates a CA and a SuperLink
certificate, one key pair per SuperNode, starts ``flower-superlink`` with TLS and
``--enable-supernode-auth``, registers the SuperNodes' public keys, starts one
``flower-supernode`` per partition (``--node-config "partition-id=i num-partitions=N"``),
writes the ``[superlink.<name>]`` connection into ``<dir>/flwr-home/config.toml`` and
prints the ``flwr run`` command. ``status`` says which of its processes still run and
where each listens; ``down`` stops every process it started, by pid.
``certs`` and ``keys`` only write credentials (for real devices: copy ``ca.crt`` and one
private key to each device). Ports are picked free unless given.

End-to-end encryption of peer messages is on in the kit: ``up`` also writes one X25519
identity key per worker (``worker-keys/worker-<i>.key``) and the table of every worker's
public key (``worker-keys/workers.pub.json``), and starts SuperNode i with
``identity-key`` and ``worker-keys`` in its node config; the printed ``flwr run`` command
sets ``encrypt=true``. ``worker-keys`` writes them for real devices (copy
``worker-<i>.key`` to device i only, ``workers.pub.json`` to every device; never through
the relay). See docs/encryption.md.

Formats (flwr 1.42): the SuperLink serves its Fleet, Control and ServerAppIo APIs on one
TLS port; SuperNode keys are EC P-384 in OpenSSH format; a SuperNode's own runtime API
needs its own ``--port``.

How the SuperNodes run (``up --clientapp`` and ``--node-poll``; docs/benchmarks-flower.md
has the measurements). Flower's SuperNode (``flwr/supernode/start_client_internal.py``)
sleeps 3 s whenever the SuperLink has no message for it and checks for its ClientApp's
reply every 0.5 s; its SuperExec polls for work every 1 s and starts a new
``flwr-clientapp`` process per message, which imports flwr, the app and torch again
(``flwr-clientapp`` serves exactly one task, then exits). None of the sleeps is a flag.
The kit runs each SuperNode through :func:`run_supernode` instead (the command
``python -m flower_qgadmm.deploy supernode [--poll S] [--warm-clientapp] -- <flower-supernode
arguments>``), which is Flower's SuperNode with the same TLS, authentication and node
config, and:

- ``--poll S`` (default ``NODE_POLL`` = 0.2 s; 0: Flower's waits): the idle sleep grows
  from 10 ms to ``S`` instead of being 3 s (to 1 s after 10 s without a message: an idle
  deployment costs little CPU, and only the first message after a pause waits up to 1 s
  longer; ``supernode.Backoff``), the reply is checked every 10 ms, an object
  not yet on the SuperLink is asked again after 10 ms (not 1 s, doubling), and Flower's
  SuperExec, if used, polls every 50 ms (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``);
- ``--warm-clientapp`` (``up --clientapp warm``, the default): the SuperNode runs with
  ``--isolation process`` and a warm executor of its own (:func:`run_executor`, a child
  in its process group) serves its ClientApp tasks: it imports the app's dependencies
  (flwr, numpy, scipy, torch, ...) once, and forks one child per task that runs Flower's
  own ``run_clientapp`` (FAB install, app loading, the message, the reply), so every
  message still gets a fresh process and the FAB's own code, without the start-up.

``up --clientapp subprocess --node-poll 0`` is Flower's SuperNode unchanged.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .crypto import write_keys
from .flower.supernode import (  # the node side (reaches into Flower's SuperNode)
    BIN,
    EXECUTOR_POLL,
    NODE_POLL,
    run_executor,
    run_supernode,
)
from .superlink import descendants, processes, read_proc

CONNECTION = "qgadmm-tls"
DATABASE = "state.db"  # the SuperLink's database in the deployment folder, new at each `up`
CLIENTAPP_MODES = ("warm", "subprocess")  # see the module docstring


def free_port(taken: Collection[int] = ()) -> int:
    """A TCP port free on 127.0.0.1 right now, not one of ``taken`` (ports given to
    processes that may not listen yet: the system would hand them out again)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port


def check_ports(port: int, node_port: int, nodes: int) -> None:
    """Refuse pinned ports (``up``'s ``port``/``node_port``, 0: free) that are no TCP
    port or that collide: the SuperLink's ``port`` inside the SuperNodes' ``node_port``
    .. ``node_port + nodes - 1`` (the second process to bind it exits)."""
    for flag, value in (("--port", port), ("--node-port", node_port)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
            raise ValueError(f"{flag} must be a TCP port 1-65535 (0: a free one), got {value!r}")
    last = node_port + nodes - 1
    if node_port and last > 65535:
        raise ValueError(
            f"--node-port {node_port} with {nodes} SuperNodes needs ports {node_port}-{last}, "
            f"past 65535: choose --node-port <= {65536 - nodes}"
        )
    if port and node_port <= port <= last:
        raise ValueError(
            f"--port {port} is also SuperNode {port - node_port}'s port (--node-port "
            f"{node_port} gives the {nodes} SuperNodes {node_port}-{last}): choose a --port "
            "outside that range or another --node-port"
        )


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path, fmt) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    )
    path.chmod(0o600)


def make_certificates(out: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost")) -> Path:
    """A CA (``ca.crt``/``ca.key``) and a SuperLink certificate (``server.pem``/
    ``server.key``) valid for ``hosts`` (IP addresses or DNS names)."""
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=365))
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flower-qgadmm CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(ca_key, out / "ca.key", serialization.PrivateFormat.TraditionalOpenSSL)
    _write_key(key, out / "server.key", serialization.PrivateFormat.TraditionalOpenSSL)
    (out / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (out / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out


def make_node_key(out: Path, name: str) -> tuple[Path, Path]:
    """An EC P-384 SuperNode key pair in OpenSSH format: (private, public ``.pub``)."""
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = out / name
    _write_key(key, private, serialization.PrivateFormat.OpenSSH)
    public = out / f"{name}.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b"\n"
    )
    return private, public


def flower_env(home: Path) -> dict[str, str]:
    """Environment for Flower commands of this deployment (its own FLWR_HOME)."""
    return {
        **os.environ,
        "FLWR_HOME": str(home),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }


def write_connection(home: Path, address: str, ca: Path, name: str = CONNECTION) -> None:
    """``$FLWR_HOME/config.toml`` with a TLS connection to the SuperLink (the default)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\n'
        f'address = "{address}"\nroot-certificates = "{ca.resolve()}"\n'
    )


def start(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """Start a long-running Flower process in its own session, logging to ``log``."""
    fh = log.open("w")
    return subprocess.Popen(
        cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
    )


def fresh_database(root: Path) -> Path:
    """``<root>/state.db`` with nothing left of an earlier ``up`` in ``root``: the file and
    SQLite's ``-wal``, ``-shm`` and ``-journal`` files beside it are removed. A SuperLink
    started on the old file lists the old SuperNodes as online beside the new ones,
    whose keys replaced theirs anyway: ``down`` stops the SuperLink together with them,
    so their sign-off (Flower's ``DeactivateNode``) does not reach it, and their rows
    stay online until their last heartbeat is 2 x 30 s old (flwr 1.42); a run started
    meanwhile asked them too and waited for the SuperLink to give up on them."""
    database = root / DATABASE
    for path in (database, *(root / f"{DATABASE}-{end}" for end in ("wal", "shm", "journal"))):
        path.unlink(missing_ok=True)
    return database


def superlink_command(certs: Path, port: int, database: Path) -> list[str]:
    """``flower-superlink`` with TLS and SuperNode authentication."""
    return [
        str(BIN / "flower-superlink"),
        "--ssl-ca-certfile",
        str(certs / "ca.crt"),
        "--ssl-certfile",
        str(certs / "server.pem"),
        "--ssl-keyfile",
        str(certs / "server.key"),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database",
        str(database),
    ]


def supernode_command(
    superlink: str,
    ca: Path | None,
    key: Path,
    partition: int,
    partitions: int,
    port: int,
    max_wait: float = 60.0,
    worker_keys: Path | None = None,
    clientapp: str = "subprocess",
    node_poll: float | None = None,
) -> list[str]:
    """A SuperNode for one partition (``ca=None``: no CA given, for tests);
    ``worker_keys``: the folder of :func:`~flower_qgadmm.crypto.write_keys` (end-to-end
    encryption keys named in the node config). With the defaults (``clientapp=
    "subprocess"``, ``node_poll=None``) it is plain ``flower-supernode``; otherwise the
    same arguments go through :func:`run_supernode` (``node_poll``: its longest idle
    wait, 0 or None for Flower's; ``clientapp="warm"``: with its warm executor)."""
    if clientapp not in CLIENTAPP_MODES:
        raise ValueError(f"clientapp must be one of {CLIENTAPP_MODES}, not {clientapp!r}")
    args = ["--superlink", superlink]
    if ca is not None:
        args += ["--root-certificates", str(ca)]
    node_config = f"partition-id={partition} num-partitions={partitions}"
    if worker_keys is not None:
        node_config += (
            f' identity-key="{worker_keys / f"worker-{partition}.key"}"'
            f' worker-keys="{worker_keys / "workers.pub.json"}"'
        )
    args += [
        "--auth-supernode-private-key",
        str(key),
        "--node-config",
        node_config,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-wait-time",
        str(max_wait),
    ]
    if clientapp == "subprocess" and not node_poll:
        return [str(BIN / "flower-supernode"), *args]
    launcher = [sys.executable, "-m", "flower_qgadmm.deploy", "supernode"]
    launcher += ["--poll", f"{node_poll or 0:g}"]
    if clientapp == "warm":
        launcher.append("--warm-clientapp")
        args += ["--isolation", "process"]
    return [*launcher, "--", *args]


def port_in_use(port: int) -> bool:
    """Something listens on 127.0.0.1:port (or on every address) right now."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_started(
    proc: subprocess.Popen, port: int, name: str, log: Path, timeout: float = 60.0
) -> None:
    """Block until ``proc`` (``name``, logging to ``log``) listens on 127.0.0.1:port;
    raise, with the end of its log, if it exits first or the port answers for another
    process (it then fails to bind and exits)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not port_in_use(port):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{name} does not listen on 127.0.0.1:{port} after {timeout:g}s; see {log}"
            )
        time.sleep(0.2)
    if proc.poll() is not None:
        try:
            end = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-5:])
        except OSError:
            end = ""
        held = " though the port answers: another process holds it" if port_in_use(port) else ""
        raise RuntimeError(
            f"{name} exited (code {proc.returncode}){held}; the end of {log}:\n{end.rstrip()}"
        )


def register(home: Path, public_key: Path) -> None:
    """``flwr supernode register``: allow this SuperNode's key on the SuperLink."""
    proc = subprocess.run(
        [str(BIN / "flwr"), "supernode", "register", str(public_key), CONNECTION],
        env=flower_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"registering {public_key} failed: {proc.stdout}{proc.stderr}")


def up(
    root: Path,
    nodes: int,
    port: int = 0,
    clientapp: str = "warm",
    node_poll: float = NODE_POLL,
    node_port: int = 0,
    extra_env: dict[str, str] | None = None,
) -> dict:
    """Start a TLS + auth SuperLink and ``nodes`` SuperNodes on loopback; return the state
    (pids, ports, paths), also saved as ``<root>/deployment.json``. ``clientapp``:
    ``"warm"`` (a warm executor per SuperNode) or ``"subprocess"`` (Flower's SuperExec,
    a new ``flwr-clientapp`` process per message); ``node_poll``: the SuperNodes' longest
    idle wait in seconds (0: Flower's 3 s). See the module docstring. ``port``: the
    SuperLink's, ``node_port``: SuperNode i's runtime API gets ``node_port + i`` (0: free
    ports); ``extra_env``: added to every process's environment (e.g. ``PYTHONPATH``)."""
    if clientapp not in CLIENTAPP_MODES:
        raise ValueError(f"clientapp must be one of {CLIENTAPP_MODES}, not {clientapp!r}")
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 2:
        raise ValueError(f"nodes must be an integer >= 2 (a run needs 2 workers), got {nodes!r}")
    if not 0 <= node_poll < float("inf"):  # NaN too; a negative one meant Flower's 3 s
        raise ValueError(
            f"node_poll (--node-poll) must be >= 0 seconds (0: Flower's 3 s), got {node_poll}"
        )
    check_ports(port, node_port, nodes)
    root = root.resolve()
    running = _running(root)
    if running:  # a second `up` would take over its files and leave its processes behind
        raise RuntimeError(
            f"a deployment started in {root} is still running ({', '.join(running)}): stop "
            f"it first with `python -m flower_qgadmm.deploy down --dir {root}`"
        )
    # a port that answers already would make `up` talk to that process (another
    # SuperLink: the registration fails with "Connection ... unavailable") while its own
    # SuperLink or SuperNode fails to bind and exits
    node_ports = list(range(node_port, node_port + nodes)) if node_port else []
    given = {"--port": [port] if port else [], "--node-port": node_ports}
    busy = [(flag, p) for flag, ports in given.items() for p in ports if port_in_use(p)]
    if busy:
        raise RuntimeError(
            "port(s) already in use on 127.0.0.1: "
            + ", ".join(f"{p} ({flag})" for flag, p in busy)
            + "; stop what listens there (`deploy down --dir` of another deployment) or "
            "choose other ports (leave --port / --node-port out: free ports are picked)"
        )
    home, certs, keys, logs = root / "flwr-home", root / "certs", root / "keys", root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    make_certificates(certs)
    worker_keys = root / "worker-keys"
    write_keys(worker_keys, nodes)
    port = port or free_port(taken=node_ports)
    address = f"127.0.0.1:{port}"
    write_connection(home, address, certs / "ca.crt")
    env = {**flower_env(home), **(extra_env or {})}
    state: dict = {
        "root": str(root),
        "address": address,
        "connection": CONNECTION,
        "clientapp": clientapp,
        "node_poll": node_poll,
        "pids": {},
        "starts": {},  # each process's start time (clock ticks after boot): pid reuse check
        "ports": {},  # the port each process listens on (127.0.0.1)
    }
    link = start(
        superlink_command(certs, port, fresh_database(root)), logs / "superlink.log", env, root
    )
    _record(state, "superlink", link.pid, port)
    _save(root, state)
    started = [link]
    try:
        wait_started(link, port, "the SuperLink", logs / "superlink.log", timeout=30.0)
        for i in range(nodes):
            if not node_port:  # distinct from the SuperLink's and those not listening yet
                node_ports.append(free_port(taken=[port, *node_ports]))
            private, public = make_node_key(keys, f"supernode-{i}")
            register(home, public)
            node = start(
                supernode_command(
                    address,
                    certs / "ca.crt",
                    private,
                    i,
                    nodes,
                    node_ports[i],
                    worker_keys=worker_keys,
                    clientapp=clientapp,
                    node_poll=node_poll,
                ),
                logs / f"supernode-{i}.log",
                env,
                root,
            )
            started.append(node)
            _record(state, f"supernode-{i}", node.pid, node_ports[i])
            _save(root, state)
        # each SuperNode listens on its port once started (they start meanwhile): one that
        # failed (its port taken since the check, a crash) is named now, not in the run
        for i, node in enumerate(started[1:]):
            wait_started(node, node_ports[i], f"SuperNode {i}", logs / f"supernode-{i}.log")
    except BaseException as exc:  # whatever failed (Ctrl-C too), nothing is left running
        down(root, children=started)
        if not isinstance(exc, Exception):
            raise
        raise RuntimeError(
            f"{exc}\n`up` stopped the processes it had started; logs in {logs}"
        ) from exc
    return state


def _record(state: dict, name: str, pid: int, port: int) -> None:
    state["pids"][name] = pid
    state["ports"][name] = port
    proc = read_proc(pid)
    state["starts"][name] = None if proc is None else proc.start


def _ours(pid: int, start: int | None) -> bool:
    """The process group ``pid`` is still the one ``up`` started: its leader is gone (a
    group id is not reused while the group has members) or is the same process."""
    proc = read_proc(pid)
    return proc is None or start is None or proc.start == start


def _load(root: Path) -> tuple[dict, dict[str, int], dict[str, int | None]]:
    """What ``up`` saved in ``root``: (state, name -> pid, name -> start time)."""
    path = Path(root) / "deployment.json"
    if not path.exists():
        raise FileNotFoundError(f"no deployment in {root} ({path.name} missing)")
    try:
        state = json.loads(path.read_text())
        pids = {str(name): int(pid) for name, pid in state["pids"].items()}
        starts = dict(state.get("starts", {}))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"{path} is not the record `up` writes ({type(exc).__name__}: {exc}); stop its "
            "processes yourself (by pid, see `ps`), then remove it"
        ) from None
    return state, pids, starts


def status(root: Path) -> dict[str, tuple[int, bool]]:
    """Each process ``up`` started in ``root``: name -> (pid, still running)."""
    _, pids, starts = _load(root)
    out = {}
    for name, pid in pids.items():
        proc = read_proc(pid)
        alive = proc is not None and proc.state not in ("Z", "X")
        out[name] = (pid, alive and _ours(pid, starts.get(name)))
    return out


def describe(root: Path) -> list[tuple[str, str, int, bool, str]]:
    """Each process ``up`` started in ``root``: (name, role, pid, still running, where it
    listens: ``127.0.0.1:<port> (<its APIs>)``, with ``not answering`` when it runs but
    nothing answers on that port), from ``deployment.json`` (a record of an older kit
    has no SuperNode ports: said so)."""
    state, _, _ = _load(root)
    ports = state.get("ports") if isinstance(state.get("ports"), dict) else {}
    address = str(state.get("address", ""))
    nodes = sum(name.startswith("supernode-") for name in state["pids"])
    rows = []
    for name, (pid, alive) in status(root).items():
        port = ports.get(name)
        if isinstance(port, bool) or not isinstance(port, int):
            port = None
        if name == "superlink":
            role, apis = "SuperLink", "Fleet, Control and ServerAppIo APIs, TLS"
            if port is None and address.rpartition(":")[2].isdigit():
                port = int(address.rpartition(":")[2])
        else:
            partition = name.removeprefix("supernode-")
            role, apis = f"SuperNode {partition}/{nodes}", "its ClientApps' runtime API"
        if port is None:
            listens = "port not recorded (deployment.json of an older kit)"
        else:
            listens = f"127.0.0.1:{port} ({apis})"
            if alive and not port_in_use(int(port)):
                listens += ", not answering"
        rows.append((name, role, pid, alive, listens))
    return rows


def _running(root: Path) -> list[str]:
    """``name (pid)`` of the processes a deployment in ``root`` started that still run."""
    try:
        return [f"{name} ({pid})" for name, (pid, alive) in status(root).items() if alive]
    except (FileNotFoundError, ValueError):
        return []


def _save(root: Path, state: dict) -> None:
    """``<root>/deployment.json``, replaced whole (an interrupted write leaves the last)."""
    path = root / "deployment.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def down(root: Path, timeout: float = 20.0, children: Sequence[subprocess.Popen] = ()) -> list[int]:
    """Stop every process ``up`` started (SIGTERM to each process group, then SIGKILL);
    a SuperNode's group holds its SuperExec or warm executor and their ClientApps.
    ``children``: those the caller started itself (``up`` failing), reaped while waiting
    (a zombie would keep its group alive)."""
    path = Path(root) / "deployment.json"
    if not path.exists():
        raise FileNotFoundError(f"no deployment in {root} ({path.name} missing): nothing to stop")
    _, recorded, starts = _load(root)
    # a leader pid taken over by another process since: not ours, left alone
    leaders = {
        pid: starts.get(name) for name, pid in recorded.items() if _ours(pid, starts.get(name))
    }
    # what is reported as stopped: the leaders still running (not those gone before)
    pids = [pid for pid in leaders if (proc := read_proc(pid)) and proc.state not in ("Z", "X")]
    # their descendants in other sessions too: the SuperLink's SuperExec and ServerApp
    groups = set(leaders) | _descendant_groups(leaders)  # a dead leader's group may live on
    for group in groups:
        _signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_group_alive(g) for g in groups):
        time.sleep(0.3)
        for child in children:
            child.poll()
        groups |= _descendant_groups(leaders)  # started meanwhile (or while shutting down)
    for group in groups:
        _signal_group(group, signal.SIGKILL)
    deadline = time.monotonic() + 5  # the groups' other members (executors, ClientApps)
    while time.monotonic() < deadline and any(_group_alive(g) for g in groups):
        time.sleep(0.1)
        for child in children:
            child.poll()
    return pids


def _descendant_groups(leaders: dict[int, int | None]) -> set[int]:
    """Process groups of the descendants of the ``leaders`` (pid -> recorded start time)
    still running as the processes ``up`` started (a pid reused since has other children:
    left alone), but the caller's own group."""
    procs, own, groups = processes(), os.getpgrp(), set()
    for pid, start in leaders.items():
        proc = procs.get(pid)
        if proc is None or (start is not None and proc.start != start):
            continue
        for p in descendants(pid, procs):
            try:
                group = os.getpgid(p.pid)
            except ProcessLookupError:
                continue
            if group != own:
                groups.add(group)
    return groups


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # each process was started in its own session/group
    except (ProcessLookupError, PermissionError):  # gone, or not ours to signal
        pass


def main(argv: list[str] | None = None) -> int:
    """``python -m flower_qgadmm.deploy {up,down,status,certs,keys,worker-keys}`` (and
    ``supernode``, ``executor``: the kit's own processes)."""
    parser = argparse.ArgumentParser(prog="python -m flower_qgadmm.deploy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="TLS + auth SuperLink and N SuperNodes on loopback")
    p_up.add_argument(
        "--dir",
        type=Path,
        default=Path("deploy"),
        help="folder for certs, keys, logs, state.db, flwr-home (default: deploy)",
    )
    p_up.add_argument("--nodes", type=int, default=4, help="SuperNodes = workers (>= 2; default 4)")
    p_up.add_argument("--port", type=int, default=0, help="SuperLink port (default: free)")
    p_up.add_argument(
        "--node-port",
        type=int,
        default=0,
        help="SuperNode i's runtime API on this port + i (default: free ports)",
    )
    p_up.add_argument(
        "--clientapp",
        choices=CLIENTAPP_MODES,
        default="warm",
        help="warm: a warm executor per SuperNode forks a ClientApp per message (default); "
        "subprocess: Flower's SuperExec starts flwr-clientapp per message",
    )
    p_up.add_argument(
        "--node-poll",
        type=float,
        default=NODE_POLL,
        help=f"longest idle wait of a SuperNode between pulls, seconds (default "
        f"{NODE_POLL:g}; 0: Flower's 3 s)",
    )
    p_node = sub.add_parser(
        "supernode", help="run flower-supernode (arguments after --) with shorter waits"
    )
    p_node.add_argument("--poll", type=float, default=NODE_POLL, help="0: Flower's waits")
    p_node.add_argument("--warm-clientapp", action="store_true", help="with a warm executor")
    p_node.add_argument("args", nargs=argparse.REMAINDER, help="-- flower-supernode arguments")
    p_exec = sub.add_parser("executor", help="warm ClientApp executor of one SuperNode")
    p_exec.add_argument("--runtime-api-address", required=True)
    p_exec.add_argument("--watch-pid", type=int, default=None, help="exit when it is gone")
    p_exec.add_argument("--poll", type=float, default=EXECUTOR_POLL)
    p_down = sub.add_parser("down", help="stop what 'up' started")
    p_down.add_argument(
        "--dir", type=Path, default=Path("deploy"), help="the folder given to up (default: deploy)"
    )
    p_status = sub.add_parser(
        "status",
        help="which processes of 'up' still run, and their ports (exit code 1 if any stopped)",
    )
    p_status.add_argument(
        "--dir", type=Path, default=Path("deploy"), help="the folder given to up (default: deploy)"
    )
    p_certs = sub.add_parser("certs", help="CA + SuperLink certificate")
    p_certs.add_argument(
        "--dir",
        type=Path,
        default=Path("deploy/certs"),
        help="output folder (default: deploy/certs)",
    )
    p_certs.add_argument(
        "--host",
        action="append",
        default=None,
        help="SuperLink address the certificate is valid for (repeatable; default: "
        "127.0.0.1 and localhost)",
    )
    p_keys = sub.add_parser("keys", help="SuperNode key pairs (OpenSSH, EC P-384)")
    p_keys.add_argument(
        "--dir", type=Path, default=Path("deploy/keys"), help="output folder (default: deploy/keys)"
    )
    p_keys.add_argument("--count", type=int, default=4, help="SuperNode key pairs (default 4)")
    p_wkeys = sub.add_parser("worker-keys", help="end-to-end encryption keys (X25519)")
    p_wkeys.add_argument(
        "--dir",
        type=Path,
        default=Path("deploy/worker-keys"),
        help="output folder (default: deploy/worker-keys)",
    )
    p_wkeys.add_argument("--count", type=int, default=4, help="workers (default 4)")
    args = parser.parse_args(argv)
    if args.command in ("keys", "worker-keys") and args.count < 1:
        parser.error(f"--count must be >= 1, got {args.count}")
    if args.command == "supernode" and not 0 <= args.poll < float("inf"):
        parser.error(f"--poll must be >= 0 seconds (0: Flower's waits), got {args.poll}")
    if args.command == "executor" and not 0 < args.poll < float("inf"):
        parser.error(f"--poll must be > 0 seconds, got {args.poll}")
    if args.command == "supernode":
        run_supernode(
            args.args[1:] if args.args[:1] == ["--"] else args.args, args.poll, args.warm_clientapp
        )
    elif args.command == "executor":
        return run_executor(args.runtime_api_address, args.watch_pid, args.poll)
    elif args.command == "up":
        try:
            state = up(
                args.dir, args.nodes, args.port, args.clientapp, args.node_poll, args.node_port
            )
        except (RuntimeError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        home = Path(state["root"]) / "flwr-home"
        print(json.dumps(state["pids"], indent=2))
        print(
            f"\nSuperLink {state['address']} (TLS, SuperNode auth), {args.nodes} SuperNodes.\n"
            f"Run:  FLWR_HOME={home} flwr run . {CONNECTION} --stream "
            f'--run-config "num-workers={args.nodes} num-iterations=10 encrypt=true '
            f"results-dir='{Path.cwd() / 'results'}'\"\n"
            f"Stop: python -m flower_qgadmm.deploy down --dir {args.dir}"
        )
    elif args.command == "down":
        try:
            stopped = down(args.dir)
            print("stopped", stopped if stopped else "nothing: no process of it was running")
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    elif args.command == "status":
        try:
            state, procs = _load(args.dir)[0], describe(args.dir)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"SuperLink {state.get('address', '?')} ({Path(args.dir).resolve()})")
        for name, role, pid, alive, listens in procs:
            running = "running" if alive else "not running"
            print(f"  {name:<13} {role:<14} pid {pid:<8} {running:<12} {listens}")
        stopped = [name for name, _, _, alive, _ in procs if not alive]
        if len(stopped) == len(procs):
            print(f"none running (stopped, or exited): `deploy up --dir {args.dir}` starts it")
            return 1
        if stopped:
            print(
                f"{len(stopped)} of {len(procs)} not running: see {Path(args.dir) / 'logs'}; "
                f"`deploy down --dir {args.dir}`, then `up` again"
            )
            return 1
    elif args.command == "certs":
        print("wrote", make_certificates(args.dir, args.host or ["127.0.0.1", "localhost"]))
    elif args.command == "worker-keys":
        print("wrote", *write_keys(args.dir, args.count))
    else:
        for i in range(args.count):
            print("wrote", *make_node_key(args.dir, f"supernode-{i}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
