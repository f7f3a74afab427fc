"""The members of a phase step together (``Worker.receive_many``, ``send_many``,
``metrics_many``; GADMM's rules on the members' vectors as the rows of one array): every
number must be the one a worker stepping alone gives.

The reference is a registered subclass of each algorithm that overrides ``receive``,
``step`` and ``metrics`` with calls of its parent's: the many-methods then fall back to one
call per worker, and a GADMM step of one worker is a phase of one row (the Flower
ClientApp's case). Histories and final models are compared bit for bit, on graphs whose
workers have one to four neighbours, for every variant of the family and for gossip.
"""

from __future__ import annotations

import numpy as np
import pytest

from flower_qgadmm.algorithms import REGISTRY, Gadmm, Worker, get_algorithm, register
from flower_qgadmm.algorithms import gadmm as gadmm_module
from flower_qgadmm.algorithms.gadmm import GadmmSettings
from flower_qgadmm.compression import PayloadError
from flower_qgadmm.compression.memory import DecodeMemo, PublicCopies, receive_rows
from flower_qgadmm.data import load_dataset
from flower_qgadmm.numeric import row_dots, rows_beyond, rows_within, within
from flower_qgadmm.reference import (
    InProcessTransport,
    least_squares_solvers,
    make_engine,
    run_reference,
)
from flower_qgadmm.solvers import LeastSquaresSolver, LocalSolver
from flower_qgadmm.topology import chain, grid, random_bipartite, ring


def one_by_one(parent: type) -> type:
    """``parent`` with every step, receive and report its own call (no rows)."""

    class OneByOne(parent):
        def receive(self, src, payload):
            return super().receive(src, payload)

        def step(self, iteration, phase):
            return super().step(iteration, phase)

        def metrics(self, evaluate=True):
            return super().metrics(evaluate)

    return OneByOne


@pytest.fixture
def alone():
    """Register the one-by-one twin of an algorithm; removed afterwards."""
    names = []

    def make(algorithm: str) -> str:
        spec = get_algorithm(algorithm)
        name = f"{algorithm}-one-by-one"
        register(name, one_by_one(spec.worker), solver=spec.solver, **spec.options)
        names.append(name)
        return name

    yield make
    for name in names:
        REGISTRY.pop(name, None)


def solvers(n: int, dim: int = 6, seed: int = 3):
    return least_squares_solvers(load_dataset(n, 15, dim, 0.1, seed=seed))


GRAPHS = {
    "chain": chain(9),
    "even ring": ring(8),
    "grid": grid(12),  # up to 4 neighbours
    "random bipartite": random_bipartite(10, seed=2, param=0.4),
}
VARIANTS = {
    "gadmm": ("gadmm", {}),
    "q-gadmm": ("q-gadmm", {"bits": 3}),
    "adaptive": ("q-gadmm", {"bits": 2, "adaptive_bits": True}),
    "censoring": ("gadmm", {"censoring": True, "censor_tau0": 0.05}),
    "q-censoring": ("q-gadmm", {"censoring": True, "bits": 4}),
}


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_phase_in_rows_equals_its_workers_alone(alone, graph, variant) -> None:
    algorithm, changes = VARIANTS[variant]
    topology = GRAPHS[graph]
    settings = GadmmSettings(rho=3.0, dual_step=1.0, scale_features=False, **changes)
    n = len(topology.active)
    rows = run_reference(algorithm, solvers(n), 25, settings, seed=5, graph=topology)
    single = run_reference(alone(algorithm), solvers(n), 25, settings, seed=5, graph=topology)
    assert rows.history == single.history  # every number, bits and metrics included
    assert np.array_equal(rows.models, single.models)
    if variant.endswith("censoring"):  # the test exercises what it names
        assert any(r["censored"] for r in rows.history), rows.history[-1]


def test_a_large_phase_signs_its_edges_per_row(alone, monkeypatch) -> None:
    """Above FULL_SIGNS the edge signs are one per row (broadcast): the same numbers."""
    wirings = ((0, 0, (1, 3)), (2, 0, (1, 3)))
    assert [s.shape for s in gadmm_module._layout(wirings, 6)[2]] == [(2, 6), (2, 6)]
    monkeypatch.setattr(gadmm_module, "FULL_SIGNS", 0)
    gadmm_module._layout.cache_clear()
    assert [s.shape for s in gadmm_module._layout(wirings, 6)[2]] == [(2, 1), (2, 1)]
    settings = GadmmSettings(rho=3.0, dual_step=1.0, scale_features=False)
    topology = GRAPHS["grid"]
    n = len(topology.active)
    rows = run_reference("gadmm", solvers(n), 25, settings, seed=5, graph=topology)
    single = run_reference(alone("gadmm"), solvers(n), 25, settings, seed=5, graph=topology)
    gadmm_module._layout.cache_clear()
    assert rows.history == single.history
    assert np.array_equal(rows.models, single.models)


@pytest.mark.parametrize("algorithm", ["gadmm", "q-gadmm", "d-psgd"])
def test_every_payload_is_received_from_the_memo_of_the_last_phase(algorithm, monkeypatch):
    """The in-process transport keeps each payload's decoded change (its sender's) until
    the next phase received it: no receiver decodes a payload again, and the memo holds
    one phase's payloads at most."""
    decoded = []
    original = PublicCopies.decode
    monkeypatch.setattr(
        PublicCopies, "decode", lambda self, *a: decoded.append(self.node) or original(self, *a)
    )
    engine = make_engine(algorithm, solvers(12), grid(12), seed=2)
    engine.start()
    sizes = []
    step = engine.transport.step

    def recording(*args, **kwargs):
        out = step(*args, **kwargs)
        sizes.append(len(engine.transport.memo))
        return out

    monkeypatch.setattr(engine.transport, "step", recording)
    for k in range(1, 6):
        decoded.clear()
        row = engine.run_round(k)
        assert 0 < row["round_transmissions"]
        assert len(decoded) <= row["round_transmissions"]  # senders only, once each
    assert max(sizes) == max(len(p.members) for p in engine.phases)


def test_gossip_receives_in_rows_as_alone(alone) -> None:
    rows = run_reference("d-psgd", solvers(8), 20, seed=1, graph=ring(8))
    single = run_reference(alone("d-psgd"), solvers(8), 20, seed=1, graph=ring(8))
    assert rows.history == single.history
    assert np.array_equal(rows.models, single.models)


def phase_workers(topology, settings, seed=4):
    """The set-up workers of a GADMM run on ``topology`` (an in-process transport)."""
    spec = get_algorithm("gadmm")
    transport = InProcessTransport("gadmm", solvers(len(topology.active)), seed)
    wirings = {n: spec.worker.wiring_of(topology, n, None) for n in topology.active}
    transport.setup(wirings, settings)
    return transport


def test_step_many_leaves_every_worker_in_the_state_of_its_own_step() -> None:
    """Duals (pending ones too), copies, models, counters: state_dict by state_dict."""
    settings = GadmmSettings(rho=2.0, dual_step=1.0, scale_features=False)
    topology = grid(12)
    heads, tails = Gadmm.schedule(topology)
    together, apart = phase_workers(topology, settings), phase_workers(topology, settings)
    for k in range(1, 4):
        for phase in (heads, tails):
            many = Gadmm.step_many([together.workers[n] for n in phase.members], k, phase.name)
            one = [apart.workers[n].step(k, phase.name) for n in phase.members]
            assert many == one
            for n in topology.active:  # deliver as the relay does, to both sets
                for m, payload in zip(phase.members, many, strict=True):
                    if n in topology.neighbours(m):
                        together.workers[n].receive(m, payload)
                        apart.workers[n].receive(m, payload)
    for n in topology.active:
        (a, sa), (b, sb) = together.workers[n].state_dict(), apart.workers[n].state_dict()
        assert sa == sb
        assert a.keys() == b.keys() and all(np.array_equal(a[key], b[key]) for key in a)


def test_a_phase_refuses_a_member_of_the_other_group() -> None:
    transport = phase_workers(chain(4), GadmmSettings(rho=2.0, dual_step=1.0))
    with pytest.raises(ValueError, match="worker 1 is a tail, asked to step as a head"):
        Gadmm.step_many([transport.workers[0], transport.workers[1]], 1, "head")


def test_a_diverging_row_names_its_worker() -> None:
    """The divergence check of the rows raises what the worker's own check raises."""

    class Exploding(LeastSquaresSolver):
        def solve(self, linear, weight, start=None, key=None):
            return np.full(self.dim, 1e31)

    settings = GadmmSettings(rho=2.0, dual_step=1.0, scale_features=False)
    transport = phase_workers(chain(6), settings)
    transport.workers[2].solver.__class__ = Exploding  # one solver of another class
    members = [transport.workers[n] for n in (0, 2, 4)]
    with pytest.raises(FloatingPointError, match="worker 2 diverged at iteration 1"):
        Gadmm.step_many(members, 1, "head")


def test_receive_many_blames_as_receive_all() -> None:
    """A payload the memo holds but that would put the copy out of range, one from a
    non-neighbour and one that is not a payload: each blamed with receive's reason."""
    settings = GadmmSettings(rho=2.0, dual_step=1.0, scale_features=False)
    topology = chain(4)
    transport = phase_workers(topology, settings)
    w1, w2 = transport.workers[1], transport.workers[2]
    huge = b"huge-payload"
    transport.memo[huge] = np.full(w1.theta.size, 1e31)
    inboxes = [{0: huge, 3: b"x"}, {3: b"\x20garbage"}]
    blamed = Gadmm.receive_many([w1, w2], inboxes)
    assert set(blamed[0]) == {0, 3} and set(blamed[1]) == {3}
    assert "refused" in blamed[0][0] and "non-neighbour" in blamed[0][3]
    for w, inbox, got in zip((w1, w2), inboxes, blamed, strict=True):
        reasons = {}
        for src, payload in inbox.items():
            try:
                w.copies.receive(src, payload)
            except PayloadError as exc:
                reasons[src] = str(exc)
        assert got == reasons
    assert np.array_equal(w1.copies.hat[0], np.zeros(w1.theta.size))  # copy kept


def test_solve_many_is_each_solve() -> None:
    """LeastSquaresSolver.solve_many: the floats of solve, the factor made on first use,
    a non-finite right-hand side refused with solve's error."""
    group = solvers(5, dim=7)
    rng = np.random.default_rng(0)
    linear = rng.standard_normal((5, 7)) * 10
    weights = [1.5, 3.0, 3.0, 3.0, 1.5]
    starts = [np.zeros(7)] * 5
    keys = [(0, n, 1) for n in range(5)]
    for _ in range(2):  # factors made, then cached
        many = LeastSquaresSolver.solve_many(group, linear, weights, starts, keys)
        one = [s.solve(row, w) for s, row, w in zip(group, linear, weights, strict=True)]
        assert all(np.array_equal(a, b) for a, b in zip(many, one, strict=True))
    assert LocalSolver.solve_many is not LeastSquaresSolver.solve_many
    linear[3, 2] = np.inf
    with pytest.raises(FloatingPointError, match="right-hand side"):
        LeastSquaresSolver.solve_many(group, linear, weights, starts, keys)


def test_objective_many_is_each_objective(monkeypatch) -> None:
    """LeastSquaresSolver.objective_many: the floats of objective with the features
    stacked (kept while the solvers keep their arrays, built anew after set_scale), and
    one by one for a ridge term, different sample counts, a stack beyond STACK_BYTES or
    float32 models."""
    from flower_qgadmm import solvers as solvers_module

    rng = np.random.default_rng(2)
    group = solvers(6, dim=9)
    thetas = [rng.standard_normal(9) * 10.0**e for e in range(-3, 3)]

    def each(group, thetas):
        return [s.objective(t) for s, t in zip(group, thetas, strict=True)]

    built, calls = solvers_module._stacked, []

    def counted(group):
        out = built(group)
        calls.append(out is not None and out[0] is solvers_module._stacks[tuple(map(id, group))][1])
        return out

    monkeypatch.setattr(solvers_module, "_stacked", counted)
    for _ in range(2):  # stacked, then the kept stack
        assert LeastSquaresSolver.objective_many(group, thetas) == each(group, thetas)
    kept = solvers_module._stacks[tuple(map(id, group))][1]
    group[2].set_scale(np.linspace(1.0, 3.0, 9))  # other features: a new stack
    assert LeastSquaresSolver.objective_many(group, thetas) == each(group, thetas)
    assert solvers_module._stacks[tuple(map(id, group))][1] is not kept
    ridge = least_squares_solvers(load_dataset(3, 15, 9, 0.1, seed=1), l2=0.5)
    assert LeastSquaresSolver.objective_many(ridge, thetas[:3]) == each(ridge, thetas[:3])
    uneven = [*solvers(2, dim=9), *least_squares_solvers(load_dataset(1, 11, 9, 0.1))]
    assert LeastSquaresSolver.objective_many(uneven, thetas[:3]) == each(uneven, thetas[:3])
    narrow = [t.astype(np.float32) for t in thetas]
    assert LeastSquaresSolver.objective_many(group, narrow) == each(group, narrow)
    assert calls == [True, True, True, False, False, True]  # ridge, uneven: one by one
    solvers_module._stacks.clear()
    monkeypatch.setattr(solvers_module, "STACK_BYTES", 8 * 9 * 15 * 5)  # below six
    assert built(group) is None
    assert LeastSquaresSolver.objective_many(group, thetas) == each(group, thetas)


def test_rows_within_and_row_dots_are_the_vector_functions() -> None:
    rng = np.random.default_rng(1)
    block = rng.standard_normal((6, 33)) * 10.0 ** rng.integers(-3, 3, size=(6, 1))
    assert [float(x) for x in row_dots(block)] == [float(r.dot(r)) for r in block]
    finite = block.copy()
    block[1, 4], block[3, 0], block[4, 7] = np.nan, 2.0, -np.inf
    for bound in (1.0, 2.0, 1e3, 1e30):
        assert rows_within(block, bound).tolist() == [within(r, bound) for r in block]
        for a in (block, finite):  # the rows beyond: those rows_within refuses
            beyond = [i for i, r in enumerate(a) if not within(r, bound)]
            assert rows_beyond(a, bound) == beyond
    assert rows_beyond(finite, 1e30) == [] and rows_beyond(finite, 1e-3) == list(range(6))


class Float32Solver(LeastSquaresSolver):
    """A custom solver whose solve returns float32 (the worker accepts any float vector)."""

    def solve(self, linear, weight, start=None, key=None):
        return super().solve(linear, weight, start, key).astype(np.float32)


def test_a_subclass_solve_and_float32_models_step_in_rows_as_alone(alone) -> None:
    """solve_many calls a subclass's own solve; float32 models give the float64
    differences and distances of the per-worker expressions."""

    def float32_solvers(n):
        group = solvers(n)
        for s in group:
            s.__class__ = Float32Solver
        return group

    settings = GadmmSettings(rho=3.0, dual_step=1.0, scale_features=False)
    rows = run_reference("gadmm", float32_solvers(9), 15, settings, seed=2, graph=grid(9))
    single = run_reference(alone("gadmm"), float32_solvers(9), 15, settings, seed=2, graph=grid(9))
    assert rows.history == single.history
    assert np.array_equal(rows.models, single.models)
    exact = run_reference("gadmm", solvers(9), 15, settings, seed=2, graph=grid(9))
    assert rows.history != exact.history  # the float32 models were used


def test_receivers_share_the_senders_copy_when_it_is_their_copy_plus_the_change() -> None:
    """With the transport's DecodeMemo, the sender publishes its copy before and after a
    change; a receiver holding ``before`` itself takes ``after`` (one read-only vector),
    one holding another vector adds the change and takes ``after`` only if the sum has
    its bits (-0 is not +0); a copy beyond MAX_COPY is not published."""
    settings = GadmmSettings(rho=2.0, dual_step=1.0, scale_features=False)
    transport = phase_workers(chain(3), settings)
    w0, w1, w2 = (transport.workers[n] for n in range(3))
    memo = transport.memo
    assert isinstance(memo, DecodeMemo) and w1.copies.memo is memo
    d = w0.theta.size
    change = np.arange(1.0, d + 1.0)
    change[0] = -0.0  # +0 - 0 = +0, -0 - 0 = -0
    change.flags.writeable = False
    before0, before2 = w0.copies.own, w2.copies.own
    for w, payload in ((w0, b"p0"), (w2, b"p2")):
        memo[payload] = change  # what encode puts
        w.copies.commit(change, payload)
    after0, after2 = w0.copies.own, w2.copies.own
    assert memo.published == {b"p0": (before0, after0), b"p2": (before2, after2)}
    assert not after0.flags.writeable
    w1.copies.hat[0] = before0  # the sender's vector itself
    w1.copies.hat[2] = np.full(d, -0.0)  # equal to before2, other bits
    assert receive_rows([w1.copies], [{0: b"p0", 2: b"p2"}]) == [{}]
    assert w1.copies.hat[0] is after0
    kept = w1.copies.hat[2]
    assert kept is not after2 and np.signbit(kept[0]) and not np.signbit(after2[0])
    assert np.array_equal(kept, after2)  # the same values, computed by the receiver
    w1.copies.hat[2] = before2.copy()  # the same bits, another vector: shared from now on
    assert receive_rows([w1.copies], [{2: b"p2"}]) == [{}]
    assert w1.copies.hat[2] is after2
    memo[b"big"] = huge = np.full(d, 1e31)
    w2.copies.commit(huge, b"big")
    assert b"big" not in memo.published  # out of range: the receivers refuse it
    w0.copies.commit(change + 0.0, b"p0")  # not the change the memo holds for it
    assert memo.published[b"p0"] == (before0, after0)
    assert "refused" in receive_rows([w1.copies], [{2: b"big"}])[0][2]
    assert w1.copies.hat[2] is after2
    memo.clear()
    assert not memo and not memo.published


@pytest.mark.parametrize("algorithm", ["gadmm", "q-gadmm", "d-psgd"])
def test_in_a_run_the_receivers_hold_the_senders_copies(algorithm) -> None:
    """After the first exchange every receiver of a payload holds its sender's own copy
    (the same read-only vector), for the rows' commit (GADMM) and the per-worker one."""
    engine = make_engine(algorithm, solvers(8), ring(8), seed=2)
    engine.start()
    for k in range(1, 4):
        engine.run_round(k)
    workers = engine.transport.workers
    inboxes = engine.inboxes(list(workers))  # the last phase's payloads, delivered
    assert engine.spec.worker.receive_many(list(workers.values()), list(inboxes.values()))
    for n, w in workers.items():
        for m in w.neighbours:
            assert w.copies.hat[m] is workers[m].copies.own, (n, m)
            assert not w.copies.hat[m].flags.writeable


def test_gadmm_reports_the_distances_of_its_rows(monkeypatch) -> None:
    """send_and_report_many: on a graph of one or two neighbours per worker the reports
    take the step's distances (metrics_many is not called); beyond, metrics_many."""
    calls = []
    original = Worker.metrics_many.__func__

    def counted(cls, workers, evaluate=True):
        calls.append(len(workers))
        return original(cls, workers, evaluate)

    monkeypatch.setattr(Worker, "metrics_many", classmethod(counted))
    settings = GadmmSettings(rho=3.0, dual_step=1.0, scale_features=False)
    run_reference("gadmm", solvers(9), 5, settings, seed=5, graph=chain(9))
    assert calls == []
    run_reference("gadmm", solvers(12), 5, settings, seed=5, graph=grid(12))
    assert len(calls) == 10
