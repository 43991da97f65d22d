"""The committed protobuf code matches what proto/generate.py produces now."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location(
        "corral_proto_generate", ROOT / "proto/generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    """Regenerating from proto/ gives byte-identical files to the committed ones."""
    gen = _generator()
    outputs = gen.generate(tmp_path)
    committed = sorted((ROOT / "corral/v1").glob("*_pb2*.py*"))
    assert [p.name for p in outputs] == [p.name for p in committed], "run ./dev gen"
    for fresh in outputs:
        assert fresh.read_text() == (ROOT / "corral/v1" / fresh.name).read_text(), (
            f"corral/v1/{fresh.name} is stale: run ./dev gen"
        )


def test_etcd_test_server_starts(etcd) -> None:
    """The tests' real etcd stores and returns a key (so etcd is installed and running)."""
    etcd.etcdctl("put", "/corral-selftest/k", "v")
    assert etcd.etcdctl("get", "--print-value-only", "/corral-selftest/k").strip() == "v"
