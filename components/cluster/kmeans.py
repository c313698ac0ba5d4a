"""k-means with k-means|| initialisation (Bahmani et al. 2012) on face embeddings.

k-means|| replaces k-means++'s k sequential passes with a few passes that each
sample about ``oversampling * k`` points at once (probability proportional to the
squared distance to the candidates so far), then weights every candidate by the
points it is nearest to and reduces the candidates to k centres with weighted
k-means++. Lloyd iterations on all points follow. On unit vectors the squared
Euclidean distance is ``2 - 2 cos``, so this is k-means under cosine geometry.

Choosing k without labels (``n_clusters="auto"``): k is the number of Chinese
Whispers clusters at the calibrated similarity threshold. Why this rule:

* it needs no labels, only the one threshold the project calibrates anyway
  (``params.yaml: cluster.threshold``), and it is the same rule for k-means, GMM,
  so those comparisons are about the partitioning, not about k;
* it is cheap (one graph clustering, seconds at 13k faces) and scales;
* the alternative, a silhouette sweep over k, fails on faces: k is in the
  thousands (LFW: 5,749 identities in 13,233 faces, 70 % of them seen once), every
  grid point costs a full k-means, and the score is dominated by how singletons
  are counted rather than by identity structure.

k-means is not in the scalable set: Lloyd costs O(N k d) per iteration and face
collections have k ~ N / 3, so a million faces would need ~10^13 flops per
iteration. Measured: 13k synthetic faces, k = 4,257: 20 s, +50 MB (mostly the
k-means++ reduction of the candidates, run with single-threaded BLAS).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import KMeans, MiniBatchKMeans, kmeans_plusplus
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from components.cluster.chinese_whispers import ChineseWhispers, relabel_by_size
from components.cluster.knn import _faiss, check_embeddings


def require_threshold(estimator) -> float:
    """The estimator's cosine ``threshold``, which ``n_clusters="auto"`` needs and has no default."""
    if estimator.threshold is None:
        raise ValueError(
            f"{type(estimator).__name__}: n_clusters='auto' needs threshold, the embedder's calibrated "
            "cosine cluster threshold (params.yaml cluster.threshold for the local model); or give n_clusters"
        )
    return float(estimator.threshold)


def auto_n_clusters(X: np.ndarray, threshold: float, seed: int = 0) -> int:
    """Label-free number of clusters: Chinese Whispers clusters at ``threshold``."""
    return ChineseWhispers(threshold=threshold, seed=seed).fit(X).n_clusters_


def nearest(X: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of, and squared Euclidean distance to, the nearest centre of each row."""
    faiss = _faiss()
    index = faiss.IndexFlatL2(X.shape[1])
    index.add(np.ascontiguousarray(centres, dtype=np.float32))
    d2, ids = index.search(X, 1)
    return ids[:, 0].astype(np.int64), np.maximum(d2[:, 0], 0.0)


def kmeans_parallel_init(
    X: np.ndarray, k: int, oversampling: float = 2.0, rounds: int = 5, seed: int = 0
) -> np.ndarray:
    """k-means|| seeding: k rows of X to start Lloyd's algorithm from.

    Args:
        X: (N, D) float32 points, N >= 1.
        k: centres wanted, 1 <= k <= N.
        oversampling: l / k in Bahmani et al.; each round samples ~ l points.
        rounds: sampling rounds (the paper finds 5 enough).
        seed: random state.

    Returns:
        (k, D) centres, all rows of X and pairwise distinct as row indices (equal
        vectors can repeat when X has fewer than k distinct points).
    """
    n = len(X)
    rng = np.random.default_rng(seed)
    chosen = np.zeros(n, dtype=bool)
    first = int(rng.integers(n))
    chosen[first] = True
    _, d2 = nearest(X, X[[first]])
    for _ in range(rounds):
        cost = float(d2.sum())
        if cost <= 0:  # every point sits on a candidate
            break
        p = np.minimum(1.0, oversampling * k * d2 / cost)
        new = np.flatnonzero((rng.random(n) < p) & ~chosen)
        if len(new) == 0:
            continue
        chosen[new] = True
        _, d2_new = nearest(X, X[new])
        d2 = np.minimum(d2, d2_new)
    candidates = np.flatnonzero(chosen)
    if len(candidates) < k:
        # Too few candidates (few distinct points, or tiny N): fill up with random others.
        rest = np.flatnonzero(~chosen)
        candidates = np.sort(np.r_[candidates, rng.choice(rest, k - len(candidates), replace=False)])
        return X[candidates]
    # Weight = how many points a candidate stands for; recluster candidates to k with weighted k-means++.
    owner, _ = nearest(X, X[candidates])
    weight = np.bincount(owner, minlength=len(candidates)).astype(np.float64)
    weight[weight == 0] = 1e-6  # sklearn rejects zero weights; such candidates are still allowed but unlikely
    # k-means++ makes k small (trials x candidates) products; multi-threaded BLAS
    # spends more on waking threads than on them (measured 11x slower on 2 busy cores).
    with threadpool_limits(1, user_api="blas"):
        _, picked = kmeans_plusplus(X[candidates], k, sample_weight=weight, random_state=seed)
    return X[candidates[picked]]


class ScalableKMeans(BaseEstimator, ClusterMixin):
    """k-means with k-means|| initialisation on L2-normalised embeddings.

    Args:
        n_clusters: k, or "auto" for the Chinese Whispers count at ``threshold``
            (see the module docstring). k is clamped to N.
        oversampling: k-means|| samples about ``oversampling * k`` points per round.
        rounds: k-means|| rounds.
        threshold: cosine similarity threshold used by ``n_clusters="auto"`` (and only
            there): the embedder's calibrated cluster threshold; no default.
        max_iter: Lloyd iterations at most.
        minibatch_above: above this many faces Lloyd runs as MiniBatchKMeans.
        seed: random state for initialisation and Lloyd.

    Attributes:
        labels_: (N,) cluster ids 0..n_clusters_-1, largest cluster first.
        n_clusters_: non-empty clusters (can be below k when points coincide).
        cluster_centers_: (n_clusters_, D) centres, row i for label i.
        k_: the k that was asked of k-means.
    """

    def __init__(
        self,
        n_clusters: int | str = "auto",
        oversampling: float = 2.0,
        rounds: int = 5,
        threshold: float | None = None,
        max_iter: int = 50,
        minibatch_above: int = 200_000,
        seed: int = 0,
    ):
        self.n_clusters = n_clusters
        self.oversampling = oversampling
        self.rounds = rounds
        self.threshold = threshold
        self.max_iter = max_iter
        self.minibatch_above = minibatch_above
        self.seed = seed

    def _k(self, X: np.ndarray) -> int:
        if self.n_clusters == "auto":
            return auto_n_clusters(X, require_threshold(self), self.seed)
        if not isinstance(self.n_clusters, (int, np.integer)) or self.n_clusters < 1:
            raise ValueError(f"n_clusters must be a positive int or 'auto', got {self.n_clusters!r}")
        return min(int(self.n_clusters), len(X))

    def fit(self, X, y=None) -> "ScalableKMeans":
        X = check_embeddings(X)
        n = len(X)
        if n == 0:
            self.labels_, self.k_, self.n_clusters_ = np.empty(0, np.int64), 0, 0
            self.cluster_centers_ = np.empty((0, X.shape[1]), np.float32)
            return self
        self.k_ = k = self._k(X)
        centres = kmeans_parallel_init(X, k, self.oversampling, self.rounds, self.seed)
        if n > self.minibatch_above:
            model = MiniBatchKMeans(
                k, init=centres, n_init=1, max_iter=self.max_iter, batch_size=4096, random_state=self.seed
            )
        else:
            model = KMeans(k, init=centres, n_init=1, max_iter=self.max_iter, random_state=self.seed)
        with warnings.catch_warnings():
            # Duplicate points give fewer distinct clusters than k; the labels say so, no warning needed.
            warnings.simplefilter("ignore", ConvergenceWarning)
            raw = model.fit_predict(X)
        self.labels_ = relabel_by_size(raw)
        self.n_clusters_ = int(self.labels_.max()) + 1
        # Centre of each new label: the old centre that label came from.
        old_of_new = np.empty(self.n_clusters_, dtype=np.int64)
        old_of_new[self.labels_] = raw
        self.cluster_centers_ = model.cluster_centers_[old_of_new].astype(np.float32)
        return self
