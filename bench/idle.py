"""How this machine's idle CPUs wait, and (for a diagnostic run, as root) a different wait.

On a VM an idle vCPU that halts at once exits to the hypervisor, and waking it from another
CPU (a socket's reader woken by its writer) costs a round trip through the host: tens of µs
per wake-up here, several per proxied request at one connection. Linux's haltpoll cpuidle
driver polls for `guest_halt_poll_ns` first (the kernel's default is 200 µs); this machine's
kernel command line sets 0. `note()` goes into every section's machine line; `polling(ns)`
sets another value for one run and puts the old one back.
"""

from __future__ import annotations

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
