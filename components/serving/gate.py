"""The ASGI middleware in front of the public service.

Everything a request must pass before any model or BentoML's own parsing sees it,
in the cheapest order: the API key (before reading the body; every path needs it, the
API docs and ``/metrics`` included, except the probes and ``serve.open_paths``), the content type and the
declared size (before reading the body), then the multipart parts (every photo field a
file declaring an image type; no unknown fields). Refusals are JSON bodies from
:class:`~components.serving.errors.ServingError`.

It also answers ``GET /healthz`` and ``GET /readyz`` itself, with JSON naming the model:
BentoML's built-in probes of those paths answer plain text and would come first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from components.serving.errors import ServingError
from components.serving.requests import (
    API_KEY_HEADER,
    RouteSpec,
    check_api_key,
    check_form_fields,
    check_multipart,
    check_request_size,
)
from components.settings import ServeParams

logger = logging.getLogger(__name__)

Readiness = Callable[[], Awaitable[tuple[bool, dict]]]


@dataclass
class GateState:
    """What the gate needs from the service; filled in when the service starts.

    Attributes:
        params: the ``serve`` parameters.
        api_key: the expected key (None: keys switched off).
        routes: path -> the multipart spec of a photo endpoint.
        model: the latest model description, for ``/healthz`` and error bodies.
        readiness: reports (ready, details) for ``/readyz``.
    """

    params: ServeParams = field(default_factory=ServeParams)
    api_key: str | None = None
    routes: dict[str, RouteSpec] = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    readiness: Readiness | None = None
    configured: bool = False

    @property
    def model_version(self) -> str | None:
        return self.model.get("model_version")


async def _send_json(send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def _header(scope, name: str) -> str | None:
    wanted = name.lower().encode()
    for key, value in scope.get("headers", []):
        if key.lower() == wanted:
            return value.decode("latin-1")
    return None


async def _drain(receive) -> None:
    """Read what the client sent and drop it, so a refusal is not a connection reset."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


class Gate:
    """ASGI middleware: API key, limits, multipart checks, JSON probes.

    Args:
        app: the BentoML application.
        state: shared with the service instance (filled in at its start).
    """

    def __init__(self, app, state: GateState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path in ("/healthz", "/readyz") and method in ("GET", "HEAD"):
            await self._probe(path, send)
            return
        state = self.state
        if path in state.params.open_paths:
            await self.app(scope, receive, send)
            return
        if not state.configured:
            await _send_json(send, 503, ServingError(503, "not_ready", "the service is starting").body())
            return
        spec = state.routes.get(path)
        body_read = False
        try:
            check_api_key(_header(scope, API_KEY_HEADER), state.api_key)
            if spec is None or method != "POST":
                await self.app(scope, receive, send)  # docs, metrics, /reload; BentoML answers 405 to a wrong method
                return
            check_multipart(_header(scope, "content-type"))
            size = check_request_size(_header(scope, "content-length"), state.params)
            body_read = True
            body = await self._read_body(receive, size)
            await self._check_parts(scope, body, spec)
        except ServingError as error:
            if not body_read and error.status != 413 and _small_enough(_header(scope, "content-length"), state.params):
                # Read (and drop) a small unread body, so the client reads our answer rather
                # than a reset; a body over the limit is never read.
                await _drain_quietly(receive)
            await _send_json(send, error.status, error.body(state.model_version))
            return

        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # http.disconnect when the client goes away
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _probe(self, path: str, send) -> None:
        state = self.state
        if path == "/healthz":
            if not state.model and state.configured and state.readiness is not None:
                await _probe_body(state)  # learn the model's name once; liveness does not depend on it
            await _send_json(send, 200, {"status": "ok", "model_version": state.model_version, **state.model})
            return
        status, body = await _probe_body(state)
        await _send_json(send, status, body)

    async def _read_body(self, receive, declared: int) -> bytes:
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ServingError(400, "incomplete_body", "the client went away before sending the whole body")
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > declared:
                raise ServingError(400, "bad_content_length", "the body is longer than its Content-Length")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        if total != declared:
            raise ServingError(400, "incomplete_body", f"the body has {total:,} bytes, Content-Length says {declared:,}")
        return b"".join(chunks)

    async def _check_parts(self, scope, body: bytes, spec: RouteSpec) -> None:
        from starlette.datastructures import UploadFile
        from starlette.requests import Request

        delivered = False

        async def once():
            nonlocal delivered
            if delivered:
                return {"type": "http.disconnect"}
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        most = sum(high for _, high in spec.files.values())
        request = Request(scope, once)
        try:
            form = await request.form(max_files=most + 1, max_fields=len(spec.values) + 1)
        except Exception as error:  # malformed multipart: starlette / python-multipart raise several kinds
            logger.info("refused a malformed multipart body: %s", error)
            raise ServingError(400, "malformed_body", "the multipart/form-data body cannot be parsed") from None
        try:
            parts = [(name, isinstance(value, UploadFile),
                      value.content_type if isinstance(value, UploadFile) else None)
                     for name, value in form.multi_items()]
        finally:
            await form.close()
        check_form_fields(spec, parts)


def _small_enough(content_length: str | None, params: ServeParams) -> bool:
    try:
        return content_length is not None and 0 <= int(content_length) <= params.max_request_bytes
    except ValueError:
        return False


async def _drain_quietly(receive) -> None:
    try:
        await _drain(receive)
    except Exception:  # the client may already be gone; nothing to tell it
        pass


async def _probe_body(state: GateState) -> tuple[int, dict]:
    if state.readiness is None or not state.configured:
        return 503, {"ready": False, "reason": "the service is starting", "model_version": None}
    try:
        ready, details = await state.readiness()
    except Exception as error:  # a dependency down must read as "not ready", not as a crash
        logger.warning("readiness check failed: %s", error)
        return 503, {"ready": False, "reason": "the embedder service does not answer", **state.model}
    return (200 if ready else 503), {"ready": ready, **details}
