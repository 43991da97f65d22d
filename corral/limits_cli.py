"""Limit flags of `corral keys create|update` and `corral teams create|update`.

    corral keys update ck_0123456789ab --rpm 60 --tpm 100000 --max-parallel 4
    corral teams create research --budget-usd 50 --budget-period day --budget-soft 0.8

Only the flags given change (0 removes a limit); edges apply the change within a second.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from google.protobuf import json_format

from corral.v1 import limits_pb2

_PERIODS = ("hour", "day", "week", "month", "fixed")
# flag -> Limits field
_FIELDS = {
    "rpm": "rpm",
    "tpm": "tpm",
    "max_parallel": "max_parallel",
    "budget_usd": "budget_usd",
    "budget_tokens": "budget_tokens",
    "budget_period": "budget_period",
    "budget_window": "budget_window_seconds",
    "budget_reset": "budget_reset_unix",
    "budget_soft": "budget_soft",
}


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("limits (only the ones given change; 0 removes one)")
    group.add_argument("--rpm", type=int, help="requests per minute")
    group.add_argument("--tpm", type=int, help="tokens (prompt + completion) per minute")
    group.add_argument("--max-parallel", type=int, help="requests in flight at once")
    group.add_argument("--budget-usd", type=float, help="spend budget in USD per period")
    group.add_argument("--budget-tokens", type=int, help="token budget per period")
    group.add_argument("--budget-period", choices=_PERIODS, help="the budget's period")
    group.add_argument(
        "--budget-window", type=float, help="seconds per window of a fixed budget period"
    )
    group.add_argument(
        "--budget-reset", type=float, help="Unix time a fixed budget window starts from"
    )
    group.add_argument("--budget-soft", type=float, help="warn past this fraction (0.8)")


def add_update(verbs: Any, target: str, what: str) -> argparse.ArgumentParser:
    """The `update` verb: change a key's or team's limits."""
    update: argparse.ArgumentParser = verbs.add_parser("update", help=f"change a {what}'s limits")
    update.add_argument(target)
    add_flags(update)
    return update


def limits_from(args: argparse.Namespace) -> limits_pb2.Limits | None:
    """The Limits the flags give (None: no limit flag given)."""
    limits = limits_pb2.Limits()
    given = False
    for flag, field in _FIELDS.items():
        value = getattr(args, flag, None)
        if value is not None:
            setattr(limits, field, value)
            given = True
    return limits if given else None


def update_request(args: argparse.Namespace) -> tuple[str, Any]:
    limits = limits_from(args) or limits_pb2.Limits()
    if args.command == "keys":
        return "SetKeyLimits", limits_pb2.SetKeyLimitsRequest(id=args.id, limits=limits)
    return "SetTeamLimits", limits_pb2.SetTeamLimitsRequest(name=args.name, limits=limits)


def summary(limits: limits_pb2.Limits) -> str:
    """One line: rpm=60 tpm=100000 budget=$50/day (soft 80%)."""
    parts = [f"{name}={getattr(limits, name)}" for name in ("rpm", "tpm", "max_parallel")]
    parts = [p for p in parts if not p.endswith("=0")]
    period = limits.budget_period or "day"
    if period == "fixed":
        period = f"{limits.budget_window_seconds:g}s"
    if limits.budget_usd:
        parts.append(f"budget=${limits.budget_usd:g}/{period}")
    elif limits.budget_tokens:
        parts.append(f"budget={limits.budget_tokens} tokens/{period}")
    if parts and limits.budget_soft:
        parts.append(f"(soft {limits.budget_soft:.0%})")
    return " ".join(parts) or "no limits"


def render_update(args: argparse.Namespace, answer: Any) -> str:
    if args.json:
        return json.dumps(json_format.MessageToDict(answer, preserving_proto_field_name=True))
    what = f"key {answer.id}" if args.command == "keys" else f"team {answer.name}"
    return f"{what}: {summary(answer.limits)}"
