"""`faces retrain` end to end from a real identity store, against a real MLflow (SQLite, temp dir).

The store: 12 LFW people with 10+ photos, 10 photos each, through `faces run` (real
MTCNN, the real pretrained embedder, the identity life cycle, crops on disk). The cycle
takes its self-labels and its held-out evidence from that store alone.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from components.settings import PROJECT_ROOT
from tests.integration.test_mlflow_server import postgres_database  # noqa: F401 (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = PROJECT_ROOT / "models" / "face_recognition_net.keras"
LFW = PROJECT_ROOT / "data" / "lfw"
PEOPLE = ("Colin_Powell", "Tony_Blair", "Gerhard_Schroeder", "Hugo_Chavez", "Ariel_Sharon", "Donald_Rumsfeld",
          "Jacques_Chirac", "Jean_Chretien", "John_Ashcroft", "Junichiro_Koizumi", "Serena_Williams", "Vladimir_Putin")


def _needs_data():
    if not (LFW / "people.txt").is_file() or not MODEL.is_file():
        pytest.skip("LFW or the pretrained model missing (make setup)")


def _faces(args, uri, env_extra=None):
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "TF_CPP_MIN_LOG_LEVEL": "2", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "components.cli", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def _params(folder, **retrain) -> str:
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["retrain"].update(retrain)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def _photos(folder, people=PEOPLE, per_person=10):
    for person in people:
        (folder / person).mkdir(parents=True)
        for number in range(1, per_person + 1):
            name = f"{person}_{number:04d}.jpg"
            (folder / person / name).symlink_to(LFW / "images_deepfunneled" / person / name)
    return folder


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store built by `faces run` (one per module: MTCNN over 120 photos)."""
    _needs_data()
    root = tmp_path_factory.mktemp("retrain-store")
    out = root / "out"
    done = _faces(["run", "--input", str(_photos(root / "photos")), "--out", str(out), "--folder-labels", "--no-progress"],
                  f"sqlite:///{root / 'unused.db'}")
    assert done.returncode == 0, done.stderr[-3000:]
    return {"url": f"sqlite:///{out / 'faces.db'}", "out": out}


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("FACES_LABELS_REMOTE", str(tmp_path / "dvc-remote"))  # label sets stay in the test's folder
    return uri


def test_a_cycle_from_the_store_registers_one_new_model_after_its_decision(tmp_path, store, mlflow_store):
    from mlflow import MlflowClient

    from components.track.registry import MODEL_NAME

    args = ["--params", _params(tmp_path), "retrain", "--db", store["url"], "--key", "run-1", "--no-progress",
            "--workdir", str(tmp_path / "work")]
    done = _faces(args, mlflow_store)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads((tmp_path / "work" / "run-1" / "outcome.json").read_text())

    # Labels and evidence come from the store: future photos and people held out whole.
    assert outcome["labels"]["source"].startswith("identity store sqlite:///")
    assert outcome["labels"]["identities"] >= 8
    noise = outcome["labels"]["against_folder_names"]
    assert noise["faces_with_folder_names"] >= 80 and noise["pairwise_precision"] > 0.9
    evidence = outcome["evidence"]
    assert evidence["future_faces"] > 0 and evidence["unseen_identities"] >= 2 and evidence["future_pairs"] > 0
    with open(tmp_path / "work" / "run-1" / "labels.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["split"] for row in rows} == {"train", "future", "unseen"}
    assert all(len(row["sha256"]) == 64 for row in rows)

    # The challenger is a different model: the head moved, and the registered file's head differs.
    assert outcome["training"]["moved"] > 0.01
    client = MlflowClient(tracking_uri=mlflow_store, registry_uri=mlflow_store)
    decision = outcome["decision"]
    assert decision["champion_before"] == 1 and decision["challenger_version"] == 2
    challenger = client.get_model_version(MODEL_NAME, "2")
    assert challenger.tags["faces.retrain.key"] == "run-1" and challenger.tags["base_version"] == "1"
    assert challenger.tags["faces.data_version"] == f"labels-md5:{outcome['labels']['data_version']}"
    from components.track.registry import resolve_version
    from components.train.head import head_kernel
    from components.train.loop import load_keras_model

    kernel_1 = head_kernel(load_keras_model(resolve_version(1, require_thresholds=False).path))
    kernel_2 = head_kernel(load_keras_model(resolve_version(2).path))
    assert not np.allclose(kernel_1, kernel_2)
    # Its thresholds are its own, fitted on the evidence.
    assert float(challenger.tags["faces.threshold.verify"]) == pytest.approx(
        outcome["challenger"]["verification_threshold"], abs=1e-4)

    # Both models side by side in the cycle's MLflow run, the decision beside them.
    run = client.get_run(outcome["mlflow"]["run_id"])
    assert run.data.tags["decision"] == decision["decision"]
    assert {"champion_accuracy", "challenger_accuracy", "delta_accuracy", "champion_future_auc",
            "challenger_unseen_auc"} <= set(run.data.metrics)
    assert run.data.tags["faces.data_version"] == f"labels-md5:{outcome['labels']['data_version']}"
    assert {"labels.csv", "comparison.json", "decision.json", "roc_champion_vs_challenger.png"} <= {
        item.path for item in client.list_artifacts(run.info.run_id)}
    champion = int(client.get_model_version_by_alias(MODEL_NAME, "champion").version)
    assert champion == (2 if decision["decision"] == "promote" else 1)
    assert decision["champion_after"] == champion

    # The same request again (a cleared task): the recorded outcome, no second version.
    again = _faces(args, mlflow_store)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(client.search_model_versions(f"name='{MODEL_NAME}'")) == 2
    # The outcome lost (killed after registering): the version is found by its key, not registered again.
    (tmp_path / "work" / "run-1" / "outcome.json").unlink()
    again = _faces(args, mlflow_store)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(client.search_model_versions(f"name='{MODEL_NAME}'")) == 2


def test_the_gate_keeps_the_champion_and_a_label_set_rebuilds_the_same_challenger(tmp_path, store, mlflow_store):
    """A margin no accuracy change can clear: the champion stays and says why. The cycle's label set
    is in the DVC remote under its md5; `--labels MD5` rebuilds the same training set and, seeded,
    the same challenger from the same champion."""
    from components.track.registry import alias_version, resolve_version
    from components.train.head import head_kernel
    from components.train.loop import load_keras_model
    from components.train.retrain import dvc_key

    remote = tmp_path / "dvc-remote"
    env = {"FACES_LABELS_REMOTE": str(remote)}
    params = _params(tmp_path, promote_margin=0.5)
    done = _faces(["--params", params, "retrain", "--db", store["url"], "--key", "strict", "--no-progress",
                   "--workdir", str(tmp_path / "work")], mlflow_store, env)
    assert done.returncode == 0, done.stderr[-3000:]
    first = json.loads(done.stdout)
    assert first["decision"]["decision"] == "keep" and "champion kept" in first["decision"]["reason"]
    assert alias_version("champion") == 1 and alias_version("challenger") == 2
    md5 = first["labels"]["data_version"]
    assert (remote / dvc_key(md5)).is_file() and first["labels"]["dvc_remote_object"].endswith(dvc_key(md5))

    done = _faces(["--params", params, "retrain", "--db", store["url"], "--labels", md5, "--key", "rebuild",
                   "--no-progress", "--workdir", str(tmp_path / "work")], mlflow_store, env)
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads(done.stdout)
    assert again["labels"]["data_version"] == md5 and again["labels"]["source"].startswith(f"label set {md5}")
    assert again["challenger"]["version"] == 3
    np.testing.assert_allclose(head_kernel(load_keras_model(resolve_version(3).path)),
                               head_kernel(load_keras_model(resolve_version(2).path)), atol=1e-4)

    # A label set that is not in the remote is a one-line error.
    done = _faces(["retrain", "--db", store["url"], "--labels", "0" * 32, "--no-progress",
                   "--workdir", str(tmp_path / "work")], mlflow_store, env)
    assert done.returncode == 2 and "is not in the DVC remote" in done.stderr


def test_too_small_a_store_is_refused_before_anything_is_registered(tmp_path, mlflow_store):
    _needs_data()
    out = tmp_path / "out"
    done = _faces(["run", "--input", str(_photos(tmp_path / "photos", PEOPLE[:2], 6)), "--out", str(out),
                   "--no-progress"], mlflow_store)
    assert done.returncode == 0, done.stderr[-3000:]
    done = _faces(["retrain", "--db", f"sqlite:///{out / 'faces.db'}", "--no-progress",
                   "--workdir", str(tmp_path / "work")], mlflow_store)
    assert done.returncode == 2 and "error: too little to hold out evidence" in done.stderr
    from components.track.registry import list_versions

    assert [info.version for info in list_versions()] == [1]  # the pretrained baseline only


def test_damaged_champion_is_refused_and_kept(tmp_path, mlflow_store, store):
    from components import track
    from components.settings import load_settings
    from components.track import registry
    from components.train.retrain import RetrainError, retrain_cycle

    damaged = tmp_path / "damaged.keras"
    damaged.write_bytes(MODEL.read_bytes()[:10000])
    with track.start_run("retrain", "damaged") as run:
        version = registry.register_embedder(damaged, run.info.run_id)
    registry.set_alias("champion", version)
    with pytest.raises(RetrainError, match="cannot use the champion.*not a loadable Keras model"):
        retrain_cycle(load_settings(), tmp_path / "work", key="damaged", store_url=store["url"], progress=False)
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
    # The guard: a gain on the promotion metric does not excuse a collapse elsewhere.
    champion = {"accuracy": 0.94, "auc": 0.99, "tar_at_far_1e-3": 0.72, "pairwise_f1": 1.0, "bcubed_f1": 1.0}
    guarded = decide(champion, {"accuracy": 0.95, "auc": 0.95, "tar_at_far_1e-3": 0.9, "pairwise_f1": 1.0,
                                "bcubed_f1": 1.0}, "accuracy", 0.002, guard_margin=0.02)
    assert guarded["decision"] == "keep" and set(guarded["fallen"]) == {"auc"}
    assert "auc falls by 0.0400" in guarded["reason"]
    # Clustering of the held-out identities (the champion's own clusters) does not stop a winner.
    assert decide(champion, {"accuracy": 0.95, "auc": 0.989, "tar_at_far_1e-3": 0.60, "pairwise_f1": 0.76,
                             "bcubed_f1": 0.84}, "accuracy", 0.002, guard_margin=0.02)["decision"] == "promote"


def test_the_future_pairs_decide_and_the_people_never_trained_on_guard():
    """promote_on=future: the win must be significant on the future pairs alone; the unseen pairs
    may not fall by more than the guard, and pairs of the other kind do not count in the test."""
    import numpy as np

    from components.train.retrain import decide

    kind = np.array(["future"] * 100 + ["unseen"] * 100, object)
    champion_right = np.ones(200, bool)
    champion_right[:30] = False  # the champion misses 30 future pairs
    challenger_right = np.ones(200, bool)
    challenger_right[:5] = False  # the challenger misses 5 of them ...
    challenger_right[100:130] = False  # ... and 30 unseen pairs the champion gets right

    def result(right, future, unseen):
        return {"accuracy": float(right.mean()), "auc": 0.99,
                "_right": {"all": right, **{name: right[kind == name] for name in ("future", "unseen")}},
                "future": {"accuracy": future, "auc": 0.99}, "unseen": {"accuracy": unseen, "auc": 0.99}}

    champion = result(champion_right, 0.70, 0.99)
    # Pooled, the challenger's 25 future wins and 30 unseen losses are no win at all.
    assert decide(champion, result(challenger_right, 0.95, 0.985), "accuracy", 0.002, 0.02, 0.05,
                  "all")["decision"] == "keep"
    won = decide(champion, result(challenger_right, 0.95, 0.985), "accuracy", 0.002, 0.02, 0.05, "future")
    assert won["decision"] == "promote", won
    assert won["paired"]["challenger_only"] == 25 and won["paired"]["champion_only"] == 0
    assert "on future pairs" in won["reason"]
    # Strangers recognised clearly worse: the guard keeps the champion and names the figure.
    guarded = decide(champion, result(challenger_right, 0.95, 0.90), "accuracy", 0.002, 0.02, 0.05, "future")
    assert guarded["decision"] == "keep" and set(guarded["fallen"]) == {"unseen accuracy"}, guarded
    assert "unseen accuracy falls by 0.0900" in guarded["reason"]
    with pytest.raises(ValueError, match="promote_on"):
        decide(champion, champion, "accuracy", 0.0, evidence="tomorrow")


def test_retrain_from_a_password_protected_store_writes_the_password_nowhere(tmp_path, mlflow_store,
                                                                              postgres_database):
    """Self-labels from an identity store in PostgreSQL reached with a password: the cycle runs, and the
    password is in no MLflow param, tag, metric or artifact, nor in the outputs."""
    _needs_data()
    secret = "pw-" + os.urandom(6).hex()
    url = f"postgresql+psycopg2://postgres:{secret}@127.0.0.1:5432/{postgres_database}"  # trust auth ignores it
    out = tmp_path / "out"
    crops = {"FACES_CROPS_ROOT": str(out)}  # relative crop paths of a server database start here
    done = _faces(["run", "--input", str(_photos(tmp_path / "photos", PEOPLE[:8], 8)), "--out", str(out),
                   "--db", url, "--no-progress"], mlflow_store, crops)
    assert done.returncode == 0, done.stderr[-3000:]
    done = _faces(["retrain", "--db", url, "--key", "pg", "--no-progress", "--workdir", str(tmp_path / "work")],
                  mlflow_store, crops)
    assert done.returncode == 0, done.stderr[-3000:]
    assert secret not in done.stdout + done.stderr
    outcome = json.loads((tmp_path / "work" / "pg" / "outcome.json").read_text())
    assert outcome["labels"]["source"].startswith("identity store postgresql+psycopg2://postgres:***@")
    leaks = [str(path) for path in tmp_path.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]
    assert leaks == [], f"the password was written to {leaks}"  # the MLflow database and artifacts included
