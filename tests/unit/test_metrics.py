import itertools
import json

import numpy as np
import pytest

from components.report.metrics import (
    ari,
    bcubed_prf,
    clustering_summary,
    nmi,
    pairwise_prf,
    silhouette_cosine,
)

# Shared small case. Classes: t0={0,1,2}, t1={3,4}; clusters: c0={0,1}, c1={2,3,4}.
TRUE = [0, 0, 0, 1, 1]
PRED = [0, 0, 1, 1, 1]


def brute_force_pairwise(true, pred):
    both = truly = predicted = 0
    for i, j in itertools.combinations(range(len(true)), 2):
        t = true[i] == true[j]
        p = pred[i] == pred[j]
        truly += t
        predicted += p
        both += t and p
    precision = 1.0 if predicted == 0 else both / predicted
    recall = 1.0 if truly == 0 else both / truly
    return precision, recall


def test_pairwise_hand_computed():
    # truly same = C(3,2)+C(2,2) = 3+1 = 4; predicted same = C(2,2)+C(3,2) = 1+3 = 4;
    # both = (0,1) and (3,4) = 2  ->  P = 2/4, R = 2/4, F1 = 0.5
    assert pairwise_prf(TRUE, PRED) == pytest.approx((0.5, 0.5, 0.5))


def test_bcubed_hand_computed():
    # item: cluster, class, overlap -> precision, recall
    # 0: {0,1},   {0,1,2}, 2 -> 2/2, 2/3
    # 1: {0,1},   {0,1,2}, 2 -> 2/2, 2/3
    # 2: {2,3,4}, {0,1,2}, 1 -> 1/3, 1/3
    # 3: {2,3,4}, {3,4},   2 -> 2/3, 2/2
    # 4: {2,3,4}, {3,4},   2 -> 2/3, 2/2
    # P = (1+1+1/3+2/3+2/3)/5 = 11/15; R = (2/3+2/3+1/3+1+1)/5 = 11/15; F1 = 11/15
    assert bcubed_prf(TRUE, PRED) == pytest.approx((11 / 15, 11 / 15, 11 / 15))


def test_perfect_clustering_with_renamed_labels():
    pred = [7, 7, 7, 3, 3]  # same partition as TRUE, different names
    assert pairwise_prf(TRUE, pred) == pytest.approx((1.0, 1.0, 1.0))
    assert bcubed_prf(TRUE, pred) == pytest.approx((1.0, 1.0, 1.0))
    assert nmi(TRUE, pred) == pytest.approx(1.0)
    assert ari(TRUE, pred) == pytest.approx(1.0)


def test_all_singletons():
    pred = [0, 1, 2, 3, 4]
    # no predicted-same pairs -> P = 1 by convention; 0 of 4 true pairs found -> R = 0
    assert pairwise_prf(TRUE, pred) == pytest.approx((1.0, 0.0, 0.0))
    # BCubed: P = 1 per item; R = (1/3+1/3+1/3+1/2+1/2)/5 = 2/5; F1 = 2*0.4/1.4 = 4/7
    assert bcubed_prf(TRUE, pred) == pytest.approx((1.0, 0.4, 4 / 7))


def test_one_big_cluster():
    pred = [0, 0, 0, 0, 0]
    # predicted same = C(5,2) = 10, of which the 4 truly-same pairs -> P = 0.4, R = 1
    p, r, f = pairwise_prf(TRUE, pred)
    assert (p, r) == pytest.approx((0.4, 1.0))
    assert f == pytest.approx(2 * 0.4 / 1.4)
    # BCubed: P = (3/5*3 + 2/5*2)/5 = 13/25; R = 1
    assert bcubed_prf(TRUE, pred)[:2] == pytest.approx((13 / 25, 1.0))


def test_no_true_pairs_gives_recall_one():
    true = [0, 1, 2]
    assert pairwise_prf(true, [0, 1, 2]) == pytest.approx((1.0, 1.0, 1.0))
    assert pairwise_prf(true, [0, 0, 1])[:2] == pytest.approx((0.0, 1.0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pairwise_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 15, size=200).tolist()
    pred = rng.integers(0, 25, size=200).tolist()
    expected = brute_force_pairwise(true, pred)
    assert pairwise_prf(true, pred)[:2] == pytest.approx(expected)


def test_string_labels_match_int_labels():
    true = ["ann", "ann", "ann", "bob", "bob"]
    pred = ["x", "x", "y", "y", "y"]
    assert pairwise_prf(true, pred) == pytest.approx(pairwise_prf(TRUE, PRED))
    assert bcubed_prf(true, pred) == pytest.approx(bcubed_prf(TRUE, PRED))
    assert nmi(true, pred) == pytest.approx(nmi(TRUE, PRED))
    assert ari(true, pred) == pytest.approx(ari(TRUE, PRED))


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        pairwise_prf([0, 1], [0, 1, 2])
    with pytest.raises(ValueError):
        bcubed_prf([], [])


def test_silhouette_separated_clusters():
    rng = np.random.default_rng(0)
    a = np.array([1.0, 0.0, 0.0]) + 0.01 * rng.normal(size=(20, 3))
    b = np.array([0.0, 1.0, 0.0]) + 0.01 * rng.normal(size=(20, 3))
    x = np.vstack([a, b])
    labels = [0] * 20 + [1] * 20
    assert silhouette_cosine(x, labels) > 0.9
    # sampled path is deterministic for a seed
    s1 = silhouette_cosine(x, labels, sample_size=30, seed=3)
    assert s1 == silhouette_cosine(x, labels, sample_size=30, seed=3)
    assert s1 > 0.9


def test_silhouette_undefined_returns_none():
    x = np.random.default_rng(0).normal(size=(4, 3))
    assert silhouette_cosine(x, [0, 0, 0, 0]) is None  # one cluster
    assert silhouette_cosine(x, [0, 1, 2, 3]) is None  # all singletons


def test_summary_without_truth():
    # clusters {0,1,2}, {3}, {4}: items alone = 2 of 5
    s = clustering_summary([5, 5, 5, 8, 9])
    assert s == {"n_items": 5, "n_clusters": 3, "singleton_share": 0.4, "largest_cluster": 3}


def test_summary_with_truth_and_embeddings_is_json_ready():
    x = np.random.default_rng(0).normal(size=(5, 4))
    s = clustering_summary(np.array(PRED), true=np.array(TRUE), embeddings=x)
    assert s["pairwise_precision"] == 0.5
    assert s["bcubed_f1"] == round(11 / 15, 4)
    assert {"nmi", "ari", "silhouette"} <= s.keys()
    for value in s.values():
        assert value is None or type(value) in (int, float)
    json.dumps(s)
