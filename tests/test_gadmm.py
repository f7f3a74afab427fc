"""GADMM / Q-GADMM against plain textbook implementations and closed-form optima."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from flower_qgadmm.algorithms import Gadmm, GadmmSettings, GossipSettings
from flower_qgadmm.data import load_dataset, read_csv, split_rows
from flower_qgadmm.history import summarize
from flower_qgadmm.reference import build_workers, least_squares_solvers, make_engine, run_reference
from flower_qgadmm.topology import chain, random_bipartite, ring


def plain_chain_admm(datasets, rho, iters, bits=None, seed=0, float32_messages=True):
    """Textbook (Q-)GADMM on a chain, written from the papers independently of the library.

    bits=None: GADMM, messages are theta (exact float64, or the float32 of the change).
    bits=b: Q-GADMM with the stochastic quantizer; the RNG of worker n at iteration k is
    default_rng([seed, n, k]) and payloads are 3 + v(d) + ceil(b d / 8) bytes (header with
    d as a v(d)-byte varint and R in 16 bits, + codes).
    """
    N, d = len(datasets), datasets[0][0].shape[1]
    A = [X.T @ X for X, _ in datasets]
    b = [X.T @ y for X, y in datasets]
    theta, hat, lam = np.zeros((N, d)), np.zeros((N, d)), np.zeros((N - 1, d))
    total_bits, out = 0, []
    varint = max(1, math.ceil(d.bit_length() / 7))  # bytes of the LEB128 size field

    def send(n, k):
        nonlocal total_bits
        v = theta[n] - hat[n]
        if bits is None:
            hat[n] = hat[n] + (v.astype(np.float32).astype(np.float64) if float32_messages else v)
            total_bits += 8 * (1 + varint + 4 * d)
            return
        r = np.float32(np.max(np.abs(v)))
        if float(r) < np.max(np.abs(v)):
            r = np.nextafter(r, np.float32(np.inf))
        pattern = int(np.array(r, np.float32).view(np.uint32))
        if pattern & 0xFFFF:  # R rounded up to a float32 whose low 16 bits are 0
            pattern = (pattern & 0xFFFF0000) + 0x10000
        r = float(np.array(pattern, np.uint32).view(np.float32))
        if r > 0:
            delta = 2 * r / (2**bits - 1)
            c = (v + r) / delta
            q = np.floor(c) + (np.random.default_rng([seed, n, k]).random(d) < c - np.floor(c))
            hat[n] = hat[n] + (delta * q - r)
        total_bits += 8 * (3 + varint + math.ceil(bits * d / 8))

    for k in range(1, iters + 1):
        for first in (0, 1):  # heads = even positions, then tails = odd positions
            for n in range(first, N, 2):
                nbrs = [m for m in (n - 1, n + 1) if 0 <= m < N]
                rhs = b[n] + rho * sum(hat[m] for m in nbrs)
                if n > 0:
                    rhs = rhs + lam[n - 1]
                if n < N - 1:
                    rhs = rhs - lam[n]
                theta[n] = np.linalg.solve(A[n] + rho * len(nbrs) * np.eye(d), rhs)
            for n in range(first, N, 2):
                send(n, k)
        lam = lam + rho * (hat[:-1] - hat[1:])
        F = sum(0.5 * np.sum((X @ theta[n] - y) ** 2) for n, (X, y) in enumerate(datasets))
        out.append((F, total_bits))
    return out, theta


@pytest.fixture(scope="module")
def small():
    return load_dataset(6, 30, 8, 0.1, seed=3)


def test_gadmm_equals_plain_gadmm(small) -> None:
    # Prepare
    # the textbook works on the data as given: no feature scaling
    settings = GadmmSettings(rho=5.0, scale_features=False)
    # Execute
    ours = run_reference("gadmm", least_squares_solvers(small), 60, settings)
    plain, _ = plain_chain_admm(small, 5.0, 60)
    exact, _ = plain_chain_admm(small, 5.0, 60, float32_messages=False)
    # Assert: same trajectory and bit count; float32 messages barely move it off exact GADMM
    np.testing.assert_allclose(
        [r["objective"] for r in ours.history], [p[0] for p in plain], rtol=1e-9
    )
    assert [r["bits"] for r in ours.history] == [p[1] for p in plain]
    np.testing.assert_allclose(
        [r["objective"] for r in ours.history], [p[0] for p in exact], rtol=1e-5
    )


@pytest.mark.parametrize("bits", [2, 3, 8])
def test_qgadmm_equals_plain_qgadmm(small, bits: int) -> None:
    settings = GadmmSettings(rho=5.0, bits=bits, scale_features=False)  # textbook: unscaled
    ours = run_reference("q-gadmm", least_squares_solvers(small), 60, settings, seed=11)
    plain, _ = plain_chain_admm(small, 5.0, 60, bits=bits, seed=11)
    np.testing.assert_allclose(
        [r["objective"] for r in ours.history], [p[0] for p in plain], rtol=1e-9
    )
    assert [r["bits"] for r in ours.history] == [p[1] for p in plain]
    assert ours.history[-1]["nominal_bits"] == 60 * 6 * (bits * 8 + 32)


@pytest.mark.parametrize("algorithm", ["gadmm", "q-gadmm"])
def test_neighbours_hold_identical_copies_and_duals(small, algorithm: str) -> None:
    # Bagua-style invariant: after every phase, a worker's public copy equals the copy its
    # neighbours hold, bit for bit; both ends of an edge hold the same dual once updated.
    graph = chain(len(small))
    nodes = build_workers(
        algorithm, least_squares_solvers(small), graph, GadmmSettings(rho=5.0, bits=2)
    )
    for k in range(1, 15):
        for phase in Gadmm.schedule(graph):
            for n in phase.members:
                payload = nodes[n].step(k, phase.name)
                for m in graph.neighbours(n):
                    nodes[m].receive(n, payload)
            for n in range(len(nodes)):
                for m in graph.neighbours(n):
                    assert np.array_equal(nodes[m].copies[n], nodes[n].copies[n])
        for a, b in graph.edges:
            if not nodes[a].dual_pending and not nodes[b].dual_pending:
                assert np.array_equal(nodes[a].dual[b], nodes[b].dual[a])


def plain_ggadmm(data, graph, rho, iters, bits, seed, tau0=None, xi=None):
    """Q-GGADMM (CQ-GGADMM with ``tau0``, ``xi``) on any bipartite graph, written from the
    paper: heads then tails solve with the neighbours' copies, quantize the change
    against their own copy (R rounded up to a bfloat16 value, as the message carries
    it), skip a change of 2-norm below tau0 xi^k; then every alpha_n += rho sum_m
    (hat_n - hat_m). Returns (objective per iteration, censored count)."""

    def quantize(v, rng):
        r = np.float32(np.max(np.abs(v)))
        if float(r) < np.max(np.abs(v)):
            r = np.nextafter(r, np.float32(np.inf))
        pattern = int(np.array(r, np.float32).view(np.uint32))
        if pattern & 0xFFFF:
            pattern = (pattern & 0xFFFF0000) + 0x10000
        r = float(np.array(pattern, np.uint32).view(np.float32))
        if r == 0:
            return np.zeros_like(v)
        delta = 2 * r / (2**bits - 1)
        c = (v + r) / delta
        return delta * (np.floor(c) + (rng.random(v.size) < c - np.floor(c))) - r

    n_workers, d = len(data), data[0][0].shape[1]
    gram, xty = [X.T @ X for X, _ in data], [X.T @ y for X, y in data]
    heads, tails = graph.two_colouring()
    nbrs = {n: list(graph.neighbours(n)) for n in range(n_workers)}
    theta, hat, alpha = (np.zeros((n_workers, d)) for _ in range(3))
    objective, censored = [], 0
    for k in range(1, iters + 1):
        for group in (heads, tails):
            for n in group:
                rhs = xty[n] - alpha[n] + rho * sum(hat[m] for m in nbrs[n])
                theta[n] = np.linalg.solve(gram[n] + rho * len(nbrs[n]) * np.eye(d), rhs)
            for n in group:
                q = quantize(theta[n] - hat[n], np.random.default_rng([seed, n, k]))
                if tau0 is not None and np.linalg.norm(q) < tau0 * xi**k:
                    censored += 1
                    continue
                hat[n] += q
        for n in range(n_workers):
            alpha[n] += rho * sum(hat[n] - hat[m] for m in nbrs[n])
        objective.append(
            sum(0.5 * np.sum((X @ theta[n] - y) ** 2) for n, (X, y) in enumerate(data))
        )
    return objective, censored


def test_copies_follow_the_conventions_of_the_authors_matlab_code(small) -> None:
    # The authors' Q-GADMM code (aelgabli/QGADMM, quantized_group_ADMM.m) keeps, per
    # worker, a left and a right dual, lambda_1 += rho (q_{n-1} - q_n) and lambda_2 +=
    # rho (q_n - q_{n+1}) after both groups, solves (H'H + c rho I) x = H'y + lambda_1 -
    # lambda_2 + rho (q_{n-1} + q_{n+1}), quantizes x - q_n with R = max|x - q_n| and
    # replaces its model by the quantized one (it reports F at the quantized models).
    # Written here independently with those conventions (our R, rounded up to a
    # bfloat16 value, and our draws): every worker's public copy must follow it.
    data, rho, bits, seed = small, 5.0, 3, 0
    n_workers, d = len(data), data[0][0].shape[1]
    q = np.zeros((n_workers, d))
    lam1, lam2 = np.zeros((n_workers, d)), np.zeros((n_workers, d))
    settings = GadmmSettings(rho=rho, bits=bits, scale_features=False)
    nodes = build_workers("q-gadmm", least_squares_solvers(data), chain(n_workers), settings)
    quantizer = nodes[0].copies.quantizer
    for k in range(1, 31):
        for first in (0, 1):  # the odd workers (1-based), then the even ones
            for n in range(first, n_workers, 2):
                X, y = data[n]
                ends = (n > 0) + (n < n_workers - 1)
                rhs = X.T @ y + lam1[n] - lam2[n]
                rhs += rho * ((q[n - 1] if n > 0 else 0) + (q[n + 1] if n < n_workers - 1 else 0))
                x = np.linalg.solve(X.T @ X + ends * rho * np.eye(d), rhs)
                message = quantizer.quantize(x - q[n], np.random.default_rng([seed, n, k]))
                q[n] = q[n] + quantizer.dequantize(message)
            # ours, the same phase
            for n in range(first, n_workers, 2):
                payload = nodes[n].step(k, "head" if first == 0 else "tail")
                for m in chain(n_workers).neighbours(n):
                    nodes[m].receive(n, payload)
        for n in range(n_workers):
            if n > 0:
                lam1[n] += rho * (q[n - 1] - q[n])
            if n < n_workers - 1:
                lam2[n] += rho * (q[n] - q[n + 1])
        ours = np.stack([node.public_copy() for node in nodes])
        np.testing.assert_allclose(ours, q, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("tau0", "xi"), [(None, None), (0.5, 0.9)])
def test_ggadmm_on_a_bipartite_graph_equals_the_papers_rules(tau0, xi) -> None:
    # Prepare: 10 workers on a random bipartite graph (not a chain), 3-bit messages,
    # with and without censoring
    data = load_dataset(10, 30, 6, 0.1, seed=4)
    graph = random_bipartite(10, seed=2)
    settings = GadmmSettings(
        rho=5.0,
        bits=3,
        scale_features=False,
        censoring=tau0 is not None,
        censor_tau0=tau0 or 0.3,
        censor_xi=xi or 0.9,
    )
    # Execute
    ours = run_reference(
        "q-gadmm", least_squares_solvers(data), 60, settings, seed=11, graph=graph
    ).history
    plain, censored = plain_ggadmm(data, graph, 5.0, 60, 3, 11, tau0, xi)
    # Assert: the same objectives (Cholesky vs LU solves: last-bit differences) and the
    # same number of censored sends
    np.testing.assert_allclose([r["objective"] for r in ours], plain, rtol=1e-9)
    assert ours[-1].get("censored", 0) == censored
    assert (censored > 50) == (tau0 is not None)


@pytest.mark.parametrize(
    ("algorithm", "topology", "settings"),
    [
        ("malcom-psgd", "ring", GossipSettings()),
        ("choco-sgd", "ring", GossipSettings(compressor="top-k", fraction=0.3)),
        ("choco-sgd", "ring", GossipSettings(compressor="sign")),
        ("choco-sgd", "ring", GossipSettings(compressor="random-k", fraction=0.3)),
        ("d-psgd", "ring", GossipSettings()),
        (
            "q-gadmm",
            "bipartite",
            GadmmSettings(rho=5.0, bits=3, censoring=True, censor_tau0=0.5, censor_xi=0.9),
        ),
        ("q-gadmm", "chain", GadmmSettings(rho=5.0, bits=2, adaptive_bits=True, codec="source")),
    ],
)
def test_every_algorithm_keeps_the_copies_identical_on_both_ends(
    small, algorithm, topology, settings
) -> None:
    # Bagua-style invariant for every compressor and codec: after every phase, the copy a
    # worker holds of a neighbour equals the neighbour's own, bit for bit
    graph = {"ring": ring(6), "chain": chain(6), "bipartite": random_bipartite(6, seed=1)}[topology]
    nodes = build_workers(algorithm, least_squares_solvers(small), graph, settings)
    sent = censored = 0
    for k in range(1, 40):
        for phase in type(nodes[0]).schedule(graph):
            payloads = {n: nodes[n].step(k, phase.name) for n in phase.members}
            for n, payload in payloads.items():
                if payload is None:
                    censored += 1
                    continue
                sent += 1
                for m in graph.neighbours(n):
                    nodes[m].receive(n, payload)
            for n in range(len(nodes)):
                for m in graph.neighbours(n):
                    assert np.array_equal(nodes[m].copies[n], nodes[n].copies[n]), (k, n, m)
    assert sent > 50 and (censored > 0) == settings.__dict__.get("censoring", False)


def test_default_problem_qgadmm_vs_gadmm() -> None:
    # The acceptance: GADMM reaches 1e-6; Q-GADMM within 1.2x its iterations
    # and at most 1/4 of its measured bits (defaults: 10 workers, d = 20; automatic rho,
    # scaled features, b = 3 since 2-bit diverges at the automatic rho).
    data = load_dataset(10, 50, 20, 0.1, seed=0)
    g = summarize(
        run_reference("gadmm", least_squares_solvers(data), 500).history,
        1e-6,
    )
    q = summarize(
        run_reference("q-gadmm", least_squares_solvers(data), 500).history,
        1e-6,
    )
    assert g["reached_iteration"] is not None and q["reached_iteration"] is not None
    assert q["reached_iteration"] <= 1.2 * g["reached_iteration"]
    assert q["reached_bits"] <= 0.25 * g["reached_bits"]


def test_adaptive_bits_converge_and_vary(small) -> None:
    settings = GadmmSettings(rho=5.0, bits=2, adaptive_bits=True, omega=0.95, bits_max=8)
    result = run_reference("q-gadmm", least_squares_solvers(small), 200, settings)
    # nominal bits: b d + 32 per message plus the width it names (1..8: 3 bits), the
    # paper's count when b varies; the measured bits carry it in the header byte
    workers, d = len(small), small[0][0].shape[1]
    widths = np.diff([0] + [r["bits"] for r in result.history])  # measured, per iteration
    nominal = np.diff([0] + [r["nominal_bits"] for r in result.history])
    header = 8 * (1 + 1 + 2)  # tag, d as a 1-byte varint, R in 2 bytes
    assert d % 8 == 0  # b d bits fill whole bytes: no padding in the measured bits
    for measured, counted in zip(widths, nominal, strict=True):
        payload_bits = measured - workers * header  # sum over workers of b d
        assert counted == payload_bits + workers * (32 + 3)
    X = np.vstack([x for x, _ in small])
    y = np.concatenate([t for _, t in small])
    theta_star = np.linalg.lstsq(X, y, rcond=None)[0]
    assert np.linalg.norm(result.mean_model - theta_star) < 1e-4 * np.linalg.norm(theta_star)
    per_iteration = np.diff([0] + [r["bits"] for r in result.history])
    assert len(set(per_iteration.tolist())) > 1  # widths changed over the run


@pytest.mark.parametrize("omega", [1.0, 0.9])
def test_adaptive_width_keeps_the_step_bound_with_the_range_it_sends(small, omega) -> None:
    # Prepare: one worker's messages of ranges from 0.1 to 40 (ratios to the last one's
    # from 1/400 to 400); the message
    # carries R rounded up to a bfloat16 value, and the rule bounds the step of that R
    settings = GadmmSettings(rho=5.0, bits=3, adaptive_bits=True, omega=omega, bits_max=8)
    worker = build_workers("q-gadmm", least_squares_solvers(small), settings=settings)[0]
    rng = np.random.default_rng(0)
    configured = 2**settings.bits - 1
    checked = 0
    for k in range(1, 3001):
        before = worker.last_range
        v = rng.standard_normal(worker.theta.size)
        v *= rng.uniform(0.1, 40) / np.max(np.abs(v))
        worker.theta = worker.copies.own + v
        # Execute
        worker._transmit(k)
        # Assert: Delta_k <= omega 2 R_{k-1} / (2^bits - 1) unless the width is capped
        step = 2 * worker.last_range / (2**worker.last_bits - 1)
        if before > 0 and worker.last_bits < settings.bits_max:
            checked += 1
            assert step <= omega * 2 * before / configured, (k, worker.last_bits)
    assert checked > 1000


def test_the_slides_adaptive_rule_bounds_each_step_by_the_previous_one(small) -> None:
    # Prepare: adaptive-reference = "previous": Delta_k <= omega Delta_{k-1} (the
    # CQ-GGADMM slides' rule), which ratchets: the width only grows while ranges do not
    # shrink more than 2^b-fold
    settings = GadmmSettings(
        rho=5.0, bits=3, adaptive_bits=True, omega=0.9, bits_max=12, adaptive_reference="previous"
    )
    worker = build_workers("q-gadmm", least_squares_solvers(small), settings=settings)[0]
    rng = np.random.default_rng(1)
    widths, checked = [], 0
    for k in range(1, 401):
        before = 2 * worker.last_range / (2**worker.last_bits - 1)
        v = rng.standard_normal(worker.theta.size)
        worker.theta = worker.copies.own + v * rng.uniform(0.5, 2) / np.max(np.abs(v))
        # Execute
        worker._transmit(k)
        widths.append(worker.last_bits)
        # Assert
        step = 2 * worker.last_range / (2**worker.last_bits - 1)
        if before > 0 and worker.last_bits < settings.bits_max:
            checked += 1
            assert step <= settings.omega * before
    assert checked > 10 and widths[-1] == settings.bits_max  # it ratcheted to the cap
    with pytest.raises(ValueError, match="adaptive-reference must be one of"):
        GadmmSettings(adaptive_reference="last")


def test_csv_real_data_converges_to_numpy_lstsq(tmp_path) -> None:
    # Prepare: scikit-learn's diabetes data as a user's CSV, split over 6 workers
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    path = tmp_path / "diabetes.csv"
    header = ",".join([*bunch.feature_names, "progression"])
    np.savetxt(
        path, np.column_stack([bunch.data, bunch.target]), delimiter=",", header=header, comments=""
    )
    X, y = read_csv(path, "progression")
    # Execute
    result = run_reference(
        "q-gadmm",
        least_squares_solvers(split_rows(X, y, 6)),
        1000,
        GadmmSettings(bits=4),  # automatic rho (was a hand-tuned 0.05), scaled features
    )
    # Assert
    theta_star = np.linalg.lstsq(bunch.data, bunch.target, rcond=None)[0]
    for model in result.models:
        np.testing.assert_allclose(model, theta_star, rtol=1e-4, atol=1e-3)
    assert result.history[-1]["objective_gap"] < 1e-8


def test_growing_differences_warn_and_nan_raises(small, caplog) -> None:
    data = load_dataset(10, 50, 50, 0.1, seed=0)  # 2-bit Q-GADMM diverges here at rho = 30
    # the workers warn as the range grows; the relay's watchdog then stops the run early
    with caplog.at_level(logging.WARNING), pytest.raises(FloatingPointError, match="too few bits"):
        run_reference("q-gadmm", least_squares_solvers(data), 80, GadmmSettings(rho=30.0, bits=2))
    assert "use more bits, adaptive-bits, or a smaller rho" in caplog.text
    nodes = build_workers("q-gadmm", least_squares_solvers(small), chain(len(small)))
    nodes[0].solver.solve = lambda *args: np.full(8, np.nan)
    with pytest.raises(FloatingPointError, match="worker 0 diverged at iteration 1"):
        nodes[0].step(1, "head")


def test_bad_data_is_refused() -> None:
    X = np.ones((5, 3))
    with pytest.raises(ValueError, match="cannot be split over 6 workers"):
        split_rows(X, np.ones(5), 6)
    with pytest.raises(ValueError, match=r"disagree on the model size \(worker 0: 2, worker 1: 3"):
        build_workers(
            "q-gadmm", least_squares_solvers([(np.ones((3, 2)), np.ones(3)), (X, np.ones(5))])
        )


def test_optimal_value_is_summed_from_residuals() -> None:
    # Near-perfect fit: (y^T y - b^T theta*) / 2 would lose most digits here.
    data = load_dataset(4, 30, 5, noise=1e-5, seed=1)
    engine = make_engine("gadmm", least_squares_solvers(data))
    engine.start()
    optimum = engine.optimum
    X = np.vstack([x for x, _ in data])
    y = np.concatenate([t for _, t in data])
    theta = np.linalg.lstsq(X, y, rcond=None)[0]
    assert optimum.value == pytest.approx(0.5 * np.sum((X @ theta - y) ** 2), rel=1e-7)


def test_the_optimum_of_columns_of_very_different_scales_is_the_stacked_least_squares() -> None:
    """With columns from 1e-6 to 1e6, X^T X has condition ~1e24: solved as it is, the
    least-squares step dropped the small columns (F* 162 instead of 1.09, so every gap
    was wrong); equilibrated, it equals lstsq on the stacked X."""
    from flower_qgadmm.metrics import EQUILIBRATE_SPREAD, optimal_model

    rng = np.random.default_rng(0)
    scales = np.array([1e-6, 1e-3, 1.0, 1.0, 1e3, 1e6])
    X = rng.standard_normal((200, 6)) * scales
    y = X @ (rng.standard_normal(6) / scales) + 0.1 * rng.standard_normal(200)
    parts = [(X[i::4].T @ X[i::4], X[i::4].T @ y[i::4]) for i in range(4)]

    def f(theta):
        return 0.5 * float(np.sum((X @ theta - y) ** 2))

    exact = np.linalg.lstsq(X, y, rcond=None)[0]
    assert f(optimal_model(parts)) == pytest.approx(f(exact), rel=1e-9)
    # within the spread, the summed system is solved as it is: the same bits as before
    Z = rng.standard_normal((40, 5)) * np.array([1.0, 2.0, 0.5, 10.0, 1.0])
    gram, xty = Z.T @ Z, Z.T @ rng.standard_normal(40)
    assert np.diag(gram).max() < EQUILIBRATE_SPREAD * np.diag(gram).min()
    np.testing.assert_array_equal(
        optimal_model([(gram, xty)]), np.linalg.lstsq(gram, xty, rcond=None)[0]
    )
