"""Host test helpers: an in-memory keyring, a real directory runner, an in-process directory."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import keyring
import keyring.backend
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pki_util import key_pem, make_ca, server_cert
from proc_util import origin_of, start_directory_serve

from keypost.core.address import parse_address
from keypost.core.containers import (
    ContainerRequest,
    DirectoryCA,
    GatewayKey,
    sha256_fingerprint,
    to_der,
    to_pem,
)
from keypost.core.dirurl import DirectoryUrl
from keypost.core.policy import DirectoryView, decide
from keypost.core.types import Purpose, Requestor, Role
from keypost.host.actions import Host
from keypost.host.directory_client import RawContainer

KEYPOST = str(Path(sys.executable).with_name("keypost"))
PASSWORD = "correct horse battery staple 7f3a"  # searched for in files and logs by tests


def parse_mail(data: bytes | str) -> EmailMessage:
    """A message as the modern email API reads it (get_content, iter_parts)."""
    raw = data.encode() if isinstance(data, str) else data
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


class MemoryKeyring(keyring.backend.KeyringBackend):
    """A keyring backend that keeps passwords in a dict (tests only)."""

    priority = 1

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if (service, username) not in self.store:
            import keyring.errors

            raise keyring.errors.PasswordDeleteError("not found")
        del self.store[(service, username)]


@dataclass(frozen=True)
class GatewayKeys:
    keys: dict[str, rsa.RSAPrivateKey]  # domain -> gateway encryption key

    def public_pem(self, domain: str) -> bytes:
        return self.keys[domain].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass(frozen=True)
class Directory:
    """A running `keypost directory serve` (example.com and example.org served; user alice
    of example.com with PASSWORD)."""

    ldap_url: str  # plain, with StartTLS offered
    http_url: str
    anchor_pem: str
    fingerprint: str
    data: Path
    ldaps_url: str
    tls_ca_pem: str  # the CA of the LDAP server's TLS certificate (IP 127.0.0.1)
    https_url: str  # the HTTP API over TLS, same certificate


def tls_files(base: Path) -> tuple[Path, Path, str]:
    """A TLS CA and a server certificate for 127.0.0.1 only (the tests reaching it as
    `localhost` must be refused): (cert file, key file, CA PEM)."""
    ca = make_ca("test TLS CA")
    key, cert = server_cert(ca, ("127.0.0.1",))
    cert_file, key_file = base / "tls.crt", base / "tls.key"
    cert_file.write_bytes(to_pem(cert))
    key_file.write_bytes(key_pem(key))
    return cert_file, key_file, to_pem(ca[1]).decode()


def directory_available() -> bool:
    if not Path(KEYPOST).exists():
        return False
    out = subprocess.run([KEYPOST, "--help"], capture_output=True, text=True, check=False)
    return re.search(r"\bdirectory\b", out.stdout) is not None


def _run(*args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        [KEYPOST, "directory", *args], input=stdin, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"keypost directory {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


def start_directory(
    base: Path, gateway_keys: GatewayKeys, *serve_options: str, max_addresses: int | None = None
) -> tuple[Directory, subprocess.Popen[str]]:
    """Initialise a directory in `base` and serve it on ephemeral loopback ports
    (`max_addresses`: its limit of addresses per request, when not the default)."""
    data = base / "dir"
    _run("init", "--data", str(data), "--url", "ldap://127.0.0.1/")
    if max_addresses is not None:
        settings = data / "directory.toml"
        text, n = re.subn(r"(?m)^max_addresses = \d+$", f"max_addresses = {max_addresses}",
                          settings.read_text())
        assert n == 1, "directory.toml has no max_addresses line"
        settings.write_text(text)
    for domain in gateway_keys.keys:
        pem = base / f"{domain}.pem"
        pem.write_bytes(gateway_keys.public_pem(domain))
        _run("domain", "add", domain, "--data", str(data), "--encryption-cert", str(pem))
    _run("account", "add", "alice", "--data", str(data), "--role", "user",
         "--domain", "example.com", "--password-stdin", stdin=PASSWORD + "\n")
    anchor = base / "anchor.pem"
    cert_file, key_file, tls_ca = tls_files(base)
    _run("ca", "export", "--data", str(data), "--out", str(anchor))
    proc, urls = start_directory_serve(
        data, base / "directory.log", "--tls-cert", str(cert_file), "--tls-key", str(key_file),
        "--log-level", "warning", *serve_options)
    fp = sha256_fingerprint(x509.load_pem_x509_certificate(anchor.read_bytes()))
    ldap, http, ldaps, https = (origin_of(urls[s]) for s in ("ldap", "http", "ldaps", "https"))
    directory = Directory(ldap, http, anchor.read_text(), fp, data, ldaps, tls_ca, https)
    return directory, proc


def host_env(config: Path, cache: Path, keyring_file: Path) -> dict[str, str]:
    """Environment for a `keypost host` subprocess: private dirs and a file keyring."""
    env = dict(os.environ)
    env["KEYPOST_CONFIG_DIR"] = str(config)
    env["KEYPOST_CACHE_DIR"] = str(cache)
    env["PYTHON_KEYRING_BACKEND"] = "keyrings.alt.file.PlaintextKeyring"
    env["XDG_DATA_HOME"] = str(keyring_file)
    return env


class PolicyDirectory:
    """An in-process stand-in for the directory *transport* (the real one is tested in
    test_directory_client.py): real containers from a real DirectoryCA, chosen by the
    core's policy table, so resolver/action tests need no server."""

    def __init__(self, ca: Any, gateway_keys: GatewayKeys, requestor_domain: str | None,
                 genuine: dict[str, bytes] | None = None) -> None:
        self.ca = ca
        self.keys = gateway_keys
        self.requestor_domain = requestor_domain
        self.genuine = genuine or {}
        self.calls: list[list[str]] = []
        self.fail: Exception | None = None
        self.closed = 0
        self.lifetime: dt.timedelta | None = None

    def fetch(
        self, addresses: Sequence[str], while_waiting: Callable[[], object] | None = None
    ) -> dict[str, list[RawContainer]]:
        self.calls.append(list(addresses))
        if self.fail is not None:
            raise self.fail
        if while_waiting is not None:
            while_waiting()  # as the LDAP client does between request and answer
        view = DirectoryView(frozenset(self.keys.keys),
                             frozenset(parse_address(a).key() for a in self.genuine))
        requestor = (Requestor.user(self.requestor_domain)
                     if self.requestor_domain else Requestor.anonymous())
        out: dict[str, list[RawContainer]] = {}
        for text in addresses:
            addr = parse_address(text)
            found: list[RawContainer] = []
            for spec in decide(requestor, addr, Purpose.ENCRYPT, view).specs:
                if spec.role is Role.GENUINE:
                    found.append(RawContainer(self.genuine[str(addr)]))
                    continue
                assert spec.domain is not None
                key = GatewayKey(self.keys.keys[spec.domain].public_key())
                cert = self.ca.issue(ContainerRequest(addr, Purpose.ENCRYPT, key, self.lifetime))
                found.append(RawContainer(to_der(cert), spec.domain))
            out[addr.key()] = found
        return out

    def check(self) -> bool:
        self.fetch(["connection-test@keypost.invalid"])
        return self.requestor_domain is not None

    def close(self) -> None:
        self.closed += 1


class Factory:
    """Hands the host a PolicyDirectory and records what the host passed to it."""

    def __init__(self, directory: PolicyDirectory) -> None:
        self.directory = directory
        self.seen: list[tuple[str, str | None, str | None]] = []

    def __call__(self, url: DirectoryUrl, user: str | None, password: str | None,
                 tls: bytes | None, timeout: float) -> PolicyDirectory:
        self.seen.append((url.url, user, password))
        return self.directory


def call(host: Host, action: str, **params: Any) -> dict[str, Any]:
    return host.handle({"id": 1, "action": action, "params": params})


def ok(host: Host, action: str, **params: Any) -> dict[str, Any]:
    reply = call(host, action, **params)
    assert reply["ok"] is True, reply
    result: dict[str, Any] = reply["result"]
    return result


def code(reply: dict[str, Any]) -> int:
    assert reply["ok"] is False, reply
    assert set(reply["error"]) >= {"code", "name", "message"}
    value: int = reply["error"]["code"]
    return value


def configure(host: Host, ca: DirectoryCA, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "directory": "ldap://127.0.0.1:3890",
        "username": "alice",
        "password": PASSWORD,
        "trust_anchor_pem": to_pem(ca.certificate).decode(),
        "trust_anchor_fingerprint": sha256_fingerprint(ca.certificate).lower(),
    }
    params.update(extra)
    # `...` as a value means "leave the parameter out".
    return call(host, "configure", **{k: v for k, v in params.items() if v is not ...})
