"""Promotion evidence from the user's own identity store, without any human label.

The store's identities are self-labels: what the champion clustered. From them a
cycle holds out, before it trains anything,

* **future photos of known people**: the newest photos (by the order they were
  ingested) of each identity that stays in training. Pairs: each such face with older
  faces of its own identity (same) and of other identities (different): what
  ``/identify`` does with tomorrow's photos.
* **people never trained on**: whole identities kept out of training. Pairs: faces of
  one such identity (same) and of two of them (different): the guard against a head
  that only learned the training people (generalisation).

Both models are scored on the same pairs (10-fold accuracy with the threshold fit on
the other folds, AUC, TAR at FAR 1e-3), so the comparison is fair between them; it is
measured against self-labels, which the champion made, so it rewards agreeing with
the champion's own clusters on the hard cases it could not resolve less than a truth
would. :func:`label_noise` says how noisy the self-labels are where the photos came
with folder names.

Pure functions of arrays: the store is read by :func:`components.train.retrain.store_faces`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAIR_KINDS = ("future", "unseen")
METRICS = ("accuracy", "auc", "tar_at_far_1e-3")


class EvidenceError(ValueError):
    """The store holds too little to hold anything out; says what is missing."""


@dataclass
class EvidenceSplit:
    """Rows for training and the held-out evidence.

    Attributes:
        train: rows the head is fitted on.
        future: rows held out as the newest photos of identities that stay in training.
        unseen: rows of the identities held out whole.
        pairs: (M, 2) rows of the verification pairs.
        same: (M,) whether a pair is one identity.
        kind: (M,) ``future`` or ``unseen``.
        folds: (M,) 1-10, for the 10-fold accuracy.
    """

    train: np.ndarray
    future: np.ndarray
    unseen: np.ndarray
    pairs: np.ndarray
    same: np.ndarray
    kind: np.ndarray
    folds: np.ndarray

    def summary(self, labels: np.ndarray) -> dict:
        labels = np.asarray(labels)
        return {"train_faces": int(len(self.train)), "train_identities": int(len(np.unique(labels[self.train]))),
                "future_faces": int(len(self.future)), "unseen_faces": int(len(self.unseen)),
                "unseen_identities": int(len(np.unique(labels[self.unseen]))) if len(self.unseen) else 0,
                **{f"{kind}_pairs": int((self.kind == kind).sum()) for kind in PAIR_KINDS},
                "same_pairs": int(self.same.sum()), "different_pairs": int((~self.same).sum())}


def split_evidence(labels: np.ndarray, order: np.ndarray, future_share: float, unseen_share: float,
                   seed: int = 0, partners: int = 5) -> EvidenceSplit:
    """Hold out future photos and whole identities; draw the verification pairs.

    Args:
        labels: (N,) dense self-label per face.
        order: (N,) when each face arrived (larger = newer): the future is the newest.
        future_share: share of each training identity's faces held out as future photos
            (at least one; at least two faces stay in training).
        unseen_share: share of identities held out whole (at least two; at least two stay).
        seed: which identities are held out and which pairs are drawn.
        partners: same-identity partners per future face (and as many different ones).

    Raises:
        EvidenceError: fewer than four identities, or no pair of either kind can be drawn.
    """
    labels = np.asarray(labels, np.int64)
    order = np.asarray(order)
    rng = np.random.default_rng(seed)
    identities = np.unique(labels)
    if len(identities) < 4:
        raise EvidenceError(f"{len(identities)} identities: holding out people and future photos needs at least 4")
    n_unseen = min(len(identities) - 2, max(2, int(round(len(identities) * unseen_share))))
    unseen_ids = np.sort(rng.permutation(identities)[:n_unseen])
    is_unseen = np.isin(labels, unseen_ids)
    future = []
    for k in np.setdiff1d(identities, unseen_ids):
        rows = np.flatnonzero(labels == k)
        if len(rows) < 3:
            continue  # too few to hold out one and still train on two
        n_future = min(len(rows) - 2, max(1, int(round(len(rows) * future_share))))
        newest_first = rows[np.argsort(-order[rows], kind="stable")]
        future.extend(newest_first[:n_future].tolist())
    future = np.sort(np.array(future, np.int64))
    train = np.setdiff1d(np.flatnonzero(~is_unseen), future)
    unseen = np.flatnonzero(is_unseen)

    pairs, same, kind = [], [], []
    train_of = {int(k): train[labels[train] == k] for k in np.unique(labels[train])}
    for row in future:
        own = train_of.get(int(labels[row]), np.zeros(0, np.int64))
        picks = rng.choice(own, size=min(partners, len(own)), replace=False) if len(own) else []
        others = train[labels[train] != labels[row]]
        strangers = rng.choice(others, size=min(len(picks), len(others)), replace=False) if len(others) else []
        pairs += [(row, int(p)) for p in picks] + [(row, int(p)) for p in strangers]
        same += [True] * len(picks) + [False] * len(strangers)
        kind += ["future"] * (len(picks) + len(strangers))
    positives = []
    for k in unseen_ids:
        members = np.flatnonzero(labels == k)
        positives += [(int(a), int(b)) for i, a in enumerate(members) for b in members[i + 1 :]]
    if len(positives) > 20 * partners * len(unseen_ids):
        keep = rng.choice(len(positives), 20 * partners * len(unseen_ids), replace=False)
        positives = [positives[i] for i in np.sort(keep)]
    negatives = []
    if len(unseen) and len(unseen_ids) >= 2:
        while len(negatives) < len(positives):
            a, b = rng.choice(unseen, size=2, replace=False)
            if labels[a] != labels[b]:
                negatives.append((int(a), int(b)))
    pairs += positives + negatives
    same += [True] * len(positives) + [False] * len(negatives)
    kind += ["unseen"] * (len(positives) + len(negatives))
    same_a, kind_a = np.array(same, bool), np.array(kind, object)
    for name in PAIR_KINDS:
        chosen = kind_a == name
        if not (same_a[chosen].any() and (~same_a[chosen]).any()):
            raise EvidenceError(f"no {name} pairs of both kinds (same and different) could be drawn: "
                                f"{int(chosen.sum())} pairs; the store needs more identities with 3+ faces")
    folds = rng.permutation(np.arange(len(pairs)) % 10 + 1)
    return EvidenceSplit(train, future, unseen, np.array(pairs, np.int64).reshape(-1, 2), same_a, kind_a, folds)


def score_pairs(embeddings: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair of unit embeddings."""
    x = np.asarray(embeddings, np.float32)
    return np.sum(x[pairs[:, 0]] * x[pairs[:, 1]], axis=1)


def verification_figures(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict:
    """accuracy (10-fold, threshold fit on the other folds), its std, AUC, TAR@FAR 1e-3, the mean threshold."""
    from components.report.verification import verification_report

    report = verification_report(np.asarray(scores, float), np.asarray(same, bool), np.asarray(folds))
    return {"accuracy": report["accuracy_mean"], "accuracy_std": report["accuracy_std"], "auc": report["auc"],
            "tar_at_far_1e-3": report["tar_at_far_1e-3"], "verification_threshold": report["threshold_mean"]}


def decided_right(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Which pairs the 10-fold protocol decides right: each fold by the threshold fit on the other nine.

    The very decisions the 10-fold accuracy counts, so a paired test on them agrees with it.
    """
    from components.report.verification import ten_fold_decisions

    return ten_fold_decisions(scores, same, folds)[0]


def evaluate_split(embeddings: np.ndarray, split: EvidenceSplit) -> dict:
    """One model's figures on all the evidence pairs and on each kind apart.

    ``_scores`` holds each pair's similarity; ``_right`` (``all`` and each kind) which pairs the
    10-fold protocol decides right, for a paired test between two models on the same pairs.
    """
    scores = score_pairs(embeddings, split.pairs)
    out = verification_figures(scores, split.same, split.folds)
    right = {"all": decided_right(scores, split.same, split.folds)}
    for name in PAIR_KINDS:
        chosen = split.kind == name
        part = verification_figures(scores[chosen], split.same[chosen], split.folds[chosen])
        out[name] = {k: part[k] for k in METRICS}
        right[name] = decided_right(scores[chosen], split.same[chosen], split.folds[chosen])
    out["_scores"], out["_right"] = scores, right
    return out


def label_noise(labels: np.ndarray, truth: np.ndarray) -> dict | None:
    """How far the self-labels are from folder names, where the photos had them.

    Args:
        labels: (N,) self-label per face.
        truth: (N,) folder name per face, None or "" where unknown.

    Returns:
        Pairwise precision and recall and BCubed precision of the self-labels over the
        faces with a folder name, or None when fewer than two such faces exist.
    """
    from components.report.metrics import bcubed_prf, pairwise_prf

    known = np.array([bool(t) for t in truth], bool)
    if known.sum() < 2:
        return None
    lab, tru = np.asarray(labels)[known], np.asarray(truth, object)[known].astype(str)
    pw, bc = pairwise_prf(tru, lab), bcubed_prf(tru, lab)
    return {"faces_with_folder_names": int(known.sum()), "pairwise_precision": round(pw[0], 4),
            "pairwise_recall": round(pw[1], 4), "bcubed_precision": round(bc[0], 4),
            "folder_names": int(len(np.unique(tru)))}
