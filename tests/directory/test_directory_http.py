"""The HTTP API through a real HTTP client (requests) against `keypost directory serve`."""

from __future__ import annotations

import ast
import base64
import json
import re
import socket
from pathlib import Path
from typing import Any
from unittest.mock import ANY
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from dir_support import (
    DOMAIN,
    GATEWAY,
    GATEWAY_PW,
    USER,
    USER_PW,
    Directory,
    assert_documented,
    openssl_verify,
    spki_der,
)

from keypost.directory import http
from keypost.directory.http import ROUTES, openapi_document


def get(d: Directory, *addresses: str, purpose: str | None = None,
        auth: tuple[str, str] | None = None) -> requests.Response:
    params: list[tuple[str, str]] = [("address", a) for a in addresses]
    if purpose:
        params.append(("purpose", purpose))
    return requests.get(d.http + "v1/containers", params=params, auth=auth, timeout=30)


def spki_of(pem: str) -> bytes:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def containers(resp: requests.Response) -> list[dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    [result] = resp.json()["results"]
    out: list[dict[str, Any]] = result["containers"]
    return out


def test_anonymous_lookup_verifies_with_openssl(directory: Directory) -> None:
    resp = get(directory, "alice@example.com")
    [c] = containers(resp)
    assert resp.json()["results"][0]["address"] == "alice@example.com"
    assert c["role"] == "proxy-encryption" and c["format"] == "x509"
    assert c["gateway"] == DOMAIN and c["directory"] == "ldap://127.0.0.1/"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", c["not_after"])
    verified = openssl_verify(c["pem"], directory.ca_file)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    cert = x509.load_pem_x509_certificate(c["pem"].encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["alice@example.com"]
    assert spki_of(c["pem"]) == spki_der(directory.gateway_key)


def test_user_gets_outbound_container_for_external_address(directory: Directory) -> None:
    cs = containers(get(directory, "bob@example.org", auth=(USER, USER_PW)))
    assert [c["gateway"] for c in cs] == [DOMAIN, "example.org"]
    assert spki_of(cs[0]["pem"]) == spki_der(directory.gateway_key)
    assert spki_of(cs[1]["pem"]) == spki_der(directory.other_key)
    # anonymous asking the same gets only the recipient's gateway
    assert [c["gateway"] for c in containers(get(directory, "bob@example.org"))] == [
        "example.org"]


def test_gateway_gets_signing_container(directory: Directory) -> None:
    [c] = containers(get(directory, "alice@example.com", purpose="sign",
                         auth=(GATEWAY, GATEWAY_PW)))
    assert c["role"] == "proxy-signing"
    assert spki_of(c["pem"]) == spki_der(directory.gateway_signing_key)
    ok = openssl_verify(c["pem"], directory.ca_file, purpose="smimesign")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    refused = get(directory, "alice@example.com", purpose="sign")
    assert refused.status_code == 200
    [result] = refused.json()["results"]
    assert result["containers"] == [] and "gateway" in result["refused"]


def test_made_up_address_looks_like_a_real_one(directory: Directory) -> None:
    real = containers(get(directory, "alice@example.com"))
    fake = containers(get(directory, "no-such-person-7f3a@example.com"))
    assert [(c["role"], c["gateway"]) for c in real] == [(c["role"], c["gateway"]) for c in fake]
    assert openssl_verify(fake[0]["pem"], directory.ca_file).returncode == 0


def test_several_addresses_in_one_request(directory: Directory) -> None:
    resp = get(directory, "a@example.com", "b@example.org", "c@unserved.example")
    assert [r["address"] for r in resp.json()["results"]] == [
        "a@example.com", "b@example.org", "c@unserved.example"]
    assert [len(r["containers"]) for r in resp.json()["results"]] == [1, 1, 0]


def test_wrong_password_is_401(directory: Directory) -> None:
    for auth in ((USER, "wrong"), ("nobody", "wrong")):
        resp = get(directory, "alice@example.com", auth=auth)
        assert resp.status_code == 401
        assert resp.headers["WWW-Authenticate"].startswith("Basic")
        assert resp.json()["error"]["code"] == "invalid_credentials"
        assert_documented(resp.status_code, resp.json(), "/v1/containers")
        assert "nobody" not in resp.text


def test_bad_input_is_400(directory: Directory) -> None:
    cases = {
        "missing_address": get(directory),
        "invalid_address": get(directory, "not an address"),
        "invalid_purpose": get(directory, "a@example.com", purpose="decrypt"),
        "too_many_addresses": get(directory, *[f"u{i}@example.com" for i in range(101)]),
    }
    for code, resp in cases.items():
        assert resp.status_code == 400, (code, resp.text)
        assert resp.json()["error"]["code"] == code
        assert resp.json()["error"]["message"]
        assert_documented(resp.status_code, resp.json(), "/v1/containers")
    assert requests.get(directory.http + "nope", timeout=10).json()["error"]["code"] == "not_found"
    # `keypost start` and `serve` print the API's root URL: opened as it is, it shows the way
    root = requests.get(directory.http, timeout=10)
    assert root.status_code == 404 and root.json()["error"]["code"] == "not_found"
    assert "/v1/containers" in root.json()["error"]["message"]
    assert "/openapi.json" in root.json()["error"]["message"]


def test_trust_anchor_health_and_metrics(directory: Directory) -> None:
    ca = requests.get(directory.http + "v1/ca", timeout=10)
    assert ca.status_code == 200 and ca.text.encode() in directory.ca_file.read_bytes()
    assert requests.get(directory.http + "healthz", timeout=10).json()["status"] == "ok"
    get(directory, "metrics@example.com")
    text = requests.get(directory.http + "metrics", timeout=10).text
    assert re.search(r'keypost_requests_total\{protocol="http",result="ok"\} [1-9]', text)
    assert re.search(r'keypost_containers_issued_total\{role="proxy-encryption"\} [1-9]', text)
    assert re.search(r"keypost_cache_misses_total [1-9]", text)
    assert re.search(r"keypost_cache_hits_total \d", text)
    assert 'keypost_request_duration_seconds_bucket{protocol="http",le="+Inf"}' in text
    # the cyclic GC stops every connection: its pauses are shown, what lives as long as the
    # process (frozen at start) is out of its sight
    assert re.search(r'keypost_gc_pause_seconds_total\{generation="0"\} \d+\.\d+', text)
    assert re.search(r'keypost_gc_pause_seconds_max\{generation="2"\} \d+\.\d+', text)
    assert re.search(r'python_gc_collections_total\{generation="0"\} [1-9]', text)
    assert re.search(r'keypost_cache_entries\{cache="containers"\} [1-9]', text)
    assert 'keypost_cache_capacity{cache="answers"} 25000' in text
    frozen = re.search(r"python_gc_frozen_objects (\d+)", text)
    assert frozen and int(frozen.group(1)) > 10_000


def test_openapi_lists_every_route(directory: Directory) -> None:
    served = requests.get(directory.http + "openapi.json", timeout=10).json()
    assert served == openapi_document()
    assert served["openapi"].startswith("3.1")
    assert {path for path, _ in ROUTES} == set(served["paths"])
    for path in served["paths"]:
        assert set(served["paths"][path]) == {"get"}
        status = requests.get(directory.http + path.lstrip("/"), timeout=10).status_code
        # the questions without their parameters are malformed
        assert status == (400 if path in ("/v1/containers", "/v1/bindings") else 200), path


def _errors_in_source() -> list[tuple[str, int, str]]:
    """(function, status, code) of every error answer written in the HTTP module:
    `_error(status, "code", ...)` calls and `RequestError("code", ...)` (always 400)."""
    tree = ast.parse(Path(http.__file__).read_text(encoding="utf-8"))
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(func):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            args = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
            if node.func.id == "_error" and func.name != "_error":
                if ast.unparse(node.args[1]) == "exc.code":
                    continue  # a RequestError's code: those are collected where raised
                assert isinstance(args[0], int) and isinstance(args[1], str), ast.unparse(node)
                found.append((func.name, args[0], args[1]))
            elif node.func.id == "RequestError":
                assert isinstance(args[0], str), ast.unparse(node)
                found.append((func.name, 400, args[0]))
    return found


def test_openapi_documents_every_error_the_server_can_send() -> None:
    """Each code the source can emit is in the Error enum (and the enum holds no other),
    and each status the /v1/containers handlers send is among its documented responses;
    only the generic 404/405/500 of the middleware and of aiohttp's handler (handle_error)
    belong to no one path."""
    doc = openapi_document()
    errors = _errors_in_source()
    enum = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"][
        "enum"]
    assert {"tls_required", "too_many_addresses", "not_found", "busy", "malformed_request"} <= {
        c for _, _, c in errors}
    assert {c for _, _, c in errors} == set(enum)
    documented = set(doc["paths"]["/v1/containers"]["get"]["responses"])
    for func, status, code in errors:
        if func not in ("errors_middleware", "handle_error") or status == 400:
            assert str(status) in documented, (func, status, code)
    # /metrics checks Basic credentials of non-loopback peers with the same function, and
    # /v1/bindings of every peer
    for path, handler in (("/metrics", "metrics"), ("/v1/bindings", "bindings")):
        documented = set(doc["paths"][path]["get"]["responses"])
        for func, status, code in errors:
            if func in (handler, "_requestor_account") or (
                    func == "errors_middleware" and status == 400):
                assert str(status) in documented, (path, func, status, code)


def test_wrong_method_is_405_with_allow(directory: Directory) -> None:
    """RFC 9110 15.5.6: a 405 MUST say which methods the resource has (Allow)."""
    for path in ("v1/containers", "healthz"):
        resp = requests.post(directory.http + path, timeout=10)
        assert resp.status_code == 405
        assert resp.json()["error"]["code"] == "method_not_allowed"
        assert {m.strip() for m in resp.headers["Allow"].split(",")} == {"GET", "HEAD"}


def test_basic_credentials_with_non_ascii_bytes_are_400(directory: Directory) -> None:
    """A header of bytes that are no base64 at all (here Latin-1) is malformed credentials,
    as non-base64 ASCII is: 400, not an internal error."""
    for token in (b"\xff\xfe", b"YWxpY2U6\xe9"):
        status, body = _raw_http(directory, b"GET /v1/containers?address=a@example.com "
                                 b"HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + token
                                 + b"\r\nConnection: close\r\n\r\n")
        assert status == 400, body
        assert json.loads(body)["error"]["code"] == "bad_credentials"


def test_unparsable_requests_leave_no_credentials_or_addresses_in_the_log(
        directory: Directory) -> None:
    """aiohttp answers a request it cannot parse itself (400) and reports the bytes it choked
    on: a header line (an Authorization header is a password in base64) or the request line
    (the addresses asked for). The log gets one line naming the error, without them."""
    secret = base64.b64encode(f"{USER}:{USER_PW}".encode())
    unparsable = (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + secret + b"\x01\r\n\r\n",
        b"GET /v1/containers?address=leaked@example.com HTTP/1.1\r\nHost: x\r\nX: \x01\r\n\r\n",
        b"GET /v1/containers?address=\xffleaked@example.com HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/containers?address=" + b"leaked" * 1500 + b"@example.com HTTP/1.1\r\n\r\n",
    )
    before = directory.log.read_text().count("event=unparsable_request protocol=http")
    for raw in unparsable:
        status, _ = _raw_http(directory, raw)
        assert status == 400
    log = directory.log.read_text()
    assert secret.decode() not in log and USER_PW not in log and "leaked" not in log
    assert log.count("event=unparsable_request protocol=http") == before + len(unparsable)


def test_unparsable_requests_get_the_apis_json_error(directory: Directory) -> None:
    """A request aiohttp cannot parse never reaches the app's middleware: aiohttp answered
    it itself, `text/plain` with the parser's message (the bytes it choked on). It gets
    the API's error envelope like every other bad request (400, a stable code, no bytes of
    the request); the server then closes the connection (_raw_http_answer reads until it
    does), as where the next request would start is lost."""
    unparsable = (
        b"GET /v1/containers?address=a@example.com HTTP/1.1\r\nHost: x\r\nX: \x01echo\r\n\r\n",
        b"NOT-HTTP\x00\xff echo\r\n\r\n",
        b"GET /v1/containers?address=" + b"echo" * 3000 + b"@example.com HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\necho",
    )
    for raw in unparsable:
        head, body = _raw_http_answer(directory, raw)
        headers = head.decode("latin-1").lower().split("\r\n")
        assert headers[0].split()[1] == "400", head
        assert "content-type: application/json; charset=utf-8" in headers, head
        assert json.loads(body) == {"error": {"code": "malformed_request", "message": ANY}}
        assert b"echo" not in body and b"\\x" not in body, body
        assert_documented(400, json.loads(body), "/v1/containers")


def _raw_http(directory: Directory, request: bytes) -> tuple[int, bytes]:
    """Send `request` as is; (status, body) of the answer, read until the server closes."""
    head, body = _raw_http_answer(directory, request)
    return int(head.split()[1]), body


def _raw_http_answer(directory: Directory, request: bytes) -> tuple[bytes, bytes]:
    """Send `request` as is; (status line and headers, body), read until the server closes."""
    host, port = urlsplit(directory.http).hostname, urlsplit(directory.http).port
    assert host is not None and port is not None
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


def test_padded_addresses_share_one_cached_answer(directory: Directory) -> None:
    """Whitespace around an address is not part of it (parse_address drops it, as LDAP's
    filter reading does): the answer cache, keyed by the address as asked, kept one
    answer per padding, each with up to ~8 KB of spaces in its key."""
    def cached_answers() -> int:
        text = requests.get(directory.http + "metrics", timeout=10).text
        found = re.search(r'keypost_cache_entries\{cache="answers"\} (\d+)', text)
        assert found is not None
        return int(found.group(1))

    before = cached_answers()
    for pad in range(1, 6):
        [result] = get(directory, " " * pad * 1000 + "padded@example.com").json()["results"]
        assert result["address"] == "padded@example.com"
    assert cached_answers() == before + 1
