"""``faces bench synthetic-gradients``: decoupled training (synthetic gradients) beside back-propagation.

Data: aligned crops (MTCNN, the engine's detector and alignment, cached under
``bench/cache/lfw_faces``) of the LFW people with at least ``min_photos`` photos, at
most ``max_photos`` each; every ``holdout_every``-th photo of a person is held out.
Crops are downscaled for the small backbone. Both modes train the same small backbone
from the same initial weights on the same batches
(``components.train.synthetic_gradients.compare_backprop_and_synthetic``), steps
alternating between the modes; the result records the median step time and the
held-out identification and verification accuracy of each, with the command and the
machine.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from components.bench import save_result
from components.datasets.lfw import LFW_ROOT_DEFAULT, list_identities
from components.settings import PROJECT_ROOT, Settings


def lfw_people_crops(settings: Settings, min_photos: int, max_photos: int, size: int, holdout_every: int,
                     progress: bool = True) -> dict:
    """Aligned, downscaled main-face crops of LFW's most photographed people, split by photo.

    Args:
        settings: detector parameters (part of the crop cache key).
        min_photos: keep people with at least this many photos.
        max_photos: use at most this many photos per person (the first, sorted).
        size: side of the downscaled crops.
        holdout_every: every n-th photo of a person is held out.
        progress: progress bar while detecting.

    Returns:
        ``{"train_x", "train_y", "test_x", "test_y", "people"}``; x float32 RGB in [0, 255].

    Raises:
        ValueError: If fewer than 2 people qualify.
    """
    import tensorflow as tf

    from components.train.lfw_faces import lfw_faces

    identities = list_identities(PROJECT_ROOT / LFW_ROOT_DEFAULT)
    people = sorted(name for name, paths in identities.items() if len(paths) >= min_photos)
    if len(people) < 2:
        raise ValueError(f"only {len(people)} LFW people have >= {min_photos} photos; lower --min-photos")
    paths = [path for name in people for path in identities[name][:max_photos]]
    faces = lfw_faces(settings, paths=paths, progress=progress)
    main = np.flatnonzero(faces.is_main)
    names = faces.names[faces.photo[main]]
    labels = np.searchsorted(np.array(people), names)
    crops = tf.image.resize(np.asarray(faces.crops[main], np.float32), (size, size), antialias=True).numpy()
    rank = np.zeros(len(main), int)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        rank[rows] = np.arange(len(rows))
    held_out = rank % holdout_every == holdout_every - 1
    return {"train_x": crops[~held_out], "train_y": labels[~held_out], "test_x": crops[held_out],
            "test_y": labels[held_out], "people": people, "photos": len(paths), "faces": len(main)}


def run_benchmark(settings: Settings, out: Path, steps: int = 800, batch_size: int = 32, size: int = 64,
                  min_photos: int = 40, max_photos: int = 60, holdout_every: int = 4, seeds: int = 2,
                  progress: bool = True) -> dict:
    """Measures both training modes and writes ``out`` (JSON, atomically).

    Args:
        settings: project settings (detector parameters).
        out: result path.
        steps: training steps per mode.
        batch_size: faces per step.
        size: crop side for the small backbone.
        min_photos: people with at least this many photos.
        max_photos: photos per person at most.
        holdout_every: every n-th photo of a person is held out.
        seeds: repetitions with different initial weights and batch orders.
        progress: progress bar while detecting.

    Returns:
        The result written.
    """
    import tensorflow as tf

    from components.train.synthetic_gradients import compare_backprop_and_synthetic

    started = time.perf_counter()
    data = lfw_people_crops(settings, min_photos, max_photos, size, holdout_every, progress)
    prepared_s = time.perf_counter() - started
    runs = []
    for seed in range(seeds):
        runs.append(compare_backprop_and_synthetic(data["train_x"], data["train_y"], data["test_x"], data["test_y"],
                                                   steps=steps, batch_size=batch_size, seed=seed))
    modes = ("backprop", "synthetic_gradients")
    keys = ("median_step_ms", "held_out_identification_accuracy", "held_out_verification_accuracy",
            "held_out_verification_auc", "train_loss_last_10pct")
    table = {mode: {key: round(float(np.mean([r[mode][key] for r in runs])), 4) for key in keys} for mode in modes}
    table["step_time_ratio_sg_over_bp"] = round(float(np.mean([r["step_time_ratio_sg_over_bp"] for r in runs])), 3)
    result = {
        "benchmark": "synthetic-gradients",
        "command": " ".join(["faces" if Path(sys.argv[0]).name == "faces" else sys.argv[0], *sys.argv[1:]]),
        "baseline": "ordinary back-propagation of the same network on the same batches",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "tensorflow": tf.__version__,
                    "note": "shared machine: absolute times are noisy; steps of the two modes alternate, "
                            "so the ratio is the fairer figure"},
        "data": {"source": "LFW deep-funneled, MTCNN-aligned main faces", "people": len(data["people"]),
                 "photos": data["photos"], "faces": data["faces"], "train_faces": int(len(data["train_y"])),
                 "held_out_faces": int(len(data["test_y"])), "crop_px": size,
                 "split": f"every {holdout_every}th photo of each person held out"},
        "setup": {"network": "small (widths 16, 32, 64, 128), 64-D embedding, softmax loss",
                  "cut": "synthetic gradient after conv block 2 (16x16x32); predictor: 3x3 conv (32, ReLU) + "
                         "3x3 conv, plus a per-class gradient map, label-conditioned, zero-initialised outputs; "
                         "upper block trains one step behind (two-stage pipeline)",
                  "steps": steps, "batch_size": batch_size, "optimizer": "Adam 1e-3 (every part, both modes)",
                  "seeds": seeds,
                  "accuracy": "identification: nearest class centroid of training embeddings; verification: "
                              "balanced same/different pairs of held-out faces, 10-fold (threshold fitted on 9 "
                              "folds, tested on the 10th) and ROC AUC"},
        "table": table,
        "runs": runs,
        "data_preparation_s": round(prepared_s, 1),
        "total_s": round(time.perf_counter() - started, 1),
    }
    save_result(out, result)
    return result
