"""The lease protocol (edge/gateway/limits/store.py) on Valkey/Redis: one Lua script, atomic.

Every key carries the `{corral}` hash tag, so one script's keys share a slot (Redis Cluster).
The set of active edges is a sorted set scored by the server's own TIME (edges' clocks do
not matter for liveness); the store's epoch is a random id set on first use, so an edge sees
a wiped store (a restart without persistence) and re-adds what it had contributed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from edge.gateway.limits.store import Answer, Ask, Leased
from edge.gateway.valkey import Valkey

PREFIX = "{corral}:lim:"
EPOCH_KEY = PREFIX + "epoch"
EDGES_KEY = PREFIX + "edges"
WIPED_KEY = PREFIX + "wiped"

# KEYS: epoch, edges, wiped, then one per counter.
# ARGV: edge id, epoch candidate, liveness seconds, share, settle ms, then 8 per counter:
#   gauge (1/0), limit, want, need, adjust, restore, ttl ms, epoch known.
# Returns: epoch, active edges, settling (1/0), then grant and used per counter.
# Settling: for `settle ms` after the first edge found the store wiped, nothing is granted
# (edges count locally, as when it is down) while every edge puts back what it had counted.
LEASE = """
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
for i = 4, #KEYS do
  local known = ARGV[5 + (i - 4) * 8 + 8]
  if known ~= '' and known ~= epoch then
    redis.call('SET', KEYS[3], '1', 'PX', ARGV[5], 'NX')
  end
end
local settling = redis.call('EXISTS', KEYS[3])
local out = {epoch, edges, settling}
for i = 4, #KEYS do
  local a = 5 + (i - 4) * 8
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
  if gauge then
    if wiped then
      redis.call('HSET', key, edge, restore + adjust)
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
    end
  end
  if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
  out[#out + 1] = grant
  out[#out + 1] = used
end
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
        self._script = store.script(LEASE)

    async def lease(self, edge: str, asks: Sequence[Ask]) -> Leased:
        keys = [EPOCH_KEY, EDGES_KEY, WIPED_KEY]
        # A fresh epoch candidate each call: set as the epoch when the store is empty (new,
        # or restarted without its keys), so it always differs from the one before.
        args: list[object] = [
            edge,
            os.urandom(8).hex(),
            self.liveness,
            self.share,
            int(self.settle * 1000),
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
        out = await self._script(keys, args)
        epoch = out[0].decode() if isinstance(out[0], bytes) else str(out[0])
        answers = [Answer(int(out[i]), int(out[i + 1])) for i in range(3, len(out), 2)]
        return Leased(epoch, int(out[1]), answers, settling=bool(out[2]))

    async def close(self) -> None:
        await self.store.close()
