"""The identity life cycle in memory, batch by batch: for benchmarks, no database.

:func:`simulate_stream` feeds faces in batches through the same pure core as the
store (:mod:`components.identities.lifecycle`): assignment to identity medoids,
the unknown pool, re-clustering when due, medoid updates. It reports the final
labels and how stable identity ids stayed, so a benchmark can set it beside a
one-shot clustering of all faces, or beside re-clustering everything each time
(``mode="recluster_all"``, what ``faces run`` did before the life cycle).
"""

from __future__ import annotations

import time

import numpy as np

from components.identities.lifecycle import (
    Policy,
    as_embeddings,
    assign_faces,
    cluster_faces,
    medoid_row,
    plan_pool,
    recluster_due,
    reconcile_by_overlap,
)
from components.settings import load_settings

MODES = ("lifecycle", "recluster_all")


class _Identities:
    """Identities in memory: members, medoid rows, and which photos each holds."""

    def __init__(self, x: np.ndarray, photos: np.ndarray, policy: Policy):
        self.x, self.photos, self.policy = x, photos, policy
        self.identity = np.full(len(x), -1, np.int64)  # -1: in the pool or not seen yet
        self.members: dict[int, list[int]] = {}
        self.medoid: dict[int, int] = {}
        self.taken: dict = {}  # photo -> identities holding a face of it
        self.next_id = 0

    def keys_and_medoids(self) -> tuple[list[int], np.ndarray]:
        keys = sorted(self.medoid)
        return keys, self.x[[self.medoid[key] for key in keys]] if keys else np.empty((0, self.x.shape[1]), np.float32)

    def new(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def join(self, row: int, identity: int) -> None:
        self.identity[row] = identity
        self.members.setdefault(identity, []).append(int(row))
        self.taken.setdefault(self.photos[row].item(), set()).add(identity)

    def refresh(self, identities) -> None:
        for identity in set(identities):
            rows = np.array(sorted(self.members[identity]))
            centre = medoid_row(self.x[rows], self.policy.medoid_sample_above, [self.policy.seed, identity])
            self.medoid[identity] = int(rows[centre])

    def reset(self, identity: np.ndarray) -> None:
        """Replace every membership at once (after re-clustering everything)."""
        self.identity = identity.copy()
        self.members, self.taken, self.medoid = {}, {}, {}
        for row in np.flatnonzero(identity >= 0):
            self.members.setdefault(int(identity[row]), []).append(int(row))
            self.taken.setdefault(self.photos[row].item(), set()).add(int(identity[row]))
        self.refresh(self.members)


def _changed_share(before: np.ndarray, after: np.ndarray) -> float | None:
    """Share of faces that had an identity before and hold a different one (or none) after."""
    had = before >= 0
    if not had.any():
        return None
    return float((after[had] != before[had]).mean())


def simulate_stream(
    embeddings, photo_ids=None, n_batches: int = 20, *, settings=None, policy: Policy | None = None,
    batch_interval_s: float = 600.0, mode: str = "lifecycle", final_recluster: bool = True,
) -> dict:
    """Feed faces in batches through the identity life cycle, in memory.

    Batch b arrives at time ``b * batch_interval_s``; after each batch the pool is
    re-clustered when due (:func:`~components.identities.lifecycle.recluster_due`).

    Args:
        embeddings: (N, D) embeddings, fed in this order (shuffle first for a random stream).
        photo_ids: (N,) photo of each face (cannot-link); default: one photo per face.
        n_batches: how many batches (``np.array_split``: sizes differ by at most one).
        settings: :class:`components.settings.Settings` to take the policy from.
        policy: the life-cycle numbers (default: from ``settings``, else from ``params.yaml``;
            both with the local model's thresholds).
        batch_interval_s: simulated seconds between batches (window T counts these).
        mode: ``lifecycle`` (assign, pool, re-cluster the pool) or ``recluster_all``
            (new faces wait; when due, all faces seen so far are clustered again and
            reconciled with the previous identities by overlap).
        final_recluster: re-cluster once more after the last batch if fresh faces
            wait in the pool, so no face is left only because the stream stopped.

    Returns:
        A JSON-ready dict: ``labels`` (N ints: identity id, pool faces as singletons
        numbered after the identities), ``identity`` (N ints, -1 = pool),
        ``n_identities``, ``pool_size``, ``assigned_on_arrival`` (faces that joined an
        identity straight away), ``reclusterings`` (one entry per re-clustering: batch,
        time, faces seen, pool size before, identities after, ``changed_share``),
        ``stability`` (``changed_share_mean`` / ``_max`` over consecutive
        re-clusterings: the share of faces holding an identity at one re-clustering
        whose identity id differs at the next, losing it included; ``None`` when there
        was nothing to compare) and ``seconds`` (assign, recluster).

    Raises:
        ValueError: no faces, bad embeddings (NaN, wrong shape, zero rows), photo ids
            of the wrong length, ``n_batches < 1`` or an unknown mode.
    """
    x = as_embeddings(embeddings)
    n = len(x)
    if n == 0:
        raise ValueError("simulate_stream needs at least one face")
    photos = np.arange(n) if photo_ids is None else np.asarray(photo_ids)
    if photos.shape != (n,):
        raise ValueError(f"photo_ids: expected {n} values, got shape {photos.shape}")
    if n_batches < 1:
        raise ValueError(f"n_batches must be at least 1; got {n_batches}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if batch_interval_s < 0:
        raise ValueError(f"batch_interval_s must be >= 0; got {batch_interval_s}")
    if policy is None:
        policy = Policy.from_settings(settings if settings is not None else load_settings())

    state = _Identities(x, photos, policy)
    seen = np.zeros(n, bool)
    in_pool = np.zeros(n, bool)
    fresh = np.zeros(n, bool)
    last: float | None = None
    seconds = {"assign": 0.0, "recluster": 0.0}
    assigned_on_arrival = 0
    reclusterings: list[dict] = []
    previous_snapshot: np.ndarray | None = None

    def recluster(batch: int, now: float) -> None:
        nonlocal last, previous_snapshot
        started = time.perf_counter()
        pool_before = int(in_pool.sum())
        if mode == "lifecycle":
            rows = np.flatnonzero(in_pool)
            keys, medoids = state.keys_and_medoids()
            plan = plan_pool(x[rows], photos[rows], medoids, policy, keys=keys, taken=state.taken)
            new_ids = [state.new() for _ in plan.new_medoids]
            touched = set()
            for row, join, group in zip(rows, plan.joins, plan.new_group):
                if join >= 0:
                    state.join(row, keys[join])
                    touched.add(keys[join])
                elif group >= 0:
                    state.join(row, new_ids[group])
                    touched.add(new_ids[group])
                else:
                    continue
                in_pool[row] = False
            state.refresh(touched)
        else:
            rows = np.flatnonzero(seen)
            labels = cluster_faces(x[rows], photos[rows], policy)
            plan = reconcile_by_overlap(state.identity[rows], labels, policy.min_identity_size)
            identity_of = dict(plan.matched)
            for label in plan.kept:
                if label not in identity_of:
                    identity_of[label] = state.new()
            identity = np.full(n, -1, np.int64)
            identity[rows] = [identity_of.get(int(label), -1) for label in labels]
            state.reset(identity)
            in_pool[:] = seen & (identity < 0)
        fresh[:] = False
        last = now
        seconds["recluster"] += time.perf_counter() - started
        snapshot = state.identity.copy()
        reclusterings.append({
            "batch": batch, "at_s": now, "faces_seen": int(seen.sum()), "pool_before": pool_before,
            "pool_after": int(in_pool.sum()), "identities": len(state.members),
            "changed_share": None if previous_snapshot is None else _changed_share(previous_snapshot, snapshot),
        })
        previous_snapshot = snapshot

    batches = np.array_split(np.arange(n), n_batches)
    for batch, rows in enumerate(batches):
        now = batch * batch_interval_s
        seen[rows] = True
        started = time.perf_counter()
        if mode == "lifecycle" and len(rows):
            keys, medoids = state.keys_and_medoids()
            result = assign_faces(x[rows], photos[rows], medoids, policy.assign_threshold, keys=keys, taken=state.taken)
            grown = set()
            for row, choice in zip(rows, result.choice):
                if choice >= 0:
                    state.join(row, keys[choice])
                    grown.add(keys[choice])
            state.refresh(grown)
            assigned_on_arrival += int((result.choice >= 0).sum())
            pooled = rows[result.choice < 0]
        else:
            pooled = rows
        in_pool[pooled] = True
        fresh[pooled] = True
        seconds["assign"] += time.perf_counter() - started
        if recluster_due(now, last, int(fresh.sum()), policy.recluster_every_s, policy.recluster_pool_size):
            recluster(batch, now)
    if final_recluster and fresh.any():
        recluster(len(batches) - 1, (len(batches) - 1) * batch_interval_s)

    identity = state.identity
    labels = identity.copy()
    pool_rows = np.flatnonzero(labels < 0)
    labels[pool_rows] = state.next_id + np.arange(len(pool_rows))
    shares = [item["changed_share"] for item in reclusterings if item["changed_share"] is not None]
    return {
        "mode": mode,
        "n_faces": n,
        "n_batches": n_batches,
        "labels": labels.tolist(),
        "identity": identity.tolist(),
        "n_identities": len(state.members),
        "pool_size": int(len(pool_rows)),
        "assigned_on_arrival": assigned_on_arrival,
        "reclusterings": reclusterings,
        "stability": {
            "changed_share_mean": float(np.mean(shares)) if shares else None,
            "changed_share_max": float(np.max(shares)) if shares else None,
            "comparisons": len(shares),
        },
        "seconds": {key: round(value, 4) for key, value in seconds.items()},
        "policy": {key: getattr(policy, key) for key in policy.__dataclass_fields__},
    }
