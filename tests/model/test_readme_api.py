"""The README's verb-API example runs as written, on real LFW photos.

The example is read from README.md (section "The verb API for your own code") and
executed unchanged in a temporary folder that holds the files it names: photo.jpg
(one LFW photo) and a.jpg / b.jpg (two photos of the same person, a matched pair of
LFW View 2 fold 1).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
LFW_ROOT = REPO / "data" / "lfw"
PHOTO = LFW_ROOT / "images_deepfunneled" / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"
SECTION = "The verb API for your own code"
VERBS = ("align", "detect", "distance", "embed", "verify")


def readme_example() -> str:
    """The first python code block after the section's opening sentence."""
    text = README.read_text()
    start = text.index(SECTION)
    match = re.compile(r"```python\n(.*?)```", re.DOTALL).search(text, start)
    assert match, f"no python code block after {SECTION!r} in README.md"
    return match.group(1)


def test_the_example_imports_the_verbs_from_faces():
    code = readme_example()
    assert re.search(r"^import faces$", code, re.MULTILINE), code
    assert "import components as" not in code


def test_no_sub_package_shadows_a_verb():
    """Importing every sub-package of components leaves each verb of faces a function."""
    import faces
    from components import api

    for name in ("detect", "embed", "images", "settings", "cluster", "report", "identities"):
        __import__(f"components.{name}")
    for verb in VERBS:
        assert getattr(faces, verb) is getattr(api, verb), verb
        assert callable(getattr(faces, verb)), verb


def test_importing_faces_loads_no_model_framework():
    code = "import sys, faces; print(sorted(m for m in ('tensorflow', 'keras', 'mtcnn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.slow
def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    from components.datasets.lfw import read_pairs
    from components.settings import load_settings

    if not load_settings().model_path.exists():
        pytest.skip("no converted embedder: run `make setup`")
    try:
        pair = next(p for p in read_pairs(LFW_ROOT) if p.fold == 1 and p.same)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    if not PHOTO.exists():
        pytest.skip(f"LFW image not available: {PHOTO}")
    assert pair.path_a.parent == pair.path_b.parent  # one person's folder
    shutil.copy(PHOTO, tmp_path / "photo.jpg")
    shutil.copy(pair.path_a, tmp_path / "a.jpg")
    shutil.copy(pair.path_b, tmp_path / "b.jpg")
    monkeypatch.chdir(tmp_path)

    namespace: dict = {"__name__": "readme_example"}
    exec(compile(readme_example(), str(README), "exec"), namespace)  # noqa: S102  (our own README)

    assert namespace["faces"].__name__ == "faces"
    found, vectors = namespace["found"], namespace["vectors"]
    assert len(found) >= 1
    assert namespace["crop"].shape == (150, 150, 3)
    assert vectors.shape == (len(found), 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    answer = namespace["answer"]
    assert answer["same"], answer
    assert 0.0 < answer["similarity"] <= 1.0, answer
