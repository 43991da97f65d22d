"""How this machine's idle CPUs wait, and (for a diagnostic run, as root) a different wait.

On a VM an idle vCPU that halts at once exits to the hypervisor, and waking it from another
CPU (a socket's reader woken by its writer) costs a round trip through the host: tens of µs
per wake-up here, several per proxied request at one connection. Linux's haltpoll cpuidle
driver polls for `guest_halt_poll_ns` first (the kernel's default is 200 µs); this machine's
kernel command line sets 0. `note()` goes into every section's machine line; `polling(ns)`
sets another value for one run and puts the old one back; `add_option` and `diagnostic` give
a benchmark its `--halt-poll-ns` run, written as a section apart (`NAME-polling`).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

from bench.common import BenchError

_DRIVER = Path("/sys/devices/system/cpu/cpuidle/current_driver")
_POLL = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")


def note() -> str:
    """The cpuidle driver and, for haltpoll, how long an idle CPU polls before it halts."""
    try:
        driver = _DRIVER.read_text().strip()
    except OSError:
        return ""
    if driver != "haltpoll":
        return f"idle CPUs: {driver}"
    try:
        ns = int(_POLL.read_text())
    except (OSError, ValueError):
        return "idle CPUs: haltpoll"
    return f"idle CPUs: haltpoll, polling {ns / 1000:g} µs before halting"


@contextlib.contextmanager
def polling(ns: int) -> Iterator[None]:
    """Idle CPUs poll `ns` nanoseconds before halting, for the duration (root only)."""
    try:
        old = _POLL.read_text().strip()
        _POLL.write_text(str(ns))
    except OSError as exc:
        raise BenchError(f"cannot set {_POLL} (haltpoll absent, or not root): {exc}") from exc
    try:
        yield
    finally:
        _POLL.write_text(old)


_DIAGNOSTIC = """
A diagnostic run: for its duration the machine's idle CPUs poll {us:g} µs before they halt
(`guest_halt_poll_ns`, the haltpoll cpuidle driver's; the kernel's default is 200 µs, this
VM's kernel command line sets 0, and the setting was put back after the run). A process
woken from another CPU then finds its CPU awake more often, with no exit to the hypervisor:
compare with the section of the same name measured with the machine as it is.
"""


def add_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--halt-poll-ns",
        type=int,
        default=None,
        help="a diagnostic (root): idle CPUs poll this long before halting, for this run only "
        "(bench/idle.py); written as a section apart",
    )


def diagnostic(ns: int | None) -> contextlib.AbstractContextManager[None]:
    """`polling(ns)`, or nothing changed when `ns` is None."""
    return polling(ns) if ns is not None else contextlib.nullcontext()


def as_diagnostic(text: str, ns: int, command: str) -> str:
    """A section's text retitled for a `--halt-poll-ns` run, with what that run changed."""
    head, _, rest = text.partition("\n")
    title = head.split(" (`", 1)[0]
    return f"{title}, idle CPUs polling (`{command}`)\n{_DIAGNOSTIC.format(us=ns / 1000)}{rest}"
