"""Deployment on loopback (TLS + SuperNode auth, 4 SuperNodes): time per round, and where
it goes.

The deployment kit (:mod:`flower_qgadmm.deploy`) starts a real SuperLink and four
SuperNodes; ``flwr run`` then runs, 6 rounds each on the digits task (the same MLP and
data): Q-SGADMM 4-bit, D-PSGD (ring) and Flower's FedAvg; every ServerApp uses our reply
pull loop (:class:`~flower_qgadmm.flower.metering.MeteredGrid`). The three runs are
repeated ``BENCH_DEPLOYMENT_REPEATS`` times (default 3), interleaved, so that a change in
the machine's load hits all three. Time per round: the median of the steady rounds
(rounds 2 to 5, from the moments their history rows appear: no set-up, no last-round
model pull, no final exchange, which are once per run); the median of the strategy's
own time divided by its rounds ("whole runs") is in the note. Targets (issue "Scale and
speed", point 4): a GADMM iteration <= 1.5x a FedAvg round, a gossip round <= 1.0x, each
against FedAvg on the same deployment (same SuperNodes, same ClientApp mode).

Deployments (``CONFIGS``; by default ``flower`` and ``ours``,
``BENCH_DEPLOYMENT_CONFIGS=flower,poll,warm,ours`` picks others):

- ``flower``: Flower's SuperNode as it is (3 s idle sleep, a SuperExec polling every 1 s
  and starting a ``flwr-clientapp`` process per message);
- ``poll``: our shorter SuperNode waits only; ``warm``: the warm executor only;
- ``ours``: both, the kit's default;
- ``before`` (only with ``BENCH_DEPLOYMENT_BEFORE=<dir>``, a checkout of another version
  of this repository, e.g. ``git worktree add /tmp/old <commit>``): that version's kit
  with its defaults, its code for every process (``PYTHONPATH``) and its FAB, against
  this version's ``ours``.

All chosen deployments are up at the same time and the runs interleave across them
(repeat, then algorithm, then deployment), so that load drift hits all of them alike.
``BENCH_DEPLOYMENT_DIR`` puts the deployments' folders (Flower homes, logs) there instead
of the temp directory; ``BENCH_DEPLOYMENT_PORT=P`` uses fixed ports: deployment k's
SuperLink on P + 10k, its SuperNodes on the next ones (default: free ports).

``BENCH_DEPLOYMENT_PAIRED=1`` gives each deployment a twin and runs each algorithm of
``TARGETS`` at the same time as FedAvg on the twin, then again with the two swapped (two
pairs per algorithm and repeat); a ratio is then the median of the pairs' ratios, each pair
measured under the load of its own moment (on a shared machine the load doubled between
two consecutive runs, while D-PSGD's and FedAvg's rounds take the same path:
docs/benchmarks-flower.md, "Where a deployed D-PSGD round's time goes"). Its round times
are those of two runs sharing the machine. Either way, each ratio's note gives the range
of the per-pair ratios (sequential: run r of the algorithm and of FedAvg, back to back).

``BENCH_DEPLOYMENT_ANATOMY=1`` adds, per deployment, one more run of each algorithm
with Flower's DEBUG logs (timestamps) and ``PYTHONPROFILEIMPORTTIME`` in every process,
and splits each training exchange's critical path (:func:`anatomy`) into the SuperNode's
wait for the message, its pull from the SuperLink, the ClientApp's start (SuperExec poll,
process start, flwr imports), FAB install, the app's imports, our handler, the
SuperNode's wait for the reply, its push, and the ServerApp's share (pulling the replies,
the relay's work, pushing the next messages). Those runs are slower (logging); only
their split is reported. ``--quick``: skipped.
"""

from __future__ import annotations

import datetime
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flwr_local import row_times  # noqa: E402 - the benchmarks folder, added just above

from flower_qgadmm import deploy  # noqa: E402

TITLE = "Deployment iteration time"
NOTES = """
**Objects per message.** Flower moves a message as objects named by their content hash,
one RPC each on every leg (the ServerApp's push, the SuperNode's pull, the ClientApp's
task input, and back). Payloads travel as ``bytes`` values of ConfigRecords (an inbox is
one object, a reply's payload one): a D-PSGD round on the ring of 4 pushes 9 objects, as
FedAvg's does (FedAvg's four messages share one model), and each reply is 4 objects
against FedAvg's 6. Until 2026-12-05 they were uint8 Arrays in ArrayRecords (each Array
and its ArrayChunk an object: 17 objects per D-PSGD round, 6 per reply): on this
benchmark, interleaved on one quiet machine, a D-PSGD round went from 2.24 to 1.70 s
(1.14x to 0.79x FedAvg, per-pair ratios 1.10-1.16 before, 0.73-0.91 after) and a
Q-SGADMM iteration from 2.26 to 1.89 s (docs/benchmarks-flower.md, "Twenty-seventh
session").

**Run-to-run spread.** Single steady rounds vary by a standard deviation of 0.4-0.6 s
(2.0-4.4 s) for every algorithm on this 2-core machine (4 ClientApps forked at once per
gossip or FedAvg exchange), and the 12 rounds of a ratio come from 3 runs of 4, each
run's rounds sharing the load of its half minute; the per-pair ratios in the notes show
that spread. `BENCH_DEPLOYMENT_PAIRED=1` measures each pair at the same time
(docs/benchmarks-flower.md, "Where a deployed D-PSGD round's time goes").
"""
ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 6  # steady rounds: 2..5 (from the rows of rounds 1..5)
POLL = 0.02  # seconds between looks at the history file
ANATOMY_ROUNDS = 3  # rounds of each logged run
DIGITS = {"task": "digits", "rho": 1.0, "dual-step": 0.01, "bits": 4}
RUNS = {  # the same model (the digits MLP, d = 4,810) and data for all three
    "q-sgadmm": {**DIGITS, "algorithm": "q-sgadmm"},
    "d-psgd": {**DIGITS, "algorithm": "d-psgd", "topology": "ring"},
    "fedavg": {**DIGITS, "algorithm": "fedavg"},
}
CONFIGS = {
    "flower": {"clientapp": "subprocess", "node_poll": 0.0},
    "poll": {"clientapp": "subprocess", "node_poll": deploy.NODE_POLL},
    "warm": {"clientapp": "warm", "node_poll": 0.0},
    "ours": {"clientapp": "warm", "node_poll": deploy.NODE_POLL},
}
DEFAULT_CONFIGS = ("flower", "ours")  # before / after; the other two split the change
LABELS = {
    "flower": "Flower's SuperNode (3 s idle sleep, flwr-clientapp per message)",
    "poll": "our SuperNode waits, flwr-clientapp per message",
    "warm": "Flower's SuperNode waits, warm executor",
    "ours": "our SuperNode waits + warm executor (kit default)",
    "before": "the kit of BENCH_DEPLOYMENT_BEFORE (its defaults)",
}
TARGETS = {"q-sgadmm": 1.5, "d-psgd": 1.0}
TRAIN_TYPES = ("train.step", "train")
LOGGED_ENV = {"FLWR_LOG_LEVEL": "DEBUG", "PYTHONPROFILEIMPORTTIME": "1"}
PARTS = (
    ("wait", "SuperNode waits for the message (idle sleep / poll)"),
    ("pull", "SuperNode pulls the message from the SuperLink"),
    ("start", "ClientApp start: SuperExec poll, process start, task input"),
    ("flwr_imports", "(imports in the ClientApp process before its FAB install; overlap)"),
    ("fab", "FAB install (unzip + hash check)"),
    ("app_imports", "app imports (ours, torch, ...)"),
    ("handler", "our handler (data, model, step) and reply to the SuperNode"),
    ("reply_wait", "SuperNode waits for the reply (its 0.5 s poll)"),
    ("push", "SuperNode pushes the reply to the SuperLink"),
    ("server", "ServerApp: pull the replies, relay work, push the next"),
)


def _flwr_run(
    root: Path,
    settings: dict,
    env: dict[str, str] | None = None,
    rounds: int = ROUNDS,
    app: Path = ROOT,
) -> tuple[float, list[float]]:
    """(strategy seconds / rounds, steady rounds' seconds): the second from the times
    the history rows of rounds 1 .. rounds-1 appeared (rounds 2 .. rounds-1), so it leaves
    out the set-up, the last round's model pull and the run's final exchange."""
    results = root / "results" / f"{settings['algorithm']}-{time.monotonic_ns()}"
    config = {
        "num-workers": 4,
        "num-iterations": rounds,
        "samples-per-worker": 20,
        "dim": 5,
        **settings,
    }
    overrides = " ".join(
        f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}" for k, v in config.items()
    )
    overrides += f' results-dir="{results}"'
    done, rows = threading.Event(), []
    watcher = threading.Thread(target=row_times, args=(results, done, rows, POLL), daemon=True)
    watcher.start()
    try:
        proc = _run_flwr(root, overrides, env, app)
    finally:
        done.set()
        watcher.join()
    log = proc.stdout + proc.stderr
    found = re.findall(
        r"(?:Strategy finished \d+ rounds in|Strategy execution finished in) ([0-9.]+)s", log
    )
    if proc.returncode != 0 or not found or len(rows) < rounds - 1:
        raise RuntimeError(f"flwr run failed ({len(rows)} rows seen): {log[-2000:]}")
    steady = [rows[i + 1] - rows[i] for i in range(rounds - 2)]
    return float(found[-1]) / rounds, steady


def _run_flwr(root: Path, overrides: str, env: dict[str, str] | None, app: Path = ROOT):
    return subprocess.run(
        [
            str(deploy.BIN / "flwr"),
            "run",
            str(app),
            deploy.CONNECTION,
            "--stream",
            "--run-config",
            overrides,
        ],
        env=env or deploy.flower_env(root / "flwr-home"),
        capture_output=True,
        text=True,
        timeout=1800,
    )


# ---------------------------------------------------------------------- anatomy
ANSI = re.compile(r"\x1b\[[0-9;]*m")
STAMP = re.compile(r"^(?:DEBUG|INFO|WARNING|ERROR)\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")
IMPORT = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \| ( *)\S")
MARKS = {
    "Receiving: ": "R",
    "Received successfully": "ok",
    "[flwr-clientapp] Start FAB installation.": "F",
    "[flwr-clientapp] Start `ClientApp` Loading.": "L",
    "Runtime.PushMessages": "PM",
    "Sending: ": "S",
    "Sent successfully": "D",
}


def _stamp(text: str) -> float:
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _lines(path: Path, since: float) -> Iterable[tuple[float | None, str]]:
    """(timestamp or None, text) of a log's lines from the first stamped at/after since."""
    started = False
    for raw in path.read_text(errors="replace").splitlines():
        line = ANSI.sub("", raw)
        m = STAMP.match(line)
        t = _stamp(m.group(1)) if m else None
        started = started or (t is not None and t >= since)
        if started:
            yield t, line


def node_messages(path: Path, since: float) -> list[dict]:
    """The messages one SuperNode served after ``since``: their marks' times, their type,
    and the import seconds (``PYTHONPROFILEIMPORTTIME``) before the FAB install and
    during the app's loading."""
    messages: list[dict] = []
    msg: dict | None = None
    for t, line in _lines(path, since):
        m = IMPORT.match(line)
        if m and msg is not None and not m.group(2):  # top-level imports only
            key = "app_imports" if "L" in msg and "PM" not in msg else "flwr_imports"
            if "F" not in msg or key == "app_imports":
                msg[key] = msg.get(key, 0.0) + int(m.group(1)) / 1e6
            continue
        if t is None:
            continue
        for text, mark in MARKS.items():
            if text in line:
                if mark == "R":
                    msg = {"R": t, "type": line.split(text, 1)[1].split(" message")[0]}
                    messages.append(msg)
                elif msg is not None and mark not in msg:
                    msg[mark] = t
                break
    return [m for m in messages if all(k in m for k in ("R", "ok", "F", "L", "PM", "S", "D"))]


def anatomy(logs: Path, since: float, types: Iterable[str] = TRAIN_TYPES) -> dict[str, float]:
    """Mean seconds per training exchange on its critical path (the SuperNode whose
    reply reached the SuperLink last), split into ``PARTS``; plus ``exchange`` (from the
    ServerApp's push to its next push) and ``exchanges`` (how many)."""
    pushes = sorted(
        t
        for t, line in _lines(logs / "superlink.log", since)
        if t is not None and "Runtime.PushMessages" in line
    )
    messages = [
        m
        for path in sorted(logs.glob("supernode-*.log"))
        for m in node_messages(path, since)
        if m["type"] in set(types)
    ]
    groups: dict[float, list[dict]] = {}
    for m in messages:
        before = [p for p in pushes if p <= m["R"]]
        if before:
            groups.setdefault(before[-1], []).append(m)
    rows = []
    for push, group in sorted(groups.items()):
        later = [p for p in pushes if p > push]
        if not later:
            continue
        m = max(group, key=lambda g: g["D"])
        first = min(m["ok"], m["F"])
        imports = m.get("app_imports", 0.0)
        rows.append(
            {
                "wait": m["R"] - push,
                "pull": first - m["R"],
                "start": m["F"] - first,
                "flwr_imports": m.get("flwr_imports", 0.0),
                "fab": m["L"] - m["F"],
                "app_imports": imports,
                "handler": m["PM"] - m["L"] - imports,
                "reply_wait": m["S"] - m["PM"],
                "push": m["D"] - m["S"],
                "server": later[0] - m["D"],
                "exchange": later[0] - push,
            }
        )
    if not rows:
        return {"exchanges": 0}
    out = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    out["exchanges"] = len(rows)
    return out


def _anatomy_rows(root: Path, config: str) -> list[dict]:
    env = deploy.flower_env(root / "flwr-home")
    rows = []
    for name in ("q-sgadmm", "d-psgd", "fedavg"):
        since = datetime.datetime.now().timestamp()
        _flwr_run(root, RUNS[name], env, rounds=ANATOMY_ROUNDS, app=_app(config))
        split = anatomy(root / "logs", since)
        note = f"{split['exchanges']} exchanges; {LABELS[config]}"
        if not split["exchanges"]:
            rows.append({"name": f"{config} {name}", "measured": None, "target": None})
            continue
        rows.append(
            {
                "name": f"{config}: {name} exchange (logged run)",
                "measured": round(split["exchange"], 3),
                "unit": "s",
                "note": note,
            }
        )
        for key, label in PARTS:
            rows.append({"name": f"{config}: {name} - {label}", "measured": round(split[key], 3)})
    for r in rows:
        r.setdefault("target", None)
        r.setdefault("ok", None)
        r.setdefault("unit", "s")
    return rows


# ---------------------------------------------------------------------- the benchmark
def _repeats() -> int:
    return max(1, int(os.environ.get("BENCH_DEPLOYMENT_REPEATS", "3")))


def _before() -> Path | None:
    path = os.environ.get("BENCH_DEPLOYMENT_BEFORE", "")
    return Path(path).resolve() if path else None


def _configs() -> list[str]:
    chosen = os.environ.get("BENCH_DEPLOYMENT_CONFIGS", "")
    names = [c.strip() for c in chosen.split(",") if c.strip()]
    if not names:
        names = ["before", "ours"] if _before() is not None else list(DEFAULT_CONFIGS)
    known = [*CONFIGS, "before"] if _before() is not None else list(CONFIGS)
    unknown = set(names) - set(known)
    if unknown:
        raise ValueError(f"unknown deployment configs {sorted(unknown)}; know {known}")
    return names


def _app(config: str) -> Path:
    """The project ``flwr run`` builds the FAB from."""
    before = _before()
    return before if config == "before" and before is not None else ROOT


def _up(config: str, root: Path, index: int) -> dict:
    """Deployment ``index`` (its ports with BENCH_DEPLOYMENT_PORT) of ``config``."""
    base = int(os.environ.get("BENCH_DEPLOYMENT_PORT", "0"))
    ports = {"port": base + 10 * index, "node_port": base + 10 * index + 1} if base else {}
    if config == "before":
        before = str(_before())
        pythonpath = os.pathsep.join(p for p in (before, os.environ.get("PYTHONPATH")) if p)
        settings = {"clientapp": "warm", "node_poll": deploy.NODE_POLL}
        return deploy.up(root, nodes=4, **settings, **ports, extra_env={"PYTHONPATH": pythonpath})
    return deploy.up(root, nodes=4, **CONFIGS[config], **ports)


def pair_ratios(runs: list[list[float]], baseline: list[list[float]]) -> list[float]:
    """Per pair of runs made at the same time (or back to back): the median of one run's
    steady rounds over the median of its baseline run's. A ratio of two runs that shared
    the machine's load of the moment, where the pooled medians compare rounds made
    minutes apart under a load that can double in between."""
    if len(runs) != len(baseline):
        raise ValueError(f"{len(runs)} runs against {len(baseline)} baseline runs: pair them 1:1")
    pairs = zip(runs, baseline, strict=True)
    return [statistics.median(r) / statistics.median(b) for r, b in pairs]


def _paired() -> bool:
    return os.environ.get("BENCH_DEPLOYMENT_PAIRED", "") not in ("", "0")


def _concurrently(jobs: list[tuple[Path, str, Path]]) -> list[tuple[float, list[float]]]:
    """``_flwr_run`` of each (deployment root, RUNS name, app) at the same time."""
    results: list = [None] * len(jobs)

    def one(i: int) -> None:
        root, name, app = jobs[i]
        try:
            results[i] = _flwr_run(root, RUNS[name], app=app)
        except BaseException as exc:  # re-raised below, in the caller's thread
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def _measure(configs: list[str], tmp: Path, paired: bool) -> tuple[dict, dict]:
    """(whole-run seconds per round, per-run steady rounds) by config and RUNS name.

    Sequential (default): one deployment per config, runs interleaved (repeat, then
    algorithm, then deployment). Paired (``BENCH_DEPLOYMENT_PAIRED=1``): two deployments
    per config; each algorithm of ``TARGETS`` runs at the same time as FedAvg on the
    other deployment, then again with the deployments swapped, so each ratio compares
    rounds made under the same load."""
    wholes = {c: {name: [] for name in RUNS} for c in configs}
    runs = {c: {name: [] for name in RUNS} for c in configs}
    sides = 2 if paired else 1
    roots = {c: [tmp / (c if side == 0 else f"{c}-b") for side in range(sides)] for c in configs}
    try:
        for index, config in enumerate(configs):
            for side, root in enumerate(roots[config]):
                _up(config, root, sides * index + side)
        for _ in range(_repeats()):  # interleaved: load drift hits all of them
            if not paired:
                for name, settings in RUNS.items():
                    for config in configs:
                        whole, steady = _flwr_run(roots[config][0], settings, app=_app(config))
                        wholes[config][name].append(whole)
                        runs[config][name].append(steady)
                continue
            for name in TARGETS:
                for config in configs:
                    a, b = roots[config]
                    for here, there in ((a, b), (b, a)):
                        app = _app(config)
                        jobs = [(here, name, app), (there, "fedavg", app)]
                        for job, (whole, steady) in zip(jobs, _concurrently(jobs), strict=True):
                            wholes[config][job[1]].append(whole)
                            runs[config][job[1]].append(steady)
    finally:
        for root in (r for rs in roots.values() for r in rs):
            if (root / "deployment.json").exists():
                deploy.down(root)
    return wholes, runs


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
    with_anatomy = os.environ.get("BENCH_DEPLOYMENT_ANATOMY", "") not in ("", "0")
    configs = _configs()
    paired = _paired()
    rows: list[dict] = []
    split_rows: list[dict] = []
    parent = os.environ.get("BENCH_DEPLOYMENT_DIR") or None
    with tempfile.TemporaryDirectory(prefix="deploy-bench-", dir=parent) as tmp:
        wholes, runs = _measure(configs, Path(tmp), paired)
        if with_anatomy:
            first = (2 if paired else 1) * len(configs)  # ports after the measured ones
            for index, config in enumerate(configs):
                saved = {k: os.environ.get(k) for k in LOGGED_ENV}
                os.environ.update(LOGGED_ENV)
                logged = Path(tmp) / f"{config}-logged"
                try:
                    _up(config, logged, first + index)
                finally:
                    for k, v in saved.items():
                        if v is None:
                            os.environ.pop(k, None)
                        else:
                            os.environ[k] = v
                try:
                    split_rows += _anatomy_rows(logged, config)
                finally:
                    deploy.down(logged)
    for config in configs:
        rows += _config_rows(config, wholes[config], runs[config], paired)
    return rows + split_rows


def _config_rows(config: str, wholes: dict, runs: dict, paired: bool) -> list[dict]:
    """The rows of one deployment: each algorithm's steady round, and each target's ratio
    to FedAvg (pooled medians; paired: the median of the concurrent pairs' ratios)."""
    rows = []
    measured = [n for n in RUNS if runs[n]]
    times = {
        n: (statistics.median(wholes[n]), statistics.median([s for r in runs[n] for s in r]))
        for n in measured
    }
    how = "runs concurrent with another algorithm's, " if paired else ""
    for name in measured:
        whole, steady = times[name]
        rounds = sum(len(r) for r in runs[name])
        rows.append(
            {
                "name": f"{name} round, {LABELS[config]}",
                "measured": round(steady, 2),
                "target": None,
                "ok": None,
                "unit": "s",
                "note": f"median of {rounds} steady rounds ({how}{len(runs[name])} runs); "
                f"whole runs: {whole:.2f} s per round",
            }
        )
    for name, target in TARGETS.items():
        if paired:  # FedAvg's runs: for each target in turn, two per repeat
            mine = [i for i, _ in enumerate(runs["fedavg"]) if _pair_of(i) == name]
            ratios = pair_ratios(runs[name], [runs["fedavg"][i] for i in mine])
            pooled = times[name][1] / statistics.median(
                [s for i in mine for s in runs["fedavg"][i]]
            )
            ratio = statistics.median(ratios)
            note = f"median of {len(ratios)} concurrent pairs; pooled rounds: {pooled:.2f}"
        else:  # run r of each algorithm: back to back within repeat r
            ratios = pair_ratios(runs[name], runs["fedavg"])
            ratio = times[name][1] / times["fedavg"][1]
            note = "steady rounds (pooled medians)"
        whole = times[name][0] / times["fedavg"][0]
        rows.append(
            {
                "name": f"{name} round / FedAvg round, {LABELS[config]}",
                "measured": round(ratio, 3),
                "target": target,
                "ok": ratio <= target,
                "note": f"{note}; per-pair ratios {min(ratios):.2f}-{max(ratios):.2f}; "
                f"whole runs: {whole:.2f}",
            }
        )
    return rows


def _pair_of(index: int) -> str:
    """The TARGETS algorithm FedAvg's run ``index`` ran beside (paired mode: per repeat,
    two runs beside each target, in TARGETS order)."""
    names = list(TARGETS)
    return names[(index // 2) % len(names)]


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv), indent=1))
