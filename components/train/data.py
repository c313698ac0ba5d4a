"""Training data: labelled face crops in, class-balanced ``tf.data`` batches out.

Labels come from either

* an annotated folder ``<root>/<label>/*.png|jpg`` of aligned 150x150 crops
  (:func:`load_folder`), or
* the identity store's own clusters (:func:`from_store`): identities with at least
  ``min_faces`` faces whose members sit tightly around their medoid
  (:func:`select_self_labels`); two faces of one photo are different people, which
  gives cannot-link pairs, used as hard negatives by :class:`BalancedSampler`.

:class:`BalancedSampler` draws P identities x K faces per batch, the layout triplet-
style losses need (every anchor has positives and negatives in its batch), and is a
pure function of the step number, so a resumed run sees the same batches a run that
was never interrupted would have seen. :func:`make_dataset` turns it into a
``tf.data.Dataset`` with augmentation (horizontal flip, brightness, contrast,
saturation).

Nothing here imports TensorFlow until a dataset is built.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CROP_SIZE = 150
_READ_BATCH = 512  # crops read concurrently by from_store, then decoded


class TrainingDataError(ValueError):
    """The data cannot train anything (too few identities or faces, unreadable files); says which."""


@dataclass
class LabelledFaces:
    """Inputs with integer identity labels.

    Attributes:
        x: (N, ...) inputs: (N, 150, 150, 3) uint8 crops, or any array a network takes.
        labels: (N,) int identity index into ``classes``.
        classes: identity names (or store identity ids as strings).
        photo_ids: (N,) photo of each face (faces of one photo are different people), or None.
        face_ids: (N,) where each row came from (store face ids, file indices), or None.
        cannot_link: (L, 2) row pairs that are two people (two faces of one photo).
        meta: more per-row arrays (N,), carried along by :meth:`subset`: from a store,
            ``order`` (the photo's ingest order), ``truth`` (its folder name, or None),
            ``crop`` (the crop's object key) and ``sha256`` (of the crop's bytes).
    """

    x: np.ndarray
    labels: np.ndarray
    classes: list[str]
    photo_ids: np.ndarray | None = None
    face_ids: np.ndarray | None = None
    cannot_link: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    meta: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, np.int64)
        if len(self.x) != len(self.labels):
            raise TrainingDataError(f"{len(self.x)} inputs but {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise TrainingDataError("labels must index classes")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: np.ndarray) -> LabelledFaces:
        """Rows ``rows``, classes renumbered densely (classes without rows dropped)."""
        rows = np.asarray(rows, np.int64)
        kept = np.unique(self.labels[rows])
        remap = np.full(len(self.classes), -1, np.int64)
        remap[kept] = np.arange(len(kept))
        position = np.full(len(self.labels), -1, np.int64)
        position[rows] = np.arange(len(rows))
        links = self.cannot_link
        if len(links):
            links = position[links]
            links = links[(links >= 0).all(axis=1)]
        return LabelledFaces(
            self.x[rows], remap[self.labels[rows]], [self.classes[k] for k in kept],
            None if self.photo_ids is None else self.photo_ids[rows],
            None if self.face_ids is None else self.face_ids[rows], links,
            {key: np.asarray(value)[rows] for key, value in self.meta.items()},
        )

    def check_trainable(self, min_identities: int = 2, min_faces_per_identity: int = 2) -> None:
        """Refuse data that cannot train an embedder, before any model is built.

        Raises:
            TrainingDataError: fewer than ``min_identities`` identities with at least
                ``min_faces_per_identity`` faces each.
        """
        counts = np.bincount(self.labels, minlength=len(self.classes)) if len(self.labels) else np.zeros(0, int)
        usable = int((counts >= min_faces_per_identity).sum())
        if usable < min_identities:
            raise TrainingDataError(
                f"too little to train on: {usable} identities with >= {min_faces_per_identity} faces "
                f"({len(self.labels)} faces in {len(self.classes)} identities); need at least {min_identities}"
            )


def read_crop(path: Path, size: int = CROP_SIZE) -> np.ndarray:
    """One aligned crop as (size, size, 3) uint8 RGB.

    Raises:
        TrainingDataError: unreadable file or wrong size (crops must already be aligned).
    """
    return _decode_crop(path, str(path), size)


def decode_crop(data: bytes, name: str = "<bytes>", size: int = CROP_SIZE) -> np.ndarray:
    """One aligned crop from its encoded bytes (JPEG, PNG) as (size, size, 3) uint8 RGB.

    Args:
        data: the encoded image.
        name: where it came from, for error messages.
        size: the side aligned crops have.

    Raises:
        TrainingDataError: not a readable image, or wrong size.
    """
    import io

    return _decode_crop(io.BytesIO(data), name, size)


def _decode_crop(source, name: str, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as image:
            array = np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as error:
        raise TrainingDataError(f"{name}: not a readable image ({error})") from error
    if array.shape[:2] != (size, size):
        raise TrainingDataError(f"{name}: {array.shape[1]}x{array.shape[0]} pixels; aligned crops are {size}x{size} "
                                "(align photos first: `faces run` writes aligned crops)")
    return array


def load_folder(root: str | Path, min_faces: int = 1) -> LabelledFaces:
    """An annotated folder ``<root>/<label>/*.png|jpg`` of aligned crops.

    Args:
        root: the folder; each sub-folder is one identity, named by the folder.
        min_faces: identities with fewer crops are left out.

    Returns:
        :class:`LabelledFaces` with uint8 crops, classes sorted by name.

    Raises:
        TrainingDataError: no such folder, an unreadable or wrongly sized crop.
    """
    root = Path(root)
    if not root.is_dir():
        raise TrainingDataError(f"{root}: no such folder")
    crops, labels, classes, files = [], [], [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if len(images) < min_faces:
            continue
        for path in images:
            crops.append(read_crop(path))
            labels.append(len(classes))
            files.append(str(path))
        classes.append(folder.name)
    x = np.stack(crops) if crops else np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    return LabelledFaces(x, np.array(labels, np.int64), classes, face_ids=np.arange(len(files)))


@dataclass
class SelfLabels:
    """What :func:`select_self_labels` kept.

    Attributes:
        rows: (M,) rows of the input that carry a label.
        labels: (M,) dense label per kept row.
        identities: original identity id of each dense label.
        cohesion: identity id -> mean cosine similarity of its members to their medoid.
        cannot_link: (L, 2) pairs of positions into ``rows`` that share a photo.
        dropped: identity id -> why it was left out (``too_small`` / ``loose``).
    """

    rows: np.ndarray
    labels: np.ndarray
    identities: list[int]
    cohesion: dict[int, float]
    cannot_link: np.ndarray
    dropped: dict[int, str]


def select_self_labels(embeddings: np.ndarray, identity: np.ndarray, photo_ids: np.ndarray | None,
                       min_faces: int, min_cohesion: float) -> SelfLabels:
    """Pick the identities trustworthy enough to train on.

    Cohesion is the mean cosine similarity of an identity's members to its medoid (the
    member most similar to all others): a cluster that glued two people together has a
    low one. Faces in the pool (identity < 0) carry no label.

    Args:
        embeddings: (N, D) unit vectors.
        identity: (N,) identity id per face, -1 for the unknown pool.
        photo_ids: (N,) photo per face, or None (then no cannot-link pairs).
        min_faces: smallest identity kept.
        min_cohesion: smallest mean similarity to the medoid kept.

    Returns:
        :class:`SelfLabels`.
    """
    x = np.asarray(embeddings, np.float32)
    identity = np.asarray(identity, np.int64)
    rows_of: dict[int, np.ndarray] = {}
    for key in np.unique(identity[identity >= 0]):
        rows_of[int(key)] = np.flatnonzero(identity == key)
    kept_rows, kept_labels, identities, cohesion, dropped = [], [], [], {}, {}
    for key, rows in rows_of.items():
        if len(rows) < min_faces:
            dropped[key] = "too_small"
            continue
        sims = x[rows] @ x[rows].T
        medoid = int(np.argmax(sims.sum(axis=1)))
        value = float(np.delete(sims[medoid], medoid).mean()) if len(rows) > 1 else 1.0
        cohesion[key] = round(value, 5)
        if value < min_cohesion:
            dropped[key] = "loose"
            continue
        kept_rows.append(rows)
        kept_labels.append(np.full(len(rows), len(identities)))
        identities.append(key)
    rows = np.concatenate(kept_rows) if kept_rows else np.zeros(0, np.int64)
    labels = np.concatenate(kept_labels) if kept_labels else np.zeros(0, np.int64)
    links = np.zeros((0, 2), np.int64)
    if photo_ids is not None and len(rows):
        photos = np.asarray(photo_ids)[rows]
        order = np.argsort(photos, kind="stable")
        pairs = []
        start = 0
        while start < len(order):
            end = start
            while end + 1 < len(order) and photos[order[end + 1]] == photos[order[start]]:
                end += 1
            group = order[start : end + 1]
            pairs += [(int(a), int(b)) for i, a in enumerate(group) for b in group[i + 1 :] if labels[a] != labels[b]]
            start = end + 1
        if pairs:
            links = np.array(pairs, np.int64)
    return SelfLabels(rows.astype(np.int64), labels.astype(np.int64), identities, cohesion, links, dropped)


def from_store(store, min_faces: int, min_cohesion: float, crops_root: str | Path | None = None
               ) -> tuple[LabelledFaces, SelfLabels]:
    """Self-labelled training data from an identity store: its identities' crops.

    The user's cannot-link corrections between two kept faces of different identities join
    the cannot-link pairs (hard negatives); must-links already shaped the identities.

    Crops are read wherever the store says they are (relative paths, local files,
    ``s3://`` objects) through :mod:`components.identities.crops`, many at a time.

    Args:
        store: :class:`components.identities.IdentityStore`.
        min_faces, min_cohesion: see :func:`select_self_labels`.
        crops_root: where relative crop paths start, a folder or ``s3://bucket/prefix``
            (default :func:`components.identities.crops.crops_root_for`: ``$FACES_CROPS_ROOT``,
            else the SQLite file's folder).

    Returns:
        The crops with dense labels (classes are identity ids), and the selection report.

    Raises:
        TrainingDataError: a crop is missing or unreadable.
    """
    from sqlalchemy import select

    from components.identities import store as db
    from components.identities.crops import CropLocationError, CropReader, crops_root_for

    with store.session() as session:
        rows = session.execute(
            select(db.FaceRow.id, db.FaceRow.embedding, db.FaceRow.image_id, db.FaceRow.crop_path,
                   db.FaceRow.label, db.AssignmentRow.identity_id)
            .join(db.AssignmentRow, db.AssignmentRow.face_id == db.FaceRow.id)
            .where(db.FaceRow.embedding.is_not(None))
            .order_by(db.FaceRow.id)
        ).all()
    if not rows:
        raise TrainingDataError(f"the identity store {store.url} holds no identities yet: run `faces run` first")
    embeddings = np.stack([np.frombuffer(row.embedding, np.float32) for row in rows])
    identity = np.array([row.identity_id for row in rows], np.int64)
    photos = np.array([row.image_id for row in rows], np.int64)
    chosen = select_self_labels(embeddings, identity, photos, min_faces, min_cohesion)
    for row in chosen.rows:
        if not rows[row].crop_path:
            raise TrainingDataError(f"face {rows[row].id} has no crop file; re-run `faces run` to write crops")
    reader = CropReader(crops_root if crops_root else crops_root_for(store.url))
    x = np.zeros((len(chosen.rows), CROP_SIZE, CROP_SIZE, 3), np.uint8)
    digests = np.empty(len(chosen.rows), object)
    for start in range(0, len(chosen.rows), _READ_BATCH):  # bounded memory: a batch of encoded crops at a time
        batch = chosen.rows[start : start + _READ_BATCH]
        blobs = reader.read_many([rows[row].crop_path for row in batch], errors="return")
        for offset, (row, blob) in enumerate(zip(batch, blobs)):
            face, stored = rows[row].id, rows[row].crop_path
            if isinstance(blob, CropLocationError) and blob.code == "config":
                raise TrainingDataError(f"face {face}: crop path {stored} is relative and no crops root is known; "
                                        "set FACES_CROPS_ROOT to the folder (or s3://bucket/prefix) the crops were "
                                        "written under") from blob
            if isinstance(blob, Exception):
                raise TrainingDataError(f"face {face}: cannot read its crop {stored}: {blob.reason} [{blob.code}]"
                                        ) from blob
            x[start + offset] = decode_crop(blob, f"face {face}: {stored}")
            digests[start + offset] = hashlib.sha256(blob).hexdigest()
    # The user's corrections (the people page, `faces identities split`): a "not this person" between
    # two labelled faces of different identities is a cannot-link pair like two faces of one photo.
    face_ids = np.array([rows[r].id for r in chosen.rows], np.int64)
    position = {int(face): i for i, face in enumerate(face_ids)}
    corrected = [(position[a], position[b]) for a, b in store.links().cannot
                 if a in position and b in position and chosen.labels[position[a]] != chosen.labels[position[b]]]
    if corrected:
        chosen.cannot_link = np.unique(np.sort(np.concatenate(
            [chosen.cannot_link.reshape(-1, 2), np.array(corrected, np.int64)]), axis=1), axis=0)
    meta = {"order": photos[chosen.rows], "truth": np.array([rows[r].label for r in chosen.rows], object),
            "crop": np.array([rows[r].crop_path for r in chosen.rows], object), "sha256": digests}
    data = LabelledFaces(x, chosen.labels, [str(k) for k in chosen.identities], photos[chosen.rows],
                         face_ids, chosen.cannot_link, meta)
    return data, chosen


class BalancedSampler:
    """P identities x K faces per batch, deterministic in (seed, step).

    Identities with fewer than K faces are sampled with replacement. When cannot-link
    pairs exist, a share of the batch's identities come in such pairs (two people seen
    in one photo, the hardest negatives the data offers).

    Args:
        labels: (N,) dense identity labels.
        identities_per_batch: P.
        faces_per_identity: K (2 or more, so every face has a positive).
        seed: base seed; batch ``step`` uses ``(seed, step)``.
        cannot_link: (L, 2) row pairs.
        cannot_link_share: share of the P identities drawn from cannot-link pairs.
    """

    def __init__(self, labels: np.ndarray, identities_per_batch: int, faces_per_identity: int = 2, seed: int = 0,
                 cannot_link: np.ndarray | None = None, cannot_link_share: float = 0.25):
        self.labels = np.asarray(labels, np.int64)
        if faces_per_identity < 1 or identities_per_batch < 1:
            raise ValueError("identities_per_batch and faces_per_identity must be at least 1")
        self.rows_of = [np.flatnonzero(self.labels == k) for k in range(int(self.labels.max()) + 1)] if len(self.labels) else []
        self.eligible = np.array([k for k, rows in enumerate(self.rows_of) if len(rows)], np.int64)
        if len(self.eligible) == 0:
            raise TrainingDataError("no labelled faces to sample from")
        self.p = min(int(identities_per_batch), len(self.eligible))
        self.k = int(faces_per_identity)
        self.seed = int(seed)
        links = np.zeros((0, 2), np.int64) if cannot_link is None else np.asarray(cannot_link, np.int64).reshape(-1, 2)
        self.link_pairs = np.unique(np.sort(self.labels[links], axis=1), axis=0) if len(links) else np.zeros((0, 2), np.int64)
        self.cannot_link_share = float(cannot_link_share)

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def batch(self, step: int) -> np.ndarray:
        """Row indices of batch ``step`` (P*K of them)."""
        rng = np.random.default_rng([self.seed, int(step)])
        chosen: list[int] = []
        if len(self.link_pairs) and self.cannot_link_share > 0:
            wanted = int(self.p * self.cannot_link_share) // 2
            for pair in self.link_pairs[rng.permutation(len(self.link_pairs))[:wanted]]:
                chosen += [int(k) for k in pair if int(k) not in chosen]
        rest = np.setdiff1d(self.eligible, chosen)
        chosen += rng.choice(rest, size=max(0, min(self.p - len(chosen), len(rest))), replace=False).tolist()
        rows = []
        for k in chosen[: self.p]:
            pool = self.rows_of[k]
            rows.append(rng.choice(pool, size=self.k, replace=len(pool) < self.k))
        return np.concatenate(rows)


def augment_images(images, seed):
    """Random horizontal flip, brightness, contrast and saturation on a batch of [0, 255] RGB crops.

    Args:
        images: (B, H, W, 3) float32 in [0, 255].
        seed: (2,) int32 tensor for the stateless random ops (reproducible per step).

    Returns:
        The augmented batch, float32 in [0, 255].
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)
    x = images / 255.0
    flip = tf.random.stateless_uniform([tf.shape(x)[0], 1, 1, 1], seeds[0]) < 0.5
    x = tf.where(flip, tf.reverse(x, axis=[2]), x)
    x = tf.image.stateless_random_brightness(x, 0.1, seeds[1])
    x = tf.image.stateless_random_contrast(x, 0.8, 1.2, seeds[2])
    x = tf.image.stateless_random_saturation(x, 0.8, 1.2, seeds[3])
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def make_dataset(x: np.ndarray, labels: np.ndarray, sampler: BalancedSampler, start_step: int = 0,
                 steps: int | None = None, augment: bool | Callable = True, seed: int = 0):
    """Class-balanced batches as a ``tf.data.Dataset`` of (inputs float32, labels int32).

    Args:
        x: (N, ...) inputs (crops or precomputed features; memory-mapped arrays work).
        labels: (N,) dense labels.
        sampler: which rows make each batch.
        start_step: first batch (a resumed run starts where it stopped).
        steps: how many batches (None: endless).
        augment: True for :func:`augment_images` (crops only), a callable
            ``f(batch, seed) -> batch`` for other inputs, or False.
        seed: augmentation seed (combined with the step).
    """
    import tensorflow as tf

    stop = None if steps is None else start_step + steps

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        step = start_step
        while stop is None or step < stop:
            rows = np.sort(sampler.batch(step))
            yield np.asarray(x[rows], np.float32), labels[rows].astype(np.int32), np.array([seed, step], np.int64)
            step += 1

    signature = (
        tf.TensorSpec((None, *x.shape[1:]), tf.float32),
        tf.TensorSpec((None,), tf.int32),
        tf.TensorSpec((2,), tf.int64),
    )
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    function = augment_images if augment is True else augment
    if function:
        dataset = dataset.map(lambda xb, yb, s: (function(xb, s), yb), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        dataset = dataset.map(lambda xb, yb, s: (xb, yb))
    return dataset.prefetch(2)


def split_identities(labels: np.ndarray, held_out_share: float, seed: int = 0,
                     min_held_out: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Rows for training and for validation, split by identity (no person in both).

    Returns:
        (train rows, validation rows).
    """
    labels = np.asarray(labels)
    identities = np.unique(labels)
    n_held = max(min_held_out, int(round(len(identities) * held_out_share)))
    if n_held >= len(identities):
        raise TrainingDataError(f"{len(identities)} identities cannot be split into training and "
                                f"{n_held} held-out identities")
    held = np.random.default_rng(seed).permutation(identities)[:n_held]
    mask = np.isin(labels, held)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def verification_pairs(labels: Sequence[int], max_positive: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Balanced same / different pairs of rows (for held-out verification accuracy).

    Returns:
        (pairs (M, 2) row indices, same (M,) bool); as many different pairs as same ones.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    positives = []
    for k in np.unique(labels):
        rows = np.flatnonzero(labels == k)
        positives += [(a, b) for i, a in enumerate(rows) for b in rows[i + 1 :]]
    if not positives:
        raise TrainingDataError("held-out data has no identity with two faces: no same-person pairs")
    positives = np.array(positives, np.int64)
    if len(positives) > max_positive:
        positives = positives[rng.choice(len(positives), max_positive, replace=False)]
    negatives = []
    while len(negatives) < len(positives):
        a, b = rng.integers(0, len(labels), size=2)
        if labels[a] != labels[b]:
            negatives.append((a, b))
    pairs = np.concatenate([positives, np.array(negatives, np.int64)])
    same = np.concatenate([np.ones(len(positives), bool), np.zeros(len(negatives), bool)])
    return pairs, same
