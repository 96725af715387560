"""Reading AuthEnvelopedData (AES-GCM, RFC 5083/5084) as a gateway: what `openssl cms
-encrypt -aes-256-gcm` sends decrypts (tests/core/test_smime_interop.py); here, built
field by field per the RFCs, the parts openssl does not exercise (authAttrs as AAD, a
12-byte tag) and every way a GCM message can be wrong."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from test_smime_pki import gateway

from keypost.core import cms, smime
from keypost.core.errors import DecryptError, SmimeError, UnsupportedCipherError
from keypost.core.x509_ext import der_oid, der_tlv

ENTITY = b"Content-Type: text/plain; charset=us-ascii\r\n\r\nsealed with GCM\r\n"
SEQ, SET, OCTETS, INTEGER = 0x30, 0x31, 0x04, 0x02
AES256_GCM = "2.16.840.1.101.3.4.1.46"
DES_EDE3_CBC = "1.2.840.113549.3.7"
ID_DATA = "1.2.840.113549.1.7.1"
# one authenticated attribute: contentType = id-data
AUTH_ATTRS = der_tlv(SEQ, der_oid("1.2.840.113549.1.9.3") + der_tlv(SET, der_oid(ID_DATA)))


def _auth_enveloped(
    content: bytes = ENTITY, *, tag_length: int = 16, declared: int | None = 16,
    auth_attrs: bytes | None = None, cipher: str = AES256_GCM, with_mac: bool = True,
    mangle: str = "",
) -> bytes:
    """ContentInfo(AuthEnvelopedData) for the test gateway's certificate. `declared`: the
    aes-ICVlen written (None: omitted, i.e. the default 12). `mangle` spoils one part
    after the MAC is computed: "ciphertext", "tag", "aad", "key"."""
    gw = gateway()
    cek = AESGCM.generate_key(256)
    nonce = os.urandom(12)
    aad = b"" if auth_attrs is None else der_tlv(SET, auth_attrs)
    sealed = AESGCM(cek).encrypt(nonce, content, aad or None)
    # a shorter tag is the full tag truncated (NIST SP 800-38D)
    ciphertext, tag = bytearray(sealed[:-16]), bytearray(sealed[-16:][:tag_length])
    wrapped = gw.cert.public_key().encrypt(cek, padding.PKCS1v15())  # type: ignore[union-attr]
    if mangle == "ciphertext":
        ciphertext[0] ^= 1
    if mangle == "tag":
        tag[-1] ^= 1
    if mangle == "key":
        wrapped = gateway("gw-other").cert.public_key().encrypt(  # type: ignore[union-attr]
            cek, padding.PKCS1v15())
    issuer_serial = der_tlv(SEQ, gw.cert.issuer.public_bytes()
                            + der_tlv(INTEGER, gw.cert.serial_number.to_bytes(20, "big")))
    rsa_alg = der_tlv(SEQ, der_oid("1.2.840.113549.1.1.1") + der_tlv(0x05, b""))
    ktri = der_tlv(SEQ, der_tlv(INTEGER, b"\x00") + issuer_serial + rsa_alg
                   + der_tlv(OCTETS, wrapped))
    params = der_tlv(OCTETS, nonce)
    if declared is not None:
        params += der_tlv(INTEGER, bytes((declared,)))
    eci = der_tlv(SEQ, der_oid(ID_DATA) + der_tlv(SEQ, der_oid(cipher) + der_tlv(SEQ, params))
                  + der_tlv(0x80, bytes(ciphertext)))
    attrs = b""
    if auth_attrs is not None:
        sent = auth_attrs if mangle != "aad" else auth_attrs.replace(der_oid(ID_DATA),
                                                                    der_oid("1.2.3.4"))
        attrs = der_tlv(0xA1, sent)
    mac = der_tlv(OCTETS, bytes(tag)) if with_mac else b""
    body = der_tlv(SEQ, der_tlv(INTEGER, b"\x00") + der_tlv(SET, ktri) + eci + attrs + mac)
    return der_tlv(SEQ, der_oid("1.2.840.113549.1.9.16.1.23") + der_tlv(0xA0, body))


def _as_message(der: bytes) -> bytes:
    return (b"From: x@x.example\r\nSubject: gcm\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: application/pkcs7-mime; smime-type=authEnveloped-data; "
            b"name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + smime.m.b64_lines(der))


def _decryptor() -> smime.Decryptor:
    return smime.Decryptor([gateway("gw-new").key, gateway().key])  # retired key second


def test_auth_attrs_are_the_additional_authenticated_data() -> None:
    clear, index, algorithm = _decryptor().decrypt_der(_auth_enveloped(auth_attrs=AUTH_ATTRS))
    assert (clear, index, algorithm) == (ENTITY, 1, "aes256-gcm")


def test_a_12_byte_tag_with_the_default_length_left_out() -> None:
    der = _auth_enveloped(tag_length=12, declared=None)
    assert _decryptor().decrypt_der(der)[0] == ENTITY


def test_whole_message_with_outer_headers_kept() -> None:
    result = _decryptor().decrypt_message(_as_message(_auth_enveloped()))
    assert result.message == b"From: x@x.example\r\nSubject: gcm\r\nMIME-Version: 1.0\r\n" + ENTITY
    assert result.algorithm == "aes256-gcm"
    assert smime.is_encrypted(_as_message(_auth_enveloped()))
    ids = smime.recipient_ids(_as_message(_auth_enveloped()))
    assert [(r.issuer, r.serial) for r in ids] == [(gateway().cert.issuer,
                                                    gateway().cert.serial_number)]


@pytest.mark.parametrize("mangle", ["ciphertext", "tag", "aad", "key"])
def test_anything_spoilt_is_the_same_decrypt_error(mangle: str) -> None:
    der = _auth_enveloped(auth_attrs=AUTH_ATTRS, mangle=mangle)
    with pytest.raises(DecryptError) as caught:
        _decryptor().decrypt_der(der)
    assert str(caught.value) == str(DecryptError())


@pytest.mark.parametrize(("tag_length", "declared"), [(16, 12), (12, 16), (8, 8)])
def test_a_tag_not_of_its_declared_or_an_allowed_length_is_refused(
        tag_length: int, declared: int) -> None:
    with pytest.raises(DecryptError):
        _decryptor().decrypt_der(_auth_enveloped(tag_length=tag_length, declared=declared))


def test_authenveloped_without_a_mac_is_malformed() -> None:
    assert cms.parse_enveloped(_auth_enveloped()).mac is not None
    with pytest.raises(SmimeError, match="without a MAC"):
        cms.parse_enveloped(_auth_enveloped(with_mac=False))
    with pytest.raises(SmimeError, match="without a MAC"):  # authAttrs, then nothing
        cms.parse_enveloped(_auth_enveloped(auth_attrs=AUTH_ATTRS, with_mac=False))


def test_an_old_cipher_is_named_and_not_tried() -> None:
    with pytest.raises(UnsupportedCipherError, match="3DES"):
        _decryptor().decrypt_der(_auth_enveloped(cipher=DES_EDE3_CBC))
