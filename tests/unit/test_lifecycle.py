"""Unit tests for components.identities.lifecycle: the pure core, then the store wrappers on SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import select

from components.cluster import medoid_index
from components.identities import IdentityStore, NewFace
from components.identities import lifecycle
from components.identities.lifecycle import (
    Policy,
    as_embeddings,
    assign_faces,
    cluster_faces,
    enforce_cannot_link,
    false_accept_rate,
    medoid_row,
    plan_pool,
    recluster_due,
    reconcile_by_overlap,
    update_identities,
)
from components.identities.store import (
    AssignmentRow,
    IdentityEventRow,
    IdentityRow,
    LifecycleRunRow,
    PoolFaceRow,
)
from components.settings import load_settings

DIM = 32
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
# Synthetic people: centres far apart (random in 32-D), faces at noise 0.05 around them,
# so same-person similarity is about 0.96 and different-person about 0.
POLICY = Policy(assign_threshold=0.85, cluster_threshold=0.9, recluster_every_s=3600, recluster_pool_size=50)


def unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def people(n: int, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).normal(size=(n, DIM)))


def faces_of(centres: np.ndarray, groups, seed: int = 1, noise: float = 0.05) -> np.ndarray:
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    return unit(centres[groups] + rng.normal(scale=noise, size=(len(groups), DIM)))


def at(seconds: float):
    return lambda: T0 + timedelta(seconds=seconds)


# -- validation -----------------------------------------------------------------------------


def test_as_embeddings_normalises_and_keeps_empty():
    x = as_embeddings([[3.0, 4.0], [0.0, 2.0]])
    assert x.dtype == np.float32
    assert np.allclose(x, [[0.6, 0.8], [0.0, 1.0]])
    assert as_embeddings(np.empty((0, 5))).shape == (0, 5)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.array([[1.0, np.nan]]), "NaN"),
        (np.array([[1.0, np.inf]]), "NaN or infinite"),
        (np.zeros((2, 3)), "all zeros"),
        (np.ones(3), "shape"),
        (np.ones((2, 3, 4)), "shape"),
        ([["a", "b"]], "numeric"),
    ],
)
def test_as_embeddings_rejects_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        as_embeddings(bad)


def test_as_embeddings_rejects_the_wrong_dimension():
    with pytest.raises(ValueError, match="dimension 3 does not match the identities' 4"):
        as_embeddings(np.ones((2, 3)), dim=4)


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError, match="assign_threshold"):
        Policy(assign_threshold=1.5, cluster_threshold=0.9)
    with pytest.raises(ValueError, match="min_identity_size"):
        Policy(assign_threshold=0.9, cluster_threshold=0.9, min_identity_size=0)


def test_policy_thresholds_have_no_default():
    # They belong to the model whose embeddings are compared (Policy.from_settings, policy_for_store).
    with pytest.raises(TypeError, match="assign_threshold"):
        Policy(cluster_threshold=0.9)
    with pytest.raises(TypeError, match="cluster_threshold"):
        Policy(assign_threshold=0.9)


def test_policy_from_settings_reads_the_identities_and_cluster_sections():
    settings = load_settings()
    policy = Policy.from_settings(settings)
    assert policy.assign_threshold == settings.identities.assign_threshold
    assert policy.cluster_threshold == settings.cluster.threshold
    assert policy.min_identity_size == settings.cluster.min_identity_size


# -- medoids --------------------------------------------------------------------------------


def test_medoid_row_is_exact_below_the_sample_size():
    x = faces_of(people(1), np.zeros(40, int))
    assert medoid_row(x, sample_above=40) == medoid_index(x)


def test_sampled_medoid_is_a_member_reproducible_and_close_to_the_true_one():
    x = faces_of(people(1), np.zeros(600, int))
    exact = medoid_index(x)
    sampled = medoid_row(x, sample_above=100, seed=[0, 7])
    assert sampled == medoid_row(x, sample_above=100, seed=[0, 7])
    assert sampled != medoid_row(x, sample_above=100, seed=[0, 8]) or exact == sampled
    mean_similarity = x.astype(np.float64) @ x.astype(np.float64).mean(axis=0)
    # Only a sixth of the members are candidates, yet the sample's medoid is about as central.
    assert mean_similarity[sampled] >= mean_similarity[exact] - 0.01


def test_medoid_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="at least one member"):
        medoid_row(np.empty((0, 4)))


# -- assignment -----------------------------------------------------------------------------


def test_faces_join_the_most_similar_identity_above_the_threshold():
    centres = people(3)
    x = faces_of(centres, [2, 0, 1])
    stranger = people(1, seed=9)
    result = assign_faces(np.vstack([x, stranger]), [1, 2, 3, 4], centres, 0.85)
    assert result.choice.tolist() == [2, 0, 1, -1]
    assert result.pooled.tolist() == [False, False, False, True]
    assert np.allclose(result.similarity[:3], np.sum(x * centres[[2, 0, 1]], axis=1), atol=1e-6)
    assert np.isnan(result.similarity[3])
    assert result.best[3] < 0.85


def test_assignment_uses_the_given_keys_for_cannot_link():
    centres = people(2)
    x = faces_of(centres, [0])
    # Photo 7 already has a face in identity 10 (the best match): the face takes identity 20.
    close_to_both = unit(centres[0] + 0.9 * centres[1])[None]
    result = assign_faces(close_to_both, [7], centres, 0.5, keys=[10, 20], taken={7: {10}})
    assert result.choice.tolist() == [1]
    # Blocked everywhere above the threshold: the pool.
    result = assign_faces(x, [7], centres, 0.85, keys=[10, 20], taken={7: {10}})
    assert result.choice.tolist() == [-1]


def test_two_faces_of_one_photo_never_join_one_identity():
    centres = people(2)
    a = faces_of(centres, [0], seed=3)
    b = faces_of(centres, [0], seed=4)
    result = assign_faces(np.vstack([a, b]), [5, 5], centres, 0.85)
    sims = np.vstack([a, b]) @ centres[0]
    winner = int(np.argmax(sims))
    assert result.choice[winner] == 0
    assert result.choice[1 - winner] == -1  # identity 1 is too far, so the pool


def test_assignment_does_not_depend_on_the_order_of_the_batch():
    centres = people(4)
    groups = np.array([0, 0, 1, 2, 3, 3, 1, 0])
    x = faces_of(centres, groups, noise=0.3)
    photos = np.array([1, 1, 2, 2, 3, 4, 4, 5])
    first = assign_faces(x, photos, centres, 0.5)
    order = np.random.default_rng(0).permutation(len(x))
    second = assign_faces(x[order], photos[order], centres, 0.5)
    assert np.array_equal(first.choice[order], second.choice)


def test_assignment_with_no_faces_or_no_identities():
    centres = people(2)
    empty = assign_faces(np.empty((0, DIM)), [], centres, 0.9)
    assert empty.choice.shape == (0,)
    none = assign_faces(faces_of(centres, [0, 1]), [1, 2], np.empty((0, 0)), 0.9)
    assert none.choice.tolist() == [-1, -1]


@pytest.mark.parametrize(
    "faces, photos, message",
    [
        (np.full((1, DIM), np.nan), [1], "NaN"),
        (np.ones((1, DIM + 1)), [1], "dimension"),
        (np.ones((2, DIM)), [1], "photo_ids"),
    ],
)
def test_assignment_rejects_bad_input(faces, photos, message):
    with pytest.raises(ValueError, match=message):
        assign_faces(faces, photos, people(2), 0.9)


def test_assignment_considers_only_the_best_few_identities():
    centres = unit(np.vstack([people(1)[0] + 0.01 * k * people(12, seed=5)[k] for k in range(12)]))
    face = centres[:1]
    taken = {1: set(range(12))}  # photo 1 already in every identity
    assert assign_faces(face, [1], centres, 0.0, taken=taken).choice.tolist() == [-1]


# -- cannot-link ----------------------------------------------------------------------------


def test_enforce_cannot_link_splits_a_cluster_holding_two_faces_of_one_photo():
    centres = people(2)
    # One cluster that merged two people; faces 0 and 3 come from one group photo.
    x = faces_of(centres, [0, 0, 0, 1, 1])
    photos = np.array([10, 11, 12, 10, 13])
    labels = enforce_cannot_link(np.zeros(5, int), photos, x)
    assert labels[0] == labels[1] == labels[2] == 0  # the medoid side (the larger person) keeps label 0
    assert labels[3] == labels[4] == 1
    for photo in np.unique(photos):
        assert len(set(labels[photos == photo])) == (photos == photo).sum()


def test_enforce_cannot_link_leaves_clean_clusters_alone():
    x = faces_of(people(2), [0, 0, 1, 1])
    labels = np.array([3, 3, 5, 5])
    assert enforce_cannot_link(labels, [1, 2, 3, 4], x).tolist() == [3, 3, 5, 5]
    assert enforce_cannot_link([], [], np.empty((0, DIM))).shape == (0,)


def test_enforce_cannot_link_separates_every_face_of_one_photo_even_if_identical():
    x = np.tile(people(1), (4, 1))  # all-identical embeddings
    labels = enforce_cannot_link(np.zeros(4, int), [1, 1, 1, 1], x)
    assert sorted(labels.tolist()) == [0, 1, 2, 3]


def test_enforce_cannot_link_handles_several_conflicts_in_one_cluster():
    centres = people(3)
    groups = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    x = faces_of(centres, groups)
    photos = np.array([1, 2, 3, 1, 2, 4, 3, 5])  # photos 1, 2 and 3 each show two of the people
    labels = enforce_cannot_link(np.zeros(8, int), photos, x)
    for photo in np.unique(photos):
        assert len(set(labels[photos == photo])) == (photos == photo).sum()
    # and it splits along the people, not at random
    for group in range(3):
        assert len(set(labels[groups == group])) == 1


def test_enforce_cannot_link_checks_lengths():
    with pytest.raises(ValueError, match="photo_ids"):
        enforce_cannot_link([0, 0], [1], people(2))


def test_cluster_faces_finds_people_and_respects_photos():
    centres = people(3)
    groups = np.repeat([0, 1, 2], 4)
    x = faces_of(centres, groups)
    photos = np.arange(12)
    photos[4] = photos[0]  # a photo of persons 0 and 1 together: fine, they are apart anyway
    labels = cluster_faces(x, photos, POLICY)
    assert len(set(labels)) == 3
    for group in range(3):
        assert len(set(labels[groups == group])) == 1
    # Twins in one photo: nearly identical embeddings, but never one cluster.
    twins = np.vstack([x[:4], x[:1] + 1e-4])
    twin_labels = cluster_faces(twins, [0, 1, 2, 3, 0], POLICY)
    assert twin_labels[0] != twin_labels[4]


def test_cluster_faces_of_one_face_and_of_none():
    assert cluster_faces(people(1), [1], POLICY).tolist() == [0]
    assert cluster_faces(np.empty((0, DIM)), [], POLICY).shape == (0,)


# -- when the pool is re-clustered -----------------------------------------------------------


@pytest.mark.parametrize(
    "now, last, fresh, expected",
    [
        (0, None, 1, True),  # never clustered: the first run
        (0, None, 0, False),  # nothing waiting
        (100, 0, 5, False),  # inside the window, few faces
        (3600, 0, 5, True),  # window T has passed
        (100, 0, 50, True),  # N fresh faces
        (10_000, 0, 0, False),  # T passed but nothing new: re-clustering would change nothing
        (-50, 0, 5, False),  # the clock went backwards
    ],
)
def test_recluster_due(now, last, fresh, expected):
    assert recluster_due(now, last, fresh, every_s=3600, pool_size=50) is expected


# -- reconciling a pool clustering ------------------------------------------------------------


def test_pool_cluster_joins_a_matching_identity_or_becomes_a_new_one():
    centres = people(3)
    pool = faces_of(centres, [0, 0, 0, 2, 2, 2])
    plan = plan_pool(pool, np.arange(6), centres[:2], POLICY, keys=[101, 102])
    assert plan.joins[:3].tolist() == [0, 0, 0]  # person 0 = existing identity row 0
    assert (plan.new_group[:3] == -1).all()
    assert plan.new_group[3:].tolist() == [0, 0, 0] and len(plan.new_medoids) == 1
    assert set(plan.method) == {"pool"}
    assert not plan.stays.any()


def test_pool_members_whose_photo_the_identity_holds_stay_out():
    centres = people(2)
    pool = faces_of(centres, [0, 0, 0])
    plan = plan_pool(pool, [7, 8, 9], centres[:1], POLICY, keys=[55], taken={8: {55}})
    assert plan.joins.tolist() == [0, -1, 0]
    assert plan.stays.tolist() == [False, True, False]


def test_small_pool_clusters_get_a_second_chance_against_new_identities():
    centres = people(2)
    pool = np.vstack([faces_of(centres, [0, 0, 0]), faces_of(centres, [0], seed=8, noise=0.1)])
    # Faces 0-2 cluster (similarity about 0.94); face 3 is too far for an edge (about 0.82) ...
    policy = Policy(assign_threshold=0.8, cluster_threshold=0.93, min_identity_size=2)
    plan = plan_pool(pool, np.arange(4), np.empty((0, DIM)), policy)
    assert len(plan.new_medoids) == 1
    # ... but close enough to the new identity's medoid to join it on its own.
    assert plan.new_group.tolist() == [0, 0, 0, 0]
    assert plan.method.tolist() == ["pool", "pool", "pool", "assign"]


def test_pool_plan_with_one_face_and_with_identical_faces():
    single = plan_pool(people(1), [1], np.empty((0, 0)), POLICY)
    assert single.stays.tolist() == [True]
    same = plan_pool(np.tile(people(1), (3, 1)), [1, 2, 3], np.empty((0, 0)), POLICY)
    assert same.new_group.tolist() == [0, 0, 0]


# -- full re-clustering reconciliation ---------------------------------------------------------


def test_reconcile_by_overlap_keeps_ids_under_permutation_merge_and_split():
    previous = np.array([5, 5, 5, 7, 7, -1])
    same = reconcile_by_overlap(previous, [1, 1, 1, 0, 0, 2], 2)
    assert same.matched == {1: 5, 0: 7} and same.kept == [0, 1]
    merged = reconcile_by_overlap(previous, [0, 0, 0, 0, 0, 0], 2)
    assert merged.matched == {0: 5}  # the larger overlap wins; 7 is left over
    split = reconcile_by_overlap(np.array([5, 5, 5, 5, 5]), [0, 0, 0, 1, 1], 2)
    assert split.matched == {0: 5}


# -- false-accept rate ----------------------------------------------------------------------


def test_false_accept_rate():
    scores = np.array([0.95, 0.92, 0.5, 0.91, 0.8, 0.99])
    same = np.array([True, False, False, False, False, True])
    assert false_accept_rate(scores, same, 0.909) == pytest.approx(2 / 4)
    assert false_accept_rate(scores, same, 0.95) == 0.0
    assert false_accept_rate(scores, same.astype(int), 0.0) == 1.0


@pytest.mark.parametrize(
    "scores, same, message",
    [([0.5, 0.6], [True], "one length"), ([0.5, np.nan], [False, False], "NaN"), ([0.5], [True], "no different")],
)
def test_false_accept_rate_rejects_bad_input(scores, same, message):
    with pytest.raises(ValueError, match=message):
        false_accept_rate(scores, same, 0.9)


# -- the store wrappers ---------------------------------------------------------------------


def new_face(index: int, embedding) -> NewFace:
    return NewFace(face_index=index, box=(0.0, 0.0, 50.0, 50.0), landmarks=np.zeros((5, 2)), confidence=0.99, blur=1.0,
                   failures=[], embedding=embedding, model_version="test", crop_path=f"crops/{index}.jpg")


class Photos:
    """Adds photos to a store, one or more faces each, with distinct sha256 keys."""

    def __init__(self, store: IdentityStore):
        self.store = store
        self.count = 0

    def add(self, *embeddings) -> int:
        self.count += 1
        return self.store.add_image(f"{self.count:064x}", f"p{self.count}.jpg", (100, 100),
                                    [new_face(k, e) for k, e in enumerate(embeddings)], "v", None)

    def add_each(self, embeddings) -> None:
        for embedding in embeddings:
            self.add(embedding)


@pytest.fixture
def store(tmp_path) -> IdentityStore:
    return IdentityStore(f"sqlite:///{tmp_path / 'faces.db'}")


def snapshot(store: IdentityStore) -> dict:
    """Every row the life cycle may touch, as plain values."""
    with store.session() as session:
        return {
            "identities": sorted(tuple(r) for r in session.execute(select(IdentityRow.id, IdentityRow.name, IdentityRow.size,
                                                                        IdentityRow.medoid_face_id))),
            "assignments": sorted(tuple(r) for r in session.execute(select(AssignmentRow.face_id, AssignmentRow.identity_id,
                                                                         AssignmentRow.method))),
            "pool": sorted(tuple(r) for r in session.execute(select(PoolFaceRow.face_id, PoolFaceRow.reclustered))),
            "events": session.scalar(select(IdentityEventRow.id).order_by(IdentityEventRow.id.desc()).limit(1)),
            "runs": session.scalar(select(LifecycleRunRow.id).order_by(LifecycleRunRow.id.desc()).limit(1)),
        }


def members(store: IdentityStore) -> dict[int, set[int]]:
    result: dict[int, set[int]] = {}
    for face, identity in store.identity_of_faces().items():
        result.setdefault(identity, set()).add(face)
    return result


def test_first_update_clusters_everything_in_the_pool(store):
    centres = people(3)
    photos = Photos(store)
    photos.add_each(faces_of(centres, [0, 0, 0, 1, 1, 1, 1]))
    photos.add(people(1, seed=42)[0])  # a stranger seen once

    report = update_identities(store, policy=POLICY, clock=at(0))

    assert report["assign"] == {"faces": 8, "assigned": 0, "pooled": 8, "identities_grown": 0}
    assert report["pool"]["due"] and report["pool"]["new_identities"] == 2 and report["pool"]["left_in_pool"] == 1
    assert sorted(len(faces) for faces in members(store).values()) == [3, 4]
    assert store.pool_face_ids() == [8]
    assert [run["kind"] for run in store.lifecycle_runs()] == ["assign", "pool"]
    assert [event["action"] for event in store.events()] == ["created", "created"]


def test_new_faces_join_existing_identities_and_ids_stay(store):
    centres = people(3)
    photos = Photos(store)
    photos.add_each(faces_of(centres, [0, 0, 0, 1, 1, 1]))
    update_identities(store, policy=POLICY, clock=at(0))
    before = members(store)

    photos.add_each(faces_of(centres, [1, 0, 2], seed=5))
    report = update_identities(store, policy=POLICY, clock=at(60))

    assert report["assign"] == {"faces": 3, "assigned": 2, "pooled": 1, "identities_grown": 2}
    assert report["pool"] == {"due": False, "pool": 1, "fresh": 1}  # one fresh face, window not over
    after = members(store)
    assert set(after) == set(before)
    for identity, faces in before.items():
        assert faces < after[identity]
    assert store.pool_face_ids() == [9]
    methods = {face: method for face, _, method in snapshot(store)["assignments"]}
    assert methods[7] == methods[8] == "assign"


def test_medoids_are_true_medoids_after_assignment(store):
    centres = people(2)
    photos = Photos(store)
    photos.add_each(faces_of(centres, [0, 0, 0, 0]))
    update_identities(store, policy=POLICY, clock=at(0))
    photos.add_each(faces_of(centres, [0, 0, 0], seed=11, noise=0.02))
    update_identities(store, policy=POLICY, clock=at(10))

    matrix = store.usable_faces()
    (identity, faces), = members(store).items()
    rows = np.flatnonzero(np.isin(matrix.face_ids, sorted(faces)))
    expected = int(matrix.face_ids[rows[medoid_index(matrix.embeddings[rows])]])
    with store.session() as session:
        row = session.get(IdentityRow, identity)
        assert (row.medoid_face_id, row.size) == (expected, 7)
        similarity = session.scalar(select(AssignmentRow.similarity).where(AssignmentRow.face_id == expected))
    assert similarity == pytest.approx(1.0, abs=1e-5)


def test_the_pool_is_reclustered_after_window_t_or_n_faces(store):
    centres = people(4)
    photos = Photos(store)
    photos.add_each(faces_of(centres, [0, 0, 0]))
    update_identities(store, policy=POLICY, clock=at(0))

    photos.add_each(faces_of(centres, [1, 1, 1], seed=2))  # a new person: pool, not yet due
    assert update_identities(store, policy=POLICY, clock=at(100))["pool"]["due"] is False
    assert len(store.pool_face_ids()) == 3
    report = update_identities(store, policy=POLICY, clock=at(3600))["pool"]
    assert report["due"] and report["new_identities"] == 1
    assert store.pool_face_ids() == []

    small_n = Policy(**{**POLICY.__dict__, "recluster_pool_size": 3})
    photos.add_each(faces_of(centres, [2, 2, 2], seed=3))
    assert update_identities(store, policy=small_n, clock=at(3700))["pool"]["new_identities"] == 1


def test_update_with_nothing_new_changes_nothing(store):
    centres = people(2)
    photos = Photos(store)
    photos.add_each(faces_of(centres, [0, 0, 1, 1]))
    photos.add(people(1, seed=77)[0])
    update_identities(store, policy=POLICY, clock=at(0))
    before = snapshot(store)

    report = update_identities(store, policy=POLICY, clock=at(10 * 3600))  # even long after: nothing fresh

    assert report["assign"]["faces"] == 0 and report["pool"]["due"] is False
    assert snapshot(store) == before  # not even a run is recorded


def test_a_pool_cluster_matching_an_identity_joins_it(store):
    centres = people(2)
    photos = Photos(store)
    photos.add_each(faces_of(centres, [0, 0, 0]))
    update_identities(store, policy=POLICY, clock=at(0))
    (identity,) = members(store)

    photos.add_each(faces_of(centres, [0, 0], seed=4))
    strict = Policy(**{**POLICY.__dict__, "assign_threshold": 0.999})  # nobody passes on arrival ...
    lifecycle.assign_new(store, strict, now=T0)
    assert len(store.pool_face_ids()) == 2
    report = lifecycle.recluster_pool(store, POLICY, now=T0 + timedelta(hours=2))  # ... but the cluster matches
    assert report["joined_faces"] == 2 and report["new_identities"] == 0
    assert len(members(store)[identity]) == 5
    assert store.events(identity)[-1]["action"] == "joined"


def test_faces_of_one_photo_never_share_an_identity_in_the_store(store):
    centres = people(2)
    photos = Photos(store)
    look_alikes = faces_of(centres, [0, 0, 0, 0, 0, 0], seed=6)
    photos.add(look_alikes[0], look_alikes[1])  # one photo, two (near-identical) faces
    photos.add_each(look_alikes[2:4])
    update_identities(store, policy=POLICY, clock=at(0))
    photos.add(look_alikes[4], look_alikes[5])
    update_identities(store, policy=POLICY, clock=at(7200))

    with store.session() as session:
        from components.identities.store import FaceRow

        rows = session.execute(select(FaceRow.image_id, AssignmentRow.identity_id)
                               .join(AssignmentRow, AssignmentRow.face_id == FaceRow.id)).all()
    pairs = [(photo, identity) for photo, identity in rows]
    assert len(pairs) == len(set(pairs))


def test_full_recluster_keeps_ids_and_names(store):
    centres = people(2)
    photos = Photos(store)
    photos.add_each(faces_of(centres, [0, 0, 0, 1, 1, 1]))
    update_identities(store, policy=POLICY, clock=at(0))
    ids = sorted(members(store))
    from components.identities import operations

    operations.rename(store, ids[0], "Ada", clock=at(1))
    before = members(store)

    report = update_identities(store, policy=POLICY, clock=at(2), full=True)

    assert report["full"]["identities"] == 2
    assert members(store) == before
    assert {item["id"]: item["name"] for item in store.identity_list()}[ids[0]] == "Ada"


def test_full_recluster_moves_the_name_of_a_merged_identity(store):
    centres = people(2)
    close = unit(centres[0] + 0.35 * centres[1])  # a second "person" close to the first
    photos = Photos(store)
    photos.add_each(faces_of(centres, [0, 0, 0, 0], noise=0.01))
    photos.add_each(faces_of(close[None], [0, 0, 0], noise=0.01, seed=3))
    update_identities(store, policy=Policy(assign_threshold=0.99, cluster_threshold=0.99), clock=at(0))
    big, small = sorted(members(store), key=lambda identity: -len(members(store)[identity]))
    from components.identities import operations

    operations.rename(store, small, "Grace", clock=at(1))

    update_identities(store, policy=Policy(assign_threshold=0.5, cluster_threshold=0.5), clock=at(2), full=True)

    listed = store.identity_list()
    assert [(item["id"], item["name"], item["size"]) for item in listed] == [(big, "Grace", 7)]
    actions = [(event["identity_id"], event["action"]) for event in store.events()]
    assert (big, "renamed") in actions and (small, "removed") in actions


def test_identity_ids_are_never_reused(store, tmp_path):
    centres = people(3)
    photos = Photos(store)
    photos.add_each(faces_of(centres, [0, 0, 1, 1]))
    update_identities(store, policy=POLICY, clock=at(0))
    from components.identities import operations

    newest = max(members(store))
    operations.delete_identity(store, newest, crops_root=tmp_path, clock=at(1))
    photos.add_each(faces_of(centres, [2, 2], seed=9))
    update_identities(store, policy=POLICY, clock=at(7200))
    assert newest not in members(store)
    assert max(members(store)) > newest


def test_an_interrupted_pool_reclustering_leaves_the_store_unchanged(store, monkeypatch):
    centres = people(3)
    photos = Photos(store)
    photos.add_each(faces_of(centres, [0, 0, 0]))
    update_identities(store, policy=POLICY, clock=at(0))
    photos.add_each(faces_of(centres, [1, 1, 1, 0], seed=7))
    lifecycle.assign_new(store, POLICY, now=T0)
    before = snapshot(store)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    # Fails after identities were created and assignments written, before the commit.
    monkeypatch.setattr(lifecycle, "refresh_identities", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        lifecycle.recluster_pool(store, POLICY, now=T0 + timedelta(hours=2))

    assert snapshot(store) == before
    monkeypatch.undo()
    assert lifecycle.recluster_pool(store, POLICY, now=T0 + timedelta(hours=2))["new_identities"] == 1


def test_an_interrupted_full_reclustering_leaves_the_store_unchanged(store, monkeypatch):
    centres = people(2)
    photos = Photos(store)
    photos.add_each(faces_of(centres, [0, 0, 0, 1, 1]))
    photos.add(people(1, seed=99)[0])
    update_identities(store, policy=POLICY, clock=at(0))
    before = snapshot(store)

    def broken(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(lifecycle, "assign_faces", broken)  # runs after replace_clustering_in wrote everything
    with pytest.raises(RuntimeError, match="killed"):
        update_identities(store, policy=POLICY, clock=at(5), full=True)
    assert snapshot(store) == before


def test_the_clock_must_be_timezone_aware(store):
    with pytest.raises(ValueError, match="timezone-aware"):
        update_identities(store, policy=POLICY, clock=lambda: datetime(2024, 1, 1))


def test_embeddings_of_another_size_are_a_clear_error(store):
    photos = Photos(store)
    photos.add(people(1)[0])
    photos.add(unit(np.ones(DIM + 8)))
    with pytest.raises(ValueError, match="different sizes"):
        update_identities(store, policy=POLICY, clock=at(0))


def test_an_empty_store_is_a_no_op(store):
    report = update_identities(store, policy=POLICY, clock=at(0))
    assert report == {"assign": {"faces": 0, "assigned": 0, "pooled": 0, "identities_grown": 0},
                      "pool": {"due": False, "pool": 0, "fresh": 0}}
    assert update_identities(store, policy=POLICY, clock=at(0), full=True) == {"full": {"faces": 0}}


# -- the life cycle in memory (for the benchmark) -------------------------------------------------

from components.identities.stream import simulate_stream  # noqa: E402


def stream_data(seed: int = 0):
    centres = people(6, seed=seed)
    groups = np.random.default_rng(seed).integers(0, 6, size=240)
    return faces_of(centres, groups, seed=seed + 1), groups


def test_simulate_stream_finds_the_people_and_keeps_ids_stable():
    x, groups = stream_data()
    result = simulate_stream(x, None, n_batches=12, policy=POLICY, batch_interval_s=900)
    labels = np.array(result["labels"])
    assert len(labels) == len(x) and result["n_faces"] == len(x)
    assert result["n_identities"] == 6 and result["pool_size"] == 0
    for group in range(6):
        assert len(set(labels[groups == group])) == 1
    # Assigned faces never move in the life cycle.
    assert result["stability"]["changed_share_max"] == 0.0
    assert result["stability"]["comparisons"] == len(result["reclusterings"]) - 1 >= 1
    assert result["assigned_on_arrival"] > len(x) / 2
    assert json_safe(result)


def json_safe(value) -> bool:
    import json

    json.dumps(value)
    return True


def test_simulate_stream_recluster_all_mode_is_the_baseline():
    x, groups = stream_data(1)
    result = simulate_stream(x, np.arange(len(x)), n_batches=6, policy=Policy(**{**POLICY.__dict__, "recluster_every_s": 0}),
                             mode="recluster_all")
    assert result["mode"] == "recluster_all" and len(result["reclusterings"]) == 6
    assert result["assigned_on_arrival"] == 0
    labels = np.array(result["labels"])
    for group in range(6):
        assert len(set(labels[groups == group])) == 1
    assert result["stability"]["changed_share_mean"] is not None


def test_simulate_stream_is_deterministic_and_pool_faces_are_singletons():
    x, _ = stream_data(2)
    strangers = people(5, seed=123)
    data = np.vstack([x, strangers])
    first = simulate_stream(data, None, n_batches=5, policy=POLICY)
    second = simulate_stream(data, None, n_batches=5, policy=POLICY)
    assert {k: v for k, v in first.items() if k != "seconds"} == {k: v for k, v in second.items() if k != "seconds"}
    labels = np.array(first["labels"])
    assert first["pool_size"] == 5
    assert len(set(labels[-5:])) == 5 and not set(labels[-5:]) & set(labels[:-5])
    assert first["identity"][-5:] == [-1] * 5


def test_simulate_stream_respects_cannot_link():
    x = np.tile(people(1), (6, 1))  # all-identical embeddings
    result = simulate_stream(x, [1, 1, 2, 2, 3, 3], n_batches=2, policy=POLICY)
    identity = np.array(result["identity"])
    for photo in (1, 2, 3):
        pair = identity[np.array([1, 1, 2, 2, 3, 3]) == photo]
        assert pair[0] != pair[1] or pair[0] == -1


def test_simulate_stream_without_a_policy_takes_params_yaml():
    x, _ = stream_data(2)
    settings = load_settings()

    def run(**kwargs) -> dict:
        return {k: v for k, v in simulate_stream(x, None, n_batches=5, **kwargs).items() if k != "seconds"}

    expected = run(policy=Policy.from_settings(settings))
    assert run() == expected
    assert run(settings=settings) == expected


def test_simulate_stream_with_one_face():
    result = simulate_stream(people(1), [0], n_batches=20, policy=POLICY)
    assert result["labels"] == [0] and result["identity"] == [-1] and result["pool_size"] == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"embeddings": np.empty((0, DIM))}, "at least one face"),
        ({"embeddings": np.full((3, DIM), np.nan)}, "NaN"),
        ({"embeddings": np.ones(DIM)}, "shape"),
        ({"embeddings": np.ones((3, DIM)), "photo_ids": [1, 2]}, "photo_ids"),
        ({"embeddings": np.ones((3, DIM)), "n_batches": 0}, "n_batches"),
        ({"embeddings": np.ones((3, DIM)), "mode": "magic"}, "mode"),
    ],
)
def test_simulate_stream_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        simulate_stream(**kwargs)
