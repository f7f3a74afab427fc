"""D-PSGD: against a plain implementation and the closed-form fixed point; bad graphs and
mixing matrices; the Flower path equals the reference on odd rings and tori."""

from __future__ import annotations

import numpy as np
import pytest

from clients.experiment.client_app import app
from flower_qgadmm.algorithms import GossipSettings
from flower_qgadmm.config import RunConfig
from flower_qgadmm.data import experiment_datasets, load_dataset
from flower_qgadmm.flower import RelayStrategy
from flower_qgadmm.image_task import image_solver, load_task_data
from flower_qgadmm.reference import least_squares_solvers, run_from_config, run_reference
from flower_qgadmm.testing import FakeGrid
from flower_qgadmm.topology import Graph, ring, torus


def metropolis(num_nodes: int, edges) -> np.ndarray:
    """Metropolis-Hastings weights, written here from the formula."""
    deg = np.zeros(num_nodes, int)
    for a, b in edges:
        deg[a] += 1
        deg[b] += 1
    W = np.zeros((num_nodes, num_nodes))
    for a, b in edges:
        W[a, b] = W[b, a] = 1.0 / (1 + max(deg[a], deg[b]))
    W[np.diag_indices(num_nodes)] = 1.0 - W.sum(axis=1)
    return W


def plain_dpsgd(datasets, W, iters, eta=None, form="combine-adapt"):
    """Textbook D-PSGD (Lian et al. 2017) with full-batch least-squares gradients and
    float64 exchange: x_i <- sum_j w_ij x_j - eta grad f_i(x_i); ``form``
    "adapt-combine": x_i <- sum_j w_ij (x_j - eta grad f_j(x_j)), the objective and
    consensus error then taken at the half steps x_j - eta grad f_j(x_j) (what the rows
    report)."""
    A = [X.T @ X for X, _ in datasets]
    b = [X.T @ y for X, y in datasets]
    if eta is None:  # half the quadratic stability bound (1 + lambda_min(W)) / L_max
        L = max(np.linalg.eigvalsh(a)[-1] for a in A)
        eta = (1 + np.linalg.eigvalsh(W)[0]) / (2 * L)
    x = np.zeros((len(datasets), A[0].shape[0]))
    out = []
    for _ in range(iters):
        grads = np.stack([A[i] @ x[i] - b[i] for i in range(len(x))])
        if form == "combine-adapt":
            x = seen = W @ x - eta * grads
        else:
            seen = x - eta * grads
            x = W @ seen
        F = sum(0.5 * np.sum((X @ seen[i] - y) ** 2) for i, (X, y) in enumerate(datasets))
        out.append((F, float(np.sqrt(np.mean(np.sum((seen - seen.mean(0)) ** 2, axis=1))))))
    return out, x, eta


def fixed_point(datasets, W, eta) -> np.ndarray:
    """The limit of constant-step DGD: x = (W kron I) x - eta (H x - b), solved directly."""
    n, d = len(datasets), datasets[0][0].shape[1]
    H = np.zeros((n * d, n * d))
    rhs = np.zeros(n * d)
    for i, (X, y) in enumerate(datasets):
        H[i * d : (i + 1) * d, i * d : (i + 1) * d] = X.T @ X
        rhs[i * d : (i + 1) * d] = X.T @ y
    M = np.eye(n * d) - np.kron(W, np.eye(d)) + eta * H
    return np.linalg.solve(M, eta * rhs).reshape(n, d)


GRAPHS = {"ring-5": ring(5), "torus-3x3": torus(9)}


@pytest.mark.parametrize("name", GRAPHS)
def test_dpsgd_equals_plain_dpsgd_and_reaches_its_fixed_point(name: str) -> None:
    # Prepare
    graph = GRAPHS[name]
    data = load_dataset(graph.num_nodes, 30, 6, 0.1, seed=3)
    W = metropolis(graph.num_nodes, graph.edges)
    # Execute
    ours = run_reference("d-psgd", least_squares_solvers(data), 300, graph=graph)
    plain, x, eta = plain_dpsgd(data, W, 300)
    # Assert: same trajectory (float32 messages of the changes: ~1e-7 relative), the
    # same limit as the closed form, and one float32 model per worker per round
    np.testing.assert_allclose(
        [r["objective"] for r in ours.history], [p[0] for p in plain], rtol=1e-6
    )
    np.testing.assert_allclose(
        [r["consensus_error"] for r in ours.history], [p[1] for p in plain], rtol=1e-4
    )
    np.testing.assert_allclose(ours.models, fixed_point(data, W, eta), rtol=1e-6, atol=1e-9)
    d = data[0][0].shape[1]
    assert d < 128  # a 1-byte size varint: width, d, then the float32 entries
    assert ours.history[-1]["bits"] == 300 * graph.num_nodes * 8 * (2 + 4 * d)
    assert ours.history[-1]["nominal_bits"] == 300 * graph.num_nodes * 32 * d


@pytest.mark.parametrize("name", GRAPHS)
def test_adapt_combine_equals_plain_dpsgd_adapt_combine(name: str) -> None:
    graph = GRAPHS[name]
    data = load_dataset(graph.num_nodes, 30, 6, 0.1, seed=5)
    W = metropolis(graph.num_nodes, graph.edges)
    settings = GossipSettings(dpsgd_form="adapt-combine")
    ours = run_reference("d-psgd", least_squares_solvers(data), 100, settings, graph=graph)
    plain, x, _ = plain_dpsgd(data, W, 100, form="adapt-combine")
    # float32 messages of the changes: ~1e-7 relative
    np.testing.assert_allclose(
        [r["objective"] for r in ours.history], [p[0] for p in plain], rtol=1e-6
    )
    np.testing.assert_allclose(
        [r["consensus_error"] for r in ours.history], [p[1] for p in plain], rtol=1e-4
    )
    np.testing.assert_allclose(ours.models, x, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", GRAPHS)
def test_gap_and_consensus_decrease_monotonically_to_the_plateau(name: str) -> None:
    # Constant-step D-PSGD converges to a biased fixed point (above): the gap and the
    # consensus error fall monotonically from the first round until they are within 10%
    # of that plateau, and never rise above 1.1x of it afterwards.
    graph = GRAPHS[name]
    history = run_reference(
        "d-psgd",
        least_squares_solvers(load_dataset(graph.num_nodes, 30, 6, 0.1, seed=3)),
        300,
        graph=graph,
    ).history
    for key in ("objective_gap", "consensus_error"):
        x = np.array([r[key] for r in history])
        near = int(np.argmax(x <= 1.1 * x[-1]))
        assert 5 < near < 60, (key, near)
        assert np.all(np.diff(x[: near + 1]) < 0), key
        assert np.all(x[near:] <= 1.1 * x[-1]), key
    assert history[0]["objective_gap"] > 100 * history[-1]["objective_gap"]


def test_step_size_setting_and_max_degree_weights() -> None:
    graph = ring(6)
    data = load_dataset(6, 20, 4, 0.1, seed=1)
    deg = 2
    W = np.zeros((6, 6))
    for a, b in graph.edges:
        W[a, b] = W[b, a] = 1 / (1 + deg)
    W[np.diag_indices(6)] = 1 - W.sum(1)
    ours = run_reference(
        "d-psgd",
        least_squares_solvers(data),
        50,
        GossipSettings(step_size=0.002),
        graph=graph,
        mixing="max-degree",
    )
    plain, _, _ = plain_dpsgd(data, W, 50, eta=0.002)
    np.testing.assert_allclose(
        [r["objective"] for r in ours.history], [p[0] for p in plain], rtol=1e-6
    )


def test_user_matrix_is_used_and_bad_matrices_are_refused() -> None:
    graph = ring(4)
    data = load_dataset(4, 20, 4, 0.1, seed=2)
    W = np.array(
        [[0.5, 0.25, 0, 0.25], [0.25, 0.5, 0.25, 0], [0, 0.25, 0.5, 0.25], [0.25, 0, 0.25, 0.5]]
    )
    ours = run_reference("d-psgd", least_squares_solvers(data), 30, graph=graph, mixing=W)
    plain, _, _ = plain_dpsgd(data, W, 30)
    np.testing.assert_allclose(
        [r["objective"] for r in ours.history], [p[0] for p in plain], rtol=1e-6
    )
    # Rows summing to 0.9: not doubly stochastic
    bad = W.copy()
    bad[np.diag_indices(4)] = 0.4
    with pytest.raises(ValueError, match="not doubly stochastic: row 0 sums to 0.9"):
        run_reference("d-psgd", least_squares_solvers(data), 3, graph=graph, mixing=bad)
    # The same through the run config, and weight between non-neighbours
    text = "; ".join(" ".join(str(v) for v in row) for row in bad)
    with pytest.raises(ValueError, match="not doubly stochastic"):
        RunConfig.of(
            algorithm="d-psgd", topology="ring", num_workers=4, mixing="matrix", mixing_matrix=text
        )
    with pytest.raises(ValueError, match="not neighbours"):
        RunConfig.of(
            algorithm="d-psgd",
            topology="ring",
            num_workers=4,
            mixing="matrix",
            mixing_matrix="0.5 0 0.5 0; 0 0.5 0 0.5; 0.5 0 0.5 0; 0 0.5 0 0.5",
        )
    with pytest.raises(ValueError, match="needs mixing-matrix"):
        RunConfig.of(algorithm="d-psgd", topology="ring", num_workers=4, mixing="matrix")


def test_disconnected_graph_stops_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="disconnected"):
        RunConfig.of(algorithm="d-psgd", topology="edges", num_workers=4, topology_edges="0-1 2-3")
    with pytest.raises(ValueError, match="disconnected"):
        Graph(4, [(0, 1), (2, 3)])


def flower_vs_reference(cfg: RunConfig) -> tuple[list[dict], list[dict], RelayStrategy]:
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0)
    grid = FakeGrid(app, cfg.num_workers, cfg.to_run_config())
    strategy.start(grid, num_rounds=cfg.num_iterations, timeout=5.0)
    expected = run_from_config(cfg, least_squares_solvers(experiment_datasets(cfg))).history
    return strategy.history, expected, strategy


SMALL = {"algorithm": "d-psgd", "samples-per-worker": 20, "dim": 5, "num-iterations": 15}


@pytest.mark.parametrize(
    "overrides",
    [
        {"topology": "ring", "num-workers": 5},
        {"topology": "torus", "num-workers": 9},
        {"topology": "complete", "num-workers": 4, "mixing": "max-degree"},
        {"topology": "ring", "num-workers": 5, "remove-workers": "2@6"},
    ],
)
def test_flower_path_equals_reference_exactly(overrides: dict) -> None:
    # Prepare / Execute
    got, want, strategy = flower_vs_reference(RunConfig.from_run_config({**SMALL, **overrides}))
    # Assert: every number the reference reports, bit for bit
    assert len(got) == len(want) == 15
    for g, w in zip(got, want, strict=True):
        assert {k: g[k] for k in w} == w
    if "remove-workers" in overrides:  # the ring lost worker 2: the path 3-4-0-1 remains
        assert strategy.graph.edges == ((0, 1), (0, 4), (3, 4))
        assert "repair_bits" not in got[-1]  # no new edge, so no copy had to be sent
        # the automatic step was re-resolved for the new weights (ring -> path)
        assert strategy.engine.settings.step_size != strategy.settings.step_size


def test_flower_dropout_of_a_gossip_worker_repairs_and_reweights() -> None:
    cfg = RunConfig.from_run_config({**SMALL, "topology": "torus", "num-workers": 9})

    def silent(pid, msg):
        return pid == 4 and "round" in msg.content and int(msg.content["round"]["iteration"]) >= 5

    grid = FakeGrid(app, 9, cfg.to_run_config(), fail=silent)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0, evaluate_every=1)
    strategy.start(grid, num_rounds=15, timeout=1.0)
    want = run_reference(
        "d-psgd",
        least_squares_solvers(experiment_datasets(cfg)),
        15,
        graph=cfg.graph,
        removals={4: 5},
    ).history
    for g, w in zip(strategy.history, want, strict=True):  # the silent worker got an inbox
        assert {k: g[k] for k in w if k != "relayed_bytes"} == {
            k: v for k, v in w.items() if k != "relayed_bytes"
        }
        assert g["relayed_bytes"] >= w["relayed_bytes"]
    assert 4 not in strategy.graph.active and strategy.graph.degree(0) == 4


def test_digits_minibatch_dpsgd_learns() -> None:
    cfg = RunConfig.of(task="digits", algorithm="d-psgd", topology="ring", num_workers=5)
    data = load_task_data(cfg)
    solvers = [image_solver(cfg, w, data) for w in range(5)]
    history = run_reference("d-psgd", solvers, 60, graph=cfg.graph).history
    assert history[-1]["accuracy"] > history[0]["accuracy"] + 0.3
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_divergence_stops_both_paths_with_the_same_message(tmp_path) -> None:
    # A step far beyond the stability bound: fatal in both transports, even with the
    # default on-failure = "repair" (a diverged worker must not be quietly dropped)
    cfg = RunConfig.from_run_config(
        {**SMALL, "topology": "ring", "num-workers": 5, "step-size": 0.9, "num-iterations": 40}
    )
    with pytest.raises(FloatingPointError) as flower_err:
        flower_vs_reference(cfg)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0, results_dir=tmp_path)
    with pytest.raises(FloatingPointError):
        strategy.start(FakeGrid(app, 5, cfg.to_run_config()), num_rounds=40, timeout=5.0)
    # the run's summary says why it stopped (flwr run exits 0 whatever the ServerApp did)
    summary = next(tmp_path.glob("*/summary.md")).read_text()
    assert "Run stopped after 12 of 40 rounds. Why: FloatingPointError: " in summary
    assert "diverged at iteration 12" in summary
    with pytest.raises(FloatingPointError) as ref_err:
        run_reference(
            "d-psgd", least_squares_solvers(experiment_datasets(cfg)), 40, cfg.algo, graph=cfg.graph
        )
    assert str(flower_err.value) == str(ref_err.value)
    # the relay's watchdog stops the run at iteration 12 (objective 1e4 x its early level),
    # before a worker's model overflows (iteration 20); the row of iteration 12 is kept
    assert "diverged at iteration 12" in str(ref_err.value) and "lower step-size" in str(
        ref_err.value
    )
    assert len(strategy.history) == 12


def test_a_user_matrix_that_splits_the_workers_is_warned_about(caplog) -> None:
    # Valid weights (symmetric, doubly stochastic, on the ring's edges) that never mix
    # workers {0, 1} with {2, 3}: spectral gap 0, no consensus. Allowed (the identity is
    # a local-training baseline) but said at set-up; weights that connect the ring are not.
    import logging

    data = load_dataset(4, 20, 3, 0.1, seed=2)
    split = np.array([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]])
    connected = np.array(
        [[0.5, 0.5, 0, 0], [0.5, 0.25, 0.25, 0], [0, 0.25, 0.25, 0.5], [0, 0, 0.5, 0.5]]
    )

    def warnings(W: np.ndarray) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            run_reference("d-psgd", least_squares_solvers(data), 3, graph=ring(4), mixing=W)
        return [r.getMessage() for r in caplog.records if "mixing matrix" in r.getMessage()]

    (text,) = warnings(split)
    assert "split them into 2 groups ([0, 1]; [2, 3])" in text and "consensus" in text
    assert warnings(connected) == []
    (text,) = warnings(np.eye(4))
    assert "4 groups ([0]; [1]; [2]; [3])" in text


def test_user_matrix_may_be_sparse() -> None:
    # the engine keeps W sparse; a user's sparse W gives the run of its dense form
    from scipy.sparse import csr_array

    graph = ring(4)
    data = load_dataset(4, 20, 4, 0.1, seed=2)
    W = np.array(
        [[0.5, 0.25, 0, 0.25], [0.25, 0.5, 0.25, 0], [0, 0.25, 0.5, 0.25], [0.25, 0, 0.25, 0.5]]
    )
    dense = run_reference("d-psgd", least_squares_solvers(data), 10, graph=graph, mixing=W)
    sparse = run_reference(
        "d-psgd", least_squares_solvers(data), 10, graph=graph, mixing=csr_array(W)
    )
    assert [r["objective"] for r in sparse.history] == [r["objective"] for r in dense.history]


def test_user_matrix_on_a_graph_that_starts_without_a_worker() -> None:
    # a graph given with a removed worker (w_ii = 1 and nothing else, as
    # check_mixing_matrix asks) runs with the user's matrix; before, it was refused as
    # "cannot be recomputed after workers leave", though no worker had left
    from flower_qgadmm.topology import Graph

    graph = Graph(5, [(0, 1), (1, 2), (2, 3), (0, 3)], removed=[4])
    data = load_dataset(5, 20, 4, 0.1, seed=2)
    W = np.array(
        [
            [0.5, 0.25, 0, 0.25, 0],
            [0.25, 0.5, 0.25, 0, 0],
            [0, 0.25, 0.5, 0.25, 0],
            [0.25, 0, 0.25, 0.5, 0],
            [0, 0, 0, 0, 1],
        ]
    )
    result = run_reference("d-psgd", least_squares_solvers(data), 10, graph=graph, mixing=W)
    assert [r["workers"] for r in result.history] == [4] * 10
    # the same run as the ring of the four workers with their block of W
    alone = run_reference(
        "d-psgd", least_squares_solvers(data[:4]), 10, graph=ring(4), mixing=W[:4, :4]
    )
    assert [r["objective"] for r in result.history] == [r["objective"] for r in alone.history]
