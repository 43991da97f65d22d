"""edge/lean_tls.py: aiohttp imported without the CA roots and MIME table it rarely uses."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import asyncio, json, mimetypes, ssl, uvloop
from edge.lean_tls import import_aiohttp
import_aiohttp()
import aiohttp, aiohttp.connector as c, aiohttp.web_fileresponse as files
verified = c._SSL_CONTEXT_VERIFIED
found = {
    "at_import": verified.cert_store_stats()["x509_ca"],
    "mime_read": mimetypes.inited,
    "file_json": files.CONTENT_TYPES.guess_type("a.json")[0],
    "unverified": c._SSL_CONTEXT_UNVERIFIED.cert_store_stats()["x509_ca"],
    "unverified_mode": int(c._SSL_CONTEXT_UNVERIFIED.verify_mode),
    "restored": "set_default_verify_paths" not in ssl.SSLContext.__dict__,
}

async def https_attempt():
    async def hang_up(reader, writer):
        writer.close()
    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession() as session:
        try:
            await session.get(f"https://127.0.0.1:{port}/")
        except aiohttp.ClientError as exc:
            found["error"] = type(exc).__name__
    server.close()

uvloop.run(https_attempt())
found["after_connect"] = verified.cert_store_stats()["x509_ca"]
found["verified_mode"] = int(verified.verify_mode)
found["hostname"] = verified.check_hostname
found["system"] = ssl.create_default_context().cert_store_stats()["x509_ca"]
found["mime_table"] = len(mimetypes.types_map) if mimetypes.guess_type("a.json") else 0
print(json.dumps(found))
"""
SYSTEM_MIME = "import mimetypes; mimetypes.init(); print(len(mimetypes.types_map))"


def test_roots_load_on_first_connection_and_mime_table_on_first_guess() -> None:
    """Fresh interpreter: TLS roots load on the first https connection, MIME on the first guess."""
    # The unverified (CERT_NONE) context never holds any roots.
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["system"] > 0  # this machine has a trust store to compare with
    assert found["at_import"] == 0
    assert "error" in found  # the plain server hung up on the handshake
    assert found["after_connect"] == found["system"]
    assert found["verified_mode"] == 2 and found["hostname"]  # ssl.CERT_REQUIRED
    assert found["unverified"] == 0 and found["unverified_mode"] == 0  # ssl.CERT_NONE
    assert found["restored"]
    assert found["mime_read"] is False
    assert found["file_json"] == "application/json"
    system = subprocess.run([sys.executable, "-c", SYSTEM_MIME], capture_output=True, text=True)
    assert found["mime_table"] == int(system.stdout)
