"""`corral usage`: a report of the usage records (requests, tokens, cost, errors, latency).

The sink is found as the edge finds it: flags first (--sqlite, --jsonl, --postgres-dsn-file),
else the config file's edge.usage section (--config), else the default SQLite file that
`corral up` and `corral edge` without a state_dir write to (~/.local/state/corral/usage.db,
or $XDG_STATE_HOME/corral/usage.db): next to a running `corral up`, no flag is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import orjson

from corral.config import ConfigError, CorralConfig, load


def default_usage_path(environ: Mapping[str, str]) -> str:
    """The SQLite file `corral up` (and a `corral edge` without a state_dir) writes to."""
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "~")) / ".local/state")
    return str(Path(base).expanduser() / "corral" / "usage.db")


def with_default_usage_path(config: CorralConfig, environ: Mapping[str, str]) -> CorralConfig:
    """The config with the default usage file filled in where none is configured."""
    edge = config.edge
    if edge.usage.sink not in ("sqlite", "jsonl") or edge.usage.path or edge.state_dir:
        return config
    usage = dataclasses.replace(edge.usage, path=default_usage_path(environ))
    return dataclasses.replace(config, edge=dataclasses.replace(edge, usage=usage))


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "usage",
        help="report requests, tokens, cost, errors and latency from the usage records",
        description="Report requests, tokens, cost, error rate and p50/p95 latency from the "
        "usage records, grouped by key, team, model, backend or day.",
    )
    p.add_argument("--since", default="24h", help="how far back: 30m, 24h, 7d (default 24h)")
    p.add_argument("--by", choices=["key", "team", "model", "backend", "day"], default="model")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--config", help="the edges' YAML config file (its edge.usage section)")
    p.add_argument("--sqlite", metavar="PATH", help="read this SQLite usage database")
    p.add_argument("--jsonl", metavar="PATH", help="read this JSON-lines usage file")
    p.add_argument("--postgres-dsn-file", metavar="PATH", help="a file holding the DSN")


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from edge.gateway import report
    from edge.gateway.sinks import SinkError
    from edge.gateway.usage import sqlite_path

    try:
        since = time.time() - report.parse_span(args.since)
    except ValueError as exc:
        print(f"corral usage: {exc}", file=sys.stderr)
        return 2
    try:
        kind, where = _source(args, environ, sqlite_path)
    except (ConfigError, OSError) as exc:
        print(f"corral usage: {exc}", file=sys.stderr)
        return 2
    try:
        if kind == "postgres":
            result = asyncio.run(report.from_postgres(where, args.by, since))
        elif kind == "jsonl":
            result = report.from_jsonl(where, args.by, since)
        else:
            result = report.from_sqlite(where, args.by, since)
    except SinkError as exc:
        print(f"corral usage: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(result.as_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(report.render(result))
    return 0


def _source(
    args: argparse.Namespace, environ: Mapping[str, str], sqlite_path: object
) -> tuple[str, str]:
    if args.sqlite:
        return "sqlite", args.sqlite
    if args.jsonl:
        return "jsonl", args.jsonl
    if args.postgres_dsn_file:
        return "postgres", Path(args.postgres_dsn_file).read_text().strip()
    config = with_default_usage_path(load(config_file=args.config, environ=dict(environ)), environ)
    from edge.gateway.usage import sink_kind

    usage = config.edge.usage
    kind = sink_kind(usage)
    if kind == "postgres":
        if usage.postgres_dsn is None:
            raise ConfigError("edge.usage.sink is postgres but no postgres_dsn is set")
        return "postgres", usage.postgres_dsn.reveal()
    if kind == "off":
        raise ConfigError("edge.usage.sink is off: there are no records to report")
    path = sqlite_path(config.edge)  # type: ignore[operator]
    return kind, str(path)
