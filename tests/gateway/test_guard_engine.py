"""The guard on whole bodies: actions, deny rules, hooks (Python and a Presidio-shaped HTTP
service), and placeholders restored in whole and streamed answers."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from corral.config import GuardConfig, GuardDenyConfig, GuardHookConfig, GuardRuleConfig
from edge.errors import ApiError
from edge.exposition import Registry
from edge.gateway.guard.engine import Guard
from edge.gateway.guard.redact import Redaction, StreamRestorer
from tests.gateway import guard_hooks
from tests.support.net import free_port

CARD = "4111 1111 1111 1111"
MAIL = "jane.doe@example.com"


def chat(*texts: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": t} for t in texts]}


async def test_block_names_kinds_never_values() -> None:
    """block: a 400 listing the kinds and counts, without the data."""
    guard = Guard(GuardConfig(pii="block"))
    with pytest.raises(ApiError) as caught:
        await guard.inspect(chat(f"card {CARD}", f"mail {MAIL} and {MAIL}"))
    err = caught.value
    assert err.status == 400 and err.code == "sensitive_data"
    assert "credit card number (1)" in err.message and "e-mail address (2)" in err.message
    assert CARD not in err.message and MAIL not in err.message


async def test_redact_rewrites_every_dialect() -> None:
    """redact: OpenAI content parts, Anthropic system/tool_result and native prompts."""
    guard = Guard(GuardConfig(pii="redact"))
    openai = {
        "model": "m",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": f"pay with {CARD}"}]},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
             "function": {"name": "send", "arguments": f'{{"to": "{MAIL}"}}'}}]},
        ],
    }  # fmt: skip
    outcome = await guard.inspect(openai)
    assert outcome is not None and outcome.findings == {"credit_card": 1, "email": 1}
    assert openai["messages"][0]["content"][0]["text"] == "pay with <CREDIT_CARD_1>"
    assert "<EMAIL_1>" in openai["messages"][1]["tool_calls"][0]["function"]["arguments"]
    anthropic = {
        "model": "m",
        "system": [{"type": "text", "text": f"user mail {MAIL}"}],
        "messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": "ip 10.0.0.7"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
             "data": "QUJD4111111111111111"}},
        ]}],
    }  # fmt: skip
    before = copy.deepcopy(anthropic)
    await guard.inspect(anthropic)
    assert anthropic["system"][0]["text"] == "user mail <EMAIL_1>"
    assert anthropic["messages"][0]["content"][0]["content"] == "ip <IP_ADDRESS_1>"
    assert anthropic["messages"][0]["content"][1] == before["messages"][0]["content"][1]
    native = {"model": "m", "prompt": "ssn 123-45-6789", "options": {"seed": 4111111111111111}}
    await guard.inspect(native)
    assert native["prompt"] == "ssn <SSN_1>"


async def test_log_flags_without_change_and_off_costs_nothing() -> None:
    """log: counts, body unchanged; off: no outcome."""
    body = chat(f"{MAIL}")
    outcome = await Guard(GuardConfig(pii="log")).inspect(body)
    assert outcome is not None and outcome.findings == {"email": 1} and not outcome.changed
    assert body["messages"][0]["content"] == MAIL
    assert await Guard(GuardConfig()).inspect(chat(MAIL)) is None
    assert not Guard(GuardConfig()).active


async def test_rules_pick_the_action_per_team_key_and_model() -> None:
    """The most specific rule wins: key over team over model; default otherwise."""
    guard = Guard(
        GuardConfig(
            pii="log",
            rules=(
                GuardRuleConfig(team="bank", pii="block"),
                GuardRuleConfig(team="bank", key="ck_1", pii="redact"),
                GuardRuleConfig(model="local-*", pii="off"),
            ),
        )
    )
    assert guard.settings("bank", "", "gpt").pii == "block"
    assert guard.settings("bank", "ck_1", "gpt").pii == "redact"
    assert guard.settings("web", "", "local-llama").pii == "off"
    assert guard.settings("bank", "", "local-llama").pii == "block"
    assert guard.settings("web", "", "gpt").pii == "log"


async def test_deny_rules_block_with_the_operators_message() -> None:
    """A deny pattern refuses the request with its message, any PII setting."""
    guard = Guard(GuardConfig(deny=(GuardDenyConfig(r"\bDROP\s+TABLE\b", message="No SQL."),)))
    with pytest.raises(ApiError) as caught:
        await guard.inspect(chat("please drop  table users"))
    assert caught.value.message == "No SQL." and caught.value.code == "content_denied"
    assert await guard.inspect(chat("drop the table")) is None


async def test_big_bodies_are_scanned_in_a_thread() -> None:
    """Above thread_above_bytes the same findings come back (scanned off the loop)."""
    guard = Guard(GuardConfig(pii="redact", thread_above_bytes=1024))
    body = chat("x " * 4000 + MAIL)
    outcome = await guard.inspect(body)
    assert outcome is not None and outcome.findings == {"email": 1}
    assert body["messages"][0]["content"].endswith("<EMAIL_1>")


async def test_python_hooks_find_block_and_fail_open_or_closed() -> None:
    """A Python hook's findings are redacted; its block refuses; failures follow fail:."""
    finder = GuardHookConfig(python="tests.gateway.guard_hooks:names")
    guard = Guard(GuardConfig(pii="redact", hooks=(finder,)))
    body = chat(f"Zebediah wrote from {MAIL}")
    outcome = await guard.inspect(body, team="t1", model="m")
    assert outcome is not None and outcome.findings == {"person": 1, "email": 1}
    assert body["messages"][0]["content"] == "<PERSON_1> wrote from <EMAIL_1>"
    assert guard_hooks.CALLS[-1]["team"] == "t1"

    refuser = GuardHookConfig(python="tests.gateway.guard_hooks:refuse_secrets")
    with pytest.raises(ApiError) as caught:
        await Guard(GuardConfig(hooks=(refuser,))).inspect(chat("About Project Orion"))
    assert caught.value.status == 400 and caught.value.message == "Project Orion is confidential."

    ticks = 0

    async def ticking() -> None:  # the event loop serving on while a hook runs
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(ticking())
    try:
        for name in ("slow", "broken", "stuck"):  # stuck: a blocking plain function
            spec = f"tests.gateway.guard_hooks:{name}"
            hook = GuardHookConfig(python=spec, timeout_seconds=0.2)
            open_ = Guard(GuardConfig(hooks=(hook,)))
            outcome = await open_.inspect(chat("hello"))
            assert outcome is not None and outcome.hook_failed, name
            closed = Guard(GuardConfig(hooks=(dataclasses.replace(hook, fail="closed"),)))
            with pytest.raises(ApiError) as caught:
                await closed.inspect(chat("hello"))
            assert caught.value.status == 503 and caught.value.code == "guardrail_unavailable"
        assert ticks >= 10  # the stuck hooks' 0.4 s did not hold the loop
    finally:
        guard_hooks.RELEASE.set()
        ticker.cancel()


@pytest.fixture
async def presidio() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A Presidio analyzer speaking its /analyze API: PERSON for capitalised "Ada Lovelace"."""
    seen: list[dict[str, Any]] = []

    async def analyze(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        text = body["text"]
        results = []
        at = text.find("Ada Lovelace")
        if at >= 0:
            results.append({"entity_type": "PERSON", "start": at, "end": at + 12, "score": 0.85})
        at = text.find("London")
        if at >= 0:
            results.append({"entity_type": "LOCATION", "start": at, "end": at + 6, "score": 0.3})
        return web.json_response(results)

    async def verdict(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        if any("launch codes" in t for t in body["texts"]):
            return web.json_response({"block": "Launch codes stay home."})
        findings = [
            {"index": i, "start": t.find("Hal"), "end": t.find("Hal") + 3, "kind": "robot"}
            for i, t in enumerate(body["texts"])
            if "Hal" in t
        ]
        return web.json_response({"block": None, "findings": findings})

    app = web.Application()
    app.router.add_post("/analyze", analyze)
    app.router.add_post("/verdict", verdict)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_presidio_hook_over_http(presidio: tuple[str, list[dict[str, Any]]]) -> None:
    """Presidio results above the score threshold are redacted like built-in findings."""
    url, seen = presidio
    async with aiohttp.ClientSession() as session:
        hook = GuardHookConfig(url=url, format="presidio")
        guard = Guard(GuardConfig(pii="redact", hooks=(hook,)), session=lambda: session)
        body = chat("Ada Lovelace lives in London")
        outcome = await guard.inspect(body)
        assert outcome is not None and outcome.findings == {"person": 1}
        assert body["messages"][0]["content"] == "<PERSON_1> lives in London"
        assert seen[-1] == {"text": "Ada Lovelace lives in London", "language": "en"}
        own = GuardHookConfig(url=f"{url}/verdict")  # Corral's own verdict format
        guard = Guard(GuardConfig(pii="redact", hooks=(own,)), session=lambda: session)
        body = chat("Hal opens the doors")
        outcome = await guard.inspect(body, team="t", model="m")
        assert outcome is not None and outcome.findings == {"robot": 1}
        assert body["messages"][0]["content"] == "<ROBOT_1> opens the doors"
        assert seen[-1]["context"] == {"team": "t", "key": "", "model": "m", "endpoint": ""}
        with pytest.raises(ApiError) as blocked:
            await guard.inspect(chat("the launch codes"))
        assert blocked.value.message == "Launch codes stay home."
        down = GuardHookConfig(url="http://127.0.0.1:9/", format="presidio", fail="closed")
        with pytest.raises(ApiError):
            await Guard(GuardConfig(hooks=(down,)), session=lambda: session).inspect(chat("x"))


def _redaction() -> Redaction:
    r = Redaction()
    r.placeholder("email", MAIL)
    r.placeholder("credit_card", CARD)
    return r


def _sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def _openai_text(stream: bytes) -> str:
    out = []
    for line in stream.split(b"\n"):
        if line.startswith(b"data: {"):
            for choice in orjson.loads(line[6:])["choices"]:
                out.append(choice.get("delta", {}).get("content") or "")
    return "".join(out)


@pytest.mark.parametrize("cut", [1, 3, 7, 11, 64])
def test_stream_restore_across_event_and_chunk_borders(cut: int) -> None:
    """Placeholders split over deltas and over TCP chunks come back whole."""
    pieces = ["Write to <EM", "AIL_1", "> or charge <", "CREDIT_CARD_1> now <", "3"]
    events = [{"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
              for p in pieces]  # fmt: skip
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    raw = _sse(*events)
    restorer = StreamRestorer(_redaction())
    out = b"".join(restorer.feed(raw[i : i + cut]) for i in range(0, len(raw), cut))
    out += restorer.flush()
    assert _openai_text(out) == f"Write to {MAIL} or charge {CARD} now <3"
    assert out.endswith(b"data: [DONE]\n\n")


def test_stream_restore_anthropic_events() -> None:
    """A held piece goes out as a text delta before content_block_stop."""
    restorer = StreamRestorer(_redaction())

    def ev(name: str, data: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def text(value: str) -> dict[str, str]:
        return {"type": "text_delta", "text": value}

    delta = {"type": "content_block_delta", "index": 0}
    raw = (
        ev("content_block_start", {"type": "content_block_start", "index": 0,
           "content_block": {"type": "text", "text": ""}})
        + ev("content_block_delta", {**delta, "delta": text("mail <EMAIL")})
        + ev("content_block_delta", {**delta, "delta": text("_1> ok <EMAIL")})
        + ev("content_block_stop", {"type": "content_block_stop", "index": 0})
    )  # fmt: skip
    out = restorer.feed(raw) + restorer.flush()
    text = ""
    for block in out.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                data = orjson.loads(line[6:])
                if data["type"] == "content_block_delta":
                    text += data["delta"]["text"]
    assert text == f"mail {MAIL} ok <EMAIL"
    assert out.rstrip().endswith(b'"type":"content_block_stop","index":0}')


def _ndjson(*lines: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def test_ollama_stream_restores_tool_arguments() -> None:
    """An Ollama tool call's arguments (an object) come back restored in every string."""
    call = {"function": {"name": "send_mail", "arguments": {
        "to": "<EMAIL_1>", "body": "card <CREDIT_CARD_1> <", "cc": ["<EMAIL_1>"]}}}  # fmt: skip
    raw = _ndjson(
        {"model": "m", "message": {"role": "assistant", "content": "", "tool_calls": [call]},
         "done": False},
        {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True},
    )  # fmt: skip
    restorer = StreamRestorer(_redaction())
    out = restorer.feed(raw) + restorer.flush()
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert len(lines) == 2 and lines[1]["done"] is True
    arguments = lines[0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert arguments == {"to": MAIL, "body": f"card {CARD} <", "cc": [MAIL]}


@pytest.mark.parametrize(
    ("line", "held"),
    [
        ({"model": "m", "response": "Mail <EMAIL_1> or <", "done": False},
         {"model": "m", "response": "<", "done": False}),
        ({"model": "m", "message": {"role": "assistant", "content": "Mail <EMAIL_1> or <EM"},
          "done": False},
         {"model": "m", "message": {"role": "assistant", "content": "<EM"}, "done": False}),
    ],
)  # fmt: skip
def test_ollama_stream_cut_with_held_text_ends_in_ndjson(
    line: dict[str, Any], held: dict[str, Any]
) -> None:
    """Text held when an Ollama stream ends without done goes out as an Ollama line."""
    restorer = StreamRestorer(_redaction())
    out = restorer.feed(_ndjson(line)) + restorer.flush()
    lines = [orjson.loads(one) for one in out.splitlines()]
    assert MAIL in orjson.dumps(lines[0]).decode()
    assert lines[1:] == [held] and out.endswith(b"\n")


def test_whole_answer_restore_handles_escaped_brackets() -> None:
    """Go servers write < as \\u003c: placeholders are still found and restored."""
    data = b'{"message":{"content":"hi \\u003cEMAIL_1\\u003e, not <EMAIL_9>"}}'
    restored = orjson.loads(_redaction().restore_json(data))
    assert restored["message"]["content"] == f"hi {MAIL}, not <EMAIL_9>"


async def test_thinking_blocks_sent_back_are_redacted_as_the_model_wrote_them() -> None:
    """A thinking block restored in an answer and sent back is redacted to its signed text."""
    guard = Guard(GuardConfig(pii="redact"))
    signed = "The user wrote <EMAIL_1>; reply there."
    opaque = "EuYBCkQYAiJA" + MAIL  # encrypted: never text, even when it looks like some
    body = {
        "model": "m",
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [
            {"role": "user", "content": f"mail {MAIL}"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": signed.replace("<EMAIL_1>", MAIL),
                 "signature": "sig-" + MAIL},
                {"type": "redacted_thinking", "data": opaque},
                {"type": "text", "text": "ok"},
            ]},
            {"role": "user", "content": "again"},
        ],
    }  # fmt: skip
    outcome = await guard.inspect(body)
    assert outcome is not None and outcome.findings == {"email": 2}
    blocks = body["messages"][1]["content"]
    assert blocks[0] == {"type": "thinking", "thinking": signed, "signature": "sig-" + MAIL}
    assert blocks[1]["data"] == opaque
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}


async def test_a_hook_url_s_credentials_stay_out_of_metrics_and_errors() -> None:
    """A hook named by its URL is named without the URL's user, password or query."""
    registry = Registry()
    url = f"http://guard:s3cr3t@127.0.0.1:{free_port()}/check?api_key=AKIA-SECRET"
    hook = GuardHookConfig(url=url, fail="closed", timeout_seconds=2)
    async with aiohttp.ClientSession() as http:
        guard = Guard(GuardConfig(hooks=(hook,)), registry=registry, session=lambda: http)
        with pytest.raises(ApiError) as caught:
            await guard.inspect(chat("hello"))
    exposed = registry.render().decode() + caught.value.message
    assert 'hook="http://127.0.0.1:' in exposed
    assert "s3cr3t" not in exposed and "AKIA" not in exposed
