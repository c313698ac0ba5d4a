"""Loss heads for training face embedders: softmax, center, triplet, CosFace, ArcFace, quadruplet.

``make_loss(name, num_classes, embedding_dim, **params)`` returns a ``LossHead``: a Keras
layer holding the loss's own weights (class matrix, centres) with

- ``call(embeddings, labels) -> scalar`` (mean over the mini-batch, float32), and
- ``post_step(embeddings, labels)``: what must happen after the optimiser step (the
  center loss's centre update; a no-op for the others).

The training loop differentiates ``head(embeddings, labels)`` with respect to the
network's and the head's ``trainable_weights``. Distances between embeddings are
squared Euclidean, as in FaceNet (on unit vectors, ``2 - 2 cos``).

The offline triplet miner of the thesis's Algorithm 1 is ``OfflineTripletMiner``: every
``every_n_steps`` steps the loop embeds a larger sample, the miner picks triplets from it,
and the loop feeds them as ``[a0, p0, n0, a1, p1, n1, ...]`` batches to a
``make_loss("triplet", ..., mining="offline")`` head.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

__all__ = [
    "LOSSES",
    "LossHead",
    "SoftmaxLoss",
    "CenterLoss",
    "TripletLoss",
    "CosFaceLoss",
    "ArcFaceLoss",
    "QuadrupletLoss",
    "OfflineTripletMiner",
    "make_loss",
    "pairwise_squared_distances",
    "online_triplet_indices",
]

LOSSES = ("softmax", "center", "triplet", "cosface", "arcface", "quadruplet")


def make_loss(name: str, num_classes: int, embedding_dim: int, **params) -> "LossHead":
    """Builds a loss head.

    Args:
        name: One of ``LOSSES``.
        num_classes: Identities in the training set (classification heads need it;
            metric losses ignore it but it must still be >= 2).
        embedding_dim: Width of the embeddings the head receives.
        **params: The head's hyper-parameters (see each class): ``center``:
            ``alpha`` (0.5), ``lambda_`` (0.003, also accepted as ``lambda``);
            ``triplet``: ``margin`` (0.2), ``mining`` ("semi-hard" | "hard" |
            "offline"); ``cosface``: ``s`` (30), ``m`` (0.35); ``arcface``: ``s``
            (30), ``m`` (0.5); ``quadruplet``: ``margin`` (0.2), ``margin2`` (0.1).

    Returns:
        The head (a ``keras.layers.Layer``), weights created.

    Raises:
        ValueError: On an unknown name or parameter, or an invalid value.
    """
    classes = {"softmax": SoftmaxLoss, "center": CenterLoss, "triplet": TripletLoss, "cosface": CosFaceLoss,
               "arcface": ArcFaceLoss, "quadruplet": QuadrupletLoss}
    if name not in classes:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    if int(num_classes) < 2:
        raise ValueError(f"{name}: need at least 2 identities to train, got num_classes={num_classes}")
    if int(embedding_dim) < 1:
        raise ValueError(f"{name}: embedding_dim must be >= 1, got {embedding_dim}")
    if "lambda" in params:
        params["lambda_"] = params.pop("lambda")
    cls = classes[name]
    unknown = set(params) - set(cls.PARAMS)
    if unknown:
        raise ValueError(f"{name}: unknown parameter(s) {sorted(unknown)}; allowed: {sorted(cls.PARAMS)}")
    return cls(num_classes=int(num_classes), embedding_dim=int(embedding_dim), **params)


class LossHead(keras.layers.Layer):
    """Base class: a loss with its own weights, called as ``head(embeddings, labels)``.

    Args:
        num_classes: Training identities.
        embedding_dim: Embedding width.
    """

    PARAMS: tuple[str, ...] = ()

    def __init__(self, num_classes: int, embedding_dim: int, **kwargs):
        # float32 whatever the global policy: under mixed precision the loss, the class
        # matrix and the centres stay full precision (no autocast of inputs or weights).
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.embedding_dim = int(embedding_dim)

    def call(self, embeddings, labels):  # pragma: no cover - abstract
        raise NotImplementedError

    def post_step(self, embeddings, labels) -> None:
        """Runs after the optimiser step with the step's embeddings and labels (default: nothing)."""
        return None

    def compute_output_shape(self, *args, **kwargs):
        return ()

    def get_config(self):
        config = {**super().get_config(), "num_classes": self.num_classes, "embedding_dim": self.embedding_dim}
        return config | {key: getattr(self, key) for key in self.PARAMS}

    @staticmethod
    def _inputs(embeddings, labels):
        return ops.cast(embeddings, "float32"), ops.cast(ops.reshape(labels, (-1,)), "int32")


# --------------------------------------------------------------------------- classification heads


def _cross_entropy(logits, labels):
    return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))


@keras.saving.register_keras_serializable(package="faces")
class SoftmaxLoss(LossHead):
    """Softmax cross-entropy over a fully connected class layer ``logits = x W + b``."""

    def __init__(self, num_classes: int, embedding_dim: int, **kwargs):
        super().__init__(num_classes, embedding_dim, **kwargs)
        self.kernel = self.add_weight(name="kernel", shape=(self.embedding_dim, self.num_classes),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.num_classes,), initializer="zeros")

    def logits(self, embeddings):
        """Class scores ``x W + b`` (N, num_classes)."""
        return ops.matmul(ops.cast(embeddings, "float32"), self.kernel) + self.bias

    def call(self, embeddings, labels):
        embeddings, labels = self._inputs(embeddings, labels)
        return _cross_entropy(self.logits(embeddings), labels)


@keras.saving.register_keras_serializable(package="faces")
class CenterLoss(SoftmaxLoss):
    """Joint softmax + center loss (Wen et al. 2016; thesis eqs. 3.6-3.9).

    ``L = L_softmax + lambda_ * (1 / 2m) * sum_i ||x_i - c_{y_i}||^2`` over a mini-batch of
    m faces (the mean, so lambda_ does not depend on the batch size). The centres
    are not trained by the gradient; ``post_step`` moves them with the mini-batch rule

        delta_c_j = sum_i [y_i = j] (c_j - x_i) / (1 + sum_i [y_i = j]),
        c_j <- c_j - alpha * delta_c_j.

    Args:
        alpha: Centre learning rate, in [0, 1].
        lambda_: Weight of the center term.
    """

    PARAMS = ("alpha", "lambda_")

    def __init__(self, num_classes: int, embedding_dim: int, alpha: float = 0.5, lambda_: float = 0.003, **kwargs):
        super().__init__(num_classes, embedding_dim, **kwargs)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"center: alpha must be in [0, 1], got {alpha}")
        if lambda_ < 0:
            raise ValueError(f"center: lambda_ must be >= 0, got {lambda_}")
        self.alpha, self.lambda_ = float(alpha), float(lambda_)
        # aggregation="mean": under MirroredStrategy each replica updates the centres from
        # its own slice of the batch in post_step, and the replicas' results are averaged.
        self.centers = self.add_weight(name="centers", shape=(self.num_classes, self.embedding_dim),
                                       initializer="zeros", trainable=False, aggregation="mean")

    def center_term(self, embeddings, labels):
        """``(1 / 2m) sum_i ||x_i - c_{y_i}||^2`` (no gradient to the centres)."""
        centers = ops.stop_gradient(ops.take(self.centers, labels, axis=0))
        return 0.5 * ops.mean(ops.sum(ops.square(embeddings - centers), axis=1))

    def call(self, embeddings, labels):
        embeddings, labels = self._inputs(embeddings, labels)
        return _cross_entropy(self.logits(embeddings), labels) + self.lambda_ * self.center_term(embeddings, labels)

    def post_step(self, embeddings, labels) -> None:
        """Moves each class centre seen in the batch towards its faces (Wen et al. eq. 4)."""
        embeddings, labels = self._inputs(embeddings, labels)
        embeddings = ops.stop_gradient(embeddings)
        one_hot = ops.one_hot(labels, self.num_classes, dtype="float32")  # (m, C)
        counts = ops.sum(one_hot, axis=0)[:, None]  # (C, 1)
        sums = ops.matmul(ops.transpose(one_hot), embeddings)  # (C, D)
        delta = (counts * self.centers - sums) / (1.0 + counts)
        self.centers.assign(self.centers - self.alpha * delta)


def _normalize(x, axis):
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), 1e-12))


class _CosineHead(LossHead):
    """Shared part of CosFace / ArcFace: cosines between unit embeddings and unit class vectors."""

    PARAMS = ("s", "m")

    def __init__(self, num_classes: int, embedding_dim: int, s: float, m: float, **kwargs):
        super().__init__(num_classes, embedding_dim, **kwargs)
        if s <= 0:
            raise ValueError(f"{type(self).__name__}: scale s must be > 0, got {s}")
        if m < 0:
            raise ValueError(f"{type(self).__name__}: margin m must be >= 0, got {m}")
        self.s, self.m = float(s), float(m)
        self.kernel = self.add_weight(name="kernel", shape=(self.embedding_dim, self.num_classes),
                                      initializer="glorot_uniform")

    def cosines(self, embeddings):
        """``cos(theta)`` between each embedding and each class vector (N, num_classes)."""
        return ops.matmul(_normalize(ops.cast(embeddings, "float32"), 1), _normalize(self.kernel, 0))

    def margin_cosines(self, cosines, one_hot):  # pragma: no cover - abstract
        raise NotImplementedError

    def call(self, embeddings, labels):
        embeddings, labels = self._inputs(embeddings, labels)
        cosines = self.cosines(embeddings)
        one_hot = ops.one_hot(labels, self.num_classes, dtype="float32")
        return _cross_entropy(self.s * self.margin_cosines(cosines, one_hot), labels)


@keras.saving.register_keras_serializable(package="faces")
class CosFaceLoss(_CosineHead):
    """Large-margin cosine loss (CosFace, Wang et al. 2018): logits ``s (cos theta_j - m [j = y])``.

    Args:
        s: Scale of the normalised logits.
        m: Additive cosine margin on the true class.
    """

    def __init__(self, num_classes: int, embedding_dim: int, s: float = 30.0, m: float = 0.35, **kwargs):
        super().__init__(num_classes, embedding_dim, s, m, **kwargs)

    def margin_cosines(self, cosines, one_hot):
        return cosines - self.m * one_hot


@keras.saving.register_keras_serializable(package="faces")
class ArcFaceLoss(_CosineHead):
    """Additive angular margin (ArcFace, Deng et al. 2019): true-class logit ``s cos(theta_y + m)``.

    Where ``theta_y + m`` would pass pi (``cos theta_y < cos(pi - m)``) the target logit
    is ``s (cos theta_y - m sin m)`` instead, as in the reference implementation,
    so the logit stays monotonic in theta.

    Args:
        s: Scale of the normalised logits.
        m: Additive angular margin in radians.
    """

    def __init__(self, num_classes: int, embedding_dim: int, s: float = 30.0, m: float = 0.5, **kwargs):
        super().__init__(num_classes, embedding_dim, s, m, **kwargs)

    def margin_cosines(self, cosines, one_hot):
        cos_m, sin_m = math.cos(self.m), math.sin(self.m)
        # Clipping keeps the sqrt's gradient finite at cos = +-1.
        sines = ops.sqrt(ops.clip(1.0 - ops.square(cosines), 1e-7, 1.0))
        shifted = cosines * cos_m - sines * sin_m
        shifted = ops.where(cosines > math.cos(math.pi - self.m), shifted, cosines - self.m * sin_m)
        return cosines + one_hot * (shifted - cosines)


# --------------------------------------------------------------------------- metric losses


def pairwise_squared_distances(embeddings):
    """Squared Euclidean distances between every pair of rows (N, N), >= 0, exact 0 on the diagonal.

    Computed from differences, not ``|a|^2 + |b|^2 - 2ab``: exact for the small
    mini-batches used here and with a well-defined gradient everywhere.
    """
    diff = embeddings[:, None, :] - embeddings[None, :, :]
    return ops.sum(ops.square(diff), axis=-1)


def _masks(labels):
    same = ops.equal(labels[:, None], labels[None, :])
    eye = ops.eye(ops.shape(labels)[0], dtype="bool")
    return ops.logical_and(same, ops.logical_not(eye)), ops.logical_not(same)


def online_triplet_indices(distances, labels, mining: str, margin: float):
    """Picks triplets inside a mini-batch from its distance matrix.

    ``"hard"`` (batch-hard, Hermans et al. 2017): one triplet per anchor, its
    farthest positive and nearest negative. ``"semi-hard"`` (FaceNet): one triplet
    per anchor-positive pair (a, p), with the nearest negative farther than p,
    ``argmin {d(a, n) : d(a, n) > d(a, p)}``; when no negative is farther, the
    farthest negative (the least violating one, as TensorFlow Addons does).
    ``margin`` is not used to choose (the semi-hard band's upper edge only matters
    for the loss, which is zero there).

    Args:
        distances: (N, N) squared distances (gradients are not needed here).
        labels: (N,) int identities.
        mining: "hard" or "semi-hard".
        margin: The triplet margin (kept for the signature's symmetry with the loss).

    Returns:
        ``(anchor, positive, negative, valid)``: int32 index tensors and a bool
        mask of the triplets that exist (anchors with a positive and a negative).
        Shapes are (N,) for "hard" and (N * N,) for "semi-hard" (row-major a, p).
    """
    del margin
    distances = ops.stop_gradient(distances)
    n = ops.shape(labels)[0]
    positive, negative = _masks(labels)
    big = ops.max(distances) + 1.0
    has_negative = ops.any(negative, axis=1)
    if mining == "hard":
        hardest_positive = ops.argmax(ops.where(positive, distances, -1.0), axis=1)
        hardest_negative = ops.argmin(ops.where(negative, distances, big), axis=1)
        valid = ops.logical_and(ops.any(positive, axis=1), has_negative)
        anchors = ops.arange(n, dtype="int32")
        return anchors, ops.cast(hardest_positive, "int32"), ops.cast(hardest_negative, "int32"), valid
    if mining != "semi-hard":
        raise ValueError(f"mining must be 'hard' or 'semi-hard' in a mini-batch, got {mining!r}")
    d_ap = distances[:, :, None]  # (a, p, 1)
    d_an = distances[:, None, :]  # (a, 1, n)
    neg = negative[:, None, :]
    farther = ops.logical_and(neg, d_an > d_ap)  # (a, p, n)
    nearest_farther = ops.argmin(ops.where(farther, d_an, big), axis=2)
    farthest = ops.broadcast_to(ops.argmax(ops.where(negative, distances, -1.0), axis=1)[:, None], (n, n))
    chosen = ops.where(ops.any(farther, axis=2), nearest_farther, farthest)
    valid = ops.logical_and(positive, has_negative[:, None])
    anchors = ops.broadcast_to(ops.arange(n, dtype="int32")[:, None], (n, n))
    positives = ops.broadcast_to(ops.arange(n, dtype="int32")[None, :], (n, n))
    return (ops.reshape(anchors, (-1,)), ops.reshape(positives, (-1,)),
            ops.reshape(ops.cast(chosen, "int32"), (-1,)), ops.reshape(valid, (-1,)))


def _masked_mean(values, valid):
    weights = ops.cast(valid, "float32")
    return ops.sum(values * weights) / ops.maximum(ops.sum(weights), 1.0)


def _squared_distance(a, b):
    return ops.sum(ops.square(a - b), axis=-1)


@keras.saving.register_keras_serializable(package="faces")
class TripletLoss(LossHead):
    """Triplet loss ``mean [d(a, p) - d(a, n) + margin]_+`` (Schroff et al. 2015).

    With ``mining`` "semi-hard" or "hard" the triplets are mined online in the
    mini-batch (``online_triplet_indices``); the mean runs over the mined triplets
    that exist. With "offline" the batch must already be triplets laid out
    ``[a0, p0, n0, a1, p1, n1, ...]`` (from ``OfflineTripletMiner``) and labels are
    not used.

    Args:
        margin: alpha, in squared-distance units (unit vectors: 0 to 4).
        mining: "semi-hard", "hard" or "offline".
    """

    PARAMS = ("margin", "mining")

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 0.2, mining: str = "semi-hard",
                 **kwargs):
        super().__init__(num_classes, embedding_dim, **kwargs)
        if mining not in ("semi-hard", "hard", "offline"):
            raise ValueError(f"triplet: mining must be 'semi-hard', 'hard' or 'offline', got {mining!r}")
        if margin < 0:
            raise ValueError(f"triplet: margin must be >= 0, got {margin}")
        self.margin, self.mining = float(margin), mining

    def call(self, embeddings, labels):
        embeddings, labels = self._inputs(embeddings, labels)
        if self.mining == "offline":
            triplets = ops.reshape(embeddings, (-1, 3, ops.shape(embeddings)[-1]))
            a, p, n = triplets[:, 0], triplets[:, 1], triplets[:, 2]
            return ops.mean(ops.relu(_squared_distance(a, p) - _squared_distance(a, n) + self.margin))
        distances = pairwise_squared_distances(embeddings)
        anchors, positives, negatives, valid = online_triplet_indices(distances, labels, self.mining, self.margin)
        # Distances recomputed from the gathered rows: the gradient reaches a, p and n.
        a = ops.take(embeddings, anchors, axis=0)
        losses = ops.relu(_squared_distance(a, ops.take(embeddings, positives, axis=0))
                          - _squared_distance(a, ops.take(embeddings, negatives, axis=0)) + self.margin)
        return _masked_mean(losses, valid)


@keras.saving.register_keras_serializable(package="faces")
class QuadrupletLoss(LossHead):
    """Quadruplet loss (Chen et al. 2017, "Beyond triplet loss"), mined batch-hard.

    Per anchor a with hardest positive p and hardest negative n1 (as in
    ``online_triplet_indices(..., "hard")``):

        [d(a, p) - d(a, n1) + margin]_+  +  [d(a, p) - d(n2, n3) + margin2]_+,

    where (n2, n3) is the closest pair of faces of two different identities, both
    different from a's. The second term pushes apart pairs that do not share the
    anchor, which is what lowers the intra/inter-class variance ratio beyond the
    triplet loss. The mean runs over anchors with a positive, a negative and such a
    pair.

    Args:
        margin: alpha1 of the triplet term.
        margin2: alpha2 of the pair term (Chen et al. keep it below alpha1).
    """

    PARAMS = ("margin", "margin2")

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 0.2, margin2: float = 0.1, **kwargs):
        super().__init__(num_classes, embedding_dim, **kwargs)
        if margin < 0 or margin2 < 0:
            raise ValueError(f"quadruplet: margins must be >= 0, got {margin}, {margin2}")
        self.margin, self.margin2 = float(margin), float(margin2)

    def call(self, embeddings, labels):
        embeddings, labels = self._inputs(embeddings, labels)
        distances = pairwise_squared_distances(embeddings)
        anchors, positives, negatives, valid = online_triplet_indices(distances, labels, "hard", self.margin)
        n = ops.shape(labels)[0]
        _, different = _masks(labels)
        # pair_ok[a, k, l]: k and l are of two identities, both different from a's.
        pair_ok = ops.logical_and(different[None, :, :],
                                  ops.logical_and(different[:, :, None], different[:, None, :]))
        flat = ops.reshape(pair_ok, (n, n * n))
        big = ops.max(ops.stop_gradient(distances)) + 1.0
        pair = ops.argmin(ops.where(flat, ops.reshape(ops.stop_gradient(distances), (1, n * n)), big), axis=1)
        n2, n3 = ops.cast(pair // n, "int32"), ops.cast(pair % n, "int32")
        valid = ops.logical_and(valid, ops.any(flat, axis=1))
        a = ops.take(embeddings, anchors, axis=0)
        d_ap = _squared_distance(a, ops.take(embeddings, positives, axis=0))
        d_an = _squared_distance(a, ops.take(embeddings, negatives, axis=0))
        d_nn = _squared_distance(ops.take(embeddings, n2, axis=0), ops.take(embeddings, n3, axis=0))
        losses = ops.relu(d_ap - d_an + self.margin) + ops.relu(d_ap - d_nn + self.margin2)
        return _masked_mean(losses, valid)


# --------------------------------------------------------------------------- offline mining


class OfflineTripletMiner:
    """Offline triplet selection every n steps (thesis Algorithm 1; FaceNet section 3.2).

    The loop calls ``due(step)``; when it is, it embeds a larger sample (e.g. P people
    x K faces) with the current network and calls ``mine(embeddings, labels)``, which
    returns index triplets into that sample. For every anchor-positive pair the
    negative is drawn at random among the semi-hard ones,
    ``d(a, p) < d(a, n) < d(a, p) + margin``. A pair with no semi-hard negative is
    skipped, or with ``fallback_hardest`` takes the nearest negative farther than p
    (the nearest negative overall when none is farther). The loop
    then trains on ``batches(triplets, triplets_per_batch)`` until the next ``due``.

    Args:
        margin: The triplet margin alpha (squared-distance units).
        every_n_steps: Re-mine every n training steps.
        fallback_hardest: Keep pairs that have no semi-hard negative (see above).
        max_triplets: Cap on the number of triplets returned (random subset).
        seed: Seed of the random choices.
    """

    def __init__(self, margin: float = 0.2, every_n_steps: int = 100, fallback_hardest: bool = False,
                 max_triplets: int | None = None, seed: int = 0):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.margin = float(margin)
        self.every_n_steps = int(every_n_steps)
        self.fallback_hardest = bool(fallback_hardest)
        self.max_triplets = max_triplets
        self.rng = np.random.default_rng(seed)

    def due(self, step: int) -> bool:
        """True at step 0 and every ``every_n_steps`` steps after."""
        return step % self.every_n_steps == 0

    def mine(self, embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Triplets ``(anchor, positive, negative)`` of row indices into the sample.

        Args:
            embeddings: (N, D) embeddings of the sample.
            labels: (N,) identities.

        Returns:
            (T, 3) int array; T may be 0 (nothing violates the margin).
        """
        x = np.asarray(embeddings, dtype=np.float64)
        labels = np.asarray(labels).reshape(-1)
        if len(x) != len(labels):
            raise ValueError(f"{len(x)} embeddings but {len(labels)} labels")
        d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        triplets = []
        for a in range(len(x)):
            negatives = np.flatnonzero(labels != labels[a])
            if negatives.size == 0:
                continue
            for p in np.flatnonzero(labels == labels[a]):
                if p == a:
                    continue
                d_ap, d_an = d[a, p], d[a, negatives]
                band = negatives[(d_an > d_ap) & (d_an < d_ap + self.margin)]
                if band.size:
                    triplets.append((a, p, int(self.rng.choice(band))))
                elif self.fallback_hardest:
                    farther = negatives[d_an > d_ap]
                    pool = farther if farther.size else negatives
                    triplets.append((a, p, int(pool[np.argmin(d[a, pool])])))
        out = np.asarray(triplets, dtype=np.int64).reshape(-1, 3)
        if self.max_triplets is not None and len(out) > self.max_triplets:
            out = out[np.sort(self.rng.choice(len(out), self.max_triplets, replace=False))]
        return out

    def batches(self, triplets: np.ndarray, triplets_per_batch: int):
        """Yields flat index arrays ``[a0, p0, n0, a1, ...]`` for an "offline" triplet head, shuffled."""
        if triplets_per_batch < 1:
            raise ValueError(f"triplets_per_batch must be >= 1, got {triplets_per_batch}")
        order = self.rng.permutation(len(triplets))
        for start in range(0, len(order), triplets_per_batch):
            yield np.asarray(triplets)[order[start:start + triplets_per_batch]].reshape(-1)
