"""DBSCAN under cosine distance, epsilon chosen by silhouette, noise kept as singletons.

The thesis's variant: DBSCAN's noise points are not thrown away; each keeps its
own singleton identity (a face seen once is still a person). Epsilon is swept
over a grid and the value with the best silhouette wins.

DBSCAN runs on a neighbour graph built once for the largest epsilon: each face's
``max_neighbors`` most similar faces within that radius. Per epsilon the graph is
only filtered, so the sweep costs one neighbour search. The result is exactly
DBSCAN's (same core points, same clusters) whenever no face has more than
``max_neighbors`` others within epsilon; denser faces keep only their nearest
``max_neighbors`` links, which can split a very large cluster but never merges
two. Border points (non-core points within epsilon of a core point) join their
most similar core neighbour; scikit-learn instead gives them to whichever
cluster reaches them first, an arbitrary choice DBSCAN leaves open.

How the silhouette treats singletons (noise and isolated faces). The score of
every sampled face is computed against all faces, with each noise point as its
own cluster; a singleton scores 0 (Rousseeuw's convention). That makes the
choice meaningful at both ends: a tiny epsilon that leaves most faces as noise
scores near 0, a huge one that merges identities scores low because b(i) (the
nearest other cluster) comes close to a(i). Dropping noise from the score
instead would reward the tiny epsilon that keeps only the tightest pairs. A
partition that is a single cluster has no silhouette; it scores 0, as if every
face were alone. Ties go to the smaller epsilon.

Cost: one kNN search, then per epsilon a filter, a connected-components pass and
an O(s k d) silhouette: 13k faces with the 15-value default grid take 6 s and
+180 MB. Not in the scalable set: at a million faces the 100-neighbour search
and 15 silhouettes against ~350k clusters would each take several minutes
(estimated, not measured).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from sklearn.base import BaseEstimator, ClusterMixin

from components.cluster.chinese_whispers import relabel_by_size
from components.cluster.knn import check_embeddings, knn_graph, knn_to_csr

#: Cosine distances swept when no grid is given: same-identity faces are within
#: ~0.09 (similarity >= 0.91), different people mostly 0.1-0.25.
DEFAULT_EPS_GRID = tuple(np.round(np.arange(0.02, 0.301, 0.02), 3))


def cosine_silhouette(X: np.ndarray, labels: np.ndarray, sample_size: int | None = 5000, seed: int = 0) -> float | None:
    """Mean silhouette under cosine distance of sampled faces, scored against all faces.

    The mean cosine distance from x to a cluster C is ``1 - x . sum(C) / |C|``, so
    a(i) and b(i) come from one product with the cluster sums: O(s k d) for s
    sampled faces and k clusters, no pairwise matrix, and unlike scoring a
    subsample on its own it does not turn small clusters into fake singletons.

    Args:
        X: (N, D) embeddings (normalised here, so any scale works).
        labels: (N,) cluster labels; singletons score 0.
        sample_size: faces scored (None = all).
        seed: sample seed.

    Returns:
        The mean silhouette, equal to ``sklearn.metrics.silhouette_score(X, labels,
        metric="cosine")`` when all faces are scored; None when there is one
        cluster or none.
    """
    x = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    _, lab = np.unique(labels, return_inverse=True)
    lab = lab.ravel()
    n, k = len(lab), int(lab.max()) + 1 if len(lab) else 0
    if k < 2:
        return None
    onehot = sparse.csr_matrix((np.ones(n, np.float32), (lab, np.arange(n))), shape=(k, n))
    sums = np.asarray(onehot @ x, dtype=np.float64)  # (k, D) cluster sums
    size = np.bincount(lab, minlength=k).astype(np.float64)
    rows = np.arange(n)
    if sample_size is not None and sample_size < n:
        rows = np.sort(np.random.default_rng(seed).choice(n, sample_size, replace=False))
    scores = []
    block = max(1, 2**22 // k)  # (block, k) float64 temporaries of ~32 MB
    for start in range(0, len(rows), block):
        r = rows[start : start + block]
        own = lab[r]
        mean_dist = 1.0 - (x[r].astype(np.float64) @ sums.T) / size  # (b, k)
        alone = size[own] == 1
        # Own cluster without the face itself: sum over j != i of (1 - x_i.x_j), x_i.x_i = 1.
        a = mean_dist[np.arange(len(r)), own] * size[own] / np.maximum(size[own] - 1, 1)
        mean_dist[np.arange(len(r)), own] = np.inf
        b = mean_dist.min(axis=1)
        denom = np.maximum(a, b)
        s = np.where(denom > 0, (b - a) / np.where(denom > 0, denom, 1), 0.0)
        scores.append(np.where(alone, 0.0, s))
    return float(np.concatenate(scores).mean())


def neighbour_graph(X: np.ndarray, max_eps: float, max_neighbors: int, seed: int = 0) -> sparse.csr_matrix:
    """Symmetric similarity graph: each face's ``max_neighbors`` nearest within ``max_eps``."""
    indices, sims = knn_graph(X, max_neighbors, seed=seed)
    return knn_to_csr(indices, sims, threshold=1.0 - max_eps)


def dbscan_on_graph(graph: sparse.csr_matrix, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN over a similarity graph; noise points become singletons.

    Args:
        graph: symmetric (N, N) CSR of cosine similarities (edges absent = far).
        eps: cosine distance radius; neighbours have similarity >= 1 - eps.
        min_samples: a core point has at least this many points within eps,
            itself included (scikit-learn's convention).

    Returns:
        (N,) labels 0..k-1, largest cluster first.
    """
    n = graph.shape[0]
    near = graph.copy()
    near.data = np.where(near.data >= 1.0 - eps, near.data, 0.0)
    near.eliminate_zeros()
    core = np.diff(near.indptr) + 1 >= min_samples
    core_idx = np.flatnonzero(core)
    _, core_labels = connected_components(near[core_idx][:, core_idx], directed=False)
    labels = np.full(n, -1, dtype=np.int64)
    labels[core_idx] = core_labels
    # Border points: the most similar core neighbour's cluster.
    to_core = near[:, core_idx].tocsr()
    border = np.flatnonzero(~core & (np.diff(to_core.indptr) > 0))
    if len(border):
        sub = to_core[border]
        best = np.asarray(sub.argmax(axis=1)).ravel()
        labels[border] = core_labels[best]
    noise = labels < 0
    labels[noise] = labels.max() + 1 + np.arange(noise.sum())
    return relabel_by_size(labels)


class SilhouetteDBSCAN(BaseEstimator, ClusterMixin):
    """DBSCAN (cosine) with epsilon picked by silhouette; noise -> singletons.

    Args:
        eps_grid: cosine-distance radii to try (default ``DEFAULT_EPS_GRID``).
        min_samples: DBSCAN's density threshold, the point itself included;
            2 means any face with a neighbour within eps is a core point.
        sample_size: faces whose silhouette is computed per epsilon.
        max_neighbors: neighbours kept per face in the search graph (see module).
        seed: silhouette sample and approximate-search seed.

    Attributes:
        labels_: (N,) cluster ids, largest first; former noise points are singletons.
        n_clusters_: clusters, singletons included.
        eps_: the chosen epsilon.
        silhouette_: its silhouette (0 when undefined).
        scores_: {eps: silhouette} for the whole grid.
    """

    def __init__(
        self, eps_grid=None, min_samples: int = 2, sample_size: int = 5000, max_neighbors: int = 100, seed: int = 0
    ):
        self.eps_grid = eps_grid
        self.min_samples = min_samples
        self.sample_size = sample_size
        self.max_neighbors = max_neighbors
        self.seed = seed

    def fit(self, X, y=None) -> "SilhouetteDBSCAN":
        X = check_embeddings(X)
        grid = sorted(float(e) for e in (DEFAULT_EPS_GRID if self.eps_grid is None else self.eps_grid))
        if not grid or grid[0] <= 0 or grid[-1] >= 1:
            raise ValueError(f"eps_grid must hold cosine distances in (0, 1), got {grid}")
        if self.min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {self.min_samples}")
        n = len(X)
        self.scores_ = {}
        if n == 0:
            self.labels_, self.n_clusters_, self.eps_, self.silhouette_ = np.empty(0, np.int64), 0, grid[0], 0.0
            return self
        graph = neighbour_graph(X, grid[-1], self.max_neighbors, self.seed)
        best = None
        for eps in grid:
            labels = dbscan_on_graph(graph, eps, self.min_samples)
            score = cosine_silhouette(X, labels, self.sample_size, self.seed)
            score = 0.0 if score is None else score
            self.scores_[eps] = score
            if best is None or score > best[0]:
                best = (score, eps, labels)
        self.silhouette_, self.eps_, self.labels_ = best
        self.n_clusters_ = int(self.labels_.max()) + 1
        return self
