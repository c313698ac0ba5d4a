"""``faces purge`` on local folders: a deleted identity's faces leave the batch artefacts and the quarantine.

No model: the batch artefacts are written in the workflow's own format with given
pixels and vectors; the store is real (SQLite), the delete is the real operation.
"""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from components.identities import IdentityStore, NewFace, operations
from components.identities.lifecycle import Policy, update_identities
from components.settings import load_settings
from components.storage import StorageError
from components.workflow import purge as purging

POLICY = Policy(assign_threshold=0.9, cluster_threshold=0.9, recluster_pool_size=1)


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def write_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def read_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


@pytest.fixture
def world(tmp_path, monkeypatch):
    """Two people, three photos each, ingested as one batch of one shard; a quarantined copy of one photo."""
    work, quarantine = tmp_path / "work", tmp_path / "quarantine"
    monkeypatch.setenv("FACES_WORK_URI", str(work))
    monkeypatch.setenv("FACES_QUARANTINE_URI", str(quarantine))
    store = IdentityStore(f"sqlite:///{tmp_path / 'faces.db'}")
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(2, 16)))
    photos, crops, vectors = [], [], []
    for number in range(6):
        data = f"photo {number}".encode()
        sha = hashlib.sha256(data).hexdigest()
        vector = unit(centres[number // 3] + 0.02 * rng.normal(size=16))
        crop = rng.integers(1, 255, size=(150, 150, 3), dtype=np.uint8)
        crop_file = work / "crops" / f"{sha}_0.jpg"
        crop_file.parent.mkdir(parents=True, exist_ok=True)
        crop_file.write_bytes(b"jpeg " + sha.encode())
        store.add_image(sha, f"p{number}.jpg", (150, 150), [NewFace(0, (0, 0, 150, 150), np.zeros((5, 2)), 0.99, 1.0, [],
                                                                    vector, "test", str(crop_file))], "v", None)
        photos.append({"key": f"p{number}.jpg", "sha256": sha, "status": "new"})
        crops.append(crop)
        vectors.append(vector)
        if number == 0:
            (quarantine / "b-1" / "batch").mkdir(parents=True)
            (quarantine / "b-1" / "batch" / "p0.jpg").write_bytes(data)
            (quarantine / "b-1" / "batch" / "other.jpg").write_bytes(b"not one of theirs")
    update_identities(store, policy=POLICY, clock=lambda: datetime(2026, 1, 1, tzinfo=UTC), force_pool=True)
    batch = work / "batches" / "b-1"
    meta = {"batch_id": "b-1", "shard": 0, "photos": photos}
    write_npz(batch / "detections" / "00000.npz", meta=np.array(json.dumps(meta)), photo=np.arange(6, dtype=np.int32),
              face_index=np.zeros(6, np.int32), boxes=np.ones((6, 4)), landmarks=np.ones((6, 5, 2)),
              confidence=np.ones(6), blur=np.ones(6), failures=np.array([""] * 6), crops=np.stack(crops))
    write_npz(batch / "embeddings" / "00000.npz", meta=np.array(json.dumps({"batch_id": "b-1"})),
              rows=np.arange(6, dtype=np.int32), embeddings=np.stack(vectors))
    first = {identity["id"]: identity for identity in store.identities()}
    target = next(i for i, identity in first.items() if any(face["crop"].endswith(f"{photos[0]['sha256']}_0.jpg")
                                                              for face in identity["faces"]))
    return {"store": store, "work": work, "quarantine": quarantine, "batch": batch, "target": target,
            "crops": crops, "vectors": np.stack(vectors)}


def test_a_delete_then_purge_leaves_no_copy_and_keeps_everyone_else(world):
    store = world["store"]
    operations.delete_identity(store, world["target"], crops_root=str(world["work"]))
    assert [face["face_index"] for face in store.forgotten()] == [0, 0, 0]
    report = purging.purge(store, settings=load_settings())
    assert report["faces"] == 3 and report["work_area"]["faces"] == 3 and report["quarantine"]["deleted"] == 1
    detections = read_npz(world["batch"] / "detections" / "00000.npz")
    embeddings = read_npz(world["batch"] / "embeddings" / "00000.npz")
    gone, kept = [0, 1, 2], [3, 4, 5]
    assert not detections["crops"][gone].any() and not detections["landmarks"][gone].any()
    assert np.array_equal(detections["crops"][kept], np.stack(world["crops"])[kept])
    assert embeddings["rows"].tolist() == kept
    assert np.array_equal(embeddings["embeddings"], world["vectors"][kept])
    assert sorted(path.name for path in (world["quarantine"] / "b-1" / "batch").iterdir()) == ["other.jpg"]
    assert store.forgotten() == [] and len(store.forgotten(pending=False)) == 3
    before = {path: path.read_bytes() for path in world["work"].rglob("*.npz")}
    assert purging.purge(store, settings=load_settings())["faces"] == 0  # idempotent
    assert {path: path.read_bytes() for path in world["work"].rglob("*.npz")} == before


def test_a_purge_that_cannot_write_marks_nothing_and_a_second_run_finishes(world, monkeypatch):
    store = world["store"]
    operations.delete_identity(store, world["target"], crops_root=str(world["work"]))
    monkeypatch.setenv("FACES_QUARANTINE_URI", "s3://no-such-bucket/quarantine")
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: the quarantine is unreachable
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    with pytest.raises(StorageError):
        purging.purge(store, settings=load_settings())
    assert len(store.forgotten()) == 3  # still pending
    monkeypatch.setenv("FACES_QUARANTINE_URI", str(world["quarantine"]))
    assert purging.purge(store, settings=load_settings())["faces"] == 3
    assert store.forgotten() == []
