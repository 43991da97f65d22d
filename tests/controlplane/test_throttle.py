"""Which agent reports reach the store: changes at once, load only when it matters, rate-bound."""

from __future__ import annotations

from controlplane.leases import lease_of, session_id_of
from controlplane.status_throttle import Action, StatusThrottle
from corral.kv_pressure import KV_LEVELS
from corral.v1 import types_pb2


def _status(
    *,
    health: int = types_pb2.HEALTH_STATE_HEALTHY,
    running: int = 0,
    waiting: int = 0,
    kv: float | None = None,
    models: tuple[str, ...] = ("m",),
) -> types_pb2.BackendStatus:
    status = types_pb2.BackendStatus(
        health=health,  # the enum's int value
        models=[types_pb2.ModelInfo(id=m) for m in models],
    )
    status.load.running = running
    status.load.waiting = waiting
    if kv is not None:
        status.load.kv_cache_usage = kv
    return status


def _written(throttle: StatusThrottle, status: types_pb2.BackendStatus, now: float) -> None:
    assert throttle.offer(status, now) is Action.WRITE
    throttle.mark_written(status, now)


def test_first_status_and_non_load_changes_are_written_at_once() -> None:
    """Health, models and the first status go to the store immediately, however recent."""
    throttle = StatusThrottle(interval=2.0)
    _written(throttle, _status(), 0.0)
    _written(throttle, _status(health=types_pb2.HEALTH_STATE_UNHEALTHY), 0.1)
    _written(throttle, _status(health=types_pb2.HEALTH_STATE_UNHEALTHY, models=("m", "n")), 0.2)


def test_kv_moves_within_a_level_are_not_written() -> None:
    """A KV-cache move that crosses none of the levels routing reads is not worth a write."""
    throttle = StatusThrottle(interval=2.0)
    _written(throttle, _status(kv=0.10), 0.0)
    assert throttle.offer(_status(kv=0.70), 10.0) is Action.SKIP
    assert throttle.offer(_status(kv=0.79), 10.0) is Action.SKIP
    assert throttle.offer(_status(kv=0.81), 10.0) is Action.WRITE


def test_kv_crossing_a_level_is_written_both_ways() -> None:
    """Crossing each of KV_LEVELS, up or down, is written; moves between them are not."""
    throttle = StatusThrottle(interval=0.0)
    _written(throttle, _status(kv=0.5), 0.0)
    now = 1.0
    for level in KV_LEVELS:
        assert throttle.offer(_status(kv=level - 0.001), now) is Action.SKIP
        _written(throttle, _status(kv=level), now)
        now += 1.0
    assert throttle.offer(_status(kv=1.0), now) is Action.SKIP
    _written(throttle, _status(kv=0.5), now)


def test_meaningful_load_is_rate_limited_and_latest_wins() -> None:
    """Queue changes inside the interval are deferred; the newest one is what gets flushed."""
    throttle = StatusThrottle(interval=2.0)
    _written(throttle, _status(), 0.0)
    assert throttle.offer(_status(running=1), 0.5) is Action.DEFER
    assert throttle.offer(_status(running=2), 0.7) is Action.DEFER
    assert throttle.due_at() == 2.0
    assert throttle.pending is not None and throttle.pending.load.running == 2
    # After the interval the next change is written directly.
    throttle.mark_written(throttle.pending, 2.0)
    assert throttle.due_at() is None
    assert throttle.offer(_status(running=3), 4.5) is Action.WRITE


def test_load_back_to_written_value_drops_the_pending_flush() -> None:
    """If load returns to what the store holds, nothing is left to flush."""
    throttle = StatusThrottle(interval=2.0)
    _written(throttle, _status(running=1), 0.0)
    assert throttle.offer(_status(running=5), 0.5) is Action.DEFER
    assert throttle.offer(_status(running=1), 0.6) is Action.SKIP
    assert throttle.due_at() is None


def test_kv_appearing_is_meaningful() -> None:
    """A server that starts reporting KV-cache use is a change worth telling edges."""
    throttle = StatusThrottle(interval=0.0)
    _written(throttle, _status(), 0.0)
    assert throttle.offer(_status(kv=0.0), 1.0) is Action.WRITE


def test_session_ids_round_trip_and_garbage_is_not_a_lease() -> None:
    """Session ids are the lease id in hex; anything else resumes nothing."""
    assert lease_of(session_id_of(0x694D8B2A1C3E)) == 0x694D8B2A1C3E
    assert lease_of("not-hex") is None
    assert lease_of("0") is None
    assert lease_of("f" * 20) is None
