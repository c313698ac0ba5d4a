"""Build the tables the suites check, from what the pipeline already has.

* photos: file paths, storage keys, or (key, bytes) pairs -> :func:`image_table`
* detections: ``FaceDetector.detect`` output (``Face`` objects) or the workflow's
  per-shard arrays -> :func:`face_table` / :func:`face_table_from_arrays`
* embeddings: an (N, D) array and ids -> :func:`embedding_table`
* identities: (face, identity, photo) ids, or an ``IdentityStore`` -> :func:`cluster_table`
  / :func:`cluster_table_from_store`

Building a table never raises on bad data: a bad item becomes a row with the
property that makes its check fail (an ``error`` text, a NaN norm, ...).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "cluster_table",
    "cluster_table_from_store",
    "describe_image",
    "embedding_table",
    "face_table",
    "face_table_from_arrays",
    "image_table",
    "landmark_outside",
]

IMAGE_COLUMNS = ["key", "bytes", "sha256", "format", "width", "height", "pixels", "error"]


def describe_image(key: str, data: bytes, max_pixels: int = 40_000_000) -> dict:
    """One row of the image table: content hash, format, size, and why it does not decode (if so).

    The header gives format and size without decoding. The pixel data is decoded
    only when the header's pixel count is within ``max_pixels`` (a decompression
    bomb is refused by the ``pixels`` check instead), at 1/8 scale for JPEGs
    (``draft``): a truncated or corrupt file still fails, at a fraction of the cost.

    Args:
        key: the row's id (file path or storage key).
        data: the file content.
        max_pixels: largest width x height that is decoded.

    Returns:
        ``key, bytes, sha256, format, width, height, pixels, error`` (``error`` is
        None when the image decodes, else ``"<code>: <reason>"``).
    """
    from PIL import Image, UnidentifiedImageError

    row = {"key": key, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "format": None,
           "width": None, "height": None, "pixels": None, "error": None}
    if not data:
        row["error"] = "empty: the file is empty (0 bytes)"
        return row
    from components.images import decodable_formats, enable_heif, sniff_non_photo

    kind = sniff_non_photo(data[:4096])
    if kind is not None:  # a video or a PDF in the batch: say what it is
        row["error"] = f"not_a_photo: {kind}"
        return row
    enable_heif()
    try:
        # Only the loader's decoders: an EPS would run Ghostscript, other plugins are attack surface.
        with Image.open(io.BytesIO(data), formats=decodable_formats()) as image:
            row.update(format=image.format, width=image.width, height=image.height, pixels=image.width * image.height)
            if row["pixels"] > max_pixels:
                return row  # not decoded on purpose; the pixels check names it
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Image.DecompressionBombError as error:
        row["error"] = f"too_many_pixels: Pillow refused it as a decompression bomb: {error}"
    except UnidentifiedImageError:
        row["error"] = "not_an_image: the content is not a recognised image"
    except Exception as error:  # noqa: BLE001 - untrusted data can make a decoder raise anything
        code = "not_an_image" if row["format"] is None else "truncated"
        row["error"] = f"{code}: {error or type(error).__name__}"
    return row


def image_table(sources: Iterable[str | os.PathLike[str] | tuple[str, bytes]], *, storage=None,
                max_pixels: int = 40_000_000):
    """The image table of a batch of photos.

    Args:
        sources: local file paths; or keys of ``storage``; or (key, bytes) pairs.
        storage: a :class:`components.storage.Storage` to read keys from.
        max_pixels: see :func:`describe_image`.

    Returns:
        A DataFrame with :data:`IMAGE_COLUMNS`, one row per source, in order. A file
        that cannot be read gets ``error = "unreadable: ..."``.
    """
    import pandas as pd

    from components.storage import StorageError

    rows = []
    for source in sources:
        if isinstance(source, tuple):
            key, data = source
        else:
            key = str(source) if storage is None else source
            try:
                data = storage.get_bytes(source) if storage is not None else Path(source).read_bytes()
            except (OSError, StorageError) as error:
                reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or str(error)
                rows.append({**dict.fromkeys(IMAGE_COLUMNS), "key": key, "error": f"unreadable: {reason}"})
                continue
        rows.append(describe_image(key, data, max_pixels))
    table = pd.DataFrame(rows, columns=IMAGE_COLUMNS)
    for column in ("bytes", "width", "height", "pixels"):
        table[column] = table[column].astype("Int64")
    return table


def landmark_outside(box: Sequence[float], landmarks: np.ndarray) -> float:
    """How far the farthest landmark lies outside the box, as a fraction of the box's shorter side.

    0 when all five landmarks are inside; NaN when the box or landmarks are not finite.
    """
    x, y, w, h = (float(v) for v in box)
    points = np.asarray(landmarks, np.float64).reshape(-1, 2)
    if not (np.isfinite([x, y, w, h]).all() and np.isfinite(points).all()) or min(w, h) <= 0:
        return float("nan")
    beyond_x = np.maximum(x - points[:, 0], points[:, 0] - (x + w))
    beyond_y = np.maximum(y - points[:, 1], points[:, 1] - (y + h))
    return float(max(0.0, beyond_x.max(initial=0.0), beyond_y.max(initial=0.0)) / min(w, h))


def _face_value(face: Any, name: str) -> Any:
    return face[name] if isinstance(face, Mapping) else getattr(face, name)


def face_table(detections: Sequence[Sequence[Any]], photos: Sequence[str] | None = None, *,
               landmark_tolerance: float = 0.1):
    """The face table of a batch, from detector output.

    Args:
        detections: one list per photo of :class:`components.detect.Face` (or mappings
            with ``box``, ``landmarks``, ``confidence``, ``blur``, ``crop`` or
            ``crop_shape``, and optionally ``failures``), as ``FaceDetector.detect`` returns.
        photos: each photo's key; default ``photo-<i>``.
        landmark_tolerance: landmarks may lie this fraction of the box's shorter side
            outside the box and still count as inside (``landmarks_inside``).

    Returns:
        One row per face: ``face`` (``<photo>#<index>``), ``key``, ``face_index``,
        ``box_x, box_y, box_w, box_h``, ``confidence``, ``blur``, ``crop_height``,
        ``crop_width``, ``crop_channels``, ``landmark_outside``, ``landmarks_inside``, ``failures``.
    """
    import pandas as pd

    photos = list(photos) if photos is not None else [f"photo-{index}" for index in range(len(detections))]
    if len(photos) != len(detections):
        raise ValueError(f"{len(detections)} detection lists but {len(photos)} photo keys")
    rows = []
    for key, faces in zip(photos, detections):
        for index, face in enumerate(faces):
            box = [float(v) for v in _face_value(face, "box")]
            crop = face.get("crop") if isinstance(face, Mapping) else getattr(face, "crop", None)
            shape = tuple(np.shape(crop)) if crop is not None else tuple(_face_value(face, "crop_shape"))
            shape = (shape + (1,))[:3] if len(shape) == 2 else shape
            outside = landmark_outside(box, _face_value(face, "landmarks"))
            failures = face.get("failures", []) if isinstance(face, Mapping) else getattr(face, "failures", [])
            rows.append({
                "face": f"{key}#{index}", "key": key, "face_index": index,
                "box_x": box[0], "box_y": box[1], "box_w": box[2], "box_h": box[3],
                "confidence": float(_face_value(face, "confidence")), "blur": float(_face_value(face, "blur")),
                "crop_height": int(shape[0]) if len(shape) > 0 else 0,
                "crop_width": int(shape[1]) if len(shape) > 1 else 0,
                "crop_channels": int(shape[2]) if len(shape) > 2 else 0,
                "landmark_outside": outside,
                "landmarks_inside": bool(outside <= landmark_tolerance),  # NaN compares False: not inside
                "failures": ",".join(failures) if not isinstance(failures, str) else failures,
            })
    return pd.DataFrame(rows, columns=["face", "key", "face_index", "box_x", "box_y", "box_w", "box_h", "confidence",
                                       "blur", "crop_height", "crop_width", "crop_channels", "landmark_outside",
                                       "landmarks_inside", "failures"])


def face_table_from_arrays(arrays: Mapping[str, np.ndarray], photos: Sequence[str], *,
                           landmark_tolerance: float = 0.1):
    """The face table from per-face arrays (the workflow's ``detections/<shard>.npz``).

    Args:
        arrays: ``photo`` (N,) index into ``photos``; ``face_index`` (N,); ``boxes``
            (N, 4) xywh; ``landmarks`` (N, 5, 2); ``confidence`` (N,); ``blur`` (N,);
            ``crops`` (N, H, W, C); optional ``failures`` (N,) comma-joined gate names.
        photos: key of each photo.
        landmark_tolerance: see :func:`face_table`.
    """
    count = len(arrays["boxes"])
    crops = arrays["crops"]
    faces_by_photo: list[list[dict]] = [[] for _ in photos]
    indices: list[list[int]] = [[] for _ in photos]
    for row in range(count):
        owner = int(arrays["photo"][row])
        failures = str(arrays["failures"][row]) if "failures" in arrays else ""
        faces_by_photo[owner].append({
            "box": arrays["boxes"][row], "landmarks": arrays["landmarks"][row],
            "confidence": arrays["confidence"][row], "blur": arrays["blur"][row],
            "crop_shape": tuple(crops.shape[1:]), "failures": failures,
        })
        indices[owner].append(int(arrays["face_index"][row]) if "face_index" in arrays else len(indices[owner]))
    table = face_table(faces_by_photo, photos, landmark_tolerance=landmark_tolerance)
    # Keep the detector's own face numbering (a shard may hold only some of a photo's faces).
    table["face_index"] = [index for photo in indices for index in photo]
    table["face"] = [f"{key}#{index}" for key, index in zip(table["key"], table["face_index"])]
    return table


def _duplicate_keys(vectors: list[np.ndarray], finite: list[bool], tolerance: float) -> list[str | None]:
    """A key per vector, shared by vectors of one size whose values all agree within ``tolerance``.

    Each vector takes the key of the first earlier vector it matches (the hash of that
    vector's values), so a group of near-equal vectors shares one key. One pass over the
    earlier rows per vector: a shard of faces is compared in milliseconds.
    """
    keys: list[str | None] = [None] * len(vectors)
    by_size: dict[int, list[int]] = {}
    for index, (vector, ok) in enumerate(zip(vectors, finite)):
        if ok:
            by_size.setdefault(vector.size, []).append(index)
    for indices in by_size.values():
        x = np.stack([vectors[i] for i in indices])
        owner = np.arange(len(indices))
        for row in range(1, len(indices)):
            close = np.flatnonzero(np.max(np.abs(x[:row] - x[row]), axis=1) <= tolerance)
            if len(close):
                owner[row] = owner[close[0]]
        for position, index in enumerate(indices):
            first = x[owner[position]] + 0.0  # -0.0 and 0.0 hash alike
            keys[index] = hashlib.sha1(first.tobytes(), usedforsecurity=False).hexdigest()
    return keys


def embedding_table(vectors, ids: Sequence[Any] | None = None, *, decimals: int = 6):
    """The embedding table: one row per vector with its dimension, norm and a content key.

    Args:
        vectors: an (N, D) array, or a sequence of 1-D vectors (their lengths may differ:
            that is what the ``dimension`` check is for).
        ids: each vector's id (face id, ``<sha256>_<face index>``); default 0..N-1.
        decimals: vectors whose every value agrees within ``10 ** -decimals`` share a
            ``vector_key`` (duplicates). A tolerance, not rounding: the same crop embedded at
            two positions of one batch differs in the last float bits, and rounding would
            split such a pair whenever a value sits on a rounding boundary.

    Returns:
        ``id, dim, norm, finite, vector_key``; ``norm`` and ``vector_key`` are null for
        vectors holding NaN or infinity.

    Raises:
        ValueError: ``ids`` and ``vectors`` differ in length, or ``vectors`` is not 1- or 2-D.
    """
    import pandas as pd

    if isinstance(vectors, np.ndarray):
        if vectors.ndim != 2:
            raise ValueError(f"embeddings must be an (N, D) array, got shape {vectors.shape}")
        rows = list(vectors)
    else:
        rows = [np.asarray(vector) for vector in vectors]
    ids = list(range(len(rows))) if ids is None else list(ids)
    if len(ids) != len(rows):
        raise ValueError(f"{len(rows)} embeddings but {len(ids)} ids")
    flat = [np.asarray(vector, np.float64).ravel() for vector in rows]
    finite = [bool(np.isfinite(vector).all()) for vector in flat]
    keys = _duplicate_keys(flat, finite, 10.0 ** -decimals)
    records = []
    for identifier, vector, ok, key in zip(ids, flat, finite, keys):
        records.append({"id": identifier, "dim": int(vector.size),
                        "norm": float(np.linalg.norm(vector)) if ok else None, "finite": ok, "vector_key": key})
    table = pd.DataFrame(records, columns=["id", "dim", "norm", "finite", "vector_key"])
    table["norm"] = table["norm"].astype("Float64")
    return table


def cluster_table(face_ids: Sequence[Any], identity_ids: Sequence[Any], photo_ids: Sequence[Any]):
    """The clustering table: each face with its identity (null for the unknown pool) and photo.

    Args:
        face_ids: (N,) face ids.
        identity_ids: (N,) identity of each face; None, NaN or a negative number means
            the face is in the unknown pool.
        photo_ids: (N,) photo of each face (two faces of one photo are never one person).

    Returns:
        ``face_id, identity_id, photo_id, identity_size, identity_share`` (size over
        all faces of the table); the last three are null for pool faces.
    """
    import pandas as pd

    if not len(face_ids) == len(identity_ids) == len(photo_ids):
        raise ValueError(f"lengths differ: {len(face_ids)} faces, {len(identity_ids)} identities, "
                         f"{len(photo_ids)} photos")
    identities = []
    for identity in identity_ids:
        missing = identity is None or (isinstance(identity, float) and np.isnan(identity))
        identities.append(None if missing or int(identity) < 0 else int(identity))
    table = pd.DataFrame({"face_id": list(face_ids), "identity_id": pd.array(identities, dtype="Int64"),
                          "photo_id": list(photo_ids)})
    sizes = table.groupby("identity_id", dropna=True)["face_id"].transform("size")
    table["identity_size"] = sizes.astype("Int64")
    table["identity_share"] = (table["identity_size"] / max(len(table), 1)).astype("Float64")
    return table


def cluster_table_from_store(store) -> Any:
    """The clustering table of an :class:`components.identities.IdentityStore`: every usable face."""
    faces = store.usable_faces()
    identity_of = store.identity_of_faces()
    face_ids = [int(face) for face in faces.face_ids]
    photo_ids = faces.photo_ids if faces.photo_ids is not None else np.arange(len(face_ids))
    return cluster_table(face_ids, [identity_of.get(face) for face in face_ids], [int(p) for p in photo_ids])
