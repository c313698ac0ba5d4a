"""Fit a model version's thresholds (verify, cluster, assign) and store them with it.

``faces models calibrate VERSION`` embeds a labelled data set with *that version's*
weights, then:

* ``verify``: the cosine threshold with the best accuracy over all the pairs (same /
  different person). Accuracy is flat between two neighbouring scores, so the middle
  of the best plateau is taken rather than its lower edge. The LFW 10-fold accuracy
  (threshold fit on nine folds, tested on the tenth: ``components.report.verification``)
  is recorded beside it as the out-of-sample figure.
* ``cluster``: the Chinese Whispers threshold with the best BCubed F on the data's
  faces (``components.train.retrain.calibrate_threshold``: a coarse grid from 0.40 to
  0.98, then a fine one around the best; the grid of ``faces bench cluster-threshold``,
  0.88-0.96, only suits the pretrained model). BCubed rather than pairwise F: pairwise F
  is dominated by the few largest identities.
* ``assign``: the cluster threshold, as ``params.yaml`` does for the pretrained model (the
  verification threshold lets identities absorb strangers when streaming:
  ``bench/results/cluster.json``, stream).

Data: ``lfw`` (LFW View 2 ``pairs.txt``; ``max_pairs`` keeps a subset spread evenly over
the ten folds and both kinds of pairs; the faces of their photos cluster by folder name),
or a folder of person sub-folders of photos (same pairs: every pair of one person's
photos, up to ``max_pairs / 2``; as many different-person pairs drawn at random). The face
nearest each photo's centre is the person's, as in ``faces bench lfw-verify``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from components.embed.thresholds import Thresholds
from components.settings import PROJECT_ROOT, Settings

EXPERIMENT = "calibration"
CHUNK = 64


class CalibrationError(ValueError):
    """The data cannot calibrate a model (too few people, pairs or faces)."""


@dataclass
class LabelledPairs:
    """Photos, the people they show, and verification pairs among them.

    Attributes:
        paths: the photos.
        names: (P,) person of each photo.
        pairs: (M, 2) indices into ``paths``.
        same: (M,) bool.
        folds: (M,) fold 1-10 of each pair (for the 10-fold accuracy).
        source: what the data is, in words.
    """

    paths: list[Path]
    names: np.ndarray
    pairs: np.ndarray
    same: np.ndarray
    folds: np.ndarray
    source: str


def spread_subset(same: np.ndarray, folds: np.ndarray, n: int | None) -> np.ndarray:
    """Indices of ``n`` pairs taken in turn from every (fold, same/different) group, in file order."""
    total = len(same)
    if n is None or n >= total:
        return np.arange(total)
    groups = folds.astype(np.int64) * 2 + same.astype(np.int64)
    rank = np.zeros(total, np.int64)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        rank[members] = np.arange(len(members))
    order = np.lexsort((groups, rank))  # rank first, then group: round robin over the groups
    return np.sort(order[:n])


def lfw_pairs(root: Path, max_pairs: int | None) -> LabelledPairs:
    """LFW View 2 pairs (all 6000, or ``max_pairs`` spread over folds and kinds)."""
    from components.datasets.lfw import read_pairs

    every = read_pairs(root)
    same = np.array([p.same for p in every])
    folds = np.array([p.fold for p in every])
    chosen = [every[i] for i in spread_subset(same, folds, max_pairs)]
    paths = sorted({p.path_a for p in chosen} | {p.path_b for p in chosen})
    index = {path: i for i, path in enumerate(paths)}
    pairs = np.array([[index[p.path_a], index[p.path_b]] for p in chosen], np.int64)
    source = (f"LFW View 2 pairs.txt, {len(chosen)} of {len(every)} pairs"
              + ("" if len(chosen) == len(every) else " (spread over the 10 folds, same and different alike)"))
    return LabelledPairs(paths, np.array([p.parent.name for p in paths]), pairs,
                         np.array([p.same for p in chosen]), np.array([p.fold for p in chosen]), source)


def folder_people(root: Path) -> dict[str, list[Path]]:
    """``<root>/<person>/<photo>``: photos by person (hidden files and non-images left out)."""
    from components.images import iter_image_files

    people: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        photos = [path for path, error in iter_image_files(folder) if error is None]
        if photos:
            people[folder.name] = photos
    return people


def folder_pairs(names: np.ndarray, max_pairs: int | None, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Same and different pairs among photos labelled ``names``: (pairs, same, folds)."""
    from components.train.data import TrainingDataError, verification_pairs

    _, labels = np.unique(names, return_inverse=True)
    if len(np.unique(labels)) < 2:
        raise CalibrationError("a calibration folder needs at least two people (sub-folders) with a face found")
    max_positive = 3000 if max_pairs is None else max(1, max_pairs // 2)
    try:
        pairs, same = verification_pairs(labels, max_positive=max_positive, seed=seed)
    except TrainingDataError as error:
        raise CalibrationError(f"no same-person pairs: {error}") from error
    folds = np.random.default_rng(seed).permutation(len(pairs)) % 10 + 1
    return pairs, same, folds


def main_face_crops(settings: Settings, paths: list[Path], progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Aligned crop of the face nearest each photo's centre: (crops of found, found mask)."""
    from tqdm import tqdm

    from components.engine import FaceEngine
    from components.images import BadImageError, load_image

    engine = FaceEngine(settings.detect)
    crops, found = [], np.zeros(len(paths), bool)
    for start in tqdm(range(0, len(paths), CHUNK), desc="faces (MTCNN)", unit="chunk", file=sys.stderr,
                      disable=None if progress else True):
        rows, images = [], []
        for row in range(start, min(start + CHUNK, len(paths))):
            try:
                images.append(load_image(paths[row]))
                rows.append(row)
            except BadImageError:
                continue
        for row, photo in zip(rows, engine.detect(images) if images else []):
            if photo.main is not None:
                crops.append(photo.main_face.crop)
                found[row] = True
    return (np.stack(crops) if crops else np.zeros((0, 150, 150, 3), np.uint8)), found


def lfw_crops(settings: Settings, root: Path, paths: list[Path], progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Main-face crops of LFW photos through the cached LFW face detection (components.train.lfw_faces)."""
    from components.train.lfw_faces import lfw_faces

    faces = lfw_faces(settings, root, progress=progress, paths=paths)
    rows = np.flatnonzero(faces.is_main)
    found = np.zeros(len(paths), bool)
    found[faces.photo[rows]] = True
    order = np.argsort(faces.photo[rows], kind="stable")
    return np.asarray(faces.crops[rows[order]]), found


def plateau_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The middle of the widest-accuracy plateau: the threshold maximising accuracy on (scores, same)."""
    order = np.sort(np.unique(scores))
    candidates = np.concatenate([[order[0] - 1e-6], (order[:-1] + order[1:]) / 2, [order[-1] + 1e-6]])
    accuracy = np.array([np.mean((scores >= t) == same) for t in candidates])
    first = int(np.argmax(accuracy))
    last = first
    while last + 1 < len(candidates) and accuracy[last + 1] == accuracy[first]:
        last += 1
    return float((candidates[first] + candidates[last]) / 2)


def fit(vectors: np.ndarray, found: np.ndarray, data: LabelledPairs, seed: int) -> tuple[Thresholds, dict, dict]:
    """Thresholds from embeddings of ``data.paths`` (rows of ``vectors`` where ``found``).

    Returns:
        (thresholds, figures: compact evidence, curves: the full calibration curves).
    """
    from components.report.verification import verification_report
    from components.train.retrain import calibrate_threshold

    full = np.zeros((len(data.paths), vectors.shape[1] if len(vectors) else 128), np.float32)
    full[found] = vectors
    a, b = data.pairs[:, 0], data.pairs[:, 1]
    usable = found[a] & found[b]
    if usable.sum() < 2 or len(np.unique(data.same[usable])) < 2:
        raise CalibrationError(f"only {int(usable.sum())} pairs have a face in both photos, not both kinds: "
                               "too few to fit a verification threshold")
    scores = np.sum(full[a] * full[b], axis=1).astype(np.float64)
    # A photo without a face loses its pairs (scores below every real pair), as in faces bench lfw-verify.
    scores[~usable] = scores[usable].min() - 1.0
    verify = plateau_threshold(scores[usable], data.same[usable])
    report = verification_report(scores, data.same, data.folds)
    names = data.names[found]
    if len(np.unique(names)) < 2:
        raise CalibrationError("faces of at least two people are needed to fit a clustering threshold")
    cluster, curve = calibrate_threshold(full[found], names, seed)
    at_cluster = next(row for row in curve if row["threshold"] == cluster)
    thresholds = Thresholds(verify=round(verify, 5), cluster=cluster, assign=cluster)
    figures = {
        "data": data.source,
        "pairs": int(len(data.pairs)), "same_pairs": int(data.same.sum()),
        "pairs_without_face": int((~usable).sum()),
        "photos": len(data.paths), "faces": int(found.sum()), "people": int(len(np.unique(names))),
        "verify": {"rule": "best accuracy over all pairs (middle of the plateau)",
                   "accuracy": round(float(np.mean((scores >= verify) == data.same)), 5),
                   "ten_fold_accuracy": report["accuracy_mean"], "ten_fold_std": report["accuracy_std"],
                   "auc": report["auc"], "tar_at_far_1e-3": report["tar_at_far_1e-3"]},
        "cluster": {"rule": "best BCubed F of Chinese Whispers", **{k: at_cluster[k] for k in (
            "n_clusters", "pairwise_precision", "pairwise_recall", "pairwise_f1",
            "bcubed_precision", "bcubed_recall", "bcubed_f1")}},
        "assign": "= cluster (as params.yaml for the pretrained model)",
    }
    curves = {"verification": report, "clustering_curve": curve}
    return thresholds, figures, curves


def calibrate(version: int, settings: Settings, data: str = "lfw", max_pairs: int | None = None,
              progress: bool = True, command: str = "", log=print) -> dict:
    """Fit and store the thresholds of a registered version.

    Args:
        version: the registered version (its own weights embed the data).
        settings: detector and seed.
        data: ``lfw`` or a folder of person sub-folders of photos.
        max_pairs: use at most this many pairs (LFW: spread over folds; default all).
        progress: progress bars (stderr).
        command: the command line, recorded with the evidence.
        log: progress lines.

    Returns:
        ``{"version", "thresholds", "previous_thresholds", "evidence"}``.

    Raises:
        CalibrationError, FileNotFoundError (no LFW / no folder), and the registry's errors
        (RegistryNotConfiguredError, NoSuchVersionError, TrackingError).
    """
    from components.embed import Embedder
    from components.track import log_json, start_run
    from components.track.registry import resolve_version, set_thresholds

    if max_pairs is not None and max_pairs < 2:
        raise CalibrationError("--max-pairs must be at least 2 (one same and one different pair)")
    ref = resolve_version(version, require_thresholds=False)
    log(f"calibrating {ref.name} ({ref.path})")
    if data == "lfw":
        from components.datasets.lfw import LFW_ROOT_DEFAULT

        root = PROJECT_ROOT / LFW_ROOT_DEFAULT
        labelled = lfw_pairs(root, max_pairs)
        crops, found = lfw_crops(settings, root, labelled.paths, progress)
    else:
        folder = Path(data)
        if not folder.is_dir():
            raise FileNotFoundError(f"--data {data}: not 'lfw' and not a folder")
        people = folder_people(folder)
        paths = [path for photos in people.values() for path in photos]
        if not paths:
            raise CalibrationError(f"{folder}: no photos in person sub-folders (<folder>/<person>/<photo>)")
        crops, found = main_face_crops(settings, paths, progress)
        names = np.array([path.parent.name for path in paths])
        pairs, same, folds = folder_pairs(names[found], max_pairs, settings.base.seed)
        rows = np.flatnonzero(found)
        labelled = LabelledPairs(paths, names, rows[pairs], same, folds,
                                 f"folder {folder.resolve()}: {len(people)} people, {len(paths)} photos, "
                                 f"{len(pairs)} pairs")
    log(f"{labelled.source}; {int(found.sum())} of {len(labelled.paths)} photos with a face")
    embedder = Embedder(ref.path, batch_size=settings.embed.batch_size)
    vectors = embedder.embed(crops)
    thresholds, figures, curves = fit(vectors, found, labelled, settings.base.seed)
    evidence = {**figures, "model": embedder.version, "calibrated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": command or f"faces models calibrate {version}"}
    with start_run(EXPERIMENT, f"calibrate-v{version}",
                   params={"version": version, "data": data, "max_pairs": max_pairs or "all"},
                   tags={"faces.model_version": str(version)}) as run:
        import mlflow

        mlflow.log_metrics({f"threshold_{k}": v for k, v in thresholds.as_dict().items()})
        log_json("calibration.json", {"thresholds": thresholds.as_dict(), **evidence, **curves})
        evidence["mlflow_run_id"] = run.info.run_id
    set_thresholds(version, thresholds, evidence)
    return {"version": version, "thresholds": thresholds.as_dict(),
            "previous_thresholds": None if ref.thresholds is None else ref.thresholds.as_dict(),
            "evidence": evidence}
