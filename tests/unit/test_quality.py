"""Unit tests for components.detect.quality: the blur measure and the quality gates."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from components.detect.quality import blur_score, quality_failures

GATES = {"min_confidence": 0.95, "min_face_px": 40.0, "min_blur": 0.005}


def checkerboard(side: int = 150, square: int = 10, low: int = 0, high: int = 255) -> np.ndarray:
    ys, xs = np.mgrid[0:side, 0:side]
    grey = np.where((xs // square + ys // square) % 2 == 0, low, high).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


# -- blur_score -------------------------------------------------------------------------


def test_sharp_checkerboard_scores_far_higher_than_blurred():
    sharp = checkerboard()
    blurred = np.round(gaussian_filter(sharp.astype(np.float64), sigma=(2.0, 2.0, 0))).astype(np.uint8)

    sharp_score, blurred_score = blur_score(sharp), blur_score(blurred)

    assert sharp_score > 0.1
    assert blurred_score < sharp_score / 10


def test_more_blur_lowers_the_score_monotonically():
    sharp = checkerboard().astype(np.float64)
    scores = [
        blur_score(np.round(gaussian_filter(sharp, sigma=(s, s, 0))).astype(np.uint8)) for s in (0.5, 1.0, 2.0, 4.0)
    ]
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) == 4


@pytest.mark.parametrize("value", [0, 128, 255])
def test_flat_image_scores_zero(value):
    assert blur_score(np.full((150, 150, 3), value, dtype=np.uint8)) == 0.0


def test_single_bright_pixel_has_known_score():
    # grey = R = G = B (weights sum to 1); the Laplacian is -4 at the pixel and 1 at its four
    # neighbours, so its variance over 25 pixels is (16 + 4) / 25 - 0^2 = 0.8; the grey
    # variance is 1/25 - (1/25)^2 = 0.0384, so the score is 0.8 / 0.0384.
    image = np.zeros((5, 5, 3), dtype=np.uint8)
    image[2, 2] = 1
    assert blur_score(image) == pytest.approx(0.8 / 0.0384, rel=1e-9)


def test_score_does_not_depend_on_contrast_or_brightness():
    # A darker or flatter photo of the same face must not look blurrier.
    low = blur_score(checkerboard(low=100, high=120))
    high = blur_score(checkerboard(low=100, high=140))
    dark = blur_score(checkerboard(low=10, high=50))
    assert high == pytest.approx(low, rel=1e-9)
    assert dark == pytest.approx(low, rel=1e-9)


def test_score_is_the_same_whichever_channel_carries_the_detail():
    board = checkerboard()[..., 0]
    red, green = np.zeros((150, 150, 3), np.uint8), np.zeros((150, 150, 3), np.uint8)
    red[..., 0], green[..., 1] = board, board
    assert blur_score(green) == pytest.approx(blur_score(red), rel=1e-9)


# -- quality_failures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("low_confidence", "too_small", "blurry"), list(itertools.product([False, True], repeat=3))
)
def test_quality_failures_names_exactly_the_failed_gates(low_confidence, too_small, blurry):
    failures = quality_failures(
        0.90 if low_confidence else 0.999,
        30.0 if too_small else 80.0,
        0.001 if blurry else 0.05,
        **GATES,
    )
    expected = [name for name, failed in (("low_confidence", low_confidence), ("too_small", too_small),
                                          ("blurry", blurry)) if failed]
    assert failures == expected


def test_quality_failures_values_at_the_threshold_pass():
    assert quality_failures(0.95, 40.0, 0.005, **GATES) == []


def test_quality_failures_just_below_each_threshold_fail():
    assert quality_failures(0.9499, 40.0, 0.005, **GATES) == ["low_confidence"]
    assert quality_failures(0.95, 39.9, 0.005, **GATES) == ["too_small"]
    assert quality_failures(0.95, 40.0, 0.00499, **GATES) == ["blurry"]
