"""The main job: photos in, identities out.

``run`` walks a folder (or the LFW demo subset), and for every photo not seen before:
load it safely, detect and align faces, embed the usable ones, store everything in
one transaction per photo. Then, if anything new arrived, the identity life cycle
(components/identities/lifecycle.py) assigns each new usable face to the identity
with the most similar medoid or puts it in the unknown pool, and re-clusters the
pool with Chinese Whispers when it is due (always on the first run), reconciling
the new clusters with the identities that already exist. Last it writes a JSON
summary and an HTML gallery.

Every step is keyed by content (sha256 of the photo), so a second run over the
same folder changes nothing, and a run killed midway resumes where it stopped.
"""

from __future__ import annotations

import os
import platform
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from components import detect as detect_step
from components import engine as engine_step
from components import report as report_step
from components.engine import FaceEngine, champion_model, model_for_store
from components.engine.reembed import reembed
from components.identities import IdentityStore, NewFace, NewPhoto
from components.identities.store import identity_labels
from components.identities.lifecycle import Clock, policy_for_store, update_identities, utc_now
from components.images import BadImageError, file_sha256, iter_image_files, load_image, write_jpegs
from components.storage import LocalStorage
from components.report.metrics import clustering_summary
from components.settings import Settings

__version__ = "1.0.0"


@dataclass
class Photo:
    """A file to ingest, with the ground-truth name when its folder gives one."""

    path: Path
    label: str | None = None


@dataclass
class IngestLog:
    """What one run did, photo by photo (for the report)."""

    seen: int = 0
    new: int = 0
    already_stored: int = 0
    duplicates: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    without_faces: list[str] = field(default_factory=list)
    faces: int = 0
    usable_faces: int = 0
    face_failures: Counter = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=lambda: Counter())


def component_versions() -> dict[str, str]:
    """Version of every step, recorded in each run."""
    return {**engine_step.step_versions(), "pipeline": __version__}


def folder_photos(root: Path, folder_labels: bool) -> tuple[list[Photo], list[BadImageError]]:
    """Photos under a folder, in sorted order, plus folders that could not be read.

    Args:
        root: the folder to walk (recursively).
        folder_labels: take each photo's parent folder name as the true identity of
            its main face (LFW-style folders; used only to score clustering). Photos
            directly in ``root`` stay unlabelled.
    """
    photos, unreadable = [], []
    for path, error in iter_image_files(root):
        if error is not None:
            unreadable.append(error)
        else:
            labelled = folder_labels and path.parent != root  # loose photos at the top level name no one
            photos.append(Photo(path, path.parent.name if labelled else None))
    return photos, unreadable


class Ingestor:
    """Loads, detects, embeds and stores photos; skips what the store already has."""

    def __init__(self, settings: Settings, store: IdentityStore, out_dir: Path, engine: FaceEngine):
        self.settings = settings
        self.store = store
        self.out_dir = out_dir
        self.engine = engine
        self.crops = LocalStorage(out_dir)  # crop paths in the store are keys relative to out_dir

    def ingest(self, photos: Iterable[Photo], log: IngestLog, progress: bool = True) -> None:
        photos = list(photos)
        rejected_before = self.store.rejected_paths()
        seen_in_run: dict[str, str] = {}
        pending: list[tuple[Photo, str]] = []
        bar = tqdm(total=len(photos), desc="photos", unit="photo", disable=None if progress else True)
        for photo in photos:
            log.seen += 1
            try:
                sha = file_sha256(photo.path)
            except BadImageError as error:
                self.reject(log, photo.path, error, None)
                bar.update()
                continue
            if sha in seen_in_run:
                log.duplicates.append({"path": str(photo.path), "same_as": seen_in_run[sha]})
                bar.update()
                continue
            seen_in_run[sha] = str(photo.path)
            if rejected_before.get(str(photo.path)) == sha or self.store.find_image(sha) is not None:
                log.already_stored += 1
                bar.update()
                continue
            pending.append((photo, sha))
            # One detector batch at a time: bounded memory, and a killed run loses at most one batch.
            if len(pending) == self.settings.detect.batch_size:
                self._process(pending, log, bar)
                pending = []
        if pending:
            self._process(pending, log, bar)
        bar.close()

    def reject(self, log: IngestLog, path: Path, error: BadImageError, sha: str | None) -> None:
        """Record a file that cannot be used: in this run's log and in the store."""
        log.rejected.append({"path": str(path), "code": error.code, "reason": error.reason})
        self.store.add_rejected(str(path), error.code, error.reason, sha)

    def _process(self, chunk: list[tuple[Photo, str]], log: IngestLog, bar: tqdm) -> None:
        params = self.settings.detect
        loaded = []
        started = time.perf_counter()
        for photo, sha in chunk:
            try:
                loaded.append((photo, sha, load_image(photo.path, max_pixels=params.max_pixels)))
            except BadImageError as error:
                self.reject(log, photo.path, error, sha)
                bar.update()
        log.seconds["load"] += time.perf_counter() - started
        if not loaded:
            return

        started = time.perf_counter()
        detections = self.engine.detect([image for _, _, image in loaded])
        log.seconds["detect"] += time.perf_counter() - started

        started = time.perf_counter()
        self.engine.embed_faces(detections)
        log.seconds["embed"] += time.perf_counter() - started

        started = time.perf_counter()
        photos, crops = [], []
        for (photo, sha, image), found in zip(loaded, detections):
            records = []
            for index, face in enumerate(found.faces):
                crop_key = f"crops/{sha[:2]}/{sha}_{index}.jpg"
                crops.append((crop_key, face.crop))
                records.append(
                    NewFace(
                        face_index=index,
                        box=face.box,
                        landmarks=face.landmarks,
                        confidence=face.confidence,
                        blur=face.blur,
                        failures=face.failures,
                        embedding=face.embedding,
                        model_version=face.model_version,
                        crop_path=crop_key,
                        label=photo.label if index == found.main else None,
                        rotation=face.rotation,
                    )
                )
            photos.append(NewPhoto(sha, str(photo.path), (image.shape[1], image.shape[0]), records,
                                   detect_step.__version__, photo.label))
        # Crops first (concurrently, each whole), then the batch's rows in one transaction: a
        # run killed in between leaves crops that the re-run writes again, and no row.
        write_jpegs(self.crops, crops)
        written = set(self.store.add_photos(photos)["stored"])
        for (photo, sha, _), found in zip(loaded, detections):
            if sha not in written:  # stored by a concurrent run meanwhile
                log.already_stored += 1
                continue
            log.new += 1
            log.faces += len(found.faces)
            log.usable_faces += sum(face.passed for face in found.faces)
            for face in found.faces:
                log.face_failures.update(face.failures)
            if not found.faces:
                log.without_faces.append(str(photo.path))
        bar.update(len(loaded))
        log.seconds["store"] += time.perf_counter() - started


def cluster_store(store: IdentityStore, settings: Settings, *, clock: Clock = utc_now, full_recluster: bool = False) -> dict:
    """Update identities with the life cycle, then score them over all usable faces.

    New usable faces are assigned to the identity with the most similar medoid or go
    to the unknown pool; the pool is re-clustered when due (always on the first run);
    ``full_recluster`` clusters every usable face again instead
    (:func:`components.identities.lifecycle.update_identities`).

    The metrics describe the store as it now is, not only what this run changed:
    every usable face under its current identity, pool faces as singletons.

    Args:
        store: the identity store.
        settings: all parameters (``identities:`` and ``cluster:`` sections).
        clock: the time now (tests pin it).
        full_recluster: re-cluster everything rather than the pool.

    Returns:
        The clustering section of the report, with what the life cycle did under ``lifecycle``.
    """
    started = time.perf_counter()
    policy = policy_for_store(store, settings)
    lifecycle = update_identities(store, policy=policy, clock=clock, full=full_recluster)
    seconds = time.perf_counter() - started
    faces = store.usable_faces()
    if not len(faces.face_ids):
        return {"faces": 0, "lifecycle": lifecycle, "seconds": round(seconds, 3)}
    labels = identity_labels(faces.face_ids, store.identity_of_faces())
    summary = clustering_summary(labels, embeddings=faces.embeddings)
    labelled = np.array([label is not None for label in faces.labels])
    if labelled.sum() >= 2:
        truth = np.array([label for label in faces.labels if label is not None])
        scored = clustering_summary(labels[labelled], true=truth)
        summary["against_folder_labels"] = {"faces": int(labelled.sum()), "identities": len(set(truth)), **scored}
    summary.update(
        {"threshold": policy.cluster_threshold, "assign_threshold": policy.assign_threshold,
         "full_recluster": full_recluster, "lifecycle": lifecycle, "seconds": round(seconds, 3)}
    )
    return summary


def run(photos: list[Photo], out_dir: Path, settings: Settings, *, store_url: str | None = None, input_name: str = "",
        unreadable: Iterable[BadImageError] = (), progress: bool = True, full_recluster: bool = False,
        clock: Clock = utc_now) -> dict:
    """Ingest photos, cluster, and write ``report.json`` and ``report.html`` under out_dir.

    Args:
        photos: what to ingest, in order.
        out_dir: where the store (by default), crops and report go.
        settings: all parameters.
        store_url: SQLAlchemy URL of the identity store; default ``sqlite:///<out_dir>/faces.db``.
        input_name: shown in the report.
        unreadable: folders that could not be listed, reported as rejected.
        progress: show progress bars.
        full_recluster: cluster every usable face again (identity ids and names survive
            by majority overlap) instead of assigning new faces and re-clustering the pool.
        clock: the time now, for the re-clustering window (tests pin it).

    Returns:
        The summary written to ``report.json``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    store = IdentityStore(store_url or f"sqlite:///{out_dir / 'faces.db'}")
    # The registry's champion when a tracking URI is configured, else the local model. A store
    # on an older model is first re-embedded with it (the embedded default has no DAG for that).
    champion = champion_model(settings)
    active = store.model("active")
    reembedded = None
    if active is not None and active.version != champion.version:
        reembedded = reembed(store, champion, settings, crops_root=str(out_dir), progress=progress, clock=clock)
    model = model_for_store(store, settings)
    ingestor = Ingestor(settings, store, out_dir, FaceEngine(settings.detect, model))
    log = IngestLog()
    for error in unreadable:
        ingestor.reject(log, error.path, error, None)
    ingestor.ingest(photos, log, progress=progress)

    # The life cycle runs when faces arrived (in this run, or in a run killed before it got
    # this far) or on request; otherwise identities stay exactly as they were.
    if log.new or full_recluster or store.has_unseen_faces():
        clustering = cluster_store(store, settings, clock=clock, full_recluster=full_recluster)
        clustering["model"] = model.describe()
        changed = True
    else:
        clustering = None
        changed = False
    summary = report_step.build_summary(
        store=store, log=log, clustering=clustering, changed=changed, versions=component_versions(),
        model_version=model.version, input_name=input_name, settings=settings,
        seconds=time.perf_counter() - started, machine=f"{platform.machine()}, {os.cpu_count()} cpu",
    )
    summary["model"] = {**model.describe(), "reembedded": reembedded}
    report_step.write_report(summary, store, out_dir)
    return summary
