"""Unit tests for the registered clusterers, kNN search, k-means||, DBSCAN and rank-order."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse
from sklearn.base import clone
from sklearn.cluster import DBSCAN
from sklearn.metrics import silhouette_score

from components.cluster import (
    ALGORITHMS,
    CALIBRATION_GRID,
    SCALABLE,
    ChineseWhispers,
    KMeansGMM,
    ScalableKMeans,
    SilhouetteDBSCAN,
    chinese_whispers,
    cosine_silhouette,
    kmeans_parallel_init,
    knn_graph,
    knn_to_csr,
    make,
    rank_order_distances,
    similarity_graph,
)
from components.cluster.chinese_whispers import _blocked, _sequential
from components.cluster.dbscan import dbscan_on_graph, neighbour_graph
from components.report.metrics import pairwise_prf


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def face_blobs(n_ids: int = 8, per_id: int = 20, dim: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Identities as unit vectors: intra cosine ~0.95, inter ~0.3 (shared direction), shuffled."""
    rng = np.random.default_rng(seed)
    shared = unit(rng.normal(size=dim))
    centres = unit(0.65 * shared + unit(rng.normal(size=(n_ids, dim))))  # cos(centres) ~ 0.3
    truth = np.repeat(np.arange(n_ids), per_id)
    x = unit(centres[truth] + rng.normal(scale=0.02, size=(len(truth), dim)))  # 128 * 0.02^2 -> cos ~ 0.95
    order = rng.permutation(len(truth))
    return x[order].astype(np.float32), truth[order]


# Settings for the synthetic blobs (inter-identity cosine ~0.3, so thresholds sit far below
# the face defaults; rank-order lists shorter than an identity).
BLOB_PARAMS = {
    "chinese_whispers": {"threshold": 0.8},
    "kmeans": {"threshold": 0.8},
    "gmm": {"threshold": 0.8},
    "dbscan": {},
    "rank_order": {"k": 20},
    "approx_rank_order": {"k": 30},
    "kmeans_dbscan": {"part_size": 80},
    "leiden": {"threshold": 0.8},
    "infomap": {"threshold": 0.8},
}

NAMES = sorted(ALGORITHMS)


@pytest.fixture(scope="module")
def blobs():
    return face_blobs()


def test_registry_is_complete_and_consistent():
    assert set(ALGORITHMS) == {
        "chinese_whispers", "kmeans", "gmm", "dbscan", "rank_order",
        "approx_rank_order", "kmeans_dbscan", "leiden", "infomap",
    }
    assert SCALABLE <= set(ALGORITHMS)
    assert set(CALIBRATION_GRID) == set(ALGORITHMS) == set(BLOB_PARAMS)
    for name, grid in CALIBRATION_GRID.items():
        defaults = clone(ALGORITHMS[name](**BLOB_PARAMS[name])).get_params()  # sklearn-compatible: clone, get_params
        assert 1 <= len(grid) <= 2
        for param, values in grid.items():
            assert param in defaults, (name, param)
            assert len(values) >= 2
    assert isinstance(make("leiden", threshold=0.5), ALGORITHMS["leiden"])
    with pytest.raises(ValueError):
        make("no_such_algorithm")


@pytest.mark.parametrize("name", NAMES)
def test_recovers_separated_identities(name, blobs):
    x, truth = blobs
    model = make(name, **BLOB_PARAMS[name])
    assert model.fit(x) is model
    labels = model.labels_
    assert labels.shape == (len(x),) and labels.dtype.kind == "i"
    assert labels.min() == 0 and set(labels.tolist()) == set(range(model.n_clusters_))  # compact, no -1
    assert pairwise_prf(truth, labels)[2] >= 0.95
    np.testing.assert_array_equal(make(name, **BLOB_PARAMS[name]).fit_predict(x), labels)  # reproducible


@pytest.mark.parametrize("name", NAMES)
def test_degenerate_inputs(name, blobs):
    x, _ = blobs
    params = BLOB_PARAMS[name]
    empty = make(name, **params).fit(np.empty((0, 128), np.float32))
    assert empty.labels_.shape == (0,) and empty.n_clusters_ == 0
    one = make(name, **params).fit(x[:1])
    assert one.labels_.tolist() == [0] and one.n_clusters_ == 1
    same = make(name, **params).fit(np.repeat(x[:1], 12, axis=0))
    assert same.labels_.tolist() == [0] * 12 and same.n_clusters_ == 1


@pytest.mark.parametrize("name", NAMES)
def test_rejects_bad_input_and_coerces_dtype(name, blobs):
    x, _ = blobs
    params = BLOB_PARAMS[name]
    with pytest.raises(ValueError):
        make(name, **params).fit(np.ones(128, np.float32))
    with pytest.raises(ValueError):
        make(name, **params).fit(np.ones((2, 4, 128), np.float32))
    bad = x[:10].copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError):
        make(name, **params).fit(bad)
    bad[3, 5] = np.inf
    with pytest.raises(ValueError):
        make(name, **params).fit(bad)
    small = x[:40]
    as64 = make(name, **BLOB_PARAMS[name]).fit_predict(small.astype(np.float64))
    np.testing.assert_array_equal(as64, make(name, **BLOB_PARAMS[name]).fit_predict(small))


# -- kNN -----------------------------------------------------------------------------------------


def test_exact_knn_matches_numpy_and_excludes_self():
    x, _ = face_blobs(4, 30, seed=2)
    idx, sims = knn_graph(x, 7, method="exact")
    assert idx.shape == sims.shape == (120, 7) and idx.dtype == np.int64 and sims.dtype == np.float32
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    expected = np.sort(full, axis=1)[:, ::-1][:, :7]
    np.testing.assert_allclose(sims, expected, atol=1e-5)
    assert not (idx == np.arange(120)[:, None]).any()
    assert np.all(np.diff(sims, axis=1) <= 1e-6)  # best first


def test_knn_clamps_k_and_handles_duplicates():
    x = np.repeat(unit(np.ones((1, 16))), 5, axis=0).astype(np.float32)
    idx, sims = knn_graph(x, 10)
    assert idx.shape == (5, 4)
    for row in range(5):
        assert sorted(idx[row].tolist()) == sorted(set(range(5)) - {row})


@pytest.mark.parametrize("method", ["ivf", "hnsw"])
def test_approximate_knn_recall_against_brute_force(method):
    x, _ = face_blobs(300, 10, seed=3)  # 3000 faces
    k = 10
    exact, _ = knn_graph(x, k, method="exact")
    approx, _ = knn_graph(x, k, method=method)
    hits = sum(len(set(a) & set(e)) for a, e in zip(approx.tolist(), exact.tolist()))
    assert hits / exact.size >= 0.95


def test_knn_to_csr_is_symmetric_and_thresholded():
    x, _ = face_blobs(4, 10, seed=4)
    idx, sims = knn_graph(x, 5)
    graph = knn_to_csr(idx, sims, threshold=0.8)
    assert abs(graph - graph.T).nnz == 0 and graph.diagonal().sum() == 0
    assert graph.data.min() >= 0.8
    # same graph as the all-pairs builder restricted to kNN
    reference = similarity_graph(x, 0.8, knn=5)
    assert abs(graph - reference).max() < 1e-5


# -- Chinese Whispers schedules -------------------------------------------------------------------


def random_graph(n: int, edges: int, seed: int) -> sparse.csr_matrix:
    rng = np.random.default_rng(seed)
    g = sparse.csr_matrix((rng.random(edges), (rng.integers(0, n, edges), rng.integers(0, n, edges))), shape=(n, n))
    g = g.maximum(g.T).tolil()
    g.setdiag(0)
    return g.tocsr()


def test_blocked_schedule_with_block_one_is_the_sequential_algorithm():
    g = random_graph(300, 900, seed=1)
    seq, seq_passes = _sequential(g, 30, np.random.default_rng(5), 1)
    blk, blk_passes = _blocked(g, 30, np.random.default_rng(5), 1)
    np.testing.assert_array_equal(seq, blk)
    assert seq_passes == blk_passes


@pytest.mark.parametrize("block_size", [4, 16, 64])
def test_fast_path_gives_the_same_clusters_on_blobs(blobs, block_size):
    x, truth = blobs
    graph = similarity_graph(x, 0.8)
    before, _ = chinese_whispers(graph, seed=0, block_size=1)
    after, _ = chinese_whispers(graph, seed=0, block_size=block_size)
    assert pairwise_prf(before, after)[2] == 1.0
    assert pairwise_prf(truth, after)[2] == 1.0


def test_chinese_whispers_knn_path_with_blocks(blobs):
    x, truth = blobs
    model = ChineseWhispers(threshold=0.8, knn=10, knn_above=50, block_size=16).fit(x)
    assert pairwise_prf(truth, model.labels_)[2] == 1.0
    assert model.n_edges_ <= 160 * 10


# -- k-means|| and GMM -----------------------------------------------------------------------------


def test_kmeans_parallel_init_gives_k_distinct_centres(blobs):
    x, truth = blobs
    centres = kmeans_parallel_init(x, 8, seed=1)
    assert centres.shape == (8, 128)
    assert len({row.tobytes() for row in centres}) == 8
    # every centre is a data point, and with d^2 sampling the 8 land in 8 different identities
    rows = [int(np.flatnonzero((x == c).all(axis=1))[0]) for c in centres]
    assert len(set(truth[rows].tolist())) == 8


def test_kmeans_fixed_k_and_auto_k(blobs):
    x, truth = blobs
    fixed = ScalableKMeans(n_clusters=8, seed=3).fit(x)
    assert fixed.n_clusters_ == 8 and fixed.cluster_centers_.shape == (8, 128)
    assert pairwise_prf(truth, fixed.labels_)[2] == 1.0
    auto = ScalableKMeans(threshold=0.8).fit(x)
    assert auto.k_ == 8
    assert ScalableKMeans(n_clusters=500).fit(x[:20]).k_ == 20  # clamped to N
    with pytest.raises(ValueError):
        ScalableKMeans(n_clusters=0).fit(x)


def test_cosine_threshold_has_no_default(blobs):
    """The calibrated threshold belongs to the embedder: required where always used, checked where sometimes."""
    from components.cluster import Infomap, Leiden

    x, _ = blobs
    for cls in (ChineseWhispers, Leiden, Infomap):
        with pytest.raises(TypeError, match="threshold"):
            cls()
    for cls in (ScalableKMeans, KMeansGMM):
        assert cls().threshold is None
        with pytest.raises(ValueError, match="threshold"):
            cls().fit(x)  # n_clusters="auto" needs it
        assert cls(n_clusters=8).fit(x).n_clusters_ == 8  # a fixed k does not


def test_gmm_refuses_what_would_not_fit_in_memory(blobs):
    x, _ = blobs
    with pytest.raises(ValueError, match="GB"):
        KMeansGMM(n_clusters=8, max_memory_gb=1e-6).fit(x)
    with pytest.raises(ValueError):
        KMeansGMM(n_clusters=8, covariance_type="full").fit(x)


# -- DBSCAN ------------------------------------------------------------------------------------


def test_cosine_silhouette_matches_sklearn_including_singletons():
    x, truth = face_blobs(5, 6, seed=6)
    labels = truth.copy()
    labels[:3] = [10, 11, 12]  # three singletons
    ours = cosine_silhouette(x, labels, sample_size=None)
    assert ours == pytest.approx(silhouette_score(x, labels, metric="cosine"), abs=1e-5)
    assert cosine_silhouette(x, np.zeros(len(x))) is None


def test_dbscan_matches_sklearn_and_keeps_noise_as_singletons():
    x, truth = face_blobs(4, 15, seed=7)
    rng = np.random.default_rng(0)
    outliers = unit(rng.normal(size=(5, 128))).astype(np.float32)  # far from everything
    x = np.vstack([x, outliers])
    graph = neighbour_graph(x, 0.2, max_neighbors=100)
    ours = dbscan_on_graph(graph, 0.1, min_samples=3)
    theirs = DBSCAN(eps=0.1, min_samples=3, metric="cosine").fit_predict(x)
    assert (theirs[-5:] == -1).all()  # sklearn calls them noise
    singles = theirs.copy()
    singles[theirs == -1] = 100 + np.arange((theirs == -1).sum())
    assert pairwise_prf(singles, ours)[2] == 1.0
    assert len(set(ours[-5:].tolist())) == 5 and not set(ours[-5:]) & set(ours[:-5])  # five singletons


def test_silhouette_dbscan_picks_a_separating_eps(blobs):
    x, truth = blobs
    model = SilhouetteDBSCAN(eps_grid=[0.01, 0.1, 0.5, 0.9]).fit(x)
    assert model.eps_ == 0.1
    assert set(model.scores_) == {0.01, 0.1, 0.5, 0.9}
    assert model.silhouette_ == max(model.scores_.values()) > 0.8
    with pytest.raises(ValueError):
        SilhouetteDBSCAN(eps_grid=[0.0, 0.1]).fit(x)


# -- rank-order distances ------------------------------------------------------------------------

# k = 2: every list is [self, 1st, 2nd]; an item not in a list ranks k + 1 = 3.
HAND_LISTS = np.array([[0, 1, 2], [1, 2, 3], [2, 1, 0], [3, 1, 2]])


def test_zhu_rank_order_distance_by_hand():
    a, b, d = rank_order_distances(HAND_LISTS, "zhu")
    got = {(int(p), int(q)): float(v) for p, q, v in zip(a, b, d)}
    # (0,1): O_0(1)=1, O_1(0)=3 (absent). D(0,1) = O_1(0)+O_1(1) = 3+0 = 3;
    #        D(1,0) runs over all of 1's list: O_0(1)+O_0(2)+O_0(3) = 1+2+3 = 6. (3+6)/min(1,3) = 9
    assert got[(0, 1)] == 9.0
    # (0,2): O_0(2)=2, O_2(0)=2. D(0,2) = O_2(0)+O_2(1)+O_2(2) = 2+1+0 = 3; D(2,0) = 2+1+0 = 3. 6/2 = 3
    assert got[(0, 2)] == got[(2, 0)] == 3.0
    # (1,2): O_1(2)=1, O_2(1)=1. D(1,2) = O_2(1)+O_2(2) = 1; D(2,1) = O_1(2)+O_1(1) = 1. 2/1 = 2
    assert got[(1, 2)] == got[(2, 1)] == 2.0
    # (1,3): O_1(3)=2, O_3(1)=1. D(1,3) = O_3(1)+O_3(2)+O_3(3) = 1+2+0 = 3; D(3,1) = O_1(3)+O_1(1) = 2. 5/1 = 5
    assert got[(1, 3)] == got[(3, 1)] == 5.0
    # (3,2): O_3(2)=2, O_2(3)=3. D(3,2) = O_2(3)+O_2(1)+O_2(2) = 3+1+0 = 4;
    #        D(2,3) = all of 2's list: O_3(2)+O_3(1)+O_3(0) = 2+1+3 = 6. 10/min(2,3) = 5
    assert got[(3, 2)] == 5.0
    assert len(got) == 8


def test_approximate_rank_order_distance_by_hand():
    a, b, d = rank_order_distances(HAND_LISTS, "approx")
    got = {(int(p), int(q)): float(v) for p, q, v in zip(a, b, d)}
    # (0,1): d(0,1) = [0 not in L1] = 1; d(1,0) = [1 no]+[2 no]+[3 not in L0] = 1 (i < O_1(0) = 3). 2/1 = 2
    assert got[(0, 1)] == 2.0
    # (0,2): d(0,2) = [0 in L2]+[1 in L2] = 0; d(2,0) = [2 in L0]+[1 in L0] = 0. 0
    assert got[(0, 2)] == 0.0
    # (3,2): d(3,2) = [3 not in L2] + [1 in L2] = 1; d(2,3) = [2]+[1]+[0 not in L3] = 1. 2/min(2,3) = 1
    assert got[(3, 2)] == 1.0
    assert got[(1, 3)] == got[(3, 1)] == 0.0


def reference_distance(lists: list[list[int]], a: int, b: int, mode: str) -> float:
    """Straight from the definitions, with dicts; lists[x][0] == x."""
    k1 = max(len(row) for row in lists)  # k + 1: rank of an absent item

    def rank(x, y):
        return lists[x].index(y) if y in lists[x] else k1

    def one_side(x, y):
        upto = rank(x, y)
        items = [lists[x][i] for i in range(min(upto + 1, len(lists[x])))]
        if mode == "zhu":
            return sum(rank(y, f) for f in items)
        return sum(rank(y, f) == k1 for f in items if f != y)

    return (one_side(a, b) + one_side(b, a)) / min(rank(a, b), rank(b, a))


@pytest.mark.parametrize("mode", ["zhu", "approx"])
def test_rank_order_distances_match_the_definitions(mode):
    x, _ = face_blobs(6, 8, seed=8)
    idx, _ = knn_graph(x, 6)
    lists = np.c_[np.arange(len(x)), idx]
    a, b, d = rank_order_distances(lists, mode)
    assert len(d) == len(x) * 6
    as_lists = lists.tolist()
    for p, q, v in zip(a.tolist(), b.tolist(), d.tolist()):
        assert v == pytest.approx(reference_distance(as_lists, p, q, mode))


# -- graph methods ---------------------------------------------------------------------------------


@pytest.mark.parametrize("quality", ["cpm", "rb"])
def test_leiden_backends_agree_on_blobs(blobs, quality):
    from components.cluster import Leiden

    x, truth = blobs
    resolution = 0.1 if quality == "cpm" else 1.0
    fast = Leiden(threshold=0.8, quality=quality, resolution=resolution).fit(x)
    reference = Leiden(threshold=0.8, quality=quality, resolution=resolution, backend="leidenalg").fit(x)
    assert pairwise_prf(truth, fast.labels_)[2] == 1.0
    assert pairwise_prf(fast.labels_, reference.labels_)[2] == 1.0
    with pytest.raises(ValueError):
        Leiden(threshold=0.8, backend="networkx").fit(x)
    with pytest.raises(ValueError):
        Leiden(threshold=0.8, quality="modularity").fit(x)


def test_graph_methods_leave_unlinked_faces_alone(blobs):
    from components.cluster import Infomap, Leiden

    x, _ = blobs
    for model in (Leiden(threshold=0.9999), Infomap(threshold=0.9999)):
        model.fit(x)
        assert model.n_edges_ == 0 and model.n_clusters_ == len(x)


def test_infomap_seed_restores_the_global_rng(blobs):
    import random

    import igraph

    from components.cluster import Infomap

    x, _ = blobs
    Infomap(threshold=0.8, seed=3).fit(x)
    state = random.getstate()
    igraph.Graph.Ring(5).community_infomap()  # draws from the default RNG again
    assert random.getstate() != state


def test_duplicates_share_a_cluster_in_rank_order_methods(blobs):
    from components.cluster import ApproxRankOrder, RankOrder

    x, _ = blobs
    doubled = np.vstack([x, x[:5]])
    for model in (ApproxRankOrder(k=30), RankOrder(k=20)):
        labels = model.fit_predict(doubled)
        np.testing.assert_array_equal(labels[-5:], labels[:5])
