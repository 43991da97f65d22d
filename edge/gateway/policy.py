"""Following the gateway policy (teams, keys, prices) from the control plane.

One PolicyService.WatchPolicy stream at a time, rotating over the control-plane addresses on
failure (a stream that brings nothing within FIRST_REPLY_SECONDS among them), like the
snapshot subscriber. Every policy received replaces the key table whole
(one assignment: requests never see half a policy) and is persisted beside the snapshot, so
a restarted edge enforces the keys it knew even with every control plane gone. An edge that
has a control plane to ask but no policy yet refuses unknown keys with 503 rather than serve
open; a control plane too old to have PolicyService means no keys from it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web
from google.protobuf.message import DecodeError

from corral.config import EdgeConfig
from corral.v1 import gateway_pb2
from edge.cp_calls import CallFailed, open_channel
from edge.state import write_atomically
from edge.subscriber import FIRST_REPLY_SECONDS, auth_metadata, credentials, rotate

log = logging.getLogger(__name__)

FILE_NAME = "policy.pb"
WATCH_METHOD = "/corral.v1.PolicyService/WatchPolicy"
# How long a starting edge with no persisted policy waits for the control plane's before it
# serves (refusing unknown keys with 503 until the policy comes).
FIRST_POLICY_WAIT_SECONDS = 5.0

PolicyListener = Callable[[gateway_pb2.Policy], Awaitable[None]]


def save_policy(state_dir: str, policy: gateway_pb2.Policy) -> None:
    """Atomically (temporary file, fsync, rename), readable by this user only: it holds key
    digests, not secrets, but nobody else needs them."""
    path = Path(state_dir) / FILE_NAME
    try:
        write_atomically(path, policy.SerializeToString(), mode=0o600)
    except OSError as exc:
        log.warning("cannot persist the policy to %s: %s", path, exc.strerror)


def load_policy(state_dir: str) -> gateway_pb2.Policy | None:
    """The persisted policy; None when there is none or it is unreadable (said in the log)."""
    path = Path(state_dir) / FILE_NAME
    try:
        return gateway_pb2.Policy.FromString(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, DecodeError) as exc:
        log.warning("ignoring the persisted policy %s: %s", path, exc)
        return None


class PolicySubscriber:
    """Feeds every policy from the control plane to on_policy, forever."""

    def __init__(
        self,
        config: EdgeConfig,
        edge_id: str,
        *,
        current: Callable[[], tuple[int, str]],
        on_policy: PolicyListener,
        rng: random.Random | None = None,
        first_reply_within: float = FIRST_REPLY_SECONDS,
    ) -> None:
        self._config = config
        self._edge_id = edge_id
        self._current = current
        self._on_policy = on_policy
        self._rng = rng or random.Random()
        self._first_reply_within = first_reply_within
        self._credentials = credentials(config)
        self._metadata = auth_metadata(config)

    async def run(self) -> None:
        await rotate(self._config, self._follow, self._rng)

    async def _follow(self, address: str) -> bool:
        """Stream from one address until it fails; True when it delivered anything."""
        received = False
        channel = open_channel(address, self._credentials, self._config)
        try:
            version, cluster_id = self._current()
            request = gateway_pb2.WatchPolicyRequest(
                edge_id=self._edge_id, last_applied_version=version, cluster_id=cluster_id
            )
            replies = channel.stream(
                WATCH_METHOD,
                request,
                gateway_pb2.WatchPolicyResponse,
                self._metadata,
                first_within=self._first_reply_within,
            )
            async for response in replies:
                received = True
                await self._apply(response.policy)
        except CallFailed as exc:
            if exc.code == "UNIMPLEMENTED" and self._current() == (0, ""):
                # A control plane from before policies: it has no keys to give. Only for an
                # edge that holds none: one replica of an upgrade under way (or anything
                # answering 404, which grpclib reads as UNIMPLEMENTED) must not wipe the
                # keys the edge holds and open it to everyone.
                await self._apply(gateway_pb2.Policy())
            log.warning("policy stream from %s failed: %s %s", address, exc.code, exc.details)
        finally:
            channel.close()
        return received

    async def _apply(self, policy: gateway_pb2.Policy) -> None:
        """One policy to on_policy; a failure to apply it is logged and the stream goes on
        (the next policy carries the whole state again), as the snapshot subscriber does,
        rather than ending the subscriber unseen."""
        try:
            await self._on_policy(policy)
        except Exception:
            log.exception("could not apply policy %d; waiting for the next", policy.version)


def apply_prices(config: EdgeConfig, recorder: object, policy: gateway_pb2.Policy) -> None:
    """The policy's prices over the shipped table and edge.usage.prices, into the usage
    recorder (replaced whole; an edge without usage records has nothing to price)."""
    if not hasattr(recorder, "prices"):
        return
    from edge.gateway.prices import Price
    from edge.gateway.usage import price_table

    recorder.prices = price_table(config.usage).with_prices(
        (
            p.model,
            Price(
                p.input_per_mtok,
                p.cached_input_per_mtok
                if p.HasField("cached_input_per_mtok")
                else p.input_per_mtok,
                p.output_per_mtok,
            ),
        )
        for p in policy.prices
    )


async def follow_policy(app: web.Application) -> AsyncIterator[None]:
    """The edge's cleanup context keeping its key table and prices in step with the policy."""
    from edge.appstate import CONFIG, EDGE_ID, METRICS, PROXY
    from edge.gateway.limits.gate import apply_policy
    from edge.gateway.pipeline import apply_policy as apply_content
    from edge.tasks import owned, supervise

    config = app[CONFIG]
    proxy = app[PROXY]
    keys = proxy.keys
    state_dir = config.state_dir
    persisted = await asyncio.to_thread(load_policy, state_dir) if state_dir else None

    def apply(policy: gateway_pb2.Policy) -> None:
        keys.apply(policy)
        apply_policy(app, policy)
        apply_content(app, policy)
        apply_prices(config, proxy.recorder, policy)

    if persisted is not None:
        apply(persisted)
        log.info("applied the persisted policy %d (%d keys)", persisted.version, len(keys))
    elif any(config.controlplane):
        keys.wait_for_policy()
    applied = (persisted.version, persisted.cluster_id) if persisted else (0, "")
    first = asyncio.Event()

    async def on_policy(policy: gateway_pb2.Policy) -> None:
        nonlocal applied
        if policy.cluster_id == applied[1] and 0 < policy.version < applied[0]:
            log.warning("refused policy %d: older than %d", policy.version, applied[0])
            return
        apply(policy)
        first.set()
        applied = (policy.version, policy.cluster_id)
        log.info("applied policy %d (%d keys)", policy.version, len(keys))
        if state_dir:
            await asyncio.to_thread(save_policy, state_dir, policy)

    subscriber = PolicySubscriber(
        config, app[EDGE_ID], current=lambda: applied, on_policy=on_policy
    )
    restarts = app[METRICS].task_restarts.labels("policy").inc
    follow = supervise(subscriber.run, "policy subscriber", restarts)
    async with owned(follow, "edge-policy-subscriber"):
        if keys.pending:
            try:
                async with asyncio.timeout(FIRST_POLICY_WAIT_SECONDS):
                    await first.wait()
            except TimeoutError:
                log.warning(
                    "no policy from the control plane within %gs; serving, but only the "
                    "static api_keys until it comes (other keys get 503)",
                    FIRST_POLICY_WAIT_SECONDS,
                )
        yield
