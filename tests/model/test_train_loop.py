"""The training loop on real LFW crops: it learns, resumes after a kill, refuses damage.

Crops come from real LFW photos through the real detector (cached under bench/cache
after the first run). The small backbone keeps each test to seconds of training.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from components.settings import PROJECT_ROOT, load_settings
from components.train.data import LabelledFaces, TrainingDataError
from components.train.loop import CheckpointError, TrainConfig, load_keras_model, train

pytestmark = pytest.mark.slow

PEOPLE = ("Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder", "Ariel_Sharon", "Hugo_Chavez")
LFW = PROJECT_ROOT / "data" / "lfw"


@pytest.fixture(scope="module")
def crops():
    """(train, held-out) LabelledFaces: main faces of 4 + 2 LFW people, 10 photos each."""
    from components.datasets.lfw import list_identities
    from components.train.lfw_faces import lfw_faces

    if not (LFW / "images_deepfunneled").is_dir():
        pytest.skip("LFW not pulled (make setup)")
    identities = list_identities(LFW)
    paths = [path for name in PEOPLE for path in identities[name][:10]]
    faces = lfw_faces(load_settings(), LFW, progress=False, paths=paths)
    main = faces.is_main
    names = faces.names[faces.photo[main]]
    labels = np.array([PEOPLE.index(n) for n in names])
    data = LabelledFaces(np.asarray(faces.crops[main]), labels, list(PEOPLE))
    return data.subset(np.flatnonzero(labels < 4)), data.subset(np.flatnonzero(labels >= 4))


CONFIG = dict(network="small", loss="softmax", identities_per_batch=4, faces_per_identity=4, learning_rate=3e-3,
              augment=True, seed=0, tsne_faces=40)


def test_loss_falls_and_two_identities_separate(crops, tmp_path):
    train_data, _ = crops
    # Validated on the training people themselves: four identities teach nothing that
    # transfers to strangers, and the best epoch by validation is the model returned.
    # 60 steps: fewer leave the batch-norm moving averages, which inference uses, unsettled.
    config = TrainConfig(**{**CONFIG, "learning_rate": 1e-2, "augment": False}, steps_per_epoch=20, epochs=3, patience=5)
    result = train(train_data, train_data, config, tmp_path, tracking=False)
    losses = [epoch["loss"] for epoch in result.history]
    assert result.step == 60 and len(losses) == 3
    assert losses[-1] < losses[0] * 0.8, losses
    model = load_keras_model(result.model_path)
    x = model.predict(train_data.x[np.isin(train_data.labels, [0, 1])].astype(np.float32), verbose=0)
    y = train_data.labels[np.isin(train_data.labels, [0, 1])]
    sims = x @ x.T
    same = (y[:, None] == y[None, :]) & ~np.eye(len(y), dtype=bool)
    different = y[:, None] != y[None, :]
    assert sims[same].mean() > sims[different].mean() + 0.3, (sims[same].mean(), sims[different].mean())


def test_too_few_identities_is_refused_before_any_model_is_built(crops, tmp_path):
    train_data, val_data = crops
    one = train_data.subset(np.flatnonzero(train_data.labels == 0))
    began = time.perf_counter()
    with pytest.raises(TrainingDataError, match="too little to train on"):
        train(one, val_data, TrainConfig(**CONFIG), tmp_path, tracking=False)
    assert time.perf_counter() - began < 2
    assert not (tmp_path / "checkpoints").exists()


TRAIN_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from components.train.data import LabelledFaces
    from components.train.loop import TrainConfig, train
    data = np.load(sys.argv[1])
    make = lambda p: LabelledFaces(data[p + "_x"], data[p + "_y"], [str(k) for k in range(int(data[p + "_y"].max()) + 1)])
    config = TrainConfig(**{CONFIG!r}, steps_per_epoch=6, epochs=3, patience=5, checkpoint_every=2)
    result = train(make("train"), make("val"), config, sys.argv[2], tracking=False,
                   log=lambda line: print(line, flush=True))
    print("FINISHED", result.step, result.resumed_from, flush=True)
""")


def test_resume_after_kill_mid_epoch_then_refuse_a_corrupted_checkpoint(crops, tmp_path):
    train_data, val_data = crops
    arrays = tmp_path / "data.npz"
    np.savez(arrays, train_x=train_data.x, train_y=train_data.labels, val_x=val_data.x, val_y=val_data.labels)
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT.replace("{CONFIG!r}", repr(CONFIG)))
    workdir = tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    child = subprocess.Popen([sys.executable, str(script), str(arrays), str(workdir)], env=env, cwd=PROJECT_ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        # Kill once the first mid-epoch checkpoint (step 2 of a 6-step epoch) is on disk.
        while time.time() < deadline and not (workdir / "checkpoints" / "ckpt-00000002" / "MANIFEST.json").exists():
            assert child.poll() is None, child.stdout.read()
            time.sleep(0.05)
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    saved = sorted(int(p.name.split("-")[1]) for p in (workdir / "checkpoints").glob("ckpt-*"))
    assert saved and saved[-1] < 18, "killed before the end"

    config = TrainConfig(**CONFIG, steps_per_epoch=6, epochs=3, patience=5, checkpoint_every=2)
    val = LabelledFaces(val_data.x, val_data.labels, ["0", "1"])
    train_run = LabelledFaces(train_data.x, train_data.labels, [str(k) for k in range(4)])
    lines = []
    result = train(train_run, val, config, workdir, tracking=False, log=lines.append)
    assert result.resumed_from == saved[-1]
    assert lines[0].startswith(f"resumed from ckpt-{saved[-1]:08d} at step {saved[-1]}")
    assert result.step == 18
    assert [epoch["epoch"] for epoch in result.history] == [1, 2, 3]
    assert [epoch["step"] for epoch in result.history] == [6, 12, 18]

    # Damage the newest checkpoint: training refuses it, with a reason, and loads nothing.
    newest = sorted((workdir / "checkpoints").glob("ckpt-*"))[-1]
    blob = bytearray((newest / "network.npz").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (newest / "network.npz").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="network.npz is corrupted"):
        train(train_run, val, config, workdir, tracking=False)


def test_damaged_model_file_is_refused(tmp_path):
    damaged = tmp_path / "model.keras"
    damaged.write_bytes((PROJECT_ROOT / "models" / "face_recognition_net.keras").read_bytes()[:4096])
    with pytest.raises(CheckpointError, match="not a loadable Keras model"):
        load_keras_model(damaged)
    with pytest.raises(CheckpointError, match="no such model file"):
        load_keras_model(tmp_path / "absent.keras")


def test_mixed_precision_path_runs_with_a_center_loss(crops, tmp_path):
    """The GPU recipe (mixed_float16 + loss scaling) on the CPU: float16 network, float32 loss head."""
    import keras

    train_data, val_data = crops
    config = TrainConfig(**{**CONFIG, "loss": "center"}, steps_per_epoch=3, epochs=1, mixed_precision="on")
    try:
        result = train(train_data, val_data, config, tmp_path, tracking=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert result.step == 3 and np.isfinite(result.history[0]["loss"])
    model = load_keras_model(result.model_path)
    assert any(layer.dtype_policy.name == "mixed_float16" for layer in model.layers)


MIRRORED_SCRIPT = textwrap.dedent("""
    import sys
    import tempfile
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from components.train.data import LabelledFaces
    from components.train.loop import TrainConfig, train
    data = np.load(sys.argv[1])
    make = lambda p: LabelledFaces(data[p + "_x"], data[p + "_y"], [str(k) for k in range(int(data[p + "_y"].max()) + 1)])
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    config = TrainConfig(network="small", loss="center", identities_per_batch=4, faces_per_identity=2,
                         steps_per_epoch=3, epochs=1, tsne_faces=10)
    result = train(make("train"), make("val"), config, tempfile.mkdtemp(), tracking=False, strategy=strategy)
    print("REPLICAS", strategy.num_replicas_in_sync, "STEPS", result.step, "LOSS", result.history[0]["loss"])
""")


def test_mirrored_strategy_path_over_two_logical_cpus(crops, tmp_path):
    """The multi-GPU code path (per-replica step, all-reduce, centre update per replica) without a GPU."""
    train_data, val_data = crops
    arrays = tmp_path / "data.npz"
    np.savez(arrays, train_x=train_data.x, train_y=train_data.labels, val_x=val_data.x, val_y=val_data.labels)
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, str(script), str(arrays)], env=env, cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("REPLICAS"))
    _, replicas, _, steps, _, loss = line.split()
    assert (replicas, steps) == ("2", "3") and np.isfinite(float(loss))


def test_self_labels_from_a_real_identity_store(crops, tmp_path):
    """Store -> life cycle -> identities -> from_store: crops, labels, cannot-link from a shared photo."""
    from PIL import Image

    from components.embed import Embedder
    from components.identities import IdentityStore, NewFace
    from components.identities.lifecycle import update_identities
    from components.train.data import from_store

    train_data, _ = crops
    settings = load_settings()
    embedder = Embedder(settings.model_path)
    vectors = embedder.embed(train_data.x)
    store = IdentityStore(f"sqlite:///{tmp_path / 'faces.db'}")

    def face(row, index):
        path = tmp_path / f"crop_{row}.png"
        Image.fromarray(train_data.x[row]).save(path)
        return NewFace(index, (0.0, 0.0, 100.0, 100.0), np.zeros((5, 2)), 0.99, 1.0, [], vectors[row],
                       embedder.version, str(path), train_data.classes[train_data.labels[row]])

    first_a = int(np.flatnonzero(train_data.labels == 0)[0])
    first_b = int(np.flatnonzero(train_data.labels == 1)[0])
    # Two people in one photo: a cannot-link pair.
    store.add_image("shared", "shared.jpg", (250, 250), [face(first_a, 0), face(first_b, 1)], "test", None)
    for row in range(len(train_data)):
        if row not in (first_a, first_b):
            store.add_image(f"photo{row}", f"{row}.jpg", (250, 250), [face(row, 0)], "test", None)
    update_identities(store, settings, force_pool=True)

    data, chosen = from_store(store, min_faces=3, min_cohesion=0.8)
    assert len(data.classes) >= 3 and data.x.shape[1:] == (150, 150, 3)
    truth = np.array([train_data.labels[int(Path(p).stem.split("_")[1])] for p in
                      [store_path for store_path in _crop_paths(store, data.face_ids)]])
    for label in np.unique(data.labels):  # each self-labelled identity is (nearly) one person
        values, counts = np.unique(truth[data.labels == label], return_counts=True)
        assert counts.max() / counts.sum() >= 0.8
    kept_rows = {int(Path(p).stem.split("_")[1]) for p in _crop_paths(store, data.face_ids)}
    assert {first_a, first_b} <= kept_rows, "both faces of the shared photo carry labels"
    assert len(data.cannot_link) == 1
    for a, b in data.cannot_link:
        assert data.labels[a] != data.labels[b] and data.photo_ids[a] == data.photo_ids[b]


def _crop_paths(store, face_ids):
    from sqlalchemy import select

    from components.identities import store as db

    with store.session() as session:
        paths = dict(session.execute(select(db.FaceRow.id, db.FaceRow.crop_path)).all())
    return [paths[int(face_id)] for face_id in face_ids]


def test_faces_train_on_an_annotated_folder_registers_a_version(crops, tmp_path, monkeypatch, capsys):
    """`faces train --data <root>/<label>/*.png`, in-process, against a real MLflow store."""
    import json

    from PIL import Image

    from components.cli import main
    from components.embed.thresholds import UncalibratedModelError
    from components.track import registry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    train_data, val_data = crops
    root = tmp_path / "annotated"
    for data in (train_data, val_data):
        for row, label in enumerate(data.labels):
            folder = root / data.classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(data.x[row]).save(folder / f"{row}.png")
    (root / "Lonely_Person").mkdir()
    Image.fromarray(train_data.x[0]).save(root / "Lonely_Person" / "0.png")  # one crop: left out

    code = main(["train", "--data", str(root), "--epochs", "1", "--steps-per-epoch", "3", "--identities-per-batch", "4",
                 "--faces-per-identity", "2", "--held-out-share", "0.34", "--workdir", str(tmp_path / "work"),
                 "--alias", "challenger"])
    assert code == 0
    out, err = capsys.readouterr()
    printed = json.loads(out)
    assert printed["version"] == 1 and printed["steps"] == 3
    assert registry.alias_version("challenger") == 1
    # A new network has no thresholds yet: nothing may use it until `faces models calibrate` fitted them.
    assert "faces models calibrate 1" in err
    with pytest.raises(UncalibratedModelError, match="faces models calibrate 1"):
        registry.resolve("challenger")

    two = tmp_path / "two"
    for name in ("a", "b"):
        (two / name).mkdir(parents=True)
        Image.fromarray(train_data.x[0]).save(two / name / "0.png")
    assert main(["train", "--data", str(two), "--workdir", str(tmp_path / "work2")]) == 2
    assert "too little to train on" in capsys.readouterr().err


@pytest.mark.gpu
def test_mixed_precision_on_a_gpu_learns_and_separates_identities(crops, tmp_path):
    import keras
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("no GPU visible to TensorFlow")
    train_data, _ = crops
    config = TrainConfig(**{**CONFIG, "learning_rate": 1e-2, "augment": False}, steps_per_epoch=20, epochs=3,
                         patience=5, mixed_precision="auto")
    try:
        result = train(train_data, train_data, config, tmp_path, tracking=False)
        assert keras.mixed_precision.global_policy().name == "mixed_float16"  # auto: on with a GPU
    finally:
        keras.mixed_precision.set_global_policy("float32")
    losses = [epoch["loss"] for epoch in result.history]
    assert losses[-1] < losses[0] * 0.8, losses
    x = load_keras_model(result.model_path).predict(train_data.x.astype(np.float32), verbose=0)
    assert x.dtype == np.float32 and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-2)
    same = (train_data.labels[:, None] == train_data.labels[None, :]) & ~np.eye(len(x), dtype=bool)
    sims = x @ x.T
    assert sims[same].mean() > sims[~same & ~np.eye(len(x), dtype=bool)].mean() + 0.3
