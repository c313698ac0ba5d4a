"""``faces bench candidates``: the pretrained embedders a registry can compare, on LFW View 2.

Rows, all on the same aligned 150x150 crops (the engine's main face of each photo,
from the cached LFW detection, :func:`components.train.lfw_faces.lfw_faces`) and the
same 6,000 pairs:

* ``dlib``: the engine's model (dlib's ResNet rebuilt in Keras), 128-D;
* ``dlib_flip``: the same with test-time flip: the embedding of the crop plus that of
  its mirror image, renormalised;
* ``faceres``: FaceRes (:mod:`components.embed.faceres`), 1024-D, in the product's
  contract (the aligned crop resized to 224x224 inside the model);
* ``faceres_flip``: FaceRes with test-time flip;
* ``fusion``: ``w * dlib_flip + (1 - w) * faceres_flip`` (cosine similarities); for each
  of the ten splits ``w`` (grid 0.00-1.00 by 0.01) is the one with the best accuracy on
  the nine training folds, then the threshold is fitted there as for every row. Its
  AUC and TAR use each pair's out-of-fold score (the weight fitted without its fold).

Scored as ``components.report.verification`` (threshold on nine folds, tested on the
tenth); a photo without a face loses its pairs. Embeddings are cached under
``bench/cache/candidates`` by model digest, with the time they took (a re-run reports the
time of the run that computed them); the machine's load average is recorded before and
after.
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
from components.report.verification import best_threshold, verification_report
from components.settings import PROJECT_ROOT, Settings

CACHE_DIR = PROJECT_ROOT / "bench" / "cache" / "candidates"
WEIGHTS = np.round(np.linspace(0.0, 1.0, 101), 2)


def flip_embed(embedder, crops: np.ndarray, flip: bool, chunk: int = 512) -> np.ndarray:
    """Embeddings of ``crops``; with ``flip``, of each crop plus its mirror image, renormalised."""
    parts = []
    for start in range(0, len(crops), chunk):
        batch = np.asarray(crops[start : start + chunk])
        vectors = embedder.embed(batch)
        if flip:
            vectors = vectors + embedder.embed(np.ascontiguousarray(batch[:, :, ::-1]))
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        parts.append(vectors.astype(np.float32))
    return np.concatenate(parts) if parts else embedder.embed(np.asarray(crops))


def best_accuracy(scores: np.ndarray, same: np.ndarray) -> float:
    """The best accuracy any threshold reaches on (scores, same), in O(n log n)."""
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], same[order].astype(np.int64)
    # Threshold between positions k-1 and k: pairs below are called different, the rest same.
    cuts = np.concatenate([[0], np.flatnonzero(np.diff(s) > 0) + 1, [len(s)]])
    negatives_below = np.concatenate([[0], np.cumsum(1 - y)])[cuts]
    positives_above = y.sum() - np.concatenate([[0], np.cumsum(y)])[cuts]
    return float((negatives_below + positives_above).max() / len(s))


def fused_scores(a: np.ndarray, b: np.ndarray, same: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Out-of-fold fused scores ``w a + (1 - w) b`` and the weight fitted on each split's training folds."""
    out, weights = np.zeros(len(a)), []
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        accuracy = [best_accuracy(w * a[train] + (1 - w) * b[train], same[train]) for w in WEIGHTS]
        best = np.flatnonzero(np.isclose(accuracy, max(accuracy)))
        w = float(WEIGHTS[best[len(best) // 2]])  # middle of the best weights
        weights.append(w)
        out[test] = w * a[test] + (1 - w) * b[test]
    return out, weights


def fusion_report(a: np.ndarray, b: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict:
    """The verification figures of the fusion, its weight refitted for every split."""
    scores, weights = fused_scores(a, b, same, folds)
    report = verification_report(scores, same, folds)
    # The protocol's per-fold thresholds on out-of-fold scores would mix weights; refit
    # them on each split's own fused training scores instead.
    accuracies, thresholds = [], []
    for fold, w in zip(np.unique(folds), weights):
        train, test = folds != fold, folds == fold
        threshold = best_threshold(w * a[train] + (1 - w) * b[train], same[train])
        thresholds.append(round(threshold, 5))
        accuracies.append(float(np.mean((w * a[test] + (1 - w) * b[test] >= threshold) == same[test])))
    report.update(accuracy_mean=round(float(np.mean(accuracies)), 5), accuracy_std=round(float(np.std(accuracies)), 5),
                  fold_accuracies=np.round(accuracies, 5).tolist(), fold_thresholds=thresholds,
                  threshold_mean=round(float(np.mean(thresholds)), 5), fold_weights_dlib=weights)
    return report


def _cached_vectors(name: str, embedder, digest: str, crops: np.ndarray, flip: bool,
                    progress: bool) -> tuple[np.ndarray, float, bool]:
    """Embeddings (cached by model digest, flip and crops), the seconds they took, and whether they were cached.

    The seconds are those of the run that computed them (kept beside the cached vectors).
    """
    import hashlib
    import json

    key = hashlib.sha256(np.ascontiguousarray(crops[:: max(1, len(crops) // 64)]).tobytes()).hexdigest()[:10]
    path = CACHE_DIR / f"{name}_{digest[:12]}_{len(crops)}_{key}.npy"
    timing = path.with_suffix(".json")
    if path.is_file() and timing.is_file():
        return np.load(path), float(json.loads(timing.read_text())["seconds"]), True
    if progress:
        print(f"embedding {len(crops)} crops: {name}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    vectors = flip_embed(embedder, crops, flip)
    seconds = time.perf_counter() - started
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npy")
    np.save(tmp, vectors)
    os.replace(tmp, path)
    timing.write_text(json.dumps({"seconds": seconds, "load_average": os.getloadavg()}))
    return vectors, seconds, False


def run_benchmark(settings: Settings, out: Path, progress: bool = True, command: str = "faces bench candidates") -> dict:
    """Runs the five rows and writes ``out`` (JSON); returns the result."""
    from components.datasets.lfw import LFW_ROOT_DEFAULT, read_pairs
    from components.embed import Embedder, faceres
    from components.track.registry import local_ref
    from components.train.lfw_faces import lfw_faces

    load_before = os.getloadavg()
    started = time.perf_counter()
    root = PROJECT_ROOT / LFW_ROOT_DEFAULT
    faces = lfw_faces(settings, root, progress=progress)
    pairs = read_pairs(root)
    index_of = {path: i for i, path in enumerate(faces.paths)}
    a = np.array([index_of[p.path_a] for p in pairs])
    b = np.array([index_of[p.path_b] for p in pairs])
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])

    # The main face of every photo of a pair (LFW's subject), in photo order.
    needed = np.unique(np.concatenate([a, b]))
    main_rows = np.flatnonzero(faces.is_main & np.isin(faces.photo, needed))
    main_rows = main_rows[np.argsort(faces.photo[main_rows], kind="stable")]
    row_of_photo = np.full(len(faces.paths), -1)
    row_of_photo[faces.photo[main_rows]] = np.arange(len(main_rows))
    crops = np.asarray(faces.crops[main_rows])
    usable = (row_of_photo[a] >= 0) & (row_of_photo[b] >= 0)

    def scores(vectors: np.ndarray) -> np.ndarray:
        s = np.sum(vectors[row_of_photo[a]] * vectors[row_of_photo[b]], axis=1).astype(np.float64)
        s[~usable] = s[usable].min() - 1.0  # a photo without a face loses its pairs
        return s

    models = {"dlib": Embedder(local_ref(settings).path, batch_size=settings.embed.batch_size),
              "faceres": Embedder(faceres.convert(settings.base.models_dir), batch_size=settings.embed.batch_size)}
    descriptions = {
        "dlib": "dlib ResNet (face-api.js weights rebuilt in Keras), 128-D: the engine's model",
        "dlib_flip": "the same, test-time flip (crop + mirror, renormalised)",
        "faceres": f"FaceRes MobileNet (VGGFace2), 1024-D, {faceres.PACKAGE}@{faceres.PACKAGE_VERSION}, aligned crop "
                   "resized to 224x224 in the model",
        "faceres_flip": "the same, test-time flip",
        "fusion": "w * dlib_flip + (1 - w) * faceres_flip, w fitted on the nine training folds of each split",
    }
    from components.embed import MODEL_NAME as DLIB_NAME
    from components.embed.embedder import model_digest

    digests = {name: model_digest(embedder.model_path) for name, embedder in models.items()}
    labels = {"dlib": f"{DLIB_NAME}+{digests['dlib'][:12]}", "faceres": f"{faceres.MODEL_NAME}+{digests['faceres'][:12]}"}
    rows, all_scores = {}, {}
    for name, flip in (("dlib", False), ("dlib_flip", True), ("faceres", False), ("faceres_flip", True)):
        model = name.split("_")[0]
        vectors, seconds, cached = _cached_vectors(name, models[model], digests[model], crops, flip, progress)
        all_scores[name] = scores(vectors)
        rows[name] = {"description": descriptions[name], "model": labels[model], "dimensions": int(vectors.shape[1]),
                      **verification_report(all_scores[name], same, folds),
                      "embed_seconds": round(seconds, 1), "embeddings_cached": cached,
                      "forward_passes_per_second": round(len(crops) * (2 if flip else 1) / seconds, 1)}
    rows["fusion"] = {"description": descriptions["fusion"],
                      **fusion_report(all_scores["dlib_flip"], all_scores["faceres_flip"], same, folds)}
    result = {
        "benchmark": "candidates",
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "protocol": "LFW View 2 (pairs.txt): 10 folds, threshold fit on 9 folds and tested on the 10th; aligned "
                    "150x150 crop of the main (centre) face of each photo (cached MTCNN detection); cosine "
                    "similarity; a photo without a face loses its pairs",
        "pairs": len(pairs), "photos": int(len(needed)), "photos_without_face": int(len(needed) - len(main_rows)),
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "table": table(rows),
    }
    save_result(out, result)
    return result


def table(rows: dict) -> list[str]:
    """One line per row: accuracy +- std, AUC, TAR at FAR 1e-3."""
    lines = [f"{'candidate':<14}{'accuracy':>18}{'AUC':>9}{'TAR@FAR1e-3':>13}"]
    for name, row in rows.items():
        lines.append(f"{name:<14}{row['accuracy_mean'] * 100:>10.2f} +- {row['accuracy_std'] * 100:.2f}"
                     f"{row['auc']:>9.5f}{row['tar_at_far_1e-3']:>13.4f}")
    return lines
