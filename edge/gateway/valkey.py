"""The edge's shared Valkey/Redis client: short timeouts, a health state, self-healing.

One `Valkey` per URL per process, shared by every gateway feature that keeps state there
(rate-limit counters, the response cache). Callers pass an operation on the maintained
`redis` asyncio client to `call()`; whatever goes wrong below — refused connection, timeout,
a server error, a dropped socket — comes out as one `StoreError`, here and nowhere else.

Never hang a request on it: every operation runs under a short deadline, and once the store
has failed, calls fail at once (no connect attempt, no timeout to wait out) until a retry
time; the first caller after it probes again (half-open), so it recovers by itself without a
background task. Lua scripts are sent by hash and reloaded after a restart wiped them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from corral.backoff import Backoff
from edge.errors import EdgeError

if TYPE_CHECKING:  # redis is imported by the first Valkey (~9 MiB an edge without one saves)
    import redis.asyncio as aioredis

log = logging.getLogger(__name__)

T = TypeVar("T")


class StoreError(EdgeError):
    """The shared store could not be reached or refused an operation (the message says)."""


class Valkey:
    """A client for one Valkey/Redis URL; `healthy` is False from a failure until a success."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.25,
        retry_base: float = 0.1,
        retry_cap: float = 2.0,
        max_connections: int = 64,
    ) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError, ResponseError

        self.url = url
        self.timeout = timeout
        self._refused = ResponseError
        # Everything a command can raise short of cancellation.
        self._foreign = (RedisError, OSError, TimeoutError, ValueError)
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One attempt: retrying here would stack timeouts on a request; the half-open
            # state below decides when to try again.
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
            max_connections=max_connections,
        )
        self._backoff = Backoff(base=retry_base, cap=retry_cap, first=retry_base / 2)
        self.healthy = True
        self._retry_at = 0.0
        self._down_since = 0.0
        self.round_trips = 0  # operations sent to the server
        self.errors = 0  # operations that failed there (fast refusals not counted)
        self.last_error = ""

    async def call(self, op: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run one operation (a command, pipeline or script) under the deadline."""
        now = time.monotonic()
        if not self.healthy:
            if now < self._retry_at:
                raise StoreError(
                    f"the counter store {self._where()} is unreachable "
                    f"({now - self._down_since:.1f}s: {self.last_error})"
                )
            # Half-open: this caller probes; the others keep failing fast until it returns.
            self._retry_at = now + self._backoff.next()
        self.round_trips += 1
        try:
            async with asyncio.timeout(self.timeout * 2):
                result = await op(self._client)
        except self._refused as exc:
            # The server answered: reachable, so no change of health; the operation was bad.
            self.errors += 1
            raise StoreError(f"the counter store refused an operation: {_describe(exc)}") from None
        except self._foreign as exc:
            self._failed(exc)
            where = self._where()
            raise StoreError(f"the counter store {where} failed: {self.last_error}") from None
        if not self.healthy:
            log.info("counter store %s reachable again", self._where())
            self.healthy = True
            self._backoff.reset()
        return result

    def script(self, lua: str) -> Script:
        """A Lua script to run atomically with `await script(keys, args)`."""
        return Script(self, lua)

    async def ping(self) -> bool:
        """True when the server answers now (a failure marks it unhealthy, as any call)."""
        try:
            return bool(await self.call(lambda r: r.ping()))
        except StoreError:
            return False

    async def close(self) -> None:
        with contextlib.suppress(*self._foreign):
            await self._client.aclose()

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = _describe(exc)
        now = time.monotonic()
        if self.healthy:
            log.warning("counter store %s failed: %s", self._where(), self.last_error)
            self.healthy = False
            self._down_since = now
            self._retry_at = now + self._backoff.next()

    def _where(self) -> str:
        # The URL without credentials: it may carry a password.
        try:
            pool_kwargs = self._client.connection_pool.connection_kwargs
            return f"{pool_kwargs.get('host', '?')}:{pool_kwargs.get('port', '?')}"
        except AttributeError:  # pragma: no cover - unix socket pools
            return "(valkey)"


class Script:
    """A Lua script sent by its hash (EVALSHA), loaded again when the server lost it."""

    def __init__(self, store: Valkey, lua: str) -> None:
        self.store = store
        self.lua = lua
        self._script: Any = None

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        def run(client: aioredis.Redis) -> Awaitable[Any]:
            if self._script is None:
                self._script = client.register_script(self.lua)
            return self._script(keys=list(keys), args=list(args))  # type: ignore[no-any-return]

        return await self.store.call(run)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
