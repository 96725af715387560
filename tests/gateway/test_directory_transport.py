"""The directory password never crosses a network in clear: http:// and plain LDAP are for
loopback only, and ldap:// to any other host starts TLS before the bind.

`127.1` reaches this machine's 127.0.0.1 (the resolver reads it as inet_aton does) but is not
a loopback address *by its text*, which is how the gateway judges (keypost.core.netaddr): so
a listener on 127.0.0.1 can stand in for a directory on another host and record what the
gateway would put on the wire."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from gw_support import KEYPOST, Pki
from port_util import refusing_port

from keypost.core.address import parse_address
from keypost.core.types import Purpose
from keypost.gateway.config import DirectoryConfig, parse_config
from keypost.gateway.directory import (
    DirectoryFiles,
    LdapFetcher,
    load_directory_files,
    make_directory,
)
from keypost.gateway.errors import ConfigError, DirectoryUnavailable

PASSWORD = "gw-directory-secret-4711"
STARTTLS_OID = b"1.3.6.1.4.1.1466.20037"


class Recorder:
    """A listener on 127.0.0.1 that keeps every byte its peers send before closing on them."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self.connections = 0
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                # the first request only: nothing is answered, the peer gives up (and
                # closes, which ends the wait; 1 s here missed a request sent later than
                # that by a client on a loaded machine)
                conn.settimeout(30)
                with contextlib.suppress(OSError):
                    self.received += conn.recv(65536)

    def stop(self) -> None:
        self.running = False
        self.thread.join(5)
        self.sock.close()


@contextmanager
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    try:
        yield r
    finally:
        r.stop()


def _directory(url: str, **extra: object) -> dict[str, object]:
    return {"directory": {"url": url, "username": "cn=gw-example,ou=accounts,dc=keypost",
                          "password_env": "GW_TEST_PASSWORD", "trust_anchor": "ca.pem",
                          **extra}}


@pytest.mark.parametrize(
    ("url", "extra", "setting"),
    [
        ("http://directory.example.net", {}, "directory.url"),
        ("http://192.0.2.7:8080/keypost", {}, "directory.url"),
        ("http://127.1:8080", {}, "directory.url"),  # loopback only in the resolver's eyes
        ("ldap://directory.example.net", {"starttls": False}, "directory.starttls"),
        ("ldap://[2001:db8::1]:389", {"starttls": False}, "directory.starttls"),
    ],
)
def test_a_password_in_clear_to_another_host_is_refused_at_load(
    tmp_path: Path, url: str, extra: dict[str, object], setting: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_directory(url, **extra), tmp_path)
    message = str(err.value)
    assert message.startswith(f"{setting}: ") and "\n" not in message
    assert ("use https://" if setting == "directory.url" else "ldaps://") in message


@pytest.mark.parametrize(
    ("url", "starttls"),
    [
        ("ldap://directory.example.net/dc=keypost", True),  # StartTLS by default off loopback
        ("ldap://127.0.0.1:3890", False),
        ("ldap://[::1]:3890", False),
        ("ldap://localhost:3890", False),
        ("ldaps://directory.example.net", False),  # TLS from the first byte
    ],
)
def test_starttls_is_the_default_for_ldap_to_another_host(
    tmp_path: Path, url: str, starttls: bool
) -> None:
    assert parse_config(_directory(url), tmp_path).directory.starttls is starttls


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://[::1]:8080",
                                 "http://localhost:8080", "https://directory.example.net"])
def test_http_to_loopback_and_https_anywhere_are_accepted(tmp_path: Path, url: str) -> None:
    assert parse_config(_directory(url), tmp_path).directory.url == url


def test_ldap_to_another_host_sends_starttls_before_any_bind(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_TEST_PASSWORD", PASSWORD)
    with recorder() as wire:
        cfg = parse_config(_directory(f"ldap://127.1:{wire.port}/dc=keypost"), pki.root)
        directory = make_directory(cfg.directory, 2.0, load_directory_files(cfg.directory))
        with pytest.raises(DirectoryUnavailable):  # the recorder never answers StartTLS
            directory.encryption_certificates(parse_address("bob@partner.org"))
    assert wire.connections >= 1
    assert STARTTLS_OID in wire.received  # an ExtendedRequest, not a BindRequest
    assert PASSWORD.encode() not in wire.received
    assert b"gw-example" not in wire.received  # the bind (name and password) never went out


def test_http_to_another_host_built_in_code_never_connects(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """make_directory applies the same rule to a DirectoryConfig that parse_config did not
    check, so no caller can open a clear channel by building the settings by hand."""
    monkeypatch.setenv("GW_TEST_PASSWORD", PASSWORD)
    with recorder() as wire:
        cfg = DirectoryConfig(url=f"http://127.1:{wire.port}", username="gw-example",
                              password_env="GW_TEST_PASSWORD", trust_anchor=pki.path("ca.pem"))
        with pytest.raises(ConfigError, match="use https://"):
            files = DirectoryFiles((pki.ca.certificate,), (), PASSWORD)
            make_directory(cfg, 2.0, files).encryption_certificates(
                parse_address("bob@partner.org"))
    assert wire.connections == 0 and not wire.received


def test_check_config_reports_the_refusal_in_one_line(pki: Pki) -> None:
    config = pki.config(next_hop=2525, directory='url = "http://directory.example.net"\n'
                                                  'trust_anchor = "ca.pem"')
    run = subprocess.run([*KEYPOST, "gateway", "check-config", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "directory.url" in lines[0] and "https://" in lines[0], lines


# A password typed into the URL is never repeated -------------------------------------

SECRET = "Tr0ub4dor-SECRET"


@pytest.mark.parametrize(
    "url",
    [
        f"ldaps://gw:{SECRET}@directory.example.net",
        f"ldap://gw:{SECRET}@127.0.0.1:3890/dc=keypost",
        f"https://gw:{SECRET}@directory.example.net:99999",
        f"ldaps://gw:{SECRET}",  # no @: the password reads as a port
        f"ldaps://gw:{SECRET}@[::1:636",
    ],
)
def test_a_password_in_the_url_is_refused_and_never_repeated(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_directory(url), tmp_path)
    assert str(err.value).startswith("directory.url: ") and SECRET not in str(err.value)


def test_check_config_never_prints_a_password_from_the_url(pki: Pki) -> None:
    config = pki.config(next_hop=2525, directory=f'url = "ldap://gw:{SECRET}@127.0.0.1:3890"\n'
                                                  'trust_anchor = "ca.pem"')
    run = subprocess.run([*KEYPOST, "gateway", "check-config", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "directory.url" in run.stderr
    assert SECRET not in run.stdout + run.stderr


# The URL is read by keypost.core.dirurl: case, brackets and the base DN ---------------


def test_scheme_and_host_are_read_in_any_case(tmp_path: Path) -> None:
    """Upper case was refused as an unknown scheme; the fetcher is chosen by the parsed
    scheme, so HTTPS:// cannot end up with the LDAP client, nor HTTP:// escape the rule."""
    assert parse_config(_directory("LDAPS://Directory.Example.NET"), tmp_path).directory.url
    assert parse_config(_directory("LDAP://Directory.Example.NET"), tmp_path).directory.starttls
    with pytest.raises(ConfigError, match=r"^directory\.url: http:// would send"):
        parse_config(_directory("HTTP://directory.example.net"), tmp_path)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("ldap://::1/dc=keypost", "[brackets]"),
        ("ldap://127.0.0.1:0", "port is not a number from 1 to 65535"),
        ("ldap://gw@127.0.0.1", "username and its password in password_file"),
    ],
)
def test_refusals_name_the_setting_and_the_fix(tmp_path: Path, url: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_directory(url), tmp_path)
    assert str(err.value).startswith("directory.url: ") and needle in str(err.value)


def test_an_unreadable_url_built_in_code_is_a_config_error(pki: Pki) -> None:
    """make_directory refused only a clear channel; an unreadable URL failed later with
    urllib's ValueError, whose text quotes the port (a password, in "ldaps://gw:pw")."""
    for url in ("ldaps://[::1", f"ldaps://gw:{SECRET}"):
        cfg = DirectoryConfig(url=url, trust_anchor=pki.path("ca.pem"))
        with pytest.raises(ConfigError, match=r"^directory\.url: ") as err:
            make_directory(cfg, 2.0, DirectoryFiles((pki.ca.certificate,)))
        assert SECRET not in str(err.value)


def test_ldap_base_and_port_come_from_the_url() -> None:
    fetcher = LdapFetcher(DirectoryConfig(url="ldaps://[::1]/ou=key%20post,dc=x"), None, 1.0)
    assert fetcher.base == "ou=key post,dc=x"  # RFC 4516: the DN is percent-encoded
    assert (fetcher.server.host, fetcher.server.port, fetcher.server.ssl) == ("::1", 636, True)
    assert LdapFetcher(DirectoryConfig(url="ldap://[::1]", base="dc=y"), None, 1.0).base == "dc=y"


def test_a_directory_that_refuses_connections_is_named_so_every_time() -> None:
    """ldap3 remembers an address that refused a connection for 5 s and then answers "invalid
    server address" without trying: the fetcher's retry, and every message in those
    seconds, logged that instead of the refused connection (and gave up untried)."""
    with refusing_port() as port:  # held: no other process's server can answer there
        fetcher = LdapFetcher(DirectoryConfig(url=f"ldap://127.0.0.1:{port}"), None, 2.0)
        for _ in range(2):
            with pytest.raises(DirectoryUnavailable) as err:
                fetcher.fetch(parse_address("bob@partner.org"), Purpose.ENCRYPT)
            assert "invalid server address" not in str(err.value)
            assert "refused" in str(err.value), err.value
