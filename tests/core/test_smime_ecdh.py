"""EC gateway keys in S/MIME: KeyAgreeRecipientInfo with ephemeral-static ECDH (RFC 5652
6.2.2, RFC 5753, RFC 8551), written for EC containers beside the RSA KeyTransRecipientInfos
and opened by a Decryptor holding the gateway's EC key. The interop with openssl and gpgsm
is in test_smime_ecdh_interop.py; here the structure (read back with pyasn1), envelopes
built independently (pyasn1 + cryptography's primitives: ukm, every KDF hash and key wrap,
rKeyId) and hostile ones."""

from __future__ import annotations

import base64
import contextlib
import os
import random

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.type import univ
from pyasn1_modules import rfc5280, rfc5652, rfc5753
from test_smime_pki import Gateway, container, ec_gateway, gateway

from keypost.core import smime
from keypost.core.errors import DecryptError, SmimeError
from keypost.core.types import Capability

ENTITY = b"Content-Type: text/plain; charset=us-ascii\r\n\r\nmeet at noon\r\n"
MESSAGE = (b"From: alice@a.example\r\nTo: bob@b.example\r\nSubject: ecdh\r\n"
           b"MIME-Version: 1.0\r\n" + ENTITY)

ID_EC_PUBLIC_KEY = univ.ObjectIdentifier("1.2.840.10045.2.1")
KDF_SCHEMES = {
    "sha1": ("1.3.133.16.840.63.0.2", hashes.SHA1()),
    "sha256": ("1.3.132.1.11.1", hashes.SHA256()),
    "sha384": ("1.3.132.1.11.2", hashes.SHA384()),
    "sha512": ("1.3.132.1.11.3", hashes.SHA512()),
}
WRAPS = {"aes128-wrap": ("2.16.840.1.101.3.4.1.5", 16),
         "aes256-wrap": ("2.16.840.1.101.3.4.1.45", 32)}


def _der_of(message: bytes) -> bytes:
    return base64.b64decode(message.split(b"\r\n\r\n", 1)[1])


def _enveloped(der: bytes) -> rfc5652.EnvelopedData:
    info, _ = der_decoder.decode(der, asn1Spec=rfc5652.ContentInfo())
    env, _ = der_decoder.decode(info["content"], asn1Spec=rfc5652.EnvelopedData())
    return env


def _reencoded(env: rfc5652.EnvelopedData) -> bytes:
    info = rfc5652.ContentInfo()
    info["contentType"] = rfc5652.id_envelopedData
    info["content"] = der_encoder.encode(env)
    return bytes(der_encoder.encode(info))


# what keypost writes -------------------------------------------------------------------


@pytest.mark.parametrize("curve", ["P-256", "P-384", "P-521"])
def test_an_ec_container_gets_a_key_agreement_recipient_the_gateway_opens(curve: str) -> None:
    gw = ec_gateway(curve)
    cont = container("bob@b.example", gw)
    out = smime.encrypt_message(MESSAGE, [cont])
    env = _enveloped(_der_of(out))
    assert int(env["version"]) == 2  # RFC 5652 6.1: a version-3 RecipientInfo is present
    [ri] = env["recipientInfos"]
    assert ri.getName() == "kari"
    kari = ri["kari"]
    assert int(kari["version"]) == 3
    assert kari["originator"].getName() == "originatorKey"
    algorithm = kari["originator"]["originatorKey"]["algorithm"]
    assert algorithm["algorithm"] == ID_EC_PUBLIC_KEY
    kea = kari["keyEncryptionAlgorithm"]
    assert str(kea["algorithm"]) == "1.3.132.1.11.1"  # dhSinglePass-stdDH-sha256kdf-scheme
    wrap, _ = der_decoder.decode(kea["parameters"], asn1Spec=rfc5280.AlgorithmIdentifier())
    assert str(wrap["algorithm"]) == WRAPS["aes256-wrap"][0]
    assert not wrap["parameters"].isValue  # RFC 5753 7.2: AES wrap parameters are absent
    [rek] = kari["recipientEncryptedKeys"]
    rid = rek["rid"]["issuerAndSerialNumber"]
    assert int(rid["serialNumber"]) == cont.serial_number
    assert der_encoder.encode(rid["issuer"]) == cont.issuer.public_bytes()
    result = smime.Decryptor([gw.key]).decrypt_message(out)
    assert result.message.endswith(ENTITY) and result.algorithm == "aes256-cbc"
    assert smime.recipient_ids(out) == [smime.RecipientId(cont.issuer, cont.serial_number)]


def test_aes128_content_is_wrapped_with_aes128_wrap() -> None:
    gw = ec_gateway()
    cont = container("bob@b.example", gw, caps=(Capability.AES128_CBC,))
    out = smime.encrypt_message(MESSAGE, [cont])
    kea = _enveloped(_der_of(out))["recipientInfos"][0]["kari"]["keyEncryptionAlgorithm"]
    wrap, _ = der_decoder.decode(kea["parameters"], asn1Spec=rfc5280.AlgorithmIdentifier())
    assert str(wrap["algorithm"]) == WRAPS["aes128-wrap"][0]
    assert smime.Decryptor([gw.key]).decrypt_message(out).algorithm == "aes128-cbc"


def test_mixed_recipients_get_one_key_transport_or_agreement_each() -> None:
    rsa_gw, p256, p384 = gateway(), ec_gateway("P-256"), ec_gateway("P-384")
    certs = [container("a@b.example", rsa_gw), container("b@b.example", p256),
             container("c@c.example", p384)]
    out = smime.encrypt_message(MESSAGE, certs)
    kinds = sorted(ri.getName() for ri in _enveloped(_der_of(out))["recipientInfos"])
    assert kinds == ["kari", "kari", "ktri"]
    assert {(r.issuer, r.serial) for r in smime.recipient_ids(out)} == {
        (c.issuer, c.serial_number) for c in certs}
    for gw in (rsa_gw, p256, p384):
        assert smime.Decryptor([gw.key]).decrypt_message(out).message.endswith(ENTITY)
    # a gateway holding an EC and an RSA key: the one that opens it is named
    both = smime.Decryptor([p384.key, rsa_gw.key])
    only_rsa = smime.encrypt_message(MESSAGE, [certs[0]])
    assert both.decrypt_message(only_rsa).key_index == 1
    only_ec = smime.encrypt_message(MESSAGE, [certs[2]])
    assert both.decrypt_message(only_ec).key_index == 0
    assert smime.Decryptor([rsa_gw.key, p384.key]).decrypt_message(only_ec).key_index == 1


def test_all_rsa_recipients_keep_enveloped_data_version_0() -> None:
    out = smime.encrypt_message(MESSAGE, [container("a@b.example", gateway())])
    assert int(_enveloped(_der_of(out))["version"]) == 0


def test_the_wrong_ec_key_gets_the_uniform_error() -> None:
    out = smime.encrypt_message(MESSAGE, [container("b@b.example", ec_gateway("P-256"))])
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(DecryptError) as wrong:
        smime.Decryptor([other, gateway().key]).decrypt_message(out)
    with pytest.raises(DecryptError) as garbage:
        smime.Decryptor([other]).decrypt_message(out.replace(b"A", b"B", 40))
    assert str(wrong.value) == str(garbage.value)


def test_ec_keys_on_other_curves_are_refused_clearly() -> None:
    """The engine agrees keys on P-256, P-384 and P-521 (what RFC 8551, openssl and gpgsm
    share); a P-224 or secp256k1 key is refused by name, as recipient and as gateway key."""
    from test_smime_pki import _gateway_cert

    for curve in (ec.SECP224R1(), ec.SECP256K1()):
        key = ec.generate_private_key(curve)
        with pytest.raises(SmimeError, match="P-256, P-384 or P-521"):
            smime.Decryptor([key])
        odd = container("b@b.example", Gateway(key, _gateway_cert(key, "odd")))
        with pytest.raises(SmimeError, match="P-256, P-384 or P-521"):
            smime.encrypt_message(MESSAGE, [odd])


# independently built envelopes (pyasn1 + cryptography primitives) ----------------------


def _independent(gw: Gateway, *, ukm: bytes | None = None, kdf: str = "sha256",
                 wrap: str = "aes256-wrap", rkeyid: bool = False,
                 curve_param: bool = False) -> bytes:
    """EnvelopedData (AES-256-CBC) with one KeyAgreeRecipientInfo for gw's EC key, built
    from the RFCs' ASN.1 (pyasn1-modules) and cryptography's ECDH, X9.63 KDF and key wrap,
    not from keypost's writer."""
    public = gw.key.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    ephemeral = ec.generate_private_key(public.curve)
    kdf_oid, kdf_hash = KDF_SCHEMES[kdf]
    wrap_oid, kek_len = WRAPS[wrap]
    key_info = rfc5280.AlgorithmIdentifier()
    key_info["algorithm"] = univ.ObjectIdentifier(wrap_oid)
    shared_info = rfc5753.ECC_CMS_SharedInfo()
    shared_info["keyInfo"] = key_info
    if ukm is not None:
        shared_info["entityUInfo"] = ukm
    shared_info["suppPubInfo"] = (kek_len * 8).to_bytes(4, "big")
    kek = X963KDF(kdf_hash, kek_len, der_encoder.encode(shared_info)).derive(
        ephemeral.exchange(ec.ECDH(), public))
    cek, iv = os.urandom(32), os.urandom(16)

    info = rfc5652.RecipientInfo()
    kari = info["kari"]  # the [1]-tagged instance the CHOICE holds
    kari["version"] = 3
    orig_key = kari["originator"]["originatorKey"]
    orig_key["algorithm"]["algorithm"] = ID_EC_PUBLIC_KEY
    if curve_param:
        named = {"secp256r1": "1.2.840.10045.3.1.7", "secp384r1": "1.3.132.0.34",
                 "secp521r1": "1.3.132.0.35"}[public.curve.name]
        orig_key["algorithm"]["parameters"] = der_encoder.encode(univ.ObjectIdentifier(named))
    point = ephemeral.public_key().public_bytes(serialization.Encoding.X962,
                                                serialization.PublicFormat.UncompressedPoint)
    orig_key["publicKey"] = univ.BitString.fromOctetString(point)
    if ukm is not None:
        kari["ukm"] = ukm
    kari["keyEncryptionAlgorithm"]["algorithm"] = univ.ObjectIdentifier(kdf_oid)
    kari["keyEncryptionAlgorithm"]["parameters"] = der_encoder.encode(key_info)
    rek = rfc5652.RecipientEncryptedKey()
    cert = container("bob@b.example", gw)
    if rkeyid:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        rek["rid"]["rKeyId"]["subjectKeyIdentifier"] = ski.digest
    else:
        ias, _ = der_decoder.decode(cert.issuer.public_bytes(), asn1Spec=rfc5280.Name())
        rek["rid"]["issuerAndSerialNumber"]["issuer"] = ias
        rek["rid"]["issuerAndSerialNumber"]["serialNumber"] = cert.serial_number
    rek["encryptedKey"] = aes_key_wrap(kek, cek)
    kari["recipientEncryptedKeys"].append(rek)

    env = rfc5652.EnvelopedData()
    env["version"] = 2
    env["recipientInfos"].append(info)
    eci = env["encryptedContentInfo"]
    eci["contentType"] = rfc5652.id_data
    eci["contentEncryptionAlgorithm"]["algorithm"] = univ.ObjectIdentifier(
        "2.16.840.1.101.3.4.1.42")
    eci["contentEncryptionAlgorithm"]["parameters"] = der_encoder.encode(univ.OctetString(iv))
    pad = 16 - len(ENTITY) % 16
    encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    eci["encryptedContent"] = encryptor.update(ENTITY + bytes((pad,)) * pad) + encryptor.finalize()
    return _reencoded(env)


@pytest.mark.parametrize("curve", ["P-256", "P-384", "P-521"])
@pytest.mark.parametrize("kdf", ["sha1", "sha256", "sha384", "sha512"])
@pytest.mark.parametrize("wrap", ["aes128-wrap", "aes256-wrap"])
def test_independently_built_key_agreement_opens(curve: str, kdf: str, wrap: str) -> None:
    gw = ec_gateway(curve)
    der = _independent(gw, kdf=kdf, wrap=wrap)
    assert smime.Decryptor([gw.key]).decrypt_der(der)[0] == ENTITY


@pytest.mark.parametrize("options", [{"ukm": b"\x01" * 64}, {"rkeyid": True},
                                     {"curve_param": True}],
                         ids=["ukm", "rKeyId", "namedCurve"])
def test_ukm_rkeyid_and_a_named_curve_are_read(options: dict[str, object]) -> None:
    gw = ec_gateway()
    der = _independent(gw, **options)  # type: ignore[arg-type]
    assert smime.Decryptor([gw.key]).decrypt_der(der)[0] == ENTITY


# hostile or broken key agreement ------------------------------------------------------


def _kari_of(env: rfc5652.EnvelopedData) -> rfc5652.KeyAgreeRecipientInfo:
    return env["recipientInfos"][0]["kari"]


def _spoilt(change: str) -> bytes:
    gw = ec_gateway()
    env = _enveloped(_independent(gw, ukm=b"keying material"))
    kari = _kari_of(env)
    rek = kari["recipientEncryptedKeys"][0]
    wrapped = bytes(rek["encryptedKey"])
    orig_key = kari["originator"]["originatorKey"]
    if change == "ukm-missing":
        kari["ukm"] = univ.noValue
    elif change == "ukm-changed":
        kari["ukm"] = b"other material"
    elif change == "point-of-another-curve":
        other = ec.generate_private_key(ec.SECP384R1()).public_key()
        orig_key["publicKey"] = univ.BitString.fromOctetString(other.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))
    elif change == "point-off-the-curve":
        point = bytearray(orig_key["publicKey"].asOctets())
        point[-1] ^= 1
        orig_key["publicKey"] = univ.BitString.fromOctetString(bytes(point))
    elif change == "point-empty":
        orig_key["publicKey"] = univ.BitString.fromOctetString(b"")
    elif change == "named-curve-differs":
        orig_key["algorithm"]["parameters"] = der_encoder.encode(
            univ.ObjectIdentifier("1.3.132.0.34"))
    elif change == "wrapped-key-truncated":
        rek["encryptedKey"] = wrapped[:-8]
    elif change == "wrapped-key-cut-mid-block":
        rek["encryptedKey"] = wrapped[:-3]
    elif change == "wrapped-key-empty":
        rek["encryptedKey"] = b""
    elif change == "wrapped-key-flipped":
        rek["encryptedKey"] = wrapped[:5] + bytes((wrapped[5] ^ 1,)) + wrapped[6:]
    elif change == "unknown-kdf":
        kari["keyEncryptionAlgorithm"]["algorithm"] = univ.ObjectIdentifier("1.3.132.1.11.9")
    elif change == "no-wrap-algorithm":
        kari["keyEncryptionAlgorithm"]["parameters"] = univ.noValue
    elif change == "unknown-wrap":
        key_info = rfc5280.AlgorithmIdentifier()
        key_info["algorithm"] = univ.ObjectIdentifier("1.2.840.113549.1.9.16.3.6")  # 3DES wrap
        kari["keyEncryptionAlgorithm"]["parameters"] = der_encoder.encode(key_info)
    elif change == "static-originator":
        kari["originator"]["subjectKeyIdentifier"] = b"\x01" * 20
    else:
        raise AssertionError(change)
    return _reencoded(env)


@pytest.mark.parametrize("change", [
    "ukm-missing", "ukm-changed", "point-of-another-curve", "point-off-the-curve",
    "point-empty", "named-curve-differs", "wrapped-key-truncated", "wrapped-key-cut-mid-block",
    "wrapped-key-empty", "wrapped-key-flipped", "unknown-kdf", "no-wrap-algorithm",
    "unknown-wrap", "static-originator",
])
def test_spoilt_key_agreement_is_the_uniform_error(change: str) -> None:
    der = _spoilt(change)
    decryptor = smime.Decryptor([ec_gateway().key, gateway().key])
    with pytest.raises(DecryptError) as caught:
        decryptor.decrypt_der(der)
    assert str(caught.value) == str(DecryptError())
    # the intact envelope opens: the change is what broke it
    assert decryptor.decrypt_der(_independent(ec_gateway(), ukm=b"keying material"))[0] == ENTITY


def test_more_recipient_encrypted_keys_than_the_limit_are_refused_unread() -> None:
    """One KeyAgreeRecipientInfo may carry many RecipientEncryptedKeys, each a key unwrap
    per EC key: they count against the same limit as RecipientInfos."""
    env = _enveloped(_independent(ec_gateway()))
    reks = _kari_of(env)["recipientEncryptedKeys"]
    for _ in range(smime.MAX_RECIPIENT_INFOS):
        reks.append(reks[0])
    der = _reencoded(env)
    with pytest.raises(DecryptError):
        smime.Decryptor([ec_gateway().key]).decrypt_der(der)
    with pytest.raises(SmimeError, match="more than"):
        smime.recipient_ids(der)


def test_every_byte_of_a_key_agreement_changed_is_a_smime_error_or_opens() -> None:
    """Byte flips anywhere in the RecipientInfo: only SmimeError (DecryptError) escapes."""
    gw = ec_gateway()
    der = _der_of(smime.encrypt_message(MESSAGE, [container("b@b.example", gw)]))
    start = der.index(b"\xa1")  # the KeyAgreeRecipientInfo's [1] tag
    decryptor = smime.Decryptor([gw.key])
    rng = random.Random(5753)
    for _ in range(400):
        spoilt = bytearray(der)
        at = rng.randrange(start, start + 200)
        spoilt[at] ^= 1 << rng.randrange(8)
        with contextlib.suppress(SmimeError):
            decryptor.decrypt_der(bytes(spoilt))
