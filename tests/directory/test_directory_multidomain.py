"""One gateway account standing for two domains with keys of their own (example.com and
example.de, one gateway serving both), through a real `keypost directory serve`: ldap3
binds and searches, the HTTP API (containers and bindings) with requests, the domains
changed by the CLI while it serves. Every container is checked by `openssl verify`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ldap3
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dir_support import SUFFIX, keypost, openssl_verify, serving, spki_der, write_rsa
from proc_util import port_of

BOTH, BOTH_PW = "gw-both", "both-secret-pw"  # the gateway of example.com and example.de
COM, COM_PW = "gw-com", "com-secret-pw"  # a gateway account of example.com alone
ALICE, HANS, OLGA = "alice@example.com", "hans@example.de", "olga@example.org"


@dataclass(frozen=True)
class World:
    data: Path
    ca_file: Path
    ldap_port: int
    http: str
    keys: dict[str, rsa.RSAPrivateKey]  # "<domain> <use>" -> the gateway's key


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("multidomain")
    data = root / "data"
    keypost("directory", "init", "--data", str(data))
    keys: dict[str, rsa.RSAPrivateKey] = {}
    for domain, signing in (("example.com", True), ("example.de", True),
                            ("example.org", False)):
        keys[f"{domain} enc"], enc = write_rsa(root / f"{domain}-enc.pem")
        extra = []
        if signing:
            keys[f"{domain} sign"], sign = write_rsa(root / f"{domain}-sign.pem")
            extra = ["--signing-cert", str(sign)]
        keypost("directory", "domain", "add", domain, "--encryption-cert", str(enc), *extra,
                "--data", str(data))
    keypost("directory", "account", "add", BOTH, "--role", "gateway", "--domain", "example.com",
            "--domain", "example.de", "--password-stdin", "--data", str(data),
            stdin=BOTH_PW + "\n")
    keypost("directory", "account", "add", COM, "--role", "gateway", "--domain", "example.com",
            "--password-stdin", "--data", str(data), stdin=COM_PW + "\n")
    ca_file = root / "ca.pem"
    keypost("directory", "ca", "export", "--out", str(ca_file), "--data", str(data))
    with serving(data, root / "serve.log") as urls:
        yield World(data, ca_file, port_of(urls["ldap"]), urls["http"], keys)


def checked(world: World, der_or_pem: bytes, address: str, key: str, purpose: str) -> None:
    """The container verifies for `purpose`, names `address` and carries `key`."""
    cert = (x509.load_pem_x509_certificate(der_or_pem) if der_or_pem.startswith(b"-----")
            else x509.load_der_x509_certificate(der_or_pem))
    done = openssl_verify(cert.public_bytes(serialization.Encoding.PEM), world.ca_file,
                          purpose=purpose)
    assert done.returncode == 0, done.stdout + done.stderr
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == [address]
    assert spki_der(world.keys[key]) == cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def ldap_certs(conn: ldap3.Connection, address: str) -> list[bytes]:
    assert conn.search(SUFFIX, f"(mail={address})", attributes=["userCertificate;binary"])
    [entry] = conn.response
    return [bytes(v) for v in entry["raw_attributes"]["userCertificate;binary"]]


def bound(world: World, name: str, password: str) -> ldap3.Connection:
    server = ldap3.Server("127.0.0.1", port=world.ldap_port, get_info=ldap3.NONE)
    return ldap3.Connection(server, f"uid={name},{SUFFIX}", password, auto_bind=True)


def http_results(world: World, purpose: str, auth: tuple[str, str] | None,
                 *addresses: str) -> list[dict[str, object]]:
    resp = requests.get(world.http + "v1/containers", auth=auth, timeout=30,
                        params=[("address", a) for a in addresses] + [("purpose", purpose)])
    assert resp.status_code == 200, resp.text
    results: list[dict[str, object]] = resp.json()["results"]
    return results


def test_ldap_signs_for_senders_of_each_of_its_domains(world: World) -> None:
    """LDAP's purpose rule: an address of any of the account's domains is one of its own
    senders (signing container of that domain's key); any other address is encrypted to."""
    with bound(world, BOTH, BOTH_PW) as gw:
        [com] = ldap_certs(gw, ALICE)
        checked(world, com, ALICE, "example.com sign", "smimesign")
        [de] = ldap_certs(gw, HANS)
        checked(world, de, HANS, "example.de sign", "smimesign")
        [org] = ldap_certs(gw, OLGA)
        checked(world, org, OLGA, "example.org enc", "smimeencrypt")
    with bound(world, COM, COM_PW) as gw:  # example.de is another gateway's to this one
        [de] = ldap_certs(gw, HANS)
        checked(world, de, HANS, "example.de enc", "smimeencrypt")


def test_http_signing_containers_for_both_domains_and_refused_for_others(world: World) -> None:
    got = http_results(world, "sign", (BOTH, BOTH_PW), ALICE, HANS, OLGA)
    com, de, org = (r["containers"] for r in got)
    assert isinstance(com, list) and isinstance(de, list)
    assert [(c["role"], c["gateway"]) for c in com + de] == [
        ("proxy-signing", "example.com"), ("proxy-signing", "example.de")]
    checked(world, com[0]["pem"].encode(), ALICE, "example.com sign", "smimesign")
    checked(world, de[0]["pem"].encode(), HANS, "example.de sign", "smimesign")
    assert org == []
    assert got[2]["refused"] == "the gateway of example.com,example.de cannot sign for example.org"
    [refused] = http_results(world, "sign", (COM, COM_PW), HANS)
    assert refused["containers"] == [] and "cannot sign for example.de" in str(refused["refused"])
    # encryption: neither of its domains gets the gateway itself
    assert [r["containers"] for r in http_results(world, "encrypt", (BOTH, BOTH_PW), ALICE,
                                                  HANS)] == [[], []]


def test_bindings_answer_the_containers_of_both_keys(world: World) -> None:
    serials = {}
    for address in (ALICE, HANS, OLGA):  # as outside senders' clients fetch them
        [result] = http_results(world, "encrypt", None, address)
        [c] = result["containers"]  # type: ignore[misc]
        serials[address] = f"{x509.load_pem_x509_certificate(c['pem'].encode()).serial_number:X}"

    def ask(auth: tuple[str, str], address: str, *others: str) -> list[str]:
        resp = requests.get(world.http + "v1/bindings", auth=auth, timeout=30, params=[
            ("serial", serials[address]), *(("address", a) for a in (address, *others))])
        assert resp.status_code == 200, resp.text
        return [r["binding"] for r in resp.json()["results"]]

    assert ask((BOTH, BOTH_PW), ALICE, HANS) == ["bound", "not_bound"]
    assert ask((BOTH, BOTH_PW), HANS, ALICE) == ["bound", "not_bound"]
    assert ask((BOTH, BOTH_PW), OLGA) == ["unknown"]  # another gateway's key
    assert ask((COM, COM_PW), HANS) == ["unknown"]


def test_domains_changed_while_serving_count_on_open_connections(world: World) -> None:
    """`account domains` while a gateway's LDAP connection stays bound: its next search is
    answered for the new set of domains, still as the gateway (not as anonymous)."""
    with bound(world, COM, COM_PW) as gw:
        [before] = ldap_certs(gw, HANS)
        checked(world, before, HANS, "example.de enc", "smimeencrypt")
        keypost("directory", "account", "domains", COM, "--add", "example.de",
                "--data", str(world.data))
        try:
            [after] = ldap_certs(gw, HANS)
            checked(world, after, HANS, "example.de sign", "smimesign")
            [com] = ldap_certs(gw, ALICE)
            checked(world, com, ALICE, "example.com sign", "smimesign")
            # the searches after the first one that saw the change: no older view returns
            [again] = ldap_certs(gw, HANS)
            checked(world, again, HANS, "example.de sign", "smimesign")
        finally:
            keypost("directory", "account", "domains", COM, "--remove", "example.de",
                    "--data", str(world.data))
        [again] = ldap_certs(gw, HANS)
        checked(world, again, HANS, "example.de enc", "smimeencrypt")
        [com] = ldap_certs(gw, ALICE)  # still bound: the gateway's own sender
        checked(world, com, ALICE, "example.com sign", "smimesign")
