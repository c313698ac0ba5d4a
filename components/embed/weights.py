"""Download, verify and decode face-api.js's FaceRecognitionNet weights.

The weights come from the npm tarball of ``@vladmandic/face-api``; only two
files are taken out of it. Every file is checked against a pinned sha256 so a
changed upstream package can never silently change the embeddings.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

PACKAGE_VERSION = "1.7.15"
TARBALL_URL = f"https://registry.npmjs.org/@vladmandic/face-api/-/face-api-{PACKAGE_VERSION}.tgz"
TARBALL_NAME = f"face-api-{PACKAGE_VERSION}.tgz"
TARBALL_SHA256 = "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031"

BIN_NAME = "face_recognition_model.bin"
BIN_SHA256 = "b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589"
BIN_SIZE = 6_444_032
MANIFEST_NAME = "face_recognition_model-weights_manifest.json"
MANIFEST_SHA256 = "cbaffa501b0b9275a12b63357a6843e7e30c054e1c9151e1a5f879b26e32986b"

# Member path inside the tarball -> (file name in the cache, expected sha256).
_MEMBERS = {
    f"package/model/{BIN_NAME}": (BIN_NAME, BIN_SHA256),
    f"package/model/{MANIFEST_NAME}": (MANIFEST_NAME, MANIFEST_SHA256),
}

_DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20

# How tfjs stores float32 tensors: as-is, or quantized to unsigned integers.
_STORED_DTYPES = {"float32": np.float32, "uint8": np.uint8, "uint16": np.uint16}


class WeightsChecksumError(ValueError):
    """A weights file does not have the pinned sha256."""

    def __init__(self, path: Path, expected: str, actual: str) -> None:
        self.path = Path(path)
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"sha256 mismatch for {self.path}: expected {expected}, got {actual}. "
            "The file is corrupt or not the pinned release; delete it to fetch it again."
        )


def sha256_file(path: Path) -> str:
    """Returns the hex sha256 of a file, read in chunks.

    Args:
        path: File to hash.

    Returns:
        Lower-case hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raises WeightsChecksumError unless ``path`` hashes to ``expected``.

    Args:
        path: File to check.
        expected: Expected lower-case hex sha256.

    Raises:
        WeightsChecksumError: On mismatch.
    """
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsChecksumError(path, expected, actual)


def _atomic_write(dest: Path, write, expected_sha256: str) -> None:
    """Writes via ``write(fileobj)`` to a temp file, verifies it, renames it to ``dest``.

    The temp file lives next to ``dest`` so the rename is atomic; a failed or
    mismatching write removes only that temp file.
    """
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        actual = sha256_file(tmp)
        if actual != expected_sha256:
            # Report the destination name: the temp name means nothing to the caller.
            raise WeightsChecksumError(dest, expected_sha256, actual)
        # mkstemp creates 0600; the cache is shared read-only data.
        tmp.chmod(0o644)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _download_tarball(dest: Path) -> None:
    def write(f):
        with urllib.request.urlopen(TARBALL_URL, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            shutil.copyfileobj(response, f, _CHUNK)

    _atomic_write(dest, write, TARBALL_SHA256)


def fetch_weights(cache_dir: Path) -> tuple[Path, Path]:
    """Makes the verified FaceRecognitionNet weights available in ``cache_dir``.

    Downloads the pinned npm tarball only when the extracted files are not
    already there, and extracts only the two weight files from it. Files that
    already exist are verified, never overwritten or deleted.

    Args:
        cache_dir: Directory for the tarball and the extracted files; created
            if missing.

    Returns:
        ``(bin_path, manifest_path)``.

    Raises:
        WeightsChecksumError: If the tarball or an extracted file does not
            have its pinned sha256.
        urllib.error.URLError: If the download fails.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    outputs = {member: cache_dir / name for member, (name, _) in _MEMBERS.items()}

    missing = [member for member, path in outputs.items() if not path.exists()]
    if missing:
        tarball = cache_dir / TARBALL_NAME
        if not tarball.exists():
            _download_tarball(tarball)
        verify_sha256(tarball, TARBALL_SHA256)
        with tarfile.open(tarball, "r:gz") as tar:
            for member in missing:
                # extractfile reads the member's bytes only, so no path in the
                # archive can make us write outside cache_dir.
                src = tar.extractfile(member)
                if src is None:
                    raise ValueError(f"{tarball}: {member} is not a regular file")
                with src:
                    _atomic_write(
                        outputs[member], lambda f: shutil.copyfileobj(src, f, _CHUNK), _MEMBERS[member][1]
                    )

    for member, path in outputs.items():
        verify_sha256(path, _MEMBERS[member][1])
    bin_member, manifest_member = _MEMBERS
    return outputs[bin_member], outputs[manifest_member]


def load_manifest_weights(bin_path: Path, manifest_path: Path) -> dict[str, np.ndarray]:
    """Decodes a tfjs weights manifest and its binary into numpy arrays.

    Tensors are stored back to back in manifest order. Quantized tensors are
    stored as unsigned integers and decoded as ``raw * scale + min``.

    Args:
        bin_path: The concatenated weight data (all shards of all groups).
        manifest_path: The ``*-weights_manifest.json`` describing it.

    Returns:
        Weight name -> array with the manifest's shape; quantized tensors and
        float32 tensors come back as float32.

    Raises:
        ValueError: If a dtype is unsupported (only float32 tensors, stored
            raw or quantized to uint8/uint16, are) or the byte count does not
            match the size of ``bin_path``.
    """
    groups = json.loads(Path(manifest_path).read_text())
    data = Path(bin_path).read_bytes()

    weights: dict[str, np.ndarray] = {}
    offset = 0
    for group in groups:
        for spec in group["weights"]:
            name, shape = spec["name"], tuple(spec["shape"])
            quant = spec.get("quantization")
            stored = quant["dtype"] if quant else spec["dtype"]
            if spec["dtype"] != "float32" or stored not in _STORED_DTYPES:
                raise ValueError(f"{manifest_path}: {name} has unsupported dtype {stored!r}")
            dtype = np.dtype(_STORED_DTYPES[stored]).newbyteorder("<")
            count = int(np.prod(shape, dtype=np.int64))
            nbytes = count * dtype.itemsize
            if offset + nbytes > len(data):
                raise ValueError(
                    f"{bin_path} has {len(data)} bytes but the manifest needs more (ran out at {name})"
                )
            raw = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
            offset += nbytes
            if quant:
                # tfjs dequantizes in float64 and stores float32; do the same to match it.
                weights[name] = (raw.astype(np.float64) * quant["scale"] + quant["min"]).astype(np.float32)
            else:
                weights[name] = raw.astype(np.float32)
    if offset != len(data):
        raise ValueError(f"{bin_path} has {len(data)} bytes but the manifest describes {offset}")
    return weights
