"""Upload a folder tree to a storage, resumably, and copy between storages."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from components.storage.base import Storage, StorageError

__all__ = ["SyncResult", "copy_prefix", "sync_folder"]


@dataclass
class SyncResult:
    """What a sync did.

    Attributes:
        uploaded: keys written by this call.
        skipped: keys already present with the same content (a resumed or repeated sync).
        bytes_uploaded: total size of the uploaded files.
    """

    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0


def _local_files(src_dir: Path, include_hidden: bool) -> list[Path]:
    files = []
    for directory, subdirs, names in os.walk(src_dir):
        if not include_hidden:
            subdirs[:] = [name for name in subdirs if not name.startswith(".")]
        for name in names:
            if include_hidden or not name.startswith("."):
                path = Path(directory) / name
                if path.is_file():
                    files.append(path)
    return sorted(files, key=lambda path: path.relative_to(src_dir).as_posix().encode())


def _join(prefix: str, relative: str) -> str:
    return f"{prefix.rstrip('/')}/{relative}" if prefix.strip("/") else relative


def sync_folder(src_dir: str | os.PathLike[str], storage: Storage, prefix: str = "", *,
                include_hidden: bool = False, progress: bool = True, workers: int = 4) -> SyncResult:
    """Upload every file under ``src_dir`` to ``storage`` under ``prefix``, resuming where a previous run stopped.

    Keys are ``prefix/<path relative to src_dir>``. One listing of the prefix tells
    what is already stored; a file whose object has the same size and content (MD5
    against the ETag, or the SHA-256 recorded at upload for multipart objects) is
    skipped, anything else is (re-)uploaded. Each upload is atomic (an S3 PUT, or a
    temp file renamed into place locally), so a run killed midway leaves only
    complete objects and the next run picks up the rest. Nothing is ever deleted.

    Args:
        src_dir: the local folder (walked recursively, in key order).
        storage: where to upload.
        prefix: key prefix for the uploaded objects.
        include_hidden: also upload names starting with ``.`` (``.DS_Store``, ...).
        progress: show a tqdm progress bar (files, with counts in the postfix).
        workers: uploads in flight at once (threads; S3 round trips dominate small files).

    Returns:
        What was uploaded and what was skipped, each in key order.

    Raises:
        NotADirectoryError: ``src_dir`` is not a folder.
        StorageError: the storage failed (unreachable, credentials refused, ...); uploads
            not yet started are cancelled, finished ones stay (the next run skips them).
    """
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise NotADirectoryError(f"cannot upload {src_dir}: not a folder")
    files = _local_files(src_dir, include_hidden)
    try:
        stored = {info.key: info for info in storage.list_info(prefix.strip("/") + "/" if prefix.strip("/") else "")}
    except StorageError as error:
        if error.code != "not_found":  # a bucket not created yet holds nothing; the first PUT creates it
            raise
        stored = {}
    result = SyncResult()

    def upload(path: Path, key: str) -> tuple[str, int, bool]:
        info = stored.get(key)
        if info is not None and storage.same_content(key, path, info.size, info.etag):
            return key, 0, False
        storage.put_file(key, path)
        return key, path.stat().st_size, True

    with tqdm(total=len(files), desc=f"upload to {storage.uri(prefix)}", unit="file", disable=not progress) as bar, \
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(upload, path, _join(prefix, path.relative_to(src_dir).as_posix())) for path in files]
        try:
            for future in as_completed(futures):
                key, size, uploaded = future.result()
                (result.uploaded if uploaded else result.skipped).append(key)
                result.bytes_uploaded += size
                bar.update()
                bar.set_postfix(uploaded=len(result.uploaded), skipped=len(result.skipped), refresh=False)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    result.uploaded.sort(key=str.encode)
    result.skipped.sort(key=str.encode)
    return result


def copy_prefix(source: Storage, src_prefix: str, target: Storage, dst_prefix: str, *,
                progress: bool = False) -> SyncResult:
    """Copy every object under ``src_prefix`` of ``source`` to ``dst_prefix`` of ``target``.

    Objects already present in the target with the same size are skipped, so a
    copy killed midway resumes; the source is never modified.

    Returns:
        Target keys copied and skipped.
    """
    src_prefix = src_prefix.strip("/")
    listing_prefix = f"{src_prefix}/" if src_prefix else ""
    existing = {info.key: info.size for info in target.list_info(f"{dst_prefix.strip('/')}/" if dst_prefix.strip("/") else "")}
    result = SyncResult()
    objects = list(source.list_info(listing_prefix))
    for info in tqdm(objects, desc=f"copy to {target.uri(dst_prefix)}", unit="object", disable=not progress):
        key = _join(dst_prefix, info.key[len(listing_prefix):])
        if existing.get(key) == info.size:
            result.skipped.append(key)
            continue
        data = source.get_bytes(info.key)
        target.put_bytes(key, data)
        result.uploaded.append(key)
        result.bytes_uploaded += len(data)
    if not objects and not result.skipped:
        # A batch that names nothing is almost certainly a wrong URI; say so.
        raise StorageError(source.uri(src_prefix), "not_found", "nothing stored under this prefix")
    return result
