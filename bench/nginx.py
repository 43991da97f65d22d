"""nginx configurations for the benchmarks: a fixed-answer backend and plain reverse proxies."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from bench.common import LOAD_CPU, PYTHON
from bench.procs import Proc, Procs, free_port, wait_http, wait_port

MODEL = "bench-model"


def chat_completion_body() -> bytes:
    """A fixed ~400-byte OpenAI chat.completion, as a small model would answer."""
    body = {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion",
        "created": 1763769600,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "The quick brown fox jumps over the lazy dog. " * 2,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 24, "completion_tokens": 20, "total_tokens": 44},
        "system_fingerprint": "fp_bench",
    }
    return orjson.dumps(body)


def models_body() -> bytes:
    return orjson.dumps(
        {
            "object": "list",
            "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}],
        }
    )


def _common(tmp: Path, workers: int) -> str:
    # Workers run as the invoking user, so they can use the private temp directory.
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""{user}
worker_processes {workers};
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
"""


def _http_common(tmp: Path) -> str:
    return f"""
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    tcp_nodelay on;
"""


def backend_conf(tmp: Path, port: int) -> str:
    chat = chat_completion_body().decode()
    models = models_body().decode()
    assert "'" not in chat and "'" not in models
    return f"""{_common(tmp, 1)}
http {{
{_http_common(tmp)}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        default_type application/json;
        location = /v1/chat/completions {{ return 200 '{chat}'; }}
        location = /v1/models {{ return 200 '{models}'; }}
        location = /health {{ return 200 'ok'; }}
        location / {{ return 404 '{{"error":{{"message":"not found"}}}}'; }}
    }}
}}
"""


def proxy_conf(
    tmp: Path,
    port: int,
    upstreams: Sequence[str],
    *,
    balance: str = "",
    workers: int = 1,
) -> str:
    """A plain reverse proxy; balance is '' (round robin) or 'least_conn;'."""
    servers = "\n".join(f"        server {u} max_fails=0;" for u in upstreams)
    return f"""{_common(tmp, workers)}
http {{
{_http_common(tmp)}
    upstream backends {{
        {balance}
{servers}
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def start(
    procs: Procs,
    name: str,
    make_conf: Callable[[Path], str],
    cpus: str,
    health_url: str | None,
) -> Proc:
    """Write a config (built for its own directory) and run nginx on it, pinned to cpus."""
    tmp = procs.log_dir / name
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "nginx.conf").write_text(make_conf(tmp))
    proc = procs.start(name, ["nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf")], cpus=cpus)
    if health_url is not None:
        wait_http(health_url, proc)
    return proc


def start_backend(procs: Procs) -> str:
    """The fixed-answer backend on the load CPU; its base URL once /health answers."""
    port = free_port()
    start(procs, "backend", lambda d: backend_conf(d, port), LOAD_CPU,
          f"http://127.0.0.1:{port}/health")  # fmt: skip
    return f"http://127.0.0.1:{port}"


def start_snapshots(
    procs: Procs, backend: str, *, model: str = MODEL, backend_name: str = "nginx"
) -> int:
    """bench/snapshot_server.py on the load CPU routing `model` to `backend`; its port once it
    listens."""
    port = free_port()
    proc = procs.start(
        "snapshots",
        [PYTHON, "-m", "bench.snapshot_server", "--listen", f"127.0.0.1:{port}",
         "--model", model, "--backend", f"{backend_name}={backend}"],
        cpus=LOAD_CPU,
    )  # fmt: skip
    wait_port(port, proc)
    return port


def backend_with_snapshots(procs: Procs) -> tuple[str, int]:
    """The fixed-answer backend and a snapshot server routing to it, both ready: the
    backend's URL and the snapshot server's port (what `corral edge --controlplane` takes)."""
    backend = start_backend(procs)
    return backend, start_snapshots(procs, backend)
