"""Deployment kit: a TLS + SuperNode-authentication Flower federation, e.g. on loopback.

``python -m flower_qgadmm.deploy up --dir deploy --nodes 4`` creates a CA and a SuperLink
certificate, one key pair per SuperNode, starts ``flower-superlink`` with TLS and
``--enable-supernode-auth``, registers the SuperNodes' public keys, starts one
``flower-supernode`` per partition (``--node-config "partition-id=i num-partitions=N"``),
writes the ``[superlink.<name>]`` connection into ``<dir>/flwr-home/config.toml`` and
prints the ``flwr run`` command. ``down`` stops every process it started, by pid.
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
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .crypto import write_keys

BIN = Path(sys.executable).parent
CONNECTION = "qgadmm-tls"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
) -> list[str]:
    """``flower-supernode`` for one partition (``ca=None``: no CA given, for tests);
    ``worker_keys``: the folder of :func:`~flower_qgadmm.crypto.write_keys` (end-to-end
    encryption keys named in the node config)."""
    cmd = [str(BIN / "flower-supernode"), "--superlink", superlink]
    if ca is not None:
        cmd += ["--root-certificates", str(ca)]
    node_config = f"partition-id={partition} num-partitions={partitions}"
    if worker_keys is not None:
        node_config += (
            f' identity-key="{worker_keys / f"worker-{partition}.key"}"'
            f' worker-keys="{worker_keys / "workers.pub.json"}"'
        )
    return cmd + [
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


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    """Block until something listens on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:g}s")


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


def up(root: Path, nodes: int, port: int = 0) -> dict:
    """Start a TLS + auth SuperLink and ``nodes`` SuperNodes on loopback; return the state
    (pids, ports, paths), also saved as ``<root>/deployment.json``."""
    root = root.resolve()
    home, certs, keys, logs = root / "flwr-home", root / "certs", root / "keys", root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    make_certificates(certs)
    worker_keys = root / "worker-keys"
    write_keys(worker_keys, nodes)
    port = port or free_port()
    address = f"127.0.0.1:{port}"
    write_connection(home, address, certs / "ca.crt")
    env = flower_env(home)
    state: dict = {"root": str(root), "address": address, "connection": CONNECTION, "pids": {}}
    link = start(
        superlink_command(certs, port, root / "state.db"), logs / "superlink.log", env, root
    )
    state["pids"]["superlink"] = link.pid
    _save(root, state)
    wait_for_port(port)
    for i in range(nodes):
        private, public = make_node_key(keys, f"supernode-{i}")
        register(home, public)
        node = start(
            supernode_command(
                address, certs / "ca.crt", private, i, nodes, free_port(), worker_keys=worker_keys
            ),
            logs / f"supernode-{i}.log",
            env,
            root,
        )
        state["pids"][f"supernode-{i}"] = node.pid
        _save(root, state)
    return state


def _save(root: Path, state: dict) -> None:
    (root / "deployment.json").write_text(json.dumps(state, indent=2))


def down(root: Path, timeout: float = 20.0) -> list[int]:
    """Stop every process ``up`` started (SIGTERM to each process group, then SIGKILL)."""
    state = json.loads((root / "deployment.json").read_text())
    pids = list(state["pids"].values())
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.3)
    for pid in pids:
        _signal_group(pid, signal.SIGKILL)
    return pids


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # each process was started in its own session/group
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().split()[2]
        return stat != "Z"
    except OSError:
        return True


def main(argv: list[str] | None = None) -> int:
    """``python -m flower_qgadmm.deploy {up,down,certs,keys}``."""
    parser = argparse.ArgumentParser(prog="python -m flower_qgadmm.deploy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="TLS + auth SuperLink and N SuperNodes on loopback")
    p_up.add_argument("--dir", type=Path, default=Path("deploy"))
    p_up.add_argument("--nodes", type=int, default=4)
    p_up.add_argument("--port", type=int, default=0, help="SuperLink port (default: free)")
    p_down = sub.add_parser("down", help="stop what 'up' started")
    p_down.add_argument("--dir", type=Path, default=Path("deploy"))
    p_certs = sub.add_parser("certs", help="CA + SuperLink certificate")
    p_certs.add_argument("--dir", type=Path, default=Path("deploy/certs"))
    p_certs.add_argument(
        "--host",
        action="append",
        default=None,
        help="SuperLink address the certificate is valid for (repeatable)",
    )
    p_keys = sub.add_parser("keys", help="SuperNode key pairs (OpenSSH, EC P-384)")
    p_keys.add_argument("--dir", type=Path, default=Path("deploy/keys"))
    p_keys.add_argument("--count", type=int, default=4)
    p_wkeys = sub.add_parser("worker-keys", help="end-to-end encryption keys (X25519)")
    p_wkeys.add_argument("--dir", type=Path, default=Path("deploy/worker-keys"))
    p_wkeys.add_argument("--count", type=int, default=4)
    args = parser.parse_args(argv)
    if args.command == "up":
        state = up(args.dir, args.nodes, args.port)
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
        print("stopped", down(args.dir))
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
