"""Aligned faces of every LFW photo, detected once and cached (for retraining experiments).

Retraining on the LFW stream and evaluating on held-out LFW people needs aligned
crops of all 13,233 photos; MTCNN over them takes minutes on two cores, so the crops
are kept under ``bench/cache/lfw_faces/<detector and engine versions>/`` in chunks (a
killed run resumes at the first missing chunk) and assembled into one memory-mapped
array.

Per photo every face that passes the quality gates is kept, plus its main face (the
engine's rule, :func:`components.engine.main_face_index`: LFW's subject, kept even
when it fails a gate, as ``faces bench lfw-verify`` does): the extra faces make the
stream realistic (bystanders, unlabelled) and give the cannot-link pairs (two faces
of one photo).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.datasets.lfw import LFW_ROOT_DEFAULT, list_identities
from components.settings import PROJECT_ROOT, Settings

CHUNK = 256
CACHE_ROOT = PROJECT_ROOT / "bench" / "cache" / "lfw_faces"


@dataclass
class LFWFaces:
    """Every kept face of LFW.

    Attributes:
        crops: (N, 150, 150, 3) uint8 aligned crops (memory-mapped).
        photo: (N,) index into ``paths``.
        is_main: (N,) the face nearest the photo's centre (the one LFW's folder names).
        passed: (N,) passed the quality gates.
        paths: every photo, sorted by person then file.
        names: (P,) person of each photo (folder name).
    """

    crops: np.ndarray
    photo: np.ndarray
    is_main: np.ndarray
    passed: np.ndarray
    paths: list[Path]
    names: np.ndarray

    @property
    def face_names(self) -> np.ndarray:
        """Person of each face: the folder name for main faces, '' for bystanders."""
        out = self.names[self.photo].astype(object)
        out[~self.is_main] = ""
        return out


def _detector_version(settings: Settings) -> str:
    """The cache key of the faces: detector, its gates, and the engine (the main-face rule)."""
    from components import detect, engine

    p = settings.detect
    return (f"detect-{detect.__version__}_c{p.min_confidence}_px{p.min_face_px}_b{p.min_blur}_s{p.min_face_size}"
            f"_engine-{engine.__version__}")


def _faces_of_chunk(engine, paths: list[Path]) -> dict[str, np.ndarray]:
    from components.images import BadImageError, load_image

    crops, photo, is_main, passed = [], [], [], []
    images, rows = [], []
    for row, path in enumerate(paths):
        try:
            images.append(load_image(path))
            rows.append(row)
        except BadImageError:
            continue
    for row, found in zip(rows, engine.detect(images)):
        main = found.main
        for index, face in enumerate(found.faces):
            if face.passed or index == main:
                crops.append(face.crop)
                photo.append(row)
                is_main.append(index == main)
                passed.append(face.passed)
    empty = np.zeros((0, 150, 150, 3), np.uint8)
    return {"crops": np.stack(crops) if crops else empty, "photo": np.array(photo, np.int64),
            "is_main": np.array(is_main, bool), "passed": np.array(passed, bool)}


def lfw_faces(settings: Settings, root: Path = LFW_ROOT_DEFAULT, progress: bool = True,
              paths: list[Path] | None = None) -> LFWFaces:
    """Aligned faces of all LFW photos (or of ``paths`` only), from the cache when present.

    Args:
        settings: detector parameters (part of the cache key).
        root: LFW root.
        progress: show a progress bar.
        paths: only these photos (a subset for tests); cached separately, keyed by the list.

    Returns:
        :class:`LFWFaces`; a photo's person is its folder name.
    """
    from tqdm import tqdm

    root = Path(root) if Path(root).is_absolute() else PROJECT_ROOT / root
    if paths is None:
        identities = list_identities(root)
        paths = [path for name in identities for path in identities[name]]
    paths = [Path(p) for p in paths]
    names = np.array([path.parent.name for path in paths])
    import hashlib

    key = hashlib.sha256("\n".join(str(p.relative_to(root)) if p.is_relative_to(root) else str(p)
                                    for p in paths).encode()).hexdigest()[:10]
    folder = CACHE_ROOT / _detector_version(settings) / f"{len(paths)}_{key}"
    final = folder / "faces.json"
    if not final.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        engine = None
        starts = range(0, len(paths), CHUNK)
        for start in tqdm(starts, desc="LFW faces (MTCNN, cached)", unit="chunk", disable=None if progress else True):
            chunk = folder / f"chunk_{start // CHUNK:05d}.npz"
            if chunk.is_file():
                continue
            if engine is None:
                from components.engine import FaceEngine

                engine = FaceEngine(settings.detect)
            data = _faces_of_chunk(engine, paths[start : start + CHUNK])
            data["photo"] = data["photo"] + start
            tmp = chunk.with_name(f".{chunk.stem}.tmp.npz")
            np.savez(tmp, **data)
            os.replace(tmp, chunk)
        parts = [np.load(folder / f"chunk_{start // CHUNK:05d}.npz") for start in starts]
        n = sum(len(part["photo"]) for part in parts)
        crops = np.lib.format.open_memmap(folder / ".crops.tmp.npy", mode="w+", dtype=np.uint8, shape=(n, 150, 150, 3))
        at = 0
        for part in parts:
            crops[at : at + len(part["photo"])] = part["crops"]
            at += len(part["photo"])
        crops.flush()
        del crops
        os.replace(folder / ".crops.tmp.npy", folder / "crops.npy")
        np.savez(folder / "meta.npz", **{k: np.concatenate([part[k] for part in parts]) for k in ("photo", "is_main", "passed")})
        tmp = final.with_name(".faces.json.tmp")
        tmp.write_text(json.dumps({"photos": len(paths), "faces": n, "detector": _detector_version(settings)}))
        os.replace(tmp, final)
        for start in starts:
            (folder / f"chunk_{start // CHUNK:05d}.npz").unlink(missing_ok=True)
    meta = np.load(folder / "meta.npz")
    return LFWFaces(np.load(folder / "crops.npy", mmap_mode="r"), meta["photo"], meta["is_main"], meta["passed"], paths, names)
