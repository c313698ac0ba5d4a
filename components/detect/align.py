"""Face alignment: a similarity transform of five landmarks onto a fixed template.

The template is the one the pretrained dlib-ResNet embedder expects (150x150 crops);
an ArcFace-style 112 px template scaled to 150 loses most of the accuracy, so the
numbers here matter.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

CROP_SIZE = 150

# (x, y) in the 150x150 crop, in MTCNN's landmark order:
# left eye, right eye, nose, mouth left, mouth right (left/right as seen in the image).
TEMPLATE_150 = np.array(
    [
        [46.79, 45.03],
        [101.83, 44.60],
        [73.43, 78.41],
        [50.38, 106.91],
        [99.56, 106.53],
    ],
    dtype=np.float64,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation).

    Umeyama's closed form (1991), restricted to proper rotations so a face is never
    mirrored.

    Args:
        src: (K, 2) source points (x, y).
        dst: (K, 2) destination points, same order.

    Returns:
        (2, 3) matrix M with ``dst ~= M[:, :2] @ src + M[:, 2]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two matching (K>=2, 2) point sets, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rotation = u @ sign @ vt
    src_var = (src_c**2).sum() / len(src)
    if src_var == 0:
        raise ValueError("source points are all identical")
    scale = (singular * np.diag(sign)).sum() / src_var
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Warp a face so its landmarks land on the template.

    Args:
        image: (H, W, 3) uint8 RGB photo.
        landmarks: (5, 2) pixel coordinates (x, y) in MTCNN order.
        size: output side in pixels; the template is scaled from 150.

    Returns:
        (size, size, 3) uint8 RGB aligned crop; areas outside the photo are black.
    """
    template = TEMPLATE_150 * (size / CROP_SIZE)
    # PIL puts pixel centres at +0.5 while landmarks and template count pixel indices;
    # shifting both keeps the crop from drifting by up to half a pixel with scale.
    forward = similarity_transform(np.asarray(landmarks) + 0.5, template + 0.5)
    # PIL maps output pixels back to input pixels, so it wants the inverse transform.
    inverse = np.linalg.inv(np.vstack([forward, [0.0, 0.0, 1.0]]))[:2]
    warped = Image.fromarray(image).transform(
        (size, size), Image.Transform.AFFINE, data=tuple(inverse.ravel()), resample=Image.Resampling.BILINEAR
    )
    return np.asarray(warped, dtype=np.uint8)
