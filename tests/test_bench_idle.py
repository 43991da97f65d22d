"""bench/idle.py: the idle-CPU note every section carries, and a polling setting put back."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import idle
from bench.common import BenchError


@pytest.fixture
def sysfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    driver, poll = tmp_path / "current_driver", tmp_path / "guest_halt_poll_ns"
    driver.write_text("haltpoll\n")
    poll.write_text("0\n")
    monkeypatch.setattr(idle, "_DRIVER", driver)
    monkeypatch.setattr(idle, "_POLL", poll)
    return driver, poll


def test_note_names_the_driver_and_the_poll(sysfs: tuple[Path, Path]) -> None:
    """haltpoll with its poll in µs; another driver by name; none when sysfs has none."""
    driver, poll = sysfs
    assert idle.note() == "idle CPUs: haltpoll, polling 0 µs before halting"
    poll.write_text("200000\n")
    assert idle.note() == "idle CPUs: haltpoll, polling 200 µs before halting"
    driver.write_text("acpi_idle\n")
    assert idle.note() == "idle CPUs: acpi_idle"
    driver.unlink()
    assert idle.note() == ""


def test_polling_puts_the_old_value_back_even_on_failure(sysfs: tuple[Path, Path]) -> None:
    """The run's value while inside; the machine's own after, also when the run fails."""
    _, poll = sysfs
    with pytest.raises(RuntimeError), idle.polling(200_000):
        assert poll.read_text() == "200000"
        raise RuntimeError("the run failed")
    assert poll.read_text() == "0"


def test_polling_without_haltpoll_is_a_bench_error(
    sysfs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No haltpoll module (or no root): a clear BenchError, nothing changed."""
    monkeypatch.setattr(idle, "_POLL", tmp_path / "absent" / "guest_halt_poll_ns")
    with pytest.raises(BenchError, match="haltpoll absent, or not root"), idle.polling(1):
        pass


def test_a_diagnostic_section_is_retitled_and_says_what_changed() -> None:
    """The title keeps its name, gains the run's command; the setting is stated in µs."""
    text = "## Streaming\n\nCommand: `./dev bench streaming`\n"
    out = idle.as_diagnostic(text, 200_000, "./dev bench streaming --halt-poll-ns 200000")
    head, _, rest = out.partition("\n")
    assert head == "## Streaming, idle CPUs polling (`./dev bench streaming --halt-poll-ns 200000`)"
    assert "poll 200 µs before they halt" in rest
    assert rest.endswith("\nCommand: `./dev bench streaming`\n")
    timeline = "## One request's time at one connection (`./dev bench timeline`)\nx"
    assert idle.as_diagnostic(timeline, 1000, "c").startswith(
        "## One request's time at one connection, idle CPUs polling (`c`)\n"
    )
