"""The control plane failing under load: a replica killed, then its store (etcd) losing its
leader and a member."""

from __future__ import annotations

import time

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


# ------------------------------------------------------------------- control-plane faults


def test_controlplane_replica_killed(c: Cluster, results: Results) -> None:
    """A replica killed: agents and edges move to the other, no backend flaps, no client error."""
    agents = c.admin("cp1", "ListAgents")["agents"]
    on_cp1 = sum(1 for a in agents if a["controlplane_id"] == "cp1")
    victim, survivor = ("cp1", "cp2") if on_cp1 * 2 >= len(agents) else ("cp2", "cp1")
    c.observer.call("POST", "/watch", {"cp": c.cp_addrs[survivor]})
    until(lambda: c.observer.call("GET", "/watch")["snapshots"], WITHIN, "the watch started")

    def all_on_survivor() -> bool:
        agents = c.admin(survivor, "ListAgents")["agents"]
        edges = c.admin(survivor, "ListEdges")["edges"]
        seen = (
            sorted((a["backend_name"], a["controlplane_id"]) for a in agents),
            sorted((e["edge_id"], e["controlplane_id"]) for e in edges if e["edge_id"] in c.edges),
        )
        assert seen == (
            sorted((name, survivor) for name in c.backends),
            sorted((name, survivor) for name in c.edges),
        ), seen
        return True

    with Load(c, "cp-killed") as load:
        load.wait_serving_all(list(c.backends))
        t_kill = time.time()
        c.cps[victim].kill()
        moved = timed(all_on_survivor, f"every agent and edge on {survivor}", t_kill)
        load.wait_requests_after(time.time(), 60)
        records = load.stop()
    watched = c.observer.call("GET", "/watch")["snapshots"]

    # The killed replica comes back and converges: the same snapshot as its peer, version
    # included (versions derive from the store, so an edge can move between replicas). It
    # starts once routing is quiet (no load left to report) and after a write outside routing
    # (a subscriber connecting records its presence), as happens whenever an edge reconnects.
    until(
        lambda: all(b["busy"] == 0 for b in c.snapshot(survivor)["backends"].values()),
        WITHIN,
        "no load left in the snapshot",
    )
    rewatch_ms = time.time() * 1000
    c.observer.call("POST", "/watch", {"cp": c.cp_addrs[survivor]})
    until(
        lambda: any(
            e["edge_id"] == "fault-observer" and int(e["connected_unix_ms"]) >= rewatch_ms
            for e in c.admin(survivor, "ListEdges")["edges"]
        ),
        WITHIN,
        "the observer's new presence recorded",
    )
    c.cps[victim].start()
    c.wait_cp_serving(victim)
    t_restart = time.time()
    violations: list[str] = []
    not_converged = False
    try:
        until(lambda: c.snapshot(victim) == c.snapshot(survivor), WITHIN, "identical snapshots")
    except TimeoutError:
        not_converged = True
        mine, theirs = c.snapshot(victim), c.snapshot(survivor)
        same = "the same" if mine["backends"] == theirs["backends"] else "a different"
        violations.append(
            f"the restarted {victim} serves version {mine['version']} for {same} state "
            f"{survivor} serves as version {theirs['version']}"
        )
    converged = round(time.time() - t_restart, 3)

    violations += clients_harmed(records)
    streams = summarize(records).stream_outcomes
    violations += check(set(streams) <= {"complete"}, f"clients saw stream errors: {streams}")
    flaps = [
        (s["version"], name)
        for s in watched
        for name in c.backends
        if s["backends"].get(name, {}).get("health") != "HEALTH_STATE_HEALTHY"
    ]
    violations += check(not flaps, f"backends flapped in {survivor}'s snapshots: {flaps[:5]}")
    results.add(
        ScenarioResult(
            key="controlplane-killed",
            title="A control-plane replica killed",
            checks=(
                f"`{victim}` (holding most agents) is killed under load. Checked: every agent "
                f"and both edges are listed on `{survivor}`; in every snapshot `{survivor}` "
                "streamed from before the kill to the end, every backend stayed healthy (no "
                "flap: agents resumed their sessions); no request failed, every stream "
                f"completed; restarted, `{victim}` serves the same snapshot as `{survivor}`, "
                "version included."
            ),
            load=summarize(records),
            moved_seconds=moved,
            moved_meaning=f"from the kill until every agent and edge was on {survivor}",
            measures={
                f"snapshots watched on {survivor}": len(watched),
                "backends that flapped": len({n for _, n in flaps}),
                f"restarted {victim} serving the same snapshot as {survivor} after": (
                    None if not_converged else converged
                ),
            },
            violations=violations,
        )
    )
    assert not violations, violations


# ------------------------------------------------------------------------------ etcd faults


def test_etcd_leader_killed_and_minority_partitioned(c: Cluster, results: Results) -> None:
    """etcd loses its leader, then a member's cable: it converges and the drain flag survives."""
    cp = "cp1"
    c.admin(cp, "DrainBackend", {"name": "be3", "reason": "fault suite"})
    until(lambda: c.snapshot(cp)["backends"]["be3"]["drained"], WITHIN, "be3 drained")

    with Load(c, "etcd") as load:
        load.wait_serving_all(["be1", "be2"])
        leader = until(c.etcd_leader, WITHIN, "an etcd leader")
        others = [n for n in c.etcd if n is not leader]
        t_kill = time.time()
        leader.service.kill()
        elected = timed(lambda: c.etcd_leader(others), "a new etcd leader", t_kill)
        c.restart_etcd(leader)
        c.wait_etcd_healthy(leader)

        new_leader = until(c.etcd_leader, WITHIN, "an etcd leader")
        minority = next(n for n in c.etcd if n is not new_leader)
        majority = [n for n in c.etcd if n is not minority]
        t_cut = time.time()
        c.net.link_down(minority.host)
        # The cut member notices (it loses its leader, seen from inside its own host) ...
        noticed = timed(
            lambda: (s := c.etcd_status(minority, via=minority.host)) and s["leader"] == 0,
            f"{minority.name} losing its leader",
            t_cut,
        )
        # ... while the majority keeps a leader and takes writes: the control plane writes the
        # drain flag again through it, so the cut member falls behind.
        until(lambda: c.etcd_leader(majority), WITHIN, "a leader among the majority")
        c.admin(cp, "DrainBackend", {"name": "be3", "reason": "still drained"})
        cut_seconds = round(time.time() - t_cut, 3)
        t_heal = time.time()
        c.net.link_up(minority.host)

        def converged() -> bool:
            statuses = [c.etcd_status(n) for n in c.etcd]
            if any(s is None for s in statuses):
                return False
            leaders = {s["leader"] for s in statuses if s}
            revisions = {s["revision"] for s in statuses if s}
            return len(leaders) == 1 and 0 not in leaders and len(revisions) == 1

        caught_up = timed(
            converged, "all three members on one leader and revision", t_heal, within=60
        )
        load.wait_requests_after(time.time(), 40)
        records = load.stop()

    violations: list[str] = []
    for replica in c.cps:
        backend = c.admin(replica, "GetBackend", {"name": "be3"})["backend"]
        violations += check(
            backend.get("drained") is True, f"{replica} lost the drain flag: {backend}"
        )
        violations += check(
            bool(c.snapshot(replica)["backends"]["be3"]["drained"]),
            f"{replica}'s snapshot lost the drain flag",
        )
    served_be3 = [r for r in records if r["ev"] in ("req", "stream") and r.get("backend") == "be3"]
    violations += check(not served_be3, f"a drained backend got traffic: {served_be3[:3]}")
    violations += clients_harmed(records)
    results.add(
        ScenarioResult(
            key="etcd",
            title="The etcd leader killed, then a minority member partitioned",
            checks=(
                "With `be3` drained, the etcd leader is killed (SIGKILL) and restarted, then "
                "another member's cable is pulled until it has lost its leader, while the control "
                "plane writes through the majority, then plugged back in. Checked: a new leader "
                "is elected; the majority keeps a leader and takes writes; all three "
                "members converge on one leader and revision; both replicas still report "
                "`be3` drained and no request reached it; no request failed."
            ),
            load=summarize(records),
            moved_seconds=elected,
            moved_meaning="from the leader's kill until a new leader was elected",
            measures={
                "cut-off member lost its leader after": noticed,
                "member cut off for (writes went on through the majority)": cut_seconds,
                "cut-off member caught up after its cable returned": caught_up,
                "drain flag kept on both replicas": "no" if violations else "yes",
            },
            violations=violations,
        )
    )
    assert not violations, violations
