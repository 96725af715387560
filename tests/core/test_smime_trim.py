"""smime.trim_recipients: an envelope relayed to one recipient names only that recipient's
certificates. Real peers: `openssl cms -encrypt` writes the envelopes (several recipients,
-keyid, -stream BER, AES-GCM AuthEnvelopedData, EC key agreement), `openssl cms -decrypt`
opens the trimmed ones with each kept key (and not with a removed one), `openssl cms
-cmsout -print` lists what they still name."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from pki_util import email_cert, key_pem, make_ca, self_signed

from keypost.core import cms, smime
from keypost.core.errors import SmimeError
from keypost.core.x509_ext import der_oid, der_tlv

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")

ENTITY = b"Content-Type: text/plain; charset=us-ascii\r\n\r\nfor some of you\r\n"
Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
CA = make_ca("trim test CA")
# three RSA recipients (with a subjectKeyIdentifier, for -keyid) and two EC ones
RSA = [email_cert(CA, f"{n}@trim.example", ski=True) for n in ("ann", "ben", "cat")]
EC: list[tuple[Key, x509.Certificate]] = []
for _n in ("dan", "eli"):
    _k = ec.generate_private_key(ec.SECP256R1())
    EC.append((_k, self_signed(_k, f"{_n} ec", f"{_n}@trim.example")))


def _run(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(a) for a in args], capture_output=True, timeout=60, check=False)


def _pem(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _cert_file(tmp: Path, cert: x509.Certificate) -> Path:
    return _pem(tmp, f"cert-{cert.serial_number}.pem",
                cert.public_bytes(serialization.Encoding.PEM))


def encrypted(tmp: Path, certs: list[x509.Certificate], *options: str) -> bytes:
    """What `openssl cms -encrypt` mails (its own header block, LF line ends)."""
    entity = _pem(tmp, "entity", ENTITY)
    recips = [a for c in certs for a in ("-recip", str(_cert_file(tmp, c)))]
    done = _run("openssl", "cms", "-encrypt", "-binary", "-in", entity, *recips, *options)
    assert done.returncode == 0, done.stderr
    return done.stdout


def opens(tmp: Path, message: bytes, key: Key, cert: x509.Certificate | None = None
          ) -> bytes | None:
    """`openssl cms -decrypt` with `key` alone (tried on every RecipientInfo; with `cert`,
    on those naming it): the content, or None when it does not open.

    Without `cert` a key that no RecipientInfo names can still "open" the message to
    garbage: a failed RSA unwrap goes on with a random content key (openssl's
    Bleichenbacher countermeasure), and a random key passes AES-CBC's padding check about
    once in 256. So checks that a key cannot read the message compare with the content
    (`!= ENTITY`); `is None` holds only with `cert`."""
    msg = _pem(tmp, "trimmed.eml", message)
    named = ["-recip", str(_cert_file(tmp, cert))] if cert is not None else []
    done = _run("openssl", "cms", "-decrypt", "-in", msg, "-inkey",
                _pem(tmp, "key.pem", key_pem(key)), *named)
    return done.stdout if done.returncode == 0 else None


def printed(tmp: Path, message: bytes) -> str:
    done = _run("openssl", "cms", "-cmsout", "-print", "-in", _pem(tmp, "print.eml", message))
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


def serials(text: str) -> set[int]:
    """The serial numbers an `openssl cms -print` names in issuerAndSerialNumbers."""
    return {int(s, 16) for s in re.findall(r"serialNumber: (?:0x)?([0-9A-F]+)", text)}


def skis(message: bytes) -> set[bytes]:
    return set(smime.recipient_identifiers(message)[1])


def ski(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


OPTIONS = {
    "cbc": ["-aes256"],
    "stream-ber": ["-aes256", "-stream"],
    "gcm": ["-aes-256-gcm"],
    "gcm-stream": ["-aes-256-gcm", "-stream"],
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_only_the_kept_recipients_are_named_and_each_still_opens_it(
    tmp_path: Path, options: list[str]
) -> None:
    (ann_key, ann), (ben_key, ben), (cat_key, cat) = RSA
    message = encrypted(tmp_path, [ann, ben, cat], *options)
    assert serials(printed(tmp_path, message)) == {ann.serial_number, ben.serial_number,
                                                    cat.serial_number}
    trimmed = smime.trim_recipients(message, [ann, cat])
    text = printed(tmp_path, trimmed)
    assert serials(text) == {ann.serial_number, cat.serial_number}
    assert text.count("d.ktri:") == 2
    assert opens(tmp_path, trimmed, ann_key) == ENTITY
    assert opens(tmp_path, trimmed, cat_key) == ENTITY
    assert opens(tmp_path, trimmed, ben_key) != ENTITY
    # the headers as they were, the body base64 in 76-column lines with the message's LF
    head, _, body = trimmed.partition(b"\n\n")
    assert head == message.partition(b"\n\n")[0]
    assert b"\r" not in body and max(len(line) for line in body.split(b"\n")) == 76
    # our own reader agrees, and the version follows what remains (all v0 ktri: 0)
    assert {r.serial for r in smime.recipient_ids(trimmed)} == {ann.serial_number,
                                                                cat.serial_number}
    assert "version: 0" in text.split("recipientInfos:")[0]


def test_recipients_named_by_key_identifier(tmp_path: Path) -> None:
    (ann_key, ann), (ben_key, ben), (cat_key, cat) = RSA
    message = encrypted(tmp_path, [ann, ben, cat], "-aes256", "-keyid")
    trimmed = smime.trim_recipients(message, [ben])
    assert skis(trimmed) == {ski(ben)}
    text = printed(tmp_path, trimmed)
    assert text.count("d.ktri:") == 1 and "subjectKeyIdentifier" in text
    # only v2 (SKI) KeyTransRecipientInfos remain: EnvelopedData version 2 (RFC 5652 6.1)
    assert "version: 2" in text.split("recipientInfos:")[0]
    assert opens(tmp_path, trimmed, ben_key) == ENTITY
    assert opens(tmp_path, trimmed, ann_key) != ENTITY
    assert opens(tmp_path, trimmed, cat_key) != ENTITY


@pytest.mark.parametrize("options", [["-aes256"], ["-aes-128-gcm", "-stream"]],
                         ids=["cbc", "gcm-stream"])
def test_key_agreement_recipients_go_and_the_version_follows(
    tmp_path: Path, options: list[str]
) -> None:
    """openssl writes one KeyAgreeRecipientInfo per EC certificate: the removed ones go
    whole; with only a v0 KeyTransRecipientInfo left, EnvelopedData becomes version 0."""
    (dan_key, dan), (eli_key, eli) = EC
    ann_key, ann = RSA[0]
    message = encrypted(tmp_path, [dan, ann, eli], *options)
    assert printed(tmp_path, message).count("d.kari:") == 2
    trimmed = smime.trim_recipients(message, [ann])
    text = printed(tmp_path, trimmed)
    assert "d.kari:" not in text and serials(text) == {ann.serial_number}
    assert "version: 0" in text.split("recipientInfos:")[0]
    assert opens(tmp_path, trimmed, ann_key) == ENTITY
    assert opens(tmp_path, trimmed, dan_key) != ENTITY
    kept = smime.trim_recipients(message, [eli])
    text = printed(tmp_path, kept)
    assert text.count("d.kari:") == 1 and "d.ktri:" not in text and serials(text) == {
        eli.serial_number}
    if "gcm" not in options[0]:  # AuthEnvelopedData is always version 0 (RFC 5083)
        assert "version: 2" in text.split("recipientInfos:")[0]
    assert opens(tmp_path, kept, eli_key) == ENTITY
    assert opens(tmp_path, kept, dan_key) != ENTITY and opens(tmp_path, kept, ann_key) != ENTITY


def _shared_agreement(certs: list[x509.Certificate], cek: bytes) -> bytes:
    """One KeyAgreeRecipientInfo with a RecipientEncryptedKey per certificate (same
    curve, one ephemeral key: RFC 5652 6.2.2 allows it; openssl writes one per recipient)."""
    first = certs[0].public_key()
    assert isinstance(first, ec.EllipticCurvePublicKey)
    ephemeral = ec.generate_private_key(first.curve)
    reks = b""
    for cert in certs:
        public = cert.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        kek = cms.shared_kek(ephemeral.exchange(ec.ECDH(), public), hashes.SHA256(),
                             cms.OID_AES256_WRAP, None)
        rid = der_tlv(0x30, cert.issuer.public_bytes()
                      + cms._der_int(cert.serial_number))
        reks += der_tlv(0x30, rid + der_tlv(0x04, aes_key_wrap(kek, cek)))
    point = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    alg = der_tlv(0x30, der_oid("1.2.840.10045.2.1") + der_tlv(0x05, b""))
    originator = der_tlv(0xA0, der_tlv(0xA1, alg + der_tlv(0x03, b"\x00" + point)))
    kdf = der_tlv(0x30, der_oid("1.3.132.1.11.1") + der_tlv(0x30, der_oid(
        "2.16.840.1.101.3.4.1.45")))
    return der_tlv(0xA1, der_tlv(0x02, b"\x03") + originator + kdf + der_tlv(0x30, reks))


def test_keys_inside_one_key_agreement_are_kept_one_by_one(tmp_path: Path) -> None:
    """A KeyAgreeRecipientInfo for two EC recipients keeps only the kept one's key."""
    (dan_key, dan), (eli_key, eli) = EC
    cek, iv = os.urandom(32), os.urandom(16)
    padder = sym_padding.PKCS7(128).padder()
    padded = padder.update(ENTITY) + padder.finalize()
    encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    eci = der_tlv(0x30, der_oid("1.2.840.113549.1.7.1") + der_tlv(0x30, der_oid(
        "2.16.840.1.101.3.4.1.42") + der_tlv(0x04, iv)) + der_tlv(0x80, ciphertext))
    env = der_tlv(0x30, der_tlv(0x02, b"\x02") + der_tlv(0x31, _shared_agreement(
        [dan, eli], cek)) + eci)
    der = der_tlv(0x30, der_oid("1.2.840.113549.1.7.3") + der_tlv(0xA0, env))
    message = (b"MIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; "
               b"smime-type=enveloped-data\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               + smime.m.b64_lines(der))
    # openssl reads the hand-made envelope (-recip: without it, openssl tries a key on
    # the first RecipientEncryptedKey of a KeyAgreeRecipientInfo only)
    assert opens(tmp_path, message, dan_key, dan) == ENTITY
    assert opens(tmp_path, message, eli_key, eli) == ENTITY
    trimmed = smime.trim_recipients(message, [eli])
    text = printed(tmp_path, trimmed)
    assert text.count("d.kari:") == 1 and serials(text) == {eli.serial_number}
    assert text.count("encryptedKey:") == 1
    assert b"\r\n" in trimmed.partition(b"\r\n\r\n")[2]  # CRLF as the message had it
    assert opens(tmp_path, trimmed, eli_key) == ENTITY  # now the first one
    assert opens(tmp_path, trimmed, eli_key, eli) == ENTITY
    assert opens(tmp_path, trimmed, dan_key, dan) is None
    assert opens(tmp_path, trimmed, dan_key) != ENTITY


def test_what_names_no_one_else_is_returned_as_it_is(tmp_path: Path) -> None:
    (_, ann), (_, ben), _ = RSA
    message = encrypted(tmp_path, [ann, ben], "-aes256", "-stream")
    assert smime.trim_recipients(message, [ann, ben]) is message


def test_a_signature_around_the_envelope_leaves_the_message_as_it_is(tmp_path: Path) -> None:
    """A signature covers the envelope's bytes: trimming would break it."""
    (ann_key, ann), (_, ben), _ = RSA
    enveloped = _pem(tmp_path, "env.eml", encrypted(tmp_path, [ann, ben], "-aes256"))
    for opaque in ([], ["-nodetach"]):
        done = _run("openssl", "cms", "-sign", "-in", enveloped, "-signer",
                    _cert_file(tmp_path, ann), "-inkey",
                    _pem(tmp_path, "signer.key", key_pem(ann_key)), *opaque)
        assert done.returncode == 0, done.stderr
        assert smime.trim_recipients(done.stdout, [ann]) is done.stdout


def test_an_envelope_naming_none_of_them_is_refused(tmp_path: Path) -> None:
    (_, ann), (_, ben), (_, cat) = RSA
    message = encrypted(tmp_path, [ann, ben], "-aes256")
    with pytest.raises(SmimeError, match="names none"):
        smime.trim_recipients(message, [cat])


def test_binary_der_stays_binary(tmp_path: Path) -> None:
    (ann_key, ann), (_, ben), _ = RSA
    der = encrypted(tmp_path, [ann, ben], "-aes256", "-outform", "DER")
    message = (b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n"
               b"Content-Transfer-Encoding: binary\r\n\r\n" + der)
    trimmed = smime.trim_recipients(message, [ann])
    head, _, body = trimmed.partition(b"\r\n\r\n")
    assert head == message.partition(b"\r\n\r\n")[0]
    assert [r.serial for r in smime.recipient_ids(body)] == [ann.serial_number]
    done = _run("openssl", "cms", "-decrypt", "-inform", "DER", "-in",
                _pem(tmp_path, "b.der", body), "-inkey",
                _pem(tmp_path, "a.key", key_pem(ann_key)))
    assert done.returncode == 0 and done.stdout == ENTITY, done.stderr


def _with_fields(der: bytes, originator: bytes, unprotected: bytes) -> bytes:
    """`der` (EnvelopedData) with an originatorInfo and unprotectedAttrs written in."""
    buf = memoryview(der)
    kind, env = cms.content_info(buf, (cms.OID_ENVELOPED_DATA,), "x")
    version, infos, eci = cms.children(buf, env)
    body = (bytes(buf[version.head : version.next]) + originator
            + bytes(buf[infos.head : eci.next]) + unprotected)
    return der_tlv(0x30, der_tlv(0x06, kind) + der_tlv(0xA0, der_tlv(0x30, body)))


@pytest.mark.parametrize(("certificate_tag", "version"), [(0x30, 2), (0xA2, 3), (0xA3, 4)],
                         ids=["certificate", "v2-attribute-certificate", "other"])
def test_the_version_counts_originator_info_and_unprotected_attributes(
    tmp_path: Path, certificate_tag: int, version: int
) -> None:
    """RFC 5652 6.1: originatorInfo or unprotectedAttrs make a v0-only envelope version 2,
    a v2 attribute certificate 3, an `other` certificate 4. (Written in by hand: openssl
    writes neither; it reads both.)"""
    (ann_key, ann), (_, ben), _ = RSA
    der = encrypted(tmp_path, [ann, ben], "-aes256", "-outform", "DER")
    cert = ann.public_bytes(serialization.Encoding.DER)
    choice = cert if certificate_tag == 0x30 else der_tlv(certificate_tag, b"")  # its tag counts
    originator = der_tlv(0xA0, der_tlv(0xA0, choice))
    attribute = der_tlv(0x30, der_oid("1.2.840.113549.1.9.3") + der_tlv(0x31, der_oid(
        "1.2.840.113549.1.7.1")))
    for extra, unprotected in ((originator, b""), (b"", der_tlv(0xA1, attribute))):
        message = (b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n"
                   b"Content-Transfer-Encoding: binary\r\n\r\n"
                   + _with_fields(der, extra, unprotected))
        trimmed = smime.trim_recipients(message, [ann]).partition(b"\r\n\r\n")[2]
        buf = memoryview(trimmed)
        env = cms.children(buf, cms.content_info(buf, (cms.OID_ENVELOPED_DATA,), "x")[1])
        assert cms.integer(buf, env[0]) == (version if extra else 2)
        assert [r.serial for r in smime.recipient_ids(trimmed)] == [ann.serial_number]
        if certificate_tag == 0x30:  # openssl reads these and opens them
            done = _run("openssl", "cms", "-decrypt", "-inform", "DER", "-in",
                        _pem(tmp_path, "v.der", trimmed), "-inkey",
                        _pem(tmp_path, "a.key", key_pem(ann_key)))
            assert done.returncode == 0 and done.stdout == ENTITY, done.stderr
