"""The guardrails of one edge: deny rules, PII detectors and site hooks, applied to a body.

`Guard.inspect` runs before a request leaves the edge (after its body was parsed, before it
is translated or routed): deny rules first (a match refuses the request with the operator's
message), then the built-in detectors, then the hooks. What was found is handled by the
action in force for the request's team, key and model: `block` refuses it (400, naming the
kinds of data, never the data), `redact` rewrites the body with typed placeholders, `log`
only records. Findings (kinds and counts) go to metrics and the request's `Call`; values go
nowhere but the placeholders' map, which lives as long as the request.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from corral.config import GuardConfig
from edge.errors import ApiError
from edge.exposition import Counter as MetricCounter
from edge.exposition import Registry
from edge.gateway.guard import detectors
from edge.gateway.guard.bodies import Texts, collect
from edge.gateway.guard.detectors import Detector, Finding
from edge.gateway.guard.hooks import Hook, HookFailed
from edge.gateway.guard.prefilter import Prefilter
from edge.gateway.guard.redact import Redaction
from edge.gateway.scoped import most_specific

_LABELS: Final = {
    "email": "e-mail address",
    "credit_card": "credit card number",
    "phone": "phone number",
    "ip_address": "IP address",
    "ssn": "US social security number",
    "iban": "IBAN",
    "api_key": "API key",
    "private_key": "private key",
    "jwt": "JSON Web Token",
}


class Refused(ApiError):
    """A request the guard refuses; `findings` (kind -> count) for the usage record."""

    def __init__(self, status: int, message: str, findings: dict[str, int], **kw: Any) -> None:
        super().__init__(status, message, **kw)
        self.findings = findings


@dataclass(frozen=True, slots=True)
class Settings:
    pii: str  # off, log, redact, block
    restore: bool


@dataclass(slots=True)
class Pending:
    """A body whose check goes on in `Guard.finish` (a worker thread, or hooks)."""

    settings: Settings
    texts: Texts


@dataclass(slots=True)
class Outcome:
    """What the guard did to one request."""

    findings: dict[str, int]  # kind -> count
    action: str
    redaction: Redaction | None = None  # set when originals go back into the answer
    changed: bool = False  # the body was rewritten
    hook_failed: bool = False


class GuardMetrics:
    def __init__(self, registry: Registry | None) -> None:
        self.findings = MetricCounter(
            "corral_edge_guard_findings",
            "Sensitive data found in prompts, by kind and the action taken (never values).",
            ["kind", "action"],
            registry=registry,
        )
        self.refused = MetricCounter(
            "corral_edge_guard_refused",
            "Requests refused by the guardrails, by reason (pii, deny rule, hook).",
            ["reason"],
            registry=registry,
        )
        self.hook_failures = MetricCounter(
            "corral_edge_guard_hook_failures",
            "Hook calls that failed or timed out, by hook.",
            ["hook"],
            registry=registry,
        )


class Guard:
    """Deny rules, detectors and hooks configured once; `inspect` per request."""

    def __init__(
        self,
        config: GuardConfig,
        *,
        registry: Registry | None = None,
        session: Callable[[], aiohttp.ClientSession] | None = None,
        policy: Callable[[str, str], Settings | None] | None = None,
    ) -> None:
        self.config = config
        self.detectors: tuple[Detector, ...] = (
            detectors.select(config.detectors) if config.detectors else detectors.DETECTORS
        )
        self.prefilter = Prefilter(self.detectors)
        self.deny = tuple(
            (
                rule.name or f"rule {i + 1}",
                re.compile(rule.pattern, re.IGNORECASE if rule.ignore_case else 0),
                rule.message,
            )
            for i, rule in enumerate(config.deny)
        )
        self.hooks = tuple(Hook(h, session or _no_session) for h in config.hooks)
        self.metrics = GuardMetrics(registry)
        # Per team/key settings from the policy the control plane sends (None: not set),
        # asked only while it sets any (consult_policy).
        self._policy = policy
        self._asked = policy
        self._default = Settings(config.pii, config.restore)
        # `settings` without a call: the default, when no rule or policy can change it.
        self._fixed: Settings | None = None
        self.consult_policy(policy is not None)
        self._thread_above = config.thread_above_bytes

    @property
    def active(self) -> bool:
        """False when the config file asks for no check (the policy may, per key or team)."""
        return bool(
            self.deny
            or self.hooks
            or self.config.pii != "off"
            or any(r.pii not in ("", "off") for r in self.config.rules)
        )

    def consult_policy(self, sets_any: bool) -> None:
        """Whether the policy sets a PII action for any key or team now (else it is not
        asked)."""
        self._asked = self._policy if sets_any else None
        fixed = self._asked is None and not self.config.rules
        self._fixed = self._default if fixed else None
        # When its one native pass over the raw body decides (every request under the same
        # settings, PII looked for, no deny rule nor hook): that pass, asked without a call
        # to inspect_now for a clean body (most bodies).
        decides = fixed and self._default.pii != "off" and not self.deny and not self.hooks
        self.clean_pass = self.prefilter if decides else None

    def settings(self, team: str, key: str, model: str) -> Settings:
        """The action for this request: the policy's team or key setting, else the most
        specific config rule, else the default."""
        if self._asked is not None:
            found = self._asked(team, key)
            if found is not None:
                return found
        rules = self.config.rules
        rule = most_specific(rules, team, key, model) if rules else None
        if rule is None:
            return self._default
        return Settings(
            rule.pii or self._default.pii,
            self._default.restore if rule.restore is None else rule.restore,
        )

    def inspect_now(
        self, body: Any, team: str = "", key: str = "", model: str = "", raw: bytes | None = None
    ) -> Outcome | Pending | None:
        """`inspect` without a wait when it needs none (no hooks, a body scanned on the
        loop): its outcome; else a Pending that `finish` completes. `raw`: the JSON the
        body was parsed from, when the caller has it (one native pass over it may show
        that no detector can match, and no string is looked at one by one)."""
        settings = self._fixed or self.settings(team, key, model)
        if not self.deny and not self.hooks:
            if settings.pii == "off":
                return None
            if raw is not None and self.prefilter.clean(raw):
                return None
        texts = collect(body)
        if not texts.values:
            return None
        if self.hooks or texts.size > self._thread_above:
            return Pending(settings, texts)
        denied, found = self._scan(texts, settings.pii != "off")
        return self._conclude(settings, texts, denied, found, False)

    async def inspect(
        self, body: Any, *, team: str = "", key: str = "", model: str = "", endpoint: str = ""
    ) -> Outcome | None:
        """Check (and maybe rewrite in place) a parsed body; raises ApiError to refuse it.
        None: nothing found, nothing to do."""
        first = self.inspect_now(body, team=team, key=key, model=model)
        if not isinstance(first, Pending):
            return first
        return await self.finish(first, team=team, key=key, model=model, endpoint=endpoint)

    async def finish(
        self, pending: Pending, *, team: str, key: str, model: str, endpoint: str
    ) -> Outcome | None:
        """The rest of `inspect` for a body that goes to a thread or to hooks."""
        texts = pending.texts
        scan_pii = pending.settings.pii != "off"
        if texts.size > self._thread_above:
            denied, found = await asyncio.to_thread(self._scan, texts, scan_pii)
        else:
            denied, found = self._scan(texts, scan_pii)
        hook_failed = False
        if self.hooks and denied is None:
            context = {"team": team, "key": key, "model": model, "endpoint": endpoint}
            hook_failed = await self._run_hooks(texts, found, context)
        return self._conclude(pending.settings, texts, denied, found, hook_failed)

    def _conclude(
        self,
        settings: Settings,
        texts: Texts,
        denied: tuple[str, str] | None,
        found: list[list[Finding]],
        hook_failed: bool,
    ) -> Outcome | None:
        """What the findings mean under the request's settings: refuse, rewrite or record."""
        if denied is not None:
            _name, message = denied
            self.metrics.refused.labels("deny").inc()
            raise Refused(400, message, {"deny_rule": 1}, code="content_denied")
        if not any(found):
            return Outcome({}, settings.pii, hook_failed=hook_failed) if hook_failed else None
        counts = Counter(f.kind for per_text in found for f in per_text)
        action = settings.pii if settings.pii != "off" else "log"
        for kind, n in counts.items():
            self.metrics.findings.labels(kind, action).inc(n)
        outcome = Outcome(dict(counts), action, hook_failed=hook_failed)
        if action == "block":
            self.metrics.refused.labels("pii").inc()
            listed = ", ".join(
                f"{_LABELS.get(k, k.replace('_', ' '))} ({n})" for k, n in sorted(counts.items())
            )
            raise Refused(
                400,
                f"The request contains sensitive data this gateway does not let through: "
                f"{listed}. Remove it and try again.",
                dict(counts),
                code="sensitive_data",
            )
        if action == "redact":
            redaction = Redaction()
            for index, per_text in enumerate(found):
                if per_text:
                    texts.write(index, redaction.redact(texts.values[index], per_text))
            outcome.changed = True
            if settings.restore:
                outcome.redaction = redaction
        return outcome

    def _scan(
        self, texts: Texts, scan_pii: bool
    ) -> tuple[tuple[str, str] | None, list[list[Finding]]]:
        for name, pattern, message in self.deny:
            for value in texts.values:
                if pattern.search(value) is not None:
                    return (name, message), []
        if not scan_pii:
            return None, [[] for _ in texts.values]
        scan = self.prefilter.scan
        return None, [scan(value) for value in texts.values]

    async def _run_hooks(
        self, texts: Texts, found: list[list[Finding]], context: dict[str, str]
    ) -> bool:
        failed = False
        for hook in self.hooks:
            try:
                verdict = await hook.check(texts.values, context)
            except HookFailed:
                self.metrics.hook_failures.labels(hook.name).inc()
                if hook.fail_open:
                    failed = True
                    continue
                self.metrics.refused.labels("hook").inc()
                raise Refused(
                    503,
                    "A content check this gateway requires is unavailable; try again later.",
                    {"hook_failed": 1},
                    error_type="service_unavailable",
                    code="guardrail_unavailable",
                    headers={"Retry-After": "1"},
                ) from None
            if verdict.block is not None:
                self.metrics.refused.labels("hook").inc()
                raise Refused(400, verdict.block, {"hook_block": 1}, code="content_denied")
            for f in verdict.findings:
                per_text = found[f.index]
                if not any(f.start < t.end and t.start < f.end for t in per_text):
                    per_text.append(Finding(f.kind, f.start, f.end))
                    per_text.sort(key=lambda x: x.start)
        return failed


def _no_session() -> aiohttp.ClientSession:
    raise HookFailed("no HTTP session for hooks")
