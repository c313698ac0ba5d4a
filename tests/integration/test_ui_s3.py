"""The people page on the S3-backed stack's layout: crops and photos are objects on a real S3 server (SeaweedFS).

The store records ``s3://`` URIs, as the DAGs write them; thumbnails and photos are read
from S3, and deleting a person removes its crops there.
"""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from components.identities import IdentityStore, NewFace
from components.identities.lifecycle import Policy, update_identities
from components.settings import load_settings
from components.storage import open_storage
from components.ui.app import create_app
from components.ui.security import API_KEY_ENV

pytestmark = pytest.mark.integration

DIM = 16
POLICY = Policy(assign_threshold=0.85, cluster_threshold=0.9)
KEY = "s3-ui-key"


def unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def jpeg(size: tuple[int, int], colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def world(seaweedfs_s3, monkeypatch, tmp_path):
    for name, value in seaweedfs_s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FACES_CROPS_ROOT", raising=False)
    work = open_storage(f"s3://{seaweedfs_s3.new_bucket('ui')}/work")
    store = IdentityStore(f"sqlite:///{tmp_path / 'faces.db'}")
    centres = unit(np.random.default_rng(0).normal(size=(2, DIM)))
    rng = np.random.default_rng(1)
    for number, person in enumerate([0, 0, 0, 1, 1]):
        crop = work.uri(f"crops/{number:02d}_0.jpg")
        work.put_bytes(f"crops/{number:02d}_0.jpg", jpeg((150, 150), (200, 40 * number, 60)))
        photo = work.uri(f"photos/{number}.jpg")
        work.put_bytes(f"photos/{number}.jpg", jpeg((240, 200), (80, 80, 80)))
        face = NewFace(0, (30.0, 30.0, 100.0, 110.0), np.zeros((5, 2)), 0.99, 1.0, [],
                       unit(centres[person] + rng.normal(scale=0.02, size=DIM)), "test", crop)
        store.add_image(f"{number:064x}", photo, (240, 200), [face], "v", None)
    update_identities(store, policy=POLICY, clock=lambda: datetime(2024, 1, 1, tzinfo=UTC))
    app = create_app(store, load_settings(), environ={API_KEY_ENV: KEY}, crops_root=None, policy=POLICY)
    client = TestClient(app, base_url="http://127.0.0.1")
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
    assert client.post("/login", data={"csrf": token, "secret": KEY}, follow_redirects=False).status_code == 303
    return {"store": store, "work": work, "client": client}


def test_thumbnails_photos_and_deletion_go_through_s3(world):
    store, work, client = world["store"], world["work"], world["client"]
    people = store.identity_list()
    assert sorted(person["size"] for person in people) == [2, 3]
    page = client.get("/").text
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    for person in people:
        thumb = client.get(f"/faces/{person['medoid_face_id']}/thumb.jpg")
        assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size == (112, 112)
        photo = client.get(f"/faces/{person['medoid_face_id']}/photo.jpg")
        assert photo.status_code == 200 and Image.open(io.BytesIO(photo.content)).size == (240, 200)
    small = min(people, key=lambda person: person["size"])
    crops = {face["crop"] for identity in store.identities() if identity["id"] == small["id"] for face in identity["faces"]}
    answer = client.post(f"/people/{small['id']}/delete", data={"csrf": token, "confirm": "yes"}, follow_redirects=True)
    assert f"deleted #{small['id']}" in answer.text
    left = {work.uri(key) for key in work.list("crops/")}
    assert not crops & left and len(left) == 3, "the person's crops are gone from S3, the others stay"
    assert client.get(f"/faces/{small['medoid_face_id']}/thumb.jpg").status_code == 404
