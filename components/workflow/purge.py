"""``faces purge``: remove deleted people's faces from every copy outside the identity store.

Deleting an identity (``faces identities delete``) removes its faces' rows, embeddings
and crops from the store and records each face (photo sha256 and face index, nothing
else) in ``forgotten_faces``. Copies of those faces live on elsewhere until purged:

* the workflow's batch artefacts in the work area: ``batches/<id>/detections/*.npz``
  hold every face's aligned crop, box and landmarks, ``batches/<id>/embeddings/*.npz``
  its embedding. A forgotten face's crop, box and landmarks are overwritten with zeros
  and its embedding row removed; everyone else's stay, so a cleared task of that batch
  still runs (the photo is in the store already, so it is never stored again).
* quarantine copies: a batch that failed validation is copied whole under
  ``<quarantine>/<batch>/batch/``; a copy whose content is a photo with a forgotten
  face (same sha256) is deleted.

:func:`purge` does both for every forgotten face not purged yet and marks them purged;
``faces identities delete`` runs it right after the delete, and ``faces purge`` runs it
again (after a work area or quarantine was unreachable, or for deletions made on the
people page). It is idempotent: a purged face is not looked for again, and rewriting an
artefact already scrubbed changes nothing. MLflow holds no face pixels (batch metrics,
validation reports without images, a t-SNE map of points), so nothing is removed there.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import defaultdict
from datetime import UTC, datetime

import numpy as np

from components.workflow import workspace as ws

# The detections arrays that describe one face (row-aligned); each is zeroed for a forgotten face.
FACE_ARRAYS = ("crops", "boxes", "landmarks", "confidence", "blur")


def scrub_detections(arrays: dict[str, np.ndarray], forgotten: dict[str, set[int]]) -> tuple[dict, np.ndarray]:
    """Zero the rows of forgotten faces in one detections file's arrays.

    Args:
        arrays: the ``detections/<shard>.npz`` arrays (``meta``, ``photo``, ``face_index``, ...).
        forgotten: photo sha256 -> face indices to forget.

    Returns:
        (the arrays with those rows zeroed, the row numbers scrubbed). A row already
        zero is scrubbed again harmlessly.
    """
    meta = json.loads(str(arrays["meta"]))
    sha_of = [photo["sha256"] for photo in meta["photos"]]
    rows = np.array([row for row, (photo, index) in enumerate(zip(arrays["photo"], arrays["face_index"]))
                     if int(index) in forgotten.get(sha_of[int(photo)], ())], np.int64)
    if not len(rows):
        return arrays, rows
    scrubbed = dict(arrays)
    for name in FACE_ARRAYS:
        if name in scrubbed and len(scrubbed[name]):
            values = np.array(scrubbed[name], copy=True)
            values[rows] = 0
            scrubbed[name] = values
    return scrubbed, rows


def _write_npz(uri: str, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    ws.write_bytes(uri, buffer.getvalue())


def scrub_work_area(root: str, forgotten: dict[str, set[int]]) -> dict:
    """Scrub forgotten faces from every batch artefact under ``<root>/batches/``.

    Returns:
        ``detections_files``, ``embeddings_files``: files rewritten; ``faces``: face rows scrubbed.
    """
    storage = ws.open_storage(root)
    counts = {"detections_files": 0, "embeddings_files": 0, "faces": 0}
    keys = sorted(key for key in storage.list("batches/") if "/detections/" in key and key.endswith(".npz"))
    for key in keys:
        uri = storage.uri(key)
        arrays = ws.read_npz(uri)
        scrubbed, rows = scrub_detections(arrays, forgotten)
        if not len(rows):
            continue
        _write_npz(uri, scrubbed)
        counts["detections_files"] += 1
        counts["faces"] += len(rows)
        embeddings_key = key.replace("/detections/", "/embeddings/")
        if storage.exists(embeddings_key):
            embedded = ws.read_npz(storage.uri(embeddings_key))
            keep = ~np.isin(embedded["rows"], rows)
            if not keep.all():
                _write_npz(storage.uri(embeddings_key), {**embedded, "rows": embedded["rows"][keep],
                                                         "embeddings": embedded["embeddings"][keep]})
                counts["embeddings_files"] += 1
    return counts


def scrub_quarantine(root: str, photos: set[str]) -> dict:
    """Delete quarantined copies of photos (by content) whose sha256 is in ``photos``.

    Returns:
        ``checked``: photo copies read; ``deleted``: their keys under the quarantine root.
    """
    storage = ws.open_storage(root)
    keys = sorted(key for key in storage.list() if "/batch/" in key)
    deleted = []
    for key in keys:
        if hashlib.sha256(storage.get_bytes(key)).hexdigest() in photos:
            storage.delete(key)
            deleted.append(key)
    return {"checked": len(keys), "deleted": deleted}


def work_area_of(store_url: str, settings) -> str:
    """The work area whose batches fed a store: ``$FACES_WORK_URI``; else the folder of a SQLite
    store file (the workflow's default store is ``<work area>/faces.db``; ``faces run``'s
    output folder has no batches, so nothing is found there); else ``workflow.work_dir``."""
    import os
    from pathlib import Path

    from sqlalchemy.engine import make_url

    configured = os.environ.get("FACES_WORK_URI", "").strip()
    if configured:
        return configured
    parsed = make_url(str(store_url))
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return str(Path(parsed.database).expanduser().resolve().parent)
    return str(settings.workflow.work_dir)


def purge(store, *, work_uri: str | None = None, quarantine_uri: str | None = None, settings=None,
          now: datetime | None = None) -> dict:
    """Remove every forgotten face not purged yet from the work area and the quarantine; mark them purged.

    Args:
        store: the identity store (its ``forgotten_faces``).
        work_uri: the work area; default :func:`work_area_of` the store.
        quarantine_uri: the quarantine; default ``$FACES_QUARANTINE_URI``, else ``validate.quarantine_uri``.
        settings: parameters (for the defaults).
        now: when (recorded on the purged rows).

    Returns:
        ``faces`` forgotten and now purged, ``work_area`` and ``quarantine`` (what was
        removed, see :func:`scrub_work_area` and :func:`scrub_quarantine`), and where.

    Raises:
        StorageError: the work area or quarantine could not be read or written; nothing is
            marked purged, so running it again finishes the job.
    """
    from components.validate.quarantine import _quarantine_root

    if settings is None:
        from components.settings import load_settings

        settings = load_settings()
    pending = store.forgotten(pending=True)
    work = work_uri or work_area_of(store.url, settings)
    quarantine = _quarantine_root(quarantine_uri, settings.validate)
    report = {"faces": 0, "work_area": {"uri": work, "detections_files": 0, "embeddings_files": 0, "faces": 0},
              "quarantine": {"uri": quarantine, "checked": 0, "deleted": 0}}
    if not pending:
        return report
    forgotten: dict[str, set[int]] = defaultdict(set)
    for face in pending:
        forgotten[face["sha256"]].add(int(face["face_index"]))
    report["work_area"].update(scrub_work_area(work, forgotten))
    removed = scrub_quarantine(quarantine, set(forgotten))
    report["quarantine"].update(checked=removed["checked"], deleted=len(removed["deleted"]))
    store.mark_purged([face["id"] for face in pending], now or datetime.now(UTC))
    report["faces"] = len(pending)
    return report


def main(args, settings, *, stdout=None, stderr=None) -> int:
    """``faces purge [--db URL]``: purge every forgotten face; JSON on stdout, 0 or 2 (an error on stderr)."""
    import sys

    from sqlalchemy.exc import SQLAlchemyError

    from components.identities.cli import _open, _shown, default_url
    from components.identities.operations import IdentityError
    from components.storage import StorageError

    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    url = args.db or default_url(settings)
    try:
        result = purge(_open(url), settings=settings)
    except IdentityError as error:
        stderr.write(f"error: {error}\n")
        return 2
    except StorageError as error:
        stderr.write(f"error: {error}; nothing was marked purged, run `faces purge` again once it is reachable\n")
        return 2
    except SQLAlchemyError as error:
        stderr.write(f"error: cannot use the identity store at {_shown(url)}: {str(error).splitlines()[0]}\n")
        return 2
    stdout.write(json.dumps(result, indent=2) + "\n")
    return 0
