"""gRPC servicer of the registry: proto in, domain calls, proto out.

CreateProvider, GetNode, ListNodes, WatchNodes, AttachLink and DetachLink,
the catalog, the operator controls and ReportCheck sit behind the service
credentials (the shared interceptor checks who may call each:
common/identities.py); AttachLink also proves the node with its token in
``x-idlegrid-node-token``.
RegisterNode, Heartbeat, Drain, Deregister and SetPaused are open methods for
the interceptor and authenticate here, with provider and node credentials.
"""

from __future__ import annotations

import grpc

from idlegrid.common.errors import PermissionDenied, Unauthenticated
from idlegrid.common.node_link import NODE_TOKEN_HEADER
from idlegrid.registry import credentials, validate
from idlegrid.registry.records import LiveNode
from idlegrid.registry.registry import Registry
from idlegrid.registry.v1 import registry_pb2 as pb
from idlegrid.registry.v1 import registry_pb2_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RegistryService"].full_name
# Methods that authenticate with provider and node tokens instead of the service token.
NODE_METHODS = tuple(f"/{SERVICE_NAME}/{m}" for m in ("RegisterNode", "Heartbeat", "Drain", "Deregister",
                                                                 "SetPaused"))


def _token(context: grpc.aio.ServicerContext) -> str | None:
    return credentials.from_metadata(context.invocation_metadata())


def _node_token(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == NODE_TOKEN_HEADER:
            return value.removeprefix("Bearer ")
    return None


def _beat_response(node: LiveNode, settings, received: int) -> pb.HeartbeatResponse:
    return pb.HeartbeatResponse(state=node.state, state_reason=node.reason, state_detail=node.detail,
                                heartbeat_interval_ms=node.heartbeat_interval_ms,
                                lease_intervals=settings.lease_intervals, heartbeats_received=received)


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self._reg = registry

    async def CreateProvider(self, request, context):
        provider, token = await self._reg.create_provider(request)
        return pb.CreateProviderResponse(provider=provider.to_proto(), provider_token=token)

    async def RegisterNode(self, request, context):
        who = self._reg.authenticate(_token(context))
        node, token = await self._reg.register(who, request)
        s = self._reg.settings
        return pb.RegisterNodeResponse(node_id=node.id, node_token=token,
                                       heartbeat_interval_ms=s.heartbeat_interval_ms,
                                       lease_intervals=s.lease_intervals, state=node.state)

    async def Heartbeat(self, request_iterator, context):
        who = self._reg.authenticate(_token(context))
        node = who.node
        if node is None:
            raise PermissionDenied("Heartbeat takes a node token, not a provider token")
        reg, settings, check_load = self._reg, self._reg.settings, validate.load
        received, told = 0, (-1, -1)
        async for beat in request_iterator:
            if node.token_digest is not who.digest:
                raise Unauthenticated("the node token was revoked or replaced; register again")
            if beat.node_id != node.id:
                raise PermissionDenied("node_id is not the node of this token")
            check_load(beat.load)
            reg.heartbeat(node, beat.load)
            if beat.unlinked_for_ms and node.link is not None:
                await reg.agent_unlinked(node, beat.unlinked_for_ms)
            received += 1
            if (node.revision, node.heartbeat_interval_ms) != told:
                told = (node.revision, node.heartbeat_interval_ms)
                yield _beat_response(node, settings, received)
        yield _beat_response(node, settings, received)

    async def Drain(self, request, context):
        who = self._reg.authenticate(_token(context))
        node = await self._reg.drain(who, request.node_id)
        return pb.DrainResponse(node=node.to_proto())

    async def Deregister(self, request, context):
        who = self._reg.authenticate(_token(context))
        node = await self._reg.deregister(who, request.node_id)
        return pb.DeregisterResponse(node=node.to_proto())

    async def SetPaused(self, request, context):
        who = self._reg.authenticate(_token(context))
        node = await self._reg.pause(who, request)
        return pb.SetPausedResponse(node=node.to_proto())

    async def AttachLink(self, request, context):
        node = self._reg.attach_link(_node_token(context), request)
        return pb.AttachLinkResponse(node=node.to_proto())

    async def DetachLink(self, request, context):
        return pb.DetachLinkResponse(detached=await self._reg.detach_link(request))

    async def GetNode(self, request, context):
        return pb.GetNodeResponse(node=self._reg.get(request.node_id).to_proto())

    async def ListNodes(self, request, context):
        page, next_token = self._reg.list(request)
        return pb.ListNodesResponse(nodes=[n.to_proto() for n in page], next_page_token=next_token)

    # ---- the catalog and operator controls

    async def PutCatalogModel(self, request, context):
        return await self._reg.put_catalog_model(request)

    async def ListCatalog(self, request, context):
        return pb.ListCatalogResponse(models=self._reg.list_catalog())

    async def RemoveCatalogModel(self, request, context):
        await self._reg.remove_catalog_model(request)
        return pb.RemoveCatalogModelResponse()

    async def SetSuspended(self, request, context):
        nodes = await self._reg.operators.set_suspended(request)
        return pb.SetSuspendedResponse(nodes=[n.to_proto() for n in nodes])

    async def SetProviderTrusted(self, request, context):
        provider = await self._reg.operators.set_trusted(request)
        return pb.SetProviderTrustedResponse(provider=provider.to_proto())

    async def RotateProviderToken(self, request, context):
        return pb.RotateProviderTokenResponse(provider_token=await self._reg.operators.rotate(request))

    async def RevokeProviderToken(self, request, context):
        return pb.RevokeProviderTokenResponse(node_ids=await self._reg.operators.revoke(request))

    async def SetEndpointBanned(self, request, context):
        return pb.SetEndpointBannedResponse(node_ids=await self._reg.operators.ban(request))

    async def ListOperatorActions(self, request, context):
        return await self._reg.operators.actions(request)

    async def ReportCheck(self, request, context):
        return pb.ReportCheckResponse(node=(await self._reg.report_check(request)).to_proto())

    async def WatchNodes(self, request, context):
        hub = self._reg.hub
        subscription, first = hub.subscribe(
            resume_epoch=request.resume_epoch, resume_revision=request.resume_revision,
            wants_load=not request.omit_load, snapshot=self._reg.snapshot)
        try:
            for message in first:
                yield message
            while True:
                yield await subscription.next()
        finally:
            hub.unsubscribe(subscription)
