"""``face_recluster``: re-cluster the unknown pool on a schedule and log how identities look.

:func:`recluster` runs the identity life cycle's pool step
(:func:`components.identities.lifecycle.recluster_pool`: Chinese Whispers over the
pool, clusters matched to identities by medoid or made new identities, medoids
recomputed, cannot-link kept) at the DAG run's logical time, so a run cleared and
started again finds the pool already re-clustered at that time and changes nothing.
Then it scores the store as it now is (silhouette, sizes, and pairwise / BCubed F when
folder labels exist), draws a t-SNE map of the faces coloured by identity, writes the
report under ``<work area>/recluster/<time>.json`` and logs both to MLflow once.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np

from components.workflow import workspace as ws
from components.workflow.ingest import _settings, _store, _workspace, parse_at

EXPERIMENT = "face_recluster"


def store_labels(face_ids: np.ndarray, identity_of: dict[int, int]) -> np.ndarray:
    """Identity id per face; pool faces become singletons (negative labels)."""
    from components.identities.store import identity_labels

    return identity_labels(face_ids, identity_of)


def tsne_figure(embeddings: np.ndarray, labels: np.ndarray, *, max_faces: int, seed: int, title: str):
    """A 2-D t-SNE map (cosine) of a seeded sample of faces; identities coloured, the pool grey.

    Returns:
        A matplotlib figure, or None with fewer than 5 faces (t-SNE needs a few).
    """
    if len(embeddings) < 5:
        return None
    import matplotlib

    matplotlib.use("Agg")  # workers have no display
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    rows = np.arange(len(embeddings))
    if len(rows) > max_faces:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_faces, replace=False))
    x, y = embeddings[rows], labels[rows]
    points = TSNE(n_components=2, metric="cosine", init="random", random_state=seed,
                  perplexity=float(min(30, max(2, (len(rows) - 1) // 3)))).fit_transform(x)
    figure, axis = plt.subplots(figsize=(7, 7))
    pooled = y < 0
    axis.scatter(points[pooled, 0], points[pooled, 1], s=6, c="lightgrey", label="unknown pool")
    _, colour = np.unique(y[~pooled], return_inverse=True)
    axis.scatter(points[~pooled, 0], points[~pooled, 1], s=8, c=colour, cmap="tab20")
    axis.set_title(title)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.legend(loc="lower right")
    figure.tight_layout()
    return figure


def time_key(moment: datetime) -> str:
    """A file-name-safe key for a re-clustering time: ``20260101T000000Z``."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def recluster(*, at: str | datetime | None = None, force: bool = False, track: bool = True, settings=None) -> str:
    """Re-cluster the unknown pool when it is due, score the store, log to MLflow.

    Args:
        at: the time of this re-clustering (the DAG run's data-interval end); it is
            compared with the last re-clustering against window T
            (``identities.recluster_every_s``) and keys the outputs. Default the wall clock.
        force: re-cluster the pool even when it is not due.
        track: log to MLflow.
        settings: parameters.

    Returns:
        URI of the report JSON (``lifecycle``: what the pool step did; ``clustering``:
        the store's metrics; ``mlflow_run``).
    """
    from components.identities.lifecycle import policy_for_store, recluster_pool, utc_now
    from components.identities.store import last_recluster_at
    from components.report.metrics import clustering_summary

    settings = settings or _settings()
    workspace = _workspace(settings)
    store = _store(workspace.store_url)
    now = parse_at(at) or utc_now()
    key = time_key(now)
    started = time.perf_counter()
    policy = policy_for_store(store, settings)
    with store.session() as session:
        last = last_recluster_at(session)
    if last is not None and last == now:
        # This run already re-clustered at this time (a cleared task run again): even
        # `force` must not cluster twice for one scheduled moment.
        lifecycle = {"due": False, "already_done_at": now.isoformat()}
    else:
        lifecycle = recluster_pool(store, policy, now=now, force=force)
    cluster_seconds = time.perf_counter() - started

    faces = store.usable_faces()
    report = {"at": now.isoformat(), "lifecycle": lifecycle, "store": store.counts(),
              "seconds": {"recluster": round(cluster_seconds, 4)}, "clustering": None}
    figure = None
    if len(faces.face_ids):
        labels = store_labels(faces.face_ids, store.identity_of_faces())
        summary = clustering_summary(labels, embeddings=faces.embeddings)
        labelled = np.array([label is not None for label in faces.labels])
        if labelled.sum() >= 2:
            truth = np.array([label for label in faces.labels if label is not None])
            summary["against_folder_labels"] = {"faces": int(labelled.sum()),
                                                **clustering_summary(labels[labelled], true=truth)}
        summary["identities"] = int(len({int(label) for label in labels if label >= 0}))
        summary["unknown_pool"] = int((labels < 0).sum())
        report["clustering"] = summary
        started = time.perf_counter()
        figure = tsne_figure(faces.embeddings, labels, max_faces=settings.workflow.tsne_max_faces,
                             seed=settings.base.seed, title=f"faces by identity, {key}")
        report["seconds"]["tsne"] = round(time.perf_counter() - started, 4)
    if track:
        from components.workflow.tracking import log_once

        report["mlflow_run"] = log_once(
            EXPERIMENT, key, run_name=f"recluster {key}",
            params={"at": now.isoformat(), "force": force, "cluster.threshold": policy.cluster_threshold,
                    "identities.assign_threshold": policy.assign_threshold,
                    "identities.recluster_every_s": settings.identities.recluster_every_s},
            metrics={"lifecycle": lifecycle, "clustering": report["clustering"] or {}, "store": report["store"]},
            json_artifacts={"recluster.json": report}, figures={"tsne.png": figure} if figure is not None else None,
        )
    if figure is not None:
        import matplotlib.pyplot as plt

        plt.close(figure)
    return ws.write_json(ws.join(workspace.root, "recluster", f"{key}.json"), report)


def identities_changed(report_uri: str) -> bool:
    """Whether a re-clustering created identities or grew them (worth a retrain)."""
    lifecycle = ws.read_json(report_uri)["lifecycle"]
    return bool(lifecycle.get("new_identities") or lifecycle.get("joined_faces") or lifecycle.get("assigned"))
