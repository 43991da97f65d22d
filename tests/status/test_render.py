"""`corral status` rendering alone: text columns line up and say what is missing, unknown enum
numbers are shown, an empty cluster, JSON as protobuf JSON.
"""

from __future__ import annotations

import json

from corral.status import ClusterStatus, render_json, render_text
from corral.v1 import admin_pb2, types_pb2


def _backend(
    name: str,
    *,
    health: int = types_pb2.HEALTH_STATE_HEALTHY,
    models: tuple[str, ...] = ("m",),
    kv: float | None = None,
    reason: str = "",
    drained: bool = False,
) -> types_pb2.Backend:
    load = types_pb2.BackendLoad(running=1, waiting=0)
    if kv is not None:
        load.kv_cache_usage = kv
    return types_pb2.Backend(
        spec=types_pb2.BackendSpec(
            name=name, url="http://10.0.0.1:8000", type=types_pb2.BACKEND_TYPE_OLLAMA
        ),
        status=types_pb2.BackendStatus(
            health=health,
            reason=reason,
            models=[types_pb2.ModelInfo(id=m, loaded=(m == "m1")) for m in models],
            load=load,
        ),
        drained=drained,
        agent_id="agent-1",
    )


def test_render_text_columns_line_up_and_say_what_is_missing() -> None:
    """Columns align under their headers; absent values show '-', long model lists fold."""
    status = ClusterStatus(
        version=42,
        backends=(
            _backend("a-long-backend-name", models=("m1", "m2", "m3", "m4", "m5"), kv=0.25),
            _backend(
                "b",
                health=types_pb2.HEALTH_STATE_UNHEALTHY,
                models=(),
                reason="probe /: connection refused",
                drained=True,
            ),
        ),
        edges=(),
    )
    text = render_text(status)
    lines = text.splitlines()
    assert lines[0] == "snapshot version 42"
    header = next(line for line in lines if line.startswith("NAME"))
    row_a = next(line for line in lines if line.startswith("a-long-backend-name"))
    row_b = next(line for line in lines if line.startswith("b "))
    state_col = header.index("STATE")
    assert row_a[state_col:].startswith("healthy")
    assert row_b[state_col:].startswith("unhealthy")
    assert "m1*, m2, m3 +2" in row_a  # the loaded model is starred; the rest are counted
    assert "1/0/25%" in row_a
    assert "1/0/-" in row_b  # no KV-cache figure from this server
    assert row_b[header.index("DRAINED") :].startswith("yes")
    assert "  b: probe /: connection refused" in lines  # why b is down
    assert "  (* loaded in memory now)" in lines
    assert "(no edges connected)" in text


def test_render_text_shows_unknown_enum_numbers() -> None:
    """A state or type this client does not know (a newer control plane) shows as its number."""
    backend = _backend("n", health=99)
    backend.spec.type = 42
    row = next(
        line
        for line in render_text(
            ClusterStatus(version=1, backends=(backend,), edges=())
        ).splitlines()
        if line.startswith("n ")
    )
    assert row.split()[1:3] == ["42", "99"]


def test_render_text_with_nothing_registered() -> None:
    """An empty cluster says so instead of printing bare headers."""
    text = render_text(ClusterStatus(version=0, backends=(), edges=()))
    assert "(no backends registered)" in text
    assert "loaded in memory" not in text
    assert "(no edges connected)" in text


def test_render_json_is_protobuf_json() -> None:
    """--json output parses back into the proto messages it came from."""
    backend = _backend("x", kv=0.5)
    edge = admin_pb2.EdgeInfo(edge_id="e1", listen_address="0.0.0.0:7700", applied_version=9)
    doc = json.loads(render_json(ClusterStatus(version=9, backends=(backend,), edges=(edge,))))
    assert doc["version"] == 9
    from google.protobuf import json_format

    assert json_format.ParseDict(doc["backends"][0], types_pb2.Backend()) == backend
    assert json_format.ParseDict(doc["edges"][0], admin_pb2.EdgeInfo()) == edge
