"""Bearer-token auth and TLS for the OTLP listeners (config `receivers.otlp.{grpc,http}.auth_token` / `tls`).

The token check is the admin API's (`admin/auth.py`: constant-time `hmac.compare_digest`, Bearer, or
Basic with the token as password); OTLP clients send it as the `Authorization` header (HTTP) or the
`authorization` metadata (gRPC), e.g. `OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20<token>`.
Tokens are never logged or echoed.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import grpc

from otel_patter.admin.auth import TokenAuth
from otel_patter.config import Endpoint, TlsConfig
from otel_patter.receivers.decode import Unauthenticated

UNAUTHENTICATED = "missing or wrong bearer token (send Authorization: Bearer <token>)"


class ListenerAuth:
    def __init__(self, token: str | None) -> None:
        self._auth = TokenAuth(token) if token is not None else None

    @property
    def enabled(self) -> bool:
        return self._auth is not None

    def __repr__(self) -> str:
        return f"ListenerAuth(enabled={self.enabled})"

    def check(self, header: str | None) -> None:
        """Raise Unauthenticated unless `header` (an Authorization value) carries the token."""
        if self._auth is not None and not self._auth.authorized(header):
            raise Unauthenticated(UNAUTHENTICATED)

    def check_grpc(self, context: Any) -> None:
        if self._auth is None:
            return
        header = next((v for k, v in (context.invocation_metadata() or ()) if k == "authorization"
                       and isinstance(v, str)), None)
        self.check(header)


def listener_auth(listener: Endpoint | None) -> ListenerAuth:
    return ListenerAuth(listener.auth_token if listener is not None else None)


def server_ssl_context(tls: TlsConfig | None) -> ssl.SSLContext | None:
    """Our certificate; with `client_ca_file`, clients must present one that CA signed (mTLS)."""
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file:
        ctx.load_verify_locations(cafile=tls.client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def grpc_server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    ca = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials([(Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())],
                                       root_certificates=ca, require_client_auth=ca is not None)
