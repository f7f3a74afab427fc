"""Gossip compressors, rounds and the source coder against references written here from
the papers and the documented wire format (the gaps a review found in the other tests):

- the dithered quantizer's variance meets QSGD's bound min(d/s^2, sqrt(d)/s) ||v||^2 and
  its CHOCO-scaled form is a contraction, E||Q(v)/tau - v||^2 <= (1 - 1/tau) ||v||^2;
- CHOCO-SGD with top-k and scaled sign on a graph with unequal Metropolis weights follows
  the textbook round;
- the source coder writes the bytes an encoder on strings of '0'/'1' writes.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from test_dpsgd import metropolis

from flower_qgadmm.algorithms import GossipSettings
from flower_qgadmm.compression import Quantized, SourceCodec, make_quantizer
from flower_qgadmm.compression.compressors import signed_width
from flower_qgadmm.reference import least_squares_solvers, run_reference
from flower_qgadmm.topology import erdos_renyi


@pytest.mark.parametrize(("d", "s", "norm"), [(50, 1, "l2"), (200, 16, "l2"), (40, 2, "linf")])
def test_dithered_variance_bound_and_the_scaled_contraction(d: int, s: int, norm: str) -> None:
    # Prepare: a residual with exact zeros; N the norm the message carries
    rng = np.random.default_rng(d + s)
    v = rng.standard_normal(d) * (rng.random(d) < 0.6)
    plain = make_quantizer("dithered", levels=s, norm=norm)
    scaled = make_quantizer("dithered", levels=s, norm=norm, variance_scaling=True)
    N = plain.quantize(v, rng).scale
    # Execute: the exact variance sum_k (N/s)^2 p_k (1 - p_k), p_k = frac(s |v_k| / N), and
    # 4000 seeded draws of both quantizers (the same payloads)
    a = s * np.abs(v) / N
    p = a - np.floor(a)
    variance = float(np.sum((N / s) ** 2 * p * (1 - p)))
    g = np.random.default_rng(1)
    draws = np.stack([plain.dequantize(plain.quantize(v, g)) for _ in range(4000)])
    g = np.random.default_rng(1)
    shrunk = np.stack([scaled.dequantize(scaled.quantize(v, g)) for _ in range(4000)])
    # Assert: QSGD's bound (l_inf: N <= ||v||_2 gives the same), the draws' error near the
    # exact variance, and CHOCO's contraction with tau = 1 + min(d/s^2, sqrt(d)/s)
    vv = float(v @ v)
    assert variance <= min(d / s**2, math.sqrt(d) / s) * vv
    measured = float(np.mean(np.sum((draws - v) ** 2, axis=1)))
    assert measured == pytest.approx(variance, rel=0.05)
    tau = 1 + min(d / s**2, math.sqrt(d) / s)
    np.testing.assert_allclose(shrunk, draws / tau)
    contraction = (variance + vv) / tau**2 - 2 * vv / tau + vv  # E||Q/tau - v||^2, exact
    assert contraction <= (1 - 1 / tau) * vv
    assert float(np.mean(np.sum((shrunk - v) ** 2, axis=1))) <= (1 - 1 / tau) * vv


def choco_loop(data, W, iters, eta, gamma, compress):
    """CHOCO-SGD (Koloskova et al. 2019, Alg. 2): x^{t+1/2} = x - eta grad f_i(x); q_i =
    Q(x_i^{t+1/2} - x_hat_i); x_hat_j += q_j for every j; x = x^{t+1/2} + gamma sum_j
    w_ij (x_hat_j - x_hat_i); full-batch least-squares gradients."""
    n, d = len(data), data[0][0].shape[1]
    x, hat = np.zeros((n, d)), np.zeros((n, d))
    for _ in range(iters):
        half = np.stack([x[i] - eta * (X.T @ (X @ x[i] - y)) for i, (X, y) in enumerate(data)])
        hat = hat + np.stack([compress(half[i] - hat[i]) for i in range(n)])
        x = half + gamma * (W @ hat - hat)
    return x


def top_k(v: np.ndarray, k: int) -> np.ndarray:
    """The k entries of largest |v_k| (ties: lower index), as float32 values."""
    keep = np.argsort(-np.abs(v), kind="stable")[:k]
    out = np.zeros_like(v)
    out[keep] = v[keep].astype(np.float32)
    return out


def scaled_sign(v: np.ndarray) -> np.ndarray:
    """sign(v) ||v||_1 / d, the scale a float32 rounded up."""
    scale = np.float32(np.sum(np.abs(v)) / v.size)
    if float(scale) < np.sum(np.abs(v)) / v.size:
        scale = np.nextafter(scale, np.float32(np.inf))
    return float(scale) * np.sign(v)


@pytest.mark.parametrize("compressor", ["top-k", "sign"])
def test_choco_on_an_irregular_graph_follows_the_textbook_round(compressor: str) -> None:
    # Prepare: degrees 2 to 5, so the Metropolis weights differ from edge to edge
    graph = erdos_renyi(6, seed=0, param=0.6)
    assert len({len(graph.neighbours(n)) for n in range(6)}) > 1
    rng = np.random.default_rng(8)
    data = [(rng.standard_normal((25, 12)), rng.standard_normal(25)) for _ in range(6)]
    W = metropolis(6, graph.edges)
    settings = GossipSettings(
        step_size=0.004, consensus_step=0.2, compressor=compressor, fraction=0.25
    )
    compress = (lambda v: top_k(v, 3)) if compressor == "top-k" else scaled_sign
    # Execute
    ours = run_reference("choco-sgd", least_squares_solvers(data), 25, settings, graph=graph)
    x = choco_loop(data, W, 25, 0.004, 0.2, compress)
    # Assert
    np.testing.assert_allclose(ours.models, x, rtol=1e-12, atol=1e-14)


def bit_string_payload(levels: np.ndarray, s: int, scale: float) -> bytes:
    """The source coder's payload from its documented format, on strings of '0'/'1': tag
    (0b101 << 5 | r), d as LEB128, the float32 scale, then gamma(s), gamma(n + 1) and per
    non-zero rice(run, r), a sign bit (1 = negative), gamma(|level|); r the shortest."""

    def gamma(n: int) -> str:
        return "0" * (n.bit_length() - 1) + bin(n)[2:]

    def rice(n: int, r: int) -> str:
        return "0" * (n >> r) + "1" + (format(n & ((1 << r) - 1), f"0{r}b") if r else "")

    where = [i for i, v in enumerate(levels.tolist()) if v]
    runs = [b - a - 1 for a, b in zip([-1, *where], where, strict=False)]
    r = min(range(32), key=lambda r: sum(x >> r for x in runs) + len(runs) * r) if runs else 0
    bits = gamma(s) + gamma(len(where) + 1)
    for run, i in zip(runs, where, strict=True):
        bits += rice(run, r) + ("1" if levels[i] < 0 else "0") + gamma(abs(int(levels[i])))
    bits += "0" * (-len(bits) % 8)
    d, size = int(levels.size), b""
    while True:
        size += bytes([(d & 0x7F) | (0x80 if d >> 7 else 0)])
        d >>= 7
        if not d:
            break
    stream = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return bytes([(0b101 << 5) | r]) + size + struct.pack("<f", scale) + stream


def test_source_payload_equals_a_bit_string_encoder() -> None:
    # Prepare: sizes around the varint boundaries, densities 0 to 1, s from 1 to 2^20
    rng = np.random.default_rng(31)
    codec = SourceCodec()
    for _ in range(300):
        d = int(rng.choice([1, 2, 127, 128, 650, 16383, 16384]))
        s = int(rng.choice([1, 2, 16, 2**20]))
        levels = np.zeros(d, np.int32)
        hit = rng.random(d) < rng.choice([0.0, 0.002, 0.03, 0.3, 1.0])
        levels[hit] = rng.integers(1, min(s, 1000) + 1, hit.sum()) * rng.choice([-1, 1], hit.sum())
        scale = float(np.float32(rng.random() * 10.0 ** int(rng.integers(-20, 20))))
        q = Quantized(levels, scale, signed_width(s), "signed", s)
        # Execute
        payload = codec.encode(q)
        # Assert: the same bytes, and they decode to the levels
        assert payload == bit_string_payload(levels, s, scale), (d, s, int(hit.sum()))
        np.testing.assert_array_equal(codec.decode(payload, size=d).codes, levels)
