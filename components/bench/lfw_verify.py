"""``faces bench lfw-verify``: LFW View 2 verification, our engine beside dlib's.

Both pipelines see the same photos and pairs. For each photo the main face (ours:
the engine's rule, the usable face nearest the centre) is LFW's subject. A photo
where a pipeline finds no face scores below every real pair (counted against that
pipeline, and reported).

Accuracy needs every photo of ``pairs.txt`` embedded by each pipeline; those
embeddings are cached under ``bench/cache`` by pipeline version, so a re-run does
not repeat 20 minutes of work. Speed is always measured in the run itself, side by
side on the same photos: our engine, the dlib pipeline, and the ``mtcnn`` package
called photo by photo against our batched detector.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

from components.bench import save_result
from components import detect as detect_step
from components import engine as engine_step
from components.bench import reference_dlib
from components.report.verification import verification_report
from components.datasets.lfw import LFW_ROOT_DEFAULT, read_pairs
from components.images import load_image
from components.settings import PROJECT_ROOT, Settings

CHUNK = 256
CACHE_DIR = PROJECT_ROOT / "bench" / "cache"


class EnginePipeline:
    """The face engine with the local pretrained model: the main face of each photo."""

    def __init__(self, settings: Settings):
        from components.track.registry import local_ref

        self.engine = engine_step.FaceEngine(settings.detect, engine_step.load_model(local_ref(settings),
                                                                                    settings.embed.batch_size))
        # The detector's settings name the cache too: `detect.mode: package` (or a lower
        # min_face_fraction) finds other faces with the same code version.
        digest = hashlib.sha256(json.dumps(asdict(settings.detect), sort_keys=True).encode()).hexdigest()[:8]
        self.detect_key = f"{settings.detect.mode}-{digest}"

    @property
    def version(self) -> str:
        return (f"detect-{detect_step.__version__}-{self.detect_key}_engine-{engine_step.__version__}_"
                f"{self.engine.model.version}")

    def __call__(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        # The model's own width (1024 for FaceRes), not the dlib model's 128.
        vectors = np.zeros((len(images), int(self.engine.model.embedder.model.output_shape[-1])), np.float32)
        rows, crops = [], []
        for row, photo in enumerate(self.engine.detect(images)):
            if photo.main is not None:  # LFW names the main face, also when it fails a quality gate
                rows.append(row)
                crops.append(photo.main_face.crop)
        if crops:
            vectors[rows] = self.engine.embed(np.stack(crops))
        found = np.zeros(len(images), bool)
        found[rows] = True
        return vectors, found


class DlibPipeline:
    """dlib's HOG + 5-point + ResNet, main face per photo."""

    version = "dlib-face_recognition-1.3.0"

    def __call__(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        faces = [reference_dlib.encode_main_face(image) for image in images]
        vectors = np.array([f.encoding if f.encoding is not None else np.zeros(128) for f in faces])
        return vectors, np.array([f.encoding is not None for f in faces])


def embed_all(pipeline: Callable, paths: list[Path], name: str, progress: bool,
              photo_set: str = "lfw_pairs") -> tuple[np.ndarray, np.ndarray]:
    """Main-face embeddings of every photo, from the cache when this pipeline version made them.

    Args:
        pipeline: ``EnginePipeline`` or ``DlibPipeline`` (anything with ``version`` and
            ``__call__(images) -> (vectors, found)``).
        paths: the photos, in a fixed order.
        name: progress-bar label.
        progress: show a progress bar.
        photo_set: names the cache file together with the pipeline version
            (e.g. ``lfw_pairs`` for the photos of pairs.txt, ``lfw_all`` for all of LFW).
    """
    cache = CACHE_DIR / f"{photo_set}_{pipeline.version}.npz"
    keys = np.array([str(p.relative_to(PROJECT_ROOT)) if p.is_relative_to(PROJECT_ROOT) else str(p) for p in paths])
    if cache.exists():
        data = np.load(cache)
        if np.array_equal(data["paths"], keys):
            return data["vectors"], data["found"]
    vectors, found = [], []
    for start in tqdm(range(0, len(paths), CHUNK), desc=name, unit="chunk", disable=None if progress else True):
        v, f = pipeline([load_image(path) for path in paths[start : start + CHUNK]])
        vectors.append(v)
        found.append(f)
    vectors, found = np.concatenate(vectors), np.concatenate(found)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.stem}.tmp.npz")
    np.savez_compressed(tmp, paths=keys, vectors=vectors, found=found)
    os.replace(tmp, cache)
    return vectors, found


def timed(function: Callable, repeats: int) -> float:
    """Median wall time of ``repeats`` calls (these shared 2-core machines are noisy)."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def speed(paths: list[Path], engine: EnginePipeline, repeats: int, with_dlib: bool) -> dict:
    """Photos per second of each pipeline on the same photos, in this run."""
    from mtcnn import MTCNN

    images = [load_image(path) for path in paths]
    engine(images[:4])  # warm-up: model loading and graph tracing are not throughput
    single = MTCNN()
    single.detect_faces(images[0])
    result: dict = {"photos": len(images), "repeats": repeats}
    engine_s = timed(lambda: engine(images), repeats)
    result["engine_photos_per_s"] = round(len(images) / engine_s, 2)
    detector, embedder = engine.engine.detector, engine.engine.model.embedder
    detect_s = timed(lambda: detector.locate(images), repeats)
    crops = np.stack([faces[0].crop for faces in detector.detect(images[:64]) if faces])
    embed_s = timed(lambda: embedder.embed(crops), repeats)
    result["engine_embed_faces_per_s"] = round(len(crops) / embed_s, 2)
    faces = sum(len(found) for found in detector.locate(images))
    single_s = timed(lambda: [single.detect_faces(image) for image in images], repeats)
    result["detector"] = {
        "batched_photos_per_s": round(len(images) / detect_s, 2),
        "batched_faces_per_s": round(faces / detect_s, 2),
        "mtcnn_single_photos_per_s": round(len(images) / single_s, 2),
        "mtcnn_single_faces_per_s": round(faces / single_s, 2),
        "speedup_batched_vs_single": round(single_s / detect_s, 2),
    }
    if with_dlib:
        dlib = DlibPipeline()
        dlib(images[:2])
        dlib_s = timed(lambda: dlib(images), repeats)
        result["dlib_photos_per_s"] = round(len(images) / dlib_s, 2)
        result["speedup_engine_vs_dlib"] = round(dlib_s / engine_s, 2)
    return result


def pair_scores(index_of: dict, pairs, vectors: np.ndarray, found: np.ndarray, similarity) -> np.ndarray:
    a = np.array([index_of[p.path_a] for p in pairs])
    b = np.array([index_of[p.path_b] for p in pairs])
    scores = similarity(vectors[a], vectors[b]).astype(np.float64)
    missing = ~(found[a] & found[b])
    if missing.any():
        scores[missing] = scores[~missing].min() - 1.0  # below every real pair: always "different"
    return scores


def run_benchmark(settings: Settings, out: Path, with_dlib: bool = True, speed_photos: int = 300, repeats: int = 3,
                  root: Path = LFW_ROOT_DEFAULT, progress: bool = True) -> dict:
    """Run the whole benchmark and write its JSON to ``out``."""
    root = root if root.is_absolute() else PROJECT_ROOT / root
    pairs = read_pairs(root)
    paths = sorted({p.path_a for p in pairs} | {p.path_b for p in pairs})
    index_of = {path: i for i, path in enumerate(paths)}
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    with_dlib = with_dlib and reference_dlib.available()
    load_before = _load_average()

    engine = EnginePipeline(settings)
    vectors, found = embed_all(engine, paths, "engine", progress)
    cosine = lambda a, b: np.sum(a * b, axis=1)  # noqa: E731
    result = {
        "benchmark": "lfw-verify",
        "command": "faces bench lfw-verify" + ("" if with_dlib else " --no-dlib"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        # Speeds on a shared machine mean little without how busy it was.
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "load_average_before": load_before},
        "protocol": "LFW View 2 (pairs.txt): 10 folds, threshold fit on 9 folds and tested on the 10th; "
                    "main (centre) face of each photo; a photo without a face loses its pairs",
        "pairs": len(pairs),
        "photos": len(paths),
        "engine": {
            "name": "MTCNN (batched) + dlib-ResNet rebuilt in Keras",
            "version": engine.version,
            "detect_params": {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(settings.detect).items()},
            **verification_report(pair_scores(index_of, pairs, vectors, found, cosine), same, folds),
            "photos_without_face": int((~found).sum()),
        },
    }
    if with_dlib:
        dlib_vectors, dlib_found = embed_all(DlibPipeline(), paths, "dlib", progress)
        negative_distance = lambda a, b: -np.linalg.norm(a - b, axis=1)  # noqa: E731
        scores = pair_scores(index_of, pairs, dlib_vectors, dlib_found, negative_distance)
        result["dlib_reference"] = {
            "name": "dlib HOG + 5-point + ResNet (face_recognition 1.3.0, dlib-bin)",
            "version": DlibPipeline.version,
            **verification_report(scores, same, folds),
            "accuracy_at_dlib_default_distance_0.6": round(float(np.mean((scores >= -reference_dlib.DLIB_DEFAULT_DISTANCE) == same)), 5),
            "photos_without_face": int((~dlib_found).sum()),
        }
    # Every n-th photo, so the timing sample spans many people and image conditions.
    sample = paths[:: max(1, len(paths) // speed_photos)][:speed_photos]
    result["speed"] = speed(sample, engine, repeats, with_dlib)
    result["machine"]["load_average_after"] = _load_average()
    result["table"] = _table(result)
    save_result(out, result)
    return result


def _load_average() -> list[float]:
    """1, 5 and 15-minute load averages."""
    return [round(v, 2) for v in os.getloadavg()]


def _table(result: dict) -> list[dict]:
    speeds = result["speed"]
    rows = []
    for key, per_s in (("engine", "engine_photos_per_s"), ("dlib_reference", "dlib_photos_per_s")):
        if key in result:
            r = result[key]
            rows.append({
                "pipeline": r["name"],
                "accuracy": f"{r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f}",
                "auc": r["auc"],
                "tar@far=1e-3": r["tar_at_far_1e-3"],
                "photos_without_face": r["photos_without_face"],
                "photos_per_s": speeds.get(per_s),
            })
    return rows
