"""Start and stop a real ``bentoml serve serving.service:FaceAPI`` (benchmarks, tests, scripts)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from components.settings import PROJECT_ROOT


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    """``bentoml serve`` from the project root, loopback only, in its own process group."""
    with Path(log).open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "serving.service:FaceAPI", "--host", "127.0.0.1",
             "--port", str(port)],
            cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    """Wait for ``GET /readyz`` to answer 200.

    Raises:
        RuntimeError: the server exited or was not ready in time (with the end of its log).
    """
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited ({process.returncode}):\n{Path(log).read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {timeout_s:.0f} s:\n{Path(log).read_text()[-3000:]}")
        time.sleep(0.5)


def stop_server(process: subprocess.Popen) -> None:
    """Stop the server and every process it started (SIGTERM, then SIGKILL after 20 s)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)
