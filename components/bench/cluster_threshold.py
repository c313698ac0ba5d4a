"""``faces bench cluster-threshold``: pick the clustering threshold without peeking.

The shipped Chinese Whispers threshold is calibrated on the people of LFW's
``people.txt`` folds 1-5 and scored on the people of folds 6-10, who were not
looked at (DESIGN.md 6). Embeddings are the main-face embeddings cached by
``faces bench lfw-verify`` (every photo that appears in ``pairs.txt``).
"""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from components.cluster import ChineseWhispers
from components.datasets.lfw import LFW_ROOT_DEFAULT, read_people_folds
from components.embed.embedder import model_digest
from components.embed.embedder import MODEL_NAME
from components.report.metrics import clustering_summary
from components.settings import PROJECT_ROOT, Settings

GRID = np.round(np.arange(0.88, 0.9601, 0.005), 3)


def _cached_embeddings(settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    version = f"{MODEL_NAME}+{model_digest(settings.model_path)[:12]}"
    cache = PROJECT_ROOT / "bench" / "cache" / f"lfw_pairs_{version}.npz"
    if not cache.exists():
        raise FileNotFoundError(f"{cache} is missing: run `faces bench lfw-verify` first (it caches the embeddings)")
    data = np.load(cache)
    found = data["found"]
    names = np.array([Path(p).parent.name for p in data["paths"]])
    return data["vectors"][found], names[found]


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
    vectors, names = _cached_embeddings(settings)
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
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result
