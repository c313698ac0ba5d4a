"""``faces bench lfw-verify``: LFW View 2 verification, our engine beside dlib's.

Both pipelines see the same photos and pairs. For each photo, the face nearest the
centre is LFW's subject. A photo where a pipeline finds no face scores the lowest
possible similarity for its pairs (counted against that pipeline, and reported).
Embeddings are cached under ``bench/cache`` by model version, so a re-run only
repeats the timing.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

from components.bench import reference_dlib
from components.bench.verification import verification_report
from components.datasets.lfw import LFW_ROOT_DEFAULT, read_pairs
from components.detect import FaceDetector
from components.embed import Embedder
from components.images import load_image
from components.pipeline.run import main_face_index
from components.settings import PROJECT_ROOT, Settings

CHUNK = 256


def engine_embeddings(paths: list[Path], settings: Settings, progress: bool = True) -> dict:
    """Main-face embeddings of every photo with our detector + embedder, timed."""
    detector = FaceDetector(settings.detect)
    embedder = Embedder(settings.model_path, batch_size=settings.embed.batch_size)
    vectors = np.zeros((len(paths), 128), np.float32)
    found = np.zeros(len(paths), bool)
    detect_seconds = embed_seconds = 0.0
    faces_detected = 0
    for start in tqdm(range(0, len(paths), CHUNK), desc="engine", unit="chunk", disable=None if progress else True):
        images = [load_image(path) for path in paths[start : start + CHUNK]]
        began = time.perf_counter()
        detections = detector.detect(images)
        detect_seconds += time.perf_counter() - began
        faces_detected += sum(len(faces) for faces in detections)
        crops, rows = [], []
        for offset, (image, faces) in enumerate(zip(images, detections)):
            main = main_face_index(faces, image.shape)
            if main is not None:
                crops.append(faces[main].crop)
                rows.append(start + offset)
        if crops:
            began = time.perf_counter()
            vectors[rows] = embedder.embed(np.stack(crops))
            embed_seconds += time.perf_counter() - began
            found[rows] = True
    return {
        "vectors": vectors,
        "found": found,
        "model_version": embedder.version,
        "detect_photos_per_s": len(paths) / detect_seconds,
        "detect_faces_per_s": faces_detected / detect_seconds,
        "embed_faces_per_s": int(found.sum()) / max(embed_seconds, 1e-9),
    }


def dlib_embeddings(paths: list[Path], progress: bool = True) -> dict:
    """Main-face encodings with the dlib reference pipeline, timed end to end."""
    vectors = np.zeros((len(paths), 128), np.float64)
    found = np.zeros(len(paths), bool)
    seconds = 0.0
    for index, path in enumerate(tqdm(paths, desc="dlib", unit="photo", disable=None if progress else True)):
        image = load_image(path)
        began = time.perf_counter()
        face = reference_dlib.encode_main_face(image)
        seconds += time.perf_counter() - began
        if face.encoding is not None:
            vectors[index], found[index] = face.encoding, True
    return {"vectors": vectors, "found": found, "photos_per_s": len(paths) / seconds}


def detector_speed(paths: list[Path], settings: Settings) -> dict:
    """Our batched detector against the ``mtcnn`` package called photo by photo."""
    from mtcnn import MTCNN

    images = [load_image(path) for path in paths]
    single = MTCNN()
    single.detect_faces(images[0])  # warm-up: graph tracing is not detection
    began = time.perf_counter()
    single_faces = sum(len(single.detect_faces(image)) for image in images)
    single_seconds = time.perf_counter() - began
    batched = FaceDetector(settings.detect)
    batched.locate(images[:2])
    began = time.perf_counter()
    batched_faces = sum(len(found) for found in batched.locate(images))
    batched_seconds = time.perf_counter() - began
    return {
        "photos": len(images),
        "mtcnn_single_faces_per_s": round(single_faces / single_seconds, 2),
        "batched_faces_per_s": round(batched_faces / batched_seconds, 2),
        "speedup": round(single_seconds / batched_seconds, 2),
        "faces_found": {"single": single_faces, "batched": batched_faces},
        "batch_size": settings.detect.batch_size,
    }


def pair_scores(index_of: dict, pairs, vectors: np.ndarray, found: np.ndarray, similarity) -> np.ndarray:
    a = np.array([index_of[p.path_a] for p in pairs])
    b = np.array([index_of[p.path_b] for p in pairs])
    scores = similarity(vectors[a], vectors[b])
    missing = ~(found[a] & found[b])
    if missing.any():
        scores[missing] = scores[~missing].min() - 1.0  # below every real pair: always "different"
    return scores


def run_benchmark(settings: Settings, out: Path, with_dlib: bool = True, limit_pairs: int | None = None,
                  detect_speed_photos: int = 256, root: Path = LFW_ROOT_DEFAULT, progress: bool = True) -> dict:
    """Run the whole benchmark and write its JSON to ``out``."""
    root = root if root.is_absolute() else PROJECT_ROOT / root
    pairs = read_pairs(root)
    if limit_pairs:
        by_fold: dict[int, list] = {}
        for pair in pairs:
            by_fold.setdefault(pair.fold, []).append(pair)
        pairs = [p for fold in by_fold.values() for p in fold[: limit_pairs // 2] + fold[len(fold) // 2 : len(fold) // 2 + limit_pairs // 2]]
    paths = sorted({p.path_a for p in pairs} | {p.path_b for p in pairs})
    index_of = {path: i for i, path in enumerate(paths)}
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])

    engine = engine_embeddings(paths, settings, progress)
    _cache_embeddings(paths, engine)
    cosine = lambda a, b: np.sum(a * b, axis=1).astype(np.float64)  # noqa: E731
    ours = verification_report(pair_scores(index_of, pairs, engine["vectors"], engine["found"], cosine), same, folds)
    result = {
        "benchmark": "lfw-verify",
        "command": "faces bench lfw-verify" + (f" --limit-pairs {limit_pairs}" if limit_pairs else "") + ("" if with_dlib else " --no-dlib"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "protocol": "LFW View 2 (pairs.txt), 10 folds, threshold fit on 9 folds and tested on the 10th",
        "pairs": len(pairs),
        "photos": len(paths),
        "engine": {
            "name": "MTCNN (batched) + dlib-ResNet rebuilt in Keras",
            "model_version": engine["model_version"],
            **ours,
            "photos_without_face": int((~engine["found"]).sum()),
            "detect_photos_per_s": round(engine["detect_photos_per_s"], 2),
            "detect_faces_per_s": round(engine["detect_faces_per_s"], 2),
            "embed_faces_per_s": round(engine["embed_faces_per_s"], 2),
        },
    }
    if with_dlib and reference_dlib.available():
        dlib = dlib_embeddings(paths, progress)
        negative_distance = lambda a, b: -np.linalg.norm(a - b, axis=1)  # noqa: E731
        scores = pair_scores(index_of, pairs, dlib["vectors"], dlib["found"], negative_distance)
        theirs = verification_report(scores, same, folds)
        fixed = float(np.mean((scores >= -reference_dlib.DLIB_DEFAULT_DISTANCE) == same))
        result["dlib_reference"] = {
            "name": "dlib HOG + 5-point + ResNet (face_recognition 1.3.0, dlib-bin)",
            **theirs,
            "accuracy_at_default_distance_0.6": round(fixed, 5),
            "photos_without_face": int((~dlib["found"]).sum()),
            "photos_per_s": round(dlib["photos_per_s"], 2),
        }
        engine_photos_per_s = 1.0 / (1.0 / engine["detect_photos_per_s"] + 1.0 / engine["embed_faces_per_s"])
        result["engine"]["photos_per_s"] = round(engine_photos_per_s, 2)
        result["speed_ratio_engine_vs_dlib"] = round(engine_photos_per_s / dlib["photos_per_s"], 2)
    if detect_speed_photos:
        result["detector_speed"] = detector_speed(paths[:detect_speed_photos], settings)
    result["table"] = _table(result)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    return result


def _cache_embeddings(paths: list[Path], engine: dict) -> Path:
    """Keep the main-face embeddings for other benchmarks and calibration (keyed by model)."""
    cache = PROJECT_ROOT / "bench" / "cache" / f"lfw_pairs_{engine['model_version']}.npz"
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, paths=np.array([str(p) for p in paths]), vectors=engine["vectors"], found=engine["found"])
    return cache


def _table(result: dict) -> list[dict]:
    rows = []
    for key in ("engine", "dlib_reference"):
        if key in result:
            r = result[key]
            rows.append({
                "pipeline": r["name"],
                "accuracy": f"{r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f}",
                "auc": r["auc"],
                "tar@far=1e-3": r["tar_at_far_1e-3"],
                "photos_without_face": r["photos_without_face"],
                "photos_per_s": r.get("photos_per_s"),
            })
    return rows
