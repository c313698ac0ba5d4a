"""Nearest neighbours of L2-normalised embeddings, and the sparse graphs built from them.

Every clusterer that needs neighbours gets them here, so the choice between exact
and approximate search is made (and measured) in one place.

Exact search (N <= ``EXACT_MAX``) is faiss's blocked brute force over inner
products: BLAS matrix products plus a heap per query, memory ``block x N``.
Above that, ``"auto"`` uses an IVF-Flat index: inverted lists over a k-means
coarse quantiser (nlist = 4 sqrt(N)), exact inner products inside the
``nprobe = 24`` probed lists.

Measured on this 2-core machine (faiss 1.15, another benchmark running, so
absolute times are inflated), synthetic face-like embeddings (identity sizes
Zipf(2.2), two thirds of identities seen once, intra-identity cosine ~0.94,
inter ~0.75: a narrow cone, like real face embeddings), k = 30. "recall@k" is
the share of the true 30 neighbours found; "recall >= 0.9" the share of true
neighbours with cosine >= 0.9, the only ones a thresholded face graph keeps.

    ===========  ==================================  ======  ========  ============
    N            method                              time s  recall@k  recall >=0.9
    ===========  ==================================  ======  ========  ============
    20,000       exact (IndexFlatIP)                    2.9     1.000         1.000
    20,000       IVF-Flat nprobe=24                     1.6     0.690         0.999
    20,000       faiss HNSW M=32 efC=80 efSearch=128    5.9     0.970         1.000
    20,000       hnswlib, same parameters               3.9     0.971         1.000
    100,000      exact                                   93     1.000         1.000
    100,000      IVF-Flat nprobe=24                      23     0.610         0.995
    100,000      faiss HNSW M=32 efC=80 efSearch=128     75     0.894         0.996
    ===========  ==================================  ======  ========  ============

Why IVF-Flat and not HNSW, although only HNSW reaches recall@k >= 0.95 (at 20k;
at 100k it falls to 0.89 while costing as much as brute force). In a narrow
cone, the far end of a face's top 30 (cosine ~0.8, people it is not) is almost
random and expensive to get exactly right; no clusterer here uses it: Chinese
Whispers, Leiden and Infomap prune every edge below the similarity threshold
(~0.9+), and the neighbours above it are found 99.5 % of the time by IVF at a
third of brute force's cost (and falling: IVF scans ~6 sqrt(N) faces per query,
brute force N). IVF is also deterministic (seeded k-means, exhaustive scan per
list). Rank-order methods do read whole lists; above 20k faces their far ranks
are approximate (``method="hnsw"`` or ``"exact"`` buy them back at a price).
"""

from __future__ import annotations

import os

import numpy as np
from scipy import sparse

#: Largest N searched exactly; above it "auto" uses IVF-Flat.
EXACT_MAX = 20_000
#: HNSW graph degree and build beam (see the module docstring for the measurements).
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80


def check_embeddings(X) -> np.ndarray:
    """Validate embeddings and return them as a C-contiguous float32 array.

    Args:
        X: array-like of shape (N, D); other numeric dtypes are converted.

    Returns:
        (N, D) float32 array. N = 0 is allowed.

    Raises:
        ValueError: when X is not 2-D or holds NaN or infinity.
    """
    try:
        x = np.asarray(X, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(f"embeddings must be numeric: {error}") from None
    if x.ndim != 2:
        raise ValueError(f"expected (N, D) embeddings, got shape {x.shape}")
    if x.size and not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinity")
    return np.ascontiguousarray(x)


def unique_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of x and, for every row, the index of its distinct row.

    Exact duplicate embeddings (the same photo twice, or a degenerate input) tie
    in every neighbour ranking, which leaves rank-based and graph methods
    undefined between them; clustering the distinct rows and mapping back puts
    duplicates in one cluster by construction.
    """
    x = np.ascontiguousarray(x)
    if len(x) == 0:
        return x, np.zeros(0, np.int64)
    rows = x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    # Number distinct rows by first appearance, not by np.unique's byte order.
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return x[first[order]], rank[inverse.ravel()].astype(np.int64)


def _faiss():
    # Imported lazily: faiss is only needed once something is clustered.
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return faiss


def _drop_self(ids: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own index from k+1 results, keeping k.

    A row need not contain itself: with more than k exact duplicates the search may
    return k+1 equally similar others, and then the last one is dropped instead.
    """
    is_self = ids == np.arange(len(ids))[:, None]
    # Stable sort on the boolean moves the self entry (if any) to the end.
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(sims, order, axis=1)


def _exact(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    faiss = _faiss()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, ids = index.search(x, k + 1)
    return ids, sims


def _ivf(x: np.ndarray, k: int, nprobe: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    faiss = _faiss()
    n, d = x.shape
    nlist = int(max(1, min(4 * np.sqrt(n), n // 39)))  # faiss wants >= 39 training points per list
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed  # k-means seed: the index, and so the neighbours, are reproducible
    # A coarse quantiser needs little: 40 points per list and 10 k-means iterations
    # keep training near 3 % of the whole search (1M faces: 10 s of ~330 s).
    index.cp.niter = 10
    train = x if n <= 40 * nlist else x[np.random.default_rng(seed).choice(n, 40 * nlist, replace=False)]
    index.train(train)
    index.add(x)
    index.nprobe = int(nprobe or min(nlist, 24))
    sims, ids = index.search(x, k + 1)
    return ids, sims


def _hnsw(x: np.ndarray, k: int, ef_search: int | None) -> tuple[np.ndarray, np.ndarray]:
    faiss = _faiss()
    index = faiss.IndexHNSWFlat(x.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(x)
    index.hnsw.efSearch = int(ef_search or max(128, 3 * (k + 1) // 2))
    sims, ids = index.search(x, k + 1)
    return ids, sims


def knn_graph(
    X, k: int, method: str = "auto", nprobe: int | None = None, seed: int = 0, ef_search: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar other faces of every face.

    Args:
        X: (N, D) L2-normalised embeddings (cosine similarity = inner product).
        k: neighbours per face. Clamped to N - 1, so the result may have fewer columns.
        method: "exact" (brute force), "hnsw" or "ivf" (approximate), or "auto":
            exact up to ``EXACT_MAX`` faces, IVF-Flat above (see module docstring).
        nprobe: inverted lists scanned per query by "ivf" (default 24).
        seed: seed of the IVF k-means quantiser and its training sample.
        ef_search: HNSW search beam (default max(128, 1.5 (k + 1))).

    Returns:
        (indices, similarities): (N, k') int64 and (N, k') float32, k' = min(k, N - 1),
        each row sorted by decreasing similarity, the face itself excluded. An
        approximate search that finds fewer than k' neighbours pads with index -1
        and similarity -inf.

    Raises:
        ValueError: bad input, negative k or unknown method.
    """
    x = check_embeddings(X)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if method not in ("auto", "exact", "hnsw", "ivf"):
        raise ValueError(f"unknown method {method!r}; use 'auto', 'exact', 'hnsw' or 'ivf'")
    n = len(x)
    k = min(k, max(n - 1, 0))
    if k == 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32)
    if method == "exact" or (method == "auto" and n <= EXACT_MAX):
        ids, sims = _exact(x, k)
    elif method == "hnsw":
        ids, sims = _hnsw(x, k, ef_search)
    else:
        ids, sims = _ivf(x, k, nprobe, seed)
    ids, sims = _drop_self(ids.astype(np.int64), sims.astype(np.float32), k)
    sims[ids < 0] = -np.inf
    return ids, sims


def knn_to_csr(indices: np.ndarray, sims: np.ndarray, threshold: float | None = None) -> sparse.csr_matrix:
    """Symmetric weighted graph from neighbour lists.

    Args:
        indices: (N, k) neighbour indices as from :func:`knn_graph` (-1 = none).
        sims: (N, k) their similarities, used as edge weights.
        threshold: keep only edges with similarity >= threshold (None keeps all).

    Returns:
        (N, N) float32 CSR matrix without self loops; an edge is kept when either
        end lists the other (kNN is not symmetric), with the larger weight.
    """
    indices = np.asarray(indices)
    sims = np.asarray(sims, dtype=np.float32)
    n = len(indices)
    # int32 indices halve the memory of a million-face graph (scipy keeps them as given).
    itype = np.int32 if n < 2**31 else np.int64
    rows = np.repeat(np.arange(n, dtype=itype), indices.shape[1] if indices.ndim == 2 else 0)
    cols, weights = indices.ravel().astype(itype), sims.ravel()
    keep = (cols >= 0) & (cols != rows)
    if threshold is not None:
        keep &= weights >= threshold
    graph = sparse.csr_matrix((weights[keep], (rows[keep], cols[keep])), shape=(n, n), dtype=np.float32)
    return graph.maximum(graph.T).tocsr()
