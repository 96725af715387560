"""keypost.core.derived: per-address derived EC keys. The directory's public derivation
(our own affine point addition) must land on the point cryptography computes from the
gateway's derived private key, on all three curves and for many addresses."""

from __future__ import annotations

import hmac

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_smime_pki import directory_ca

from keypost.core import derived, smime
from keypost.core.address import parse_address
from keypost.core.containers import ContainerRequest, GatewayKey, verify_container
from keypost.core.errors import ContainerError, DecryptError
from keypost.core.types import Purpose

CURVES = {"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1(), "secp521r1": ec.SECP521R1()}


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962,
                            serialization.PublicFormat.UncompressedPoint)


@pytest.mark.parametrize("name", sorted(CURVES))
def test_curve_constants_are_those_of_cryptography(name: str) -> None:
    """n: n-1 is the last scalar cryptography takes, n is refused; p: a point of the curve
    satisfies y^2 = x^3 - 3x + b mod p for two points with one b (b is never written)."""
    p, n = derived._CURVES[name]
    curve = CURVES[name]
    g = ec.derive_private_key(1, curve).public_key().public_numbers()
    minus_g = ec.derive_private_key(n - 1, curve).public_key().public_numbers()
    assert (minus_g.x, minus_g.y) == (g.x, p - g.y)
    with pytest.raises(ValueError):
        ec.derive_private_key(n, curve)
    two = ec.derive_private_key(2, curve).public_key().public_numbers()
    b1 = (g.y * g.y - g.x ** 3 + 3 * g.x) % p
    b2 = (two.y * two.y - two.x ** 3 + 3 * two.x) % p
    assert b1 == b2


@pytest.mark.parametrize("name", sorted(CURVES))
def test_derived_private_matches_derived_public(name: str) -> None:
    gateway = ec.generate_private_key(CURVES[name])
    seen = set()
    for i in range(40):
        address = parse_address(f"user{i}@example.org")
        public = derived.derived_public_key(gateway.public_key(), address)
        private = derived.derived_private_key(gateway, address)
        assert _point(private.public_key()) == _point(public)
        # d_A = d + t_A, cross-checked with cryptography's own scalar multiplication
        _, n = derived._CURVES[name]
        t = derived.tweak(gateway.public_key(), address)
        assert 0 < t < n
        assert private.private_numbers().private_value == (
            gateway.private_numbers().private_value + t) % n
        seen.add(_point(public))
    assert len(seen) == 40
    assert _point(gateway.public_key()) not in seen


def test_doubling_branch() -> None:
    """P == t_A*G takes the doubling formula: a gateway key whose d equals t_A."""
    curve = ec.SECP256R1()
    address = parse_address("bob@example.org")
    # t_A depends on P, so pick d, compute t, and check _add on (T, T) against 2T directly
    t = derived.tweak(ec.generate_private_key(curve).public_key(), address)
    tg = ec.derive_private_key(t, curve).public_key().public_numbers()
    two_t = ec.derive_private_key(2 * t % derived._CURVES["secp256r1"][1], curve)
    total = derived._add(derived._CURVES["secp256r1"][0], (tg.x, tg.y), (tg.x, tg.y))
    n2 = two_t.public_key().public_numbers()
    assert total == (n2.x, n2.y)
    assert derived._add(derived._CURVES["secp256r1"][0], (tg.x, tg.y),
                        (tg.x, derived._CURVES["secp256r1"][0] - tg.y)) is None


def test_address_key_case_and_stable() -> None:
    """One key per mailbox as the directory keys it (Address.key), the same every time."""
    gateway = ec.generate_private_key(ec.SECP384R1()).public_key()
    a = derived.derived_public_key(gateway, parse_address("Bob@Example.org"))
    b = derived.derived_public_key(gateway, parse_address("bob@example.org"))
    c = derived.derived_public_key(gateway, parse_address("bob2@example.org"))
    assert _point(a) == _point(b) != _point(c)


def test_other_gateway_key_other_tweak() -> None:
    address = parse_address("bob@example.org")
    one = ec.generate_private_key(ec.SECP256R1()).public_key()
    two = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert derived.tweak(one, address) != derived.tweak(two, address)


def test_known_answer() -> None:
    """The derivation is a format (directory and gateway of different versions must agree):
    recomputed here with RFC 5869 HKDF written out with hmac, as the README states it."""
    key = ec.derive_private_key(0x1234567890ABCDEF, ec.SECP384R1()).public_key()
    spki = key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)
    label = b"keypost derived key v1"
    prk = hmac.new(b"\0" * 64, label + spki + b"bob@example.org", "sha512").digest()
    okm, block = b"", b""
    for i in range(1, 3):  # 48 + 16 = 64 bytes: one SHA-512 block would do; two for sure
        block = hmac.new(prk, block + label + bytes([i]), "sha512").digest()
        okm += block
    n = derived._CURVES["secp384r1"][1]
    expected = int.from_bytes(okm[:64], "big") % n
    assert derived.tweak(key, parse_address("BOB@example.org")) == expected


def test_refuses_other_curves_and_rsa() -> None:
    p224 = ec.generate_private_key(ec.SECP224R1())
    with pytest.raises(ContainerError, match="P-256, P-384 or P-521"):
        derived.derived_public_key(p224.public_key(), parse_address("a@b.example"))
    with pytest.raises(ContainerError, match="P-256, P-384 or P-521"):
        derived.derived_private_key(p224, parse_address("a@b.example"))


# --- containers and the S/MIME engine ------------------------------------------------

def _containers(gw: ec.EllipticCurvePrivateKey, *addresses: str) -> list[x509.Certificate]:
    gateway = GatewayKey(gw.public_key(), derived=True)
    ca = directory_ca()
    return [ca.issue(ContainerRequest(parse_address(a), Purpose.ENCRYPT, gateway))
            for a in addresses]


@pytest.mark.parametrize("name", sorted(CURVES))
def test_container_carries_derived_key_and_gateway_ski(name: str) -> None:
    gw = ec.generate_private_key(CURVES[name])
    bob, = _containers(gw, "bob@b.example")
    expected = derived.derived_public_key(gw.public_key(), parse_address("bob@b.example"))
    assert _point(bob.public_key()) == _point(expected)  # type: ignore[arg-type]
    ski = bob.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(gw.public_key())
    assert verify_container(bob, [directory_ca().certificate], "bob@b.example",
                            Purpose.ENCRYPT).ok
    # signing containers of a derived-keys gateway key carry the key itself
    signing = directory_ca().issue(ContainerRequest(
        parse_address("bob@b.example"), Purpose.SIGN, GatewayKey(gw.public_key(), derived=True)))
    assert _point(signing.public_key()) == _point(gw.public_key())  # type: ignore[arg-type]


def test_derived_gateway_key_must_be_ec() -> None:
    with pytest.raises(ContainerError, match="EC gateway key"):
        GatewayKey(ec.generate_private_key(ec.SECP224R1()).public_key(), derived=True)


def test_decryptor_names_the_keys_that_open() -> None:
    """Encrypted to bob's and carol's derived containers: of the keys of bob, mallory and
    carol, bob's and carol's open it (DecryptResult.opened_keys), mallory's alone does not,
    nor does the plain gateway key."""
    gw = ec.generate_private_key(ec.SECP256R1())
    bob, carol = _containers(gw, "bob@b.example", "carol@b.example")
    sealed = smime.encrypt_message(MESSAGE, [bob, carol])
    keys = [derived.derived_private_key(gw, parse_address(a))
            for a in ("bob@b.example", "mallory@b.example", "carol@b.example")]
    result = smime.Decryptor(keys).decrypt_message(sealed)
    assert b"meet at noon" in result.message
    assert result.opened_keys == frozenset({0, 2})
    with pytest.raises(DecryptError):
        smime.Decryptor([keys[1]]).decrypt_message(sealed)
    with pytest.raises(DecryptError):
        smime.Decryptor([gw]).decrypt_message(sealed)


MESSAGE = (b"From: alice@a.example\r\nTo: bob@b.example\r\nSubject: derived\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nmeet at noon\r\n")
