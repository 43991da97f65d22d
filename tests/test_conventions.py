"""Conventions the code base keeps, enforced: the three components never import each other,
every module logs under its own module name (one filter on a package sees all of it),
unchecked tests carry no type: ignore, and no cancellation is suppressed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ("agent", "controlplane", "edge")


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported(path: Path) -> set[str]:
    """Top-level package names a module imports (anywhere in it, lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("component", COMPONENTS)
def test_components_do_not_import_each_other(component: str) -> None:
    """agent, controlplane and edge share code only through corral (and the generated API)."""
    others = set(COMPONENTS) - {component}
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported(path) & others)
        for path in _modules(component)
        if _imported(path) & others
    }
    assert offenders == {}


def test_every_logger_is_named_after_its_module() -> None:
    """logging.getLogger(__name__) everywhere: agent.*, controlplane.*, edge.*, corral.*."""
    offenders = []
    for package in (*COMPONENTS, "corral"):
        for path in _modules(package):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "getLogger"
                    and node.args
                    and not (isinstance(node.args[0], ast.Name) and node.args[0].id == "__name__")
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_unchecked_code_carries_no_type_ignores() -> None:
    """No `type: ignore` in tests: only tests/support is type-checked, so none would be verified."""
    marker = "# type: " + "ignore"  # split, so this file does not match itself
    support = ROOT / "tests" / "support"
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in _modules("tests")
        if support not in path.parents
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if marker in line
    ]
    assert offenders == []


def _suppresses_cancellation(node: ast.AST) -> bool:
    """`contextlib.suppress(...)` or `suppress(...)` with CancelledError among its types."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    if name != "suppress":
        return False
    for arg in node.args:
        named = arg.attr if isinstance(arg, ast.Attribute) else getattr(arg, "id", "")
        if named == "CancelledError":
            return True
    return False


def test_no_cancellation_is_suppressed() -> None:
    """No `suppress(CancelledError)` in components or corral: it swallows a waiter's own cancel."""
    # corral/tasks.py's `stopped` waits for a cancelled task without that.
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for package in (*COMPONENTS, "corral")
        for path in _modules(package)
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if _suppresses_cancellation(node)
    ]
    assert offenders == []
