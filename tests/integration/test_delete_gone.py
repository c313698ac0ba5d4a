"""Deleting a person leaves none of their faces behind: store, S3 crops, batch artefacts, quarantine, MLflow.

The face_ingest steps (``python -m components.workflow ingest``, real MTCNN and
embedder) put two LFW people into an identity store, with the work area (crops, batch
artefacts) in S3 on a real SeaweedFS server; a second batch holding one of the
person's photos and a broken file fails validation and is quarantined, in S3 too.
``faces identities delete`` (as a user runs it) must then leave no copy of that
person's faces anywhere: no crop, no aligned pixels in a ``detections`` file, no
embedding in an ``embeddings`` file, no quarantined copy of their photo, nothing in
MLflow's store or in the store file's free pages, while the other person is intact.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
LFW = ROOT / "data" / "lfw" / "images_deepfunneled"
PEOPLE = {"Aaron_Peirsol": 3, "Laura_Bush": 3}
DOOMED = "Aaron_Peirsol"


def npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}


def command(args: list[str], env: dict, cwd: Path, ok=(0,)) -> subprocess.CompletedProcess:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode in ok, f"{args[:4]} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def faces(*args: str, env: dict, cwd: Path, ok=(0,)) -> subprocess.CompletedProcess:
    return command([str(Path(sys.executable).parent / "faces"), *args], env, cwd, ok)


def test_deleting_a_person_removes_every_copy_of_their_faces(seaweedfs_s3, tmp_path, monkeypatch):
    if not LFW.is_dir():
        pytest.skip("LFW is not restored (make setup)")
    bucket = seaweedfs_s3.new_bucket("gone")
    photos = tmp_path / "photos"
    for person, count in PEOPLE.items():
        (photos / person).mkdir(parents=True)
        for path in sorted((LFW / person).iterdir())[:count]:
            shutil.copy(path, photos / person / path.name)
    bad = tmp_path / "bad"
    (bad / DOOMED).mkdir(parents=True)
    doomed_photo = sorted((photos / DOOMED).iterdir())[0]
    shutil.copy(doomed_photo, bad / DOOMED / doomed_photo.name)
    (bad / "broken.jpg").write_bytes(doomed_photo.read_bytes()[:300])  # truncated: fails the image suite

    store = tmp_path / "faces.db"
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["validate"]["docs_dir"] = str(tmp_path / "validation")  # Data Docs of the rejected batch: here, not in runs/
    params["base"]["models_dir"] = str(ROOT / params["base"]["models_dir"])  # relative paths start at the params file
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("FACES_", "MLFLOW_"))}
    env.update(seaweedfs_s3.env(), FACES_WORK_URI=f"s3://{bucket}/work", FACES_QUARANTINE_URI=f"s3://{bucket}/quarantine",
               FACES_STORE_URL=f"sqlite:///{store}", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
               FACES_PARAMS=str(tmp_path / "params.yaml"), TF_CPP_MIN_LOG_LEVEL="3")
    python = [sys.executable, "-m", "components.workflow"]
    command([*python, "ingest", "--batch", str(photos), "--batch-id", "people", "--shard-size", "3", "--folder-labels"],
            env, tmp_path)
    rejected = command([*python, "ingest", "--batch", str(bad), "--batch-id", "broken"], env, tmp_path, ok=(3,))
    assert "quarantine" in rejected.stderr and (tmp_path / "validation" / "broken").is_dir()

    from components.storage import open_storage

    for name, value in seaweedfs_s3.env().items():  # this process reads the bucket too
        monkeypatch.setenv(name, value)
    s3 = open_storage(f"s3://{bucket}")

    def objects() -> dict[str, bytes]:
        return {key: s3.get_bytes(key) for key in s3.list()}

    # Who is who, from the store (the folder label names each photo's main face).
    with sqlite3.connect(store) as db:
        rows = db.execute("select f.id, i.sha256, f.face_index, f.crop_path, f.embedding, a.identity_id, i.label "
                          "from faces f join images i on i.id = f.image_id "
                          "left join assignments a on a.face_id = f.id").fetchall()
    identity = {label for *_, identity_id, label in rows if identity_id is not None and label == DOOMED}
    assert identity, rows
    targets = {identity_id for *_, identity_id, label in rows if label == DOOMED and identity_id is not None}
    assert len(targets) == 1, "the person is one identity"
    target = targets.pop()
    doomed = [row for row in rows if row[5] == target]
    kept = [row for row in rows if row[5] is not None and row[5] != target]
    assert len(doomed) >= 2 and kept
    doomed_keys = {(sha, index) for _, sha, index, *_ in doomed}
    doomed_shas = {sha for _, sha, *_ in doomed}

    # Every copy of the person's faces before the delete: the needles to look for afterwards.
    before = objects()
    needles = [row[4] for row in doomed]  # raw float32 embeddings
    pixels = []
    for key, data in before.items():
        if "/detections/" in key:
            arrays = npz(data)
            meta = json.loads(str(arrays["meta"]))
            for row, (photo, index) in enumerate(zip(arrays["photo"], arrays["face_index"])):
                if (meta["photos"][int(photo)]["sha256"], int(index)) in doomed_keys:
                    pixels.append(arrays["crops"][row].tobytes())
    assert len(pixels) == len(doomed)
    needles += pixels + [before[row[3].split(f"s3://{bucket}/", 1)[1]] for row in doomed]  # crops' JPEG bytes
    assert all(any(needle in data for data in before.values()) for needle in needles[len(doomed):])
    quarantined = [key for key in before if key.startswith("quarantine/") and "/batch/" in key]
    assert len(quarantined) == 2  # the person's photo and the broken file

    done = faces("identities", "--db", f"sqlite:///{store}", "delete", str(target), "--yes", env=env, cwd=tmp_path)
    result = json.loads(done.stdout)
    assert result["faces_deleted"] == len(doomed) and result["crops_removed"] == len(doomed)
    purged = json.loads(next(line for line in done.stderr.splitlines() if line.startswith("purged: "))[8:])
    assert purged["faces"] == len(doomed) and purged["work_area"]["faces"] == len(doomed)
    assert purged["quarantine"]["deleted"] == 1

    after = objects()
    leaks = [(key, number) for key, data in after.items() for number, needle in enumerate(needles) if needle in data]
    assert leaks == [], f"copies of the deleted faces are left in S3: {leaks}"
    import hashlib

    assert not any(hashlib.sha256(data).hexdigest() in doomed_shas for key, data in after.items() if key.startswith("quarantine/"))
    assert any(key.endswith("broken.jpg") for key in after)  # the rest of the quarantine stays
    # Everyone else's crops, pixels and embeddings are intact.
    for _, sha, index, crop, embedding, *_ in kept:
        assert crop.split(f"s3://{bucket}/", 1)[1] in after
        assert any(embedding in data for key, data in after.items() if "/embeddings/" in key)
    local = [path for path in tmp_path.rglob("*") if path.is_file()
             for needle in needles if needle in path.read_bytes()]
    assert local == [], f"copies of the deleted faces are left in {sorted(set(map(str, local)))}"  # store, MLflow

    again = json.loads(faces("purge", "--db", f"sqlite:///{store}", env=env, cwd=tmp_path).stdout)
    assert again["faces"] == 0  # nothing left to purge; a second run changes nothing
    assert objects() == after
