"""The detectors' fast path: where in a text each one could match, found at C speed.

A regular expression that starts with a character class (a digit, an upper-case letter, any
of a dozen key prefixes) tests every position of the text: ~4 µs per KiB each, and ~25 µs
per KiB for all of them, though most prompts hold no PII at all. Here the text is mapped
once, with `bytes.translate`, to a class string of the same length (every digit becomes `0`,
upper-case letters `A`, lower-case `a`, separators stay, anything else `#`), and a second
one where the characters an API key is made of become `w`. Searches for literals in those
(which the regex engine and `bytes.find` do with memchr-like loops) find the few places
where a detector could match, and each detector runs there only: its own pattern and
validator, so the findings are exactly `detectors.scan`'s (tests compare the two).

Characters beyond Latin-1 (curly quotes, dashes, CJK, emoji) are classed one by one by an
encoding error handler: a Unicode digit counts as a digit, a letter as a letter, so no
match of `\\d` or `\\w` is lost to the mapping.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Sequence
from typing import Final

from edge.gateway.guard.detectors import DETECTORS, Detector, Finder, Finding, Span

# What the error handler writes for a character beyond Latin-1 (real control characters
# with these codes are classed the same way: a few more places to look, never fewer).
DIGIT_MARK: Final = "\x02"
_ALNUM_MARK: Final = "\x03"
_OTHER_MARK: Final = "\x01"
HANDLER: Final = "corral-guard-class"


def _mark(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    run = error.object[error.start : error.end]
    marks = "".join(
        DIGIT_MARK if ch.isdecimal() else _ALNUM_MARK if ch.isalnum() else _OTHER_MARK for ch in run
    )
    return marks, error.end


codecs.register_error(HANDLER, _mark)


def _classes() -> bytes:
    table = bytearray(b"#" * 256)
    for code in range(256):
        ch = chr(code)
        if ch.isascii():
            if ch.isdigit():
                table[code] = ord("0")
            elif ch.isupper():
                table[code] = ord("A")
            elif ch.islower():
                table[code] = ord("a")
            elif ch in " .()+-_:@%":
                table[code] = code
        elif ch.isalnum():  # Latin-1 letters (é, ß, ª): word characters, never \d
            table[code] = ord("u")
    table[ord(DIGIT_MARK)] = ord("0")
    table[ord(_ALNUM_MARK)] = ord("u")
    return bytes(table)


def _key_chars() -> bytes:
    """`w` for the characters API keys are written with ([A-Za-z0-9_-], and `\\d`)."""
    table = bytearray(b" " * 256)
    for ch in b"0Aa_-":
        table[ch] = ord("w")
    return bytes(table)


CLASSES: Final = _classes()
KEY_CHARS: Final = _key_chars()

# A run of digits and separators as detectors._DIGIT_RUN finds it, in the class string:
# starting with a literal, so the engine jumps from digit to digit.
_DIGIT_RUN: Final = re.compile(rb"0[0 .()+-]{5,}0")
# The shortest API key any provider's pattern accepts (xox?- and ten characters; a test
# checks it against detectors._KEY).
KEY_MIN_LENGTH: Final = 15
_KEY_RUN: Final = b"w" * KEY_MIN_LENGTH

# Gates: per detector, a test of the text and its class string that holds wherever the
# detector can match (a necessary condition); a detector whose gate fails is not run. Each
# is a memchr for a rare character or a search for a pattern that starts with a literal
# (which the regex engine skips to fast): a prompt with numbers, times and ids in it, but
# no PII, passes none of them and never computes its digit runs.
Gate = Callable[[str, bytes], object]


def _literal(pattern: bytes | str) -> Callable[..., object]:
    return re.compile(pattern).search


# An IPv6 address that _ipv6 accepts has "::", or 7 colons (6 before a dotted quad) with 1
# to 4 hex digits between each two: times ("12:34:56") and "key: value" lines have neither.
_IPV6: Final = _literal(r"::|:(?:[0-9A-Fa-f]{1,4}:){5}")
# A card's 13 to 19 digits, spaces and dashes between them made digits too: 13 in a row.
_SEPARATORS_AS_DIGITS: Final = bytes.maketrans(b" -", b"00")
_CARD: Final = _literal(b"0" * 13)
_SSN: Final = _literal(rb"000-00-0000")
_PHONE_PLUS: Final = _literal(rb"\+0")  # +CC
_PHONE_PARENS: Final = _literal(rb"\(000\)")  # (NXX)
_PHONE_PLAIN: Final = _literal(rb"000[.-]000[.-]0000")  # NXX-NXX-XXXX
_IPV4: Final = _literal(rb"0\.0(?:0?0)?\.0(?:0?0)?\.0")  # from the first octet's last digit


def _gate_ipv6(text: str, _classes: bytes) -> bool:
    return ":" in text and _IPV6(text) is not None


def _gate_jwt(text: str, _classes: bytes) -> bool:
    return "J" in text and "eyJ" in text  # memchr for a rare letter first


def _gate_card(_text: str, classes: bytes) -> bool:
    return _CARD(classes.translate(_SEPARATORS_AS_DIGITS)) is not None


def _gate_ssn(text: str, classes: bytes) -> bool:
    return "-" in text and _SSN(classes) is not None


def _gate_phone(text: str, classes: bytes) -> bool:
    return (
        ("+" in text and _PHONE_PLUS(classes) is not None)
        or ("(" in text and _PHONE_PARENS(classes) is not None)
        or _PHONE_PLAIN(classes) is not None
    )


def _gate_ipv4(text: str, classes: bytes) -> bool:
    return "." in text and _IPV4(classes) is not None


_GATES: Final[dict[str, Gate]] = {
    "ipv6": _gate_ipv6,
    "jwt": _gate_jwt,
    "credit_card": _gate_card,
    "ssn": _gate_ssn,
    "phone": _gate_phone,
    "ipv4": _gate_ipv4,
}

# What the fast path does for one detector (made once per tuple of detectors).
_WHOLE, _RUNS, _SEEK, _LONG_RUNS = range(4)
Needle = Callable[[str], object] | None  # None: no precondition; else truthy when present
Step = tuple[int, str, Finder, Needle, int, bytes, Callable[..., object] | None, Gate | None]


def _has(needle: str) -> Needle:
    if not needle:
        return None
    if len(needle) == 1:
        return lambda text: needle in text  # memchr
    return re.compile(re.escape(needle)).search  # a literal pattern beats `in` here


def plan(d: Detector) -> Step:
    """What `run` does for one detector (made once: edge/gateway/guard/prefilter.py keeps
    them per detector)."""
    has = _has(d.needle)
    gate = _GATES.get(d.name)
    if d.run_digits:
        shape = re.compile(d.run_shape).search if d.run_shape else None
        return (_RUNS, d.kind, d.find, has, d.run_digits, d.run_needs.encode(), shape, gate)
    if d.seek:
        return (_SEEK, d.kind, d.find, has, 0, d.seek, None, gate)
    return (_LONG_RUNS if d.key_run else _WHOLE, d.kind, d.find, has, 0, b"", None, gate)


_PLANS: dict[int, tuple[Sequence[Detector], list[Step]]] = {}


def _plan(detectors: Sequence[Detector]) -> list[Step]:
    found = _PLANS.get(id(detectors))
    if found is not None and found[0] is detectors:
        return found[1]
    steps = [plan(d) for d in detectors]
    if isinstance(detectors, tuple) and len(_PLANS) < 64:  # kept alive: its id stays its own
        _PLANS[id(detectors)] = (detectors, steps)
    return steps


def _digit_runs(classes: bytes) -> list[tuple[int, int, int, bytes]]:
    """Each run of digits and separators: start, end, how many digits, its classes."""
    out = []
    for m in _DIGIT_RUN.finditer(classes):
        run = m.group()
        out.append((m.start(), m.end(), run.count(b"0"), run))
    return out


def _key_runs(classes: bytes) -> list[Span]:
    """Each run of key characters long enough to hold an API key."""
    words = classes.translate(KEY_CHARS)
    out = []
    start = words.find(_KEY_RUN)
    while start >= 0:
        end = words.find(b" ", start + KEY_MIN_LENGTH)
        if end < 0:
            end = len(words)
        out.append((start, end))
        start = words.find(_KEY_RUN, end)
    return out


def encode(text: str) -> bytes:
    """One byte per character: Latin-1 as it is, beyond it a digit, letter or other mark."""
    return text.encode("latin-1", HANDLER)


def classes_of(text: str) -> bytes:
    """The class string: one byte per character of the text (see the module's doc)."""
    return encode(text).translate(CLASSES)


def scan(text: str, detectors: Sequence[Detector] = DETECTORS) -> list[Finding]:
    """detectors.scan's findings, the same ones, faster on text where few detectors can
    match."""
    return run(text, _plan(detectors))


_IN_RUN: Final = frozenset(b"0 .()+-")


def runs_at(classes: bytes, ends: list[int]) -> list[tuple[int, int, int, bytes]]:
    """The digit runs (as `_digit_runs` finds them) that hold the digits before these
    offsets: the maximal stretch of run characters around each, from its first digit to
    its last (what the greedy `_DIGIT_RUN` takes from there)."""
    out = []
    reach = -1  # the end of the last stretch: offsets inside it are done
    size = len(classes)
    for end in sorted(ends):
        if end <= reach:
            continue
        left = end - 1
        while left > 0 and classes[left - 1] in _IN_RUN:
            left -= 1
        right = end
        while right < size and classes[right] in _IN_RUN:
            right += 1
        reach = right
        first, last = classes.find(b"0", left, right), classes.rfind(b"0", left, right) + 1
        if last - first >= 7:
            run = classes[first:last]
            out.append((first, last, run.count(b"0"), run))
    return out


def run(
    text: str, steps: Sequence[Step], latin: bytes | None = None, ends: list[int] | None = None
) -> list[Finding]:
    """The findings of these detectors' steps, in their order (as `scan`); `latin`: the
    text already encoded as `encode` does; `ends`: offsets just after a digit, where the
    digit-run detectors among the steps could match (their runs alone are searched)."""
    if latin is None:
        latin = encode(text)
    classes = latin.translate(CLASSES)
    size = len(text)
    runs = None if ends is None else runs_at(classes, ends)
    taken: list[Finding] = []
    for how, kind, find, has, least, literal, shape, gate in steps:
        if has is not None and not has(text):
            continue
        if gate is not None and not gate(text, classes):
            continue
        if how == _RUNS:
            if runs is None:
                runs = _digit_runs(classes)
            spans: list[Span] = []
            for start, end, digits, run in runs:
                if digits >= least and (not literal or literal in run):
                    # One character before (a "+" or "("), two after (what may not follow).
                    start, end = max(0, start - 1), min(size, end + 2)
                    if shape is None or shape(classes, start, end) is not None:
                        spans.extend(find(text, start, end))
        elif how == _SEEK:
            first = classes.find(literal)
            spans = [] if first < 0 else find(text, first)
        elif how == _LONG_RUNS:
            spans = []
            for start, end in _key_runs(classes):
                # One character after: the pattern looks at what follows a key.
                spans.extend(find(text, start, min(size, end + 1)))
        else:
            spans = find(text)
        for start, end in spans:
            if not taken or not any(start < t.end and t.start < end for t in taken):
                taken.append(Finding(kind, start, end))
    if len(taken) > 1:
        taken.sort(key=lambda f: f.start)
    return taken
