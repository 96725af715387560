"""Key container profile, issuance rules and verification, checked with cryptography,
pyasn1 and the real openssl / gpgsm command-line tools."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pki_util import key_pem
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.type import char, namedtype, univ

from keypost.core import containers as kc
from keypost.core.address import parse_address
from keypost.core.errors import ContainerError
from keypost.core.types import Capability, Purpose, Role
from keypost.core.x509_checks import PARSE_ERRORS
from keypost.core.x509_ext import (
    OID_KEYPOST_CONTAINER,
    OID_NO_REV_AVAIL,
    OID_SMIME_CAPABILITIES,
    OID_SMTP_UTF8_MAILBOX,
    der_elements,
    der_oid,
    der_single,
    der_tlv,
)

# Real time (certificates carry whole seconds): the generated CAs are valid from "now".
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
URL = "https://keys.example.org/"
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl not installed")


@pytest.fixture(scope="module")
def ca() -> kc.DirectoryCA:
    return kc.DirectoryCA.generate(directory_url=URL)


@pytest.fixture(scope="module")
def rsa_ca() -> kc.DirectoryCA:
    return kc.DirectoryCA.generate("rsa-3072", "keypost RSA CA", URL)


@pytest.fixture(scope="module")
def gw_priv() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def gw(gw_priv: rsa.RSAPrivateKey) -> kc.GatewayKey:
    return kc.GatewayKey(gw_priv.public_key())


def issue(
    ca: kc.DirectoryCA,
    gw: kc.GatewayKey,
    address: str = "alice@example.org",
    purpose: Purpose = Purpose.ENCRYPT,
    **kw: object,
) -> x509.Certificate:
    request = kc.ContainerRequest(parse_address(address), purpose, gw, **kw)  # type: ignore[arg-type]
    return ca.issue(request, now=NOW)


def ext_value(
    cert: x509.Certificate, oid: x509.ObjectIdentifier
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_oid(oid)


def unknown_ext_bytes(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes:
    value = cert.extensions.get_extension_for_oid(oid).value
    assert isinstance(value, x509.UnrecognizedExtension)
    return value.value


def write_pem(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(kc.to_pem(c) for c in certs))
    return path


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run(
        [OPENSSL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


class KeypostContainerAsn1(univ.Sequence):  # type: ignore[misc]
    """The keypost extension's ASN.1 as documented, for an independent decoder."""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType("role", univ.Enumerated()),
        namedtype.NamedType("gateway", univ.OctetString()),
        namedtype.NamedType("directory", char.IA5String()),
    )


# The profile, read with cryptography and pyasn1 ---------------------------------------


def test_encryption_container_profile(ca: kc.DirectoryCA, gw: kc.GatewayKey) -> None:
    cert = issue(ca, gw, "Alice@Example.ORG")
    assert cert.version is x509.Version.v3
    assert cert.issuer == ca.certificate.subject
    assert cert.public_key() == gw.public_key
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)

    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Alice@example.org"
    assert cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)[0].value == (
        "Alice@example.org"
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert not san.critical
    assert san.value.get_values_for_type(x509.RFC822Name) == ["Alice@example.org"]

    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_encipherment and not ku.value.digital_signature
    assert not ku.value.key_agreement and not ku.value.data_encipherment
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False

    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(gw.public_key)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ca_ski.value.digest

    norev = ext_value(cert, OID_NO_REV_AVAIL)
    assert not norev.critical
    assert unknown_ext_bytes(cert, OID_NO_REV_AVAIL) == b"\x05\x00"

    # SMIMECapabilities written out by hand from RFC 8551 / RFC 3565 (aes256-cbc, aes128-cbc).
    expected_caps = bytes.fromhex("301a300b060960864801650304012a300b0609608648016503040102")
    assert unknown_ext_bytes(cert, OID_SMIME_CAPABILITIES) == expected_caps
    assert not ext_value(cert, OID_KEYPOST_CONTAINER).critical

    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert cert.not_valid_before_utc == NOW - dt.timedelta(minutes=5)
    assert cert.not_valid_after_utc == NOW + dt.timedelta(hours=24)
    assert lifetime == dt.timedelta(hours=24, minutes=5)
    assert 0 < cert.serial_number < 2**159


def test_keypost_extension_decodes_with_pyasn1(ca: kc.DirectoryCA, gw: kc.GatewayKey) -> None:
    cert = issue(ca, gw)
    value, rest = der_decoder.decode(
        unknown_ext_bytes(cert, OID_KEYPOST_CONTAINER), KeypostContainerAsn1()
    )
    assert rest == b""
    assert int(value["role"]) == 0  # proxy-encryption
    spki = gw.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert bytes(value["gateway"]) == hashlib.sha256(spki).digest()
    assert str(value["directory"]) == URL
    info = kc.describe(cert)
    assert info.role is Role.PROXY_ENCRYPTION
    assert info.gateway_fingerprint == gw.fingerprint
    assert info.directory_url == URL
    assert info.capabilities == (Capability.AES256_CBC, Capability.AES128_CBC)
    assert info.key_description == "RSA-2048"
    signing = issue(ca, gw, purpose=Purpose.SIGN)
    value, _ = der_decoder.decode(
        unknown_ext_bytes(signing, OID_KEYPOST_CONTAINER), KeypostContainerAsn1()
    )
    assert int(value["role"]) == 1  # proxy-signing


def test_signing_container(ca: kc.DirectoryCA, gw: kc.GatewayKey) -> None:
    cert = issue(ca, gw, "bob@example.org", Purpose.SIGN)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_encipherment and not ku.key_agreement
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=30)
    assert kc.describe(cert).role is Role.PROXY_SIGNING
    assert kc.verify_container(cert, [ca.certificate], "bob@example.org", Purpose.SIGN, NOW).ok


def test_ec_gateway_key(ca: kc.DirectoryCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    gw = kc.GatewayKey(key)
    assert gw.smime_usable is True  # ECDH key agreement (test_smime_ecdh.py)
    p224 = kc.GatewayKey(ec.generate_private_key(ec.SECP224R1()).public_key())
    assert p224.smime_usable is False  # accepted as a key, but no S/MIME key agreement
    cert = issue(ca, gw)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_agreement and not ku.key_encipherment
    assert kc.describe(cert).key_description == "EC P-256"
    assert kc.verify_container(cert, [ca.certificate], "alice@example.org", Purpose.ENCRYPT, NOW).ok


def test_smime_usable(gw: kc.GatewayKey) -> None:
    assert gw.smime_usable is True


def test_capabilities_follow_gateway_preferences(
    ca: kc.DirectoryCA, gw_priv: rsa.RSAPrivateKey
) -> None:
    only128 = kc.GatewayKey(gw_priv.public_key(), capabilities=(Capability.AES128_CBC,))
    cert = issue(ca, only128)
    assert kc.describe(cert).capabilities == (Capability.AES128_CBC,)
    assert unknown_ext_bytes(cert, OID_SMIME_CAPABILITIES) == bytes.fromhex(
        "300d300b0609608648016503040102"
    )


def test_ski_same_for_every_container_of_one_key(
    ca: kc.DirectoryCA, rsa_ca: kc.DirectoryCA, gw: kc.GatewayKey
) -> None:
    certs = [
        issue(ca, gw, "a@one.example"),
        issue(ca, gw, "b@two.example", Purpose.SIGN),
        issue(rsa_ca, gw, "c@three.example"),
        issue(ca, kc.GatewayKey(gw.public_key), "d@four.example"),  # a fresh GatewayKey object
    ]
    skis = {c.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value for c in certs}
    assert len(skis) == 1
    assert len({c.serial_number for c in certs}) == len(certs)
    other = kc.GatewayKey(rsa.generate_private_key(65537, 2048).public_key())
    other_ski = issue(ca, other).extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert other_ski.value not in skis


def test_serials_are_random_159_bit(ca: kc.DirectoryCA, gw: kc.GatewayKey) -> None:
    serials = [issue(ca, gw).serial_number for _ in range(64)]
    assert len(set(serials)) == 64
    assert all(0 < s < 2**159 for s in serials)
    # 64 random 159-bit numbers: the largest is below 2**150 with probability 2**-576.
    assert max(s.bit_length() for s in serials) > 150


# Addresses: IDN, SmtpUTF8Mailbox, long addresses ---------------------------------------


def test_idn_domain_written_as_a_label(ca: kc.DirectoryCA, gw: kc.GatewayKey) -> None:
    cert = issue(ca, gw, "Info@Bücher.Example")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["Info@xn--bcher-kva.example"]
    for wanted in ("Info@bücher.example", "Info@XN--BCHER-KVA.example"):
        assert kc.verify_container(cert, [ca.certificate], wanted, Purpose.ENCRYPT, NOW).ok


def test_non_ascii_local_part_uses_smtputf8mailbox(ca: kc.DirectoryCA, gw: kc.GatewayKey) -> None:
    cert = issue(ca, gw, "jörg@bücher.example")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == []
    (other,) = san.get_values_for_type(x509.OtherName)
    assert other.type_id == OID_SMTP_UTF8_MAILBOX
    assert OID_SMTP_UTF8_MAILBOX.dotted_string == "1.3.6.1.5.5.7.8.9"
    decoded, rest = der_decoder.decode(other.value, char.UTF8String())
    assert rest == b""
    assert str(decoded) == "jörg@bücher.example"  # RFC 8398 section 3: domain as U-labels
    # emailAddress is an IA5String: a UTF-8 address can only go into the CN.
    assert cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS) == []
    assert (
        cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "jörg@bücher.example"
    )
    assert kc.describe(cert).addresses == ("jörg@bücher.example",)
    ok = kc.verify_container(
        cert, [ca.certificate], "jörg@xn--bcher-kva.example", Purpose.ENCRYPT, NOW
    )
    assert ok.ok, ok.reasons
    wrong = kc.verify_container(cert, [ca.certificate], "jorg@bücher.example", Purpose.ENCRYPT, NOW)
    assert not wrong.ok


def test_idna_2008_domain_in_both_san_forms(ca: kc.DirectoryCA, gw: kc.GatewayKey) -> None:
    """ß survives (IDNA 2008): A-labels in rfc822Name, U-labels in SmtpUTF8Mailbox."""
    ascii_cert = issue(ca, gw, "info@faß.de")
    san = ascii_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["info@xn--fa-hia.de"]
    utf8_cert = issue(ca, gw, "jörg@faß.de")
    san = utf8_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    (other,) = san.get_values_for_type(x509.OtherName)
    decoded, _ = der_decoder.decode(other.value, char.UTF8String())
    assert str(decoded) == "jörg@faß.de"
    for cert, asked in ((ascii_cert, "info@faß.de"), (utf8_cert, "jörg@xn--fa-hia.de")):
        assert kc.verify_container(cert, [ca.certificate], asked, Purpose.ENCRYPT, NOW).ok
    other_domain = kc.verify_container(
        ascii_cert, [ca.certificate], "info@fass.de", Purpose.ENCRYPT, NOW
    )
    assert not other_domain.ok


def test_long_addresses(ca: kc.DirectoryCA, gw: kc.GatewayKey) -> None:
    long_ascii = "a" * 60 + "@example.org"  # > 64 characters: no CN (ub-common-name)
    cert = issue(ca, gw, long_ascii)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    assert cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)[0].value == long_ascii
    assert not cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    long_utf8 = "ü" * 30 + "@" + "x" * 40 + ".example"
    cert = issue(ca, gw, long_utf8)
    assert len(cert.subject) == 0
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    assert kc.verify_container(cert, [ca.certificate], long_utf8, Purpose.ENCRYPT, NOW).ok
    # ub-common-name counts UTF-8 octets in cryptography: 30 characters can be 90 octets
    wide = "\u4f8b" * 20 + "@" + "\u5b50" * 9 + ".example"  # 39 characters, 95 octets
    cert = issue(ca, gw, wide)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    assert kc.verify_container(cert, [ca.certificate], wide, Purpose.ENCRYPT, NOW).ok
    fits = "\u4f8b" * 10 + "@b.example"  # 40 octets: keeps its CN
    cn = issue(ca, gw, fits).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == [fits]
    named = kc.DirectoryCA.generate(common_name="\u00fc" * 40)  # 80 octets, cut to 64
    assert named.certificate.subject.rfc4514_string() == "CN=" + "\u00fc" * 32


# Lifetimes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("purpose", "lifetime", "ok"),
    [
        (Purpose.ENCRYPT, dt.timedelta(minutes=5), True),
        (Purpose.ENCRYPT, dt.timedelta(minutes=4, seconds=59), False),
        (Purpose.ENCRYPT, dt.timedelta(hours=1), True),
        (Purpose.ENCRYPT, dt.timedelta(hours=24), True),
        (Purpose.ENCRYPT, dt.timedelta(hours=24, seconds=1), False),
        (Purpose.SIGN, dt.timedelta(days=30), True),
        (Purpose.SIGN, dt.timedelta(days=30, seconds=1), False),
        (Purpose.SIGN, dt.timedelta(minutes=5), True),
        (Purpose.SIGN, dt.timedelta(0), False),
        (Purpose.ENCRYPT, dt.timedelta(hours=-1), False),
    ],
)
def test_lifetimes(
    ca: kc.DirectoryCA, gw: kc.GatewayKey, purpose: Purpose, lifetime: dt.timedelta, ok: bool
) -> None:
    if not ok:
        with pytest.raises(ContainerError, match="lifetime"):
            issue(ca, gw, purpose=purpose, lifetime=lifetime)
        return
    cert = issue(ca, gw, purpose=purpose, lifetime=lifetime)
    assert cert.not_valid_before_utc == NOW - kc.DEFAULT_SKEW
    assert cert.not_valid_after_utc == NOW + lifetime


def test_clock_skew_is_a_setting(ca: kc.DirectoryCA, gw: kc.GatewayKey) -> None:
    """notBefore = now - skew: 5 minutes unless the directory says otherwise."""
    key = ca_private_key(ca)
    for skew in (dt.timedelta(0), dt.timedelta(minutes=1), kc.MAX_SKEW):
        custom = kc.DirectoryCA(ca.certificate, key, URL, skew=skew)
        cert = issue(custom, gw, lifetime=dt.timedelta(minutes=5))
        assert cert.not_valid_before_utc == NOW - skew
        assert cert.not_valid_after_utc == NOW + dt.timedelta(minutes=5)
    loaded = kc.DirectoryCA.load(kc.to_pem(ca.certificate), ca.key_pem(), skew=dt.timedelta(0))
    assert issue(loaded, gw).not_valid_before_utc == NOW
    for bad in (dt.timedelta(seconds=-1), kc.MAX_SKEW + dt.timedelta(seconds=1)):
        with pytest.raises(ContainerError, match="skew"):
            kc.DirectoryCA(ca.certificate, key, URL, skew=bad)


def test_container_cannot_outlive_the_ca(gw: kc.GatewayKey) -> None:
    short = kc.DirectoryCA.generate(validity=dt.timedelta(hours=1))
    with pytest.raises(ContainerError, match="CA expires"):
        short.issue(kc.ContainerRequest(parse_address("a@b.example"), Purpose.ENCRYPT, gw))


# Compatibility option ------------------------------------------------------------------


def self_signed_gateway_cert(key: rsa.RSAPrivateKey, serial: int = 4242) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail gateway of example.org")])
    issuer = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Gateway Vendor CA")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )


def test_compat_issuer_serial(
    ca: kc.DirectoryCA, gw_priv: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    gw_cert = self_signed_gateway_cert(gw_priv)
    gw = kc.GatewayKey.from_pem(kc.to_pem(gw_cert))
    cert = issue(ca, gw, compat_issuer_serial=True)
    assert cert.issuer == gw_cert.issuer and cert.serial_number == gw_cert.serial_number
    # still signed by the directory CA, found through the authority key identifier
    ca_key = ca.certificate.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    ca_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    result = kc.verify_container(cert, [ca.certificate], "alice@example.org", Purpose.ENCRYPT, NOW)
    assert result.ok, result.reasons
    other_ca = kc.DirectoryCA.generate()
    assert not kc.verify_container(
        cert, [other_ca.certificate], "alice@example.org", Purpose.ENCRYPT, NOW
    ).ok
    # off by default
    assert issue(ca, gw).issuer == ca.certificate.subject
    with pytest.raises(ContainerError, match="certificate"):
        issue(ca, kc.GatewayKey(gw_priv.public_key()), compat_issuer_serial=True)


@needs_openssl
def test_compat_container_breaks_name_chaining_in_openssl(
    ca: kc.DirectoryCA, gw_priv: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    """The documented trade-off: name-based path building cannot find the signer."""
    gw = kc.GatewayKey.from_pem(kc.to_pem(self_signed_gateway_cert(gw_priv)))
    cert = ca.issue(
        kc.ContainerRequest(parse_address("a@b.example"), Purpose.ENCRYPT, gw, None, True)
    )
    res = openssl(
        "verify",
        "-CAfile",
        write_pem(tmp_path / "ca.pem", ca.certificate),
        write_pem(tmp_path / "c.pem", cert),
    )
    assert res.returncode != 0


@needs_openssl
def test_compat_container_lets_issuer_serial_gateways_decrypt(
    ca: kc.DirectoryCA, gw_priv: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    """What the option is for: a sender (openssl cms) encrypts to the container and a gateway
    that looks its key up by issuer+serial (openssl cms -recip, cryptography's
    pkcs7_decrypt_der) finds it with its own certificate; without the option it cannot."""
    gw_cert = self_signed_gateway_cert(gw_priv)
    gw = kc.GatewayKey.from_pem(kc.to_pem(gw_cert))
    gw_cert_pem = write_pem(tmp_path / "gw.pem", gw_cert)
    gw_key_pem = tmp_path / "gw.key"
    gw_key_pem.write_bytes(key_pem(gw_priv))
    message = tmp_path / "msg.txt"
    message.write_bytes(b"Content-Type: text/plain\r\n\r\nhello\r\n")
    for compat in (True, False):
        cert = issue(ca, gw, compat_issuer_serial=compat)
        container = write_pem(tmp_path / f"c{compat}.pem", cert)
        enc = tmp_path / f"enc{compat}.der"
        res = openssl("cms", "-encrypt", "-aes256", "-binary", "-outform", "DER",
                      "-in", message, "-out", enc, container)  # fmt: skip
        assert res.returncode == 0, res.stderr
        dec = openssl("cms", "-decrypt", "-inform", "DER", "-in", enc, "-recip", gw_cert_pem,
                      "-inkey", gw_key_pem)  # fmt: skip
        assert (dec.returncode == 0) is compat, dec.stderr
        if compat:
            assert "hello" in dec.stdout
        options: list[pkcs7.PKCS7Options] = []
        if compat:
            clear = pkcs7.pkcs7_decrypt_der(enc.read_bytes(), gw_cert, gw_priv, options)
            assert clear.endswith(b"hello\r\n")
        else:
            with pytest.raises(ValueError):
                pkcs7.pkcs7_decrypt_der(enc.read_bytes(), gw_cert, gw_priv, options)


# Real openssl / gpgsm ------------------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize("ca_name", ["ca", "rsa_ca"])
def test_openssl_verify_purposes(
    request: pytest.FixtureRequest, ca_name: str, gw: kc.GatewayKey, tmp_path: Path
) -> None:
    directory_ca: kc.DirectoryCA = request.getfixturevalue(ca_name)
    ca_pem = write_pem(tmp_path / "ca.pem", directory_ca.certificate)
    enc = write_pem(
        tmp_path / "enc.pem",
        directory_ca.issue(
            kc.ContainerRequest(parse_address("alice@example.org"), Purpose.ENCRYPT, gw)
        ),
    )
    sig = write_pem(
        tmp_path / "sig.pem",
        directory_ca.issue(
            kc.ContainerRequest(parse_address("alice@example.org"), Purpose.SIGN, gw)
        ),
    )
    res = openssl("verify", "-CAfile", ca_pem, "-purpose", "smimeencrypt", enc)
    assert res.returncode == 0, res.stdout + res.stderr
    res = openssl("verify", "-CAfile", ca_pem, "-purpose", "smimesign", sig)
    assert res.returncode == 0, res.stdout + res.stderr
    # and openssl refuses the wrong purpose, so the key usages really differ
    assert openssl("verify", "-CAfile", ca_pem, "-purpose", "smimeencrypt", sig).returncode != 0
    assert openssl("verify", "-CAfile", ca_pem, "-purpose", "smimesign", enc).returncode != 0
    other = write_pem(tmp_path / "other.pem", kc.DirectoryCA.generate().certificate)
    assert openssl("verify", "-CAfile", other, enc).returncode != 0


@needs_openssl
def test_openssl_text_shows_profile(ca: kc.DirectoryCA, gw: kc.GatewayKey, tmp_path: Path) -> None:
    cert = issue(ca, gw)
    path = write_pem(tmp_path / "c.pem", cert)
    text = openssl("x509", "-in", path, "-noout", "-text").stdout
    lines = [line.strip() for line in text.splitlines()]
    assert "X509v3 Basic Constraints: critical" in lines
    assert "CA:FALSE" in lines
    assert "X509v3 Key Usage: critical" in lines
    assert "Key Encipherment" in lines
    assert "X509v3 Extended Key Usage:" in lines and "E-mail Protection" in lines
    assert "email:alice@example.org" in lines
    assert "Subject: CN = alice@example.org, emailAddress = alice@example.org" in lines
    assert "Issuer: CN = keypost directory CA" in lines
    assert any(line.startswith("X509v3 No Revocation Available") for line in lines)
    assert any(line.startswith("S/MIME Capabilities") for line in lines)
    assert any(line.startswith(OID_KEYPOST_CONTAINER.dotted_string) for line in lines)
    assert "Signature Algorithm: ecdsa-with-SHA256" in lines
    fp = openssl("x509", "-in", path, "-noout", "-fingerprint", "-sha256").stdout.strip()
    assert fp.split("=", 1)[1] == kc.sha256_fingerprint(cert)
    serial = openssl("x509", "-in", path, "-noout", "-serial").stdout.strip()
    assert int(serial.split("=", 1)[1], 16) == cert.serial_number


@needs_openssl
def test_pkcs7_bundle_read_by_openssl(
    ca: kc.DirectoryCA, gw: kc.GatewayKey, tmp_path: Path
) -> None:
    certs = [issue(ca, gw), ca.certificate]
    bundle = tmp_path / "b.p7b"
    bundle.write_bytes(kc.pkcs7_bundle(certs))
    res = openssl("pkcs7", "-inform", "DER", "-in", bundle, "-print_certs")
    assert res.returncode == 0, res.stderr
    certs.sort(key=kc.to_der)
    assert sorted(kc.load_certificates(res.stdout.encode()), key=kc.to_der) == certs
    assert sorted(kc.load_certificates(bundle.read_bytes()), key=kc.to_der) == certs
    pem = openssl("pkcs7", "-inform", "DER", "-in", bundle, "-outform", "PEM").stdout.encode()
    assert sorted(kc.load_certificates(pem), key=kc.to_der) == certs


@pytest.mark.skipif(shutil.which("gpgsm") is None, reason="gpgsm not installed")
def test_gpgsm_validates_and_encrypts_to_container(
    ca: kc.DirectoryCA, gw: kc.GatewayKey, gw_priv: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    """gpgsm (an independent X.509 stack) finds the container by address, validates it
    under the trusted directory CA and encrypts to it; the gateway key decrypts (openssl)."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    ca_fpr = ca.certificate.fingerprint(hashes.SHA1()).hex(":").upper()
    (home / "trustlist.txt").write_text(f"{ca_fpr} S\n")
    cert = ca.issue(kc.ContainerRequest(parse_address("carol@example.org"), Purpose.ENCRYPT, gw))
    path = write_pem(tmp_path / "both.pem", ca.certificate, cert)
    # gpgsm 2.2 knows no RFC 9608 noRevAvail and would ask dirmngr for a CRL
    base = ["gpgsm", "--batch", "--disable-dirmngr", "--disable-crl-checks"]

    def gpgsm(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*base, *args], input=stdin, capture_output=True, env=env, timeout=60, check=False
        )

    try:
        run = gpgsm("--import", str(path))
        assert run.returncode == 0, run.stderr
        listed = gpgsm("--with-colons", "--list-keys", "carol@example.org")
        validated = gpgsm("--with-validation", "--list-keys", "carol@example.org")
        encrypted = gpgsm("--encrypt", "-r", "carol@example.org", stdin=b"hello carol\n")
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True, check=False)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.decode().splitlines()
    uids = [line.split(":")[9] for line in lines if line.startswith("uid:")]
    assert "<carol@example.org>" in uids
    fprs = [line.split(":")[9] for line in lines if line.startswith("fpr:")]
    assert cert.fingerprint(hashes.SHA1()).hex().upper() in fprs  # gpgsm's own id, not ours
    assert b"[certificate is good]" in validated.stdout, validated.stdout + validated.stderr
    assert encrypted.returncode == 0, encrypted.stderr
    if OPENSSL is None:
        return
    (tmp_path / "enc.der").write_bytes(encrypted.stdout)
    key = tmp_path / "gw.key"
    key.write_bytes(key_pem(gw_priv))
    dec = openssl("cms", "-decrypt", "-inform", "DER", "-in", tmp_path / "enc.der",
                  "-inkey", key)  # fmt: skip
    assert dec.returncode == 0, dec.stderr
    assert dec.stdout == "hello carol\n"


# Verification failure reasons ----------------------------------------------------------


def reasons_of(result: kc.VerificationResult) -> str:
    assert not result.ok
    assert result.reasons
    return " | ".join(result.reasons)


def test_result_cannot_be_truth_tested(ca: kc.DirectoryCA, gw: kc.GatewayKey) -> None:
    result = kc.verify_container(
        issue(ca, gw), [ca.certificate], "alice@example.org", Purpose.ENCRYPT, NOW
    )
    assert result.ok and result.reasons == ()
    with pytest.raises(TypeError):
        bool(result)


def test_wrong_anchor(ca: kc.DirectoryCA, gw: kc.GatewayKey) -> None:
    cert = issue(ca, gw)
    other = kc.DirectoryCA.generate()
    text = reasons_of(
        kc.verify_container(cert, [other.certificate], "alice@example.org", Purpose.ENCRYPT, NOW)
    )
    assert "signature does not verify" in text  # same CA name, different key
    renamed = kc.DirectoryCA.generate(common_name="another CA")
    text = reasons_of(
        kc.verify_container(cert, [renamed.certificate], "alice@example.org", Purpose.ENCRYPT, NOW)
    )
    assert "not issued by a trusted directory CA" in text
    assert reasons_of(kc.verify_container(cert, [], "alice@example.org", Purpose.ENCRYPT, NOW))
    # the right anchor among others still works
    assert kc.verify_container(
        cert, [renamed.certificate, ca.certificate], "alice@example.org", Purpose.ENCRYPT, NOW
    ).ok
    # a rotated CA under the same name pinned next to the current one (old one first)
    assert kc.verify_container(
        cert, [other.certificate, ca.certificate], "alice@example.org", Purpose.ENCRYPT, NOW
    ).ok


def test_expired_and_not_yet_valid(gw: kc.GatewayKey) -> None:
    # A CA of its own, made now: the module's CA may be older than its NOW by more than the
    # minute the "4 minutes slow" check below allows (the anchor's notBefore is its
    # creation minus the 5-minute skew), when other modules ran in between.
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ca = kc.DirectoryCA.generate(directory_url=URL)
    request = kc.ContainerRequest(parse_address("alice@example.org"), Purpose.ENCRYPT, gw,
                                  lifetime=dt.timedelta(minutes=10))
    cert = ca.issue(request, now=t0)
    later = t0 + dt.timedelta(minutes=10, seconds=1)
    assert "expired" in reasons_of(
        kc.verify_container(cert, [ca.certificate], "alice@example.org", Purpose.ENCRYPT, later)
    )
    assert kc.verify_container(
        cert, [ca.certificate], "alice@example.org", Purpose.ENCRYPT, t0 + dt.timedelta(minutes=10)
    ).ok
    earlier = t0 - dt.timedelta(minutes=6)
    assert "not valid before" in reasons_of(
        kc.verify_container(cert, [ca.certificate], "alice@example.org", Purpose.ENCRYPT, earlier)
    )
    # the 5-minute skew is real: a clock 4 minutes slow still accepts it
    assert kc.verify_container(
        cert, [ca.certificate], "alice@example.org", Purpose.ENCRYPT, t0 - dt.timedelta(minutes=4)
    ).ok


def test_case_matching_never_joins_two_mailboxes(ca: kc.DirectoryCA, gw: kc.GatewayKey) -> None:
    """Letters differ in case only are one mailbox; full Unicode case folding (str.casefold,
    Address.key) also joins letters that are not case pairs: the long s and `s`, the `fi`
    ligature and `fi`, `ß` and `ss`. A certificate for one such mailbox must not pass for
    the other (a signer of `ſam@` would be taken for `sam@`)."""
    for written, other in (("ſam@example.org", "sam@example.org"),
                           ("sam@example.org", "ſam@example.org"),
                           ("ﬁle@example.org", "file@example.org"),
                           ("straße@example.org", "strasse@example.org")):
        cert = issue(ca, gw, written)
        assert "not for" in reasons_of(
            kc.verify_container(cert, [ca.certificate], other, Purpose.ENCRYPT, NOW))
    cert = issue(ca, gw, "Jörg@example.org")
    assert kc.verify_container(cert, [ca.certificate], "jÖRG@example.org", Purpose.ENCRYPT,
                               NOW).ok


def test_wrong_address(ca: kc.DirectoryCA, gw: kc.GatewayKey) -> None:
    cert = issue(ca, gw, "alice@example.org")
    for wrong in ("bob@example.org", "alice@example.com", "alicia@example.org"):
        text = reasons_of(kc.verify_container(cert, [ca.certificate], wrong, Purpose.ENCRYPT, NOW))
        assert "not for" in text
    assert "invalid" in reasons_of(
        kc.verify_container(cert, [ca.certificate], "not an address", Purpose.ENCRYPT, NOW)
    )
    # an unencodable address is the address's fault, not the certificate's
    text = reasons_of(
        kc.verify_container(cert, [ca.certificate], "\udcff@example.org", Purpose.ENCRYPT, NOW)
    )
    assert text.startswith("invalid address") and "malformed certificate" not in text
    # the domain and the local part match case-insensitively (the local part folded, as
    # the directory keys its containers); a parsed Address works as well as a string
    for right in ("alice@EXAMPLE.org", parse_address("alice@Example.Org"), "Alice@example.org",
                  "ALICE@example.ORG"):
        assert kc.verify_container(cert, [ca.certificate], right, Purpose.ENCRYPT, NOW).ok


def test_wrong_purpose(ca: kc.DirectoryCA, gw: kc.GatewayKey) -> None:
    enc = issue(ca, gw)
    text = reasons_of(
        kc.verify_container(enc, [ca.certificate], "alice@example.org", Purpose.SIGN, NOW)
    )
    assert "digitalSignature" in text and "proxy-encryption" in text
    sig = issue(ca, gw, purpose=Purpose.SIGN)
    text = reasons_of(
        kc.verify_container(sig, [ca.certificate], "alice@example.org", Purpose.ENCRYPT, NOW)
    )
    assert "keyEncipherment" in text
    # even when the caller accepts both roles, the role must fit the purpose
    text = reasons_of(
        kc.verify_container(
            sig,
            [ca.certificate],
            "alice@example.org",
            Purpose.ENCRYPT,
            NOW,
            expected_roles=[Role.PROXY_ENCRYPTION, Role.PROXY_SIGNING],
        )
    )
    assert "does not fit purpose encrypt" in text


def ca_private_key(ca: kc.DirectoryCA) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(ca.key_pem(), None)
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return key


def hand_built(
    ca: kc.DirectoryCA,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    *,
    keypost_role: bool,
    address: str = "alice@example.org",
) -> x509.Certificate:
    """A container-like certificate built without DirectoryCA.issue."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(address)]), critical=False)
        .add_extension(
            x509.KeyUsage(False, False, True, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
    )
    if keypost_role:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(
                OID_KEYPOST_CONTAINER,
                bytes.fromhex("30270a01000420") + bytes(32) + bytes.fromhex("1600"),
            ),
            critical=False,
        )
    return builder.sign(ca_private_key(ca), hashes.SHA256())


def resign_with_sha1(cert: x509.Certificate, key: rsa.RSAPrivateKey) -> x509.Certificate:
    """Turn a sha256WithRSAEncryption certificate into a sha1WithRSAEncryption one by hand:
    cryptography refuses to sign with SHA-1, so swap the algorithm OIDs and re-sign."""
    sha256_rsa = bytes.fromhex("06092a864886f70d01010b")
    sha1_rsa = bytes.fromhex("06092a864886f70d010105")
    tbs = cert.tbs_certificate_bytes
    assert tbs.count(sha256_rsa) == 1
    tbs = tbs.replace(sha256_rsa, sha1_rsa)
    signature = key.sign(tbs, padding.PKCS1v15(), hashes.SHA1())
    algorithm = der_tlv(0x30, sha1_rsa + b"\x05\x00")
    der = der_tlv(0x30, tbs + algorithm + der_tlv(0x03, b"\x00" + signature))
    return x509.load_der_x509_certificate(der)


def test_sha1_signed_container_refused(rsa_ca: kc.DirectoryCA, gw: kc.GatewayKey) -> None:
    key = ca_private_key(rsa_ca)
    assert isinstance(key, rsa.RSAPrivateKey)
    good = hand_built(rsa_ca, gw.public_key, keypost_role=True)
    assert kc.verify_container(
        good, [rsa_ca.certificate], "alice@example.org", Purpose.ENCRYPT, NOW
    ).ok
    sha1 = resign_with_sha1(good, key)
    assert isinstance(sha1.signature_hash_algorithm, hashes.SHA1)
    text = reasons_of(
        kc.verify_container(sha1, [rsa_ca.certificate], "alice@example.org", Purpose.ENCRYPT, NOW)
    )
    assert "SHA1" in text
    assert "signature does not verify" not in text  # the signature itself is genuine


def test_signature_algorithm_must_match_the_tbs_one(
    ca: kc.DirectoryCA, gw: kc.GatewayKey
) -> None:
    """RFC 5280 4.1.1.2: signatureAlgorithm MUST be the algorithm in the TBSCertificate
    (openssl verify: "signature algorithm mismatch"). The outer one was the only one read."""
    good = issue(ca, gw)
    ecdsa_sha256 = der_tlv(0x30, der_oid("1.2.840.10045.4.3.2"))
    ecdsa_sha384 = der_tlv(0x30, der_oid("1.2.840.10045.4.3.3"))
    content = der_single(good.tbs_certificate_bytes, 0x30, "TBSCertificate")
    assert content.count(ecdsa_sha256) == 1
    tbs = der_tlv(0x30, content.replace(ecdsa_sha256, ecdsa_sha384))
    key = ca_private_key(ca)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    mixed = x509.load_der_x509_certificate(
        der_tlv(0x30, tbs + ecdsa_sha256 + der_tlv(0x03, b"\x00" + signature))
    )
    text = reasons_of(
        kc.verify_container(mixed, [ca.certificate], "alice@example.org", Purpose.ENCRYPT, NOW)
    )
    assert "signature algorithm" in text and "does not match" in text


def test_rsa_1024_container_refused(ca: kc.DirectoryCA) -> None:
    weak = rsa.generate_private_key(65537, 1024).public_key()
    cert = hand_built(ca, weak, keypost_role=True)
    text = reasons_of(
        kc.verify_container(cert, [ca.certificate], "alice@example.org", Purpose.ENCRYPT, NOW)
    )
    assert "RSA-1024" in text
    with pytest.raises(ContainerError, match="RSA-1024"):
        issue(ca, kc.GatewayKey(weak))


def test_ec_key_below_224_bits_refused(ca: kc.DirectoryCA) -> None:
    """P-192 (96-bit security) is weaker than the RSA-2048 floor (112 bits) and no S/MIME
    profile allows it; any EC curve passed, while RSA-1024 was refused."""
    weak = ec.generate_private_key(ec.SECP192R1()).public_key()
    text = reasons_of(kc.verify_container(
        hand_built(ca, weak, keypost_role=True), [ca.certificate], "alice@example.org",
        Purpose.ENCRYPT, NOW,
    ))
    assert "certificate key is EC secp192r1; at least 224 bits are required" in text
    with pytest.raises(ContainerError, match="secp192r1"):
        issue(ca, kc.GatewayKey(weak))
    strong = ec.generate_private_key(ec.SECP224R1()).public_key()
    assert "224 bits" not in " ".join(kc.verify_container(
        hand_built(ca, strong, keypost_role=True), [ca.certificate], "alice@example.org",
        Purpose.ENCRYPT, NOW,
    ).reasons)


def with_spki(cert: x509.Certificate, spki: bytes, ca: kc.DirectoryCA) -> x509.Certificate:
    """`cert` with its SubjectPublicKeyInfo replaced by `spki` and signed again by `ca`
    (cryptography's builder takes only keys it can load)."""
    key = ca_private_key(ca)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    old = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    content = der_single(cert.tbs_certificate_bytes, 0x30, "TBSCertificate")
    assert content.count(old) == 1
    tbs = der_tlv(0x30, content.replace(old, spki))
    outer = der_elements(der_single(cert.public_bytes(serialization.Encoding.DER), 0x30, "cert"))
    algorithm = der_tlv(outer[1][0], outer[1][1])
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return x509.load_der_x509_certificate(
        der_tlv(0x30, tbs + algorithm + der_tlv(0x03, b"\x00" + signature))
    )


def spki_der(algorithm_oid: str, parameters: bytes, key: bytes) -> bytes:
    algorithm = der_tlv(0x30, der_oid(algorithm_oid) + parameters)
    return der_tlv(0x30, algorithm + der_tlv(0x03, b"\x00" + key))


P256 = der_oid("1.2.840.10045.3.1.7")
NULL = b"\x05\x00"


@pytest.mark.parametrize(
    ("spki", "expected"),
    [
        # GOST R 34.10-2012: well-formed, an algorithm cryptography does not implement
        (spki_der("1.2.643.7.1.1.1.1", der_tlv(0x30, der_oid("1.2.643.7.1.2.1.1.1")),
                  der_tlv(0x04, bytes(range(64)))),
         "certificate key uses an unsupported algorithm (Unknown key type: 1.2.643.7.1.1.1.1)"),
        (spki_der("1.2.840.10045.2.1", der_oid("1.2.3.4.5"), b"\x04" + bytes(range(64))),
         "certificate key uses an unsupported algorithm (Curve 1.2.3.4.5 is not supported)"),
        # a point that is not on P-256, an RSA exponent of 1, bytes that are no RSAPublicKey
        (spki_der("1.2.840.10045.2.1", P256, b"\x04" + bytes(range(64))),
         "malformed certificate: certificate public key does not decode (Invalid key)"),
        (spki_der("1.2.840.113549.1.1.1", NULL, der_tlv(
            0x30, der_tlv(0x02, b"\x00" + b"\xc3" * 256) + der_tlv(0x02, b"\x01"))),
         "malformed certificate: certificate public key does not decode (e must be >= 3"),
        (spki_der("1.2.840.113549.1.1.1", NULL, b"\x01\x02"),
         "malformed certificate: certificate public key does not decode (Could not deserial"),
    ],
    ids=["gost", "unknown curve", "off-curve point", "rsa e=1", "rsa garbage"],
)
def test_key_reasons_tell_unsupported_from_malformed(
    ca: kc.DirectoryCA, gw: kc.GatewayKey, spki: bytes, expected: str
) -> None:
    """A key cryptography cannot load was reported as "malformed certificate: <its
    exception>", even for a well-formed certificate with an algorithm it does not
    implement; and it hid every other reason. The certificate is still refused."""
    cert = with_spki(hand_built(ca, gw.public_key, keypost_role=True), spki, ca)
    result = kc.verify_container(cert, [ca.certificate], "alice@example.org", Purpose.ENCRYPT, NOW)
    assert not result.ok
    assert [r for r in result.reasons if r.startswith(expected)] == [result.reasons[0]]
    assert len(result.reasons) == 1  # the CA's signature and the rest are fine
    assert result.info is not None and result.info.key_description.endswith("key")
    # the other reasons are no longer hidden behind the key's
    other = kc.verify_container(cert, [ca.certificate], "bob@example.org", Purpose.ENCRYPT, NOW)
    assert not other.ok and any("not for bob@example.org" in r for r in other.reasons)


def test_missing_role_extension(ca: kc.DirectoryCA, gw: kc.GatewayKey) -> None:
    cert = hand_built(ca, gw.public_key, keypost_role=False)
    text = reasons_of(
        kc.verify_container(cert, [ca.certificate], "alice@example.org", Purpose.ENCRYPT, NOW)
    )
    assert "no keypost role extension" in text
    # accepted as a genuine certificate only when the caller asks for that role
    genuine = kc.verify_container(
        cert,
        [ca.certificate],
        "alice@example.org",
        Purpose.ENCRYPT,
        NOW,
        expected_roles=[Role.GENUINE, Role.PROXY_ENCRYPTION],
    )
    assert genuine.ok, genuine.reasons
    assert genuine.info is not None and genuine.info.role is None


def test_malformed_keypost_extension_is_a_reason(ca: kc.DirectoryCA, gw: kc.GatewayKey) -> None:
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.certificate.subject)
        .public_key(gw.public_key)
        .serial_number(7)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(hours=1))
        .add_extension(
            x509.UnrecognizedExtension(OID_KEYPOST_CONTAINER, b"\x30\x05\x0a\x01"), critical=False
        )
        .sign(ca_private_key(ca), hashes.SHA256())
    )
    result = kc.verify_container(cert, [ca.certificate], "alice@example.org", Purpose.ENCRYPT, NOW)
    assert "truncated" in reasons_of(result)
    with pytest.raises(ContainerError):
        kc.describe(cert)


def genuine_cert(
    issuer: x509.Certificate,
    issuer_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    address: str,
    *,
    san: bool = True,
    extra: x509.ExtensionType | None = None,
    critical: bool = False,
) -> x509.Certificate:
    key = rsa.generate_private_key(65537, 2048)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.EMAIL_ADDRESS, address)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=365))
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(address)]), critical=False
        )
    if extra is not None:
        builder = builder.add_extension(extra, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def test_genuine_certificate_against_given_roots() -> None:
    public_ca = kc.DirectoryCA.generate(common_name="Some Public S/MIME CA")
    key = ca_private_key(public_ca)
    cert = genuine_cert(public_ca.certificate, key, "dave@example.net")
    roles = [Role.GENUINE]
    ok = kc.verify_container(
        cert,
        [public_ca.certificate],
        "dave@example.net",
        Purpose.ENCRYPT,
        NOW,
        expected_roles=roles,
    )
    assert ok.ok, ok.reasons
    assert ok.info is not None and ok.info.addresses == ("dave@example.net",)
    assert not kc.verify_container(
        cert,
        [kc.DirectoryCA.generate().certificate],
        "dave@example.net",
        Purpose.ENCRYPT,
        NOW,
        expected_roles=roles,
    ).ok
    # no SAN: the subject's emailAddress names the address (RFC 8550 legacy)
    old = genuine_cert(public_ca.certificate, key, "erin@example.net", san=False)
    assert kc.describe(old).addresses == ("erin@example.net",)
    assert kc.verify_container(
        old, [public_ca.certificate], "erin@example.net", Purpose.SIGN, NOW, expected_roles=roles
    ).ok
    # by default only keypost containers are accepted
    assert "no keypost role" in reasons_of(
        kc.verify_container(cert, [public_ca.certificate], "dave@example.net", Purpose.ENCRYPT, NOW)
    )


def test_unrecognised_critical_extension_is_refused(ca: kc.DirectoryCA) -> None:
    """RFC 5280 4.2: a relying party must reject a critical extension it does not process;
    the same extension non-critical is ignored (and the container's own critical keyUsage
    and basicConstraints are understood)."""
    oid = x509.ObjectIdentifier("1.3.6.1.4.1.99999.1")
    for critical in (True, False):
        cert = genuine_cert(ca.certificate, ca_private_key(ca), "dave@example.net",
                            extra=x509.UnrecognizedExtension(oid, b"\x05\x00"),
                            critical=critical)  # fmt: skip
        result = kc.verify_container(
            cert, [ca.certificate], "dave@example.net", Purpose.ENCRYPT, NOW, [Role.GENUINE]
        )
        if critical:
            assert f"unrecognised critical extension {oid.dotted_string}" in reasons_of(result)
        else:
            assert result.ok, result.reasons


def test_a_malformed_anchor_spoils_neither_the_others_nor_the_reason(
    ca: kc.DirectoryCA, gw: kc.GatewayKey
) -> None:
    """An anchor cryptography cannot read (here a duplicate extension) raised while its key
    identifier was compared: with it first in the list every container of another anchor
    was "malformed certificate", and alone it was the container that was blamed."""
    der = kc.to_der(kc.DirectoryCA.generate(common_name="broken CA").certificate)
    key_usage, basic_constraints = der_oid("2.5.29.15"), der_oid("2.5.29.19")
    assert der.count(key_usage) == 1
    broken = x509.load_der_x509_certificate(der.replace(key_usage, basic_constraints))
    cert = issue(ca, gw)
    assert kc.verify_container(
        cert, [broken, ca.certificate], "alice@example.org", Purpose.ENCRYPT, NOW
    ).ok
    alone = kc.verify_container(cert, [broken], "alice@example.org", Purpose.ENCRYPT, NOW)
    text = reasons_of(alone)
    assert "malformed certificate" not in text and "not issued by a trusted" in text
    # a malformed anchor that does name the container's issuer is what is malformed
    named = x509.load_der_x509_certificate(
        kc.to_der(ca.certificate).replace(key_usage, basic_constraints)
    )
    text = reasons_of(
        kc.verify_container(cert, [named], "alice@example.org", Purpose.ENCRYPT, NOW)
    )
    assert text.startswith("malformed trust anchor: Duplicate 2.5.29.19"), text


def test_weak_or_expired_anchor(gw: kc.GatewayKey) -> None:
    short = kc.DirectoryCA.generate(validity=dt.timedelta(days=2))
    cert = short.issue(kc.ContainerRequest(parse_address("a@b.example"), Purpose.ENCRYPT, gw))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    text = reasons_of(
        kc.verify_container(cert, [short.certificate], "a@b.example", Purpose.ENCRYPT, later)
    )
    assert "trust anchor is outside its validity" in text


# Keys, loading, serialisation ---------------------------------------------------------


def test_gateway_key_from_pem_forms(gw_priv: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    spki_der = gw_priv.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    spki_pem = gw_priv.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for data in (spki_pem, spki_der):
        key = kc.GatewayKey.from_pem(data)
        assert key.certificate is None
        assert key.fingerprint == hashlib.sha256(spki_der).hexdigest()
    cert = self_signed_gateway_cert(gw_priv)
    for data in (kc.to_pem(cert), kc.to_der(cert)):
        key = kc.GatewayKey.from_pem(data, [Capability.AES128_CBC])
        assert key.certificate == cert
        assert key.capabilities == (Capability.AES128_CBC,)
        assert key.fingerprint == kc.sha256_fingerprint(cert).replace(":", "").lower()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: rsa.generate_private_key(65537, 1024).public_key(), "RSA-1024"),
        (lambda: ed25519.Ed25519PrivateKey.generate().public_key(), "not accepted"),
    ],
)
def test_gateway_key_refused(make: object, message: str) -> None:
    pub = make()  # type: ignore[operator]
    pem = pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ContainerError, match=message):
        kc.GatewayKey.from_pem(pem)


def test_gateway_key_restricted_to_pss_is_refused(
    gw_priv: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    """An id-RSASSA-PSS key loads as a plain RSA key in cryptography; issued as is, the
    container would call it rsaEncryption and use it for key transport (RFC 4055 1.2)."""
    plain = gw_priv.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (algorithm, _), (_, bits) = der_elements(der_single(plain, 0x30, "SPKI"))
    assert algorithm == 0x30
    pss = der_tlv(0x30, der_tlv(0x30, der_oid("1.2.840.113549.1.1.10")) + der_tlv(0x03, bits))
    assert serialization.load_der_public_key(pss) == gw_priv.public_key()  # same numbers
    pss_pem = b"".join((b"-----BEGIN PUBLIC KEY-----\n",
                        base64.encodebytes(pss), b"-----END PUBLIC KEY-----\n"))  # fmt: skip
    for data in (pss, pss_pem):
        with pytest.raises(ContainerError, match="RSASSA-PSS"):
            kc.GatewayKey.from_pem(data)
    assert kc.GatewayKey.from_pem(plain).public_key == gw_priv.public_key()
    if OPENSSL is None:
        return
    res = openssl("req", "-x509", "-newkey", "rsa-pss", "-pkeyopt", "rsa_keygen_bits:2048",
                  "-nodes", "-keyout", tmp_path / "pss.key", "-subj", "/CN=pss gateway",
                  "-days", "2", "-out", tmp_path / "pss.pem")  # fmt: skip
    assert res.returncode == 0, res.stderr
    with pytest.raises(ContainerError, match="RSASSA-PSS"):
        kc.GatewayKey.from_pem((tmp_path / "pss.pem").read_bytes())
    # nor may a directory CA with such a key sign containers with PKCS#1 v1.5
    with pytest.raises(ContainerError, match="RSASSA-PSS"):
        kc.DirectoryCA.load(
            (tmp_path / "pss.pem").read_bytes(), (tmp_path / "pss.key").read_bytes()
        )


def test_gateway_key_garbage(gw_priv: rsa.RSAPrivateKey) -> None:
    priv_pem = key_pem(gw_priv)
    for data in (priv_pem, b"hello", b"", b"-----BEGIN CERTIFICATE-----\nAAAA\n"):
        with pytest.raises(ContainerError):
            kc.GatewayKey.from_pem(data)


def test_ca_load_roundtrip(rsa_ca: kc.DirectoryCA, ca: kc.DirectoryCA, gw: kc.GatewayKey) -> None:
    cert_pem = kc.to_pem(rsa_ca.certificate)
    locked = rsa_ca.key_pem(b"s3cret")
    assert b"ENCRYPTED" in locked
    loaded = kc.DirectoryCA.load(cert_pem, locked, b"s3cret", directory_url=URL)
    assert loaded.certificate == rsa_ca.certificate
    cert = loaded.issue(kc.ContainerRequest(parse_address("a@b.example"), Purpose.ENCRYPT, gw))
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert kc.verify_container(cert, [rsa_ca.certificate], "a@b.example", Purpose.ENCRYPT).ok
    with pytest.raises(ContainerError, match="password") as err:
        kc.DirectoryCA.load(cert_pem, locked, b"wrong")
    assert "wrong" not in str(err.value).replace("wrong password", "")
    with pytest.raises(ContainerError, match="does not belong"):
        kc.DirectoryCA.load(cert_pem, ca.key_pem())
    leaf = kc.to_pem(issue(ca, gw))
    with pytest.raises(ContainerError):
        kc.DirectoryCA.load(leaf, ca.key_pem())
    with pytest.raises(ContainerError):
        kc.DirectoryCA.load(b"nonsense", ca.key_pem())


def test_ca_profile(rsa_ca: kc.DirectoryCA) -> None:
    cert = rsa_ca.certificate
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 3072
    with pytest.raises(ContainerError):
        kc.DirectoryCA.generate("dsa-1024")  # type: ignore[arg-type]


def test_load_certificates_forms(ca: kc.DirectoryCA, gw: kc.GatewayKey) -> None:
    a, b = issue(ca, gw), ca.certificate
    assert kc.load_certificates(kc.to_pem(a) + kc.to_pem(b)) == [a, b]
    assert kc.load_certificates(kc.to_der(a)) == [a]
    # PKCS#7 holds a DER SET OF certificates: the order is the encoding's, not ours
    assert sorted(kc.load_certificates(kc.pkcs7_bundle([a, b])), key=kc.to_der) == sorted(
        [a, b], key=kc.to_der
    )
    for bad in (b"", b"junk", b"-----BEGIN PUBLIC KEY-----\nAA\n-----END PUBLIC KEY-----\n"):
        with pytest.raises(ContainerError):
            kc.load_certificates(bad)
    with pytest.raises(ContainerError):
        kc.pkcs7_bundle([])


def test_sha256_fingerprint_format(ca: kc.DirectoryCA) -> None:
    fp = kc.sha256_fingerprint(ca.certificate)
    parts = fp.split(":")
    assert len(parts) == 32 and all(len(p) == 2 and p == p.upper() for p in parts)
    assert bytes.fromhex("".join(parts)) == hashlib.sha256(kc.to_der(ca.certificate)).digest()


@pytest.fixture(scope="module")
def container_der(ca: kc.DirectoryCA, gw: kc.GatewayKey) -> bytes:
    return kc.to_der(issue(ca, gw, "jörg@bücher.example"))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_mutated_containers_never_raise(
    ca: kc.DirectoryCA, container_der: bytes, data: st.DataObject
) -> None:
    """Whatever bytes a peer hands over: a parseable certificate gets reasons, not a crash."""
    der = bytearray(container_der)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(der) - 1))
        der[pos] = data.draw(st.integers(0, 255))
    try:
        cert = x509.load_der_x509_certificate(bytes(der))
    except PARSE_ERRORS:
        return
    result = kc.verify_container(
        cert, [ca.certificate], "jörg@bücher.example", Purpose.ENCRYPT, NOW
    )
    original = x509.load_der_x509_certificate(container_der)
    if cert.tbs_certificate_bytes != original.tbs_certificate_bytes:
        # what the signature covers changed: it must not verify (changes outside it, e.g.
        # the unused-bits octet of the signature BIT STRING, leave the signed data intact)
        assert not result.ok and result.reasons
    with contextlib.suppress(ContainerError):
        kc.describe(cert)


# What verify_container remembers between calls -------------------------------------------


def test_remembered_parts_do_not_carry_over(ca: kc.DirectoryCA, gw: kc.GatewayKey) -> None:
    """verify_container keeps what depends on a trust anchor alone, decoded extension values
    and parsed addresses between calls: each certificate is still judged on its own."""

    def check(cert: x509.Certificate, anchor: x509.Certificate = ca.certificate,
              address: str = "alice@example.org", at: dt.datetime = NOW) -> kc.VerificationResult:
        return kc.verify_container(cert, [anchor], address, Purpose.ENCRYPT, at)

    good = issue(ca, gw)
    assert check(good).ok
    # Same issuer name, another key: refused after the genuine one was accepted.
    impostor = kc.DirectoryCA.generate(directory_url=URL)
    forged = issue(impostor, gw)
    assert forged.issuer == good.issuer
    assert "signature does not verify" in reasons_of(check(forged))
    assert check(forged, impostor.certificate).ok  # the forgery itself is well-formed
    assert "signature does not verify" in reasons_of(check(good, impostor.certificate))
    # Another gateway: its own fingerprint, not the one decoded for the first gateway.
    other_gw = kc.GatewayKey(rsa.generate_private_key(65537, 2048).public_key())
    other = check(issue(ca, other_gw))
    assert other.ok and other.info is not None
    assert other.info.gateway_fingerprint == other_gw.fingerprint != gw.fingerprint
    # Wrong keyUsage (a signing container) and wrong extendedKeyUsage.
    assert "keyEncipherment" in reasons_of(check(issue(ca, gw, purpose=Purpose.SIGN)))
    key = ca_private_key(ca)
    no_smime = (
        x509.CertificateBuilder()
        .subject_name(good.subject)
        .issuer_name(good.issuer)
        .public_key(gw.public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(good.not_valid_before_utc)
        .not_valid_after(good.not_valid_after_utc)
    )
    for ext in good.extensions:
        value = ext.value
        if isinstance(value, x509.ExtendedKeyUsage):
            value = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
        no_smime = no_smime.add_extension(value, ext.critical)
    assert "lacks emailProtection" in reasons_of(check(no_smime.sign(key, hashes.SHA256())))
    # Expired and another address, for the very certificate accepted above.
    assert "expired" in reasons_of(check(good, at=NOW + dt.timedelta(hours=25)))
    assert "not for bob@example.org" in reasons_of(check(good, address="bob@example.org"))
    assert check(good).ok
    # An anchor that is not a CA, under the good anchor's name and key: the anchor's own
    # problems are remembered per anchor, not per name.
    not_ca = (
        x509.CertificateBuilder()
        .subject_name(ca.certificate.subject)
        .issuer_name(ca.certificate.subject)
        .public_key(ca.certificate.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ca.certificate.not_valid_before_utc)
        .not_valid_after(ca.certificate.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    assert "trust anchor is not a CA certificate" in reasons_of(check(good, not_ca))
    assert check(good).ok


@pytest.mark.parametrize(
    "url",
    ["ldap://dir.example/", "ldaps://dir.example:636", "LDAPS://Dir.Example/dc=keypost",
     "http://127.0.0.1:8080/", "https://[2001:db8::1]:8443/v1"],
)
def test_directory_url_accepted(ca: kc.DirectoryCA, url: str) -> None:
    assert kc.DirectoryCA(ca.certificate, ca_private_key(ca), url).directory_url == url


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("not a url", "invalid directory URL"),
        ("dir.example", "invalid directory URL"),  # no scheme
        ("ftp://dir.example/", "invalid directory URL"),
        ("mailto:keys@dir.example", "invalid directory URL"),
        ("ldap://", "invalid directory URL"),  # no host
        ("ldap:///dc=keypost", "invalid directory URL"),
        ("https://dir.example:99999/", "port is not a number"),
        ("https://dir.example:https/", "invalid directory URL"),
        ("https://dir.example/a b", "invalid directory URL"),
        ("https://dir.example/\n", "invalid directory URL"),
        ("https://dïr.example/", "invalid directory URL"),  # IA5String: ASCII only
        ("https://admin:s3cret@dir.example/", "user name or password"),
    ],
)
def test_directory_url_refused(ca: kc.DirectoryCA, url: str, needle: str) -> None:
    """The URL is written into every container's keypost extension: one no client could
    use is refused when the CA is set up, not published container after container."""
    with pytest.raises(ContainerError, match=needle) as err:
        kc.DirectoryCA(ca.certificate, ca_private_key(ca), url)
    assert "s3cret" not in str(err.value)


def test_directory_url_password_is_never_echoed(ca: kc.DirectoryCA) -> None:
    for url in ("https://admin:s3cret@dir.example:99999/", "ldap://s3cret@/",
                "https://u:s3cret@[::1/", "ldaps://admin:s3cret", "ldaps://admin:s3cret/"):
        with pytest.raises(ContainerError) as err:
            kc.DirectoryCA(ca.certificate, ca_private_key(ca), url)
        assert "s3cret" not in str(err.value), url
