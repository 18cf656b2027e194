"""Test certificates made with the openssl command: a CA and a server certificate it signed,
for 127.0.0.1 and localhost (the daemon's TLS listener, an object store served over HTTPS)."""

from __future__ import annotations

import os
import subprocess


def openssl(*args: str, cwd: str) -> None:
    """Run the openssl command in `cwd`."""
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(d: str) -> dict[str, str]:
    """In directory `d`: a CA, and a server certificate for 127.0.0.1 / localhost signed by it
    ({"ca", "cert", "key"}: paths of PEM files)."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=cairn test CA", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost", cwd=d)
    with open(os.path.join(d, "san.ext"), "w", encoding="utf-8") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=d)
    return {"ca": os.path.join(d, "ca.pem"), "cert": os.path.join(d, "server.pem"),
            "key": os.path.join(d, "server.key")}
