"""The production compose file and the local stack's configuration, checked without a daemon.

Docker is a client only on these machines (no ``docker compose``), so the compose file is
interpolated here as Compose does (``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}``,
``$$``) and validated against the Compose Specification's JSON schema
(deploy/schema/compose-spec.json, from compose-spec, Apache-2.0).
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "docker-compose.yml"
SCHEMA = REPO / "deploy" / "schema" / "compose-spec.json"
ENV_EXAMPLE = REPO / "deploy" / ".env.example"

sys.path.insert(0, str(REPO / "deploy" / "local"))
import stack  # noqa: E402

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


class MissingVariable(KeyError):
    pass


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution over every string of the document."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        current = env.get(name)
        if operator in (":-", "-"):
            return current if current not in (None, "") or (operator == "-" and current is not None) else argument
        if operator in (":?", "?"):
            if current in (None, "") if operator == ":?" else current is None:
                raise MissingVariable(f"{name}: {argument}")
            return current
        return current or ""

    return _VARIABLE.sub(replace, value)


def example_env() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


@pytest.fixture(scope="module")
def compose() -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), example_env())


@pytest.fixture(scope="module")
def validator() -> jsonschema.Validator:
    return jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))


def test_compose_file_matches_the_compose_spec(compose, validator):
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_the_schema_check_catches_mistakes(compose, validator):
    broken = copy.deepcopy(compose)
    broken["services"]["airflow-worker"]["replica"] = 3  # a typo of deploy.replicas
    assert list(validator.iter_errors(broken))
    broken = copy.deepcopy(compose)
    broken["services"]["mlflow"]["depends_on"]["postgres"]["condition"] = "service_ready"
    assert list(validator.iter_errors(broken))


def test_every_secret_must_be_set():
    """Without deploy/.env the file does not interpolate: nothing runs with a default secret."""
    raw = yaml.safe_load(COMPOSE.read_text())
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD|MINIO_ROOT|FACES_API_KEY|AIRFLOW_"):
        interpolate(raw, {})
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE.read_text()))
    assert required <= set(example_env()), f"missing from .env.example: {required - set(example_env())}"


def test_workers_scale_out(compose):
    """`--scale airflow-worker=N` needs no fixed name or host port; the executor is Celery on Redis + Postgres."""
    worker = compose["services"]["airflow-worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["command"][:3] == ["airflow", "celery", "worker"]
    env = worker["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
    # Every PostgreSQL URL names psycopg2, the driver in the lock (SQLAlchemy 2.1 would pick psycopg 3).
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    assert env["FACES_STORE_URL"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] == ""  # asyncpg is not in the lock
    for name in ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        assert compose["services"][name]["environment"] == env, name


def test_mlflow_on_postgres_and_minio(compose):
    mlflow = compose["services"]["mlflow"]["environment"]
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert mlflow["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert mlflow["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_production_and_local_stack_use_the_same_variables(compose, tmp_path):
    """The DAGs, the service and MLflow read one set of names, locally and in production."""
    config = stack.StackConfig.from_env({"STACK_DIR": str(tmp_path)})
    local = set(stack.client_env(config, {"s3_access_key": "a", "s3_secret_key": "b", "api_key": "c"}))
    for name in ("airflow-worker", "airflow-scheduler", "serving", "mlflow"):
        missing = local - set(compose["services"][name]["environment"])
        assert not missing, f"{name} lacks {sorted(missing)}"


def test_depends_on_names_real_services(compose):
    services = set(compose["services"])
    for name, service in compose["services"].items():
        assert set(service.get("depends_on", {})) <= services, name


def test_stack_config_rejects_shared_ports(tmp_path):
    with pytest.raises(stack.StackError, match="share a port"):
        stack.StackConfig.from_env({"STACK_DIR": str(tmp_path), "STACK_MLFLOW_PORT": "8080"})
    with pytest.raises(stack.StackError, match="not a port"):
        stack.StackConfig.from_env({"STACK_DIR": str(tmp_path), "STACK_S3_PORT": "http"})


def test_stack_defaults_keep_every_port_explicit(tmp_path):
    """SeaweedFS's volume server and Airflow both default to 8080: the stack never leaves a port to a default."""
    config = stack.StackConfig.from_env({"STACK_DIR": str(tmp_path)})
    assert len(set(config.ports.values())) == len(stack.PORTS)
    keys = {"s3_access_key": "a", "s3_secret_key": "b", "api_key": "c", "airflow_jwt_secret": "d",
            "airflow_api_secret_key": "e", "airflow_fernet_key": "f"}
    weed = next(s for s in stack.services(config, keys) if s.name == "s3")
    flags = {arg.split("=")[0] for arg in weed.argv if arg.startswith("-") and "port" in arg}
    assert {"-master.port", "-master.port.grpc", "-volume.port", "-volume.port.grpc", "-filer.port",
            "-filer.port.grpc", "-s3.port", "-s3.port.grpc"} <= flags
    assert all(arg.startswith(("-ip=127.0.0.1", "-ip.bind=127.0.0.1")) for arg in weed.argv if arg.startswith("-ip"))
    airflow = stack.airflow_env(config, keys)
    assert airflow["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert airflow["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert airflow["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:///")
    assert int(airflow["AIRFLOW__CORE__PARALLELISM"]) <= 4
    # The task supervisor notices its finished task within a second, not five (an executor slot held 5 s longer).
    assert airflow["AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL"] == "1"


def test_a_recycled_pid_is_never_taken_for_a_service(tmp_path):
    """`down` signals a recorded pid only if the process also has the recorded start time."""
    import os

    import psutil

    config = stack.StackConfig.from_env({"STACK_DIR": str(tmp_path)})
    record = tmp_path / "pids" / "mlflow.json"
    record.parent.mkdir()
    me = psutil.Process(os.getpid())
    record.write_text(json.dumps({"pid": me.pid, "create_time": me.create_time() - 100}))
    assert stack._live_root(config, "mlflow") is None
    record.write_text(json.dumps({"pid": me.pid, "create_time": me.create_time()}))
    assert stack._live_root(config, "mlflow").pid == me.pid


def test_down_without_a_run_dir_is_a_no_op(tmp_path, capsys):
    config = stack.StackConfig.from_env({"STACK_DIR": str(tmp_path / "never-started")})
    assert stack.down(config) == 0
    assert "nothing running" in capsys.readouterr().out


# -- a crashed service's port: waited for, not called "already in use" ------------------------

HOLD_PORT = """
import socket, sys
server = socket.socket()
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen()
print("listening", flush=True)
sys.stdin.read()  # holds the port until its stdin closes (or it is killed)
"""


def _hold(port: int, env: dict | None = None):
    import os
    import subprocess

    # Its own process group, as every service of the stack has (stopping one signals its group).
    holder = subprocess.Popen([sys.executable, "-c", HOLD_PORT, str(port)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
                              start_new_session=True)
    assert holder.stdout.readline().strip() == "listening"  # the port is taken now
    return holder


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_up_waits_for_a_port_that_is_being_released():
    port = _free_port()
    holder = _hold(port)
    waited = []

    def sleep(seconds: float) -> None:  # the dying service finishes exiting while `up` waits
        if not waited:
            holder.stdin.close()
            holder.wait(timeout=30)
        waited.append(seconds)

    try:
        assert stack.port_in_use(port)
        assert stack.wait_for_ports([port], 30, sleep=sleep) == []
        assert waited  # it did wait: the port was busy when asked
    finally:
        holder.kill()
        holder.wait()


def test_a_port_still_held_at_the_deadline_is_reported_without_waiting_longer():
    port = _free_port()
    holder = _hold(port)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    try:
        assert stack.wait_for_ports([port], 5.0, poll_s=0.5, clock=lambda: now[0], sleep=sleep) == [port]
        assert 5.0 <= now[0] <= 5.5
    finally:
        holder.kill()
        holder.wait()


def test_a_crashed_services_leftovers_are_stopped_and_a_strangers_port_is_reported(tmp_path):
    """The root of `mlflow` died, its worker (same run dir, same service) still listens: `up` stops the
    worker and starts; a port a process outside the stack holds is reported after the wait."""
    mlflow_port, serving_port = _free_port(), _free_port()
    config = stack.StackConfig.from_env({"STACK_DIR": str(tmp_path), "STACK_MLFLOW_PORT": str(mlflow_port),
                                         "STACK_SERVING_PORT": str(serving_port)})
    orphan = _hold(mlflow_port, {stack.MARKER: str(config.run_dir), stack.SERVICE_MARKER: "mlflow"})
    stranger = _hold(serving_port)
    services = [stack.Service("mlflow", ["true"], ("mlflow",), lambda: None),
                stack.Service("serving", ["true"], ("serving",), lambda: None)]
    try:
        taken = stack.release_ports(config, services, wait_s=1.0)
        assert [(service.name, name) for service, name in taken] == [("serving", "serving")]
        assert orphan.wait(timeout=30) is not None and not stack.port_in_use(mlflow_port)
        assert stranger.poll() is None  # never signal a process that is not the stack's
    finally:
        for process in (orphan, stranger):
            process.kill()
            process.wait()
