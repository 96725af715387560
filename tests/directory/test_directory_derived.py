"""A domain registered with `--derived-keys`: its encryption containers, fetched from a real
`keypost directory serve` over HTTP and with ldapsearch, carry the per-address derived key
P_A (keypost.core.derived) with the gateway key's SKI; `domain list` shows the mode; a
rekey switches it for a running serve at once; RSA keys and old stores."""

from __future__ import annotations

import base64
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from dir_support import SUFFIX, keypost, openssl_verify, serving, write_rsa

from keypost.core.address import parse_address
from keypost.core.derived import derived_public_key
from keypost.directory.store.sqlite import MIGRATIONS, SqliteStore

DOMAIN = "derived.example"


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _cert_spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


class Served:
    def __init__(self, data: Path, key: ec.EllipticCurvePrivateKey, urls: dict[str, str],
                 ca_file: Path) -> None:
        self.data, self.key, self.urls, self.ca_file = data, key, urls, ca_file

    def http_container(self, address: str) -> x509.Certificate:
        resp = requests.get(self.urls["http"].rstrip("/") + "/v1/containers",
                            params={"address": address}, timeout=30)
        assert resp.status_code == 200, resp.text
        pem = resp.json()["results"][0]["containers"][-1]["pem"]
        return x509.load_pem_x509_certificate(pem.encode())

    def ldap_container(self, address: str) -> x509.Certificate:
        done = subprocess.run(
            ["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", self.urls["ldap"],
             "-b", SUFFIX, f"(mail={address})", "userCertificate"],
            capture_output=True, text=True, timeout=60, check=True)
        certs = [x509.load_der_x509_certificate(base64.b64decode(v))
                 for n, _, v in (line.partition(":: ") for line in done.stdout.splitlines())
                 if n.lower().startswith("usercertificate")]
        assert len(certs) == 1, done.stdout
        return certs[0]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("derived")
    data = root / "data"
    keypost("directory", "init", "--data", str(data), "--url", "ldap://127.0.0.1/")
    key = ec.generate_private_key(ec.SECP384R1())
    pub = root / "gw-enc.pub"
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    keypost("directory", "domain", "add", DOMAIN, "--encryption-cert", str(pub),
            "--derived-keys", "--data", str(data))
    ca_file = root / "ca.pem"
    keypost("directory", "ca", "export", "--out", str(ca_file), "--data", str(data))
    with serving(data, root / "serve.log") as urls:
        yield Served(data, key, urls, ca_file)


def test_domain_list_shows_the_mode(served: Served) -> None:
    out = keypost("directory", "domain", "list", "--data", str(served.data)).stdout
    line = next(x for x in out.splitlines() if "encryption" in x)
    assert "derived-keys" in line, out


@pytest.mark.parametrize("fetch", ["http", "ldap"])
def test_containers_carry_the_derived_key(served: Served, fetch: str) -> None:
    get = served.http_container if fetch == "http" else served.ldap_container
    gateway = served.key.public_key()
    seen = set()
    for address in ("bob@derived.example", "mallory@derived.example", "Carol@Derived.Example"):
        cert = get(address)
        expected = derived_public_key(gateway, parse_address(address))
        assert _cert_spki(cert) == _spki(expected)
        assert _cert_spki(cert) != _spki(gateway)
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert ski == x509.SubjectKeyIdentifier.from_public_key(gateway)
        # chain and signature; openssl's smimeencrypt purpose wants keyEncipherment, which
        # no EC container has (keyAgreement): `openssl cms -encrypt` to these containers
        # is tested with the gateway (tests/gateway/test_derived_keys.py)
        verified = openssl_verify(cert.public_bytes(serialization.Encoding.PEM), served.ca_file,
                                  purpose="any")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        seen.add(_cert_spki(cert))
    assert len(seen) == 3


def test_rekey_switches_the_mode_for_a_running_serve(served: Served, tmp_path: Path) -> None:
    """The same key registered again without derived keys: the next container carries the
    gateway key itself (the cached derived ones are dropped), and back again."""
    pub = tmp_path / "same.pub"
    pub.write_bytes(served.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    address = "dave@derived.example"
    derived = _spki(derived_public_key(served.key.public_key(), parse_address(address)))
    assert _cert_spki(served.http_container(address)) == derived
    try:
        keypost("directory", "domain", "rekey", DOMAIN, "--encryption-cert", str(pub),
                "--no-derived-keys", "--data", str(served.data))
        assert _cert_spki(served.http_container(address)) == _spki(served.key.public_key())
        out = keypost("directory", "domain", "list", "--data", str(served.data)).stdout
        assert "derived-keys" not in out
        # a rekey without either flag keeps the mode it finds
        keypost("directory", "domain", "rekey", DOMAIN, "--encryption-cert", str(pub),
                "--data", str(served.data))
        assert _cert_spki(served.http_container(address)) == _spki(served.key.public_key())
    finally:
        keypost("directory", "domain", "rekey", DOMAIN, "--encryption-cert", str(pub),
                "--derived-keys", "--data", str(served.data))
    assert _cert_spki(served.http_container(address)) == derived


def test_rsa_key_with_derived_keys_is_refused(served: Served, tmp_path: Path) -> None:
    _, pub = write_rsa(tmp_path / "rsa.pem")
    done = keypost("directory", "domain", "add", "rsa.example", "--encryption-cert", str(pub),
                   "--derived-keys", "--data", str(served.data), check=False)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "derived keys need an EC" in lines[0], done.stderr


def test_a_store_from_before_derived_keys_reads_them_as_plain(tmp_path: Path) -> None:
    """Migration 7 adds the mode; keys registered before it are plain ones."""
    db = tmp_path / "old.db"
    old = SqliteStore(db, MIGRATIONS[:6])
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO domains VALUES ('old.example', 0)")
    conn.execute("INSERT INTO gateway_keys (domain, use, pem, fingerprint, capabilities, added)"
                 " VALUES ('old.example', 'encryption', x'00', 'ff', 'aes256-cbc', 0)")
    conn.commit()
    conn.close()
    old.close()
    store = SqliteStore(db)
    assert store.schema_version() == len(MIGRATIONS)
    [record] = store.domain_keys("old.example")
    assert record.derived is False
    store.close()
