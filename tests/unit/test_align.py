"""Unit tests for components.detect.align: the similarity transform and the face warp."""

from __future__ import annotations

import numpy as np
import pytest

from components.detect.align import CROP_SIZE, TEMPLATE_150, align_face, similarity_transform

PALETTE = np.array(
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [255, 255, 0]], dtype=np.float64
)  # one colour per landmark, in MTCNN order


def rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


# -- similarity_transform ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("angle", "scale", "shift"),
    [(0.0, 1.0, (0.0, 0.0)), (0.3, 1.7, (12.0, -5.0)), (-2.5, 0.4, (-80.0, 140.0)), (np.pi, 3.0, (1.0, 2.0))],
)
def test_similarity_transform_recovers_known_transform(angle, scale, shift):
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 200, size=(5, 2))
    linear = scale * rotation(angle)
    dst = src @ linear.T + np.array(shift)

    matrix = similarity_transform(src, dst)

    assert matrix.shape == (2, 3)
    np.testing.assert_allclose(matrix[:, :2], linear, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-7)
    np.testing.assert_allclose(apply(matrix, src), dst, atol=1e-7)


def test_similarity_transform_maps_landmarks_onto_template():
    landmarks = TEMPLATE_150 @ (2.2 * rotation(0.2)).T + np.array([40.0, 60.0])
    matrix = similarity_transform(landmarks, TEMPLATE_150)
    np.testing.assert_allclose(apply(matrix, landmarks), TEMPLATE_150, atol=1e-9)
    # the inverse scale and rotation
    np.testing.assert_allclose(matrix[:, :2], rotation(-0.2) / 2.2, atol=1e-12)


def test_similarity_transform_is_least_squares_under_noise():
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 100, size=(20, 2))
    linear = 1.3 * rotation(0.7)
    dst = src @ linear.T + [5.0, 7.0] + rng.normal(0, 0.01, size=src.shape)
    matrix = similarity_transform(src, dst)
    np.testing.assert_allclose(matrix[:, :2], linear, atol=1e-3)
    np.testing.assert_allclose(matrix[:, 2], [5.0, 7.0], atol=0.05)


@pytest.mark.parametrize("seed", range(5))
def test_similarity_transform_never_reflects(seed):
    rng = np.random.default_rng(seed)
    src = rng.uniform(0, 150, size=(5, 2))
    mirrored = src * [-1.0, 1.0] + [300.0, 0.0]  # a mirror image: the best fit would be a reflection

    matrix = similarity_transform(src, mirrored)

    linear = matrix[:, :2]
    assert np.linalg.det(linear) > 0
    # still a similarity: scaled rotation, linear @ linear.T == s^2 I
    gram = linear @ linear.T
    np.testing.assert_allclose(gram, gram[0, 0] * np.eye(2), atol=1e-9)


def test_similarity_transform_of_template_mirror_is_proper():
    mirrored = TEMPLATE_150 * [-1.0, 1.0] + [CROP_SIZE, 0.0]
    matrix = similarity_transform(mirrored, TEMPLATE_150)
    assert np.linalg.det(matrix[:, :2]) > 0


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (np.zeros((5, 3)), np.zeros((5, 3))),  # not 2-D points
        (np.ones((5, 2)), np.ones((4, 2))),  # different counts
        (np.ones(10), np.ones(10)),  # flat arrays
        (np.array([[1.0, 2.0]]), np.array([[3.0, 4.0]])),  # one point
        (np.zeros((0, 2)), np.zeros((0, 2))),  # none
    ],
)
def test_similarity_transform_rejects_bad_shapes(src, dst):
    with pytest.raises(ValueError):
        similarity_transform(src, dst)


def test_similarity_transform_rejects_identical_source_points():
    src = np.full((5, 2), 42.0)
    with pytest.raises(ValueError, match="identical"):
        similarity_transform(src, TEMPLATE_150)


# -- align_face ---------------------------------------------------------------------------


def dot_image(landmarks: np.ndarray, height: int, width: int, sigma: float) -> np.ndarray:
    """Black image with a Gaussian blob of a distinct colour centred on each landmark."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros((height, width, 3))
    for (x, y), colour in zip(landmarks, PALETTE):
        blob = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
        blob[blob < 1e-3] = 0
        image += blob[..., None] * colour
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def dot_centres(crop: np.ndarray) -> np.ndarray:
    """Intensity-weighted centroid (x, y) of each palette colour in a crop."""
    pixels = crop.astype(np.float64)
    intensity = pixels.sum(axis=2)
    lit = intensity > 20
    directions = pixels / np.maximum(np.linalg.norm(pixels, axis=2, keepdims=True), 1e-9)
    palette = PALETTE / np.linalg.norm(PALETTE, axis=1, keepdims=True)
    nearest = np.argmax(directions @ palette.T, axis=2)
    ys, xs = np.mgrid[0 : crop.shape[0], 0 : crop.shape[1]]
    centres = []
    for k in range(len(PALETTE)):
        mask = lit & (nearest == k)
        assert mask.sum() > 3, f"landmark {k} is missing from the crop"
        w = intensity[mask]
        centres.append([np.sum(xs[mask] * w) / w.sum(), np.sum(ys[mask] * w) / w.sum()])
    return np.array(centres)


@pytest.mark.parametrize(
    ("angle", "scale", "shift"),
    [(0.0, 1.0, (20.0, 30.0)), (0.25, 1.6, (60.0, 40.0)), (-0.4, 2.5, (120.0, 10.0)), (0.1, 0.8, (5.0, 50.0))],
)
def test_align_face_moves_landmarks_onto_template(angle, scale, shift):
    landmarks = TEMPLATE_150 @ (scale * rotation(angle)).T + np.array(shift)
    image = dot_image(landmarks, height=480, width=560, sigma=2.0 * scale)

    crop = align_face(image, landmarks)

    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3)
    assert crop.dtype == np.uint8
    error = np.linalg.norm(dot_centres(crop) - TEMPLATE_150, axis=1)
    assert error.max() < 1.5, error


@pytest.mark.parametrize("size", [112, 300])
def test_align_face_size_scales_the_template(size):
    landmarks = TEMPLATE_150 @ (1.8 * rotation(-0.15)).T + np.array([70.0, 45.0])
    image = dot_image(landmarks, height=450, width=450, sigma=3.0)

    crop = align_face(image, landmarks, size=size)

    assert crop.shape == (size, size, 3)
    error = np.linalg.norm(dot_centres(crop) - TEMPLATE_150 * (size / CROP_SIZE), axis=1)
    assert error.max() < 1.5 * size / CROP_SIZE, error


def test_align_face_fills_outside_the_photo_with_black():
    # a face whose template lies partly left of the photo: the left columns of the crop are outside
    landmarks = TEMPLATE_150 - [60.0, 0.0]
    image = np.full((200, 200, 3), 200, dtype=np.uint8)
    crop = align_face(image, landmarks)
    assert np.all(crop[:, :55] == 0)
    assert np.all(crop[:, 65:] == 200)
