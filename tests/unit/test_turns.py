"""Coordinates found in a turned photo map back onto the photo (components.detect.detector)."""

from __future__ import annotations

import numpy as np
import pytest

from components.detect import Face
from components.detect.detector import turn_box_back, turn_points_back
from components.settings import DetectParams


@pytest.mark.parametrize("turn", [90, 180, 270])
def test_a_pixel_found_in_the_turned_photo_is_the_same_pixel_of_the_photo(turn):
    height, width = 7, 11
    image = np.zeros((height, width), np.uint8)
    for row, col in [(1, 2), (5, 9), (0, 10), (6, 0)]:
        image[:] = 0
        image[row, col] = 255
        turned = np.rot90(image, k=turn // 90)
        found_row, found_col = np.argwhere(turned == 255)[0]
        centre = np.array([[found_col + 0.5, found_row + 0.5]])  # (x, y) of the pixel's centre
        back = turn_points_back(centre, turn, image.shape)
        assert back.tolist() == [[col + 0.5, row + 0.5]]


@pytest.mark.parametrize("turn", [90, 180, 270])
def test_a_box_found_in_the_turned_photo_covers_the_same_pixels(turn):
    height, width = 20, 30
    image = np.zeros((height, width), np.uint8)
    image[4:9, 10:22] = 1  # rows 4-8, columns 10-21: box (10, 4, 12, 5)
    turned = np.rot90(image, k=turn // 90)
    rows, cols = np.nonzero(turned)
    box = (cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min())
    assert turn_box_back(box, turn, image.shape) == (10.0, 4.0, 12.0, 5.0)


def test_a_turn_goes_over_the_wire_and_defaults_to_upright():
    face = Face((1.0, 2.0, 3.0, 4.0), np.zeros((5, 2)), 0.99, None, 1.0, [], rotation=90)
    assert Face.from_wire(face.to_wire()).rotation == 90
    wire = face.to_wire()
    del wire["rotation"]  # a face from an older service
    assert Face.from_wire(wire).rotation == 0


def test_only_quarter_turns_are_accepted():
    assert DetectParams().try_rotations == (90, 270)
    with pytest.raises(ValueError, match="try_rotations"):
        DetectParams(try_rotations=(45,))
    with pytest.raises(ValueError, match="90, 180 or 270"):
        turn_points_back(np.zeros((1, 2)), 45, (10, 10))
