"""Unit tests for components.identities.crops: resolving, reading and deleting stored crop locations.

Local folders only (S3 against a real server: tests/integration/test_crops_s3.py).
"""

from __future__ import annotations

import io
import pickle
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from components.identities import IdentityStore, NewFace
from components.identities.crops import (
    CropDeletion,
    CropLocationError,
    CropReader,
    crop_object,
    crops_root_for,
    delete_crops,
    read_crop,
)
from components.identities.lifecycle import Policy, update_identities
from components.storage import LocalStorage, StorageError


@pytest.fixture(autouse=True)
def no_crops_root_env(monkeypatch):
    monkeypatch.delenv("FACES_CROPS_ROOT", raising=False)


@pytest.fixture
def root(tmp_path) -> Path:
    out = tmp_path / "out"
    (out / "crops" / "ab").mkdir(parents=True)
    (out / "crops" / "ab" / "ab12_0.jpg").write_bytes(b"\xff\xd8 first")
    (out / "crops" / "ab" / "ab12_1.jpg").write_bytes(b"\xff\xd8 second")
    return out


def test_crops_root_comes_from_the_environment_else_the_sqlite_folder(tmp_path, monkeypatch):
    assert crops_root_for(f"sqlite:///{tmp_path / 'out' / 'faces.db'}") == str((tmp_path / "out").resolve())
    assert crops_root_for("postgresql+psycopg2://faces@db/faces") is None
    assert crops_root_for("sqlite://") is None and crops_root_for("sqlite:///:memory:") is None
    assert crops_root_for("not a url") is None and crops_root_for(None) is None
    monkeypatch.setenv("FACES_CROPS_ROOT", "s3://faces/work")
    assert crops_root_for(f"sqlite:///{tmp_path / 'faces.db'}") == "s3://faces/work"
    assert crops_root_for("postgresql+psycopg2://faces@db/faces") == "s3://faces/work"


def test_relative_paths_resolve_under_the_root(root):
    storage, key = crop_object("crops/ab/ab12_0.jpg", root)
    assert isinstance(storage, LocalStorage) and storage.root == root.resolve() and key == "crops/ab/ab12_0.jpg"
    assert read_crop("crops/ab/ab12_0.jpg", root) == b"\xff\xd8 first"
    assert read_crop("./crops/ab/../ab/ab12_1.jpg", str(root)) == b"\xff\xd8 second"  # inside after normalising
    assert read_crop("crops/ab/ab12_0.jpg", f"file://{root}") == b"\xff\xd8 first"
    again, _ = crop_object("crops/ab/ab12_1.jpg", root)
    assert again is storage  # opened storages are cached per root


def test_absolute_paths_and_file_uris(root, tmp_path):
    inside = root / "crops" / "ab" / "ab12_0.jpg"
    storage, key = crop_object(str(inside), root)
    assert storage.root == root.resolve() and key == "crops/ab/ab12_0.jpg"
    assert read_crop(str(inside)) == b"\xff\xd8 first"  # no root needed
    assert read_crop(f"file://{inside}") == b"\xff\xd8 first"
    elsewhere = tmp_path / "elsewhere" / "x.jpg"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"other")
    assert read_crop(str(elsewhere), root) == b"other"  # reading may go anywhere ...
    with pytest.raises(CropLocationError, match="outside the crops root"):  # ... deleting may not
        crop_object(str(elsewhere), root, confine=True)
    with pytest.raises(CropLocationError, match="outside"):
        crop_object(str(inside), None, confine=True)


@pytest.mark.parametrize("stored", ["../faces.db", "crops/../../etc/passwd", "..", ".", "crops\\ab\\x.jpg",
                                    "", None, "http://example.com/a.jpg", "file://host/a.jpg", "s3://bucket",
                                    "s3://bucket/", "s3:///key.jpg"])
def test_malformed_locations_and_escapes_are_refused(root, stored):
    with pytest.raises(CropLocationError) as raised:
        crop_object(stored, root)
    assert raised.value.code == "invalid_key" and isinstance(raised.value, (ValueError, StorageError))


def test_relative_path_without_a_root_is_a_clear_error():
    with pytest.raises(CropLocationError, match="FACES_CROPS_ROOT") as raised:
        read_crop("crops/ab/ab12_0.jpg", None)
    assert raised.value.code == "config"
    copy = pickle.loads(pickle.dumps(raised.value))  # crosses process boundaries (workers)
    assert (copy.uri, copy.code, copy.reason) == (raised.value.uri, "config", raised.value.reason)


def test_a_missing_crop_is_not_found(root):
    with pytest.raises(StorageError) as raised:
        read_crop("crops/ab/gone.jpg", root)
    assert raised.value.code == "not_found" and not isinstance(raised.value, CropLocationError)


def test_s3_uris_name_bucket_and_key(monkeypatch):
    for name in ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(StorageError) as raised:  # the settings are missing: a configuration error
        crop_object("s3://faces/work/crops/ab/ab12_0.jpg")
    assert raised.value.code == "config" and not isinstance(raised.value, CropLocationError)
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing is contacted
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    storage, key = crop_object("s3://faces/work/crops/ab/ab12_0.jpg", "/somewhere/else")
    assert (storage.scheme, storage.bucket, key) == ("s3", "faces", "work/crops/ab/ab12_0.jpg")
    assert storage.uri(key) == "s3://faces/work/crops/ab/ab12_0.jpg"
    assert crop_object("s3://faces/other.jpg")[0] is storage  # one storage per bucket and settings
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:10")
    assert crop_object("s3://faces/other.jpg")[0] is not storage  # new settings, new client
    storage, key = crop_object("crops/ab/ab12_0.jpg", "s3://faces/work")
    assert storage.uri(key) == "s3://faces/work/crops/ab/ab12_0.jpg"
    for bad in ("s3://faces/a/../b.jpg", "s3://Bad_Bucket!/x.jpg"):
        with pytest.raises(CropLocationError):
            crop_object(bad)


def test_delete_removes_counts_missing_and_refuses_outside(root, tmp_path):
    outside = tmp_path / "keep.jpg"
    outside.write_bytes(b"not ours")
    result = delete_crops(["crops/ab/ab12_0.jpg", None, "", str(root / "crops/ab/ab12_1.jpg"), "crops/ab/gone.jpg",
                           "../keep.jpg", str(outside)], root)
    assert isinstance(result, CropDeletion)
    deleted, missing, refused = result
    assert deleted == ["crops/ab/ab12_0.jpg", str(root / "crops/ab/ab12_1.jpg")]
    assert missing == ["crops/ab/gone.jpg"] and refused == ["../keep.jpg", str(outside)]
    assert outside.exists() and not (root / "crops").exists()  # emptied folders go too, up to the root
    assert root.exists()
    again = delete_crops(["crops/ab/ab12_0.jpg"], root)  # idempotent
    assert again == CropDeletion([], ["crops/ab/ab12_0.jpg"], [])


def test_delete_does_not_follow_a_symlinked_folder_out_of_the_root(root, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "x.jpg").write_bytes(b"not ours")
    (root / "linked").symlink_to(target, target_is_directory=True)
    assert read_crop("linked/x.jpg", root) == b"not ours"
    assert delete_crops(["linked/x.jpg", str(root / "linked" / "x.jpg")], root).refused == [
        "linked/x.jpg", str(root / "linked" / "x.jpg")]
    assert (target / "x.jpg").exists()


def test_delete_without_a_root_deletes_nothing(root):
    with pytest.raises(CropLocationError) as raised:
        delete_crops([str(root / "crops/ab/ab12_0.jpg"), "crops/ab/ab12_1.jpg"], None)
    assert raised.value.code == "config"
    assert (root / "crops/ab/ab12_0.jpg").exists() and (root / "crops/ab/ab12_1.jpg").exists()


def test_reader_reads_many_in_order_and_reports_failures(root):
    reader = CropReader(root, workers=4)
    paths = ["crops/ab/ab12_1.jpg", "crops/ab/ab12_0.jpg"] * 10
    assert reader.read_many(paths) == [b"\xff\xd8 second", b"\xff\xd8 first"] * 10
    assert reader.read_many([]) == []
    results = reader.read_many(["crops/ab/ab12_0.jpg", "crops/ab/gone.jpg", "../x.jpg"], errors="return")
    assert results[0] == b"\xff\xd8 first"
    assert isinstance(results[1], StorageError) and results[1].code == "not_found"
    assert isinstance(results[2], CropLocationError)
    with pytest.raises(StorageError, match="no such object"):
        reader.read_many(["crops/ab/ab12_0.jpg", "crops/ab/gone.jpg"])
    assert CropReader(None).read(str(root / "crops/ab/ab12_0.jpg")) == b"\xff\xd8 first"


# -- training reads crops through the resolver ------------------------------------------------------


def unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def jpeg(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, size=(150, 150, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def store_with_crops(url: str, location) -> IdentityStore:
    """Two people with three photos each; crop i is stored at ``location(i, bytes)``."""
    store = IdentityStore(url)
    centres = unit(np.random.default_rng(0).normal(size=(2, 16)))
    rng = np.random.default_rng(1)
    for number in range(6):
        person = number % 2
        face = NewFace(0, (0.0, 0.0, 9.0, 9.0), np.zeros((5, 2)), 0.99, 1.0, [],
                       unit(centres[person] + rng.normal(scale=0.02, size=16)), "test", location(number, jpeg(number)))
        store.add_image(f"{number:064x}", f"photos/{number}.jpg", (99, 99), [face], "v", None)
    update_identities(store, policy=Policy(assign_threshold=0.85, cluster_threshold=0.9),
                      clock=lambda: datetime(2024, 1, 1, tzinfo=UTC), force_pool=True)
    return store


def decoded(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def crops_under(folder: Path):
    """A ``location`` for :func:`store_with_crops`: crop i written under ``folder/crops``, stored relative."""

    def write(number: int, data: bytes) -> str:
        path = folder / "crops" / f"{number:02d}_0.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return f"crops/{number:02d}_0.jpg"

    return write


def test_training_reads_relative_crops_of_a_sqlite_store(tmp_path, monkeypatch):
    from components.train.data import TrainingDataError, from_store

    (tmp_path / "out").mkdir()
    store = store_with_crops(f"sqlite:///{tmp_path / 'out' / 'faces.db'}", crops_under(tmp_path / "out"))
    data, chosen = from_store(store, min_faces=3, min_cohesion=0.5)
    assert len(data.classes) == 2 and data.x.shape == (6, 150, 150, 3)
    with store.session() as session:
        from sqlalchemy import select

        from components.identities.store import FaceRow

        path_of = dict(session.execute(select(FaceRow.id, FaceRow.crop_path)).all())
    for face, crop in zip(data.face_ids, data.x):
        assert np.array_equal(crop, decoded((tmp_path / "out" / path_of[int(face)]).read_bytes()))

    monkeypatch.setenv("FACES_CROPS_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(TrainingDataError, match="cannot read its crop.*not_found"):
        from_store(store, min_faces=3, min_cohesion=0.5)
    assert from_store(store, 3, 0.5, crops_root=tmp_path / "out")[0].x.shape == (6, 150, 150, 3)


def test_training_without_a_crops_root_says_how_to_set_one(tmp_path):
    from components.train.data import TrainingDataError, from_store

    store = store_with_crops("sqlite://", lambda number, data: f"crops/{number:02d}_0.jpg")
    with pytest.raises(TrainingDataError, match="FACES_CROPS_ROOT"):
        from_store(store, min_faces=3, min_cohesion=0.5)


def test_serving_reads_medoid_crops_through_the_resolver(tmp_path):
    from components.serving.identities import read_crop as serving_read_crop
    from components.serving.identities import read_crops

    path = tmp_path / "crops" / "a.jpg"
    path.parent.mkdir()
    path.write_bytes(jpeg(3))
    (tmp_path / "crops" / "bad.jpg").write_bytes(b"not an image")
    assert np.array_equal(serving_read_crop("crops/a.jpg", tmp_path), decoded(jpeg(3)))
    assert serving_read_crop("crops/a.jpg", None) is None
    found = read_crops(["crops/a.jpg", None, "crops/bad.jpg", "crops/gone.jpg", "../x.jpg", str(path)], str(tmp_path))
    assert [crop is not None for crop in found] == [True, False, False, False, False, True]


def test_a_users_not_this_person_becomes_a_training_negative(tmp_path):
    """A cannot-link correction between faces of two identities reaches the training pairs."""
    from components.identities.store import set_links_in
    from components.train.data import from_store

    (tmp_path / "out").mkdir()
    store = store_with_crops(f"sqlite:///{tmp_path / 'out' / 'faces.db'}", crops_under(tmp_path / "out"))
    data, _ = from_store(store, min_faces=3, min_cohesion=0.5)
    assert len(data.cannot_link) == 0  # one face per photo: no pair from the photos
    a, b = int(data.face_ids[data.labels == 0][0]), int(data.face_ids[data.labels == 1][0])
    with store.session() as session:
        set_links_in(session, "cannot", [(a, b)], datetime(2024, 1, 2, tzinfo=UTC), "test")
    data, _ = from_store(store, min_faces=3, min_cohesion=0.5)
    pairs = {tuple(sorted((int(data.face_ids[i]), int(data.face_ids[j])))) for i, j in data.cannot_link}
    assert pairs == {tuple(sorted((a, b)))}


def test_a_model_swap_while_medoids_are_re_embedded_asks_again(tmp_path):
    """The service re-embeds stale medoids with the model in service; if that model changed mid-way,
    the index says so with its own error (``/identify`` then asks again), not as an unreadable store."""
    import asyncio

    from components.serving.identities import IdentityIndex, ModelChangedError

    (tmp_path / "out").mkdir()
    store = store_with_crops(f"sqlite:///{tmp_path / 'out' / 'faces.db'}", crops_under(tmp_path / "out"))
    index = IdentityIndex(store.url, crops_root=str(tmp_path / "out"))

    async def swapped(crops):
        return np.zeros((len(crops), 16), np.float32), "the next model"

    async def same(crops):
        return unit(np.ones((len(crops), 16))).astype(np.float32), "a new model"

    with pytest.raises(ModelChangedError, match="model changed from a new model to the next model"):
        asyncio.run(index.medoids("a new model", swapped))
    medoids = asyncio.run(index.medoids("a new model", same))
    assert medoids.model_version == "a new model" and len(medoids.ids) == 2 and medoids.unavailable == 0
