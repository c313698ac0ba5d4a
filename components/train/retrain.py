"""Self-labelled retraining: re-fit the champion's head on its own identities, promote only a winner.

One cycle (:func:`retrain_cycle`), keyed by the request that started it (the DAG run):

1. **Champion**: ``components.track.registry.resolve("champion")`` (the pretrained
   dlib-ResNet on a fresh install; it is registered as version 1 and made champion the
   first time, so every comparison is between registered versions).
2. **Self-labels**: the identity store's identities (``labels_from="store"``, the
   default), or the LFW stream run through the identity life cycle with the champion
   (``labels_from="lfw"``, a benchmark option). Identities with at least
   ``retrain.min_faces`` faces whose mean similarity to their medoid is no more than
   ``retrain.cohesion_slack`` below the model's assign threshold are kept; two faces of
   one photo are a cannot-link pair.
   The set (face ids, labels, crop keys and the sha256 of each crop, the held-out split)
   is written as ``labels.csv``; its md5 is the run's ``faces.data_version``.
3. **Evidence, held out before any training** (:mod:`components.train.evidence`): the
   newest faces of each identity ("future photos of known people") and whole identities
   ("people never trained on"), with verification pairs drawn among them.
4. **Training** (:mod:`components.train.head`): the pooled features of every face and
   its mirror image are computed once with the champion's frozen convolutions; its
   projection head is re-fitted on the training faces. A head that did not move is no
   model: nothing is registered.
5. **Comparison** on the evidence: both models' verification figures, and the
   clustering of the held-out identities at each model's threshold calibrated on the
   training faces. :func:`decide` promotes only when the challenger beats the champion
   by ``retrain.promote_margin`` on ``retrain.promote_metric``, falls by no more than
   ``retrain.guard_margin`` on the other verification figure, and is right on
   significantly more evidence pairs (McNemar's exact test, ``retrain.max_p_value``).
6. **Registration after the decision**: the challenger (the champion's network with the
   new head) becomes a version with its calibrated thresholds, the cycle's figures and
   the request key as tags, alias ``challenger``; ``champion`` moves when it won. A
   rerun of the same key (a cleared, retried or killed task) finds that version and
   registers nothing new.

Everything goes to MLflow (experiment ``retrain``): both models' figures side by side
(``champion_*``, ``challenger_*``, ``delta_*``), the decision, ``comparison.json``,
``labels.csv`` and an ROC overlay. The store URL is logged only redacted.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from components.settings import PROJECT_ROOT, RetrainParams, Settings
from components.train.data import LabelledFaces, TrainingDataError, select_self_labels
from components.train.evidence import PAIR_KINDS
from components.train.loop import CheckpointError, load_keras_model

EXPERIMENT = "retrain"
FEATURE_CACHE = PROJECT_ROOT / "bench" / "cache" / "retrain_features"
# Wide: a re-fitted head's similarities spread far lower than the pretrained model's.
COARSE_GRID = np.round(np.arange(0.10, 0.981, 0.02), 3)
METRICS = ("accuracy", "auc", "tar_at_far_1e-3", "pairwise_f1", "bcubed_f1")
# The figures the guard watches. Not clustering: the held-out identities are the champion's own
# clusters, so the champion reproduces them by construction (F = 1.0) and any other model looks
# worse; not TAR at FAR 1e-3 either: a store's evidence has a few thousand different pairs at
# most, so that figure turns on a handful of them.
GUARD_METRICS = ("accuracy", "auc")
CLUSTER_METRICS = ("pairwise_f1", "bcubed_f1")  # of the identities held out whole, whatever ``promote_on`` says
# The evidence a promotion is decided on: ``future`` photos of known people, people never trained
# on (``unseen``), or ``all`` pairs together.
EVIDENCE = ("future", "unseen", "all")
LABEL_SOURCES = ("store", "lfw")
KEY_TAG = "faces.retrain.key"
CALIBRATION_FACES = 2000  # training faces the cluster threshold is calibrated on (whole identities, seeded)


class RetrainError(RuntimeError):
    """A retraining cycle could not run; the champion was left as it was."""


# -- shared helpers -------------------------------------------------------------------------------


def weights_digest(model) -> str:
    """sha256 over a model's weights (names, shapes, bytes): the trunk's identity for the feature cache."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.asarray(weight.numpy())
        digest.update(f"{weight.path}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]




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




def paired_test(champion_right: np.ndarray, challenger_right: np.ndarray) -> dict:
    """McNemar's exact test on the pairs only one of the two models decides right.

    Returns:
        ``challenger_only``, ``champion_only`` (pair counts) and ``p_value``: the chance of
        the challenger winning at least that many of the split pairs if both were as good.
    """
    from scipy.stats import binomtest

    wins = int(np.sum(challenger_right & ~champion_right))
    losses = int(np.sum(champion_right & ~challenger_right))
    p = binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue if wins + losses else 1.0
    return {"challenger_only": wins, "champion_only": losses, "p_value": round(float(p), 6)}


def _figures(result: dict, metric: str, evidence: str) -> dict:
    """The figures of one kind of evidence (``all``: every pair); clustering figures are the unseen identities'."""
    return result if evidence == "all" or metric in CLUSTER_METRICS else result[evidence]


def decide(champion: dict, challenger: dict, metric: str, margin: float, guard_margin: float | None = None,
           max_p_value: float | None = None, evidence: str = "all") -> dict:
    """Promote only when the challenger beats the champion by ``margin`` on ``metric`` of the
    ``evidence`` pairs and falls by no more than ``guard_margin`` on any other guarded figure.

    ``evidence`` is ``future`` (the newest photos of known people), ``unseen`` (people never
    trained on) or ``all``; each result carries the per-kind figures under those keys. The
    guard watches :data:`GUARD_METRICS` of the deciding evidence and of every kind apart: a
    head that gains on the people it was trained on while it gets worse at strangers (or
    a gain in accuracy while the ranking of pairs, AUC, gets worse) is not a better model,
    and the guard says which figure stopped it (None: no guard). With ``max_p_value``, both
    results carry ``_right`` (by kind and ``all``: which evidence pairs each model decides right
    under the 10-fold protocol), and the win on the deciding pairs must be significant: one
    pair more out of a few hundred is luck, not a model.
    """
    if metric not in METRICS:
        raise ValueError(f"retrain.promote_metric must be one of {METRICS}; got {metric!r}")
    if evidence not in EVIDENCE:
        raise ValueError(f"retrain.promote_on must be one of {EVIDENCE}; got {evidence!r}")
    before, after = _figures(champion, metric, evidence), _figures(challenger, metric, evidence)
    delta = after[metric] - before[metric]
    fallen = {}
    if guard_margin is not None:
        watched = [("", before, after)] + [(f"{kind} ", champion[kind], challenger[kind]) for kind in PAIR_KINDS
                                           if kind != evidence and kind in champion and kind in challenger]
        fallen = {f"{label}{m}": round(new[m] - old[m], 5) for label, old, new in watched for m in GUARD_METRICS
                  if not (label == "" and m == metric) and m in old and new[m] < old[m] - guard_margin}
    paired = None
    if max_p_value is not None and "_right" in champion and "_right" in challenger:
        kind = "all" if metric in CLUSTER_METRICS else evidence
        paired = paired_test(np.asarray(champion["_right"][kind]), np.asarray(challenger["_right"][kind]))
    luck = paired is not None and paired["p_value"] > max_p_value
    promote = bool(delta >= margin and not fallen and not luck)
    on = "" if evidence == "all" or metric in CLUSTER_METRICS else f" on {evidence} pairs"
    won = f"challenger {metric}{on} {after[metric]:.4f} beats champion {before[metric]:.4f} by {delta:+.4f}"
    if promote:
        reason = f"{won} >= {margin}" + (f" (p = {paired['p_value']:.3g})" if paired else "")
    elif delta < margin:
        reason = (f"challenger {metric}{on} {after[metric]:.4f} vs champion {before[metric]:.4f}: "
                  f"{delta:+.4f} < margin {margin}; champion kept")
    elif fallen:
        reason = (f"{won}, but " + ", ".join(f"{m} falls by {-d:.4f}" for m, d in fallen.items())
                  + f" (more than guard_margin {guard_margin}); champion kept")
    else:
        reason = (f"{won}, but it is right on {paired['challenger_only']} pairs the champion gets wrong "
                  f"and wrong on {paired['champion_only']} it gets right: p = {paired['p_value']:.3g} > "
                  f"max_p_value {max_p_value}, not a significant win; champion kept")
    return {"decision": "promote" if promote else "keep", "metric": metric, "evidence": evidence, "margin": margin,
            "guard_margin": guard_margin, "fallen": fallen, "paired": paired, "max_p_value": max_p_value,
            "champion": before[metric], "challenger": after[metric], "delta": round(delta, 5),
            "reason": reason}


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




# -- parameters ------------------------------------------------------------------------------------


def check_params(params: RetrainParams) -> RetrainParams:
    """Refuse retraining parameters that would fail only after training (checked before any work).

    Raises:
        RetrainError: names the parameter, the value and what is allowed.
    """
    from components.train.head import HEAD_LOSSES

    problems = []
    if not params.guard_margin >= 0:
        problems.append(f"guard_margin must be 0 or more, got {params.guard_margin}")
    if params.promote_metric not in METRICS:
        problems.append(f"promote_metric {params.promote_metric!r} is not one of {', '.join(METRICS)}")
    if params.loss not in HEAD_LOSSES:
        problems.append(f"loss {params.loss!r} is not one of {', '.join(HEAD_LOSSES)}")
    for name in ("min_faces", "steps", "stream_batches"):
        if getattr(params, name) < 1:
            problems.append(f"{name} must be at least 1, got {getattr(params, name)}")
    if params.min_faces < 3:
        problems.append(f"min_faces must be at least 3 (one future photo held out, two trained on), "
                        f"got {params.min_faces}")
    if not params.learning_rate > 0:
        problems.append(f"learning_rate must be above 0, got {params.learning_rate}")
    if not params.anchor >= 0:
        problems.append(f"anchor must be 0 or more, got {params.anchor}")
    for name in ("future_share", "unseen_share"):
        if not 0 < getattr(params, name) < 1:
            problems.append(f"{name} must be between 0 and 1, got {getattr(params, name)}")
    if not 0 <= params.cohesion_slack <= 2:
        problems.append(f"cohesion_slack is a difference of cosine similarities in [0, 2], got {params.cohesion_slack}")
    if params.promote_on not in EVIDENCE:
        problems.append(f"promote_on {params.promote_on!r} is not one of {', '.join(EVIDENCE)}")
    if not 0 < params.max_p_value <= 1:
        problems.append(f"max_p_value must be in (0, 1], got {params.max_p_value}")
    if problems:
        raise RetrainError("bad retraining parameters: " + "; ".join(problems))
    return params


def head_config(params: RetrainParams, seed: int):
    """The :class:`components.train.head.HeadConfig` of the ``retrain:`` parameters."""
    from components.train.head import HeadConfig

    return HeadConfig(loss=params.loss, steps=params.steps, learning_rate=params.learning_rate, anchor=params.anchor,
                      warmup=max(1, params.steps // 10), seed=seed)


# -- features --------------------------------------------------------------------------------------


def pooled_features(model, crops, progress: bool, cache_key: str | None = None, batch_size: int = 64) -> np.ndarray:
    """(N, 2, F) pooled features of each crop and of its mirror image (the head's inputs).

    Cached under ``bench/cache/retrain_features`` when ``cache_key`` names the face set
    (with the model's weights): the LFW protocols reuse them across cycles.
    """
    from tqdm import tqdm

    from components.train.head import feature_model

    path = None
    if cache_key is not None:
        key = hashlib.sha256(f"{weights_digest(model)}|{cache_key}".encode()).hexdigest()[:20]
        path = FEATURE_CACHE / f"{key}.npy"
        if path.is_file():
            return np.load(path)
    features = feature_model(model)
    out = np.zeros((len(crops), 2, int(features.output.shape[-1])), np.float32)
    for start in tqdm(range(0, len(crops), batch_size), desc="features (face and mirror)", unit="batch",
                      disable=None if progress else True):
        batch = np.asarray(crops[start : start + batch_size], np.float32)
        out[start : start + len(batch), 0] = np.asarray(features(batch, training=False))
        out[start : start + len(batch), 1] = np.asarray(features(batch[:, :, ::-1], training=False))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, out)
        os.replace(tmp, path)
    return out


# -- what a cycle trains on ------------------------------------------------------------------------


@dataclass
class CycleData:
    """Self-labelled faces of one cycle.

    Attributes:
        faces: crops (``x``), dense self-labels, photos, face ids, cannot-link pairs and
            ``meta`` (``order``: larger is newer; ``truth``: folder name or None;
            ``crop``: object key; ``sha256``: of the crop's bytes).
        source: where the labels came from, in words (no secret).
        dropped: self-labelled identities left out, by reason.
    """

    faces: LabelledFaces
    source: str
    dropped: dict[str, int]


def min_cohesion(params: RetrainParams, thresholds) -> float:
    """The cohesion an identity needs to give labels, on the scale of the model that made it."""
    return thresholds.assign - params.cohesion_slack


def store_data(store_url: str, params: RetrainParams, settings: Settings, crops_root: str | None = None) -> CycleData:
    """The identity store's identities and their crops (read through components/storage)."""
    from components.embed.thresholds import Thresholds
    from components.identities import IdentityStore
    from components.track import redact_url
    from components.train.data import from_store

    store = IdentityStore(store_url)
    try:
        # Cohesion on the scale of the model whose embeddings the store holds.
        record = store.model()
        thresholds = Thresholds.from_dict(record.thresholds) if record else Thresholds.from_settings(settings)
        faces, chosen = from_store(store, params.min_faces, min_cohesion(params, thresholds), crops_root=crops_root)
    except TrainingDataError as error:
        raise RetrainError(f"no training labels from the identity store: {error}") from error
    finally:
        store.engine.dispose()
    dropped = {reason: sum(1 for v in chosen.dropped.values() if v == reason) for reason in ("too_small", "loose")}
    return CycleData(faces, f"identity store {redact_url(store_url)}", dropped)


def lfw_data(settings: Settings, params: RetrainParams, model, kernel: np.ndarray, limit_people: int | None,
             progress: bool) -> tuple[CycleData, np.ndarray]:
    """The LFW stream (people.txt folds 1-5) labelled by the identity life cycle with the champion.

    Returns:
        The data, and the (N, 2, F) pooled features of its faces (already computed to label them).
    """
    from components.datasets.lfw import LFW_ROOT_DEFAULT
    from components.embed.thresholds import Thresholds
    from components.train.head import project

    protocol = lfw_protocol(settings, LFW_ROOT_DEFAULT, limit_people=limit_people, progress=progress)
    faces = protocol.faces
    rows = protocol.stream
    features = pooled_features(model, RowView(faces.crops, rows), progress, cache_key=f"{protocol.cache_key}-stream")
    embeddings = project(features[:, 0], kernel)
    identity = stream_labels(embeddings, faces.photo[rows], Thresholds.from_settings(settings).cluster, settings,
                             params.stream_batches)
    chosen = select_self_labels(embeddings, identity, faces.photo[rows], params.min_faces,
                                min_cohesion(params, Thresholds.from_settings(settings)))
    picked = rows[chosen.rows]
    truth = faces.names[faces.photo[picked]].astype(object)
    meta = {"order": np.arange(len(picked)), "truth": truth,
            "crop": np.array([str(faces.paths[p]) for p in faces.photo[picked]], object),
            "sha256": np.array([hashlib.sha256(np.asarray(faces.crops[r]).tobytes()).hexdigest() for r in picked],
                               object)}
    data = LabelledFaces(RowView(faces.crops, picked), chosen.labels, [str(k) for k in chosen.identities],
                         faces.photo[picked], picked, chosen.cannot_link, meta)
    dropped = {reason: sum(1 for v in chosen.dropped.values() if v == reason) for reason in ("too_small", "loose")}
    return (CycleData(data, f"LFW stream (people.txt folds 1-5, {len(rows)} faces, {params.stream_batches} batches)",
                      dropped), features[chosen.rows])


class RowView:
    """``array[rows]`` without copying it (LFW's crops are memory-mapped)."""

    def __init__(self, array, rows):
        self.array, self.rows = array, np.asarray(rows, np.int64)
        self.shape = (len(self.rows), *array.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        return np.asarray(self.array[self.rows[index]])


LABEL_COLUMNS = ("face_id", "label", "identity", "split", "order", "crop", "sha256")


def write_labels(path: Path, data: LabelledFaces, split) -> str:
    """The self-label set as CSV (:data:`LABEL_COLUMNS`); returns its md5.

    The md5 is the run's data version: the same labels and split give the same digest.
    """
    role = np.full(len(data), "train", object)
    role[split.future] = "future"
    role[split.unseen] = "unseen"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LABEL_COLUMNS)
        for row in range(len(data)):
            writer.writerow([int(data.face_ids[row]), int(data.labels[row]), data.classes[data.labels[row]], role[row],
                             int(data.meta["order"][row]), data.meta["crop"][row], data.meta["sha256"][row]])
    os.replace(tmp, path)
    return hashlib.md5(path.read_bytes()).hexdigest()


LABELS_REMOTE_ENV = "FACES_LABELS_REMOTE"


def labels_remote(params: RetrainParams) -> str:
    """``$FACES_LABELS_REMOTE``, else ``retrain.labels_remote``; a relative folder is the project's."""
    remote = os.environ.get(LABELS_REMOTE_ENV, "").strip() or params.labels_remote
    if remote and "://" not in remote and not Path(remote).is_absolute():
        return str(PROJECT_ROOT / remote)
    return remote


def dvc_key(md5: str) -> str:
    """Where DVC (3.x) keeps a file of this md5 in a remote: ``files/md5/<2>/<30>``."""
    return f"files/md5/{md5[:2]}/{md5[2:]}"


def push_labels(path: Path, md5: str, remote: str) -> str:
    """Put a label set into a DVC remote (a folder or ``s3://bucket/prefix``) under its md5.

    The layout is DVC's own, so ``dvc pull`` of a ``.dvc`` file naming that md5 fetches it,
    and :func:`fetch_labels` (``faces retrain --labels MD5``) reads it back.

    Returns:
        The object's URI.
    """
    from components.storage import open_storage

    storage = open_storage(remote)
    key = dvc_key(md5)
    if not storage.exists(key):  # content-addressed: the same labels are stored once
        storage.put_file(key, path)
    return storage.uri(key)


def fetch_labels(md5: str, remote: str) -> list[dict]:
    """The rows of the label set ``md5`` from the DVC remote, checked against their md5.

    Raises:
        RetrainError: not in the remote, or its bytes do not hash to ``md5``.
    """
    from components.storage import StorageError, open_storage

    md5 = md5.removeprefix("labels-md5:").strip().lower()
    if len(md5) != 32 or any(c not in "0123456789abcdef" for c in md5):
        raise RetrainError(f"--labels {md5!r} is not an md5 (32 hex digits, the run's faces.data_version)")
    try:
        data = open_storage(remote).get_bytes(dvc_key(md5))
    except StorageError as error:
        raise RetrainError(f"label set {md5} is not in the DVC remote {remote}: {error}") from error
    if hashlib.md5(data).hexdigest() != md5:
        raise RetrainError(f"label set {md5} in {remote} is damaged: its bytes hash to {hashlib.md5(data).hexdigest()}")
    rows = list(csv.DictReader(data.decode().splitlines()))
    if not rows or set(LABEL_COLUMNS) - set(rows[0]):
        raise RetrainError(f"label set {md5} has no rows or lacks the columns {LABEL_COLUMNS}")
    return rows


def store_data_from_labels(store_url: str, rows: list[dict], rev: str, crops_root: str | None = None) -> CycleData:
    """The training set a recorded label set names: the same faces, labels and order, crops checked by sha256.

    Raises:
        RetrainError: a face is gone from the store, or its crop's bytes changed since.
    """
    from sqlalchemy import select

    from components.identities import IdentityStore
    from components.identities import store as db
    from components.identities.crops import CropReader, crops_root_for
    from components.track import redact_url
    from components.train.data import CROP_SIZE, decode_crop

    ids = [int(row["face_id"]) for row in rows]
    store = IdentityStore(store_url)
    try:
        with store.session() as session:
            found = {face.id: face for face in session.execute(
                select(db.FaceRow.id, db.FaceRow.image_id, db.FaceRow.crop_path, db.FaceRow.label)
                .where(db.FaceRow.id.in_(ids))).all()}
    finally:
        store.engine.dispose()
    missing = [face for face in ids if face not in found]
    if missing:
        raise RetrainError(f"label set {rev}: {len(missing)} of its faces are no longer in the store "
                           f"(e.g. face {missing[0]}); it cannot be rebuilt")
    reader = CropReader(crops_root if crops_root else crops_root_for(store_url))
    blobs = reader.read_many([found[face].crop_path for face in ids], errors="return")
    x = np.zeros((len(ids), CROP_SIZE, CROP_SIZE, 3), np.uint8)
    for i, (row, blob) in enumerate(zip(rows, blobs)):
        if isinstance(blob, Exception):
            raise RetrainError(f"label set {rev}: cannot read the crop of face {ids[i]}: {blob}") from blob
        if hashlib.sha256(blob).hexdigest() != row["sha256"]:
            raise RetrainError(f"label set {rev}: the crop of face {ids[i]} changed since the set was recorded")
        x[i] = decode_crop(blob, f"face {ids[i]}")
    labels = np.array([int(row["label"]) for row in rows], np.int64)
    classes = {int(row["label"]): row["identity"] for row in rows}
    photos = np.array([found[face].image_id for face in ids], np.int64)
    meta = {"order": np.array([int(row["order"]) for row in rows], np.int64),
            "truth": np.array([found[face].label for face in ids], object),
            "crop": np.array([row["crop"] for row in rows], object),
            "sha256": np.array([row["sha256"] for row in rows], object)}
    faces = LabelledFaces(x, labels, [classes[k] for k in range(len(classes))], photos, np.array(ids, np.int64),
                          _cannot_link(photos, labels), meta)
    return CycleData(faces, f"label set {rev} of identity store {redact_url(store_url)}", {})


def _cannot_link(photos: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Row pairs of one photo with different labels (two people seen together)."""
    pairs = [(a, b) for a in range(len(photos)) for b in np.flatnonzero(photos == photos[a]) if b > a
             and labels[a] != labels[b]]
    return np.array(pairs, np.int64).reshape(-1, 2)


# -- comparison ------------------------------------------------------------------------------------


def _calibration_rows(labels: np.ndarray, rows: np.ndarray, seed: int) -> np.ndarray:
    """At most :data:`CALIBRATION_FACES` of ``rows``, whole identities at a time (seeded)."""
    if len(rows) <= CALIBRATION_FACES:
        return rows
    kept, total = [], 0
    for k in np.random.default_rng(seed).permutation(np.unique(labels[rows])):
        members = rows[labels[rows] == k]
        if total + len(members) > CALIBRATION_FACES and kept:
            continue
        kept.append(members)
        total += len(members)
    return np.sort(np.concatenate(kept))


def compare(embeddings: np.ndarray, labels: np.ndarray, split, seed: int, truth: np.ndarray | None = None) -> dict:
    """One model's figures on the evidence: verification pairs, and clustering of the unseen identities.

    The clustering threshold is calibrated on training faces (best BCubed F of Chinese
    Whispers against the self-labels), never on the identities it is measured on. Where
    the faces have folder names (``truth``), the same pairs are also scored against them
    (``against_folder_names``): a diagnostic of what the self-labels hide, never the decision.
    """
    from components.train.evidence import evaluate_split, verification_figures

    out = evaluate_split(embeddings, split)
    if truth is not None:
        named = np.array([bool(t) for t in truth], bool)
        both = named[split.pairs[:, 0]] & named[split.pairs[:, 1]]
        pairs = split.pairs[both]
        same = np.asarray(truth, object)[pairs[:, 0]] == np.asarray(truth, object)[pairs[:, 1]]
        if same.any() and (~same).any() and both.sum() >= 20:
            figures = verification_figures(out["_scores"][both], same, split.folds[both])
            out["against_folder_names"] = {"pairs": int(both.sum()), **{k: figures[k] for k in
                                                                       ("accuracy", "auc", "tar_at_far_1e-3")}}
    calibration = _calibration_rows(labels, split.train, seed)
    threshold, _ = calibrate_threshold(embeddings[calibration], labels[calibration], seed)
    clustering = _cluster_scores(embeddings[split.unseen], labels[split.unseen], threshold, seed)
    out.update({"cluster_threshold": threshold, "pairwise_f1": clustering["pairwise_f1"],
                "bcubed_f1": clustering["bcubed_f1"], "clustering": clustering})
    return out


# -- one cycle -------------------------------------------------------------------------------------


def _registered_by_key(key: str):
    """The version a cycle with this request key already registered (its VersionInfo), if any."""
    from components.track.registry import RegistryNotConfiguredError, list_versions

    try:
        versions = list_versions()
    except RegistryNotConfiguredError:
        return None  # nothing registered yet: the cycle registers the pretrained model first
    found = [info for info in versions if info.tags.get(KEY_TAG) == key]
    return min(found, key=lambda info: info.version) if found else None


def _finish_registered(info, key: str, log) -> dict:
    """The outcome of a request whose challenger is already registered (the task was killed after
    registering, or its outcome file was lost): nothing is trained or registered again; a promotion
    the kill interrupted is completed."""
    from components.track.registry import PROMOTION_TAGS, promote

    decision = info.tags.get("decision", "keep")
    if decision == "promote" and PROMOTION_TAGS["reason"] not in info.tags:
        promote(info.version, reason=info.tags.get("decision_reason", "won its retraining cycle"),
                by=f"faces retrain ({key})")
    base = info.tags.get("base_version")
    before = int(base) if base and base.isdigit() else None
    log(f"request {key} already registered version {info.version} (decision: {decision})")
    return {"key": key, "decision": {"decision": decision, "reason": info.tags.get("decision_reason", ""),
                                     "champion_before": before, "challenger_version": info.version,
                                     "champion_after": info.version if decision == "promote" else before},
            "recovered_from_registry": True}


def retrain_cycle(settings: Settings, workdir: Path, *, key: str, labels_from: str = "store",
                  store_url: str | None = None, crops_root: str | None = None, limit_people: int | None = None,
                  labels_rev: str | None = None, params: RetrainParams | None = None, progress: bool = True,
                  log=print) -> dict:
    """Run one retraining cycle; returns (and writes ``workdir/<key>/outcome.json``) what happened.

    Args:
        settings: the project's settings (``retrain`` section unless ``params``).
        workdir: where the cycle keeps its labels, challenger file and outcome.
        key: what identifies the request (the DAG run, or the CLI's ``--key``): a rerun with
            the same key returns the recorded outcome, or finds the version it registered.
        labels_from: ``store`` (the identity store at ``store_url``) or ``lfw`` (the LFW stream).
        store_url: the identity store (``labels_from="store"``).
        crops_root: where the store's relative crop paths start (default: see
            :func:`components.identities.crops.crops_root_for`).
        limit_people: LFW subset (``labels_from="lfw"``; tests).
        labels_rev: rebuild the training set of an earlier cycle from its label set (the md5
            in its ``faces.data_version``), fetched from ``retrain.labels_remote``; seeded, the
            same store gives the same challenger.
        params: overrides ``settings.retrain``.
        progress: progress bars.
        log: progress lines.

    Returns:
        ``decision`` (``promote`` / ``keep`` / ``no_model``, champion before and after,
        the challenger's version or None), ``labels``, ``evidence``, both models'
        figures, ``training``, ``mlflow`` run id and ``seconds``.

    Raises:
        RetrainError: bad parameters, no champion, too few labels to hold anything out;
            the champion is left as it was.
    """
    import mlflow

    from components.embed.thresholds import Thresholds
    from components.track import log_figure, log_json, start_run
    from components.track.registry import HELD_OUT_PREFIX, promote, register_embedder, set_alias
    from components.train.evidence import EvidenceError, label_noise, split_evidence
    from components.train.head import HeadError, fit_head, head_kernel, project, with_head
    from components.train.loop import roc_figure

    params = check_params(params or settings.retrain)  # before any work: a typo fails now, not after training
    if labels_from not in LABEL_SOURCES:
        raise RetrainError(f"labels_from must be one of {', '.join(LABEL_SOURCES)}, got {labels_from!r}")
    if labels_from == "store" and not store_url:
        raise RetrainError("labels_from=store needs the identity store's URL")
    safe_key = "".join(c if c.isalnum() or c in "._-" else "_" for c in key)
    folder = Path(workdir) / safe_key
    done = folder / "outcome.json"
    if done.is_file():
        log(f"request {key} already ran: {done}")
        return json.loads(done.read_text())
    began = time.perf_counter()
    timings: dict[str, float] = {}
    registered = _registered_by_key(key)
    if registered is not None:
        outcome = _finish_registered(registered, key, log)
        folder.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(outcome, indent=2))
        return outcome
    try:
        ref, champion_version = _bootstrap_champion(log, settings)
        champion = load_keras_model(ref.path)
        kernel = head_kernel(champion)
    except (CheckpointError, HeadError) as error:
        raise RetrainError(f"cannot use the champion: {error}") from error

    t0 = time.perf_counter()
    if labels_rev:
        if labels_from != "store":
            raise RetrainError("a recorded label set (labels_rev) is rebuilt from the identity store only")
        rows = fetch_labels(labels_rev, labels_remote(params))
        data = store_data_from_labels(store_url, rows, labels_rev, crops_root)
        timings["read_crops"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        features = pooled_features(champion, data.faces.x, progress)
    elif labels_from == "store":
        data = store_data(store_url, params, settings, crops_root)
        timings["read_crops"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        features = pooled_features(champion, data.faces.x, progress)
    else:
        data, features = lfw_data(settings, params, champion, kernel, limit_people, progress)
    timings["features"] = time.perf_counter() - t0
    faces = data.faces
    log(f"self-labels: {len(faces.classes)} identities, {len(faces)} faces from {data.source}")
    try:
        split = split_evidence(faces.labels, faces.meta["order"], params.future_share, params.unseen_share,
                               seed=settings.base.seed)
    except EvidenceError as error:
        raise RetrainError(f"too little to hold out evidence: {error}") from error
    if labels_rev:
        recorded = np.array([row["split"] for row in rows], object)
        role = np.full(len(faces), "train", object)
        role[split.future], role[split.unseen] = "future", "unseen"
        if not np.array_equal(recorded, role):
            raise RetrainError(f"label set {labels_rev} was split with other retrain.future_share / unseen_share "
                               "or seed; use the parameters of the run that recorded it")
    folder.mkdir(parents=True, exist_ok=True)
    labels_md5 = write_labels(folder / "labels.csv", faces, split)
    remote = labels_remote(params)
    labels_uri = push_labels(folder / "labels.csv", labels_md5, remote) if remote else None
    noise = label_noise(faces.labels, faces.meta["truth"])
    labels_report = {"source": data.source, "identities": len(faces.classes), "faces": len(faces),
                     "cannot_link_pairs": int(len(faces.cannot_link)), "dropped": data.dropped,
                     "data_version": labels_md5, "dvc_remote_object": labels_uri, "against_folder_names": noise}
    evidence_report = {**split.summary(faces.labels), "future_share": params.future_share,
                       "unseen_share": params.unseen_share,
                       "measured_against": "self-labels (the champion's identities), not human names"}

    t0 = time.perf_counter()
    train = faces.subset(split.train)
    config = head_config(params, settings.base.seed)
    try:
        fit = fit_head(features[split.train], train.labels, kernel, config, cannot_link=train.cannot_link)
    except HeadError as error:
        raise RetrainError(f"cannot re-fit the head: {error}") from error
    timings["fit"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    truth = faces.meta.get("truth")
    champion_eval = compare(project(features[:, 0], kernel), faces.labels, split, settings.base.seed, truth)
    identical = bool(np.array_equal(fit.kernel, kernel))
    challenger_eval = None if identical else compare(project(features[:, 0], fit.kernel), faces.labels, split,
                                                     settings.base.seed, truth)
    timings["compare"] = time.perf_counter() - t0
    if identical:
        # Training that returns its starting weights is no model: nothing to compare or register.
        decision = {"decision": "no_model", "metric": params.promote_metric, "margin": params.promote_margin,
                    "reason": "the re-fitted head equals the champion's: no new model; champion kept"}
    else:
        decision = decide(champion_eval, challenger_eval, params.promote_metric, params.promote_margin,
                          params.guard_margin, params.max_p_value, params.promote_on)
    log(f"{key}: {decision['reason']}")

    run_params = {"request_key": key, "champion_version": champion_version, "labels_from": labels_from,
                  "retrain": asdict(params), "labels": {k: v for k, v in labels_report.items()
                                                        if k not in ("against_folder_names", "dropped")},
                  "evidence": evidence_report}
    challenger_version = None
    with start_run(EXPERIMENT, f"retrain {key}", params=run_params,
                   tags={"faces.data_version": f"labels-md5:{labels_md5}"}) as run:
        mlflow.log_artifact(str(folder / "labels.csv"))
        side_by_side = [{"metric": m, "champion": champion_eval[m],
                         "challenger": None if challenger_eval is None else challenger_eval[m],
                         "delta": None if challenger_eval is None else round(challenger_eval[m] - champion_eval[m], 5)}
                        for m in METRICS]
        metrics = {f"champion_{m}": champion_eval[m] for m in METRICS}
        metrics["head_moved"] = fit.moved
        if challenger_eval is not None:
            metrics.update({f"challenger_{m}": challenger_eval[m] for m in METRICS})
            metrics.update({f"delta_{row['metric']}": row["delta"] for row in side_by_side})
            for kind in ("future", "unseen", "against_folder_names"):
                metrics.update({f"{who}_{kind}_{m}": value[kind][m] for who, value in
                                (("champion", champion_eval), ("challenger", challenger_eval)) if kind in value
                                for m in ("accuracy", "auc", "tar_at_far_1e-3")})
        metrics["promoted"] = float(decision["decision"] == "promote")
        if decision.get("paired"):  # McNemar's test on the deciding pairs, for the compare view
            metrics.update(evidence_pairs_won=decision["paired"]["challenger_only"],
                           evidence_pairs_lost=decision["paired"]["champion_only"],
                           evidence_p_value=decision["paired"]["p_value"])
        mlflow.log_metrics(metrics)
        for entry in fit.history:
            mlflow.log_metric("head_loss", entry["loss"], step=entry["step"])
        log_json("comparison.json", side_by_side)
        if challenger_eval is not None:
            fig = roc_figure(challenger_eval["_scores"], split.same, "challenger (re-fitted head)",
                             {f"champion v{champion_version}": (champion_eval["_scores"], split.same)})
            log_figure(fig, "roc_champion_vs_challenger.png")
            import matplotlib.pyplot as plt

            plt.close(fig)

            # Registered only now, after the decision, once per request key (checked at the start).
            path = folder / "challenger.keras"
            with_head(champion, fit.kernel).save(path)
            thresholds = Thresholds(verify=challenger_eval["verification_threshold"],
                                    cluster=challenger_eval["cluster_threshold"],
                                    assign=challenger_eval["cluster_threshold"])
            tags = {KEY_TAG: key, "origin": "self-labelled head re-fit", "base_version": champion_version,
                    "faces.data_version": f"labels-md5:{labels_md5}", "decision": decision["decision"],
                    "decision_reason": decision["reason"],
                    **{f"{HELD_OUT_PREFIX}{m}": challenger_eval[m] for m in METRICS},
                    f"{HELD_OUT_PREFIX}protocol": "self-labelled evidence of the identity store"
                    if labels_from == "store" else "self-labelled evidence of the LFW stream"}
            challenger_version = register_embedder(path, run.info.run_id, tags=tags, thresholds=thresholds)
            path.unlink()
            set_alias("challenger", challenger_version)
            if decision["decision"] == "promote":
                promote(challenger_version, reason=decision["reason"], by=f"faces retrain ({key})")
        mlflow.set_tags({"decision": decision["decision"], "decision_reason": decision["reason"][:5000],
                         "champion_version": str(champion_version),
                         "challenger_version": str(challenger_version)})
        decision.update({"champion_before": champion_version, "challenger_version": challenger_version,
                         "champion_after": challenger_version if decision["decision"] == "promote"
                         else champion_version})
        log_json("decision.json", decision)
        run_id = run.info.run_id

    for item in (champion_eval, challenger_eval):
        if item is not None:
            item.pop("_scores", None)
            item.pop("_right", None)
    timings["total"] = time.perf_counter() - began
    outcome = {"key": key, "decision": decision, "labels": labels_report, "evidence": evidence_report,
               "training": {"method": "head re-fit", "moved": round(fit.moved, 5), "history": fit.history,
                            **asdict(config)},
               "champion": {"version": champion_version, **champion_eval},
               "challenger": None if challenger_eval is None else {"version": challenger_version, **challenger_eval},
               "mlflow": {"run_id": run_id}, "seconds": {k: round(v, 1) for k, v in timings.items()}}
    tmp = folder / ".outcome.json.tmp"
    tmp.write_text(json.dumps(outcome, indent=2, default=float))
    os.replace(tmp, done)
    return outcome
