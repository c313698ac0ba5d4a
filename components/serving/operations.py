"""The answers of /verify, /identify and /embed, built from faces found by the engine.

Pure functions of faces, thresholds and the model description: no I/O, no models.
Coordinates come back in the pixels of the photo the client sent (photos shrunk for
detection are scaled back).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from components.detect import Face
from components.engine import PhotoFaces, verify_faces
from components.serving.errors import ServingError
from components.serving.identities import Match


def face_summary(face: Face, scale: float) -> dict:
    """Box (x, y, w, h) and landmarks in the uploaded photo's pixels, confidence, quality."""
    return {
        "box": [round(float(v) * scale, 1) for v in face.box],
        "landmarks": np.round(np.asarray(face.landmarks) * scale, 1).tolist(),
        "confidence": round(float(face.confidence), 4),
        "quality_failures": list(face.failures),
    }


def _require_faces(faces: Sequence[Face], field: str) -> None:
    if not faces:
        raise ServingError(422, "no_face", f"no face was found in {field}", field)


def verify_answer(photo_a: PhotoFaces, photo_b: PhotoFaces, scales: tuple[float, float], threshold: float,
                  model: dict) -> dict:
    """Is the person of ``photo_b`` anywhere in ``photo_a``?

    B's main face (:func:`components.engine.main_face_index`) is compared with every usable
    face of A; the best match decides. Only the two photos are compared: nothing from the
    identity store is read or told.

    Args:
        photo_a: faces of ``photo_a`` (a group photo, say).
        photo_b: faces of ``photo_b`` (the person looked for).
        scales: factor back to each uploaded photo's pixels.
        threshold: the model's verify threshold.
        model: the model description (:meth:`LoadedModel.describe`).

    Returns:
        ``same``, the best ``similarity``, ``threshold``, ``photo_a`` (the best-matching
        face of A), ``photo_b`` (B's main face), and ``faces_a``: every face of A with its
        similarity (None for a face that failed the quality gates).

    Raises:
        ServingError: 422 when a photo has no face.
    """
    _require_faces(photo_a.faces, "photo_a")
    _require_faces(photo_b.faces, "photo_b")
    core = verify_faces(photo_a.faces, photo_b.faces, photo_b.main, threshold)
    return {
        "same": core["same"],
        "similarity": core["similarity"],
        "threshold": threshold,
        "faces": [len(photo_a.faces), len(photo_b.faces)],
        "photo_a": face_summary(photo_a.faces[core["match"]], scales[0]),
        "photo_b": face_summary(photo_b.main_face, scales[1]),
        "faces_a": [{**face_summary(face, scales[0]), "similarity": similarity}
                    for face, similarity in zip(photo_a.faces, core["similarities"])],
        **model,
    }


def identify_answer(faces: Sequence[Face], matches: Sequence[Match] | None, scale: float, threshold: float,
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


def embed_answer(per_photo: Sequence[Sequence[Face]], scales: Sequence[float], model: dict) -> dict:
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
