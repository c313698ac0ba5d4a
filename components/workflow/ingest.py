"""``face_ingest``: one batch of photos (a folder or an ``s3://`` prefix) into the identity store.

The steps, in the order the DAG (dags/face_ingest.py) runs them; each takes URIs and
returns URIs, so only URIs travel through XCom:

1. :func:`plan`: list the batch's photos, derive the batch id (a run parameter, or a
   hash of the source and its file list), split the list into shards of
   ``workflow.shard_size`` and write the manifest and one file per shard.
2. :func:`validate_images`: read every photo once; the Great Expectations image suite
   (decodable, dimensions, format, duplicate hashes) must pass, otherwise the batch is
   quarantined and :class:`~components.workflow.BatchRejected` names the rows and why.
   Returns the shard URIs (what the DAG maps over).
3. :func:`detect`: one shard: load, MTCNN detect (batched; a photo without a face upright
   is tried turned 90 and 270 degrees, and the turn is kept with its faces), align,
   quality gates.
4. :func:`validate_faces`: one shard: the faces suite (confidence, blur, landmarks in
   the box, crop size).
5. :func:`embed`: one shard: embed usable faces; the embeddings suite (dimension, unit
   norm, finite, no duplicates).
6. :func:`assign`: all shards: store photos, faces and crops (keyed by the photo's
   sha256), then the identity life cycle assigns every new face to an identity or the
   unknown pool (and re-clusters the pool when ``identities.recluster_pool_size``
   fresh faces wait; window T is face_recluster's job).
7. :func:`record_metrics`: counts, per-step seconds and validation results, written
   next to the batch and logged to MLflow once per batch id.

Outputs live under ``<work area>/batches/<batch id>/``; a step run again overwrites
its own outputs with the same content and the store ignores photos it already has.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from functools import lru_cache

import numpy as np

from components.images.load import JPEG_WRITERS
from components.workflow import BatchRejected, WorkflowError
from components.workflow import workspace as ws

EXPERIMENT = "face_ingest"
# Usual photo suffixes, for messages only: keys are not filtered by suffix, the image
# suite decides by content (a non-photo fails ``decodable`` with its reason).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                  ".ppm", ".pgm", ".pbm", ".tga", ".heic", ".avif")
_BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


# -- shared per process: models and the store load once, whichever step asks first ------------


@lru_cache(maxsize=1)
def _settings():
    from components.settings import load_settings

    return load_settings()


def _workspace(settings=None) -> ws.Workspace:
    return ws.Workspace.from_env(settings or _settings())


@lru_cache(maxsize=4)
def _store(url: str):
    from components.identities import IdentityStore

    return IdentityStore(url)


@lru_cache(maxsize=2)
def _engine(params):
    from components.engine import FaceEngine

    return FaceEngine(params)


def model_for(store, settings):
    """The model this store's faces are embedded with: its active model (components.engine.models).

    Not the registry's champion directly: a newly promoted champion is used only after the
    face_reembed DAG moved the store to it, so the store never mixes two models.
    """
    from components.engine import model_for_store

    return model_for_store(store, settings)


# -- pure helpers ---------------------------------------------------------------------------


def is_image_key(key: str) -> bool:
    """Whether a listed key is a candidate photo: any file name, but no hidden part (``.DS_Store``, ``._x.jpg``).

    The suffix is not looked at: photos without one, or with an unusual one (``.pgm``),
    are photos; a non-photo is rejected by the image suite, with its reason.
    """
    parts = key.split("/")
    return bool(parts[-1]) and not any(part.startswith(".") for part in parts)


def batch_id_of(source: str, keys: list[str]) -> str:
    """A batch id from what the batch is: its source URI and its sorted file list.

    The same folder listed again gives the same id, so a re-run finds its outputs.
    """
    digest = hashlib.sha256("\n".join([source.rstrip("/"), *sorted(keys)]).encode()).hexdigest()
    return f"batch-{digest[:16]}"


def shard(keys: list[str], size: int) -> list[list[str]]:
    """Consecutive shards of at most ``size`` keys (the last may be shorter)."""
    if size < 1:
        raise WorkflowError(f"shard_size must be at least 1, got {size}")
    return [keys[start : start + size] for start in range(0, len(keys), size)]


def folder_label(key: str) -> str | None:
    """The folder a photo sits in (LFW-style ``Person_Name/photo.jpg``), None at the top level."""
    parts = key.split("/")
    return parts[-2] if len(parts) >= 2 else None


def parse_at(at: str | datetime | None) -> datetime | None:
    """A timezone-aware time from an ISO string (the DAG run's logical time); None stays None."""
    if at is None or at == "":
        return None
    moment = at if isinstance(at, datetime) else datetime.fromisoformat(str(at).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _reject(batch_id: str, check: str, report, source: str) -> None:
    """Keep the failed validation (Data Docs) in MLflow, quarantine the batch, stop it.

    Raises:
        BatchRejected: always; its message names the failing rows and why, and where
            the quarantined copy is.
    """
    from components.validate import quarantine

    from components.workflow.tracking import log_once

    try:
        log_once(EXPERIMENT, f"{batch_id}:rejected:{check}", run_name=f"{batch_id} rejected ({check})",
                 params={"batch_id": batch_id, "source": source},
                 json_artifacts={f"validation/{check}.json": report.to_dict()},
                 files={f"validation/{check}": report.site_dir or report.html_path},
                 tags={"faces.batch_id": batch_id, "faces.outcome": "rejected"})
    except Exception as error:  # noqa: BLE001 - the rejection itself must still reach the user
        print(f"warning: could not record the rejected batch in MLflow: {error}")
    where = quarantine(source, report.message(), report=report, batch_id=batch_id)
    raise BatchRejected(batch_id, check, f"{report.message()}\nThe batch {source} is quarantined in {where} "
                                         "(nothing deleted).", report.failures)


# -- 1. plan --------------------------------------------------------------------------------


def plan(source: str, *, batch_id: str | None = None, shard_size: int | None = None, folder_labels: bool = False,
         settings=None) -> str:
    """List a batch and split it into shards.

    Args:
        source: a folder or an ``s3://bucket/prefix`` holding the photos (searched recursively).
        batch_id: the batch's id; default a hash of ``source`` and its file list.
        shard_size: photos per shard; default ``workflow.shard_size``.
        folder_labels: each photo's folder names the person in it (scores clustering only).
        settings: parameters; default params.yaml.

    Returns:
        URI of the batch manifest (JSON: batch id, source, keys, shard URIs).

    Raises:
        WorkflowError: the source holds no photo, or the batch id is malformed.
    """
    settings = settings or _settings()
    workspace = _workspace(settings)
    source = str(source).rstrip("/")
    try:
        keys = sorted(key for key in ws.open_storage(source).list() if is_image_key(key))
    except (FileNotFoundError, NotADirectoryError) as error:
        raise WorkflowError(f"batch source {source} cannot be listed: {error}") from None
    if not keys:
        raise WorkflowError(f"batch source {source} holds no photo ({', '.join(IMAGE_SUFFIXES)})")
    batch_id = batch_id or batch_id_of(source, keys)
    if not _BATCH_ID.match(batch_id):
        raise WorkflowError(f"batch id {batch_id!r}: use letters, digits, '.', '_' and '-' (at most 100)")
    size = int(shard_size or settings.workflow.shard_size)
    shard_uris = []
    for index, chunk in enumerate(shard(keys, size)):
        uri = workspace.batch(batch_id, "shards", f"{index:05d}.json")
        ws.write_json(uri, {"batch_id": batch_id, "shard": index, "source": source, "keys": chunk,
                            "folder_labels": bool(folder_labels)})
        shard_uris.append(uri)
    manifest = {"batch_id": batch_id, "source": source, "keys": keys, "shard_size": size,
                "folder_labels": bool(folder_labels), "shards": shard_uris}
    return ws.write_json(workspace.batch(batch_id, "manifest.json"), manifest)


# -- 2. validate images ---------------------------------------------------------------------


def validate_images(manifest_uri: str, *, settings=None) -> list[str]:
    """Check every photo of the batch with the image suite; returns the shard URIs.

    Raises:
        BatchRejected: an expectation failed; the batch is quarantined and the message
            names the rows and the reasons.
    """
    from components import validate

    settings = settings or _settings()
    workspace = _workspace(settings)
    manifest = ws.read_json(manifest_uri)
    batch_id = manifest["batch_id"]
    started = time.perf_counter()
    storage = ws.open_storage(manifest["source"])
    table = validate.image_table(manifest["keys"], storage=storage, max_pixels=settings.detect.max_pixels)
    report = validate.validate_images(table, settings.validate, batch_id=batch_id)
    result = {**report.to_dict(), "images": len(table), "seconds": {"validate": time.perf_counter() - started}}
    ws.write_json(workspace.batch(batch_id, "validation", "images.json"), result)
    if not report.success:
        _reject(batch_id, "images", report, manifest["source"])
    return list(manifest["shards"])


# -- 3. detect one shard --------------------------------------------------------------------


def detect(shard_uri: str, *, settings=None) -> str:
    """Detect, align and quality-score the faces of one shard.

    Photos the store already holds (same bytes) are skipped, so a re-run after a
    partial run does only what is left. Unreadable photos are recorded with a reason.

    Returns:
        URI of ``detections/<shard>.npz``: per-photo metadata (JSON in ``meta``) and
        per-face arrays (boxes, landmarks, confidence, blur, failures, crops).
    """
    from components.images import BadImageError, load_image_bytes

    settings = settings or _settings()
    workspace = _workspace(settings)
    spec = ws.read_json(shard_uri)
    store = _store(workspace.store_url)
    storage = ws.open_storage(spec["source"])
    started = time.perf_counter()
    photos, images = [], []
    for key in spec["keys"]:
        data = storage.get_bytes(key)
        sha = hashlib.sha256(data).hexdigest()
        photo = {"key": key, "uri": storage.uri(key), "sha256": sha,
                 "label": folder_label(key) if spec.get("folder_labels") else None}
        if store.find_image(sha) is not None:
            photos.append({**photo, "status": "stored"})
            continue
        try:
            image = load_image_bytes(data, max_pixels=settings.detect.max_pixels)
        except BadImageError as error:
            photos.append({**photo, "status": "rejected", "code": error.code, "reason": error.reason})
            continue
        photos.append({**photo, "status": "new", "width": int(image.shape[1]), "height": int(image.shape[0])})
        images.append(image)
    load_seconds = time.perf_counter() - started

    started = time.perf_counter()
    detections = _engine(settings.detect).detect(images) if images else []
    detect_seconds = time.perf_counter() - started

    from components.detect import __version__ as detector_version

    faces, owners, indices = [], [], []
    new_photos = [index for index, photo in enumerate(photos) if photo["status"] == "new"]
    for photo_index, found in zip(new_photos, detections):
        photos[photo_index]["faces"] = len(found.faces)
        photos[photo_index]["main_face"] = found.main
        for face_index, face in enumerate(found.faces):
            faces.append(face)
            owners.append(photo_index)
            indices.append(face_index)
    meta = {"batch_id": spec["batch_id"], "shard": spec["shard"], "source": spec["source"], "photos": photos,
            "detector_version": detector_version, "seconds": {"load": load_seconds, "detect": detect_seconds}}
    crop_shape = (0, 150, 150, 3)
    uri = workspace.batch(spec["batch_id"], "detections", f"{spec['shard']:05d}.npz")
    return ws.write_npz(
        uri,
        meta=np.array(json.dumps(meta)),
        photo=np.array(owners, np.int32),
        face_index=np.array(indices, np.int32),
        boxes=np.array([face.box for face in faces], np.float64).reshape(-1, 4),
        landmarks=np.array([face.landmarks for face in faces], np.float64).reshape(-1, 5, 2),
        confidence=np.array([face.confidence for face in faces], np.float64),
        blur=np.array([face.blur for face in faces], np.float64),
        failures=np.array([",".join(face.failures) for face in faces], dtype=str),
        rotation=np.array([face.rotation for face in faces], np.int16),
        crops=np.stack([face.crop for face in faces]) if faces else np.zeros(crop_shape, np.uint8),
    )


# -- 4. validate faces ----------------------------------------------------------------------


def validate_faces(detections_uri: str, *, settings=None) -> str:
    """Check one shard's faces with the faces suite; returns the detections URI unchanged.

    Raises:
        BatchRejected: an expectation failed (the batch is quarantined).
    """
    from components import validate

    settings = settings or _settings()
    workspace = _workspace(settings)
    arrays = ws.read_npz(detections_uri)
    meta = json.loads(str(arrays["meta"]))
    started = time.perf_counter()
    table = validate.face_table_from_arrays(arrays, [photo["key"] for photo in meta["photos"]],
                                            landmark_tolerance=settings.validate.face_landmark_tolerance)
    report = validate.validate_faces(table, settings.validate, gates=settings.detect,
                                     batch_id=f"{meta['batch_id']}-{meta['shard']:05d}")
    result = {**report.to_dict(), "faces": int(len(arrays["boxes"])), "seconds": {"validate": time.perf_counter() - started}}
    ws.write_json(workspace.batch(meta["batch_id"], "validation", f"faces-{meta['shard']:05d}.json"), result)
    if not report.success:
        _reject(meta["batch_id"], "faces", report, meta["source"])
    return detections_uri


# -- 5. embed -------------------------------------------------------------------------------


def embed(detections_uri: str, *, settings=None) -> str:
    """Embed the usable faces of one shard, then check the embeddings suite.

    Returns:
        URI of ``embeddings/<shard>.npz``: ``rows`` (face rows of the detections file),
        ``embeddings`` (rows x the model's width, unit norm) and ``meta`` (model version, seconds).

    Raises:
        BatchRejected: the embeddings failed their suite (the batch is quarantined).
    """
    from components import validate

    settings = settings or _settings()
    workspace = _workspace(settings)
    arrays = ws.read_npz(detections_uri)
    meta = json.loads(str(arrays["meta"]))
    rows = np.flatnonzero(np.array([not failures for failures in arrays["failures"]], bool))
    model = model_for(_store(workspace.store_url), settings)
    started = time.perf_counter()
    vectors = _engine(settings.detect).embed(arrays["crops"][rows], model)  # (0, the model's width) for a shard of no face
    embed_seconds = time.perf_counter() - started
    started = time.perf_counter()
    ids = [f"{meta['photos'][int(arrays['photo'][row])]['sha256']}_{int(arrays['face_index'][row])}" for row in rows]
    report = (validate.validate_embeddings(vectors, ids, settings.validate, batch_id=f"{meta['batch_id']}-{meta['shard']:05d}")
              if len(rows) else None)
    validate_seconds = time.perf_counter() - started
    if report is not None and not report.success:
        _reject(meta["batch_id"], "embeddings", report, meta["source"])
    out = {"batch_id": meta["batch_id"], "shard": meta["shard"], "detections": detections_uri,
           "model_version": model.version, "registry_version": model.registry_version, "faces": int(len(rows)),
           "seconds": {"embed": embed_seconds, "validate": validate_seconds}}
    uri = workspace.batch(meta["batch_id"], "embeddings", f"{meta['shard']:05d}.npz")
    return ws.write_npz(uri, meta=np.array(json.dumps(out)), rows=rows.astype(np.int32),
                        embeddings=vectors.astype(np.float32))


# -- 6. assign ------------------------------------------------------------------------------


def store_shard(embeddings_uri: str, store, workspace: ws.Workspace, model, *, crop_writers: int = JPEG_WRITERS) -> dict:
    """Store one shard's photos, faces (with embeddings) and crops: one transaction for the whole shard.

    The crops are written first, concurrently (``crop_writers`` threads: JPEG encoding
    and S3 round trips overlap), each under a key fixed by the photo's content; then one
    transaction stores every new photo with its faces and every rejected file. A step
    killed before the commit leaves crops nobody points to yet and no row: the re-run
    writes the same crops again and commits the shard whole.

    A shard embedded before a re-embed switched the store to a new model is embedded
    again here with the store's model, so the store never holds two models' vectors.

    Returns:
        Counts (``photos_new``, ``already_stored``, ``rejected``, ``faces``, ``usable_faces``,
        ``face_failures``) and ``seconds``.
    """
    from components.identities import NewFace, NewPhoto, RejectedFile

    started = time.perf_counter()
    embedded = ws.read_npz(embeddings_uri)
    out = json.loads(str(embedded["meta"]))
    arrays = ws.read_npz(out["detections"])
    meta = json.loads(str(arrays["meta"]))
    vectors = embedded["embeddings"]
    if len(vectors) and out["model_version"] != model.version:
        vectors = model.embedder.embed(arrays["crops"][embedded["rows"]])
        out["model_version"] = model.version
    vector_of = {int(row): vector for row, vector in zip(embedded["rows"], vectors)}
    rotations = arrays.get("rotation", np.zeros(len(arrays["face_index"]), np.int16))  # older files: all upright
    counts = Counter(dict.fromkeys(("photos_new", "already_stored", "rejected", "faces", "usable_faces",
                                    "photos_without_faces"), 0))
    failures = Counter()
    # One query for the whole shard: photos stored by another shard or batch since detect ran.
    stored = store.stored_sha256s([photo["sha256"] for photo in meta["photos"] if photo["status"] == "new"])
    rejected, photos, crops = [], [], []
    for photo_index, photo in enumerate(meta["photos"]):
        if photo["status"] == "rejected":
            rejected.append(RejectedFile(photo["uri"], photo["code"], photo["reason"], photo["sha256"]))
            continue
        if photo["status"] == "stored" or photo["sha256"] in stored:
            counts["already_stored"] += 1
            continue
        records = []
        for row in np.flatnonzero(arrays["photo"] == photo_index):
            index = int(arrays["face_index"][row])
            failed = [name for name in str(arrays["failures"][row]).split(",") if name]
            crop_uri = workspace.crop(photo["sha256"], index)
            crops.append((photo["sha256"], index, int(row)))
            vector = vector_of.get(int(row))
            records.append(NewFace(
                face_index=index, box=tuple(float(v) for v in arrays["boxes"][row]), landmarks=arrays["landmarks"][row],
                confidence=float(arrays["confidence"][row]), blur=float(arrays["blur"][row]), failures=failed,
                embedding=vector, model_version=out["model_version"] if vector is not None else None, crop_path=crop_uri,
                label=photo["label"] if index == photo.get("main_face") else None, rotation=int(rotations[row]),
            ))
            failures.update(failed)
        photos.append(NewPhoto(photo["sha256"], photo["uri"], (photo["width"], photo["height"]), records,
                               meta["detector_version"], photo["label"]))
    write_crops(workspace, crops, arrays["crops"], workers=crop_writers)
    written = store.add_photos(photos, rejected)
    # A photo a concurrent batch committed between our check and our transaction counts as already stored.
    counts["already_stored"] += len(written["already_stored"])
    counts["rejected"] += written["rejected"]
    stored_now = set(written["stored"])
    for photo in photos:
        if photo.sha256 in stored_now:
            stored_now.discard(photo.sha256)  # the same bytes twice in one shard are one photo
            counts["photos_new"] += 1
            counts["faces"] += len(photo.faces)
            counts["usable_faces"] += sum(face.embedding is not None for face in photo.faces)
            counts["photos_without_faces"] += not photo.faces
    return {**counts, "face_failures": dict(failures), "seconds": time.perf_counter() - started}


def write_crops(workspace: ws.Workspace, crops: list[tuple[str, int, int]], pixels: np.ndarray, *,
                workers: int = JPEG_WRITERS) -> None:
    """Encode and write aligned crops concurrently; every object is written whole (temporary name, then rename).

    Args:
        workspace: where the crops go (``<work area>/crops/``, a folder or S3).
        crops: ``(photo sha256, face index, row of pixels)`` per crop.
        pixels: the shard's crops, (N, 150, 150, 3) uint8.
        workers: threads; one storage client is shared by all of them.
    """
    from components.images import write_jpegs

    if not crops:
        return
    write_jpegs(ws.open_storage(workspace.crops_root()),
                [(workspace.crop_key(sha256, face_index), pixels[row]) for sha256, face_index, row in crops], workers=workers)


def store_shards(embedding_uris: list[str], store, workspace: ws.Workspace, model, model_of_store) -> list[dict]:
    """Store a batch's shards (:func:`store_shard`) with ``model``, the store's model as resolved.

    A re-embed may switch the store to a new model while the batch is being stored: the
    store then refuses the next shard whole (``ModelMismatchError``, nothing of it written),
    and that shard and the rest are embedded again with ``model_of_store()``, the store's
    model now, and stored. Shards committed before the switch are among the faces it moves
    to the new model (the switch waits for them: :func:`components.identities.store.lock_store_model`).
    """
    from components.identities.store import ModelMismatchError

    counts = []
    for uri in embedding_uris:
        try:
            counts.append(store_shard(uri, store, workspace, model))
        except ModelMismatchError:
            model = model_of_store()
            counts.append(store_shard(uri, store, workspace, model))
    return counts


def assign(embedding_uris: list[str], *, at: str | datetime | None = None, settings=None) -> str:
    """Store every shard of the batch, then assign new faces to identities or the pool.

    Args:
        embedding_uris: what :func:`embed` returned, one per shard.
        at: the time of this step (the DAG run's logical time), recorded in the store's
            life-cycle log; default the wall clock.
        settings: parameters.

    Returns:
        URI of ``assign.json`` (counts, life-cycle report, seconds).
    """
    from components.identities.lifecycle import assign_new, policy_for_store, recluster_pool, utc_now

    settings = settings or _settings()
    workspace = _workspace(settings)
    if not embedding_uris:
        raise WorkflowError("assign needs the embeddings of at least one shard")
    store = _store(workspace.store_url)
    model = model_for(store, settings)  # the store's model, resolved once (again only after a switch)
    shards = store_shards(sorted(embedding_uris), store, workspace, model, lambda: model_for(store, settings))
    batch_id = json.loads(str(ws.read_npz(sorted(embedding_uris)[0])["meta"]))["batch_id"]
    now = parse_at(at) or utc_now()
    started = time.perf_counter()
    # Window T belongs to face_recluster (scheduled); here the pool is re-clustered only when
    # recluster_pool_size fresh faces wait (or the store was never clustered).
    policy = replace(policy_for_store(store, settings), recluster_every_s=float("inf"))
    lifecycle = {"assign": assign_new(store, policy, now=now), "pool": recluster_pool(store, policy, now=now)}
    assign_seconds = time.perf_counter() - started
    totals = Counter()
    failures = Counter()
    for counts in shards:
        totals.update({key: value for key, value in counts.items() if isinstance(value, int)})
        failures.update(counts["face_failures"])
    result = {"batch_id": batch_id, "at": now.isoformat(), "shards": len(shards), **totals,
              "face_failures": dict(failures), "lifecycle": lifecycle,
              "seconds": {"store": sum(counts["seconds"] for counts in shards), "assign": assign_seconds},
              "store": store.counts(), "model": store.model("active").describe()}
    return ws.write_json(workspace.batch(batch_id, "assign.json"), result)


# -- 7. record metrics ----------------------------------------------------------------------


def batch_metrics(assign_uri: str) -> dict:
    """Everything known about one batch, from its outputs (counts, validation, seconds per step)."""
    result = ws.read_json(assign_uri)
    workspace = _workspace()
    batch_id = result["batch_id"]
    manifest = ws.read_json(workspace.batch(batch_id, "manifest.json"))
    seconds = Counter()
    images = ws.read_json(workspace.batch(batch_id, "validation", "images.json"))
    seconds["validate"] += images["seconds"]["validate"]
    for index, _ in enumerate(manifest["shards"]):
        detections = ws.read_npz(workspace.batch(batch_id, "detections", f"{index:05d}.npz"))
        seconds.update(json.loads(str(detections["meta"]))["seconds"])
        seconds.update(ws.read_json(workspace.batch(batch_id, "validation", f"faces-{index:05d}.json"))["seconds"])
        seconds.update(json.loads(str(ws.read_npz(workspace.batch(batch_id, "embeddings", f"{index:05d}.npz"))["meta"]))["seconds"])
    seconds.update(result["seconds"])
    return {
        "batch_id": batch_id, "source": manifest["source"], "photos": len(manifest["keys"]),
        "shards": len(manifest["shards"]), "photos_new": result.get("photos_new", 0),
        "already_stored": result.get("already_stored", 0), "rejected": result.get("rejected", 0),
        "faces": result.get("faces", 0), "usable_faces": result.get("usable_faces", 0),
        "face_failures": result["face_failures"], "lifecycle": result["lifecycle"], "store": result["store"],
        "model_version": result["model"]["model_version"], "assign_threshold": result["model"]["thresholds"]["assign"],
        "seconds": {key: round(value, 4) for key, value in seconds.items()},
    }


def record_metrics(assign_uri: str, *, settings=None) -> str:
    """Write ``metrics.json`` for the batch and log it to MLflow (once per batch id).

    Returns:
        URI of ``metrics.json``; it names the MLflow run under ``mlflow_run``.
    """
    from components.report.summary import run_params
    from components.workflow.tracking import log_once

    settings = settings or _settings()
    workspace = _workspace(settings)
    metrics = batch_metrics(assign_uri)
    batch_id = metrics["batch_id"]
    from components.engine import step_versions

    metrics["versions"] = {**step_versions(), "workflow": _version()}
    metrics["mlflow_run"] = log_once(
        EXPERIMENT, batch_id, run_name=batch_id,
        params={"batch_id": batch_id, "source": metrics["source"], "shard_size": settings.workflow.shard_size,
                # Every detector setting, as `faces run` records them: recall traded for speed shows per run.
                **{f"detect.{key}": value for key, value in run_params(settings, ("detect",))["detect"].items()},
                "identities.assign_threshold": metrics["assign_threshold"], "model_version": metrics["model_version"]},
        metrics={key: metrics[key] for key in ("photos", "photos_new", "already_stored", "rejected", "faces",
                                               "usable_faces", "seconds", "lifecycle", "store")},
        json_artifacts={"batch_metrics.json": metrics}, tags={"faces.batch_id": batch_id, "faces.outcome": "ingested"},
    )
    return ws.write_json(workspace.batch(batch_id, "metrics.json"), metrics)


def _version() -> str:
    from components.workflow import __version__

    return __version__


# -- the whole workflow in one process ------------------------------------------------------


def run_ingest(source: str, *, batch_id: str | None = None, shard_size: int | None = None, folder_labels: bool = False,
               at: str | None = None, track: bool = True, settings=None) -> dict:
    """Run face_ingest's steps one after another in this process (DVC stage, benchmark, CLI).

    Returns:
        The batch metrics (what ``metrics.json`` holds) plus ``uris`` of every output
        and ``wall_seconds`` per step as called.
    """
    settings = settings or _settings()
    wall = Counter()

    def timed(name, fn, *args, **kwargs):
        started = time.perf_counter()
        value = fn(*args, **kwargs)
        wall[name] += time.perf_counter() - started
        return value

    manifest = timed("plan", plan, source, batch_id=batch_id, shard_size=shard_size, folder_labels=folder_labels,
                     settings=settings)
    shard_uris = timed("validate_images", validate_images, manifest, settings=settings)
    embedded = []
    for shard_uri in shard_uris:
        detections = timed("detect", detect, shard_uri, settings=settings)
        detections = timed("validate_faces", validate_faces, detections, settings=settings)
        embedded.append(timed("embed", embed, detections, settings=settings))
    assigned = timed("assign", assign, embedded, at=at, settings=settings)
    if track:
        metrics_uri = timed("record_metrics", record_metrics, assigned, settings=settings)
        metrics = ws.read_json(metrics_uri)
    else:
        metrics = batch_metrics(assigned)
        metrics_uri = None
    metrics["uris"] = {"manifest": manifest, "shards": shard_uris, "embeddings": embedded, "assign": assigned,
                       "metrics": metrics_uri}
    metrics["wall_seconds"] = {key: round(value, 4) for key, value in wall.items()}
    return metrics
