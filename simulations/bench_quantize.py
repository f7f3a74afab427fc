"""Benchmark: quantize + pack throughput for d = 10^6 floats, as a ratio to a numpy copy.

Run: ``python simulations/bench_quantize.py [--size 1000000] [--repeats 7]``. Prints, for
b = 2, 4, 8 (and the float32 path), the median time of quantize+encode and of
decode+dequantize, each divided by the median time of ``np.copy`` of the same vector,
all measured in this one run (ratios, not absolute times, are what compare across
machines).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from flower_qgadmm.compression import FixedWidthCodec, Float32Quantizer, StochasticQuantizer


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # first paragraph
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(args.size)
    codec = FixedWidthCodec()
    base = median_time(lambda: np.copy(x), args.repeats)
    print(
        f"d = {args.size:,}; numpy copy median {base * 1e3:.3f} ms "
        f"({x.nbytes / base / 1e9:.2f} GB/s)"
    )
    print(f"{'path':>10} {'encode/copy':>12} {'decode/copy':>12} {'bytes':>10} {'MB/s in':>9}")
    cases = [(f"{b}-bit", StochasticQuantizer(b)) for b in (2, 4, 8)]
    cases.append(("float32", Float32Quantizer()))
    for name, quantizer in cases:
        payload = codec.encode(quantizer.quantize(x, np.random.default_rng(1)))
        enc = median_time(
            lambda q=quantizer: codec.encode(q.quantize(x, np.random.default_rng(1))), args.repeats
        )
        dec = median_time(
            lambda q=quantizer, p=payload: q.dequantize(codec.decode(p, x.size)), args.repeats
        )
        print(
            f"{name:>10} {enc / base:>12.1f} {dec / base:>12.1f} {len(payload):>10,} "
            f"{x.nbytes / enc / 1e6:>9.0f}"
        )


if __name__ == "__main__":
    main()
