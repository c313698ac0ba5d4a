"""The local stack behind ``make up`` / ``make down``: every server on loopback, one run dir.

``python deploy/local/stack.py up`` starts, each in its own process group and on a port
set explicitly (environment variables below):

- SeaweedFS (``weed server ... -s3``): an S3 server storing on disk; the bucket is created.
- MLflow tracking + registry (``mlflow/start.sh``): SQLite + local artifacts.
- The BentoML service (``bentoml serve serving.service:FaceAPI``).
- The people page (``faces ui``) over the DAGs' identity store; sign in with ``FACES_API_KEY``.
- Airflow 3: ``api-server``, ``scheduler`` and ``dag-processor`` with the LocalExecutor,
  SQLite, low parallelism, ``dags_folder`` = the repository's ``dags/``, simple auth manager.

It waits until each health endpoint answers, writes the process ids to
``<run dir>/pids/`` and the environment the DAGs and your shell need to
``<run dir>/env``, and prints the URLs. Running ``up`` again starts only what is not
running (``already up`` when everything is). ``down`` stops exactly what ``up``
started: every process carries the run dir in its environment
(``FACES_STACK_RUN_DIR``), so children that left the process group (Airflow task
processes, BentoML workers) are found too. ``status`` prints health and memory.

Environment (all optional):
    STACK_DIR: the run dir (default ``<repo>/.stack``); data (SQLite databases,
        artifacts, S3 volumes) stays there between ``down`` and ``up``.
    STACK_AIRFLOW_PORT (8080), STACK_MLFLOW_PORT (5000), STACK_SERVING_PORT (3000),
    STACK_UI_PORT (8600), STACK_S3_PORT (8333): the ports users see.
    STACK_WEED_MASTER_PORT (9333), STACK_WEED_VOLUME_PORT (8081),
    STACK_WEED_FILER_PORT (8888) and their gRPC ports STACK_WEED_MASTER_GRPC_PORT
    (19333), STACK_WEED_VOLUME_GRPC_PORT (18081), STACK_WEED_FILER_GRPC_PORT (18888),
    STACK_S3_GRPC_PORT (18333); STACK_AIRFLOW_WORKER_LOG_PORT (8793),
    STACK_AIRFLOW_TRIGGER_LOG_PORT (8794): internal ports, set so that nothing
    falls back to a default that another server already uses (SeaweedFS's volume
    server and Airflow both default to 8080).
    STACK_S3_BUCKET (``faces``), STACK_AIRFLOW_PARALLELISM (2),
    STACK_HEALTH_TIMEOUT (240 seconds), STACK_PORT_WAIT (60 seconds: how long a port a crashed
    service is still releasing is waited for), STACK_DAGS_FOLDER (the repository's ``dags/``).
    FACES_WORK_URI (``s3://<bucket>/work``), FACES_STORE_URL (SQLite in the run dir):
    the DAGs' work area and identity store, passed on to every process.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
MARKER = "FACES_STACK_RUN_DIR"
SERVICE_MARKER = "FACES_STACK_SERVICE"

# name -> (environment variable, default). Order matters only for messages.
PORTS: dict[str, tuple[str, int]] = {
    "airflow": ("STACK_AIRFLOW_PORT", 8080),
    "mlflow": ("STACK_MLFLOW_PORT", 5000),
    "serving": ("STACK_SERVING_PORT", 3000),
    "ui": ("STACK_UI_PORT", 8600),
    "s3": ("STACK_S3_PORT", 8333),
    "s3_grpc": ("STACK_S3_GRPC_PORT", 18333),
    "weed_master": ("STACK_WEED_MASTER_PORT", 9333),
    "weed_master_grpc": ("STACK_WEED_MASTER_GRPC_PORT", 19333),
    "weed_volume": ("STACK_WEED_VOLUME_PORT", 8081),
    "weed_volume_grpc": ("STACK_WEED_VOLUME_GRPC_PORT", 18081),
    "weed_filer": ("STACK_WEED_FILER_PORT", 8888),
    "weed_filer_grpc": ("STACK_WEED_FILER_GRPC_PORT", 18888),
    "airflow_worker_log": ("STACK_AIRFLOW_WORKER_LOG_PORT", 8793),
    "airflow_trigger_log": ("STACK_AIRFLOW_TRIGGER_LOG_PORT", 8794),
}


class StackError(RuntimeError):
    """The stack cannot start or stop; the message says what to do."""


@dataclass(frozen=True)
class StackConfig:
    """Where the stack runs and on which ports.

    Attributes:
        run_dir: pids, logs, generated secrets, the env file and the services' data.
        ports: port per name of :data:`PORTS`.
        bucket: the S3 bucket created at start.
        airflow_parallelism: Airflow task slots (each task is a process that may load models).
        health_timeout_s: how long ``up`` waits for every service to answer.
        port_wait_s: how long ``up`` waits for a port a stopped or crashed service is still
            releasing (its orphaned workers exiting, the kernel closing its listener) before
            it calls the port taken by another process.
        dags_folder: Airflow's DAG folder.
        work_uri, store_url: ``FACES_WORK_URI`` / ``FACES_STORE_URL`` when set (see the properties).
        bin_dir: where ``airflow``, ``mlflow``, ``bentoml`` and ``weed`` live.
    """

    run_dir: Path
    ports: Mapping[str, int]
    bucket: str = "faces"
    airflow_parallelism: int = 2
    health_timeout_s: float = 240.0
    port_wait_s: float = 60.0
    dags_folder: Path = REPO / "dags"
    work_uri: str = ""
    store_url: str = ""
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StackConfig:
        """Read the configuration from ``STACK_*`` environment variables (see the module doc)."""
        env = os.environ if environ is None else environ
        ports = {}
        for name, (variable, default) in PORTS.items():
            raw = env.get(variable, "").strip()
            try:
                port = int(raw) if raw else default
            except ValueError:
                raise StackError(f"{variable}={raw!r} is not a port number") from None
            if not 0 < port < 65536:
                raise StackError(f"{variable}={port} is not a port number (1-65535)")
            ports[name] = port
        clashes = _duplicates(ports)
        if clashes:
            raise StackError("two services would share a port: " + "; ".join(
                f"{port}: {', '.join(PORTS[n][0] for n in names)}" for port, names in clashes.items()))
        return cls(
            run_dir=Path(env.get("STACK_DIR") or REPO / ".stack").resolve(),
            ports=ports,
            bucket=env.get("STACK_S3_BUCKET") or "faces",
            airflow_parallelism=int(env.get("STACK_AIRFLOW_PARALLELISM") or 2),
            health_timeout_s=float(env.get("STACK_HEALTH_TIMEOUT") or 240),
            port_wait_s=float(env.get("STACK_PORT_WAIT") or 60),
            dags_folder=Path(env.get("STACK_DAGS_FOLDER") or REPO / "dags").resolve(),
            work_uri=env.get("FACES_WORK_URI") or "",
            store_url=env.get("FACES_STORE_URL") or "",
        )

    @property
    def workflow_uri(self) -> str:
        """The DAGs' work area: ``$FACES_WORK_URI``, else ``s3://<bucket>/work`` on the stack's S3."""
        return self.work_uri or f"s3://{self.bucket}/work"

    @property
    def identity_store_url(self) -> str:
        """``$FACES_STORE_URL``, else a SQLite file in the run dir (shared by the DAGs and the service)."""
        return self.store_url or f"sqlite:///{self.run_dir / 'faces' / 'faces.db'}"

    def url(self, name: str) -> str:
        return f"http://{LOOPBACK}:{self.ports[name]}"

    @property
    def airflow_home(self) -> Path:
        return self.run_dir / "airflow"

    @property
    def password_file(self) -> Path:
        return self.airflow_home / "simple_auth_manager_passwords.json.generated"

    @property
    def env_file(self) -> Path:
        return self.run_dir / "env"


def _duplicates(ports: Mapping[str, int]) -> dict[int, list[str]]:
    by_port: dict[int, list[str]] = {}
    for name, port in ports.items():
        by_port.setdefault(port, []).append(name)
    return {port: names for port, names in by_port.items() if len(names) > 1}


@dataclass(frozen=True)
class Service:
    """One server process of the stack.

    Attributes:
        name: used for the pid file, the log file and messages.
        argv: the command, run in its own session (process group) from the repository root.
        ports: names from :data:`PORTS` the process binds.
        health: returns None when healthy, else a short reason (polled while starting).
        env: extra environment on top of the stack's.
        after_start: run once the service is healthy (e.g. create the bucket).
        needs: a file that must exist for the service to start (else it is skipped, with a note).
    """

    name: str
    argv: list[str]
    ports: tuple[str, ...]
    health: Callable[[], str | None]
    env: Mapping[str, str] = field(default_factory=dict)
    after_start: Callable[[], None] | None = None
    needs: Path | None = None


# --------------------------------------------------------------------------- secrets, env


def _secrets(config: StackConfig) -> dict[str, str]:
    """Keys generated on the first ``up`` and kept (0600) so data stays readable across restarts."""
    path = config.run_dir / "secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    from cryptography.fernet import Fernet

    values = {
        "s3_access_key": "faces" + secrets.token_hex(6),
        "s3_secret_key": secrets.token_urlsafe(24),
        "api_key": secrets.token_urlsafe(24),
        "airflow_jwt_secret": secrets.token_urlsafe(32),
        "airflow_api_secret_key": secrets.token_urlsafe(32),
        "airflow_fernet_key": Fernet.generate_key().decode(),
    }
    _write_private(path, json.dumps(values, indent=2))
    return values


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def client_env(config: StackConfig, keys: Mapping[str, str]) -> dict[str, str]:
    """What the DAGs, the service and a user's shell need to talk to the stack."""
    s3 = config.url("s3")
    return {
        "MLFLOW_TRACKING_URI": config.url("mlflow"),
        "S3_ENDPOINT_URL": s3,
        "MLFLOW_S3_ENDPOINT_URL": s3,
        "AWS_ACCESS_KEY_ID": keys["s3_access_key"],
        "AWS_SECRET_ACCESS_KEY": keys["s3_secret_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "FACES_S3_BUCKET": config.bucket,
        "FACES_WORK_URI": config.workflow_uri,
        "FACES_STORE_URL": config.identity_store_url,
        "FACES_QUARANTINE_URI": f"s3://{config.bucket}/quarantine",
        # Retraining's label sets go to the project's DVC remote `minio` (.dvc/config: s3://faces/dvc).
        "FACES_LABELS_REMOTE": f"s3://{config.bucket}/dvc",
        "FACES_SERVING_URL": config.url("serving"),
        "FACES_API_KEY": keys["api_key"],
        "AIRFLOW_URL": config.url("airflow"),
    }


def airflow_env(config: StackConfig, keys: Mapping[str, str]) -> dict[str, str]:
    """Airflow's configuration, all through ``AIRFLOW__SECTION__KEY`` variables (no airflow.cfg edits)."""
    home = config.airflow_home
    api = config.url("airflow")
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(config.dags_folder),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # Every slot is a task process that may load TensorFlow: keep them few on a laptop.
        "AIRFLOW__CORE__PARALLELISM": str(config.airflow_parallelism),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(config.airflow_parallelism),
        "AIRFLOW__CORE__FERNET_KEY": keys["airflow_fernet_key"],
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": LOOPBACK,
        "AIRFLOW__API__PORT": str(config.ports["airflow"]),
        "AIRFLOW__API__BASE_URL": api,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": keys["airflow_api_secret_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": keys["airflow_jwt_secret"],
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(config.ports["airflow_worker_log"]),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(config.ports["airflow_trigger_log"]),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        # New or edited DAG files show up within half a minute instead of five.
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        # The task supervisor looks for its finished task process at most every min_heartbeat_interval
        # seconds (default 5): a task process still exiting when its sockets closed held its executor
        # slot ~5 s longer (14 of 23 task instances of a face_ingest run on a busy 2-core machine).
        # 1 s bounds that lag (the cost: a heartbeat per running task per second instead of per 5 s).
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
    }


def write_env_file(config: StackConfig, env: Mapping[str, str]) -> None:
    lines = ["# Written by `make up`: `source` it to talk to the local stack.", ""]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in env.items()]
    _write_private(config.env_file, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- health checks


def _http_status(url: str, timeout: float = 2.0) -> tuple[int | None, bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback URL we built)
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""
    except (OSError, ValueError):
        return None, b""


def http_ok(url: str) -> Callable[[], str | None]:
    def check() -> str | None:
        status, _ = _http_status(url)
        return None if status == 200 else f"GET {url} -> {status or 'no answer'}"
    return check


def airflow_component_ok(config: StackConfig, component: str) -> Callable[[], str | None]:
    """Healthy when the api-server's health endpoint reports ``component`` healthy (heartbeats)."""
    url = f"{config.url('airflow')}/api/v2/monitor/health"

    def check() -> str | None:
        status, body = _http_status(url)
        if status != 200:
            return f"GET {url} -> {status or 'no answer'}"
        if component == "api_server":
            return None
        state = (json.loads(body).get(component) or {}).get("status")
        return None if state == "healthy" else f"{component} is {state or 'not reporting'}"
    return check


def create_bucket(config: StackConfig, keys: Mapping[str, str]) -> Callable[[], None]:
    def create() -> None:
        from minio import Minio
        from minio.error import S3Error

        client = Minio(f"{LOOPBACK}:{config.ports['s3']}", access_key=keys["s3_access_key"],
                       secret_key=keys["s3_secret_key"], secure=False)
        deadline = time.monotonic() + 60
        while True:
            try:
                if not client.bucket_exists(config.bucket):
                    client.make_bucket(config.bucket)
                return
            except (S3Error, OSError) as error:
                # A fresh SeaweedFS answers /healthz a moment before its filer takes writes.
                if time.monotonic() > deadline:
                    raise StackError(f"could not create bucket {config.bucket!r}: {error}") from error
                time.sleep(0.5)
    return create


# --------------------------------------------------------------------------- the services


def services(config: StackConfig, keys: Mapping[str, str]) -> list[Service]:
    """The stack, in start order (``down`` stops all of it at once)."""
    b = config.bin_dir
    p = config.ports
    data = config.run_dir
    s3_config = data / "s3" / "identities.json"
    _write_private(s3_config, json.dumps({"identities": [{
        "name": "faces",
        "credentials": [{"accessKey": keys["s3_access_key"], "secretKey": keys["s3_secret_key"]}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    (data / "s3" / "data").mkdir(parents=True, exist_ok=True)
    weed = [
        str(b / "weed"), "server", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}", f"-dir={data / 's3' / 'data'}",
        f"-master.port={p['weed_master']}", f"-master.port.grpc={p['weed_master_grpc']}",
        "-master.volumeSizeLimitMB=256", "-volume.max=0", "-volume.preStopSeconds=0",
        f"-volume.port={p['weed_volume']}", f"-volume.port.grpc={p['weed_volume_grpc']}",
        "-filer", f"-filer.port={p['weed_filer']}", f"-filer.port.grpc={p['weed_filer_grpc']}",
        "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", f"-s3.config={s3_config}",
        # Extra gateways we do not use would otherwise take their default ports.
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]
    mlflow_env = {
        "MLFLOW_BIN": str(b / "mlflow"),
        "MLFLOW_STORE_DIR": str(data / "mlflow"),
        "MLFLOW_HOST": LOOPBACK,
        "MLFLOW_PORT": str(p["mlflow"]),
        "MLFLOW_WORKERS": "1",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    airflow = str(b / "airflow")
    return [
        Service("s3", weed, ("s3", "s3_grpc", "weed_master", "weed_master_grpc", "weed_volume",
                             "weed_volume_grpc", "weed_filer", "weed_filer_grpc"),
                http_ok(f"{config.url('s3')}/healthz"), after_start=create_bucket(config, keys)),
        Service("mlflow", ["bash", str(REPO / "mlflow" / "start.sh")], ("mlflow",),
                http_ok(f"{config.url('mlflow')}/health"), env=mlflow_env),
        Service("serving", [str(b / "bentoml"), "serve", "serving.service:FaceAPI", "--host", LOOPBACK,
                            "--port", str(p["serving"]), "--working-dir", str(REPO)], ("serving",),
                http_ok(f"{config.url('serving')}/readyz"),
                env={"BENTOML_HOME": str(data / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"},
                needs=REPO / "serving" / "service.py"),
        # The people page over the DAGs' identity store; sign in with the stack's FACES_API_KEY.
        Service("people-page", [str(b / "faces"), "ui", "--db", config.identity_store_url, "--host", LOOPBACK,
                                "--port", str(p["ui"]), "--allow-empty"], ("ui",),
                http_ok(f"{config.url('ui')}/healthz")),
        Service("airflow-api-server", [airflow, "api-server", "--host", LOOPBACK, "--port", str(p["airflow"]),
                                       "--workers", "1"], ("airflow",),
                airflow_component_ok(config, "api_server")),
        # Task logs are files in AIRFLOW_HOME that the api-server reads directly: no log server.
        Service("airflow-scheduler", [airflow, "scheduler", "--skip-serve-logs"], (),
                airflow_component_ok(config, "scheduler")),
        Service("airflow-dag-processor", [airflow, "dag-processor"], (),
                airflow_component_ok(config, "dag_processor")),
    ]


# --------------------------------------------------------------------------- processes


def _psutil():
    import psutil

    return psutil


def _record_path(config: StackConfig, name: str) -> Path:
    return config.run_dir / "pids" / f"{name}.json"


def _live_root(config: StackConfig, name: str):
    """The recorded root process of a service if it is still the one we started, else None."""
    psutil = _psutil()
    path = _record_path(config, name)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    try:
        process = psutil.Process(record["pid"])
        # A recycled pid would have another start time: never signal a stranger.
        if abs(process.create_time() - record["create_time"]) > 0.05 or process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    except psutil.Error:
        return None


def stack_processes(config: StackConfig, service: str | None = None) -> list:
    """Every live process carrying this run dir in its environment (optionally one service's)."""
    psutil = _psutil()
    found = []
    own = os.getpid()
    for process in psutil.process_iter(["pid"]):
        if process.pid == own:
            continue
        try:
            env = process.environ()
        except (psutil.Error, OSError):
            continue
        if env.get(MARKER) != str(config.run_dir):
            continue
        if service is not None and env.get(SERVICE_MARKER) != service:
            continue
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            continue
    return found


def _service_processes(config: StackConfig, name: str) -> list:
    psutil = _psutil()
    found = {p.pid: p for p in stack_processes(config, name)}
    root = _live_root(config, name)
    if root is not None:
        found[root.pid] = root
        try:
            for child in root.children(recursive=True):
                found[child.pid] = child
        except psutil.Error:
            pass
    return list(found.values())


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers do: a port with only TIME_WAIT connections left is free; a listener is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


def wait_for_ports(ports: Iterable[int], deadline_s: float, *, poll_s: float = 0.2,
                   clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> list[int]:
    """Wait until every port can be bound, at most ``deadline_s`` seconds.

    A service that crashed or was killed releases its port only once its last process
    (orphaned workers included) is gone; on a loaded machine that takes seconds. ``up``
    waits for that instead of calling the port taken at once.

    Returns:
        The ports still in use at the deadline (empty when all are free).
    """
    end = clock() + deadline_s
    pending = [port for port in ports if port_in_use(port)]
    while pending and clock() < end:
        sleep(poll_s)
        pending = [port for port in pending if port_in_use(port)]
    return pending


def release_ports(config: StackConfig, to_start: Iterable[Service], wait_s: float | None = None) -> list[tuple[Service, str]]:
    """Free the ports of services about to start; returns (service, port name) still taken by someone else.

    Processes left by an earlier run of the same service of this stack (the workers of a
    crashed root, which carry this run dir and the service's name in their environment)
    are stopped first: they are ours and would hold the port forever. Then the ports are
    waited for, up to ``wait_s`` (default ``config.port_wait_s``).
    """
    services_ = list(to_start)
    own_group = os.getpgrp()  # services run in their own sessions; never signal the group `up` runs in
    leftovers = {service.name: [process for process in stack_processes(config, service.name)
                                if _group(process) not in (None, own_group)] for service in services_}
    leftovers = {name: processes for name, processes in leftovers.items() if processes}
    if leftovers:
        terminate(leftovers)
    wanted = {config.ports[name]: (service, name) for service in services_ for name in service.ports}
    still = wait_for_ports(wanted, config.port_wait_s if wait_s is None else wait_s)
    return [wanted[port] for port in still]


def _group(process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except OSError:
        return None


def _start(config: StackConfig, service: Service, env: Mapping[str, str]) -> None:
    logs = config.run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    full_env = {**env, **service.env, SERVICE_MARKER: service.name}
    with open(logs / f"{service.name}.log", "ab") as log:
        process = subprocess.Popen(service.argv, cwd=REPO, env=full_env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    record = {"pid": process.pid, "create_time": _psutil().Process(process.pid).create_time(),
              "argv": service.argv, "ports": {n: config.ports[n] for n in service.ports},
              "log": str(logs / f"{service.name}.log")}
    path = _record_path(config, service.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))


def _log_tail(config: StackConfig, name: str, lines: int = 25) -> str:
    path = config.run_dir / "logs" / f"{name}.log"
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# SeaweedFS's filer waits for its metadata subscribers on SIGTERM, which are itself: it
# never finishes a graceful stop. Its stores are append-only logs that survive a SIGKILL.
STOP_GRACE_S = {"s3": 2.0}
DEFAULT_STOP_GRACE_S = 15.0


def terminate(groups_by_service: Mapping[str, list]) -> dict[str, tuple[int, float]]:
    """Stop services together: SIGTERM every process group, SIGKILL what outlives its grace.

    Args:
        groups_by_service: service name -> its processes (psutil).

    Returns:
        service name -> (number of processes, seconds until the last one was gone).
    """
    psutil = _psutil()
    began = time.monotonic()
    for processes in groups_by_service.values():
        groups = set()
        for process in processes:
            try:
                groups.add(os.getpgid(process.pid))
            except OSError:
                pass
        for group in groups:
            try:
                os.killpg(group, signal.SIGTERM)
            except OSError:
                pass
    result: dict[str, tuple[int, float]] = {}
    pending = {name: list(procs) for name, procs in groups_by_service.items() if procs}
    while pending:
        for name, processes in list(pending.items()):
            alive = [p for p in processes if _alive(p)]
            if not alive:
                result[name] = (len(groups_by_service[name]), time.monotonic() - began)
                del pending[name]
            elif time.monotonic() - began > STOP_GRACE_S.get(name, DEFAULT_STOP_GRACE_S):
                for process in alive:
                    try:
                        process.kill()
                    except psutil.Error:
                        pass
                psutil.wait_procs(alive, timeout=5)
                result[name] = (len(groups_by_service[name]), time.monotonic() - began)
                del pending[name]
            else:
                pending[name] = alive
        if pending:
            time.sleep(0.1)
    return result


def _alive(process) -> bool:
    psutil = _psutil()
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# --------------------------------------------------------------------------- commands


def up(config: StackConfig, out=None) -> int:
    """Start what is not running, wait for health, print the URLs. Returns an exit status."""
    out = out or sys.stdout
    started_at = time.monotonic()
    config.run_dir.mkdir(parents=True, exist_ok=True)
    # The run dir ignores itself, wherever it is.
    (config.run_dir / ".gitignore").write_text("*\n")
    keys = _secrets(config)
    base_env = {**os.environ, **client_env(config, keys), **airflow_env(config, keys), MARKER: str(config.run_dir),
                "PYTHONUNBUFFERED": "1"}
    base_env["PATH"] = f"{config.bin_dir}{os.pathsep}{base_env.get('PATH', '')}"
    write_env_file(config, client_env(config, keys))

    stack = services(config, keys)
    running = {s.name for s in stack if _live_root(config, s.name) is not None}
    skipped = {s.name: s.needs for s in stack if s.needs is not None and not s.needs.exists()}
    to_start = [s for s in stack if s.name not in running and s.name not in skipped]
    if not to_start:
        print(f"already up (run dir {config.run_dir})", file=out)
        _print_urls(config, stack, skipped, out)
        return 0

    taken = release_ports(config, to_start)
    if taken:
        for service, name in taken:
            variable, _ = PORTS[name]
            print(f"error: port {config.ports[name]} ({service.name}) is still in use by another process after "
                  f"{config.port_wait_s:.0f} s; stop it or choose another port with {variable}=<port>", file=sys.stderr)
        return 1

    config.airflow_home.mkdir(parents=True, exist_ok=True)
    (config.run_dir / "faces").mkdir(parents=True, exist_ok=True)
    started: list[Service] = []
    try:
        # Airflow's metadata database must exist before its servers start; the other
        # servers boot meanwhile.
        for service in [s for s in to_start if not s.name.startswith("airflow")]:
            _start(config, service, base_env)
            started.append(service)
        airflow_services = [s for s in to_start if s.name.startswith("airflow")]
        if airflow_services:
            migrate = subprocess.run([str(config.bin_dir / "airflow"), "db", "migrate"], cwd=REPO, env=base_env,
                                     stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if migrate.returncode != 0:
                raise StackError(f"airflow db migrate failed:\n{migrate.stdout[-2000:]}{migrate.stderr[-2000:]}")
            for service in airflow_services:
                _start(config, service, base_env)
                started.append(service)
        _wait_healthy(config, started)
    except (StackError, KeyboardInterrupt) as error:
        print(f"error: {error}" if isinstance(error, StackError) else "interrupted", file=sys.stderr)
        terminate({s.name: _service_processes(config, s.name) for s in started})
        for service in started:
            _record_path(config, service.name).unlink(missing_ok=True)
        print("stopped what this `up` had started", file=sys.stderr)
        return 1
    if running:
        print(f"already running: {', '.join(sorted(running))}", file=out)
    print(f"started: {', '.join(s.name for s in started)} in {time.monotonic() - started_at:.0f} s", file=out)
    _print_urls(config, stack, skipped, out)
    return 0


def _wait_healthy(config: StackConfig, started: Iterable[Service]) -> None:
    pending = list(started)
    deadline = time.monotonic() + config.health_timeout_s
    reasons: dict[str, str] = {}
    while pending:
        for service in list(pending):
            if _live_root(config, service.name) is None:
                raise StackError(f"{service.name} exited while starting; its log "
                                 f"({config.run_dir / 'logs' / (service.name + '.log')}) ends:\n"
                                 f"{_log_tail(config, service.name)}")
            reason = service.health()
            if reason is None:
                if service.after_start is not None:
                    service.after_start()
                pending.remove(service)
            else:
                reasons[service.name] = reason
        if pending and time.monotonic() > deadline:
            names = ", ".join(f"{s.name} ({reasons.get(s.name)})" for s in pending)
            raise StackError(f"not healthy after {config.health_timeout_s:.0f} s: {names}; logs in "
                             f"{config.run_dir / 'logs'}")
        if pending:
            time.sleep(0.5)


def _print_urls(config: StackConfig, stack: list[Service], skipped: Mapping[str, Path | None], out) -> None:
    rows = [
        ("Airflow", config.url("airflow"),
         f"user admin, password in {config.password_file}"),
        ("MLflow", config.url("mlflow"), f"store in {config.run_dir / 'mlflow'}"),
        ("BentoML", config.url("serving"), "header X-API-Key: $FACES_API_KEY"),
        ("People page", config.url("ui"), "sign in with $FACES_API_KEY"),
        ("S3 (SeaweedFS)", config.url("s3"), f"bucket {config.bucket}; keys in {config.env_file}"),
    ]
    for label, url, note in rows:
        print(f"  {label:<15} {url:<24} {note}", file=out)
    for name, needed in skipped.items():
        print(f"  skipped {name}: {needed} does not exist yet", file=out)
    print(f"environment for the DAGs and your shell: source {config.env_file}", file=out)
    print(f"logs: {config.run_dir / 'logs'}   stop: make down", file=out)


def down(config: StackConfig, out=None) -> int:
    """Stop every process this run dir started (idempotent). Returns an exit status."""
    out = out or sys.stdout
    if not config.run_dir.exists():
        print(f"nothing running (no run dir {config.run_dir})", file=out)
        return 0
    names = ("airflow-scheduler", "airflow-dag-processor", "airflow-api-server", "serving", "mlflow", "s3")
    found = {name: _service_processes(config, name) for name in names}
    claimed = {p.pid for processes in found.values() for p in processes}
    # Anything else started from this run dir (e.g. `airflow db migrate` interrupted mid-way).
    found["other"] = [p for p in stack_processes(config) if p.pid not in claimed]
    stopped = terminate({name: processes for name, processes in found.items() if processes})
    for name in names:
        _record_path(config, name).unlink(missing_ok=True)
    for name, (count, seconds) in stopped.items():
        print(f"stopped {name} ({count} process{'es' if count != 1 else ''}, {seconds:.1f} s)", file=out)
    left = stack_processes(config)
    if left:
        raise StackError(f"still running after SIGKILL: {sorted(p.pid for p in left)}")
    print("stack is down" if stopped else "nothing running", file=out)
    return 0


def memory_mib(processes: Iterable) -> float:
    """Proportional set size (shared pages split between sharers) of the processes, in MiB."""
    psutil = _psutil()
    total = 0
    for process in processes:
        try:
            total += process.memory_full_info().pss
        except psutil.Error:
            pass
    return total / 2**20


def status(config: StackConfig, out=None, as_json: bool = False) -> int:
    """Health and memory of each service; exit status 0 when everything recorded is up."""
    out = out or sys.stdout
    keys = _secrets(config) if (config.run_dir / "secrets.json").exists() else None
    if keys is None:
        print("not started", file=out)
        return 1
    rows = []
    for service in services(config, keys):
        processes = _service_processes(config, service.name)
        alive = _live_root(config, service.name) is not None
        health = service.health() if alive else "not running"
        rows.append({"service": service.name, "running": alive, "healthy": health is None,
                     "detail": health or "ok", "processes": len(processes),
                     "pss_mib": round(memory_mib(processes), 1)})
    total = round(sum(r["pss_mib"] for r in rows), 1)
    if as_json:
        print(json.dumps({"services": rows, "total_pss_mib": total}, indent=2), file=out)
    else:
        print(f"{'service':<22} {'health':<30} {'procs':>5} {'PSS MiB':>8}", file=out)
        for r in rows:
            print(f"{r['service']:<22} {r['detail'][:30]:<30} {r['processes']:>5} {r['pss_mib']:>8.1f}", file=out)
        print(f"{'total':<22} {'':<30} {'':>5} {total:>8.1f}", file=out)
    return 0 if all(r["healthy"] for r in rows if r["running"]) and any(r["running"] for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--json", action="store_true", help="status as JSON")
    args = parser.parse_args(argv)
    try:
        config = StackConfig.from_env()
        if args.command == "up":
            return up(config)
        if args.command == "down":
            return down(config)
        return status(config, as_json=args.json)
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
