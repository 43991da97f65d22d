"""A run of the load generator on the client host (tests/faults/loadgen.py): started per
scenario, read as it goes, always stopped."""

from __future__ import annotations

import json
from typing import Any

from tests.faults.services import MODEL, PYTHON, FaultSuiteError, until
from tests.faults.topology import Cluster


class LoadRun:
    """One run of the load generator in the client host; its records as dicts."""

    def __init__(
        self,
        cluster: Cluster,
        name: str,
        *,
        edges: list[str] | None = None,
        workers: int = 4,
        streams: int = 3,
        duration: float = 90.0,
    ) -> None:
        assert cluster.client is not None
        self.cluster = cluster
        self.out = cluster.base / f"load-{name}.jsonl"
        self.stop_file = cluster.base / f"load-{name}.stop"
        self.out.unlink(missing_ok=True)
        self.stop_file.unlink(missing_ok=True)
        argv = [PYTHON, "-m", "tests.faults.loadgen", "--model", MODEL, "--out", str(self.out),
                "--stop-file", str(self.stop_file), "--duration", str(duration),
                "--workers", str(workers), "--streams", str(streams)]  # fmt: skip
        for edge in edges or list(cluster.edges):
            argv += ["--edge", cluster.edge_url(edge)]
        self.service = cluster._service(cluster.client, f"loadgen-{name}", argv).start()

    def records(self) -> list[dict[str, Any]]:
        try:
            lines = self.out.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line being written
        return out

    def requests(self, since: float = 0.0) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["ev"] == "req" and r["t0"] >= since]

    def wait_serving_all(self, backends: list[str], within: float = 30) -> None:
        """Until each of backends has served at least one request of this run."""

        def check() -> bool:
            if not self.service.alive() and not self.done():
                raise FaultSuiteError(f"load generator exited: {self.service.log_tail()}")
            served = {r.get("backend") for r in self.requests() if r["ok"]}
            return set(backends) <= served

        until(check, within, f"load reaching {backends}")

    def wait_requests_after(self, t: float, count: int, within: float = 30) -> None:
        until(lambda: len(self.requests(since=t)) >= count, within, f"{count} requests after t")

    def open_stream_on(self, backend: str) -> dict[str, Any] | None:
        """A stream this run opened on backend that has not ended yet."""
        records = self.records()
        ended = {r["id"] for r in records if r["ev"] == "stream"}
        for r in reversed(records):
            if r["ev"] == "stream_open" and r["backend"] == backend and r["id"] not in ended:
                return r
        return None

    def done(self) -> bool:
        return any(r["ev"] == "done" for r in self.records())

    def stop(self) -> list[dict[str, Any]]:
        self.stop_file.touch()
        until(self.done, 90, "the load generator finishing", interval=0.1)
        assert self.service.proc is not None
        self.service.proc.popen.wait(30)
        return self.records()


class Load:
    """A load run that is always stopped, even when the scenario fails."""

    def __init__(self, c: Cluster, name: str, **kwargs: Any) -> None:
        self.run = LoadRun(c, name, **kwargs)

    def __enter__(self) -> LoadRun:
        return self.run

    def __exit__(self, *exc: object) -> None:
        self.run.stop_file.touch()
        if self.run.service.alive():
            try:
                until(self.run.done, 90, "the load generator finishing", interval=0.1)
            finally:
                self.run.service.kill()
