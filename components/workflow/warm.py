"""Warm workers: the face_ingest steps run in a long-lived local process that keeps its models loaded.

Why a separate process: Airflow 3 runs every task instance in a fresh process. The
LocalExecutor's worker processes and each Celery pool process fork a child per task
(the task SDK's supervisor) and the child exits when the task ends, so whatever a
task loads (TensorFlow, MTCNN, the embedder, Great Expectations, MLflow) dies with it:
7-11 s per task before any photo is looked at. Loading the models in the parent before
the fork does not work either: TensorFlow's runtime threads do not survive a fork.

So a task hands its step to a **step server** on the same machine and waits for the
answer. The server is an ordinary process started by the first task that needs it
(detached: its own session, no inherited descriptors, so it outlives the task and the
supervisor's pipes close), answering on a Unix socket in a folder only this user can
open (``FACES_WARM_DIR``, default ``$XDG_RUNTIME_DIR`` or ``/tmp/faces-warm-<uid>``). It
runs the same step functions (components/workflow/ingest.py) with its module-level
caches (settings, identity store, FaceEngine with its detector and embedder), one
thread per request, and exits after ``FACES_WARM_IDLE_S`` seconds without a request
(default 600).

One server per environment: the socket's name is a hash of everything a step reads
from outside its arguments (``FACES_*``, ``MLFLOW_*``, S3 / AWS variables, the working
folder, the interpreter) and of the code (size and time of every file under
components/ and of the parameters file). A task with other settings, or after a code
change, gets a server of its own; an outdated one idles out.

What stays as it was: steps take and return URIs, every output is written whole under
a key fixed by the batch, the store ignores photos it has. A task killed while its
step runs leaves the step running to completion in the server (the re-run finds the
outputs, or writes the same ones again); a server killed midway loses its request's
work only, the task fails with :class:`WarmWorkerLost` and Airflow's retry starts a
new server. A :class:`~components.workflow.WorkflowError` raised in the server (a
rejected batch) is raised again in the task with its message, so it still fails the
task without retries.

``FACES_WARM_WORKERS=0`` runs every step in the task's own process (the cold path).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from components.workflow import BatchRejected, WorkflowError

ENABLED_ENV = "FACES_WARM_WORKERS"
DIR_ENV = "FACES_WARM_DIR"
IDLE_ENV = "FACES_WARM_IDLE_S"
DEFAULT_IDLE_S = 600.0
# The steps a task may ask for: face_ingest's, by name (nothing else can be called through the socket).
STEPS = ("plan", "validate_images", "detect", "validate_faces", "embed", "assign", "record_metrics")
# Environment a step reads besides its arguments: a server serves only tasks that agree on all of it.
_ENV_PREFIXES = ("FACES_", "MLFLOW_", "S3_", "AWS_", "TF_", "CUDA_", "OMP_")
_ENV_IGNORED = (ENABLED_ENV, DIR_ENV)
_START_TIMEOUT_S = 120.0
_SOCKET_PATH_MAX = 100  # sockaddr_un holds 108 bytes on Linux, 104 on macOS
_REPO = Path(__file__).resolve().parents[2]


class WarmWorkerLost(RuntimeError):
    """The step server went away before answering (killed, out of memory): the task fails and is retried."""


class WarmStepError(RuntimeError):
    """A step failed in the step server with an error other than a WorkflowError; carries its traceback."""


# -- which server ----------------------------------------------------------------------------


def enabled() -> bool:
    """Whether tasks hand their steps to a step server (``FACES_WARM_WORKERS``, default on)."""
    return os.environ.get(ENABLED_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def code_fingerprint(root: Path = _REPO) -> str:
    """Size and modification time of every Python file of components/ and the parameters file."""
    digest = hashlib.sha256()
    paths = sorted((root / "components").rglob("*.py"))
    params = os.environ.get("FACES_PARAMS") or str(root / "params.yaml")
    for path in [*paths, Path(params)]:
        with contextlib.suppress(OSError):
            stat = path.stat()
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def environment_key(environ: dict[str, str] | None = None, *, cwd: str | None = None, code: str | None = None) -> str:
    """The name of the server for this environment and this code (a hash; equal inputs, equal name)."""
    environ = os.environ if environ is None else environ
    relevant = sorted((key, value) for key, value in environ.items()
                      if key.startswith(_ENV_PREFIXES) and key not in _ENV_IGNORED)
    described = json.dumps({"env": relevant, "cwd": cwd or os.getcwd(), "python": sys.executable,
                            "code": code or code_fingerprint()}, sort_keys=True)
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def server_dir() -> Path:
    """The folder of the sockets, logs and start locks; created private to this user."""
    configured = os.environ.get(DIR_ENV)
    if configured:
        folder = Path(configured)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        folder = Path(os.environ["XDG_RUNTIME_DIR"]) / "faces-warm"
    else:
        folder = Path("/tmp") / f"faces-warm-{os.getuid()}"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_uid != os.getuid():
        raise WorkflowError(f"{folder} belongs to another user: set {DIR_ENV} to a folder of your own")
    return folder


def socket_path(key: str | None = None) -> Path:
    path = server_dir() / f"{key or environment_key()}.sock"
    if len(str(path)) > _SOCKET_PATH_MAX:
        raise WorkflowError(f"the step server's socket path {path} is too long for a Unix socket: "
                            f"set {DIR_ENV} to a shorter folder")
    return path


# -- the task's side -------------------------------------------------------------------------


def call(step: str, *args: Any, **kwargs: Any) -> Any:
    """Run face_ingest's ``step`` with these (JSON) arguments in this machine's warm step server.

    Starts the server when none answers for this environment. With ``FACES_WARM_WORKERS=0``
    the step runs here instead.

    Raises:
        BatchRejected, WorkflowError: as the step raised them.
        WarmStepError: the step failed otherwise (the server's traceback in the message).
        WarmWorkerLost: the server died before answering.
    """
    if step not in STEPS:
        raise WorkflowError(f"{step!r} is not a face_ingest step ({', '.join(STEPS)})")
    if not enabled():
        return run_here(step, *args, **kwargs)
    path = socket_path()
    reply = _ask(path, {"step": step, "args": list(args), "kwargs": kwargs})
    return _answer(reply)


def run_here(step: str, *args: Any, **kwargs: Any) -> Any:
    """Run face_ingest's ``step`` in this process (the server does, and the task when warm workers are off)."""
    from components.workflow import ingest

    return getattr(ingest, step)(*args, **kwargs)


def _ask(path: Path, request: dict) -> dict:
    connection = _connect(path)
    if connection is None:
        connection = _start_and_connect(path)
    with connection:
        connection.sendall(json.dumps(request).encode() + b"\n")
        reply = _read_line(connection)
    if not reply:
        raise WarmWorkerLost(f"the step server at {path} closed the connection before answering "
                             f"(killed or out of memory? its log: {path.with_suffix('.log')})")
    return json.loads(reply)


def _answer(reply: dict) -> Any:
    if "value" in reply:
        return reply["value"]
    error = reply["error"]
    if error["type"] == "BatchRejected":
        raise BatchRejected(error["batch_id"], error["check"], error["message"], error.get("failures"))
    if error["type"] == "WorkflowError":
        raise WorkflowError(error["message"])
    raise WarmStepError(f"{error['type']}: {error['message']}\n--- in the step server:\n{error['traceback']}")


def _connect(path: Path) -> socket.socket | None:
    if not path.exists():
        return None
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        connection.close()
        return None
    return connection


def _read_line(connection: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = connection.recv(1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks).strip()


def _start_and_connect(path: Path) -> socket.socket:
    """Start the server for ``path`` (one task does it, the others wait on the lock) and connect."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        connection = _connect(path)  # another task may have started it meanwhile
        if connection is not None:
            return connection
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a socket left by a server that died
        log = open(path.with_suffix(".log"), "ab")  # noqa: SIM115 - handed to the server
        try:
            server = subprocess.Popen(
                [sys.executable, "-m", "components.workflow.warm", "serve", "--socket", str(path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=True,
                start_new_session=True, cwd=os.getcwd(),
                env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")]))},
            )
        finally:
            log.close()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            connection = _connect(path)
            if connection is not None:
                return connection
            if server.poll() is not None:
                tail = path.with_suffix(".log").read_text(errors="replace")[-3000:]
                raise WarmWorkerLost(f"the step server exited {server.returncode} at start:\n{tail}")
            time.sleep(0.05)
        raise WarmWorkerLost(f"the step server did not answer on {path} within {_START_TIMEOUT_S:.0f} s")


def stop(folder: Path | None = None) -> int:
    """Ask every step server with a socket in ``folder`` (default :func:`server_dir`) to exit; how many answered."""
    stopped = 0
    for path in sorted((folder or server_dir()).glob("*.sock")):
        connection = _connect(path)
        if connection is None:
            continue
        with connection:
            connection.sendall(b'{"stop": true}\n')
            stopped += bool(_read_line(connection))
    return stopped


# -- the server's side -----------------------------------------------------------------------


def _error_reply(error: BaseException) -> dict:
    described = {"type": type(error).__name__, "message": str(error), "traceback": traceback.format_exc()}
    if isinstance(error, BatchRejected):
        described.update(type="BatchRejected", batch_id=error.batch_id, check=error.check,
                         failures=json.loads(json.dumps(error.failures, default=str)))
    elif isinstance(error, WorkflowError):
        described["type"] = "WorkflowError"
    return {"error": described}


# Steps that run TensorFlow models: one at a time per server. TensorFlow's own threads already
# spread one call over every core, the detector and embedder are not documented thread-safe,
# and the first call loads the models once instead of once per concurrent request.
_MODEL_STEPS = ("detect", "embed")


class _StepServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    # Not daemon threads, and server_close() joins them: a server that stops (idle, or asked)
    # finishes the steps it accepted before it exits.
    daemon_threads = False
    block_on_close = True

    def __init__(self, path: Path, idle_s: float):
        self.path, self.idle_s = path, idle_s
        self.busy, self.last_seen, self.served = 0, time.monotonic(), 0
        self.guard = threading.Lock()
        self.model_lock = threading.Lock()
        super().__init__(str(path), _StepHandler)
        os.chmod(path, 0o600)

    def begin(self) -> None:
        with self.guard:
            self.busy += 1

    def end(self) -> None:
        with self.guard:
            self.busy -= 1
            self.served += 1
            self.last_seen = time.monotonic()

    def idle_for(self) -> float:
        with self.guard:
            return 0.0 if self.busy else time.monotonic() - self.last_seen


class _StepHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        if not line:
            return
        request = json.loads(line)
        if request.get("stop"):
            self.wfile.write(b'{"value": "stopping"}\n')
            threading.Thread(target=self.server.shutdown, daemon=True).start()
            return
        self.server.begin()
        started = time.perf_counter()
        try:
            step = request["step"]
            if step not in STEPS:
                raise WorkflowError(f"{step!r} is not a face_ingest step")
            with self.server.model_lock if step in _MODEL_STEPS else contextlib.nullcontext():
                reply = {"value": run_here(step, *request.get("args", []), **request.get("kwargs", {}))}
        except Exception as error:  # noqa: BLE001 - every failure goes back to the task that asked
            reply = _error_reply(error)
        finally:
            self.server.end()
        print(f"{time.strftime('%H:%M:%S')} {request.get('step')} {time.perf_counter() - started:.2f} s"
              f"{' error: ' + reply['error']['type'] if 'error' in reply else ''}", flush=True)
        self.wfile.write(json.dumps(reply, default=str).encode() + b"\n")


def serve(path: Path, idle_s: float) -> None:
    """Answer step requests on ``path`` until ``idle_s`` seconds pass without one (or a stop request)."""
    server = _StepServer(path, idle_s)

    def watch_idle() -> None:
        while True:
            time.sleep(min(5.0, max(0.2, idle_s / 4)))
            if server.idle_for() > idle_s:
                server.shutdown()
                return

    threading.Thread(target=watch_idle, daemon=True).start()
    print(f"{time.strftime('%H:%M:%S')} step server {os.getpid()} on {path}, idle limit {idle_s:.0f} s", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        print(f"{time.strftime('%H:%M:%S')} step server {os.getpid()} stopped after {server.served} steps", flush=True)


def main(argv: list[str] | None = None) -> int:
    import argparse

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(prog="python -m components.workflow.warm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run a step server (tasks start it themselves)")
    p.add_argument("--socket", type=Path, help="default: the socket for this environment")
    p.add_argument("--idle-s", type=float, default=float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S)))
    p = sub.add_parser("stop", help="stop every step server of a folder")
    p.add_argument("--dir", type=Path, help=f"default: ${DIR_ENV} or the per-user folder")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.socket or socket_path(), args.idle_s)
    else:
        print(f"stopped {stop(args.dir)} step server(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
