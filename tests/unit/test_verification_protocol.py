"""The LFW protocol maths on hand-made scores."""

import numpy as np
import pytest

from components.bench.verification import best_threshold, tar_at_far, ten_fold_accuracy, verification_report


def test_best_threshold_separates_perfectly_separable_scores():
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    same = np.array([False, False, False, True, True])
    threshold = best_threshold(scores, same)
    assert 0.3 < threshold < 0.8
    assert threshold == pytest.approx(0.55)


def test_ten_fold_accuracy_fits_on_nine_folds_and_tests_on_the_tenth():
    # Fold 2 alone would want a threshold of 0.35 but is judged by fold 1's 0.55:
    # its "same" pair at 0.5 is then rejected, so fold 2 scores 3/4.
    scores = np.array([0.1, 0.3, 0.8, 0.9, 0.2, 0.3, 0.5, 0.9])
    same = np.array([0, 0, 1, 1, 0, 0, 1, 1], bool)
    folds = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    report = ten_fold_accuracy(scores, same, folds)
    assert report["fold_thresholds"][1] == pytest.approx(0.55)
    assert report["fold_accuracies"] == [1.0, 0.75]
    assert report["accuracy_mean"] == pytest.approx(0.875)
    assert report["accuracy_std"] == pytest.approx(0.125)


def test_tar_at_far_reads_the_roc_curve():
    # 1000 impostors, one of them above every genuine pair: at FAR <= 0.001 one false accept
    # is allowed, so every genuine pair (all above the other impostors) is accepted.
    impostors = np.concatenate([np.linspace(0.0, 0.5, 999), [0.99]])
    genuine = np.array([0.6, 0.7, 0.8, 0.9])
    scores = np.concatenate([impostors, genuine])
    same = np.concatenate([np.zeros(1000, bool), np.ones(4, bool)])
    assert tar_at_far(scores, same, 1e-3) == 1.0
    # With no false accept allowed, none of the genuine pairs (all below 0.99) is accepted.
    assert tar_at_far(scores, same, 0.0) == 0.0


def test_verification_report_has_every_figure():
    rng = np.random.default_rng(0)
    same = np.repeat([True, False], 300)
    scores = np.where(same, rng.normal(1, 0.3, 600), rng.normal(0, 0.3, 600))
    folds = np.tile(np.arange(1, 11), 60)
    report = verification_report(scores, same, folds)
    assert set(report) >= {"accuracy_mean", "accuracy_std", "auc", "tar_at_far_1e-3", "threshold_mean"}
    assert 0.9 < report["accuracy_mean"] <= 1.0
    assert 0.95 < report["auc"] <= 1.0
