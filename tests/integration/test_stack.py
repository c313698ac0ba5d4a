"""``make up`` end to end: the real servers on free loopback ports in a temporary run dir.

The stack script (what ``make up`` / ``make down`` run) starts SeaweedFS, MLflow, the
BentoML service and Airflow (api-server, scheduler, dag-processor); every health
endpoint must answer. Against the running servers, a ``face_ingest`` run over a few
LFW photos (uploaded to the stack's S3) and a ``face_retrain`` run are triggered
through Airflow's REST API, as the UI's trigger button does, and must succeed with
their runs and the new model version in the MLflow server. ``down`` must then leave
nothing running.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "deploy" / "local" / "stack.py"
LFW = REPO / "data" / "lfw" / "images_deepfunneled"
# Two people, three photos each: two identities' worth of faces, small enough for CI.
PEOPLE = {"Aaron_Peirsol": 3, "Laura_Bush": 3}

pytestmark = [pytest.mark.integration, pytest.mark.slow]

sys.path.insert(0, str(STACK.parent))
import stack as stack_module  # noqa: E402  (deploy/local is not a package)


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open together so none repeats)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def http(method: str, url: str, body: dict | None = None, token: str | None = None,
         timeout: float = 30) -> tuple[int, dict | str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as error:
        raw, status = error.read().decode(errors="replace"), error.code
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw


def run_stack(command: str, env: dict[str, str], timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(STACK), command], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


class Stack:
    """A running stack: its environment, configuration and the keys it generated."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.config = stack_module.StackConfig.from_env(env)
        self.client = dict(line.removeprefix("export ").split("=", 1) for line in
                           self.config.env_file.read_text().splitlines() if line.startswith("export "))

    def url(self, name: str) -> str:
        return self.config.url(name)

    def airflow_token(self) -> str:
        password = json.loads(self.config.password_file.read_text())["admin"]
        status, body = http("POST", f"{self.url('airflow')}/auth/token", {"username": "admin", "password": password})
        assert status in (200, 201), body
        return body["access_token"]

    def minio(self):
        from minio import Minio

        return Minio(f"127.0.0.1:{self.config.ports['s3']}", access_key=self.client["AWS_ACCESS_KEY_ID"],
                     secret_key=self.client["AWS_SECRET_ACCESS_KEY"], secure=False)

    def mlflow(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.url("mlflow"), registry_uri=self.url("mlflow"))


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory) -> dict[str, str]:
    """Environment for the stack script: a temporary run dir and free ports for everything."""
    run_dir = tmp_path_factory.mktemp("stack")
    ports = free_ports(len(stack_module.PORTS))
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("STACK_", "FACES_", "MLFLOW_", "AIRFLOW", "AWS_", "S3_"))}
    env.update({variable: str(port) for (variable, _), port in zip(stack_module.PORTS.values(), ports)})
    env["STACK_DIR"] = str(run_dir)
    env["STACK_HEALTH_TIMEOUT"] = "240"
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    params = REPO / "tests" / "integration" / "stack_params.yaml"
    if params.exists():
        env["FACES_PARAMS"] = str(params)
    return env


@pytest.fixture(scope="module")
def stack(stack_env):
    """``up`` once for the module; ``down`` always, even when a test failed."""
    try:
        started = time.monotonic()
        done = run_stack("up", stack_env)
        assert done.returncode == 0, f"stack up failed:\n{done.stdout}\n{done.stderr}"
        print(f"stack up in {time.monotonic() - started:.0f} s")
        yield Stack(stack_env)
    finally:
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
    assert stack.minio().bucket_exists(stack.config.bucket)
    # Where the admin password is, as `up` printed; it opens the REST API.
    assert stack.airflow_token()
    # Every service listens on loopback only, on the port it was given.
    for name in ("airflow", "mlflow", "serving", "s3"):
        with socket.create_connection(("127.0.0.1", stack.config.ports[name]), timeout=5):
            pass


def test_status_reports_memory(stack):
    done = run_stack("status", stack.env, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    proc = subprocess.run([sys.executable, str(STACK), "status", "--json"], env=stack.env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    rows = {row["service"]: row for row in json.loads(proc.stdout)["services"]}
    assert set(rows) == {"s3", "mlflow", "serving", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor"}
    for row in rows.values():
        assert row["running"] and row["healthy"], row
        assert row["pss_mib"] > 10, row


def test_up_again_says_already_up(stack):
    pids = {p.name: p.read_text() for p in (stack.config.run_dir / "pids").iterdir()}
    done = run_stack("up", stack.env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "already up" in done.stdout
    assert {p.name: p.read_text() for p in (stack.config.run_dir / "pids").iterdir()} == pids


def test_port_taken_is_a_clear_error(stack, tmp_path):
    """A second stack on the same ports refuses to start and names the variable to change."""
    env = {**stack.env, "STACK_DIR": str(tmp_path / "other")}
    done = run_stack("up", env, timeout=60)
    assert done.returncode == 1
    assert "already in use" in done.stderr
    assert "STACK_AIRFLOW_PORT" in done.stderr
    assert not (tmp_path / "other" / "pids").exists() or not any((tmp_path / "other" / "pids").iterdir())


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
