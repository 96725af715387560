"""Which directory URLs count as loopback (http:// allowed, plain LDAP without StartTLS):
the rule of keypost.core.netaddr, plus the name `localhost`."""

from __future__ import annotations

import pytest

from keypost.host.config import is_loopback, parse_directory_url
from keypost.host.errors import BadRequest


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
