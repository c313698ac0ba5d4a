"""Chinese Whispers graph clustering (Biemann 2006), as the source thesis uses it.

Every face starts in its own class; in random order, each face adopts the class
with the largest total edge weight among its neighbours, until nothing changes.
It needs no number of clusters, only the similarity threshold that defines edges.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from components.cluster.graph import similarity_graph


def chinese_whispers(graph: sparse.csr_matrix, iterations: int = 30, seed: int = 0) -> tuple[np.ndarray, int]:
    """Cluster a weighted graph.

    Args:
        graph: symmetric (N, N) CSR matrix of non-negative edge weights.
        iterations: upper bound on full passes; it usually settles in under ten.
        seed: the visiting order is random; a fixed seed makes the result reproducible.

    Returns:
        (labels, passes): labels in 0..k-1 numbered by decreasing cluster size
        (ties by first member), and the number of passes run.
    """
    graph = sparse.csr_matrix(graph)
    n = graph.shape[0]
    labels = np.arange(n)
    rng = np.random.default_rng(seed)
    indptr, indices, weights = graph.indptr, graph.indices, graph.data
    passes = 0
    for passes in range(1, iterations + 1):
        changed = 0
        for node in rng.permutation(n):
            lo, hi = indptr[node], indptr[node + 1]
            if lo == hi:
                continue
            neighbour_labels = labels[indices[lo:hi]]
            candidates, inverse = np.unique(neighbour_labels, return_inverse=True)
            totals = np.bincount(inverse, weights=weights[lo:hi])
            best = candidates[np.argmax(totals)]
            if best != labels[node]:
                labels[node] = best
                changed += 1
        if changed == 0:
            break
    return relabel_by_size(labels), passes


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters 0..k-1, largest first; equal sizes keep first-seen order."""
    _, first_seen, inverse, counts = np.unique(labels, return_index=True, return_inverse=True, return_counts=True)
    order = np.lexsort((first_seen, -counts))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inverse.ravel()]


class ChineseWhispers:
    """scikit-learn style Chinese Whispers over cosine similarities of embeddings.

    Args:
        threshold: two faces are linked when their cosine similarity is at least this.
        knn: neighbours per face when the graph is built from nearest neighbours.
        knn_above: use all pairs up to this many faces, the kNN graph beyond.
        iterations: maximum passes.
        seed: random visiting order.

    Attributes:
        labels_: (N,) cluster ids, 0 = largest cluster.
        n_clusters_: number of clusters.
        n_iter_: passes run.
        n_edges_: undirected edges in the graph.
    """

    def __init__(self, threshold: float = 0.945, knn: int = 30, knn_above: int = 5000, iterations: int = 30, seed: int = 0):
        self.threshold = threshold
        self.knn = knn
        self.knn_above = knn_above
        self.iterations = iterations
        self.seed = seed

    def fit(self, X: np.ndarray, y=None) -> "ChineseWhispers":
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2:
            raise ValueError(f"expected (N, D) embeddings, got shape {X.shape}")
        if len(X) == 0:
            self.labels_ = np.empty(0, dtype=np.int64)
            self.n_clusters_, self.n_iter_, self.n_edges_ = 0, 0, 0
            return self
        knn = self.knn if len(X) > self.knn_above else None
        graph = similarity_graph(X, self.threshold, knn=knn)
        self.labels_, self.n_iter_ = chinese_whispers(graph, self.iterations, self.seed)
        self.n_clusters_ = int(self.labels_.max()) + 1
        self.n_edges_ = graph.nnz // 2
        return self

    def fit_predict(self, X: np.ndarray, y=None) -> np.ndarray:
        return self.fit(X).labels_
