"""Topologies beyond bipartite graphs: generators, lazy two-colouring, gossip weights."""

from __future__ import annotations

import re

import networkx as nx
import numpy as np
import pytest

from flower_qgadmm.topology import (
    MIXING,
    TOPOLOGIES,
    Graph,
    chain,
    check_mixing_matrix,
    complete,
    erdos_renyi,
    from_edge_list,
    make_topology,
    parse_matrix,
    random_geometric,
    random_regular,
    ring,
    spectral_gap,
    torus,
)


def _nx(graph: Graph) -> nx.Graph:
    g = nx.Graph()
    g.add_nodes_from(graph.active)
    g.add_edges_from(graph.edges)
    return g


def _assert_valid_mixing(graph: Graph, W: np.ndarray) -> None:
    n = graph.num_nodes
    support = np.eye(n, dtype=bool)
    for a, b in graph.edges:
        support[a, b] = support[b, a] = True
    assert W.shape == (n, n) and W.dtype == np.float64
    assert np.all(W >= 0)
    np.testing.assert_allclose(W, W.T, atol=1e-12)
    np.testing.assert_allclose(W.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(W[~support] == 0)
    assert np.all(W[support & ~np.eye(n, dtype=bool)] > 0)
    check_mixing_matrix(graph, W)  # the validator agrees


# ---------------------------------------------------------------- generators

SIZES = {"torus": 12, "random-regular": 12}


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_every_generator_is_connected_seeded_and_sized(name: str) -> None:
    # Prepare
    n = SIZES.get(name, 11)

    # Execute
    first = make_topology(name, n, seed=3)
    again = make_topology(name, n, seed=3)

    # Assert
    assert first.num_nodes == n and first.active == tuple(range(n))
    assert nx.is_connected(_nx(first))
    assert all(a < b for a, b in first.edges)
    assert first.edges == again.edges
    if first.positions is not None:
        np.testing.assert_array_equal(first.positions, again.positions)


@pytest.mark.parametrize("name", ["random-regular", "erdos-renyi", "random-geometric", "bipartite"])
def test_random_generators_depend_on_the_seed_not_the_global_rng(name: str) -> None:
    # Prepare
    np.random.seed(1)
    a = make_topology(name, 12, seed=0)
    np.random.seed(2)

    # Execute
    b = make_topology(name, 12, seed=0)
    others = {make_topology(name, 12, seed=s).edges for s in range(1, 6)}

    # Assert
    assert a.edges == b.edges
    assert others - {a.edges}


def test_degree_patterns_of_the_regular_generators() -> None:
    # Prepare / Execute
    r5, t9, k5, reg = ring(5), torus(9), complete(5), random_regular(10, seed=4, param=3)

    # Assert
    assert [r5.degree(i) for i in range(5)] == [2] * 5 and len(r5.edges) == 5
    assert [t9.degree(i) for i in range(9)] == [4] * 9 and len(t9.edges) == 18
    assert len(k5.edges) == 10 and all(k5.degree(i) == 4 for i in range(5))
    assert [reg.degree(i) for i in range(10)] == [3] * 10 and len(reg.edges) == 15


def test_torus_is_row_major_with_wrap_around_and_default_shape() -> None:
    # Prepare / Execute
    t = torus(12)  # default 3 x 4
    t43 = torus(12, param=4)

    # Assert
    assert t.neighbours(0) == (1, 3, 4, 8)  # right, wrap left, down, wrap up
    assert t43.neighbours(0) == (1, 2, 3, 9)
    with pytest.raises(ValueError, match="both >= 3"):
        torus(10)
    with pytest.raises(ValueError, match="cannot have 2 rows"):
        torus(12, param=2)


def test_generator_parameter_errors() -> None:
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match="at least 3 nodes"):
        ring(2)
    with pytest.raises(ValueError, match="N \\* degree is odd"):
        random_regular(9, param=3)
    with pytest.raises(ValueError, match="degree < 4"):
        random_regular(4, param=4)
    with pytest.raises(ValueError, match="edge probability"):
        erdos_renyi(5, param=1.5)
    with pytest.raises(ValueError, match="no connected Erdos-Renyi graph"):
        erdos_renyi(30, param=0.01)
    with pytest.raises(ValueError, match="unknown topology 'star'; known: \\["):
        make_topology("star", 4)


def test_random_geometric_keeps_all_radio_links_and_positions() -> None:
    # Prepare
    g = random_geometric(15, seed=2)
    bip = make_topology("geometric", 15, seed=2)

    # Execute
    dist = np.linalg.norm(g.positions[:, None] - g.positions[None], axis=-1)
    longest = max(dist[a, b] for a, b in g.edges)

    # Assert
    assert g.positions.shape == (15, 2) and np.all((g.positions >= 0) & (g.positions <= 250))
    np.testing.assert_array_equal(g.positions, bip.positions)  # same device layout
    assert set(bip.edges) <= set(g.edges)
    radius = 12.5 * np.ceil(longest / 12.5 - 1e-9)
    within = {(a, b) for a in range(15) for b in range(a + 1, 15) if dist[a, b] <= radius}
    assert set(g.edges) == within
    fixed = random_geometric(15, seed=2, param=200.0)
    assert len(fixed.edges) > len(g.edges)


# ---------------------------------------------------------------- validation, colouring


def test_graph_allows_non_bipartite_and_keeps_its_messages() -> None:
    # Prepare / Execute
    triangle = Graph(3, [(0, 1), (1, 2), (2, 0)])

    # Assert: a graph that is never coloured works
    assert triangle.edges == ((0, 1), (0, 2), (1, 2)) and triangle.neighbours(0) == (1, 2)
    with pytest.raises(ValueError, match=r"disconnected: nodes \[2, 3\] are unreachable from 0"):
        Graph(4, [(0, 1), (2, 3)])
    with pytest.raises(ValueError, match="disconnected"):
        from_edge_list(5, "0-1 1-2 3-4")
    with pytest.raises(ValueError, match="at least 2 workers"):
        Graph(1, [])
    with pytest.raises(ValueError, match="bad edge"):
        Graph(3, [(0, 3)])
    with pytest.raises(ValueError, match="bad edge"):
        Graph(3, [(1, 1)])


def _cycle_from(message: str) -> list[int]:
    match = re.search(r"odd cycle ((?:\d+ - )+\d+)", message)
    assert match, message
    return [int(x) for x in match.group(1).split(" - ")]


@pytest.mark.parametrize(
    "graph",
    [
        ring(5),
        ring(9),
        Graph(5, [(0, 1), (1, 2), (2, 3), (3, 4), (2, 4)]),
        complete(4),
        torus(9),
    ],
)
def test_odd_cycle_is_reported_when_coloured(graph: Graph) -> None:
    # Prepare
    edges = set(graph.edges)

    # Execute
    with pytest.raises(ValueError, match="not bipartite") as info:
        graph.two_colouring()
    with pytest.raises(ValueError, match="not bipartite"):
        graph.group(0)

    # Assert: a real cycle of odd length along graph edges
    walk = _cycle_from(str(info.value))
    cycle = walk[:-1]
    assert walk[0] == walk[-1]
    assert len(cycle) % 2 == 1 and len(cycle) >= 3 and len(set(cycle)) == len(cycle)
    assert all((min(a, b), max(a, b)) in edges for a, b in zip(walk[:-1], walk[1:], strict=True))


def test_even_ring_and_chain_colour_in_alternation() -> None:
    # Prepare / Execute
    heads, tails = ring(6).two_colouring()
    c = chain(5)

    # Assert
    assert heads == (0, 2, 4) and tails == (1, 3, 5)
    assert c.two_colouring() == ((0, 2, 4), (1, 3)) and c.two_colouring() is c.two_colouring()
    assert [c.group(i) for i in range(5)] == [0, 1, 0, 1, 0]


# ---------------------------------------------------------------- mixing weights

MIXING_GRAPHS = {
    "ring5": ring(5),
    "torus9": torus(9),
    "chain6": chain(6),
    "random-geometric": random_geometric(20, seed=1),
    "erdos-renyi": erdos_renyi(12, seed=5),
    "ring7-minus-3": ring(7).repaired([3]),
}


@pytest.mark.parametrize("kind", MIXING)
@pytest.mark.parametrize("name", sorted(MIXING_GRAPHS))
def test_mixing_weights_are_symmetric_doubly_stochastic_on_the_graph(name: str, kind: str) -> None:
    # Prepare
    graph = MIXING_GRAPHS[name]

    # Execute
    W = graph.mixing_matrix(kind)

    # Assert
    _assert_valid_mixing(graph, W)


def test_metropolis_on_ring5_is_one_third_on_the_band() -> None:
    # Prepare: every degree is 2, so w_ij = 1/(1+2) and w_ii = 1 - 2/3
    expected = np.zeros((5, 5))
    for i in range(5):
        expected[i, [i, (i - 1) % 5, (i + 1) % 5]] = 1 / 3

    # Execute
    W = ring(5).mixing_matrix()

    # Assert
    np.testing.assert_allclose(W, expected, atol=1e-15)


def test_metropolis_and_max_degree_differ_by_hand_on_a_chain() -> None:
    # Prepare: chain 0-1-2, degrees 1, 2, 1
    g = chain(3)

    # Execute
    metro, maxdeg = g.mixing_matrix("metropolis"), g.mixing_matrix("max-degree")

    # Assert
    third = 1 / 3
    np.testing.assert_allclose(metro, [[2 / 3, third, 0], [third, third, third], [0, third, 2 / 3]])
    np.testing.assert_allclose(maxdeg, metro)  # d_max = 2 = max(d_i, d_j) on every edge
    star = Graph(4, [(0, 1), (0, 2), (0, 3), (1, 2)])  # degrees 3, 2, 2, 1
    np.testing.assert_allclose(star.mixing_matrix()[1, 2], 1 / 3)
    np.testing.assert_allclose(star.mixing_matrix("max-degree")[1, 2], 1 / 4)


def test_mixing_matrix_is_a_fresh_copy_and_rejects_unknown_kinds() -> None:
    # Prepare
    g = ring(4)

    # Execute
    W = g.mixing_matrix()
    W[0, 0] = 9.0

    # Assert
    assert g.mixing_matrix()[0, 0] == pytest.approx(1 / 3)
    with pytest.raises(
        ValueError, match=r"unknown mixing weights 'uniform'; known: \['metropolis'"
    ):
        g.mixing_matrix("uniform")


def test_spectral_gap_of_complete_graph_and_rings() -> None:
    # Prepare
    k4 = complete(4)

    # Execute
    W = k4.mixing_matrix("max-degree")
    gaps = [ring(n).spectral_gap() for n in range(3, 13)]

    # Assert
    np.testing.assert_allclose(W, np.full((4, 4), 0.25))
    assert k4.spectral_gap("max-degree") == pytest.approx(1.0)
    assert all(a > b for a, b in zip(gaps[:-1], gaps[1:], strict=True))
    assert gaps[1] == pytest.approx(2 / 3)  # ring(4): eigenvalues 1, 1/3, 1/3, -1/3
    assert spectral_gap(np.eye(2)) == 0.0  # no mixing at all


def test_spectral_gap_ignores_removed_workers() -> None:
    # Prepare
    g = ring(5).repaired([2])  # path 3 - 4 - 0 - 1, worker 2 isolated with w_22 = 1
    W = g.mixing_matrix()

    # Execute
    restricted = spectral_gap(W, g.active)

    # Assert
    assert g.spectral_gap() == pytest.approx(restricted) and restricted > 0
    assert spectral_gap(W) == pytest.approx(0.0, abs=1e-12)  # the isolated worker


def test_check_mixing_matrix_accepts_a_valid_user_matrix() -> None:
    # Prepare
    g = chain(3)
    text = "0.6 0.4 0; 0.4, 0.2, 0.4; 0 0.4 0.6"

    # Execute
    W = check_mixing_matrix(g, parse_matrix(text))

    # Assert
    assert W.dtype == np.float64 and W[1, 1] == pytest.approx(0.2)
    assert check_mixing_matrix(g, [[1, 0, 0], [0, 1, 0], [0, 0, 1]]).dtype == np.float64


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ("0.5 0.5; 0.5 0.5", r"must have shape \(3, 3\), got \(2, 2\)"),
        ("0.6 0.4 0; 0.4 nan 0.4; 0 0.4 0.6", r"non-finite entry w\[1,1\]=nan"),
        ("1.2 -0.2 0; -0.2 1 0.2; 0 0.2 0.8", r"negative weight w\[0,1\]=-0.2"),
        ("0.7 0.3 0; 0.2 0.4 0.4; 0 0.4 0.6", r"not symmetric: w\[0,1\]=0.3 but w\[1,0\]=0.2"),
        (
            "0.6 0.2 0.2; 0.2 0.4 0.4; 0.2 0.4 0.4",
            "weight 0.2 between 0 and 2, which are not neighbours",
        ),
        ("0.6 0.4 0; 0.4 0.1 0.4; 0 0.4 0.6", "not doubly stochastic: row 1 sums to 0.9"),
    ],
)
def test_check_mixing_matrix_names_each_problem(matrix: str, message: str) -> None:
    # Prepare
    g = chain(3)
    W = parse_matrix(matrix)

    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        check_mixing_matrix(g, W)


def test_check_mixing_matrix_requires_removed_workers_isolated() -> None:
    # Prepare: ring 0-1-2-3 minus 3 is the path 0 - 1 - 2
    g = Graph(4, [(0, 1), (1, 2)], removed=[3])
    linked = np.array([[0.5, 0.5, 0, 0], [0.5, 0.2, 0.2, 0.1], [0, 0.2, 0.8, 0], [0, 0.1, 0, 0.9]])
    drifting = g.mixing_matrix()
    drifting[3, 3] = 0.5

    # Execute / Assert
    check_mixing_matrix(g, g.mixing_matrix())
    with pytest.raises(ValueError, match="removed worker 3 weight 0.1 with 1"):
        check_mixing_matrix(g, linked)
    with pytest.raises(ValueError, match=r"removed worker 3 w\[3,3\]=0.5"):
        check_mixing_matrix(g, drifting)


def test_parse_matrix_errors() -> None:
    # Prepare / Execute / Assert
    np.testing.assert_array_equal(parse_matrix(" 1, 0 ;0 1; "), np.eye(2))
    with pytest.raises(ValueError, match="ragged matrix: row 1 has 1 entries, row 0 has 2"):
        parse_matrix("0.5 0.5; 1")
    with pytest.raises(ValueError, match="bad matrix entry 'x' in row 1"):
        parse_matrix("1 0; x 1")
    with pytest.raises(ValueError, match="empty matrix"):
        parse_matrix(" ; ")


# ---------------------------------------------------------------- repair


def test_repaired_ring_drops_the_worker_and_recomputes_weights() -> None:
    # Prepare
    g = ring(5)

    # Execute
    new = g.repaired([2])
    W = new.mixing_matrix()

    # Assert
    assert new.removed == frozenset({2}) and new.active == (0, 1, 3, 4)
    assert new.edges == ((0, 1), (0, 4), (3, 4)) and nx.is_connected(_nx(new))
    assert new.is_path() and new.path_order() == [1, 0, 4, 3]
    _assert_valid_mixing(new, W)
    assert W[2, 2] == 1.0 and W[2].sum() == 1.0 and W[:, 2].sum() == 1.0
    assert W[1, 1] == pytest.approx(2 / 3) and W[0, 4] == pytest.approx(1 / 3)
    assert new.two_colouring() == ((0, 3), (1, 4))  # the path now colours


def test_repaired_chain_splices_neighbours_and_other_graphs_must_stay_connected() -> None:
    # Prepare
    c = chain(5)
    star = Graph(4, [(0, 1), (0, 2), (0, 3)])

    # Execute
    spliced = c.repaired([2]).repaired([0])

    # Assert
    assert spliced.edges == ((1, 3), (3, 4)) and spliced.two_colouring() == ((1, 4), (3,))
    assert complete(4).repaired([0]).edges == ((1, 2), (1, 3), (2, 3))
    with pytest.raises(ValueError, match=r"cannot repair the graph without workers \[0\]: .*"):
        star.repaired([0])
    with pytest.raises(ValueError, match="only 1 workers would remain"):
        chain(3).repaired([0, 1])


# ---------------------------------------------------------------- sparse mixing weights


def _dense_metropolis(graph: Graph, kind: str) -> np.ndarray:
    """The weights built densely, as the package did before they went sparse: w_ii is 1
    minus numpy's sum of the dense row."""
    n = graph.num_nodes
    deg = np.array([graph.degree(i) for i in range(n)], dtype=np.float64)
    W = np.zeros((n, n))
    a, b = np.array(graph.edges).T
    if kind == "metropolis":
        w = 1.0 / (1.0 + np.maximum(deg[a], deg[b]))
    else:
        w = np.full(len(a), 1.0 / (1.0 + deg.max()))
    W[a, b] = W[b, a] = w
    W[np.diag_indices(n)] = 1.0 - W.sum(axis=1)
    return W


def test_dense_sum_is_numpys_sum_of_the_dense_vector() -> None:
    # numpy sums a row pairwise (8 accumulators, blocks of 128, halves above): with 3+
    # non-zero entries the order of the additions depends on their positions
    from flower_qgadmm.numeric import dense_sum

    rng = np.random.default_rng(7)
    sequential_differs = 0
    for _ in range(3000):
        n = int(rng.integers(1, 2500))
        k = int(rng.integers(0, min(n, 14) + 1))
        positions = np.sort(rng.choice(n, k, replace=False))
        values = 1.0 / (1.0 + rng.integers(1, 60, k))
        row = np.zeros((2, n))
        row[1, positions] = values
        expected = row.sum(axis=1)[1]  # a row of a matrix, as the weights are summed
        assert expected == row[1].sum()
        assert dense_sum(positions.tolist(), values.tolist(), n) == expected, (n, positions)
        sequential_differs += sum(values.tolist(), 0.0) != expected
    assert sequential_differs > 100  # the order matters: a plain sum would fail above


@pytest.mark.parametrize("kind", MIXING)
def test_sparse_mixing_weights_are_the_dense_construction_bit_for_bit(kind: str) -> None:
    rng = np.random.default_rng(11)
    graphs = [torus(36), complete(9), ring(7), chain(300)]
    for _ in range(40):
        n = int(rng.integers(3, 600))
        g = nx.gnp_random_graph(n, float(rng.uniform(2 / n, min(1.0, 40 / n))), seed=int(n))
        graphs.append(Graph(n, nx.compose(g, nx.path_graph(n)).edges()))  # connected
    graphs.append(chain(12).repaired([3, 7]))  # removed workers: w_ii = 1, no edges
    for graph in graphs:
        W = graph.mixing_weights(kind)
        assert W.format == "csr" and W.has_sorted_indices
        assert W.nnz == graph.num_nodes + 2 * len(graph.edges)  # edges and diagonal only
        np.testing.assert_array_equal(W.toarray(), _dense_metropolis(graph, kind))
        np.testing.assert_array_equal(graph.mixing_matrix(kind), W.toarray())
        _assert_valid_mixing(graph, graph.mixing_matrix(kind))
        with pytest.raises(ValueError, match="read-only"):
            W.data[0] = 0.5  # cached and shared by every caller
    assert graphs[-1].mixing_weights(kind)[3, 3] == 1.0


def test_mixing_weights_of_a_large_graph_take_memory_of_its_edges() -> None:
    # 50,000 workers: a dense W would take 20 GB; the sparse one takes its 150,000
    # entries (under 4 MB), in well under a second here
    import tracemalloc

    graph = ring(50_000)
    tracemalloc.start()
    try:
        W = graph.mixing_weights()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert W.shape == (50_000, 50_000) and W.nnz == 150_000
    assert peak < 50e6, peak
    assert W[0, 1] == W[0, 49_999] == 1 / 3 and W[0, 0] == 1 - (1 / 3 + 1 / 3)


def test_check_mixing_matrix_takes_a_sparse_matrix_and_refuses_a_complex_one() -> None:
    # A scipy sparse W (how a large graph's weights come) was refused as "not a numeric
    # matrix: setting an array element with a sequence"; a complex W lost its imaginary
    # part with only numpy's ComplexWarning
    from scipy.sparse import coo_array, csr_array, csr_matrix

    g = ring(5)
    W = g.mixing_matrix()
    for sparse in (csr_array(W), csr_matrix(W), coo_array(W)):
        checked = check_mixing_matrix(g, sparse)  # checked and returned sparse
        assert isinstance(checked, csr_array) and checked.dtype == np.float64
        np.testing.assert_array_equal(checked.toarray(), W)
    with pytest.raises(ValueError, match="not symmetric"):
        check_mixing_matrix(g, csr_array(np.triu(W)))
    np.testing.assert_array_equal(check_mixing_matrix(g, W.astype(complex)), W)
    twisted = W + 1j * np.eye(5) * 1e-3
    with pytest.raises(ValueError, match=r"complex entry w\[0,0\]"):
        check_mixing_matrix(g, twisted)


def test_spectral_gap_and_mixing_groups_take_the_sparse_weights() -> None:
    # Graph.mixing_weights is sparse now: spectral_gap(g.mixing_weights()) failed with
    # "setting an array element with a sequence", mixing_groups with an IndexError
    from flower_qgadmm.topology import mixing_groups

    g = ring(7).repaired([2])
    W = g.mixing_weights()
    assert spectral_gap(W, g.active) == spectral_gap(g.mixing_matrix(), g.active)
    assert spectral_gap(W, g.active) == g.spectral_gap() > 0
    assert mixing_groups(g, W) == mixing_groups(g, W.toarray()) == [[0, 1, 3, 4, 5, 6]]
    from scipy.sparse import block_diag

    halves = block_diag([np.full((2, 2), 0.5)] * 2, format="csr")  # 0-1 and 2-3 never mix
    assert mixing_groups(chain(4), halves) == [[0, 1], [2, 3]]


def test_a_disconnected_graph_names_at_most_ten_unreachable_nodes() -> None:
    # a chain of 10,000 cut after node 0: the message named all 9,999 others
    edges = [(i, i + 1) for i in range(1, 9999)]
    with pytest.raises(ValueError) as caught:
        Graph(10000, edges)
    text = str(caught.value)
    assert "nodes [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ... (9999 in all)] are unreachable" in text
    assert len(text) < 120


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_radio_graphs_and_the_greedy_chain_equal_a_plain_construction(seed) -> None:
    # the k-d tree and the vectorized greedy chain against the N x N distances and the
    # one-neighbour-at-a-time chain they replaced (same layout, same edges in order)
    from flower_qgadmm.topology import geometric_chain

    n, side = 400, 250.0
    pos = np.random.default_rng([seed, 250]).uniform(0, side, size=(n, 2))
    dist = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
    for radius in (30.0, 37.5):
        rows, cols = np.nonzero(np.triu(dist <= radius, k=1))
        plain = list(zip(rows.tolist(), cols.tolist(), strict=True))
        g = random_geometric(n, seed=seed, param=radius)
        assert sorted(g.edges) == sorted(plain) and np.array_equal(g.positions, pos)
    order, left = [0], set(range(1, n))
    while left:
        nxt = min(sorted(left), key=lambda j: dist[order[-1], j])
        order.append(nxt)
        left.remove(nxt)
    assert np.array_equal(geometric_chain(n, seed=seed).positions, pos[order])


@pytest.mark.parametrize("layout", ["lattice", "clusters", "uniform"])
def test_the_greedy_walk_equals_the_scan_of_every_distance(layout) -> None:
    """The k-d tree walk against the plain walk (every unvisited distance at each step,
    the lowest index among equal ones), on layouts full of equal distances (a lattice,
    shuffled), of far-apart clusters (long jumps, the tree's k grown) and uniform."""
    from flower_qgadmm.topology import _greedy_order

    rng = np.random.default_rng(3)
    if layout == "lattice":
        pos = np.stack(np.meshgrid(np.arange(30.0), np.arange(25.0)), -1).reshape(-1, 2)
        pos = pos[rng.permutation(len(pos))] * 2.5
    elif layout == "clusters":
        centres = rng.uniform(0, 1000, size=(12, 2))
        pos = (centres[:, None, :] + rng.normal(0, 3, size=(12, 60, 2))).reshape(-1, 2)
        pos = pos[rng.permutation(len(pos))]
    else:
        pos = rng.uniform(0, 250, size=(1500, 2))
    order, left = [0], np.ones(len(pos), dtype=bool)
    left[0] = False
    for _ in range(len(pos) - 1):
        gap = pos - pos[order[-1]]
        dist = np.sqrt(gap[:, 0] * gap[:, 0] + gap[:, 1] * gap[:, 1])
        dist[~left] = np.inf
        order.append(int(np.argmin(dist)))  # argmin: the first of equal minima
        left[order[-1]] = False
    assert _greedy_order(pos) == order


def test_the_default_radio_range_keeps_a_large_radio_graph_sparse() -> None:
    # Prepare: 10,000 devices in the 250 m square; 12.5 m (side / 20, the smallest
    # multiple the default used to take) connects them with 376,000 links, a device
    # reaching N pi / 400 = 78 others: links growing as N^2 (39 million at 100,000)
    n = 10_000

    # Execute
    g = random_geometric(n, seed=0)
    bip = make_topology("geometric", n, seed=0)

    # Assert: halved to 6.25 m, which still connects them (the graph checks it) and
    # 3.125 m does not: a few times ln N links per device
    mean_degree = 2 * len(g.edges) / n
    assert mean_degree < 30, mean_degree
    longest = max(float(np.linalg.norm(g.positions[a] - g.positions[b])) for a, b in g.edges)
    assert 3.125 < longest <= 6.25
    assert set(bip.edges) <= set(g.edges) and 2 * len(bip.edges) / n < 30


def test_a_sparse_user_matrix_is_checked_without_an_n_by_n_array() -> None:
    # Prepare: Metropolis weights of a ring of 4,000 workers as a user's sparse matrix
    # (dense: 128 MB, and the check made several such arrays)
    import tracemalloc

    from scipy.sparse import csr_array

    from flower_qgadmm.topology import mixing_groups

    g = ring(4000)
    user = csr_array(g.mixing_weights())
    tracemalloc.start()
    try:
        # Execute
        W = check_mixing_matrix(g, user)
        groups = mixing_groups(g, W)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    # Assert: sparse, as csr_array of the dense matrix would hold it; one group
    assert peak < 16_000_000, peak
    dense = csr_array(g.mixing_matrix())
    for part in ("indptr", "indices", "data"):
        assert np.array_equal(getattr(W, part), getattr(dense, part))
        assert getattr(W, part).dtype == getattr(dense, part).dtype
    assert len(groups) == 1
    # and refused as the dense matrix is, naming the same entry
    small = ring(6)
    for change, message in (
        ((0, 2, 0.1), "is not symmetric: w[0,2]=0.1 but w[2,0]=0"),
        ((1, 1, 1 / 3 + 1e-6), "row 1 sums to 1.000001"),
        ((2, 0, -0.5), "negative weight w[2,0]=-0.5"),
    ):
        bad = small.mixing_matrix()
        bad[change[0], change[1]] = change[2]
        for given in (bad, csr_array(bad)):
            with pytest.raises(ValueError, match=re.escape(message)):
                check_mixing_matrix(small, given)
