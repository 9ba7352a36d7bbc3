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

Linked mode (``relay_addrs`` set; how a node behind NAT joins): the node
registers without an endpoint and holds ONE outbound link to a relay
(link.py), through which the registry verifies it and the schedulers reach
it; Triton stays on loopback. Each registration (new token) opens the link
again. Heartbeats say for how long the agent has held no link
(``unlinked_for_ms``), and a link change sends one at once, so a relay that
died without telling the registry takes the node OFFLINE within seconds.

Idle means idle: the pause loop (pausing.py) pauses the node while its owner
uses the GPU, outside its serving schedule or over its limits (node.toml),
and resumes it when all is clear.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import structlog

from idlegrid.common.auth import bearer
from idlegrid.common.channel import open_channel
from idlegrid.common.errors import from_rpc_error
from idlegrid.node import hardware
from idlegrid.node.discovery import discover
from idlegrid.node.gpu_activity import GpuActivity, NvmlActivity
from idlegrid.node.joining import join
from idlegrid.node.link import NodeLink
from idlegrid.node.load import LoadProbe, TritonLoadProbe
from idlegrid.node.options import (
    REJOIN_REASONS,
    AgentOptions,
    Status,
    StreamEnd,
    VerificationFailed,
)
from idlegrid.node.pausing import Clock, PauseLoop, utc_now
from idlegrid.registry.v1 import registry_pb2 as pb
from idlegrid.registry.v1 import registry_pb2_grpc

log = structlog.get_logger("node.agent")

__all__ = ["AgentOptions", "NodeAgent", "VerificationFailed"]

class NodeAgent:
    def __init__(self, options: AgentOptions, *, hardware_inventory: pb.Hardware | None = None,
                 offers: list[pb.ModelOffer] | None = None, probe: LoadProbe | None = None,
                 activity: GpuActivity | None = None, clock: Clock = utc_now) -> None:
        """``hardware_inventory``, ``offers``, ``probe``, ``activity`` and
        ``clock`` replace detection, discovery from Triton, the Triton load
        probe, NVML and the wall clock (tests and the bench)."""
        self.options = options
        self._activity = activity
        self._clock = clock
        self.link: NodeLink | None = None
        self.pausing: PauseLoop | None = None
        self._unlinked_since = time.monotonic()
        self._nudge = asyncio.Event()     # a link change: heartbeat now
        self._busy = False                # Triton had work at the last sample
        self._hardware = hardware_inventory
        self._offers = offers
        self._probe = probe
        self._status = Status()
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
        await join(self._register, wait_s=o.join_wait_s, backoff_max_s=o.backoff_max_s)
        self._beats = asyncio.create_task(self._heartbeats(), name="node-heartbeats")
        idle = o.node_config.idle
        if self._activity is None:
            self._activity = await asyncio.to_thread(NvmlActivity.open, triton_process_names=idle.triton_process_names)
        self.pausing = PauseLoop(activity=self._activity, policy=idle, state=lambda: (self.state, self.detail),
                                 set_paused=self.set_paused, triton_busy=self._triton_busy,
                                 triton_pids=lambda: o.triton_pids, clock=self._clock)
        self.pausing.start()

    @property
    def linked_mode(self) -> bool:
        return bool(self.options.relay_addrs)

    def _triton_busy(self) -> bool:
        return self._busy or (self.link is not None and self.link.in_flight > 0)

    def _on_link(self, linked: bool) -> None:
        self._unlinked_since = None if linked else time.monotonic()
        self._nudge.set()

    def _unlinked_for_ms(self) -> int:
        if not self.linked_mode or self._unlinked_since is None:
            return 0
        return max(1, min(int((time.monotonic() - self._unlinked_since) * 1000), 2**32 - 1))

    async def _relink(self) -> None:
        """Opens the link again with the node's current token (after each registration)."""
        o = self.options
        if self.link is not None:
            await self.link.stop()
        self.link = NodeLink(relay_addrs=o.relay_addrs, node_id=self.node_id, node_token=self._node_token,
                             triton_url=o.triton_url, channel_config=o.channel_config, on_change=self._on_link,
                             backoff_max_s=o.backoff_max_s, agent_version=o.agent_version)
        self._on_link(False)
        await self.link.start()

    async def set_paused(self, paused: bool, detail: str) -> None:
        """SetPaused; the registry's answer is the node's state."""
        r = await self._stub.SetPaused(pb.SetPausedRequest(node_id=self.node_id, paused=paused, detail=detail),
                                       metadata=bearer(self._node_token), timeout=self.options.rpc_timeout_s)
        self._set(r.node.state, r.node.state_reason, r.node.state_detail)

    async def _register(self, *, as_new: bool = False) -> None:
        o, nc = self.options, self.options.node_config
        request = pb.RegisterNodeRequest(
            node_id=b"" if as_new else self.node_id or b"",
            endpoint="" if self.linked_mode else nc.endpoint or o.triton_url, hardware=self._hardware,
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
        if self.linked_mode:
            await self._relink()

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
                self._busy = load.in_flight > 0 or load.queue_depth > 0
                self._nudge.clear()
                try:
                    await call.write(pb.HeartbeatRequest(node_id=self.node_id, load=load,
                                                         unlinked_for_ms=self._unlinked_for_ms()))
                except (grpc.RpcError, asyncio.InvalidStateError):
                    break  # the reader has (or will have) the cause
                self.heartbeats_sent += 1
                nudged = asyncio.create_task(self._nudge.wait())
                await asyncio.wait([reader, nudged], timeout=self._interval_s, return_when=asyncio.FIRST_COMPLETED)
                nudged.cancel()
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
                if r.state == pb.NODE_STATE_OFFLINE and r.state_reason in REJOIN_REASONS and not self._leaving:
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
        if self.pausing is not None:
            await self.pausing.stop()
            self.pausing = None
        if self.link is not None:
            await self.link.stop()
            self.link = None
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
