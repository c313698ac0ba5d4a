"""Objects as files under a local folder (the default backend)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from components.storage.base import ObjectInfo, Storage, StorageError, check_key, check_prefix

__all__ = ["LocalStorage"]

# Hidden, and with a marker no user file has: listings skip them, so a write killed
# midway leaves nothing that looks like an object.
_PARTIAL = re.compile(r"^\..+\.[0-9a-f]{12}\.partial$")


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


class LocalStorage(Storage):
    """Objects as files under ``root``; key ``a/b.jpg`` is the file ``root/a/b.jpg``.

    Writes go to a hidden temporary file in the target folder, are flushed to disk,
    then renamed over the target, so a reader (or a crash) never sees half a file.

    Args:
        root: the folder; created on the first write.
    """

    scheme = "file"

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().resolve()

    # -- helpers ------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.root / check_key(key, self.uri())

    @contextmanager
    def _errors(self, key: str):
        try:
            yield
        except StorageError:
            raise
        except FileNotFoundError as exc:
            raise StorageError(self.uri(key), "not_found", "no such object") from exc
        except PermissionError as exc:
            raise StorageError(self.uri(key), "access_denied", f"permission denied: {_describe(exc)}") from exc
        except IsADirectoryError as exc:
            raise StorageError(self.uri(key), "not_found", "no such object (it is a folder)") from exc
        except OSError as exc:
            raise StorageError(self.uri(key), "io", _describe(exc)) from exc

    @contextmanager
    def _atomic(self, target: Path):
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.partial")
        try:
            with open(temp, "wb") as file:
                yield file
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)

    # -- the interface --------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        with self._errors(key), self._atomic(target) as file:
            file.write(data)

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        target = self._path(key)
        with self._errors(key):
            with open(path, "rb") as source, self._atomic(target) as file:
                shutil.copyfileobj(source, file, 1 << 20)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        with self._errors(key):
            return path.read_bytes()

    def get_file(self, key: str, path: str | os.PathLike[str]) -> Path:
        source = self._path(key)
        path = Path(path)
        with self._errors(key):
            with open(source, "rb") as reader, self._atomic(path) as file:
                shutil.copyfileobj(reader, file, 1 << 20)
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        with self._errors(key):
            with open(path, "rb") as file:
                digest = hashlib.file_digest(file, "md5").hexdigest()
            return ObjectInfo(key, os.path.getsize(path), digest)

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix, self.uri())
        # Walk only the folder the prefix names (not the whole root), then filter.
        folder = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        if not folder.is_dir():
            return iter(())
        found = []
        for directory, _, files in os.walk(folder):
            base = Path(directory)
            for name in files:
                if _PARTIAL.match(name):
                    continue
                key = (base / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    try:
                        found.append(ObjectInfo(key, os.path.getsize(base / name)))
                    except OSError:  # removed while listing
                        continue
        # S3 lists in byte order of the keys; sorting the whole list (not folder by
        # folder) gives the same order here ("a-c" before "a/b").
        return iter(sorted(found, key=lambda info: info.key.encode()))

    def uri(self, key: str = "") -> str:
        return str(self.root / key) if key else str(self.root)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._errors(key):
            path.unlink(missing_ok=True)
            # Drop folders the removal emptied, up to the root, so listings stay clean.
            parent = path.parent
            while parent != self.root:
                try:
                    parent.rmdir()  # only succeeds on an empty folder
                except OSError:
                    break
                parent = parent.parent
