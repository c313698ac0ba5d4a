"""The retraining core without files or servers: the head re-fit and the held-out evidence."""

from __future__ import annotations

import numpy as np
import pytest

from components.train.evidence import EvidenceError, evaluate_split, label_noise, split_evidence
from components.train.head import HeadConfig, HeadError, fit_head, project


def _clusters(n_classes=6, per_class=12, dim=16, seed=0, spread=0.6):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    features = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    mirrored = features + 0.05 * rng.normal(size=features.shape)
    return np.stack([features, mirrored], axis=1).astype(np.float32), labels


def test_the_head_moves_and_separates_the_training_identities():
    features, labels = _clusters()
    start = np.random.default_rng(1).normal(size=(16, 8)).astype(np.float32) * 0.01  # a head as small as the real one's
    fit = fit_head(features, labels, start, HeadConfig(steps=150, batch_size=48, anchor=0.1, seed=3))
    assert fit.kernel.shape == start.shape and fit.moved > 0.05
    assert fit.history[-1]["loss"] < fit.history[0]["loss"]

    def separation(kernel):
        x = project(features[:, 0], kernel)
        sims = x @ x.T
        same = labels[:, None] == labels[None, :]
        return sims[same].mean() - sims[~same].mean()

    assert separation(fit.kernel) > separation(start)
    # Seeded: the same data and settings give the same head.
    again = fit_head(features, labels, start, HeadConfig(steps=150, batch_size=48, anchor=0.1, seed=3))
    np.testing.assert_allclose(again.kernel, fit.kernel, atol=1e-5)


def test_a_strong_anchor_keeps_the_head_near_the_champions():
    features, labels = _clusters()
    start = np.random.default_rng(1).normal(size=(16, 8)).astype(np.float32)
    loose = fit_head(features, labels, start, HeadConfig(steps=100, batch_size=48, anchor=0.0))
    tight = fit_head(features, labels, start, HeadConfig(steps=100, batch_size=48, anchor=1000.0))
    assert tight.moved < loose.moved


def test_the_head_refuses_what_cannot_train_it():
    features, labels = _clusters(n_classes=2)
    start = np.eye(16, 8, dtype=np.float32)
    with pytest.raises(HeadError, match="two identities"):
        fit_head(features[labels == 0], labels[labels == 0], start, HeadConfig(steps=2))
    with pytest.raises(HeadError, match="loss 'triplet'"):
        fit_head(features, labels, start, HeadConfig(loss="triplet", steps=2))
    with pytest.raises(HeadError, match="dimensions"):
        fit_head(features[..., :8], labels, start, HeadConfig(steps=2))


def test_the_challenger_network_computes_what_the_head_projects():
    """The registered file is the champion's network with the new head: its output equals the projection."""
    from components.embed.network import build_face_recognition_net
    from components.train.head import feature_model, head_kernel, with_head

    model = build_face_recognition_net()
    kernel = head_kernel(model) @ np.random.default_rng(0).normal(size=(128, 128)).astype(np.float32)
    crops = np.random.default_rng(1).integers(0, 255, size=(2, 150, 150, 3)).astype(np.float32)
    challenger = with_head(model, kernel)
    expected = project(np.asarray(feature_model(model)(crops)), kernel)
    np.testing.assert_allclose(np.asarray(challenger(crops)), expected, atol=1e-4)
    assert not np.allclose(head_kernel(challenger), head_kernel(model))  # the champion itself is untouched


def test_evidence_holds_out_the_newest_faces_and_whole_identities():
    labels = np.repeat(np.arange(10), 8)
    order = np.tile(np.arange(8), 10)  # within each identity, later rows are newer
    split = split_evidence(labels, order, future_share=0.25, unseen_share=0.2, seed=0)
    unseen_ids = set(labels[split.unseen])
    assert len(unseen_ids) == 2 and not unseen_ids & set(labels[split.train])
    assert not set(split.future) & set(split.train) and not set(split.future) & set(split.unseen)
    for k in set(labels[split.future]):
        held = order[split.future][labels[split.future] == k]
        kept = order[split.train][labels[split.train] == k]
        assert held.min() > kept.max()  # the future is the newest
    for kind in ("future", "unseen"):
        chosen = split.kind == kind
        assert split.same[chosen].any() and (~split.same[chosen]).any()
    future_pairs = split.pairs[split.kind == "future"]
    assert np.isin(future_pairs[:, 0], split.future).all() and np.isin(future_pairs[:, 1], split.train).all()
    assert (labels[split.pairs[:, 0]] == labels[split.pairs[:, 1]]).tolist() == split.same.tolist()
    assert split.summary(labels)["unseen_identities"] == 2


def test_evidence_scores_separate_a_good_embedding_from_noise():
    labels = np.repeat(np.arange(10), 8)
    split = split_evidence(labels, np.tile(np.arange(8), 10), 0.25, 0.2, seed=0)
    good = np.eye(10, 16)[labels] + 0.05 * np.random.default_rng(0).normal(size=(80, 16))
    good /= np.linalg.norm(good, axis=1, keepdims=True)
    noise = np.random.default_rng(1).normal(size=(80, 16))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    assert evaluate_split(good, split)["auc"] > 0.99 and evaluate_split(noise, split)["auc"] < 0.75


def test_too_few_identities_are_refused():
    with pytest.raises(EvidenceError, match="at least 4"):
        split_evidence(np.repeat(np.arange(3), 6), np.arange(18), 0.2, 0.2)


def test_label_noise_against_folder_names():
    assert label_noise(np.array([0, 0, 1]), np.array([None, "", None], object)) is None
    perfect = label_noise(np.array([0, 0, 1, 1]), np.array(["a", "a", "b", "b"], object))
    assert perfect["pairwise_precision"] == 1.0 and perfect["faces_with_folder_names"] == 4
    merged = label_noise(np.array([0, 0, 0, 0]), np.array(["a", "a", "b", "b"], object))
    assert merged["pairwise_precision"] < 0.5


def test_the_paired_decisions_are_those_the_ten_fold_accuracy_counts():
    from components.report.verification import ten_fold_accuracy
    from components.train.evidence import decided_right

    rng = np.random.default_rng(3)
    same = rng.random(400) < 0.5
    scores = np.where(same, 0.7, 0.4) + rng.normal(0, 0.15, 400)
    folds = rng.permutation(np.arange(400) % 10 + 1)
    right = decided_right(scores, same, folds)
    report = ten_fold_accuracy(scores, same, folds)
    per_fold = [right[folds == fold].mean() for fold in range(1, 11)]
    assert np.allclose(per_fold, report["fold_accuracies"])
    assert 0.7 < right.mean() < 1.0  # neither all right nor all wrong: the noise makes errors
