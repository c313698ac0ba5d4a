"""Errors a client can act on: an HTTP status, a machine code and a sentence.

Nothing else ever reaches a client: no stack trace, no file path of the server, no
exception text from a library (those go to the server log).
"""

from __future__ import annotations

from typing import Any

from components.images import BadImageError

# BadImageError codes -> HTTP status. A photo too large is 413 (the client must send
# less), anything unreadable 400 (the client sent something broken), a photo that
# decodes but is too small to hold a face 422 (well-formed, but unusable).
_IMAGE_STATUS = {
    "empty": 400,
    "not_an_image": 400,
    "truncated": 400,
    "unsupported_mode": 400,
    "unreadable": 400,
    "too_many_pixels": 413,
    "too_small": 422,
}


class ServingError(Exception):
    """A request the service refuses, with what is wrong in words.

    Attributes:
        status: HTTP status code (4xx for the client's mistakes, 503 while not ready).
        code: short machine-readable code, e.g. ``no_face`` or ``wrong_content_type``.
        message: a sentence for people.
        field: the request field at fault, when there is one.
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(status, code, message, field)
        self.status = int(status)
        self.code = code
        self.message = message
        self.field = field

    def __str__(self) -> str:
        where = f" ({self.field})" if self.field else ""
        return f"{self.status} {self.code}{where}: {self.message}"

    def body(self, model_version: str | None = None) -> dict[str, Any]:
        """The JSON error body: ``{"error": {"code", "message", "field"?}, "model_version"}``."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        return {"error": error, "model_version": model_version}


def from_bad_image(error: BadImageError, field: str) -> ServingError:
    """The client-facing error for a photo that :mod:`components.images` refused."""
    return ServingError(_IMAGE_STATUS.get(error.code, 400), error.code, f"{field}: {error.reason}", field)
