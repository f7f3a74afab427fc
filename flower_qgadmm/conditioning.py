"""Feature conditioning for least squares: the linear change of coordinates u = T theta.

The relay chooses T once at set-up from statistics the workers already send (their
column moments and X_n^T X_n); no data leave a worker. Each worker then solves with the
features ``X T^{-1}`` in the coordinates ``u = T theta``. Since ``X theta = (X T^{-1}) u``,
the loss, F, F* and the gap are unchanged; only the conditioning of the vector the
workers exchange (and penalise, and quantize) changes. Everything reported leaves in
original units (``theta = T^{-1} u``).

Two transforms:

- **column RMS** (diagonal): ``T = diag(s)``, ``s_j = sqrt(sum_n sum_i X_nij^2 / m)`` from
  the column moments: every coordinate at the same scale. With a ridge that is not
  negligible against a column's squares (:data:`RIDGE_VISIBLE`), ``s_j`` comes from the
  diagonal of the summed Hessians ``sum_n (X_n^T X_n + l2 I)`` instead, so a tiny (or
  all-zero) column's scaled curvature stays ~1, not ``l2 / s_j^2``;
- **whitening** (upper triangular): ``T = R diag(s)`` with ``R^T R = C`` the Cholesky
  factor of the RMS-scaled global second-moment matrix ``C = diag(s)^{-1} (sum_n X_n^T
  X_n / m) diag(s)^{-1}`` (unit diagonal). Then ``sum_n (X_n T^{-1})^T (X_n T^{-1}) = m I``:
  the *global* Hessian is perfectly conditioned, and with data spread evenly over the
  workers each local one is close to ``(m_n / m) m I``. This is the preconditioning of
  least squares by the Cholesky factor of the normal matrix (Golub and Van Loan, Matrix
  Computations, 4th ed., section 5.3; as a preconditioner for ADMM: Giselsson and Boyd,
  "Linear convergence and metric selection for Douglas-Rachford splitting and ADMM",
  IEEE TAC 62(2), 2017, which shows the rate depends on the conditioning in the chosen
  metric). Columns are scaled first so that the factorisation sees a unit diagonal.
  Whitening is used when the RMS-scaled matrix is well enough conditioned to factor
  accurately (condition number <= :data:`MAX_CONDITION`) and ``d <=`` :data:`WHITEN_MAX_DIM`;
  otherwise the relay keeps the diagonal scale (and says why).

A transform travels as an array: 1-D (the diagonal ``s``) or 2-D (the upper triangular
``T``), the form the solvers, the Flower set-up record and checkpoints use.

The set-up's factorisation and triangular solves with many right-hand sides run on one
BLAS thread (:func:`one_blas_thread`): OpenBLAS splits blocked ``dtrsm`` work by thread
count, which changes the rounding, so histories differed in their last bits between
machines (and ``OPENBLAS_NUM_THREADS`` settings) before; now they do not.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np
from scipy.linalg import solve_triangular
from threadpoolctl import ThreadpoolController

from .numeric import all_finite, lapack

F = TypeVar("F", bound=Callable)


@functools.lru_cache(maxsize=1)
def _blas() -> ThreadpoolController:
    """The BLAS libraries of this process, found once: ``threadpool_limits`` would scan
    the process's loaded libraries again at every call (about 1 ms: 66 of the 70 ms a
    24-worker set-up took). numpy's and scipy's BLAS are loaded by this module's imports,
    before the first call."""
    return ThreadpoolController()


_INSIDE = [0]  # depth of the blocks of single_blas_thread open (BLAS limits are global)


@contextlib.contextmanager
def single_blas_thread() -> Iterator[None]:
    """Every BLAS library (numpy's and scipy's) on one thread inside the block, so its
    floats do not depend on the machine's thread count (set-up only). Re-entrant: a
    block inside another costs nothing, so a loop over many workers opens one around
    the loop instead of a limit per call (setting and restoring one took about 40 us,
    3 per worker: 12 s of the set-up of 100,000 workers)."""
    if _INSIDE[0]:
        _INSIDE[0] += 1
        try:
            yield
        finally:
            _INSIDE[0] -= 1
        return
    with _blas().limit(limits=1, user_api="blas"):
        _INSIDE[0] = 1
        try:
            yield
        finally:
            _INSIDE[0] = 0


def one_blas_thread(func: F) -> F:
    """Run ``func`` inside :func:`single_blas_thread`."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with single_blas_thread():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


MAX_CONDITION = 1e10
"""Largest condition number of the RMS-scaled second-moment matrix that is whitened: its
Cholesky factor then keeps about 6 significant digits in float64."""

RIDGE_VISIBLE = 1e-9
"""A ridge counts in the feature scale once it adds this much (relative) to a column's
summed squares."""

WHITEN_MAX_DIM = 1024
"""Beyond this model size the relay keeps the diagonal scale: the d x d transform would
be sent to every worker at set-up and the d^3 factorisation grows."""


def column_rms(count: float, squares: np.ndarray) -> np.ndarray:
    """Global column RMS from the summed moments; ValueError for an all-zero column."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rms = np.sqrt(np.asarray(squares, dtype=np.float64) / count)
    ok = np.isfinite(rms) & (rms > 0)
    if not np.all(ok):
        raise ValueError(
            "feature scaling: column(s) "
            f"{np.flatnonzero(~ok).tolist()} are all zero or overflow: drop or rescale them"
        )
    return rms


@one_blas_thread
def whitening(gram: np.ndarray, count: float, rms: np.ndarray) -> tuple[np.ndarray | None, str]:
    """(T, "") with ``T = R diag(rms)`` (see the module docstring) from the summed
    Hessians ``X^T X + l2 I`` of all workers and their row count; (None, reason) when the
    matrix is too large or too ill-conditioned to factor accurately."""
    d = rms.shape[0]
    if d > WHITEN_MAX_DIM:
        return None, f"d = {d} > {WHITEN_MAX_DIM}"
    corr = np.asarray(gram, dtype=np.float64) / count / np.outer(rms, rms)
    corr = 0.5 * (corr + corr.T)
    eig = np.linalg.eigvalsh(corr)
    if not (eig[0] > 0 and eig[-1] / eig[0] <= MAX_CONDITION):
        cond = eig[-1] / eig[0] if eig[0] > 0 else float("inf")
        return None, f"the scaled second-moment matrix has condition number {cond:.3g}"
    try:
        upper = np.linalg.cholesky(corr).T
    except np.linalg.LinAlgError:
        return None, "the scaled second-moment matrix is not positive definite"
    return upper * rms, ""


class FeatureTransform:
    """u = T theta for a diagonal (1-D array) or upper triangular (2-D array) ``T``."""

    def __init__(self, transform: np.ndarray, dim: int) -> None:
        # C order whatever the source (a transposed Cholesky factor is F-ordered): LAPACK
        # then gets the same layout, and rounds the same, in every transport
        t = np.ascontiguousarray(transform, dtype=np.float64)
        if t.ndim == 1 and t.size == dim * dim and dim > 1:  # a flattened matrix (a record)
            t = t.reshape(dim, dim)
        if t.shape == (dim,):
            if not np.all(np.isfinite(t) & (t > 0)):
                raise ValueError(f"feature scale must be {dim} finite numbers > 0")
        elif t.shape == (dim, dim):
            diag = np.diag(t)
            if not (np.all(np.isfinite(t)) and np.all(diag > 0) and not np.any(np.tril(t, -1))):
                raise ValueError(
                    "feature transform must be upper triangular, finite, with a positive diagonal"
                )
        else:
            raise ValueError(
                f"feature transform must have shape ({dim},) or ({dim}, {dim}), got {t.shape}"
            )
        self.array = t
        self.diagonal = t.ndim == 1

    def to_internal(self, theta: np.ndarray) -> np.ndarray:
        """u = T theta."""
        return theta * self.array if self.diagonal else self.array @ theta

    def to_original(self, u: np.ndarray) -> np.ndarray:
        """theta = T^{-1} u (a model is pulled every evaluation round)."""
        if self.diagonal:
            return u / self.array
        return self._solve(u)

    def _solve(self, b: np.ndarray, trans: bool = False) -> np.ndarray:
        """``scipy.linalg.solve_triangular(T, b, trans="T" if trans else "N")``: a finite
        float64 ``b`` of T's rows goes straight to LAPACK's ``trtrs`` with the arguments
        ``solve_triangular`` passes it for this C-ordered T (the transposed, lower
        system: the same floats, without its input validation, about 50 us a call: 8
        calls per worker at set-up); anything else through ``solve_triangular`` (its
        checks and errors)."""
        t = self.array
        if (
            type(b) is np.ndarray
            and b.dtype == np.float64
            and b.ndim in (1, 2)
            and b.shape[0] == t.shape[0]
            and b.size
            and not t.flags.f_contiguous  # a 1 x 1 T is both: solve_triangular's other call
            and (all_finite(b) if b.ndim == 1 else bool(np.isfinite(b).all()))
        ):
            x, info = lapack("trtrs", t)(t.T, b, overwrite_b=False, lower=True, trans=not trans)
            if info == 0:
                return x
        return solve_triangular(t, b, trans="T" if trans else "N")

    @one_blas_thread
    def features(self, X: np.ndarray) -> np.ndarray:
        """X T^{-1}."""
        if self.diagonal:
            return X / self.array
        return self._solve(X.T, trans=True).T

    @one_blas_thread
    def statistics(self, gram: np.ndarray, xty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T^{-T} G T^{-1}, T^{-T} b) for G = X^T X (+ ridge), b = X^T y."""
        gram, xty = np.asarray(gram, dtype=np.float64), np.asarray(xty, dtype=np.float64)
        if self.diagonal:
            s = self.array
            return gram / np.outer(s, s), xty / s
        left = self._solve(gram, trans=True)  # T^{-T} G
        inner = self._solve(left.T, trans=True).T  # (T^{-T} (T^{-T} G)^T)^T
        return 0.5 * (inner + inner.T), self._solve(xty, trans=True)


def global_transform(
    moments: Sequence[dict], grams: Sequence[np.ndarray] | None, whiten: bool
) -> tuple[np.ndarray, str]:
    """The relay's choice: (T as an array, a note). Moments and grams summed in worker
    order (the same bits in every transport). ``grams`` are the workers' local Hessians
    X_n^T X_n + l2 I (the ridge is part of the curvature T should even out), or None
    (then the column RMS)."""
    count = sum(float(np.asarray(m["count"]).reshape(-1)[0]) for m in moments)
    squares = np.zeros(np.asarray(moments[0]["squares"]).shape[0])
    for m in moments:
        squares = squares + np.asarray(m["squares"], dtype=np.float64)
    total = None
    if grams is not None:
        total = np.zeros((squares.shape[0], squares.shape[0]))
        for g in grams:
            total = total + np.asarray(g, dtype=np.float64)
        diagonal = np.diagonal(total)
        # the ridge l2 I is curvature too: where it is not negligible against a column's
        # squares (a tiny column, an all-zero one), scale by the Hessian's diagonal, or
        # that column's scaled curvature l2 / s_j^2 explodes (without a ridge the two
        # agree to round-off and the squares are kept, bit for bit)
        if np.any(diagonal > squares * (1 + RIDGE_VISIBLE)):
            squares = diagonal.copy()
    rms = column_rms(count, squares)
    if not whiten or total is None:
        return rms, "column RMS"
    upper, reason = whitening(total, count, rms)
    if upper is None:
        return rms, f"column RMS (not whitened: {reason})"
    return upper, "whitened (Cholesky factor of the global second-moment matrix)"
