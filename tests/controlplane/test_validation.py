"""What the control plane accepts from agents and operators, and the messages it refuses with."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.errors import InvalidArgumentError
from controlplane.validation import check_alias, check_name, check_register
from corral.v1 import agent_pb2, types_pb2


def _register(**spec_fields: object) -> agent_pb2.Register:
    spec = types_pb2.BackendSpec(
        name="gpu-a", url="http://10.0.0.5:8000", type=types_pb2.BACKEND_TYPE_VLLM, weight=1.0
    )
    for field, value in spec_fields.items():
        setattr(spec, field, value)
    return agent_pb2.Register(
        agent_id="host:1",
        backend=spec,
        status=types_pb2.BackendStatus(
            health=types_pb2.HEALTH_STATE_HEALTHY,
            models=[types_pb2.ModelInfo(id="m", loaded=True)],
        ),
    )


def test_a_sane_registration_passes() -> None:
    """A typical vLLM registration (IP URL, weight, labels) is accepted."""
    register = _register(priority=5, max_concurrency=16)
    register.backend.labels["zone"] = "lab"
    check_register(register)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"url": ""}, "backend url is empty"),
        ({"url": "ftp://10.0.0.5/"}, "must start with http:// or https://"),
        ({"url": "10.0.0.5:8000"}, "must start with http:// or https://"),
        ({"url": "http://"}, "has no host"),
        ({"url": "http://:8000"}, "has no host"),
        ({"url": "http://user:pw@10.0.0.5:8000"}, "must not carry credentials"),
        ({"url": "http://10.0.0.5:99999"}, "malformed"),
        ({"url": "http://10.0.0.5:8000/?x=1"}, "query or fragment"),
        ({"url": "http://10.0.0.5:8000/" + "a" * 3000}, "longer than"),
        ({"type": types_pb2.BACKEND_TYPE_UNSPECIFIED}, "type is unspecified"),
        ({"type": 99}, "unknown type"),
        ({"priority": -1}, "priority -1 is outside"),
        ({"priority": 10**9}, "is outside"),
        ({"weight": -0.5}, "weight -0.5 is outside"),
        ({"weight": math.nan}, "weight nan is outside"),
        ({"weight": math.inf}, "is outside"),
        ({"max_concurrency": 2**31}, "max_concurrency"),
        ({"name": ""}, "backend name is empty"),
        ({"name": "x" * 200}, "longer than 128"),
        ({"name": "has space"}, "characters outside"),
        ({"name": "a/b"}, "characters outside"),
        ({"name": "-leading"}, "characters outside"),
        ({"name": "caf\u00e9"}, "characters outside"),
    ],
)
def test_bad_specs_are_refused_with_a_clear_message(
    fields: dict[str, object], message: str
) -> None:
    """Each malformed spec field gives INVALID_ARGUMENT naming the problem."""
    with pytest.raises(InvalidArgumentError, match=message.replace("?", r"\?")):
        check_register(_register(**fields))


def test_too_many_labels_models_and_long_strings_are_refused() -> None:
    """Limits on labels, models, reasons and model ids keep snapshots bounded."""
    register = _register()
    for i in range(65):
        register.backend.labels[f"k{i}"] = "v"
    with pytest.raises(InvalidArgumentError, match="more than 64 labels"):
        check_register(register)

    register = _register()
    register.status.ClearField("models")
    register.status.models.extend(types_pb2.ModelInfo(id=f"m{i}") for i in range(1025))
    with pytest.raises(InvalidArgumentError, match="more than 1024 models"):
        check_register(register)

    register = _register()
    register.status.reason = "r" * 5000
    with pytest.raises(InvalidArgumentError, match="reason is longer than"):
        check_register(register)

    register = _register()
    register.status.models.add(id="m")
    with pytest.raises(InvalidArgumentError, match="listed twice"):
        check_register(register)

    register = _register()
    register.status.load.kv_cache_usage = 1.5
    with pytest.raises(InvalidArgumentError, match="kv_cache_usage"):
        check_register(register)

    register = _register()
    register.agent_id = ""
    with pytest.raises(InvalidArgumentError, match="agent_id is empty"):
        check_register(register)

    register = _register()
    register.agent_id = "bad\nid"
    with pytest.raises(InvalidArgumentError, match="control characters"):
        check_register(register)


def test_registration_without_a_spec_is_refused() -> None:
    """A Register with no backend at all says so."""
    with pytest.raises(InvalidArgumentError, match="no backend spec"):
        check_register(agent_pb2.Register(agent_id="a"))


def test_alias_checks() -> None:
    """Aliases need a name and at least one non-empty target; slashes in names are fine."""
    check_alias(types_pb2.ModelAlias(name="llama-8b", targets=["meta-llama/Llama-3.1-8B"]))
    check_alias(types_pb2.ModelAlias(name="org/model", targets=["llama3.1:8b"]))
    with pytest.raises(InvalidArgumentError, match="no targets"):
        check_alias(types_pb2.ModelAlias(name="x"))
    with pytest.raises(InvalidArgumentError, match="name is empty"):
        check_alias(types_pb2.ModelAlias(targets=["y"]))
    with pytest.raises(InvalidArgumentError, match="empty target"):
        check_alias(types_pb2.ModelAlias(name="x", targets=[""]))


@given(st.text(max_size=200))
def test_any_name_is_accepted_or_refused_cleanly(name: str) -> None:
    """Arbitrary text never crashes the name check: it passes or raises InvalidArgumentError."""
    try:
        check_name(name)
    except InvalidArgumentError as exc:
        assert str(exc)
    else:
        assert 0 < len(name) <= 128 and name.isascii() and " " not in name and "/" not in name
