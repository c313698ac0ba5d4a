"""Medoids of clusters of L2-normalised embeddings."""

from __future__ import annotations

import numpy as np


def medoid_index(embeddings: np.ndarray) -> int:
    """Index of the member with the largest total cosine similarity to the others.

    For unit vectors the total similarity of member i is ``x_i . sum_j x_j``, so the
    true medoid (under cosine distance) costs O(n d), not O(n^2 d).
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if len(x) == 0:
        raise ValueError("a medoid needs at least one member")
    return int(np.argmax(x @ x.sum(axis=0)))


def medoids(embeddings: np.ndarray, labels: np.ndarray) -> dict[int, int]:
    """Medoid row index for every cluster label."""
    labels = np.asarray(labels)
    result = {}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        result[int(label)] = int(members[medoid_index(embeddings[members])])
    return result
