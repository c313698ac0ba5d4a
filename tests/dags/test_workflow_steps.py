"""The workflow steps themselves, without Airflow: a bad batch stops, is quarantined, loses nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from components.workflow import BatchRejected, WorkflowError
from components.workflow import ingest
from components.workflow import workspace as ws


@pytest.fixture
def workspace_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FACES_WORK_URI", str(tmp_path / "work"))
    monkeypatch.setenv("FACES_QUARANTINE_URI", str(tmp_path / "quarantine"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("FACES_STORE_URL", raising=False)
    return tmp_path


def test_a_batch_with_a_broken_photo_stops_names_it_and_is_quarantined(workspace_env, lfw_batch):
    batch = workspace_env / "batch"
    shutil.copytree(lfw_batch, batch)
    good = sorted(batch.rglob("*.jpg"))[0]
    broken = good.with_name("broken.jpg")
    broken.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])  # a half-copied JPEG
    before = sorted(p.relative_to(batch) for p in batch.rglob("*") if p.is_file())

    manifest = ingest.plan(str(batch), batch_id="bad-batch", shard_size=4)
    with pytest.raises(BatchRejected) as caught:
        ingest.validate_images(manifest)

    message = str(caught.value)
    assert f"{broken.parent.name}/broken.jpg" in message and "decod" in message
    assert caught.value.check == "images" and caught.value.failures
    assert {failure["row"] for failure in caught.value.failures} == {f"{broken.parent.name}/broken.jpg"}
    # Nothing deleted; a copy with the reason sits in quarantine.
    assert sorted(p.relative_to(batch) for p in batch.rglob("*") if p.is_file()) == before
    quarantined = [p for p in (workspace_env / "quarantine").rglob("*") if p.name == "broken.jpg"]
    assert quarantined and quarantined[0].read_bytes() == broken.read_bytes()


def test_a_rejected_batch_fails_the_airflow_task_without_retries(workspace_env):
    from airflow.sdk.exceptions import AirflowFailException

    from components.workflow.steps import run_step

    empty = workspace_env / "empty"
    empty.mkdir()
    with pytest.raises(AirflowFailException, match="holds no photo"):
        run_step(ingest.plan, str(empty))


def test_shards_and_batch_ids_are_stable(workspace_env, lfw_batch):
    keys = sorted(str(p.relative_to(lfw_batch)) for p in lfw_batch.rglob("*.jpg"))
    assert ingest.batch_id_of(str(lfw_batch), keys) == ingest.batch_id_of(str(lfw_batch) + "/", list(reversed(keys)))
    assert ingest.batch_id_of(str(lfw_batch), keys) != ingest.batch_id_of(str(lfw_batch), keys[:-1])
    assert [len(part) for part in ingest.shard(keys, 4)] == [4, 2]
    with pytest.raises(WorkflowError):
        ingest.shard(keys, 0)
    first = ingest.plan(str(lfw_batch), shard_size=4)
    second = ingest.plan(str(lfw_batch), shard_size=4)
    assert first == second and ws.read_json(first)["shards"] == ws.read_json(second)["shards"]
    assert Path(first).parent.name == ingest.batch_id_of(str(lfw_batch), keys)


class _Reload:
    """A loopback HTTP endpoint that records the /reload requests it receives."""

    def __init__(self, status: int = 200):
        import http.server
        import threading

        self.requests: list[dict] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                owner.requests.append({"path": self.path, "key": self.headers.get("X-API-Key")})
                body = b'{"model_version": 7}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("decision, reloads", [("promote", 1), ("keep", 0)])
def test_serving_is_told_to_reload_only_after_a_promotion(workspace_env, decision, reloads):
    from components.workflow.retrain import reload_serving

    outcome = ws.write_json(str(workspace_env / "outcome.json"),
                            {"decision": {"decision": decision, "champion_before": 1,
                                          "champion_after": 2 if decision == "promote" else 1}})
    endpoint = _Reload()
    try:
        result = reload_serving(outcome, url=endpoint.url, api_key="secret")
    finally:
        endpoint.close()
    assert len(endpoint.requests) == reloads and result["reloaded"] == bool(reloads)
    if reloads:
        assert endpoint.requests[0] == {"path": "/reload", "key": "secret"}
        assert result["response"] == {"model_version": 7}


def test_a_refused_reload_is_not_retried(workspace_env):
    from components.workflow.retrain import reload_serving

    outcome = ws.write_json(str(workspace_env / "outcome.json"),
                            {"decision": {"decision": "promote", "champion_before": 1, "champion_after": 2}})
    endpoint = _Reload(status=401)
    try:
        with pytest.raises(WorkflowError, match="401"):
            reload_serving(outcome, url=endpoint.url, api_key="wrong")
    finally:
        endpoint.close()


def test_retrain_overrides_are_checked(workspace_env):
    from components.settings import load_settings
    from components.workflow.retrain import retrain_params

    settings = load_settings()
    params = retrain_params(settings, {"steps": "2", "learning_rate": 0.001, "loss": None, "anchor": ""})
    assert (params.steps, params.learning_rate, params.loss) == (2, 0.001, settings.retrain.loss)
    with pytest.raises(WorkflowError, match="epochz"):
        retrain_params(settings, {"epochz": 1})


def test_a_bad_trigger_parameter_fails_before_any_work(workspace_env, tmp_path, monkeypatch):
    """A promote_metric typed wrongly fails the run at once, naming the allowed values; nothing is registered."""
    from components.settings import load_settings
    from components.workflow.retrain import retrain

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    settings = load_settings()
    for overrides, named in (({"promote_metric": "acuracy"}, "accuracy, auc"), ({"loss": "tripplet"}, "cosface"),
                             ({"learning_rate": -1}, "learning_rate"), ({"steps": "two"}, "steps"),
                             ({"future_share": 1.5}, "future_share")):
        with pytest.raises(WorkflowError, match=named):
            retrain("bad-params", overrides=overrides, settings=settings)
    assert not (tmp_path / "mlflow").exists()  # no registry was even opened, nothing trained or registered


def test_the_trigger_form_offers_only_valid_choices():
    """The DAG file names the allowed metrics and losses without importing the code that checks them."""
    import ast
    from pathlib import Path

    from components.train.head import HEAD_LOSSES
    from components.train.retrain import EVIDENCE, METRICS

    source = (Path(__file__).resolve().parents[2] / "dags" / "face_retrain.py").read_text()
    constants = {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(source).body
                 if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                 and node.targets[0].id in ("METRICS", "EVIDENCE", "HEAD_LOSSES", "OVERRIDES")}
    assert constants["METRICS"] == METRICS and constants["HEAD_LOSSES"] == HEAD_LOSSES
    assert constants["EVIDENCE"] == EVIDENCE
    from components.settings import RetrainParams

    assert set(constants["OVERRIDES"]) <= set(RetrainParams.__dataclass_fields__)