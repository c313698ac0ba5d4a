"""Unit tests for components.cluster: Chinese Whispers, similarity graphs and medoids."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from components.cluster import (
    ChineseWhispers,
    chinese_whispers,
    medoid_index,
    medoids,
    relabel_by_size,
    similarity_graph,
)


def graph_from_edges(n: int, edges: list[tuple[int, int, float]]) -> sparse.csr_matrix:
    rows = [a for a, b, _ in edges] + [b for a, b, _ in edges]
    cols = [b for a, b, _ in edges] + [a for a, b, _ in edges]
    weights = [w for *_, w in edges] * 2
    return sparse.csr_matrix((weights, (rows, cols)), shape=(n, n))


TRIANGLES = [(0, 1, 1.0), (1, 2, 1.0), (0, 2, 1.0), (3, 4, 1.0), (4, 5, 1.0), (3, 5, 1.0)]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def blobs(sizes: list[int], dim: int = 128, noise: float = 0.015, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around nearly orthogonal random centres; returns (X, true labels), shuffled."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(len(sizes), dim)))
    truth = np.repeat(np.arange(len(sizes)), sizes)
    x = unit(centres[truth] + rng.normal(scale=noise, size=(len(truth), dim)))
    order = rng.permutation(len(truth))
    return x[order].astype(np.float32), truth[order]


# -- chinese_whispers on toy graphs ----------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_two_disconnected_triangles_give_two_clusters(seed):
    labels, passes = chinese_whispers(graph_from_edges(6, TRIANGLES), seed=seed)
    # equal sizes: numbered by first member
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert 1 <= passes <= 30


@pytest.mark.parametrize("seed", range(5))
def test_isolated_node_is_its_own_cluster(seed):
    labels, _ = chinese_whispers(graph_from_edges(4, TRIANGLES[:3]), seed=seed)
    assert labels.tolist() == [0, 0, 0, 1]


def test_graph_without_edges_gives_singletons_and_stops_after_one_pass():
    labels, passes = chinese_whispers(sparse.csr_matrix((5, 5)))
    assert labels.tolist() == [0, 1, 2, 3, 4]
    assert passes == 1


@pytest.mark.parametrize("seed", range(10))
def test_bridge_node_joins_group_with_heavier_total_weight(seed):
    # Node 6 has its single strongest edge to group B (0.7 to node 3) but a heavier
    # total towards group A (0.4 + 0.4 to nodes 0 and 1): it must end up in A.
    edges = TRIANGLES + [(6, 0, 0.4), (6, 1, 0.4), (6, 3, 0.7)]
    labels, _ = chinese_whispers(graph_from_edges(7, edges), seed=seed)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 0]


@pytest.mark.parametrize("seed", range(10))
def test_bridge_node_follows_the_heavier_side_when_it_flips(seed):
    edges = TRIANGLES + [(6, 0, 0.3), (6, 1, 0.3), (6, 3, 0.7)]  # 0.6 towards A < 0.7 towards B
    labels, _ = chinese_whispers(graph_from_edges(7, edges), seed=seed)
    assert labels.tolist() == [1, 1, 1, 0, 0, 0, 0]


def test_same_seed_gives_same_labels():
    x, _ = blobs([12, 9, 7, 3], noise=0.05, seed=3)
    graph = similarity_graph(x, threshold=0.7)
    first, passes_first = chinese_whispers(graph, seed=7)
    second, passes_second = chinese_whispers(graph, seed=7)
    np.testing.assert_array_equal(first, second)
    assert passes_first == passes_second


def test_relabel_by_size_numbers_largest_first_ties_by_first_member():
    labels = np.array([5, 5, 9, 9, 9, 2, 7, 7])
    # 9 has 3 members -> 0; 5 and 7 have 2, 5 is seen first -> 1, 7 -> 2; 2 has 1 -> 3
    assert relabel_by_size(labels).tolist() == [1, 1, 0, 0, 0, 3, 2, 2]


def test_relabel_by_size_is_idempotent_and_compact():
    labels = np.array([40, 3, 3, 40, 17, 3, 40, 40, 99])
    relabelled = relabel_by_size(labels)
    assert relabelled.tolist() == [0, 1, 1, 0, 2, 1, 0, 0, 3]
    np.testing.assert_array_equal(relabel_by_size(relabelled), relabelled)


# -- ChineseWhispers on embeddings ------------------------------------------------------------


def assert_recovers(labels: np.ndarray, truth: np.ndarray) -> None:
    """Labels equal the truth up to renaming (a bijection between clusters)."""
    pairs = set(zip(labels.tolist(), truth.tolist()))
    assert len(pairs) == len(set(truth.tolist())) == len(set(labels.tolist())), pairs


@pytest.mark.parametrize(
    ("knn_above", "knn", "expect_knn_graph"), [(5000, 30, False), (10, 5, True)], ids=["all-pairs", "knn"]
)
def test_chinese_whispers_recovers_separated_blobs(knn_above, knn, expect_knn_graph):
    sizes = [20, 15, 10, 5]
    x, truth = blobs(sizes)

    model = ChineseWhispers(threshold=0.91, knn=knn, knn_above=knn_above).fit(x)

    assert_recovers(model.labels_, truth)
    # sizes differ, so label k is exactly the k-th largest blob
    np.testing.assert_array_equal(model.labels_, truth)
    assert model.n_clusters_ == 4
    assert model.labels_.shape == (50,)
    all_pairs_edges = sum(n * (n - 1) // 2 for n in sizes)  # 350
    if expect_knn_graph:
        assert 0 < model.n_edges_ < all_pairs_edges
    else:
        assert model.n_edges_ == all_pairs_edges
    np.testing.assert_array_equal(ChineseWhispers(threshold=0.91, knn=knn, knn_above=knn_above).fit_predict(x), truth)


def test_chinese_whispers_high_threshold_splits_everything():
    x, _ = blobs([6, 4])
    model = ChineseWhispers(threshold=0.9999).fit(x)
    assert model.n_clusters_ == 10
    assert model.n_edges_ == 0
    assert sorted(model.labels_.tolist()) == list(range(10))


def test_chinese_whispers_empty_input():
    model = ChineseWhispers(threshold=0.9).fit(np.empty((0, 128), dtype=np.float32))
    assert model.labels_.shape == (0,)
    assert (model.n_clusters_, model.n_iter_, model.n_edges_) == (0, 0, 0)


def test_chinese_whispers_rejects_flat_input():
    with pytest.raises(ValueError):
        ChineseWhispers(threshold=0.9).fit(np.ones(128, dtype=np.float32))


def test_chinese_whispers_has_no_default_threshold():
    # The threshold belongs to the embedder (params.yaml cluster.threshold for the local model).
    with pytest.raises(TypeError, match="threshold"):
        ChineseWhispers()


# -- similarity_graph -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_unit_vectors() -> np.ndarray:
    return unit(np.random.default_rng(11).normal(size=(60, 8))).astype(np.float32)


@pytest.mark.parametrize("block", [7, 2048])
def test_similarity_graph_all_pairs(random_unit_vectors, block):
    x = random_unit_vectors
    threshold = 0.3
    graph = similarity_graph(x, threshold, block=block)
    dense = graph.toarray()
    sims = x @ x.T

    assert graph.shape == (60, 60)
    assert (abs(graph - graph.T)).nnz == 0  # symmetric
    assert np.all(graph.diagonal() == 0)  # no self loops
    assert np.all(graph.data >= threshold)
    expected = (sims >= threshold) & ~np.eye(60, dtype=bool)
    np.testing.assert_array_equal(dense != 0, expected)
    np.testing.assert_allclose(dense[expected], sims[expected], atol=1e-6)


def test_similarity_graph_blocks_do_not_change_the_result(random_unit_vectors):
    small = similarity_graph(random_unit_vectors, 0.3, block=7)
    whole = similarity_graph(random_unit_vectors, 0.3, block=2048)
    assert (abs(small - whole) > 1e-6).nnz == 0


def test_similarity_graph_knn(random_unit_vectors):
    x = random_unit_vectors
    k, threshold = 4, 0.2
    graph = similarity_graph(x, threshold, knn=k, block=16)
    dense = graph.toarray()
    sims = (x @ x.T).astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :k]

    assert (abs(graph - graph.T)).nnz == 0
    assert np.all(graph.diagonal() == 0)
    assert np.all(graph.data >= threshold)
    in_top = np.zeros((60, 60), dtype=bool)
    np.put_along_axis(in_top, top, True, axis=1)
    # exactly the top-k links above the threshold, from either end
    expected = (in_top | in_top.T) & (sims >= threshold)
    np.testing.assert_array_equal(dense != 0, expected)
    np.testing.assert_allclose(dense[expected], sims[expected], atol=1e-6)
    # far fewer edges than all pairs at the same threshold
    assert graph.nnz < similarity_graph(x, threshold).nnz


def test_similarity_graph_knn_at_least_n_minus_one_is_all_pairs(random_unit_vectors):
    full = similarity_graph(random_unit_vectors, 0.3)
    wide = similarity_graph(random_unit_vectors, 0.3, knn=59)
    assert (abs(full - wide) > 1e-6).nnz == 0


def test_similarity_graph_of_nothing():
    graph = similarity_graph(np.empty((0, 8), dtype=np.float32), 0.5)
    assert graph.shape == (0, 0)
    assert graph.nnz == 0


# -- medoids ---------------------------------------------------------------------------------


def brute_force_medoid(x: np.ndarray) -> int:
    distances = 1.0 - x @ x.T
    return int(np.argmin(distances.sum(axis=1)))


@pytest.mark.parametrize("seed", range(8))
def test_medoid_index_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    x = unit(rng.normal(size=(rng.integers(2, 40), 16)))
    assert medoid_index(x) == brute_force_medoid(x)


def test_medoid_index_single_member_and_empty():
    assert medoid_index(unit(np.ones((1, 4)))) == 0
    with pytest.raises(ValueError):
        medoid_index(np.empty((0, 4)))


def test_medoid_index_picks_the_central_vector():
    # three vectors in a fan: the middle one is closest to both others
    angles = np.array([0.0, 0.3, 0.6])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    assert medoid_index(x[[2, 1, 0]]) == 1


def test_medoids_per_label():
    rng = np.random.default_rng(5)
    x = unit(rng.normal(size=(45, 16)))
    labels = rng.choice([0, 3, 7], size=45)
    result = medoids(x, labels)
    assert sorted(result) == [0, 3, 7]
    assert all(isinstance(k, int) and isinstance(v, int) for k, v in result.items())
    for label, row in result.items():
        members = np.flatnonzero(labels == label)
        assert labels[row] == label
        assert row == members[brute_force_medoid(x[members])]
