"""Container issue rate vs bare CertificateBuilder.sign with the same CA key (goal >= 0.9x).

The anchor builds a certificate of the same shape (same subject form, the same nine
extensions, pre-built) with cryptography's CertificateBuilder and signs it: the least any
issuer can do per certificate. DirectoryCA.issue additionally checks the request and builds
the per-address parts (subject, SAN, keypost extension). Both run interleaved in short
rounds, ~2 s each side, on one core.

    python bench/bench_issue.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keypost.core import containers as kc
from keypost.core.address import parse_address
from keypost.core.types import Purpose, Role
from keypost.core.x509_ext import (
    NULL_DER,
    OID_KEYPOST_CONTAINER,
    OID_NO_REV_AVAIL,
    OID_SMIME_CAPABILITIES,
    KeypostExtension,
    encode_smime_capabilities,
)


def anchor_factory(ca: kc.DirectoryCA, gw: kc.GatewayKey) -> Callable[[int], x509.Certificate]:
    """Bare CertificateBuilder.sign of an equivalent certificate, extensions pre-built."""
    key = serialization.load_pem_private_key(ca.key_pem(), None)
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    issuer = ca.certificate.subject
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "alice@example.org"),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, "alice@example.org"),
        ]
    )
    ku = x509.KeyUsage(False, False, True, False, False, False, False, False, False)
    role = KeypostExtension(Role.PROXY_ENCRYPTION, gw.fingerprint_bytes, "https://k.example/")
    extensions = [
        x509.Extension(x509.BasicConstraints.oid, True, x509.BasicConstraints(False, None)),
        x509.Extension(
            x509.ExtendedKeyUsage.oid,
            False,
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
        ),
        x509.Extension(
            x509.AuthorityKeyIdentifier.oid,
            False,
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
        ),
        x509.Extension(
            OID_NO_REV_AVAIL, False, x509.UnrecognizedExtension(OID_NO_REV_AVAIL, NULL_DER)
        ),
        x509.Extension(x509.KeyUsage.oid, True, ku),
        x509.Extension(
            x509.SubjectAlternativeName.oid,
            False,
            x509.SubjectAlternativeName([x509.RFC822Name("alice@example.org")]),
        ),
        x509.Extension(x509.SubjectKeyIdentifier.oid, False, gw.ski),
        x509.Extension(
            OID_SMIME_CAPABILITIES,
            False,
            x509.UnrecognizedExtension(
                OID_SMIME_CAPABILITIES, encode_smime_capabilities(gw.capabilities)
            ),
        ),
        x509.Extension(
            OID_KEYPOST_CONTAINER,
            False,
            x509.UnrecognizedExtension(OID_KEYPOST_CONTAINER, role.encode()),
        ),
    ]
    sha256 = hashes.SHA256()

    def make(i: int) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        return x509.CertificateBuilder(
            issuer_name=issuer,
            subject_name=subject,
            public_key=gw.public_key,
            serial_number=x509.random_serial_number(),
            not_valid_before=now - dt.timedelta(minutes=5),
            not_valid_after=now + dt.timedelta(hours=24),
            extensions=extensions,
        ).sign(key, sha256)

    return make


def keypost_factory(
    ca: kc.DirectoryCA, gw: kc.GatewayKey, distinct: int
) -> Callable[[int], x509.Certificate]:
    """DirectoryCA.issue cycling through `distinct` pre-parsed addresses (parsing is the
    caller's work). More addresses than issued certificates: every subject/SAN is new."""
    addresses = [parse_address(f"user{i}@example.org") for i in range(distinct)]

    def make(i: int) -> x509.Certificate:
        return ca.issue(kc.ContainerRequest(addresses[i % distinct], Purpose.ENCRYPT, gw))

    return make


def rate(make: Callable[[int], x509.Certificate], seconds: float) -> tuple[int, float]:
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(8):
            make(n)
            n += 1
    return n, time.perf_counter() - start


def compare(
    a: Callable[[int], x509.Certificate],
    b: Callable[[int], x509.Certificate],
    seconds: float,
    rounds: int = 20,
) -> tuple[float, float, float]:
    """Rates of a and b (certificates/s) and the median of the per-round ratios b/a.

    Short alternating rounds and the median keep other processes on the shared machine
    from deciding the ratio: each pair of rounds sees the same load."""
    a(0), b(0)  # warm up
    ratios: list[float] = []
    na = nb = 0
    ta = tb = 0.0
    for _ in range(rounds):
        n1, t1 = rate(a, seconds / rounds)
        n2, t2 = rate(b, seconds / rounds)
        na, ta, nb, tb = na + n1, ta + t1, nb + n2, tb + t2
        ratios.append((n2 / t2) / (n1 / t1))
    return na / ta, nb / tb, statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per side and row")
    args = parser.parse_args()
    gw = kc.GatewayKey(rsa.generate_private_key(65537, 2048).public_key())
    url = "https://k.example/"
    ecdsa = kc.DirectoryCA.generate("ecdsa-p256", directory_url=url)
    rsa_ca = kc.DirectoryCA.generate("rsa-3072", directory_url=url)
    many = 60_000  # more than a 2 s run issues with ECDSA: no address repeats

    def fresh_gateway_key(i: int) -> x509.Certificate:
        key = kc.GatewayKey(gw.public_key)  # SKI and fingerprint recomputed every time
        request = kc.ContainerRequest(parse_address("alice@example.org"), Purpose.ENCRYPT, key)
        return ecdsa.issue(request)

    rows: list[tuple[str, kc.DirectoryCA, Callable[[int], x509.Certificate]]] = [
        ("ecdsa-p256, new address each time", ecdsa, keypost_factory(ecdsa, gw, many)),
        ("ecdsa-p256, 100 addresses repeated", ecdsa, keypost_factory(ecdsa, gw, 100)),
        ("ecdsa-p256, new GatewayKey object each time", ecdsa, fresh_gateway_key),
        ("rsa-3072, new address each time", rsa_ca, keypost_factory(rsa_ca, gw, many)),
    ]
    print(f"{'DirectoryCA.issue vs bare CertificateBuilder.sign':<46}"
          f"{'anchor/s':>10}{'keypost/s':>11}{'ratio':>8}")  # fmt: skip
    for label, ca, ours_factory in rows:
        anchor, ours, ratio = compare(anchor_factory(ca, gw), ours_factory, args.seconds)
        print(f"{label:<46}{anchor:>10,.0f}{ours:>11,.0f}{ratio:>7.2f}x")
    print("ratio: median over 20 alternating rounds of (keypost rate / anchor rate)")


if __name__ == "__main__":
    main()
