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
