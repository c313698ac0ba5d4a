"""The faces and embeddings suites on real MTCNN detections and real embeddings of LFW photos."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from components.detect import FaceDetector
from components.embed import Embedder
from components.images import load_image
from components.settings import DetectParams, ValidateParams, load_settings
from components.validate import face_table, validate_embeddings, validate_faces

pytestmark = pytest.mark.slow

LFW = Path(__file__).resolve().parents[2] / "data" / "lfw" / "images_deepfunneled"
PHOTOS = ["Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "George_W_Bush/George_W_Bush_0001.jpg",
          "Serena_Williams/Serena_Williams_0001.jpg", "Colin_Powell/Colin_Powell_0001.jpg"]
PARAMS = ValidateParams(docs="never")


@pytest.fixture(scope="module")
def detected():
    images = [load_image(LFW / name) for name in PHOTOS]
    return FaceDetector(DetectParams()).detect(images)


def test_real_detections_pass_the_faces_suite(detected):
    table = face_table(detected, PHOTOS)
    assert len(table) >= len(PHOTOS)
    report = validate_faces(table, PARAMS, DetectParams())
    assert report.success, report.message()


def test_a_real_face_with_moved_landmarks_and_a_wrong_crop_fails(detected):
    face = detected[0][0]
    moved = dataclasses.replace(face, landmarks=face.landmarks + [0.0, face.box[3]])  # a whole box lower
    small = dataclasses.replace(face, crop=face.crop[:112, :112])
    report = validate_faces(face_table([[moved, small]], ["tampered.jpg"]), PARAMS, DetectParams())
    assert {row: sorted(checks) for row, checks in report.failed_rows.items()} == {
        "tampered.jpg#0": ["landmarks_inside"], "tampered.jpg#1": ["crop_height", "crop_width"]}


def test_real_embeddings_pass_and_the_same_photo_twice_is_a_duplicate(detected):
    crops = [faces[0].crop for faces in detected]
    vectors = Embedder(load_settings().model_path).embed(np.stack(crops + crops[:1]))
    ids = [f"{name}#0" for name in PHOTOS]

    assert validate_embeddings(vectors[:-1], ids, PARAMS).success
    report = validate_embeddings(vectors, ids + ["again.jpg#0"], PARAMS)
    assert {row: checks for row, checks in report.failed_rows.items()} == {
        PHOTOS[0] + "#0": ["duplicate"], "again.jpg#0": ["duplicate"]}
