"""The checks on one transfer's own fields, before any state is looked at,
and the rule that tells a retry from a conflict. Pure functions of values."""

from __future__ import annotations

from idlegrid.common.money import AMOUNT_MAX
from idlegrid.ledger.codes import (
    CLIENT_FLAGS,
    EXPIRED,
    MAX_ID,
    PENDING,
    POST,
    VOID,
    ZERO_ID,
    R,
)
from idlegrid.ledger.values import StoredTransfer, Transfer


def check_fields(t: Transfer, internal: bool) -> int:
    """R.OK or the first error in the fields alone. ``internal``: the ledger's
    own transfers (the expiry sweep's voids) may carry TRANSFER_FLAG_EXPIRED."""
    tid = t.id
    if len(tid) != 16:
        return R.ID_MUST_BE_16_BYTES
    if tid == ZERO_ID:
        return R.ID_MUST_NOT_BE_ZERO
    if tid == MAX_ID:
        return R.ID_MUST_NOT_BE_INT_MAX
    flags = t.flags
    allowed = CLIENT_FLAGS | (EXPIRED if internal else 0)
    if flags & ~allowed:
        return R.FLAGS_UNKNOWN
    kind = flags & (PENDING | POST | VOID)
    if kind not in (0, PENDING, POST, VOID):
        return R.FLAGS_ARE_MUTUALLY_EXCLUSIVE
    if len(t.user_data) not in (0, 16):
        return R.USER_DATA_MUST_BE_16_BYTES
    if t.amount > AMOUNT_MAX:
        return R.AMOUNT_TOO_LARGE
    dr, cr = t.debit_account_id, t.credit_account_id
    if kind & (POST | VOID):
        if len(t.pending_id) != 16 or t.pending_id == ZERO_ID:
            return R.PENDING_ID_MUST_NOT_BE_ZERO
        if t.pending_id == tid:
            return R.PENDING_ID_MUST_BE_DIFFERENT
        if t.timeout_s:
            return R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        if len(dr) not in (0, 16) or len(cr) not in (0, 16):
            return R.ACCOUNT_ID_MUST_BE_16_BYTES
        if kind == POST and t.amount == 0:
            return R.AMOUNT_MUST_NOT_BE_ZERO
        return R.OK
    if t.pending_id:
        return R.PENDING_ID_MUST_BE_ZERO
    if t.timeout_s and kind != PENDING:
        return R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
    if not dr or dr == ZERO_ID:
        return R.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
    if not cr or cr == ZERO_ID:
        return R.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
    if len(dr) != 16 or len(cr) != 16:
        return R.ACCOUNT_ID_MUST_BE_16_BYTES
    if dr == cr:
        return R.ACCOUNTS_MUST_BE_DIFFERENT
    if t.amount == 0:
        return R.AMOUNT_MUST_NOT_BE_ZERO
    if t.ledger == 0:
        return R.LEDGER_MUST_NOT_BE_ZERO
    if t.code == 0:
        return R.CODE_MUST_NOT_BE_ZERO
    return R.OK


def same_fields(t: Transfer, s: StoredTransfer) -> bool:
    """Whether a retried transfer carries the same fields as the stored one
    (fields that post/void may leave empty are compared when given)."""
    if t.flags != s.flags or t.user_data != s.user_data or t.timeout_s != s.timeout_s:
        return False
    if t.pending_id != s.pending_id:
        return False
    if t.flags & (POST | VOID):
        return (
            (not t.debit_account_id or t.debit_account_id == s.debit_account_id)
            and (not t.credit_account_id or t.credit_account_id == s.credit_account_id)
            and (not t.ledger or t.ledger == s.ledger)
            and (not t.code or t.code == s.code)
            and (t.amount == s.amount or (t.flags & VOID and t.amount == 0))
        )
    return (
        t.debit_account_id == s.debit_account_id
        and t.credit_account_id == s.credit_account_id
        # a balancing debit matches what it moved when that is within its bounds
        and (t.amount == s.amount or (0 < t.amount_min <= s.amount <= t.amount))
        and t.ledger == s.ledger
        and t.code == s.code
    )
