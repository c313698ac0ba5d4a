"""The validation tables: what each builder derives from files, detections, embeddings and identities."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components.detect import Face
from components.validate import (
    cluster_table,
    describe_image,
    embedding_table,
    face_table,
    face_table_from_arrays,
    image_table,
    landmark_outside,
)
from tests.fixtures.make_bad_images import write_bad_images


def jpeg(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_describe_image_reads_the_header_and_decodes():
    data = jpeg(64, 48)
    row = describe_image("a.jpg", data)
    assert (row["format"], row["width"], row["height"], row["pixels"], row["error"]) == ("JPEG", 64, 48, 3072, None)
    assert row["bytes"] == len(data) and len(row["sha256"]) == 64


def test_every_bad_file_gets_an_error_with_its_loader_code(tmp_path):
    expected = write_bad_images(tmp_path)
    table = image_table(sorted(tmp_path / name for name in expected), max_pixels=40_000_000).set_index("key")

    for name, code in expected.items():
        error = table.loc[str(tmp_path / name), "error"]
        if code == "too_small":  # decodes fine; the width / height checks catch it
            assert pd.isna(error)
            assert table.loc[str(tmp_path / name), "width"] < 20
        else:
            assert str(error).startswith(code), (name, error)
    assert "0x" not in "".join(str(e) for e in table["error"] if isinstance(e, str))  # no memory addresses


def test_images_over_the_pixel_limit_are_measured_but_not_decoded():
    row = describe_image("big.jpg", jpeg(300, 200), max_pixels=50_000)
    assert row["pixels"] == 60_000 and row["error"] is None


def test_image_table_reads_storage_keys_and_reports_unreadable_ones(tmp_path):
    from components.storage import LocalStorage

    store = LocalStorage(tmp_path)
    store.put_bytes("b/1.jpg", jpeg(40, 40))
    table = image_table(["b/1.jpg", "b/missing.jpg"], storage=store)
    assert list(table["key"]) == ["b/1.jpg", "b/missing.jpg"]
    assert pd.isna(table["error"].iloc[0])
    assert table["error"].iloc[1].startswith("unreadable: no such object")


def test_landmark_outside_measures_in_box_sides():
    box = (10.0, 20.0, 100.0, 50.0)
    inside = np.array([[20, 30], [100, 30], [60, 45], [30, 60], [90, 60]], float)
    assert landmark_outside(box, inside) == 0.0
    outside = inside.copy()
    outside[2] = [60, 80]  # 10 px below the box, whose shorter side is 50
    assert landmark_outside(box, outside) == pytest.approx(0.2)
    assert np.isnan(landmark_outside(box, np.full((5, 2), np.nan)))


def face(box=(0.0, 0.0, 100.0, 100.0), crop_side=150, confidence=0.99, blur=0.02, failures=()):
    landmarks = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], float)
    return Face(box, landmarks, confidence, np.zeros((crop_side, crop_side, 3), np.uint8), blur, list(failures))


def test_face_table_from_detector_faces():
    table = face_table([[face(), face(failures=["blurry"], blur=0.001)], [], [face(crop_side=112)]],
                       ["a.jpg", "b.jpg", "c.jpg"])
    assert list(table["face"]) == ["a.jpg#0", "a.jpg#1", "c.jpg#0"]
    assert list(table["crop_height"]) == [150, 150, 112]
    assert list(table["failures"]) == ["", "blurry", ""]
    assert table["landmarks_inside"].all()
    with pytest.raises(ValueError, match="2 photo keys"):
        face_table([[face()]], ["a", "b"])


def test_face_table_from_workflow_arrays_keeps_the_detector_numbering():
    arrays = {
        "photo": np.array([0, 0, 1]), "face_index": np.array([0, 2, 1]),
        "boxes": np.array([[0, 0, 100, 100]] * 3, float),
        "landmarks": np.array([[[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]]] * 3, float),
        "confidence": np.array([0.99, 0.98, 0.5]), "blur": np.array([0.02, 0.03, 0.0]),
        "failures": np.array(["", "", "low_confidence,blurry"]), "crops": np.zeros((3, 150, 150, 3), np.uint8),
    }
    arrays["landmarks"][1, 0] = [-30, 40]  # 30% of the box side to the left of it
    table = face_table_from_arrays(arrays, ["p.jpg", "q.jpg"])
    assert list(table["face"]) == ["p.jpg#0", "p.jpg#2", "q.jpg#1"]
    assert list(table["landmarks_inside"]) == [True, False, True]
    assert table["landmark_outside"].iloc[1] == pytest.approx(0.3)


def test_embedding_table_flags_dimension_non_finite_and_duplicates():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(4, 8))
    vectors[1] = vectors[0] + 1e-9  # equal at 6 decimals
    vectors[2, 3] = np.inf
    table = embedding_table(vectors, ["a", "b", "c", "d"])
    assert list(table["dim"]) == [8] * 4
    assert list(table["finite"]) == [True, True, False, True]
    assert table["vector_key"].iloc[0] == table["vector_key"].iloc[1] != table["vector_key"].iloc[3]
    assert table["norm"].isna().tolist() == [False, False, True, False]
    assert embedding_table([np.zeros(3), np.zeros(5)])["dim"].tolist() == [3, 5]
    assert embedding_table(np.array([[-0.0, 1.0]]))["vector_key"][0] == embedding_table(np.array([[0.0, 1.0]]))["vector_key"][0]
    with pytest.raises(ValueError, match="2 embeddings but 1 ids"):
        embedding_table(np.zeros((2, 3)), ["x"])
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        embedding_table(np.zeros(3))


def test_cluster_table_sizes_and_shares_leave_the_pool_out():
    table = cluster_table([1, 2, 3, 4], [5, 5, None, -1], [10, 11, 12, 13])
    assert table["identity_id"].isna().tolist() == [False, False, True, True]
    assert table["identity_size"].tolist()[:2] == [2, 2] and table["identity_size"].isna().tolist()[2:] == [True, True]
    assert table["identity_share"].iloc[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="lengths differ"):
        cluster_table([1], [1, 2], [1])
