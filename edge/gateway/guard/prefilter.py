"""One native pass over a prompt for every detector: which of them could match at all.

Most prompts hold no PII, and the sieve (edge/gateway/guard/sieve.py) still spends a search
or two per detector to learn that (~10 µs on a short prompt, ~25 µs on 1 KiB). Hyperscan
(Intel's multi-pattern matcher, the `hyperscan` wheel) runs one pattern per detector over the
text in a single pass, ~1 µs for a short prompt and ~2.5 µs per KiB, and reports which
detectors' patterns occur; only those detectors then run, through the sieve's exact steps
(their own patterns, Luhn, mod-97, the address parsers). So the findings are the sieve's,
which are `detectors.scan`'s (tests compare all three). The digit-run detectors (cards,
SSNs, phones, IPv4) report the end of every match, and only the runs of digits around those
ends are searched, not every run in the text (numbers, times and ids cost nothing then).

Each pattern here is a necessary condition of its detector: a piece every match of the
detector contains (a lookahead dropped, a repeat cut to its minimum), never more. The text
is scanned as the sieve encodes it (edge/gateway/guard/sieve.py: Latin-1, and a mark for
each character beyond it, `\\x02` for a Unicode digit), so `\\d` is `[0-9\\x02]` here and the
explicit ASCII classes mean what they mean to Python's `re`.

Without the `hyperscan` module (a platform with no wheel for it) every scan is the sieve's.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from typing import Any, Final

from edge.gateway.guard import sieve
from edge.gateway.guard.detectors import DETECTORS, Detector, Finding

# Imported at the first scan (an edge whose guard is off never loads it); absent on a
# platform without its wheel: the sieve alone then.
NATIVE: Final = importlib.util.find_spec("hyperscan") is not None


def _digits(pattern: bytes) -> bytes:
    """`\\d` as Python's `re` means it, in the sieve's encoding (a Unicode digit: 2)."""
    return pattern.replace(rb"\d", rb"[0-9\x02]")


# A card number after the detector's left boundary (not a word character nor ".,-", written
# before this): an issuer's first two digits (detectors._CARD_PREFIX) and the fewest digits
# any of its numbers has, 13 (Visa, 5[06-9] and 6x issuers), 14 (3x) or 16 (2x, 5[1-5]).
_CARD: Final = (
    rb"(?:(?:[46]\d|5[06-9])[ -]?\d(?:[ -]?\d){10}"
    rb"|3\d[ -]?\d(?:[ -]?\d){11}"
    rb"|(?:2\d|5[1-5])[ -]?\d(?:[ -]?\d){13})"
)

# Per detector (by name): a pattern every one of its matches contains.
PATTERNS: Final[dict[str, bytes]] = {
    "private_key": rb"-----BEGIN ",
    "jwt": rb"eyJ[A-Za-z0-9_-]{6}[A-Za-z0-9_-]*\.eyJ",
    # A provider's prefix and ten key characters (every provider's key has more).
    "api_key": rb"(?:sk-|sk_|rk_|AKIA|ASIA|ABIA|ACCA|gh[pousr]_|github_pat_|AIza|xox[abposr]-"
    rb"|hf_|glpat-)[A-Za-z0-9_\x02-]{10}",
    "email": rb"@[A-Za-z0-9][A-Za-z0-9.-]*\.[A-Za-z]{2}",
    "iban": _digits(rb"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2}"),
    "credit_card": _digits(rb"(?:^|[^0-9A-Za-z_.,-])" + _CARD),
    "ssn": _digits(rb"\d{3}-\d{2}-\d{4}"),
    "phone": _digits(rb"\+\d|\(\d{3}\) ?\d{3}[.-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4}"),
    "ipv6": rb"::|:(?:[0-9A-Fa-f]{1,4}:){5}",
    "ipv4": _digits(rb"\d\.\d{1,3}\.\d{1,3}\.\d"),
}

# The same over a raw JSON body that is ASCII and has no \u escape (Prefilter.clean): every
# string in it is its own bytes but for two-character escapes (\n, \", \\, \/ ...), and no
# pattern above holds a character written so, except the card's left boundary: there an
# escaped control character leaves a letter (\n) before the digit. The card's part is wider
# here (any issuer's first digit, 13 digits): the exact one triples the database (~0.5 MB,
# cache misses on every request), and a body it flags is only scanned string by string.
RAW_PATTERNS: Final[dict[str, bytes]] = {
    **PATTERNS,
    "credit_card": _digits(rb"(?:^|[^0-9A-Za-z_.,-]|\\[bfnrt])[2-6]\d[ -]?\d(?:[ -]?\d){10}"),
}
# A \u escape in a raw body: its strings are not their bytes, so it is never clean (found in
# the same native pass rather than by a search of the bytes in Python, ~1 µs per KiB).
_ESCAPE: Final = rb"\\u"


def _collect(index: int, _start: int, end: int, _flags: int, hits: list[int]) -> None:
    hits.append(index)
    hits.append(end)


class Prefilter:
    """The detectors' findings in a text: a native pass first, the sieve's steps where it
    found something (or everywhere, without the native module)."""

    def __init__(self, detectors: Sequence[Detector] = DETECTORS, *, native: bool = True) -> None:
        self.detectors = tuple(detectors)
        self.steps = [sieve.plan(d) for d in self.detectors]
        self.in_runs = frozenset(i for i, d in enumerate(self.detectors) if d.run_digits)
        self.native = native and NATIVE and bool(self.detectors)
        self._databases: Any = None  # (text, raw body), compiled at the first scan (~0.1 s)
        self._lock = threading.Lock()
        self._local = threading.local()  # scratch spaces per thread (scans free the GIL)

    def _scratches(self) -> Any:
        scratches = getattr(self._local, "scratches", None)
        if scratches is None:
            with self._lock:
                if self._databases is None:
                    text = _compile(self.detectors, PATTERNS)
                    raw = _compile(self.detectors, RAW_PATTERNS, raw=True)
                    self._databases = (text, raw) if text and raw else False
            if self._databases is False:  # this CPU cannot run them: the sieve alone
                self.native = False
                return None
            scratches = tuple(d.scratch.clone() for d in self._databases)
            self._local.scratches = scratches
        return scratches

    def clean(self, raw: bytes) -> bool:
        """True when no detector can match in any string of this JSON body (its bytes as
        the client sent them); False: scan its strings one by one."""
        if not self.native or not raw.isascii():
            return False
        # This thread's scratches without a call (made at its first scan).
        scratches = getattr(self._local, "scratches", None) or self._scratches()
        if scratches is None:
            return False
        hits: list[int] = []
        # Positional arguments: the binding parses keywords at ~1 µs a call.
        self._databases[1].scan(raw, _collect, 0, hits, scratches[1])
        return not hits

    def scan(self, text: str) -> list[Finding]:
        """detectors.scan's findings for these detectors, the same ones."""
        scratches = self._scratches() if self.native else None
        if scratches is None:
            return sieve.run(text, self.steps)
        latin = sieve.encode(text)
        hits: list[int] = []  # pattern id, end offset, pattern id, end offset, ...
        self._databases[0].scan(
            latin, match_event_handler=_collect, context=hits, scratch=scratches[0]
        )
        if not hits:
            return []
        flagged = set(hits[::2])
        steps = self.steps
        # The digit-run detectors report every match's end: their runs alone are searched.
        in_runs = self.in_runs
        ends = [e for i, e in zip(hits[::2], hits[1::2], strict=True) if i in in_runs]
        return sieve.run(text, [steps[i] for i in sorted(flagged)], latin, ends)


def _compile(
    detectors: Sequence[Detector], patterns: dict[str, bytes], *, raw: bool = False
) -> Any:
    """The database of the detectors' patterns (ids: their indexes); None if Hyperscan
    refuses (a CPU without the instructions it needs). `raw`: for Prefilter.clean, which
    asks only whether anything matched: one report per pattern, and the \\u escape too."""
    import hyperscan

    expressions = [patterns[d.name] for d in detectors]
    # One report each, but every match's end for the digit-run detectors (scan's runs).
    flags = [hyperscan.HS_FLAG_SINGLEMATCH if raw or not d.run_digits else 0 for d in detectors]
    if raw:
        expressions.append(_ESCAPE)
        flags.append(hyperscan.HS_FLAG_SINGLEMATCH)
    database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    try:
        database.compile(
            expressions=expressions,
            ids=list(range(len(expressions))),
            elements=len(expressions),
            flags=flags,
        )
    except hyperscan.error:
        return None
    return database
