"""Each DAG end to end with ``airflow dags test`` on real LFW photos, then cleared and run again.

``airflow dags test DAG DATE`` runs every task of one DAG run in-process against a
temporary SQLite metadata database; with a DATE it already ran, it first clears that
run's task instances: the second call is a clear + re-run of every task, which must
leave the store, the work area and MLflow exactly as the first did.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.dags.conftest import AIRFLOW, PEOPLE, REPO, read_json, run

pytestmark = [pytest.mark.slow, pytest.mark.integration]

INGEST_DATE = "2026-01-05T10:00:00+00:00"
RECLUSTER_DATE = "2026-01-05T12:00:00+00:00"


def dags_test(env: dict, dag_id: str, date: str, conf: dict | None = None) -> str:
    cmd = [AIRFLOW, "dags", "test", dag_id, date]
    if conf is not None:
        cmd += ["-c", json.dumps(conf)]
    done = run(cmd, env, timeout=300)
    output = done.stdout + done.stderr
    assert "state=success" in output, output[-4000:]
    return output


def store_rows(work: Path) -> dict[str, int]:
    with sqlite3.connect(work / "faces.db") as db:
        return {table: db.execute(f"select count(*) from {table}").fetchone()[0]
                for table in ("images", "faces", "identities", "assignments", "pool_faces", "lifecycle_runs")}


def mlflow_runs(work: Path, experiment: str) -> list[tuple[str, str]]:
    """(run id, faces.key tag) of the experiment's runs, read straight from MLflow's SQLite store."""
    with sqlite3.connect(work / "mlflow" / "mlflow.db") as db:
        return db.execute(
            "select r.run_uuid, t.value from runs r join experiments e on e.experiment_id = r.experiment_id "
            "left join tags t on t.run_uuid = r.run_uuid and t.key = 'faces.key' where e.name = ?", (experiment,)
        ).fetchall()


def outputs(work: Path, batch_id: str) -> dict[str, bytes]:
    root = work / "batches" / batch_id
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def ingested(airflow_home, lfw_batch):
    """face_ingest over six LFW photos in two shards of three (two mapped detect/embed tasks)."""
    work = Path(airflow_home["FACES_WORK_URI"])
    conf = {"batch": str(lfw_batch), "batch_id": "lfw-six", "shard_size": 3, "folder_labels": True}
    dags_test(airflow_home, "face_ingest", INGEST_DATE, conf)
    return airflow_home, work, conf


def test_ingest_stores_every_photo_and_logs_one_mlflow_run(ingested):
    _, work, _ = ingested
    rows = store_rows(work)
    photos = sum(PEOPLE.values())
    assert rows["images"] == photos
    assert rows["faces"] >= photos  # every LFW photo shows its subject (sometimes bystanders too)
    assert rows["assignments"] + rows["pool_faces"] >= photos
    metrics = read_json(work / "batches" / "lfw-six" / "metrics.json")
    assert metrics["shards"] == 2 and metrics["photos_new"] == photos
    assert set(metrics["seconds"]) >= {"validate", "load", "detect", "embed", "store", "assign"}
    assert [key for _, key in mlflow_runs(work, "face_ingest")] == ["lfw-six"]
    crops = list((work / "crops").rglob("*.jpg"))
    assert len(crops) == rows["faces"]


def test_ingest_cleared_and_rerun_adds_nothing(ingested):
    env, work, conf = ingested
    before_rows, before_runs = store_rows(work), mlflow_runs(work, "face_ingest")
    before_crops = sorted((work / "crops").rglob("*.jpg"))
    dags_test(env, "face_ingest", INGEST_DATE, conf)  # same run: its task instances are cleared, then run again
    assert store_rows(work) == before_rows
    assert mlflow_runs(work, "face_ingest") == before_runs
    assert sorted((work / "crops").rglob("*.jpg")) == before_crops


def test_recluster_logs_metrics_and_tsne_once(ingested):
    env, work, _ = ingested
    dags_test(env, "face_recluster", RECLUSTER_DATE, {"force": True})
    reports = sorted((work / "recluster").glob("*.json"))
    assert [path.name for path in reports] == ["20260105T120000Z.json"]
    report = read_json(reports[0])
    clustering = report["clustering"]
    # Two people, three photos each: identities never mix them, and each person has one.
    assert clustering["against_folder_labels"]["bcubed_precision"] == 1.0
    assert clustering["identities"] == 2
    assert [key for _, key in mlflow_runs(work, "face_recluster")] == ["20260105T120000Z"]
    run_id = report["mlflow_run"].split("/")[-1]
    artifacts = {path.name for path in (work / "mlflow").rglob("*") if run_id in str(path)}
    assert "tsne.png" in artifacts and "recluster.json" in artifacts

    rows = store_rows(work)
    dags_test(env, "face_recluster", RECLUSTER_DATE, {"force": True})
    assert store_rows(work) == rows
    assert len(mlflow_runs(work, "face_recluster")) == 1


REEMBED_DATE = "2026-01-06T00:00:00+00:00"
REGISTER = """
import sys
from components.embed.thresholds import Thresholds
from components.track import registry, start_run
with start_run("dag-tests", "register") as run:
    version = registry.register_embedder(sys.argv[1], run.info.run_id,
                                         thresholds=Thresholds(verify=0.9, cluster=0.94, assign=0.94))
registry.set_alias("champion", version)
print(version)
"""


def store_models(work: Path) -> tuple[set[str], list[tuple]]:
    with sqlite3.connect(work / "faces.db") as db:
        versions = {row[0] for row in db.execute("select model_version from faces where embedding is not null")}
        models = db.execute("select role, registry_version, thresholds from store_models").fetchall()
    return versions, models


def test_reembed_moves_the_store_to_a_promoted_champion_once(ingested, tmp_path):
    import sys

    from tests.fixtures.models import perturbed_copy

    env, work, _ = ingested
    before, _ = store_models(work)
    assert len(before) == 1
    model = perturbed_copy(REPO / "models" / "face_recognition_net.keras", tmp_path / "perturbed.keras")
    version = int(run([sys.executable, "-c", REGISTER, str(model)], env, timeout=300).stdout.split()[-1])
    dags_test(env, "face_reembed", REEMBED_DATE, {})
    versions, models = store_models(work)
    assert len(versions) == 1 and versions != before  # every embedding moved to the new model
    assert [(role, registry) for role, registry, _ in models] == [("active", version)]
    assert json.loads(models[0][2]) == {"verify": 0.9, "cluster": 0.94, "assign": 0.94}
    reports = sorted((work / "reembed").glob("*.json"))
    assert len(reports) == 1 and read_json(reports[0])["changed"] is True
    assert len(mlflow_runs(work, "face_reembed")) == 1  # the switch is in the MLflow UI, with its report
    rows = store_rows(work)
    dags_test(env, "face_reembed", REEMBED_DATE, {})  # cleared and re-run: the store already uses the champion
    assert store_rows(work) == rows and store_models(work) == (versions, models)
    assert read_json(sorted((work / "reembed").glob("unchanged-*.json"))[0])["changed"] is False
    assert len(mlflow_runs(work, "face_reembed")) == 1


RETRAIN_DATE = "2026-01-07T00:00:00+00:00"
# A small cycle: the LFW stream of 8 people (the LFW option; the stack test takes the store), 50 steps.
RETRAIN_CONF = {"labels_from": "lfw", "limit_people": 8, "steps": 50, "min_faces": 3}


def registered_versions(work: Path) -> list[int]:
    with sqlite3.connect(work / "mlflow" / "mlflow.db") as db:
        return [row[0] for row in db.execute("select version from model_versions where name = 'face-embedder'")]


@pytest.mark.slow  # a real retraining cycle: about 2 minutes on 2 cores
def test_retrain_registers_a_challenger_once(airflow_home):
    env = airflow_home
    work = Path(env["FACES_WORK_URI"])
    dags_test(env, "face_retrain", RETRAIN_DATE, RETRAIN_CONF)
    outcomes = sorted((work / "retrain").glob("*.json"))
    assert len(outcomes) == 1
    outcome = read_json(outcomes[0])
    decision = outcome["decision"]
    # The gate's decision follows its own rule on the figures it records.
    won = decision["delta"] >= decision["margin"] and not decision["fallen"] and \
        decision["paired"]["p_value"] <= decision["max_p_value"]
    assert decision["decision"] == ("promote" if won else "keep"), decision
    assert outcome["request"]["params"]["steps"] == 50  # the trigger form's values reached the cycle
    assert outcome["training"]["moved"] > 0  # a new model, not the champion's weights
    versions = registered_versions(work)
    assert outcome["challenger"]["version"] in versions and outcome["champion"]["version"] in versions

    dags_test(env, "face_retrain", RETRAIN_DATE, RETRAIN_CONF)  # cleared and re-run: no second version
    assert registered_versions(work) == versions
    assert sorted((work / "retrain").glob("*.json")) == outcomes
