"""What the configuration tests (tests/test_config_*.py) share: a config file written in one
call, and the fields of a config section that hold secrets.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def secret_fields(cls: type[Any]) -> set[str]:
    hints = typing.get_type_hints(cls)
    return {name for name, hint in hints.items() if "Secret" in repr(hint)}
