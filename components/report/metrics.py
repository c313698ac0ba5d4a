"""Clustering quality metrics for face clusters.

Everything that compares two labelings is computed from the contingency table
(how many items fall in each (true class, predicted cluster) cell), found with
``np.unique`` on the label pairs. That keeps memory at O(N) and time at
O(N log N), so the metrics stay usable for a million faces, where anything
that enumerates the N^2 item pairs would not.

Labels may be any values ``np.unique`` can sort (ints, strings). Every
distinct label is one cluster, including a "noise" label such as -1; callers
whose clusterer emits noise should give noise items their own singleton
labels first if that is what they mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from sklearn.metrics import (
    adjusted_rand_score,
    normalized_mutual_info_score,
    silhouette_score,
)

__all__ = [
    "ari",
    "bcubed_prf",
    "clustering_accuracy",
    "clustering_summary",
    "nmi",
    "pairwise_prf",
    "silhouette_cosine",
]


def _as_labels(labels: Any, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D label array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; metrics are undefined for no items")
    return arr


def _check_pair(true: Any, pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = _as_labels(true, "true")
    p = _as_labels(pred, "pred")
    if t.shape != p.shape:
        raise ValueError(f"true and pred differ in length: {t.size} vs {p.size}")
    return t, p


def _contingency(
    true: Any, pred: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sparse contingency table of two labelings.

    Returns:
        ``(n_ij, a_cell, b_cell, a, b)``: the count of every non-empty
        (class, cluster) cell, the size of each such cell's true class and of
        its predicted cluster, then all class sizes and all cluster sizes.
    """
    t, p = _check_pair(true, pred)
    _, t_idx = np.unique(t, return_inverse=True)
    p_vals, p_idx = np.unique(p, return_inverse=True)
    t_idx = t_idx.astype(np.int64).ravel()
    p_idx = p_idx.astype(np.int64).ravel()
    n_cols = len(p_vals)
    # One int64 code per cell; n_classes * n_clusters <= N^2 fits int64.
    cell_codes, n_ij = np.unique(t_idx * n_cols + p_idx, return_counts=True)
    a = np.bincount(t_idx)
    b = np.bincount(p_idx)
    return n_ij, a[cell_codes // n_cols], b[cell_codes % n_cols], a, b


def _r(x: float) -> float:
    # "+ 0.0" turns a rounded -0.0 into 0.0 so reports never show "-0.0".
    return round(float(x), 4) + 0.0


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _pairs(n: np.ndarray) -> int:
    """Sum of C(n, 2) over ``n``, as an exact Python int."""
    n = n.astype(np.int64)
    return int((n * (n - 1) // 2).sum())


def pairwise_prf(true: Any, pred: Any) -> tuple[float, float, float]:
    """Pairwise precision, recall and F1 over all unordered item pairs.

    A pair is "predicted same" when both items share a predicted cluster and
    "truly same" when they share a true label. Precision is the share of
    predicted-same pairs that are truly same; recall the share of truly-same
    pairs that are predicted same.

    Conventions for empty denominators: precision is 1.0 when there are no
    predicted-same pairs (every cluster a singleton: nothing was wrongly
    merged), recall is 1.0 when there are no truly-same pairs (nothing could
    be missed). F1 is 0.0 when precision and recall are both 0.

    Args:
        true: Ground-truth labels, shape (N,).
        pred: Predicted cluster labels, shape (N,).

    Returns:
        ``(precision, recall, f1)`` as floats.

    Raises:
        ValueError: If the arrays are empty, not 1-D, or differ in length.
    """
    n_ij, _, _, a, b = _contingency(true, pred)
    both = _pairs(n_ij)
    truly_same = _pairs(a)
    pred_same = _pairs(b)
    precision = 1.0 if pred_same == 0 else both / pred_same
    recall = 1.0 if truly_same == 0 else both / truly_same
    return precision, recall, _f1(precision, recall)


def bcubed_prf(true: Any, pred: Any) -> tuple[float, float, float]:
    """BCubed precision, recall and F1 (Bagga & Baldwin, 1998).

    Per item: precision = |own cluster ∩ own class| / |own cluster|, recall =
    |own cluster ∩ own class| / |own class|; both averaged over all items.
    The n_ij items of a cell share those values, so the averages reduce to
    ``sum(n_ij^2 / b_j) / N`` and ``sum(n_ij^2 / a_i) / N``.

    Args:
        true: Ground-truth labels, shape (N,).
        pred: Predicted cluster labels, shape (N,).

    Returns:
        ``(precision, recall, f1)`` as floats.

    Raises:
        ValueError: If the arrays are empty, not 1-D, or differ in length.
    """
    n_ij, a_cell, b_cell, a, _ = _contingency(true, pred)
    n = int(a.sum())
    sq = n_ij.astype(np.float64) ** 2
    precision = float((sq / b_cell).sum() / n)
    recall = float((sq / a_cell).sum() / n)
    return precision, recall, _f1(precision, recall)


def nmi(true: Any, pred: Any) -> float:
    """Normalized mutual information (sklearn, arithmetic normalization).

    Args:
        true: Ground-truth labels, shape (N,).
        pred: Predicted cluster labels, shape (N,).

    Returns:
        NMI in [0, 1].
    """
    t, p = _check_pair(true, pred)
    return float(normalized_mutual_info_score(t, p))


def ari(true: Any, pred: Any) -> float:
    """Adjusted Rand index (sklearn).

    Args:
        true: Ground-truth labels, shape (N,).
        pred: Predicted cluster labels, shape (N,).

    Returns:
        ARI; 1.0 for identical partitions, around 0 for random ones.
    """
    t, p = _check_pair(true, pred)
    return float(adjusted_rand_score(t, p))


def clustering_accuracy(true: Any, pred: Any) -> float:
    """Clustering accuracy as the source thesis defines it.

    Each predicted cluster is matched to at most one identity and each identity
    to at most one cluster so that the matched cells hold as many items as
    possible (the Hungarian assignment on the contingency table); accuracy is
    that count divided by N. Clusters and identities left unmatched count as
    errors, so both over-splitting and over-merging cost accuracy.

    Only non-empty contingency cells can matter (a matched pair sharing no item
    adds nothing), so the assignment runs on the sparse table: a maximum-weight
    matching over the non-zero cells (scipy's LAPJVsp), which for 13k items and
    6k clusters stays at O(N) memory where a dense class x cluster matrix would
    need hundreds of MB. Every class also gets a private dummy cluster of weight
    ``1 / (2 * n_classes)``, so a full matching of the classes always exists;
    the dummies add less than 0.5 in total, never enough to beat one real item,
    so the optimum over real cells is unchanged.

    Args:
        true: Ground-truth labels, shape (N,).
        pred: Predicted cluster labels, shape (N,).

    Returns:
        Accuracy in (0, 1].

    Raises:
        ValueError: If the arrays are empty, not 1-D, or differ in length.
    """
    t, p = _check_pair(true, pred)
    _, t_idx = np.unique(t, return_inverse=True)
    _, p_idx = np.unique(p, return_inverse=True)
    t_idx, p_idx = t_idx.ravel(), p_idx.ravel()
    n_classes, n_clusters = int(t_idx.max()) + 1, int(p_idx.max()) + 1
    cells = sparse.coo_matrix(
        (np.ones(t.size, dtype=np.float64), (t_idx, p_idx)), shape=(n_classes, n_clusters)
    ).tocsr()  # duplicates are summed: cell counts
    dummy = sparse.identity(n_classes, format="csr") * (0.5 / n_classes)
    rows, cols = min_weight_full_bipartite_matching(sparse.hstack([cells, dummy]).tocsr(), maximize=True)
    real = cols < n_clusters
    matched = int(np.asarray(cells[rows[real], cols[real]]).sum())
    return matched / t.size


def silhouette_cosine(
    embeddings: Any, labels: Any, sample_size: int = 5000, seed: int = 0
) -> float | None:
    """Mean silhouette coefficient under cosine distance.

    When N > ``sample_size`` a uniform random subset of that size (fixed by
    ``seed``) is scored, since silhouette needs all pairwise distances.

    The silhouette is undefined, and None is returned, when the scored items
    fall in fewer than 2 clusters or every cluster among them is a singleton.

    Args:
        embeddings: Array of shape (N, D).
        labels: Cluster labels, shape (N,).
        sample_size: Most items to score.
        seed: Seed for the sample.

    Returns:
        The score in [-1, 1], or None when undefined.

    Raises:
        ValueError: If shapes do not match.
    """
    x = np.asarray(embeddings)
    y = _as_labels(labels, "labels")
    if x.ndim != 2 or x.shape[0] != y.size:
        raise ValueError(
            f"embeddings must have shape (N, D) with N={y.size}, got {x.shape}"
        )
    if y.size > sample_size:
        idx = np.random.default_rng(seed).choice(y.size, size=sample_size, replace=False)
        x, y = x[idx], y[idx]
    # Checked on the scored items, since a sample can lose clusters.
    n_clusters = np.unique(y).size
    if n_clusters < 2 or n_clusters == y.size:
        return None
    return float(silhouette_score(x, y, metric="cosine"))


def clustering_summary(
    pred: Any, true: Any | None = None, embeddings: Any | None = None
) -> dict[str, int | float | None]:
    """JSON-ready summary of a clustering, for reports and MLflow.

    Always present: ``n_items``, ``n_clusters``, ``largest_cluster`` (size of
    the biggest cluster) and ``singleton_share``: the share of ITEMS that are
    alone in their cluster (not the share of clusters), because that reads
    directly as "fraction of faces left unclustered".

    With ``true``: ``pairwise_precision``, ``pairwise_recall``,
    ``pairwise_f1``, ``bcubed_precision``, ``bcubed_recall``, ``bcubed_f1``,
    ``nmi``, ``ari``, ``accuracy`` (see :func:`clustering_accuracy`). With
    ``embeddings``: ``silhouette`` (None when undefined, see
    :func:`silhouette_cosine`).

    Args:
        pred: Predicted cluster labels, shape (N,).
        true: Optional ground-truth labels, shape (N,).
        embeddings: Optional embeddings, shape (N, D).

    Returns:
        Dict of plain Python ints and floats (floats rounded to 4 decimals).
    """
    p = _as_labels(pred, "pred")
    _, sizes = np.unique(p, return_counts=True)
    out: dict[str, int | float | None] = {
        "n_items": int(p.size),
        "n_clusters": int(sizes.size),
        "singleton_share": _r((sizes == 1).sum() / p.size),
        "largest_cluster": int(sizes.max()),
    }
    if true is not None:
        pw = pairwise_prf(true, p)
        bc = bcubed_prf(true, p)
        for prefix, values in (("pairwise", pw), ("bcubed", bc)):
            for key, value in zip(("precision", "recall", "f1"), values):
                out[f"{prefix}_{key}"] = _r(value)
        out["nmi"] = _r(nmi(true, p))
        out["ari"] = _r(ari(true, p))
        out["accuracy"] = _r(clustering_accuracy(true, p))
    if embeddings is not None:
        s = silhouette_cosine(embeddings, p)
        out["silhouette"] = None if s is None else _r(s)
    return out
