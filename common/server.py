"""The gRPC server bootstrap shared by every service: a ``grpc.aio`` server
with the idlegrid interceptor, standard health checking and reflection,
plaintext or TLS, and graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from idlegrid.common.config import Config
from idlegrid.common.interceptors import RpcPolicy

log = structlog.get_logger("server")

GRACE_S = 10.0
MESSAGE_BYTES_MAX = 64 * 1024 * 1024
STREAMS_MAX = 1000
CONNECTION_AGE_MS = 300_000
CONNECTION_AGE_GRACE_MS = 660_000
GC_YOUNG_THRESHOLD = 7000  # objects allocated between collections of the youngest generation (Python's default: 700)


@dataclass(frozen=True, slots=True)
class Registration:
    """How to add one servicer: the generated ``add_XServicer_to_server``, the
    servicer object, and the full service name (for health and reflection)."""

    add: Callable[[object, grpc.aio.Server], None]
    servicer: object
    full_name: str


@dataclass(slots=True)
class RunningServer:
    name: str
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    services: tuple[str, ...]
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Run once the server takes no new calls, before the grace: end streams that never end by themselves.
    on_stopping: list[Callable[[], None]] = field(default_factory=list)
    parts: dict[str, object] = field(default_factory=dict)  # service internals, for tests and tools
    grace_s: float = GRACE_S
    node_port: int | None = None  # under mTLS: the port for node agents (no client certificate)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stops taking calls (health NOT_SERVING first, so balancers drain us),
        ends the endless streams (on_stopping), lets in-flight calls finish
        within ``grace_s``, then runs on_stop hooks."""
        for svc in ("", *self.services):
            await self.health.set(svc, health_pb2.HealthCheckResponse.NOT_SERVING)
        stopping = asyncio.create_task(self.server.stop(self.grace_s if grace_s is None else grace_s))
        await asyncio.sleep(0)  # the server has stopped taking calls
        for end in self.on_stopping:
            end()
        await stopping
        for hook in reversed(self.on_stop):
            await hook()
        log.info("server.stopped", service=self.name)


def _credentials(config: Config, *, client_certs_required: bool = True) -> grpc.ServerCredentials | None:
    """TLS when a certificate is set; under mTLS (IDLEGRID_AUTH=mtls) every
    client must show a certificate of the cluster's CA: it names the caller.
    ``client_certs_required=False``: the nodes' port (see start())."""
    if config.tls_cert is None:
        return None
    mtls = config.auth == "mtls"
    return grpc.ssl_server_credentials(
        [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())],  # type: ignore[union-attr]
        root_certificates=config.tls_ca.read_bytes() if mtls else None,  # type: ignore[union-attr]
        require_client_auth=mtls and client_certs_required,
    )


async def start(
    name: str,
    registrations: Iterable[Registration],
    *,
    config: Config,
    port: int,
    host: str | None = None,
    guard,
    open_methods: Iterable[str] = (),
    quiet_methods: Iterable[str] = (),
    node_port: int | None = None,
) -> RunningServer:
    """Starts a server for ``registrations`` on ``host:port`` (port 0 picks a
    free one) and returns it with the bound port. ``guard``: who calls
    (``config.guard(...)``, see idlegrid.common.interceptors)."""
    registrations = list(registrations)
    policy = RpcPolicy(guard=guard, open_methods=open_methods, quiet_methods=quiet_methods)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
            ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
            ("grpc.max_concurrent_streams", STREAMS_MAX),
            ("grpc.so_reuseport", 0),
            # Clients reconnect now and then, so new replicas get their share;
            # streams in flight get a long grace (jobs, watches, heartbeats).
            ("grpc.max_connection_age_ms", CONNECTION_AGE_MS),
            ("grpc.max_connection_age_grace_ms", CONNECTION_AGE_GRACE_MS),
            # Accept the clients' keepalive pings (every 30 s, also when idle).
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ],
    )
    for r in registrations:
        r.add(policy.wrap_servicer(r.servicer, r.full_name), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = tuple(r.full_name for r in registrations)
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{host or config.bind_host}:{port}"
    creds = _credentials(config)
    bound = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"{name}: cannot bind {address}")
    node_bound = None
    if config.auth == "mtls" and node_port is not None:
        # Node agents have no cluster certificate: under mTLS they get a port of
        # their own, TLS without client certificates. Node methods authenticate
        # with node tokens there; any other method finds no certificate
        # identity and is refused by the guard.
        node_address = f"{host or config.bind_host}:{node_port}"
        node_bound = server.add_secure_port(node_address, _credentials(config, client_certs_required=False))
        if node_bound == 0:
            raise OSError(f"{name}: cannot bind {node_address}")
    await server.start()
    for svc in ("", *names):
        await health_servicer.set(svc, health_pb2.HealthCheckResponse.SERVING)
    log.info("server.started", service=name, address=f"{host or config.bind_host}:{bound}", tls=creds is not None)
    return RunningServer(name=name, server=server, port=bound, health=health_servicer, services=names,
                         grace_s=config.shutdown_grace_s, node_port=node_bound)


async def wait_for_signal(*, settle: bool = True) -> None:
    """Returns on the first SIGTERM or SIGINT. ``settle``: a serving process
    that has started settles its heap (settle_heap) once the handlers are
    in place, so that a signal during the collection is not lost."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if settle:
            settle_heap()
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def settle_heap() -> None:
    """For a serving process, once it has started: what start-up made
    (modules, protobuf descriptors, tokenizers, the app) leaves the garbage
    collector's view (``gc.freeze``), so that a full collection scans only
    what requests made instead of the whole heap, tens of milliseconds each
    that land on some request's latency; and the youngest generation is
    collected ten times less often (a request makes a few hundred objects,
    nearly all freed by reference counting before any collection)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def serve_until_signal(running: RunningServer) -> None:
    await wait_for_signal()
    log.info("server.stopping", service=running.name)
    await running.stop()
