"""The CLI for operators, against the gateway's admin REST API (admin key):

    idlegrid catalog list
    idlegrid catalog put NAME --file MODEL.json --reason WHY    (the PUT body: kind, tokenizer, ...)
    idlegrid catalog put --demo --reason WHY                    (the demo node's models)
    idlegrid catalog remove NAME --reason WHY
    idlegrid operator suspend-node|unsuspend-node NODE_ID --reason WHY
    idlegrid operator suspend-provider|unsuspend-provider|trust|untrust PROVIDER_ID --reason WHY
    idlegrid operator rotate-token|revoke-token PROVIDER_ID --reason WHY
    idlegrid operator ban|unban HOST --reason WHY
    idlegrid operator actions                                   (who did what, and why)

Every change records the admin key's id and the reason. The gateway URL and
the key come as for the other commands (cli/people.py)."""

from __future__ import annotations

import json
from pathlib import Path

from idlegrid.cli.people import _call, _common, _out, _table
from idlegrid.common.config import Config
from idlegrid.common.errors import ConfigError

_PROVIDER_VERBS = {"suspend-provider": "suspend", "unsuspend-provider": "unsuspend", "trust": "trust",
                   "untrust": "untrust", "rotate-token": "rotate-token", "revoke-token": "revoke-token"}
_NODE_VERBS = {"suspend-node": "suspend", "unsuspend-node": "unsuspend"}


def register(sub) -> None:
    p = sub.add_parser("catalog", help="the models the marketplace sells (admin key)")
    csub = p.add_subparsers(dest="catalog_command", required=True)
    c = csub.add_parser("list", help="the catalog")
    _common(c)
    c.set_defaults(func=_catalog_list, demo_key="admin_key")
    c = csub.add_parser("put", help="add or replace a model")
    c.add_argument("name", nargs="?", help="the model's name (not with --demo)")
    c.add_argument("--file", type=Path, help="the model as JSON (kind, tokenizer, weights_digest, context_length, "
                                             "canaries, max_price)")
    c.add_argument("--demo", action="store_true", help="the demo node's models, with their reference outputs "
                                                       "(computed here: needs the node extras)")
    c.add_argument("--reason", required=True)
    _common(c)
    c.set_defaults(func=_catalog_put, demo_key="admin_key")
    c = csub.add_parser("remove", help="remove a model: nodes' offers of it stop being routable")
    c.add_argument("name")
    c.add_argument("--reason", required=True)
    _common(c)
    c.set_defaults(func=_catalog_remove, demo_key="admin_key")

    p = sub.add_parser("operator", help="operator controls: suspensions, trust, tokens, bans (admin key)")
    osub = p.add_subparsers(dest="operator_command", required=True)
    for verb, what in ((*[(v, "NODE_ID") for v in _NODE_VERBS], *[(v, "PROVIDER_ID") for v in _PROVIDER_VERBS],
                        ("ban", "HOST"), ("unban", "HOST"))):
        o = osub.add_parser(verb, help=f"{verb} {what}")
        o.add_argument("target", metavar=what)
        o.add_argument("--reason", required=True)
        _common(o)
        o.set_defaults(func=_control, demo_key="admin_key", verb=verb)
    o = osub.add_parser("actions", help="every operator action: who, what, on what, why")
    _common(o)
    o.set_defaults(func=_actions, demo_key="admin_key")


def _print(args, data: dict, line: str) -> None:
    _out(json.dumps(data, indent=2) if args.json else line)


async def _catalog_list(args, config: Config) -> int:
    r = await _call(args, config, "GET", "/v1/admin/catalog")
    if args.json:
        _out(json.dumps(r, indent=2))
        return 0
    _table([[m["name"], m["kind"], m["tokenizer"] or "-", (m["weights_digest"] or "-")[:19], m["context_length"],
             len(m["canaries"]), json.dumps({k: v for k, v in m["max_price"].items() if v}) or "{}", m["updated_by"]]
            for m in r["data"]], ["model", "kind", "tokenizer", "digest", "context", "canaries", "ceiling", "by"])
    return 0


def _body_of(m) -> dict:
    """The PUT body of a CatalogModel proto."""
    from google.protobuf.json_format import MessageToDict

    from idlegrid.registry.v1 import registry_pb2 as pb

    return {"kind": "llm" if m.kind == pb.MODEL_KIND_LLM else "tensor", "tokenizer": m.tokenizer,
            "weights_digest": m.weights_digest, "context_length": m.context_length,
            "canaries": [MessageToDict(c, preserving_proto_field_name=True) for c in m.canaries],
            "max_price": MessageToDict(m.max_price, preserving_proto_field_name=True)}


async def _catalog_put(args, config: Config) -> int:
    if args.demo:
        if args.name or args.file:
            raise ConfigError("--demo puts the demo models: give no NAME or --file")
        import asyncio

        from idlegrid.cli.demo_catalog import demo_catalog

        models = [(m.name, _body_of(m)) for m in await asyncio.to_thread(demo_catalog, config.home)]
    else:
        if not args.name or not args.file:
            raise ConfigError("give NAME and --file MODEL.json (or --demo)")
        try:
            models = [(args.name, json.loads(args.file.read_text()))]
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read {args.file}: {e}") from None
    for name, body in models:
        m = await _call(args, config, "PUT", f"/v1/admin/catalog/{name}", {**body, "reason": args.reason})
        _print(args, m, f"put {m['name']} ({m['kind']}, {len(m['canaries'])} canaries)")
    return 0


async def _catalog_remove(args, config: Config) -> int:
    from urllib.parse import quote, urlencode

    await _call(args, config, "DELETE", f"/v1/admin/catalog/{quote(args.name, safe='')}?"
                + urlencode({"reason": args.reason}))
    _out(f"removed {args.name}")
    return 0


async def _control(args, config: Config) -> int:
    verb, body = args.verb, {"reason": args.reason}
    if verb in _NODE_VERBS:
        path = f"/v1/admin/nodes/{args.target}/{_NODE_VERBS[verb]}"
    elif verb in _PROVIDER_VERBS:
        path = f"/v1/admin/providers/{args.target}/{_PROVIDER_VERBS[verb]}"
    else:
        path, body = f"/v1/admin/endpoints/{verb}", {**body, "host": args.target}
    r = await _call(args, config, "POST", path, body)
    if args.json:
        _out(json.dumps(r, indent=2))
    elif r.get("object") == "list":
        for n in r["data"]:
            _out(f"{n['node_id']} {n['state']}: {n['state_detail']}")
        _out(f"{len(r['data'])} node(s) changed")
    elif "provider_token" in r:
        _out(f"provider token (shown once, keep it secret): {r['provider_token']}")
    else:
        shown = {k: v for k, v in r.items() if k != "object"}
        _out(" ".join(f"{k}={v}" for k, v in shown.items()))
    return 0


async def _actions(args, config: Config) -> int:
    rows, cursor = [], None
    while True:
        r = await _call(args, config, "GET", "/v1/admin/operator-actions?limit=1000"
                        + (f"&cursor={cursor}" if cursor else ""))
        rows += r["data"]
        cursor = r["next_cursor"]
        if cursor is None:
            break
    if args.json:
        _out(json.dumps(rows, indent=2))
        return 0
    _table([[a["seq"], (a["at"] or "")[:19], a["actor"], a["action"], a["target"], a["reason"]] for a in rows],
           ["seq", "at", "actor", "action", "target", "reason"])
    return 0
