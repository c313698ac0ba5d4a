"""Sideways photos: the real MTCNN finds no face in an LFW photo turned on its side, the engine finds it by turning it back.

A photo turned 90 degrees clockwise, with no EXIF orientation to say so, is what a
scanner or a phone held flat produces. The detector tries such a photo turned 90 and
270 degrees when nothing is found upright; the face found carries the turn, its box and
landmarks are in the sideways photo's own pixels, and its embedding is the upright
photo's. Through the face_ingest steps the turn is recorded in the store.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.detect import FaceDetector
from components.settings import DetectParams

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "data" / "lfw" / "images_deepfunneled" / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"


@pytest.fixture(scope="module")
def photos() -> tuple[np.ndarray, np.ndarray]:
    if not PHOTO.exists():
        pytest.skip(f"LFW image not available: {PHOTO}")
    upright = np.asarray(Image.open(PHOTO).convert("RGB"))
    return upright, np.ascontiguousarray(np.rot90(upright, k=-1))  # turned 90 degrees clockwise


def test_a_face_on_its_side_is_found_by_turning_the_photo(photos):
    upright, sideways = photos
    plain = FaceDetector(replace(DetectParams(), try_rotations=()))
    assert plain.detect([sideways]) == [[]]  # MTCNN alone: "no face"
    detector = FaceDetector()
    [faces], [reference] = detector.detect([sideways]), detector.detect([upright])
    assert faces and reference
    face, ref = faces[0], reference[0]
    assert face.rotation == 90 and ref.rotation == 0
    assert face.passed
    # The upright photo's landmarks, turned with the photo, are where the turned search put them.
    height = upright.shape[0]
    expected = np.stack([height - ref.landmarks[:, 1], ref.landmarks[:, 0]], axis=1)
    assert np.abs(face.landmarks - expected).max() < 2.0
    x, y, w, h = face.box
    assert 0 <= x and x + w <= sideways.shape[1] + 1 and 0 <= y and y + h <= sideways.shape[0] + 1
    # The same crop, so the same person for the embedder.
    assert np.abs(face.crop.astype(int) - ref.crop.astype(int)).mean() < 8


def test_the_ingest_steps_record_the_turn_in_the_store(photos, tmp_path, monkeypatch):
    from components.identities import IdentityStore
    from components.workflow.ingest import run_ingest

    upright, sideways = photos
    batch = tmp_path / "batch"
    batch.mkdir()
    Image.fromarray(sideways).save(batch / "sideways.jpg", quality=95)
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1))).save(batch / "other-way.jpg", quality=95)
    monkeypatch.setenv("FACES_WORK_URI", str(tmp_path / "work"))
    monkeypatch.delenv("FACES_STORE_URL", raising=False)
    result = run_ingest(str(batch), batch_id="sideways", track=False)
    assert result["photos_new"] == 2 and result["usable_faces"] >= 2
    store = IdentityStore(f"sqlite:///{tmp_path / 'work' / 'faces.db'}")
    with store.session() as session:
        from sqlalchemy import select

        from components.identities.store import FaceRow, ImageRow

        rows = session.execute(select(FaceRow.id, ImageRow.path).join(ImageRow).where(FaceRow.face_index == 0)).all()
    turns = store.face_rotations()
    by_photo = {Path(path).name: turns.get(int(face), 0) for face, path in rows}
    assert by_photo == {"sideways.jpg": 90, "other-way.jpg": 270}


def test_faces_run_records_the_turn_in_the_store(photos, tmp_path):
    """The same engine behind `faces run`: the turn a face needed is kept with it."""
    from components.identities import IdentityStore
    from components.pipeline.run import Photo, run
    from components.settings import load_settings

    upright, sideways = photos
    batch = tmp_path / "batch"
    batch.mkdir()
    Image.fromarray(sideways).save(batch / "sideways.jpg", quality=95)
    Image.fromarray(upright).save(batch / "upright.jpg", quality=95)
    out = tmp_path / "out"
    run([Photo(batch / "sideways.jpg"), Photo(batch / "upright.jpg")], out, load_settings(), progress=False)
    store = IdentityStore(f"sqlite:///{out / 'faces.db'}")
    with store.session() as session:
        from sqlalchemy import select

        from components.identities.store import FaceRow, ImageRow

        rows = session.execute(select(FaceRow.id, ImageRow.path).join(ImageRow).where(FaceRow.face_index == 0)).all()
    turns = store.face_rotations()
    assert {Path(path).name: turns.get(int(face), 0) for face, path in rows} == {"sideways.jpg": 90, "upright.jpg": 0}
