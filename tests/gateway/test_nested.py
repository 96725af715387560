"""Encryption inside a signature (encrypt-then-sign, RFC 2634 triple wrap): the gateway
verifies and removes the signature layers around an envelope for its domain, records
the result, decrypts, and goes on as for any encrypted mail. Messages are built by
`openssl cms` (an independent sender) and travel through real SMTP.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from gw_directory import DirectoryWorld
from gw_support import Pki, Sink, body_of, plain_message, running_gateway, send, write_private
from gw_verify import openssl_verify
from pki_util import email_cert, key_pem, make_ca, rsa_key

from keypost.core import smime
from keypost.core.containers import to_pem

ALICE, BOB = "alice@example.com", "bob@partner.org"
SECRET = "secret nested figures"
HEADER = "X-Keypost-Outer-Signature"


def _run(args: list[str]) -> bytes:
    """openssl's output, with CRLF line ends (it writes LF outside the signed part)."""
    done = subprocess.run(args, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return re.sub(rb"(?<!\r)\n", b"\r\n", done.stdout)


def _enveloped(tmp: Path, recipient: x509.Certificate, entity: Path | None = None) -> Path:
    """An application/pkcs7-mime enveloped-data entity for `recipient` (no From/To: the
    signature layer around it carries them) holding `entity` (default: SECRET as text)."""
    if entity is None:
        entity = tmp / "entity"
        entity.write_bytes(
            f"Content-Type: text/plain; charset=us-ascii\r\n\r\n{SECRET}\r\n".encode())
    return _encrypt(entity, recipient)


def _encrypt(src: Path, recipient: x509.Certificate, outer: bool = False,
             also: x509.Certificate | None = None) -> Path:
    """`src` (a MIME entity) in an enveloped-data entity for `recipient` (and `also`), by
    `openssl cms -encrypt`; an `outer` envelope gets From, To and Subject."""
    pems: list[str] = []
    for cert in (recipient, also) if also else (recipient,):
        pem = src.with_name(f"{src.stem}.recipient-{cert.serial_number}.pem")
        pem.write_bytes(to_pem(cert))
        pems.append(str(pem))
    envelope = ["-from", BOB, "-to", ALICE, "-subject", "Nested"] if outer else []
    out = src.with_name(f"{src.stem}.enveloped{'' if outer else '-inner'}.eml")
    out.write_bytes(_run(["openssl", "cms", "-encrypt", "-aes256", "-in", str(src), *envelope,
                          *pems]))
    return out


class Signer:
    def __init__(self, tmp: Path, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> None:
        self.key = write_private(tmp / f"signer-{cert.serial_number}.key", key_pem(key))
        self.cert = tmp / f"signer-{cert.serial_number}.pem"
        self.cert.write_bytes(to_pem(cert))

    def sign(self, src: Path, form: str, outer: bool = True, sender: str = BOB,
             rcpt: str = ALICE) -> Path:
        """`src` signed as a MIME entity: detached (multipart/signed), opaque
        (application/pkcs7-mime signed-data, DER) or opaque-stream (BER, indefinite); an
        `outer` layer gets From, To and Subject."""
        extra = {"detached": [], "opaque": ["-nodetach"],
                 "opaque-stream": ["-nodetach", "-stream"]}[form]
        envelope = ["-from", sender, "-to", rcpt, "-subject", "Nested"] if outer else []
        out = src.with_name(f"{src.stem}.{form}{'' if outer else '-inner'}.eml")
        out.write_bytes(_run(["openssl", "cms", "-sign", "-in", str(src), "-signer",
                              str(self.cert), "-inkey", str(self.key), *extra, *envelope]))
        return out


def _bob(world: DirectoryWorld, tmp: Path) -> Signer:
    """bob@partner.org with his genuine certificate (its CA is in genuine_roots)."""
    cert = x509.load_pem_x509_certificate((world.root / f"{BOB}.pem").read_bytes())
    return Signer(tmp, world.bob_key, cert)


def _scanner(tmp: Path) -> str:
    """A scan command that keeps what it was shown in tmp/scanned."""
    script = tmp / "scanner.py"
    script.write_text("import sys\n"
                      f"open({str(tmp / 'scanned')!r}, 'wb').write(sys.stdin.buffer.read())\n")
    return f'[scan]\ncommand = ["{sys.executable}", "{script}"]\n'


def _config(pki: Pki, world: DirectoryWorld, sink: Sink, tmp: Path) -> Path:
    return pki.config(sink.port, directory=world.gateway_directory_lines(), folder=tmp,
                      extra=_scanner(tmp))


@pytest.mark.parametrize("form", ["detached", "opaque", "opaque-stream"])
def test_a_signed_envelope_is_verified_unwrapped_decrypted_and_scanned(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path, form: str
) -> None:
    message = _bob(world, tmp_path).sign(
        _enveloped(tmp_path, pki.container(pki.current)), form).read_bytes()
    with running_gateway(_config(pki, world, sink, tmp_path)) as gw:
        code, text = send(gw.port, BOB, [ALICE], message)
    assert code == 250, text
    [got] = sink.handler.messages
    assert SECRET.encode() in got.data
    assert b"pkcs7" not in got.data.lower() and b"multipart/signed" not in got.data
    assert b"X-Keypost-Decrypted: key=current" in got.data
    assert f"{HEADER}: verified; signer={BOB}; removed to decrypt\r\n".encode() in got.data
    assert b"From: " + BOB.encode() in got.data and b"Subject: Nested" in got.data
    scanned = (tmp_path / "scanned").read_bytes()  # the scanner saw the clear text
    assert SECRET.encode() in scanned and b"pkcs7" not in scanned.lower()


def test_an_outer_signature_that_does_not_verify_is_recorded_and_the_mail_delivered(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    """The layer goes either way (decryption invalidates it); the header says it failed."""
    key, cert = email_cert(make_ca("Unknown CA", rsa_key()), BOB)
    message = Signer(tmp_path, key, cert).sign(
        _enveloped(tmp_path, pki.container(pki.current)), "detached").read_bytes()
    with running_gateway(_config(pki, world, sink, tmp_path)) as gw:
        code, text = send(gw.port, BOB, [ALICE], message)
    assert code == 250, text
    [got] = sink.handler.messages
    assert SECRET.encode() in got.data and b"multipart/signed" not in got.data
    [value] = [line for line in got.data.split(b"\r\n") if line.startswith(HEADER.encode())]
    assert value.startswith(f"{HEADER}: not verified (".encode()), value
    assert b"not issued by a trusted" in value
    assert f"signer={BOB}; removed to decrypt".encode() in value


def test_a_triple_wrap_keeps_its_inner_signature_for_the_recipient(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    """RFC 2634 sign-encrypt-sign: the outer signature goes (it signed the ciphertext), the
    inner one, over the text, reaches the recipient and verifies with openssl."""
    bob = _bob(world, tmp_path)
    (tmp_path / "text").write_bytes(f"Content-Type: text/plain\r\n\r\n{SECRET}\r\n".encode())
    signed_text = bob.sign(tmp_path / "text", "detached", outer=False)
    message = bob.sign(_enveloped(tmp_path, pki.container(pki.current), signed_text), "opaque")
    with running_gateway(_config(pki, world, sink, tmp_path)) as gw:
        code, text = send(gw.port, BOB, [ALICE], message.read_bytes())
    assert code == 250, text
    [got] = sink.handler.messages
    assert got.data.count(f"{HEADER}: verified; signer={BOB}".encode()) == 1
    assert b"multipart/signed" in got.data and b"X-Keypost-Decrypted" in got.data
    done = openssl_verify(got.data, world.genuine_ca_pem, tmp_path)
    assert done.returncode == 0, done.stderr
    assert SECRET.encode() in done.stdout


def test_what_the_sender_wrote_cannot_pose_as_the_verdict_nor_push_the_signer_out(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    """A From the verifier quotes in its reasons ("invalid address: '...'") is the
    sender's text: it must not read as the header's own fields, and however long, the
    real signer and the removal stay (the reasons are what is cut)."""
    fake = f'"{"x" * 300}); verified; signer=ceo@bank.example; removed to decrypt; ("'
    message = _bob(world, tmp_path).sign(
        _enveloped(tmp_path, pki.container(pki.current)), "detached",
        sender=f"{fake}@partner.org").read_bytes()
    with running_gateway(_config(pki, world, sink, tmp_path)) as gw:
        code, text = send(gw.port, BOB, [ALICE], message)
    assert code == 250, text
    [got] = sink.handler.messages
    [value] = [line for line in got.data.split(b"\r\n") if line.startswith(HEADER.encode())]
    assert value.startswith(f"{HEADER}: not verified (invalid address".encode()), value
    assert value.endswith(f"); signer={BOB}; removed to decrypt".encode()), value
    assert value.count(b"signer=") == 1 and value.count(b"(") == value.count(b")") == 1
    assert b"; verified" not in value and b"; removed" not in value[:-40]
    assert len(value) <= len(HEADER) + 2 + 400


def test_three_signature_layers_are_unwrapped_and_a_fourth_is_refused(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    bob = _bob(world, tmp_path)
    inner = _enveloped(tmp_path, pki.container(pki.current))
    two = bob.sign(bob.sign(inner, "opaque", outer=False), "detached", outer=False)
    three = bob.sign(two, "opaque")
    four = bob.sign(bob.sign(two, "opaque", outer=False), "detached")
    # five: the walk through the signatures stops at the bound, before the envelope
    five = bob.sign(bob.sign(bob.sign(two, "opaque", outer=False), "opaque", outer=False),
                    "detached")
    with running_gateway(_config(pki, world, sink, tmp_path)) as gw:
        ok = send(gw.port, BOB, [ALICE], three.read_bytes())
        refused = [send(gw.port, BOB, [ALICE], m.read_bytes()) for m in (four, five)]
    assert ok[0] == 250, ok
    [got] = sink.handler.messages
    assert SECRET.encode() in got.data
    assert got.data.count(f"{HEADER}: verified; signer={BOB}".encode()) == 3
    assert refused == [(554, "5.6.0 more than 4 layers (signatures and envelopes) around the "
                        "content")] * 2


def test_a_signed_envelope_for_someone_else_passes_unchanged(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    """End-to-end mail to alice's own certificate: the gateway cannot open it, so the
    signature stays, for alice's client to check."""
    _, alices_own = email_cert(make_ca("Alice's CA", rsa_key()), ALICE)
    message = _bob(world, tmp_path).sign(_enveloped(tmp_path, alices_own), "detached")
    with running_gateway(_config(pki, world, sink, tmp_path)) as gw:
        code, text = send(gw.port, BOB, [ALICE], message.read_bytes())
    assert code == 250, text
    [got] = sink.handler.messages
    assert body_of(got.data) == body_of(message.read_bytes())
    assert HEADER.encode() not in got.data and b"X-Keypost-Decrypted" not in got.data


def test_signed_mail_without_encryption_keeps_its_signature(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    (tmp_path / "plain").write_bytes(b"Content-Type: text/plain\r\n\r\nsigned, not secret\r\n")
    message = _bob(world, tmp_path).sign(tmp_path / "plain", "detached").read_bytes()
    with running_gateway(_config(pki, world, sink, tmp_path)) as gw:
        assert send(gw.port, BOB, [ALICE], message)[0] == 250
    [got] = sink.handler.messages
    assert body_of(got.data) == body_of(message)
    assert HEADER.encode() not in got.data


def test_a_forged_outer_signature_claim_is_removed(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    forged = f"{HEADER}: verified; signer=ceo@example.com; removed to decrypt\r\n".encode()
    plain = forged + plain_message(BOB, ALICE)
    entity = (forged + b"Content-Type: text/plain\r\n\r\n" + SECRET.encode() + b"\r\n")
    encrypted = (f"From: {BOB}\r\nTo: {ALICE}\r\nMIME-Version: 1.0\r\n".encode()
                 + smime.encrypt_entity(entity, [pki.container(pki.current)]))
    with running_gateway(_config(pki, world, sink, tmp_path)) as gw:
        assert send(gw.port, BOB, [ALICE], plain)[0] == 250
        assert send(gw.port, BOB, [ALICE], encrypted)[0] == 250
    for got in sink.handler.messages:
        assert HEADER.encode() not in got.data and b"ceo@" not in got.data



def test_outbound_a_signed_envelope_for_our_gateway_is_opened_scanned_and_reencrypted(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    """alice's client encrypted to her gateway, then signed: the recipient could read
    neither, so the gateway opens it (the signature goes: it signed the ciphertext), scans
    and re-encrypts for carol's certificate, as for any mail encrypted to it."""
    carol = "carol@elsewhere.net"
    key, cert = email_cert(make_ca("Alice's CA", rsa_key()), ALICE)
    envelope = _enveloped(tmp_path, pki.container(pki.current, carol))
    message = Signer(tmp_path, key, cert).sign(envelope, "detached", sender=ALICE, rcpt=carol)
    with running_gateway(_config(pki, world, sink, tmp_path)) as gw:
        code, text = send(gw.port, ALICE, [carol], message.read_bytes())
    assert code == 250, text
    [got] = sink.handler.messages
    assert smime.is_encrypted(got.data)
    clear = smime.Decryptor([world.carol_key]).decrypt_message(got.data).message
    assert SECRET.encode() in clear and b"pkcs7" not in clear.lower()
    assert SECRET.encode() in (tmp_path / "scanned").read_bytes()


# --- envelopes inside envelopes ---------------------------------------------------------

DECRYPTED = "X-Keypost-Decrypted"


def _claims(message: bytes) -> list[str]:
    """The gateway's own header fields, in order, by name and verdict."""
    head = message.split(b"\r\n\r\n", 1)[0].decode()
    return [("signature " + line.split(": ", 1)[1].split(";")[0]
             if line.startswith(HEADER) else "decrypted")
            for line in head.split("\r\n")
            if line.startswith((HEADER, DECRYPTED))]


def _text(tmp: Path) -> Path:
    entity = tmp / "text"
    entity.write_bytes(f"Content-Type: text/plain; charset=us-ascii\r\n\r\n{SECRET}\r\n".encode())
    return entity


@pytest.mark.parametrize("inner", ["envelope", "signed envelope"])
def test_an_envelope_inside_an_envelope_is_opened_too(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path, inner: str
) -> None:
    """encrypt(encrypt(text)) and encrypt(sign(encrypt(text))), all to our containers: the
    recipient and the scanner get the text, and every layer is recorded, outermost first."""
    ours = pki.container(pki.current)
    middle = _encrypt(_text(tmp_path), ours)
    if inner == "signed envelope":
        middle = _bob(world, tmp_path).sign(middle, "opaque", outer=False)
    message = _encrypt(middle, ours, outer=True).read_bytes()
    with running_gateway(_config(pki, world, sink, tmp_path)) as gw:
        code, text = send(gw.port, BOB, [ALICE], message)
    assert code == 250, text
    [got] = sink.handler.messages
    assert SECRET.encode() in got.data and b"pkcs7" not in got.data.lower()
    assert b"From: " + BOB.encode() in got.data and b"Subject: Nested" in got.data
    expected = ["decrypted", "decrypted"]
    if inner == "signed envelope":
        expected = ["decrypted", "signature verified", "decrypted"]
    assert _claims(got.data) == expected
    scanned = (tmp_path / "scanned").read_bytes()
    assert SECRET.encode() in scanned and b"pkcs7" not in scanned.lower()


def test_four_layers_are_opened_and_a_fifth_follows_policy_malformed(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    """sign(encrypt(sign(encrypt(text)))) is 4 layers and opens; encrypt() around it is a
    fifth: rejected with the reason, or held under malformed = "quarantine", and never
    delivered as ciphertext."""
    bob, ours = _bob(world, tmp_path), pki.container(pki.current)
    two = bob.sign(_encrypt(_text(tmp_path), ours), "opaque", outer=False)
    four = bob.sign(_encrypt(two, ours), "detached")
    five = _encrypt(bob.sign(_encrypt(two, ours), "opaque", outer=False), ours, outer=True)
    reason = "more than 4 layers (signatures and envelopes) around the content"
    with running_gateway(_config(pki, world, sink, tmp_path)) as gw:
        ok = send(gw.port, BOB, [ALICE], four.read_bytes())
        refused = send(gw.port, BOB, [ALICE], five.read_bytes())
    assert ok[0] == 250, ok
    [got] = sink.handler.messages
    assert SECRET.encode() in got.data and b"pkcs7" not in got.data.lower()
    assert _claims(got.data) == ["signature verified", "decrypted", "signature verified",
                                 "decrypted"]
    assert refused == (554, f"5.6.0 {reason}")
    sink.handler.messages.clear()
    held = pki.config(sink.port, directory=world.gateway_directory_lines(), folder=tmp_path,
                      extra=_scanner(tmp_path) + '[policy]\nmalformed = "quarantine"\n',
                      quarantine=str(tmp_path / "q"))
    with running_gateway(held) as gw:
        code, text = send(gw.port, BOB, [ALICE], five.read_bytes())
    assert code == 250 and "quarantined=1" in text, text
    [kept] = list((tmp_path / "q" / "new").iterdir())
    assert body_of(kept.read_bytes()) == body_of(five.read_bytes())  # as it came
    [notice] = sink.handler.messages
    assert reason.encode() in notice.data and SECRET.encode() not in notice.data


@pytest.mark.parametrize("inner", ["envelope", "signed envelope"])
def test_an_end_to_end_envelope_inside_ours_stays_encrypted_and_is_delivered(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path, inner: str
) -> None:
    """The gateway layer outside, alice's own certificate inside: only the outer layer is
    ours to open. What is inside reaches her as it was (a signature around it too), and
    her key opens it."""
    alices_key, alices_own = email_cert(make_ca("Alice's CA", rsa_key()), ALICE)
    middle = _encrypt(_text(tmp_path), alices_own)
    if inner == "signed envelope":
        middle = _bob(world, tmp_path).sign(middle, "detached", outer=False)
    message = _encrypt(middle, pki.container(pki.current), outer=True).read_bytes()
    with running_gateway(_config(pki, world, sink, tmp_path)) as gw:
        code, text = send(gw.port, BOB, [ALICE], message)
    assert code == 250, text
    [got] = sink.handler.messages
    assert _claims(got.data) == ["decrypted"] and SECRET.encode() not in got.data
    envelope = got.data
    if inner == "signed envelope":
        assert b"multipart/signed" in got.data
        done = openssl_verify(got.data, world.genuine_ca_pem, tmp_path)
        assert done.returncode == 0, done.stderr
        envelope = done.stdout
    assert smime.is_encrypted(envelope)
    clear = smime.Decryptor([alices_key]).decrypt_message(envelope).message
    assert SECRET.encode() in clear


def test_outbound_an_envelope_inside_an_envelope_for_our_gateway_is_opened_too(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    """alice's client encrypted twice to the gateway's container for carol: carol gets the
    text re-encrypted for her, never an envelope she cannot open, and the scanner the text."""
    carol = "carol@elsewhere.net"
    ours = pki.container(pki.current, carol)
    message = _encrypt(_encrypt(_text(tmp_path), ours), ours, outer=True).read_bytes()
    message = message.replace(f"From: {BOB}".encode(), f"From: {ALICE}".encode())
    with running_gateway(_config(pki, world, sink, tmp_path)) as gw:
        code, text = send(gw.port, ALICE, [carol], message)
    assert code == 250, text
    [got] = sink.handler.messages
    clear = smime.Decryptor([world.carol_key]).decrypt_message(got.data).message
    assert SECRET.encode() in clear and b"pkcs7" not in clear.lower()
    scanned = (tmp_path / "scanned").read_bytes()
    assert SECRET.encode() in scanned and b"pkcs7" not in scanned.lower()


def test_outbound_a_whole_path_envelope_around_one_for_our_gateway_alone_is_reencrypted(
    pki: Pki, world: DirectoryWorld, sink: Sink, tmp_path: Path
) -> None:
    """The outer envelope names carol's own certificate too, the inner one only the
    gateway: carol could open the original but not what is inside it, so it is not
    forwarded as it came (every envelope opened must name her) but re-encrypted."""
    carol = "carol@elsewhere.net"
    ours = pki.container(pki.current, carol)
    genuine = x509.load_pem_x509_certificate((world.root / f"{carol}.pem").read_bytes())
    message = _encrypt(_encrypt(_text(tmp_path), ours), ours, outer=True, also=genuine)
    data = message.read_bytes().replace(f"From: {BOB}".encode(), f"From: {ALICE}".encode())
    with running_gateway(_config(pki, world, sink, tmp_path)) as gw:
        code, text = send(gw.port, ALICE, [carol], data)
    assert code == 250, text
    [got] = sink.handler.messages
    assert body_of(got.data) != body_of(data)
    clear = smime.Decryptor([world.carol_key]).decrypt_message(got.data).message
    assert SECRET.encode() in clear and b"pkcs7" not in clear.lower()
