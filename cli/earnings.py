"""``idlegrid provider earnings``: what a provider earned, from the gateway's
GET /v1/provider/earnings, to the micro-credit:

    available   posted on the ledger and not paid out: what a payout may take
    held        credited but held for the release window (next release at ...)
    released    held earnings released after their window
    voided      held earnings voided (a node found cheating) and refunded to partners
    pending     usage recorded, not yet settled

then by node (with each node's held, released and voided earnings), by
model, and the latest jobs with their earning and spot-check result.
Registered by idlegrid.cli.people, whose connection options it shares."""

from __future__ import annotations

import json

from idlegrid.cli.people import _call, _credits, _out, _table
from idlegrid.common.config import Config

TOTALS = ("available_micros", "held_micros", "released_micros", "voided_micros", "pending_micros",
          "earned_micros", "paid_out_micros")


async def earnings(args, config: Config) -> int:
    e = await _call(args, config, "GET", "/v1/provider/earnings")
    if args.json:
        _out(json.dumps(e, indent=2))
        return 0
    _out(f"provider account {e['account_id']} (platform fee {e.get('fee_bps', 0) / 100:.2f} %)")
    for k in TOTALS:
        if k in e:
            _out(f"  {k.removesuffix('_micros'):9} {_credits(e[k])}")
    if e.get("next_release_at"):
        _out(f"  next release at {e['next_release_at']}")
    _out("\nby node:")
    _table([[n["node_id"], n["jobs"], n["cost_micros"], n.get("held_micros", 0), n.get("released_micros", 0),
             n.get("voided_micros", 0), n["pending_micros"]] for n in e.get("by_node", [])],
           ["node", "jobs", "cost µ", "held µ", "released µ", "voided µ", "pending µ"])
    _out("\nby model:")
    _table([[m["model"], m["jobs"], m["prompt_tokens"], m["completion_tokens"], m["requests"], m["earned_micros"]]
            for m in e.get("by_model", [])], ["model", "jobs", "in tokens", "out tokens", "requests", "earned µ"])
    jobs = e.get("jobs", {}).get("data", [])
    _out(f"\nlatest jobs ({len(jobs)}):")
    _table([[(j.get("finished_at") or "")[:19], j["job_id"], j["model"], j["settlement"], j["cost_micros"],
             f"{j.get('provider_micros', 0):,}", j.get("earning") or "-", (j.get("earning_release_at") or "")[:19],
             j.get("check_result", "unchecked")] for j in jobs],
           ["finished", "job", "model", "settlement", "cost µ", "earned µ", "earning", "release at", "check"])
    voided = [j for j in jobs if j.get("earning") == "voided" and j.get("earning_note")]
    for j in voided:
        _out(f"  voided {j['job_id']}: {j['earning_note']}")
    return 0
