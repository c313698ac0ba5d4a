"""DAG integrity: every DAG file imports cleanly, cheaply, and follows the conventions.

The DagBag is built in a subprocess (a clean interpreter) so that "importing the DAG
files pulls in no TensorFlow" is measured, not inherited from other tests.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.dags.conftest import REPO, run

EXPECTED = {"face_ingest", "face_recluster", "face_retrain", "face_reembed"}
HEAVY = ("tensorflow", "keras", "mtcnn", "mlflow", "great_expectations", "sklearn", "bentoml", "minio")

PROBE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in bag.dags.items():
    out["dags"][dag_id] = {
        "tags": sorted(dag.tags), "doc_md": dag.doc_md or "", "params": sorted(dag.params.keys()),
        "schedule": str(dag.schedule) if dag.schedule is not None else None,
        "tasks": {t.task_id: {"retries": t.retries} for t in dag.tasks},
    }
out["heavy"] = sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[2].split(","))
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def dagbag(airflow_home) -> dict:
    done = run([sys.executable, "-c", PROBE, str(REPO / "dags"), ",".join(HEAVY)], airflow_home, timeout=180)
    line = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_no_import_errors_and_all_dags_present(dagbag):
    assert dagbag["errors"] == {}
    assert EXPECTED <= set(dagbag["dags"])


def test_dag_files_import_no_heavy_library(dagbag):
    # Parsing runs every few seconds in the dag-processor: models and clients load in tasks only.
    assert dagbag["heavy"] == []


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_conventions(dagbag, dag_id):
    dag = dagbag["dags"][dag_id]
    assert "faces" in dag["tags"]
    assert dag["doc_md"].strip().startswith(f"### {dag_id}")
    assert dag["tasks"], "a DAG without tasks"
    assert all(task["retries"] >= 2 for task in dag["tasks"].values()), dag["tasks"]


def test_ingest_takes_the_batch_as_a_run_parameter(dagbag):
    assert {"batch", "batch_id", "shard_size"} <= set(dagbag["dags"]["face_ingest"]["params"])
    assert dagbag["dags"]["face_ingest"]["schedule"] is None


def test_recluster_runs_on_window_t(dagbag):
    from components.settings import load_settings

    window = load_settings().identities.recluster_every_s
    schedule = dagbag["dags"]["face_recluster"]["schedule"]
    assert schedule is not None and _seconds(schedule) == window


def _seconds(text: str) -> float:
    hours, minutes, seconds = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
