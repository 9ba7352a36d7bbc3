"""Bad input to the ledger: every malformed or impossible transfer gets its
own clear per-item result (or the whole request its gRPC status), and nothing
is written: no transfer, no batch, no burned id, no balance moves."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from idlegrid.common.money import AMOUNT_MAX
from idlegrid.ledger.v1 import ledger_pb2 as pb
from tests.ledger.support import (
    CMNED,
    DMNEC,
    LINKED,
    PENDING,
    POST,
    VOID,
    account,
    balances,
    create,
    create_accounts,
    new_id,
    post,
    row_counts,
    run_verify,
    transfer,
    void,
)


@pytest.fixture(scope="module")
async def accts(ledger):
    """a, b: plain accounts on ledger 1 (a funded); c: on ledger 2; d: on ledger 1."""
    a, b, d = account(), account(), account()
    c = account(ledger=2)
    await create_accounts(ledger, a, b, c, d)
    assert await create(ledger, transfer(d.id, a.id, 1_000)) == ["OK"]
    return a, b, c, d


async def _nothing_written(ledger, db_url, accts, call):
    """Awaits ``call()`` (a gRPC call starts when it is created, hence the
    callable) and checks that no table and no balance changed."""
    ids = [x.id for x in accts]
    before, bal_before = await row_counts(db_url), await balances(ledger, *ids)
    out = await call()
    assert await row_counts(db_url) == before
    assert await balances(ledger, *ids) == bal_before
    return out


_MALFORMED = [
    # (description, transfer factory given (a, b, c, d), expected result)
    ("id of 15 bytes", lambda a, b, c, d: transfer(a.id, b.id, 1, tid=b"\x01" * 15), "ID_MUST_BE_16_BYTES"),
    ("id of 17 bytes", lambda a, b, c, d: transfer(a.id, b.id, 1, tid=b"\x01" * 17), "ID_MUST_BE_16_BYTES"),
    ("empty id", lambda a, b, c, d: pb.Transfer(debit_account_id=a.id, credit_account_id=b.id, amount=1,
                                                ledger=1, code=1), "ID_MUST_BE_16_BYTES"),
    ("zero id", lambda a, b, c, d: transfer(a.id, b.id, 1, tid=bytes(16)), "ID_MUST_NOT_BE_ZERO"),
    ("all-ones id", lambda a, b, c, d: transfer(a.id, b.id, 1, tid=b"\xff" * 16), "ID_MUST_NOT_BE_INT_MAX"),
    ("zero amount", lambda a, b, c, d: transfer(a.id, b.id, 0), "AMOUNT_MUST_NOT_BE_ZERO"),
    ("zero amount pending", lambda a, b, c, d: transfer(a.id, b.id, 0, flags=PENDING), "AMOUNT_MUST_NOT_BE_ZERO"),
    ("'negative' amount 2^63", lambda a, b, c, d: transfer(a.id, b.id, 2**63), "AMOUNT_TOO_LARGE"),
    ("'negative' amount 2^64-1 (-1 as int64)", lambda a, b, c, d: transfer(a.id, b.id, 2**64 - 1),
     "AMOUNT_TOO_LARGE"),
    ("post of a 'negative' amount", lambda a, b, c, d: post(new_id(), 2**64 - 5), "AMOUNT_TOO_LARGE"),
    ("same account on both sides", lambda a, b, c, d: transfer(a.id, a.id, 1), "ACCOUNTS_MUST_BE_DIFFERENT"),
    ("debit account of 15 bytes", lambda a, b, c, d: transfer(a.id[:15], b.id, 1), "ACCOUNT_ID_MUST_BE_16_BYTES"),
    ("credit account of 17 bytes", lambda a, b, c, d: transfer(a.id, b.id + b"\x00", 1),
     "ACCOUNT_ID_MUST_BE_16_BYTES"),
    ("missing debit account", lambda a, b, c, d: transfer(b"", b.id, 1), "DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO"),
    ("zero debit account", lambda a, b, c, d: transfer(bytes(16), b.id, 1), "DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO"),
    ("zero credit account", lambda a, b, c, d: transfer(a.id, bytes(16), 1), "CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO"),
    ("ledger 0", lambda a, b, c, d: transfer(a.id, b.id, 1, ledger=0), "LEDGER_MUST_NOT_BE_ZERO"),
    ("code 0", lambda a, b, c, d: transfer(a.id, b.id, 1, code=0), "CODE_MUST_NOT_BE_ZERO"),
    ("user_data of 5 bytes", lambda a, b, c, d: transfer(a.id, b.id, 1, user_data=b"12345"),
     "USER_DATA_MUST_BE_16_BYTES"),
    ("unknown flag 32", lambda a, b, c, d: transfer(a.id, b.id, 1, flags=32), "FLAGS_UNKNOWN"),
    ("unknown high flag", lambda a, b, c, d: transfer(a.id, b.id, 1, flags=1 << 31), "FLAGS_UNKNOWN"),
    ("EXPIRED is the ledger's own flag", lambda a, b, c, d: transfer(a.id, b.id, 1, flags=pb.TRANSFER_FLAG_EXPIRED),
     "FLAGS_UNKNOWN"),
    ("pending and post", lambda a, b, c, d: transfer(a.id, b.id, 1, flags=PENDING | POST),
     "FLAGS_ARE_MUTUALLY_EXCLUSIVE"),
    ("post and void", lambda a, b, c, d: pb.Transfer(id=new_id(), pending_id=new_id(), amount=1, flags=POST | VOID),
     "FLAGS_ARE_MUTUALLY_EXCLUSIVE"),
    ("timeout on a plain transfer", lambda a, b, c, d: transfer(a.id, b.id, 1, timeout_s=5),
     "TIMEOUT_RESERVED_FOR_PENDING_TRANSFER"),
    ("timeout on a post", lambda a, b, c, d: pb.Transfer(id=new_id(), pending_id=new_id(), amount=1, flags=POST,
                                                         timeout_s=5), "TIMEOUT_RESERVED_FOR_PENDING_TRANSFER"),
    ("pending_id on a plain transfer", lambda a, b, c, d: pb.Transfer(
        id=new_id(), debit_account_id=a.id, credit_account_id=b.id, amount=1, ledger=1, code=1,
        pending_id=new_id()), "PENDING_ID_MUST_BE_ZERO"),
    ("post without pending_id", lambda a, b, c, d: pb.Transfer(id=new_id(), amount=1, flags=POST),
     "PENDING_ID_MUST_NOT_BE_ZERO"),
    ("void with a zero pending_id", lambda a, b, c, d: void(bytes(16)), "PENDING_ID_MUST_NOT_BE_ZERO"),
    ("post with a 15-byte pending_id", lambda a, b, c, d: post(b"\x02" * 15, 1), "PENDING_ID_MUST_NOT_BE_ZERO"),
    ("post of zero", lambda a, b, c, d: post(new_id(), 0), "AMOUNT_MUST_NOT_BE_ZERO"),
    ("post of an unknown pending", lambda a, b, c, d: post(new_id(), 1), "PENDING_TRANSFER_NOT_FOUND"),
    ("void of an unknown pending", lambda a, b, c, d: void(new_id()), "PENDING_TRANSFER_NOT_FOUND"),
    ("unknown debit account", lambda a, b, c, d: transfer(new_id(), b.id, 1), "DEBIT_ACCOUNT_NOT_FOUND"),
    ("unknown credit account", lambda a, b, c, d: transfer(a.id, new_id(), 1), "CREDIT_ACCOUNT_NOT_FOUND"),
    ("accounts on different ledgers", lambda a, b, c, d: transfer(a.id, c.id, 1),
     "ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER"),
    ("transfer ledger differs from its accounts'", lambda a, b, c, d: transfer(a.id, b.id, 1, ledger=2),
     "TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS"),
]


@pytest.mark.parametrize("make, expected", [(m, e) for _, m, e in _MALFORMED], ids=[d for d, _, _ in _MALFORMED])
async def test_malformed_transfer_gets_its_own_code_and_writes_nothing(ledger, db_url, accts, make, expected):
    """Each kind of malformed transfer answers its clear per-item code; no row
    and no balance changes."""
    t = make(*accts)
    assert await _nothing_written(ledger, db_url, accts, lambda: create(ledger, t)) == [expected]


async def test_malformed_input_does_not_burn_the_id(ledger, db_url, accts):
    """A transfer refused for malformed input (or a state error such as an
    unknown account) can be retried with the same id once corrected."""
    a, b, _, _ = accts
    tid = new_id()
    assert await create(ledger, transfer(a.id, b.id, 0, tid=tid)) == ["AMOUNT_MUST_NOT_BE_ZERO"]
    assert await create(ledger, transfer(a.id, new_id(), 5, tid=tid)) == ["CREDIT_ACCOUNT_NOT_FOUND"]
    assert await create(ledger, transfer(a.id, b.id, 5, tid=tid)) == ["OK"]
    assert await create(ledger, transfer(b.id, a.id, 5, tid=new_id())) == ["OK"]  # back to where it was


async def test_one_bad_item_does_not_fail_unrelated_items(ledger, db_url, accts):
    """In a batch, a malformed item gets its code and the unrelated items still apply."""
    a, b, _, _ = accts
    before = await balances(ledger, a.id, b.id)
    got = await create(ledger, transfer(a.id, b.id, 3), transfer(a.id, a.id, 1), transfer(a.id, b.id, 0),
                       transfer(b.id, a.id, 3))
    assert got == ["OK", "ACCOUNTS_MUST_BE_DIFFERENT", "AMOUNT_MUST_NOT_BE_ZERO", "OK"]
    (adp, adpo, acp, acpo), (bdp, bdpo, bcp, bcpo) = before
    assert await balances(ledger, a.id, b.id) == [(adp, adpo + 3, acp, acpo + 3), (bdp, bdpo + 3, bcp, bcpo + 3)]


async def test_a_bad_item_in_a_linked_chain_fails_the_chain_and_writes_nothing(ledger, db_url, accts):
    """A chain with one malformed item: that item has its code, the others
    LINKED_EVENT_FAILED, nothing is written."""
    a, b, _, _ = accts
    got = await _nothing_written(ledger, db_url, accts, lambda: create(
        ledger, transfer(a.id, b.id, 1, flags=LINKED), transfer(a.id, b.id, 0, flags=LINKED), transfer(b.id, a.id, 1)))
    assert got == ["LINKED_EVENT_FAILED", "AMOUNT_MUST_NOT_BE_ZERO", "LINKED_EVENT_FAILED"]


async def _status(coro) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await coro
    return e.value.code()


async def test_empty_batch_is_invalid_argument(ledger, db_url, accts):
    """CreateTransfers with no items is refused as a whole."""
    code = await _nothing_written(ledger, db_url, accts,
                                  lambda: _status(ledger.CreateTransfers(pb.CreateTransfersRequest())))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_batch_of_8191_items_is_invalid_argument_and_8190_is_accepted(ledger, db_url, accts):
    """The batch limit is 8,190 items (BATCH_SIZE_MAX): one more is refused
    as a whole with nothing written; exactly the limit is applied."""
    a, b, _, _ = accts
    too_many = [transfer(a.id, b.id, 1) for _ in range(8191)]
    code = await _nothing_written(ledger, db_url, accts, lambda: _status(
        ledger.CreateTransfers(pb.CreateTransfersRequest(transfers=too_many))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    fwd = [transfer(a.id, b.id, 1) for _ in range(4095)]
    back = [transfer(b.id, a.id, 1) for _ in range(4095)]
    r = await ledger.CreateTransfers(pb.CreateTransfersRequest(transfers=fwd + back))
    assert list(r.results) == [pb.CREATE_TRANSFER_RESULT_OK] * 8190


@pytest.mark.parametrize("field", ["seq", "created_at"])
async def test_setting_a_ledger_field_is_invalid_argument(ledger, db_url, accts, field):
    """seq and created_at belong to the ledger: a request that sets them is refused whole."""
    a, b, _, _ = accts
    t = transfer(a.id, b.id, 1)
    if field == "seq":
        t.seq = 7
    else:
        t.created_at.CopyFrom(Timestamp(seconds=1))
    good = transfer(a.id, b.id, 1)
    code = await _nothing_written(ledger, db_url, accts, lambda: _status(
        ledger.CreateTransfers(pb.CreateTransfersRequest(transfers=[good, t]))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_overflow_of_a_balance_is_refused(ledger, db_url):
    """A transfer that would take a balance past 2^63-1 answers
    OVERFLOWS_CREDITS / OVERFLOWS_DEBITS and writes nothing (own ledger, so
    the huge amounts stay away from the other tests' totals)."""
    src, big, other, other2 = (account(ledger=70) for _ in range(4))
    await create_accounts(ledger, src, big, other, other2)
    assert await create(ledger, transfer(src.id, big.id, AMOUNT_MAX, ledger=70)) == ["OK"]
    accs = (src, big, other, other2)
    got = await _nothing_written(ledger, db_url, accs, lambda: create(
        ledger,
        transfer(other.id, big.id, 1, ledger=70),  # big's credits would pass 2^63-1
        transfer(src.id, other.id, 1, ledger=70),  # src's debits would pass 2^63-1
        transfer(other.id, big.id, 1, ledger=70, flags=PENDING),  # pending + posted credits too
    ))
    assert got == ["OVERFLOWS_CREDITS", "OVERFLOWS_DEBITS", "OVERFLOWS_CREDITS"]


async def test_ledger_wide_volume_past_2_63_does_not_break_batches(ledger, db_url):
    """Each account stays within 2^63-1, but the ledger's summed balances may
    exceed it: transfers must still apply (or get a per-item code), never fail
    the whole batch."""
    a, b, c, d = (account(ledger=71) for _ in range(4))
    await create_accounts(ledger, a, b, c, d)
    assert await create(ledger, transfer(a.id, b.id, 2**62, ledger=71)) == ["OK"]
    assert await create(ledger, transfer(c.id, d.id, 2**62, ledger=71)) == ["OK"]


async def test_balance_flags_refuse_overdraft_and_burn_the_id(ledger, db_url):
    """debits_must_not_exceed_credits / credits_must_not_exceed_debits refuse
    the transfer (EXCEEDS_CREDITS / EXCEEDS_DEBITS), nothing moves, and the id
    is burned: a retry answers ID_ALREADY_FAILED even once it would fit."""
    funder, consumer, capped = account(), account(flags=DMNEC), account(flags=CMNED)
    await create_accounts(ledger, funder, consumer, capped)
    assert await create(ledger, transfer(funder.id, consumer.id, 10)) == ["OK"]
    assert await create(ledger, transfer(consumer.id, funder.id, 6, flags=PENDING)) == ["OK"]  # 6 of 10 held
    t1 = transfer(consumer.id, funder.id, 11)
    t2 = transfer(funder.id, capped.id, 1)
    t3 = transfer(consumer.id, funder.id, 5)  # 6 held + 5 > 10
    ids = (funder.id, consumer.id, capped.id)
    before, bal_before = await row_counts(db_url), await balances(ledger, *ids)
    assert await create(ledger, t1, t2, t3) == ["EXCEEDS_CREDITS", "EXCEEDS_DEBITS", "EXCEEDS_CREDITS"]
    assert await balances(ledger, *ids) == bal_before
    after = await row_counts(db_url)
    assert after == {**before, "failed_transfers": before["failed_transfers"] + 3}
    assert await create(ledger, transfer(funder.id, consumer.id, 100)) == ["OK"]
    assert await create(ledger, t1) == ["ID_ALREADY_FAILED"]
    t1.amount = 1  # different fields: still burned
    assert await create(ledger, t1, t3) == ["ID_ALREADY_FAILED", "ID_ALREADY_FAILED"]


async def test_bad_accounts_get_their_own_codes(ledger, db_url):
    """CreateAccounts answers a clear code per bad item and creates only the good ones."""
    A = pb.CreateAccountResult
    good = account()
    named = pb.Account(id=new_id(), ledger=1, kind=pb.ACCOUNT_KIND_PROVIDER, name="provider:bad-input-test")
    items = [
        (pb.Account(id=b"\x01" * 15, ledger=1, kind=1), A.CREATE_ACCOUNT_RESULT_ID_MUST_BE_16_BYTES),
        (pb.Account(id=bytes(16), ledger=1, kind=1), A.CREATE_ACCOUNT_RESULT_ID_MUST_NOT_BE_ZERO),
        (pb.Account(id=b"\xff" * 16, ledger=1, kind=1), A.CREATE_ACCOUNT_RESULT_ID_MUST_NOT_BE_INT_MAX),
        (pb.Account(id=new_id(), ledger=0, kind=1), A.CREATE_ACCOUNT_RESULT_LEDGER_MUST_NOT_BE_ZERO),
        (pb.Account(id=new_id(), ledger=1), A.CREATE_ACCOUNT_RESULT_KIND_MUST_BE_SET),
        (pb.Account(id=new_id(), ledger=1, kind=99), A.CREATE_ACCOUNT_RESULT_KIND_MUST_BE_SET),
        (pb.Account(id=new_id(), ledger=1, kind=1, flags=3), A.CREATE_ACCOUNT_RESULT_FLAGS_ARE_MUTUALLY_EXCLUSIVE),
        (pb.Account(id=new_id(), ledger=1, kind=1, flags=4), A.CREATE_ACCOUNT_RESULT_FLAGS_UNKNOWN),
        (pb.Account(id=new_id(), ledger=1, kind=1, credits_posted=5), A.CREATE_ACCOUNT_RESULT_BALANCES_MUST_BE_ZERO),
        (pb.Account(id=new_id(), ledger=1, kind=1, user_data=b"x"), A.CREATE_ACCOUNT_RESULT_USER_DATA_MUST_BE_16_BYTES),
        (pb.Account(id=new_id(), ledger=1, kind=1, name="has space"), A.CREATE_ACCOUNT_RESULT_NAME_INVALID),
        (pb.Account(id=new_id(), ledger=1, kind=1, name="x" * 129), A.CREATE_ACCOUNT_RESULT_NAME_INVALID),
        (good, A.CREATE_ACCOUNT_RESULT_OK),
        (named, A.CREATE_ACCOUNT_RESULT_OK),
    ]
    before = (await row_counts(db_url))["accounts"]
    r = await ledger.CreateAccounts(pb.CreateAccountsRequest(accounts=[a for a, _ in items]))
    assert list(r.results) == [e for _, e in items]
    assert (await row_counts(db_url))["accounts"] == before + 2
    again = pb.Account()
    again.CopyFrom(good)
    changed = pb.Account()
    changed.CopyFrom(good)
    changed.flags = DMNEC
    taken = pb.Account(id=new_id(), ledger=1, kind=pb.ACCOUNT_KIND_PROVIDER, name="provider:bad-input-test")
    r = await ledger.CreateAccounts(pb.CreateAccountsRequest(accounts=[again, changed, taken]))
    assert list(r.results) == [A.CREATE_ACCOUNT_RESULT_EXISTS, A.CREATE_ACCOUNT_RESULT_EXISTS_WITH_DIFFERENT_FIELDS,
                               A.CREATE_ACCOUNT_RESULT_NAME_TAKEN]
    assert (await row_counts(db_url))["accounts"] == before + 2
    code = await _status(ledger.CreateAccounts(pb.CreateAccountsRequest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("method, request_factory", [
    ("LookupAccounts", lambda: pb.LookupAccountsRequest()),
    ("LookupAccounts", lambda: pb.LookupAccountsRequest(ids=[b"\x01" * 15])),
    ("LookupTransfers", lambda: pb.LookupTransfersRequest(ids=[new_id()] * 8191)),
    ("GetAccountTransfers", lambda: pb.GetAccountTransfersRequest(account_id=b"\x01" * 3)),
    ("GetAccountTransfers", lambda: pb.GetAccountTransfersRequest(account_id=new_id(), limit=1001)),
    ("GetAccountBalances", lambda: pb.GetAccountBalancesRequest(account_id=new_id(), limit=5000)),
    ("ResolveAccount", lambda: pb.ResolveAccountRequest()),
    ("GetAccountTransfers", lambda: pb.GetAccountTransfersRequest(account_id=new_id(), after_seq=2**63)),
    ("GetAccountTransfers", lambda: pb.GetAccountTransfersRequest(account_id=new_id(), after_seq=2**64 - 1,
                                                                  reversed=True)),
    ("GetAccountBalances", lambda: pb.GetAccountBalancesRequest(account_id=new_id(), after_seq=2**63)),
], ids=["no ids", "short id", "too many ids", "short account id", "page too large", "history page too large",
        "no name", "cursor past 2^63-1", "reversed cursor past 2^63-1", "history cursor past 2^63-1"])
async def test_bad_queries_are_invalid_argument(ledger, method, request_factory):
    """Malformed queries are INVALID_ARGUMENT, not an internal error."""
    assert await _status(getattr(ledger, method)(request_factory())) == grpc.StatusCode.INVALID_ARGUMENT


async def test_resolve_account_on_a_ledger_past_int32_is_not_found(ledger):
    """No account can live on ledger >= 2^31 (an integer column): NOT_FOUND, not INTERNAL."""
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await ledger.ResolveAccount(pb.ResolveAccountRequest(name="escrow:jobs", ledger=2**31))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


_INT32_OVERFLOW = [
    ("code 2^31", lambda a, b: transfer(a.id, b.id, 1, code=2**31)),
    ("timeout 2^31 s", lambda a, b: transfer(a.id, b.id, 1, flags=PENDING, timeout_s=2**31)),
    ("timeout 2^32-1 s", lambda a, b: transfer(a.id, b.id, 1, flags=PENDING, timeout_s=2**32 - 1)),
]


@pytest.mark.parametrize("make", [m for _, m in _INT32_OVERFLOW], ids=[d for d, _ in _INT32_OVERFLOW])
async def test_uint32_fields_past_int32_are_stored(ledger, db_url, accts, make):
    """Every uint32 the API accepts for code and timeout_s is stored (bigint
    columns), and the transfer next to it applies too."""
    a, b, _, _ = accts
    got = await create(ledger, make(a, b), transfer(b.id, a.id, 1))
    assert got == ["OK", "OK"], got


async def test_account_on_a_ledger_past_int32_is_created(ledger, db_url):
    """CreateAccounts with any uint32 ledger (2^31 here) creates it, and the
    good account next to it too."""
    good = account()
    r = await ledger.CreateAccounts(pb.CreateAccountsRequest(accounts=[
        pb.Account(id=new_id(), ledger=2**31, kind=pb.ACCOUNT_KIND_CONSUMER), good]))
    assert list(r.results) == [pb.CREATE_ACCOUNT_RESULT_OK, pb.CREATE_ACCOUNT_RESULT_OK]


async def test_verify_passes_after_all_the_bad_input(ledger, db_url, accts):
    """None of the refused input left a trace that breaks the books."""
    rep = await run_verify(db_url)
    assert rep.ok, rep.problems
