"""Shared by the TLS tests: a throwaway CA and server certificates for localhost/127.0.0.1 made
with the openssl program, and clients that verify against that CA only (like curl --cacert)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Pki:
    folder: Path
    ca: Path  # the CA certificate the clients trust

    def issue(self, name: str) -> tuple[Path, Path]:
        """A certificate for localhost and 127.0.0.1 whose common name is `name`, signed by the CA;
        (cert file, key file), the key made 0600."""
        key, csr, cert = (self.folder / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        extensions = self.folder / f"{name}.ext"
        extensions.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                              "extendedKeyUsage=serverAuth\n")
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key.name,
                 "-out", csr.name, "-subj", f"/CN={name}", cwd=self.folder)
        _openssl("x509", "-req", "-in", csr.name, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", cert.name, "-days", "2", "-extfile", extensions.name, cwd=self.folder)
        os.chmod(key, 0o600)
        return cert, key


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
             "-out", "ca.pem", "-days", "2", "-subj", "/CN=safeship test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=folder)
    return Pki(folder, folder / "ca.pem")


def client_context(ca: Path) -> ssl.SSLContext:
    """Trusts the test CA alone and checks the host name."""
    return ssl.create_default_context(cafile=str(ca))


def install(source: tuple[Path, Path], target: tuple[Path, Path]) -> None:
    """Put a pair where a router reads it, each file replaced at once (write aside, rename), as
    certbot and most deploy tools do."""
    for src, dst in zip(source, target, strict=True):
        aside = dst.with_name(f".{dst.name}.new")
        aside.write_bytes(src.read_bytes())
        os.chmod(aside, 0o600)
        os.replace(aside, dst)


class TlsClient:
    """One keep-alive HTTPS connection to 127.0.0.1:port, verified against the CA as `localhost`."""

    def __init__(self, port: int, ca: Path, *, timeout: float = 10.0) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = client_context(ca).wrap_socket(raw, server_hostname="localhost")
        self.file = self.sock.makefile("rb")

    def common_name(self) -> str:
        cert = self.sock.getpeercert()
        assert cert is not None
        for rdn in cert["subject"]:
            for pair in rdn:
                if pair[0] == "commonName":
                    return str(pair[1])
        raise AssertionError(f"no common name in {cert['subject']}")

    def get(self, path: str = "/") -> tuple[int, dict[str, str], bytes]:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        return read_response(self.file)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def read_response(file: object) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body) of one Content-Length response read from `file`."""
    readline = file.readline  # type: ignore[attr-defined]
    status_line = readline().decode("latin-1")
    if not status_line:
        raise ConnectionError("the connection closed before a response")
    status = int(status_line.split(" ", 2)[1])
    headers: dict[str, str] = {}
    while (line := readline().decode("latin-1").strip()) != "":
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = file.read(int(headers.get("content-length", "0")))  # type: ignore[attr-defined]
    return status, headers, body


def plain_request(port: int, head: str, *, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request (the whole head as given) to 127.0.0.1:port; its response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock, sock.makefile("rb") as file:
        sock.sendall(head.encode("latin-1"))
        return read_response(file)
