"""Great Expectations suites on real LFW photos and on deliberately bad batches.

Each bad batch asserts exactly which rows fail which check, so a suite that
stopped checking something (or started flagging good rows) fails here.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.detect import Face
from components.identities import IdentityStore, NewFace
from components.settings import DetectParams, ValidateParams
from components.storage import StorageError
from components.validate import (
    ValidationFailed,
    cluster_table,
    cluster_table_from_store,
    face_table,
    image_table,
    quarantine,
    validate_clusters,
    validate_embeddings,
    validate_faces,
    validate_images,
)
from tests.fixtures.make_bad_images import write_bad_images

LFW = Path(__file__).resolve().parents[2] / "data" / "lfw" / "images_deepfunneled"
PARAMS = ValidateParams(docs="never")


def lfw_photos(count: int) -> list[Path]:
    # Not skipped when missing: CI pulls the data first, and a silent skip would hide a broken pull.
    people = sorted(path for path in LFW.iterdir() if path.is_dir())[:count]
    return [sorted(person.glob("*.jpg"))[0] for person in people]


def failed(report) -> dict:
    """row -> sorted check names."""
    return {row: sorted(checks) for row, checks in report.failed_rows.items()}


# -- images -------------------------------------------------------------------------------


def test_real_lfw_photos_pass_the_image_suite():
    report = validate_images(image_table(lfw_photos(25)), PARAMS)
    assert report.success, report.message()
    assert report.failures == [] and report.statistics["evaluated_expectations"] == 7


def test_a_bad_image_batch_names_every_bad_row_and_why(tmp_path):
    good = lfw_photos(3)
    batch = tmp_path / "batch"
    batch.mkdir()
    for photo in good:
        shutil.copy(photo, batch / photo.name)
    shutil.copy(good[0], batch / "copy_of_first.jpg")  # duplicate content
    Image.new("RGB", (40, 30)).save(batch / "scan.ppm")  # decodes, but not a format this deployment accepts
    Image.new("RGB", (40, 30)).save(batch / "drawing.eps")  # never decoded: EPS would run Ghostscript
    Image.new("RGB", (400, 300)).save(batch / "large.jpg")  # above this test's pixel limit
    codes = write_bad_images(batch)
    params = dataclasses.replace(PARAMS, image_max_pixels=100_000,  # LFW photos have 62,500
                                 image_formats=tuple(f for f in PARAMS.image_formats if f != "PPM"))

    report = validate_images(image_table(sorted(batch.iterdir()), max_pixels=params.image_max_pixels), params)

    assert not report.success
    name = {str(batch / n): n for n in [p.name for p in batch.iterdir()]}
    got = {name[row]: checks for row, checks in failed(report).items()}
    assert got == {
        good[0].name: ["duplicate"], "copy_of_first.jpg": ["duplicate"],
        "scan.ppm": ["format"], "drawing.eps": ["decodable"], "large.jpg": ["pixels"], "tiny.png": ["height", "width"],
        **{n: ["decodable"] for n, code in codes.items() if code != "too_small"},
    }
    reasons = {(name[f["row"]], f["check"]): f["reason"] for f in report.failures}
    assert reasons[("copy_of_first.jpg", "duplicate")] == f"same content as {batch / good[0].name}"
    assert reasons[("scan.ppm", "format")].startswith("format PPM is not accepted")
    assert reasons[("tiny.png", "width")] == "width 5 px is outside 20-20000 px"
    assert "120,000 pixels is above the limit of 100,000" in reasons[("large.jpg", "pixels")]
    assert "empty" in reasons[("empty.jpg", "decodable")]
    with pytest.raises(ValidationFailed, match="tiny.png: width 5 px"):
        report.raise_if_failed()


def test_an_empty_batch_fails_at_table_level():
    report = validate_images(image_table([]), PARAMS)
    assert not report.success
    assert [(f["row"], f["check"]) for f in report.failures] == [(None, "not_empty")]


# -- faces --------------------------------------------------------------------------------

LANDMARKS = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], float)


def make_face(confidence=0.99, blur=0.02, crop_side=150, landmarks=LANDMARKS, box=(0.0, 0.0, 100.0, 100.0)):
    return Face(box, np.array(landmarks, float), confidence, np.zeros((crop_side, crop_side, 3), np.uint8), blur)


def test_sound_faces_pass_even_with_a_few_below_the_gates():
    faces = [[make_face(), make_face(blur=0.001)], [make_face(confidence=0.6), make_face()], [make_face()]]
    report = validate_faces(face_table(faces, ["a", "b", "c"]), PARAMS, DetectParams())
    assert report.success, report.message()


def test_broken_faces_are_named_with_the_reason():
    outside = LANDMARKS.copy()
    outside[4] = [65, 130]  # 30 px below a 100 px box
    faces = [[make_face(), make_face(crop_side=112)], [make_face(landmarks=outside), make_face(confidence=1.2)],
             [make_face(blur=float("nan")), make_face(box=(5.0, 5.0, 0.0, 40.0))]]

    report = validate_faces(face_table(faces, ["a", "b", "c"]), PARAMS, DetectParams())

    assert failed(report) == {
        "a#1": ["crop_height", "crop_width"], "b#0": ["landmarks_inside"], "b#1": ["confidence_range"],
        "c#0": ["blur_finite"], "c#1": ["box", "landmarks_inside"],
    }
    reasons = {(f["row"], f["check"]): f["reason"] for f in report.failures}
    assert reasons[("a#1", "crop_height")] == "crop is 112 px high, not 150"
    assert reasons[("b#0", "landmarks_inside")] == "a landmark lies 30% of the box size outside the box"


def test_a_tilted_face_with_a_landmark_outside_its_box_does_not_stop_a_batch():
    tilted = LANDMARKS.copy()
    tilted[4] = [65, 125]  # MTCNN on a tilted face: a mouth corner 25% below the box
    faces = [[make_face()] for _ in range(29)] + [[make_face(landmarks=tilted)]]
    keys = [f"p{i}" for i in range(30)]
    assert validate_faces(face_table(faces, keys), PARAMS, DetectParams()).success
    many = [[make_face(landmarks=tilted)] for _ in range(3)] + faces[:27]
    assert failed(validate_faces(face_table(many, keys), PARAMS, DetectParams())) == {
        f"p{i}#0": ["landmarks_inside"] for i in range(3)}


def test_a_batch_of_mostly_blurry_faces_fails_and_lists_them():
    faces = [[make_face(blur=0.001)], [make_face(blur=0.002)], [make_face()]]
    report = validate_faces(face_table(faces, ["a", "b", "c"]), PARAMS, DetectParams(min_blur=0.005))
    assert failed(report) == {"a#0": ["blur"], "b#0": ["blur"]}
    assert report.failures[0]["reason"].startswith("blur score 0.0010 is below 0.005: blurry")


def test_photos_without_faces_pass():
    assert validate_faces(face_table([[], []], ["a", "b"]), PARAMS, DetectParams()).success


# -- embeddings ---------------------------------------------------------------------------


def unit_vectors(count: int, dim: int = 128, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_unit_embeddings_pass():
    report = validate_embeddings(unit_vectors(50), [f"face{i}" for i in range(50)], PARAMS)
    assert report.success, report.message()


def test_bad_embeddings_name_the_rows():
    vectors = unit_vectors(8)
    vectors[1] *= 1.5                # not unit norm
    vectors[2, 7] = np.nan           # NaN
    vectors[3, 0] = np.inf           # infinite
    vectors[5] = vectors[4]          # duplicate
    ids = [f"face{i}" for i in range(8)]

    report = validate_embeddings(vectors, ids, PARAMS)

    assert failed(report) == {"face1": ["unit_norm"], "face2": ["finite"], "face3": ["finite"],
                              "face4": ["duplicate"], "face5": ["duplicate"]}
    reasons = {(f["row"], f["check"]): f["reason"] for f in report.failures}
    assert reasons[("face1", "unit_norm")] == "L2 norm 1.500000 is not 1 (tolerance 0.001)"
    assert reasons[("face5", "duplicate")] == "same vector as face4"


def test_embeddings_of_the_wrong_dimension_fail_every_row():
    report = validate_embeddings(unit_vectors(3, dim=64), ["a", "b", "c"], PARAMS)
    assert failed(report) == {"a": ["dimension"], "b": ["dimension"], "c": ["dimension"]}
    assert report.failures[0]["reason"] == "has 64 dimensions, not 128"


# -- clusters -----------------------------------------------------------------------------


def test_a_cannot_link_violation_names_both_faces():
    table = cluster_table(face_ids=[1, 2, 3, 4, 5, 6, 7], identity_ids=[10, 10, 10, 11, 11, None, None],
                          photo_ids=[100, 100, 101, 102, 103, 104, 104])
    report = validate_clusters(table, PARAMS)
    assert failed(report) == {1: ["cannot_link"], 2: ["cannot_link"]}  # pool faces 6, 7 share a photo: fine
    assert report.failures[0]["reason"] == "identity 10 also holds face 2 of the same photo 100 (cannot-link)"


def test_cluster_sizes():
    table = cluster_table(list(range(120)), [0] * 70 + list(range(1, 26)) * 2 + [None] * 0, list(range(120)))
    table.loc[119, "identity_size"] = 1  # as if identity 25 had shrunk to one face
    report = validate_clusters(table, PARAMS)
    got = failed(report)
    assert [row for row, checks in got.items() if checks == ["max_share"]] == list(range(70))
    assert got[119] == ["min_size"]
    assert dataclasses.replace(PARAMS, cluster_max_share=0.6).cluster_max_share == 0.6
    assert validate_clusters(table.drop(index=119), dataclasses.replace(PARAMS, cluster_max_share=0.6)).success


def test_cluster_table_from_a_real_identity_store(tmp_path):
    store = IdentityStore(f"sqlite:///{tmp_path / 'faces.db'}")
    vectors = unit_vectors(4)
    for photo in range(2):
        faces = [NewFace(index, (0, 0, 100, 100), LANDMARKS, 0.99, 0.02, [], vectors[2 * photo + index], "m1", None)
                 for index in range(2)]
        store.add_image(f"{photo:064d}", f"p{photo}.jpg", (250, 250), faces, "d1", None)
    faces = store.usable_faces()
    # Face 0 and 1 are the two faces of photo 0: one identity for both breaks cannot-link.
    store.replace_clustering(faces.face_ids, np.array([0, 0, 1, 1]), faces.embeddings, {0: 0, 1: 2}, min_size=2)

    report = validate_clusters(cluster_table_from_store(store), PARAMS)

    assert failed(report) == {int(face): ["cannot_link"] for face in faces.face_ids}


# -- Data Docs and quarantine ---------------------------------------------------------------


def test_failed_validation_writes_a_data_docs_site_keyed_by_batch(tmp_path):
    photos = lfw_photos(2)
    table = image_table([photos[0], photos[1], photos[0]])
    docs = tmp_path / "docs"

    report = validate_images(table, PARAMS, batch_id="batch-7", docs_dir=docs, docs="on_failure")
    again = validate_images(table, PARAMS, batch_id="batch-7", docs_dir=docs, docs="on_failure")
    passing = validate_images(image_table(photos), PARAMS, batch_id="batch-8", docs_dir=docs, docs="on_failure")

    assert report.site_dir == docs / "batch-7" / "images" == again.site_dir
    # The re-run replaced the site; its page (named by GE with the run time) is the one left.
    assert again.html_path.is_file() and again.html_path.suffix == ".html"
    assert (again.site_dir / "index.html").is_file()
    page = again.html_path.read_text()
    assert "expect_column_values_to_be_unique" in page or "values must be unique" in page.lower()
    assert len(list((docs / "batch-7").rglob("validations/**/*.html"))) == 1  # re-run replaced, not added
    saved = json.loads((report.site_dir / "report.json").read_text())
    assert saved["success"] is False and {f["check"] for f in saved["failures"]} == {"duplicate"}
    assert json.loads((report.site_dir / "result.json").read_text())["success"] is False
    assert passing.html_path is None and not (docs / "batch-8").exists()


def test_quarantine_copies_the_batch_with_its_reasons_and_deletes_nothing(tmp_path):
    batch = tmp_path / "incoming" / "batch-7"
    (batch / "sub").mkdir(parents=True)
    (batch / "a.jpg").write_bytes(b"a")
    (batch / "sub" / "b.jpg").write_bytes(b"bb")
    report = validate_images(image_table(sorted(batch.rglob("*.jpg"))), PARAMS)
    area = tmp_path / "quarantine"

    uri = quarantine(batch, report.message(), report=report, quarantine_uri=str(area))
    again = quarantine(batch, report.message(), report=report, quarantine_uri=str(area))

    assert uri == again and Path(uri).parent == area and Path(uri).name.startswith("batch-7-")
    assert (Path(uri) / "batch" / "a.jpg").read_bytes() == b"a"
    assert (Path(uri) / "batch" / "sub" / "b.jpg").read_bytes() == b"bb"
    record = json.loads((Path(uri) / "QUARANTINE.json").read_text())
    assert record["source"] == str(batch) and record["objects"] == 2
    assert {f["check"] for f in record["failures"]} == {"decodable"}
    assert "cannot be decoded" in (Path(uri) / "QUARANTINE.txt").read_text()
    assert sorted(p.name for p in batch.rglob("*")) == ["a.jpg", "b.jpg", "sub"]  # source untouched
    with pytest.raises(StorageError, match="does not exist"):
        quarantine(tmp_path / "nope", "x", quarantine_uri=str(area))


@pytest.mark.slow
def test_log_report_puts_the_data_docs_site_into_the_mlflow_run(tmp_path, monkeypatch):
    import mlflow

    from components.validate import log_report

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a fast, server-less backend for this test only
    mlflow.set_tracking_uri(f"file://{tmp_path / 'mlruns'}")
    photos = lfw_photos(1)
    report = validate_images(image_table([photos[0], photos[0]]), PARAMS, batch_id="b1", docs_dir=tmp_path / "docs",
                             docs="on_failure")
    try:
        with mlflow.start_run() as run:
            log_report(report)
        local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="validation/images",
                                                         dst_path=str(tmp_path / "down")))
    finally:
        mlflow.set_tracking_uri(None)
    assert (local / "index.html").is_file() and (local / "report.json").is_file()
    assert (local / report.html_path.relative_to(report.site_dir)).is_file()
    with pytest.raises(RuntimeError, match="active MLflow run"):
        log_report(report)
