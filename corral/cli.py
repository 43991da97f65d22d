"""The `corral` command: one entry point for every component.

Each subcommand builds its frozen config once (YAML file, CORRAL_* environment, flags) and
hands it to the component. Components are imported lazily so `corral agent` never loads
the edge, and so on.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from corral import __version__, usage_cli
from corral.config import BACKEND_TYPES, ConfigError, CorralConfig, load
from corral.runtime import configure_logging, run_until_signal


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (a section per component)")
    parser.add_argument("--log-level", default=os.environ.get("CORRAL_LOG_LEVEL", "INFO"))


def _controlplane_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", help="gRPC address (default 127.0.0.1:7701)")
    p.add_argument("--store", choices=["etcd", "memory"], help="state store (default etcd)")
    p.add_argument("--etcd", dest="etcd_endpoints", type=_csv, help="etcd URL[,URL...]")
    p.add_argument("--etcd-prefix")
    p.add_argument("--etcd-ca-file")
    p.add_argument("--etcd-cert-file")
    p.add_argument("--etcd-key-file")
    p.add_argument("--lease-ttl", dest="lease_ttl_seconds", type=float)
    p.add_argument("--metrics-listen", help="HOST:PORT for Prometheus /metrics")
    p.add_argument("--agent-token-file")
    p.add_argument("--admin-token-file")
    p.add_argument("--edge-token-file")
    p.add_argument("--tls-cert-file")
    p.add_argument("--tls-key-file")
    p.add_argument("--tls-client-ca-file")
    p.add_argument("--replica-id")


def _edge_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--controlplane", type=_csv, help="HOST:PORT[,HOST:PORT...]")
    p.add_argument("--listen", help="HTTP address (default 127.0.0.1:7700)")
    p.add_argument("--state-dir", help="persist the last snapshot here")
    p.add_argument("--api-key-file", dest="api_keys_file", help="client API keys, one a line")
    p.add_argument("--controlplane-token-file")
    p.add_argument("--controlplane-ca-file")
    p.add_argument("--controlplane-cert-file", help="client certificate for mutual TLS")
    p.add_argument("--controlplane-key-file", help="client key for mutual TLS")
    p.add_argument(
        "--workers", type=int, help="worker processes sharing the port (default: one per core)"
    )
    p.add_argument(
        "--balancing",
        choices=["sticky", "least-connections", "round-robin"],
        help="how a backend is chosen (default sticky)",
    )
    p.add_argument("--edge-id")
    p.add_argument(
        "--require-keys",
        dest="identity",
        action="store_const",
        const={"require_keys": True},
        help="refuse requests without a valid key even while no virtual key exists",
    )
    p.add_argument("--credentials-dir", help="files named by credential reference")
    p.add_argument("--extra-ca-file", help="CA bundle also trusted for outbound TLS")


def _agent_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--controlplane", type=_csv, help="HOST:PORT[,HOST:PORT...]")
    p.add_argument("--backend", help="the inference server's base URL")
    p.add_argument(
        "--type",
        choices=BACKEND_TYPES,
    )
    p.add_argument("--name")
    p.add_argument("--priority", type=int)
    p.add_argument("--weight", type=float)
    p.add_argument("--max-concurrency", type=int)
    p.add_argument("--label", dest="labels", action="append", metavar="KEY=VALUE")
    p.add_argument("--backend-api-key-file")
    p.add_argument("--credential", help="credential reference for the backend (edges send it)")
    p.add_argument("--credentials-dir", help="files named by credential reference")
    p.add_argument("--controlplane-token-file")
    p.add_argument("--controlplane-ca-file")
    p.add_argument("--controlplane-cert-file", help="client certificate for mutual TLS")
    p.add_argument("--controlplane-key-file", help="client key for mutual TLS")
    p.add_argument("--metrics-listen", help="HOST:PORT for /healthz and /metrics")
    p.add_argument("--probe-interval", dest="probe_interval_seconds", type=float)
    p.add_argument("--agent-id")


def _up_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", help="edge HTTP address (default 127.0.0.1:7700)")
    p.add_argument("--controlplane-listen", help="gRPC address (default 127.0.0.1:7701)")
    p.add_argument("--backend", dest="backends", action="append", metavar="URL")
    p.add_argument("--no-discover", dest="discover", action="store_const", const=False)
    p.add_argument("--demo", action="store_const", const=True, help="start demo backends too")
    p.add_argument(
        "--register-timeout",
        dest="register_timeout_seconds",
        type=float,
        help="open the port after this long even if a backend has not registered (default 30)",
    )


SECTION_FLAGS = {
    "controlplane": _controlplane_flags,
    "edge": _edge_flags,
    "agent": _agent_flags,
    "up": _up_flags,
}


def build_parser(*, components_only: bool = False) -> argparse.ArgumentParser:
    """The whole command line; `components_only`: just the components' commands, all that
    `corral edge ...` needs (the admin commands' modules load gRPC stubs and protobuf's JSON
    support: memory every edge worker would carry for nothing)."""
    parser = argparse.ArgumentParser(prog="corral", description="A distributed LLM proxy.")
    parser.add_argument("--version", action="version", version=f"corral {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "controlplane": "run a control-plane replica (gRPC, state in etcd)",
        "edge": "run an edge (OpenAI-compatible HTTP)",
        "agent": "run an agent beside one inference server",
        "up": "run everything in one process for this machine",
    }
    for name, add_flags in SECTION_FLAGS.items():
        p = sub.add_parser(name, help=helps[name], description=helps[name])
        _common(p)
        add_flags(p)
    if components_only:
        return parser
    from corral import gateway_cli, providers_cli

    status = sub.add_parser("status", help="show backends and edges from a control plane")
    status.add_argument("--controlplane", default="127.0.0.1:7701")
    status.add_argument("--admin-token-file")
    status.add_argument("--json", action="store_true", help="print JSON instead of tables")
    status.add_argument("--ca-file", help="speak TLS, trusting this CA bundle")
    status.add_argument("--cert-file", help="client certificate for mutual TLS")
    status.add_argument("--key-file", help="client key for mutual TLS")
    usage_cli.add_parser(sub)
    status.add_argument(
        "--window", choices=("1m", "5m", "1h"), default="5m", help="traffic over this window"
    )
    providers_cli.register(sub)
    gateway_cli.register(sub)
    return parser


_NOT_CONFIG = {"command", "config", "log_level", "json"}


def config_from_args(args: argparse.Namespace, environ: dict[str, str]) -> CorralConfig:
    flags: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    return load(config_file=args.config, environ=environ, flags={args.command: flags})


def main(argv: Sequence[str] | None = None) -> int:
    own_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(components_only=bool(argv) and argv[0] in SECTION_FLAGS).parse_args(argv)
    if args.command not in SECTION_FLAGS:
        return _run_admin(args)
    try:
        config = usage_cli.with_default_usage_path(
            config_from_args(args, dict(os.environ)), os.environ
        )
    except ConfigError as exc:
        print(f"corral {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    if args.command == "edge" and own_command_line:
        from corral.lean_env import restart_lean

        restart_lean(args.command, config, args.log_level)  # returns if nothing to change
    return run_component(args.command, config)


def run_component(command: str, config: CorralConfig) -> int:
    """Run one component until it stops; its exit code."""
    try:
        return _run(command, config)
    except Exception as exc:
        # The process boundary: a component that cannot run (a port in use, a bad
        # certificate, a store that never answers) is reported in one line, not a traceback.
        logging.getLogger(__name__).debug("%s failed", command, exc_info=True)
        print(f"corral {command}: error: {_describe(exc)}", file=sys.stderr)
        return 1


def _run_admin(args: argparse.Namespace) -> int:
    """The commands that talk to a running cluster or read usage records."""
    from corral import gateway_cli, providers_cli

    if args.command in providers_cli.COMMANDS:
        return providers_cli.run(args)
    if args.command in gateway_cli.COMMANDS:
        return gateway_cli.run(args)
    if args.command == "status":
        from corral.status import run_status

        return run_status(args)
    return usage_cli.run(args, os.environ)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    return str(exc) or type(exc).__name__


def _run(command: str, config: CorralConfig) -> int:
    if command == "controlplane":
        import controlplane

        return run_until_signal(lambda: controlplane.serve(config.controlplane, settle=True))
    if command == "edge":
        import edge

        return edge.main(config.edge)
    if command == "agent":
        import agent

        return run_until_signal(lambda: agent.serve(config.agent))
    from corral import embedded

    return run_until_signal(lambda: embedded.serve(config))


if __name__ == "__main__":
    sys.exit(main())
