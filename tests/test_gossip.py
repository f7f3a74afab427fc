"""CHOCO-SGD and Malcom-PSGD against plain loops written here, the centralized lasso,
and the Flower path."""

from __future__ import annotations

import numpy as np
import pytest
from test_dpsgd import metropolis

from flower_qgadmm.algorithms import GossipSettings
from flower_qgadmm.compression import make_codec, make_quantizer
from flower_qgadmm.data import load_dataset
from flower_qgadmm.reference import least_squares_solvers, run_reference
from flower_qgadmm.topology import ring, torus


def plain_choco(datasets, W, iters, eta, gamma, quantizer=None, codec=None, seed=0, mu=0.0):
    """Textbook CHOCO-SGD / Malcom-PSGD round (local step, prox, compress the residual
    against the public copy, update copies, consensus), least-squares gradients.
    Compression goes through the given quantizer/codec (default: float32 difference)."""
    quantizer = quantizer or make_quantizer("float32")
    codec = codec or make_codec("fixed-width")
    A = [X.T @ X for X, _ in datasets]
    b = [X.T @ y for X, y in datasets]
    n, d = len(datasets), A[0].shape[0]
    x, hat = np.zeros((n, d)), np.zeros((n, d))
    halves = []
    for t in range(1, iters + 1):
        half = np.stack([x[i] - eta * (A[i] @ x[i] - b[i]) for i in range(n)])
        if mu > 0:
            half = np.sign(half) * np.maximum(np.abs(half) - eta * mu, 0.0)
        for i in range(n):
            q = quantizer.quantize(half[i] - hat[i], np.random.default_rng([seed, i, t]))
            hat[i] = hat[i] + quantizer.dequantize(codec.decode(codec.encode(q), size=d))
        x = half + gamma * (W @ hat - hat)  # sum_j w_ij (hat_j - hat_i), rows sum to 1
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
