"""``idlegrid metering serve | void-earnings``."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("metering", help="usage records, settlement and held earnings")
    msub = p.add_subparsers(dest="metering_command", required=True)
    msub.add_parser("serve", help="run the metering gRPC service").set_defaults(func=_serve)
    v = msub.add_parser("void-earnings", help="an operator's decision: void a node's held earnings and refund "
                                              "the partners who paid them")
    v.add_argument("node_id", help="the node (hex id, as usage records name it)")
    v.add_argument("--reason", required=True, help="why (recorded with each voided earning, shown to the provider)")
    v.set_defaults(func=_void)


async def _serve(args, config) -> int:
    from idlegrid.metering.service import serve

    await serve(config)
    return 0


async def _void(args, config) -> int:
    import grpc

    from idlegrid.common.channel import open_channel
    from idlegrid.common.errors import from_rpc_error
    from idlegrid.metering.v1 import metering_pb2 as pb
    from idlegrid.metering.v1 import metering_pb2_grpc

    async with open_channel(config.addrs["metering"], token=config.token(), config=config) as ch:
        stub = metering_pb2_grpc.MeteringServiceStub(ch)
        try:
            r = await stub.VoidNodeEarnings(pb.VoidNodeEarningsRequest(node_id=args.node_id, reason=args.reason),
                                            timeout=60)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
    sys.stdout.write(f"node {args.node_id}: {r.jobs_voided} held earnings voided, {r.refunded_micros:,} "
                     f"micro-credits refunded to partners")
    sys.stdout.write(f"; {r.jobs_pending} left for the earnings worker (the ledger did not answer)\n"
                     if r.jobs_pending else "\n")
    return 0
