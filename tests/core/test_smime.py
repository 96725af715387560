"""Unit tests of the S/MIME engine: encrypt/decrypt as a gateway, negotiation, uniform
failures, sign/verify (signingTime = Date)."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import email
import email.utils
import functools
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo, Prehashed
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    KeySerializationEncryption,
    PrivateFormat,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pki_util import PrivateKey
from pyasn1.codec.der import decoder as der_decoder
from pyasn1_modules import rfc5652
from test_smime_pki import Gateway, container, directory_ca, ec_certificate, gateway

from keypost.core import cms, smime
from keypost.core.errors import DecryptError, SmimeError
from keypost.core.types import Capability, Purpose
from keypost.core.x509_ext import der_tlv

MESSAGE = (
    b"From: Alice <alice@a.example>\n"
    b"To: bob@b.example\n"
    b"Cc: carol@c.example\n"
    b"Bcc: hidden@secret.example\n"
    b"Subject: quarterly figures\n"
    b"Date: Sat, 28 Nov 2026 14:00:00 +0000\n"
    b"Message-ID: <1@a.example>\n"
    b"MIME-Version: 1.0\n"
    b"Content-Type: text/plain; charset=utf-8\n"
    b"Content-Transfer-Encoding: 8bit\n"
    b"\n"
    b"Gr\xc3\xbc\xc3\x9fe,\nthe figures are attached.\n"
)


def _body_of(message: bytes) -> bytes:
    return message.split(b"\r\n\r\n", 1)[1]


def _der_of(message: bytes) -> bytes:
    return base64.b64decode(_body_of(message))


def _now_date() -> bytes:
    return email.utils.format_datetime(dt.datetime.now(dt.UTC).replace(microsecond=0)).encode()


# encrypt -------------------------------------------------------------------------------


def test_encrypt_message_format_and_clear_headers() -> None:
    out = smime.encrypt_message(MESSAGE, [container("bob@b.example", gateway())])
    head, body = out.split(b"\r\n\r\n", 1)
    assert b"\n" not in out.replace(b"\r\n", b"")  # CRLF everywhere
    for field in (
        b"From: Alice",
        b"To: bob",
        b"Cc: carol",
        b"Subject: quarterly",
        b"Date: ",
        b"Message-ID: ",
    ):
        assert field in head
    # no Bcc field (the ciphertext's base64 holds the three letters now and then)
    assert re.search(rb"(?im)^bcc:", out) is None and b"hidden@" not in out
    assert (
        b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m" in head
    )
    assert b"Content-Disposition: attachment; filename=smime.p7m" in head
    assert b"Content-Transfer-Encoding: base64" in head
    assert head.count(b"MIME-Version") == 1
    lines = body.split(b"\r\n")
    assert lines[-1] == b""
    assert all(len(line) == 76 for line in lines[:-2]) and 0 < len(lines[-2]) <= 76
    assert b"figures are attached" not in out and b"Gr\xc3\xbc" not in out


def test_round_trip_for_several_recipients_each_gateway_decrypts() -> None:
    gw_b, gw_c = gateway("gw.b.example"), gateway("gw.c.example")
    recipients = [container("bob@b.example", gw_b), container("carol@c.example", gw_c)]
    out = smime.encrypt_message(MESSAGE, recipients)
    assert len(smime.recipient_ids(out)) == 2
    for gw in (gw_b, gw_c):
        result = smime.Decryptor([gw.key]).decrypt_message(out)
        assert result.key_index == 0
        assert result.algorithm == "aes256-cbc"
        head, body = result.message.split(b"\r\n\r\n", 1)
        assert body == b"Gr\xc3\xbc\xc3\x9fe,\r\nthe figures are attached.\r\n"
        assert b"Subject: quarterly figures" in head
        assert b"Content-Type: text/plain; charset=utf-8" in head
        assert b"hidden@" not in result.message


def test_recipient_ids_name_the_containers_not_the_gateway() -> None:
    gw = gateway()
    cont = container("bob@b.example", gw)
    ids = smime.recipient_ids(smime.encrypt_message(MESSAGE, [cont]))
    assert ids == [smime.RecipientId(cont.issuer, cont.serial_number)]
    assert ids[0].serial != gw.cert.serial_number


def test_retired_key_still_decrypts() -> None:
    old, new = gateway("gw-2025"), gateway("gw-2026")
    out = smime.encrypt_message(MESSAGE, [container("bob@b.example", old)])
    result = smime.Decryptor([new.key, old.key]).decrypt_message(out)
    assert result.key_index == 1
    assert result.message.endswith(b"the figures are attached.\r\n")


def test_encrypt_entity_and_decrypt_der() -> None:
    entity = b"Content-Type: text/plain\r\n\r\nhello\r\n"
    out = smime.encrypt_entity(entity, [container("bob@b.example", gateway())])
    assert out.startswith(b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data")
    clear, index, algorithm = smime.Decryptor([gateway().key]).decrypt_der(_der_of(out))
    assert (clear, index, algorithm) == (entity, 0, "aes256-cbc")


def test_large_body_round_trip() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB of every byte value, binary-safe inside CMS
    entity = (
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        + body
    )
    out = smime.encrypt_entity(entity, [container("bob@b.example", gateway())])
    clear, _, _ = smime.Decryptor([gateway().key]).decrypt_der(_der_of(out))
    assert clear == entity


def test_message_without_content_type_gets_one() -> None:
    plain = b"From: a@a.example\r\nTo: bob@b.example\r\nSubject: x\r\n\r\nhi\r\n"
    out = smime.encrypt_message(plain, [container("bob@b.example", gateway())])
    result = smime.Decryptor([gateway().key]).decrypt_message(out)
    assert b"Content-Type: text/plain; charset=us-ascii\r\n\r\nhi\r\n" in result.message


# cipher negotiation --------------------------------------------------------------------


def test_choose_cipher_intersects_capabilities() -> None:
    gw = gateway()
    both = container("a@b.example", gw)
    only128 = container("b@b.example", gw, caps=(Capability.AES128_CBC,))
    only256 = container("c@b.example", gw, caps=(Capability.AES256_CBC,))
    no_ext = gw.cert  # the gateway's own certificate has no SMIMECapabilities
    assert smime.choose_cipher([both]) is Capability.AES256_CBC
    assert smime.choose_cipher([no_ext]) is Capability.AES256_CBC
    assert smime.choose_cipher([both, only128]) is Capability.AES128_CBC
    assert smime.choose_cipher([no_ext, only128]) is Capability.AES128_CBC
    assert smime.choose_cipher([only256, both]) is Capability.AES256_CBC
    with pytest.raises(SmimeError, match="no content-encryption"):
        smime.choose_cipher([only128, only256])


def test_negotiated_cipher_is_what_the_envelope_uses() -> None:
    gw = gateway()
    out = smime.encrypt_message(
        MESSAGE,
        [container("a@b.example", gw), container("b@b.example", gw, caps=(Capability.AES128_CBC,))],
    )
    content_info, _ = der_decoder.decode(_der_of(out), asn1Spec=rfc5652.ContentInfo())
    enveloped, _ = der_decoder.decode(content_info["content"], asn1Spec=rfc5652.EnvelopedData())
    algorithm = enveloped["encryptedContentInfo"]["contentEncryptionAlgorithm"]["algorithm"]
    assert str(algorithm) == "2.16.840.1.101.3.4.1.2"  # aes128-CBC
    assert smime.Decryptor([gw.key]).decrypt_message(out).algorithm == "aes128-cbc"


def test_ec_recipient_gets_key_agreement_and_no_recipient_is_refused() -> None:
    out = smime.encrypt_message(MESSAGE, [ec_certificate()])  # more in test_smime_ecdh.py
    assert len(smime.recipient_ids(out)) == 1
    with pytest.raises(SmimeError):
        smime.encrypt_message(MESSAGE, [])


def test_recipient_key_that_cannot_be_loaded_is_a_smime_error() -> None:
    """encrypt_message raises SmimeError only: a recipient key cryptography cannot load
    (here rsaEncryption's OID turned into an unknown one) raised UnsupportedAlgorithm."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = container("bob@b.example", gateway()).public_bytes(Encoding.DER)
    assert der.count(SPKI_RSA) == 1
    odd = x509.load_der_x509_certificate(der.replace(SPKI_RSA, SPKI_RSA[:-1] + b"\x7f"))
    with pytest.raises(SmimeError, match=r"key that cannot be loaded \(Unknown key type"):
        smime.encrypt_message(MESSAGE, [odd])


# uniform failures ----------------------------------------------------------------------


def _failure(decrypt: object, data: bytes) -> tuple[type[BaseException], str]:
    assert callable(decrypt)
    with pytest.raises(SmimeError) as info:
        decrypt(data)
    return type(info.value), str(info.value)


def _tamper_padding(der: bytes, content_len: int, new_pad: int) -> bytes:
    """Make the last plaintext byte `new_pad` by flipping the previous ciphertext block."""
    pad = 16 - content_len % 16
    out = bytearray(der)
    out[-17] ^= pad ^ new_pad
    return bytes(out)


def test_failures_are_uniform() -> None:
    gw, stranger = gateway(), gateway("stranger")
    entity = b"Content-Type: text/plain\r\n\r\n" + b"x" * 100 + b"\r\n"
    message = smime.encrypt_message(b"Subject: s\r\n" + entity, [container("bob@b.example", gw)])
    der = _der_of(smime.encrypt_entity(entity, [container("bob@b.example", gw)]))
    good = smime.Decryptor([gw.key])
    assert good.decrypt_der(der)[0] == entity
    inputs = {
        "wrong key": (smime.Decryptor([stranger.key]).decrypt_der, der),
        "truncated": (good.decrypt_der, der[: len(der) // 2]),
        "truncated by one": (good.decrypt_der, der[:-1]),
        "garbage": (good.decrypt_der, b"\x30\x82\xff\xff" + b"garbage" * 10),
        "padding zero": (good.decrypt_der, _tamper_padding(der, len(entity), 0)),
        "padding 17": (good.decrypt_der, _tamper_padding(der, len(entity), 17)),
        "garbage base64": (good.decrypt_message, message.replace(b"\r\n\r\nMII", b"\r\n\r\n!!*~")),
        "cut message": (good.decrypt_message, message[: len(message) - 300]),
        "wrong key message": (smime.Decryptor([stranger.key]).decrypt_message, message),
    }
    seen = {name: _failure(fn, data) for name, (fn, data) in inputs.items()}
    assert set(seen.values()) == {(DecryptError, str(DecryptError()))}, seen


class _CountingKey(rsa.RSAPrivateKey):
    """A real RSA key that counts its private operations (the work the cap bounds)."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self.key, self.decrypts = key, 0

    def decrypt(self, ciphertext: bytes, padding: AsymmetricPadding) -> bytes:
        self.decrypts += 1
        return self.key.decrypt(ciphertext, padding)

    @property
    def key_size(self) -> int:
        return self.key.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self.key.public_key()

    def sign(self, data: bytes, padding: AsymmetricPadding,
             algorithm: Prehashed | hashes.HashAlgorithm | NoDigestInfo) -> bytes:
        return self.key.sign(data, padding, algorithm)

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        return self.key.private_numbers()

    def private_bytes(self, encoding: Encoding, format: PrivateFormat,
                      encryption_algorithm: KeySerializationEncryption) -> bytes:
        return self.key.private_bytes(encoding, format, encryption_algorithm)

    def __copy__(self) -> _CountingKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _CountingKey:
        return self


def _with_recipient_infos(count: int, entity: bytes) -> tuple[Gateway, bytes]:
    """EnvelopedData whose `count` RecipientInfos all wrap the right key for one container:
    only their number can make decryption fail."""
    gw = gateway()
    cont = container("bob@b.example", gw)
    der = cms.build_enveloped(entity, [cont] * count, Capability.AES256_CBC)
    return gw, bytes(der)


def test_too_many_recipient_infos_fail_uniformly_before_any_rsa_work() -> None:
    entity = b"Content-Type: text/plain\r\n\r\nhi\r\n"
    gw, der = _with_recipient_infos(smime.MAX_RECIPIENT_INFOS + 1, entity)
    key = _CountingKey(gw.key)
    assert _failure(smime.Decryptor([key]).decrypt_der, der) == (DecryptError, str(DecryptError()))
    assert key.decrypts == 0
    message = (b"Subject: s\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data"
               b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(der))
    decrypt_message = smime.Decryptor([key]).decrypt_message
    assert _failure(decrypt_message, message) == (DecryptError, str(DecryptError()))
    assert key.decrypts == 0


def test_the_most_recipient_infos_allowed_still_decrypt() -> None:
    entity = b"Content-Type: text/plain\r\n\r\nhi\r\n"
    gw, der = _with_recipient_infos(smime.MAX_RECIPIENT_INFOS, entity)
    key = _CountingKey(gw.key)
    assert smime.Decryptor([key]).decrypt_der(der) == (entity, 0, "aes256-cbc")
    assert key.decrypts == smime.MAX_RECIPIENT_INFOS  # always all of them, no early exit


def test_hostile_der_never_raises_anything_else() -> None:
    gw = gateway()
    der = _der_of(
        smime.encrypt_entity(
            b"Content-Type: text/plain\r\n\r\nhi\r\n", [container("bob@b.example", gw)]
        )
    )
    dec = smime.Decryptor([gw.key])
    for cut in range(0, len(der), 7):
        with pytest.raises(DecryptError):
            dec.decrypt_der(der[:cut])
    for pos in range(0, len(der) - 64, 3):  # bit flips in the envelope (not the content)
        flipped = bytearray(der)
        flipped[pos] ^= 0x41
        with contextlib.suppress(DecryptError):
            dec.decrypt_der(bytes(flipped))
        with contextlib.suppress(SmimeError):  # recipient_ids may fail, but only as SmimeError
            smime.recipient_ids(bytes(flipped))
    # indefinite nesting bomb
    with pytest.raises(DecryptError):
        dec.decrypt_der(b"\x30\x80" * 5000)


def test_not_encrypted_input() -> None:
    assert not smime.is_encrypted(MESSAGE)
    with pytest.raises(SmimeError):
        smime.recipient_ids(MESSAGE)
    with pytest.raises(SmimeError):
        smime.Decryptor([gateway().key]).decrypt_message(MESSAGE)
    out = smime.encrypt_message(MESSAGE, [container("bob@b.example", gateway())])
    assert smime.is_encrypted(out)
    assert smime.is_encrypted(out.replace(b"; smime-type=enveloped-data", b""))
    assert not smime.is_encrypted(out.replace(b"enveloped-data", b"signed-data"))


def test_decryptor_refuses_weak_and_unusable_keys() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    with pytest.raises(SmimeError, match="P-256, P-384 or P-521"):
        smime.Decryptor([ec.generate_private_key(ec.SECP224R1())])
    with pytest.raises(SmimeError, match="RSA or EC"):
        smime.Decryptor([ed25519.Ed25519PrivateKey.generate()])  # type: ignore[list-item]
    with pytest.raises(SmimeError):
        smime.Decryptor([])


def test_ber_indefinite_length_is_read() -> None:
    """Rewrite our DER as BER with indefinite lengths and a chunked encryptedContent (the
    shape gpgsm and `openssl cms -stream` produce) and decrypt it."""
    gw = gateway()
    entity = b"Content-Type: text/plain\r\n\r\n" + b"y" * 5000 + b"\r\n"
    der = _der_of(smime.encrypt_entity(entity, [container("bob@b.example", gw)]))
    env = cms.parse_enveloped(der)
    ct = bytes(env.ciphertext)
    chunks = b"".join(der_tlv(0x04, ct[i : i + 1000]) for i in range(0, len(ct), 1000))
    head = der[: len(der) - len(ct)]
    # locate the primitive [0] header (0x80 + long length) right before the ciphertext
    prim = head.rindex(b"\x80\x82")
    body = head[:prim] + b"\xa0\x80" + chunks + b"\x00\x00"
    # re-wrap the outer definite lengths as indefinite: ContentInfo, [0], EnvelopedData, ECI
    ci = cms.read_tlv(memoryview(der), 0, len(der))
    outer = cms.children(memoryview(der), ci)
    env_seq = cms.children(memoryview(der), outer[1])[0]
    fields = cms.children(memoryview(der), env_seq)
    eci = fields[-1]
    prefix = (
        b"\x30\x80"
        + der[outer[0].head : outer[0].next]
        + b"\xa0\x80\x30\x80"
        + der[fields[0].head : eci.head]
        + b"\x30\x80"
        + body[eci.start : prim]
    )
    ber = prefix + b"\xa0\x80" + chunks + b"\x00\x00" * 5
    assert smime.Decryptor([gw.key]).decrypt_der(ber)[0] == entity


# sign / verify -------------------------------------------------------------------------


def _signing(address: str = "alice@a.example") -> tuple[object, object]:
    gw = gateway("gw.a.example")
    return gw, container(address, gw, Purpose.SIGN)


def _fresh_message() -> bytes:
    return MESSAGE.replace(b"Sat, 28 Nov 2026 14:00:00 +0000", _now_date())


def test_sign_sets_signing_time_to_date_and_verifies() -> None:
    gw = gateway("gw.a.example")
    cont = container("alice@a.example", gw, Purpose.SIGN)
    message = _fresh_message()
    signed = smime.sign_message(message, gw.key, cont)
    head = signed.split(b"\r\n\r\n", 1)[0]
    assert b'multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256' in head
    # no Bcc field anywhere (not the three letters: the signature's base64 holds them now
    # and then, ~1 run in 700)
    assert re.search(rb"(?im)^bcc:", signed) is None
    # independent decoding of the SignedData (pyasn1)
    p7s = re.search(rb"filename=smime.p7s.*?\r\n\r\n(.*?)\r\n--", signed, re.S)
    assert p7s is not None
    content_info, _ = der_decoder.decode(
        base64.b64decode(p7s.group(1)), asn1Spec=rfc5652.ContentInfo()
    )
    signed_data, _ = der_decoder.decode(content_info["content"], asn1Spec=rfc5652.SignedData())
    assert not signed_data["encapContentInfo"]["eContent"].hasValue()  # detached
    signer = signed_data["signerInfos"][0]
    attrs = {str(a["attrType"]): a["attrValues"][0] for a in signer["signedAttrs"]}
    time_der = bytes(attrs["1.2.840.113549.1.9.5"])
    stamp = dt.datetime.strptime(time_der[2:].decode(), "%y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)
    date_field = re.search(rb"Date: (.*)\r\n", signed)
    assert date_field is not None
    date = email.utils.parsedate_to_datetime(date_field.group(1).decode())
    assert stamp == date
    assert str(signer["digestAlgorithm"]["algorithm"]) == "2.16.840.1.101.3.4.2.1"
    assert len(signed_data["certificates"]) == 1
    result = smime.verify_signed(signed, [directory_ca().certificate])
    assert result.ok, result.reasons
    assert result.signing_time == date
    assert result.signer == cont
    assert result.content.startswith(b"Content-Type: text/plain; charset=utf-8")


def test_verify_at_a_given_time() -> None:
    gw = gateway("gw.a.example")
    cont = container("alice@a.example", gw, Purpose.SIGN)
    signed = smime.sign_message(_fresh_message(), gw.key, cont)
    anchors = [directory_ca().certificate]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    assert smime.verify_signed(signed, anchors, now=later).ok
    assert smime.verify_signed(signed, anchors, now=later.replace(tzinfo=None)).ok
    before = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    result = smime.verify_signed(signed, anchors, now=before)
    assert any("future" in r for r in result.reasons)


def test_sign_adds_missing_date() -> None:
    gw = gateway("gw.a.example")
    cont = container("alice@a.example", gw, Purpose.SIGN)
    message = b"From: alice@a.example\r\nTo: b@b.example\r\nSubject: s\r\n\r\nhi\r\n"
    signed = smime.sign_message(message, gw.key, cont)
    result = smime.verify_signed(signed, [directory_ca().certificate])
    assert result.ok, result.reasons
    date = re.search(rb"\r\nDate: (.*?)\r\n", signed)
    assert date is not None
    assert email.utils.parsedate_to_datetime(date.group(1).decode()) == result.signing_time


def test_signed_8bit_content_is_transport_safe_and_survives_lf_conversion() -> None:
    gw = gateway("gw.a.example")
    cont = container("alice@a.example", gw, Purpose.SIGN)
    message = _fresh_message().replace(
        b"attached.\n", b"attached.   \nFrom here on\n" + b"z" * 1200 + b"\n"
    )
    signed = smime.sign_message(message, gw.key, cont)
    assert signed.isascii()
    assert b" \r\n" not in signed and b"\r\nFrom here" not in signed
    assert all(len(line) <= 998 for line in signed.split(b"\r\n"))
    assert b"Content-Transfer-Encoding: quoted-printable" in signed
    as_lf = signed.replace(b"\r\n", b"\n")  # a mailbox stored with LF line ends
    result = smime.verify_signed(as_lf, [directory_ca().certificate])
    assert result.ok, result.reasons


def test_tampered_content_fails_verification() -> None:
    gw = gateway("gw.a.example")
    cont = container("alice@a.example", gw, Purpose.SIGN)
    signed = smime.sign_message(_fresh_message(), gw.key, cont)
    tampered = signed.replace(b"quarterly", b"quarterlY").replace(b"Gr=C3=BC", b"Gr=C3=BD")
    assert tampered != signed
    result = smime.verify_signed(tampered, [directory_ca().certificate])
    assert not result.ok
    assert any("messageDigest" in r for r in result.reasons)


def test_the_sender_matches_its_container_in_any_case() -> None:
    """From `Alice@A.example` and a container for `alice@a.example` name one mailbox."""
    gw = gateway("gw.a.example")
    cont = container("alice@a.example", gw, Purpose.SIGN)
    message = _fresh_message().replace(b"From: Alice <alice@a.example>",
                                       b"From: Alice <Alice@A.example>")
    assert b"Alice@A.example" in message
    result = smime.verify_signed(smime.sign_message(message, gw.key, cont),
                                 [directory_ca().certificate])
    assert result.ok, result.reasons


@pytest.mark.parametrize(
    "from_field",
    [
        b"From: Alice <alice@a.example>\r\nFrom: mallory@evil.example",  # a second field
        b"From: Alice <alice@a.example>, mallory@evil.example",  # a mailbox-list
        b"From: alice@a.example (Alice), mallory@evil.example",
        b"From: Friends: alice@a.example, mallory@evil.example;",  # a group
    ],
)
def test_verify_refuses_a_from_that_names_more_than_the_signer(from_field: bytes) -> None:
    """Only the first address was compared with the certificate: a reader shows the others
    (or the second field) as the sender of a message that 'verified'."""
    gw = gateway("gw.a.example")
    cont = container("alice@a.example", gw, Purpose.SIGN)
    signed = smime.sign_message(_fresh_message(), gw.key, cont)
    assert signed.startswith(b"From: Alice <alice@a.example>\r\n")
    changed = from_field + signed[len(b"From: Alice <alice@a.example>") :]
    result = smime.verify_signed(changed, [directory_ca().certificate])
    assert not result.ok
    assert any("From" in r and "not one" in r for r in result.reasons), result.reasons


def test_verify_reports_untrusted_wrong_sender_and_date_skew() -> None:
    gw = gateway("gw.a.example")
    cont = container("mallory@a.example", gw, Purpose.SIGN)
    signed = smime.sign_message(_fresh_message(), gw.key, cont)
    result = smime.verify_signed(signed, [gw.cert])
    assert not result.ok
    assert any("not issued by a trusted" in r for r in result.reasons)
    assert any("not for alice@a.example" in r for r in result.reasons)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)
    skewed = signed.replace(
        re.search(rb"Date: (.*?)\r\n", signed).group(1),  # type: ignore[union-attr]
        email.utils.format_datetime(later).encode(),
    )
    result = smime.verify_signed(skewed, [directory_ca().certificate])
    assert any("1 h away from the Date" in r for r in result.reasons)


def test_verify_never_raises_on_garbage() -> None:
    anchors = [directory_ca().certificate]
    for junk in (
        b"",
        b"garbage",
        MESSAGE,
        b"Content-Type: multipart/signed; boundary=x\r\n\r\n--x\r\n",
    ):
        result = smime.verify_signed(junk, anchors)
        assert not result.ok and result.reasons


SPKI_RSA = bytes.fromhex("30820122300d06092a864886f70d010101")  # RSA-2048 SPKI start


@pytest.mark.parametrize(
    ("find", "replace"),
    [
        (b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x5b"),  # version 92: InvalidVersion
        # the SPKI's rsaEncryption (after the SPKI's own header) -> an unknown key type
        (SPKI_RSA, SPKI_RSA[:-1] + b"\x7f"),
        (b"\x06\x03\x55\x1d\x0f", b"\x06\x03\x55\x1d\x13"),  # keyUsage -> 2nd basicConstr.
    ],
    ids=["version", "key algorithm", "duplicate extension"],
)
def test_verify_never_raises_on_a_hostile_certificate(find: bytes, replace: bytes) -> None:
    """cryptography parses the carried certificate lazily: wherever it is first read, a
    hostile one must end in reasons, never an exception (found by mutating signatures)."""
    result = smime.verify_signed(_signed_and_mutated(find, replace), [directory_ca().certificate])
    assert not result.ok and result.reasons


_SIGNATURE_PART = b"S/MIME Cryptographic Signature\r\n\r\n"


def _signed_apart() -> tuple[Gateway, bytes, bytes, bytes, bytes]:
    """alice's freshly signed message -> (gateway, message, text before the signature's
    base64, SignedData DER, text after it)."""
    gw = gateway("gw.a.example")
    signed = smime.sign_message(_fresh_message(), gw.key, container("alice@a.example", gw,
                                                                   Purpose.SIGN))  # fmt: skip
    head, rest = signed.split(_SIGNATURE_PART)
    b64, tail = rest.split(b"\r\n--", 1)
    return gw, signed, head, base64.b64decode(b64), tail


def _signed_together(head: bytes, der: bytes, tail: bytes) -> bytes:
    """The message `_signed_apart` took apart, with the SignedData `der` in it."""
    return head + _SIGNATURE_PART + base64.encodebytes(der).replace(b"\n", b"\r\n") + b"--" + tail


def _signed_and_mutated(find: bytes, replace: bytes) -> bytes:
    """A signed message whose SignedData has `find` (once) replaced by `replace`."""
    _, _, head, der, tail = _signed_apart()
    assert der.count(find) == 1
    return _signed_together(head, der.replace(find, replace), tail)


def test_hostile_certificate_reasons_are_accurate() -> None:
    """Every error cryptography raised was "a certificate in the signature is malformed",
    and it hid the other reasons: a key algorithm cryptography does not implement is
    unsupported, not malformed; a parse error later on still leaves the earlier reasons."""
    anchors = [directory_ca().certificate]
    unknown_key = smime.verify_signed(
        _signed_and_mutated(SPKI_RSA, SPKI_RSA[:-1] + b"\x7f"), anchors
    )
    assert not unknown_key.ok
    assert "signer certificate key uses an unsupported algorithm (Unknown key type: " \
        "1.2.840.113549.1.1.127); RSA or EC only" in unknown_key.reasons
    assert not any("malformed" in r for r in unknown_key.reasons)
    assert any("does not verify" in r for r in unknown_key.reasons)  # the CA's signature
    duplicate = smime.verify_signed(
        _signed_and_mutated(b"\x06\x03\x55\x1d\x0f", b"\x06\x03\x55\x1d\x13"), anchors
    )
    assert not duplicate.ok
    assert "malformed signer certificate: Duplicate 2.5.29.19 extension found" in duplicate.reasons
    assert any("does not verify" in r for r in duplicate.reasons)


def test_sign_refuses_a_key_that_is_not_the_containers() -> None:
    cont = container("alice@a.example", gateway("gw.a.example"), Purpose.SIGN)
    with pytest.raises(SmimeError, match="does not belong"):
        smime.sign_message(MESSAGE, gateway("other").key, cont)


def test_signer_with_an_unrecognised_critical_extension_is_refused() -> None:
    """RFC 5280 4.2, as in verify_container: the same signing container re-issued with one
    extension we do not process, once critical and once not."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    gw = gateway("gw.a.example")
    original = container("alice@a.example", gw, Purpose.SIGN)
    ca_key = serialization.load_pem_private_key(directory_ca().key_pem(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    oid = x509.ObjectIdentifier("1.3.6.1.4.1.99999.2")
    for critical in (True, False):
        extra = x509.Extension(oid, critical, x509.UnrecognizedExtension(oid, b"\x05\x00"))
        cert = x509.CertificateBuilder(
            issuer_name=original.issuer,
            subject_name=original.subject,
            public_key=original.public_key(),
            serial_number=x509.random_serial_number(),
            not_valid_before=original.not_valid_before_utc,
            not_valid_after=original.not_valid_after_utc,
            extensions=[*original.extensions, extra],
        ).sign(ca_key, hashes.SHA256())
        result = smime.verify_signed(
            smime.sign_message(_fresh_message(), gw.key, cert), [directory_ca().certificate]
        )
        if critical:
            assert not result.ok
            assert f"unrecognised critical extension {oid.dotted_string}" in result.reasons
        else:
            assert result.ok, result.reasons


def test_an_end_entity_certificate_cannot_pose_as_an_intermediate() -> None:
    """A gateway holds the key of its signing container (a leaf of the directory CA). With
    the container carried as an "intermediate" it could vouch for a certificate it makes up
    for any address: the one-intermediate path must demand a CA (cA, keyCertSign)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    gw = gateway("gw.c.example")
    leaf = container("mallory@c.example", gw, Purpose.SIGN)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    made_up = (
        x509.CertificateBuilder()
        .issuer_name(leaf.subject)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice@a.example")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name("alice@a.example")]), False)
        .sign(gw.key, hashes.SHA256())
    )
    signed = smime.sign_message(_fresh_message(), key, made_up, [leaf])  # From: alice@a.example
    result = smime.verify_signed(signed, [directory_ca().certificate])
    assert not result.ok
    assert "intermediate certificate is not a CA certificate" in result.reasons


# base64 backends -------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False])
def test_base64_backends_agree_with_the_stdlib(fast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from keypost.core import mime

    if not fast:
        monkeypatch.setattr(mime, "_FAST_B64", None)
    elif mime._FAST_B64 is None:
        pytest.skip("pybase64 not installed")
    # 57 bytes = one line; lines are cut in blocks of 1024, 512, ..., 1: cross each edge
    for size in (0, 1, 56, 57, 58, 114, 1000, 100_003, 57 * 1024 - 1, 57 * 1024, 57 * 2047 + 1):
        data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        expected = base64.encodebytes(data).replace(b"\n", b"\r\n")
        assert mime.b64_lines(data) == expected
        assert mime.b64_lines(memoryview(data), b"H: v\r\n\r\n") == b"H: v\r\n\r\n" + expected
        if data:
            assert mime.b64_decode(memoryview(expected)) == data
    for junk in (b"abc", b"MII!!\r\n", b"!!*~"):
        with pytest.raises(SmimeError):
            mime.b64_decode(junk)


def test_signing_container_must_cover_the_date_header() -> None:
    """A message queued for hours: a container issued now would not be valid at Date (the
    signing time), so the signature could never verify; one issued at Date works."""
    gw = gateway("gw.a.example")
    sent = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=3)
    message = MESSAGE.replace(
        b"Sat, 28 Nov 2026 14:00:00 +0000", email.utils.format_datetime(sent).encode()
    )
    with pytest.raises(SmimeError, match="does not cover the message's Date"):
        smime.sign_message(message, gw.key, container("alice@a.example", gw, Purpose.SIGN))
    at_date = container("alice@a.example", gw, Purpose.SIGN, now=sent)
    result = smime.verify_signed(
        smime.sign_message(message, gw.key, at_date), [directory_ca().certificate]
    )
    assert result.ok, result.reasons
    assert result.signing_time == sent


def test_pick_signing_container_takes_the_newest_that_covers_the_date() -> None:
    gw = gateway("gw.a.example")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    older = container("alice@a.example", gw, Purpose.SIGN, now=now - dt.timedelta(days=15))
    newer = container("alice@a.example", gw, Purpose.SIGN, now=now)

    def dated(when: dt.datetime) -> bytes:
        return MESSAGE.replace(b"Sat, 28 Nov 2026 14:00:00 +0000",
                               email.utils.format_datetime(when).encode())

    assert smime.pick_signing_container(dated(now), [older, newer]) == newer
    between = newer.not_valid_before_utc - dt.timedelta(minutes=1)
    assert smime.pick_signing_container(dated(between), [newer, older]) == older
    # none covers it: the newest, which sign_message refuses with the reason
    too_old = older.not_valid_before_utc - dt.timedelta(minutes=1)
    assert smime.pick_signing_container(dated(too_old), [older, newer]) == newer
    no_date = re.sub(rb"Date: [^\n]*\n", b"", MESSAGE)
    assert smime.pick_signing_container(no_date, [older, newer]) == newer
    with pytest.raises(SmimeError):
        smime.pick_signing_container(MESSAGE, [])


def test_ecdsa_signing_container_signs_and_verifies() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from keypost.core.address import parse_address
    from keypost.core.containers import ContainerRequest, GatewayKey

    key = ec.generate_private_key(ec.SECP256R1())
    request = ContainerRequest(
        parse_address("alice@a.example"), Purpose.SIGN, GatewayKey(key.public_key())
    )
    cont = directory_ca().issue(request)
    signed = smime.sign_message(_fresh_message(), key, cont)
    result = smime.verify_signed(signed, [directory_ca().certificate])
    assert result.ok, result.reasons
    tampered = smime.verify_signed(
        signed.replace(b"=C3=BC", b"=C3=BD"), [directory_ca().certificate]
    )
    assert not tampered.ok


# property tests: hostile input only ever raises SmimeError -----------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_parsers_raise_only_smime_errors(data: bytes) -> None:
    for parse in (cms.parse_enveloped, cms.parse_signed):
        with contextlib.suppress(SmimeError):
            parse(b"\x30" + data)
        with contextlib.suppress(SmimeError):
            parse(data)
    with contextlib.suppress(SmimeError):
        smime.recipient_ids(data)
    assert not smime.verify_signed(data, [directory_ca().certificate]).ok


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_envelopes_raise_only_decrypt_error(data: st.DataObject) -> None:
    der = _sample_der()
    pos = data.draw(st.integers(0, len(der) - 1))
    value = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(pos + 1, len(der)))
    mutated = der[:pos] + bytes((value,)) + der[pos + 1 : cut]
    with contextlib.suppress(DecryptError):
        smime.Decryptor([gateway().key]).decrypt_der(mutated)


@functools.cache
def _sample_der() -> bytes:
    entity = b"Content-Type: text/plain\r\n\r\nsample\r\n"
    return _der_of(smime.encrypt_entity(entity, [container("bob@b.example", gateway())]))


MULTIPART = (
    b"From: alice@a.example\r\nTo: bob@b.example\r\nSubject: parts\r\nDate: DATE\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
    b"preamble\r\n--outer\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"Gr\xc3\xbc\xc3\x9fe   \r\n"
    b"--outer\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    + bytes(range(256))
    + b"\r\n--outer\r\n"
    b"Content-Type: text/plain\r\n\r\nalready safe\r\n"
    b"--outer--\r\n"
)


def test_signing_makes_multipart_parts_transport_safe() -> None:
    from keypost.core import mime

    gw = gateway("gw.a.example")
    cont = container("alice@a.example", gw, Purpose.SIGN)
    message = MULTIPART.replace(b"DATE", _now_date())
    signed = smime.sign_message(message, gw.key, cont)
    assert signed.isascii()
    result = smime.verify_signed(signed, [directory_ca().certificate])
    assert result.ok, result.reasons
    headers, body = mime.split_entity(result.content)
    assert mime.content_type_of(headers).param("boundary") == "outer"
    parts = mime.split_multipart(bytes(body), "outer").parts
    assert len(parts) == 3
    text_headers, text_body = mime.split_entity(parts[0])
    assert mime.find_header(text_headers, "Content-Transfer-Encoding").value == (  # type: ignore[union-attr]
        "quoted-printable"
    )
    assert bytes(text_body) == b"Gr=C3=BC=C3=9Fe  =20"  # the last CRLF is the delimiter's
    bin_headers, bin_body = mime.split_entity(parts[1])
    assert mime.find_header(bin_headers, "Content-Transfer-Encoding").value == "base64"  # type: ignore[union-attr]
    assert base64.b64decode(bytes(bin_body)) == bytes(range(256))
    assert parts[2] == b"Content-Type: text/plain\r\n\r\nalready safe"


def test_lf_message_with_binary_part_keeps_the_binary_bytes() -> None:
    """Line-end conversion must not touch a `binary` part (its LF bytes are data)."""
    from keypost.core import mime

    message = MULTIPART.replace(b"DATE", _now_date()).replace(b"\r\n", b"\n")
    blob = bytes(range(256))  # holds \n and \r bytes
    assert blob.replace(b"\r\n", b"\n") in message  # the conversion above spared nothing
    message = message.replace(blob.replace(b"\r\n", b"\n"), blob)
    gw = gateway()
    out = smime.encrypt_message(message, [container("bob@b.example", gw)])
    clear = smime.Decryptor([gw.key]).decrypt_message(out).message
    _, body = mime.split_entity(clear)
    parts = mime.split_multipart(bytes(body), "outer").parts
    assert len(parts) == 3
    assert parts[1].endswith(b"binary\r\n\r\n" + blob)
    assert parts[0].endswith(b"\r\n\r\nGr\xc3\xbc\xc3\x9fe   ")
    assert parts[2] == b"Content-Type: text/plain\r\n\r\nalready safe"
    assert clear.endswith(b"--outer--\r\n")


def test_many_keys_and_recipients_never_pick_a_wrong_key() -> None:
    """Three gateway keys (one current, two retired) against messages with three
    RecipientInfos: eight wrong key/recipient pairs per message, each of which passes a
    bare CBC-padding check about once in 256 tries. The right content must come back every
    time (a padding-only choice fails this test with probability ~96%)."""
    keys = [gateway(f"gw{i}.example").key for i in range(3)]
    others = [container("x@x.example", gateway("x")), container("y@y.example", gateway("y"))]
    mine = container("bob@b.example", gateway("gw2.example"))
    decryptor = smime.Decryptor(keys)
    for n in range(100):
        entity = b"Content-Type: text/plain\r\n\r\nmessage %d\r\n" % n
        der = _der_of(smime.encrypt_entity(entity, [*others, mine]))
        assert decryptor.decrypt_der(der) == (entity, 2, "aes256-cbc")


_part = st.tuples(
    st.sampled_from([b"text/plain; charset=utf-8", b"application/octet-stream"]),
    st.sampled_from([b"7bit", b"8bit", b"binary", None]),
    st.binary(max_size=1200),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_part, min_size=1, max_size=3), st.booleans())
@example([(b"text/plain; charset=utf-8", b"7bit", b"\r")], True)  # a bare CR (found)
@example([(b"text/plain; charset=utf-8", b"binary", b"\n")], False)  # a bare LF (found)
@example([(b"text/plain", None, b"x" * 1500 + b" ")], False)  # long line, trailing blank
def test_any_signed_multipart_verifies_after_transport(
    parts: list[tuple[bytes, bytes | None, bytes]], lf_store: bool
) -> None:
    """Whatever the parts hold, the signed message is 7-bit clean and verifies, also after
    a mailbox stored it with LF line ends."""
    gw = gateway("gw.a.example")
    cont = container("alice@a.example", gw, Purpose.SIGN)
    body = b""
    for ctype, cte, data in parts:
        if b"--kp-bound" in data:
            data = data.replace(b"--kp-bound", b"")
        head = b"Content-Type: " + ctype + b"\r\n"
        if cte is not None:
            head += b"Content-Transfer-Encoding: " + cte + b"\r\n"
        body += b"--kp-bound\r\n" + head + b"\r\n" + data + b"\r\n"
    message = (
        b"From: alice@a.example\r\nTo: bob@b.example\r\nDate: " + _now_date() + b"\r\n"
        b'Content-Type: multipart/mixed; boundary="kp-bound"\r\n\r\n' + body + b"--kp-bound--\r\n"
    )
    signed = smime.sign_message(message, gw.key, cont)
    assert signed.isascii()
    assert all(len(line) <= 998 for line in signed.split(b"\r\n"))
    stored = signed.replace(b"\r\n", b"\n") if lf_store else signed
    result = smime.verify_signed(stored, [directory_ca().certificate])
    assert result.ok, result.reasons


def test_header_parsing_keeps_odd_but_legal_fields() -> None:
    from keypost.core import mime

    block = b"Subject : old style\r\nX-Long: a\r\n  b\r\nFrom mbox line\r\nTo:x@y.example\r\r\n"
    headers = mime.parse_headers(block)
    assert [h.key for h in headers] == ["subject", "x-long", "to"]
    assert headers[0].value == "old style"
    assert headers[1].raw == b"X-Long: a\r\n  b"
    assert headers[1].value == "a  b"
    assert headers[2].raw == b"To:x@y.example"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000), st.booleans())
def test_any_body_round_trips(body: bytes, binary: bool) -> None:
    """Binary bodies come back byte for byte; others come back with CRLF line ends."""
    gw = gateway()
    cte = b"binary" if binary else b"8bit"
    message = (
        b"From: a@a.example\r\nTo: bob@b.example\r\nSubject: any\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: " + cte + b"\r\n\r\n"
    ) + body
    out = smime.encrypt_message(message, [container("bob@b.example", gw)])
    clear = smime.Decryptor([gw.key]).decrypt_message(out).message
    head, _, got = clear.partition(b"\r\n\r\n")
    assert b"Subject: any" in head
    assert got == (body if binary else body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


def _signer_info_tags(der: bytes) -> dict[str, int]:
    """Offsets of the tag bytes of the first SignerInfo, its digestAlgorithm and its first
    signed attribute, found by walking the DER."""
    buf = memoryview(der)
    top = cms.read_tlv(buf, 0, len(der))
    sd = cms.children(buf, cms.children(buf, top)[1])[0]
    signer_set = [f for f in cms.children(buf, sd) if f.tag == cms.T_SET][-1]
    si = cms.children(buf, signer_set)[0]
    kids = cms.children(buf, si)
    attrs = cms.children(buf, kids[3])
    return {"signer_info": si.head, "digest_algorithm": kids[2].head, "attribute": attrs[0].head}


@pytest.mark.parametrize("where", ["signer_info", "digest_algorithm", "attribute"])
@pytest.mark.parametrize("tag", [0x31, 0xA1, 0x04])
def test_signer_info_with_other_tags_is_refused(where: str, tag: int) -> None:
    """A SignerInfo, digestAlgorithm or signed attribute that is not a SEQUENCE is not the
    structure of RFC 5652 5.3 and must not be read as if it were."""
    gw, cont = _signing()
    signed = smime.sign_message(_fresh_message(), gw.key, cont)
    block = list(re.finditer(rb"\r\n\r\n([A-Za-z0-9+/=\r\n]+)\r\n--", signed))[-1]
    der = base64.b64decode(block.group(1))
    cms.parse_signed(der)  # the genuine one is read
    at = _signer_info_tags(der)[where]
    assert der[at] == cms.T_SEQUENCE
    mutated = der[:at] + bytes((tag,)) + der[at + 1 :]
    with pytest.raises(SmimeError):
        cms.parse_signed(mutated)
    text = base64.encodebytes(mutated).replace(b"\n", b"\r\n").rstrip(b"\r\n")
    forged = signed[: block.start(1)] + text + signed[block.end(1) :]
    assert forged != signed
    assert not smime.verify_signed(forged, [directory_ca().certificate]).ok


def test_more_recipient_certificates_than_a_gateway_reads_is_refused() -> None:
    """A gateway refuses an envelope of more than MAX_RECIPIENT_INFOS unread: the writer
    says so instead of producing one."""
    gw = gateway("gw.b.example")
    cert = container("bob@b.example", gw)
    smime.envelope_der(b"Content-Type: text/plain\r\n\r\nx\r\n", [cert] * smime.MAX_RECIPIENT_INFOS)
    with pytest.raises(SmimeError, match="at most 1024 per message"):
        smime.envelope_der(b"Content-Type: text/plain\r\n\r\nx\r\n",
                           [cert] * (smime.MAX_RECIPIENT_INFOS + 1))


ID_DATA_ENCAP = der_tlv(0x30, der_tlv(0x06, cms.OID_DATA))  # encapContentInfo, detached


def test_econtent_type_must_be_id_data() -> None:
    """RFC 5652 11.1: the contentType attribute MUST equal eContentType, and a
    multipart/signed signs id-data. Only the (signed) attribute was read, so a SignedData
    whose unsigned encapContentInfo names another type verified."""
    digested_data = der_tlv(0x30, der_tlv(0x06, cms.OID_DATA[:-1] + b"\x05"))
    result = smime.verify_signed(
        _signed_and_mutated(ID_DATA_ENCAP, digested_data), [directory_ca().certificate]
    )
    assert not result.ok
    assert any("eContentType" in r for r in result.reasons), result.reasons


def _signed_with_attribute_twice(oid: bytes | None) -> bytes:
    """A signed message whose SignerInfo carries the signed attribute `oid` twice: a second
    copy with another value, signed again with the gateway's key. None: a SignerInfo
    without signed attributes, whose signature covers the content itself (RFC 5652 5.4)."""
    gw, signed, head, der, tail = _signed_apart()
    buf = memoryview(der)
    top = cms.read_tlv(buf, 0, len(der))
    wrapper = cms.children(buf, top)[1]
    sd = cms.children(buf, wrapper)[0]
    signer_set = cms.children(buf, sd)[-1]
    kids = cms.children(buf, cms.children(buf, signer_set)[0])
    if oid is None:
        content = smime.verify_signed(signed, [directory_ca().certificate]).content
        signature = gw.key.sign(content, padding.PKCS1v15(), hashes.SHA256())
        signer_info = der_tlv(0x30, der[kids[0].head : kids[3].head]
                              + der[kids[4].head : kids[4].next] + der_tlv(0x04, signature))
        return _with_signer_info(head, tail, der, signer_info)
    members = [bytes(buf[a.head : a.next]) for a in cms.children(buf, kids[3])]
    values = {cms.OID_MESSAGE_DIGEST: der_tlv(0x04, bytes(32)),
              cms.OID_CONTENT_TYPE: der_tlv(0x06, cms.OID_DATA[:-1] + b"\x05"),
              cms.OID_SIGNING_TIME: der_tlv(0x17, b"200101000000Z")}  # fmt: skip
    members.append(der_tlv(0x30, der_tlv(0x06, oid) + der_tlv(0x31, values[oid])))
    signed_attrs = der_tlv(0x31, b"".join(sorted(members)))
    signature = gw.key.sign(signed_attrs, padding.PKCS1v15(), hashes.SHA256())
    signer_info = der_tlv(0x30, der[kids[0].head : kids[3].head] + b"\xa0" + signed_attrs[1:]
                          + der[kids[4].head : kids[4].next] + der_tlv(0x04, signature))
    return _with_signer_info(head, tail, der, signer_info)


def _with_signer_info(head: bytes, tail: bytes, der: bytes, signer_info: bytes) -> bytes:
    """The signed message around `der` with its one SignerInfo replaced."""
    buf = memoryview(der)
    top = cms.read_tlv(buf, 0, len(der))
    wrapper = cms.children(buf, top)[1]
    sd = cms.children(buf, wrapper)[0]
    signer_set = cms.children(buf, sd)[-1]
    signed_data = der_tlv(0x30, der[sd.start : signer_set.head] + der_tlv(0x31, signer_info))
    new = der_tlv(0x30, der[top.start : wrapper.head] + der_tlv(0xA0, signed_data))
    return _signed_together(head, new, tail)


@pytest.mark.parametrize(
    "oid", [cms.OID_MESSAGE_DIGEST, cms.OID_CONTENT_TYPE, cms.OID_SIGNING_TIME],
    ids=["messageDigest", "contentType", "signingTime"],
)
def test_a_signed_attribute_given_twice_is_refused(oid: bytes) -> None:
    """RFC 5652 11.1-11.3: these attributes MUST NOT occur more than once. The last copy
    won, so a signer could send one SignedData that reads as two different contents
    (or times) to verifiers that pick another copy."""
    result = smime.verify_signed(_signed_with_attribute_twice(oid), [directory_ca().certificate])
    assert not result.ok
    assert any("more than once" in r for r in result.reasons), result.reasons


def test_no_signed_attributes_is_said_without_claiming_tampering() -> None:
    """`openssl cms -sign -noattr`: the signature covers the content itself. It is refused
    (signingTime must match Date), but it also read "the content was changed after signing"
    and "contentType is not id-data", neither of which anybody could tell."""
    result = smime.verify_signed(_signed_with_attribute_twice(None), [directory_ca().certificate])
    assert not result.ok
    assert result.reasons == (
        "no signed attributes (messageDigest is required)",
        "no signingTime attribute",
    )


# A format=flowed body as Thunderbird (and keypost's host) writes it: soft breaks are a
# trailing space, hard line ends have none, "From " and a leading space are stuffed.
FLOWED_BODY = (b"word word word word word word word word word word word word word word \r\n"
               b"word word\r\n From the minutes\r\n  indented\r\n-- \r\nAlice\r\n")
FLOWED = (b"From: Alice <alice@a.example>\r\nTo: bob@b.example\r\nSubject: flowed\r\n"
          b"Date: Sat, 28 Nov 2026 14:00:00 +0000\r\nMessage-ID: <f@a.example>\r\n"
          b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=\"us-ascii\"; format=flowed\r\n"
          b"Content-Transfer-Encoding: 7bit\r\n\r\n" + FLOWED_BODY)


def test_format_flowed_text_survives_encryption_and_signing_byte_for_byte() -> None:
    """Trailing spaces carry meaning in format=flowed: enveloping keeps every byte, and
    signing (which must protect them from relays) re-encodes them, the decoded text equal."""
    gw = gateway("gw.b.example")
    out = smime.encrypt_message(FLOWED, [container("bob@b.example", gw)])
    clear = smime.Decryptor([gw.key]).decrypt_message(out).message
    assert clear.endswith(b"format=flowed\r\nContent-Transfer-Encoding: 7bit\r\n\r\n" + FLOWED_BODY)

    signer = gateway("gw.a.example")
    signed = smime.sign_message(FLOWED.replace(b"Sat, 28 Nov 2026 14:00:00 +0000", _now_date()),
                                signer.key, container("alice@a.example", signer, Purpose.SIGN))
    assert b" \r\n" not in signed  # no trailing space left for a relay to strip
    result = smime.verify_signed(signed, [directory_ca().certificate])
    assert result.ok, result.reasons
    part = email.message_from_bytes(result.content)
    assert part.get_param("format") == "flowed"
    assert part.get_payload(decode=True) == FLOWED_BODY


def _openssl_sha1_intermediate(
    root: x509.Certificate, root_key: PrivateKey, inter_key: rsa.RSAPrivateKey
) -> x509.Certificate:
    """An intermediate CA certificate the root signs with sha1WithRSA/ecdsa-with-SHA1:
    cryptography no longer signs with SHA-1, openssl still does."""
    import subprocess
    import tempfile
    from pathlib import Path

    from pki_util import key_pem

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "root.pem").write_bytes(root.public_bytes(Encoding.PEM))
        (d / "root.key").write_bytes(key_pem(root_key))
        (d / "inter.key").write_bytes(key_pem(inter_key))
        (d / "ext").write_text("basicConstraints=critical,CA:TRUE\n"
                               "keyUsage=critical,keyCertSign,cRLSign\n")
        csr = subprocess.run(["openssl", "req", "-new", "-key", d / "inter.key", "-subj",
                              "/CN=genuine intermediate"], capture_output=True, check=True)
        subprocess.run(["openssl", "x509", "-req", "-sha1", "-days", "20", "-CA", d / "root.pem",
                        "-CAkey", d / "root.key", "-set_serial", "7", "-extfile", d / "ext",
                        "-out", d / "inter.pem"], input=csr.stdout, capture_output=True,
                       check=True)
        return x509.load_pem_x509_certificate((d / "inter.pem").read_bytes())


def _through_intermediate(
    inter_key_bits: int = 2048, sha1: bool = False, root_path_length: int | None = None,
) -> smime.SignatureResult:
    """alice's genuine certificate from an intermediate the SignedData carries, under a
    root given as the only anchor; the intermediate's key size, the hash the root signs it
    with and the root's pathLenConstraint as asked."""
    from pki_util import _builder, email_cert, make_ca, name, rsa_key

    root_key, root = make_ca("genuine root", rsa_key())  # openssl and cryptography verify
    # sha1WithRSAEncryption; ecdsa-with-SHA1 cryptography refuses to verify at all
    if root_path_length is not None:
        root = (_builder(root.subject, root.subject, root_key, 30)
                .add_extension(x509.BasicConstraints(True, root_path_length), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                             False, False), critical=True)
                .sign(root_key, hashes.SHA256()))
    inter_key = rsa_key(inter_key_bits)
    builder = (_builder(name("genuine intermediate"), root.subject, inter_key, 20)
               .add_extension(x509.BasicConstraints(True, None), critical=True)
               .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                            False, False), critical=True))
    inter = (builder.sign(root_key, hashes.SHA256()) if not sha1 else
             _openssl_sha1_intermediate(root, root_key, inter_key))
    alice_key, alice = email_cert((inter_key, inter), "alice@a.example")
    signed = smime.sign_message(_fresh_message(), alice_key, alice, [inter])
    return smime.verify_signed(signed, [root])


def test_a_weak_intermediate_is_refused() -> None:
    """The algorithm floor holds for every certificate of the path: an RSA-1024
    intermediate, or one its root signed with SHA-1, vouched for the signer as if it
    were strong (only the signer and the anchor were checked)."""
    assert _through_intermediate().ok, _through_intermediate().reasons
    weak_key = _through_intermediate(inter_key_bits=1024)
    assert not weak_key.ok
    assert ("intermediate certificate key is RSA-1024; at least RSA-2048 is required"
            in weak_key.reasons)
    sha1 = _through_intermediate(sha1=True)
    assert not sha1.ok
    assert "intermediate certificate is signed with SHA1, which is not accepted" in sha1.reasons


def test_an_intermediate_under_a_root_with_path_length_zero_is_refused() -> None:
    """RFC 5280 4.2.1.9: a root with pathLenConstraint 0 issues end entities only (the
    directory CA is one); an intermediate under it passed."""
    assert _through_intermediate(root_path_length=1).ok
    result = _through_intermediate(root_path_length=0)
    assert not result.ok
    assert ("trust anchor's pathLenConstraint 0 allows no intermediate certificate"
            in result.reasons)
