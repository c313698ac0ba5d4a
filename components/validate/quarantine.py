"""Keep a failed batch aside with its reasons: copied, never moved or deleted."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["quarantine"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _quarantine_root(quarantine_uri: str | None, params) -> str:
    if quarantine_uri:
        return quarantine_uri
    if os.environ.get("FACES_QUARANTINE_URI"):
        return os.environ["FACES_QUARANTINE_URI"]
    from components.settings import PROJECT_ROOT, load_settings

    configured = (params or load_settings().validate).quarantine_uri
    if urlsplit(configured).scheme in ("s3", "file") or Path(configured).is_absolute():
        return configured
    return str(PROJECT_ROOT / configured)  # relative to the project, like every path in params.yaml


def _source(batch: str | os.PathLike[str]):
    """(storage, prefix, single key or None) for a batch folder, file or s3:// prefix."""
    from components.storage import LocalStorage, StorageError, open_storage

    text = os.fspath(batch)
    scheme = urlsplit(text).scheme
    if scheme == "s3":
        parts = urlsplit(text)
        return open_storage(f"s3://{parts.netloc}"), parts.path.strip("/"), None
    path = Path(text[len("file://"):] if scheme == "file" else text).expanduser().resolve()
    if path.is_dir():
        return LocalStorage(path), "", None
    if path.is_file():
        return LocalStorage(path.parent), "", path.name
    raise StorageError(str(path), "not_found", "the batch to quarantine does not exist")


def quarantine(batch: str | os.PathLike[str], reason: str, *, failures: Sequence[dict] | None = None,
               report=None, quarantine_uri: str | None = None, batch_id: str | None = None, params=None) -> str:
    """Copy a batch into the quarantine area with a file that says why. Nothing is deleted.

    The batch (a local folder or file, or an ``s3://bucket/prefix``) is copied under
    ``<quarantine>/<batch id>/batch/``; ``QUARANTINE.json`` (reason, source, failures)
    and ``QUARANTINE.txt`` (the reason) sit beside it, and a report's Data Docs site,
    when it has one, under ``validation/<suite>/``. Re-running is cheap and idempotent:
    objects already copied are skipped, the reason files are rewritten.

    Args:
        batch: what to quarantine.
        reason: why, for people (e.g. :meth:`ValidationReport.message`).
        failures: the failing rows (default: the report's).
        report: a :class:`~components.validate.report.ValidationReport` to keep with it.
        quarantine_uri: the quarantine area; default ``$FACES_QUARANTINE_URI``, else
            ``validate.quarantine_uri`` from params.yaml (relative to the project).
        batch_id: the folder name inside the quarantine; default the batch's last path
            part plus a short hash of its full URI (two batches named alike stay apart).
        params: :class:`components.settings.ValidateParams` giving ``quarantine_uri``;
            default params.yaml's.

    Returns:
        The URI of the batch's quarantine folder.

    Raises:
        StorageError: the batch does not exist, or a storage failed.
    """
    from components.storage import LocalStorage, copy_prefix, open_storage

    source, prefix, single = _source(batch)
    origin = source.uri(single or prefix)
    if batch_id is None:
        name = _UNSAFE.sub("_", Path(origin.rstrip("/")).name or "batch")
        batch_id = f"{name}-{hashlib.sha256(origin.encode()).hexdigest()[:8]}"
    target = open_storage(_quarantine_root(quarantine_uri, params))
    base = f"{_UNSAFE.sub('_', batch_id)}"

    if single is not None:
        target.put_bytes(f"{base}/batch/{single}", source.get_bytes(single))
        copied = 1
    else:
        result = copy_prefix(source, prefix, target, f"{base}/batch")
        copied = len(result.uploaded) + len(result.skipped)
    if report is not None and report.site_dir is not None and Path(report.site_dir).is_dir():
        copy_prefix(LocalStorage(report.site_dir), "", target, f"{base}/validation/{report.suite}")
    if failures is None and report is not None:
        failures = report.failures
    record = {"batch_id": batch_id, "source": origin, "reason": reason, "objects": copied,
              "failures": list(failures or []),
              "validation": report.to_dict() if report is not None else None}
    target.put_bytes(f"{base}/QUARANTINE.json", json.dumps(record, indent=1, default=str).encode())
    target.put_bytes(f"{base}/QUARANTINE.txt", f"{origin}\n\n{reason}\n".encode())
    return target.uri(base)
