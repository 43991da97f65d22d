"""bench/compare.py runs each side's own edge code: a revision exported whole, imported first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.common import REPO
from bench.compare import export, tree_env


def test_a_revision_is_exported_whole(tmp_path: Path) -> None:
    """HEAD's tracked files land in a directory of their own, byte for byte."""
    tree = export("HEAD", tmp_path / "head")
    committed = subprocess.run(
        ["git", "-C", str(REPO), "show", "HEAD:edge/proxy.py"], check=True, capture_output=True
    ).stdout
    assert (tree / "edge" / "proxy.py").read_bytes() == committed
    assert (tree / "corral" / "cli.py").is_file()


def test_the_tree_is_imported_before_the_checkout_it_runs_in(tmp_path: Path) -> None:
    """Run from the checkout (first on sys.path), the tree's modules are imported, not its own."""
    tree = export("HEAD", tmp_path / "head")
    # As Python: compiled, the module would load from the build for the tree's sources.
    env = {**os.environ, **tree_env(tree), "CORRAL_NATIVE": "0"}
    found = subprocess.run(
        [sys.executable, "-c", "import edge.proxy; print(edge.proxy.__file__)"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert Path(found) == tree / "edge" / "proxy.py"


def test_the_working_tree_is_exported_with_its_changes(tmp_path: Path) -> None:
    """Uncommitted and untracked files are in the export; the checkout's index is not touched."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "kept.py").write_text("A = 1\n")
    subprocess.run([*git, "add", "kept.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    index = (repo / ".git" / "index").read_bytes()
    (repo / "kept.py").write_text("A = 2\n")
    (repo / "new.py").write_text("B = 1\n")
    tree = export(None, tmp_path / "work", repo)
    assert (tree / "kept.py").read_text() == "A = 2\n"
    assert (tree / "new.py").read_text() == "B = 1\n"
    assert (repo / ".git" / "index").read_bytes() == index
    assert export("HEAD", tmp_path / "head", repo).joinpath("kept.py").read_text() == "A = 1\n"
