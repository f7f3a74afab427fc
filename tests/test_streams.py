"""Keyed streams give numpy's default_rng([*prefix, k]) bit for bit, at a fraction of the
cost of building it (flower_qgadmm.streams)."""

from __future__ import annotations

import numpy as np
import pytest

from flower_qgadmm.algorithms import get_algorithm
from flower_qgadmm.streams import BLOCK, KeyedStreams, pcg64_seeds

PREFIXES = [(0, 0), (0, 3), (7, 23), (2**32 - 1, 5), (2**40 + 5, 11), (2**70 + 1, 2**33), (9,), ()]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_block_seeds_are_numpys_pcg64_states(prefix) -> None:
    keys = np.array([0, 1, 2, 17, BLOCK - 1, BLOCK, 3 * BLOCK + 1, 2**32 - 1])
    seeds = pcg64_seeds(prefix, keys)
    for k, seed in zip(keys.tolist(), seeds, strict=True):
        state = np.random.default_rng([*prefix, k]).bit_generator.state["state"]
        assert seed == (state["state"], state["inc"]), (prefix, k)


@pytest.mark.parametrize("prefix", PREFIXES[:6])
def test_streams_draw_what_default_rng_draws_in_any_order_of_keys(prefix) -> None:
    streams = KeyedStreams(prefix)
    keys = [*range(1, 2 * BLOCK + 5), 3, 4, 5, 10**6, 10**6 + 1, 10**6 + 2, 0, 2**32 - 2, 2**33]
    for k in keys:
        got = streams.at(k)
        want = np.random.default_rng([*prefix, k])
        assert np.array_equal(got.random(5), want.random(5)), (prefix, k)
        assert np.array_equal(got.random(3, dtype=np.float32), want.random(3, dtype=np.float32))
        assert got.integers(2**40) == want.integers(2**40)
        assert got.standard_normal() == want.standard_normal()  # buffered draws reset too


def test_streams_refuse_negative_keys_as_numpy_does() -> None:
    with pytest.raises(ValueError):
        KeyedStreams((-1, 0))
    with pytest.raises(ValueError):
        np.random.default_rng([-1, 0])


def test_a_worker_draws_from_its_keyed_stream() -> None:
    from flower_qgadmm.solvers import LeastSquaresSolver
    from flower_qgadmm.topology import chain

    spec = get_algorithm("q-gadmm")
    graph = chain(3)
    rng = np.random.default_rng(0)
    solver = LeastSquaresSolver(rng.standard_normal((6, 2)), rng.standard_normal(6))
    worker = spec.build(
        1, spec.worker.wiring_of(graph, 1, None), solver, spec.Settings(rho=1.0, dual_step=1.0), 42
    )
    for k in (1, 2, 3, 9):
        assert np.array_equal(worker.rng(k).random(4), np.random.default_rng([42, 1, k]).random(4))


def test_a_workers_block_of_keys_stays_small() -> None:
    # Prepare: a block is kept per worker (100,000 workers in one process keep 100,000);
    # as (state, inc) pairs of Python ints it took 47 KB a worker, 4.7 GB for 100,000
    import tracemalloc

    streams = [KeyedStreams((0, n)) for n in range(50)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]

        # Execute: each worker's first two iterations (the first hashes the block)
        for s in streams:
            s.at(1)
            s.at(2)
        per_worker = (tracemalloc.get_traced_memory()[0] - before) / len(streams)
    finally:
        tracemalloc.stop()

    # Assert: the block's seed words (8 KB) and one generator, well under 47 KB
    assert per_worker < 24_000, per_worker
    assert streams[0].at(3).random() == np.random.default_rng([0, 0, 3]).random()
