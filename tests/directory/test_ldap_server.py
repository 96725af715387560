"""The asyncio LDAP server with real clients: OpenLDAP's ldapsearch (plain, StartTLS,
LDAPS), ldap3 (anonymous and simple binds, abandon, root DSE, writes refused), raw
sockets for malformed PDUs, and the abuse limits."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import ldap3
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from ldap3.core.exceptions import LDAPBindError
from test_ldap_support import PASSWORD, SUFFIX, MemoryBackend, ServerThread, tls_files

from keypost.directory.cleartext import CleartextPolicy
from keypost.directory.ldap import connection as C
from keypost.directory.ldap import filters as F
from keypost.directory.ldap import messages as M
from keypost.directory.ldap.server import Limits

ALICE = "alice@example.com"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    return tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server(tls: tuple[Path, ssl.SSLContext]) -> Iterator[ServerThread]:
    thread = ServerThread(MemoryBackend(), tls=tls[1])
    yield thread
    thread.stop()


@pytest.fixture(autouse=True)
def _reset(server: ServerThread) -> None:
    server.backend.fail = False
    server.backend.delay = 0.0


def ldapsearch(
    url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = ["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", url, "-b", SUFFIX, *args]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})}
    )


def ldif_values(ldif: str, attribute: str) -> list[bytes]:
    out = []
    for line in ldif.splitlines():
        name, sep, value = line.partition(":: ")
        if sep and name.lower() == attribute.lower():
            out.append(base64.b64decode(value))
    return out


def test_ldapsearch_anonymous_gets_all_certificates(server: ServerThread) -> None:
    done = ldapsearch(server.url, f"(mail={ALICE})", "userCertificate;binary")
    assert done.returncode == 0, done.stderr
    assert f"dn: mail={ALICE},{SUFFIX}" in done.stdout
    assert ldif_values(done.stdout, "userCertificate;binary") == list(
        server.backend.certificates(ALICE)
    )


def test_ldapsearch_thunderbird_filter_and_size_limit(server: ServerThread) -> None:
    f = "(&(objectClass=*)(|(mail=a@example.com)(mail=b@example.com)))"
    done = ldapsearch(server.url, f, "usercertificate;binary")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("dn: mail=") == 2
    assert len(ldif_values(done.stdout, "usercertificate;binary")) == 4
    limited = ldapsearch(server.url, "-z", "1", f, "mail")
    assert limited.returncode == 4  # sizeLimitExceeded, after one entry
    assert limited.stdout.count("dn: mail=") == 1


@pytest.mark.parametrize("f", ["(mail=*@example.com)", "(mail=*)", "(!(mail=a@example.com))"])
def test_no_enumeration(server: ServerThread, f: str) -> None:
    done = ldapsearch(server.url, f)
    assert done.returncode == 0, done.stderr
    assert "dn:" not in done.stdout


def test_base_outside_suffix_is_no_such_object(server: ServerThread) -> None:
    done = subprocess.run(
        ["ldapsearch", "-x", "-H", server.url, "-b", "dc=example,dc=com", f"(mail={ALICE})"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 32


def test_ldapsearch_starttls_and_ldaps(
    server: ServerThread, tls: tuple[Path, ssl.SSLContext]
) -> None:
    env = {"LDAPTLS_CACERT": str(tls[0]), "LDAPTLS_REQCERT": "demand"}
    done = ldapsearch(server.url, "-ZZ", f"(mail={ALICE})", "userCertificate", env=env)
    assert done.returncode == 0, done.stderr
    assert len(ldif_values(done.stdout, "userCertificate")) == 2
    url = f"ldaps://127.0.0.1:{server.ldaps_port}"
    done = ldapsearch(url, f"(mail={ALICE})", "userCertificate;binary", env=env)
    assert done.returncode == 0, done.stderr
    assert len(ldif_values(done.stdout, "userCertificate;binary")) == 2
    # Without trusting the test CA the handshake must fail.
    untrusted = ldapsearch(url, f"(mail={ALICE})", env={"LDAPTLS_REQCERT": "demand"})
    assert untrusted.returncode != 0


def test_sasl_bind_refused(server: ServerThread) -> None:
    srv = ldap3.Server("127.0.0.1", port=server.port, get_info=ldap3.NONE)
    conn = ldap3.Connection(
        srv,
        authentication=ldap3.SASL,
        sasl_mechanism=ldap3.PLAIN,
        sasl_credentials=(None, "alice", PASSWORD.decode()),
    )
    conn.open()
    assert not conn.bind()
    assert conn.result["result"] == 7  # authMethodNotSupported
    conn.unbind()


def connect(server: ServerThread, user: str | None = None, password: bytes | None = None,
            **kw: object) -> ldap3.Connection:
    srv = ldap3.Server("127.0.0.1", port=server.port, get_info=ldap3.NONE)
    if user is None:
        return ldap3.Connection(srv, auto_bind=True, **kw)
    return ldap3.Connection(srv, user=user, password=password, auto_bind=True, **kw)


def test_ldap3_root_dse(server: ServerThread) -> None:
    srv = ldap3.Server("127.0.0.1", port=server.port, get_info=ldap3.DSA)
    conn = ldap3.Connection(srv, auto_bind=True)
    assert srv.info is not None
    assert srv.info.naming_contexts == [SUFFIX]
    assert "3" in [str(v) for v in srv.info.supported_ldap_versions]
    assert M.OID_START_TLS in [e[0] for e in srv.info.supported_extensions]
    conn.unbind()


@pytest.mark.parametrize("user", ["uid=alice,dc=keypost", "cn=alice,ou=people,dc=x", "alice"])
def test_ldap3_simple_bind_forms(server: ServerThread, user: str) -> None:
    conn = connect(server, user, PASSWORD)
    assert conn.search(SUFFIX, f"(mail={ALICE})", attributes=["userCertificate;binary"])
    (entry,) = conn.response
    assert len(entry["raw_attributes"]["userCertificate;binary"]) == 3  # + the internal one
    assert server.backend.lookups[-1] == ("account:alice", (ALICE,))
    conn.unbind()


def test_ldap3_wrong_password_is_49(server: ServerThread) -> None:
    with pytest.raises(LDAPBindError):
        connect(server, "uid=alice,dc=keypost", b"wrong")
    srv = ldap3.Server("127.0.0.1", port=server.port, get_info=ldap3.NONE)
    conn = ldap3.Connection(srv, user="uid=alice,dc=keypost", password="wrong")
    conn.open()
    assert not conn.bind()
    assert conn.result["result"] == 49
    # A failed bind leaves the connection anonymous, and it still works.
    assert conn.search(SUFFIX, f"(mail={ALICE})", attributes=["userCertificate"])
    assert server.backend.lookups[-1] == (None, (ALICE,))
    assert len(conn.response[0]["raw_attributes"]["userCertificate"]) == 2
    conn.unbind()


def test_ldap3_attribute_selection_and_smime_bundle(server: ServerThread) -> None:
    conn = connect(server)
    conn.search(SUFFIX, f"(mail={ALICE})", attributes=["userSMIMECertificate", "MAIL"])
    attrs = conn.response[0]["raw_attributes"]
    assert set(attrs) == {"userSMIMECertificate", "MAIL"}
    (bundle,) = attrs["userSMIMECertificate"]
    certs = pkcs7.load_der_pkcs7_certificates(bundle)
    # certificates is a SET OF: order is not kept
    assert sorted(c.public_bytes(Encoding.DER) for c in certs) == sorted(
        server.backend.certificates(ALICE)
    )
    conn.search(SUFFIX, f"(mail={ALICE})", attributes=["1.1"])
    assert conn.response[0]["raw_attributes"] == {}
    conn.search(SUFFIX, f"(mail={ALICE})", attributes=["*"], types_only=True)
    assert all(not v for v in conn.response[0]["raw_attributes"].values())
    assert "objectClass" in conn.response[0]["raw_attributes"]
    conn.unbind()


def test_ldap3_abandon(server: ServerThread) -> None:
    server.backend.delay = 2.0
    srv = ldap3.Server("127.0.0.1", port=server.port, get_info=ldap3.NONE)
    conn = ldap3.Connection(srv, client_strategy=ldap3.ASYNC, auto_bind=True)
    before = server.backend.cancelled
    msg_id = conn.search(SUFFIX, "(mail=slow@example.com)", attributes=["mail"])
    time.sleep(0.3)
    assert conn.abandon(msg_id)
    deadline = time.monotonic() + 5
    while server.backend.cancelled == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.backend.cancelled == before + 1
    server.backend.delay = 0.0
    other = conn.search(SUFFIX, f"(mail={ALICE})", attributes=["mail"])
    response, result = conn.get_response(other)
    assert result["result"] == 0 and len(response) == 1
    conn.unbind()


def test_ldap3_writes_refused(server: ServerThread) -> None:
    conn = connect(server)
    assert not conn.modify(f"mail={ALICE},{SUFFIX}", {"cn": [(ldap3.MODIFY_REPLACE, ["x"])]})
    assert conn.result["result"] == 53
    assert not conn.delete(f"mail={ALICE},{SUFFIX}")
    assert conn.result["result"] == 53
    assert conn.result["type"] == "delResponse"
    conn.unbind()


def test_backend_failure_fails_the_operation_only(server: ServerThread) -> None:
    conn = connect(server)
    server.backend.fail = True
    assert not conn.search(SUFFIX, f"(mail={ALICE})")
    assert conn.result["result"] == 80
    server.backend.fail = False
    assert conn.search(SUFFIX, f"(mail={ALICE})")
    assert len(conn.response) == 1
    conn.unbind()


def test_slow_backend_runs_as_task_and_others_proceed(server: ServerThread) -> None:
    server.backend.delay = 0.2
    conn = connect(server)
    assert conn.search(SUFFIX, f"(mail={ALICE})", attributes=["mail"])
    assert len(conn.response) == 1
    conn.unbind()


def raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_malformed_pdu_gets_notice_of_disconnection(server: ServerThread) -> None:
    for junk in [b"\x30\x84\x7f\xff\xff\xff", b"\x31\x00", b"\x30\x03\x02\x01\x01"]:
        reply = raw_exchange(server.port, junk)  # returns at EOF: the server closed
        notice = M.decode_message(reply)
        assert notice.message_id == 0
        assert isinstance(notice.op, M.ExtendedResponse)
        assert notice.op.name == M.OID_NOTICE_OF_DISCONNECTION
        assert notice.op.result.code == M.ResultCode.PROTOCOL_ERROR
    done = ldapsearch(server.url, f"(mail={ALICE})", "mail")  # others are still served
    assert done.returncode == 0 and f"mail: {ALICE}" in done.stdout


def test_unauthenticated_bind_refused_over_the_wire(server: ServerThread) -> None:
    bind = M.encode_message(M.LDAPMessage(1, M.BindRequest(3, "uid=alice,dc=keypost", b"")))
    unbind = M.encode_message(M.LDAPMessage(2, M.UnbindRequest()))
    reply = M.decode_message(raw_exchange(server.port, bind + unbind))
    assert reply.op == M.BindResponse(
        M.LDAPResult(M.ResultCode.UNWILLING_TO_PERFORM, "", "unauthenticated bind is not allowed")
    )


def test_pipelined_searches_answered_in_full(server: ServerThread) -> None:
    search = M.SearchRequest(
        SUFFIX, M.Scope.SUB, M.DerefAliases.NEVER, 0, 0, False,
        F.EqualityMatch("mail", ALICE.encode()), ("mail",),
    )
    data = b"".join(M.encode_message(M.LDAPMessage(i, search)) for i in range(1, 101))
    data += M.encode_message(M.LDAPMessage(200, M.UnbindRequest()))
    reply = raw_exchange(server.port, data)
    conn = C.ServerConnection(max_message_size=1 << 20)
    conn.receive_data(reply)
    done = []
    pos = 0
    while pos < len(reply):
        n = C.ber.frame_length(reply[pos:])
        assert n is not None
        msg = M.decode_message(reply[pos : pos + n])
        if isinstance(msg.op, M.SearchResultDone):
            done.append(msg.message_id)
        pos += n
    assert sorted(done) == list(range(1, 101))


def messages_of(reply: bytes) -> list[M.LDAPMessage]:
    out = []
    pos = 0
    while pos < len(reply):
        n = C.ber.frame_length(reply[pos:])
        assert n is not None
        out.append(M.decode_message(reply[pos : pos + n]))
        pos += n
    return out


@pytest.mark.parametrize(
    ("policy", "password", "name", "code"),
    [(CleartextPolicy.LOOPBACK, PASSWORD, f"uid=alice,{SUFFIX}", M.ResultCode.SUCCESS),
     (CleartextPolicy.NEVER, PASSWORD, f"uid=alice,{SUFFIX}",
      M.ResultCode.CONFIDENTIALITY_REQUIRED),
     (CleartextPolicy.LOOPBACK, b"", f"uid=alice,{SUFFIX}", M.ResultCode.UNWILLING_TO_PERFORM),
     (CleartextPolicy.LOOPBACK, b"", "", M.ResultCode.SUCCESS)],
    ids=["accepted", "refused without TLS", "unauthenticated", "anonymous"],
)
def test_a_bind_waits_for_the_searches_before_it(
    policy: CleartextPolicy, password: bytes, name: str, code: M.ResultCode
) -> None:
    """RFC 4511 4.2.1: before a bind is processed, the operations before it complete (or
    are abandoned, as OpenLDAP does). An accepted bind waited; a bind the server refused
    itself (no TLS, unauthenticated) was answered at once, ahead of the results of a
    search still running, and the unbind after it cancelled that search."""
    thread = ServerThread(MemoryBackend(delay=0.3), cleartext=policy)
    try:
        search = M.SearchRequest(
            SUFFIX, M.Scope.SUB, M.DerefAliases.NEVER, 0, 0, False,
            F.EqualityMatch("mail", ALICE.encode()), ("mail",),
        )
        bind = M.BindRequest(3, name, password)
        reply = raw_exchange(thread.port, b"".join(M.encode_message(m) for m in (
            M.LDAPMessage(1, search), M.LDAPMessage(2, bind),
            M.LDAPMessage(3, M.UnbindRequest()))))
        got = [(m.message_id, type(m.op).__name__) for m in messages_of(reply)]
        assert got == [(1, "SearchResultEntry"), (1, "SearchResultDone"), (2, "BindResponse")]
        answer = messages_of(reply)[-1].op
        assert isinstance(answer, M.BindResponse) and answer.result.code == code
        assert thread.backend.lookups == [(None, (ALICE,))]  # under the identity before
        refused = policy is CleartextPolicy.NEVER
        assert thread.refused == (["tls_required"] if refused else [])
    finally:
        thread.stop()


def test_connection_cap() -> None:
    """Two connections held, the third is told busy. The idle timeout stays at its default
    here: a short one closed the two held connections whenever the machine paused longer
    than it between the first connection and the third, and the third was admitted."""
    thread = ServerThread(MemoryBackend(), limits=Limits(max_connections=2))
    try:
        first = socket.create_connection(("127.0.0.1", thread.port), timeout=10)
        second = socket.create_connection(("127.0.0.1", thread.port), timeout=10)
        third = raw_exchange(thread.port, b"")
        notice = M.decode_message(third)
        assert isinstance(notice.op, M.ExtendedResponse)
        assert notice.op.result.code == M.ResultCode.BUSY
        second.close()
        first.close()
    finally:
        thread.stop()


def test_idle_timeout() -> None:
    """A silent connection and one that was answered are both closed by the idle timeout
    (the first-request deadline, longer here than the sockets' 30 s, cannot do it)."""
    limits = Limits(idle_timeout=0.5, first_request_timeout=60)
    thread = ServerThread(MemoryBackend(), limits=limits)
    try:
        with socket.create_connection(("127.0.0.1", thread.port), timeout=30) as silent, \
                socket.create_connection(("127.0.0.1", thread.port), timeout=30) as answered:
            answered.sendall(M.encode_message(M.LDAPMessage(1, M.SearchRequest(
                SUFFIX, M.Scope.SUB, M.DerefAliases.NEVER, 0, 0, False,
                F.EqualityMatch("mail", ALICE.encode()), ("mail",)))))
            assert answered.recv(65536)
            assert silent.recv(100) == b""
            while answered.recv(65536):  # the rest of the answer, then the close
                pass
    finally:
        thread.stop()


def test_time_limit_bounds_a_slow_lookup(server: ServerThread) -> None:
    server.backend.delay = 3.0
    conn = connect(server)
    start = time.monotonic()
    assert not conn.search(SUFFIX, f"(mail={ALICE})", attributes=["mail"], time_limit=1)
    assert conn.result["result"] == 3  # timeLimitExceeded
    assert time.monotonic() - start < 2.5
    conn.unbind()


def test_outstanding_cap_pauses_reading_and_answers_all() -> None:
    backend = MemoryBackend(delay=0.02)
    thread = ServerThread(backend, limits=Limits(max_outstanding=4))
    try:
        search = M.SearchRequest(
            SUFFIX, M.Scope.SUB, M.DerefAliases.NEVER, 0, 0, False,
            F.EqualityMatch("mail", ALICE.encode()), ("mail",),
        )
        data = b"".join(M.encode_message(M.LDAPMessage(i, search)) for i in range(1, 41))
        with socket.create_connection(("127.0.0.1", thread.port), timeout=20) as s:
            s.sendall(data)
            done: set[int] = set()
            buf = b""
            while len(done) < 40:
                chunk = s.recv(65536)
                assert chunk, "server closed early"
                buf += chunk
                while (n := C.ber.frame_length(buf)) is not None:
                    msg = M.decode_message(buf[:n])
                    buf = buf[n:]
                    if isinstance(msg.op, M.SearchResultDone):
                        assert msg.op.result.code == M.ResultCode.SUCCESS
                        done.add(msg.message_id)
        assert done == set(range(1, 41))
        assert len(backend.lookups) == 40
    finally:
        thread.stop()


def test_starttls_refusals(server: ServerThread) -> None:
    start = M.encode_message(M.LDAPMessage(1, M.ExtendedRequest(M.OID_START_TLS)))
    unbind = M.encode_message(M.LDAPMessage(2, M.UnbindRequest()))
    # Data sent right behind the StartTLS request (before the handshake) breaks the rule.
    reply = raw_exchange(server.port, start + unbind)
    notice = M.decode_message(reply)
    assert isinstance(notice.op, M.ExtendedResponse)
    assert notice.op.name == M.OID_NOTICE_OF_DISCONNECTION
    # A server without a TLS context does not offer StartTLS.
    plain = ServerThread(MemoryBackend())
    try:
        reply = raw_exchange(plain.port, start + unbind)
        response = M.decode_message(reply)
        assert isinstance(response.op, M.ExtendedResponse)
        assert response.op.result.code == M.ResultCode.PROTOCOL_ERROR
        assert response.message_id == 1
    finally:
        plain.stop()


def test_base_search_of_the_suffix_returns_the_suffix_entry(server: ServerThread) -> None:
    """The root DSE names the suffix in namingContexts; reading it (scope base) gives
    its entry, as slapd does, and nothing about addresses (no lookup)."""
    before = len(server.backend.lookups)
    done = ldapsearch(server.url, "-s", "base", "(objectClass=*)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n\n")[0].splitlines() == [
        f"dn: {SUFFIX}", "objectClass: top", "objectClass: domain", "dc: keypost"]
    for f in ["(dc=KEYPOST)", "(&(objectClass=domain)(!(mail=a@example.com)))"]:
        done = ldapsearch(server.url, "-s", "base", f, "dc")
        assert done.returncode == 0 and done.stdout.strip() == f"dn: {SUFFIX}\ndc: keypost"
    for f in [f"(mail={ALICE})", "(objectClass=inetOrgPerson)", "(mail=*)"]:
        done = ldapsearch(server.url, "-s", "base", f)
        assert done.returncode == 0 and "dn:" not in done.stdout, f
    conn = connect(server)
    assert conn.search(SUFFIX, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["*"])
    (entry,) = conn.response
    assert entry["dn"] == SUFFIX
    assert entry["raw_attributes"] == {"objectClass": [b"top", b"domain"], "dc": [b"keypost"]}
    conn.unbind()
    # one level and subtree searches still list addresses only, and only those asked for
    done = ldapsearch(server.url, "-s", "sub", "(objectClass=*)")
    assert done.returncode == 0 and "dn:" not in done.stdout
    assert len(server.backend.lookups) == before


FIVE = tuple(f"u{i}@example.com" for i in range(5))
FIVE_FILTER = "(|" + "".join(f"(mail={a})" for a in FIVE) + ")"


def test_ldapsearch_paged_results_gets_every_entry_once_in_pages(server: ServerThread) -> None:
    """RFC 2696: with a page size below the result's size, pages of at most that many
    entries, each looked up on its own, a cookie between them and an empty one last."""
    before = len(server.backend.lookups)
    done = ldapsearch(server.url, "-E", "pr=2/noprompt", FIVE_FILTER, "mail")
    assert done.returncode == 0, done.stderr
    dns = [line for line in done.stdout.splitlines() if line.startswith("dn:")]
    assert dns == [f"dn: mail={a},{SUFFIX}" for a in FIVE]
    cookies = [line for line in done.stdout.splitlines() if line.startswith("# pagedresults:")]
    assert [c.partition("cookie=")[0] for c in cookies] == ["# pagedresults: estimate=5 "] * 3
    assert cookies[-1].endswith("cookie=")
    assert not any(c.endswith("cookie=") for c in cookies[:2])
    assert [a for _, a in server.backend.lookups[before:]] == [FIVE[0:2], FIVE[2:4], FIVE[4:]]
    # a page size covering the result: one page
    done = ldapsearch(server.url, "-E", "pr=10/noprompt", FIVE_FILTER, "mail")
    assert done.returncode == 0 and done.stdout.count("dn: ") == 5
    assert done.stdout.count("# pagedresults:") == 1


def test_ldap3_paged_search_gets_every_entry_once(server: ServerThread) -> None:
    conn = connect(server)
    got = [e["attributes"]["mail"][0] for e in conn.extend.standard.paged_search(
        SUFFIX, FIVE_FILTER, attributes=["mail"], paged_size=2, generator=True)]
    assert sorted(got) == sorted(FIVE)  # each once (ldap3 reorders the OR)
    # by hand: the cookie of the first page, then a page size of 0 ends the paging
    assert conn.search(SUFFIX, FIVE_FILTER, attributes=["mail"], paged_size=2)
    assert len(conn.response) == 2
    control = conn.result["controls"][C.OID_PAGED_RESULTS]["value"]
    assert control["size"] == 5 and control["cookie"]
    conn.search(SUFFIX, FIVE_FILTER, attributes=["mail"], paged_size=0,
                paged_cookie=control["cookie"])
    assert conn.result["result"] == 0 and conn.response == []
    assert conn.result["controls"][C.OID_PAGED_RESULTS]["value"]["cookie"] == b""
    # a cookie is good only for the search it came from
    assert not conn.search(SUFFIX, f"(mail={ALICE})", attributes=["mail"], paged_size=2,
                           paged_cookie=control["cookie"])
    assert conn.result["result"] == 53 and conn.response == []
    conn.unbind()


@pytest.mark.parametrize("delay", [0.0, 0.2], ids=["cached", "slow"])
@pytest.mark.parametrize("password", [b"", PASSWORD], ids=["anonymous", "account"])
def test_half_closed_connection_gets_every_answer(delay: float, password: bytes) -> None:
    """A client that shuts down its write side after a bind and pipelined searches gets
    every answer (as from slapd), then the server closes; before, the EOF cancelled the
    operations still running and only what was answered at once came back."""
    thread = ServerThread(MemoryBackend(delay=delay))
    try:
        search = M.SearchRequest(
            SUFFIX, M.Scope.SUB, M.DerefAliases.NEVER, 0, 0, False,
            F.EqualityMatch("mail", ALICE.encode()), ("mail",),
        )
        bind = M.BindRequest(3, "uid=alice,dc=keypost" if password else "", password)
        data = M.encode_message(M.LDAPMessage(1, bind)) + b"".join(
            M.encode_message(M.LDAPMessage(i, search)) for i in (2, 3, 4))
        with socket.create_connection(("127.0.0.1", thread.port), timeout=10) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(65536):  # ends when the server closes
                reply += chunk
        got = [(m.message_id, type(m.op).__name__) for m in messages_of(reply)]
        assert got == [(1, "BindResponse")] + [
            (i, kind) for i in (2, 3, 4) for kind in ("SearchResultEntry", "SearchResultDone")]
        principal = "account:alice" if password else None
        assert thread.backend.lookups == [(principal, (ALICE,))] * 3
    finally:
        thread.stop()


def test_decoded_searches_are_not_shared_between_peer_addresses() -> None:
    """The memo of decoded requests and their plans was one for all connections: a search
    another peer had sent just before (the same PDU but for its messageID, as Thunderbird
    sends it for one address) skipped ~13 us of decoding and ~14 us of planning, a timing
    difference telling a prober that somebody had just looked that address up. Kept per
    peer address, a peer's repeated searches still skip both. Raw sockets from 127.0.0.1
    and 127.0.0.2 against the server."""
    thread = ServerThread(MemoryBackend())
    try:
        search = M.SearchRequest(
            SUFFIX, M.Scope.SUB, M.DerefAliases.NEVER, 0, 0, False,
            F.EqualityMatch("mail", ALICE.encode()), ("userCertificate;binary",),
        )

        def ask(source: str, message_id: int) -> None:
            data = M.encode_message(M.LDAPMessage(message_id, search)) + M.encode_message(
                M.LDAPMessage(message_id + 1, M.UnbindRequest()))
            with socket.create_connection(("127.0.0.1", thread.port), timeout=10,
                                          source_address=(source, 0)) as s:
                s.sendall(data)
                while s.recv(65536):
                    pass

        ask("127.0.0.1", 1)
        assert len(thread.server.searches) == 1 and len(thread.server._plans) == 1
        ask("127.0.0.1", 7)  # the same peer: memoised
        assert len(thread.server.searches) == 1 and len(thread.server._plans) == 1
        ask("127.0.0.2", 1)  # another one: decoded and planned anew, as for a new search
        assert len(thread.server.searches) == 2 and len(thread.server._plans) == 2
    finally:
        thread.stop()
