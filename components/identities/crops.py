"""Where a face crop lives: one resolver for everything that reads or deletes crops.

The identity store records each face's aligned crop in ``faces.crop_path`` as one of

* a path relative to the crops root: ``faces run`` writes ``crops/ab/<sha>_0.jpg``
  relative to its output folder, next to its SQLite store;
* an absolute local path or a ``file://`` URI: the workflow with a local work area;
* an ``s3://bucket/key`` URI: the workflow with an S3 work area.

The crops root is ``$FACES_CROPS_ROOT`` (a folder or ``s3://bucket/prefix``), else the
folder of a SQLite store file (:func:`crops_root_for`). Every access goes through
:mod:`components.storage`, so local folders and S3 behave alike::

    from components.identities.crops import crops_root_for, delete_crops, read_crop

    root = crops_root_for(store.url)
    jpeg = read_crop("crops/ab/ab12_0.jpg", root)          # or "s3://faces/work/crops/..."
    deleted, missing, refused = delete_crops(paths, root)

Opened storages are cached (per root folder, S3 bucket and S3 settings), so reading
crop after crop costs one object read each. :class:`CropReader` reads many crops
concurrently (S3 latency overlaps), for batches.

Deletion is stricter than reading: a local file is deleted only when it lies inside a
local crops root (a store never names a file elsewhere for removal), while ``s3://``
URIs name their object exactly and are deleted where they point.
"""

from __future__ import annotations

import os
import posixpath
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple
from urllib.parse import unquote, urlsplit

from components.storage import LocalStorage, Storage, StorageError, check_key, open_storage

__all__ = [
    "CROPS_ROOT_ENV",
    "CropDeletion",
    "CropLocationError",
    "CropReader",
    "crop_object",
    "crops_root_for",
    "delete_crops",
    "read_crop",
]

CROPS_ROOT_ENV = "FACES_CROPS_ROOT"

#: Environment variables an S3 storage is configured from: a cached one is reused only
#: while they are unchanged.
_S3_ENV = ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
           "S3_REGION", "AWS_REGION")
_CACHE_SIZE = 1024
_WORKERS = 8


class CropLocationError(StorageError, ValueError):
    """A stored crop location that cannot be resolved (nothing was read or deleted).

    ``code`` is ``invalid_key`` for a location that is malformed, escapes the crops
    root (``..``), uses an unsupported scheme or (for deletion) lies outside the root,
    and ``config`` for a relative path when no crops root is known.
    """


def crops_root_for(store_url: str | None) -> str | None:
    """Where a store's relative crop paths start.

    Args:
        store_url: SQLAlchemy URL of the identity store.

    Returns:
        ``$FACES_CROPS_ROOT`` when set (a folder or ``s3://bucket/prefix``), else the
        folder of a SQLite store file (``faces run`` writes its crops next to it), else
        None (a server database, an in-memory store or an unparsable URL).
    """
    configured = os.environ.get(CROPS_ROOT_ENV, "").strip()
    if configured:
        return configured
    if not store_url:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(str(store_url))
    except ArgumentError:
        return None
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:" \
            and not parsed.database.startswith("file:"):
        return str(Path(parsed.database).expanduser().resolve().parent)
    return None


# -- the storage cache --------------------------------------------------------------------------

_cache: OrderedDict[tuple, object] = OrderedDict()
_lock = threading.Lock()


def _cached(key: tuple, make):
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    value = make()  # outside the lock: opening an S3 storage imports the SDK
    with _lock:
        value = _cache.setdefault(key, value)
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return value


def _s3_settings() -> tuple:
    return tuple(os.environ.get(name) for name in _S3_ENV)


def _bucket(bucket: str) -> Storage:
    return _cached(("s3", bucket, _s3_settings()), lambda: open_storage(f"s3://{bucket}"))


def _folder(path: str) -> LocalStorage:
    return _cached(("folder", path), lambda: LocalStorage(path))


@dataclass(frozen=True)
class _Root:
    """A resolved crops root: its storage and, for a local folder, its real path."""

    storage: Storage
    folder: str | None  # real path of a local root; None for S3


def _root(root: str | os.PathLike[str]) -> _Root:
    text = os.fspath(root)
    if text.startswith("s3://"):
        return _cached(("root", text, _s3_settings()), lambda: _Root(open_storage(text), None))

    def local() -> _Root:
        storage = open_storage(text)  # a folder or file:// URI
        return _Root(storage, os.path.realpath(storage.root))

    return _cached(("root", text), local)


# -- resolving one stored location ----------------------------------------------------------------


def _inside(path: str, folder: str) -> str | None:
    """``path``'s key relative to ``folder`` when it lies inside it, else None.

    The folders on the way are resolved (a symlinked folder that leads out is outside);
    the last part is not, so a crop that is itself a symlink is addressed, not followed.
    """
    parent, name = os.path.split(path)
    real = os.path.join(os.path.realpath(parent), name)
    if real == folder or not real.startswith(folder.rstrip(os.sep) + os.sep):
        return None
    return Path(os.path.relpath(real, folder)).as_posix()


def _refuse(stored: str, reason: str, code: str = "invalid_key") -> CropLocationError:
    return CropLocationError(stored, code, reason)


def _s3_object(stored: str) -> tuple[Storage, str]:
    bucket, _, key = stored[len("s3://"):].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise _refuse(stored, "an s3:// crop location must name an object: s3://bucket/key")
    try:
        check_key(key, stored)
    except StorageError as error:
        raise _refuse(stored, error.reason) from None
    try:
        return _bucket(bucket), key
    except StorageError as error:
        if error.uri == f"s3://{bucket}":  # a malformed bucket name (missing S3 settings name no bucket)
            raise _refuse(stored, error.reason) from None
        raise


def _absolute(stored: str, path: str, root: str | os.PathLike[str] | None, confine: bool) -> tuple[Storage, str]:
    path = os.path.normpath(path)
    resolved = _root(root) if root is not None and not os.fspath(root).startswith("s3://") else None
    if resolved is not None:
        key = _inside(path, resolved.folder)
        if key is not None:
            return resolved.storage, key
    if confine:
        where = f"the crops root {os.fspath(root)}" if resolved is not None else "a local crops root"
        raise _refuse(stored, f"the crop file lies outside {where}; it is not removed")
    parent, name = os.path.split(path)
    if not name:
        raise _refuse(stored, "the crop location names a folder, not a file")
    return _folder(parent), name


def _relative(stored: str, root: str | os.PathLike[str] | None, confine: bool) -> tuple[Storage, str]:
    if "\\" in stored or "\x00" in stored:
        raise _refuse(stored, "a crop path uses '/' separators and no NUL characters")
    key = posixpath.normpath(stored)
    if key in (".", "..") or key.startswith("../"):
        raise _refuse(stored, "the crop path leaves the crops root ('..'); refused")
    if root is None:
        raise _refuse(stored, f"the crop path is relative to the crops root and none is known: set {CROPS_ROOT_ENV} "
                              "to the folder (or s3://bucket/prefix) the crops were written under", "config")
    resolved = _root(root)
    if confine and resolved.folder is not None:
        # The key stays inside the root by its name; make sure no symlinked folder leads out.
        if _inside(os.path.join(resolved.folder, key), resolved.folder) is None:
            raise _refuse(stored, f"the crop file lies outside the crops root {os.fspath(root)}; it is not removed")
    try:
        check_key(key, stored)
    except StorageError as error:
        raise _refuse(stored, error.reason) from None
    return resolved.storage, key


def crop_object(stored: str | os.PathLike[str], root: str | os.PathLike[str] | None = None, *,
                confine: bool = False) -> tuple[Storage, str]:
    """The storage holding a crop, and the crop's key in it.

    Args:
        stored: the location as the store holds it: ``s3://bucket/key``, ``file:///abs/path``,
            an absolute path, or a path relative to ``root``.
        root: the crops root (a folder, ``file://`` URI or ``s3://bucket/prefix``); needed
            only for relative paths. See :func:`crops_root_for`.
        confine: only accept local files inside a local ``root`` (what deletion uses);
            ``s3://`` URIs are accepted as they are.

    Returns:
        ``(storage, key)``: ``storage.get_bytes(key)`` reads the crop.

    Raises:
        CropLocationError: an empty or malformed location, a relative path that leaves
            the root (``..``) or comes without a root (``code == "config"``), an
            unsupported scheme, or (with ``confine``) a local file outside the root.
        StorageError: (``config``) S3 settings missing from the environment.
    """
    text = "" if stored is None else os.fspath(stored)
    if not text.strip():
        raise _refuse(repr(stored), "no crop location is recorded")
    if text.startswith("s3://"):
        return _s3_object(text)
    scheme = urlsplit(text).scheme
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise _refuse(text, "a file:// crop location must name a local absolute path (file:///abs/path)")
        return _absolute(text, unquote(parts.path), root, confine)
    if len(scheme) > 1:  # "C:" is a drive letter, not a scheme
        raise _refuse(text, f"unsupported crop location scheme {scheme!r}: use a path, file:// or s3://")
    if os.path.isabs(text):
        return _absolute(text, text, root, confine)
    return _relative(text, root, confine)


def read_crop(stored: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> bytes:
    """A crop's encoded bytes (JPEG or PNG), wherever the store says it is.

    Raises:
        CropLocationError: see :func:`crop_object`.
        StorageError: ``not_found`` when the crop is gone; ``unreachable``,
            ``access_denied``, ``io`` or ``config`` for S3 problems.
    """
    storage, key = crop_object(stored, root)
    return storage.get_bytes(key)


# -- deletion ------------------------------------------------------------------------------------


class CropDeletion(NamedTuple):
    """What :func:`delete_crops` did, as the stored locations.

    Attributes:
        deleted: removed now.
        missing: already gone (not an error: deletion is idempotent).
        refused: left alone because they resolve to nowhere removable (``..`` escapes,
            local files outside the crops root, unsupported schemes).
    """

    deleted: list[str]
    missing: list[str]
    refused: list[str]


def _delete_one(located: tuple[Storage, str]) -> bool:
    storage, key = located
    if not storage.exists(key):
        return False
    storage.delete(key)
    return True


def delete_crops(stored: Iterable[str | os.PathLike[str] | None], root: str | os.PathLike[str] | None = None, *,
                 workers: int = _WORKERS) -> CropDeletion:
    """Delete crops where they are stored (local folder or S3).

    Every location is resolved (``confine=True``, see :func:`crop_object`) before
    anything is deleted. Empty entries (faces without a crop) are skipped.

    Args:
        stored: the locations as the store holds them.
        root: the crops root relative paths start from.
        workers: concurrent deletions (they overlap S3 round trips).

    Returns:
        ``(deleted, missing, refused)``: a :class:`CropDeletion`.

    Raises:
        CropLocationError: (``config``) a relative path but no root; nothing was deleted.
        StorageError: a crop that exists could not be removed (permissions, an
            unreachable S3 server); crops deleted before it stay deleted, and running
            the deletion again finishes the job.
    """
    located: list[tuple[str, tuple[Storage, str]]] = []
    refused: list[str] = []
    for item in stored:
        if item is None or not os.fspath(item).strip():
            continue
        text = os.fspath(item)
        try:
            located.append((text, crop_object(text, root, confine=True)))
        except CropLocationError as error:
            if error.code == "config":
                raise
            refused.append(text)
    targets = [target for _, target in located]
    remote = any(storage.scheme == "s3" for storage, _ in targets)
    if remote and workers > 1 and len(targets) > 1:
        with ThreadPoolExecutor(min(workers, len(targets)), thread_name_prefix="crop-delete") as pool:
            outcomes = list(pool.map(_delete_one, targets))
    else:
        outcomes = [_delete_one(target) for target in targets]
    deleted = [text for (text, _), removed in zip(located, outcomes) if removed]
    missing = [text for (text, _), removed in zip(located, outcomes) if not removed]
    return CropDeletion(deleted, missing, refused)


# -- batches -------------------------------------------------------------------------------------


class CropReader:
    """Reads crops of one store, many at a time.

    Args:
        root: the crops root (default: none; relative paths then fail).
        workers: concurrent reads in :meth:`read_many`.

    Example::

        reader = CropReader(crops_root_for(store.url))
        for blob in reader.read_many(paths, errors="return"):
            ...
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, *, workers: int = _WORKERS) -> None:
        self.root = None if root is None else os.fspath(root)
        self.workers = max(1, int(workers))

    def locate(self, stored: str | os.PathLike[str]) -> tuple[Storage, str]:
        """``(storage, key)`` of one crop (see :func:`crop_object`)."""
        return crop_object(stored, self.root)

    def read(self, stored: str | os.PathLike[str]) -> bytes:
        """One crop's bytes (see :func:`read_crop`)."""
        storage, key = crop_object(stored, self.root)
        return storage.get_bytes(key)

    def _read_or_error(self, stored) -> bytes | StorageError:
        try:
            return self.read(stored)
        except StorageError as error:
            return error

    def read_many(self, stored: Sequence[str | os.PathLike[str]], *,
                  errors: Literal["raise", "return"] = "raise") -> list[bytes | StorageError]:
        """The bytes of many crops, in the order given, read concurrently.

        Args:
            stored: crop locations.
            errors: ``raise`` the first failure (in input order), or ``return`` each
                failure (a :class:`StorageError` / :class:`CropLocationError`) in its place.
        """
        stored = list(stored)
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', not {errors!r}")
        function = self.read if errors == "raise" else self._read_or_error
        if self.workers == 1 or len(stored) < 2:
            return [function(item) for item in stored]
        with ThreadPoolExecutor(min(self.workers, len(stored)), thread_name_prefix="crop-read") as pool:
            return list(pool.map(function, stored))

    def __repr__(self) -> str:
        return f"CropReader(root={self.root!r})"
