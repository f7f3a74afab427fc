"""CHOCO-SGD and Malcom-PSGD against plain loops written here, the centralized lasso,
and the Flower path."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from test_dpsgd import metropolis

from clients.experiment.client_app import app
from flower_qgadmm.algorithms import GossipSettings
from flower_qgadmm.config import RunConfig
from flower_qgadmm.data import experiment_datasets, load_dataset
from flower_qgadmm.flower import RelayStrategy
from flower_qgadmm.reference import (
    least_squares_solvers,
    make_engine,
    run_from_config,
    run_reference,
)
from flower_qgadmm.testing import FakeGrid
from flower_qgadmm.topology import ring, torus


def float32_up(x: float) -> float:
    """The smallest float32 >= x (the norm as the message carries it)."""
    r = np.float32(x)
    return float(r) if float(r) >= x else float(np.nextafter(r, np.float32(np.inf)))


def dithered(v: np.ndarray, s: int, u: np.ndarray, scaling: bool) -> np.ndarray:
    """QSGD with s levels on the l2 norm N (ALGORITHMS_MALCOM.md), written here:
    N sign(v) floor(s |v| / N + u) / s, optionally over CHOCO's tau = 1 + min(d / s^2,
    sqrt(d) / s); N travels as a float32, rounded up."""
    norm = float32_up(float(np.linalg.norm(v)))
    if norm == 0:
        return np.zeros_like(v)
    # s |v| / N as |v| (s / N): another rounding of the same number can move an entry
    # across a level boundary (one entry in a few thousand, measured) and the runs apart
    level = np.minimum(np.floor(np.abs(v) * (s / norm) + u), s) * np.sign(v)  # integers
    q = norm * level / s
    d = v.size
    return q / (1 + min(d / s**2, np.sqrt(d) / s)) if scaling else q


def plain_choco(
    datasets, W, iters, eta, gamma, levels=None, scaling=True, seed=0, mu=0.0, prox="before"
):
    """Textbook CHOCO-SGD / Malcom-PSGD round (local step, prox, compress the residual
    against the public copy, update copies, consensus; the prox ``after`` the consensus
    instead if asked), least-squares gradients. Compression: the float32 difference
    (``levels`` None) or :func:`dithered` with draws ``default_rng([seed, worker, t])``;
    nothing of the package's compression is used."""
    A = [X.T @ X for X, _ in datasets]
    b = [X.T @ y for X, y in datasets]
    n, d = len(datasets), A[0].shape[0]
    x, hat = np.zeros((n, d)), np.zeros((n, d))

    def soft(v):
        return np.sign(v) * np.maximum(np.abs(v) - eta * mu, 0.0)

    halves = []
    for t in range(1, iters + 1):
        half = np.stack([x[i] - eta * (A[i] @ x[i] - b[i]) for i in range(n)])
        if mu > 0 and prox == "before":
            half = soft(half)
        for i in range(n):
            v = half[i] - hat[i]
            if levels is None:
                hat[i] = hat[i] + v.astype(np.float32)
            else:
                u = np.random.default_rng([seed, i, t]).random(d)
                hat[i] = hat[i] + dithered(v, levels, u, scaling)
        x = half + gamma * (W @ hat - hat)  # sum_j w_ij (hat_j - hat_i), rows sum to 1
        if mu > 0 and prox == "after":
            x = soft(x)
        halves.append(half)
    return halves, x


def objective(datasets, models) -> float:
    return sum(0.5 * np.sum((X @ models[i] - y) ** 2) for i, (X, y) in enumerate(datasets))


def test_choco_with_exact_compression_equals_dpsgd_adapt_combine() -> None:
    # Prepare: CHOCO-SGD, float32 (exact) compression, gamma = 1 vs D-PSGD (adapt-combine)
    graph = ring(5)
    data = load_dataset(5, 30, 6, 0.1, seed=3)
    choco = GossipSettings(compressor="float32", consensus_step=1.0)
    dpsgd = GossipSettings(dpsgd_form="adapt-combine")
    # Execute
    a = run_reference("choco-sgd", least_squares_solvers(data), 80, choco, graph=graph)
    b = run_reference("d-psgd", least_squares_solvers(data), 80, dpsgd, graph=graph)
    # Assert: the same trajectory. CHOCO mixes its own float32-tracked public copy where
    # D-PSGD uses its exact model: they differ by the float32 rounding of each change
    np.testing.assert_allclose(
        [r["objective"] for r in a.history], [r["objective"] for r in b.history], rtol=1e-6
    )
    np.testing.assert_allclose(a.models, b.models, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["ring-5", "torus-3x3"])
def test_choco_deferred_consensus_equals_the_textbook_loop(name: str) -> None:
    graph = {"ring-5": ring(5), "torus-3x3": torus(9)}[name]
    data = load_dataset(graph.num_nodes, 20, 5, 0.1, seed=4)
    W = metropolis(graph.num_nodes, graph.edges)
    settings = GossipSettings(compressor="float32", consensus_step=0.5, step_size=0.004)
    ours = run_reference("choco-sgd", least_squares_solvers(data), 40, settings, graph=graph)
    halves, x = plain_choco(data, W, 40, 0.004, 0.5)
    np.testing.assert_allclose(
        [r["objective"] for r in ours.history], [objective(data, h) for h in halves], rtol=1e-9
    )
    np.testing.assert_allclose(ours.models, x, rtol=1e-9, atol=1e-12)  # after finish()


@pytest.mark.parametrize(
    "algorithm, extra, levels, mu",
    [
        ("malcom-psgd", {"l1": 0.5}, 1, 0.5),
        ("malcom-psgd", {"l1": 0.5, "prox_order": "after"}, 1, 0.5),
        ("malcom-psgd", {"l1": 0.5, "variance_scaling": False, "consensus_step": 0.05}, 1, 0.5),
        ("choco-sgd", {}, 16, 0.0),
        ("choco-sgd", {"levels": 1}, 1, 0.0),
    ],
)
def test_dithered_rounds_equal_the_textbook_loop(algorithm, extra, levels, mu) -> None:
    # Malcom's round (prox, dithered s = 1, source coder) and CHOCO's (dithered s = 16 or
    # 1, fixed-width codec) against the plain loop with its own quantizer, same draws
    graph = ring(5)
    data = load_dataset(5, 20, 6, 0.1, seed=7)
    W = metropolis(5, graph.edges)
    fields = {"step_size": 0.004, "consensus_step": 0.2, **extra}
    ours = run_reference(
        algorithm, least_squares_solvers(data), 30, GossipSettings(**fields), graph=graph, seed=3
    )
    halves, x = plain_choco(
        data,
        W,
        30,
        0.004,
        fields["consensus_step"],
        levels=levels,
        scaling=fields.get("variance_scaling", True),
        seed=3,
        mu=mu,
        prox=fields.get("prox_order", "before"),
    )
    np.testing.assert_allclose(
        [r["objective"] for r in ours.history], [objective(data, h) for h in halves], rtol=1e-9
    )
    np.testing.assert_allclose(ours.models, x, rtol=1e-9, atol=1e-12)
    if algorithm == "choco-sgd":
        return
    zeros = [float(np.mean(h == 0)) for h in halves]
    np.testing.assert_allclose([r["sparsity"] for r in ours.history], zeros)


def test_choco_random_k_equals_the_textbook_rand_k_and_converges() -> None:
    # Prepare: CHOCO-SGD with rand_k (k/d = 0.2) on a ring, against a plain loop whose
    # rand_k is written here: k positions from the worker's RNG, kept unscaled (Koloskova
    # et al. 2019: omega = k/d). The unbiased (d/k) x_k diverged on this set-up by
    # iteration 17 for every gamma tried (0.05, 0.2, 0.5)
    n, d, k, eta, gamma, iters = 6, 40, 8, 0.002, 0.2, 600
    rng = np.random.default_rng(3)
    truth = rng.standard_normal(d)
    data = []
    for _ in range(n):
        X = rng.standard_normal((60, d))
        data.append((X, X @ truth + 0.1 * rng.standard_normal(60)))
    graph = ring(n)
    W = metropolis(n, graph.edges)
    A = [X.T @ X for X, _ in data]
    b = [X.T @ y for X, y in data]
    x, hat = np.zeros((n, d)), np.zeros((n, d))
    for t in range(1, iters + 1):
        half = np.stack([x[i] - eta * (A[i] @ x[i] - b[i]) for i in range(n)])
        for i in range(n):
            index = np.random.default_rng([0, i, t]).choice(d, size=k, replace=False)
            hat[i, index] += (half[i] - hat[i])[index].astype(np.float32)
        x = half + gamma * (W @ hat - hat)
    settings = GossipSettings(
        step_size=eta, consensus_step=gamma, compressor="random-k", fraction=k / d
    )
    # Execute
    ours = run_reference("choco-sgd", least_squares_solvers(data), iters, settings, graph=graph)
    # Assert: the same trajectory, and it gets close to the least-squares optimum
    np.testing.assert_allclose(ours.models, x, rtol=1e-9, atol=1e-12)
    optimum = np.linalg.solve(sum(A), sum(b))
    assert np.max(np.linalg.norm(ours.models - optimum, axis=1)) < 0.02 * np.linalg.norm(optimum)


def lasso(datasets, lam: float, iters: int = 20000) -> np.ndarray:
    """Centralized lasso min_x sum_i 1/2 ||X_i x - y_i||^2 + lam ||x||_1 by proximal
    gradient (ISTA), written here."""
    X = np.vstack([a for a, _ in datasets])
    y = np.concatenate([b for _, b in datasets])
    step = 1.0 / np.linalg.eigvalsh(X.T @ X)[-1]
    x = np.zeros(X.shape[1])
    for _ in range(iters):
        v = x - step * (X.T @ (X @ x - y))
        x = np.sign(v) * np.maximum(np.abs(v) - step * lam, 0.0)
    return x


def test_malcom_approaches_the_centralized_lasso_solution() -> None:
    # Prepare: a sparse ground truth; each of n workers applies the prox eta * mu after its
    # own gradient step, so the network solves min sum_i f_i(x) + n mu ||x||_1
    rng = np.random.default_rng(0)
    n, d, mu = 6, 10, 2.0
    truth = np.where(rng.random(d) < 0.5, 0.0, rng.standard_normal(d) * 3)
    X = rng.standard_normal((n * 40, d))
    y = X @ truth + 0.1 * rng.standard_normal(n * 40)
    data = [(X[i * 40 : (i + 1) * 40], y[i * 40 : (i + 1) * 40]) for i in range(n)]
    target = lasso(data, n * mu)
    errors = {}
    for eta in (0.0, 0.001):  # the automatic step (0.0037 here), then a smaller one
        engine = make_engine(
            "malcom-psgd",
            least_squares_solvers(data),
            ring(n),
            GossipSettings(l1=mu, step_size=eta),
        )
        engine.start()
        errors[eta] = []
        for k in range(1, 401):
            engine.run_round(k)
            if k in (10, 25, 50, 100, 200, 400):
                mean = np.mean([engine.thetas[i] for i in range(n)], axis=0)
                errors[eta].append(float(np.linalg.norm(mean - target) / np.linalg.norm(target)))
        # every worker's model after its prox step has exact zeros where the lasso
        # solution has them (the consensus step mixes in the neighbours' quantized copies:
        # after it those entries are only small, ~1e-7 here)
        models = np.stack([engine.thetas[i] for i in range(n)])
        assert np.all(models[:, target == 0] == 0)
        assert np.all(models[:, target != 0] != 0)
        engine.finish()
        assert np.max(np.abs(np.stack(list(engine.models().values()))[:, target == 0])) < 1e-5
    # Assert: the error falls until the constant-step fixed point, whose bias shrinks with
    # the step (0.36% of ||x*|| at the automatic step, 0.19% at 0.001: measured)
    for eta, errs in errors.items():
        assert all(b <= a for a, b in zip(errs, errs[1:], strict=False)), (eta, errs)
    assert errors[0.0][-1] < 0.01 and errors[0.001][-1] < 0.6 * errors[0.0][-1], errors


SMALL = {"samples-per-worker": 20, "dim": 5, "num-iterations": 12}


@pytest.mark.parametrize(
    "overrides",
    [
        {"algorithm": "choco-sgd", "topology": "ring", "num-workers": 5},
        {
            "algorithm": "choco-sgd",
            "topology": "torus",
            "num-workers": 9,
            "compressor": "top-k",
            "fraction": 0.4,
        },
        {"algorithm": "choco-sgd", "topology": "ring", "num-workers": 5, "compressor": "sign"},
        {"algorithm": "malcom-psgd", "topology": "ring", "num-workers": 5},
        {"algorithm": "malcom-psgd", "topology": "ring", "num-workers": 5, "remove-workers": "2@6"},
        # the automatic consensus step below 0.1: 2 / (1 + sqrt(600)) = 0.0784
        {"algorithm": "malcom-psgd", "topology": "ring", "num-workers": 5, "dim": 600},
        {"algorithm": "q-gadmm", "topology": "chain", "num-workers": 4, "codec": "source"},
    ],
)
def test_flower_path_equals_reference_exactly(overrides: dict) -> None:
    cfg = RunConfig.from_run_config({**SMALL, **overrides})
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0)
    grid = FakeGrid(app, cfg.num_workers, cfg.to_run_config())
    strategy.start(grid, num_rounds=cfg.num_iterations, timeout=5.0)
    want = run_from_config(cfg, least_squares_solvers(experiment_datasets(cfg)))
    for got, expected in zip(strategy.history, want.history, strict=True):
        assert {k: got[k] for k in expected} == expected
    if overrides.get("dim") == 600:
        assert strategy.settings.consensus_step == pytest.approx(2 / (1 + 600**0.5))
    np.testing.assert_array_equal(
        np.stack([strategy.last_models()[n] for n in strategy.graph.active]), want.models
    )


@pytest.mark.parametrize("algorithm", ["choco-sgd", "gadmm"])
def test_final_models_are_reported_when_the_deferred_step_moved_them(tmp_path, algorithm) -> None:
    # Prepare: the last row of a gossip run reports the half steps; the final models
    # took the deferred consensus step (GADMM has none: nothing more to report)
    cfg = RunConfig.from_run_config(
        {**SMALL, "algorithm": algorithm, "topology": "chain", "num-workers": 4}
    )
    datasets = experiment_datasets(cfg)
    seen = []

    def evaluate(mean):
        seen.append(mean.copy())
        return {"mean_norm": float(np.linalg.norm(mean))}

    def evaluate_fn(k, arrays):
        from flwr.app import MetricRecord

        seen.append(arrays["theta"].numpy().copy())
        return MetricRecord({"mean_norm": float(np.linalg.norm(seen[-1]))})

    # Execute: the reference runner, and the Flower path with a results folder
    want = run_from_config(cfg, least_squares_solvers(datasets), evaluate=evaluate)
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0, results_dir=str(tmp_path))
    grid = FakeGrid(app, cfg.num_workers, cfg.to_run_config())
    result = strategy.start(
        grid, num_rounds=cfg.num_iterations, timeout=5.0, evaluate_fn=evaluate_fn
    )
    # Assert
    models = want.models
    mean = models.mean(axis=0)
    consensus = float(np.sqrt(np.mean(np.sum((models - mean) ** 2, axis=1))))
    last = want.history[-1]
    summary = next(tmp_path.glob("*/summary.md")).read_text()
    final_metrics = result.evaluate_metrics_serverapp[cfg.num_iterations]
    if algorithm == "gadmm":  # the last row's models are the final ones
        assert want.final == {} and last["consensus_error"] == consensus
        assert "the saved models took it" not in summary
        return
    assert last["consensus_error"] != consensus
    assert want.final["consensus_error"] == consensus
    assert want.final["mean_norm"] == float(np.linalg.norm(mean))
    np.testing.assert_array_equal(seen[-1], mean.astype(seen[-1].dtype))  # evaluate_fn too
    assert final_metrics["consensus_error"] == consensus
    assert final_metrics["mean_norm"] == float(np.linalg.norm(seen[-1]))
    assert "the saved models took it" in summary and f"{consensus:.6g}" in summary


@pytest.mark.parametrize(
    "algorithm, extra, levels, mu",
    [
        ("malcom-psgd", {"l1": 0.05}, 1, 0.05),  # tau = 1 + sqrt(400) = 21: gamma 2 / 21
        ("choco-sgd", {"levels": 1}, 1, 0.0),
        ("choco-sgd", {}, 16, 0.0),  # tau = 1 + sqrt(400) / 16 = 2.25: gamma 0.1
        ("malcom-psgd", {"variance_scaling": False}, 1, 0.0002),  # no tau: 0.1
    ],
)
def test_the_automatic_consensus_step_keeps_gamma_tau_at_two(algorithm, extra, levels, mu) -> None:
    # consensus-step 0 (the default): min(0.1, 2 / tau), tau = 1 + min(d / s^2, sqrt(d) / s)
    # the variance scaling CHOCO divides by; the runs equal the textbook loop at that gamma
    graph, d = ring(4), 400
    data = load_dataset(4, 30, d, 0.1, seed=5)
    tau = 1 + min(d / levels**2, np.sqrt(d) / levels) if extra.get("variance_scaling", 1) else 1
    gamma = min(0.1, 2 / tau)
    settings = GossipSettings(step_size=1e-4, **extra)
    assert settings.consensus_step == 0  # automatic unless set
    engine = make_engine(algorithm, least_squares_solvers(data), graph, settings, seed=2)
    engine.start()
    assert engine.settings.consensus_step == pytest.approx(gamma, rel=1e-12)
    # a worker given unresolved settings (a loop of your own) takes the same value
    worker = engine.transport.workers[0]
    worker.settings = settings
    assert worker.consensus_step == pytest.approx(gamma, rel=1e-12)
    ours = run_reference(algorithm, least_squares_solvers(data), 12, settings, graph=graph, seed=2)
    halves, _ = plain_choco(
        data,
        metropolis(4, graph.edges),
        12,
        1e-4,
        gamma,
        levels=levels,
        scaling=extra.get("variance_scaling", True),
        seed=2,
        mu=mu,
    )
    np.testing.assert_allclose(
        [r["objective"] for r in ours.history], [objective(data, h) for h in halves], rtol=1e-9
    )
    # a value set by hand is kept
    by_hand = GossipSettings(step_size=1e-4, consensus_step=0.3, **extra)
    engine = make_engine(algorithm, least_squares_solvers(data), graph, by_hand)
    engine.start()
    assert engine.settings.consensus_step == 0.3


@pytest.mark.parametrize(
    "extra, gamma",
    [
        ({"compressor": "random-k", "fraction": 0.01}, 2 / 100),  # k = 4 of 400: tau = 100
        ({"compressor": "random-k", "fraction": 0.1}, 0.1),  # tau = 10: 2 / tau = 0.2
        ({"compressor": "top-k", "fraction": 0.01}, 0.1),  # its mean is no multiple of x
        ({"compressor": "sign"}, 0.1),
        ({"levels": 1, "norm": "linf"}, 2 / 21),  # tau = 1 + sqrt(400)
        ({"levels": 2}, 0.1),  # tau = 1 + sqrt(400) / 2 = 11: 2 / tau = 0.18
    ],
)
def test_the_automatic_consensus_step_of_each_compressor(extra, gamma) -> None:
    data = load_dataset(4, 30, 400, 0.1, seed=5)
    settings = GossipSettings(step_size=1e-4, **extra)
    engine = make_engine("choco-sgd", least_squares_solvers(data), ring(4), settings)
    engine.start()
    assert engine.settings.consensus_step == pytest.approx(gamma, rel=1e-12)


def test_a_consensus_step_set_too_large_for_the_compressor_is_warned_of(caplog) -> None:
    # s = 1 on d = 400: tau = 21; 0.5 gives gamma tau = 10.5 (measured to drift above ~3)
    data = load_dataset(4, 30, 400, 0.1, seed=5)

    def warnings(**extra) -> list[str]:
        caplog.clear()
        settings = GossipSettings(step_size=1e-4, levels=1, **extra)
        with caplog.at_level(logging.WARNING):
            make_engine("choco-sgd", least_squares_solvers(data), ring(4), settings).start()
        return [r.message for r in caplog.records if "consensus-step" in r.message]

    (text,) = warnings(consensus_step=0.5)
    assert "tau = 21 on d = 400: gamma tau = 10.5 > 3" in text
    assert "the automatic value (consensus-step = 0) is 0.0952" in text
    assert warnings(consensus_step=0.1) == []  # gamma tau = 2.1
    assert warnings() == []  # automatic: 2 / 21
    assert warnings(consensus_step=0.5, compressor="top-k") == []  # tau = 1


def test_lambda_min_of_a_large_mixing_matrix_by_lanczos() -> None:
    """The automatic step needs lambda_min(W): whole spectrum up to EXACT_MIXING_MAX
    workers (the same floats as before), Lanczos on W's sparse form above (8 s -> 0.16 s
    at 3,000 workers), within 1e-5 of the whole spectrum and reproducible."""
    from flower_qgadmm.algorithms.gossip import lambda_min
    from flower_qgadmm.numeric import EXACT_SPECTRUM_DIM as EXACT_MIXING_MAX

    for n in (40, EXACT_MIXING_MAX, 700):
        chain_edges = [(i, i + 1) for i in range(n - 1)]
        for edges in (chain_edges, [*chain_edges, (n - 1, 0)]):
            W = metropolis(n, edges)
            whole = float(np.linalg.eigvalsh(W)[0])
            if n <= EXACT_MIXING_MAX:
                assert lambda_min(W) == whole
            else:
                assert lambda_min(W) == pytest.approx(whole, rel=1e-5)
                assert lambda_min(W) == lambda_min(W)


@pytest.mark.parametrize("algorithm", ["d-psgd", "choco-sgd", "malcom-psgd"])
def test_a_mixing_matrix_with_eigenvalue_minus_one_has_no_automatic_step(algorithm) -> None:
    # '0 1; 1 0' (and zero self-weights on an even ring) is symmetric and doubly
    # stochastic, so it is accepted; its lambda_min = -1 made the automatic step
    # (1 + lambda_min) / (2 L) zero and the run failed with "step-size was not resolved"
    from flower_qgadmm.topology import chain

    half = 0.5 * np.array([[0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]])
    for graph, W in ((chain(2), np.array([[0.0, 1.0], [1.0, 0.0]])), (ring(4), half)):
        data = load_dataset(graph.num_nodes, 20, 4, 0.1, seed=2)
        with pytest.raises(
            ValueError, match=r"no automatic step-size: lambda_min\(W\) = -1 .* eigenvalue -1"
        ):
            run_reference(algorithm, least_squares_solvers(data), 2, graph=graph, mixing=W)
        run_reference(  # a step-size of the user's own is taken
            algorithm,
            least_squares_solvers(data),
            2,
            GossipSettings(step_size=0.01),
            graph=graph,
            mixing=W,
        )


def test_lambda_min_never_takes_a_lanczos_value_above_the_diagonal(caplog, monkeypatch) -> None:
    """ARPACK breaks down on a block of the identity next to an averaging block (two
    eigenvalues, 1 and 0, of large multiplicity) and returned 1 for lambda_min = 0, which
    doubled the automatic step. A value above min w_ii (a Rayleigh quotient) is refused
    and, above DENSE_FALLBACK_MAX workers, the Gershgorin bound min(2 w_ii - 1), below
    lambda_min, taken with a warning (below it: the whole spectrum, tested further down)."""
    from scipy.sparse import block_diag, csr_array, identity

    from flower_qgadmm.algorithms import gossip
    from flower_qgadmm.algorithms.gossip import lambda_min

    monkeypatch.setattr(gossip, "DENSE_FALLBACK_MAX", 599)
    W = csr_array(block_diag([identity(300), np.full((300, 300), 1 / 300)]))
    with caplog.at_level("WARNING"):
        value = lambda_min(W)
    assert value == pytest.approx(2 / 300 - 1)
    assert value <= float(np.linalg.eigvalsh(W.toarray())[0]) + 1e-12
    assert "Lanczos gave no valid value" in caplog.text
    # a matrix Lanczos handles gives its value, no warning
    caplog.clear()
    W600 = ring(600).mixing_weights("metropolis")
    with caplog.at_level("WARNING"):
        assert lambda_min(W600) == pytest.approx(np.linalg.eigvalsh(W600.toarray())[0], rel=1e-5)
    assert "Lanczos" not in caplog.text


def test_lambda_min_without_lanczos_takes_the_whole_spectrum_up_to_a_size(
    caplog, monkeypatch
) -> None:
    """Lanczos giving no valid value fell back to the Gershgorin bound max(-1, min(2 w_ii
    - 1)) at any size: -1 once a self-weight is 0 (no automatic step: the run stopped),
    2/300 - 1 for lambda_min = 0 on the matrix ARPACK breaks down on. Up to
    DENSE_FALLBACK_MAX workers the whole spectrum gives lambda_min itself."""
    from scipy.sparse import block_diag, csr_array, identity
    from scipy.sparse.linalg import ArpackNoConvergence

    from flower_qgadmm.algorithms import gossip

    n = 600  # above EXACT_SPECTRUM_DIM: Lanczos first
    no_self_weight = csr_array((np.ones((n, n)) - np.eye(n)) / (n - 1))  # complete, w_ii = 0
    breakdown = csr_array(block_diag([identity(300), np.full((300, 300), 1 / 300)]))
    for W in (no_self_weight, breakdown):
        whole = float(np.linalg.eigvalsh(W.toarray())[0])
        with monkeypatch.context() as patch:  # Lanczos does not converge
            if W is no_self_weight:

                def fails(*args):
                    raise ArpackNoConvergence("no convergence", np.array([]), np.array([]))

                patch.setattr(gossip, "lanczos_eigenvalue", fails)
            caplog.clear()
            with caplog.at_level("WARNING"):
                value = gossip.lambda_min(W)
        assert value == whole  # -1/599 and 0, not -1 and 2/300 - 1
        assert "Lanczos gave no valid value; taking the whole spectrum" in caplog.text


def test_the_relays_divergence_advice_names_the_gossip_causes() -> None:
    # Malcom's s = 1 without variance scaling on d = 200 (omega = 14): the set-up warns,
    # the workers' copies cannot follow and the watchdog stops the run. Its advice named
    # ADMM's rho and "use the automatic value" for a step that was automatic; now it names
    # the variance scaling, and a hand-set consensus step or step size
    cfg = RunConfig.of(
        algorithm="malcom-psgd", num_workers=6, topology="ring", dim=200, variance_scaling=False
    )
    solvers = least_squares_solvers(experiment_datasets(cfg))
    with pytest.raises(FloatingPointError) as err:
        run_reference("malcom-psgd", solvers, 200, cfg.algo, graph=cfg.graph)
    text = str(err.value)
    assert "variance-scaling = false with s = 1" in text and "rho" not in text
    assert "lower step-size (now 0.000737514, the automatic value) by hand" in text
    fields = {"step_size": 0.004, "consensus_step": 0.9, "levels": 1}
    with pytest.raises(FloatingPointError) as err:
        run_reference("choco-sgd", solvers, 200, GossipSettings(**fields), graph=cfg.graph, seed=1)
    text = str(err.value)
    assert "consensus-step=0.9 was set by hand" in text and "variance-scaling" not in text
    assert "lower step-size (now 0.004, set by hand), or use the automatic value" in text
