"""``faces bench retrain``: does self-labelled retraining help? Three protocols, three rows each.

Every protocol has an unlabelled **stream** (what the product would ingest) and a
**test** of verification pairs on faces the head never saw. Each is run with three
models, side by side in one run:

* **pretrained**: the champion as shipped;
* **self-labelled**: the head re-fitted (:mod:`components.train.head`) on the
  identities the identity life cycle finds in the stream with the champion's own
  thresholds (:func:`components.train.retrain.stream_labels`), kept by
  ``retrain.min_faces`` / ``retrain.cohesion_slack``, as a cycle does;
* **oracle**: the same method on the stream's true names: the most the method can
  give, to tell how much of it the self-labels reach.

Protocols (LFW, split by people as README.md "Evaluation protocols" says):

* ``generalisation``: stream = main faces of the people of ``people.txt`` folds 1-5;
  test = ``pairs.txt`` folds 6-10 (people never streamed). The guard against a head
  that forgets.
* ``personalisation``: people with 10+ photos; the first half of each one's photos
  (LFW's file order) is the stream, the later half the test (same pairs among later
  photos, at most 20 per person; different pairs: a later photo with another such
  person's later photo or with a distractor, a person with fewer than 10 photos, never
  streamed). The family photo library where the same people come back.
* ``domain_shift_*``: both streams and tests degraded like a surveillance camera or
  old scanned prints (:func:`degrade`, seeded): the aligned face shrunk to 40-64 px
  (the face itself about 24-40 px) and back, a slight blur, JPEG quality 10-30, half
  of them grey, sensor noise sigma 4. Degrading the aligned crop keeps the detector out
  of it: the gap left is the embedder's.

Verification: accuracy with 10 folds (threshold fit on the other 9), AUC, TAR at
FAR 1e-3; a pair whose photo had no face scores below every real pair. The machine's
load average is recorded before and after.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from components.settings import Settings

DEGRADATION = {"face_side_px": [40, 64], "blur_sigma": [0.3, 1.0], "jpeg_quality": [10, 30], "grey_share": 0.5,
               "noise_sigma": 4.0}
PERSONAL_MIN_PHOTOS = 10
PERSONAL_PAIRS_PER_PERSON = 20


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def degrade(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One aligned crop as a poor camera would give it (see :data:`DEGRADATION`)."""
    from PIL import Image, ImageFilter

    image = Image.fromarray(np.asarray(crop))
    side = int(rng.integers(DEGRADATION["face_side_px"][0], DEGRADATION["face_side_px"][1] + 1))
    image = image.resize((side, side), Image.BILINEAR)
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(*DEGRADATION["blur_sigma"]))))
    if rng.random() < DEGRADATION["grey_share"]:
        image = image.convert("L").convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(DEGRADATION["jpeg_quality"][0],
                                                               DEGRADATION["jpeg_quality"][1] + 1)))
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB").resize(crop.shape[:2][::-1], Image.BILINEAR)
    noisy = np.asarray(image, np.float32) + rng.normal(0, DEGRADATION["noise_sigma"], (*crop.shape[:2], 1))
    return np.clip(noisy, 0, 255).astype(np.uint8)


PHOTO_DEGRADATION = {"side_px": 70, "jpeg_quality": 20, "grey": True, "noise_sigma": 4.0}


def degrade_photo(image: np.ndarray, seed: int) -> bytes:
    """A whole photo as an old, small surveillance frame: shrunk to 70 px wide (a LFW face to
    about 28 px) and back, grey, sensor noise, JPEG quality 20. Returns the JPEG bytes.

    The domain-shift stream of the stack test and of ``faces bench retrain``'s photo checks:
    MTCNN still finds most faces at this level, so what is lost is the embedder's.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    picture = Image.fromarray(np.asarray(image))
    width, height = picture.size
    side = PHOTO_DEGRADATION["side_px"]
    small = picture.resize((side, max(1, round(height * side / width))), Image.BILINEAR)
    picture = small.resize((width, height), Image.BILINEAR).convert("L").convert("RGB")
    noisy = np.asarray(picture, np.float32) + rng.normal(0, PHOTO_DEGRADATION["noise_sigma"], (height, width, 1))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, format="JPEG",
                                                                  quality=PHOTO_DEGRADATION["jpeg_quality"])
    return buffer.getvalue()


class DegradedCrops:
    """``crops[rows]`` degraded, each face with its own seeded generator (the same face, the same damage)."""

    def __init__(self, crops: np.ndarray, seed: int):
        self.crops, self.seed = crops, seed
        self.shape = crops.shape

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, rows):
        rows = np.atleast_1d(np.asarray(rows))
        return np.stack([degrade(self.crops[r], np.random.default_rng([self.seed, int(r)])) for r in rows])


@dataclass
class Protocol:
    """Rows of the LFW main faces: the stream, and the test pairs (-1: that photo had no face)."""

    name: str
    stream: np.ndarray
    pairs: np.ndarray
    same: np.ndarray
    folds: np.ndarray
    description: str


def generalisation(lfw) -> Protocol:
    """Folds 1-5 people stream, ``pairs.txt`` folds 6-10 test (from :func:`components.train.retrain.lfw_protocol`)."""
    held = lfw.held_out
    pairs = np.where(lfw.pairs >= 0, held[np.clip(lfw.pairs, 0, None)], -1)
    return Protocol("generalisation", lfw.stream, pairs, lfw.same, lfw.folds,
                    f"stream: main faces of people.txt folds 1-5 ({len(lfw.stream)}); test: {lfw.pairs_source} "
                    f"({len(pairs)} pairs)")


def personalisation(faces, seed: int) -> Protocol:
    """Earlier photos of people with 10+ photos stream; their later photos and distractors are the test."""
    rng = np.random.default_rng(seed)
    main = np.flatnonzero(faces.is_main)
    person = faces.names[faces.photo[main]]
    paths = np.array([str(faces.paths[p]) for p in faces.photo[main]])
    stream, later_of, distractors = [], {}, []
    for name in np.unique(person):
        rows = main[person == name]
        if len(rows) < PERSONAL_MIN_PHOTOS:
            distractors.extend(rows.tolist())
            continue
        rows = rows[np.argsort(paths[person == name], kind="stable")]
        half = len(rows) // 2
        stream.extend(rows[:half].tolist())
        later_of[name] = rows[half:]
    positives = []
    for name, rows in later_of.items():
        candidates = [(int(a), int(b)) for i, a in enumerate(rows) for b in rows[i + 1 :]]
        picks = rng.choice(len(candidates), min(PERSONAL_PAIRS_PER_PERSON, len(candidates)), replace=False)
        positives += [candidates[i] for i in np.sort(picks)]
    later = np.concatenate(list(later_of.values()))
    owner = {int(r): name for name, rows in later_of.items() for r in rows}
    negatives = []
    while len(negatives) < len(positives):
        a = int(rng.choice(later))
        if len(negatives) % 2 == 0:
            b = int(rng.choice(distractors))
        else:
            b = int(rng.choice(later))
            if owner[b] == owner[a]:
                continue
        negatives.append((a, b))
    pairs = np.array(positives + negatives, np.int64)
    same = np.r_[np.ones(len(positives), bool), np.zeros(len(negatives), bool)]
    folds = rng.permutation(np.arange(len(pairs)) % 10 + 1)
    return Protocol("personalisation", np.sort(np.array(stream, np.int64)), pairs, same, folds,
                    f"{len(later_of)} people with {PERSONAL_MIN_PHOTOS}+ photos: stream = the first half of each "
                    f"one's photos ({len(stream)}); test = {len(positives)} same pairs among later photos (at most "
                    f"{PERSONAL_PAIRS_PER_PERSON} per person) and {len(negatives)} different pairs with other people's "
                    f"later photos or {len(distractors)} distractor faces (people with fewer photos, never streamed)")


def _figures(embeddings: np.ndarray, protocol: Protocol) -> dict:
    from components.train.evidence import verification_figures

    found = (protocol.pairs >= 0).all(axis=1)
    scores = np.full(len(protocol.pairs), np.nan)
    a, b = protocol.pairs[found, 0], protocol.pairs[found, 1]
    scores[found] = np.sum(embeddings[a] * embeddings[b], axis=1)
    if (~found).any():
        scores[~found] = np.nanmin(scores) - 1.0
    return verification_figures(scores, protocol.same, protocol.folds)


def run_protocol(protocol: Protocol, features: np.ndarray, faces, kernel: np.ndarray, settings: Settings,
                 config, log=print) -> dict:
    """Pretrained, self-labelled and oracle rows of one protocol.

    Args:
        features: (N, 2, F) pooled features of every LFW face row (rows outside the protocol unused).
        faces: :class:`components.train.lfw_faces.LFWFaces`.
        kernel: the champion's head.
        config: :class:`components.train.head.HeadConfig`.
    """
    from components.embed.thresholds import Thresholds
    from components.train.data import select_self_labels
    from components.train.head import fit_head, project
    from components.train.retrain import label_quality, min_cohesion, stream_labels

    params = settings.retrain
    truth = faces.names[faces.photo]
    stream = protocol.stream
    pretrained = project(features[:, 0], kernel)
    began = time.perf_counter()
    identity = stream_labels(pretrained[stream], faces.photo[stream], Thresholds.from_settings(settings).cluster,
                             settings, params.stream_batches)
    chosen = select_self_labels(pretrained[stream], identity, faces.photo[stream], params.min_faces,
                                min_cohesion(params, Thresholds.from_settings(settings)))
    labelling_s = time.perf_counter() - began
    rows = {"pretrained": {**_figures(pretrained, protocol), "moved": 0.0}}
    labels_report = {"identities": len(chosen.identities), "faces": int(len(chosen.rows)),
                     "stream_faces": int(len(stream)), "cannot_link_pairs": int(len(chosen.cannot_link)),
                     "seconds": round(labelling_s, 1),
                     "against_true_names": label_quality(chosen.labels, truth[stream][chosen.rows])
                     if len(chosen.rows) else None}
    _, oracle_labels = np.unique(truth[stream], return_inverse=True)
    oracle = select_self_labels(pretrained[stream], oracle_labels, faces.photo[stream], params.min_faces, -1.0)
    for name, picked in (("self-labelled", chosen), ("oracle", oracle)):
        if len(picked.identities) < 2:
            rows[name] = {"skipped": f"{len(picked.identities)} identities with >= {params.min_faces} faces"}
            continue
        began = time.perf_counter()
        fit = fit_head(features[stream[picked.rows]], picked.labels, kernel, config, cannot_link=picked.cannot_link)
        rows[name] = {**_figures(project(features[:, 0], fit.kernel), protocol), "moved": round(fit.moved, 4),
                      "train_faces": int(len(picked.rows)), "train_identities": len(picked.identities),
                      "fit_seconds": round(time.perf_counter() - began, 1)}
        log(f"{protocol.name}: {name} accuracy {rows[name]['accuracy']:.4f} "
            f"(pretrained {rows['pretrained']['accuracy']:.4f})")
    base_error = 1 - rows["pretrained"]["accuracy"]
    gains = {}
    for name in ("self-labelled", "oracle"):
        if "accuracy" in rows[name]:
            gains[name] = {"relative_error_cut": round((base_error - (1 - rows[name]["accuracy"])) / base_error, 4)
                           if base_error > 0 else None,
                           "accuracy_points": round(100 * (rows[name]["accuracy"] - rows["pretrained"]["accuracy"]), 2)}
    if "accuracy" in rows["self-labelled"] and "accuracy" in rows["oracle"]:
        possible = rows["oracle"]["accuracy"] - rows["pretrained"]["accuracy"]
        gained = rows["self-labelled"]["accuracy"] - rows["pretrained"]["accuracy"]
        gains["share_of_oracle_gain"] = round(gained / possible, 4) if possible > 0 else None
    return {"protocol": protocol.name, "description": protocol.description, "labels": labels_report,
            "rows": rows, "gains": gains}


def run_benchmark(settings: Settings, out: Path, command: str, protocols: list[str] | None = None,
                  progress: bool = True, log=print) -> dict:
    """All protocols, written to ``out`` (``bench/results/retrain.json``)."""
    from components.bench import save_result
    from components.datasets.lfw import LFW_ROOT_DEFAULT
    from components.engine.models import champion_model
    from components.train.head import HeadConfig, head_kernel
    from components.train.loop import load_keras_model
    from components.train.retrain import RowView, head_config, lfw_protocol, pooled_features

    load_before = _load()
    began = time.perf_counter()
    lfw = lfw_protocol(settings, LFW_ROOT_DEFAULT, progress=progress)
    faces = lfw.faces
    model_ref = champion_model(settings, "champion")
    model = load_keras_model(model_ref.embedder.model_path)
    kernel = head_kernel(model)
    config: HeadConfig = head_config(settings.retrain, seed=settings.base.seed)
    main = np.flatnonzero(faces.is_main)
    all_protocols = {"generalisation": generalisation(lfw), "personalisation": personalisation(faces, settings.base.seed)}
    wanted = protocols or ["generalisation", "personalisation", "domain_shift_generalisation",
                           "domain_shift_personalisation"]
    results, seconds = [], {}
    for variant in ("clean", "degraded"):
        names = [n for n in wanted if n.startswith("domain_shift_") == (variant == "degraded")]
        if not names:
            continue
        t0 = time.perf_counter()
        crops = faces.crops if variant == "clean" else DegradedCrops(faces.crops, settings.base.seed)
        features = np.zeros((len(faces.crops), 2, kernel.shape[0]), np.float32)
        # The cycle's own feature code, cached by model, face set, rows and degradation.
        rows_key = hashlib.sha256(main.tobytes()).hexdigest()[:12]
        features[main] = pooled_features(model, RowView(crops, main), progress,
                                         cache_key=f"{lfw.cache_key}-{variant}-{rows_key}")
        seconds[f"features_{variant}"] = round(time.perf_counter() - t0, 1)
        for name in names:
            protocol = all_protocols[name.removeprefix("domain_shift_")]
            if variant == "degraded":
                protocol = replace(protocol, name=name, description="DEGRADED (see degradation): " + protocol.description)
            t0 = time.perf_counter()
            results.append(run_protocol(protocol, features, faces, kernel, settings, config, log=log))
            seconds[name] = round(time.perf_counter() - t0, 1)
    result = {
        "benchmark": "retrain",
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "load_before": load_before, "load_after": _load()},
        "model": {"version": model_ref.registry_version, "source": model_ref.source},
        "method": {"name": "head re-fit (components/train/head.py)", **asdict(config)},
        "self_labels": {"min_faces": settings.retrain.min_faces, "cohesion_slack": settings.retrain.cohesion_slack,
                        "stream_batches": settings.retrain.stream_batches},
        "degradation": DEGRADATION,
        "protocols": results,
        "table": [{"protocol": r["protocol"], "model": name, **{k: row.get(k) for k in
                   ("accuracy", "auc", "tar_at_far_1e-3")}} for r in results for name, row in r["rows"].items()],
        "seconds": {**seconds, "total": round(time.perf_counter() - began, 1)},
    }
    save_result(out, result)
    return result


def run_cycle_benchmark(settings: Settings, out: Path, command: str, faces: int = 5000, progress: bool = True,
                        log=print) -> dict:
    """One full retraining cycle from a store of ``faces`` LFW faces, timed beside embedding them once.

    The store is written the way ``faces run`` leaves it (JPEG crops on disk, SQLite, the
    identity life cycle's identities); the registry is a temporary SQLite MLflow. Goal:
    5,000 faces in under 15 minutes on 2 cores.
    """
    import tempfile
    from dataclasses import replace as with_changes

    from components.bench import save_result
    from components.bench.reembed import _write_store
    from components.engine import load_model
    from components.identities import IdentityStore, update_identities
    from components.identities.lifecycle import policy_for_store
    from components.track.registry import local_ref
    from components.train.lfw_faces import lfw_faces
    from components.train.retrain import retrain_cycle

    cached = lfw_faces(settings, progress=progress)
    n = min(int(faces), len(cached.photo))
    crops, photo = np.asarray(cached.crops[:n]), cached.photo[:n]
    model = load_model(local_ref(settings), batch_size=settings.embed.batch_size)
    result: dict = {"benchmark": "retrain_cycle", "command": command,
                    "date": datetime.now(UTC).isoformat(timespec="seconds"), "faces": int(n),
                    "photos": int(len(np.unique(photo))), "goal": "a full cycle from a store of 5,000 faces in under "
                                                                  "15 minutes on 2 cores",
                    "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    previous_uri = os.environ.get("MLFLOW_TRACKING_URI")
    with tempfile.TemporaryDirectory(prefix="bench-retrain-cycle-") as tmp:
        folder = Path(tmp)
        model.embedder.embed(crops[:8])  # build the graph outside the timing
        load = _load()
        started = time.perf_counter()
        vectors = model.embedder.embed(crops)
        seconds = time.perf_counter() - started
        result["baseline_embed_once"] = {"seconds": round(seconds, 1), "load_before": load, "load_after": _load()}
        url = f"sqlite:///{folder / 'faces.db'}"
        _write_store(url, folder, crops, photo, vectors, model.version)
        store = IdentityStore(url)
        store.set_model(model.store_model())
        update_identities(store, policy=with_changes(policy_for_store(store, settings), recluster_pool_size=1), full=True)
        result["store"] = store.counts()
        store.engine.dispose()
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        try:
            load = _load()
            started = time.perf_counter()
            outcome = retrain_cycle(settings, folder / "work", key="bench", store_url=url, crops_root=str(folder),
                                    progress=progress, log=log)
            seconds = time.perf_counter() - started
        finally:
            if previous_uri is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = previous_uri
        result["cycle"] = {"seconds": round(seconds, 1), "steps": outcome["seconds"], "load_before": load,
                           "load_after": _load(), "labels": {k: outcome["labels"][k] for k in
                                                             ("identities", "faces", "against_folder_names")},
                           "evidence": outcome["evidence"], "decision": outcome["decision"]["reason"],
                           "met_goal": seconds < 15 * 60}
    save_result(out, result)
    return result
