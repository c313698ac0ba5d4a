"""One engine: `faces run` and the face_ingest steps give the same faces; `faces run` follows the champion.

The same photos (LFW people, and a collage where the labelled person is not the
largest face) go through ``faces run`` and through the DAG's steps: every photo gets
the same faces (boxes), the same main face (the folder label lands on the same face)
and the same embeddings. Then a second model version is registered and promoted in
the embedded MLflow store, and ``faces run`` re-embeds its store before ingesting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from components.embed.thresholds import Thresholds
from components.settings import PROJECT_ROOT, load_settings
from tests.fixtures.models import perturbed_copy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LFW = PROJECT_ROOT / "data" / "lfw" / "images_deepfunneled"
PEOPLE = ("Colin_Powell", "Tony_Blair", "Hugo_Chavez")


def faces_by_photo(url: str) -> dict[str, list[tuple]]:
    """sha256 -> [(box, label, embedding or None, model version)] in face order."""
    from components.identities import IdentityStore
    from components.identities import store as db

    store = IdentityStore(url)
    with store.session() as session:
        rows = session.execute(select(db.ImageRow.sha256, db.FaceRow).join(db.FaceRow, db.FaceRow.image_id == db.ImageRow.id)
                               .order_by(db.ImageRow.sha256, db.FaceRow.face_index)).all()
        out: dict[str, list[tuple]] = {}
        for sha, face in rows:
            vector = None if face.embedding is None else np.frombuffer(face.embedding, np.float32)
            out.setdefault(sha, []).append(((face.box_x, face.box_y, face.box_w, face.box_h), face.label, vector,
                                            face.model_version))
    store.engine.dispose()
    return out


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    for person in PEOPLE:
        (folder / person).mkdir(parents=True)
        for number in (1, 2, 3):
            name = f"{person}_{number:04d}.jpg"
            (folder / person / name).write_bytes((LFW / person / name).read_bytes())
    # Tony Blair small and centred, Colin Powell large and off-centre: the label names the centred face.
    canvas = Image.new("RGB", (900, 600), (90, 90, 90))
    canvas.paste(Image.open(LFW / "Colin_Powell" / "Colin_Powell_0004.jpg").resize((400, 400)), (0, 100))
    canvas.paste(Image.open(LFW / "Tony_Blair" / "Tony_Blair_0004.jpg").resize((200, 200)), (350, 200))
    canvas.save(folder / "Tony_Blair" / "collage.jpg")
    return folder


def test_faces_run_and_the_dag_steps_find_the_same_faces(photos, tmp_path, monkeypatch):
    from components.pipeline.run import folder_photos, run
    from components.workflow import ingest as steps

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'no-registry' / 'mlflow.db'}")
    monkeypatch.setenv("FACES_WORK_URI", str(tmp_path / "work"))
    monkeypatch.setenv("FACES_STORE_URL", f"sqlite:///{tmp_path / 'work.db'}")
    settings = load_settings()
    found, _ = folder_photos(photos, folder_labels=True)
    report = run(found, tmp_path / "run", settings, progress=False)
    assert report["model"]["source"] == "local" and report["model"]["reembedded"] is None
    ingested = steps.run_ingest(str(photos), folder_labels=True, track=True)
    # The ingest run's MLflow params carry every detector setting, as `faces run`'s report does.
    import mlflow

    params = mlflow.MlflowClient().get_run(ingested["mlflow_run"].split("/")[-1]).data.params
    detect = {key.removeprefix("detect."): value for key, value in params.items() if key.startswith("detect.")}
    assert detect == {key: str(value) for key, value in report["params"]["detect"].items()}
    assert {"mode", "min_face_fraction", "scale_factor", "stage_thresholds", "max_side"} <= set(detect)

    by_run = faces_by_photo(f"sqlite:///{tmp_path / 'run' / 'faces.db'}")
    by_steps = faces_by_photo(f"sqlite:///{tmp_path / 'work.db'}")
    assert set(by_run) == set(by_steps) and len(by_run) == 10
    for sha, faces in by_run.items():
        other = by_steps[sha]
        assert len(faces) == len(other)
        for (box, label, vector, version), (box2, label2, vector2, version2) in zip(faces, other):
            assert np.allclose(box, box2, atol=1e-6) and label == label2 and version == version2
            assert (vector is None) == (vector2 is None)
            if vector is not None:
                assert np.allclose(vector, vector2, atol=1e-5)
    collage = next(faces for faces in by_run.values() if len(faces) == 2)
    labelled = [face for face in collage if face[1] is not None]
    assert len(labelled) == 1 and labelled[0][1] == "Tony_Blair"
    assert labelled[0][0][2] < max(face[0][2] for face in collage)  # not the largest face: the centred one


def test_faces_run_reembeds_its_store_when_the_champion_changes(photos, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    (tmp_path / "mlflow").mkdir()
    out = tmp_path / "out"

    def faces(*args: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "components.cli", *args], cwd=PROJECT_ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    faces("run", "--input", str(photos / "Colin_Powell"), "--out", str(out), "--no-progress")
    first = json.loads((out / "report.json").read_text())
    settings = load_settings()
    new_thresholds = Thresholds(verify=0.9, cluster=0.94, assign=0.94)
    register = (
        "import sys; from components.track import registry, start_run; from components.embed.thresholds import Thresholds\n"
        "with start_run('test', 'register') as run:\n"
        f"    version = registry.register_embedder(sys.argv[1], run.info.run_id, thresholds=Thresholds(**{new_thresholds.as_dict()!r}))\n"
        "registry.set_alias('champion', version); print(version)\n")
    model = perturbed_copy(settings.model_path, tmp_path / "perturbed.keras")
    version = int(subprocess.run([sys.executable, "-c", register, str(model)], cwd=PROJECT_ROOT, env=env,
                                 capture_output=True, text=True, timeout=300, check=True).stdout.split()[-1])

    faces("run", "--input", str(photos / "Tony_Blair"), "--out", str(out), "--no-progress")
    second = json.loads((out / "report.json").read_text())
    assert second["model"]["registry_version"] == version and second["model"]["thresholds"] == new_thresholds.as_dict()
    assert second["model"]["model_version"] != first["model"]["model_version"]
    moved = second["model"]["reembedded"]
    assert moved["changed"] and moved["faces"] == first["store"]["usable_faces"]
    stored = faces_by_photo(f"sqlite:///{out / 'faces.db'}")
    assert {face[3] for faces_ in stored.values() for face in faces_ if face[2] is not None} == {second["model"]["model_version"]}
    again = json.loads(faces("reembed", "--db", f"sqlite:///{out / 'faces.db'}", "--no-progress").stdout)
    assert again["changed"] is False
