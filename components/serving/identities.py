"""The identity store's medoids, as ``/identify`` compares faces against them.

Embeddings are comparable only within one model version. The store records, per face,
the version that embedded it; when the model in service differs (a new champion was
promoted and the store not yet re-embedded), a medoid is re-embedded from its aligned
crop with the model in service. A medoid whose crop cannot be read is left out, and the
answer says how many were.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select

from components.identities.crops import CROPS_ROOT_ENV, CropReader, crops_root_for  # noqa: F401 (re-exported)
from components.identities.store import EMBEDDING_DTYPE, FaceRow, IdentityRow, IdentityStore
from components.images import BadImageError, load_image_bytes


class ModelChangedError(RuntimeError):
    """The served model changed while the medoids were being re-embedded: ask again with the new one."""


@dataclass
class MedoidRow:
    identity_id: int
    name: str | None
    embedding: np.ndarray | None
    model_version: str | None
    crop_path: str | None


@dataclass
class MedoidSet:
    """Medoids comparable with one model version.

    Attributes:
        model_version: the version every row of ``matrix`` comes from.
        ids: (K,) identity ids.
        names: K names (None when unnamed).
        matrix: (K, D) unit-norm medoid embeddings.
        unavailable: identities left out (medoid from another model and no readable crop).
        loaded_at: monotonic time of the read.
    """

    model_version: str
    ids: np.ndarray
    names: list[str | None]
    matrix: np.ndarray
    unavailable: int = 0
    loaded_at: float = field(default_factory=time.monotonic)


@dataclass
class Match:
    identity_id: int | None
    name: str | None
    similarity: float | None  # to the best medoid, matched or not


def read_medoids(store: IdentityStore) -> list[MedoidRow]:
    """Every identity's medoid (id order): name, stored embedding, its model version, crop path."""
    with store.session() as session:
        rows = session.execute(
            select(IdentityRow.id, IdentityRow.name, FaceRow.embedding, FaceRow.model_version, FaceRow.crop_path)
            .join(FaceRow, FaceRow.id == IdentityRow.medoid_face_id)
            .order_by(IdentityRow.id)
        ).all()
    return [
        MedoidRow(int(row.id), row.name,
                  None if row.embedding is None else np.frombuffer(row.embedding, EMBEDDING_DTYPE).copy(),
                  row.model_version, row.crop_path)
        for row in rows
    ]


def read_crop(crop_path: str | None, root: str | os.PathLike[str] | None) -> np.ndarray | None:
    """An aligned crop from the store's location (relative to ``root``, a local file or
    an ``s3://`` object), or None when unreadable."""
    return read_crops([crop_path], root)[0]


def read_crops(crop_paths: Sequence[str | None], root: str | os.PathLike[str] | None) -> list[np.ndarray | None]:
    """Aligned crops from the store's locations, read concurrently; None for each unreadable one."""
    wanted = [index for index, path in enumerate(crop_paths) if path]
    found: list[np.ndarray | None] = [None] * len(crop_paths)
    blobs = CropReader(root).read_many([crop_paths[index] for index in wanted], errors="return")
    for index, blob in zip(wanted, blobs):
        if isinstance(blob, bytes):
            try:
                found[index] = load_image_bytes(blob)
            except BadImageError:
                pass
    return found


def match_faces(embeddings: np.ndarray, medoids: MedoidSet, threshold: float) -> list[Match]:
    """The identity of each face of one photo.

    A face takes the identity whose medoid is most similar when the cosine similarity
    reaches ``threshold``. Two faces of one photo are never the same person: when two
    want one identity, the more similar keeps it and the other is unknown.

    Args:
        embeddings: (N, D) unit-norm embeddings of one photo's faces.
        medoids: the medoids, from the same model version.
        threshold: ``identities.assign_threshold``.

    Returns:
        One :class:`Match` per face, in input order.
    """
    n = len(embeddings)
    if n == 0:
        return []
    if len(medoids.ids) == 0:
        return [Match(None, None, None) for _ in range(n)]
    similarity = np.asarray(embeddings, np.float32) @ medoids.matrix.T  # (N, K)
    best = similarity.argmax(axis=1)
    best_sim = similarity[np.arange(n), best]
    matches = [Match(None, None, round(float(s), 4)) for s in best_sim]
    taken: set[int] = set()
    for face in np.argsort(-best_sim, kind="stable"):  # most similar face claims first
        column = int(best[face])
        if best_sim[face] >= threshold and column not in taken:
            taken.add(column)
            matches[face] = Match(int(medoids.ids[column]), medoids.names[column], round(float(best_sim[face]), 4))
    return matches


EmbedCrops = Callable[[np.ndarray], Awaitable[tuple[np.ndarray, str]]]


class IdentityIndex:
    """Medoids of an identity store, re-read every ``refresh_s`` seconds.

    Args:
        url: SQLAlchemy URL of the store (``FACES_STORE_URL``).
        refresh_s: how old a cached read may get.
        crops_root: where relative crop paths start, a folder or ``s3://bucket/prefix``
            (default :func:`components.identities.crops.crops_root_for`: ``$FACES_CROPS_ROOT``,
            else the SQLite file's folder).
    """

    def __init__(self, url: str, refresh_s: float = 10.0, crops_root: str | os.PathLike[str] | None = None) -> None:
        self.url = url
        self.refresh_s = float(refresh_s)
        self.crops_root = crops_root if crops_root is not None else crops_root_for(url)
        self._store: IdentityStore | None = None
        self._cached: MedoidSet | None = None
        self._lock = asyncio.Lock()

    def _read(self) -> list[MedoidRow]:
        if self._store is None:
            self._store = IdentityStore(self.url)
        return read_medoids(self._store)

    async def medoids(self, model_version: str, embed_crops: EmbedCrops) -> MedoidSet:
        """Medoids comparable with ``model_version`` (cached up to ``refresh_s`` seconds).

        Args:
            model_version: the version of the query embeddings.
            embed_crops: embeds aligned crops with the model in service; returns
                (embeddings, the version that computed them).
        """
        cached = self._cached
        if cached is not None and cached.model_version == model_version and \
                time.monotonic() - cached.loaded_at < self.refresh_s:
            return cached
        async with self._lock:
            cached = self._cached
            if cached is not None and cached.model_version == model_version and \
                    time.monotonic() - cached.loaded_at < self.refresh_s:
                return cached
            rows = await asyncio.to_thread(self._read)
            built = await self._build(rows, model_version, embed_crops)
            self._cached = built
            return built

    async def _build(self, rows: list[MedoidRow], model_version: str, embed_crops: EmbedCrops) -> MedoidSet:
        ready = [row for row in rows if row.embedding is not None and row.model_version == model_version]
        stale = [row for row in rows if not (row.embedding is not None and row.model_version == model_version)]
        unavailable = 0
        if stale:
            crops = await asyncio.to_thread(read_crops, [row.crop_path for row in stale], self.crops_root)
            usable = [(row, crop) for row, crop in zip(stale, crops)
                      if crop is not None and crop.shape[:2] == (150, 150)]
            unavailable = len(stale) - len(usable)
            if usable:
                vectors, version = await embed_crops(np.stack([crop for _, crop in usable]))
                if version != model_version:  # swapped mid-way: the caller retries with the new version
                    raise ModelChangedError(f"model changed from {model_version} to {version} while re-embedding medoids")
                for (row, _), vector in zip(usable, vectors):
                    ready.append(MedoidRow(row.identity_id, row.name, np.asarray(vector, np.float32), model_version,
                                           row.crop_path))
        ready.sort(key=lambda row: row.identity_id)
        matrix = (np.stack([row.embedding for row in ready]).astype(np.float32) if ready
                  else np.zeros((0, 0), np.float32))
        return MedoidSet(model_version, np.array([row.identity_id for row in ready], np.int64),
                         [row.name for row in ready], matrix, unavailable)
