"""simulations/malcom_rate.py computes the rate on the function the package optimizes:
its numpy objective and full gradient equal the package's solvers' at a point."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

from flower_qgadmm.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    name = "simulations_malcom_rate"
    if name not in sys.modules:
        path = ROOT / "simulations" / "malcom_rate.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


rate = load_script()


def config(task: str, model: str = "softmax", **extra) -> RunConfig:
    args = argparse.Namespace(task=task, model=model, workers=4, topology="ring", batch_size=32)
    return RunConfig.from_run_config(
        {**rate.base_settings(args, 3), "algorithm": "malcom-psgd", **extra}
    )


def test_softmax_objective_and_gradient_match_the_torch_solvers() -> None:
    diff = rate.check_objective(config("digits"))
    assert diff["objective"] < 1e-5 and diff["gradient"] < 1e-4, diff  # float32 torch


def test_mlp_objective_and_gradient_match_the_torch_solvers() -> None:
    diff = rate.check_objective(config("digits", "mlp"))
    assert diff["objective"] < 1e-5 and diff["gradient"] < 1e-4, diff


def test_least_squares_objective_and_gradient_match_the_solvers() -> None:
    diff = rate.check_objective(config("linreg", l2=0.5))
    assert diff["objective"] < 1e-12 and diff["gradient"] < 1e-12, diff


def test_gradient_mapping() -> None:
    class Quadratic:  # f(x) = 1/2 ||x - c||^2
        c = np.array([3.0, 0.01, -2.0])

        def gradient(self, x):
            return x - self.c

    x, eta, mu = np.array([1.0, 0.0, -1.0]), 0.5, 0.1
    g = x - Quadratic.c
    assert np.array_equal(rate.gradient_mapping(Quadratic(), x, eta, 0.0), g)
    # away from zero the mapping is grad f + mu sign; at a zero entry kept at zero, 0
    expected = np.array([g[0] + mu, 0.0, g[2] - mu])
    assert np.allclose(rate.gradient_mapping(Quadratic(), x, eta, mu), expected)


def test_fast_solvers_run_as_the_packages() -> None:
    # the script's solvers (no test loader, batched indexing) give the runs of image_solver's
    args = argparse.Namespace(
        task="digits",
        model="softmax",
        workers=4,
        topology="ring",
        batch_size=32,
        gamma=0.1,
        l1=2e-4,
    )
    runs = []
    for fast in (True, False):
        args.fast = fast
        runs.append(rate.one_run(("malcom-psgd", "scaled", 4, 0.2, 1, args)))
    for key in ("gsq", "value", "consensus", "bits", "sparsity"):
        assert runs[0][key] == runs[1][key], key
