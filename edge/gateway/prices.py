"""Prices per model and the cost of a Call.

A price is USD per million tokens: input, cached input (prompt-cache reads), output. The
table starts from the shipped data file (data/prices.json: hosted providers' list prices, dated,
its source named), then the config file's `edge.usage.prices`, then prices set through
AdminService (`PriceTable.with_prices`). A model with no price costs 0: self-hosted models
are free unless an operator prices them (to charge GPU time back to teams).

Lookups go by the model the backend served (else the one asked), lower-cased, then without a
date suffix (`gpt-4o-2024-08-06` -> `gpt-4o`, `claude-sonnet-4-20250514` -> `claude-sonnet-4`),
then without a provider prefix (`openai/gpt-4o`). Results are memoised per name.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import edge.gateway
from edge.gateway.call import Call

_DATED: Final = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")
_MEMO_LIMIT: Final = 4096
_PER: Final = 1_000_000.0


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input: float
    cached_input: float
    output: float

    def cost(self, prompt: int, cached: int, completion: int) -> float:
        cached = min(cached, prompt)
        return (
            (prompt - cached) * self.input + cached * self.cached_input + completion * self.output
        ) / _PER


@dataclass(frozen=True, slots=True)
class ShippedPrices:
    date: str
    source: str
    prices: dict[str, Price]


@functools.cache
def shipped() -> ShippedPrices:
    """The shipped price data file, read once."""
    # In this package's directory (not importlib.resources: its readers load zipfile, memory
    # an edge would keep for one read at startup); the package's own file, not this
    # module's, which is the native build's when compiled (edge/native.py).
    text = (Path(edge.gateway.__file__).parent / "data" / "prices.json").read_text()
    data: dict[str, Any] = json.loads(text)
    prices = {
        name.lower(): Price(float(p[0]), float(p[1]), float(p[2]))
        for name, p in data["models"].items()
    }
    return ShippedPrices(str(data["date"]), str(data["source"]), prices)


class PriceTable:
    """Model name -> Price; immutable (a change makes a new table)."""

    __slots__ = ("_memo", "prices")

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self.prices = {name.lower(): price for name, price in prices.items()}
        self._memo: dict[str, Price | None] = {}

    @classmethod
    def default(cls, overrides: Iterable[tuple[str, Price]] = ()) -> PriceTable:
        """The shipped prices, then `overrides` (model, price) on top."""
        return cls(shipped().prices).with_prices(overrides)

    def with_prices(self, overrides: Iterable[tuple[str, Price]]) -> PriceTable:
        merged = dict(self.prices)
        merged.update((name.lower(), price) for name, price in overrides)
        return PriceTable(merged)

    def lookup(self, model: str) -> Price | None:
        memo = self._memo
        if model in memo:
            return memo[model]
        found = self._find(model)
        if len(memo) < _MEMO_LIMIT:  # unknown names are unbounded: stop remembering
            memo[model] = found
        return found

    def _find(self, model: str) -> Price | None:
        prices = self.prices
        name = model.lower()
        for candidate in (name, _DATED.sub("", name)):
            found = prices.get(candidate)
            if found is None and "/" in candidate:
                found = prices.get(candidate.rsplit("/", 1)[1])
            if found is not None:
                return found
        return None

    def cost(self, call: Call) -> float:
        """What the Call's tokens cost (0 without a price)."""
        if not (call.prompt_tokens or call.completion_tokens):
            return 0.0
        model = call.served or call.model
        memo = self._memo  # the usual case without lookup()'s call
        price = memo[model] if model in memo else self.lookup(model)
        if price is None and call.served and call.served != call.model:
            price = self.lookup(call.model)
        if price is None:
            return 0.0
        return price.cost(call.prompt_tokens, call.cached_tokens, call.completion_tokens)
