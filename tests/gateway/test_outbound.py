"""Outbound (Figs. 2 and 3) against a real `keypost directory serve` over LDAP.

alice@example.com is a user behind the gateway under test. bob@partner.org is behind
another served domain and has a genuine certificate; carol@elsewhere.net has only a
genuine certificate; dave@nowhere.test has nothing; eve@partner.org has no genuine one.
"""

from __future__ import annotations

import email
import email.policy
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import ldap3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from gw_directory import GATEWAY_PW, USER_ACCOUNT, USER_PW, DirectoryWorld
from gw_support import (
    KEYPOST,
    Pki,
    RunningGateway,
    Sink,
    body_of,
    plain_message,
    running_gateway,
    send,
    write_private,
)
from gw_verify import gpgsm_verify, openssl_verify
from pki_util import email_cert, key_pem, make_ca, rsa_key
from port_util import refusing_port

from keypost.core import smime
from keypost.core.containers import describe, to_pem
from keypost.core.errors import DecryptError
from keypost.core.types import Role
from keypost.gateway.quarantine import Maildir, Onward

ALICE = "alice@example.com"
BOB, CAROL, DAVE, EVE = "bob@partner.org", "carol@elsewhere.net", "dave@nowhere.test", (
    "eve@partner.org"
)


def user_containers(world: DirectoryWorld, address: str) -> list[x509.Certificate]:
    """What alice's add-on gets from the directory for `address` (the whole path)."""
    conn = ldap3.Connection(ldap3.Server("127.0.0.1", port=world.ldap_port),
                            user=USER_ACCOUNT, password=USER_PW, auto_bind=True)
    conn.search("dc=keypost", f"(mail={address})", attributes=["userCertificate;binary"])
    certs = [x509.load_der_x509_certificate(bytes(v))
             for e in conn.response for v in e["raw_attributes"]["userCertificate;binary"]]
    conn.unbind()
    return certs


def _is_partner(cert: x509.Certificate, world: DirectoryWorld) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return cert.public_key().public_bytes(enc, fmt) == (
        world.partner_key.public_key().public_bytes(enc, fmt)
    )


def config(pki: Pki, world: DirectoryWorld, sink: Sink, policy: str = "", url: str = "",
           tls_ca: bool = True) -> Path:
    return pki.config(sink.port, directory=world.gateway_directory_lines(url or None, tls_ca),
                      extra=policy)


@pytest.fixture
def gw(pki: Pki, world: DirectoryWorld, sink: Sink) -> Iterator[RunningGateway]:
    with running_gateway(config(pki, world, sink)) as g:
        yield g


# --- Fig. 3: signing ---------------------------------------------------------------


def test_subject_tag_asks_for_a_signature_that_openssl_verifies(
    gw: RunningGateway, sink: Sink, world: DirectoryWorld, tmp_path: Path
) -> None:
    msg = plain_message(sender=ALICE, to=CAROL, subject="[sign] Offer", body="signed offer")
    code, text = send(gw.port, ALICE, [CAROL], msg)
    assert code == 250, text
    [got] = sink.handler.messages
    assert b"multipart/signed" in got.data
    assert b"Subject: Offer\r\n" in got.data and b"[sign]" not in got.data
    done = openssl_verify(got.data, world.ca_pem, tmp_path)
    assert done.returncode == 0, done.stderr
    assert b"signed offer" in done.stdout
    res = smime.verify_signed(got.data, [x509.load_pem_x509_certificate(world.ca_pem.read_bytes())])
    assert res.ok, res.reasons
    assert res.signer is not None
    assert ALICE in describe(res.signer).addresses


@pytest.mark.parametrize("encoded", [
    "=?UTF-8?Q?=5bsign=5d_Gr=c3=bc=c3=9fe?=",  # Thunderbird: the whole Subject encoded
    "=?utf-8?b?W3NpZ25dIEdyw7zDn2U=?=",  # the same in base64
    "=?UTF-8?Q?Gr=c3=bc=c3=9fe_=5bsign=5d?=",  # the tag at the end
    "[sign] =?utf-8?q?Gr=C3=BC=C3=9Fe?=",  # Python's email: only the word that needs it
])
def test_subject_tag_inside_an_encoded_word_asks_for_a_signature(
    gw: RunningGateway, sink: Sink, world: DirectoryWorld, tmp_path: Path, encoded: str
) -> None:
    """A Subject with non-ASCII text is sent as RFC 2047 encoded-words, and Thunderbird
    encodes all of it, "[sign]" included (=5bsign=5d): the tag was looked for in the raw
    bytes only, so the message left unsigned with the tag in its Subject."""
    msg = plain_message(sender=ALICE, to=CAROL, subject=encoded, body="signed offer")
    code, text = send(gw.port, ALICE, [CAROL], msg)
    assert code == 250, text
    [got] = sink.handler.messages
    assert b"multipart/signed" in got.data
    parsed = email.message_from_bytes(got.data, policy=email.policy.default)
    assert parsed["Subject"] == "Grüße"
    done = openssl_verify(got.data, world.ca_pem, tmp_path)
    assert done.returncode == 0, done.stderr


def test_signature_verifies_with_gpgsm(
    gw: RunningGateway, sink: Sink, world: DirectoryWorld, tmp_path: Path
) -> None:
    if shutil.which("gpgsm") is None:
        pytest.skip("gpgsm not installed")
    msg = plain_message(sender=ALICE, to=CAROL, subject="[sign] gpgsm", body="for gpgsm")
    assert send(gw.port, ALICE, [CAROL], msg)[0] == 250
    done = gpgsm_verify(sink.handler.messages[0].data, world.ca_pem, tmp_path)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"Good signature" in done.stderr


def test_outbound_signing_keeps_the_senders_own_signature_intact(
    gw: RunningGateway, sink: Sink, world: DirectoryWorld, tmp_path: Path
) -> None:
    """alice's client signed already (7bit text with a trailing blank and a 'From ' line,
    which the gateway would re-encode were it its own content); the gateway's signature
    goes around it and must not change a byte inside it."""
    ca = make_ca("alice's own CA", rsa_key())
    key, cert = email_cert(ca, ALICE)
    for name, pem in (("ca.pem", to_pem(ca[1])), ("alice.pem", to_pem(cert))):
        (tmp_path / name).write_bytes(pem)
    write_private(tmp_path / "alice.key", key_pem(key))
    (tmp_path / "content").write_bytes(b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
                                       b"a line with a trailing blank \r\nFrom me\r\n")
    signed = subprocess.run(
        ["openssl", "cms", "-sign", "-binary", "-in", str(tmp_path / "content"),
         "-signer", str(tmp_path / "alice.pem"), "-inkey", str(tmp_path / "alice.key"),
         "-from", ALICE, "-to", CAROL, "-subject", "[sign] twice"],
        capture_output=True, timeout=60, check=True,
    ).stdout
    code, text = send(gw.port, ALICE, [CAROL], signed.replace(b"\r\n", b"\n").replace(
        b"\n", b"\r\n"))
    assert code == 250, text
    [got] = sink.handler.messages
    (tmp_path / "out.eml").write_bytes(got.data)
    outer = subprocess.run(
        ["openssl", "cms", "-verify", "-in", str(tmp_path / "out.eml"),
         "-CAfile", str(world.ca_pem), "-out", str(tmp_path / "inner.eml")],
        capture_output=True, timeout=60, check=False,
    )
    assert outer.returncode == 0, outer.stderr
    inner = openssl_verify((tmp_path / "inner.eml").read_bytes(), tmp_path / "ca.pem", tmp_path)
    assert inner.returncode == 0, inner.stderr
    assert b"a line with a trailing blank \r\nFrom me" in inner.stdout


def test_sign_header_is_removed_and_honoured(gw: RunningGateway, sink: Sink) -> None:
    msg = plain_message(sender=ALICE, to=CAROL, body="by header").replace(
        b"Subject:", b"X-Keypost-Sign: yes\r\nSubject:")
    assert send(gw.port, ALICE, [CAROL], msg)[0] == 250
    [got] = sink.handler.messages
    assert b"multipart/signed" in got.data and b"X-Keypost-Sign" not in got.data


def test_without_a_request_outbound_plain_mail_is_unchanged(gw: RunningGateway, sink: Sink) -> None:
    msg = plain_message(sender=ALICE, to=CAROL, body="as is")
    assert send(gw.port, ALICE, [CAROL], msg)[0] == 250
    assert sink.handler.messages[0].data.rstrip() == msg.rstrip()


# --- Fig. 2: decrypt, scan, re-encrypt or forward ------------------------------------


def _only_to_our_gateway(world: DirectoryWorld, rcpt: str, body: str) -> bytes:
    certs = [c for c in user_containers(world, rcpt)
             if describe(c).role is Role.PROXY_ENCRYPTION and not _is_partner(c, world)]
    assert len(certs) == 1
    return smime.encrypt_message(plain_message(sender=ALICE, to=rcpt, body=body), certs)


def test_fig2_reencrypts_for_the_genuine_certificate(
    gw: RunningGateway, sink: Sink, world: DirectoryWorld, pki: Pki
) -> None:
    enc = _only_to_our_gateway(world, CAROL, "for carol only")
    assert send(gw.port, ALICE, [CAROL], enc)[0] == 250
    [got] = sink.handler.messages
    assert smime.is_encrypted(got.data)
    clear = smime.Decryptor([world.carol_key]).decrypt_message(got.data).message
    assert b"for carol only" in clear
    with pytest.raises(DecryptError):  # not left readable by the sending gateway's key
        smime.Decryptor([pki.current]).decrypt_message(got.data)


def test_fig2_reencrypts_for_the_recipients_gateway_and_genuine(
    gw: RunningGateway, sink: Sink, world: DirectoryWorld
) -> None:
    enc = _only_to_our_gateway(world, BOB, "for bob")
    assert send(gw.port, ALICE, [BOB], enc)[0] == 250
    [got] = sink.handler.messages
    for key in (world.bob_key, world.partner_key):
        assert b"for bob" in smime.Decryptor([key]).decrypt_message(got.data).message
    assert len(smime.recipient_ids(got.data)) == 2


def _names(message: bytes) -> set[tuple[x509.Name, int]]:
    return {(r.issuer, r.serial) for r in smime.recipient_ids(message)}


def _theirs(world: DirectoryWorld, path: list[x509.Certificate]) -> list[x509.Certificate]:
    """A path without the sending gateway's own container (its key opened the message)."""
    return [c for c in path
            if describe(c).role is not Role.PROXY_ENCRYPTION or _is_partner(c, world)]


def test_whole_path_message_is_forwarded_without_our_own_recipient_info(
    gw: RunningGateway, sink: Sink, world: DirectoryWorld, pki: Pki
) -> None:
    path = user_containers(world, BOB)  # own gateway + partner gateway + bob's genuine
    assert len(path) == 3
    enc = smime.encrypt_message(plain_message(sender=ALICE, to=BOB, body="whole path"), path)
    assert send(gw.port, ALICE, [BOB], enc)[0] == 250
    [got] = sink.handler.messages
    # the original ciphertext, not re-encrypted: the same content key opens it
    theirs = _theirs(world, path)
    assert len(theirs) == 2
    assert _names(got.data) == {(c.issuer, c.serial_number) for c in theirs}
    for key in (world.bob_key, world.partner_key):
        res = smime.Decryptor([key]).decrypt_message(got.data)
        assert b"whole path" in res.message
        assert res.message == smime.Decryptor([pki.current]).decrypt_message(enc).message
    with pytest.raises(DecryptError):
        smime.Decryptor([pki.current]).decrypt_message(got.data)


def test_each_whole_path_copy_names_only_its_own_recipients_certificates(
    gw: RunningGateway, sink: Sink, world: DirectoryWorld, pki: Pki
) -> None:
    """alice writes to bob (partner.org) and carol (elsewhere.net), eve (partner.org) in
    Bcc, and her client encrypts one envelope to all three paths. Relayed as it came, every
    copy named every recipient's certificates: carol's gateway would see that bob and eve
    got it, and eve is in Bcc. Each copy names its own recipient's path alone."""
    paths = {r: user_containers(world, r) for r in (BOB, CAROL, EVE)}
    every = list({c.serial_number: c for p in paths.values() for c in p}.values())
    msg = plain_message(sender=ALICE, to=f"{BOB}, {CAROL}", body="three paths")
    enc = smime.encrypt_message(msg, every)
    assert send(gw.port, ALICE, [BOB, CAROL, EVE], enc)[0] == 250
    got = {r: m.data for m in sink.handler.messages for r in m.rcpt_tos}
    assert sorted(got) == sorted([BOB, CAROL, EVE]) and len(sink.handler.messages) == 3
    own_keys = {BOB: [world.bob_key, world.partner_key], CAROL: [world.carol_key],
                EVE: [world.partner_key]}
    for rcpt, data in got.items():
        assert _names(data) == {(c.issuer, c.serial_number) for c in _theirs(world, paths[rcpt])}
        for key in own_keys[rcpt]:
            assert b"three paths" in smime.Decryptor([key]).decrypt_message(data).message
        with pytest.raises(DecryptError):
            smime.Decryptor([pki.current]).decrypt_message(data)
    for key in (world.bob_key, world.partner_key):  # carol's copy: hers alone
        with pytest.raises(DecryptError):
            smime.Decryptor([key]).decrypt_message(got[CAROL])
    with pytest.raises(DecryptError):
        smime.Decryptor([world.carol_key]).decrypt_message(got[BOB])
    # eve's and bob's copies name different partner containers: neither names the other
    assert not _names(got[EVE]) & _names(got[BOB])


def test_fig2_scan_rejects_before_anything_leaves(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    script = tmp_path / "scan.sh"
    script.write_text("#!/bin/sh\nif grep -q VIRUS; then echo 'Found: X'; exit 1; fi\nexit 0\n")
    script.chmod(0o755)
    cfg = config(pki, world, sink, policy=f'[scan]\ncommand = "{script}"')
    with running_gateway(cfg) as g:
        enc = _only_to_our_gateway(world, CAROL, "a VIRUS here")
        code, text = send(g.port, ALICE, [CAROL], enc)
    assert code == 554 and "Found: X" in text
    assert sink.handler.messages == []


@pytest.mark.parametrize(
    ("policy", "rcpt", "expect"),
    [
        ("encrypt-only", DAVE, "refused"),
        ("clear", DAVE, "clear"),
        ("refuse", EVE, "refused"),
        ("encrypt-only", EVE, "encrypted"),
        ("refuse", CAROL, "encrypted"),
    ],
)
def test_outbound_no_genuine_policy(
    pki: Pki, world: DirectoryWorld, sink: Sink, policy: str, rcpt: str, expect: str
) -> None:
    cfg = config(pki, world, sink, policy=f'[policy]\noutbound_no_genuine = "{policy}"')
    enc = _only_to_our_gateway(world, rcpt, f"policy {policy}")
    with running_gateway(cfg) as g:
        code, text = send(g.port, ALICE, [rcpt], enc)
    if expect == "refused":
        assert code == 554 and rcpt in text
        assert sink.handler.messages == []
        return
    assert code == 250
    [got] = sink.handler.messages
    if expect == "clear":
        assert not smime.is_encrypted(got.data) and f"policy {policy}".encode() in got.data
    else:
        assert smime.is_encrypted(got.data) and b"policy" not in got.data


def test_sign_and_reencrypt(
    gw: RunningGateway, sink: Sink, world: DirectoryWorld, tmp_path: Path
) -> None:
    enc = _only_to_our_gateway(world, CAROL, "signed and sealed")
    enc = enc.replace(b"Subject: Quarterly", b"Subject: [sign] Quarterly")
    assert send(gw.port, ALICE, [CAROL], enc)[0] == 250
    [got] = sink.handler.messages
    inner = smime.Decryptor([world.carol_key]).decrypt_message(got.data).message
    assert b"multipart/signed" in inner
    done = openssl_verify(inner, world.ca_pem, tmp_path)
    assert done.returncode == 0, done.stderr
    assert b"signed and sealed" in done.stdout


# --- the directory being down ---------------------------------------------------------


def test_directory_down_defers_only_mail_that_needs_it(
    pki: Pki, world: DirectoryWorld, sink: Sink
) -> None:
    fig2 = _only_to_our_gateway(world, CAROL, "needs the directory")
    with refusing_port() as down, running_gateway(
            config(pki, world, sink, url=f"ldap://127.0.0.1:{down}")) as g:
        assert send(g.port, ALICE, [CAROL], fig2)[0] == 451
        signed = plain_message(sender=ALICE, to=CAROL, subject="[sign] x")
        assert send(g.port, ALICE, [CAROL], signed)[0] == 451
        assert sink.handler.messages == []
        inbound = smime.encrypt_message(plain_message(), [pki.container(pki.current)])
        assert send(g.port, "s@outside.test", [ALICE], inbound)[0] == 250
        assert send(g.port, ALICE, [CAROL], plain_message(sender=ALICE, to=CAROL))[0] == 250
    assert len(sink.handler.messages) == 2


def test_a_search_base_the_directory_does_not_know_defers_instead_of_sending_clear(
    pki: Pki, world: DirectoryWorld, sink: Sink
) -> None:
    """A mistyped `base` makes every search answer noSuchObject (32). Read as "no
    certificate", it sent carol's mail in clear under policy clear (she has a genuine
    certificate) and bounced it under encrypt-only: it says nothing about carol."""
    cfg = pki.config(sink.port, extra='[policy]\noutbound_no_genuine = "clear"',
                     directory=world.gateway_directory_lines() + 'base = "dc=keypsot"\n')
    with running_gateway(cfg) as g:
        code, text = send(g.port, ALICE, [CAROL],
                          _only_to_our_gateway(world, CAROL, "not in clear"))
    assert code == 451 and "noSuchObject" in text, text
    assert sink.handler.messages == []
    check = subprocess.run([*KEYPOST, "gateway", "check-config", "--connect", "--config",
                            str(cfg)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 1 and "noSuchObject" in check.stderr, check.stdout


# --- the other ways to reach the directory ----------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https", "ldaps", "starttls"])
def test_fig2_over_http_ldaps_and_starttls(
    pki: Pki, world: DirectoryWorld, sink: Sink, scheme: str
) -> None:
    url = {"http": f"http://127.0.0.1:{world.http_port}",
           "https": f"https://127.0.0.1:{world.https_port}",
           "ldaps": f"ldaps://127.0.0.1:{world.ldaps_port}",
           "starttls": f"ldap://127.0.0.1:{world.ldap_port}"}[scheme]
    lines = world.gateway_directory_lines(url) + (
        "starttls = true\n" if scheme == "starttls" else "")
    cfg = pki.config(sink.port, directory=lines)
    enc = _only_to_our_gateway(world, CAROL, f"via {scheme}")
    with running_gateway(cfg) as g:
        assert send(g.port, ALICE, [CAROL], enc)[0] == 250
        signed = plain_message(sender=ALICE, to=CAROL, subject="[sign] s", body=f"sig {scheme}")
        assert send(g.port, ALICE, [CAROL], signed)[0] == 250
    got = sink.handler.messages
    clear = smime.Decryptor([world.carol_key]).decrypt_message(got[0].data).message
    assert f"via {scheme}".encode() in clear
    assert b"multipart/signed" in got[1].data


@pytest.mark.parametrize("scheme", ["ldaps", "https"])
def test_ldaps_with_an_untrusted_server_certificate_is_a_temporary_failure(
    pki: Pki, world: DirectoryWorld, sink: Sink, scheme: str
) -> None:
    port = world.ldaps_port if scheme == "ldaps" else world.https_port
    cfg = config(pki, world, sink, url=f"{scheme}://127.0.0.1:{port}", tls_ca=False)
    with running_gateway(cfg) as g:
        code, _ = send(g.port, ALICE, [CAROL], _only_to_our_gateway(world, CAROL, "tls"))
    assert code == 451
    assert sink.handler.messages == []


def test_logs_hold_no_secrets(
    pki: Pki, world: DirectoryWorld, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with running_gateway(config(pki, world, sink)) as g:
        send(g.port, ALICE, [CAROL], plain_message(sender=ALICE, to=CAROL, subject="[sign] l"))
        send(g.port, ALICE, [CAROL], _only_to_our_gateway(world, CAROL, "log check"))
        send(g.port, ALICE, [DAVE], _only_to_our_gateway(world, DAVE, "refused"))
    assert len(sink.handler.messages) == 2
    text = caplog.text
    assert "-> 250" in text and "-> 554" in text  # the log says what happened ...
    assert GATEWAY_PW not in text and "PRIVATE KEY" not in text  # ... and nothing secret
    assert "log check" not in text  # nor message content


def test_whole_path_with_a_signing_request_is_signed_inside_and_reencrypted(
    gw: RunningGateway, sink: Sink, world: DirectoryWorld, tmp_path: Path
) -> None:
    path = user_containers(world, BOB)
    msg = plain_message(sender=ALICE, to=BOB, subject="[sign] path", body="signed path")
    enc = smime.encrypt_message(msg, path)
    assert send(gw.port, ALICE, [BOB], enc)[0] == 250
    [got] = sink.handler.messages
    assert smime.is_encrypted(got.data)  # the partner gateway still finds its envelope
    assert body_of(got.data) != body_of(enc)
    for key in (world.partner_key, world.bob_key):
        inner = smime.Decryptor([key]).decrypt_message(got.data).message
        done = openssl_verify(inner, world.ca_pem, tmp_path)
        assert done.returncode == 0, done.stderr
        assert b"signed path" in done.stdout


def test_sign_all_outbound_policy(pki: Pki, world: DirectoryWorld, sink: Sink) -> None:
    cfg = config(pki, world, sink, policy="[policy]\nsign_all_outbound = true")
    with running_gateway(cfg) as g:
        assert send(g.port, ALICE, [CAROL], plain_message(sender=ALICE, to=CAROL))[0] == 250
        # inbound mail is never signed by the receiving gateway
        assert send(g.port, CAROL, [ALICE], plain_message(sender=CAROL, to=ALICE))[0] == 250
    out, inbound = sink.handler.messages
    assert b"multipart/signed" in out.data
    assert b"multipart/signed" not in inbound.data


def test_outbound_quarantine_notifies_the_sender(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    script = tmp_path / "scan.sh"
    script.write_text("#!/bin/sh\nif grep -q HOLD; then echo held; exit 2; fi\nexit 0\n")
    script.chmod(0o755)
    cfg = pki.config(sink.port, directory=world.gateway_directory_lines(),
                     quarantine=str(tmp_path / "q"), extra=f'[scan]\ncommand = "{script}"')
    with running_gateway(cfg) as g:
        code, _ = send(g.port, ALICE, [CAROL], _only_to_our_gateway(world, CAROL, "HOLD me"))
    assert code == 250
    [notice] = sink.handler.messages
    assert notice.rcpt_tos == [ALICE] and b"HOLD me" not in notice.data
    assert len(list((tmp_path / "q" / "new").iterdir())) == 1


def test_check_config_connect_logs_in_and_checks_the_signing_container(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    cfg = config(pki, world, sink)
    ok = subprocess.run([*KEYPOST, "gateway", "check-config", "--connect", "--config", str(cfg)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "signing container for postmaster@example.com valid until" in ok.stdout
    bad_pw = write_private(tmp_path / "bad.pass", b"wrong\n")
    bad = pki.config(sink.port, directory=world.gateway_directory_lines().replace(
        str(world.gateway_pw_file), str(bad_pw)))
    no = subprocess.run([*KEYPOST, "gateway", "check-config", "--connect", "--config", str(bad)],
                        capture_output=True, text=True, timeout=60)
    assert no.returncode == 1 and "bind refused" in no.stderr and "Traceback" not in no.stderr


# --- releasing held outbound mail ---------------------------------------------------------


def _holding_config(pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path,
                    extra: str = "") -> Path:
    script = tmp_path / "scan.sh"
    script.write_text("#!/bin/sh\nif grep -q HOLD; then echo held; exit 2; fi\nexit 0\n")
    script.chmod(0o755)
    return pki.config(sink.port, directory=world.gateway_directory_lines(),
                      quarantine=str(tmp_path / "q"),
                      extra=f'{extra}\n[scan]\ncommand = "{script}"\nscan_plain = true')


def _release(cfg: Path, qid: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KEYPOST, "gateway", "quarantine", "--config", str(cfg), "release",
                           qid], capture_output=True, text=True, timeout=120)


def _held(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "q" / "new").iterdir())


def test_released_outbound_mail_is_reencrypted_not_sent_clear(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    cfg = _holding_config(pki, world, sink, tmp_path)
    with running_gateway(cfg) as g:
        code, _ = send(g.port, ALICE, [CAROL], _only_to_our_gateway(world, CAROL, "HOLD me"))
    assert code == 250
    [held] = _held(tmp_path)
    done = _release(cfg, held.name)
    assert done.returncode == 0, done.stderr
    _notice, released = sink.handler.messages
    assert released.rcpt_tos == [CAROL] and released.mail_from == ALICE
    assert b"HOLD me" not in released.data
    assert smime.is_encrypted(released.data)
    clear = smime.Decryptor([world.carol_key]).decrypt_message(released.data).message
    assert b"HOLD me" in clear and b"X-Keypost-Onward" not in clear
    assert _held(tmp_path) == []


def test_released_plain_outbound_mail_gets_the_signature_it_asked_for(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    cfg = _holding_config(pki, world, sink, tmp_path)
    msg = plain_message(sender=ALICE, to=CAROL, subject="[sign] Offer", body="HOLD signed")
    with running_gateway(cfg) as g:
        assert send(g.port, ALICE, [CAROL], msg)[0] == 250
    [held] = _held(tmp_path)
    done = _release(cfg, held.name)
    assert done.returncode == 0, done.stderr
    released = sink.handler.messages[-1]
    assert released.rcpt_tos == [CAROL] and b"multipart/signed" in released.data
    assert b"[sign]" not in released.data
    verified = openssl_verify(released.data, world.ca_pem, tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert b"HOLD signed" in verified.stdout


def test_release_that_cannot_be_treated_keeps_the_message_held(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    """An entry without recorded steps (an older gateway wrote it) and one whose recipient
    has no certificate under encrypt-only: both refused in one line, kept, nothing sent."""
    cfg = _holding_config(pki, world, sink, tmp_path)
    qdir = Maildir(tmp_path / "q")
    old = qdir.store(plain_message(sender=ALICE, to=CAROL, body="old clear"), ALICE, [CAROL],
                     "held", None)
    nocert = qdir.store(plain_message(sender=ALICE, to=DAVE, body="for dave"), ALICE, [DAVE],
                        "held", Onward(encrypt=True))
    for qid, why in ((old, "older gateway version"), (nocert, f"no certificate for {DAVE}")):
        done = _release(cfg, qid)
        assert done.returncode == 1
        assert len(done.stderr.splitlines()) == 1, done.stderr
        assert f"{qid} not released (still held)" in done.stderr and why in done.stderr
    assert sink.handler.messages == []
    assert [p.name for p in _held(tmp_path)] == sorted([old, nocert])


# --- signing only for the envelope sender -------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "subject", "from_field"),
    [
        ("", "[sign] Offer", "ceo@example.com"),  # another address of the same domain
        ("", "[sign] Offer", "Alice <alice@example.com>, ceo@example.com"),  # two addresses
        ("[policy]\nsign_all_outbound = true", "Offer", '"alice@example.com" <ceo@example.com>'),
    ],
)
def test_signing_is_refused_when_from_is_not_the_envelope_sender(
    pki: Pki, world: DirectoryWorld, sink: Sink, caplog: pytest.LogCaptureFixture,
    policy: str, subject: str, from_field: str,
) -> None:
    caplog.set_level(logging.WARNING)
    msg = plain_message(sender=from_field, to=CAROL, subject=subject, body="forged")
    with running_gateway(config(pki, world, sink, policy=policy)) as g:
        code, text = send(g.port, ALICE, [CAROL], msg)
        # the same sender with its own From (case folded as keypost.core does) is signed
        own = plain_message(sender="Alice <ALICE@Example.COM>", to=CAROL, subject=subject)
        assert send(g.port, ALICE, [CAROL], own)[0] == 250
    assert code == 554 and text.startswith("5.7.1 not signed:"), text
    assert "signs only mail whose From is the envelope sender" in text
    [signed] = sink.handler.messages
    assert b"multipart/signed" in signed.data and b"forged" not in signed.data
    assert f"not signed for <{ALICE}>" in caplog.text


def test_whole_path_message_without_a_genuine_certificate_is_forwarded(
    gw: RunningGateway, sink: Sink, world: DirectoryWorld
) -> None:
    """The path of a recipient with no genuine certificate is the two gateways' containers:
    the gateway must recognise the partner gateway's container alice's add-on used (it asks
    the directory as its own account), so the original goes on."""
    path = user_containers(world, EVE)  # own gateway + partner gateway, nothing genuine
    assert len(path) == 2
    enc = smime.encrypt_message(plain_message(sender=ALICE, to=EVE, body="proxy path"), path)
    assert send(gw.port, ALICE, [EVE], enc)[0] == 250
    [got] = sink.handler.messages
    # the original, to the partner gateway's container alone (ours is taken out)
    [partner] = _theirs(world, path)
    assert _names(got.data) == {(partner.issuer, partner.serial_number)}
    assert b"proxy path" in smime.Decryptor([world.partner_key]).decrypt_message(got.data).message
