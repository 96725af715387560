"""The whole product path, every component real, one hop after the other:

    Thunderbird 153 (alice@example.com; the add-on's Encrypt on; the native host logged in
    to the directory as alice)
      --SMTP--> `keypost gateway serve` A (example.com's keys: outbound)
      --SMTP--> `keypost gateway serve` B (example.org's keys: inbound)
      --SMTP--> an aiosmtpd sink: the mailboxes of example.org

`keypost directory serve` serves example.com and example.org with the public halves of the
keys A and B hold, and keeps a genuine certificate for bob@example.org (none for
dave@example.org). Between Thunderbird and A, and between A and B, a TCP relay keeps every
byte the sending side put on the wire: what left Thunderbird, and whether anything went
clear between the gateways. Started once per module; every process is stopped by the PID
we started.
"""

from __future__ import annotations

import base64
import contextlib
import email
import email.message
import email.policy
import hashlib
import os
import re
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tbharness as tb
import test_thunderbird as tbt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from gw_directory import keypost
from gw_support import (
    Received,
    Sink,
    body_of,
    pub_pem,
    running_sink,
    serving_gateway,
    write_private,
)
from gw_verify import openssl_verify
from pki_util import email_cert, key_pem, make_ca, rsa_key
from proc_util import start_directory_serve, stop

from keypost.core import cms, smime
from keypost.core.containers import to_pem
from keypost.core.errors import DecryptError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SENDER = tbt.SENDER  # alice@example.com, a user account of example.com
BOB = "bob@example.org"  # has a genuine certificate in the directory
DAVE = "dave@example.org"  # has none: the gateways' containers only
GATEWAY_A, GATEWAY_A_PW = "gw-example-com", "gateway-a-pw-1"
GATEWAY_B, GATEWAY_B_PW = "gw-example-org", "gateway-b-pw-1"  # B with inbound_genuine = keep


# ---- what one hop puts on the wire ----------------------------------------------------------


@dataclass
class Tap:
    """A TCP relay from a port of its own to `target`: every byte the client sends is kept
    (one record per connection) and passed on unchanged, and so is every answer."""

    target: int
    listener: socket.socket = field(init=False)
    streams: list[bytearray] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)  # accept() wakes to see `stopping`
        self._thread(self._accept)

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def _thread(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            server = socket.create_connection(("127.0.0.1", self.target))
            record = bytearray()
            with self.lock:
                self.streams.append(record)
                self.sockets += [client, server]
            self._thread(self._pump, client, server, record)
            self._thread(self._pump, server, client, None)

    def _pump(self, src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if record is not None:
                    with self.lock:
                        record += data  # kept before it is passed on
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def sent(self) -> list[bytes]:
        """What clients sent, one bytes per connection, oldest first."""
        with self.lock:
            return [bytes(s) for s in self.streams]

    def messages(self) -> list[bytes]:
        """The messages of every SMTP transaction that reached DATA, oldest first."""
        return [m for stream in self.sent() for m in smtp_data(stream)]

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.close()
        for t in self.threads:
            t.join(timeout=10)


_DATA = re.compile(rb"^DATA\r\n(.*?\r\n)\.\r\n", re.M | re.S | re.I)


def smtp_data(stream: bytes) -> list[bytes]:
    """The messages a client's SMTP stream carries after DATA, dot-unstuffed (RFC 5321
    4.5.2); the terminating CRLF.CRLF's CRLF belongs to the message."""
    return [
        re.sub(rb"(?m)^\.\.", b".", m.group(1))
        for m in _DATA.finditer(stream)
    ]


# ---- the world: directory, two gateways, the mailbox, Thunderbird ---------------------------


@dataclass
class Chain:
    """Everything one send goes through, and the keys to look at what each hop saw."""

    session: tbt.Session
    sink: Sink
    to_a: Tap  # Thunderbird -> gateway A
    a_to_b: Tap  # gateway A -> gateway B
    keys: dict[str, Path]  # "a", "b", "bob": private key PEM files
    bob_cert: Path
    ca_pem: Path  # the directory CA
    logs: list[Path]
    work: Path  # key files, directory CA, genuine CA, gateway configurations
    directory_http: str  # the directory's http:// URL

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in self.logs)


def _rsa_key_files(work: Path, name: str) -> tuple[Path, Path]:
    """An RSA-2048 private key (0600, as the gateway demands) and its public half."""
    key = rsa_key()
    private = write_private(work / f"{name}.key", key_pem(key))
    public = work / f"{name}.pub"
    public.write_bytes(pub_pem(key))
    return private, public


def _directory_data(work: Path) -> tuple[Path, dict[str, Path], Path]:
    """A directory of example.com (A's encryption and signing keys) and example.org (B's),
    bob's genuine certificate, alice's user account and A's gateway account.
    -> (data folder, private key files, the genuine CA's PEM)."""
    data = work / "data"
    keypost("directory", "init", "--data", str(data))
    a_enc, a_enc_pub = _rsa_key_files(work, "a-enc")
    a_sign, a_sign_pub = _rsa_key_files(work, "a-sign")
    b_enc, b_enc_pub = _rsa_key_files(work, "b-enc")
    keypost("directory", "domain", "add", "example.com", "--data", str(data),
            "--encryption-cert", str(a_enc_pub), "--signing-cert", str(a_sign_pub))
    keypost("directory", "domain", "add", "example.org", "--data", str(data),
            "--encryption-cert", str(b_enc_pub))
    genuine_ca = make_ca("Genuine Test CA", rsa_key())
    (work / "genuine-ca.pem").write_bytes(to_pem(genuine_ca[1]))
    bob_key, bob_cert = email_cert(genuine_ca, BOB)
    write_private(work / "bob.key", key_pem(bob_key))
    (work / "bob.pem").write_bytes(to_pem(bob_cert))
    keypost("directory", "genuine", "add", str(work / "bob.pem"), "--data", str(data))
    keypost("directory", "account", "add", "alice", "--role", "user", "--domain",
            "example.com", "--password-stdin", "--data", str(data), stdin="alice-secret\n")
    keypost("directory", "account", "add", GATEWAY_A, "--role", "gateway", "--domain",
            "example.com", "--password-stdin", "--data", str(data), stdin=GATEWAY_A_PW + "\n")
    write_private(work / "gw-a.pass", GATEWAY_A_PW.encode() + b"\n")
    keypost("directory", "account", "add", GATEWAY_B, "--role", "gateway", "--domain",
            "example.org", "--password-stdin", "--data", str(data), stdin=GATEWAY_B_PW + "\n")
    write_private(work / "gw-b.pass", GATEWAY_B_PW.encode() + b"\n")
    (work / "directory-ca.pem").write_text(keypost("directory", "ca", "export", "--data",
                                                   str(data)))
    keys = {"a": a_enc, "a-sign": a_sign, "b": b_enc, "bob": work / "bob.key"}
    return data, keys, work / "genuine-ca.pem"


def _gateway(work: Path, name: str, domain: str, next_hop: int, directory: str,
             domain_extra: str = "", key: str | None = None) -> Path:
    """gateway-NAME.toml in `work`: `domain` with NAME-enc.key (KEY-enc.key), listening on
    a port the kernel picks, re-injecting at `next_hop`."""
    config = work / f"gateway-{name}.toml"
    config.write_text(f"""
listen = "127.0.0.1:0"
next_hop = "127.0.0.1:{next_hop}"
hostname = "gw.{domain}"
quarantine_dir = "quarantine-{name}"
state_dir = "state-{name}"
[directory]
{directory}
[[domain]]
name = "{domain}"
encryption_keys = ["{key or name}-enc.key"]
{domain_extra}
""")
    return config


def _gateway_a(work: Path, next_hop: int, ldap_url: str) -> Path:
    """example.com's gateway: outbound mail of alice, with the directory to find the path
    on and sign with."""
    return _gateway(work, "a", "example.com", next_hop, f"""
url = "{ldap_url}"
username = "{GATEWAY_A}"
password_file = "gw-a.pass"
trust_anchor = "directory-ca.pem"
genuine_roots = ["genuine-ca.pem"]
""", 'signing_key = "a-sign.key"')


def _gateway_b(work: Path, next_hop: int) -> Path:
    """example.org's gateway: inbound only, so the directory CA is all it needs of the
    directory (it tells mail for a keypost gateway from someone else's S/MIME)."""
    return _gateway(work, "b", "example.org", next_hop, 'trust_anchor = "directory-ca.pem"')


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    binary = tbt.thunderbird_binary("153")
    work = tmp_path_factory.mktemp("full-path")
    env = tb.isolated_env(tmp_path_factory.mktemp("home"))
    data, keys, genuine_ca = _directory_data(work)
    with contextlib.ExitStack() as stack:
        proc, urls = start_directory_serve(data, work / "directory.log")
        stack.callback(stop, proc, 20)
        sink = stack.enter_context(running_sink())
        b = stack.enter_context(
            serving_gateway(_gateway_b(work, sink.port), work / "gateway-b.log"))
        a_to_b = Tap(b.port)
        stack.callback(a_to_b.close)
        a = stack.enter_context(
            serving_gateway(_gateway_a(work, a_to_b.port, urls["ldap"]), work / "gateway-a.log"))
        to_a = Tap(a.port)
        stack.callback(to_a.close)

        profile = tmp_path_factory.mktemp("profile")
        tb.write_profile(profile, tb.profile_prefs(to_a.port, SENDER, "Alice"))
        tbt.install_keypost(env, profile, urls["ldap"], work / "directory-ca.pem", "alice")
        # The roots bob's genuine certificate chains to, as the options page's `configure`
        # saves them next to the host's trust anchor (PROTOCOL.md: extra_roots_pem).
        write_private(Path(env["KEYPOST_CONFIG_DIR"]) / "extra-roots.pem",
                      genuine_ca.read_bytes())
        session = stack.enter_context(
            tbt.marionette_session(binary, profile, env))
        tb.wait_for(lambda: tbt._addon_state(session.marionette), 60, "the add-on")
        yield Chain(session, sink, to_a, a_to_b, keys, work / "bob.pem",
                    work / "directory-ca.pem",
                    [work / "gateway-a.log", work / "gateway-b.log", work / "directory.log"],
                    work, urls["http"])


# ---- sending and looking -------------------------------------------------------------------


@dataclass
class Hops:
    """What each hop saw of one message Thunderbird sent."""

    from_thunderbird: bytes  # the message Thunderbird handed gateway A
    streams: list[bytes]  # every byte gateway A sent gateway B for it, one per SMTP session
    mailbox: list[Received]  # what the mailboxes got

    @property
    def a_to_b(self) -> bytes:
        (stream,) = self.streams
        return stream

    @property
    def between(self) -> bytes:
        """The one message A handed B."""
        (message,) = smtp_data(self.a_to_b)
        return message

    @property
    def delivered(self) -> Received:
        (got,) = self.mailbox
        return got


def send_through(chain: Chain, to: str, subject: str, body: str, attach: Path,
                 html: bool = False, deliveries: int = 1) -> Hops:
    """Compose in Thunderbird, Encrypt on, Send; wait for `deliveries` messages at the
    mailboxes (no more)."""
    m = chain.session.marionette
    handle = tbt.open_compose(chain.session, to, subject, body, attach=attach, html=html)
    tbt.turn_encrypt_on(chain.session, ready=True)
    box, sent, crossed = (len(chain.sink.handler.messages), len(chain.to_a.messages()),
                          len(chain.a_to_b.sent()))
    tbt.click_send(chain.session)
    got = chain.sink.handler.wait(box + deliveries, timeout=120)[box:]
    assert len(got) == deliveries, f"{len(got)} delivered:\n" + chain.log_text()
    time.sleep(1)  # another message (there must be none) would arrive right behind it
    assert len(chain.sink.handler.messages) == box + deliveries, chain.sink.handler.messages
    tb.wait_for(lambda: handle not in m.chrome_window_handles, 30, "the compose window to close")
    (message,) = chain.to_a.messages()[sent:]
    return Hops(message, chain.a_to_b.sent()[crossed:], got)


def openssl_decrypt(message: bytes, cert: Path, key: Path, tmp: Path) -> bytes:
    """`openssl cms -decrypt` with the recipient's own certificate and key."""
    (tmp / "enveloped.eml").write_bytes(message)
    done = subprocess.run(
        ["openssl", "cms", "-decrypt", "-in", str(tmp / "enveloped.eml"), "-recip", str(cert),
         "-inkey", str(key)],
        capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout.replace(b"\r\n", b"\n")


def _enveloped(message: bytes) -> email.message.Message:
    outer = email.message_from_bytes(message)
    assert outer.get_content_type() == "application/pkcs7-mime", outer.get_content_type()
    assert "enveloped-data" in outer.get("Content-Type", "")
    assert not outer.is_multipart()  # nothing beside the ciphertext: no clear part
    return outer


def _ciphertext(message: bytes) -> bytes:
    """The encrypted content of an enveloped message: what a gateway forwarding the
    original leaves as the sender made it (the RecipientInfos it may cut down)."""
    der = _enveloped(message).get_payload(decode=True)
    assert isinstance(der, bytes)
    return bytes(cms.parse_enveloped(der).ciphertext)


def _names(message: bytes) -> set[tuple[object, int]]:
    return {(r.issuer, r.serial) for r in smime.recipient_ids(message)}


def _attachment(message: email.message.Message, name: str) -> bytes:
    parts = [p for p in message.walk() if p.get_filename() == name]
    assert len(parts) == 1, [p.get_content_type() for p in message.walk()]
    payload = parts[0].get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


def _text(message: email.message.Message) -> str:
    part = next(p for p in message.walk() if p.get_content_type() == "text/plain")
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


def _blob(tmp: Path, name: str) -> Path:
    """An attachment of 40 KB random bytes (a file Thunderbird sends base64-encoded)."""
    (tmp / name).write_bytes(b"%PDF-1.4 figures\n" + os.urandom(40_000))
    return tmp / name


def _spki_sha256(key: Path) -> str:
    public = load_pem_private_key(key.read_bytes(), password=None).public_key()
    return hashlib.sha256(public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def assert_delivered_clear(chain: Chain, got: Received, a_to_b: bytes, to: str, subject: str,
                           body: str, attach: Path) -> email.message.EmailMessage:
    """B opened it: the mailbox has the clear message, B's key named, attachment whole
    (and none of it went clear from A to B: `a_to_b`)."""
    assert got.mail_from == SENDER and got.rcpt_tos == [to]
    delivered = email.message_from_bytes(got.data, policy=email.policy.default)
    assert isinstance(delivered, email.message.EmailMessage)
    assert delivered.get_content_type() != "application/pkcs7-mime"
    assert delivered["Subject"] == subject
    (decrypted,) = delivered.get_all("X-Keypost-Decrypted") or []
    fingerprint = _spki_sha256(chain.keys["b"])
    assert decrypted.startswith(f"key=current fingerprint={fingerprint}, alg="), decrypted
    assert body in _text(delivered)
    assert _attachment(delivered, attach.name) == attach.read_bytes()
    # The attachment as Thunderbird encoded it never crossed from A to B in clear either.
    (part,) = [p for p in delivered.walk() if p.get_filename() == attach.name]
    encoded = str(part.get_payload()).split()[1].encode()
    assert len(encoded) > 60 and encoded not in a_to_b
    return delivered


# ---- the tests -------------------------------------------------------------------------------


def test_to_a_recipient_with_a_genuine_certificate(chain: Chain, tmp_path: Path) -> None:
    """Thunderbird encrypts for A's container, B's container and bob's own certificate; A
    opens it, scans, finds B's container among the RecipientInfos and forwards the original
    ciphertext, naming B's container and bob's certificate (its own RecipientInfo taken
    out); nothing crosses from A to B in clear; B opens it and bob's mailbox gets the
    clear text with X-Keypost-Decrypted, the attachment byte for byte (inbound, a gateway
    opens every envelope one of its keys is in, bob's certificate beside it or not).
    The envelope that reached example.org is also bob's own: his key opens it (openssl)."""
    subject = "Figures for Bob, whole path"
    body = "Hello Bob, the figures are attached. Whole-path marker 7d1f."
    attach = _blob(tmp_path, "figures.pdf")
    hops = send_through(chain, f"Bob <{BOB}>", subject, body, attach)

    sent = _enveloped(hops.from_thunderbird)
    assert sent["Subject"] == subject
    assert body.encode() not in hops.from_thunderbird
    assert len(smime.recipient_ids(hops.from_thunderbird)) == 3
    for gateway in ("a", "b"):
        inner = email.message_from_bytes(tbt._decrypt(hops.from_thunderbird, chain.keys[gateway]))
        assert body in _text(inner), gateway

    # A forwarded the whole-path message: the same ciphertext, nothing clear on the wire,
    # naming bob's path only (B's container and bob's certificate, not A's container).
    assert _ciphertext(hops.between) == _ciphertext(hops.from_thunderbird)
    assert len(_names(hops.between)) == 2 and _names(hops.between) < _names(
        hops.from_thunderbird)
    with pytest.raises(DecryptError):  # A's own key: not named any more
        tbt._decrypt(hops.between, chain.keys["a"])
    assert body.encode() not in hops.a_to_b and b"Whole-path marker" not in hops.a_to_b
    # What reached example.org is bob's own envelope too.
    own = email.message_from_bytes(
        openssl_decrypt(hops.between, chain.bob_cert, chain.keys["bob"], tmp_path))
    assert body in _text(own) and _attachment(own, attach.name) == attach.read_bytes()

    assert_delivered_clear(
        chain, hops.delivered, hops.a_to_b, BOB, subject, body, attach)


def test_to_a_recipient_without_a_genuine_certificate(chain: Chain, tmp_path: Path) -> None:
    """dave has no certificate of his own: Thunderbird encrypts for the two gateways'
    containers only, A forwards that less its own RecipientInfo, B decrypts for dave's
    mailbox. An HTML
    message this time, with non-ASCII text and an image in the text (multipart/related):
    both gateways read the MIME Thunderbird wrote, and it arrives whole."""
    subject = "Grüße an Dave, whole path"
    text = "Grüße, Dave: die Zahlen hängen an. Proxy-path marker 93ac."
    image = tbt._png(48)
    image_url = "data:image/png;base64," + base64.b64encode(image).decode()
    html = f'<p>{text}</p><p><img src="{image_url}" alt="chart"></p>'
    attach = _blob(tmp_path, "dave.pdf")
    hops = send_through(chain, DAVE, subject, html, attach, html=True)

    _enveloped(hops.from_thunderbird)
    assert len(smime.recipient_ids(hops.from_thunderbird)) == 2
    for gateway in ("a", "b"):
        assert text in _text(email.message_from_bytes(
            tbt._decrypt(hops.from_thunderbird, chain.keys[gateway]))), gateway

    assert _ciphertext(hops.between) == _ciphertext(hops.from_thunderbird)
    assert len(_names(hops.between)) == 1 and _names(hops.between) < _names(
        hops.from_thunderbird)
    assert text.encode() not in hops.a_to_b and b"Proxy-path marker" not in hops.a_to_b

    delivered = assert_delivered_clear(
        chain, hops.delivered, hops.a_to_b, DAVE, subject, text, attach)
    related = next(p for p in delivered.walk() if p.get_content_type() == "multipart/related")
    assert [p.get_content_type() for p in related.iter_parts()] == ["text/html", "image/png"]
    page, picture = related.iter_parts()
    assert text in page.get_content() and picture.get_content() == image


def test_signing_request_on_the_whole_path(chain: Chain, tmp_path: Path) -> None:
    """A Subject with [sign]: A opens the whole-path message, signs the clear message
    inside (a signature must sit inside the envelope) and encrypts it again for what the
    directory gives it for bob (B's container and bob's certificate, never A's own); B
    opens it; bob's mailbox gets alice's signature, which `openssl cms -verify` checks
    against the directory CA, and a Subject without the tag."""
    subject = "Offer for Bob"
    body = "Hello Bob, this offer is signed by our gateway. Signed marker 51e0."
    attach = _blob(tmp_path, "offer.pdf")
    hops = send_through(chain, BOB, f"[sign] {subject}", body, attach)

    assert _enveloped(hops.from_thunderbird)["Subject"] == f"[sign] {subject}"
    assert len(smime.recipient_ids(hops.from_thunderbird)) == 3

    # Signed, then encrypted anew: not the ciphertext Thunderbird made, still none clear.
    _enveloped(hops.between)
    assert body_of(hops.between) != body_of(hops.from_thunderbird)
    assert body.encode() not in hops.a_to_b and b"Signed marker" not in hops.a_to_b
    assert len(smime.recipient_ids(hops.between)) == 2
    for_bob = openssl_decrypt(hops.between, chain.bob_cert, chain.keys["bob"], tmp_path)
    assert b"multipart/signed" in for_bob
    assert b"[sign]" not in for_bob

    delivered = assert_delivered_clear(
        chain, hops.delivered, hops.a_to_b, BOB, subject, body, attach)
    assert_signed_by_alice(chain, delivered, hops.delivered.data, body, tmp_path)


def assert_signed_by_alice(chain: Chain, delivered: email.message.EmailMessage, data: bytes,
                           body: str, tmp: Path) -> None:
    """`openssl cms -verify` against the directory CA; the signer is alice."""
    assert delivered.get_content_type() == "multipart/signed"
    signer = tmp / "signer.pem"
    done = openssl_verify(data, chain.ca_pem, tmp, "-signer", str(signer))
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert body.encode() in done.stdout.replace(b"\r\n", b"\n")
    names = subprocess.run(["openssl", "x509", "-in", str(signer), "-noout", "-ext",
                            "subjectAltName"], capture_output=True, text=True, check=True)
    assert f"email:{SENDER}" in names.stdout, names.stdout


_RCPT = re.compile(rb"^RCPT TO:<([^>]*)>", re.M | re.I)


def test_one_signed_message_to_two_mailboxes(chain: Chain, tmp_path: Path) -> None:
    """[sign] to bob and dave at once: A signs once and encrypts for each recipient what the
    directory gives it for that one (bob: B's container and his certificate; dave: B's
    container), so two messages cross to B, none clear; each mailbox gets its own, signed
    by alice."""
    subject = "Minutes for both"
    body = "Hello Bob and Dave, the signed minutes. Two-mailbox marker c2b8."
    attach = _blob(tmp_path, "minutes.pdf")
    hops = send_through(chain, f"{BOB}, {DAVE}", f"[sign] {subject}", body, attach,
                        deliveries=2)
    assert sorted(got.rcpt_tos[0] for got in hops.mailbox) == [BOB, DAVE]
    crossed = {}
    for stream in hops.streams:
        (rcpt,) = _RCPT.findall(stream)
        (message,) = smtp_data(stream)
        _enveloped(message)
        assert body.encode() not in stream and b"Two-mailbox marker" not in stream
        crossed[rcpt.decode()] = (stream, message)
    assert sorted(crossed) == [BOB, DAVE]
    assert len(smime.recipient_ids(crossed[BOB][1])) == 2
    assert len(smime.recipient_ids(crossed[DAVE][1])) == 1
    for got in hops.mailbox:
        (rcpt,) = got.rcpt_tos
        delivered = assert_delivered_clear(chain, got, crossed[rcpt][0], rcpt, subject, body,
                                           attach)
        assert_signed_by_alice(chain, delivered, got.data, body, tmp_path)


def test_b_keeps_bobs_envelope_and_decrypts_daves(chain: Chain, tmp_path: Path) -> None:
    """Thunderbird's envelope for bob (A's key, B's key, bob's certificate), as it crossed
    from A to B, handed to a second `keypost gateway serve` of example.org with
    `inbound_genuine = "keep"` for bob and dave at once (as an outside sender's one envelope
    to both would come): bob's mailbox gets the envelope as it came, naming his certificate
    alone, which his key opens, dave's the decrypted message."""
    subject = "Figures for both, kept"
    body = "Hello Bob and Dave, the figures. Kept-envelope marker 5e0a."
    attach = _blob(tmp_path, "kept.pdf")
    hops = send_through(chain, f"{BOB}, {DAVE}", subject, body, attach, deliveries=2)
    # The host encrypts once per key (A's, B's, bob's): A forwards that original to bob
    # (less its own RecipientInfo) and re-encrypts for dave, whose container it does not name.
    (crossed,) = [smtp_data(st)[0] for st in hops.streams if _RCPT.findall(st) == [BOB.encode()]]
    assert _ciphertext(crossed) == _ciphertext(hops.from_thunderbird)
    assert len(_names(crossed)) == 2

    with running_sink() as mailbox:
        keep = _gateway(chain.work, "b-keep", "example.org", mailbox.port, f"""
url = "{chain.directory_http}"
username = "{GATEWAY_B}"
password_file = "gw-b.pass"
trust_anchor = "directory-ca.pem"
genuine_roots = ["genuine-ca.pem"]
""", '[policy]\ninbound_genuine = "keep"', key="b")
        with serving_gateway(keep, tmp_path / "gateway-b-keep.log") as b, \
                smtplib.SMTP("127.0.0.1", b.port, timeout=120) as smtp:
            smtp.sendmail(SENDER, [BOB, DAVE], crossed)
        got = {r: m for m in mailbox.handler.messages for r in m.rcpt_tos}
    assert sorted(got) == [BOB, DAVE] and len(mailbox.handler.messages) == 2

    kept = got[BOB].data
    # the same ciphertext, naming bob's certificate alone (not B's container)
    assert _ciphertext(kept) == _ciphertext(crossed) and body.encode() not in kept
    bob_cert = x509.load_pem_x509_certificate(chain.bob_cert.read_bytes())
    assert _names(kept) == {(bob_cert.issuer, bob_cert.serial_number)}
    (trace,) = email.message_from_bytes(kept).get_all("X-Keypost-Kept-Encrypted") or []
    assert trace.startswith(f"key=current fingerprint={_spki_sha256(chain.keys['b'])}, alg=")
    own = email.message_from_bytes(
        openssl_decrypt(kept, chain.bob_cert, chain.keys["bob"], tmp_path))
    assert body in _text(own) and _attachment(own, attach.name) == attach.read_bytes()

    clear = email.message_from_bytes(got[DAVE].data, policy=email.policy.default)
    assert isinstance(clear, email.message.EmailMessage)
    assert clear.get_content_type() != "application/pkcs7-mime"
    assert body in _text(clear) and _attachment(clear, attach.name) == attach.read_bytes()
    assert clear["X-Keypost-Decrypted"] and not clear["X-Keypost-Kept-Encrypted"]
