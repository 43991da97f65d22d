"""`corral status` when something is wrong: a wrong or missing token, an unreachable control
plane, an unreadable token file (one line, exit 1 or 2); and over TLS and mutual TLS.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral.status import run_status
from tests.status.support import (
    ADMIN_TOKEN,
    ControlPlane,
    _args,
    _run_cli,
    _token_file,
    running_controlplane,
)
from tests.support.etcd import make_tls_files
from tests.support.net import free_port


async def test_wrong_token_is_one_line_and_exit_1(
    controlplane: ControlPlane, tmp_path: Path
) -> None:
    """A wrong admin token gives exit 1 and one line naming the token, no traceback."""
    rc, out, err = await _run_cli(
        "status",
        "--controlplane",
        controlplane.address,
        "--admin-token-file",
        _token_file(tmp_path, "not-the-token"),
    )
    assert rc == 1
    assert out == ""
    assert err.count("\n") == 1
    assert "refused the admin token" in err
    assert "Traceback" not in err
    assert "not-the-token" not in err  # the secret itself is never echoed


async def test_missing_token_is_refused(controlplane: ControlPlane) -> None:
    """No token at all against a protected control plane is the same clear refusal."""
    rc, _, err = await _run_cli("status", "--controlplane", controlplane.address)
    assert rc == 1
    assert "refused the admin token" in err


async def test_unreachable_controlplane_is_one_line_and_exit_1() -> None:
    """Nothing listening: exit 1, one line saying which address, no traceback."""
    address = f"127.0.0.1:{free_port()}"
    rc, out, err = await _run_cli("status", "--controlplane", address)
    assert rc == 1
    assert out == ""
    assert err.count("\n") == 1
    assert f"cannot reach the control plane at {address}" in err
    assert "Traceback" not in err


async def test_unreadable_token_file_exits_2(tmp_path: Path) -> None:
    """A token file that cannot be read is a usage error (exit 2), before any call."""
    rc, _, err = await _run_cli(
        "status",
        "--controlplane",
        f"127.0.0.1:{free_port()}",
        "--admin-token-file",
        str(tmp_path / "absent"),
    )
    assert rc == 2
    assert "cannot read admin token file" in err
    assert "Traceback" not in err


async def test_status_over_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--ca-file speaks TLS to a TLS control plane; without it the same call fails clearly."""
    tls = make_tls_files(tmp_path / "tls")
    token_file = _token_file(tmp_path, ADMIN_TOKEN)
    async with running_controlplane(
        tls_cert_file=str(tls.server_cert), tls_key_file=str(tls.server_key)
    ) as cp:
        args = _args(cp.address, token_file, as_json=False)
        args.ca_file, args.cert_file, args.key_file = str(tls.ca), None, None
        rc = await asyncio.to_thread(run_status, args)
        assert rc == 0
        assert "BACKENDS (0)" in capsys.readouterr().out

        rc, out, err = await _run_cli(
            "status", "--controlplane", cp.address, "--admin-token-file", token_file
        )
        assert rc == 1
        assert out == ""
        assert f"cannot reach the control plane at {cp.address}" in err
        assert err.count("\n") == 1


async def test_mutual_tls_needs_ca_and_pair(tmp_path: Path) -> None:
    """A client pair without --ca-file, or half a pair, is a usage error (exit 2)."""
    address = f"127.0.0.1:{free_port()}"
    rc, _, err = await _run_cli("status", "--controlplane", address, "--cert-file", "c.pem")
    assert rc == 2
    assert "need --ca-file" in err
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate")
    rc, _, err = await _run_cli(
        "status", "--controlplane", address, "--ca-file", str(ca), "--cert-file", "c.pem"
    )
    assert rc == 2
    assert "--cert-file and --key-file go together" in err
    rc, _, err = await _run_cli(
        "status", "--controlplane", address, "--ca-file", str(tmp_path / "absent.pem")
    )
    assert rc == 2
    assert "cannot read CA file" in err
    assert "Traceback" not in err
