"""Communication graphs: neighbours and the head/tail two-colouring used by group ADMM.

Edges are stored oriented from the lower to the higher node index; the dual of edge
(a, b) enforces theta_a - theta_b = 0. A chain is the special case GADMM was written
for; any connected bipartite graph works the same way (CQ-GGADMM, arXiv 2009.06459):
the two colour classes are the head and tail groups. Generators use networkx.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import networkx as nx
import numpy as np


@dataclass(frozen=True)
class Graph:
    """An undirected, connected, bipartite communication graph on nodes ``0..num_nodes-1``.

    Parameters
    ----------
    num_nodes : int
        Number of workers (>= 2).
    edges : iterable of (int, int)
        Undirected edges; stored as sorted ``(low, high)`` pairs.
    positions : array (num_nodes, 2), optional
        Device coordinates in metres (for the transmit-energy model).
    removed : iterable of int, optional
        Workers that left the run: they keep their labels but have no edges, and the
        rest must still be connected and bipartite.
    """

    num_nodes: int
    edges: tuple[tuple[int, int], ...]
    positions: np.ndarray | None = field(default=None, compare=False)
    removed: frozenset[int] = frozenset()
    _adj: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)
    _colour: tuple[int, ...] = field(init=False, repr=False, compare=False)

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
        object.__setattr__(self, "num_nodes", n)
        object.__setattr__(self, "edges", tuple(sorted(norm)))
        if positions is not None:
            positions = np.asarray(positions, dtype=np.float64)
            if positions.shape != (n, 2):
                raise ValueError(f"positions must have shape ({n}, 2), got {positions.shape}")
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "removed", gone)
        object.__setattr__(self, "_adj", tuple(tuple(sorted(x)) for x in adj))
        object.__setattr__(self, "_colour", self._two_colour())

    def _two_colour(self) -> tuple[int, ...]:
        """BFS 2-colouring from the first active node; a conflict yields the odd cycle."""
        colour = [-1] * self.num_nodes
        parent = [-1] * self.num_nodes
        start = min(self.active)
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
                    raise ValueError(
                        "graph is not bipartite (no head/tail split): odd cycle "
                        + " - ".join(map(str, [*cycle, cycle[0]]))
                    )
        missing = [i for i in self.active if colour[i] < 0]
        if missing:
            raise ValueError(f"graph is disconnected: nodes {missing} are unreachable from {start}")
        return tuple(colour)

    def degree(self, node: int) -> int:
        """Number of neighbours."""
        return len(self._adj[node])

    @property
    def active(self) -> tuple[int, ...]:
        """Workers still in the run."""
        return tuple(i for i in range(self.num_nodes) if i not in self.removed)

    def is_path(self) -> bool:
        """True for a chain (a path through all active nodes)."""
        ends = [n for n in self.active if self.degree(n) == 1]
        return (
            len(self.edges) == len(self.active) - 1
            and len(ends) == 2
            and all(self.degree(n) <= 2 for n in self.active)
        )

    def path_order(self) -> list[int]:
        """The active nodes in chain order, from the lower-numbered end."""
        start = min(n for n in self.active if self.degree(n) == 1)
        order, prev = [start], -1
        while len(order) < len(self.active):
            nxt = next(m for m in self.neighbours(order[-1]) if m != prev)
            prev = order[-1]
            order.append(nxt)
        return order

    def repaired(self, failed: Iterable[int]) -> Graph:
        """The graph without ``failed`` workers, as CQ-GGADMM's chain repair prescribes.

        On a chain, the neighbours of a removed worker become neighbours (the chain
        order is kept; the colouring restarts from its first worker). On any other
        graph the workers' edges are dropped and the rest must stay connected and
        bipartite, or ValueError says why.
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

    def neighbours(self, node: int) -> tuple[int, ...]:
        """Neighbours of ``node`` in increasing order."""
        return self._adj[node]

    def group(self, node: int) -> int:
        """0 for the head group (contains node 0), 1 for the tail group."""
        return self._colour[node]

    def colouring(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(heads, tails): the two independent sets that update in alternation."""
        heads = tuple(i for i, c in enumerate(self._colour) if c == 0 and i not in self.removed)
        tails = tuple(i for i, c in enumerate(self._colour) if c == 1 and i not in self.removed)
        return heads, tails


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


def _from_nx(g: nx.Graph, positions: np.ndarray | None = None) -> Graph:
    return Graph(g.number_of_nodes(), g.edges(), positions)


def chain(num_nodes: int, seed: int = 0, param: float = 0.0) -> Graph:
    """Chain 0 - 1 - ... - (N-1): even positions are heads, odd positions are tails."""
    return Graph(num_nodes, [(i, i + 1) for i in range(int(num_nodes) - 1)])


def ring(num_nodes: int, seed: int = 0, param: float = 0.0) -> Graph:
    """Ring of an even number of nodes (an odd ring is not bipartite)."""
    if num_nodes < 4 or num_nodes % 2:
        raise ValueError(
            f"a ring is bipartite only with an even number >= 4 of nodes, got {num_nodes}"
        )
    return _from_nx(nx.cycle_graph(num_nodes))


def grid(num_nodes: int, seed: int = 0, param: float = 0.0) -> Graph:
    """2-D grid, ``param`` rows (default: the most square factorisation), row-major labels."""
    rows = int(param) or max(r for r in range(1, int(np.sqrt(num_nodes)) + 1) if num_nodes % r == 0)
    if num_nodes % rows:
        raise ValueError(f"a grid of {num_nodes} nodes cannot have {rows} rows")
    g = nx.convert_node_labels_to_integers(
        nx.grid_2d_graph(rows, num_nodes // rows), ordering="sorted"
    )
    return _from_nx(g)


def geometric(num_nodes: int, seed: int = 0, param: float = 0.0, side: float = 250.0) -> Graph:
    """Devices uniform in a ``side`` x ``side`` m square, linked within radio range.

    The range is ``param`` metres, or (default) the smallest multiple of side/20 that
    connects the devices. The resulting graph is made bipartite by 2-colouring a BFS
    tree from device 0 and dropping the links inside a colour class (a tree keeps it
    connected); positions are kept for the energy model.
    """
    rng = np.random.default_rng([seed, 250])
    pos = rng.uniform(0, side, size=(num_nodes, 2))
    radius = float(param)
    if radius <= 0:
        radius = side / 20
        while not nx.is_connected(_radio_graph(pos, radius)):
            radius += side / 20
    g = _radio_graph(pos, radius)
    if not nx.is_connected(g):
        raise ValueError(f"radio range {radius:g} m leaves the {num_nodes} devices disconnected")
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
    order, left = [0], set(range(1, num_nodes))
    while left:
        last = pos[order[-1]]
        nxt = min(left, key=lambda j: float(np.linalg.norm(pos[j] - last)))
        order.append(nxt)
        left.remove(nxt)
    return Graph(num_nodes, [(i, i + 1) for i in range(num_nodes - 1)], pos[order])


def _radio_graph(pos: np.ndarray, radius: float) -> nx.Graph:
    dist = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
    g = nx.Graph()
    g.add_nodes_from(range(len(pos)))
    g.add_edges_from(zip(*np.nonzero(np.triu(dist <= radius, k=1)), strict=True))
    return g


def random_bipartite(num_nodes: int, seed: int = 0, param: float = 0.0) -> Graph:
    """Random bipartite graph: halves {0..N/2-1} and the rest, each cross edge with
    probability ``param`` (default: 0.3); redrawn (seeded) until connected."""
    p = float(param) or 0.3
    for attempt in range(200):
        g = nx.bipartite.random_graph(
            num_nodes // 2,
            num_nodes - num_nodes // 2,
            p,
            seed=int(np.random.default_rng([seed, attempt]).integers(2**31)),
        )
        if nx.is_connected(g):
            return _from_nx(g)
    raise ValueError(f"no connected random bipartite graph with p={p:g} in 200 draws; raise p")


def from_edge_list(num_nodes: int, text: str) -> Graph:
    """A user's graph from ``"0-1 1-2 2-3"`` (pairs separated by spaces or commas)."""
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
