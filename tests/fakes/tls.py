"""A throwaway certificate authority for tests: a CA and a server certificate for 127.0.0.1.

Made with the openssl command line (present wherever Python's ssl module is), once per
directory; the edge trusts the CA through `extra_ca_file`, so the real verification path
(chain, hostname/IP, expiry) is exercised against the fakes of hosted providers.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CertAuthority:
    ca_file: str
    cert_file: str
    key_file: str

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)


def make_ca(directory: Path) -> CertAuthority:
    """A CA and a server certificate (SAN IP:127.0.0.1, DNS:localhost) under directory."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is needed to make the test CA")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca-key.pem", directory / "ca.pem"
    key, csr, cert = directory / "key.pem", directory / "server.csr", directory / "cert.pem"
    ext = directory / "san.ext"
    if cert.exists():
        return CertAuthority(str(ca_cert), str(cert), str(key))
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", str(ca_key), "-out", str(ca_cert), "-subj", "/CN=Corral test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(ext))  # fmt: skip
    return CertAuthority(str(ca_cert), str(cert), str(key))
