"""OpenAI chat SSE streams translated to Anthropic stream events (edge/anthropic/): the SSE
parser across read boundaries, the event sequences for text, parallel tool calls, thinking,
edge cases and failures; and any chunk stream, read in any sizes, rebuilt by the SDK's own
accumulator into the right Message.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.anthropic import (
    SSEMessage,
    SSEParser,
    StreamTranslator,
    overloaded_error,
)
from tests.edge.anthropic_support import (
    EVENTS,
    MODEL,
    TEXT_CHUNKS,
    TOOL_CHUNKS,
    chunk,
    parse_events,
    sse_bytes,
    usage_chunk,
)


def translate_stream(chunks: list[dict[str, Any]], **kwargs: Any) -> bytes:
    translator = StreamTranslator(model=MODEL, message_id="msg_test", **kwargs)
    out = translator.feed_bytes(sse_bytes(chunks))
    assert translator.done
    return out


# -- SSE parsing and stream translation ----------------------------------------------------------


SAMPLE_STREAM = (
    b": keep-alive comment\r\n"
    b'event: first\r\ndata: {"a": "\xc3\xa9\xe2\x82\xac"}\r\n\r\n'
    b"data: line one\ndata:line two\n\n"
    b"data: [DONE]\r\r"
)


SAMPLE_EVENTS = [
    SSEMessage("first", '{"a": "é€"}'),
    SSEMessage(None, "line one\nline two"),
    SSEMessage(None, "[DONE]"),
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(SAMPLE_STREAM)), max_size=12))
def test_sse_parser_is_independent_of_read_boundaries(cuts: list[int]) -> None:
    """Any split of a stream into reads (mid-line, mid-CRLF, mid-UTF-8) yields the same events."""
    points = sorted(set(cuts))
    pieces = [
        SAMPLE_STREAM[a:b] for a, b in zip([0, *points], [*points, len(SAMPLE_STREAM)], strict=True)
    ]
    parser = SSEParser()
    events = [event for piece in pieces for event in parser.feed(piece)]
    events += parser.close()
    assert events == SAMPLE_EVENTS


def test_sse_parser_close_dispatches_an_unterminated_event() -> None:
    """A stream that ends without its final blank line still yields its last event."""
    parser = SSEParser()
    assert parser.feed(b"data: {}\n\ndata: tail") == [SSEMessage(None, "{}")]
    assert parser.close() == [SSEMessage(None, "tail")]


def test_sse_parser_reads_a_large_event_and_split_line_ends() -> None:
    """A 16 MiB event in 64 KiB reads, and a CRLF cut by reads (an empty one between)."""
    big = "é" * (8 * 1024 * 1024)  # two bytes a character: odd-sized reads cut characters
    raw = b"event: big\r\ndata: " + big.encode() + b"\rdata: tail\n\n"
    parser = SSEParser()
    size = 64 * 1024 + 1
    events = [e for at in range(0, len(raw), size) for e in parser.feed(raw[at : at + size])]
    assert events == [SSEMessage("big", big + "\ntail")]
    parser = SSEParser()
    pieces = [b"data: a\r", b"", b"\ndata: b\r", b"\r"]
    assert [e for piece in pieces for e in parser.feed(piece)] == [SSEMessage(None, "a\nb")]


def test_text_stream_event_sequence() -> None:
    """Text chunks become message_start, one text block of deltas, message_delta, message_stop."""
    events = parse_events(translate_stream(TEXT_CHUNKS, input_tokens=9))
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["id"] == "msg_test" and start["model"] == MODEL
    assert start["usage"] == {"input_tokens": 9, "output_tokens": 0}
    assert start["content"] == [] and start["stop_reason"] is None
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert [e["delta"]["text"] for _, e in events[2:5]] == ["Hello", ", wörld", "!"]
    assert events[6][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"input_tokens": 12, "output_tokens": 4},
    }


def test_tool_call_stream_event_sequence() -> None:
    """Tool-call fragments become tool_use blocks fed by input_json_delta, one block at a time."""
    events = parse_events(translate_stream(TOOL_CHUNKS))
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",  # 0 text
        "content_block_delta",
        "content_block_stop",
        "content_block_start",  # 1 get_weather
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",  # 2 get_time
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[4][1]["content_block"] == {
        "type": "tool_use",
        "id": "call_a",
        "name": "get_weather",
        "input": {},
    }
    fragments = [
        e["delta"]["partial_json"] for _, e in events if e.get("index") == 1 and "delta" in e
    ]
    assert json.loads("".join(fragments)) == {"city": "Paris", "days": 2}
    assert all(e["delta"]["type"] == "input_json_delta" for _, e in events[5:7])
    assert events[8][1]["content_block"]["name"] == "get_time"
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert events[-2][1]["usage"] == {"input_tokens": 40, "output_tokens": 25}


def test_stream_edge_cases() -> None:
    """Names after fragments, index-less whole calls, stop sequences and missing usage."""
    late_name = [
        chunk({"tool_calls": [{"index": 0, "id": "call_x", "function": {"arguments": '{"q"'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"name": "search", "arguments": ":1}"}}]}),
        chunk({}, "tool_calls"),
    ]
    events = parse_events(translate_stream(late_name))
    assert events[1][1]["content_block"]["id"] == "call_x"
    assert events[1][1]["content_block"]["name"] == "search"
    assert events[2][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"q":1}'}
    # Ollama-style: whole calls without index, finished with "stop".
    whole = [
        chunk(
            {
                "tool_calls": [
                    {"id": "c1", "function": {"name": "a", "arguments": '{"x":1}'}},
                    {"id": "c2", "function": {"name": "b", "arguments": {"y": 2}}},
                ]
            }
        ),
        chunk({}, "stop"),
    ]
    events = parse_events(translate_stream(whole))
    starts = [e["content_block"] for n, e in events if n == "content_block_start"]
    assert [(s["id"], s["name"]) for s in starts] == [("c1", "a"), ("c2", "b")]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    # No usage from the backend: output tokens are estimated (13 chars -> 4), never zero.
    stopped = [chunk({"content": "Hello, world!"}), chunk({}, "stop", stop_reason="END")]
    events = parse_events(translate_stream(stopped, stop_sequences=["END"]))
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    assert events[-2][1]["usage"] == {"output_tokens": 4}


def test_stream_calls_reusing_one_index_stay_apart() -> None:
    """Whole calls that all say index 0 (Ollama) become separate tool_use blocks."""
    from anthropic.lib.streaming._messages import accumulate_event  # the SDK's own accumulator

    def whole(call_id: str | None, path: str) -> dict[str, Any]:
        call: dict[str, Any] = {"index": 0, "type": "function"}
        if call_id is not None:
            call["id"] = call_id
        arguments = json.dumps({"filePath": path})
        return chunk(
            {"tool_calls": [{**call, "function": {"name": "write", "arguments": arguments}}]}
        )

    for first, second in (("call_a", "call_b"), (None, None)):
        chunks = [whole(first, "hello.py"), whole(second, "world.py"), chunk({}, "tool_calls")]
        snapshot = None
        json_bufs: dict[int, bytes] = {}
        for _, payload in parse_events(translate_stream(chunks)):
            event = EVENTS.validate_python(payload)
            snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
        assert snapshot is not None
        assert [(b.type, getattr(b, "input", None)) for b in snapshot.content] == [
            ("tool_use", {"filePath": "hello.py"}),
            ("tool_use", {"filePath": "world.py"}),
        ]
        if first is not None:
            assert [getattr(b, "id", None) for b in snapshot.content] == [first, second]
    # The same id again, even with its name repeated, is still the one call.
    repeated = [
        chunk(
            {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{"}}]}
        ),
        chunk(
            {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "}"}}]}
        ),
        chunk({}, "tool_calls"),
    ]
    events = parse_events(translate_stream(repeated))
    assert [n for n, _ in events].count("content_block_start") == 1


def test_stream_failures() -> None:
    """In-stream errors end with an error event; an unfinished upstream is detectable."""
    translator = StreamTranslator(model=MODEL)
    out = translator.feed_bytes(sse_bytes([chunk({"content": "par"})], done=False))
    out += translator.feed_bytes(b'data: {"error": {"message": "CUDA out of memory"}}\n\n')
    assert translator.done
    assert translator.feed_bytes(sse_bytes([chunk({"content": "more"})])) == b""
    events = parse_events(out)
    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "CUDA out of memory"}},
    )
    # The upstream stopped mid-answer: no finish_reason, so the edge reports an error.
    cut = StreamTranslator(model=MODEL)
    cut.feed_bytes(sse_bytes([chunk({"content": "par"})], done=False))
    assert cut.feed_end() == b""
    assert not cut.saw_finish_reason and not cut.done
    assert parse_events(cut.error(overloaded_error("backend went away")))[0][0] == "error"
    # A finish_reason but no [DONE]: feed_end closes the message.
    no_done = StreamTranslator(model=MODEL)
    no_done.feed_bytes(sse_bytes([chunk({"content": "ok"}, "stop")], done=False))
    assert [n for n, _ in parse_events(no_done.feed_end())] == ["message_delta", "message_stop"]
    garbage = StreamTranslator(model=MODEL)
    assert parse_events(garbage.feed_bytes(b"data: {nope\n\n"))[-1][0] == "error"


def test_stream_thinking_block() -> None:
    """Reasoning deltas become a thinking block before the text when thinking was asked for."""
    chunks = [
        chunk({"reasoning_content": "Let me "}),
        chunk({"reasoning_content": "think."}),
        chunk({"content": "Done."}),
        chunk({}, "stop"),
    ]
    events = parse_events(translate_stream(chunks, thinking=True))
    assert events[1][1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert events[2][1]["delta"] == {"type": "thinking_delta", "thinking": "Let me "}
    assert events[5][1]["content_block"] == {"type": "text", "text": ""}
    events = parse_events(translate_stream(chunks))
    assert [e["content_block"]["type"] for n, e in events if n == "content_block_start"] == ["text"]


# -- any chunk stream, any read split: the SDK's accumulator rebuilds the answer ----------------


_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


_args = st.dictionaries(
    st.text(alphabet="abcxyz", min_size=1, max_size=4),
    st.one_of(st.integers(-5, 5), _text, st.booleans()),
    max_size=3,
)


_segments = st.lists(
    st.one_of(
        st.tuples(st.just("text"), _text.filter(bool)),
        st.tuples(st.just("tool"), st.text(alphabet="fgh_", min_size=1, max_size=6), _args),
    ),
    min_size=1,
    max_size=5,
)


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if text[a:b]]


@settings(max_examples=150, deadline=None)
@given(_segments, st.lists(st.integers(0, 200), max_size=6), st.integers(1, 97))
def test_any_stream_accumulates_to_the_same_message(
    segments: list[tuple[Any, ...]], cuts: list[int], read_size: int
) -> None:
    """Random text and tool-call fragments, read in any sizes, rebuild into the right Message."""
    from anthropic.lib.streaming._messages import accumulate_event  # the SDK's own accumulator

    chunks = [chunk({"role": "assistant", "content": ""})]
    expected: list[Any] = []
    tool_index = 0
    for segment in segments:
        if segment[0] == "text":
            for piece in _split(segment[1], cuts):
                chunks.append(chunk({"content": piece}))
            if expected and expected[-1][0] == "text":
                expected[-1] = ("text", expected[-1][1] + segment[1])
            else:
                expected.append(("text", segment[1]))
        else:
            _, name, arguments = segment
            encoded = json.dumps(arguments)
            call_id = f"call_{tool_index}"
            head = {"index": tool_index, "id": call_id, "type": "function"}
            chunks.append(chunk({"tool_calls": [{**head, "function": {"name": name}}]}))
            for piece in _split(encoded, cuts):
                fragment = {"index": tool_index, "function": {"arguments": piece}}
                chunks.append(chunk({"tool_calls": [fragment]}))
            expected.append(("tool_use", call_id, name, arguments))
            tool_index += 1
    chunks += [chunk({}, "tool_calls" if tool_index else "stop"), usage_chunk(3, 5)]
    raw = sse_bytes(chunks)

    translator = StreamTranslator(model=MODEL)
    out = bytearray()
    for offset in range(0, len(raw), read_size):
        out += translator.feed_bytes(raw[offset : offset + read_size])
    out += translator.feed_end()
    assert translator.done

    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for name, payload in parse_events(bytes(out)):
        assert name != "error"
        event = EVENTS.validate_python(payload)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    got = [
        ("text", b.text) if b.type == "text" else ("tool_use", b.id, b.name, b.input)
        for b in snapshot.content
    ]
    assert got == expected
    assert snapshot.stop_reason == ("tool_use" if tool_index else "end_turn")
    assert (snapshot.usage.input_tokens, snapshot.usage.output_tokens) == (3, 5)
