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

_D: Final = rb"[0-9\x02]"  # Python's \d, in the sieve's encoding
_KEY: Final = rb"[A-Za-z0-9_\x02-]"

# Per detector (by name): a pattern every one of its matches contains.
PATTERNS: Final[dict[str, bytes]] = {
    "private_key": rb"-----BEGIN ",
    "jwt": rb"eyJ[A-Za-z0-9_-]{6}[A-Za-z0-9_-]*\.eyJ",
    # A provider's prefix and ten key characters (every provider's key has more).
    "api_key": rb"(?:sk-|sk_|rk_|AKIA|ASIA|ABIA|ACCA|gh[pousr]_|github_pat_|AIza|xox[abposr]-"
    rb"|hf_|glpat-)" + _KEY + rb"{10}",
    "email": rb"@[A-Za-z0-9][A-Za-z0-9.-]*\.[A-Za-z]{2}",
    "iban": rb"[A-Z]{2}" + _D + rb"{2}(?: ?[A-Z0-9]{4}){2}",
    # Not after a word character or ".,-" (the detector's left boundary), an issuer's
    # first digit (2 to 6), 13 digits.
    "credit_card": rb"(?:^|[^0-9A-Za-z_.,-])[2-6]"
    + _D
    + rb"[ -]?"
    + _D
    + rb"(?:[ -]?"
    + _D
    + rb"){10}",
    "ssn": _D + rb"{3}-" + _D + rb"{2}-" + _D + rb"{4}",
    "phone": rb"\+"
    + _D
    + rb"|\("
    + _D
    + rb"{3}\) ?"
    + _D
    + rb"{3}[.-]"
    + _D
    + rb"{4}|"
    + _D
    + rb"{3}[.-]"
    + _D
    + rb"{3}[.-]"
    + _D
    + rb"{4}",
    "ipv6": rb"::|:(?:[0-9A-Fa-f]{1,4}:){5}",
    "ipv4": _D + rb"\." + _D + rb"{1,3}\." + _D + rb"{1,3}\." + _D,
}


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
        self.native = native and NATIVE
        self._database: Any = None  # compiled at the first scan (~50 ms)
        self._lock = threading.Lock()
        self._local = threading.local()  # a scratch space per thread (scans free the GIL)

    def _scratch(self) -> Any:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            with self._lock:
                if self._database is None:
                    self._database = _compile(self.detectors)
            if self._database is False:  # this CPU cannot run it: the sieve alone
                self.native = False
                return None
            scratch = self._local.scratch = self._database.scratch.clone()
        return scratch

    def scan(self, text: str) -> list[Finding]:
        """detectors.scan's findings for these detectors, the same ones."""
        if not self.native or not self.detectors:
            return sieve.run(text, self.steps)
        scratch = self._scratch()
        if scratch is None:
            return sieve.run(text, self.steps)
        latin = sieve.encode(text)
        hits: list[int] = []  # pattern id, end offset, pattern id, end offset, ...
        self._database.scan(latin, match_event_handler=_collect, context=hits, scratch=scratch)
        if not hits:
            return []
        flagged = set(hits[::2])
        steps = self.steps
        # The digit-run detectors report every match's end: their runs alone are searched.
        in_runs = self.in_runs
        ends = [e for i, e in zip(hits[::2], hits[1::2], strict=True) if i in in_runs]
        return sieve.run(text, [steps[i] for i in sorted(flagged)], latin, ends)


def _compile(detectors: Sequence[Detector]) -> Any:
    """The database of the detectors' patterns (ids: their indexes); False if Hyperscan
    refuses (a CPU without the instructions it needs)."""
    import hyperscan

    database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    try:
        database.compile(
            expressions=[PATTERNS[d.name] for d in detectors],
            ids=list(range(len(detectors))),
            elements=len(detectors),
            # One report each, but every match's end for the digit-run detectors.
            flags=[0 if d.run_digits else hyperscan.HS_FLAG_SINGLEMATCH for d in detectors],
        )
    except hyperscan.error:
        return False
    return database
