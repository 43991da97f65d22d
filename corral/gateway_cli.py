"""`corral keys|teams|prices|audit`: the gateway's identity, prices and audit log (issue 11).

Talks to AdminService like `corral status`: one short-lived channel, one call; gRPC failures
become one-line messages. A created key's secret is printed once and never again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import time
from typing import Any

from google.protobuf import json_format

from corral import admin_client, content_cli, limits_cli
from corral.status import StatusError, table
from corral.v1 import gateway_pb2

COMMANDS = ("keys", "teams", "prices", "audit")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)\s*([smhdw]?)")


def duration(text: str) -> int:
    """Seconds in "30d", "12h", "90m", "45s", "2w" or a plain number of seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or int(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration like 30d, 12h or 90m, got {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _connection(p: argparse.ArgumentParser) -> None:
    admin_client.connection_flags(p)
    p.add_argument("--json", action="store_true", help="print JSON")


def register(sub: Any) -> None:
    """Add keys, teams, prices and audit to `corral`'s parser."""
    keys = sub.add_parser("keys", help="virtual API keys for clients of the edges")
    verbs = keys.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create", help="create a key (its secret is shown once)")
    create.add_argument("--team", required=True)
    create.add_argument("--models", type=_csv, default=[], help="m1,m2 (default: any)")
    create.add_argument("--expires-in", type=duration, default=0, help="e.g. 30d, 12h")
    create.add_argument("--description", default="")
    limits_cli.add_flags(create)
    content_cli.add_flags(create)
    content_cli.add_flags(limits_cli.add_update(verbs, "id", "key"))
    listing = verbs.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--team", default="")
    for verb, text in (
        ("revoke", "refuse a key for ever, on every edge within a second"),
        ("disable", "refuse a key until it is enabled again"),
        ("enable", "accept a disabled key again"),
    ):
        verbs.add_parser(verb, help=text).add_argument("id")
    teams = sub.add_parser("teams", help="teams that keys belong to")
    tverbs = teams.add_subparsers(dest="verb", required=True)
    tcreate = tverbs.add_parser("create", help="create a team")
    tcreate.add_argument("name")
    tcreate.add_argument("--description", default="")
    limits_cli.add_flags(tcreate)
    content_cli.add_flags(tcreate)
    content_cli.add_flags(limits_cli.add_update(tverbs, "name", "team"))
    tverbs.add_parser("list", help="list teams")
    prices = sub.add_parser("prices", help="model prices (USD per million tokens)")
    pverbs = prices.add_subparsers(dest="verb", required=True)
    pset = pverbs.add_parser("set", help="set a model's price")
    pset.add_argument("model")
    pset.add_argument("--input", type=float, required=True, help="USD per million input tokens")
    pset.add_argument("--output", type=float, required=True, help="USD per million output")
    pset.add_argument("--cached-input", type=float, help="prompt-cache reads (default: input)")
    pverbs.add_parser("list", help="list prices set in the control plane")
    pverbs.add_parser("delete", help="delete a model's price").add_argument("model")
    audit = sub.add_parser("audit", help="the log of admin changes: who, what, when")
    audit.add_argument("--limit", type=int, default=100, help="the newest N (0: all kept)")
    for parser in (
        *verbs.choices.values(),
        *tverbs.choices.values(),
        *pverbs.choices.values(),
        audit,
    ):
        _connection(parser)


def _request(args: argparse.Namespace) -> tuple[str, Any]:
    command, verb = args.command, getattr(args, "verb", "")
    if verb == "update":
        given = limits_cli.limits_from(args) is not None
        return content_cli.update_request(args, given) or limits_cli.update_request(args)
    if command == "keys":
        if verb == "create":
            return "CreateKey", gateway_pb2.CreateKeyRequest(
                team=args.team,
                models=args.models,
                expires_in_seconds=args.expires_in,
                description=args.description,
                limits=limits_cli.limits_from(args),
                content=content_cli.content_from(args),
            )
        if verb == "list":
            return "ListKeys", gateway_pb2.ListKeysRequest(team=args.team)
        if verb == "revoke":
            return "RevokeKey", gateway_pb2.RevokeKeyRequest(id=args.id)
        return "SetKeyDisabled", gateway_pb2.SetKeyDisabledRequest(
            id=args.id, disabled=verb == "disable"
        )
    if command == "teams":
        if verb == "create":
            return "CreateTeam", gateway_pb2.CreateTeamRequest(
                name=args.name,
                description=args.description,
                limits=limits_cli.limits_from(args),
                content=content_cli.content_from(args),
            )
        return "ListTeams", gateway_pb2.ListTeamsRequest()
    if command == "prices":
        if verb == "set":
            price = gateway_pb2.ModelPrice(
                model=args.model, input_per_mtok=args.input, output_per_mtok=args.output
            )
            if args.cached_input is not None:
                price.cached_input_per_mtok = args.cached_input
            return "SetPrice", gateway_pb2.SetPriceRequest(price=price)
        if verb == "list":
            return "ListPrices", gateway_pb2.ListPricesRequest()
        return "DeletePrice", gateway_pb2.DeletePriceRequest(model=args.model)
    if args.limit < 0:
        raise StatusError("--limit must not be negative", 2)
    return "ListAudit", gateway_pb2.ListAuditRequest(limit=args.limit)


def run(args: argparse.Namespace) -> int:
    """Entry point of the four commands: 0, or 1/2 with a one-line message."""
    return admin_client.run(args, _request, render)


# ---------------------------------------------------------------------------- rendering


def _when(unix_ms: int) -> str:
    if not unix_ms:
        return "-"
    moment = dt.datetime.fromtimestamp(unix_ms / 1000, tz=dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _state(key: gateway_pb2.VirtualKey, now_ms: int) -> str:
    if key.revoked_unix_ms:
        return "revoked"
    if key.disabled:
        return "disabled"
    if key.expires_unix_ms and key.expires_unix_ms <= now_ms:
        return "expired"
    return "active"


def _json(message: Any) -> Any:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def render(args: argparse.Namespace, answer: Any) -> str:
    command, verb = args.command, getattr(args, "verb", "")
    now_ms = int(time.time() * 1000)
    if verb == "update":
        if content_cli.is_answer(answer):
            return content_cli.render_update(args, answer)
        return limits_cli.render_update(args, answer)
    if command == "keys" and verb == "create":
        key = answer.key
        if args.json:
            return json.dumps({"id": key.id, "key": answer.secret, "team": key.team})
        lines = [
            f"key {key.id} created for team {key.team}",
            f"  models:  {', '.join(key.models) or 'any'}",
            f"  expires: {_when(key.expires_unix_ms) if key.expires_unix_ms else 'never'}",
            "",
            "The secret, shown this once (only its SHA-256 is kept):",
            f"  {answer.secret}",
        ]
        return "\n".join(lines)
    if command == "keys" and verb == "list":
        if args.json:
            return json.dumps([_json(k) for k in answer.keys], indent=2)
        rows = [
            (
                k.id,
                k.prefix + "…",
                k.team,
                ", ".join(k.models) or "any",
                _when(k.expires_unix_ms) if k.expires_unix_ms else "never",
                _state(k, now_ms),
                _when(k.created_unix_ms),
            )
            for k in answer.keys
        ]
        if not rows:
            return "(no keys)"
        header = ("ID", "PREFIX", "TEAM", "MODELS", "EXPIRES", "STATE", "CREATED")
        return table(header, rows)
    if command == "keys":
        key = answer.key
        if args.json:
            return json.dumps(_json(key))
        return f"key {key.id} ({key.team}) is {_state(key, now_ms)}"
    if command == "teams":
        if verb == "create":
            return (
                json.dumps(_json(answer.team)) if args.json else f"team {answer.team.name} created"
            )
        if args.json:
            return json.dumps([_json(t) for t in answer.teams], indent=2)
        if not answer.teams:
            return "(no teams)"
        return table(
            ("NAME", "CREATED", "DESCRIPTION"),
            [(t.name, _when(t.created_unix_ms), t.description or "-") for t in answer.teams],
        )
    if command == "prices":
        if verb == "delete":
            return json.dumps({}) if args.json else f"price of {args.model} deleted"
        prices = [answer.price] if verb == "set" else list(answer.prices)
        if args.json:
            found = [_json(p) for p in prices]
            return json.dumps(found[0] if verb == "set" else found, indent=2)
        if not prices:
            return "(no prices set in the control plane; the edges' shipped table applies)"
        return (
            table(
                ("MODEL", "INPUT", "CACHED INPUT", "OUTPUT"),
                [
                    (
                        p.model,
                        f"{p.input_per_mtok:g}",
                        f"{p.cached_input_per_mtok:g}"
                        if p.HasField("cached_input_per_mtok")
                        else f"{p.input_per_mtok:g}",
                        f"{p.output_per_mtok:g}",
                    )
                    for p in prices
                ],
            )
            + "\n(USD per million tokens)"
        )
    if args.json:
        return json.dumps([_json(e) for e in answer.entries], indent=2)
    if not answer.entries:
        return "(no admin changes recorded)"
    return table(
        ("TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"),
        [(_when(e.unix_ms), e.actor, e.action, e.target, e.detail or "-") for e in answer.entries],
    )
