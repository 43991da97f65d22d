"""The native prefilter: in use, one pattern per detector, exact with or without Hyperscan."""

from __future__ import annotations

import json
import threading

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.gateway.guard import detectors, prefilter, sieve
from tests.gateway.corpus import negatives, positives


def test_hyperscan_is_in_use() -> None:
    """The dependency is installed, so guards scan natively (not the fallback)."""
    assert prefilter.NATIVE
    scanner = prefilter.Prefilter()
    assert scanner.native
    assert scanner.scan("mail ana@example.org") == [detectors.Finding("email", 5, 20)]
    assert scanner.native  # the database compiled on this CPU


def test_every_detector_has_a_pattern() -> None:
    """Each built-in detector has its necessary-condition pattern, and nothing else does."""
    assert set(prefilter.PATTERNS) == set(detectors.NAMES)


def test_each_positive_passes_its_own_pattern() -> None:
    """A lone detector's prefilter finds every synthetic positive of its kind."""
    for name in detectors.NAMES:
        chosen = detectors.select([name])
        scanner = prefilter.Prefilter(chosen)
        kind = chosen[0].kind
        for found_kind, value, text in positives(60):
            if found_kind == kind and detectors.scan(text, chosen):
                assert scanner.scan(text) == detectors.scan(text, chosen), (name, value)


def test_fallback_without_the_native_module_is_exact() -> None:
    """native=False (what a platform without Hyperscan gets) finds what the reference finds."""
    scanner = prefilter.Prefilter(native=False)
    assert not scanner.native
    for _, _, text in positives(200):
        assert scanner.scan(text) == detectors.scan(text), text
    for text in negatives(1000):
        assert scanner.scan(text) == detectors.scan(text), text


def test_threads_scan_at_once() -> None:
    """Scans in several threads at once (each its own scratch space) find the same things."""
    scanner = prefilter.Prefilter()
    texts = [t for _, _, t in positives(100)] + negatives(300)
    expected = [detectors.scan(t) for t in texts]
    start = threading.Barrier(4)
    results: list[list[list[detectors.Finding]]] = []

    def work() -> None:
        start.wait()
        results.append([scanner.scan(t) for t in texts])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 4


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789 .()+-:ab_\u0663中")), max_size=80))
def test_runs_at_every_digit_are_all_the_runs(text: str) -> None:
    """The runs found around every digit are the runs the sieve finds in the whole text."""
    classes = sieve.classes_of(text)
    ends = [i + 1 for i, c in enumerate(classes) if c == ord("0")]
    assert sieve.runs_at(classes, ends) == sieve._digit_runs(classes)


def _json_bodies(text: str) -> list[bytes]:
    """The body a client may send for this prompt: compact or not, escaped or not."""
    message = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return [orjson.dumps(message), json.dumps(message, ensure_ascii=False).encode()]


def test_a_raw_body_with_something_to_find_is_never_clean() -> None:
    """Every body whose prompt has a finding fails the raw-body pass, escapes before it too."""
    scanner = prefilter.Prefilter()
    texts = [t for _, _, t in positives(300)]
    texts += [
        f"{glue}{value}" for _, value, _ in positives(100) for glue in ("\n", '"', "\t", "\\")
    ]
    for text in texts:
        if detectors.scan(text):
            for raw in _json_bodies(text):
                assert not scanner.clean(raw), raw


def test_a_plain_prompt_body_is_clean() -> None:
    """Numbers, times, ids and line breaks without PII: the body is clean in one pass."""
    scanner = prefilter.Prefilter()
    text = "Job 48213 ran at 03:15 UTC,\nbuild 20240301 (v3.12.4);\tid 123456789-4242, code 137."
    assert detectors.scan(text) == []
    assert all(scanner.clean(raw) for raw in _json_bodies(text))
    assert not scanner.clean(b'{"content":"caf\\u00e9"}')  # a \u escape: strings one by one
    assert not scanner.clean(json.dumps({"content": "café"}, ensure_ascii=False).encode())


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from([*'0123456789 .()+-:@_aAfZ\n\t"\\/', "é"]), max_size=60))
def test_raw_body_pass_never_hides_a_finding(text: str) -> None:
    """A body the raw pass calls clean has no finding in its prompt."""
    scanner = _RAW_SCANNER
    for raw in _json_bodies(text):
        if scanner.clean(raw):
            assert detectors.scan(text) == [], (text, raw)


_RAW_SCANNER = prefilter.Prefilter()


def _luhn_complete(partial: str) -> str:
    """The partial number with the check digit that makes it pass Luhn."""
    for last in "0123456789":
        if detectors.luhn_ok(partial + last):
            return partial + last
    raise AssertionError(partial)


def test_cards_of_every_issuer_and_length_pass_the_card_pattern() -> None:
    """Every issuer prefix at 12 to 19 digits: the prefilter finds what the reference finds."""
    # The card pattern asks for each issuer's shortest length.
    scanner = prefilter.Prefilter(detectors.select(["credit_card"]))
    prefixes = ["4", "51", "55", "2221", "2720", "34", "37", "6011", "65", "644", "3528", "300",
                "36", "38", "50", "56", "62", "69"]  # fmt: skip
    found = 0
    for prefix in prefixes:
        for length in range(12, 20):
            number = _luhn_complete(prefix + "0" * (length - len(prefix) - 1))
            grouped = " ".join(number[i : i + 4] for i in range(0, len(number), 4))
            for text in (number, f"card {number}.", f"({grouped})", f"x\n{number}"):
                expected = detectors.scan(text, scanner.detectors)
                found += bool(expected)
                assert scanner.scan(text) == expected, text
                body = orjson.dumps({"content": text})
                assert not (expected and scanner.clean(body)), text
    assert found > 200  # most lengths are some issuer's


def test_the_raw_pass_database_stays_small() -> None:
    """The raw-body database (every request's one pass) stays well under the text one."""
    scanner = prefilter.Prefilter()
    assert scanner.clean(b'{"content":"hello"}')
    text_db, raw_db = scanner._databases
    assert raw_db.size() < 256 * 1024 < text_db.size()
