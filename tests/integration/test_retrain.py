"""`faces retrain` end to end on a small LFW subset, against a real MLflow (SQLite, temp dir).

The subset: 8 people of people.txt folds 1-5 (the stream) and 8 of folds 6-10 (held
out), 12 photos each, through the real detector, the real pretrained embedder, the
identity life cycle and the training loop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from components.settings import PROJECT_ROOT
from tests.integration.test_mlflow_server import postgres_database  # noqa: F401 (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = PROJECT_ROOT / "models" / "face_recognition_net.keras"


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def _params(tmp_path, **retrain) -> str:
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["retrain"].update({"min_faces": 3, "min_cohesion": 0.8, "identities_per_batch": 4, "faces_per_identity": 3,
                              "steps_per_epoch": 4, "epochs": 2, "held_out_share": 0.25, "stream_batches": 4, **retrain})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def _faces(args, tmp_path, uri):
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "components.cli", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_retrain_cycle_registers_a_challenger_and_records_the_decision(tmp_path, mlflow_store):
    if not (PROJECT_ROOT / "data" / "lfw" / "people.txt").is_file() or not MODEL.is_file():
        pytest.skip("LFW or the pretrained model missing (make setup)")
    from mlflow import MlflowClient

    from components.track.registry import MODEL_NAME

    # A margin no model can clear: the champion must stay, whatever the challenger scores.
    args = ["--params", _params(tmp_path, promote_margin=1.0), "retrain", "--limit-people", "8", "--no-progress",
            "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "retrain.json")]
    done = _faces(args, tmp_path, mlflow_store)
    assert done.returncode == 0, done.stderr[-3000:]

    client = MlflowClient(tracking_uri=mlflow_store, registry_uri=mlflow_store)
    assert int(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == 1  # the pretrained baseline
    challenger = client.get_model_version_by_alias(MODEL_NAME, "challenger")
    assert int(challenger.version) == 2
    assert challenger.tags["base_version"] == "1" and challenger.tags["origin"] == "self-labelled fine-tune"

    summary = json.loads((tmp_path / "retrain.json").read_text())
    cycle = summary["cycles"][0]
    assert cycle["decision"]["decision"] == "keep" and cycle["decision"]["champion_after"] == 1
    for side in ("champion", "challenger"):
        assert 0.5 < cycle[side]["accuracy"] <= 1.0 and 0.0 <= cycle[side]["bcubed_f1"] <= 1.0
    assert cycle["labels"]["identities"] >= 4

    # The comparison and the decision are in the cycle's MLflow run, side by side.
    run = client.get_run(cycle["mlflow"]["cycle_run_id"])
    assert run.data.tags["decision"] == "keep"
    assert {"champion_accuracy", "challenger_accuracy", "delta_accuracy", "champion_bcubed_f1"} <= set(run.data.metrics)
    local = client.download_artifacts(run.info.run_id, "decision.json", str(tmp_path))
    assert json.loads(open(local).read())["challenger_version"] == 2
    train_run = client.get_run(cycle["mlflow"]["train_run_id"])
    assert train_run.data.tags["mlflow.parentRunId"] == run.info.run_id
    artifacts = {item.path for item in client.list_artifacts(train_run.info.run_id)}
    assert {"roc.png", "tsne.png", "history.json"} <= artifacts

    # Running it again changes nothing: the cycle from this champion already ran.
    again = _faces(args, tmp_path, mlflow_store)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(client.search_model_versions(f"name='{MODEL_NAME}'")) == 2


def test_damaged_champion_is_refused_and_kept(tmp_path, mlflow_store):
    from components import track
    from components.settings import load_settings
    from components.track import registry
    from components.train.retrain import RetrainError, retrain_cycle

    damaged = tmp_path / "damaged.keras"
    damaged.write_bytes(MODEL.read_bytes()[:10000])
    with track.start_run("retrain", "damaged") as run:
        version = registry.register_embedder(damaged, run.info.run_id)
    registry.set_alias("champion", version)
    with pytest.raises(RetrainError, match="cannot load the champion.*not a loadable Keras model"):
        retrain_cycle(load_settings(), tmp_path / "work", limit_people=8, progress=False)
    assert registry.alias_version("champion") == version
    assert registry.alias_version("challenger") is None


def test_decision_needs_the_margin():
    from components.train.retrain import decide

    champion = {"accuracy": 0.990, "bcubed_f1": 0.80}
    assert decide(champion, {"accuracy": 0.993, "bcubed_f1": 0.7}, "accuracy", 0.002)["decision"] == "promote"
    assert decide(champion, {"accuracy": 0.991, "bcubed_f1": 0.9}, "accuracy", 0.002)["decision"] == "keep"
    assert decide(champion, {"accuracy": 0.980, "bcubed_f1": 0.9}, "bcubed_f1", 0.05)["decision"] == "promote"
    with pytest.raises(ValueError, match="promote_metric"):
        decide(champion, champion, "loss", 0.0)


def test_retrain_from_a_password_protected_store_writes_the_password_nowhere(tmp_path, mlflow_store,
                                                                              postgres_database):
    """Self-labels from an identity store in PostgreSQL reached with a password: the cycle runs, and the
    password is in no MLflow param, tag, metric or artifact, nor in the outputs."""
    if not (PROJECT_ROOT / "data" / "lfw" / "people.txt").is_file() or not MODEL.is_file():
        pytest.skip("LFW or the pretrained model missing (make setup)")
    secret = "pw-" + os.urandom(6).hex()
    store = f"postgresql+psycopg2://postgres:{secret}@127.0.0.1:5432/{postgres_database}"  # trust auth ignores it
    photos = tmp_path / "photos"
    people = ("Colin_Powell", "Tony_Blair", "Gerhard_Schroeder", "Hugo_Chavez", "Ariel_Sharon", "Donald_Rumsfeld")
    for person in people:
        (photos / person).mkdir(parents=True)
        for number in range(1, 7):
            name = f"{person}_{number:04d}.jpg"
            (photos / person / name).symlink_to(PROJECT_ROOT / "data" / "lfw" / "images_deepfunneled" / person / name)
    out = tmp_path / "out"
    os.environ["FACES_CROPS_ROOT"] = str(out)  # relative crop paths of a server database start here
    try:
        done = _faces(["run", "--input", str(photos), "--out", str(out), "--db", store, "--no-progress"], tmp_path,
                      mlflow_store)
        assert done.returncode == 0, done.stderr[-3000:]
        args = ["--params", _params(tmp_path, min_faces=3, promote_margin=1.0), "retrain", "--db", store,
                "--limit-people", "8", "--no-progress", "--workdir", str(tmp_path / "work"),
                "--out", str(tmp_path / "retrain.json")]
        done = _faces(args, tmp_path, mlflow_store)
    finally:
        del os.environ["FACES_CROPS_ROOT"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert secret not in done.stdout + done.stderr
    summary = json.loads((tmp_path / "retrain.json").read_text())
    assert summary["cycles"][0]["labels"]["source"].startswith("identity store postgresql+psycopg2://postgres:***@")
    leaks = [str(path) for path in tmp_path.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]
    assert leaks == [], f"the password was written to {leaks}"  # the MLflow database and artifacts included
