"""Cluster: Chinese Whispers and the thesis's other clusterers over face embeddings, and medoids.

Every clusterer is registered by name in :mod:`components.cluster.registry`.
"""

from components.cluster.chinese_whispers import ChineseWhispers, chinese_whispers, relabel_by_size
from components.cluster.dbscan import SilhouetteDBSCAN, cosine_silhouette
from components.cluster.gmm import KMeansGMM
from components.cluster.graph import similarity_graph
from components.cluster.graph_methods import Infomap, Leiden
from components.cluster.kmeans import ScalableKMeans, kmeans_parallel_init
from components.cluster.kmeans_dbscan import KMeansDBSCAN
from components.cluster.knn import knn_graph, knn_to_csr
from components.cluster.medoid import medoid_index, medoids
from components.cluster.rank_order import ApproxRankOrder, RankOrder, rank_order_distances
from components.cluster.registry import ALGORITHMS, CALIBRATION_GRID, SCALABLE, make

__version__ = "1.1.0"

__all__ = [
    "ALGORITHMS",
    "ApproxRankOrder",
    "CALIBRATION_GRID",
    "ChineseWhispers",
    "Infomap",
    "KMeansDBSCAN",
    "KMeansGMM",
    "Leiden",
    "RankOrder",
    "SCALABLE",
    "ScalableKMeans",
    "SilhouetteDBSCAN",
    "chinese_whispers",
    "cosine_silhouette",
    "kmeans_parallel_init",
    "knn_graph",
    "knn_to_csr",
    "make",
    "medoid_index",
    "medoids",
    "rank_order_distances",
    "relabel_by_size",
    "similarity_graph",
]
