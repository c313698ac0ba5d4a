"""``faces bench detect`` run small: the fast detector loses no face of 40 px and more that the one before it finds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.settings import load_settings

pytestmark = pytest.mark.slow

LFW = Path(__file__).resolve().parents[2] / "data" / "lfw" / "images_deepfunneled"


def test_fast_detector_keeps_the_recall_of_faces_of_40_px_and_more(tmp_path):
    if not LFW.exists():
        pytest.skip("LFW not available (make setup)")
    from components.bench.detect import run_benchmark

    out = tmp_path / "detect.json"
    result = run_benchmark(load_settings(), out, composed=6, collages=4, lfw_photos=8, seed=3, progress=False)

    assert json.loads(out.read_text())["sets"].keys() == {"composed", "collages", "lfw_pairs"}
    composed = result["sets"]["composed"]
    assert composed["fast"]["recall_40_plus"]["faces"] >= 20  # the seeded set has enough faces to mean something
    for name in ("composed", "collages"):
        entry = result["sets"][name]
        # Boxes matched at IoU >= 0.5 to the known faces; a single face lost fails this.
        assert entry["fast"]["recall_40_plus"]["recall"] >= entry["current"]["recall_40_plus"]["recall"] - 0.005
        # A handful of photos: one detection moves precision by several points, so count them.
        assert entry["fast"]["false_detections"] <= entry["current"]["false_detections"] + 1
    assert result["sets"]["lfw_pairs"]["fast"]["main_face_found"] >= result["sets"]["lfw_pairs"]["current"]["main_face_found"]
    assert result["bound_met"]
    assert result["params"]["mode"] == "fast" and "min_face_fraction" in result["params"]
    assert result["load_average"]["during_1min"]["max"] >= 0
