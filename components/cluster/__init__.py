"""Cluster: Chinese Whispers over a similarity graph of embeddings, and medoids."""

from components.cluster.chinese_whispers import ChineseWhispers, chinese_whispers, relabel_by_size
from components.cluster.graph import similarity_graph
from components.cluster.medoid import medoid_index, medoids

__version__ = "1.0.0"

__all__ = ["ChineseWhispers", "chinese_whispers", "medoid_index", "medoids", "relabel_by_size", "similarity_graph"]
