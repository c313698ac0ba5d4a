"""MLflow records of workflow runs, once per key (batch id, re-clustering time, ...).

A task that is cleared and run again must not leave a second MLflow run for the same
batch: each run carries the tag ``faces.key``; a finished run with the same key is
reused, and a run left behind by a killed attempt is marked failed and replaced.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

KEY_TAG = "faces.key"


def _flat(prefix: str, value, out: dict[str, float]) -> None:
    if isinstance(value, bool):
        out[prefix] = float(value)
    elif isinstance(value, (int, float)):
        if value == value and abs(value) != float("inf"):  # MLflow refuses NaN / inf
            out[prefix] = float(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), item, out)


def flat_metrics(nested: dict) -> dict[str, float]:
    """Numeric leaves of a nested dict as MLflow metrics (``a.b.c``); other values dropped."""
    out: dict[str, float] = {}
    _flat("", nested, out)
    return out


def finished_run(experiment: str, key: str):
    """The finished MLflow run of this experiment with ``faces.key = key``, or None."""
    import mlflow

    from components import track

    mlflow.set_tracking_uri(track.tracking_uri())
    if mlflow.get_experiment_by_name(experiment) is None:
        return None
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string=f"tags.`{KEY_TAG}` = '{key}'",
                              output_format="list")
    client = mlflow.MlflowClient()
    finished = None
    for run in runs:
        if run.info.status == "FINISHED" and finished is None:
            finished = run
        elif run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="FAILED")  # left by a killed attempt
    return finished


def log_once(experiment: str, key: str, *, run_name: str, params: dict | None = None, metrics: dict | None = None,
             json_artifacts: dict[str, object] | None = None, files: dict[str, Path] | None = None,
             figures: dict[str, object] | None = None, tags: dict[str, str] | None = None) -> str:
    """Log one workflow run to MLflow unless a finished run with this key exists.

    Args:
        experiment: one experiment per workflow (``face_ingest``, ``face_recluster``, ...).
        key: what makes the run unique (batch id, re-clustering time).
        run_name: shown in the MLflow UI.
        params: run parameters.
        metrics: nested dict; numeric leaves become metrics named ``a.b.c``.
        json_artifacts: artifact file name -> JSON-able object.
        files: artifact sub-folder -> local file or folder (e.g. a Data Docs site).
        figures: artifact file name -> matplotlib figure.
        tags: extra tags.

    Returns:
        ``runs:/<run id>``, the URI of the (new or existing) run.
    """
    import mlflow

    from components import track

    existing = finished_run(experiment, key)
    if existing is not None:
        return f"runs:/{existing.info.run_id}"
    with track.start_run(experiment, run_name, params=params, tags={KEY_TAG: key, **(tags or {})}) as run:
        if metrics:
            mlflow.log_metrics(flat_metrics(metrics))
        for name, obj in (json_artifacts or {}).items():
            track.log_json(name, obj)
        for folder, path in (files or {}).items():
            if path is not None and Path(path).is_dir():
                mlflow.log_artifacts(str(path), artifact_path=folder)
            elif path is not None and Path(path).exists():
                mlflow.log_artifact(str(path), artifact_path=folder)
        for name, figure in (figures or {}).items():
            track.log_figure(figure, name)
        return f"runs:/{run.info.run_id}"


def html_to_file(html: str | None, name: str) -> Path | None:
    """Write an HTML report to a temporary file for :func:`log_once` (None stays None)."""
    if not html:
        return None
    path = Path(tempfile.mkdtemp(prefix="faces-docs-")) / name
    path.write_text(html)
    return path
