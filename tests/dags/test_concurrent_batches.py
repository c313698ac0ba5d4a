"""Four face_ingest runs at once plus face_recluster, on the CeleryExecutor and PostgreSQL.

The production topology on loopback (as in test_celery_ingest.py: Redis broker,
PostgreSQL for Airflow's metadata, the identity store and MLflow, two Celery workers
with two slots each). Four batches of LFW photos that overlap (each photo is in two
batches) are triggered at once through the REST API, and face_recluster is triggered
while they run and again once the first has finished. Every run must succeed at its
first try (a retry would hide a failed write), every photo must be stored once, and
every usable face must be either assigned to an identity or in the unknown pool:
never both, never neither.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.dags.conftest import AIRFLOW, LFW, free_port, run
from tests.dags.test_celery_ingest import (  # noqa: F401 - databases and redis_db are fixtures
    Stack,
    _api,
    _celery_executor_importable,
    _pg,
    celery_env,
    _wait,
    databases,
    redis_db,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# Six photos of three people; each batch holds three of them, each photo is in two batches.
PEOPLE = {"Aaron_Peirsol": 2, "Laura_Bush": 2, "Jennifer_Aniston": 2}
BATCHES = [(0, 1, 2), (2, 3, 4), (4, 5, 0), (1, 3, 5)]


@pytest.fixture
def overlapping_batches(tmp_path) -> list[Path]:
    if not LFW.is_dir():
        pytest.skip("LFW is not restored (make setup)")
    photos = [(person, path) for person, count in PEOPLE.items() for path in sorted((LFW / person).iterdir())[:count]]
    folders = []
    for number, members in enumerate(BATCHES):
        folder = tmp_path / "batches" / f"b{number}"
        for index in members:
            person, path = photos[index]
            (folder / person).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / person / path.name)
        folders.append(folder)
    return folders


def test_four_ingests_and_a_recluster_at_once(tmp_path, overlapping_batches, databases, redis_db):
    _celery_executor_importable()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # Each task runs its steps in its own process (FACES_WARM_WORKERS=0), as tasks on separate machines
    # would: with the warm step server an assign takes about a second and the four batches' assigns
    # rarely overlap, so the store's locks would not be put to the test. test_celery_ingest.py runs
    # the warm path on Celery.
    env = celery_env(tmp_path, databases, redis_db, port, AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT="600",
                     FACES_WARM_WORKERS="0")
    (tmp_path / "airflow").mkdir()
    run([AIRFLOW, "db", "migrate"], env, timeout=240)
    run([sys.executable, "-c", "import mlflow, sys; mlflow.MlflowClient(sys.argv[1]).search_experiments()",
         env["MLFLOW_TRACKING_URI"]], env, timeout=120)
    logs = tmp_path / "logs"
    logs.mkdir()
    stack = Stack(env, logs)
    try:
        stack.start("api-server", "api-server", "--port", str(port), "--host", "127.0.0.1")
        stack.start("scheduler", "scheduler", "--skip-serve-logs")
        stack.start("dag-processor", "dag-processor")
        for number in (1, 2):  # two slots each: the four runs' tasks overlap
            stack.start(f"worker-{number}", "celery", "worker", "--concurrency", "2", "--skip-serve-logs",
                        "--celery-hostname", f"faces-worker-{number}@%h", FACES_TEST_WORKER_NAME=f"faces-worker-{number}")
        _wait("the api-server", lambda: _api(base, "/api/v2/monitor/health"), 180, stack)
        token = _api(base, "/auth/token")["access_token"]
        for dag_id in ("face_ingest", "face_recluster"):
            _wait(f"{dag_id} to be parsed", lambda dag_id=dag_id: _api(base, f"/api/v2/dags/{dag_id}", token), 180, stack)

        def trigger(dag_id: str, conf: dict) -> str:
            answer = _api(base, f"/api/v2/dags/{dag_id}/dagRuns", token, {"logical_date": None, "conf": conf})
            return f"/api/v2/dags/{dag_id}/dagRuns/{answer['dag_run_id']}"

        def state(path: str) -> str:
            return _api(base, path, token)["state"]

        ingests = [trigger("face_ingest", {"batch": str(folder), "batch_id": f"overlap-{number}", "folder_labels": True})
                   for number, folder in enumerate(overlapping_batches)]
        reclusters = [trigger("face_recluster", {"force": True})]
        # Unpaused only now: the four runs and the re-clustering are queued together.
        for dag_id in ("face_ingest", "face_recluster"):
            _api(base, f"/api/v2/dags/{dag_id}", token, {"is_paused": False}, method="PATCH")
        def assigning() -> bool:
            return any(task["task_id"] == "assign" and task["state"] in ("queued", "running", "success")
                       for path in ingests for task in _api(base, f"{path}/taskInstances?limit=100", token)["task_instances"])

        _wait("a first assign step", assigning, 600, stack, every=1)
        reclusters.append(trigger("face_recluster", {"force": True}))  # while the batches assign
        _wait("every run to finish", lambda: all(state(path) in ("success", "failed") for path in ingests + reclusters),
              600, stack, every=3)
        tasks = []
        for path in ingests + reclusters:
            for task in _api(base, f"{path}/taskInstances?limit=100", token)["task_instances"]:
                tasks.append((path.split("/")[4], task["task_id"], task["map_index"], task["state"], task["try_number"],
                              task["start_date"], task["end_date"]))
        states = [state(path) for path in ingests + reclusters]
    finally:
        stack.stop()

    assert states == ["success"] * len(states), (tasks, stack.tail("worker-1"), stack.tail("worker-2"))
    # No task needed a retry: every write succeeded the first time, whatever ran beside it.
    retried = [task[:5] for task in tasks if task[4] != 1 or task[3] not in ("success", "skipped")]
    assert retried == [], retried
    # The writers did run at the same time: at least two batches' assign steps overlapped.
    spans = sorted((task[5], task[6]) for task in tasks if task[1] == "assign")
    assert len(spans) == len(ingests)
    assert any(spans[number + 1][0] < spans[number][1] for number in range(len(spans) - 1)), spans

    with _pg(databases["store"]) as connection, connection.cursor() as cursor:
        cursor.execute("select count(*), count(distinct sha256) from images")
        images, distinct = cursor.fetchone()
        cursor.execute("select id from faces where passed and embedding is not null")
        usable = {row[0] for row in cursor.fetchall()}
        cursor.execute("select face_id from assignments")
        assigned = [row[0] for row in cursor.fetchall()]
        cursor.execute("select face_id from pool_faces")
        pooled = [row[0] for row in cursor.fetchall()]
        cursor.execute("select i.id, i.size, count(a.face_id) from identities i "
                       "left join assignments a on a.identity_id = i.id group by i.id, i.size")
        sizes = cursor.fetchall()
        cursor.execute("select count(*) from lifecycle_runs where kind = 'pool'")
        (pool_runs,) = cursor.fetchone()
    assert images == distinct == sum(PEOPLE.values())
    assert len(usable) >= images  # every photo shows its subject
    assert len(assigned) == len(set(assigned)) and len(pooled) == len(set(pooled))
    assert set(assigned) & set(pooled) == set(), "a face both assigned and pooled"
    assert usable - set(assigned) - set(pooled) == set(), "a face neither assigned nor pooled"
    assert set(assigned) | set(pooled) <= usable
    assert all(size == members for _, size, members in sizes), sizes
    assert pool_runs >= len(reclusters)  # both forced re-clusterings ran (besides any a batch made due)
