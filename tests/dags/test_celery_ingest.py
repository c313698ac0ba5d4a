"""face_ingest on Airflow's CeleryExecutor: the production topology, on loopback.

Redis is the broker (a spare database number, checked empty), PostgreSQL holds
Airflow's metadata, the identity store and MLflow's backend (three fresh databases,
dropped afterwards). api-server, scheduler, dag-processor and two Celery workers run
as real processes on free ports; the run is triggered through the api-server's REST
API, as the UI's trigger button does. A batch of LFW photos split into two shards
must succeed with every mapped task on one of the two workers, and its faces must be
in the Postgres identity store.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.dags.conftest import AIRFLOW, PEOPLE, REPO, airflow_env, free_port, run, stop_step_servers

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
SHARDS = 2


def _pg(dbname: str = "postgres"):
    import psycopg2

    connection = psycopg2.connect(dbname=dbname, connect_timeout=5, **PG)
    connection.autocommit = True
    return connection


def _url(db: str, driver: str = "postgresql+psycopg2") -> str:
    return f"{driver}://{PG['user']}@{PG['host']}:{PG['port']}/{db}"


@pytest.fixture
def databases():
    """Three fresh Postgres databases (Airflow, identity store, MLflow), dropped afterwards."""
    try:
        admin = _pg()
    except Exception as error:  # noqa: BLE001 - no server: nothing to test against
        pytest.skip(f"PostgreSQL is not reachable on {PG['host']}:{PG['port']}: {error}")
    stem = f"faces_celery_{secrets.token_hex(4)}"
    names = {part: f"{stem}_{part}" for part in ("airflow", "store", "mlflow")}
    with admin.cursor() as cursor:
        for name in names.values():
            cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield names
    finally:
        with admin.cursor() as cursor:
            for name in names.values():
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def redis_db():
    """A Redis database number nobody uses (empty), flushed afterwards."""
    import redis

    for number in range(15, 7, -1):
        client = redis.Redis(host="127.0.0.1", port=6379, db=number, socket_timeout=5)
        try:
            if client.dbsize() == 0:
                break
        except redis.exceptions.ConnectionError as error:
            pytest.skip(f"Redis is not reachable on 127.0.0.1:6379: {error}")
    else:
        pytest.skip("no empty Redis database among 8-15")
    try:
        yield f"redis://127.0.0.1:6379/{number}"
    finally:
        client.flushdb()


class Stack:
    """Airflow processes started for one test; stopped (process groups) however it ends."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs, self.procs = env, logs, {}

    def start(self, name: str, *args: str, **extra_env: str) -> None:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        self.procs[name] = (subprocess.Popen([AIRFLOW, *args], env={**self.env, **extra_env}, cwd=self.logs,
                                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True), log)

    def check_alive(self) -> None:
        for name, (proc, _) in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, chars: int = 3000) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        stop_step_servers(self.env)  # started by the workers' tasks, outside their process groups
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc, log in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()


def _api(base: str, path: str, token: str | None = None, body: dict | None = None, method: str | None = None):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                     headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read() or b"null")


def _wait(what: str, check, timeout: float, stack: Stack, every: float = 2.0):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            value = check()
            if value:
                return value
        except Exception as error:  # noqa: BLE001 - keep polling until the deadline
            last_error = error
        time.sleep(every)
    logs = "\n".join(f"--- {name}\n{stack.tail(name, 1500)}" for name in stack.procs)
    raise AssertionError(f"timed out waiting for {what} (last error: {last_error})\n{logs}")


def _celery_executor_importable() -> None:
    """The Celery provider must import with the installed celery (else no worker can start)."""
    try:
        import celery.backends.database as backend

        backend.retry  # noqa: B018 - apache-airflow-providers-celery 3.26 imports it
    except AttributeError:
        import celery

        pytest.fail(f"celery {celery.__version__} lacks celery.backends.database.retry, which "
                    "apache-airflow-providers-celery imports: the CeleryExecutor cannot start. "
                    "Pin celery<5.7 (5.6.3) and kombu<5.7 (5.6.2) in requirements/lock.txt.")


def celery_env(tmp_path: Path, databases: dict, redis_db: str, port: int, **extra: str) -> dict[str, str]:
    """Airflow with the CeleryExecutor on the machine's PostgreSQL and Redis, its API server on ``port``."""
    base = f"http://127.0.0.1:{port}"
    return airflow_env(
        tmp_path / "airflow", tmp_path / "work",
        AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=_url(databases["airflow"]),
        # Empty: no async engine. Airflow would derive postgresql+asyncpg, and asyncpg is not in
        # the lock; only the "wait for a run" endpoint needs it, and the tests poll instead.
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC="",
        AIRFLOW__CELERY__BROKER_URL=redis_db,
        AIRFLOW__CELERY__RESULT_BACKEND=_url(databases["airflow"], "db+postgresql+psycopg2"),
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{base}/execution/",
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__API__BASE_URL=base,
        AIRFLOW__API__WORKERS="1",
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(16),
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
        AIRFLOW__CORE__HOSTNAME_CALLABLE="tests.dags.celery_hostname.worker_name",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
        FACES_STORE_URL=_url(databases["store"]),
        MLFLOW_TRACKING_URI=_url(databases["mlflow"]),  # postgresql+psycopg2: SQLAlchemy 2.1 defaults to psycopg 3
        **extra,
    )


def test_face_ingest_on_two_celery_workers(tmp_path, lfw_batch, databases, redis_db):
    _celery_executor_importable()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    work = tmp_path / "work"
    env = celery_env(tmp_path, databases, redis_db, port, AIRFLOW__CELERY__WORKER_CONCURRENCY="1",
                     AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT="300")
    (tmp_path / "airflow").mkdir()
    run([AIRFLOW, "db", "migrate"], env, timeout=240)
    # MLflow creates its tables on first use; two workers doing that at once on a fresh
    # database race (a deployment runs an MLflow server, which does it once at start).
    run([sys.executable, "-c", "import mlflow, sys; mlflow.MlflowClient(sys.argv[1]).search_experiments()",
         env["MLFLOW_TRACKING_URI"]], env, timeout=120)
    logs = tmp_path / "logs"
    logs.mkdir()
    stack = Stack(env, logs)
    try:
        stack.start("api-server", "api-server", "--port", str(port), "--host", "127.0.0.1")
        stack.start("scheduler", "scheduler", "--skip-serve-logs")
        stack.start("dag-processor", "dag-processor")
        for number in (1, 2):
            stack.start(f"worker-{number}", "celery", "worker", "--concurrency", "1", "--skip-serve-logs",
                        "--celery-hostname", f"faces-worker-{number}@%h", FACES_TEST_WORKER_NAME=f"faces-worker-{number}")
        _wait("the api-server", lambda: _api(base, "/api/v2/monitor/health"), 180, stack)
        token = _api(base, "/auth/token")["access_token"]
        _wait("the DAG to be parsed", lambda: _api(base, "/api/v2/dags/face_ingest", token), 180, stack)
        _api(base, "/api/v2/dags/face_ingest", token, {"is_paused": False}, method="PATCH")

        # What the UI's trigger button sends.
        conf = {"batch": str(lfw_batch), "batch_id": "celery-lfw", "shard_size": 3, "folder_labels": True}
        dag_run = _api(base, "/api/v2/dags/face_ingest/dagRuns", token, {"logical_date": None, "conf": conf})
        path = f"/api/v2/dags/face_ingest/dagRuns/{dag_run['dag_run_id']}"
        final = _wait("the run to finish", lambda: _api(base, path, token)["state"] in ("success", "failed")
                      and _api(base, path, token), 420, stack, every=3)
        tasks = _api(base, f"{path}/taskInstances?limit=100", token)["task_instances"]
        summary = sorted((t["task_id"], t["map_index"], t["state"], t["hostname"]) for t in tasks)
        assert final["state"] == "success", f"{summary}\n{stack.tail('worker-1')}\n{stack.tail('worker-2')}"
    finally:
        stack.stop()

    mapped = [t for t in summary if t[1] >= 0]
    assert len([t for t in mapped if t[0] == "detect"]) == SHARDS
    assert all(state == "success" for _, _, state, _ in summary), summary
    workers = {"faces-worker-1", "faces-worker-2"}
    assert {host for *_, host in summary} <= workers, summary  # every task ran on a Celery worker
    assert {host for *_, host in mapped} == workers, summary  # and the shards were spread over both

    import psycopg2  # noqa: F401 - the store is Postgres; read it as any client would

    with _pg(databases["store"]) as connection, connection.cursor() as cursor:
        cursor.execute("select count(*), count(distinct sha256) from images")
        images, distinct = cursor.fetchone()
        cursor.execute("select count(*) from faces where embedding is not null")
        (embedded,) = cursor.fetchone()
    assert images == distinct == sum(PEOPLE.values())
    assert embedded >= images
    with _pg(databases["mlflow"]) as connection, connection.cursor() as cursor:
        cursor.execute("select count(*) from tags where key = 'faces.key' and value = 'celery-lfw'")
        assert cursor.fetchone()[0] == 1
