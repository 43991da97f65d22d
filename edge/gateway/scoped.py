"""Per team / key / model settings from the config file: the most specific matching rule."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Protocol, TypeVar


class Rule(Protocol):
    @property
    def team(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def model(self) -> str: ...


R = TypeVar("R", bound=Rule)


def _matches(rule: Rule, team: str, key: str, model: str) -> bool:
    if rule.team and rule.team != team:
        return False
    if rule.key and rule.key != key:
        return False
    if rule.model:
        if "*" in rule.model or "?" in rule.model:
            return fnmatchcase(model, rule.model)
        return rule.model == model
    return True


def most_specific(rules: Sequence[R], team: str, key: str, model: str) -> R | None:
    """The matching rule naming the most (a key outweighs a team, a team a model); among
    equals, the first in the file."""
    best: R | None = None
    best_score = -1
    for rule in rules:
        if not _matches(rule, team, key, model):
            continue
        score = (4 if rule.key else 0) + (2 if rule.team else 0) + (1 if rule.model else 0)
        if score > best_score:
            best, best_score = rule, score
    return best
