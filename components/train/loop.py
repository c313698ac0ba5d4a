"""The training loop: any network of :mod:`components.train.networks` with any loss head.

One custom step, the same on a laptop and on a GPU box::

    with GradientTape: embeddings = network(x); loss = head(embeddings, labels)
    apply the gradients of (network + head) trainable weights; head.post_step(...)

* GPUs present: ``tf.distribute.MirroredStrategy`` over all of them and mixed precision
  (``mixed_float16``, loss scaling); on CPU the default strategy, float32.
* Batches from :class:`components.train.data.BalancedSampler` (P identities x K faces),
  a pure function of the step: a resumed run sees exactly the batches it would have.
* Checkpoints every ``checkpoint_every`` steps and at each epoch end, written to a
  temporary folder and renamed, each with a manifest of sha256 sums; a run killed mid-
  epoch resumes from the newest one at the same step. A checkpoint whose files do not
  match their manifest is refused (:class:`CheckpointError`), never half-loaded.
* Early stopping on held-out verification accuracy (identities never trained on): the
  best epoch's weights are the result.
* MLflow (:mod:`components.track`): params, component and data versions, per-epoch loss
  and held-out accuracy / AUC / TAR@FAR, a t-SNE plot of held-out embeddings coloured
  by identity, the ROC curve, and the model, registered as a new version.

Data too small to learn from is refused (:class:`~components.train.data.TrainingDataError`)
before any model is built.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.train.data import BalancedSampler, LabelledFaces, TrainingDataError, make_dataset, verification_pairs

MANIFEST = "MANIFEST.json"


class CheckpointError(RuntimeError):
    """A checkpoint (or model file) is damaged or does not fit the model; nothing was loaded from it."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (logged as MLflow params).

    Attributes:
        network: a name of :data:`components.train.networks.NETWORKS` (ignored when a
            built network is passed to :func:`train`).
        network_options: extra ``make_network`` options.
        embedding_dim: embedding width.
        loss: a name of :data:`components.train.losses.LOSSES`.
        loss_options: the loss's hyper-parameters.
        identities_per_batch: P of the P x K batches.
        faces_per_identity: K.
        steps_per_epoch: steps between validations.
        epochs: most epochs.
        learning_rate: Adam's step size.
        patience: epochs without a held-out improvement of more than ``min_delta`` before stopping.
        min_delta: smallest improvement of held-out accuracy that counts.
        checkpoint_every: steps between mid-epoch checkpoints.
        keep_checkpoints: newest checkpoints kept on disk.
        augment: flip and colour augmentation of the crops.
        mixed_precision: ``auto`` (on with a GPU), ``on`` or ``off``.
        seed: batches, augmentation and weight initialisation.
        min_identities: fewer training identities (with ``min_faces_per_identity`` faces) is refused.
        min_faces_per_identity: see above.
        tsne_faces: held-out faces in the t-SNE plot (the largest identities first).
    """

    network: str = "small"
    network_options: dict = field(default_factory=dict)
    embedding_dim: int = 128
    loss: str = "softmax"
    loss_options: dict = field(default_factory=dict)
    identities_per_batch: int = 16
    faces_per_identity: int = 4
    steps_per_epoch: int = 50
    epochs: int = 10
    learning_rate: float = 1e-3
    patience: int = 3
    min_delta: float = 0.0
    checkpoint_every: int = 25
    keep_checkpoints: int = 2
    augment: bool = True
    mixed_precision: str = "auto"
    seed: int = 0
    min_identities: int = 2
    min_faces_per_identity: int = 2
    tsne_faces: int = 600

    def __post_init__(self):
        if self.mixed_precision not in ("auto", "on", "off"):
            raise ValueError(f"mixed_precision must be auto, on or off; got {self.mixed_precision!r}")
        for name in ("identities_per_batch", "faces_per_identity", "steps_per_epoch", "epochs", "checkpoint_every",
                     "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.faces_per_identity < 2 and self.loss in ("triplet", "quadruplet"):
            raise ValueError(f"{self.loss} needs faces_per_identity >= 2 (a positive for every anchor)")


@dataclass
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        model_path: the best epoch's model, ``.keras``.
        step: optimiser steps taken in all (across resumes).
        best_epoch: epoch of the best held-out accuracy; 0 means the starting weights were
            never beaten (and are what ``model_path`` holds).
        best: held-out verification figures at the best epoch.
        history: one dict per epoch (loss, held-out accuracy, AUC, TAR@FAR, seconds).
        stopped_early: stopped by patience rather than by the epoch limit.
        resumed_from: the step a resumed run started at (None: fresh start).
        run_id: the MLflow run (None without tracking).
        version: registered model version (None when not registered).
    """

    model_path: Path
    step: int
    best_epoch: int
    best: dict
    history: list[dict]
    stopped_early: bool
    resumed_from: int | None = None
    run_id: str | None = None
    version: int | None = None
    initial: dict | None = None


# -- checkpoints ----------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checkpoint_dirs(folder: Path) -> list[Path]:
    """Complete checkpoints (with a manifest), oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("ckpt-*") if p.is_dir() and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def verify_checkpoint(path: Path) -> dict:
    """Check every file of a checkpoint against its manifest.

    Returns:
        The checkpoint's state (``state.json``).

    Raises:
        CheckpointError: a file is missing, has other bytes than recorded, or the
            manifest itself is unreadable.
    """
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path}: unreadable manifest ({error}); refusing to resume from it") from error
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path}: {name} is missing; refusing to resume from it")
        if _sha256(file) != expected:
            raise CheckpointError(
                f"checkpoint {path}: {name} is corrupted (sha256 differs from the manifest); refusing to resume "
                "from it. Delete the checkpoint folder to train from the start; no model was changed."
            )
    try:
        return json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path}: unreadable state.json ({error})") from error


def _save_variables(variables, path: Path) -> None:
    """Tensors in order, as ``.npz`` (temp name, then rename: never half-written)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, *[np.asarray(v.numpy() if hasattr(v, "numpy") else v) for v in variables])
    os.replace(tmp, path)


def _load_variables(variables, path: Path, what: str) -> None:
    with np.load(path) as data:
        arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
    if len(arrays) != len(variables):
        raise CheckpointError(f"{path}: holds {len(arrays)} {what} tensors, the model has {len(variables)}; "
                              "it was written for another network or loss")
    for variable, value in zip(variables, arrays):
        if tuple(variable.shape) != value.shape:
            raise CheckpointError(f"{path}: {what} tensor {variable.name} has shape {value.shape}, "
                                  f"the model expects {tuple(variable.shape)}")
        variable.assign(value)


def save_checkpoint(folder: Path, step: int, network, head, optimizer, state: dict, keep: int) -> Path:
    """Write checkpoint ``ckpt-<step>`` atomically (temp folder, manifest last, rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"ckpt-{step:08d}"
    tmp = folder / f".tmp-ckpt-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _save_variables(network.weights, tmp / "network.npz")
    _save_variables(head.weights, tmp / "head.npz")
    _save_variables(optimizer.variables, tmp / "optimizer.npz")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in _checkpoint_dirs(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def restore_checkpoint(path: Path, network, head, optimizer) -> dict:
    """Verify, then load a checkpoint into the (built) network, head and optimizer.

    Raises:
        CheckpointError: damaged, or written for another model.
    """
    state = verify_checkpoint(path)
    _load_variables(network.weights, path / "network.npz", "network")
    _load_variables(head.weights, path / "head.npz", "loss head")
    _load_variables(optimizer.variables, path / "optimizer.npz", "optimizer")
    return state


def load_keras_model(path: Path):
    """Load a ``.keras`` embedder, or say clearly why not.

    Raises:
        CheckpointError: missing, truncated or not a Keras model.
    """
    import keras

    from components.embed import network as _engine_layers  # noqa: F401  (registers ChannelZeroPad)
    from components.train import layers as _train_layers  # noqa: F401  (registers the training layers)

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a damaged zip / config
        raise CheckpointError(f"{path}: not a loadable Keras model ({type(error).__name__}: {error}); "
                              "it is damaged or was not written by Keras") from error


# -- the loop -------------------------------------------------------------------------------------


def device_setup(mixed_precision: str) -> tuple[Any, bool]:
    """The distribution strategy and whether mixed precision is on (GPUs: Mirrored + mixed_float16)."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    mixed = mixed_precision == "on" or (mixed_precision == "auto" and bool(gpus))
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    strategy = tf.distribute.MirroredStrategy() if gpus else tf.distribute.get_strategy()
    return strategy, mixed


def embed_inputs(network, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Embeddings of ``x`` (inference mode), float32, unit norm."""
    out = []
    for start in range(0, len(x), batch_size):
        batch = np.asarray(x[start : start + batch_size], np.float32)
        out.append(np.asarray(network(batch, training=False), np.float32))
    vectors = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def held_out_figures(embeddings: np.ndarray, pairs: np.ndarray, same: np.ndarray) -> tuple[dict, np.ndarray]:
    """Verification figures on held-out pairs: 10-fold accuracy, AUC, TAR@FAR=1e-3.

    Returns:
        (figures, scores).
    """
    from components.report.verification import verification_report

    scores = np.sum(embeddings[pairs[:, 0]] * embeddings[pairs[:, 1]], axis=1)
    folds = np.arange(len(pairs)) % 10
    report = verification_report(scores, same, folds)
    return {"accuracy": report["accuracy_mean"], "accuracy_std": report["accuracy_std"], "auc": report["auc"],
            "tar_at_far_1e-3": report["tar_at_far_1e-3"], "threshold": report["threshold_mean"]}, scores


def roc_figure(scores: np.ndarray, same: np.ndarray, title: str, others: dict | None = None):
    """ROC curve (log FAR axis) of one model, optionally beside others: {name: (scores, same)}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, (s, y) in {title: (scores, same), **(others or {})}.items():
        fpr, tpr, _ = roc_curve(np.asarray(y, bool), s)
        ax.plot(np.maximum(fpr, 1e-4), tpr, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.axvline(1e-3, color="grey", lw=0.5, ls="--")
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title("ROC, held-out pairs")
    fig.tight_layout()
    return fig


def tsne_figure(embeddings: np.ndarray, labels: np.ndarray, max_faces: int, seed: int, title: str):
    """t-SNE of held-out embeddings coloured by identity (the largest identities, up to ``max_faces``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    labels = np.asarray(labels)
    keys, counts = np.unique(labels, return_counts=True)
    chosen, total = [], 0
    for key in keys[np.argsort(-counts, kind="stable")]:
        if total >= max_faces or len(chosen) >= 20:  # 20 colours stay distinguishable
            break
        chosen.append(key)
        total += int(counts[keys == key][0])
    rows = np.flatnonzero(np.isin(labels, chosen))[:max_faces]
    fig, ax = plt.subplots(figsize=(5, 5))
    if len(rows) >= 5:
        points = TSNE(n_components=2, perplexity=min(30.0, (len(rows) - 1) / 3), metric="cosine", init="pca",
                      random_state=seed).fit_transform(embeddings[rows])
        cmap = plt.get_cmap("tab20")
        for i, key in enumerate(chosen):
            mine = labels[rows] == key
            ax.scatter(points[mine, 0], points[mine, 1], s=8, color=cmap(i % 20))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def _atomic_save(model, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def train(train_data: LabelledFaces, val_data: LabelledFaces, config: TrainConfig, workdir: str | Path, *,
          network=None, export_model=None, augment: bool | Callable | None = None, experiment: str = "train",
          run_name: str | None = None, tracking: bool = True, register: bool = True, version_tags: dict | None = None,
          extra_params: dict | None = None, stop_after_steps: int | None = None, nested: bool = False,
          on_step: Callable[[int, float], None] | None = None, strategy=None,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train (or fine-tune) an embedder; resumes from ``workdir`` when a checkpoint is there.

    Args:
        train_data: labelled training inputs.
        val_data: held-out identities (none of them in ``train_data``) for early stopping.
        config: the run's settings.
        workdir: checkpoints, history and the resulting model; the same folder resumes.
        network: a built network to train instead of ``make_network(config.network)``
            (fine-tuning passes the trainable top of the champion).
        export_model: the model saved and registered (default: ``network``); it must share
            the trained layers (fine-tuning exports the whole champion around its top).
        augment: as :func:`components.train.data.make_dataset`; default ``config.augment``.
        experiment: MLflow experiment.
        run_name: MLflow run name (default: network and loss).
        tracking: log to MLflow.
        register: register the result as a new version of the embedder (needs tracking).
        version_tags: tags of the registered version.
        extra_params: more MLflow params (e.g. where the labels came from).
        stop_after_steps: stop (as if killed, without the end-of-run work) once this many
            steps were taken in all; for tests of resuming.
        nested: open the MLflow run as a child of the active one (a retraining cycle's).
        on_step: called with (step, loss) after every step (throughput measurements).
        strategy: a ``tf.distribute`` strategy instead of the automatic choice (tests run
            ``MirroredStrategy`` over two logical CPUs, the GPU code path without a GPU).
        log: progress lines.

    Returns:
        :class:`TrainResult`.

    Raises:
        TrainingDataError: too few identities or faces (before any model is built).
        CheckpointError: the newest checkpoint in ``workdir`` is damaged.
    """
    train_data.check_trainable(config.min_identities, config.min_faces_per_identity)
    val_data.check_trainable(2, 2)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = workdir / "checkpoints"
    checkpoints = _checkpoint_dirs(ckpt_dir)
    resume_state = verify_checkpoint(checkpoints[-1]) if checkpoints else None  # refuse damage before any work

    import keras
    import tensorflow as tf

    from components.train.losses import make_loss
    from components.train.networks import make_network

    chosen_strategy, mixed = device_setup(config.mixed_precision)
    strategy = strategy or chosen_strategy
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        if network is None:
            network = make_network(config.network, embedding_dim=config.embedding_dim, **config.network_options)
        export_model = export_model or network
        embedding_dim = int(network.output.shape[-1])
        # The loss head computes in float32 whatever the network does: logits, margins and
        # centres need the range (and the centre update would mix float16 and float32).
        network_policy = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("float32")
        try:
            head = make_loss(config.loss, num_classes=len(train_data.classes), embedding_dim=embedding_dim,
                             **config.loss_options)
        finally:
            keras.mixed_precision.set_global_policy(network_policy)
        optimizer = keras.optimizers.Adam(config.learning_rate)
        if mixed:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        variables = network.trainable_weights + head.trainable_weights
        optimizer.build(variables)
    if not variables:
        raise TrainingDataError("nothing to train: every layer of the network is frozen")

    state: dict[str, Any] = {"epoch": 0, "history": [], "best": None, "best_epoch": 0, "bad_epochs": 0,
                             "loss_sum": 0.0, "loss_count": 0, "run_id": None, "stopped_early": False}
    resumed_from = None
    if resume_state is not None:
        state.update(restore_checkpoint(checkpoints[-1], network, head, optimizer))
        resumed_from = int(state["step"])
        log(f"resumed from {checkpoints[-1].name} at step {resumed_from} (epoch {state['epoch'] + 1})")
    step = int(state.get("step", 0))

    sampler = BalancedSampler(train_data.labels, config.identities_per_batch, config.faces_per_identity, config.seed,
                              cannot_link=train_data.cannot_link)
    total_steps = config.steps_per_epoch * config.epochs
    pairs, same = verification_pairs(val_data.labels, seed=config.seed)
    augment = config.augment if augment is None else augment
    dataset = make_dataset(train_data.x, train_data.labels, sampler, start_step=step, augment=augment, seed=config.seed)
    if strategy.num_replicas_in_sync > 1:
        dataset = strategy.experimental_distribute_dataset(dataset)
    replicas = strategy.num_replicas_in_sync

    @tf.function
    def train_step(x, y):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                embeddings = network(x, training=True)
                loss = head(embeddings, y)
                scaled = loss / replicas
                if mixed:
                    scaled = optimizer.scale_loss(scaled)
            gradients = tape.gradient(scaled, variables)
            optimizer.apply_gradients(zip(gradients, variables))
            head.post_step(embeddings, y)
            return loss

        per_replica = strategy.run(replica_step, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None) / replicas

    params = {"config": {k: v for k, v in asdict(config).items()}, "train": {
        "faces": len(train_data), "identities": len(train_data.classes), "cannot_link_pairs": len(train_data.cannot_link)},
        "held_out": {"faces": len(val_data), "identities": len(val_data.classes), "pairs": len(pairs)},
        "network_name": network.name, "trainable_params": int(sum(np.prod(v.shape) for v in network.trainable_weights)),
        "mixed_precision": mixed, "replicas": replicas, **(extra_params or {})}
    run_name = run_name or f"{network.name}-{config.loss}"

    def run_context():
        if not tracking:
            from contextlib import nullcontext

            return nullcontext(None)
        from components.track import start_run

        return start_run(experiment, run_name, params=params, run_id=state.get("run_id"), nested=nested)

    best_weights = workdir / "best.weights.npz"
    with run_context() as run:
        if run is not None:
            state["run_id"] = run.info.run_id
            import mlflow
        if resumed_from is None:
            # The starting weights compete as epoch 0: fine-tuning that never beats the model it
            # started from returns that model unchanged.
            figures, _ = held_out_figures(embed_inputs(network, val_data.x), pairs, same)
            state["initial"], state["best"], state["best_epoch"] = figures, figures, 0
            _save_variables(network.weights, best_weights)
            log(f"epoch 0 (before training): held-out accuracy {figures['accuracy']:.4f}, AUC {figures['auc']:.4f}, "
                f"TAR@FAR1e-3 {figures['tar_at_far_1e-3']:.3f}")
            if run is not None:
                mlflow.log_metrics({"held_out_accuracy": figures["accuracy"], "held_out_auc": figures["auc"],
                                    "held_out_tar_at_far_1e-3": figures["tar_at_far_1e-3"]}, step=0)
        iterator = iter(dataset)
        epoch_started = time.perf_counter()
        while step < total_steps and not state["stopped_early"]:
            if stop_after_steps is not None and step >= stop_after_steps:
                log(f"stopping at step {step} as asked (stop_after_steps)")
                return TrainResult(workdir / "model.keras", step, state["best_epoch"], state["best"] or {},
                                   state["history"], False, resumed_from, state["run_id"])
            x, y = next(iterator)
            loss = float(train_step(x, y))
            if not np.isfinite(loss):
                raise TrainingDataError(f"the loss became {loss} at step {step}: lower the learning rate")
            step += 1
            if on_step is not None:
                on_step(step, loss)
            state["loss_sum"] += loss
            state["loss_count"] += 1
            epoch_end = step % config.steps_per_epoch == 0
            if epoch_end:
                state["epoch"] += 1
                embeddings = embed_inputs(network, val_data.x)
                figures, _ = held_out_figures(embeddings, pairs, same)
                record = {"epoch": state["epoch"], "step": step, "loss": state["loss_sum"] / max(1, state["loss_count"]),
                          **{f"held_out_{k}": v for k, v in figures.items()},
                          "seconds": round(time.perf_counter() - epoch_started, 2)}
                state["history"].append(record)
                state["loss_sum"], state["loss_count"] = 0.0, 0
                improved = state["best"] is None or figures["accuracy"] > state["best"]["accuracy"] + config.min_delta
                if improved:
                    state["best"], state["best_epoch"], state["bad_epochs"] = figures, state["epoch"], 0
                    _save_variables(network.weights, best_weights)
                else:
                    state["bad_epochs"] += 1
                    state["stopped_early"] = state["bad_epochs"] >= config.patience
                log(f"epoch {state['epoch']}: loss {record['loss']:.4f}, held-out accuracy {figures['accuracy']:.4f}, "
                    f"AUC {figures['auc']:.4f}, TAR@FAR1e-3 {figures['tar_at_far_1e-3']:.3f}"
                    + (" (best)" if improved else "") + (" -> early stop" if state["stopped_early"] else ""))
                if run is not None:
                    mlflow.log_metrics({"loss": record["loss"], "held_out_accuracy": figures["accuracy"],
                                        "held_out_auc": figures["auc"], "held_out_tar_at_far_1e-3": figures["tar_at_far_1e-3"],
                                        "epoch_seconds": record["seconds"]}, step=state["epoch"])
                epoch_started = time.perf_counter()
            if epoch_end or step % config.checkpoint_every == 0:
                save_checkpoint(ckpt_dir, step, network, head, optimizer, state, config.keep_checkpoints)

        if best_weights.is_file():
            _load_variables(network.weights, best_weights, "network")
        model_path = workdir / "model.keras"
        _atomic_save(export_model, model_path)
        (workdir / "history.json").write_text(json.dumps(state["history"], indent=1))
        result = TrainResult(model_path, step, state["best_epoch"], state["best"] or {}, state["history"],
                             bool(state["stopped_early"]), resumed_from, state["run_id"], initial=state.get("initial"))
        if run is not None:
            import matplotlib.pyplot as plt

            from components.track import log_figure, log_json

            embeddings = embed_inputs(network, val_data.x)
            figures, scores = held_out_figures(embeddings, pairs, same)
            mlflow.log_metrics({f"best_held_out_{k}": v for k, v in figures.items()})
            fig = roc_figure(scores, same, f"{run_name} (best epoch {state['best_epoch']})")
            log_figure(fig, "roc.png")
            plt.close(fig)
            fig = tsne_figure(embeddings, val_data.labels, config.tsne_faces, config.seed,
                              f"t-SNE of held-out embeddings, {run_name}")
            log_figure(fig, "tsne.png")
            plt.close(fig)
            log_json("history.json", state["history"])
            if register:
                from components.track.registry import register_embedder

                tags = {"held_out_accuracy": figures["accuracy"], "network": network.name, "loss": config.loss,
                        **(version_tags or {})}
                result.version = register_embedder(model_path, run.info.run_id, tags=tags)
                log(f"registered as version {result.version}")
    return result
