"""The fast MTCNN's pyramid and packing (pure numpy) and the detection benchmark's matching."""

from __future__ import annotations

import numpy as np
import pytest

from components.bench.detect import Truth, compose, iou, match, score
from components.detect.pyramid import (
    PNET_CELL,
    level_cells,
    level_map,
    level_size,
    output_side,
    pack,
    proposals,
    pyramid_scales,
    smallest_face,
    strip_width,
)


def test_smallest_face_is_relative_to_the_photo_with_a_floor_and_a_cap():
    assert smallest_face((250, 250), 20, 0.033, 1280) == 20  # small photo: the floor
    assert smallest_face((1080, 1920), 20, 0.033, 1280) == pytest.approx(35.64)  # full HD: 3.3% of 1080
    assert smallest_face((1080, 1920), 20, 0.0, 1280) == 20  # asked for 20 px everywhere
    assert smallest_face((6000, 8000), 20, 0.0, 1280) == pytest.approx(75.0)  # P-Net's input capped at 1280 px
    assert smallest_face((30, 40), 5, 0.0, 1280) == PNET_CELL  # never enlarged


def test_pyramid_goes_down_to_one_window():
    scales = pyramid_scales((250, 250), 20, 0.709)
    assert scales[0] == pytest.approx(0.6)
    assert np.allclose(np.array(scales[1:]) / np.array(scales[:-1]), 0.709)
    assert 250 * scales[-1] >= PNET_CELL > 250 * scales[-1] * 0.709
    assert pyramid_scales((10, 300), 20, 0.709) == []  # shorter than one window at any scale


def test_packing_places_every_level_without_overlap_at_even_corners():
    rng = np.random.default_rng(0)
    sizes = []
    for shape in [(1080, 1920), (250, 250), (720, 1280), (3000, 4000), (250, 250)]:
        smallest = smallest_face(shape, 20, 0.033, 1280)
        sizes += [level_size(shape, scale) for scale in pyramid_scales(shape, smallest, 0.709)]
    rng.shuffle(sizes)
    width = strip_width(sizes, 500_000)
    placements, heights = pack(sizes, width, max(max(h for h, _ in sizes), 500_000 // width))
    assert len(heights) > 1  # the memory bound split the batch
    taken = [np.zeros((height, width), bool) for height in heights]
    for (height, level_width), place in zip(sizes, placements):
        assert (place.height, place.width) == (height, level_width)
        assert place.top % 2 == 0 and place.left % 2 == 0
        region = taken[place.canvas][place.top : place.top + height, place.left : place.left + level_width]
        assert region.shape == (height, level_width) and not region.any()
        region[:] = True
    used = sum(h * w for h, w in sizes) / sum(h * width for h in heights)
    assert used > 0.8  # measured: 0.9 on this mix


def test_level_map_reads_only_windows_wholly_inside_a_level():
    placements, heights = pack([(40, 60), (28, 42), (20, 30)], 128, 1000)
    owner = level_map(placements, 0, heights[0], 128)
    assert owner.shape == (output_side(heights[0]), output_side(128))
    for index, place in enumerate(placements):
        rows, cols = np.nonzero(owner == index)
        assert (2 * rows >= place.top).all() and (2 * rows + PNET_CELL <= place.top + place.height).all()
        assert (2 * cols >= place.left).all() and (2 * cols + PNET_CELL <= place.left + place.width).all()
        r, c = level_cells(place)
        assert len(rows) == (r.stop - r.start) * (c.stop - c.start)


def test_proposals_map_a_window_back_to_the_photo():
    placements, heights = pack([(120, 200)], 256, 1000)  # one level: the photo at scale 0.5
    out_h, out_w = output_side(heights[0]), output_side(256)
    scores, regression = np.zeros((out_h, out_w)), np.zeros((out_h, out_w, 4))
    scores[10, 20] = 0.9
    found = proposals(scores, regression, level_map(placements, 0, heights[0], 256), placements,
                      np.array([3.0]), np.array([[0.5, 0.5]]), 0.6)
    # The package's window: corners at 2i+1 and 2i+12 in the level, divided by the scale.
    np.testing.assert_allclose(found, [[3, 82, 42, 104, 64, 0.9, 0]])


def test_matching_counts_hits_misses_false_and_ignored_detections():
    truth = Truth(np.array([[0, 0, 100, 100], [300, 300, 40, 40]], float), np.zeros((2, 5, 2)),
                  ignore=np.array([[600, 0, 50, 50]], float))
    found = [((5, 5, 100, 100), np.zeros((5, 2)), 0.99),   # the first face
             ((0, 0, 90, 95), np.zeros((5, 2)), 0.90),     # a second box on it: false
             ((600, 2, 50, 48), np.zeros((5, 2)), 0.97),   # a bystander: ignored
             ((900, 900, 30, 30), np.zeros((5, 2)), 0.80)]  # nothing there: false
    result = match(found, truth)
    assert result["matched"].tolist() == [0, -1]
    assert result["false"].tolist() == [False, True, False, True]
    scored = score([found], [truth], min_confidence=0.95)
    assert scored["recall"]["recall"] == 0.5
    assert scored["recall_by_size"]["40-59"] == {"faces": 1, "found": 0, "recall": 0.0}
    assert scored["precision"] == pytest.approx(1 / 3, abs=1e-4)
    assert scored["precision_at_min_confidence"] == 1.0
    assert iou(np.array([0, 0, 10, 10]), np.array([5, 0, 10, 10]))[0, 0] == pytest.approx(1 / 3)


def test_composed_photo_puts_each_face_at_its_size_where_it_was_pasted():
    from components.bench.detect import Source

    rng = np.random.default_rng(1)
    face = np.zeros((250, 250, 3), np.uint8)
    face[100:150, 90:160] = 255  # a white "face" box at x 90-160, y 100-150
    source = Source(face, np.array([90, 100, 70, 50], float), np.array([[100, 110]] * 5, float), np.empty((0, 4)))
    image, truth = compose([source, source], [40.0, 200.0], rng)
    assert image.shape == (1080, 1920, 3)
    np.testing.assert_allclose(sorted(truth.sizes), [40, 200], atol=1.0)
    for x, y, w, h in truth.boxes:
        inside = image[int(y) + 2 : int(y + h) - 2, int(x) + 2 : int(x + w) - 2]
        assert inside.min() > 200  # the white box is where the truth says
