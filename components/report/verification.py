"""Verification protocol maths: LFW View 2 10-fold accuracy, ROC AUC, TAR at FAR.

Scores are similarities: higher means more likely the same person.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold that maximises accuracy on (scores, same); midpoints between scores."""
    order = np.sort(np.unique(scores))
    candidates = np.concatenate([[order[0] - 1e-6], (order[:-1] + order[1:]) / 2, [order[-1] + 1e-6]])
    accuracies = [np.mean((scores >= t) == same) for t in candidates]
    return float(candidates[int(np.argmax(accuracies))])


def ten_fold_decisions(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Which pairs the protocol decides right (each fold by the threshold fit on the other nine),
    and the threshold of each fold (in the order of ``np.unique(folds)``)."""
    scores, same, folds = np.asarray(scores, float), np.asarray(same, bool), np.asarray(folds)
    right = np.zeros(len(scores), bool)
    thresholds = []
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        threshold = best_threshold(scores[train], same[train])
        thresholds.append(threshold)
        right[test] = (scores[test] >= threshold) == same[test]
    return right, thresholds


def ten_fold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict:
    """LFW's protocol: for each fold, fit the threshold on the other nine, test on it.

    Returns:
        accuracy mean and std over folds, per-fold accuracies and thresholds.
    """
    right, thresholds = ten_fold_decisions(scores, same, folds)
    folds = np.asarray(folds)
    accuracies = [float(np.mean(right[folds == fold])) for fold in np.unique(folds)]
    return {
        "accuracy_mean": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        "fold_accuracies": accuracies,
        "fold_thresholds": thresholds,
        "threshold_mean": float(np.mean(thresholds)),
    }


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> float:
    """True accept rate at the largest threshold-free operating point with FAR <= far."""
    fpr, tpr, _ = roc_curve(np.asarray(same, bool), np.asarray(scores, float))
    allowed = fpr <= far
    return float(tpr[allowed].max()) if allowed.any() else 0.0


def verification_report(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict:
    """All figures of the protocol in one dict (rounded for JSON)."""
    report = ten_fold_accuracy(scores, same, folds)
    report["auc"] = float(roc_auc_score(np.asarray(same, bool), np.asarray(scores, float)))
    report["tar_at_far_1e-3"] = tar_at_far(scores, same, 1e-3)
    return {key: (np.round(value, 5).tolist() if isinstance(value, list) else round(value, 5)) for key, value in report.items()}
