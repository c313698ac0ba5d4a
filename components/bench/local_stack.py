"""Driving the local stack (deploy/local/stack.py, ``make up``) from Python: start it on free ports, talk to it.

Shared by the stack's integration test (tests/integration/test_stack.py) and the
benchmark of the real Airflow path (``faces bench ingest-stack``): a temporary run dir
and free loopback ports for every server, ``up`` / ``down`` through the stack script as
``make`` runs it, and the REST calls the UI's buttons make (sign in, unpause, trigger,
follow a DAG run and its task instances).

Nothing here prints or returns the stack's generated keys: they stay in its run dir
(``secrets.json``, the env file, Airflow's password file).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from components.settings import PROJECT_ROOT

STACK_SCRIPT = PROJECT_ROOT / "deploy" / "local" / "stack.py"
# Variables of the caller's shell that would point the stack (or a run beside it) elsewhere.
FOREIGN_PREFIXES = ("STACK_", "FACES_", "MLFLOW_", "AIRFLOW", "AWS_", "S3_")


class StackRunError(RuntimeError):
    """The stack or one of its DAG runs did not do what was asked; the message says what happened."""


def stack_module():
    """deploy/local/stack.py as a module (deploy/local is not a package); the same object the test imports."""
    if str(STACK_SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(STACK_SCRIPT.parent))
    import stack  # noqa: PLC0415

    return stack


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open together so none repeats)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def http(method: str, url: str, body: dict | None = None, token: str | None = None,
         timeout: float = 30) -> tuple[int, dict | str]:
    """One JSON request; returns (status, decoded body or text). HTTP errors are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (loopback URLs)
            raw = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as error:
        raw, status = error.read().decode(errors="replace"), error.code
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw


def stack_params(path: Path, work_dir: Path) -> Path:
    """The project's parameters with every path absolute and local scratch (retrain checkpoints) in ``work_dir``:
    nothing the stack's DAG tasks write lands in the repository."""
    from components.bench import write_params
    from components.settings import load_settings

    settings = load_settings(PROJECT_ROOT / "params.yaml")
    return write_params(path, dataclasses.replace(
        settings, workflow=dataclasses.replace(settings.workflow, work_dir=work_dir),
        validate=dataclasses.replace(settings.validate, docs_dir=work_dir / "validation"),
        run=dataclasses.replace(settings.run, out_dir=work_dir / "demo")))


def stack_environment(run_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the stack script: ``run_dir`` as STACK_DIR, free ports for everything, a params copy."""
    run_dir.mkdir(parents=True, exist_ok=True)
    module = stack_module()
    ports = free_ports(len(module.PORTS))
    env = {key: value for key, value in (os.environ if base is None else base).items()
           if not key.startswith(FOREIGN_PREFIXES)}
    env.update({variable: str(port) for (variable, _), port in zip(module.PORTS.values(), ports)})
    env["STACK_DIR"] = str(run_dir)
    env["STACK_HEALTH_TIMEOUT"] = "240"
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["FACES_PARAMS"] = str(stack_params(run_dir / "params.yaml", work_dir=run_dir / "local"))
    return env


def run_stack(command: str, env: dict[str, str], timeout: float = 420) -> subprocess.CompletedProcess:
    """``python deploy/local/stack.py <command>`` with ``env`` (what ``make up`` / ``make down`` run)."""
    return subprocess.run([sys.executable, str(STACK_SCRIPT), command], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def client_values(env_file: Path) -> dict[str, str]:
    """The variables of the stack's env file (``export KEY=<shell-quoted value>`` lines), unquoted."""
    values = {}
    for line in env_file.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            key, raw = line.removeprefix("export ").split("=", 1)
            values[key] = (shlex.split(raw) or [""])[0]
    return values


class Stack:
    """A running stack: its environment, configuration and the keys it generated (never printed)."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.config = stack_module().StackConfig.from_env(env)
        self.client = client_values(self.config.env_file)

    def url(self, name: str) -> str:
        return self.config.url(name)

    def airflow_token(self) -> str:
        password = json.loads(self.config.password_file.read_text())["admin"]
        status, body = http("POST", f"{self.url('airflow')}/auth/token", {"username": "admin", "password": password})
        if status not in (200, 201):
            raise StackRunError(f"Airflow refused the admin sign-in: {status}")
        return body["access_token"]

    def minio(self):
        from minio import Minio

        return Minio(f"127.0.0.1:{self.config.ports['s3']}", access_key=self.client["AWS_ACCESS_KEY_ID"],
                     secret_key=self.client["AWS_SECRET_ACCESS_KEY"], secure=False)

    def mlflow(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.url("mlflow"), registry_uri=self.url("mlflow"))

    # -- the REST calls of the UI's buttons ------------------------------------------------------

    def api(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> dict:
        """``/api/v2/<path>``; a non-2xx answer raises with its status and body."""
        status, answer = http(method, f"{self.url('airflow')}/api/v2/{path}", body, token=token or self.airflow_token())
        if not 200 <= status < 300:
            raise StackRunError(f"{method} /api/v2/{path} -> {status}: {str(answer)[:500]}")
        return answer

    def wait_for_dag(self, dag_id: str, timeout_s: float = 90) -> None:
        """Until the dag-processor has parsed ``dag_id`` (shortly after start)."""
        token = self.airflow_token()
        deadline = time.monotonic() + timeout_s
        while True:
            status, body = http("GET", f"{self.url('airflow')}/api/v2/dags/{dag_id}", token=token)
            if status == 200:
                return
            if time.monotonic() > deadline:
                raise StackRunError(f"{dag_id} never appeared: {status} {str(body)[:300]}")
            time.sleep(1)

    def unpause(self, dag_id: str) -> None:
        """What the UI's toggle does (DAGs start paused)."""
        self.api("PATCH", f"dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, run_id: str, conf: dict) -> dict:
        """Unpause the DAG and POST a DAG run, as the UI's Trigger button does; returns the new run."""
        self.wait_for_dag(dag_id)
        self.unpause(dag_id)
        return self.api("POST", f"dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None, "conf": conf})

    def dag_run(self, dag_id: str, run_id: str, token: str | None = None) -> dict:
        return self.api("GET", f"dags/{dag_id}/dagRuns/{run_id}", token=token)

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float, poll_s: float = 1.0) -> dict:
        """Poll the DAG run until it ends (success or failed); returns the run. Raises on timeout."""
        token, signed_at = self.airflow_token(), time.monotonic()
        deadline = time.monotonic() + timeout_s
        while True:
            if time.monotonic() - signed_at > 600:  # a fresh token now and then: long runs outlive none
                token, signed_at = self.airflow_token(), time.monotonic()
            run = self.dag_run(dag_id, run_id, token=token)
            if run["state"] in ("success", "failed"):
                return run
            if time.monotonic() > deadline:
                raise StackRunError(f"{dag_id} run {run_id} still {run['state']!r} after {timeout_s:.0f} s")
            time.sleep(poll_s)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """Every task instance of the run (mapped ones one per index), all pages."""
        token = self.airflow_token()
        found: list[dict] = []
        while True:
            page = self.api("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100&offset={len(found)}",
                            token=token)
            found += page["task_instances"]
            if not page["task_instances"] or len(found) >= page.get("total_entries", 0):
                return found

    def failed_task_logs(self, dag_id: str, run_id: str, states: dict) -> dict[str, str]:
        """The log ends of the run's failed (or retried) tasks, by log file."""
        logs = self.config.airflow_home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        bad = {task for (task, _), state in states.items() if state in ("failed", "up_for_retry")}
        return {str(p.relative_to(logs)): p.read_text(errors="replace")[-3000:] for p in sorted(logs.rglob("*.log"))
                if any(f"task_id={task}" in str(p) for task in bad)}
