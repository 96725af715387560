"""The directory client asks a busy directory again, briefly, and then says it is busy.

The busy answers come from a real `keypost directory serve`: one allowing one connection
per address (`--max-connections-per-peer 1`), so that while the test holds that
connection the client's own is refused (LDAP: a notice of disconnection with resultCode
busy; HTTP: 503 with Retry-After: 5); and one whose password checks from this address are
already queued as deep as it allows, so the client's bind is refused (LDAP busy, HTTP 503
with Retry-After: 1).
"""

from __future__ import annotations

import base64
import select
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from host_support import PASSWORD, Directory, GatewayKeys, MemoryKeyring, start_directory
from proc_util import stop

from keypost.directory.ldap import messages as M
from keypost.host.actions import Host
from keypost.host.busy import BusyRetry
from keypost.host.config import parse_directory_url
from keypost.host.directory_client import DirectoryClient, LdapDirectoryClient, make_client
from keypost.host.errors import AuthenticationFailed, DirectoryBusy, ErrorCode

BUSY_MESSAGE = "the directory is busy: try again in a moment"


@pytest.fixture(scope="module")
def one_per_peer(tmp_path_factory: pytest.TempPathFactory,
                 gateway_keys: GatewayKeys) -> Iterator[Directory]:
    base = tmp_path_factory.mktemp("one-per-peer")
    served, proc = start_directory(base, gateway_keys, "--max-connections-per-peer", "1")
    try:
        yield served
    finally:
        stop(proc, timeout=10)
        shutil.rmtree(base, ignore_errors=True)


def hold(url: str) -> socket.socket:
    """The one connection the directory allows this address. A connection it refuses is
    answered and closed at once (the previous test's may still be counted): try again."""
    where = urlsplit(url)
    assert where.hostname and where.port
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        sock = socket.create_connection((where.hostname, where.port), timeout=5)
        readable, _, _ = select.select([sock], [], [], 0.3)
        if not readable:
            return sock  # counted and silent, as the directory's clients' are
        sock.close()
        time.sleep(0.1)
    raise AssertionError(f"{url} never let this address hold a connection")


class Waits:
    """A BusyRetry sleep that records its waits and can run something before the first
    (what makes the directory take the next attempt)."""

    def __init__(self, before_first: Callable[[], object] | None = None) -> None:
        self.seen: list[float] = []
        self.release = before_first

    def __call__(self, seconds: float) -> None:
        self.seen.append(seconds)
        if self.release is not None:
            self.release()
            self.release = None
        time.sleep(seconds)


CASES = [("ldap", "alice"), ("ldap", None), ("http", "alice")]


def client(directory: Directory, protocol: str, user: str | None, retry: BusyRetry,
           password: str = PASSWORD) -> DirectoryClient:
    url = directory.ldap_url if protocol == "ldap" else directory.http_url
    return make_client(parse_directory_url(url), user, password if user else None, None, 5.0,
                       retry)


def url_of(directory: Directory, protocol: str) -> str:
    return directory.ldap_url if protocol == "ldap" else directory.http_url


def fetch_bob(directory: Directory, protocol: str, user: str | None,
              release: Callable[[], object]) -> tuple[int, list[float]]:
    """(bob's containers, the client's waits); `release` runs at the first wait (it lets
    the directory take the next attempt), and in any case at the end."""
    waits = Waits(before_first=release)
    c = client(directory, protocol, user, BusyRetry(sleep=waits))
    try:
        found = c.fetch(["bob@example.org"])
    finally:
        c.close()
        release()
    return len(found["bob@example.org"]), waits.seen


@pytest.mark.parametrize(("protocol", "user"), CASES)
def test_one_busy_answer_is_asked_again(one_per_peer: Directory, protocol: str,
                                        user: str | None) -> None:
    held = hold(url_of(one_per_peer, protocol))
    found, waits = fetch_bob(one_per_peer, protocol, user, held.close)
    assert len(waits) == 1  # refused once, then answered
    assert found == (2 if user else 1)


@pytest.mark.parametrize(("protocol", "user"), CASES)
def test_a_directory_that_stays_busy_is_reported_busy_in_bounded_time(
    one_per_peer: Directory, protocol: str, user: str | None
) -> None:
    held = hold(url_of(one_per_peer, protocol))
    waits = Waits()
    retry = BusyRetry(sleep=waits)  # the default attempts, waits and cap
    c = client(one_per_peer, protocol, user, retry)
    started = time.monotonic()
    try:
        with pytest.raises(DirectoryBusy) as info:
            c.fetch(["bob@example.org"])
    finally:
        c.close()
        held.close()
    elapsed = time.monotonic() - started
    assert str(info.value) == BUSY_MESSAGE
    assert info.value.code is ErrorCode.DIRECTORY_ERROR
    assert len(waits.seen) == retry.attempts - 1
    if protocol == "http":
        assert waits.seen == [retry.cap] * 2  # it asked for 5 s (Retry-After): capped
    else:  # no Retry-After in LDAP: short jittered backoff
        assert 0.25 <= waits.seen[0] < 0.5 and 0.5 <= waits.seen[1] < 1.0
    assert elapsed < (retry.attempts - 1) * retry.cap + 3


def test_wrong_password_is_not_asked_again(one_per_peer: Directory) -> None:
    for protocol in ("ldap", "http"):
        waits = Waits()
        c = client(one_per_peer, protocol, "alice", BusyRetry(sleep=waits), "not the password")
        with pytest.raises(AuthenticationFailed):
            c.fetch(["bob@example.org"])
        c.close()
        assert waits.seen == [], protocol


def test_the_user_is_told_the_directory_is_busy(
    one_per_peer: Directory, host_dirs: tuple[Path, Path], memory_keyring: MemoryKeyring
) -> None:
    """Through the host's actions, with its default retry: lookup reports the recipient
    as "error" and encrypt fails with directory_error, both saying busy, try again."""
    host = Host(*host_dirs)
    reply = host.handle({"id": 1, "action": "configure", "params": {
        "directory": one_per_peer.ldap_url, "username": "alice", "password": PASSWORD,
        "trust_anchor_pem": one_per_peer.anchor_pem,
        "trust_anchor_fingerprint": one_per_peer.fingerprint}})
    assert reply["ok"], reply
    host.close()  # its connection from `configure` would be the one allowed
    held = hold(one_per_peer.ldap_url)
    try:
        host = Host(*host_dirs)
        reply = host.handle({"id": 2, "action": "lookup", "params": {
            "recipients": ["bob@example.org"]}})
        [bob] = reply["result"]["recipients"]
        assert (bob["status"], bob["reason"]) == ("error", BUSY_MESSAGE)
        reply = host.handle({"id": 3, "action": "encrypt", "params": {
            "from": "alice@example.com", "to": ["bob@example.org"], "subject": "hi",
            "body_plain": "hello"}})
        assert reply["ok"] is False
        assert reply["error"]["code"] == ErrorCode.DIRECTORY_ERROR
        assert reply["error"]["message"] == BUSY_MESSAGE
        host.close()
    finally:
        held.close()


# Password checks from one address: one runs, PER_SOURCE_WAITING (4) more may wait.
QUEUE = 5


def ldap_bind(name: str, password: str) -> bytes:
    """An LDAP simple bind request, message 1 (the directory's own codec writes it)."""
    return M.encode_message(M.LDAPMessage(1, M.BindRequest(3, name, password.encode())))


def http_get(name: str, password: str) -> bytes:
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    return (f"GET /v1/containers?address=bob@example.org HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Basic {token}\r\nConnection: close\r\n\r\n").encode()


def refused_busy(answer: bytes) -> bool:
    """An HTTP 503, or an LDAP BindResponse with resultCode busy (51)."""
    if answer.startswith(b"HTTP/"):
        return answer.split(b" ", 2)[1] == b"503"
    op = M.decode_message(answer).op
    assert isinstance(op, M.BindResponse), op
    return op.result.code == M.ResultCode.BUSY


class Queued:
    """QUEUE password checks sent at once from this address (unknown accounts, so they
    cost a full scrypt run each); `drain` waits until all are answered.

    Ready only once the directory holds them all: a probe check sent after them must be
    answered busy (a fixed sleep instead left the client's own check a race on a loaded
    machine). A probe that was queued instead means the directory had not read them all
    yet: drained and tried again."""

    def __init__(self, url: str, request: Callable[[str, str], bytes]) -> None:
        where = urlsplit(url)
        assert where.hostname and where.port
        address = (where.hostname, where.port)
        # Two tries at most: every try adds QUEUE failures from this address, and past the
        # directory's free allowance (10) each further check, the client's too, is slowed
        # down before it is queued, by which time the queue has drained.
        for _ in range(2):
            self.socks = [socket.create_connection(address, timeout=10) for _ in range(QUEUE)]
            for i, sock in enumerate(self.socks):
                sock.sendall(request(f"nobody{i}", "wrong"))
            with socket.create_connection(address, timeout=10) as probe:
                probe.sendall(request("probe", "wrong"))
                if refused_busy(probe.recv(4096)):
                    return
            self.drain()
        raise AssertionError("the directory never held all the queued password checks")

    def drain(self) -> None:
        while self.socks:
            with self.socks.pop() as sock:
                sock.recv(4096)


@pytest.fixture
def fresh(tmp_path: Path, gateway_keys: GatewayKeys) -> Iterator[Directory]:
    """A directory alice has not logged in to from here yet: a known (account, address)
    skips the per-address queue, which is what these tests fill."""
    served, proc = start_directory(tmp_path, gateway_keys)
    try:
        yield served
    finally:
        stop(proc, timeout=10)


@pytest.mark.parametrize("protocol", ["ldap", "http"])
def test_a_bind_refused_as_busy_is_asked_again(fresh: Directory, protocol: str) -> None:
    queued = Queued(url_of(fresh, protocol), ldap_bind if protocol == "ldap" else http_get)
    found, waits = fetch_bob(fresh, protocol, "alice", queued.drain)
    assert len(waits) == 1  # refused once, then answered
    if protocol == "http":
        assert 1.0 <= waits[0] <= 1.2  # Retry-After: 1, jittered up
    assert found == 2


def test_a_reconnect_refused_busy_is_asked_again(one_per_peer: Directory) -> None:
    """The directory closes idle connections: the next search reconnects, and a directory
    at its per-address cap refuses that new connection with a busy notice. That is busy,
    asked again, not "the directory connection failed"."""
    waits = Waits()
    c = client(one_per_peer, "ldap", None, BusyRetry(sleep=waits))
    assert isinstance(c, LdapDirectoryClient)
    held: socket.socket | None = None
    try:
        assert len(c.fetch(["bob@example.org"])["bob@example.org"]) == 1
        conn = c._conn
        assert conn is not None and conn.socket is not None
        conn.socket.shutdown(socket.SHUT_RDWR)  # as the directory's idle close would
        held = hold(one_per_peer.ldap_url)  # the one connection allowed, once it saw EOF
        waits.release = held.close
        found = c.fetch(["bob@example.org"])
    finally:
        c.close()
        if held is not None:
            held.close()
    assert len(waits.seen) == 1  # refused busy once, then answered
    assert len(found["bob@example.org"]) == 1
