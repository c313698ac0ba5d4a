"""LocalStorage and the storage helpers: atomic writes, listings, keys, errors, resumable sync."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import pytest

from components.storage import (
    LocalStorage,
    StorageError,
    copy_prefix,
    open_object,
    open_storage,
    sync_folder,
)
from components.storage.s3 import S3Storage, s3_config_from_env


@pytest.fixture
def store(tmp_path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


def test_round_trip_bytes_and_files(store, tmp_path):
    store.put_bytes("raw/a.jpg", b"\xff\xd8abc")
    source = tmp_path / "b.bin"
    source.write_bytes(os.urandom(3000))
    store.put_file("raw/sub/b.bin", source)

    assert store.get_bytes("raw/a.jpg") == b"\xff\xd8abc"
    target = store.get_file("raw/sub/b.bin", tmp_path / "out" / "b.bin")
    assert target.read_bytes() == source.read_bytes()
    assert store.exists("raw/a.jpg") and not store.exists("raw/missing.jpg")
    assert store.stat("raw/sub/b.bin").size == 3000


def test_put_replaces_atomically_and_leaves_no_temp_files(store):
    store.put_bytes("k", b"first")
    store.put_bytes("k", b"second, longer")

    assert store.get_bytes("k") == b"second, longer"
    assert sorted(p.name for p in store.root.iterdir()) == ["k"]


def test_listing_is_sorted_like_s3_filtered_by_prefix_and_hides_partial_writes(store):
    for key in ("a/b", "a-c", "a/a/z", "b", "ab/x"):
        store.put_bytes(key, key.encode())
    # What a writer killed between open() and rename() leaves behind.
    (store.root / "a" / ".b.0123456789ab.partial").write_bytes(b"half")

    assert list(store.list()) == ["a-c", "a/a/z", "a/b", "ab/x", "b"]
    assert list(store.list("a/")) == ["a/a/z", "a/b"]
    assert list(store.list("a")) == ["a-c", "a/a/z", "a/b", "ab/x"]
    assert list(store.list("nothing/")) == []
    assert [info.size for info in store.list_info("a/")] == [5, 3]


def test_delete_is_idempotent_and_prunes_empty_folders(store):
    store.put_bytes("x/y/z.txt", b"1")
    store.put_bytes("x/keep.txt", b"2")

    store.delete("x/y/z.txt")
    store.delete("x/y/z.txt")

    assert list(store.list()) == ["x/keep.txt"]
    assert not (store.root / "x" / "y").exists()


@pytest.mark.parametrize("key", ["", "/abs", "../up", "a/../b", "a//b", "a/./b", "back\\slash", "nul\x00"])
def test_bad_keys_are_refused_before_touching_disk(store, key):
    with pytest.raises(StorageError) as raised:
        store.put_bytes(key, b"x")
    assert raised.value.code == "invalid_key"
    assert not store.root.exists()


def test_missing_key_error_names_the_object_and_pickles(store):
    with pytest.raises(StorageError) as raised:
        store.get_bytes("raw/none.jpg")
    error = raised.value
    assert error.code == "not_found"
    assert error.uri.endswith("raw/none.jpg") and "no such object" in str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.uri, copy.code, copy.reason) == (error.uri, error.code, error.reason)


def test_open_storage_and_object_uris(tmp_path):
    local = open_storage(tmp_path / "s")
    assert isinstance(local, LocalStorage) and local.uri() == str(tmp_path / "s")
    assert isinstance(open_storage(f"file://{tmp_path}/s"), LocalStorage)
    local.put_bytes("a/b.txt", b"hello")

    parent, key = open_object(local.uri("a/b.txt"))
    assert parent.get_bytes(key) == b"hello"

    with pytest.raises(StorageError, match="unsupported storage scheme") as raised:
        open_storage("gs://bucket/x")
    assert raised.value.code == "config"
    with pytest.raises(StorageError, match="needs a bucket"):
        open_storage("s3:///x")


def test_s3_settings_come_from_the_environment_with_clear_errors(monkeypatch):
    env = {"S3_ENDPOINT_URL": "https://minio.example:9000", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    config = s3_config_from_env(env)
    assert (config["endpoint"], config["secure"], config["region"]) == ("minio.example:9000", True, "us-east-1")

    with pytest.raises(StorageError, match="S3_ENDPOINT_URL is not set"):
        s3_config_from_env({})
    with pytest.raises(StorageError, match="AWS_SECRET_ACCESS_KEY not set"):
        s3_config_from_env({"S3_ENDPOINT_URL": "http://h:1", "AWS_ACCESS_KEY_ID": "k"})
    with pytest.raises(StorageError, match="without a path"):
        s3_config_from_env({**env, "S3_ENDPOINT_URL": "http://h:1/sub"})
    for name in ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(StorageError, match="S3_ENDPOINT_URL"):
        open_storage("s3://faces/raw")


def test_unreachable_s3_endpoint_gives_a_clear_error_quickly():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = S3Storage("faces", "raw", endpoint=f"127.0.0.1:{port}", access_key="k", secret_key="s", secure=False,
                      retries=0)
    with pytest.raises(StorageError) as raised:
        store.get_bytes("a.jpg")
    assert raised.value.code == "unreachable"
    assert f"127.0.0.1:{port}" in raised.value.reason and raised.value.uri == "s3://faces/raw/a.jpg"


def make_tree(root: Path) -> dict[str, bytes]:
    files = {"a.jpg": os.urandom(100), "sub/b.jpg": os.urandom(200), "sub/deeper/c.png": b"", ".DS_Store": b"junk"}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return {name: data for name, data in files.items() if not name.startswith(".")}


def test_sync_folder_uploads_once_then_skips_and_repairs_changed_objects(store, tmp_path):
    files = make_tree(tmp_path / "photos")

    first = sync_folder(tmp_path / "photos", store, "batch-1", progress=False)
    assert sorted(first.uploaded) == sorted(f"batch-1/{name}" for name in files)
    assert first.bytes_uploaded == sum(len(data) for data in files.values())
    for name, data in files.items():
        assert store.get_bytes(f"batch-1/{name}") == data

    store.put_bytes("batch-1/a.jpg", b"corrupted")  # e.g. an object overwritten by mistake
    again = sync_folder(tmp_path / "photos", store, "batch-1", progress=False)
    assert again.uploaded == ["batch-1/a.jpg"]
    assert len(again.skipped) == len(files) - 1
    assert store.get_bytes("batch-1/a.jpg") == files["a.jpg"]


def test_sync_folder_refuses_a_missing_folder(store, tmp_path):
    with pytest.raises(NotADirectoryError, match="not a folder"):
        sync_folder(tmp_path / "nope", store, progress=False)


def test_copy_prefix_copies_without_touching_the_source(store, tmp_path):
    store.put_bytes("in/b1/x.jpg", b"x")
    store.put_bytes("in/b1/sub/y.jpg", b"y")
    store.put_bytes("in/b10/z.jpg", b"z")  # shares the text prefix "in/b1", not the folder
    target = LocalStorage(tmp_path / "quarantine")

    result = copy_prefix(store, "in/b1", target, "q/b1")
    assert sorted(result.uploaded) == ["q/b1/sub/y.jpg", "q/b1/x.jpg"]
    assert copy_prefix(store, "in/b1", target, "q/b1").skipped == sorted(result.uploaded)
    assert list(store.list()) == ["in/b1/sub/y.jpg", "in/b1/x.jpg", "in/b10/z.jpg"]
    with pytest.raises(StorageError, match="nothing stored"):
        copy_prefix(store, "in/none", target, "q/none")
