"""Site checks plugged into the guardrails: a Python callable, or an HTTP service.

A hook sees the request's user texts and answers with findings (spans of a kind, handled by
the same action as the built-in detectors: redact, block or log) and/or a block message.
Every hook runs under its timeout; when it fails or times out, `fail: open` lets the request
through (flagged `hook_failed`), `fail: closed` refuses it (503). Failures never carry the
texts into logs.

- Python: `module:attribute`, or the name of an entry point in the `corral.guardrails` group.
  The callable takes `(texts: list[str], context: dict)` and returns (or awaits) `None`, or a
  mapping `{"block": "message" | None, "findings": [{"index", "start", "end", "kind"}]}`.
- HTTP, `format: verdict`: POST `{"texts": [...], "context": {...}}`, answer as above.
- HTTP, `format: presidio`: Microsoft Presidio's analyzer (`POST /analyze` with
  `{"text", "language"}`, one call per text, concurrently); each result above the score
  threshold is a finding of kind `entity_type` in lower case.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
from yarl import URL

from corral.config import GuardHookConfig
from edge.errors import EdgeError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP: Final = "corral.guardrails"


class HookFailed(EdgeError):
    """A hook could not answer in time, or answered something unusable (message says which)."""


@dataclass(frozen=True, slots=True)
class HookFinding:
    index: int  # which text
    start: int
    end: int
    kind: str


@dataclass(slots=True)
class HookVerdict:
    block: str | None = None
    findings: list[HookFinding] = field(default_factory=list)


def _verdict(answer: Any, texts: Sequence[str], where: str) -> HookVerdict:
    """A hook's answer checked: spans inside their texts, kinds as short names."""
    if answer is None:
        return HookVerdict()
    if not isinstance(answer, Mapping):
        raise HookFailed(f"{where} answered {type(answer).__name__}, not a mapping")
    block = answer.get("block")
    if block is not None and not isinstance(block, str):
        raise HookFailed(f"{where}: 'block' must be a string or null")
    found: list[HookFinding] = []
    for item in answer.get("findings") or ():
        try:
            index, start, end = int(item["index"]), int(item["start"]), int(item["end"])
            kind = _kind(str(item["kind"]))
        except (KeyError, TypeError, ValueError):
            raise HookFailed(f"{where}: a finding needs index, start, end and kind") from None
        if not (0 <= index < len(texts) and 0 <= start < end <= len(texts[index])):
            raise HookFailed(f"{where}: a finding lies outside its text")
        found.append(HookFinding(index, start, end, kind))
    return HookVerdict(block or None, found)


def _kind(raw: str) -> str:
    """A hook's kind as placeholders can carry it: ASCII letters, digits and underscores."""
    kind = "".join(ch if ch.isascii() and ch.isalnum() else "_" for ch in raw.strip().lower())[:40]
    if not kind or not kind[0].isalpha():
        raise ValueError(raw)
    return kind


def shown_url(url: str) -> str:
    """A hook's URL as its name in metrics, logs and errors: without the credentials a URL
    can carry (user:password@, a query's token)."""
    parsed = URL(url)
    return str(parsed.with_user(None).with_query(None).with_fragment(None))


class Hook:
    """One configured hook; `check` raises HookFailed on any failure, timeout included."""

    def __init__(
        self, config: GuardHookConfig, session: Callable[[], aiohttp.ClientSession]
    ) -> None:
        self.config = config
        self.name = config.name or config.python or shown_url(config.url)
        self.fail_open = config.fail == "open"
        self._session = session
        self._call: Callable[..., Any] | None = (
            load_python(config.python) if config.python else None
        )

    async def check(self, texts: list[str], context: dict[str, str]) -> HookVerdict:
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                call = self._call
                if call is not None:
                    if inspect.iscoroutinefunction(call):
                        answer = await call(list(texts), dict(context))
                    else:
                        # A plain function runs in a worker thread: the timeout can end the
                        # wait for it (not the function), and the loop serves on meanwhile.
                        answer = await asyncio.to_thread(call, list(texts), dict(context))
                        if inspect.isawaitable(answer):
                            answer = await answer
                    return _verdict(answer, texts, f"hook {self.name}")
                if self.config.format == "presidio":
                    return await self._presidio(texts)
                return _verdict(
                    await self._post({"texts": texts, "context": context}),
                    texts,
                    f"hook {self.name}",
                )
        except TimeoutError:
            raise HookFailed(
                f"hook {self.name} did not answer within {self.config.timeout_seconds:g}s"
            ) from None
        except HookFailed:
            raise
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise HookFailed(f"hook {self.name} failed: {type(exc).__name__}") from None
        except Exception as exc:  # a site's Python code: anything can come out
            log.warning("guardrail hook %s raised %s", self.name, type(exc).__name__)
            raise HookFailed(f"hook {self.name} raised {type(exc).__name__}") from None

    async def _post(self, payload: Any, url: str | None = None) -> Any:
        async with self._session().post(url or self.config.url, json=payload) as answer:
            if answer.status != 200:
                raise HookFailed(f"hook {self.name} answered HTTP {answer.status}")
            return await answer.json(content_type=None)

    async def _presidio(self, texts: list[str]) -> HookVerdict:
        url = self.config.url.rstrip("/")
        if not url.endswith("/analyze"):
            url += "/analyze"
        language = self.config.language
        threshold = self.config.score_threshold

        async def one(text: str) -> Any:
            return await self._post({"text": text, "language": language}, url)

        results = await asyncio.gather(*(one(t) for t in texts))
        verdict = HookVerdict()
        for index, found in enumerate(results):
            if not isinstance(found, list):
                raise HookFailed(f"hook {self.name}: Presidio answered no list")
            for item in found:
                if not isinstance(item, Mapping) or float(item.get("score", 1.0)) < threshold:
                    continue
                verdict.findings.extend(
                    _verdict(
                        {"findings": [{**item, "index": index, "kind": item.get("entity_type")}]},
                        texts,
                        f"hook {self.name}",
                    ).findings
                )
        return verdict


def load_python(spec: str) -> Callable[..., Any]:
    """`module:attribute`, or an entry point's name in the corral.guardrails group."""
    try:
        if ":" in spec:
            module_name, _, attr = spec.partition(":")
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        else:
            # Only for a hook named by entry point: importlib.metadata is ~1.2 MiB resident.
            from importlib.metadata import entry_points

            found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
            if not found:
                raise EdgeError(f"no entry point {spec!r} in the {ENTRY_POINT_GROUP} group")
            target = found[0].load()
    except (ImportError, AttributeError) as exc:
        raise EdgeError(f"guardrail hook {spec!r} cannot be loaded: {exc}") from None
    if not callable(target):
        raise EdgeError(f"guardrail hook {spec!r} is not callable")
    return target  # type: ignore[no-any-return]
