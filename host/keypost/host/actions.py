"""The protocol's actions (PROTOCOL.md) and the dispatcher that turns requests into replies.

`Host.handle(request) -> reply` is pure request/response; `server` moves the frames.
Errors raised as HostError become `{ok: false, error: {code, name, message}}`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from keypost.core import smime
from keypost.core.dirurl import DirectoryUrl
from keypost.core.errors import KeypostError, SmimeError
from keypost.host import config as cfg
from keypost.host import keyring_store, paths
from keypost.host.cache import CACHE_FILE, ContainerCache
from keypost.host.compose import (
    build_message,
    header_block,
    parse_compose,
    recipient_mailboxes,
)
from keypost.host.directory_client import DirectoryClient, make_client
from keypost.host.errors import (
    AuthenticationFailed,
    BadRequest,
    EncryptionFailed,
    HostError,
    InternalError,
    KeyringUnavailable,
    NotConfigured,
    NoValidContainer,
    UnknownAction,
    VersionMismatch,
)
from keypost.host.resolve import STATUS_ERROR, STATUS_OK, Resolution, Resolver

PROTOCOL_VERSION = 1
MAX_RECIPIENTS = 500
MAX_ID = 256  # characters of a string request id
log = logging.getLogger("keypost.host")

ClientFactory = Callable[
    [DirectoryUrl, str | None, str | None, bytes | None, float], DirectoryClient
]
Handler = Callable[[dict[str, Any]], dict[str, Any]]


def host_version() -> str:
    try:
        return version("keypost")
    except PackageNotFoundError:
        return "0+unknown"


def _str_list(params: dict[str, Any], name: str) -> list[str]:
    value = params.get(name)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{name} must be a list of strings", {"param": name})
    return value


def _at_most_max_recipients(count: int, param: str) -> None:
    if count > MAX_RECIPIENTS:
        raise BadRequest(f"at most {MAX_RECIPIENTS} recipients", {"param": param})


class Host:
    """One host session: configuration, one directory connection, the container cache."""

    def __init__(
        self,
        config_dir: Path | None = None,
        cache_dir: Path | None = None,
        client_factory: ClientFactory = make_client,
    ) -> None:
        self._config_dir = config_dir or paths.config_dir()
        self._cache_dir = cache_dir or paths.cache_dir()
        self._client_factory = client_factory
        self._cache = ContainerCache(self._cache_dir / CACHE_FILE)
        self._resolver: Resolver | None = None
        self._handlers: dict[str, Handler] = {
            "ping": self.ping,
            "status": self.status,
            "configure": self.configure,
            "test_connection": self.test_connection,
            "lookup": self.lookup,
            "encrypt": self.encrypt,
        }

    # Envelope ---------------------------------------------------------------------

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request object -> one reply object. Never raises."""
        rid = request.get("id")
        if isinstance(rid, bool) or not isinstance(rid, str | int | float) or (
            isinstance(rid, str) and len(rid) > MAX_ID
        ):
            rid = None
        started = time.perf_counter()
        action = request.get("action")
        try:
            if rid is None:
                raise BadRequest("the request needs an id (string or number)", {"param": "id"})
            if not isinstance(action, str):
                raise BadRequest("the request needs an action (string)", {"param": "action"})
            params = request.get("params", {})
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise BadRequest("params must be an object", {"param": "params"})
            handler = self._handlers.get(action)
            if handler is None:
                raise UnknownAction(f"unknown action {action!r}", {"action": action})
            result = handler(params)
            reply: dict[str, Any] = {"id": rid, "ok": True, "result": result}
            outcome = "ok"
        except HostError as exc:
            reply = {"id": rid, "ok": False, "error": exc.to_wire()}
            outcome = exc.code.wire_name
        except Exception:  # a bug: tell the add-on something useful, keep the detail in the log
            log.exception("action %r failed", action)
            bug = InternalError("internal error in the keypost host (see its log)")
            reply = {"id": rid, "ok": False, "error": bug.to_wire()}
            outcome = "internal"
        # Only the action, id, outcome and time: parameters may hold passwords or mail.
        # Known action names only: the log must not carry text the caller chose.
        name = action if isinstance(action, str) and action in self._handlers else "?"
        log.info("%s id=%r -> %s (%.1f ms)", name, rid, outcome,
                 (time.perf_counter() - started) * 1000)
        return reply

    def idle(self) -> None:
        """Deferred work, run after a reply has been written: saving the container cache
        file keeps the add-on waiting for nothing."""
        self._cache.flush()

    def forget_containers(self) -> None:
        """Drop every cached container (memory and file) and remembered verification, e.g.
        for a cold-cache measurement."""
        self._cache.clear()
        if self._resolver is not None:
            self._resolver.verified.clear()

    def close(self) -> None:
        self.idle()
        if self._resolver is not None:
            self._resolver.client.close()
            self._resolver = None

    # Configuration --------------------------------------------------------------------

    def _config(self) -> cfg.HostConfig:
        config = cfg.load(self._config_dir)
        if config is None:
            raise NotConfigured("keypost is not configured: set the directory in the options")
        return config

    def _password(self, username: str | None) -> str | None:
        if not username:
            return None
        password = keyring_store.get_password(username)
        if password is None:
            raise AuthenticationFailed(
                f"no password for {username} in the OS keyring: enter it in the options"
            )
        return password

    def _get_resolver(self) -> Resolver:
        if self._resolver is None:
            config = self._config()
            client = self._client_factory(
                config.directory,
                config.username,
                self._password(config.username),
                config.tls_ca_pem,
                config.timeout,
            )
            self._resolver = Resolver(config, client, self._cache)
        return self._resolver

    # Actions --------------------------------------------------------------------------

    def ping(self, params: dict[str, Any]) -> dict[str, Any]:
        theirs = params.get("protocol")
        if isinstance(theirs, bool) or not isinstance(theirs, int):
            raise BadRequest("ping needs protocol (integer)", {"param": "protocol"})
        if theirs != PROTOCOL_VERSION:
            raise VersionMismatch(
                f"the add-on speaks protocol {theirs}, this host speaks {PROTOCOL_VERSION}: "
                "update both to the same keypost version",
                {"host_protocol": PROTOCOL_VERSION, "addon_protocol": theirs},
            )
        addon = params.get("version")
        return {
            "protocol": PROTOCOL_VERSION,
            "host_version": host_version(),
            "addon_version": addon if isinstance(addon, str) else None,
        }

    def status(self, params: dict[str, Any]) -> dict[str, Any]:
        # A damaged configuration is reported, not raised: whoever asks (the installer's
        # checks and --purge, the options page) must get on to `configure` to repair it.
        config_error: str | None = None
        try:
            config = cfg.load(self._config_dir)
        except NotConfigured as exc:
            config, config_error = None, str(exc)
        in_keyring: bool | None = False
        backend: str | None = None
        try:
            backend = keyring_store.backend_name()
            if config is not None and config.username:
                in_keyring = keyring_store.get_password(config.username) is not None
        except KeyringUnavailable:
            in_keyring = None
        anchor = None
        if config is not None:
            cert = config.anchor.certificate
            anchor = {
                "fingerprint": config.anchor.fingerprint,
                "subject": cert.subject.rfc4514_string(),
                "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        return {
            "configured": config is not None,
            "config_error": config_error,
            "directory": config.directory.url if config else None,
            "username": config.username if config else None,
            "password_in_keyring": in_keyring,
            "keyring_backend": backend,
            "trust_anchor": anchor,
            "extra_roots": len(config.extra_roots) if config else 0,
            "config_dir": str(self._config_dir),
            "cache_dir": str(self._cache_dir),
        }

    def configure(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            old = cfg.load(self._config_dir)
        except NotConfigured:
            old = None  # a broken configuration is what configure is there to repair
        config = cfg.from_params(params, old)
        url, username, tls_ca = config.directory, config.username, config.tls_ca_pem
        # Password: a string sets it, null deletes it, absent keeps what the keyring has.
        new_password = params.get("password", ...)
        if new_password is not ... and new_password is not None:
            if not isinstance(new_password, str) or not new_password:
                raise BadRequest("password must be a non-empty string", {"param": "password"})
            if username is None:
                raise BadRequest("a password needs a username", {"param": "password"})
        if params.get("test", True):
            if new_password is ...:
                password = self._password(username)
            else:
                password = new_password if isinstance(new_password, str) else None
            client = self._client_factory(url, username, password, tls_ca, config.timeout)
            try:
                client.check()
            finally:
                client.close()
        if username is not None and isinstance(new_password, str):
            keyring_store.set_password(username, new_password)
        elif new_password is None and username is not None:
            keyring_store.delete_password(username)
        cfg.save(config, self._config_dir)
        if old is not None and old.username and old.username != username:
            keyring_store.delete_password(old.username)  # no stale secret left behind
        self.close()  # the next lookup connects with the new settings
        return self.status({})

    def test_connection(self, params: dict[str, Any]) -> dict[str, Any]:
        resolver = self._get_resolver()
        started = time.perf_counter()
        authenticated = resolver.client.check()
        return {
            "directory": resolver.config.directory.url,
            "authenticated": authenticated,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
        }

    def lookup(self, params: dict[str, Any]) -> dict[str, Any]:
        recipients = _str_list(params, "recipients")
        _at_most_max_recipients(len(recipients), "recipients")
        # A string may hold a list (as `encrypt` reads to/cc/bcc): one entry per mailbox,
        # each with the string as `given`, so the add-on matches it to what was typed.
        given = [(text, m.address) for text in recipients for m in recipient_mailboxes(text)]
        _at_most_max_recipients(len(given), "recipients")
        sender = params.get("from")
        if sender is not None and not isinstance(sender, str):
            raise BadRequest("from must be a string", {"param": "from"})
        found = self._get_resolver().resolve([a for _, a in given], sender or None)
        return {
            "recipients": [replace(r, given=text).to_wire()
                           for (text, _), r in zip(given, found.recipients, strict=True)],
            "sender": found.sender.to_wire() if found.sender else None,
        }

    def encrypt(self, params: dict[str, Any]) -> dict[str, Any]:
        compose = parse_compose(params)
        _at_most_max_recipients(len(compose.recipients), "to")
        built: list[bytes] = []

        def build_early() -> None:
            # The clear message needs no container: built while the directory answers, it
            # costs no time at 10 ms RTT. Its errors are raised below, in their usual order.
            with contextlib.suppress(HostError, KeypostError):
                built.append(build_message(compose))

        found = self._get_resolver().resolve(
            [m.address for m in compose.recipients], compose.sender.address,
            while_waiting=build_early,
        )
        _fail_closed(found)
        certs = _distinct_keys(found)
        clear = built[0] if built else build_message(compose)
        try:
            encrypted = smime.encrypt_message(clear, certs)
            cipher = smime.choose_cipher(certs).value
        except SmimeError as exc:
            raise EncryptionFailed(f"encryption failed: {exc}") from None
        except KeypostError as exc:
            raise EncryptionFailed(f"encryption failed: {exc}") from None
        bcc = header_block("Bcc", compose.bcc) if compose.bcc else b""
        message = (bcc + encrypted) if compose.for_outbox else encrypted
        sent_copy = bcc + b"X-Keypost-Encrypted: yes\r\n" + clear
        parties = [*found.recipients, *([found.sender] if found.sender else [])]
        return {
            "message": message.decode("utf-8"),
            "sent_copy": sent_copy.decode("utf-8"),
            "message_id": _header(clear, "Message-ID"),
            "cipher": cipher,
            "key_count": len(certs),
            "recipients": [r.to_wire() for r in parties],
            # Marked "attach" but left as links (the host fetches nothing): the add-on
            # refuses to send such a message rather than send another one than composed.
            "remote_images": list(compose.remote_images),
        }


def _fail_closed(found: Resolution) -> None:
    """Nothing is encrypted unless every recipient has a valid container."""
    if found.failure is not None and any(r.status == STATUS_ERROR for r in found.recipients):
        raise found.failure
    failing = [r for r in found.recipients if r.status != STATUS_OK]
    if failing:
        listed = "; ".join(f"{r.address} ({r.reason})" for r in failing)
        raise NoValidContainer(
            f"no valid key container for {listed}",
            {"recipients": [{"address": r.address, "status": r.status, "reason": r.reason}
                            for r in failing]},
        )


def _distinct_keys(found: Resolution) -> list[x509.Certificate]:
    """All used containers of all recipients and the sender, one per public key: the
    sender's gateway appears once per recipient address but needs one RecipientInfo."""
    seen: set[bytes] = set()
    certs: list[x509.Certificate] = []
    parties = [*found.recipients]
    if found.sender is not None and found.sender.status == STATUS_OK:
        parties.append(found.sender)
    for report in parties:
        for cert in report.usable:
            spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            if spki not in seen:
                seen.add(spki)
                certs.append(cert)
    return certs


def _header(message: bytes, name: str) -> str | None:
    head = message.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    prefix = name.lower() + ":"
    for line in head.split("\r\n"):
        if line.lower().startswith(prefix):
            return line[len(prefix):].strip()
    return None
