"""edge/lean_hpack.py decodes Huffman-coded header strings as hpack's own table does, and
once installed, hpack (and so h2 and grpclib) use it without ever building the table."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import hpack
import pytest
from hpack.exceptions import HPACKDecodingError
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

from edge import lean_hpack

Decoder = Callable[[bytes], bytes]


def _hpack_own() -> Decoder:
    """hpack's table-driven decoder, loaded from its file whatever sys.modules holds."""
    path = Path(hpack.__file__).parent / "huffman_table.py"
    spec = importlib.util.spec_from_file_location("hpack._table_for_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    decode: Decoder = module.decode_huffman
    return decode


def _outcome(decode: Decoder, data: bytes) -> bytes | str:
    try:
        return decode(data)
    except HPACKDecodingError:
        return "refused"


def test_same_answers_as_hpacks_table() -> None:
    """Strings round-trip; random and crafted bytes decode or are refused as hpack's table does."""
    # Refusals: EOS inside, padding of 8 or more bits, padding not all ones.
    theirs = _hpack_own()
    encoder = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
    rng = random.Random(7)
    for _ in range(2000):
        plain = rng.randbytes(rng.randrange(0, 48))
        coded = encoder.encode(plain)
        assert lean_hpack.decode_huffman(coded) == theirs(coded) == plain
    crafted = [b"\xff", b"\xff\xff", b"\xff\xff\xff\xfc", b"\xff\xff\xff\xff", b"\x00", b"\x07",
               b"\x1f", b"\xfe", b"\x1f\xff", encoder.encode(b"a") + b"\xff"]  # fmt: skip
    garbage = [rng.randbytes(rng.randrange(1, 12)) for _ in range(20000)]
    for data in crafted + garbage:
        assert _outcome(lean_hpack.decode_huffman, data) == _outcome(theirs, data), data.hex()
    assert lean_hpack.decode_huffman(b"") == b""


def test_installed_before_hpack_it_replaces_the_table() -> None:
    """Installed first: h2 uses it, hpack's table module never loads, Huffman headers round-trip."""
    code = """
import sys
from edge import lean_hpack
lean_hpack.install()
import grpclib.client, hpack.hpack
assert hpack.hpack.decode_huffman is lean_hpack.decode_huffman
assert not hasattr(sys.modules["hpack.huffman_table"], "HUFFMAN_TABLE")
headers = [(b":status", b"200"), (b"grpc-message", b"Deadline Exceeded: caf\\xc3\\xa9")]
block = hpack.Encoder().encode(headers, huffman=True)
assert hpack.Decoder().decode(block, raw=True) == headers
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize("imported", ["hpack", "hpack.huffman_table"])
def test_install_leaves_an_imported_hpack_alone(imported: str) -> None:
    """With hpack (or the table) imported already, install changes nothing."""
    code = f"""
import sys, {imported}
from edge import lean_hpack
before = sys.modules.get("hpack.huffman_table")
lean_hpack.install()
assert sys.modules.get("hpack.huffman_table") is before
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr
