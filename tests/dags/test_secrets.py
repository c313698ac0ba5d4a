"""The store's password is written nowhere: face_ingest and face_recluster on a password-protected PostgreSQL URL.

The machine's PostgreSQL trusts loopback connections, so any password is accepted and
ignored: the URL carries a random one, exactly as a production ``FACES_STORE_URL``
would. Both DAGs run with ``airflow dags test`` (every task, in-process, with its
logs, XComs and rendered fields in Airflow's metadata database). Then every file
they could have written is searched for the password: the task logs under
``AIRFLOW_HOME``, Airflow's metadata database (XCom, conf, rendered fields), the work
area (manifests, detections, metrics, reports), the MLflow store (params, tags,
metrics, artifacts), the console output, and a dump of the identity store itself.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.databases import fresh_database

from tests.dags.conftest import read_json
from tests.dags.test_dags_run import dags_test

pytestmark = [pytest.mark.slow, pytest.mark.integration]

INGEST_DATE = "2026-02-01T10:00:00+00:00"
RECLUSTER_DATE = "2026-02-01T12:00:00+00:00"


@pytest.fixture
def postgres_database():
    with fresh_database("faces_secret") as name:
        yield name


def leaks(secret: str, roots: list[Path]) -> list[str]:
    found = []
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and secret.encode() in path.read_bytes():
                found.append(str(path))
    return found


def test_ingest_and_recluster_on_a_password_protected_store_write_the_password_nowhere(
        airflow_home, lfw_batch, postgres_database, tmp_path):
    secret = "pw-" + os.urandom(6).hex()
    url = f"postgresql+psycopg2://postgres:{secret}@127.0.0.1:5432/{postgres_database}"
    work = tmp_path / "work"
    env = {**airflow_home, "FACES_STORE_URL": url, "FACES_WORK_URI": str(work),
           "FACES_QUARANTINE_URI": str(work / "quarantine"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"}
    (tmp_path / "mlflow").mkdir()
    console = dags_test(env, "face_ingest", INGEST_DATE,
                        {"batch": str(lfw_batch), "batch_id": "secret-six", "folder_labels": True})
    console += dags_test(env, "face_recluster", RECLUSTER_DATE, {"force": True})

    metrics = read_json(work / "batches" / "secret-six" / "metrics.json")
    assert metrics["photos_new"] == 6 and metrics["mlflow_run"]  # it did reach the store and MLflow
    assert secret not in console
    home = Path(airflow_home["AIRFLOW_HOME"])
    dump = tmp_path / "store.sql"
    subprocess.run(["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "-f", str(dump), postgres_database],
                   check=True, timeout=120)
    assert dump.stat().st_size > 0
    found = leaks(secret, [home, work, tmp_path / "mlflow", dump])
    assert found == [], f"the store's password was written to {found}"
