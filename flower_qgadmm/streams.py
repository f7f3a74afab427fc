"""Keyed random streams: ``np.random.default_rng([*prefix, k])`` for k = 1, 2, ...,
without building a new generator for every k.

A worker draws at iteration k from ``default_rng([seed, node, k])``: reproducible,
independent per worker and stateless (nothing about the RNG lives in the worker's
state). Building that generator costs about 11 us (numpy hashes the key into a
``SeedSequence``, seeds a ``PCG64`` and wraps it), as much as a whole step of a small
model. :class:`KeyedStreams` is created once per worker and returns one reused
``Generator`` set to exactly the state ``default_rng([*prefix, k])`` would start from:
the ``SeedSequence`` hash of a block of consecutive keys is computed at once with numpy
(:func:`seed_words`, the algorithm of ``numpy/random/bit_generator.pyx``) and kept as
4 uint64 words per key (8 KB per worker), then the ``PCG64`` seeding (two steps of its
128-bit LCG, :func:`pcg64_state`) when a key is used. Keys that are not the next of the
previous one (a worker rebuilt for one Flower message, a jump) take numpy's own path, so
one-off keys cost what they did.

The same draws as numpy's, bit for bit: ``tests/test_streams.py`` compares the states and
draws with ``default_rng`` over many keys, seeds of one and several 32-bit words, and
block boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_M32 = np.uint32(0xFFFFFFFF)
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875  # SeedSequence's constants (bit_generator.pyx)
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_XSHIFT = 16
_POOL = 4  # SeedSequence's default pool size (words of 32 bits)
_PCG_MULT = (2549297995355413924 << 64) + 4865540595714422341  # PCG64's multiplier
_M128 = (1 << 128) - 1
BLOCK = 256  # keys hashed at once
_HIGH = np.uint64(32)


def _words(value: int) -> list[int]:
    """A non-negative int as SeedSequence reads it: 32-bit words, least significant
    first (0 is one word)."""
    if value < 0:
        raise ValueError(f"keys must be non-negative, got {value}")
    out = [value & 0xFFFFFFFF]
    value >>= 32
    while value:
        out.append(value & 0xFFFFFFFF)
        value >>= 32
    return out


def pcg64_seeds(prefix: Sequence[int], keys: np.ndarray) -> list[tuple[int, int]]:
    """(state, inc) of ``PCG64(SeedSequence([*prefix, k]))`` for each k in ``keys``
    (all below 2^32): numpy's SeedSequence hash, vectorized over the keys, then PCG64's
    seeding."""
    return [pcg64_state(*words) for words in seed_words(prefix, keys).tolist()]


def pcg64_state(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int]:
    """(state, inc) of a ``PCG64`` seeded with the 4 words of :func:`seed_words`."""
    initstate, initseq = (v0 << 64) | v1, (v2 << 64) | v3
    inc = ((initseq << 1) | 1) & _M128
    state = inc  # 0 * mult + inc: the first step from state 0
    state = (state + initstate) & _M128
    state = (state * _PCG_MULT + inc) & _M128
    return state, inc


def seed_words(prefix: Sequence[int], keys: np.ndarray) -> np.ndarray:
    """The 4 uint64 words ``SeedSequence([*prefix, k]).generate_state(4, uint64)`` of
    each k in ``keys`` (all below 2^32), one row per key: numpy's SeedSequence hash,
    vectorized over the keys (8 KB for a block of 256 keys, where their (state, inc)
    pairs as Python ints take 37 KB)."""
    head = [w for p in prefix for w in _words(int(p))]
    n = len(keys)
    with np.errstate(over="ignore"):
        entropy = [np.full(n, w, dtype=np.uint32) for w in head]
        entropy.append(np.asarray(keys, dtype=np.uint32))
        const = [_INIT_A]

        def hashmix(value: np.ndarray) -> np.ndarray:
            value = value ^ np.uint32(const[0])
            const[0] = (const[0] * _MULT_A) & 0xFFFFFFFF
            value = value * np.uint32(const[0])
            return value ^ (value >> np.uint32(_XSHIFT))

        def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            result = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
            return result ^ (result >> np.uint32(_XSHIFT))

        zero = np.zeros(n, dtype=np.uint32)
        pool = [hashmix(entropy[i] if i < len(entropy) else zero) for i in range(_POOL)]
        for src in range(_POOL):
            for dst in range(_POOL):
                if src != dst:
                    pool[dst] = mix(pool[dst], hashmix(pool[src]))
        for src in range(_POOL, len(entropy)):
            for dst in range(_POOL):
                pool[dst] = mix(pool[dst], hashmix(entropy[src]))
        # generate_state(4, uint64): 8 words from the pool, read as 4 little-endian uint64
        words = []
        hconst = _INIT_B
        for i in range(8):
            value = pool[i % _POOL] ^ np.uint32(hconst)
            hconst = (hconst * _MULT_B) & 0xFFFFFFFF
            value = value * np.uint32(hconst)
            words.append(value ^ (value >> np.uint32(_XSHIFT)))
        # the 4 uint64 of each key (word 2j low, 2j + 1 high), combined for all keys at once
        out = np.empty((n, 4), dtype=np.uint64)
        for j in range(4):
            out[:, j] = words[2 * j].astype(np.uint64) | (
                words[2 * j + 1].astype(np.uint64) << _HIGH
            )
    return out


class KeyedStreams:
    """``at(k)`` is a generator in the state of ``np.random.default_rng([*prefix, k])``.

    The generator is the same object at every call (valid until the next call).
    """

    def __init__(self, prefix: Sequence[int]) -> None:
        self.prefix = tuple(int(p) for p in prefix)
        for p in self.prefix:
            _words(p)  # refuses negative parts, as numpy does
        self._bits: np.random.PCG64 | None = None  # built at the first block (not per
        self._generator: np.random.Generator | None = None  # worker of one Flower message)
        self._start = 0  # first key of the hashed block
        # the block's seed words (seed_words), a row per key: 8 KB per worker, where the
        # keys' (state, inc) as Python ints took 37 KB (3.7 GB for 100,000 workers)
        self._block = np.empty((0, 4), dtype=np.uint64)
        self._last: int | None = None

    def at(self, key: int) -> np.random.Generator:
        key = int(key)
        last, self._last = self._last, key
        inside = self._start <= key < self._start + len(self._block)
        if not inside:
            if last is None or key != last + 1 or not 0 <= key < 2**32 - BLOCK:
                return np.random.default_rng([*self.prefix, key])  # one-off: numpy's path
            self._start = key
            self._block = seed_words(self.prefix, np.arange(key, key + BLOCK))
            if self._bits is None:
                self._bits = np.random.PCG64(0)
                self._generator = np.random.Generator(self._bits)
        state, inc = pcg64_state(*self._block[key - self._start].tolist())
        self._bits.state = {
            "bit_generator": "PCG64",
            "state": {"state": state, "inc": inc},
            "has_uint32": 0,
            "uinteger": 0,
        }
        return self._generator
