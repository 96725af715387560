"""policy.recipient_binding: inbound mail decrypted by the gateway goes only to the envelope
recipients its RecipientInfos' containers were issued for. A real `keypost directory serve`
(asked over HTTP, GET /v1/bindings), the gateway as `serve` builds it, real SMTP, and
ciphertext made by `openssl cms -encrypt` with containers fetched from the directory as an
outside sender's client fetches them."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from gw_directory import GATEWAY_ACCOUNT, GATEWAY_PW, USER_ACCOUNT, USER_PW, DirectoryWorld
from gw_support import (
    KEYPOST,
    Pki,
    Sink,
    encrypted_again,
    running_gateway,
    send,
    write_private,
)
from port_util import refusing_port

from keypost.core.address import parse_address
from keypost.core.bindings import Binding
from keypost.core.containers import to_pem
from keypost.gateway.binding import HttpBindings
from keypost.gateway.config import RecipientBinding, load_config, parse_config
from keypost.gateway.errors import ConfigError
from keypost.gateway.pipeline import DECRYPTED_HEADER

SENDER = "sender@outside.test"
BOB, CAROL, MALLORY = "bob@example.com", "carol@example.com", "mallory@example.com"


def container(world: DirectoryWorld, address: str) -> bytes:
    """The example.com gateway container for `address`, as an outsider gets it."""
    resp = requests.get(f"http://127.0.0.1:{world.http_port}/v1/containers",
                        params={"address": address}, timeout=30)
    assert resp.status_code == 200, resp.text
    [found] = resp.json()["results"][0]["containers"]
    assert found["gateway"] == "example.com"
    return str(found["pem"]).encode()


def encrypted(tmp: Path, recipients: list[bytes], body: str, *options: str) -> bytes:
    """`openssl cms -encrypt` of a message to these certificates, as a sender mails it."""
    entity = (f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()
    (tmp / "entity").write_bytes(entity)
    recips: list[str] = []
    for i, pem in enumerate(recipients):
        path = tmp / f"recip-{i}.pem"
        path.write_bytes(pem)
        recips += ["-recip", str(path)]
    done = subprocess.run(["openssl", "cms", "-encrypt", "-aes256", "-binary", "-in",
                           str(tmp / "entity"), *recips, *options],
                          capture_output=True, timeout=60, check=True)
    head = (f"From: {SENDER}\r\nTo: {BOB}\r\nSubject: figures\r\n"
            "Date: Mon, 2 Mar 2026 10:00:00 +0000\r\nMessage-ID: <rb@outside.test>\r\n")
    return head.encode() + done.stdout.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def gateway_config(pki: Pki, world: DirectoryWorld, sink: Sink, binding: str | None,
                   http_port: int | None = None) -> Path:
    url = f"http://127.0.0.1:{http_port or world.http_port}"
    policy = f'[policy]\nrecipient_binding = "{binding}"\n' if binding else ""
    return pki.config(sink.port, extra=policy, directory=world.gateway_directory_lines(url))


def delivered_to(sink: Sink, body: str) -> list[str]:
    """Recipients that got the decrypted text (a report to the sender is no delivery)."""
    return [r for m in sink.handler.messages if body.encode() in m.data
            and DECRYPTED_HEADER.encode() in m.data for r in m.rcpt_tos]


@pytest.fixture
def for_bob(world: DirectoryWorld, tmp_path: Path) -> bytes:
    return encrypted(tmp_path, [container(world, BOB)], "for bob only")


def test_off_by_default_mail_for_bob_resent_to_mallory_is_decrypted_for_her(
        pki: Pki, world: DirectoryWorld, sink: Sink, for_bob: bytes) -> None:
    """The default keeps the documented limit (nothing asks the directory)."""
    with running_gateway(gateway_config(pki, world, sink, None)) as g:
        assert g.gateway.config.policy.recipient_binding is RecipientBinding.OFF
        code, text = send(g.port, SENDER, [MALLORY], for_bob)
    assert code == 250, text
    assert delivered_to(sink, "for bob only") == [MALLORY]


def test_enforce_refuses_mail_for_bob_resent_to_mallory(
        pki: Pki, world: DirectoryWorld, sink: Sink, for_bob: bytes) -> None:
    with running_gateway(gateway_config(pki, world, sink, "enforce")) as g:
        code, text = send(g.port, SENDER, [MALLORY], for_bob)
        assert code == 554 and "5.7.1" in text and MALLORY in text, text
        assert "another mailbox" in text
        assert sink.handler.messages == []
        code, text = send(g.port, SENDER, [BOB], for_bob)
    assert code == 250, text
    assert delivered_to(sink, "for bob only") == [BOB]


def test_enforce_mail_for_bob_and_carol_reaches_both_and_not_mallory(
        pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path) -> None:
    """One message, two containers of the same gateway key: each recipient is bound by its
    own RecipientInfo. A third envelope recipient is refused alone: the others get their
    copy (250) and the sender a report naming her, as for any refused recipient."""
    both = encrypted(tmp_path, [container(world, BOB), container(world, CAROL)], "for two")
    with running_gateway(gateway_config(pki, world, sink, "enforce")) as g:
        code, text = send(g.port, SENDER, [BOB, CAROL], both)
        assert code == 250, text
        assert sorted(delivered_to(sink, "for two")) == [BOB, CAROL]
        sink.handler.messages.clear()
        code, text = send(g.port, SENDER, ["Carol@Example.COM", MALLORY, BOB], both)
    assert code == 250 and "delivered=2" in text and "refused=1" in text, text
    assert sorted(delivered_to(sink, "for two")) == ["Carol@Example.COM", BOB]
    [report] = [m for m in sink.handler.messages if m.rcpt_tos == [SENDER]]
    assert report.mail_from in ("", "<>") and MALLORY.encode() in report.data
    assert b"for two" not in report.data  # the report carries no decrypted text


def _unknown_container(world: DirectoryWorld, pki: Pki) -> bytes:
    """A certificate naming the directory CA as issuer, with a serial it never issued, for
    the gateway's key: what a RecipientInfo of a forged or long-forgotten container names."""
    issuer = x509.load_pem_x509_certificate(world.ca_pem.read_bytes()).subject
    signer = rsa.generate_private_key(65537, 2048)
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(issuer).issuer_name(issuer)
            .public_key(pki.current.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(BOB)]), False)
            .sign(signer, hashes.SHA256()))
    return to_pem(cert)


@pytest.mark.parametrize(("kind", "reason"), [
    ("unknown serial", "does not know"),
    # an SKI names the key, and every container of the key has the same one: nothing says
    # which mailbox the sender meant
    ("subject key identifier", "subjectKeyIdentifier"),
])
def test_enforce_refuses_what_names_no_known_container(
        pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path, kind: str,
        reason: str) -> None:
    """Both open with the gateway's key (delivered under off), neither binds a mailbox."""
    if kind == "unknown serial":
        message = encrypted(tmp_path, [_unknown_container(world, pki)], kind)
    else:
        message = encrypted(tmp_path, [container(world, BOB)], kind, "-keyid")
    for binding in ("off", "enforce"):
        sink.handler.messages.clear()
        with running_gateway(gateway_config(pki, world, sink, binding)) as g:
            code, text = send(g.port, SENDER, [BOB], message)
        if binding == "off":
            assert code == 250 and delivered_to(sink, kind) == [BOB], text
    assert code == 554 and reason in text, text
    assert sink.handler.messages == []


def test_enforce_with_the_directory_down_is_451(
        pki: Pki, world: DirectoryWorld, sink: Sink, for_bob: bytes) -> None:
    with refusing_port() as down, running_gateway(
            gateway_config(pki, world, sink, "enforce", down)) as g:
        code, text = send(g.port, SENDER, [BOB], for_bob)
    assert code == 451 and "4.4.3" in text, text
    assert sink.handler.messages == []


def test_plain_mail_needs_no_directory_under_enforce(
        pki: Pki, world: DirectoryWorld, sink: Sink) -> None:
    """Only what the gateway decrypted is checked: plain mail flows with the directory down."""
    plain = (f"From: {SENDER}\r\nTo: {MALLORY}\r\nSubject: hi\r\n\r\nplain\r\n").encode()
    with refusing_port() as down, running_gateway(
            gateway_config(pki, world, sink, "enforce", down)) as g:
        code, text = send(g.port, SENDER, [MALLORY], plain)
    assert code == 250, text
    assert [m.rcpt_tos for m in sink.handler.messages] == [[MALLORY]]


@pytest.mark.parametrize(("directory", "message"), [
    ({}, "policy.recipient_binding: .*set \\[directory\\] url"),
    ({"url": "ldap://127.0.0.1:3890", "trust_anchor": "ca.pem", "username": "gw",
      "password_env": "X"}, "policy.recipient_binding: .*over HTTP only"),
    ({"url": "http://127.0.0.1:8080", "trust_anchor": "ca.pem"},
     "policy.recipient_binding: .*gateway accounts only"),
])
def test_enforce_needs_an_http_directory_and_a_gateway_account(
        tmp_path: Path, directory: dict[str, str], message: str) -> None:
    data = {"policy": {"recipient_binding": "enforce"}, "directory": directory}
    with pytest.raises(ConfigError, match=message):
        parse_config(data, tmp_path)
    with pytest.raises(ConfigError, match=r"policy\.recipient_binding: expected one of"):
        parse_config({"policy": {"recipient_binding": "on"}}, tmp_path)


def test_each_serial_is_asked_once(pki: Pki, world: DirectoryWorld, sink: Sink,
                                   for_bob: bytes) -> None:
    """Answers are kept per serial: the second message for bob (and a second refusal for
    mallory) asks the directory nothing; its request counter says so."""
    def asked() -> int:
        text = requests.get(f"http://127.0.0.1:{world.http_port}/metrics", timeout=10).text
        found = re.search(r'keypost_requests_total\{protocol="http",result="ok"\} (\d+)', text)
        return int(found.group(1)) if found else 0

    with running_gateway(gateway_config(pki, world, sink, "enforce")) as g:
        before = asked()
        assert send(g.port, SENDER, [BOB], for_bob)[0] == 250
        assert send(g.port, SENDER, [MALLORY], for_bob)[0] == 554
        after_first = asked()
        assert send(g.port, SENDER, [BOB], for_bob)[0] == 250
        assert send(g.port, SENDER, [MALLORY], for_bob)[0] == 554
        assert asked() == after_first > before


def test_check_config_connect_asks_the_bindings_as_the_account(
        pki: Pki, world: DirectoryWorld, sink: Sink) -> None:
    """A user account cannot ask (403): check-config --connect says so before serve would
    defer every decrypted message."""
    cfg = gateway_config(pki, world, sink, "enforce")
    done = subprocess.run([*KEYPOST, "gateway", "check-config", "--connect", "--config",
                           str(cfg)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "only the recipients its containers were issued for" in done.stdout
    assert "recipient bindings answered" in done.stdout
    write_private(pki.root / "alice.pass", USER_PW.encode() + b"\n")
    as_user = cfg.read_text().replace(f'username = "{GATEWAY_ACCOUNT}"',
                                      f'username = "{USER_ACCOUNT}"').replace(
        str(world.gateway_pw_file), str(pki.root / "alice.pass"))
    cfg.write_text(as_user)
    done = subprocess.run([*KEYPOST, "gateway", "check-config", "--connect", "--config",
                           str(cfg)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "HTTP 403" in done.stderr, done.stdout + done.stderr


def test_many_recipients_are_asked_in_parts_the_directory_takes(
        pki: Pki, world: DirectoryWorld, sink: Sink) -> None:
    """The directory refuses more than max_addresses (100) serials or addresses at once
    (400, which would defer the message for good): the gateway asks in parts."""
    cfg = load_config(gateway_config(pki, world, sink, "enforce"))
    bob = x509.load_pem_x509_certificate(container(world, BOB)).serial_number
    others = [parse_address(f"user{i}@example.com") for i in range(130)]
    source = HttpBindings(cfg.directory, GATEWAY_PW, 10.0)
    [row] = source.bindings([bob], [*others[:70], parse_address(BOB), *others[70:]])
    assert row[70] is Binding.BOUND
    assert row[:70] + row[71:] == [Binding.NOT_BOUND] * 130


def test_enforce_binds_every_envelope_the_gateway_opens(
        pki: Pki, world: DirectoryWorld, sink: Sink, for_bob: bytes, tmp_path: Path) -> None:
    """mallory encrypts bob's ciphertext once more, to her own container, and mails it to
    herself: the outer envelope names her, the inner one bob. Every envelope opened must
    name the recipient (the stricter wins), or the wrap would launder any ciphertext."""
    laundered = encrypted_again(tmp_path, container(world, MALLORY), for_bob, SENDER, MALLORY)
    twice = encrypted_again(tmp_path, container(world, BOB), for_bob, SENDER, BOB)
    with running_gateway(gateway_config(pki, world, sink, "enforce")) as g:
        code, text = send(g.port, SENDER, [MALLORY], laundered)
        assert code == 554 and MALLORY in text and "another mailbox" in text, text
        assert sink.handler.messages == []
        code, text = send(g.port, SENDER, [BOB], twice)
    assert code == 250, text
    assert delivered_to(sink, "for bob only") == [BOB]
    [got] = sink.handler.messages
    assert got.data.count(DECRYPTED_HEADER.encode()) == 2 and b"pkcs7" not in got.data.lower()
