"""Checks on what a client sends, before any model sees it.

Each check raises :class:`~components.serving.errors.ServingError` with the status a
client should get; the ASGI gate (:mod:`components.serving.gate`) and the service call
these, and tests call them directly.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field

import numpy as np

from components.detect.detector import downscale
from components.images import BadImageError, load_image_bytes
from components.serving.errors import ServingError, from_bad_image
from components.settings import ServeParams

API_KEY_HEADER = "x-api-key"
API_KEY_ENV = "FACES_API_KEY"

# What a photo part may declare. The bytes are checked again when decoding (a text file
# declared image/jpeg is refused there), so this only turns away what is plainly not a photo.
IMAGE_CONTENT_TYPES = frozenset(
    {"image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/gif", "image/bmp", "image/x-ms-bmp",
     "image/tiff", "image/webp"}
)
MIN_SIDE = 20  # px; refused as too small to hold a face MTCNN finds at any min_face_size (12 px or more)


class ConfigurationError(RuntimeError):
    """The service is configured in a way that cannot work (e.g. no API key where one is required)."""


def expected_api_key(params: ServeParams, environ: dict[str, str] | None = None) -> str | None:
    """The key clients must send, from ``FACES_API_KEY``; None when keys are switched off.

    Raises:
        ConfigurationError: a key is required (``serve.require_api_key``) but not set, so the
            service refuses to start rather than run open.
    """
    environ = os.environ if environ is None else environ
    key = (environ.get(API_KEY_ENV) or "").strip()
    if not params.require_api_key:
        return key or None
    if not key:
        raise ConfigurationError(
            f"{API_KEY_ENV} is not set: the service requires an API key (set it, or set serve.require_api_key: false)"
        )
    return key


def check_api_key(provided: str | None, expected: str | None) -> None:
    """Accept the request when no key is expected or the provided one matches.

    Raises:
        ServingError: 401 when the header is missing or wrong (compared in constant time).
    """
    if expected is None:
        return
    if not provided:
        raise ServingError(401, "missing_api_key", "send the API key in the X-API-Key header")
    if not hmac.compare_digest(provided.encode(), expected.encode()):
        raise ServingError(401, "wrong_api_key", "the API key in the X-API-Key header is not valid")


def check_request_size(content_length: str | None, params: ServeParams) -> int:
    """The declared body size, when acceptable.

    Raises:
        ServingError: 411 without a Content-Length (the limit must be checkable before
            reading), 400 when it is not a number, 413 above ``serve.max_request_bytes``.
    """
    if content_length is None:
        raise ServingError(411, "length_required", "send a Content-Length header (chunked uploads are not accepted)")
    try:
        size = int(content_length)
    except ValueError:
        raise ServingError(400, "bad_content_length", f"Content-Length {content_length[:40]!r} is not a number") from None
    if size < 0:
        raise ServingError(400, "bad_content_length", "Content-Length must not be negative")
    if size > params.max_request_bytes:
        raise ServingError(
            413, "request_too_large", f"the request is {size:,} bytes, above the limit of {params.max_request_bytes:,}"
        )
    return size


def check_multipart(content_type: str | None) -> None:
    """Photo endpoints take ``multipart/form-data`` only.

    Raises:
        ServingError: 415 otherwise.
    """
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "multipart/form-data":
        raise ServingError(
            415, "wrong_content_type",
            f"send the photos as multipart/form-data file parts, not {media or 'a body without a content type'}",
        )


def check_image_part(content_type: str | None, field_name: str) -> None:
    """A file part must declare an image type.

    Raises:
        ServingError: 415 for anything else (a PDF, text, ``application/octet-stream``).
    """
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in IMAGE_CONTENT_TYPES:
        accepted = ", ".join(sorted(IMAGE_CONTENT_TYPES))
        raise ServingError(
            415, "wrong_content_type", f"{field_name} is declared as {media or 'nothing'}; accepted: {accepted}", field_name
        )


@dataclass(frozen=True)
class RouteSpec:
    """What one endpoint's multipart body must hold.

    Attributes:
        files: file field name -> (fewest, most) parts.
        values: plain (non-file) fields allowed.
    """

    files: dict[str, tuple[int, int]]
    values: frozenset[str] = field(default_factory=frozenset)


def check_form_fields(spec: RouteSpec, parts: list[tuple[str, bool, str | None]]) -> None:
    """Check the parts of a multipart body against an endpoint's spec.

    Args:
        spec: the endpoint's spec.
        parts: (field name, is a file, declared content type) for each part, in order.

    Raises:
        ServingError: 400 for a missing, repeated, unknown or non-file photo field, 415
            for a file that does not declare an image type.
    """
    counts: dict[str, int] = {}
    for name, is_file, content_type in parts:
        if name in spec.files:
            if not is_file:
                # A plain value where a photo belongs would be a URL for BentoML to fetch: never.
                raise ServingError(400, "not_a_file", f"{name} must be a file upload (a multipart file part)", name)
            check_image_part(content_type, name)
            counts[name] = counts.get(name, 0) + 1
        elif name in spec.values:
            if is_file:
                raise ServingError(400, "unexpected_file", f"{name} must be a plain value, not a file", name)
        else:
            allowed = ", ".join(sorted([*spec.files, *spec.values]))
            raise ServingError(400, "unknown_field", f"unknown field {name[:60]!r}; this endpoint takes {allowed}", name[:60])
    for name, (fewest, most) in spec.files.items():
        count = counts.get(name, 0)
        if count < fewest:
            raise ServingError(400, "missing_field", f"{name} is missing: send it as a file part", name)
        if count > most:
            raise ServingError(400, "too_many_files", f"{name}: {count} files sent, at most {most} accepted", name)


def decode_photo(data: bytes, field_name: str, params: ServeParams) -> tuple[np.ndarray, float]:
    """Decode an uploaded photo safely and shrink it for detection.

    Args:
        data: the file's bytes.
        field_name: the request field, named in errors.
        params: the ``serve`` parameters (pixel limit, longest side).

    Returns:
        The RGB uint8 photo with its longer side at most ``params.max_side``, and the
        factor mapping its pixel coordinates back to the uploaded photo (1.0 when unchanged).

    Raises:
        ServingError: the photo is empty, corrupt, truncated, not an image, too many
            pixels (checked from the header, before decoding) or too small.
    """
    try:
        image = load_image_bytes(data, max_pixels=params.max_pixels, min_side=MIN_SIDE)
    except BadImageError as error:
        raise from_bad_image(error, field_name) from None
    return downscale(image, params.max_side)
