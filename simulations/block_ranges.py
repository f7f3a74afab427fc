"""Do per-block quantization ranges pay for Q-SGADMM / Q-GADMM? A measurement.

Run: ``python simulations/block_ranges.py [--part all|check|digits|linreg]
[--seeds 0 1 2] [--bits 2 3] [--digits-iterations 250] [--linreg-iterations 3000]
[--linreg-rho 0] [--linreg-blocks 16 25] [--reference]`` (``--reference``: also SGADMM,
float32 messages, on digits). Results and conclusions: docs/experiments/block-ranges.md.

The built-in stochastic quantizer (``"stochastic"``) sends one range R = max |v_i|
(rounded up to a bfloat16 value, 2 bytes) per message. Here, without touching the
package, through its public extension points:

- :class:`BlockStochasticQuantizer` (registered as ``"block-stochastic"``): one range per
  block of B consecutive entries (the last block shorter), each rounded up to a bfloat16
  value, and within each block exactly the built-in rule (the same float operations, the
  same uniform draws: with B >= d it *is* the built-in quantizer, bit for bit);
- :class:`BlockCodec` (one registered codec per B, ``"block-fixed-width-<B>"``): the
  fixed-width layout with every block's range in the payload: ``width u8 | d varint |
  ceil(d / B) ranges of 2 bytes | body``. The built-in layout is the same with one range,
  so a block payload is exactly ``2 (ceil(d / B) - 1)`` bytes longer (B is a setting of
  the run, as the width is, and is not written);
- a :class:`~flower_qgadmm.algorithms.gadmm.Gadmm` subclass per B using both, registered
  as ``q-gadmm-b<B>`` / ``q-sgadmm-b<B>`` (``register``); the built-in variants run as
  ``q-gadmm-probe`` / ``q-sgadmm-probe``, which only record the differences v they send.

Measured: Q-SGADMM on digits (chain of 10 workers) at 2 and 3 bits, B = 256 against one
range (final accuracy, bits to 0.85 / 0.90 accuracy); Q-GADMM on linreg (24 workers x 50
samples x 50 features, automatic rho, fixed width) at 2 and 3 bits, B = 16 and 25 against
one range (iterations and bits to a relative gap of 1e-4); and, on the differences v the
runs actually sent, the exact expected quantization error E||Q(v) - v||^2 =
sum_i Delta_i^2 p_i (1 - p_i) (p_i the fractional grid position of v_i) for several B.

A digits run in which every worker diverges (the relay drops a sender whose range passes
1e15) is recorded as failed, with NaN accuracy; a linreg run that diverges as diverged.
Writes ``results/<time>-block-ranges/``: ``runs.json`` (every run's summary and history)
and ``summary.md`` (the tables).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass

import numpy as np

from flower_qgadmm.algorithms import Gadmm, register
from flower_qgadmm.compression import (
    Codec,
    PayloadError,
    Quantized,
    Quantizer,
    make_codec,
    register_codec,
    register_quantizer,
)
from flower_qgadmm.compression.base import MAX_SCALE, check_declared_size, payload_view
from flower_qgadmm.compression.codecs import pack_codes, read_varint, unpack_codes, write_varint
from flower_qgadmm.compression.quantizers import (
    MAX_LEVEL_BITS,
    bfloat16_ceil,
    check_level_bits,
    finite_range,
)

# ------------------------------------------------------------------ the quantizer


@dataclass(frozen=True, eq=False)
class BlockQuantized(Quantized):
    """A "levels" message with one range per block: ``ranges[j]`` covers entries
    ``[j B, (j + 1) B)``; ``scale`` is the largest range (what Gadmm's growth warning and
    adaptive rule read)."""

    ranges: np.ndarray | None = None
    block: int = 0


def block_starts(size: int, block: int) -> np.ndarray:
    return np.arange(0, size, block)


def block_ranges(v: np.ndarray, block: int) -> np.ndarray:
    """max |v_i| per block, each rounded up to a bfloat16 value (as the built-in R)."""
    if v.size == 0:
        return np.zeros(0)
    amax = np.maximum.reduceat(np.abs(v), block_starts(v.size, block))
    return np.array([bfloat16_ceil(float(a)) for a in amax])


def per_entry(values: np.ndarray, size: int, block: int) -> np.ndarray:
    """Block values repeated over their entries (the last block shorter)."""
    counts = np.full(values.size, block)
    if values.size:
        counts[-1] = size - block * (values.size - 1)
    return np.repeat(values, counts)


@register_quantizer("block-stochastic")
class BlockStochasticQuantizer(Quantizer):
    """Unbiased stochastic rounding onto 2^b - 1 levels over [-R_j, R_j] in each block j
    of ``block`` consecutive entries (R_j = bfloat16 ceiling of the block's max |v_i|).

    Within a block the built-in rule, with the same float operations and the same
    ``rng.random(d)`` draws; a block with R_j = 0 sends codes 0 (as the built-in R = 0)."""

    unbiased = True
    lossless = False
    kinds = frozenset({"levels"})

    def __init__(self, bits: int, block: int = 256) -> None:
        self.bits = check_level_bits(bits)
        if int(block) < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.block = int(block)

    def quantize(
        self, x: np.ndarray, rng: np.random.Generator, bits: int | None = None
    ) -> Quantized:
        b = self.bits if bits is None else check_level_bits(bits)
        v, _ = finite_range(x)
        top = 2**b - 1
        ranges = block_ranges(v, self.block)
        u = rng.random(v.size)  # drawn whatever the ranges, as the built-in for R > 0
        r = per_entry(ranges, v.size, self.block)
        live = r > 0
        c = v + r  # the built-in's c = (v + R) / delta, delta = 2R / top
        np.divide(c, 2.0 * r / top, out=c, where=live)
        low = np.floor(c)
        c -= low
        codes = low.astype(np.int64) + (u < c)
        codes[~live] = 0
        codes = np.minimum(codes, top).astype(np.uint32)
        scale = float(ranges.max()) if ranges.size else 0.0
        return BlockQuantized(codes, scale, b, "levels", ranges=ranges, block=self.block)

    def dequantize(self, q: Quantized) -> np.ndarray:
        ranges = np.asarray(q.ranges, dtype=np.float64)
        r = per_entry(ranges, q.size, q.block)
        delta = 2.0 * r / (2**q.bits - 1)
        out = np.asarray(q.codes).astype(np.float64)
        out *= delta
        out -= r
        return out

    def nominal_bits(self, q: Quantized) -> int:
        """b d + 16 per block (each range a bfloat16)."""
        return q.bits * q.size + 16 * len(q.ranges)

    def error_bound(self, q: Quantized) -> float:
        return 2.0 * float(q.scale) / (2**q.bits - 1)


# ------------------------------------------------------------------ the codec


class BlockCodec(Codec):
    """``width u8 | d varint | ceil(d / B) bfloat16 ranges (2 bytes each) | body``, the
    body packed as the fixed-width codec packs it. B is the class's :attr:`block`."""

    block = 0
    header_overhead_bits = 8 * 6
    kinds = frozenset({"levels"})

    def encode(self, q: Quantized) -> bytes:
        if not isinstance(q, BlockQuantized) or q.block != self.block:
            raise ValueError(f"{type(self).__name__} writes block messages of B = {self.block}")
        codes = np.asarray(q.codes)
        bits = check_level_bits(q.bits)
        if codes.size and int(codes.max()) > 2**bits - 1:
            raise ValueError(f"a code exceeds {bits} bits")
        ranges = np.asarray(q.ranges, dtype=np.float64)
        if ranges.size != -(-codes.size // self.block):
            raise ValueError("one range per block expected")
        if not (np.all(np.isfinite(ranges)) and np.all(ranges >= 0)):
            raise ValueError("ranges must be finite and >= 0")
        if ranges.size and ranges.max() > MAX_SCALE:
            raise FloatingPointError(f"a range exceeds {MAX_SCALE:g}")
        pattern = ranges.astype(np.float32).view(np.uint32)
        if np.any(pattern & 0xFFFF) or np.any(pattern.view(np.float32) != ranges):
            raise ValueError("every range must be a bfloat16 value")
        head = bytes((bits,)) + write_varint(codes.size)
        return head + (pattern >> 16).astype("<u2").tobytes() + pack_codes(codes, bits)

    def decode(self, payload: bytes, size: int | None = None) -> Quantized:
        view = payload_view(payload)
        if len(view) < 2:
            raise PayloadError("truncated payload")
        bits = view[0]
        if not 1 <= bits <= MAX_LEVEL_BITS:
            raise PayloadError(f"bad width {bits}")
        n, at = read_varint(view, 1, "size")
        check_declared_size(n, size)
        blocks = -(-n // self.block)
        body = at + 2 * blocks
        expected = body + (bits * n + 7) // 8
        if len(view) != expected:
            raise PayloadError(f"payload of {len(view)} bytes, expected {expected}")
        high = np.frombuffer(view, dtype="<u2", count=blocks, offset=at).astype(np.uint32)
        ranges = (high << 16).view(np.float32).astype(np.float64)
        if not (np.all(np.isfinite(ranges)) and np.all(ranges >= 0)) or (
            ranges.size and ranges.max() > MAX_SCALE
        ):
            raise PayloadError("bad block range")
        pad = -(bits * n) % 8
        if pad and view[-1] >> (8 - pad):
            raise PayloadError("padding bits not 0")
        codes = unpack_codes(bytes(view[body:]), bits, n)
        scale = float(ranges.max()) if ranges.size else 0.0
        return BlockQuantized(codes, scale, bits, "levels", ranges=ranges, block=self.block)


# ------------------------------------------------------------------ the algorithms

#: (node, iteration, v) of the differences the probe workers sent at PROBE_EVERY
PROBE: list[tuple[int, int, np.ndarray]] = []
PROBE_EVERY = [10]


class ProbeGadmm(Gadmm):
    """The built-in (Q-)GADMM, recording the difference v of some messages."""

    def _transmit(self, iteration: int):
        if iteration == 1 or iteration % PROBE_EVERY[0] == 0:
            PROBE.append((self.node, int(iteration), self.theta - self.copies.own))
        return super()._transmit(iteration)


def block_worker(block: int) -> type[Gadmm]:
    @register_codec(f"block-fixed-width-{block}")
    class Codec_(BlockCodec):
        pass

    Codec_.block = block

    class BlockGadmm(ProbeGadmm):
        def make_quantizer(self) -> Quantizer:
            return BlockStochasticQuantizer(self.settings.bits, block=block)

        @classmethod
        def codec_for(cls, settings):
            return make_codec(f"block-fixed-width-{block}")

    BlockGadmm.__name__ = f"BlockGadmm{block}"
    return BlockGadmm


def register_variants(blocks: list[int]) -> None:
    register("q-gadmm-probe", ProbeGadmm, quantized=True, solver="exact")
    register("q-sgadmm-probe", ProbeGadmm, quantized=True, solver="stochastic")
    for b in blocks:
        worker = block_worker(b)
        register(f"q-gadmm-b{b}", worker, quantized=True, solver="exact")
        register(f"q-sgadmm-b{b}", worker, quantized=True, solver="stochastic")


# ------------------------------------------------------------------ the error


def expected_error(v: np.ndarray, bits: int, block: int) -> float:
    """E ||Q(v) - v||^2 of the block quantizer (block >= d: the built-in), exactly:
    sum_i Delta_i^2 p_i (1 - p_i), p_i the fraction of (v_i + R) / Delta."""
    top = 2**bits - 1
    r = per_entry(block_ranges(v, block), v.size, block)
    live = r > 0
    delta = 2.0 * r[live] / top
    c = (v[live] + r[live]) / delta
    p = c - np.floor(c)
    return float(np.sum(delta**2 * p * (1 - p)))


def error_table(probe, bits: int, blocks: list[int]) -> dict:
    """Sum over the recorded messages of E||Q(v) - v||^2 for each B, relative to one
    range; and the median of the per-message ratios."""
    if not probe:
        return {}
    single = np.array([expected_error(v, bits, v.size) for _, _, v in probe])
    norms = np.array([float(v @ v) for _, _, v in probe])
    out = {"messages": len(probe), "single_over_norm": float(single.sum() / norms.sum())}
    for b in blocks:
        if b >= probe[0][2].size:
            continue
        e = np.array([expected_error(v, bits, b) for _, _, v in probe])
        ok = single > 0
        out[b] = {
            "total_ratio": float(e.sum() / single.sum()),
            "median_ratio": float(np.median(e[ok] / single[ok])),
            "extra_bits": 16 * (-(-probe[0][2].size // b) - 1),
        }
    return out


# ------------------------------------------------------------------ checks


def check(bits_list: list[int]) -> None:
    """Round trip, unbiasedness, the analytic error against Monte Carlo, and B >= d giving
    the built-in quantizer's codes."""
    from flower_qgadmm.compression import StochasticQuantizer

    rng = np.random.default_rng(1)
    v = rng.standard_normal(1000) * np.repeat(np.logspace(-3, 0, 10), 100)
    v[300:400] = 0.0  # covers the block [320, 384): R_j = 0
    for bits in bits_list:
        q = BlockStochasticQuantizer(bits, 64)
        codec = make_codec("block-fixed-width-64")
        base = make_codec("fixed-width").payload_length(
            StochasticQuantizer(bits).quantize(v, np.random.default_rng(0))
        )
        draws = []
        for k in range(2000):
            m = q.quantize(v, np.random.default_rng([5, k]))
            payload = codec.encode(m)
            back = q.dequantize(codec.decode(payload, size=v.size))
            assert np.array_equal(back, q.dequantize(m))
            assert len(payload) == base + 2 * (-(-v.size // 64) - 1), (len(payload), base)
            draws.append(back)
        draws = np.array(draws)
        mc = float(np.mean(np.sum((draws - v) ** 2, axis=1)))
        exact = expected_error(v, bits, 64)
        step = 2.0 * per_entry(block_ranges(v, 64), v.size, 64) / (2**bits - 1)
        live = step > 0
        z = np.abs(draws.mean(axis=0) - v)[live] / (step[live] / np.sqrt(len(draws)))
        assert abs(mc / exact - 1) < 0.05, (mc, exact)
        assert z.max() < 5, z.max()  # the mean is within 5 standard errors (<= step/2/sqrt(n))
        assert np.all(draws[:, 320:384] == 0)
        # B >= d: the built-in quantizer, codes and values
        for x in (v, v[:50]):
            mine = BlockStochasticQuantizer(bits, 10**6).quantize(x, np.random.default_rng(7))
            theirs = StochasticQuantizer(bits).quantize(x, np.random.default_rng(7))
            assert np.array_equal(mine.codes, theirs.codes) and mine.scale == theirs.scale
            assert np.array_equal(
                BlockStochasticQuantizer(bits, 10**6).dequantize(mine),
                StochasticQuantizer(bits).dequantize(theirs),
            )
        print(
            f"check {bits}-bit: Monte Carlo E||Q(v)-v||^2 {mc:.4g} vs exact {exact:.4g}, "
            f"largest |mean - v| {z.max():.2f} steps/sqrt(n); B >= d gives the built-in codes"
        )


# ------------------------------------------------------------------ the runs


def first_row(rows, key, target):
    return next((r for r in rows if key in r and r[key] >= target), None)


def digits_run(bits: int, seed: int, block: int | None, iterations: int) -> dict:
    from flower_qgadmm.config import RunConfig
    from flower_qgadmm.image_task import image_solver, load_task_data, mean_model_evaluator
    from flower_qgadmm.reference import run_from_config

    # block None: the built-in single range; 0: SGADMM (float32 messages)
    name = {None: "q-sgadmm-probe", 0: "sgadmm"}.get(block, f"q-sgadmm-b{block}")
    cfg = RunConfig.of(
        task="digits",
        algorithm=name,
        num_workers=10,
        num_iterations=iterations,
        bits=min(bits, 16),
        seed=seed,
        evaluate_every=5,
    )
    data = load_task_data(cfg)
    solvers = [image_solver(cfg, w, data) for w in range(cfg.num_workers)]
    PROBE.clear()
    PROBE_EVERY[0] = 25
    t0 = time.perf_counter()
    from flower_qgadmm.rounds import WorkerFailure

    seen: list[dict] = []
    status = "completed"
    try:
        run_from_config(cfg, solvers, evaluate=mean_model_evaluator(cfg, data), on_row=seen.append)
    except (FloatingPointError, WorkerFailure) as exc:  # every worker diverged
        status = f"failed after iteration {len(seen)}: {str(exc)[:60]}"
    rows = seen
    if status != "completed":  # a last row saying the run failed (no accuracy)
        end = rows[-1]["bits"] if rows else 0
        rows.append({"iteration": len(rows) + 1, "bits": end, "accuracy": math.nan})
        rows[-1]["mean_model_accuracy"] = math.nan
    out = {
        "status": status,
        "workers_at_end": rows[-2 if status != "completed" else -1].get("workers") if rows else 0,
        "task": "digits",
        "bits": bits,
        "seed": seed,
        "block": block,
        "seconds": time.perf_counter() - t0,
        "dim": int(solvers[0].initial().size),
        "final_accuracy": rows[-1]["accuracy"],
        "final_mean_model_accuracy": rows[-1]["mean_model_accuracy"],
        "total_bits": rows[-1]["bits"],
        "rho": None,
        "history": rows,
    }
    for key in ("accuracy", "mean_model_accuracy"):
        for target in (0.85, 0.9):
            hit = first_row(rows, key, target)
            out[f"{key}>={target}"] = (hit["iteration"], hit["bits"]) if hit else None
    out["error"] = error_table(PROBE, bits, [64, 128, 256, 512, 1024])
    return out


def linreg_run(
    bits: int, seed: int, block: int | None, max_iterations: int, rho: float = 0.0
) -> dict:
    from flower_qgadmm.config import RunConfig
    from flower_qgadmm.data import experiment_datasets
    from flower_qgadmm.reference import least_squares_solvers, make_engine

    name = "q-gadmm-probe" if block is None else f"q-gadmm-b{block}"
    cfg = RunConfig.of(
        task="linreg",
        algorithm=name,
        num_workers=24,
        samples_per_worker=50,
        dim=50,
        bits=bits,
        rho=rho,
        seed=seed,
        num_iterations=max_iterations,
        evaluate_every=50,
    )
    solvers = least_squares_solvers(experiment_datasets(cfg), cfg.l2)
    PROBE.clear()
    PROBE_EVERY[0] = 10
    engine = make_engine(
        cfg.algorithm, solvers, cfg.graph, cfg.algo, cfg.seed, evaluate_every=cfg.evaluate_every
    )
    t0 = time.perf_counter()
    tol, hold = 1e-4, 100
    status = "max iterations"
    try:
        engine.start()
        below = 0
        for k in range(1, max_iterations + 1):
            row = engine.run_round(k, final=k == max_iterations)
            below = below + 1 if row["objective_gap"] < tol else 0
            if below >= hold:  # below the tolerance for `hold` iterations in a row
                status = "reached"
                break
    except FloatingPointError as exc:
        status = f"diverged: {str(exc)[:80]}"
    rows = engine.history
    reached = None
    for r in reversed(rows):  # the first row from which every later row is below tol
        if not r["objective_gap"] < tol:
            break
        reached = r
    return {
        "task": "linreg",
        "bits": bits,
        "seed": seed,
        "block": block,
        "rho": engine.settings.rho,
        "seconds": time.perf_counter() - t0,
        "status": status,
        "iterations_run": len(rows),
        "reached": (reached["iteration"], reached["bits"])
        if reached and status == "reached"
        else None,
        "final_gap": rows[-1]["objective_gap"] if rows else math.nan,
        "best_gap": min((r["objective_gap"] for r in rows), default=math.nan),
        "history": rows,
        "error": error_table(PROBE, bits, [5, 10, 16, 25]),
    }


# ------------------------------------------------------------------ tables


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def fmt(x, spec=",.0f"):
    return "n/r" if x is None else format(x, spec)


def digits_tables(runs: list[dict], seeds: list[int], bits_list: list[int]) -> list[str]:
    lines = [
        "| bits | ranges | final worker acc | final mean-model acc | iters to 0.85 (worker) "
        "| bits to 0.85 (worker) | iters to 0.90 (worker) | bits to 0.90 (worker) "
        "| bits to 0.90 (mean model) | bits per iteration |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for bits in sorted({r["bits"] for r in runs}):
        for block in (0, None, 256):
            rs = [r for r in runs if r["bits"] == bits and r["block"] == block]
            if not rs:
                continue

            def hit(key, i, rs=rs):
                vals = [r[key][i] if r[key] else None for r in rs]
                return None if None in vals else mean(vals)

            cells = [
                str(bits),
                {None: "one", 0: "float32 (SGADMM)"}.get(block, f"B = {block}"),
                f"{mean([r['final_accuracy'] for r in rs]):.4f}",
                f"{mean([r['final_mean_model_accuracy'] for r in rs]):.4f}",
                fmt(hit("accuracy>=0.85", 0), ".0f"),
                fmt(hit("accuracy>=0.85", 1)),
                fmt(hit("accuracy>=0.9", 0), ".0f"),
                fmt(hit("accuracy>=0.9", 1)),
                fmt(hit("mean_model_accuracy>=0.9", 1)),
                fmt(mean([r["total_bits"] / len(r["history"]) for r in rs])),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per seed (final worker accuracy, one range -> B = 256):", ""]
    for bits in bits_list:
        pairs = []
        for s in seeds:
            a = [r for r in runs if r["bits"] == bits and r["seed"] == s]
            one = next((r for r in a if r["block"] is None), None)
            blk = next((r for r in a if r["block"] == 256), None)
            if one and blk:
                pairs.append(
                    f"seed {s}: {one['final_accuracy']:.4f} -> {blk['final_accuracy']:.4f}"
                )
        lines.append(f"- {bits}-bit: " + "; ".join(pairs))
    return lines


def linreg_tables(runs: list[dict], seeds: list[int], bits_list: list[int], blocks) -> list[str]:
    lines = [
        "| bits | ranges | seeds reaching 1e-4 | iterations to 1e-4 | bits to 1e-4 "
        "| bits / one range (paired) | best gap (mean log10) |",
        "|---|---|---|---|---|---|---|",
    ]
    for bits in bits_list:
        base = {r["seed"]: r for r in runs if r["bits"] == bits and r["block"] is None}
        for block in (None, *blocks):
            rs = [r for r in runs if r["bits"] == bits and r["block"] == block]
            if not rs:
                continue
            ok = [r for r in rs if r["reached"]]
            ratios = [
                r["reached"][1] / base[r["seed"]]["reached"][1]
                for r in ok
                if r["seed"] in base and base[r["seed"]]["reached"]
            ]
            all_ok = len(ok) == len(rs)
            cells = [
                str(bits),
                "one" if block is None else f"B = {block}",
                f"{len(ok)}/{len(rs)}",
                fmt(mean([r["reached"][0] for r in ok]) if all_ok else None, ".0f"),
                fmt(mean([r["reached"][1] for r in ok]) if all_ok else None),
                "-" if block is None else fmt(mean(ratios) if ratios else None, ".3f"),
                f"{mean([math.log10(max(r['best_gap'], 1e-300)) for r in rs]):.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per run:", ""]
    for r in runs:
        where = f"{r['reached'][0]} it, {r['reached'][1]:,} bits" if r["reached"] else "-"
        lines.append(
            f"- {r['bits']}-bit {'one' if r['block'] is None else 'B=' + str(r['block'])} "
            f"seed {r['seed']} (rho {r['rho']:.4g}): {r['status']}, {where}, best gap "
            f"{r['best_gap']:.3g}, {r['seconds']:.0f} s"
        )
    return lines


def error_lines(runs: list[dict], bits_list: list[int]) -> list[str]:
    lines = [
        "| task | bits | v from | messages | E err one range / ||v||^2 | B | E err block / one "
        "(sum over messages) | median per message | extra bits per message |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        e = r["error"]
        if not e:
            continue
        for b, stats in e.items():
            if not isinstance(stats, dict):
                continue
            lines.append(
                f"| {r['task']} | {r['bits']} | "
                f"{'one' if r['block'] is None else 'B=' + str(r['block'])} run, seed {r['seed']} "
                f"| {e['messages']} | {e['single_over_norm']:.3f} | {b} | "
                f"{stats['total_ratio']:.3f} | {stats['median_ratio']:.3f} | "
                f"{stats['extra_bits']} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", default="all", choices=["all", "check", "digits", "linreg"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--digits-iterations", type=int, default=250)
    parser.add_argument("--linreg-iterations", type=int, default=3000)
    parser.add_argument("--linreg-blocks", type=int, nargs="+", default=[16, 25])
    parser.add_argument("--linreg-rho", type=float, default=0.0, help="0: automatic")
    parser.add_argument(
        "--reference", action="store_true", help="digits: also SGADMM (float32) per seed"
    )
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args()
    blocks = sorted({256, 64, *args.linreg_blocks})
    register_variants(blocks)
    import torch

    torch.set_num_threads(1)
    if args.part in ("all", "check"):
        check(args.bits)
    if args.part == "check":
        return
    from flower_qgadmm.history import new_run_dir

    out = new_run_dir(args.results_dir, "block-ranges")
    runs: list[dict] = []
    lines = [f"# Block ranges: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]
    t_all = time.perf_counter()

    def save():
        (out / "runs.json").write_text(json.dumps(runs, default=str))

    if args.part in ("all", "digits"):
        for seed in args.seeds if args.reference else []:
            r = digits_run(32, seed, 0, args.digits_iterations)
            runs.append(r)
            save()
            print(f"digits sgadmm seed {seed}: {r['final_accuracy']:.4f}", flush=True)
        for bits in args.bits:
            for seed in args.seeds:
                for block in (None, 256):
                    r = digits_run(bits, seed, block, args.digits_iterations)
                    runs.append(r)
                    save()
                    print(
                        f"digits {bits}-bit {block or 'one'} seed {seed} ({r['status']}): "
                        f"{r['seconds']:.0f}s acc {r['final_accuracy']:.4f} "
                        f"mm {r['final_mean_model_accuracy']:.4f} bits {r['total_bits']:,} "
                        f"0.9 at {r['accuracy>=0.9']} err {json.dumps(r['error'])}",
                        flush=True,
                    )
        dig = [r for r in runs if r["task"] == "digits"]
        lines += [
            f"## Q-SGADMM, digits, chain of 10, {args.digits_iterations} iterations "
            f"(d = {dig[0]['dim']}), means over seeds {args.seeds}",
            "",
            *digits_tables(dig, args.seeds, args.bits),
            "",
        ]
    if args.part in ("all", "linreg"):
        for bits in args.bits:
            for seed in args.seeds:
                for block in (None, *args.linreg_blocks):
                    r = linreg_run(bits, seed, block, args.linreg_iterations, args.linreg_rho)
                    runs.append(r)
                    save()
                    print(
                        f"linreg {bits}-bit {block or 'one'} seed {seed}: {r['seconds']:.0f}s "
                        f"{r['status']} reached {r['reached']} best {r['best_gap']:.3g} "
                        f"err {json.dumps(r['error'])}",
                        flush=True,
                    )
        lin = [r for r in runs if r["task"] == "linreg"]
        lines += [
            f"## Q-GADMM, linreg 24 x 50 x 50, rho {args.linreg_rho or 'automatic'}, fixed width",
            "",
            *linreg_tables(lin, args.seeds, args.bits, args.linreg_blocks),
            "",
        ]
    lines += [
        "## Expected quantization error on the differences sent",
        "",
        *error_lines(runs, args.bits),
    ]
    lines += ["", f"Total run time {time.perf_counter() - t_all:.0f} s"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
