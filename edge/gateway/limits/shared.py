"""The lease protocol (edge/gateway/limits/store.py) on Valkey/Redis: one Lua script, atomic.

Every key carries the `{corral}` hash tag, so one script's keys share a slot (Redis Cluster).
The set of active edges is a sorted set scored by the server's own TIME (edges' clocks do
not matter for liveness); the store's epoch is a random id set on first use, so an edge sees
a wiped store (a restart without persistence) and re-adds what it had contributed.

A call whose answer never came (its deadline passed, the connection dropped, the caller was
cancelled) may still have run there: the edge counts it as never made (it fails open or
closed, and sends its returns and debts again), so its next call makes the store agree. Each
call leaves a record of what it added under a key of its own; the next call undoes a lost
call that ran, and marks one not run yet as given up, so that it changes nothing if it
arrives. Without that, what it granted was counted and never used (for max_parallel, a slot
held for the edge's life) and what it gave back or owed was counted twice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edge.gateway.limits.store import Answer, Ask, Leased
from edge.gateway.valkey import Valkey

if TYPE_CHECKING:
    import redis.asyncio as aioredis

PREFIX = "{corral}:lim:"
EPOCH_KEY = PREFIX + "epoch"
EDGES_KEY = PREFIX + "edges"
WIPED_KEY = PREFIX + "wiped"
CALL_PREFIX = PREFIX + "call:"

# How long a call's record is kept (it is deleted by the edge's next call once answered): a
# call whose answer never came is put right by a later call within this long.
RECORD_SECONDS = 600.0
# Lost calls remembered at most (a long outage: each probe that timed out is one).
_LOST_KEPT = 256

# KEYS: epoch, edges, wiped, this call's record, the counters, then for each lost call its
#   record and its counters' keys, then the records of answered calls (to delete).
# ARGV: edge id, epoch candidate, liveness seconds, share, settle ms, record ms, counters,
#   lost calls, then 8 per counter: gauge (1/0), limit, want, need, adjust, restore, ttl ms,
#   epoch known; then 2 per lost call: its edge id and its number of counters.
# Returns: epoch, active edges, settling (1/0), then grant and used per counter (nothing for
# a call given up). A record is one "<c|g><added>" per counter: what the call added to the
# counter (a gauge: to the edge's own field), undone if the edge never read the answer.
# Settling: for `settle ms` after the first edge found the store wiped, nothing is granted
# (edges count locally, as when it is down) while every edge puts back what it had counted.
LEASE = """
if redis.call('EXISTS', KEYS[4]) == 1 then
  return {}
end
local record_ms = ARGV[6]
local counters = tonumber(ARGV[7])
local k = 5 + counters
local o = 9 + counters * 8
for _ = 1, tonumber(ARGV[8]) do
  local owner = ARGV[o]
  local size = tonumber(ARGV[o + 1])
  local done = redis.call('GET', KEYS[k])
  if done ~= 'gone' then
    if done then
      local j = k
      for kind, added in string.gmatch(done, '(%a)(%-?%d+)') do
        j = j + 1
        local back = string.format('%d', -tonumber(added))
        if kind == 'g' then
          if redis.call('HEXISTS', KEYS[j], owner) == 1 then
            redis.call('HINCRBY', KEYS[j], owner, back)
          end
        elseif redis.call('EXISTS', KEYS[j]) == 1 then
          redis.call('INCRBY', KEYS[j], back)
        end
      end
    end
    redis.call('SET', KEYS[k], 'gone', 'PX', record_ms)
  end
  k = k + 1 + size
  o = o + 2
end
for i = k, #KEYS do
  redis.call('DEL', KEYS[i])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[1], epoch)
end
local edge = ARGV[1]
local live = tonumber(ARGV[3])
local share = tonumber(ARGV[4])
redis.call('ZADD', KEYS[2], now, edge)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - live)
redis.call('PEXPIRE', KEYS[2], math.floor(live * 2000))
local alive = redis.call('ZRANGE', KEYS[2], 0, -1)
local edges = #alive
local last = 4 + counters
for i = 5, last do
  local known = ARGV[8 + (i - 5) * 8 + 8]
  if known ~= '' and known ~= epoch then
    redis.call('SET', KEYS[3], '1', 'PX', ARGV[5], 'NX')
  end
end
local settling = redis.call('EXISTS', KEYS[3])
local out = {epoch, edges, settling}
local record = {}
for i = 5, last do
  local a = 8 + (i - 5) * 8
  local gauge = ARGV[a + 1] == '1'
  local limit = tonumber(ARGV[a + 2])
  local want = tonumber(ARGV[a + 3])
  local need = tonumber(ARGV[a + 4])
  local adjust = tonumber(ARGV[a + 5])
  local restore = tonumber(ARGV[a + 6])
  local ttl = tonumber(ARGV[a + 7])
  local known = ARGV[a + 8]
  local key = KEYS[i]
  local wiped = known ~= '' and known ~= epoch
  local used = 0
  local added = adjust
  if gauge then
    if wiped then
      redis.call('HSET', key, edge, restore + adjust)
      added = restore + adjust
    elseif adjust ~= 0 then
      redis.call('HINCRBY', key, edge, adjust)
    end
    local is_live = {}
    for _, e in ipairs(alive) do is_live[e] = true end
    local held = redis.call('HGETALL', key)
    for j = 1, #held, 2 do
      if is_live[held[j]] then
        used = used + tonumber(held[j + 1])
      else
        redis.call('HDEL', key, held[j])
      end
    end
  else
    local add = adjust
    if wiped then add = add + restore end
    added = add
    if add ~= 0 then
      used = redis.call('INCRBY', key, add)
    else
      used = tonumber(redis.call('GET', key) or '0')
    end
  end
  local grant = 0
  local remaining = limit - used
  if settling == 0 and want > 0 and remaining > 0 and remaining >= need then
    local part = math.floor(remaining / (share * math.max(1, edges)))
    grant = math.min(math.max(need, math.min(want, part)), remaining)
    if grant > 0 then
      if gauge then
        redis.call('HINCRBY', key, edge, grant)
      else
        redis.call('INCRBY', key, grant)
      end
      used = used + grant
      added = added + grant
    end
  end
  if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
  out[#out + 1] = grant
  out[#out + 1] = used
  record[#record + 1] = string.format(gauge and 'g%d' or 'c%d', added)
end
redis.call('SET', KEYS[4], table.concat(record, ' '), 'PX', record_ms)
return out
"""


class SharedCounters:
    """Counters every edge shares, on one Valkey/Redis (through the edge's shared client)."""

    shared = True

    def __init__(
        self, store: Valkey, *, share: float = 4.0, liveness: float = 10.0, settle: float = 3.0
    ) -> None:
        self.store = store
        self.share = share
        self.liveness = liveness
        self.settle = settle
        self._script: Any = None  # the LEASE script, registered with the client on first use
        # Calls whose answers never came: (record key, edge id, counter keys), put right by
        # the next call; and records of answered calls, for the next call to delete.
        self._lost: list[tuple[str, str, list[str]]] = []
        self._answered: list[str] = []

    async def lease(self, edge: str, asks: Sequence[Ask]) -> Leased:
        record = CALL_PREFIX + os.urandom(8).hex()
        lost, self._lost = self._lost, []
        answered, self._answered = self._answered, []
        keys = [EPOCH_KEY, EDGES_KEY, WIPED_KEY, record]
        # A fresh epoch candidate each call: set as the epoch when the store is empty (new,
        # or restarted without its keys), so it always differs from the one before.
        args: list[object] = [
            edge,
            os.urandom(8).hex(),
            self.liveness,
            self.share,
            int(self.settle * 1000),
            int(RECORD_SECONDS * 1000),
            len(asks),
            len(lost),
        ]
        for ask in asks:
            keys.append(ask.key)
            args += [
                1 if ask.gauge else 0,
                ask.limit,
                ask.want,
                ask.need,
                ask.adjust,
                ask.restore,
                ask.ttl_ms,
                ask.epoch,
            ]
        for lost_record, lost_edge, counted in lost:
            keys += [lost_record, *counted]
            args += [lost_edge, len(counted)]
        keys += answered
        sent = False

        def run(client: aioredis.Redis) -> Any:
            nonlocal sent
            sent = True  # from here on the server may run it, whatever the edge hears back
            if self._script is None:
                self._script = client.register_script(LEASE)
            return self._script(keys=keys, args=args)

        try:
            out = await self.store.call(run)
        except BaseException:
            # Unknown whether it ran (nor the lost calls it carried): the next call sees.
            self._lost += lost
            if sent and len(self._lost) < _LOST_KEPT:
                self._lost.append((record, edge, [ask.key for ask in asks]))
            self._answered += answered
            raise
        self._answered.append(record)
        epoch = out[0].decode() if isinstance(out[0], bytes) else str(out[0])
        answers = [Answer(int(out[i]), int(out[i + 1])) for i in range(3, len(out), 2)]
        return Leased(epoch, int(out[1]), answers, settling=bool(out[2]))

    @property
    def unanswered(self) -> int:
        """Calls whose answers never came, not yet put right."""
        return len(self._lost)

    async def close(self) -> None:
        await self.store.close()
