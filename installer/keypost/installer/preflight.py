"""What `keypost install thunderbird` checks before it writes anything: the trust anchor and
the confirmed fingerprint, the host (it must run), the OS keyring when a password is to be
stored, and that the directory's address answers. Each failure is one InstallError line."""

from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path
from typing import Any

from cryptography import x509

from keypost.core.containers import load_certificates, sha256_fingerprint, to_pem
from keypost.core.dirurl import DirectoryUrl, DirectoryUrlError, parse_directory_url
from keypost.core.errors import ContainerError
from keypost.installer import hostconfig
from keypost.installer.errors import InstallError

_SHA256_HEX = re.compile(r"[0-9A-F]{64}")
# keyring's stand-in when no backend is usable (a headless machine): it raises NoKeyringError.
NO_KEYRING = "keyring.backends.fail.Keyring"
CONNECT_TIMEOUT = 10.0


def normalize_fingerprint(text: str) -> str:
    """`AB:CD:...` from a SHA-256 fingerprint typed with or without colons, in any case (as
    the host compares them); raises InstallError for anything else."""
    digits = "".join(ch for ch in text if ch not in ": \t").upper()
    if not _SHA256_HEX.fullmatch(digits):
        raise InstallError(
            "--fingerprint must be a SHA-256 fingerprint: 64 hex digits, colons allowed"
        )
    return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))


def trust_anchor_pem(path: Path, fingerprint: str | None) -> str:
    """The anchor file (PEM or DER) as PEM, refused as the host would refuse it: not one
    certificate, not a CA, or not the fingerprint the administrator gave."""
    try:
        certs = load_certificates(path.read_bytes())
    except ContainerError as exc:
        raise InstallError(f"trust anchor {path}: {exc}") from None
    if len(certs) != 1:
        raise InstallError(f"trust anchor {path}: one certificate expected, found {len(certs)}")
    cert = certs[0]
    actual = sha256_fingerprint(cert)
    if fingerprint is not None and normalize_fingerprint(fingerprint) != actual:
        raise InstallError(
            f"trust anchor {path} has the fingerprint {actual}, not the one given with"
            f" --fingerprint ({normalize_fingerprint(fingerprint)})"
        )
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise InstallError(f"trust anchor {path} is not a CA certificate")
    return to_pem(cert).decode("ascii")


def check_host(
    status: dict[str, Any],
    *,
    anchor_given: bool,
    fingerprint: str | None,
    username: str | None,
    keyring_needed: bool,
) -> None:
    """Against the host's `status` (it ran, so the launcher's interpreter works): a trust
    anchor to keep when none is given, and an OS keyring when a password will be stored
    or read."""
    anchor = status.get("trust_anchor")
    configured = anchor.get("fingerprint") if isinstance(anchor, dict) else None
    if not anchor_given:
        if not isinstance(configured, str):
            raise InstallError("--trust-anchor is needed: the host has none configured yet")
        if fingerprint is not None and normalize_fingerprint(fingerprint) != configured:
            raise InstallError(
                f"the configured trust anchor has the fingerprint {configured}, not the one"
                f" given with --fingerprint ({normalize_fingerprint(fingerprint)})"
            )
    backend = status.get("keyring_backend")
    unusable = backend in (None, NO_KEYRING) or status.get("password_in_keyring") is None
    if keyring_needed and unusable:
        raise InstallError(
            f"no usable OS keyring for {username}'s password (keyring backend: {backend});"
            " install a keyring backend or run in a desktop session"
        )


def check_interpreter(python: str) -> None:
    """--python runs the host (the launcher will exec it): checked even when no directory
    is configured, since Thunderbird would otherwise find out at the first Encrypt."""
    try:
        hostconfig.ping(hostconfig.host_command(python))
    except hostconfig.HostError as exc:
        reason = str(exc).removeprefix("could not run the keypost host: ")
        raise InstallError(f"--python {python} cannot run the keypost host: {reason}") from None


def host_status(python: str | None) -> dict[str, Any]:
    return hostconfig.status(command=hostconfig.host_command(python))


def check_url(url: str) -> DirectoryUrl:
    """The directory URL reads as the host will read it (keypost.core.dirurl: http:// for
    loopback only); checked before anything is written, online or not."""
    try:
        return parse_directory_url(url.strip())
    except DirectoryUrlError as exc:
        raise InstallError(str(exc)) from None  # never echoes the URL: it may hold a password


def check_reachable(url: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """The directory URL reads as the host will read it (check_url), its host name
    resolves and its port accepts a connection (TLS, the account and the search are the
    host's connection test, run by `configure`)."""
    target = check_url(url)
    if not target.is_ldap and _proxied(target.scheme, target.host):
        return  # the host goes through the proxy: a direct connection proves nothing
    try:
        socket.create_connection((target.host, target.port), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise InstallError(
            f"the directory {target.host}:{target.port} cannot be reached: {reason}"
        ) from None


def _proxied(scheme: str, host: str) -> bool:
    return scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(host)
