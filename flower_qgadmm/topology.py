"""Communication graphs: neighbours and the head/tail two-colouring used by group ADMM.

Edges are stored oriented from the lower to the higher node index; the dual of edge
(a, b) enforces theta_a - theta_b = 0. A chain is the special case GADMM was written
for; any connected bipartite graph works the same way (CQ-GGADMM).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Graph:
    """An undirected, connected, bipartite communication graph on nodes ``0..num_nodes-1``.

    Parameters
    ----------
    num_nodes : int
        Number of workers (>= 2).
    edges : iterable of (int, int)
        Undirected edges; stored as sorted ``(low, high)`` pairs.
    """

    num_nodes: int
    edges: tuple[tuple[int, int], ...]
    _adj: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)
    _colour: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __init__(self, num_nodes: int, edges: Iterable[tuple[int, int]]) -> None:
        if int(num_nodes) < 2:
            raise ValueError(f"a decentralized run needs at least 2 workers, got {num_nodes}")
        n = int(num_nodes)
        norm = set()
        for a, b in edges:
            a, b = int(a), int(b)
            if a == b or not (0 <= a < n and 0 <= b < n):
                raise ValueError(f"bad edge ({a}, {b}) for {n} nodes")
            norm.add((min(a, b), max(a, b)))
        adj: list[list[int]] = [[] for _ in range(n)]
        for a, b in sorted(norm):
            adj[a].append(b)
            adj[b].append(a)
        object.__setattr__(self, "num_nodes", n)
        object.__setattr__(self, "edges", tuple(sorted(norm)))
        object.__setattr__(self, "_adj", tuple(tuple(sorted(x)) for x in adj))
        object.__setattr__(self, "_colour", self._two_colour())

    def _two_colour(self) -> tuple[int, ...]:
        colour = [-1] * self.num_nodes
        colour[0] = 0
        queue = deque([0])
        while queue:
            u = queue.popleft()
            for v in self._adj[u]:
                if colour[v] < 0:
                    colour[v] = 1 - colour[u]
                    queue.append(v)
                elif colour[v] == colour[u]:
                    raise ValueError(
                        f"graph is not bipartite: nodes {u} and {v} are adjacent and "
                        "would both need the same group (an odd cycle passes through them)"
                    )
        missing = [i for i, c in enumerate(colour) if c < 0]
        if missing:
            raise ValueError(f"graph is disconnected: nodes {missing} are unreachable from 0")
        return tuple(colour)

    def neighbours(self, node: int) -> tuple[int, ...]:
        """Neighbours of ``node`` in increasing order."""
        return self._adj[node]

    def group(self, node: int) -> int:
        """0 for the head group (contains node 0), 1 for the tail group."""
        return self._colour[node]

    def colouring(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(heads, tails): the two independent sets that update in alternation."""
        heads = tuple(i for i, c in enumerate(self._colour) if c == 0)
        tails = tuple(i for i, c in enumerate(self._colour) if c == 1)
        return heads, tails


def chain(num_nodes: int) -> Graph:
    """Chain 0 - 1 - ... - (N-1): even positions are heads, odd positions are tails."""
    return Graph(num_nodes, [(i, i + 1) for i in range(int(num_nodes) - 1)])


TOPOLOGIES = {"chain": chain}


def make_topology(name: str, num_nodes: int) -> Graph:
    """Build a named topology; unknown names raise ``ValueError`` listing the known ones."""
    try:
        return TOPOLOGIES[name](num_nodes)
    except KeyError:
        raise ValueError(f"unknown topology {name!r}; known: {sorted(TOPOLOGIES)}") from None
