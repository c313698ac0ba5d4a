"""The model life cycle on the S3-backed stack: register -> promote -> re-embed -> serve.

Real parts throughout: SeaweedFS S3 holds the photos and the work area (crops, batch
artefacts), an MLflow server (PostgreSQL backend, S3 artifacts) holds the registry, the
``face_ingest`` steps fill the identity store, the real embedder (and a copy with
perturbed weights: a second model version) embeds, and a real ``bentoml serve`` answers.

What must hold: while the store is on the old model, a promotion changes nothing the
store or serving compares (new photos are still embedded with the store's model); the
re-embed moves every face to the new version, recomputes medoids and switches the
thresholds; a re-embed killed midway and resumed ends exactly where an uninterrupted
one does; serving follows the store; no comparison across versions is ever attempted;
and the same photos give the same faces, main face and embeddings through ``faces run``,
the DAG steps and the service.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from components.embed.thresholds import Thresholds
from components.serving.launch import free_port, start_server, stop_server, wait_ready
from components.settings import PROJECT_ROOT, load_settings
from tests.fixtures.models import perturbed_copy
from tests.integration.test_mlflow_server import mlflow_server, postgres_database  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LFW = PROJECT_ROOT / "data" / "lfw" / "images_deepfunneled"
PEOPLE = ("Colin_Powell", "Tony_Blair", "Gerhard_Schroeder", "Hugo_Chavez", "Ariel_Sharon")
API_KEY = "lifecycle-key-5c1e"
# The second version's own calibration: deliberately not params.yaml's, so a test can tell them apart.
NEW_THRESHOLDS = Thresholds(verify=0.9, cluster=0.93, assign=0.935)


def lfw(person: str, number: int) -> Path:
    return LFW / person / f"{person}_{number:04d}.jpg"


def upload(storage, numbers: range) -> None:
    for person in PEOPLE:
        for number in numbers:
            storage.put_bytes(f"{person}/{lfw(person, number).name}", lfw(person, number).read_bytes())


def snapshot(url: str) -> dict:
    """Everything a re-embed may change: faces' vectors and versions, identities, assignments, models."""
    from components.identities import IdentityStore
    from components.identities import store as db

    store = IdentityStore(url)
    with store.session() as session:
        faces = session.execute(select(db.FaceRow.id, db.FaceRow.model_version, db.FaceRow.embedding)
                                .order_by(db.FaceRow.id)).all()
        identities = session.execute(select(db.IdentityRow.id, db.IdentityRow.medoid_face_id, db.IdentityRow.size)
                                     .order_by(db.IdentityRow.id)).all()
        assignments = session.execute(select(db.AssignmentRow.face_id, db.AssignmentRow.identity_id,
                                             db.AssignmentRow.similarity).order_by(db.AssignmentRow.face_id)).all()
        staged = session.scalar(select(db.func.count()).select_from(db.StagedEmbeddingRow))
    snap = {"faces": [tuple(row) for row in faces], "identities": [tuple(row) for row in identities],
            "assignments": [(f, i, round(s, 6)) for f, i, s in assignments], "staged": staged,
            "active": store.model("active").describe() | {"since": None}, "target": store.model("target")}
    store.engine.dispose()
    return snap


def test_promotion_reembeds_the_store_and_serving_follows(mlflow_server, seaweedfs_s3, tmp_path, monkeypatch):  # noqa: F811
    from components.engine import champion_model
    from components.engine.reembed import reembed
    from components.identities import IdentityStore
    from components.identities import store as db
    from components.identities.lifecycle import medoid_row
    from components.serving.model import resolve_champion
    from components.storage import open_storage
    from components.track import registry, start_run
    from components.workflow import ingest as steps
    from components.workflow.reembed import reembed_store

    bucket = seaweedfs_s3.new_bucket("lifecycle")
    store_url = f"sqlite:///{tmp_path / 'faces.db'}"
    for name, value in seaweedfs_s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server["url"])
    monkeypatch.setenv("FACES_WORK_URI", f"s3://{bucket}/work")
    monkeypatch.setenv("FACES_STORE_URL", store_url)
    monkeypatch.delenv("FACES_PARAMS", raising=False)
    settings = load_settings()
    db.CROSS_VERSION_REFUSALS.clear()

    # 1. Ingest through the DAG's steps: the registry has no champion yet, so the store adopts the local model.
    photos = open_storage(f"s3://{bucket}/photos/first")
    upload(photos, range(1, 5))
    first = steps.run_ingest(f"s3://{bucket}/photos/first", folder_labels=True, track=False)
    assert first["photos_new"] == 20 and first["usable_faces"] >= 18  # one LFW face may fail a quality gate
    store = IdentityStore(store_url)
    old = store.model("active")
    assert old.source == "local" and old.thresholds == Thresholds.from_settings(settings).as_dict()
    crops = [key for key in open_storage(f"s3://{bucket}/work").list("crops/")]
    assert len(crops) == store.counts()["faces"]  # crops live in S3, not on local disk

    # 2. Register the perturbed model with its own thresholds and promote it.
    model_file = perturbed_copy(settings.model_path, tmp_path / "perturbed.keras")
    with start_run("lifecycle-test", "register") as run:
        version = registry.register_embedder(model_file, run.info.run_id, thresholds=NEW_THRESHOLDS)
    registry.set_alias("champion", version)
    new = champion_model(settings)
    assert new.registry_version == version and new.version != old.version and new.thresholds == NEW_THRESHOLDS

    # 3. Before the re-embed, new photos are embedded with the store's (old) model, and serving stays on it.
    upload(open_storage(f"s3://{bucket}/photos/second"), range(5, 7))
    second = steps.run_ingest(f"s3://{bucket}/photos/second", folder_labels=True, track=False)
    assert second["photos_new"] == 10
    assert set(store.embedded_versions()) == {old.version}
    before = resolve_champion()
    assert before.version is None and before.thresholds == Thresholds.from_dict(old.thresholds)

    # 4. Re-embed: once uninterrupted on a copy, once killed after two batches and resumed.
    shutil.copy(tmp_path / "faces.db", tmp_path / "copy.db")
    copy_url = f"sqlite:///{tmp_path / 'copy.db'}"
    reembed(IdentityStore(copy_url), new, settings, batch_size=8, progress=False)

    class Killed(BaseException):
        pass

    def kill_after_two(batches: int) -> None:
        if batches == 2:
            raise Killed

    with pytest.raises(Killed):
        reembed(store, new, settings, batch_size=8, progress=False, after_batch=kill_after_two)
    assert store.model("active").version == old.version  # nothing switched: everything still reads the old model
    assert set(store.embedded_versions()) == {old.version}
    assert resolve_champion().version is None
    report = json.loads(open_storage(f"s3://{bucket}/work").get_bytes(reembed_store(batch_size=8).split(f"s3://{bucket}/work/", 1)[1]))
    assert report["changed"] is True and report["faces"] == store.counts()["usable_faces"] - 16
    assert snapshot(store_url) == snapshot(copy_url)

    # 5. Every face on the new version, medoids recomputed under it, the new thresholds in force.
    assert set(store.embedded_versions()) == {new.version}
    active = store.model("active")
    assert (active.version, active.registry_version, active.thresholds) == (new.version, version, NEW_THRESHOLDS.as_dict())
    assert store.model("target") is None
    with store.session() as session:
        identities = session.execute(select(db.IdentityRow.id, db.IdentityRow.medoid_face_id)).all()
        assert len(identities) >= len(PEOPLE)
        for identity, medoid in identities:
            face_ids, _, vectors = db.identity_members(session, [identity])
            assert medoid == face_ids[medoid_row(vectors, settings.identities.medoid_sample_above, [settings.base.seed, identity])]
    assert reembed_store(batch_size=8).split("/")[-1].startswith("unchanged-")  # a second run does nothing

    # 6. New photos now go in with the new model; the life cycle uses its thresholds.
    upload(open_storage(f"s3://{bucket}/photos/third"), range(7, 8))
    third = steps.run_ingest(f"s3://{bucket}/photos/third", folder_labels=True, track=False)
    assert third["photos_new"] == 5 and set(store.embedded_versions()) == {new.version}
    assert third["assign_threshold"] == NEW_THRESHOLDS.assign

    # 7. A real BentoML service follows the store: new version, its thresholds; same faces as the DAG path.
    env = {**dict(__import__("os").environ), "FACES_API_KEY": API_KEY, "BENTOML_HOME": str(tmp_path / "bentoml"),
           "BENTOML_DO_NOT_TRACK": "True", "PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    process = start_server(env, port, log)
    try:
        wait_ready(url, process, log)
        with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=120) as client:
            a, b = lfw(PEOPLE[0], 1), lfw(PEOPLE[0], 2)
            answer = client.post("/verify", files={"photo_a": (a.name, a.read_bytes(), "image/jpeg"),
                                                   "photo_b": (b.name, b.read_bytes(), "image/jpeg")}).json()
            assert answer["model_version"] == new.version and answer["registry_version"] == version, answer
            assert answer["threshold"] == NEW_THRESHOLDS.verify and answer["same"] is True
            c = lfw(PEOPLE[1], 7)
            identified = client.post("/identify", files={"photo": (c.name, c.read_bytes(), "image/jpeg")}).json()
            assert identified["model_version"] == new.version and identified["threshold"] == NEW_THRESHOLDS.assign
            assert any(face["identity"] != "unknown" for face in identified["faces"]), identified
            embedded = client.post("/embed", files=[("photos", (c.name, c.read_bytes(), "image/jpeg"))]).json()
    finally:
        stop_server(process)
    with store.session() as session:
        image = session.scalar(select(db.ImageRow).where(db.ImageRow.path.endswith(c.name)))
        stored = sorted(image.faces, key=lambda face: face.face_index)
        served = embedded["photos"][0]["faces"]
        assert len(served) == len(stored)
        for row, face in zip(stored, served):
            assert np.allclose([row.box_x, row.box_y, row.box_w, row.box_h], face["box"], atol=0.1)
            if row.embedding is not None:
                assert np.allclose(np.frombuffer(row.embedding, np.float32), face["embedding"], atol=1e-4)
    assert dict(db.CROSS_VERSION_REFUSALS) == {}  # no comparison across versions was ever attempted
