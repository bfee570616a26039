"""Bearer-token auth of the admin port (config `admin.auth_token`, `admin.metrics_auth`).

`/healthz` and `/readyz` are always open (probes); `/metrics` is open unless `metrics_auth`;
everything else (the API, its OpenAPI document, the page) wants `Authorization: Bearer <token>`.
The page also takes HTTP Basic with the token as the password (any user name), because a browser
can be asked for that and then sends it with every refresh; a browser never sends a bearer token
by itself. Comparisons are constant-time (`hmac.compare_digest`). The token is never logged and
never echoed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
REALM = 'realm="otel-patter"'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _bytes(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


class TokenAuth:
    def __init__(self, token: str | None, metrics_auth: bool = False) -> None:
        self._token = None if token is None else _bytes(token)
        self.metrics_auth = metrics_auth

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def __repr__(self) -> str:  # never show the token
        return f"TokenAuth(enabled={self.enabled}, metrics_auth={self.metrics_auth})"

    def protects(self, path: str) -> bool:
        if self._token is None or path in OPEN_PATHS:
            return False
        return path != "/metrics" or self.metrics_auth

    def authorized(self, header: str | None) -> bool:
        """Whether an `Authorization` header value carries the token (Bearer, or Basic password)."""
        assert self._token is not None
        if not header:
            return False
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            return hmac.compare_digest(_bytes(value), self._token)
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            _, sep, password = decoded.partition(b":")
            return bool(sep) and hmac.compare_digest(password, self._token)
        return False

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self.protects(request.path) or self.authorized(request.headers.get("Authorization")):
            return await handler(request)
        if request.path.startswith("/api/") or request.path == "/metrics":
            return web.json_response({"error": "unauthorized: send Authorization: Bearer <admin.auth_token>"},
                                     status=401, headers={"WWW-Authenticate": f"Bearer {REALM}"})
        # the page: let a browser ask for the token (as the Basic password)
        return web.Response(text="401 unauthorized: this page wants the admin token", status=401,
                            content_type="text/plain",
                            headers={"WWW-Authenticate": f"Basic {REALM}, Bearer {REALM}"})
