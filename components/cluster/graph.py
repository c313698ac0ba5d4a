"""Similarity graphs over L2-normalised embeddings.

Built block by block so memory stays at ``block x N`` floats rather than ``N x N``.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse


def similarity_graph(
    embeddings: np.ndarray, threshold: float, knn: int | None = None, block: int = 2048
) -> sparse.csr_matrix:
    """Symmetric sparse graph whose edge weights are cosine similarities.

    Args:
        embeddings: (N, D) L2-normalised vectors, so a dot product is a cosine.
        threshold: keep an edge only when the similarity is at least this.
        knn: when set, each face links only to its ``knn`` most similar faces (then
            the graph is symmetrised), which keeps the edge count linear in N.
        block: rows compared at a time.

    Returns:
        (N, N) CSR matrix, no self loops.
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = len(x)
    rows, cols, weights = [], [], []
    for start in range(0, n, block):
        sims = x[start : start + block] @ x.T
        local = np.arange(len(sims))
        sims[local, start + local] = -np.inf  # no self loops
        if knn is not None and knn < n - 1:
            top = np.argpartition(-sims, knn, axis=1)[:, :knn]
            top_sims = np.take_along_axis(sims, top, axis=1)
            keep = top_sims >= threshold
            r = np.broadcast_to(local[:, None], top.shape)[keep]
            c, w = top[keep], top_sims[keep]
        else:
            r, c = np.nonzero(sims >= threshold)
            w = sims[r, c]
        rows.append(r + start)
        cols.append(c)
        weights.append(w)
    graph = sparse.csr_matrix(
        (np.concatenate(weights) if weights else [], (np.concatenate(rows) if rows else [], np.concatenate(cols) if cols else [])),
        shape=(n, n),
        dtype=np.float32,
    )
    # kNN is not symmetric (a may be among b's neighbours but not the reverse); keep an edge if either side has it.
    return graph.maximum(graph.T).tocsr()
