"""Benchmark: the vector source coder versus dense fixed-width packing of signed levels.

Run: ``python simulations/bench_source_coder.py [--repeats 5]``. For d = 650 (softmax
regression on digits) and d = 100000, densities 1%, 5%, 20% of non-zero levels and
s = 1 and 16, prints the measured bits per non-zero of both codecs (whole payloads,
headers included), the source coder's closed-form estimate relative to its measured
length, and the median encode / decode times.

The levels are synthetic: non-zero positions drawn independently with the given density,
random signs, magnitudes uniform in 1..s (s = 1: all +-1, the Malcom-PSGD case). Real
dithered levels of a residual have mostly magnitude 1, so the s = 16 rows are a
pessimistic case for the source coder.
"""

from __future__ import annotations

import argparse

import numpy as np
from bench_quantize import median_time  # simulations/ is on sys.path when run as a script

from flower_qgadmm.compression import FixedWidthCodec, Quantized, SourceCodec
from flower_qgadmm.compression.compressors import signed_width


def levels(rng: np.random.Generator, d: int, density: float, s: int) -> Quantized:
    """A "signed" message with about density * d non-zero levels, magnitudes in 1..s."""
    codes = np.zeros(d, dtype=np.int32)
    where = rng.random(d) < density
    n = int(where.sum())
    codes[where] = rng.integers(1, s + 1, n) * rng.choice([-1, 1], n)
    return Quantized(codes, 1.0, signed_width(s), "signed", s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # first paragraph
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    source, dense = SourceCodec(), FixedWidthCodec()
    print(
        f"{'d':>7} {'dens':>5} {'s':>3} {'nnz':>6} | {'source':>7} {'fixed':>7} {'ratio':>6} "
        f"{'est/meas':>8} | {'enc ms':>7} {'dec ms':>7} {'fw enc':>7} {'fw dec':>7}"
    )
    print(f"{'':>25} | {'bits per non-zero':^22} {'':>8} |")
    for d in (650, 100_000):
        for density in (0.01, 0.05, 0.20):
            for s in (1, 16):
                q = levels(rng, d, density, s)
                nnz = max(int(np.count_nonzero(q.codes)), 1)
                payload, block = source.encode(q), dense.encode(q)
                assert np.array_equal(source.decode(payload, d).codes, q.codes)
                src_bits, fw_bits = 8 * len(payload), 8 * len(block)
                estimate = source.estimate_bits(q) / src_bits
                enc = median_time(lambda q=q: source.encode(q), args.repeats)
                dec = median_time(lambda p=payload, d=d: source.decode(p, d), args.repeats)
                fw_enc = median_time(lambda q=q: dense.encode(q), args.repeats)
                fw_dec = median_time(lambda p=block, d=d: dense.decode(p, d), args.repeats)
                print(
                    f"{d:>7} {density:>5.0%} {s:>3} {nnz:>6} | {src_bits / nnz:>7.2f} "
                    f"{fw_bits / nnz:>7.2f} {src_bits / fw_bits:>6.1%} {estimate:>8.3f} | "
                    f"{enc * 1e3:>7.2f} {dec * 1e3:>7.2f} {fw_enc * 1e3:>7.2f} "
                    f"{fw_dec * 1e3:>7.2f}"
                )


if __name__ == "__main__":
    main()
