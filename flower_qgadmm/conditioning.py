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

import functools
from collections.abc import Callable, Sequence
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


def one_blas_thread(func: F) -> F:
    """Run ``func`` with every BLAS library (numpy's and scipy's) on one thread, so its
    floats do not depend on the machine's thread count (set-up only)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with _blas().limit(limits=1, user_api="blas"):
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
        """theta = T^{-1} u.

        A finite float64 vector goes straight to LAPACK's ``trtrs`` with the arguments
        ``scipy.linalg.solve_triangular`` passes it (the same floats, without its input
        validation: a model is pulled every evaluation round); anything else through
        ``solve_triangular`` (its checks and errors).
        """
        if self.diagonal:
            return u / self.array
        t = self.array
        if (
            type(u) is np.ndarray
            and u.dtype == np.float64
            and u.shape == (t.shape[0],)
            and u.size
            and all_finite(u)
        ):  # C-ordered T: solve_triangular solves the transposed (lower) system
            # LAPACK's trtrs, as solve_triangular calls it for T (C order)
            x, info = lapack("trtrs", t)(t.T, u, overwrite_b=False, lower=True, trans=True)
            if info == 0:
                return x
        return solve_triangular(t, u)

    @one_blas_thread
    def features(self, X: np.ndarray) -> np.ndarray:
        """X T^{-1}."""
        if self.diagonal:
            return X / self.array
        return solve_triangular(self.array, X.T, trans="T").T

    @one_blas_thread
    def statistics(self, gram: np.ndarray, xty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T^{-T} G T^{-1}, T^{-T} b) for G = X^T X (+ ridge), b = X^T y."""
        gram, xty = np.asarray(gram, dtype=np.float64), np.asarray(xty, dtype=np.float64)
        if self.diagonal:
            s = self.array
            return gram / np.outer(s, s), xty / s
        left = solve_triangular(self.array, gram, trans="T")  # T^{-T} G
        inner = solve_triangular(self.array, left.T, trans="T").T  # (T^{-T} (T^{-T} G)^T)^T
        return 0.5 * (inner + inner.T), solve_triangular(self.array, xty, trans="T")


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
