"""Runs the gateway: database and migrations, channels to the backends, the
key cache and its revocation listener, and uvicorn in this process and event
loop (so that tests and ``idlegrid up`` can run it beside the other
services). Signals are the host's business: stop() ends it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog
import uvicorn

from idlegrid.common import db, server
from idlegrid.common.config import Config
from idlegrid.gateway import keys, onboarding
from idlegrid.gateway.app import create_app
from idlegrid.gateway.auth import Authenticator
from idlegrid.gateway.backends import SERVICES, Backends
from idlegrid.gateway.context import Gateway
from idlegrid.gateway.edge import IpLimiter, KeySlots
from idlegrid.gateway.metrics import Metrics
from idlegrid.gateway.ratelimit import RateLimiter
from idlegrid.gateway.settings import GatewaySettings
from idlegrid.ledger.v1 import ledger_pb2 as lpb

MIGRATIONS = Path(__file__).parent / "migrations"
STARTUP_TIMEOUT_S = 30.0
BACKLOG = 2048

log = structlog.get_logger("gateway")


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is a plain OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP: asyncio then sets TCP_NODELAY
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"gateway: cannot listen on {host}:{port}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


def _closer(sock: socket.socket):
    async def close() -> None:
        sock.close()
    return close


async def _serve(srv: uvicorn.Server, sock: socket.socket) -> None:
    try:
        await srv.serve(sockets=[sock])
    except SystemExit as e:  # uvicorn exits on start-up failures; never let that end the host's loop
        raise OSError(f"uvicorn exited with status {e.code}") from None


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the host process owns signals
        yield


@dataclass(slots=True)
class RunningGateway:
    """The running gateway; ``port`` is the bound port. The helpers below are
    for ``idlegrid up`` and tests (the same as the admin routes do)."""

    port: int
    host: str
    gw: Gateway
    _server: _Server
    _task: asyncio.Task
    _sock: socket.socket

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def create_account(self, *, kind: str, name: str) -> onboarding.CreatedAccount:
        """A consumer or provider account (409 ApiError when the name is taken)."""
        return await onboarding.create_account(self.gw.pool, self.gw.backends, kind=kind, name=name,
                                               timeout_s=self.gw.rpc_timeout_s)

    async def find_account(self, *, kind: str, name: str) -> onboarding.CreatedAccount | None:
        return await onboarding.find_account(self.gw.pool, kind=kind, name=name)

    async def create_key(self, *, scope: str, account_id: bytes | None = None) -> tuple[str, str]:
        """(key_id, key) for an account made with create_account (providers:
        bound to its registry provider), or an admin key."""
        provider_id = await onboarding.provider_of(self.gw.pool, account_id) if scope == "provider" and account_id \
            else None
        expires_in_s = self.gw.settings.admin_key_ttl_s if scope == "admin" else None
        return await keys.create_key(self.gw.pool, scope=scope, account_id=account_id, provider_id=provider_id,
                                     expires_in_s=expires_in_s)

    async def top_up(self, account_id: bytes, amount_micros: int, idempotency_key: str) -> None:
        r = await self.gw.backends.ledger.TopUp(lpb.TopUpRequest(
            account_id=account_id, amount=amount_micros, idempotency_key=idempotency_key),
            timeout=self.gw.rpc_timeout_s)
        if r.status not in (lpb.OPERATION_STATUS_OK, lpb.OPERATION_STATUS_ALREADY_APPLIED):
            raise RuntimeError(f"top-up refused: {lpb.OperationStatus.Name(r.status)}")

    async def stop(self, grace_s: float | None = None) -> None:
        """Stops taking requests, lets those in flight finish within ``grace_s``
        (default IDLEGRID_SHUTDOWN_GRACE_S), then closes everything."""
        grace_s = self.gw.config.shutdown_grace_s if grace_s is None else grace_s
        self._server.config.timeout_graceful_shutdown = max(0, int(grace_s))
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace_s + 1)
        except TimeoutError:
            self._server.force_exit = True
            await asyncio.gather(self._task, return_exceptions=True)
        except Exception:  # noqa: BLE001 - a server that failed still has resources to free
            pass
        self._sock.close()
        g = self.gw
        await g.auth.stop()
        await g.backends.close()
        await g.pool.close()
        log.info("gateway.stopped", port=self.port)


async def start(config: Config, *, port: int | None = None, host: str | None = None,
                database_url: str | None = None, ledger_addr: str | None = None, scheduler_addr: str | None = None,
                metering_addr: str | None = None, registry_addr: str | None = None,
                settings: GatewaySettings | None = None) -> RunningGateway:
    """Starts the gateway on ``host:port`` (port 0 picks a free one)."""
    settings = settings or GatewaySettings.from_env()
    url = database_url or await db.resolve_url(config)
    pool = await db.create_pool(url, max_size=config.db_pool_max)
    cleanup: list = [pool.close]
    try:
        if config.migrate_on_start:
            await db.migrate(pool, "gateway", MIGRATIONS)
        given = {"ledger": ledger_addr, "scheduler": scheduler_addr, "metering": metering_addr,
                 "registry": registry_addr}
        backends = Backends.open(config, {s: given[s] or config.addrs[s] for s in SERVICES})
        cleanup.append(backends.close)
        metrics = Metrics()
        auth = Authenticator(pool, url, cache_max=settings.key_cache_max,
                             unknown_ttl_s=settings.unknown_key_ttl_ms / 1000,
                             unknown_max=settings.unknown_key_cache_max,
                             acquire_timeout_s=settings.db_acquire_timeout_s, metrics=metrics)
        await auth.start()
        cleanup.append(auth.stop)
        gw = Gateway(config=config, settings=settings, pool=pool, backends=backends, auth=auth,
                     limiter=RateLimiter(pool, rate_per_s=settings.rate_per_s, burst=settings.burst,
                                         acquire_timeout_s=settings.db_acquire_timeout_s),
                     metrics=metrics, slots=KeySlots(cap=settings.key_concurrency_max, metrics=metrics),
                     ip_limiter=IpLimiter(rate_per_s=settings.ip_rate_per_s, burst=settings.ip_burst,
                                          tracked_max=settings.ip_tracked_max))
        host = host or config.bind_host
        sock = _bind(host, config.ports["gateway"] if port is None else port)
        cleanup.append(_closer(sock))
        # proxy_headers off: uvicorn would believe X-Forwarded-For from loopback; the
        # gateway decides whom to believe (IDLEGRID_GATEWAY_TRUSTED_PROXIES, gateway/edge.py).
        uv = uvicorn.Config(create_app(gw), log_config=None, access_log=False, lifespan="off", server_header=False,
                            proxy_headers=False, timeout_graceful_shutdown=int(config.shutdown_grace_s))
        srv = _Server(uv)
        task = asyncio.create_task(_serve(srv, sock), name="gateway-http")
        deadline = asyncio.get_running_loop().time() + STARTUP_TIMEOUT_S
        while not srv.started:
            if task.done():
                raise OSError(f"gateway: uvicorn did not start: {task.exception()!r}")
            if asyncio.get_running_loop().time() > deadline:
                srv.should_exit = True
                raise TimeoutError("gateway: uvicorn did not start")
            await asyncio.sleep(0.01)
        bound = sock.getsockname()[1]
    except BaseException:
        for close in reversed(cleanup):
            with contextlib.suppress(Exception):
                await close()
        raise
    log.info("gateway.started", address=f"{host}:{bound}", rate_per_s=settings.rate_per_s, burst=settings.burst)
    return RunningGateway(port=bound, host=host, gw=gw, _server=srv, _task=task, _sock=sock)


async def serve(config: Config, settings: GatewaySettings | None = None) -> None:
    running = await start(config, settings=settings)
    await server.wait_for_signal()
    log.info("gateway.stopping")
    await running.stop()
