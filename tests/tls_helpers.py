"""Test certificates for a TLS redis-server: a CA of the test's own, made by openssl; shared by the
TLS tests of one Redis (tests/test_redis_security.py) and of a cluster (tests/test_stream_cluster.py)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

OPENSSL = shutil.which("openssl")


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing of this server's


def _openssl(directory: Path, *args: str) -> None:
    out = subprocess.run([OPENSSL, *args], cwd=directory, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"openssl {' '.join(args)}:\n{out.stderr[-2000:]}"


def _ca(directory: Path, name: str, subject: str) -> None:
    _openssl(directory, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "2", "-subj", subject, "-keyout", f"{name}.key", "-out", f"{name}.crt",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def _signed(directory: Path, name: str, subject: str, extensions: str) -> None:
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(directory, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", subject, "-keyout", f"{name}.key", "-out", f"{name}.csr")
    _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")


def make_certificates(d: Path) -> Certificates:
    """A CA, another CA, and a server (127.0.0.1) and a client certificate signed by the first, in `d`;
    skips the test without openssl."""
    if OPENSSL is None:
        pytest.skip("openssl is not installed (apt-get install openssl): it makes the test certificates")
    _ca(d, "ca", "/CN=dmd test CA")
    _ca(d, "other-ca", "/CN=another CA")
    _signed(d, "server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _signed(d, "client", "/CN=dmd worker", "extendedKeyUsage=clientAuth\n")
    return Certificates(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key",
                        d / "other-ca.crt")
