"""``idlegrid ledger verify``: proves from the rows alone that history was not
rewritten and that the stored state follows from it.

Checks, each reported precisely:
1. the hash chain: every batch's hash recomputed from its transfers, linked to
   the previous one, seq gap-free, the chain head at the last batch;
2. every account's four balances recomputed from the transfers;
3. per ledger, sum of debits = sum of credits (pending and posted), also in
   the totals table;
4. balance flags hold; every transfer names existing accounts;
5. the open holds are exactly the unresolved pending transfers, and escrow's
   pending credits equal the sum of its open holds and its posted balance is 0.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import asyncpg

from idlegrid.ledger.chain import GENESIS, batch_hash, micros, transfer_bytes
from idlegrid.ledger.codes import (
    CREDITS_MUST_NOT_EXCEED_DEBITS,
    DEBITS_MUST_NOT_EXCEED_CREDITS,
    LEDGER_CREDITS,
    PENDING,
    POST,
    VOID,
)
from idlegrid.ledger.ids import well_known_account

FETCH_ROWS = 5000


@dataclass
class Report:
    batches: int = 0
    transfers: int = 0
    accounts: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, msg: str) -> None:
        if len(self.problems) < 1000:
            self.problems.append(msg)


def _b(u) -> bytes:
    return u.bytes if u is not None else b""


async def verify(conn: asyncpg.Connection) -> Report:
    rep = Report()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        batches = {r["batch"]: r for r in await conn.fetch("SELECT * FROM ledger.batches ORDER BY batch")}
        rep.batches = len(batches)
        balances: dict[bytes, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        pendings: dict[bytes, tuple[bytes, bytes, int]] = {}
        resolved: set[bytes] = set()
        prev_hash, expected_seq, expected_batch = GENESIS, 1, 1
        cur_batch, cur_rows = None, []

        def close_batch() -> None:
            nonlocal prev_hash, expected_batch
            if cur_batch is None:
                return
            b = batches.get(cur_batch)
            if b is None:
                rep.add(f"batch {cur_batch}: transfers point at a batch that has no row")
                return
            if cur_batch != expected_batch:
                rep.add(f"batch {cur_batch}: expected batch {expected_batch} next in the chain")
            if bytes(b["prev_hash"]) != prev_hash:
                rep.add(f"batch {cur_batch}: prev_hash does not link to batch {cur_batch - 1}")
            h = batch_hash(bytes(b["prev_hash"]), cur_batch, b["first_seq"], b["last_seq"],
                           micros(b["committed_at"]), cur_rows)
            if h != bytes(b["hash"]):
                rep.add(f"batch {cur_batch} (seq {b['first_seq']}..{b['last_seq']}): hash mismatch: "
                        "its transfers were changed after commit")
            prev_hash, expected_batch = bytes(b["hash"]), cur_batch + 1

        async for r in conn.cursor("SELECT * FROM ledger.transfers ORDER BY seq", prefetch=FETCH_ROWS):
            rep.transfers += 1
            seq = r["seq"]
            if seq != expected_seq:
                rep.add(f"seq {seq}: expected {expected_seq} (a transfer is missing)")
            expected_seq = seq + 1
            if r["batch"] != cur_batch:
                close_batch()
                cur_batch, cur_rows = r["batch"], []
            tid, dr, cr = r["id"].bytes, r["debit_account_id"].bytes, r["credit_account_id"].bytes
            pid, amount, flags = _b(r["pending_id"]), r["amount"], r["flags"]
            cur_rows.append(transfer_bytes(seq, tid, dr, cr, amount, pid, _b(r["user_data"]),
                                           r["timeout_s"], r["ledger"], r["code"], flags))
            d, c = balances[dr], balances[cr]
            if flags & PENDING:
                d[0] += amount
                c[2] += amount
                pendings[tid] = (dr, cr, amount)
            elif flags & (POST | VOID):
                p = pendings.get(pid)
                if p is None:
                    rep.add(f"seq {seq}: resolves an unknown pending transfer {pid.hex()}")
                    continue
                if pid in resolved:
                    rep.add(f"seq {seq}: pending transfer {pid.hex()} resolved twice")
                resolved.add(pid)
                if (dr, cr) != p[:2]:
                    rep.add(f"seq {seq}: accounts differ from its pending transfer")
                d[0] -= p[2]
                c[2] -= p[2]
                if flags & POST:
                    if amount > p[2]:
                        rep.add(f"seq {seq}: posts more than its pending amount")
                    d[1] += amount
                    c[3] += amount
            else:
                d[1] += amount
                c[3] += amount
            after = (r["dr_debits_pending"], r["dr_debits_posted"], r["dr_credits_pending"],
                     r["dr_credits_posted"], r["cr_debits_pending"], r["cr_debits_posted"],
                     r["cr_credits_pending"], r["cr_credits_posted"])
            if after != (*d, *c):
                rep.add(f"seq {seq}: stored balance history differs from the recomputed balances")
        close_batch()
        head = await conn.fetchrow("SELECT batch, last_seq, hash FROM ledger.chain_head")
        if head["batch"] != expected_batch - 1 or head["last_seq"] != expected_seq - 1 or bytes(head["hash"]) != prev_hash:
            rep.add(f"chain head (batch {head['batch']}, seq {head['last_seq']}) does not match the "
                    f"last batch ({expected_batch - 1}, seq {expected_seq - 1})")
        if len(batches) != expected_batch - 1:
            rep.add(f"{len(batches)} batch rows but {expected_batch - 1} batches hold transfers")

        totals: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        accounts = await conn.fetch("SELECT * FROM ledger.accounts")
        rep.accounts = len(accounts)
        known = set()
        for a in accounts:
            aid = a["id"].bytes
            known.add(aid)
            stored = [a["debits_pending"], a["debits_posted"], a["credits_pending"], a["credits_posted"]]
            computed = balances.get(aid, [0, 0, 0, 0])
            if stored != computed:
                rep.add(f"account {a['id']}: stored balances {stored} != recomputed {computed}")
            t = totals[a["ledger"]]
            for i in range(4):
                t[i] += stored[i]
            if a["flags"] & DEBITS_MUST_NOT_EXCEED_CREDITS and stored[0] + stored[1] > stored[3]:
                rep.add(f"account {a['id']}: debits exceed credits")
            if a["flags"] & CREDITS_MUST_NOT_EXCEED_DEBITS and stored[2] + stored[3] > stored[1]:
                rep.add(f"account {a['id']}: credits exceed debits")
        for aid in balances.keys() - known:
            rep.add(f"transfers move money for unknown account {aid.hex()}")
        for ledger_, (dp, dpo, cp, cpo) in sorted(totals.items()):
            if dp != cp or dpo != cpo:
                rep.add(f"ledger {ledger_}: debits {dp}/{dpo} != credits {cp}/{cpo} (pending/posted)")
        for r in await conn.fetch("SELECT * FROM ledger.totals"):
            t = totals.get(r["ledger"], [0, 0, 0, 0])
            if [r["debits_pending"], r["debits_posted"], r["credits_pending"], r["credits_posted"]] != t:
                rep.add(f"ledger {r['ledger']}: totals table differs from the accounts")

        open_holds = {r["pending_id"].bytes for r in await conn.fetch("SELECT pending_id FROM ledger.open_holds")}
        unresolved = pendings.keys() - resolved
        if open_holds != unresolved:
            rep.add(f"open holds ({len(open_holds)}) differ from unresolved pending transfers ({len(unresolved)})")
        escrow = well_known_account("escrow:jobs", LEDGER_CREDITS)
        if escrow in known:
            eb = balances.get(escrow, [0, 0, 0, 0])
            held = sum(p[2] for pid, p in pendings.items() if pid in unresolved and p[1] == escrow)
            if eb[2] != held:
                rep.add(f"escrow:jobs pending credits {eb[2]} != open holds {held}")
            if eb[3] != eb[1]:
                rep.add(f"escrow:jobs posted balance is {eb[3] - eb[1]}, expected 0")
    return rep
