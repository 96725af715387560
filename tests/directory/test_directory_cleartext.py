"""Passwords and TLS: where binds and HTTP Basic may carry a password in clear, and the
HTTP API over TLS (`--https`), with real ldapsearch and requests against `serve`."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from dir_support import (
    GATEWAY,
    GATEWAY_PW,
    SUFFIX,
    USER,
    USER_PW,
    Directory,
    assert_documented,
    serving,
    tls_material,
)

from keypost.core.netaddr import is_loopback_host
from keypost.directory.cleartext import CleartextPolicy, password_allowed


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
        ("::ffff:127.0.0.1", True), ("192.0.2.7", False), ("::ffff:192.0.2.7", False),
        ("2001:db8::1", False), ("fe80::1%eth0", False), ("localhost", False), ("", False),
        ("?", False),
    ],
)
def test_loopback_is_judged_by_address(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
    assert password_allowed(CleartextPolicy.LOOPBACK, host) is loopback
    assert password_allowed(CleartextPolicy.ANYWHERE, host)
    assert not password_allowed(CleartextPolicy.NEVER, host)


def test_https_api_with_basic_credentials(directory: Directory) -> None:
    assert directory.https.startswith("https://127.0.0.1:")
    reply = requests.get(directory.https + "v1/containers",
                         params={"address": "sender@example.com", "purpose": "sign"},
                         auth=(GATEWAY, GATEWAY_PW), verify=str(directory.tls_ca), timeout=30)
    assert reply.status_code == 200, reply.text
    [result] = reply.json()["results"]
    assert [c["role"] for c in result["containers"]] == ["proxy-signing"]
    with pytest.raises(requests.exceptions.SSLError):  # a client that checks refuses others
        requests.get(directory.https + "healthz", timeout=30)


@pytest.fixture(scope="module")
def strict(directory: Directory, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[dict[str, str], Path, Path]]:
    """A second `serve` of the same data with `--cleartext-passwords never`."""
    root = tmp_path_factory.mktemp("strict")
    tls_ca, cert, key = tls_material(root)
    log = root / "serve.log"
    with serving(directory.data, log, "--tls-cert", str(cert), "--tls-key", str(key),
                 "--cleartext-passwords", "never") as urls:
        yield urls, tls_ca, log


def _refused(http: str, protocol: str, result: str) -> int:
    """keypost_requests_total{protocol=..., result=...} from /metrics (0 before the first)."""
    text = requests.get(http + "metrics", timeout=30).text
    line = f'keypost_requests_total{{protocol="{protocol}",result="{result}"}} '
    found = [row for row in text.splitlines() if row.startswith(line)]
    assert len(found) <= 1
    return int(found[0][len(line):]) if found else 0


def _ldapsearch(url: str, tls_ca: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = ["ldapsearch", "-x", "-LLL", "-H", url, "-b", SUFFIX, *extra,
            "(mail=clear@example.org)", "mail"]
    env = {**os.environ, "LDAPTLS_CACERT": str(tls_ca), "LDAPTLS_REQCERT": "demand"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)


def test_ldap_bind_without_tls_is_refused_with_13(
        strict: tuple[dict[str, str], Path, Path]) -> None:
    urls, tls_ca, log = strict
    plain = urls["ldap"].rsplit("/", 1)[0]
    login = ("-D", f"uid={USER},{SUFFIX}", "-w", USER_PW)
    before = _refused(urls["http"], "ldap", "bind_tls_required")
    refused = _ldapsearch(plain, tls_ca, *login)
    assert refused.returncode == 13, refused.stderr  # confidentialityRequired
    assert "TLS" in refused.stderr
    # counted on /metrics (it was not: the refusal came before the backend's counting)
    assert _refused(urls["http"], "ldap", "bind_tls_required") == before + 1
    assert "event=bind_refused reason=cleartext_password" in log.read_text()
    # the password was not even checked: no auth line for it
    assert not re.search(r"event=auth protocol=ldap", log.read_text())
    anonymous = _ldapsearch(plain, tls_ca)
    assert anonymous.returncode == 0 and "mail: clear@example.org" in anonymous.stdout
    starttls = _ldapsearch(plain, tls_ca, "-ZZ", *login)
    assert starttls.returncode == 0, starttls.stderr
    assert "mail: clear@example.org" in starttls.stdout
    ldaps = _ldapsearch(urls["ldaps"].rsplit("/", 1)[0], tls_ca, *login)
    assert ldaps.returncode == 0, ldaps.stderr
    assert _refused(urls["http"], "ldap", "bind_tls_required") == before + 1  # TLS binds: no


def test_http_basic_without_tls_is_refused_with_403(
        strict: tuple[dict[str, str], Path, Path]) -> None:
    urls, tls_ca, _ = strict
    query = {"address": "clear@example.org"}
    before = _refused(urls["http"], "http", "tls_required")
    plain = requests.get(urls["http"] + "v1/containers", params=query,
                         auth=(GATEWAY, GATEWAY_PW), timeout=30)
    assert plain.status_code == 403
    assert plain.json()["error"]["code"] == "tls_required"
    assert_documented(plain.status_code, plain.json(), "/v1/containers")
    assert _refused(urls["http"], "http", "tls_required") == before + 1  # was never counted
    anonymous = requests.get(urls["http"] + "v1/containers", params=query, timeout=30)
    assert anonymous.status_code == 200
    secure = requests.get(urls["https"] + "v1/containers", params=query,
                          auth=(GATEWAY, GATEWAY_PW), verify=str(tls_ca), timeout=30)
    assert secure.status_code == 200, secure.text
    assert _refused(urls["http"], "http", "tls_required") == before + 1
