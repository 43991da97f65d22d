"""Corral components as real processes (`corral controlplane|edge|agent ...`) for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

CORRAL = str(Path(sys.executable).with_name("corral"))
ROOT = Path(__file__).resolve().parent.parent.parent


def log_tail(path: Path, lines: int) -> str:
    """The last lines of a process's log, for failure messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class CorralProcess:
    """One `corral` subcommand in its own process group, its output in a log file."""

    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> CorralProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [CORRAL, *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "CORRAL_LOG_LEVEL": "INFO", **self.env},
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would."""
        if self.alive:
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def terminate(self, within: float = 15.0) -> int:
        """SIGTERM and wait for a graceful exit; SIGKILL if it does not come."""
        assert self.process is not None
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(within)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)


@dataclass
class ProcessGroup:
    """Every process a test started; all of them are stopped at the end, pass or fail."""

    log_dir: Path
    processes: list[CorralProcess] = field(default_factory=list)

    def start(self, name: str, *args: str) -> CorralProcess:
        proc = CorralProcess(list(args), self.log_dir / f"{name}.log").start()
        self.processes.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            if proc.alive:
                proc.terminate(within=5)

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name} ---\n{p.log_tail()}" for p in self.processes)
