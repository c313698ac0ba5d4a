"""Unit tests for components.settings: params.yaml into typed, frozen settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from components.settings import (
    PROJECT_ROOT,
    BaseParams,
    ClusterParams,
    DetectParams,
    EmbedParams,
    RunParams,
    Settings,
    VerifyParams,
    load_settings,
)

# Every section params.yaml may hold: one per field of Settings.
SECTIONS = tuple(f.name for f in dataclasses.fields(Settings))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_project_params_yaml_loads_with_its_values():
    path = PROJECT_ROOT / "params.yaml"
    raw = yaml.safe_load(path.read_text())

    settings = load_settings(path)

    assert isinstance(settings, Settings)
    assert set(raw) <= set(SECTIONS)
    for section, values in raw.items():
        loaded = getattr(settings, section)
        for key, value in (values or {}).items():
            got = getattr(loaded, key)
            if isinstance(got, Path):
                assert got == (PROJECT_ROOT / value if not Path(value).is_absolute() else Path(value))
            else:
                assert type(got) is type(getattr(type(loaded)(), key))
                assert got == pytest.approx(value)
    assert settings.base.models_dir.is_absolute()
    assert settings.model_path == settings.base.models_dir / "face_recognition_net.keras"
    assert 0.0 < settings.verify.threshold < 1.0
    assert settings.detect.max_side > 0


def test_default_path_is_the_project_params_yaml(monkeypatch):
    monkeypatch.delenv("FACES_PARAMS", raising=False)
    assert load_settings() == load_settings(PROJECT_ROOT / "params.yaml")


def test_faces_params_environment_variable_picks_the_file(tmp_path, monkeypatch):
    path = write(tmp_path / "other.yaml", "verify:\n  threshold: 0.5\n")
    monkeypatch.setenv("FACES_PARAMS", str(path))
    assert load_settings().verify.threshold == 0.5


def test_unknown_section_is_rejected_by_name(tmp_path):
    path = write(tmp_path / "params.yaml", "detect:\n  batch_size: 4\ndetcet:\n  batch_size: 4\n")
    with pytest.raises(ValueError, match="detcet"):
        load_settings(path)


def test_unknown_key_is_rejected_by_name(tmp_path):
    path = write(tmp_path / "params.yaml", "detect:\n  min_confidance: 0.5\n")
    with pytest.raises(ValueError, match="min_confidance"):
        load_settings(path)


def test_relative_models_dir_resolves_against_the_yaml_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project" / "conf"
    write(folder / "params.yaml", "base:\n  models_dir: ../weights\nrun:\n  out_dir: out/demo\n")
    monkeypatch.chdir(tmp_path)  # a relative path to the yaml, from somewhere else

    settings = load_settings(Path("project/conf/params.yaml"))

    assert settings.base.models_dir.resolve() == (tmp_path / "project" / "weights").resolve()
    assert settings.base.models_dir.is_absolute()
    assert settings.run.out_dir == folder.resolve() / "out" / "demo"
    assert settings.model_path.resolve() == (tmp_path / "project" / "weights" / "face_recognition_net.keras").resolve()


def test_absolute_models_dir_is_kept(tmp_path):
    target = tmp_path / "elsewhere" / "models"
    path = write(tmp_path / "conf" / "params.yaml", f"base:\n  models_dir: {target}\n")
    assert load_settings(path).base.models_dir == target


def test_missing_sections_and_keys_keep_defaults(tmp_path):
    path = write(tmp_path / "params.yaml", "verify:\n  threshold: 0.8\ndetect:\n  max_side: 640\n")

    settings = load_settings(path)

    assert settings.verify == VerifyParams(threshold=0.8)
    assert settings.detect == dataclasses.replace(DetectParams(), max_side=640)
    assert settings.embed == EmbedParams()
    assert settings.cluster == ClusterParams()
    assert settings.base.seed == BaseParams().seed
    # the default relative paths still resolve against the yaml's folder
    assert settings.base.models_dir == tmp_path.resolve() / "models"
    assert settings.run == dataclasses.replace(RunParams(), out_dir=tmp_path.resolve() / "runs" / "demo")


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "detect:\n"])
def test_empty_file_or_section_gives_defaults(tmp_path, text):
    settings = load_settings(write(tmp_path / "params.yaml", text))
    assert settings.detect == DetectParams()
    assert settings.cluster == ClusterParams()
    assert settings.verify == VerifyParams()


def test_values_are_coerced_to_the_field_types(tmp_path):
    path = write(
        tmp_path / "params.yaml",
        'detect:\n  min_confidence: "0.9"\n  batch_size: "16"\n  min_blur: 20\n'
        "cluster:\n  threshold: 1\nbase:\n  seed: '7'\n",
    )

    settings = load_settings(path)

    assert settings.detect.min_confidence == 0.9 and type(settings.detect.min_confidence) is float
    assert settings.detect.batch_size == 16 and type(settings.detect.batch_size) is int
    assert settings.detect.min_blur == 20.0 and type(settings.detect.min_blur) is float
    assert settings.cluster.threshold == 1.0 and type(settings.cluster.threshold) is float
    assert settings.base.seed == 7 and type(settings.base.seed) is int


def test_uncoercible_value_raises_value_error(tmp_path):
    path = write(tmp_path / "params.yaml", "detect:\n  batch_size: lots\n")
    with pytest.raises(ValueError):
        load_settings(path)


def test_settings_are_frozen():
    settings = load_settings(PROJECT_ROOT / "params.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.verify.threshold = 0.1  # type: ignore[misc]
