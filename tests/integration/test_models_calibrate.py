"""`faces models calibrate` with the real pretrained embedder on real LFW photos, against a real MLflow.

Two versions are registered without thresholds: the pretrained model, and a copy whose
final Dense layer got noise. Calibrating each on the same small labelled folder (6 LFW
people x 4 photos) must store thresholds fitted to *its* weights: they differ.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from components.settings import PROJECT_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = PROJECT_ROOT / "models" / "face_recognition_net.keras"
LFW = PROJECT_ROOT / "data" / "lfw"


@pytest.fixture
def store(tmp_path, monkeypatch):
    if not MODEL.is_file() or not (LFW / "pairs.txt").is_file():
        pytest.skip("LFW or the pretrained model missing (make setup)")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    return tmp_path


def _people_folder(target, people: int = 6, photos: int = 4):
    """``people`` LFW people with at least ``photos`` photos (spread over the alphabet), ``photos`` each."""
    from components.datasets.lfw import list_identities

    identities = list_identities(LFW)
    eligible = sorted(name for name, paths in identities.items() if len(paths) >= photos)
    for index in np.linspace(0, len(eligible) - 1, people).round().astype(int):
        name = eligible[index]
        (target / name).mkdir(parents=True)
        for path in identities[name][:photos]:
            shutil.copy(path, target / name / path.name)
    return target


def _perturbed(path):
    """The pretrained model with noise on its final Dense layer's kernel (same architecture, other weights)."""
    import keras

    from components.embed import network  # noqa: F401  (registers the custom layers)

    model = keras.saving.load_model(MODEL, compile=False)
    fc = model.get_layer("fc")
    kernel = fc.get_weights()[0]
    noise = np.random.default_rng(0).normal(0.0, float(kernel.std()), kernel.shape).astype(kernel.dtype)
    fc.set_weights([kernel + noise])
    model.save(path)
    return path


def test_calibrate_fits_each_version_with_its_own_weights(store, capsys):
    from components import track
    from components.cli import main as faces
    from components.embed.thresholds import Thresholds, UncalibratedModelError
    from components.settings import load_settings
    from components.track import registry

    folder = _people_folder(store / "people")
    with track.start_run("unit", "models") as run:
        pretrained = registry.register_embedder(MODEL, run.info.run_id, tags={"origin": "pretrained"})
        noisy = registry.register_embedder(_perturbed(store / "noisy.keras"), run.info.run_id)
    with pytest.raises(UncalibratedModelError):
        registry.resolve_version(noisy)

    fitted = {}
    for version in (pretrained, noisy):
        assert faces(["models", "calibrate", str(version), "--data", str(folder), "--no-progress"]) == 0, \
            capsys.readouterr().err
        result = json.loads(capsys.readouterr().out)
        # The pretrained weights come with params.yaml's calibration; the perturbed ones with none.
        before = Thresholds.from_settings(load_settings()).as_dict() if version == pretrained else None
        assert result["version"] == version and result["previous_thresholds"] == before
        evidence = result["evidence"]
        assert evidence["people"] == 6 and evidence["faces"] >= 22 and evidence["photos"] == 24
        assert evidence["same_pairs"] == 36 and evidence["pairs"] == 72
        fitted[version] = registry.resolve_version(version).thresholds
        assert fitted[version] == Thresholds.from_dict(result["thresholds"])
        assert fitted[version].assign == fitted[version].cluster
        stored = registry.get_version(version).calibration
        assert stored["mlflow_run_id"] and stored["verify"]["accuracy"] > 0.5
    # The pretrained model tells these 6 people apart; its thresholds sit where params.yaml's do.
    assert 0.8 < fitted[pretrained].verify < 0.98
    assert fitted[pretrained] != fitted[noisy]
    assert abs(fitted[pretrained].verify - fitted[noisy].verify) > 1e-3

    assert faces(["models", "list", "--json"]) == 0
    listed = {row["version"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(listed) == {pretrained, noisy}
    assert listed[noisy]["thresholds"] == fitted[noisy].as_dict()
    assert listed[pretrained]["calibration"]["data"].startswith("folder ")

    assert faces(["models", "promote", str(noisy), "--reason", "test"]) == 0
    assert registry.resolve("champion").thresholds == fitted[noisy]


def test_calibrate_on_lfw_pairs_with_max_pairs(store, capsys):
    from components import track
    from components.cli import main as faces
    from components.track import registry

    with track.start_run("unit", "models") as run:
        version = registry.register_embedder(MODEL, run.info.run_id)
    assert faces(["models", "calibrate", f"v{version}", "--max-pairs", "40", "--no-progress"]) == 0, \
        capsys.readouterr().err
    evidence = json.loads(capsys.readouterr().out)["evidence"]
    assert evidence["pairs"] == 40 and evidence["same_pairs"] == 20
    assert evidence["data"].startswith("LFW View 2 pairs.txt, 40 of 6000 pairs")
    thresholds = registry.resolve_version(version).thresholds
    assert 0.7 < thresholds.verify < 0.99 and thresholds.assign == thresholds.cluster

    assert faces(["models", "calibrate", str(version), "--data", str(store / "nowhere")]) == 2
    assert "not 'lfw' and not a folder" in capsys.readouterr().err
