"""Defaults that converge on real data: feature scaling, automatic rho, early divergence
stops, stall reports and gaps that mean something when F* ~ 0."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from clients.experiment.client_app import app
from flower_qgadmm.algorithms import GadmmSettings
from flower_qgadmm.algorithms.gadmm import Gadmm, auto_rho, graph_factor
from flower_qgadmm.conditioning import FeatureTransform, global_transform
from flower_qgadmm.config import RunConfig
from flower_qgadmm.data import experiment_datasets, split_rows
from flower_qgadmm.flower import RelayStrategy
from flower_qgadmm.history import format_summary, read_history, summarize
from flower_qgadmm.metrics import (
    STALL_CAUSES,
    STALL_FLOOR,
    Watchdog,
    _converged,
    _envelope_stalled,
    stall_of,
)
from flower_qgadmm.reference import least_squares_solvers, make_engine, run_from_config
from flower_qgadmm.simulate import main
from flower_qgadmm.solvers import LeastSquaresSolver
from flower_qgadmm.testing import FakeGrid
from flower_qgadmm.topology import chain


def badly_scaled(rows: int = 240, dim: int = 8, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Columns with RMS from 1e-3 to 1e3 (and non-zero means), y = X theta + noise."""
    rng = np.random.default_rng(seed)
    scales = np.logspace(-3, 3, dim)
    X = (rng.standard_normal((rows, dim)) + 0.5) * scales
    y = X @ (rng.standard_normal(dim) / scales) + 0.1 * rng.standard_normal(rows)
    return X, y


def write_csv(path, X, y) -> str:
    header = ",".join([*(f"x{i}" for i in range(X.shape[1])), "y"])
    np.savetxt(path, np.column_stack([X, y]), delimiter=",", header=header, comments="")
    return str(path)


# ---------------------------------------------------------------- feature scaling
def test_scaled_solver_keeps_the_loss_and_speaks_original_units() -> None:
    X, y = badly_scaled()
    plain, scaled = LeastSquaresSolver(X, y, l2=0.5), LeastSquaresSolver(X, y, l2=0.5)
    s = np.sqrt(np.mean(X**2, axis=0))
    scaled.set_scale(s)
    theta = np.random.default_rng(0).standard_normal(X.shape[1])
    assert scaled.objective(theta * s) == pytest.approx(plain.objective(theta), rel=1e-12)
    np.testing.assert_allclose(scaled.to_arrays(theta * s)["theta"], theta, rtol=1e-15)
    scaled.set_initial({"theta": theta})
    np.testing.assert_allclose(scaled.initial(), theta * s, rtol=1e-15)
    moments = scaled.moments()
    assert moments["count"][0] == X.shape[0]
    np.testing.assert_allclose(moments["squares"], np.sum(X**2, axis=0))
    scaled.set_scale(None)  # back to original coordinates
    assert scaled.objective(theta) == plain.objective(theta)


def test_scaled_run_reaches_numpy_lstsq_on_the_unscaled_data() -> None:
    X, y = badly_scaled()
    engine = make_engine("gadmm", least_squares_solvers(split_rows(X, y, 6)))
    engine.run(400)
    theta_star = np.linalg.lstsq(X, y, rcond=None)[0]
    # the optimum (and every model) are reported in the user's units
    np.testing.assert_allclose(engine.optimum.theta, theta_star, rtol=1e-8)
    for model in engine.models().values():
        np.testing.assert_allclose(model, theta_star, rtol=1e-6)
    assert engine.optimum.value == pytest.approx(0.5 * np.sum((X @ theta_star - y) ** 2), rel=1e-9)
    assert engine.scale is not None and engine.history[-1]["objective_gap"] < 1e-9
    # F is the user's loss: the first row's objective equals sum_n f_n of the pulled models
    unscaled = make_engine(
        "gadmm",
        least_squares_solvers(split_rows(X, y, 6)),
        settings=GadmmSettings(scale_features=False, rho=engine.settings.rho),
    )
    unscaled.start()
    assert unscaled.optimum.value == pytest.approx(engine.optimum.value, rel=1e-9)


def test_scaling_can_be_switched_off() -> None:
    X, y = badly_scaled()
    off = make_engine(
        "gadmm",
        least_squares_solvers(split_rows(X, y, 4)),
        settings=GadmmSettings(rho=3.0, scale_features=False),
    )
    off.start()
    assert off.scale is None
    assert RunConfig.of(scale_features=False).scale_features is False


def test_flower_path_with_scaling_and_automatic_rho_equals_reference(tmp_path) -> None:
    X, y = badly_scaled(rows=60, dim=5)
    csv = write_csv(tmp_path / "data.csv", X, y)
    cfg = RunConfig.of(data_csv=csv, data_target="y", num_workers=5, num_iterations=15)
    assert cfg.rho == 0 and cfg.scale_features  # the defaults
    rc = cfg.to_run_config()
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0)
    strategy.start(FakeGrid(app, 5, rc), num_rounds=cfg.num_iterations, timeout=5.0)
    expected = run_from_config(cfg, least_squares_solvers(experiment_datasets(cfg))).history
    assert len(strategy.history) == len(expected)
    for got, want in zip(strategy.history, expected, strict=True):
        assert {k: got[k] for k in want} == want
    assert strategy.settings.rho > 0 and strategy.settings.dual_step == 1.0


def test_resume_with_scaling_continues_exactly(tmp_path) -> None:
    X, y = badly_scaled(rows=60, dim=5)
    data = split_rows(X, y, 4)
    full = make_engine("q-gadmm", least_squares_solvers(data)).run(12)
    first = make_engine(
        "q-gadmm", least_squares_solvers(data), checkpoint_dir=tmp_path, checkpoint_every=5
    )
    first.run(7)
    again = make_engine("q-gadmm", least_squares_solvers(data))
    assert again.run(12, resume=tmp_path) == full


def correlated(rows: int = 300, dim: int = 6, seed: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Nearly collinear columns at scales 1e-2..1e2: condition ~1e6 after RMS scaling."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((rows, 1)) + 1.0
    X = (base + 1e-3 * rng.standard_normal((rows, dim))) * np.logspace(-2, 2, dim)
    y = X @ rng.standard_normal(dim) + 0.01 * rng.standard_normal(rows)
    return X, y


def test_whitening_transform_makes_the_global_hessian_the_identity() -> None:
    X, y = correlated()
    data = split_rows(X, y, 5)
    solvers = least_squares_solvers(data)
    moments = [s.moments() for s in solvers]
    transform, note = global_transform(moments, [s.gram for s in solvers], whiten=True)
    assert transform.shape == (6, 6) and note.startswith("whitened")
    assert not np.any(np.tril(transform, -1))
    # independent: T^T T is the global second moment matrix, so X T^{-1} has H = m I
    np.testing.assert_allclose(transform.T @ transform, X.T @ X / len(X), rtol=1e-9)
    Z = X @ np.linalg.inv(transform)
    np.testing.assert_allclose(Z.T @ Z, len(X) * np.eye(6), atol=1e-6 * len(X))
    # the solver's internal statistics and units agree with explicit inverses
    solver = LeastSquaresSolver(X, y, l2=0.3)
    solver.set_scale(transform)
    inv = np.linalg.inv(transform)
    np.testing.assert_allclose(solver.gradient(np.zeros(6)), -inv.T @ (X.T @ y), rtol=1e-8)
    theta = np.random.default_rng(1).standard_normal(6)
    u = transform @ theta
    plain = LeastSquaresSolver(X, y, l2=0.3)
    assert solver.objective(u) == pytest.approx(plain.objective(theta), rel=1e-9)
    np.testing.assert_allclose(solver.to_arrays(u)["theta"], theta, rtol=1e-8)
    solver.set_initial({"theta": theta})
    np.testing.assert_allclose(solver.initial(), u, rtol=1e-12)
    # a flattened matrix (how the Flower set-up record carries it) is the same transform
    flat = LeastSquaresSolver(X, y, l2=0.3)
    flat.set_scale(transform.ravel())
    assert flat.objective(u) == solver.objective(u)


def test_whitening_falls_back_to_the_column_rms_when_it_cannot_be_accurate() -> None:
    X, y = correlated()
    X = np.column_stack([X, 2.0 * X[:, 0]])  # an exactly collinear column
    solvers = least_squares_solvers(split_rows(X, y, 3))
    moments = [s.moments() for s in solvers]
    transform, note = global_transform(moments, [s.gram for s in solvers], whiten=True)
    assert transform.shape == (7,) and "condition number" in note
    np.testing.assert_allclose(transform, np.sqrt(np.mean(X**2, axis=0)), rtol=1e-12)
    transform, note = global_transform(moments, [s.gram for s in solvers], whiten=False)
    assert transform.shape == (7,) and note == "column RMS"
    with pytest.raises(ValueError, match="upper triangular"):
        FeatureTransform(np.ones((7, 7)), 7)


def test_the_transform_gives_the_same_floats_whatever_the_blas_thread_count() -> None:
    # Prepare: a 50 x 50 whitening transform and a worker's 50 x 50 data; OpenBLAS's
    # blocked triangular solves round differently on 1 and 2 threads (measured: both
    # X T^{-1} and T^{-T} G T^{-1} differed, so run histories did)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 50)) * np.logspace(-2, 2, 50)
    transform = FeatureTransform(np.linalg.cholesky(X.T @ X / 50).T, 50)
    local = rng.standard_normal((50, 50))
    results = []
    for threads in (1, 2):
        # Execute
        with threadpool_limits(limits=threads, user_api="blas"):
            gram, xty = transform.statistics(local.T @ local, local.T @ np.ones(50))
            results.append((transform.features(local), gram, xty))
    # Assert: bit for bit
    for one, two in zip(*results, strict=True):
        assert one.tobytes() == two.tobytes()


@pytest.mark.parametrize("dim", [1, 2, 20])
def test_the_transform_solves_as_scipy_solve_triangular_does(dim) -> None:
    """FeatureTransform calls LAPACK's trtrs itself (no per-call validation): the floats
    of scipy's solve_triangular on one BLAS thread, for a transform given in C or F
    order; non-finite input gets scipy's error; the BLAS limit nests (one limit for a
    block of many calls) and is lifted after the outer block."""
    from scipy.linalg import solve_triangular

    from flower_qgadmm.conditioning import _blas, single_blas_thread

    rng = np.random.default_rng(dim)
    upper = np.triu(rng.standard_normal((dim, dim)), 1) + np.diag(rng.uniform(0.5, 2, dim))
    X = rng.standard_normal((40, dim)) * np.logspace(-1, 1, dim)
    y, u = rng.standard_normal(40), rng.standard_normal(dim)
    for given in (upper, np.asfortranarray(upper)):
        transform = FeatureTransform(given, dim)
        t = transform.array
        with threadpool_limits(limits=1, user_api="blas"):
            left = solve_triangular(t, X.T @ X, trans="T")
            inner = solve_triangular(t, left.T, trans="T").T
            expected = (
                solve_triangular(t, X.T, trans="T").T,
                0.5 * (inner + inner.T),
                solve_triangular(t, X.T @ y, trans="T"),
                solve_triangular(t, u),
            )
        got = (transform.features(X), *transform.statistics(X.T @ X, X.T @ y))
        for one, two in zip((*got, transform.to_original(u)), expected, strict=True):
            assert one.tobytes() == two.tobytes()
    bad = X.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="must not contain infs or NaNs"):
        transform.features(bad)
    threads = [i["num_threads"] for i in _blas().info() if i["user_api"] == "blas"]
    with single_blas_thread():
        with single_blas_thread():
            assert all(i["num_threads"] == 1 for i in _blas().info() if i["user_api"] == "blas")
        assert all(i["num_threads"] == 1 for i in _blas().info() if i["user_api"] == "blas")
    assert [i["num_threads"] for i in _blas().info() if i["user_api"] == "blas"] == threads


def test_whitened_defaults_reach_the_optimum_of_ill_conditioned_data_fast() -> None:
    """The breast-cancer failure mode (condition ~1e6 after RMS scaling): RMS scaling
    alone stalls far from the optimum, whitening converges in few iterations, and both
    report the same optimum in the user's units (numpy lstsq)."""
    X, y = correlated()
    theta_star = np.linalg.lstsq(X, y, rcond=None)[0]
    runs = {}
    for whiten in (True, False):
        engine = make_engine(
            "gadmm",
            least_squares_solvers(split_rows(X, y, 10)),
            settings=GadmmSettings(whiten_features=whiten),
        )
        runs[whiten] = engine.run(300)
        np.testing.assert_allclose(engine.optimum.theta, theta_star, rtol=1e-6)
    whitened = [r["objective_gap"] for r in runs[True]]
    assert engine.scale.shape == (6,)  # the last engine: RMS only
    assert whitened[-1] < 1e-10
    assert min(whitened) < 1e-4 and runs[False][-1]["objective_gap"] > 1e2 * whitened[-1]


# ---------------------------------------------------------------- automatic rho
def test_automatic_rho_follows_the_spectrum_and_the_chain_length() -> None:
    gram = np.diag([1.0, 4.0, 16.0])  # geometric mean 4
    reports = [{"statistics": (gram, np.zeros(3))}] * 10
    assert graph_factor(chain(10), 10) == pytest.approx(graph_factor(None, 10))
    assert auto_rho(reports, chain(10)) == pytest.approx(2 * 4 / graph_factor(chain(10), 10))
    # a chain 10 times longer needs ~10 times the penalty (sqrt(sigma_2 sigma_max) ~ 2 pi / N)
    long = auto_rho(reports * 10, chain(100)) / auto_rho(reports, chain(10))
    assert 9 < long < 11
    # stochastic solvers (no statistics): rho 1, damped dual step
    resolved = GadmmSettings.__mro__[0]  # noqa: F841 - readability
    from flower_qgadmm.algorithms import Gadmm

    s = Gadmm.resolve(GadmmSettings(), [{"dim": 3}], None)
    assert (s.rho, s.dual_step) == (1.0, 0.01)
    s = Gadmm.resolve(GadmmSettings(rho=7.0, dual_step=0.5), reports, None)
    assert (s.rho, s.dual_step) == (7.0, 0.5)  # fixed values stay


def test_unresolved_settings_cannot_build_a_worker() -> None:
    from flower_qgadmm.algorithms import Gadmm
    from flower_qgadmm.algorithms.base import Wiring

    X, y = badly_scaled(rows=10, dim=3)
    with pytest.raises(ValueError, match="resolve the settings first"):
        Gadmm(0, Wiring((1,)), LeastSquaresSolver(X, y), GadmmSettings(), 0)


# ---------------------------------------------------------------- divergence and stalls
@pytest.mark.parametrize(
    "args, cause",
    [
        (["--dim", "50", "--rho", "30", "--bits", "2"], "too few bits"),
        (["--bits", "1", "--rho", "1e4"], "too few bits"),
    ],
)
def test_diverging_cli_runs_stop_early_with_history_plot_and_advice(
    tmp_path, capsys, args, cause
) -> None:
    out = tmp_path / "h.jsonl"
    code = main([*args, "--out", str(out), "--iterations", "300"])
    err = capsys.readouterr().err
    assert code == 2
    assert "diverged at iteration" in err and cause in err and "rho = 0 picks it" in err
    rows = read_history(out)
    assert 10 < len(rows) < 300  # stopped early, history written
    assert out.with_suffix(".png").exists()


def test_watchdog_growth_is_relative_to_the_first_iterations() -> None:
    dog = Watchdog(growth=100.0, early=3)
    for k, f in enumerate([5.0, 2.0, 1.0, 50.0, 400.0], start=1):
        dog.check({"iteration": k, "objective": f})  # below 100 x 5
    with pytest.raises(FloatingPointError, match="iteration 6.*grew to 600"):
        dog.check({"iteration": 6, "objective": 600.0}, advice="x")
    with pytest.raises(FloatingPointError, match="objective is nan"):
        Watchdog().check({"iteration": 1, "objective": float("nan")})


def stalled_rows(n: int = 800, stop: int = 100) -> list[dict]:
    rows = []
    for k in range(1, n + 1):
        gap = 0.5 ** min(k, stop) * 1e2
        rows.append({"iteration": k, "objective": 1.0 + gap, "objective_gap": gap, "bits": k})
    return rows


def test_a_stall_is_a_warning_and_in_the_summary_not_an_error(caplog) -> None:
    rows = stalled_rows()
    assert stall_of(rows) is None  # 0.5^100 * 100 is below the round-off floor
    rows = stalled_rows(stop=20)
    since, level = stall_of(rows)  # the last 600 iterations (201..800) are flat
    assert since == 201 and level == pytest.approx(100 * 0.5**20)
    line = format_summary("q-gadmm", rows, 1e-9)
    assert "stalled: no progress since iteration 201" in line
    # a gap that dips through zero (F crossing F*) and comes back is not progress, and a
    # gap whose envelope keeps shrinking is not a stall
    dips = [dict(r, objective_gap=1e-3 * (1e-4 if k % 50 == 0 else 1)) for k, r in enumerate(rows)]
    assert stall_of(dips) is not None
    slow = [dict(r, objective_gap=0.99 ** r["iteration"]) for r in rows]
    assert stall_of(slow) is None
    dog = Watchdog()
    messages = [m for r in rows if (m := dog.check(r))]
    assert len(messages) == 1 and "stalls" in messages[0]


def drifting_rows(edge_growth: float, n: int = 400) -> list[dict]:
    """The objective falls to 1 at iteration 200 and climbs back to 4; the workers'
    edge disagreement is multiplied by ``edge_growth`` over the climb."""
    rows = []
    for k in range(1, n + 1):
        t = max(0.0, (k - 200) / (n - 200))
        objective = 1.0 + 9.0 * max(0.0, 1 - k / 200) + 3.0 * t
        edge = 0.5 * edge_growth**t
        rows.append({"iteration": k, "objective": objective, "edge_disagreement": edge})
    return rows


def test_workers_drifting_apart_are_warned_of_once_with_the_algorithms_advice() -> None:
    dog = Watchdog()
    messages = [m for r in drifting_rows(5.0) if (m := dog.check(r, drift="lower gamma"))]
    assert len(messages) == 1
    assert messages[0].startswith("the workers drift apart: the objective rose to 3.0")
    assert (
        "times its lowest (1 at iteration 200), while their disagreement grew from 0.5"
        in (messages[0])
    )
    assert messages[0].endswith("the run goes on (likely cause: lower gamma)")
    # the run's summary line says so too, from the same rule
    rows = [dict(r, bits=r["iteration"], train_loss=r["objective"]) for r in drifting_rows(5.0)]
    first = next(r["iteration"] for r in rows if Watchdog().drift_of(rows[: r["iteration"]]))
    assert Watchdog().drift_of(rows)[0] == first > 200
    assert format_summary("malcom-psgd", rows, 1e-6).endswith(
        f"400 bits; the workers drift apart from round {first}"
    )
    # the objective rising while the workers come to agree (GADMM on non-IID data: each
    # first fits its own) is not a drift, nor the disagreement growing alone
    assert not any(Watchdog().check(r) for r in drifting_rows(0.2))
    flat = [
        dict(r, objective=1.0 + 9.0 * max(0.0, 1 - r["iteration"] / 200))
        for r in drifting_rows(50.0)
    ]
    assert not any(Watchdog().check(r) for r in flat)
    # rows without the disagreement (linear regression's GADMM rows carry it too, the
    # FedAvg baseline's not) are not watched for it
    bare = [{k: v for k, v in r.items() if k != "edge_disagreement"} for r in drifting_rows(5.0)]
    assert not any(Watchdog().check(r) for r in bare)


@pytest.mark.slow
def test_malcom_drifts_at_consensus_step_0_1_on_the_digits_mlp_and_not_at_its_default(
    tmp_path, caplog
) -> None:
    """Measured (docs/experiments/malcom-rate.md): s = 1 at consensus-step 0.1 on the
    digits MLP drifts apart after about 300 rounds; the watchdog says so, with Malcom's
    advice. The automatic step (2 / tau = 0.0284 here) keeps the workers together."""
    args = ["--algorithm", "malcom-psgd", "--task", "digits", "--log-every", "1000"]
    with caplog.at_level(logging.WARNING):
        code = main([*args, "--consensus-step", "0.1", "--out", str(tmp_path / "a.json")])
    assert code == 0
    messages = [r.message for r in caplog.records]
    (drift,) = [m for m in messages if m.startswith("the workers drift apart:")]
    assert "a consensus-step too large for the compressor" in drift
    # and the set-up said so before the run: gamma tau = 0.1 * 70.4
    (risk,) = [m for m in messages if m.startswith("consensus-step 0.1 with a compressor")]
    assert "gamma tau = 7.04 > 3" in risk and "(consensus-step = 0) is 0.0284" in risk
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = main([*args, "--out", str(tmp_path / "b.json")])
    assert code == 0
    assert not [r.message for r in caplog.records if r.levelno >= logging.WARNING]
    (resolved,) = [r.message for r in caplog.records if "automatic settings" in r.message]
    assert "consensus_step=0.02842" in resolved  # 2 / (1 + sqrt(4810))
    last = json.loads((tmp_path / "b.json").read_text().splitlines()[-1])
    assert last["accuracy"] > 0.9 and last["mean_model_accuracy"] > 0.9


def test_the_stall_warning_names_the_algorithms_causes() -> None:
    # Prepare: D-PSGD with its constant automatic step on the default problem levels off
    # at the step's bias (relative gap ~0.13) after ~50 iterations
    data = experiment_datasets(RunConfig.from_run_config({"algorithm": "d-psgd"}))
    engine = make_engine("d-psgd", least_squares_solvers(data))
    # Execute
    engine.run(660)
    # Assert: gossip's causes, not GADMM's rho
    assert engine.stall is not None and "the run stalls" in engine.stall
    assert "bias of a constant step size" in engine.stall and "rho" not in engine.stall
    assert "rho far from its best" in Gadmm.stall_causes


# ---------------------------------------------------------------- metrics
def test_tiny_optimum_summary_uses_the_absolute_gap() -> None:
    rows = [
        {
            "iteration": k,
            "objective": 1e-3 / k**4,
            "objective_gap": 1e-3 / k**4 / 1e-20,
            "objective_error": 1e-3 / k**4,
            "optimum_value": 1e-20,
            "bits": 10 * k,
        }
        for k in range(1, 60)
    ]
    s = summarize(rows, 1e-9)
    assert s["gap_key"] == "objective_error" and s["reached_iteration"] == 32
    assert "F* = 1.000e-20 is ~0, so the summary uses the absolute gap" in format_summary(
        "gadmm", rows, 1e-9
    )


def test_rows_carry_absolute_gap_and_distance() -> None:
    X, y = badly_scaled(rows=40, dim=4)
    engine = make_engine("gadmm", least_squares_solvers(split_rows(X, y, 4)))
    row = engine.run(3)[-1]
    assert row["objective_error"] == pytest.approx(abs(row["objective"] - row["optimum_value"]))
    assert row["optimum_error"] > 0 and "optimum_distance" in row
    line = format_summary("gadmm", engine.history, 1e-6)
    assert "|F - F*|" in line and "||theta - theta*||" in line


def test_default_quantized_run_warns_nothing_on_the_default_problem(caplog) -> None:
    cfg = RunConfig.of(num_iterations=100)
    with caplog.at_level(logging.WARNING):
        rows = run_from_config(cfg, least_squares_solvers(experiment_datasets(cfg))).history
    assert rows[-1]["objective_gap"] < 1e-7 and "grew" not in caplog.text


# ---------------------------------------------------------------- choosing columns
def test_features_and_drop_choose_csv_columns(tmp_path) -> None:
    from flower_qgadmm.data import read_csv

    X, y = badly_scaled(rows=30, dim=4)
    X = np.column_stack([X, np.ones(30), 2 * np.ones(30)])  # two constant columns
    path = write_csv(tmp_path / "d.csv", X, y)
    with pytest.raises(ValueError, match="constant column"):
        read_csv(path, "y")
    Xd, yd = read_csv(path, "y", drop="x5")  # one constant column (an intercept) is fine
    np.testing.assert_array_equal(Xd, X[:, :5])
    np.testing.assert_array_equal(yd, y)
    Xf, _ = read_csv(path, "y", features="x2, x0", drop=["x0"])
    np.testing.assert_array_equal(Xf, X[:, [2]])
    for kwargs, message in (
        ({"features": "x9"}, r"features names unknown column\(s\) \['x9'\]; columns"),
        ({"features": "y"}, "target 'y' cannot also be a feature"),
        ({"drop": "x0,x0"}, r"drop names column\(s\) \['x0'\] twice"),
        ({"features": "x1", "drop": "x1"}, "no feature column left"),
    ):
        with pytest.raises(ValueError, match=message):
            read_csv(path, "y", **kwargs)


def test_cli_features_and_drop(tmp_path, capsys) -> None:
    X, y = badly_scaled(rows=40, dim=4)
    path = write_csv(tmp_path / "d.csv", X, y)
    out = tmp_path / "h.jsonl"
    args = ["--csv", path, "--target", "y", "--workers", "4", "--iterations", "5"]
    assert main([*args, "--features", "x0,x1,x2", "--drop", "x1", "--out", str(out)]) == 0
    cfg = RunConfig.of(data_csv=path, data_target="y", data_drop="x3", num_workers=4)
    assert experiment_datasets(cfg)[0][0].shape[1] == 3
    with pytest.raises(ValueError, match="data-features / data-drop choose columns"):
        RunConfig.of(data_drop="x3")


# ---------------------------------------------------------------- quantization
def test_adaptive_width_stays_near_the_configured_width_and_saves_bits() -> None:
    from flower_qgadmm.data import load_dataset
    from flower_qgadmm.reference import run_reference

    data = load_dataset(10, 50, 20, 0.1, seed=0)
    fixed = run_reference("q-gadmm", least_squares_solvers(data), 200)
    adaptive = run_reference(
        "q-gadmm",
        least_squares_solvers(data),
        200,
        GadmmSettings(bits=2, adaptive_bits=True, omega=0.9),
    )
    g = summarize(run_reference("gadmm", least_squares_solvers(data), 200).history, 1e-6)
    a, f = summarize(adaptive.history, 1e-6), summarize(fixed.history, 1e-6)
    assert a["reached_iteration"] is not None and f["reached_iteration"] is not None
    # 2-bit with the adaptive width converges at the automatic rho (fixed 2-bit does not)
    # and its last messages are ~3 bits wide, not the cap of 8
    rows = adaptive.history
    per_message = (rows[-1]["nominal_bits"] - rows[-51]["nominal_bits"]) / (50 * 10)
    assert (per_message - 32) / 20 < 4.5
    assert a["reached_bits"] <= 0.25 * g["reached_bits"]
    assert f["reached_bits"] <= 0.25 * g["reached_bits"]


def test_a_fixed_width_too_small_for_rho_is_warned_at_set_up(caplog) -> None:
    from flower_qgadmm.data import load_dataset

    data = load_dataset(10, 50, 20, 0.1, seed=0)
    with caplog.at_level(logging.WARNING):
        make_engine("q-gadmm", least_squares_solvers(data), settings=GadmmSettings(bits=2)).start()
    assert "2-bit Q-GADMM may diverge at rho=" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        make_engine("q-gadmm", least_squares_solvers(data)).start()  # 3 bits: no warning
        make_engine("gadmm", least_squares_solvers(data), settings=GadmmSettings(bits=1)).start()
    assert "may diverge" not in caplog.text and "1-bit" not in caplog.text


def test_cli_on_an_exact_fit_reports_the_absolute_gap(tmp_path, capsys) -> None:
    rng = np.random.default_rng(3)
    X = rng.standard_normal((60, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 3.0])  # F* ~ 1e-28: relative gaps are noise
    path = write_csv(tmp_path / "exact.csv", X, y)
    out = tmp_path / "h.jsonl"
    args = ["--csv", path, "--target", "y", "--workers", "4", "--iterations", "400"]
    assert main([*args, "--out", str(out)]) == 0  # > 200 flat iterations: not a stall
    text = capsys.readouterr().out
    assert "is ~0, so the summary uses the absolute gap" in text
    assert "absolute gap < 1e-06 from iteration" in text and "stall" not in text
    assert read_history(out)[-1]["objective_error"] < 1e-12


def test_the_summary_and_the_live_watchdog_agree_on_a_stall() -> None:
    # Prepare: F jumps early (1 -> 1e6) and then sits at F* + 1e-8: round-off of the
    # early level, hence converged for both the live watchdog and the summary
    optimum, rows = 1e-3, []
    for k in range(1, 801):
        f = 1.0 if k == 1 else (1e6 if k <= 10 else optimum + 1e-8)
        gap = abs(f - optimum)
        rows.append(
            {
                "iteration": k,
                "objective": f,
                "objective_gap": gap / optimum,
                "objective_error": gap,
                "optimum_value": optimum,
            }
        )
    dog = Watchdog()
    # Execute
    warnings = [m for r in rows if (m := dog.check(r, optimum))]
    # Assert
    assert warnings == [] and stall_of(rows) is None


def test_the_feature_scale_counts_the_ridge() -> None:
    # Prepare: column scales from 1e-6 to 1e6 and a ridge l2 = 0.7: in scaled coordinates a
    # tiny column's curvature is l2 / s_j^2 unless the scale counts the ridge
    from flower_qgadmm.algorithms import GadmmSettings
    from flower_qgadmm.reference import least_squares_solvers, make_engine

    rng = np.random.default_rng(0)
    X = rng.standard_normal((80, 5)) * np.array([1e-6, 1, 1e6, 1e3, 1e-3])
    y = X @ rng.standard_normal(5) + 0.1 * rng.standard_normal(80)
    data = [(X[i::4], y[i::4]) for i in range(4)]
    for whiten in (False, True):
        engine = make_engine(
            "gadmm",
            least_squares_solvers(data, l2=0.7),
            settings=GadmmSettings(whiten_features=whiten),
        )
        # Execute
        rows = engine.run(100)
        # Assert: it converges (it stalled at a gap of 1.8 before; whitening was refused)
        assert rows[-1]["objective_gap"] < 1e-8
        assert ("whitened" in engine.conditioning) == whiten
    # an all-zero column is a well-posed problem with a ridge: scaled, not refused
    zero = [(np.column_stack([x, np.zeros(len(x))]), t) for x, t in data]
    engine = make_engine("gadmm", least_squares_solvers(zero, l2=0.7))
    assert engine.run(100)[-1]["objective_gap"] < 1e-8


class ListWatchdog(Watchdog):
    """The stall rule as it was before the halves' maxima were kept incrementally: the
    last ``window`` gaps in a list, both halves' max() at every row (the reference)."""

    def check(self, row, optimum=None, advice="", causes=STALL_CAUSES):
        k, f = int(row["iteration"]), float(row["objective"])
        if not math.isfinite(f):
            raise FloatingPointError(f"diverged at {k}")
        if self.seen < self.early:
            self.seen += 1
            self.level = max(self.level, abs(f), abs(optimum or 0.0))
        gap = row.get("objective_gap")
        if gap is None or self.stalled or not math.isfinite(gap):
            return None
        self.list_gaps = [*getattr(self, "list_gaps", [])[-(self.window - 1) :], float(gap)]
        if len(self.list_gaps) < self.window or _converged(row, self.level):
            return None
        if _envelope_stalled(self.list_gaps, STALL_FLOOR):
            self.stalled = True
            return f"{k - self.window + 1}..{k} {max(self.list_gaps[self.window // 2 :]):.3e}"
        return None


def test_the_watchdogs_stall_rule_is_the_list_rule() -> None:
    rng = np.random.default_rng(7)
    stalls = 0
    for trial in range(150):
        window = (
            int(rng.choice([2, 3, 4, 5, 7, 10, 31, 600])) if trial % 5 else int(rng.integers(2, 60))
        )
        early = int(rng.integers(1, 12))
        dog, ref = Watchdog(window=window, early=early), ListWatchdog(window=window, early=early)
        for k in range(1, int(rng.integers(1, 3 * window + 50)) + 1):
            mode = trial % 4
            if mode == 0:
                gap = float(rng.random())
            elif mode == 1:
                gap = 0.5 ** min(k, 20)
            elif mode == 2:
                gap = float(rng.choice([0.0, 1e-3, 1e-3, 2e-3, 1e-12]))
            else:
                gap = 0.99**k * (1 + 0.5 * float(rng.random()))
            row = {"iteration": k, "objective": 1.0 + gap, "objective_gap": gap}
            if k % 17 == 0:
                row["objective_gap"] = None
            if mode == 2 and k % 7 == 0:
                row["objective_error"] = 1e-20
            got, want = dog.check(row, 1.0), ref.check(row, 1.0)
            assert (got is None) == (want is None), (trial, k)
            if got is not None:
                stalls += 1
                assert f"iterations {want.split()[0]} " in got and want.split()[1] in got
            assert list(dog.gaps) == ref.list_gaps[-window:]
    assert stalls > 50


def test_a_q_gadmm_drift_warning_advises_bits_or_rho_not_a_step_size(
    tmp_path, capsys, caplog
) -> None:
    """1-bit Q-GADMM at rho = 1e4 (the divergence example of docs/defaults.md) drifts apart
    at iteration 13 before it diverges; the warning's advice names what Q-GADMM has (bits,
    rho), not the gossip algorithms' "step size" it has none of."""
    from flower_qgadmm.simulate import main

    with caplog.at_level(logging.WARNING):
        code = main(["--bits", "1", "--rho", "1e4", "--out", str(tmp_path / "h.jsonl")])
    printed = capsys.readouterr()
    assert code == 2 and "diverged at iteration 13" in printed.err
    (drift,) = [m for m in caplog.messages if "the workers drift apart" in m]
    assert "step size" not in drift and "too few bits for this rho" in drift


def test_a_target_without_a_csv_is_refused(capsys) -> None:
    """``--target price`` without ``--csv`` (forgot the file) used to run on the synthetic
    data without a word; it is refused like ``--features`` without a CSV."""
    from flower_qgadmm.simulate import main

    with pytest.raises(ValueError, match="data-target names a column of data-csv"):
        RunConfig.of(data_target="price")
    assert main(["--target", "price", "--workers", "2", "--iterations", "2"]) == 2
    assert "data-target names a column of data-csv, which is empty" in capsys.readouterr().err


# ---------------------------------------------------------------- large set-ups
def _dense_graph_factor(n: int, edges: list[tuple[int, int]]) -> float:
    """sqrt(sigma_2 sigma_max) of the Laplacian, from its whole spectrum (written here)."""
    lap = np.zeros((n, n))
    for a, b in edges:
        lap[a, b] = lap[b, a] = -1.0
    lap[np.diag_indices(n)] = -lap.sum(axis=1)
    sigma = np.linalg.eigvalsh(lap)
    return math.sqrt(sigma[1] * sigma[-1])


def test_sparse_graph_factor_matches_the_whole_spectrum() -> None:
    """Above DENSE_LAPLACIAN_MAX workers the graph factor comes from the sparse Laplacian
    (no N x N matrix: a chain of 100,000 workers, whose dense spectrum needs 80 GB);
    within 1e-5 of the dense value on a chain, an even ring and a grid, and the chain's
    closed form sigma_k = 2 - 2 cos(k pi / N)."""
    from flower_qgadmm.algorithms.gadmm import DENSE_LAPLACIAN_MAX, _sparse_graph_factor

    n = 1200
    chain_edges = [(i, i + 1) for i in range(n - 1)]
    ring_edges = [*chain_edges, (n - 1, 0)]
    side = 30  # a 30 x 30 grid
    grid_edges = [(r * side + c, r * side + c + 1) for r in range(side) for c in range(side - 1)]
    grid_edges += [(r * side + c, (r + 1) * side + c) for r in range(side - 1) for c in range(side)]
    for nodes, edges in ((n, chain_edges), (n, ring_edges), (side * side, grid_edges)):
        exact = _dense_graph_factor(nodes, edges)
        assert _sparse_graph_factor(nodes, edges) == pytest.approx(exact, rel=1e-5)
    closed = math.sqrt((2 - 2 * math.cos(math.pi / n)) * (2 - 2 * math.cos(math.pi * (n - 1) / n)))
    assert n > DENSE_LAPLACIAN_MAX
    assert graph_factor(chain(n), n) == pytest.approx(closed, rel=1e-5)
    assert graph_factor(None, n) == pytest.approx(closed, rel=1e-5)
    # the same result every time (a fixed start vector)
    assert graph_factor(None, n) == graph_factor(None, n)
    # not connected: no spectral gap, factor 1 (as the dense path)
    assert _sparse_graph_factor(4, [(0, 1), (2, 3)]) == 1.0


def test_largest_eigenvalue_is_exact_up_to_512_and_lanczos_above() -> None:
    from flower_qgadmm.numeric import EXACT_SPECTRUM_DIM, largest_eigenvalue

    rng = np.random.default_rng(3)
    for d in (0, 1, 7, EXACT_SPECTRUM_DIM, EXACT_SPECTRUM_DIM + 1, 900):
        X = rng.standard_normal((40, d)) + 2.0  # uncentred: one large eigenvalue
        gram = X.T @ X + 0.1 * np.eye(d)
        whole = float(np.linalg.eigvalsh(gram)[-1]) if d else 0.0
        top = largest_eigenvalue(gram)
        if d <= EXACT_SPECTRUM_DIM:
            assert top == whole  # the same floats as before: histories unchanged
        else:
            assert top == pytest.approx(whole, rel=1e-12)
            assert largest_eigenvalue(gram) == top  # reproducible
    # NaN takes the exact path (ARPACK is not given it): whatever LAPACK says, as before
    bad = np.eye(EXACT_SPECTRUM_DIM + 1)
    bad[0, 0] = np.nan
    assert largest_eigenvalue(bad) == float(np.linalg.eigvalsh(bad)[-1])


def count_curvature_eigvalsh(monkeypatch, dim: int) -> list:
    """The matrices gadmm.py gives np.linalg.eigvalsh of shape dim x dim (the mean Gram
    of the curvature), from now on in this test."""
    import sys

    from flower_qgadmm.algorithms import gadmm

    calls = []
    eigvalsh = np.linalg.eigvalsh

    def counting(a, *args, **kwargs):
        if sys._getframe(1).f_code.co_filename == gadmm.__file__ and np.shape(a) == (dim, dim):
            calls.append(a)
        return eigvalsh(a, *args, **kwargs)

    monkeypatch.setattr(np.linalg, "eigvalsh", counting)
    return calls


def test_two_bit_set_up_computes_the_curvature_once(monkeypatch, caplog) -> None:
    # auto_rho (through resolve) and setup_warnings of 2-bit Q-GADMM each took an
    # eigvalsh of the d x d mean Gram matrix of the same statistics: seconds at d = 3,000
    from flower_qgadmm.algorithms import gadmm
    from flower_qgadmm.data import load_dataset

    calls = count_curvature_eigvalsh(monkeypatch, 20)
    data = load_dataset(10, 50, 20, 0.1, seed=0)
    engine = make_engine("q-gadmm", least_squares_solvers(data), settings=GadmmSettings(bits=2))
    with caplog.at_level(logging.WARNING):
        engine.start()
    assert "2-bit Q-GADMM may diverge at rho=" in caplog.text
    assert len(calls) == 1
    # the same numbers as computed afresh: new Reports (computed once more, then kept on
    # them), and a plain list of copies (other arrays, equal values: computed every call)
    reports = engine._resolve_reports()
    level = gadmm._geomean_curvature(reports)
    assert auto_rho(reports, engine.graph) == engine.settings.rho
    assert len(calls) == 2
    copies = [{"statistics": tuple(np.array(a) for a in r["statistics"])} for r in reports]
    assert gadmm._geomean_curvature(copies) == level
    assert auto_rho(copies, engine.graph) == engine.settings.rho
    assert len(calls) == 4
    doubled = [{"statistics": (2 * r["statistics"][0],)} for r in copies]
    assert gadmm._geomean_curvature(doubled) == pytest.approx(2 * level, rel=1e-12)


def test_the_width_warnings_name_the_variant_that_runs(caplog) -> None:
    """The set-up warning of a 1-bit width and a worker's divergence advice name the
    algorithm run: Q-SGADMM for ``q-sgadmm`` (before: 'Q-GADMM' for every variant)."""
    from flower_qgadmm.data import load_dataset
    from flower_qgadmm.reference import run_reference

    class Huge(LeastSquaresSolver):  # a worker whose model blows up (finite)
        def solve(self, linear, weight, start, key):
            return np.full_like(start, 1e31)

    data = load_dataset(4, 10, 3, 0.1, seed=0)
    for algorithm, name in (("q-sgadmm", "Q-SGADMM"), ("q-gadmm", "Q-GADMM")):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            make_engine(
                algorithm, least_squares_solvers(data), settings=GadmmSettings(bits=1)
            ).start()
        assert f"1-bit {name} sends only +-R per entry" in caplog.text
        with pytest.raises(FloatingPointError, match=f"; 3-bit {name} can diverge at rho="):
            run_reference(algorithm, [Huge(X, y) for X, y in data], 2)


def test_stochastic_variants_divergence_advice_names_their_steps() -> None:
    """SGADMM's advice named only exact GADMM's causes ("exact GADMM should not diverge",
    "try a different rho"): its local SGD steps and damped dual step are now named, on
    the relay (divergence_advice) and on the worker (a model that blew up)."""
    from flower_qgadmm.data import load_dataset
    from flower_qgadmm.reference import run_reference

    class Huge(LeastSquaresSolver):  # a worker whose model blows up (finite)
        def solve(self, linear, weight, start, key):
            return np.full_like(start, 1e31)

    data = load_dataset(4, 10, 3, 0.1, seed=0)
    advice = {}
    for algorithm in ("sgadmm", "q-sgadmm", "gadmm"):
        engine = make_engine(algorithm, least_squares_solvers(data))
        engine.start()
        advice[algorithm] = engine.advice()
    assert "SGADMM's stochastic local steps: a learning rate (lr) or dual-step" in advice["sgadmm"]
    assert "the automatic value) too large" in advice["sgadmm"]
    assert "exact GADMM should not diverge" not in advice["sgadmm"]
    assert "Q-SGADMM's stochastic local steps" in advice["q-sgadmm"]
    assert "too few bits" in advice["q-sgadmm"]
    assert advice["gadmm"] == (
        "likely causes: exact GADMM should not diverge: check the data for extreme values"
    )
    engine = make_engine(
        "sgadmm", least_squares_solvers(data), settings=GadmmSettings(dual_step=0.5)
    )
    engine.start()
    assert "dual-step (now 0.5, set by hand) too large" in engine.advice()
    with pytest.raises(FloatingPointError, match=r"\), or a smaller lr or dual-step$"):
        run_reference("sgadmm", [Huge(X, y) for X, y in data], 2)
    with pytest.raises(FloatingPointError, match=r"; try a different rho \(now [0-9.e+-]+\)$"):
        run_reference("gadmm", [Huge(X, y) for X, y in data], 2)


def test_auto_rho_follows_statistics_changed_in_place() -> None:
    # The curvature was remembered in module state for the last Gram arrays (by weak
    # reference): the same arrays changed in place gave the old rho. It is now kept on
    # one set-up's Reports only; any other sequence of reports is computed afresh.
    # Prepare
    gram = np.diag([1.0, 4.0, 16.0])  # geometric mean 4
    reports = [{"statistics": (gram, np.zeros(3))}] * 4
    first = auto_rho(reports, chain(4))
    # Execute
    gram *= 2
    # Assert
    assert auto_rho(reports, chain(4)) == pytest.approx(2 * first, rel=1e-12)
    from flower_qgadmm.algorithms import Reports
    from flower_qgadmm.algorithms.gadmm import _geomean_curvature

    kept = Reports(reports)
    assert _geomean_curvature(kept) == pytest.approx(8.0, rel=1e-12)
    gram *= 2  # a set-up's reports do not change: what was derived from them is kept
    assert _geomean_curvature(kept) == pytest.approx(8.0, rel=1e-12)
    assert _geomean_curvature(Reports(reports)) == pytest.approx(16.0, rel=1e-12)


def test_flower_set_up_of_two_bit_q_gadmm_computes_the_curvature_once(monkeypatch) -> None:
    # The ServerApp's RelayStrategy sets up through the same engine: one eigvalsh of the
    # d x d mean Gram for auto_rho (resolve) and the 2-bit warning (setup_warnings)
    calls = count_curvature_eigvalsh(monkeypatch, 20)
    cfg = RunConfig.of(algorithm="q-gadmm", bits=2, num_workers=4, dim=20, num_iterations=1)
    assert cfg.rho == 0  # automatic: resolve asks for the curvature
    strategy = RelayStrategy.from_config(cfg, discovery_timeout=1.0)
    strategy.start(FakeGrid(app, 4, cfg.to_run_config()), num_rounds=1, timeout=5.0)
    assert len(strategy.history) == 1 and strategy.settings.rho > 0
    assert len(calls) == 1
