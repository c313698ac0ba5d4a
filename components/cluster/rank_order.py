"""Rank-order clustering: Zhu et al. 2011 (as in the thesis) and Otto, Wang & Jain 2017.

Both compare two faces by how their neighbour lists agree rather than by their
raw similarity, which adapts to local density. Conventions used throughout:

* the list of face (or cluster) a is ``f_a = [a, n_1, ..., n_k]``: itself at rank
  0, then its k nearest neighbours by decreasing cosine similarity;
* ``O_a(x)`` is the rank of x in a's list, or ``k + 1`` ("just past the end")
  when x is not in it.

Zhu's rank-order distance (``RankOrder``):
    D(a, b)   = sum_{i=0}^{O_a(b)} O_b(f_a(i))
    D^R(a, b) = (D(a, b) + D(b, a)) / min(O_a(b), O_b(a))
Every cluster starts as one face; each round merges (transitively) all pairs of
clusters with D^R below the threshold and Zhu's normalised distance D^N below 1
(see :class:`RankOrder`), then rebuilds cluster-level neighbour lists (cluster
similarity = the largest face similarity between them, as in Zhu's single-link
cluster distance, read off the faces' kNN lists) and repeats until a round
merges nothing.

Otto et al.'s approximate rank-order distance (``ApproxRankOrder``), which only
asks whether a neighbour is present in the other list, not where:
    d(a, b)   = sum_{i < O_a(b)} [O_b(f_a(i)) > k]
    D^m(a, b) = (d(a, b) + d(b, a)) / min(O_a(b), O_b(a))
computed for each face and each of its top-k neighbours; pairs with D^m below
the threshold are linked and clusters are the connected components (one pass,
transitive merge). The default k = 200 follows the paper (pairwise F 0.87 on
LFW with its CNN features); see :class:`ApproxRankOrder` for why k must be
calibrated.

Both D^R and D^m are symmetric by construction, and both are computed here from
one side: for a block of faces a, the lists of all their neighbours b are
gathered and mapped through a's rank table, giving a (block, k+1, k+1) tensor
from which D(a, b), D(b, a), d(a, b) and d(b, a) are sums. Cost O(N k^2).

Exact duplicate embeddings are merged before ranking (ties make ranks
arbitrary) and share a cluster.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from sklearn.base import BaseEstimator, ClusterMixin

from components.cluster.chinese_whispers import relabel_by_size
from components.cluster.knn import check_embeddings, knn_graph, unique_rows


def rank_order_distances(lists: np.ndarray, mode: str = "zhu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank-order distance between every item and each item in its list.

    Args:
        lists: (M, L) int array; row a is a's list, ``lists[a, 0] == a``, then its
            neighbours best first, padded at the end with -1. ``k = L - 1``.
        mode: "zhu" for D^R, "approx" for Otto et al.'s D^m.

    Returns:
        (a, b, distance): one entry per (a, b = lists[a, j]), j >= 1, b != -1, in
        row-major order of ``lists``.
    """
    parts = [(a, b, d) for _, a, b, d in _distance_blocks(lists, mode)]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    a, b, d = (np.concatenate(column) for column in zip(*parts))
    return a.astype(np.int64), b.astype(np.int64), d


def _distance_blocks(lists: np.ndarray, mode: str):
    """Yield (rows, a, b, distance) block by block, so callers can filter as they go."""
    if mode not in ("zhu", "approx"):
        raise ValueError(f"mode must be 'zhu' or 'approx', got {mode!r}")
    lists = np.asarray(lists)
    m, width = lists.shape
    lists = lists.astype(np.int32 if m < 2**31 else np.int64, copy=False)
    valid = lists >= 0
    safe = np.where(valid, lists, 0)
    absent = width  # rank k + 1
    # Rows per block so that the (block, M) rank table and (block, L, L) tensors stay ~tens of MB.
    block = int(max(1, min(m, 2**24 // max(m, 1), 2**21 // (width * width))))
    pos = np.zeros((block, m), dtype=np.int16 if width < 2**15 - 1 else np.int32)
    j = np.arange(width)[None, :, None]
    i = np.arange(width)[None, None, :]
    jj = j[..., 0]
    for start in range(0, m, block):
        rows = np.arange(start, min(start + block, m))
        nb = len(rows)
        la, va = lists[rows], valid[rows]
        local = np.broadcast_to(np.arange(nb)[:, None], la.shape)
        # pos[r, x] = 1 + rank of x in a's list (0 = absent): a's rank table.
        pos[local[va], la[va]] = (np.broadcast_to(np.arange(width), la.shape)[va] + 1).astype(pos.dtype)
        # theirs[r, j, i] = the i-th item of the list of a's j-th neighbour.
        theirs_valid = valid[safe[rows]] & va[:, :, None]
        theirs = np.where(theirs_valid, lists[safe[rows]], 0)
        # rank[r, j, i] = O_a(that item): 0..k, or `absent`; -1 marks padding.
        rank = pos[np.arange(nb)[:, None, None], theirs].astype(np.int32) - 1
        rank = np.where(theirs_valid, np.where(rank < 0, absent, rank), -1)
        pos[local[va], la[va]] = 0
        present = (rank >= 0) & (rank < absent)
        a_in_b = rank == 0  # a itself inside b's list
        p = np.where(a_in_b.any(axis=2), a_in_b.argmax(axis=2), absent)  # O_b(a)
        if mode == "approx":
            # d(a,b): a's items ranked before b (i = 0..O_a(b)-1) missing from b's list.
            d_ab = jj - (present & (rank < j)).sum(axis=2)
            # d(b,a): b's items ranked before a missing from a's list.
            d_ba = ((rank == absent) & (i < p[..., None])).sum(axis=2)
        else:
            # D(a,b): a's items up to b, each at its rank in b's list (position i there), absent = k+1.
            upto_b = present & (rank <= j)
            d_ab = (upto_b * i).sum(axis=2) + absent * (jj + 1 - upto_b.sum(axis=2))
            # D(b,a): b's items up to a (all of them when a is absent), at their rank in a's list.
            d_ba = np.where((rank >= 0) & (i <= p[..., None]), rank, 0).sum(axis=2)
        pair = va & (jj >= 1)
        dist = (d_ab + d_ba) / np.maximum(np.minimum(jj, p), 1)
        yield rows, np.broadcast_to(rows[:, None], la.shape)[pair], la[pair], dist[pair]


def _merge(n_items: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of the links (a, b): transitive merge."""
    graph = sparse.csr_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n_items, n_items))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def _face_lists(X: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(lists, list_sims): self first (similarity 1), then the kNN, -1 / -inf padded."""
    indices, sims = knn_graph(X, k, seed=seed)
    n = len(X)
    return np.c_[np.arange(n), indices], np.c_[np.ones(n, np.float32), sims]


def _pair_values(lists: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` per (a, b) entry, in the order :func:`rank_order_distances` returns pairs."""
    return values[(lists >= 0) & (np.arange(lists.shape[1]) >= 1)]


def cluster_lists(labels: np.ndarray, lists: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster-level neighbour lists from face-level lists.

    Cluster similarity = the largest similarity between a face of one and a face of
    the other among the faces' kNN links, in either direction (Zhu's single-link
    cluster distance, restricted to the links the kNN lists know).

    Args:
        labels: (N,) cluster of every face.
        lists, sims: face lists and their similarities as from ``_face_lists``.
        k: neighbours per cluster.

    Returns:
        (lists, sims) at cluster level: (n_clusters, k+1), self first, -1 / -inf padded.
    """
    n_clusters = int(labels.max()) + 1
    valid = (lists >= 0) & (np.arange(lists.shape[1]) >= 1)
    ca, cb, s = labels[np.broadcast_to(lists[:, :1], lists.shape)[valid]], labels[lists[valid]], sims[valid]
    other = ca != cb
    ca, cb, s = np.r_[ca[other], cb[other]], np.r_[cb[other], ca[other]], np.r_[s[other], s[other]]
    out = np.full((n_clusters, k + 1), -1, dtype=np.int64)
    out_sims = np.full((n_clusters, k + 1), -np.inf, dtype=np.float32)
    out[:, 0], out_sims[:, 0] = np.arange(n_clusters), 1.0
    if len(ca) == 0:
        return out, out_sims
    # Best link per cluster pair, then each cluster's neighbours by decreasing similarity.
    order = np.lexsort((-s, cb, ca))
    ca, cb, s = ca[order], cb[order], s[order]
    first = np.r_[True, (ca[1:] != ca[:-1]) | (cb[1:] != cb[:-1])]
    ca, cb, s = ca[first], cb[first], s[first]
    order = np.lexsort((cb, -s, ca))
    ca, cb, s = ca[order], cb[order], s[order]
    rank = np.arange(len(ca)) - np.searchsorted(ca, ca, side="left") + 1
    keep = rank <= k
    out[ca[keep], rank[keep]] = cb[keep]
    out_sims[ca[keep], rank[keep]] = s[keep]
    return out, out_sims


class _RankOrderBase(BaseEstimator, ClusterMixin):
    def fit(self, X, y=None):
        X = check_embeddings(X)
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        distinct, inverse = unique_rows(X)
        labels = self._cluster(distinct) if len(distinct) else np.zeros(0, np.int64)
        self.labels_ = relabel_by_size(labels[inverse]) if len(X) else np.zeros(0, np.int64)
        self.n_clusters_ = int(self.labels_.max()) + 1 if len(X) else 0
        return self


class ApproxRankOrder(_RankOrderBase):
    """Approximate rank-order clustering (Otto, Wang & Jain 2017).

    k decides everything, and which k is right depends on the embeddings. On
    7,701 LFW faces embedded by dlib, k = 200 over-merges at every threshold
    (pairwise F ~0.00: in the narrow cone real face embeddings occupy, different
    people's top-200 lists overlap through "hub" faces, and mutual first
    neighbours get D^m = 0 whoever they are), while k = 10 with a threshold up to
    0.3 reaches pairwise F 0.86. On synthetic identities of up to 300 faces it is
    the reverse (13k faces: k = 200 gives 0.94, k = 10 gives 0.07, since short
    lists cannot hold a large identity). ``CALIBRATION_GRID`` searches both.

    Cost O(N k^2) after the kNN search: at k = 200 on two cores, 13k faces take
    8 s and 100k faces 85 s (1.3 GB peak), so a million would take ~15-20
    minutes (not in ``SCALABLE``); with k <= 50 it is a few minutes.

    Args:
        k: neighbours per face (the paper's 200; calibrate it, see below).
        threshold: link a face and a neighbour when D^m is below this. D^m is 0 for
            two faces with identical neighbourhoods and grows as their lists
            disagree; calibrate on held-out identities.
        seed: seed of the approximate neighbour search (N > 20k).

    Attributes:
        labels_: (N,) cluster ids, largest first.
        n_clusters_: clusters.
        n_links_: face pairs linked.
    """

    def __init__(self, k: int = 200, threshold: float = 0.3, seed: int = 0):
        self.k = k
        self.threshold = threshold
        self.seed = seed

    def _cluster(self, X: np.ndarray) -> np.ndarray:
        lists, _ = _face_lists(X, self.k, self.seed)
        # Keep only the links, block by block: all N k distances would need 24 N k bytes.
        link_a, link_b = [], []
        for _, a, b, d in _distance_blocks(lists, "approx"):
            link = d < self.threshold
            link_a.append(a[link])
            link_b.append(b[link])
        a, b = np.concatenate(link_a), np.concatenate(link_b)
        self.n_links_ = len(a)
        return _merge(len(X), a, b)


class RankOrder(_RankOrderBase):
    """Rank-order clustering of Zhu, Wen & Sun 2011, iterated at cluster level.

    Two clusters merge when their rank-order distance D^R is below ``threshold``
    and, as in Zhu et al., their normalised distance D^N is below
    ``normalized_threshold``: D^N = d(A, B) / phi(A, B), where d is the
    single-link cosine distance (1 - the largest similarity between their faces)
    and phi the mean distance of all their faces to their own k nearest
    neighbours. The first test is relative and scale-free; the second stops it
    from merging two groups that are each other's nearest but still far apart
    compared with how tight faces usually are here. Without it (None) the rounds
    go on until nearly everything is one cluster, since every cluster has a
    nearest cluster.

    Args:
        k: length of every neighbour list (faces, later clusters).
        threshold: D^R must be below this. D^R = 2 for mutual first neighbours
            whose lists start alike, so useful values are a little above 2.
        normalized_threshold: D^N must be below this (Zhu: 1); None skips the test.
        max_rounds: merge rounds at most.
        seed: seed of the approximate neighbour search (N > 20k).

    Attributes:
        labels_: (N,) cluster ids, largest first.
        n_clusters_: clusters.
        n_rounds_: rounds that merged something.
    """

    def __init__(
        self,
        k: int = 10,
        threshold: float = 3.0,
        normalized_threshold: float | None = 1.0,
        max_rounds: int = 100,
        seed: int = 0,
    ):
        self.k = k
        self.threshold = threshold
        self.normalized_threshold = normalized_threshold
        self.max_rounds = max_rounds
        self.seed = seed

    def _cluster(self, X: np.ndarray) -> np.ndarray:
        face_lists, face_sims = _face_lists(X, self.k, self.seed)
        width = face_lists.shape[1]
        # Each face's mean cosine distance to its own neighbours: the "local scale" in phi.
        found = face_lists[:, 1:] >= 0
        spread = np.where(found, 1.0 - face_sims[:, 1:], 0.0).sum(axis=1) / np.maximum(found.sum(axis=1), 1)
        labels = np.arange(len(X))
        lists, sims = face_lists, face_sims
        self.n_rounds_ = 0
        for _ in range(self.max_rounds):
            size = np.bincount(labels).astype(np.float64)
            spread_sum = np.bincount(labels, weights=spread)
            merge_a, merge_b = [], []
            for rows, a, b, d in _distance_blocks(lists, "zhu"):
                merge = d < self.threshold
                if self.normalized_threshold is not None:
                    phi = (spread_sum[a] + spread_sum[b]) / (size[a] + size[b])
                    dist = 1.0 - _pair_values(lists[rows], sims[rows]).astype(np.float64)
                    merge &= dist < self.normalized_threshold * phi
                merge_a.append(a[merge])
                merge_b.append(b[merge])
            a, b = np.concatenate(merge_a), np.concatenate(merge_b)
            if len(a) == 0:
                break
            items = _merge(len(lists), a, b)
            if items.max() + 1 == len(lists):
                break
            labels = items[labels]
            self.n_rounds_ += 1
            lists, sims = cluster_lists(labels, face_lists, face_sims, width - 1)
        return labels
