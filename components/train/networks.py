"""Embedding networks for training: the thesis's Inception-ResNets, the engine's dlib-ResNet, a tiny CPU net.

``make_network(name, embedding_dim, input_size, **kw)`` returns a ``keras.Model`` from
float32 RGB crops in [0, 255], shape ``(input_size, input_size, 3)``, to L2-normalised
embeddings ``(N, embedding_dim)`` (float32 even under mixed precision).

Inception-ResNet blocks follow Szegedy et al. 2016 as the thesis describes them: each
residual branch ends in a linear 1x1 convolution, is multiplied by a residual scale
(0.17 / 0.10 / 0.20 for the A / B / C blocks, within the thesis's 0.1-0.3) *before* the
addition, and the sum goes through a ReLU only: batch normalisation sits on the
convolutions of the branches, never on the summation. v1 is FaceNet's variant (the
davidsandberg/facenet layout), v2 the wider one with the mixed stem.

Every layer is a built-in Keras layer or a registered ``components.train.layers`` layer,
so every network saves to and loads from ``.keras`` with no Lambda and no custom_objects.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from components.train.layers import RegionLocallyConnected2D

__all__ = ["NETWORKS", "DLIB_STAGES", "make_network", "freeze_dlib_stages"]

NETWORKS = ("small", "inception_resnet_v1", "inception_resnet_v2", "dlib_resnet")

# Layer-name prefixes of the dlib-ResNet stages, lowest first; the 7x7 stem conv
# ("conv32_down_conv") belongs to the first stage.
DLIB_STAGES = ("conv32", "conv64", "conv128", "conv256")

# (A, B, C) residual scales and full repeat counts.
RESIDUAL_SCALES = (0.17, 0.10, 0.20)
REPEATS = {"inception_resnet_v1": (5, 10, 5), "inception_resnet_v2": (10, 20, 10)}


def make_network(name: str, embedding_dim: int | None = None, input_size: int = 150, **kw) -> keras.Model:
    """Builds an embedding network.

    Args:
        name: One of ``NETWORKS``.
        embedding_dim: Size of the embedding; default 128, or 512 with
            ``extended_head=True`` (the thesis's 512-D fully connected layer).
        input_size: Side of the square RGB input (aligned crops are 150).
        **kw: Options, all optional:
            ``extended_head`` (bool): the fig. 4.9 head instead of pool + dense.
            ``head_channels`` (int, 256): channels of the extended head's layers.
            ``dropout`` (float): before the embedding layer (Inception-ResNets 0.2, else 0).
            ``repeats`` ((int, int, int)): Inception-ResNet A/B/C block counts
            (default 5/10/5 for v1, 10/20/10 for v2; fewer for tests).
            ``widths`` (tuple of int): "small"'s conv widths, one stride-2 conv each
            (default (16, 32, 64, 128)).
            ``pretrained`` (bool, True), ``model_path`` (path), ``freeze_stages``
            (int 0-4): "dlib_resnet" only; see ``freeze_dlib_stages``.

    Returns:
        An uncompiled ``keras.Model`` named after the network.

    Raises:
        ValueError: On an unknown name, an unknown or invalid option, or an input
            size the network cannot take.
        FileNotFoundError: For a pretrained "dlib_resnet" whose model file is missing.
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose one of {', '.join(NETWORKS)}")
    allowed = {"extended_head", "head_channels", "dropout"}
    allowed |= {"small": {"widths"}, "dlib_resnet": {"pretrained", "model_path", "freeze_stages"}}.get(
        name, {"repeats"})
    unknown = set(kw) - allowed
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    extended = bool(kw.get("extended_head", False))
    if embedding_dim is None:
        embedding_dim = 512 if extended else 128
    if embedding_dim < 2:
        raise ValueError(f"embedding_dim must be >= 2, got {embedding_dim}")
    head = {
        "embedding_dim": int(embedding_dim),
        "extended": extended,
        "head_channels": int(kw.get("head_channels", 256)),
        "dropout": float(kw.get("dropout", 0.2 if name.startswith("inception") else 0.0)),
        # BN moving statistics: Keras' 0.99 suits long runs (FaceNet uses 0.995); the
        # small net trains for tens of steps, after which 0.99 averages would still
        # be mostly their initial values.
        "bn_momentum": 0.9 if name == "small" else 0.99,
    }
    if name == "small":
        return _small(input_size, tuple(kw.get("widths", (16, 32, 64, 128))), head)
    if name == "dlib_resnet":
        return _dlib_resnet(input_size, head, pretrained=kw.get("pretrained", True),
                            model_path=kw.get("model_path"), freeze_stages=int(kw.get("freeze_stages", 0)))
    repeats = tuple(int(r) for r in kw.get("repeats", REPEATS[name]))
    if len(repeats) != 3 or min(repeats) < 0:
        raise ValueError(f"repeats must be three counts >= 0 (A, B, C blocks), got {kw.get('repeats')!r}")
    if input_size < 75:
        raise ValueError(f"{name} needs input_size >= 75 (stem and two reductions), got {input_size}")
    build = _inception_resnet_v1 if name == "inception_resnet_v1" else _inception_resnet_v2
    return build(input_size, repeats, head)


# --------------------------------------------------------------------------- heads


def _embedding_head(features, head: dict, inputs, model_name: str) -> keras.Model:
    """Feature map -> L2-normalised embedding (plain or the thesis's extended head)."""
    if head["extended"]:
        x = _extended_head(features, head["head_channels"])
    else:
        x = layers.GlobalAveragePooling2D(name="head_pool")(features)
    if head["dropout"] > 0:
        x = layers.Dropout(head["dropout"], name="head_dropout")(x)
    x = layers.Dense(head["embedding_dim"], use_bias=False, name="embedding")(x)
    x = layers.BatchNormalization(momentum=head["bn_momentum"], name="embedding_bn")(x)
    # float32 so that mixed-precision training still returns float32 unit vectors.
    outputs = layers.UnitNormalization(name="l2norm", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=model_name)


def _extended_head(features, channels: int):
    """The thesis's extended head (fig. 4.9): 3x3 conv, locally connected layers, PReLU.

    A 3x3 convolution is followed by three locally connected 3x3 layers whose weights
    are shared in 4x4, then 2x2, then 1x1 blocks of positions (coarse to fully local:
    different face regions get their own filters), each with a per-channel PReLU.
    Every stage is globally average-pooled and the four are concatenated, so the
    fully connected embedding layer after this sees both shared and local features.
    """
    x = layers.Conv2D(channels, 3, padding="same", name="xhead_conv")(features)
    x = layers.PReLU(shared_axes=[1, 2], name="xhead_conv_prelu")(x)
    pooled = [layers.GlobalAveragePooling2D(name="xhead_conv_pool")(x)]
    for region in (4, 2, 1):
        x = RegionLocallyConnected2D(channels, 3, region_size=region, name=f"xhead_lc{region}")(x)
        x = layers.PReLU(shared_axes=[1, 2], name=f"xhead_lc{region}_prelu")(x)
        pooled.append(layers.GlobalAveragePooling2D(name=f"xhead_lc{region}_pool")(x))
    return layers.Concatenate(name="xhead_concat")(pooled)


# --------------------------------------------------------------------------- small


def _small(input_size: int, widths: tuple[int, ...], head: dict) -> keras.Model:
    """A few stride-2 conv + BN + ReLU layers: trains in seconds on a CPU (tests, benchmarks)."""
    if not widths or min(widths) < 1:
        raise ValueError(f"widths must be positive channel counts, got {widths!r}")
    if input_size < 2 ** len(widths):
        raise ValueError(f"small: input_size {input_size} too small for {len(widths)} stride-2 layers")
    inputs = keras.Input((input_size, input_size, 3), dtype="float32", name="rgb")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inputs)
    for i, width in enumerate(widths, start=1):
        x = _conv_bn(x, width, 3, f"block{i}", strides=2, momentum=head["bn_momentum"])
    return _embedding_head(x, head, inputs, "small")


# --------------------------------------------------------------------------- Inception-ResNet


def _conv_bn(x, filters, kernel, name, strides=1, padding="same", activation="relu", momentum=0.99):
    x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=momentum, epsilon=1e-3, name=f"{name}_bn")(x)
    return layers.Activation(activation, name=f"{name}_act")(x) if activation else x


def _residual(x, branches: list, scale: float, name: str, activate: bool = True):
    """Concat branches -> linear 1x1 up-projection -> scale -> add -> (ReLU). No BN on the sum."""
    mixed = layers.Concatenate(name=f"{name}_mixed")(branches) if len(branches) > 1 else branches[0]
    up = layers.Conv2D(x.shape[-1], 1, use_bias=True, name=f"{name}_up")(mixed)
    up = layers.Rescaling(scale, name=f"{name}_scale")(up)
    out = layers.Add(name=f"{name}_add")([x, up])
    return layers.Activation("relu", name=f"{name}_relu")(out) if activate else out


def _block35(x, name, scale, widths):
    b0 = _conv_bn(x, widths[0], 1, f"{name}_b0")
    b1 = _conv_bn(_conv_bn(x, widths[1], 1, f"{name}_b1a"), widths[1], 3, f"{name}_b1b")
    b2 = _conv_bn(x, widths[2][0], 1, f"{name}_b2a")
    b2 = _conv_bn(b2, widths[2][1], 3, f"{name}_b2b")
    b2 = _conv_bn(b2, widths[2][2], 3, f"{name}_b2c")
    return _residual(x, [b0, b1, b2], scale, name)


def _block17(x, name, scale, widths):
    b0 = _conv_bn(x, widths[0], 1, f"{name}_b0")
    b1 = _conv_bn(x, widths[1][0], 1, f"{name}_b1a")
    b1 = _conv_bn(b1, widths[1][1], (1, 7), f"{name}_b1b")
    b1 = _conv_bn(b1, widths[1][2], (7, 1), f"{name}_b1c")
    return _residual(x, [b0, b1], scale, name)


def _block8(x, name, scale, widths, activate=True):
    b0 = _conv_bn(x, widths[0], 1, f"{name}_b0")
    b1 = _conv_bn(x, widths[1][0], 1, f"{name}_b1a")
    b1 = _conv_bn(b1, widths[1][1], (1, 3), f"{name}_b1b")
    b1 = _conv_bn(b1, widths[1][2], (3, 1), f"{name}_b1c")
    return _residual(x, [b0, b1], scale, name, activate=activate)


def _repeat(x, block, count, prefix, scale, widths, last_linear=False):
    for i in range(1, count + 1):
        kwargs = {"activate": False} if last_linear and i == count else {}
        x = block(x, f"{prefix}_{i}", scale, widths, **kwargs)
    return x


def _inception_resnet_v1(input_size: int, repeats, head: dict) -> keras.Model:
    """FaceNet's Inception-ResNet-v1: 35x35-style A blocks (256), B (896), C (1792)."""
    inputs = keras.Input((input_size, input_size, 3), dtype="float32", name="rgb")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inputs)
    x = _conv_bn(x, 32, 3, "stem_1", strides=2, padding="valid")
    x = _conv_bn(x, 32, 3, "stem_2", padding="valid")
    x = _conv_bn(x, 64, 3, "stem_3")
    x = layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    x = _conv_bn(x, 80, 1, "stem_4", padding="valid")
    x = _conv_bn(x, 192, 3, "stem_5", padding="valid")
    x = _conv_bn(x, 256, 3, "stem_6", strides=2, padding="valid")
    scale_a, scale_b, scale_c = RESIDUAL_SCALES
    x = _repeat(x, _block35, repeats[0], "block35", scale_a, (32, 32, (32, 32, 32)))
    # Reduction-A (k, l, m, n) = (192, 192, 256, 384).
    r0 = _conv_bn(x, 384, 3, "reduction_a_b0", strides=2, padding="valid")
    r1 = _conv_bn(x, 192, 1, "reduction_a_b1a")
    r1 = _conv_bn(r1, 192, 3, "reduction_a_b1b")
    r1 = _conv_bn(r1, 256, 3, "reduction_a_b1c", strides=2, padding="valid")
    r2 = layers.MaxPooling2D(3, strides=2, name="reduction_a_pool")(x)
    x = layers.Concatenate(name="reduction_a")([r0, r1, r2])
    x = _repeat(x, _block17, repeats[1], "block17", scale_b, (128, (128, 128, 128)))
    r0 = _conv_bn(_conv_bn(x, 256, 1, "reduction_b_b0a"), 384, 3, "reduction_b_b0b", strides=2, padding="valid")
    r1 = _conv_bn(_conv_bn(x, 256, 1, "reduction_b_b1a"), 256, 3, "reduction_b_b1b", strides=2, padding="valid")
    r2 = _conv_bn(x, 256, 1, "reduction_b_b2a")
    r2 = _conv_bn(r2, 256, 3, "reduction_b_b2b")
    r2 = _conv_bn(r2, 256, 3, "reduction_b_b2c", strides=2, padding="valid")
    r3 = layers.MaxPooling2D(3, strides=2, name="reduction_b_pool")(x)
    x = layers.Concatenate(name="reduction_b")([r0, r1, r2, r3])
    x = _repeat(x, _block8, repeats[2], "block8", scale_c, (192, (192, 192, 192)), last_linear=True)
    return _embedding_head(x, head, inputs, "inception_resnet_v1")


def _inception_resnet_v2(input_size: int, repeats, head: dict) -> keras.Model:
    """Inception-ResNet-v2: mixed stem (320), A blocks (320), B (1088), C (2080), 1x1 to 1536."""
    inputs = keras.Input((input_size, input_size, 3), dtype="float32", name="rgb")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inputs)
    x = _conv_bn(x, 32, 3, "stem_1", strides=2, padding="valid")
    x = _conv_bn(x, 32, 3, "stem_2", padding="valid")
    x = _conv_bn(x, 64, 3, "stem_3")
    x = layers.MaxPooling2D(3, strides=2, name="stem_pool1")(x)
    x = _conv_bn(x, 80, 1, "stem_4", padding="valid")
    x = _conv_bn(x, 192, 3, "stem_5", padding="valid")
    x = layers.MaxPooling2D(3, strides=2, name="stem_pool2")(x)
    m0 = _conv_bn(x, 96, 1, "mixed_5b_b0")
    m1 = _conv_bn(_conv_bn(x, 48, 1, "mixed_5b_b1a"), 64, 5, "mixed_5b_b1b")
    m2 = _conv_bn(x, 64, 1, "mixed_5b_b2a")
    m2 = _conv_bn(_conv_bn(m2, 96, 3, "mixed_5b_b2b"), 96, 3, "mixed_5b_b2c")
    m3 = _conv_bn(layers.AveragePooling2D(3, strides=1, padding="same", name="mixed_5b_pool")(x), 64, 1,
                  "mixed_5b_b3")
    x = layers.Concatenate(name="mixed_5b")([m0, m1, m2, m3])
    scale_a, scale_b, scale_c = RESIDUAL_SCALES
    x = _repeat(x, _block35, repeats[0], "block35", scale_a, (32, 32, (32, 48, 64)))
    r0 = _conv_bn(x, 384, 3, "mixed_6a_b0", strides=2, padding="valid")
    r1 = _conv_bn(_conv_bn(x, 256, 1, "mixed_6a_b1a"), 256, 3, "mixed_6a_b1b")
    r1 = _conv_bn(r1, 384, 3, "mixed_6a_b1c", strides=2, padding="valid")
    r2 = layers.MaxPooling2D(3, strides=2, name="mixed_6a_pool")(x)
    x = layers.Concatenate(name="mixed_6a")([r0, r1, r2])
    x = _repeat(x, _block17, repeats[1], "block17", scale_b, (192, (128, 160, 192)))
    r0 = _conv_bn(_conv_bn(x, 256, 1, "mixed_7a_b0a"), 384, 3, "mixed_7a_b0b", strides=2, padding="valid")
    r1 = _conv_bn(_conv_bn(x, 256, 1, "mixed_7a_b1a"), 288, 3, "mixed_7a_b1b", strides=2, padding="valid")
    r2 = _conv_bn(_conv_bn(x, 256, 1, "mixed_7a_b2a"), 288, 3, "mixed_7a_b2b")
    r2 = _conv_bn(r2, 320, 3, "mixed_7a_b2c", strides=2, padding="valid")
    r3 = layers.MaxPooling2D(3, strides=2, name="mixed_7a_pool")(x)
    x = layers.Concatenate(name="mixed_7a")([r0, r1, r2, r3])
    x = _repeat(x, _block8, repeats[2], "block8", scale_c, (192, (192, 224, 256)), last_linear=True)
    x = _conv_bn(x, 1536, 1, "conv_7b")
    return _embedding_head(x, head, inputs, "inception_resnet_v2")


# --------------------------------------------------------------------------- dlib-ResNet


def freeze_dlib_stages(model: keras.Model, freeze_stages: int) -> list[str]:
    """Freezes the lowest ``freeze_stages`` stages of a dlib-ResNet (layers named by stage).

    Args:
        model: A model with the engine network's layer names (``conv32_*`` ...).
        freeze_stages: 0 (train everything) to 4 (every conv stage frozen; only
            the embedding layer trains).

    Returns:
        Names of the layers now frozen.

    Raises:
        ValueError: If ``freeze_stages`` is outside 0-4.
    """
    if not 0 <= freeze_stages <= len(DLIB_STAGES):
        raise ValueError(f"freeze_stages must be 0-{len(DLIB_STAGES)}, got {freeze_stages}")
    prefixes = DLIB_STAGES[:freeze_stages]
    frozen = []
    for layer in model.layers:
        frozen_now = bool(prefixes) and layer.name.startswith(prefixes)
        layer.trainable = not frozen_now
        if frozen_now:
            frozen.append(layer.name)
    return frozen


def _dlib_resnet(input_size: int, head: dict, pretrained: bool, model_path, freeze_stages: int) -> keras.Model:
    """The engine's dlib-ResNet, pretrained by default, with its own or a new head."""
    from components.embed import EMBEDDING_DIM, INPUT_SIZE
    from components.embed.network import build_face_recognition_net

    if input_size != INPUT_SIZE:
        raise ValueError(f"dlib_resnet takes {INPUT_SIZE}x{INPUT_SIZE} crops, got input_size={input_size}")
    if pretrained:
        path = Path(model_path) if model_path else _default_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no pretrained embedder; run `faces setup-model` (or `make setup`)")
        base = keras.saving.load_model(path, compile=False)
    else:
        base = build_face_recognition_net(None)
    if not head["extended"] and head["embedding_dim"] == EMBEDDING_DIM and head["dropout"] == 0.0:
        # Keep the pretrained fc + L2 norm: fine-tuning starts from the engine's embedding.
        # Single tensors, not lists: a list-input model warns on every bare-array call.
        model = keras.Model(base.inputs[0], base.outputs[0], name="dlib_resnet")
    else:
        features = base.get_layer("conv256_down_out_relu").output
        model = _embedding_head(features, head, base.inputs[0], "dlib_resnet")
    freeze_dlib_stages(model, freeze_stages)
    return model


def _default_model_path() -> Path:
    from components.settings import load_settings

    return load_settings().model_path
