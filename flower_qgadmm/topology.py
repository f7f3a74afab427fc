"""Communication graphs: neighbours, a two-colouring and gossip mixing weights.

A :class:`Graph` is any connected undirected graph on its active workers. Edges are
stored oriented from the lower to the higher node index; in the GADMM family the dual
of edge (a, b) enforces theta_a - theta_b = 0.

Each algorithm family asks the graph for what it needs; algorithms never build this
structure themselves:

* the GADMM family (GADMM, Q-GADMM, CQ-GGADMM, arXiv 2009.06459) asks
  :meth:`Graph.two_colouring` for the two groups that update in alternation.
  A chain is the case GADMM was written for; any connected bipartite graph works the
  same way. A non-bipartite graph raises ``ValueError`` naming an odd cycle, but only
  when it is coloured, so the same graph still serves the gossip family;
* the gossip family asks :meth:`Graph.mixing_weights` for symmetric, doubly stochastic
  weights supported on the edges and the diagonal (Metropolis-Hastings or max-degree), a
  sparse matrix (:meth:`Graph.mixing_matrix` gives it dense);
  a user's matrix is read by :func:`parse_matrix` and validated by
  :func:`check_mixing_matrix`.

Generators (:data:`TOPOLOGIES`, :func:`make_topology`) use networkx and are seeded with
their own ``np.random.default_rng``, never the global random state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np

from .numeric import dense_sum

if TYPE_CHECKING:  # scipy.sparse is imported when weights are first built
    from scipy.sparse import csr_array

#: Mixing weight rules known to :meth:`Graph.mixing_weights`.
MIXING = ("metropolis", "max-degree")

#: Redraws a random generator tries before it gives up on a connected graph.
_DRAWS = 200


@dataclass(frozen=True)
class Graph:
    """An undirected, connected communication graph on nodes ``0..num_nodes-1``.

    Parameters
    ----------
    num_nodes : int
        Number of workers (>= 2).
    edges : iterable of (int, int)
        Undirected edges; stored as sorted ``(low, high)`` pairs (duplicates merged).
    positions : array (num_nodes, 2), optional
        Device coordinates in metres (for the transmit-energy model). (default: None)
    removed : iterable of int, optional
        Workers that left the run: they keep their labels but have no edges, and the
        rest (at least 2) must still be connected. (default: ())

    Notes
    -----
    The graph need not be bipartite: :meth:`two_colouring` (and :meth:`group`) checks
    that lazily, the first time the GADMM family asks, and caches the answer.
    """

    num_nodes: int
    edges: tuple[tuple[int, int], ...]
    positions: np.ndarray | None = field(default=None, compare=False)
    removed: frozenset[int] = frozenset()
    _adj: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)
    _active: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _colour: tuple[int, ...] | str | None = field(init=False, repr=False, compare=False)
    _groups: tuple[tuple[int, ...], tuple[int, ...]] | None = field(
        init=False, repr=False, compare=False
    )
    _mixing: dict[str, csr_array] = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        num_nodes: int,
        edges: Iterable[tuple[int, int]],
        positions: np.ndarray | None = None,
        removed: Iterable[int] = (),
    ) -> None:
        if int(num_nodes) < 2:
            raise ValueError(f"a decentralized run needs at least 2 workers, got {num_nodes}")
        n = int(num_nodes)
        gone = frozenset(int(i) for i in removed)
        outside = sorted(i for i in gone if not 0 <= i < n)
        if outside:
            raise ValueError(f"removed workers {outside} are not among the {n} nodes")
        if len(gone) > n - 2:
            raise ValueError(f"only {n - len(gone)} workers would remain; a run needs 2")
        norm = set()
        for a, b in edges:
            a, b = int(a), int(b)
            if a == b or not (0 <= a < n and 0 <= b < n):
                raise ValueError(f"bad edge ({a}, {b}) for {n} nodes")
            if a in gone or b in gone:
                raise ValueError(f"edge ({a}, {b}) touches a removed worker")
            norm.add((min(a, b), max(a, b)))
        adj: list[list[int]] = [[] for _ in range(n)]
        for a, b in sorted(norm):
            adj[a].append(b)
            adj[b].append(a)
        if positions is not None:
            positions = np.asarray(positions, dtype=np.float64)
            if positions.shape != (n, 2):
                raise ValueError(f"positions must have shape ({n}, 2), got {positions.shape}")
        object.__setattr__(self, "num_nodes", n)
        object.__setattr__(self, "edges", tuple(sorted(norm)))
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "removed", gone)
        object.__setattr__(self, "_adj", tuple(tuple(x) for x in adj))
        object.__setattr__(self, "_active", tuple(i for i in range(n) if i not in gone))
        object.__setattr__(self, "_colour", None)
        object.__setattr__(self, "_groups", None)
        object.__setattr__(self, "_mixing", {})
        self._check_connected()

    def _check_connected(self) -> None:
        """BFS from the first active node; unreachable active nodes raise ``ValueError``."""
        start = self._active[0]
        seen = [False] * self.num_nodes
        seen[start] = True
        queue = deque([start])
        while queue:
            for v in self._adj[queue.popleft()]:
                if not seen[v]:
                    seen[v] = True
                    queue.append(v)
        missing = [i for i in self._active if not seen[i]]
        if missing:
            shown = (
                f"{missing[:10]}"[:-1] + f", ... ({len(missing)} in all)]"
                if len(missing) > 10
                else missing
            )
            raise ValueError(f"graph is disconnected: nodes {shown} are unreachable from {start}")

    def _two_colour(self) -> tuple[int, ...] | str:
        """BFS 2-colouring from the first active node (removed nodes get -1), or the
        error message naming the odd cycle that a same-colour edge closes."""
        colour = [-1] * self.num_nodes
        parent = [-1] * self.num_nodes
        start = self._active[0]
        colour[start] = 0
        queue = deque([start])
        while queue:
            u = queue.popleft()
            for v in self._adj[u]:
                if colour[v] < 0:
                    colour[v] = 1 - colour[u]
                    parent[v] = u
                    queue.append(v)
                elif colour[v] == colour[u]:
                    cycle = _odd_cycle(parent, u, v)
                    return "graph is not bipartite (no two-colouring): odd cycle " + " - ".join(
                        map(str, [*cycle, cycle[0]])
                    )
        return tuple(colour)

    def _colours(self) -> tuple[int, ...]:
        """The cached colouring; raises ``ValueError`` on a non-bipartite graph."""
        if self._colour is None:
            object.__setattr__(self, "_colour", self._two_colour())
        if isinstance(self._colour, str):
            raise ValueError(self._colour)
        return self._colour

    @property
    def active(self) -> tuple[int, ...]:
        """Workers still in the run, in increasing order."""
        return self._active

    def degree(self, node: int) -> int:
        """Number of neighbours."""
        return len(self._adj[node])

    def neighbours(self, node: int) -> tuple[int, ...]:
        """Neighbours of ``node`` in increasing order."""
        return self._adj[node]

    def is_path(self) -> bool:
        """True for a chain (a path through all active nodes)."""
        ends = [n for n in self._active if self.degree(n) == 1]
        return (
            len(self.edges) == len(self._active) - 1
            and len(ends) == 2
            and all(self.degree(n) <= 2 for n in self._active)
        )

    def path_order(self) -> list[int]:
        """The active nodes in chain order, from the lower-numbered end."""
        start = min(n for n in self._active if self.degree(n) == 1)
        order, prev = [start], -1
        while len(order) < len(self._active):
            nxt = next(m for m in self.neighbours(order[-1]) if m != prev)
            prev = order[-1]
            order.append(nxt)
        return order

    def two_colouring(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(first, second): the two colour classes (independent sets) of the active
        nodes; the first contains the lowest active node.

        Computed on first use and cached. Raises ``ValueError`` ("graph is not bipartite
        ...: odd cycle a - b - c - a") when no such split exists.
        """
        if self._groups is None:
            colour = self._colours()
            first = tuple(i for i in self._active if colour[i] == 0)
            second = tuple(i for i in self._active if colour[i] == 1)
            object.__setattr__(self, "_groups", (first, second))
        return self._groups

    def group(self, node: int) -> int:
        """0 for the first colour class (contains the lowest active node), 1 for the second
        (-1 for a removed worker); raises like :meth:`two_colouring`."""
        return self._colours()[node]

    def repaired(self, failed: Iterable[int]) -> Graph:
        """The graph without ``failed`` workers, as CQ-GGADMM's chain repair prescribes.

        On a chain, the neighbours of a removed worker become neighbours (the chain
        order is kept; the colouring restarts from its first worker). On any other
        graph the workers' edges are dropped and the rest must stay connected, or
        ValueError says why. Bipartiteness is not required here: the GADMM family
        finds out from :meth:`two_colouring` of the result.
        """
        gone = self.removed | {int(i) for i in failed}
        if self.is_path():
            order = [n for n in self.path_order() if n not in gone]
            edges = list(zip(order[:-1], order[1:], strict=True))
        else:
            edges = [(a, b) for a, b in self.edges if a not in gone and b not in gone]
        try:
            return Graph(self.num_nodes, edges, self.positions, gone)
        except ValueError as exc:
            raise ValueError(
                f"cannot repair the graph without workers {sorted(gone)}: {exc}"
            ) from None

    def mixing_weights(self, kind: str = "metropolis") -> csr_array:
        """Symmetric, doubly stochastic gossip weights supported on edges and diagonal, as
        a sparse matrix: O(N + edges) memory, so a gossip run of 100,000 workers needs no
        N x N array.

        Parameters
        ----------
        kind : str, optional
            ``"metropolis"`` (Metropolis-Hastings: w_ij = 1 / (1 + max(d_i, d_j)) on an
            edge) or ``"max-degree"`` (w_ij = 1 / (1 + d_max) on an edge, d_max over the
            active nodes); w_ii takes the rest of row i: 1 minus the row's sum as numpy
            adds a dense row (:func:`~flower_qgadmm.numeric.dense_sum`), so the weights
            are the floats a dense construction gives. (default: "metropolis")

        Returns
        -------
        W : scipy.sparse.csr_array (num_nodes, num_nodes), float64
            Cached and shared: read-only, sorted indices, the diagonal always stored (it
            is positive). Index it as ``W[i, j]``; a removed worker has w_ii = 1 and no
            other weight.
        """
        if kind not in MIXING:
            raise ValueError(f"unknown mixing weights {kind!r}; known: {list(MIXING)}")
        if kind not in self._mixing:
            from scipy.sparse import coo_array, diags_array

            n = self.num_nodes
            deg = np.array([len(nbrs) for nbrs in self._adj], dtype=np.float64)
            a, b = np.array(self.edges, dtype=np.int64).reshape(-1, 2).T
            if kind == "metropolis":
                w = 1.0 / (1.0 + np.maximum(deg[a], deg[b]))
            else:
                w = np.full(len(a), 1.0 / (1.0 + deg.max()))
            off = coo_array((np.r_[w, w], (np.r_[a, b], np.r_[b, a])), shape=(n, n)).tocsr()
            off.sort_indices()
            ptr, cols, vals = off.indptr, off.indices.tolist(), off.data.tolist()
            rest = [
                1.0 - dense_sum(cols[ptr[i] : ptr[i + 1]], vals[ptr[i] : ptr[i + 1]], n)
                for i in range(n)
            ]
            W = (off + diags_array(rest)).tocsr()  # disjoint supports: no float changes
            for part in (W.data, W.indices, W.indptr):
                part.setflags(write=False)
            self._mixing[kind] = W
        return self._mixing[kind]

    def mixing_matrix(self, kind: str = "metropolis") -> np.ndarray:
        """:meth:`mixing_weights` as a dense ``(num_nodes, num_nodes)`` float64 array (a
        fresh one on each call; N^2 memory: the engine itself keeps the sparse form)."""
        return self.mixing_weights(kind).toarray()

    def spectral_gap(self, kind: str = "metropolis") -> float:
        """:func:`spectral_gap` of :meth:`mixing_matrix` ``(kind)`` on the active nodes."""
        return spectral_gap(self.mixing_matrix(kind), self._active)


#: Edges a log line lists before it gives only their number (:func:`edges_text`).
EDGES_SHOWN = 30


def edges_text(edges: Sequence[tuple[int, int]], limit: int = EDGES_SHOWN) -> str:
    """``edges`` for a log line: all of them up to ``limit`` (as the tuple prints), else
    the first ``limit`` and their number, ``((0, 1), (1, 2), ... 9,999 edges in all)``:
    a graph of 10,000 workers would make a line of 150 KB."""
    if len(edges) <= limit:
        return str(tuple(edges))
    return f"({', '.join(map(str, edges[:limit]))}, ... {len(edges):,} edges in all)"


def _odd_cycle(parent: list[int], u: int, v: int) -> list[int]:
    """The cycle closed by edge (u, v) between two same-colour BFS-tree nodes."""
    path_u, path_v = [u], [v]
    while path_u[-1] != -1:
        path_u.append(parent[path_u[-1]])
    while path_v[-1] != -1:
        path_v.append(parent[path_v[-1]])
    ancestors_u = set(path_u)
    lca = next(x for x in path_v if x in ancestors_u)
    up = path_u[: path_u.index(lca) + 1]
    down = path_v[: path_v.index(lca)]
    return up + down[::-1]


# ---------------------------------------------------------------- mixing matrices


def _num(x: float) -> str:
    return f"{float(x):.15g}"


def _refuse_asymmetric(M, i: int, j: int) -> None:
    """Refuse a mixing matrix (dense or sparse) with w[i,j] != w[j,i]."""
    raise ValueError(
        f"mixing matrix is not symmetric: w[{i},{j}]={_num(M[i, j])} but w[{j},{i}]={_num(M[j, i])}"
    )


def _check_removed(M, i: int, others: list[int]) -> None:
    """Refuse a mixing matrix (dense or sparse) giving removed worker ``i`` a weight
    with ``others`` or w[i,i] != 1."""
    if others or abs(M[i, i] - 1.0) > 1e-9:
        link = f"weight {_num(M[i, others[0]])} with {others[0]}" if others else ""
        raise ValueError(
            f"mixing matrix gives removed worker {i} "
            + (link or f"w[{i},{i}]={_num(M[i, i])}")
            + f"; a removed worker must have w[{i},{i}]=1 and nothing else"
        )


def check_mixing_matrix(
    graph: Graph, W: np.ndarray | Sequence[Sequence[float]] | csr_array
) -> np.ndarray | csr_array:
    """Validate a user's gossip matrix for ``graph``; return it as float64.

    Parameters
    ----------
    graph : Graph
        The communication graph the weights are for.
    W : array_like or scipy sparse matrix (num_nodes, num_nodes)
        Must be real, finite, nonnegative, symmetric (atol 1e-12), with rows and columns
        summing to 1 (atol 1e-9), exactly zero off the edges and the diagonal, and a
        removed worker must keep w_ii = 1 and nothing else. A sparse matrix is checked
        and returned sparse (:func:`_check_sparse`: no N x N array), with the same
        messages and sums as dense.

    Raises
    ------
    ValueError
        Naming the first problem found, e.g. "mixing matrix is not doubly stochastic:
        row 2 sums to 0.9".
    """
    from scipy.sparse import issparse

    if issparse(W):
        return _check_sparse(graph, W)
    try:
        imag = np.imag(W) if np.iscomplexobj(W) else None  # numpy would drop it, warning
        M = np.array(np.real(W) if imag is not None else W, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"mixing matrix is not a numeric matrix: {exc}") from None
    n = graph.num_nodes
    if M.shape != (n, n):
        raise ValueError(f"mixing matrix must have shape ({n}, {n}), got {M.shape}")
    bad = np.argwhere(imag != 0) if imag is not None else ()
    if len(bad):
        i, j = bad[0]
        raise ValueError(f"mixing matrix has a complex entry w[{i},{j}]={np.asarray(W)[i, j]}")
    bad = np.argwhere(~np.isfinite(M))
    if len(bad):
        i, j = bad[0]
        raise ValueError(f"mixing matrix has a non-finite entry w[{i},{j}]={M[i, j]}")
    bad = np.argwhere(M < 0)
    if len(bad):
        i, j = bad[0]
        raise ValueError(f"mixing matrix has a negative weight w[{i},{j}]={_num(M[i, j])}")
    bad = np.argwhere(np.abs(M - M.T) > 1e-12)
    if len(bad):
        i, j = bad[0]
        _refuse_asymmetric(M, i, j)
    for i in sorted(graph.removed):
        others = [j for j in np.flatnonzero(M[i]) if j != i]
        _check_removed(M, i, others)
    support = np.eye(n, dtype=bool)
    if graph.edges:
        a, b = np.array(graph.edges).T
        support[a, b] = support[b, a] = True
    bad = np.argwhere((M != 0) & ~support)
    if len(bad):
        i, j = bad[0]
        raise ValueError(
            f"mixing matrix has weight {_num(M[i, j])} between {i} and {j}, "
            "which are not neighbours"
        )
    for axis, what in ((1, "row"), (0, "column")):
        sums = M.sum(axis=axis)
        off = np.flatnonzero(np.abs(sums - 1.0) > 1e-9)
        if len(off):
            raise ValueError(
                f"mixing matrix is not doubly stochastic: {what} {off[0]} sums to "
                f"{_num(sums[off[0]])}"
            )
    return M


def _check_sparse(graph: Graph, W: Any) -> csr_array:
    """:func:`check_mixing_matrix` of a scipy sparse matrix, in O(N + entries) memory:
    the same checks in the same order, each naming the first offending entry in row-major
    order as the dense check does, and the same sums (a row's as numpy adds a dense row,
    :func:`~flower_qgadmm.numeric.dense_sum`; a column's entry by entry down the rows,
    as numpy adds the columns of a dense array). Returns the matrix as a float64
    ``csr_array`` with sorted indices, duplicates summed and zeros dropped (the arrays of
    ``csr_array`` of the dense matrix)."""
    from scipy.sparse import csr_array

    n = graph.num_nodes
    if W.ndim != 2 or W.shape != (n, n):
        raise ValueError(f"mixing matrix must have shape ({n}, {n}), got {W.shape}")
    try:
        M = csr_array(W, copy=True)
        M.sum_duplicates()  # also sorts the indices
        if np.iscomplexobj(M.data):
            rows, cols = _coordinates(M)
            bad = np.flatnonzero(M.data.imag != 0)
            if len(bad):
                i, j, value = rows[bad[0]], cols[bad[0]], M.data[bad[0]]
                raise ValueError(f"mixing matrix has a complex entry w[{i},{j}]={value}")
            M = csr_array((M.data.real, M.indices, M.indptr), shape=M.shape)
        M = M.astype(np.float64)
    except TypeError as exc:
        raise ValueError(f"mixing matrix is not a numeric matrix: {exc}") from None
    M.eliminate_zeros()
    # the index type csr_array(dense) takes (int32 up to 2^31 entries): a run's digest of
    # a user matrix (RoundEngine._mixing_name) is then the same for both forms
    index = np.int32 if max(n, M.nnz) < 2**31 else np.int64
    M = csr_array((M.data, M.indices.astype(index), M.indptr.astype(index)), shape=M.shape)
    rows, cols = _coordinates(M)
    data = M.data

    def first(mask: np.ndarray) -> tuple[int, int, float] | None:
        hits = np.flatnonzero(mask)
        return None if not len(hits) else (int(rows[hits[0]]), int(cols[hits[0]]), data[hits[0]])

    bad = first(~np.isfinite(data))
    if bad:
        raise ValueError(f"mixing matrix has a non-finite entry w[{bad[0]},{bad[1]}]={bad[2]}")
    bad = first(data < 0)
    if bad:
        i, j, value = bad
        raise ValueError(f"mixing matrix has a negative weight w[{i},{j}]={_num(value)}")
    gap = csr_array(M - M.T)
    gap.sum_duplicates()
    gap_rows, gap_cols = _coordinates(gap)
    hits = np.flatnonzero(np.abs(gap.data) > 1e-12)
    if len(hits):
        i, j = int(gap_rows[hits[0]]), int(gap_cols[hits[0]])
        _refuse_asymmetric(M, i, j)
    for i in sorted(graph.removed):
        start, stop = M.indptr[i], M.indptr[i + 1]
        others = [int(j) for j in M.indices[start:stop] if j != i]
        _check_removed(M, i, others)
    keys = rows.astype(np.int64) * n + cols
    if graph.edges:
        a, b = np.array(graph.edges, dtype=np.int64).T
        allowed = np.concatenate([a * n + b, b * n + a])
    else:
        allowed = np.zeros(0, dtype=np.int64)
    bad = first((rows != cols) & ~np.isin(keys, allowed))
    if bad:
        i, j, value = bad
        raise ValueError(
            f"mixing matrix has weight {_num(value)} between {i} and {j}, which are not neighbours"
        )
    ptr, indices, values = M.indptr, M.indices.tolist(), data.tolist()
    row_sums = [
        dense_sum(indices[ptr[i] : ptr[i + 1]], values[ptr[i] : ptr[i + 1]], n) for i in range(n)
    ]
    by_column = M.tocsc()
    by_column.sort_indices()
    column_sums = []
    for j in range(n):
        total = 0.0
        for v in by_column.data[by_column.indptr[j] : by_column.indptr[j + 1]].tolist():
            total += v
        column_sums.append(total)
    for sums, what in ((row_sums, "row"), (column_sums, "column")):
        off = np.flatnonzero(np.abs(np.asarray(sums) - 1.0) > 1e-9)
        if len(off):
            raise ValueError(
                f"mixing matrix is not doubly stochastic: {what} {off[0]} sums to "
                f"{_num(sums[off[0]])}"
            )
    return M


def _coordinates(M: csr_array) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of each stored entry of a CSR matrix, in its (row-major) order."""
    rows = np.repeat(np.arange(M.shape[0]), np.diff(M.indptr))
    return rows, M.indices


def mixing_groups(graph: Graph, W: np.ndarray | csr_array) -> list[list[int]]:
    """The groups of active workers that the positive weights of ``W`` (dense or sparse)
    connect: one group when W mixes the whole graph; several when it splits them (W's
    spectral gap is then 0: the groups never exchange information, as with the identity,
    local training)."""
    from scipy.sparse import csr_array, issparse
    from scipy.sparse.csgraph import connected_components

    active = np.asarray(graph.active)
    M = csr_array(W) if issparse(W) else np.asarray(W)
    count, label = connected_components(M[np.ix_(active, active)] > 0, directed=False)
    return [active[label == c].tolist() for c in range(count)]


def parse_matrix(text: str) -> np.ndarray:
    """A matrix from ``"0.5 0.5; 0.5 0.5"``: rows separated by ``;`` (or newlines),
    entries by spaces or commas; blank rows are skipped. Ragged rows or entries that
    are not numbers raise ``ValueError``."""
    rows = []
    for line in text.replace("\n", ";").split(";"):
        tokens = line.replace(",", " ").split()
        if not tokens:
            continue
        row = []
        for token in tokens:
            try:
                row.append(float(token))
            except ValueError:
                raise ValueError(
                    f"bad matrix entry {token!r} in row {len(rows)}; write numbers"
                ) from None
        if rows and len(row) != len(rows[0]):
            raise ValueError(
                f"ragged matrix: row {len(rows)} has {len(row)} entries, row 0 has {len(rows[0])}"
            )
        rows.append(row)
    if not rows:
        raise ValueError("empty matrix; write rows like '0.5 0.5; 0.5 0.5'")
    return np.array(rows, dtype=np.float64)


def spectral_gap(W: np.ndarray, active: Sequence[int] | None = None) -> float:
    """1 - max(|lambda_2|, |lambda_n|) of a symmetric mixing matrix.

    Parameters
    ----------
    W : array or scipy sparse matrix (N, N)
        Symmetric mixing weights (e.g. from :meth:`Graph.mixing_weights`), taken dense.
    active : sequence of int, optional
        Restrict ``W`` to these rows and columns first, to leave out removed workers,
        whose isolated w_ii = 1 would otherwise count as a second eigenvalue 1.
        (default: None, the whole matrix)

    Returns
    -------
    float
        In [0, 1] for a doubly stochastic W: 1 mixes in one step, 0 never mixes (a
        disconnected graph).
    """
    from scipy.sparse import issparse

    M = np.asarray(W.toarray() if issparse(W) else W, dtype=np.float64)
    if active is not None:
        idx = np.asarray(active, dtype=int)
        M = M[np.ix_(idx, idx)]
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] < 2:
        raise ValueError(f"spectral gap needs a square matrix of size >= 2, got {M.shape}")
    if not np.allclose(M, M.T, rtol=0.0, atol=1e-12):
        raise ValueError("spectral gap needs a symmetric mixing matrix")
    lam = np.linalg.eigvalsh(M)  # ascending; lam[-1] is 1 for a doubly stochastic W
    return float(1.0 - max(abs(lam[-2]), abs(lam[0])))


# ---------------------------------------------------------------- generators


def _from_nx(g: nx.Graph, positions: np.ndarray | None = None) -> Graph:
    return Graph(g.number_of_nodes(), g.edges(), positions)


def _connected_draw(draw: Callable[[], nx.Graph], what: str, hint: str) -> nx.Graph:
    """The first of up to ``_DRAWS`` (seeded) draws ``draw()`` that is connected."""
    for _ in range(_DRAWS):
        g = draw()
        if nx.is_connected(g):
            return g
    raise ValueError(f"no connected {what} in {_DRAWS} draws; {hint}")


def chain(num_nodes: int, seed: int = 0, param: float = 0.0) -> Graph:
    """Chain 0 - 1 - ... - (N-1) (even positions form the first colour class)."""
    return Graph(num_nodes, [(i, i + 1) for i in range(int(num_nodes) - 1)])


def ring(num_nodes: int, seed: int = 0, param: float = 0.0) -> Graph:
    """Ring 0 - 1 - ... - (N-1) - 0 of N >= 3 nodes (bipartite only for even N)."""
    if int(num_nodes) < 3:
        raise ValueError(f"a ring needs at least 3 nodes, got {num_nodes}")
    return _from_nx(nx.cycle_graph(int(num_nodes)))


def grid(num_nodes: int, seed: int = 0, param: float = 0.0) -> Graph:
    """2-D grid, ``param`` rows (default: the most square factorisation), row-major labels."""
    rows = int(param) or max(r for r in range(1, int(np.sqrt(num_nodes)) + 1) if num_nodes % r == 0)
    if num_nodes % rows:
        raise ValueError(f"a grid of {num_nodes} nodes cannot have {rows} rows")
    g = nx.convert_node_labels_to_integers(
        nx.grid_2d_graph(rows, num_nodes // rows), ordering="sorted"
    )
    return _from_nx(g)


def torus(num_nodes: int, seed: int = 0, param: float = 0.0) -> Graph:
    """2-D torus (4-regular), ``param`` rows (default: the most square factorisation
    with at least 3 rows and columns), row-major labels.

    With 2 rows or columns a wrap-around link would duplicate a grid link, so both must
    be >= 3 (9, 12, 15, 16, ... nodes); the torus is bipartite only when both are even.
    """
    n = int(num_nodes)
    rows = int(param)
    if not rows:
        fits = [r for r in range(3, int(np.sqrt(n)) + 1) if n % r == 0]
        if not fits:
            raise ValueError(
                f"no torus of {n} nodes: it needs rows x columns nodes with both >= 3 "
                "(e.g. 9, 12, 15, 16)"
            )
        rows = max(fits)
    if n % rows or rows < 3 or n // rows < 3:
        raise ValueError(
            f"a torus of {n} nodes cannot have {rows} rows: it needs rows x columns nodes "
            "with both >= 3"
        )
    g = nx.convert_node_labels_to_integers(
        nx.grid_2d_graph(rows, n // rows, periodic=True), ordering="sorted"
    )
    return _from_nx(g)


def complete(num_nodes: int, seed: int = 0, param: float = 0.0) -> Graph:
    """Complete graph: every pair of workers linked (``param`` unused)."""
    return _from_nx(nx.complete_graph(int(num_nodes)))


def random_regular(num_nodes: int, seed: int = 0, param: float = 0.0) -> Graph:
    """Random ``param``-regular graph (default: 3); seeded redraws until connected."""
    n = int(num_nodes)
    d = float(param) or 3.0
    if d != int(d):
        raise ValueError(f"a regular graph needs a whole degree, got {param}")
    d = int(d)
    if not 1 <= d < n:
        raise ValueError(f"a {d}-regular graph needs 1 <= degree < {n} nodes")
    if n * d % 2:
        raise ValueError(f"a {d}-regular graph on {n} nodes does not exist: N * degree is odd")
    if d == 1 and n > 2:
        raise ValueError(f"a 1-regular graph on {n} > 2 nodes is disconnected; use degree >= 2")
    rng = np.random.default_rng([seed, 3])
    g = _connected_draw(
        lambda: nx.random_regular_graph(d, n, seed=int(rng.integers(2**31))),
        f"{d}-regular graph on {n} nodes",
        "raise the degree",
    )
    return _from_nx(g)


def erdos_renyi(num_nodes: int, seed: int = 0, param: float = 0.0) -> Graph:
    """Erdos-Renyi G(N, p), ``param`` = edge probability p (default: 0.3); redrawn until
    connected."""
    n = int(num_nodes)
    p = float(param) or 0.3
    if not 0 < p <= 1:
        raise ValueError(f"edge probability must be in (0, 1], got {p:g}")
    rng = np.random.default_rng([seed, 30])
    g = _connected_draw(
        lambda: nx.gnp_random_graph(n, p, seed=int(rng.integers(2**31))),
        f"Erdos-Renyi graph with p={p:g} on {n} nodes",
        "raise p",
    )
    return _from_nx(g)


def _radio_layout(
    num_nodes: int, seed: int, param: float, side: float
) -> tuple[np.ndarray, nx.Graph]:
    """Devices uniform in a ``side`` x ``side`` m square and their connected radio graph
    for range ``param`` metres (default: :func:`_auto_radius`)."""
    rng = np.random.default_rng([seed, 250])
    pos = rng.uniform(0, side, size=(num_nodes, 2))
    radius = float(param)
    if radius <= 0:
        radius = _auto_radius(pos, side)
    g = _radio_graph(pos, radius)
    if not nx.is_connected(g):
        raise ValueError(f"radio range {radius:g} m leaves the {num_nodes} devices disconnected")
    return pos, g


def random_geometric(
    num_nodes: int, seed: int = 0, param: float = 0.0, side: float = 250.0
) -> Graph:
    """Devices uniform in a ``side`` x ``side`` m square (default: 250), linked within
    ``param`` metres (default: the smallest multiple of 12.5 m that connects them, or,
    when 12.5 m already does, the smallest of 6.25 m, 3.125 m, ... that still does:
    :func:`_auto_radius`).

    The full radio graph, not made bipartite (compare :func:`geometric`, which drops
    links from the same device layout); positions are kept for the energy model.
    """
    pos, g = _radio_layout(num_nodes, seed, param, side)
    return Graph(num_nodes, g.edges(), pos)


def geometric(num_nodes: int, seed: int = 0, param: float = 0.0, side: float = 250.0) -> Graph:
    """Devices uniform in a ``side`` x ``side`` m square, linked within radio range.

    The range is ``param`` metres, or (default) the smallest multiple of side/20 that
    connects the devices (halved while it still connects them when side/20 does:
    :func:`_auto_radius`, as for :func:`random_geometric`). The resulting graph is made
    bipartite by 2-colouring a BFS tree from device 0 and dropping the links inside a
    colour class (a tree keeps it connected); positions are kept for the energy model.
    """
    pos, g = _radio_layout(num_nodes, seed, param, side)
    colour = {0: 0}
    for u, v in nx.bfs_edges(g, 0):
        colour[v] = 1 - colour[u]
    edges = [(u, v) for u, v in g.edges() if colour[u] != colour[v]]
    return Graph(num_nodes, edges, pos)


def geometric_chain(
    num_nodes: int, seed: int = 0, param: float = 0.0, side: float = 250.0
) -> Graph:
    """The papers' energy set-up: devices uniform in a square, chained greedily from
    device 0 by nearest unvisited neighbour (then relabelled in chain order)."""
    rng = np.random.default_rng([seed, 250])
    pos = rng.uniform(0, side, size=(num_nodes, 2))
    order = _greedy_order(pos)
    return Graph(num_nodes, [(i, i + 1) for i in range(num_nodes - 1)], pos[order])


def _greedy_order(pos: np.ndarray) -> list[int]:
    """The greedy nearest-neighbour walk over the points ``pos`` from point 0: each step
    goes to the unvisited point of least ``sqrt(dx^2 + dy^2)``, the lowest index among
    equal distances. A k-d tree of the unvisited points (rebuilt once half of it is
    visited) finds the nearest unvisited one; the points within a hair of its distance
    are then compared by that exact distance: O(N log N) for uniform layouts (the
    scan of all N distances per step took 6.7 s at 20,000 devices, 170 s at 100,000)."""
    from scipy.spatial import cKDTree

    n = len(pos)
    order, visited = [0], np.zeros(n, dtype=bool)
    visited[0] = True
    alive, tree, stale = np.arange(n), cKDTree(pos), 1  # tree of pos[alive]; stale visited
    for _ in range(n - 1):
        if 2 * stale > alive.size:
            alive = np.flatnonzero(~visited)
            tree, stale = cKDTree(pos[alive]), 0
        here = pos[order[-1]]
        k = 8
        while True:  # the k nearest of the tree, k grown until one is unvisited
            k = min(k, alive.size)
            dist, at = tree.query(here, k=[*range(1, k + 1)])
            found = alive[at]
            free = ~visited[found]
            if free.any():
                break
            k *= 4
        # every point whose exact distance can tie with the nearest unvisited one: among
        # the k found unless all of them are that near
        reach = float(dist[free][0]) * (1 + 1e-9) + 1e-12
        if dist[-1] > reach or k == alive.size:
            near = found[free & (dist <= reach)]
        else:
            near = alive[tree.query_ball_point(here, reach)]
            near = near[~visited[near]]
        gap = pos[near] - here
        exact = np.sqrt(gap[:, 0] * gap[:, 0] + gap[:, 1] * gap[:, 1])
        nxt = int(near[exact == exact.min()].min())
        order.append(nxt)
        visited[nxt] = True
        stale += 1
    return order


def _auto_radius(pos: np.ndarray, side: float) -> float:
    """The default radio range: the smallest multiple of ``side`` / 20 that connects the
    devices at ``pos``; when ``side`` / 20 already connects them (a few thousand devices
    and more), the smallest of ``side`` / 40, ``side`` / 80, ... that still does.

    Without the halving, the range would stop shrinking at ``side`` / 20 while the
    devices get denser: each would reach about N pi / 400 others (78 at 10,000
    devices, 785 at 100,000), the links growing as N^2 (39 million at 100,000). Halved,
    a device reaches a few times ln N others, as a connected radio graph needs."""
    step = side / 20
    if _radio_connected(pos, step):
        radius = step
        while _radio_connected(pos, radius / 2):
            radius /= 2
        return radius
    radius = step + step
    while not _radio_connected(pos, radius):
        radius += step
    return radius


def _radio_connected(pos: np.ndarray, radius: float) -> bool:
    """Whether the radio links within ``radius`` connect all devices (those of
    :func:`_radio_graph`, checked on a sparse matrix, without building a networkx graph)."""
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components

    n = len(pos)
    pairs = _radio_pairs(pos, radius)
    links = coo_array((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(links, directed=False, return_labels=False) == 1


def _radio_pairs(pos: np.ndarray, radius: float) -> np.ndarray:
    """The links of devices within ``radius`` (sqrt(dx^2 + dy^2) <= radius) as an
    (edges, 2) array of (i, j), i < j, in order: candidates from a k-d tree,
    O(N log N + edges) (the N x N distances took 6.4 GB at 20,000 devices), each kept by
    the distance computed exactly so."""
    from scipy.spatial import cKDTree

    pairs = cKDTree(pos).query_pairs(radius * (1 + 1e-9) + 1e-12, output_type="ndarray")
    pairs = pairs.reshape(-1, 2)
    gap = pos[pairs[:, 0]] - pos[pairs[:, 1]]
    pairs = pairs[np.sqrt(gap[:, 0] * gap[:, 0] + gap[:, 1] * gap[:, 1]) <= radius]
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _radio_graph(pos: np.ndarray, radius: float) -> nx.Graph:
    """The links of devices within ``radius`` (:func:`_radio_pairs`) as a networkx graph."""
    g = nx.Graph()
    g.add_nodes_from(range(len(pos)))
    g.add_edges_from(_radio_pairs(pos, radius).tolist())
    return g


def random_bipartite(num_nodes: int, seed: int = 0, param: float = 0.0) -> Graph:
    """Random bipartite graph: halves {0..N/2-1} and the rest, each cross edge with
    probability ``param`` (default: 0.3); redrawn (seeded) until connected."""
    p = float(param) or 0.3
    if not 0 < p <= 1:
        raise ValueError(f"edge probability must be in (0, 1], got {p:g}")
    for attempt in range(_DRAWS):
        g = nx.bipartite.random_graph(
            num_nodes // 2,
            num_nodes - num_nodes // 2,
            p,
            seed=int(np.random.default_rng([seed, attempt]).integers(2**31)),
        )
        if nx.is_connected(g):
            return _from_nx(g)
    raise ValueError(f"no connected random bipartite graph with p={p:g} in {_DRAWS} draws; raise p")


def from_edge_list(num_nodes: int, text: str) -> Graph:
    """A user's graph from ``"0-1 1-2 2-3"`` (pairs separated by spaces or commas)."""
    if not text.strip():
        raise ValueError("topology 'edges' needs topology-edges, e.g. '0-1 1-2 2-3'")
    edges = []
    for token in text.replace(",", " ").split():
        a, sep, b = token.partition("-")
        if not sep or not a.strip().isdigit() or not b.strip().isdigit():
            raise ValueError(f"bad edge {token!r}; write edges as 'a-b'")
        edges.append((int(a), int(b)))
    return Graph(num_nodes, edges)


TOPOLOGIES = {
    "chain": chain,
    "ring": ring,
    "grid": grid,
    "torus": torus,
    "complete": complete,
    "random-regular": random_regular,
    "erdos-renyi": erdos_renyi,
    "random-geometric": random_geometric,
    "geometric": geometric,
    "geometric-chain": geometric_chain,
    "bipartite": random_bipartite,
}


def make_topology(
    name: str, num_nodes: int, seed: int = 0, param: float = 0.0, edges: str = ""
) -> Graph:
    """Build a named topology (or ``"edges"`` from an edge list); unknown names raise
    ``ValueError`` listing the known ones."""
    if name == "edges":
        return from_edge_list(num_nodes, edges)
    try:
        build = TOPOLOGIES[name]
    except KeyError:
        known = sorted([*TOPOLOGIES, "edges"])
        raise ValueError(f"unknown topology {name!r}; known: {known}") from None
    return build(num_nodes, seed, param)
