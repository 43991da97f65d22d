"""Built-in detectors: recall on synthetic PII, false positives on look-alikes, redaction."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.gateway.guard import detectors
from edge.gateway.guard.detectors import iban_ok, luhn_ok, scan
from edge.gateway.guard.redact import Redaction
from tests.gateway.corpus import card, luhn_complete, negatives, positives


def test_recall_is_complete_on_synthetic_positives() -> None:
    """Every generated value of every kind is found whole, with its kind."""
    missed = []
    for kind, value, text in positives(300):
        start = text.index(value)
        found = scan(text)
        if not any(
            f.kind == kind and f.start == start and f.end == start + len(value) for f in found
        ):
            missed.append((kind, value, [(f.kind, text[f.start : f.end]) for f in found]))
    assert not missed, f"{len(missed)} missed, e.g. {missed[:5]}"


def test_false_positives_stay_under_one_percent() -> None:
    """Code, UUIDs, hashes, timestamps, versions and numbers raise at most 1 % alarms."""
    texts = negatives(5000)
    flagged = [(t, [(f.kind, t[f.start : f.end]) for f in scan(t)]) for t in texts]
    flagged = [x for x in flagged if x[1]]
    assert len(flagged) <= len(texts) // 100, f"{len(flagged)} false positives: {flagged[:10]}"


def test_invalid_check_digits_are_not_found() -> None:
    """A card number failing Luhn and an IBAN failing mod-97 are not reported."""
    rng = random.Random(5)
    for _ in range(200):
        good = luhn_complete("4", 16, rng)
        bad = good[:-1] + str((int(good[-1]) + 1) % 10)
        assert luhn_ok(good) and not luhn_ok(bad)
        assert not [f for f in scan(f"card {bad} ok") if f.kind == "credit_card"]
    assert iban_ok("GB82 WEST 1234 5698 7654 32")
    assert not iban_ok("GB83 WEST 1234 5698 7654 32")
    assert not [f for f in scan("GB83WEST12345698765432") if f.kind == "iban"]


def test_detectors_switch_off_one_by_one() -> None:
    """A text with every kind yields only the kinds whose detector is selected."""
    text = "mail a@b.com card 4111 1111 1111 1111 ip 10.1.2.3 ssn 123-45-6789"
    assert {f.kind for f in scan(text)} == {"email", "credit_card", "ip_address", "ssn"}
    chosen = detectors.select(["email", "ssn"])
    assert {f.kind for f in scan(text, chosen)} == {"email", "ssn"}


@settings(max_examples=200, deadline=None)
@given(st.randoms(use_true_random=False), st.text(alphabet="abc xyz.,:-\n", max_size=40))
def test_redaction_round_trip(rng: random.Random, filler: str) -> None:
    """Redacted text holds no original value; restoring gives the original text back."""
    values = [card(rng), f"user{rng.randrange(99)}@example.org", "123-45-6789"]
    text = f" {filler} ".join(["start", *values, "end"])
    redaction = Redaction()
    redacted = redaction.redact(text, scan(text))
    for value in values:
        assert value not in redacted
    assert redaction.restore(redacted) == text


def test_same_value_same_placeholder() -> None:
    """One value repeated gets one placeholder; two values get two, numbered per kind."""
    text = "a@x.org, b@x.org and a@x.org again"
    redaction = Redaction()
    assert redaction.redact(text, scan(text)) == "<EMAIL_1>, <EMAIL_2> and <EMAIL_1> again"


def test_a_card_or_iban_followed_by_a_short_code_is_still_found() -> None:
    """Expiry, CVV or currency after the number: the number alone is the finding."""
    from edge.gateway.guard.prefilter import Prefilter

    cases = {
        "pay with 4111 1111 1111 1111 12/26 thanks": "4111 1111 1111 1111",
        "card 4111111111111111 123": "4111111111111111",
        "5555 5555 5555 4444 07/27": "5555 5555 5555 4444",
        "amex 3782 822463 10005 1234": "3782 822463 10005",
        "IBAN ES9121000418450200051332 EUR": "ES9121000418450200051332",
        "to BE68 5390 0754 7034 EUR today": "BE68 5390 0754 7034",
    }
    prefilter = Prefilter()
    for text, value in cases.items():
        assert [text[f.start : f.end] for f in scan(text)] == [value], text
        assert prefilter.scan(text) == scan(text), text
    # Cut back at spaces only: a dash goes on to more digits, and no group passes.
    assert scan("4111-1111-1111-1111-12") == []
    assert scan("order 4000 1234 5678 9010 5555 shipped") == []


def test_a_north_american_number_with_its_country_code_is_a_phone() -> None:
    """1-800-555-0199 and 1 (800) 555-0199 are found whole, as 800-555-0199 is."""
    for number in ("1-800-555-0199", "1 (800) 555-0199", "800-555-0199"):
        text = f"call {number} now"
        assert [(f.kind, text[f.start : f.end]) for f in scan(text)] == [("phone", number)]


def test_placeholders_of_kinds_with_digits_are_restored() -> None:
    """A hook's kind may hold digits (ssn2): its placeholder comes back like any other."""
    from edge.gateway.guard.detectors import Finding
    from edge.gateway.guard.hooks import _kind

    kind = _kind("SSN-2")
    assert kind == "ssn_2" and _kind("Näme") == "n_me"
    text = "id 12345 here"
    redaction = Redaction()
    redacted = redaction.redact(text, [Finding(kind, 3, 8)])
    assert redacted == "id <SSN_2_1> here" and redaction.restore(redacted) == text
