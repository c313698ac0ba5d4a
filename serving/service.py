"""BentoML services: wiring only; the logic lives in :mod:`components.serving`.

Two services, two processes under ``bentoml serve serving.service:FaceAPI``:

* ``Embedder`` (internal) holds the champion model and the MTCNN detector. Its APIs are
  batchable: photos from concurrent requests are gathered by BentoML's adaptive batching
  and detected, aligned and embedded together (MTCNN batches same-sized photos; the
  embedder one forward pass per batch). It polls the registry and swaps in a newly
  promoted champion without dropping requests in flight.
* ``FaceAPI`` (public) checks and decodes uploads, calls the embedder
  (``bentoml.depends``) and answers ``POST /verify``, ``/identify``, ``/embed``,
  ``/reload`` and ``GET /healthz``, ``/readyz``. The :class:`~components.serving.gate.Gate`
  middleware in front of it checks the API key, the limits and the multipart parts, and
  answers the probes.

Configuration: ``params.yaml`` (``serve:``; read when this module is imported, because
the batching limits are decorator arguments) and the environment: ``FACES_API_KEY``,
``FACES_STORE_URL``, ``FACES_CROPS_ROOT``, ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
from bentoml.validators import ContentType

from components.engine import PhotoFaces
from components.serving.errors import ServingError
from components.serving.gate import Gate, GateState
from components.serving.requests import RouteSpec, expected_api_key
from components.settings import load_settings

logger = logging.getLogger("faces.serving")

_SERVE = load_settings().serve
# Fail at import, in `bentoml serve` itself, rather than in a worker BentoML would restart forever.
expected_api_key(_SERVE)
STATE = GateState()  # shared by the FaceAPI instance and the Gate middleware of its process

ROUTES = {
    "/verify": RouteSpec({"photo_a": (1, 1), "photo_b": (1, 1)}),
    "/identify": RouteSpec({"photo": (1, 1)}),
    "/embed": RouteSpec({"photos": (1, _SERVE.max_photos)}, frozenset({"aligned"})),
}

Photo = Annotated[Path, ContentType("image/*")]


def _keep_one_session(proxy) -> None:
    """Stop BentoML's dependency client from replacing its HTTP session under load.

    bentoml 1.4.40's client (``_bentoml_impl/client/proxy2.py``) closes its aiohttp session
    every 100 requests or 300 s and opens a new one, and the requests still in flight on
    the old session fail with "Server disconnected" (bentoml/BentoML#5544, #4971). With
    32 clients waiting on batches, dozens fail at each refresh. One long-lived session
    over the local socket is what we want anyway.
    """
    manager = getattr(getattr(proxy, "_async", None), "_session_manager", None)
    if manager is not None:
        manager.max_requests = 1 << 62
        manager.max_age = float("inf")


def _connection_error(error: Exception) -> bool:
    """A call that failed on the way (connection dropped or closed), not one the embedder refused."""
    import aiohttp

    return isinstance(error, aiohttp.ClientConnectionError) or "Session is closed" in str(error)


def _threshold(model: dict, name: str) -> float:
    """The served model's own threshold (every model version carries its calibration)."""
    thresholds = model.get("thresholds") or {}
    if name not in thresholds:
        raise ServingError(503, "model_uncalibrated", f"the served model has no {name} threshold; calibrate it")
    return float(thresholds[name])


@bentoml.service(name="embedder", workers=1, traffic={"timeout": 300})
class Embedder:
    """Detect + align + embed with the champion model, in adaptive batches (internal service)."""

    def __init__(self) -> None:
        from components.serving.batching import use_greedy_batching
        from components.serving.engine import FaceEngine
        from components.serving.model import ModelHolder, ModelUnavailable

        use_greedy_batching()  # no artificial hold: requests that queue behind a batch form the next one
        settings = load_settings()
        self.holder = ModelHolder(alias=settings.serve.model_alias, batch_size=settings.embed.batch_size)
        self.engine = FaceEngine(self.holder, settings.detect, settings.serve.max_faces)
        try:
            self.holder.refresh()
        except ModelUnavailable as error:  # not ready; the poll and POST /reload retry
            logger.error("no model at start: %s", error)
        self.engine.warm_up()
        self.holder.start_polling(settings.serve.poll_s)

    def __is_ready__(self) -> bool:
        return self.holder.ready

    @bentoml.api(batchable=True, max_batch_size=_SERVE.batch_max_size, max_latency_ms=_SERVE.batch_max_latency_ms)
    def analyse(self, images: list[np.ndarray]) -> list[dict]:
        """Per photo: its faces with embeddings, and the description of the model that computed them."""
        per_photo, model = self.engine.analyse(images)
        described = model.describe()
        return [{"faces": [face.to_wire() for face in photo.faces], "main": photo.main, "shape": list(photo.shape),
                 "model": described} for photo in per_photo]

    @bentoml.api(batchable=True, max_batch_size=256, max_latency_ms=_SERVE.batch_max_latency_ms)
    def embed_crops(self, crops: np.ndarray) -> list[dict]:
        """Per aligned crop: its embedding, and the description of the model that computed it."""
        vectors, model = self.engine.embed_crops(crops)
        described = model.describe()
        return [{"embedding": vector.tolist(), "model": described} for vector in vectors]

    @bentoml.api
    def model_info(self) -> dict:
        """The model in service, whether one is loaded, and the last loading error."""
        model = self.holder.loaded
        return {"ready": model is not None, "model": model.describe() if model else {},
                "error": self.holder.last_error}

    @bentoml.api
    def reload(self) -> dict:
        """Resolve the alias now and swap in its model if it changed."""
        from components.serving.model import ModelUnavailable

        try:
            changed, before, model = self.holder.refresh()
        except ModelUnavailable as error:
            current = self.holder.loaded
            return {"changed": False, "error": str(error), "model": current.describe() if current else {}}
        return {"changed": changed, "previous": before.describe() if before else None, "model": model.describe()}


@bentoml.service(name="faces", workers=1, traffic={"timeout": 300})
class FaceAPI:
    """Face verification, identification and embedding over HTTP.

    Every answer names the model that computed it (``model_version``, the content hash of
    the embedder, and ``registry_version``). Send the key in ``X-API-Key``.
    """

    embedder = bentoml.depends(Embedder)

    def __init__(self) -> None:
        from components.serving.identities import IdentityIndex

        self.settings = load_settings()
        params = self.settings.serve
        store_url = os.environ.get("FACES_STORE_URL", "").strip()
        self.index = IdentityIndex(store_url, params.store_refresh_s) if store_url else None
        STATE.params = params
        STATE.api_key = expected_api_key(params)  # refuses to start without a key when one is required
        STATE.routes = ROUTES
        STATE.readiness = self._readiness
        STATE.configured = True

    # -- plumbing -------------------------------------------------------------------

    async def _readiness(self) -> tuple[bool, dict]:
        info = await asyncio.wait_for(self.embedder.to_async.model_info(), timeout=5)
        if info["model"]:
            STATE.model = info["model"]
        details = {**info["model"], "model_version": info["model"].get("model_version")}
        if not info["ready"]:
            details["reason"] = info.get("error") or "the model is loading"
        details["identity_store"] = self.index is not None
        return bool(info["ready"]), details

    def _error(self, error: ServingError):
        from starlette.responses import JSONResponse

        return JSONResponse(error.body(STATE.model_version), status_code=error.status)

    async def _decode(self, path: Path, field: str) -> tuple[np.ndarray, float]:
        from components.serving.requests import decode_photo

        return await asyncio.to_thread(lambda: decode_photo(path.read_bytes(), field, self.settings.serve))

    async def _call(self, name: str, payload):
        """Call an embedder API; once more when the connection (not the embedder) failed: the work is idempotent."""
        proxy = self.embedder
        _keep_one_session(proxy)
        for attempt in (1, 2):
            try:
                return await getattr(proxy.to_async, name)(payload)
            except Exception as error:  # the embedder down or refusing: the client may retry later
                if attempt == 1 and _connection_error(error):
                    logger.info("embedder connection failed (%s); calling again", error)
                    continue
                logger.warning("embedder call %s failed: %s", name, error)
                raise ServingError(503, "model_unavailable", "the embedding model is not available; retry later") from None

    async def _analyse(self, images: list[np.ndarray]) -> tuple[list[PhotoFaces], dict]:
        from components.detect import Face

        for _ in range(3):
            results = await self._call("analyse", images)
            models = {result["model"]["model_version"] for result in results}
            if len(models) == 1:  # a batch split across a model swap would mix versions: ask again
                STATE.model = results[0]["model"]
                return [PhotoFaces([Face.from_wire(face) for face in result["faces"]], result["main"],
                                   tuple(result["shape"])) for result in results], STATE.model
        raise ServingError(503, "model_changing", "the model changed during the request; retry")

    async def _embed_crops(self, crops: np.ndarray) -> tuple[np.ndarray, dict]:
        results = await self._call("embed_crops", crops)
        models = {result["model"]["model_version"] for result in results}
        if len(models) != 1:
            raise ServingError(503, "model_changing", "the model changed during the request; retry")
        STATE.model = results[0]["model"]
        return np.asarray([result["embedding"] for result in results], np.float32), STATE.model

    async def _index_embed(self, crops: np.ndarray) -> tuple[np.ndarray, str]:
        vectors, model = await self._embed_crops(crops)
        return vectors, model["model_version"]

    # -- endpoints ------------------------------------------------------------------

    @bentoml.api(route="/verify")
    async def verify(self, photo_a: Photo, photo_b: Photo) -> dict:
        """Is the person of photo B anywhere in photo A?

        B's main face (the usable face nearest its centre) is compared with every usable
        face of A. Answers ``same``, the best ``similarity`` (cosine), the model's verify
        ``threshold``, the best-matching face of A, B's main face, and every face of A with
        its similarity; nothing about stored identities.
        """
        from components.serving.operations import verify_answer

        try:
            (image_a, scale_a), (image_b, scale_b) = await asyncio.gather(
                self._decode(photo_a, "photo_a"), self._decode(photo_b, "photo_b"))
            photos, model = await self._analyse([image_a, image_b])
            return verify_answer(photos[0], photos[1], (scale_a, scale_b), _threshold(model, "verify"), model)
        except ServingError as error:
            return self._error(error)

    @bentoml.api(route="/identify")
    async def identify(self, photo: Photo) -> dict:
        """Who is in the photo? Every face with its box and identity id and name, or ``unknown``.

        A face is matched to the identity store's medoids at the model's assign threshold.
        """
        from components.serving.identities import ModelChangedError, match_faces
        from components.serving.operations import identify_answer

        try:
            if self.index is None:
                raise ServingError(503, "no_identity_store", "no identity store is configured (set FACES_STORE_URL)")
            image, scale = await self._decode(photo, "photo")
            for _ in range(3):  # a model swap between the faces and the medoids: ask both again
                (analysed,), model = await self._analyse([image])
                faces = analysed.faces
                if not faces:
                    return identify_answer(faces, [], scale, 0.0, model)  # raises the 422
                try:
                    medoids = await self.index.medoids(model["model_version"], self._index_embed)
                    break
                except ModelChangedError as error:
                    logger.info("%s; asking again", error)
                except ServingError:
                    raise
                except Exception as error:
                    logger.warning("identity store unavailable: %s", error)
                    raise ServingError(503, "identity_store_unavailable",
                                       "the identity store cannot be read; retry later") from None
            else:
                raise ServingError(503, "model_changing", "the model changed during the request; retry")
            threshold = _threshold(model, "assign")
            usable = [face for face in faces if face.passed]
            matches = match_faces(np.stack([f.embedding for f in usable]) if usable else np.zeros((0, 0)),
                                  medoids, threshold)
            return identify_answer(faces, matches, scale, threshold, model, medoids.unavailable)
        except ServingError as error:
            return self._error(error)

    @bentoml.api(route="/embed")
    async def embed(self, photos: list[Photo], aligned: bool = False) -> dict:
        """L2-normalised embeddings: of every face in each photo, or of aligned 150x150 crops (``aligned=true``)."""
        from components.serving.operations import embed_answer, embed_crops_answer

        try:
            decoded = await asyncio.gather(*(self._decode(path, "photos") for path in photos))
            if aligned:
                if any(image.shape[:2] != (150, 150) or scale != 1.0 for image, scale in decoded):
                    raise ServingError(422, "not_aligned", "aligned crops must be 150x150 pixels", "photos")
                vectors, model = await self._embed_crops(np.stack([image for image, _ in decoded]))
                return embed_crops_answer(vectors, model)
            per_photo, model = await self._analyse([image for image, _ in decoded])
            return embed_answer([photo.faces for photo in per_photo], [scale for _, scale in decoded], model)
        except ServingError as error:
            return self._error(error)

    @bentoml.api(route="/reload")
    async def reload(self) -> dict:
        """Load the model the registry alias points at now (also done every ``serve.poll_s`` seconds)."""
        try:
            info = await self.embedder.to_async.reload()
        except Exception as error:
            logger.warning("embedder reload failed: %s", error)
            return self._error(ServingError(503, "model_unavailable", "the embedder service does not answer"))
        if info.get("model"):
            STATE.model = info["model"]
        if info.get("error"):
            return self._error(ServingError(503, "reload_failed", info["error"]))
        return {"changed": info["changed"], "previous": info.get("previous"), **info["model"]}


FaceAPI.add_asgi_middleware(Gate, state=STATE)
