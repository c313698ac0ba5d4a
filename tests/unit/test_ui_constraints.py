"""Corrections as constraints: face links honoured by clustering, assignment and re-clustering.

Each test also shows the opposite: without the link, the life cycle would do what the
user corrected (so the assertions can fail).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from components.identities import IdentityStore, NewFace
from components.identities.lifecycle import Policy, apply_links, assign_faces, link_targets, update_identities
from components.identities.store import Links
from components.ui import corrections

DIM = 16
T0 = datetime(2024, 7, 1, tzinfo=UTC)
POLICY = Policy(assign_threshold=0.85, cluster_threshold=0.9, recluster_pool_size=1)


def unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def people(rng, sizes, scale=0.04):
    centres = unit(rng.normal(size=(len(sizes), DIM)))
    vectors = np.concatenate([unit(centres[p] + rng.normal(scale=scale, size=(n, DIM))) for p, n in enumerate(sizes)])
    labels = np.concatenate([[p] * n for p, n in enumerate(sizes)])
    return vectors, labels


def test_apply_links_joins_must_linked_clusters_and_splits_cannot_linked_faces():
    x, truth = people(np.random.default_rng(0), [4, 3])
    ids = np.arange(100, 107)
    assert apply_links(truth, ids, [], [], x).tolist() == truth.tolist()
    joined = apply_links(truth, ids, [(100, 105)], [], x)
    assert len(set(joined.tolist())) == 1
    # The clustering put face 104 (the second person) with the first: "not this person" takes it out alone.
    wrong = np.array([0, 0, 0, 0, 0, 1, 1])
    split = apply_links(wrong, ids, [], [(104, 100)], x)
    assert split[4] not in split[:4] and len(set(split[:4].tolist())) == 1 and split[5:].tolist() == [1, 1]
    # Must wins inside a unit: a cannot-link between faces joined by must-links is ignored.
    assert len(set(apply_links(truth, ids, [(100, 101)], [(100, 101)], x)[:4].tolist())) == 1


def test_link_targets_and_assignment_keep_a_face_out_of_a_forbidden_identity():
    links = Links(must=[(1, 10)], cannot=[(2, 20)])
    forbidden, required = link_targets(np.array([1, 2, 3]), links, {10: 7, 20: 8})
    assert forbidden == {1: {8}} and required == {0: 7}
    x, _ = people(np.random.default_rng(1), [3])
    medoids = x[:1]
    free = assign_faces(x[1:], [1, 2], medoids, 0.85, keys=[8])
    assert free.choice.tolist() == [0, 0]
    blocked = assign_faces(x[1:], [1, 2], medoids, 0.85, keys=[8], forbidden={0: {8}})
    assert blocked.choice.tolist() == [-1, 0]


def build(tmp_path, sizes, seed=0) -> tuple[IdentityStore, dict[int, list[int]]]:
    store = IdentityStore(f"sqlite:///{tmp_path / 'faces.db'}")
    x, truth = people(np.random.default_rng(seed), sizes)
    for number, vector in enumerate(x):
        face = NewFace(face_index=0, box=(0.0, 0.0, 9.0, 9.0), landmarks=np.zeros((5, 2)), confidence=0.99, blur=1.0,
                       failures=[], embedding=vector, model_version="test", crop_path=None)
        store.add_image(f"{uuid.uuid4().hex}{number:032x}", f"{number}.jpg", (99, 99), [face], "v", None)
    update_identities(store, policy=POLICY, clock=lambda: T0)
    faces = store.usable_faces().face_ids
    return store, {p: [int(f) for f, t in zip(faces, truth) if t == p] for p in range(len(sizes))}


def owner_sets(store, groups):
    owners = store.identity_of_faces()
    return {p: {owners.get(f) for f in faces} for p, faces in groups.items()}


@pytest.mark.parametrize("with_links", [True, False])
def test_a_merge_and_a_not_this_person_survive_a_full_recluster(tmp_path, with_links):
    store, groups = build(tmp_path, [5, 4])
    owners = store.identity_of_faces()
    a, b = owners[groups[0][0]], owners[groups[1][0]]
    corrections.merge(store, a, [b], actor="t", policy=POLICY)
    doubted = groups[0][1]
    corrections.not_this_person(store, doubted, actor="t", policy=POLICY)
    if not with_links:
        with store.session() as session:
            from components.identities import store as db

            session.execute(db.FaceLinkRow.__table__.delete())
    update_identities(store, policy=POLICY, clock=lambda: T0 + timedelta(hours=1), full=True)
    owners = store.identity_of_faces()
    kept_together = len({owners.get(f) for f in groups[0] + groups[1] if f != doubted}) == 1
    doubted_apart = owners.get(doubted) != owners.get(groups[0][0])
    assert kept_together is with_links and doubted_apart is with_links


def test_pool_reclustering_and_assignment_honour_the_links(tmp_path):
    store, groups = build(tmp_path, [5])
    identity = store.identity_of_faces()[groups[0][0]]
    doubted = groups[0][2]
    corrections.not_this_person(store, doubted, actor="t", policy=POLICY)
    report = update_identities(store, policy=POLICY, clock=lambda: T0 + timedelta(hours=2), force_pool=True)
    assert report["pool"]["due"] and doubted in store.pool_face_ids(), "the pool stays out of the forbidden identity"
    # A new photo of the doubted face's look (its twin) may join; the doubted face itself may not.
    assert store.identity_of_faces().get(doubted) is None and identity in set(store.identity_of_faces().values())


def test_constraints_export_groups_for_retraining(tmp_path):
    store, groups = build(tmp_path, [3, 3, 2])
    owners = store.identity_of_faces()
    a, b = owners[groups[0][0]], owners[groups[1][0]]
    corrections.merge(store, a, [b], actor="t", policy=POLICY)
    corrections.not_this_person(store, groups[0][0], actor="t", policy=POLICY)
    exported = store.constraints()
    assert exported["model_version"] == "test"
    assert len({exported["groups"][f] for f in groups[1]}) == 1, "the merged faces are one label group"
    assert any(groups[0][0] in pair for pair in exported["cannot_link"])


def test_command_line_merge_and_split_are_kept_as_links_too(tmp_path):
    from components.identities import operations

    store, groups = build(tmp_path, [5, 4, 4])
    owners = store.identity_of_faces()
    a, b, c = (owners[groups[p][0]] for p in range(3))
    operations.merge(store, a, [b], actor="cli", policy=POLICY)
    operations.split(store, c, groups[2][:2], actor="cli", policy=POLICY)
    update_identities(store, policy=POLICY, clock=lambda: T0 + timedelta(hours=3), full=True)
    owners = store.identity_of_faces()
    assert len({owners.get(f) for f in groups[0] + groups[1]}) == 1
    assert len({owners.get(f) for f in groups[2][:2]}) == 1
    assert owners.get(groups[2][0]) != owners.get(groups[2][3])
