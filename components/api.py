"""The small verb-style face API: detect, align, embed, distance, verify.

Use it as ``import faces`` (the top-level package :mod:`faces` re-exports these verbs).

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

from components.detect import CROP_SIZE, Face, align_face
from components.images import load_image
from components.settings import Settings, load_settings


@lru_cache(maxsize=1)
def _settings() -> Settings:
    return load_settings()


@lru_cache(maxsize=1)
def _engine():
    from components.engine import FaceEngine, champion_model

    # The registry's champion when a tracking URI is configured, else the local model.
    return FaceEngine(_settings().detect, champion_model(_settings()))


def detect(image: np.ndarray) -> list[Face]:
    """Faces in one photo, most confident first, each aligned and quality-scored."""
    return _engine().detect([image])[0].faces


def align(image: np.ndarray, landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The (size, size, 3) crop with the landmarks moved onto the embedder's template."""
    return align_face(image, landmarks, size)


def embed(crops: np.ndarray) -> np.ndarray:
    """(N, 128) unit-norm embeddings of (N, 150, 150, 3) uint8 aligned crops."""
    return _engine().embed(crops)


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine distance (1 - similarity) between embeddings; broadcasts over rows."""
    return 1.0 - np.sum(np.asarray(a) * np.asarray(b), axis=-1)


def verify(photo_a: str | Path | np.ndarray, photo_b: str | Path | np.ndarray, threshold: float | None = None) -> dict:
    """Is the person of photo B anywhere in photo A?

    B's main face (its usable face nearest the centre, :func:`components.engine.main_face_index`)
    is compared with every usable face of A; the best match decides.

    Args:
        photo_a: a path or an RGB array (a group photo, say).
        photo_b: a path or an RGB array (the person looked for).
        threshold: cosine similarity at or above which it is the same person; default the
            model's own calibrated verify threshold.

    Returns:
        JSON-ready dict: ``same``, the best ``similarity``, ``threshold``, ``faces`` found in
        each photo, ``match`` (index in A of the best face), ``faces_a`` (every face of A with
        box, similarity and quality failures), ``face_b`` and the model; ``same`` is None
        (with ``error``) when a photo has no face.
    """
    from components.engine import verify_faces

    engine = _engine()
    threshold = engine.model.thresholds.verify if threshold is None else float(threshold)
    images = [load_image(p) if not isinstance(p, np.ndarray) else p for p in (photo_a, photo_b)]
    photos = engine.analyse(images)
    result: dict = {"faces": [len(photo.faces) for photo in photos], "threshold": threshold,
                    **engine.model.describe()}
    missing = [name for name, photo in zip("ab", photos) if not photo.faces]
    if missing:
        result.update(similarity=None, same=None, match=None, error=f"no face found in photo {' and '.join(missing)}",
                      faces_a=[{"box": [round(v, 1) for v in face.box], "similarity": None,
                                "quality_failures": face.failures} for face in photos[0].faces],
                      face_b=None if photos[1].main_face is None else {
                          "box": [round(v, 1) for v in photos[1].main_face.box],
                          "quality_failures": photos[1].main_face.failures})
        return result
    a, b = photos
    if all(face.embedding is None for face in a.faces) or b.main_face.embedding is None:
        engine.embed_faces(photos, all_faces=True)  # no usable face: compare the faces there are
    core = verify_faces(a.faces, b.faces, b.main, threshold)
    result.update(
        same=core["same"], similarity=core["similarity"], match=core["match"],
        faces_a=[{"box": [round(v, 1) for v in face.box], "similarity": similarity, "quality_failures": face.failures}
                 for face, similarity in zip(a.faces, core["similarities"])],
        face_b={"box": [round(v, 1) for v in b.main_face.box], "quality_failures": b.main_face.failures},
    )
    return result
