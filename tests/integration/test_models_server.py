"""The registry's versioned models (weights + thresholds) through a real MLflow server.

mlflow/start.sh in its production configuration (PostgreSQL, S3 artifacts proxied by the
server; fixtures of test_mlflow_server.py): register with thresholds, resolve downloads
the file and reads the thresholds, an uncalibrated version is refused, promotion moves
the alias and records itself, ``faces models list --json`` shows it all.
"""

from __future__ import annotations

import json

import pytest

from tests.integration.test_mlflow_server import mlflow_server, postgres_database  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration


def test_versions_with_thresholds_through_the_server(mlflow_server, tmp_path, monkeypatch, capsys):  # noqa: F811
    from components import track
    from components.cli import main as faces
    from components.embed.thresholds import Thresholds, UncalibratedModelError
    from components.track import registry

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)  # the client needs no S3 keys: the server proxies
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server["url"])
    monkeypatch.setattr(registry, "cache_dir", lambda: tmp_path / "downloads")
    fitted = Thresholds(verify=0.9, cluster=0.94, assign=0.94)
    first, second = tmp_path / "first.keras", tmp_path / "second.keras"
    first.write_bytes(b"first model")
    second.write_bytes(b"second model")
    with track.start_run("models", "register") as run:
        v1 = registry.register_embedder(first, run.info.run_id, thresholds=fitted)
        v2 = registry.register_embedder(second, run.info.run_id, tags={"faces.held_out.accuracy": 0.99})

    registry.set_alias("challenger", v2)
    with pytest.raises(UncalibratedModelError, match=f"faces models calibrate {v2}"):
        registry.resolve("challenger")
    registry.promote(v1, reason="first", by="test")
    champion = registry.resolve("champion")
    assert (champion.version, champion.thresholds, champion.path.read_bytes()) == (v1, fitted, b"first model")
    with pytest.raises(UncalibratedModelError):
        registry.promote(v2)
    registry.set_thresholds(v2, Thresholds(0.8, 0.85, 0.85), evidence={"data": "test"})
    assert registry.resolve("challenger").thresholds.verify == 0.8

    assert faces(["models", "promote", "challenger", "--reason", "better"]) == 0
    assert "faces reembed" in capsys.readouterr().out
    assert registry.alias_version("champion") == v2
    assert faces(["models", "list", "--json"]) == 0
    listed = {row["version"]: row for row in json.loads(capsys.readouterr().out)}
    assert listed[v1]["thresholds"] == fitted.as_dict() and listed[v1]["aliases"] == []
    assert listed[v2]["aliases"] == ["challenger", "champion"] and listed[v2]["held_out"] == {"accuracy": 0.99}
    assert listed[v2]["promotion"]["reason"] == "better" and listed[v2]["promotion"]["previous"] == str(v1)
    assert listed[v2]["calibration"] == {"data": "test"}
