"""The llama-server build cache and the tiny model: pinned source, outside the checkout,
deterministic model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.support import llamacpp_build
from tests.support.llamacpp import require_built
from tests.support.procs import ROOT
from tests.support.tiny_gguf import write_tiny_gguf


def test_cache_lives_outside_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default cache is under ~/.cache (or XDG_CACHE_HOME), named by the pinned version."""
    monkeypatch.delenv("CORRAL_LLAMA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/var/tmp/xdg")
    path = llamacpp_build.cache_dir()
    assert (
        path == Path("/var/tmp/xdg/corral") / f"llama-server-{llamacpp_build.LLAMA_CPP_PY_VERSION}"
    )
    assert ROOT not in path.parents


def test_a_tampered_sdist_is_refused(tmp_path: Path) -> None:
    """A source archive whose sha256 is not the pinned one is deleted, never built."""
    sdist = tmp_path / "dl" / f"llama_cpp_python-{llamacpp_build.LLAMA_CPP_PY_VERSION}.tar.gz"
    sdist.parent.mkdir()
    sdist.write_bytes(b"not the pinned source")
    with pytest.raises(RuntimeError, match="sha256"):
        llamacpp_build._sdist(tmp_path)
    assert not sdist.exists()


def test_the_tiny_model_is_deterministic(tmp_path: Path) -> None:
    """The same seed writes the same bytes; the cached model is that file."""
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    write_tiny_gguf(a)
    write_tiny_gguf(b)
    digest = hashlib.sha256(a.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(b.read_bytes()).hexdigest()
    _, cached = require_built()
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == digest
