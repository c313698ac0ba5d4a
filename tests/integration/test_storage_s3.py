"""S3Storage against a real S3 server (SeaweedFS on loopback): round trips, resume after a kill, errors."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from components.storage import StorageError, open_object, open_storage, sync_folder
from components.storage.s3 import S3Storage

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def s3_env(seaweedfs_s3, monkeypatch):
    for name, value in seaweedfs_s3.env().items():
        monkeypatch.setenv(name, value)
    return seaweedfs_s3


def test_round_trip_upload_list_read_delete(s3_env, tmp_path):
    store = open_storage(f"s3://{s3_env.new_bucket()}/photos/batch-1")  # bucket created on first write
    assert isinstance(store, S3Storage)
    big = tmp_path / "big.bin"
    big.write_bytes(np.random.default_rng(0).bytes(7 * 2**20))  # above 5 MiB: a multipart upload

    store.put_bytes("a.jpg", b"\xff\xd8 first")
    store.put_file("sub/big.bin", big)

    assert list(store.list()) == ["a.jpg", "sub/big.bin"]
    assert list(store.list("sub/")) == ["sub/big.bin"]
    assert store.get_bytes("a.jpg") == b"\xff\xd8 first"
    assert store.get_file("sub/big.bin", tmp_path / "back.bin").read_bytes() == big.read_bytes()
    assert store.stat("a.jpg").etag == hashlib.md5(b"\xff\xd8 first").hexdigest()
    assert "-" in store.stat("sub/big.bin").etag  # multipart ETag is not an MD5 ...
    assert store.same_content("sub/big.bin", big)  # ... so the recorded SHA-256 decides
    assert store.uri("a.jpg") == f"s3://{store.bucket}/photos/batch-1/a.jpg"
    parent, key = open_object(store.uri("sub/big.bin"))
    assert parent.stat(key).size == big.stat().st_size

    store.delete("a.jpg")
    store.delete("a.jpg")  # idempotent
    assert not store.exists("a.jpg") and list(store.list()) == ["sub/big.bin"]
    with pytest.raises(StorageError) as raised:
        store.get_bytes("a.jpg")
    assert raised.value.code == "not_found" and raised.value.uri.endswith("photos/batch-1/a.jpg")


def test_reading_a_missing_bucket_says_so(s3_env):
    store = open_storage(f"s3://{s3_env.new_bucket('absent')}")
    with pytest.raises(StorageError, match="does not exist") as raised:
        list(store.list())
    assert raised.value.code == "not_found"
    assert not store.exists("x")


@pytest.mark.parametrize("access_key, secret_key", [("faces-test-key", "wrong-secret"), ("nobody", "whatever")])
def test_wrong_credentials_give_a_clear_error(s3_env, access_key, secret_key):
    good = open_storage(f"s3://{s3_env.new_bucket()}")
    good.put_bytes("x.jpg", b"x")
    bad = S3Storage(good.bucket, endpoint=s3_env.endpoint_url.split("://")[1], access_key=access_key,
                    secret_key=secret_key, secure=False)

    for action in (lambda: bad.get_bytes("x.jpg"), lambda: bad.put_bytes("y.jpg", b"y"), lambda: list(bad.list())):
        with pytest.raises(StorageError) as raised:
            action()
        assert raised.value.code == "access_denied"
        assert "AWS_ACCESS_KEY_ID" in raised.value.reason
    assert list(good.list()) == ["x.jpg"]  # the refused PUT left nothing


CHILD = """
import sys
from components.storage import open_storage, sync_folder
sync_folder(sys.argv[1], open_storage(sys.argv[2]), sys.argv[3], progress=False)
"""


def test_sync_resumes_after_a_kill_with_every_object_once_and_intact(s3_env, tmp_path):
    rng = np.random.default_rng(1)
    source = tmp_path / "photos"
    expected: dict[str, bytes] = {}
    for index in range(300):
        size = 6 * 2**20 if index % 150 == 75 else int(rng.integers(1_000, 40_000))  # two multipart uploads
        data = rng.bytes(size)
        name = f"person_{index // 10:03d}/img_{index:04d}.jpg"
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
        expected[f"batch-7/{name}"] = data
    uri = f"s3://{s3_env.new_bucket()}/raw"
    store = open_storage(uri)
    keys = sorted(expected, key=str.encode)

    child = subprocess.Popen([sys.executable, "-c", CHILD, str(source), uri, "batch-7"], cwd=PROJECT_ROOT,
                             env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    seen_sizes_ok = True
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            try:
                listed = list(store.list_info())
            except StorageError as error:  # the child has not created the bucket yet
                assert error.code == "not_found"
                listed = []
            # A partial object would show up with fewer bytes than its file.
            seen_sizes_ok &= all(info.size == len(expected["batch-7/" + info.key.split("/", 1)[1]])
                                 for info in listed)
            if len(listed) >= len(keys) // 3:
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait(timeout=10)
    listed_before_kill = [info.key for info in store.list_info()]
    assert child.returncode == -signal.SIGKILL, "the upload finished before it could be killed: use more files"
    assert seen_sizes_ok
    assert len(keys) // 3 <= len(listed_before_kill) < len(keys)

    result = sync_folder(source, store, "batch-7", progress=False)

    assert sorted(result.skipped + result.uploaded, key=str.encode) == keys
    assert set(result.skipped) >= set(listed_before_kill) - {listed_before_kill[-1]}  # at most the last one redone
    listed = list(store.list())
    assert listed == keys  # each object exactly once, nothing else
    for key in keys:
        assert store.get_bytes(key) == expected[key], key
    assert sync_folder(source, store, "batch-7", progress=False).uploaded == []


def test_a_failed_s3_batch_is_validated_and_quarantined_on_s3(s3_env, tmp_path):
    import json

    from components.settings import ValidateParams
    from components.validate import image_table, quarantine, validate_images

    bucket = s3_env.new_bucket()
    incoming = open_storage(f"s3://{bucket}/incoming/batch-3")
    photo = next((PROJECT_ROOT / "data" / "lfw" / "images_deepfunneled" / "Aaron_Peirsol").glob("*.jpg"))
    incoming.put_file("a.jpg", photo)
    incoming.put_bytes("broken.jpg", photo.read_bytes()[:500])  # cut off mid-upload by a client
    keys = list(incoming.list())

    report = validate_images(image_table(keys, storage=incoming), ValidateParams(), batch_id="batch-3",
                             docs_dir=tmp_path / "docs")
    assert {row: checks for row, checks in report.failed_rows.items()} == {"broken.jpg": ["decodable"]}

    uri = quarantine(f"s3://{bucket}/incoming/batch-3", report.message(), report=report,
                     quarantine_uri=f"s3://{bucket}/quarantine")

    area, base = open_object(uri)
    copied = sorted(area.list(base + "/"))
    assert f"{base}/batch/a.jpg" in copied and f"{base}/batch/broken.jpg" in copied
    assert any(key.startswith(f"{base}/validation/images/") and key.endswith("index.html") for key in copied)
    record = json.loads(area.get_bytes(f"{base}/QUARANTINE.json"))
    assert record["source"] == f"s3://{bucket}/incoming/batch-3" and record["failures"][0]["row"] == "broken.jpg"
    assert sorted(incoming.list()) == sorted(keys)  # nothing moved or deleted
