"""Training data: self-label selection, class-balanced sampling, refusal of too little data."""

from __future__ import annotations

import numpy as np
import pytest

from components.train.data import (
    BalancedSampler,
    LabelledFaces,
    TrainingDataError,
    load_folder,
    select_self_labels,
    split_identities,
    verification_pairs,
)


def _unit(rows):
    rows = np.asarray(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_self_labels_keep_large_cohesive_identities_and_find_cannot_link_pairs():
    rng = np.random.default_rng(0)
    centres = _unit(rng.normal(size=(3, 16)))
    tight = _unit(centres[0] + 0.05 * rng.normal(size=(6, 16)))       # identity 10: tight, 6 faces
    loose = _unit(rng.normal(size=(6, 16)))                             # identity 11: random faces glued together
    small = _unit(centres[2] + 0.05 * rng.normal(size=(2, 16)))        # identity 12: too small
    other = _unit(centres[1] + 0.05 * rng.normal(size=(5, 16)))        # identity 13: tight, 5 faces
    x = np.concatenate([tight, loose, small, other, _unit(rng.normal(size=(3, 16)))])
    identity = np.array([10] * 6 + [11] * 6 + [12] * 2 + [13] * 5 + [-1] * 3)
    photos = np.arange(len(x))
    photos[0] = photos[14] = 100        # a face of 10 and a face of 13 share a photo: cannot-link
    chosen = select_self_labels(x, identity, photos, min_faces=5, min_cohesion=0.8)
    assert chosen.identities == [10, 13]
    assert chosen.dropped == {11: "loose", 12: "too_small"}
    assert chosen.cohesion[10] > 0.9 > chosen.cohesion[11]
    assert len(chosen.rows) == 11 and set(chosen.labels) == {0, 1}
    assert len(chosen.cannot_link) == 1
    a, b = chosen.cannot_link[0]
    assert {chosen.rows[a], chosen.rows[b]} == {0, 14}


def test_sampler_is_balanced_and_a_pure_function_of_the_step():
    labels = np.repeat(np.arange(10), [2, 3, 4, 5, 6, 7, 8, 9, 10, 1])
    links = np.array([[0, 5]])  # rows of identity 0 and identity 2
    sampler = BalancedSampler(labels, identities_per_batch=4, faces_per_identity=3, seed=1, cannot_link=links,
                              cannot_link_share=0.5)
    first = sampler.batch(7)
    assert np.array_equal(first, sampler.batch(7)), "a resumed run must see the same batch"
    assert not np.array_equal(first, sampler.batch(8))
    counts = np.bincount(labels[first], minlength=10)
    assert sorted(counts[counts > 0]) == [3, 3, 3, 3]
    assert counts[0] == 3 and counts[2] == 3, "the cannot-link pair's identities come together"


def test_too_little_data_is_refused_with_a_reason(tmp_path):
    one_person = LabelledFaces(np.zeros((4, 150, 150, 3), np.uint8), np.zeros(4), ["a"])
    with pytest.raises(TrainingDataError, match="too little to train on: 1 identities"):
        one_person.check_trainable(min_identities=2)
    singles = LabelledFaces(np.zeros((3, 150, 150, 3), np.uint8), np.arange(3), ["a", "b", "c"])
    with pytest.raises(TrainingDataError, match="0 identities with >= 2 faces"):
        singles.check_trainable()
    with pytest.raises(TrainingDataError, match="no same-person pairs"):
        verification_pairs(np.arange(3))
    with pytest.raises(TrainingDataError, match="cannot be split"):
        split_identities(np.array([0, 0, 1, 1]), 0.5)
    with pytest.raises(TrainingDataError, match="no such folder"):
        load_folder(tmp_path / "absent")


def test_annotated_folder_reads_aligned_crops_and_refuses_unaligned_ones(tmp_path):
    from PIL import Image

    for person in ("ann", "bob"):
        (tmp_path / person).mkdir()
        for i in range(2):
            Image.fromarray(np.full((150, 150, 3), 40 * i, np.uint8)).save(tmp_path / person / f"{i}.png")
    data = load_folder(tmp_path)
    assert data.classes == ["ann", "bob"] and data.x.shape == (4, 150, 150, 3)
    assert list(data.labels) == [0, 0, 1, 1]
    Image.fromarray(np.zeros((250, 250, 3), np.uint8)).save(tmp_path / "bob" / "big.jpg")
    with pytest.raises(TrainingDataError, match="250x250 pixels; aligned crops are 150x150"):
        load_folder(tmp_path)
    (tmp_path / "bob" / "big.jpg").write_bytes(b"not an image")
    with pytest.raises(TrainingDataError, match="not a readable image"):
        load_folder(tmp_path)


def test_augmentation_flips_and_recolours_within_range():
    import tensorflow as tf

    from components.train.data import augment_images

    batch = np.zeros((64, 8, 8, 3), np.float32)
    batch[:, :, :4] = 200.0  # left half bright: a flip moves it to the right
    out = np.asarray(augment_images(tf.constant(batch), tf.constant([3, 5], tf.int64)))
    again = np.asarray(augment_images(tf.constant(batch), tf.constant([3, 5], tf.int64)))
    assert out.shape == batch.shape and out.min() >= 0.0 and out.max() <= 255.0
    assert np.array_equal(out, again), "same seed, same augmentation (resumable)"
    flipped = out[:, :, 4:].mean(axis=(1, 2, 3)) > out[:, :, :4].mean(axis=(1, 2, 3))
    assert 10 < flipped.sum() < 54, "about half the batch is mirrored"
    assert not np.allclose(out[~flipped][:, :, :4], 200.0), "brightness / contrast changed"
