"""Checks on the real LFW files.

These need the data (CI runs `make setup`, i.e. `dvc pull`, first) and are
deliberately not skipped when it is missing: a silent skip would hide a
broken data pull.
"""

from collections import Counter
from pathlib import Path

import pytest

from components.datasets.lfw import (
    Pair,
    demo_subset,
    image_path,
    list_identities,
    read_pairs,
    read_people_folds,
)

# Resolved from this file so the tests do not depend on the working directory.
ROOT = Path(__file__).resolve().parents[2] / "data" / "lfw"

N_PEOPLE = 5749
N_IMAGES = 13233


@pytest.fixture(scope="module")
def pairs():
    return read_pairs(ROOT)


@pytest.fixture(scope="module")
def identities():
    return list_identities(ROOT)


@pytest.fixture(scope="module")
def people_folds():
    return read_people_folds(ROOT)


def read_names_file():
    rows = [line.split() for line in (ROOT / "lfw-names.txt").read_text().splitlines() if line]
    return {name: int(count) for name, count in rows}


def test_image_path_format():
    assert image_path(ROOT, "George_W_Bush", 10) == (
        ROOT / "images_deepfunneled" / "George_W_Bush" / "George_W_Bush_0010.jpg"
    )


def test_view2_pairs_counts(pairs):
    assert len(pairs) == 6000
    assert all(isinstance(p, Pair) for p in pairs)
    per_fold = Counter(p.fold for p in pairs)
    assert per_fold == {fold: 600 for fold in range(1, 11)}
    assert sum(p.same for p in pairs) == 3000
    assert Counter((p.fold, p.same) for p in pairs) == {
        (fold, same): 300 for fold in range(1, 11) for same in (True, False)
    }


def test_pair_labels_match_names(pairs):
    for p in pairs:
        assert (p.path_a.parent.name == p.path_b.parent.name) == p.same


def test_every_referenced_image_exists(pairs):
    dev = read_pairs(ROOT, "pairsDevTrain.txt") + read_pairs(ROOT, "pairsDevTest.txt")
    missing = [str(path) for p in pairs + dev for path in (p.path_a, p.path_b)
               if not path.is_file()]
    assert missing == []


def test_dev_pairs():
    # Header of each dev file is the matched count; the mismatched half is equal.
    for file, n_matched in (("pairsDevTrain.txt", 1100), ("pairsDevTest.txt", 500)):
        dev = read_pairs(ROOT, file)
        assert len(dev) == 2 * n_matched
        assert sum(p.same for p in dev) == n_matched
        assert {p.fold for p in dev} == {0}


def test_list_identities_totals(identities):
    assert len(identities) == N_PEOPLE
    assert sum(len(v) for v in identities.values()) == N_IMAGES
    assert ".DS_Store" not in identities
    assert list(identities) == sorted(identities)
    assert identities == {k: sorted(v) for k, v in identities.items()}


def test_identities_match_names_file(identities):
    assert {k: len(v) for k, v in identities.items()} == read_names_file()


def test_people_folds_cover_lfw(people_folds):
    assert len(people_folds) == 10
    assert [len(f) for f in people_folds] == [601, 555, 552, 560, 567, 527, 597, 601, 580, 609]
    everyone = [row for fold in people_folds for row in fold]
    # The 10 folds partition all of LFW: each person once, with their image count.
    assert len(everyone) == N_PEOPLE
    assert sum(count for _, count in everyone) == N_IMAGES
    assert dict(everyone) == read_names_file()


def test_view2_pairs_stay_inside_their_people_fold(pairs, people_folds):
    fold_names = [{name for name, _ in fold} for fold in people_folds]
    for p in pairs:
        assert p.path_a.parent.name in fold_names[p.fold - 1]
        assert p.path_b.parent.name in fold_names[p.fold - 1]


def test_demo_subset_is_deterministic_and_bounded():
    a = demo_subset(ROOT)
    assert a == demo_subset(ROOT)
    assert len(a) == 40
    assert list(a) == sorted(a)
    for name, images in a.items():
        assert 10 <= len(images) <= 20
        assert images == sorted(images)
        assert all(img.parent.name == name and img.is_file() for img in images)


def test_demo_subset_rejects_too_many_people():
    with pytest.raises(ValueError):
        demo_subset(ROOT, n_people=10_000)


def test_missing_data_says_how_to_fetch(tmp_path):
    for call in (lambda: read_pairs(tmp_path), lambda: read_people_folds(tmp_path),
                 lambda: list_identities(tmp_path)):
        with pytest.raises(FileNotFoundError, match="make setup"):
            call()
