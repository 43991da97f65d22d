"""Built-in PII and secret detectors: regular expressions, then a check that cuts false positives.

Pure and fast: no model, no I/O. Each detector has a name (switchable in the config), the kind
it reports (the placeholder's type), a cheap precondition on the text (a substring that must
be present, so most texts skip most patterns), a pattern and an optional validator (Luhn for
cards, mod-97 for IBANs, the address parsers for IPs, the SSA's rules for SSNs).
"""

from __future__ import annotations

import ipaddress
import re
import string
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Finding:
    """One match: the kind of data and where it is in the scanned text (never the value)."""

    kind: str
    start: int
    end: int


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# Issuer prefixes (IIN ranges) of the networks that issue most cards, and their lengths.
_CARD_PREFIX: Final = re.compile(
    r"4\d{12}(?:\d{3}){0,2}"  # Visa: 13, 16, 19
    r"|(?:5[1-5]\d{2}|222[1-9]|22[3-9]\d|2[3-6]\d{2}|27[01]\d|2720)\d{12}"  # Mastercard
    r"|3[47]\d{13}"  # American Express
    r"|(?:6011|65\d{2}|64[4-9]\d)\d{12,15}"  # Discover
    r"|35(?:2[89]|[3-8]\d)\d{12,15}"  # JCB
    r"|3(?:0[0-5]|[68]\d)\d{11,16}"  # Diners Club
    r"|(?:5[06-9]|6\d)\d{10,17}"  # Maestro, UnionPay and other 5x/6x issuers
)


def _card(text: str) -> bool:
    digits = text.replace(" ", "").replace("-", "")
    return (
        13 <= len(digits) <= 19 and _CARD_PREFIX.fullmatch(digits) is not None and luhn_ok(digits)
    )


# IBAN length per country (ISO 13616 registry).
IBAN_LENGTHS: Final = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_ok(text: str) -> bool:
    """Known country, its length, and the mod-97 check digits."""
    iban = text.replace(" ", "").upper()
    if IBAN_LENGTHS.get(iban[:2]) != len(iban):
        return False
    moved = iban[4:] + iban[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return int(number) % 97 == 1


def _ssn(text: str) -> bool:
    area, group, serial = text[:3], text[4:6], text[7:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _ipv6(text: str) -> bool:
    colons = text.count(":")
    if colons < 7 and "::" not in text and not (colons == 6 and "." in text):
        return False  # too few groups: ipaddress would refuse it, more slowly ("12:34:56")
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    # "::", "a::" or "::2" are valid addresses but mostly slices and scopes in code: ask
    # for at least three groups written out, or a full address.
    return "::" not in text or sum(1 for g in text.split(":") if g) >= 3


def _phone(text: str) -> bool:
    return 8 <= sum(ch.isdigit() for ch in text) <= 15


Span = tuple[int, int]
Finder = Callable[..., list[Span]]  # (text[, pos, endpos]) -> spans


def _left_ok(text: str, start: int, extra: str) -> bool:
    """The match does not continue a word (or a run of `extra` characters) on its left."""
    if start == 0:
        return True
    ch = text[start - 1]
    return not (ch.isalnum() or ch == "_" or ch in extra)


def _regex(
    pattern: str,
    left: str = "",
    valid: Callable[[str], bool] | None = None,
    shorter: bool = False,
) -> Finder:
    """Matches of a pattern that starts with a literal or a character class (so the regex
    engine skips ahead fast; a leading lookbehind would cost a test at every position), the
    left boundary checked per match instead. `shorter`: a match that fails `valid` may be
    cut back at a space to one that passes (a card number's expiry or CVV after it, an
    IBAN's currency: the greedy pattern took them in)."""
    compiled = re.compile(pattern)

    def find(text: str, pos: int = 0, endpos: int = sys.maxsize) -> list[Span]:
        out = []
        for m in compiled.finditer(text, pos, endpos):
            start = m.start()
            if not _left_ok(text, start, left):
                continue
            if valid is None or valid(m.group()):
                out.append((start, m.end()))
            elif shorter and valid is not None:
                cut = _cut_back(m.group(), valid)
                if cut:
                    out.append((start, start + cut))
        return out

    return find


def _cut_back(matched: str, valid: Callable[[str], bool]) -> int:
    """The length of the longest part of `matched` before one of its spaces that is valid
    (0: none is)."""
    end = matched.rfind(" ")
    while end > 0:
        if valid(matched[:end]):
            return end
        end = matched.rfind(" ", 0, end)
    return 0


_EMAIL_DOMAIN: Final = re.compile(
    r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24})(?![\w-])"
)
_EMAIL_LOCAL: Final = frozenset(string.ascii_letters + string.digits + "._%+-")


def _emails(text: str, pos: int = 0, endpos: int = sys.maxsize) -> list[Span]:
    """Found from each `@`: the domain by pattern, the local part walked back."""
    out: list[Span] = []
    for m in _EMAIL_DOMAIN.finditer(text, pos, endpos):
        at = m.start()
        start = at
        while start > 0 and at - start < 64 and text[start - 1] in _EMAIL_LOCAL:
            start -= 1
        while start < at and not text[start].isalnum():
            start += 1
        if start < at and _left_ok(text, start, ".%+-"):
            out.append((start, m.end()))
    return out


_V6_SEED: Final = re.compile(r":[0-9A-Fa-f]{0,4}:")
_V6_RIGHT: Final = re.compile(r"[0-9A-Fa-f:]*(?:\d{1,3}(?:\.\d{1,3}){3})?")
_HEX_COLON: Final = frozenset("0123456789abcdefABCDEF:")


def _ipv6s(text: str, pos: int = 0, endpos: int = sys.maxsize) -> list[Span]:
    """Found from each `:x:` (or `::`): the run of hex digits and colons around it."""
    out: list[Span] = []
    while True:
        m = _V6_SEED.search(text, pos, endpos)
        if m is None:
            return out
        start = m.start()
        while start > 0 and m.start() - start < 40 and text[start - 1] in _HEX_COLON:
            start -= 1
        right = _V6_RIGHT.match(text, m.start(), endpos)
        end = right.end() if right is not None else m.end()
        pos = max(end, m.end())
        after = text[end : end + 1]
        if (
            _left_ok(text, start, ":.")
            and not (after.isalnum() or after == "_")
            and _ipv6(text[start:end])
        ):
            out.append((start, end))


# Where a provider's key may start (a fast search), then the whole key matched from there.
_KEY_SEED: Final = re.compile(
    r"sk-|sk_|rk_|AKIA|ASIA|ABIA|ACCA|gh[pousr]_|github_pat_|AIza|xox[abposr]-|hf_|glpat-"
)
_KEY: Final = re.compile(
    r"(?:"
    r"sk-(?:ant-(?:api|admin)\d\d-|proj-|svcacct-|admin-|or-v1-|corral-)?[A-Za-z0-9_-]{20,}"
    r"|[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{36,255}"
    r"|github_pat_[A-Za-z0-9_]{60,}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|hf_[A-Za-z0-9]{30,}"
    r"|glpat-[A-Za-z0-9_-]{20,}"
    r")(?![\w-])"
)


def _api_keys(text: str, pos: int = 0, endpos: int = sys.maxsize) -> list[Span]:
    out: list[Span] = []
    while True:
        seed = _KEY_SEED.search(text, pos, endpos)
        if seed is None:
            return out
        start = seed.start()
        found = _KEY.match(text, start, endpos)
        if found is not None and _left_ok(text, start, "-"):
            out.append((start, found.end()))
            pos = found.end()
        else:
            pos = start + 1


@dataclass(frozen=True, slots=True)
class Detector:
    name: str  # the switch in the config
    kind: str  # what findings report, and the placeholder's type (upper-cased)
    needle: str  # the text must contain it ("": any text)
    find: Finder
    # Looks only inside runs of digits and separators (found once for every such detector)
    # with at least this many digits (0: looks at the whole text instead) ...
    run_digits: int = 0
    # ... and holding this character ("" any).
    run_needs: str = ""
    # For the fast path (sieve.py), in its class string (digits 0, upper-case letters A):
    # what every match looks like inside its run of digits ...
    run_shape: bytes = b""
    # ... or where a match must start ...
    seek: bytes = b""
    # ... or: matches lie inside runs of the characters API keys are made of.
    key_run: bool = False


# Seven or more digits and separators, starting and ending with a digit: every card, phone,
# SSN and IPv4 address is one. Few texts have many, so the detectors for those search only
# these runs (and a character or two around them), not the whole text.
_DIGIT_RUN: Final = re.compile(r"\d[\d .()+-]{5,}\d")

_B64URL: Final = r"[A-Za-z0-9_-]"

# Order matters: where matches overlap, the earlier detector wins (a card number inside a
# private key block is part of the key; an IBAN's digits are not a phone number).
DETECTORS: Final[tuple[Detector, ...]] = (
    Detector(
        "private_key",
        "private_key",
        "-----BEGIN",
        _regex(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
            r"[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)"
        ),
    ),
    Detector(
        "jwt",
        "jwt",
        "eyJ",
        _regex(rf"eyJ{_B64URL}{{6,}}\.eyJ{_B64URL}{{6,}}\.{_B64URL}*(?![\w-])", "-"),
    ),
    Detector("api_key", "api_key", "", _api_keys, key_run=True),
    Detector("email", "email", "@", _emails),
    Detector(
        "iban",
        "iban",
        "",
        _regex(
            r"[A-Z][A-Z]\d\d(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?!\w)", "", iban_ok, True
        ),
        seek=b"AA00",  # two upper-case letters, two digits
    ),
    Detector(
        "credit_card",
        "credit_card",
        "",
        _regex(r"\d\d[ -]?\d(?:[ -]?\d){10,16}(?![\w]|[.,-]\d)", ".,-", _card, True),
        run_digits=13,
        run_shape=rb"00[ -]?0(?:[ -]?0){10,16}",
    ),
    Detector(
        "ssn",
        "ssn",
        "",
        _regex(r"\d\d\d-\d\d-\d{4}(?![\w]|[.-]\d)", ".-", _ssn),
        run_digits=9,
        run_needs="-",
        run_shape=b"000-00-0000",
    ),
    Detector(
        "phone",
        "phone",
        "",
        _regex(
            # International: +CC then groups; North American: (NXX) NXX-XXXX with separators,
            # maybe after its country code 1 (1-800-555-0199).
            r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){1,2}(?:[ .-]?\d{2,4}){1,4}(?![\w]|[.-]\d)"
            r"|(?:1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[.-])\d{3}[.-]\d{4}(?![\w]|[.-]\d)",
            ".+-",
            _phone,
        ),
        run_digits=8,
        run_shape=rb"\+0|\(000\) ?000[.-]0000|000[.-]000[.-]0000",
    ),
    Detector("ipv6", "ip_address", ":", _ipv6s),
    Detector(
        "ipv4",
        "ip_address",
        "",
        _regex(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\w]|\.\d)", ".", _ipv4),
        run_digits=4,
        run_needs=".",
        run_shape=rb"0\.0(?:0?0)?\.0(?:0?0)?\.0",
    ),
)
NAMES: Final = tuple(d.name for d in DETECTORS)
KINDS: Final = tuple(dict.fromkeys(d.kind for d in DETECTORS))


def select(names: Iterable[str]) -> tuple[Detector, ...]:
    """The detectors with these names, in the built-in order."""
    wanted = set(names)
    unknown = wanted - set(NAMES)
    if unknown:
        raise ValueError(f"unknown detector {sorted(unknown)[0]!r} (known: {', '.join(NAMES)})")
    return tuple(d for d in DETECTORS if d.name in wanted)


def _digit_runs(text: str) -> list[tuple[int, int, int, str]]:
    """Each run: where it is, how many digits it has, its text."""
    out = []
    for m in _DIGIT_RUN.finditer(text):
        run = m.group()
        digits = len(run) - (
            run.count(" ")
            + run.count(".")
            + run.count("-")
            + run.count("(")
            + run.count(")")
            + run.count("+")
        )
        out.append((m.start(), m.end(), digits, run))
    return out


def scan(text: str, detectors: Iterable[Detector] = DETECTORS) -> list[Finding]:
    """Every finding in the text, sorted, overlaps resolved in favour of the earlier detector."""
    taken: list[Finding] = []
    runs: list[tuple[int, int, int, str]] | None = None
    size = len(text)
    for detector in detectors:
        needle = detector.needle
        if needle and needle not in text:
            continue
        if detector.run_digits:
            if runs is None:
                runs = _digit_runs(text)
            least, needs = detector.run_digits, detector.run_needs
            spans: list[Span] = []
            for start, end, digits, run in runs:
                if digits >= least and (not needs or needs in run):
                    # One character before (a "+" or "("), two after (what may not follow).
                    spans.extend(detector.find(text, max(0, start - 1), min(size, end + 2)))
        else:
            spans = detector.find(text)
        if not spans:
            continue
        kind = detector.kind
        for start, end in spans:
            if not taken or not any(start < t.end and t.start < end for t in taken):
                taken.append(Finding(kind, start, end))
    taken.sort(key=lambda f: f.start)
    return taken
