"""``faces bench detect``: recall and precision of three face detectors against known boxes, and their speed.

Detectors, side by side in one run on the same photos:

* ``mtcnn_package``: the ``mtcnn`` package, image by image, at full resolution, with its
  defaults (20-pixel faces and up in every photo);
* ``current``: the engine's detector before the fast one (``detect.mode: package``): the
  package on same-sized batches of photos downscaled to ``detect.max_side``;
* ``fast``: the engine's detector (``detect.mode: fast``, components/detect/fast_mtcnn.py).

Sets (seeded; the same photos for every detector):

* ``composed``: 1920x1080 photos composed from LFW faces at known boxes, each face's
  shorter side drawn log-uniformly from 20 to 400 px, on a smooth noisy background;
  recall per size band;
* ``collages``: 2, 3 or 4 LFW photos side by side (250 px each): the known box of each;
* ``lfw_pairs``: the photos of LFW's pairs.txt as they are: is the main face found (a
  face whose box holds the photo's centre, where deep-funneled LFW puts the person)?

Known boxes: each LFW source photo's own face, as the ``mtcnn`` package finds it on the
source photo (250 px, the face nearest the centre), moved and scaled with the paste.
Other faces the package finds in a pasted source (bystanders) are "ignore" boxes: a
detection of one counts neither for nor against a detector. A detection matches a known
box at IoU >= 0.5, greedily, most confident first; precision is matched detections over
all detections (not ignored), at every confidence and at the usable gate
(``detect.min_confidence``).

Speed: each set is cut in batches of ``detect.batch_size`` photos and every batch goes
through the three detectors in turn, so the shared machine's load falls on all three
alike; seconds per photo are the sums. The load average is recorded before, during
(after every batch) and after.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from components.bench import save_result, with_detect_mode
from components.settings import PROJECT_ROOT, Settings

LFW = PROJECT_ROOT / "data" / "lfw"
FULL_HD = (1080, 1920)  # (height, width)
# Shorter side of the known box, px; the bands cover every size (a face drawn at 20 px can land at 19.9).
SIZE_BANDS = ((0, 30), (30, 40), (40, 60), (60, 100), (100, 200), (200, 10_000))
IOU_MATCH = 0.5
BOUND_POINTS = 0.5  # the bound: recall of faces >= 40 px may not fall by more than this
DETECTORS = ("mtcnn_package", "current", "fast")


# -- pure core: boxes, matching, scores -------------------------------------------------------

@dataclass
class Truth:
    """The known faces of one photo: boxes (x, y, w, h), landmarks (N, 5, 2), and boxes to ignore."""

    boxes: np.ndarray
    landmarks: np.ndarray
    ignore: np.ndarray = field(default_factory=lambda: np.empty((0, 4)))

    @property
    def sizes(self) -> np.ndarray:
        """Shorter side of each known box (the engine's face size)."""
        return np.minimum(self.boxes[:, 2], self.boxes[:, 3]) if len(self.boxes) else np.empty(0)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection over union of boxes (x, y, w, h)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    left = np.maximum(a[:, None, 0], b[None, :, 0])
    top = np.maximum(a[:, None, 1], b[None, :, 1])
    right = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    bottom = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match(found: Sequence[tuple], truth: Truth, threshold: float = IOU_MATCH) -> dict:
    """Detections of one photo against its known boxes, most confident first.

    Args:
        found: (box xywh, landmarks (5, 2), confidence) per detection.

    Returns:
        ``matched``: (known faces,) index of the detection that found each, -1 when missed;
        ``false``: (detections,) True for a detection of no known and no ignored face;
        ``confidence``: (detections,).
    """
    order = sorted(range(len(found)), key=lambda i: -found[i][2])
    boxes = np.array([found[i][0] for i in order], np.float64).reshape(-1, 4)
    overlap = iou(boxes, truth.boxes)
    ignored = (iou(boxes, truth.ignore) >= threshold).any(axis=1) if len(truth.ignore) else np.zeros(len(boxes), bool)
    matched = np.full(len(truth.boxes), -1)
    false = np.zeros(len(found), bool)
    for rank, index in enumerate(order):
        free = np.where(matched < 0, overlap[rank], -1.0) if len(truth.boxes) else np.empty(0)
        if len(free) and free.max() >= threshold:
            matched[int(free.argmax())] = index
        elif not ignored[rank]:
            false[index] = True
    return {"matched": matched, "false": false, "confidence": np.array([f[2] for f in found], np.float64)}


def landmark_error(found: Sequence[tuple], truth: Truth, matched: np.ndarray) -> list[float]:
    """Mean distance of each matched face's 5 landmarks to the known ones, over the known face's size."""
    errors = []
    for known, index in enumerate(matched):
        if index >= 0:
            distance = np.linalg.norm(np.asarray(found[index][1]) - truth.landmarks[known], axis=1).mean()
            errors.append(float(distance / truth.sizes[known]))
    return errors


def band_name(band: tuple[int, int]) -> str:
    if band[0] == 0:
        return f"under {band[1]}"
    return f"{band[0]}-{band[1] - 1}" if band[1] < 10_000 else f"{band[0]} and more"


def score(found_per_photo: Sequence[Sequence[tuple]], truths: Sequence[Truth], min_confidence: float) -> dict:
    """Recall (overall, per size band, of faces >= 40 px), precision and landmark error over a set."""
    sizes, hits, false, confident_false, confident_true, errors = [], [], 0, 0, 0, []
    detections = 0
    for found, truth in zip(found_per_photo, truths):
        result = match(found, truth)
        sizes.append(truth.sizes)
        hits.append(result["matched"] >= 0)
        detections += len(found)
        false += int(result["false"].sum())
        confident = result["confidence"] >= min_confidence
        confident_false += int((result["false"] & confident).sum())
        true_rows = result["matched"][result["matched"] >= 0]
        confident_true += int(confident[true_rows].sum()) if len(true_rows) else 0
        errors += landmark_error(found, truth, result["matched"])
    sizes_all = np.concatenate(sizes) if sizes else np.empty(0)
    hit_all = np.concatenate(hits) if hits else np.empty(0, bool)
    true = int(hit_all.sum())

    def recall(mask: np.ndarray) -> dict:
        return {"faces": int(mask.sum()), "found": int(hit_all[mask].sum()),
                "recall": round(float(hit_all[mask].mean()), 4) if mask.any() else None}

    return {
        "faces": int(len(sizes_all)),
        "recall": recall(np.ones(len(sizes_all), bool)),
        "recall_40_plus": recall(sizes_all >= 40),
        "recall_below_40": recall(sizes_all < 40),
        "recall_by_size": {band_name(band): recall((sizes_all >= band[0]) & (sizes_all < band[1])) for band in SIZE_BANDS},
        "detections": detections,
        "false_detections": false,
        "precision": round(true / (true + false), 4) if true + false else None,
        "precision_at_min_confidence": round(confident_true / (confident_true + confident_false), 4)
        if confident_true + confident_false else None,
        "recall_at_min_confidence": round(confident_true / len(sizes_all), 4) if len(sizes_all) else None,
        "landmark_error_over_face_size": round(float(np.mean(errors)), 4) if errors else None,
    }


def main_face_found(found: Sequence[tuple], shape: tuple[int, ...]) -> bool:
    """Is there a face whose box holds the photo's centre (deep-funneled LFW's person)?"""
    cy, cx = shape[0] / 2, shape[1] / 2
    return any(x <= cx <= x + w and y <= cy <= y + h for (x, y, w, h), _, _ in found)


# -- composing photos with known boxes ------------------------------------------------------

@dataclass
class Source:
    """An LFW photo and its face as the ``mtcnn`` package finds it there."""

    image: np.ndarray
    box: np.ndarray  # (4,) x, y, w, h
    landmarks: np.ndarray  # (5, 2)
    others: np.ndarray  # (K, 4) other faces in the photo


def background(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth two-colour gradient with sensor-like noise (no faces in it)."""
    height, width = shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    colour = rng.uniform(50, 210, size=(2, 3)).astype(np.float32)
    mix = (x / width * 0.6 + y / height * 0.4)[..., None]
    noisy = colour[0] * (1 - mix) + colour[1] * mix + rng.normal(0, 6, size=(height, width, 3)).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def compose(sources: Sequence[Source], sizes: Sequence[float], rng: np.random.Generator,
            shape: tuple[int, int] = FULL_HD, margin: float = 0.35, tries: int = 60) -> tuple[np.ndarray, Truth]:
    """One photo with each source's face pasted at the given size (its box's shorter side), where it fits.

    Each paste is the source's face box with ``margin`` of its size around it (within the
    source photo), scaled so the face is ``size`` pixels, at a random free spot: pastes
    never overlap. Larger faces are placed first; a face that finds no free spot in
    ``tries`` draws is left out.

    Returns:
        The photo and its :class:`Truth` (the pasted faces, and their sources' other faces to ignore).
    """
    canvas = background(shape, rng)
    taken: list[tuple[int, int, int, int]] = []
    boxes, landmarks, ignore = [], [], []
    for index in sorted(range(len(sources)), key=lambda i: -sizes[i]):
        source, size = sources[index], float(sizes[index])
        x, y, w, h = source.box
        pad = margin * max(w, h)
        left, top = max(0, int(x - pad)), max(0, int(y - pad))
        right, bottom = min(source.image.shape[1], int(math.ceil(x + w + pad))), min(source.image.shape[0], int(math.ceil(y + h + pad)))
        factor = size / min(w, h)
        out_w, out_h = max(1, round((right - left) * factor)), max(1, round((bottom - top) * factor))
        if out_w >= shape[1] or out_h >= shape[0]:
            continue
        for _ in range(tries):
            px, py = int(rng.integers(0, shape[1] - out_w)), int(rng.integers(0, shape[0] - out_h))
            if all(px + out_w <= a or a + c <= px or py + out_h <= b or b + d <= py for a, b, c, d in taken):
                break
        else:
            continue
        patch = Image.fromarray(source.image[top:bottom, left:right]).resize((out_w, out_h), Image.Resampling.BILINEAR)
        canvas[py : py + out_h, px : px + out_w] = np.asarray(patch)
        taken.append((px, py, out_w, out_h))
        scale = np.array([out_w / (right - left), out_h / (bottom - top)])
        shift = np.array([px, py]) - np.array([left, top]) * scale
        boxes.append([x * scale[0] + shift[0], y * scale[1] + shift[1], w * scale[0], h * scale[1]])
        landmarks.append(source.landmarks * scale + shift)
        for ox, oy, ow, oh in source.others:
            ignore.append([ox * scale[0] + shift[0], oy * scale[1] + shift[1], ow * scale[0], oh * scale[1]])
    return canvas, Truth(np.array(boxes, np.float64).reshape(-1, 4), np.array(landmarks, np.float64).reshape(-1, 5, 2),
                         np.array(ignore, np.float64).reshape(-1, 4))


def collage(sources: Sequence[Source]) -> tuple[np.ndarray, Truth]:
    """2-4 LFW photos side by side (4: two rows of two), with each one's face as a known box."""
    height, width = sources[0].image.shape[:2]
    columns = 2 if len(sources) == 4 else len(sources)
    rows = math.ceil(len(sources) / columns)
    canvas = np.zeros((rows * height, columns * width, 3), np.uint8)
    boxes, landmarks, ignore = [], [], []
    for index, source in enumerate(sources):
        top, left = (index // columns) * height, (index % columns) * width
        canvas[top : top + height, left : left + width] = source.image
        shift = np.array([left, top], np.float64)
        boxes.append([*(source.box[:2] + shift), *source.box[2:]])
        landmarks.append(source.landmarks + shift)
        ignore += [[*(other[:2] + shift), *other[2:]] for other in source.others]
    return canvas, Truth(np.array(boxes), np.array(landmarks), np.array(ignore, np.float64).reshape(-1, 4))


def log_uniform_sizes(rng: np.random.Generator, count: int, low: float = 20, high: float = 400) -> np.ndarray:
    return np.exp(rng.uniform(math.log(low), math.log(high), size=count))


# -- I/O: LFW, the detectors, timing ------------------------------------------------------------

def lfw_people_photos(seed: int) -> list[Path]:
    """One photo per LFW person, in a seeded order."""
    people = sorted(path for path in (LFW / "images_deepfunneled").iterdir() if path.is_dir())
    order = np.random.default_rng(seed).permutation(len(people))
    return [sorted(people[i].iterdir())[0] for i in order]


def load_sources(paths: Sequence[Path], count: int, package) -> list[Source]:
    """``count`` LFW photos whose face the package finds near the centre, with that face and the others."""
    sources = []
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        found = package.detect_faces(image)
        if not found:
            continue
        centre = np.array([image.shape[1] / 2, image.shape[0] / 2])
        main = min(found, key=lambda f: np.linalg.norm(np.array(f["box"][:2]) + np.array(f["box"][2:]) / 2 - centre))
        box = np.array(main["box"], np.float64)
        if np.linalg.norm(box[:2] + box[2:] / 2 - centre) > 0.15 * image.shape[1]:
            continue
        points = np.array([main["keypoints"][k] for k in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")],
                          np.float64)
        others = np.array([f["box"] for f in found if f is not main], np.float64).reshape(-1, 4)
        sources.append(Source(image, box, points, others))
        if len(sources) == count:
            break
    return sources


def detectors(settings: Settings) -> tuple[dict[str, Callable[[list[np.ndarray]], list[list[tuple]]]], object]:
    """The three detectors, each: photos -> per photo [(box xywh, landmarks (5, 2), confidence)], and the
    ``mtcnn.MTCNN`` they share (its networks load once)."""
    from components.detect import FaceDetector
    from components.detect.detector import rows_to_boxes

    current = FaceDetector(with_detect_mode(settings, "package").detect)
    package = current.mtcnn  # the same networks for the three; called image by image, with the package's defaults
    fast = FaceDetector(replace(settings.detect, mode="fast"), networks=package)

    def one_by_one(images: list[np.ndarray]) -> list[list[tuple]]:
        found = []
        for image in images:
            rows = np.asarray(package.detect_faces(image, box_format="xyxy", output_type="numpy")).reshape(-1, 16)
            found.append(rows_to_boxes(rows, 1.0))
        return found

    return {"mtcnn_package": one_by_one, "current": current.locate, "fast": fast.locate}, package


def run_interleaved(images: Sequence[np.ndarray], run: dict[str, Callable], batch_size: int,
                    loads: list[float]) -> tuple[dict[str, list], dict[str, float]]:
    """Every batch through every detector in turn (the order rotating), timed; the load average after each batch."""
    found: dict[str, list] = {name: [] for name in run}
    seconds = dict.fromkeys(run, 0.0)
    names = list(run)
    for number, start in enumerate(range(0, len(images), batch_size)):
        batch = list(images[start : start + batch_size])
        for name in names[number % len(names):] + names[: number % len(names)]:
            began = time.perf_counter()
            found[name] += run[name](batch)
            seconds[name] += time.perf_counter() - began
        loads.append(os.getloadavg()[0])
    return found, seconds


def _machine() -> dict:
    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def run_benchmark(settings: Settings, out: Path, *, composed: int = 200, collages: int = 200, lfw_photos: int | None = None,
                  seed: int = 0, command: str = "faces bench detect", progress: bool = True) -> dict:
    """Build the three sets, run the three detectors on each, score them and write the JSON to ``out``.

    Args:
        composed: full-HD photos composed from LFW faces (8 faces drawn per photo; those that fit).
        collages: LFW collages of 2-4 photos.
        lfw_photos: photos of pairs.txt (None: all of them).
        seed: every random draw (sources, sizes, places, backgrounds, the photo sample) derives from it.
    """
    import mtcnn

    from components.datasets.lfw import read_pairs

    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if progress else (lambda *a: None)
    loads_before = [round(v, 2) for v in os.getloadavg()]
    run, package = detectors(settings)
    rng = np.random.default_rng(seed)
    paths = lfw_people_photos(seed)
    per_photo = 8
    say(f"sources: finding the faces of {composed * per_photo + collages * 4} LFW photos")
    sources = load_sources(paths, composed * per_photo + collages * 4, package)
    sets: dict[str, tuple[list[np.ndarray], list[Truth] | None]] = {}
    images, truths = [], []
    for index in range(composed):
        chosen = sources[index * per_photo : (index + 1) * per_photo]
        image, truth = compose(chosen, log_uniform_sizes(rng, len(chosen)), rng)
        images.append(image)
        truths.append(truth)
    sets["composed"] = (images, truths)
    rest = sources[composed * per_photo :]
    images, truths, used = [], [], 0
    for _ in range(collages):
        k = int(rng.integers(2, 5))
        if used + k > len(rest):
            break
        image, truth = collage(rest[used : used + k])
        used += k
        images.append(image)
        truths.append(truth)
    sets["collages"] = (images, truths)
    pair_paths = sorted({p.path_a for p in read_pairs(LFW)} | {p.path_b for p in read_pairs(LFW)})
    if lfw_photos is not None and lfw_photos < len(pair_paths):
        pair_paths = [pair_paths[i] for i in sorted(np.random.default_rng(seed).choice(len(pair_paths), lfw_photos, replace=False))]
    sets["lfw_pairs"] = ([np.asarray(Image.open(path).convert("RGB")) for path in pair_paths], None)

    warm = sets["composed"][0][:2] + sets["lfw_pairs"][0][:2]
    for detect in run.values():  # model loading and graph tracing are not throughput
        detect(warm[:2])
        detect(warm[2:])
    loads: list[float] = []
    results: dict = {}
    for name, (images, truths) in sets.items():
        say(f"{name}: {len(images)} photos through {', '.join(run)}")
        found, seconds = run_interleaved(images, run, settings.detect.batch_size, loads)
        entry: dict = {"photos": len(images)}
        if truths is not None:
            entry["faces"] = int(sum(len(t.boxes) for t in truths))
        for detector in run:
            if truths is not None:
                scored = score(found[detector], truths, settings.detect.min_confidence)
            else:
                hits = [main_face_found(f, image.shape) for f, image in zip(found[detector], images)]
                scored = {"main_face_found": round(float(np.mean(hits)), 4), "photos_without_main_face": int(len(hits) - sum(hits)),
                          "missed": [pair_paths[i].name for i, hit in enumerate(hits) if not hit],
                          "faces_per_photo": round(float(np.mean([len(f) for f in found[detector]])), 3)}
            scored["seconds_per_photo"] = round(seconds[detector] / max(1, len(images)), 4)
            entry[detector] = scored
        if truths is not None:
            entry["recall_40_plus_change_points"] = {
                f"fast_vs_{base}": round(100 * (entry["fast"]["recall_40_plus"]["recall"] - entry[base]["recall_40_plus"]["recall"]), 2)
                for base in ("current", "mtcnn_package")}
        entry["speedup_fast_vs_current"] = round(entry["current"]["seconds_per_photo"] / entry["fast"]["seconds_per_photo"], 2)
        entry["speedup_fast_vs_mtcnn_package"] = round(entry["mtcnn_package"]["seconds_per_photo"] / entry["fast"]["seconds_per_photo"], 2)
        results[name] = entry

    changes = [v for entry in results.values() for k, v in entry.get("recall_40_plus_change_points", {}).items() if k == "fast_vs_current"]
    result = {
        "benchmark": "detect",
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "load_average": {"before": loads_before, "during_1min": {"min": round(min(loads), 2), "mean": round(float(np.mean(loads)), 2),
                                                                 "max": round(max(loads), 2)},
                         "after": [round(v, 2) for v in os.getloadavg()]},
        "versions": {"mtcnn": getattr(mtcnn, "__version__", "unknown"), "detect": _detect_version()},
        "params": asdict(settings.detect),
        "seed": seed,
        "protocol": __doc__.split("\n\n", 1)[1].strip(),
        "detectors": {"mtcnn_package": "the mtcnn package, image by image, full resolution, its defaults",
                      "current": f"detect.mode=package: the package on same-sized batches downscaled to max_side={settings.detect.max_side}",
                      "fast": "detect.mode=fast: pyramid sized to the photo, packed compiled P-Net, R-Net/O-Net on full-resolution crops"},
        "bound": f"recall of faces >= 40 px may fall by at most {BOUND_POINTS} points (fast vs current)",
        "bound_met": all(change >= -BOUND_POINTS for change in changes),
        "sets": results,
    }
    save_result(out, result)
    return result


def _detect_version() -> str:
    from components import detect

    return detect.__version__


def table(result: dict) -> str:
    """The README's rows: per set and detector, recall (>= 40 px, below), precision, seconds per photo."""
    lines = []
    for name, entry in result["sets"].items():
        for detector in DETECTORS:
            r = entry[detector]
            if "recall" in r:
                bands = " / ".join(f"{v['recall']:.3f}" if v["recall"] is not None else "-" for v in r["recall_by_size"].values())
                lines.append(f"{name} | {detector} | {r['recall_40_plus']['recall']:.4f} | {r['recall_below_40']['recall']} | "
                             f"{bands} | {r['precision']} | {r['seconds_per_photo']}")
            else:
                lines.append(f"{name} | {detector} | main face {r['main_face_found']:.4f} | | | | {r['seconds_per_photo']}")
    return "\n".join(lines)
