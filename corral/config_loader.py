"""Configuration loading: the value types (ConfigError, Secret), the YAML file, and building
one section's frozen dataclass from its sources (corral/config.py says which sections exist).

A secret field ``x`` may also be given as ``x_file`` (a path whose contents, stripped, are
the secret), so secrets never need to sit on a command line.
"""

from __future__ import annotations

import dataclasses
import hmac
import math
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar


class ConfigError(Exception):
    """A configuration value is missing, unknown or malformed; the message names it."""


class Secret:
    """A string that never shows itself in reprs, logs or metrics."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        # Constant time, like every comparison of a secret.
        return isinstance(other, Secret) and hmac.compare_digest(
            other._value.encode(), self._value.encode()
        )

    def __hash__(self) -> int:
        return hash(self._value)


T = TypeVar("T")


def load_yaml(path: str | Path, sections: Collection[str]) -> dict[str, Any]:
    """Read a YAML config file: a mapping from section name (one of `sections`) to its keys."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    import yaml  # only where a config file is read: edge workers never load it

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of sections")
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown section {unknown[0]!r} "
            f"(known: {', '.join(sorted(sections))})"
        )
    for name, section in data.items():
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"config file {path}: section {name!r} must be a mapping")
    return {k: (v or {}) for k, v in data.items()}


def build(
    cls: type[T],
    section: str,
    *,
    file_values: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    choices: Mapping[tuple[str, str], tuple[str, ...]] | None = None,
) -> T:
    """Build one section's config from its sources; flags whose value is None are unset.
    `choices`: (section, key) -> the words that key takes; anything else is refused."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}

    def take(key: str, raw: Any, origin: str, from_text: bool) -> None:
        name = key.replace("-", "_")
        if (
            name.endswith("_file")
            and name[: -len("_file")] in fields
            and (_is_secret_type(hints[name[: -len("_file")]]))
        ):
            target = name[: -len("_file")]
            values[target] = _read_secret_file(hints[target], str(raw), f"{origin} {key}")
            return
        if name not in fields:
            raise ConfigError(f"{origin}: unknown key {key!r} in section {section!r}")
        values[name] = _convert(hints[name], raw, f"{origin} {section}.{name}", from_text)
        allowed = (choices or {}).get((section, name))
        if allowed is not None and values[name] not in allowed:
            raise ConfigError(
                f"{origin} {section}.{name}: expected one of {', '.join(allowed)}, got {raw!r}"
            )

    for key, raw in (file_values or {}).items():
        take(key, raw, "config file", from_text=False)
    prefix = f"CORRAL_{section.upper()}_"
    for env_key, raw in sorted((environ or {}).items()):
        if env_key.startswith(prefix):
            take(env_key[len(prefix) :].lower(), raw, f"environment {env_key}", from_text=True)
    for key, raw in (flags or {}).items():
        if raw is not None:
            take(key, raw, f"flag --{key.replace('_', '-')}", from_text=False)
    missing = [
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{section}: missing key {missing[0]!r}")
    return cls(**values)


def _is_secret_type(hint: Any) -> bool:
    return Secret in _flatten(hint)


def _flatten(hint: Any) -> set[Any]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType, tuple):
        out: set[Any] = set()
        for arg in typing.get_args(hint):
            if arg is not Ellipsis:
                out |= _flatten(arg)
        return out
    return {hint}


def _read_secret_file(hint: Any, path: str, where: str) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    if typing.get_origin(hint) is tuple:
        keys = [line.strip() for line in text.splitlines()]
        keys = [k for k in keys if k and not k.startswith("#")]
        if not keys:
            raise ConfigError(f"{where}: {path} holds no keys")
        return tuple(Secret(k) for k in keys)
    secret = text.strip()
    if not secret:
        raise ConfigError(f"{where}: {path} is empty")
    return Secret(secret)


def _convert(hint: Any, raw: Any, where: str, from_text: bool) -> Any:
    """Turn a raw value (YAML scalar, env text or flag value) into the field's type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if raw is None or (from_text and raw == ""):
            return None
        return _convert(inner[0], raw, where, from_text)
    if hint is Secret:
        if isinstance(raw, Secret):
            return raw
        if not isinstance(raw, str) or not raw:
            raise ConfigError(f"{where}: expected a non-empty string")
        return Secret(raw)
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(raw, str) and raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {raw!r}")
    if hint is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ConfigError(f"{where}: expected an integer, got {raw!r}")
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {raw!r}") from None
    if hint is float:
        if isinstance(raw, bool):
            raise ConfigError(f"{where}: expected a number, got {raw!r}")
        try:
            number = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {raw!r}") from None
        if not math.isfinite(number):  # YAML's .nan and .inf, "nan" from a flag
            raise ConfigError(f"{where}: expected a finite number, got {raw!r}")
        return number
    if hint is str:
        if raw is None or isinstance(raw, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {raw!r}")
        return str(raw)
    if origin is tuple:
        return _convert_tuple(args, raw, where, from_text)
    if dataclasses.is_dataclass(hint):
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
        # The nested section's path alone: build() puts the origin ("config file") before it.
        return build(typing.cast(type[Any], hint), where.rsplit(" ", 1)[-1], file_values=raw)
    raise ConfigError(f"{where}: unsupported field type {hint!r}")  # pragma: no cover


def _convert_tuple(args: tuple[Any, ...], raw: Any, where: str, from_text: bool) -> Any:
    item = args[0]
    if item == tuple[str, Secret]:  # credentials: a mapping of reference to secret
        texts = _pairs(raw, where, secret=True)
        return tuple((key, Secret(value)) for key, value in texts if value)
    if item == tuple[str, str]:
        return _pairs(raw, where, secret=False)
    if isinstance(raw, str):
        raw = [part.strip() for part in raw.split(",") if part.strip()] if from_text else [raw]
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {raw!r}")
    return tuple(_convert(item, entry, where, from_text) for entry in raw)


def _pairs(raw: Any, where: str, *, secret: bool) -> tuple[tuple[str, str], ...]:
    """Key=value pairs: "k=v,k2=v2" in text, a mapping in YAML, a list of "k=v" from flags.
    For `secret` values (credentials) an error names the entry, never what it holds."""
    pairs: list[tuple[str, str]] = []
    if isinstance(raw, Mapping):
        return tuple((str(k), str(v)) for k, v in raw.items())
    if not isinstance(raw, (str, list, tuple)):
        shown = "a secret's value is not shown" if secret else f"got {raw!r}"
        raise ConfigError(f"{where}: expected key=value pairs, {shown}")
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    for n, entry in enumerate(items, 1):
        if isinstance(entry, (tuple, list)) and len(entry) == 2:
            pairs.append((str(entry[0]), str(entry[1])))
            continue
        key, sep, value = str(entry).partition("=")
        if not sep or not key.strip():
            if secret:  # a secret's value (or, split at a comma, part of one) stays unsaid
                raise ConfigError(f"{where}: entry {n} is not REF=SECRET (its value not shown)")
            raise ConfigError(f"{where}: expected key=value, got {entry!r}")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)
