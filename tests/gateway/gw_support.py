"""Helpers for the gateway tests: an aiosmtpd sink, key files, a local CA, a gateway (in this
process or `keypost gateway serve`), each server on a port the kernel picks (port 0)."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pki_util import key_pem
from proc_util import start_gateway_serve, stop

from keypost.core.address import parse_address
from keypost.core.containers import ContainerRequest, DirectoryCA, GatewayKey, to_pem
from keypost.core.types import Purpose
from keypost.gateway.config import load_config
from keypost.gateway.serve import Gateway, build, smtp_factory

KEYPOST = [sys.executable, "-m", "keypost.core.cli"]


def free_port() -> int:
    """A port nothing listens on right now, for a configuration never connected to, or a
    server that cannot be told to bind port 0 (Postfix). A port that must stay down is
    port_util.refusing_port; one that comes up later, refusing_socket. Servers the tests
    start bind port 0 instead (running_sink, running_gateway, serving_gateway): a port
    picked beforehand can be taken in between."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str] = field(default_factory=list)


@dataclass
class SinkHandler:
    """The final next hop: records what it accepts; `reply` makes it refuse."""

    messages: list[Received] = field(default_factory=list)
    reply: str = "250 2.0.0 OK"
    refuse: set[str] = field(default_factory=set)  # recipients refused at RCPT with 550
    defer: set[str] = field(default_factory=set)  # recipients refused at RCPT with 450
    arrived: threading.Condition = field(default_factory=threading.Condition)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such user here"
        if address in self.defer:
            return "450 4.2.1 mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.reply.startswith("250"):
            with self.arrived:
                self.messages.append(
                    Received(envelope.mail_from, list(envelope.rcpt_tos),
                             envelope.original_content, list(envelope.mail_options))
                )
                self.arrived.notify_all()
        return self.reply

    def wait(self, count: int, timeout: float = 30.0) -> list[Received]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.messages) >= count, timeout)
        return list(self.messages)


class EphemeralController(Controller):
    """An aiosmtpd Controller that may listen on port 0: `port` becomes the one the kernel
    gave before start() connects to it (aiosmtpd's start-up check, which would try port
    0). A fixed port works as before; `sock`, a bound socket, is listened on instead."""

    def __init__(self, *args: Any, sock: socket.socket | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sock = sock

    def _create_server(self) -> Any:
        if self.sock is None:
            return super()._create_server()
        return self.loop.create_server(self._factory_invoker, sock=self.sock,
                                       ssl=self.ssl_context)

    def _trigger_server(self) -> None:
        assert isinstance(self.server, asyncio.Server) and self.server.sockets
        self.port = int(self.server.sockets[0].getsockname()[1])
        super()._trigger_server()


@dataclass
class Sink:
    handler: SinkHandler
    port: int


@contextmanager
def running_sink(sock: socket.socket | None = None) -> Iterator[Sink]:
    """The next hop, on a port the kernel picks, or listening on `sock` (bound already:
    port_util.refusing_socket, for a next hop that comes up on the port configured)."""
    handler = SinkHandler()
    ctl = EphemeralController(handler, hostname="127.0.0.1", port=0, enable_SMTPUTF8=True,
                              data_size_limit=0, sock=sock)
    ctl.start()
    try:
        yield Sink(handler, ctl.port)
    finally:
        ctl.stop()


def write_private(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
    return path


def pub_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass
class Pki:
    """example.com's gateway keys (current, retired, signing) and a local directory CA."""

    root: Path
    ca: DirectoryCA
    current: rsa.RSAPrivateKey
    retired: rsa.RSAPrivateKey
    signing: rsa.RSAPrivateKey
    stranger: rsa.RSAPrivateKey  # a key the gateway does not hold

    def path(self, name: str) -> Path:
        return self.root / name

    def container(self, key: rsa.RSAPrivateKey, address: str = "alice@example.com",
                  purpose: Purpose = Purpose.ENCRYPT) -> x509.Certificate:
        gk = GatewayKey.from_pem(pub_pem(key))
        return self.ca.issue(ContainerRequest(parse_address(address), purpose, gk))

    def signing_container(self, issued: dt.datetime,
                          address: str = "alice@example.com") -> x509.Certificate:
        """A 30-day signing container for the signing key, issued at `issued`."""
        gk = GatewayKey.from_pem(pub_pem(self.signing))
        request = ContainerRequest(parse_address(address), Purpose.SIGN, gk, dt.timedelta(days=30))
        return self.ca.issue(request, now=issued)

    def config(self, next_hop: int, listen: int = 0, extra: str = "", domain_extra: str = "",
               directory: str = "", quarantine: str = "quarantine",
               folder: Path | None = None) -> Path:
        """A gateway.toml in `folder` (default: next to the keys), whose relative paths
        (quarantine, state) then lie in that folder. `listen` 0: a port the kernel picks,
        which the gateway's `listening` line names (RunningGateway/ServingGateway.port)."""
        keys = "" if folder is None else f"{self.root}/"
        text = f"""
listen = "127.0.0.1:{listen}"
next_hop = "127.0.0.1:{next_hop}"
hostname = "gw.example.com"
quarantine_dir = "{quarantine}"
{extra}
[directory]
{directory or f'trust_anchor = "{keys}ca.pem"'}
[[domain]]
name = "example.com"
encryption_keys = ["{keys}enc-current.key", "{keys}enc-retired.key"]
signing_key = "{keys}sign.key"
{domain_extra}
"""
        return unique_file(folder or self.root, "gateway", ".toml", text)


def unique_file(folder: Path, prefix: str, suffix: str, text: str) -> Path:
    """A new file named `prefix`-<random>`suffix` in `folder` holding `text`."""
    fd, name = tempfile.mkstemp(suffix, f"{prefix}-", folder)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return Path(name)


class Rolling:
    """A directory fetcher (CachingDirectory's) whose every fetch hands out what `answer`
    gives: a new signing container each time, as across a container change."""

    def __init__(self, answer: Callable[[], list[x509.Certificate]]) -> None:
        self.answer, self.calls = answer, 0

    def fetch(self, address: object, purpose: Purpose) -> list[x509.Certificate]:
        self.calls += 1
        return self.answer()


def make_pki(root: Path) -> Pki:
    root.mkdir(parents=True, exist_ok=True)
    ca = DirectoryCA.generate()
    keys = [rsa.generate_private_key(65537, 2048) for _ in range(4)]
    for name, key in zip(("enc-current", "enc-retired", "sign", "stranger"), keys, strict=True):
        write_private(root / f"{name}.key", key_pem(key))
        (root / f"{name}.pub").write_bytes(pub_pem(key))
    (root / "ca.pem").write_bytes(to_pem(ca.certificate))
    return Pki(root, ca, *keys)


class GatewayController(EphemeralController):
    """Serves each connection with the protocol object `serve` makes (smtp_factory)."""

    def __init__(self, gw: Gateway) -> None:
        super().__init__(gw.handler, hostname=gw.config.listen.host, port=gw.config.listen.port)
        self.gw = gw

    def factory(self) -> SMTP:
        return smtp_factory(self.gw)


@dataclass
class RunningGateway:
    gateway: Gateway
    port: int


@contextmanager
def running_gateway(config_path: Path) -> Iterator[RunningGateway]:
    """The gateway in this process (aiosmtpd Controller thread), built like `serve` builds it."""
    gw = build(load_config(config_path))
    ctl = GatewayController(gw)
    ctl.start()
    try:
        yield RunningGateway(gw, ctl.port)
    finally:
        ctl.stop()


@contextmanager
def unread_client(config_path: Path) -> Iterator[tuple[RunningGateway, socket.socket]]:
    """The gateway in this process (running_gateway, whose config should set a short
    `smtp_session`) and a client connection to it that will read none of its replies: its
    receive buffer is made small before it connects, so they pile up at the gateway."""
    with running_gateway(config_path) as gw, socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", gw.port))
        yield gw, s


@dataclass
class ServingGateway:
    proc: subprocess.Popen[str]
    port: int  # from its `listening` line


@contextmanager
def serving_gateway(config_path: Path, log: Path,
                    preexec_fn: Callable[[], None] | None = None) -> Iterator[ServingGateway]:
    """`keypost gateway serve` in a process of its own (proc_util.start_gateway_serve), its
    log (stderr) in `log`; yields once it printed `ready`, which needs no probe connection
    (one could be refused). `preexec_fn` runs in the child before it starts (e.g. to set a
    resource limit)."""
    proc, port = start_gateway_serve(config_path, log, preexec_fn=preexec_fn)
    try:
        yield ServingGateway(proc, port)
    finally:
        stop(proc, timeout=60)


def send(port: int, mail_from: str, rcpts: list[str], data: bytes) -> tuple[int, str]:
    """One SMTP transaction; the DATA reply (or the first refusal) as (code, text)."""
    import smtplib

    with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
        s.ehlo()
        code, msg = s.mail(mail_from)
        if code != 250:
            return code, msg.decode(errors="replace")
        for r in rcpts:
            code, msg = s.rcpt(r)
            if code != 250:
                return code, msg.decode(errors="replace")
        code, msg = s.data(data)
        return code, msg.decode(errors="replace")


def plain_message(
    sender: str = "sender@outside.test", to: str = "alice@example.com",
    subject: str = "Quarterly", body: str = "secret quarterly figures",
    date: dt.datetime | None = None,
) -> bytes:
    when = email.utils.format_datetime(date) if date else email.utils.formatdate()
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Date: {when}\r\nMessage-ID: <{abs(hash(body))}@test>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{body}\r\n"
    ).encode()


def body_of(message: bytes) -> bytes:
    """Everything after the header block (CRLF-normalised)."""
    m = message.replace(b"\r\n", b"\n")
    return m.split(b"\n\n", 1)[1] if b"\n\n" in m else b""


def encrypted_again(tmp: Path, pem: bytes, message: bytes, sender: str, rcpt: str) -> bytes:
    """`message` encrypted once more, whole, to the certificate `pem` by `openssl cms
    -encrypt` (as one who wraps someone else's ciphertext in an envelope of their own)."""
    (tmp / "inner.eml").write_bytes(message)
    (tmp / "outer.pem").write_bytes(pem)
    done = subprocess.run(["openssl", "cms", "-encrypt", "-aes256", "-in", str(tmp / "inner.eml"),
                           "-from", sender, "-to", rcpt, "-subject", "figures",
                           str(tmp / "outer.pem")],
                          capture_output=True, timeout=60, check=True)
    return done.stdout.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
