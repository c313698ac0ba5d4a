"""The storage interface every backend implements, and its one error type.

Keys are relative, ``/``-separated names (``raw/2026-11-29/IMG_1.jpg``) under the
storage's root: a local folder or an S3 bucket and prefix. Writes are atomic: a
reader sees either no object or the whole object, never a part of one.
"""

from __future__ import annotations

import abc
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ObjectInfo", "Storage", "StorageError", "check_key", "file_digests"]


class StorageError(Exception):
    """A storage operation that failed, with the object it concerned and why.

    Attributes:
        uri: the object (or storage root) the operation was about, e.g. ``s3://faces/raw/a.jpg``.
        code: one of ``not_found``, ``access_denied``, ``unreachable``, ``invalid_key``,
            ``config`` (missing or malformed settings), ``io`` (anything else).
        reason: a sentence for people.
    """

    def __init__(self, uri: str, code: str, reason: str) -> None:
        # All fields go to Exception so the error pickles across process boundaries
        # (Airflow / Celery workers report it back).
        super().__init__(uri, code, reason)
        self.uri = uri
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.uri}: {self.reason} [{self.code}]"


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing says about one object.

    Attributes:
        key: the key, relative to the storage root.
        size: bytes.
        etag: the S3 ETag without quotes (the MD5 of the content for single-part
            uploads; ``<md5>-<parts>`` for multipart ones); for local files the MD5,
            computed only when asked for (``None`` in listings).
    """

    key: str
    size: int
    etag: str | None = None


def check_key(key: str, uri: str = "") -> str:
    """Validate an object key and return it.

    Raises:
        StorageError: (``invalid_key``) for empty keys, absolute keys, ``.``/``..`` or
            empty segments, backslashes or NUL characters: they would escape the root
            of a local storage or mean different objects on different backends.
    """
    if not isinstance(key, str) or not key:
        raise StorageError(uri or repr(key), "invalid_key", "an object key must be a non-empty string")
    parts = key.split("/")
    if key.startswith("/") or "\\" in key or "\x00" in key or any(part in ("", ".", "..") for part in parts):
        raise StorageError(
            uri or key, "invalid_key",
            f"invalid object key {key!r}: use relative '/'-separated names without '.', '..' or empty parts",
        )
    return key


def check_prefix(prefix: str, uri: str = "") -> str:
    """A listing prefix: empty, or a key that may end with ``/``."""
    if prefix:
        check_key(prefix.rstrip("/") or prefix, uri)
    return prefix


def file_digests(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(md5, sha256) hex digests of a file, read once in chunks."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            md5.update(chunk)
            sha256.update(chunk)
    return md5.hexdigest(), sha256.hexdigest()


class Storage(abc.ABC):
    """Objects under one root, addressed by key. Every write is atomic."""

    #: ``file:`` for local folders, ``s3`` for S3-compatible object stores.
    scheme: str = ""

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any previous object atomically."""

    @abc.abstractmethod
    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Store the content of a local file under ``key`` (atomically)."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object's content.

        Raises:
            StorageError: ``not_found`` when there is no such object.
        """

    @abc.abstractmethod
    def get_file(self, key: str, path: str | os.PathLike[str]) -> Path:
        """Download the object to a local file (temp name, then rename); returns the path."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abc.abstractmethod
    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, in key order, with sizes."""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size and content digest (ETag / MD5) of one object.

        Raises:
            StorageError: ``not_found`` when there is no such object.
        """

    @abc.abstractmethod
    def uri(self, key: str = "") -> str:
        """Where the object lives: an absolute local path, or ``s3://bucket/prefix/key``."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; removing one that does not exist is not an error (idempotent)."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with ``prefix``, in key order (recursive)."""
        return (info.key for info in self.list_info(prefix))

    def same_content(self, key: str, path: str | os.PathLike[str], size: int | None = None,
                     etag: str | None = None) -> bool:
        """Whether the object under ``key`` already holds exactly this local file.

        Cheap checks first: sizes must match (from a listing when given), then the
        MD5 against the ETag or, for multipart objects whose ETag is not an MD5, the
        SHA-256 recorded in the object's metadata at upload.
        """
        local_size = os.path.getsize(path)
        if size is not None and size != local_size:
            return False
        if etag is None:
            try:
                info = self.stat(key)
            except StorageError as error:
                if error.code == "not_found":
                    return False
                raise
            if info.size != local_size:
                return False
            etag = info.etag
        md5, sha256 = file_digests(path)
        if etag and "-" not in etag:
            return etag == md5
        return self._stored_sha256(key) == sha256

    def _stored_sha256(self, key: str) -> str | None:
        """SHA-256 recorded at upload (S3 metadata); backends without it return None."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri()!r})"
