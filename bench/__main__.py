"""``python -m bench NAME [options]``: run one benchmark (see bench/README.md)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "overhead": "bench.overhead",
    "timeline": "bench.timeline",
    "streaming": "bench.streaming",
    "controlplane": "bench.controlplane",
    "routing": "bench.routing",
    "keys": "bench.keys",
    "providers": "bench.providers",
    "usage": "bench.usage",
    "cacheguard": "bench.cacheguard",
    "routing-real": "bench.routing_real",
    "limits": "bench.limits",
    "traffic": "bench.traffic",
    "headers": "bench.headers",
    "profile": "bench.profile",
    "lane": "bench.lane",
    "memory": "bench.memory",
    "stream-load": "bench.stream_load",
    "compare": "bench.compare",
    "cold": "bench.cold",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help") or argv[0] not in BENCHMARKS:
        print("usage: ./dev bench NAME [options]   (NAME: " + ", ".join(BENCHMARKS) + ")")
        print("each benchmark takes --help; see bench/README.md")
        return 0 if argv and argv[0] in ("-h", "--help", "help") else 2
    module = importlib.import_module(BENCHMARKS[argv[0]])
    result: int = module.main(argv[1:])
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
