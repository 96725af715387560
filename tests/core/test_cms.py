"""Our EnvelopedData writer against independent readers: pyasn1 (strict DER, re-encodes
to the same bytes) and cryptography's own PKCS#7 decryption; openssl and gpgsm read it in
test_smime_interop.py."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import pkcs7
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1_modules import rfc5652
from test_smime_pki import container, gateway

from keypost.core import cms, smime
from keypost.core.errors import SmimeError
from keypost.core.types import Capability
from keypost.core.x509_ext import der_tlv


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 31, 32, 33, 1000])
def test_enveloped_der_is_strict_der_and_decrypts_elsewhere(size: int) -> None:
    gw = gateway()
    bob, carol = container("bob@b.example", gw), container("carol@b.example", gw)
    content = (bytes(range(256)) * 4)[:size]
    der = bytes(cms.build_enveloped(content, [bob, carol], Capability.AES256_CBC))

    info, rest = der_decoder.decode(der, asn1Spec=rfc5652.ContentInfo())
    assert rest == b"" and der_encoder.encode(info) == der  # DER: one encoding only
    assert info["contentType"] == rfc5652.id_envelopedData
    env, rest = der_decoder.decode(info["content"], asn1Spec=rfc5652.EnvelopedData())
    assert rest == b"" and int(env["version"]) == 0
    assert len(env["recipientInfos"]) == 2
    eci = env["encryptedContentInfo"]
    assert eci["contentType"] == rfc5652.id_data
    assert len(bytes(eci["encryptedContent"])) == size - size % 16 + 16

    for cert in (bob, carol):  # cryptography finds its RecipientInfo by issuer+serial
        assert pkcs7.pkcs7_decrypt_der(der, cert, gw.key, []) == content
    assert smime.Decryptor([gw.key]).decrypt_der(der)[0] == content


@pytest.mark.parametrize("head_size", [1, 5, 15, 16, 17, 40])
@pytest.mark.parametrize("size", [0, 1, 11, 15, 16, 17, 33, 1000])
def test_enveloped_head_and_content_encrypt_as_their_concatenation(
    head_size: int, size: int
) -> None:
    """A header block given apart from the body: parts that end inside an AES block are
    carried over into the next one, whatever the two lengths."""
    gw = gateway()
    bob = container("bob@b.example", gw)
    head = b"H" * head_size
    content = (bytes(range(256)) * 4)[:size]
    for body in (content, memoryview(b"." + content)[1:]):
        der = bytes(cms.build_enveloped(body, [bob], Capability.AES256_CBC, head))
        info, rest = der_decoder.decode(der, asn1Spec=rfc5652.ContentInfo())
        assert rest == b"" and der_encoder.encode(info) == der
        assert pkcs7.pkcs7_decrypt_der(der, bob, gw.key, []) == head + content


def test_each_envelope_has_its_own_key_and_iv() -> None:
    gw = gateway()
    bob = container("bob@b.example", gw)
    first = cms.parse_enveloped(cms.build_enveloped(b"same", [bob], Capability.AES128_CBC))
    second = cms.parse_enveloped(cms.build_enveloped(b"same", [bob], Capability.AES128_CBC))
    assert first.cipher_oid == cms.OID_AES128_CBC
    assert first.iv != second.iv
    assert bytes(first.ciphertext) != bytes(second.ciphertext)
    assert first.recipients[0].encrypted_key != second.recipients[0].encrypted_key


def test_a_recipient_on_a_curve_without_key_agreement_is_refused() -> None:
    """EC P-256/384/521 get a KeyAgreeRecipientInfo (test_smime_ecdh.py); P-224 none."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from pki_util import self_signed

    p224 = self_signed(ec.generate_private_key(ec.SECP224R1()), "p224 recipient")
    with pytest.raises(SmimeError, match="RSA or EC P-256/384/521"):
        cms.build_enveloped(b"x", [p224], Capability.AES256_CBC)


def _enveloped_with_infos(infos: bytes) -> bytes:
    """A one-recipient EnvelopedData whose RecipientInfos SET content is replaced."""
    gw = gateway()
    der = bytes(cms.build_enveloped(b"hi", [container("bob@b.example", gw)],
                                    Capability.AES256_CBC))
    buf = memoryview(der)
    version, _, eci = cms.children(buf, cms.content_info(buf, (cms.OID_ENVELOPED_DATA,), "x")[1])
    env = der_tlv(cms.T_SEQUENCE, bytes(buf[version.head : version.next])
                  + der_tlv(cms.T_SET, infos) + bytes(buf[eci.head : eci.next]))
    return der_tlv(cms.T_SEQUENCE, der_tlv(0x06, cms.OID_ENVELOPED_DATA)
                   + der_tlv(cms.T_CTX0, env))


def _one_info() -> bytes:
    der = bytes(cms.build_enveloped(b"hi", [container("bob@b.example", gateway())],
                                    Capability.AES256_CBC))
    buf = memoryview(der)
    _, infos, _ = cms.children(buf, cms.content_info(buf, (cms.OID_ENVELOPED_DATA,), "x")[1])
    [info] = cms.children(buf, infos)
    return bytes(buf[info.head : info.next])


def test_the_most_recipient_infos_allowed_are_read() -> None:
    env = cms.parse_enveloped(_enveloped_with_infos(_one_info() * cms.MAX_RECIPIENT_INFOS))
    assert len(env.recipients) == cms.MAX_RECIPIENT_INFOS


def test_more_recipient_infos_are_refused_before_the_rest_is_read() -> None:
    """The walk stops after the limit: an element after it that cannot even be framed
    (it claims 4 GB) is never reached, so the refusal names the count, not the damage."""
    too_many = _one_info() * (cms.MAX_RECIPIENT_INFOS + 1)
    for infos in (too_many, too_many + b"\x30\x84\xff\xff\xff\xff"):
        der = _enveloped_with_infos(infos)
        with pytest.raises(SmimeError, match=f"more than {cms.MAX_RECIPIENT_INFOS} Recip"):
            cms.parse_enveloped(der)
        with pytest.raises(SmimeError, match="RecipientInfos"):
            smime.recipient_ids(der)  # what the gateway reads first, before decrypting


def _alg(oid: bytes, *params: bytes) -> bytes:
    return der_tlv(cms.T_SEQUENCE, der_tlv(cms.T_OID, oid) + b"".join(params))


def _hash(oid: bytes) -> bytes:
    return _alg(oid, der_tlv(cms.T_NULL, b""))


def _pss(*fields: bytes) -> cms.PssParams:
    der = _alg(cms.OID_RSASSA_PSS, der_tlv(cms.T_SEQUENCE, b"".join(fields)))
    buf = memoryview(der)
    return cms._pss_params(buf, cms.read_tlv(buf, 0, len(der)))


SHA384 = bytes.fromhex("608648016503040202")


def test_rsassa_pss_params_with_rfc_4055_defaults() -> None:
    """What openssl does not write: absent fields take RFC 4055's defaults (SHA-1, MGF1
    with SHA-1, salt 20, trailer 1), which the verifier then refuses for SHA-1."""
    assert _pss() == cms.PssParams(cms.OID_SHA1, cms.OID_SHA1, 20, 1)
    buf = memoryview(absent := _alg(cms.OID_RSASSA_PSS))
    assert cms._pss_params(buf, cms.read_tlv(buf, 0, len(absent))) == _pss()
    full = _pss(
        der_tlv(cms.T_CTX0, _hash(SHA384)),
        der_tlv(cms.T_CTX1, _alg(cms.OID_MGF1, _hash(cms.OID_SHA256))),
        der_tlv(cms.T_CTX2, der_tlv(cms.T_INTEGER, b"\x30")),
        der_tlv(cms.T_CTX3, der_tlv(cms.T_INTEGER, b"\x02")),
    )
    assert full == cms.PssParams(SHA384, cms.OID_SHA256, 48, 2)
    other_mgf = _pss(der_tlv(cms.T_CTX0, _hash(cms.OID_SHA256)),
                     der_tlv(cms.T_CTX1, _alg(cms.OID_SHA256, _hash(cms.OID_SHA256))))
    assert other_mgf.mgf_digest_oid is None
    # the verifier's refusals, each with its reason
    assert "trailer field 1" in str(smime._pss_scheme(full))
    assert "MGF1" in str(smime._pss_scheme(other_mgf))
    assert "SHA-1" in str(smime._pss_scheme(_pss()))


@pytest.mark.parametrize(
    "fields",
    [
        (der_tlv(cms.T_CTX2, der_tlv(cms.T_INTEGER, b"\xff")),),  # negative salt
        (der_tlv(cms.T_CTX2, der_tlv(cms.T_INTEGER, b"\x20")),) * 2,  # salt twice
        (der_tlv(cms.T_CTX0, _hash(cms.OID_SHA256)),) * 2,  # hash twice
        (der_tlv(0xA4, der_tlv(cms.T_INTEGER, b"\x01")),),  # no such field
        (der_tlv(cms.T_CTX2, der_tlv(cms.T_OCTETS, b"\x20")),),  # salt not an INTEGER
    ],
)
def test_malformed_rsassa_pss_params_are_malformed_cms(fields: tuple[bytes, ...]) -> None:
    with pytest.raises(SmimeError, match="malformed"):
        _pss(*fields)


def _signed_data_in_chunks(count: int) -> bytes:
    """A SignedData (BER, indefinite lengths) whose eContent is `count` empty chunks: each
    costs 2 bytes on the wire, so a 25 MB message could carry millions of them."""
    data, signed = der_tlv(0x06, cms.OID_DATA), der_tlv(0x06, cms.OID_SIGNED_DATA)
    econtent = b"\xa0\x80\x24\x80" + b"\x04\x00" * count + b"\x00\x00\x00\x00"
    sd = b"\x30\x80\x02\x01\x01\x31\x00\x30\x80" + data + econtent + b"\x00\x00\x31\x00\x00\x00"
    return b"\x30\x80" + signed + b"\xa0\x80" + sd + b"\x00\x00\x00\x00"


def test_a_structure_of_more_elements_than_any_sender_writes_is_refused_unread() -> None:
    """Reading BER costs Python work per element (and a walk per indefinite-length
    ancestor): 1,000,000 two-byte chunks took 9 s and 380 MB to read. Real senders chunk
    in 4096 bytes (openssl -stream, gpgsm): a 25 MB message is ~6,400 chunks."""
    assert cms.parse_signed(_signed_data_in_chunks(1000)).content == b""
    too_many = _signed_data_in_chunks(cms.MAX_ELEMENTS)
    with pytest.raises(SmimeError, match=f"more than {cms.MAX_ELEMENTS} BER elements"):
        cms.parse_signed(too_many)
    enveloped = too_many.replace(der_tlv(0x06, cms.OID_SIGNED_DATA),
                                 der_tlv(0x06, cms.OID_ENVELOPED_DATA), 1)
    with pytest.raises(SmimeError, match="BER elements"):
        cms.parse_enveloped(enveloped)
