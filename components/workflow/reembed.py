"""``face_reembed``: move the identity store to the registry's champion, then tell serving.

A promotion (``face_retrain`` when its challenger wins, ``faces models promote``, or an
alias moved in the MLflow UI) changes the champion, but the store's embeddings still come
from the old model. :func:`reembed_store` re-embeds every stored crop with the champion
(:func:`components.engine.reembed.reembed`: batches, resumable, switched in one
transaction) and only then makes it the store's active model; ingest, re-clustering and
serving follow the store. Nothing to do when the store already uses the champion.
"""

from __future__ import annotations

import time

from components.workflow import workspace as ws
from components.workflow.ingest import _settings, _store, _workspace

EXPERIMENT = "face_reembed"


def reembed_store(*, alias: str = "champion", batch_size: int = 256, settings=None) -> str:
    """Re-embed the store with the model behind ``alias`` (no-op when it already uses it).

    Returns:
        URI of ``reembed/<model version>.json``: what changed, faces per second, and the
        identities that no longer cohere under the new model.
    """
    from components.engine import champion_model
    from components.engine.reembed import reembed

    settings = settings or _settings()
    workspace = _workspace(settings)
    store = _store(workspace.store_url)
    target = champion_model(settings, alias)
    started = time.perf_counter()
    report = reembed(store, target, settings, batch_size=batch_size, progress=False)
    report["wall_seconds"] = round(time.perf_counter() - started, 3)
    if report["changed"]:
        # The switch, in the MLflow UI next to the promotion that caused it: which model the
        # store left and took, how long it took, and the identities a person should review.
        from components.workflow.tracking import log_once

        before = (report.get("before") or {}).get("model_version")
        key = f"{before}->{target.version}@{report['model']['since']}"
        switch = report.get("switch") or {}
        report["mlflow_run"] = log_once(
            EXPERIMENT, key, run_name=f"re-embed to {target.registry_version or 'local'}",
            params={"from_model": before, "to_model": target.version, "to_registry_version": target.registry_version,
                    "batch_size": batch_size, **{f"threshold.{k}": v for k, v in target.thresholds.as_dict().items()}},
            metrics={"faces": report["faces"], "seconds": report.get("seconds", 0.0),
                     "faces_per_second": report.get("faces_per_second") or 0.0,
                     "identities": switch.get("identities", 0), "incoherent_identities": len(switch.get("incoherent", []))},
            json_artifacts={"reembed.json": report},
            tags={"faces.model_version": target.version, "faces.registry_version": str(target.registry_version)})
    name = f"{int(time.time())}-{target.version}" if report["changed"] else f"unchanged-{target.version}"
    return ws.write_json(ws.join(workspace.root, "reembed", f"{name}.json"), report)


def store_changed(report_uri: str) -> bool:
    """Whether the re-embed switched the store to a new model (serving must follow)."""
    return bool(ws.read_json(report_uri).get("changed"))
