"""components.track against a real MLflow (embedded SQLite store in a temporary folder)."""

from __future__ import annotations

import json

import pytest

from components import track
from components.track import registry


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh MLflow store; the project's own mlruns/ is never touched."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def test_default_uri_is_embedded_sqlite_under_the_repo(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = track.tracking_uri()
    assert uri == f"sqlite:///{track.default_store_dir() / 'mlflow.db'}"
    assert track.local_artifact_root(uri) == track.default_store_dir() / "artifacts"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert track.tracking_uri() == "http://127.0.0.1:5000"
    assert track.local_artifact_root() is None


def test_component_and_data_versions_come_from_the_sources():
    versions = track.component_versions()
    from components import cluster, embed, train

    assert versions["cluster"] == cluster.__version__
    assert versions["embed"] == embed.__version__
    assert versions["train"] == train.__version__
    assert versions["track"] == track.__version__
    assert track.data_version() == "91d93fc127a083988b00abfbdf3691db.dir"


def test_run_logs_params_versions_json_and_figure(store):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    with track.start_run("unit", "first", params={"lr": 0.01, "net": {"name": "small"}}, tags={"kind": "test"}) as run:
        track.log_json("eval/metrics.json", {"accuracy": 0.5})
        track.log_figure(fig, "roc.png")
        mlflow.log_metric("loss", 1.5, step=3)
        run_id = run.info.run_id
    plt.close(fig)
    logged = mlflow.MlflowClient().get_run(run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.params["lr"] == "0.01" and logged.data.params["net.name"] == "small"
    assert logged.data.params["version.train"] == track.component_versions()["train"]
    assert logged.data.params["data.version"] == track.data_version()
    assert logged.data.tags["kind"] == "test"
    artifacts = store / "artifacts" / "unit"
    assert json.loads(next(artifacts.rglob("metrics.json")).read_text()) == {"accuracy": 0.5}
    assert next(artifacts.rglob("roc.png")).stat().st_size > 0
    with pytest.raises(ValueError, match="must end in .json"):
        track.log_json("metrics.txt", {})


def test_failed_block_marks_the_run_failed(store):
    import mlflow

    with pytest.raises(RuntimeError, match="boom"):
        with track.start_run("unit", "broken") as run:
            run_id = run.info.run_id
            raise RuntimeError("boom")
    assert mlflow.MlflowClient().get_run(run_id).info.status == "FAILED"


def test_resolve_falls_back_to_the_local_model_without_a_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'absent' / 'mlflow.db'}")
    ref = registry.resolve("champion")
    assert ref == registry.ModelRef(None, registry.local_fallback_path(), "local")
    assert not (tmp_path / "absent").exists(), "asking for the champion must not create a store"


def test_register_alias_resolve_round_trip(store):
    first, second = store / "a.keras", store / "b.keras"
    first.write_bytes(b"first model")
    second.write_bytes(b"second model")
    with track.start_run("unit", "train") as run:
        v1 = registry.register_embedder(first, run.info.run_id, tags={"accuracy": 0.9})
        v2 = registry.register_embedder(second, run.info.run_id)
    assert (v1, v2) == (1, 2)
    # The store exists, but no alias is set yet: still the local model.
    assert registry.resolve("champion").source == "local"
    registry.set_alias("champion", v1)
    registry.set_alias("challenger", v2)
    champion, challenger = registry.resolve("champion"), registry.resolve("challenger")
    assert (champion.version, champion.source) == (1, "registry")
    assert champion.path.read_bytes() == b"first model"
    assert challenger.path.read_bytes() == b"second model"
    assert champion.path.is_relative_to(store), "downloads stay beside the embedded store"
    registry.set_alias("champion", v2)  # promotion moves the alias
    assert registry.resolve("champion").path.read_bytes() == b"second model"
    with pytest.raises(registry.TrackingError, match="version 7"):
        registry.set_alias("champion", 7)
    with pytest.raises(FileNotFoundError):
        registry.register_embedder(store / "missing.keras", run.info.run_id)
