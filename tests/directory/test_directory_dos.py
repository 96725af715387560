"""Abuse from one unauthenticated source: huge filters, idle sockets, password floods,
/metrics. Each limit is checked through a real server, and so is that others are still
served while it bites."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import http.client
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from dir_support import SUFFIX, USER, USER_PW, Directory, assert_documented, serving
from test_ldap_server import ALICE, messages_of, raw_exchange
from test_ldap_support import MemoryBackend, ServerThread

from keypost.core.containers import DirectoryCA, GatewayKey
from keypost.directory.accounts import (
    PER_SOURCE_WAITING,
    Admission,
    Authenticator,
    PasswordChecksBusy,
    Throttle,
    hash_password,
)
from keypost.directory.cleartext import CleartextPolicy
from keypost.directory.controller import Controller
from keypost.directory.http import Handler, PeerCappedSite, make_app, make_runner
from keypost.directory.ldap import answers, ber
from keypost.directory.ldap import filters as F
from keypost.directory.ldap import messages as M
from keypost.directory.ldap.answers import entry_dn
from keypost.directory.ldap.dn import MAX_DN_LENGTH, reduce_bind_name
from keypost.directory.ldap.server import Limits
from keypost.directory.peer_counts import PeerCounts
from keypost.directory.store import AccountRecord, AccountRole, GatewayKeyRecord, KeyUse
from keypost.directory.store.sqlite import SqliteStore


def _search(message_id: int, f: F.Filter) -> bytes:
    request = M.SearchRequest(SUFFIX, M.Scope.SUB, M.DerefAliases.NEVER, 0, 0, False, f,
                              ("mail",))
    return M.encode_message(M.LDAPMessage(message_id, request))


def _wide_or(terms: int) -> F.Or:
    """(|(cn=x)(cn=x)...): `terms` equality terms under one OR, terms + 1 nodes; 110k of
    them are the review's ~1 MB filter, within the message size limit."""
    return F.Or((F.EqualityMatch("cn", b"x"),) * terms)


@pytest.mark.parametrize(("f", "refused"), [
    (_wide_or(F.MAX_FILTER_NODES - 1), False),  # exactly the cap
    (_wide_or(F.MAX_FILTER_NODES), True),
    (F.And((F.Not(_wide_or(600)), _wide_or(600))), True),  # counted through nesting
    (_wide_or(110_000), True),
])
def test_filter_node_cap_in_the_decoder(f: F.Filter, refused: bool) -> None:
    pdu = _search(7, f)
    if not refused:
        assert M.decode_message(pdu).op.filter == f  # type: ignore[union-attr]
        return
    with pytest.raises(F.FilterTooComplex) as caught:
        M.decode_message(pdu)
    assert caught.value.message_id == 7


def test_huge_filter_is_unwilling_and_the_connection_stays() -> None:
    """unwillingToPerform (53), not protocolError: the PDU is well-formed (RFC 4511 4.1.1
    keeps protocolError for PDUs that cannot be parsed), only more than we will evaluate.
    The same connection then gets its next search answered."""
    thread = ServerThread(MemoryBackend())
    try:
        big = _search(1, _wide_or(110_000))
        small = _search(2, F.EqualityMatch("mail", ALICE.encode()))
        unbind = M.encode_message(M.LDAPMessage(3, M.UnbindRequest()))
        got = messages_of(raw_exchange(thread.port, big + small + unbind))
        first = got[0]
        assert first.message_id == 1 and isinstance(first.op, M.SearchResultDone)
        assert first.op.result.code == M.ResultCode.UNWILLING_TO_PERFORM
        assert "1024 terms" in first.op.result.diagnostic
        assert [(m.message_id, type(m.op).__name__) for m in got[1:]] == [
            (2, "SearchResultEntry"), (2, "SearchResultDone")]
        assert thread.backend.lookups == [(None, (ALICE,))]
    finally:
        thread.stop()



def test_long_search_base_is_unwilling_and_kept_nowhere(directory: Directory) -> None:
    """A search base of ~1 MB (within the message limit) took ~0.2 s of event-loop time to
    parse, and the parsed DN cache kept ~2 MB of each of up to 4096 of them (8 GB). Now a
    base over MAX_DN_LENGTH is refused with unwillingToPerform (53) before it is parsed,
    and the same connection goes on."""
    port = directory.ldap[1]
    base = "ou=" + "a" * 1_000_000 + "," + SUFFIX
    big = M.encode_message(M.LDAPMessage(1, M.SearchRequest(
        base, M.Scope.SUB, M.DerefAliases.NEVER, 0, 0, False,
        F.EqualityMatch("mail", ALICE.encode()), ("mail",))))
    unbind = M.encode_message(M.LDAPMessage(3, M.UnbindRequest()))
    got = messages_of(raw_exchange(port, big + _search(2, F.EqualityMatch(
        "mail", ALICE.encode())) + unbind))
    first = got[0]
    assert first.message_id == 1 and isinstance(first.op, M.SearchResultDone)
    assert first.op.result.code == M.ResultCode.UNWILLING_TO_PERFORM
    assert f"{MAX_DN_LENGTH} characters" in first.op.result.diagnostic
    assert [(m.message_id, type(m.op).__name__) for m in got[1:]] == [
        (2, "SearchResultEntry"), (2, "SearchResultDone")]
    # a base a client may really use is not limited: the longest address's entry
    longest = "+" * 64 + "@" + "y" * 63 + "." + "z" * 63 + "." + "w" * 48 + ".example.com"
    entry = entry_dn(longest, SUFFIX)  # 253 octets, its 64 '+' escaped
    request = M.SearchRequest(entry, M.Scope.BASE, M.DerefAliases.NEVER, 0, 0, False,
                              F.Present("objectClass"), ("mail",))
    got = messages_of(raw_exchange(port, M.encode_message(M.LDAPMessage(1, request))
                                   + unbind))
    assert [type(m.op).__name__ for m in got] == ["SearchResultEntry", "SearchResultDone"]


def test_long_bind_name_is_not_parsed(directory: Directory) -> None:
    """A ~1 MB bind name took ~0.5 s of event-loop time to reduce to an account name, before
    any password check or admission limit. Over MAX_DN_LENGTH it is taken as it is (no
    account has such a name: invalidCredentials after the usual equal work)."""
    long_name = "uid=" + "a" * 1_000_000 + "," + SUFFIX
    assert reduce_bind_name(long_name) == long_name
    name = "uid=" + "a" * (MAX_DN_LENGTH - 20) + "," + SUFFIX
    assert reduce_bind_name(name) == "a" * (MAX_DN_LENGTH - 20)
    bind = M.encode_message(M.LDAPMessage(1, M.BindRequest(3, long_name, b"pw")))
    unbind = M.encode_message(M.LDAPMessage(2, M.UnbindRequest()))
    with _from("127.0.0.9", directory.ldap[1]) as s:  # its own address: no throttle shared
        s.sendall(bind + unbind)
        reply = b"".join(iter(lambda: s.recv(65536), b""))
    [answer] = messages_of(reply)
    assert isinstance(answer.op, M.BindResponse)
    assert answer.op.result.code == M.ResultCode.INVALID_CREDENTIALS



def test_long_attribute_lists_are_answered_and_kept_nowhere() -> None:
    """The encoded-entry cache (4096) and the attribute selection cache (1024) were keyed
    by the requested attribute names: searches naming a distinct ~1 MB attribute each
    made them keep ~1 MB apiece (4 GB from one anonymous client). Such lists are still
    answered, and nothing of them is kept."""
    thread = ServerThread(MemoryBackend())
    try:
        kept = answers._select_kept.cache_info().currsize
        data = b""
        for i in range(1, 21):
            request = M.SearchRequest(
                SUFFIX, M.Scope.SUB, M.DerefAliases.NEVER, 0, 0, False,
                F.EqualityMatch("mail", ALICE.encode()), (f"x{i}" + "a" * 100_000, "mail"))
            data += M.encode_message(M.LDAPMessage(i, request))
        got = messages_of(raw_exchange(thread.port, data + M.encode_message(
            M.LDAPMessage(99, M.UnbindRequest()))))
        entries = [m.op for m in got if isinstance(m.op, M.SearchResultEntry)]
        assert len(entries) == 20
        assert all([a.type for a in e.attributes] == ["mail"] for e in entries)
        assert len(thread.server.entries) == 0
        assert answers._select_kept.cache_info().currsize == kept
    finally:
        thread.stop()


# --------------------------------------------------------------------------- connections

def _from(source: str, port: int) -> socket.socket:
    """A connection to the loopback server from `source` (any 127.x address is ours)."""
    return socket.create_connection(("127.0.0.1", port), timeout=10,
                                    source_address=(source, 0))


def _answers_search(source: str, port: int) -> bool:
    """Whether a search for ALICE from `source` gets its entry and a success."""
    with _from(source, port) as s:
        s.sendall(_search(1, F.EqualityMatch("mail", ALICE.encode()))
                  + M.encode_message(M.LDAPMessage(2, M.UnbindRequest())))
        reply = b"".join(iter(lambda: s.recv(65536), b""))
    got = messages_of(reply)
    done = got[-1].op
    return (isinstance(done, M.SearchResultDone) and done.result.code == M.ResultCode.SUCCESS
            and any(isinstance(m.op, M.SearchResultEntry) for m in got))


def _refused_busy(s: socket.socket) -> bool:
    notice = M.decode_message(b"".join(iter(lambda: s.recv(65536), b"")))
    return (isinstance(notice.op, M.ExtendedResponse)
            and notice.op.name == M.OID_NOTICE_OF_DISCONNECTION
            and notice.op.result.code == M.ResultCode.BUSY)


@pytest.fixture(scope="module")
def capped(directory: Directory, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, str]]:
    """A second `keypost directory serve` on the session's data with 4 connections per peer."""
    log = tmp_path_factory.mktemp("capped") / "serve.log"
    with serving(directory.data, log, "--max-connections-per-peer", "4") as urls:
        yield urls


def test_ldap_connections_per_peer_are_capped(capped: dict[str, str]) -> None:
    """The review's flood, scaled down: idle sockets from one address fill only that
    address's share; its next connection is told busy, another address is served."""
    port = int(capped["ldap"].rsplit(":", 1)[1].split("/")[0])
    idle = [_from("127.0.0.1", port) for _ in range(4)]
    try:
        time.sleep(0.3)
        with _from("127.0.0.1", port) as fifth:
            assert _refused_busy(fifth)
        assert _answers_search("127.0.0.2", port)  # another peer is still served
        idle.pop().close()
        time.sleep(0.3)  # the server sees the close, the address has room again
        assert _answers_search("127.0.0.1", port)
    finally:
        for s in idle:
            s.close()


def _await(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _next_message(s: socket.socket) -> M.LDAPMessage:
    buf = b""
    while (n := ber.frame_length(buf)) is None:
        chunk = s.recv(65536)
        assert chunk, "closed before a whole message"
        buf += chunk
    return M.decode_message(buf[:n])


def test_unfinished_requests_share_one_budget() -> None:
    """Openers that declare large requests and send them slowly hold memory until their
    timeout. Past the server's budget for such bytes, the connection holding the most is
    told busy and dropped; the others keep theirs, finish their requests and are answered,
    and new clients are served."""
    budget = 200_000
    thread = ServerThread(MemoryBackend(), limits=Limits(max_unfinished_bytes=budget))
    server = thread.server
    pdu = _search(1, F.EqualityMatch("cn", b"x" * 150_000))  # a legal 150 KB search
    try:
        held = 0
        clients = []
        for size in (100_000, 60_000):
            s = _from("127.0.0.1", thread.port)
            s.sendall(pdu[:size])
            clients.append(s)
            held += size
            _await(lambda want=held: server.unfinished_bytes == want, f"the server holds {held}")
        first, second = clients
        third = _from("127.0.0.2", thread.port)
        third.sendall(pdu[:50_000])  # 210,000 held: over, and `first` holds the most
        assert _refused_busy(first)
        _await(lambda: server.unfinished_bytes == 110_000, "first's bytes are freed")
        for s, sent in ((second, 60_000), (third, 50_000)):
            s.sendall(pdu[sent:])
            done = _next_message(s).op  # cn=... matches no address: no entries
            assert isinstance(done, M.SearchResultDone)
            assert done.result.code == M.ResultCode.SUCCESS
        assert _answers_search("127.0.0.3", thread.port)
        for s in [*clients, third]:
            s.close()
        _await(lambda: server.unfinished_bytes == 0, "nothing is held once all are answered")
    finally:
        thread.stop()


def _closed_within(s: socket.socket, seconds: float) -> bool:
    s.settimeout(seconds)
    try:
        while s.recv(100):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_first_request_deadline_drops_silent_and_slow_openers() -> None:
    """A connection that sends nothing, or dribbles a PDU byte by byte, is closed at the
    first-request deadline; one that made a request keeps the (longer) idle timeout."""
    thread = ServerThread(MemoryBackend(), limits=Limits(first_request_timeout=0.5))
    try:
        silent = _from("127.0.0.1", thread.port)
        working = _from("127.0.0.1", thread.port)
        working.sendall(_search(1, F.EqualityMatch("mail", ALICE.encode())))
        assert working.recv(65536)  # answered
        dribble = _from("127.0.0.1", thread.port)
        pdu = _search(1, F.EqualityMatch("mail", ALICE.encode()))
        start = time.monotonic()
        with pytest.raises(OSError):  # the server hangs up mid-PDU (broken pipe / reset)
            for byte in pdu[:-1] * 2:  # any byte used to reset the 300 s idle timer
                dribble.sendall(bytes([byte]))
                time.sleep(0.1)
        assert time.monotonic() - start < 3.0
        assert _closed_within(silent, 3.0)
        assert not _closed_within(working, 1.0)  # still open after the deadline
        for s in (silent, working, dribble):
            s.close()
    finally:
        thread.stop()


def test_http_connections_per_peer_are_capped(capped: dict[str, str]) -> None:
    """Idle HTTP sockets from one address fill only its share (they shared the process's
    descriptors with LDAP): its next connection gets 503 busy, other addresses and LDAP
    are served."""
    http_port = int(capped["http"].rsplit(":", 1)[1].strip("/"))
    ldap_port = int(capped["ldap"].rsplit(":", 1)[1].split("/")[0])
    idle = [_from("127.0.0.1", http_port) for _ in range(4)]
    try:
        time.sleep(0.3)
        with _from("127.0.0.1", http_port) as fifth:  # answered as it opens
            reply = b"".join(iter(lambda: fifth.recv(65536), b""))
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 5" in head
        assert json.loads(body)["error"]["code"] == "busy"
        other = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10,
                                           source_address=("127.0.0.2", 0))
        other.request("GET", "/healthz")
        assert other.getresponse().status == 200
        other.close()
        assert _answers_search("127.0.0.1", ldap_port)
    finally:
        for s in idle:
            s.close()


def test_idle_http_connections_are_closed() -> None:
    """keepalive_timeout also covers a connection that never sends a request; the site
    counts connections per peer and forgets them when they close."""
    async def run() -> tuple[bool, dict[str, int], dict[str, int]]:
        app = web.Application()
        app.router.add_get("/", lambda request: web.Response(text="ok"))  # type: ignore
        runner = make_runner(app, idle_seconds=0.3)
        await runner.setup()
        counts = PeerCounts()
        site = PeerCappedSite(runner, "127.0.0.1", 0, max_per_peer=2, counts=counts)
        await site.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
            await asyncio.sleep(0.05)
            during = counts.snapshot()
            closed = await asyncio.wait_for(reader.read(), 3) == b""  # EOF, nothing sent
            writer.close()
            await asyncio.sleep(0.05)
            return closed, during, counts.snapshot()
        finally:
            await runner.cleanup()

    closed, during, after = asyncio.run(run())
    assert closed and during == {"127.0.0.1": 1} and after == {}


def test_the_cap_on_all_connections_admits_exactly_its_number() -> None:
    """max_connections = 3, one connection per address: three are held open, the fourth
    is told busy at once (a cap checked with > let a fourth in: the review's surviving
    mutation), and a slot freed by a close admits the next."""
    async def state(reader: asyncio.StreamReader, wait: float = 0.5) -> str:
        try:  # a refusal is written at once; `wait` only bounds a slow machine
            data = await asyncio.wait_for(reader.read(), wait)
        except TimeoutError:
            return "open"
        return "busy" if data.startswith(b"HTTP/1.1 503 ") and b'"busy"' in data else repr(data)

    async def run() -> tuple[list[str], str, str]:
        app = web.Application()
        app.router.add_get("/", lambda request: web.Response(text="ok"))  # type: ignore
        runner = make_runner(app, idle_seconds=30)
        await runner.setup()
        site = PeerCappedSite(runner, "127.0.0.1", 0, max_per_peer=2, counts=PeerCounts(),
                              max_connections=3)
        await site.start()
        opened = []
        try:
            for i in range(4):
                opened.append(await asyncio.open_connection(
                    "127.0.0.1", site.port, local_addr=(f"127.0.5.{i + 1}", 0)))
                await asyncio.sleep(0.05)
            states = [await state(reader) for reader, _ in opened[:3]]
            fourth = await state(opened[3][0], wait=10)
            opened[0][1].close()
            await asyncio.sleep(0.1)
            again = await asyncio.open_connection("127.0.0.1", site.port,
                                                  local_addr=("127.0.5.9", 0))
            opened.append(again)
            return states, fourth, await state(again[0])
        finally:
            for _, writer in opened:
                writer.close()
            await runner.cleanup()

    held, fourth, after_close = asyncio.run(run())
    assert held == ["open"] * 3 and fourth == "busy" and after_close == "open"


# --------------------------------------------------------------------------- passwords

def test_admission_bounds_checks_per_source_and_overall() -> None:
    """One running and PER_SOURCE_WAITING waiting per source, `limit` overall; known-good
    pairs skip the source's line and may use the reserve."""
    async def run() -> tuple[int, int, int, bool]:
        admission = Admission(limit=2, reserve=1)
        release: list[Callable[[], None]] = []
        busy = 0

        async def check(source: str, trusted: bool = False) -> None:
            nonlocal busy
            try:
                done = await admission.admit(source, trusted)
            except PasswordChecksBusy:
                busy += 1
                return
            await asyncio.sleep(0.01)
            release.append(done)
            done()

        await asyncio.gather(*(check("flood") for _ in range(20)))
        flood_busy, busy = busy, 0
        first = await admission.admit("a", False)
        second = await admission.admit("b", False)  # the limit is reached
        await check("c")
        trusted = await admission.admit("a", True)  # the reserve
        await check("d", True)
        for done in (first, second, trusted):
            done()
        return flood_busy, busy, admission.running, len(release) == 5

    flood_busy, busy, running, served = asyncio.run(run())
    assert flood_busy == 20 - 1 - PER_SOURCE_WAITING
    assert busy == 2 and running == 0 and served


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def flooded(directory: Directory, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, str]]:
    """A server of its own: the floods below leave failure counters behind."""
    log = tmp_path_factory.mktemp("flooded") / "serve.log"
    with serving(directory.data, log, "--max-connections-per-peer", "200") as urls:
        yield urls


def test_password_flood_is_answered_busy_and_others_log_in(flooded: dict[str, str]) -> None:
    """The review's scrypt flood: 120 wrong passwords at once from one address over HTTP
    (and 30 binds over LDAP from another) no longer queue; the excess is told busy at once
    (503 + Retry-After / resultCode 51), and alice, from elsewhere, logs in promptly."""
    port = int(flooded["http"].rsplit(":", 1)[1].strip("/"))
    ldap_port = int(flooded["ldap"].rsplit(":", 1)[1].split("/")[0])
    answers: list[tuple[int, str | None, object]] = []

    def wrong(i: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60,
                                       source_address=("127.0.0.2", 0))
        c.request("GET", f"/v1/containers?address={ALICE}",
                  headers=_basic(f"x{i}-{os.urandom(3).hex()}", "wrong"))
        r = c.getresponse()
        answers.append((r.status, r.getheader("Retry-After"), json.loads(r.read())))
        c.close()

    flood = [threading.Thread(target=wrong, args=(i,)) for i in range(120)]
    binds = [_from("127.0.0.3", ldap_port) for _ in range(30)]
    for t in flood:
        t.start()
    for n, s in enumerate(binds):
        s.sendall(M.encode_message(M.LDAPMessage(1, M.BindRequest(
            3, f"uid=x{n},{SUFFIX}", b"wrong"))))
    time.sleep(0.5)
    start = time.monotonic()
    ok = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    ok.request("GET", f"/v1/containers?address={ALICE}", headers=_basic(USER, USER_PW))
    assert ok.getresponse().status == 200
    alice_took = time.monotonic() - start
    for t in flood:
        t.join(60)
    codes = []
    for s in binds:
        reply = M.decode_message(s.recv(65536))
        assert isinstance(reply.op, M.BindResponse)
        codes.append((reply.op.result.code, reply.op.result.diagnostic))
        s.close()
    busy = [a for a in answers if a[0] == 503]
    assert len(answers) == 120 and len(busy) >= 100
    assert all(retry == "1" and body["error"]["code"] == "busy"  # type: ignore[index]
               for _, retry, body in busy)
    assert {a[0] for a in answers} == {401, 503}
    assert alice_took < 2.0, alice_took
    assert sum(code == M.ResultCode.BUSY for code, _ in codes) >= 20
    assert all("retry" in diag for code, diag in codes if code == M.ResultCode.BUSY)
    assert {code for code, _ in codes} <= {M.ResultCode.BUSY, M.ResultCode.INVALID_CREDENTIALS}


# --------------------------------------------------------------------------- metrics

def test_metrics_from_loopback_only_or_a_gateway(flooded: dict[str, str]) -> None:
    """A loopback peer still reads /metrics over the real server (Prometheus on the host);
    the answers to others are checked in-process below."""
    port = int(flooded["http"].rsplit(":", 1)[1].strip("/"))
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    r = c.getresponse()
    assert r.status == 200 and b"keypost" in r.read()


def _accounts_store(tmp_path: Path) -> SqliteStore:
    """example.com with a user account (alice, alice-pw) and a gateway account (gw, gw-pw)."""
    store = SqliteStore(tmp_path / "d.db")
    now = dt.datetime.now(dt.UTC)
    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    store.add_domain("example.com", [GatewayKeyRecord(
        "example.com", KeyUse.ENCRYPTION, pem, GatewayKey.from_pem(pem).fingerprint,
        ("aes256-cbc",), now)])
    for name, role, pw in (("alice", AccountRole.USER, b"alice-pw"),
                           ("gw", AccountRole.GATEWAY, b"gw-pw")):
        store.add_account(AccountRecord(name, role, ("example.com",), hash_password(pw), now))
    return store


@pytest.mark.parametrize(("remote", "credentials", "policy", "status", "code"), [
    ("192.0.2.7", None, CleartextPolicy.ANYWHERE, 403, "forbidden"),
    ("192.0.2.7", ("alice", "alice-pw"), CleartextPolicy.ANYWHERE, 403, "forbidden"),  # user
    ("192.0.2.7", ("gw", "wrong"), CleartextPolicy.ANYWHERE, 401, "invalid_credentials"),
    ("192.0.2.7", ("gw", "gw-pw"), CleartextPolicy.LOOPBACK, 403, "tls_required"),
    ("192.0.2.7", ("gw", "gw-pw"), CleartextPolicy.ANYWHERE, 200, None),
    ("2001:db8::7", None, CleartextPolicy.ANYWHERE, 403, "forbidden"),
    ("::1", None, CleartextPolicy.LOOPBACK, 200, None),
])
def test_metrics_access(tmp_path: Path, remote: str, credentials: tuple[str, str] | None,
                        policy: CleartextPolicy, status: int, code: str | None) -> None:
    """The real app, its peer address replaced (tests bind loopback only): a non-loopback
    peer needs a gateway account's credentials, under the cleartext policy as elsewhere."""
    store = _accounts_store(tmp_path)
    controller = Controller(store, DirectoryCA.generate("ecdsa-p256"))

    @web.middleware
    async def from_remote(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await handler(request.clone(remote=remote))

    async def run() -> tuple[int, object]:
        authenticator = Authenticator(store)
        app = make_app(controller, authenticator, "", 100, policy)
        app.middlewares.append(from_remote)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            headers = _basic(*credentials) if credentials else {}
            r = await client.get("/metrics", headers=headers)
            body = await (r.json() if r.status != 200 else r.text())
        authenticator.close()
        return r.status, body

    got, body = asyncio.run(run())
    assert got == status
    if code is None:
        assert isinstance(body, str) and "keypost" in body
    else:
        assert body["error"]["code"] == code  # type: ignore[index]
        assert_documented(got, body, "/metrics")


# --------------------------------------------------------------------------- time budget

def test_a_request_past_its_time_budget_is_504_json_and_the_next_is_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The real app over a real socket, made slow through its own construction: the
    failure throttle holds alice's next login back 5 s, the API's budget is 0.3 s. That
    request is answered 504 `timeout` in the API's JSON error shape (it waited, unanswered,
    for the 5 s), one log line names it without password or address, and the next
    request is served."""
    store = _accounts_store(tmp_path)
    controller = Controller(store, DirectoryCA.generate("ecdsa-p256"))
    wrong = "not-alices-password-4711"

    async def run() -> list[tuple[int, Any]]:
        authenticator = Authenticator(store, throttle=Throttle(base=5.0, cap=5.0, free=1))
        app = make_app(controller, authenticator, "", 100, request_seconds=0.3)
        got = []
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            for credentials in (("alice", wrong), ("alice", wrong), None):
                headers = _basic(*credentials) if credentials else {}
                r = await client.get("/v1/containers", params={"address": "bob@example.com"},
                                     headers=headers)
                got.append((r.status, await r.json()))
        authenticator.close()
        return got

    with caplog.at_level(logging.INFO):
        (first, _), (status, body), (after, answer) = asyncio.run(run())
    assert first == 401  # a failure: the throttle now holds alice back
    assert status == 504 and body["error"]["code"] == "timeout", body
    assert_documented(status, body, "/v1/containers")
    assert after == 200 and answer["results"][0]["address"] == "bob@example.com"
    lines = [r.getMessage() for r in caplog.records if "event=timeout" in r.getMessage()]
    assert len(lines) == 1 and "path=/v1/containers" in lines[0], lines
    assert not any(wrong in r.getMessage() or "bob@" in r.getMessage() or r.exc_info
                   for r in caplog.records if r.name.startswith("keypost.directory.http"))
