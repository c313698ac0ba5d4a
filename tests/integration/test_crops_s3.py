"""Crops stored as ``s3://`` objects (the workflow's S3 work area), on a real S3 server (SeaweedFS).

An identity store whose crops live in S3: ``faces identities delete`` (run as a user
runs it) removes the identity's crops from the bucket and leaves everyone else's;
training (``from_store``) and serving read them; an unreachable S3 server leaves the
store unchanged and a second delete finishes the job.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import yaml

from components.identities import IdentityStore, NewFace, operations
from components.identities.crops import delete_crops, read_crop
from components.identities.lifecycle import Policy, update_identities
from components.storage import open_storage
from tests.fixtures.seaweedfs import free_ports

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DIM = 16
POLICY = Policy(assign_threshold=0.85, cluster_threshold=0.9)
PHOTOS_PER_PERSON = (4, 3, 3)


def unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def jpeg(seed: int) -> bytes:
    """A 150x150 JPEG (an aligned crop's size) of seeded noise."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, size=(150, 150, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def decoded(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture
def s3_env(seaweedfs_s3, monkeypatch):
    for name, value in seaweedfs_s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FACES_CROPS_ROOT", raising=False)
    return seaweedfs_s3


@pytest.fixture
def world(s3_env, tmp_path) -> dict:
    """Three people (4, 3, 3 photos) in a SQLite store; every crop is an object in S3, as the workflow writes them."""
    work = open_storage(f"s3://{s3_env.new_bucket('crops')}/work")
    out = tmp_path / "out"
    out.mkdir()
    url = f"sqlite:///{out / 'faces.db'}"
    store = IdentityStore(url)
    centres = unit(np.random.default_rng(0).normal(size=(3, DIM)))
    rng = np.random.default_rng(1)
    person_of_crop: dict[str, int] = {}
    content: dict[str, bytes] = {}
    number = 0
    for person, photos in enumerate(PHOTOS_PER_PERSON):
        for _ in range(photos):
            sha = f"{number:02x}" + "0" * 62
            data = jpeg(number)
            key = f"crops/{sha[:2]}/{sha}_0.jpg"
            work.put_bytes(key, data)
            uri = work.uri(key)
            person_of_crop[uri], content[uri] = person, data
            face = NewFace(0, (0.0, 0.0, 9.0, 9.0), np.zeros((5, 2)), 0.99, 1.0, [],
                           unit(centres[person] + rng.normal(scale=0.02, size=DIM)), "test", uri)
            store.add_image(sha, f"photos/{number}.jpg", (99, 99), [face], "v", None)
            number += 1
    update_identities(store, policy=POLICY, clock=lambda: datetime(2024, 1, 1, tzinfo=UTC), force_pool=True)
    shown = {item["id"]: operations.show(store, item["id"]) for item in store.identity_list()}
    crops_of = {identity: sorted(face["crop"] for face in summary["faces"]) for identity, summary in shown.items()}
    identity_of = {person_of_crop[crops[0]]: identity for identity, crops in crops_of.items()}
    assert sorted(len(crops) for crops in crops_of.values()) == sorted(PHOTOS_PER_PERSON)
    assert all(len({person_of_crop[crop] for crop in crops}) == 1 for crops in crops_of.values())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["run"]["out_dir"] = str(out)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return {"work": work, "url": url, "store": store, "out": out, "identity": identity_of, "crops": crops_of,
            "content": content, "params": tmp_path / "params.yaml"}


def keys(world) -> set[str]:
    return {world["work"].uri(key) for key in world["work"].list()}


def faces_cli(world: dict, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``faces identities --db <store> ...`` as a user runs it (the installed console script)."""
    script = Path(sys.executable).parent / "faces"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "components.cli"]
    environment = {**os.environ, **(env or {}), "FACES_PARAMS": str(world["params"])}
    return subprocess.run([*command, "identities", "--db", world["url"], *args], env=environment, input="",
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_cli_delete_removes_the_identitys_crops_from_s3_and_keeps_the_others(world, s3_env):
    identity = world["identity"][0]
    doomed = world["crops"][identity]
    others = set(keys(world)) - set(doomed)
    assert set(doomed) <= keys(world) and others
    gone_before = doomed[0]
    world["work"].delete(gone_before.split("/work/", 1)[1])  # already gone: deletion is idempotent

    result = faces_cli(world, "delete", str(identity), "--yes", env=s3_env.env())

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"id": identity, "faces_deleted": len(doomed), "crops_removed": len(doomed) - 1,
                                         "crops_missing": 1, "crops_refused": 0}
    assert keys(world) == others  # the bucket listing: exactly everyone else's crops
    store = IdentityStore(world["url"])
    assert identity not in {item["id"] for item in store.identity_list()}
    assert {item["id"] for item in store.identity_list()} == {world["identity"][1], world["identity"][2]}


def test_cli_delete_without_s3_settings_is_a_clear_error_and_changes_nothing(world):
    identity = world["identity"][1]
    before = IdentityStore(world["url"]).identity_list()
    env = {name: "" for name in ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")}
    result = faces_cli(world, "delete", str(identity), "--yes", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "S3_ENDPOINT_URL is not set" in result.stderr and "nothing was deleted" in result.stderr
    assert IdentityStore(world["url"]).identity_list() == before
    assert set(world["crops"][identity]) <= keys(world)


def test_unreachable_s3_leaves_the_store_unchanged_and_a_rerun_finishes(world, s3_env, monkeypatch):
    identity = world["identity"][2]
    store = world["store"]
    before = (store.identity_list(), store.counts())
    (closed,) = free_ports(1)
    for name in ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{closed}")
    with pytest.raises(operations.IdentityError, match="(?s)cannot reach the S3 server.*run the delete again"):
        operations.delete_identity(store, identity, crops_root=str(world["out"]), actor="test")
    assert (store.identity_list(), store.counts()) == before
    assert set(world["crops"][identity]) <= keys(world)

    for name in ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(name, s3_env.endpoint_url)
    result = operations.delete_identity(store, identity, crops_root=str(world["out"]), actor="test")
    assert result["crops_removed"] == result["faces_deleted"] == len(world["crops"][identity])
    assert not set(world["crops"][identity]) & keys(world)
    assert delete_crops(world["crops"][identity], None).missing == world["crops"][identity]  # idempotent


def test_training_reads_s3_crops_of_the_store(world):
    from sqlalchemy import select

    from components.identities.store import FaceRow
    from components.train.data import from_store

    data, chosen = from_store(world["store"], min_faces=3, min_cohesion=0.5)

    assert len(data.classes) == 3 and data.x.shape == (sum(PHOTOS_PER_PERSON), 150, 150, 3)
    with world["store"].session() as session:
        crop_of = dict(session.execute(select(FaceRow.id, FaceRow.crop_path)).all())
    for face, crop, label in zip(data.face_ids, data.x, data.labels):
        uri = crop_of[int(face)]
        assert uri.startswith("s3://")
        assert np.array_equal(crop, decoded(world["content"][uri]))  # the very pixels that were uploaded
        assert int(chosen.identities[label]) in {i for i, crops in world["crops"].items() if uri in crops}


def test_serving_reads_s3_medoid_crops(world):
    from components.serving.identities import read_crops

    uris = [crops[0] for crops in world["crops"].values()]
    assert read_crop(uris[0]) == world["content"][uris[0]]
    crops = read_crops([*uris, uris[0].replace(".jpg", "_gone.jpg")], world["out"])
    assert [crop.shape if crop is not None else None for crop in crops] == [(150, 150, 3)] * len(uris) + [None]
