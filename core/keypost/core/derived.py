"""Per-address derived keys: an EC gateway key (d, P) tweaked once per mailbox address.

    t_A = OS2IP(HKDF-SHA-512(ikm = LABEL || DER SPKI of P || UTF-8 A.key(), no salt,
                             info = LABEL, L = byte length of the group order n + 16)) mod n
    P_A = P + t_A * G    (the directory: public values only)
    d_A = d + t_A mod n  (the gateway, which alone holds d)

An additive tweak, as BIP32's non-hardened derivation and key blinding use it: t_A is
public (anyone can compute it from P and the address), P_A is a point of the same curve,
and d_A * G = d*G + t_A*G = P_A. Knowing t_A and P_A tells nothing about d: recovering d
from P_A means recovering d_A, the discrete logarithm of P_A. A container for bob@ then
carries P_bob, and only d_bob opens what was encrypted to it: the gateway decrypts a
message for an envelope recipient with that recipient's derived key, so a ciphertext for
bob@ mailed to mallory@ stays shut (README, "Derived keys").

HKDF to 16 bytes past the order's length leaves a bias of at most 2^-128 after the
reduction (a plain SHA-256 would be shorter than P-384's and P-521's order). SPKI DER is
self-delimiting, so LABEL || SPKI || address cannot be read two ways.

Why arithmetic of our own: cryptography has no public point addition. t_A * G comes from
cryptography (`derive_private_key(t_A).public_key()`); adding P is done here in affine
coordinates over the NIST prime field, and the sum is checked by cryptography
(`from_encoded_point` refuses a point not on the curve). Only public values pass through
it (P, t_A, G), so it need not be constant-time. The gateway's side is one modular
addition of d and t_A (Python integers are not constant-time; it runs once per address
and key, on a value fixed per address, not per message) and cryptography's
`derive_private_key`.
"""

from __future__ import annotations

from hashlib import sha512

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keypost.core.address import Address
from keypost.core.errors import ContainerError

LABEL = b"keypost derived key v1"

# (field prime p, group order n); a = -3 on all three (FIPS 186-4 D.1.2), the only curve
# constant the addition formulas need. Checked against cryptography in the tests.
_CURVES: dict[str, tuple[int, int]] = {
    "secp256r1": (
        0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
        0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    ),
    "secp384r1": (
        int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFE"
            "FFFFFFFF0000000000000000FFFFFFFF", 16),
        int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
            "581A0DB248B0A77AECEC196ACCC52973", 16),
    ),
    "secp521r1": (
        2**521 - 1,
        int("01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
            "FA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409", 16),
    ),
}
CURVES = tuple(_CURVES)


def _params(curve: ec.EllipticCurve) -> tuple[int, int]:
    params = _CURVES.get(curve.name)
    if params is None:
        raise ContainerError(
            f"derived keys need an EC gateway key on P-256, P-384 or P-521, not {curve.name}")
    return params


def _spki(public: ec.EllipticCurvePublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def tweak(public: ec.EllipticCurvePublicKey, address: Address) -> int:
    """t_A for the gateway key `public` and `address` (by Address.key: the directory's one
    key per mailbox). In 1 .. n-1."""
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ContainerError("derived keys need an EC gateway key")
    _, n = _params(public.curve)
    length = (n.bit_length() + 7) // 8 + 16
    okm = HKDF(hashes.SHA512(), length, salt=None, info=LABEL).derive(
        LABEL + _spki(public) + address.key().encode("utf-8"))
    t = int.from_bytes(okm, "big") % n
    if t == 0:  # probability 2^-256 and less; a fixed, public substitute keeps it defined
        t = int.from_bytes(sha512(okm).digest(), "big") % (n - 1) + 1
    return t


def _add(p: int, a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int] | None:
    """Affine a + b on y^2 = x^3 - 3x + b over GF(p); None for the point at infinity."""
    (x1, y1), (x2, y2) = a, b
    if x1 == x2:
        if (y1 + y2) % p == 0:
            return None  # b = -a
        slope = (3 * x1 * x1 - 3) * pow(2 * y1, -1, p) % p  # doubling, a = -3
    else:
        slope = (y2 - y1) * pow(x2 - x1, -1, p) % p
    x3 = (slope * slope - x1 - x2) % p
    return x3, (slope * (x1 - x3) - y1) % p


def derived_public_key(public: ec.EllipticCurvePublicKey,
                       address: Address) -> ec.EllipticCurvePublicKey:
    """P_A = P + t_A * G: what a derived-keys domain's container for `address` carries."""
    t = tweak(public, address)
    p, _ = _params(public.curve)
    tg = ec.derive_private_key(t, public.curve).public_key().public_numbers()
    own = public.public_numbers()
    total = _add(p, (own.x, own.y), (tg.x, tg.y))
    if total is None:
        # P = -t_A*G: only if d = n - t_A, a one in 2^256 event (and then d_A = 0)
        raise ContainerError(f"the gateway key has no derived key for {address}")
    size = (p.bit_length() + 7) // 8
    encoded = b"\x04" + total[0].to_bytes(size, "big") + total[1].to_bytes(size, "big")
    # cryptography checks the point lies on the curve: a wrong constant here cannot pass
    return ec.EllipticCurvePublicKey.from_encoded_point(public.curve, encoded)


def derived_private_key(private: ec.EllipticCurvePrivateKey,
                        address: Address) -> ec.EllipticCurvePrivateKey:
    """d_A = d + t_A mod n: the gateway's key for mail encrypted to `address`'s container."""
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise ContainerError("derived keys need an EC gateway key")
    public = private.public_key()
    t = tweak(public, address)
    _, n = _params(public.curve)
    d = (private.private_numbers().private_value + t) % n
    if d == 0:
        raise ContainerError(f"the gateway key has no derived key for {address}")
    return ec.derive_private_key(d, public.curve)


def carried_key(carried: object, gateway: ec.EllipticCurvePublicKey | object,
                address: Address) -> str | None:
    """Which key a container for `address` carries: "plain" (the gateway key itself),
    "derived" (its P_A) or None (neither: another key). For checking that a gateway and its
    directory agree on the mode."""
    if not isinstance(carried, ec.EllipticCurvePublicKey):
        return None
    if not isinstance(gateway, ec.EllipticCurvePublicKey):
        return None
    if carried == gateway:
        return "plain"
    try:
        return "derived" if carried == derived_public_key(gateway, address) else None
    except ContainerError:  # a curve derived keys do not use
        return None
