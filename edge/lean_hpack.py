"""hpack's Huffman decoder without its 4,096-tuple state table (~0.3 MiB per edge process).

grpclib speaks HTTP/2 through h2, whose HPACK decoder (the `hpack` package) decodes
Huffman-coded header strings with a table of 4,096 three-tuples built at import. The edge
decodes such strings only when a control-plane call opens or answers, a few times a
minute: `install` puts a decoder built from hpack's own code table (257 codes and their
lengths) in the table module's place before hpack is imported. It decodes bit by bit
(1.2 µs per coded byte here, hpack's table 0.18: ~40 µs for a 36-byte header value, a few
times a minute), refuses what hpack's refuses (the EOS symbol, padding
that is longer than 7 bits or not all ones: RFC 7541, 5.2), and tests/edge/test_lean_hpack.py
checks it against hpack's own on random and crafted strings.

Nothing changes when hpack was imported already.
"""

from __future__ import annotations

import sys
import types
from typing import Final

_MODULE: Final = "hpack.huffman_table"
_EOS: Final = 256


_symbols: dict[int, int] = {}  # length << 32 | code -> symbol; codes are 5 to 30 bits


def decode_huffman(huffman_string: bytes | bytearray | memoryview | None) -> bytes:
    """The bytes a Huffman-coded header string stands for; HPACKDecodingError when it is not
    a valid one."""
    from hpack.exceptions import HPACKDecodingError

    if not huffman_string:
        return b""
    symbols = _symbols or _load()
    out = bytearray()
    code = length = 0
    for byte in bytes(huffman_string):
        for shift in (7, 6, 5, 4, 3, 2, 1, 0):
            code = code << 1 | (byte >> shift) & 1
            length += 1
            symbol = symbols.get(length << 32 | code)
            if symbol is not None:
                if symbol == _EOS:
                    raise HPACKDecodingError("Invalid Huffman string")
                out.append(symbol)
                code = length = 0
    if length > 7 or code != (1 << length) - 1:
        raise HPACKDecodingError("Incomplete Huffman string")
    return bytes(out)


def _load() -> dict[int, int]:
    # hpack's encoder constants: imported at the first decode, when hpack is loaded
    from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

    for symbol, (code, length) in enumerate(zip(REQUEST_CODES, REQUEST_CODES_LENGTH, strict=True)):
        _symbols[length << 32 | code] = symbol
    return _symbols


def install() -> None:
    """Make this decoder hpack's, unless hpack is imported already."""
    if "hpack" in sys.modules or _MODULE in sys.modules:
        return
    module = types.ModuleType(_MODULE, "hpack's Huffman decoder, by edge/lean_hpack.py")
    module.decode_huffman = decode_huffman  # type: ignore[attr-defined]
    sys.modules[_MODULE] = module
