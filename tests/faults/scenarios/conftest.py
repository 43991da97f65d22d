"""Faults across real hosts under steady client load, and what the clients saw.

One topology for the package (tests/faults/topology.py): three etcd members, two control-plane
replicas, two edges, three backends each with its agent, a client host; every component a
real process in its own network namespace. Before each scenario every fault is repaired and
the cluster settles (every backend healthy, both edges up to date). Each scenario records
requests sent, failed and the time until traffic moved (docs/RELIABILITY.md), whose rows
follow the order the scenarios ran in: the modules' alphabetical order, then each module's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import OUTCOME, failed
from tests.faults.report import LoadSummary, Results, ScenarioResult
from tests.faults.services import REPO
from tests.faults.topology import Cluster


@pytest.fixture(scope="package")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    """Scenario results, written at the end as JSON (to $CORRAL_RELIABILITY_JSON, else under
    the pytest temporary directory) and, when CORRAL_WRITE_RELIABILITY=1, to
    docs/RELIABILITY.md."""
    collected = Results()
    yield collected
    path = os.environ.get("CORRAL_RELIABILITY_JSON") or (
        tmp_path_factory.getbasetemp() / "reliability.json"
    )
    collected.write_json(Path(path))
    if os.environ.get("CORRAL_WRITE_RELIABILITY") == "1" and collected.items:
        (REPO / "docs" / "RELIABILITY.md").write_text(collected.render())


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The whole topology, torn down (every process, every namespace) pass or fail."""
    base = tmp_path_factory.mktemp("faults")
    topology = Cluster(base)
    try:
        topology.start()
        yield topology
    except BaseException:
        print(topology.explain())
        raise
    finally:
        topology.stop()


@pytest.fixture
def c(cluster: Cluster, results: Results, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The cluster repaired and settled before the scenario; logs printed if it fails, and a
    row in the report for a scenario that failed before it could record its own."""
    before = len(results.items)
    repair(cluster)
    yield cluster
    if failed(request.node):
        print(cluster.explain())
        if len(results.items) == before:
            results.add(unfinished(request.node))


def unfinished(item: pytest.Item) -> ScenarioResult:
    """The row of a scenario that stopped before recording its figures (a wait ran out, a
    check failed mid-way): its name and the reason, so it cannot vanish from the report."""
    reports = item.stash.get(OUTCOME, {})
    reason = next((r.longreprtext for r in reports.values() if r.failed), "failed")
    last = [line for line in reason.splitlines() if line.startswith("E ")][-1:] or [reason[:300]]
    function = getattr(item, "function", None)
    doc = ((function.__doc__ if function else None) or item.name).strip().splitlines()[0]
    return ScenarioResult(
        key=item.name.removeprefix("test_").replace("_", "-"),
        title=doc,
        checks="The scenario stopped before it could record its figures.",
        load=LoadSummary(0, 0, 0, {}, [], []),
        moved_seconds=None,
        moved_meaning="not measured",
        violations=[f"did not finish: {last[0].removeprefix('E ').strip()}"],
    )


def repair(cluster: Cluster) -> None:
    """Undo whatever an earlier scenario left: cables, partitions, processes, modes, drains."""
    cluster.net.repair()
    for node in cluster.etcd:
        if not node.service.alive():
            cluster.restart_etcd(node)
    for node in cluster.etcd:
        cluster.wait_etcd_healthy(node)
    for name, service in cluster.cps.items():
        if not service.alive():
            service.start()
        cluster.wait_cp_serving(name)
    for backend in cluster.backends.values():
        if not backend.fake.alive():
            backend.start_fake()
        backend.set_mode("ok")
        if not backend.agent.alive():
            backend.agent.start()
    for service in cluster.edges.values():
        if not service.alive():
            service.start()
    cp = cluster.live_cp()
    for name, state in cluster.snapshot(cp)["backends"].items():
        if state["drained"]:
            cluster.admin(cp, "UndrainBackend", {"name": name})
    cluster.wait_settled(within=60)
