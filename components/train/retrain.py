"""Self-labelled retraining: fine-tune the champion on its own clusters, promote only a winner.

One cycle (:func:`retrain_cycle`):

1. The champion: ``components.track.registry.resolve("champion")`` (the pretrained
   dlib-ResNet on a fresh install; it is registered as version 1 and made champion
   the first time, so every later comparison is between registered versions).
2. Labels without labels: the stream (LFW: the people of ``people.txt`` folds 1-5,
   shuffled) goes through the identity life cycle
   (:func:`components.identities.stream.simulate_stream`: assignment, pool, Chinese
   Whispers, cannot-link) with the champion's embeddings, or the identities of a real
   store are read (``--db``). Identities with at least ``retrain.min_faces`` faces and
   a mean similarity to their medoid of at least ``retrain.min_cohesion`` become
   classes; two faces of one photo become a cannot-link pair (hard negatives).
3. Fine-tuning: the blocks from ``retrain.train_from`` up train, the ones below stay
   frozen, so their output is computed once per face (and its mirror image) and
   cached: a cycle runs on two CPU cores in minutes. Early stopping on self-labelled
   identities held out of training (:mod:`components.train.loop`).
4. Evaluation on people never trained on (README.md, "Evaluation protocols"): ``pairs.txt`` folds 6-10
   (verification accuracy with the threshold fit on the other folds, AUC, TAR at
   FAR 1e-3) and clustering of the folds 6-10 people (Chinese Whispers at a threshold
   calibrated for each model on folds 1-5 people: the protocol that chose the shipped
   threshold; pairwise and BCubed F).
5. Registration as a new version with alias ``challenger``; ``champion`` moves only when
   the challenger beats it by ``retrain.promote_margin`` on ``retrain.promote_metric``.
   Both models' figures go side by side into the cycle's MLflow run (metrics
   ``champion_*``, ``challenger_*``, ``delta_*``, ``comparison.json``, an ROC overlay),
   and the decision into ``decision.json`` there and in the work folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from components.settings import PROJECT_ROOT, RetrainParams, Settings
from components.train.data import LabelledFaces, TrainingDataError, select_self_labels, split_identities
from components.train.loop import CheckpointError, TrainConfig, load_keras_model

EXPERIMENT = "retrain"
FEATURE_CACHE = PROJECT_ROOT / "bench" / "cache" / "retrain_features"
COARSE_GRID = np.round(np.arange(0.40, 0.981, 0.02), 3)
METRICS = ("accuracy", "auc", "tar_at_far_1e-3", "pairwise_f1", "bcubed_f1")


class RetrainError(RuntimeError):
    """A retraining cycle could not run; the champion was left as it was."""


# -- the model split ------------------------------------------------------------------------------


def split_model(model, train_from: str):
    """(trunk, top) of an embedder cut at the input of block ``train_from``; both share ``model``'s layers.

    Raises:
        RetrainError: the model has no such block (not a dlib-ResNet-style embedder).
    """
    import keras

    try:
        first = model.get_layer(f"{train_from}_conv1")
    except ValueError as error:
        names = sorted({layer.name.rsplit("_conv", 1)[0] for layer in model.layers if "_conv" in layer.name})
        raise RetrainError(f"retrain.train_from={train_from!r}: the champion has no such block; "
                           f"blocks: {names}") from error
    cut = first.input
    trunk = keras.Model(model.input, cut, name="trunk")
    top = keras.Model(cut, model.output, name=f"top_from_{train_from}")
    for layer in trunk.layers:
        layer.trainable = False
    for layer in top.layers:
        layer.trainable = True
    return trunk, top


def weights_digest(model) -> str:
    """sha256 over a model's weights (names, shapes, bytes): the trunk's identity for the feature cache."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.asarray(weight.numpy())
        digest.update(f"{weight.path}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


def trunk_features(trunk, crops: np.ndarray, rows: np.ndarray, flip: bool, cache_key: str,
                   batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Frozen-trunk outputs of ``crops[rows]`` (mirrored when ``flip``), float16, cached on disk.

    The cache file is named by the trunk's weights, the face set and the rows, so a
    different trunk or subset never reads another's features.
    """
    from tqdm import tqdm

    rows = np.asarray(rows, np.int64)
    key = hashlib.sha256(f"{weights_digest(trunk)}|{cache_key}|{flip}|".encode() + rows.tobytes()).hexdigest()[:20]
    path = FEATURE_CACHE / f"{key}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    shape = tuple(int(d) for d in trunk.output.shape[1:])
    out = np.zeros((len(rows), *shape), np.float16)
    for start in tqdm(range(0, len(rows), batch_size), desc=f"trunk features{' (mirrored)' if flip else ''}",
                      unit="batch", disable=None if progress else True):
        batch = np.asarray(crops[rows[start : start + batch_size]], np.float32)
        if flip:
            batch = batch[:, :, ::-1]
        out[start : start + len(batch)] = np.asarray(trunk(batch, training=False), np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, path)
    return out


def embed_features(top, features: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Top-of-network embeddings from cached trunk features (float32, unit norm)."""
    from components.train.loop import embed_inputs

    return embed_inputs(top, features, batch_size)


def flip_choice(batch, seed):
    """Augmentation for (B, 2, ...) feature pairs: each sample's original or mirrored crop, at random."""
    import tensorflow as tf

    pick = tf.random.stateless_uniform([tf.shape(batch)[0]], tf.cast(seed, tf.int64)) < 0.5
    shape = tf.concat([[tf.shape(batch)[0]], tf.ones([tf.rank(batch) - 2], tf.int32)], axis=0)
    return tf.where(tf.reshape(pick, shape), batch[:, 1], batch[:, 0])


# -- LFW: stream and held-out people --------------------------------------------------------------


@dataclass
class LFWProtocol:
    """LFW split by people (README.md, "Evaluation protocols"), as rows of the cached faces.

    Attributes:
        faces: the cached faces (:class:`components.train.lfw_faces.LFWFaces`).
        stream: rows of main faces of folds 1-5 people (the unlabelled stream; also the
            clustering-threshold calibration set, with their folder names).
        held_out: rows of main faces of folds 6-10 people (clustering evaluation).
        pairs: (M, 2) rows into ``held_out`` (-1: the photo has no face), ``same``, ``folds``.
        pairs_source: ``pairs.txt folds 6-10`` or, on a small subset, pairs drawn among its faces.
        cache_key: identifies the face set (for the feature cache).
    """

    faces: object
    stream: np.ndarray
    held_out: np.ndarray
    pairs: np.ndarray
    same: np.ndarray
    folds: np.ndarray
    pairs_source: str
    cache_key: str


def _subset_people(folds: list[list[tuple[str, int]]], n_people: int, min_images: int) -> list[str]:
    eligible = sorted(name for fold in folds for name, count in fold if count >= min_images)
    if len(eligible) < n_people:
        raise RetrainError(f"only {len(eligible)} LFW people with >= {min_images} photos in these folds")
    picks = np.linspace(0, len(eligible) - 1, n_people).round().astype(int)
    return [eligible[i] for i in picks]


def lfw_protocol(settings: Settings, root: Path, limit_people: int | None = None, max_photos: int = 12,
                 progress: bool = True) -> LFWProtocol:
    """Faces of the LFW stream and of the held-out people, with the verification pairs.

    Args:
        settings: detector parameters.
        root: LFW root.
        limit_people: a subset (tests): this many people from folds 1-5 and as many from
            folds 6-10 (with >= 6 photos), ``max_photos`` photos each; the held-out pairs
            are then every same pair and as many different pairs among the subset.
        max_photos: photos per person in a subset.
        progress: progress bars.
    """
    from components.datasets.lfw import list_identities, read_pairs, read_people_folds
    from components.train.data import verification_pairs
    from components.train.lfw_faces import lfw_faces

    root = Path(root) if Path(root).is_absolute() else PROJECT_ROOT / root
    people_folds = read_people_folds(root)
    stream_people = {name for fold in people_folds[:5] for name, _ in fold}
    held_people = {name for fold in people_folds[5:] for name, _ in fold}
    paths = None
    if limit_people:
        identities = list_identities(root)
        chosen = (_subset_people(people_folds[:5], limit_people, 6) + _subset_people(people_folds[5:], limit_people, 6))
        paths = [path for name in chosen for path in identities[name][:max_photos]]
    faces = lfw_faces(settings, root, progress=progress, paths=paths)
    person = faces.names[faces.photo]
    main = faces.is_main
    stream = np.flatnonzero(main & np.isin(person, list(stream_people)))
    held_out = np.flatnonzero(main & np.isin(person, list(held_people)))
    if limit_people:
        pairs, same = verification_pairs(person[held_out], seed=settings.base.seed)
        folds = np.arange(len(pairs)) % 5 + 6
        source = f"subset of {limit_people} held-out people: every same pair and as many different pairs"
    else:
        position = {str(faces.paths[faces.photo[row]]): i for i, row in enumerate(held_out)}
        chosen_pairs = [p for p in read_pairs(root) if p.fold >= 6]
        pairs = np.array([[position.get(str(p.path_a), -1), position.get(str(p.path_b), -1)] for p in chosen_pairs])
        same = np.array([p.same for p in chosen_pairs])
        folds = np.array([p.fold for p in chosen_pairs])
        source = "pairs.txt folds 6-10"
    key = hashlib.sha256("\n".join(map(str, faces.paths)).encode()).hexdigest()[:12]
    return LFWProtocol(faces, stream, held_out, pairs, same, folds, source, key)


# -- evaluation -----------------------------------------------------------------------------------


def _cluster_scores(x: np.ndarray, names: np.ndarray, threshold: float, seed: int) -> dict:
    from components.cluster import ChineseWhispers
    from components.report.metrics import bcubed_prf, pairwise_prf

    labels = ChineseWhispers(threshold=float(threshold), seed=seed).fit_predict(x)
    pw, bc = pairwise_prf(names, labels), bcubed_prf(names, labels)
    return {"threshold": float(threshold), "n_clusters": int(len(np.unique(labels))),
            "pairwise_precision": round(pw[0], 4), "pairwise_recall": round(pw[1], 4), "pairwise_f1": round(pw[2], 4),
            "bcubed_precision": round(bc[0], 4), "bcubed_recall": round(bc[1], 4), "bcubed_f1": round(bc[2], 4)}


def calibrate_threshold(x: np.ndarray, names: np.ndarray, seed: int) -> tuple[float, list[dict]]:
    """The Chinese Whispers threshold with the best BCubed F on (x, names): coarse grid, then fine."""
    coarse = [_cluster_scores(x, names, t, seed) for t in COARSE_GRID]
    best = max(coarse, key=lambda row: row["bcubed_f1"])["threshold"]
    fine_grid = [t for t in np.round(np.arange(best - 0.015, best + 0.0151, 0.005), 3) if t not in COARSE_GRID]
    curve = sorted(coarse + [_cluster_scores(x, names, t, seed) for t in fine_grid], key=lambda row: row["threshold"])
    chosen = max(curve, key=lambda row: row["bcubed_f1"])
    return chosen["threshold"], curve


def evaluate(stream_x: np.ndarray, stream_names: np.ndarray, held_x: np.ndarray, held_names: np.ndarray,
             pairs: np.ndarray, same: np.ndarray, folds: np.ndarray, seed: int) -> dict:
    """Held-out figures of one model from its embeddings.

    Args:
        stream_x, stream_names: folds 1-5 people's embeddings and names (threshold calibration only).
        held_x, held_names: folds 6-10 people's embeddings and names.
        pairs: (M, 2) rows of ``held_x`` (-1: no face; such a pair scores below every real one).
        same, folds: pair truth and fold.

    Returns:
        ``accuracy`` (mean over folds, threshold fit on the other folds), ``accuracy_std``,
        ``auc``, ``tar_at_far_1e-3``, ``verification_threshold``, clustering figures at the
        calibrated ``cluster_threshold`` and the calibration curve.
    """
    from components.report.verification import verification_report

    found = (pairs >= 0).all(axis=1)
    scores = np.full(len(pairs), np.nan)
    scores[found] = np.sum(held_x[pairs[found, 0]] * held_x[pairs[found, 1]], axis=1)
    if (~found).any():
        scores[~found] = np.nanmin(scores) - 1.0
    report = verification_report(scores, same, folds)
    threshold, curve = calibrate_threshold(stream_x, stream_names, seed)
    clustering = _cluster_scores(held_x, held_names, threshold, seed)
    return {"accuracy": report["accuracy_mean"], "accuracy_std": report["accuracy_std"], "auc": report["auc"],
            "tar_at_far_1e-3": report["tar_at_far_1e-3"], "verification_threshold": report["threshold_mean"],
            "pairs": int(len(pairs)), "pairs_without_face": int((~found).sum()),
            "cluster_threshold": threshold, "pairwise_f1": clustering["pairwise_f1"],
            "bcubed_f1": clustering["bcubed_f1"], "clustering": clustering, "calibration_curve": curve,
            "_scores": scores}


def check_params(params: RetrainParams) -> RetrainParams:
    """Refuse retraining parameters that would fail only after training (checked before any work).

    Raises:
        RetrainError: names the parameter, the value and what is allowed.
    """
    from components.train.losses import LOSSES

    problems = []
    if params.promote_metric not in METRICS:
        problems.append(f"promote_metric {params.promote_metric!r} is not one of {', '.join(METRICS)}")
    if params.loss not in LOSSES:
        problems.append(f"loss {params.loss!r} is not one of {', '.join(LOSSES)}")
    for name in ("min_faces", "steps_per_epoch", "epochs", "patience", "identities_per_batch", "faces_per_identity",
                 "stream_batches"):
        if getattr(params, name) < 1:
            problems.append(f"{name} must be at least 1, got {getattr(params, name)}")
    if not params.learning_rate > 0:
        problems.append(f"learning_rate must be above 0, got {params.learning_rate}")
    if not 0 < params.held_out_share < 1:
        problems.append(f"held_out_share must be between 0 and 1, got {params.held_out_share}")
    if not -1 <= params.min_cohesion <= 1:
        problems.append(f"min_cohesion is a cosine similarity in [-1, 1], got {params.min_cohesion}")
    if problems:
        raise RetrainError("bad retraining parameters: " + "; ".join(problems))
    return params


def decide(champion: dict, challenger: dict, metric: str, margin: float) -> dict:
    """Promote only when the challenger beats the champion by ``margin`` on ``metric``."""
    if metric not in METRICS:
        raise ValueError(f"retrain.promote_metric must be one of {METRICS}; got {metric!r}")
    delta = challenger[metric] - champion[metric]
    promote = bool(delta >= margin)
    return {"decision": "promote" if promote else "keep", "metric": metric, "margin": margin,
            "champion": champion[metric], "challenger": challenger[metric], "delta": round(delta, 5),
            "reason": (f"challenger {metric} {challenger[metric]:.4f} beats champion {champion[metric]:.4f} by "
                       f"{delta:+.4f} >= {margin}") if promote else
                      (f"challenger {metric} {challenger[metric]:.4f} vs champion {champion[metric]:.4f}: "
                       f"{delta:+.4f} < margin {margin}; champion kept")}


# -- self labels -----------------------------------------------------------------------------------


def stream_labels(embeddings: np.ndarray, photo_ids: np.ndarray, threshold: float, settings: Settings,
                  n_batches: int) -> np.ndarray:
    """Identity per stream face (-1: left in the pool) from the identity life cycle, fed in batches."""
    from components.identities.lifecycle import Policy
    from components.identities.stream import simulate_stream

    policy = replace(Policy.from_settings(settings), assign_threshold=float(threshold), cluster_threshold=float(threshold))
    out = simulate_stream(embeddings, photo_ids, n_batches=n_batches, policy=policy)
    return np.asarray(out["identity"], np.int64)


def label_quality(labels: np.ndarray, truth: np.ndarray) -> dict:
    """How pure the self-labels are against the truth (a diagnostic; the truth trains nothing)."""
    from components.report.metrics import bcubed_prf, pairwise_prf

    pw, bc = pairwise_prf(truth, labels), bcubed_prf(truth, labels)
    return {"pairwise_precision": round(pw[0], 4), "pairwise_recall": round(pw[1], 4),
            "bcubed_precision": round(bc[0], 4), "bcubed_recall": round(bc[1], 4),
            "true_people": int(len(np.unique(truth)))}


# -- one cycle -------------------------------------------------------------------------------------


def _bootstrap_champion(log, settings: Settings | None = None) -> tuple[object, int | None]:
    """The champion; on a registry with none, the local pretrained model registered as version 1 and made champion.

    The champion's stored thresholds are not needed here (the cycle calibrates both models
    itself), so an uncalibrated champion is still fine-tuned.
    """
    from components.embed.thresholds import Thresholds
    from components.track import start_run
    from components.track.registry import register_embedder, resolve, set_alias

    ref = resolve("champion", require_thresholds=False)
    if ref.source == "local":
        if not ref.path.is_file():
            raise RetrainError(f"no champion: {ref.path} is missing (run `faces setup-model`)")
        load_keras_model(ref.path)  # refuse a damaged file before registering it
        # The pretrained model goes in with its params.yaml calibration (components.embed.thresholds).
        thresholds = Thresholds.from_settings(settings) if settings is not None else ref.thresholds
        with start_run(EXPERIMENT, "pretrained-baseline", params={"origin": "pretrained", "path": str(ref.path)}) as run:
            version = register_embedder(ref.path, run.info.run_id, tags={"origin": "pretrained dlib-ResNet (face-api.js)"},
                                        thresholds=thresholds)
        set_alias("champion", version)
        log(f"registered the pretrained model as version {version} and made it champion")
        ref = resolve("champion", require_thresholds=False)
    return ref, ref.version


def retrain_cycle(settings: Settings, workdir: Path, *, cycle: int = 1, protocol: LFWProtocol | None = None,
                  store_url: str | None = None, root: Path | None = None, limit_people: int | None = None,
                  params: RetrainParams | None = None, oracle_labels: bool = False, progress: bool = True,
                  log=print) -> dict:
    """Run one retraining cycle; returns (and writes ``workdir/decision.json``) what happened.

    Args:
        settings: the project's settings (``retrain`` section unless ``params``).
        workdir: checkpoints and the challenger's model (one folder per cycle).
        cycle: cycle number (seeds the fine-tuning; a rerun of the same cycle resumes).
        protocol: the LFW faces and splits (built when None).
        store_url: labels from this identity store instead of the LFW stream.
        root: LFW root (default ``data/lfw``).
        limit_people: LFW subset size (tests).
        params: overrides ``settings.retrain``.
        oracle_labels: a diagnostic, not retraining: train on the stream's TRUE names (LFW
            folder names) instead of self-labels, to tell label noise from the limits of
            fine-tuning itself. Never the default; the output says so.
        progress: progress bars.
        log: progress lines.

    Raises:
        RetrainError: no champion, too few labels, a damaged model or checkpoint; the
            champion is left as it was.
    """
    import mlflow

    from components.datasets.lfw import LFW_ROOT_DEFAULT
    from components.track import log_figure, log_json, redact_url, start_run
    from components.embed.thresholds import Thresholds
    from components.track.registry import HELD_OUT_PREFIX, promote, set_alias, set_thresholds, set_version_tags
    from components.train.loop import roc_figure, train

    params = check_params(params or settings.retrain)  # before any work: a typo fails now, not after training
    began = time.perf_counter()
    timings: dict[str, float] = {}
    try:
        ref, champion_version = _bootstrap_champion(log, settings)
        champion_model = load_keras_model(ref.path)
    except CheckpointError as error:
        raise RetrainError(f"cannot load the champion: {error}") from error
    # Keyed by what the cycle starts from, never by the clock: re-running a finished cycle
    # returns its recorded outcome (no second registration); a killed one resumes.
    workdir = Path(workdir) / f"champion-v{champion_version}-cycle-{cycle}{'-oracle' if oracle_labels else ''}"
    done = workdir / "decision.json"
    if done.is_file():
        log(f"cycle {cycle} from champion v{champion_version} already ran: {done}")
        return json.loads(done.read_text())
    workdir.mkdir(parents=True, exist_ok=True)
    trunk, top = split_model(champion_model, params.train_from)
    if protocol is None:
        protocol = lfw_protocol(settings, root or LFW_ROOT_DEFAULT, limit_people=limit_people, progress=progress)
    faces = protocol.faces
    person = faces.names[faces.photo]
    timings["faces"] = time.perf_counter() - began

    t0 = time.perf_counter()
    stream_f = trunk_features(trunk, faces.crops, protocol.stream, False, protocol.cache_key, progress=progress)
    held_f = trunk_features(trunk, faces.crops, protocol.held_out, False, protocol.cache_key, progress=progress)
    timings["trunk_features"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    stream_champion = embed_features(top, stream_f)
    held_champion = embed_features(top, held_f)
    champion_eval = evaluate(stream_champion, person[protocol.stream], held_champion, person[protocol.held_out],
                             protocol.pairs, protocol.same, protocol.folds, settings.base.seed)
    timings["evaluate_champion"] = time.perf_counter() - t0

    # Labels: the life cycle over the stream (or a real store), with the champion's own threshold.
    t0 = time.perf_counter()
    if store_url:
        from components.identities import IdentityStore
        from components.train.data import from_store

        try:
            data, chosen = from_store(IdentityStore(store_url), params.min_faces, params.min_cohesion)
        except TrainingDataError as error:
            raise RetrainError(f"no training labels from the identity store: {error}") from error
        # The store URL may carry the database password: only its redacted form is logged.
        train_x_crops, source = data.x, f"identity store {redact_url(store_url)}"
        # Keyed by the labelled faces too: the same store holds other faces next time (hashed: no password on disk).
        store_key = ("store:" + hashlib.sha256(store_url.encode()).hexdigest()[:16] + ":"
                     + hashlib.sha256(np.asarray(data.face_ids).tobytes()).hexdigest()[:16])
        pair_features = np.stack([
            trunk_features(trunk, train_x_crops, np.arange(len(train_x_crops)), flip, store_key, progress=progress)
            for flip in (False, True)], axis=1)
        quality = None
    else:
        if oracle_labels:
            _, identity = np.unique(person[protocol.stream], return_inverse=True)
        else:
            identity = stream_labels(stream_champion, faces.photo[protocol.stream], champion_eval["cluster_threshold"],
                                     settings, params.stream_batches)
        chosen = select_self_labels(stream_champion, identity, faces.photo[protocol.stream], params.min_faces,
                                    -1.0 if oracle_labels else params.min_cohesion)
        rows = protocol.stream[chosen.rows]
        flipped = trunk_features(trunk, faces.crops, protocol.stream, True, protocol.cache_key, progress=progress)
        pair_features = np.stack([np.asarray(stream_f)[chosen.rows], np.asarray(flipped)[chosen.rows]], axis=1)
        data = LabelledFaces(pair_features, chosen.labels, [str(k) for k in chosen.identities], faces.photo[rows],
                             rows, chosen.cannot_link)
        source = f"LFW stream (people.txt folds 1-5, {len(protocol.stream)} faces, {params.stream_batches} batches)"
        if oracle_labels:
            source = f"DIAGNOSTIC: TRUE folder names of the LFW stream (people.txt folds 1-5), not self-labels"
        quality = label_quality(chosen.labels, person[rows]) if len(rows) else None
    timings["labels"] = time.perf_counter() - t0
    data = LabelledFaces(pair_features, data.labels, data.classes, data.photo_ids, data.face_ids, data.cannot_link)
    labels_report = {"source": source, "identities": len(chosen.identities), "faces": int(len(chosen.rows)),
                     "cannot_link_pairs": int(len(chosen.cannot_link)),
                     "dropped_too_small": sum(1 for v in chosen.dropped.values() if v == "too_small"),
                     "dropped_loose": sum(1 for v in chosen.dropped.values() if v == "loose"),
                     "purity_against_truth": quality}
    log(f"self-labels: {labels_report['identities']} identities, {labels_report['faces']} faces "
        f"({labels_report['dropped_too_small']} too small, {labels_report['dropped_loose']} loose identities dropped)")
    try:
        data.check_trainable(min_identities=max(4, params.identities_per_batch // 2), min_faces_per_identity=2)
        train_rows, val_rows = split_identities(data.labels, params.held_out_share, seed=settings.base.seed + cycle)
    except TrainingDataError as error:
        raise RetrainError(f"not enough self-labelled faces to fine-tune: {error}") from error
    train_data = data.subset(train_rows)
    val = data.subset(val_rows)
    val_data = LabelledFaces(np.asarray(val.x[:, 0]), val.labels, val.classes, val.photo_ids, val.face_ids)

    config = TrainConfig(
        network=top.name, embedding_dim=int(top.output.shape[-1]), loss=params.loss,
        identities_per_batch=params.identities_per_batch, faces_per_identity=params.faces_per_identity,
        steps_per_epoch=params.steps_per_epoch, epochs=params.epochs, learning_rate=params.learning_rate,
        patience=params.patience, checkpoint_every=max(1, params.steps_per_epoch // 2), augment=False,
        seed=settings.base.seed + cycle, min_identities=2)
    comparison_params = {"cycle": cycle, "champion_version": champion_version, "retrain": asdict(params),
                         "labels": {k: v for k, v in labels_report.items() if k != "purity_against_truth"},
                         "held_out_pairs": protocol.pairs_source}
    with start_run(EXPERIMENT, f"cycle-{cycle}", params=comparison_params) as parent:
        t0 = time.perf_counter()
        try:
            result = train(train_data, val_data, config, workdir / "train", network=top, export_model=champion_model,
                           augment=flip_choice, experiment=EXPERIMENT, run_name=f"cycle-{cycle}-fine-tune",
                           version_tags={"origin": "fine-tune on TRUE labels (diagnostic)" if oracle_labels
                                         else "self-labelled fine-tune", "base_version": champion_version,
                                         "cycle": cycle}, nested=True, log=log)
        except CheckpointError as error:
            raise RetrainError(f"fine-tuning refused: {error}; the champion (version {champion_version}) is kept") from error
        timings["fine_tune"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        challenger_eval = evaluate(embed_features(top, stream_f), person[protocol.stream], embed_features(top, held_f),
                                   person[protocol.held_out], protocol.pairs, protocol.same, protocol.folds,
                                   settings.base.seed)
        timings["evaluate_challenger"] = time.perf_counter() - t0
        decision = decide(champion_eval, challenger_eval, params.promote_metric, params.promote_margin)
        # The challenger is a model only with its thresholds (components.embed.thresholds), fitted
        # by this very evaluation, the protocol that calibrated the pretrained model's params.yaml:
        # verify = the mean of the held-out pairs' fold thresholds (each fit on the other folds);
        # cluster = the Chinese Whispers threshold with the best BCubed F on the folds 1-5 people;
        # assign = cluster, as params.yaml does (the verification threshold lets identities absorb
        # strangers when streaming). Set before any alias points at the version.
        set_thresholds(result.version, Thresholds(verify=challenger_eval["verification_threshold"],
                                                  cluster=challenger_eval["cluster_threshold"],
                                                  assign=challenger_eval["cluster_threshold"]),
                       evidence={"data": f"retrain cycle {cycle}: LFW " + protocol.pairs_source
                                         + " (verify); people.txt folds 1-5 people (cluster)",
                                 "verify": {"rule": "mean of the fold thresholds", "accuracy": challenger_eval["accuracy"],
                                            "auc": challenger_eval["auc"]},
                                 "cluster": {"rule": "best BCubed F of Chinese Whispers (folds 1-5 people)",
                                             "held_out_bcubed_f1": challenger_eval["bcubed_f1"]},
                                 "assign": "= cluster (as params.yaml for the pretrained model)",
                                 "mlflow_run_id": parent.info.run_id})
        set_version_tags(result.version, {**{f"{HELD_OUT_PREFIX}{m}": challenger_eval[m] for m in METRICS},
                                          f"{HELD_OUT_PREFIX}protocol": protocol.pairs_source})
        set_alias("challenger", result.version)
        if decision["decision"] == "promote":
            promote(result.version, reason=decision["reason"], by=f"faces retrain (cycle {cycle})")
        decision.update({"cycle": cycle, "champion_version": champion_version, "champion_before": champion_version,
                         "challenger_version": result.version,
                         "champion_after": result.version if decision["decision"] == "promote" else champion_version})
        log(f"cycle {cycle}: {decision['reason']}")

        side_by_side = [{"metric": m, "champion": champion_eval[m], "challenger": challenger_eval[m],
                         "delta": round(challenger_eval[m] - champion_eval[m], 5)} for m in METRICS]
        mlflow.log_metrics({**{f"champion_{m}": champion_eval[m] for m in METRICS},
                            **{f"challenger_{m}": challenger_eval[m] for m in METRICS},
                            **{f"delta_{m}": row["delta"] for m, row in zip(METRICS, side_by_side)},
                            "promoted": float(decision["decision"] == "promote")})
        mlflow.set_tags({"decision": decision["decision"], "challenger_version": str(result.version),
                         "champion_version": str(champion_version)})
        log_json("comparison.json", side_by_side)
        log_json("decision.json", decision)
        found = (protocol.pairs >= 0).all(axis=1)
        fig = roc_figure(challenger_eval["_scores"][found], protocol.same[found], f"challenger v{result.version}",
                         {f"champion v{champion_version}": (champion_eval["_scores"][found], protocol.same[found])})
        log_figure(fig, "roc_champion_vs_challenger.png")
        import matplotlib.pyplot as plt

        plt.close(fig)
        parent_id = parent.info.run_id

    for item in (champion_eval, challenger_eval):
        item.pop("_scores", None)
    timings["total"] = time.perf_counter() - began
    outcome = {
        "cycle": cycle, "decision": decision, "labels": labels_report,
        "training": {"steps": result.step, "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
                     "held_out_self_labels_before": result.initial, "held_out_self_labels": result.best, "history": result.history, "train_faces": len(train_data),
                     "train_identities": len(train_data.classes), "val_identities": len(val_data.classes),
                     "trainable_params": int(sum(np.prod(v.shape) for v in top.trainable_weights))},
        "champion": {"version": champion_version, **{k: v for k, v in champion_eval.items() if k != "calibration_curve"}},
        "challenger": {"version": result.version, **{k: v for k, v in challenger_eval.items() if k != "calibration_curve"}},
        "held_out_pairs": protocol.pairs_source,
        "mlflow": {"cycle_run_id": parent_id, "train_run_id": result.run_id},
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    tmp = workdir / ".decision.json.tmp"
    tmp.write_text(json.dumps(outcome, indent=2))
    os.replace(tmp, workdir / "decision.json")
    return outcome


def run_cycles(settings: Settings, out: Path, workdir: Path, cycles: int = 1, store_url: str | None = None,
               limit_people: int | None = None, root: Path | None = None, progress: bool = True,
               command: str = "faces retrain", oracle_labels: bool = False, log=print) -> dict:
    """``faces retrain``: ``cycles`` cycles, each fine-tuning the champion of the moment; JSON to ``out``."""
    from components.datasets.lfw import LFW_ROOT_DEFAULT
    from components.track import tracking_uri

    # The held-out evaluation is LFW's in both modes; the stream is LFW's unless --db gives a store.
    protocol = lfw_protocol(settings, root or LFW_ROOT_DEFAULT, limit_people=limit_people, progress=progress)
    results = []
    for cycle in range(1, cycles + 1):
        results.append(retrain_cycle(settings, Path(workdir), cycle=cycle, protocol=protocol,
                                     store_url=store_url, params=settings.retrain, oracle_labels=oracle_labels,
                                     progress=progress, log=log))
    first, last = results[0], results[-1]
    summary = {
        "benchmark": "retrain",
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "note": "shared 2-core machine; timings are noisy"},
        "protocol": ("stream = main faces of LFW people.txt folds 1-5 (labels from the identity life cycle, never "
                     "from folder names); evaluation = " + protocol.pairs_source + " (10-fold protocol restricted to "
                     "those folds: threshold fit on the other folds) and Chinese Whispers clustering of folds 6-10 "
                     "people (threshold calibrated per model on folds 1-5 people by BCubed F)"),
        "tracking_uri": tracking_uri(),
        "params": asdict(settings.retrain),
        "baseline": {"name": "pretrained dlib-ResNet (champion before any retraining)", **{
            m: first["champion"][m] for m in (*METRICS, "accuracy_std", "cluster_threshold")}},
        "table": [{"cycle": r["cycle"], "model": f"v{r['challenger']['version']} (fine-tuned from v{r['champion']['version']})",
                   **{m: r["challenger"][m] for m in METRICS},
                   **{f"delta_{m}": round(r["challenger"][m] - r["champion"][m], 5) for m in METRICS},
                   "decision": r["decision"]["decision"]} for r in results],
        "cycles": results,
        "final_champion_version": last["decision"]["champion_after"],
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=float))
    os.replace(tmp, out)
    return summary
