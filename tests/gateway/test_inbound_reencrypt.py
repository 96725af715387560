"""policy.inbound_genuine = "reencrypt": after the scan accepted the decrypted message, each
recipient with a genuine certificate gets exactly that message encrypted anew, to their
genuine certificate alone, in an envelope of their own, whether or not the sender had
encrypted to it; the others get it decrypted. Every peer real (as in test_inbound_genuine,
whose helpers these are): `keypost directory serve` holding gina@example.com's genuine
certificate, `keypost gateway serve`, a `[scan] command` that keeps what it was shown, an
aiosmtpd mailbox, `openssl cms -encrypt` / `-sign` for the sender, `openssl cms -decrypt`
with gina's key and `openssl cms -verify` for what she reads."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from gw_directory import DirectoryWorld
from gw_support import KEYPOST, Pki, Sink, body_of, send, serving_gateway, write_private
from gw_verify import openssl_verify
from pki_util import key_pem
from port_util import refusing_port
from test_inbound_genuine import (
    DAVE,
    GINA,
    SECRET,
    SENDER,
    TEXT,
    by_recipient,
    certificates,
    config,
    encrypt,
    gina_opens,
    mail,
    scanner,
)

from keypost.core import smime
from keypost.gateway.pipeline import DECRYPTED_HEADER, KEPT_HEADER
from keypost.gateway.quarantine import held_messages


def split(message: bytes) -> tuple[list[bytes], list[bytes], bytes]:
    """(the fields outside an envelope, the Content-* fields, the body) of a CRLF message
    whose fields are not folded."""
    head, body = message.split(b"\r\n\r\n", 1)
    fields = head.split(b"\r\n")
    content = [f for f in fields if f.lower().startswith(b"content-")]
    return [f for f in fields if f not in content], content, body


def entity(message: bytes) -> bytes:
    """The message's MIME entity: its Content-* fields and body (what goes inside)."""
    _, content, body = split(message)
    return b"\r\n".join(content) + b"\r\n\r\n" + body


def outside(message: bytes) -> list[bytes]:
    """The fields that stay outside an envelope, MIME-Version aside (written afresh)."""
    return [f for f in split(message)[0] if not f.lower().startswith(b"mime-version:")]


def gina_certificate(world: DirectoryWorld) -> x509.Certificate:
    return x509.load_pem_x509_certificate((world.root / f"{GINA}.pem").read_bytes())


@pytest.mark.parametrize("to_gina", [True, False], ids=["sent-to-her-too", "sent-to-us-only"])
def test_gina_gets_the_scanned_message_encrypted_to_her_alone_and_dave_clear_text(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path, to_gina: bool
) -> None:
    ours, genuine = certificates(world, GINA)  # her gateway container, her own certificate
    original = encrypt(tmp_path, TEXT, [ours, genuine] if to_gina else [ours])
    sent = mail(original)
    with serving_gateway(config(pki, world, sink, tmp_path, "reencrypt"),
                         tmp_path / "gw.log") as gw:
        code, text = send(gw.port, SENDER, [GINA, DAVE], sent)
    assert code == 250, text
    assert len(sink.handler.messages) == 2  # her envelope, and the clear text for dave
    got = by_recipient(sink)
    scanned = (tmp_path / "scanned").read_bytes()
    assert SECRET.encode() in scanned and b"pkcs7" not in scanned.lower()
    # gina: her key opens her copy to exactly the entity the scanner saw; the fields around
    # it are the scanned message's (X-Keypost-Decrypted included; the forged ones gone)
    hers = got[GINA]
    assert SECRET.encode() not in hers
    assert b"smime-type=enveloped-data" in hers
    assert gina_opens(world, tmp_path, hers) == entity(scanned)
    assert outside(hers) == outside(scanned)
    assert hers.count(f"{DECRYPTED_HEADER}: key=current".encode()) == 1
    assert b"forged" not in hers and KEPT_HEADER.encode() not in hers
    # a new envelope: her certificate its one RecipientInfo (not the gateway's container),
    # nothing of the sender's ciphertext in it
    cert = gina_certificate(world)
    assert smime.recipient_identifiers(hers) == (
        [smime.RecipientId(cert.issuer, cert.serial_number)], [])
    # (named with its container: without -recip, openssl tries the key on every RecipientInfo
    # and, RSA's implicit rejection giving a random key, may "open" it to garbage)
    key = write_private(tmp_path / "gateway.key", key_pem(pki.current))
    (tmp_path / "ours.eml").write_bytes(hers)
    (tmp_path / "ours.pem").write_bytes(ours)
    done = subprocess.run(["openssl", "cms", "-decrypt", "-in", str(tmp_path / "ours.eml"),
                           "-inkey", str(key), "-recip", str(tmp_path / "ours.pem")],
                          capture_output=True, timeout=60, check=False)
    assert done.returncode != 0 and done.stdout == b"", done.stderr
    sender_lines = set(body_of(sent).split(b"\r\n")) - {b""}
    assert sender_lines.isdisjoint(body_of(hers).split(b"\r\n"))
    # dave (no genuine certificate): the decrypted message the scanner saw
    assert SECRET.encode() in got[DAVE] and b"pkcs7" not in got[DAVE].lower()
    assert got[DAVE].endswith(scanned.split(b"\r\n\r\n", 1)[1])


def test_each_recipient_with_a_certificate_gets_an_envelope_of_their_own(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    """gina twice over (two addresses would need a second genuine certificate; the same
    one written two ways is one recipient to the directory and two to SMTP): each gets a
    transaction and an envelope of their own, never one naming the other."""
    ours, _ = certificates(world, GINA)
    twin = "Gina@example.com"
    with serving_gateway(config(pki, world, sink, tmp_path, "reencrypt"),
                         tmp_path / "gw.log") as gw:
        code, text = send(gw.port, SENDER, [GINA, twin, DAVE],
                          mail(encrypt(tmp_path, TEXT, [ours]), forged=False))
    assert code == 250, text
    assert sorted(tuple(m.rcpt_tos) for m in sink.handler.messages) == sorted([
        (DAVE,), (GINA,), (twin,)])
    got = by_recipient(sink)
    assert got[GINA] != got[twin]
    for rcpt in (GINA, twin):
        ids, _ = smime.recipient_identifiers(got[rcpt])
        assert len(ids) == 1
        assert SECRET.encode() in gina_opens(world, tmp_path, got[rcpt])


def test_the_senders_inner_signature_verifies_after_gina_decrypts(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    """Sign-then-encrypt (carol@elsewhere.net signs, detached; the envelope is for the
    gateway only): the signed entity is part of what the scanner saw, so it goes inside
    gina's new envelope as it was, and `openssl cms -verify` checks it there."""
    carol = world.root / "carol@elsewhere.net.pem"
    carol_key = write_private(tmp_path / "carol.key", key_pem(world.carol_key))
    (tmp_path / "text.eml").write_bytes(TEXT)
    signed = subprocess.run(["openssl", "cms", "-sign", "-in", str(tmp_path / "text.eml"),
                             "-signer", str(carol), "-inkey", str(carol_key)],
                            capture_output=True, timeout=60, check=True).stdout
    ours, _ = certificates(world, GINA)
    sent = mail(encrypt(tmp_path, signed.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"),
                        [ours]), forged=False)
    with serving_gateway(config(pki, world, sink, tmp_path, "reencrypt"),
                         tmp_path / "gw.log") as gw:
        code, text = send(gw.port, SENDER, [GINA, DAVE], sent)
    assert code == 250, text
    got = by_recipient(sink)
    opened = gina_opens(world, tmp_path, got[GINA])
    assert b"multipart/signed" in opened
    verified = openssl_verify(opened, world.genuine_ca_pem, tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert SECRET.encode() in verified.stdout
    assert b"multipart/signed" in got[DAVE]  # dave gets the same signed entity, clear


def test_a_rejected_scan_delivers_nothing(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    ours, _ = certificates(world, GINA)
    with serving_gateway(config(pki, world, sink, tmp_path, "reencrypt", verdict=1),
                         tmp_path / "gw.log") as gw:
        code, text = send(gw.port, SENDER, [GINA, DAVE], mail(encrypt(tmp_path, TEXT, [ours])))
    assert code == 554 and "refused by test" in text, text
    assert sink.handler.messages == []
    assert SECRET.encode() in (tmp_path / "scanned").read_bytes()


def test_a_held_message_released_goes_to_gina_encrypted(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    """A holding scan keeps the decrypted message once for both (nothing delivered); the
    administrator's release (`keypost gateway quarantine release`) then sends it on as an
    accepting scan would have: encrypted to gina's certificate, clear text to dave."""
    ours, _ = certificates(world, GINA)
    cfg = config(pki, world, sink, tmp_path, "reencrypt", verdict=2)
    with serving_gateway(cfg, tmp_path / "gw.log") as gw:
        code, text = send(gw.port, SENDER, [GINA, DAVE], mail(encrypt(tmp_path, TEXT, [ours])))
    assert code == 250 and "quarantined=2" in text, text
    assert all(SECRET.encode() not in m.data for m in sink.handler.messages)  # notices only
    notices = len(sink.handler.messages)
    [held] = held_messages(tmp_path / "quarantine")
    done = subprocess.run([*KEYPOST, "gateway", "quarantine", "--config", str(cfg), "release",
                           held.qid], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    released = sink.handler.messages[notices:]
    got = {r: m.data for m in released for r in m.rcpt_tos}
    assert len(released) == 2 and sorted(got) == [DAVE, GINA]
    assert SECRET.encode() not in got[GINA]
    assert gina_opens(world, tmp_path, got[GINA]) == entity(held.message)
    assert SECRET.encode() in got[DAVE]


def test_held_plain_mail_is_released_plain(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    """Release encrypts only what the gateway decrypted (README: plain inbound mail stays
    plain), which it tells by its own X-Keypost-Decrypted: one the sender wrote into plain
    mail was removed before the hold, so gina gets the held plain message as it is."""
    extra = (scanner(tmp_path, 2) + "scan_plain = true\n"
             + '[policy]\ninbound_genuine = "reencrypt"\n')
    cfg = pki.config(sink.port, extra=extra, folder=tmp_path,
                     directory=world.gateway_directory_lines(f"http://127.0.0.1:{world.http_port}"))
    with serving_gateway(cfg, tmp_path / "gw.log") as gw:
        code, text = send(gw.port, SENDER, [GINA], mail(TEXT))  # with forged fields
    assert code == 250 and "quarantined=1" in text, text
    notices = len(sink.handler.messages)
    [held] = held_messages(tmp_path / "quarantine")
    assert DECRYPTED_HEADER.encode() not in held.message
    done = subprocess.run([*KEYPOST, "gateway", "quarantine", "--config", str(cfg), "release",
                           held.qid], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    [released] = sink.handler.messages[notices:]
    assert released.rcpt_tos == [GINA] and released.data == held.message


def test_directory_down_defers_all_decrypted_mail(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    """Whether a recipient has a genuine certificate needs the directory for every message
    the gateway decrypted (unlike keep, which asks only about mail that names one): 451.
    Plain mail is not encrypted by the setting and asks nothing: delivered."""
    ours, _ = certificates(world, GINA)
    with refusing_port() as port, serving_gateway(
            config(pki, world, sink, tmp_path, "reencrypt", url=f"http://127.0.0.1:{port}"),
            tmp_path / "gw.log") as gw:
        code, text = send(gw.port, SENDER, [GINA, DAVE], mail(encrypt(tmp_path, TEXT, [ours])))
        assert code == 451 and "directory" in text, text
        assert sink.handler.messages == []
        code, text = send(gw.port, SENDER, [GINA, DAVE], mail(TEXT, forged=False))
    assert code == 250, text
    [got] = sink.handler.messages
    assert SECRET.encode() in got.data and DECRYPTED_HEADER.encode() not in got.data


def test_check_config_says_which_way(pki: Pki, world: DirectoryWorld, tmp_path: Path) -> None:
    path = pki.config(2525, extra='[policy]\ninbound_genuine = "reencrypt"\n', folder=tmp_path,
                      directory=world.gateway_directory_lines(
                          f"http://127.0.0.1:{world.http_port}"))
    done = subprocess.run([*KEYPOST, "gateway", "check-config", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines()
             if line.startswith("decrypted inbound mail, to")]
    assert len(lines) == 1 and re.search(r"encrypted anew .*inbound_genuine = reencrypt",
                                         lines[0]), done.stdout
