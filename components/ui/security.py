"""Signing in to the people page, and the CSRF token every form carries.

Two secrets open it, both from the environment: the serving gate's API key
(``FACES_API_KEY``, the same variable :mod:`components.serving.requests` reads) and a
password of its own (``FACES_UI_PASSWORD``). Either one, typed into the sign-in form,
opens a session: a signed cookie (HttpOnly, SameSite=Strict, Secure behind HTTPS) that
holds who signed in and the session's CSRF token, nothing else. The secrets are
compared in constant time and never logged; repeated wrong guesses from one address are
slowed down.
"""

from __future__ import annotations

import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass

# The serving gate's variable (components/serving/requests.py, API_KEY_ENV); not imported
# from there, because that module loads the detector. tests/unit/test_ui_app.py checks they match.
API_KEY_ENV = "FACES_API_KEY"
PASSWORD_ENV = "FACES_UI_PASSWORD"
SECRET_ENV = "FACES_UI_SECRET"
CSRF_FIELD = "csrf"
# Wrong sign-ins allowed per address within the window before answers are refused for it.
MAX_FAILURES = 5
FAILURE_WINDOW_S = 60.0


class ConfigurationError(RuntimeError):
    """The people page cannot start safely (no way to sign in)."""


@dataclass(frozen=True)
class Credentials:
    """The secrets that open a session; at least one is set."""

    api_key: str | None
    password: str | None

    @classmethod
    def from_environment(cls, environ=None) -> Credentials:
        environ = os.environ if environ is None else environ
        api_key = (environ.get(API_KEY_ENV) or "").strip() or None
        password = environ.get(PASSWORD_ENV) or None
        if api_key is None and password is None:
            raise ConfigurationError(
                f"set {API_KEY_ENV} (the serving API key) or {PASSWORD_ENV} to sign in to the people page; "
                "it does not start open")
        return cls(api_key, password)

    def check(self, typed: str) -> str | None:
        """Who signed in (``api-key`` or ``password``), or None for a wrong secret."""
        typed_bytes = (typed or "").encode()
        matched = None
        # Both comparisons always run, so timing does not tell which secret exists.
        for kind, secret in (("api-key", self.api_key), ("password", self.password)):
            if secret is not None and hmac.compare_digest(typed_bytes, secret.encode()) and typed_bytes:
                matched = matched or kind
        return matched


def session_secret(environ=None) -> str:
    """The key signing session cookies: ``FACES_UI_SECRET``, or a fresh random one (sessions end with the server)."""
    environ = os.environ if environ is None else environ
    return (environ.get(SECRET_ENV) or "").strip() or secrets.token_urlsafe(32)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(session_token: str | None, form_token: str | None) -> bool:
    return bool(session_token) and bool(form_token) and hmac.compare_digest(str(session_token), str(form_token))


class SignInThrottle:
    """Counts wrong sign-ins per client address; too many within a window are refused for a while."""

    def __init__(self, max_failures: int = MAX_FAILURES, window_s: float = FAILURE_WINDOW_S, clock=time.monotonic):
        self.max_failures, self.window_s, self.clock = max_failures, window_s, clock
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str) -> list[float]:
        now = self.clock()
        recent = [moment for moment in self._failures.get(client, []) if now - moment < self.window_s]
        self._failures[client] = recent
        return recent

    def blocked(self, client: str) -> bool:
        with self._lock:
            return len(self._recent(client)) >= self.max_failures

    def failed(self, client: str) -> None:
        with self._lock:
            self._recent(client).append(self.clock())
            if len(self._failures) > 10000:  # bound memory under a scan of many addresses
                self._failures.clear()

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)
