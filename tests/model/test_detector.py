"""Model tests for components.detect.FaceDetector: the real MTCNN on real LFW photos."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.datasets.lfw import read_pairs
from components.detect import CROP_SIZE, FaceDetector
from components.detect.detector import downscale, rows_to_boxes
from components.settings import DetectParams

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
LFW_ROOT = REPO / "data" / "lfw"
LFW = LFW_ROOT / "images_deepfunneled"
PHOTO = LFW / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"
KEYPOINTS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")  # our landmark order


def load(path: Path) -> np.ndarray:
    if not path.exists():
        pytest.skip(f"LFW image not available: {path}")
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()  # the engine's detector: detect.mode fast


@pytest.fixture(scope="module")
def package_detector(detector) -> FaceDetector:
    """The detector before the fast one (the mtcnn package on batches), sharing the networks."""
    return FaceDetector(replace(DetectParams(), mode="package"), networks=detector.mtcnn)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return load(PHOTO)


@pytest.fixture(scope="module")
def photo_faces(detector, photo):
    return detector.detect([photo])[0]


@pytest.fixture(scope="module")
def eight_photos() -> list[np.ndarray]:
    try:
        pairs = [p for p in read_pairs(LFW_ROOT) if p.fold == 1 and p.same][:4]
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return [load(p.path_a) for p in pairs] + [load(p.path_b) for p in pairs]


def test_one_confident_passed_face_near_the_centre(photo, photo_faces):
    assert len(photo_faces) == 1
    face = photo_faces[0]
    assert face.passed, face.failures
    assert face.failures == []
    assert face.confidence > 0.99
    x, y, w, h = face.box
    height, width = photo.shape[:2]
    centre = np.array([x + w / 2, y + h / 2])
    assert np.linalg.norm(centre - [width / 2, height / 2]) < 0.1 * width
    assert 60 < w < 140 and 80 < h < 160  # LFW faces fill about a third of the 250 px photo
    assert face.size == min(w, h)
    assert face.crop.shape == (CROP_SIZE, CROP_SIZE, 3)
    assert face.crop.dtype == np.uint8
    assert face.landmarks.shape == (5, 2)
    # landmarks lie inside the box and in anatomical order
    assert np.all((face.landmarks[:, 0] > x) & (face.landmarks[:, 0] < x + w))
    assert np.all((face.landmarks[:, 1] > y) & (face.landmarks[:, 1] < y + h))
    left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    assert face.blur > 0


def test_row_layout_matches_mtcnn_json_output(package_detector, photo):
    reference = package_detector.mtcnn.detect_faces(photo)  # the package's own JSON (x, y pairs by name)
    assert len(reference) == 1
    ours = package_detector.detect([photo])[0][0]
    expected = np.array([reference[0]["keypoints"][name] for name in KEYPOINTS], dtype=np.float64)
    np.testing.assert_allclose(ours.landmarks, expected, atol=1.0)
    np.testing.assert_allclose(ours.box, reference[0]["box"], atol=1.0)
    assert ours.confidence == pytest.approx(float(reference[0]["confidence"]), abs=1e-6)


def test_rows_to_boxes_reads_x_then_y_and_scales():
    row = np.array([[0, 10, 20, 110, 140, 0.9, 1, 2, 3, 4, 5, 11, 12, 13, 14, 15]], dtype=np.float64)
    [(box, landmarks, confidence)] = rows_to_boxes(row, 2.0)
    assert box == (20.0, 40.0, 200.0, 240.0)
    np.testing.assert_array_equal(landmarks, [[2, 22], [4, 24], [6, 26], [8, 28], [10, 30]])
    assert confidence == 0.9


def test_batched_detection_equals_per_photo_detection(detector, eight_photos):
    batched = detector.detect(eight_photos)
    single = [detector.detect([image])[0] for image in eight_photos]

    assert len(batched) == 8
    for together, alone in zip(batched, single):
        assert len(together) == len(alone) >= 1
        for a, b in zip(together, alone):
            np.testing.assert_allclose(a.box, b.box, atol=1.0)
            np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1.0)
            assert a.confidence == pytest.approx(b.confidence, abs=1e-3)


def test_fast_mode_finds_the_package_faces_on_lfw(detector, package_detector, eight_photos):
    # Same networks, thresholds and box arithmetic; the pyramid's levels are resampled
    # differently (area-averaged once from the photo, then from that copy; sizes rounded,
    # not truncated), so P-Net proposes slightly different windows and the refined faces
    # agree closely, not exactly (measured on 40 LFW photos: box IoU 0.79-0.99, median 0.96;
    # landmarks within 5.2% of the face's size, median 1.4%).
    from components.bench.detect import iou

    fast, package = detector.detect(eight_photos), package_detector.detect(eight_photos)
    for ours, theirs in zip(fast, package):
        assert len(ours) == len(theirs) >= 1
        for face in theirs:
            overlap = iou(np.array([f.box for f in ours]), np.array(face.box))[:, 0]
            twin = ours[int(overlap.argmax())]
            assert overlap.max() > 0.75
            assert np.linalg.norm(twin.landmarks - face.landmarks, axis=1).max() < 0.08 * face.size
            assert twin.confidence == pytest.approx(face.confidence, abs=0.05)


def test_fast_mode_runs_rnet_and_onet_on_the_full_photo(photo, photo_faces):
    # A photo twice as large, P-Net capped at 300 px: the faces are the 250 px photo's, doubled,
    # because the boxes are refined on crops of the full 500 px photo.
    height, width = photo.shape[:2]
    big = np.asarray(Image.fromarray(photo).resize((2 * width, 2 * height), Image.Resampling.BILINEAR))
    faces = FaceDetector(DetectParams(max_side=300)).detect([big])[0]
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, 2 * np.array(photo_faces[0].box), atol=6.0)
    np.testing.assert_allclose(faces[0].landmarks, 2 * photo_faces[0].landmarks, atol=5.0)


def test_packed_pnet_equals_pnet_on_each_level(detector, eight_photos):
    # The whole pyramid of a batch in packed canvases gives P-Net's windows on each level alone.
    import tensorflow as tf

    from components.detect.fast_mtcnn import _normalise
    from components.detect.pyramid import PNET_CELL, PNET_STRIDE, level_map, pack, strip_width

    fast = detector.fast
    levels, _, _ = fast.pyramid(eight_photos[:3])
    sizes = [level.shape[:2] for level in levels]
    width = strip_width(sizes, 10**9)
    placements, heights = pack(sizes, width, 10**9)
    assert len(heights) == 1
    canvas = np.zeros((heights[0], width, 3), np.float32)
    for level, place in zip(levels, placements):
        canvas[place.top : place.top + place.height, place.left : place.left + place.width] = _normalise(level)
    _, packed = fast._pnet(canvas[None])
    owner = level_map(placements, 0, *canvas.shape[:2])
    for index, (level, place) in enumerate(zip(levels, placements)):
        _, alone = fast._pnet(tf.constant(_normalise(level)[None]))
        rows = (place.height - PNET_CELL) // PNET_STRIDE + 1
        cols = (place.width - PNET_CELL) // PNET_STRIDE + 1
        top, left = place.top // PNET_STRIDE, place.left // PNET_STRIDE
        assert (owner[top : top + rows, left : left + cols] == index).all()
        np.testing.assert_allclose(packed.numpy()[0, top : top + rows, left : left + cols],
                                   alone.numpy()[0, :rows, :cols], atol=1e-4)


def test_large_photo_gives_boxes_in_original_coordinates(photo, photo_faces):
    height, width = photo.shape[:2]
    big = np.asarray(Image.fromarray(photo).resize((2 * width, 2 * height), Image.Resampling.BILINEAR))
    small_detector = FaceDetector(DetectParams(mode="package", max_side=300))

    faces = small_detector.detect([big])[0]

    assert len(faces) == 1
    original = FaceDetector(DetectParams(mode="package"), networks=small_detector.mtcnn).detect([photo])[0][0]
    box = np.array(faces[0].box)
    expected = 2 * np.array(original.box)
    # MTCNN sees a 300 px photo instead of 250 px, so the box moves a little (measured: up to
    # 5.3 px on the 2x scale, landmarks up to 4.2 px); a missing or inverted factor is off by >100 px.
    np.testing.assert_allclose(box, expected, atol=8.0)
    np.testing.assert_allclose(faces[0].landmarks, 2 * original.landmarks, atol=6.0)
    assert faces[0].crop.shape == (CROP_SIZE, CROP_SIZE, 3)
    # exactly: the detection on the downscaled photo, mapped back by the scale factor
    small, factor = downscale(big, 300)
    assert small.shape == (300, 300, 3)
    assert factor == pytest.approx(2 * width / 300)
    [(box_small, landmarks_small, _)] = small_detector.locate([small])[0]
    np.testing.assert_allclose(box, np.array(box_small) * factor, atol=1e-3)
    np.testing.assert_allclose(faces[0].landmarks, landmarks_small * factor, atol=1e-3)


def test_blank_grey_image_has_no_faces(detector):
    grey = np.full((250, 250, 3), 128, dtype=np.uint8)
    assert detector.detect([grey]) == [[]]


def test_mixed_sizes_and_a_blank_keep_their_order(detector, photo, photo_faces):
    grey = np.full((120, 200, 3), 128, dtype=np.uint8)
    results = detector.detect([grey, photo, grey])
    assert [len(faces) for faces in results] == [0, 1, 0]
    np.testing.assert_allclose(results[1][0].box, photo_faces[0].box, atol=1.0)
