"""gRPC servicer of the ledger: proto in, domain calls, proto out."""

from __future__ import annotations

import asyncpg

from idlegrid.common.errors import InvalidArgument
from idlegrid.ledger import accounts, queries
from idlegrid.ledger.codes import BATCH_SIZE_MAX, LEDGER_CREDITS
from idlegrid.ledger.market import Market
from idlegrid.ledger.v1 import ledger_pb2 as pb
from idlegrid.ledger.v1 import ledger_pb2_grpc
from idlegrid.ledger.writer import Writer


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    def __init__(self, pool: asyncpg.Pool, writer: Writer) -> None:
        self._pool = pool
        self._writer = writer
        self._market = Market(writer)

    async def CreateAccounts(self, request, context):
        return pb.CreateAccountsResponse(results=await accounts.create_accounts(self._pool, request.accounts))

    async def CreateTransfers(self, request, context):
        n = len(request.transfers)
        if not 1 <= n <= BATCH_SIZE_MAX:
            raise InvalidArgument(f"transfers: between 1 and {BATCH_SIZE_MAX} items, got {n}")
        for t in request.transfers:
            if t.seq or t.HasField("created_at"):
                raise InvalidArgument("seq and created_at are set by the ledger; leave them unset")
        return pb.CreateTransfersResponse(results=await self._writer.submit(request.transfers))

    async def LookupAccounts(self, request, context):
        return pb.LookupAccountsResponse(accounts=await queries.lookup_accounts(self._pool, request.ids))

    async def LookupTransfers(self, request, context):
        return pb.LookupTransfersResponse(transfers=await queries.lookup_transfers(self._pool, request.ids))

    async def GetAccountTransfers(self, request, context):
        rows, nxt = await queries.account_transfers(
            self._pool, request.account_id, request.after_seq, request.limit, request.reversed)
        return pb.GetAccountTransfersResponse(transfers=rows, next_seq=nxt)

    async def GetAccountBalances(self, request, context):
        rows, nxt = await queries.account_balances(
            self._pool, request.account_id, request.after_seq, request.limit, request.reversed)
        return pb.GetAccountBalancesResponse(balances=rows, next_seq=nxt)

    async def TopUp(self, request, context):
        return await self._market.top_up(request)

    async def Reserve(self, request, context):
        return await self._market.reserve(request)

    async def Settle(self, request, context):
        return await self._market.settle(request)

    async def SettleBatch(self, request, context):
        return await self._market.settle_batch(request)

    async def Release(self, request, context):
        return await self._market.release(request)

    async def Payout(self, request, context):
        return await self._market.payout(request)

    async def ResolveAccount(self, request, context):
        if not request.name:
            raise InvalidArgument("name is required")
        acct = await queries.account_by_name(self._pool, request.name, request.ledger or LEDGER_CREDITS)
        return pb.ResolveAccountResponse(account=acct)
