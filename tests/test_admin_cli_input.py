"""Bad command lines to the AdminService commands: one line, exit 2, nothing sent."""

from __future__ import annotations

import pytest

from corral.cli import main
from tests.support.net import free_port

TOO_BIG = "99999999999999999999"


@pytest.mark.parametrize(
    "argv",
    [
        ["providers", "list"],
        ["fallbacks", "list"],
        ["keys", "list"],
        ["teams", "list"],
    ],
)
def test_a_client_pair_without_a_ca_is_refused_before_any_call(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every admin command refuses --cert-file/--key-file without --ca-file (no cleartext token)."""
    address = f"127.0.0.1:{free_port()}"
    pair = ["--cert-file", "c.pem", "--key-file", "k.pem"]
    assert main([*argv, "--controlplane", address, *pair]) == 2
    err = capsys.readouterr().err
    assert "need --ca-file" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["teams", "update", "t1", "--rpm", TOO_BIG],
        ["audit", "--limit", TOO_BIG],
        ["providers", "add", "p", "--type", "openai", "--base-url", "https://api.example.com/v1",
         "--credential", "p-ref", "--models", "m", "--max-concurrency", "-1"],
    ],
)  # fmt: skip
def test_numbers_a_field_cannot_hold_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A number out of its protobuf field's range is exit 2 and one line, not a traceback."""
    assert main([*argv, "--controlplane", f"127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err
    assert "out of" in err and err.count("\n") == 1 and "Traceback" not in err
