"""Sending the edge's traffic slices to the control plane (RoutingService.ReportTraffic).

Every interval the current slice is cut and everything not yet acknowledged is sent, oldest
first, in one small unary call to one control-plane address (rotating on failure). Nothing
here is on the request path: a control plane that is slow or gone only makes the queue of
unsent slices longer (bounded, see edge/traffic.py). A report the control plane refuses
(INVALID_ARGUMENT: sent again, it would be refused again) is sent again a slice at a time,
and the slices refused alone are dropped and counted: one bad slice never holds up the rest.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from corral.config import EdgeConfig
from corral.v1 import traffic_pb2
from edge.cp_calls import CallFailed, ControlPlaneChannel, open_channel
from edge.metrics import EdgeMetrics
from edge.traffic import EdgeState

log = logging.getLogger(__name__)

# Slices per call: a catching-up edge sends its backlog in several calls.
BATCH = 60
CALL_TIMEOUT_SECONDS = 5.0
REPORT_METHOD = "/corral.v1.RoutingService/ReportTraffic"
# The status of a report the control plane refuses for what it holds, not for its own state.
REFUSED = "INVALID_ARGUMENT"


class TrafficReporter:
    def __init__(
        self,
        config: EdgeConfig,
        edge_id: str,
        metrics: EdgeMetrics,
        credentials: ssl.SSLContext | None,
        metadata: tuple[tuple[str, str], ...],
        edge_state: Callable[[], EdgeState] | None = None,
    ) -> None:
        self._edge_state = edge_state
        self._config = config
        self._addresses = [a for a in config.controlplane if a]
        self._interval = config.observability.traffic_interval_seconds
        self._listen = config.listen
        self._edge_id = edge_id
        self._metrics = metrics
        self._credentials = credentials
        self._metadata = metadata
        self._incarnation = secrets.token_hex(8)
        self._index = 0
        self._channel: ControlPlaneChannel | None = None
        self.sent = 0

    async def run(self) -> None:
        if not self._addresses or self._interval <= 0:
            return
        self._index = hash(self._edge_id) % len(self._addresses)
        try:
            while True:
                await asyncio.sleep(self._interval)
                state = self._edge_state() if self._edge_state is not None else None
                self._metrics.cut_traffic(state)
                await self.flush()
        finally:
            self.close()

    def close(self) -> None:
        """Close the connection to the control plane (the next report opens another)."""
        if self._channel is not None:
            channel, self._channel = self._channel, None
            channel.close()

    async def flush(self) -> bool:
        """Send what is pending; False when the control plane could not be reached."""
        recorder = self._metrics.traffic
        single = 0  # slices of a refused report still to send one at a time
        dropped = 0
        refusal = ""  # the control plane that refused, and why
        try:
            while recorder.pending:
                batch = list(itertools.islice(recorder.pending, 1 if single else BATCH))
                request = traffic_pb2.ReportTrafficRequest(
                    edge_id=self._edge_id,
                    incarnation=self._incarnation,
                    slices=batch,
                    dropped=recorder.dropped,
                    listen_address=self._listen,
                )
                try:
                    response = await self._connected().unary(
                        REPORT_METHOD,
                        request,
                        traffic_pb2.ReportTrafficResponse,
                        self._metadata,
                        CALL_TIMEOUT_SECONDS,
                    )
                except CallFailed as exc:
                    if exc.code != REFUSED:
                        log.info(
                            "traffic report to %s failed (%s); %d slices kept",
                            self._address(),
                            exc.code,
                            len(recorder.pending),
                        )
                        await self._rotate()
                        return False
                    if len(batch) > 1:
                        single = len(batch)  # which of them is refused? each on its own
                        continue
                    dropped += recorder.refused(batch[0].seq)
                    refusal = f"{self._address()}: {exc.details}"
                    single = max(single - 1, 0)
                    continue
                single = max(single - 1, 0)
                recorder.acknowledge(response.acked_seq)
                self.sent += len(batch)
                if response.acked_seq < batch[-1].seq:
                    return False  # the control plane took less than sent: try next interval
            return True
        finally:
            if dropped:
                log.warning("traffic report refused (%s); %d slices dropped", refusal, dropped)

    def _address(self) -> str:
        return self._addresses[self._index % len(self._addresses)]

    def _connected(self) -> ControlPlaneChannel:
        if self._channel is None:
            self._channel = open_channel(self._address(), self._credentials, self._config)
        return self._channel

    async def _rotate(self) -> None:
        self._index += 1
        self.close()


async def traffic_reports(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: report traffic while the edge serves."""
    from edge.app import BALANCER, CONFIG, EDGE_ID, METRICS
    from edge.subscriber import credentials
    from edge.tasks import owned, supervise

    config = app[CONFIG]
    if (
        not [a for a in config.controlplane if a]
        or config.observability.traffic_interval_seconds <= 0
    ):
        app[METRICS].traffic.enabled = False
        yield
        return
    metadata: tuple[tuple[str, str], ...] = ()
    if config.controlplane_token is not None:
        metadata = (("authorization", f"Bearer {config.controlplane_token.reveal()}"),)
    balancer = app[BALANCER]

    def edge_state() -> EdgeState:
        table = balancer.table
        now = time.monotonic()
        ejected = sorted(n for n, s in balancer.states.items() if s.ejected_until > now)
        if table is None:
            return 0, 0, ejected
        return table.version, table.created_unix_ms, ejected

    reporter = TrafficReporter(
        config, app[EDGE_ID], app[METRICS], credentials(config), metadata, edge_state
    )
    restarts = app[METRICS].task_restarts.labels("traffic").inc
    report = supervise(reporter.run, "traffic reporter", restarts)
    async with owned(report, "edge-traffic-reporter"):
        yield
