"""Cheap whole-vector checks for the hot path: one BLAS dot product usually decides; the
largest eigenvalue of a symmetric matrix without its whole spectrum (large d); and
numpy's sum of a mostly-zero vector without the zeros (large sparse graphs).

For a 1-D float64 ``x`` (float32 too, for :func:`all_finite`), ``sum_i x_i^2`` (BLAS
``ddot`` called directly: no numpy overhead, and no overflow warning for huge entries,
whose sum is then Inf) is finite only if every entry is, and bounds every ``x_i^2`` from
above. When the dot product cannot decide (another shape or dtype, a huge or non-finite
``x``), the exact numpy check answers, so the result is always that of the exact check.
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_left
from collections.abc import Sequence

import numpy as np
from scipy.linalg import get_lapack_funcs
from scipy.linalg.blas import ddot, idamax, sdot

_FLOAT64 = np.dtype(np.float64)
_FLOAT32 = np.dtype(np.float32)


def _sum_of_squares(x: np.ndarray) -> float | None:
    """``sum_i x_i^2`` of a non-empty 1-D float64 ``x``; None for anything else."""
    if x.ndim == 1 and x.dtype is _FLOAT64 and x.size:
        return ddot(x, x)
    return None


def max_abs(x: np.ndarray) -> float | None:
    """``max_i |x_i|`` of a non-empty 1-D float64 ``x`` whose sum of squares is finite
    (so every entry is): the entry BLAS ``idamax`` points to (the first of largest
    magnitude), exactly ``float(np.abs(x).max())`` in two calls instead of numpy's
    reductions; None for anything else (the caller's exact path answers)."""
    squares = _sum_of_squares(x)
    if squares is None or not math.isfinite(squares):
        return None
    return abs(float(x[idamax(x)]))


def all_finite(x: np.ndarray) -> bool:
    """``np.isfinite(x).all()`` (True for an empty ``x``). A 1-D float32 ``x`` is summed
    in float32 (``sdot``): a finite sum still proves every entry finite, and a sum that
    overflows (entries beyond about 1.8e19) goes to the exact check."""
    if x.ndim == 1 and x.size:  # _sum_of_squares inlined (a check of every step)
        if x.dtype is _FLOAT64:
            if math.isfinite(ddot(x, x)):
                return True
        elif x.dtype == _FLOAT32 and math.isfinite(float(sdot(x, x))):
            return True
    return bool(np.isfinite(x).all())


def number(value: object, what: str) -> float:
    """``float(value)`` (a 0-d array or tensor too); a ValueError saying ``what`` returned
    something else."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{what} returned {value!r}, not a number") from None


def within(x: np.ndarray, bound: float) -> bool:
    """``max |x_i| <= bound`` (False if an entry is NaN; True for an empty ``x``), the
    answer of ``float(np.abs(x).max()) <= bound``: a sum of squares below ``0.99
    bound^2`` (its rounding error is a relative d * 2^-53, far below the margin) proves
    every ``|x_i| < bound``."""
    # _sum_of_squares inlined: several checks of every step
    if x.ndim == 1 and x.dtype is _FLOAT64 and x.size and ddot(x, x) <= 0.99 * bound * bound:
        return True
    return (float(np.abs(x).max()) if x.size else 0.0) <= bound


def row_dots(a: np.ndarray) -> np.ndarray:
    """``[row.dot(row) for row in a]`` of a 2-D float64 ``a``, the same floats (numpy's
    stacked matmul of a row by a column calls the dot product ``ndarray.dot`` calls, once
    per row), in one call."""
    return np.matmul(a[:, None, :], a[:, :, None]).reshape(-1)


def rows_within(a: np.ndarray, bound: float) -> np.ndarray:
    """:func:`within` of every row of a 2-D float64 ``a`` (a boolean per row): one sum of
    squares of the whole array below ``0.99 bound^2`` proves every entry below ``bound``
    (whatever order adds it); otherwise the rows' sums decide, the rest are checked
    exactly."""
    if _far_inside(a, bound):
        return np.ones(a.shape[0], dtype=bool)
    ok = row_dots(a) <= 0.99 * bound * bound
    for i in np.flatnonzero(~ok):
        ok[i] = within(a[i], bound)
    return ok


def rows_beyond(a: np.ndarray, bound: float) -> list[int]:
    """The indices of the rows of a 2-D ``a`` that are not :func:`within` ``bound`` (the
    rows :func:`rows_within` marks False): none, after one sum of squares, when every
    entry is far below it (the usual case, without the array of answers)."""
    return [] if _far_inside(a, bound) else np.flatnonzero(~rows_within(a, bound)).tolist()


def _far_inside(a: np.ndarray, bound: float) -> bool:
    """One sum of squares of the whole float64 ``a`` below ``0.99 bound^2`` (whatever order
    adds it): every entry is below ``bound``, none is NaN."""
    flat = a.reshape(-1)
    return flat.dtype is _FLOAT64 and flat.size > 0 and ddot(flat, flat) <= 0.99 * bound * bound


@functools.cache
def _lapack_of(name: str, dtype: str, fortran: bool) -> object:
    example = np.empty((1, 1), dtype, order="F" if fortran else "C")
    (routine,) = get_lapack_funcs((name,), (example,))
    return routine


def lapack(name: str, array: np.ndarray) -> object:
    """scipy's LAPACK routine ``name`` for ``array`` (``get_lapack_funcs((name,),
    (array,))``), looked up once per type and layout: kept here, not on the objects that
    call it, which can then be copied and pickled (a LAPACK routine cannot)."""
    flags = array.flags  # a new flags object at every access
    fortran = bool(flags.f_contiguous and not flags.c_contiguous)
    return _lapack_of(name, array.dtype.char, fortran)


_new, _set = object.__new__, object.__setattr__


def frozen_at_once(cls: type, fields: dict) -> object:
    """An instance of the frozen dataclass ``cls`` (no slots) holding ``fields`` (every
    field, by name), set at once instead of through its per-field ``__setattr__`` and
    ``__post_init__``: for objects built once per message, whose builder knows the
    ``__post_init__`` has nothing to do. The same object (equality, repr, pickling)."""
    obj = _new(cls)
    _set(obj, "__dict__", fields)
    return obj


#: Largest size whose top eigenvalue :func:`largest_eigenvalue` takes from the whole
#: spectrum (LAPACK ``syevd``, O(d^3): 0.08 s at d = 512, about 1 s at 3000 here).
EXACT_SPECTRUM_DIM = 512


def lanczos_eigenvalue(a: object, which: str, tol: float) -> float:
    """One extreme eigenvalue of the symmetric ``a`` (a dense or sparse matrix, or a
    ``LinearOperator``): ARPACK's Lanczos (``scipy.sparse.linalg.eigsh``, ``which`` "LA"
    or "SA", tolerance ``tol``, 0 = machine precision) from a fixed start vector, so that
    the same matrix gives the same float on every run."""
    from scipy.sparse.linalg import eigsh

    start = np.random.default_rng(0).standard_normal(a.shape[0])
    (value,) = eigsh(a, k=1, which=which, tol=tol, v0=start, return_eigenvectors=False)
    return float(value)


def largest_eigenvalue(a: np.ndarray) -> float:
    """lambda_max of the symmetric matrix ``a`` (0 for an empty one).

    Up to :data:`EXACT_SPECTRUM_DIM` from ``np.linalg.eigvalsh`` (the whole spectrum);
    above, by :func:`lanczos_eigenvalue` to machine precision: O(d^2) per iteration,
    measured 0.025 s against 0.95 s at d = 3,000, equal to 2e-16 (relative). A matrix
    with NaN/Inf, or one ARPACK does not converge on, takes the exact path."""
    d = a.shape[0]
    if d == 0:
        return 0.0
    if d > EXACT_SPECTRUM_DIM and np.isfinite(a).all():
        from scipy.sparse.linalg import ArpackError, ArpackNoConvergence

        try:
            return lanczos_eigenvalue(a, "LA", 0.0)
        except (ArpackError, ArpackNoConvergence):
            pass
    return float(np.linalg.eigvalsh(a)[-1])


#: numpy's pairwise summation: blocks of up to 128 entries summed with 8 accumulators,
#: larger ranges split in two at a multiple of 8 (``pairwise_sum`` in numpy's
#: ``loops_utils.h.src``).
_PAIRWISE_BLOCK, _UNROLL = 128, 8


def dense_sum(positions: Sequence[int], values: Sequence[float], n: int) -> float:
    """``float(a.sum())`` of the length-``n`` float64 vector ``a`` that holds ``values``
    at the increasing ``positions`` and 0 elsewhere, without building ``a``: numpy's
    pairwise summation, in which the order of the additions depends on the positions
    (so a plain sum of ``values`` can differ in the last bit once there are three).
    Time O(len(values) log n), not O(n); checked against numpy on random rows in
    ``tests/test_topology.py``."""
    if len(values) <= 2:  # 0 + a, a + b: the same float in any order
        return sum(values, 0.0)
    return _pairwise(list(positions), list(values), 0, n)


def _pairwise(positions: list[int], values: list[float], lo: int, n: int) -> float:
    """numpy's pairwise sum of entries ``lo .. lo + n - 1`` (``positions`` sorted)."""
    first, last = bisect_left(positions, lo), bisect_left(positions, lo + n)
    if first == last:
        return 0.0
    if n < _UNROLL:  # one accumulator, from 0
        total = 0.0
        for v in values[first:last]:
            total += v
        return total
    if n <= _PAIRWISE_BLOCK:
        r = [0.0] * _UNROLL  # r[j] sums the entries j, j + 8, ... of the whole blocks
        blocks = n - n % _UNROLL
        tail = []  # the entries after the last whole block, added one by one
        for p, v in zip(positions[first:last], values[first:last], strict=True):
            if p - lo < blocks:
                r[(p - lo) % _UNROLL] += v
            else:
                tail.append(v)
        total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for v in tail:
            total += v
        return total
    half = n // 2
    half -= half % _UNROLL
    left = _pairwise(positions, values, lo, half)
    return left + _pairwise(positions, values, lo + half, n - half)
