"""The model registry: one registered model, versions, and the ``champion`` alias.

Every trained or fine-tuned embedder is registered as a new version of
:data:`MODEL_NAME`; ``challenger`` marks the latest candidate and ``champion`` the
one in service. :func:`resolve` hands any consumer (the pipeline, the BentoML
service, retraining) a local ``.keras`` file for an alias, downloading it once into
``models/registry/``. With no registry configured, or no version behind the alias, it
falls back to the pretrained engine model ``models/face_recognition_net.keras``, so a
fresh checkout works before anything was ever trained.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.settings import PROJECT_ROOT
from components.track import TrackingError, _mlflow, sqlite_path, tracking_uri

MODEL_NAME = "face-embedder"
MODEL_ARTIFACT_DIR = "model"
ALIASES = ("champion", "challenger")

__all__ = ["MODEL_NAME", "ModelRef", "TrackingError", "register_embedder", "resolve", "set_alias"]


@dataclass(frozen=True)
class ModelRef:
    """A model ready to load.

    Attributes:
        version: registry version, or None for the local pretrained fallback.
        path: local ``.keras`` file.
        source: ``"registry"`` (downloaded from MLflow) or ``"local"`` (the fallback).
    """

    version: int | None
    path: Path
    source: str


def local_fallback_path() -> Path:
    """The pretrained engine model that :func:`resolve` falls back to."""
    from components.settings import load_settings

    return load_settings().model_path


def registry_configured() -> bool:
    """Whether there is a registry to ask: a server URI, or an embedded SQLite store that exists.

    A fresh checkout has no store, and must not grow an empty ``mlruns/`` just because
    something asked for the champion.
    """
    db = sqlite_path(tracking_uri())
    return db is None or db.is_file()


def _client():
    return _mlflow().MlflowClient()


def register_embedder(keras_path: str | Path, run_id: str, tags: dict | None = None) -> int:
    """Log a ``.keras`` model to a run and register it as a new version of :data:`MODEL_NAME`.

    Args:
        keras_path: the trained model file.
        run_id: the MLflow run that produced it (the artifact goes there, under ``model/<sha256[:12]>/``).
        tags: version tags (e.g. metrics, the base version it was fine-tuned from).

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
        version = client.create_model_version(
            MODEL_NAME, source=source, run_id=run_id,
            tags={"file": keras_path.name, **{k: str(v) for k, v in (tags or {}).items()}},
        )
    except MlflowException as error:
        raise TrackingError(f"MLflow at {tracking_uri()} refused to register {keras_path}: {error.message}") from error
    return int(version.version)


def set_alias(alias: str, version: int) -> None:
    """Point ``alias`` (e.g. ``champion``) at ``version``; it moves off any other version.

    Raises:
        TrackingError: no such version, or MLflow refused.
    """
    from mlflow.exceptions import MlflowException

    try:
        _client().set_registered_model_alias(MODEL_NAME, alias, str(int(version)))
    except MlflowException as error:
        raise TrackingError(f"cannot set alias {alias!r} to version {version} of {MODEL_NAME}: {error.message}") from error


def alias_version(alias: str) -> int | None:
    """The version behind ``alias``, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    if not registry_configured():
        return None
    try:
        return int(_client().get_model_version_by_alias(MODEL_NAME, alias).version)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise TrackingError(f"MLflow at {tracking_uri()}: cannot read alias {alias!r}: {error.message}") from error


def cache_dir() -> Path:
    """Where registry versions are downloaded to.

    Beside the database for an embedded SQLite store (``mlruns/downloads``), so a
    throw-away store takes its downloads with it; ``<models_dir>/registry/`` for a server.
    """
    db = sqlite_path(tracking_uri())
    return db.parent / "downloads" if db is not None else local_fallback_path().parent / "registry"


def download_version(version: int) -> Path:
    """The local ``.keras`` file of a registered version, downloaded once (temp folder, then rename).

    The cache is keyed by the tracking URI's store as well as the version, so two
    registries (a test's and the project's) never hand each other their files.
    """
    key = hashlib.sha256(tracking_uri().encode()).hexdigest()[:10]
    target = cache_dir() / key / f"v{int(version)}"
    found = sorted(target.glob("*.keras")) if target.is_dir() else []
    if found:
        return found[0]
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        model_version = client.get_model_version(MODEL_NAME, str(int(version)))
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".v{int(version)}.", dir=target.parent))
        try:
            local = Path(_mlflow().artifacts.download_artifacts(artifact_uri=model_version.source, dst_path=str(staging)))
            files = sorted(local.rglob("*.keras")) if local.is_dir() else [local]
            if not files:
                raise TrackingError(f"version {version} of {MODEL_NAME} holds no .keras file ({model_version.source})")
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
        raise TrackingError(f"cannot download version {version} of {MODEL_NAME}: {error.message}") from error
    return sorted(target.glob("*.keras"))[0]


def resolve(alias: str = "champion") -> ModelRef:
    """A local ``.keras`` file for the model behind ``alias``.

    Args:
        alias: ``champion`` (the model in service), ``challenger`` or any alias set.

    Returns:
        The registered version, downloaded (``source="registry"``), or the local
        pretrained model with ``version=None`` and ``source="local"`` when no registry is
        configured or nothing is registered under ``alias``.

    Raises:
        TrackingError: the registry is configured but cannot be read (a server down):
            falling back silently would serve a model nobody chose.
    """
    version = alias_version(alias)
    if version is None:
        return ModelRef(None, local_fallback_path(), "local")
    return ModelRef(version, download_version(version), "registry")
