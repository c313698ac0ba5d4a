"""The small verb-style face API: detect, align, embed, distance, verify.

Arrays in, arrays out. Models load lazily on first use and are shared by the
calls of one process. Conventions:

* images are (H, W, 3) uint8 RGB numpy arrays (use :func:`components.images.load_image`
  for files: it honours EXIF orientation and refuses corrupt or huge files);
* boxes are (x, y, width, height) in pixels;
* landmarks are (5, 2) (x, y): left eye, right eye, nose, mouth left, mouth right;
* aligned crops are 150x150 RGB; embeddings are 128-D and L2-normalised;
* similarity is the cosine (dot product of embeddings): about 0.9 and above for the
  same person with the default model (see ``verify.threshold`` in params.yaml).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from components.detect import CROP_SIZE, Face, FaceDetector, align_face
from components.embed import Embedder
from components.images import load_image
from components.settings import Settings, load_settings


@lru_cache(maxsize=1)
def _settings() -> Settings:
    return load_settings()


@lru_cache(maxsize=1)
def _detector() -> FaceDetector:
    return FaceDetector(_settings().detect)


@lru_cache(maxsize=1)
def _embedder() -> Embedder:
    settings = _settings()
    if not settings.model_path.exists():
        raise FileNotFoundError(f"no embedder at {settings.model_path}: run `make setup` (or `faces setup-model`)")
    return Embedder(settings.model_path, batch_size=settings.embed.batch_size)


def detect(image: np.ndarray) -> list[Face]:
    """Faces in one photo, most confident first, each aligned and quality-scored."""
    return _detector().detect([image])[0]


def align(image: np.ndarray, landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The (size, size, 3) crop with the landmarks moved onto the embedder's template."""
    return align_face(image, landmarks, size)


def embed(crops: np.ndarray) -> np.ndarray:
    """(N, 128) unit-norm embeddings of (N, 150, 150, 3) uint8 aligned crops."""
    return _embedder().embed(crops)


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine distance (1 - similarity) between embeddings; broadcasts over rows."""
    return 1.0 - np.sum(np.asarray(a) * np.asarray(b), axis=-1)


def verify(photo_a: str | Path | np.ndarray, photo_b: str | Path | np.ndarray, threshold: float | None = None) -> dict:
    """Are the main faces of two photos the same person?

    The main face of a photo is its largest usable face (quality gates passed), or
    its largest face when none passes.

    Args:
        photo_a: a path or an RGB array.
        photo_b: a path or an RGB array.
        threshold: cosine similarity at or above which it is the same person;
            default ``verify.threshold`` from params.yaml.

    Returns:
        JSON-ready dict: faces found in each photo, similarity, threshold, same, and
        ``model_version``; ``same`` is None (with ``error``) when a photo has no face.
    """
    threshold = _settings().verify.threshold if threshold is None else float(threshold)
    images = [load_image(p) if not isinstance(p, np.ndarray) else p for p in (photo_a, photo_b)]
    detections = _detector().detect(images)
    result: dict = {
        "faces": [len(faces) for faces in detections],
        "threshold": threshold,
        "model_version": _embedder().version,
    }
    missing = [name for name, faces in zip("ab", detections) if not faces]
    if missing:
        result.update(similarity=None, same=None, error=f"no face found in photo {' and '.join(missing)}")
        return result
    main = [max(faces, key=lambda f: (f.passed, f.size)) for faces in detections]
    vectors = embed(np.stack([face.crop for face in main]))
    similarity = float(vectors[0] @ vectors[1])
    result.update(
        similarity=round(similarity, 4),
        same=similarity >= threshold,
        boxes=[[round(v, 1) for v in face.box] for face in main],
        quality_failures=[face.failures for face in main],
    )
    return result
