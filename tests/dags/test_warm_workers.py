"""Warm workers: face_ingest's steps run in the machine's step server give what they give in the task.

The same shard of real LFW photos is detected and embedded twice: in this process (the
cold path, what a task did before) and through the step server a first call starts
(components/workflow/warm.py). Faces, boxes, landmarks, crops and embeddings must be
the same; a rejected batch must fail the same way; a second task must find the server
already warm (one server start for every call).
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from components.workflow import BatchRejected, WorkflowError, warm
from components.workflow import ingest
from components.workflow import workspace as ws

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def warm_env(tmp_path, monkeypatch):
    """A fresh work area per path and a private folder for the step server's socket."""
    monkeypatch.setenv("FACES_QUARANTINE_URI", str(tmp_path / "quarantine"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv(warm.DIR_ENV, str(tmp_path / "warm"))
    monkeypatch.setenv(warm.IDLE_ENV, "60")
    monkeypatch.delenv("FACES_STORE_URL", raising=False)
    monkeypatch.delenv(warm.ENABLED_ENV, raising=False)
    yield tmp_path
    warm.stop(tmp_path / "warm")


def detect_and_embed(batch, call, batch_id: str) -> tuple[dict, dict]:
    manifest = call("plan", str(batch), batch_id=batch_id, shard_size=16, folder_labels=True)
    (shard,) = call("validate_images", manifest)
    detections = call("validate_faces", call("detect", shard))
    return ws.read_npz(detections), ws.read_npz(call("embed", detections))


def test_the_warm_server_gives_the_faces_and_embeddings_of_the_cold_path(warm_env, lfw_batch, monkeypatch):
    first_person, second_person = sorted(path for path in lfw_batch.iterdir() if path.is_dir())
    monkeypatch.setenv("FACES_WORK_URI", str(warm_env / "cold"))
    cold_detections, cold_embeddings = detect_and_embed(first_person, warm.run_here, "first")

    monkeypatch.setenv("FACES_WORK_URI", str(warm_env / "work"))
    started = time.perf_counter()
    warm_detections, warm_embeddings = detect_and_embed(first_person, warm.call, "first")
    first = time.perf_counter() - started

    for name in ("photo", "face_index", "failures", "rotation", "crops"):
        assert np.array_equal(cold_detections[name], warm_detections[name]), name
    for name in ("boxes", "landmarks", "confidence", "blur"):
        np.testing.assert_allclose(cold_detections[name], warm_detections[name], rtol=0, atol=1e-6, err_msg=name)
    assert np.array_equal(cold_embeddings["rows"], warm_embeddings["rows"]) and len(warm_embeddings["rows"])
    np.testing.assert_allclose(cold_embeddings["embeddings"], warm_embeddings["embeddings"], rtol=0, atol=1e-5)

    # The next task (other photos) finds the models loaded: the same server answers, faster.
    started = time.perf_counter()
    _, embeddings = detect_and_embed(second_person, warm.call, "second")
    second = time.perf_counter() - started
    assert len(embeddings["rows"])
    log = next((warm_env / "warm").glob("*.log")).read_text()
    assert log.count("step server") == 1, log  # started once, by the first call
    assert second < first, (first, second)


def test_a_rejected_batch_fails_in_the_task_as_it_does_without_the_server(warm_env, lfw_batch, monkeypatch):
    monkeypatch.setenv("FACES_WORK_URI", str(warm_env / "work"))
    batch = warm_env / "batch"
    shutil.copytree(lfw_batch, batch)
    good = sorted(batch.rglob("*.jpg"))[0]
    good.with_name("broken.jpg").write_bytes(good.read_bytes()[:500])

    manifest = warm.call("plan", str(batch), batch_id="bad", shard_size=4)
    with pytest.raises(BatchRejected) as caught:
        warm.call("validate_images", manifest)
    assert caught.value.check == "images" and "broken.jpg" in str(caught.value)
    assert {failure["row"] for failure in caught.value.failures} == {f"{good.parent.name}/broken.jpg"}
    (warm_env / "empty").mkdir()
    with pytest.raises(WorkflowError, match="holds no photo"):
        warm.call("plan", str(warm_env / "empty"))
    with pytest.raises(WorkflowError, match="not a face_ingest step"):
        warm.call("retrain", "anything")


def test_the_steps_run_in_the_task_when_warm_workers_are_off(warm_env, lfw_batch, monkeypatch):
    monkeypatch.setenv("FACES_WORK_URI", str(warm_env / "work"))
    monkeypatch.setenv(warm.ENABLED_ENV, "0")
    assert warm.call("plan", str(lfw_batch), batch_id="here") == ingest.plan(str(lfw_batch), batch_id="here")
    assert not (warm_env / "warm").exists() or not list((warm_env / "warm").glob("*.sock"))
