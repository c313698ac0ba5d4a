"""Identities that live over time: incremental assignment, the unknown pool, re-clustering.

The policy (README.md, "Identities over time"), one batch of photos at a time:

1. **Assign.** Every new usable face is compared (cosine) with every identity's
   medoid. It joins the most similar identity when the similarity reaches
   ``identities.assign_threshold``; otherwise it waits in the unknown pool.
   At the shipped 0.909 (the LFW 10-fold mean threshold) the LFW View 2 pairs give
   a false-accept rate of 0.8% (24 of 3000 different-person pairs) at 98.9% true
   accepts (:func:`false_accept_rate`). Against K identities a stranger's chance of
   being absorbed grows like ``1 - (1 - FAR) ** K``; raise the threshold (0.92:
   FAR 0.1%, TAR 96%) when strangers matter more than recall.
2. **Re-cluster the pool** when it is due: window T (``identities.recluster_every_s``)
   has passed since the last re-clustering, or ``identities.recluster_pool_size``
   faces have joined the pool since then, or the store was never clustered (the
   first run). Only faces that arrived since the last re-clustering make it due: the
   faces a re-clustering could not place (strangers seen once) stay in the pool, and
   counting them would re-cluster a pool of strangers on every batch. The pool is
   clustered with Chinese Whispers (the ``cluster:`` section); each cluster of at
   least ``cluster.min_identity_size`` faces whose medoid matches an identity's
   medoid at ``assign_threshold`` or above joins it, any other becomes a new
   identity. The faces still left (smaller clusters) then get one more chance at
   step 1 against all identities, new ones included, so the order in which faces
   arrive matters less.
3. **Medoids** of every identity that changed are recomputed: the true medoid under
   cosine distance (:func:`components.cluster.medoid_index`, O(n d)); above
   ``identities.medoid_sample_above`` members, the medoid of a seeded random sample
   of that many members (approximate: the sample's sum estimates the members' sum
   with a relative error of about 1/sqrt(sample), and only sampled members are
   candidates; the seed includes the identity id, so the result is reproducible).
   The exact medoid is already O(n d), so the sample saves little arithmetic; in
   the unit tests the sampled medoid's mean similarity to all members stays within
   0.01 of the true medoid's.
4. **Full re-clustering** (on demand): every usable face is clustered at once and
   reconciled with the identities by majority overlap
   (:func:`reconcile_by_overlap`, :func:`~components.identities.store.replace_clustering_in`);
   names survive.

Cannot-link: two faces detected in the same photo are never one person. Clustering
splits any cluster holding two faces of one photo (:func:`enforce_cannot_link`);
assignment never puts a face into an identity that already holds a face of its
photo: it takes the next best identity above the threshold, or goes to the pool.

User corrections are constraints between faces (``face_links`` in the store, made by
the people page and by ``faces identities merge|split``): a must-link puts two faces in
one identity, a cannot-link keeps them apart. Assignment and pool re-clustering never
put a face into an identity holding a face it is cannot-linked with, and a face
must-linked with a member of an identity joins it; every clustering (pool and full)
first joins must-linked clusters, then splits cannot-linked faces apart
(:func:`apply_links`), so a merge or a "not this person" survives
``faces run --full-recluster``.

Identity ids are stable: a face keeps its identity until a user moves it or a full
re-clustering runs; a pool re-clustering only adds faces to identities or creates
new ones.

Concurrent batches: every store wrapper below (and every user operation) takes the
store's life-cycle lock first (:func:`components.identities.store.lock_lifecycle`), so
several ``face_ingest`` runs and a ``face_recluster`` never interleave their reads and
writes: a face is assigned or pooled once, and a medoid is never computed from a stale
member list.

Every function above the "store wrappers" line is pure (numpy in, numpy out) and
takes the time as a value; the wrappers read the store, call the core, and write
the result back in one transaction, with the time from an injectable clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from components.cluster import ChineseWhispers, medoid_index, relabel_by_size
from components.identities.groups import DisjointSets

Clock = Callable[[], datetime]

# A face whose best few identities all hold a face of its photo goes to the pool; looking
# further down the list would nearly always find identities below the threshold anyway.
MAX_CANDIDATES = 8


def utc_now() -> datetime:
    """The default clock (the only place the life cycle reads the wall clock)."""
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class Policy:
    """Every number the life cycle uses, in one place (built from ``params.yaml``).

    The two thresholds have no default: they belong to the model whose embeddings are
    compared (:meth:`from_settings`, :func:`policy_for_store`).

    Attributes:
        assign_threshold: cosine similarity to a medoid needed to join an identity.
        recluster_every_s: window T, seconds between pool re-clusterings.
        recluster_pool_size: N, fresh pool faces that make a re-clustering due at once.
        min_identity_size: smallest cluster that becomes an identity.
        medoid_sample_above: identities larger than this get a sampled medoid.
        cluster_threshold: Chinese Whispers edge threshold.
        knn: Chinese Whispers neighbours per face on large inputs.
        knn_above: use the kNN graph above this many faces.
        iterations: Chinese Whispers passes, at most.
        seed: for Chinese Whispers and medoid samples.
    """

    assign_threshold: float
    recluster_every_s: float = 3600.0
    recluster_pool_size: int = 1000
    min_identity_size: int = 2
    medoid_sample_above: int = 5000
    cluster_threshold: float
    knn: int = 30
    knn_above: int = 5000
    iterations: int = 30
    seed: int = 0

    def __post_init__(self):
        for name in ("assign_threshold", "cluster_threshold"):
            value = getattr(self, name)
            if not -1.0 <= value <= 1.0:
                raise ValueError(f"{name} is a cosine similarity, in [-1, 1]; got {value}")
        for name in ("recluster_pool_size", "min_identity_size", "medoid_sample_above", "knn", "iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}")
        if not self.recluster_every_s >= 0:
            raise ValueError(f"recluster_every_s must be >= 0; got {self.recluster_every_s}")

    @classmethod
    def from_settings(cls, settings, thresholds=None) -> Policy:
        """The policy of a :class:`components.settings.Settings`, with a model's thresholds.

        Args:
            settings: the life-cycle numbers (``identities:`` and ``cluster:``).
            thresholds: the :class:`~components.embed.thresholds.Thresholds` (or their dict) of
                the model whose embeddings are compared; default the local model's, from
                params.yaml. Callers working on a store pass the store's active model's
                (:func:`policy_for_store`).
        """
        from components.embed.thresholds import Thresholds

        if thresholds is None:
            thresholds = Thresholds.from_settings(settings)
        elif not isinstance(thresholds, Thresholds):
            thresholds = Thresholds.from_dict(thresholds)
        ids, cluster = settings.identities, settings.cluster
        return cls(
            assign_threshold=thresholds.assign, recluster_every_s=ids.recluster_every_s,
            recluster_pool_size=ids.recluster_pool_size, min_identity_size=cluster.min_identity_size,
            medoid_sample_above=ids.medoid_sample_above, cluster_threshold=thresholds.cluster, knn=cluster.knn,
            knn_above=cluster.knn_above, iterations=cluster.iterations, seed=settings.base.seed,
        )


def policy_for_store(store, settings) -> Policy:
    """The life-cycle policy for a store: its active model's thresholds (params.yaml's for a store without one)."""
    active = store.model("active")
    return Policy.from_settings(settings, active.thresholds if active is not None else None)


# -- pure core --------------------------------------------------------------------------------


def as_embeddings(embeddings, *, dim: int | None = None, name: str = "embeddings") -> np.ndarray:
    """Validate (N, D) embeddings and return them L2-normalised as float32.

    Args:
        embeddings: array-like of shape (N, D); N may be 0.
        dim: the D they must have (e.g. the identities' medoids'), if known.
        name: what to call them in error messages.

    Raises:
        ValueError: not 2-D, wrong D, NaN or infinite values, or an all-zero row.
    """
    try:
        x = np.asarray(embeddings, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: not a numeric (N, D) array ({error})") from None
    if x.ndim != 2:
        raise ValueError(f"{name}: expected shape (N, D), got {x.shape}")
    if dim is not None and len(x) and x.shape[1] != dim:
        raise ValueError(f"{name}: dimension {x.shape[1]} does not match the identities' {dim} (a different embedder?)")
    if len(x) == 0:
        return x.astype(np.float32)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"{name}: {int(bad.sum())} row(s) hold NaN or infinite values, first at row {int(np.argmax(bad))}")
    norms = np.linalg.norm(x, axis=1)
    if (norms == 0).any():
        raise ValueError(f"{name}: row {int(np.argmax(norms == 0))} is all zeros; it has no direction to compare")
    return (x / norms[:, None]).astype(np.float32)


def _as_ids(values, n: int, name: str) -> np.ndarray:
    ids = np.asarray(values)
    if ids.shape != (n,):
        raise ValueError(f"{name}: expected {n} values (one per face), got shape {ids.shape}")
    return ids


def medoid_row(embeddings: np.ndarray, sample_above: int = 5000, seed: int | Sequence[int] = 0) -> int:
    """Row of the medoid (cosine) of unit vectors; sampled above ``sample_above`` rows.

    Args:
        embeddings: (n, D) unit vectors, n >= 1.
        sample_above: above this many rows, the medoid of a seeded random sample of
            this many rows is returned (approximate; see the module docstring).
        seed: seeds the sample (pass e.g. ``[seed, identity_id]`` for a per-identity one).

    Raises:
        ValueError: no rows.
    """
    n = len(embeddings)
    if n == 0:
        raise ValueError("a medoid needs at least one member")
    if n <= sample_above:
        return medoid_index(embeddings)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=sample_above, replace=False))
    return int(rows[medoid_index(embeddings[rows])])


@dataclass
class Assignment:
    """Where each face of a batch goes.

    Attributes:
        choice: (n,) index of the identity (row of the medoids) each face joins; -1 = pool.
        similarity: (n,) similarity to the chosen medoid (NaN for pool faces).
        best: (n,) best similarity to any medoid, blocked or not (NaN without identities);
            useful to see how far pool faces were from joining.
    """

    choice: np.ndarray
    similarity: np.ndarray
    best: np.ndarray

    @property
    def pooled(self) -> np.ndarray:
        return self.choice < 0


def assign_faces(
    embeddings, photo_ids, medoids, threshold: float, *, keys: Sequence[Hashable] | None = None,
    taken: Mapping[int, Sequence[Hashable] | set] | None = None, max_candidates: int = MAX_CANDIDATES, block: int = 4096,
    forbidden: Mapping[int, set] | None = None,
) -> Assignment:
    """Assign faces to identities by similarity to their medoids, under cannot-link.

    Pairs (face, identity) at or above ``threshold`` are taken greedily, most similar
    first, so the result does not depend on the order of faces in the batch. A pair
    is skipped when the identity already holds a face of the same photo (held
    before the batch, per ``taken``, or given earlier in this batch); the face then
    takes its next best identity, or goes to the pool.

    Args:
        embeddings: (n, D) new faces.
        photo_ids: (n,) photo of each face.
        medoids: (K, D) medoid embeddings of the identities.
        threshold: cosine similarity needed to join.
        keys: (K,) identity keys used in ``taken``; default 0..K-1.
        taken: photo id -> keys of identities that already hold a face of that photo.
        max_candidates: identities considered per face (the most similar ones).
        block: faces compared at a time (bounds memory at block x K floats).
        forbidden: face row -> keys of identities it may not join (a user's cannot-link
            with one of their members).

    Returns:
        The :class:`Assignment`.

    Raises:
        ValueError: bad embeddings (see :func:`as_embeddings`), lengths that differ,
            or faces and medoids of different dimensions.
    """
    m = as_embeddings(medoids, name="medoids")
    x = as_embeddings(embeddings, dim=m.shape[1] if len(m) else None, name="embeddings")
    n, k = len(x), len(m)
    photos = _as_ids(photo_ids, n, "photo_ids")
    keys = list(range(k)) if keys is None else list(keys)
    if len(keys) != k:
        raise ValueError(f"keys: expected {k} (one per medoid), got {len(keys)}")
    choice = np.full(n, -1, np.int64)
    similarity = np.full(n, np.nan, np.float32)
    best = np.full(n, np.nan, np.float32)
    if n == 0 or k == 0:
        return Assignment(choice, similarity, best)

    top = min(max_candidates, k)
    cand_sim, cand_face, cand_identity = [], [], []
    for start in range(0, n, block):
        sims = x[start : start + block] @ m.T
        best[start : start + len(sims)] = sims.max(axis=1)
        if top < k:
            columns = np.argpartition(-sims, top - 1, axis=1)[:, :top]
        else:
            columns = np.broadcast_to(np.arange(k), sims.shape)
        values = np.take_along_axis(sims, columns, axis=1)
        rows, cols = np.nonzero(values >= threshold)
        cand_sim.append(values[rows, cols])
        cand_face.append(rows + start)
        cand_identity.append(columns[rows, cols])
    cand_sim, cand_face, cand_identity = (np.concatenate(part) for part in (cand_sim, cand_face, cand_identity))
    # Most similar pair first; ties broken by face then identity, so the result is deterministic.
    order = np.lexsort((cand_identity, cand_face, -cand_sim.astype(np.float64)))

    held: dict[int, set] = {}
    taken = taken or {}
    for index in order:
        face = int(cand_face[index])
        if choice[face] >= 0:
            continue
        photo = photos[face].item()
        if photo not in held:
            held[photo] = set(taken.get(photo, ()))
        identity = int(cand_identity[index])
        if keys[identity] in held[photo] or (forbidden and keys[identity] in forbidden.get(face, ())):
            continue
        choice[face] = identity
        similarity[face] = cand_sim[index]
        held[photo].add(keys[identity])
    return Assignment(choice, similarity, best)


def _split_conflicts(members: np.ndarray, photos: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
    """Split one cluster until no two members share a photo; the first part is the medoid side."""
    done: list[np.ndarray] = []
    stack = [members]
    while stack:
        part = stack.pop()
        part_photos = photos[part]
        values, counts = np.unique(part_photos, return_counts=True)
        if counts.max() <= 1:
            done.append(part)
            continue
        # Seeds: the faces of the photo that appears most often (ties: the first such photo);
        # they must end up apart, one per new part.
        seeds = part[part_photos == values[np.argmax(counts)]]
        total = x[part].sum(axis=0)
        seeds = seeds[np.argsort(-(x[seeds] @ total), kind="stable")]  # medoid side first
        others = part[~np.isin(part, seeds)]
        group = np.argmax(x[others] @ x[seeds].T, axis=1) if len(others) else np.empty(0, np.int64)
        # Two refinements against each part's direction, seeds pinned: a lone seed face is a
        # noisy centre, the part's sum a better one.
        for _ in range(2):
            if not len(others):
                break
            centres = np.stack([x[seed] + x[others[group == g]].sum(axis=0) for g, seed in enumerate(seeds)])
            regrouped = np.argmax(x[others] @ centres.T, axis=1)
            if np.array_equal(regrouped, group):
                break
            group = regrouped
        parts = [np.sort(np.concatenate(([seed], others[group == g]))) for g, seed in enumerate(seeds)]
        stack.extend(reversed(parts))  # depth first, so the medoid side stays first
    return done


def enforce_cannot_link(labels, photo_ids, embeddings) -> np.ndarray:
    """Split every cluster that holds two or more faces of one photo.

    A photo shows a person once, so such a cluster merges different people. The
    faces of the most repeated photo become seeds of separate parts; every other
    member joins the part whose seed (then whose members) it is most similar to;
    parts are split again until no photo repeats. The part on the medoid side
    (its seed most similar to the cluster as a whole) keeps the cluster's label,
    other parts get new labels above the current largest.

    Args:
        labels: (n,) integer cluster labels.
        photo_ids: (n,) photo of each face.
        embeddings: (n, D) embeddings.

    Returns:
        (n,) int64 labels with no two faces of one photo sharing a label.

    Raises:
        ValueError: lengths that differ, or bad embeddings.
    """
    labels = np.asarray(labels)
    x = as_embeddings(embeddings)
    n = len(x)
    labels = _as_ids(labels, n, "labels").astype(np.int64)
    photos = _as_ids(photo_ids, n, "photo_ids")
    out = labels.copy()
    if n == 0:
        return out
    next_label = int(labels.max()) + 1
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, bounds):
        if len(np.unique(photos[members])) == len(members):
            continue
        for part in _split_conflicts(np.sort(members), photos, x)[1:]:
            out[part] = next_label
            next_label += 1
    return out


def cluster_faces(embeddings, photo_ids, policy: Policy) -> np.ndarray:
    """Chinese Whispers, then cannot-link; labels 0..k-1, largest cluster first.

    Raises:
        ValueError: bad embeddings or photo ids.
    """
    x = as_embeddings(embeddings)
    photos = _as_ids(photo_ids, len(x), "photo_ids")
    if len(x) == 0:
        return np.empty(0, np.int64)
    estimator = ChineseWhispers(
        threshold=policy.cluster_threshold, knn=policy.knn, knn_above=policy.knn_above, iterations=policy.iterations,
        seed=policy.seed,
    )
    labels = enforce_cannot_link(estimator.fit_predict(x), photos, x)
    return relabel_by_size(labels).astype(np.int64)


def apply_links(labels, face_ids, must, cannot, embeddings) -> np.ndarray:
    """Make a clustering obey the user's face links.

    First every two clusters holding must-linked faces become one; then every cluster
    holding two cannot-linked faces (not joined by must-links) is split: the faces joined
    by must-links form units, the units named in a cannot-link inside the cluster are
    placed first, largest first, each into the first part holding none of its
    cannot-partners; every other unit joins the part whose placed faces it is most
    similar to. The largest part keeps the cluster's label, the others get new labels.
    A cannot-link between faces of one must-linked unit is ignored (a later decision
    joined them).

    Args:
        labels: (n,) cluster labels.
        face_ids: (n,) face ids of the rows; links to faces not among them are ignored.
        must, cannot: pairs of face ids.
        embeddings: (n, D) embeddings.

    Returns:
        (n,) int64 labels.
    """
    labels = np.asarray(labels).astype(np.int64).copy()
    n = len(labels)
    row_of = {int(face): row for row, face in enumerate(np.asarray(face_ids).tolist())}
    if n == 0 or not (must or cannot):
        return labels
    x = as_embeddings(embeddings)

    # Units: rows joined by must-links.
    rows = DisjointSets()
    for a, b in must:
        if int(a) in row_of and int(b) in row_of:
            rows.union(row_of[int(a)], row_of[int(b)])
    units = np.array([rows.find(row) for row in range(n)], np.int64)

    # Must: a unit spread over several clusters joins them into one (the smallest label).
    clusters = DisjointSets()
    for unit in np.unique(units):
        spread = np.unique(labels[units == unit])
        for other in spread[1:]:
            a, b = clusters.find(int(spread[0])), clusters.find(int(other))
            if a != b:
                clusters.union(max(a, b), min(a, b))
    if clusters:
        labels = np.array([clusters.find(int(label)) if int(label) in clusters else int(label) for label in labels],
                          np.int64)

    # Cannot: split clusters holding two cannot-linked units.
    conflicts: dict[int, set[tuple[int, int]]] = {}
    for a, b in cannot:
        if int(a) not in row_of or int(b) not in row_of:
            continue
        ra, rb = row_of[int(a)], row_of[int(b)]
        ua, ub = int(units[ra]), int(units[rb])
        if ua != ub and labels[ra] == labels[rb]:
            conflicts.setdefault(int(labels[ra]), set()).add((min(ua, ub), max(ua, ub)))
    next_label = int(labels.max()) + 1
    for label, pairs in sorted(conflicts.items()):
        members = np.flatnonzero(labels == label)
        member_units = units[members]
        centre = x[members].sum(axis=0)
        unit_rows = {int(unit): members[member_units == unit] for unit in np.unique(member_units)}
        partners: dict[int, set[int]] = {}
        for ua, ub in pairs:
            partners.setdefault(ua, set()).add(ub)
            partners.setdefault(ub, set()).add(ua)
        placed_order = sorted(partners, key=lambda unit: (-len(unit_rows[unit]), -float(x[unit_rows[unit]].sum(axis=0) @ centre), unit))
        parts: list[list[int]] = []
        for unit in placed_order:
            for part in parts:
                if not partners[unit] & set(part):
                    part.append(unit)
                    break
            else:
                parts.append([unit])
        # Each part's direction (the mean of its placed faces, not their sum: a big part must not win by size).
        sums = np.stack([np.concatenate([x[unit_rows[unit]] for unit in part]).mean(axis=0) for part in parts])
        part_rows = [list(np.concatenate([unit_rows[unit] for unit in part])) for part in parts]
        for unit, rows in unit_rows.items():
            if unit in partners:
                continue
            best = int(np.argmax(x[rows].sum(axis=0) @ sums.T))
            part_rows[best] += list(rows)
        keep = max(range(len(parts)), key=lambda index: (len(part_rows[index]), -index))
        for index, rows in enumerate(part_rows):
            if index != keep:
                labels[np.asarray(rows, np.int64)] = next_label
                next_label += 1
    return labels


def link_targets(face_ids, links, identity_of: Mapping[int, int]) -> tuple[dict[int, set], dict[int, int]]:
    """Where the user's links send faces, given the faces' current identities.

    Args:
        face_ids: (n,) faces about to be placed.
        links: the :class:`~components.identities.store.Links` touching them.
        identity_of: face id -> identity id of assigned faces.

    Returns:
        (forbidden, required): row -> identity ids the face may not join (it is
        cannot-linked with one of their members); row -> the identity a must-linked
        partner belongs to (the first such partner's, by link order).
    """
    row_of = {int(face): row for row, face in enumerate(np.asarray(face_ids).tolist())}
    forbidden: dict[int, set] = {}
    required: dict[int, int] = {}
    for pairs, kind in ((links.cannot, "cannot"), (links.must, "must")):
        for a, b in pairs:
            for face, partner in ((int(a), int(b)), (int(b), int(a))):
                if face not in row_of or partner not in identity_of:
                    continue
                if kind == "cannot":
                    forbidden.setdefault(row_of[face], set()).add(int(identity_of[partner]))
                else:
                    required.setdefault(row_of[face], int(identity_of[partner]))
    for row, identity in list(required.items()):
        if identity in forbidden.get(row, ()):
            del required[row]  # contradictory links: keep the face out rather than guess
    return forbidden, required


def recluster_due(now_s: float, last_s: float | None, fresh: int, every_s: float, pool_size: int) -> bool:
    """Whether the pool must be re-clustered now.

    Args:
        now_s: the time now, in seconds (any epoch, as long as ``last_s`` uses it).
        last_s: time of the last re-clustering, None if there was none.
        fresh: pool faces that arrived since the last re-clustering.
        every_s: window T.
        pool_size: N.

    Returns:
        False without fresh faces (nothing new to cluster); otherwise True when the
        store was never clustered, when N fresh faces wait, or when T has passed.
        A clock that went backwards never makes it due by time.
    """
    if fresh <= 0:
        return False
    if last_s is None or fresh >= pool_size:
        return True
    return now_s - last_s >= every_s


@dataclass
class PoolPlan:
    """What a pool re-clustering does to each pool face.

    Attributes:
        labels: (n,) the face's pool cluster (after cannot-link).
        joins: (n,) row of the existing identity (in the medoids given) the face joins; -1 if none.
        new_group: (n,) the new identity (0..G-1) the face founds or joins; -1 if none.
        new_medoids: per new identity, the pool row of its medoid.
        similarity: (n,) similarity to the medoid the face was matched against; NaN if it stays.
        method: (n,) ``pool`` (its cluster joined or became an identity), ``assign``
            (placed one by one afterwards) or ``""`` (stays in the pool).
    """

    labels: np.ndarray
    joins: np.ndarray
    new_group: np.ndarray
    new_medoids: list[int]
    similarity: np.ndarray
    method: np.ndarray

    @property
    def stays(self) -> np.ndarray:
        return (self.joins < 0) & (self.new_group < 0)


def plan_pool(embeddings, photo_ids, medoids, policy: Policy, *, keys: Sequence[Hashable] | None = None,
              taken: Mapping[int, Sequence[Hashable] | set] | None = None, face_ids=None, links=None,
              forbidden: Mapping[int, set] | None = None) -> PoolPlan:
    """Re-cluster the pool and reconcile its clusters with the existing identities.

    Clusters of at least ``policy.min_identity_size`` faces are matched, most similar
    first, to the identity whose medoid is most similar to theirs (at or above
    ``policy.assign_threshold``); members whose photo the identity already holds stay
    out (cannot-link), and a cluster all of whose members are blocked tries its next
    candidate. Unmatched clusters become new identities. The remaining faces are
    then assigned one by one (:func:`assign_faces`) to all identities, new included.

    Args:
        embeddings: (n, D) pool faces.
        photo_ids: (n,) their photos.
        medoids: (K, D) medoids of the existing identities.
        policy: thresholds and clustering parameters.
        keys: (K,) identity keys used in ``taken``; default 0..K-1.
        taken: photo id -> keys of identities already holding a face of that photo.
        face_ids: (n,) the pool faces' ids, needed with ``links``.
        links: the user's face links (:class:`~components.identities.store.Links`), applied
            to the pool's clusters (:func:`apply_links`).
        forbidden: pool row -> keys of identities it may not join (cannot-links).

    Returns:
        The :class:`PoolPlan`.

    Raises:
        ValueError: bad embeddings, lengths that differ, or dimensions that differ.
    """
    m = as_embeddings(medoids, name="medoids")
    x = as_embeddings(embeddings, dim=m.shape[1] if len(m) else None, name="pool embeddings")
    n, k = len(x), len(m)
    if k == 0:
        m = np.empty((0, x.shape[1]), np.float32)  # no identities yet: (0, D), so new medoids stack onto it
    photos = _as_ids(photo_ids, n, "photo_ids")
    keys = list(range(k)) if keys is None else list(keys)
    if len(keys) != k:
        raise ValueError(f"keys: expected {k} (one per medoid), got {len(keys)}")
    index_of = {key: row for row, key in enumerate(keys)}
    # Internally identity j < K is existing row j, K + g is new group g.
    taken = taken or {}
    held: dict = {
        photo.item(): {index_of[key] for key in taken.get(photo.item(), ()) if key in index_of} for photo in np.unique(photos)
    }
    labels = cluster_faces(x, photos, policy)
    if links and face_ids is not None and n:
        labels = relabel_by_size(apply_links(labels, face_ids, links.must, links.cannot, x)).astype(np.int64)
    forbidden = forbidden or {}
    joins = np.full(n, -1, np.int64)
    new_group = np.full(n, -1, np.int64)
    similarity = np.full(n, np.nan, np.float32)
    method = np.full(n, "", dtype=object)
    new_medoids: list[int] = []
    if n == 0:
        return PoolPlan(labels, joins, new_group, new_medoids, similarity, method)

    sizes = np.bincount(labels)
    big = np.flatnonzero(sizes >= policy.min_identity_size)
    members_of = {int(label): np.flatnonzero(labels == label) for label in big}
    centre_of = {label: members[medoid_row(x[members], policy.medoid_sample_above, [policy.seed, label])]
                 for label, members in members_of.items()}
    joined: set[int] = set()
    if k and len(big):
        sims = x[[centre_of[int(label)] for label in big]] @ m.T
        rows, cols = np.nonzero(sims >= policy.assign_threshold)
        order = np.lexsort((cols, big[rows], -sims[rows, cols].astype(np.float64)))
        for index in order:
            label, identity = int(big[rows[index]]), int(cols[index])
            if label in joined:
                continue
            members = members_of[label]
            free = [row for row in members if identity not in held[photos[row].item()]
                    and keys[identity] not in forbidden.get(int(row), ())]
            if not free:
                continue
            joined.add(label)
            for row in free:
                joins[row] = identity
                similarity[row] = float(x[row] @ m[identity])
                method[row] = "pool"
                held[photos[row].item()].add(identity)
    for label in big:
        label = int(label)
        if label in joined:
            continue
        group = len(new_medoids)
        members = members_of[label]
        centre = centre_of[label]
        new_medoids.append(int(centre))
        new_group[members] = group
        similarity[members] = x[members] @ x[centre]
        method[members] = "pool"
        for row in members:
            held[photos[row].item()].add(k + group)

    # One more chance, one by one, for faces in small clusters (and blocked members).
    left = np.flatnonzero((joins < 0) & (new_group < 0))
    if len(left) and (k or new_medoids):
        candidates = np.concatenate([m, x[new_medoids]]) if new_medoids else m
        result = assign_faces(x[left], photos[left], candidates, policy.assign_threshold,
                              taken={photo: ids for photo, ids in held.items()},
                              forbidden={number: {index_of[key] for key in forbidden[int(row)] if key in index_of}
                                         for number, row in enumerate(left) if int(row) in forbidden})
        for row, choice, sim in zip(left, result.choice, result.similarity):
            if choice < 0:
                continue
            if choice < k:
                joins[row] = choice
            else:
                new_group[row] = choice - k
            similarity[row] = sim
            method[row] = "assign"
    return PoolPlan(labels, joins, new_group, new_medoids, similarity, method)


@dataclass
class Reconciliation:
    """How a full clustering maps onto the previous identities.

    Attributes:
        kept: cluster labels large enough to be identities, ascending.
        matched: cluster label -> previous identity it takes over.
        overlaps: (label, previous identity) -> shared faces, for kept labels only.
    """

    kept: list[int]
    matched: dict[int, int]
    overlaps: Counter = field(default_factory=Counter)


def reconcile_by_overlap(previous, labels, min_size: int) -> Reconciliation:
    """Match new clusters to previous identities by the faces they share.

    Greedy, largest overlap first (ties: smaller label, then smaller identity): each
    cluster of at least ``min_size`` faces takes over at most one previous identity
    and each identity goes to at most one cluster.

    Args:
        previous: (n,) each face's identity before, -1 if none.
        labels: (n,) each face's new cluster.
        min_size: smallest cluster that becomes an identity.

    Returns:
        The :class:`Reconciliation`.
    """
    labels = np.asarray(labels)
    previous = _as_ids(previous, len(labels), "previous")
    sizes = Counter(labels.tolist())
    kept = sorted(int(label) for label, size in sizes.items() if size >= min_size)
    overlaps = Counter(
        (int(label), int(identity)) for identity, label in zip(previous.tolist(), labels.tolist())
        if identity >= 0 and sizes[label] >= min_size
    )
    matched: dict[int, int] = {}
    taken: set[int] = set()
    for (label, identity), _ in sorted(overlaps.items(), key=lambda item: (-item[1], item[0])):
        if label not in matched and identity not in taken:
            matched[label] = identity
            taken.add(identity)
    return Reconciliation(kept, matched, overlaps)


def false_accept_rate(scores, same, threshold: float) -> float:
    """Share of different-person pairs whose similarity reaches the threshold.

    This is the rate at which a stranger's face would join a given identity (taking
    the medoid as one face). Against K identities the chance that a stranger joins
    one of them grows to about ``1 - (1 - FAR) ** K``: the pool exists for them.

    Args:
        scores: (P,) similarity of each pair (e.g. the LFW View 2 pairs).
        same: (P,) True where both faces are the same person.
        threshold: accept (call "same") at or above this.

    Returns:
        FAR in [0, 1].

    Raises:
        ValueError: lengths that differ, non-finite scores, or no different-person pairs.
    """
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same)
    if scores.ndim != 1 or same.shape != scores.shape:
        raise ValueError(f"scores and same must be 1-D of one length; got {scores.shape} and {same.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores hold NaN or infinite values")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be a number; got {threshold}")
    different = ~same.astype(bool)
    if not different.any():
        raise ValueError("no different-person pairs: the false-accept rate is undefined")
    return float((scores[different] >= threshold).mean())


# -- store wrappers ---------------------------------------------------------------------------
# Each reads what it needs, calls the core, writes the result, in one transaction.


def _seconds(moment: datetime) -> float:
    return moment.timestamp()


def refresh_identities(session, identity_ids, policy: Policy, *, at: datetime, actor: str = "pipeline") -> dict[int, int]:
    """Recompute medoid, size and members' similarities of the given identities.

    Identities left without members are removed (recorded as ``removed``).

    Args:
        session: the caller's transaction.
        identity_ids: identities whose membership changed.
        policy: for the medoid sample size and seed.
        at: time of the change (audit trail).
        actor: who made it.

    Returns:
        identity id -> new size, for those that still exist.
    """
    from sqlalchemy import delete, update

    from components.identities import store as db

    wanted = sorted({int(identity) for identity in identity_ids})
    if not wanted:
        return {}
    face_ids, owners, x = db.identity_members(session, wanted)
    sizes: dict[int, int] = {}
    similarity_rows = []
    for identity in wanted:
        rows = np.flatnonzero(owners == identity)
        if not len(rows):
            session.execute(delete(db.IdentityRow).where(db.IdentityRow.id == identity))
            db.add_event(session, identity, "removed", {"reason": "no faces left"}, at, actor)
            continue
        members = as_embeddings(x[rows])
        centre = medoid_row(members, policy.medoid_sample_above, [policy.seed, identity])
        row = session.get(db.IdentityRow, identity)
        row.medoid_face_id = int(face_ids[rows[centre]])
        row.size = len(rows)
        row.updated_at = at
        sizes[identity] = len(rows)
        similarity_rows += [
            {"face_id": int(face), "similarity": float(sim)} for face, sim in zip(face_ids[rows], members @ members[centre])
        ]
    if similarity_rows:
        session.execute(update(db.AssignmentRow), similarity_rows)  # bulk UPDATE by primary key
    return sizes


def _place_linked(session, face_ids: np.ndarray, photo_ids: np.ndarray) -> tuple[np.ndarray, dict[int, set], set[int]]:
    """Place faces the user must-linked with a member of an identity, in the caller's transaction.

    Returns:
        (placed, forbidden, grown): a mask of the faces placed (assigned, out of the pool);
        row -> identity ids each face may not join (cannot-links), for the assignment of
        the rest; the identities that received faces.
    """
    from sqlalchemy import delete

    from components.identities import store as db

    placed = np.zeros(len(face_ids), bool)
    links = db.links_in(session, face_ids.tolist()) if len(face_ids) else db.Links()
    if not links:
        return placed, {}, set()
    partners = {face for pair in [*links.must, *links.cannot] for face in pair}
    forbidden, required = link_targets(face_ids, links, db.owners_in(session, partners))
    if not required:
        return placed, forbidden, set()
    held = db.photo_identities(session, photo_ids[sorted(required)])
    for row, identity in sorted(required.items()):
        photo = int(photo_ids[row])
        if identity in held.get(photo, set()):
            continue  # a photo shows a person once: the cannot-link of photos wins
        held.setdefault(photo, set()).add(identity)
        placed[row] = True
        session.add(db.AssignmentRow(face_id=int(face_ids[row]), identity_id=identity, similarity=0.0, method="manual"))
    chosen = [int(face) for face in face_ids[placed]]
    if chosen:
        session.execute(delete(db.PoolFaceRow).where(db.PoolFaceRow.face_id.in_(chosen)))
    session.flush()
    return placed, forbidden, {identity for row, identity in required.items() if placed[row]}


def assign_new(store, policy: Policy, *, now: datetime) -> dict:
    """Step 1: assign every face the life cycle has not seen yet, or put it in the pool.

    Returns:
        Counts: ``faces`` seen, ``assigned``, ``pooled``, ``identities_grown``.
    """
    from components.identities import store as db

    with store.session() as session:
        db.lock_lifecycle(session)  # one life-cycle writer at a time (concurrent batches)
        new = db.unseen_faces(session)
        if not len(new.face_ids):
            return {"faces": 0, "assigned": 0, "pooled": 0, "identities_grown": 0}
        # The user's links first: a face must-linked with a member joins that identity.
        linked, forbidden, linked_into = _place_linked(session, new.face_ids, new.photo_ids)
        rest = np.flatnonzero(~linked)
        ids, medoids = db.identity_medoids(session)
        taken = db.photo_identities(session, new.photo_ids[rest]) if len(ids) else {}
        result = assign_faces(new.embeddings[rest], new.photo_ids[rest], medoids, policy.assign_threshold,
                              keys=ids.tolist(), taken=taken,
                              forbidden={number: forbidden[int(row)] for number, row in enumerate(rest) if int(row) in forbidden})
        session.add_all(
            db.AssignmentRow(face_id=int(face), identity_id=int(ids[choice]), similarity=float(sim), method="assign")
            for face, choice, sim in zip(new.face_ids[rest], result.choice, result.similarity) if choice >= 0
        )
        session.add_all(db.PoolFaceRow(face_id=int(face), reclustered=False) for face in new.face_ids[rest][result.pooled])
        session.flush()
        grown = sorted({int(ids[choice]) for choice in result.choice if choice >= 0} | linked_into)
        refresh_identities(session, grown, policy, at=now)
        report = {"faces": len(new.face_ids), "assigned": int((~result.pooled).sum()) + int(linked.sum()),
                  "pooled": int(result.pooled.sum()), "identities_grown": len(grown)}
        if linked.any():
            report["placed_by_links"] = int(linked.sum())
        session.add(db.LifecycleRunRow(kind="assign", at=now, details=report))
        return report


def recluster_pool(store, policy: Policy, *, now: datetime, force: bool = False) -> dict:
    """Step 2: re-cluster the unknown pool if it is due (or ``force``), in one transaction.

    Returns:
        ``due`` and the pool's size; when it ran, also ``clusters``, ``joined_faces``,
        ``new_identities``, ``assigned`` (placed one by one) and ``left_in_pool``.
    """
    from components.identities import store as db

    with store.session() as session:
        db.lock_lifecycle(session)  # one life-cycle writer at a time (concurrent batches)
        pool, seen = db.pool_matrix(session)
        fresh = int((~seen).sum())
        last = db.last_recluster_at(session)
        due = force or recluster_due(
            _seconds(now), None if last is None else _seconds(last), fresh, policy.recluster_every_s, policy.recluster_pool_size
        )
        report: dict = {"due": bool(due and len(pool.face_ids)), "pool": len(pool.face_ids), "fresh": fresh}
        if not report["due"]:
            return report
        # The user's links: must-linked faces join their partner's identity first; the
        # rest are clustered under the links, kept out of identities they are cannot-linked with.
        linked, forbidden, linked_into = _place_linked(session, pool.face_ids, pool.photo_ids)
        if linked.any():
            refresh_identities(session, linked_into, policy, at=now)
            rest = np.flatnonzero(~linked)
            forbidden = {number: forbidden[int(row)] for number, row in enumerate(rest) if int(row) in forbidden}
            pool = db.FaceMatrix(pool.face_ids[rest], pool.embeddings[rest], [pool.labels[row] for row in rest],
                                 pool.photo_ids[rest], pool.model_version)
        ids, medoids = db.identity_medoids(session)
        taken = db.photo_identities(session, pool.photo_ids) if len(ids) else {}
        plan = plan_pool(pool.embeddings, pool.photo_ids, medoids, policy, keys=ids.tolist(), taken=taken,
                         face_ids=pool.face_ids, links=db.links_in(session, pool.face_ids.tolist()), forbidden=forbidden)
        _apply_pool_plan(session, pool.face_ids, ids, plan, policy, now)
        report.update(
            clusters=int(len(np.unique(plan.labels))), joined_faces=int(((plan.joins >= 0) & (plan.method == "pool")).sum()),
            new_identities=len(plan.new_medoids), assigned=int((plan.method == "assign").sum()),
            left_in_pool=int(plan.stays.sum()),
        )
        if linked.any():
            report["placed_by_links"] = int(linked.sum())
        session.add(db.LifecycleRunRow(kind="pool", at=now, details=report))
        return report


def _apply_pool_plan(session, face_ids: np.ndarray, ids: np.ndarray, plan: PoolPlan, policy: Policy, now: datetime) -> None:
    """Write a :class:`PoolPlan`: new identities, assignments, what stays in the pool."""
    from sqlalchemy import delete, update

    from components.identities import store as db

    new_ids = []
    for group, centre in enumerate(plan.new_medoids):
        row = db.IdentityRow(medoid_face_id=int(face_ids[centre]), size=int((plan.new_group == group).sum()), updated_at=now)
        session.add(row)
        session.flush()
        new_ids.append(row.id)
    placed = ~plan.stays
    target = np.where(plan.joins >= 0, ids[np.maximum(plan.joins, 0)] if len(ids) else -1,
                      np.asarray(new_ids, np.int64)[np.maximum(plan.new_group, 0)] if new_ids else -1)
    session.execute(delete(db.PoolFaceRow).where(db.PoolFaceRow.face_id.in_([int(f) for f in face_ids[placed]])))
    session.add_all(
        db.AssignmentRow(face_id=int(face), identity_id=int(identity), similarity=float(sim), method=str(method))
        for face, identity, sim, method in zip(face_ids[placed], target[placed], plan.similarity[placed], plan.method[placed])
    )
    # Only the rows this re-clustering read: a face pooled meanwhile by a concurrent assign
    # (another batch) stays fresh, so the next re-clustering looks at it.
    kept = [int(f) for f in face_ids[~placed]]
    for start in range(0, len(kept), 500):
        session.execute(update(db.PoolFaceRow).where(db.PoolFaceRow.face_id.in_(kept[start : start + 500]))
                        .values(reclustered=True))
    session.flush()
    for group, identity in enumerate(new_ids):
        db.add_event(session, identity, "created", {"faces": int((plan.new_group == group).sum()), "by": "pool_recluster"},
                     now, "pipeline")
    grown = Counter(int(identity) for identity in target[placed & (plan.joins >= 0)])
    for identity, count in sorted(grown.items()):
        db.add_event(session, identity, "joined", {"faces": count, "by": "pool_recluster"}, now, "pipeline")
    refresh_identities(session, [*grown, *new_ids], policy, at=now)


def full_recluster(store, policy: Policy, *, now: datetime) -> dict:
    """Cluster every usable face at once and reconcile by majority overlap (one transaction).

    Faces in clusters too small for an identity are then assigned one by one, as
    after a pool re-clustering, and the rest go to the pool.

    Returns:
        Counts: ``faces``, ``clusters``, ``identities``, ``assigned``, ``left_in_pool``.
    """
    from sqlalchemy import delete

    from components.identities import store as db

    with store.session() as session:
        db.lock_lifecycle(session)  # one life-cycle writer at a time (concurrent batches)
        faces = db.usable_in(session)
        if not len(faces.face_ids):
            return {"faces": 0}
        x = as_embeddings(faces.embeddings)
        labels = cluster_faces(x, faces.photo_ids, policy)
        # The user's corrections outlive the clustering: must-linked clusters are joined,
        # cannot-linked faces split apart, before identities are matched by overlap.
        links = db.links_in(session)
        if links:
            labels = apply_links(labels, faces.face_ids, links.must, links.cannot, x)
        centres = {}
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            centres[int(label)] = int(members[medoid_row(x[members], policy.medoid_sample_above, [policy.seed, int(label)])])
        identity_of = db.replace_clustering_in(
            session, faces.face_ids, labels, x, centres, policy.min_identity_size, at=now, actor="pipeline"
        )
        session.flush()
        # Small clusters: one more chance, face by face, against the identities just made.
        left = np.flatnonzero(~np.isin(labels, list(identity_of)))
        linked, forbidden, linked_into = _place_linked(session, faces.face_ids[left], faces.photo_ids[left])
        if linked.any():
            refresh_identities(session, linked_into, policy, at=now)
            forbidden = {number: forbidden[int(row)] for number, row in enumerate(np.flatnonzero(~linked))
                         if int(row) in forbidden}
            left = left[~linked]
        ids, medoids = db.identity_medoids(session)
        assigned = int(linked.sum())
        if len(left) and len(ids):
            taken = db.photo_identities(session, faces.photo_ids[left])
            result = assign_faces(
                x[left], faces.photo_ids[left], medoids, policy.assign_threshold, keys=ids.tolist(), taken=taken,
                forbidden=forbidden,
            )
            chosen = result.choice >= 0
            placed = [int(face) for face in faces.face_ids[left][chosen]]
            if placed:
                session.execute(delete(db.PoolFaceRow).where(db.PoolFaceRow.face_id.in_(placed)))
                session.add_all(
                    db.AssignmentRow(face_id=face, identity_id=int(ids[choice]), similarity=float(sim), method="assign")
                    for face, choice, sim in zip(placed, result.choice[chosen], result.similarity[chosen])
                )
                session.flush()
                refresh_identities(session, {int(ids[choice]) for choice in result.choice[chosen]}, policy, at=now)
            assigned += len(placed)
        report = {"faces": len(faces.face_ids), "clusters": int(len(np.unique(labels))), "identities": len(identity_of),
                  "assigned": assigned, "left_in_pool": int(len(left) - assigned)}
        session.add(db.LifecycleRunRow(kind="full", at=now, details=report))
        return report


def update_identities(store, settings=None, *, policy: Policy | None = None, clock: Clock = utc_now,
                      full: bool = False, force_pool: bool = False) -> dict:
    """The identity step of ``faces run``: assign new faces, re-cluster the pool when due.

    Args:
        store: the :class:`~components.identities.store.IdentityStore`.
        settings: :class:`components.settings.Settings` (or give ``policy``).
        policy: the life-cycle numbers; default from ``settings``.
        clock: returns the time now (read once, so one update has one timestamp).
        full: re-cluster every usable face instead (names and ids survive by overlap).
        force_pool: re-cluster the pool even if it is not due.

    Returns:
        What happened: ``{"full": ...}`` or ``{"assign": ..., "pool": ...}``.
    """
    if policy is None:
        if settings is None:
            raise ValueError("give settings or a policy")
        policy = policy_for_store(store, settings)
    now = clock()
    if now.tzinfo is None:
        raise ValueError("the clock must return timezone-aware datetimes")
    if full:
        return {"full": full_recluster(store, policy, now=now)}
    return {"assign": assign_new(store, policy, now=now), "pool": recluster_pool(store, policy, now=now, force=force_pool)}


def switch_model(store, target, policy: Policy, *, now: datetime, actor: str = "reembed") -> dict:
    """The last step of a re-embed: move every face to the target model in one transaction.

    Every embedded face must have a staged vector for ``target`` (otherwise nothing
    changes and ``ReembedIncomplete`` says how many are missing). The staged vectors
    replace the old ones, every identity's medoid and members' similarities are
    recomputed under the new model, and ``target`` becomes the store's active model.
    Until this commits, everything reads the old model's embeddings.

    Args:
        store: the identity store.
        target: the :class:`~components.identities.store.StoreModel` re-embedded for.
        policy: the target model's policy (its thresholds; medoid sampling).
        now: time of the switch (audit trail).
        actor: who switched.

    Returns:
        ``faces`` moved, ``identities`` refreshed, and ``incoherent``: identities whose
        members no longer cohere under the new model (fewer than half of them at least
        ``assign_threshold`` similar to the new medoid), for a person to review.
    """
    from sqlalchemy import delete, func, select, update

    from components.identities import store as db

    with store.session() as session:
        db.lock_lifecycle(session)  # one life-cycle writer at a time (concurrent batches)
        # Photos being stored finish first and are counted below; those arriving meanwhile wait, then
        # find the new model active and are refused: no old-model face slips into the switched store.
        db.lock_store_model(session)
        missing = session.scalar(select(func.count()).select_from(db.FaceRow).where(*store._todo(target.version)))
        if missing:
            raise ReembedIncomplete(f"{missing} faces are not yet re-embedded for {target.version}")
        staged = session.execute(select(db.StagedEmbeddingRow.face_id, db.StagedEmbeddingRow.embedding)
                                 .where(db.StagedEmbeddingRow.model_version == target.version)).all()
        if staged:
            session.execute(update(db.FaceRow), [{"id": int(face), "embedding": vector, "model_version": target.version}
                                                 for face, vector in staged])
        session.execute(delete(db.StagedEmbeddingRow))
        identity_ids = list(session.scalars(select(db.IdentityRow.id).order_by(db.IdentityRow.id)))
        refresh_identities(session, identity_ids, policy, at=now, actor=actor)
        incoherent = []
        rows = session.execute(select(db.AssignmentRow.identity_id, db.AssignmentRow.similarity)).all()
        by_identity: dict[int, list[float]] = {}
        for identity, similarity in rows:
            by_identity.setdefault(int(identity), []).append(float(similarity))
        for identity, sims in sorted(by_identity.items()):
            share = float(np.mean(np.asarray(sims) >= policy.assign_threshold))
            if len(sims) > 1 and share < 0.5:
                incoherent.append({"identity": identity, "faces": len(sims), "share_cohering": round(share, 3)})
        for role in ("active", "target"):
            session.execute(delete(db.StoreModelRow).where(db.StoreModelRow.role == role))
        session.flush()
        session.add(db.StoreModelRow(role="active", version=target.version, registry_version=target.registry_version,
                                     source=target.source, thresholds=dict(target.thresholds), since=now))
        report = {"model_version": target.version, "registry_version": target.registry_version,
                  "faces": len(staged), "identities": len(identity_ids), "incoherent": incoherent}
        session.add(db.LifecycleRunRow(kind="reembed", at=now, details=report))
        return report


class ReembedIncomplete(RuntimeError):
    """The switch was asked for before every face had its new embedding."""
