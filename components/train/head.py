"""Re-fitting the embedder's projection head on self-labels: a retraining method that runs in seconds on 2 cores.

The embedder ends ``... -> avgpool (256) -> fc (256x128, no bias) -> l2norm``. A cycle
keeps every convolution frozen and trains a 128x128 adapter ``A`` after ``fc`` on the
pooled features of the self-labelled faces (and of their mirror images, as
augmentation):

* the features are computed once per face (one forward pass, as an embedding costs);
  training is then a 128x128 matrix on a few thousand vectors: seconds on a CPU;
* loss: CosFace (or ArcFace) over the self-labelled identities, their class centres
  starting at the identities' mean directions; two faces of one photo (cannot-link)
  are pushed apart by a hinge on their cosine;
* ``A`` starts at the identity; the learning rate warms up, then follows a cosine decay
  to zero, and an L2 pull of ``A`` towards the identity keeps the head near what it
  knew (the held-out people measure whether it forgot). Training ``A`` rather than
  ``fc`` itself keeps one learning rate right for any head: ``fc``'s weights are ~0.01;
* the adapter folds into ``fc`` exactly (``normalize(normalize(hF) A) = normalize(h F A)``),
  so the challenger is the same network with ``fc = F A``: every path that loads the
  champion (the engine, the DAGs, serving) loads it unchanged, with no second file format.

Nothing here reads files or talks to MLflow: arrays in, arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HEAD_LAYER = "fc"
FEATURE_LAYER = "avgpool"
HEAD_LOSSES = ("cosface", "arcface")


class HeadError(ValueError):
    """The model has no projection head to re-fit, or the data cannot train one."""


@dataclass(frozen=True)
class HeadConfig:
    """How the head is re-fitted.

    Attributes:
        loss: ``cosface`` or ``arcface``.
        scale, margin: the cosine loss's s and m.
        steps: optimiser steps.
        batch_size: faces per step (drawn uniformly from the training faces).
        learning_rate: peak Adam learning rate (after ``warmup`` steps; cosine decay to 0).
        warmup: steps of linear warm-up.
        anchor: weight of the L2 pull of the adapter towards the identity (divided by its side).
        cannot_link_margin: two faces of one photo are pushed below this cosine.
        seed: the batches and mirror choices are a function of it.
    """

    loss: str = "cosface"
    scale: float = 16.0
    margin: float = 0.2
    steps: int = 300
    batch_size: int = 512
    learning_rate: float = 1e-3
    warmup: int = 30
    anchor: float = 3.0
    cannot_link_margin: float = 0.5
    seed: int = 0


@dataclass
class HeadFit:
    """What :func:`fit_head` produced.

    Attributes:
        kernel: (F, D) the new projection.
        moved: relative Frobenius distance from the starting matrix (0: nothing learned).
        history: per-logged-step loss figures.
    """

    kernel: np.ndarray
    moved: float
    history: list[dict]


def head_kernel(model) -> np.ndarray:
    """The (F, D) projection matrix of ``model``'s ``fc`` layer.

    Raises:
        HeadError: the model has no such layer (not this project's embedder family).
    """
    try:
        layer = model.get_layer(HEAD_LAYER)
    except ValueError as error:
        raise HeadError(f"the model has no {HEAD_LAYER!r} layer to re-fit") from error
    return np.asarray(layer.get_weights()[0], np.float32)


def feature_model(model):
    """A model from the input to the pooled features that ``fc`` projects.

    Raises:
        HeadError: the model has no pooled feature layer.
    """
    import keras

    try:
        return keras.Model(model.input, model.get_layer(FEATURE_LAYER).output, name="features")
    except ValueError as error:
        raise HeadError(f"the model has no {FEATURE_LAYER!r} layer") from error


def with_head(model, kernel: np.ndarray):
    """A copy of ``model`` whose ``fc`` matrix is ``kernel`` (the challenger)."""
    import keras

    from components.embed import network  # noqa: F401  (registers the network's custom layers)

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.get_layer(HEAD_LAYER).set_weights([np.asarray(kernel, np.float32)])
    return clone


def project(features: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Unit embeddings of pooled ``features`` through ``kernel`` (what the network computes)."""
    x = np.asarray(features, np.float32) @ np.asarray(kernel, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def fit_head(features: np.ndarray, labels: np.ndarray, kernel: np.ndarray, config: HeadConfig,
             cannot_link: np.ndarray | None = None, progress=None) -> HeadFit:
    """Re-fit the projection on labelled pooled features.

    Args:
        features: (N, 2, F) pooled features of each face and of its mirror image (or (N, F)).
        labels: (N,) dense identity labels (at least two identities).
        kernel: (F, D) the starting projection (the champion's); the result is ``kernel @ A``.
        config: :class:`HeadConfig`.
        cannot_link: (L, 2) row pairs that are two people (two faces of one photo).
        progress: called with (step, steps) now and then, or None.

    Returns:
        :class:`HeadFit`.

    Raises:
        HeadError: fewer than two identities, an unknown loss, shapes that do not match.
    """
    import tensorflow as tf

    if config.loss not in HEAD_LOSSES:
        raise HeadError(f"loss {config.loss!r} cannot re-fit the head; use one of {', '.join(HEAD_LOSSES)}")
    x = np.asarray(features, np.float32)
    if x.ndim == 2:
        x = x[:, None, :]
    labels = np.asarray(labels, np.int64)
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    if n_classes < 2 or len(np.unique(labels)) < 2:
        raise HeadError(f"re-fitting the head needs at least two identities; got {len(np.unique(labels))}")
    start = np.asarray(kernel, np.float32)
    if x.shape[-1] != start.shape[0]:
        raise HeadError(f"features have {x.shape[-1]} dimensions, the head expects {start.shape[0]}")

    # Class centres start at each identity's mean direction under the starting head, so the
    # first steps refine a sensible solution instead of chasing random centres.
    emb = project(x[:, 0], start)
    centres = np.zeros((n_classes, start.shape[1]), np.float32)
    np.add.at(centres, labels, emb)
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)

    # The trainable part is a D x D adapter after the champion's head (kernel = start @ adapter),
    # starting at the identity: its scale does not depend on the head's (whose weights are ~0.01),
    # so one learning rate and one anchor weight suit any head.
    dim = start.shape[1]
    adapter = tf.Variable(np.eye(dim, dtype=np.float32))
    c = tf.Variable(centres.T)
    eye = tf.constant(np.eye(dim, dtype=np.float32))
    w0 = tf.constant(start)
    features_t = tf.constant(x)
    labels_t = tf.constant(labels, tf.int32)
    links = np.zeros((0, 2), np.int64) if cannot_link is None else np.asarray(cannot_link, np.int64).reshape(-1, 2)
    links_t = tf.constant(links if len(links) else np.zeros((1, 2), np.int64), tf.int32)
    use_links = bool(len(links))

    def schedule(step: int) -> float:
        if step < config.warmup:
            return config.learning_rate * (step + 1) / config.warmup
        progress_share = (step - config.warmup) / max(1, config.steps - config.warmup)
        return config.learning_rate * 0.5 * (1 + np.cos(np.pi * progress_share))

    lr = tf.Variable(0.0, dtype=tf.float32)
    optimizer = tf.keras.optimizers.Adam(learning_rate=lambda: lr)
    s, m = config.scale, config.margin
    arc = config.loss == "arcface"
    scale_anchor = config.anchor / dim

    @tf.function(reduce_retracing=True)
    def step_fn(rows, mirror):
        with tf.GradientTape() as tape:
            batch = tf.gather(features_t, rows)
            pick = tf.gather(batch, mirror, axis=1, batch_dims=1)
            w = tf.matmul(w0, adapter)
            emb = tf.math.l2_normalize(tf.matmul(pick, w), axis=1)
            cos = tf.matmul(emb, tf.math.l2_normalize(c, axis=0))
            y = tf.gather(labels_t, rows)
            one_hot = tf.one_hot(y, tf.shape(c)[1])
            if arc:
                theta = tf.acos(tf.clip_by_value(cos, -1 + 1e-6, 1 - 1e-6))
                target = tf.where(one_hot > 0, tf.cos(theta + m), cos)
            else:
                target = cos - m * one_hot
            ce = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(one_hot, s * target))
            pull = scale_anchor * tf.reduce_sum(tf.square(adapter - eye))
            loss = ce + pull
            if use_links:
                one = tf.math.l2_normalize(tf.matmul(tf.gather(features_t[:, 0], links_t[:, 0]), w), axis=1)
                two = tf.math.l2_normalize(tf.matmul(tf.gather(features_t[:, 0], links_t[:, 1]), w), axis=1)
                apart = tf.reduce_mean(tf.nn.relu(tf.reduce_sum(one * two, axis=1) - config.cannot_link_margin))
                loss += apart
        grads = tape.gradient(loss, [adapter, c])
        optimizer.apply_gradients(zip(grads, [adapter, c]))
        return ce, pull

    rng = np.random.default_rng(config.seed)
    history = []
    batch = min(config.batch_size, len(labels))
    every = max(1, config.steps // 10)
    for step in range(config.steps):
        lr.assign(schedule(step))
        rows = rng.choice(len(labels), size=batch, replace=False)
        mirror = rng.integers(0, x.shape[1], size=batch)
        ce, pull = step_fn(tf.constant(rows, tf.int32), tf.constant(mirror, tf.int32))
        if step % every == 0 or step == config.steps - 1:
            history.append({"step": step, "loss": round(float(ce), 5), "anchor": round(float(pull), 6),
                            "learning_rate": round(float(lr.numpy()), 7)})
            if progress is not None:
                progress(step + 1, config.steps)
    learned = start @ adapter.numpy()
    moved = float(np.linalg.norm(learned - start) / max(np.linalg.norm(start), 1e-12))
    return HeadFit(learned, moved, history)
