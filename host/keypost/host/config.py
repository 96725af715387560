"""The host's saved configuration: directory URL, account name, pinned trust anchor, roots.

Stored as `host.toml` plus PEM files in the config dir. Secrets never go here: the
password lives only in the OS keyring (keyring_store).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from keypost.core import dirurl
from keypost.core.containers import load_certificates, sha256_fingerprint, to_pem
from keypost.core.dirurl import DirectoryUrl, DirectoryUrlError, UrlProblem
from keypost.core.errors import ContainerError
from keypost.host.errors import BadRequest, NotConfigured, TrustAnchorMismatch
from keypost.host.paths import config_dir, write_private

CONFIG_FILE = "host.toml"
ANCHOR_FILE = "trust-anchor.pem"
ROOTS_FILE = "extra-roots.pem"
TLS_CA_FILE = "tls-ca.pem"
DEFAULT_BASE_DN = "dc=keypost"
DEFAULT_TIMEOUT = 10.0  # seconds per directory operation


def parse_directory_url(text: str) -> DirectoryUrl:
    """ldap://, ldaps://, https:// (and http:// for loopback hosts only), surrounding
    spaces ignored (keypost.core.dirurl). Raises BadRequest, whose message never repeats
    the URL: it may hold a password."""
    try:
        return dirurl.parse_directory_url(text.strip(), ldap_base=DEFAULT_BASE_DN)
    except DirectoryUrlError as exc:
        message = str(exc)
        if exc.problem is UrlProblem.CREDENTIALS:
            message = ("put the user name in the username field, not in the directory URL "
                       "(an @ in the path is written %40)")
        raise BadRequest(message, {"param": "directory"}) from None


@dataclass(frozen=True)
class TrustAnchor:
    certificate: x509.Certificate
    pem: bytes

    @property
    def fingerprint(self) -> str:
        return sha256_fingerprint(self.certificate)


def normalize_fingerprint(text: str) -> str:
    hexdigits = "".join(ch for ch in text if ch not in ": \t").upper()
    return ":".join(hexdigits[i : i + 2] for i in range(0, len(hexdigits), 2))


def parse_trust_anchor(pem: str | bytes, expected_fingerprint: str | None = None) -> TrustAnchor:
    """One CA certificate (PEM or DER); checked against the fingerprint the user confirmed."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    try:
        certs = load_certificates(data)
    except ContainerError as exc:
        raise BadRequest(f"trust anchor: {exc}", {"param": "trust_anchor_pem"}) from None
    if len(certs) != 1:
        raise BadRequest(
            f"the trust anchor must be one certificate, got {len(certs)}",
            {"param": "trust_anchor_pem"},
        )
    cert = certs[0]
    anchor = TrustAnchor(cert, to_pem(cert))
    if expected_fingerprint:
        expected = normalize_fingerprint(expected_fingerprint)
        if expected != anchor.fingerprint:
            raise TrustAnchorMismatch(
                "the trust anchor's fingerprint is not the one confirmed",
                {"expected": expected, "actual": anchor.fingerprint},
            )
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise TrustAnchorMismatch(
            "the trust anchor is not a CA certificate", {"actual": anchor.fingerprint}
        )
    return anchor


def parse_roots(pem: str | bytes, param: str) -> tuple[x509.Certificate, ...]:
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    try:
        return tuple(load_certificates(data))
    except ContainerError as exc:
        raise BadRequest(f"{param}: {exc}", {"param": param}) from None


@dataclass(frozen=True)
class HostConfig:
    directory: DirectoryUrl
    username: str | None
    anchor: TrustAnchor
    extra_roots: tuple[x509.Certificate, ...] = ()
    tls_ca_pem: bytes | None = None
    timeout: float = DEFAULT_TIMEOUT


def from_params(params: dict[str, Any], old: HostConfig | None) -> HostConfig:
    """The configuration a `configure` request asks for (PROTOCOL.md), on top of the old
    one: absent optional parameters keep their old values. Raises BadRequest or
    TrustAnchorMismatch."""
    directory = params.get("directory")
    if not isinstance(directory, str):
        raise BadRequest("directory (URL) is required", {"param": "directory"})
    url = parse_directory_url(directory)
    username = params.get("username") or None
    if username is not None and (not isinstance(username, str) or not username.strip()):
        raise BadRequest("username must be a string", {"param": "username"})
    username = username.strip() if username else None
    anchor_pem = params.get("trust_anchor_pem")
    fingerprint = params.get("trust_anchor_fingerprint")
    expected = str(fingerprint) if fingerprint else None
    if anchor_pem:
        anchor = parse_trust_anchor(str(anchor_pem), expected)
    elif old is not None:
        anchor = parse_trust_anchor(old.anchor.pem, expected)
    else:
        raise BadRequest("trust_anchor_pem is required", {"param": "trust_anchor_pem"})
    roots = old.extra_roots if old else ()
    if "extra_roots_pem" in params:
        value = params["extra_roots_pem"]
        roots = parse_roots(str(value), "extra_roots_pem") if value else ()
    tls_ca = old.tls_ca_pem if old else None
    if "tls_ca_pem" in params:
        value = params["tls_ca_pem"]
        tls_ca = None
        if value:
            parse_roots(str(value), "tls_ca_pem")  # must be PEM certificates
            tls_ca = str(value).encode("ascii", "replace")
    timeout = old.timeout if old else DEFAULT_TIMEOUT
    return HostConfig(url, username, anchor, roots, tls_ca, timeout)


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(ch if ord(ch) >= 0x20 and ch != "\x7f" else f"\\u{ord(ch):04x}"
                      for ch in escaped)
    return f'"{escaped}"'


def save(config: HostConfig, folder: Path | None = None) -> Path:
    """Write host.toml and the PEM files; returns the config folder."""
    folder = folder or config_dir()
    lines = [
        "# keypost host configuration (written by `keypost host`; the password is in the",
        "# OS keyring, service \"keypost\", never here).",
        f"directory = {_toml_string(config.directory.url)}",
        f"username = {_toml_string(config.username or '')}",
        f"timeout = {float(config.timeout)!r}",
        "",
    ]
    write_private(folder / ANCHOR_FILE, config.anchor.pem)
    for name, data in (
        (ROOTS_FILE, b"".join(to_pem(c) for c in config.extra_roots) or None),
        (TLS_CA_FILE, config.tls_ca_pem),
    ):
        if data:
            write_private(folder / name, data)
        else:
            (folder / name).unlink(missing_ok=True)
    write_private(folder / CONFIG_FILE, "\n".join(lines).encode("utf-8"))
    return folder


MAX_TIMEOUT = 86400.0  # a day, as the gateway's timeouts; far more overflows socket timeouts


def _timeout(value: object) -> float:
    """host.toml's timeout (edited by hand): a positive number of seconds, at most a day
    (nan and inf fail the comparison; 1e10 would pass a finiteness check, and then
    socket.settimeout raised OverflowError on every lookup)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("timeout must be a number of seconds")
    if not 0 < value <= MAX_TIMEOUT:
        raise ValueError(f"timeout must be above 0 and at most {MAX_TIMEOUT:.0f} seconds, "
                         f"not {value}")
    return float(value)


def load(folder: Path | None = None) -> HostConfig | None:
    """The saved configuration, or None when there is none. Raises NotConfigured if broken."""
    folder = folder or config_dir()
    path = folder / CONFIG_FILE
    if not path.exists():
        return None
    try:
        data = tomllib.loads(path.read_text("utf-8"))
        directory = parse_directory_url(str(data["directory"]))
        anchor = parse_trust_anchor((folder / ANCHOR_FILE).read_bytes())
        roots_path = folder / ROOTS_FILE
        roots = parse_roots(roots_path.read_bytes(), "extra roots") if roots_path.exists() else ()
        tls_path = folder / TLS_CA_FILE
        tls_ca = tls_path.read_bytes() if tls_path.exists() else None
        timeout = _timeout(data.get("timeout", DEFAULT_TIMEOUT))
    except (OSError, KeyError, ValueError, BadRequest, TrustAnchorMismatch) as exc:
        raise NotConfigured(
            f"the configuration in {folder} is unreadable ({exc}); run configure"
        ) from None
    username = str(data.get("username") or "") or None
    return HostConfig(directory, username, anchor, roots, tls_ca, timeout)
