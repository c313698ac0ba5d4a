"""The answers of /verify, /identify and /embed, built from faces found by the engine.

Pure functions of faces, thresholds and the model description: no I/O, no models.
Coordinates come back in the pixels of the photo the client sent (photos shrunk for
detection are scaled back).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from components.serving.engine import FaceResult
from components.serving.errors import ServingError
from components.serving.identities import Match


def main_face(faces: Sequence[FaceResult]) -> FaceResult:
    """The photo's subject: the largest usable face, or the largest face when none is usable.

    The same rule as :func:`components.api.verify`.
    """
    return max(faces, key=lambda face: (face.passed, face.size))


def face_summary(face: FaceResult, scale: float) -> dict:
    """Box (x, y, w, h) and landmarks in the uploaded photo's pixels, confidence, quality."""
    return {
        "box": [round(float(v) * scale, 1) for v in face.box],
        "landmarks": np.round(np.asarray(face.landmarks) * scale, 1).tolist(),
        "confidence": round(float(face.confidence), 4),
        "quality_failures": list(face.failures),
    }


def _require_faces(faces: Sequence[FaceResult], field: str) -> None:
    if not faces:
        raise ServingError(422, "no_face", f"no face was found in {field}", field)


def verify_answer(faces_a: Sequence[FaceResult], faces_b: Sequence[FaceResult], scales: tuple[float, float],
                  threshold: float, model: dict) -> dict:
    """Are the main faces of two photos the same person?

    Only the two photos are compared: nothing from the identity store is read or told.

    Args:
        faces_a: faces of ``photo_a``.
        faces_b: faces of ``photo_b``.
        scales: factor back to each uploaded photo's pixels.
        threshold: cosine similarity at or above which it is the same person.
        model: the model description (:meth:`LoadedModel.describe`).

    Raises:
        ServingError: 422 when a photo has no face.
    """
    _require_faces(faces_a, "photo_a")
    _require_faces(faces_b, "photo_b")
    a, b = main_face(faces_a), main_face(faces_b)
    similarity = float(np.dot(a.embedding, b.embedding))
    return {
        "same": bool(similarity >= threshold),
        "similarity": round(similarity, 4),
        "threshold": threshold,
        "faces": [len(faces_a), len(faces_b)],
        "photo_a": face_summary(a, scales[0]),
        "photo_b": face_summary(b, scales[1]),
        **model,
    }


def identify_answer(faces: Sequence[FaceResult], matches: Sequence[Match] | None, scale: float, threshold: float,
                    model: dict, unavailable: int = 0) -> dict:
    """Who is in the photo: every face with its box and identity (or ``unknown``).

    Faces that fail a quality gate are listed but not matched (``identity`` is
    ``unknown`` with ``reason``): a blurred or tiny face would be matched by chance.

    Args:
        faces: the photo's faces.
        matches: one per *usable* face, in order (None when no store is configured).
        scale: factor back to the uploaded photo's pixels.
        threshold: the similarity an identity needs (``identities.assign_threshold``).
        model: the model description.
        unavailable: identities left out of the comparison (see :class:`MedoidSet`).

    Raises:
        ServingError: 422 when the photo has no face.
    """
    _require_faces(faces, "photo")
    usable = iter(matches or [])
    answered = []
    for face in faces:
        entry = face_summary(face, scale)
        if not face.passed:
            entry.update(identity="unknown", id=None, name=None, similarity=None,
                         reason="failed quality gates: " + ", ".join(face.failures))
        else:
            match = next(usable)
            if match.identity_id is None:
                entry.update(identity="unknown", id=None, name=None, similarity=match.similarity)
            else:
                entry.update(identity=match.identity_id, id=match.identity_id, name=match.name,
                             similarity=match.similarity)
        answered.append(entry)
    answer = {"faces": answered, "threshold": threshold, **model}
    if unavailable:
        answer["identities_not_compared"] = unavailable
    return answer


def embed_answer(per_photo: Sequence[Sequence[FaceResult]], scales: Sequence[float], model: dict) -> dict:
    """Every face of every photo with its embedding."""
    return {
        "photos": [
            {"faces": [{**face_summary(face, scale), "embedding": np.round(face.embedding, 6).tolist()}
                       for face in faces]}
            for faces, scale in zip(per_photo, scales)
        ],
        **model,
    }


def embed_crops_answer(vectors: np.ndarray, model: dict) -> dict:
    """Embeddings of aligned crops, one per crop, in order."""
    return {"embeddings": np.round(np.asarray(vectors), 6).tolist(), **model}
