"""Gaussian mixture over face embeddings, initialised by k-means (the thesis's GMM baseline).

The mixture starts from a :class:`ScalableKMeans` partition: its means, its
cluster shares as weights and its per-cluster variances (plus ``reg_covar``) as
covariances, so scikit-learn's own initialiser (which would run a second k-means)
is bypassed. k follows the same label-free rule as k-means (Chinese Whispers
count at the calibrated threshold).

Only "diag" and "spherical" covariances are offered: most face identities have
one to three images, so a full 128 x 128 covariance per component cannot be
estimated.

Not scalable: the E-step holds several (N, k) float64 matrices (log
probabilities, responsibilities; peak ~6 copies measured), and with k ~ N / 3
that is ~19 N^2 bytes: 13k faces with 4.3k components peaked at 3 GB and took
110 s; 100k faces would need ~190 GB. ``fit`` refuses inputs whose estimate
exceeds ``max_memory_gb``.

On face data, where most components hold one to three faces, the fitted
mixture differs little from its k-means start (the variances of tiny components
are mostly ``reg_covar``): on 3,000 LFW faces the two partitions agree at
pairwise F 0.99.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from components.cluster.chinese_whispers import relabel_by_size
from components.cluster.kmeans import ScalableKMeans, require_threshold
from components.cluster.knn import check_embeddings

#: Peak memory of sklearn's EM in (N, k) float64 matrices: measured 2.8 GB above
#: baseline for N=13,233, k=4,257 (one matrix: 0.45 GB), i.e. about 6 copies.
_PEAK_COPIES = 7


class KMeansGMM(BaseEstimator, ClusterMixin):
    """Gaussian mixture initialised by k-means||.

    Args:
        n_clusters: components, or "auto" (Chinese Whispers count at ``threshold``).
        covariance_type: "diag" or "spherical".
        threshold: cosine threshold for ``n_clusters="auto"`` (and only there): the
            embedder's calibrated cluster threshold; no default.
        reg_covar: added to every variance. Same-identity faces differ by about
            1e-3 per dimension (cosine 0.94 over 128 dims), so 1e-4 keeps one-face
            components from collapsing without blurring identities together.
        max_iter: EM iterations at most.
        max_memory_gb: refuse when EM's estimated peak memory would exceed this.
        seed: random state.

    Attributes:
        labels_: (N,) most probable component, renumbered 0..n_clusters_-1 by size.
        n_clusters_: components that got at least one face.
        k_: components fitted.
        converged_: whether EM converged.
    """

    def __init__(
        self,
        n_clusters: int | str = "auto",
        covariance_type: str = "diag",
        threshold: float | None = None,
        reg_covar: float = 1e-4,
        max_iter: int = 20,
        max_memory_gb: float = 8.0,
        seed: int = 0,
    ):
        self.n_clusters = n_clusters
        self.covariance_type = covariance_type
        self.threshold = threshold
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.max_memory_gb = max_memory_gb
        self.seed = seed

    def fit(self, X, y=None) -> "KMeansGMM":
        X = check_embeddings(X)
        if self.covariance_type not in ("diag", "spherical"):
            raise ValueError(f"covariance_type must be 'diag' or 'spherical', got {self.covariance_type!r}")
        n = len(X)
        if n == 0:
            self.labels_, self.k_, self.n_clusters_, self.converged_ = np.empty(0, np.int64), 0, 0, True
            return self
        threshold = require_threshold(self) if self.n_clusters == "auto" else self.threshold
        km = ScalableKMeans(self.n_clusters, threshold=threshold, seed=self.seed).fit(X)
        k = km.n_clusters_
        need = _PEAK_COPIES * 8.0 * n * k
        if need > self.max_memory_gb * 2**30:
            raise ValueError(
                f"GMM with N={n}, k={k} needs ~{need / 2**30:.1f} GB "
                f"(max_memory_gb={self.max_memory_gb}); use a scalable clusterer"
            )
        if k == 1:
            # One component: EM cannot change anything, and sklearn needs >= 2 samples per component.
            self.labels_, self.k_, self.n_clusters_, self.converged_ = np.zeros(n, np.int64), 1, 1, True
            return self
        x = X.astype(np.float64)
        sizes = np.bincount(km.labels_, minlength=k).astype(np.float64)
        means = np.zeros((k, x.shape[1]))
        np.add.at(means, km.labels_, x)
        means /= sizes[:, None]
        var = np.zeros_like(means)
        np.add.at(var, km.labels_, (x - means[km.labels_]) ** 2)
        var = var / sizes[:, None] + self.reg_covar
        precisions = 1.0 / (var if self.covariance_type == "diag" else var.mean(axis=1))
        gmm = GaussianMixture(
            n_components=k,
            covariance_type=self.covariance_type,
            reg_covar=self.reg_covar,
            max_iter=self.max_iter,
            # "random_from_data" is cheap and fully overridden by the three *_init arrays.
            init_params="random_from_data",
            weights_init=sizes / n,
            means_init=means,
            precisions_init=precisions,
            random_state=self.seed,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            raw = gmm.fit(x).predict(x)
        self.labels_ = relabel_by_size(raw)
        self.k_ = k
        self.n_clusters_ = int(self.labels_.max()) + 1
        self.converged_ = bool(gmm.converged_)
        return self
