"""Administration while `serve` runs: rekey takes effect at once, genuine certificates are
handed out as soon as they are added (the CLI and the server are separate processes)."""

from __future__ import annotations

from pathlib import Path

import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dir_support import (
    DOMAIN,
    USER,
    USER_PW,
    Directory,
    keypost,
    serving,
    spki_der,
    write_rsa,
)
from pki_util import rsa_key, self_signed
from test_directory_ldap_clients import ldapsearch, ldif_certs

from keypost.core.containers import to_pem


def lookup(d: Directory, address: str) -> list[dict[str, str]]:
    resp = requests.get(d.http + "v1/containers", params={"address": address}, timeout=30)
    assert resp.status_code == 200, resp.text
    result: list[dict[str, str]] = resp.json()["results"][0]["containers"]
    return result


def spki_of(pem: str) -> bytes:
    return x509.load_pem_x509_certificate(pem.encode()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def self_signed_file(path: Path, common_name: str, email: str | None = None
                     ) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A fresh RSA key and a self-signed certificate for it, written to `path` as PEM."""
    key = rsa_key()
    cert = self_signed(key, common_name, email)
    path.write_bytes(to_pem(cert))
    return key, cert


def test_rekey_takes_effect_at_once(directory: Directory, tmp_path: Path) -> None:
    old_key, old_pub = write_rsa(tmp_path / "old.pem")
    new_key, new_pub = write_rsa(tmp_path / "new.pem")
    data = str(directory.data)
    keypost("directory", "domain", "add", "rekey.example", "--encryption-cert", str(old_pub),
            "--data", data)
    [before] = lookup(directory, "x@rekey.example")
    assert spki_of(before["pem"]) == spki_der(old_key)
    # cached for the same requestor (anonymous LDAP from this address; the HTTP API names
    # its anonymous requestors only once it hands the controller the peer's address)
    [cached] = ldif_certs(ldapsearch(directory, "x@rekey.example").stdout)
    assert ldif_certs(ldapsearch(directory, "x@rekey.example").stdout) == [cached]
    keypost("directory", "domain", "rekey", "rekey.example", "--encryption-cert", str(new_pub),
            "--data", data)
    [after] = lookup(directory, "x@rekey.example")
    assert spki_of(after["pem"]) == spki_der(new_key)
    [rekeyed] = ldif_certs(ldapsearch(directory, "x@rekey.example").stdout)
    assert rekeyed.serial_number != cached.serial_number
    keypost("directory", "domain", "remove", "rekey.example", "--data", data)
    assert lookup(directory, "x@rekey.example") == []


def test_genuine_certificate_is_handed_out(directory: Directory, tmp_path: Path) -> None:
    path = tmp_path / "gina.pem"
    key, cert = self_signed_file(path, "Gina", "gina@example.com")
    data = str(directory.data)
    assert [c["role"] for c in lookup(directory, "gina@example.com")] == ["proxy-encryption"]
    keypost("directory", "genuine", "add", str(path), "--data", data)
    got = lookup(directory, "Gina@Example.com")
    assert [c["role"] for c in got] == ["proxy-encryption", "genuine"]
    assert got[1]["gateway"] is None and spki_of(got[1]["pem"]) == spki_der(key)
    ldap = ldif_certs(ldapsearch(directory, "gina@example.com").stdout)
    assert [c.serial_number for c in ldap][1] == cert.serial_number
    keypost("directory", "genuine", "remove", "gina@example.com", "--data", data)
    assert [c["role"] for c in lookup(directory, "gina@example.com")] == ["proxy-encryption"]


def test_genuine_certificate_of_an_smtputf8_mailbox_is_handed_out(
        directory: Directory, tmp_path: Path) -> None:
    """RFC 9598: a mailbox with a UTF-8 local part is named by an SmtpUTF8Mailbox otherName
    (rfc822Name cannot hold it). `genuine add` read rfc822Name only and refused such a
    certificate ("names no e-mail address"), although the host and the store's migrations
    read both, as the directory's own containers are written."""
    import datetime as dt

    from cryptography.hazmat.primitives import hashes
    from pki_util import name

    utf8 = "jörg@example.com".encode()
    key = rsa_key()
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name("Jörg")).issuer_name(name("Jörg"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.OtherName(
                x509.ObjectIdentifier("1.3.6.1.5.5.7.8.9"),
                bytes([0x0C, len(utf8)]) + utf8)]), critical=False)  # DER UTF8String
            .sign(key, hashes.SHA256()))
    path = tmp_path / "joerg.pem"
    path.write_bytes(to_pem(cert))
    data = str(directory.data)
    out = keypost("directory", "genuine", "add", str(path), "--data", data).stdout
    assert "jörg@example.com" in out, out
    got = lookup(directory, "Jörg@Example.com")
    assert [c["role"] for c in got] == ["proxy-encryption", "genuine"]
    assert spki_of(got[1]["pem"]) == spki_of(to_pem(cert).decode())
    ldap = ldif_certs(ldapsearch(directory, "jörg@example.com").stdout)
    assert [c.serial_number for c in ldap][1] == cert.serial_number
    keypost("directory", "genuine", "remove", "jörg@example.com", "--data", data)
    assert [c["role"] for c in lookup(directory, "jörg@example.com")] == ["proxy-encryption"]


def test_genuine_certificates_can_be_kept_from_anonymous_requestors(
    directory: Directory, tmp_path: Path
) -> None:
    """genuine_to_anonymous = false in directory.toml: an outsider's answer for a mailbox
    with a genuine certificate is the one any address of the domain gets (no oracle), over
    LDAP (ldapsearch) and HTTP; a bound user still gets the certificate."""
    data = tmp_path / "data"
    keypost("directory", "init", "--data", str(data))
    settings = data / "directory.toml"
    text = settings.read_text("utf-8")
    assert "genuine_to_anonymous = true" in text  # written by init, TOML's spelling
    settings.write_text(text.replace("genuine_to_anonymous = true",
                                     "genuine_to_anonymous = false"), "utf-8")
    _, pub = write_rsa(tmp_path / "gw.pem")
    keypost("directory", "domain", "add", DOMAIN, "--encryption-cert", str(pub),
            "--data", str(data))
    keypost("directory", "account", "add", USER, "--role", "user", "--domain", DOMAIN,
            "--password-stdin", "--data", str(data), stdin=USER_PW + "\n")
    gina = tmp_path / "gina.pem"
    _, cert = self_signed_file(gina, "Gina", "gina@example.com")
    keypost("directory", "genuine", "add", str(gina), "--data", str(data))
    with serving(data, tmp_path / "serve.log") as urls:
        url = urls["ldap"]
        anonymous = [ldif_certs(ldapsearch(directory, f"{who}@example.com", url=url).stdout)
                     for who in ("gina", "nobody")]
        assert [len(certs) for certs in anonymous] == [1, 1]
        assert all(c.serial_number != cert.serial_number for c in anonymous[0])
        bound = ldif_certs(ldapsearch(directory, "gina@example.com", "-D",
                                      f"uid={USER},dc=keypost", "-w", USER_PW,
                                      url=url).stdout)
        assert [c.serial_number for c in bound][1:] == [cert.serial_number]
        http = urls["http"] + "v1/containers"
        roles = [c["role"] for c in requests.get(http, params={"address": "gina@example.com"},
                                                 timeout=30).json()["results"][0]["containers"]]
        assert roles == ["proxy-encryption"]
        roles = [c["role"] for c in requests.get(
            http, params={"address": "gina@example.com"}, auth=(USER, USER_PW),
            timeout=30).json()["results"][0]["containers"]]
        assert roles == ["proxy-encryption", "genuine"]


def test_gateway_certificate_pem_is_served_with_its_key(directory: Directory,
                                                        tmp_path: Path) -> None:
    # Gateways usually hand over a certificate rather than a bare SPKI (`domain add`
    # takes either): the containers must carry the certificate's public key.
    path = tmp_path / "gateway.crt"
    key, _ = self_signed_file(path, "gateway of cert.example")
    data = str(directory.data)
    keypost("directory", "domain", "add", "cert.example", "--encryption-cert", str(path),
            "--data", data)
    try:
        [c] = lookup(directory, "someone@cert.example")
        assert c["gateway"] == "cert.example" and spki_of(c["pem"]) == spki_der(key)
        ldap = ldif_certs(ldapsearch(directory, "someone@cert.example").stdout)
        assert [spki_of(x.public_bytes(serialization.Encoding.PEM).decode())
                for x in ldap] == [spki_der(key)]
    finally:
        keypost("directory", "domain", "remove", "cert.example", "--data", data)


def test_account_remove_ends_its_rights_on_open_ldap_connections(directory: Directory) -> None:
    # A revoked gateway credential must stop getting signing containers at once, also
    # on a connection that bound before the removal (LDAP clients keep connections open).
    import time

    import ldap3
    from test_directory_ldap_clients import ldap3_certs

    data = str(directory.data)
    keypost("directory", "account", "add", "gw-revoked", "--role", "gateway", "--domain",
            DOMAIN, "--password-stdin", "--data", data, stdin="revoked-pw\n")
    server = ldap3.Server(directory.ldap[0], port=directory.ldap[1], get_info=ldap3.NONE)
    with ldap3.Connection(server, "gw-revoked", "revoked-pw", auto_bind=True) as revoked, \
            ldap3.Connection(server, USER, USER_PW, auto_bind=True) as kept:
        [signing] = ldap3_certs(revoked, "alice@example.com")
        assert spki_der(directory.gateway_signing_key) == signing.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert len(ldap3_certs(kept, "kept@example.org")) == 2  # user: outbound + recipient's
        keypost("directory", "account", "remove", "gw-revoked", "--data", data)
        time.sleep(0.2)  # the server notices store changes within 50 ms
        [after] = ldap3_certs(revoked, "alice@example.com")  # now answered as anonymous
        assert spki_der(directory.gateway_key) == after.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert len(ldap3_certs(kept, "kept@example.org")) == 2  # other accounts unaffected


def test_rekey_to_other_capabilities_takes_effect_at_once(directory: Directory,
                                                          tmp_path: Path) -> None:
    # The documented way to change what a gateway decrypts: `domain rekey` with the same
    # key and new --capabilities. The containers carry the capabilities, but their cache
    # is keyed by the key's fingerprint, which stayed: the old ones were served for hours.
    from keypost.core.containers import describe
    from keypost.core.types import Capability

    _, pub = write_rsa(tmp_path / "gw.pem")
    data = str(directory.data)
    keypost("directory", "domain", "add", "caps.example", "--encryption-cert", str(pub),
            "--capabilities", "aes256-cbc,aes128-cbc", "--data", data)
    try:
        [before] = ldif_certs(ldapsearch(directory, "x@caps.example").stdout)
        assert ldif_certs(ldapsearch(directory, "x@caps.example").stdout) == [before]
        keypost("directory", "domain", "rekey", "caps.example", "--encryption-cert", str(pub),
                "--capabilities", "aes128-cbc", "--data", data)
        [after] = ldif_certs(ldapsearch(directory, "x@caps.example").stdout)
        assert describe(after).capabilities == (Capability.AES128_CBC,)
        assert after.serial_number != before.serial_number
    finally:
        keypost("directory", "domain", "remove", "caps.example", "--data", data)
