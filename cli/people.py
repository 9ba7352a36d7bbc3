"""The CLI for people, against the gateway's REST API:

    idlegrid account                      the partner's balance
    idlegrid provider earnings            what a provider earned: available, held, released, voided (cli/earnings.py)
    idlegrid nodes                        a provider's nodes
    idlegrid keys create --account-id ID --scope consumer|provider|admin
    idlegrid keys revoke KEY_ID
    idlegrid catalog ..., idlegrid operator ...   (operators: cli/operator.py)

The gateway URL and the key come from --url / --key, else from
IDLEGRID_GATEWAY_URL / IDLEGRID_API_KEY, else from the demo file that
``idlegrid up`` writes ($IDLEGRID_HOME/demo.json)."""

from __future__ import annotations

import json
import sys

import httpx

from idlegrid.common.config import Config
from idlegrid.common.errors import ConfigError

TIMEOUT_S = 30.0


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def _common(p) -> None:
    p.add_argument("--url", help="gateway URL (default: IDLEGRID_GATEWAY_URL or the demo's)")
    p.add_argument("--key", help="API key (default: IDLEGRID_API_KEY or the demo's key for this command)")
    p.add_argument("--json", action="store_true", help="print the raw JSON")


def register(sub) -> None:
    p = sub.add_parser("account", help="your balance (partner key)")
    _common(p)
    p.set_defaults(func=_account, demo_key="consumer_key")

    p = sub.add_parser("provider", help="provider views (provider key)")
    psub = p.add_subparsers(dest="provider_command", required=True)
    e = psub.add_parser("earnings", help="what you earned: available, held, released, voided; by node, by model; "
                                         "recent jobs with their check results")
    _common(e)
    e.set_defaults(func=_earnings, demo_key="provider_key")

    p = sub.add_parser("nodes", help="your nodes (provider key)")
    _common(p)
    p.set_defaults(func=_nodes, demo_key="provider_key")

    p = sub.add_parser("keys", help="create and revoke API keys (admin key)")
    ksub = p.add_subparsers(dest="keys_command", required=True)
    c = ksub.add_parser("create", help="create a key (shown once)")
    c.add_argument("--account-id", help="the account the key acts for (not for admin keys)")
    c.add_argument("--scope", required=True, choices=("consumer", "provider", "admin"))
    _common(c)
    c.set_defaults(func=_key_create, demo_key="admin_key")
    r = ksub.add_parser("revoke", help="revoke a key at once")
    r.add_argument("key_id")
    _common(r)
    r.set_defaults(func=_key_revoke, demo_key="admin_key")

    from idlegrid.cli import operator

    operator.register(sub)


def _target(args, config: Config) -> tuple[str, str]:
    demo: dict = {}
    path = config.home / "demo.json"
    if path.exists():
        demo = json.loads(path.read_text())
    url = args.url or config.gateway_url or demo.get("gateway_url")
    key = args.key or config.api_key or demo.get(args.demo_key)
    if not url or not key:
        raise ConfigError("give --url and --key (or IDLEGRID_GATEWAY_URL and IDLEGRID_API_KEY, "
                          f"or run `idlegrid up` here so that {path} exists)")
    return url.rstrip("/"), key


async def _call(args, config: Config, method: str, path: str, body: dict | None = None) -> dict:
    url, key = _target(args, config)
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        try:
            r = await client.request(method, path, json=body)
        except httpx.HTTPError as e:
            raise ConfigError(f"cannot reach the gateway at {url}: {e}") from None
    data = r.json() if r.content else {}
    if r.status_code >= 400:
        msg = data.get("error", {}).get("message", r.text) if isinstance(data, dict) else r.text
        raise ConfigError(f"{method} {path}: HTTP {r.status_code}: {msg}")
    return data


def _credits(micros: int) -> str:
    return f"{micros:>16,} µ  ({micros / 1e6:,.6f} credits)"


def _table(rows: list[list], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    _out("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        _out("  " + "  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))


async def _account(args, config: Config) -> int:
    a = await _call(args, config, "GET", "/v1/account")
    if args.json:
        _out(json.dumps(a, indent=2))
        return 0
    _out(f"account {a['account_id']} ({a.get('name', '')})")
    for k in ("available_micros", "held_micros", "spent_micros", "credited_micros"):
        if k in a:
            _out(f"  {k.removesuffix('_micros'):10} {_credits(a[k])}")
    return 0


async def _earnings(args, config: Config) -> int:
    from idlegrid.cli.earnings import earnings  # available, held, released, voided; checks per job

    return await earnings(args, config)


async def _nodes(args, config: Config) -> int:
    n = await _call(args, config, "GET", "/v1/provider/nodes")
    if args.json:
        _out(json.dumps(n, indent=2))
        return 0
    _table([[x["node_id"], x["state"], x.get("state_detail", ""), x["endpoint"],
             ", ".join(m["name"] for m in x.get("models", [])), "yes" if x.get("trusted") else "no",
             _reputation(x.get("reputation"))] for x in n.get("data", [])],
           ["node", "state", "detail", "endpoint", "models", "trusted", "reputation"])
    for x in n.get("data", []):
        for reason in (x.get("reputation") or {}).get("reasons", []):
            _out(f"  {x['node_id']}: {reason}")
    return 0


def _reputation(r: dict | None) -> str:
    if not r:
        return "-"
    return (f"score {r['score']:.2f}, {r['checks_passed']} passed, {r['checks_failed']} failed, "
            f"{r['count_disagreements']} count disagreements, sampled {r['sample_rate']:.0%}")


async def _key_create(args, config: Config) -> int:
    body = {"scope": args.scope}
    if args.account_id:
        body["account_id"] = args.account_id
    k = await _call(args, config, "POST", "/v1/admin/keys", body)
    _out(json.dumps(k, indent=2) if args.json else f"key_id {k['key_id']}\nkey    {k['key']}   (shown once)")
    return 0


async def _key_revoke(args, config: Config) -> int:
    await _call(args, config, "DELETE", f"/v1/admin/keys/{args.key_id}")
    _out(f"revoked {args.key_id}")
    return 0
