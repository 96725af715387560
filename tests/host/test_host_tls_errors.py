"""describe_tls_failure: ldap3's certificate dumps -> one line for the user."""

from __future__ import annotations

from keypost.host.tls_errors import describe_tls_failure

CERT = (
    "{'subject': ((('commonName', 'ldap.example.com'),),), "
    "'issuer': ((('commonName', 'Example CA'),),), 'version': 3, "
    "'serialNumber': '0A1B', 'notBefore': 'Nov 29 05:57:46 2026 GMT', "
    "'notAfter': 'Nov 30 06:57:46 2026 GMT', "
    "'subjectAltName': (('DNS', 'ldap.example.com'), ('DNS', 'dir.example.com'), "
    "('IP Address', '192.0.2.7'), ('email', 'x@example.com'))}"
)


def mismatch(cert: str, host: str = "directory.example.org") -> str:
    return f"wrap socket error: certificate {cert} doesn't match any name in ['{host}'] "


def test_mismatch_names_the_host_and_the_certificate_names() -> None:
    line = describe_tls_failure(mismatch(CERT), "directory.example.org")
    assert line == (
        "the directory's TLS certificate does not name directory.example.org "
        "(it names ldap.example.com, dir.example.com, 192.0.2.7)"
    )


def test_without_san_the_common_name_counts() -> None:
    cert = "{'subject': ((('commonName', 'old.example.com'),),), 'version': 3}"
    line = describe_tls_failure(mismatch(cert), "h.example")
    assert line == (
        "the directory's TLS certificate does not name h.example (it names old.example.com)"
    )


def test_many_names_are_cut_short() -> None:
    sans = ", ".join(f"('DNS', 'n{i}.example')" for i in range(40))
    line = describe_tls_failure(mismatch("{'subjectAltName': (" + sans + ",)}"), "h.example")
    assert line is not None
    assert line.endswith("(it names n0.example, n1.example, n2.example, n3.example, "
                         "n4.example and 35 more)")


def test_control_characters_in_names_do_not_reach_the_line() -> None:
    cert = "{'subjectAltName': (('DNS', 'evil\\nInjected: yes'),)}"
    line = describe_tls_failure(mismatch(cert), "h.example")
    assert line is not None and "\n" not in line and "evil?Injected: yes" in line


def test_unparsable_dump_still_gives_the_host() -> None:
    line = describe_tls_failure(mismatch("{not python}"), "h.example")
    assert line == "the directory's TLS certificate does not name h.example"


def test_untrusted_certificate() -> None:
    text = ("wrap socket error: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
            "unable to get local issuer certificate (_ssl.c:992)")
    assert describe_tls_failure(text, "h.example") == (
        "the directory's TLS certificate is not trusted (unable to get local issuer certificate)"
    )


def test_other_failures_are_left_to_the_caller() -> None:
    assert describe_tls_failure("socket connection error while opening: [Errno 111]", "h") is None


def test_pythons_own_mismatch_message() -> None:
    """requests (https://) reports the ssl module's check, which names only the host."""
    text = ("HTTPSConnectionPool(host='localhost', port=443): Max retries exceeded (Caused by "
            "SSLError(SSLCertVerificationError(1, \"[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
            "verify failed: IP address mismatch, certificate is not valid for 'localhost'. "
            "(_ssl.c:1006)\")))")
    assert describe_tls_failure(text, "localhost") == (
        "the directory's TLS certificate does not name localhost"
    )
