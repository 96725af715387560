"""EC containers with independent implementations, run as real programs: `openssl cms
-encrypt` to a keypost container holding an EC gateway key, opened by the Decryptor with
the gateway's EC key; keypost's KeyAgreeRecipientInfos opened by `openssl cms -decrypt`
and by `gpgsm --decrypt` (where the installed gpgsm can do ECDH at all)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_smime_interop import ENTITY, _body_der, _gpgsm, _message, _run, gnupghome
from test_smime_pki import Gateway, container, ec_gateway, gateway, pem

from keypost.core import smime

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
__all__ = ["gnupghome"]  # the fixture, imported for the gpgsm tests

CURVES = ["P-256", "P-384", "P-521"]


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _ec_container(tmp_path: Path, curve: str = "P-256") -> tuple[Gateway, Path]:
    gw = ec_gateway(curve)
    return gw, _write(tmp_path, f"container-{curve}.pem", pem(container("bob@b.example", gw)))


# openssl encryption -> our Decryptor --------------------------------------------------


@pytest.mark.parametrize(
    ("options", "algorithm"),
    [
        (["-aes256"], "aes256-cbc"),  # openssl's default: stdDH-sha1kdf, aes256-wrap
        (["-aes128"], "aes128-cbc"),  # aes128-wrap
        (["-aes256", "-keyopt", "ecdh_kdf_md:sha256"], "aes256-cbc"),
        (["-aes256", "-keyopt", "ecdh_kdf_md:sha384"], "aes256-cbc"),
        (["-aes256", "-keyopt", "ecdh_kdf_md:sha512"], "aes256-cbc"),
        (["-aes256", "-keyopt", "ecdh_cofactor_mode:1"], "aes256-cbc"),  # cofactorDH
        (["-aes256", "-stream"], "aes256-cbc"),  # BER, indefinite lengths
        (["-aes256", "-keyid"], "aes256-cbc"),  # rKeyId (the container's SKI)
        (["-aes-256-gcm"], "aes256-gcm"),  # AuthEnvelopedData
        (["-aes-128-gcm", "-keyopt", "ecdh_kdf_md:sha256"], "aes128-gcm"),
    ],
)
@pytest.mark.parametrize("curve", CURVES)
def test_openssl_encrypted_to_an_ec_container_opens_with_the_gateway_key(
    tmp_path: Path, curve: str, options: list[str], algorithm: str
) -> None:
    gw, cont = _ec_container(tmp_path, curve)
    entity = _write(tmp_path, "entity", ENTITY)
    out = tmp_path / "out.eml"
    at = options.index("-keyopt") if "-keyopt" in options else len(options)
    res = _run("openssl", "cms", "-encrypt", *options[:at], "-binary", "-in", entity,
               "-out", out, "-recip", cont, *options[at:])  # fmt: skip
    assert res.returncode == 0, res.stderr
    printed = _run("openssl", "cms", "-cmsout", "-print", "-in", out).stdout
    assert b"d.kari:" in printed and b"originatorKey" in printed
    message = b"From: x@x.example\r\nSubject: from openssl\r\n" + out.read_bytes()
    result = smime.Decryptor([gateway().key, gw.key]).decrypt_message(message)
    assert (result.key_index, result.algorithm) == (1, algorithm)
    assert result.message.endswith(ENTITY)


def test_openssl_to_rsa_and_ec_containers_opens_with_either_gateway_key(tmp_path: Path) -> None:
    gw, cont = _ec_container(tmp_path)
    rsa_cont = _write(tmp_path, "rsa.pem", pem(container("carol@c.example", gateway())))
    entity = _write(tmp_path, "entity", ENTITY)
    out = tmp_path / "out.eml"
    res = _run("openssl", "cms", "-encrypt", "-aes256", "-in", entity, "-out", out,
               rsa_cont, cont)  # fmt: skip
    assert res.returncode == 0, res.stderr
    for key in (gw.key, gateway().key):
        assert smime.Decryptor([key]).decrypt_message(out.read_bytes()).message.endswith(ENTITY)
    assert len(smime.recipient_ids(out.read_bytes())) == 2


# our encryption -> openssl ------------------------------------------------------------


@pytest.mark.parametrize("curve", CURVES)
def test_openssl_decrypts_our_key_agreement_with_the_ec_key_alone(
    tmp_path: Path, curve: str
) -> None:
    gw, cont_path = _ec_container(tmp_path, curve)
    cont = x509.load_pem_x509_certificate(cont_path.read_bytes())
    msg = _write(tmp_path, "msg.eml", smime.encrypt_message(_message(), [cont]))
    key = _write(tmp_path, "ec.key", gw.key_pem())
    res = _run("openssl", "cms", "-decrypt", "-in", msg, "-inkey", key)
    assert res.returncode == 0, res.stderr
    assert res.stdout == ENTITY
    named = _run("openssl", "cms", "-decrypt", "-in", msg, "-recip", cont_path, "-inkey", key)
    assert named.returncode == 0, named.stderr
    printed = _run("openssl", "cms", "-cmsout", "-print", "-in", msg).stdout
    assert b"dhSinglePass-stdDH-sha256kdf-scheme" in printed and b"id-aes256-wrap" in printed


def test_openssl_decrypts_mixed_recipients_with_each_key(tmp_path: Path) -> None:
    from keypost.core.types import Capability

    p256, p384 = ec_gateway("P-256"), ec_gateway("P-384")
    certs = [container("a@b.example", gateway()), container("b@b.example", p256),
             container("c@c.example", p384, caps=(Capability.AES128_CBC,))]
    msg = _write(tmp_path, "msg.eml", smime.encrypt_message(_message(), certs))
    printed = _run("openssl", "cms", "-cmsout", "-print", "-in", msg).stdout
    assert printed.count(b"d.kari:") == 2 and printed.count(b"d.ktri:") == 1
    assert b"id-aes128-wrap" in printed  # AES-128 content: everyone offers it
    for n, gw in enumerate((gateway(), p256, p384)):
        key = _write(tmp_path, f"{n}.key", gw.key_pem())
        res = _run("openssl", "cms", "-decrypt", "-in", msg, "-inkey", key)
        assert res.returncode == 0, res.stderr
        assert res.stdout == ENTITY


# gpgsm ---------------------------------------------------------------------------------


_GCRYPT_CURVES = {"secp256r1": b"NIST P-256", "secp384r1": b"NIST P-384",
                  "secp521r1": b"NIST P-521"}


def _sexp(*atoms: bytes | tuple[bytes, ...]) -> bytes:
    """A canonical S-expression (what gpg-agent stores keys as)."""
    return b"(" + b"".join(
        _sexp(*a) if isinstance(a, tuple) else str(len(a)).encode() + b":" + a for a in atoms
    ) + b")"


def _give_agent_the_ec_key(env: dict[str, str], gw: Gateway, cont: Path) -> None:
    """gpgsm 2.2 crashes importing an EC key from PKCS#12, so the key goes into the agent's
    store as an unprotected key file named by its keygrip, which gpgsm reports for the
    container (keygrips depend only on the public key)."""
    assert _gpgsm(env, "--import", cont).returncode == 0
    listing = _gpgsm(env, "--with-keygrip", "--with-colons", "--list-keys").stdout.decode()
    grip = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("grp:"))
    key = gw.key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    point = key.public_key().public_bytes(serialization.Encoding.X962,
                                          serialization.PublicFormat.UncompressedPoint)
    d = key.private_numbers().private_value.to_bytes((key.curve.key_size + 7) // 8, "big")
    store = Path(env["GNUPGHOME"]) / "private-keys-v1.d"
    store.mkdir(mode=0o700, exist_ok=True)
    path = store / f"{grip}.key"
    path.write_bytes(_sexp(b"private-key", (b"ecc", (b"curve", _GCRYPT_CURVES[key.curve.name]),
                                            (b"q", point), (b"d", d))))
    path.chmod(0o600)


def _gpgsm_can_decrypt_ecdh(env: dict[str, str], tmp_path: Path, cont: Path) -> bool:
    """Can this gpgsm open ECDH at all? Asked with openssl's own output: gpgsm 2.2
    (Debian 12) finds the key and then fails with "Invalid session key" (KeyAgreeRecipient
    Info decryption came with GnuPG 2.3)."""
    entity = _write(tmp_path, "probe-entity", ENTITY)
    out = tmp_path / "probe.der"
    res = _run("openssl", "cms", "-encrypt", "-aes256", "-binary", "-outform", "DER",
               "-in", entity, "-out", out, "-recip", cont, "-keyopt", "ecdh_kdf_md:sha256")
    assert res.returncode == 0, res.stderr
    return _gpgsm(env, "--decrypt", out).returncode == 0


@pytest.mark.skipif(shutil.which("gpgsm") is None, reason="gpgsm not installed")
def test_gpgsm_decrypts_our_key_agreement(gnupghome: dict[str, str], tmp_path: Path) -> None:
    gw, cont_path = _ec_container(tmp_path)
    _give_agent_the_ec_key(gnupghome, gw, cont_path)
    if not _gpgsm_can_decrypt_ecdh(gnupghome, tmp_path, cont_path):
        version = _run("gpgsm", "--version").stdout.split(b"\n")[0].decode()
        pytest.skip(f"{version} cannot decrypt ECDH (KeyAgreeRecipientInfo), not even "
                    "openssl's: needs GnuPG 2.3+")
    cont = x509.load_pem_x509_certificate(cont_path.read_bytes())
    der = _write(tmp_path, "msg.der", _body_der(smime.encrypt_message(_message(), [cont])))
    res = _gpgsm(gnupghome, "--decrypt", der)
    assert res.returncode == 0, res.stderr
    assert res.stdout.replace(b"\r\n", b"\n") == ENTITY.replace(b"\r\n", b"\n")


def test_the_sexp_is_canonical() -> None:
    assert _sexp(b"a", (b"bc", b"")) == b"(1:a(2:bc0:))"
