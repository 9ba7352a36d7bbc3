"""The node agent: registers this node's Triton with the registry, keeps its
lease with a heartbeat stream that carries the load, follows what the
registry says of the node, and drains it on the way out.

Usable in-process (tests, ``idlegrid up``) as well as by ``idlegrid node
start``::

    agent = NodeAgent(options)
    await agent.start()                 # hardware, models, register, heartbeats
    await agent.wait_for(pb.NODE_STATE_READY)   # verified by the registry
    ...
    await agent.drain()                 # DRAINING, wait for in-flight work, deregister

The agent registers again by itself when the registry says the node went
OFFLINE for a lease that ran out or a registry restart, or no longer accepts
its token (the registry lost it); it does not after a failed verification
(the provider must fix the node) or a deregistration.
"""

from __future__ import annotations

import asyncio
import enum
import time
import uuid
from dataclasses import dataclass, field

import grpc
import structlog

from idlegrid.common.auth import bearer
from idlegrid.common.channel import open_channel
from idlegrid.common.config import Config
from idlegrid.common.errors import FailedPrecondition, from_rpc_error
from idlegrid.node import hardware
from idlegrid.node.config_file import NodeConfig
from idlegrid.node.discovery import discover
from idlegrid.node.load import LoadProbe, TritonLoadProbe
from idlegrid.registry.v1 import registry_pb2 as pb
from idlegrid.registry.v1 import registry_pb2_grpc

log = structlog.get_logger("node.agent")

AGENT_VERSION = "idlegrid-agent/0.1.0"
# OFFLINE for these reasons: register again on our own.
_REJOIN_REASONS = frozenset({pb.STATE_REASON_LEASE_EXPIRED, pb.STATE_REASON_REGISTRY_RESTARTED})


class VerificationFailed(FailedPrecondition):
    """The registry checked the node's Triton and refused it; the message says why."""

    reason = "verification_failed"


class StreamEnd(enum.Enum):
    """Why a heartbeat stream ended, and so what the agent does next."""

    REJOIN = enum.auto()  # register again: OFFLINE for a reason to rejoin after, or the token was refused
    RETRY = enum.auto()   # the stream broke: open another after a pause
    STOP = enum.auto()    # the agent is leaving


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentOptions:
    registry_addr: str
    provider_token: str
    triton_url: str
    node_config: NodeConfig
    metrics_url: str | None = None       # Triton's Prometheus endpoint, for queue depth
    node_id: bytes | None = None         # re-register this node (a restarted agent)
    channel_config: Config | None = None  # TLS settings for the registry channel
    rpc_timeout_s: float = 10.0
    discovery_timeout_s: float = 10.0
    drain_quiet_s: float = 2.0           # no work seen for this long: drained
    drain_poll_s: float = 0.25
    drain_timeout_s: float = 60.0        # deregister anyway after this
    backoff_max_s: float = 10.0          # reconnects and re-registrations
    agent_version: str = AGENT_VERSION


@dataclass(slots=True)
class _Status:
    state: int = pb.NODE_STATE_UNSPECIFIED
    reason: int = pb.STATE_REASON_UNSPECIFIED
    detail: str = ""
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class NodeAgent:
    def __init__(self, options: AgentOptions, *, hardware_inventory: pb.Hardware | None = None,
                 offers: list[pb.ModelOffer] | None = None, probe: LoadProbe | None = None) -> None:
        """``hardware_inventory``, ``offers`` and ``probe`` replace detection,
        discovery from Triton and the Triton load probe (tests and the bench)."""
        self.options = options
        self._hardware = hardware_inventory
        self._offers = offers
        self._probe = probe
        self._status = _Status()
        self._channel: grpc.aio.Channel | None = None
        self._stub: registry_pb2_grpc.RegistryServiceStub | None = None
        self._node_token = ""
        self._interval_s = 5.0
        self._beats: asyncio.Task | None = None
        self._leaving = False
        self.node_id: bytes | None = options.node_id
        self.heartbeats_sent = 0
        self.registrations = 0

    # ------------------------------------------------------------ what the registry says

    @property
    def state(self) -> int:
        return self._status.state

    @property
    def reason(self) -> int:
        return self._status.reason

    @property
    def detail(self) -> str:
        return self._status.detail

    @property
    def offers(self) -> list[pb.ModelOffer]:
        return list(self._offers or [])

    def _set(self, state: int, reason: int, detail: str) -> None:
        s = self._status
        if (s.state, s.reason, s.detail) != (state, reason, detail):
            s.state, s.reason, s.detail = state, reason, detail
            log.info("node.state", state=pb.NodeState.Name(state), reason=pb.StateReason.Name(reason), detail=detail)
            s.changed.set()
            s.changed = asyncio.Event()

    async def wait_for(self, *states: int, timeout_s: float | None = 120.0) -> int:
        """Returns once the node is in one of ``states``; raises
        VerificationFailed if verification fails first, TimeoutError."""
        async with asyncio.timeout(timeout_s):
            while self.state not in states:
                if self.state == pb.NODE_STATE_OFFLINE and self.reason == pb.STATE_REASON_VERIFICATION_FAILED:
                    raise VerificationFailed(f"the registry refused the node: {self.detail}")
                await self._status.changed.wait()
        return self.state

    # ------------------------------------------------------------ start

    async def start(self) -> None:
        o = self.options
        self._channel = open_channel(o.registry_addr, token=None, config=o.channel_config)
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)
        if self._hardware is None:
            self._hardware = await asyncio.to_thread(hardware.detect)
        if self._offers is None:
            self._offers = await discover(o.triton_url, o.node_config, timeout_s=o.discovery_timeout_s)
        if self._probe is None:
            self._probe = TritonLoadProbe(o.triton_url, metrics_url=o.metrics_url,
                                          nvml=await asyncio.to_thread(hardware.Nvml.open))
        await self._register()
        self._beats = asyncio.create_task(self._heartbeats(), name="node-heartbeats")

    async def _register(self, *, as_new: bool = False) -> None:
        o, nc = self.options, self.options.node_config
        request = pb.RegisterNodeRequest(
            node_id=b"" if as_new else self.node_id or b"", endpoint=nc.endpoint or o.triton_url, hardware=self._hardware,
            region=nc.region, labels=dict(nc.labels), models=self._offers, agent_version=o.agent_version)
        try:
            r = await self._stub.RegisterNode(request, metadata=bearer(o.provider_token), timeout=o.rpc_timeout_s)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND or not request.node_id:
                raise from_rpc_error(e) from None
            # The registry no longer knows this node (a new database): join as a new one.
            log.warning("node.unknown_to_registry", node_id=str(uuid.UUID(bytes=request.node_id)))
            await self._register(as_new=True)
            return
        self.node_id, self._node_token = r.node_id, r.node_token
        self._interval_s = r.heartbeat_interval_ms / 1000
        self.registrations += 1
        log.info("node.registered", node_id=str(uuid.UUID(bytes=r.node_id)), interval_ms=r.heartbeat_interval_ms,
                 models=[m.name for m in self._offers])
        self._set(r.state, pb.STATE_REASON_REGISTERED, "")

    # ------------------------------------------------------------ heartbeats

    async def _heartbeats(self) -> None:
        backoff_s = 0.1
        while True:
            end = await self._one_stream()
            if self._leaving:
                return
            if end is StreamEnd.REJOIN:
                try:
                    await self._register()
                    backoff_s = 0.1
                    continue
                except Exception as e:  # noqa: BLE001 - the registry may be down: retry
                    log.warning("node.register_failed", error=str(e))
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, self.options.backoff_max_s)

    async def _one_stream(self) -> StreamEnd:
        """Heartbeats on one stream until it ends, and says why it ended."""
        call = self._stub.Heartbeat(metadata=bearer(self._node_token))
        reader = asyncio.create_task(self._read(call))
        try:
            while not reader.done():
                load = await self._probe.sample()
                try:
                    await call.write(pb.HeartbeatRequest(node_id=self.node_id, load=load))
                except (grpc.RpcError, asyncio.InvalidStateError):
                    break  # the reader has (or will have) the cause
                self.heartbeats_sent += 1
                await asyncio.wait([reader], timeout=self._interval_s)
            return await reader
        except grpc.RpcError as e:
            return self._on_stream_error(e)
        finally:
            reader.cancel()
            call.cancel()

    async def _read(self, call) -> StreamEnd:
        try:
            while True:
                r = await call.read()
                if r is grpc.aio.EOF:
                    return StreamEnd.RETRY
                if r.heartbeat_interval_ms:
                    self._interval_s = r.heartbeat_interval_ms / 1000
                self._set(r.state, r.state_reason, r.state_detail)
                if r.state == pb.NODE_STATE_OFFLINE and r.state_reason in _REJOIN_REASONS and not self._leaving:
                    log.warning("node.rejoining", reason=pb.StateReason.Name(r.state_reason), detail=r.state_detail)
                    return StreamEnd.REJOIN
        except grpc.RpcError as e:
            return self._on_stream_error(e)

    def _on_stream_error(self, e: grpc.RpcError) -> StreamEnd:
        if self._leaving:
            return StreamEnd.STOP
        if e.code() == grpc.StatusCode.UNAUTHENTICATED:
            log.warning("node.token_refused", detail=e.details())
            return StreamEnd.REJOIN
        log.warning("node.heartbeat_stream_broken", code=e.code().name, detail=e.details())
        return StreamEnd.RETRY

    # ------------------------------------------------------------ leaving

    async def drain(self) -> None:
        """READY → DRAINING, waits until Triton shows no work for drain_quiet_s
        (at most drain_timeout_s), then deregisters and stops. A node that is
        not READY (still verifying, say) has nothing to drain: it deregisters."""
        o = self.options
        if self.state != pb.NODE_STATE_OFFLINE:
            try:
                r = await self._stub.Drain(pb.DrainRequest(node_id=self.node_id),
                                           metadata=bearer(self._node_token), timeout=o.rpc_timeout_s)
                self._set(r.node.state, r.node.state_reason, r.node.state_detail)
                await self._wait_idle()
            except grpc.RpcError as e:
                log.info("node.not_drained", code=e.code().name, detail=e.details())
        await self.deregister()

    async def _wait_idle(self) -> bool:
        o = self.options
        start = time.monotonic()
        quiet_since: float | None = None
        while time.monotonic() - start < o.drain_timeout_s:
            load = await self._probe.sample()
            now = time.monotonic()
            if load.in_flight == 0 and load.queue_depth == 0:
                quiet_since = quiet_since or now
                if now - quiet_since >= o.drain_quiet_s:
                    log.info("node.drained", waited_s=round(now - start, 2))
                    return True
            else:
                quiet_since = None
            await asyncio.sleep(o.drain_poll_s)
        log.warning("node.drain_timed_out", timeout_s=o.drain_timeout_s)
        return False

    async def deregister(self) -> None:
        """OFFLINE (deregistered) at once, then stops."""
        self._leaving = True
        try:
            r = await self._stub.Deregister(pb.DeregisterRequest(node_id=self.node_id),
                                            metadata=bearer(self._node_token), timeout=self.options.rpc_timeout_s)
            self._set(r.node.state, r.node.state_reason, r.node.state_detail)
        except grpc.RpcError as e:
            log.warning("node.deregister_failed", code=e.code().name, detail=e.details())
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Stops heartbeating and closes the channel without telling the
        registry (the lease runs out): what a crash looks like."""
        self._leaving = True
        if self._beats is not None:
            self._beats.cancel()
            await asyncio.gather(self._beats, return_exceptions=True)
            self._beats = None
        if self._probe is not None:
            await self._probe.close()
            self._probe = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
