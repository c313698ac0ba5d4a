"""components.track against a real MLflow (embedded SQLite store in a temporary folder)."""

from __future__ import annotations

import json

import pytest

from components import track
from components.cli import main as faces
from components.embed.thresholds import Thresholds, UncalibratedModelError
from components.track import registry

T1 = Thresholds(verify=0.91, cluster=0.945, assign=0.945)
T2 = Thresholds(verify=0.7, cluster=0.8, assign=0.82)


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
    from components.settings import load_settings

    ref = registry.resolve("champion")
    assert ref == registry.ModelRef(None, registry.local_fallback_path(), "local",
                                    Thresholds.from_settings(load_settings()))
    assert ref.name == "local" and ref.thresholds.verify == load_settings().verify.threshold
    assert registry.resolve_version(None) == ref
    assert not (tmp_path / "absent").exists(), "asking for the champion must not create a store"
    with pytest.raises(registry.RegistryNotConfiguredError, match="no model registry"):
        registry.resolve_version(1)
    with pytest.raises(registry.RegistryNotConfiguredError):
        registry.list_versions()
    assert not (tmp_path / "absent").exists()


def test_register_alias_resolve_round_trip(store):
    first, second = store / "a.keras", store / "b.keras"
    first.write_bytes(b"first model")
    second.write_bytes(b"second model")
    with track.start_run("unit", "train") as run:
        v1 = registry.register_embedder(first, run.info.run_id, tags={"accuracy": 0.9}, thresholds=T1)
        v2 = registry.register_embedder(second, run.info.run_id, thresholds=T2)
    assert (v1, v2) == (1, 2)
    # The store exists, but no alias is set yet: still the local model.
    assert registry.resolve("champion").source == "local"
    registry.set_alias("champion", v1)
    registry.set_alias("challenger", v2)
    champion, challenger = registry.resolve("champion"), registry.resolve("challenger")
    assert (champion.version, champion.source, champion.thresholds) == (1, "registry", T1)
    assert champion.name == "face-embedder v1" and challenger.thresholds == T2
    assert champion.path.read_bytes() == b"first model"
    assert challenger.path.read_bytes() == b"second model"
    assert champion.path.is_relative_to(store), "downloads stay beside the embedded store"
    registry.set_alias("champion", v2)  # promotion moves the alias
    assert registry.resolve("champion").path.read_bytes() == b"second model"
    with pytest.raises(registry.TrackingError, match="version 7"):
        registry.set_alias("champion", 7)
    with pytest.raises(FileNotFoundError):
        registry.register_embedder(store / "missing.keras", run.info.run_id)


def _register(store, content: bytes, thresholds=None, tags=None) -> int:
    path = store / f"{abs(hash(content))}.keras"
    path.write_bytes(content)
    with track.start_run("unit", "train") as run:
        return registry.register_embedder(path, run.info.run_id, tags=tags, thresholds=thresholds)


def test_uncalibrated_version_is_refused_until_thresholds_are_set(store):
    v1 = _register(store, b"calibrated", T1)
    v2 = _register(store, b"uncalibrated")
    registry.set_alias("challenger", v2)
    for ask in (lambda: registry.resolve("challenger"), lambda: registry.resolve_version(v2)):
        with pytest.raises(UncalibratedModelError, match=f"faces models calibrate {v2}"):
            ask()
    # Calibration (and retraining) read the file of an uncalibrated version.
    raw = registry.resolve_version(v2, require_thresholds=False)
    assert raw.thresholds is None and raw.path.read_bytes() == b"uncalibrated"
    registry.set_thresholds(v2, T2, evidence={"data": "unit", "pairs": 4})
    assert registry.resolve("challenger").thresholds == T2
    assert registry.resolve_version(v1).thresholds == T1
    info = registry.get_version(v2)
    assert info.thresholds == T2 and info.calibration == {"data": "unit", "pairs": 4}
    assert info.aliases == ["challenger"] and info.tags["faces.calibrated_at"]
    with pytest.raises(registry.NoSuchVersionError, match="no version 9"):
        registry.resolve_version(9)
    with pytest.raises(registry.NoSuchVersionError):
        registry.set_thresholds(9, T1)
    with pytest.raises(ValueError, match="characters"):
        registry.set_thresholds(v2, T1, evidence={"curve": list(range(5000))})


def test_a_version_holding_the_local_weights_takes_params_thresholds(store):
    """Versions registered before models carried thresholds (retraining's pretrained baseline)."""
    from components.settings import load_settings

    settings = load_settings()
    with track.start_run("tests", "register") as run:
        version = registry.register_embedder(settings.model_path, run.info.run_id)
    assert registry.resolve_version(version).thresholds == Thresholds.from_settings(settings)


def test_promote_moves_the_champion_records_why_and_refuses_uncalibrated(store):
    v1 = _register(store, b"one", T1)
    v2 = _register(store, b"two")
    first = registry.promote(v1, reason="baseline", by="tester")
    assert first["previous"] is None and first["thresholds"] == T1.as_dict()
    assert registry.alias_version("champion") == v1
    with pytest.raises(UncalibratedModelError, match=f"faces models calibrate {v2}"):
        registry.promote(v2)
    assert registry.alias_version("champion") == v1, "a refused promotion leaves the champion where it was"
    registry.set_thresholds(v2, T2)
    second = registry.promote(v2, reason="better BCubed F", by="tester")
    assert (second["previous"], registry.alias_version("champion")) == (v1, v2)
    info = registry.get_version(v2)
    assert info.promotion["by"] == "tester" and info.promotion["reason"] == "better BCubed F"
    assert info.promotion["previous"] == str(v1) and info.promotion["at"]
    assert registry.get_version(v1).promotion["previous"] == "local"
    assert registry.resolve("champion").thresholds == T2
    with pytest.raises(registry.NoSuchVersionError):
        registry.promote(7)


def test_list_versions_and_lookup(store):
    v1 = _register(store, b"one", T1, tags={"held_out_accuracy": 0.95})
    v2 = _register(store, b"two", tags={"faces.held_out.accuracy": "0.9871", "faces.held_out.protocol": "pairs"})
    registry.set_alias("champion", v1)
    registry.set_alias("challenger", v2)
    listed = registry.list_versions()
    assert [info.version for info in listed] == [v1, v2]
    assert listed[0].aliases == ["champion"] and listed[0].thresholds == T1
    assert listed[0].held_out == {"train_held_out_accuracy": 0.95}
    assert listed[1].thresholds is None and listed[1].held_out == {"accuracy": 0.9871, "protocol": "pairs"}
    assert listed[1].run_id and listed[1].created[:2] == "20"
    assert json.loads(json.dumps([info.as_dict() for info in listed]))[1]["calibrated"] is False
    assert (registry.lookup("2"), registry.lookup("v1"), registry.lookup("challenger")) == (2, 1, v2)
    with pytest.raises(registry.NoSuchVersionError, match="alias 'nobody'"):
        registry.lookup("nobody")


def test_models_cli_list_show_promote(store, capsys):
    v1 = _register(store, b"one", T1)
    v2 = _register(store, b"two")
    assert faces(["models", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(row["version"], row["thresholds"]) for row in listed] == [(v1, T1.as_dict()), (v2, None)]
    assert faces(["models", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:5] == ["VERSION", "ALIASES", "VERIFY", "CLUSTER", "ASSIGN"]
    assert "0.9100" in table[1] and "uncalibrated" in table[2]

    assert faces(["models", "promote", str(v2)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"faces models calibrate {v2}" in err and "Traceback" not in err
    assert faces(["models", "promote", f"v{v1}", "--reason", "first calibrated model"]) == 0
    out = capsys.readouterr().out
    assert "champion: v1" in out and "faces reembed" in out and "face_reembed" in out
    assert faces(["models", "show", "champion"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == v1 and shown["aliases"] == ["champion"]
    assert shown["promotion"]["reason"] == "first calibrated model"
    assert faces(["models", "show", "local"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == "local"
    assert faces(["models", "show", "12"]) == 2
    assert "no version 12" in capsys.readouterr().err


def test_models_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'absent' / 'mlflow.db'}")
    assert faces(["models", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no model registry") and err.count("\n") == 1
    assert faces(["models", "calibrate", "1", "--max-pairs", "10"]) == 2
    assert "no model registry" in capsys.readouterr().err
    import socket

    with socket.socket() as sock:  # a port nobody listens on: the server is down
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    assert faces(["models", "promote", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: MLflow at http://127.0.0.1:") and err.count("\n") == 1


def test_redact_url_hides_passwords_only():
    assert track.redact_url("postgresql+psycopg2://faces:s3cret@db:5432/faces") == \
        "postgresql+psycopg2://faces:***@db:5432/faces"
    assert track.redact_url("postgresql://faces@db/faces") == "postgresql://faces@db/faces"
    assert track.redact_url("sqlite:////tmp/faces.db") == "sqlite:////tmp/faces.db"
    assert "s3cret" not in track.redact_url("s3://key:s3cret@bucket/prefix")
