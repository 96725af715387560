"""Fixtures: a directory data dir made through the CLI and one `keypost directory serve`
subprocess on ephemeral ports, shared by the whole test session."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pki_util import key_pem, make_ca, rsa_key, server_cert
from proc_util import start_directory_serve, stop

from keypost.core.containers import to_pem

KEYPOST = [sys.executable, "-m", "keypost.core.cli"]
DOMAIN = "example.com"
OTHER = "example.org"
USER, USER_PW = "alice", "alice-secret-pw"
GATEWAY, GATEWAY_PW = "gw", "gateway-secret-pw"
SUFFIX = "dc=keypost"


def keypost(*args: str, stdin: str | None = None, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*KEYPOST, *args], input=stdin, capture_output=True, text=True,
                          timeout=120, env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"keypost {' '.join(args)} failed: {done.stderr}")
    return done


def write_rsa(path: Path, bits: int = 2048) -> tuple[rsa.RSAPrivateKey, Path]:
    key = rsa_key(bits)
    path.write_bytes(key_pem(key))
    pub = path.with_suffix(".pub.pem")
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, pub


def tls_material(folder: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1/localhost -> (ca, cert, key)."""
    ca = make_ca("test TLS CA")
    key, cert = server_cert(ca, ("localhost", "127.0.0.1"))
    paths = folder / "tls-ca.pem", folder / "tls-cert.pem", folder / "tls-key.pem"
    paths[0].write_bytes(to_pem(ca[1]))
    paths[1].write_bytes(to_pem(cert))
    paths[2].write_bytes(key_pem(key))
    return paths


@dataclass(frozen=True)
class Directory:
    """A running directory and what the tests need to talk to it."""

    data: Path
    ca_file: Path  # `ca export` output
    ldap: tuple[str, int]
    ldaps: tuple[str, int]
    http: str  # base URL ending in /
    https: str  # the same API over TLS (server certificate from `tls_ca`)
    tls_ca: Path
    gateway_key: rsa.RSAPrivateKey  # example.com encryption key
    gateway_signing_key: rsa.RSAPrivateKey
    other_key: rsa.RSAPrivateKey  # example.org encryption key
    log: Path

    @property
    def ldap_url(self) -> str:
        return f"ldap://{self.ldap[0]}:{self.ldap[1]}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps[1]}"


def _hostport(url: str) -> tuple[str, int]:
    host_port = url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    return host, int(port)


@pytest.fixture(scope="session")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Directory]:
    root = tmp_path_factory.mktemp("directory")
    data = root / "data"
    keypost("directory", "init", "--data", str(data), "--url", "ldap://127.0.0.1/")
    gw_key, gw_pub = write_rsa(root / "gw-enc.pem")
    sig_key, sig_pub = write_rsa(root / "gw-sig.pem")
    other_key, other_pub = write_rsa(root / "other-enc.pem")
    keypost("directory", "domain", "add", DOMAIN, "--encryption-cert", str(gw_pub),
            "--signing-cert", str(sig_pub), "--data", str(data))
    keypost("directory", "domain", "add", OTHER, "--encryption-cert", str(other_pub),
            "--data", str(data))
    for name, role, pw in ((USER, "user", USER_PW), (GATEWAY, "gateway", GATEWAY_PW)):
        keypost("directory", "account", "add", name, "--role", role, "--domain", DOMAIN,
                "--password-stdin", "--data", str(data), stdin=pw + "\n")
    ca_file = root / "ca.pem"
    keypost("directory", "ca", "export", "--out", str(ca_file), "--data", str(data))
    tls_ca, tls_cert, tls_key = tls_material(root)
    log = root / "serve.log"
    with serving(data, log, "--tls-cert", str(tls_cert), "--tls-key", str(tls_key)) as urls:
        yield Directory(
            data=data, ca_file=ca_file, ldap=_hostport(urls["ldap"]),
            ldaps=_hostport(urls["ldaps"]), http=urls["http"], https=urls["https"],
            tls_ca=tls_ca, gateway_key=gw_key, gateway_signing_key=sig_key,
            other_key=other_key, log=log)


@contextlib.contextmanager
def serving(data: Path, log: Path, *extra: str,
            preexec_fn: Callable[[], None] | None = None) -> Iterator[dict[str, str]]:
    """`keypost directory serve` on ephemeral loopback ports: every listener (ldaps and
    https when `extra` gives TLS material) -> {scheme: URL}, until the block ends."""
    with serve_process(data, log, *extra, preexec_fn=preexec_fn) as (_, urls):
        yield urls


@contextlib.contextmanager
def serve_process(data: Path, log: Path, *extra: str,
                  preexec_fn: Callable[[], None] | None = None,
                  ) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """`serving`, with the process too (for tests that signal it themselves)."""
    proc, urls = start_directory_serve(data, log, *extra, preexec_fn=preexec_fn)
    try:
        yield proc, urls
    finally:
        stop(proc, timeout=10)


def spki_der(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def openssl_verify(pem: str | bytes, ca_file: Path,
                   purpose: str = "smimeencrypt") -> subprocess.CompletedProcess[str]:
    """`openssl verify` of one certificate (read from stdin) against the directory CA."""
    data = pem.encode() if isinstance(pem, str) else pem
    return subprocess.run(["openssl", "verify", "-CAfile", str(ca_file), "-purpose", purpose],
                          input=data.decode(), capture_output=True, text=True, timeout=30)



def assert_documented(status: int, body: object, path: str) -> None:
    """A real answer of GET `path` is one the served OpenAPI document describes: its status
    among the path's responses and, for an error, its code in the Error schema's enum."""
    from keypost.directory.http import openapi_document

    doc: Any = openapi_document()
    responses = doc["paths"][path]["get"]["responses"]
    assert str(status) in responses, f"GET {path} answered {status}, not in the OpenAPI document"
    if status >= 400:
        enum = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"][
            "code"]["enum"]
        assert isinstance(body, dict)
        assert body["error"]["code"] in enum, f"error code {body['error']['code']} undocumented"
