"""Unit tests for components.identities.store on a throwaway SQLite file."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from components.cluster import medoids
from components.identities import IdentityStore, NewFace
from components.identities.store import AssignmentRow, IdentityRow

DIM = 128


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def new_face(index: int = 0, embedding: np.ndarray | None = None, failures: list[str] | None = None,
             label: str | None = None) -> NewFace:
    return NewFace(
        face_index=index,
        box=(10.0 + index, 20.0, 80.0, 90.0),
        landmarks=np.array([[40.123, 50.0], [70.0, 50.0], [55.0, 65.0], [45.0, 80.0], [68.0, 80.0]]),
        confidence=0.999,
        blur=120.0,
        failures=failures or [],
        embedding=embedding,
        model_version=None if embedding is None else "test-model",
        crop_path=f"crops/{index}.png",
        label=label,
    )


@pytest.fixture
def store(tmp_path) -> IdentityStore:
    return IdentityStore(f"sqlite:///{tmp_path / 'faces.db'}")


# -- ingest ----------------------------------------------------------------------------------


def test_same_sha256_is_stored_once(store):
    rng = np.random.default_rng(0)
    faces = [new_face(0, unit(rng.normal(size=DIM))), new_face(1, unit(rng.normal(size=DIM)))]
    first = store.add_image("a" * 64, "photos/one.jpg", (640, 480), faces, "mtcnn-1.0", "Alice")
    counts = store.counts()

    second = store.add_image("a" * 64, "elsewhere/copy.jpg", (640, 480), faces[:1], "mtcnn-1.0", None)

    assert second == first
    assert store.counts() == counts
    assert counts["images"] == 1 and counts["faces"] == 2 and counts["usable_faces"] == 2
    stored = store.find_image("a" * 64)
    assert (stored.path, stored.width, stored.height, stored.label) == ("photos/one.jpg", 640, 480, "Alice")
    assert store.find_image("b" * 64) is None


def test_embeddings_round_trip_bit_exactly(store):
    rng = np.random.default_rng(1)
    vectors = unit(rng.normal(size=(3, DIM)))
    for k, vector in enumerate(vectors):
        store.add_image(f"{k:064d}", f"p{k}.jpg", (100, 100), [new_face(0, vector, label=f"person{k}")], "v", None)

    matrix = store.usable_faces()

    assert matrix.embeddings.dtype == np.float32
    assert matrix.embeddings.shape == (3, DIM)
    assert np.array_equal(matrix.embeddings, vectors)
    assert matrix.embeddings.tobytes() == vectors.tobytes()
    assert matrix.labels == ["person0", "person1", "person2"]
    assert list(matrix.face_ids) == sorted(matrix.face_ids)


def test_float64_embedding_is_stored_as_float32(store):
    vector = unit(np.random.default_rng(2).normal(size=DIM)).astype(np.float64)
    store.add_image("c" * 64, "p.jpg", (100, 100), [new_face(0, vector)], "v", None)
    assert np.array_equal(store.usable_faces().embeddings[0], vector.astype(np.float32))


def test_usable_faces_excludes_failed_and_unembedded_faces(store):
    rng = np.random.default_rng(3)
    good = unit(rng.normal(size=DIM))
    faces = [
        new_face(0, good, label="kept"),
        new_face(1, unit(rng.normal(size=DIM)), failures=["blurry"]),
        new_face(2, None),  # passed but never embedded
        new_face(3, None, failures=["too_small", "low_confidence"]),
    ]
    store.add_image("d" * 64, "group.jpg", (800, 600), faces, "v", None)

    matrix = store.usable_faces()

    assert len(matrix.face_ids) == 1
    assert np.array_equal(matrix.embeddings, good[None])
    assert matrix.labels == ["kept"]
    counts = store.counts()
    assert counts["faces"] == 4
    assert counts["usable_faces"] == 2  # gates passed, embedded or not


def test_usable_faces_of_empty_store(store):
    matrix = store.usable_faces()
    assert matrix.face_ids.shape == (0,)
    assert matrix.embeddings.shape == (0, 0)
    assert matrix.labels == []


def test_add_rejected_upserts_by_path(store):
    store.add_rejected("bad/file.jpg", "truncated", "cut short", "1" * 64)
    store.add_rejected("bad/file.jpg", "not_an_image", "text file", "2" * 64)
    store.add_rejected("bad/other.jpg", "empty", "zero bytes", None)

    assert store.counts()["rejected_files"] == 2
    assert store.rejected_paths() == {"bad/file.jpg": "2" * 64, "bad/other.jpg": None}


def test_adding_a_rejected_path_as_image_clears_the_rejection(store):
    store.add_rejected("photos/fixed.jpg", "truncated", "cut short", "1" * 64)
    store.add_image("3" * 64, "photos/fixed.jpg", (100, 100), [], "v", None)
    assert store.rejected_paths() == {}
    assert store.counts()["images"] == 1


# -- clustering ---------------------------------------------------------------------------


def clustered_store(store: IdentityStore, sizes: list[int], seed: int = 0):
    """One photo per face; faces of cluster k lie around centre k. Returns (face_ids, X, groups)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(len(sizes), DIM)))
    groups = np.repeat(np.arange(len(sizes)), sizes)
    x = unit(centres[groups] + rng.normal(scale=0.05, size=(len(groups), DIM)))
    for k, vector in enumerate(x):
        store.add_image(f"{k:064x}", f"photo{k}.jpg", (200, 200), [new_face(0, vector, label=f"g{groups[k]}")], "v", None)
    matrix = store.usable_faces()
    assert np.array_equal(matrix.embeddings, x)
    return matrix.face_ids, matrix.embeddings, groups


def assignments(store: IdentityStore) -> dict[int, tuple[int, float, str]]:
    with store.session() as session:
        rows = session.execute(select(AssignmentRow.face_id, AssignmentRow.identity_id, AssignmentRow.similarity,
                                      AssignmentRow.method)).all()
    return {row.face_id: (row.identity_id, row.similarity, row.method) for row in rows}


def identity_rows(store: IdentityStore) -> dict[int, IdentityRow]:
    with store.session() as session:
        return {row.id: row for row in session.scalars(select(IdentityRow)).all()}


def cluster(store, face_ids, x, labels, min_size=2):
    labels = np.asarray(labels)
    return store.replace_clustering(face_ids, labels, x, medoids(x, labels), min_size)


def test_first_clustering_creates_identities_for_large_clusters_only(store):
    face_ids, x, groups = clustered_store(store, [4, 3, 1])

    mapping = cluster(store, face_ids, x, groups)

    assert sorted(mapping) == [0, 1]  # the singleton cluster 2 stays in the unknown pool
    assert len(set(mapping.values())) == 2
    counts = store.counts()
    assert counts["identities"] == 2
    assert counts["assignments"] == 7
    assigned = assignments(store)
    lonely = int(face_ids[groups == 2][0])
    assert lonely not in assigned
    for face, label in zip(face_ids, groups):
        if label in mapping:
            assert assigned[int(face)][0] == mapping[label]
            assert assigned[int(face)][2] == "cluster"
    rows = identity_rows(store)
    medoid_rows = medoids(x, groups)
    for label, identity in mapping.items():
        assert rows[identity].size == int((groups == label).sum())
        assert rows[identity].medoid_face_id == int(face_ids[medoid_rows[label]])


def test_min_size_decides_what_becomes_an_identity(store):
    face_ids, x, groups = clustered_store(store, [4, 3, 1])
    mapping = cluster(store, face_ids, x, groups, min_size=4)
    assert sorted(mapping) == [0]
    assert store.counts()["assignments"] == 4


def test_assignment_similarity_is_dot_with_medoid(store):
    face_ids, x, groups = clustered_store(store, [5, 3])
    cluster(store, face_ids, x, groups)
    rows = identity_rows(store)
    row_of_face = {int(face): k for k, face in enumerate(face_ids)}

    for face, (identity, similarity, _) in assignments(store).items():
        medoid = row_of_face[rows[identity].medoid_face_id]
        expected = float(np.dot(x[row_of_face[face]].astype(np.float64), x[medoid].astype(np.float64)))
        assert similarity == pytest.approx(expected, abs=1e-6)
        if face == rows[identity].medoid_face_id:
            assert similarity == pytest.approx(1.0, abs=1e-6)
        else:
            assert similarity < 1.0


def test_reclustering_with_permuted_labels_keeps_identity_ids(store):
    face_ids, x, groups = clustered_store(store, [4, 3, 2, 1])
    first = cluster(store, face_ids, x, groups)
    with store.session() as session:
        session.get(IdentityRow, first[1]).name = "Bob"

    permutation = np.array([2, 0, 3, 1])  # old label -> new label
    second = cluster(store, face_ids, x, permutation[groups])

    assert sorted(second) == [0, 2, 3]
    for old_label, identity in first.items():
        assert second[int(permutation[old_label])] == identity
    assert set(identity_rows(store)) == set(first.values())
    assert identity_rows(store)[first[1]].name == "Bob"
    assert {face: a[0] for face, a in assignments(store).items()} == {
        int(face): first[label] for face, label in zip(face_ids, groups) if label in first
    }


def test_merged_clusters_keep_the_larger_identity_and_drop_the_other(store):
    face_ids, x, groups = clustered_store(store, [4, 3, 2])
    first = cluster(store, face_ids, x, groups)
    assert len(first) == 3

    merged = np.where(groups == 1, 0, groups)  # clusters 0 (4 faces) and 1 (3 faces) become one
    merged = np.where(merged == 2, 1, merged)
    second = cluster(store, face_ids, x, merged)

    assert second == {0: first[0], 1: first[2]}
    rows = identity_rows(store)
    assert set(rows) == {first[0], first[2]}  # first[1] is gone
    assert rows[first[0]].size == 7
    assert store.counts()["assignments"] == 9
    assert all(identity != first[1] for identity, _, _ in assignments(store).values())


def test_split_cluster_keeps_id_for_the_bigger_part_and_creates_a_new_one(store):
    face_ids, x, groups = clustered_store(store, [4, 3])
    both = np.zeros_like(groups)
    first = cluster(store, face_ids, x, both)
    second = cluster(store, face_ids, x, groups)
    assert second[0] == first[0]
    assert second[1] not in first.values()
    assert store.counts()["identities"] == 2


def test_identities_largest_first(store):
    face_ids, x, groups = clustered_store(store, [2, 5, 3])
    mapping = cluster(store, face_ids, x, groups)
    # identities are created in label order, so ids do not follow size
    assert mapping[0] < mapping[1] < mapping[2]

    listed = store.identities()

    assert [item["id"] for item in listed] == [mapping[1], mapping[2], mapping[0]]
    assert [item["size"] for item in listed] == [5, 3, 2]
    for item in listed:
        assert len(item["faces"]) == item["size"]
        similarities = [face["similarity"] for face in item["faces"]]
        assert similarities == sorted(similarities, reverse=True)
        assert item["faces"][0]["face_id"] == item["medoid_face_id"]
        assert {face["label"] for face in item["faces"]} == {f"g{groups[face_ids == item['medoid_face_id']][0]}"}


def test_identities_equal_sizes_ordered_by_id(store):
    face_ids, x, groups = clustered_store(store, [3, 3])
    mapping = cluster(store, face_ids, x, groups)
    assert [item["id"] for item in store.identities()] == sorted(mapping.values())


# -- the unknown pool and the life-cycle queries ------------------------------------------------


def test_replace_clustering_puts_small_clusters_in_the_pool(store):
    face_ids, x, groups = clustered_store(store, [4, 3, 1])
    cluster(store, face_ids, x, groups)
    assert store.pool_face_ids() == [int(face_ids[groups == 2][0])]
    with store.session() as session:
        from components.identities.store import PoolFaceRow

        assert session.scalars(select(PoolFaceRow.reclustered)).all() == [True]
    assert not store.has_unseen_faces()


def test_unseen_faces_are_neither_assigned_nor_pooled(store):
    from components.identities.store import unseen_faces

    face_ids, x, groups = clustered_store(store, [2, 1])
    assert store.has_unseen_faces()
    with store.session() as session:
        assert unseen_faces(session).face_ids.tolist() == face_ids.tolist()
    cluster(store, face_ids, x, groups)
    store.add_image("e" * 64, "late.jpg", (10, 10), [new_face(0, x[0])], "v", None)
    with store.session() as session:
        late = unseen_faces(session)
    assert len(late.face_ids) == 1 and late.photo_ids is not None and store.has_unseen_faces()


def test_photo_identities_lists_who_holds_a_face_of_each_photo(store):
    from components.identities.store import photo_identities

    face_ids, x, groups = clustered_store(store, [2, 2])
    mapping = cluster(store, face_ids, x, groups)
    photos = store.usable_faces().photo_ids
    with store.session() as session:
        held = photo_identities(session, photos.tolist() + [999])
    assert held == {int(photo): {mapping[int(group)]} for photo, group in zip(photos, groups)}
