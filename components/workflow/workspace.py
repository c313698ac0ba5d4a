"""Where workflow steps read and write: the work area, the identity store, object URIs.

Every worker (an Airflow Celery worker on another machine, a DVC stage, a test) finds
the same places from the same environment:

* ``FACES_WORK_URI``: the work area (a folder or ``s3://bucket/prefix``) for batch
  manifests, shard outputs and crops; default ``workflow.work_dir`` in params.yaml.
* ``FACES_STORE_URL``: SQLAlchemy URL of the identity store; default
  ``sqlite:///<work area>/faces.db`` (only when the work area is a local folder).

Objects travel between steps as URIs; :func:`read_bytes` / :func:`write_bytes` open
the storage of the URI's parent (components.storage) and act on its last part.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.workflow import WorkflowError


def _split(uri: str) -> tuple[str, str]:
    """(parent URI, name) of an object URI."""
    uri = str(uri).rstrip("/")
    if "/" not in uri:
        raise WorkflowError(f"{uri!r} is not an object URI (a path or s3://bucket/key)")
    parent, name = uri.rsplit("/", 1)
    if parent in ("s3:", "s3:/"):
        raise WorkflowError(f"{uri!r} names a bucket, not an object")
    return parent or "/", name


def open_storage(uri: str):
    """components.storage.open_storage, imported late (the S3 client is heavy)."""
    from components.storage import open_storage as open_

    return open_(str(uri))


def join(base: str, *parts: str) -> str:
    """A child URI of a folder or ``s3://`` prefix."""
    return "/".join([str(base).rstrip("/"), *(str(part).strip("/") for part in parts)])


def read_bytes(uri: str) -> bytes:
    parent, name = _split(uri)
    return open_storage(parent).get_bytes(name)


def write_bytes(uri: str, data: bytes) -> str:
    """Write an object whole (the storage writes a temporary name, then renames); returns the URI."""
    parent, name = _split(uri)
    open_storage(parent).put_bytes(name, data)
    return uri


def exists(uri: str) -> bool:
    parent, name = _split(uri)
    return open_storage(parent).exists(name)


def read_json(uri: str):
    return json.loads(read_bytes(uri))


def write_json(uri: str, obj) -> str:
    return write_bytes(uri, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())


def write_npz(uri: str, **arrays: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return write_bytes(uri, buffer.getvalue())


def read_npz(uri: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(read_bytes(uri)), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


@dataclass(frozen=True)
class Workspace:
    """The work area and the identity store of this deployment.

    Attributes:
        root: URI of the work area (folder or ``s3://bucket/prefix``).
        store_url: SQLAlchemy URL of the identity store.
    """

    root: str
    store_url: str

    @classmethod
    def from_env(cls, settings) -> Workspace:
        """The workspace named by ``FACES_WORK_URI`` / ``FACES_STORE_URL``, else params.yaml's defaults."""
        root = os.environ.get("FACES_WORK_URI") or str(settings.workflow.work_dir)
        store_url = os.environ.get("FACES_STORE_URL")
        if not store_url:
            if root.startswith("s3://"):
                raise WorkflowError(
                    f"the work area {root} is in S3, so the identity store cannot default to a SQLite file in it: "
                    "set FACES_STORE_URL (e.g. postgresql+psycopg2://user@host/faces)"
                )
            Path(root).mkdir(parents=True, exist_ok=True)
            store_url = f"sqlite:///{Path(root).resolve() / 'faces.db'}"
        if "://" not in root:
            # Crop paths are stored in the identity store: absolute, so any process can read them.
            root = str(Path(root).resolve())
        return cls(root=root.rstrip("/"), store_url=store_url)

    def batch(self, batch_id: str, *parts: str) -> str:
        """URI of an output of one batch: ``<root>/batches/<batch id>/<parts>``."""
        return join(self.root, "batches", batch_id, *parts)

    def crop(self, sha256: str, face_index: int) -> str:
        """URI of an aligned face crop, keyed by the photo's content."""
        return join(self.crops_root(), self.crop_key(sha256, face_index))

    def crops_root(self) -> str:
        """URI of the folder (or S3 prefix) holding every crop."""
        return join(self.root, "crops")

    @staticmethod
    def crop_key(sha256: str, face_index: int) -> str:
        """A crop's key under :meth:`crops_root`."""
        return f"{sha256[:2]}/{sha256}_{face_index}.jpg"
