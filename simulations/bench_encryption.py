"""What end-to-end encryption costs per message: bytes added and time to seal / open.

Run: ``python simulations/bench_encryption.py``. For payload sizes from a small linear
model to a 1e6-parameter network at 4 bits and a chain worker (2 recipients), prints the
bytes a sealed message adds (header, wrapped content keys, tag), the time to seal it
for its neighbours and to open it at one neighbour (median of repeats, this machine), and
the per-message time of encoding the same payload (quantize + pack) for scale.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from flower_qgadmm.compression import make_codec, make_quantizer
from flower_qgadmm.crypto import Channel, Keyring, overhead, session_of


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    session = session_of(0, "Gadmm")
    sender = Channel(Keyring.simulated(0, 3, 1), session)
    receiver = Channel(Keyring.simulated(0, 3, 0), session)
    quantizer, codec = make_quantizer("stochastic", bits=4), make_codec("fixed-width")
    rng = np.random.default_rng(0)
    print(
        "| d (4-bit) | payload B | sealed B | added B | added % | seal µs | open µs | encode µs |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for d in (20, 1_370, 4_810, 109_184, 1_000_000):
        v = rng.standard_normal(d)
        payload = codec.encode(quantizer.quantize(v, np.random.default_rng(1)))
        blob = sender.seal(payload, 5, "head", [0, 2])
        assert receiver.open(blob, 1, 4, 5) == (payload, 5)
        repeats = 200 if d < 100_000 else 20
        seal = median_time(lambda p=payload: sender.seal(p, 5, "head", [0, 2]), repeats)
        opened = median_time(lambda b=blob: receiver.open(b, 1, 4, 5), repeats)
        encode = median_time(
            lambda v=v: codec.encode(quantizer.quantize(v, np.random.default_rng(1))), repeats
        )
        added = overhead(blob)
        print(
            f"| {d:,} | {len(payload):,} | {len(blob):,} | {added} | "
            f"{100 * added / len(payload):.1f} | {1e6 * seal:.0f} | {1e6 * opened:.0f} | "
            f"{1e6 * encode:.0f} |"
        )


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__).parse_args()  # --help; no options
    main()
