"""Every clustering algorithm under one stable name, for benchmarks and params.yaml.

All classes share one interface: hyper-parameters in ``__init__``, ``fit(X)`` on
(N, D) L2-normalised embeddings, ``labels_`` (0..k-1, largest cluster first,
every face labelled), ``n_clusters_`` and ``fit_predict``.

``SCALABLE`` names the algorithms that run on a million faces on two cores
(within ~10 minutes and 8 GB, measured at 100k and 1M on synthetic face-like
data, on a machine shared with another job; see each docstring). The graph
methods spend most of that time in the kNN search. Left out: k-means and GMM (O(N k) per iteration with k ~ N / 3; GMM
also needs ~19 N^2 bytes), DBSCAN (its silhouette sweep is O(N k) per epsilon),
Zhu's rank-order (many cluster-level rounds), and approximate rank-order at its
published k = 200 (O(N k^2): 85 s at 100k, ~15-20 minutes at 1M with the
search; with k <= 50 it would fit).

``CALIBRATION_GRID`` lists, per algorithm, the one or two hyper-parameters to
choose on held-out identities, with candidate values around the defaults; the
rest keep their defaults.
"""

from __future__ import annotations

from components.cluster.chinese_whispers import ChineseWhispers
from components.cluster.dbscan import SilhouetteDBSCAN
from components.cluster.gmm import KMeansGMM
from components.cluster.graph_methods import Infomap, Leiden
from components.cluster.kmeans import ScalableKMeans
from components.cluster.kmeans_dbscan import KMeansDBSCAN
from components.cluster.rank_order import ApproxRankOrder, RankOrder

ALGORITHMS: dict[str, type] = {
    "chinese_whispers": ChineseWhispers,
    "kmeans": ScalableKMeans,
    "gmm": KMeansGMM,
    "dbscan": SilhouetteDBSCAN,
    "rank_order": RankOrder,
    "approx_rank_order": ApproxRankOrder,
    "kmeans_dbscan": KMeansDBSCAN,
    "leiden": Leiden,
    "infomap": Infomap,
}

SCALABLE: set[str] = {"chinese_whispers", "kmeans_dbscan", "leiden", "infomap"}

_THRESHOLDS = [0.90, 0.915, 0.93, 0.945, 0.96]

CALIBRATION_GRID: dict[str, dict[str, list]] = {
    "chinese_whispers": {"threshold": _THRESHOLDS},
    # k-means and GMM take k from Chinese Whispers at this threshold.
    "kmeans": {"threshold": _THRESHOLDS},
    "gmm": {"threshold": _THRESHOLDS},
    # DBSCAN picks epsilon itself (silhouette); density is the free choice.
    # min_samples=1 equals 2 here (isolated faces are singletons either way).
    "dbscan": {"min_samples": [2, 3, 5]},
    # D^R is 2 for mutual first neighbours with matching lists, so thresholds start above 2.
    "rank_order": {"threshold": [2.5, 3.0, 4.0, 6.0, 8.0], "k": [10, 20]},
    # k = 200 is the published value; on real (narrow-cone) face embeddings short lists do better.
    "approx_rank_order": {"threshold": [0.1, 0.3, 0.6, 1.0], "k": [10, 20, 50, 200]},
    "kmeans_dbscan": {"part_size": [200, 500, 1000], "min_samples": [1, 2, 3]},
    "leiden": {"threshold": _THRESHOLDS, "resolution": [0.05, 0.1, 0.3, 0.6]},
    "infomap": {"threshold": _THRESHOLDS},
}


def make(name: str, **params):
    """Instantiate a registered algorithm by name with keyword hyper-parameters."""
    try:
        return ALGORITHMS[name](**params)
    except KeyError:
        raise ValueError(f"unknown clustering algorithm {name!r}; choose from {sorted(ALGORITHMS)}") from None
