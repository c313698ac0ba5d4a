"""One real ``bentoml serve serving.service:FaceAPI`` for the serving tests.

The session fixture builds, in a temporary folder: an MLflow registry (embedded SQLite)
whose ``champion`` is the project's model, an identity store made by ``faces run`` from
a few LFW people (identities named after them), a params file with short poll
intervals; then starts the service on a free loopback port and stops it (process group)
at the end, even on failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from components.serving.launch import free_port, start_server, stop_server, wait_ready
from components.settings import PROJECT_ROOT, load_settings
from components.embed.thresholds import Thresholds
from tests.fixtures.models import perturbed_copy

LFW = PROJECT_ROOT / "data" / "lfw" / "images_deepfunneled"
STORE_PEOPLE = ("Colin_Powell", "Tony_Blair", "Gerhard_Schroeder", "Hugo_Chavez")
PHOTOS_PER_PERSON = 5
API_KEY = "test-key-0f3a"
PYTHON = sys.executable
BASE_THRESHOLDS = Thresholds.from_settings(load_settings())
# The perturbed version's own calibration differs, so answers show which thresholds are in force.
PERTURBED_THRESHOLDS = Thresholds(verify=0.9, cluster=0.94, assign=0.94)


def lfw_photo(person: str, number: int) -> Path:
    return LFW / person / f"{person}_{number:04d}.jpg"


def first_pairs() -> tuple[tuple[Path, Path], tuple[Path, Path]]:
    """The first same-person and the first different-person pair of LFW's pairs.txt."""
    same = different = None
    for line in (PROJECT_ROOT / "data" / "lfw" / "pairs.txt").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) == 3 and same is None:
            same = (lfw_photo(fields[0], int(fields[1])), lfw_photo(fields[0], int(fields[2])))
        elif len(fields) == 4 and different is None:
            different = (lfw_photo(fields[0], int(fields[1])), lfw_photo(fields[2], int(fields[3])))
        if same and different:
            return same, different
    raise AssertionError("pairs.txt holds no same and different pairs")


@dataclass
class Server:
    url: str
    env: dict
    root: Path
    store_url: str
    names: dict[int, str]  # identity id -> person
    versions: dict[str, int]  # "base", "perturbed" -> registry version
    perturbed_model: Path
    log: Path

    def client(self, key: str | None = API_KEY, timeout: float = 60.0) -> httpx.Client:
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    @contextmanager
    def _tracking(self):
        saved = os.environ.get("MLFLOW_TRACKING_URI")
        os.environ["MLFLOW_TRACKING_URI"] = self.env["MLFLOW_TRACKING_URI"]
        try:
            yield
        finally:
            if saved is None:
                del os.environ["MLFLOW_TRACKING_URI"]
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved

    def register(self, model: Path, alias: str | None = None, thresholds: Thresholds = BASE_THRESHOLDS) -> int:
        """Register a model file with its thresholds in the test registry (and point ``alias`` at it)."""
        from components.track import registry, start_run

        with self._tracking():
            with start_run("serving-tests", "register") as run:
                version = registry.register_embedder(model, run.info.run_id, thresholds=thresholds)
            if alias:
                registry.set_alias(alias, version)
        return version

    def promote(self, version: int, alias: str = "champion") -> None:
        from components.track import registry

        with self._tracking():
            registry.set_alias(alias, version)

    def reembed(self) -> dict:
        """``faces reembed`` on the service's store, as a user runs it after a promotion."""
        done = subprocess.run([PYTHON, "-m", "components.cli", "reembed", "--db", self.store_url, "--no-progress"],
                              cwd=PROJECT_ROOT, env=self.env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)


def _build_store(root: Path, env: dict) -> tuple[str, dict[int, str]]:
    photos = root / "people"
    for person in STORE_PEOPLE:
        (photos / person).mkdir(parents=True)
        for number in range(1, PHOTOS_PER_PERSON + 1):
            os.symlink(lfw_photo(person, number), photos / person / lfw_photo(person, number).name)
    out = root / "store"
    done = subprocess.run([PYTHON, "-m", "components.cli", "run", "--input", str(photos), "--out", str(out),
                           "--folder-labels", "--no-progress"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    url = f"sqlite:///{out / 'faces.db'}"
    from components.identities.operations import rename
    from components.identities.store import IdentityStore

    store = IdentityStore(url)
    names = {}
    for identity in store.identities():
        person, _ = Counter(face["label"] for face in identity["faces"]).most_common(1)[0]
        rename(store, identity["id"], person.replace("_", " "))
        names[identity["id"]] = person
    store.engine.dispose()
    return url, names


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    root = tmp_path_factory.mktemp("serving")
    settings = load_settings()
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["base"]["models_dir"] = str(settings.base.models_dir)  # absolute: the copy lives elsewhere
    params["serve"].update(poll_s=2, store_refresh_s=1, max_request_bytes=3_000_000)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "FACES_PARAMS": str(root / "params.yaml"), "FACES_API_KEY": API_KEY,
           "BENTOML_HOME": str(root / "bentoml"), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
           "TF_CPP_MIN_LOG_LEVEL": "2", "BENTOML_DO_NOT_TRACK": "True", "PYTHONPATH": str(PROJECT_ROOT)}
    (root / "mlflow").mkdir()

    perturbed = perturbed_copy(settings.model_path, root / "perturbed.keras")
    server = Server("", env, root, "", {}, {}, perturbed, root / "serve.log")
    # The champion first: `faces run` embeds the store with it, and serving follows the store.
    server.versions["base"] = server.register(settings.model_path, alias="champion")
    server.store_url, server.names = _build_store(root, env)
    env["FACES_STORE_URL"] = server.store_url

    port = free_port()
    server.url = f"http://127.0.0.1:{port}"
    process = start_server(env, port, server.log)
    try:
        wait_ready(server.url, process, server.log)
        yield server
    finally:
        stop_server(process)
