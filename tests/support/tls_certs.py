"""Throwaway certificate authorities for the TLS tests, made with the openssl command."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest

DAYS = "2"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def openssl_available() -> None:
    """Skip the calling test when there is no openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")


class CertificateAuthority:
    """A self-signed CA in ``directory``; ``issue`` signs server or client certificates."""

    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.name = name
        self.cert = directory / f"{name}.crt"
        self.key = directory / f"{name}.key"
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(self.key), "-out", str(self.cert), "-days", DAYS, "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip

    def issue(self, name: str, *, hosts: tuple[str, ...] = (), client: bool = False) -> tuple[Path, Path]:
        """A certificate and key named ``name``; ``hosts`` (DNS names or IPs) go in subjectAltName."""
        cert, key, csr, ext = (self.dir / f"{name}{suffix}" for suffix in (".crt", ".key", ".csr", ".ext"))
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
        )  # fmt: skip
        lines = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage={'clientAuth' if client else 'serverAuth'}",
            "authorityKeyIdentifier=keyid,issuer",
            "subjectKeyIdentifier=hash",
        ]
        if hosts:
            lines.append("subjectAltName=" + ",".join(f"{_san_kind(h)}:{h}" for h in hosts))
        ext.write_text("\n".join(lines) + "\n")
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key), "-CAcreateserial",
            "-days", DAYS, "-out", str(cert), "-extfile", str(ext),
        )  # fmt: skip
        return cert, key


def _san_kind(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return "DNS"
    return "IP"
