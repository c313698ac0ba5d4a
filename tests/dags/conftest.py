"""Shared pieces of the DAG tests: a temporary Airflow home, a tiny real LFW batch.

Airflow runs in subprocesses (``airflow dags test``, real servers), each with its own
environment: a temporary ``AIRFLOW_HOME`` with a SQLite metadata database, a
temporary work area, identity store and MLflow store, so nothing touches the
developer's files.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LFW = REPO / "data" / "lfw" / "images_deepfunneled"
BIN = Path(sys.executable).parent
AIRFLOW = str(BIN / "airflow")
# Two people, three photos each: enough for two shards and two identities, small enough for CI.
PEOPLE = {"Aaron_Peirsol": 3, "Laura_Bush": 3}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def airflow_env(home: Path, work: Path, **extra: str) -> dict[str, str]:
    """Environment for Airflow subprocesses: temporary home and stores, this repo's DAGs."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW__", "FACES_", "MLFLOW_"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "FACES_WORK_URI": str(work),
        "FACES_QUARANTINE_URI": str(work / "quarantine"),
        "FACES_LABELS_REMOTE": str(work / "dvc-remote"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow' / 'mlflow.db'}",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        # The tasks' warm step servers (components/workflow/warm.py) keep their sockets beside this
        # home, where stop_step_servers finds them; an idle one also exits by itself soon.
        "FACES_WARM_DIR": str(home.parent / f"{home.name}-warm"),
        "FACES_WARM_IDLE_S": "120",
    })
    env.update(extra)
    return env


def run(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command; on failure show the end of its output (Airflow logs are long)."""
    done = subprocess.run(cmd, env=env, cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:4])} exited {done.returncode}:\n{(done.stdout + done.stderr)[-6000:]}")
    return done


@pytest.fixture(scope="session")
def lfw_batch(tmp_path_factory) -> Path:
    """Six real LFW photos of two people, in LFW's folder layout."""
    if not LFW.is_dir():
        pytest.skip("LFW is not restored (make setup)")
    root = tmp_path_factory.mktemp("batch")
    for person, count in PEOPLE.items():
        (root / person).mkdir()
        for photo in sorted((LFW / person).iterdir())[:count]:
            shutil.copy(photo, root / person / photo.name)
    return root


def stop_step_servers(env: dict[str, str]) -> None:
    """Stop the warm step servers the tasks of this environment started."""
    from components.workflow import warm

    folder = Path(env["FACES_WARM_DIR"])
    if folder.is_dir():
        warm.stop(folder)


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory) -> dict[str, str]:
    """A migrated SQLite Airflow home and a work area, shared by the DAG tests of a session."""
    home = tmp_path_factory.mktemp("airflow")
    work = tmp_path_factory.mktemp("work")
    env = airflow_env(home, work)
    run([AIRFLOW, "db", "migrate"], env, timeout=180)
    yield env
    stop_step_servers(env)


def read_json(path: Path | str) -> dict:
    return json.loads(Path(path).read_text())
