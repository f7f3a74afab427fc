"""Local primal solvers of the group-ADMM step.

The GADMM primal step of worker n with degree c_n solves
    argmin_theta f_n(theta) + <alpha_n, theta> + (rho/2) sum_m ||theta - theta_hat_m||^2,
where alpha_n aggregates the worker's edge duals. For least squares,
f_n(theta) = 1/2 ||X_n theta - y_n||^2 + (l2/2) ||theta||^2, the argmin is the linear solve
    (X_n^T X_n + l2 I + rho c_n I) theta = X_n^T y_n - alpha_n + rho sum_m theta_hat_m.

Feature conditioning. With a global transform T chosen by the relay from the workers'
reported :meth:`LeastSquaresSolver.moments` and statistics (the column RMS, or the
whitening Cholesky factor: :mod:`flower_qgadmm.conditioning`), a worker solves in the
coordinates u = T theta, i.e. with the features X T^{-1}. X theta = (X T^{-1}) u, so the
loss, F and F* are unchanged and the optimum in original units, theta* = T^{-1} u*, is
the same; only the conditioning of the exchanged vector changes. Columns are never
centred: the model has no intercept, and centring would change the problem.
:meth:`LocalSolver.to_arrays` and :meth:`LocalSolver.set_initial` speak original units;
``solve``, ``objective`` and ``gradient`` take the internal vector the workers exchange.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.linalg.blas import ddot

from .conditioning import FeatureTransform, one_blas_thread
from .numeric import all_finite, lapack, largest_eigenvalue, row_dots

Key = tuple[int, int, int]  # (seed, worker, iteration): seeds any randomness of a solve

STOCHASTIC_ONLY = frozenset({"optimizer", "lr", "local-steps", "same-batch", "loss-reduction"})
"""The local-solver settings (``SolverSettings``) only stochastic local steps read: exact
least squares reads none of them (a resume may change them), a gossip round's single
gradient only ``loss-reduction``."""


class LocalSolver(ABC):
    """A worker's local primal step: (approximately) minimise f(theta) - <linear, theta> +
    (weight / 2) ||theta||^2, warm-started from the current model."""

    dim: int
    framework = "numpy"  # how a model file is saved: "numpy" (.npz) or "torch" (state_dict)
    _start: np.ndarray | None = None  # theta^0 set by :meth:`set_initial`

    def initial(self) -> np.ndarray:
        """theta^0, identical on every worker (default: zeros, as in the papers, unless
        :meth:`set_initial` gave the user's model)."""
        return np.zeros(self.dim) if self._start is None else self._start.copy()

    # ------------------------------------------------------------------ model layout
    def parameter_keys(self) -> tuple[str, ...]:
        """The arrays of :meth:`to_arrays` that make up theta, in order."""
        return ("theta",)

    def to_arrays(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """The model ``theta`` in its owner's layout: what a model pull, ``evaluate_fn``
        and the saved final model carry (default: ``{"theta": theta}``)."""
        return {"theta": np.asarray(theta, dtype=np.float64)}

    def set_initial(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Start from the user's model (``start(initial_arrays=...)``), given in the
        layout of :meth:`to_arrays`; refuses other keys or shapes."""
        if set(arrays) != {"theta"} or np.shape(arrays["theta"]) != (self.dim,):
            shapes = {k: np.shape(v) for k, v in arrays.items()}
            raise ValueError(f"initial model {shapes} does not match {{'theta': ({self.dim},)}}")
        theta = np.asarray(arrays["theta"], dtype=np.float64)
        if not np.all(np.isfinite(theta)):
            raise ValueError("initial model contains NaN/Inf")
        self._start = theta.copy()

    @abstractmethod
    def solve(self, linear: np.ndarray, weight: float, start: np.ndarray, key: Key) -> np.ndarray:
        """The primal update (float64 vector of length ``dim``)."""

    @classmethod
    def solve_many(
        cls,
        solvers: Sequence[LocalSolver],
        linear: np.ndarray,
        weights: Sequence[float],
        starts: Sequence[np.ndarray],
        keys: Sequence[Key],
    ) -> list[np.ndarray]:
        """``[s.solve(row, w, start, key) for ...]`` of several solvers of this class (the
        members of one phase, ``linear`` their rows): a class may solve them together as
        long as each result is the one its own :meth:`solve` gives."""
        return [
            s.solve(row, w, start, key)
            for s, row, w, start, key in zip(solvers, linear, weights, starts, keys, strict=True)
        ]

    @abstractmethod
    def objective(self, theta: np.ndarray) -> float:
        """The local loss f(theta) reported in the history."""

    @classmethod
    def objective_many(cls, solvers: Sequence[LocalSolver], thetas: Sequence[np.ndarray]) -> list:
        """``[s.objective(t) for ...]`` of several solvers of this class (the members of
        one phase): a class may compute them together as long as each value is the one
        its own :meth:`objective` gives."""
        return [s.objective(t) for s, t in zip(solvers, thetas, strict=True)]

    def evaluate(self, theta: np.ndarray) -> dict[str, float]:
        """Extra metrics of this worker's model (e.g. test accuracy); none by default."""
        return {}

    def gradient(self, theta: np.ndarray, key: Key) -> np.ndarray:
        """A (stochastic) gradient of f at ``theta``, seeded by ``key`` (gossip methods)."""
        raise NotImplementedError(f"{type(self).__name__} provides no gradient")

    def report(self) -> dict:
        """What the run needs to know of this worker's problem at set-up: ``dim``, and
        when known ``smoothness`` (Lipschitz constant of the gradient) and ``statistics``
        (sufficient statistics of the centralized optimum); ``layout`` (the
        :meth:`parameter_keys`) and ``framework`` tell the relay how to read a model;
        optionally ``shapes`` (``"name (shape)"`` of every array of :meth:`to_arrays`),
        which must agree between the workers."""
        return {"dim": self.dim, "layout": self.parameter_keys(), "framework": self.framework}

    def extra_state(self) -> dict[str, np.ndarray]:
        """Solver state that must survive between messages (e.g. BatchNorm buffers)."""
        return {}

    def load_extra_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`extra_state` (this default keeps none)."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no extra state, got {sorted(state)}")


class LeastSquaresSolver(LocalSolver):
    """Exact local solve for f(theta) = 1/2 ||X theta - y||^2 + (l2/2) ||theta||^2.

    Parameters
    ----------
    X : np.ndarray
        Local design matrix, shape (m, d); no intercept is added. The relay may ask the
        solver to work in scaled coordinates (:meth:`set_scale`).
    y : np.ndarray
        Local targets, shape (m,).
    l2 : float
        Ridge weight (default: 0.0).
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, l2: float = 0.0) -> None:
        for name, value in (("X", X), ("y", y)):
            if np.iscomplexobj(value):  # float64 would drop the imaginary part silently
                raise ValueError(f"{name} is complex: least squares here is over real data")
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"X must be (m, d) and y (m,), got {X.shape} and {y.shape}")
        if X.shape[1] == 0:
            raise ValueError("X has no feature columns (d = 0)")
        if X.shape[0] == 0:
            raise ValueError("empty partition: a worker holds no samples")
        if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
            raise ValueError("data contains NaN/Inf")
        try:
            l2 = float(l2)
        except (TypeError, ValueError):
            raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}") from None
        if not (math.isfinite(l2) and l2 >= 0):
            raise ValueError(f"l2 must be a finite number >= 0, got {l2}")
        self.X, self.y, self.l2 = X, y, float(l2)
        with np.errstate(over="ignore", invalid="ignore"):
            self.gram = X.T @ X + self.l2 * np.eye(X.shape[1])
            self.xty = X.T @ y
            yty = float(y @ y)
            self.column_sums = X.sum(axis=0)
            self.column_squares = np.einsum("ij,ij->j", X, X)
        # Overflowed statistics would reach LAPACK as Inf/NaN (eigvalsh, lstsq, Cholesky
        # may then fail obscurely or never return): refuse them here, naming the cause.
        scale = f"|X| up to {_largest(X):.3g}, |y| up to {_largest(y):.3g}"
        for name, value in (("X^T X", self.gram), ("X^T y", self.xty), ("y^T y", yty)):
            if not np.all(np.isfinite(value)):
                raise ValueError(
                    f"{name} overflows float64 ({scale}): rescale the data "
                    "(e.g. divide every column by its largest magnitude)"
                )
        # weight -> (Cholesky factor, lower); potrs from numeric.lapack
        self._factors: dict[float, tuple[np.ndarray, bool]] = {}
        self.scale: np.ndarray | None = None  # the transform's array (1-D or 2-D)
        self.transform: FeatureTransform | None = None
        self._Xs, self._gram_s, self._xty_s = X, self.gram, self.xty  # internal coordinates

    @property
    def dim(self) -> int:
        """Model dimension d."""
        return self.X.shape[1]

    # ------------------------------------------------------------------ scaling
    @one_blas_thread  # one limit for the features' and the statistics' (theirs nest)
    def set_scale(self, transform: np.ndarray | None) -> None:
        """Solve in the coordinates u = T theta (features X T^{-1}) from now on: ``T`` a
        1-D array (the diagonal, e.g. column RMS) or an upper triangular matrix (whitening;
        flattened is accepted), see :mod:`flower_qgadmm.conditioning`; ``None``: original
        coordinates."""
        self._factors = {}
        if transform is None:
            self.scale = self.transform = None
            self._Xs, self._gram_s, self._xty_s = self.X, self.gram, self.xty
            return
        self.transform = FeatureTransform(transform, self.dim)
        self.scale = self.transform.array
        self._Xs = self.transform.features(self.X)
        self._gram_s, self._xty_s = self.transform.statistics(self.gram, self.xty)

    def moments(self) -> dict[str, np.ndarray]:
        """Column moments of the local features: ``count`` (rows, shape (1,)), ``sum`` and
        ``squares`` (per column): what the relay needs for the global column RMS."""
        return {
            "count": np.array([float(self.X.shape[0])]),
            "sum": self.column_sums,
            "squares": self.column_squares,
        }

    def initial(self) -> np.ndarray:
        """theta^0 in the internal coordinates (zeros, or the user's model times the scale)."""
        start = super().initial()
        return start if self.transform is None else self.transform.to_internal(start)

    def to_arrays(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """The model in original units (``T^{-1} theta`` when transformed)."""
        theta = np.asarray(theta, dtype=np.float64)
        return {"theta": theta if self.transform is None else self.transform.to_original(theta)}

    def objective(self, theta: np.ndarray) -> float:
        """f(theta) at the internal vector ``theta``, from the residual (no cancellation);
        the same value in original units (X theta = (X / s)(s theta))."""
        # ndarray.dot: the BLAS calls of ``@`` (the same floats) without matmul's overhead
        r = self._Xs.dot(theta) - self.y
        if self.l2 == 0:  # no ridge term: no transform back to original units either
            return 0.5 * float(r.dot(r))
        own = theta if self.transform is None else self.transform.to_original(theta)
        return 0.5 * float(r.dot(r)) + 0.5 * self.l2 * float(own.dot(own))

    @classmethod
    def objective_many(cls, solvers: Sequence[LocalSolver], thetas: Sequence[np.ndarray]) -> list:
        """:meth:`objective` of every solver, the same floats, for all at once when their
        features stack (:func:`_stacked`), else one by one: the residuals of the stacked
        features (numpy's stacked matmul of a matrix by a column calls the product
        ``ndarray.dot`` calls, once per matrix) and their sums of squares
        (:func:`~flower_qgadmm.numeric.row_dots`)."""
        stacked = _stacked(solvers) if cls.objective is LeastSquaresSolver.objective else None
        if stacked is None:
            return super().objective_many(solvers, thetas)
        features, targets = stacked
        models = np.array(thetas)
        if models.dtype != np.float64 or models.shape != (len(solvers), features.shape[2]):
            return super().objective_many(solvers, thetas)
        r = np.matmul(features, models[:, :, None]).reshape(targets.shape)
        r -= targets
        return (0.5 * row_dots(r)).tolist()

    def sufficient_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """(X^T X + l2 I, X^T y) in original units: enough to compute theta*."""
        return self.gram, self.xty

    def gradient(self, theta: np.ndarray, key: Key | None = None) -> np.ndarray:
        """Full-batch gradient of f at the internal vector (``key`` unused)."""
        return self._gram_s @ theta - self._xty_s

    def report(self) -> dict:
        """dim, smoothness L = lambda_max(X^T X + l2 I), the sufficient statistics and
        the column ``moments`` (all in original units, whatever the scale)."""
        smoothness = largest_eigenvalue(self.gram)
        return {
            **super().report(),
            "smoothness": smoothness,
            "statistics": (self.gram, self.xty),
            "moments": self.moments(),
        }

    def solve(
        self,
        linear: np.ndarray,
        weight: float,
        start: np.ndarray | None = None,
        key: Key | None = None,
    ) -> np.ndarray:
        """argmin f(theta) - <linear, theta> + (weight/2) ||theta||^2 (exact; ``start`` and
        ``key`` are unused).

        The group-ADMM step passes ``linear = rho * sum_m theta_hat_m - alpha_n`` and
        ``weight = rho * c_n``. The Cholesky factor is cached per weight; the solve is
        LAPACK's ``potrs`` on it, as ``scipy.linalg.cho_solve`` calls it (the same numbers,
        without its per-call checks: the factor is finite and the right-hand side is
        checked here).
        """
        factor = self._factors.get(weight)
        if factor is None:
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"least-squares step: weight must be finite, >= 0, got {weight}")
            with np.errstate(over="ignore", invalid="ignore"):
                system = self._gram_s + weight * np.eye(self.dim)
            if not np.all(np.isfinite(system)):
                raise ValueError(
                    f"least-squares step: X^T X + {weight:g} I overflows float64 (rho too large?)"
                )
            try:
                factor = cho_factor(system)
            except np.linalg.LinAlgError:
                raise ValueError(
                    "least-squares step: X^T X + l2 I + weight I is not positive definite "
                    f"(weight {weight:g}); the local problem needs l2 > 0 or a positive weight"
                ) from None
            self._factors[weight] = factor
        rhs = self._xty_s + np.asarray(linear, dtype=np.float64)
        if not all_finite(rhs):  # one BLAS dot product, usually
            raise FloatingPointError(
                "least-squares step: the right-hand side X^T y + linear term contains NaN/Inf "
                "(the neighbours' models or the duals diverged)"
            )
        c, lower = factor
        if rhs.shape != (c.shape[0],) or not rhs.size:  # cho_solve's checks and messages
            return cho_solve((c, lower), rhs)
        return _potrs(factor, rhs)  # rhs is ours to overwrite

    @classmethod
    def solve_many(
        cls,
        solvers: Sequence[LocalSolver],
        linear: np.ndarray,
        weights: Sequence[float],
        starts: Sequence[np.ndarray],
        keys: Sequence[Key],
    ) -> list[np.ndarray]:
        """:meth:`solve` of every solver, the right-hand sides X^T y + linear formed and
        checked for all rows at once; each row's ``potrs`` on its own factor (the same
        floats). A solver without the factor of its weight yet, a right-hand side with
        NaN/Inf or of another size goes through :meth:`solve` (its errors), and so does
        every solver of a subclass with a ``solve`` of its own."""
        rhs = np.array([s._xty_s for s in solvers])  # rows, as np.stack
        if cls.solve is not LeastSquaresSolver.solve or rhs.shape != np.shape(linear):
            return super().solve_many(solvers, linear, weights, starts, keys)
        rhs += linear  # X^T y + linear of every row
        # a finite sum of squares: every entry is (of the whole array, else of each row)
        flat = rhs.reshape(-1)
        whole = math.isfinite(ddot(flat, flat))
        finite = [True] * len(rhs) if whole else np.isfinite(row_dots(rhs))
        factors = [s._factors.get(w) for s, w in zip(solvers, weights, strict=True)]
        # every factor is cho_factor's of a float64 matrix (solve makes them): one routine
        routine = lapack("potrs", factors[0][0]) if factors and factors[0] else None
        out = []
        for i, (factor, b) in enumerate(zip(factors, rhs, strict=True)):
            if factor is None or not finite[i]:  # factors it, or checks and raises
                out.append(solvers[i].solve(linear[i], weights[i], starts[i], keys[i]))
                continue
            out.append(_potrs(factor, b, routine))
        return out


def _potrs(factor: tuple[np.ndarray, bool], b: np.ndarray, routine: Any = None) -> np.ndarray:
    """LAPACK's ``potrs`` (``routine``, default: the one for the factor's type) on a
    ``cho_factor`` result, as ``cho_solve`` calls it, ``b`` overwritten; (c, b, lower,
    overwrite_b) by position: f2py parses no keywords then."""
    c, lower = factor
    x, info = (routine or lapack("potrs", c))(c, b, lower, 1)
    if info != 0:
        raise ValueError(f"illegal value in {-info}th argument of internal potrs")
    return x


#: Largest stack of features :func:`_stacked` keeps (bytes), and how many stacks.
STACK_BYTES = 1 << 22
STACKS = 4
_stacks: dict[
    tuple[int, ...], tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]
] = {}


def _stacked(solvers: Sequence[LeastSquaresSolver]) -> tuple[np.ndarray, np.ndarray] | None:
    """The features (k, m, d) and targets (k, m) of these solvers (a phase's members) as
    one array each, built once and kept while the solvers hold the same arrays (at most
    :data:`STACKS` stacks of :data:`STACK_BYTES` each); None for a larger one, for
    solvers of different sample counts or with a ridge term (its objective has one more
    term)."""
    key = tuple([id(s) for s in solvers])
    held = _stacks.get(key)
    if held is not None:
        arrays, features, targets = held
        if all([x is s._Xs and y is s.y for (x, y), s in zip(arrays, solvers, strict=True)]):
            return features, targets
    if (
        sum(s._Xs.nbytes for s in solvers) > STACK_BYTES
        or len({s._Xs.shape for s in solvers}) > 1
        or any(s.l2 != 0 for s in solvers)
    ):
        return None
    features, targets = np.array([s._Xs for s in solvers]), np.array([s.y for s in solvers])
    if len(_stacks) >= STACKS:
        _stacks.clear()
    _stacks[key] = ([(s._Xs, s.y) for s in solvers], features, targets)
    return features, targets


def _largest(a: np.ndarray) -> float:
    """Largest magnitude in ``a`` (0 if empty)."""
    return float(np.max(np.abs(a))) if a.size else 0.0
