"""The face engine's core: photos in, faces with embeddings out, and the main-face rule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from components.detect import Face, FaceDetector
from components.settings import DetectParams


def main_face_index(faces: Sequence[Face], image_shape: tuple[int, ...]) -> int | None:
    """The photo's main face: the usable face nearest the photo's centre.

    When no face passes the quality gates, the face nearest the centre. A photo of one
    person is framed on them (LFW, portraits, ID photos, the photo a folder is named
    after), so a bystander is rarely centred, whatever its size. This is the face a
    folder label names, and the face of photo B that ``verify`` looks for in photo A.

    Returns:
        Its index in ``faces``, or None for a photo without faces.
    """
    if not len(faces):
        return None
    centre = np.array([image_shape[1] / 2, image_shape[0] / 2])

    def key(index: int) -> tuple[bool, float]:
        x, y, w, h = faces[index].box
        return (not faces[index].passed, float(np.linalg.norm(np.array([x + w / 2, y + h / 2]) - centre)))

    return min(range(len(faces)), key=key)


@dataclass
class PhotoFaces:
    """The faces of one photo, most confident first, and which one is its main face."""

    faces: list[Face]
    main: int | None
    shape: tuple[int, int]  # (height, width) of the photo the faces were found in

    @property
    def main_face(self) -> Face | None:
        return None if self.main is None else self.faces[self.main]


class FaceEngine:
    """Detect, align, quality-gate and embed, with one model.

    Args:
        detect_params: MTCNN parameters and quality gates (the ``detect`` section).
        model: what embeds (:class:`~components.engine.models.FaceModel`, or anything with
            ``embedder`` and ``version``); may be given per call instead.
        max_faces: keep at most this many faces per photo (most confident first); None: all.
        detector: a detector to share (default: a new one on ``detect_params``).
    """

    def __init__(self, detect_params: DetectParams, model=None, *, max_faces: int | None = None,
                 detector: FaceDetector | None = None) -> None:
        self.detector = detector or FaceDetector(detect_params)
        self.model = model
        self.max_faces = max_faces

    def detect(self, images: Sequence[np.ndarray]) -> list[PhotoFaces]:
        """Faces of each photo (aligned, quality-scored), not embedded, with the main face chosen."""
        found = self.detector.detect(list(images)) if len(images) else []
        result = []
        for image, faces in zip(images, found):
            faces = faces[: self.max_faces] if self.max_faces is not None else faces
            result.append(PhotoFaces(faces, main_face_index(faces, image.shape), (int(image.shape[0]), int(image.shape[1]))))
        return result

    def embed(self, crops: np.ndarray, model=None) -> np.ndarray:
        """(N, D) unit embeddings of (N, 150, 150, 3) uint8 aligned crops."""
        return self._model(model).embedder.embed(np.asarray(crops))

    def embed_faces(self, photos: Sequence[PhotoFaces], *, model=None, all_faces: bool = False) -> None:
        """Embed the usable faces of the photos in one pass (every face with ``all_faces``), in place."""
        model = self._model(model)
        chosen = [face for photo in photos for face in photo.faces if all_faces or face.passed]
        if not chosen:
            return
        vectors = model.embedder.embed(np.stack([face.crop for face in chosen]))
        for face, vector in zip(chosen, vectors):
            face.embedding, face.model_version = vector, model.version

    def analyse(self, images: Sequence[np.ndarray], *, model=None, all_faces: bool = False) -> list[PhotoFaces]:
        """Detect, then embed: what every ingest path and the service call."""
        photos = self.detect(images)
        self.embed_faces(photos, model=model, all_faces=all_faces)
        return photos

    def _model(self, model):
        chosen = model if model is not None else self.model
        if chosen is None:
            raise ValueError("the engine has no model: give one to FaceEngine or to the call")
        return chosen


def verify_faces(faces_a: Sequence[Face], faces_b: Sequence[Face], main_b: int, threshold: float) -> dict:
    """Is the person of photo B anywhere in photo A?

    B's main face is compared with every usable face of A (every face when none is
    usable); the best match decides. Faces must carry embeddings of one model.

    Returns:
        ``same``, ``similarity`` (the best), ``threshold``, ``match`` (index in A of the
        best face) and ``similarities`` (one per face of A; None for a face not compared).
    """
    b = faces_b[main_b]
    compared = [index for index, face in enumerate(faces_a) if face.passed and face.embedding is not None]
    if not compared:
        compared = [index for index, face in enumerate(faces_a) if face.embedding is not None]
    versions = {faces_a[index].model_version for index in compared} | {b.model_version}
    if len(versions) > 1:
        raise ValueError(f"faces embedded by different models {sorted(map(str, versions))} cannot be compared")
    similarities: list[float | None] = [None] * len(faces_a)
    for index in compared:
        similarities[index] = float(np.dot(faces_a[index].embedding, b.embedding))
    best = max(compared, key=lambda index: similarities[index])
    return {"same": bool(similarities[best] >= threshold), "similarity": round(similarities[best], 4),
            "threshold": float(threshold), "match": best,
            "similarities": [None if value is None else round(value, 4) for value in similarities]}
