"""The directory over LDAP with real clients: OpenLDAP's ldapsearch and ldap3 (plain,
StartTLS, LDAPS; anonymous, user and gateway binds)."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import subprocess
from urllib.parse import urlsplit

import ldap3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from dir_support import (
    GATEWAY,
    GATEWAY_PW,
    SUFFIX,
    USER,
    USER_PW,
    Directory,
    openssl_verify,
    spki_der,
)
from ldap3.core.exceptions import LDAPBindError

from keypost.directory.ldap import ber
from keypost.directory.ldap import filters as F
from keypost.directory.ldap import messages as M


def ldapsearch(d: Directory, address: str, *extra: str, url: str | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", url or d.ldap_url,
            "-b", SUFFIX, *extra, f"(mail={address})", "userCertificate", "mail"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def ldif_certs(ldif: str) -> list[x509.Certificate]:
    out = []
    for line in ldif.splitlines():
        name, sep, value = line.partition(":: ")
        if sep and name.lower().startswith("usercertificate"):
            out.append(x509.load_der_x509_certificate(base64.b64decode(value)))
    return out


def check_container(d: Directory, cert: x509.Certificate, address: str, gateway_spki: bytes,
                    purpose: str = "smimeencrypt") -> None:
    pem = cert.public_bytes(serialization.Encoding.PEM)
    verified = openssl_verify(pem, d.ca_file, purpose=purpose)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == [address]
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    assert spki == gateway_spki


def test_ldapsearch_anonymous(directory: Directory) -> None:
    done = ldapsearch(directory, "alice@example.com")
    assert done.returncode == 0, done.stderr
    assert f"dn: mail=alice@example.com,{SUFFIX}" in done.stdout
    [cert] = ldif_certs(done.stdout)
    check_container(directory, cert, "alice@example.com", spki_der(directory.gateway_key))


def test_ldapsearch_user_gets_outbound_container(directory: Directory) -> None:
    done = ldapsearch(directory, "bob@example.org", "-D", f"uid={USER},{SUFFIX}", "-w", USER_PW)
    assert done.returncode == 0, done.stderr
    certs = ldif_certs(done.stdout)
    assert len(certs) == 2
    check_container(directory, certs[0], "bob@example.org", spki_der(directory.gateway_key))
    check_container(directory, certs[1], "bob@example.org", spki_der(directory.other_key))


def test_ldapsearch_gateway_gets_signing_container(directory: Directory) -> None:
    done = ldapsearch(directory, "alice@example.com", "-D", GATEWAY, "-w", GATEWAY_PW)
    assert done.returncode == 0, done.stderr
    [cert] = ldif_certs(done.stdout)
    check_container(directory, cert, "alice@example.com",
                    spki_der(directory.gateway_signing_key), purpose="smimesign")


def test_ldapsearch_wrong_password_is_49(directory: Directory) -> None:
    for name in (f"uid={USER},{SUFFIX}", f"cn=nobody,{SUFFIX}"):
        done = ldapsearch(directory, "alice@example.com", "-D", name, "-w", "wrong")
        assert done.returncode == 49, (done.returncode, done.stderr)
        assert "Invalid credentials" in done.stderr


def test_made_up_address_gets_a_container_like_a_real_one(directory: Directory) -> None:
    made_up = "zz-not-a-mailbox-31415@example.com"
    done = ldapsearch(directory, made_up)
    [cert] = ldif_certs(done.stdout)
    check_container(directory, cert, made_up, spki_der(directory.gateway_key))
    real = ldif_certs(ldapsearch(directory, "alice@example.com").stdout)
    assert [e.oid for e in real[0].extensions] == [e.oid for e in cert.extensions]


def test_ldapsearch_starttls_and_ldaps(directory: Directory) -> None:
    env = {"LDAPTLS_CACERT": str(directory.tls_ca), "LDAPTLS_REQCERT": "demand"}
    tls = ldapsearch(directory, "alice@example.com", "-ZZ", env=env,
                     url=directory.ldap_url)  # libldap checks the IP SAN
    assert tls.returncode == 0, tls.stderr
    check_container(directory, ldif_certs(tls.stdout)[0], "alice@example.com",
                    spki_der(directory.gateway_key))
    ldaps = ldapsearch(directory, "alice@example.com", "-D", USER, "-w", USER_PW, env=env,
                       url=directory.ldaps_url)
    assert ldaps.returncode == 0, ldaps.stderr
    assert len(ldif_certs(ldaps.stdout)) == 1


def ldap3_certs(conn: ldap3.Connection, address: str) -> list[x509.Certificate]:
    assert conn.search(SUFFIX, f"(mail={address})", attributes=["userCertificate;binary"])
    [entry] = conn.response
    raw = entry["raw_attributes"]
    values = next(v for k, v in raw.items() if k.lower().startswith("usercertificate"))
    return [x509.load_der_x509_certificate(v) for v in values]


def test_ldap3_anonymous_user_gateway(directory: Directory) -> None:
    server = ldap3.Server(directory.ldap[0], port=directory.ldap[1], get_info=ldap3.NONE)
    with ldap3.Connection(server, auto_bind=True) as anon:
        [cert] = ldap3_certs(anon, "carol@example.com")
        check_container(directory, cert, "carol@example.com", spki_der(directory.gateway_key))
    with ldap3.Connection(server, f"uid={USER},{SUFFIX}", USER_PW, auto_bind=True) as user:
        assert len(ldap3_certs(user, "dan@example.org")) == 2
    with ldap3.Connection(server, f"cn={GATEWAY},{SUFFIX}", GATEWAY_PW, auto_bind=True) as gw:
        [cert] = ldap3_certs(gw, "carol@example.com")
        check_container(directory, cert, "carol@example.com",
                        spki_der(directory.gateway_signing_key), purpose="smimesign")
    with pytest.raises(LDAPBindError):
        ldap3.Connection(server, f"uid={USER},{SUFFIX}", "wrong", auto_bind=True)
    conn = ldap3.Connection(server, f"uid={USER},{SUFFIX}", "wrong")
    assert not conn.bind() and conn.result["result"] == 49


def test_ldap3_starttls_and_ldaps(directory: Directory) -> None:
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(directory.tls_ca))
    server = ldap3.Server("localhost", port=directory.ldap[1], tls=tls, get_info=ldap3.NONE)
    with ldap3.Connection(server) as conn:
        assert conn.start_tls()
        assert conn.bind()
        assert len(ldap3_certs(conn, "erin@example.com")) == 1
    secure = ldap3.Server("localhost", port=directory.ldaps[1], use_ssl=True, tls=tls,
                          get_info=ldap3.NONE)
    with ldap3.Connection(secure, USER, USER_PW, auto_bind=True) as conn:
        assert len(ldap3_certs(conn, "erin@example.org")) == 2


def test_request_log_has_hashes_not_passwords(directory: Directory) -> None:
    import re

    import requests

    from keypost.directory.controller import address_hash

    ldapsearch(directory, "logged-person@example.com", "-D", USER, "-w", USER_PW)
    # failed binds over LDAP and HTTP, with passwords nobody would log by accident
    wrong_ldap, wrong_http = "Zq8-wrong-ldap-pw", "Zq8-wrong-http-pw"
    assert ldapsearch(directory, "x@example.com", "-D", USER, "-w", wrong_ldap).returncode == 49
    denied = requests.get(directory.http + "v1/containers", params={"address": "x@example.com"},
                          auth=(GATEWAY, wrong_http), timeout=30)
    assert denied.status_code == 401
    requests.get(directory.http + "v1/containers", params={"address": "x@example.com"},
                 auth=(GATEWAY, GATEWAY_PW), timeout=30)
    log = directory.log.read_text()
    # one structured line: requestor class, address hash, roles answered, milliseconds
    line = (r"level=INFO logger=keypost\.directory\.requests event=lookup protocol=ldap"
            rf" requestor=user:example\.com addresses={address_hash('logged-person@example.com')}"
            r" roles=proxy-encryption ms=\d+\.\d\d$")
    assert re.search(line, log, re.MULTILINE), log
    assert "protocol=http requestor=gateway:example.com" in log
    # binds and Basic checks get their line too, right or wrong, the account name hashed
    auth = r"event=auth protocol={} account={} source=127\.0\.0\.1 result={} ms=\d+\.\d\d$"
    for protocol, name, result in (("ldap", USER, "ok"), ("ldap", USER, "invalid"),
                                   ("http", GATEWAY, "invalid"), ("http", GATEWAY, "ok")):
        pattern = auth.format(protocol, address_hash(name.casefold()), result)
        assert re.search(pattern, log, re.MULTILINE), (pattern, log)
    for secret in (USER_PW, GATEWAY_PW, wrong_ldap, wrong_http, "logged-person", USER, GATEWAY):
        assert secret not in log, secret


def test_fresh_answer_serves_the_pkcs7_bundle_when_asked(directory: Directory) -> None:
    # A new address: the answer is fresh, so the LDAP server builds the bundle itself.
    from cryptography.hazmat.primitives.serialization import pkcs7

    argv = ["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", directory.ldap_url,
            "-b", SUFFIX, "(mail=fresh.bundle@example.com)", "userCertificate",
            "userSMIMECertificate"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    certs = ldif_certs(done.stdout)
    [bundle] = [base64.b64decode(line.split(":: ", 1)[1]) for line in done.stdout.splitlines()
                if line.lower().startswith("usersmimecertificate")]
    assert certs and pkcs7.load_der_pkcs7_certificates(bundle) == certs
    check_container(directory, certs[0], "fresh.bundle@example.com",
                    spki_der(directory.gateway_key))


def test_entry_carries_every_attribute_of_the_issue(directory: Directory) -> None:
    # A user asking for an external address gets two containers: the entry must carry
    # both as userCertificate;binary values and as one PKCS#7 userSMIMECertificate.
    from cryptography.hazmat.primitives.serialization import pkcs7

    argv = ["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", directory.ldap_url,
            "-D", f"uid={USER},{SUFFIX}", "-w", USER_PW, "-b", SUFFIX,
            "(|(mail=Entry.Shape@example.org))"]  # no attribute list: all of them
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == f"dn: mail=Entry.Shape@example.org,{SUFFIX}"
    values: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        values.setdefault(name.rstrip(":").lower(), []).append(value.lstrip(": "))
    assert "inetOrgPerson" in values["objectclass"]
    assert values["mail"] == ["Entry.Shape@example.org"] == values["cn"]
    certs = ldif_certs(done.stdout)
    assert len(values["usercertificate;binary"]) == len(certs) == 2
    for cert, key in zip(certs, (directory.gateway_key, directory.other_key), strict=True):
        check_container(directory, cert, "Entry.Shape@example.org", spki_der(key))
    [bundle] = values["usersmimecertificate"]
    in_bundle = pkcs7.load_der_pkcs7_certificates(base64.b64decode(bundle))
    assert sorted(c.public_bytes(serialization.Encoding.DER) for c in in_bundle) == sorted(
        c.public_bytes(serialization.Encoding.DER) for c in certs)


def test_more_addresses_than_the_limit_are_refused_not_cut(directory: Directory) -> None:
    """101 addresses ORed in one filter (the limit is 100, as for HTTP): adminLimitExceeded
    with a diagnostic naming the limit and no entries; before, 100 entries and success
    silently dropped the 101st. 100 addresses still get 100 entries."""
    def search_filter(n: int) -> str:
        return "(|" + "".join(f"(mail=limit{i}@example.com)" for i in range(n)) + ")"

    argv = ["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", directory.ldap_url,
            "-b", SUFFIX]
    over = subprocess.run([*argv, search_filter(101), "mail"], capture_output=True, text=True,
                          timeout=60)
    assert over.returncode == 11, (over.returncode, over.stderr)
    assert "Administrative limit exceeded" in over.stderr
    assert "at most 100" in over.stderr
    assert "dn:" not in over.stdout
    at_limit = subprocess.run([*argv, search_filter(100), "mail"], capture_output=True,
                              text=True, timeout=60)
    assert at_limit.returncode == 0, at_limit.stderr
    assert at_limit.stdout.count("dn: ") == 100

    server = ldap3.Server(directory.ldap[0], port=directory.ldap[1], get_info=ldap3.NONE)
    with ldap3.Connection(server, auto_bind=True) as conn:
        assert not conn.search(SUFFIX, search_filter(101), attributes=["mail"])
        assert conn.result["result"] == 11
        assert "at most 100" in conn.result["message"]
        assert conn.response == []


def test_base_search_of_an_entry_returns_that_entry_only(directory: Directory) -> None:
    """`-s base -b mail=a,<suffix>` reads entry a (under the filter's spelling of it), also
    when the filter names other addresses before it: never another address's entry."""
    for asked in ("bob@example.com", "ALICE@example.com"):
        done = subprocess.run(
            ["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", directory.ldap_url,
             "-s", "base", "-b", f"mail=alice@example.com,{SUFFIX}",
             f"(|(mail=carol@example.com)(mail={asked})(mail=alice@example.com))", "mail"],
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert [line.lower() for line in done.stdout.splitlines() if line.startswith("dn:")
                ] == [f"dn: mail=alice@example.com,{SUFFIX}"], done.stdout


def ldif_entries(ldif: str) -> list[dict[str, list[str]]]:
    """ldapsearch -LLL output as entries of attribute (lower case) -> text values, with
    base64 (`::`) values decoded: non-ASCII DNs and values come as base64."""
    out = []
    for block in ldif.strip().split("\n\n"):
        entry: dict[str, list[str]] = {}
        for line in block.splitlines():
            name, sep, value = line.partition(": ")
            if name.endswith(":"):
                raw = base64.b64decode(value)
                text = raw.decode() if not name.lower().startswith("user") else raw.hex()
                entry.setdefault(name[:-1].lower(), []).append(text)
            elif sep:
                entry.setdefault(name.lower(), []).append(value)
        if entry:
            out.append(entry)
    return out


def names(cert: x509.Certificate) -> list[str]:
    from keypost.core.containers import describe

    return list(describe(cert).addresses)


@pytest.mark.parametrize(
    ("base_address", "suffix", "answered"),
    [
        ("Straße@example.com", SUFFIX, "Straße@example.com"),
        (r"Stra\c3\9fe@example.com", " DC=KEYPOST", "Straße@example.com"),
        ("BOB@EXAMPLE.COM", "dc=KeyPost", "BOB@example.com"),
    ],
)
def test_base_read_of_an_entry_answers_that_mailbox(
    directory: Directory, base_address: str, suffix: str, answered: str
) -> None:
    """`-s base -b mail=Straße@...,<suffix> (objectClass=*)` (a filter naming no address)
    answers Straße@'s entry: its DN, mail and container name Straße@, never strasse@.
    The base DN was case-folded, so the entry, DN and container were strasse@'s (ß -> ss),
    another mailbox. ASCII case still does not matter, nor the suffix's spelling."""
    from keypost.core.address import parse_address
    from keypost.core.containers import names_address

    base = f"mail={base_address},{suffix}"
    done = subprocess.run(
        ["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", directory.ldap_url,
         "-s", "base", "-b", base, "(objectClass=*)", "mail", "userCertificate;binary"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [entry] = ldif_entries(done.stdout)
    assert entry["dn"] == [f"mail={answered},{SUFFIX}"]
    assert entry["mail"] == [answered]
    [cert] = ldif_certs(done.stdout)
    assert names_address(names(cert), parse_address(answered)), names(cert)
    if "ß" in answered:
        assert not names_address(names(cert), parse_address("strasse@example.com"))

    server = ldap3.Server(directory.ldap[0], port=directory.ldap[1], get_info=ldap3.NONE)
    with ldap3.Connection(server, auto_bind=True) as conn:
        assert conn.search(base, "(objectClass=*)", search_scope=ldap3.BASE,
                           attributes=["mail", "userCertificate;binary"])
        [found] = conn.response
        assert found["dn"] == f"mail={answered},{SUFFIX}"
        assert found["attributes"]["mail"] == [answered]
        [der] = next(v for k, v in found["raw_attributes"].items()
                     if k.lower().startswith("usercertificate"))
        assert names(x509.load_der_x509_certificate(der)) == names(cert)
        # the filter naming the other mailbox: nothing (it is an entry of its own)
        if "ß" in answered:
            conn.search(base, "(mail=strasse@example.com)", search_scope=ldap3.BASE,
                        attributes=["mail"])
            assert (conn.result["result"], conn.response) == (0, [])


def test_paged_search_gets_every_container_once(directory: Directory) -> None:
    """ldapsearch -E pr=2 and ldap3's paged_search against a real serve: pages of two."""
    addresses = [f"paged{i}@example.com" for i in range(5)]
    f = "(|" + "".join(f"(mail={a})" for a in addresses) + ")"
    done = subprocess.run(
        ["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", directory.ldap_url,
         "-b", SUFFIX, "-E", "pr=2/noprompt", f, "mail", "userCertificate;binary"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stdout.splitlines() if line.startswith("mail:")] == [
        f"mail: {a}" for a in addresses]
    assert done.stdout.count("# pagedresults:") == 3
    assert [c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            .get_values_for_type(x509.RFC822Name) for c in ldif_certs(done.stdout)] == [
        [a] for a in addresses]
    conn = ldap3.Connection(ldap3.Server(directory.ldap_url, get_info=ldap3.NONE),
                            auto_bind=True)
    got = [e["attributes"]["mail"][0] for e in conn.extend.standard.paged_search(
        SUFFIX, f, attributes=["mail"], paged_size=2, generator=True)]
    assert sorted(got) == addresses
    conn.unbind()


def test_half_closed_connection_is_answered(directory: Directory) -> None:
    """A password bind + pipelined searches, then shutdown(SHUT_WR): every answer, then
    the close. The bind checks the password as a task, still running at the EOF: before,
    the transport closed itself there and nothing at all was answered."""
    url = urlsplit(directory.ldap_url)
    bind = M.BindRequest(3, f"uid={USER},{SUFFIX}", USER_PW.encode())
    data = M.encode_message(M.LDAPMessage(1, bind))
    for i in (2, 3, 4):
        search = M.SearchRequest(SUFFIX, M.Scope.SUB, M.DerefAliases.NEVER, 0, 0, False,
                                 F.EqualityMatch("mail", f"halfclosed{i}@example.com".encode()),
                                 ("mail",))
        data += M.encode_message(M.LDAPMessage(i, search))
    with socket.create_connection((str(url.hostname), url.port or 389), timeout=30) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    first = reply[: ber.frame_length(reply) or 0]
    got = []
    while reply:
        n = ber.frame_length(reply)
        assert n is not None
        msg = M.decode_message(reply[:n])
        got.append((msg.message_id, type(msg.op).__name__))
        reply = reply[n:]
    assert got == [(1, "BindResponse")] + [
        (i, kind) for i in (2, 3, 4) for kind in ("SearchResultEntry", "SearchResultDone")]
    assert M.decode_message(first).op == M.BindResponse(M.LDAPResult(M.ResultCode.SUCCESS))


def test_one_entry_per_mailbox_however_often_the_filter_spells_it(directory: Directory) -> None:
    """`a@x`, `a@x.` and `<a@x>` (or U-labels and A-labels of one domain) are one mailbox:
    the search returned the entry `mail=a@x,<suffix>` once per spelling, one DN several
    times in one answer (an entry matches a filter or not), and each spelling counted
    against max_addresses. ldapsearch against a real serve."""
    terms = ("dup@example.com", "dup@example.com.", "<Dup@example.com>", "dup@EXAMPLE.com",
             "dup@bücher.example", "dup@xn--bcher-kva.example")
    done = subprocess.run(
        ["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", directory.ldap_url, "-b",
         SUFFIX, "(|" + "".join(f"(mail={t})" for t in terms) + ")", "mail"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    dns = [line for line in done.stdout.splitlines() if line.startswith("dn:")]
    assert dns == [f"dn: mail=dup@example.com,{SUFFIX}",
                   f"dn: mail=dup@xn--bcher-kva.example,{SUFFIX}"], done.stdout
