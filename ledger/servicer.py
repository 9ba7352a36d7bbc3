"""gRPC servicer of the ledger: the wire only. Protos in, plain values
(``idlegrid.ledger.values``) to the domain, plain values back, protos out;
this is the one module that converts between the two."""

from __future__ import annotations

from datetime import datetime

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp

from idlegrid.common.errors import InvalidArgument
from idlegrid.ledger import chart, queries
from idlegrid.ledger.aggregates import Aggregates, VoidAggregate
from idlegrid.ledger.codes import BATCH_SIZE_MAX, LEDGER_CREDITS
from idlegrid.ledger.earnings import Earnings
from idlegrid.ledger.leases import LeaseCharge, Leases, NodeAggregate, Window
from idlegrid.ledger.market import Market, Outcome, Settlement
from idlegrid.ledger.v1 import ledger_pb2 as pb
from idlegrid.ledger.v1 import ledger_pb2_grpc
from idlegrid.ledger.values import Account, BalanceRecord, StoredTransfer, Transfer
from idlegrid.ledger.writer import BatchWriter

# -- wire -> domain ----------------------------------------------------------


def _transfer(t: pb.Transfer) -> Transfer:
    return Transfer(t.id, t.debit_account_id, t.credit_account_id, t.amount, t.pending_id, t.user_data,
                    t.timeout_s, t.ledger, t.code, t.flags)


def _account(a: pb.Account) -> Account:
    return Account(id=a.id, ledger=a.ledger, kind=a.kind, flags=a.flags, user_data=a.user_data, name=a.name,
                   debits_pending=a.debits_pending, debits_posted=a.debits_posted,
                   credits_pending=a.credits_pending, credits_posted=a.credits_posted)


def _settlement(s: pb.SettleRequest) -> Settlement:
    return Settlement(job_id=s.job_id, provider_account_id=s.provider_account_id, cost=s.cost,
                      fee_bps=s.fee_bps, hold_earning=s.hold_earning)


def _window(r: pb.ClearWindowRequest) -> Window:
    return Window(
        window_id=r.window_id, fee=r.fee, fee_root_prefix=r.fee_root_prefix,
        leases=[LeaseCharge(c.lease_id, c.amount, c.root_prefix) for c in r.leases],
        aggregates=[NodeAggregate(a.aggregate_id, a.provider_account_id, a.amount, a.root_prefix, a.hold)
                    for a in r.aggregates])


# -- domain -> wire ----------------------------------------------------------


def _ts(dt: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt)
    return ts


def _account_pb(a: Account) -> pb.Account:
    return pb.Account(
        id=a.id, ledger=a.ledger, kind=a.kind, flags=a.flags, user_data=a.user_data, name=a.name,
        debits_pending=a.debits_pending, debits_posted=a.debits_posted,
        credits_pending=a.credits_pending, credits_posted=a.credits_posted, created_at=_ts(a.created_at))


def _transfer_pb(t: StoredTransfer) -> pb.Transfer:
    return pb.Transfer(
        id=t.id, debit_account_id=t.debit_account_id, credit_account_id=t.credit_account_id,
        amount=t.amount, pending_id=t.pending_id, user_data=t.user_data, timeout_s=t.timeout_s,
        ledger=t.ledger, code=t.code, flags=t.flags, seq=t.seq, created_at=_ts(t.created_at))


def _balance_pb(b: BalanceRecord) -> pb.AccountBalance:
    return pb.AccountBalance(
        seq=b.seq, transfer_id=b.transfer_id, created_at=_ts(b.created_at),
        debits_pending=b.debits_pending, debits_posted=b.debits_posted,
        credits_pending=b.credits_pending, credits_posted=b.credits_posted)


def _outcome_pb(o: Outcome) -> pb.OperationResponse:
    return pb.OperationResponse(status=o.status, transfer_ids=o.transfer_ids, results=o.results,
                                amount=o.amount, fee=o.fee, provider_amount=o.provider_amount)


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    def __init__(self, pool: asyncpg.Pool, writer: BatchWriter) -> None:
        self._pool = pool
        self._writer = writer
        self._market = Market(writer)
        self._earnings = Earnings(writer, pool)
        self._leases = Leases(writer)
        self._aggregates = Aggregates(writer, pool)

    async def CreateAccounts(self, request, context):
        results = await chart.create_accounts(self._pool, [_account(a) for a in request.accounts])
        return pb.CreateAccountsResponse(results=results)

    async def CreateTransfers(self, request, context):
        n = len(request.transfers)
        if not 1 <= n <= BATCH_SIZE_MAX:
            raise InvalidArgument(f"transfers: between 1 and {BATCH_SIZE_MAX} items, got {n}")
        for t in request.transfers:
            if t.seq or t.HasField("created_at"):
                raise InvalidArgument("seq and created_at are set by the ledger; leave them unset")
        results = await self._writer.submit([_transfer(t) for t in request.transfers])
        return pb.CreateTransfersResponse(results=results)

    async def LookupAccounts(self, request, context):
        found = await queries.lookup_accounts(self._pool, list(request.ids))
        return pb.LookupAccountsResponse(accounts=[_account_pb(a) for a in found])

    async def LookupTransfers(self, request, context):
        found = await queries.lookup_transfers(self._pool, list(request.ids))
        return pb.LookupTransfersResponse(transfers=[_transfer_pb(t) for t in found])

    async def GetAccountTransfers(self, request, context):
        page = await queries.account_transfers(
            self._pool, request.account_id, after_seq=request.after_seq, limit=request.limit,
            reversed_=request.reversed)
        return pb.GetAccountTransfersResponse(transfers=[_transfer_pb(t) for t in page.items],
                                              next_seq=page.next_seq)

    async def GetAccountBalances(self, request, context):
        page = await queries.account_balances(
            self._pool, request.account_id, after_seq=request.after_seq, limit=request.limit,
            reversed_=request.reversed)
        return pb.GetAccountBalancesResponse(balances=[_balance_pb(b) for b in page.items],
                                             next_seq=page.next_seq)

    async def TopUp(self, request, context):
        return _outcome_pb(await self._market.top_up(
            account_id=request.account_id, amount=request.amount, idempotency_key=request.idempotency_key,
            ledger=request.ledger))

    async def Reserve(self, request, context):
        return _outcome_pb(await self._market.reserve(
            job_id=request.job_id, consumer_account_id=request.consumer_account_id, amount=request.amount,
            timeout_s=request.timeout_s, ledger=request.ledger))

    async def Settle(self, request, context):
        return _outcome_pb(await self._market.settle(_settlement(request)))

    async def SettleBatch(self, request, context):
        outcomes = await self._market.settle_batch([_settlement(s) for s in request.settles])
        return pb.SettleBatchResponse(results=[_outcome_pb(o) for o in outcomes])

    async def ReleaseEarnings(self, request, context):
        outcomes = await self._earnings.release(list(request.job_ids))
        return pb.EarningsResponse(results=[_outcome_pb(o) for o in outcomes])

    async def VoidEarnings(self, request, context):
        outcomes = await self._earnings.void(list(request.job_ids))
        return pb.EarningsResponse(results=[_outcome_pb(o) for o in outcomes])

    async def OpenLease(self, request, context):
        g = await self._leases.open(lease_id=request.lease_id, consumer_account_id=request.consumer_account_id,
                                    amount_min=request.amount_min, amount_max=request.amount_max,
                                    user_data=request.user_data)
        return pb.OpenLeaseResponse(status=g.status, amount=g.amount, available=g.available,
                                    held_elsewhere=g.held_elsewhere)

    async def ClearWindow(self, request, context):
        c = await self._leases.clear(_window(request))
        return pb.ClearWindowResponse(status=c.status, transfer_ids=c.transfer_ids, results=c.results)

    async def ReleaseAggregates(self, request, context):
        outcomes = await self._aggregates.release(list(request.aggregate_ids))
        return pb.AggregatesResponse(results=[_outcome_pb(o) for o in outcomes])

    async def VoidAggregates(self, request, context):
        outcomes = await self._aggregates.void([
            VoidAggregate(v.aggregate_id, [(f.consumer_account_id, f.amount) for f in v.refunds])
            for v in request.aggregates])
        return pb.AggregatesResponse(results=[_outcome_pb(o) for o in outcomes])

    async def Release(self, request, context):
        return _outcome_pb(await self._market.release(job_id=request.job_id))

    async def Payout(self, request, context):
        return _outcome_pb(await self._market.payout(
            provider_account_id=request.provider_account_id, amount=request.amount,
            idempotency_key=request.idempotency_key, ledger=request.ledger))

    async def ResolveAccount(self, request, context):
        if not request.name:
            raise InvalidArgument("name is required")
        acct = await queries.account_by_name(self._pool, request.name, request.ledger or LEDGER_CREDITS)
        return pb.ResolveAccountResponse(account=_account_pb(acct))
