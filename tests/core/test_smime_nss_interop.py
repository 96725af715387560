"""EC containers with the S/MIME stack Thunderbird itself uses: NSS's `cmsutil` run on the
NSS libraries Thunderbird bundles (libsmime3 of Thunderbird 153 and 140 ESR). An outside
sender writing with Thunderbird's own S/MIME (Fig. 1) encrypts to the container the
directory hands out; the gateway must open it, plain EC key or per-address derived key.
And what keypost writes must open in NSS. (Debian 12's own NSS 3.87 refuses to encrypt to
an EC certificate at all: SEC_ERROR_INVALID_ALGORITHM; Thunderbird's bundled NSS can.)"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from test_smime_interop import ENTITY, _message
from test_smime_pki import container, directory_ca, ec_gateway, gateway, pem

from keypost.core import smime
from keypost.core.address import parse_address
from keypost.core.containers import ContainerRequest, GatewayKey
from keypost.core.derived import derived_private_key
from keypost.core.types import Purpose

THUNDERBIRD_NSS = {
    "153": Path("/usr/lib/thunderbird"),
    "140": Path("/var/cache/keypost-tb140/root/usr/lib/thunderbird"),
}
TOOLS = ("cmsutil", "certutil", "pk12util")
pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                reason="NSS tools (libnss3-tools) not installed")


@pytest.fixture(params=sorted(THUNDERBIRD_NSS), ids=lambda v: f"tb{v}")
def nss(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """An empty NSS database and the environment that runs NSS's tools on the libraries
    of one Thunderbird (NSS keeps its ABI, so Debian's tools load them)."""
    libs = THUNDERBIRD_NSS[request.param]
    if not (libs / "libsmime3.so").is_file():
        pytest.skip(f"Thunderbird {request.param} is not installed at {libs}")
    env = {**os.environ, "LD_LIBRARY_PATH": str(libs)}
    db = tmp_path / "nssdb"
    db.mkdir()
    _nss(env, "certutil", "-N", "-d", f"sql:{db}", "--empty-password")
    env["KEYPOST_TEST_NSSDB"] = f"sql:{db}"
    return env


def _nss(env: dict[str, str], *argv: str | Path) -> bytes:
    done = subprocess.run([str(a) for a in argv], env=env, capture_output=True, timeout=60,
                          check=False)
    assert done.returncode == 0, (argv, done.stderr.decode(errors="replace"))
    return done.stdout


def _add_certificate(env: dict[str, str], tmp_path: Path, name: str,
                     cert: x509.Certificate, trust: str = ",,") -> None:
    path = tmp_path / f"{name}.pem"
    path.write_bytes(pem(cert))
    _nss(env, "certutil", "-A", "-d", env["KEYPOST_TEST_NSSDB"], "-n", name, "-t", trust,
         "-a", "-i", path)


def _add_key(env: dict[str, str], tmp_path: Path, key: ec.EllipticCurvePrivateKey,
             cert: x509.Certificate) -> None:
    p12 = tmp_path / "key.p12"
    p12.write_bytes(pkcs12.serialize_key_and_certificates(
        b"bob", key, cert, None, serialization.BestAvailableEncryption(b"pw")))
    _nss(env, "pk12util", "-i", p12, "-d", env["KEYPOST_TEST_NSSDB"], "-W", "pw", "-K", "")


def _nss_encrypt(env: dict[str, str], tmp_path: Path, cert: x509.Certificate) -> bytes:
    """What Thunderbird's S/MIME stack writes for a recipient whose certificate it holds."""
    _add_certificate(env, tmp_path, "ca", directory_ca().certificate, "C,C,C")
    _add_certificate(env, tmp_path, "bob", cert)
    entity = tmp_path / "entity"
    entity.write_bytes(ENTITY)
    out = tmp_path / "out.p7m"
    _nss(env, "cmsutil", "-E", "-d", env["KEYPOST_TEST_NSSDB"], "-r", "bob@b.example",
         "-i", entity, "-o", out)
    return out.read_bytes()


def _as_message(der: bytes) -> bytes:
    import base64

    body = base64.encodebytes(der).replace(b"\n", b"\r\n")
    return (b"From: x@x.example\r\nSubject: from NSS\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data;"
            b" name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n\r\n" + body)


@pytest.mark.parametrize("curve", ["P-256", "P-384", "RSA-2048"])
def test_thunderbirds_nss_encrypts_to_a_container_the_gateway_opens(
    nss: dict[str, str], tmp_path: Path, curve: str
) -> None:
    gw = gateway() if curve == "RSA-2048" else ec_gateway(curve)
    der = _nss_encrypt(nss, tmp_path, container("bob@b.example", gw))
    result = smime.Decryptor([gw.key]).decrypt_message(_as_message(der))
    assert result.message.endswith(ENTITY)
    assert result.algorithm.startswith("aes")


def test_thunderbirds_nss_encrypts_to_a_derived_container_only_its_key_opens(
    nss: dict[str, str], tmp_path: Path
) -> None:
    """The derived-keys domain's container for bob carries P_bob: NSS runs ordinary ECDH
    with it; d_bob opens the result, the gateway key d itself and mallory's key do not."""
    gw = ec_gateway("P-256", "gw-derived-nss.b.example")
    bob = parse_address("bob@b.example")
    derived = GatewayKey(gw.key.public_key(), gw.cert, derived=True)
    cert = directory_ca().issue(ContainerRequest(bob, Purpose.ENCRYPT, derived))
    assert cert.public_key() != gw.key.public_key()
    message = _as_message(_nss_encrypt(nss, tmp_path, cert))
    d_bob = derived_private_key(gw.key, bob)  # type: ignore[arg-type]
    assert smime.Decryptor([d_bob]).decrypt_message(message).message.endswith(ENTITY)
    mallory = derived_private_key(gw.key, parse_address("mallory@b.example"))  # type: ignore[arg-type]
    for wrong in (gw.key, mallory):
        with pytest.raises(smime.DecryptError):
            smime.Decryptor([wrong]).decrypt_message(message)


@pytest.mark.parametrize("kind", ["P-256", "RSA-2048"])
def test_thunderbirds_nss_decrypts_what_we_write(nss: dict[str, str], tmp_path: Path,
                                                 kind: str) -> None:
    """A recipient's Thunderbird opens what keypost wrote: key agreement to an EC key, key
    transport to an RSA one (a genuine certificate's holder reads the host's mail so)."""
    gw = gateway() if kind == "RSA-2048" else ec_gateway("P-256")
    cert = container("bob@b.example", gw)
    _add_certificate(nss, tmp_path, "ca", directory_ca().certificate, "C,C,C")
    _add_key(nss, tmp_path, gw.key, cert)  # type: ignore[arg-type]
    message = smime.encrypt_message(_message(), [cert])
    der = tmp_path / "in.p7m"
    import base64

    der.write_bytes(base64.b64decode(message.split(b"\r\n\r\n", 1)[1]))
    out = _nss(nss, "cmsutil", "-D", "-d", nss["KEYPOST_TEST_NSSDB"], "-i", der)
    assert out.replace(b"\r\n", b"\n") == ENTITY.replace(b"\r\n", b"\n")


@pytest.mark.parametrize("kind", ["RSA-2048", "P-256"])
def test_thunderbirds_nss_verifies_the_gateways_signature(
    nss: dict[str, str], tmp_path: Path, kind: str
) -> None:
    """What a recipient's Thunderbird checks on mail the gateway signed (Fig. 3): the
    detached SignedData over the first part, the signer's chain to the directory CA
    (trusted for e-mail) and its use for e-mail signing (certUsageEmailSigner, -u 4)."""
    import email
    import email.utils

    from keypost.core.types import Purpose

    gw = gateway() if kind == "RSA-2048" else ec_gateway("P-256")
    signer = container("alice@a.example", gw, Purpose.SIGN)
    date = email.utils.formatdate(usegmt=True).encode()
    message = (b"From: alice@a.example\r\nTo: bob@b.example\r\nSubject: signed\r\nDate: "
               + date + b"\r\nMIME-Version: 1.0\r\n" + ENTITY)
    signed = smime.sign_message(message, gw.key, signer)
    parsed = email.message_from_bytes(signed)
    boundary = b"--" + parsed.get_boundary().encode()  # type: ignore[union-attr]
    content = signed.split(boundary)[1][2:-2]  # the first part as signed: CRLF to CRLF
    signature = parsed.get_payload()[1].get_payload(decode=True)  # type: ignore[index]
    _add_certificate(nss, tmp_path, "ca", directory_ca().certificate, "C,C,C")
    (tmp_path / "content").write_bytes(content)
    (tmp_path / "sig.p7s").write_bytes(signature)
    verify = ["cmsutil", "-D", "-d", nss["KEYPOST_TEST_NSSDB"], "-u", "4",
              "-c", str(tmp_path / "content"), "-i", str(tmp_path / "sig.p7s")]
    assert _nss(nss, *verify).endswith(b"bring the keys\r\n")  # verified, content out
    assert b"meet at noon" in content
    (tmp_path / "content").write_bytes(content.replace(b"meet at noon", b"meet at dawn"))
    spoilt = subprocess.run(verify, env=nss, capture_output=True, timeout=60, check=False)
    assert spoilt.returncode != 0 and b"BAD_SIGNATURE" in spoilt.stderr
