"""Which directory URLs count as loopback (http:// allowed, plain LDAP without StartTLS):
the rule of keypost.core.netaddr, plus the name `localhost`."""

from __future__ import annotations

from pathlib import Path

import pytest

from keypost.core.dirurl import url_host_is_loopback as is_loopback
from keypost.host.config import CONFIG_FILE, load, parse_directory_url
from keypost.host.errors import BadRequest, NotConfigured


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8080", True),
        ("http://127.3.2.1/", True),
        ("http://[::1]:8080/", True),
        ("http://localhost:8080", True),
        ("http://LocalHost/", True),  # the host name is case-insensitive
        ("http://[::ffff:127.0.0.1]:8080", True),  # IPv4-mapped loopback was refused
        ("http://sub.localhost/", False),  # would be resolved through DNS (see netaddr)
        ("http://192.0.2.1/", False),
        ("http://[::ffff:192.0.2.1]/", False),
        ("http://[2001:db8::1]/", False),
        ("http://directory.example/", False),
    ],
)
def test_http_only_to_loopback(url: str, loopback: bool) -> None:
    if loopback:
        parsed = parse_directory_url(url)
        assert parsed.scheme == "http" and parsed.loopback
    else:
        with pytest.raises(BadRequest, match="only accepted for loopback"):
            parse_directory_url(url)
        assert not parse_directory_url(url.replace("http://", "ldap://", 1)).loopback


def test_ldap_url_loopback_flag_and_helper() -> None:
    assert parse_directory_url("ldap://[::ffff:127.0.0.1]/dc=keypost").loopback
    assert parse_directory_url("ldap://localhost/").loopback
    assert not parse_directory_url("ldaps://ldap.example/").loopback
    assert is_loopback("::ffff:127.0.0.1") and is_loopback("localhost")
    assert not is_loopback("localhost.example") and not is_loopback("")


SECRET = "Tr0ub4dor-SECRET"


@pytest.mark.parametrize(
    "url",
    [
        f"ldaps://alice:{SECRET}@127.0.0.1:99999",  # the security review's example
        f"ldaps://alice:{SECRET}",  # no @: the password reads as a port
        f"ldaps://alice:{SECRET}@[::1:636",
        f"ldaps://alice:{SECRET}@directory.example.net",
        f"http://alice:{SECRET}@directory.example.net",
        f"ftp://alice:{SECRET}@directory.example.net",
    ],
)
def test_a_password_in_the_url_is_never_repeated(url: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse_directory_url(url)
    assert SECRET not in str(err.value) and err.value.details == {"param": "directory"}


def test_a_saved_configuration_never_repeats_a_password_from_its_url(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text(f'directory = "ldaps://alice:{SECRET}@127.0.0.1:99999"\n')
    with pytest.raises(NotConfigured) as err:
        load(tmp_path)
    assert "run configure" in str(err.value) and SECRET not in str(err.value)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("ldap://directory.example:0/", "port is not a number from 1 to 65535"),  # was 389
        ("ldap://::1/", "[brackets]"),  # was called a bad port
        ("ldaps://alice@directory.example/", "username field"),
        ("ftp://directory.example/", "ldaps://, ldap:// or https://"),
    ],
)
def test_refusals_name_the_fix_and_the_parameter(url: str, needle: str) -> None:
    """The host maps keypost.core.dirurl's refusals to BadRequest on `directory`."""
    with pytest.raises(BadRequest) as err:
        parse_directory_url(url)
    assert needle in str(err.value) and err.value.details == {"param": "directory"}


def test_surrounding_spaces_are_dropped_and_the_rest_kept() -> None:
    parsed = parse_directory_url("  LDAPS://Directory.Example:1636/ou=a%20b,dc=x \n")
    assert parsed.url == "LDAPS://Directory.Example:1636/ou=a%20b,dc=x"
    assert (parsed.scheme, parsed.host, parsed.port) == ("ldaps", "directory.example", 1636)
    assert parsed.base == "ou=a b,dc=x" and parsed.is_ldap and not parsed.loopback
    assert parse_directory_url("https://directory.example/v1/").http_base == (
        "https://directory.example:443/v1")
