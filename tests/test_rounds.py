"""The round engine: any registered algorithm runs in both transports unchanged; the
package keeps its layering (only flower/ imports flwr; head/tail live in gadmm.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from flower_qgadmm.algorithms import REGISTRY, Phase, Wiring, Worker, get_algorithm, register
from flower_qgadmm.compression import Float32Quantizer
from flower_qgadmm.config import RunConfig
from flower_qgadmm.data import load_dataset
from flower_qgadmm.flower import RelayStrategy, least_squares, make_client_app, partition_of
from flower_qgadmm.reference import least_squares_solvers, run_reference
from flower_qgadmm.testing import FakeGrid
from flower_qgadmm.topology import Graph, complete, ring

PACKAGE = Path(__file__).resolve().parents[1] / "flower_qgadmm"


@dataclass(frozen=True)
class ConsensusSettings:
    """Settings of the test algorithm (none)."""


class Consensus(Worker):
    """A new algorithm written only here: every worker starts from its local
    least-squares solution and gossips x_i <- sum_j w_ij x_j (average consensus)."""

    Settings = ConsensusSettings
    needs_mixing = True

    def __init__(self, node, wiring, solver, settings, seed) -> None:
        super().__init__(node, wiring, solver, settings, seed)
        self.theta = solver.solve(np.zeros(solver.dim), 0.0)

    @classmethod
    def schedule(cls, graph: Graph) -> list[Phase]:
        return [Phase("gossip", graph.active)]

    @classmethod
    def wiring_of(cls, graph, node, mixing) -> Wiring:
        nbrs = graph.neighbours(node)
        return Wiring(nbrs, 0, tuple(mixing[node, m] for m in nbrs), mixing[node, node])

    def make_quantizer(self):
        return Float32Quantizer()

    def step(self, iteration: int, phase: str) -> bytes | None:
        if iteration == 1:  # first round: publish the starting point
            mixed = self.theta
        else:
            w = self.wiring
            mixed = w.self_weight * self.theta + sum(
                weight * self.copies[m] for m, weight in zip(w.neighbours, w.weights, strict=True)
            )
        self.theta = mixed
        payload, change, q = self.copies.encode(mixed, np.random.default_rng(0))
        self.copies.commit(change)
        return self.finish_step(iteration, payload, self.copies.quantizer.nominal_bits(q))


@pytest.fixture
def consensus():
    register("test-consensus", Consensus)
    yield get_algorithm("test-consensus")
    del REGISTRY["test-consensus"]


def test_a_new_algorithm_runs_in_both_transports_without_other_changes(consensus) -> None:
    # Prepare: 4 workers, complete graph, Metropolis weights (1/4 everywhere)
    data = load_dataset(4, 15, 3, 0.1, seed=5)
    graph = complete(4)
    local = np.stack([np.linalg.lstsq(X, y, rcond=None)[0] for X, y in data])
    # Execute: reference, then Flower with the stock ClientApp handlers
    ours = run_reference("test-consensus", least_squares_solvers(data), 3, graph=graph)
    app = make_client_app(least_squares(lambda ctx: data[partition_of(ctx)[0]]))
    strategy = RelayStrategy(
        "test-consensus", 4, graph=graph, discovery_timeout=1.0, evaluate_every=1
    )
    strategy.start(FakeGrid(app, 4, {}), num_rounds=3, timeout=5.0)
    # Assert: W = J/4 averages in one gossip round (round 2; round 1 publishes)
    np.testing.assert_allclose(ours.models, np.tile(local.mean(0), (4, 1)), rtol=1e-6)
    for got, want in zip(strategy.history, ours.history, strict=True):
        assert {k: got[k] for k in want} == want
    # and the run config knows it (its settings section joins the others)
    assert RunConfig.of(algorithm="test-consensus", topology="complete", num_workers=4).algo == (
        ConsensusSettings()
    )


def test_unknown_algorithm_lists_the_registered_ones() -> None:
    with pytest.raises(
        KeyError, match=r"unknown algorithm 'admm'; registered: \['choco-sgd', 'd-psgd', 'gadmm'"
    ):
        get_algorithm("admm")
    with pytest.raises(ValueError, match="already registered"):
        register("gadmm", Consensus)


def test_gadmm_refuses_a_graph_it_cannot_colour_everywhere() -> None:
    data = load_dataset(5, 10, 3, 0.1, seed=0)
    with pytest.raises(ValueError, match="odd cycle"):
        run_reference("gadmm", least_squares_solvers(data), 2, graph=ring(5))
    with pytest.raises(ValueError, match="odd cycle"):
        RunConfig.of(algorithm="q-gadmm", topology="ring", num_workers=5)


def test_wiring_round_trips_through_a_record() -> None:
    for wiring in (Wiring((1, 3), 1), Wiring((0, 2), 0, (0.25, 0.5), 0.25)):
        assert Wiring.from_record(wiring.to_record()) == wiring


def _sources():
    return {p: p.read_text() for p in PACKAGE.rglob("*.py")}


def test_only_the_flower_binding_imports_flwr() -> None:
    importers = [
        p.relative_to(PACKAGE).as_posix()
        for p, text in _sources().items()
        if re.search(r"^\s*(import|from) flwr\b", text, re.MULTILINE)  # not flwr_datasets
    ]
    assert importers and all(p.startswith("flower/") for p in importers), importers


def test_head_tail_schedule_lives_in_the_gadmm_module_only() -> None:
    offenders = [
        p.relative_to(PACKAGE).as_posix()
        for p, text in _sources().items()
        if re.search(r"\b(heads|tails|head/tail|(head|tail) (group|phase))\b", text, re.I)
        and p.name != "gadmm.py"
    ]
    assert offenders == [], offenders


@pytest.mark.parametrize("removals", [{9: 3}, {1: 0}, {1: -5}, {-1: 2}])
def test_planned_departures_outside_the_graph_or_the_run_are_refused(removals) -> None:
    from flower_qgadmm.data import load_dataset
    from flower_qgadmm.reference import least_squares_solvers, run_reference

    solvers = least_squares_solvers(load_dataset(4, 10, 3, 0.1, seed=0))
    with pytest.raises(ValueError, match="removals"):
        run_reference("gadmm", solvers, 5, removals=removals)


def test_a_custom_solver_returning_another_shape_is_named() -> None:
    # Prepare: a least-squares solver whose solve / gradient / objective misbehave
    from flower_qgadmm.data import load_dataset
    from flower_qgadmm.reference import run_reference
    from flower_qgadmm.solvers import LeastSquaresSolver

    class Short(LeastSquaresSolver):
        def solve(self, linear, weight, start, key):
            return super().solve(linear, weight, start, key)[:-1]

        def gradient(self, theta, key):
            return list(super().gradient(theta, key))

    class Wordy(LeastSquaresSolver):
        def objective(self, theta):
            return "low"

    class ZeroD(LeastSquaresSolver):
        def objective(self, theta):
            return np.array(super().objective(theta))  # a 0-d array is a number

    data = load_dataset(4, 10, 3, 0.1, seed=0)
    plain = run_reference("gadmm", [LeastSquaresSolver(X, y) for X, y in data], 3)
    zero_d = run_reference("gadmm", [ZeroD(X, y) for X, y in data], 3)
    assert zero_d.history == plain.history
    # Execute / Assert: the worker and the method are named, not numpy's broadcast error
    for cls, algorithm, message in (
        (Short, "gadmm", r"worker 0: Short.solve returned an array of shape \(2,\)"),
        (Short, "d-psgd", "worker 0: Short.gradient returned a list"),
        (Wordy, "gadmm", "worker 0: its solver's objective returned 'low', not a number"),
    ):
        with pytest.raises(ValueError, match=message):
            run_reference(algorithm, [cls(X, y) for X, y in data], 3)


def test_the_python_api_refuses_what_it_cannot_run() -> None:
    from flower_qgadmm.data import load_dataset
    from flower_qgadmm.reference import least_squares_solvers, run_reference
    from flower_qgadmm.solvers import LeastSquaresSolver

    solvers = least_squares_solvers(load_dataset(4, 10, 3, 0.1, seed=0))
    for iterations in (0, -1, "3", 2.5, True):
        with pytest.raises(ValueError, match="iterations must be"):
            run_reference("gadmm", solvers, iterations)
    with pytest.raises(ValueError, match="no feature columns"):
        LeastSquaresSolver(np.zeros((5, 0)), np.zeros(5))
    with pytest.raises(ValueError, match="X is complex"):
        LeastSquaresSolver(np.ones((5, 2)) * (1 + 1j), np.zeros(5))


def test_a_custom_solver_returning_nan_is_named_not_blamed_on_the_settings() -> None:
    """A solver whose solve / gradient returns NaN or Inf from a finite model stops the
    run naming the worker and the method (before: 'worker 1 diverged ...; 3-bit Q-GADMM
    can diverge at rho=1: use more bits, ...', advice about settings that were fine)."""
    from flower_qgadmm.data import load_dataset
    from flower_qgadmm.reference import run_reference
    from flower_qgadmm.solvers import LeastSquaresSolver

    class Broken(LeastSquaresSolver):
        def solve(self, linear, weight, start, key):
            return np.full_like(start, np.nan)

        def gradient(self, theta, key):
            out = super().gradient(theta, key)
            out[0] = np.inf
            return out

    data = load_dataset(3, 10, 3, 0.1, seed=0)
    for algorithm, method in (("q-gadmm", "solve"), ("gadmm", "solve"), ("d-psgd", "gradient")):
        solvers = [LeastSquaresSolver(X, y) for X, y in data]
        solvers[1] = Broken(*data[1])
        message = f"worker 1 diverged at iteration 1: Broken.{method} returned NaN/Inf"
        with pytest.raises(FloatingPointError, match=message):
            run_reference(algorithm, solvers, 3)


def test_a_custom_solvers_evaluate_returning_no_dict_is_named() -> None:
    """An ``evaluate`` of yours returning a string failed with "dictionary update sequence
    element #0 ..."; and ``LeastSquaresSolver(l2="a")`` with "must be real number"."""
    from flower_qgadmm.data import load_dataset
    from flower_qgadmm.reference import run_reference
    from flower_qgadmm.solvers import LeastSquaresSolver

    class Scores(LeastSquaresSolver):
        def evaluate(self, theta):
            return "accuracy 0.9"

    data = load_dataset(3, 10, 3, 0.1, seed=0)
    solvers = [LeastSquaresSolver(X, y) for X, y in data]
    solvers[2] = Scores(*data[2])
    with pytest.raises(TypeError, match="worker 2: Scores.evaluate returned a str; it must"):
        run_reference("gadmm", solvers, 3)
    with pytest.raises(ValueError, match="l2 must be a finite number >= 0, got 'a'"):
        LeastSquaresSolver(*data[0], l2="a")


def test_slow_set_up_stages_say_how_long_they_took(caplog, monkeypatch) -> None:
    # A large run spends a minute setting up (100,000 workers: describe 3 s, resolve
    # 15 s, set-up 21 s); each stage slower than SLOW_STAGE logs one line, in order.
    import logging

    from flower_qgadmm import rounds

    data = load_dataset(4, 15, 3, 0.1, seed=5)

    def set_up_lines() -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="flower_qgadmm.rounds"):
            run_reference("d-psgd", least_squares_solvers(data), 1)
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("set-up:")]

    assert set_up_lines() == []  # a small run: every stage well under 2 s
    monkeypatch.setattr(rounds, "SLOW_STAGE", 0.0)
    lines = set_up_lines()
    assert [re.sub(r" in [\d.]+ s$", "", line) for line in lines] == [
        "set-up: 4 workers described",
        "set-up: features scaled and settings resolved",
        "set-up: 4 workers set up",
        "set-up: optimum F* computed",
    ], lines


def test_a_repair_of_a_large_graph_logs_a_short_line_with_the_new_edges() -> None:
    # Prepare: D-PSGD on a chain of 2,000 workers, worker 5 leaving before iteration 1
    from flower_qgadmm.reference import make_engine
    from flower_qgadmm.topology import chain

    n = 2000
    rng = np.random.default_rng(0)
    data = [(rng.standard_normal((3, 2)), rng.standard_normal(3)) for _ in range(n)]
    lines = []
    engine = make_engine(
        "d-psgd",
        least_squares_solvers(data),
        chain(n),
        removals={5: 1},
        log_fn=lambda level, msg, *args: lines.append(msg % args),
    )

    # Execute
    engine.start()
    engine.run_round(1)

    # Assert: the splice (4, 6) named, the 1,998 edges counted, not listed (30 KB)
    (repaired,) = [line for line in lines if "graph repaired" in line]
    assert len(repaired) < 1000, len(repaired)
    assert "1,998 edges in all" in repaired and "(new: ((4, 6),))" in repaired
    assert engine.graph.neighbours(4) == (3, 6)
