"""Actions and the dispatcher: ping, status, configure (keyring), lookup, errors, cache."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import keyring
import pytest
from cryptography import x509
from host_support import PASSWORD, GatewayKeys, call, code, configure, ok
from keyring.backends.fail import Keyring as FailKeyring

from keypost.core.containers import DirectoryCA, sha256_fingerprint
from keypost.host.actions import Host
from keypost.host.cache import ContainerCache
from keypost.host.directory_client import RawContainer
from keypost.host.errors import AuthenticationFailed, DirectoryUnreachable


def test_ping_exchanges_versions(setup: Any) -> None:
    host = setup[0]
    result = ok(host, "ping", protocol=1, version="9.9")
    assert result["protocol"] == 1 and result["addon_version"] == "9.9"
    assert result["host_version"]
    assert code(call(host, "ping", protocol=2, version="x")) == 3
    assert code(call(host, "ping")) == 1


def test_envelope_errors(setup: Any) -> None:
    host = setup[0]
    reply = host.handle({"action": "ping", "params": {"protocol": 1}})
    assert reply["id"] is None and code(reply) == 1
    reply = host.handle({"id": "x", "action": "frobnicate"})
    assert reply["id"] == "x" and code(reply) == 2
    assert reply["error"]["name"] == "unknown_action"
    assert code(host.handle({"id": 2, "action": "ping", "params": [1]})) == 1
    assert code(host.handle({"id": 2, "params": {}})) == 1
    reply = host.handle({"id": "x" * 257, "action": "ping", "params": {"protocol": 1}})
    assert reply["id"] is None and code(reply) == 1


def test_internal_errors_are_reported_without_traceback(setup: Any, ca: DirectoryCA) -> None:
    host, factory, _ = setup
    assert configure(host, ca)["ok"]
    factory.directory.fail = ZeroDivisionError("boom")
    reply = call(host, "lookup", recipients=["bob@example.org"])
    # A bug in a transport is not a directory error the resolver knows: reported as "error"
    # status only when it is a HostError; anything else is an internal error.
    assert code(reply) == 12
    assert "Traceback" not in reply["error"]["message"]


def test_status_unconfigured(setup: Any) -> None:
    result = ok(setup[0], "status")
    assert result["configured"] is False
    assert result["directory"] is None and result["trust_anchor"] is None
    assert result["password_in_keyring"] is False


def test_status_of_a_broken_configuration_says_so_and_configure_repairs_it(
    setup: Any, ca: DirectoryCA, host_dirs: tuple[Path, Path]
) -> None:
    """status is what the installer (its checks, `uninstall --purge`) and the options page
    ask first: a damaged host.toml is reported in it, not an error that stops them before
    configure, which is there to repair it."""
    host = setup[0]
    assert configure(host, ca)["ok"]
    (host_dirs[0] / "host.toml").write_text("directory = [", "utf-8")
    result = ok(host, "status")
    assert result["configured"] is False and result["directory"] is None
    assert "unreadable" in result["config_error"]
    assert result["config_dir"] == str(host_dirs[0])
    assert code(call(host, "lookup", recipients=["bob@example.org"])) == 5
    assert configure(host, ca)["ok"]
    result = ok(host, "status")
    assert result["configured"] is True and result["config_error"] is None


@pytest.mark.parametrize("timeout", ["nan", "inf", "-1", "0", "true", '"10"', "1e300"])
def test_a_hand_edited_timeout_that_is_no_duration_is_named(
    setup: Any, ca: DirectoryCA, host_dirs: tuple[Path, Path], timeout: str
) -> None:
    """host.toml's timeout is documented to be edited by hand: one that is no positive
    number of seconds is a configuration problem naming it, not an internal error on
    every lookup."""
    host = setup[0]
    assert configure(host, ca)["ok"]
    path = host_dirs[0] / "host.toml"
    path.write_text(path.read_text("utf-8").replace("timeout = 10.0", f"timeout = {timeout}"))
    reply = call(Host(host_dirs[0], host_dirs[1], client_factory=setup[1]), "lookup",
                 recipients=["bob@example.org"])
    assert code(reply) == 5 and "timeout" in reply["error"]["message"]


def test_configure_stores_password_only_in_keyring(
    setup: Any, ca: DirectoryCA, host_dirs: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    host, factory, kr = setup
    caplog.set_level(logging.DEBUG)
    reply = configure(host, ca)
    assert reply["ok"], reply
    status = reply["result"]
    assert status["configured"] and status["username"] == "alice"
    assert status["password_in_keyring"] is True
    assert status["trust_anchor"]["fingerprint"] == sha256_fingerprint(ca.certificate)
    assert kr.store[("keypost", "alice")] == PASSWORD
    # The connection test used the new password before anything was saved.
    assert factory.seen == [("ldap://127.0.0.1:3890", "alice", PASSWORD)]
    assert factory.directory.calls == [["connection-test@keypost.invalid"]]
    files = [p for p in host_dirs[0].rglob("*") if p.is_file()]
    assert {p.name for p in files} == {"host.toml", "trust-anchor.pem"}
    for path in files:
        assert PASSWORD.encode() not in path.read_bytes()
        assert path.stat().st_mode & 0o077 == 0
    assert PASSWORD not in caplog.text
    assert PASSWORD not in str(reply)
    # A new session reads the saved configuration and the keyring.
    again = Host(host_dirs[0], host_dirs[1], client_factory=factory)
    assert ok(again, "status")["directory"] == "ldap://127.0.0.1:3890"
    ok(again, "lookup", recipients=["bob@example.org"])
    assert factory.seen[-1] == ("ldap://127.0.0.1:3890", "alice", PASSWORD)


def test_configure_password_null_deletes_and_absent_keeps(setup: Any, ca: DirectoryCA) -> None:
    host, _, kr = setup
    assert configure(host, ca)["ok"]
    params = {"directory": "ldaps://dir.example.com", "username": "alice"}
    assert call(host, "configure", **params)["ok"]  # password absent: kept
    assert kr.store[("keypost", "alice")] == PASSWORD
    reply = call(host, "configure", password=None, test=False, **params)
    assert reply["ok"] and reply["result"]["password_in_keyring"] is False
    assert ("keypost", "alice") not in kr.store
    # Switching accounts removes the previous account's password.
    assert configure(host, ca)["ok"]
    assert configure(host, ca, username="bert", password="bert's secret")["ok"]
    assert kr.store == {("keypost", "bert"): "bert's secret"}


def test_configure_refusals_save_nothing(setup: Any, ca: DirectoryCA,
                                         host_dirs: tuple[Path, Path]) -> None:
    host, factory, kr = setup
    other = DirectoryCA.generate()
    reply = configure(host, ca, trust_anchor_fingerprint=sha256_fingerprint(other.certificate))
    assert code(reply) == 9
    assert reply["error"]["details"]["actual"] == sha256_fingerprint(ca.certificate)
    assert code(configure(host, ca, directory="http://dir.example.com")) == 1
    assert code(configure(host, ca, directory="ftp://127.0.0.1")) == 1
    assert code(configure(host, ca, trust_anchor_pem="not a pem")) == 1
    assert code(configure(host, ca, username=None)) == 1  # a password needs a username
    factory.directory.fail = AuthenticationFailed("the directory refused the user name or password")
    assert code(configure(host, ca)) == 8
    factory.directory.fail = DirectoryUnreachable("cannot reach", {"directory": "x"})
    assert code(configure(host, ca)) == 7
    assert not (host_dirs[0] / "host.toml").exists()
    assert kr.store == {}


def test_anonymous_configuration_and_http_loopback(setup: Any, ca: DirectoryCA) -> None:
    host, factory, _ = setup
    factory.directory.requestor_domain = None
    reply = configure(host, ca, directory="http://127.0.0.1:8080", username=None, password=...)
    assert reply["ok"], reply
    assert reply["result"]["username"] is None
    assert factory.seen[-1] == ("http://127.0.0.1:8080", None, None)


def test_lookup_needs_configuration_and_password(setup: Any, ca: DirectoryCA) -> None:
    host, _, kr = setup
    assert code(call(host, "lookup", recipients=["bob@example.org"])) == 5
    assert configure(host, ca)["ok"]
    kr.store.clear()
    host.close()
    reply = call(host, "lookup", recipients=["bob@example.org"])
    assert code(reply) == 8 and "keyring" in reply["error"]["message"]


def test_lookup_reports_every_recipient_from_one_search(setup: Any, ca: DirectoryCA) -> None:
    host, factory, _ = setup
    assert configure(host, ca)["ok"]
    factory.directory.calls.clear()
    result = ok(host, "lookup", **{"from": "alice@example.com", "recipients": [
        "Bob@Example.ORG", "carol@example.net", "not an address", "dave@example.com"]})
    assert factory.directory.calls == [
        ["Bob@example.org", "carol@example.net", "dave@example.com", "alice@example.com"]]
    bob, carol, junk, dave = result["recipients"]
    assert bob["address"] == "Bob@example.org" and bob["status"] == "ok"
    assert bob["given"] == "Bob@Example.ORG"  # lets the add-on match what was typed
    assert sorted(c["gateway"] for c in bob["containers"]) == ["example.com", "example.org"]
    assert all(c["valid"] and c["used"] and c["role"] == "proxy-encryption"
               for c in bob["containers"])
    assert bob["summary"] == "via the gateways of example.com, example.org"
    assert bob["source"] == "directory"
    # A user of a served domain gets their own gateway for foreign recipients too.
    assert carol["status"] == "ok" and carol["summary"] == "via the gateway of example.com"
    assert junk["status"] == "invalid_address" and junk["containers"] == []
    assert dave["status"] == "ok" and len(dave["containers"]) == 1
    assert result["sender"]["address"] == "alice@example.com"


def test_lookup_reads_each_recipient_string_as_an_address_list(
    setup: Any, ca: DirectoryCA
) -> None:
    host, factory, _ = setup
    assert configure(host, ca)["ok"]
    factory.directory.calls.clear()
    pasted = 'Bob <bob@example.org>, "Doe, Carol" <carol@example.net>'
    result = ok(host, "lookup", recipients=[pasted, "Team: dave@example.com;", "Nobody:;"])
    assert factory.directory.calls == [["bob@example.org", "carol@example.net", "dave@example.com"]]
    assert [(r["address"], r["given"], r["status"]) for r in result["recipients"]] == [
        ("bob@example.org", pasted, "ok"), ("carol@example.net", pasted, "ok"),
        ("dave@example.com", "Team: dave@example.com;", "ok")]


def test_anonymous_lookup_has_no_container_for_unserved_domains(
    setup: Any, ca: DirectoryCA
) -> None:
    host, factory, _ = setup
    factory.directory.requestor_domain = None
    assert configure(host, ca, username=None, password=...)["ok"]
    [carol] = ok(host, "lookup", recipients=["carol@example.net"])["recipients"]
    assert carol["status"] == "no_container" and "carol@example.net" in carol["reason"]


def test_lookup_answers_from_memory_then_disk_cache(
    setup: Any, ca: DirectoryCA, host_dirs: tuple[Path, Path]
) -> None:
    host, factory, _ = setup
    assert configure(host, ca)["ok"]
    factory.directory.calls.clear()
    first = ok(host, "lookup", recipients=["bob@example.org", "carol@example.net"])
    second = ok(host, "lookup", recipients=["bob@example.org", "carol@example.net"])
    assert len(factory.directory.calls) == 1
    assert [r["source"] for r in second["recipients"]] == ["cache", "cache"]
    # The second answer comes from the remembered verification: the same reports.
    assert second["recipients"] == [dict(r, source="cache") for r in first["recipients"]]
    bob = second["recipients"][0]["containers"]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert all("bob@example.org" in c["subject"] and c["not_after"] > now for c in bob)
    assert len({c["fingerprint"] for c in bob}) == 2 == len(bob)
    assert all(len(c["fingerprint"].split(":")) == 32 for c in bob)
    assert not (host_dirs[1] / "containers.json").exists()  # written after the reply
    host.idle()  # what the stdio loop does after writing each reply
    # The reported fingerprints are the core's, of the certificates the directory sent.
    saved = json.loads((host_dirs[1] / "containers.json").read_text())["entries"]
    ders = [base64.b64decode(c["der"]) for key, e in saved.items()
            if key.endswith("|bob@example.org") for c in e["containers"]]
    assert sorted(sha256_fingerprint(x509.load_der_x509_certificate(d)) for d in ders) == sorted(
        c["fingerprint"] for c in bob)
    fresh = Host(host_dirs[0], host_dirs[1], client_factory=factory)
    third = ok(fresh, "lookup", recipients=["bob@example.org", "erin@example.org"])
    assert factory.directory.calls[1:] == [["erin@example.org"]]
    assert third["recipients"][0]["source"] == "cache"
    assert (third["recipients"][0]["containers"] == first["recipients"][0]["containers"])


def test_containers_from_another_ca_are_refused(setup: Any, ca: DirectoryCA,
                                                gateway_keys: GatewayKeys) -> None:
    host, factory, _ = setup
    assert configure(host, ca)["ok"]
    factory.directory.ca = DirectoryCA.generate()  # a directory that is not the pinned one
    [bob] = ok(host, "lookup", recipients=["bob@example.org"])["recipients"]
    assert bob["status"] == "invalid"
    assert all(not c["valid"] and not c["used"] and c["reasons"] for c in bob["containers"])
    assert bob["reason"]


def test_directory_failure_is_a_status_in_lookup(setup: Any, ca: DirectoryCA) -> None:
    host, factory, _ = setup
    assert configure(host, ca)["ok"]
    factory.directory.fail = DirectoryUnreachable("cannot reach the directory", {})
    [bob] = ok(host, "lookup", recipients=["bob@example.org"])["recipients"]
    assert bob["status"] == "error" and "cannot reach" in bob["reason"]
    assert code(call(host, "lookup", recipients="bob@example.org")) == 1


def test_cache_keeps_hits_short_of_not_after_and_misses_for_a_minute(tmp_path: Path) -> None:
    now = [1_000_000.0]
    cache = ContainerCache(tmp_path / "c.json", clock=lambda: now[0])
    hit = [RawContainer(b"\x30\x03\x02\x01\x01", "example.org")]
    cache.put("k-hit", hit, not_after=now[0] + 3600)
    cache.put("k-miss", [], not_after=None)
    cache.put("k-soon", hit, not_after=now[0] + 10)  # expires within the margin: not kept
    cache.flush()
    assert cache.get("k-soon") is None
    now[0] += 59
    reread = ContainerCache(tmp_path / "c.json", clock=lambda: now[0])
    entry = reread.get("k-hit")
    assert entry is not None and list(entry.containers) == hit
    assert reread.get("k-miss") is not None
    now[0] += 2
    assert reread.get("k-miss") is None
    now[0] += 3600
    assert reread.get("k-hit") is None
    (tmp_path / "c.json").write_text("{broken")
    assert ContainerCache(tmp_path / "c.json").get("k-hit") is None


def test_expired_containers_are_reported(setup: Any, ca: DirectoryCA) -> None:
    host, factory, _ = setup
    assert configure(host, ca)["ok"]
    factory.directory.lifetime = dt.timedelta(minutes=5)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    resolver = host._get_resolver()
    found = resolver.resolve(["zed@example.org"], now=later)
    [zed] = found.recipients
    assert zed.status == "invalid"
    assert any("expire" in r or "valid" in r for c in zed.containers for r in c.reasons)


def test_keyring_unavailable(setup: Any, ca: DirectoryCA, host_dirs: tuple[Path, Path]) -> None:
    host = setup[0]
    keyring.set_keyring(FailKeyring())  # type: ignore[no-untyped-call]  # restored by fixture
    reply = configure(host, ca)
    assert code(reply) == 6 and "keyring" in reply["error"]["message"]
    assert PASSWORD not in str(reply)
    assert not (host_dirs[0] / "host.toml").exists()
    status = ok(host, "status")
    assert status["password_in_keyring"] is False  # nothing configured yet
    assert configure(host, ca, username=None, password=...)["ok"]  # anonymous still works
    assert ok(host, "status")["configured"] is True


def test_internationalised_domain_is_looked_up_as_a_label(setup: Any, ca: DirectoryCA) -> None:
    host, factory, _ = setup
    assert configure(host, ca)["ok"]
    factory.directory.calls.clear()
    [entry] = ok(host, "lookup", recipients=["kim@b\u00fccher.example"])["recipients"]
    assert factory.directory.calls == [["kim@xn--bcher-kva.example"]]
    assert entry["address"] == "kim@xn--bcher-kva.example"
    assert entry["given"] == "kim@b\u00fccher.example"


def test_one_directory_client_per_session(setup: Any, ca: DirectoryCA) -> None:
    host, factory, _ = setup
    assert configure(host, ca)["ok"]
    assert len(factory.seen) == 1  # the connection test, closed again
    ok(host, "lookup", recipients=["bob@example.org"])
    ok(host, "lookup", recipients=["erin@example.org"])
    ok(host, "encrypt", **{"from": "alice@example.com", "to": ["frank@example.org"],
                           "body_plain": "x"})
    ok(host, "test_connection")
    assert len(factory.seen) == 2, "lookups, encrypt and the test share the session's client"
    closed = factory.directory.closed
    assert configure(host, ca)["ok"]  # new settings: the old client goes, a new one follows
    assert factory.directory.closed > closed
    ok(host, "lookup", recipients=["gina@example.org"])
    assert len(factory.seen) == 4
