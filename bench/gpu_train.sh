#!/usr/bin/env bash
# Train Inception-ResNet-v1 for a fixed number of steps on a lent GPU machine, with mixed
# precision (and MirroredStrategy over every GPU), through the project's own training loop
# (components.train.loop); print images/s and GPU memory.
#
#   bash bench/gpu_train.sh                 # 300 timed steps, batch 128 (32 identities x 4), synthetic crops
#   STEPS=500 BATCH_IDS=64 bash bench/gpu_train.sh
#   DATA=lfw bash bench/gpu_train.sh        # real LFW crops from bench/cache/lfw_faces (carry it along)
#
# Installs into .venv-gpu (tensorflow[and-cuda] 2.21 + what the loop imports) unless a
# Python with a GPU-enabled TensorFlow 2.21 is already there. A machine without internet
# access needs a wheelhouse: WHEELHOUSE=/path/to/wheels bash bench/gpu_train.sh.
# Writes the figures to bench/results/gpu_train.json (and $OUT/gpu_train.json when $OUT is set).
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS="${STEPS:-300}"            # timed steps (after WARMUP untimed ones: tracing, autotuning)
WARMUP="${WARMUP:-30}"
BATCH_IDS="${BATCH_IDS:-32}"     # identities per batch (P); K faces each
FACES_PER_ID="${FACES_PER_ID:-4}"
LOSS="${LOSS:-center}"           # the thesis's final choice: softmax + center loss
DATA="${DATA:-synthetic}"        # synthetic | lfw
VENV="${VENV:-.venv-gpu}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || {
  echo "no NVIDIA GPU visible (nvidia-smi failed); this script is for a GPU machine" >&2; exit 2; }

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<'PYCHECK' 2>/dev/null; then PY="$VENV/bin/python"; fi
import sys, tensorflow as tf
sys.exit(0 if tf.__version__.startswith("2.21") and tf.config.list_physical_devices("GPU") else 1)
PYCHECK
fi
if [ -z "$PY" ]; then
  python3 -m venv "$VENV"
  PIP=("$VENV/bin/pip" install --quiet --disable-pip-version-check)
  if [ -n "${WHEELHOUSE:-}" ]; then PIP+=(--no-index --find-links "$WHEELHOUSE"); fi
  # tensorflow[and-cuda] pulls the CUDA/cuDNN wheels TF 2.21 was built against; keras 3.15
  # and the rest match requirements/lock.txt (tensorflow-cpu there is the CPU build of the same TF).
  "${PIP[@]}" "tensorflow[and-cuda]==2.21.*" "keras==3.15.*" "numpy>=2,<2.5" pyyaml scikit-learn matplotlib pillow \
    sqlalchemy tqdm
  PY="$VENV/bin/python"
fi
"$PY" -c "import tensorflow as tf; print('TensorFlow', tf.__version__, 'GPUs:', tf.config.list_physical_devices('GPU'))"

export STEPS WARMUP BATCH_IDS FACES_PER_ID LOSS DATA TF_CPP_MIN_LOG_LEVEL=2
"$PY" - <<'PYTRAIN'
import json, os, platform, shutil, subprocess, tempfile, time
from pathlib import Path

import numpy as np
import tensorflow as tf

from components.train.data import LabelledFaces
from components.train.loop import TrainConfig, train

steps, warmup = int(os.environ["STEPS"]), int(os.environ["WARMUP"])
p, k = int(os.environ["BATCH_IDS"]), int(os.environ["FACES_PER_ID"])
rng = np.random.default_rng(0)
if os.environ["DATA"] == "lfw":
    folder = next(Path("bench/cache/lfw_faces").glob("*/13233_*"))
    crops = np.load(folder / "crops.npy", mmap_mode="r")
    meta = np.load(folder / "meta.npz")
    from components.datasets.lfw import list_identities
    names = np.array([n for n, paths in list_identities("data/lfw").items() for _ in paths])
    person = names[meta["photo"]][meta["is_main"]]
    rows = np.flatnonzero(meta["is_main"])
    keys, counts = np.unique(person, return_counts=True)
    keep = np.isin(person, keys[counts >= 4])
    classes = sorted(set(person[keep]))
    x = np.asarray(crops[rows[keep]])
    y = np.searchsorted(classes, person[keep])
else:
    classes = [str(i) for i in range(512)]
    y = np.repeat(np.arange(512), 8)
    x = rng.integers(0, 256, size=(len(y), 150, 150, 3), dtype=np.uint8)
data = LabelledFaces(x, y, [str(c) for c in classes])
held = int(len(classes) * 0.9)
train_rows, val_rows = np.flatnonzero(y < held), np.flatnonzero(y >= held)
val_rows = val_rows[:512]

times = []
config = TrainConfig(network="inception_resnet_v1", loss=os.environ["LOSS"], identities_per_batch=p,
                     faces_per_identity=k, steps_per_epoch=steps + warmup, epochs=1, checkpoint_every=10**9,
                     mixed_precision="on", augment=True, tsne_faces=200)
began = time.perf_counter()
result = train(data.subset(train_rows), data.subset(val_rows), config, tempfile.mkdtemp(prefix="gpu_train_"),
               tracking=False, register=False, on_step=lambda step, loss: times.append(time.perf_counter()))
timed = times[warmup:]
images_per_s = (len(timed) - 1) * p * k / (timed[-1] - timed[0])
memory = {}
for i, gpu in enumerate(tf.config.list_physical_devices("GPU")):
    info = tf.config.experimental.get_memory_info(f"GPU:{i}")
    memory[f"GPU:{i}"] = {"peak_gib": round(info["peak"] / 2**30, 2), "current_gib": round(info["current"] / 2**30, 2)}
smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.used,memory.total", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip() if shutil.which("nvidia-smi") else None
out = {"benchmark": "gpu-train", "command": "bash bench/gpu_train.sh", "network": "inception_resnet_v1",
       "loss": os.environ["LOSS"], "data": os.environ["DATA"], "mixed_precision": True,
       "replicas": len(tf.config.list_physical_devices("GPU")) or 1, "batch": p * k, "timed_steps": len(timed) - 1,
       "images_per_s": round(images_per_s, 1), "tf_memory": memory, "nvidia_smi": smi,
       "final_loss": result.history[-1]["loss"] if result.history else None,
       "seconds_total": round(time.perf_counter() - began, 1), "tensorflow": tf.__version__,
       "machine": platform.platform()}
print(json.dumps(out, indent=2))
for target in filter(None, ["bench/results/gpu_train.json", os.environ.get("OUT") and f"{os.environ['OUT']}/gpu_train.json"]):
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    Path(target).write_text(json.dumps(out, indent=2))
print(f"images/s: {out['images_per_s']}  peak GPU memory: {memory}")
PYTRAIN
