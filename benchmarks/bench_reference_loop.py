"""The reference runner against a plain numpy loop of the same algorithm.

GADMM and 4-bit Q-GADMM on the GADMM paper's set-up (24 workers on a chain, 50 samples x
50 features each, synthetic and seeded), 1,000 iterations, rho = 20: the reference runner
(``run_reference``, everything it does: set-up, optimum, history rows with F, gap and
disagreement every iteration, models pulled every 10) against a plain loop written here
from the papers (cached inverses, the objective F every iteration, the stochastic
quantizer with the same per-(worker, iteration) RNG and the range R as the message
carries it). Features unscaled (``scale-features = false``), so both solve the same
problem; the run checks that their objectives agree (:data:`SAME_OBJECTIVES`, relative)
and reports the difference. Timings interleaved, median of 3
(wall clock; the note adds the ratio of CPU-time medians, steadier on a loaded machine).
Target (issue "Scale and speed", point 1): the runner within 2x the plain loop.
``--quick``: 100 iterations, one repeat.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from flower_qgadmm.algorithms import Worker
from flower_qgadmm.algorithms import gadmm as gadmm_module
from flower_qgadmm.algorithms.gadmm import Gadmm
from flower_qgadmm.compression.memory import PublicCopies
from flower_qgadmm.config import RunConfig
from flower_qgadmm.data import experiment_datasets
from flower_qgadmm.reference import InProcessTransport, least_squares_solvers, run_from_config
from flower_qgadmm.rounds import RoundEngine
from flower_qgadmm.solvers import LeastSquaresSolver
from flower_qgadmm.streams import KeyedStreams

TITLE = "Reference runner vs a plain numpy loop"
NOTES = """
**Both meet 2x; GADMM only just** (1.9-2.0x over runs since session 26; Q-GADMM about
1.4x). At d = 50 a numpy call costs about as much as its
arithmetic (0.25-0.5 us), so time is counted in calls. The plain loop sends nothing (its
"message" is an `astype` or a few array operations) and checks nothing. The runner does
what the product promises, per worker and step: it writes each payload's bytes (the bits
it reports are those bytes) and the receivers apply them to their own copies, the relay
checks every envelope and keeps the mailbox, every worker reports its objective and
disagreement and checks its model, and the local solve is the Cholesky solve (`potrs`)
the histories are tested with. The row "all but the update rules" is what that part alone
costs, in units of the plain loop.

**A phase steps together** (session 22): the members of a phase receive, step and report
in a few numpy calls per rule instead of one call chain per worker
(`Worker.receive_many` / `send_many` / `metrics_many`; `Gadmm.step_many` holds the rules
on the members' vectors as the rows of one array, and a worker alone, a Flower ClientApp,
is a phase of one row; `LeastSquaresSolver.solve_many` forms and checks the right-hand
sides at once, then `potrs` per row). Every history is unchanged: 32 runs (chain, even
ring, grid, random bipartite graph x GADMM, Q-GADMM, adaptive, censored GADMM and
Q-GADMM, D-PSGD, CHOCO-SGD, Malcom-PSGD) hashed identical before and after, and
`tests/test_phase_rows.py` holds the rows to the workers stepping one by one. GADMM went
from 3.7-3.9x to 2.8-2.9x (quiet machine, medians of 5 interleaved runs).

**Less per-worker Python** (session 24): where a phase's members sit in GADMM's rows is
computed once per wiring (`gadmm._layout`), a slot's new duals are reused as rows by the
dual sum, the own copies are gathered once per phase, the objectives come from one
stacked product (`LeastSquaresSolver.objective_many` over the phase's features, stacked
once), the disagreement of one or two neighbours from two segment reductions, the
relay takes a phase's inboxes and counts its sends at once and passes a phase of float32
messages at a glance (`Codec.accepts_all`). The runner's CPU time fell by 9-15% (three
comparisons interleaved with the previous commit, minimum of 20 runs each); histories
unchanged.

**Fewer calls per phase** (session 25): the edge duals' change is the copies' difference
times the signed step (no `np.where`), with the signs written out per model entry (a
full-size product is about 3x faster than a broadcast column at d = 50); a tail's duals
are gathered once for the dual sum and the update after its send; the rows' range checks
take one sum of squares and build no array of answers (`numeric.rows_beyond`); `potrs`
gets its arguments by position (f2py then parses no keywords: -0.35 us per solve); the
reports are dict literals, the models gathered once for the disagreements and the
objectives; the decode memo is cleared once a phase received instead of popping the
payloads of the phase before; the engine maps the last steps and scans the results for
models only in rounds that ask for them. The runner's CPU time fell by 10-13% against
session 24's code (interleaved A/B, minimum of 20-30 runs each; 2.4-2.5x -> 2.1-2.2x);
histories unchanged.

**Work done once** (session 26): a payload's receivers no longer add its change to their
copies: in one process the sender publishes its copy before and after the change
(`memory.DecodeMemo`), and a receiver whose copy is the sender's "before" (the same
vector) takes its "after", the same floats; the first exchange makes every copy one
shared read-only vector (a receiver adds the change once and takes the sender's vector
when the bits agree). GADMM's reports take the distances to the neighbours' copies from
the rows of the step (`Gadmm.send_and_report_many`, `_Slots.distances`) instead of
gathering the models and copies again; the relay's mailbox is keyed by receiver; the
edge signs times the dual step are made once per layout. The runner's CPU time fell by
10% against session 25's code (0.564 -> 0.505 s in interleaved A/B runs, minimum of 30
runs each; 2.1x -> 1.9x); histories unchanged.

**What is left.** A phase of 12 workers costs about 250 us against the plain loop's
130 us: 12 `potrs` on each worker's own factor (~2 us each through scipy's wrapper, where
the plain loop multiplies by a cached inverse: other floats), about 80 numpy calls on
the phase's rows, and the bookkeeping the product keeps per worker and per message (its
StepResult and report, the mailbox entries, the duals in each worker's own dicts, the
history row, which the Flower path and the checkpoints read). The tenth
session had cut the Python overhead of the per-worker path (Q-GADMM 2.45 -> 1.86x, GADMM
3.65 -> 3.17x then). The plain loop builds `default_rng([seed, worker, iteration])` for
every message (11 us here); the runner's workers draw from the same streams through
`streams.KeyedStreams` (created once per worker, the keys of 256 iterations hashed at
once: about 2 us per message).
"""
SETUP = {"num-workers": 24, "samples-per-worker": 50, "dim": 50, "rho": 20.0}
# the papers' coordinates: the runner's default feature scaling would solve another
# (equivalent) problem than the plain loop's; with it off, both give the same objectives
SETUP["scale-features"] = False
SAME_OBJECTIVES = 1e-6  # largest relative difference of the two loops' objectives


def bfloat16_up(r: float) -> float:
    """The smallest float32 >= r whose low 16 bits are 0 (the range a 16-bit header
    carries), written here in numpy."""
    f = np.float32(r)
    if f < r:
        f = np.nextafter(f, np.float32(np.inf))
    word = int(np.array(f).view(np.uint32))
    if word & 0xFFFF:
        word = (word | 0xFFFF) + 1
    return float(np.array(word, dtype=np.uint32).view(np.float32))


def plain_loop(datasets, rho: float, iterations: int, bits: int | None, seed: int = 0):
    """(Q-)GADMM on a chain in plain numpy; returns the objective of every iteration."""
    n_workers, d = len(datasets), datasets[0][0].shape[1]
    b = [X.T @ y for X, y in datasets]
    degree = [1 if n in (0, n_workers - 1) else 2 for n in range(n_workers)]
    inverse = [
        np.linalg.inv(X.T @ X + rho * degree[n] * np.eye(d)) for n, (X, _) in enumerate(datasets)
    ]
    theta, hat, lam = (
        np.zeros((n_workers, d)),
        np.zeros((n_workers, d)),
        np.zeros((n_workers - 1, d)),
    )
    objective = np.empty(iterations)
    for k in range(1, iterations + 1):
        for first in (0, 1):
            for n in range(first, n_workers, 2):
                rhs = b[n].copy()
                if n > 0:
                    rhs += rho * hat[n - 1] + lam[n - 1]
                if n < n_workers - 1:
                    rhs += rho * hat[n + 1] - lam[n]
                theta[n] = inverse[n] @ rhs
            for n in range(first, n_workers, 2):
                v = theta[n] - hat[n]
                if bits is None:
                    hat[n] += v.astype(np.float32)
                    continue
                r = bfloat16_up(float(np.max(np.abs(v))))  # R as the message carries it
                if r > 0:
                    top = 2**bits - 1
                    delta = 2 * r / top
                    c = (v + r) / delta
                    q = np.floor(c) + (np.random.default_rng([seed, n, k]).random(d) < c % 1)
                    hat[n] += delta * np.minimum(q, top) - r
        lam += rho * (hat[:-1] - hat[1:])
        objective[k - 1] = sum(
            0.5 * np.sum((X @ t - y) ** 2) for t, (X, y) in zip(theta, datasets, strict=True)
        )
    return objective


def run(quick: bool = False) -> list[dict]:
    iterations, repeats = (100, 1) if quick else (1000, 3)
    rows = []
    for algorithm, bits in (("gadmm", None), ("q-gadmm", 4)):
        extra = {} if bits is None else {"bits": bits}
        cfg = RunConfig.from_run_config(
            {**SETTINGS_OF(algorithm), "num-iterations": iterations, **extra}
        )
        datasets = experiment_datasets(cfg)
        ours, plain, ours_cpu, plain_cpu = [], [], [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            history = run_from_config(cfg, least_squares_solvers(datasets)).history
            ours.append(time.perf_counter() - t0)
            ours_cpu.append(time.process_time() - c0)
            t0, c0 = time.perf_counter(), time.process_time()
            objective = plain_loop(datasets, cfg.algo.rho, iterations, bits, cfg.seed)
            plain.append(time.perf_counter() - t0)
            plain_cpu.append(time.process_time() - c0)
        # the same algorithm: the same objectives (the runner solves by Cholesky, the
        # loop by a cached inverse: last-bit differences, which can flip a rare
        # stochastic rounding of Q-GADMM late in the run)
        same = float(np.max(np.abs([r["objective"] for r in history] - objective) / objective))
        if same > SAME_OBJECTIVES:
            raise RuntimeError(f"{algorithm}: the plain loop's objectives differ by {same:.2e}")
        ratio = statistics.median(ours) / statistics.median(plain)
        cpu_ratio = statistics.median(ours_cpu) / statistics.median(plain_cpu)
        rows.append(
            {
                "name": f"{algorithm}: reference runner / plain loop",
                "measured": round(ratio, 2),
                "target": 2.0,
                "ok": ratio <= 2.0,
                "note": f"{statistics.median(ours):.3f} s vs {statistics.median(plain):.3f} s "
                f"(CPU time: {cpu_ratio:.2f}x); objectives equal to {same:.1e} (relative)",
            }
        )
        rows += breakdown(algorithm, cfg, datasets, ratio)
    return rows


# (label, class or module, attribute) timed in the breakdown; each part's time is exclusive: what it
# spends in the other timed parts it calls (a phase's steps: their solves, their encode) is
# counted there. The members of a phase step together (Worker.receive_many,
# send_and_report_many; GADMM's rows in Gadmm._steps, whose distances to the neighbours'
# copies the reports take: _Slots.distances, Worker._reports).
PARTS = (
    ("worker steps: update rules, divergence check, bookkeeping", Gadmm, "_steps"),
    ("worker steps: receive payloads into the copies", Worker, "receive_many"),
    ("worker steps: local solve (potrs)", LeastSquaresSolver, "solve"),
    ("worker steps: local solve (potrs)", LeastSquaresSolver, "solve_many"),
    ("worker steps: quantize + encode + own copy", PublicCopies, "encode"),
    ("worker steps: quantize + encode + own copy", gadmm_module, "encode_rows"),
    ("worker steps: quantize + encode + own copy", gadmm_module, "commit_rows"),
    ("worker steps: RNG (keyed streams; the plain loop builds default_rng)", KeyedStreams, "at"),
    ("worker steps: metrics (objective, disagreement)", Worker, "metrics_many"),
    ("worker steps: metrics (objective, disagreement)", Worker, "_reports"),
    ("worker steps: metrics (objective, disagreement)", gadmm_module._Slots, "distances"),
    ("relay: the in-process transport (a phase's calls, results)", InProcessTransport, "step"),
    ("relay: envelope checks", RoundEngine, "faults"),
    ("relay: mailbox (inbox, post)", RoundEngine, "post"),
    ("relay: mailbox (inbox, post)", RoundEngine, "inboxes"),
    ("relay: history row, watchdog", RoundEngine, "_row"),
)


def breakdown(algorithm: str, cfg: RunConfig, datasets, ratio: float) -> list[dict]:
    """Where the runner's time goes: one more run with every part of :data:`PARTS` timed
    (exclusive times; the timers add about 0.3 us per call, so the shares, not the
    seconds, are what to read), each share times the measured ratio = its cost in units
    of the plain loop; "relay: rest" is the engine's own loop and set-up."""
    spent: dict[str, float] = dict.fromkeys([label for label, _, _ in PARTS], 0.0)
    stack: list[float] = []  # time of the callees of each open timed call
    originals = []

    def timed(label, fn):
        def call(*args, **kwargs):
            stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                took = time.perf_counter() - t0
                inner = stack.pop()
                spent[label] += took - inner
                if stack:
                    stack[-1] += took

        return call

    for label, owner, name in PARTS:
        original = vars(owner)[name]
        originals.append((owner, name, original))
        if isinstance(original, classmethod):
            setattr(owner, name, classmethod(timed(label, original.__func__)))
        else:
            setattr(owner, name, timed(label, original))
    try:
        t0 = time.perf_counter()
        run_from_config(cfg, least_squares_solvers(datasets))
        total = time.perf_counter() - t0
    finally:
        for cls, name, fn in originals:
            setattr(cls, name, fn)
    spent["relay: rest (engine loop, set-up)"] = total - sum(spent.values())
    rows = [
        {
            "name": f"breakdown {algorithm}: {label}",
            "measured": round(100 * t / total, 1),
            "unit": "%",
            "target": None,
            "ok": None,
            "note": f"{ratio * t / total:.2f}x the plain loop",
        }
        for label, t in spent.items()
    ]
    rest = total - spent[PARTS[0][0]]  # the update rules: what the plain loop does too
    rows.append(
        {
            "name": f"breakdown {algorithm}: all but the update rules / plain loop",
            "measured": round(ratio * rest / total, 2),
            "target": None,
            "ok": None,
            "note": "what the runner would cost if its update rules were free",
        }
    )
    return rows


def SETTINGS_OF(algorithm: str) -> dict:  # noqa: N802 - a table, read as a constant
    return {**SETUP, "algorithm": algorithm}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run("--quick" in sys.argv), indent=1))
