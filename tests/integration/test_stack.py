"""``make up`` end to end: the real servers on free loopback ports in a temporary run dir.

The stack script (what ``make up`` / ``make down`` run) starts SeaweedFS, MLflow, the
BentoML service and Airflow (api-server, scheduler, dag-processor); every health
endpoint must answer. Against the running servers, through Airflow's REST API as the UI's
trigger button does:

* a ``face_ingest`` run over a few LFW photos uploaded to the stack's S3;
* the cycle that must lose: a dozen people's clean photos ingested and re-clustered, then
  ``face_retrain`` with the trigger form's defaults (labels from that store): a new model
  that differs from the champion is registered, compared in the MLflow server and kept;
* the cycle that must win: photos of 45 more people from a poor camera, ingested and
  re-clustered; the new identities schedule ``face_retrain`` by themselves, the challenger
  is promoted, ``face_reembed`` follows and serving answers with the new version;
* a rollback with ``faces models promote`` and ``face_reembed``.

``down`` must then leave nothing running.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "deploy" / "local" / "stack.py"
LFW = REPO / "data" / "lfw" / "images_deepfunneled"
# Two people, three photos each: two identities' worth of faces, small enough for CI.
PEOPLE = {"Aaron_Peirsol": 3, "Laura_Bush": 3}
# The store a retraining cycle learns from: 12 people, 8 photos each (identities of 5+ faces give labels).
RETRAIN_PEOPLE = {name: 8 for name in ("Colin_Powell", "Tony_Blair", "Gerhard_Schroeder", "Hugo_Chavez",
                                       "Ariel_Sharon", "Donald_Rumsfeld", "Jacques_Chirac", "Jean_Chretien",
                                       "John_Ashcroft", "Junichiro_Koizumi", "Serena_Williams", "Vladimir_Putin")}

# The domain-shift stream a cycle must win on: LFW people with 20+ photos, each photo as an old
# surveillance camera gives it (components.bench.retrain.degrade_photo, seeded per photo).
DEGRADED_PEOPLE, DEGRADED_PHOTOS = 45, 20

SERVICES = ("s3", "mlflow", "serving", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
            "people-page")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

from components.bench.local_stack import (  # noqa: E402  (shared with `faces bench ingest-stack`)
    Stack, http, run_stack, stack_environment, stack_module as _stack_module)

stack_module = _stack_module()  # deploy/local/stack.py (deploy/local is not a package)


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory) -> dict[str, str]:
    """Environment for the stack script: a temporary run dir and free ports for everything."""
    return stack_environment(tmp_path_factory.mktemp("stack"))


class MemorySampler(threading.Thread):
    """Peak PSS per service while the tests run (the deploy/README.md table comes from this)."""

    def __init__(self, config, interval_s: float = 2.0):
        super().__init__(daemon=True)
        self.config, self.interval_s = config, interval_s
        self.idle: dict[str, float] = {}
        self.peak: dict[str, float] = {}
        self.stopping = threading.Event()

    def sample(self) -> dict[str, float]:
        return {name: stack_module.memory_mib(stack_module._service_processes(self.config, name))
                for name in SERVICES}

    def run(self) -> None:
        while not self.stopping.wait(self.interval_s):
            for name, mib in self.sample().items():
                self.peak[name] = max(self.peak.get(name, 0.0), mib)

    def report(self) -> dict:
        rows = {name: {"idle_pss_mib": round(self.idle.get(name, 0.0)), "peak_pss_mib": round(self.peak.get(name, 0.0))}
                for name in SERVICES}
        return {"services": rows, "total_idle_pss_mib": round(sum(self.idle.values())),
                "total_peak_pss_mib": round(sum(self.peak.values()))}


@pytest.fixture(scope="module")
def stack(stack_env):
    """``up`` once for the module; ``down`` always, even when a test failed."""
    sampler = None
    try:
        started = time.monotonic()
        done = run_stack("up", stack_env)
        assert done.returncode == 0, f"stack up failed:\n{done.stdout}\n{done.stderr}"
        print(f"stack up in {time.monotonic() - started:.0f} s")
        running = Stack(stack_env)
        sampler = MemorySampler(running.config)
        sampler.idle = sampler.sample()
        sampler.start()
        yield running
    finally:
        if sampler is not None:
            sampler.stopping.set()
            report = sampler.report()
            (Path(stack_env["STACK_DIR"]) / "memory.json").write_text(json.dumps(report, indent=2))
            print("memory (PSS MiB):", json.dumps(report))
        run_stack("down", stack_env, timeout=120)


def test_up_brings_every_service_up(stack):
    status, health = http("GET", f"{stack.url('airflow')}/api/v2/monitor/health")
    assert status == 200
    assert health["metadatabase"]["status"] == "healthy"
    assert health["scheduler"]["status"] == "healthy"
    assert health["dag_processor"]["status"] == "healthy"
    assert http("GET", f"{stack.url('mlflow')}/health")[0] == 200
    assert http("GET", f"{stack.url('serving')}/readyz")[0] == 200
    assert http("GET", f"{stack.url('s3')}/healthz")[0] == 200
    assert http("GET", f"{stack.url('ui')}/healthz")[0] == 200
    status, page = http("GET", f"{stack.url('ui')}/")  # the people page sends a stranger to sign in first
    assert status == 200 and 'action="/login"' in page
    assert stack.minio().bucket_exists(stack.config.bucket)
    # Where the admin password is, as `up` printed; it opens the REST API.
    assert stack.airflow_token()
    # Every service listens on loopback only, on the port it was given.
    for name in ("airflow", "mlflow", "serving", "s3", "ui"):
        with socket.create_connection(("127.0.0.1", stack.config.ports[name]), timeout=5):
            pass


def test_serving_answers_every_endpoint_with_the_stack_key(stack):
    """The BentoML service `make up` started answers /verify, /identify and /embed, behind its API key."""
    import httpx

    def photo(name: str, number: int) -> tuple:
        path = REPO / "data" / "lfw" / "images_deepfunneled" / name / f"{name}_{number:04d}.jpg"
        return path.name, path.read_bytes(), "image/jpeg"

    key = {"X-API-Key": stack.client["FACES_API_KEY"]}
    same = [("photo_a", photo("Abel_Pacheco", 1)), ("photo_b", photo("Abel_Pacheco", 4))]
    different = [("photo_a", photo("Abel_Pacheco", 1)), ("photo_b", photo("Jong_Thae_Hwa", 2))]
    with httpx.Client(base_url=stack.url("serving"), timeout=120) as client:
        assert client.post("/verify", files=same).status_code == 401  # no key
        answers = [client.post("/verify", files=files, headers=key) for files in (same, different)]
        identified = client.post("/identify", files=[("photo", photo("Abel_Pacheco", 1))], headers=key)
        embedded = client.post("/embed", files=[("photos", photo("Abel_Pacheco", 1))], headers=key)
    assert [answer.status_code for answer in answers] == [200, 200], [answer.text for answer in answers]
    assert [answer.json()["same"] for answer in answers] == [True, False]
    assert identified.status_code == 200, identified.text
    assert identified.json()["faces"] and "model_version" in identified.json()
    assert embedded.status_code == 200, embedded.text


def test_status_reports_memory(stack):
    done = run_stack("status", stack.env, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    proc = subprocess.run([sys.executable, str(STACK), "status", "--json"], env=stack.env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    rows = {row["service"]: row for row in json.loads(proc.stdout)["services"]}
    assert set(rows) == set(SERVICES)
    for row in rows.values():
        assert row["running"] and row["healthy"], row
        assert row["pss_mib"] > 10, row


def test_up_again_says_already_up(stack):
    pids = {p.name: p.read_text() for p in (stack.config.run_dir / "pids").iterdir()}
    done = run_stack("up", stack.env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "already up" in done.stdout
    assert {p.name: p.read_text() for p in (stack.config.run_dir / "pids").iterdir()} == pids


def test_up_restarts_only_what_stopped(stack):
    """A service that died is started again by `up`; the others keep their processes."""
    pids = {p.name: p.read_text() for p in (stack.config.run_dir / "pids").iterdir()}
    mlflow = json.loads(pids.pop("mlflow.json"))["pid"]
    os.killpg(mlflow, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while stack_module._live_root(stack.config, "mlflow") is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    done = run_stack("up", stack.env, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "started: mlflow in" in done.stdout
    assert http("GET", f"{stack.url('mlflow')}/health")[0] == 200
    assert {p.name: p.read_text() for p in (stack.config.run_dir / "pids").iterdir() if p.name != "mlflow.json"} == pids


def test_port_taken_is_a_clear_error(stack, tmp_path):
    """A second stack on the same ports refuses to start and names the variable to change (after waiting
    STACK_PORT_WAIT for ports held by another stack's live services: a second here)."""
    env = {**stack.env, "STACK_DIR": str(tmp_path / "other"), "STACK_PORT_WAIT": "1"}
    done = run_stack("up", env, timeout=120)
    assert done.returncode == 1
    assert "still in use by another process" in done.stderr
    assert "STACK_AIRFLOW_PORT" in done.stderr
    assert not (tmp_path / "other" / "pids").exists() or not any((tmp_path / "other" / "pids").iterdir())


def trigger(stack: Stack, dag_id: str, run_id: str, conf: dict) -> None:
    """Unpause the DAG and POST a DAG run, as the UI's Trigger button does."""
    stack.trigger(dag_id, run_id, conf)


def wait_for_run(stack: Stack, dag_id: str, run_id: str, timeout_s: float) -> dict:
    """Poll the DAG run until it ends; on failure, show its task states and the failed tasks' log ends."""
    state = stack.wait_for_run(dag_id, run_id, timeout_s, poll_s=3)["state"]
    summary = {(t["task_id"], t.get("map_index")): t["state"] for t in stack.task_instances(dag_id, run_id)}
    if state != "success":
        tails = stack.failed_task_logs(dag_id, run_id, summary)
        pytest.fail(f"{dag_id} run {run_id} ended {state!r}: {summary}\n" + "\n".join(f"--- {k}\n{v}" for k, v in tails.items()))
    return summary


def upload_batch(stack: Stack, prefix: str, people: dict[str, int] = PEOPLE) -> int:
    if not LFW.is_dir():
        pytest.skip("LFW is not restored (make setup)")
    client = stack.minio()
    count = 0
    for person, n in people.items():
        for photo in sorted((LFW / person).iterdir())[:n]:
            client.fput_object(stack.config.bucket, f"{prefix}/{person}/{photo.name}", str(photo),
                               content_type="image/jpeg")
            count += 1
    return count


def ingest_and_recluster(stack: Stack, batch: str, photos: int, ingest_timeout_s: float) -> None:
    """``incoming/<batch>`` ingested in one shard with its folder names, then a forced re-clustering."""
    trigger(stack, "face_ingest", f"ingest-{batch}", {"batch": f"s3://{stack.config.bucket}/incoming/{batch}",
                                                      "batch_id": batch, "shard_size": photos, "folder_labels": True})
    wait_for_run(stack, "face_ingest", f"ingest-{batch}", timeout_s=ingest_timeout_s)
    trigger(stack, "face_recluster", f"recluster-{batch}", {"force": True})
    wait_for_run(stack, "face_recluster", f"recluster-{batch}", timeout_s=300)


def version_thresholds(client, version: int) -> dict[str, float]:
    """The thresholds a registered version carries (tags ``faces.threshold.*``)."""
    return {key.removeprefix("faces.threshold."): float(value) for key, value in
            client.get_model_version("face-embedder", str(version)).tags.items()
            if key.startswith("faces.threshold.")}


def test_face_ingest_triggered_through_the_rest_api(stack):
    """Six LFW photos uploaded to the stack's S3, ingested by the running scheduler's workers."""
    photos = upload_batch(stack, "incoming/lfw-six")
    batch_id = "stack-lfw-six"
    # One shard: every mapped task is a process importing TensorFlow, and two shards on two
    # cores cost ~60 s more here; mapping over shards is exercised by tests/dags (LocalExecutor
    # in-process and CeleryExecutor with two workers).
    trigger(stack, "face_ingest", "ingest-lfw-six", {"batch": f"s3://{stack.config.bucket}/incoming/lfw-six",
                                                     "batch_id": batch_id, "shard_size": 6, "folder_labels": True})
    tasks = wait_for_run(stack, "face_ingest", "ingest-lfw-six", timeout_s=300)
    assert {task for (task, _), state in tasks.items() if state == "success"} >= {
        "plan", "validate_images", "detect", "validate_faces", "embed", "assign", "record_metrics"}
    client = stack.mlflow()
    experiment = client.get_experiment_by_name("face_ingest")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`faces.key` = '{batch_id}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics.get("faces", 0) >= len(PEOPLE) * 3 - 1, runs[0].data.metrics  # one face per photo
    assert runs[0].data.tags.get("faces.data_version")  # every run records the data version
    assert any(key.startswith("faces.version.") for key in runs[0].data.tags)  # ... and the component versions
    # The work area is the stack's S3: the batch's outputs are there, keyed by the batch id.
    written = list(stack.minio().list_objects(stack.config.bucket, prefix=f"work/batches/{batch_id}/", recursive=True))
    assert written, "no batch output in the stack's S3 work area"
    assert photos == 6


def test_face_retrain_from_the_store_with_the_trigger_forms_defaults(stack):
    """Photos uploaded to S3 -> face_ingest -> face_recluster -> face_retrain triggered with the form's
    defaults (labels from the store): the cycle learns from the store's identities, registers one new
    model that differs from the champion, the comparison and decision are in the MLflow server, and on
    clean photos the challenger loses."""
    photos = upload_batch(stack, "incoming/retrain-people", RETRAIN_PEOPLE)
    ingest_and_recluster(stack, "retrain-people", photos, ingest_timeout_s=400)

    client = stack.mlflow()
    before = {int(v.version) for v in client.search_model_versions("name = 'face-embedder'")}
    run_id = f"retrain-{uuid.uuid4().hex[:8]}"
    trigger(stack, "face_retrain", run_id, {})  # the trigger form's defaults: labels from the identity store
    wait_for_run(stack, "face_retrain", run_id, timeout_s=600)

    new = [v for v in client.search_model_versions("name = 'face-embedder'") if int(v.version) not in before]
    challengers = [v for v in new if "faces.retrain.key" in v.tags]
    assert len(challengers) == 1, [dict(v.tags) for v in new]
    challenger = challengers[0]
    assert int(client.get_model_version_by_alias("face-embedder", "challenger").version) == int(challenger.version)
    assert challenger.tags["origin"] == "self-labelled head re-fit"
    assert challenger.tags["faces.data_version"].startswith("labels-md5:")
    # The cycle's label set is versioned in the project's DVC remote `minio` (s3://<bucket>/dvc) under its md5.
    from components.train.retrain import dvc_key

    md5 = challenger.tags["faces.data_version"].removeprefix("labels-md5:")
    assert stack.minio().stat_object(stack.config.bucket, f"dvc/{dvc_key(md5)}").size > 0
    runs = client.search_runs([client.get_experiment_by_name("retrain").experiment_id],
                              filter_string=f"params.request_key = '{challenger.tags['faces.retrain.key']}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    metrics, params = runs[0].data.metrics, runs[0].data.params
    assert params["labels_from"] == "store" and params["labels.source"].startswith("identity store sqlite:///")
    assert metrics["head_moved"] > 0.01  # a different model, not the champion's weights
    assert {"champion_accuracy", "challenger_accuracy", "champion_future_auc", "challenger_unseen_auc"} <= set(metrics)
    # Clean photos of a dozen people: the champion already separates them (held-out accuracy near 1),
    # so the challenger cannot win significantly and must lose; the champion stays and says why.
    assert runs[0].data.tags["decision"] == "keep", metrics
    assert metrics["champion_future_accuracy"] >= 0.97, metrics  # 0.982-0.987 in runs of this module
    assert metrics["evidence_pairs_won"] < 5 and metrics["evidence_p_value"] > 0.05, metrics
    champion = int(client.get_model_version_by_alias("face-embedder", "champion").version)
    assert champion != int(challenger.version) and challenger.tags["decision"] == "keep"
    assert "champion kept" in challenger.tags["decision_reason"]


def degraded_people() -> list[str]:
    """The first people (by name) with enough photos, other than those the store already holds."""
    taken = {*PEOPLE, *RETRAIN_PEOPLE, "George_W_Bush"}
    return sorted(p.name for p in LFW.iterdir() if p.is_dir() and p.name not in taken
                  and sum(1 for _ in p.iterdir()) >= DEGRADED_PHOTOS)[:DEGRADED_PEOPLE]


def upload_degraded(stack: Stack, prefix: str) -> int:
    import io

    import numpy as np
    from PIL import Image

    from components.bench.retrain import degrade_photo

    client = stack.minio()
    count = 0
    for i, person in enumerate(degraded_people()):
        for j, photo in enumerate(sorted((LFW / person).iterdir())[:DEGRADED_PHOTOS]):
            data = degrade_photo(np.asarray(Image.open(photo).convert("RGB")), seed=1000 * i + j)
            client.put_object(stack.config.bucket, f"{prefix}/{person}/{photo.name}", io.BytesIO(data), len(data),
                              content_type="image/jpeg")
            count += 1
    return count


def dag_runs(stack: Stack, dag_id: str) -> list[dict]:
    status, body = http("GET", f"{stack.url('airflow')}/api/v2/dags/{dag_id}/dagRuns?limit=100", token=stack.airflow_token())
    assert status == 200, body
    return body["dag_runs"]


def switch_on(stack: Stack, dag_id: str) -> None:
    """What the UI's toggle does (DAGs start paused)."""
    status, body = http("PATCH", f"{stack.url('airflow')}/api/v2/dags/{dag_id}", {"is_paused": False},
                        token=stack.airflow_token())
    assert status == 200, body


def test_a_cycle_on_a_poor_camera_wins_and_reaches_serving(stack):
    """The domain-shift stream, with nobody labelling anything: photos from a poor camera uploaded to S3
    -> face_ingest -> face_recluster, whose new identities schedule face_retrain (the trigger form's
    defaults) by themselves: the self-labelled challenger differs from the champion, beats it
    significantly on the newest photos of known people without falling on people it never trained on,
    and is promoted; face_reembed follows the promotion by itself and serving answers with the new
    version and its own threshold."""
    for dag_id in ("face_retrain", "face_reembed"):  # the automatic loop: the user switches both on
        switch_on(stack, dag_id)
    retrains_before = {run["dag_run_id"] for run in dag_runs(stack, "face_retrain")}
    reembeds_before = {run["dag_run_id"] for run in dag_runs(stack, "face_reembed")}
    client = stack.mlflow()
    experiment = client.get_experiment_by_name("retrain").experiment_id
    runs_before = {run.info.run_id for run in client.search_runs([experiment])}
    champion_before = int(client.get_model_version_by_alias("face-embedder", "champion").version)

    photos = upload_degraded(stack, "incoming/poor-camera")
    ingest_and_recluster(stack, "poor-camera", photos, ingest_timeout_s=900)

    deadline = time.monotonic() + 900  # new identities -> asset faces://identities -> face_retrain
    while True:
        new = [run for run in dag_runs(stack, "face_retrain") if run["dag_run_id"] not in retrains_before]
        if new and all(run["state"] not in ("queued", "running") for run in new):
            break
        assert time.monotonic() < deadline, f"face_retrain did not follow the new identities: {new}"
        time.sleep(3)
    assert all(run["state"] == "success" for run in new), new
    cycles = [run for run in client.search_runs([experiment]) if run.info.run_id not in runs_before]
    promoted = [run for run in cycles if run.data.tags.get("decision") == "promote"]
    assert len(promoted) == 1, [(run.data.tags.get("decision_reason"), run.data.metrics) for run in cycles]
    metrics, tags, params = promoted[0].data.metrics, promoted[0].data.tags, promoted[0].data.params
    assert params["retrain.promote_on"] == "future"
    assert metrics["evidence_p_value"] <= float(params["retrain.max_p_value"]), metrics
    assert metrics["evidence_pairs_won"] > metrics["evidence_pairs_lost"], metrics
    assert metrics["head_moved"] > 0.01  # a different model, not the champion's weights
    assert (metrics["challenger_unseen_accuracy"]
            >= metrics["champion_unseen_accuracy"] - float(params["retrain.guard_margin"])), metrics
    # Against the folder names (a diagnostic the decision never sees) it is no worse either.
    assert (metrics["challenger_against_folder_names_accuracy"]
            >= metrics["champion_against_folder_names_accuracy"] - 0.005), metrics
    challenger = int(tags["challenger_version"])
    assert challenger != champion_before and int(tags["champion_version"]) == champion_before
    assert int(client.get_model_version_by_alias("face-embedder", "champion").version) == challenger
    thresholds = version_thresholds(client, challenger)

    # The promotion updated faces://champion: face_reembed runs by itself, then serving follows.
    deadline = time.monotonic() + 600
    while not [run for run in dag_runs(stack, "face_reembed") if run["dag_run_id"] not in reembeds_before
               and run["state"] == "success"]:
        assert time.monotonic() < deadline, f"face_reembed did not follow the promotion: {dag_runs(stack, 'face_reembed')}"
        time.sleep(3)
    answer = verify_until_version(stack, challenger)
    assert answer["registry_version"] == challenger, answer
    assert answer["threshold"] == thresholds["verify"] and answer["same"] is True


def verify_until_version(stack: Stack, version: int, timeout_s: float = 120) -> dict:
    """/verify of one photo with itself until the service answers with ``version`` (it reloads on
    face_reembed's POST /reload and also polls the registry)."""
    import httpx

    photo = sorted((LFW / "Laura_Bush").iterdir())[0]
    pair = [(name, (photo.name, photo.read_bytes(), "image/jpeg")) for name in ("photo_a", "photo_b")]
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=stack.url("serving"), headers={"X-API-Key": stack.client["FACES_API_KEY"]},
                      timeout=120) as http_client:
        while True:
            answer = http_client.post("/verify", files=pair).json()
            if answer.get("registry_version") == version or time.monotonic() > deadline:
                return answer
            time.sleep(2)


def test_a_rollback_reaches_serving_through_face_reembed(stack):
    """Roll back as a user would: `faces models promote` of the version before (the stack's env), then
    face_reembed triggered with the trigger form's defaults: the store moves back and serving answers
    with that version and its threshold."""
    client = stack.mlflow()
    champion = int(client.get_model_version_by_alias("face-embedder", "champion").version)
    previous = int(client.get_model_version("face-embedder", str(champion)).tags["base_version"])
    assert previous != champion
    thresholds = version_thresholds(client, previous)
    assert set(thresholds) == {"verify", "cluster", "assign"}, "the version was registered without its thresholds"
    env = {**stack.env, **stack.client, "MLFLOW_TRACKING_URI": stack.url("mlflow")}
    done = subprocess.run([sys.executable, "-m", "components.cli", "models", "promote", str(previous),
                           "--reason", "rollback from the stack test"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "face_reembed" in done.stdout + done.stderr  # the user is told what comes next
    run_id = f"reembed-{uuid.uuid4().hex[:8]}"
    trigger(stack, "face_reembed", run_id, {})
    wait_for_run(stack, "face_reembed", run_id, timeout_s=300)
    answer = verify_until_version(stack, previous)
    assert answer["registry_version"] == previous, answer
    assert answer["threshold"] == thresholds["verify"] and answer["same"] is True


def test_down_stops_everything(stack_env, stack):
    """Runs last in this module: ``down`` leaves no process of the run dir and frees every port."""
    config = stack.config
    before = stack_module.stack_processes(config)
    assert before, "no process carries the run dir marker"
    done = run_stack("down", stack_env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "stack is down" in done.stdout
    assert stack_module.stack_processes(config) == []
    for process in before:
        assert not process.is_running() or process.status() == "zombie", process
    for name, port in config.ports.items():
        assert not stack_module.port_in_use(port), f"{name} port {port} still bound"
    again = run_stack("down", stack_env, timeout=60)
    assert again.returncode == 0 and "nothing running" in again.stdout
