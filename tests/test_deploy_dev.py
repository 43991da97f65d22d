"""./dev, the entry point the guide and CI run: its help is the comment at its top."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.deploy import ROOT

DEV = ROOT / "dev"


def header() -> str:
    """The comment block after the shebang, without its "# " prefixes."""
    lines = []
    for line in DEV.read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        lines.append(line.removeprefix("#").removeprefix(" "))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("flag", ["help", "-h", "--help", None])
def test_dev_help_prints_the_usage_and_succeeds(flag: str | None) -> None:
    """`./dev help`, -h, --help and no command print the top comment (no code) and exit 0."""
    argv = [str(DEV)] if flag is None else [str(DEV), flag]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert "./dev test" in result.stdout
    assert "set -euo" not in result.stdout and "dirname" not in result.stdout
    assert result.stdout == header()


def test_dev_unknown_command_fails_with_the_usage() -> None:
    """An unknown command exits 2 and shows the usage on stderr."""
    result = subprocess.run(
        [str(DEV), "no-such-command"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "./dev test" in result.stderr
