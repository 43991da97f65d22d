"""A backend process failing under load (killed, hanging, answering 500s) while its agent
stays up: no request fails and traffic moves to the other backends."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.load import Load
from tests.faults.report import Results, ScenarioResult, last_touch, summarize
from tests.faults.scenarios.checks import (
    WITHIN,
    check,
    clients_harmed,
    leaves_routing,
    streams_through,
    timed,
    traffic_not_moved,
)
from tests.faults.services import until
from tests.faults.topology import Cluster

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]


def backend_fault(
    c: Cluster,
    results: Results,
    *,
    key: str,
    title: str,
    backend: str,
    inject: Callable[[], None],
    streams_cut: bool,
) -> None:
    with Load(c, key) as load:
        load.wait_serving_all(list(c.backends))
        if streams_cut:
            until(lambda: load.open_stream_on(backend), WITHIN, f"a stream open on {backend}")
        t_fault = time.time()
        inject()
        routing = timed(leaves_routing(c, backend), f"{backend} leaving routing", t_fault)
        load.wait_requests_after(time.time(), 60)
        records = load.stop()

    violations = clients_harmed(records)
    cut = streams_through(records, backend, t_fault)
    if streams_cut:
        violations += check(bool(cut), f"no stream was open on {backend} when it failed")
        violations += check(
            all(r["outcome"] == "sse_error" for r in cut), f"streams cut uncleanly: {cut[:3]}"
        )
    violations += traffic_not_moved(records, backend)
    load_summary = summarize(records)
    results.add(
        ScenarioResult(
            key=key,
            title=title,
            checks=(
                f"Backend `{backend}` fails under load. Checked: no non-streaming request "
                "failed; every stream ended either complete or with a clean SSE error event"
                + (
                    " (the streams open on it when it died ended with the error event)"
                    if streams_cut
                    else ""
                )
                + "; the last requests went straight to the other backends."
            ),
            load=load_summary,
            moved_seconds=last_touch(records, t_fault, backend),
            moved_meaning="from the fault until the last request that still hit it or was retried",
            measures={
                "routing updated (backend not healthy in the control plane's snapshot)": routing,
                f"streams open on {backend} at the fault": len(cut),
                "requests retried on another backend": sum(
                    1 for r in records if r["ev"] == "req" and r.get("route") == "retry"
                ),
            },
            violations=violations,
        )
    )
    assert not violations, violations


def test_backend_killed(c: Cluster, results: Results) -> None:
    """A backend process killed under load: no failed request, open streams end cleanly."""
    be = c.backends["be1"]
    backend_fault(
        c, results, key="backend-killed", title="A backend killed (SIGKILL)",
        backend="be1", inject=be.fake.kill, streams_cut=True,
    )  # fmt: skip


def test_backend_hanging(c: Cluster, results: Results) -> None:
    """A backend that accepts and never answers: requests time out into retries, none fail."""
    be = c.backends["be2"]
    backend_fault(
        c, results, key="backend-hanging", title="A backend hanging (accepts, never answers)",
        backend="be2", inject=lambda: be.set_mode("hang"), streams_cut=False,
    )  # fmt: skip


def test_backend_returning_500s(c: Cluster, results: Results) -> None:
    """A backend answering 500 to everything: retried elsewhere, none fail."""
    be = c.backends["be3"]
    backend_fault(
        c, results, key="backend-500s", title="A backend returning 500s",
        backend="be3", inject=lambda: be.set_mode("error"), streams_cut=False,
    )  # fmt: skip
