"""The gossip compressors of CHOCO-SGD and Malcom-PSGD: dithered, top-k, random-k, sign.

All are stateless (the RNG is passed in, the same generator state gives the same
message) and numpy-vectorized. x is the residual ``x_i^{t+1/2} - x_hat_i^t`` to send,
d its dimension.

Dithered (QSGD, Alistarh et al. 2017; "qsgd" of CHOCO-SGD), ``levels`` s >= 1::

    N = ||x||          (l2 by default, or l_inf), rounded UP to a float32
    l_k = floor(s |x_k| / N + u_k),  u_k ~ U[0, 1) independent   (0 <= l_k <= s)
    Q(x)_k = N * sign(x_k) * l_k / s

Message kind "signed": the levels ``sign(x_k) l_k`` in [-s, s] and ``scale = N``.
Rounding N up keeps ``|x_k| / N <= 1``, so ``l_k <= s`` after rounding. Unbiased:
``E[floor(a + u)] = a`` for a >= 0 (levels are clipped at s, which only bites when
``s + u`` rounds up to ``s + 1`` in float64, probability < 2^-52). Each entry is rounded
to one of the two levels around it, so ``|Q(x)_k - x_k| <= N / s``. ``x = 0`` gives
N = 0 and all levels 0. Nominal count (QSGD's dense encoding): ``32 + d (1 +
ceil(log2(s + 1)))`` bits: the norm, then a sign bit and the level of every entry.

CHOCO's variance scaling (``variance_scaling=True``): the receiver rebuilds
``Q(x) / tau`` with ``tau = 1 + min(d / s^2, sqrt(d) / s)`` (Koloskova et al. 2019,
Sec. 5: the scaled QSGD is a compression operator with omega = 1/tau). It is no longer
unbiased, so ``make_quantizer("dithered", ..., variance_scaling=True)`` builds a
:class:`ScaledDitheredQuantizer` (a subclass declaring ``unbiased = False``); the
payload is the same, tau is recomputed by the receiver from d and s.

Top-k (``k`` or ``fraction``): keeps the k entries of largest ``|x_k|`` (ties: the lower
index first), sent as float32; biased. Random-k: k positions drawn uniformly without
replacement from the RNG, the values sent unscaled as ``float32(x_k)``: CHOCO-SGD's
``rand_k`` (Koloskova et al. 2019, Sec. 3; "random-biased" in the authors' code), a
compression operator with ``E ||Q(x) - x||^2 = (1 - k/d) ||x||^2`` (omega = k/d), which
is what CHOCO's convergence needs. The unbiased ``(d/k) x_k`` would have an error of
``(d/k - 1) ||x||^2`` (99 ||x||^2 at 1%): CHOCO diverges with it (measured, and tested).
Biased. Message kind "sparse" (positions + float32 values); nominal count
``k (32 + ceil(log2 d))``: a float32 value and a ceil(log2 d)-bit index per entry. With
``fraction`` f, ``k = min(d, max(1, ceil(f d)))``.

Scaled sign (Karimireddy et al. 2019, "Error feedback fixes SignSGD"):
``Q(x) = sign(x) ||x||_1 / d``, zeros stay zero; biased. Kind "signed" with s = 1 and
``scale = ||x||_1 / d`` rounded up to a float32. Nominal count ``32 + d`` (the scale and
one sign bit per entry; the fixed-width codec needs 2 bits per entry to also carry the
zeros, the source codec ~1 bit per non-zero plus the runs).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from .base import Quantized, Quantizer, register_quantizer
from .quantizers import finite_range, float32_ceil

MAX_SIGNED_LEVEL = 2**31 - 1
"""Largest top level s of a "signed" message (its levels fit an ``int32``)."""


def _integer(value: object, who: str, key: str, low: int, high: int) -> int:
    """``value`` as an int in ``low..high``; ``ValueError`` naming ``who`` and ``key``."""
    out: int | None = None
    if not isinstance(value, (bool, np.bool_)):
        try:
            out = operator.index(value)
        except TypeError:
            if isinstance(value, (float, np.floating)) and float(value).is_integer():
                out = int(value)
    if out is None or not low <= out <= high:
        raise ValueError(f"{who}: {key} must be an integer in {low}..{high}, got {value!r}")
    return out


def signed_width(levels: int) -> int:
    """Bits of one dense signed code in [-s, s]: ``ceil(log2(2s + 1)) = 1 + ceil(log2(s + 1))``."""
    return int(levels).bit_length() + 1


def index_width(dim: int) -> int:
    """Bits of one position in ``0..d-1``: ``ceil(log2 d)`` (0 for d <= 1)."""
    return (int(dim) - 1).bit_length() if dim > 1 else 0


def signed_values(q: Quantized) -> np.ndarray:
    """``scale * code / s`` of a "signed" message, as float64."""
    if q.kind != "signed":
        raise ValueError(f"expected a signed message, got {q.kind!r}")
    if q.scale == 0.0 or q.size == 0:
        return np.zeros(q.size, dtype=np.float64)
    return q.codes.astype(np.float64) * (float(q.scale) / int(q.levels))


def sparse_values(q: Quantized) -> np.ndarray:
    """The dense float64 vector of a "sparse" message (0 off ``index``)."""
    if q.kind != "sparse":
        raise ValueError(f"expected a sparse message, got {q.kind!r}")
    out = np.zeros(q.size, dtype=np.float64)
    out[q.index] = q.codes
    return out


# ---------------------------------------------------------------- dithered

LEVEL_CHUNK = 1 << 15
"""Entries :func:`dithered_levels` handles per step (float64 scratch that stays in cache)."""


def dithered_omega(dim: int, levels: int) -> float:
    """The dithered quantizer's error bound: E|Q(v) - v|^2 <= omega |v|^2 with
    ``omega = min(d / s^2, sqrt(d) / s)`` (QSGD, Alistarh et al. 2017, Lemma 3.1)."""
    return min(dim / levels**2, math.sqrt(dim) / levels)


def dithered_levels(v: np.ndarray, s: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """The int32 levels ``sign(v_k) min(floor(|v_k| s / N + u_k), s)``, ``u = rng.random(d)``.

    Bit for bit the historic one-shot expression (same float64 operations; ``copysign``
    gives ``sign(v) * level`` exactly, as the level is >= 0 and v finite) and the same
    draws (``rng.random(out=...)`` over consecutive chunks is the stream of one
    ``rng.random(d)`` call), :data:`LEVEL_CHUNK` entries at a time in reused buffers.
    """
    n = v.size
    codes = np.empty(n, dtype=np.int32)
    if n == 0:
        return codes
    factor = s / scale
    step = min(LEVEL_CHUNK, n)
    level = np.empty(step)
    u = np.empty(step)
    for start in range(0, n, step):
        m = min(step, n - start)
        lm, um, vm = level[:m], u[:m], v[start : start + m]
        np.abs(vm, out=lm)
        np.multiply(lm, factor, out=lm)
        rng.random(out=um)
        np.add(lm, um, out=lm)
        np.floor(lm, out=lm)
        np.minimum(lm, s, out=lm)
        np.copysign(lm, vm, out=lm)
        codes[start : start + m] = lm
    return codes


@register_quantizer("dithered")
class DitheredQuantizer(Quantizer):
    """QSGD-style dithered quantizer with s levels per sign (see the module docstring).

    Parameters
    ----------
    levels : int
        s >= 1 (default 1, Malcom-PSGD's choice; CHOCO-SGD uses 16).
    norm : {"l2", "linf"}
        The norm N the levels are relative to.
    variance_scaling : bool
        CHOCO's ``Q(x) / tau``; builds a :class:`ScaledDitheredQuantizer` (biased).

    ``quantize`` ignores ``bits`` (the width follows from s).
    """

    unbiased = True
    lossless = False
    kinds = frozenset({"signed"})
    variance_scaling = False

    def __new__(
        cls,
        levels: int = 1,
        norm: str = "l2",
        variance_scaling: bool = False,
        *args: Any,
        **kwargs: Any,
    ):
        # variance_scaling builds the scaled variant of the class: ScaledDitheredQuantizer,
        # or a subclass's own (scaled_class); the signature is __init__'s, which
        # inspect.signature (the compressor setting's parameters) reads from __new__
        return super().__new__(scaled_class(cls) if variance_scaling else cls)

    def __init__(self, levels: int = 1, norm: str = "l2", variance_scaling: bool = False) -> None:
        self.levels = _integer(levels, "dithered", "levels s", 1, MAX_SIGNED_LEVEL)
        if norm not in ("l2", "linf"):
            raise ValueError(f"dithered: norm must be 'l2' or 'linf', got {norm!r}")
        self.norm = norm
        self.bits = signed_width(self.levels)

    def __repr__(self) -> str:
        scaling = ", variance_scaling=True" if self.variance_scaling else ""
        return f"{type(self).__name__}(levels={self.levels}, norm={self.norm!r}{scaling})"

    def quantize(
        self, x: np.ndarray, rng: np.random.Generator, bits: int | None = None
    ) -> Quantized:
        v, amax = finite_range(x)
        s = self.levels
        norm = amax if self.norm == "linf" else max(float(np.linalg.norm(v)), amax)
        scale = float32_ceil(norm) if v.size else 0.0
        if not math.isfinite(scale):
            raise ValueError(f"dithered: the {self.norm} norm of x is beyond the float32 range")
        if scale == 0.0:
            return Quantized(np.zeros(v.size, np.int32), 0.0, self.bits, "signed", s)
        return Quantized(dithered_levels(v, s, scale, rng), scale, self.bits, "signed", s)

    def tau(self, dim: int, levels: int) -> float:
        """CHOCO's ``tau = 1 + min(d / s^2, sqrt(d) / s)`` (1 without variance scaling)."""
        if not self.variance_scaling:
            return 1.0
        return 1.0 + dithered_omega(dim, levels)

    def shrink(self, dim: int) -> float:
        """:meth:`tau` at this quantizer's levels (E[Q(x) / tau] = x / tau)."""
        return self.tau(dim, self.levels)

    def dequantize(self, q: Quantized) -> np.ndarray:
        out = signed_values(q)
        tau = self.tau(q.size, q.levels)
        return out / tau if tau != 1.0 else out

    def nominal_bits(self, q: Quantized) -> int:
        """``32 + d (1 + ceil(log2(s + 1)))``: the norm, a sign and a level per entry."""
        return 32 + q.size * signed_width(q.levels)

    def error_bound(self, q: Quantized) -> float:
        """``N / s``; with variance scaling ``N / (s tau) + (1 - 1/tau) N`` (as
        ``|x_k| <= N``)."""
        if q.levels < 1:
            return math.inf
        tau = self.tau(q.size, q.levels)
        return q.scale / (q.levels * tau) + (1.0 - 1.0 / tau) * q.scale


class ScaledDitheredQuantizer(DitheredQuantizer):
    """The dithered quantizer with CHOCO's variance scaling ``Q(x) / tau`` (biased).

    Built by ``make_quantizer("dithered", ..., variance_scaling=True)``.
    """

    unbiased = False
    variance_scaling = True


_SCALED: dict[type, type] = {DitheredQuantizer: ScaledDitheredQuantizer}


def scaled_class(cls: type) -> type:
    """The variance-scaled variant of a :class:`DitheredQuantizer` class (itself if it
    scales): :class:`ScaledDitheredQuantizer` for the built-in one, a subclass of ``cls``
    (made once) for a quantizer derived from it, so its own methods still apply."""
    if cls.variance_scaling:
        return cls
    if cls not in _SCALED:
        doc = f"{cls.__name__} with CHOCO's variance scaling (biased)."
        attributes = {
            "unbiased": False,
            "variance_scaling": True,
            "__doc__": doc,
            "__module__": cls.__module__,
        }
        _SCALED[cls] = type(f"Scaled{cls.__name__}", (cls,), attributes)
    return _SCALED[cls]


# ---------------------------------------------------------------- sparsifiers


class _Sparsifier(Quantizer):
    """k entries as (positions, float32 values); ``k`` or ``fraction`` of d."""

    unbiased = False
    lossless = False
    kinds = frozenset({"sparse"})
    bits = 32

    def __init__(self, k: int | None = None, fraction: float | None = None) -> None:
        who = self.registered_name
        if (k is None) == (fraction is None):
            raise ValueError(f"{who}: give exactly one of k and fraction")
        self.k = None if k is None else _integer(k, who, "k", 1, 2**32 - 1)
        self.fraction = None
        if fraction is not None:
            number = isinstance(fraction, (int, float, np.integer, np.floating))
            if isinstance(fraction, bool) or not number or not 0.0 < fraction <= 1.0:
                raise ValueError(f"{who}: fraction must be in (0, 1], got {fraction!r}")
            self.fraction = float(fraction)

    def __repr__(self) -> str:
        arg = f"k={self.k}" if self.k is not None else f"fraction={self.fraction}"
        return f"{type(self).__name__}({arg})"

    def count(self, dim: int) -> int:
        """k for a vector of dimension d (``ValueError`` if a fixed k exceeds d)."""
        if self.k is not None:
            if self.k > dim:
                raise ValueError(
                    f"{self.registered_name}: k = {self.k} exceeds the dimension {dim}"
                )
            return self.k
        if dim == 0:
            return 0
        return min(dim, max(1, math.ceil(self.fraction * dim)))

    def message(self, index: np.ndarray, values: np.ndarray, dim: int) -> Quantized:
        return Quantized(
            values.astype(np.float32), 0.0, 32, "sparse", index=index.astype(np.int64), dim=dim
        )

    def dequantize(self, q: Quantized) -> np.ndarray:
        return sparse_values(q)

    def nominal_bits(self, q: Quantized) -> int:
        """``k (32 + ceil(log2 d))``: a float32 value and an index per kept entry."""
        return int(q.codes.shape[0]) * (32 + index_width(q.size))


@register_quantizer("top-k")
class TopKQuantizer(_Sparsifier):
    """The k entries of largest magnitude (ties: lower index first), as float32; biased.

    Parameters
    ----------
    k : int, optional
        Entries kept (``ValueError`` at ``quantize`` if k > d).
    fraction : float, optional
        Or the fraction f in (0, 1]: ``k = min(d, max(1, ceil(f d)))``.

    O(d) selection (``np.partition`` plus an index-ordered tie break); ignores ``rng``.
    """

    def quantize(
        self, x: np.ndarray, rng: np.random.Generator | None = None, bits: int | None = None
    ) -> Quantized:
        v, _ = finite_range(x)
        d = v.size
        k = self.count(d)
        if k == d:
            index = np.arange(d)
        else:
            mag = np.abs(v)
            kth = mag[np.argpartition(mag, d - k)[d - k]]  # the k-th largest magnitude
            above = np.flatnonzero(mag > kth)
            ties = np.flatnonzero(mag == kth)[: k - above.size]
            index = np.sort(np.concatenate([above, ties]))
        return self.message(index, v[index], d)

    def error_bound(self, q: Quantized) -> float:
        """A dropped entry is no larger than the smallest kept one; a kept one is off by
        its float32 rounding: ``max(min|kept| (1 + 2^-23) if k < d, max|kept| 2^-23)``."""
        kept = np.abs(q.codes.astype(np.float64))
        if kept.size == 0:
            return 0.0
        dropped = float(kept.min()) * (1 + 2.0**-23) if kept.size < q.size else 0.0
        return max(dropped, float(kept.max()) * 2.0**-23) + 2.0**-149


@register_quantizer("random-k")
class RandomKQuantizer(_Sparsifier):
    """k positions uniformly without replacement, values ``float32(x_k)`` unscaled:
    CHOCO-SGD's ``rand_k``, ``E ||Q(x) - x||^2 = (1 - k/d) ||x||^2``; biased.

    Parameters as :class:`TopKQuantizer`. The positions come from
    ``rng.choice(d, k, replace=False)`` (sorted), so the RNG state fixes the message.
    """

    unbiased = False

    def quantize(
        self, x: np.ndarray, rng: np.random.Generator, bits: int | None = None
    ) -> Quantized:
        v, _ = finite_range(x)
        d = v.size
        k = self.count(d)
        index = np.sort(rng.choice(d, size=k, replace=False)) if k else np.zeros(0, np.int64)
        return self.message(index, v[index], d)

    def shrink(self, dim: int) -> float:
        """d / k: each entry is kept, unscaled, with probability k / d."""
        k = self.count(dim)
        return dim / k if k else 1.0

    def error_bound(self, q: Quantized) -> float:
        """Unbounded by the message: a dropped entry can be anything (``math.inf``)."""
        return math.inf


# ---------------------------------------------------------------- scaled sign


@register_quantizer("sign")
class SignQuantizer(Quantizer):
    """Scaled sign ``sign(x) ||x||_1 / d`` (zeros stay zero); biased.

    Kind "signed" with s = 1; ``scale = ||x||_1 / d`` rounded up to a float32. Ignores
    ``rng`` and ``bits``.
    """

    unbiased = False
    lossless = False
    kinds = frozenset({"signed"})
    levels = 1
    bits = 2

    def __repr__(self) -> str:
        return "SignQuantizer()"

    def quantize(
        self, x: np.ndarray, rng: np.random.Generator | None = None, bits: int | None = None
    ) -> Quantized:
        v, _ = finite_range(x)
        d = v.size
        scale = float32_ceil(float(np.sum(np.abs(v))) / d) if d else 0.0
        codes = np.sign(v).astype(np.int32) if scale else np.zeros(d, np.int32)
        return Quantized(codes, scale, self.bits, "signed", 1)

    def dequantize(self, q: Quantized) -> np.ndarray:
        return signed_values(q)

    def nominal_bits(self, q: Quantized) -> int:
        """``32 + d``: the scale and one sign bit per entry."""
        return 32 + q.size

    def error_bound(self, q: Quantized) -> float:
        """``d * scale`` (>= ``||x||_1 >= |x_k|`` and >= scale)."""
        return q.scale * max(q.size, 1)
