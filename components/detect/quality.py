"""Face quality measures and the gates built on them.

Gates never drop a face silently: every face is kept with the reasons it failed,
so a user can see why a photo produced no identity.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def blur_score(crop: np.ndarray) -> float:
    """Sharpness: variance of the Laplacian (Pech-Pacheco et al. 2000) over the grey variance.

    Measured on the aligned crop so that the score does not depend on how large the
    face was in the photo, and divided by the crop's own grey-level variance so that
    a dark or low-contrast photo is not mistaken for a blurry one (the plain
    Laplacian variance grows with the square of contrast). On LFW the subjects' faces
    score 0.018 at the median and 99% score above 0.005; tiny background faces,
    blown up to 150 px, mostly score below that. A flat image scores 0.

    Args:
        crop: (H, W, 3) uint8 RGB.
    """
    grey = crop.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    contrast = grey.var()
    if contrast < 1e-6:
        return 0.0
    return float(ndimage.laplace(grey).var() / contrast)


def quality_failures(
    confidence: float,
    face_px: float,
    blur: float,
    *,
    min_confidence: float,
    min_face_px: float,
    min_blur: float,
) -> list[str]:
    """Names of the quality gates a face fails (empty when it passes all).

    Args:
        confidence: detector confidence in [0, 1].
        face_px: shorter side of the detection box in original pixels.
        blur: :func:`blur_score` of the aligned crop.
    """
    failures = []
    if confidence < min_confidence:
        failures.append("low_confidence")
    if face_px < min_face_px:
        failures.append("too_small")
    if blur < min_blur:
        failures.append("blurry")
    return failures
