"""Experiment tracking: every training and retraining run logged to MLflow.

One place decides where runs go (:func:`tracking_uri`): ``$MLFLOW_TRACKING_URI`` when
set (the MLflow server of ``make up``, or any URI MLflow accepts), otherwise an
embedded SQLite store at ``<repo>/mlruns/mlflow.db`` with artifacts in
``<repo>/mlruns/artifacts``, so a laptop needs no server. A SQLite URI elsewhere
(tests use a temporary one) keeps its artifacts in an ``artifacts`` folder beside
the database file.

:func:`start_run` opens a run that already carries what makes it reproducible:
every component's ``__version__`` and the data version (the md5 in ``data.dvc``).
The model registry lives in :mod:`components.track.registry` (a model version = weights +
its calibrated thresholds); ``faces models`` (:mod:`components.train.model_commands`) lists,
calibrates (:mod:`components.train.calibration`) and promotes versions.

Importing this package does not import MLflow; the first run does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from components.settings import PROJECT_ROOT

__version__ = "1.0.0"

__all__ = ["TrackingError", "component_versions", "data_version", "log_figure", "log_json", "start_run", "tracking_uri"]

_VERSION_LINE = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)
_DVC_MD5 = re.compile(r"^\s*-?\s*md5:\s*(\S+)", re.MULTILINE)


class TrackingError(RuntimeError):
    """MLflow could not be reached or refused a request; the message says which and why."""


def default_store_dir() -> Path:
    """``<repo>/mlruns``: the embedded store used when no tracking URI is set."""
    return PROJECT_ROOT / "mlruns"


def tracking_uri() -> str:
    """Where runs and registered models go.

    Returns:
        ``$MLFLOW_TRACKING_URI`` when set and not empty, else
        ``sqlite:///<repo>/mlruns/mlflow.db``.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{default_store_dir() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for any other URI."""
    if not uri.startswith("sqlite:"):
        return None
    parsed = urlparse(uri)
    # sqlite:////abs/path -> path "//abs/path"; sqlite:///rel -> "/rel" (relative to the cwd).
    raw = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else parsed.path
    return Path(raw).resolve() if raw else None


def local_artifact_root(uri: str | None = None) -> Path | None:
    """Where artifacts go for an embedded SQLite store: ``artifacts/`` beside the database.

    Returns:
        The folder, or None when the URI is a server (the server decides).
    """
    db = sqlite_path(uri or tracking_uri())
    return None if db is None else db.parent / "artifacts"


def component_versions() -> dict[str, str]:
    """``__version__`` of every sub-package of ``components`` (read from source, nothing imported).

    Reading the files rather than importing keeps this cheap: importing the serving or
    training packages would pull in BentoML or TensorFlow just to read a string.
    """
    root = PROJECT_ROOT / "components"
    versions: dict[str, str] = {}
    for init in sorted(root.glob("*/__init__.py")):
        found = _VERSION_LINE.search(init.read_text(encoding="utf-8", errors="replace"))
        if found:
            versions[init.parent.name] = found.group(1)
    top = _VERSION_LINE.search((root / "__init__.py").read_text(encoding="utf-8"))
    if top:
        versions["components"] = top.group(1)
    return versions


def data_version(dvc_file: Path | None = None) -> str | None:
    """The md5 DVC records for ``data/`` (``data.dvc``), or None when there is no such file."""
    path = dvc_file or PROJECT_ROOT / "data.dvc"
    if not path.is_file():
        return None
    found = _DVC_MD5.search(path.read_text())
    return found.group(1) if found else None


def redact_url(url: str) -> str:
    """A URL with its password replaced by ``***`` (database and S3 URLs go into logs and MLflow)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(str(url))
    if not parts.password:
        return str(url)
    user = f"{parts.username}:***@" if parts.username else "***@"
    host = parts.hostname or ""
    netloc = user + (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts as dotted keys with string values (what MLflow params are)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            text = str(value)
            flat[name] = text if len(text) <= 6000 else text[:5997] + "..."  # MLflow's limit on a param value
    return flat


def _mlflow():
    """MLflow pointed at :func:`tracking_uri` (imported late: it takes a second or two)."""
    import mlflow

    uri = tracking_uri()
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow


def experiment_id(name: str) -> str:
    """The id of the experiment called ``name``, created on first use.

    With an embedded SQLite store the experiment's artifacts go under
    :func:`local_artifact_root` (MLflow would otherwise pick a folder relative to the
    current directory).
    """
    mlflow = _mlflow()
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        root = local_artifact_root()
        location = None if root is None else (root / _safe(name)).as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:
            # Another process created it between our look-up and create: use theirs.
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id
    except MlflowException as error:
        raise TrackingError(f"MLflow at {tracking_uri()} refused experiment {name!r}: {error.message}") from error


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "experiment"


@contextmanager
def start_run(experiment: str, run_name: str, params: dict | None = None, tags: dict | None = None,
              *, nested: bool = False, run_id: str | None = None) -> Iterator[Any]:
    """Open an MLflow run that records component versions and the data version.

    Args:
        experiment: experiment name (created on first use).
        run_name: the run's display name.
        params: logged as MLflow params; nested dicts become dotted keys.
        tags: extra run tags.
        nested: open the run inside the active one (a child run).
        run_id: reopen this existing run instead (a training run resumed after a kill);
            its params are already logged and are not logged again.

    Yields:
        The active ``mlflow.ActiveRun``; ``run.info.run_id`` identifies it. The run ends
        FINISHED when the block ends, FAILED when it raises.

    Raises:
        TrackingError: the tracking store cannot be reached or refuses the run.
    """
    mlflow = _mlflow()
    from mlflow.exceptions import MlflowException

    exp_id = experiment_id(experiment)
    versions = component_versions()
    data = data_version()
    all_tags = {"faces.data_version": data or "unknown", **{f"faces.version.{k}": v for k, v in versions.items()}}
    all_tags.update({k: str(v) for k, v in (tags or {}).items()})
    try:
        if run_id is not None:
            run = mlflow.start_run(run_id=run_id, nested=nested)
        else:
            run = mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=all_tags, nested=nested)
    except MlflowException as error:
        raise TrackingError(f"MLflow at {tracking_uri()} refused a run: {error.message}") from error
    with run:
        if run_id is not None:
            yield run
            return
        logged = {f"version.{k}": v for k, v in versions.items()}
        logged["data.version"] = data or "unknown"
        logged.update(flatten(params or {}))
        mlflow.log_params(logged)
        yield run


def log_json(name: str, obj: Any) -> None:
    """Store ``obj`` as a JSON artifact of the active run.

    Args:
        name: artifact path inside the run, e.g. ``"comparison.json"`` or ``"eval/metrics.json"``.
        obj: anything ``json.dumps`` accepts.
    """
    if not name.endswith(".json"):
        raise ValueError(f"log_json: the artifact name must end in .json, got {name!r}")
    _mlflow().log_dict(obj, name)


def log_figure(fig: Any, name: str) -> None:
    """Store a matplotlib figure (``.png``, ``.svg``, ...) as an artifact of the active run."""
    _mlflow().log_figure(fig, name)
