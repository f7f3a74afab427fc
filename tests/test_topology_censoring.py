"""CQ-GGADMM: any bipartite graph, censoring, energy accounting, planned removals."""

from __future__ import annotations

import numpy as np
import pytest
from test_gadmm import plain_chain_admm

from clients.experiment.client_app import app
from flower_qgadmm.algorithms import GadmmSettings
from flower_qgadmm.config import RunConfig
from flower_qgadmm.data import experiment_datasets, load_dataset
from flower_qgadmm.energy import transmit_energy
from flower_qgadmm.flower import RelayStrategy
from flower_qgadmm.history import summarize
from flower_qgadmm.reference import least_squares_solvers, run_from_config, run_reference
from flower_qgadmm.testing import FakeGrid
from flower_qgadmm.topology import (
    Graph,
    from_edge_list,
    geometric,
    geometric_chain,
    grid,
    make_topology,
    random_bipartite,
    ring,
)


def is_bipartite_split(g: Graph) -> bool:
    heads, tails = g.two_colouring()
    return all((a in heads) != (b in heads) for a, b in g.edges) and set(heads) | set(tails) == set(
        g.active
    )


def test_generators_give_connected_bipartite_graphs() -> None:
    for g in (
        ring(8),
        grid(12),
        geometric(20, seed=3),
        random_bipartite(18, seed=1, param=0.2),
        geometric_chain(10, seed=2),
    ):
        assert is_bipartite_split(g)
    assert grid(12).edges[:2] == ((0, 1), (0, 4))  # 3 x 4, row-major
    assert geometric(20, seed=3).positions.shape == (20, 2)
    with pytest.raises(ValueError, match="odd cycle"):
        ring(7).two_colouring()
    with pytest.raises(ValueError, match="unknown topology 'star'"):
        make_topology("star", 4)


def test_non_bipartite_input_names_an_odd_cycle() -> None:
    with pytest.raises(ValueError, match="odd cycle") as err:
        from_edge_list(6, "0-1 1-2 2-3 3-4 4-0 4-5").two_colouring()
    cycle = [int(x) for x in str(err.value).split("odd cycle ")[1].split(" - ")]
    assert cycle[0] == cycle[-1] and (len(cycle) - 1) % 2 == 1
    edges = {tuple(sorted(e)) for e in [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0), (4, 5)]}
    assert all(tuple(sorted(p)) in edges for p in zip(cycle, cycle[1:], strict=False))
    with pytest.raises(ValueError, match="disconnected"):
        from_edge_list(4, "0-1 2-3")
    with pytest.raises(ValueError, match="bad edge '0_1'"):
        from_edge_list(3, "0_1")


def test_chain_given_as_edge_list_reduces_to_plain_gadmm() -> None:
    # The generalized update on a chain (edges listed in any order) is exactly GADMM.
    data = load_dataset(6, 30, 8, 0.1, seed=3)
    graph = from_edge_list(6, "4-5 0-1 3-2 2-1 4-3")
    for bits in (None, 3):
        algorithm = "gadmm" if bits is None else "q-gadmm"
        settings = GadmmSettings(rho=5.0, bits=bits or 2, scale_features=False)  # textbook
        ours = run_reference(
            algorithm, least_squares_solvers(data), 40, settings, seed=11, graph=graph
        ).history
        plain, _ = plain_chain_admm(data, 5.0, 40, bits=bits, seed=11)
        np.testing.assert_allclose([r["objective"] for r in ours], [p[0] for p in plain], rtol=1e-9)


def geometric_setup(**changes):
    # rho = 20: the penalty these tests were written for (the default is now automatic)
    cfg = RunConfig.of(
        topology="geometric", num_workers=20, num_iterations=300, rho=20.0, **changes
    )
    return cfg, least_squares_solvers(experiment_datasets(cfg)), cfg.graph


reference = run_from_config


def test_qgadmm_on_a_random_geometric_graph_reaches_the_optimum() -> None:
    cfg, solvers, graph = geometric_setup(bits=2)
    assert max(graph.degree(n) for n in graph.active) > 2  # not a chain
    history = reference(cfg, solvers).history
    assert history[-1]["objective_gap"] < 1e-6
    assert history[-1]["optimum_distance"] < 1e-6
    assert history[-1]["energy_joules"] > 0


def test_censoring_saves_transmissions_at_the_same_accuracy() -> None:
    # Seeded geometric graph of 20 workers, 4-bit Q-GADMM, rho = 20, tau0 = 0.3, xi = 0.9
    cfg, solvers, graph = geometric_setup(bits=4)
    runs = {}
    for censoring in (False, True):
        runs[censoring] = reference(cfg.replace(censoring=censoring), solvers).history
    sent = {}
    for censoring, rows in runs.items():
        reached = summarize(rows, 1e-4)["reached_iteration"]
        sent[censoring] = rows[reached - 1]["transmissions"]
        assert rows[-1]["objective_gap"] < 1e-8  # same final accuracy: the optimum
    assert sent[True] <= 0.7 * sent[False]
    assert runs[True][-1]["censored"] > 0
    assert runs[True][-1]["transmissions"] + runs[True][-1]["censored"] == 20 * 300


def test_censoring_and_removal_over_flower_equal_reference() -> None:
    cfg = RunConfig.of(
        topology="geometric",
        num_workers=8,
        num_iterations=25,
        bits=3,
        samples_per_worker=20,
        dim=5,
        censoring=True,
        censor_tau0=0.3,
        censor_xi=0.85,
        remove_workers="5@12",
    )
    rc = cfg.to_run_config()
    strategy = RelayStrategy.from_config(cfg)
    strategy.start(FakeGrid(app, 8, rc), num_rounds=cfg.num_iterations, timeout=5.0)
    expected = reference(cfg, least_squares_solvers(experiment_datasets(cfg))).history
    for got, want in zip(strategy.history, expected, strict=True):
        assert {k: got[k] for k in want} == want
    assert expected[-1]["censored"] > 0 and 5 not in strategy.graph.active


def test_transmit_energy_model() -> None:
    # P = d^2 eta B (2^(r/B) - 1), r = bits / 1 ms, B = 2 MHz / (workers sending at once);
    # E = P * 1 ms. Here 5 send at once (a head phase of a 10-chain).
    bandwidth = 2e6 / 5
    expected = 1e-3 * 100.0**2 * 1e-6 * bandwidth * (2 ** (1000 / 1e-3 / bandwidth) - 1)
    assert transmit_energy(1000, 100.0, 5) == pytest.approx(expected)
    assert transmit_energy(0, 100.0, 5) == 0.0
    assert transmit_energy(2000, 100.0, 5) > 2 * transmit_energy(1000, 100.0, 5)
    # Gossip: all 10 send at once, each gets half the band of a GADMM phase
    assert transmit_energy(1000, 100.0, 10) > transmit_energy(1000, 100.0, 5)


def test_bad_failure_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="worker@iteration"):
        RunConfig.of(remove_workers="3-20")
    with pytest.raises(ValueError, match="names worker 12; there are 10"):
        RunConfig.of(remove_workers="12@3")
    with pytest.raises(ValueError, match="on-failure must be"):
        RunConfig.of(on_failure="ignore")
    with pytest.raises(ValueError, match="censor-xi must be in"):
        RunConfig.of(censor_xi=1.0)
