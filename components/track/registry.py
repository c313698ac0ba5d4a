"""The model registry: one registered model, versions, and the ``champion`` alias.

A model is a versioned unit: its weights (the ``.keras`` file, preprocessing included:
aligned 150x150 RGB crops in, unit-norm embeddings out) *and* its calibrated thresholds
(:class:`components.embed.thresholds.Thresholds`: verify, cluster, assign), kept as tags
of the MLflow model version. Every trained or fine-tuned embedder is registered as a new
version of :data:`MODEL_NAME`; ``challenger`` marks the latest candidate and
``champion`` the one in service.

:func:`resolve` (an alias) and :func:`resolve_version` (a version number) are the one
resolver every consumer uses (the pipeline, the BentoML service, the DAGs, retraining):
they hand back a :class:`ModelRef` with a local ``.keras`` file, downloaded once into
``models/registry/`` (or beside an embedded store), and the version's thresholds. A
registered version without thresholds is refused (:class:`UncalibratedModelError`):
``faces models calibrate VERSION`` fits them. With no registry configured, or no
version behind the alias, :func:`resolve` falls back to the pretrained engine model
``models/face_recognition_net.keras`` with the thresholds of ``params.yaml``, so a
fresh checkout works before anything was ever trained.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.embed.thresholds import Thresholds, UncalibratedModelError
from components.track import TrackingError, _mlflow, sqlite_path, tracking_uri

MODEL_NAME = "face-embedder"
MODEL_ARTIFACT_DIR = "model"
ALIASES = ("champion", "challenger")

#: Version tags written by this module (besides ``faces.threshold.*``, see Thresholds.to_tags).
CALIBRATION_TAG = "faces.calibration"  # JSON: how the thresholds were fitted (data set, figures)
CALIBRATED_AT_TAG = "faces.calibrated_at"
HELD_OUT_PREFIX = "faces.held_out."  # held-out figures (retraining's evaluation): faces.held_out.accuracy ...
PROMOTION_TAGS = {"at": "faces.promoted_at", "by": "faces.promoted_by", "reason": "faces.promotion_reason",
                  "previous": "faces.promoted_from"}
MAX_TAG_VALUE = 5000  # MLflow's limit on a tag value (the smallest across its stores)

__all__ = ["ALIASES", "MODEL_NAME", "ModelRef", "NoSuchVersionError", "RegistryNotConfiguredError", "Thresholds",
           "TrackingError", "UncalibratedModelError", "VersionInfo", "alias_version", "download_version",
           "get_version", "list_versions", "lookup", "promote", "register_embedder", "registry_configured",
           "resolve", "resolve_version", "set_alias", "set_thresholds", "set_version_tags"]


class RegistryNotConfiguredError(TrackingError):
    """There is no registry to ask (no tracking URI and no embedded store)."""


class NoSuchVersionError(TrackingError):
    """The registry has no such version (or no such alias)."""


@dataclass(frozen=True)
class ModelRef:
    """A model ready to load: its file and its thresholds.

    Attributes:
        version: registry version, or None for the local pretrained fallback.
        path: local ``.keras`` file.
        source: ``"registry"`` (downloaded from MLflow) or ``"local"`` (the fallback).
        thresholds: the model's calibrated thresholds (the version's tags, or ``params.yaml``
            for the local model). None only when asked for with ``require_thresholds=False``
            and the version was never calibrated.
    """

    version: int | None
    path: Path
    source: str
    thresholds: Thresholds | None

    @property
    def name(self) -> str:
        """``face-embedder v3``, or ``local`` for the pretrained fallback."""
        return "local" if self.version is None else f"{MODEL_NAME} v{self.version}"


@dataclass(frozen=True)
class VersionInfo:
    """One registered version, as ``faces models list`` and ``show`` report it.

    Attributes:
        version: the version number.
        aliases: aliases pointing at it (``champion``, ``challenger`` ...).
        thresholds: its calibrated thresholds, or None (uncalibrated).
        created: ISO creation time (UTC).
        run_id: the MLflow run that produced it.
        source: where its artifact lives.
        description: the version's description ('' when none).
        tags: every version tag.
        held_out: held-out figures found in the tags (``faces.held_out.*``, and the
            training loop's ``held_out_accuracy``).
        calibration: how the thresholds were fitted (the ``faces.calibration`` tag), or None.
        promotion: who promoted it to champion, when and why, or None.
    """

    version: int
    aliases: list[str]
    thresholds: Thresholds | None
    created: str
    run_id: str | None
    source: str
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    held_out: dict[str, Any] = field(default_factory=dict)
    calibration: dict | None = None
    promotion: dict | None = None

    @property
    def name(self) -> str:
        return f"{MODEL_NAME} v{self.version}"

    def as_dict(self) -> dict:
        """JSON-ready."""
        return {"version": self.version, "name": self.name, "aliases": self.aliases,
                "thresholds": None if self.thresholds is None else self.thresholds.as_dict(),
                "calibrated": self.thresholds is not None, "created": self.created, "run_id": self.run_id,
                "source": self.source, "description": self.description, "held_out": self.held_out,
                "calibration": self.calibration, "promotion": self.promotion, "tags": self.tags}


def local_fallback_path() -> Path:
    """The pretrained engine model that :func:`resolve` falls back to."""
    from components.settings import load_settings

    return load_settings().model_path


def local_ref(settings=None) -> ModelRef:
    """The pretrained local model with its ``params.yaml`` thresholds.

    Args:
        settings: the settings to read (default: :func:`components.settings.load_settings`).
    """
    from components.settings import load_settings

    settings = settings or load_settings()
    return ModelRef(None, settings.model_path, "local", Thresholds.from_settings(settings))


def registry_configured() -> bool:
    """Whether there is a registry to ask: a server URI, or an embedded SQLite store that exists.

    A fresh checkout has no store, and must not grow an empty ``mlruns/`` just because
    something asked for the champion.
    """
    db = sqlite_path(tracking_uri())
    return db is None or db.is_file()


def _require_registry() -> None:
    if not registry_configured():
        raise RegistryNotConfiguredError(
            f"no model registry: {sqlite_path(tracking_uri())} does not exist (set MLFLOW_TRACKING_URI to the "
            f"MLflow server, or register a model first: `faces train` / `faces retrain`)")


def _client():
    return _mlflow().MlflowClient()


def _message(error: Exception) -> str:
    text = getattr(error, "message", None) or str(error)
    return " ".join(str(text).split())[:500]


_MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def _model_version(version: int):
    """The MLflow ``ModelVersion`` of ``version`` of :data:`MODEL_NAME`.

    Raises:
        RegistryNotConfiguredError, NoSuchVersionError, TrackingError (MLflow unreachable).
    """
    from mlflow.exceptions import MlflowException

    _require_registry()
    try:
        return _client().get_model_version(MODEL_NAME, str(int(version)))
    except MlflowException as error:
        if error.error_code in _MISSING:
            raise NoSuchVersionError(f"{MODEL_NAME} has no version {version} in the registry at "
                                     f"{tracking_uri()}") from error
        raise TrackingError(f"MLflow at {tracking_uri()}: cannot read version {version} of {MODEL_NAME}: "
                            f"{_message(error)}") from error


def _uncalibrated(version: int, doing: str = "use it") -> UncalibratedModelError:
    return UncalibratedModelError(
        f"version {version} of {MODEL_NAME} has no calibrated thresholds (verify, cluster, assign); "
        f"run `faces models calibrate {version}` before you {doing}")


def register_embedder(keras_path: str | Path, run_id: str, tags: dict | None = None,
                      thresholds: Thresholds | None = None) -> int:
    """Log a ``.keras`` model to a run and register it as a new version of :data:`MODEL_NAME`.

    Args:
        keras_path: the trained model file.
        run_id: the MLflow run that produced it (the artifact goes there, under ``model/<sha256[:12]>/``).
        tags: version tags (e.g. metrics, the base version it was fine-tuned from).
        thresholds: the model's calibrated thresholds, stored as version tags; without
            them the version cannot be resolved until ``faces models calibrate`` fits them.

    Returns:
        The new version number.

    Raises:
        FileNotFoundError: no such model file.
        TrackingError: MLflow refused.
    """
    keras_path = Path(keras_path)
    if not keras_path.is_file():
        raise FileNotFoundError(f"{keras_path}: no model file to register")
    from mlflow.exceptions import MlflowException

    # One folder per file content: a run may register several models (a version's
    # source must hold exactly its own file).
    digest = hashlib.sha256(keras_path.read_bytes()).hexdigest()[:12]
    artifact_dir = f"{MODEL_ARTIFACT_DIR}/{digest}"
    all_tags = {"file": keras_path.name, **{k: str(v) for k, v in (tags or {}).items()}}
    if thresholds is not None:
        all_tags.update(thresholds.to_tags())
        all_tags[CALIBRATED_AT_TAG] = _now()
    client = _client()
    try:
        client.log_artifact(run_id, str(keras_path), artifact_dir)
        try:
            client.create_registered_model(MODEL_NAME, description="Face embedder: aligned 150x150 RGB crop -> "
                                           "L2-normalised embedding (components.train)")
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_dir}"
        version = client.create_model_version(MODEL_NAME, source=source, run_id=run_id, tags=all_tags)
    except MlflowException as error:
        raise TrackingError(f"MLflow at {tracking_uri()} refused to register {keras_path}: {_message(error)}") from error
    return int(version.version)


def set_version_tags(version: int, tags: dict[str, Any]) -> None:
    """Set tags on a version (values become strings).

    Raises:
        NoSuchVersionError, TrackingError.
    """
    from mlflow.exceptions import MlflowException

    _model_version(version)
    client = _client()
    try:
        for key, value in tags.items():
            client.set_model_version_tag(MODEL_NAME, str(int(version)), key, str(value))
    except MlflowException as error:
        raise TrackingError(f"MLflow at {tracking_uri()} refused tags on version {version}: {_message(error)}") from error


def set_thresholds(version: int, thresholds: Thresholds, evidence: dict | None = None) -> None:
    """Store a version's calibrated thresholds (and how they were fitted) as its tags.

    Args:
        version: the registered version.
        thresholds: verify, cluster, assign.
        evidence: the calibration's data set and figures (JSON-ready, kept compact: it is
            one tag, :data:`CALIBRATION_TAG`, of at most :data:`MAX_TAG_VALUE` characters).

    Raises:
        NoSuchVersionError, TrackingError; ValueError: the evidence is too long for a tag.
    """
    tags: dict[str, str] = {}
    if evidence is not None:
        text = json.dumps(evidence, sort_keys=True, default=_json_default)
        if len(text) > MAX_TAG_VALUE:
            raise ValueError(f"calibration evidence is {len(text)} characters; a version tag holds {MAX_TAG_VALUE}")
        tags[CALIBRATION_TAG] = text
    tags[CALIBRATED_AT_TAG] = _now()
    tags.update(thresholds.to_tags())  # last: a reader sees the thresholds only once the rest is there
    set_version_tags(version, tags)


def set_alias(alias: str, version: int) -> None:
    """Point ``alias`` (e.g. ``champion``) at ``version``; it moves off any other version.

    Raises:
        TrackingError: no such version, or MLflow refused.
    """
    from mlflow.exceptions import MlflowException

    try:
        _client().set_registered_model_alias(MODEL_NAME, alias, str(int(version)))
    except MlflowException as error:
        raise TrackingError(f"cannot set alias {alias!r} to version {version} of {MODEL_NAME}: "
                            f"{_message(error)}") from error


def alias_version(alias: str) -> int | None:
    """The version behind ``alias``, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    if not registry_configured():
        return None
    try:
        return int(_client().get_model_version_by_alias(MODEL_NAME, alias).version)
    except MlflowException as error:
        if error.error_code in _MISSING:
            return None
        raise TrackingError(f"MLflow at {tracking_uri()}: cannot read alias {alias!r}: {_message(error)}") from error


def lookup(spec: str | int) -> int:
    """The version a user means: ``3``, ``v3``, or an alias (``champion``).

    Raises:
        RegistryNotConfiguredError, NoSuchVersionError (an alias set on no version), TrackingError.
    """
    text = str(spec).strip()
    found = re.fullmatch(r"[vV]?(\d+)", text)
    if found:
        return int(found.group(1))
    _require_registry()
    version = alias_version(text)
    if version is None:
        raise NoSuchVersionError(f"no version of {MODEL_NAME} has the alias {text!r} (a version is a number, "
                                 f"e.g. 3, or an alias: {', '.join(ALIASES)})")
    return version


def promote(version: int, reason: str | None = None, by: str | None = None) -> dict:
    """Make ``version`` the champion, recording who, why and when as its tags.

    Args:
        version: a registered, calibrated version.
        reason: why (kept in ``faces.promotion_reason``).
        by: who (default: the user running this).

    Returns:
        ``{"version", "previous", "at", "by", "reason", "thresholds"}``; ``previous`` is
        the champion before (None: there was none, the local model was in service).

    Raises:
        UncalibratedModelError: the version has no thresholds (nothing promoted).
        NoSuchVersionError, RegistryNotConfiguredError, TrackingError.
    """
    version = int(version)
    thresholds = Thresholds.from_tags(_model_version(version).tags)
    if thresholds is None:
        raise _uncalibrated(version, "promote it")
    previous = alias_version("champion")
    set_alias("champion", version)
    record = {"version": version, "previous": previous, "at": _now(), "by": by or _user(),
              "reason": reason or "", "thresholds": thresholds.as_dict()}
    set_version_tags(version, {PROMOTION_TAGS[key]: record[key] if record[key] is not None else "local"
                               for key in PROMOTION_TAGS})
    return record


def get_version(version: int) -> VersionInfo:
    """One version with its aliases, thresholds, figures and history.

    Raises:
        RegistryNotConfiguredError, NoSuchVersionError, TrackingError.
    """
    found = _model_version(version)
    return _info(found, _aliases())


def list_versions() -> list[VersionInfo]:
    """Every registered version, oldest first ([] when nothing was registered yet).

    Raises:
        RegistryNotConfiguredError, TrackingError.
    """
    from mlflow.exceptions import MlflowException

    _require_registry()
    try:
        found = _client().search_model_versions(f"name='{MODEL_NAME}'")
    except MlflowException as error:
        raise TrackingError(f"MLflow at {tracking_uri()}: cannot list versions of {MODEL_NAME}: "
                            f"{_message(error)}") from error
    aliases = _aliases() if found else {}
    return sorted((_info(item, aliases) for item in found), key=lambda info: info.version)


def _aliases() -> dict[int, list[str]]:
    """Aliases by version."""
    from mlflow.exceptions import MlflowException

    try:
        model = _client().get_registered_model(MODEL_NAME)
    except MlflowException as error:
        if error.error_code in _MISSING:
            return {}
        raise TrackingError(f"MLflow at {tracking_uri()}: cannot read {MODEL_NAME}: {_message(error)}") from error
    out: dict[int, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        out.setdefault(int(version), []).append(alias)
    return {version: sorted(names) for version, names in out.items()}


def _info(model_version, aliases: dict[int, list[str]]) -> VersionInfo:
    tags = dict(model_version.tags or {})
    version = int(model_version.version)
    held_out: dict[str, Any] = {}
    for key, value in sorted(tags.items()):
        if key.startswith(HELD_OUT_PREFIX):
            held_out[key[len(HELD_OUT_PREFIX):]] = _number(value)
        elif key == "held_out_accuracy":  # the training loop's figure on its held-out identities
            held_out["train_held_out_accuracy"] = _number(value)
    calibration = None
    if CALIBRATION_TAG in tags:
        try:
            calibration = json.loads(tags[CALIBRATION_TAG])
        except ValueError:
            calibration = {"raw": tags[CALIBRATION_TAG]}
    promotion = None
    if PROMOTION_TAGS["at"] in tags:
        promotion = {key: tags.get(tag) for key, tag in PROMOTION_TAGS.items()}
    created = model_version.creation_timestamp
    return VersionInfo(
        version=version, aliases=aliases.get(version, []), thresholds=Thresholds.from_tags(tags),
        created=datetime.fromtimestamp(created / 1000, UTC).isoformat(timespec="seconds") if created else "",
        run_id=model_version.run_id or None, source=model_version.source or "",
        description=model_version.description or "", tags=tags, held_out=held_out, calibration=calibration,
        promotion=promotion)


def _number(text: str) -> Any:
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _json_default(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def cache_dir() -> Path:
    """Where registry versions are downloaded to.

    Beside the database for an embedded SQLite store (``mlruns/downloads``), so a
    throw-away store takes its downloads with it; ``<models_dir>/registry/`` for a server.
    """
    db = sqlite_path(tracking_uri())
    return db.parent / "downloads" if db is not None else local_fallback_path().parent / "registry"


def download_version(version: int, source: str | None = None) -> Path:
    """The local ``.keras`` file of a registered version, downloaded once (temp folder, then rename).

    The cache is keyed by the tracking URI's store as well as the version, so two
    registries (a test's and the project's) never hand each other their files.

    Args:
        version: the version.
        source: its artifact URI when the caller already read it (saves a request).
    """
    key = hashlib.sha256(tracking_uri().encode()).hexdigest()[:10]
    target = cache_dir() / key / f"v{int(version)}"
    found = sorted(target.glob("*.keras")) if target.is_dir() else []
    if found:
        return found[0]
    from mlflow.exceptions import MlflowException

    if source is None:
        source = _model_version(version).source
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".v{int(version)}.", dir=target.parent))
        try:
            local = Path(_mlflow().artifacts.download_artifacts(artifact_uri=source, dst_path=str(staging)))
            files = sorted(local.rglob("*.keras")) if local.is_dir() else [local]
            if not files:
                raise TrackingError(f"version {version} of {MODEL_NAME} holds no .keras file ({source})")
            for file in files[1:]:
                file.unlink()
            flat = staging / "out"
            flat.mkdir()
            shutil.move(str(files[0]), flat / files[0].name)
            try:
                os.replace(flat, target)
            except OSError:
                if not any(target.glob("*.keras")):  # someone else finished first: theirs is as good
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except MlflowException as error:
        raise TrackingError(f"cannot download version {version} of {MODEL_NAME}: {_message(error)}") from error
    return sorted(target.glob("*.keras"))[0]


def resolve_version(version: int | None, *, require_thresholds: bool = True, settings=None) -> ModelRef:
    """A registered version (its file, downloaded, and its thresholds); None: the local model.

    Args:
        version: the version number, or None for the pretrained local model (thresholds
            from ``params.yaml``).
        require_thresholds: refuse a version without thresholds. Only code that fits
            thresholds itself (calibration, retraining) passes False.
        settings: settings for the local model (default: ``load_settings()``).

    Raises:
        UncalibratedModelError: the version has no thresholds (``faces models calibrate VERSION``).
        RegistryNotConfiguredError, NoSuchVersionError, TrackingError.
    """
    if version is None:
        return local_ref(settings)
    version = int(version)
    found = _model_version(version)
    thresholds = Thresholds.from_tags(found.tags or {})
    path = download_version(version, found.source)
    if thresholds is None:
        # A version registered before models carried thresholds may hold exactly the local
        # model's weights (retraining registered the pretrained baseline): params.yaml's
        # calibration is that of these very weights.
        local = local_ref(settings)
        if local.path.is_file() and _same_weights(path, local.path):
            thresholds = local.thresholds
    if thresholds is None and require_thresholds:
        raise _uncalibrated(version)
    return ModelRef(version, path, "registry", thresholds)


def _same_weights(a: Path, b: Path) -> bool:
    """Whether two ``.keras`` files hold the same model (the embedder's content digest)."""
    import zipfile

    from components.embed.embedder import model_digest

    try:
        return model_digest(a) == model_digest(b)
    except (OSError, zipfile.BadZipFile):  # not a .keras archive: not the local model either
        return False


def resolve(alias: str = "champion", *, require_thresholds: bool = True, settings=None) -> ModelRef:
    """A local ``.keras`` file and the thresholds of the model behind ``alias``.

    Args:
        alias: ``champion`` (the model in service), ``challenger`` or any alias set.
        require_thresholds: see :func:`resolve_version`.
        settings: settings for the local fallback (default: ``load_settings()``).

    Returns:
        The registered version, downloaded (``source="registry"``), with the thresholds
        of its tags; or the local pretrained model with ``version=None``,
        ``source="local"`` and the thresholds of ``params.yaml`` when no registry is
        configured or nothing is registered under ``alias``.

    Raises:
        UncalibratedModelError: the version behind the alias has no thresholds.
        TrackingError: the registry is configured but cannot be read (a server down):
            falling back silently would serve a model nobody chose.
    """
    version = alias_version(alias)
    if version is None:
        return local_ref(settings)
    return resolve_version(version, require_thresholds=require_thresholds, settings=settings)
