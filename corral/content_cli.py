"""Cache and guardrail flags of `corral keys create|update` and `corral teams create|update`.

    corral teams create support --cache-ttl 300 --pii redact --pii-restore
    corral keys update ck_0123456789ab --pii block

Only the flags given change (`--cache-ttl 0` turns caching off for the key or team); edges
apply the change within a second. A key's setting wins over its team's, and both over the
edge's config file.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from google.protobuf import json_format

from corral.status import StatusError
from corral.v1 import content_pb2

PII_ACTIONS = ("off", "log", "redact", "block")


def add_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("response cache and guardrails (only the ones given change)")
    group.add_argument(
        "--cache-ttl", type=float, metavar="SECONDS", help="cache answers this long (0: off)"
    )
    group.add_argument("--pii", choices=PII_ACTIONS, help="what PII found in prompts does")
    group.add_argument(
        "--pii-restore",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="after redact, put the originals back into answers",
    )
    return parser


def content_from(args: argparse.Namespace) -> content_pb2.ContentPolicy | None:
    """The settings the flags give (None: none given)."""
    content = content_pb2.ContentPolicy()
    given = False
    if getattr(args, "cache_ttl", None) is not None:
        content.cache_ttl_seconds = args.cache_ttl
        given = True
    if getattr(args, "pii", None) is not None:
        content.pii = args.pii
        given = True
    if getattr(args, "pii_restore", None) is not None:
        content.pii_restore = args.pii_restore
        given = True
    return content if given else None


def update_request(args: argparse.Namespace, limits_given: bool) -> tuple[str, Any] | None:
    """SetKeyContent / SetTeamContent when content flags were given (None: none were)."""
    content = content_from(args)
    if content is None:
        return None
    if limits_given:
        raise StatusError("change limits and cache/PII settings in separate updates", 2)
    if args.command == "keys":
        return "SetKeyContent", content_pb2.SetKeyContentRequest(id=args.id, content=content)
    return "SetTeamContent", content_pb2.SetTeamContentRequest(name=args.name, content=content)


def summary(content: content_pb2.ContentPolicy) -> str:
    """One line: cache_ttl=300s pii=redact (restore)."""
    parts = []
    if content.HasField("cache_ttl_seconds"):
        ttl = content.cache_ttl_seconds
        parts.append(f"cache_ttl={ttl:g}s" if ttl else "cache off")
    if content.HasField("pii"):
        parts.append(f"pii={content.pii}")
    if content.HasField("pii_restore"):
        parts.append("restore" if content.pii_restore else "no restore")
    return " ".join(parts) or "edge defaults"


def is_answer(answer: Any) -> bool:
    return isinstance(
        answer, content_pb2.SetKeyContentResponse | content_pb2.SetTeamContentResponse
    )


def render_update(args: argparse.Namespace, answer: Any) -> str:
    if args.json:
        return json.dumps(json_format.MessageToDict(answer, preserving_proto_field_name=True))
    what = f"key {answer.id}" if args.command == "keys" else f"team {answer.name}"
    return f"{what}: {summary(answer.content)}"
