"""The detectors' fast paths (the sieve, and the native prefilter in front of it) find exactly
what the reference scan finds, wherever it sits."""

from __future__ import annotations

import random
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.gateway.guard import detectors, prefilter, sieve
from tests.gateway.corpus import negatives, positives

# Characters that are word characters or digits to the regex engine but not ASCII.
KEYS = [value for kind, value, _ in positives(40) if kind == "api_key"]
UNICODE = ["é", "ß", "²", "\u0663", "\uff14", "中", "\u2019", "—", "😀", "\u00a0", "\x02", "\x03"]


_PREFILTERS: dict[tuple[detectors.Detector, ...], prefilter.Prefilter] = {}


def _same(text: str, chosen: tuple[detectors.Detector, ...] = detectors.DETECTORS) -> None:
    expected = detectors.scan(text, chosen)
    assert sieve.scan(text, chosen) == expected, text
    native = _PREFILTERS.setdefault(chosen, prefilter.Prefilter(chosen))
    assert native.scan(text) == expected, text


def test_same_findings_on_the_corpus() -> None:
    """Every synthetic positive and look-alike negative gets the reference's findings."""
    for _, _, text in positives(300):
        _same(text)
    for text in negatives(3000):
        _same(text)


def test_pii_deep_in_a_long_prompt_is_found() -> None:
    """PII after kilobytes of ordinary prose and numbers is found at its place."""
    rng = random.Random(3)
    prose = " ".join(negatives(60))
    for kind, value, text in positives(60):
        long = f"{prose}\n{text}\n{prose}"
        found = sieve.scan(long)
        start = long.index(value, len(prose))
        assert any(f.kind == kind and f.start == start for f in found), (kind, value)
        assert found == detectors.scan(long)
        _same(prose[: rng.randrange(len(prose))] + value)


def test_unicode_text_gets_the_same_findings() -> None:
    """Curly quotes, CJK, emoji and Unicode digits anywhere change nothing found."""
    rng = random.Random(7)
    texts = [t for _, _, t in positives(200)] + negatives(1000)
    for text in texts:
        chars = list(text)
        for _ in range(3):
            chars.insert(rng.randrange(len(chars) + 1), rng.choice(UNICODE))
        _same("".join(chars))
    fullwidth = "\uff14\uff11\uff11\uff11"  # 4111
    arabic = "\u0663\u0663\u0663-\u0662\u0662-\u0661\u0661\u0661\u0661"  # 333-22-1111
    _same(f"“Mail ana@example.org” — card {fullwidth} 1111 1111 1111, id {arabic} 😀 4111")
    quoted = "\u2019 😀 " * 50 + "4111 1111 1111 1111"
    assert [(f.kind, f.start) for f in sieve.scan(quoted)] == [("credit_card", 200)]


def test_selected_detectors_only() -> None:
    """A subset of detectors gives the reference's findings for that subset."""
    chosen = detectors.select(["iban", "phone", "api_key"])
    for _, _, text in positives(100):
        _same(text, chosen)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789 .()+-:@_aAfZ") + UNICODE), max_size=60))
def test_same_findings_on_digit_and_separator_soup(text: str) -> None:
    """Random runs of digits, separators and Unicode look the same to both scans."""
    _same(text)


@settings(max_examples=200, deadline=None)
@given(st.randoms(use_true_random=False))
def test_same_findings_on_keys_in_soup(rng: random.Random) -> None:
    """API keys cut, glued to words or to Unicode letters: the same findings."""
    keys = KEYS
    glue = ["", "-", "_", "é", " ", "x", "中"]
    text = "".join(rng.choice(glue) + rng.choice(keys)[: rng.randrange(10, 80)] for _ in range(3))
    _same(text)


def test_key_runs_are_never_shorter_than_a_key() -> None:
    """KEY_MIN_LENGTH is the shortest match any provider's key pattern has."""
    shortest, _ = re._parser.parse(detectors._KEY.pattern).getwidth()
    assert shortest == sieve.KEY_MIN_LENGTH


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789abcdefABCDEF:.:: gx")), max_size=60))
def test_same_findings_on_hex_and_colon_soup(text: str) -> None:
    """IPv6-like runs of hex digits, colons and dots look the same to both scans."""
    _same(text)


def test_ipv6_gate_passes_every_accepted_address() -> None:
    """Full, compressed and IPv4-tailed addresses all pass the IPv6 gate and are found."""
    for address in (
        "2001:db8:0:0:1:0:0:1",
        "fe80::1ff:fe23:4567:890a",
        "::ffff:192.0.2.1",
        "1:2:3:4:5:6:1.2.3.4",
    ):
        text = f"host {address} up"
        assert [f.kind for f in sieve.scan(text)] == ["ip_address"], address
        _same(text)
