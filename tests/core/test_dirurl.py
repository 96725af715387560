"""keypost.core.dirurl: the one reader of directory URLs, table by table."""

from __future__ import annotations

import pytest

from keypost.core.dirurl import DirectoryUrl, DirectoryUrlError, UrlProblem, parse_directory_url

SECRET = "Tr0ub4dor-secret"


@pytest.mark.parametrize(
    ("text", "scheme", "host", "port", "base"),
    [
        ("ldaps://keys.example.org/", "ldaps", "keys.example.org", 636, "dc=keypost"),
        ("ldap://keys.example.org", "ldap", "keys.example.org", 389, "dc=keypost"),
        ("https://keys.example.org", "https", "keys.example.org", 443, ""),
        ("https://keys.example.org:8443/v1/", "https", "keys.example.org", 8443, "/v1"),
        ("LDAPS://Keys.Example.ORG:1636/DC=Example", "ldaps", "keys.example.org", 1636,
         "DC=Example"),  # the base DN keeps its case: only scheme and host are folded
        ("ldap://[2001:DB8::1]:3890/ou=a%20b,dc=x", "ldap", "2001:db8::1", 3890, "ou=a b,dc=x"),
        ("ldap://[::1]/", "ldap", "::1", 389, "dc=keypost"),
        ("ldap://keys.example.org:/", "ldap", "keys.example.org", 389, "dc=keypost"),
        ("ldap://keys.example.org:65535", "ldap", "keys.example.org", 65535, "dc=keypost"),
        ("http://localhost:8080/", "http", "localhost", 8080, ""),
    ],
)
def test_accepted(text: str, scheme: str, host: str, port: int, base: str) -> None:
    url = parse_directory_url(text, ldap_base="dc=keypost")
    assert (url.url, url.scheme, url.host, url.port, url.base) == (text, scheme, host, port, base)
    assert url.is_ldap is scheme.startswith("ldap")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ldap://[::1/", UrlProblem.UNREADABLE_HOST),  # unclosed bracket
        ("ldap://::1/", UrlProblem.UNREADABLE_HOST),  # IPv6 without brackets
        ("ldap://2001:db8::1:389/", UrlProblem.UNREADABLE_HOST),
        ("ldap://[::1]x/", UrlProblem.UNREADABLE_HOST),  # urlsplit ignores the "x"
        ("ldap://[127.0.0.1]/", UrlProblem.UNREADABLE_HOST),  # brackets are for IPv6
        ("ldap://[v1.x]/", UrlProblem.UNREADABLE_HOST),
        ("ldap://ex%41mple.org/", UrlProblem.UNREADABLE_HOST),
        ("ldap://keys.example.org:65536/", UrlProblem.BAD_PORT),
        ("ldap://keys.example.org:0/", UrlProblem.BAD_PORT),  # was silently the default
        ("ldap://keys.example.org:ldap/", UrlProblem.BAD_PORT),
        ("ldap://keys.example.org:+389/", UrlProblem.BAD_PORT),
        ("ldap://keys.example.org:\u0663\u0668\u0669/", UrlProblem.CHARACTERS),
        ("ldap://keys.example.org:" + "9" * 5000, UrlProblem.BAD_PORT),
        ("ldap://[::1]:99999/", UrlProblem.BAD_PORT),
        ("ldaps://alice@keys.example.org/", UrlProblem.CREDENTIALS),
        ("ftp://keys.example.org/", UrlProblem.WRONG_SCHEME),
        ("mailto:keys@example.org", UrlProblem.WRONG_SCHEME),
        ("keys.example.org", UrlProblem.WRONG_SCHEME),
        ("keys.example.org:636", UrlProblem.WRONG_SCHEME),
        ("", UrlProblem.WRONG_SCHEME),
        ("ldap://", UrlProblem.NO_HOST),
        ("ldaps:///dc=keypost", UrlProblem.NO_HOST),
        ("https://:8443/", UrlProblem.NO_HOST),
        ("https://d\u00efr.example/", UrlProblem.CHARACTERS),
        ("https://keys.example.org/a b", UrlProblem.CHARACTERS),
        (" https://keys.example.org/", UrlProblem.CHARACTERS),  # callers strip if they wish
        ("https://keys.example.org/\n", UrlProblem.CHARACTERS),
        ("https://keys.exa\tmple.org/", UrlProblem.CHARACTERS),  # urlsplit drops tabs
        ("https://keys.example.org/\x7f", UrlProblem.CHARACTERS),
        ("http://keys.example.org/", UrlProblem.HTTP_NOT_LOOPBACK),
        ("ldap://[fe80::1%25eth0]/", UrlProblem.UNREADABLE_HOST),  # a zone ID
        ("ldap://keys.example.org/dc=x??sub?(mail=*)", UrlProblem.EXTRA_PARTS),
        ("https://keys.example.org/v1?x=1", UrlProblem.EXTRA_PARTS),
        ("https://keys.example.org/#top", UrlProblem.EXTRA_PARTS),
        ("https://keys.example.org/?", UrlProblem.EXTRA_PARTS),
        ("https://keys.example.org/a@b", UrlProblem.CREDENTIALS),
    ],
)
def test_refused(text: str, problem: UrlProblem) -> None:
    with pytest.raises(DirectoryUrlError) as err:
        parse_directory_url(text)
    assert err.value.problem is problem
    message = str(err.value)
    assert message == f"invalid directory URL: {err.value.reason}"
    assert "\n" not in message  # echoing is tested with a password below


@pytest.mark.parametrize(
    "text",
    [
        f"ldaps://alice:{SECRET}",  # no "@": the password reads as the port
        f"ldaps://alice:{SECRET}/dc=keypost",
        f"ldaps://alice:{SECRET}@keys.example.org",
        f"ldaps://alice:{SECRET}@keys.example.org:99999",
        f"ldaps://alice:{SECRET}@[::1:636",
        f"ldap://{SECRET}@/",
        f"http://alice:{SECRET}@keys.example.org",
        f"ftp://alice:{SECRET}@keys.example.org",
        f"ldaps://alice:{SECRET} @keys.example.org",
        f"ldaps://[::1]:{SECRET}",
        # digits first: urlsplit reads them as the port and the rest as query, fragment
        # or path, with the host "alice"
        f"ldaps://alice:2024?{SECRET}@keys.example.org",
        f"ldaps://alice:1#{SECRET}@keys.example.org",
        f"https://alice:1/{SECRET}@keys.example.org",
        f"ldap://alice:389/{SECRET}@keys.example.org/dc=keypost",
    ],
)
def test_a_password_in_the_url_is_in_no_message(text: str) -> None:
    for http_anywhere in (False, True):
        with pytest.raises(DirectoryUrlError) as err:
            parse_directory_url(text, http_anywhere=http_anywhere)
        assert SECRET not in str(err.value) and SECRET.lower() not in str(err.value).lower()


def test_the_password_as_port_and_after_at_are_named_as_such() -> None:
    for text, problem in ((f"ldaps://alice:{SECRET}", UrlProblem.BAD_PORT),
                          (f"ldaps://alice:{SECRET}@host", UrlProblem.CREDENTIALS)):
        with pytest.raises(DirectoryUrlError) as err:
            parse_directory_url(text)
        assert err.value.problem is problem


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LocalHost", True),
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("[::1]", True),
        ("[::ffff:127.0.0.1]", True),
        ("sub.localhost", False),  # resolved through DNS (keypost.core.netaddr)
        ("127.1", False),  # loopback only in the resolver's eyes
        ("192.0.2.1", False),
        ("[::ffff:192.0.2.1]", False),
        ("[2001:db8::1]", False),
        ("keys.example.org", False),
    ],
)
def test_http_only_to_loopback_unless_allowed(host: str, loopback: bool) -> None:
    text = f"http://{host}:8080/v1"
    if loopback:
        assert parse_directory_url(text).loopback
    else:
        with pytest.raises(DirectoryUrlError) as err:
            parse_directory_url(text)
        assert err.value.problem is UrlProblem.HTTP_NOT_LOOPBACK
        assert "use https://" in str(err.value)
    anywhere = parse_directory_url(text, http_anywhere=True)
    assert anywhere.loopback is loopback and anywhere.base == "/v1"
    assert parse_directory_url(f"ldap://{host}/").loopback is loopback


def test_the_scheme_advice_follows_the_http_rule() -> None:
    with pytest.raises(DirectoryUrlError) as strict:
        parse_directory_url("ftp://keys.example.org/")
    assert "http:// for loopback only" in str(strict.value)
    with pytest.raises(DirectoryUrlError) as lax:
        parse_directory_url("ftp://keys.example.org/", http_anywhere=True)
    assert "https:// or http://" in str(lax.value)


def test_ldap_base_from_the_path_or_the_callers_default() -> None:
    assert parse_directory_url("ldap://h/dc=example,dc=org", ldap_base="dc=x").base == (
        "dc=example,dc=org")
    assert parse_directory_url("ldap://h", ldap_base="dc=x").base == "dc=x"
    assert parse_directory_url("ldap://h/").base == ""
    assert parse_directory_url("https://h/", ldap_base="dc=x").base == ""  # HTTP: a path


def test_http_base_keeps_the_path_as_written() -> None:
    url = parse_directory_url("https://keys.example.org/a%3Fb/%2541/")
    assert url.base == "/a%3Fb/%2541"
    assert url.http_base == "https://keys.example.org:443/a%3Fb/%2541"


def test_http_base_puts_brackets_back() -> None:
    assert parse_directory_url("https://[2001:db8::1]/v1/").http_base == (
        "https://[2001:db8::1]:443/v1")
    assert parse_directory_url("HTTPS://Keys.Example.org").http_base == (
        "https://keys.example.org:443")
    assert DirectoryUrl("x", "http", "::1", 80, "", True).http_base == "http://[::1]:80"
