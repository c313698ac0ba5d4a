"""Unit tests for components.identities.operations on a throwaway SQLite store with crop files."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from components.cluster import medoid_index
from components.identities import IdentityStore, NewFace, operations
from components.identities.lifecycle import Policy, update_identities
from components.identities.operations import (
    IdentityError,
    UnknownIdentityError,
    check_merge,
    check_split,
    clean_name,
    merge_conflicts,
    redact_names,
)
from components.identities.store import AssignmentRow, FaceRow, IdentityRow, ImageRow

DIM = 16
T0 = datetime(2024, 6, 1, tzinfo=UTC)
POLICY = Policy(assign_threshold=0.85, cluster_threshold=0.9)


def unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clock(seconds: float = 0):
    return lambda: T0 + timedelta(seconds=seconds)


# -- pure checks ------------------------------------------------------------------------------


def test_clean_name():
    assert clean_name("  Ada Lovelace ") == "Ada Lovelace"
    for bad in ("", "   ", None, "two\nlines", "x" * 513):
        with pytest.raises(IdentityError):
            clean_name(bad)


def test_check_merge():
    assert check_merge(1, [2, 3, 2], {1, 2, 3}) == [2, 3]
    with pytest.raises(IdentityError, match="into itself"):
        check_merge(1, [2, 1], {1, 2})
    with pytest.raises(UnknownIdentityError, match="no identity with id 9"):
        check_merge(1, [9], {1, 2})
    with pytest.raises(IdentityError, match="at least one"):
        check_merge(1, [], {1})


def test_check_split():
    assert check_split(4, [12, 11, 12], {10, 11, 12}) == [11, 12]
    with pytest.raises(IdentityError, match="face\\(s\\) 99 are not in identity 4"):
        check_split(4, [10, 99], {10, 11})
    with pytest.raises(IdentityError, match="every face"):
        check_split(4, [10, 11], {10, 11})
    with pytest.raises(IdentityError, match="at least one"):
        check_split(4, [], {10})


def test_merge_conflicts():
    assert merge_conflicts({1: {100: 1, 101: 2}, 2: {102: 3}}) == {}
    assert merge_conflicts({1: {100: 1, 101: 2}, 2: {101: 7}}) == {101: [2, 7]}


def test_redact_names():
    assert redact_names({"from": "Ada", "to": "Grace", "faces": 3, "from_identity": 4}) == {
        "from": "[deleted]", "to": "[deleted]", "faces": 3, "from_identity": 4}
    assert redact_names({"from": [2, 3], "faces_moved": 5}) == {"from": [2, 3], "faces_moved": 5}


# -- a store with three people, crops on disk ---------------------------------------------------


class World:
    """Three people (5, 4 and 3 faces), a group photo of persons 0 and 1, crops on disk."""

    def __init__(self, root: Path):
        self.root = root
        self.store = IdentityStore(f"sqlite:///{root / 'faces.db'}")
        rng = np.random.default_rng(0)
        self.centres = unit(rng.normal(size=(3, DIM)))
        self.count = 0
        for person, n in ((0, 5), (1, 4), (2, 3)):
            for _ in range(n):
                self.add([person])
        self.group_photo = self.add([0, 1])
        update_identities(self.store, policy=POLICY, clock=clock())
        self.person_of = {}  # identity id -> person
        matrix = self.store.usable_faces()
        for face, identity in self.store.identity_of_faces().items():
            row = int(np.flatnonzero(matrix.face_ids == face)[0])
            self.person_of[identity] = int(np.argmax(self.centres @ matrix.embeddings[row]))
        self.identity_of_person = {person: identity for identity, person in self.person_of.items()}

    def add(self, persons: list[int]) -> int:
        self.count += 1
        faces = []
        rng = np.random.default_rng(self.count)
        for index, person in enumerate(persons):
            crop = f"crops/{self.count:03d}_{index}.jpg"
            (self.root / crop).parent.mkdir(parents=True, exist_ok=True)
            (self.root / crop).write_bytes(b"jpeg")
            faces.append(NewFace(face_index=index, box=(0.0, 0.0, 9.0, 9.0), landmarks=np.zeros((5, 2)), confidence=0.99,
                                 blur=1.0, failures=[], embedding=unit(self.centres[person] + rng.normal(scale=0.05, size=DIM)),
                                 model_version="test", crop_path=crop, label=f"person{person}"))
        return self.store.add_image(f"{self.count:064x}", f"photos/{self.count}.jpg", (99, 99), faces, "v", None)

    def members(self, identity: int) -> list[int]:
        return sorted(face for face, owner in self.store.identity_of_faces().items() if owner == identity)

    def state(self) -> dict:
        with self.store.session() as session:
            return {
                "identities": sorted(tuple(r) for r in session.execute(
                    select(IdentityRow.id, IdentityRow.name, IdentityRow.size, IdentityRow.medoid_face_id))),
                "assignments": sorted(tuple(r) for r in session.execute(
                    select(AssignmentRow.face_id, AssignmentRow.identity_id, AssignmentRow.similarity))),
                "faces": session.scalar(select(FaceRow.id).order_by(FaceRow.id.desc()).limit(1)),
                "n_faces": len(session.scalars(select(FaceRow.id)).all()),
                "events": [(e["identity_id"], e["action"], json.dumps(e["details"])) for e in self.store.events()],
                "crops": sorted(str(p) for p in (self.root / "crops").iterdir()),
            }


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path)


def test_world_is_three_identities(world):
    assert sorted(world.person_of.values()) == [0, 1, 2]
    assert sorted(len(world.members(identity)) for identity in world.person_of) == [3, 5, 6]


# -- rename -----------------------------------------------------------------------------------


def test_rename_records_an_event(world):
    identity = world.identity_of_person[2]
    assert operations.rename(world.store, identity, " Ada ", actor="cli:tester", clock=clock(5)) == {
        "id": identity, "name": "Ada", "previous_name": None}
    operations.rename(world.store, identity, "Ada L.", actor="cli:tester", clock=clock(6))
    events = world.store.events(identity)[-2:]
    assert [(e["action"], e["details"], e["actor"]) for e in events] == [
        ("renamed", {"from": None, "to": "Ada"}, "cli:tester"), ("renamed", {"from": "Ada", "to": "Ada L."}, "cli:tester")]
    assert events[0]["at"] == (T0 + timedelta(seconds=5)).isoformat(timespec="seconds")


def test_rename_errors_change_nothing(world):
    before = world.state()
    with pytest.raises(UnknownIdentityError, match="no identity with id 999"):
        operations.rename(world.store, 999, "Nobody")
    with pytest.raises(IdentityError, match="empty"):
        operations.rename(world.store, world.identity_of_person[0], "  ")
    assert world.state() == before


# -- merge ------------------------------------------------------------------------------------


def test_merge_moves_faces_recomputes_the_medoid_and_removes_the_others(world):
    # Persons 1 and 2 never share a photo, so they can be merged (a user's call).
    into, other = world.identity_of_person[2], world.identity_of_person[1]
    operations.rename(world.store, other, "Bob", clock=clock(1))
    expected_faces = sorted(world.members(into) + world.members(other))

    result = operations.merge(world.store, into, [other], actor="cli:tester", clock=clock(2), policy=POLICY)

    assert result["id"] == into and result["merged"] == [other] and result["faces_moved"] == 5
    assert result["name"] == "Bob"  # the unnamed identity takes the other's name
    assert world.members(into) == expected_faces
    assert other not in {item["id"] for item in world.store.identity_list()}
    matrix = world.store.usable_faces()
    rows = np.flatnonzero(np.isin(matrix.face_ids, expected_faces))
    true_medoid = int(matrix.face_ids[rows[medoid_index(matrix.embeddings[rows])]])
    assert result["medoid_face_id"] == true_medoid and result["size"] == 8
    actions = [(e["identity_id"], e["action"]) for e in world.store.events()[-2:]]
    assert actions == [(other, "merged_into"), (into, "merged")]


def test_merge_errors_change_nothing(world):
    a, b, c = (world.identity_of_person[p] for p in (0, 1, 2))
    before = world.state()
    with pytest.raises(IdentityError, match="into itself"):
        operations.merge(world.store, a, [a])
    with pytest.raises(UnknownIdentityError, match="no identity with id 404"):
        operations.merge(world.store, a, [c, 404])
    # Persons 0 and 1 share the group photo: one photo shows a person once.
    with pytest.raises(IdentityError, match="same photo"):
        operations.merge(world.store, a, [b])
    assert world.state() == before


# -- split ------------------------------------------------------------------------------------


def test_split_moves_faces_into_a_new_identity(world):
    identity = world.identity_of_person[0]
    faces = world.members(identity)
    moving = faces[:2]

    result = operations.split(world.store, identity, moving, actor="cli:tester", clock=clock(3), policy=POLICY)

    assert result["id"] == identity and result["faces_moved"] == 2
    assert result["size"] == len(faces) - 2 and result["new_size"] == 2
    assert world.members(result["new_id"]) == moving
    assert world.members(identity) == faces[2:]
    listed = {item["id"]: item for item in world.store.identity_list()}
    assert listed[result["new_id"]]["medoid_face_id"] in moving
    assert listed[identity]["medoid_face_id"] in faces[2:]
    assert [e["action"] for e in world.store.events()[-2:]] == ["split", "created"]


def test_split_errors_change_nothing(world):
    identity = world.identity_of_person[0]
    stranger = world.members(world.identity_of_person[2])[0]
    before = world.state()
    with pytest.raises(IdentityError, match=f"face\\(s\\) {stranger} are not in identity {identity}"):
        operations.split(world.store, identity, [world.members(identity)[0], stranger])
    with pytest.raises(IdentityError, match="every face"):
        operations.split(world.store, identity, world.members(identity))
    with pytest.raises(UnknownIdentityError):
        operations.split(world.store, 12345, [1])
    assert world.state() == before


# -- delete -----------------------------------------------------------------------------------


def test_delete_removes_faces_embeddings_crops_and_keeps_only_ids(world):
    identity = world.identity_of_person[1]
    operations.rename(world.store, identity, "Private Person", clock=clock(1))
    faces = world.members(identity)
    with world.store.session() as session:
        crops = list(session.scalars(select(FaceRow.crop_path).where(FaceRow.id.in_(faces))))
    others = {i: world.members(i) for i in world.person_of if i != identity}
    images_before = world.store.counts()["images"]

    result = operations.delete_identity(world.store, identity, crops_root=world.root, actor="cli:tester", clock=clock(9))

    assert result == {"id": identity, "faces_deleted": len(faces), "crops_removed": len(faces), "crops_missing": 0,
                      "crops_refused": 0}
    assert all(not (world.root / crop).exists() for crop in crops)
    with world.store.session() as session:
        assert session.scalars(select(FaceRow.id).where(FaceRow.id.in_(faces))).all() == []
        assert session.get(IdentityRow, identity) is None
    assert world.store.counts()["images"] == images_before  # the photos stay: re-runs skip them
    assert {i: world.members(i) for i in others} == others
    events = world.store.events(identity)
    assert events[-1]["action"] == "deleted" and events[-1]["details"]["face_ids"] == faces
    assert "Private Person" not in json.dumps(world.store.events())


def test_delete_redacts_names_of_identities_merged_into_it(world):
    into, other = world.identity_of_person[2], world.identity_of_person[1]
    operations.rename(world.store, other, "Secret", clock=clock(1))
    operations.merge(world.store, into, [other], clock=clock(2), policy=POLICY)
    operations.delete_identity(world.store, into, crops_root=world.root, clock=clock(3))
    assert "Secret" not in json.dumps(world.store.events())


def test_delete_tolerates_missing_crops_and_refuses_paths_outside_the_root(world, tmp_path_factory):
    identity = world.identity_of_person[2]
    faces = world.members(identity)
    outside = tmp_path_factory.mktemp("elsewhere") / "keep.jpg"
    outside.write_bytes(b"not ours")
    with world.store.session() as session:
        first, second = (session.get(FaceRow, face) for face in faces[:2])
        (world.root / first.crop_path).unlink()
        second.crop_path = str(outside)
    result = operations.delete_identity(world.store, identity, crops_root=world.root, clock=clock(4))
    assert (result["crops_removed"], result["crops_missing"], result["crops_refused"]) == (len(faces) - 2, 1, 1)
    assert outside.exists()


def test_delete_that_cannot_remove_a_crop_changes_nothing_in_the_store(world, monkeypatch):
    identity = world.identity_of_person[0]
    before = {k: v for k, v in world.state().items() if k != "crops"}
    real_unlink = Path.unlink

    def unlink(path, *args, **kwargs):
        if path.name.endswith("_0.jpg") and path.name.startswith("002"):
            raise PermissionError(13, "Permission denied")
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(IdentityError, match="Permission denied.*run the delete again"):
        operations.delete_identity(world.store, identity, crops_root=world.root, clock=clock(5))
    assert {k: v for k, v in world.state().items() if k != "crops"} == before
    monkeypatch.undo()
    # Run again: finishes, crops already removed count as missing.
    result = operations.delete_identity(world.store, identity, crops_root=world.root, clock=clock(6))
    assert result["crops_removed"] + result["crops_missing"] == result["faces_deleted"]


def test_delete_without_a_crops_root_changes_nothing(world):
    identity = world.identity_of_person[1]
    before = world.state()
    with pytest.raises(IdentityError, match="FACES_CROPS_ROOT.*nothing was deleted"):
        operations.delete_identity(world.store, identity, crops_root=None, clock=clock(5))
    assert world.state() == before
    result = operations.delete_identity(world.store, identity, crops_root=str(world.root), clock=clock(6))
    assert result["crops_removed"] == result["faces_deleted"] == len(before["crops"]) - len(world.state()["crops"])


def test_delete_unknown_identity(world):
    with pytest.raises(UnknownIdentityError):
        operations.delete_identity(world.store, 777, crops_root=world.root)


def test_deleted_person_does_not_come_back_from_the_same_photos(world):
    identity = world.identity_of_person[2]
    operations.delete_identity(world.store, identity, crops_root=world.root, clock=clock(1))
    with world.store.session() as session:
        sha = session.scalar(select(ImageRow.sha256).order_by(ImageRow.id.desc()).limit(1))
    assert world.store.find_image(sha) is not None  # ingest sees the photo as already stored
    update_identities(world.store, policy=POLICY, clock=clock(99_999))
    assert identity not in {item["id"] for item in world.store.identity_list()}


# -- atomicity --------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["merge", "split"])
def test_an_operation_failing_midway_changes_nothing(world, monkeypatch, operation):
    before = world.state()

    def broken(*args, **kwargs):
        raise RuntimeError("crash")

    monkeypatch.setattr(operations, "refresh_identities", broken)  # after faces moved and events added
    with pytest.raises(RuntimeError):
        if operation == "merge":
            operations.merge(world.store, world.identity_of_person[2], [world.identity_of_person[1]])
        else:
            identity = world.identity_of_person[0]
            operations.split(world.store, identity, world.members(identity)[:1])
    assert world.state() == before


@pytest.mark.parametrize("operation", ["merge", "split"])
def test_without_a_policy_the_store_models_thresholds_are_used(world, monkeypatch, operation):
    from components.identities.store import StoreModel
    from components.settings import load_settings

    own = {"verify": 0.5, "cluster": 0.6, "assign": 0.7}  # deliberately not params.yaml's
    world.store.set_model(StoreModel("v2", 2, "registry", own))
    used = []
    monkeypatch.setattr(operations, "refresh_identities", lambda session, ids, policy, **kwargs: used.append(policy))
    if operation == "merge":
        operations.merge(world.store, world.identity_of_person[2], [world.identity_of_person[1]])
    else:
        identity = world.identity_of_person[0]
        operations.split(world.store, identity, world.members(identity)[:1])
    (policy,) = used
    assert (policy.assign_threshold, policy.cluster_threshold) == (0.7, 0.6)
    assert policy.medoid_sample_above == load_settings().identities.medoid_sample_above


def test_show_lists_faces_best_first_and_the_history(world):
    identity = world.identity_of_person[0]
    operations.rename(world.store, identity, "Zoe", clock=clock(1))
    shown = operations.show(world.store, identity)
    assert shown["id"] == identity and shown["name"] == "Zoe" and shown["size"] == 6
    assert shown["faces"][0]["face_id"] == shown["medoid_face_id"]
    similarities = [face["similarity"] for face in shown["faces"]]
    assert similarities == sorted(similarities, reverse=True)
    assert [event["action"] for event in shown["history"]] == ["created", "renamed"]
    with pytest.raises(UnknownIdentityError):
        operations.show(world.store, 31337)
