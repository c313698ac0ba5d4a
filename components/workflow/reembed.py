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
    name = f"{int(time.time())}-{target.version}" if report["changed"] else f"unchanged-{target.version}"
    return ws.write_json(ws.join(workspace.root, "reembed", f"{name}.json"), report)


def store_changed(report_uri: str) -> bool:
    """Whether the re-embed switched the store to a new model (serving must follow)."""
    return bool(ws.read_json(report_uri).get("changed"))
