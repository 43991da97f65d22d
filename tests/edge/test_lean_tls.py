"""edge/lean_tls.py: aiohttp imported with one copy of the system's CA roots, not two."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, ssl
from edge.lean_tls import import_aiohttp
import_aiohttp()
import aiohttp.connector as c
print(json.dumps({
    "verified": c._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"],
    "verified_mode": int(c._SSL_CONTEXT_VERIFIED.verify_mode),
    "hostname": c._SSL_CONTEXT_VERIFIED.check_hostname,
    "unverified": c._SSL_CONTEXT_UNVERIFIED.cert_store_stats()["x509_ca"],
    "unverified_mode": int(c._SSL_CONTEXT_UNVERIFIED.verify_mode),
    "system": ssl.create_default_context().cert_store_stats()["x509_ca"],
    "restored": "set_default_verify_paths" not in ssl.SSLContext.__dict__,
}))
"""


def test_only_the_verified_context_holds_the_roots() -> None:
    """In a fresh interpreter: aiohttp's verified context holds every system root and still
    verifies; the unverified one (CERT_NONE) holds none; later contexts load them again."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["system"] > 0  # this machine has a trust store to compare with
    assert found["verified"] == found["system"]
    assert found["verified_mode"] == 2 and found["hostname"]  # ssl.CERT_REQUIRED
    assert found["unverified"] == 0 and found["unverified_mode"] == 0  # ssl.CERT_NONE
    assert found["restored"]
