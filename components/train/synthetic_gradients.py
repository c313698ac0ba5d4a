"""Decoupled training with synthetic gradients (Jaderberg et al. 2016; thesis section 4.2.3).

The network is cut in two: a lower block ``f`` (input -> activation h) and an upper block
``g`` (h -> embedding -> loss). A small gradient-predicting network ``M(h, y)`` (a "DNI"
module, conditioned on the labels as the paper's cDNI) stands in for the back-propagated
gradient ``dL/dh``:

- ``f`` is updated at once from the predicted gradient ``M(h_t, y_t)``: it never waits
  for ``g``'s forward and backward pass (update-unlocked);
- ``g`` trains on the activation ``f`` produced one step earlier, ``h_{t-1}``, with the
  ordinary loss; its backward pass yields the true ``dL/dh_{t-1}``;
- ``M`` is regressed onto that true gradient (squared error).

Inside one ``tf.function`` the two halves have no data dependency on each other, so
TensorFlow may run them concurrently (a two-stage pipeline); on one device that is the
only source of a speed-up, and the predicted gradient is an approximation, so accuracy
may suffer. ``compare_backprop_and_synthetic`` measures both on the same batches,
alternating the two trainers step by step so that a shared machine's load hits both alike.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import keras
import numpy as np

from components.train.losses import make_loss
from components.train.networks import make_network

__all__ = [
    "BackpropTrainer",
    "SyntheticGradientTrainer",
    "compare_backprop_and_synthetic",
    "gradient_predictor",
    "split_network",
]


def split_network(model: keras.Model, cut_layer: str) -> tuple[keras.Model, keras.Model]:
    """Cuts a chain-shaped functional model after ``cut_layer``.

    Args:
        model: e.g. ``make_network("small")``.
        cut_layer: Name of the layer whose output is the activation h.

    Returns:
        ``(lower, upper)`` sharing the original layers (and weights):
        ``upper(lower(x)) == model(x)``.
    """
    h = model.get_layer(cut_layer).output
    lower = keras.Model(model.inputs[0], h, name=f"{model.name}_lower")
    upper_input = keras.Input(h.shape[1:], name="h")
    x = upper_input
    after = False
    for layer in model.layers:
        if after:
            x = layer(x)
        after = after or layer.name == cut_layer
    return lower, keras.Model(upper_input, x, name=f"{model.name}_upper")


def gradient_predictor(h_shape: tuple[int, ...], num_classes: int, hidden: int = 64) -> keras.Model:
    """The synthetic-gradient module ``M([h, one_hot(y)]) -> dL/dh`` (same shape as h).

    Two 3x3 convolutions over h with the label broadcast as extra channels, plus a
    per-class gradient map (a bias-free dense layer from the one-hot label to the
    whole h shape): the class term carries most of a classification loss's gradient
    and is learnt in a few steps, the convolutions model what depends on h. Both
    output layers start at zero, as in the paper, so the first predictions are zero
    instead of noise.
    """
    h = keras.Input(h_shape, name="h")
    labels = keras.Input((num_classes,), name="one_hot")
    planes = keras.layers.Reshape((1, 1, num_classes))(labels)
    planes = keras.layers.UpSampling2D(size=h_shape[:2], name="label_planes")(planes)
    x = keras.layers.Concatenate()([h, planes])
    x = keras.layers.Conv2D(hidden, 3, padding="same", activation="relu", name="sg_hidden")(x)
    from_h = keras.layers.Conv2D(h_shape[-1], 3, padding="same", kernel_initializer="zeros", name="sg_out")(x)
    per_class = keras.layers.Dense(int(np.prod(h_shape)), use_bias=False, kernel_initializer="zeros",
                                   name="sg_class_map")(labels)
    per_class = keras.layers.Reshape(h_shape)(per_class)
    out = keras.layers.Add()([from_h, per_class])
    return keras.Model([h, labels], out, name="gradient_predictor")


def _optimizer(name: str, learning_rate: float):
    """"adam" or "sgd" (momentum 0.9)."""
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")


@dataclass
class _Trainer:
    step_seconds: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def _timed(self, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        loss = float(out[0] if isinstance(out, tuple) else out)  # forces the step to finish
        self.step_seconds.append(time.perf_counter() - start)
        self.losses.append(loss)
        return out


class BackpropTrainer(_Trainer):
    """Ordinary end-to-end back-propagation of a network and a loss head (the baseline)."""

    def __init__(self, model: keras.Model, head, learning_rate: float, optimizer: str = "adam"):
        import tensorflow as tf

        super().__init__()
        self.model, self.head = model, head
        self.optimizer = _optimizer(optimizer, learning_rate)
        weights = model.trainable_weights + head.trainable_weights

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                loss = head(model(x, training=True), y)
            self.optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
            return loss

        self._step = step

    def step(self, x, y) -> float:
        """One training step; returns the loss."""
        return float(self._timed(self._step, x, y))

    def embed(self, x: np.ndarray) -> np.ndarray:
        """Embeddings in inference mode."""
        return _in_batches(lambda b: self.model(b, training=False), x)


class SyntheticGradientTrainer(_Trainer):
    """Two-stage pipeline: lower block on synthetic gradients, upper block one step behind.

    Args:
        lower: f, input -> h.
        upper: g, h -> embedding.
        head: Loss head on the embedding.
        num_classes: For the label-conditioned gradient predictor.
        learning_rate: Adam rate of all three parts.
        predictor_hidden: Channels of the predictor's hidden layer.
    """

    def __init__(self, lower: keras.Model, upper: keras.Model, head, num_classes: int, learning_rate: float,
                 predictor_hidden: int = 64, optimizer: str = "adam", predictor_learning_rate: float = 1e-3):
        import tensorflow as tf

        super().__init__()
        self.lower, self.upper, self.head = lower, upper, head
        self.predictor = gradient_predictor(tuple(lower.output.shape[1:]), num_classes, predictor_hidden)
        # Cosine between M's prediction and the true dL/dh, per step (0 while M outputs zeros).
        self.predictor_cosines: list[float] = []
        opt_lower, opt_upper = (_optimizer(optimizer, learning_rate) for _ in range(2))
        # M always uses Adam: its targets are tiny and change scale as the loss falls.
        opt_sg = keras.optimizers.Adam(predictor_learning_rate)
        upper_weights = upper.trainable_weights + head.trainable_weights
        predictor = self.predictor

        @tf.function
        def step(x, y, h_prev, y_prev):
            # M predicts the gradient of the *summed* batch loss (O(1) per face whatever the
            # batch size); the mean loss's gradient is that over the batch size.
            batch = tf.cast(tf.shape(x)[0], tf.float32)
            # Stage 1: f forward, update from M's prediction (no wait for g).
            with tf.GradientTape() as tape:
                h = lower(x, training=True)
            predicted = predictor([tf.stop_gradient(h), tf.one_hot(y, num_classes)], training=False) / batch
            lower_grads = tape.gradient(h, lower.trainable_weights, output_gradients=predicted)
            opt_lower.apply_gradients(zip(lower_grads, lower.trainable_weights))
            # Stage 2: g on the previous activation, with the true loss.
            with tf.GradientTape() as tape:
                tape.watch(h_prev)
                loss = head(upper(h_prev, training=True), y_prev)
            grads = tape.gradient(loss, upper_weights + [h_prev])
            opt_upper.apply_gradients(zip(grads[:-1], upper_weights))
            target = tf.stop_gradient(grads[-1]) * tf.cast(tf.shape(h_prev)[0], tf.float32)
            # M learns the true gradient of the activation it was asked about one step ago.
            with tf.GradientTape() as tape:
                guess = predictor([h_prev, tf.one_hot(y_prev, num_classes)], training=True)
                sg_loss = tf.reduce_mean(tf.square(guess - target))
            sg_grads = tape.gradient(sg_loss, predictor.trainable_weights)
            opt_sg.apply_gradients(zip(sg_grads, predictor.trainable_weights))
            cosine = tf.reduce_sum(guess * target) / (tf.norm(guess) * tf.norm(target) + 1e-12)
            return loss, cosine, tf.stop_gradient(h)

        self._step = step
        self._pending = None  # (h, y) of the previous batch, waiting for stage 2

    def step(self, x, y) -> float:
        """One pipeline step; returns the loss of the upper block (on the previous batch)."""
        import tensorflow as tf

        if self._pending is None:
            # Pipeline fill: the first batch's activation, without an update.
            self._pending = (self.lower(x, training=False), tf.constant(y))
        h_prev, y_prev = self._pending
        loss, cosine, h = self._timed(self._step, x, y, h_prev, y_prev)
        self.predictor_cosines.append(float(cosine))
        self._pending = (h, tf.constant(y))
        return float(loss)

    def embed(self, x: np.ndarray) -> np.ndarray:
        """Embeddings in inference mode, through both blocks."""
        return _in_batches(lambda b: self.upper(self.lower(b, training=False), training=False), x)


def _in_batches(fn, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    # Direct calls, not predict(): predict() builds and traces a new function per model.
    return np.concatenate([np.asarray(fn(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])


def _nearest_centroid_accuracy(train_emb, train_y, test_emb, test_y) -> float:
    classes = np.unique(train_y)
    centroids = np.stack([train_emb[train_y == c].mean(0) for c in classes])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    return float(np.mean(classes[np.argmax(test_emb @ centroids.T, axis=1)] == test_y))


def _balanced_pairs(labels, rng, max_pairs=2000):
    i, j = np.triu_indices(len(labels), 1)
    same = labels[i] == labels[j]
    pos, neg = np.flatnonzero(same), np.flatnonzero(~same)
    k = min(len(pos), len(neg), max_pairs)
    pick = np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, k, replace=False)])
    return i[pick], j[pick], same[pick]


def _verification(test_emb, test_y, seed=0) -> dict:
    """Balanced same/different pairs of held-out faces: 10-fold accuracy (LFW protocol) and ROC AUC.

    The threshold is fitted on nine folds of held-out pairs and tested on the tenth, as
    LFW does; a threshold fitted on training faces would mostly measure over-fitting.
    """
    from sklearn.metrics import roc_auc_score

    from components.report.verification import ten_fold_accuracy

    rng = np.random.default_rng(seed)
    i, j, same = _balanced_pairs(test_y, rng)
    scores = np.sum(test_emb[i] * test_emb[j], axis=1)
    folds = rng.permutation(len(scores)) % 10
    return {"accuracy": round(ten_fold_accuracy(scores, same, folds)["accuracy_mean"], 4),
            "auc": round(float(roc_auc_score(same, scores)), 4), "pairs": int(len(scores))}


def _summary(trainer: _Trainer, train_x, train_y, test_x, test_y, wall_s: float, skip: int) -> dict:
    times = trainer.step_seconds[skip:]  # the first steps trace and compile
    train_emb, test_emb = trainer.embed(train_x), trainer.embed(test_x)
    tail = trainer.losses[-max(1, len(trainer.losses) // 10):]
    verification = _verification(test_emb, test_y)
    return {
        "median_step_ms": round(1000 * statistics.median(times), 2),
        "p90_step_ms": round(1000 * float(np.percentile(times, 90)), 2),
        "train_loss_first": round(trainer.losses[0], 4),
        "train_loss_last_10pct": round(float(np.mean(tail)), 4),
        "held_out_identification_accuracy": round(_nearest_centroid_accuracy(train_emb, train_y, test_emb, test_y), 4),
        "held_out_verification_accuracy": verification["accuracy"],
        "held_out_verification_auc": verification["auc"],
        "held_out_pairs": verification["pairs"],
        "wall_s": round(wall_s, 2),
    }


def compare_backprop_and_synthetic(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                                   test_y: np.ndarray, steps: int = 600, batch_size: int = 32,
                                   learning_rate: float = 1e-3, widths=(16, 32, 64, 128), cut_after: int = 2,
                                   embedding_dim: int = 64, loss: str = "softmax", predictor_hidden: int = 32,
                                   seed: int = 0) -> dict:
    """Trains the small backbone twice on the same batches: back-propagation vs synthetic gradients.

    Both start from the same initial weights and see the same batches (random flips
    included) in the same order; their steps alternate so machine load affects both.

    Args:
        train_x: (N, S, S, 3) float32 RGB in [0, 255]; identities ``train_y`` (0..C-1).
        train_y: (N,) int labels.
        test_x: Held-out photos of the same identities.
        test_y: Their labels.
        steps: Training steps of each mode.
        batch_size: Faces per step.
        learning_rate: Adam rate (every part of both modes).
        widths: Small backbone conv widths.
        cut_after: The synthetic gradient sits after conv block ``cut_after``.
        embedding_dim: Embedding width.
        loss: Loss head name (a classification loss: "softmax", "center", ...).
        predictor_hidden: Channels of the gradient predictor's hidden layer.
        seed: Initial weights and batch order.

    Returns:
        ``{"backprop": {...}, "synthetic_gradients": {...}, "step_time_ratio": sg / bp}`` with
        median step time, losses, held-out identification (nearest class centroid) and
        verification accuracy per mode.

    Raises:
        ValueError: If there are fewer than 2 identities or the cut is outside the network.
    """
    import tensorflow as tf

    train_y, test_y = np.asarray(train_y, np.int32), np.asarray(test_y, np.int32)
    num_classes = int(train_y.max()) + 1
    if len(np.unique(train_y)) < 2:
        raise ValueError("need at least 2 identities to train")
    if not 1 <= cut_after < len(widths):
        raise ValueError(f"cut_after must be in 1..{len(widths) - 1}, got {cut_after}")
    size = train_x.shape[1]

    keras.utils.set_random_seed(seed)
    bp_model = make_network("small", embedding_dim=embedding_dim, input_size=size, widths=tuple(widths))
    bp_head = make_loss(loss, num_classes, embedding_dim)
    sg_model = make_network("small", embedding_dim=embedding_dim, input_size=size, widths=tuple(widths))
    sg_model.set_weights(bp_model.get_weights())
    sg_head = make_loss(loss, num_classes, embedding_dim)
    sg_head.set_weights(bp_head.get_weights())
    lower, upper = split_network(sg_model, f"block{cut_after}_act")

    backprop = BackpropTrainer(bp_model, bp_head, learning_rate)
    synthetic = SyntheticGradientTrainer(lower, upper, sg_head, num_classes, learning_rate, predictor_hidden)
    rng = np.random.default_rng(seed)
    walls = {"backprop": 0.0, "synthetic_gradients": 0.0}
    for step in range(steps):
        batch = rng.choice(len(train_x), batch_size, replace=False)
        x = train_x[batch]
        flip = rng.random(batch_size) < 0.5
        x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        x, y = tf.constant(x, tf.float32), tf.constant(train_y[batch])
        # Alternate which goes first so neither always follows the other's cache state.
        order = [("backprop", backprop), ("synthetic_gradients", synthetic)]
        for name, trainer in order if step % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            trainer.step(x, y)
            walls[name] += time.perf_counter() - start
    skip = min(5, steps - 1)
    result = {
        "backprop": _summary(backprop, train_x, train_y, test_x, test_y, walls["backprop"], skip),
        "synthetic_gradients": _summary(synthetic, train_x, train_y, test_x, test_y, walls["synthetic_gradients"],
                                        skip),
    }
    result["synthetic_gradients"]["predicted_vs_true_gradient_cosine_last_10pct"] = round(
        float(np.mean(synthetic.predictor_cosines[-max(1, steps // 10):])), 4)
    result["step_time_ratio_sg_over_bp"] = round(
        result["synthetic_gradients"]["median_step_ms"] / result["backprop"]["median_step_ms"], 3)
    return result
