"""Training networks: shapes, unit norm, residual scaling, BN placement, the locally connected
layer against NumPy, .keras round trips, frozen stages, and a tiny net that really learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from components.train.layers import RegionLocallyConnected2D  # noqa: E402
from components.train.networks import DLIB_STAGES, make_network  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LFW_IMAGES = PROJECT_ROOT / "data" / "lfw" / "images_deepfunneled"
FEW = {"repeats": (2, 1, 2)}  # two A and C blocks: the last C block is linear, the others not


def rgb(n, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=(n, size, size, 3)).astype(np.float32)


def inbound_layers(model, layer):
    """Layers feeding ``layer`` in ``model``'s graph."""
    node = layer._inbound_nodes[0]
    return [model.get_layer(t._keras_history.operation.name) for t in node.input_tensors]


# --------------------------------------------------------------------------- shapes, norms, structure


@pytest.mark.parametrize("name,kw,size,dim", [
    ("small", {}, 64, 128),
    ("small", {"extended_head": True, "head_channels": 32}, 64, 512),
    ("small", {"embedding_dim": 32, "widths": (8, 16)}, 48, 32),
    ("inception_resnet_v1", FEW, 150, 128),
    ("inception_resnet_v2", FEW, 150, 128),
    ("inception_resnet_v1", {**FEW, "extended_head": True, "head_channels": 64, "embedding_dim": 256}, 150, 256),
    ("dlib_resnet", {"pretrained": False}, 150, 128),
    ("dlib_resnet", {"pretrained": False, "extended_head": True, "head_channels": 32}, 150, 512),
])
def test_output_shape_and_unit_norm(name, kw, size, dim):
    kw = dict(kw)
    embedding_dim = kw.pop("embedding_dim", None)
    model = make_network(name, embedding_dim=embedding_dim, input_size=size, **kw)
    out = model.predict(rgb(3, size), verbose=0)
    assert out.shape == (3, dim)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.abs(out[0] - out[1]).max() > 1e-4, "different inputs must give different embeddings"


@pytest.mark.parametrize("name", ["inception_resnet_v1", "inception_resnet_v2"])
def test_inception_resnet_residuals_are_scaled_and_bn_is_not_on_the_sum(name):
    model = make_network(name, **FEW)
    adds = [layer for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert len(adds) == sum(FEW["repeats"])
    scales = {}
    for add in adds:
        sources = inbound_layers(model, add)
        rescale = [s for s in sources if isinstance(s, keras.layers.Rescaling)]
        assert len(rescale) == 1, f"{add.name}: the residual branch must be scaled before the addition"
        assert 0.1 <= rescale[0].scale <= 0.3
        # The branch's last op is a linear conv with bias: no BN, no activation before scaling.
        (up,) = inbound_layers(model, rescale[0])
        assert isinstance(up, keras.layers.Conv2D) and up.activation is keras.activations.linear
        scales[add.name.split("_")[0]] = rescale[0].scale
    assert scales == {"block35": pytest.approx(0.17), "block17": pytest.approx(0.10), "block8": pytest.approx(0.20)}
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            (source,) = inbound_layers(model, layer)
            assert isinstance(source, (keras.layers.Conv2D, keras.layers.Dense)), \
                f"{layer.name} normalises {source.name}, not a convolution"
    # A and B blocks end in ReLU after the sum; the final C block is linear.
    last = f"block8_{FEW['repeats'][2]}_add"
    for add in adds:
        after = [l for l in model.layers if add in inbound_layers(model, l)]
        relu = [l for l in after if isinstance(l, keras.layers.Activation)]
        assert (not relu) if add.name == last else (len(after) == 1 and relu), add.name


def test_unknown_network_and_options_are_refused():
    with pytest.raises(ValueError, match="unknown network"):
        make_network("resnet1000")
    with pytest.raises(ValueError, match="unknown option"):
        make_network("small", freeze_stages=2)
    with pytest.raises(ValueError, match="input_size"):
        make_network("inception_resnet_v1", input_size=32, **FEW)
    with pytest.raises(ValueError, match="freeze_stages"):
        make_network("dlib_resnet", pretrained=False, freeze_stages=5)


# --------------------------------------------------------------------------- locally connected layer


def reference_region_lc(x, kernel, bias, region, ksize):
    """Loop over output positions: block (i // rh, j // rw)'s kernel on the zero-padded patch."""
    n, h, w, c = x.shape
    pad = ksize // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.zeros((n, h, w, kernel.shape[-1]))
    for i in range(h):
        for j in range(w):
            r, s = i // region[0], j // region[1]
            k = kernel[r, s].reshape(ksize, ksize, c, -1)
            patch = xp[:, i:i + ksize, j:j + ksize, :]
            out[:, i, j] = np.einsum("nabc,abcf->nf", patch, k) + bias[r, s]
    return out


@pytest.mark.parametrize("region,ksize,hw", [(1, 3, (5, 6)), (2, 3, (5, 6)), ((4, 3), 3, (9, 7)),
                                             ((5, 6), 3, (5, 6)), (2, 1, (4, 4)), (3, 5, (6, 6))])
def test_region_locally_connected_matches_numpy(region, ksize, hw):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, *hw, 3)).astype(np.float32)
    layer = RegionLocallyConnected2D(4, ksize, region_size=region)
    layer.build(x.shape)
    kernel = rng.normal(size=layer.kernel.shape).astype(np.float32)
    bias = rng.normal(size=layer.bias.shape).astype(np.float32)
    layer.set_weights([kernel, bias])
    region = (region, region) if isinstance(region, int) else region
    expected = reference_region_lc(x.astype(np.float64), kernel, bias, region, ksize)
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_region_locally_connected_shares_weights_only_inside_a_region():
    layer = RegionLocallyConnected2D(2, 3, region_size=2)
    layer.build((None, 4, 4, 1))
    assert layer.kernel.shape == (2, 2, 9, 2)
    # A constant image: inside a 2x2 block away from borders, outputs match; across blocks they differ.
    out = layer(np.ones((1, 6, 6, 1), np.float32)[:, 1:5, 1:5]).numpy()[0]
    assert not np.allclose(out[1, 1], out[1, 2]), "neighbouring blocks must have their own kernels"
    full = RegionLocallyConnected2D(2, 3, region_size=4)
    full.build((None, 4, 4, 1))
    conv = keras.layers.Conv2D(2, 3, padding="same")
    conv.build((None, 4, 4, 1))
    conv.set_weights([full.kernel.numpy()[0, 0].reshape(3, 3, 1, 2), full.bias.numpy()[0, 0]])
    x = rgb(2, 4)[..., :1]
    np.testing.assert_allclose(full(x).numpy(), conv(x).numpy(), rtol=1e-5, atol=1e-5)


def test_region_locally_connected_refuses_bad_arguments():
    with pytest.raises(ValueError):
        RegionLocallyConnected2D(4, 2)
    with pytest.raises(ValueError):
        RegionLocallyConnected2D(4, 3, region_size=0)


# --------------------------------------------------------------------------- .keras round trips


@pytest.mark.parametrize("name,kw,size", [
    ("small", {"extended_head": True, "head_channels": 16}, 48),
    # The Inception-ResNets write 80-120 MB each even with one block per stage.
    pytest.param("inception_resnet_v1", {"repeats": (1, 1, 1), "extended_head": True, "head_channels": 32}, 150,
                 marks=pytest.mark.slow),
    pytest.param("inception_resnet_v2", {"repeats": (1, 1, 1)}, 150, marks=pytest.mark.slow),
    ("dlib_resnet", {"pretrained": False, "freeze_stages": 2}, 150),
])
def test_keras_round_trip(tmp_path, name, kw, size):
    model = make_network(name, input_size=size, **kw)
    x = rgb(2, size, seed=3)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert [l.trainable for l in loaded.layers] == [l.trainable for l in model.layers]
    assert not any(type(l).__name__ == "Lambda" for l in loaded.layers)


# --------------------------------------------------------------------------- freezing


@pytest.mark.parametrize("k", [0, 2, 4])
def test_freeze_stages_freezes_exactly_the_lower_stages(k):
    model = make_network("dlib_resnet", pretrained=False, freeze_stages=k)
    frozen_prefixes = DLIB_STAGES[:k]
    for layer in model.layers:
        if layer.weights:
            assert layer.trainable == (not layer.name.startswith(frozen_prefixes) if k else True), layer.name
    before = {w.path: w.numpy().copy() for w in model.weights}
    x = rgb(4, 150, seed=5)
    optimizer = keras.optimizers.SGD(0.1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True)[:, :4])
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_weights), model.trainable_weights))
    for w in model.weights:
        changed = not np.array_equal(before[w.path], w.numpy())
        in_frozen_stage = bool(frozen_prefixes) and w.path.split("/")[0].startswith(frozen_prefixes)
        assert changed != in_frozen_stage, f"{w.path}: changed={changed}, frozen stage={in_frozen_stage}"


@pytest.mark.slow
def test_pretrained_dlib_resnet_is_the_engine_network():
    from components.embed import Embedder
    from components.settings import load_settings

    path = load_settings().model_path
    if not path.exists():
        pytest.skip(f"no converted embedder at {path}")
    model = make_network("dlib_resnet", freeze_stages=3)
    x = rgb(2, 150, seed=9)
    np.testing.assert_allclose(model.predict(x, verbose=0), Embedder(path).model.predict(x, verbose=0), atol=1e-6)
    assert [w.path.split("/")[0] for w in model.trainable_weights][:1] == ["conv256_down_conv1"]


# --------------------------------------------------------------------------- it learns


def two_people(n_each=40, size=48):
    """Centre crops of two LFW people's deep-funneled photos (already roughly aligned), downscaled."""
    from PIL import Image

    people = ("George_W_Bush", "Colin_Powell")
    faces, labels = [], []
    for label, person in enumerate(people):
        paths = sorted((LFW_IMAGES / person).glob("*.jpg"))[:n_each]
        if len(paths) < n_each:
            pytest.skip(f"LFW photos of {person} not found under {LFW_IMAGES} (run make setup)")
        for path in paths:
            image = Image.open(path).convert("RGB").crop((70, 70, 180, 180)).resize((size, size))
            faces.append(np.asarray(image, dtype=np.float32))
            labels.append(label)
    return np.stack(faces), np.array(labels)


def test_small_backbone_learns_to_separate_two_real_identities():
    from components.train.losses import make_loss

    faces, labels = two_people()
    rng = np.random.default_rng(0)
    test_idx = np.concatenate([np.flatnonzero(labels == c)[-10:] for c in (0, 1)])
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    keras.utils.set_random_seed(0)
    model = make_network("small", embedding_dim=16, input_size=48, widths=(16, 32, 32))
    head = make_loss("center", 2, 16, alpha=0.5, lambda_=0.1)
    optimizer = keras.optimizers.Adam(3e-3)
    weights = model.trainable_weights + head.trainable_weights

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            emb = model(x, training=True)
            loss = head(emb, y)
        optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
        return loss, emb

    def full_loss():
        return float(head(model(faces[train_idx], training=False), labels[train_idx]))

    initial = full_loss()
    for _ in range(40):
        batch = rng.choice(train_idx, 16, replace=False)
        x = faces[batch][:, :, ::-1] if rng.random() < 0.5 else faces[batch]  # flip half the batches
        _, emb = step(tf.constant(x), tf.constant(labels[batch]))
        head.post_step(emb, labels[batch])
    final = full_loss()
    assert final < 0.7 * initial, f"loss did not fall: {initial:.3f} -> {final:.3f}"

    def separation(idx):
        emb = model.predict(faces[idx], verbose=0)
        sim = emb @ emb.T
        same = labels[idx][:, None] == labels[idx][None, :]
        off = ~np.eye(len(idx), dtype=bool)
        return sim[same & off].mean() - sim[~same].mean(), emb

    train_gap, _ = separation(train_idx)
    assert train_gap > 0.5, f"training faces of the two people not separated (mean cos gap {train_gap:.2f})"
    # Held-out photos of the same two people: nearest training centroid.
    train_emb = model.predict(faces[train_idx], verbose=0)
    centroids = np.stack([train_emb[labels[train_idx] == c].mean(0) for c in (0, 1)])
    held_out = model.predict(faces[test_idx], verbose=0)
    accuracy = np.mean(np.argmax(held_out @ centroids.T, axis=1) == labels[test_idx])
    assert accuracy >= 0.75, f"held-out photos: {accuracy:.2f} nearest-centroid accuracy"


# --------------------------------------------------------------------------- synthetic gradients


def blobs(n, classes=3, size=24, seed=0):
    """Noisy copies of one random image per class: an easy task any working trainer learns."""
    rng = np.random.default_rng(seed)
    protos = rng.uniform(0, 255, size=(classes, size, size, 3))
    labels = np.arange(n) % classes
    return np.clip(protos[labels] + rng.normal(0, 50, size=(n, size, size, 3)), 0, 255).astype(np.float32), labels


def test_split_network_reproduces_the_whole():
    from components.train.synthetic_gradients import split_network

    model = make_network("small", embedding_dim=8, input_size=32, widths=(8, 16, 16))
    lower, upper = split_network(model, "block2_act")
    x = rgb(3, 32)
    assert lower.output.shape[1:] == (8, 8, 16)
    np.testing.assert_allclose(upper(lower(x)).numpy(), model(x).numpy(), atol=1e-6)
    assert len(lower.weights) + len(upper.weights) == len(model.weights)


def test_synthetic_gradient_trainer_learns_the_gradient_and_the_task():
    from components.train.losses import make_loss
    from components.train.synthetic_gradients import SyntheticGradientTrainer, split_network

    # Six noisy classes: hard enough that the loss, and so the true gradient, does not vanish.
    x, y = blobs(96, classes=6)
    x = np.clip(x + np.random.default_rng(0).normal(0, 100, x.shape), 0, 255).astype(np.float32)
    keras.utils.set_random_seed(1)
    model = make_network("small", embedding_dim=8, input_size=24, widths=(8, 16, 16))
    lower, upper = split_network(model, "block2_act")
    trainer = SyntheticGradientTrainer(lower, upper, make_loss("softmax", 6, 8), 6, learning_rate=3e-3,
                                       predictor_hidden=16)
    first_lower = [w.numpy().copy() for w in lower.trainable_weights]
    rng = np.random.default_rng(0)
    for _ in range(60):
        batch = rng.choice(len(x), 16, replace=False)
        trainer.step(tf.constant(x[batch]), tf.constant(y[batch]))
    # The zero-initialised predictor starts at zero; it must learn the true gradient's direction
    # (an uninformed guess of these 1,024-D gradients has a cosine of about 0 +- 0.03).
    assert trainer.predictor_cosines[0] == 0.0
    assert np.mean(trainer.predictor_cosines[-30:]) > 0.1, trainer.predictor_cosines[-30:]
    assert any(not np.allclose(a, w.numpy()) for a, w in zip(first_lower, lower.trainable_weights)), \
        "the lower block must be updated from the synthetic gradient"
    assert np.mean(trainer.losses[-10:]) < 0.7 * trainer.losses[0]


def test_compare_backprop_and_synthetic_reports_both_modes():
    from components.train.synthetic_gradients import compare_backprop_and_synthetic

    x, y = blobs(120, seed=2)
    vx, vy = blobs(60, seed=2)  # same class images, fresh noise
    result = compare_backprop_and_synthetic(x, y, vx[30:], vy[30:], steps=30, batch_size=16, widths=(8, 16, 16),
                                            embedding_dim=8, learning_rate=3e-3)
    for mode in ("backprop", "synthetic_gradients"):
        assert result[mode]["median_step_ms"] > 0
        assert result[mode]["held_out_identification_accuracy"] > 0.6, result[mode]
        assert result[mode]["train_loss_last_10pct"] < result[mode]["train_loss_first"]
    assert result["step_time_ratio_sg_over_bp"] > 0
    with pytest.raises(ValueError, match="cut_after"):
        compare_backprop_and_synthetic(x, y, vx, vy, steps=2, widths=(8, 16), cut_after=2)
