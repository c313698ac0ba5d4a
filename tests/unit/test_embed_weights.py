"""Unit tests for components.embed.weights, hermetic (no network, tiny files)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from components.embed import weights
from components.embed.weights import WeightsChecksumError, load_manifest_weights, verify_sha256


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- checksums -------------------------------------------------------------


def test_verify_sha256_accepts_matching_file(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"\x00\x01\x02\x03" * 100)
    verify_sha256(path, _sha(path.read_bytes()))


def test_verify_sha256_raises_on_tampered_copy(tmp_path):
    original = bytes(range(256)) * 4
    good_sha = _sha(original)
    tampered = bytearray(original)
    tampered[123] ^= 0x01
    path = tmp_path / "face_recognition_model.bin"
    path.write_bytes(bytes(tampered))

    with pytest.raises(WeightsChecksumError) as excinfo:
        verify_sha256(path, good_sha)

    err = excinfo.value
    assert isinstance(err, ValueError)
    assert err.expected == good_sha and err.actual == _sha(bytes(tampered))
    message = str(err)
    assert "face_recognition_model.bin" in message and good_sha in message and err.actual in message
    assert path.exists(), "a mismatching file must not be deleted"


# --- fetch_weights on a fake package ----------------------------------------

BIN_BYTES = bytes(range(200))
MANIFEST_BYTES = b'[{"paths": ["face_recognition_model.bin"], "weights": []}]'


def _make_tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in [
            ("package/README.md", b"not extracted"),
            (f"package/model/{weights.BIN_NAME}", BIN_BYTES),
            (f"package/model/{weights.MANIFEST_NAME}", MANIFEST_BYTES),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def fake_package(monkeypatch):
    """Points weights.py at a tiny in-memory tarball and counts downloads."""
    tarball = _make_tarball()
    monkeypatch.setattr(weights, "TARBALL_SHA256", _sha(tarball))
    monkeypatch.setattr(
        weights,
        "_MEMBERS",
        {
            f"package/model/{weights.BIN_NAME}": (weights.BIN_NAME, _sha(BIN_BYTES)),
            f"package/model/{weights.MANIFEST_NAME}": (weights.MANIFEST_NAME, _sha(MANIFEST_BYTES)),
        },
    )
    state = {"downloads": 0, "payload": tarball}

    def fake_urlopen(url, timeout=None):
        assert url == weights.TARBALL_URL
        state["downloads"] += 1
        return io.BytesIO(state["payload"])

    monkeypatch.setattr(weights.urllib.request, "urlopen", fake_urlopen)
    return state


def test_fetch_weights_downloads_extracts_and_is_idempotent(tmp_path, fake_package):
    bin_path, manifest_path = weights.fetch_weights(tmp_path / "cache")

    assert fake_package["downloads"] == 1
    assert bin_path.read_bytes() == BIN_BYTES
    assert manifest_path.read_bytes() == MANIFEST_BYTES
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert files == sorted([weights.TARBALL_NAME, weights.BIN_NAME, weights.MANIFEST_NAME])

    # Extracted files present: no download, even without the tarball.
    (tmp_path / "cache" / weights.TARBALL_NAME).unlink()
    assert weights.fetch_weights(tmp_path / "cache") == (bin_path, manifest_path)
    assert fake_package["downloads"] == 1


def test_fetch_weights_reuses_cached_tarball(tmp_path, fake_package):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / weights.TARBALL_NAME).write_bytes(fake_package["payload"])

    weights.fetch_weights(cache)

    assert fake_package["downloads"] == 0


def test_fetch_weights_rejects_bad_download_and_leaves_nothing(tmp_path, fake_package):
    fake_package["payload"] = b"corrupted download"
    cache = tmp_path / "cache"

    with pytest.raises(WeightsChecksumError, match=weights.TARBALL_NAME):
        weights.fetch_weights(cache)

    assert list(cache.iterdir()) == [], "no half-written or bad file may stay visible"


def test_fetch_weights_raises_on_tampered_extracted_file_and_deletes_nothing(tmp_path, fake_package):
    cache = tmp_path / "cache"
    bin_path, manifest_path = weights.fetch_weights(cache)
    tampered = bytearray(BIN_BYTES)
    tampered[0] ^= 0xFF
    bin_path.write_bytes(bytes(tampered))
    before = sorted(p.name for p in cache.iterdir())

    with pytest.raises(WeightsChecksumError, match=weights.BIN_NAME):
        weights.fetch_weights(cache)

    assert sorted(p.name for p in cache.iterdir()) == before
    assert bin_path.read_bytes() == bytes(tampered)


# --- load_manifest_weights --------------------------------------------------


def _write(tmp_path: Path, manifest: list, data: bytes) -> tuple[Path, Path]:
    bin_path = tmp_path / "model.bin"
    manifest_path = tmp_path / "manifest.json"
    bin_path.write_bytes(data)
    manifest_path.write_text(json.dumps(manifest))
    return bin_path, manifest_path


@pytest.fixture
def tiny_model(tmp_path):
    q8 = np.array([[0, 1, 2], [253, 254, 255]], dtype=np.uint8)
    raw = np.array([1.5, -2.25, 3.0, 0.125], dtype="<f4")
    q16 = np.array([0, 1000, 65535], dtype="<u2")
    manifest = [
        {
            "paths": ["model.bin"],
            "weights": [
                {
                    "name": "a/filters",
                    "shape": [2, 3],
                    "dtype": "float32",
                    "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0},
                },
                {"name": "a/bias", "shape": [2, 2], "dtype": "float32"},
            ],
        },
        {
            "paths": ["model2.bin"],
            "weights": [
                {
                    "name": "fc",
                    "shape": [3],
                    "dtype": "float32",
                    "quantization": {"dtype": "uint16", "scale": 0.001, "min": 2.0},
                },
            ],
        },
    ]
    data = q8.tobytes() + raw.tobytes() + q16.tobytes()
    return manifest, data, q8, raw, q16


def test_load_manifest_weights_shapes_dtypes_and_dequantisation(tmp_path, tiny_model):
    manifest, data, q8, raw, q16 = tiny_model

    out = load_manifest_weights(*_write(tmp_path, manifest, data))

    assert list(out) == ["a/filters", "a/bias", "fc"]
    assert all(v.dtype == np.float32 for v in out.values())
    assert out["a/filters"].shape == (2, 3)
    np.testing.assert_array_equal(out["a/filters"], (q8.astype(np.float64) * 0.5 - 1.0).astype(np.float32))
    assert out["a/filters"][1, 2] == np.float32(126.5)
    assert out["a/bias"].shape == (2, 2)
    np.testing.assert_array_equal(out["a/bias"], raw.reshape(2, 2))
    np.testing.assert_allclose(out["fc"], [2.0, 3.0, 67.535], rtol=1e-6)


@pytest.mark.parametrize("change", [b"\x00", -1], ids=["extra-byte", "truncated"])
def test_load_manifest_weights_rejects_size_mismatch(tmp_path, tiny_model, change):
    manifest, data, *_ = tiny_model
    data = data + change if isinstance(change, bytes) else data[:change]

    with pytest.raises(ValueError, match="bytes"):
        load_manifest_weights(*_write(tmp_path, manifest, data))


def test_load_manifest_weights_rejects_unknown_dtype(tmp_path):
    manifest = [{"paths": ["m.bin"], "weights": [{"name": "x", "shape": [1], "dtype": "complex64"}]}]

    with pytest.raises(ValueError, match="unsupported dtype"):
        load_manifest_weights(*_write(tmp_path, manifest, b"\x00" * 8))
