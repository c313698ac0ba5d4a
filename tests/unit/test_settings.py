"""Unit tests for components.settings: params.yaml into typed, frozen settings."""

from __future__ import annotations

import dataclasses
import io
import math
import re
import tokenize
from pathlib import Path

import pytest
import yaml

from components.settings import (
    PROJECT_ROOT,
    BaseParams,
    ClusterParams,
    DetectParams,
    EmbedParams,
    IdentitiesParams,
    RunParams,
    Settings,
    VerifyParams,
    load_settings,
)

# Every section params.yaml may hold: one per field of Settings.
SECTIONS = tuple(f.name for f in dataclasses.fields(Settings))

# The calibrated thresholds have no default, so every parameters file gives them (test values,
# deliberately not the project's).
CALIBRATED = {"cluster": {"threshold": 0.94}, "verify": {"threshold": 0.9}, "identities": {"assign_threshold": 0.93}}
CALIBRATED_KEYS = ("cluster.threshold", "verify.threshold", "identities.assign_threshold")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_params(path: Path, text: str = "", calibrated: dict | None = None) -> Path:
    """A parameters file: ``text``'s sections, plus the calibrated thresholds where it does not give them."""
    sections = {name: dict(values or {}) for name, values in (yaml.safe_load(text) or {}).items()}
    for section, values in (CALIBRATED if calibrated is None else calibrated).items():
        sections[section] = {**values, **(sections.get(section) or {})}
    return write(path, yaml.safe_dump(sections))


def field_default(cls: type, name: str):
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


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
                assert type(got) is type(field_default(type(loaded), key))
                assert got == pytest.approx(value)
    assert settings.base.models_dir.is_absolute()
    assert settings.model_path == settings.base.models_dir / "face_recognition_net.keras"
    assert 0.0 < settings.verify.threshold < 1.0
    assert settings.detect.max_side > 0


def test_default_path_is_the_project_params_yaml(monkeypatch):
    monkeypatch.delenv("FACES_PARAMS", raising=False)
    assert load_settings() == load_settings(PROJECT_ROOT / "params.yaml")


def test_faces_params_environment_variable_picks_the_file(tmp_path, monkeypatch):
    path = write_params(tmp_path / "other.yaml", "verify:\n  threshold: 0.5\n")
    monkeypatch.setenv("FACES_PARAMS", str(path))
    assert load_settings().verify.threshold == 0.5


def test_unknown_section_is_rejected_by_name(tmp_path):
    path = write_params(tmp_path / "params.yaml", "detect:\n  batch_size: 4\ndetcet:\n  batch_size: 4\n")
    with pytest.raises(ValueError, match="detcet"):
        load_settings(path)


def test_unknown_key_is_rejected_by_name(tmp_path):
    path = write_params(tmp_path / "params.yaml", "detect:\n  min_confidance: 0.5\n")
    with pytest.raises(ValueError, match="min_confidance"):
        load_settings(path)


def test_relative_models_dir_resolves_against_the_yaml_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project" / "conf"
    write_params(folder / "params.yaml", "base:\n  models_dir: ../weights\nrun:\n  out_dir: out/demo\n")
    monkeypatch.chdir(tmp_path)  # a relative path to the yaml, from somewhere else

    settings = load_settings(Path("project/conf/params.yaml"))

    assert settings.base.models_dir.resolve() == (tmp_path / "project" / "weights").resolve()
    assert settings.base.models_dir.is_absolute()
    assert settings.run.out_dir == folder.resolve() / "out" / "demo"
    assert settings.model_path.resolve() == (tmp_path / "project" / "weights" / "face_recognition_net.keras").resolve()


def test_absolute_models_dir_is_kept(tmp_path):
    target = tmp_path / "elsewhere" / "models"
    path = write_params(tmp_path / "conf" / "params.yaml", f"base:\n  models_dir: {target}\n")
    assert load_settings(path).base.models_dir == target


def test_missing_sections_and_keys_keep_defaults(tmp_path):
    path = write_params(tmp_path / "params.yaml", "verify:\n  threshold: 0.8\ndetect:\n  max_side: 640\n")

    settings = load_settings(path)

    assert settings.verify == VerifyParams(threshold=0.8)
    assert settings.detect == dataclasses.replace(DetectParams(), max_side=640)
    assert settings.embed == EmbedParams()
    assert settings.cluster == ClusterParams(threshold=0.94)
    assert settings.identities == IdentitiesParams(assign_threshold=0.93)
    assert settings.base.seed == BaseParams().seed
    # the default relative paths still resolve against the yaml's folder
    assert settings.base.models_dir == tmp_path.resolve() / "models"
    assert settings.run == dataclasses.replace(RunParams(), out_dir=tmp_path.resolve() / "runs" / "demo")


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "detect:\n"])
def test_empty_file_or_section_gives_defaults(tmp_path, text):
    settings = load_settings(write_params(tmp_path / "params.yaml", text))
    assert settings.detect == DetectParams()
    assert settings.cluster == ClusterParams(threshold=0.94)
    assert settings.verify == VerifyParams(threshold=0.9)


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "detect:\n"])
def test_a_file_without_the_calibrated_thresholds_is_refused(tmp_path, text):
    with pytest.raises(ValueError, match="calibrated threshold"):
        load_settings(write(tmp_path / "params.yaml", text))


@pytest.mark.parametrize("missing", CALIBRATED_KEYS)
def test_each_calibrated_threshold_is_required_by_name(tmp_path, missing):
    section, key = missing.split(".")
    calibrated = {name: {k: v for k, v in values.items() if (name, k) != (section, key)}
                  for name, values in CALIBRATED.items()}
    path = write_params(tmp_path / "params.yaml", calibrated=calibrated)
    with pytest.raises(ValueError, match=rf"{missing}: no value given; it is the local model's calibrated threshold"):
        load_settings(path)


def test_calibrated_thresholds_have_no_default_in_code():
    for cls, name in ((ClusterParams, "threshold"), (VerifyParams, "threshold"), (IdentitiesParams, "assign_threshold")):
        assert math.isnan(field_default(cls, name)), (cls, name)
    for build in (Settings, ClusterParams, VerifyParams, IdentitiesParams):
        with pytest.raises(ValueError, match="calibrated threshold"):
            build()
    assert VerifyParams(threshold=0.5).threshold == 0.5


def test_values_are_coerced_to_the_field_types(tmp_path):
    path = write_params(
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
    path = write_params(tmp_path / "params.yaml", "detect:\n  batch_size: lots\n")
    with pytest.raises(ValueError):
        load_settings(path)


def test_settings_are_frozen():
    settings = load_settings(PROJECT_ROOT / "params.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.verify.threshold = 0.1  # type: ignore[misc]


# -- params.yaml is the only place the calibrated thresholds are written ------------------------

#: Where code and its configuration live (bench results and docs may quote the values).
CODE_DIRS = ("components", "serving", "dags")
CONFIG_SUFFIXES = (".yaml", ".yml", ".json", ".toml", ".cfg", ".ini")


def calibrated_values() -> set[float]:
    settings = load_settings(PROJECT_ROOT / "params.yaml")
    return {settings.cluster.threshold, settings.verify.threshold, settings.identities.assign_threshold}


def hard_coded_thresholds(source: str, values: set[float]) -> list[str]:
    """Python lines that write one of ``values`` as a default or constant.

    A number token equal to one of them right after ``=`` (parameter default, dataclass field,
    keyword argument, assignment), ``or`` or ``return``, or after a ``"...threshold..."`` key
    (``{"threshold": ...}``, ``.get("threshold", ...)``). Strings and comments, docstrings that
    quote a value included, are not code; nor is a grid of candidates (``[0.93, 0.945, 0.96]``).
    """
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
              if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT)]
    lines = source.splitlines()
    found = []
    for i, token in enumerate(tokens):
        if token.type != tokenize.NUMBER or i == 0:
            continue
        try:
            value = float(token.string.replace("_", ""))
        except ValueError:
            continue
        if not any(math.isclose(value, v, abs_tol=1e-12) for v in values):
            continue
        previous = tokens[i - 1].string
        keyed = (previous in (":", ",") and i >= 2 and tokens[i - 2].type == tokenize.STRING
                 and "threshold" in tokens[i - 2].string.lower())
        if previous in ("=", "or", "return") or keyed:
            found.append(f"{token.start[0]}: {lines[token.start[0] - 1].strip()}")
    return found


def config_thresholds(text: str, values: set[float]) -> list[str]:
    """Lines of a configuration file that give a threshold one of ``values``."""
    pattern = re.compile(r"threshold\w*[\"']?\s*[:=]\s*[\"']?([-+]?\d*\.\d+)", re.IGNORECASE)
    return [f"{number}: {line.strip()}" for number, line in enumerate(text.splitlines(), 1)
            for match in pattern.finditer(line)
            if any(math.isclose(float(match.group(1)), v, abs_tol=1e-12) for v in values)]


def test_the_guard_finds_hard_coded_thresholds():
    values = {0.909, 0.945}
    planted = (
        "def f(x, threshold: float = 0.945, *, seed=0):\n"
        "    \"\"\"At the shipped 0.909 (a docstring may quote it).\"\"\"\n"
        "    grid = [0.93, 0.945, 0.96]  # a grid of candidates: 0.945 too\n"
        "    g(threshold=0.909)\n"
        "    t = params.get('threshold', 0.945) or 0.909\n"
        "    return {'assign_threshold': 0.909, 'knn': 30}\n"
        "class P:\n"
        "    assign_threshold: float = 0.909\n"
        "    other: float = 0.95\n"
        "DEFAULT_THRESHOLD = 0.945\n"
    )
    assert [line.split(":")[0] for line in hard_coded_thresholds(planted, values)] == [
        "1", "4", "5", "5", "6", "8", "10"]
    assert len(config_thresholds("cluster:\n  threshold: 0.945  # x\n  knn: 30\nverify_threshold=0.909\n", values)) == 2
    assert config_thresholds("grid: [0.945]\nthreshold: 0.95\n", values) == []


def test_params_yaml_is_the_only_place_the_calibrated_thresholds_are_written():
    values = calibrated_values()
    assert values, "params.yaml gives the calibrated thresholds"
    offenders = []
    for folder in CODE_DIRS:
        for path in sorted((PROJECT_ROOT / folder).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            if path.suffix == ".py":
                hits = hard_coded_thresholds(path.read_text(), values)
            elif path.suffix in CONFIG_SUFFIXES:
                hits = config_thresholds(path.read_text(), values)
            else:
                continue
            offenders += [f"{path.relative_to(PROJECT_ROOT)}:{hit}" for hit in hits]
    assert not offenders, (
        "calibrated thresholds are the model's (params.yaml for the local model, MLflow tags for registered "
        "ones), never a default in code:\n" + "\n".join(offenders)
    )
