"""The candidates benchmark's scoring: best accuracy in one sort, a fusion weight fitted on training folds only."""

from __future__ import annotations

import json
import zipfile

import numpy as np

from components.bench.candidates import best_accuracy, fused_scores, fusion_report
from components.report.verification import best_threshold


def test_best_accuracy_equals_the_protocol_threshold_search():
    rng = np.random.default_rng(0)
    for _ in range(30):
        scores = np.round(rng.normal(size=400), 1)  # ties, as in real similarity lists
        same = rng.random(400) < 0.5 + 0.4 * np.tanh(scores)
        threshold = best_threshold(scores, same)
        assert best_accuracy(scores, same) == np.mean((scores >= threshold) == same)


def _two_views(seed: int = 1, n: int = 2000):
    """Two noisy similarity scores of the same pairs: ``good`` tells the truth better than ``weak``."""
    rng = np.random.default_rng(seed)
    same = np.arange(n) % 2 == 0
    folds = np.arange(n) % 10 + 1
    signal = np.where(same, 1.0, -1.0)
    good = signal + rng.normal(0.0, 0.8, n)
    weak = signal + rng.normal(0.0, 1.6, n)
    return good, weak, same, folds


def test_fusion_fits_its_weight_on_the_training_folds_and_beats_either_alone():
    good, weak, same, folds = _two_views()
    scores, weights = fused_scores(good, weak, same, folds)
    assert len(weights) == 10 and all(0.5 < w < 1.0 for w in weights)  # the better view weighs more, not all
    report = fusion_report(good, weak, same, folds)
    alone = max(best_accuracy(good, same), best_accuracy(weak, same))
    assert report["accuracy_mean"] > alone - 0.01 and report["fold_weights_dlib"] == weights

    # The weight of a split never sees its test fold: relabelling fold 1 leaves its weight unchanged.
    flipped = same.copy()
    flipped[folds == 1] = ~flipped[folds == 1]
    assert fused_scores(good, weak, flipped, folds)[1][0] == weights[0]
    assert fused_scores(good, weak, flipped, folds)[1][1:] != weights[1:]


def test_a_faceres_model_is_versioned_under_its_own_name(tmp_path):
    from components.embed import MODEL_NAME
    from components.embed.embedder import model_family
    from components.embed.faceres import MODEL_NAME as FACERES_NAME

    for name, family in (("faceres", FACERES_NAME), ("face_recognition_net", MODEL_NAME)):
        path = tmp_path / f"{name}.keras"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("config.json", json.dumps({"class_name": "Functional", "config": {"name": name}}))
        assert model_family(path) == family
    assert model_family(tmp_path / "missing.keras") == MODEL_NAME
