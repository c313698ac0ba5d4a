"""face-api.js FaceRecognitionNet (dlib's ResNet-29 face model) as a Keras 3 model.

Keras layer names follow the weight names of the tfjs manifest with ``/``
replaced by ``_`` (Keras forbids ``/``): ``conv64_2_conv1`` holds
``conv64_2/conv1/conv/filters`` folded with ``conv64_2/conv1/scale/*``. Every
layer of a block starts with the block name (``conv64_2_...``), so a stage can
be frozen with ``layer.name.startswith("conv64")``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import keras
import numpy as np
from keras import layers

from components.embed import EMBEDDING_DIM, INPUT_SIZE
from components.embed import weights as weights_lib

MEAN_RGB = (122.782, 117.001, 104.298)

# (block name, output channels, is a down block), in forward order after the stem.
BLOCKS = (
    ("conv32_1", 32, False),
    ("conv32_2", 32, False),
    ("conv32_3", 32, False),
    ("conv64_down", 64, True),
    ("conv64_1", 64, False),
    ("conv64_2", 64, False),
    ("conv64_3", 64, False),
    ("conv128_down", 128, True),
    ("conv128_1", 128, False),
    ("conv128_2", 128, False),
    ("conv256_down", 256, True),
    ("conv256_1", 256, False),
    ("conv256_2", 256, False),
    ("conv256_down_out", 256, True),
)


@keras.saving.register_keras_serializable(package="faces")
class ChannelZeroPad(layers.Layer):
    """Appends ``extra`` all-zero channels at the end of the channel axis.

    This is the down blocks' shortcut when the block doubles the channels
    (face-api.js concatenates zeros rather than using a projection).
    """

    def __init__(self, extra: int, **kwargs):
        super().__init__(**kwargs)
        self.extra = int(extra)

    def call(self, inputs):
        return keras.ops.pad(inputs, [[0, 0], [0, 0], [0, 0], [0, self.extra]])

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] + self.extra)

    def get_config(self):
        return {**super().get_config(), "extra": self.extra}


def _fold_conv(weights: dict, prefix: str) -> list[np.ndarray]:
    """Returns ``[kernel, bias]`` with the per-channel scale layer folded in.

    face-api.js computes ``(conv(x, k) + b) * w + s``, which equals
    ``conv(x, k * w) + (b * w + s)``: one conv instead of conv + affine.
    """
    k = weights[f"{prefix}/conv/filters"].astype(np.float64)
    b = weights[f"{prefix}/conv/bias"].astype(np.float64)
    w = weights[f"{prefix}/scale/weights"].astype(np.float64)
    s = weights[f"{prefix}/scale/biases"].astype(np.float64)
    return [(k * w).astype(np.float32), (b * w + s).astype(np.float32)]


def _conv(x, filters, kernel, name, *, strides=1, padding="same", relu=True):
    return layers.Conv2D(
        filters, kernel, strides=strides, padding=padding, activation="relu" if relu else None, name=name
    )(x)


def _residual(x, name, filters):
    out = _conv(x, filters, 3, f"{name}_conv1")
    out = _conv(out, filters, 3, f"{name}_conv2", relu=False)
    out = layers.Add(name=f"{name}_add")([out, x])
    return layers.ReLU(name=f"{name}_relu")(out)


def _residual_down(x, name, filters):
    out = _conv(x, filters, 3, f"{name}_conv1", strides=2, padding="valid")
    out = _conv(out, filters, 3, f"{name}_conv2", relu=False)

    shortcut = layers.AveragePooling2D(2, strides=2, padding="valid", name=f"{name}_pool")(x)
    if shortcut.shape[-1] != filters:
        shortcut = ChannelZeroPad(filters - shortcut.shape[-1], name=f"{name}_pad_channels")(shortcut)
    if shortcut.shape[1:3] != out.shape[1:3]:
        # On odd sizes the 'valid' stride-2 conv loses one more row/col than the
        # pool; face-api.js appends a zero row at the bottom and column at the right.
        out = layers.ZeroPadding2D(((0, 1), (0, 1)), name=f"{name}_pad_spatial")(out)
    out = layers.Add(name=f"{name}_add")([out, shortcut])
    return layers.ReLU(name=f"{name}_relu")(out)


def build_face_recognition_net(weights: dict[str, np.ndarray] | None = None) -> keras.Model:
    """Builds FaceRecognitionNet, optionally loading face-api.js weights into it.

    Args:
        weights: Output of ``load_manifest_weights``; ``None`` leaves the
            layers randomly initialised (for tests and shape checks).

    Returns:
        A model mapping ``(N, 150, 150, 3)`` float32 RGB in [0, 255] to
        ``(N, 128)`` L2-normalised embeddings.

    Raises:
        KeyError: If ``weights`` lacks a tensor the network needs.
    """
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), dtype="float32", name="rgb")
    x = layers.Normalization(mean=list(MEAN_RGB), variance=[255.0**2] * 3, name="normalize")(inputs)
    x = _conv(x, 32, 7, "conv32_down_conv", strides=2, padding="valid")
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="conv32_down_pool")(x)
    for name, filters, down in BLOCKS:
        x = (_residual_down if down else _residual)(x, name, filters)
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    x = layers.Dense(EMBEDDING_DIM, use_bias=False, name="fc")(x)
    outputs = layers.UnitNormalization(name="l2norm")(x)
    model = keras.Model(inputs, outputs, name="face_recognition_net")

    if weights is not None:
        model.get_layer("conv32_down_conv").set_weights(_fold_conv(weights, "conv32_down"))
        for name, _, _ in BLOCKS:
            for conv in ("conv1", "conv2"):
                model.get_layer(f"{name}_{conv}").set_weights(_fold_conv(weights, f"{name}/{conv}"))
        model.get_layer("fc").set_weights([weights["fc"]])
    return model


def sidecar_path(out_path: Path) -> Path:
    """Returns where ``convert`` records the provenance of ``out_path``."""
    return Path(out_path).with_suffix(".sha256.json")


def _expected_provenance() -> dict:
    return {
        "source": weights_lib.TARBALL_URL,
        weights_lib.BIN_NAME: weights_lib.BIN_SHA256,
        weights_lib.MANIFEST_NAME: weights_lib.MANIFEST_SHA256,
    }


def _is_converted(out_path: Path) -> bool:
    sidecar = sidecar_path(out_path)
    if not (out_path.exists() and sidecar.exists()):
        return False
    try:
        recorded = json.loads(sidecar.read_text())
    except ValueError:
        return False
    expected = {**_expected_provenance(), "model_sha256": weights_lib.sha256_file(out_path)}
    return all(recorded.get(key) == value for key, value in expected.items())


def convert(cache_dir: Path, out_path: Path) -> Path:
    """Builds the Keras model from the verified face-api.js weights and saves it.

    Skips the work when ``out_path`` exists and its sidecar
    (``sidecar_path(out_path)``) says it was built from the pinned weights and
    still has the recorded sha256.

    Args:
        cache_dir: Weights cache, passed to ``fetch_weights``.
        out_path: Destination ``.keras`` file.

    Returns:
        ``out_path``.

    Raises:
        WeightsChecksumError: If the downloaded weights do not verify.
    """
    out_path = Path(out_path)
    if _is_converted(out_path):
        return out_path

    bin_path, manifest_path = weights_lib.fetch_weights(cache_dir)
    model = build_face_recognition_net(weights_lib.load_manifest_weights(bin_path, manifest_path))

    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Keras picks the format from the suffix, so the temp name must end in .keras.
    fd, tmp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.stem}.", suffix=".keras")
    os.close(fd)
    tmp = Path(tmp_name)
    sidecar = sidecar_path(out_path)
    try:
        model.save(tmp)
        tmp.chmod(0o644)  # mkstemp creates 0600
        provenance = {**_expected_provenance(), "model_sha256": weights_lib.sha256_file(tmp)}
        os.replace(tmp, out_path)
        # The sidecar goes last: a model without a matching sidecar is rebuilt.
        sidecar_tmp = sidecar.with_name(f".{sidecar.name}.part")
        sidecar_tmp.write_text(json.dumps(provenance, indent=2) + "\n")
        os.replace(sidecar_tmp, sidecar)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path
