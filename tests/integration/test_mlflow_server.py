"""mlflow/start.sh in its production configuration: PostgreSQL backend, S3 artifacts, proxied.

The machine's PostgreSQL (127.0.0.1:5432, trust auth) gets a throw-away database; the S3
server is SeaweedFS (the ``seaweedfs_s3`` session fixture). The client has no S3 keys:
artifacts go through the server, as DAG tasks and the BentoML service use it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.databases import PG, fresh_database

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def postgres_database():
    with fresh_database("mlflow_test") as name:
        yield name


@pytest.fixture
def mlflow_server(postgres_database, seaweedfs_s3, tmp_path):
    bucket = seaweedfs_s3.new_bucket()
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "AWS_"))}
    env.update({
        "MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg2://postgres@127.0.0.1:5432/{postgres_database}",
        "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{bucket}/artifacts",
        "MLFLOW_S3_ENDPOINT_URL": seaweedfs_s3.endpoint_url,
        "AWS_ACCESS_KEY_ID": seaweedfs_s3.access_key,
        "AWS_SECRET_ACCESS_KEY": seaweedfs_s3.secret_key,
        "AWS_DEFAULT_REGION": seaweedfs_s3.region,
        "MLFLOW_PORT": str(port),
        # Would be a fallback store if the URIs above were ignored: the test checks it stays empty.
        "MLFLOW_STORE_DIR": str(tmp_path / "unused"),
    })
    log = open(tmp_path / "mlflow.log", "wb")
    process = subprocess.Popen(["bash", str(REPO / "mlflow" / "start.sh")], env=env, cwd=REPO, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("mlflow/start.sh did not come up:\n" + (tmp_path / "mlflow.log").read_text()[-3000:])
            time.sleep(0.5)
        yield {"url": url, "bucket": bucket, "database": postgres_database, "process": process,
               "unused": tmp_path / "unused"}
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


def test_runs_in_postgres_artifacts_in_s3_models_with_aliases(mlflow_server, seaweedfs_s3, tmp_path, monkeypatch):
    import psycopg2
    from minio import Minio
    from mlflow import MlflowClient

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)  # the client needs no S3 keys: the server proxies
    client = MlflowClient(tracking_uri=mlflow_server["url"], registry_uri=mlflow_server["url"])
    experiment = client.create_experiment("face_ingest")
    run = client.create_run(experiment, run_name="batch-001", tags={"faces.key": "batch-001"})
    client.log_param(run.info.run_id, "detect.min_confidence", "0.95")
    client.log_metric(run.info.run_id, "faces", 7)
    report = tmp_path / "report.json"
    report.write_text('{"faces": 7}')
    client.log_artifact(run.info.run_id, str(report), artifact_path="model")
    client.set_terminated(run.info.run_id)

    client.create_registered_model("face-embedder")
    version = client.create_model_version("face-embedder", f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias("face-embedder", "champion", version.version)
    assert client.get_model_version_by_alias("face-embedder", "champion").version == version.version
    assert client.get_run(run.info.run_id).data.metrics == {"faces": 7.0}
    downloaded = client.download_artifacts(run.info.run_id, "model/report.json", str(tmp_path / "back"))
    assert Path(downloaded).read_text() == '{"faces": 7}'

    # Where it all went: rows in PostgreSQL, objects in the S3 bucket, nothing on local disk.
    with psycopg2.connect(dbname=mlflow_server["database"], **PG) as db, db.cursor() as cursor:
        cursor.execute("select count(*) from runs where run_uuid = %s", (run.info.run_id,))
        assert cursor.fetchone()[0] == 1
        cursor.execute("select alias from registered_model_aliases where name = 'face-embedder'")
        assert cursor.fetchall() == [("champion",)]
    s3 = Minio(seaweedfs_s3.endpoint_url.split("://", 1)[1], access_key=seaweedfs_s3.access_key,
               secret_key=seaweedfs_s3.secret_key, secure=False)
    keys = [o.object_name for o in s3.list_objects(mlflow_server["bucket"], prefix="artifacts/", recursive=True)]
    assert any(key.endswith(f"{run.info.run_id}/artifacts/model/report.json") for key in keys), keys
    assert not mlflow_server["unused"].exists()
