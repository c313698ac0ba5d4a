"""The retraining benchmark's pure parts: the degradation and the personalisation protocol."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.bench.retrain import DegradedCrops, degrade_photo, personalisation


def test_degradation_is_seeded_per_face_and_keeps_the_crop_shape():
    crops = np.random.default_rng(0).integers(0, 255, size=(3, 150, 150, 3), dtype=np.uint8)
    degraded = DegradedCrops(crops, seed=7)
    first, again = degraded[[0, 2]], DegradedCrops(crops, seed=7)[[0, 2]]
    assert first.shape == (2, 150, 150, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)  # the same face, the same damage
    assert not np.array_equal(first[0], crops[0])
    assert not np.array_equal(DegradedCrops(crops, seed=8)[[0]], first[:1])


def test_a_degraded_photo_is_a_small_grey_jpeg_of_the_same_size():
    from PIL import Image

    photo = np.random.default_rng(1).integers(0, 255, size=(250, 250, 3), dtype=np.uint8)
    data = degrade_photo(photo, seed=3)
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.size == (250, 250)
    pixels = np.asarray(image.convert("RGB"), np.int16)
    assert np.abs(pixels[..., 0] - pixels[..., 1]).mean() < 3  # grey
    assert data == degrade_photo(photo, seed=3)


@dataclass
class Faces:
    is_main: np.ndarray
    photo: np.ndarray
    names: np.ndarray
    paths: list


def test_personalisation_streams_earlier_photos_and_tests_later_ones_and_distractors():
    people = {"ann": 12, "bob": 10, "cy": 3, "di": 2}
    names, paths = [], []
    for person, count in people.items():
        for number in range(count):
            names.append(person)
            paths.append(Path(person) / f"{person}_{number:04d}.jpg")
    faces = Faces(np.ones(len(names), bool), np.arange(len(names)), np.array(names), paths)
    protocol = personalisation(faces, seed=0)
    streamed = {str(paths[row]) for row in protocol.stream}
    assert streamed == {f"{p}/{p}_{n:04d}.jpg" for p, count in (("ann", 12), ("bob", 10)) for n in range(count // 2)}
    tested = set(protocol.pairs.ravel().tolist())
    assert not tested & set(protocol.stream.tolist())  # no streamed face is tested
    person = np.array(names)
    assert (person[protocol.pairs[:, 0]] == person[protocol.pairs[:, 1]]).tolist() == protocol.same.tolist()
    assert protocol.same.sum() == (~protocol.same).sum() > 0
    distractor = np.isin(person, ["cy", "di"])
    assert distractor[protocol.pairs[~protocol.same]].any()  # distractors appear among the different pairs
