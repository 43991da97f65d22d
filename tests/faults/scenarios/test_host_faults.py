"""A backend's whole host failing: its cable pulled, the agent and the backend cut off
together; the backend leaves routing within the lease TTL."""

from __future__ import annotations

import time

import pytest

from tests.faults.load import Load
from tests.faults.report import Results, ScenarioResult, last_touch, summarize
from tests.faults.scenarios.checks import (
    LEAVE_SLACK,
    WITHIN,
    check,
    clients_harmed,
    healthy_in_snapshot,
    leaves_routing,
    streams_through,
    timed,
)
from tests.faults.services import until
from tests.faults.topology import Cluster

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]


def test_agent_host_cut_off(c: Cluster, results: Results) -> None:
    """A backend host's cable pulled: it leaves routing within the lease TTL, returns after."""
    be = c.backends["be3"]
    with Load(c, "agent-cut") as load:
        load.wait_serving_all(list(c.backends))
        until(lambda: load.open_stream_on("be3"), WITHIN, "a stream open on be3")
        t_cut = time.time()
        c.net.link_down(be.host)
        left = timed(leaves_routing(c, "be3"), "be3 leaving routing", t_cut,
                     within=c.lease_ttl + WITHIN)  # fmt: skip
        load.wait_requests_after(time.time(), 40)
        t_up = time.time()
        c.net.link_up(be.host)
        back = timed(healthy_in_snapshot(c, "be3"), "be3 back in routing", t_up, within=60)
        t_back = time.time()
        until(
            lambda: any(r["ok"] and r.get("backend") == "be3" for r in load.requests(since=t_back)),
            WITHIN,
            "be3 serving again",
        )
        served_again = round(time.time() - t_up, 3)
        records = load.stop()

    violations = clients_harmed(records)
    cut = streams_through(records, "be3", t_cut)
    violations += check(
        all(r["outcome"] == "sse_error" for r in cut), f"streams cut uncleanly: {cut[:3]}"
    )
    # "Leaves routing within the lease TTL", checked after the figures are recorded. The slack
    # covers etcd's expiry check (every 500 ms), the snapshot reaching the replica and the poll.
    # A replica that keeps the lease alive until it declares the stream silent (here after
    # max(2 x heartbeat, TTL) = 3 s) and only then lets it expire takes silence + TTL: at
    # least 4 s and typically 5-6 s after the cut.
    if left > c.lease_ttl + LEAVE_SLACK:
        violations.append(
            f"be3 left routing {left:.2f} s after its host was cut off; the lease TTL is "
            f"{c.lease_ttl:g} s"
        )
    results.add(
        ScenarioResult(
            key="agent-host-cut-off",
            title="An agent's host cut off (cable pulled)",
            checks=(
                "The host of `be3` and its agent loses its cable under load. Checked: `be3` "
                "leaves the control plane's snapshot within the lease TTL "
                f"({c.lease_ttl:g} s, plus {LEAVE_SLACK:g} s for etcd's expiry check and "
                "propagation); no request "
                "failed (requests caught on the dead link timed out into retries); streams "
                "open on it ended with a clean SSE error; when the cable returns the agent "
                "registers again and `be3` serves traffic again."
            ),
            load=summarize(records),
            moved_seconds=last_touch(records, t_cut, "be3"),
            moved_meaning="from the cut until the last request that still hit be3 or was retried",
            measures={
                "backend left routing after the cut": left,
                "backend healthy in routing after the cable returned": back,
                "backend serving client traffic again after the cable returned": served_again,
                "streams open on be3 at the cut": len(cut),
            },
            violations=violations,
        )
    )
    assert not violations, violations
