"""Client channels to other idlegrid services: the caller's own credential
on every call (its identity's token; under mTLS, its client certificate),
TLS when a CA is configured, bounded message sizes and keepalive."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from idlegrid.common.auth import bearer
from idlegrid.common.config import Config

_OPTIONS = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Spread calls over every address the name resolves to (replicas behind a
    # headless Service), not just the first one.
    ("grpc.lb_policy_name", "round_robin"),
)


class _Metadata:
    """Adds the service token (and nothing else) to every call."""

    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._md = tuple(metadata)

    def details(self, d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        md = grpc.aio.Metadata(*(tuple(d.metadata) if d.metadata else ()), *self._md)
        return grpc.aio.ClientCallDetails(d.method, d.timeout, md, d.credentials, d.wait_for_ready)


# grpc.aio files an interceptor under one call type only (the first base that
# matches), so each call type gets its own small class.
class _UnaryUnary(_Metadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self.details(details), request)


class _UnaryStream(_Metadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self.details(details), request)


class _StreamStream(_Metadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(self.details(details), request_iterator)


class _Call:
    """A stub method that adds fixed metadata to every call."""

    __slots__ = ("_call", "_md")

    def __init__(self, call, md: tuple[tuple[str, str], ...]) -> None:
        self._call, self._md = call, md

    def __call__(self, request, *, metadata=None, **kwargs):
        md = self._md if not metadata else (*tuple(metadata), *self._md)
        return self._call(request, metadata=md, **kwargs)


def with_token(stub, token: str | None):
    """Wraps a generated stub so that every call carries ``token``: cheaper than
    a client interceptor, for hot paths (the scheduler's calls to the ledger).
    None (mTLS: the certificate names the caller) leaves the stub as is."""
    if token is None:
        return stub
    md = bearer(token)
    for name, call in list(vars(stub).items()):
        setattr(stub, name, _Call(call, md))
    return stub


def open_channel(addr: str, *, token: str | None, config: Config | None = None) -> grpc.aio.Channel:
    """An aio channel to ``addr`` carrying ``token`` on every call (a client
    interceptor; pass token=None and use ``with_token`` on hot paths)."""
    md = bearer(token) if token else ()
    interceptors = [_UnaryUnary(md), _UnaryStream(md), _StreamStream(md)] if token else []
    if config is not None and config.tls_ca is not None:
        mtls = config.auth == "mtls"  # this process's certificate names it to the server
        creds = grpc.ssl_channel_credentials(
            root_certificates=config.tls_ca.read_bytes(),
            private_key=config.tls_key.read_bytes() if mtls else None,  # type: ignore[union-attr]
            certificate_chain=config.tls_cert.read_bytes() if mtls else None)  # type: ignore[union-attr]
        return grpc.aio.secure_channel(addr, creds, options=_OPTIONS, interceptors=interceptors)
    return grpc.aio.insecure_channel(addr, options=_OPTIONS, interceptors=interceptors)
