"""``faces bench cluster-threshold``: pick the clustering threshold without peeking.

The shipped Chinese Whispers threshold is calibrated on the people of LFW's
``people.txt`` folds 1-5 and scored on the people of folds 6-10, who were not
looked at (README.md, "Evaluation protocols"). Embeddings are the main-face embeddings of every photo in ``pairs.txt``,
shared (cached) with ``faces bench lfw-verify``.
"""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from components.bench import save_result
from components.cluster import ChineseWhispers
from components.datasets.lfw import LFW_ROOT_DEFAULT, read_pairs, read_people_folds
from components.bench.lfw_verify import EnginePipeline, embed_all
from components.report.metrics import clustering_summary
from components.settings import PROJECT_ROOT, Settings

GRID = np.round(np.arange(0.88, 0.9601, 0.005), 3)


def _pairs_photo_embeddings(settings: Settings, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Main-face embeddings of every photo of pairs.txt (shared cache with lfw-verify) and their names."""
    pairs = read_pairs(root)
    paths = sorted({p.path_a for p in pairs} | {p.path_b for p in pairs})
    vectors, found = embed_all(EnginePipeline(settings), paths, "engine", progress=True)
    names = np.array([path.parent.name for path in paths])
    return vectors[found], names[found]


def sweep(vectors: np.ndarray, names: np.ndarray, thresholds, seed: int = 0) -> list[dict]:
    """Clustering quality of Chinese Whispers at each threshold."""
    rows = []
    for threshold in thresholds:
        labels = ChineseWhispers(threshold=float(threshold), seed=seed).fit_predict(vectors)
        summary = clustering_summary(labels, true=names)
        rows.append({"threshold": float(threshold), **{k: summary[k] for k in (
            "n_clusters", "pairwise_precision", "pairwise_recall", "pairwise_f1", "bcubed_precision", "bcubed_recall", "bcubed_f1")}})
    return rows


def run_benchmark(settings: Settings, out: Path, root: Path = LFW_ROOT_DEFAULT) -> dict:
    root = root if root.is_absolute() else PROJECT_ROOT / root
    vectors, names = _pairs_photo_embeddings(settings, root)
    folds = read_people_folds(root)
    calibration_people = {name for fold in folds[:5] for name, _ in fold}
    held_out_people = {name for fold in folds[5:] for name, _ in fold}
    calibration = np.isin(names, list(calibration_people))
    held_out = np.isin(names, list(held_out_people))

    curve = sweep(vectors[calibration], names[calibration], GRID, settings.base.seed)
    # BCubed F, not pairwise F: pairwise F is dominated by the few largest identities.
    best = max(curve, key=lambda row: row["bcubed_f1"])
    held_out_curve = sweep(vectors[held_out], names[held_out], GRID, settings.base.seed)
    scored = next(row for row in held_out_curve if row["threshold"] == best["threshold"])
    shipped = next((row for row in held_out_curve if abs(row["threshold"] - settings.cluster.threshold) < 1e-9), None)
    result = {
        "benchmark": "cluster-threshold",
        "command": "faces bench cluster-threshold",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "protocol": "Chinese Whispers threshold chosen by BCubed F on people.txt folds 1-5, scored on folds 6-10 (pairs.txt photos)",
        "faces": {"calibration": int(calibration.sum()), "held_out": int(held_out.sum())},
        "people": {"calibration": len(set(names[calibration])), "held_out": len(set(names[held_out]))},
        "chosen_threshold": best["threshold"],
        "calibration_at_chosen": best,
        "held_out_at_chosen": scored,
        "held_out_at_shipped_default": shipped,
        "calibration_curve": curve,
        "held_out_curve": held_out_curve,
    }
    save_result(out, result)
    return result
