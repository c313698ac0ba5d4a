"""A workflow shard goes into the identity store in one transaction, its crops written first.

The shard files are written as the detect and embed steps write them (no model needed:
the vectors are given). Counted on the store's own engine: how many transactions that
wrote something were committed. A failure in the middle of the shard's writes must
leave none of its rows behind, and the re-run must store it whole.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace

import numpy as np
import pytest
from sqlalchemy import event, func, select

from components.identities import IdentityStore
from components.identities import store as db
from components.workflow import ingest
from components.workflow import workspace as ws

MODEL = SimpleNamespace(version="net+test", embedder=None)  # the store's model: its version names the vectors
FACES_PER_PHOTO = [2, 1, 0, 3, 1]  # five readable photos (one without a face) and one unreadable file


def write_shard(workspace: ws.Workspace, batch_id: str = "b1") -> str:
    """Detections and embeddings files of one shard; returns the embeddings URI."""
    rng = np.random.default_rng(0)
    photos, owners, indices = [], [], []
    for number, faces in enumerate(FACES_PER_PHOTO):
        photos.append({"key": f"p{number}.jpg", "uri": f"/photos/p{number}.jpg", "sha256": f"{number:064x}",
                       "label": None, "status": "new", "width": 250, "height": 250, "faces": faces, "main_face": 0})
        owners += [number] * faces
        indices += list(range(faces))
    photos.append({"key": "broken.jpg", "uri": "/photos/broken.jpg", "sha256": "f" * 64, "label": None,
                   "status": "rejected", "code": "truncated", "reason": "a half-copied JPEG"})
    n = len(owners)
    meta = {"batch_id": batch_id, "shard": 0, "source": "/photos", "photos": photos, "detector_version": "test",
            "seconds": {}}
    detections = ws.write_npz(
        workspace.batch(batch_id, "detections", "00000.npz"), meta=np.array(json.dumps(meta)),
        photo=np.array(owners, np.int32), face_index=np.array(indices, np.int32),
        boxes=np.tile([10.0, 10.0, 80.0, 80.0], (n, 1)), landmarks=np.full((n, 5, 2), 40.0),
        confidence=np.full(n, 0.99), blur=np.full(n, 100.0), failures=np.array([""] * n, dtype=str),
        rotation=np.zeros(n, np.int16), crops=rng.integers(0, 255, size=(n, 150, 150, 3), dtype=np.uint8))
    vectors = rng.normal(size=(n, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    out = {"batch_id": batch_id, "shard": 0, "detections": detections, "model_version": MODEL.version,
           "registry_version": None, "faces": n, "seconds": {}}
    return ws.write_npz(workspace.batch(batch_id, "embeddings", "00000.npz"), meta=np.array(json.dumps(out)),
                        rows=np.arange(n, dtype=np.int32), embeddings=vectors)


@pytest.fixture
def shard(tmp_path):
    workspace = ws.Workspace(root=str(tmp_path / "work"), store_url=f"sqlite:///{tmp_path / 'faces.db'}")
    store = IdentityStore(workspace.store_url)
    yield workspace, store, write_shard(workspace)
    store.engine.dispose()


def rows(store: IdentityStore) -> dict[str, int]:
    with store.session() as session:
        return {name: session.scalar(select(func.count()).select_from(table)) for name, table in
                (("images", db.ImageRow), ("faces", db.FaceRow), ("rejected", db.RejectedFileRow))}


def count_write_commits(store: IdentityStore) -> list[int]:
    """A one-item list counting committed transactions that inserted, updated or deleted rows."""
    committed = [0]

    @event.listens_for(store.engine, "before_cursor_execute")
    def note_writes(connection, cursor, statement, parameters, context, executemany):
        if statement.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            connection.info["wrote"] = True

    @event.listens_for(store.engine, "commit")
    def count(connection):
        committed[0] += bool(connection.info.pop("wrote", False))

    return committed


def test_a_shard_is_stored_in_one_transaction_with_every_crop(shard):
    workspace, store, embeddings = shard
    committed = count_write_commits(store)

    counts = ingest.store_shard(embeddings, store, workspace, MODEL)

    assert committed == [1], f"{committed[0]} write transactions for one shard (one per photo?)"
    faces = sum(FACES_PER_PHOTO)
    assert rows(store) == {"images": len(FACES_PER_PHOTO), "faces": faces, "rejected": 1}
    assert (counts["photos_new"], counts["faces"], counts["usable_faces"], counts["rejected"]) == (5, faces, faces, 1)
    assert counts["photos_without_faces"] == 1
    with store.session() as session:
        paths = list(session.scalars(select(db.FaceRow.crop_path)))
    assert len(paths) == faces and all(ws.exists(path) for path in paths)
    assert ws.read_bytes(paths[0])[:2] == b"\xff\xd8"  # a JPEG


def test_a_shard_failing_midway_leaves_nothing_and_its_rerun_stores_it_whole(shard):
    workspace, store, embeddings = shard
    inserted = [0]

    # The database fails on the third photo's insert (a lost connection, a killed task).
    @event.listens_for(store.engine, "before_cursor_execute")
    def fail_on_third_photo(connection, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO IMAGES"):
            inserted[0] += 1
            if inserted[0] == 3:
                raise ConnectionError("the database went away")

    with pytest.raises(ConnectionError):
        ingest.store_shard(embeddings, store, workspace, MODEL)
    assert inserted[0] == 3
    assert rows(store) == {"images": 0, "faces": 0, "rejected": 0}, "half a shard was committed"

    event.remove(store.engine, "before_cursor_execute", fail_on_third_photo)
    counts = ingest.store_shard(embeddings, store, workspace, MODEL)
    assert counts["photos_new"] == len(FACES_PER_PHOTO)
    assert rows(store) == {"images": len(FACES_PER_PHOTO), "faces": sum(FACES_PER_PHOTO), "rejected": 1}

    again = ingest.store_shard(embeddings, store, workspace, MODEL)  # a cleared task run once more
    assert again["photos_new"] == 0 and again["already_stored"] == len(FACES_PER_PHOTO)
    assert rows(store) == {"images": len(FACES_PER_PHOTO), "faces": sum(FACES_PER_PHOTO), "rejected": 1}


def test_photos_another_batch_stored_meanwhile_count_as_already_stored(shard):
    workspace, store, embeddings = shard
    other = ws.Workspace(root=workspace.root, store_url=workspace.store_url)
    ingest.store_shard(write_shard(other, batch_id="b0"), store, other, MODEL)  # the same photos, first

    counts = ingest.store_shard(embeddings, store, workspace, MODEL)

    assert counts["photos_new"] == 0 and counts["already_stored"] == len(FACES_PER_PHOTO)
    assert rows(store)["images"] == len(FACES_PER_PHOTO)


def test_add_photos_skips_photos_already_stored_inside_its_transaction(tmp_path):
    """The race the pre-check cannot see: another transaction committed the photo just before ours."""
    from components.identities import NewFace, NewPhoto

    store = IdentityStore(f"sqlite:///{tmp_path / 'faces.db'}")
    face = NewFace(face_index=0, box=(0, 0, 9, 9), landmarks=np.zeros((5, 2)), confidence=1.0, blur=1.0, failures=[],
                   embedding=np.ones(4, np.float32) / 2, model_version="v", crop_path="c.jpg")
    first = NewPhoto("a" * 64, "a.jpg", (9, 9), [face], "test")
    second = NewPhoto("b" * 64, "b.jpg", (9, 9), [face], "test")
    try:
        store.add_image(first.sha256, first.path, first.size, first.faces, "test", None)
        written = store.add_photos([second, first])
        assert written == {"stored": [second.sha256], "already_stored": [first.sha256], "rejected": 0}
        assert rows(store) == {"images": 2, "faces": 2, "rejected": 0}
    finally:
        store.engine.dispose()


def test_a_shard_refused_after_a_model_switch_is_embedded_again_with_the_new_model(shard):
    """assign resolved the store's model, then a re-embed switched the store to a new one before the shard
    was stored: the store refuses the shard whole, which is embedded again with the store's model now and
    stored, so the batch goes on and the store holds one model's embeddings."""
    from components.identities import NewFace, NewPhoto, Policy
    from components.identities.lifecycle import switch_model
    from components.identities.store import StoreModel

    workspace, store, embeddings = shard
    new = SimpleNamespace(version="net+new", embedder=SimpleNamespace(
        embed=lambda crops: np.full((len(crops), 128), 128 ** -0.5, np.float32)))  # any vectors, the new model's
    store.adopt_model(StoreModel(MODEL.version, None, "local", {"verify": 0.9, "cluster": 0.9, "assign": 0.9}))
    earlier = NewFace(face_index=0, box=(0, 0, 9, 9), landmarks=np.zeros((5, 2)), confidence=1.0, blur=1.0,
                      failures=[], embedding=np.ones(128, np.float32) / np.sqrt(128), model_version=MODEL.version,
                      crop_path="c.jpg")
    store.add_photos([NewPhoto("a" * 64, "a.jpg", (9, 9), [earlier], "test")])
    # The re-embed: every stored face embedded with the new model, then the switch.
    target = StoreModel(new.version, 2, "registry", {"verify": 0.8, "cluster": 0.8, "assign": 0.8})
    store.begin_reembed(target)
    todo = store.reembed_todo(new.version, limit=10)
    store.stage_embeddings([face for face, _ in todo], new.version, new.embedder.embed(todo))
    switch_model(store, target, Policy(assign_threshold=0.8, cluster_threshold=0.8), now=datetime.now(UTC))
    asked = []

    def model_of_store():
        asked.append(store.model("active").version)
        return {new.version: new}[asked[-1]]

    [counts] = ingest.store_shards([embeddings], store, workspace, MODEL, model_of_store)  # MODEL: resolved before the switch

    assert asked == [new.version]
    assert counts["photos_new"] == len(FACES_PER_PHOTO) and counts["usable_faces"] == sum(FACES_PER_PHOTO)
    assert store.embedded_versions() == {new.version: 1 + sum(FACES_PER_PHOTO)}
