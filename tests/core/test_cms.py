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


def test_non_rsa_recipient_is_refused() -> None:
    from test_smime_pki import ec_certificate

    with pytest.raises(SmimeError):
        cms.build_enveloped(b"x", [ec_certificate()], Capability.AES256_CBC)
