"""Object storage: one interface over local folders (default) and S3 (MinIO, SeaweedFS).

```python
from components.storage import open_storage, sync_folder

store = open_storage("s3://faces/raw")      # or a local folder: open_storage("runs/storage")
sync_folder("~/Pictures/2026-11", store, "2026-11")   # resumable upload with a progress bar
store.get_bytes("2026-11/IMG_0001.jpg")
```

S3 endpoint and credentials come from the environment: ``S3_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` (optional ``S3_REGION``).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from components.storage.base import ObjectInfo, Storage, StorageError, check_key, file_digests
from components.storage.local import LocalStorage
from components.storage.sync import SyncResult, copy_prefix, sync_folder

__version__ = "1.0.0"

__all__ = [
    "LocalStorage",
    "ObjectInfo",
    "S3Storage",
    "Storage",
    "StorageError",
    "SyncResult",
    "__version__",
    "check_key",
    "copy_prefix",
    "file_digests",
    "open_object",
    "open_storage",
    "sync_folder",
]


def __getattr__(name: str):
    if name == "S3Storage":  # the minio SDK loads only when S3 is used
        from components.storage.s3 import S3Storage

        return S3Storage
    raise AttributeError(f"module 'components.storage' has no attribute {name!r}")


def open_storage(uri: str | os.PathLike[str], params=None) -> Storage:
    """The storage rooted at ``uri``.

    Args:
        uri: ``s3://bucket[/prefix]`` (endpoint and keys from the environment), a
            ``file://`` URI, or a local path (relative paths resolve against the
            current folder). A local folder is created on the first write.
        params: :class:`components.settings.StorageParams` (S3 timeouts and retries);
            default: their defaults.

    Returns:
        A :class:`LocalStorage` or :class:`S3Storage`.

    Raises:
        StorageError: (``config``) for another scheme, an S3 URI without a bucket, or
            missing S3 settings.
    """
    text = os.fspath(uri)
    parts = urlsplit(text)
    if parts.scheme == "s3":
        from components.storage.s3 import S3Storage

        if not parts.netloc:
            raise StorageError(text, "config", "an S3 URI needs a bucket: s3://bucket[/prefix]")
        tuning = {} if params is None else {"connect_timeout": params.connect_timeout_s,
                                            "read_timeout": params.read_timeout_s, "retries": params.retries}
        return S3Storage(parts.netloc, unquote(parts.path), **tuning)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StorageError(text, "config", "file:// URIs must name a local path (file:///abs/path)")
        return LocalStorage(unquote(parts.path))
    if parts.scheme and len(parts.scheme) > 1:  # "C:" style drive letters are paths, not schemes
        raise StorageError(text, "config", f"unsupported storage scheme {parts.scheme!r}: use a path or s3://")
    return LocalStorage(Path(text))


def open_object(uri: str | os.PathLike[str]) -> tuple[Storage, str]:
    """Split an object's URI (as :meth:`Storage.uri` gives it) into its storage and key.

    ``s3://bucket/a/b.jpg`` -> (storage ``s3://bucket/a/``, ``"b.jpg"``); a local
    file path -> (its folder, its name). Lets a task that received one URI read it.
    """
    text = os.fspath(uri)
    if urlsplit(text).scheme in ("s3", "file"):
        parent, _, name = text.rstrip("/").rpartition("/")
        if not name or parent.endswith(":/"):  # "s3://bucket" names a bucket, not an object
            raise StorageError(text, "invalid_key", "the URI names no object")
        return open_storage(parent), name
    path = Path(text).resolve()
    return LocalStorage(path.parent), path.name
