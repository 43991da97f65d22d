"""An edge cut off from every control-plane replica: it keeps serving its last snapshot,
also across a restart, and catches up when the partition heals."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.faults.load import Load
from tests.faults.report import Results, ScenarioResult, summarize
from tests.faults.scenarios.checks import (
    WITHIN,
    check,
    clients_harmed,
    timed,
)
from tests.faults.services import until
from tests.faults.topology import Cluster

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]


def test_edge_cut_off_from_every_controlplane(c: Cluster, results: Results) -> None:
    """An edge cut from both replicas keeps serving its last snapshot and catches up later."""
    edge1, cps = c.edge_hosts["edge1"], [c.cps[n].host for n in c.cps]
    with Load(c, "edge-cut") as load:
        load.wait_serving_all(list(c.backends))
        before = int(c.readyz("edge1")["snapshot_version"])
        t_cut = time.time()
        c.net.partition([edge1], cps)
        c.admin("cp1", "DrainBackend", {"name": "be2", "reason": "while edge1 is cut off"})
        drained_version = until(
            lambda: (s := c.snapshot("cp1"))["backends"]["be2"]["drained"] and s["version"],
            WITHIN,
            "be2 drained",
        )
        until(
            lambda: int(c.readyz("edge2")["snapshot_version"]) >= drained_version,
            WITHIN,
            "edge2 applying the drain",
        )
        t_drained = time.time()
        edge1_url = c.edge_url("edge1")
        until(
            lambda: sum(1 for r in load.requests(since=t_drained) if r["edge"] == edge1_url) >= 40,
            WITHIN,
            "edge1 serving 40 requests while cut off",
        )
        # Until the edge itself gives its stream up (gRPC keepalive), still serving meanwhile.
        noticed = timed(
            lambda: c.readyz("edge1")["controlplane_connected"] is False,
            "edge1 noticing it lost the control plane",
            t_cut,
            within=WITHIN + 30,
        )
        stale = int(c.readyz("edge1")["snapshot_version"])
        violations = check(
            before <= stale < drained_version,
            f"edge1 cut off served version {stale}, expected [{before}, {drained_version})",
        )
        t_heal = time.time()
        c.net.heal([edge1], cps)
        caught_up = timed(
            lambda: int(c.readyz("edge1")["snapshot_version"]) >= drained_version,
            "edge1 catching up",
            t_heal,
            within=60,
        )
        load.wait_requests_after(time.time(), 40)
        records = load.stop()

    violations += clients_harmed(records)
    via_edge1 = [r for r in records if r["ev"] == "req" and r["edge"] == edge1_url]
    cut_window = [r for r in via_edge1 if t_cut <= r["t0"] < t_heal]
    violations += check(
        bool(cut_window) and all(r["ok"] for r in cut_window),
        "edge1 did not answer every request while cut off",
    )
    stale_routes = sum(1 for r in cut_window if r["t0"] >= t_drained and r.get("backend") == "be2")
    results.add(
        ScenarioResult(
            key="edge-cut-off",
            title="An edge cut off from every control plane",
            checks=(
                "`edge1` is partitioned from both replicas (silent drops) while `be2` is "
                "drained, and stays cut off until `edge1` itself notices (gRPC keepalive). "
                "Checked: `edge2` applies the drain; `edge1` cannot (its snapshot version "
                "stays below it) yet keeps answering every request from its last snapshot; "
                "when the partition heals `edge1` reconnects and reaches the new version; no "
                "request failed."
            ),
            load=summarize(records),
            moved_seconds=caught_up,
            moved_meaning="from the link's return until the edge applied the missed snapshot",
            measures={
                "requests through edge1 while cut off": len(cut_window),
                "of which routed by the stale snapshot to the drained be2": stale_routes,
                "edge1 noticed it had lost the control plane after": noticed,
                "cut off for": round(t_heal - t_cut, 3),
            },
            violations=violations,
        )
    )
    assert not violations, violations


def test_edge_restarted_while_cut_off(c: Cluster, results: Results) -> None:
    """An edge restarted with no control plane reachable serves from its persisted snapshot."""
    edge1, cps = c.edge_hosts["edge1"], [c.cps[n].host for n in c.cps]
    version = int(c.readyz("edge1")["snapshot_version"])
    c.net.partition([edge1], cps)
    c.edges["edge1"].kill()
    t_start = time.time()
    c.edges["edge1"].start()

    def ready_from_state() -> dict[str, Any] | None:
        info = c.readyz("edge1")
        return info if info.get("ready") else None

    info = until(ready_from_state, WITHIN, "edge1 ready again")
    ready = round(time.time() - t_start, 3)
    assert info["snapshot_source"] == "state", info
    assert int(info["snapshot_version"]) == version
    with Load(c, "edge-restart", edges=["edge1"]) as load:
        load.wait_serving_all(list(c.backends))
        load.wait_requests_after(t_start, 60)
        assert c.readyz("edge1")["snapshot_source"] == "state"
        t_heal = time.time()
        c.net.heal([edge1], cps)
        reconnected = timed(
            lambda: c.readyz("edge1").get("controlplane_connected") is True,
            "edge1 back on a control plane",
            t_heal,
            within=90,
        )
        load.wait_requests_after(time.time(), 20)
        records = load.stop()

    violations = clients_harmed(records)
    results.add(
        ScenarioResult(
            key="edge-restarted-cut-off",
            title="An edge restarted while cut off",
            checks=(
                "`edge1` is partitioned from both replicas, killed and started again. "
                "Checked: it becomes ready from the snapshot persisted in its state directory "
                "(same version, source `state`) and answers every request through it alone; "
                "when the partition heals it connects to a control plane again."
            ),
            load=summarize(records),
            moved_seconds=ready,
            moved_meaning="from the restart until the edge was ready, with no control plane",
            measures={"reconnected after the partition healed": reconnected},
            violations=violations,
        )
    )
    assert not violations, violations
