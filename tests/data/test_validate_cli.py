"""``faces upload`` and ``faces validate`` end to end, in-process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from components.cli import main

LFW = Path(__file__).resolve().parents[2] / "data" / "lfw" / "images_deepfunneled"


def test_upload_then_validate_quarantines_a_bad_batch(tmp_path, capsys, monkeypatch):
    batch = tmp_path / "batch-9"
    batch.mkdir()
    shutil.copy(next((LFW / "AJ_Cook").glob("*.jpg")), batch / "good.jpg")
    (batch / "bad.jpg").write_bytes(b"not a photo")
    import yaml

    # The project's parameters (a params file must carry the local model's thresholds), with
    # validation output in the test's folder.
    values = yaml.safe_load((LFW.parents[2] / "params.yaml").read_text())
    values["validate"].update(docs_dir=str(tmp_path / "docs"), quarantine_uri=str(tmp_path / "quarantine"))
    values["base"]["models_dir"] = str(LFW.parents[2] / "models")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(values))
    store = tmp_path / "store"

    assert main(["--params", str(params), "upload", str(batch), str(store), "--prefix", "b9", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["uploaded"] == 2
    assert main(["--params", str(params), "upload", str(batch), str(store), "--prefix", "b9", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 2

    code = main(["--params", str(params), "validate", str(store / "b9"), "--batch-id", "b9", "--quarantine"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["success"] is False
    assert [(f["row"], f["check"]) for f in out["failures"]] == [("bad.jpg", "decodable")]
    assert Path(out["html_path"]).is_file() and Path(out["html_path"]).is_relative_to(tmp_path / "docs" / "b9")
    quarantined = Path(out["quarantined_to"])
    assert quarantined.parent == tmp_path / "quarantine" and (quarantined / "batch" / "bad.jpg").is_file()
    assert sorted(p.name for p in (store / "b9").iterdir()) == ["bad.jpg", "good.jpg"]  # nothing deleted

    assert main(["--params", str(params), "upload", str(tmp_path / "missing"), str(store), "--no-progress"]) == 2
    assert "not a folder" in capsys.readouterr().err
