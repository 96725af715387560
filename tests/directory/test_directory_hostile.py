"""Hostile and broken clients against the LDAP server and the HTTP API, over real sockets:
clients that never read their answers, dribble a request, nest filters, half-close,
send bytes that are not UTF-8. What each must cost the server is bounded, and everyone
else is still served.

No assertion is on time: waits only bound a test that would otherwise hang."""

from __future__ import annotations

import asyncio
import base64
import json
import resource
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from dir_support import GATEWAY, GATEWAY_PW, USER, USER_PW, Directory, assert_documented, serving
from proc_util import port_of
from test_ldap_server import ALICE, messages_of, raw_exchange
from test_ldap_support import SUFFIX, MemoryBackend, ServerThread, tls_files

from keypost.directory.http import PeerCappedSite, make_runner
from keypost.directory.ldap import ber
from keypost.directory.ldap import filters as F
from keypost.directory.ldap import messages as M
from keypost.directory.ldap.server import LdapServer, Limits
from keypost.directory.peer_counts import PeerCounts


def _search(message_id: int, f: F.Filter) -> bytes:
    request = M.SearchRequest(SUFFIX, M.Scope.SUB, M.DerefAliases.NEVER, 0, 0, False, f,
                              ("userCertificate;binary",))
    return M.encode_message(M.LDAPMessage(message_id, request))


def _hundred(message_id: int) -> bytes:
    """A search for 100 addresses: ~3 KB asking for ~70 KB of entries."""
    return _search(message_id, F.Or(tuple(
        F.EqualityMatch("mail", f"u{i}@example.com".encode()) for i in range(100))))


def _reader_that_never_reads(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    return s


def _send_until_stalled(s: socket.socket, data: bytes, most: int) -> int:
    """Send `data` repeatedly, up to `most` bytes or until the peer reads no more for a
    second; -> bytes sent."""
    s.settimeout(1.0)
    sent = 0
    try:
        while sent < most:
            s.sendall(data)
            sent += len(data)
    except TimeoutError:
        pass
    return sent


def _buffered_answers(server: LdapServer) -> int:
    """Bytes of answers the server holds for its clients (asyncio's write buffers)."""
    return sum(c.transport.get_write_buffer_size() for c in server._connections
               if c.transport is not None)


def _wait_for(check: Callable[[], bool], seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_ldap_client_that_never_reads_costs_bounded_memory() -> None:
    """Pipelined searches from a client that reads none of the answers: the server stops
    reading once asyncio's write buffer is full. It used to resume reading whenever it
    had handled what it had read, so the answers piled up in memory (4 such clients of
    one address, 64 MB of requests: 840 MB in `keypost directory serve`)."""
    thread = ServerThread(MemoryBackend())
    try:
        pipelined = b"".join(_hundred(i) for i in range(1, 33))
        with _reader_that_never_reads(thread.port) as s:
            sender = threading.Thread(target=_send_until_stalled,
                                      args=(s, pipelined, 4 << 20), daemon=True)
            sender.start()
            most = 0
            while sender.is_alive() or not most:
                most = max(most, thread.call(_async(_buffered_answers, thread.server)))
                time.sleep(0.05)
            sender.join()
            most = max(most, thread.call(_async(_buffered_answers, thread.server)))
        # the high-water mark (64 KiB) plus the answer that crossed it (~70 KB)
        assert 0 < most < 1 << 20, most
        # and another client is served meanwhile (the event loop was not hogged)
        got = messages_of(raw_exchange(thread.port, _search(1, F.EqualityMatch(
            "mail", ALICE.encode())) + M.encode_message(M.LDAPMessage(2, M.UnbindRequest()))))
        assert [type(m.op).__name__ for m in got] == ["SearchResultEntry", "SearchResultDone"]
    finally:
        thread.stop()


def _async(fn: Callable[[LdapServer], int], server: LdapServer) -> object:
    async def run() -> int:
        return fn(server)
    return run()


class _SlowBinds(MemoryBackend):
    """Binds take a while (a queue of password checks, a slow store)."""

    async def authenticate(self, name: str, password: bytes, peer: str) -> object | None:
        await asyncio.sleep(1.0)
        return await super().authenticate(name, password, peer)


def _buffered_requests(server: LdapServer) -> int:
    return sum(c.conn.buffered for c in server._connections)


def test_ldap_requests_behind_a_bind_are_not_read_while_it_runs() -> None:
    """Nothing runs during a bind (RFC 4511 4.2.1), and nothing more is read either: the
    requests pipelined behind it wait in the socket, not in the server's memory."""
    thread = ServerThread(_SlowBinds())
    try:
        bind = M.encode_message(M.LDAPMessage(1, M.BindRequest(3, "uid=alice," + SUFFIX,
                                                                b"right-password")))
        with socket.create_connection(("127.0.0.1", thread.port), timeout=10) as s:
            s.sendall(bind)
            sender = threading.Thread(target=_send_until_stalled,
                                      args=(s, _hundred(2) * 32, 8 << 20), daemon=True)
            sender.start()
            sender.join()  # sent what the kernel takes, before the bind ends
            held = thread.call(_async(_buffered_requests, thread.server))
        assert held < 1 << 20, held
    finally:
        thread.stop()


def test_ldap_client_that_never_reads_is_dropped() -> None:
    """Closing a connection waits for its answers to be sent, up to `close_timeout`:
    a client that reads nothing held its connection (and its slot of the per-address
    cap) for ever after the idle timeout had closed it."""
    limits = Limits(idle_timeout=0.5, close_timeout=0.5, max_per_peer=1)
    thread = ServerThread(MemoryBackend(), limits=limits)
    try:
        with _reader_that_never_reads(thread.port) as s:
            _send_until_stalled(s, b"".join(_hundred(i) for i in range(1, 33)), 4 << 20)
            assert thread.server.connection_count == 1
            assert _wait_for(lambda: thread.server.connection_count == 0)
        # the address has its slot back
        got = messages_of(raw_exchange(thread.port, _search(1, F.EqualityMatch(
            "mail", ALICE.encode())) + M.encode_message(M.LDAPMessage(2, M.UnbindRequest()))))
        assert [type(m.op).__name__ for m in got] == ["SearchResultEntry", "SearchResultDone"]
    finally:
        thread.stop()


def test_ldap_partial_request_does_not_keep_a_connection_open() -> None:
    """The idle timeout counts from the last complete request: a client that answered
    the first-request deadline and then sends a PDU a byte at a time is closed once it
    runs out, as an idle one is (every byte used to restart it)."""
    thread = ServerThread(MemoryBackend(), limits=Limits(idle_timeout=0.5))
    try:
        pdu = _search(2, F.Or(tuple(  # ~300 bytes: 15 s at 20 a second
            F.EqualityMatch("mail", f"u{i}@example.com".encode()) for i in range(12))))
        with socket.create_connection(("127.0.0.1", thread.port), timeout=10) as s:
            s.sendall(_search(1, F.EqualityMatch("mail", ALICE.encode())))
            assert s.recv(65536)  # answered
            with pytest.raises(OSError):  # the server hangs up mid-PDU (broken pipe / reset)
                for byte in pdu[:-1]:
                    s.sendall(bytes([byte]))
                    time.sleep(0.05)
    finally:
        thread.stop()


def _nested_search(message_id: int, depth: int) -> bytes:
    """A search whose filter is `depth` ANDs around (mail=ALICE), encoded by hand (the
    encoder recurses)."""
    f = F.encode_filter(F.EqualityMatch("mail", ALICE.encode()))
    for _ in range(depth):
        f = ber.tlv(F.TAG_AND, f)
    placeholder = F.encode_filter(F.Present("x"))
    pdu = _search(message_id, F.Present("x"))
    _, start, end = ber.read_header(pdu, 0, len(pdu))  # the LDAPMessage
    _, op_start = ber.take_int(pdu, start, end)  # the messageID
    tag, content, content_end = ber.read_header(pdu, op_start, end)  # the SearchRequest
    op = ber.tlv(tag, pdu[content:content_end].replace(placeholder, f))
    return ber.tlv(ber.SEQUENCE, pdu[start:op_start] + op)


@pytest.mark.parametrize(("depth", "diagnostic"), [
    (40, "nested too deeply"), (1000, "nested too deeply"), (10_000, "1024 terms")])
def test_ldap_deeply_nested_filter_is_unwilling_and_the_connection_stays(
        depth: int, diagnostic: str) -> None:
    """A well-formed filter nested deeper than the decoder goes (32) is refused like one
    with too many terms: unwillingToPerform (53), and the connection goes on. It got a
    Notice of Disconnection (protocolError), which RFC 4511 4.1.1 keeps for PDUs that
    cannot be parsed."""
    thread = ServerThread(MemoryBackend())
    try:
        got = messages_of(raw_exchange(thread.port, _nested_search(1, depth) + _search(
            2, F.EqualityMatch("mail", ALICE.encode())) + M.encode_message(
                M.LDAPMessage(3, M.UnbindRequest()))))
        first = got[0]
        assert first.message_id == 1 and isinstance(first.op, M.SearchResultDone)
        assert first.op.result.code == M.ResultCode.UNWILLING_TO_PERFORM
        assert diagnostic in first.op.result.diagnostic
        assert [(m.message_id, type(m.op).__name__) for m in got[1:]] == [
            (2, "SearchResultEntry"), (2, "SearchResultDone")]
    finally:
        thread.stop()


def test_ldap_pipelined_abandon_unbind_and_starttls_races(tmp_path: Path) -> None:
    """Requests pipelined behind slow searches: a StartTLS while they run gets
    operationsError (RFC 4511 4.14.1) and the connection goes on; an abandon cancels its
    search (no answer), an unbind cancels the rest and ends the session (nothing after it
    is answered, no lookup is left running). Held; kept for the combination."""
    thread = ServerThread(MemoryBackend(delay=2.0), tls=tls_files(tmp_path)[1])
    try:
        alice = F.EqualityMatch("mail", ALICE.encode())
        start_tls = M.encode_message(M.LDAPMessage(3, M.ExtendedRequest(M.OID_START_TLS)))
        with socket.create_connection(("127.0.0.1", thread.port), timeout=30) as s:
            s.sendall(_search(1, alice) + _search(2, alice) + start_tls)
            first = messages_of(s.recv(65536))  # the StartTLS refusal comes at once
            s.sendall(M.encode_message(M.LDAPMessage(4, M.AbandonRequest(1)))
                      + M.encode_message(M.LDAPMessage(5, M.UnbindRequest()))
                      + _search(6, alice))
            rest = b"".join(iter(lambda: s.recv(65536), b""))  # until the server closes
        assert [(m.message_id, m.op.result.code) for m in first] == [  # type: ignore[union-attr]
            (3, M.ResultCode.OPERATIONS_ERROR)]
        assert rest == b""
        assert _wait_for(lambda: thread.backend.cancelled == 2)
        assert len(thread.backend.lookups) == 2
    finally:
        thread.stop()


def test_ldaps_handshake_garbage_is_dropped_and_others_served(tmp_path: Path) -> None:
    """Bytes that are no TLS handshake (an LDAP PDU in clear, a record header claiming
    a huge ClientHello, half a ClientHello then EOF) on the ldaps port: closed, and the
    next TLS client is served. Held; kept as nothing else sends it garbage."""
    ca_file, context = tls_files(tmp_path)
    thread = ServerThread(MemoryBackend(), tls=context)
    try:
        clear = _search(1, F.EqualityMatch("mail", ALICE.encode()))
        for garbage in (clear, b"\x16\x03\x01\xff\xff" + b"\x01" * 600,
                        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"):
            with socket.create_connection(("127.0.0.1", thread.ldaps_port), timeout=30) as s:
                s.sendall(garbage)
                s.shutdown(socket.SHUT_WR)
                reply = b"".join(iter(lambda: s.recv(65536), b""))
                assert reply[:1] in (b"", b"\x15"), reply  # nothing, or a TLS alert
        client = ssl.create_default_context(cafile=str(ca_file))
        with socket.create_connection(("127.0.0.1", thread.ldaps_port), timeout=30) as raw, \
                client.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(clear)
            got = messages_of(s.recv(65536))
        assert [type(m.op).__name__ for m in got] == ["SearchResultEntry", "SearchResultDone"]
        assert _wait_for(lambda: thread.server.connection_count == 0)
    finally:
        thread.stop()


# --------------------------------------------------------------------------- HTTP

def _http_answers(directory: Directory, request: bytes, count: int, half_close: bool = False
                  ) -> list[tuple[int, bytes]]:
    """Send `request` as is (then shut down our sending side if `half_close`, and check
    that the server closes after the answers); read `count` answers (by their
    Content-Length) -> [(status, body)]."""
    url = urlsplit(directory.http)
    assert url.hostname is not None and url.port is not None
    answers: list[tuple[int, bytes]] = []
    with socket.create_connection((url.hostname, url.port), timeout=30) as s:
        s.sendall(request)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        buf = b""
        while len(answers) < count:
            head, sep, rest = buf.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            if sep and length is not None and len(rest) >= length:
                answers.append((int(head.split()[1]), rest[:length]))
                buf = rest[length:]
                continue
            chunk = s.recv(65536)
            assert chunk, f"the server closed after {len(answers)} answers: {buf!r}"
            buf += chunk
        if half_close:  # then the server hangs up, long before its 15 s idle timeout
            s.settimeout(5)
            assert buf + b"".join(iter(lambda: s.recv(65536), b"")) == b""
    return answers


def _get(path: str, auth: tuple[str, str] | None = None) -> bytes:
    basic = (b"Authorization: Basic " + base64.b64encode(":".join(auth).encode()) + b"\r\n"
             if auth else b"")
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + basic + b"\r\n"


def test_http_client_that_half_closes_gets_its_answers(directory: Directory) -> None:
    """A client that shuts down its sending side after its requests (`nc -N`, scripts)
    gets every answer, in order, then the server closes. aiohttp closed at the end of
    input and dropped what it had not answered: a login (a password check) every time."""
    lookup = "/v1/containers?address=bob@example.org&purpose=encrypt"
    [(status, body)] = _http_answers(directory, _get(lookup, (USER, USER_PW)), 1,
                                     half_close=True)
    assert status == 200, body
    assert json.loads(body)["results"][0]["containers"]
    answers = _http_answers(directory, _get("/healthz") + _get(lookup, (USER, USER_PW))
                            + _get("/v1/ca"), 3, half_close=True)  # pipelined
    assert [status for status, _ in answers] == [200, 200, 200]
    assert json.loads(answers[1][1])["results"][0]["containers"]
    assert b"BEGIN CERTIFICATE" in answers[2][1]


def test_http_half_close_after_the_answers_closes_at_once(directory: Directory) -> None:
    """A client that half-closes once it has read its answers (or sends nothing) is
    closed at once, not held (with its slot of the per-address cap) for the idle time."""
    url = urlsplit(directory.http)
    assert url.hostname is not None and url.port is not None
    for request in (_get("/healthz"), b""):
        with socket.create_connection((url.hostname, url.port), timeout=30) as s:
            s.sendall(request)
            if request:
                assert s.recv(65536).startswith(b"HTTP/1.1 200")
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            assert s.recv(65536) == b""


def test_http_half_close_with_a_real_peer(directory: Directory) -> None:
    """`nc -N` sends its input, shuts down its sending side, prints what comes back."""
    if shutil.which("nc") is None:
        pytest.skip("nc (netcat-openbsd) is not installed")
    url = urlsplit(directory.http)
    done = subprocess.run(["nc", "-N", "127.0.0.1", str(url.port)], input=_get(
        "/v1/containers?address=bob@example.org&purpose=encrypt", (USER, USER_PW)),
        capture_output=True, timeout=60, check=True)
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), done.stdout[:200]
    assert json.loads(body)["results"][0]["containers"]


@pytest.mark.parametrize("query", [
    b"address=a%ff@example.com", b"address=a%c3@example.com&address=b@example.com",
    b"address=a@example.com&purpose=encrypt%80", b"addr%fess=a@example.com"])
def test_http_query_that_is_not_utf8_is_400(directory: Directory, query: bytes) -> None:
    """Percent-escapes that are no UTF-8 became U+FFFD, and `a%ff@example.com` was
    answered with a container for a\\ufffd@example.com, an address nobody asked for."""
    [(status, body)] = _http_answers(
        directory, b"GET /v1/containers?" + query + b" HTTP/1.1\r\nHost: x\r\n\r\n", 1)
    assert status == 400, body
    error = json.loads(body)["error"]
    assert error["code"] == "malformed_request" and "UTF-8" in error["message"]
    assert_documented(400, json.loads(body), "/v1/containers")


def test_http_bindings_query_that_is_not_utf8_is_400(directory: Directory) -> None:
    """The same for the gateway's question GET /v1/bindings (asked as the gateway)."""
    auth = base64.b64encode(f"{GATEWAY}:{GATEWAY_PW}".encode())
    [(status, body)] = _http_answers(
        directory, b"GET /v1/bindings?serial=1A&address=a%ff@example.com HTTP/1.1\r\n"
        b"Host: x\r\nAuthorization: Basic " + auth + b"\r\n\r\n", 1)
    assert status == 400, body
    error = json.loads(body)["error"]
    assert error["code"] == "malformed_request" and "UTF-8" in error["message"]
    assert_documented(400, json.loads(body), "/v1/bindings")


def test_http_headers_sent_a_byte_at_a_time_are_cut_off() -> None:
    """aiohttp's idle timeout is not restarted by bytes of a request that is not complete
    (a slow-loris client): the connection closes. Held; the existing test covers a
    client that sends nothing."""
    async def run() -> bool:
        app = web.Application()
        app.router.add_get("/", _sixteen_megabytes)
        runner = make_runner(app, idle_seconds=0.3)
        await runner.setup()
        site = PeerCappedSite(runner, "127.0.0.1", 0, max_per_peer=2, counts=PeerCounts())
        await site.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 300:  # 15 s
                if reader.at_eof():
                    break
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)
            closed = await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            return closed
        finally:
            await runner.cleanup()

    assert asyncio.run(run())


def test_http_client_that_never_reads_is_dropped() -> None:
    """A client that reads none of an answer held its connection (and its slot of the
    per-address cap) for ever: aiohttp waits for the write buffer to drain without a
    limit. Writes that stall for a whole idle period now drop the connection."""
    async def run() -> dict[str, int]:
        app = web.Application()
        app.router.add_get("/", _sixteen_megabytes)
        runner = make_runner(app, idle_seconds=0.3)
        await runner.setup()
        counts = PeerCounts()
        site = PeerCappedSite(runner, "127.0.0.1", 0, max_per_peer=2, counts=counts)
        await site.start()
        loop = asyncio.get_running_loop()
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        try:
            await loop.sock_connect(s, ("127.0.0.1", site.port))
            await loop.sock_sendall(s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            for _ in range(300):  # 15 s at most
                await asyncio.sleep(0.05)
                if not counts.snapshot():
                    break
            return counts.snapshot()
        finally:
            s.close()
            await runner.cleanup()

    assert asyncio.run(run()) == {}


async def _sixteen_megabytes(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * (16 << 20))  # more than the kernel buffers hold


# --------------------------------------------------------------------------- files

FILES = 512  # the open files limit (soft and hard) of the serve below


def _few_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILES, FILES))


def _busy_or_open(s: socket.socket, kind: str, wait: float = 1.0) -> str:
    """What a connection that sent nothing gets within `wait` seconds: "busy" (a Notice of
    Disconnection busy / 503 busy, then EOF) or "open" (nothing: it is held). A refusal
    is written at once; a connection expected busy waits long, as a loaded machine may
    take seconds to accept it (1 s made it "open" when the server paused that long)."""
    s.settimeout(wait)
    try:
        reply = b"".join(iter(lambda: s.recv(65536), b""))
    except TimeoutError:
        return "open"
    if kind == "ldap":
        notice = M.decode_message(reply)
        assert notice.op.result.code == M.ResultCode.BUSY, notice  # type: ignore[union-attr]
    else:
        assert reply.startswith(b"HTTP/1.1 503 ") and b'"busy"' in reply, reply
    return "busy"


def test_connection_caps_fit_the_open_files_limit(directory: Directory,
                                                  tmp_path_factory: pytest.TempPathFactory
                                                  ) -> None:
    """With an open files limit below what the caps allow (4096 LDAP connections, HTTP
    ones per address only), idle connections from many addresses ran the process out of
    descriptors: then a client got no answer at all (and the log a traceback per accept).
    The caps now fit the limit, so the next client is told busy and nobody is left
    hanging; a client is served again once connections close."""
    log = tmp_path_factory.mktemp("files") / "serve.log"
    with serving(directory.data, log, "--max-connections-per-peer", "4",
                 preexec_fn=_few_files) as urls:
        held: list[socket.socket] = []
        try:
            for kind in ("ldap", "http"):
                port = port_of(urls[kind])
                for i in range(40):  # 4 from each address: 160, above the cap (96)
                    for _ in range(4):
                        s = socket.create_connection(("127.0.0.1", port), timeout=30,
                                                     source_address=(f"127.0.3.{i + 1}", 0))
                        held.append(s)
                    if i == 7:  # 32 connections: held
                        assert _busy_or_open(s, kind) == "open"
                with socket.create_connection(("127.0.0.1", port), timeout=30,
                                              source_address=("127.0.4.1", 0)) as other:
                    assert _busy_or_open(other, kind, wait=30) == "busy"
        finally:
            for s in held:
                s.close()
        assert _wait_for(lambda: _answers_a_search(port_of(urls["ldap"])))
    text = log.read_text()
    assert "Too many open files" not in text
    assert "event=refused reason=too_many_connections" in text


def _answers_a_search(port: int) -> bool:
    got = messages_of(raw_exchange(port, _search(1, F.EqualityMatch("mail", ALICE.encode()))
                                   + M.encode_message(M.LDAPMessage(2, M.UnbindRequest()))))
    return [type(m.op).__name__ for m in got] == ["SearchResultEntry", "SearchResultDone"]


# --------------------------------------------------------------------------- logs

def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: s.recv(65536), b""))


def test_debug_log_holds_no_password_under_abuse(directory: Directory,
                                                 tmp_path_factory: pytest.TempPathFactory
                                                 ) -> None:
    """`keypost directory serve --log-level debug` while clients send passwords every way
    a broken or hostile one might: right and wrong binds, a bind cut off by the EOF, one
    followed by garbage or by an over-long PDU, one on the ldaps port without TLS, HTTP
    Basic right, wrong, and in requests aiohttp cannot parse. No password, nor its base64
    or hex, is in any log line."""
    log = tmp_path_factory.mktemp("debug") / "serve.log"
    with serving(directory.data, log, "--log-level", "debug", "--tls-cert",
                 str(directory.data.parent / "tls-cert.pem"), "--tls-key",
                 str(directory.data.parent / "tls-key.pem")) as urls:
        ldap, ldaps = port_of(urls["ldap"]), port_of(urls["ldaps"])
        http = port_of(urls["http"])
        secrets: list[str] = []
        for name, password in ((GATEWAY, GATEWAY_PW), (GATEWAY, "wrong-" + GATEWAY_PW),
                               (USER, USER_PW)):
            bind = M.encode_message(M.LDAPMessage(1, M.BindRequest(
                3, f"uid={name},{SUFFIX}", password.encode())))
            search = _search(2, F.EqualityMatch("mail", ALICE.encode()))
            assert messages_of(_exchange(ldap, bind + search))[0].op.result.code in (
                M.ResultCode.SUCCESS, M.ResultCode.INVALID_CREDENTIALS)
            _exchange(ldap, bind[:-3])  # cut off by the EOF
            _exchange(ldap, bind + b"\x30\x03\x02\x01\x05" + b"garbage")
            _exchange(ldap, bind + b"\x30\x84\x7f\xff\xff\xff")
            _exchange(ldaps, bind)  # not a TLS handshake
            basic = base64.b64encode(f"{name}:{password}".encode())
            request = (b"GET /v1/containers?address=a@example.com HTTP/1.1\r\nHost: x\r\n"
                       b"Authorization: Basic " + basic + b"\r\n")
            answer = _exchange(http, request + b"\r\n")
            assert answer.split()[1] in (b"200", b"401")
            _exchange(http, request + b"X: \x01\r\n\r\n")  # unparsable
            _exchange(http, request + b"X: " + b"x" * 9000 + b"\r\n\r\n")  # too long
            secrets += [password, basic.decode(), password.encode().hex()]
    text = log.read_text(errors="replace")
    assert " level=DEBUG " in text and "event=protocol_error" in text
    assert "event=unparsable_request" in text
    for secret in secrets:
        assert secret not in text, secret
