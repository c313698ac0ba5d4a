"""Re-embed an identity store with a new model, then switch it over in one transaction.

A promoted model cannot be compared with the embeddings the store holds. Re-embedding
reads every stored aligned crop (local or ``s3://``, through components/storage), embeds
it with the new model in batches and stages the vectors beside the old ones. Only when
every face has its new vector does :func:`components.identities.lifecycle.switch_model`
swap them in, recompute every medoid, report identities that no longer cohere, and make
the new model the store's active one. Until then ingest, assignment, re-clustering and
serving all keep using the old model. A run killed midway resumes from the staged
vectors; running it again when the store is already on the model does nothing.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from datetime import datetime

import numpy as np
from PIL import Image
from tqdm import tqdm

from components.embed import INPUT_SIZE
from components.identities.crops import CropReader, crops_root_for
from components.identities.lifecycle import Policy, ReembedIncomplete, switch_model, utc_now


class ReembedError(RuntimeError):
    """A stored crop cannot be read, so its face cannot be re-embedded; nothing was switched."""


def decode_crop(data: bytes, where: str) -> np.ndarray:
    """A stored crop's pixels: (150, 150, 3) uint8 RGB."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            crop = np.asarray(image.convert("RGB"))
    except Exception as error:  # noqa: BLE001 - any decoder failure is the same problem for the user
        raise ReembedError(f"crop {where} is not a readable image: {error}") from None
    if crop.shape != (INPUT_SIZE, INPUT_SIZE, 3):
        raise ReembedError(f"crop {where} is {crop.shape[1]}x{crop.shape[0]}, not an aligned {INPUT_SIZE}x{INPUT_SIZE} crop")
    return crop


def read_crops(reader: CropReader, paths: list[str | None], face_ids: list[int]) -> np.ndarray:
    """Read (concurrently: S3 round trips overlap) and decode a batch of stored crops."""
    missing = [face for face, path in zip(face_ids, paths) if not path]
    if missing:
        raise ReembedError(f"faces {missing} have no stored crop, so they cannot be re-embedded")
    crops = []
    for face, path, blob in zip(face_ids, paths, reader.read_many(paths, errors="return")):
        if isinstance(blob, Exception):
            raise ReembedError(f"face {face}: crop {path} cannot be read: {blob}")
        crops.append(decode_crop(blob, path))
    return np.stack(crops)


def reembed(store, target, settings, *, batch_size: int = 256, crops_root: str | None = None, progress: bool = True,
            clock: Callable[[], datetime] = utc_now, after_batch: Callable[[int], None] | None = None) -> dict:
    """Move ``store`` to the model ``target``: stage new embeddings in batches, then switch.

    Args:
        store: the :class:`~components.identities.store.IdentityStore`.
        target: the :class:`~components.engine.models.FaceModel` to move to (its thresholds
            become the store's).
        settings: life-cycle parameters (medoid sampling).
        batch_size: faces per staged batch (one transaction each).
        crops_root: where relative crop paths start (default: ``$FACES_CROPS_ROOT`` or the
            SQLite file's folder).
        progress: show a progress bar.
        clock: time of the switch.
        after_batch: called with the number of batches staged so far (tests stop a run here).

    Returns:
        ``changed`` (False when the store was already on ``target``), the model before and
        after, faces re-embedded by this call, seconds, faces per second, and the switch's
        report (identities refreshed, ``incoherent`` identities).

    Raises:
        ReembedError: a crop cannot be read; the staged work is kept, nothing switched.
    """
    before = store.model("active")
    pending = store.model("target")
    record = target.store_model()
    if before is not None and before.version == target.version and (pending is None or pending.version == target.version):
        if not store.reembed_remaining(target.version):
            if (before.registry_version, before.source, before.thresholds) == (record.registry_version, record.source,
                                                                               record.thresholds):
                return {"changed": False, "model": before.describe(), "reason": "the store already uses this model"}
            # The same weights under another name (the local model registered, say): the vectors
            # stay, the model's registry identity and its thresholds are taken over.
            store.set_model(record)
            return {"changed": True, "before": before.describe(), "model": store.model("active").describe(), "faces": 0,
                    "reason": "same weights: registry version and thresholds taken over, no vector changed"}
    store.begin_reembed(record)
    reader = CropReader(crops_root if crops_root is not None else crops_root_for(store.url))
    started = time.perf_counter()
    embedded = batches = 0
    embed_seconds = 0.0
    bar = tqdm(total=store.reembed_remaining(target.version), desc="re-embed", unit="face",
               disable=None if progress else True)
    for _attempt in range(5):  # faces ingested meanwhile (with the old model) are caught by the next pass
        while batch := store.reembed_todo(target.version, batch_size):
            face_ids = [face for face, _ in batch]
            crops = read_crops(reader, [path for _, path in batch], face_ids)
            tick = time.perf_counter()
            vectors = target.embedder.embed(crops)
            embed_seconds += time.perf_counter() - tick
            store.stage_embeddings(face_ids, target.version, vectors)
            embedded += len(batch)
            batches += 1
            bar.update(len(batch))
            if after_batch is not None:
                after_batch(batches)
        try:
            switched = switch_model(store, record, Policy.from_settings(settings, target.thresholds), now=clock())
            break
        except ReembedIncomplete:
            continue
    else:
        raise ReembedError("faces keep arriving faster than they are re-embedded; stop ingest and run again")
    bar.close()
    seconds = time.perf_counter() - started
    return {"changed": True, "before": before.describe() if before else None, "model": store.model("active").describe(),
            "faces": embedded, "batches": batches, "seconds": round(seconds, 3), "embed_seconds": round(embed_seconds, 3),
            "faces_per_second": round(embedded / seconds, 1) if seconds > 0 else None, "switch": switched}
