"""``faces bench reembed``: how fast a store moves to a new model, beside plain embedding.

A store of LFW's faces (every aligned crop MTCNN keeps, from the cached LFW faces of
:mod:`components.train.lfw_faces`; 13k+ faces for all of LFW) is written the way
``faces run`` writes it: JPEG crops in a folder, rows in a SQLite store, on the local
model. Then, in the same run:

* baseline, **plain embed**: the new model embeds the same crops held in memory
  (``Embedder.embed``, the forward passes alone);
* **re-embed**: :func:`components.engine.reembed.reembed` moves the store to the new
  model: read and decode every stored crop, embed, stage in batches, switch in one
  transaction (medoids recomputed).

The new model is the local model with perturbed weights (a different version). The
machine's load average is recorded before and after each part: a figure is called idle
only when the load says so.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from components.bench import save_result
from components.settings import Settings

GOAL_FACES = 13_000
GOAL_SECONDS = 120.0


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _write_store(url: str, folder: Path, crops: np.ndarray, photo: np.ndarray, vectors: np.ndarray, version: str) -> None:
    """A store as `faces run` leaves it: one image row per photo, one JPEG crop per face."""
    from PIL import Image

    from components.identities import IdentityStore, NewFace

    store = IdentityStore(url)
    for number in np.unique(photo):
        records = []
        for index, row in enumerate(np.flatnonzero(photo == number)):
            relative = f"crops/{number:05d}_{index}.jpg"
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(crops[row])).save(folder / relative, format="JPEG", quality=92)
            records.append(NewFace(face_index=index, box=(0.0, 0.0, 150.0, 150.0), landmarks=np.zeros((5, 2)),
                                   confidence=1.0, blur=1.0, failures=[], embedding=vectors[row], model_version=version,
                                   crop_path=relative))
        store.add_image(f"{number:064d}", f"lfw/{number}", (250, 250), records, "bench", None)
    store.engine.dispose()


def perturbed_copy(model: Path, target: Path, factor: float = 1.02) -> Path:
    """A copy of a ``.keras`` model with its last 4-D weight tensor scaled: a different model version.

    Stands in for a fine-tuned model wherever one is needed without training (this
    benchmark, the tests of the model life cycle).
    """
    import shutil
    import zipfile

    import h5py

    work = target.parent / f".perturb-{target.stem}"
    work.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(model) as archive:
        archive.extractall(work)
    with h5py.File(work / "model.weights.h5", "r+") as weights:
        datasets = []
        weights.visititems(lambda name, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) and obj.ndim == 4 else None)
        last = datasets[-1]
        last[...] = np.asarray(last) * factor
    with zipfile.ZipFile(target, "w") as archive:
        for name in ("metadata.json", "config.json", "model.weights.h5"):
            archive.write(work / name, name)
    shutil.rmtree(work)
    return target


def run_benchmark(settings: Settings, *, out: Path, faces: int | None = None, batch_size: int = 256,
                  progress: bool = True) -> dict:
    """Build the store, time plain embedding and the re-embed side by side, write ``out``."""
    from dataclasses import replace

    from components.engine import load_model
    from components.engine.reembed import reembed
    from components.identities import IdentityStore, update_identities
    from components.identities.lifecycle import policy_for_store
    from components.track.registry import local_ref
    from components.train.lfw_faces import lfw_faces

    cached = lfw_faces(settings, progress=progress)
    n = len(cached.photo) if faces is None else min(int(faces), len(cached.photo))
    crops, photo = np.asarray(cached.crops[:n]), cached.photo[:n]
    local = local_ref(settings)
    old = load_model(local, batch_size=settings.embed.batch_size)
    result: dict = {"benchmark": "reembed", "faces": int(n), "photos": int(len(np.unique(photo))),
                    "batch_size": batch_size, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                          "python": platform.python_version()},
                    "goal": f"{GOAL_FACES} faces in under {GOAL_SECONDS:.0f} s on 2 cores"}
    with tempfile.TemporaryDirectory(prefix="bench-reembed-") as tmp:
        folder = Path(tmp)
        new_file = perturbed_copy(local.path, folder / "perturbed.keras")
        new = load_model(replace(local, path=new_file, version=None, source="local"), batch_size=settings.embed.batch_size)
        assert new.version != old.version

        started = time.perf_counter()
        vectors = old.embedder.embed(crops)
        setup = {"old_embed_seconds": round(time.perf_counter() - started, 2)}
        url = f"sqlite:///{folder / 'faces.db'}"
        started = time.perf_counter()
        _write_store(url, folder, crops, photo, vectors, old.version)
        store = IdentityStore(url)
        store.set_model(old.store_model())
        update_identities(store, policy=replace(policy_for_store(store, settings), recluster_pool_size=1), full=True)
        setup["store_seconds"] = round(time.perf_counter() - started, 2)
        setup["identities"] = store.counts()["identities"]
        result["setup"] = setup

        new.embedder.embed(crops[:8])  # load and build the graph outside the timings
        load = _load()
        started = time.perf_counter()
        new.embedder.embed(crops)
        seconds = time.perf_counter() - started
        result["plain_embed"] = {"seconds": round(seconds, 2), "faces_per_second": round(n / seconds, 1),
                                 "load_before": load, "load_after": _load()}

        load = _load()
        report = reembed(store, new, settings, batch_size=batch_size, crops_root=str(folder), progress=progress)
        result["reembed"] = {"seconds": report["seconds"], "faces_per_second": report["faces_per_second"],
                             "embed_seconds": report["embed_seconds"],
                             "read_and_stage_seconds": round(report["seconds"] - report["embed_seconds"], 2),
                             "identities_refreshed": report["switch"]["identities"],
                             "incoherent_identities": len(report["switch"]["incoherent"]),
                             "load_before": load, "load_after": _load()}
        assert set(store.embedded_versions()) == {new.version}
        store.engine.dispose()
    per_second = result["reembed"]["faces_per_second"]
    projected = GOAL_FACES / per_second if per_second else None
    result["projected_seconds_for_13k"] = round(projected, 1) if projected else None
    result["goal_met"] = bool(projected is not None and projected < GOAL_SECONDS)
    result["reembed_vs_plain"] = round(result["reembed"]["seconds"] / result["plain_embed"]["seconds"], 2)
    save_result(out, result)
    return result
