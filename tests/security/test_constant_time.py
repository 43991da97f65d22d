"""Constant-time comparison: no secret compared with `==`, bearer tokens and Secret equality
through hmac.compare_digest, client API keys held only as digests."""

from __future__ import annotations

import ast
import hmac
from typing import Any

import aiohttp
import pytest

import controlplane.auth
from corral.config import Secret
from edge.balancer import Balancer
from edge.metrics import EdgeMetrics
from edge.proxy import Proxy
from tests.support.procs import ROOT

SECRET_NAME = ("token", "secret", "api_key", "password", "credential", "_keys")


def _secretish(node: ast.expr) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and getattr(sub.func, "attr", "") == "reveal":
            return True
        name = sub.id if isinstance(sub, ast.Name) else getattr(sub, "attr", None)
        if not isinstance(name, str) or name[:1].isupper():
            continue  # a class (Secret itself), not a value
        if any(part in name.lower() for part in SECRET_NAME):
            return True
    return False


def test_no_secret_is_compared_with_equality() -> None:
    """No `==`/`!=`/`in` compares a secret-looking value in our packages (None checks aside)."""
    offenders = []
    for package in ("controlplane", "edge", "agent", "corral"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if "/v1/" in path.as_posix():
                continue  # generated protobuf code
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Compare):
                    continue
                operands = [node.left, *node.comparators]
                if any(isinstance(o, ast.Constant) and o.value is None for o in operands):
                    continue
                if not all(
                    isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops
                ):
                    continue
                if any(_secretish(o) for o in operands):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


async def test_secret_checks_go_through_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bearer tokens and Secrets use hmac.compare_digest; API keys are only hashed and looked up."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)

    assert controlplane.auth.bearer_matches("Bearer right", Secret("right"))
    assert not controlplane.auth.bearer_matches("Bearer wrong", Secret("right"))
    assert len(calls) == 2

    calls.clear()
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")
    assert len(calls) == 2

    from corral.config import EdgeConfig

    keys = tuple(Secret(f"key-{i}") for i in range(5))
    config = EdgeConfig(api_keys=keys)
    async with aiohttp.ClientSession() as session:  # only check_auth is used
        proxy = Proxy(config, Balancer(config), EdgeMetrics(), session)

    class _Request(dict[str, Any]):  # no Call stored on it
        def __init__(self, headers: dict[str, str]) -> None:
            super().__init__()
            self.headers = headers

    identity = proxy.check_auth(_Request({"Authorization": "Bearer key-0"}))
    assert identity is not None and identity.team == "default"
    with pytest.raises(Exception, match="Incorrect API key"):
        proxy.check_auth(_Request({"x-api-key": "key-9"}))
    # Every attribute it holds (slots, or a compiled class's fields: edge/native.py).
    held = repr([getattr(proxy.keys, name) for name in dir(proxy.keys) if name[:2] != "__"])
    assert not any(f"key-{i}" in held for i in range(5))  # digests only, never the keys
