"""Unit tests for components.report.metrics.clustering_accuracy (the thesis's accuracy)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from components.report.metrics import clustering_accuracy, clustering_summary


def test_identical_partitions_up_to_renaming():
    assert clustering_accuracy([0, 0, 1, 1, 2], ["b", "b", "a", "a", "z"]) == 1.0


def test_one_cluster_holding_everything():
    # classes A:3, B:2, C:1 all in one cluster; the cluster matches A only -> 3 / 6
    true = ["A", "A", "A", "B", "B", "C"]
    assert clustering_accuracy(true, [7] * 6) == 0.5


def test_all_singletons():
    # every identity can claim only one of its singletons: A (3 items) 1 + B (2 items) 1 -> 2 / 5
    assert clustering_accuracy([0, 0, 0, 1, 1], [0, 1, 2, 3, 4]) == pytest.approx(2 / 5)


def test_greedy_matching_is_not_optimal_but_hungarian_is():
    # contingency (rows = classes, cols = clusters):
    #          c0  c1
    #   t0      3   2
    #   t1      3   0
    # greedy takes the largest cell t0-c0 (3), then t1 has only c1 left (0): 3.
    # optimal: t0-c1 (2) + t1-c0 (3) = 5, so accuracy = 5 / 8.
    true = [0, 0, 0, 0, 0, 1, 1, 1]
    pred = [0, 0, 0, 1, 1, 0, 0, 0]
    assert clustering_accuracy(true, pred) == pytest.approx(5 / 8)


def test_more_clusters_than_classes_and_vice_versa():
    # t0 split over c0 (2) and c1 (1); t1 all in c2 (2): best = 2 + 2 = 4 of 5
    assert clustering_accuracy([0, 0, 0, 1, 1], [0, 0, 1, 2, 2]) == pytest.approx(4 / 5)
    # swapped roles: same table transposed, same answer
    assert clustering_accuracy([0, 0, 1, 2, 2], [0, 0, 0, 1, 1]) == pytest.approx(4 / 5)


@pytest.mark.parametrize("seed", range(20))
def test_matches_dense_hungarian_on_random_labelings(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    true = rng.integers(0, rng.integers(1, 10), n)
    pred = rng.integers(0, rng.integers(1, 12), n)
    _, t = np.unique(true, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    table = np.zeros((t.max() + 1, p.max() + 1))
    np.add.at(table, (t, p), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    assert clustering_accuracy(true, pred) == pytest.approx(table[rows, cols].sum() / n)


def test_scales_to_lfw_size_without_a_dense_table():
    # 13k items, ~5.7k identities, 6k clusters: a dense float table would be ~270 MB.
    rng = np.random.default_rng(0)
    true = rng.integers(0, 5749, 13233)
    pred = true.copy()
    moved = rng.random(13233) < 0.1
    pred[moved] = 10_000 + rng.integers(0, 300, moved.sum())
    accuracy = clustering_accuracy(true, pred)
    # at least every unmoved item of a class stays matched; at most N
    assert 0.85 < accuracy <= 1.0


def test_errors_and_summary_key():
    with pytest.raises(ValueError):
        clustering_accuracy([], [])
    with pytest.raises(ValueError):
        clustering_accuracy([0, 1], [0])
    summary = clustering_summary([0, 0, 1], true=["a", "a", "b"])
    assert summary["accuracy"] == 1.0
    assert "accuracy" not in clustering_summary([0, 0, 1])
