"""A round of ours vs a Flower FedAvg round, same SuperNodes, model and data.

``flwr run`` of this repository's app on the digits task (the MLP, d = 4,810), 10
simulated SuperNodes, 30 rounds each: Q-SGADMM 4-bit (two phases per iteration), D-PSGD
(one gossip phase) and Flower's own FedAvg, at two workloads (:data:`WORKLOADS`): 5 local
steps per message (light: Flower's 0.1 s dispatch tick dominates a round) and 40 (heavier:
the training does). Time per round is that of the steady rounds
2 .. 29, from the times their history rows appeared (:meth:`flwr_local.FlwrRun.
steady_round`), the same measure for all three: it leaves out SuperLink and Ray start-up,
our set-up exchanges, the workers' first import of torch and of their data (FedAvg's first
round pays them, our set-up does) and the last round's model pull. The strategy's own
time per round (what the ServerApp logs, first round included) is in the notes. Each
SuperLinks start with Ray's inline limit at 4 MiB for every app, as the README advises
for this model's node state (:mod:`flwr_local`). Each algorithm runs :data:`REPEATS` times,
interleaved, the order reversed every other pass; the ratios use the median times (single
runs of the FedAvg round ranged from 0.33 to 0.45 s on this machine). Targets (issue
"Scale and speed", point 4): a phase <= 0.6x a FedAvg round, a GADMM iteration <= 1.2x,
a gossip round <= 1.0x, for each workload. ``--quick``: skipped (eighteen real runs take
minutes).

A what-if, not part of the suite: ``BENCH_FLOWER_TICK=0.01 python benchmarks/run.py
--only bench_flower_phase --no-scripts`` runs the same measure with Flower's simulation
dispatch tick (0.1 s, see the notes) set to 0.01 s in the simulation process of every
run, ours and FedAvg's alike (:func:`tick_patch`: a ``sitecustomize`` on the runs'
``PYTHONPATH`` that acts in the ``flwr-simulation`` process only; the rest of Flower
untouched). The ratios then say what a phase costs against a FedAvg round once neither is
rounded up to whole ticks; its rows carry no target.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

TITLE = "Flower phase vs FedAvg round"
NOTES = """
**Flower's tick.** The simulation engine hands pushed messages to its backend from a
thread that looks at the SuperLink's state every 0.1 s (`flwr/server/superlink/fleet/vce/
vce_api.py`, `add_messages_to_queue`), so an exchange lasts about a whole number of ticks,
at least one. A group-ADMM iteration is two exchanges (the tails need the heads' new
copies), a FedAvg round one. With the light workload a FedAvg round (10 messages on one
Ray actor) took 2-3 ticks until 2026-12-04 and a Q-SGADMM phase (5 messages) 2, whence
0.67-0.73x per phase; on 2026-12-05 (a quieter machine) the FedAvg rounds took 0.13-0.15 s
and the phases about one tick (iterations of 0.213-0.217 s), whence 0.80x. Measured
with two Ray actors instead (one per core:
`BENCH_FLOWER_FEDERATION=client-resources-num-cpus=1`, 20 rounds, 2 runs each,
2026-12-02): FedAvg round 0.105 / 0.143 s, Q-SGADMM phase 0.109 / 0.121 s, D-PSGD
round 0.107 / 0.106 s, i.e. one tick each: phase 0.92x, iteration 1.85x. No exchange is
shorter than a tick, so once a FedAvg round fits in one, the phase target cannot be met
on this engine, whatever our messages cost. With the heavier workload the training
outweighs the tick and the ratios approach what the messages cost (a phase trains 5
models, a FedAvg round 10).

**D-PSGD** takes one gradient step per round (the algorithm; `local-steps` does not
apply), FedAvg `local-steps` steps: its row compares a round of each algorithm as
specified, not equal training work.
"""
ROUNDS = 30
REPEATS = 3
ALGORITHMS = ("fedavg", "q-sgadmm", "d-psgd")
# more `flwr run --federation-config` settings, e.g. "client-resources-num-cpus=1"
FEDERATION = os.environ.get("BENCH_FLOWER_FEDERATION", "")
# the what-if: Flower's dispatch tick in seconds in the simulation process ("" = Flower's)
TICK = os.environ.get("BENCH_FLOWER_TICK", "")
# name -> (local steps per message, algorithms): D-PSGD takes one gradient step per round
# whatever local-steps says, so only the light workload measures it
WORKLOADS = {"light": (5, ALGORITHMS), "heavier": (40, ("fedavg", "q-sgadmm"))}
BASE = {
    "task": "digits",
    "num-workers": 10,
    "num-iterations": ROUNDS,
    "rho": 1.0,
    "dual-step": 0.01,
    "bits": 4,
    "evaluate-every": 10,
}


def run(quick: bool = False) -> list[dict]:
    if quick:
        return [
            {
                "name": "Flower rounds",
                "measured": None,
                "target": None,
                "ok": None,
                "note": "skipped in --quick",
            }
        ]
    from flwr_local import flwr_run

    rows = []
    tick = float(TICK) if TICK else None
    with tempfile.TemporaryDirectory(prefix="flwr-tick-") as tmp:
        run_one = flwr_run if tick is None else tick_patched(flwr_run, tick, Path(tmp))
        for workload, (steps, algorithms) in WORKLOADS.items():
            rows += measure(run_one, workload, {**BASE, "local-steps": steps}, algorithms)
    if tick is not None:
        for r in rows:
            r["name"] += f" [what-if: Flower's tick {tick:g} s]"
            if r["target"] is not None:
                r["note"] = f"target on Flower's own tick: {r['target']:g}; " + r["note"]
            r["target"] = r["ok"] = None
    return rows


TICK_SITECUSTOMIZE = '''"""bench_flower_phase's what-if: Flower's dispatch tick at {tick} s."""
import os
import sys

if os.path.basename(sys.argv[0]) == "flwr-simulation":
    from flwr.server.superlink.fleet.vce import vce_api

    def add_messages_to_queue(state, queue, nodes_mapping, f_stop):
        """Flower 1.42's, with f_stop.wait({tick}) instead of f_stop.wait(0.1)."""
        while not f_stop.is_set():
            for node_id in nodes_mapping.keys():
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(msg)
            f_stop.wait({tick})

    vce_api.add_messages_to_queue = add_messages_to_queue
    open(os.path.join({folder!r}, "patched-%d" % os.getpid()), "w").close()
'''


def tick_patched(flwr_run, tick: float, folder: Path):
    """``flwr_run`` with :func:`tick_patch`'s environment, refusing a run whose simulation
    process was not patched (it must leave exactly one new mark)."""
    extra_env = tick_patch(tick, folder)

    def run_one(*args, **kwargs):
        result = flwr_run(*args, extra_env=extra_env, **kwargs)
        marks = list(folder.glob("patched-*"))
        for mark in marks:
            mark.unlink()
        if len(marks) != 1:
            raise RuntimeError(
                f"BENCH_FLOWER_TICK: {len(marks)} simulation processes patched in a run, not 1"
            )
        return result

    return run_one


def tick_patch(tick: float, folder: Path) -> dict[str, str]:
    """The environment that sets Flower's dispatch tick (``vce_api.add_messages_to_queue``
    of flwr 1.42: ``f_stop.wait(0.1)`` between looks at the SuperLink's state) to ``tick``
    seconds in the ``flwr-simulation`` processes of the runs: a ``sitecustomize`` in
    ``folder``, which also leaves a ``patched-<pid>`` file there when it took effect."""
    import inspect

    from flwr.server.superlink.fleet.vce import vce_api

    source = inspect.getsource(vce_api.add_messages_to_queue)
    if "f_stop.wait(0.1)" not in source or "limit=1" not in source:
        raise RuntimeError("BENCH_FLOWER_TICK: Flower's dispatch loop is not flwr 1.42's")
    (folder / "sitecustomize.py").write_text(
        TICK_SITECUSTOMIZE.format(tick=repr(tick), folder=str(folder))
    )
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def measure(flwr_run, workload: str, config: dict, algorithms: tuple[str, ...]) -> list[dict]:
    """The rows of one workload: FedAvg's steady round, then the ratios of ``algorithms``."""
    times: dict[str, list[float]] = {a: [] for a in algorithms}
    whole: dict[str, list[float]] = {a: [] for a in algorithms}
    for repeat in range(REPEATS):
        for algorithm in algorithms if repeat % 2 == 0 else algorithms[::-1]:
            result = flwr_run(
                {**config, "algorithm": algorithm}, supernodes=10, federation=FEDERATION
            )
            times[algorithm].append(result.steady_round())
            whole[algorithm].append(result.per_round(ROUNDS))
    per_round = {a: statistics.median(t) for a, t in times.items()}
    logged = {a: statistics.median(t) for a, t in whole.items()}
    fedavg = per_round["fedavg"]
    label = f"{workload}, {config['local-steps']} local steps"
    rows = [
        {
            "name": f"FedAvg round (10 SuperNodes, digits MLP, {label}), steady",
            "measured": round(fedavg, 3),
            "target": None,
            "ok": None,
            "unit": "s",
            "note": "runs: " + ", ".join(f"{t:.3f}" for t in times["fedavg"]),
        }
    ]
    for name, key, share, target in (
        ("Q-SGADMM phase / FedAvg round", "q-sgadmm", 0.5, 0.6),
        ("Q-SGADMM iteration / FedAvg round", "q-sgadmm", 1.0, 1.2),
        ("D-PSGD round / FedAvg round", "d-psgd", 1.0, 1.0),
    ):
        if key not in per_round:
            continue
        value = share * per_round[key] / fedavg
        note = (
            f"{key} runs: " + ", ".join(f"{t:.3f}" for t in times[key]) + " s; strategy's "
            f"logged time per round, first round included: "
            f"{share * logged[key] / logged['fedavg']:.2f}x"
        )
        rows.append(
            {
                "name": f"{name} ({label})",
                "measured": round(value, 3),
                "target": target,
                "ok": value <= target,
                "note": note,
            }
        )
    return rows
